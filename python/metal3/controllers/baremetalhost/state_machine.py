"""The BareMetalHost state machine: one step of a host's lifecycle per reconcile.

Each reconcile first runs the guards (capacity delay, deletion, detachment, registration), any
of which can end the step, then the handler of the host's current provisioning state. A handler
asks the provisioner to do (or report on) that state's work and decides the next state; the
machine then records the transition (operation history, capacity gate, events, metrics).
Transitions follow upstream Metal3:

    none ──BMC?──> registering ──> inspecting ──> preparing ──> available ──> provisioning
      └──> unmanaged ──BMC set──┘   │ (inspection disabled) ─┘      ^  │           │
                                    └──> externally provisioned     │  v           v
                                                       deprovisioning <── provisioned

("BMC": both spec.bmc.address and spec.bmc.credentialsName; a host missing either stays
unmanaged with operationalStatus discovered. Registering skips inspecting when inspection is
disabled or status.hardware is already known, e.g. from discovery: upstream's
NeedsHardwareInspection.)

and deletion from anywhere: provisioned hosts deprovision first, registered hosts are powered
off, then the provisioner forgets them and the finalizer is removed.

The machine touches only the in-memory host and the provisioner; the reconciler writes the result
(status, annotations, HardwareData, finalizer) to the API.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

import orjson

from metal3.api.baremetalhost import BareMetalHost, CredentialsStatus
from metal3.api.constants import (
    DETACHED_ANNOTATION,
    INSPECT_ANNOTATION_DISABLED,
    INSPECT_ANNOTATION_PREFIX,
    REBOOT_ANNOTATION_PREFIX,
    AutomatedCleaningMode,
    DetachedDeleteAction,
    ErrorType,
    InspectionMode,
    OperationalStatus,
    RebootMode,
)
from metal3.api.constants import ProvisioningState as S
from metal3.api.hardware import HardwareDetails
from metal3.api.meta import SecretReference
from metal3.configdata import CONFIG_DATA_ERROR_PREFIX, ConfigDataError
from metal3.controllers.baremetalhost import metrics
from metal3.controllers.baremetalhost.status import (
    BUSY_STATES,
    clear_error,
    ensure_status,
    error_backoff,
    now_rfc3339,
    record_state_begin,
    record_state_end,
    set_error,
    settle_operational_status,
    state_of,
)
from metal3.provisioner.base import (
    Credentials,
    ManagementAccessData,
    PrepareData,
    ProvisionData,
    Provisioner,
    Result,
)

log = logging.getLogger(__name__)


# During deletion, a step that keeps failing is given up once status.errorCount exceeds this and
# deletion goes on without it: deprovisioning, powering off before delete, and both of them when
# it is registration that keeps failing. Upstream Metal3's `ErrorCount > 3`.
DELETE_STEP_MAX_ERRORS = 3

# status.provisioning.bootMode when spec.bootMode is empty (upstream's default).
DEFAULT_BOOT_MODE = "UEFI"


class OutcomeKind(Enum):
    """How a reconcile step ended."""

    COMPLETE = "complete"  # the state's work is done (its handler may have chosen a next state)
    CONTINUE = "continue"  # in progress or steady: look again after requeue_after
    ERROR = "error"  # the step failed; the error is recorded on the host; retry after backoff
    DELAYED = "delayed"  # the next state needs a provisioning slot and none is free


@dataclass(frozen=True)
class Outcome:
    """What a step did, and when the host should be reconciled again (None: only on a change)."""

    kind: OutcomeKind
    requeue_after: float | None = 0.0

    @property
    def complete(self) -> bool:
        return self.kind is OutcomeKind.COMPLETE

    @property
    def failed(self) -> bool:
        return self.kind is OutcomeKind.ERROR


COMPLETE = Outcome(OutcomeKind.COMPLETE, 0.0)
IDLE = Outcome(OutcomeKind.CONTINUE, None)  # nothing to do until something changes


def keep_going(delay: float | None) -> Outcome:
    return Outcome(OutcomeKind.CONTINUE, delay)


@dataclass(frozen=True)
class Settings:
    """Operator policy knobs (flags of `metal3 operator`)."""

    provisioning_limit: int = 20  # hosts inspecting/provisioning/deprovisioning at once
    max_provisioning_retries: int = 5
    power_poll_interval: float = 60.0
    error_backoff_unit: float = 60.0  # seconds; upstream's backoff is in minutes
    delayed_retry: float = 5.0
    in_progress_poll: float = 1.0  # seconds between polls of an operation in progress


def waiting_for_config_data(host: BareMetalHost) -> bool:
    status = ensure_status(host)
    return status.error_type == ErrorType.PROVISIONING.value and (
        status.error_message or ""
    ).startswith(CONFIG_DATA_ERROR_PREFIX)


@dataclass
class StepContext:
    """Everything one reconcile of one host needs, and what it wants written back."""

    host: BareMetalHost
    provisioner: Provisioner
    credentials: Credentials | None
    credentials_version: str
    settings: Settings
    busy_elsewhere: Callable[[], int]  # hosts in busy states, other than this one
    reserve_slot: Callable[[], None]  # count this host as busy from now on
    # userData, networkData, metaData; raises ConfigDataError when one cannot be read.
    user_data: Callable[[], Awaitable[tuple[str | None, str | None, str | None]]]
    # Results for the reconciler to write:
    remove_annotations: set[str] = field(default_factory=set)
    hardware: HardwareDetails | None = None  # to store as HardwareData
    forget_host: bool = False  # deletion finished: drop the finalizer
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    state_changed_from: str | None = None

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append(("Warning" if warning else "Normal", reason, message))


# --- predicates on the host --------------------------------------------------------------------


def host_annotations(host: BareMetalHost) -> dict[str, str]:
    return (host.metadata.annotations if host.metadata else None) or {}


def has_bmc(host: BareMetalHost) -> bool:
    return bool(host.spec and host.spec.bmc and host.spec.bmc.address)


def has_bmc_details(host: BareMetalHost) -> bool:
    """Both the BMC address and the credentials Secret's name are set: enough to register.

    Upstream's meaning of a discovered host (baremetal-operator docs/baremetalhost-states.md,
    OperationalStatusDiscovered): one missing either, e.g. the address a discovered host's
    agent reported, with no credentials yet, stays unmanaged until both are given.
    """
    bmc = host.spec.bmc if host.spec else None
    return bool(bmc and bmc.address and bmc.credentials_name)


def needs_hardware_inspection(host: BareMetalHost) -> bool:
    """Upstream's NeedsHardwareInspection: no hardware details yet (a discovered host brings
    them from its agent's inventory), and none asked for by the inspect annotation."""
    status = host.status
    return status is None or status.hardware is None or inspection_requested(host)


def inspection_disabled(host: BareMetalHost) -> bool:
    if host.spec and host.spec.inspection_mode == InspectionMode.DISABLED.value:
        return True
    return host_annotations(host).get(INSPECT_ANNOTATION_PREFIX) == INSPECT_ANNOTATION_DISABLED


def inspection_requested(host: BareMetalHost) -> bool:
    value = host_annotations(host).get(INSPECT_ANNOTATION_PREFIX)
    return value is not None and value != INSPECT_ANNOTATION_DISABLED


def workload_of(host: BareMetalHost) -> tuple[str, str]:
    """(image URL, custom deploy method) the spec asks for."""
    spec = host.spec
    url = spec.image.url or "" if spec and spec.image else ""
    method = spec.custom_deploy.method or "" if spec and spec.custom_deploy else ""
    return url, method


def needs_provisioning(host: BareMetalHost) -> bool:
    spec = host.spec
    if spec is None or not spec.online or spec.externally_provisioned:
        return False
    return any(workload_of(host))


def provisioning_cancelled(host: BareMetalHost) -> bool:
    """The spec no longer asks for what is (being) provisioned: image or method changed/removed."""
    provisioning = ensure_status(host).provisioning
    assert provisioning is not None
    url, method = workload_of(host)
    done_url = provisioning.image.url or "" if provisioning.image else ""
    done_method = provisioning.custom_deploy.method or "" if provisioning.custom_deploy else ""
    if method:
        if done_method and done_method != method:
            return True
        return bool(done_url) and done_url != url
    if done_method:
        return True
    if not url:
        return True
    return bool(done_url) and done_url != url


def prepare_settings(host: BareMetalHost) -> tuple[object, object, object]:
    spec = host.spec
    assert spec is not None
    return (
        spec.raid.to_json() if spec.raid else None,
        spec.root_device_hints.to_json() if spec.root_device_hints else None,
        spec.firmware.to_json() if spec.firmware else None,
    )


def applied_settings(host: BareMetalHost) -> tuple[object, object, object]:
    provisioning = ensure_status(host).provisioning
    assert provisioning is not None
    return (
        provisioning.raid.to_json() if provisioning.raid else None,
        provisioning.root_device_hints.to_json() if provisioning.root_device_hints else None,
        provisioning.firmware.to_json() if provisioning.firmware else None,
    )


def needs_preparing(host: BareMetalHost) -> bool:
    return prepare_settings(host) != applied_settings(host)


def detach_arguments(host: BareMetalHost) -> tuple[bool, str, bool]:
    """(annotation present, deleteAction, force) of the detached annotation."""
    value = host_annotations(host).get(DETACHED_ANNOTATION)
    if value is None:
        return False, "", False
    try:
        args = orjson.loads(value) if value.strip() else {}
    except orjson.JSONDecodeError:
        args = {}
    if not isinstance(args, dict):
        args = {}
    return True, str(args.get("deleteAction", "")), bool(args.get("force", False))


def reboot_request(host: BareMetalHost) -> tuple[bool, bool]:
    """(a reboot is requested, it must be hard) from the reboot annotations."""
    requested, hard = False, False
    for key, value in host_annotations(host).items():
        if key == REBOOT_ANNOTATION_PREFIX or key.startswith(REBOOT_ANNOTATION_PREFIX + "/"):
            requested = True
            try:
                args = orjson.loads(value) if value.strip() else {}
            except orjson.JSONDecodeError:
                args = {}
            if isinstance(args, dict) and args.get("mode") == RebootMode.HARD.value:
                hard = True
    return requested, hard


# --- the machine -------------------------------------------------------------------------------


class HostStateMachine:
    def __init__(self, ctx: StepContext) -> None:
        self.ctx = ctx
        self.host = ctx.host
        self.status = ensure_status(ctx.host)
        self.initial_state = state_of(ctx.host)
        self.next_state = self.initial_state

    # --- provisioner results -----------------------------------------------------------

    def _fail(self, error_type: ErrorType, message: str) -> Outcome:
        """Record a failed operation on the host (error fields, event, metric); retry later.

        The one place a provisioner failure becomes host status.
        """
        set_error(self.host, error_type, message)
        self.ctx.event(_error_reason(error_type), message, warning=True)
        metrics.ERRORS.labels(error_type.value).inc()
        return Outcome(OutcomeKind.ERROR, self._backoff())

    def _unfinished(self, result: Result, error_type: ErrorType) -> Outcome | None:
        """The outcome of a provisioner call that failed or is still running; None if complete."""
        if result.error_message:
            return self._fail(error_type, result.error_message)
        if result.dirty:
            return keep_going(result.requeue_after or self.ctx.settings.in_progress_poll)
        return None

    def _outcome(self, result: Result, error_type: ErrorType, operation: str) -> Outcome:
        """The outcome of a state's provisioner call; completing it clears the recorded error."""
        unfinished = self._unfinished(result, error_type)
        if unfinished is not None:
            return unfinished
        if self.status.error_type:
            clear_error(self.host)
        log.debug("%s: %s complete", _name(self.host), operation)
        return COMPLETE

    def _backoff(self) -> float:
        return error_backoff(self.status.error_count or 1, self.ctx.settings.error_backoff_unit)

    async def run(self) -> Outcome:
        outcome = await self._reconcile_state()
        override = self._apply_transition()
        return override or outcome

    async def _reconcile_state(self) -> Outcome:
        guards: tuple[Callable[[], Awaitable[Outcome | None]], ...] = (
            self._check_delayed,
            self._check_initiate_delete,
            self._check_detached,
            self._ensure_registered,
        )
        for guard in guards:
            outcome = await guard()
            if outcome is not None:
                return outcome
        handler = self._handlers().get(self.initial_state)
        if handler is None:
            set_error(
                self.host, ErrorType.REGISTRATION, f"no handler for state {self.initial_state!r}"
            )
            return Outcome(OutcomeKind.ERROR, self._backoff())
        return await handler()

    def _handlers(self) -> dict[str, Callable[[], Awaitable[Outcome]]]:
        return {
            S.NONE: self._handle_none,
            S.UNMANAGED: self._handle_unmanaged,
            S.REGISTERING: self._handle_registering,
            S.INSPECTING: self._handle_inspecting,
            S.MATCH_PROFILE: self._handle_match_profile,
            S.EXTERNALLY_PROVISIONED: self._handle_externally_provisioned,
            S.PREPARING: self._handle_preparing,
            S.AVAILABLE: self._handle_available,
            S.READY: self._handle_available,
            S.PROVISIONING: self._handle_provisioning,
            S.PROVISIONED: self._handle_provisioned,
            S.DEPROVISIONING: self._handle_deprovisioning,
            S.POWERING_OFF_BEFORE_DELETE: self._handle_powering_off_before_delete,
            S.DELETING: self._handle_deleting,
        }

    # --- transitions -------------------------------------------------------------------

    def _has_capacity(self) -> bool:
        return self.ctx.busy_elsewhere() < self.ctx.settings.provisioning_limit

    def _waiting_for_slot(self) -> Outcome:
        return Outcome(OutcomeKind.DELAYED, self.ctx.settings.delayed_retry)

    def _delay(self, state: str) -> Outcome:
        if self.status.operational_status != OperationalStatus.DELAYED.value:
            self.status.operational_status = OperationalStatus.DELAYED.value
            self.ctx.event("Delayed", f"{state} delayed: provisioning limit reached")
            metrics.DELAYED.labels(state).inc()
        return self._waiting_for_slot()

    def _apply_transition(self) -> Outcome | None:
        if self.next_state == self.initial_state:
            return None
        if self.next_state in BUSY_STATES:
            if not self._has_capacity():
                self.next_state = self.initial_state
                return self._delay(self.next_state)
            # Taken at once (no await between check and reservation), so concurrent workers
            # cannot both take the last slot before either host's new state is written.
            self.ctx.reserve_slot()
        when = _now()
        duration = record_state_end(self.host, self.initial_state, when)
        if duration is not None:
            metrics.observe_operation(self.initial_state, duration)
        record_state_begin(self.host, self.next_state, when)
        provisioning = self.status.provisioning
        assert provisioning is not None
        provisioning.state = self.next_state
        if self.next_state in (S.REGISTERING, S.INSPECTING, S.PROVISIONING):
            provisioning.boot_mode = (
                self.host.spec.boot_mode if self.host.spec else None
            ) or DEFAULT_BOOT_MODE
        metrics.STATE_CHANGES.labels(self.initial_state or "none", self.next_state).inc()
        self.ctx.state_changed_from = self.initial_state
        # str(): the handlers set ProvisioningState members, whose repr is not the state's name.
        self.ctx.event(
            _state_reason(self.next_state),
            f"provisioning state changed from {self.initial_state or 'none'!r} "
            f"to {str(self.next_state)!r}",
        )
        return None

    # --- guards: each ends the step with an outcome, or returns None to let it go on ------

    async def _check_delayed(self) -> Outcome | None:
        """A host delayed for capacity waits until a slot is free, then carries on."""
        if self.status.operational_status == OperationalStatus.DELAYED.value:
            if not self._has_capacity():
                return self._waiting_for_slot()
            settle_operational_status(self.host)
            return keep_going(0.0)
        # A host already inspecting/provisioning/deprovisioning holds its slot: it is counted
        # among the busy ones and is never delayed (two such hosts would wait on each other).
        return None

    async def _check_initiate_delete(self) -> Outcome | None:
        """On deletion, move to the first deletion state that applies (COMPLETE if it moved)."""
        if not (self.host.metadata and self.host.metadata.deletion_timestamp):
            return None
        state = self.next_state
        registration_stuck = (
            self.status.error_type == ErrorType.REGISTRATION.value
            and self._too_many_errors_to_delete()
        )
        if state in (S.REGISTERING, S.UNMANAGED, S.NONE):
            self.next_state = S.DELETING
        elif state in (S.PROVISIONING, S.PROVISIONED):
            if self.status.operational_status == OperationalStatus.DETACHED.value:
                if self._delay_delete_for_detached():
                    metrics.DELETE_DELAYED_DETACHED.inc()
                    return None
                self.next_state = S.DELETING  # a detached host cannot be powered off
            else:
                self.next_state = S.DEPROVISIONING
        elif state in (S.DEPROVISIONING, S.POWERING_OFF_BEFORE_DELETE):
            if not registration_stuck:
                return None
            self.next_state = S.DELETING
        elif state == S.DELETING:
            return None
        else:
            self.next_state = S.POWERING_OFF_BEFORE_DELETE
        return COMPLETE

    def _too_many_errors_to_delete(self) -> bool:
        """The failing step has failed often enough that deletion goes on without it."""
        return (self.status.error_count or 0) > DELETE_STEP_MAX_ERRORS

    def _delay_delete_for_detached(self) -> bool:
        present, action, _ = detach_arguments(self.host)
        if not present:
            return True  # detached without the annotation: wait for re-attachment
        return action == DetachedDeleteAction.DELAY.value

    async def _check_detached(self) -> Outcome | None:
        """Detach on the annotation (steady states, or any with force); re-attach without it."""
        present, _, force = detach_arguments(self.host)
        allowed = self.initial_state in (
            S.PROVISIONED,
            S.EXTERNALLY_PROVISIONED,
            S.READY,
            S.AVAILABLE,
        )
        if present and (allowed or force):
            if self.status.operational_status == OperationalStatus.DETACHED.value:
                return IDLE
            outcome = self._outcome(
                await self.ctx.provisioner.detach(force=force), ErrorType.DETACH, "detach"
            )
            if outcome.complete:
                self.status.operational_status = OperationalStatus.DETACHED.value
                self.status.error_count = 0
                self.ctx.event("Detached", "host detached from the provisioner")
                return keep_going(0.0)
            return outcome
        if self.status.error_type == ErrorType.DETACH.value:
            clear_error(self.host)
            self.status.error_count = 0
            return keep_going(0.0)
        if self.status.operational_status == OperationalStatus.DETACHED.value:
            settle_operational_status(self.host)
            self.ctx.event("Attached", "host re-attached to the provisioner")
            return keep_going(0.0)
        return None

    async def _ensure_registered(self) -> Outcome | None:
        """Register on every step (the call is idempotent); forced when the credentials changed
        or the last attempt failed.
        """
        if self.ctx.credentials is None:
            return None  # deleting without credentials: nothing to register with
        if self.next_state in (S.NONE, S.UNMANAGED, S.MATCH_PROFILE, S.DELETING):
            return None
        status = self.status
        good = status.good_credentials
        credentials_changed = not (
            good is not None
            and good.credentials is not None
            and good.credentials.name == _credentials_name(self.host)
            and good.credentials_version == self.ctx.credentials_version
        )
        retrying = status.error_type == ErrorType.REGISTRATION.value
        if (credentials_changed or retrying) and self.next_state != S.REGISTERING:
            record_state_begin(self.host, S.REGISTERING, _now())
        _set_tried_credentials(self.host, self.ctx.credentials_version)
        spec = self.host.spec
        assert spec is not None and spec.bmc is not None
        data = ManagementAccessData(
            address=spec.bmc.address or "",
            credentials=self.ctx.credentials,
            disable_certificate_verification=bool(spec.bmc.disable_certificate_verification),
            boot_mac_address=spec.boot_mac_address,
            boot_mode=spec.boot_mode,
        )
        result = await self.ctx.provisioner.register(data, force=credentials_changed or retrying)
        unfinished = self._unfinished(result, ErrorType.REGISTRATION)
        if unfinished is not None:
            return unfinished
        changed = False
        if retrying:
            clear_error(self.host)
            changed = True
        provisioning = status.provisioning
        provisioning_id = self.ctx.provisioner.provisioning_id
        if provisioning is not None and provisioning_id and provisioning.id != provisioning_id:
            provisioning.id = provisioning_id
            changed = True
        if credentials_changed:
            _set_good_credentials(self.host, self.ctx.credentials_version)
            self.ctx.event("BMCAccessValidated", "verified access to the BMC")
            changed = True
        if self.next_state != S.REGISTERING:
            duration = record_state_end(self.host, S.REGISTERING, _now())
            if duration is not None:
                metrics.observe_operation(S.REGISTERING, duration)
                changed = True
        return keep_going(0.0) if changed else None

    # --- handlers ----------------------------------------------------------------------

    async def _handle_none(self) -> Outcome:
        if has_bmc_details(self.host):
            self.next_state = S.REGISTERING
        else:
            self.ctx.event("Discovered", "discovered host with no BMC details")
            self.status.operational_status = OperationalStatus.DISCOVERED.value
            self.next_state = S.UNMANAGED
            metrics.UNMANAGED.inc()
        return COMPLETE

    async def _handle_unmanaged(self) -> Outcome:
        if has_bmc_details(self.host):
            if self.status.operational_status == OperationalStatus.DISCOVERED.value:
                self.status.operational_status = OperationalStatus.OK.value
            self.next_state = S.REGISTERING
            return COMPLETE
        return IDLE

    async def _handle_registering(self) -> Outcome:
        # Reaching the handler means registration with the current credentials succeeded.
        spec = self.host.spec
        if spec and spec.externally_provisioned:
            self.next_state = S.EXTERNALLY_PROVISIONED
        elif inspection_disabled(self.host) or not needs_hardware_inspection(self.host):
            self.next_state = S.PREPARING
        else:
            self.next_state = S.INSPECTING
        self.status.error_count = 0
        return COMPLETE

    async def _handle_inspecting(self) -> Outcome:
        retry = self.status.error_type == ErrorType.INSPECTION.value
        inspection = await self.ctx.provisioner.inspect(force=retry)
        outcome = self._outcome(inspection.result, ErrorType.INSPECTION, "inspection")
        if outcome.complete:
            if inspection.details is not None:
                self.status.hardware = inspection.details
                self.ctx.hardware = inspection.details
            if inspection_requested(self.host):
                self.ctx.remove_annotations.add(INSPECT_ANNOTATION_PREFIX)
            self.next_state = S.PREPARING
            self.status.error_count = 0
        return outcome

    async def _handle_match_profile(self) -> Outcome:
        self.next_state = S.PREPARING
        self.status.error_count = 0
        return COMPLETE

    async def _handle_externally_provisioned(self) -> Outcome:
        spec = self.host.spec
        if spec and spec.externally_provisioned:
            adopted = self._outcome(
                await self.ctx.provisioner.adopt(self._provision_data(None, None, None)),
                ErrorType.PROVISIONED_REGISTRATION,
                "adoption",
            )
            if not adopted.complete:
                return adopted
            return await self._manage_power(steady=True)
        if self.status.hardware is None and not inspection_disabled(self.host):
            self.next_state = S.INSPECTING
        else:
            self.next_state = S.PREPARING
        return COMPLETE

    async def _handle_preparing(self) -> Outcome:
        spec = self.host.spec
        assert spec is not None
        applied = self.status.provisioning
        assert applied is not None
        data = PrepareData(
            raid=spec.raid,
            root_device_hints=spec.root_device_hints,
            firmware=spec.firmware,
            automated_cleaning=spec.automated_cleaning_mode != AutomatedCleaningMode.DISABLED.value,
            current_raid=applied.raid,
            current_root_device_hints=applied.root_device_hints,
            current_firmware=applied.firmware,
        )
        retry = self.status.error_type == ErrorType.PREPARATION.value
        outcome = self._outcome(
            await self.ctx.provisioner.prepare(data, force=retry), ErrorType.PREPARATION, "prepare"
        )
        if outcome.complete:
            provisioning = self.status.provisioning
            assert provisioning is not None
            provisioning.raid = spec.raid.copy() if spec.raid else None
            provisioning.root_device_hints = (
                spec.root_device_hints.copy() if spec.root_device_hints else None
            )
            provisioning.firmware = spec.firmware.copy() if spec.firmware else None
            self.status.error_count = 0
            self.next_state = S.AVAILABLE
        return outcome

    async def _handle_available(self) -> Outcome:
        spec = self.host.spec
        assert spec is not None
        if spec.externally_provisioned:
            self.next_state = S.EXTERNALLY_PROVISIONED
            return COMPLETE
        if inspection_requested(self.host):
            self.next_state = S.INSPECTING
            return COMPLETE
        if needs_preparing(self.host):
            self.next_state = S.PREPARING
            return COMPLETE
        if needs_provisioning(self.host):
            if self._provisioning_retries_exhausted():
                if not self.status.error_type:
                    message = (
                        f"provisioning failed {self.status.provisioning_fail_count} times in a "
                        "row; not retrying until the image changes"
                    )
                    set_error(self.host, ErrorType.PROVISIONING, message)
                    self.ctx.event("ProvisioningError", message, warning=True)
                return await self._manage_power(steady=True)
            self.next_state = S.PROVISIONING
            return COMPLETE
        return await self._manage_power(steady=True)

    def _provisioning_retries_exhausted(self) -> bool:
        """Give up re-provisioning the same image after too many failures in a row."""
        status = self.status
        attempted = status.last_attempted_image
        url, _ = workload_of(self.host)
        if attempted is None or attempted.url != url:
            if status.provisioning_fail_count:
                status.provisioning_fail_count = 0
            return False
        return (status.provisioning_fail_count or 0) >= self.ctx.settings.max_provisioning_retries

    async def _handle_provisioning(self) -> Outcome:
        waiting_for_data = waiting_for_config_data(self.host)
        if (self.status.error_type and not waiting_for_data) or provisioning_cancelled(self.host):
            self.next_state = S.DEPROVISIONING
            return COMPLETE
        spec = self.host.spec
        assert spec is not None
        attempted = self.status.last_attempted_image
        if spec.image is not None and (
            attempted is None or attempted.to_json() != spec.image.to_json()
        ):
            if attempted is None or attempted.url != spec.image.url:
                self.status.provisioning_fail_count = 0  # a new image starts a new count
            self.status.last_attempted_image = spec.image.copy()
        try:
            user_data, network_data, meta_data = await self.ctx.user_data()
        except ConfigDataError as exc:
            # Nothing was attempted, so no provisioning failure is counted: retried in place.
            return self._fail(ErrorType.PROVISIONING, str(exc))
        if waiting_for_data:
            clear_error(self.host)
        data = self._provision_data(user_data, network_data, meta_data)
        result = await self.ctx.provisioner.provision(data)
        outcome = self._outcome(result, ErrorType.PROVISIONING, "provision")
        if outcome.failed:
            self.status.provisioning_fail_count = (self.status.provisioning_fail_count or 0) + 1
        if outcome.complete:
            provisioning = self.status.provisioning
            assert provisioning is not None
            provisioning.image = spec.image.copy() if spec.image else None
            provisioning.custom_deploy = spec.custom_deploy.copy() if spec.custom_deploy else None
            provisioning.root_device_hints = (
                spec.root_device_hints.copy() if spec.root_device_hints else None
            )
            self.status.provisioning_fail_count = 0
            self.status.powered_on = True
            self.status.error_count = 0
            self.next_state = S.PROVISIONED
        return outcome

    def _provision_data(
        self, user_data: str | None, network_data: str | None, meta_data: str | None
    ) -> ProvisionData:
        spec = self.host.spec
        assert spec is not None
        return ProvisionData(
            image=spec.image,
            custom_deploy=spec.custom_deploy,
            root_device_hints=spec.root_device_hints,
            boot_mode=spec.boot_mode,
            user_data=user_data,
            network_data=network_data,
            meta_data=meta_data,
        )

    async def _handle_provisioned(self) -> Outcome:
        if provisioning_cancelled(self.host):
            self.next_state = S.DEPROVISIONING
            return COMPLETE
        return await self._manage_power(steady=True)

    async def _handle_deprovisioning(self) -> Outcome:
        spec = self.host.spec
        cleaning = spec is None or spec.automated_cleaning_mode != AutomatedCleaningMode.DISABLED
        outcome = self._outcome(
            await self.ctx.provisioner.deprovision(automated_cleaning=cleaning),
            ErrorType.PROVISIONING,
            "deprovision",
        )
        deleting = bool(self.host.metadata and self.host.metadata.deletion_timestamp)
        if outcome.complete:
            provisioning = self.status.provisioning
            assert provisioning is not None
            provisioning.image = None
            provisioning.custom_deploy = None
            self.status.powered_on = False
            self.status.error_count = 0
            self.next_state = S.POWERING_OFF_BEFORE_DELETE if deleting else S.AVAILABLE
        elif outcome.failed and deleting and self._too_many_errors_to_delete():
            log.warning(
                "%s: giving up deprovisioning after %d errors",
                _name(self.host),
                self.status.error_count,
            )
            metrics.DELETE_WITHOUT_DEPROVISIONING.inc()
            self.next_state = S.POWERING_OFF_BEFORE_DELETE
            return COMPLETE
        return outcome

    async def _handle_powering_off_before_delete(self) -> Outcome:
        if self.ctx.credentials is None:
            metrics.DELETE_WITHOUT_POWER_OFF.inc()
            self.next_state = S.DELETING
            return COMPLETE
        if self.host.spec and self.host.spec.disable_power_off:
            self.next_state = S.DELETING
            return COMPLETE
        outcome = self._outcome(
            await self.ctx.provisioner.power_off(hard=True), ErrorType.POWER_MANAGEMENT, "power off"
        )
        if outcome.complete:
            self.status.powered_on = False
            self.status.error_count = 0
            self.next_state = S.DELETING
        elif outcome.failed and self._too_many_errors_to_delete():
            metrics.DELETE_WITHOUT_POWER_OFF.inc()
            self.next_state = S.DELETING
            return COMPLETE
        return outcome

    async def _handle_deleting(self) -> Outcome:
        if self.ctx.credentials is None and not has_bmc(self.host):
            self.ctx.forget_host = True
            return IDLE
        outcome = self._outcome(
            await self.ctx.provisioner.delete(), ErrorType.REGISTRATION, "delete"
        )
        if outcome.complete:
            self.ctx.forget_host = True
            return IDLE
        return outcome

    # --- power in steady states ----------------------------------------------------------

    async def _manage_power(self, *, steady: bool) -> Outcome:
        spec = self.host.spec
        assert spec is not None
        settings = self.ctx.settings
        desired = bool(spec.online)
        hard = False
        reboot_requested = False
        if self.initial_state in (S.PROVISIONED, S.EXTERNALLY_PROVISIONED):
            reboot_requested, hard = reboot_request(self.host)
            if reboot_requested:
                desired = False
        if spec.disable_power_off and not desired:
            desired = True  # power off is not allowed; only the reboot annotation is consumed
            if REBOOT_ANNOTATION_PREFIX in host_annotations(self.host):
                self.ctx.remove_annotations.add(REBOOT_ANNOTATION_PREFIX)

        observed = (await self.ctx.provisioner.power_state()).powered_on
        changed = False
        if observed is not None and observed != self.status.powered_on:
            self.status.powered_on = observed
            changed = True

        if observed != desired:
            if desired:
                result = await self.ctx.provisioner.power_on(force=False)
            else:
                result = await self.ctx.provisioner.power_off(hard=hard)
            outcome = self._outcome(result, ErrorType.POWER_MANAGEMENT, "power")
            if not outcome.complete:
                return outcome
            self.status.powered_on = desired
            self.ctx.event("PowerOn" if desired else "PowerOff", f"host powered {_on(desired)}")
            changed = True

        # Once the host is off, a plain reboot request is done; suffixed ones keep it off.
        plain_reboot = REBOOT_ANNOTATION_PREFIX in host_annotations(self.host)
        if reboot_requested and not self.status.powered_on and plain_reboot:
            self.ctx.remove_annotations.add(REBOOT_ANNOTATION_PREFIX)
            changed = True
        if self.status.error_type == ErrorType.POWER_MANAGEMENT.value:
            clear_error(self.host)
            changed = True
        if (self.status.error_count or 0) and not self.status.error_type:
            self.status.error_count = 0
            changed = True
        return keep_going(0.0 if changed else settings.power_poll_interval)


def _set_tried_credentials(host: BareMetalHost, version: str) -> None:
    status = ensure_status(host)
    name = _credentials_name(host)
    namespace = host.metadata.namespace if host.metadata else None
    tried = status.tried_credentials
    if (
        tried is None
        or tried.credentials is None
        or tried.credentials.name != name
        or tried.credentials_version != version
    ):
        status.tried_credentials = CredentialsStatus(
            credentials=SecretReference(name=name, namespace=namespace),
            credentials_version=version,
        )


def _set_good_credentials(host: BareMetalHost, version: str) -> None:
    status = ensure_status(host)
    _set_tried_credentials(host, version)
    assert status.tried_credentials is not None
    status.good_credentials = status.tried_credentials.copy()


def _credentials_name(host: BareMetalHost) -> str:
    spec = host.spec
    return spec.bmc.credentials_name or "" if spec and spec.bmc else ""


def _now() -> str:
    return now_rfc3339()


def _name(host: BareMetalHost) -> str:
    metadata = host.metadata
    return f"{metadata.namespace}/{metadata.name}" if metadata else "?"


def _on(value: bool) -> str:
    return "on" if value else "off"


_STATE_REASONS: dict[str, str] = {
    S.UNMANAGED: "Unmanaged",
    S.REGISTERING: "Registering",
    S.INSPECTING: "InspectionStarted",
    S.PREPARING: "PreparationStarted",
    S.AVAILABLE: "Available",
    S.PROVISIONING: "ProvisioningStarted",
    S.PROVISIONED: "ProvisioningComplete",
    S.EXTERNALLY_PROVISIONED: "ExternallyProvisioned",
    S.DEPROVISIONING: "DeprovisioningStarted",
    S.POWERING_OFF_BEFORE_DELETE: "PoweringOffBeforeDelete",
    S.DELETING: "Deleting",
}


def _state_reason(state: str) -> str:
    return _STATE_REASONS.get(state, "StateChanged")


def _error_reason(error_type: ErrorType) -> str:
    return "".join(word.capitalize() for word in error_type.value.split())
