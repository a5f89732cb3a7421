//! Every metric the gateway exposes, named in one place (Prometheus form
//! `gateway_<what>_<unit>[_total]`, base units, bounded labels), and their exposition.
//!
//! The hot path never touches the registry: writers tally per batch and add once; the quote
//! age histogram is a per-shard array of atomics; gauges are read from the state they describe
//! when `/metrics` is scraped. Each gateway instance has its own recorder, so several can run
//! in one process (the tests do).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram, Key, Label, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const SESSIONS_ACTIVE: &str = "gateway_sessions_active";
pub const SESSIONS_OPENED: &str = "gateway_sessions_opened_total";
pub const SESSIONS_CLOSED: &str = "gateway_sessions_closed_total";
pub const HANDSHAKE_REJECTIONS: &str = "gateway_handshake_rejections_total";
pub const MAX_CONNECTIONS: &str = "gateway_max_connections";
pub const SUBSCRIPTIONS_ACTIVE: &str = "gateway_subscriptions_active";
pub const REQUESTS: &str = "gateway_requests_total";
pub const REQUEST_ERRORS: &str = "gateway_request_errors_total";
pub const FEED_UPDATES: &str = "gateway_feed_updates_total";
pub const FEED_DROPPED: &str = "gateway_feed_dropped_updates_total";
pub const FEED_STALENESS: &str = "gateway_feed_staleness_seconds";
pub const FEED_DUPLICATES: &str = "gateway_feed_duplicate_updates_total";
pub const FEED_MALFORMED: &str = "gateway_feed_malformed_messages_total";
pub const FEED_LAG: &str = "gateway_feed_lag_seconds";
pub const FEED_CONNECTED: &str = "gateway_feed_connected";
pub const FEED_LIVE: &str = "gateway_feed_live";
pub const FEED_RECONNECTS: &str = "gateway_feed_reconnects_total";
pub const SYMBOLS: &str = "gateway_symbols";
pub const MESSAGES_SENT: &str = "gateway_messages_sent_total";
pub const BYTES_SENT: &str = "gateway_sent_bytes_total";
pub const CONFLATED_UPDATES: &str = "gateway_conflated_updates_total";
pub const SLOW_CONSUMER_CLOSES: &str = "gateway_slow_consumer_closes_total";
pub const HEARTBEAT_TIMEOUTS: &str = "gateway_heartbeat_timeouts_total";
pub const QUOTE_AGE: &str = "gateway_quote_age_seconds";
pub const FANOUT_DURATION: &str = "gateway_fanout_duration_seconds";
pub const SESSION_PENDING_MAX: &str = "gateway_session_pending_updates_max";
pub const BUILD_INFO: &str = "gateway_build_info";

/// Upper bounds of the latency histograms, in seconds: 50 µs to 5 s.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

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
}

impl EndReason {
    pub const ALL: [EndReason; 9] = [
        EndReason::Normal,
        EndReason::Shutdown,
        EndReason::Policy,
        EndReason::MessageTooBig,
        EndReason::Internal,
        EndReason::HeartbeatTimeout,
        EndReason::SlowConsumer,
        EndReason::Client,
        EndReason::IoError,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Normal => "normal",
            EndReason::Shutdown => "shutdown",
            EndReason::Policy => "policy",
            EndReason::MessageTooBig => "message_too_big",
            EndReason::Internal => "internal",
            EndReason::HeartbeatTimeout => "heartbeat_timeout",
            EndReason::SlowConsumer => "slow_consumer",
            EndReason::Client => "client",
            EndReason::IoError => "io_error",
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
}

/// A fixed-bucket histogram of atomics, one per shard, so recording never contends.
pub struct AtomicHistogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        AtomicHistogram { counts: Default::default(), sum_ns: AtomicU64::new(0) }
    }
}

impl AtomicHistogram {
    #[inline]
    pub fn record_ns(&self, ns: u64) {
        let secs = ns as f64 * 1e-9;
        let i = LATENCY_BUCKETS.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// Gauges read at scrape time from the gateway's state.
pub struct GaugeValues {
    pub sessions_active: u64,
    pub subscriptions_active: u64,
    pub symbols: u64,
    pub feed_staleness_seconds: f64,
    pub max_connections: u64,
}

/// The gateway's metrics: handles registered once, recorded without lookups.
pub struct Metrics {
    handle: PrometheusHandle,
    pub sessions_opened: Counter,
    sessions_closed: Vec<Counter>,
    handshake_rejections: Vec<Counter>,
    requests: Vec<Counter>,
    request_errors: Vec<Counter>,
    pub feed_updates: Counter,
    feed_dropped: Counter,
    feed_duplicates: Counter,
    feed_malformed: Vec<Counter>,
    feed_reconnects: Counter,
    /// Gateway receive time minus the quote's `ts`, recorded by the feed's thread only.
    feed_lag: AtomicHistogram,
    /// The feed's name (`sim`, `nats`, ...), the `feed` label of the feed gauges.
    feed_name: parking_lot::Mutex<&'static str>,
    feed_connected: AtomicU64,
    feed_live: AtomicU64,
    messages_sent: Vec<Counter>,
    bytes_sent: Vec<Counter>,
    conflated: Counter,
    slow_consumer_closes: Counter,
    heartbeat_timeouts: Counter,
    fanout_duration: Histogram,
    quote_age: Vec<AtomicHistogram>,
    pending_max: AtomicU64,
}

fn key(name: &'static str, labels: &[(&'static str, String)]) -> Key {
    Key::from_parts(name, labels.iter().map(|(k, v)| Label::new(*k, v.clone())).collect::<Vec<_>>())
}

impl Metrics {
    /// Registers every metric, with a zero for each label value so dashboards show series at once.
    pub fn new(shards: usize) -> Metrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(FANOUT_DURATION.to_string()), &LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        let meta = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));
        let counter = |name: &'static str, labels: &[(&'static str, String)]| {
            recorder.register_counter(&key(name, labels), &meta)
        };
        let by = |name: &'static str, label: &'static str, values: Vec<String>| -> Vec<Counter> {
            values.into_iter().map(|v| counter(name, &[(label, v)])).collect()
        };
        let describe = |name: &'static str, unit: Option<Unit>, help: &'static str| {
            recorder.describe_counter(name.into(), unit, help.into());
        };
        describe(SESSIONS_OPENED, None, "WebSocket sessions opened");
        describe(SESSIONS_CLOSED, None, "WebSocket sessions closed, by reason");
        describe(
            HANDSHAKE_REJECTIONS,
            None,
            "Upgrade requests refused before the upgrade, by HTTP status",
        );
        describe(REQUESTS, None, "Client requests received, by op (invalid: did not decode)");
        describe(REQUEST_ERRORS, None, "Error answers sent, by code");
        describe(FEED_UPDATES, None, "Quote updates received from the feed");
        describe(
            FEED_DROPPED,
            None,
            "Updates from the feed dropped because their seq was not above the stored one",
        );
        describe(
            FEED_DUPLICATES,
            None,
            "The same update received twice: a NATS redelivery (dropped by stream sequence), or a seq equal to the stored one (also in the dropped count)",
        );
        describe(
            FEED_MALFORMED,
            None,
            "Feed messages dropped because they are not a usable quote, by reason",
        );
        describe(
            FEED_RECONNECTS,
            None,
            "Times the feed's upstream connection came back after being lost",
        );
        describe(MESSAGES_SENT, None, "Messages written to sessions, by type");
        describe(
            BYTES_SENT,
            Some(Unit::Bytes),
            "Payload bytes written to sessions, by message type",
        );
        describe(
            CONFLATED_UPDATES,
            None,
            "Updates replaced by a newer one before a slow session could be sent them",
        );
        describe(
            SLOW_CONSUMER_CLOSES,
            None,
            "Sessions closed with 4008 because their socket accepted no data",
        );
        describe(
            HEARTBEAT_TIMEOUTS,
            None,
            "Sessions closed with 4000 because nothing arrived within the idle timeout",
        );
        recorder.describe_histogram(
            FANOUT_DURATION.into(),
            Some(Unit::Seconds),
            "Time to mark one update for all its subscribers on one shard".into(),
        );
        let statuses = REJECTION_STATUSES.iter().map(u16::to_string).collect();
        Metrics {
            sessions_opened: counter(SESSIONS_OPENED, &[]),
            sessions_closed: by(
                SESSIONS_CLOSED,
                "reason",
                EndReason::ALL.iter().map(|r| r.as_str().into()).collect(),
            ),
            handshake_rejections: by(HANDSHAKE_REJECTIONS, "status", statuses),
            requests: by(REQUESTS, "op", OpLabel::ALL.iter().map(|o| o.as_str().into()).collect()),
            request_errors: by(
                REQUEST_ERRORS,
                "code",
                proto::server::ErrorCode::ALL.iter().map(|c| c.as_str().into()).collect(),
            ),
            feed_updates: counter(FEED_UPDATES, &[]),
            feed_dropped: counter(FEED_DROPPED, &[]),
            feed_duplicates: counter(FEED_DUPLICATES, &[]),
            feed_malformed: by(
                FEED_MALFORMED,
                "reason",
                MalformedReason::ALL.iter().map(|r| r.as_str().into()).collect(),
            ),
            feed_reconnects: counter(FEED_RECONNECTS, &[]),
            feed_lag: AtomicHistogram::default(),
            feed_name: parking_lot::Mutex::new("none"),
            feed_connected: AtomicU64::new(0),
            feed_live: AtomicU64::new(0),
            messages_sent: by(
                MESSAGES_SENT,
                "type",
                MsgType::ALL.iter().map(|t| t.as_str().into()).collect(),
            ),
            bytes_sent: by(
                BYTES_SENT,
                "type",
                MsgType::ALL.iter().map(|t| t.as_str().into()).collect(),
            ),
            conflated: counter(CONFLATED_UPDATES, &[]),
            slow_consumer_closes: counter(SLOW_CONSUMER_CLOSES, &[]),
            heartbeat_timeouts: counter(HEARTBEAT_TIMEOUTS, &[]),
            fanout_duration: recorder.register_histogram(&key(FANOUT_DURATION, &[]), &meta),
            quote_age: (0..shards.max(1)).map(|_| AtomicHistogram::default()).collect(),
            pending_max: AtomicU64::new(0),

            handle,
        }
    }

    pub fn session_closed(&self, reason: EndReason) {
        self.sessions_closed[reason as usize].increment(1);
        match reason {
            EndReason::SlowConsumer => self.slow_consumer_closes.increment(1),
            EndReason::HeartbeatTimeout => self.heartbeat_timeouts.increment(1),
            _ => {}
        }
    }

    pub fn handshake_rejected(&self, status: u16) {
        if let Some(i) = REJECTION_STATUSES.iter().position(|&s| s == status) {
            self.handshake_rejections[i].increment(1);
        }
    }

    /// An update from the feed dropped (stale `seq` or unknown symbol).
    pub fn feed_update_dropped(&self) {
        self.feed_dropped.increment(1);
    }

    /// An update whose `seq` equals the stored one (counted in the dropped updates too).
    pub fn feed_duplicate(&self) {
        self.feed_duplicates.increment(1);
    }

    /// A feed message that is not a usable quote.
    pub fn feed_malformed(&self, reason: MalformedReason) {
        self.feed_malformed[reason as usize].increment(1);
    }

    /// The feed's upstream connection came back.
    pub fn feed_reconnected(&self) {
        self.feed_reconnects.increment(1);
    }

    /// Records gateway receive time minus the quote's `ts` (0 when the feed's clock is ahead).
    pub fn record_feed_lag(&self, received_ns: u64, ts: u64) {
        self.feed_lag.record_ns(received_ns.saturating_sub(ts));
    }

    /// Names the feed, for the `feed` label of the feed gauges.
    pub fn set_feed_name(&self, name: &'static str) {
        *self.feed_name.lock() = name;
    }

    /// Whether the feed's upstream connection is up (the simulator's always is).
    pub fn set_feed_connected(&self, connected: bool) {
        self.feed_connected.store(u64::from(connected), Ordering::Relaxed);
    }

    /// Whether the feed is connected and loaded (what `/readyz` requires besides freshness).
    pub fn set_feed_live(&self, live: bool) {
        self.feed_live.store(u64::from(live), Ordering::Relaxed);
    }

    pub fn request(&self, op: OpLabel) {
        self.requests[op as usize].increment(1);
    }

    pub fn request_error(&self, code: proto::server::ErrorCode) {
        self.request_errors[code as usize].increment(1);
    }

    /// Adds one writer batch.
    pub fn add_tally(&self, tally: &Tally) {
        for (i, &n) in tally.messages.iter().enumerate() {
            if n > 0 {
                self.messages_sent[i].increment(n);
                self.bytes_sent[i].increment(tally.bytes[i]);
            }
        }
        if tally.conflated > 0 {
            self.conflated.increment(tally.conflated);
        }
    }

    /// The quote-age histogram of a shard.
    pub fn quote_age(&self, shard: usize) -> &AtomicHistogram {
        &self.quote_age[shard % self.quote_age.len()]
    }

    pub fn record_fanout(&self, elapsed: Duration) {
        self.fanout_duration.record(elapsed.as_secs_f64());
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
        let mut out = self.handle.render();
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        };
        gauge(SESSIONS_ACTIVE, "WebSocket sessions open now", gauges.sessions_active as f64);
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
        render_histogram(
            &mut out,
            QUOTE_AGE,
            "Age of a quote (now minus its ts) when written to a session's socket",
            &self.quote_age,
        );
        render_histogram(
            &mut out,
            FEED_LAG,
            "Gateway receive time minus the quote's ts, per update from the feed (clock skew included)",
            std::slice::from_ref(&self.feed_lag),
        );
        render_process(&mut out);
        let _ = writeln!(
            out,
            "# HELP {BUILD_INFO} Build of the running gateway\n# TYPE {BUILD_INFO} gauge\n{BUILD_INFO}{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

/// A histogram of atomics (summed over its parts) in the Prometheus text form.
fn render_histogram(out: &mut String, name: &str, help: &str, parts: &[AtomicHistogram]) {
    let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
    let mut sum_ns = 0u64;
    for h in parts {
        for (c, a) in counts.iter_mut().zip(&h.counts) {
            *c += a.load(Ordering::Relaxed);
        }
        sum_ns += h.sum_ns.load(Ordering::Relaxed);
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += counts[i];
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
    }
    cumulative += counts[LATENCY_BUCKETS.len()];
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum {}", sum_ns as f64 * 1e-9);
    let _ = writeln!(out, "{name}_count {cumulative}");
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
