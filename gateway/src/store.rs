//! The snapshot store: the latest quote of every symbol, readable by any task without locks.
//!
//! Symbols are interned to dense ids once; the hot path indexes vectors, never hashes names.
//! Each symbol keeps its latest [`Snapshot`] (the quote and its frames, encoded once by the feed
//! side) and a short ring of the previous ones, from which a writer whose client keeps up sends
//! every update in order. The store never blocks the feed and never encodes per client.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::Bytes;
use proto::{Quote, QuoteFrames};

use crate::fanout::Slot;
use crate::feed::Published;

/// Updates kept per symbol for catch-up. A writer more than this many updates behind on a
/// symbol jumps to the latest (conflation). 32 covers ~100 ms of the hottest simulated symbol
/// at the default rate (a writer descheduled that long still misses nothing), for ~25 KiB
/// per symbol (12 MiB at 500 symbols).
pub const HISTORY: usize = 32;

/// Dense symbol id.
pub type SymbolId = u32;

/// One update of one symbol, encoded once.
#[derive(Debug)]
pub struct Snapshot {
    pub quote: Quote,
    pub frames: QuoteFrames,
    /// The gateway's wall clock when it stored the update, ns since the Unix epoch. Decisions
    /// about an update's age use this, never `quote.ts`: a remote feed's clock may be skewed.
    pub received_ns: u64,
}

/// What a writer needs of one update to send it as a `quote`.
pub struct QuoteRef {
    pub seq: u64,
    /// The feed's timestamp (what the quote-age metric measures from).
    pub ts: u64,
    /// When this gateway stored it (what the replay cut-off measures from).
    pub received_ns: u64,
    /// The shared `quote` frame.
    pub frame: Bytes,
}

impl QuoteRef {
    fn of(snap: &Snapshot) -> QuoteRef {
        QuoteRef {
            seq: snap.quote.seq,
            ts: snap.quote.ts,
            received_ns: snap.received_ns,
            frame: snap.frames.quote.clone(),
        }
    }
}

/// A symbol's subscribers on one shard, and whether the shard's fan-out has it queued.
#[derive(Default)]
pub struct ShardSubscribers {
    /// Read without locks by the fan-out; replaced copy-on-write on (rare) subscription changes.
    pub slots: ArcSwap<Vec<Arc<Slot>>>,
    /// Set while the symbol sits in the shard's queue, so an update queues it at most once.
    pub queued: AtomicBool,
}

/// Everything the gateway holds for one symbol.
pub struct SymbolEntry {
    pub id: SymbolId,
    pub name: Box<str>,
    pub precision: u8,
    latest: ArcSwapOption<Snapshot>,
    history: [ArcSwapOption<Snapshot>; HISTORY],
    /// One list per shard.
    pub shards: Box<[ShardSubscribers]>,
}

impl SymbolEntry {
    /// The latest snapshot, if the symbol has had an update.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest.load_full()
    }

    /// The latest update as a writer sends it. Read under arc-swap's short-lived guard: the
    /// per-delivery path takes no reference on the snapshot all sessions share.
    pub fn latest_quote(&self) -> Option<QuoteRef> {
        self.latest.load().as_deref().map(QuoteRef::of)
    }

    /// The update with exactly this `seq`, if it is still in the ring.
    pub fn quote_at_seq(&self, seq: u64) -> Option<QuoteRef> {
        let guard = self.history[(seq % HISTORY as u64) as usize].load();
        guard.as_deref().filter(|s| s.quote.seq == seq).map(QuoteRef::of)
    }

    fn store(&self, snap: Arc<Snapshot>) {
        self.history[(snap.quote.seq % HISTORY as u64) as usize].store(Some(snap.clone()));
        self.latest.store(Some(snap));
    }
}

/// The interned symbols; replaced whole (copy-on-write) if a feed introduces a new symbol.
pub struct SymbolTable {
    pub entries: Vec<Arc<SymbolEntry>>,
    by_name: HashMap<Box<str>, SymbolId>,
}

impl SymbolTable {
    pub fn get(&self, name: &str) -> Option<&Arc<SymbolEntry>> {
        self.by_name.get(name).map(|&id| &self.entries[id as usize])
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether a name may be a symbol: short, and nothing a JSON string or a URL would escape.
pub fn valid_symbol_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':'))
}

/// The store itself.
pub struct SnapshotStore {
    table: ArcSwap<SymbolTable>,
    shards: usize,
    /// Wall-clock time of the last update, ns since the epoch (0: none yet).
    last_update_ns: AtomicU64,
    updates: AtomicU64,
    epoch: ArcSwap<String>,
    live: AtomicBool,
}

impl SnapshotStore {
    /// A store for `symbols` (name, precision), fanned out to `shards` shards.
    pub fn new(symbols: impl IntoIterator<Item = (String, u8)>, shards: usize) -> SnapshotStore {
        let store = SnapshotStore {
            table: ArcSwap::from_pointee(SymbolTable {
                entries: Vec::new(),
                by_name: HashMap::new(),
            }),
            shards,
            last_update_ns: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            epoch: ArcSwap::from_pointee(String::new()),
            live: AtomicBool::new(false),
        };
        for (name, precision) in symbols {
            store.intern(&name, precision);
        }
        store
    }

    /// The current symbol table.
    pub fn table(&self) -> arc_swap::Guard<Arc<SymbolTable>> {
        self.table.load()
    }

    /// The current symbol table, owned (for holding across `.await`).
    pub fn table_full(&self) -> Arc<SymbolTable> {
        self.table.load_full()
    }

    /// The id of `name`, adding it if new (copy-on-write of the table). `None` for an invalid name.
    pub fn intern(&self, name: &str, precision: u8) -> Option<SymbolId> {
        if let Some(entry) = self.table.load().get(name) {
            return Some(entry.id);
        }
        if !valid_symbol_name(name) {
            return None;
        }
        let mut id = 0;
        self.table.rcu(|table| {
            if let Some(entry) = table.get(name) {
                id = entry.id;
                return Arc::clone(table);
            }
            id = table.entries.len() as SymbolId;
            let mut entries = table.entries.clone();
            let mut by_name = table.by_name.clone();
            entries.push(Arc::new(SymbolEntry {
                id,
                name: name.into(),
                precision,
                latest: ArcSwapOption::empty(),
                history: Default::default(),
                shards: (0..self.shards).map(|_| ShardSubscribers::default()).collect(),
            }));
            by_name.insert(name.into(), id);
            Arc::new(SymbolTable { entries, by_name })
        });
        Some(id)
    }

    /// Stores an update received at `now_ns` (the gateway's wall clock): encodes it once and
    /// makes it the symbol's latest. Returns the entry, for the caller to fan out. A quote whose
    /// `seq` is not above the latest is dropped (`Stale`): a symbol's `seq` never goes backwards.
    pub fn publish(
        &self,
        id: SymbolId,
        quote: Quote,
        now_ns: u64,
    ) -> Result<Arc<SymbolEntry>, Published> {
        let table = self.table.load();
        let entry = Arc::clone(table.entries.get(id as usize).ok_or(Published::UnknownSymbol)?);
        if entry.latest.load().as_ref().is_some_and(|s| s.quote.seq >= quote.seq) {
            return Err(Published::Stale);
        }
        let frames = quote.encode(&entry.name, entry.precision);
        entry.store(Arc::new(Snapshot { quote, frames, received_ns: now_ns }));
        self.last_update_ns.store(now_ns, Ordering::Relaxed);
        self.updates.fetch_add(1, Ordering::Relaxed);
        Ok(entry)
    }

    /// The feed's epoch (contract section 3), `""` until the feed names one.
    pub fn epoch(&self) -> Arc<String> {
        self.epoch.load_full()
    }

    pub fn set_epoch(&self, epoch: &str) {
        self.epoch.store(Arc::new(epoch.to_string()));
    }

    /// Whether the feed says it is connected and loaded.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }

    /// Wall-clock ns of the last update, 0 if none.
    pub fn last_update_ns(&self) -> u64 {
        self.last_update_ns.load(Ordering::Relaxed)
    }

    /// Updates stored since start.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Price;

    fn quote(seq: u64) -> Quote {
        Quote { seq, bid: Price(100), ask: Price(101), last: Price(100), ..Quote::default() }
    }

    #[test]
    fn keeps_the_latest_and_a_ring_of_previous_updates() {
        let store = SnapshotStore::new([("AAPL".to_string(), 2)], 1);
        let last = 3 * HISTORY as u64;
        for seq in 1..=last {
            store.publish(0, quote(seq), seq).ok().unwrap();
        }
        let entry = Arc::clone(&store.table().entries[0]);
        assert_eq!(entry.latest().unwrap().quote.seq, last);
        let oldest_kept = last - HISTORY as u64 + 1;
        assert_eq!(entry.quote_at_seq(oldest_kept).unwrap().seq, oldest_kept);
        assert!(entry.quote_at_seq(oldest_kept - 1).is_none(), "older than the ring");
        assert!(
            matches!(store.publish(0, quote(last), last + 1), Err(Published::Stale)),
            "seq must rise"
        );
        assert_eq!(store.updates(), last);
    }

    #[test]
    fn interning_is_idempotent_and_rejects_odd_names() {
        let store = SnapshotStore::new([("AAPL".to_string(), 2)], 2);
        assert_eq!(store.intern("AAPL", 2), Some(0));
        assert_eq!(store.intern("MSFT", 2), Some(1));
        assert_eq!(store.intern("bad\"name", 2), None);
        assert_eq!(store.table().get("MSFT").unwrap().shards.len(), 2);
    }
}
