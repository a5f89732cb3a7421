//! Fan-out without queues: dirty marks.
//!
//! The feed stores an update, then queues the symbol once per shard ([`ShardQueue`]). Each
//! shard's fan-out task walks the symbol's subscribers on that shard and marks each
//! subscription's [`Slot`] dirty: if it was clean, the slot goes onto its session's
//! [`ReadyList`] and the writer is woken; if it was already dirty, nothing happens, and the
//! writer will send the freshest value when it runs. A session therefore holds one slot per
//! subscription whatever its client's speed, and no per-client queue can grow.
//!
//! Per subscriber per update this costs one atomic swap and, when the slot was clean, one
//! compare-and-swap and a reference count: no lock, no allocation, no copy of the frame.

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use atomic_waker::AtomicWaker;
use parking_lot::Mutex;

use crate::metrics::Metrics;
use crate::store::{SnapshotStore, SymbolId};

/// One subscription: shared by the shard's fan-out (which marks it) and the session's writer.
pub struct Slot {
    pub symbol: SymbolId,
    session: Arc<SessionSignal>,
    /// Set by the fan-out when an update is waiting; cleared by the writer when it takes it.
    dirty: AtomicBool,
    /// Cleared when the subscription ends; a slot still on a ready list is then skipped.
    active: AtomicBool,
    /// Link of the intrusive ready list; only meaningful while the slot is on it.
    next: AtomicPtr<Slot>,
    // The fields below belong to the writer; atomics only so that `Slot` can be shared.
    /// `seq` of the last message this session got for the symbol.
    pub last_seq: AtomicU64,
    pub throttle_ms: AtomicU32,
    /// A snapshot was asked for before the symbol had any quote: its first message is then a
    /// `snapshot`, never a `quote`.
    pub snapshot_due: AtomicBool,
    /// Earliest time (ns on the session's monotonic clock) the next throttled quote may go.
    pub next_send_ns: AtomicU64,
}

impl Slot {
    pub fn new(symbol: SymbolId, session: Arc<SessionSignal>, throttle_ms: u32) -> Arc<Slot> {
        Arc::new(Slot {
            symbol,
            session,
            dirty: AtomicBool::new(false),
            active: AtomicBool::new(true),
            next: AtomicPtr::new(ptr::null_mut()),
            last_seq: AtomicU64::new(0),
            throttle_ms: AtomicU32::new(throttle_ms),
            snapshot_due: AtomicBool::new(false),
            next_send_ns: AtomicU64::new(0),
        })
    }

    /// Marks an update as waiting. Returns whether the slot was clean (else the earlier
    /// pending update is superseded: its writer will send the freshest value).
    #[inline]
    pub fn mark(self: &Arc<Slot>) -> bool {
        if !self.active.load(Ordering::Relaxed) || self.dirty.swap(true, Ordering::AcqRel) {
            return false;
        }
        if self.session.ready.push(Arc::clone(self)) {
            self.session.waker.wake();
        }
        true
    }

    /// Takes the pending mark; called by the writer before it reads the snapshot, so that an
    /// update stored after that read marks the slot again.
    pub fn take_mark(&self) {
        self.dirty.store(false, Ordering::Release);
    }

    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    pub fn deactivate(&self) {
        self.active.store(false, Ordering::Relaxed);
    }
}

/// What the fan-out shares with one session's writer: its ready list and its waker.
#[derive(Default)]
pub struct SessionSignal {
    pub ready: ReadyList,
    pub waker: AtomicWaker,
}

/// A lock-free multi-producer list of slots with pending updates (a Treiber stack taken whole
/// by its one consumer, the writer). A slot is on it at most once, guarded by its dirty flag.
pub struct ReadyList {
    head: AtomicPtr<Slot>,
}

impl Default for ReadyList {
    fn default() -> Self {
        ReadyList { head: AtomicPtr::new(ptr::null_mut()) }
    }
}

impl ReadyList {
    /// Pushes `slot`; returns whether the list was empty (the writer then needs a wake-up).
    pub fn push(&self, slot: Arc<Slot>) -> bool {
        let new = Arc::into_raw(slot).cast_mut();
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `new` came from `Arc::into_raw` above and stays alive (the list owns
            // that reference) until `take_all` turns it back into an `Arc`.
            unsafe { (*new).next.store(head, Ordering::Relaxed) };
            match self.head.compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return head.is_null(),
                Err(current) => head = current,
            }
        }
    }

    /// Whether anything is waiting.
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Acquire).is_null()
    }

    /// Moves every waiting slot into `out`, oldest first.
    pub fn take_all(&self, out: &mut Vec<Arc<Slot>>) {
        let mut p = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        let start = out.len();
        while !p.is_null() {
            // SAFETY: every pointer on the list came from `Arc::into_raw` in `push`, and the
            // swap above made this consumer its only owner.
            let slot = unsafe { Arc::from_raw(p) };
            p = slot.next.load(Ordering::Relaxed);
            out.push(slot);
        }
        out[start..].reverse();
    }
}

impl Drop for ReadyList {
    fn drop(&mut self) {
        let mut rest = Vec::new();
        self.take_all(&mut rest);
    }
}

/// The symbols updated since a shard's fan-out last ran, each at most once.
#[derive(Default)]
pub struct ShardQueue {
    updated: Mutex<Vec<SymbolId>>,
    waker: AtomicWaker,
}

impl ShardQueue {
    /// Queues `id` (once; `queued` is the symbol's flag for this shard). Call [`Self::wake`]
    /// after a batch of pushes.
    pub fn push(&self, id: SymbolId, queued: &AtomicBool) {
        if !queued.swap(true, Ordering::AcqRel) {
            self.updated.lock().push(id);
        }
    }

    pub fn wake(&self) {
        self.waker.wake();
    }
}

/// Runs one shard's fan-out until `shutdown`: waits for queued symbols and marks their
/// subscribers on this shard.
pub async fn run_shard_fanout(
    shard: usize,
    queue: Arc<ShardQueue>,
    store: Arc<SnapshotStore>,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut batch: Vec<SymbolId> = Vec::with_capacity(1024);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = std::future::poll_fn(|cx| {
                queue.waker.register(cx.waker());
                if queue.updated.lock().is_empty() {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            }) => {}
        }
        std::mem::swap(&mut *queue.updated.lock(), &mut batch);
        let table = store.table();
        for &id in &batch {
            let started = Instant::now();
            let subs = &table.entries[id as usize].shards[shard];
            subs.queued.store(false, Ordering::Release);
            let slots = subs.slots.load();
            for slot in slots.iter() {
                slot.mark();
            }
            if !slots.is_empty() {
                metrics.record_fanout_on(shard, started.elapsed());
            }
        }
        batch.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_listed_once_until_its_mark_is_taken() {
        let signal = Arc::new(SessionSignal::default());
        let a = Slot::new(1, Arc::clone(&signal), 0);
        let b = Slot::new(2, Arc::clone(&signal), 0);
        assert!(a.mark());
        assert!(!a.mark(), "second update before the writer ran is conflated");
        assert!(b.mark());
        let mut out = Vec::new();
        signal.ready.take_all(&mut out);
        assert_eq!(out.iter().map(|s| s.symbol).collect::<Vec<_>>(), [1, 2], "oldest first");
        assert!(signal.ready.is_empty());
        out[0].take_mark();
        assert!(a.mark());
        b.deactivate();
        b.take_mark();
        assert!(!b.mark(), "inactive slots are never listed again");
        drop(out);
        // `a` is still listed: dropping the signal's list must release it.
        assert_eq!(Arc::strong_count(&a), 2);
        let mut rest = Vec::new();
        signal.ready.take_all(&mut rest);
        drop(rest);
        assert_eq!(Arc::strong_count(&a), 1);
    }
}
