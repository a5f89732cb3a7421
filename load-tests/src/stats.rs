//! What the tester counts: per class of client (fast, slow, stuck) and for connecting.
//!
//! One worker process keeps one `ClassStats` per class, shared by its clients on the worker's
//! single thread; workers send them to the coordinator as JSON and `merge` adds them up. The
//! histograms travel as their recorded buckets, so percentiles stay exact to the histogram's
//! precision after merging.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Quote ages are recorded in nanoseconds, from 1 ns to an hour, 3 significant digits.
const AGE_MAX_NS: u64 = 3_600_000_000_000;
/// Connect latencies are recorded in microseconds, up to 10 minutes.
const CONNECT_MAX_US: u64 = 600_000_000;

pub fn new_age_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, AGE_MAX_NS, 3).expect("valid histogram bounds")
}

pub fn new_connect_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, CONNECT_MAX_US, 3).expect("valid histogram bounds")
}

/// The three kinds of client the tester simulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Reads everything as fast as it can.
    Fast,
    /// Reads at most `--slow-rate` messages per second.
    Slow,
    /// Never reads after subscribing.
    Stuck,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Fast, Class::Slow, Class::Stuck];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Class::Fast => "fast",
            Class::Slow => "slow",
            Class::Stuck => "stuck",
        }
    }
}

/// What one gateway (by `welcome.server`) gave its sessions: several gateways behind one URL
/// (a load balancer) or several URLs each get a row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerStats {
    /// Sessions whose `welcome` named this gateway.
    pub sessions: u64,
    /// Quotes received inside the measured window (every class).
    pub deliveries: u64,
    /// The fast clients' quote ages inside the window, ns.
    #[serde(with = "histogram_buckets")]
    pub age_ns: Histogram<u64>,
}

impl ServerStats {
    pub fn new() -> ServerStats {
        ServerStats { sessions: 0, deliveries: 0, age_ns: new_age_histogram() }
    }

    pub fn merge(&mut self, o: &ServerStats) {
        self.sessions += o.sessions;
        self.deliveries += o.deliveries;
        self.age_ns.add(&o.age_ns).expect("same histogram bounds");
    }
}

impl Default for ServerStats {
    fn default() -> Self {
        ServerStats::new()
    }
}

/// Everything counted for one class of clients.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassStats {
    /// Clients of this class in the plan.
    pub clients: u64,
    /// Clients whose handshake succeeded.
    pub connected: u64,
    /// Quote age at receipt (receive time − `ts`), ns, inside the measured window.
    #[serde(with = "histogram_buckets")]
    pub age_ns: Histogram<u64>,
    /// The same since the last progress line; never sent between processes.
    #[serde(skip, default = "new_age_histogram")]
    pub interval_age_ns: Histogram<u64>,
    /// Quotes received inside the measured window.
    pub deliveries: u64,
    /// Quotes received at any time (progress lines).
    pub quotes_all: u64,
    pub snapshots: u64,
    pub welcomes: u64,
    pub acks: u64,
    pub heartbeats: u64,
    pub pongs: u64,
    /// `error` messages by `code`.
    pub errors_by_code: BTreeMap<String, u64>,
    /// Quotes whose `seq` skipped ahead (conflated updates), inside the window.
    pub seq_jumps: u64,
    /// Updates skipped by those jumps (sum of the gaps), inside the window.
    pub missed_updates: u64,
    /// A symbol's `seq` not strictly above the last one this client got (whole run).
    pub order_violations: u64,
    /// A quote or snapshot for a symbol this client never subscribed to.
    pub unexpected_symbols: u64,
    /// A message other than `welcome` came first.
    pub welcome_not_first: u64,
    /// Messages the scan could not read, and frames a server must not send.
    pub parse_errors: u64,
    pub protocol_errors: u64,
    /// Sessions the server closed before the run ended, by close code (`1006`: without a close
    /// frame; `io_error`: a read failed).
    pub closes_by_code: BTreeMap<String, u64>,
}

impl ClassStats {
    pub fn new() -> ClassStats {
        ClassStats {
            clients: 0,
            connected: 0,
            age_ns: new_age_histogram(),
            interval_age_ns: new_age_histogram(),
            deliveries: 0,
            quotes_all: 0,
            snapshots: 0,
            welcomes: 0,
            acks: 0,
            heartbeats: 0,
            pongs: 0,
            errors_by_code: BTreeMap::new(),
            seq_jumps: 0,
            missed_updates: 0,
            order_violations: 0,
            unexpected_symbols: 0,
            welcome_not_first: 0,
            parse_errors: 0,
            protocol_errors: 0,
            closes_by_code: BTreeMap::new(),
        }
    }

    pub fn merge(&mut self, o: &ClassStats) {
        self.clients += o.clients;
        self.connected += o.connected;
        self.age_ns.add(&o.age_ns).expect("same histogram bounds");
        self.deliveries += o.deliveries;
        self.quotes_all += o.quotes_all;
        self.snapshots += o.snapshots;
        self.welcomes += o.welcomes;
        self.acks += o.acks;
        self.heartbeats += o.heartbeats;
        self.pongs += o.pongs;
        merge_map(&mut self.errors_by_code, &o.errors_by_code);
        self.seq_jumps += o.seq_jumps;
        self.missed_updates += o.missed_updates;
        self.order_violations += o.order_violations;
        self.unexpected_symbols += o.unexpected_symbols;
        self.welcome_not_first += o.welcome_not_first;
        self.parse_errors += o.parse_errors;
        self.protocol_errors += o.protocol_errors;
        merge_map(&mut self.closes_by_code, &o.closes_by_code);
    }

    pub fn count_close(&mut self, code: &str) {
        *self.closes_by_code.entry(code.to_string()).or_default() += 1;
    }

    pub fn count_error(&mut self, code: &[u8]) {
        let code = String::from_utf8_lossy(code);
        match self.errors_by_code.get_mut(code.as_ref()) {
            Some(n) => *n += 1,
            None => {
                self.errors_by_code.insert(code.into_owned(), 1);
            }
        }
    }

    pub fn closes(&self) -> u64 {
        self.closes_by_code.values().sum()
    }

    pub fn errors(&self) -> u64 {
        self.errors_by_code.values().sum()
    }
}

impl Default for ClassStats {
    fn default() -> Self {
        ClassStats::new()
    }
}

/// Connecting: attempts, failures by reason, latency of TCP connect + WebSocket upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectStats {
    pub attempts: u64,
    pub successes: u64,
    pub failures_by_reason: BTreeMap<String, u64>,
    #[serde(with = "histogram_buckets")]
    pub latency_us: Histogram<u64>,
}

impl ConnectStats {
    pub fn new() -> ConnectStats {
        ConnectStats {
            attempts: 0,
            successes: 0,
            failures_by_reason: BTreeMap::new(),
            latency_us: new_connect_histogram(),
        }
    }

    pub fn failures(&self) -> u64 {
        self.failures_by_reason.values().sum()
    }

    pub fn merge(&mut self, o: &ConnectStats) {
        self.attempts += o.attempts;
        self.successes += o.successes;
        merge_map(&mut self.failures_by_reason, &o.failures_by_reason);
        self.latency_us.add(&o.latency_us).expect("same histogram bounds");
    }
}

impl Default for ConnectStats {
    fn default() -> Self {
        ConnectStats::new()
    }
}

fn merge_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// A histogram as `[[value, count], …]` of its recorded buckets (each value the highest
/// equivalent of its bucket, so it lands in the same bucket when recorded again).
pub(crate) mod histogram_buckets {
    use hdrhistogram::Histogram;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Buckets {
        low: u64,
        high: u64,
        sigfig: u8,
        buckets: Vec<[u64; 2]>,
    }

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        Buckets {
            low: h.low(),
            high: h.high(),
            sigfig: h.sigfig(),
            buckets: h
                .iter_recorded()
                .map(|v| [v.value_iterated_to(), v.count_at_value()])
                .collect(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let b = Buckets::deserialize(d)?;
        let mut h = Histogram::new_with_bounds(b.low, b.high, b.sigfig)
            .map_err(|e| serde::de::Error::custom(format!("histogram bounds: {e:?}")))?;
        for [v, n] in b.buckets {
            h.saturating_record_n(v, n);
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_stats_survive_json_and_merge() {
        let mut a = ClassStats::new();
        for v in [1_000u64, 2_000_000, 5_000_000, 90_000_000] {
            a.age_ns.record(v).unwrap();
        }
        a.deliveries = 4;
        a.count_close("4008");
        a.count_error(b"rate_limited");
        let json = serde_json::to_string(&a).unwrap();
        let b: ClassStats = serde_json::from_str(&json).unwrap();
        assert_eq!(b.age_ns.len(), 4);
        assert_eq!(b.age_ns.value_at_quantile(0.99), a.age_ns.value_at_quantile(0.99));
        let mut m = ClassStats::new();
        m.merge(&a);
        m.merge(&b);
        assert_eq!(m.deliveries, 8);
        assert_eq!(m.age_ns.len(), 8);
        assert_eq!(m.closes_by_code["4008"], 2);
        assert_eq!(m.errors_by_code["rate_limited"], 2);
    }
}
