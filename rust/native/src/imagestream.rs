//! The image writer's Python face (`metal3.imagestream` wraps it): argument parsing,
//! exceptions, the GIL-free wait with progress callbacks and cancellation. The work is the
//! `imagestream` crate's.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyPermissionError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use imagestream::checksum::{digest_from_file, Algorithm};
use imagestream::error::{panicked, Error, ErrorKind};
use imagestream::pipeline::{self, Format, Options, Progress};
use imagestream::source::{HttpOptions, Source};

create_exception!(
    metal3._native,
    ImageStreamError,
    PyException,
    "Base of all image streaming errors."
);
create_exception!(
    metal3._native,
    SourceError,
    ImageStreamError,
    "The source could not be read."
);
create_exception!(
    metal3._native,
    TruncatedImageError,
    ImageStreamError,
    "The stream ended before the image."
);
create_exception!(
    metal3._native,
    CorruptImageError,
    ImageStreamError,
    "The image is damaged or inconsistent."
);
create_exception!(
    metal3._native,
    UnsupportedImageError,
    ImageStreamError,
    "The image uses something we refuse to write."
);
create_exception!(
    metal3._native,
    TargetError,
    ImageStreamError,
    "The target cannot take the image. `retryable` says whether the same write can succeed \
     later; subclasses that are also OSError carry the errno."
);
create_exception!(
    metal3._native,
    ChecksumError,
    ImageStreamError,
    "The checksum argument is unusable."
);
create_exception!(
    metal3._native,
    LayoutError,
    ImageStreamError,
    "The layout needs range requests the source cannot serve."
);
create_exception!(
    metal3._native,
    WriteCancelledError,
    ImageStreamError,
    "The write was cancelled."
);
create_exception!(
    metal3._native,
    InternalError,
    ImageStreamError,
    "A bug in the image streamer (a pipeline thread panicked): what the target holds is unknown."
);

/// The target errors the operating system gave: each is a `TargetError` and an `OSError`
/// (with `errno`), so they are made with Python's `type()`, which takes two bases.
struct TargetOsErrors {
    io: Py<PyType>,
    full: Py<PyType>,
    device: Py<PyType>,
    permission: Py<PyType>,
}

static TARGET_OS_ERRORS: PyOnceLock<TargetOsErrors> = PyOnceLock::new();

fn target_os_errors(py: Python<'_>) -> PyResult<&'static TargetOsErrors> {
    TARGET_OS_ERRORS.get_or_try_init(py, || {
        let class = |name: &str,
                     bases: &[Bound<'_, PyType>],
                     retryable: bool,
                     doc: &str|
         -> PyResult<Py<PyType>> {
            let ns = PyDict::new(py);
            ns.set_item("__module__", "metal3._native")?;
            ns.set_item("__doc__", doc)?;
            ns.set_item("retryable", retryable)?;
            let bases = PyTuple::new(py, bases)?;
            let made = py.get_type::<PyType>().call1((name, bases, ns))?;
            Ok(made.cast_into::<PyType>()?.unbind())
        };
        let io = class(
            "TargetIOError",
            &[py.get_type::<TargetError>(), py.get_type::<PyOSError>()],
            false,
            "The operating system refused a read, write or flush of the target; `errno` says why.",
        )?;
        let full = class(
            "TargetFullError",
            &[io.bind(py).clone()],
            true,
            "The target ran out of space (ENOSPC) or quota (EDQUOT): the write can succeed \
             once space is freed.",
        )?;
        let device = class(
            "TargetDeviceError",
            &[io.bind(py).clone()],
            false,
            "The target device failed the I/O (EIO) or is gone (ENXIO, ENODEV): a dead disk.",
        )?;
        let permission = class(
            "TargetPermissionError",
            &[io.bind(py).clone(), py.get_type::<PyPermissionError>()],
            false,
            "The target may not be written: EACCES, EPERM (a read-only device, an immutable \
             file) or EROFS (a read-only filesystem).",
        )?;
        Ok(TargetOsErrors {
            io,
            full,
            device,
            permission,
        })
    })
}

fn to_py(e: Error) -> PyErr {
    let m = e.message;
    let os_class = |pick: fn(&TargetOsErrors) -> &Py<PyType>| {
        Python::attach(|py| match (target_os_errors(py), e.errno) {
            (Ok(classes), Some(errno)) => {
                PyErr::from_type(pick(classes).bind(py).clone(), (errno, m.clone()))
            }
            (Err(err), _) => err,
            (Ok(_), None) => TargetError::new_err(m.clone()),
        })
    };
    match e.kind {
        ErrorKind::Source => SourceError::new_err(m),
        ErrorKind::Truncated => TruncatedImageError::new_err(m),
        ErrorKind::Corrupt => CorruptImageError::new_err(m),
        ErrorKind::Unsupported => UnsupportedImageError::new_err(m),
        ErrorKind::Target => TargetError::new_err(m),
        ErrorKind::TargetFull => os_class(|c| &c.full),
        ErrorKind::TargetDevice => os_class(|c| &c.device),
        ErrorKind::TargetPermission => os_class(|c| &c.permission),
        ErrorKind::TargetIo => os_class(|c| &c.io),
        ErrorKind::Checksum => ChecksumError::new_err(m),
        ErrorKind::Layout => LayoutError::new_err(m),
        ErrorKind::Cancelled => WriteCancelledError::new_err(m),
        ErrorKind::Invalid => pyo3::exceptions::PyValueError::new_err(m),
        ErrorKind::Internal => InternalError::new_err(m),
        ErrorKind::Stopped => InternalError::new_err(format!("internal error: {m}")),
    }
}

/// A flag Python sets to stop a running write.
#[pyclass(module = "metal3._native")]
struct CancelToken {
    flag: Arc<AtomicBool>,
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        CancelToken {
            flag: Arc::new(AtomicBool::new(false)),
        }
    }

    fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }
}

/// What a write did. `verified` is true only when a checksum was given and matched.
#[pyclass(module = "metal3._native", frozen, get_all)]
struct WriteResult {
    format: String,
    inner_format: String,
    virtual_size: u64,
    bytes_read: u64,
    bytes_written: u64,
    checksum_algorithm: Option<String>,
    digest: Option<String>,
    expected_digest: Option<String>,
    verified: bool,
    range_requests: u64,
    peak_buffered: u64,
}

#[pymethods]
impl WriteResult {
    fn __repr__(&self) -> String {
        format!(
            "WriteResult(format={:?}, virtual_size={}, bytes_read={}, verified={})",
            self.format,
            self.virtual_size,
            self.bytes_read,
            if self.verified { "True" } else { "False" }
        )
    }
}

/// What `info` tells about an image.
#[pyclass(module = "metal3._native", frozen, get_all)]
struct ImageInfo {
    format: String,
    inner_format: Option<String>,
    virtual_size: Option<u64>,
    cluster_size: Option<u64>,
    compression: Option<String>,
    file_size: Option<u64>,
    qcow2_version: Option<u32>,
    extended_l2: bool,
}

#[pymethods]
impl ImageInfo {
    fn __repr__(&self) -> String {
        let opt = |v: Option<u64>| v.map_or_else(|| "None".to_string(), |v| v.to_string());
        format!(
            "ImageInfo(format={:?}, virtual_size={}, file_size={})",
            self.format,
            opt(self.virtual_size),
            opt(self.file_size)
        )
    }
}

fn http_options(
    insecure: bool,
    ca_file: Option<PathBuf>,
    connect_timeout: f64,
    read_timeout: f64,
) -> PyResult<HttpOptions> {
    if !(connect_timeout > 0.0 && read_timeout > 0.0) {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "timeouts must be positive",
        ));
    }
    Ok(HttpOptions {
        ca_file,
        insecure,
        connect_timeout: Duration::from_secs_f64(connect_timeout),
        read_timeout: Duration::from_secs_f64(read_timeout),
    })
}

fn looks_like_url(s: &str) -> bool {
    let l = s.to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://") || l.starts_with("file://")
}

/// Turns the checksum arguments into (algorithm, expected hex); fetches checksum files.
fn resolve_checksum(
    checksum: Option<&str>,
    checksum_type: &str,
    src: &Source,
    http: &HttpOptions,
) -> Result<Option<(Algorithm, String)>, Error> {
    let Some(given) = checksum.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let hex = if looks_like_url(given) {
        let text = Source::read_text(given, http, 1 << 20)?;
        digest_from_file(&text, &src.file_name())?
    } else {
        given.to_ascii_lowercase()
    };
    let algo = Algorithm::parse(checksum_type, &hex)?;
    Ok(Some((algo, hex)))
}

/// Streams SOURCE onto TARGET in one pass; see `metal3.imagestream.write` for the contract.
#[pyfunction]
#[pyo3(signature = (
    source, target, *, format = "auto", checksum = None, checksum_type = "auto",
    assume_zeroed = false, insecure = false, ca_file = None, max_buffer = pipeline::DEFAULT_MAX_BUFFER,
    connect_timeout = 30.0, read_timeout = 60.0, workers = 2, progress = None,
    progress_interval = 0.25, cancel = None
))]
#[allow(clippy::too_many_arguments)]
fn write(
    py: Python<'_>,
    source: &str,
    target: PathBuf,
    format: &str,
    checksum: Option<&str>,
    checksum_type: &str,
    assume_zeroed: bool,
    insecure: bool,
    ca_file: Option<PathBuf>,
    max_buffer: u64,
    connect_timeout: f64,
    read_timeout: f64,
    workers: usize,
    progress: Option<Py<PyAny>>,
    progress_interval: f64,
    cancel: Option<PyRef<'_, CancelToken>>,
) -> PyResult<WriteResult> {
    let http = http_options(insecure, ca_file, connect_timeout, read_timeout)?;
    let format = Format::parse(format).map_err(to_py)?;
    let src = Source::new(source, &http).map_err(to_py)?;
    let flag = cancel.map_or_else(|| Arc::new(AtomicBool::new(false)), |c| c.flag.clone());
    let checksum = {
        let src = src.clone();
        let checksum = checksum.map(str::to_string);
        let checksum_type = checksum_type.to_string();
        py.detach(move || resolve_checksum(checksum.as_deref(), &checksum_type, &src, &http))
            .map_err(to_py)?
    };
    let opts = Options {
        format,
        checksum,
        assume_zeroed,
        max_buffer,
        workers: workers.clamp(1, 64),
    };
    let prog = Arc::new(Progress::new(flag.clone()));
    let (tx, rx) = crossbeam_channel::bounded(1);
    let worker = {
        let prog = prog.clone();
        std::thread::spawn(move || {
            let res = pipeline::run(&src, &target, &opts, prog);
            let _ = tx.send(res);
        })
    };
    let interval = Duration::from_secs_f64(progress_interval.max(0.01));
    let report = |py: Python<'_>| -> PyResult<()> {
        if let Some(cb) = &progress {
            let total = prog.total.load(Ordering::Relaxed);
            let total = (total != u64::MAX).then_some(total);
            cb.call1(
                py,
                (
                    prog.bytes_in.load(Ordering::Relaxed),
                    prog.bytes_written.load(Ordering::Relaxed),
                    total,
                ),
            )?;
        }
        Ok(())
    };
    let mut py_error: Option<PyErr> = None;
    let mut last = Instant::now();
    let outcome = loop {
        let got = py.detach(|| rx.recv_timeout(interval));
        match got {
            Ok(res) => break res,
            // The pipeline thread ended without an answer: it panicked (reported below).
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                break Err(Error::new(
                    ErrorKind::Internal,
                    "internal error: the pipeline thread died",
                ))
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
        }
        if py_error.is_none() {
            let step = py.check_signals().and_then(|_| {
                if last.elapsed() >= interval {
                    last = Instant::now();
                    report(py)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = step {
                // A signal or a failing callback stops the write; re-raised once it has stopped.
                flag.store(true, Ordering::SeqCst);
                py_error = Some(e);
            }
        }
    };
    let outcome = match worker.join() {
        Ok(()) => outcome,
        Err(payload) => Err(panicked("pipeline", &*payload)),
    };
    if let Some(e) = py_error {
        return Err(e);
    }
    let o = outcome.map_err(to_py)?;
    report(py)?;
    Ok(WriteResult {
        format: o.format,
        inner_format: o.inner_format,
        virtual_size: o.virtual_size,
        bytes_read: o.bytes_read,
        bytes_written: o.bytes_written,
        checksum_algorithm: o.checksum_algorithm,
        digest: o.digest,
        expected_digest: o.expected_digest,
        verified: o.verified,
        range_requests: o.range_requests,
        peak_buffered: o.peak_buffered,
    })
}

/// Reads the start of SOURCE and reports its format and sizes.
#[pyfunction]
#[pyo3(signature = (source, *, insecure = false, ca_file = None, connect_timeout = 30.0, read_timeout = 60.0))]
fn info(
    py: Python<'_>,
    source: &str,
    insecure: bool,
    ca_file: Option<PathBuf>,
    connect_timeout: f64,
    read_timeout: f64,
) -> PyResult<ImageInfo> {
    let http = http_options(insecure, ca_file, connect_timeout, read_timeout)?;
    let src = Source::new(source, &http).map_err(to_py)?;
    let i = py.detach(move || pipeline::probe(&src)).map_err(to_py)?;
    Ok(ImageInfo {
        format: i.format,
        inner_format: i.inner_format,
        virtual_size: i.virtual_size,
        cluster_size: i.cluster_size,
        compression: i.compression,
        file_size: i.file_size,
        qcow2_version: i.qcow2_version,
        extended_l2: i.extended_l2,
    })
}

/// Adds the image streaming API to the extension module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("DEFAULT_MAX_BUFFER", pipeline::DEFAULT_MAX_BUFFER)?;
    m.add("ImageStreamError", py.get_type::<ImageStreamError>())?;
    m.add("SourceError", py.get_type::<SourceError>())?;
    m.add("TruncatedImageError", py.get_type::<TruncatedImageError>())?;
    m.add("CorruptImageError", py.get_type::<CorruptImageError>())?;
    m.add(
        "UnsupportedImageError",
        py.get_type::<UnsupportedImageError>(),
    )?;
    m.add("TargetError", py.get_type::<TargetError>())?;
    m.add("ChecksumError", py.get_type::<ChecksumError>())?;
    m.add("LayoutError", py.get_type::<LayoutError>())?;
    m.add("WriteCancelledError", py.get_type::<WriteCancelledError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    py.get_type::<TargetError>().setattr("retryable", false)?;
    let os_errors = target_os_errors(py)?;
    m.add("TargetIOError", os_errors.io.bind(py))?;
    m.add("TargetFullError", os_errors.full.bind(py))?;
    m.add("TargetDeviceError", os_errors.device.bind(py))?;
    m.add("TargetPermissionError", os_errors.permission.bind(py))?;
    m.add_class::<CancelToken>()?;
    m.add_class::<WriteResult>()?;
    m.add_class::<ImageInfo>()?;
    m.add_function(wrap_pyfunction!(write, m)?)?;
    m.add_function(wrap_pyfunction!(info, m)?)?;
    Ok(())
}
