"""The BareMetalHost resource (metal3.io/v1alpha1): a physical server and its lifecycle."""

from __future__ import annotations

from dataclasses import dataclass

from metal3.api.constants import (
    API_VERSION,
    BAREMETALHOST_KIND,
    HARDWARE_RAID_LEVELS,
    SOFTWARE_RAID_LEVELS,
    AutomatedCleaningMode,
    BootMode,
    ChecksumType,
    ErrorType,
    ImageFormat,
    InspectionMode,
    OperationalStatus,
)
from metal3.api.hardware import MAC_PATTERN, HardwareDetails
from metal3.api.meta import Condition, ObjectMeta, ObjectReference, SecretReference, Taint
from metal3.api.model import Model, prop

ANCHORED_MAC_PATTERN = f"^{MAC_PATTERN}$"


@dataclass(kw_only=True)
class BMCDetails(Model):
    address: str | None = prop(
        "address",
        "URL of the BMC; its scheme selects the driver, e.g. ipmi://, redfish+https://.",
        required=True,
    )
    credentials_name: str | None = prop(
        "credentialsName",
        "Name of the Secret (keys `username`, `password`) in the host's namespace.",
        required=True,
    )
    disable_certificate_verification: bool | None = prop(
        "disableCertificateVerification",
        "Skip TLS certificate verification when talking to the BMC.",
    )


@dataclass(kw_only=True)
class RootDeviceHints(Model):
    """Which disk becomes the root device; every hint given must match."""

    device_name: str | None = prop(
        "deviceName", "Linux device name (/dev/sda) or /dev/disk/by-path/ link; exact match."
    )
    hctl: str | None = prop("hctl", "SCSI address host:channel:target:lun; exact match.")
    model: str | None = prop("model", "Vendor-specific device identifier; substring match.")
    vendor: str | None = prop("vendor", "Name of the vendor or manufacturer; substring match.")
    serial_number: str | None = prop("serialNumber", "Disk serial number; exact match.")
    min_size_gigabytes: int | None = prop(
        "minSizeGigabytes", "The smallest acceptable size, in gigabytes.", minimum=0
    )
    wwn: str | None = prop("wwn", "Unique storage identifier; exact match.")
    wwn_with_extension: str | None = prop(
        "wwnWithExtension", "Unique storage identifier with the vendor extension; exact match."
    )
    wwn_vendor_extension: str | None = prop(
        "wwnVendorExtension", "Unique vendor storage identifier; exact match."
    )
    rotational: bool | None = prop("rotational", "True for spinning media, false otherwise.")


@dataclass(kw_only=True)
class Image(Model):
    url: str | None = prop("url", "Where to fetch the image from.", required=True)
    checksum: str | None = prop(
        "checksum", "Checksum of the image, or URL of a checksum file; required but for live-iso."
    )
    checksum_type: str | None = prop(
        "checksumType",
        "Checksum algorithm; `auto` guesses it from the checksum's length.",
        enum=ChecksumType,
    )
    format: str | None = prop("format", "Disk format of the image.", enum=ImageFormat)
    oci_auth_secret_name: str | None = prop(
        "ociAuthSecretName", "Secret with registry credentials for oci:// images."
    )


@dataclass(kw_only=True)
class CustomDeploy(Model):
    method: str | None = prop(
        "method", "Custom deploy method understood by the deploy ramdisk.", required=True
    )


@dataclass(kw_only=True)
class HardwareRAIDVolume(Model):
    size_gibibytes: int | None = prop(
        "sizeGibibytes", "Size of the volume in GiB; unset or 0 uses all space.", minimum=0
    )
    level: str | None = prop("level", "RAID level.", required=True, enum=HARDWARE_RAID_LEVELS)
    name: str | None = prop("name", "Name of the volume.", max_length=64)
    rotational: bool | None = prop("rotational", "Use rotational (true) or solid-state disks.")
    number_of_physical_disks: int | None = prop(
        "numberOfPhysicalDisks", "Number of physical disks the volume uses.", minimum=1
    )
    controller: str | None = prop("controller", "Name of the RAID controller.")
    physical_disks: list[str] | None = prop(
        "physicalDisks", "Controller-specific names of the physical disks to use."
    )


@dataclass(kw_only=True)
class SoftwareRAIDVolume(Model):
    root_volume: bool | None = prop(
        "rootVolume", "Use this volume as the root device (at most one).", default=False
    )
    size_gibibytes: int | None = prop("sizeGibibytes", "Size of the volume in GiB.", minimum=0)
    level: str | None = prop("level", "RAID level.", required=True, enum=SOFTWARE_RAID_LEVELS)
    physical_disks: list[RootDeviceHints] | None = prop(
        "physicalDisks", "Hints selecting the member disks.", min_items=2
    )


@dataclass(kw_only=True)
class RAIDConfig(Model):
    hardware_raid_volumes: list[HardwareRAIDVolume] | None = prop(
        "hardwareRAIDVolumes",
        "Hardware RAID volumes; an empty list clears the configuration.",
        nullable=True,
    )
    software_raid_volumes: list[SoftwareRAIDVolume] | None = prop(
        "softwareRAIDVolumes",
        "Software RAID volumes (the first must be RAID-1); an empty list clears them.",
        nullable=True,
        max_items=2,
    )


@dataclass(kw_only=True)
class FirmwareConfig(Model):
    """Deprecated BIOS settings, kept for compatibility."""

    virtualization_enabled: bool | None = prop(
        "virtualizationEnabled", "Enable CPU virtualization extensions."
    )
    simultaneous_multithreading_enabled: bool | None = prop(
        "simultaneousMultithreadingEnabled", "Enable simultaneous multithreading."
    )
    sriov_enabled: bool | None = prop("sriovEnabled", "Enable SR-IOV.")


@dataclass(kw_only=True)
class SwitchPortIdentifier(Model):
    switch_id: str | None = prop(
        "switchID", "Chassis MAC of the switch.", required=True, pattern=ANCHORED_MAC_PATTERN
    )
    port_id: str | None = prop("portID", "Port on the switch.", required=True)
    switch_system_name: str | None = prop("switchSystemName", "System name of the switch.")


@dataclass(kw_only=True)
class HostNetworkAttachmentReference(Model):
    name: str | None = prop(
        "name", "Name of the HostNetworkAttachment.", required=True, min_length=1, max_length=253
    )
    namespace: str | None = prop("namespace", "Its namespace.", max_length=63)


@dataclass(kw_only=True)
class NetworkInterface(Model):
    name: str | None = prop("name", "Interface name.", pattern=r"^[a-zA-Z0-9._-]+$")
    mac_address: str | None = prop("macAddress", "Interface MAC.", pattern=ANCHORED_MAC_PATTERN)
    host_network_attachment: HostNetworkAttachmentReference | None = prop(
        "hostNetworkAttachment", "Switch port configuration to apply.", required=True
    )
    switch_port: SwitchPortIdentifier | None = prop(
        "switchPort", "The switch port, when LLDP cannot tell."
    )


@dataclass(kw_only=True)
class BareMetalHostSpec(Model):
    taints: list[Taint] | None = prop("taints", "Taints for the Node (deprecated).")
    bmc: BMCDetails | None = prop("bmc", "How to reach the baseboard management controller.")
    raid: RAIDConfig | None = prop("raid", "RAID configuration applied before provisioning.")
    firmware: FirmwareConfig | None = prop("firmware", "BIOS settings (deprecated).")
    hardware_profile: str | None = prop("hardwareProfile", "Hardware profile name (deprecated).")
    root_device_hints: RootDeviceHints | None = prop(
        "rootDeviceHints", "Selects the disk the image is written to."
    )
    boot_mode: str | None = prop("bootMode", "Boot mode of the host.", enum=BootMode)
    boot_mac_address: str | None = prop(
        "bootMACAddress", "MAC address of the NIC the host boots from.", pattern=MAC_PATTERN
    )
    online: bool | None = prop("online", "Whether the host should be powered on.", required=True)
    consumer_ref: ObjectReference | None = prop(
        "consumerRef", "What is using the host, e.g. a Cluster API Machine."
    )
    image: Image | None = prop("image", "Image to provision; setting it starts provisioning.")
    user_data: SecretReference | None = prop("userData", "Secret holding cloud-init user data.")
    preprovisioning_network_data_name: str | None = prop(
        "preprovisioningNetworkDataName",
        "Secret (same namespace) with network configuration for the deploy ramdisk.",
    )
    network_data: SecretReference | None = prop(
        "networkData", "Secret with network data for the config drive."
    )
    meta_data: SecretReference | None = prop(
        "metaData", "Secret with metadata for the config drive."
    )
    description: str | None = prop("description", "Free text to describe the host.")
    externally_provisioned: bool | None = prop(
        "externallyProvisioned", "Something else provisioned the host: manage its power only."
    )
    automated_cleaning_mode: str | None = prop(
        "automatedCleaningMode",
        "Whether disks are cleaned before provisioning and after deprovisioning.",
        enum=AutomatedCleaningMode,
        default=AutomatedCleaningMode.METADATA.value,
    )
    custom_deploy: CustomDeploy | None = prop(
        "customDeploy", "A custom deploy procedure instead of writing an image."
    )
    architecture: str | None = prop("architecture", "CPU architecture, e.g. x86_64 or aarch64.")
    disable_power_off: bool | None = prop(
        "disablePowerOff", "Never power the host off; reboot instead."
    )
    inspection_mode: str | None = prop(
        "inspectionMode", "How, or whether, to inspect the hardware.", enum=InspectionMode
    )
    network_interfaces: list[NetworkInterface] | None = prop(
        "networkInterfaces", "Switch port configuration per interface."
    )


@dataclass(kw_only=True)
class ProvisionStatus(Model):
    state: str | None = prop("state", "The provisioning state of the host.", required=True)
    id: str | None = prop("ID", "The provisioner's identifier of the host.", required=True)
    image: Image | None = prop("image", "The image most recently provisioned successfully.")
    root_device_hints: RootDeviceHints | None = prop(
        "rootDeviceHints", "The root device hints used."
    )
    boot_mode: str | None = prop("bootMode", "The boot mode used.", enum=BootMode)
    raid: RAIDConfig | None = prop("raid", "The RAID configuration applied.")
    firmware: FirmwareConfig | None = prop("firmware", "The firmware settings applied.")
    custom_deploy: CustomDeploy | None = prop("customDeploy", "The custom deploy applied.")


@dataclass(kw_only=True)
class CredentialsStatus(Model):
    credentials: SecretReference | None = prop("credentials", "The credentials Secret.")
    credentials_version: str | None = prop(
        "credentialsVersion", "resourceVersion of the Secret when it was used."
    )


@dataclass(kw_only=True)
class OperationMetric(Model):
    start: str | None = prop(
        "start", "When the operation started.", format="date-time", nullable=True
    )
    end: str | None = prop("end", "When the operation ended.", format="date-time", nullable=True)


@dataclass(kw_only=True)
class OperationHistory(Model):
    register: OperationMetric | None = prop("register", "Registration.")
    inspect: OperationMetric | None = prop("inspect", "Inspection.")
    provision: OperationMetric | None = prop("provision", "Provisioning.")
    deprovision: OperationMetric | None = prop("deprovision", "Deprovisioning.")


@dataclass(kw_only=True)
class SwitchPortConfig(Model):
    mode: str | None = prop(
        "mode", "Switch port mode.", required=True, enum=("access", "trunk", "hybrid")
    )
    native_vlan: int | None = prop("nativeVLAN", "Untagged VLAN.", required=True)
    allowed_vlans: list[int] | None = prop("allowedVLANs", "Tagged VLANs allowed.")
    mtu: int | None = prop("mtu", "MTU of the port.")


@dataclass(kw_only=True)
class AppliedNetworkAttachmentConfig(Model):
    name: str | None = prop("name", "Interface name.", required=True)
    switch_port_config: SwitchPortConfig | None = prop(
        "switchPortConfig", "The configuration applied.", required=True
    )
    switch_port: SwitchPortIdentifier | None = prop("switchPort", "The switch port configured.")


@dataclass(kw_only=True)
class BareMetalHostStatus(Model):
    operational_status: str | None = prop(
        "operationalStatus", "The host's health.", required=True, enum=OperationalStatus
    )
    error_type: str | None = prop("errorType", "Class of the most recent error.", enum=ErrorType)
    last_updated: str | None = prop(
        "lastUpdated", "When the status was last observed.", format="date-time"
    )
    hardware_profile: str | None = prop(
        "hardwareProfile", "The matched hardware profile (deprecated)."
    )
    hardware: HardwareDetails | None = prop("hardware", "Hardware found by inspection.")
    provisioning: ProvisionStatus | None = prop(
        "provisioning", "State of the provisioner.", required=True
    )
    good_credentials: CredentialsStatus | None = prop(
        "goodCredentials", "The credentials last known to work."
    )
    tried_credentials: CredentialsStatus | None = prop(
        "triedCredentials", "The credentials last sent to the BMC."
    )
    error_message: str | None = prop(
        "errorMessage", "Details of the most recent error.", required=True
    )
    powered_on: bool | None = prop("poweredOn", "The power state last seen.", required=True)
    operation_history: OperationHistory | None = prop(
        "operationHistory", "Start and end of each operation."
    )
    error_count: int | None = prop(
        "errorCount", "Errors since the last success.", required=True, default=0
    )
    provisioning_fail_count: int | None = prop(
        "provisioningFailCount",
        "Consecutive failed provisioning attempts of the current image.",
        required=True,
        default=0,
    )
    last_attempted_image: Image | None = prop(
        "lastAttemptedImage", "The image of the latest provisioning attempt."
    )
    conditions: list[Condition] | None = prop(
        "conditions", "Observations of the host's state.", max_items=32
    )
    applied_network_attachment_configs: list[AppliedNetworkAttachmentConfig] | None = prop(
        "appliedNetworkAttachmentConfigs", "Switch port configurations last applied."
    )


@dataclass(kw_only=True)
class BareMetalHost(Model):
    api_version: str | None = prop("apiVersion", "APIVersion of the object.")
    kind: str | None = prop("kind", "Kind of the object.")
    metadata: ObjectMeta | None = prop(
        "metadata", "Standard object metadata.", schema_override={"type": "object"}
    )
    spec: BareMetalHostSpec | None = prop("spec", "The desired state of the host.")
    status: BareMetalHostStatus | None = prop("status", "The observed state of the host.")

    @classmethod
    def new(cls, name: str, namespace: str, spec: BareMetalHostSpec) -> BareMetalHost:
        """A host as a client would create it: no status, identity in metadata."""
        return cls(
            api_version=API_VERSION,
            kind=BAREMETALHOST_KIND,
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=spec,
        )
