//! An inventory as read: the fields the conversion uses, each with the JSON type it had.
//!
//! Nothing is refused while reading. A field of the wrong type is kept as `Wrong` with what was
//! found, so the conversion reports the first problem in its own order (the order the Python
//! implementation reported them in), whatever order the document lists its keys in. Null and a
//! missing key are the same (`Absent`), as `dict.get` makes them.

use std::borrow::Cow;
use std::fmt;

/// A string of the document: borrowed from the JSON text unless it had escapes.
pub type Text<'a> = Cow<'a, str>;

/// An integer of the document: JSON integers are read as 64-bit signed or unsigned (as orjson
/// reads them), so both ranges fit.
pub type Int = i128;

/// The JSON type a value had (Python type names for values no JSON parser makes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    Null,
    Boolean,
    Integer,
    Number,
    String,
    Array,
    Object,
    /// A value no JSON document holds: a Python type's name, or what is wrong with it.
    Other(String),
}

impl Found {
    pub fn name(&self) -> &str {
        match self {
            Found::Null => "null",
            Found::Boolean => "boolean",
            Found::Integer => "integer",
            Found::Number => "number",
            Found::String => "string",
            Found::Array => "array",
            Found::Object => "object",
            Found::Other(name) => name,
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The JSON type a field must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    String,
    Integer,
    Boolean,
    Array,
    Object,
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Expected::String => "a string",
            Expected::Integer => "an integer",
            Expected::Boolean => "a boolean",
            Expected::Array => "an array",
            Expected::Object => "an object",
        })
    }
}

/// The JSON type a Rust value of the model stands for.
pub trait Shape {
    const EXPECTED: Expected;
}

impl Shape for Text<'_> {
    const EXPECTED: Expected = Expected::String;
}
impl Shape for Int {
    const EXPECTED: Expected = Expected::Integer;
}
impl Shape for bool {
    const EXPECTED: Expected = Expected::Boolean;
}
impl<T> Shape for Vec<T> {
    const EXPECTED: Expected = Expected::Array;
}

/// An object field: null or missing, a value of the right type, or a value of another type.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Absent,
    Value(T),
    Wrong(Found),
}

impl<T: Shape> Field<T> {
    /// What is wrong with the field's type, if anything: (expected, found).
    pub fn mistyped(&self) -> Option<(Expected, &Found)> {
        match self {
            Field::Wrong(found) => Some((T::EXPECTED, found)),
            _ => None,
        }
    }
}

impl<T> Field<T> {
    pub fn get(&self) -> Option<&T> {
        match self {
            Field::Value(value) => Some(value),
            _ => None,
        }
    }
}

impl Field<Text<'_>> {
    /// The string, when it is one and not empty (Python's truthiness of an optional string).
    pub fn text(&self) -> Option<&str> {
        self.get().map(|s| s.as_ref()).filter(|s| !s.is_empty())
    }
}

impl Field<Int> {
    /// The integer, when it is one and not zero.
    pub fn nonzero(&self) -> Option<Int> {
        self.get().copied().filter(|&n| n != 0)
    }
}

/// An array item that must be of one type (null is not accepted).
#[derive(Clone, Debug, PartialEq)]
pub enum Item<T> {
    Value(T),
    Wrong(Found),
}

/// An LLDP TLV of an interface, `[type, hex value]` in the document.
#[derive(Clone, Debug, PartialEq)]
pub enum Tlv<'a> {
    Pair(TlvType, Text<'a>),
    /// Not an array of two values.
    NotPair,
    /// Two values, not an integer and a string: what they were.
    WrongTypes(Found, Found),
}

/// The TLV types the conversion reads (IEEE 802.1AB); any other integer is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlvType {
    ChassisId,
    PortId,
    SystemName,
    OrgSpecific,
    Other,
}

impl TlvType {
    pub fn from_int(value: Int) -> TlvType {
        match value {
            1 => TlvType::ChassisId,
            2 => TlvType::PortId,
            5 => TlvType::SystemName,
            127 => TlvType::OrgSpecific,
            _ => TlvType::Other,
        }
    }
}

/// The inventory: ironic-python-agent's document, the fields read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inventory<'a> {
    pub interfaces: Field<Vec<Item<Interface<'a>>>>,
    pub disks: Field<Vec<Item<Disk<'a>>>>,
    pub cpu: Field<Cpu<'a>>,
    pub memory: Field<Memory>,
    pub system_vendor: Field<SystemVendor<'a>>,
    pub boot: Field<Boot<'a>>,
    pub hostname: Field<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Interface<'a> {
    pub name: Field<Text<'a>>,
    pub mac_address: Field<Text<'a>>,
    pub ipv4_address: Field<Text<'a>>,
    pub ipv6_address: Field<Text<'a>>,
    pub vendor: Field<Text<'a>>,
    pub product: Field<Text<'a>>,
    pub speed_mbps: Field<Int>,
    pub lldp: Field<Vec<Tlv<'a>>>,
    pub pci_address: Field<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Disk<'a> {
    pub name: Field<Text<'a>>,
    pub by_path: Field<Text<'a>>,
    pub rotational: Field<bool>,
    pub size: Field<Int>,
    pub vendor: Field<Text<'a>>,
    pub model: Field<Text<'a>>,
    pub serial: Field<Text<'a>>,
    pub wwn: Field<Text<'a>>,
    pub wwn_vendor_extension: Field<Text<'a>>,
    pub wwn_with_extension: Field<Text<'a>>,
    pub hctl: Field<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cpu<'a> {
    pub architecture: Field<Text<'a>>,
    pub model_name: Field<Text<'a>>,
    pub frequency: Field<Text<'a>>,
    pub count: Field<Int>,
    pub flags: Field<Vec<Item<Text<'a>>>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Memory {
    pub physical_mb: Field<Int>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SystemVendor<'a> {
    pub manufacturer: Field<Text<'a>>,
    pub product_name: Field<Text<'a>>,
    pub serial_number: Field<Text<'a>>,
    pub firmware: Field<Firmware<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Firmware<'a> {
    pub vendor: Field<Text<'a>>,
    pub version: Field<Text<'a>>,
    pub build_date: Field<Text<'a>>,
    pub date: Field<Text<'a>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Boot<'a> {
    pub pxe_interface: Field<Text<'a>>,
}

macro_rules! objects {
    ($($name:ident),*) => {
        $(impl Shape for $name<'_> {
            const EXPECTED: Expected = Expected::Object;
        })*
    };
}
objects!(
    Inventory,
    Interface,
    Disk,
    Cpu,
    SystemVendor,
    Firmware,
    Boot
);

impl Shape for Memory {
    const EXPECTED: Expected = Expected::Object;
}
