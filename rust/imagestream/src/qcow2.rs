//! Streaming qcow2 (v2 and v3) decoder.
//!
//! The image is read front to back once. The decoder keeps a list of byte ranges of the file it
//! still needs ("needs": the L1 table, L2 tables, data and compressed clusters) and hands every
//! range to its consumer as the stream passes it. Bytes that no known need covers are held in a
//! bounded buffer, because an L2 table further on may still place them; when that buffer would
//! overflow, the missing tables are fetched with range requests (after which every need is
//! known and unclaimed bytes can be dropped), or decoding stops with a clear error.

use std::collections::BTreeMap;

use crate::error::{corrupt, layout, truncated, unsupported, Result};
use crate::stream::{Chunk, ClusterCompression, CompressedJob, Output, RangeFetch};

pub const MAGIC: &[u8; 4] = b"QFI\xfb";
/// Bytes the header parser needs to see (v3 header with the compression type byte, padded).
pub const HEADER_PEEK: usize = 112;
const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED_FLAG: u64 = 1 << 62;
const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest piece of unclaimed bytes held before the buffer bound is checked again.
const HOLD_STEP: u64 = 1 << 20;
/// Largest virtual size accepted (qemu's own limit is far below the 2^63 of the field).
const MAX_VIRTUAL_SIZE: u64 = 1 << 56;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTL2: u64 = 1 << 4;

/// The fields of the qcow2 header that decoding needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub cluster_size: u64,
    pub virtual_size: u64,
    pub l1_size: u64,
    pub l1_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u64,
    pub compression: ClusterCompression,
    pub extended_l2: bool,
}

impl Header {
    /// Guest bytes covered by one L2 table.
    pub fn l2_coverage(&self) -> u64 {
        (self.cluster_size / self.l2_entry_size()) * self.cluster_size
    }

    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2 {
            16
        } else {
            8
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Parses and validates the header; refuses anything that cannot be written faithfully.
pub fn parse_header(b: &[u8]) -> Result<Header> {
    if b.len() < 72 {
        return Err(truncated("qcow2 header: stream ended inside the header"));
    }
    if &b[0..4] != MAGIC {
        return Err(corrupt("qcow2 header: bad magic"));
    }
    let version = be32(b, 4);
    if version != 2 && version != 3 {
        return Err(unsupported(format!(
            "qcow2 version {version} is not supported (2 and 3 are)"
        )));
    }
    let backing_offset = be64(b, 8);
    if backing_offset != 0 {
        return Err(unsupported(
            "qcow2 image has a backing file: refusing (its content depends on another image)",
        ));
    }
    let cluster_bits = be32(b, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(corrupt(format!(
            "qcow2 header: cluster_bits {cluster_bits} outside 9..21 (512 B to 2 MiB)"
        )));
    }
    let cluster_size = 1u64 << cluster_bits;
    let virtual_size = be64(b, 24);
    if virtual_size > MAX_VIRTUAL_SIZE {
        return Err(corrupt(format!(
            "qcow2 header: absurd virtual size {virtual_size}"
        )));
    }
    let crypt = be32(b, 32);
    if crypt != 0 {
        return Err(unsupported(format!(
            "qcow2 image is encrypted (crypt_method {crypt}): refusing"
        )));
    }
    let l1_size = u64::from(be32(b, 36));
    let l1_offset = be64(b, 40);
    let refcount_table_offset = be64(b, 48);
    let refcount_table_clusters = u64::from(be32(b, 56));
    let mut compression = ClusterCompression::Zlib;
    let mut extended_l2 = false;
    if version == 3 {
        if b.len() < 104 {
            return Err(truncated("qcow2 header: stream ended inside the v3 header"));
        }
        let incompat = be64(b, 72);
        let header_length = be32(b, 100);
        if header_length < 104 || u64::from(header_length) > cluster_size {
            return Err(corrupt(format!(
                "qcow2 header: bad header_length {header_length}"
            )));
        }
        if incompat & INCOMPAT_CORRUPT != 0 {
            return Err(corrupt(
                "qcow2 image is marked corrupt (incompatible bit 1): refusing",
            ));
        }
        if incompat & INCOMPAT_DATA_FILE != 0 {
            return Err(unsupported(
                "qcow2 image keeps its data in an external data file: refusing",
            ));
        }
        let known = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE;
        let known = known | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
        if incompat & !known != 0 {
            return Err(unsupported(format!(
                "qcow2 image uses unknown incompatible features {:#x}: refusing",
                incompat & !known
            )));
        }
        if incompat & INCOMPAT_COMPRESSION != 0 {
            if header_length < 105 || b.len() < 105 {
                return Err(corrupt(
                    "qcow2 header: compression type bit set but field missing",
                ));
            }
            compression = match b[104] {
                0 => ClusterCompression::Zlib,
                1 => ClusterCompression::Zstd,
                other => {
                    return Err(unsupported(format!(
                        "qcow2 compression type {other} is not supported (zlib and zstd are)"
                    )))
                }
            };
        } else if header_length >= 105 && b.len() >= 105 && b[104] != 0 {
            return Err(corrupt(
                "qcow2 header: compression type set without its feature bit",
            ));
        }
        extended_l2 = incompat & INCOMPAT_EXTL2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(corrupt(
                "qcow2 header: extended L2 entries need clusters of 16 KiB or more",
            ));
        }
    }
    let h = Header {
        version,
        cluster_bits,
        cluster_size,
        virtual_size,
        l1_size,
        l1_offset,
        refcount_table_offset,
        refcount_table_clusters,
        compression,
        extended_l2,
    };
    let needed_l1 = virtual_size.div_ceil(h.l2_coverage());
    if l1_size < needed_l1 {
        return Err(corrupt(format!(
            "qcow2 header: L1 table of {l1_size} entries cannot map the virtual size ({needed_l1} needed)"
        )));
    }
    if l1_size * 8 > MAX_L1_BYTES {
        return Err(corrupt(format!("qcow2 header: absurd L1 size {l1_size}")));
    }
    if needed_l1 > 0 && (l1_offset == 0 || l1_offset % cluster_size != 0) {
        return Err(corrupt(format!(
            "qcow2 header: L1 table offset {l1_offset:#x} invalid"
        )));
    }
    if l1_offset > MAX_VIRTUAL_SIZE {
        return Err(corrupt(format!(
            "qcow2 header: L1 table offset {l1_offset:#x} absurd"
        )));
    }
    Ok(h)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Metadata we pass over (header cluster, refcount table).
    Skip,
    L1,
    L2 {
        index: u64,
    },
    Data {
        guest: u64,
    },
    Compressed {
        guest: u64,
        out_len: usize,
    },
}

#[derive(Debug)]
struct Need {
    start: u64,
    len: u64,
    kind: Kind,
    acc: Vec<u8>,
}

impl Need {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Counters useful to tests and benchmarks.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub range_requests: u64,
    pub peak_buffered: u64,
}

/// The streaming decoder: feed it the file in order, then call `finish`.
pub struct Decoder {
    h: Header,
    total_len: Option<u64>,
    max_buffer: u64,
    pos: u64,
    seq: u64,
    pending: BTreeMap<(u64, u64), Need>,
    active: Vec<Need>,
    buffer: BTreeMap<u64, Vec<u8>>,
    buffered: u64,
    meta: BTreeMap<u64, u64>,
    l1_done: bool,
    l2_outstanding: u64,
    all_known: bool,
    zero_run: Option<(u64, u64)>,
    pub stats: Stats,
}

impl Decoder {
    /// `header` is the start of the file (at least `HEADER_PEEK` bytes unless the file is
    /// shorter); `total_len` the file length when known; `max_buffer` the bound on held bytes.
    pub fn new(header: &[u8], total_len: Option<u64>, max_buffer: u64) -> Result<Decoder> {
        let h = parse_header(header)?;
        let mut d = Decoder {
            h,
            total_len,
            max_buffer,
            pos: 0,
            seq: 0,
            pending: BTreeMap::new(),
            active: Vec::new(),
            buffer: BTreeMap::new(),
            buffered: 0,
            meta: BTreeMap::new(),
            l1_done: false,
            l2_outstanding: 0,
            all_known: false,
            zero_run: None,
            stats: Stats::default(),
        };
        let cs = d.h.cluster_size;
        d.add_meta(0, cs, "header")?;
        d.queue(0, cs, Kind::Skip);
        let rt = d.h.refcount_table_offset;
        if d.h.refcount_table_clusters > 0 && rt >= cs && rt % cs == 0 && rt <= MAX_VIRTUAL_SIZE {
            let len = d.h.refcount_table_clusters.saturating_mul(cs);
            if len <= MAX_L1_BYTES && d.add_meta(d.h.refcount_table_offset, len, "").is_ok() {
                d.queue(d.h.refcount_table_offset, len, Kind::Skip);
            }
        }
        let l1_len = d.h.l1_size * 8;
        if l1_len == 0 {
            d.l1_done = true;
            d.all_known = true;
            // A zero-length image (or an empty L1) reads as zeros throughout.
        } else {
            d.add_meta(d.h.l1_offset, l1_len, "L1 table")?;
            d.check_in_file(d.h.l1_offset, l1_len, "L1 table")?;
            d.queue(d.h.l1_offset, l1_len, Kind::L1);
        }
        Ok(d)
    }

    pub fn header(&self) -> &Header {
        &self.h
    }

    fn queue(&mut self, start: u64, len: u64, kind: Kind) {
        self.seq += 1;
        let need = Need {
            start,
            len,
            kind,
            acc: Vec::new(),
        };
        self.pending.insert((start, self.seq), need);
    }

    /// Records a metadata range; overlapping another one means a corrupt image.
    fn add_meta(&mut self, start: u64, len: u64, what: &str) -> Result<()> {
        let end = start
            .checked_add(len)
            .filter(|&e| e <= MAX_VIRTUAL_SIZE)
            .ok_or_else(|| {
                corrupt(format!(
                    "qcow2: {what} at {start:#x} lies at an absurd offset"
                ))
            })?;
        if self.overlaps_meta(start, end) {
            return Err(corrupt(format!(
                "qcow2: {what} at {start:#x}..{end:#x} overlaps other metadata"
            )));
        }
        self.meta.insert(start, end);
        Ok(())
    }

    fn overlaps_meta(&self, start: u64, end: u64) -> bool {
        match self.meta.range(..end).next_back() {
            Some((_, &e)) => e > start,
            None => false,
        }
    }

    fn check_in_file(&self, start: u64, len: u64, what: &str) -> Result<()> {
        if let Some(total) = self.total_len {
            if start.saturating_add(len) > total {
                return Err(corrupt(format!(
                    "qcow2: {what} at {start:#x}..{:#x} points past the end of the file ({total} bytes)",
                    start.saturating_add(len)
                )));
            }
        }
        Ok(())
    }

    fn zero(&mut self, out: &mut dyn Output, guest: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        match self.zero_run {
            Some((s, l)) if s + l == guest => self.zero_run = Some((s, l + len)),
            Some((s, l)) => {
                out.zero(s, l)?;
                self.zero_run = Some((guest, len));
            }
            None => self.zero_run = Some((guest, len)),
        }
        Ok(())
    }

    /// Keeps unclaimed bytes (behind `pos`) while some table may still claim them.
    fn buffer_push(&mut self, start: u64, bytes: &[u8]) {
        if self.all_known || bytes.is_empty() {
            return;
        }
        if let Some((&s, last)) = self.buffer.iter_mut().next_back() {
            if s + last.len() as u64 == start {
                last.extend_from_slice(bytes);
                self.buffered += bytes.len() as u64;
                self.stats.peak_buffered = self.stats.peak_buffered.max(self.buffered);
                return;
            }
            if s + last.len() as u64 > start {
                // Already held (a retained compressed tail); keep only the new part.
                let skip = (s + last.len() as u64 - start).min(bytes.len() as u64) as usize;
                let rest = &bytes[skip..];
                last.extend_from_slice(rest);
                self.buffered += rest.len() as u64;
                self.stats.peak_buffered = self.stats.peak_buffered.max(self.buffered);
                return;
            }
        }
        self.buffer.insert(start, bytes.to_vec());
        self.buffered += bytes.len() as u64;
        self.stats.peak_buffered = self.stats.peak_buffered.max(self.buffered);
    }

    /// Copies `start..start+len` out of the held bytes, if all of it is there.
    fn buffer_read(&self, start: u64, len: u64) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(len as usize);
        let end = start + len;
        let mut at = start;
        let first = self.buffer.range(..=start).next_back().map(|(&k, _)| k)?;
        for (&s, v) in self.buffer.range(first..) {
            if at >= end {
                break;
            }
            let e = s + v.len() as u64;
            if s > at {
                return None;
            }
            if e <= at {
                continue;
            }
            let take_end = e.min(end);
            out.extend_from_slice(&v[(at - s) as usize..(take_end - s) as usize]);
            at = take_end;
        }
        (at >= end).then_some(out)
    }

    fn mark_known_if_done(&mut self) {
        if self.l1_done && self.l2_outstanding == 0 && !self.all_known {
            self.all_known = true;
            self.buffer.clear();
            self.buffered = 0;
        }
    }

    /// Registers a need discovered in a table: behind the stream position it is served from
    /// the held bytes at once, ahead of it it waits for the stream.
    fn register(
        &mut self,
        start: u64,
        len: u64,
        kind: Kind,
        out: &mut dyn Output,
        fetch: &mut dyn RangeFetch,
    ) -> Result<()> {
        if start >= self.pos {
            self.queue(start, len, kind);
            return Ok(());
        }
        let behind = (self.pos - start).min(len);
        let held = self.buffer_read(start, behind).ok_or_else(|| {
            corrupt(format!(
                "qcow2: range {start:#x}..{:#x} ({}) overlaps bytes already used as metadata or other data",
                start + len,
                kind_name(kind)
            ))
        })?;
        if behind == len {
            let mut need = Need {
                start,
                len,
                kind,
                acc: Vec::new(),
            };
            match kind {
                Kind::Data { guest } => out.owned(guest, held)?,
                Kind::Skip => {}
                _ => {
                    need.acc = held;
                    self.complete(need, out, fetch)?;
                }
            }
            return Ok(());
        }
        match kind {
            Kind::Data { guest } => {
                out.owned(guest, held)?;
                self.queue(
                    self.pos,
                    len - behind,
                    Kind::Data {
                        guest: guest + behind,
                    },
                );
            }
            Kind::Skip => self.queue(self.pos, len - behind, Kind::Skip),
            _ => self.active.push(Need {
                start,
                len,
                kind,
                acc: held,
            }),
        }
        Ok(())
    }

    /// Consumes the next piece of the stream.
    pub fn feed(
        &mut self,
        chunk: &Chunk,
        out: &mut dyn Output,
        fetch: &mut dyn RangeFetch,
    ) -> Result<()> {
        let base = self.pos;
        let end = base + chunk.len() as u64;
        while self.pos < end {
            while let Some(entry) = self.pending.first_entry() {
                if entry.key().0 > self.pos {
                    break;
                }
                let need = entry.remove();
                if need.len == 0 {
                    continue;
                }
                self.active.push(need);
            }
            let mut stop = end;
            if let Some((&(s, _), _)) = self.pending.first_key_value() {
                stop = stop.min(s);
            }
            for n in &self.active {
                stop = stop.min(n.end());
            }
            if self.active.is_empty() && !self.all_known {
                // Bytes about to be held: in steps, so the bound is checked at least every
                // `HOLD_STEP` bytes whatever the size of the pieces fed in.
                stop = stop.min(self.pos + HOLD_STEP);
            }
            let seg = (self.pos - base) as usize..(stop - base) as usize;
            if self.active.is_empty() {
                let pos = self.pos;
                self.buffer_push(pos, &chunk[seg]);
            } else {
                for n in &mut self.active {
                    match n.kind {
                        Kind::Data { guest } => {
                            out.data(guest + (self.pos - n.start), chunk, seg.clone())?
                        }
                        Kind::Skip => {}
                        _ => n.acc.extend_from_slice(&chunk[seg.clone()]),
                    }
                }
            }
            self.pos = stop;
            let mut i = 0;
            while i < self.active.len() {
                if self.active[i].end() == self.pos {
                    let need = self.active.swap_remove(i);
                    self.complete(need, out, fetch)?;
                } else {
                    i += 1;
                }
            }
            if self.buffered > self.max_buffer {
                self.resolve_with_ranges(out, fetch)?;
            }
        }
        Ok(())
    }

    fn complete(
        &mut self,
        need: Need,
        out: &mut dyn Output,
        fetch: &mut dyn RangeFetch,
    ) -> Result<()> {
        match need.kind {
            Kind::Skip | Kind::Data { .. } => Ok(()),
            Kind::L1 => self.complete_l1(&need.acc, out, fetch),
            Kind::L2 { index } => self.complete_l2(index, &need.acc, out, fetch),
            Kind::Compressed { guest, out_len } => {
                let end = need.end();
                if !self.all_known && end == self.pos {
                    // The last sector may be shared with a cluster whose L2 entry is not known
                    // yet; keep it unless a known need already starts inside it.
                    let successor = self
                        .active
                        .iter()
                        .any(|n| n.start > need.start && n.start < end);
                    if !successor {
                        let keep = need.acc.len().min(512);
                        let from = need.acc.len() - keep;
                        self.buffer_push(end - keep as u64, &need.acc[from..]);
                    }
                }
                out.compressed(CompressedJob {
                    guest,
                    out_len,
                    cluster_size: self.h.cluster_size as usize,
                    compression: self.h.compression,
                    data: need.acc,
                })
            }
        }
    }

    fn complete_l1(
        &mut self,
        table: &[u8],
        out: &mut dyn Output,
        fetch: &mut dyn RangeFetch,
    ) -> Result<()> {
        let cover = self.h.l2_coverage();
        let cs = self.h.cluster_size;
        let vsize = self.h.virtual_size;
        let mut tables = Vec::new();
        for i in 0..self.h.l1_size {
            let guest = i * cover;
            if guest >= vsize {
                break;
            }
            let e = be64(table, (i * 8) as usize);
            if e & 0x7f00_0000_0000_01ff != 0 {
                return Err(corrupt(format!(
                    "qcow2: L1 entry {i} has reserved bits set ({e:#x})"
                )));
            }
            let off = e & L1_OFFSET_MASK;
            if off == 0 {
                self.zero(out, guest, cover.min(vsize - guest))?;
                continue;
            }
            if off % cs != 0 {
                return Err(corrupt(format!(
                    "qcow2: L1 entry {i} points to an unaligned L2 table ({off:#x})"
                )));
            }
            self.add_meta(off, cs, &format!("L2 table of L1 entry {i}"))?;
            self.check_in_file(off, cs, &format!("L2 table of L1 entry {i}"))?;
            tables.push((off, i));
        }
        self.l1_done = true;
        self.l2_outstanding = tables.len() as u64;
        for (off, index) in tables {
            self.register(off, cs, Kind::L2 { index }, out, fetch)?;
        }
        self.mark_known_if_done();
        Ok(())
    }

    fn complete_l2(
        &mut self,
        index: u64,
        table: &[u8],
        out: &mut dyn Output,
        fetch: &mut dyn RangeFetch,
    ) -> Result<()> {
        let cs = self.h.cluster_size;
        let vsize = self.h.virtual_size;
        let esize = self.h.l2_entry_size();
        let entries = cs / esize;
        let base = index * self.h.l2_coverage();
        for j in 0..entries {
            let guest = base + j * cs;
            if guest >= vsize {
                break;
            }
            let clen = cs.min(vsize - guest);
            let at = (j * esize) as usize;
            let e = be64(table, at);
            let what = || format!("guest cluster at {guest:#x}");
            if e & COMPRESSED_FLAG != 0 {
                let shift = 62 - (self.h.cluster_bits - 8);
                let coff = e & ((1u64 << shift) - 1);
                let sectors = ((e >> shift) & ((1u64 << (self.h.cluster_bits - 8)) - 1)) + 1;
                let mut csize = sectors * 512 - (coff & 511);
                if coff < cs {
                    return Err(corrupt(format!(
                        "qcow2: compressed {} points into the header",
                        what()
                    )));
                }
                if self.overlaps_meta(coff, coff + csize) {
                    return Err(corrupt(format!(
                        "qcow2: compressed {} at {coff:#x} overlaps metadata",
                        what()
                    )));
                }
                if let Some(total) = self.total_len {
                    if coff >= total {
                        return Err(corrupt(format!(
                            "qcow2: compressed {} at {coff:#x} points past the end of the file ({total} bytes)",
                            what()
                        )));
                    }
                    // The size is an upper bound; the file may end before it.
                    csize = csize.min(total - coff);
                }
                let kind = Kind::Compressed {
                    guest,
                    out_len: clen as usize,
                };
                self.register(coff, csize, kind, out, fetch)?;
                continue;
            }
            let off = e & L2_OFFSET_MASK;
            if !self.h.extended_l2 {
                let zero_flag = self.h.version >= 3 && e & 1 != 0;
                if zero_flag || off == 0 {
                    self.zero(out, guest, clen)?;
                    continue;
                }
                self.data_need(off, clen, guest, out, fetch)?;
                continue;
            }
            let bitmap = be64(table, at + 8);
            let alloc = bitmap & 0xffff_ffff;
            let zeros = bitmap >> 32;
            if alloc & zeros != 0 {
                return Err(corrupt(format!(
                    "qcow2: {} has subclusters both allocated and zero",
                    what()
                )));
            }
            if alloc != 0 && off == 0 {
                return Err(corrupt(format!(
                    "qcow2: {} has allocated subclusters but no host cluster",
                    what()
                )));
            }
            let sc = cs / 32;
            let mut k = 0u64;
            while k < 32 {
                let g = guest + k * sc;
                if g >= vsize {
                    break;
                }
                let is_alloc = alloc >> k & 1 == 1;
                let mut run = 1;
                while k + run < 32 && (alloc >> (k + run) & 1 == 1) == is_alloc {
                    run += 1;
                }
                let l = (run * sc).min(vsize - g);
                if is_alloc {
                    self.data_need(off + k * sc, l, g, out, fetch)?;
                } else {
                    self.zero(out, g, l)?;
                }
                k += run;
            }
        }
        self.l2_outstanding -= 1;
        self.mark_known_if_done();
        Ok(())
    }

    fn data_need(
        &mut self,
        off: u64,
        len: u64,
        guest: u64,
        out: &mut dyn Output,
        fetch: &mut dyn RangeFetch,
    ) -> Result<()> {
        if off % 512 != 0 || off < self.h.cluster_size {
            return Err(corrupt(format!(
                "qcow2: guest cluster at {guest:#x} points to an invalid host offset {off:#x}"
            )));
        }
        if self.overlaps_meta(off, off + len) {
            return Err(corrupt(format!(
                "qcow2: guest cluster at {guest:#x} (host {off:#x}) overlaps metadata"
            )));
        }
        self.check_in_file(off, len, &format!("guest cluster at {guest:#x}"))?;
        self.register(off, len, Kind::Data { guest }, out, fetch)
    }

    /// The held bytes outgrew their bound: read the tables that are still missing with range
    /// requests; afterwards every need is known and nothing needs holding any more.
    fn resolve_with_ranges(
        &mut self,
        out: &mut dyn Output,
        fetch: &mut dyn RangeFetch,
    ) -> Result<()> {
        let cs = self.h.cluster_size;
        if !self.l1_done {
            let need = self.take_need(|k| k == Kind::L1);
            let (start, len) =
                need.map_or((self.h.l1_offset, self.h.l1_size * 8), |n| (n.start, n.len));
            let bytes = self.fetch_or_fail(fetch, start, len)?;
            self.complete_l1(&bytes, out, fetch)?;
        }
        let mut tables = Vec::new();
        while let Some(n) = self.take_need(|k| matches!(k, Kind::L2 { .. })) {
            if let Kind::L2 { index } = n.kind {
                tables.push((n.start, index));
            }
        }
        tables.sort_unstable();
        // Coalesce neighbouring tables into one request when the gap between them is small.
        let mut i = 0;
        while i < tables.len() {
            let first = tables[i].0;
            let mut j = i + 1;
            while j < tables.len()
                && tables[j].0 - (tables[j - 1].0 + cs) <= 64 * 1024
                && tables[j].0 + cs - first <= 8 << 20
            {
                j += 1;
            }
            let last_end = tables[j - 1].0 + cs;
            let bytes = self.fetch_or_fail(fetch, first, last_end - first)?;
            for &(off, index) in &tables[i..j] {
                let at = (off - first) as usize;
                self.complete_l2(index, &bytes[at..at + cs as usize], out, fetch)?;
            }
            i = j;
        }
        self.mark_known_if_done();
        Ok(())
    }

    fn take_need(&mut self, pred: impl Fn(Kind) -> bool) -> Option<Need> {
        if let Some(i) = self.active.iter().position(|n| pred(n.kind)) {
            return Some(self.active.swap_remove(i));
        }
        let key = self
            .pending
            .iter()
            .find(|(_, n)| pred(n.kind))
            .map(|(k, _)| *k)?;
        self.pending.remove(&key)
    }

    fn fetch_or_fail(
        &mut self,
        fetch: &mut dyn RangeFetch,
        start: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        self.stats.range_requests += 1;
        match fetch.fetch(start, len)? {
            Some(b) if b.len() as u64 == len => Ok(b),
            Some(b) => Err(truncated(format!(
                "range request for {start:#x}..{:#x} returned {} bytes",
                start + len,
                b.len()
            ))),
            None => Err(layout(format!(
                "qcow2 layout needs more than {} MiB of buffering (data stored before the tables that place it) and the source does not support range requests",
                self.max_buffer >> 20
            ))),
        }
    }

    /// The stream has ended: everything still needed is an error, except compressed clusters
    /// whose (upper-bound) length ran past the end of the file.
    pub fn finish(&mut self, out: &mut dyn Output, fetch: &mut dyn RangeFetch) -> Result<()> {
        let active = std::mem::take(&mut self.active);
        for need in active {
            match need.kind {
                Kind::Compressed { .. } | Kind::Skip => self.complete(need, out, fetch)?,
                kind => {
                    return Err(truncated(format!(
                        "qcow2: stream ended at {} bytes inside the {} at {:#x}..{:#x}",
                        self.pos,
                        kind_name(kind),
                        need.start,
                        need.end()
                    )))
                }
            }
        }
        if let Some(need) = self.pending.values().find(|n| n.kind != Kind::Skip) {
            return Err(truncated(format!(
                "qcow2: stream ended at {} bytes but the {} lies at {:#x}..{:#x}",
                self.pos,
                kind_name(need.kind),
                need.start,
                need.end()
            )));
        }
        if !self.l1_done || self.l2_outstanding > 0 {
            return Err(truncated("qcow2: stream ended before all tables were read"));
        }
        if let Some((s, l)) = self.zero_run.take() {
            out.zero(s, l)?;
        }
        Ok(())
    }
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Skip => "metadata",
        Kind::L1 => "L1 table",
        Kind::L2 { .. } => "L2 table",
        Kind::Data { .. } => "data cluster",
        Kind::Compressed { .. } => "compressed cluster",
    }
}

/// Inflates one compressed cluster to exactly `cluster_size` bytes (see `Inflater`).
pub fn inflate_cluster(job: &CompressedJob) -> Result<Vec<u8>> {
    Inflater::new().inflate(job)
}

/// Decompression state kept across clusters: one per worker thread. Creating a zlib or zstd
/// context per 64 KiB cluster (window allocation and setup) costs as much as inflating it.
pub struct Inflater {
    zlib: flate2::Decompress,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
}

impl Default for Inflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Inflater {
    pub fn new() -> Inflater {
        Inflater {
            zlib: flate2::Decompress::new(false),
            zstd: None,
        }
    }

    /// Inflates one compressed cluster to exactly `cluster_size` bytes, and returns the first
    /// `out_len` of them.
    pub fn inflate(&mut self, job: &CompressedJob) -> Result<Vec<u8>> {
        let mut out = vec![0u8; job.cluster_size];
        self.inflate_into(job, &mut out)?;
        out.truncate(job.out_len);
        Ok(out)
    }

    /// Inflates one compressed cluster into `out`, which is exactly `cluster_size` bytes; an
    /// error unless the data inflates to exactly that.
    pub fn inflate_into(&mut self, job: &CompressedJob, out: &mut [u8]) -> Result<()> {
        let cs = job.cluster_size;
        debug_assert_eq!(out.len(), cs);
        let where_ = || format!("compressed cluster at guest offset {:#x}", job.guest);
        // Whether anything would come out past the cluster, found by asking for one more byte.
        let overflows = match job.compression {
            ClusterCompression::Zlib => {
                let d = &mut self.zlib;
                d.reset(false);
                let status = d
                    .decompress(&job.data, out, flate2::FlushDecompress::Finish)
                    .map_err(|e| corrupt(format!("{}: bad deflate data: {e}", where_())))?;
                let produced = d.total_out() as usize;
                if produced < cs {
                    return Err(corrupt(format!(
                        "{}: inflates to {produced} bytes, less than its cluster ({cs})",
                        where_()
                    )));
                }
                status != flate2::Status::StreamEnd && {
                    let used = d.total_in() as usize;
                    // Errors here are sector padding after a full cluster: only output counts.
                    let mut extra = [0u8; 1];
                    let _ = d.decompress(
                        &job.data[used..],
                        &mut extra,
                        flate2::FlushDecompress::Finish,
                    );
                    d.total_out() as usize > cs
                }
            }
            ClusterCompression::Zstd => {
                use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};
                let bad = |e: std::io::Error| corrupt(format!("{}: bad zstd data: {e}", where_()));
                let dec = match &mut self.zstd {
                    Some(d) => {
                        d.reinit().map_err(bad)?;
                        d
                    }
                    None => self.zstd.insert(Decoder::new().map_err(bad)?),
                };
                let mut input = InBuffer::around(&job.data);
                let mut output = OutBuffer::around(out);
                let mut hint = 1;
                while hint != 0 && output.pos() < cs {
                    let before = (input.pos(), output.pos());
                    hint = dec.run(&mut input, &mut output).map_err(bad)?;
                    if (input.pos(), output.pos()) == before {
                        break;
                    }
                }
                let produced = output.pos();
                if produced < cs {
                    return Err(corrupt(format!(
                        "{}: inflates to {produced} bytes, less than its cluster ({cs})",
                        where_()
                    )));
                }
                hint != 0 && {
                    let mut extra = [0u8; 1];
                    let mut more = OutBuffer::around(&mut extra[..]);
                    dec.run(&mut input, &mut more).is_ok() && more.pos() > 0
                }
            }
        };
        if overflows {
            return Err(corrupt(format!(
                "{}: inflates past its cluster ({cs} bytes)",
                where_()
            )));
        }
        Ok(())
    }
}

/// Decodes a whole qcow2 image held in memory into its raw content, feeding it in pieces of
/// `chunk` bytes. For tests and fuzzing: it checks every write lies inside the virtual size
/// and refuses images whose virtual size exceeds `max_virtual`.
pub fn decode_in_memory(
    image: &[u8],
    chunk: usize,
    max_buffer: u64,
    with_ranges: bool,
    max_virtual: u64,
) -> Result<Vec<u8>> {
    struct Mem {
        disk: Vec<u8>,
    }
    impl Mem {
        fn put(&mut self, guest: u64, bytes: &[u8]) -> Result<()> {
            let end = guest
                .checked_add(bytes.len() as u64)
                .filter(|&e| e <= self.disk.len() as u64)
                .ok_or_else(|| corrupt("write past the virtual size"))?;
            self.disk[guest as usize..end as usize].copy_from_slice(bytes);
            Ok(())
        }
    }
    impl Output for Mem {
        fn data(&mut self, guest: u64, chunk: &Chunk, range: std::ops::Range<usize>) -> Result<()> {
            self.put(guest, &chunk[range])
        }
        fn owned(&mut self, guest: u64, data: Vec<u8>) -> Result<()> {
            self.put(guest, &data)
        }
        fn compressed(&mut self, job: CompressedJob) -> Result<()> {
            let data = inflate_cluster(&job)?;
            self.put(job.guest, &data)
        }
        fn zero(&mut self, guest: u64, len: u64) -> Result<()> {
            let len = usize::try_from(len).map_err(|_| corrupt("zero range too long"))?;
            self.put(guest, &vec![0u8; len])
        }
    }
    struct Slice<'a>(&'a [u8]);
    impl RangeFetch for Slice<'_> {
        fn fetch(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
            let start = (offset as usize).min(self.0.len());
            let end = (offset.saturating_add(len) as usize).min(self.0.len());
            Ok(Some(self.0[start..end].to_vec()))
        }
    }
    let head = &image[..image.len().min(HEADER_PEEK)];
    let mut dec = Decoder::new(head, Some(image.len() as u64), max_buffer)?;
    let vsize = dec.header().virtual_size;
    if vsize > max_virtual {
        return Err(crate::error::invalid(
            "virtual size above the in-memory limit",
        ));
    }
    // Filled with a marker so that regions nobody wrote show up in comparisons.
    let mut out = Mem {
        disk: vec![0xa5; vsize as usize],
    };
    let mut slice = Slice(image);
    let mut none = crate::stream::NoRanges;
    let fetch: &mut dyn RangeFetch = if with_ranges { &mut slice } else { &mut none };
    for piece in image.chunks(chunk.max(1)) {
        dec.feed(
            &std::sync::Arc::new(crate::stream::Block::from_vec(piece.to_vec())),
            &mut out,
            fetch,
        )?;
    }
    dec.finish(&mut out, fetch)?;
    Ok(out.disk)
}

#[cfg(test)]
#[path = "qcow2_tests.rs"]
mod tests;
