//! A Server-Sent Events client for the tests (contract section 6): a plain TCP connection, a
//! `GET /sse?…` written by hand, and the `text/event-stream` body read event by event.
//!
//! Every event it returns has been checked against the section 6 framing: an `event:` line
//! naming the message type, a `data:` line holding one JSON object whose `type` is that name,
//! and a blank line. Anything else fails the test. Included with `#[path]` by the tests that
//! speak SSE, so `common/mod.rs` stays as it is.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::{parse_response, HttpResponse, STEP};

/// One event of the stream.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// The `event:` field (the message's `type`).
    pub event: String,
    /// The `data:` field, parsed.
    pub data: Value,
}

/// An open event stream, past its `200` head.
pub struct SseClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Body bytes received so far (events and their framing).
    pub bytes: usize,
}

/// What reading the stream gave.
#[derive(Debug)]
pub enum Next {
    Event(SseEvent),
    /// The server ended the stream (EOF or a reset).
    Ended,
    /// Nothing within the wait.
    Nothing,
}

impl SseClient {
    /// Opens `path` (`/sse?symbols=…`) with extra request headers. A status other than `200` is
    /// returned as the whole response.
    pub async fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseClient, HttpResponse> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut request =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.expect("send the request");
        let mut raw = Vec::new();
        let head_end = tokio::time::timeout(STEP, async {
            let mut chunk = [0u8; 4096];
            loop {
                if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    return i + 4;
                }
                let n = stream.read(&mut chunk).await.expect("read the head");
                assert!(n > 0, "the connection ended inside the response head");
                raw.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("a response head in time");
        if !raw.starts_with(b"HTTP/1.1 200 ") {
            // A refusal: a complete response, with a length (the connection may stay open).
            let head = parse_response(&raw[..head_end]);
            let length: usize = head
                .header("content-length")
                .map(|v| v.parse().expect("a numeric Content-Length"))
                .expect("a refusal has a Content-Length");
            tokio::time::timeout(STEP, async {
                let mut chunk = [0u8; 4096];
                while raw.len() < head_end + length {
                    let n = stream.read(&mut chunk).await.expect("read the body");
                    assert!(n > 0, "the connection ended inside the body");
                    raw.extend_from_slice(&chunk[..n]);
                }
            })
            .await
            .expect("the body in time");
            return Err(parse_response(&raw));
        }
        let head = parse_response(&raw[..head_end]);
        let client = SseClient {
            stream,
            buf: raw[head_end..].to_vec(),
            headers: head.headers,
            bytes: raw.len() - head_end,
        };
        assert_eq!(client.header("content-type"), Some("text/event-stream"));
        assert!(
            client.header("transfer-encoding").is_none()
                && client.header("content-length").is_none(),
            "an event stream is delimited by the connection's end: {:?}",
            client.headers
        );
        Ok(client)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The next event within `wait`, the stream's end, or nothing.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.take_event() {
                return Next::Event(event);
            }
            let mut chunk = [0u8; 16 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Next::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    assert!(
                        self.buf.is_empty(),
                        "the stream ended inside an event: {:?}",
                        self.rest()
                    );
                    return Next::Ended;
                }
                Ok(Ok(n)) => {
                    self.bytes += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }

    /// The next event, or a failure after [`STEP`].
    pub async fn next(&mut self) -> SseEvent {
        match self.next_within(STEP).await {
            Next::Event(e) => e,
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Reads until an event satisfies `pred`, returning it and what came before.
    pub async fn until(&mut self, pred: impl Fn(&SseEvent) -> bool) -> (SseEvent, Vec<SseEvent>) {
        let mut before = Vec::new();
        loop {
            let e = self.next().await;
            if pred(&e) {
                return (e, before);
            }
            before.push(e);
        }
    }

    /// Whether the server ends the stream within `wait` (events before the end are dropped).
    pub async fn ends_within(&mut self, wait: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.next_within(deadline - tokio::time::Instant::now()).await {
                Next::Ended => return true,
                Next::Nothing => return false,
                Next::Event(_) => continue,
            }
        }
    }

    fn rest(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// One complete event off the front of the buffer, checked against section 6.
    fn take_event(&mut self) -> Option<SseEvent> {
        let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let block = String::from_utf8(self.buf[..end].to_vec()).expect("events are UTF-8");
        self.buf.drain(..end + 2);
        let mut event = None;
        let mut data = None;
        for line in block.split('\n') {
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "event" => {
                    assert!(event.is_none(), "two event lines in {block:?}");
                    event = Some(value.to_string());
                }
                "data" => {
                    assert!(data.is_none(), "one data line per event, got more in {block:?}");
                    data = Some(value.to_string());
                }
                _ => panic!("unexpected line {line:?} in event {block:?}"),
            }
        }
        let (Some(event), Some(data)) = (event, data) else {
            panic!("an event needs an event line and a data line: {block:?}")
        };
        let data: Value = serde_json::from_str(&data).expect("the data of an event is JSON");
        assert_eq!(data["type"], event.as_str(), "the event's name is its message's type");
        Some(SseEvent { event, data })
    }
}
