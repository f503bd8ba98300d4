//! The one-pass pipeline: a reader thread pulls the stream, a hashing thread digests it, the
//! decoding thread turns it into writes at guest offsets, worker threads inflate compressed
//! clusters, and a writer thread batches everything onto the target. Channels between the
//! stages are bounded, so memory stays bounded and the slowest stage sets the pace.

use std::collections::VecDeque;
use std::io::Read;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::checksum::{Algorithm, Hasher};
use crate::container_size;
use crate::error::{
    internal, invalid, panicked, source, stopped, truncated, unsupported, Error, ErrorKind, Result,
};
use crate::qcow2::{self, Inflater};
use crate::sink::{BatchWriter, Target};
use crate::source::Source;
use crate::stream::{Block, BlockPool, Chunk, CompressedJob, NoRanges, Output, RangeFetch};
use crate::trace::Tally;

/// Size of the pieces the reader hands on.
pub const CHUNK: usize = 4 << 20;
/// Default bound on bytes a qcow2 layout may make us hold back.
pub const DEFAULT_MAX_BUFFER: u64 = 32 << 20;
const QUEUE: usize = 3;
/// Bound of a batch of compressed clusters, counting their compressed and inflated bytes.
const JOB_BATCH_BYTES: usize = 1 << 20;

/// Image container formats, as detected or forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Auto,
    Raw,
    Qcow2,
    Gzip,
    Xz,
    Zstd,
}

impl Format {
    pub fn parse(name: &str) -> Result<Format> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "auto" | "" => Format::Auto,
            "raw" => Format::Raw,
            "qcow2" => Format::Qcow2,
            "gzip" | "gz" => Format::Gzip,
            "xz" => Format::Xz,
            "zstd" | "zst" => Format::Zstd,
            other => {
                return Err(invalid(format!(
                    "unknown format {other:?} (auto, raw, qcow2, gzip, xz or zstd)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Gzip => "gzip",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
        }
    }
}

/// Tells the container format from the first bytes; refuses formats we do not decode.
pub fn detect(first: &[u8]) -> Result<Format> {
    if first.starts_with(qcow2::MAGIC) {
        return Ok(Format::Qcow2);
    }
    if first.starts_with(&[0x1f, 0x8b]) {
        return Ok(Format::Gzip);
    }
    if first.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Ok(Format::Xz);
    }
    if first.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Ok(Format::Zstd);
    }
    let refuse = |name: &str| {
        Err(unsupported(format!(
            "{name} images are not supported: convert to qcow2 or raw first"
        )))
    };
    if first.starts_with(b"KDMV") || first.starts_with(b"# Disk DescriptorFile") {
        return refuse("VMDK");
    }
    if first.len() >= 0x44 && first[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe] {
        return refuse("VDI");
    }
    if first.starts_with(b"vhdxfile") {
        return refuse("VHDX");
    }
    if first.starts_with(b"conectix") {
        return refuse("VHD");
    }
    if first.starts_with(b"QED\0") {
        return refuse("QED");
    }
    Ok(Format::Raw)
}

/// Shared counters the caller polls, and the cancellation flag it sets.
#[derive(Debug)]
pub struct Progress {
    pub bytes_in: AtomicU64,
    pub bytes_written: Arc<AtomicU64>,
    /// Length of the stream, `u64::MAX` while unknown.
    pub total: AtomicU64,
    pub cancel: Arc<AtomicBool>,
}

impl Progress {
    pub fn new(cancel: Arc<AtomicBool>) -> Progress {
        Progress {
            bytes_in: AtomicU64::new(0),
            bytes_written: Arc::new(AtomicU64::new(0)),
            total: AtomicU64::new(u64::MAX),
            cancel,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub format: Format,
    /// Expected digest (lowercase hex) and its algorithm.
    pub checksum: Option<(Algorithm, String)>,
    pub assume_zeroed: bool,
    pub max_buffer: u64,
    /// Threads inflating compressed clusters.
    pub workers: usize,
    /// Fault injection for tests: the hashing thread panics before hashing chunk number N
    /// (counted from 0), or before giving its digest when the stream has fewer chunks.
    #[cfg(test)]
    pub hasher_panics_at: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            format: Format::Auto,
            checksum: None,
            assume_zeroed: false,
            max_buffer: DEFAULT_MAX_BUFFER,
            workers: 2,
            #[cfg(test)]
            hasher_panics_at: None,
        }
    }
}

/// What a finished run did. `verified` is true only when a checksum was given and matched.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Container format of the stream (`qcow2`, `raw`, `gzip`, ...).
    pub format: String,
    /// Format inside a compressed wrapper (`raw` or `qcow2`), else the same as `format`.
    pub inner_format: String,
    pub virtual_size: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub checksum_algorithm: Option<String>,
    pub digest: Option<String>,
    pub expected_digest: Option<String>,
    pub verified: bool,
    pub range_requests: u64,
    pub peak_buffered: u64,
}

/// First error wins; errors that only say "another stage stopped" are not kept. A panicking
/// thread wins over an ordinary error: what failed after it (a stream that seemed to end
/// early, say) is only its consequence.
#[derive(Default)]
struct Failure {
    first: Mutex<Option<Error>>,
    abort: AtomicBool,
}

impl Failure {
    fn record(&self, e: Error) {
        if e.kind != ErrorKind::Stopped {
            let mut slot = self.first.lock().unwrap_or_else(|p| p.into_inner());
            let replace = match &*slot {
                None => true,
                Some(prev) => e.kind == ErrorKind::Internal && prev.kind != ErrorKind::Internal,
            };
            if replace {
                *slot = Some(e);
            }
        }
        self.abort.store(true, Ordering::SeqCst);
    }

    /// Records the panic of a joined thread; `Ok` values are handed back.
    fn joined<T>(&self, thread: &str, res: thread::Result<T>) -> Option<T> {
        match res {
            Ok(v) => Some(v),
            Err(payload) => {
                self.record(panicked(thread, &*payload));
                None
            }
        }
    }

    fn take(&self) -> Option<Error> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

enum WriterMsg {
    Slices(Vec<(u64, Chunk, Range<usize>)>),
    Owned(u64, Vec<u8>),
    Zero(u64, u64),
    Finish(u64),
}

/// Decoded work goes out in batches: one message per input chunk, not one per cluster.
struct PipeOut {
    writer: Sender<WriterMsg>,
    jobs: Option<Sender<Vec<CompressedJob>>>,
    slices: Vec<(u64, Chunk, Range<usize>)>,
    pending_jobs: Vec<CompressedJob>,
    pending_bytes: usize,
}

impl PipeOut {
    fn flush(&mut self) -> Result<()> {
        if !self.slices.is_empty() {
            let batch = std::mem::take(&mut self.slices);
            self.writer
                .send(WriterMsg::Slices(batch))
                .map_err(|_| stopped("writer stopped"))?;
        }
        if !self.pending_jobs.is_empty() {
            self.pending_bytes = 0;
            let batch = std::mem::take(&mut self.pending_jobs);
            match &self.jobs {
                Some(tx) => tx.send(batch).map_err(|_| stopped("workers stopped"))?,
                None => return Err(stopped("no workers")),
            }
        }
        Ok(())
    }
}

impl Output for PipeOut {
    fn data(&mut self, guest: u64, chunk: &Chunk, range: Range<usize>) -> Result<()> {
        if let Some((g, c, r)) = self.slices.last_mut() {
            if Arc::ptr_eq(c, chunk) && r.end == range.start && *g + r.len() as u64 == guest {
                r.end = range.end;
                return Ok(());
            }
        }
        self.slices.push((guest, chunk.clone(), range));
        Ok(())
    }

    fn owned(&mut self, guest: u64, data: Vec<u8>) -> Result<()> {
        self.writer
            .send(WriterMsg::Owned(guest, data))
            .map_err(|_| stopped("writer stopped"))
    }

    fn compressed(&mut self, job: CompressedJob) -> Result<()> {
        self.pending_bytes += job.data.len() + job.out_len;
        self.pending_jobs.push(job);
        // Batches bounded in bytes too: with 2 MiB clusters 64 jobs would be 128 MiB.
        if self.pending_jobs.len() >= 64 || self.pending_bytes >= JOB_BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn zero(&mut self, guest: u64, len: u64) -> Result<()> {
        self.flush()?;
        self.writer
            .send(WriterMsg::Zero(guest, len))
            .map_err(|_| stopped("writer stopped"))
    }
}

/// The decoding thread's view of the stream: chunks, with a `Read` face for decompressors.
struct ChunkInput {
    rx: Receiver<Chunk>,
    front: VecDeque<Chunk>,
    cur: Option<(Chunk, usize)>,
}

impl ChunkInput {
    fn next_chunk(&mut self) -> Option<Chunk> {
        if let Some((c, at)) = self.cur.take() {
            if at == 0 {
                return Some(c);
            }
            if at < c.len() {
                return Some(Arc::new(Block::from_vec(c[at..].to_vec())));
            }
        }
        self.front.pop_front().or_else(|| self.rx.recv().ok())
    }

    /// The first bytes of the stream without consuming them (at least `want`, if available).
    fn peek(&mut self, want: usize) -> Vec<u8> {
        let mut have: usize = self.front.iter().map(|c| c.len()).sum();
        while have < want {
            match self.rx.recv() {
                Ok(c) => {
                    have += c.len();
                    self.front.push_back(c);
                }
                Err(_) => break,
            }
        }
        let mut out = Vec::with_capacity(want);
        for c in &self.front {
            let take = (want - out.len()).min(c.len());
            out.extend_from_slice(&c[..take]);
            if out.len() >= want {
                break;
            }
        }
        out
    }
}

impl Read for ChunkInput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((c, at)) = &mut self.cur {
                if *at < c.len() {
                    let n = buf.len().min(c.len() - *at);
                    buf[..n].copy_from_slice(&c[*at..*at + n]);
                    *at += n;
                    return Ok(n);
                }
            }
            match self.front.pop_front().or_else(|| self.rx.recv().ok()) {
                Some(c) => self.cur = Some((c, 0)),
                None => return Ok(0),
            }
        }
    }
}

/// Reads `CHUNK`-sized pieces of decompressed output.
fn read_chunk(pool: &BlockPool, r: &mut dyn Read, what: &str) -> Result<Option<Chunk>> {
    let block = pool.read(r).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => truncated(format!("{what}: stream ended early: {e}")),
        _ => crate::error::corrupt(format!("{what}: {e}")),
    })?;
    Ok((!block.is_empty()).then(|| Arc::new(block)))
}

/// A stage's thread, named so that per-thread CPU figures (`top -H`, /proc/PID/task) say which
/// stage spent it.
fn spawn<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    thread::Builder::new()
        .name(name.to_string())
        .spawn(f)
        .expect("failed to spawn a pipeline thread") // as thread::spawn does
}

/// Spawns the writer once the size is known and checked, so nothing is written before.
struct Stages {
    target: Option<Target>,
    written: Arc<AtomicU64>,
    failure: Arc<Failure>,
    workers: usize,
    writer: Option<JoinHandle<()>>,
    pool: Vec<JoinHandle<()>>,
}

impl Stages {
    /// `compressed_clusters` is the cluster size of a qcow2 image, whose compressed clusters
    /// go to a pool of inflating workers.
    fn start(
        &mut self,
        virtual_size: Option<u64>,
        compressed_clusters: Option<usize>,
    ) -> Result<PipeOut> {
        let target = self.target.take().expect("started once");
        if let Some(v) = virtual_size {
            target.check_capacity(v)?;
        }
        let limit = virtual_size.or(target.capacity).unwrap_or(u64::MAX);
        let (wtx, wrx) = bounded::<WriterMsg>(QUEUE);
        let mut writer = BatchWriter::new(target, limit, self.written.clone());
        let failure = self.failure.clone();
        self.writer = Some(spawn("imgst-write", move || {
            let mut final_size = None;
            let res = (|| -> Result<()> {
                for msg in wrx.iter() {
                    match msg {
                        WriterMsg::Slices(list) => {
                            for (g, c, r) in list {
                                writer.write(g, &c[r])?;
                            }
                        }
                        WriterMsg::Owned(g, v) => writer.write(g, &v)?,
                        WriterMsg::Zero(g, l) => writer.zero(g, l)?,
                        WriterMsg::Finish(size) => final_size = Some(size),
                    }
                }
                match final_size {
                    Some(size) => writer.finish(size),
                    None => Err(stopped("decoding did not finish")),
                }
            })();
            if let Err(e) = res {
                failure.record(e);
            }
        }));
        let mut jobs = None;
        if let Some(cluster_size) = compressed_clusters {
            let (jtx, jrx) = bounded::<Vec<CompressedJob>>(QUEUE);
            // A batch passes its bound by at most one cluster. Blocks are sized for this image:
            // the allocator may zero all of a block, so a larger one costs memory even unused.
            let blocks = Arc::new(BlockPool::new(JOB_BATCH_BYTES + cluster_size, QUEUE));
            for _ in 0..self.workers.max(1) {
                let jrx = jrx.clone();
                let wtx = wtx.clone();
                let failure = self.failure.clone();
                let blocks = blocks.clone();
                self.pool.push(spawn("imgst-inflate", move || {
                    let res = (|| -> Result<()> {
                        let mut inflater = Inflater::new();
                        for batch in jrx.iter() {
                            let msg = inflate_batch(&mut inflater, &blocks, &batch)?;
                            wtx.send(msg).map_err(|_| stopped("writer stopped"))?;
                        }
                        Ok(())
                    })();
                    if let Err(e) = res {
                        failure.record(e);
                    }
                }));
            }
            jobs = Some(jtx);
        }
        Ok(PipeOut {
            writer: wtx,
            jobs,
            slices: Vec::new(),
            pending_jobs: Vec::new(),
            pending_bytes: 0,
        })
    }
}

/// Inflates a batch of compressed clusters into aligned blocks, one per run of clusters that
/// follow each other on the disk, so the writer gets few large O_DIRECT writes and no copy.
fn inflate_batch(
    inflater: &mut Inflater,
    blocks: &BlockPool,
    batch: &[CompressedJob],
) -> Result<WriterMsg> {
    let mut slices = Vec::new();
    let mut i = 0;
    while i < batch.len() {
        let first = &batch[i];
        let cs = first.cluster_size;
        let mut run = 1;
        while i + run < batch.len() {
            let next = &batch[i + run];
            let whole = first.out_len == cs && next.cluster_size == cs && next.out_len == cs;
            if !whole || next.guest != first.guest + (run * cs) as u64 {
                break;
            }
            run += 1;
        }
        let mut block = blocks.take(run * cs);
        for (k, job) in batch[i..i + run].iter().enumerate() {
            inflater.inflate_into(job, &mut block[k * cs..(k + 1) * cs])?;
        }
        let len = if run == 1 { first.out_len } else { run * cs };
        slices.push((first.guest, Arc::new(block), 0..len));
        i += run;
    }
    Ok(WriterMsg::Slices(slices))
}

struct Decoded {
    format: Format,
    inner: Format,
    virtual_size: u64,
    range_requests: u64,
    peak_buffered: u64,
}

fn decode_qcow2(
    input: &mut dyn FnMut() -> Result<Option<Chunk>>,
    first: &[u8],
    total: Option<u64>,
    max_buffer: u64,
    stages: &mut Stages,
    ranges: &mut dyn RangeFetch,
) -> Result<(u64, qcow2::Stats, PipeOut)> {
    let mut dec = qcow2::Decoder::new(first, total, max_buffer)?;
    let vsize = dec.header().virtual_size;
    let mut out = stages.start(Some(vsize), Some(dec.header().cluster_size as usize))?;
    while let Some(chunk) = input()? {
        dec.feed(&chunk, &mut out, ranges)?;
        out.flush()?;
    }
    dec.finish(&mut out, ranges)?;
    out.flush()?;
    Ok((vsize, dec.stats, out))
}

fn decode_raw(
    input: &mut dyn FnMut() -> Result<Option<Chunk>>,
    size_hint: Option<u64>,
    stages: &mut Stages,
) -> Result<(u64, PipeOut)> {
    let mut out = stages.start(size_hint, None)?;
    let pos = copy_raw(input, &mut out)?;
    Ok((pos, out))
}

/// Granularity at which raw data is checked for zeros.
const ZERO_PIECE: usize = 64 << 10;
/// Shortest zero run turned into a zeroing request rather than written: shorter ones would
/// only cut large writes into small ones.
const ZERO_RUN_MIN: u64 = 1 << 20;

/// Whether `b` holds only zeros (a branch-free OR per 4 KiB, which vectorises).
fn is_zero(b: &[u8]) -> bool {
    b.chunks(4096)
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

/// Raw image data in stream order: long runs of zeros become zeroing requests (a discard or
/// hole on the target instead of gigabytes of written zeros), everything else is data.
#[derive(Default)]
struct ZeroRuns {
    start: u64,
    len: u64,
    /// The pieces of a run still too short to count, written as data if it stays short.
    held: Vec<(u64, Chunk, Range<usize>)>,
}

impl ZeroRuns {
    fn push(&mut self, out: &mut PipeOut, pos: u64, chunk: &Chunk) -> Result<()> {
        let mut i = 0;
        while i < chunk.len() {
            let r = i..(i + ZERO_PIECE).min(chunk.len());
            let g = pos + i as u64;
            i = r.end;
            if is_zero(&chunk[r.clone()]) {
                if self.len == 0 {
                    self.start = g;
                }
                self.len += r.len() as u64;
                if self.len < ZERO_RUN_MIN {
                    self.held.push((g, chunk.clone(), r));
                } else {
                    self.held.clear();
                }
            } else {
                self.end_run(out)?;
                out.data(g, chunk, r)?;
            }
        }
        Ok(())
    }

    fn end_run(&mut self, out: &mut PipeOut) -> Result<()> {
        if self.len >= ZERO_RUN_MIN {
            out.zero(self.start, self.len)?;
        } else {
            for (g, c, r) in self.held.drain(..) {
                out.data(g, &c, r)?;
            }
        }
        self.len = 0;
        Ok(())
    }
}

/// Sends a raw stream to the writer; returns its length.
fn copy_raw(input: &mut dyn FnMut() -> Result<Option<Chunk>>, out: &mut PipeOut) -> Result<u64> {
    let mut runs = ZeroRuns::default();
    let mut pos = 0u64;
    while let Some(chunk) = input()? {
        runs.push(out, pos, &chunk)?;
        out.flush()?;
        pos += chunk.len() as u64;
    }
    runs.end_run(out)?;
    out.flush()?;
    Ok(pos)
}

fn decode_stream(
    input: &mut ChunkInput,
    opts: &Options,
    total: Option<u64>,
    stages: &mut Stages,
    ranges: &mut dyn RangeFetch,
) -> Result<Decoded> {
    let first = input.peek(qcow2::HEADER_PEEK.max(0x44));
    let format = match opts.format {
        Format::Auto => detect(&first)?,
        Format::Qcow2 if !first.starts_with(qcow2::MAGIC) => {
            return Err(crate::error::corrupt("not a qcow2 image (bad magic)"))
        }
        forced => forced,
    };
    let mut decoded = Decoded {
        format,
        inner: format,
        virtual_size: 0,
        range_requests: 0,
        peak_buffered: 0,
    };
    let out = match format {
        Format::Qcow2 => {
            let mut next = || Ok(input.next_chunk());
            let (v, stats, out) =
                decode_qcow2(&mut next, &first, total, opts.max_buffer, stages, ranges)?;
            decoded.virtual_size = v;
            decoded.range_requests = stats.range_requests;
            decoded.peak_buffered = stats.peak_buffered;
            out
        }
        Format::Raw | Format::Auto => {
            decoded.format = Format::Raw;
            decoded.inner = Format::Raw;
            let mut next = || Ok(input.next_chunk());
            let (v, out) = decode_raw(&mut next, total, stages)?;
            decoded.virtual_size = v;
            out
        }
        Format::Gzip | Format::Xz | Format::Zstd => {
            let name = format.name();
            let mut reader: Box<dyn Read + '_> = match format {
                Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut *input)),
                Format::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(&mut *input)),
                _ => Box::new(
                    zstd::stream::read::Decoder::new(&mut *input)
                        .map_err(|e| source(format!("zstd: {e}")))?,
                ),
            };
            let pool = BlockPool::new(CHUNK, 4 * QUEUE);
            let head = read_chunk(&pool, &mut *reader, name)?;
            let inner = match &head {
                Some(c) => match detect(c)? {
                    Format::Qcow2 => Format::Qcow2,
                    Format::Raw => Format::Raw,
                    other => {
                        return Err(unsupported(format!(
                            "{name} stream holds {} data: nested compression is not supported",
                            other.name()
                        )))
                    }
                },
                None => Format::Raw,
            };
            decoded.inner = inner;
            let mut pending = head.clone();
            let mut next = || -> Result<Option<Chunk>> {
                if let Some(c) = pending.take() {
                    return Ok(Some(c));
                }
                read_chunk(&pool, &mut *reader, name)
            };
            if inner == Format::Qcow2 {
                let head_bytes = head.as_ref().map(|c| c.to_vec()).unwrap_or_default();
                let (v, stats, out) = decode_qcow2(
                    &mut next,
                    &head_bytes,
                    None,
                    opts.max_buffer,
                    stages,
                    &mut NoRanges,
                )?;
                decoded.virtual_size = v;
                decoded.peak_buffered = stats.peak_buffered;
                out
            } else {
                // What the container declares of its size, checked before anything is written.
                if let Some(t) = stages.target.as_ref().filter(|t| t.capacity.is_some()) {
                    let declared = match (format, total) {
                        (Format::Zstd, _) => container_size::zstd_declared(&first),
                        (_, Some(len)) => {
                            let mut counted = CountedRanges {
                                inner: ranges,
                                count: 0,
                            };
                            let size =
                                container_size::from_tail(format == Format::Xz, len, &mut counted);
                            decoded.range_requests += counted.count;
                            size
                        }
                        _ => None,
                    };
                    if let Some(size) = declared {
                        t.check_capacity(size)?;
                    }
                }
                let mut out = stages.start(None, None)?;
                decoded.virtual_size = copy_raw(&mut next, &mut out)?;
                out
            }
        }
    };
    out.writer
        .send(WriterMsg::Finish(decoded.virtual_size))
        .map_err(|_| stopped("writer stopped"))?;
    Ok(decoded)
}

/// Streams `src` onto the target at `target_path` in one pass. Blocks until done; poll
/// `progress` from another thread and set its `cancel` flag to stop.
pub fn run(
    src: &Source,
    target_path: &Path,
    opts: &Options,
    progress: Arc<Progress>,
) -> Result<Outcome> {
    let opened = src.open()?;
    let mut ranges = src.ranges()?;
    let target = Target::open(target_path, opts.assume_zeroed)?;
    if let Some(len) = opened.length {
        progress.total.store(len, Ordering::Relaxed);
    }
    let failure = Arc::new(Failure::default());
    let (dtx, drx) = bounded::<Chunk>(QUEUE);
    let hash_chan = opts.checksum.as_ref().map(|_| bounded::<Chunk>(QUEUE));
    let hasher = opts.checksum.as_ref().map(|(algo, _)| {
        let rx = hash_chan.as_ref().expect("channel").1.clone();
        let algo = *algo;
        #[cfg(test)]
        let panic_at = opts.hasher_panics_at;
        spawn("imgst-hash", move || {
            let mut h = Hasher::new(algo);
            let mut tally = Tally::default();
            let chunks = rx.iter();
            #[cfg(test)]
            let chunks = chunks.enumerate().map(|(n, c)| {
                if panic_at == Some(n) {
                    panic!("injected panic at chunk {n}");
                }
                c
            });
            for c in chunks {
                tally.time(c.len() as u64, || h.update(&c));
            }
            #[cfg(test)]
            if panic_at.is_some() {
                panic!("injected panic before the digest");
            }
            tally.report("hash");
            h.hex()
        })
    });
    let htx = hash_chan.map(|(tx, _)| tx);
    let reader = {
        let failure = failure.clone();
        let progress = progress.clone();
        let mut r = opened.reader;
        let length = opened.length;
        spawn("imgst-read", move || {
            let pool = BlockPool::new(CHUNK, 4 * QUEUE);
            let res = (|| -> Result<u64> {
                let mut total = 0u64;
                let mut tally = Tally::default();
                let mut sends = Tally::default();
                loop {
                    if progress.cancel.load(Ordering::Relaxed) {
                        return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
                    }
                    if failure.abort.load(Ordering::Relaxed) {
                        return Err(stopped("aborted"));
                    }
                    let block = match tally.time(CHUNK as u64, || pool.read(&mut r)) {
                        Ok(b) => b,
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            return Err(truncated(format!("source ended early: {e}")))
                        }
                        Err(e) => return Err(source(format!("reading the source: {e}"))),
                    };
                    let n = block.len();
                    if n == 0 {
                        break;
                    }
                    total += n as u64;
                    progress.bytes_in.store(total, Ordering::Relaxed);
                    let chunk = Arc::new(block);
                    sends.time(0, || -> Result<()> {
                        if let Some(tx) = &htx {
                            tx.send(chunk.clone())
                                .map_err(|_| stopped("hasher stopped"))?;
                        }
                        dtx.send(chunk).map_err(|_| stopped("decoder stopped"))
                    })?;
                }
                tally.report("read");
                sends.report("read-wait");
                if let Some(len) = length {
                    if total < len {
                        return Err(truncated(format!(
                            "source ended after {total} of {len} bytes"
                        )));
                    }
                }
                Ok(total)
            })();
            match res {
                Ok(total) => Some(total),
                Err(e) => {
                    failure.record(e);
                    None
                }
            }
        })
    };
    let mut stages = Stages {
        target: Some(target),
        written: progress.bytes_written.clone(),
        failure: failure.clone(),
        workers: opts.workers,
        writer: None,
        pool: Vec::new(),
    };
    let written = progress.bytes_written.clone();
    let mut input = ChunkInput {
        rx: drx,
        front: VecDeque::new(),
        cur: None,
    };
    let decoded = {
        let mut ranges_ref: &mut dyn RangeFetch = &mut *ranges;
        let cancel = progress.cancel.clone();
        let mut guard = CancelAware {
            inner: &mut ranges_ref,
            cancel,
        };
        decode_stream(&mut input, opts, opened.length, &mut stages, &mut guard)
    };
    let decoded = match decoded {
        Ok(d) => Some(d),
        Err(e) => {
            failure.record(e);
            None
        }
    };
    drop(input);
    // Dropping the stages' senders lets workers and the writer drain and finish.
    let pool = std::mem::take(&mut stages.pool);
    let writer = stages.writer.take();
    drop(stages);
    // A panicking thread is an internal error, never a short stream or a checksum mismatch.
    for h in pool {
        failure.joined("inflating", h.join());
    }
    if let Some(w) = writer {
        failure.joined("writer", w.join());
    }
    let bytes_read = failure.joined("reader", reader.join()).flatten();
    let digest = hasher.and_then(|h| failure.joined("hashing", h.join()));
    if let Some(e) = failure.take() {
        return Err(e);
    }
    if progress.cancel.load(Ordering::Relaxed) {
        return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
    }
    let decoded =
        decoded.ok_or_else(|| internal("internal error: decoding stopped without a reason"))?;
    let bytes_read = bytes_read
        .ok_or_else(|| internal("internal error: the reader stopped without a reason"))?;
    let expected = opts.checksum.as_ref().map(|(_, hex)| hex.clone());
    let verified = matches!((&digest, &expected), (Some(d), Some(e)) if d == e);
    Ok(Outcome {
        format: decoded.format.name().to_string(),
        inner_format: decoded.inner.name().to_string(),
        virtual_size: decoded.virtual_size,
        bytes_read,
        bytes_written: written.load(Ordering::Relaxed),
        checksum_algorithm: opts.checksum.as_ref().map(|(a, _)| a.name().to_string()),
        digest,
        expected_digest: expected,
        verified,
        range_requests: decoded.range_requests,
        peak_buffered: decoded.peak_buffered,
    })
}

/// Counts the range requests made through it (reported in the outcome).
struct CountedRanges<'a> {
    inner: &'a mut dyn RangeFetch,
    count: u64,
}

impl RangeFetch for CountedRanges<'_> {
    fn fetch(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        self.count += 1;
        self.inner.fetch(offset, len)
    }
}

struct CancelAware<'a, 'b> {
    inner: &'a mut &'b mut dyn RangeFetch,
    cancel: Arc<AtomicBool>,
}

impl RangeFetch for CancelAware<'_, '_> {
    fn fetch(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(Error::new(ErrorKind::Cancelled, "cancelled"));
        }
        self.inner.fetch(offset, len)
    }
}

/// What `probe` tells about an image without writing it.
#[derive(Debug, Clone)]
pub struct Info {
    pub format: String,
    /// Format inside a compressed wrapper, when it could be seen.
    pub inner_format: Option<String>,
    pub virtual_size: Option<u64>,
    pub cluster_size: Option<u64>,
    /// Cluster compression of a qcow2 image, or the wrapper's compression.
    pub compression: Option<String>,
    pub file_size: Option<u64>,
    pub qcow2_version: Option<u32>,
    pub extended_l2: bool,
}

/// Reads the start of `src` (one request: a range request over HTTP, see `Source::head`) and
/// reports the format and sizes.
pub fn probe(src: &Source) -> Result<Info> {
    const WANT: u64 = 64 << 10;
    let start = src.head(WANT)?;
    let head = start.data;
    let format = detect(&head)?;
    let mut info = Info {
        format: format.name().to_string(),
        inner_format: None,
        virtual_size: None,
        cluster_size: None,
        compression: None,
        file_size: start.length,
        qcow2_version: None,
        extended_l2: false,
    };
    match format {
        Format::Qcow2 => {
            let h = qcow2::parse_header(&head)?;
            info.virtual_size = Some(h.virtual_size);
            info.cluster_size = Some(h.cluster_size);
            info.compression = Some(h.compression.name().to_string());
            info.qcow2_version = Some(h.version);
            info.extended_l2 = h.extended_l2;
        }
        Format::Raw | Format::Auto => info.virtual_size = start.length,
        Format::Gzip | Format::Xz | Format::Zstd => {
            info.compression = Some(format.name().to_string());
            info.virtual_size = match (format, start.length) {
                (Format::Zstd, _) => container_size::zstd_declared(&head),
                (Format::Xz, Some(len)) => container_size::xz_size(len, &mut *src.ranges()?),
                _ => None,
            };
            let cursor = std::io::Cursor::new(head);
            let mut reader: Box<dyn Read> = match format {
                Format::Gzip => Box::new(flate2::read::MultiGzDecoder::new(cursor)),
                Format::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(cursor)),
                _ => Box::new(
                    zstd::stream::read::Decoder::new(cursor)
                        .map_err(|e| source(format!("zstd: {e}")))?,
                ),
            };
            let mut inner = vec![0u8; 4096];
            let mut n = 0;
            while n < inner.len() {
                match reader.read(&mut inner[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            if n >= qcow2::HEADER_PEEK {
                let inner_fmt = detect(&inner[..n])?;
                info.inner_format = Some(inner_fmt.name().to_string());
                if inner_fmt == Format::Qcow2 {
                    let h = qcow2::parse_header(&inner[..n])?;
                    info.virtual_size = Some(h.virtual_size);
                    info.cluster_size = Some(h.cluster_size);
                    info.qcow2_version = Some(h.version);
                    info.extended_l2 = h.extended_l2;
                }
            } else if n > 0 {
                info.inner_format = Some("raw".to_string());
            }
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::HttpOptions;
    use digest::Digest;

    /// A raw image of three and a half chunks in a fresh folder; removed on drop.
    struct Scratch {
        dir: std::path::PathBuf,
        image: Vec<u8>,
    }

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("imagestream-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let image: Vec<u8> = (0..CHUNK * 7 / 2).map(|i| (i % 251) as u8 | 1).collect();
            std::fs::write(dir.join("disk.raw"), &image).unwrap();
            Scratch { dir, image }
        }

        fn write(&self, hasher_panics_at: Option<usize>, expected: &str) -> Result<Outcome> {
            let src = Source::new(
                self.dir.join("disk.raw").to_str().unwrap(),
                &HttpOptions::default(),
            )?;
            let opts = Options {
                checksum: Some((Algorithm::Sha256, expected.to_string())),
                hasher_panics_at,
                ..Options::default()
            };
            let target = self.dir.join("target");
            let _ = std::fs::remove_file(&target);
            let progress = Arc::new(Progress::new(Arc::new(AtomicBool::new(false))));
            run(&src, &target, &opts, progress)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn panicking_hasher_is_an_internal_error_not_a_mismatch() {
        let s = Scratch::new("hasher-panic");
        let good = format!("{:x}", sha2::Sha256::digest(&s.image));
        // Without the injected panic the same write verifies, and a wrong digest is a mismatch.
        let ok = s.write(None, &good).unwrap();
        assert!(ok.verified);
        assert_eq!(ok.digest.as_deref(), Some(good.as_str()));
        let wrong = s.write(None, &"0".repeat(64)).unwrap();
        assert!(!wrong.verified);
        // First chunk, a middle one, and after the last one (the stream fully written).
        for at in [0, 2, usize::MAX] {
            let e = s.write(Some(at), &good).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Internal, "panic at {at}: {e}");
            assert!(
                e.message
                    .contains("the hashing thread panicked: injected panic"),
                "panic at {at}: {e}"
            );
        }
    }

    /// How the test server answers a request with a Range header.
    #[derive(Clone, Copy)]
    enum Ranges {
        Served,
        Ignored,    // 200 and the whole file
        Refused,    // 416
        OtherBytes, // 206 for bytes the client did not ask for
    }

    /// One request the test server answered: its Range header, status and body bytes sent.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        range: Option<String>,
        status: u16,
        sent: usize,
    }

    /// An HTTP/1.1 server on 127.0.0.1 serving `body` at any path, one connection per
    /// request, recording what it answered.
    fn serve(body: Vec<u8>, ranges: Ranges) -> (String, Arc<Mutex<Vec<Seen>>>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/disk.img", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("range") {
                            range = Some(v.trim().to_string());
                        }
                    }
                }
                let total = body.len();
                let asked = range.as_deref().and_then(|r| {
                    let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                });
                let (status, span, extra) = match (asked, ranges) {
                    (None, _) | (Some(_), Ranges::Ignored) => (200, 0..total, String::new()),
                    (Some(_), Ranges::Refused) => {
                        (416, 0..0, format!("Content-Range: bytes */{total}\r\n"))
                    }
                    (Some((a, b)), Ranges::Served) => {
                        let end = (b + 1).min(total);
                        (
                            206,
                            a..end,
                            format!("Content-Range: bytes {a}-{}/{total}\r\n", end - 1),
                        )
                    }
                    (Some((a, b)), Ranges::OtherBytes) => {
                        let (a, end) = (a + 1, (b + 2).min(total));
                        (
                            206,
                            a..end,
                            format!("Content-Range: bytes {a}-{}/{total}\r\n", end - 1),
                        )
                    }
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    span.len()
                );
                let mut sent = 0;
                if stream.write_all(head.as_bytes()).is_ok() {
                    for piece in body[span].chunks(16 << 10) {
                        if stream.write_all(piece).is_err() {
                            break;
                        }
                        sent += piece.len();
                    }
                }
                log.lock().unwrap().push(Seen {
                    range,
                    status,
                    sent,
                });
            }
        });
        (url, seen)
    }

    fn probe_url(url: &str) -> Result<Info> {
        probe(&Source::new(url, &HttpOptions::default())?)
    }

    /// Until the server has logged `n` requests (it logs after the client hung up).
    fn requests(seen: &Arc<Mutex<Vec<Seen>>>, n: usize) -> Vec<Seen> {
        for _ in 0..500 {
            if seen.lock().unwrap().len() >= n {
                break;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        thread::sleep(std::time::Duration::from_millis(50)); // and no more than n
        seen.lock().unwrap().clone()
    }

    const PROBE_RANGE: &str = "bytes=0-65535";

    /// A raw image of 4 MiB: a probe reads its first 64 KiB.
    fn raw_image() -> Vec<u8> {
        raw_image_of(4 << 20)
    }

    fn raw_image_of(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i % 251) as u8 | 1).collect()
    }

    #[test]
    fn probe_asks_for_the_head_only() {
        let (url, seen) = serve(raw_image(), Ranges::Served);
        let info = probe_url(&url).unwrap();
        assert_eq!(info.format, "raw");
        assert_eq!(info.file_size, Some(4 << 20)); // from Content-Range
        assert_eq!(info.virtual_size, Some(4 << 20));
        let want = Seen {
            range: Some(PROBE_RANGE.into()),
            status: 206,
            sent: 64 << 10,
        };
        assert_eq!(requests(&seen, 1), vec![want]);
    }

    #[test]
    fn probe_of_a_qcow2_image_by_range() {
        let mut image = vec![0u8; 1 << 20];
        image[..4].copy_from_slice(qcow2::MAGIC);
        image[4..8].copy_from_slice(&3u32.to_be_bytes()); // version
        image[20..24].copy_from_slice(&16u32.to_be_bytes()); // cluster bits: 64 KiB
        image[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes()); // virtual size
        image[36..40].copy_from_slice(&2u32.to_be_bytes()); // L1 entries
        image[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes()); // L1 table
        image[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes()); // refcount table
        image[56..60].copy_from_slice(&1u32.to_be_bytes()); // its clusters
        image[96..100].copy_from_slice(&4u32.to_be_bytes()); // refcount order
        image[100..104].copy_from_slice(&104u32.to_be_bytes()); // header length (v3)
        let (url, seen) = serve(image, Ranges::Served);
        let info = probe_url(&url).unwrap();
        assert_eq!(info.format, "qcow2");
        assert_eq!(info.virtual_size, Some(1 << 30));
        assert_eq!(info.cluster_size, Some(64 << 10));
        assert_eq!(info.file_size, Some(1 << 20));
        assert_eq!(requests(&seen, 1).len(), 1);
    }

    #[test]
    fn probe_of_a_server_that_ignores_range_reads_the_head_of_the_whole_file() {
        // Larger than the loopback socket buffers can hold (a few MiB each way): a 4 MiB
        // body could be all "sent" into them before the probe hung up.
        let size = 64 << 20;
        let (url, seen) = serve(raw_image_of(size), Ranges::Ignored);
        let info = probe_url(&url).unwrap();
        assert_eq!(info.file_size, Some(size as u64)); // from Content-Length
        assert_eq!(info.virtual_size, Some(size as u64));
        let got = requests(&seen, 1);
        assert_eq!(got.len(), 1, "{got:?}"); // no second request
        assert_eq!(
            (got[0].range.as_deref(), got[0].status),
            (Some(PROBE_RANGE), 200)
        );
        assert!(got[0].sent < size / 2, "the probe hung up early: {got:?}");
    }

    #[test]
    fn probe_falls_back_to_a_plain_get_when_the_range_is_refused_or_wrong() {
        for ranges in [Ranges::Refused, Ranges::OtherBytes] {
            let (url, seen) = serve(raw_image(), ranges);
            let info = probe_url(&url).unwrap();
            assert_eq!(info.format, "raw");
            assert_eq!(info.file_size, Some(4 << 20));
            let got = requests(&seen, 2);
            assert_eq!(got.len(), 2, "{got:?}");
            assert_eq!(got[0].range.as_deref(), Some(PROBE_RANGE));
            assert_eq!((got[1].range.as_deref(), got[1].status), (None, 200));
        }
    }

    #[test]
    fn probe_of_an_empty_file_gets_416_then_a_plain_get() {
        let (url, seen) = serve(Vec::new(), Ranges::Refused); // as RFC 9110 servers answer
        let info = probe_url(&url).unwrap();
        assert_eq!(info.file_size, Some(0));
        let got = requests(&seen, 2);
        assert_eq!(
            got.iter().map(|s| s.status).collect::<Vec<_>>(),
            vec![416, 200]
        );
    }

    #[test]
    fn probe_errors_are_the_servers_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/missing.img", listener.local_addr().unwrap());
        thread::spawn(move || {
            use std::io::Write;
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        let e = probe_url(&url).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Source, "{e}");
        assert!(e.message.contains("HTTP 404"), "{e}");
    }

    #[test]
    fn zero_detection() {
        let mut b = vec![0u8; 3 * 4096 + 100];
        assert!(is_zero(&b));
        assert!(is_zero(&[]));
        for at in [0, 4095, 4096, b.len() - 1] {
            b[at] = 1;
            assert!(!is_zero(&b), "{at}");
            b[at] = 0;
        }
    }
}
