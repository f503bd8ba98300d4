//! What the format decoders hand to the rest of the pipeline, and what they may ask of the source.

use std::io::Read;
use std::ops::{Deref, DerefMut, Range};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::error::Result;

/// A piece of the downloaded stream, shared (not copied) between hashing, decoding and writing.
pub type Chunk = Arc<Block>;

/// Memory alignment of blocks read from the source: data placed at aligned offsets of a block
/// can go to an O_DIRECT target without being copied first.
pub const BLOCK_ALIGN: usize = 4096;

/// Bytes whose first byte sits at a `BLOCK_ALIGN`-aligned address (when read with `read_from`).
pub struct Block {
    storage: Vec<u8>,
    start: usize,
    end: usize,
    /// Where the storage goes back when the last reference is dropped (see `BlockPool`).
    pool: Option<Sender<Vec<u8>>>,
}

impl Block {
    /// Reads up to `max` bytes (fewer only at the end of `r`) into a fresh aligned block.
    pub fn read_from(r: &mut dyn Read, max: usize) -> std::io::Result<Block> {
        Block::fill(vec![0u8; max + BLOCK_ALIGN], r, max, None)
    }

    /// Fills `storage` (at least `max + BLOCK_ALIGN` bytes, initialised) from `r`: straight
    /// into the block, one `read` after another, with no intermediate buffer.
    fn fill(
        storage: Vec<u8>,
        r: &mut dyn Read,
        max: usize,
        pool: Option<Sender<Vec<u8>>>,
    ) -> std::io::Result<Block> {
        let start = storage.as_ptr().align_offset(BLOCK_ALIGN).min(BLOCK_ALIGN);
        let mut block = Block {
            storage,
            start,
            end: start,
            pool,
        };
        let stop = start + max;
        while block.end < stop {
            match r.read(&mut block.storage[block.end..stop]) {
                Ok(0) => break,
                Ok(n) => block.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(block)
    }

    /// Wraps bytes that need no particular alignment.
    pub fn from_vec(storage: Vec<u8>) -> Block {
        let end = storage.len();
        Block {
            storage,
            start: 0,
            end,
            pool: None,
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            // A full pool (or one nobody reads any more) just lets the storage be freed.
            let _ = pool.try_send(std::mem::take(&mut self.storage));
        }
    }
}

impl Deref for Block {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }
}

impl DerefMut for Block {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.end]
    }
}

/// Recycles the storage of blocks read from the source: the same few megabytes go round the
/// pipeline instead of a fresh allocation (page faults, kernel zeroing) per block.
pub struct BlockPool {
    tx: Sender<Vec<u8>>,
    rx: Receiver<Vec<u8>>,
    max: usize,
}

impl BlockPool {
    /// A pool of blocks of `max` bytes, keeping at most `keep` spare ones.
    pub fn new(max: usize, keep: usize) -> BlockPool {
        let (tx, rx) = bounded(keep);
        BlockPool { tx, rx, max }
    }

    /// Like `Block::read_from`, with recycled storage.
    pub fn read(&self, r: &mut dyn Read) -> std::io::Result<Block> {
        Block::fill(self.storage(), r, self.max, Some(self.tx.clone()))
    }

    /// An aligned block of `len` bytes (at most the pool's block size) for the caller to fill:
    /// its content is whatever the recycled storage held.
    pub fn take(&self, len: usize) -> Block {
        assert!(
            len <= self.max,
            "block of {len} bytes from a pool of {}",
            self.max
        );
        let storage = self.storage();
        let start = storage.as_ptr().align_offset(BLOCK_ALIGN).min(BLOCK_ALIGN);
        Block {
            storage,
            start,
            end: start + len,
            pool: Some(self.tx.clone()),
        }
    }

    fn storage(&self) -> Vec<u8> {
        let want = self.max + BLOCK_ALIGN;
        match self.rx.try_recv() {
            Ok(v) if v.len() == want => v,
            _ => vec![0u8; want],
        }
    }
}

/// How a qcow2 image compresses its clusters (header field `compression_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterCompression {
    Zlib,
    Zstd,
}

impl ClusterCompression {
    pub fn name(self) -> &'static str {
        match self {
            ClusterCompression::Zlib => "zlib",
            ClusterCompression::Zstd => "zstd",
        }
    }
}

/// One compressed cluster, cut out of the stream, waiting to be inflated and written.
#[derive(Debug)]
pub struct CompressedJob {
    /// Guest offset where the cluster goes.
    pub guest: u64,
    /// Bytes of the inflated cluster to write (the last cluster is cut at the virtual size).
    pub out_len: usize,
    /// Full size of an inflated cluster.
    pub cluster_size: usize,
    pub compression: ClusterCompression,
    /// The compressed bytes (an upper bound: may carry padding after the end of the stream).
    pub data: Vec<u8>,
}

/// Receiver of decoded work, in stream order. Guest ranges never overlap between calls.
pub trait Output {
    /// `chunk[range]` belongs at guest offset `guest`.
    fn data(&mut self, guest: u64, chunk: &Chunk, range: Range<usize>) -> Result<()>;
    /// Like `data`, for bytes the decoder had to hold back (owned copy).
    fn owned(&mut self, guest: u64, data: Vec<u8>) -> Result<()>;
    /// A compressed cluster to inflate and write.
    fn compressed(&mut self, job: CompressedJob) -> Result<()>;
    /// `len` bytes at `guest` must read as zeros.
    fn zero(&mut self, guest: u64, len: u64) -> Result<()>;
}

/// Random access to the source, used only when a layout cannot be decoded in one pass.
pub trait RangeFetch {
    /// The bytes `offset..offset+len`, or `Ok(None)` when the source cannot serve ranges.
    fn fetch(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>>;
}

/// A `RangeFetch` for sources that have none.
pub struct NoRanges;

impl RangeFetch for NoRanges {
    fn fetch(&mut self, _offset: u64, _len: u64) -> Result<Option<Vec<u8>>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_aligned_and_complete() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
        let mut r = std::io::Cursor::new(&data);
        let mut got = Vec::new();
        loop {
            let b = Block::read_from(&mut r, 1 << 20).unwrap();
            if b.is_empty() {
                break;
            }
            assert_eq!(b.as_ptr() as usize % BLOCK_ALIGN, 0);
            got.extend_from_slice(&b);
        }
        assert!(got == data);
        let pool = BlockPool::new(1 << 20, 4);
        let mut r = std::io::Cursor::new(&data);
        let mut again = Vec::new();
        loop {
            let b = pool.read(&mut r).unwrap();
            if b.is_empty() {
                break;
            }
            assert_eq!(b.as_ptr() as usize % BLOCK_ALIGN, 0);
            again.extend_from_slice(&b);
        }
        assert!(again == data);
    }
}
