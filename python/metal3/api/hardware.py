"""What inspection learns about a host: `HardwareDetails` and its parts.

Held in a BareMetalHost's `status.hardware` and in the HardwareData resource's `spec.hardware`.
"""

from __future__ import annotations

from dataclasses import dataclass

from metal3.api.constants import DiskType
from metal3.api.model import Model, prop

MAC_PATTERN = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"


@dataclass(kw_only=True)
class HardwareSystemVendor(Model):
    manufacturer: str | None = prop("manufacturer", "Manufacturer of the system.")
    product_name: str | None = prop("productName", "Product (model) name of the system.")
    serial_number: str | None = prop("serialNumber", "Serial number of the system.")


@dataclass(kw_only=True)
class BIOS(Model):
    date: str | None = prop("date", "Release date of the BIOS.")
    vendor: str | None = prop("vendor", "Vendor of the BIOS.")
    version: str | None = prop("version", "Version of the BIOS.")


@dataclass(kw_only=True)
class Firmware(Model):
    bios: BIOS | None = prop("bios", "The BIOS of the system.")


@dataclass(kw_only=True)
class VLAN(Model):
    id: int | None = prop("id", "VLAN ID.", minimum=0, maximum=4094, format="int32")
    name: str | None = prop("name", "VLAN name.")


@dataclass(kw_only=True)
class LLDP(Model):
    """What the switch port a NIC is plugged into says about itself."""

    switch_id: str | None = prop("switchID", "Chassis ID of the switch.")
    port_id: str | None = prop("portID", "Port ID on the switch.")
    switch_system_name: str | None = prop("switchSystemName", "System name of the switch.")


@dataclass(kw_only=True)
class NIC(Model):
    name: str | None = prop("name", "Name of the network interface, e.g. eth0.")
    model: str | None = prop("model", "Vendor and product IDs of the NIC, e.g. '0x8086 0x1572'.")
    mac: str | None = prop("mac", "Device MAC address.", pattern=MAC_PATTERN)
    ip: str | None = prop("ip", "IP address of the interface (IPv4 or IPv6).")
    speed_gbps: int | None = prop("speedGbps", "Speed of the device in Gb/s.")
    vlans: list[VLAN] | None = prop("vlans", "VLANs available.")
    vlan_id: int | None = prop(
        "vlanId", "Untagged VLAN ID.", minimum=0, maximum=4094, format="int32"
    )
    pxe: bool | None = prop("pxe", "Whether the NIC is able to boot using PXE.")
    lldp: LLDP | None = prop("lldp", "LLDP data of the switch port.")
    pci_address: str | None = prop("pciAddress", "PCI address of the NIC.")


@dataclass(kw_only=True)
class Storage(Model):
    name: str | None = prop("name", "Linux device name of the disk, e.g. /dev/sda.")
    alternate_names: list[str] | None = prop(
        "alternateNames", "Other names of the disk, e.g. /dev/disk/by-path/..."
    )
    rotational: bool | None = prop("rotational", "Whether the disk uses rotational media.")
    type: str | None = prop("type", "Device type.", enum=tuple(DiskType))
    size_bytes: int | None = prop("sizeBytes", "Size of the disk in bytes.", format="int64")
    vendor: str | None = prop("vendor", "Name of the vendor of the device.")
    model: str | None = prop("model", "Hardware model of the device.")
    serial_number: str | None = prop("serialNumber", "Serial number of the device.")
    wwn: str | None = prop("wwn", "World Wide Name of the device.")
    wwn_vendor_extension: str | None = prop("wwnVendorExtension", "WWN vendor extension.")
    wwn_with_extension: str | None = prop("wwnWithExtension", "WWN with the vendor extension.")
    hctl: str | None = prop("hctl", "SCSI location of the device (host:channel:target:lun).")


@dataclass(kw_only=True)
class CPU(Model):
    arch: str | None = prop("arch", "CPU architecture, e.g. x86_64.")
    model: str | None = prop("model", "CPU model name.")
    clock_megahertz: float | None = prop("clockMegahertz", "Clock speed in MHz.", format="double")
    flags: list[str] | None = prop("flags", "CPU flags.")
    count: int | None = prop("count", "Number of logical CPUs.")


@dataclass(kw_only=True)
class Accelerator(Model):
    vendor_id: str | None = prop("vendorID", "PCI vendor ID.")
    device_id: str | None = prop("deviceID", "PCI device ID.")
    type: str | None = prop("type", "Kind of accelerator, e.g. GPU.")
    device_info: str | None = prop("deviceInfo", "Human-readable device description.")
    pci_address: str | None = prop("pciAddress", "PCI address of the device.")


@dataclass(kw_only=True)
class HardwareDetails(Model):
    accelerators: list[Accelerator] | None = prop("accelerators", "Accelerators such as GPUs.")
    system_vendor: HardwareSystemVendor | None = prop("systemVendor", "System manufacturer data.")
    firmware: Firmware | None = prop("firmware", "System firmware.")
    ram_mebibytes: int | None = prop("ramMebibytes", "Memory in MiB.")
    nics: list[NIC] | None = prop("nics", "Network interfaces.")
    storage: list[Storage] | None = prop("storage", "Storage devices.")
    cpu: CPU | None = prop("cpu", "CPU details.")
    hostname: str | None = prop("hostname", "Host name reported by the host.")
