//! The Rust core that streams disk images to block devices: one pass from a URL or file, qcow2
//! and compressed images decoded on the way, the checksum verified as the bytes go by.
//!
//! Pure Rust; its Python face (argument parsing, exceptions, the GIL-free wait with progress
//! callbacks and cancellation) is `rust/native`, the `metal3._native` extension.

pub mod checksum;
pub mod container_size;
pub mod error;
mod http_plain;
pub mod pipeline;
pub mod qcow2;
pub mod sink;
pub mod source;
pub mod stream;
pub mod trace;

/// The crate version (the workspace's, as the Python package's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_semver() {
        assert_eq!(super::VERSION.split('.').count(), 3);
    }
}
