//! HTTP/1.1 on the session port, the little of it the gateway needs: request heads (parsed by
//! `httparse`, within a size limit) and whole responses.
//!
//! Every endpoint is a `GET` with no body, so a request is its head. The head must fit in
//! `max_request_head_bytes`; what a client sends beyond that is answered (414, 431) and the
//! connection closed, never buffered. Keep-alive and pipelined requests are served in order.
//! Nothing here can panic on client bytes.

use std::fmt::Write as _;

/// Most header lines a request may carry; more is answered 431.
pub const MAX_HEADERS: usize = 64;

/// The request method, as far as the gateway cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Other,
}

/// What the gateway reads from a request head.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Option<Method>,
    /// The path, without the query.
    pub path: String,
    /// The raw query (after `?`), if any.
    pub query: Option<String>,
    /// HTTP/1.0 (false) or 1.1 (true).
    pub http11: bool,
    /// `Connection` tokens, lowercased.
    pub connection_close: bool,
    pub connection_keep_alive: bool,
    pub connection_upgrade: bool,
    /// `Upgrade: websocket`.
    pub upgrade_websocket: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub origin: Option<String>,
    pub authorization: Option<String>,
    /// A body is announced (`Content-Length` > 0 or `Transfer-Encoding`): not served.
    pub has_body: bool,
}

impl RequestHead {
    pub fn method(&self) -> Method {
        self.method.unwrap_or(Method::Other)
    }

    /// Whether the connection stays open after the answer.
    pub fn keep_alive(&self) -> bool {
        if self.http11 {
            !self.connection_close
        } else {
            self.connection_keep_alive
        }
    }
}

/// The outcome of parsing the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// The head is not complete yet (and still within the limit).
    Partial,
    /// A complete head, and how many bytes it took.
    Complete(Box<RequestHead>, usize),
    /// Not acceptable: answer with this status and text, then close.
    Refuse(u16, &'static str),
}

/// Parses a request head from `buf` (the bytes read so far), refusing heads over `max_bytes`.
pub fn parse_head(buf: &[u8], max_bytes: usize) -> Parse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(max_bytes)];
    let consumed = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() < max_bytes {
                return Parse::Partial;
            }
            // Over the limit: a request line that has not ended is a long URL.
            return if !window.contains(&b'\n') {
                Parse::Refuse(414, "request URL too long")
            } else {
                Parse::Refuse(431, "request head too large")
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Parse::Refuse(431, "too many header lines"),
        Err(_) => return Parse::Refuse(400, "malformed HTTP request"),
    };
    let mut head = RequestHead {
        method: Some(match req.method {
            Some("GET") => Method::Get,
            Some("HEAD") => Method::Head,
            _ => Method::Other,
        }),
        http11: req.version == Some(1),
        ..RequestHead::default()
    };
    let target = req.path.unwrap_or("/");
    match target.split_once('?') {
        Some((path, query)) => {
            head.path = path.to_string();
            head.query = Some(query.to_string());
        }
        None => head.path = target.to_string(),
    }
    for h in req.headers.iter() {
        let value = || std::str::from_utf8(h.value).ok().map(|v| v.trim().to_string());
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                head.connection_close |= token.eq_ignore_ascii_case(b"close");
                head.connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                head.connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case("upgrade") {
            head.upgrade_websocket |= h
                .value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.ws_key = value();
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.ws_version = value();
        } else if name.eq_ignore_ascii_case("origin") {
            head.origin = value();
        } else if name.eq_ignore_ascii_case("authorization") {
            head.authorization = value();
        } else if name.eq_ignore_ascii_case("content-length") {
            head.has_body |= h.value.trim_ascii() != b"0";
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            head.has_body = true;
        }
    }
    Parse::Complete(Box::new(head), consumed)
}

/// A whole response, written out as one buffer.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
        }
    }

    /// A plain-text answer (errors say what to do, in a sentence).
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response::new(status, "application/json", body)
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// The bytes on the wire; `HEAD` requests get the head only.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut head = String::with_capacity(160);
        let _ = write!(head, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        // Every answer: browsers must take the content type as given, never sniff one (a
        // `text/plain` error echoing a symbol name is never run as HTML).
        if !self.headers.iter().any(|(name, _)| name.eq_ignore_ascii_case(NOSNIFF.0)) {
            let _ = write!(head, "{}: {}\r\n", NOSNIFF.0, NOSNIFF.1);
        }
        let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        head.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut out = head.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The header on every response (see [`Response::encode`]).
pub const NOSNIFF: (&str, &str) = ("X-Content-Type-Options", "nosniff");

/// The head of a response that switches the connection to WebSocket.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nX-Content-Type-Options: nosniff\r\n\r\n"
    )
    .into_bytes()
}

/// The head of a Server-Sent Events stream: no length, the body ends when the connection does.
pub fn event_stream_head() -> &'static [u8] {
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nX-Accel-Buffering: no\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n"
}

/// Reason phrases of the statuses the gateway sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn complete(text: &str) -> RequestHead {
        match parse_head(text.as_bytes(), 16 * 1024) {
            Parse::Complete(head, n) => {
                assert_eq!(n, text.len());
                *head
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_an_upgrade_request() {
        let head = complete(
            "GET /ws?token=a%20b HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://a\r\n\r\n",
        );
        assert_eq!(head.method(), Method::Get);
        assert_eq!((head.path.as_str(), head.query.as_deref()), ("/ws", Some("token=a%20b")));
        assert!(head.upgrade_websocket && head.connection_upgrade && head.keep_alive());
        assert_eq!(head.ws_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        assert_eq!(head.ws_version.as_deref(), Some("13"));
        assert_eq!(head.origin.as_deref(), Some("http://a"));
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_header() {
        assert!(complete("GET / HTTP/1.1\r\n\r\n").keep_alive());
        assert!(!complete("GET / HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive());
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive());
        assert!(complete("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
        assert!(complete("GET / HTTP/1.1\r\nContent-Length: 3\r\n\r\n").has_body);
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_are_refused() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost:", 100), Parse::Partial);
        let long_url = format!("GET /snapshot?symbols={}", "A,".repeat(100));
        assert_eq!(
            parse_head(long_url.as_bytes(), 100),
            Parse::Refuse(414, "request URL too long")
        );
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "y".repeat(200));
        assert_eq!(parse_head(big.as_bytes(), 100), Parse::Refuse(431, "request head too large"));
        let many: String =
            "GET / HTTP/1.1\r\n".to_string() + &"A: b\r\n".repeat(MAX_HEADERS + 1) + "\r\n";
        assert_eq!(
            parse_head(many.as_bytes(), 1 << 20),
            Parse::Refuse(431, "too many header lines")
        );
        assert_eq!(
            parse_head(b"\x00\x01 nonsense\r\n\r\n", 100),
            Parse::Refuse(400, "malformed HTTP request")
        );
    }

    #[test]
    fn responses_have_a_length_and_say_whether_the_connection_stays() {
        let r = Response::text(404, "not found\n").header("X-A", "1");
        assert_eq!(
            String::from_utf8(r.encode(true, false)).unwrap(),
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-A: 1\r\nX-Content-Type-Options: nosniff\r\nContent-Length: 10\r\nConnection: keep-alive\r\n\r\nnot found\n"
        );
        assert!(String::from_utf8(r.encode(false, true))
            .unwrap()
            .ends_with("Connection: close\r\n\r\n"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), max in 1usize..4096) {
            let _ = parse_head(&bytes, max);
        }
    }
}
