//! Every metric the gateway exposes, named in one place (Prometheus form
//! `gateway_<what>_<unit>[_total]`, base units, bounded labels), and their exposition.
//!
//! The hot path never touches a registry: counters are plain atomics, writers tally per batch
//! and add once, and every histogram is a per-shard array of atomic bucket counts; gauges are
//! read from the state they describe when `/metrics` is scraped. Each gateway instance has its
//! own `Metrics`, so several can run in one process (the tests do).
//!
//! Never keep a sample: every metric here is a fixed set of atomics, allocated once in
//! [`Metrics::new`], so memory stays flat however long nobody scrapes (issue 14: a recorder that
//! buffered each histogram sample until a scrape grew by ~3.5 MB a minute). A new histogram is
//! an [`AtomicHistogram`] with its bounds; a new counter a [`Counter`] or a [`CounterFamily`].

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const SESSIONS_ACTIVE: &str = "gateway_sessions_active";
pub const SESSIONS_OPENED: &str = "gateway_sessions_opened_total";
pub const SESSIONS_CLOSED: &str = "gateway_sessions_closed_total";
pub const HANDSHAKE_REJECTIONS: &str = "gateway_handshake_rejections_total";
pub const AUTH_FAILURES: &str = "gateway_auth_failures_total";
pub const RELOADS: &str = "gateway_reloads_total";
pub const RESUME_SYMBOLS: &str = "gateway_resume_symbols_total";
pub const MAX_CONNECTIONS: &str = "gateway_max_connections";
pub const SUBSCRIPTIONS_ACTIVE: &str = "gateway_subscriptions_active";
pub const REQUESTS: &str = "gateway_requests_total";
pub const REQUEST_ERRORS: &str = "gateway_request_errors_total";
pub const FEED_UPDATES: &str = "gateway_feed_updates_total";
pub const FEED_DROPPED: &str = "gateway_feed_dropped_updates_total";
pub const FEED_DUPLICATES: &str = "gateway_feed_duplicate_updates_total";
pub const FEED_MALFORMED: &str = "gateway_feed_malformed_messages_total";
pub const FEED_LAG: &str = "gateway_feed_lag_seconds";
pub const FEED_CONNECTED: &str = "gateway_feed_connected";
pub const FEED_LIVE: &str = "gateway_feed_live";
pub const FEED_RECONNECTS: &str = "gateway_feed_reconnects_total";
pub const FEED_STALENESS: &str = "gateway_feed_staleness_seconds";
pub const SYMBOLS: &str = "gateway_symbols";
pub const MESSAGES_SENT: &str = "gateway_messages_sent_total";
pub const BYTES_SENT: &str = "gateway_sent_bytes_total";
pub const CONFLATED_UPDATES: &str = "gateway_conflated_updates_total";
pub const SLOW_CONSUMER_CLOSES: &str = "gateway_slow_consumer_closes_total";
pub const HEARTBEAT_TIMEOUTS: &str = "gateway_heartbeat_timeouts_total";
pub const QUOTE_AGE: &str = "gateway_quote_age_seconds";
pub const FANOUT_DURATION: &str = "gateway_fanout_duration_seconds";
pub const FRAMES_PER_WRITE: &str = "gateway_frames_per_write";
pub const SESSION_PENDING_MAX: &str = "gateway_session_pending_updates_max";
pub const SSE_SESSIONS_ACTIVE: &str = "gateway_sse_sessions_active";
pub const HISTORY_BYTES: &str = "gateway_history_bytes";
pub const HISTORY_WINDOW: &str = "gateway_history_window_seconds";
pub const BUILD_INFO: &str = "gateway_build_info";

/// Upper bounds of the latency histograms, in seconds: 50 µs to 5 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];
/// The latency histograms record nanoseconds and export seconds.
pub const NS: f64 = 1e-9;

/// Upper bounds of [`FRAMES_PER_WRITE`]: powers of two up to one write budget's worth of quotes
/// (8 KiB of ~100-byte frames is ~80).
pub const FRAMES_PER_WRITE_BUCKETS: [f64; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
/// Counts are recorded and exported as they are.
pub const ONE: f64 = 1.0;

/// Most bucket bounds one [`AtomicHistogram`] takes: its counts live inline, in one allocation
/// with the rest of its shard's histogram.
pub const MAX_BUCKETS: usize = 24;

/// Message types, the `type` label of the send counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    Welcome,
    Ack,
    Error,
    Snapshot,
    Quote,
    Heartbeat,
    Pong,
}

impl MsgType {
    pub const ALL: [MsgType; 7] = [
        MsgType::Welcome,
        MsgType::Ack,
        MsgType::Error,
        MsgType::Snapshot,
        MsgType::Quote,
        MsgType::Heartbeat,
        MsgType::Pong,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            MsgType::Welcome => "welcome",
            MsgType::Ack => "ack",
            MsgType::Error => "error",
            MsgType::Snapshot => "snapshot",
            MsgType::Quote => "quote",
            MsgType::Heartbeat => "heartbeat",
            MsgType::Pong => "pong",
        }
    }
}

/// Why a session ended: one value per close cause of the contract, plus the client's own close
/// and I/O errors. The `reason` label of [`SESSIONS_CLOSED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Normal,
    Shutdown,
    Policy,
    MessageTooBig,
    Internal,
    HeartbeatTimeout,
    SlowConsumer,
    Client,
    IoError,
    /// 4001: the session's JWT reached its `exp`.
    TokenExpired,
    /// 4001: a reload revoked the session's credential.
    TokenRevoked,
}

impl EndReason {
    pub const ALL: [EndReason; 11] = [
        EndReason::Normal,
        EndReason::Shutdown,
        EndReason::Policy,
        EndReason::MessageTooBig,
        EndReason::Internal,
        EndReason::HeartbeatTimeout,
        EndReason::SlowConsumer,
        EndReason::Client,
        EndReason::IoError,
        EndReason::TokenExpired,
        EndReason::TokenRevoked,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Normal => "normal",
            EndReason::Shutdown => "shutdown",
            EndReason::Policy => "policy",
            EndReason::MessageTooBig => "message_too_big",
            EndReason::Internal => "internal_error",
            EndReason::HeartbeatTimeout => "heartbeat_timeout",
            EndReason::SlowConsumer => "slow_consumer",
            EndReason::Client => "client",
            EndReason::IoError => "io_error",
            EndReason::TokenExpired => "token_expired",
            EndReason::TokenRevoked => "token_revoked",
        }
    }
}

/// Request ops, the `op` label of [`REQUESTS`]; `invalid` is a frame that did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpLabel {
    Subscribe,
    Unsubscribe,
    Ping,
    Invalid,
}

impl OpLabel {
    pub const ALL: [OpLabel; 4] =
        [OpLabel::Subscribe, OpLabel::Unsubscribe, OpLabel::Ping, OpLabel::Invalid];
    /// The label of a decoded request.
    pub fn of(op: &proto::Op) -> OpLabel {
        match op {
            proto::Op::Subscribe { .. } => OpLabel::Subscribe,
            proto::Op::Unsubscribe { .. } => OpLabel::Unsubscribe,
            proto::Op::Ping => OpLabel::Ping,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpLabel::Subscribe => "subscribe",
            OpLabel::Unsubscribe => "unsubscribe",
            OpLabel::Ping => "ping",
            OpLabel::Invalid => "invalid",
        }
    }
}

/// Why a feed message was not an update, the `reason` label of [`FEED_MALFORMED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MalformedReason {
    /// The payload did not decode as a quote (too large, not JSON, a missing or ill-typed field).
    Payload,
    /// The symbol is not a valid symbol name.
    Symbol,
    /// A price has more decimals than the symbol's precision (it cannot be written exactly).
    Precision,
}

impl MalformedReason {
    pub const ALL: [MalformedReason; 3] =
        [MalformedReason::Payload, MalformedReason::Symbol, MalformedReason::Precision];
    pub fn as_str(self) -> &'static str {
        match self {
            MalformedReason::Payload => "payload",
            MalformedReason::Symbol => "symbol",
            MalformedReason::Precision => "precision",
        }
    }
}

/// What SIGHUP reloads: the `what` label of [`RELOADS`].
pub const RELOAD_KINDS: [&str; 2] = ["access", "tls"];

/// Handshake refusal statuses, the `status` label of [`HANDSHAKE_REJECTIONS`].
pub const REJECTION_STATUSES: [u16; 4] = [401, 403, 426, 503];

/// What one writer sent in one batch; added to the shared counters once per batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub messages: [u64; 7],
    pub bytes: [u64; 7],
    pub conflated: u64,
}

impl Tally {
    #[inline]
    pub fn sent(&mut self, kind: MsgType, bytes: usize) {
        self.messages[kind as usize] += 1;
        self.bytes[kind as usize] += bytes as u64;
    }

    pub fn is_empty(&self) -> bool {
        self.conflated == 0 && self.messages.iter().all(|&n| n == 0)
    }
}

/// A monotonically rising count, exported as a Prometheus counter: one atomic, no registry.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter and its fixed label values (an enum's, or a status list): one [`Counter`] each,
/// indexed like the list they were made from.
pub struct CounterFamily {
    name: &'static str,
    help: &'static str,
    label: &'static str,
    series: Vec<(String, Counter)>,
}

impl CounterFamily {
    fn new(
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = String>,
    ) -> CounterFamily {
        let series = values.into_iter().map(|v| (v, Counter::default())).collect();
        CounterFamily { name, help, label, series }
    }

    /// A family whose series carry several labels, each given whole (`a="x",b="y"`).
    fn with_labels(
        name: &'static str,
        help: &'static str,
        labels: impl IntoIterator<Item = String>,
    ) -> CounterFamily {
        let series = labels.into_iter().map(|l| (l, Counter::default())).collect();
        CounterFamily { name, help, label: "", series }
    }

    #[inline]
    fn increment(&self, i: usize, n: u64) {
        if let Some((_, c)) = self.series.get(i) {
            c.increment(n);
        }
    }

    fn render(&self, out: &mut String) {
        let (name, label) = (self.name, self.label);
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} counter", self.help);
        for (value, c) in &self.series {
            if label.is_empty() {
                let _ = writeln!(out, "{name}{{{value}}} {}", c.get());
            } else {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {}", c.get());
            }
        }
    }
}

fn render_counter(out: &mut String, name: &str, help: &str, c: &Counter) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", c.get());
}

/// A fixed-bucket histogram of atomics: recording is two relaxed adds, whatever the traffic,
/// and nothing is kept per sample. One per shard ([`ShardedHistogram`]), so recording never
/// contends; cache-line aligned, so two shards' histograms never share a line.
///
/// Values are recorded as integers in the histogram's own unit (ns for latencies, plain
/// counts) and exported as `value × unit` (seconds for latencies). Bucket `i` counts values
/// `≤ bounds[i]` (Prometheus' `le`), the last one everything above.
#[repr(align(64))]
pub struct AtomicHistogram {
    /// `bounds` in recorded units: bucket `i` holds values `≤ thresholds[i]`.
    thresholds: [u64; MAX_BUCKETS],
    len: usize,
    counts: [AtomicU64; MAX_BUCKETS + 1],
    sum: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (ascending, in exported units, each a whole number
    /// of `unit`s), recording integers of which one is `unit` exported units.
    ///
    /// # Panics
    ///
    /// With more than [`MAX_BUCKETS`] bounds, or bounds that do not rise: a programming error
    /// in the constants above, caught by the unit tests.
    pub fn new(bounds: &[f64], unit: f64) -> AtomicHistogram {
        assert!(bounds.len() <= MAX_BUCKETS, "at most {MAX_BUCKETS} bucket bounds");
        let mut thresholds = [u64::MAX; MAX_BUCKETS];
        for (t, b) in thresholds.iter_mut().zip(bounds) {
            *t = (b / unit).round() as u64;
        }
        assert!(thresholds[..bounds.len()].windows(2).all(|w| w[0] < w[1]), "bounds must rise");
        AtomicHistogram {
            thresholds,
            len: bounds.len(),
            counts: Default::default(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one value, in the histogram's unit.
    #[inline]
    pub fn record(&self, value: u64) {
        let i = self.thresholds[..self.len].partition_point(|&t| t < value);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Records a latency in nanoseconds (the unit of every latency histogram here).
    #[inline]
    pub fn record_ns(&self, ns: u64) {
        self.record(ns);
    }

    /// Observations so far (all buckets).
    pub fn count(&self) -> u64 {
        self.counts[..=self.len].iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// One histogram metric: its name, help, bounds, and one [`AtomicHistogram`] per shard, added
/// up when `/metrics` is scraped.
pub struct ShardedHistogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    unit: f64,
    shards: Box<[AtomicHistogram]>,
}

impl ShardedHistogram {
    pub fn new(
        name: &'static str,
        help: &'static str,
        bounds: &'static [f64],
        unit: f64,
        shards: usize,
    ) -> ShardedHistogram {
        let shards = (0..shards.max(1)).map(|_| AtomicHistogram::new(bounds, unit)).collect();
        ShardedHistogram { name, help, bounds, unit, shards }
    }

    /// The histogram a shard records into (any index is valid: it wraps).
    #[inline]
    pub fn shard(&self, shard: usize) -> &AtomicHistogram {
        &self.shards[shard % self.shards.len()]
    }

    fn render(&self, out: &mut String) {
        let mut counts = [0u64; MAX_BUCKETS + 1];
        let mut sum = 0u64;
        for h in self.shards.iter() {
            for (c, a) in counts.iter_mut().zip(&h.counts) {
                *c += a.load(Ordering::Relaxed);
            }
            sum = sum.wrapping_add(h.sum.load(Ordering::Relaxed));
        }
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", self.help);
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", sum as f64 * self.unit);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Gauges read at scrape time from the gateway's state.
pub struct GaugeValues {
    pub sessions_active: u64,
    pub subscriptions_active: u64,
    pub symbols: u64,
    pub feed_staleness_seconds: f64,
    pub max_connections: u64,
    /// Of `sessions_active`, those on `/sse`.
    pub sse_sessions_active: u64,
    pub history_bytes: u64,
    pub history_window_seconds: f64,
}

/// The gateway's metrics: every series allocated once here, recorded without lookups.
pub struct Metrics {
    pub sessions_opened: Counter,
    sessions_closed: CounterFamily,
    handshake_rejections: CounterFamily,
    auth_failures: CounterFamily,
    /// `what` × `result`: access ok, access refused, tls ok, tls refused.
    reloads: CounterFamily,
    /// Symbols named in a `resume`: resumed, snapshot.
    resume_symbols: CounterFamily,
    requests: CounterFamily,
    request_errors: CounterFamily,
    pub feed_updates: Counter,
    feed_dropped: Counter,
    feed_duplicates: Counter,
    feed_malformed: CounterFamily,
    feed_reconnects: Counter,
    /// Gateway receive time minus the quote's `ts`, recorded by the feed's thread only.
    feed_lag: ShardedHistogram,
    /// The feed's name (`sim`, `nats`, ...), the `feed` label of the feed gauges.
    feed_name: parking_lot::Mutex<&'static str>,
    feed_connected: AtomicU64,
    feed_live: AtomicU64,
    messages_sent: CounterFamily,
    bytes_sent: CounterFamily,
    conflated: Counter,
    slow_consumer_closes: Counter,
    heartbeat_timeouts: Counter,
    quote_age: ShardedHistogram,
    fanout_duration: ShardedHistogram,
    frames_per_write: ShardedHistogram,
    pending_max: AtomicU64,
}

impl Metrics {
    /// Every metric, with a zero for each label value so dashboards show series at once.
    pub fn new(shards: usize) -> Metrics {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let types = || strings(&MsgType::ALL.map(MsgType::as_str));
        Metrics {
            sessions_opened: Counter::default(),
            sessions_closed: CounterFamily::new(
                SESSIONS_CLOSED,
                "WebSocket sessions closed, by reason",
                "reason",
                strings(&EndReason::ALL.map(EndReason::as_str)),
            ),
            auth_failures: CounterFamily::new(
                AUTH_FAILURES,
                "Requests refused for their credential, by reason",
                "reason",
                crate::access::AuthFailure::ALL.iter().map(|f| f.as_str().to_string()),
            ),
            reloads: CounterFamily::with_labels(
                RELOADS,
                "Reloads on SIGHUP, by what and result (refused: the old one stays in force)",
                RELOAD_KINDS.iter().flat_map(|what| {
                    ["ok", "refused"].map(|result| format!("what=\"{what}\",result=\"{result}\""))
                }),
            ),
            resume_symbols: CounterFamily::new(
                RESUME_SYMBOLS,
                "Symbols named in a resume: replayed from the history (resumed) or sent a snapshot",
                "outcome",
                ["resumed", "snapshot"].map(String::from),
            ),
            handshake_rejections: CounterFamily::new(
                HANDSHAKE_REJECTIONS,
                "Upgrade requests refused before the upgrade, by HTTP status",
                "status",
                REJECTION_STATUSES.iter().map(u16::to_string),
            ),
            requests: CounterFamily::new(
                REQUESTS,
                "Client requests received, by op (invalid: did not decode)",
                "op",
                strings(&OpLabel::ALL.map(OpLabel::as_str)),
            ),
            request_errors: CounterFamily::new(
                REQUEST_ERRORS,
                "Error answers sent, by code",
                "code",
                proto::server::ErrorCode::ALL.iter().map(|c| c.as_str().to_string()),
            ),
            feed_updates: Counter::default(),
            feed_dropped: Counter::default(),
            feed_duplicates: Counter::default(),
            feed_malformed: CounterFamily::new(
                FEED_MALFORMED,
                "Feed messages dropped because they are not a usable quote, by reason",
                "reason",
                strings(&MalformedReason::ALL.map(MalformedReason::as_str)),
            ),
            feed_reconnects: Counter::default(),
            feed_lag: ShardedHistogram::new(
                FEED_LAG,
                "Gateway receive time minus the quote's ts, per update from the feed (clock skew included)",
                &LATENCY_BUCKETS,
                NS,
                1,
            ),
            feed_name: parking_lot::Mutex::new("none"),
            feed_connected: AtomicU64::new(0),
            feed_live: AtomicU64::new(0),
            messages_sent: CounterFamily::new(
                MESSAGES_SENT,
                "Messages written to sessions, by type",
                "type",
                types(),
            ),
            bytes_sent: CounterFamily::new(
                BYTES_SENT,
                "Payload bytes written to sessions, by message type",
                "type",
                types(),
            ),
            conflated: Counter::default(),
            slow_consumer_closes: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            quote_age: ShardedHistogram::new(
                QUOTE_AGE,
                "Age of a quote (now minus its ts) when written to a session's socket",
                &LATENCY_BUCKETS,
                NS,
                shards,
            ),
            fanout_duration: ShardedHistogram::new(
                FANOUT_DURATION,
                "Time to mark one update for all its subscribers on one shard",
                &LATENCY_BUCKETS,
                NS,
                shards,
            ),
            frames_per_write: ShardedHistogram::new(
                FRAMES_PER_WRITE,
                "Frames written to a session's socket in one write",
                &FRAMES_PER_WRITE_BUCKETS,
                ONE,
                shards,
            ),
            pending_max: AtomicU64::new(0),
        }
    }

    pub fn session_closed(&self, reason: EndReason) {
        self.sessions_closed.increment(reason as usize, 1);
        match reason {
            EndReason::SlowConsumer => self.slow_consumer_closes.increment(1),
            EndReason::HeartbeatTimeout => self.heartbeat_timeouts.increment(1),
            _ => {}
        }
    }

    /// A request refused for its credential.
    pub fn auth_failed(&self, failure: crate::access::AuthFailure) {
        if let Some(i) = crate::access::AuthFailure::ALL.iter().position(|&f| f == failure) {
            self.auth_failures.increment(i, 1);
        }
    }

    /// A reload on SIGHUP of `what` (`access` or `tls`), applied or refused.
    pub fn reloaded(&self, what: &str, ok: bool) {
        if let Some(i) = RELOAD_KINDS.iter().position(|&w| w == what) {
            self.reloads.increment(2 * i + usize::from(!ok), 1);
        }
    }

    /// A `resume`: symbols replayed and symbols snapshotted instead.
    pub fn resumed(&self, replayed: u64, snapshotted: u64) {
        self.resume_symbols.increment(0, replayed);
        self.resume_symbols.increment(1, snapshotted);
    }

    pub fn handshake_rejected(&self, status: u16) {
        if let Some(i) = REJECTION_STATUSES.iter().position(|&s| s == status) {
            self.handshake_rejections.increment(i, 1);
        }
    }

    /// An update from the feed dropped (stale `seq` or unknown symbol).
    pub fn feed_update_dropped(&self) {
        self.feed_dropped.increment(1);
    }

    /// An update received twice (a redelivery, or the same `seq` again).
    pub fn feed_duplicate(&self) {
        self.feed_duplicates.increment(1);
    }

    /// A feed message that is not a usable quote.
    pub fn feed_malformed(&self, reason: MalformedReason) {
        self.feed_malformed.increment(reason as usize, 1);
    }

    /// The feed's upstream connection came back.
    pub fn feed_reconnected(&self) {
        self.feed_reconnects.increment(1);
    }

    /// Feed lag of one update: the gateway's receive time minus the quote's `ts` (wall ns).
    pub fn record_feed_lag(&self, received_ns: u64, ts: u64) {
        self.feed_lag.shard(0).record_ns(received_ns.saturating_sub(ts));
    }

    /// Names the feed, for the `feed` label of its gauges.
    pub fn set_feed_name(&self, name: &'static str) {
        *self.feed_name.lock() = name;
    }

    pub fn set_feed_connected(&self, connected: bool) {
        self.feed_connected.store(u64::from(connected), Ordering::Relaxed);
    }

    pub fn set_feed_live(&self, live: bool) {
        self.feed_live.store(u64::from(live), Ordering::Relaxed);
    }

    pub fn request(&self, op: OpLabel) {
        self.requests.increment(op as usize, 1);
    }

    pub fn request_error(&self, code: proto::server::ErrorCode) {
        self.request_errors.increment(code as usize, 1);
    }

    /// Adds one writer batch.
    pub fn add_tally(&self, tally: &Tally) {
        for (i, &n) in tally.messages.iter().enumerate() {
            if n > 0 {
                self.messages_sent.increment(i, n);
                self.bytes_sent.increment(i, tally.bytes[i]);
            }
        }
        if tally.conflated > 0 {
            self.conflated.increment(tally.conflated);
        }
    }

    /// The quote-age histogram of a shard (records ns).
    pub fn quote_age(&self, shard: usize) -> &AtomicHistogram {
        self.quote_age.shard(shard)
    }

    /// The fan-out duration histogram of a shard (records ns).
    pub fn fanout_duration(&self, shard: usize) -> &AtomicHistogram {
        self.fanout_duration.shard(shard)
    }

    /// Records one fan-out pass of `shard`.
    #[inline]
    pub fn record_fanout_on(&self, shard: usize, elapsed: Duration) {
        self.fanout_duration(shard).record_ns(elapsed.as_nanos() as u64);
    }

    /// Records one fan-out pass into shard 0's histogram: for one-shard callers; a shard
    /// thread should use [`Self::record_fanout_on`], which never shares a cache line.
    pub fn record_fanout(&self, elapsed: Duration) {
        self.record_fanout_on(0, elapsed);
    }

    /// Records how many frames one socket write of `shard` carried.
    #[inline]
    pub fn record_frames_per_write(&self, shard: usize, frames: u64) {
        self.frames_per_write.shard(shard).record(frames);
    }

    /// Notes a writer's pending updates; the worst since the last scrape is exported.
    pub fn note_pending(&self, pending: u64) {
        // A read first: the shared line is written only when a new worst appears.
        if pending > self.pending_max.load(Ordering::Relaxed) {
            self.pending_max.fetch_max(pending, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self, gauges: &GaugeValues) -> String {
        let mut out = String::with_capacity(16 * 1024);
        render_counter(
            &mut out,
            SESSIONS_OPENED,
            "WebSocket sessions opened",
            &self.sessions_opened,
        );
        self.sessions_closed.render(&mut out);
        self.handshake_rejections.render(&mut out);
        self.auth_failures.render(&mut out);
        self.reloads.render(&mut out);
        self.resume_symbols.render(&mut out);
        self.requests.render(&mut out);
        self.request_errors.render(&mut out);
        render_counter(
            &mut out,
            FEED_UPDATES,
            "Quote updates received from the feed",
            &self.feed_updates,
        );
        render_counter(
            &mut out,
            FEED_DROPPED,
            "Updates from the feed dropped because their seq was not above the stored one",
            &self.feed_dropped,
        );
        render_counter(
            &mut out,
            FEED_DUPLICATES,
            "The same update received twice: a NATS redelivery (dropped by stream sequence), or a seq equal to the stored one (also in the dropped count)",
            &self.feed_duplicates,
        );
        self.feed_malformed.render(&mut out);
        render_counter(
            &mut out,
            FEED_RECONNECTS,
            "Times the feed's upstream connection came back after being lost",
            &self.feed_reconnects,
        );
        let feed = *self.feed_name.lock();
        let _ = writeln!(
            out,
            "# HELP {FEED_CONNECTED} 1 while the feed's upstream connection (NATS) is up, else 0\n# TYPE {FEED_CONNECTED} gauge\n{FEED_CONNECTED}{{feed=\"{feed}\"}} {}",
            self.feed_connected.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP {FEED_LIVE} 1 while the feed is connected and its initial load is done, else 0\n# TYPE {FEED_LIVE} gauge\n{FEED_LIVE}{{feed=\"{feed}\"}} {}",
            self.feed_live.load(Ordering::Relaxed)
        );
        self.feed_lag.render(&mut out);
        self.messages_sent.render(&mut out);
        self.bytes_sent.render(&mut out);
        render_counter(
            &mut out,
            CONFLATED_UPDATES,
            "Updates replaced by a newer one before a slow session could be sent them",
            &self.conflated,
        );
        render_counter(
            &mut out,
            SLOW_CONSUMER_CLOSES,
            "Sessions closed with 4008 because their socket accepted no data",
            &self.slow_consumer_closes,
        );
        render_counter(
            &mut out,
            HEARTBEAT_TIMEOUTS,
            "Sessions closed with 4000 because nothing arrived within the idle timeout",
            &self.heartbeat_timeouts,
        );
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge(
            SESSIONS_ACTIVE,
            "Sessions open now (WebSocket and SSE)",
            gauges.sessions_active as f64,
        );
        gauge(SSE_SESSIONS_ACTIVE, "Of those, SSE streams", gauges.sse_sessions_active as f64);
        gauge(
            HISTORY_BYTES,
            "Bytes the symbols' update histories hold (for replay and resume)",
            gauges.history_bytes as f64,
        );
        gauge(
            HISTORY_WINDOW,
            "How far back the histories reach now (shorter than --history-ms while over --history-max-bytes)",
            gauges.history_window_seconds,
        );
        gauge(
            MAX_CONNECTIONS,
            "Configured limit of sessions at once",
            gauges.max_connections as f64,
        );
        gauge(
            SUBSCRIPTIONS_ACTIVE,
            "Subscriptions (session, symbol) now",
            gauges.subscriptions_active as f64,
        );
        gauge(SYMBOLS, "Symbols known to the gateway", gauges.symbols as f64);
        gauge(
            FEED_STALENESS,
            "Seconds since the last update from the feed",
            gauges.feed_staleness_seconds,
        );
        gauge(
            SESSION_PENDING_MAX,
            "Most updates one session had waiting at once since the last scrape",
            self.pending_max.swap(0, Ordering::Relaxed) as f64,
        );
        self.quote_age.render(&mut out);
        self.fanout_duration.render(&mut out);
        self.frames_per_write.render(&mut out);
        render_process(&mut out);
        let _ = writeln!(
            out,
            "# HELP {BUILD_INFO} Build of the running gateway\n# TYPE {BUILD_INFO} gauge\n{BUILD_INFO}{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

/// Process metrics of the standard names, read from `/proc` at scrape time.
fn render_process(out: &mut String) {
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) =
        unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    let mut gauge = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> =
            stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        gauge(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time",
            (field(14) + field(15)) / ticks,
        );
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())
                })
            })
            .unwrap_or(0.0);
        gauge(
            "process_start_time_seconds",
            "gauge",
            "Start time since the Unix epoch",
            boot + field(22) / ticks,
        );
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let rss =
            statm.split_whitespace().nth(1).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        gauge("process_resident_memory_bytes", "gauge", "Resident memory", rss * page as f64);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge("process_open_fds", "gauge", "Open file descriptors", dir.count() as f64);
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        gauge("process_max_fds", "gauge", "Limit of open file descriptors", limit.rlim_cur as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges() -> GaugeValues {
        GaugeValues {
            sessions_active: 0,
            subscriptions_active: 0,
            symbols: 0,
            feed_staleness_seconds: 0.0,
            max_connections: 0,
            sse_sessions_active: 0,
            history_bytes: 0,
            history_window_seconds: 0.0,
        }
    }

    #[test]
    fn a_value_on_a_bound_counts_in_that_bucket() {
        let h = AtomicHistogram::new(&FRAMES_PER_WRITE_BUCKETS, ONE);
        for v in [0, 1, 2, 3, 128, 129, 10_000] {
            h.record(v);
        }
        let counts: Vec<u64> =
            h.counts[..=h.len].iter().map(|c| c.load(Ordering::Relaxed)).collect();
        // le=1: 0 and 1; le=2: 2; le=4: 3; le=128: 128; +Inf: 129 and 10000.
        assert_eq!(counts, [2, 1, 1, 0, 0, 0, 0, 1, 2]);
        assert_eq!(h.count(), 7);
        assert_eq!(h.sum.load(Ordering::Relaxed), 10_263);
    }

    #[test]
    fn latency_bounds_are_exact_in_nanoseconds() {
        let h = AtomicHistogram::new(&LATENCY_BUCKETS, NS);
        assert_eq!(h.thresholds[..3], [50_000, 100_000, 250_000]);
        assert_eq!(h.thresholds[15], 5_000_000_000);
        h.record_ns(50_000);
        h.record_ns(50_001);
        assert_eq!(h.counts[0].load(Ordering::Relaxed), 1);
        assert_eq!(h.counts[1].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn histograms_add_up_their_shards_in_the_exposition() {
        let m = Metrics::new(3);
        m.record_frames_per_write(0, 1);
        m.record_frames_per_write(1, 3);
        m.record_frames_per_write(5, 300);
        m.record_fanout_on(2, Duration::from_micros(30));
        m.record_fanout(Duration::from_millis(2));
        m.quote_age(1).record_ns(7_000_000);
        let text = m.render(&gauges());
        for line in [
            "gateway_frames_per_write_bucket{le=\"1\"} 1",
            "gateway_frames_per_write_bucket{le=\"2\"} 1",
            "gateway_frames_per_write_bucket{le=\"4\"} 2",
            "gateway_frames_per_write_bucket{le=\"128\"} 2",
            "gateway_frames_per_write_bucket{le=\"+Inf\"} 3",
            "gateway_frames_per_write_sum 304",
            "gateway_frames_per_write_count 3",
            "gateway_fanout_duration_seconds_bucket{le=\"0.00005\"} 1",
            "gateway_fanout_duration_seconds_bucket{le=\"0.001\"} 1",
            "gateway_fanout_duration_seconds_bucket{le=\"0.0025\"} 2",
            "gateway_fanout_duration_seconds_count 2",
            "gateway_quote_age_seconds_bucket{le=\"0.005\"} 0",
            "gateway_quote_age_seconds_bucket{le=\"0.01\"} 1",
            "gateway_quote_age_seconds_sum 0.007",
            "# TYPE gateway_frames_per_write histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn counters_export_every_label_value_from_zero() {
        let m = Metrics::new(1);
        m.session_closed(EndReason::SlowConsumer);
        m.handshake_rejected(503);
        m.handshake_rejected(418);
        m.feed_updates.increment(5);
        let mut tally = Tally::default();
        tally.sent(MsgType::Quote, 100);
        tally.sent(MsgType::Quote, 50);
        m.add_tally(&tally);
        let text = m.render(&gauges());
        for line in [
            "gateway_sessions_closed_total{reason=\"slow_consumer\"} 1",
            "gateway_sessions_closed_total{reason=\"normal\"} 0",
            "gateway_slow_consumer_closes_total 1",
            "gateway_handshake_rejections_total{status=\"503\"} 1",
            "gateway_handshake_rejections_total{status=\"401\"} 0",
            "gateway_feed_updates_total 5",
            "gateway_messages_sent_total{type=\"quote\"} 2",
            "gateway_sent_bytes_total{type=\"quote\"} 150",
            "gateway_requests_total{op=\"invalid\"} 0",
            "# TYPE gateway_feed_updates_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        assert!(!text.contains("418"), "unknown statuses are not series");
    }

    #[test]
    fn recording_allocates_nothing_however_many_samples() {
        // The guarantee of issue 14 in miniature: a million samples leave the exposition,
        // and so the state behind it, the same size.
        let m = Metrics::new(2);
        let before = m.render(&gauges()).lines().count();
        for i in 0..1_000_000u64 {
            m.record_fanout_on((i % 2) as usize, Duration::from_nanos(i));
            m.record_frames_per_write(0, i % 200);
        }
        assert_eq!(m.render(&gauges()).lines().count(), before);
        assert_eq!(m.fanout_duration(0).count() + m.fanout_duration(1).count(), 1_000_000);
    }
}
