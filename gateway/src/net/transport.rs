//! A connection's socket: non-blocking reads and vectored writes, readiness-driven by the
//! shard's event loop, over plain TCP or over TLS (`--tls-cert`, `--tls-key`).
//!
//! Plain TCP is the socket itself: one branch on the way to each system call, no buffer, no
//! copy. What a write does not take stays with the caller (as an offset into the frames it
//! offered).
//!
//! TLS is rustls' sans-IO `ServerConnection` over the same socket. What differs, and what the
//! shard must respect:
//! - **Reads** decrypt into rustls' own plaintext buffer (16 KiB at most, rustls' default) and
//!   are copied out; the handshake runs inside [`Transport::read`], which also writes the
//!   handshake's answers.
//! - **Writes** hand plaintext to rustls, which encrypts it into a buffer of ciphertext
//!   ([`TLS_BUFFER_LIMIT`]), then write that ciphertext to the socket. A write reports the
//!   plaintext rustls took; ciphertext the socket refused stays in rustls and is pending
//!   ([`Transport::wants_write`]). While it is pending, every write answers `WouldBlock`
//!   after trying to flush it, so the shard waits for writability (and conflates meanwhile)
//!   exactly as it does when the kernel refuses a plain write. When the socket becomes
//!   writable the shard calls [`Transport::flush`] first; a closing connection is not dropped
//!   while ciphertext (its close frame, say) is pending, within its close grace.
//! - The PROXY protocol header comes before TLS: [`Transport::peek_raw`] and
//!   [`Transport::discard_raw`] see the socket's bytes as they are, whatever the transport.
//!
//! This module must never buffer without bound (rustls' buffers are capped), never block, and
//! never put key material or plaintext in an error or a log line.

use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

/// Ciphertext (and, before the handshake ends, plaintext) rustls holds for one connection at
/// most: one full TLS record. Bytes held here can no longer be conflated, like bytes in the
/// kernel's send buffer, so this is kept near the write budget (8 KiB by default) instead of
/// rustls' 64 KiB default: a slow TLS reader commits one record more than a plain one.
pub const TLS_BUFFER_LIMIT: usize = 16 * 1024 + 256;

/// The socket of one connection.
#[derive(Debug)]
pub struct Transport {
    stream: TcpStream,
    /// Boxed: a plain connection pays one pointer for the possibility.
    tls: Option<Box<ServerConnection>>,
}

impl Transport {
    pub fn plain(stream: TcpStream) -> Transport {
        Transport { stream, tls: None }
    }

    /// A TLS server connection over `stream`, its handshake still to come (driven by
    /// [`Transport::read`]).
    pub fn tls(stream: TcpStream, config: Arc<ServerConfig>) -> Result<Transport, rustls::Error> {
        let mut tls = ServerConnection::new(config)?;
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Transport { stream, tls: Some(Box::new(tls)) })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The socket, for registering with the event loop.
    pub fn source(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Reads what is there; `Ok(0)` is the end of the stream, `WouldBlock` nothing more now.
    /// Over TLS: decrypted bytes, the handshake driven on the way; a TLS error (a bad
    /// handshake, a corrupt record) is `InvalidData`, and rustls' alert has been sent.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => retry(|| self.stream.read(buf)),
            Some(tls) => tls_read(tls, &mut self.stream, buf),
        }
    }

    /// Writes as much of `bufs` as the kernel (or, over TLS, rustls' bounded buffer) takes
    /// now, and returns how much was taken.
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match &mut self.tls {
            None => retry(|| self.stream.write_vectored(bufs)),
            Some(tls) => {
                // Ciphertext the socket refused before goes first; while some is left, the
                // caller waits for writability like after a refused plain write.
                if !flush_tls(tls, &mut self.stream)? {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let taken = tls.writer().write_vectored(bufs)?;
                flush_tls(tls, &mut self.stream)?;
                if taken == 0 && bufs.iter().any(|b| !b.is_empty()) {
                    // rustls' buffer is full although the socket took everything: only
                    // possible during the handshake; readability will move it on.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(taken)
            }
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Over TLS: ciphertext is waiting for the socket (always false for plain TCP).
    #[inline]
    pub fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Writes pending ciphertext; `Ok(true)` when none is left (always, for plain TCP).
    pub fn flush(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            None => Ok(true),
            Some(tls) => flush_tls(tls, &mut self.stream),
        }
    }

    /// Over TLS: the handshake has not finished.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// The negotiated TLS version, for the logs (`None`: plain, or still handshaking).
    pub fn tls_version(&self) -> Option<&'static str> {
        let version = self.tls.as_ref()?.protocol_version()?;
        Some(match version {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        })
    }

    /// The socket's bytes as they arrived, left in the socket (`MSG_PEEK`): for the PROXY
    /// protocol header, which precedes TLS.
    pub fn peek_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        retry(|| self.stream.peek(buf))
    }

    /// Removes `n` bytes a [`Transport::peek_raw`] saw from the socket, unread by TLS or HTTP.
    pub fn discard_raw(&mut self, mut n: usize) -> io::Result<()> {
        let mut sink = [0u8; 256];
        while n > 0 {
            let want = n.min(sink.len());
            match retry(|| self.stream.read(&mut sink[..want]))? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                got => n -= got,
            }
        }
        Ok(())
    }

    /// Before the socket is dropped: over TLS, tell the peer with a `close_notify` alert, as
    /// far as the socket takes it now (best effort: the connection ends either way).
    pub fn close_notify(&mut self) {
        if let Some(tls) = &mut self.tls {
            if !tls.is_handshaking() {
                tls.send_close_notify();
            }
            let _ = flush_tls(tls, &mut self.stream);
        }
    }
}

/// Retries an I/O call interrupted by a signal.
#[inline]
fn retry<T>(mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Decrypted bytes into `buf`, reading and processing TLS records as needed.
fn tls_read(
    tls: &mut ServerConnection,
    stream: &mut TcpStream,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Ok(n) => return Ok(n), // 0: the peer sent close_notify
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // A TCP end without close_notify: for a stream of requests, the same as an end.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e),
        }
        // No plaintext is held here, so rustls' plaintext buffer has room for a record.
        retry(|| tls.read_tls(stream))?;
        let processed = tls.process_new_packets();
        // Handshake messages, or the alert of a failure, go out at once (what the socket
        // refuses goes when it is writable).
        let _ = flush_tls(tls, stream);
        if let Err(e) = processed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// Writes rustls' pending ciphertext until none is left (`Ok(true)`) or the socket refuses
/// more (`Ok(false)`).
fn flush_tls(tls: &mut ServerConnection, stream: &mut TcpStream) -> io::Result<bool> {
    while tls.wants_write() {
        match retry(|| tls.write_tls(stream)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
