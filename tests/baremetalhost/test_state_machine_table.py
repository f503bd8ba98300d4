"""The host state machine on its own, without an API server.

One table: each row is one reconcile step of one host, (provisioning state, spec, annotations,
status, provisioner answers) -> (next state, the provisioner calls made in order, the outcome, the
error fields). The expectations are written out by hand from upstream Metal3's lifecycle
(baremetal-operator's host state machine; deletion gives up a step after more than 3 errors) as
the README describes it. Every row also checks the rules that hold for all steps: a provisioning
slot is taken exactly when the host enters a busy state, a state change is recorded and
announced, a failure is announced with its message, and the requeue delay matches the outcome.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from baremetalhost.recording_provisioner import RecordingProvisioner, RecordingProvisionerFactory
from metal3.api.baremetalhost import BareMetalHost
from metal3.controllers.baremetalhost.reconciler import BareMetalHostReconciler
from metal3.controllers.baremetalhost.state_machine import (
    HostStateMachine,
    Outcome,
    OutcomeKind,
    Settings,
    StepContext,
)
from metal3.kube.client import KubeClient
from metal3.kube.events import EventRecorder, EventSource
from metal3.kube.manager import Manager, ManagerOptions
from metal3.provisioner.base import Credentials, Result, failed, in_progress

pytestmark = pytest.mark.anyio

COMPLETE, CONTINUE, ERROR, DELAYED = (
    OutcomeKind.COMPLETE,
    OutcomeKind.CONTINUE,
    OutcomeKind.ERROR,
    OutcomeKind.DELAYED,
)

# Distinct values, so a row can tell which setting a requeue delay came from.
SETTINGS = Settings(
    provisioning_limit=2,
    max_provisioning_retries=3,
    power_poll_interval=30.0,
    error_backoff_unit=1.0,
    delayed_retry=7.0,
    in_progress_poll=0.5,
)
BUSY = {"inspecting", "provisioning", "deprovisioning"}  # upstream's capacity-gated states

SECRET_NAME = "h1-bmc"
SECRET_VERSION = "7"
IMAGE = {"url": "http://192.0.2.1/os.qcow2", "checksum": "a" * 64, "checksumType": "sha256"}
OTHER_IMAGE = {"url": "http://192.0.2.1/os-2.qcow2", "checksum": "b" * 64, "checksumType": "sha256"}
RAID = {"hardwareRAIDVolumes": [{"level": "1", "name": "root"}]}
USER_DATA = ("#cloud-config\n", "network: {}", "hostname: h1")

REGISTER = "register(force=False)"
REREGISTER = "register(force=True)"
DETACHED = "baremetalhost.metal3.io/detached"
REBOOT = "reboot.metal3.io"
INSPECT = "inspect.metal3.io"
BOOM = "BMC said no"


def prior_error(error_type: str, count: int) -> dict[str, Any]:
    """Status fields of a host whose last operation failed ``count`` times."""
    return {
        "errorType": error_type,
        "errorCount": count,
        "errorMessage": "an earlier failure",
        "operationalStatus": "error",
    }


@dataclass
class Step:
    """A finished step: the host as the machine left it, and what it asked for."""

    host: BareMetalHost
    ctx: StepContext
    provisioner: RecordingProvisioner
    outcome: Outcome
    slots_taken: int

    @property
    def status(self) -> Any:
        assert self.host.status is not None
        return self.host.status

    def events(self, kind: str = "Normal") -> list[tuple[str, str]]:
        return [(reason, message) for type_, reason, message in self.ctx.events if type_ == kind]


@dataclass(frozen=True)
class Row:
    id: str
    state: str
    # The host and its world before the step:
    spec: dict[str, Any] = field(default_factory=dict)  # merged over online + bmc
    bmc: bool = True
    annotations: dict[str, str] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)  # merged over a clean, powered-on status
    provisioning: dict[str, Any] = field(default_factory=dict)  # merged into status.provisioning
    registered: bool = True  # goodCredentials match the current Secret
    deleting: bool = False
    credentials: bool = True  # the reconciler found usable BMC credentials
    script: dict[str, Result] = field(default_factory=dict)  # provisioner answers; default DONE
    hardware_on: bool | None = True  # what the provisioner reports as the power state
    busy_elsewhere: int = 0
    # The step's result:
    next_state: str = ""
    calls: tuple[str, ...] = ()
    kind: OutcomeKind = COMPLETE
    requeue: float | EllipsisType | None = ...  # required for CONTINUE; derived otherwise
    error_type: str | None = None
    error_count: int = 0
    error_message: str = ""  # expected when error_type is set; BOOM when a call failed
    operational_status: str | None = None  # default: "error" with an error, else "OK"
    check: Callable[[Step], None] | None = None  # what else this row is about


def manifest(row: Row) -> dict[str, Any]:
    spec: dict[str, Any] = {"online": True}
    if row.bmc:
        spec["bmc"] = {
            "address": "redfish://192.0.2.10/redfish/v1/Systems/1",
            "credentialsName": SECRET_NAME,
        }
    spec.update(row.spec)
    status: dict[str, Any] = {
        "operationalStatus": "OK",
        "errorMessage": "",
        "errorCount": 0,
        "provisioningFailCount": 0,
        "poweredOn": True,
        "provisioning": {"state": row.state, "ID": "", **row.provisioning},
    }
    if row.registered:
        status["goodCredentials"] = {
            "credentials": {"name": SECRET_NAME, "namespace": "ns"},
            "credentialsVersion": SECRET_VERSION,
        }
    status.update(row.status)
    metadata: dict[str, Any] = {
        "name": "h1",
        "namespace": "ns",
        "uid": "0b5e1c7e-0000-4000-8000-000000000001",
        "finalizers": ["baremetalhost.metal3.io"],
    }
    if row.annotations:
        metadata["annotations"] = dict(row.annotations)
    if row.deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "apiVersion": "metal3.io/v1alpha1",
        "kind": "BareMetalHost",
        "metadata": metadata,
        "spec": spec,
        "status": status,
    }


async def run_step(row: Row) -> Step:
    host = BareMetalHost.from_json(manifest(row))
    provisioner = RecordingProvisioner(
        script={operation: [result] for operation, result in row.script.items()},
        powered_on=row.hardware_on,
    )
    slots: list[None] = []

    async def user_data() -> tuple[str | None, str | None, str | None]:
        return USER_DATA

    ctx = StepContext(
        host=host,
        provisioner=provisioner,
        credentials=Credentials("admin", "secret-pw") if row.credentials else None,
        credentials_version=SECRET_VERSION,
        settings=SETTINGS,
        busy_elsewhere=lambda: row.busy_elsewhere,
        reserve_slot=lambda: slots.append(None),
        user_data=user_data,
    )
    outcome = await HostStateMachine(ctx).run()
    return Step(host, ctx, provisioner, outcome, len(slots))


# --- row-specific checks -----------------------------------------------------------------------


def boot_mode_set(step: Step) -> None:
    assert step.status.provisioning.boot_mode == "UEFI"  # upstream's default boot mode


def register_history_started(step: Step) -> None:
    boot_mode_set(step)
    history = step.status.operation_history
    assert history.register.start and not history.register.end


def discovered(step: Step) -> None:
    assert ("Discovered", "discovered host with no BMC details") in step.events()


def credentials_now_good(step: Step) -> None:
    good = step.status.good_credentials
    assert (good.credentials.name, good.credentials_version) == (SECRET_NAME, SECRET_VERSION)
    assert ("BMCAccessValidated", "verified access to the BMC") in step.events()
    data = step.provisioner.registered_with
    assert data is not None
    assert data.address == "redfish://192.0.2.10/redfish/v1/Systems/1"
    assert data.credentials == Credentials("admin", "secret-pw")


def credentials_still_old(step: Step) -> None:
    assert step.status.good_credentials.credentials_version == "6"
    assert step.status.tried_credentials.credentials_version == SECRET_VERSION


def reregistered_in_history(step: Step) -> None:
    credentials_now_good(step)
    history = step.status.operation_history
    assert history.register.start and history.register.end  # re-registration timed


def hardware_stored(step: Step) -> None:
    assert step.status.hardware.to_json() == {"hostname": "recorded", "ramMebibytes": 4096}
    assert step.ctx.hardware is not None  # for the reconciler's HardwareData
    assert step.ctx.remove_annotations == set()


def no_hardware_stored(step: Step) -> None:
    assert step.status.hardware is None and step.ctx.hardware is None


def inspect_annotation_consumed(step: Step) -> None:
    assert step.ctx.remove_annotations == {INSPECT}
    assert step.ctx.hardware is not None


def raid_applied_with_cleaning(step: Step) -> None:
    data = step.provisioner.prepared_with
    assert data is not None
    assert data.automated_cleaning is True
    assert data.raid is not None and data.raid.to_json() == RAID
    assert step.status.provisioning.raid.to_json() == RAID


def prepared_without_cleaning(step: Step) -> None:
    data = step.provisioner.prepared_with
    assert data is not None and data.automated_cleaning is False


def powered_on_now(step: Step) -> None:
    assert step.status.powered_on is True
    assert ("PowerOn", "host powered on") in step.events()


def powered_off_now(step: Step) -> None:
    assert step.status.powered_on is False
    assert ("PowerOff", "host powered off") in step.events()


def delayed_event(step: Step) -> None:
    assert any(reason == "Delayed" for reason, _ in step.events())


def retries_exhausted(step: Step) -> None:
    message = "provisioning failed 3 times in a row; not retrying until the image changes"
    assert ("ProvisioningError", message) in step.events("Warning")


def fail_count_reset(step: Step) -> None:
    assert step.status.provisioning_fail_count == 0


def provisioned_image(step: Step) -> None:
    assert step.status.provisioning.image.url == IMAGE["url"]
    assert step.status.last_attempted_image.url == IMAGE["url"]
    assert step.status.powered_on is True
    assert step.status.provisioning_fail_count == 0
    data = step.provisioner.provisioned_with
    assert data is not None
    assert (data.user_data, data.network_data, data.meta_data) == USER_DATA
    assert data.image is not None and data.image.url == IMAGE["url"]


def provisioned_custom_deploy(step: Step) -> None:
    assert step.status.provisioning.custom_deploy.method == "install-from-ramdisk"
    assert step.status.provisioning.image is None


def provisioning_failure_counted(step: Step) -> None:
    assert step.status.provisioning_fail_count == 1
    assert step.status.last_attempted_image.url == IMAGE["url"]
    assert step.status.provisioning.image is None


def reboot_consumed(step: Step) -> None:
    powered_off_now(step)
    assert step.ctx.remove_annotations == {REBOOT}


def reboot_kept(step: Step) -> None:
    powered_off_now(step)
    assert step.ctx.remove_annotations == set()


def reboot_refused(step: Step) -> None:
    assert step.status.powered_on is True
    assert step.ctx.remove_annotations == {REBOOT}


def powered_off_for_delete(step: Step) -> None:
    assert step.status.powered_on is False
    assert step.provisioner.powered_on is False


def workload_removed(step: Step) -> None:
    assert step.status.provisioning.image is None
    assert step.status.powered_on is False


def giving_up_was_announced(step: Step) -> None:
    assert any(message == BOOM for _, message in step.events("Warning"))


def adopted(step: Step) -> None:
    data = step.provisioner.adopted_with
    assert data is not None
    assert data.image is None and data.user_data is None


def forgotten(step: Step) -> None:
    assert step.ctx.forget_host is True


def not_forgotten(step: Step) -> None:
    assert step.ctx.forget_host is False


def detached_event(step: Step) -> None:
    assert ("Detached", "host detached from the provisioner") in step.events()


def attached_event(step: Step) -> None:
    assert ("Attached", "host re-attached to the provisioner") in step.events()


def no_error_event(step: Step) -> None:
    assert step.events("Warning") == []


PROVISIONED = {"image": IMAGE}  # status.provisioning of a host running IMAGE

ROWS = [
    # --- none / unmanaged ------------------------------------------------------------------
    Row("none: BMC given -> registering", "", registered=False, credentials=False,
        next_state="registering", check=register_history_started),
    Row("none: no BMC -> unmanaged", "", bmc=False, registered=False, credentials=False,
        next_state="unmanaged", operational_status="discovered", check=discovered),
    Row("unmanaged: still no BMC -> idle", "unmanaged", bmc=False, registered=False,
        credentials=False, status={"operationalStatus": "discovered"},
        next_state="unmanaged", kind=CONTINUE, requeue=None, operational_status="discovered"),
    Row("unmanaged: BMC added -> registering", "unmanaged", registered=False, credentials=False,
        status={"operationalStatus": "discovered"}, next_state="registering"),
    # --- registering -----------------------------------------------------------------------
    Row("registering: new credentials validated, state kept", "registering", registered=False,
        next_state="registering", calls=(REREGISTER,), kind=CONTINUE, requeue=0.0,
        check=credentials_now_good),
    Row("registering: registered -> inspecting, errorCount reset", "registering",
        status={"errorCount": 2}, next_state="inspecting", calls=(REGISTER,)),
    Row("registering: no slot for inspecting -> delayed", "registering", busy_elsewhere=2,
        next_state="registering", calls=(REGISTER,), kind=DELAYED,
        operational_status="delayed", check=delayed_event),
    Row("registering: externally provisioned -> externally provisioned", "registering",
        spec={"externallyProvisioned": True}, next_state="externally provisioned",
        calls=(REGISTER,)),
    Row("registering: inspection disabled -> preparing", "registering",
        spec={"inspectionMode": "disabled"}, next_state="preparing", calls=(REGISTER,)),
    Row("registering: BMC refuses -> registration error", "registering", registered=False,
        script={"register": failed(BOOM)}, next_state="registering", calls=(REREGISTER,),
        kind=ERROR, error_type="registration error", error_count=1, error_message=BOOM),
    Row("registering: fails again -> errorCount 2 -> 3", "registering",
        status=prior_error("registration error", 2), script={"register": failed(BOOM)},
        next_state="registering", calls=(REREGISTER,), kind=ERROR,
        error_type="registration error", error_count=3, error_message=BOOM),
    Row("registering: retry succeeds -> error cleared, count kept", "registering",
        status=prior_error("registration error", 2), next_state="registering",
        calls=(REREGISTER,), kind=CONTINUE, requeue=0.0, error_count=2),
    Row("registering: in progress -> requeue as the provisioner asks", "registering",
        registered=False, script={"register": in_progress(3.0)}, next_state="registering",
        calls=(REREGISTER,), kind=CONTINUE, requeue=3.0),
    # --- inspecting ------------------------------------------------------------------------
    Row("inspecting: done -> preparing, hardware stored", "inspecting",
        next_state="preparing", calls=(REGISTER, "inspect(force=False)"), check=hardware_stored),
    Row("inspecting: fails -> inspection error", "inspecting",
        script={"inspect": failed(BOOM)}, next_state="inspecting",
        calls=(REGISTER, "inspect(force=False)"), kind=ERROR, error_type="inspection error",
        error_count=1, error_message=BOOM, check=no_hardware_stored),
    Row("inspecting: retry forces a new inspection -> preparing", "inspecting",
        status=prior_error("inspection error", 1), next_state="preparing",
        calls=(REGISTER, "inspect(force=True)"), check=hardware_stored),
    Row("inspecting: requested by annotation -> annotation consumed", "inspecting",
        annotations={INSPECT: ""}, next_state="preparing",
        calls=(REGISTER, "inspect(force=False)"), check=inspect_annotation_consumed),
    Row("inspecting: in progress -> poll interval", "inspecting",
        script={"inspect": in_progress()}, next_state="inspecting",
        calls=(REGISTER, "inspect(force=False)"), kind=CONTINUE, requeue=0.5,
        check=no_hardware_stored),
    Row("match profile (legacy): -> preparing without registering", "match profile",
        next_state="preparing"),
    # --- preparing -------------------------------------------------------------------------
    Row("preparing: RAID applied -> available", "preparing", spec={"raid": RAID},
        next_state="available", calls=(REGISTER, "prepare(force=False)"),
        check=raid_applied_with_cleaning),
    Row("preparing: cleaning disabled is passed on", "preparing",
        spec={"automatedCleaningMode": "disabled"}, next_state="available",
        calls=(REGISTER, "prepare(force=False)"), check=prepared_without_cleaning),
    Row("preparing: fails -> preparation error", "preparing", script={"prepare": failed(BOOM)},
        next_state="preparing", calls=(REGISTER, "prepare(force=False)"), kind=ERROR,
        error_type="preparation error", error_count=1, error_message=BOOM),
    Row("preparing: retry after an error is forced", "preparing",
        status=prior_error("preparation error", 1), next_state="available",
        calls=(REGISTER, "prepare(force=True)")),
    # --- available -------------------------------------------------------------------------
    Row("available: steady -> power polled", "available", next_state="available",
        calls=(REGISTER, "power_state"), kind=CONTINUE, requeue=30.0),
    Row("available: found off while online -> power on", "available", hardware_on=False,
        next_state="available", calls=(REGISTER, "power_state", "power_on(force=False)"),
        kind=CONTINUE, requeue=0.0, check=powered_on_now),
    Row("available: offline -> power off (soft)", "available", spec={"online": False},
        next_state="available", calls=(REGISTER, "power_state", "power_off(hard=False)"),
        kind=CONTINUE, requeue=0.0, check=powered_off_now),
    Row("available: power on fails -> power management error", "available", hardware_on=False,
        script={"power_on": failed(BOOM)}, next_state="available",
        calls=(REGISTER, "power_state", "power_on(force=False)"), kind=ERROR,
        error_type="power management error", error_count=1, error_message=BOOM),
    Row("available: image -> provisioning", "available", spec={"image": IMAGE},
        next_state="provisioning", calls=(REGISTER,), check=boot_mode_set),
    Row("available: custom deploy -> provisioning", "available",
        spec={"customDeploy": {"method": "install-from-ramdisk"}}, next_state="provisioning",
        calls=(REGISTER,)),
    Row("available: image but no slot -> delayed", "available", spec={"image": IMAGE},
        busy_elsewhere=2, next_state="available", calls=(REGISTER,), kind=DELAYED,
        operational_status="delayed", check=delayed_event),
    Row("available: image but offline -> not provisioned", "available",
        spec={"image": IMAGE, "online": False}, next_state="available",
        calls=(REGISTER, "power_state", "power_off(hard=False)"), kind=CONTINUE, requeue=0.0),
    Row("available: externally provisioned -> externally provisioned", "available",
        spec={"externallyProvisioned": True, "image": IMAGE},
        next_state="externally provisioned", calls=(REGISTER,)),
    Row("available: inspect annotation -> inspecting", "available",
        annotations={INSPECT: ""}, next_state="inspecting", calls=(REGISTER,)),
    Row("available: RAID changed -> preparing", "available", spec={"raid": RAID},
        next_state="preparing", calls=(REGISTER,)),
    Row("available: provisioning retries exhausted -> error, stays", "available",
        spec={"image": IMAGE}, status={"lastAttemptedImage": IMAGE, "provisioningFailCount": 3},
        next_state="available", calls=(REGISTER, "power_state"), kind=CONTINUE, requeue=30.0,
        error_type="provisioning error", error_count=1,
        error_message="provisioning failed 3 times in a row; not retrying until the image changes",
        check=retries_exhausted),
    Row("available: failures were for another image -> provisioning", "available",
        spec={"image": IMAGE},
        status={"lastAttemptedImage": OTHER_IMAGE, "provisioningFailCount": 3},
        next_state="provisioning", calls=(REGISTER,), check=fail_count_reset),
    Row("ready (legacy name of available): image -> provisioning", "ready",
        spec={"image": IMAGE}, next_state="provisioning", calls=(REGISTER,)),
    # --- provisioning ----------------------------------------------------------------------
    Row("provisioning: image written -> provisioned", "provisioning", spec={"image": IMAGE},
        status={"poweredOn": False}, hardware_on=False, next_state="provisioned",
        calls=(REGISTER, "provision"), check=provisioned_image),
    Row("provisioning: custom deploy done -> provisioned", "provisioning",
        spec={"customDeploy": {"method": "install-from-ramdisk"}}, next_state="provisioned",
        calls=(REGISTER, "provision"), check=provisioned_custom_deploy),
    Row("provisioning: fails -> provisioning error, fail count 1", "provisioning",
        spec={"image": IMAGE}, script={"provision": failed(BOOM)}, next_state="provisioning",
        calls=(REGISTER, "provision"), kind=ERROR, error_type="provisioning error",
        error_count=1, error_message=BOOM, check=provisioning_failure_counted),
    Row("provisioning: a new image starts a new fail count", "provisioning",
        spec={"image": IMAGE},
        status={"lastAttemptedImage": OTHER_IMAGE, "provisioningFailCount": 2},
        script={"provision": failed(BOOM)}, next_state="provisioning",
        calls=(REGISTER, "provision"), kind=ERROR, error_type="provisioning error",
        error_count=1, error_message=BOOM, check=provisioning_failure_counted),
    Row("provisioning: in progress -> requeue as the provisioner asks", "provisioning",
        spec={"image": IMAGE}, script={"provision": in_progress(2.0)},
        next_state="provisioning", calls=(REGISTER, "provision"), kind=CONTINUE, requeue=2.0),
    Row("provisioning: after an error -> deprovisioning", "provisioning", spec={"image": IMAGE},
        status=prior_error("provisioning error", 1), next_state="deprovisioning",
        calls=(REGISTER,), error_type="provisioning error", error_count=1,
        error_message="an earlier failure"),
    Row("provisioning: image removed -> deprovisioning", "provisioning",
        next_state="deprovisioning", calls=(REGISTER,)),
    # --- provisioned -----------------------------------------------------------------------
    Row("provisioned: steady -> power polled", "provisioned", spec={"image": IMAGE},
        provisioning=PROVISIONED, next_state="provisioned", calls=(REGISTER, "power_state"),
        kind=CONTINUE, requeue=30.0),
    Row("provisioned: image changed -> deprovisioning", "provisioned",
        spec={"image": OTHER_IMAGE}, provisioning=PROVISIONED, next_state="deprovisioning",
        calls=(REGISTER,)),
    Row("provisioned: image removed, no slot -> delayed", "provisioned",
        provisioning=PROVISIONED, busy_elsewhere=2, next_state="provisioned",
        calls=(REGISTER,), kind=DELAYED, operational_status="delayed"),
    Row("provisioned: plain reboot -> soft power off, annotation consumed", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED, annotations={REBOOT: ""},
        next_state="provisioned", calls=(REGISTER, "power_state", "power_off(hard=False)"),
        kind=CONTINUE, requeue=0.0, check=reboot_consumed),
    Row("provisioned: suffixed hard reboot -> hard power off, annotation kept", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED,
        annotations={f"{REBOOT}/maintenance": '{"mode": "hard"}'}, next_state="provisioned",
        calls=(REGISTER, "power_state", "power_off(hard=True)"), kind=CONTINUE, requeue=0.0,
        check=reboot_kept),
    Row("provisioned: power off not allowed -> reboot annotation only consumed", "provisioned",
        spec={"image": IMAGE, "disablePowerOff": True}, provisioning=PROVISIONED,
        annotations={REBOOT: ""}, next_state="provisioned", calls=(REGISTER, "power_state"),
        kind=CONTINUE, requeue=30.0, check=reboot_refused),
    Row("provisioned: power off fails -> power management error", "provisioned",
        spec={"image": IMAGE, "online": False}, provisioning=PROVISIONED,
        script={"power_off": failed(BOOM)}, next_state="provisioned",
        calls=(REGISTER, "power_state", "power_off(hard=False)"), kind=ERROR,
        error_type="power management error", error_count=1, error_message=BOOM),
    Row("provisioned: power right again -> power error cleared, count 0", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED,
        status=prior_error("power management error", 2), next_state="provisioned",
        calls=(REGISTER, "power_state"), kind=CONTINUE, requeue=0.0),
    Row("provisioned: new credentials -> re-registered, timed", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED,
        status={"goodCredentials": {"credentials": {"name": SECRET_NAME, "namespace": "ns"},
                                    "credentialsVersion": "6"}},
        next_state="provisioned", calls=(REREGISTER,), kind=CONTINUE, requeue=0.0,
        check=reregistered_in_history),
    Row("provisioned: new credentials refused -> registration error", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED,
        status={"goodCredentials": {"credentials": {"name": SECRET_NAME, "namespace": "ns"},
                                    "credentialsVersion": "6"}},
        script={"register": failed(BOOM)}, next_state="provisioned", calls=(REREGISTER,),
        kind=ERROR, error_type="registration error", error_count=1, error_message=BOOM,
        check=credentials_still_old),
    # --- deprovisioning --------------------------------------------------------------------
    Row("deprovisioning: done -> available", "deprovisioning", provisioning=PROVISIONED,
        next_state="available", calls=(REGISTER, "deprovision(automated_cleaning=True)"),
        check=workload_removed),
    Row("deprovisioning: cleaning disabled is passed on", "deprovisioning",
        spec={"automatedCleaningMode": "disabled"}, provisioning=PROVISIONED,
        next_state="available", calls=(REGISTER, "deprovision(automated_cleaning=False)")),
    Row("deprovisioning: fails again -> errorCount 5 -> 6", "deprovisioning",
        provisioning=PROVISIONED, status=prior_error("provisioning error", 5),
        script={"deprovision": failed(BOOM)}, next_state="deprovisioning",
        calls=(REGISTER, "deprovision(automated_cleaning=True)"), kind=ERROR,
        error_type="provisioning error", error_count=6, error_message=BOOM),
    Row("deprovisioning: done while deleting -> powering off before delete", "deprovisioning",
        provisioning=PROVISIONED, deleting=True, next_state="powering off before delete",
        calls=(REGISTER, "deprovision(automated_cleaning=True)"), check=workload_removed),
    Row("deprovisioning: deleting, error 3 -> 4 -> given up, powering off", "deprovisioning",
        provisioning=PROVISIONED, deleting=True, status=prior_error("provisioning error", 3),
        script={"deprovision": failed(BOOM)}, next_state="powering off before delete",
        calls=(REGISTER, "deprovision(automated_cleaning=True)"), kind=COMPLETE,
        error_type="provisioning error", error_count=4, error_message=BOOM,
        check=giving_up_was_announced),
    Row("deprovisioning: deleting, error 2 -> 3 -> retried", "deprovisioning",
        provisioning=PROVISIONED, deleting=True, status=prior_error("provisioning error", 2),
        script={"deprovision": failed(BOOM)}, next_state="deprovisioning",
        calls=(REGISTER, "deprovision(automated_cleaning=True)"), kind=ERROR,
        error_type="provisioning error", error_count=3, error_message=BOOM),
    # --- externally provisioned ------------------------------------------------------------
    Row("externally provisioned: adopted, power polled", "externally provisioned",
        spec={"externallyProvisioned": True}, next_state="externally provisioned",
        calls=(REGISTER, "adopt", "power_state"), kind=CONTINUE, requeue=30.0, check=adopted),
    Row("externally provisioned: adoption fails -> provisioned registration error",
        "externally provisioned", spec={"externallyProvisioned": True},
        script={"adopt": failed(BOOM)}, next_state="externally provisioned",
        calls=(REGISTER, "adopt"), kind=ERROR, error_type="provisioned registration error",
        error_count=1, error_message=BOOM),
    Row("externally provisioned: adopted after an error -> cleared, count 0",
        "externally provisioned", spec={"externallyProvisioned": True},
        status=prior_error("provisioned registration error", 1),
        next_state="externally provisioned", calls=(REGISTER, "adopt", "power_state"),
        kind=CONTINUE, requeue=0.0),
    Row("externally provisioned: flag removed, never inspected -> inspecting",
        "externally provisioned", next_state="inspecting", calls=(REGISTER,)),
    Row("externally provisioned: flag removed, inspected -> preparing",
        "externally provisioned", status={"hardware": {"hostname": "h1"}},
        next_state="preparing", calls=(REGISTER,)),
    # --- deletion begins -------------------------------------------------------------------
    Row("deleting from none -> deleting", "", deleting=True, registered=False,
        credentials=False, next_state="deleting"),
    Row("deleting from registering -> deleting", "registering", deleting=True,
        next_state="deleting"),
    Row("deleting from inspecting -> powering off before delete", "inspecting", deleting=True,
        next_state="powering off before delete"),
    Row("deleting from available -> powering off before delete", "available", deleting=True,
        next_state="powering off before delete"),
    Row("deleting from provisioning -> deprovisioning", "provisioning", spec={"image": IMAGE},
        deleting=True, next_state="deprovisioning"),
    Row("deleting from provisioned -> deprovisioning", "provisioned", spec={"image": IMAGE},
        provisioning=PROVISIONED, deleting=True, next_state="deprovisioning"),
    Row("deleting from provisioned, no slot -> delayed", "provisioned", spec={"image": IMAGE},
        provisioning=PROVISIONED, deleting=True, busy_elsewhere=2, next_state="provisioned",
        kind=DELAYED, operational_status="delayed"),
    Row("deleting, registration stuck (4 errors) -> deleting", "deprovisioning",
        provisioning=PROVISIONED, deleting=True, status=prior_error("registration error", 4),
        next_state="deleting", error_type="registration error", error_count=4,
        error_message="an earlier failure"),
    Row("deleting, registration failing (3 -> 4) -> retried", "powering off before delete",
        deleting=True, status=prior_error("registration error", 3),
        script={"register": failed(BOOM)}, next_state="powering off before delete",
        calls=(REREGISTER,), kind=ERROR, error_type="registration error", error_count=4,
        error_message=BOOM),
    # --- powering off before delete --------------------------------------------------------
    Row("powering off before delete: off -> deleting", "powering off before delete",
        deleting=True, next_state="deleting", calls=(REGISTER, "power_off(hard=True)"),
        check=powered_off_for_delete),
    Row("powering off before delete: no credentials -> deleting", "powering off before delete",
        deleting=True, credentials=False, next_state="deleting"),
    Row("powering off before delete: power off not allowed -> deleting",
        "powering off before delete", deleting=True, spec={"disablePowerOff": True},
        next_state="deleting", calls=(REGISTER,)),
    Row("powering off before delete: error 3 -> 4 -> given up", "powering off before delete",
        deleting=True, status=prior_error("power management error", 3),
        script={"power_off": failed(BOOM)}, next_state="deleting",
        calls=(REGISTER, "power_off(hard=True)"), kind=COMPLETE,
        error_type="power management error", error_count=4, error_message=BOOM),
    Row("powering off before delete: error 2 -> 3 -> retried", "powering off before delete",
        deleting=True, status=prior_error("power management error", 2),
        script={"power_off": failed(BOOM)}, next_state="powering off before delete",
        calls=(REGISTER, "power_off(hard=True)"), kind=ERROR,
        error_type="power management error", error_count=3, error_message=BOOM),
    # --- deleting --------------------------------------------------------------------------
    Row("deleting: provisioner forgets the host -> finalizer may go", "deleting",
        deleting=True, next_state="deleting", calls=("delete",), kind=CONTINUE, requeue=None,
        check=forgotten),
    Row("deleting: delete fails -> registration error, kept", "deleting", deleting=True,
        script={"delete": failed(BOOM)}, next_state="deleting", calls=("delete",), kind=ERROR,
        error_type="registration error", error_count=1, error_message=BOOM,
        check=not_forgotten),
    Row("deleting: no BMC, no credentials -> forgotten without a call", "deleting",
        deleting=True, bmc=False, credentials=False, registered=False, next_state="deleting",
        kind=CONTINUE, requeue=None, check=forgotten),
    Row("deleting: BMC but no credentials -> provisioner still forgets it", "deleting",
        deleting=True, credentials=False, next_state="deleting", calls=("delete",),
        kind=CONTINUE, requeue=None, check=forgotten),
    # --- detached annotation ---------------------------------------------------------------
    Row("detached annotation on provisioned -> detached", "provisioned", spec={"image": IMAGE},
        provisioning=PROVISIONED, annotations={DETACHED: ""}, next_state="provisioned",
        calls=("detach",), kind=CONTINUE, requeue=0.0, operational_status="detached",
        check=detached_event),
    Row("detached annotation on available -> detached", "available",
        annotations={DETACHED: ""}, next_state="available", calls=("detach",), kind=CONTINUE,
        requeue=0.0, operational_status="detached"),
    Row("detached annotation, already detached -> idle", "provisioned", spec={"image": IMAGE},
        provisioning=PROVISIONED, annotations={DETACHED: ""},
        status={"operationalStatus": "detached"}, next_state="provisioned", kind=CONTINUE,
        requeue=None, operational_status="detached"),
    Row("detached annotation while provisioning -> ignored", "provisioning",
        spec={"image": IMAGE}, annotations={DETACHED: ""}, next_state="provisioned",
        calls=(REGISTER, "provision")),
    Row("detached annotation with force while provisioning -> detached", "provisioning",
        spec={"image": IMAGE}, annotations={DETACHED: '{"force": true}'},
        next_state="provisioning", calls=("detach(force=True)",), kind=CONTINUE, requeue=0.0,
        operational_status="detached"),
    Row("detach fails -> detach error", "provisioned", spec={"image": IMAGE},
        provisioning=PROVISIONED, annotations={DETACHED: ""}, script={"detach": failed(BOOM)},
        next_state="provisioned", calls=("detach",), kind=ERROR, error_type="detach error",
        error_count=1, error_message=BOOM),
    Row("detach succeeds after an error -> cleared, count 0", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED, annotations={DETACHED: ""},
        status=prior_error("detach error", 1), next_state="provisioned", calls=("detach",),
        kind=CONTINUE, requeue=0.0, operational_status="detached"),
    Row("annotation removed after a detach error -> cleared", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED, status=prior_error("detach error", 2),
        next_state="provisioned", kind=CONTINUE, requeue=0.0),
    Row("annotation removed from a detached host -> re-attached", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED,
        status={"operationalStatus": "detached"}, next_state="provisioned", kind=CONTINUE,
        requeue=0.0, check=attached_event),
    Row("detached, deleted with deleteAction delete -> deleting", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED, deleting=True,
        annotations={DETACHED: '{"deleteAction": "delete"}'},
        status={"operationalStatus": "detached"}, next_state="deleting",
        operational_status="detached"),
    Row("detached, deleted with deleteAction delay -> waits", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED, deleting=True,
        annotations={DETACHED: '{"deleteAction": "delay"}'},
        status={"operationalStatus": "detached"}, next_state="provisioned", kind=CONTINUE,
        requeue=None, operational_status="detached"),
    Row("detached, deleted, annotation gone -> re-attached first", "provisioned",
        spec={"image": IMAGE}, provisioning=PROVISIONED, deleting=True,
        status={"operationalStatus": "detached"}, next_state="provisioned", kind=CONTINUE,
        requeue=0.0, check=attached_event),
    # --- capacity delay --------------------------------------------------------------------
    Row("delayed, still no slot -> waits", "available", spec={"image": IMAGE},
        status={"operationalStatus": "delayed"}, busy_elsewhere=2, next_state="available",
        kind=DELAYED, operational_status="delayed"),
    Row("delayed, slot free -> back to OK", "available", spec={"image": IMAGE},
        status={"operationalStatus": "delayed"}, busy_elsewhere=1, next_state="available",
        kind=CONTINUE, requeue=0.0),
    # --- a state with no handler -----------------------------------------------------------
    Row("servicing (no handler) -> error", "servicing", next_state="servicing",
        calls=(REGISTER,), kind=ERROR, error_type="registration error", error_count=1,
        error_message="no handler for state 'servicing'", check=no_error_event),
]  # fmt: skip


def test_table_starts_from_every_lifecycle_state() -> None:
    states = {row.state for row in ROWS}
    lifecycle = {
        "", "unmanaged", "registering", "inspecting", "match profile", "preparing", "ready",
        "available", "provisioning", "provisioned", "externally provisioned", "deprovisioning",
        "powering off before delete", "deleting",
    }  # fmt: skip
    assert lifecycle <= states
    assert len({row.id for row in ROWS}) == len(ROWS), "row ids are unique"


@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
async def test_state_machine_step(row: Row) -> None:
    step = await run_step(row)
    status = step.status

    assert status.provisioning.state == row.next_state
    assert step.provisioner.calls == list(row.calls)
    assert step.outcome.kind is row.kind
    assert (status.error_type, status.error_count) == (row.error_type, row.error_count)
    assert status.error_message == (row.error_message if row.error_type else "")
    default_operational = "error" if row.error_type else "OK"
    assert status.operational_status == (row.operational_status or default_operational)

    # The requeue delay follows from the outcome.
    if row.kind is CONTINUE:
        assert row.requeue is not ..., "a CONTINUE row says when to look again"
        assert step.outcome.requeue_after == row.requeue
    elif row.kind is COMPLETE:
        assert step.outcome.requeue_after == 0.0
    elif row.kind is DELAYED:
        assert step.outcome.requeue_after == SETTINGS.delayed_retry
    else:  # upstream's backoff after errorCount errors, in units of error_backoff_unit
        n = min(status.error_count, 10)
        assert step.outcome.requeue_after is not None
        assert 2 ** (n - 1) <= step.outcome.requeue_after <= 2**n

    # A provisioning slot is taken exactly when the host enters a busy state.
    entered_busy = row.next_state in BUSY and row.next_state != row.state
    assert step.slots_taken == (1 if entered_busy else 0)

    # A state change is recorded for the reconciler and announced.
    if row.next_state != row.state:
        assert step.ctx.state_changed_from == row.state
        change = f"provisioning state changed from {row.state or 'none'!r} to {row.next_state!r}"
        assert change in [message for _, message in step.events()]
    else:
        assert step.ctx.state_changed_from is None

    # A failed call is announced with its message.
    if row.kind is ERROR and row.check is not no_error_event:
        assert row.error_message in [message for _, message in step.events("Warning")]

    if row.check is not None:
        row.check(step)


# --- paused: the reconciler's guard, before the state machine ----------------------------------


@pytest.fixture
def unreachable_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: every connection is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.parametrize("paused", [True, False])
async def test_paused_host_is_left_alone(unreachable_port: int, paused: bool) -> None:
    """Paused, a reconcile touches neither the provisioner nor the API (the client here reaches
    no server, so any write would fail); unpaused, the same reconcile does try to write."""
    annotations = {"baremetalhost.metal3.io/paused": ""} if paused else {}
    # Work is due: the image changed, so an unpaused host starts deprovisioning.
    row = Row("paused", "provisioned", spec={"image": OTHER_IMAGE}, provisioning=PROVISIONED,
              annotations=annotations)  # fmt: skip
    obj = manifest(row)
    obj["metadata"]["resourceVersion"] = "5"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_NAME, "namespace": "ns", "resourceVersion": SECRET_VERSION},
        "stringData": {"username": "admin", "password": "secret-pw"},
    }
    configuration = Configuration(host=f"http://127.0.0.1:{unreachable_port}")
    async with KubeClient(ApiClient(configuration), timeout=5.0) as client:
        manager = Manager(client, ManagerOptions(health_address=None))
        factory = RecordingProvisionerFactory()
        recorder = EventRecorder(client, EventSource("test", "test", "test"))
        reconciler = BareMetalHostReconciler(client, manager, factory, recorder, settings=SETTINGS)
        reconciler.hosts.store.put(obj)
        reconciler.secrets.store.put(secret)
        if paused:
            result = await reconciler.reconcile(("ns", "h1"))
            assert result.requeue_after is None
            assert (factory.hosts, factory.provisioner.calls) == ([], [])
        else:  # the step runs, then writing its status fails: there is no API server
            with pytest.raises(aiohttp.ClientConnectionError):
                await reconciler.reconcile(("ns", "h1"))
            assert (factory.hosts, factory.provisioner.calls) == (["h1"], [REGISTER])
