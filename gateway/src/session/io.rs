//! The session's socket, wrapped to record progress: when the kernel last accepted bytes from
//! us (slow-consumer detection) and whether a write had to wait (backpressure).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock::mono_ns;

/// Progress of one session's socket, shared by its reader, writer and socket wrapper.
#[derive(Debug, Default)]
pub struct Progress {
    /// Monotonic ns when the kernel last accepted bytes from us.
    pub last_write_ns: AtomicU64,
    /// Monotonic ns when a frame (any, Pong included) last arrived.
    pub last_read_ns: AtomicU64,
    /// Set when a write found the socket full; the writer reads and clears it per batch.
    pub blocked: AtomicBool,
}

impl Progress {
    pub fn new() -> Arc<Progress> {
        let now = mono_ns();
        Arc::new(Progress {
            last_write_ns: AtomicU64::new(now),
            last_read_ns: AtomicU64::new(now),
            blocked: AtomicBool::new(false),
        })
    }
}

/// A socket that notes its progress in a [`Progress`].
pub struct ProgressIo<T> {
    inner: T,
    progress: Arc<Progress>,
}

impl<T> ProgressIo<T> {
    pub fn new(inner: T, progress: Arc<Progress>) -> Self {
        ProgressIo { inner, progress }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProgressIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProgressIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &result {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.progress.last_write_ns.store(mono_ns(), Ordering::Relaxed)
            }
            Poll::Pending => self.progress.blocked.store(true, Ordering::Relaxed),
            _ => {}
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
