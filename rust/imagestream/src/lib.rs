//! `metal3._imagestream`: the Rust core that streams disk images to block devices.

use pyo3::prelude::*;

/// The crate version, exposed so Python can check it was built from the same tree.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[pymodule]
fn _imagestream(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", VERSION)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_semver() {
        assert_eq!(super::VERSION.split('.').count(), 3);
    }
}
