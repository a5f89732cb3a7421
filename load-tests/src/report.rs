//! The run's outcome: the JSON report (`--json`), the human summary, and the SLO checks that
//! decide the exit code. Built once, from the merged worker figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::churn::ChurnStats;
use crate::config::Cli;
use crate::gateway_metrics::GatewayMetrics;
use crate::stats::{Class, ClassStats, ConnectStats, ServerStats};
use crate::storm::StormReport;

/// Percentiles of a histogram, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// `unit_ms`: how many histogram units make a millisecond.
    pub fn of(h: &Histogram<u64>, unit_ms: f64) -> Percentiles {
        if h.is_empty() {
            return Percentiles {
                count: 0,
                min: 0.0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 / unit_ms;
        Percentiles {
            count: h.len(),
            min: h.min() as f64 / unit_ms,
            mean: h.mean() / unit_ms,
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: h.max() as f64 / unit_ms,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassReport {
    pub clients: u64,
    pub connected: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub age_ms: Percentiles,
    pub seq_jumps: u64,
    pub missed_updates: u64,
    pub order_violations: u64,
    pub snapshots: u64,
    pub welcomes: u64,
    pub acks: u64,
    pub heartbeats: u64,
    pub pongs: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub closes_by_code: BTreeMap<String, u64>,
    pub unexpected_symbols: u64,
    pub welcome_not_first: u64,
    pub parse_errors: u64,
    pub protocol_errors: u64,
}

impl ClassReport {
    fn of(c: &ClassStats, window_s: f64) -> ClassReport {
        ClassReport {
            clients: c.clients,
            connected: c.connected,
            deliveries: c.deliveries,
            deliveries_per_sec: c.deliveries as f64 / window_s,
            age_ms: Percentiles::of(&c.age_ns, 1e6),
            seq_jumps: c.seq_jumps,
            missed_updates: c.missed_updates,
            order_violations: c.order_violations,
            snapshots: c.snapshots,
            welcomes: c.welcomes,
            acks: c.acks,
            heartbeats: c.heartbeats,
            pongs: c.pongs,
            errors_by_code: c.errors_by_code.clone(),
            closes_by_code: c.closes_by_code.clone(),
            unexpected_symbols: c.unexpected_symbols,
            welcome_not_first: c.welcome_not_first,
            parse_errors: c.parse_errors,
            protocol_errors: c.protocol_errors,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub attempts: u64,
    pub successes: u64,
    pub failures: u64,
    pub failures_by_reason: BTreeMap<String, u64>,
    /// TCP connect + WebSocket upgrade.
    pub latency_ms: Percentiles,
    pub peak_open: u64,
    pub open_at_window_start: u64,
    pub open_at_window_end: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub url: String,
    pub clients: u64,
    pub ramp_rate: f64,
    pub subs: usize,
    pub symbols_available: usize,
    pub dist: String,
    pub zipf_s: f64,
    pub throttle_ms: u64,
    pub slow_clients: u64,
    pub slow_rate: f64,
    pub stuck_clients: u64,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub workers: usize,
    pub source_addrs: Vec<String>,
    pub churn: u64,
    pub churn_hold_ms: u64,
    /// `ws` or `sse`.
    pub transport: String,
    pub storm: bool,
    pub storm_pause_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuReport {
    pub processes: usize,
    pub cpu_seconds: f64,
    /// CPU seconds per second of the measured window, in % of one core.
    pub cpu_percent_of_core: f64,
    /// Seconds its threads were runnable but waited for a CPU, in the window: well above zero,
    /// the machine was busy with something else and the latencies include that wait.
    pub run_queue_wait_seconds: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayReport {
    pub pid: u32,
    pub cpu_seconds: Option<f64>,
    pub cpu_percent_of_core: Option<f64>,
    /// Seconds the gateway's threads waited for a CPU in the window (see `CpuReport`).
    pub run_queue_wait_seconds: Option<f64>,
    /// RSS before the first client connected, at the window's start and end, and the most seen.
    pub rss_kib_before: Option<u64>,
    pub rss_kib_window_start: Option<u64>,
    pub rss_kib_window_end: Option<u64>,
    pub rss_kib_max: Option<u64>,
    /// (RSS at window end − RSS before) / sessions open at window end.
    pub rss_bytes_per_session: Option<f64>,
}

/// How busy each core of the machine was over the window, whoever used it: with the tester's
/// and the gateway's own CPU beside it, what is left was other work on the machine.
#[derive(Debug, Clone, Serialize)]
pub struct CoreReport {
    pub core: usize,
    pub busy_percent: f64,
    /// Taken by the hypervisor for other guests.
    pub steal_percent: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub limit: f64,
    pub value: f64,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Slo {
    pub passed: bool,
    pub checks: Vec<Check>,
}

/// What one gateway gave its sessions.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// `welcome.server`.
    pub server: String,
    pub sessions: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    /// The fast clients' quote age at receipt.
    pub fast_age_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub version: String,
    pub started_at_unix_ns: u64,
    pub settings: Settings,
    pub window_seconds: f64,
    pub connect: ConnectReport,
    /// Every class together.
    pub total: ClassReport,
    pub fast: ClassReport,
    pub slow: ClassReport,
    pub stuck: ClassReport,
    /// One row per gateway, by `welcome.server` (several with several URLs or a load balancer).
    pub per_gateway: Vec<ServerReport>,
    pub tester: CpuReport,
    pub gateway: Option<GatewayReport>,
    /// The gateway's `/metrics` over the window (absent with `--no-gateway-metrics` or when it
    /// could not be read).
    pub gateway_metrics: Option<GatewayMetrics>,
    /// Every core's use over the window (`/proc/stat`).
    pub cores: Vec<CoreReport>,
    /// The churning `["*"]` sessions of `--churn`, over the whole run (absent without it).
    pub churn: Option<ChurnStats>,
    /// The reconnect storm of `--storm` (absent without it).
    pub storm: Option<StormReport>,
    pub slo: Slo,
}

/// The merged figures of every worker.
pub struct Merged {
    pub classes: Vec<ClassStats>,
    pub servers: BTreeMap<String, ServerStats>,
    pub connect: ConnectStats,
    pub peak_open: u64,
    pub open_at_window_start: u64,
    pub open_at_window_end: u64,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        cli: &Cli,
        settings: Settings,
        started_at_unix_ns: u64,
        window_s: f64,
        m: &Merged,
        tester: CpuReport,
        gateway: Option<GatewayReport>,
        gateway_metrics: Option<GatewayMetrics>,
        cores: Vec<CoreReport>,
    ) -> Report {
        let class = |c: Class| ClassReport::of(&m.classes[c.index()], window_s);
        let mut all = ClassStats::new();
        for c in &m.classes {
            all.merge(c);
        }
        let total = ClassReport::of(&all, window_s);
        let fast = class(Class::Fast);
        let connect = ConnectReport {
            attempts: m.connect.attempts,
            successes: m.connect.successes,
            failures: m.connect.failures(),
            failures_by_reason: m.connect.failures_by_reason.clone(),
            latency_ms: Percentiles::of(&m.connect.latency_us, 1e3),
            peak_open: m.peak_open,
            open_at_window_start: m.open_at_window_start,
            open_at_window_end: m.open_at_window_end,
        };

        let mut checks = Vec::new();
        let mut check = |name: &str, limit: f64, value: f64, passed: bool| {
            checks.push(Check { name: name.into(), limit, value, passed })
        };
        if let Some(limit) = cli.max_p99_ms {
            // The fast clients' tail is the SLO; slow and stuck ones lag by design.
            let p99 = if fast.age_ms.count > 0 { fast.age_ms.p99 } else { total.age_ms.p99 };
            let measured = fast.age_ms.count > 0 || total.age_ms.count > 0;
            check("max_p99_ms", limit, p99, measured && p99 <= limit);
        }
        if let Some(limit) = cli.min_deliveries_per_sec {
            let v = total.deliveries_per_sec;
            check("min_deliveries_per_sec", limit, v, v >= limit);
        }
        let v = total.order_violations;
        check(
            "max_order_violations",
            cli.max_order_violations as f64,
            v as f64,
            v <= cli.max_order_violations,
        );
        if let Some(limit) = cli.max_connect_failures {
            let v = connect.failures;
            check("max_connect_failures", limit as f64, v as f64, v <= limit);
        }
        let passed = checks.iter().all(|c| c.passed);

        Report {
            tool: "load-tests".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            started_at_unix_ns,
            settings,
            window_seconds: window_s,
            connect,
            total,
            fast,
            slow: class(Class::Slow),
            stuck: class(Class::Stuck),
            per_gateway: m
                .servers
                .iter()
                .map(|(server, s)| ServerReport {
                    server: server.clone(),
                    sessions: s.sessions,
                    deliveries: s.deliveries,
                    deliveries_per_sec: s.deliveries as f64 / window_s.max(1e-9),
                    fast_age_ms: Percentiles::of(&s.age_ns, 1e6),
                })
                .collect(),
            tester,
            gateway,
            gateway_metrics,
            cores,
            churn: None,
            storm: None,
            slo: Slo { passed, checks },
        }
    }

    /// Adds the storm's section and its SLO checks: every dropped client live again, and no
    /// contract breach in the resumes (a snapshot for a resumed symbol, an ack without
    /// `resumed`).
    pub fn add_storm(&mut self, storm: StormReport) {
        let live = storm.live_again == storm.dropped && storm.dropped > 0;
        self.slo.checks.push(Check {
            name: "storm_all_live_again".into(),
            limit: storm.dropped as f64,
            value: storm.live_again as f64,
            passed: live,
        });
        self.slo.checks.push(Check {
            name: "storm_resume_breaches".into(),
            limit: 0.0,
            value: storm.resume_breaches as f64,
            passed: storm.resume_breaches == 0,
        });
        self.slo.passed = self.slo.checks.iter().all(|c| c.passed);
        self.storm = Some(storm);
    }

    /// The human summary printed at the end.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let st = &self.settings;
        let _ = writeln!(
            s,
            "load-tests: {} {} clients × {} symbols ({}) against {}, {:.1} s measured after {:.1} s warmup",
            st.clients, st.transport, st.subs, st.dist, st.url, self.window_seconds, st.warmup_s
        );
        let c = &self.connect;
        let _ = writeln!(
            s,
            "  connect   : {} ok, {} failed {:?}; latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms; \
             open at window start/end {}/{}, peak {}",
            c.successes,
            c.failures,
            c.failures_by_reason,
            c.latency_ms.p50,
            c.latency_ms.p99,
            c.latency_ms.max,
            c.open_at_window_start,
            c.open_at_window_end,
            c.peak_open
        );
        let t = &self.total;
        let _ = writeln!(
            s,
            "  total     : {} deliveries, {:.0}/s; seq jumps {} ({} updates missed); \
             order violations {}; errors {:?}; closes {:?}",
            t.deliveries,
            t.deliveries_per_sec,
            t.seq_jumps,
            t.missed_updates,
            t.order_violations,
            t.errors_by_code,
            t.closes_by_code
        );
        if t.parse_errors + t.protocol_errors + t.unexpected_symbols + t.welcome_not_first > 0 {
            let _ = writeln!(
                s,
                "  PROBLEMS  : parse errors {}, protocol errors {}, unexpected symbols {}, \
                 welcome not first {}",
                t.parse_errors, t.protocol_errors, t.unexpected_symbols, t.welcome_not_first
            );
        }
        for (name, r) in [("fast", &self.fast), ("slow", &self.slow), ("stuck", &self.stuck)] {
            if r.clients == 0 {
                continue;
            }
            let a = &r.age_ms;
            let _ = writeln!(
                s,
                "  {name:<10}: {} clients ({} connected), {:.0} deliveries/s; age ms p50 {:.3} \
                 p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; seq jumps {}; violations {}; closes {:?}",
                r.clients,
                r.connected,
                r.deliveries_per_sec,
                a.p50,
                a.p90,
                a.p99,
                a.p999,
                a.max,
                r.seq_jumps,
                r.order_violations,
                r.closes_by_code
            );
        }
        if let Some(c) = &self.churn {
            let _ = writeln!(
                s,
                "  churn     : {} sessions of {} ms ({} at once), {} closed cleanly; {} messages; \
                 connect failures {:?}; server closes {:?}",
                c.sessions,
                st.churn_hold_ms,
                st.churn,
                c.clean_closes,
                c.messages,
                c.failures_by_reason,
                c.server_closes_by_code
            );
        }
        if let Some(r) = &self.storm {
            let ms = |v: Option<f64>| v.map_or("never".into(), |v| format!("{v:.1} ms"));
            let pct = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0}%"));
            let _ = writeln!(
                s,
                "  storm     : {} dropped, {} live again after a {} ms pause; all live {}; \
                 per client p50 {:.1} ms p99 {:.1} ms max {:.1} ms; failed attempts {:?}",
                r.dropped,
                r.live_again,
                r.pause_ms,
                ms(r.all_live_ms),
                r.live_ms.p50,
                r.live_ms.p99,
                r.live_ms.max,
                r.failed_attempts_by_reason
            );
            let _ = writeln!(
                s,
                "  storm     : symbols resumed {} / snapshotted {} ({:.1}% resumed; gateway says \
                 {} / {}); replays exact {}, with a gap {} ({} updates), breaches {}; \
                 {} replayed quotes",
                r.resumed_symbols,
                r.snapshotted_symbols,
                r.resumed_percent,
                r.gateway_resumed_symbols.map_or("?".into(), |v| format!("{v:.0}")),
                r.gateway_snapshotted_symbols.map_or("?".into(), |v| format!("{v:.0}")),
                r.resume_exact,
                r.resume_gaps,
                r.resume_gap_updates,
                r.resume_breaches,
                r.replayed_quotes
            );
            let _ = writeln!(
                s,
                "  storm     : gateway cpu {} of a core until all live, {} over the first \
                 second; RSS KiB before {} / max {} / after {}",
                pct(r.gateway_cpu_percent_until_live),
                pct(r.gateway_cpu_percent_first_second),
                opt(r.gateway_rss_kib_before),
                opt(r.gateway_rss_kib_max),
                opt(r.gateway_rss_kib_after)
            );
        }
        if self.per_gateway.len() > 1 {
            for g in &self.per_gateway {
                let a = &g.fast_age_ms;
                let _ = writeln!(
                    s,
                    "  gateway {:<10}: {} sessions, {:.0} deliveries/s; fast age ms p50 {:.3} p99 {:.3} max {:.3}",
                    g.server, g.sessions, g.deliveries_per_sec, a.p50, a.p99, a.max
                );
            }
        }
        let _ = writeln!(
            s,
            "  tester    : {:.1}% of a core ({} process{}); waited {:.2} s for a CPU",
            self.tester.cpu_percent_of_core,
            self.tester.processes,
            if self.tester.processes == 1 { "" } else { "es" },
            self.tester.run_queue_wait_seconds
        );
        if let Some(g) = &self.gateway {
            let _ = writeln!(
                s,
                "  gateway   : pid {}, {} of a core, waited {} s for a CPU; RSS KiB before {} / \
                 window end {} / max {}; per session {}",
                g.pid,
                g.cpu_percent_of_core.map_or("?".into(), |v| format!("{v:.1}%")),
                g.run_queue_wait_seconds.map_or("?".into(), |v| format!("{v:.2}")),
                opt(g.rss_kib_before),
                opt(g.rss_kib_window_end),
                opt(g.rss_kib_max),
                g.rss_bytes_per_session.map_or("?".into(), |v| format!("{:.0} B", v)),
            );
        }
        if !self.cores.is_empty() {
            let cores: Vec<String> = self
                .cores
                .iter()
                .map(|c| {
                    format!(
                        "core {} {:.0}% busy, {:.0}% stolen",
                        c.core, c.busy_percent, c.steal_percent
                    )
                })
                .collect();
            let _ = writeln!(s, "  machine   : {}", cores.join("; "));
        }
        if let Some(m) = &self.gateway_metrics {
            let ms = |v: Option<f64>| v.map_or("?".into(), |v| format!("≤ {v} ms"));
            let n = |v: Option<f64>| v.map_or("?".into(), |v| format!("{v:.0}"));
            let _ = writeln!(
                s,
                "  /metrics  : gateway quote age (ts → write) p50 {} p99 {} p99.9 {}; feed {}/s; \
                 quotes sent {}/s; conflated {}; slow-consumer closes {}",
                ms(m.quote_age_p50_ms_at_most),
                ms(m.quote_age_p99_ms_at_most),
                ms(m.quote_age_p999_ms_at_most),
                n(m.feed_updates_per_sec),
                n(m.quotes_sent_per_sec),
                n(m.conflated_updates),
                n(m.slow_consumer_closes),
            );
        }
        for ch in &self.slo.checks {
            let _ = writeln!(
                s,
                "  SLO {:<24} limit {:<12} value {:<12.3} {}",
                ch.name,
                ch.limit,
                ch.value,
                if ch.passed { "met" } else { "MISSED" }
            );
        }
        let _ = writeln!(
            s,
            "  result    : {}",
            if self.slo.passed { "every SLO met" } else { "SLO MISSED" }
        );
        s
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}
