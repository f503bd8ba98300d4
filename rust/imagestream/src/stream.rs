//! What the format decoders hand to the rest of the pipeline, and what they may ask of the source.

use std::io::Read;
use std::ops::{Deref, Range};
use std::sync::Arc;

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
}

impl Block {
    /// Reads up to `max` bytes (fewer only at the end of `r`) into a fresh aligned block.
    pub fn read_from(r: &mut dyn Read, max: usize) -> std::io::Result<Block> {
        let mut storage: Vec<u8> = Vec::with_capacity(max + 2 * BLOCK_ALIGN);
        let start = storage.as_ptr().align_offset(BLOCK_ALIGN).min(BLOCK_ALIGN);
        storage.resize(start, 0);
        // read_to_end fills the spare capacity without zeroing it first; the capacity is large
        // enough that the vector never reallocates (which would lose the alignment).
        r.take(max as u64).read_to_end(&mut storage)?;
        Ok(Block { storage, start })
    }

    /// Wraps bytes that need no particular alignment.
    pub fn from_vec(storage: Vec<u8>) -> Block {
        Block { storage, start: 0 }
    }
}

impl Deref for Block {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.storage[self.start..]
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
    }
}
