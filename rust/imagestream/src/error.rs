//! One error type for the whole pipeline; its kind decides which Python exception is raised.

use std::any::Any;
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
    /// The target cannot take the image for a reason of ours: too small, not a disk or file,
    /// a write past its end.
    Target,
    /// The target ran out of space: ENOSPC, or EDQUOT (a quota).
    TargetFull,
    /// The target device failed or is gone: EIO, ENXIO, ENODEV.
    TargetDevice,
    /// The target may not be written: EACCES, EPERM, EROFS.
    TargetPermission,
    /// Any other error the operating system gave for the target.
    TargetIo,
    /// The checksum argument itself is unusable (bad hex, unknown type, no line for the image).
    Checksum,
    /// The layout needs more buffering than allowed and the source cannot serve ranges.
    Layout,
    /// The caller cancelled the operation.
    Cancelled,
    /// Invalid arguments.
    Invalid,
    /// A bug: a pipeline thread panicked, or the pipeline stopped without saying why.
    Internal,
    /// Internal: a stage stopped because another one failed (never reported to callers).
    Stopped,
}

/// An error with its kind, a message meant for a human operator and, for errors the operating
/// system gave, its errno.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    pub errno: Option<i32>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            errno: None,
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
ctor!(internal, Internal);
ctor!(stopped, Stopped);

/// The kind of a target error from its errno: what a caller can do about it differs (a full
/// disk may take a retry once space is freed, a dead or read-only one will not).
pub fn target_kind(errno: i32) -> ErrorKind {
    match errno {
        libc::ENOSPC | libc::EDQUOT => ErrorKind::TargetFull,
        libc::EIO | libc::ENXIO | libc::ENODEV => ErrorKind::TargetDevice,
        libc::EACCES | libc::EPERM | libc::EROFS => ErrorKind::TargetPermission,
        _ => ErrorKind::TargetIo,
    }
}

/// An I/O error on the target, with `context` saying what we were doing. Keeps the errno;
/// an error without one (a write that made no progress) is a plain target error.
pub fn target_io(context: impl fmt::Display, e: &std::io::Error) -> Error {
    let Some(errno) = e.raw_os_error() else {
        return target(format!("{context}: {e}"));
    };
    // The errno travels on its own, so the message drops std's " (os error N)" suffix.
    let text = e.to_string();
    let text = text
        .strip_suffix(&format!(" (os error {errno})"))
        .unwrap_or(&text);
    Error {
        kind: target_kind(errno),
        message: format!("{context}: {text}"),
        errno: Some(errno),
    }
}

/// The internal error for a pipeline thread that panicked, with the panic's message.
pub fn panicked(thread: &str, payload: &(dyn Any + Send)) -> Error {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    internal(format!(
        "internal error: the {thread} thread panicked: {what}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_io_keeps_the_errno_and_its_kind() {
        let cases = [
            (libc::ENOSPC, ErrorKind::TargetFull),
            (libc::EDQUOT, ErrorKind::TargetFull),
            (libc::EIO, ErrorKind::TargetDevice),
            (libc::EROFS, ErrorKind::TargetPermission),
            (libc::EPERM, ErrorKind::TargetPermission),
            (libc::EACCES, ErrorKind::TargetPermission),
            (libc::EBUSY, ErrorKind::TargetIo),
        ];
        for (errno, kind) in cases {
            let e = target_io("write to t", &std::io::Error::from_raw_os_error(errno));
            assert_eq!((e.kind, e.errno), (kind, Some(errno)));
            assert!(e.message.starts_with("write to t: "), "{}", e.message);
            assert!(!e.message.contains("os error"), "{}", e.message);
        }
        let no_errno = std::io::Error::new(std::io::ErrorKind::WriteZero, "no progress");
        let e = target_io("write to t", &no_errno);
        assert_eq!((e.kind, e.errno), (ErrorKind::Target, None));
    }

    #[test]
    fn panic_messages_are_kept() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        let e = panicked("hashing", &*p);
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(
            e.message.ends_with("the hashing thread panicked: boom 7"),
            "{}",
            e.message
        );
    }
}
