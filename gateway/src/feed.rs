//! The feed side: where quotes come from, and how each reaches the store and the shards.
//!
//! [`Publisher::publish`] stores an update (encoded once) and queues its symbol on every shard
//! where someone subscribes to it; [`Publisher::wake`] then wakes those shards once per batch.
//! The simulated feed runs on its own thread and publishes in batches every millisecond.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use feed_sim::Simulator;
use proto::Quote;

use crate::clock::wall_ns;
use crate::fanout::ShardQueue;
use crate::metrics::Metrics;
use crate::store::{SnapshotStore, SymbolId};

/// Hands updates to the store and the shards.
pub struct Publisher {
    pub store: Arc<SnapshotStore>,
    pub shards: Vec<Arc<ShardQueue>>,
    pub metrics: Arc<Metrics>,
    woken: Vec<bool>,
}

impl Publisher {
    pub fn new(
        store: Arc<SnapshotStore>,
        shards: Vec<Arc<ShardQueue>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let woken = vec![false; shards.len()];
        Publisher { store, shards, metrics, woken }
    }

    /// Stores one update and queues it for fan-out; call [`Self::wake`] after a batch.
    pub fn publish(&mut self, id: SymbolId, quote: Quote) {
        let Some(entry) = self.store.publish(id, quote, wall_ns()) else { return };
        self.metrics.feed_updates.increment(1);
        for (shard, queue) in self.shards.iter().enumerate() {
            let subs = &entry.shards[shard];
            if !subs.slots.load().is_empty() {
                queue.push(id, &subs.queued);
                self.woken[shard] = true;
            }
        }
    }

    /// Wakes the shards that got updates since the last call.
    pub fn wake(&mut self) {
        for (queue, woken) in self.shards.iter().zip(self.woken.iter_mut()) {
            if std::mem::take(woken) {
                queue.wake();
            }
        }
    }
}

/// Longest catch-up after a stall (the thread was descheduled): beyond it, updates are
/// skipped rather than burst, as a real feed's would be conflated upstream.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);

/// Runs the simulator on a thread of its own at `rate` updates per second until `stop`.
/// Every symbol gets its first quote before this returns, so snapshots exist from the start.
pub fn spawn_simulator(
    mut sim: Simulator,
    rate: u32,
    mut publisher: Publisher,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    for i in 0..sim.symbols().len() {
        let quote = sim.opening_quote(i, wall_ns());
        publisher.publish(i as SymbolId, quote);
    }
    publisher.wake();
    std::thread::Builder::new()
        .name("feed-sim".into())
        .spawn(move || {
            let started = Instant::now();
            let mut sent: u64 = 0;
            let tick = Duration::from_millis(1);
            while !stop.load(Ordering::Relaxed) {
                let elapsed = started.elapsed();
                let due = (elapsed.as_secs_f64() * f64::from(rate)) as u64;
                // At least one update: below 10 updates/s, 100 ms holds less than one, and a
                // bound of 0 would skip every update as "behind".
                let behind_limit = ((MAX_CATCH_UP.as_secs_f64() * f64::from(rate)) as u64).max(1);
                if due.saturating_sub(sent) > behind_limit {
                    sent = due - behind_limit;
                }
                while sent < due {
                    let (i, quote) = sim.next_update(wall_ns());
                    publisher.publish(i as SymbolId, quote);
                    sent += 1;
                }
                publisher.wake();
                std::thread::sleep(tick);
            }
        })
        .expect("spawning the feed thread")
}
