"""Every string of the metal3.io/v1alpha1 API that code compares against, in one place.

The values are the upstream Metal3 strings: manifests, Cluster API tooling and `kubectl` output
use them verbatim. The enums are :class:`enum.StrEnum`, so members compare equal to the plain
strings stored in the API objects.
"""

from __future__ import annotations

from enum import StrEnum

GROUP = "metal3.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

BAREMETALHOST_KIND = "BareMetalHost"
BAREMETALHOST_PLURAL = "baremetalhosts"
HARDWAREDATA_KIND = "HardwareData"
HARDWAREDATA_PLURAL = "hardwaredata"


class ProvisioningState(StrEnum):
    """`status.provisioning.state`: where the host is in its lifecycle."""

    NONE = ""
    UNMANAGED = "unmanaged"
    REGISTERING = "registering"
    MATCH_PROFILE = "match profile"  # legacy, read as registering's successor
    PREPARING = "preparing"
    READY = "ready"  # legacy name of available
    AVAILABLE = "available"
    PROVISIONING = "provisioning"
    PROVISIONED = "provisioned"
    EXTERNALLY_PROVISIONED = "externally provisioned"
    DEPROVISIONING = "deprovisioning"
    INSPECTING = "inspecting"
    POWERING_OFF_BEFORE_DELETE = "powering off before delete"
    DELETING = "deleting"
    SERVICING = "servicing"


class ErrorType(StrEnum):
    """`status.errorType`: which operation failed."""

    PROVISIONED_REGISTRATION = "provisioned registration error"
    REGISTRATION = "registration error"
    INSPECTION = "inspection error"
    PREPARATION = "preparation error"
    PROVISIONING = "provisioning error"
    POWER_MANAGEMENT = "power management error"
    SERVICING = "servicing error"
    DETACH = "detach error"


class OperationalStatus(StrEnum):
    """`status.operationalStatus`: the host's health as the operator sees it."""

    NONE = ""
    OK = "OK"
    DISCOVERED = "discovered"
    ERROR = "error"
    DELAYED = "delayed"
    DETACHED = "detached"
    SERVICING = "servicing"


class BootMode(StrEnum):
    UEFI = "UEFI"
    UEFI_SECURE_BOOT = "UEFISecureBoot"
    LEGACY = "legacy"


class ChecksumType(StrEnum):
    MD5 = "md5"
    SHA256 = "sha256"
    SHA512 = "sha512"
    AUTO = "auto"


class ImageFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VDI = "vdi"
    VMDK = "vmdk"
    LIVE_ISO = "live-iso"


class AutomatedCleaningMode(StrEnum):
    METADATA = "metadata"
    DISABLED = "disabled"


class InspectionMode(StrEnum):
    DISABLED = "disabled"
    AGENT = "agent"
    FAST = "fast"


class DiskType(StrEnum):
    """`HardwareDetails.storage[].type`."""

    HDD = "HDD"
    SSD = "SSD"
    NVME = "NVME"


class DetachedDeleteAction(StrEnum):
    """`deleteAction` in the detached annotation's JSON value."""

    DELAY = "delay"
    DELETE = "delete"


class RebootMode(StrEnum):
    """`mode` in a reboot annotation's JSON value."""

    HARD = "hard"
    SOFT = "soft"


class ConditionType(StrEnum):
    MANAGEABLE = "Manageable"
    PROVISIONED = "Provisioned"
    READY = "Ready"
    AVAILABLE_FOR_PROVISIONING = "AvailableForProvisioning"
    PROGRESSING = "Progressing"
    HEALTHY = "Healthy"


HARDWARE_RAID_LEVELS: tuple[str, ...] = ("0", "1", "2", "5", "6", "1+0", "5+0", "6+0")
SOFTWARE_RAID_LEVELS: tuple[str, ...] = ("0", "1", "1+0")

# --- annotations -------------------------------------------------------------------------------
PAUSED_ANNOTATION = "baremetalhost.metal3.io/paused"
"""Present: the operator does not reconcile the host at all."""
DETACHED_ANNOTATION = "baremetalhost.metal3.io/detached"
"""Present: the provisioner lets go of the host; optional JSON value {deleteAction, force}."""
STATUS_ANNOTATION = "baremetalhost.metal3.io/status"
"""Holds a status (JSON) to restore, e.g. after a move between clusters."""
REBOOT_ANNOTATION_PREFIX = "reboot.metal3.io"
"""`reboot.metal3.io` or `reboot.metal3.io/<suffix>`; optional JSON value {mode, force}."""
INSPECT_ANNOTATION_PREFIX = "inspect.metal3.io"
"""Present (empty): inspect again; value `disabled`: skip inspection."""
INSPECT_ANNOTATION_DISABLED = "disabled"
HARDWARE_DETAILS_ANNOTATION = "inspect.metal3.io/hardwaredetails"
"""JSON HardwareDetails used instead of inspection."""
PAUSED_BY_STATUS_ANNOTATION_VALUE = "metal3.io/status"
"""Value of the paused annotation set while a status annotation is being restored."""

# --- finalizers --------------------------------------------------------------------------------
BAREMETALHOST_FINALIZER = "baremetalhost.metal3.io"
HARDWAREDATA_FINALIZER = "baremetalhost.metal3.io/hardwareData"

# --- Secrets -----------------------------------------------------------------------------------
SECRET_USERNAME_KEY = "username"
SECRET_PASSWORD_KEY = "password"
CONVERSION_DATA_ANNOTATION = "metal3.io/conversion-data"
SECRET_ENVIRONMENT_LABEL = "environment.metal3.io"
"""Label the operator puts on Secrets it watches (value `baremetal`)."""

# --- Cluster API provider Metal3 (infrastructure.cluster.x-k8s.io/v1beta1) and Cluster API ----
INFRASTRUCTURE_GROUP = "infrastructure.cluster.x-k8s.io"
INFRASTRUCTURE_VERSION = "v1beta1"
INFRASTRUCTURE_API_VERSION = f"{INFRASTRUCTURE_GROUP}/{INFRASTRUCTURE_VERSION}"
METAL3MACHINE_KIND = "Metal3Machine"
METAL3MACHINE_PLURAL = "metal3machines"
METAL3MACHINE_FINALIZER = "metal3machine.infrastructure.cluster.x-k8s.io"
METAL3_PROVIDER_ID_PREFIX = "metal3://"
"""Metal3Machine `spec.providerID` is `metal3://NAMESPACE/HOST/NAME`."""
CLUSTER_API_GROUP = "cluster.x-k8s.io"
CLUSTER_API_VERSION = "v1beta1"
MACHINE_KIND = "Machine"
MACHINE_PLURAL = "machines"


class Metal3MachineCondition(StrEnum):
    """Cluster API condition types a Metal3Machine carries (CAPM3's, plus the summary)."""

    READY = "Ready"
    ASSOCIATE_BMH = "AssociateBMH"


class Metal3MachineReason(StrEnum):
    """CAPM3's condition reasons used here."""

    WAITING_FOR_BOOTSTRAP_READY = "WaitingForBootstrapReady"
    ASSOCIATE_BMH_FAILED = "AssociateBMHFailed"
    DELETING = "Deleting"


class MachineAddressType(StrEnum):
    """Cluster API `MachineAddress.type`."""

    HOSTNAME = "Hostname"
    EXTERNAL_IP = "ExternalIP"
    INTERNAL_IP = "InternalIP"
    EXTERNAL_DNS = "ExternalDNS"
    INTERNAL_DNS = "InternalDNS"


class MachineStatusError(StrEnum):
    """Cluster API `failureReason` values (capierrors.MachineStatusError)."""

    INVALID_CONFIGURATION = "InvalidConfiguration"
    UNSUPPORTED_CHANGE = "UnsupportedChange"
    CREATE = "CreateError"
    UPDATE = "UpdateError"
    DELETE = "DeleteError"
    INSUFFICIENT_RESOURCES = "InsufficientResources"


# --- HostClaim and HostDeployPolicy (metal3.io/v1alpha1) -----------------------------------------
HOSTCLAIM_KIND = "HostClaim"
HOSTCLAIM_PLURAL = "hostclaims"
HOSTDEPLOYPOLICY_KIND = "HostDeployPolicy"
HOSTDEPLOYPOLICY_PLURAL = "hostdeploypolicies"
HOSTCLAIM_FINALIZER = "metal3.io/hostclaim"
FAILURE_DOMAIN_LABEL = "infrastructure.cluster.x-k8s.io/failure-domain"
"""Host label a claim's failureDomain prefers (Cluster API's)."""
HOSTCLAIM_UID_LABEL = "hostclaim.metal3.io/uid"
"""On the Secret copies a HostClaim makes in its host's namespace: the claim's uid."""
HOSTCLAIM_NAMESPACE_ANNOTATION = "hostclaim.metal3.io/namespace"
HOSTCLAIM_NAME_ANNOTATION = "hostclaim.metal3.io/name"
"""On the copies too: the claim's namespace and name (annotations: a name may not fit a label)."""


class HostClaimCondition(StrEnum):
    """Condition types of a HostClaim (upstream's)."""

    ASSOCIATED = "Associated"
    SYNCHRONIZED = "Synchronized"


class HostClaimReason(StrEnum):
    """Condition reasons of a HostClaim (upstream's values)."""

    BAREMETALHOST_ASSOCIATED = "BareMetalHostAssociated"
    MISSING_BAREMETALHOST = "MissingBareMetalHost"
    NO_BAREMETALHOST = "NoBareMetalHost"
    HOST_PAUSED = "HostPaused"
    HOSTCLAIM_DELETING = "HostClaimDeleting"
    HOSTCLAIM_DELETION_FAILED = "HostClaimDeletionFailed"
    CONFIGURATION_SYNCED = "ConfigurationSynced"
    BAD_USER_DATA_SECRET = "UserDataSecretSyncFailure"
    BAD_META_DATA_SECRET = "MetaDataSecretSyncFailure"
    BAD_NETWORK_DATA_SECRET = "NetworkDataSecretSyncFailure"
    BAREMETALHOST_NOT_SYNCHRONIZED = "BareMetalHostNotSynchronized"
