//! The reconnect storm (`--storm`): every reading client drops its connection at the start of
//! the measured window, waits `--storm-pause-ms`, and reconnects at once with `resume`. What
//! the clients count of it ([`StormStats`], per worker, merged like the other figures) and the
//! report's `storm` section ([`StormReport`]): how long until every client was live again,
//! what the acks say was resumed or snapshotted, whether each resumed symbol's replay began
//! exactly after the `seq` the client held, and the gateway's CPU and memory meanwhile
//! (sampled by the coordinator, [`Sample`]).
//!
//! A client is live again when the `ack` of its resuming subscribe arrives: from then on its
//! subscription is in force and its replay or snapshots follow in order.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::report::Percentiles;
use crate::stats::{histogram_buckets, new_connect_histogram};

/// What the clients of one worker counted of the storm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StormStats {
    /// Clients that dropped their connection.
    pub dropped: u64,
    /// Of those, clients whose resuming subscribe was acked (live again).
    pub live_again: u64,
    /// Reconnection attempts that failed, by reason (each is retried after a short pause).
    pub failed_attempts_by_reason: BTreeMap<String, u64>,
    /// From reconnect start (the end of the pause) to the ack, µs, per client.
    #[serde(with = "histogram_buckets")]
    pub live_us: Histogram<u64>,
    /// The last ack, ns since the Unix epoch (0: none).
    pub last_live_ns: u64,
    /// Symbols the acks list in `resumed`, and the other symbols they accepted (snapshotted).
    pub resumed_symbols: u64,
    pub snapshotted_symbols: u64,
    /// Acks of a resume without `resumed` (the contract says it is there whenever `resume` was
    /// given): counted as a breach.
    pub acks_without_resumed: u64,
    /// First message after the reconnect of each resumed symbol: a quote with the next `seq`
    /// (exact), a quote further on (a gap: conflation of a client that fell behind), or a
    /// snapshot (a breach: a resumed symbol gets no snapshot).
    pub resume_exact: u64,
    pub resume_gaps: u64,
    pub resume_gap_updates: u64,
    pub resume_snapshots: u64,
    /// Quotes received after the reconnect whose update is older than the reconnect (the
    /// replay): counted here and left out of the age figures, where their age would be the
    /// pause by design.
    pub replayed_quotes: u64,
    /// Reconnections whose `welcome.epoch` differed from the one before (then nothing can be
    /// resumed).
    pub epoch_changes: u64,
}

impl StormStats {
    pub fn new() -> StormStats {
        StormStats {
            dropped: 0,
            live_again: 0,
            failed_attempts_by_reason: BTreeMap::new(),
            live_us: new_connect_histogram(),
            last_live_ns: 0,
            resumed_symbols: 0,
            snapshotted_symbols: 0,
            acks_without_resumed: 0,
            resume_exact: 0,
            resume_gaps: 0,
            resume_gap_updates: 0,
            resume_snapshots: 0,
            replayed_quotes: 0,
            epoch_changes: 0,
        }
    }

    pub fn merge(&mut self, o: &StormStats) {
        self.dropped += o.dropped;
        self.live_again += o.live_again;
        for (k, v) in &o.failed_attempts_by_reason {
            *self.failed_attempts_by_reason.entry(k.clone()).or_default() += v;
        }
        self.live_us.add(&o.live_us).expect("same histogram bounds");
        self.last_live_ns = self.last_live_ns.max(o.last_live_ns);
        self.resumed_symbols += o.resumed_symbols;
        self.snapshotted_symbols += o.snapshotted_symbols;
        self.acks_without_resumed += o.acks_without_resumed;
        self.resume_exact += o.resume_exact;
        self.resume_gaps += o.resume_gaps;
        self.resume_gap_updates += o.resume_gap_updates;
        self.resume_snapshots += o.resume_snapshots;
        self.replayed_quotes += o.replayed_quotes;
        self.epoch_changes += o.epoch_changes;
    }
}

impl Default for StormStats {
    fn default() -> Self {
        StormStats::new()
    }
}

/// One sample of the gateway process during a storm.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// ns since the Unix epoch.
    pub at_ns: u64,
    pub cpu_seconds: Option<f64>,
    pub rss_kib: Option<u64>,
}

/// How often the coordinator samples the gateway during a storm.
pub const SAMPLE_EVERY_MS: u64 = 50;

/// The report's `storm` section.
#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub pause_ms: u64,
    pub dropped: u64,
    pub live_again: u64,
    /// From reconnect start to the last client's ack; `None` unless every client is live again.
    pub all_live_ms: Option<f64>,
    /// Per client, reconnect start to its ack.
    pub live_ms: Percentiles,
    pub failed_attempts_by_reason: BTreeMap<String, u64>,
    pub resumed_symbols: u64,
    pub snapshotted_symbols: u64,
    /// Resumed / (resumed + snapshotted), %.
    pub resumed_percent: f64,
    pub resume_exact: u64,
    pub resume_gaps: u64,
    pub resume_gap_updates: u64,
    /// Snapshots of resumed symbols plus acks without `resumed`: contract breaches (an SLO).
    pub resume_breaches: u64,
    pub replayed_quotes: u64,
    pub epoch_changes: u64,
    /// The gateway's CPU from reconnect start until every client was live again (at least one
    /// sampling interval), % of one core; and over the first second after reconnect start.
    pub gateway_cpu_percent_until_live: Option<f64>,
    pub gateway_cpu_percent_first_second: Option<f64>,
    /// The gateway's RSS just before the drop, the most during the storm (until a second after
    /// the last ack), and at the window's end.
    pub gateway_rss_kib_before: Option<u64>,
    pub gateway_rss_kib_max: Option<u64>,
    pub gateway_rss_kib_after: Option<u64>,
    /// The gateway's own count over the window (`gateway_resume_symbols_total`), beside the
    /// acks'.
    pub gateway_resumed_symbols: Option<f64>,
    pub gateway_snapshotted_symbols: Option<f64>,
}

impl StormReport {
    /// `samples` in time order; `reconnect_ns` the end of the pause.
    pub fn build(
        s: &StormStats,
        pause_ms: u64,
        drop_ns: u64,
        reconnect_ns: u64,
        samples: &[Sample],
    ) -> StormReport {
        let all_live = s.dropped > 0 && s.live_again == s.dropped;
        let live_until = if s.last_live_ns > 0 { s.last_live_ns } else { reconnect_ns };
        let symbols = s.resumed_symbols + s.snapshotted_symbols;
        StormReport {
            pause_ms,
            dropped: s.dropped,
            live_again: s.live_again,
            all_live_ms: all_live.then(|| live_until.saturating_sub(reconnect_ns) as f64 / 1e6),
            live_ms: Percentiles::of(&s.live_us, 1e3),
            failed_attempts_by_reason: s.failed_attempts_by_reason.clone(),
            resumed_symbols: s.resumed_symbols,
            snapshotted_symbols: s.snapshotted_symbols,
            resumed_percent: if symbols > 0 {
                s.resumed_symbols as f64 * 100.0 / symbols as f64
            } else {
                0.0
            },
            resume_exact: s.resume_exact,
            resume_gaps: s.resume_gaps,
            resume_gap_updates: s.resume_gap_updates,
            resume_breaches: s.resume_snapshots + s.acks_without_resumed,
            replayed_quotes: s.replayed_quotes,
            epoch_changes: s.epoch_changes,
            gateway_cpu_percent_until_live: cpu_between(samples, reconnect_ns, live_until),
            gateway_cpu_percent_first_second: cpu_between(
                samples,
                reconnect_ns,
                reconnect_ns + 1_000_000_000,
            ),
            gateway_rss_kib_before: samples
                .iter()
                .rev()
                .find(|x| x.at_ns <= drop_ns)
                .and_then(|x| x.rss_kib),
            gateway_rss_kib_max: samples
                .iter()
                .filter(|x| x.at_ns >= drop_ns && x.at_ns <= live_until + 1_000_000_000)
                .filter_map(|x| x.rss_kib)
                .max(),
            gateway_rss_kib_after: samples.last().and_then(|x| x.rss_kib),
            gateway_resumed_symbols: None,
            gateway_snapshotted_symbols: None,
        }
    }
}

/// The gateway's CPU between the last sample at or before `from` and the first at or after
/// `to` (and at least one interval later), % of one core.
fn cpu_between(samples: &[Sample], from: u64, to: u64) -> Option<f64> {
    let a = samples.iter().rev().find(|x| x.at_ns <= from && x.cpu_seconds.is_some())?;
    let b = samples.iter().find(|x| x.at_ns >= to.max(a.at_ns + 1) && x.cpu_seconds.is_some())?;
    let secs = (b.at_ns - a.at_ns) as f64 / 1e9;
    Some((b.cpu_seconds? - a.cpu_seconds?) / secs * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn sample(at_ms: u64, cpu: f64, rss: u64) -> Sample {
        Sample { at_ns: at_ms * MS, cpu_seconds: Some(cpu), rss_kib: Some(rss) }
    }

    #[test]
    fn the_report_reads_the_storm_between_its_samples() {
        let mut s = StormStats::new();
        s.dropped = 2;
        s.live_again = 2;
        s.live_us.record(20_000).unwrap();
        s.live_us.record(40_000).unwrap();
        s.last_live_ns = 1_040 * MS;
        s.resumed_symbols = 15;
        s.snapshotted_symbols = 5;
        s.resume_snapshots = 1;
        let samples = [
            sample(0, 1.0, 100),
            sample(950, 1.1, 100),
            sample(1_000, 1.1, 101),
            sample(1_050, 1.125, 180),
            sample(1_100, 1.13, 150),
            sample(2_000, 1.2, 120),
        ];
        let r = StormReport::build(&s, 1_000, 0, 1_000 * MS, &samples);
        assert_eq!(r.all_live_ms, Some(40.0));
        assert_eq!(r.resumed_percent, 75.0);
        assert_eq!(r.resume_breaches, 1);
        // 1.000 s → 1.050 s: 25 ms of CPU in 50 ms.
        assert!((r.gateway_cpu_percent_until_live.unwrap() - 50.0).abs() < 1e-9);
        assert!((r.gateway_cpu_percent_first_second.unwrap() - 10.0).abs() < 1e-9);
        assert_eq!(
            (r.gateway_rss_kib_before, r.gateway_rss_kib_max, r.gateway_rss_kib_after),
            (Some(100), Some(180), Some(120))
        );
        // A client not live again: no all-live time.
        s.live_again = 1;
        assert_eq!(StormReport::build(&s, 1_000, 0, 1_000 * MS, &samples).all_live_ms, None);
    }

    #[test]
    fn storm_stats_survive_json_and_merge() {
        let mut a = StormStats::new();
        a.dropped = 3;
        a.live_us.record(1_500).unwrap();
        a.last_live_ns = 7;
        *a.failed_attempts_by_reason.entry("http_503".into()).or_default() += 2;
        let b: StormStats = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        let mut m = StormStats::new();
        m.merge(&a);
        m.merge(&b);
        assert_eq!((m.dropped, m.live_us.len(), m.last_live_ns), (6, 2, 7));
        assert_eq!(m.failed_attempts_by_reason["http_503"], 4);
    }
}
