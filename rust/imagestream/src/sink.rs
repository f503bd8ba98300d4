//! The target disk: a block device or a regular file, written in large batches at guest
//! offsets, with zeroed regions made to read as zeros, and flushed before success.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{target, target_io, Result};
use crate::trace::Tally;

/// Largest single write: big enough to amortise syscalls, small enough to bound memory.
pub const BATCH: usize = 8 << 20;
/// Granularity at which all-zero data is skipped on targets that already read as zeros.
const ZERO_BLOCK: u64 = 64 << 10;

pub struct Target {
    file: File,
    /// The same block device opened with O_DIRECT: large aligned writes skip the page cache,
    /// which is both faster and steadier than buffered writes followed by one huge fsync.
    direct: Option<File>,
    path: PathBuf,
    pub is_block: bool,
    /// What the target can hold; `None` for a file we created, which grows as needed.
    pub capacity: Option<u64>,
    /// The target already reads as zeros where we do not write.
    pub known_zero: bool,
}

impl Target {
    /// Opens `path`. A block device or a non-empty regular file is a disk of fixed size; a
    /// missing or empty file is created and starts out all zeros.
    pub fn open(path: &Path, assume_zeroed: bool) -> Result<Target> {
        let err = |e: std::io::Error| target_io(format!("target {}", path.display()), &e);
        match std::fs::metadata(path) {
            Ok(meta) if meta.file_type().is_block_device() => {
                let mut file = OpenOptions::new().write(true).open(path).map_err(err)?;
                let size = file.seek(SeekFrom::End(0)).map_err(err)?;
                let direct = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok();
                Ok(Target {
                    file,
                    direct,
                    path: path.to_path_buf(),
                    is_block: true,
                    capacity: Some(size),
                    known_zero: assume_zeroed,
                })
            }
            Ok(meta) if meta.is_file() && meta.len() > 0 => {
                let file = OpenOptions::new().write(true).open(path).map_err(err)?;
                Ok(Target {
                    file,
                    direct: None,
                    path: path.to_path_buf(),
                    is_block: false,
                    capacity: Some(meta.len()),
                    known_zero: assume_zeroed,
                })
            }
            Ok(meta) if meta.is_file() => Target::create(path),
            Ok(_) => Err(target(format!(
                "target {} is neither a block device nor a regular file",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Target::create(path),
            Err(e) => Err(err(e)),
        }
    }

    fn create(path: &Path) -> Result<Target> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| target_io(format!("cannot create target {}", path.display()), &e))?;
        Ok(Target {
            file,
            direct: None,
            path: path.to_path_buf(),
            is_block: false,
            capacity: None,
            known_zero: true,
        })
    }

    /// Refuses, before anything is written, a target too small for the image.
    pub fn check_capacity(&self, virtual_size: u64) -> Result<()> {
        match self.capacity {
            Some(cap) if cap < virtual_size => Err(target(format!(
                "target {} holds {cap} bytes, less than the image's virtual size {virtual_size}: nothing written",
                self.path.display()
            ))),
            _ => Ok(()),
        }
    }

    fn write_all_at(&self, off: u64, bytes: &[u8]) -> Result<()> {
        write_all(&self.file, off, bytes)
            .map_err(|e| target_io(format!("write to {} at {off}", self.path.display()), &e))
    }

    /// Writes a batch that starts at an aligned address in memory: the 512-byte-aligned part
    /// through O_DIRECT when available, the rest (a short tail, at most) through the page cache.
    fn write_batch(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
        if let Some(direct) = &self.direct {
            let aligned = if off % 512 == 0 {
                bytes.len() & !511
            } else {
                0
            };
            if aligned > 0 {
                match write_all(direct, off, &bytes[..aligned]) {
                    Ok(()) => return self.write_all_at(off + aligned as u64, &bytes[aligned..]),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        // The device wants a larger alignment: fall back to the page cache.
                        self.direct = None;
                    }
                    Err(e) => {
                        return Err(target_io(
                            format!("write to {} at {off}", self.path.display()),
                            &e,
                        ))
                    }
                }
            }
        }
        self.write_all_at(off, bytes)
    }

    /// Makes `off..off+len` read as zeros: a hole on files, zero-range on block devices,
    /// explicit zeros where neither works.
    fn zero(&self, off: u64, len: u64) -> Result<()> {
        if len == 0 || self.known_zero {
            return Ok(());
        }
        let mode = if self.is_block {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        };
        // SAFETY: fallocate only reads its integer arguments; the descriptor stays open for the
        // whole call because `self.file` is borrowed.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let zeros = vec![0u8; (len.min(BATCH as u64)) as usize];
        let mut at = off;
        while at < off + len {
            let n = (off + len - at).min(zeros.len() as u64) as usize;
            self.write_all_at(at, &zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }

    /// Flushes to stable storage; a created file first gets its final length.
    fn finish(&mut self, final_size: u64) -> Result<()> {
        if self.capacity.is_none() {
            let len = self
                .file
                .metadata()
                .map_err(|e| target_io(self.path.display(), &e))?
                .len();
            if len != final_size {
                self.file
                    .set_len(final_size)
                    .map_err(|e| target_io(format!("resize {}", self.path.display()), &e))?;
            }
        }
        self.file
            .sync_all()
            .map_err(|e| target_io(format!("fsync {}", self.path.display()), &e))?;
        if let Some(direct) = &self.direct {
            direct
                .sync_all()
                .map_err(|e| target_io(format!("fsync {}", self.path.display()), &e))?;
        }
        Ok(())
    }
}

fn write_all(file: &File, mut off: u64, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match file.write_at(bytes, off) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "no progress",
                ))
            }
            Ok(n) => {
                bytes = &bytes[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Memory alignment of batches (O_DIRECT needs the buffer aligned to the logical block size).
const ALIGN: usize = 4096;

/// Gathers writes that continue one another into large batches and enforces the size limit.
pub struct BatchWriter {
    target: Target,
    limit: u64,
    /// `BATCH + ALIGN` bytes once used; the batch lives at `storage[base..base + len]`.
    storage: Vec<u8>,
    base: usize,
    len: usize,
    batch_start: u64,
    written: Arc<AtomicU64>,
    /// Time in writes, zeroing and the final flush (see `trace`).
    tally: [Tally; 3],
}

impl BatchWriter {
    /// `limit` is the virtual size (or the target capacity): nothing is written past it.
    pub fn new(target: Target, limit: u64, written: Arc<AtomicU64>) -> BatchWriter {
        BatchWriter {
            target,
            limit,
            storage: Vec::new(),
            base: 0,
            len: 0,
            batch_start: 0,
            written,
            tally: [Tally::default(); 3],
        }
    }

    fn check(&self, off: u64, len: u64) -> Result<()> {
        let end = off.checked_add(len);
        if end.is_none() || end > Some(self.limit) {
            return Err(target(format!(
                "refusing to write {len} bytes at {off}: past the image's virtual size or the target's end ({})",
                self.limit
            )));
        }
        Ok(())
    }

    pub fn write(&mut self, off: u64, bytes: &[u8]) -> Result<()> {
        self.check(off, bytes.len() as u64)?;
        if !self.target.known_zero {
            return self.append(off, bytes);
        }
        // Skip all-zero blocks: the target already reads as zeros there (keeps files sparse).
        let mut i = 0usize;
        while i < bytes.len() {
            let at = off + i as u64;
            let block_end = ((at / ZERO_BLOCK + 1) * ZERO_BLOCK).min(off + bytes.len() as u64);
            let piece_end = (block_end - off) as usize;
            let piece = &bytes[i..piece_end];
            if piece.iter().any(|&b| b != 0) {
                self.append(at, piece)?;
            } else {
                self.written
                    .fetch_add(piece.len() as u64, Ordering::Relaxed);
            }
            i = piece_end;
        }
        Ok(())
    }

    fn append(&mut self, mut off: u64, mut bytes: &[u8]) -> Result<()> {
        let direct_ready = off % 512 == 0
            && bytes.len() % 512 == 0
            && (bytes.as_ptr() as usize) % 512 == 0
            && bytes.len() >= 64 << 10;
        if self.target.direct.is_some() && direct_ready {
            // Already aligned in memory (blocks from the reader are): write without copying.
            self.flush()?;
            let target = &mut self.target;
            self.tally[0].time(bytes.len() as u64, || target.write_batch(off, bytes))?;
            self.written
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            return Ok(());
        }
        while !bytes.is_empty() {
            if self.len > 0 && (self.batch_start + self.len as u64 != off || self.len == BATCH) {
                self.flush()?;
            }
            if self.len == 0 {
                if self.target.direct.is_none() && bytes.len() >= BATCH / 2 {
                    // Page-cache writes need no alignment: skip the copy.
                    self.target.write_all_at(off, bytes)?;
                    self.written
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    return Ok(());
                }
                if self.storage.is_empty() {
                    self.storage = vec![0u8; BATCH + ALIGN];
                    self.base = self.storage.as_ptr().align_offset(ALIGN).min(ALIGN);
                }
                self.batch_start = off;
            }
            let n = (BATCH - self.len).min(bytes.len());
            let at = self.base + self.len;
            self.storage[at..at + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            off += n as u64;
            bytes = &bytes[n..];
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let batch = &self.storage[self.base..self.base + self.len];
        let (target, start) = (&mut self.target, self.batch_start);
        self.tally[0].time(batch.len() as u64, || target.write_batch(start, batch))?;
        self.written.fetch_add(self.len as u64, Ordering::Relaxed);
        self.len = 0;
        Ok(())
    }

    pub fn zero(&mut self, off: u64, len: u64) -> Result<()> {
        self.check(off, len)?;
        self.flush()?;
        let target = &self.target;
        self.tally[1].time(len, || target.zero(off, len))?;
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// Final flush and fsync; `final_size` is the image's size (the length of a created file).
    pub fn finish(mut self, final_size: u64) -> Result<()> {
        self.flush()?;
        self.check(0, final_size)?;
        let target = &mut self.target;
        let done = self.tally[2].time(0, || target.finish(final_size));
        for (t, what) in self.tally.iter().zip(["write", "zero", "fsync"]) {
            t.report(what);
        }
        done
    }
}
