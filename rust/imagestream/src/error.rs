//! One error type for the whole pipeline; its kind decides which Python exception is raised.

use std::fmt;

/// What went wrong, coarse enough for callers to react to (retry, refuse, report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The source could not be read (HTTP status, connection, timeout, missing file).
    Source,
    /// The stream ended before the image did.
    Truncated,
    /// The image is damaged or inconsistent (bad header, table entries out of range, ...).
    Corrupt,
    /// The image is valid but uses something we refuse to write (backing file, encryption, ...).
    Unsupported,
    /// The target cannot take the image (too small, not writable, I/O error).
    Target,
    /// The downloaded bytes do not match the expected checksum.
    ChecksumMismatch,
    /// The checksum argument itself is unusable (bad hex, unknown type, no line for the image).
    Checksum,
    /// The layout needs more buffering than allowed and the source cannot serve ranges.
    Layout,
    /// The caller cancelled the operation.
    Cancelled,
    /// Invalid arguments.
    Invalid,
    /// Internal: a stage stopped because another one failed (never reported to callers).
    Stopped,
}

/// An error with its kind and a message meant for a human operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand constructors, one per kind, so call sites stay readable.
macro_rules! ctor {
    ($name:ident, $kind:ident) => {
        pub fn $name(message: impl Into<String>) -> Error {
            Error::new(ErrorKind::$kind, message)
        }
    };
}
ctor!(source, Source);
ctor!(truncated, Truncated);
ctor!(corrupt, Corrupt);
ctor!(unsupported, Unsupported);
ctor!(target, Target);
ctor!(checksum, Checksum);
ctor!(layout, Layout);
ctor!(invalid, Invalid);
ctor!(stopped, Stopped);
