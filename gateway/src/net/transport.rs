//! A connection's socket: non-blocking reads and vectored writes, readiness-driven by the
//! shard's event loop. What a write does not take stays with the caller (as an offset into
//! the frames it offered): nothing here buffers.

use std::io::{self, IoSlice, Read, Write};

use mio::net::TcpStream;

/// The socket of one connection.
#[derive(Debug)]
pub struct Transport {
    stream: TcpStream,
}

impl Transport {
    pub fn plain(stream: TcpStream) -> Transport {
        Transport { stream }
    }

    /// The socket, for registering with the event loop.
    pub fn source(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Reads what is there; `Ok(0)` is the end of the stream, `WouldBlock` nothing more now.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    /// Writes as much of `bufs` as the kernel takes now.
    pub fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        loop {
            match self.stream.write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
}
