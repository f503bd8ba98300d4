//! Where the image comes from: a local file or an `http(s)://` URL (one streaming GET, plus
//! small range requests only when a layout needs them).
//!
//! HTTP goes through `ureq` on `rustls`: a small blocking client (the pipeline runs on its own
//! threads, so an async runtime would only add weight) with a memory-safe TLS stack that takes
//! system roots, an explicit CA bundle, or no verification when asked.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::error::{invalid, source, Result};
use crate::stream::RangeFetch;

/// How to reach HTTP sources.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// PEM bundle of CAs to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Skip certificate verification (`disableCertificateVerification`).
    pub insecure: bool,
    pub connect_timeout: Duration,
    /// Longest silence on an open connection.
    pub read_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            ca_file: None,
            insecure: false,
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// A readable image location.
#[derive(Clone)]
pub enum Source {
    File(PathBuf),
    Http {
        url: String,
        agent: ureq::Agent,
        timeouts: (Duration, Duration),
    },
}

/// An opened stream and its length when the source says.
pub struct Opened {
    pub reader: Box<dyn Read + Send>,
    pub length: Option<u64>,
}

/// The start of a source: at most the bytes asked for, and the whole source's length when the
/// source says.
pub struct Head {
    pub data: Vec<u8>,
    pub length: Option<u64>,
}

fn is_url(spec: &str) -> bool {
    let lower = spec.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

impl Source {
    pub fn new(spec: &str, http: &HttpOptions) -> Result<Source> {
        if is_url(spec) {
            return Ok(Source::Http {
                url: spec.to_string(),
                agent: build_agent(http)?,
                timeouts: (http.connect_timeout, http.read_timeout),
            });
        }
        let path = spec.strip_prefix("file://").unwrap_or(spec);
        if spec.contains("://") && !spec.starts_with("file://") {
            return Err(invalid(format!(
                "unsupported source {spec:?}: use a path, file://, http:// or https://"
            )));
        }
        Ok(Source::File(PathBuf::from(path)))
    }

    /// The last path component, used to find the image's line in a checksum file.
    pub fn file_name(&self) -> String {
        let s = match self {
            Source::File(p) => p.to_string_lossy().to_string(),
            Source::Http { url, .. } => url.split(['?', '#']).next().unwrap_or(url).to_string(),
        };
        s.trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string()
    }

    /// Starts the one streaming read of the whole image.
    pub fn open(&self) -> Result<Opened> {
        match self {
            Source::File(path) => {
                let f = File::open(path)
                    .map_err(|e| source(format!("cannot open {}: {e}", path.display())))?;
                let meta = f
                    .metadata()
                    .map_err(|e| source(format!("{}: {e}", path.display())))?;
                let length = meta.is_file().then_some(meta.len());
                Ok(Opened {
                    reader: Box::new(f),
                    length,
                })
            }
            Source::Http {
                url,
                agent,
                timeouts,
            } => crate::http_plain::open(url, agent, *timeouts),
        }
    }

    /// The first `len` bytes (fewer when the source is shorter) and the source's length, in
    /// one request. Over HTTP a range request, so a server sends only what is asked (a probe
    /// that hung up on a whole-file GET left the server sending up to a socket buffer's worth
    /// of a file nobody reads, and looked like an aborted download in its log).
    pub fn head(&self, len: u64) -> Result<Head> {
        if let Source::Http { url, agent, .. } = self {
            if let Some(head) = http_head(agent, url, len)? {
                return Ok(head);
            }
        }
        let opened = self.open()?;
        Ok(Head {
            data: read_up_to(opened.reader, len)?,
            length: opened.length,
        })
    }

    /// Random access for layouts that need it.
    pub fn ranges(&self) -> Result<Box<dyn RangeFetch + Send>> {
        Ok(match self {
            Source::File(path) => {
                Box::new(FileRanges(File::open(path).map_err(|e| {
                    source(format!("cannot open {}: {e}", path.display()))
                })?))
            }
            Source::Http { url, agent, .. } => Box::new(HttpRanges {
                url: url.clone(),
                agent: agent.clone(),
                unsupported: false,
            }),
        })
    }

    /// Reads a small text resource (a checksum file) at `spec`, resolved like a source.
    pub fn read_text(spec: &str, http: &HttpOptions, limit: u64) -> Result<String> {
        let src = Source::new(spec, http)?;
        let opened = src.open()?;
        let mut text = String::new();
        BufReader::new(opened.reader)
            .take(limit)
            .read_to_string(&mut text)
            .map_err(|e| source(format!("cannot read {spec}: {e}")))?;
        Ok(text)
    }
}

pub(crate) fn get(
    agent: &ureq::Agent,
    url: &str,
    range: Option<(u64, u64)>,
) -> Result<ureq::Response> {
    let mut req = agent.get(url);
    if let Some((start, len)) = range {
        req = req.set("Range", &format!("bytes={}-{}", start, start + len - 1));
    }
    match req.call() {
        Ok(resp) => Ok(resp),
        Err(ureq::Error::Status(code, resp)) => Err(source(format!(
            "GET {}: HTTP {code} {}",
            redact(url),
            resp.status_text()
        ))),
        Err(ureq::Error::Transport(t)) => Err(source(format!("GET {}: {t}", redact(url)))),
    }
}

/// `GET` with `Range: bytes=0-(len-1)`. A 206 for that range gives the bytes and the length
/// from its `Content-Range`; a 200 (a server that ignores Range) sends the whole file, of which
/// only `len` bytes are read before the connection is dropped. `None` when the range cannot be
/// served (416: an empty file; a 206 for other bytes): a plain GET must do.
fn http_head(agent: &ureq::Agent, url: &str, len: u64) -> Result<Option<Head>> {
    if len == 0 {
        return Ok(None);
    }
    let resp = match agent
        .get(url)
        .set("Range", &format!("bytes=0-{}", len - 1))
        .call()
    {
        Ok(resp) => resp,
        Err(ureq::Error::Status(416, _)) => return Ok(None),
        Err(ureq::Error::Status(code, resp)) => {
            return Err(source(format!(
                "GET {}: HTTP {code} {}",
                redact(url),
                resp.status_text()
            )))
        }
        Err(ureq::Error::Transport(t)) => return Err(source(format!("GET {}: {t}", redact(url)))),
    };
    let length = if resp.status() == 206 {
        match resp.header("Content-Range").and_then(content_range) {
            Some((0, total)) => total,
            _ => return Ok(None),
        }
    } else {
        resp.header("Content-Length")
            .and_then(|v| v.trim().parse().ok())
    };
    let data = read_up_to(resp.into_reader(), len)?;
    Ok(Some(Head { data, length }))
}

/// (first byte, complete length if known) of a `Content-Range: bytes FIRST-LAST/LENGTH|*`.
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.trim().split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first, total))
}

fn read_up_to(reader: impl Read, len: u64) -> Result<Vec<u8>> {
    let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(1 << 20));
    reader
        .take(len)
        .read_to_end(&mut data)
        .map_err(|e| source(format!("reading the source: {e}")))?;
    Ok(data)
}

/// Drops user information from a URL before it goes into a message.
pub(crate) fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_string()
}

struct FileRanges(File);

impl RangeFetch for FileRanges {
    fn fetch(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; len as usize];
        let mut done = 0;
        while done < buf.len() {
            let n = self
                .0
                .read_at(&mut buf[done..], offset + done as u64)
                .map_err(|e| source(format!("read at {offset}: {e}")))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(Some(buf))
    }
}

struct HttpRanges {
    url: String,
    agent: ureq::Agent,
    unsupported: bool,
}

impl RangeFetch for HttpRanges {
    fn fetch(&mut self, offset: u64, len: u64) -> Result<Option<Vec<u8>>> {
        if self.unsupported || len == 0 {
            return Ok(if len == 0 { Some(Vec::new()) } else { None });
        }
        let resp = get(&self.agent, &self.url, Some((offset, len)))?;
        if resp.status() != 206 {
            // A server that ignores Range answers 200 with the whole body: do not read it.
            self.unsupported = true;
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(len as usize);
        resp.into_reader()
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| source(format!("range GET {}: {e}", redact(&self.url))))?;
        Ok(Some(buf))
    }
}

fn build_agent(http: &HttpOptions) -> Result<ureq::Agent> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup: {e}")))?;
    let config = if http.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = &http.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| invalid(format!("CA file {}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| invalid(format!("CA file {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| invalid(format!("CA file {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(invalid(format!(
                    "CA file {} holds no certificate",
                    path.display()
                )));
            }
        } else {
            let native = rustls_native_certs::load_native_certs()
                .map_err(|e| invalid(format!("system CA certificates: {e}")))?;
            roots.add_parsable_certificates(native);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(ureq::AgentBuilder::new()
        .timeout_connect(http.connect_timeout)
        .timeout_read(http.read_timeout)
        .redirects(10)
        .tls_config(Arc::new(config))
        .build())
}

/// Accepts any server certificate; used only when the caller disabled verification.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_redaction() {
        let h = HttpOptions::default();
        let s = Source::new("http://h/x/disk.qcow2?sig=1", &h).unwrap();
        assert_eq!(s.file_name(), "disk.qcow2");
        assert_eq!(Source::new("/a/b.img", &h).unwrap().file_name(), "b.img");
        assert!(Source::new("ftp://h/x", &h).is_err());
        assert_eq!(redact("https://u:p@h/x"), "https://***@h/x");
    }
}
