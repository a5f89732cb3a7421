//! The embedded simulator as a [`Feed`]: `feed_sim`'s market, published in batches every
//! millisecond at the configured rate, on the feed's own thread.

use std::time::Duration;

use feed_sim::Simulator;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::{Feed, FeedRun, Publisher};
use crate::clock::wall_ns;
use crate::config::Config;
use crate::store::SymbolId;

/// Longest catch-up after a stall (the thread was descheduled): beyond it, updates are
/// skipped rather than burst, as a real feed's would be conflated upstream.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);

/// How often the simulator publishes the updates that are due.
const TICK: Duration = Duration::from_millis(1);

/// The simulated market at `rate` updates per second.
pub struct SimFeed {
    sim: Simulator,
    rate: u32,
    /// Symbol index in the simulator to the store's id.
    ids: Vec<SymbolId>,
}

impl SimFeed {
    pub fn new(sim: Simulator, rate: u32) -> SimFeed {
        SimFeed { sim, rate, ids: Vec::new() }
    }

    /// The simulator the flags describe (`--sim-symbols`, `--sim-rate`, `--sim-seed`).
    pub fn from_config(config: &Config) -> SimFeed {
        let sim = Simulator::with_activity(
            config.sim_symbols,
            config.sim_seed,
            config.sim_activity.into(),
        );
        SimFeed::new(sim, config.sim_rate)
    }
}

/// A fresh epoch per process start: a new simulator run reuses `seq` values.
fn fresh_epoch() -> String {
    let now = wall_ns();
    let mixed = (now ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{:012x}", mixed >> 16)
}

impl Feed for SimFeed {
    fn name(&self) -> &'static str {
        "sim"
    }

    /// Every symbol gets its first quote before the gateway serves: snapshots from the start.
    fn prime(&mut self, publisher: &mut Publisher) {
        publisher.set_epoch(&fresh_epoch());
        self.ids = self
            .sim
            .symbols()
            .iter()
            .filter_map(|s| publisher.intern(&s.name, s.precision))
            .collect();
        for (i, &id) in self.ids.iter().enumerate() {
            let quote = self.sim.opening_quote(i, wall_ns());
            publisher.publish(id, quote);
        }
        publisher.flush();
        publisher.set_connected(true);
        publisher.set_live(true);
    }

    fn run(self: Box<Self>, mut publisher: Publisher, stop: CancellationToken) -> FeedRun {
        let SimFeed { mut sim, rate, ids } = *self;
        Box::pin(async move {
            let started = Instant::now();
            let mut sent: u64 = 0;
            // At least one: a rate under 10/s would otherwise skip every update.
            let behind_limit = ((MAX_CATCH_UP.as_secs_f64() * f64::from(rate)) as u64).max(1);
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    _ = tick.tick() => {}
                }
                let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
                if due.saturating_sub(sent) > behind_limit {
                    sent = due - behind_limit;
                }
                while sent < due {
                    let (i, quote) = sim.next_update(wall_ns());
                    publisher.publish(ids[i], quote);
                    sent += 1;
                }
                publisher.flush();
            }
        })
    }
}
