//! Checksums over the bytes as downloaded: md5, sha256, sha512, chosen explicitly or by the
//! length of the expected hex digest; the expected value may come from a checksum file.

use digest::Digest;

use crate::error::{checksum, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    /// `auto` picks by digest length; anything else must name an algorithm.
    pub fn parse(name: &str, hex: &str) -> Result<Algorithm> {
        let by_len = match hex.len() {
            32 => Some(Algorithm::Md5),
            64 => Some(Algorithm::Sha256),
            128 => Some(Algorithm::Sha512),
            _ => None,
        };
        let algo = match name.to_ascii_lowercase().as_str() {
            "auto" | "" => by_len.ok_or_else(|| {
                checksum(format!(
                    "cannot tell the checksum type from a {}-character digest",
                    hex.len()
                ))
            })?,
            "md5" => Algorithm::Md5,
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            other => {
                return Err(checksum(format!(
                    "unknown checksum type {other:?} (md5, sha256, sha512 or auto)"
                )))
            }
        };
        if hex.len() != algo.hex_len() || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(checksum(format!(
                "expected checksum is not a {} hex digest ({} characters)",
                algo.name(),
                algo.hex_len()
            )));
        }
        Ok(algo)
    }
}

/// A running hash of one of the supported algorithms.
pub enum Hasher {
    Md5(md5::Md5),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algo: Algorithm) -> Hasher {
        match algo {
            Algorithm::Md5 => Hasher::Md5(md5::Md5::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn hex(self) -> String {
        let bytes = match self {
            Hasher::Md5(h) => h.finalize().to_vec(),
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::Sha512(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Picks the digest for `image_name` out of a checksum file: lines `<hex>  <name>` (or
/// `<hex> *<name>`, or BSD `ALGO (name) = <hex>`); a file with a single digest line matches any name.
pub fn digest_from_file(text: &str, image_name: &str) -> Result<String> {
    let mut lines: Vec<(String, Option<String>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((left, hex)) = line.split_once(") = ") {
            if let Some((_, name)) = left.split_once(" (") {
                lines.push((hex.trim().to_string(), Some(name.to_string())));
                continue;
            }
        }
        let mut parts = line.splitn(2, char::is_whitespace);
        let hex = parts.next().unwrap_or_default().to_string();
        let name = parts
            .next()
            .map(|n| n.trim_start().trim_start_matches('*').to_string())
            .filter(|n| !n.is_empty());
        lines.push((hex, name));
    }
    let base = |n: &str| n.rsplit('/').next().unwrap_or(n).to_string();
    if let Some((hex, _)) = lines
        .iter()
        .find(|(_, n)| n.as_deref().map(base).as_deref() == Some(image_name))
    {
        return Ok(hex.to_ascii_lowercase());
    }
    if lines.len() == 1 {
        return Ok(lines[0].0.to_ascii_lowercase());
    }
    Err(checksum(format!(
        "checksum file has no line for {image_name:?} ({} lines)",
        lines.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_by_length() {
        assert_eq!(
            Algorithm::parse("auto", &"a".repeat(32)).unwrap(),
            Algorithm::Md5
        );
        assert_eq!(
            Algorithm::parse("auto", &"a".repeat(64)).unwrap(),
            Algorithm::Sha256
        );
        assert_eq!(
            Algorithm::parse("auto", &"a".repeat(128)).unwrap(),
            Algorithm::Sha512
        );
        assert!(Algorithm::parse("auto", "abc").is_err());
        assert!(Algorithm::parse("sha256", &"a".repeat(32)).is_err());
        assert!(Algorithm::parse("sha256", &"g".repeat(64)).is_err());
        assert!(Algorithm::parse("crc32", &"a".repeat(8)).is_err());
    }

    #[test]
    fn known_digests() {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(b"abc");
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = Hasher::new(Algorithm::Md5);
        h.update(b"abc");
        assert_eq!(h.hex(), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn checksum_file_lines() {
        let text = "aaaa  other.img\nbbbb *disk.qcow2\n";
        assert_eq!(digest_from_file(text, "disk.qcow2").unwrap(), "bbbb");
        assert!(digest_from_file(text, "missing.img").is_err());
        assert_eq!(digest_from_file("CCCC\n", "x").unwrap(), "cccc");
        let bsd = "SHA256 (disk.img) = dddd\n";
        assert_eq!(digest_from_file(bsd, "disk.img").unwrap(), "dddd");
    }
}
