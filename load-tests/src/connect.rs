//! Opening one client connection: a TCP socket (bound to a source address when the plan says
//! so), then the WebSocket upgrade, or the `GET /sse` of an event stream, written and checked by
//! hand. Bytes the server sent after its `101` (or `200`) head, often the `welcome`, stay in the
//! read buffer for the frame or event reader.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

use crate::target::find;

/// A connection's read buffer: bytes `[start, end)` of `data` are received and not yet used.
pub struct ReadBuf {
    pub data: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

impl ReadBuf {
    pub fn new(size: usize) -> ReadBuf {
        ReadBuf { data: vec![0; size.max(1024)], start: 0, end: 0 }
    }

    pub fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Moves the unused bytes to the front and makes room for at least `need` of them.
    pub fn make_room(&mut self, need: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need > self.data.len() {
            self.data.resize(need, 0);
        }
    }
}

/// What the connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// A WebSocket upgrade, answered `101`.
    WebSocket,
    /// A Server-Sent Events stream, answered `200` with `text/event-stream`.
    EventStream,
}

/// What to dial and how.
pub struct Dial<'a> {
    pub upgrade: Upgrade,
    pub addr: SocketAddr,
    pub source: Option<IpAddr>,
    pub host_header: &'a str,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub rcvbuf: usize,
    pub timeout: Duration,
}

/// Why a connection attempt failed, as a short stable label for the report.
pub type FailReason = String;

/// Connects and upgrades (or opens the event stream); on success the stream is a session and
/// `buf` holds whatever arrived after the response head.
pub async fn open(dial: &Dial<'_>, buf: &mut ReadBuf) -> Result<TcpStream, FailReason> {
    match tokio::time::timeout(dial.timeout, open_inner(dial, buf)).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

async fn open_inner(dial: &Dial<'_>, buf: &mut ReadBuf) -> Result<TcpStream, FailReason> {
    let socket = if dial.addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| io_reason(&e))?;
    if dial.rcvbuf > 0 {
        socket.set_recv_buffer_size(dial.rcvbuf as u32).map_err(|e| io_reason(&e))?;
    }
    if let Some(ip) = dial.source {
        // Leave the port to connect(): the kernel then picks it per (source, destination), so
        // ports in TIME_WAIT towards an earlier gateway do not count against this one.
        bind_address_no_port(&socket);
        socket.bind(SocketAddr::new(ip, 0)).map_err(|e| io_reason(&e))?;
    }
    let mut stream = socket.connect(dial.addr).await.map_err(|e| io_reason(&e))?;
    stream.set_nodelay(true).map_err(|e| io_reason(&e))?;

    let key = generate_key();
    let mut req = match dial.upgrade {
        Upgrade::WebSocket => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            dial.path, dial.host_header
        ),
        Upgrade::EventStream => format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
            dial.path, dial.host_header
        ),
    };
    if let Some(t) = dial.token {
        req.push_str("Authorization: Bearer ");
        req.push_str(t);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.map_err(|e| io_reason(&e))?;

    buf.start = 0;
    buf.end = 0;
    let head_end = loop {
        if let Some(i) = find(buf.filled(), b"\r\n\r\n") {
            break i;
        }
        if buf.end == buf.data.len() {
            return Err("bad_handshake".into());
        }
        let n = stream.read(&mut buf.data[buf.end..]).await.map_err(|e| io_reason(&e))?;
        if n == 0 {
            return Err("eof_in_handshake".into());
        }
        buf.end += n;
    };
    let head = std::str::from_utf8(&buf.data[..head_end]).map_err(|_| "bad_handshake")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    let wanted = match dial.upgrade {
        Upgrade::WebSocket => "101",
        Upgrade::EventStream => "200",
    };
    if status != wanted {
        return Err(if status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()) {
            format!("http_{status}")
        } else {
            "bad_handshake".into()
        });
    }
    let header = |wanted: &str| {
        head.lines().skip(1).find_map(|l| {
            l.split_once(':')
                .filter(|(name, _)| name.trim().eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value.trim())
        })
    };
    match dial.upgrade {
        Upgrade::WebSocket => {
            if header("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_str()) {
                return Err("bad_accept_key".into());
            }
        }
        Upgrade::EventStream => {
            let event_stream = header("content-type").is_some_and(|v| {
                v.split(';').next().is_some_and(|t| t.trim() == "text/event-stream")
            });
            if !event_stream {
                return Err("not_an_event_stream".into());
            }
        }
    }
    buf.start = head_end + 4;
    Ok(stream)
}

fn bind_address_no_port(socket: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt reads `one` for the given length; the fd is owned by `socket`. A
    // failure (an old kernel) only means bind picks the port, which still works.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn io_reason(e: &io::Error) -> FailReason {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => return "too_many_open_files".into(),
        Some(libc::EADDRNOTAVAIL) => return "no_source_port".into(),
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "refused",
        io::ErrorKind::ConnectionReset => "reset",
        io::ErrorKind::TimedOut => "timeout",
        io::ErrorKind::UnexpectedEof => "eof_in_handshake",
        _ => "io_error",
    }
    .into()
}
