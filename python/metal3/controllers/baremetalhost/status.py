"""Status bookkeeping of a BareMetalHost: errors and their backoff, operation history, conditions.

Everything here is a pure function of the host (and the clock), so the state machine stays about
decisions and these rules stay testable on their own.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime

from metal3.api.baremetalhost import (
    BareMetalHost,
    BareMetalHostStatus,
    OperationHistory,
    OperationMetric,
    ProvisionStatus,
)
from metal3.api.constants import (
    ConditionType,
    ErrorType,
    OperationalStatus,
)
from metal3.api.constants import ProvisioningState as S
from metal3.api.meta import Condition

MAX_BACKOFF_EXPONENT = 10

# States whose time is recorded in status.operationHistory, by the history field.
HISTORY_FIELD: dict[str, str] = {
    S.REGISTERING: "register",
    S.INSPECTING: "inspect",
    S.PROVISIONING: "provision",
    S.DEPROVISIONING: "deprovision",
}
STEADY_STATES: frozenset[str] = frozenset(
    {S.AVAILABLE, S.READY, S.PROVISIONED, S.EXTERNALLY_PROVISIONED}
)
BUSY_STATES: frozenset[str] = frozenset({S.INSPECTING, S.PROVISIONING, S.DEPROVISIONING})
TRANSITIONAL_REASONS: dict[str, str] = {
    S.REGISTERING: "Registering",
    S.INSPECTING: "Inspecting",
    S.PREPARING: "Preparing",
    S.PROVISIONING: "Provisioning",
    S.DEPROVISIONING: "Deprovisioning",
    S.POWERING_OFF_BEFORE_DELETE: "PoweringOffBeforeDelete",
    S.DELETING: "Deleting",
}


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_status(host: BareMetalHost) -> BareMetalHostStatus:
    """The host's status, created with the required fields when the host has none yet."""
    if host.status is None:
        host.status = BareMetalHostStatus(
            operational_status=OperationalStatus.OK.value,
            error_message="",
            powered_on=False,
            error_count=0,
            provisioning_fail_count=0,
            provisioning=ProvisionStatus(state=S.NONE.value, id=""),
        )
    status = host.status
    if status.provisioning is None:
        status.provisioning = ProvisionStatus(state=S.NONE.value, id="")
    if status.error_message is None:
        status.error_message = ""
    if status.powered_on is None:
        status.powered_on = False
    if status.error_count is None:
        status.error_count = 0
    if status.provisioning_fail_count is None:
        status.provisioning_fail_count = 0
    if status.operational_status is None:
        status.operational_status = OperationalStatus.OK.value
    return status


def state_of(host: BareMetalHost) -> str:
    status = host.status
    if status is None or status.provisioning is None:
        return S.NONE.value
    return status.provisioning.state or S.NONE.value


def settle_operational_status(host: BareMetalHost) -> None:
    """Back from delayed or detached: error if an error is recorded, else OK."""
    status = ensure_status(host)
    status.operational_status = (
        OperationalStatus.ERROR.value if status.error_type else OperationalStatus.OK.value
    )


def set_error(host: BareMetalHost, error_type: ErrorType, message: str) -> None:
    """Record a failed operation: type, message, one more in the count; status error."""
    status = ensure_status(host)
    status.operational_status = OperationalStatus.ERROR.value
    status.error_type = error_type.value
    status.error_message = message
    status.error_count = (status.error_count or 0) + 1


def clear_error(host: BareMetalHost) -> bool:
    """Forget the last error (the count stays until a step completes); True if anything changed."""
    status = ensure_status(host)
    changed = bool(status.error_type or status.error_message)
    status.error_type = None
    status.error_message = ""
    if status.operational_status == OperationalStatus.ERROR.value:
        status.operational_status = OperationalStatus.OK.value
        changed = True
    return changed


def error_backoff(error_count: int, unit: float = 60.0) -> float:
    """Seconds before retrying after ``error_count`` consecutive errors.

    Random in [2^(n-1), 2^n] units (minutes upstream), n capped at 10, so a fleet of hosts
    failing together does not retry in lockstep.
    """
    n = max(1, min(error_count, MAX_BACKOFF_EXPONENT))
    base = 2.0**n
    return (base - random.random() * base * 0.5) * unit


def _history(host: BareMetalHost) -> OperationHistory:
    status = ensure_status(host)
    if status.operation_history is None:
        status.operation_history = OperationHistory()
    return status.operation_history


def record_state_begin(host: BareMetalHost, state: str, when: str) -> None:
    field = HISTORY_FIELD.get(state)
    if field is None:
        return
    history = _history(host)
    metric: OperationMetric | None = getattr(history, field)
    if metric is None or not metric.start or metric.end:
        setattr(history, field, OperationMetric(start=when))


def record_state_end(host: BareMetalHost, state: str, when: str) -> float | None:
    """Close the state's open history entry; returns its duration in seconds, if one was open."""
    field = HISTORY_FIELD.get(state)
    if field is None:
        return None
    metric: OperationMetric | None = getattr(_history(host), field)
    if metric is None or not metric.start or metric.end:
        return None
    metric.end = when
    started = datetime.fromisoformat(metric.start.replace("Z", "+00:00"))
    ended = datetime.fromisoformat(when.replace("Z", "+00:00"))
    return (ended - started).total_seconds()


def _condition(
    type_: ConditionType, ok: bool, reason: str, message: str = ""
) -> tuple[str, str, str, str]:
    return type_.value, "True" if ok else "False", reason, message


def desired_conditions(host: BareMetalHost) -> list[tuple[str, str, str, str]]:
    """(type, status, reason, message) of every condition, from the host as it now is."""
    status = ensure_status(host)
    state = state_of(host)
    error_type = status.error_type or ""
    online = bool(host.spec and host.spec.online)
    detached = status.operational_status == OperationalStatus.DETACHED.value

    if state in (S.NONE, S.UNMANAGED):
        manageable = _condition(ConditionType.MANAGEABLE, False, "NotManaged", "no BMC details")
    elif error_type == ErrorType.REGISTRATION.value:
        manageable = _condition(
            ConditionType.MANAGEABLE, False, "RegistrationFailed", status.error_message or ""
        )
    elif state == S.REGISTERING:
        manageable = _condition(ConditionType.MANAGEABLE, False, "Registering")
    else:
        manageable = _condition(ConditionType.MANAGEABLE, True, "Manageable")

    available = state in (S.AVAILABLE, S.READY)
    provisioned = state in (S.PROVISIONED, S.EXTERNALLY_PROVISIONED)
    progressing_reason = TRANSITIONAL_REASONS.get(state)
    if detached:
        progressing = _condition(ConditionType.PROGRESSING, False, "Detached")
    elif progressing_reason is not None:
        progressing = _condition(ConditionType.PROGRESSING, True, progressing_reason)
    else:
        progressing = _condition(ConditionType.PROGRESSING, False, "NotProgressing")

    healthy = (
        _condition(ConditionType.HEALTHY, False, "Error", status.error_message or error_type)
        if error_type
        else _condition(ConditionType.HEALTHY, True, "Healthy")
    )
    steady = state in STEADY_STATES and not error_type and not detached
    power_settled = bool(status.powered_on) == online
    if steady and power_settled:
        ready = _condition(ConditionType.READY, True, "Provisioned" if provisioned else "Available")
    elif detached:
        ready = _condition(ConditionType.READY, False, "Detached")
    elif error_type:
        ready = _condition(ConditionType.READY, False, "Error", status.error_message or "")
    else:
        ready = _condition(ConditionType.READY, False, progressing_reason or "NotReady")
    return [
        manageable,
        _condition(
            ConditionType.AVAILABLE_FOR_PROVISIONING,
            available and not error_type,
            "Available" if available else "NotAvailable",
        ),
        _condition(
            ConditionType.PROVISIONED,
            provisioned,
            "Provisioned"
            if provisioned
            else ("Provisioning" if state == S.PROVISIONING else "NotProvisioned"),
        ),
        ready,
        progressing,
        healthy,
    ]


def update_conditions(host: BareMetalHost, when: str) -> None:
    """Set every condition; lastTransitionTime moves only when a condition's status changes."""
    status = ensure_status(host)
    generation = host.metadata.generation if host.metadata else None
    current = {c.type: c for c in status.conditions or []}
    result: list[Condition] = []
    for type_, value, reason, message in desired_conditions(host):
        previous = current.pop(type_, None)
        transition = when
        if previous is not None and previous.status == value and previous.last_transition_time:
            transition = previous.last_transition_time
        result.append(
            Condition(
                type=type_,
                status=value,
                reason=reason,
                message=message[:32768],
                last_transition_time=transition,
                observed_generation=generation,
            )
        )
    result.extend(current.values())  # conditions someone else owns stay
    status.conditions = result
