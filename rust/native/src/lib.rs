//! `metal3._native`: the project's one Python extension, the bindings of its Rust cores.
//!
//! Each core is a pure Rust crate with its own tests (`imagestream`: one-pass image streaming
//! to disk; `metal3-inventory`: agent inventories to `status.hardware`); the modules here only
//! translate between Python and them. `metal3.imagestream` and `metal3.inspection` are the
//! Python APIs over this module.

use pyo3::prelude::*;

mod imagestream;
mod inventory;

/// The workspace version, so Python can check the extension was built from the same tree.
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    imagestream::register(m)?;
    inventory::register(m)?;
    Ok(())
}
