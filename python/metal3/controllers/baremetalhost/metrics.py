"""Prometheus metrics of the host controller, under the upstream `metal3_` names."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from metal3.api.constants import ProvisioningState as S

RECONCILES = Counter("metal3_reconcile_total", "Host reconciles", ["namespace", "host"])
RECONCILE_ERRORS = Counter("metal3_reconcile_error_total", "Host reconciles that failed")
STATE_CHANGES = Counter(
    "metal3_provisioning_state_change_total", "Provisioning state changes", ["from", "to"]
)
ERRORS = Counter("metal3_host_error_total", "Operations that failed, by error type", ["type"])
UNMANAGED = Counter("metal3_host_unmanaged_total", "Hosts found without BMC details")
REGISTRATION_REQUIRED = Counter("metal3_host_registration_required_total", "Registrations required")
CREDENTIALS_MISSING = Counter("metal3_credentials_missing_total", "Credentials Secret missing")
CREDENTIALS_INVALID = Counter("metal3_credentials_invalid_total", "Credentials Secret invalid")
DELAYED = Counter("metal3_provisioning_delayed_total", "Operations delayed by capacity", ["state"])
DELETE_WITHOUT_DEPROVISIONING = Counter(
    "metal3_delete_without_deprovisioning_total", "Hosts deleted without deprovisioning"
)
DELETE_WITHOUT_POWER_OFF = Counter(
    "metal3_delete_without_powering_off_total", "Hosts deleted without powering off"
)
DELETE_DELAYED_DETACHED = Counter(
    "metal3_delete_delayed_for_detached_total", "Deletions delayed for detached hosts"
)

_BUCKETS = (0.01, 0.1, 1, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)
OPERATION_TIME: dict[str, Histogram] = {
    S.REGISTERING: Histogram(
        "metal3_operation_register_duration_seconds", "Register", buckets=_BUCKETS
    ),
    S.INSPECTING: Histogram(
        "metal3_operation_inspect_duration_seconds", "Inspect", buckets=_BUCKETS
    ),
    S.PROVISIONING: Histogram(
        "metal3_operation_provision_duration_seconds", "Provision", buckets=_BUCKETS
    ),
    S.DEPROVISIONING: Histogram(
        "metal3_operation_deprovision_duration_seconds", "Deprovision", buckets=_BUCKETS
    ),
}


def observe_operation(state: str, seconds: float) -> None:
    histogram = OPERATION_TIME.get(state)
    if histogram is not None:
        histogram.observe(seconds)
