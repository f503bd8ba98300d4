//! ironic-python-agent inventories to BareMetalHost `status.hardware`, by the rules
//! baremetal-operator applies (with Ironic's PXE and LLDP processing on the way).
//!
//! Pure Rust; `metal3._native` (rust/native) is its Python face and `metal3.inspection` documents
//! the rules field by field. The JSON text is read in one pass into a model that borrows its
//! strings (`model`, `json`: a reader for this shape, accepting what orjson accepts), the model is checked and converted (`convert`, `lldp`, `clock`)
//! into an output that borrows them again (`output`), which the bindings turn into Python
//! objects. The Python implementation this replaced is kept in the tests as the reference the
//! output and the errors are compared with.

pub mod clock;
pub mod convert;
pub mod error;
pub mod json;
pub mod lldp;
pub mod model;
pub mod output;

pub use convert::hardware_details;
pub use error::{Error, Problem};
pub use model::Inventory;
pub use output::HardwareDetails;

use model::{Expected, Field, Found};

/// Reads an inventory document: JSON text holding an object.
pub fn parse(raw: &[u8]) -> Result<Inventory<'_>, Error> {
    let document = json::read(raw).map_err(|e| Error::new("", Problem::NotJson(e.to_string())))?;
    match document {
        Field::Value(inventory) => Ok(inventory),
        Field::Absent => Err(not_an_object(Found::Null)),
        Field::Wrong(found) => Err(not_an_object(found)),
    }
}

fn not_an_object(found: Found) -> Error {
    Error::new("", Problem::WrongType(Expected::Object, found))
}
