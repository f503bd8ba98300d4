//! Why an inventory was refused, and where (a JSON path such as `.interfaces[2].lldp[0]`).

use std::fmt;

use crate::model::{Expected, Found};

#[derive(Clone, Debug, PartialEq)]
pub struct Error {
    /// A JSON path from the document's root: "" for the document itself.
    pub path: String,
    pub problem: Problem,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// The text is not a JSON document; the parser's reason.
    NotJson(String),
    WrongType(Expected, Found),
    /// `interfaces` missing or empty: Ironic refuses such an inventory.
    NoInterfaces,
    /// A `mac_address` with no MAC address in it (the value).
    NotAMac(String),
    /// An LLDP item that is not an array of two values.
    NotATlvPair,
    /// An LLDP pair that is not `[integer, string]`: what it held.
    TlvTypes(Found, Found),
}

impl Error {
    pub fn new(path: impl Into<String>, problem: Problem) -> Error {
        Error {
            path: path.into(),
            problem,
        }
    }
}

impl fmt::Display for Problem {
    /// The message. `NotAMac` shows the value as Rust's `{:?}`; the Python bindings write it as
    /// Python's `repr()` instead.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NotJson(reason) => write!(f, "not valid JSON: {reason}"),
            Problem::WrongType(expected, found) => write!(f, "expected {expected}, got {found}"),
            Problem::NoInterfaces => f.write_str("no network interfaces (Ironic requires one)"),
            Problem::NotAMac(value) => write!(f, "{value:?} is not a MAC address"),
            Problem::NotATlvPair => f.write_str("expected a [type, hex value] pair"),
            Problem::TlvTypes(kind, value) => {
                write!(f, "expected [integer, string], got [{kind}, {value}]")
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inventory{}: {}", self.path, self.problem)
    }
}

impl std::error::Error for Error {}
