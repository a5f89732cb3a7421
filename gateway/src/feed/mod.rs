//! The feed: where quotes come from, as an input of the gateway.
//!
//! A [`Feed`] is a source of quotes: the embedded simulator ([`sim`]), a NATS stream, or a
//! test's [`manual`] feed. [`crate::run`] takes one from outside (`main.rs` builds the one the
//! configuration names) and drives it on a thread of its own; the feed hands its quotes to a
//! [`Publisher`], which stores each update (encoded once) and tells the shards. A feed never
//! sees a session, and nothing here encodes per client.

pub mod manual;
pub mod nats;
pub mod sim;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use proto::Quote;
use tokio_util::sync::CancellationToken;

use crate::clock::{mono_ns, wall_ns};
use crate::config::Config;
use crate::inbox::Inbox;
use crate::metrics::Metrics;
pub use crate::store::Published;
use crate::store::{SnapshotStore, SymbolId};

/// Why a feed stopped for good. The gateway then logs it and exits non-zero, so that a
/// supervisor restarts it: it never goes on serving stale quotes as if they were live.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    /// The configuration names a feed this build cannot serve.
    #[error("{0}")]
    Config(String),
    /// The feed failed while running.
    #[error("{0}")]
    Failed(String),
}

/// The boxed future a feed runs as.
pub type FeedRun = Pin<Box<dyn Future<Output = Result<(), FeedError>> + Send>>;

/// A source of quotes.
pub trait Feed: Send + 'static {
    /// A short name for logs (`sim`, `nats`, `manual`).
    fn name(&self) -> &'static str;

    /// Called once before the gateway serves, on the caller's thread: intern the symbols known
    /// at start, set the epoch, store opening quotes. Must not block for long.
    fn prime(&mut self, publisher: &mut Publisher);

    /// Runs the feed until `stop` is cancelled (then `Ok`), on a thread and runtime of its own
    /// (a current-thread tokio runtime). `Err` ends the gateway.
    fn run(self: Box<Self>, publisher: Publisher, stop: CancellationToken) -> FeedRun;
}

/// The feed the configuration names (`--feed`).
pub fn from_config(config: &Config) -> Result<Box<dyn Feed>, FeedError> {
    match config.feed.as_str() {
        "sim" => Ok(Box::new(sim::SimFeed::from_config(config))),
        other if other.starts_with("nats://") => Ok(Box::new(nats::NatsFeed::from_config(config)?)),
        other => Err(FeedError::Config(format!(
            "--feed {other}: expected `sim` or a NATS URL (nats://HOST:PORT)"
        ))),
    }
}

/// Hands updates to the store and the shards. Owned by the feed's thread.
pub struct Publisher {
    store: Arc<SnapshotStore>,
    shards: Vec<Arc<Inbox>>,
    metrics: Arc<Metrics>,
    woken: Vec<bool>,
    /// Symbols known when the shards were last told.
    symbols_told: usize,
    /// Where the history sweep is.
    sweep: crate::store::Sweep,
}

impl Publisher {
    pub fn new(store: Arc<SnapshotStore>, shards: Vec<Arc<Inbox>>, metrics: Arc<Metrics>) -> Self {
        let woken = vec![false; shards.len()];
        Publisher { store, shards, metrics, woken, symbols_told: 0, sweep: Default::default() }
    }

    /// The store the updates go to (for reading what is already stored).
    pub fn store(&self) -> &SnapshotStore {
        &self.store
    }

    /// The id of `name`, added if new (precision: the decimals its prices are written with).
    /// `None` for a name that cannot be a symbol.
    pub fn intern(&mut self, name: &str, precision: u8) -> Option<SymbolId> {
        self.store.intern(name, precision)
    }

    /// Names the feed's sequence space, announced in every `welcome` (contract section 3).
    pub fn set_epoch(&mut self, epoch: &str) {
        self.store.set_epoch(epoch);
    }

    /// Whether the feed is connected and loaded; `/readyz` answers 503 while it is not.
    pub fn set_live(&mut self, live: bool) {
        self.store.set_live(live);
        self.metrics.set_feed_live(live);
    }

    /// Whether the feed's upstream connection is up (`gateway_feed_connected`).
    pub fn set_connected(&mut self, connected: bool) {
        self.metrics.set_feed_connected(connected);
    }

    /// The gateway's metrics, for what a feed counts itself (reconnects, malformed messages).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stores one update and queues it for fan-out; call [`Self::flush`] after a batch. The
    /// gateway's wall clock now is the update's receive time (`Snapshot::received_ns`), and
    /// receive time minus `ts` is recorded as the feed lag.
    pub fn publish(&mut self, id: SymbolId, quote: Quote) -> Published {
        let (wall, mono) = (wall_ns(), mono_ns());
        self.metrics.record_feed_lag(wall, quote.ts);
        let entry = match self.store.publish(id, quote, wall, mono) {
            Ok(entry) => entry,
            Err(why) => {
                self.metrics.feed_update_dropped();
                if why == Published::Stale && self.stored_seq(id) == Some(quote.seq) {
                    self.metrics.feed_duplicate();
                }
                return why;
            }
        };
        self.metrics.feed_updates.increment(1);
        for (shard, inbox) in self.shards.iter().enumerate() {
            let flags = &entry.shards[shard];
            // SeqCst, paired with the shard's store of the flag before it reads the latest.
            if flags.subscribed.load(std::sync::atomic::Ordering::SeqCst) {
                inbox.push_update(id, &flags.queued);
                self.woken[shard] = true;
            }
        }
        Published::Stored
    }

    /// The `seq` stored for `id`, if it has had an update.
    pub fn stored_seq(&self, id: SymbolId) -> Option<u64> {
        let seq = self.store.table().entries.get(id as usize)?.latest_seq();
        (seq > 0).then_some(seq)
    }

    /// Wakes the shards that got updates since the last call (all of them when the feed added
    /// symbols: `["*"]` sessions take those up).
    pub fn flush(&mut self) {
        self.store.maintain(&mut self.sweep, mono_ns());
        let symbols = self.store.table().len();
        let grew = symbols > self.symbols_told;
        self.symbols_told = symbols;
        for (inbox, woken) in self.shards.iter().zip(self.woken.iter_mut()) {
            if std::mem::take(woken) || grew {
                inbox.wake();
            }
        }
    }
}
