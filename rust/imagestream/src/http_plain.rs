//! The streaming GET of a plain `http://` image, on a bare TCP socket.
//!
//! `ureq` 2 reads a body through an 8 KiB `BufReader`: one `recv` and one extra copy per
//! 8 KiB, which on a fast link costs a good part of a core. Here the body is read straight
//! from the socket into the pipeline's blocks. Only the common case is handled (HTTP/1.1,
//! `Content-Length` or close-delimited bodies, redirects); URLs with credentials, `https://`
//! and chunked responses go through `ureq` as before.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{source, Result};
use crate::source::{get, redact, Opened};

const MAX_HEAD: usize = 64 << 10;
const MAX_REDIRECTS: usize = 10;

/// Opens `url` with one GET per hop, following redirects; falls back to `ureq` for anything
/// this client does not speak.
pub fn open(url: &str, agent: &ureq::Agent, timeouts: (Duration, Duration)) -> Result<Opened> {
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let Some(target) = Target::parse(&url) else {
            return via_ureq(agent, &url);
        };
        match request(&target, &url, timeouts)? {
            Reply::Body(opened) => return Ok(opened),
            Reply::Redirect(location) => url = target.resolve(&location),
            Reply::Unsupported => return via_ureq(agent, &url),
        }
    }
    Err(source(format!(
        "GET {}: more than {MAX_REDIRECTS} redirects",
        redact(&url)
    )))
}

fn via_ureq(agent: &ureq::Agent, url: &str) -> Result<Opened> {
    let resp = get(agent, url, None)?;
    let length = resp
        .header("Content-Length")
        .and_then(|v| v.trim().parse().ok());
    Ok(Opened {
        reader: Box::new(resp.into_reader()),
        length,
    })
}

/// The parts of an `http://` URL a request needs.
struct Target {
    authority: String,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    /// `None` for anything but a plain `http://` URL without credentials.
    fn parse(url: &str) -> Option<Target> {
        if url.len() < 7 || !url[..7].eq_ignore_ascii_case("http://") {
            return None;
        }
        let rest = &url[7..];
        let rest = rest.split('#').next().unwrap_or("");
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() || authority.contains('@') {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => 80,
                None => return None,
            };
            (h.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), 80),
            }
        };
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return None;
        }
        Some(Target {
            authority: authority.to_string(),
            host,
            port,
            path,
        })
    }

    /// The absolute URL a `Location` header points to.
    fn resolve(&self, location: &str) -> String {
        let lower = location.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            location.to_string()
        } else if let Some(rest) = location.strip_prefix("//") {
            format!("http://{rest}")
        } else if location.starts_with('/') {
            format!("http://{}{location}", self.authority)
        } else {
            let path = self.path.split('?').next().unwrap_or("/");
            let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
            format!("http://{}{dir}{location}", self.authority)
        }
    }
}

enum Reply {
    Body(Opened),
    Redirect(String),
    Unsupported,
}

fn request(t: &Target, url: &str, (connect, read): (Duration, Duration)) -> Result<Reply> {
    let fail = |e: std::io::Error| source(format!("GET {}: {e}", redact(url)));
    let addrs = (t.host.as_str(), t.port).to_socket_addrs().map_err(fail)?;
    let mut last = None;
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, connect) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut stream = stream.ok_or_else(|| {
        fail(last.unwrap_or_else(|| std::io::Error::other("host has no address")))
    })?;
    stream.set_read_timeout(Some(read)).map_err(fail)?;
    stream.set_write_timeout(Some(read)).map_err(fail)?;
    let _ = stream.set_nodelay(true);
    let head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: metal3-imagestream\r\nAccept: */*\r\n\
         Accept-Encoding: identity\r\nConnection: close\r\n\r\n",
        t.path, t.authority
    );
    stream.write_all(head.as_bytes()).map_err(fail)?;
    let mut buf = vec![0u8; 16 << 10];
    let mut have = 0;
    let end = loop {
        if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if have == buf.len() {
            if buf.len() >= MAX_HEAD {
                return Err(source(format!(
                    "GET {}: response headers too long",
                    redact(url)
                )));
            }
            buf.resize(buf.len() * 2, 0);
        }
        match stream.read(&mut buf[have..]) {
            Ok(0) => {
                return Err(source(format!(
                    "GET {}: connection closed before the response headers",
                    redact(url)
                )))
            }
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fail(timeout_kind(e))),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let mut parts = status.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code: u16 = match (version.starts_with("HTTP/1."), parts.next().map(str::parse)) {
        (true, Some(Ok(c))) => c,
        _ => {
            return Err(source(format!(
                "GET {}: bad status line {status:?}",
                redact(url)
            )))
        }
    };
    let reason = parts.next().unwrap_or("").to_string();
    let mut length = None;
    let mut location = None;
    let mut encoded = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<u64>().map_err(|_| {
                source(format!("GET {}: bad Content-Length {value:?}", redact(url)))
            })?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            encoded |= !value.eq_ignore_ascii_case("identity");
        } else if name.eq_ignore_ascii_case("location") {
            location = Some(value.to_string());
        }
    }
    if (100..200).contains(&code) {
        // Interim answers to a plain GET are not expected; let the full client deal with them.
        return Ok(Reply::Unsupported);
    }
    if matches!(code, 301 | 302 | 303 | 307 | 308) {
        if let Some(loc) = location {
            return Ok(Reply::Redirect(loc));
        }
    }
    if !(200..300).contains(&code) {
        return Err(source(format!("GET {}: HTTP {code} {reason}", redact(url))));
    }
    if encoded {
        return Ok(Reply::Unsupported);
    }
    let mut pre = buf[end..have].to_vec();
    if let Some(len) = length {
        pre.truncate(usize::try_from(len).unwrap_or(usize::MAX));
    }
    let left = length.map(|l| l - pre.len() as u64);
    Ok(Reply::Body(Opened {
        reader: Box::new(Body {
            pre,
            at: 0,
            stream,
            left,
        }),
        length,
    }))
}

fn timeout_kind(e: std::io::Error) -> std::io::Error {
    // A socket read timeout shows up as WouldBlock on Linux.
    if e.kind() == std::io::ErrorKind::WouldBlock {
        std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out reading response")
    } else {
        e
    }
}

/// The response body: bytes that came with the headers, then the socket itself.
struct Body {
    pre: Vec<u8>,
    at: usize,
    stream: TcpStream,
    /// Bytes still to come from the socket, when the length is known.
    left: Option<u64>,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at < self.pre.len() {
            let n = buf.len().min(self.pre.len() - self.at);
            buf[..n].copy_from_slice(&self.pre[self.at..self.at + n]);
            self.at += n;
            return Ok(n);
        }
        let want = match self.left {
            Some(0) => return Ok(0),
            Some(l) => buf.len().min(usize::try_from(l).unwrap_or(usize::MAX)),
            None => buf.len(),
        };
        let n = self.stream.read(&mut buf[..want]).map_err(timeout_kind)?;
        if let Some(l) = &mut self.left {
            *l -= n as u64;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_redirects() {
        let t = Target::parse("http://127.0.0.1:8080/a/b.img?x=1#frag").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.path, "/a/b.img?x=1");
        assert_eq!(t.resolve("/c.img"), "http://127.0.0.1:8080/c.img");
        assert_eq!(t.resolve("c.img"), "http://127.0.0.1:8080/a/c.img");
        assert_eq!(t.resolve("https://h/x"), "https://h/x");
        let t = Target::parse("HTTP://[::1]/").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("::1", 80, "/"));
        assert_eq!(Target::parse("http://h?q").unwrap().path, "/?q");
        assert!(Target::parse("http://u:p@h/x").is_none());
        assert!(Target::parse("https://h/x").is_none());
        assert!(Target::parse("http://h:notaport/x").is_none());
    }
}
