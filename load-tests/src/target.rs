//! The gateway under test: its `ws://` URL, and plain HTTP GETs against the same port
//! (`/symbols`, `/metrics`), written by hand so the tester needs no HTTP client stack.

use std::fmt;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the endpoint is: `ws://HOST:PORT/PATH?QUERY` (or `http://`, for `--transport sse`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Path and query of the upgrade request, starting with `/`.
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target> {
        let rest =
            url.strip_prefix("ws://").or_else(|| url.strip_prefix("http://")).ok_or_else(|| {
                anyhow!("--url must start with ws:// or http:// (TLS is not supported): {url}")
            })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().with_context(|| format!("bad port in --url {url}"))?)
            }
            _ => (authority, 80),
        };
        if host.is_empty() {
            bail!("no host in --url {url}");
        }
        Ok(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// The path and query of this target's event stream: `/ws` (the WebSocket endpoint, as in
    /// the default URL) is `/sse` on the same port; any other path is taken as it is.
    pub fn sse_path(&self) -> String {
        let (path, query) = match self.path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (self.path.as_str(), None),
        };
        let path = if path == "/ws" { "/sse" } else { path };
        match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        }
    }

    /// `host:port` as a socket address string for connect.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The value of the `Host` header.
    pub fn host_header(&self) -> String {
        self.addr()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ws://{}{}", self.addr(), self.path)
    }
}

/// GET `path` on the target's port; the body on `200`, an error otherwise.
pub async fn http_get(target: &Target, path: &str, timeout: Duration) -> Result<Vec<u8>> {
    tokio::time::timeout(timeout, http_get_inner(target, path))
        .await
        .map_err(|_| anyhow!("GET {path} on {}: timed out", target.addr()))?
}

async fn http_get_inner(target: &Target, path: &str) -> Result<Vec<u8>> {
    let mut stream = TcpStream::connect(target.addr())
        .await
        .with_context(|| format!("connect to {} for GET {path}", target.addr()))?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: */*\r\n\r\n",
        target.host_header()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let head_end = find(&raw, b"\r\n\r\n").ok_or_else(|| anyhow!("GET {path}: no HTTP head"))?;
    let head = std::str::from_utf8(&raw[..head_end]).context("GET: head not UTF-8")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("GET {path}: bad status line"))?;
    if status != 200 {
        bail!("GET {path} answered {status}");
    }
    let body = &raw[head_end + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        dechunk(body)
    } else {
        Ok(body.to_vec())
    }
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or_else(|| anyhow!("bad chunked body"))?;
        let size_str = std::str::from_utf8(&body[..line_end])?;
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .context("bad chunk size")?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 {
            bail!("truncated chunked body");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The symbols the gateway offers (`GET /symbols`).
pub async fn fetch_symbols(target: &Target) -> Result<Vec<String>> {
    let body = http_get(target, "/symbols", Duration::from_secs(10)).await?;
    let symbols: Vec<String> =
        serde_json::from_slice(&body).context("GET /symbols: not a JSON array of strings")?;
    if symbols.is_empty() {
        bail!("GET /symbols returned no symbols");
    }
    Ok(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ws_urls() {
        let t = Target::parse("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(t, Target { host: "127.0.0.1".into(), port: 8080, path: "/ws".into() });
        let t = Target::parse("ws://localhost/ws?token=abc").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/ws?token=abc"));
        let t = Target::parse("ws://[::1]:9000/ws").unwrap();
        assert_eq!((t.host.as_str(), t.addr()), ("::1", "[::1]:9000".to_string()));
        assert!(Target::parse("wss://x/ws").is_err());
        let t = Target::parse("http://127.0.0.1:8080/sse").unwrap();
        assert_eq!((t.port, t.sse_path().as_str()), (8080, "/sse"));
        let t = Target::parse("ws://127.0.0.1:8080/ws?token=a").unwrap();
        assert_eq!(t.sse_path(), "/sse?token=a");
        assert!(Target::parse("ws://:80/ws").is_err());
    }

    #[test]
    fn decodes_chunked_bodies() {
        let body = b"4\r\n[\"AA\r\n3\r\nPL\"\r\n1\r\n]\r\n0\r\n\r\n";
        assert_eq!(dechunk(body).unwrap(), b"[\"AAPL\"]");
    }
}
