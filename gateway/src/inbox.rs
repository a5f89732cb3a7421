//! What other threads hand a shard: accepted connections, commands, and the symbols the feed
//! updated. The only place where a shard meets other threads, apart from the store.
//!
//! The feed queues each updated symbol at most once until the shard takes the queue (a flag per
//! symbol and shard, in the store), then wakes the shard once per batch: per update, one flag
//! swap and, when it was clear, one push under a short lock; per batch, one wake-up.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::store::SymbolId;

/// Which listener a connection came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The session port: everything.
    Main,
    /// `--metrics-listen`: `/metrics`, `/healthz`, `/readyz` only.
    Metrics,
}

/// A command for a shard.
pub enum Command {
    /// Serve this connection.
    Connection { stream: std::net::TcpStream, peer: SocketAddr, listener: Listener },
    /// The access configuration was reloaded (SIGHUP): review every session's grant against
    /// the one now in `Gateway::access` (revoked: 4001; narrowed: drop the symbols it lost).
    ReviewAccess,
    /// Close every session with 1001 and stop within the grace period.
    Shutdown,
}

/// The shard's side of the threads that talk to it.
pub struct Inbox {
    commands: Mutex<Vec<Command>>,
    updated: Mutex<Vec<SymbolId>>,
    waker: mio::Waker,
}

impl Inbox {
    pub fn new(waker: mio::Waker) -> Inbox {
        Inbox { commands: Mutex::new(Vec::new()), updated: Mutex::new(Vec::new()), waker }
    }

    /// Hands the shard a command and wakes it.
    pub fn send(&self, command: Command) {
        self.commands.lock().push(command);
        self.wake();
    }

    /// Queues `id` as updated (once, while `queued` is set). Call [`Self::wake`] after a batch.
    #[inline]
    pub fn push_update(&self, id: SymbolId, queued: &AtomicBool) {
        if !queued.swap(true, Ordering::AcqRel) {
            self.updated.lock().push(id);
        }
    }

    pub fn wake(&self) {
        if let Err(e) = self.waker.wake() {
            tracing::error!(error = %e, "cannot wake a shard");
        }
    }

    /// Moves the pending commands into `out`.
    pub fn take_commands(&self, out: &mut Vec<Command>) {
        std::mem::swap(&mut *self.commands.lock(), out);
    }

    /// Moves the updated symbols into `out` (which must be empty).
    pub fn take_updates(&self, out: &mut Vec<SymbolId>) {
        std::mem::swap(&mut *self.updated.lock(), out);
    }
}
