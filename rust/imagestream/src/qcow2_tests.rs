//! Unit tests of the streaming decoder on small qcow2 images built here byte by byte, in the
//! layouts that matter: tables before data, tables after data, packed compressed clusters.

use std::io::Write;

use super::*;
use crate::error::ErrorKind;

const CS: u64 = 4096;

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    TablesFirst,
    TablesLast,
}

enum Cluster {
    Data(Vec<u8>),
    Zlib(Vec<u8>),
    Zero,
}

/// Builds a v3 image with `CS`-byte clusters and one L2 table.
fn build(vsize: u64, clusters: &[(u64, Cluster)], layout: Layout) -> (Vec<u8>, Vec<u8>) {
    let mut expected = vec![0u8; vsize as usize];
    let mut file = vec![0u8; (2 * CS) as usize]; // header cluster, L1 cluster
    let mut l2 = vec![0u8; CS as usize];
    let place_l2 = |file: &mut Vec<u8>| {
        let off = file.len() as u64;
        file.extend_from_slice(&vec![0u8; CS as usize]);
        off
    };
    let l2_off = if layout == Layout::TablesFirst {
        place_l2(&mut file)
    } else {
        0
    };
    let mut packed: Vec<(usize, u64)> = Vec::new(); // (l2 index, descriptor) for compressed
    for (index, c) in clusters {
        let guest = index * CS;
        match c {
            Cluster::Data(bytes) => {
                let pad = (CS - file.len() as u64 % CS) % CS;
                file.extend_from_slice(&vec![0u8; pad as usize]);
                let off = file.len() as u64;
                file.extend_from_slice(bytes);
                expected[guest as usize..(guest + CS) as usize].copy_from_slice(bytes);
                l2[*index as usize * 8..][..8].copy_from_slice(&off.to_be_bytes());
            }
            Cluster::Zero => {
                l2[*index as usize * 8..][..8].copy_from_slice(&1u64.to_be_bytes());
            }
            Cluster::Zlib(bytes) => {
                let mut enc =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
                enc.write_all(bytes).unwrap();
                let comp = enc.finish().unwrap();
                let off = file.len() as u64;
                file.extend_from_slice(&comp);
                let end = off + comp.len() as u64;
                let sectors = (end - 1) / 512 - off / 512; // additional sectors
                let shift = 62 - (12 - 8);
                let desc = (1u64 << 62) | (sectors << shift) | off;
                packed.push((*index as usize, desc));
                expected[guest as usize..(guest + CS) as usize].copy_from_slice(bytes);
            }
        }
    }
    for (i, desc) in packed {
        l2[i * 8..][..8].copy_from_slice(&desc.to_be_bytes());
    }
    // Pad to a cluster boundary before any table.
    let pad = (CS - file.len() as u64 % CS) % CS;
    file.extend_from_slice(&vec![0u8; pad as usize]);
    let l2_off = if layout == Layout::TablesLast {
        place_l2(&mut file)
    } else {
        l2_off
    };
    file[l2_off as usize..(l2_off + CS) as usize].copy_from_slice(&l2);
    // Header.
    let h = &mut file[..CS as usize];
    h[0..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&3u32.to_be_bytes());
    h[20..24].copy_from_slice(&12u32.to_be_bytes());
    h[24..32].copy_from_slice(&vsize.to_be_bytes());
    h[36..40].copy_from_slice(&1u32.to_be_bytes());
    h[40..48].copy_from_slice(&CS.to_be_bytes());
    h[96..100].copy_from_slice(&4u32.to_be_bytes());
    h[100..104].copy_from_slice(&104u32.to_be_bytes());
    file[CS as usize..][..8].copy_from_slice(&l2_off.to_be_bytes());
    (file, expected)
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..CS as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn sample(layout: Layout) -> (Vec<u8>, Vec<u8>) {
    build(
        40 * CS + 1024,
        &[
            (0, Cluster::Data(pattern(1))),
            (1, Cluster::Zlib(pattern(2))),
            (2, Cluster::Zlib(vec![7u8; CS as usize])),
            (3, Cluster::Zero),
            (5, Cluster::Data(pattern(3))),
            (6, Cluster::Zlib(pattern(4))),
            (9, Cluster::Data(pattern(5))),
        ],
        layout,
    )
}

#[test]
fn tables_first_any_chunking() {
    let (img, want) = sample(Layout::TablesFirst);
    for chunk in [1, 7, 512, 4096, 5000, img.len()] {
        let got = decode_in_memory(&img, chunk, 1 << 16, false, 1 << 30).unwrap();
        assert!(got == want, "chunk size {chunk}");
    }
}

#[test]
fn tables_last_held_back_within_the_bound() {
    let (img, want) = sample(Layout::TablesLast);
    for chunk in [3, 4096, img.len()] {
        let got = decode_in_memory(&img, chunk, 1 << 20, false, 1 << 30).unwrap();
        assert!(got == want, "chunk size {chunk}");
    }
}

#[test]
fn tables_last_beyond_the_bound_needs_ranges() {
    let (img, want) = sample(Layout::TablesLast);
    let err = decode_in_memory(&img, 512, 1024, false, 1 << 30).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Layout);
    let got = decode_in_memory(&img, 512, 1024, true, 1 << 30).unwrap();
    assert!(got == want);
}

#[test]
fn truncated_stream() {
    let (img, _) = sample(Layout::TablesFirst);
    let cut = &img[..img.len() - 100];
    // In memory the length is known, so the tables point past the end.
    let err = decode_in_memory(cut, 4096, 1 << 16, false, 1 << 30).unwrap_err();
    assert!(
        matches!(err.kind, ErrorKind::Corrupt | ErrorKind::Truncated),
        "{err}"
    );
}

#[test]
fn entry_overlapping_metadata() {
    let (mut img, _) = sample(Layout::TablesFirst);
    let l2 = u64::from_be_bytes(img[CS as usize..][..8].try_into().unwrap()) as usize;
    img[l2..l2 + 8].copy_from_slice(&CS.to_be_bytes()); // cluster 0 -> the L1 table
    let err = decode_in_memory(&img, 4096, 1 << 16, false, 1 << 30).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Corrupt);
    assert!(err.message.contains("overlaps metadata"), "{err}");
}

#[test]
fn header_refusals() {
    let (img, _) = sample(Layout::TablesFirst);
    let mut backing = img.clone();
    backing[8..16].copy_from_slice(&512u64.to_be_bytes());
    assert_eq!(
        parse_header(&backing).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    let mut crypt = img.clone();
    crypt[32..36].copy_from_slice(&1u32.to_be_bytes());
    assert_eq!(
        parse_header(&crypt).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    let mut unknown = img.clone();
    unknown[72..80].copy_from_slice(&(1u64 << 20).to_be_bytes());
    assert_eq!(
        parse_header(&unknown).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    let mut external = img.clone();
    external[72..80].copy_from_slice(&4u64.to_be_bytes());
    assert_eq!(
        parse_header(&external).unwrap_err().kind,
        ErrorKind::Unsupported
    );
    let mut bits = img.clone();
    bits[20..24].copy_from_slice(&30u32.to_be_bytes());
    assert_eq!(parse_header(&bits).unwrap_err().kind, ErrorKind::Corrupt);
    assert_eq!(
        parse_header(&img[..50]).unwrap_err().kind,
        ErrorKind::Truncated
    );
    assert_eq!(
        parse_header(&img[..HEADER_PEEK]).unwrap().virtual_size,
        40 * CS + 1024
    );
}

#[test]
fn compressed_cluster_size_checks() {
    let job = |data: Vec<u8>| CompressedJob {
        guest: 0,
        out_len: CS as usize,
        cluster_size: CS as usize,
        compression: ClusterCompression::Zlib,
        data,
    };
    let deflate = |bytes: &[u8]| {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    };
    let too_big = inflate_cluster(&job(deflate(&vec![1u8; CS as usize + 10]))).unwrap_err();
    assert!(too_big.message.contains("past its cluster"), "{too_big}");
    let too_small = inflate_cluster(&job(deflate(&[1u8; 100]))).unwrap_err();
    assert!(
        too_small.message.contains("less than its cluster"),
        "{too_small}"
    );
    let mut padded = deflate(&vec![3u8; CS as usize]);
    padded.extend_from_slice(&[0xff; 300]); // sector padding after the stream is fine
    assert_eq!(
        inflate_cluster(&job(padded)).unwrap(),
        vec![3u8; CS as usize]
    );
    let zstd_job = CompressedJob {
        compression: ClusterCompression::Zstd,
        ..job(zstd::bulk::compress(&vec![9u8; CS as usize], 3).unwrap())
    };
    assert_eq!(inflate_cluster(&zstd_job).unwrap(), vec![9u8; CS as usize]);
    let zstd_big = CompressedJob {
        compression: ClusterCompression::Zstd,
        ..job(zstd::bulk::compress(&vec![9u8; 2 * CS as usize], 3).unwrap())
    };
    assert!(inflate_cluster(&zstd_big)
        .unwrap_err()
        .message
        .contains("past its cluster"));
}

#[test]
fn garbage_never_panics() {
    // A cheap deterministic sweep; the fuzz target does this properly.
    let (img, _) = sample(Layout::TablesLast);
    let mut state = 0x1234_5678_u64;
    for _ in 0..300 {
        let mut m = img.clone();
        for _ in 0..8 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (state >> 33) as usize % m.len();
            m[at] = (state >> 17) as u8;
        }
        let _ = decode_in_memory(&m, 777, 4096, state & 1 == 0, 1 << 24);
    }
}

#[test]
fn fuzz_regressions() {
    // Inputs the fuzz target once crashed on (two steering bytes, then the image).
    let cases: &[&[u8]] = &[include_bytes!(
        "../fuzz/regressions/refcount-table-offset-overflow"
    )];
    for case in cases {
        let chunk = 1 + usize::from(case[0]) * 61;
        for ranges in [false, true] {
            let err = decode_in_memory(&case[2..], chunk, 1 << 16, ranges, 8 << 20);
            assert!(err.is_err());
        }
    }
}
