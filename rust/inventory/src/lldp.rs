//! What a switch said over LLDP, from an interface's raw TLVs (Ironic's parse_lldp hook, the
//! part baremetal-operator reads): chassis ID, port ID and system name TLVs, and the 802.1Q
//! organisationally specific TLVs (port VLAN ID, VLAN names).
//!
//! As Ironic, the first readable TLV of a kind wins (VLAN names accumulate) and a TLV that
//! cannot be read is skipped. Unlike Ironic, a TLV it cannot read (truncated, unknown subtype,
//! bad UTF-8, bad hex) never fails the inventory, and VLAN IDs above 4094 are ignored.

use crate::error::{Error, Problem};
use crate::model::{Tlv, TlvType};
use crate::output::{Lldp, Vlan};

/// Ironic reads the LLDP data of this many interfaces of an inventory, no more.
pub const MAX_INTERFACES: usize = 64;
/// A TLV value is at most 511 bytes (its length field has 9 bits).
const VALUE_MAX_LEN: usize = 511;
const VLAN_ID_MAX: u16 = 4094;
/// IEEE 802.1's organisationally unique identifier, as hex text.
const OUI_802_1: &[u8] = b"0080c2";
const DOT1_PORT_VLAN_ID: u8 = 1;
const DOT1_VLAN_NAME: u8 = 3;

/// The switch facts of one interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub lldp: Option<Lldp>,
    pub vlans: Option<Vec<Vlan>>,
    /// The untagged (port) VLAN, when not 0.
    pub vlan_id: Option<u16>,
}

/// How a chassis or port ID subtype carries its value.
#[derive(Clone, Copy)]
enum IdForm {
    Text,
    Mac,
    /// An IANA address family number, then the address.
    Address,
}

fn chassis_id_form(subtype: u8) -> Option<IdForm> {
    match subtype {
        1 | 2 | 3 | 6 | 7 => Some(IdForm::Text),
        4 => Some(IdForm::Mac),
        5 => Some(IdForm::Address),
        _ => None,
    }
}

fn port_id_form(subtype: u8) -> Option<IdForm> {
    match subtype {
        1 | 2 | 5 | 7 => Some(IdForm::Text),
        3 => Some(IdForm::Mac),
        4 => Some(IdForm::Address),
        _ => None,
    }
}

/// The facts of interface number `index` from its TLVs; an item that is not an
/// `[integer, string]` pair is an error (the first one, by position).
pub fn facts(tlvs: &[Tlv<'_>], index: usize) -> Result<Facts, Error> {
    // `Some("")` is a TLV read as empty: it holds its kind's place but is not written.
    let mut chassis_id: Option<String> = None;
    let mut port_id: Option<String> = None;
    let mut system_name: Option<String> = None;
    let mut vlans: Option<Vec<Vlan>> = None;
    let mut untagged: Option<u16> = None;
    let mut buffer = [0u8; VALUE_MAX_LEN];
    for (position, tlv) in tlvs.iter().enumerate() {
        let (kind, value) = match tlv {
            Tlv::Pair(kind, value) => (*kind, value.as_ref()),
            Tlv::NotPair => return Err(bad_item(index, position, Problem::NotATlvPair)),
            Tlv::WrongTypes(kind, value) => {
                let problem = Problem::TlvTypes(kind.clone(), value.clone());
                return Err(bad_item(index, position, problem));
            }
        };
        match kind {
            TlvType::OrgSpecific => match dot1(value, &mut buffer) {
                Some(Dot1::Vlan(vlan)) => vlans
                    .get_or_insert_with(|| Vec::with_capacity(4))
                    .push(vlan),
                Some(Dot1::PortVlan(id)) => {
                    untagged.get_or_insert(id);
                }
                None => {}
            },
            TlvType::PortId if port_id.is_none() => {
                port_id = id(value, port_id_form, &mut buffer);
            }
            TlvType::ChassisId if chassis_id.is_none() => {
                chassis_id = id(value, chassis_id_form, &mut buffer);
            }
            TlvType::SystemName if system_name.is_none() => {
                system_name = unhex(value, &mut buffer).and_then(text);
            }
            _ => {}
        }
    }
    let written = |value: Option<String>| value.filter(|v| !v.is_empty());
    let lldp = Lldp {
        switch_id: written(chassis_id),
        port_id: written(port_id),
        switch_system_name: written(system_name),
    };
    let any =
        lldp.switch_id.is_some() || lldp.port_id.is_some() || lldp.switch_system_name.is_some();
    Ok(Facts {
        lldp: any.then_some(lldp),
        vlans,
        vlan_id: untagged.filter(|&id| id != 0),
    })
}

fn bad_item(index: usize, position: usize, problem: Problem) -> Error {
    Error::new(format!(".interfaces[{index}].lldp[{position}]"), problem)
}

/// The bytes of a hex TLV value, in `buffer`; `None` if it is not hex or too long.
fn unhex<'a>(value: &str, buffer: &'a mut [u8; VALUE_MAX_LEN]) -> Option<&'a [u8]> {
    let hex = value.as_bytes();
    if hex.len() % 2 != 0 || hex.len() > 2 * VALUE_MAX_LEN {
        return None;
    }
    let out = &mut buffer[..hex.len() / 2];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn text(data: &[u8]) -> Option<String> {
    std::str::from_utf8(data).ok().map(str::to_owned)
}

fn mac(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(3 * data.len());
    for (i, &byte) in data.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

/// An IPv6 address as Python's `ipaddress` writes it (3.11): lower-case hex groups without
/// leading zeros, the first longest run of two or more zero groups written `::`.
fn ipv6(data: &[u8]) -> String {
    let groups: Vec<u16> = data[..16]
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
        .collect();
    let (mut best_start, mut best_len) = (0, 0);
    let mut i = 0;
    while i < groups.len() {
        if groups[i] != 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < groups.len() && groups[i] == 0 {
            i += 1;
        }
        if i - start > best_len {
            (best_start, best_len) = (start, i - start);
        }
    }
    let join = |groups: &[u16]| {
        let hex: Vec<String> = groups.iter().map(|g| format!("{g:x}")).collect();
        hex.join(":")
    };
    if best_len < 2 {
        return join(&groups);
    }
    format!(
        "{}::{}",
        join(&groups[..best_start]),
        join(&groups[best_start + best_len..])
    )
}

/// A chassis or port ID: its text, MAC or address form by subtype; `None` if unreadable, and
/// `Some("")` for an address of a family other than IPv4, IPv6 and MAC (Ironic records an empty
/// value, which holds the place of that kind of TLV).
fn id(
    value: &str,
    form: fn(u8) -> Option<IdForm>,
    buffer: &mut [u8; VALUE_MAX_LEN],
) -> Option<String> {
    let data = unhex(value, buffer)?;
    let (&subtype, rest) = data.split_first()?;
    match form(subtype)? {
        IdForm::Text => text(rest),
        IdForm::Mac => (rest.len() >= 6).then(|| mac(&rest[..6])),
        IdForm::Address => {
            let (&family, address) = rest.split_first()?;
            match family {
                1 => (address.len() >= 4).then(|| {
                    let octets: Vec<String> = address[..4].iter().map(u8::to_string).collect();
                    octets.join(".")
                }),
                2 => (address.len() >= 16).then(|| ipv6(address)),
                6 => (address.len() >= 6).then(|| mac(&address[..6])),
                _ => Some(String::new()),
            }
        }
    }
}

/// What an 802.1Q TLV tells.
enum Dot1 {
    PortVlan(u16),
    Vlan(Vlan),
}

/// An organisationally specific TLV's 802.1Q fact: the port (untagged) VLAN or a named VLAN.
fn dot1(value: &str, buffer: &mut [u8; VALUE_MAX_LEN]) -> Option<Dot1> {
    let oui = value.as_bytes().get(..OUI_802_1.len())?;
    if !oui.eq_ignore_ascii_case(OUI_802_1) {
        return None;
    }
    let data = unhex(value, buffer)?;
    let (&subtype, payload) = data.get(3..)?.split_first()?;
    match subtype {
        DOT1_PORT_VLAN_ID => {
            let id = u16::from_be_bytes(payload.get(..2)?.try_into().ok()?);
            (id <= VLAN_ID_MAX).then_some(Dot1::PortVlan(id))
        }
        DOT1_VLAN_NAME => vlan_name(payload).map(Dot1::Vlan),
        _ => None,
    }
}

/// An 802.1Q VLAN name TLV: VLAN ID (2 bytes), name length (1 byte), name (NUL-padded).
fn vlan_name(payload: &[u8]) -> Option<Vlan> {
    let (head, rest) = (payload.get(..3)?, &payload[3..]);
    let id = u16::from_be_bytes([head[0], head[1]]);
    let raw = rest.get(..usize::from(head[2]))?;
    if id > VLAN_ID_MAX {
        return None;
    }
    let name = std::str::from_utf8(raw).ok()?.trim_end_matches('\0');
    Some(Vlan {
        id: (id != 0).then_some(id),
        name: (!name.is_empty()).then(|| name.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::model::Found;

    fn hex(text: &str) -> String {
        text.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn facts_of(tlvs: &[(TlvType, &str)]) -> Facts {
        let tlvs: Vec<Tlv<'_>> = tlvs
            .iter()
            .map(|&(kind, value)| Tlv::Pair(kind, Cow::Borrowed(value)))
            .collect();
        facts(&tlvs, 0).unwrap()
    }

    fn lldp(switch_id: Option<&str>, port_id: Option<&str>, name: Option<&str>) -> Option<Lldp> {
        Some(Lldp {
            switch_id: switch_id.map(str::to_owned),
            port_id: port_id.map(str::to_owned),
            switch_system_name: name.map(str::to_owned),
        })
    }

    use TlvType::{ChassisId, OrgSpecific, PortId, SystemName};

    #[test]
    fn ids_in_their_forms() {
        let f = facts_of(&[(ChassisId, "04B8599F000001"), (PortId, "03aabbccddeeff")]);
        assert_eq!(
            f.lldp,
            lldp(Some("b8:59:9f:00:00:01"), Some("aa:bb:cc:dd:ee:ff"), None)
        );
        let v6 = format!("0502{}", "20010db8000000000000000000000001");
        assert_eq!(
            facts_of(&[(ChassisId, &v6)]).lldp,
            lldp(Some("2001:db8::1"), None, None)
        );
        let v4 = "0501c0000201";
        assert_eq!(
            facts_of(&[(ChassisId, v4)]).lldp,
            lldp(Some("192.0.2.1"), None, None)
        );
        let name = format!("06{}", hex("mgmt0"));
        assert_eq!(
            facts_of(&[(ChassisId, &name)]).lldp,
            lldp(Some("mgmt0"), None, None)
        );
        let sys = hex("leaf-1");
        assert_eq!(
            facts_of(&[(SystemName, &sys)]).lldp,
            lldp(None, None, Some("leaf-1"))
        );
    }

    #[test]
    fn unreadable_tlvs_are_skipped_and_empty_ones_hold_their_place() {
        let sw2 = format!("07{}", hex("sw2"));
        assert_eq!(
            facts_of(&[(ChassisId, "00ff"), (ChassisId, &sw2)]).lldp,
            lldp(Some("sw2"), None, None)
        );
        let leaf = hex("leaf-2");
        for bad in ["zz", "ff00", "abc"] {
            assert_eq!(
                facts_of(&[(SystemName, bad), (SystemName, &leaf)]).lldp,
                lldp(None, None, Some("leaf-2"))
            );
        }
        assert_eq!(
            facts_of(&[(SystemName, ""), (SystemName, &leaf)]).lldp,
            None
        );
        // An address of an unknown family reads as empty and holds the place.
        let port = format!("05{}", hex("Eth1"));
        assert_eq!(
            facts_of(&[(PortId, "0403aabb"), (PortId, &port)]).lldp,
            None
        );
        // An address without its family is unreadable: skipped.
        assert_eq!(
            facts_of(&[(PortId, "04"), (PortId, &port)]).lldp,
            lldp(None, Some("Eth1"), None)
        );
        let too_long = "00".repeat(VALUE_MAX_LEN + 1);
        assert_eq!(facts_of(&[(SystemName, &too_long)]).lldp, None);
    }

    #[test]
    fn dot1_vlans() {
        let f = facts_of(&[
            (OrgSpecific, "0080c2010064"),
            (OrgSpecific, "0080c20100c8"),
            (OrgSpecific, &format!("0080C20300C806{}", hex("vlan20"))),
            (OrgSpecific, &format!("0080c20300c804{}0000", hex("v2"))),
            (OrgSpecific, "0080c2030000"),
            (OrgSpecific, "0080c203000000"),
            (OrgSpecific, "0080c2030fff02aabb"),
            (OrgSpecific, "00120f0405ea"),
        ]);
        assert_eq!(f.vlan_id, Some(100));
        let vlan = |id: Option<u16>, name: Option<&str>| Vlan {
            id,
            name: name.map(str::to_owned),
        };
        assert_eq!(
            f.vlans,
            Some(vec![
                vlan(Some(200), Some("vlan20")),
                vlan(Some(200), Some("v2")),
                vlan(None, None)
            ])
        );
        // A first port VLAN of 0 holds the place: no vlanId.
        assert_eq!(
            facts_of(&[(OrgSpecific, "0080c2010000"), (OrgSpecific, "0080c2010064")]).vlan_id,
            None
        );
        assert_eq!(
            facts_of(&[(OrgSpecific, "0080c2010fff"), (OrgSpecific, "0080c2010ffe")]).vlan_id,
            Some(4094)
        );
    }

    #[test]
    fn the_first_bad_item_is_an_error() {
        let tlvs = vec![
            Tlv::Pair(ChassisId, Cow::Borrowed("04aabbccddeeff")),
            Tlv::WrongTypes(Found::String, Found::String),
            Tlv::NotPair,
        ];
        let err = facts(&tlvs, 3).unwrap_err();
        assert_eq!(err.path, ".interfaces[3].lldp[1]");
        assert_eq!(
            err.to_string(),
            "inventory.interfaces[3].lldp[1]: expected [integer, string], got [string, string]"
        );
    }

    #[test]
    fn ipv6_text_as_python_writes_it() {
        let cases = [
            ("00000000000000000000000000000000", "::"),
            ("00000000000000000000000000000001", "::1"),
            ("20010db8000000000000000000000000", "2001:db8::"),
            ("20010db8000000010000000000000001", "2001:db8:0:1::1"),
            ("20010db8000000000001000000000001", "2001:db8::1:0:0:1"),
            ("20010db8000100010001000100010001", "2001:db8:1:1:1:1:1:1"),
            ("20010000000100000001000000010000", "2001:0:1:0:1:0:1:0"),
            ("00000000000000000000ffff01020304", "::ffff:102:304"),
        ];
        let mut buffer = [0u8; VALUE_MAX_LEN];
        for (hex, text) in cases {
            assert_eq!(ipv6(unhex(hex, &mut buffer).unwrap()), text);
        }
    }
}
