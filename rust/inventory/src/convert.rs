//! The conversion: an inventory's fields to `status.hardware`, by baremetal-operator's rules
//! (documented field by field in `metal3.inspection`, the Python face).
//!
//! Every field read is checked in a fixed order (the top-level fields' types, `interfaces` not
//! empty, `system_vendor`, `memory`, `boot`, then each interface, each disk, `cpu`), so the
//! error reported for a document with several problems does not depend on its key order.

use crate::clock;
use crate::error::{Error, Problem};
use crate::lldp::{self, Facts};
use crate::model::{
    Boot, Cpu, Disk, Expected, Found, Interface, Inventory, Item, Memory, SystemVendor, Text,
};
use crate::output::{self as out, Bios, DiskType, HardwareDetails, Nic, Storage};

/// `status.hardware` for an inventory, or the first problem found.
pub fn hardware_details<'b>(inventory: &'b Inventory<'_>) -> Result<HardwareDetails<'b>, Error> {
    let inv = inventory;
    check_row(
        String::new,
        [
            ("interfaces", inv.interfaces.mistyped()),
            ("disks", inv.disks.mistyped()),
            ("cpu", inv.cpu.mistyped()),
            ("memory", inv.memory.mistyped()),
            ("system_vendor", inv.system_vendor.mistyped()),
            ("boot", inv.boot.mistyped()),
            ("hostname", inv.hostname.mistyped()),
        ],
    )?;
    let interfaces = match inv.interfaces.get() {
        Some(interfaces) if !interfaces.is_empty() => interfaces,
        _ => return Err(Error::new(".interfaces", Problem::NoInterfaces)),
    };
    let (system_vendor, firmware) = system(inv.system_vendor.get())?;
    let ram_mebibytes = ram_mebibytes(inv.memory.get())?;
    let pxe_mac = pxe_mac(inv.boot.get())?;
    let nics = nics(interfaces, pxe_mac.as_deref())?;
    let storage = match inv.disks.get() {
        Some(disks) if !disks.is_empty() => Some(storage(disks)?),
        _ => None,
    };
    let cpu = cpu(inv.cpu.get())?;
    Ok(HardwareDetails {
        system_vendor,
        firmware,
        ram_mebibytes,
        nics,
        storage,
        cpu,
        hostname: inv.hostname.text(),
    })
}

/// The first field of an object (at path `at()`) whose type is wrong, as an error.
fn check_row<const N: usize>(
    at: impl FnOnce() -> String,
    fields: [(&str, Option<(Expected, &Found)>); N],
) -> Result<(), Error> {
    for (key, mistyped) in fields {
        if let Some((expected, found)) = mistyped {
            let problem = Problem::WrongType(expected, found.clone());
            return Err(Error::new(format!("{}.{key}", at()), problem));
        }
    }
    Ok(())
}

/// An array item that is not an object, as an error.
fn item<T>(item: &Item<T>, at: impl FnOnce() -> String) -> Result<&T, Error> {
    match item {
        Item::Value(value) => Ok(value),
        Item::Wrong(found) => Err(Error::new(
            at(),
            Problem::WrongType(Expected::Object, found.clone()),
        )),
    }
}

/// `systemVendor` and `firmware.bios` (both always written, possibly empty).
fn system<'b>(
    system: Option<&'b SystemVendor<'_>>,
) -> Result<(out::SystemVendor<'b>, Bios<'b>), Error> {
    let Some(s) = system else {
        return Ok(Default::default());
    };
    check_row(
        || ".system_vendor".into(),
        [
            ("manufacturer", s.manufacturer.mistyped()),
            ("product_name", s.product_name.mistyped()),
            ("serial_number", s.serial_number.mistyped()),
            ("firmware", s.firmware.mistyped()),
        ],
    )?;
    let vendor = out::SystemVendor {
        manufacturer: s.manufacturer.text(),
        product_name: s.product_name.text(),
        serial_number: s.serial_number.text(),
    };
    let Some(fw) = s.firmware.get() else {
        return Ok((vendor, Bios::default()));
    };
    check_row(
        || ".system_vendor.firmware".into(),
        [
            ("vendor", fw.vendor.mistyped()),
            ("version", fw.version.mistyped()),
            ("build_date", fw.build_date.mistyped()),
            ("date", fw.date.mistyped()),
        ],
    )?;
    let bios = Bios {
        // IPA's key is build_date; `date` is what some inventories call it.
        date: fw.build_date.text().or(fw.date.text()),
        vendor: fw.vendor.text(),
        version: fw.version.text(),
    };
    Ok((vendor, bios))
}

fn ram_mebibytes(memory: Option<&Memory>) -> Result<Option<i128>, Error> {
    let Some(memory) = memory else {
        return Ok(None);
    };
    check_row(
        || ".memory".into(),
        [("physical_mb", memory.physical_mb.mistyped())],
    )?;
    Ok(memory.physical_mb.nonzero())
}

/// The MAC the host PXE-booted from (Ironic's get_pxe_mac), lower-case, when it is a valid MAC
/// (`boot.pxe_interface` may be in pxelinux form, `01-aa-bb-cc-dd-ee-ff`).
fn pxe_mac(boot: Option<&Boot<'_>>) -> Result<Option<String>, Error> {
    let Some(boot) = boot else {
        return Ok(None);
    };
    check_row(
        || ".boot".into(),
        [("pxe_interface", boot.pxe_interface.mistyped())],
    )?;
    let Some(given) = boot.pxe_interface.text() else {
        return Ok(None);
    };
    let mac = match given.split_once('-') {
        Some((_, rest)) => rest.replace('-', ":"),
        None => given.to_owned(),
    };
    // ASCII lower-casing decides as Python's Unicode lower() did: no character outside ASCII
    // lower-cases to a hex digit or a separator, so only ASCII text can be a valid MAC.
    let mac = mac.to_ascii_lowercase();
    Ok(is_valid_mac(&mac).then_some(mac))
}

/// oslo's is_valid_mac on lower-case text: `(?:[0-9a-f]{2}[-:]){5}[0-9a-f]{2}`, all of it.
fn is_valid_mac(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 17
        && b.iter().enumerate().all(|(i, &c)| {
            if i % 3 == 2 {
                c == b':' || c == b'-'
            } else {
                c.is_ascii_digit() || (b'a'..=b'f').contains(&c)
            }
        })
}

/// Whether the text holds a MAC address anywhere (the CRD's pattern for a NIC's `mac`,
/// `[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}`, unanchored).
fn contains_mac(text: &str) -> bool {
    text.as_bytes().windows(17).any(|w| {
        w.iter().enumerate().all(|(i, &c)| {
            if i % 3 == 2 {
                c == b':'
            } else {
                c.is_ascii_hexdigit()
            }
        })
    })
}

fn nics<'b>(
    interfaces: &'b [Item<Interface<'_>>],
    pxe_mac: Option<&str>,
) -> Result<Vec<Nic<'b>>, Error> {
    let mut nics = Vec::with_capacity(interfaces.len());
    for (index, iface) in interfaces.iter().enumerate() {
        let at = || format!(".interfaces[{index}]");
        let iface = item(iface, at)?;
        check_row(
            at,
            [
                ("name", iface.name.mistyped()),
                ("mac_address", iface.mac_address.mistyped()),
                ("ipv4_address", iface.ipv4_address.mistyped()),
                ("ipv6_address", iface.ipv6_address.mistyped()),
                ("vendor", iface.vendor.mistyped()),
                ("product", iface.product.mistyped()),
                ("speed_mbps", iface.speed_mbps.mistyped()),
                ("lldp", iface.lldp.mistyped()),
                ("pci_address", iface.pci_address.mistyped()),
            ],
        )?;
        let name = iface.name.text();
        let mac = iface.mac_address.text();
        if let Some(mac) = mac.filter(|mac| !contains_mac(mac)) {
            let problem = Problem::NotAMac(mac.to_owned());
            return Err(Error::new(format!("{}.mac_address", at()), problem));
        }
        let facts = match iface.lldp.get() {
            Some(tlvs) if !tlvs.is_empty() && index < lldp::MAX_INTERFACES => {
                lldp::facts(tlvs, index)?
            }
            _ => Facts::default(),
        };
        let (ipv4, ipv6) = (iface.ipv4_address.text(), iface.ipv6_address.text());
        nics.push(Nic {
            name,
            model: model(iface.vendor.text(), iface.product.text()),
            mac,
            ip: ipv4.or(ipv6),
            dual_stack_ipv6: ipv4.and(ipv6),
            // Truncated toward zero, as Go's integer division.
            speed_gbps: iface
                .speed_mbps
                .nonzero()
                .map(|mbps| mbps / 1000)
                .filter(|&g| g != 0),
            vlans: facts.vlans,
            vlan_id: facts.vlan_id,
            // Ironic leaves a record without a name out of its interfaces: never the PXE one.
            pxe: name.is_some()
                && mac
                    .zip(pxe_mac)
                    .is_some_and(|(m, p)| m.eq_ignore_ascii_case(p)),
            lldp: facts.lldp,
            pci_address: iface.pci_address.text(),
        });
    }
    Ok(nics)
}

/// "vendor product", leading spaces trimmed (the trailing one kept, as upstream).
fn model(vendor: Option<&str>, product: Option<&str>) -> Option<String> {
    if vendor.is_none() && product.is_none() {
        return None;
    }
    let (vendor, product) = (vendor.unwrap_or(""), product.unwrap_or(""));
    let mut model = String::with_capacity(vendor.len() + 1 + product.len());
    model.push_str(vendor);
    model.push(' ');
    model.push_str(product);
    let start = model.len() - model.trim_start_matches(' ').len();
    model.drain(..start);
    (!model.is_empty()).then_some(model)
}

fn storage<'b>(disks: &'b [Item<Disk<'_>>]) -> Result<Vec<Storage<'b>>, Error> {
    let mut storage = Vec::with_capacity(disks.len());
    for (index, disk) in disks.iter().enumerate() {
        let at = || format!(".disks[{index}]");
        let disk = item(disk, at)?;
        check_row(
            at,
            [
                ("name", disk.name.mistyped()),
                ("by_path", disk.by_path.mistyped()),
                ("rotational", disk.rotational.mistyped()),
                ("size", disk.size.mistyped()),
                ("vendor", disk.vendor.mistyped()),
                ("model", disk.model.mistyped()),
                ("serial", disk.serial.mistyped()),
                ("wwn", disk.wwn.mistyped()),
                ("wwn_vendor_extension", disk.wwn_vendor_extension.mistyped()),
                ("wwn_with_extension", disk.wwn_with_extension.mistyped()),
                ("hctl", disk.hctl.mistyped()),
            ],
        )?;
        let kernel_name = disk.name.text().unwrap_or("");
        let by_path = disk.by_path.text();
        // Go leaves out an empty name, not the list of alternate names.
        let name = by_path.or(disk.name.text());
        let rotational = disk.rotational.get() == Some(&true);
        let disk_type = if rotational {
            DiskType::Hdd
        } else if kernel_name.starts_with("/dev/nvme") {
            DiskType::Nvme
        } else {
            DiskType::Ssd
        };
        storage.push(Storage {
            name,
            kernel_name,
            by_path,
            rotational,
            disk_type,
            size_bytes: disk.size.nonzero(),
            vendor: disk.vendor.text(),
            model: disk.model.text(),
            serial_number: disk.serial.text(),
            wwn: disk.wwn.text(),
            wwn_vendor_extension: disk.wwn_vendor_extension.text(),
            wwn_with_extension: disk.wwn_with_extension.text(),
            hctl: disk.hctl.text(),
        });
    }
    Ok(storage)
}

fn cpu<'b>(cpu: Option<&'b Cpu<'_>>) -> Result<out::Cpu<'b>, Error> {
    let Some(c) = cpu else {
        return Ok(out::Cpu::default());
    };
    check_row(
        || ".cpu".into(),
        [
            ("architecture", c.architecture.mistyped()),
            ("model_name", c.model_name.mistyped()),
            ("frequency", c.frequency.mistyped()),
            ("count", c.count.mistyped()),
            ("flags", c.flags.mistyped()),
        ],
    )?;
    let flags = match c.flags.get() {
        Some(items) if !items.is_empty() => Some(sorted_flags(items)?),
        _ => None,
    };
    Ok(out::Cpu {
        arch: c.architecture.text(),
        model: c.model_name.text(),
        clock_megahertz: c.frequency.text().and_then(clock::megahertz),
        flags,
        count: c.count.nonzero(),
    })
}

/// The CPU flags sorted by code point, Python's order for str (UTF-8 byte order is code point
/// order); an item that is not a string is an error.
fn sorted_flags<'b>(items: &'b [Item<Text<'_>>]) -> Result<Vec<&'b str>, Error> {
    let wrong = items
        .iter()
        .enumerate()
        .find_map(|(index, item)| match item {
            Item::Wrong(found) => Some((index, found)),
            Item::Value(_) => None,
        });
    if let Some((index, found)) = wrong {
        let problem = Problem::WrongType(Expected::String, found.clone());
        return Err(Error::new(format!(".cpu.flags[{index}]"), problem));
    }
    let flag = |index: usize| match &items[index] {
        Item::Value(flag) => flag.as_ref(),
        Item::Wrong(_) => unreachable!("every item was checked to be a string"),
    };
    if items.len() > 256 {
        let mut flags: Vec<&str> = (0..items.len()).map(flag).collect();
        flags.sort_unstable();
        return Ok(flags);
    }
    // Sorted as integers: a flag's first seven bytes (big-endian, zero-padded: zero sorts before
    // any byte, as the end of a shorter text does) above its index. Flags mostly differ there;
    // runs with the same seven bytes are then sorted by their whole text.
    let mut keys: Vec<u64> = (0..items.len())
        .map(|index| head(flag(index)) | index as u64)
        .collect();
    keys.sort_unstable();
    let mut sorted: Vec<&str> = keys
        .iter()
        .map(|&key| flag((key & 0xff) as usize))
        .collect();
    let mut start = 0;
    while start < keys.len() {
        let head = keys[start] >> 8;
        let same = keys[start..]
            .iter()
            .take_while(|&&key| key >> 8 == head)
            .count();
        if same > 1 {
            sorted[start..start + same].sort_unstable();
        }
        start += same;
    }
    Ok(sorted)
}

/// A text's first seven bytes as the top bytes of a big-endian integer, zero-padded; the
/// lowest byte is zero.
fn head(text: &str) -> u64 {
    let mut key = 0;
    for (i, &b) in text.as_bytes().iter().take(7).enumerate() {
        key |= u64::from(b) << (56 - 8 * i);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(raw: &str) -> Result<String, String> {
        let inventory = crate::parse(raw.as_bytes()).map_err(|e| e.to_string())?;
        hardware_details(&inventory)
            .map(|hw| format!("{hw:?}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn problems_are_reported_in_a_fixed_order_whatever_the_key_order() {
        let cases = [
            (
                r#"{"cpu":{"count":"4"},"hostname":1,"interfaces":[]}"#,
                "inventory.hostname: expected a string, got integer",
            ),
            (
                r#"{"cpu":{"count":"4"},"interfaces":[]}"#,
                "inventory.interfaces: no network interfaces (Ironic requires one)",
            ),
            (
                r#"{"disks":[7],"cpu":{"count":"4"},"interfaces":[{"name":"a"}],"boot":{"pxe_interface":1}}"#,
                "inventory.boot.pxe_interface: expected a string, got integer",
            ),
            (
                r#"{"disks":[7],"cpu":{"count":"4"},"interfaces":[{"name":"a"}]}"#,
                "inventory.disks[0]: expected an object, got integer",
            ),
            (
                r#"{"interfaces":[{"lldp":[[1]],"mac_address":"x","pci_address":2}]}"#,
                "inventory.interfaces[0].pci_address: expected a string, got integer",
            ),
            (
                r#"{"interfaces":[{"lldp":[[1]],"mac_address":"x"}]}"#,
                "inventory.interfaces[0].mac_address: \"x\" is not a MAC address",
            ),
            (
                r#"{"interfaces":[{"lldp":[[1,"04"],[2]]}],"cpu":{"flags":["a",2]}}"#,
                "inventory.interfaces[0].lldp[1]: expected a [type, hex value] pair",
            ),
            (
                r#"{"interfaces":[{"name":"a"}],"memory":{"physical_mb":true},"system_vendor":{"firmware":{"date":1}}}"#,
                "inventory.system_vendor.firmware.date: expected a string, got integer",
            ),
            (
                r#"{"interfaces":[{"name":"a"}],"cpu":{"flags":["a",2]}}"#,
                "inventory.cpu.flags[1]: expected a string, got integer",
            ),
            ("[]", "inventory: expected an object, got array"),
            ("null", "inventory: expected an object, got null"),
        ];
        for (raw, error) in cases {
            assert_eq!(convert(raw), Err(error.to_owned()), "{raw}");
        }
    }

    #[test]
    fn lldp_of_the_first_64_interfaces_only_is_read_and_checked() {
        let nic = r#"{"name":"e","lldp":[[5,"6c6561662d31"]]}"#;
        let bad = r#"{"name":"e","lldp":[[5]]}"#;
        let raw = format!(r#"{{"interfaces":[{}]}}"#, vec![nic; 65].join(","));
        let inventory = crate::parse(raw.as_bytes()).unwrap();
        let hw = hardware_details(&inventory).unwrap();
        assert!(hw.nics[63].lldp.is_some() && hw.nics[64].lldp.is_none());
        let raw = format!(r#"{{"interfaces":[{},{bad}]}}"#, vec![nic; 64].join(","));
        assert!(convert(&raw).is_ok());
    }

    #[test]
    fn dual_stack_pxe_and_storage() {
        let raw = r#"{"interfaces":[{"name":"eth0","mac_address":"52:54:00:AB:cd:ef",
            "ipv4_address":"192.0.2.1","ipv6_address":"2001:db8::1","speed_mbps":-2500},
            {"mac_address":"52:54:00:ab:cd:ef","ipv6_address":"2001:db8::2"}],
            "boot":{"pxe_interface":"01-52-54-00-ab-CD-ef"},
            "disks":[{"name":"/dev/nvme0n1","by_path":"/dev/disk/by-path/p","size":0},
                     {"rotational":true,"size":5}]}"#;
        let inventory = crate::parse(raw.as_bytes()).unwrap();
        let hw = hardware_details(&inventory).unwrap();
        let first = &hw.nics[0];
        assert_eq!(
            (first.ip, first.dual_stack_ipv6),
            (Some("192.0.2.1"), Some("2001:db8::1"))
        );
        assert_eq!((first.pxe, first.speed_gbps), (true, Some(-2)));
        let second = &hw.nics[1];
        assert_eq!(
            (second.ip, second.dual_stack_ipv6, second.pxe),
            (Some("2001:db8::2"), None, false)
        );
        let storage = hw.storage.unwrap();
        assert_eq!(storage[0].name, Some("/dev/disk/by-path/p"));
        assert_eq!(
            storage[0].alternate_names(),
            ["/dev/nvme0n1", "/dev/disk/by-path/p"]
        );
        assert_eq!(
            (storage[0].disk_type, storage[0].size_bytes),
            (DiskType::Nvme, None)
        );
        assert_eq!(
            (storage[1].name, &storage[1].alternate_names()[..]),
            (None, &[""][..])
        );
        assert_eq!(
            (storage[1].disk_type, storage[1].rotational),
            (DiskType::Hdd, true)
        );
    }

    #[test]
    fn flags_sort_by_code_point() {
        let texts = [
            "avx512f",
            "avx512bw",
            "avx",
            "a",
            "",
            "avx512_vnni",
            "é",
            "z",
            "Z",
            "\u{10000}",
            "\u{ffff}",
            "avx512fx",
            "avx512f\0",
            "avx512_bf16",
            "avx512_bitalg",
            "avx512_",
        ];
        let check = |texts: &[String]| {
            let items: Vec<Item<Text<'_>>> = texts
                .iter()
                .map(|t| Item::Value(t.as_str().into()))
                .collect();
            let mut expected: Vec<&str> = texts.iter().map(String::as_str).collect();
            expected.sort_by(|a, b| a.chars().cmp(b.chars()));
            assert_eq!(sorted_flags(&items).unwrap(), expected);
        };
        check(&texts.map(str::to_owned));
        // More than 256 flags: sorted by text only.
        let many: Vec<String> = (0..300)
            .map(|i| format!("f{}", (i * 7919) % 1000))
            .collect();
        check(&many);
        let up_to_256: Vec<String> = many[..256].to_vec();
        check(&up_to_256);
    }

    #[test]
    fn mac_patterns() {
        assert!(contains_mac("52:54:00:12:34:56"));
        assert!(contains_mac("xx 52:54:00:AB:cd:EF yy"));
        assert!(contains_mac(
            "a0:00:02:20:fe:80:00:00:00:00:00:00:7c:fe:90:03:00:29:26:52"
        ));
        assert!(!contains_mac("52-54-00-12-34-56"));
        assert!(!contains_mac("52:54:00:12:34:5"));
        assert!(!contains_mac("banana!"));
        assert!(is_valid_mac("52:54:00:ab:cd:ef"));
        assert!(is_valid_mac("52-54-00:ab-cd:ef"));
        assert!(!is_valid_mac("52:54:00:AB:cd:ef"));
        assert!(!is_valid_mac("52:54:00:ab:cd:ef:00"));
    }

    #[test]
    fn nic_model() {
        assert_eq!(
            model(Some("0x8086"), Some("0x1572")).as_deref(),
            Some("0x8086 0x1572")
        );
        assert_eq!(model(None, Some("0x0001")).as_deref(), Some("0x0001"));
        assert_eq!(model(Some("0x8086"), None).as_deref(), Some("0x8086 "));
        assert_eq!(model(None, Some("  ")), None);
        assert_eq!(model(None, None), None);
    }
}
