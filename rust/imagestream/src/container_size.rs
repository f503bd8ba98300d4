//! What a compressed container says about the size of what it holds, learnt before anything
//! is written so that a target too small for the image is refused up front.
//!
//! zstd may declare the content size in its frame header, at the start of the stream. gzip
//! and xz record sizes only at the end: gzip's last 4 bytes are the size modulo 2^32 of its
//! last member (so only a lower bound), xz's index lists every block's uncompressed size.
//! Reading the end costs one or two small range requests, made only when a capacity is known.

use crate::stream::RangeFetch;

/// The largest xz index we fetch: ~16 bytes per block, so a million blocks.
const MAX_XZ_INDEX: u64 = 16 << 20;
const XZ_HEADER_LEN: u64 = 12;
const XZ_FOOTER_LEN: u64 = 12;

/// The content size a zstd frame header declares, if it does.
pub fn zstd_declared(first: &[u8]) -> Option<u64> {
    zstd::zstd_safe::get_frame_content_size(first)
        .ok()
        .flatten()
}

/// A size the content is known to reach: from a gzip trailer (a lower bound) or an xz index
/// (exact). `None` when the end of the source cannot be read or does not parse: the caller
/// then learns the size the usual way, by the end of the stream.
pub fn from_tail(is_xz: bool, total: u64, ranges: &mut dyn RangeFetch) -> Option<u64> {
    if is_xz {
        xz_size(total, ranges)
    } else {
        gzip_lower_bound(total, ranges)
    }
}

fn gzip_lower_bound(total: u64, ranges: &mut dyn RangeFetch) -> Option<u64> {
    // A gzip member is at least a 10-byte header and an 8-byte trailer.
    if total < 18 {
        return None;
    }
    let tail = ranges.fetch(total - 4, 4).ok()??;
    let isize: [u8; 4] = tail.as_slice().try_into().ok()?;
    Some(u32::from_le_bytes(isize).into())
}

/// The uncompressed size of a single-stream xz file, from its index; `None` unless the index
/// accounts for every byte of the file (several streams, padding, anything unexpected).
pub fn xz_size(total: u64, ranges: &mut dyn RangeFetch) -> Option<u64> {
    if total < XZ_HEADER_LEN + XZ_FOOTER_LEN + 8 {
        return None;
    }
    let footer = ranges.fetch(total - XZ_FOOTER_LEN, XZ_FOOTER_LEN).ok()??;
    let index_len = xz_index_len(&footer)?;
    if index_len > MAX_XZ_INDEX || index_len > total - XZ_HEADER_LEN - XZ_FOOTER_LEN {
        return None;
    }
    let index_at = total - XZ_FOOTER_LEN - index_len;
    let index = ranges.fetch(index_at, index_len).ok()??;
    if index.len() as u64 != index_len {
        return None;
    }
    let (blocks_len, uncompressed) = parse_xz_index(&index)?;
    (XZ_HEADER_LEN + blocks_len == index_at).then_some(uncompressed)
}

/// The index size recorded in an xz stream footer ("Backward Size"), checked by its CRC32.
fn xz_index_len(footer: &[u8]) -> Option<u64> {
    if footer.len() != XZ_FOOTER_LEN as usize || &footer[10..12] != b"YZ" {
        return None;
    }
    let stored_crc = u32::from_le_bytes(footer[0..4].try_into().ok()?);
    if crc32(&footer[4..10]) != stored_crc {
        return None;
    }
    let backward = u32::from_le_bytes(footer[4..8].try_into().ok()?);
    Some((u64::from(backward) + 1) * 4)
}

/// Sums an xz index: (bytes the blocks take in the file, uncompressed bytes). Checks the index
/// indicator, padding and CRC32.
fn parse_xz_index(index: &[u8]) -> Option<(u64, u64)> {
    if index.len() < 8 || index[0] != 0 {
        return None;
    }
    let body_len = index.len() - 4;
    let stored_crc = u32::from_le_bytes(index[body_len..].try_into().ok()?);
    if crc32(&index[..body_len]) != stored_crc {
        return None;
    }
    let mut pos = 1;
    let records = read_varint(index, &mut pos, body_len)?;
    let (mut blocks_len, mut uncompressed) = (0u64, 0u64);
    for _ in 0..records {
        let unpadded = read_varint(index, &mut pos, body_len)?;
        let size = read_varint(index, &mut pos, body_len)?;
        // Each block is padded to a multiple of four bytes in the file.
        blocks_len = blocks_len.checked_add(unpadded.checked_add(3)? & !3)?;
        uncompressed = uncompressed.checked_add(size)?;
    }
    // Index padding: zero bytes up to the CRC, fewer than four.
    let padding = &index[pos..body_len];
    (padding.len() < 4 && padding.iter().all(|&b| b == 0)).then_some((blocks_len, uncompressed))
}

/// xz's multibyte integer: 7 bits per byte, least significant first, at most 9 bytes.
fn read_varint(buf: &[u8], pos: &mut usize, end: usize) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        if *pos >= end {
            return None;
        }
        let byte = buf[*pos];
        *pos += 1;
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A multi-byte encoding may not end in a zero byte (it would be non-minimal).
            return (i == 0 || byte != 0).then_some(value);
        }
    }
    None
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Result;
    use std::io::Write;

    struct InMemory(Vec<u8>, u32);

    impl RangeFetch for InMemory {
        fn fetch(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
            self.1 += 1;
            let (a, b) = (offset as usize, (offset + len) as usize);
            Ok(Some(self.0[a..b].to_vec()))
        }
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 0);
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn xz_index_gives_the_size() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let file = xz(&data);
        let mut src = InMemory(file.clone(), 0);
        assert_eq!(
            xz_size(file.len() as u64, &mut src),
            Some(data.len() as u64)
        );
        assert_eq!(src.1, 2, "footer, then index");
    }

    #[test]
    fn xz_unexpected_tails_give_no_size() {
        let file = xz(b"hello world");
        // Two streams: the index covers only the last one.
        let two = [file.clone(), file.clone()].concat();
        assert_eq!(
            xz_size(two.len() as u64, &mut InMemory(two.clone(), 0)),
            None
        );
        // Stream padding after the footer.
        let padded = [file.clone(), vec![0; 4]].concat();
        assert_eq!(xz_size(padded.len() as u64, &mut InMemory(padded, 0)), None);
        // A flipped bit in the index fails its CRC.
        let mut bad = file.clone();
        let n = bad.len();
        bad[n - 14] ^= 1;
        assert_eq!(xz_size(n as u64, &mut InMemory(bad, 0)), None);
        // Not xz at all.
        let junk = vec![7u8; 100];
        assert_eq!(xz_size(100, &mut InMemory(junk, 0)), None);
    }

    #[test]
    fn gzip_trailer_is_a_lower_bound() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[5u8; 70_000]).unwrap();
        let file = enc.finish().unwrap();
        let n = file.len() as u64;
        assert_eq!(from_tail(false, n, &mut InMemory(file, 0)), Some(70_000));
    }

    #[test]
    fn varints() {
        let mut pos = 0;
        assert_eq!(read_varint(&[0x80, 0x01], &mut pos, 2), Some(128));
        let mut pos = 0;
        assert_eq!(read_varint(&[0x80, 0x00], &mut pos, 2), None, "non-minimal");
        let mut pos = 0;
        assert_eq!(read_varint(&[0xff; 10], &mut pos, 10), None, "too long");
    }
}
