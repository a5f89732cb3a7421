//! The snapshot store: the latest quote of every symbol, readable by any thread without locks,
//! and each symbol's recent history, from which sessions replay what they missed.
//!
//! Symbols are interned to dense ids once; the hot path indexes vectors, never hashes names.
//! Each symbol keeps its latest [`Snapshot`] (the quote and its frames, encoded once by the feed
//! side, shared by every session) behind an `ArcSwap`, and a history of its recent updates
//! bounded by age and count (see [`HistoryLimits`]). The store never blocks the feed on a
//! reader, never encodes per client, and knows nothing of sessions: a shard only finds here,
//! per symbol, whether it has it queued and whether it has subscribers.
//!
//! Each symbol also counts its updates (one relaxed add per publish), so that `GET /symbols`
//! can list the most active symbols first ([`SnapshotStore::most_active_first`]): the ranking
//! is computed when asked, at most once per [`RANKING_TTL_NS`], never on the feed's path.

use std::collections::{HashMap, VecDeque};
use std::mem;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use proto::{Quote, QuoteFrames};

/// What an update became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored and queued for fan-out.
    Stored,
    /// Dropped: its `seq` is not above the stored one (counted).
    Stale,
    /// Dropped: no such symbol id.
    UnknownSymbol,
}

/// Dense symbol id.
pub type SymbolId = u32;

/// One update of one symbol, encoded once.
#[derive(Debug)]
pub struct Snapshot {
    pub quote: Quote,
    pub frames: QuoteFrames,
    /// When the gateway stored it (monotonic ns, [`crate::clock::mono_ns`]). Replay decisions use
    /// this, never the feed's `ts`: a remote feed's clock may be skewed.
    pub received_ns: u64,
}

/// How much history the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Updates older than this are dropped (the window; shorter while over `max_bytes`).
    pub max_age_ns: u64,
    /// At most this many updates per symbol.
    pub max_len: usize,
    /// The whole history (every symbol's) is kept under this many bytes by shortening the
    /// window: at a high update rate a resume reaches less far back, and memory stays bounded.
    pub max_bytes: u64,
}

/// The window never shrinks below this: a session briefly late still replays what it missed.
pub const MIN_WINDOW_NS: u64 = 100_000_000;

/// Every symbol's history is pruned by age once per this period, whether or not it updates:
/// a symbol that went quiet gives its old updates back within a second, for one lock per
/// symbol per second on the feed's thread.
const SWEEP_PERIOD_NS: u64 = 1_000_000_000;

/// Where the sweep of the histories is (kept by the feed's thread).
#[derive(Debug, Default)]
pub struct Sweep {
    next: usize,
    /// The time up to which the sweep has covered its share.
    at_ns: u64,
}

/// How far back "most active" looks: a minute (to two) of updates, long enough that a burst
/// does not reorder the list, short enough that a symbol that went quiet sinks within minutes.
pub const ACTIVITY_WINDOW_NS: u64 = 60_000_000_000;

/// Fewer updates than this in the window (a feed that just started, or a slow one) rank by the
/// updates since start instead, and fewer than this since start keep the feed's own order: a
/// ranking of a few hundred updates is noise (at 5,000 the second and third symbols of the
/// simulator, 7% and 5% of updates, are 5 standard deviations apart).
pub const MIN_RANKED_UPDATES: u64 = 5_000;

/// A ranking is reused for this long: a page load per visitor costs one sort per second at
/// most, whatever the number of visitors.
pub const RANKING_TTL_NS: u64 = 1_000_000_000;

/// What one held update costs: its frames (snapshot, quote, payload) and its bookkeeping.
fn footprint(s: &Snapshot) -> u64 {
    (s.frames.snapshot.len() + s.frames.quote.len() + s.frames.payload.len() + 192) as u64
}

/// Per shard, per symbol: the flags the feed and that shard share.
#[derive(Default)]
pub struct ShardFlags {
    /// Set while the symbol sits in the shard's queue, so an update queues it at most once.
    pub queued: AtomicBool,
    /// Set by the shard while any of its sessions subscribes to the symbol.
    pub subscribed: AtomicBool,
}

/// Everything the gateway holds for one symbol.
pub struct SymbolEntry {
    pub id: SymbolId,
    pub name: Box<str>,
    pub precision: u8,
    latest: ArcSwapOption<Snapshot>,
    /// Oldest first; `seq` strictly rising. Written by the feed, read on replays.
    history: Mutex<VecDeque<Arc<Snapshot>>>,
    /// One per shard.
    pub shards: Box<[ShardFlags]>,
    /// Updates stored since start (for the activity ranking).
    updates: AtomicU64,
}

impl SymbolEntry {
    /// The latest snapshot, if the symbol has had an update.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.latest.load_full()
    }

    /// Updates stored since start.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// `seq` of the latest update (0: none yet), read without taking a reference.
    pub fn latest_seq(&self) -> u64 {
        self.latest.load().as_ref().map_or(0, |s| s.quote.seq)
    }

    /// Appends to `out` the updates with `seq` in `after + 1 ..= upto`, oldest first, at most
    /// `max` of them, and returns whether `after + 1` was held (else nothing is appended).
    pub fn history_after(
        &self,
        after: u64,
        upto: u64,
        max: usize,
        out: &mut Vec<Arc<Snapshot>>,
    ) -> bool {
        let history = self.history.lock();
        let Some(i) = index_of(&history, after + 1) else { return false };
        out.extend(history.range(i..).take_while(|s| s.quote.seq <= upto).take(max).cloned());
        true
    }

    /// When the update `seq` was received, if it is held.
    pub fn received_ns_of(&self, seq: u64) -> Option<u64> {
        let history = self.history.lock();
        index_of(&history, seq).map(|i| history[i].received_ns)
    }

    /// Whether every update after `seq` up to the latest is held, with no gap: a session that
    /// last got `seq` can be replayed exactly.
    pub fn holds_every_update_after(&self, seq: u64) -> bool {
        let history = self.history.lock();
        let Some(last) = history.back() else { return false };
        if seq >= last.quote.seq {
            return seq == last.quote.seq;
        }
        match index_of(&history, seq + 1) {
            // `seq` strictly rises, so a run of equal length is a run without gaps.
            Some(i) => last.quote.seq - (seq + 1) == (history.len() - 1 - i) as u64,
            None => false,
        }
    }

    /// Updates held now.
    pub fn history_len(&self) -> usize {
        self.history.lock().len()
    }

    /// Appends `snap` and drops what is now too old or too many; returns the bytes dropped.
    /// The latest update is always held (it is the snapshot, so it costs nothing more).
    fn store(&self, snap: Arc<Snapshot>, oldest_kept_ns: u64, max_len: usize) -> u64 {
        let dropped = {
            let mut history = self.history.lock();
            history.push_back(Arc::clone(&snap));
            prune(&mut history, oldest_kept_ns, max_len)
        };
        self.latest.store(Some(snap));
        dropped
    }
}

/// Drops the oldest updates while there are more than `max_len` or they were received before
/// `oldest_kept_ns`, always keeping the newest; returns the bytes dropped.
fn prune(history: &mut VecDeque<Arc<Snapshot>>, oldest_kept_ns: u64, max_len: usize) -> u64 {
    let mut dropped = 0;
    while history.len() > max_len.max(1)
        || (history.len() > 1 && history.front().is_some_and(|s| s.received_ns < oldest_kept_ns))
    {
        if let Some(old) = history.pop_front() {
            dropped += footprint(&old);
        }
    }
    dropped
}

/// The position of `seq` in a history, if held.
fn index_of(history: &VecDeque<Arc<Snapshot>>, seq: u64) -> Option<usize> {
    let first = history.front()?.quote.seq;
    if seq < first {
        return None;
    }
    // Usually contiguous: the feed raises seq by one. Else search.
    let guess = (seq - first) as usize;
    if history.get(guess).is_some_and(|s| s.quote.seq == seq) {
        return Some(guess);
    }
    history.binary_search_by_key(&seq, |s| s.quote.seq).ok()
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
    history: HistoryLimits,
    /// Wall-clock time of the last update, ns since the epoch (0: none yet).
    last_update_ns: AtomicU64,
    updates: AtomicU64,
    epoch: ArcSwap<String>,
    live: AtomicBool,
    /// Bytes the histories hold, and the window in force (shortened while over the budget).
    history_bytes: AtomicU64,
    window_ns: AtomicU64,
    /// The baselines of the activity ranking and its last result.
    activity: Mutex<Activity>,
}

/// Per-symbol update counts read at two moments, and the last ranking made from them.
#[derive(Default)]
struct Activity {
    /// The window's start: counts (truncated to 32 bits; differences wrap correctly) and when
    /// they were read (monotonic ns). Empty at first: the window then starts at zero.
    base: Vec<u32>,
    /// Counts read later, which become `base` once they are a window old.
    next: Vec<u32>,
    next_ns: u64,
    /// The last ranking, for a table of this many symbols, made at `ranked_ns`.
    ranked: Option<(Arc<[SymbolId]>, u64)>,
}

impl SnapshotStore {
    /// A store for `symbols` (name, precision), fanned out to `shards` shards.
    pub fn new(
        symbols: impl IntoIterator<Item = (String, u8)>,
        shards: usize,
        history: HistoryLimits,
    ) -> SnapshotStore {
        let store = SnapshotStore {
            table: ArcSwap::from_pointee(SymbolTable {
                entries: Vec::new(),
                by_name: HashMap::new(),
            }),
            shards,
            history,
            last_update_ns: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            epoch: ArcSwap::from_pointee(String::new()),
            live: AtomicBool::new(false),
            history_bytes: AtomicU64::new(0),
            window_ns: AtomicU64::new(history.max_age_ns),
            activity: Mutex::new(Activity::default()),
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

    /// The current symbol table, owned (for holding a while).
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
                history: Mutex::new(VecDeque::new()),
                shards: (0..self.shards).map(|_| ShardFlags::default()).collect(),
                updates: AtomicU64::new(0),
            }));
            by_name.insert(name.into(), id);
            Arc::new(SymbolTable { entries, by_name })
        });
        Some(id)
    }

    /// Stores an update: encodes it once and makes it the symbol's latest. Returns the entry,
    /// for the caller to fan out. A quote whose `seq` is not above the latest is dropped: a
    /// symbol's `seq` never goes backwards.
    pub fn publish(
        &self,
        id: SymbolId,
        quote: Quote,
        wall_now_ns: u64,
        mono_now_ns: u64,
    ) -> Result<Arc<SymbolEntry>, Published> {
        let table = self.table.load();
        let entry = Arc::clone(table.entries.get(id as usize).ok_or(Published::UnknownSymbol)?);
        if entry.latest_seq() >= quote.seq {
            return Err(Published::Stale);
        }
        let frames = quote.encode(&entry.name, entry.precision);
        let snap = Arc::new(Snapshot { quote, frames, received_ns: mono_now_ns });
        let added = footprint(&snap);
        let oldest_kept = mono_now_ns.saturating_sub(self.window_ns.load(Ordering::Relaxed));
        let dropped = entry.store(snap, oldest_kept, self.history.max_len);
        // One writer (the feed's thread): a plain read-modify-write is exact.
        let bytes = self.history_bytes.load(Ordering::Relaxed);
        self.history_bytes.store((bytes + added).saturating_sub(dropped), Ordering::Relaxed);
        self.last_update_ns.store(wall_now_ns, Ordering::Relaxed);
        self.updates.fetch_add(1, Ordering::Relaxed);
        entry.updates.fetch_add(1, Ordering::Relaxed);
        Ok(entry)
    }

    /// The ids of `table`'s symbols, most active first: by updates in the last one to two
    /// [`ACTIVITY_WINDOW_NS`] (the window restarts from counts read when a ranking is asked
    /// for, so it spans one to two windows while rankings are asked at least once a window),
    /// ties in the feed's order (the order symbols were interned). With fewer than
    /// [`MIN_RANKED_UPDATES`] in the window it ranks by the updates since start, and with fewer
    /// than that since start it is the feed's order. Reused for [`RANKING_TTL_NS`].
    pub fn most_active_first(&self, table: &SymbolTable, now_ns: u64) -> Arc<[SymbolId]> {
        let mut activity = self.activity.lock();
        if let Some((ranked, at)) = &activity.ranked {
            if ranked.len() == table.len() && now_ns.saturating_sub(*at) < RANKING_TTL_NS {
                return Arc::clone(ranked);
            }
        }
        let counts: Vec<u64> = table.entries.iter().map(|e| e.updates()).collect();
        // The baselines keep the low 32 bits: a difference wraps correctly while a symbol has
        // fewer than 2^32 updates in a window.
        let low: Vec<u32> = counts.iter().map(|&c| c as u32).collect();
        if activity.next.is_empty() || now_ns.saturating_sub(activity.next_ns) >= ACTIVITY_WINDOW_NS
        {
            activity.base = mem::replace(&mut activity.next, low.clone());
            activity.next_ns = now_ns;
        }
        let window: Vec<u32> = low
            .iter()
            .enumerate()
            .map(|(i, &c)| c.wrapping_sub(activity.base.get(i).copied().unwrap_or(0)))
            .collect();
        let score = if window.iter().map(|&c| u64::from(c)).sum::<u64>() >= MIN_RANKED_UPDATES {
            window
        } else if counts.iter().sum::<u64>() >= MIN_RANKED_UPDATES {
            counts.iter().map(|&c| c.min(u64::from(u32::MAX)) as u32).collect()
        } else {
            vec![0; table.len()]
        };
        // (score, id) packed in one u64 per symbol, highest score first, then lowest id: one
        // sort of plain integers, fast even for a million symbols.
        let mut keys: Vec<u64> = score
            .iter()
            .enumerate()
            .map(|(i, &c)| u64::from(u32::MAX - c) << 32 | i as u64)
            .collect();
        keys.sort_unstable();
        let ranked: Arc<[SymbolId]> = keys.iter().map(|&k| k as u32 as SymbolId).collect();
        activity.ranked = Some((Arc::clone(&ranked), now_ns));
        ranked
    }

    /// Wall-clock ns of the last update, 0 if none.
    pub fn last_update_ns(&self) -> u64 {
        self.last_update_ns.load(Ordering::Relaxed)
    }

    /// Updates stored since start.
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
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

    /// The history limits configured.
    pub fn history_limits(&self) -> HistoryLimits {
        self.history
    }

    /// Bytes the histories hold now.
    pub fn history_bytes(&self) -> u64 {
        self.history_bytes.load(Ordering::Relaxed)
    }

    /// The history window in force, ns: the configured one, or shorter while the histories
    /// are over their byte budget.
    pub fn history_window_ns(&self) -> u64 {
        self.window_ns.load(Ordering::Relaxed)
    }

    /// Upkeep of the histories, by the feed's thread after each batch: adapts the window to the
    /// byte budget and prunes the next few symbols by age (`cursor` says where the sweep is),
    /// so that a symbol that went quiet gives its old updates back.
    pub fn maintain(&self, sweep: &mut Sweep, now_ns: u64) {
        let limits = self.history;
        let bytes = self.history_bytes();
        let window = self.window_ns.load(Ordering::Relaxed);
        let window = if bytes > limits.max_bytes {
            (window - window / 16).max(MIN_WINDOW_NS.min(limits.max_age_ns))
        } else if bytes < limits.max_bytes / 10 * 8 {
            (window + window / 64 + 1).min(limits.max_age_ns)
        } else {
            window
        };
        self.window_ns.store(window, Ordering::Relaxed);
        let table = self.table.load();
        if table.is_empty() {
            return;
        }
        if sweep.at_ns == 0 || sweep.at_ns > now_ns {
            sweep.at_ns = now_ns;
        }
        // This call's share of one pass per period.
        let len = table.len() as u64;
        let due = ((now_ns - sweep.at_ns) as u128 * len as u128 / SWEEP_PERIOD_NS as u128)
            .min(len as u128) as u64;
        if due == 0 {
            return;
        }
        sweep.at_ns = if due == len { now_ns } else { sweep.at_ns + due * SWEEP_PERIOD_NS / len };
        let oldest_kept = now_ns.saturating_sub(window);
        let mut dropped = 0;
        for _ in 0..due {
            sweep.next = (sweep.next + 1) % table.len();
            let mut history = table.entries[sweep.next].history.lock();
            dropped += prune(&mut history, oldest_kept, limits.max_len);
        }
        if dropped > 0 {
            let bytes = self.history_bytes.load(Ordering::Relaxed);
            self.history_bytes.store(bytes.saturating_sub(dropped), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::Price;

    const LIMITS: HistoryLimits =
        HistoryLimits { max_age_ns: 1_000, max_len: 100, max_bytes: 1 << 30 };

    fn quote(seq: u64) -> Quote {
        Quote { seq, bid: Price(100), ask: Price(101), last: Price(100), ..Quote::default() }
    }

    fn store() -> SnapshotStore {
        SnapshotStore::new([("AAPL".to_string(), 2)], 1, LIMITS)
    }

    #[test]
    fn keeps_the_latest_and_a_history_bounded_by_count() {
        let store = store();
        for seq in 1..=300 {
            store.publish(0, quote(seq), seq, 0).ok().unwrap();
        }
        let entry = Arc::clone(&store.table().entries[0]);
        assert_eq!(entry.latest_seq(), 300);
        assert_eq!(entry.history_len(), 100);
        let mut out = Vec::new();
        assert!(!entry.history_after(199, 300, 10, &mut out), "201 is the oldest kept");
        assert!(entry.history_after(200, 204, 10, &mut out));
        assert_eq!(out.iter().map(|s| s.quote.seq).collect::<Vec<_>>(), [201, 202, 203, 204]);
        assert!(entry.holds_every_update_after(200) && entry.holds_every_update_after(300));
        assert!(!entry.holds_every_update_after(199) && !entry.holds_every_update_after(301));
        assert!(matches!(store.publish(0, quote(300), 0, 0), Err(Published::Stale)));
        assert_eq!(store.updates(), 300);
    }

    #[test]
    fn history_drops_old_updates_and_the_sweep_catches_quiet_symbols() {
        let store = SnapshotStore::new(
            [("AAPL".to_string(), 2), ("MSFT".to_string(), 2)],
            1,
            HistoryLimits { max_age_ns: 1_000, max_len: 100, max_bytes: 1 << 30 },
        );
        // One update per 100 ns: the 1,000 ns window holds the last 11.
        for seq in 1..=50 {
            store.publish(0, quote(seq), 0, seq * 100).ok().unwrap();
        }
        store.publish(1, quote(1), 0, 100).ok().unwrap();
        store.publish(1, quote(2), 0, 200).ok().unwrap();
        let aapl = Arc::clone(&store.table().entries[0]);
        let msft = Arc::clone(&store.table().entries[1]);
        assert_eq!(aapl.history_len(), 11);
        assert_eq!(aapl.received_ns_of(50), Some(5_000));
        assert_eq!(aapl.received_ns_of(39), None);
        assert_eq!(msft.history_len(), 2, "nothing pushed out its old update");
        let before = store.history_bytes();
        let mut sweep = Sweep::default();
        store.maintain(&mut sweep, 1);
        store.maintain(&mut sweep, 1 + SWEEP_PERIOD_NS);
        assert_eq!(msft.history_len(), 1, "the sweep drops it; the latest stays");
        assert!(store.history_bytes() < before);
    }

    #[test]
    fn over_the_byte_budget_the_window_shrinks_until_it_fits() {
        let second = 1_000_000_000;
        let limits =
            HistoryLimits { max_age_ns: 10 * second, max_len: 100_000, max_bytes: 2_000_000 };
        let store = SnapshotStore::new([("AAPL".to_string(), 2)], 1, limits);
        let mut cursor = Sweep::default();
        // 10,000 updates a second, ~500 bytes each: 10 s would be 50 MB.
        for seq in 1..=100_000u64 {
            let now = seq * (second / 10_000);
            store.publish(0, quote(seq), 0, now).ok().unwrap();
            if seq % 10 == 0 {
                store.maintain(&mut cursor, now);
            }
        }
        assert!(store.history_bytes() <= 2 * limits.max_bytes, "{}", store.history_bytes());
        assert!(store.history_window_ns() < second, "{}", store.history_window_ns());
        assert!(store.history_window_ns() >= MIN_WINDOW_NS);
    }

    #[test]
    fn a_gap_in_the_feed_is_never_replayed_across() {
        let store = store();
        for seq in [1, 2, 3, 7, 8] {
            store.publish(0, quote(seq), 0, 0).ok().unwrap();
        }
        let entry = Arc::clone(&store.table().entries[0]);
        assert!(entry.holds_every_update_after(6), "7 and 8 follow 6 in the feed's order");
        assert!(!entry.holds_every_update_after(2), "4 to 6 never arrived");
        let mut out = Vec::new();
        assert!(entry.history_after(6, 8, 10, &mut out));
        assert_eq!(out.len(), 2);
    }

    fn three_symbols() -> SnapshotStore {
        let names = ["AAPL", "MSFT", "NVDA"].map(|n| (n.to_string(), 2));
        SnapshotStore::new(names, 1, LIMITS)
    }

    /// Publishes `n` more updates of symbol `id`.
    fn publish_n(store: &SnapshotStore, id: SymbolId, n: u64) {
        let from = store.table().entries[id as usize].latest_seq() + 1;
        for seq in from..from + n {
            store.publish(id, quote(seq), 0, 0).ok().unwrap();
        }
    }

    fn ranking(store: &SnapshotStore, now_ns: u64) -> Vec<SymbolId> {
        store.most_active_first(&store.table(), now_ns).to_vec()
    }

    #[test]
    fn too_few_updates_to_rank_keep_the_feeds_order() {
        let store = three_symbols();
        publish_n(&store, 2, 100);
        publish_n(&store, 1, 50);
        assert_eq!(ranking(&store, 0), [0, 1, 2], "150 updates are noise, not a ranking");
    }

    #[test]
    fn symbols_rank_by_updates_then_in_the_feeds_order() {
        let store = three_symbols();
        publish_n(&store, 2, 3_000);
        publish_n(&store, 1, 3_000);
        publish_n(&store, 0, 1_000);
        assert_eq!(ranking(&store, 0), [1, 2, 0], "a tie goes to the first interned");
        publish_n(&store, 0, 5_000);
        assert_eq!(ranking(&store, RANKING_TTL_NS - 1), [1, 2, 0], "reused within its TTL");
        assert_eq!(ranking(&store, RANKING_TTL_NS), [0, 1, 2]);
    }

    #[test]
    fn activity_older_than_the_window_is_forgotten() {
        let store = three_symbols();
        let minute = ACTIVITY_WINDOW_NS;
        publish_n(&store, 0, 20_000);
        assert_eq!(ranking(&store, 0), [0, 1, 2]);
        // A window later, the window counts from that first ranking on: AAPL's 20,000 are older.
        publish_n(&store, 2, 6_000);
        assert_eq!(ranking(&store, minute), [2, 0, 1]);
        publish_n(&store, 2, 6_000);
        publish_n(&store, 1, 1);
        assert_eq!(ranking(&store, 2 * minute), [2, 1, 0], "AAPL had nothing in this window");
        // A window that is too quiet ranks by the updates since start.
        assert_eq!(ranking(&store, 3 * minute), [0, 2, 1]);
    }

    #[test]
    fn interning_is_idempotent_and_rejects_odd_names() {
        let store = SnapshotStore::new([("AAPL".to_string(), 2)], 2, LIMITS);
        assert_eq!(store.intern("AAPL", 2), Some(0));
        assert_eq!(store.intern("MSFT", 2), Some(1));
        assert_eq!(store.intern("bad\"name", 2), None);
        assert_eq!(store.table().get("MSFT").unwrap().shards.len(), 2);
    }
}
