//! Timing of the pipeline's stages, printed to stderr when `METAL3_IMAGESTREAM_TRACE` is set:
//! for finding where the time goes without a profiler.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Whether tracing was asked for (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("METAL3_IMAGESTREAM_TRACE").is_some())
}

/// Time spent in one kind of operation, and how often.
#[derive(Default, Clone, Copy)]
pub struct Tally {
    pub count: u64,
    pub bytes: u64,
    pub time: Duration,
}

impl Tally {
    /// Runs `f`, adding its time when tracing is on.
    pub fn time<T>(&mut self, bytes: u64, f: impl FnOnce() -> T) -> T {
        if !enabled() {
            return f();
        }
        let t = Instant::now();
        let r = f();
        self.time += t.elapsed();
        self.count += 1;
        self.bytes += bytes;
        r
    }

    pub fn report(&self, what: &str) {
        if enabled() {
            eprintln!(
                "imagestream trace: {what:<12} {:>8} ops {:>12} bytes {:>8.3} s",
                self.count,
                self.bytes,
                self.time.as_secs_f64()
            );
        }
    }
}
