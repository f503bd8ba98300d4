//! `status.hardware` as baremetal-operator writes it (HardwareDetails, camelCase JSON).
//!
//! Each `Option` is `Some` exactly when the key is written: Go's encoding/json leaves out empty,
//! zero and false fields, so a `Some` never holds an empty string or a zero. Strings are borrowed
//! from the inventory where they are copied unchanged.

use crate::model::Int;

#[derive(Clone, Debug, PartialEq)]
pub struct HardwareDetails<'b> {
    pub system_vendor: SystemVendor<'b>,
    pub firmware: Bios<'b>,
    pub ram_mebibytes: Option<Int>,
    pub nics: Vec<Nic<'b>>,
    pub storage: Option<Vec<Storage<'b>>>,
    pub cpu: Cpu<'b>,
    pub hostname: Option<&'b str>,
}

/// `systemVendor`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SystemVendor<'b> {
    pub manufacturer: Option<&'b str>,
    pub product_name: Option<&'b str>,
    pub serial_number: Option<&'b str>,
}

/// `firmware.bios`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bios<'b> {
    pub date: Option<&'b str>,
    pub vendor: Option<&'b str>,
    pub version: Option<&'b str>,
}

/// One entry of `nics` per interface, or two for a dual-stack one (see `dual_stack_ipv6`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Nic<'b> {
    pub name: Option<&'b str>,
    pub model: Option<String>,
    pub mac: Option<&'b str>,
    /// The IPv4 address, or else the IPv6 one.
    pub ip: Option<&'b str>,
    /// An interface with both addresses has a second entry right after this one: the same
    /// fields (equal, not shared) with this IPv6 address as `ip`.
    pub dual_stack_ipv6: Option<&'b str>,
    pub speed_gbps: Option<Int>,
    pub vlans: Option<Vec<Vlan>>,
    pub vlan_id: Option<u16>,
    pub pxe: bool,
    pub lldp: Option<Lldp>,
    pub pci_address: Option<&'b str>,
}

/// An entry of a NIC's `vlans`; it may have neither key (a VLAN name TLV of VLAN 0, no name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vlan {
    pub id: Option<u16>,
    pub name: Option<String>,
}

/// A NIC's `lldp`, present when at least one of its keys is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lldp {
    pub switch_id: Option<String>,
    pub port_id: Option<String>,
    pub switch_system_name: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskType {
    Hdd,
    Ssd,
    Nvme,
}

impl DiskType {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskType::Hdd => "HDD",
            DiskType::Ssd => "SSD",
            DiskType::Nvme => "NVME",
        }
    }
}

/// An entry of `storage`, in the inventory's order. `type` is always written.
#[derive(Clone, Debug, PartialEq)]
pub struct Storage<'b> {
    pub name: Option<&'b str>,
    /// `alternateNames`: the kernel name (possibly empty), then the by-path name when there
    /// is one (see `alternate_names()`).
    pub kernel_name: &'b str,
    pub by_path: Option<&'b str>,
    pub rotational: bool,
    pub disk_type: DiskType,
    pub size_bytes: Option<Int>,
    pub vendor: Option<&'b str>,
    pub model: Option<&'b str>,
    pub serial_number: Option<&'b str>,
    pub wwn: Option<&'b str>,
    pub wwn_vendor_extension: Option<&'b str>,
    pub wwn_with_extension: Option<&'b str>,
    pub hctl: Option<&'b str>,
}

impl<'b> Storage<'b> {
    /// `alternateNames`.
    pub fn alternate_names(&self) -> Vec<&'b str> {
        std::iter::once(self.kernel_name)
            .chain(self.by_path)
            .collect()
    }
}

/// `cpu` (always written, possibly empty).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cpu<'b> {
    pub arch: Option<&'b str>,
    pub model: Option<&'b str>,
    pub clock_megahertz: Option<Clock>,
    /// Sorted by code point.
    pub flags: Option<Vec<&'b str>>,
    pub count: Option<Int>,
}

/// `clockMegahertz`: a whole number, written as a float from 2^53 on (as the Python
/// implementation returned it; JSON readers see the same number).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Clock {
    Int(i64),
    Float(f64),
}
