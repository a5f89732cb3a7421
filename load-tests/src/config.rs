//! Command-line flags (`Cli`), and the `Plan` each worker runs: the flags resolved into the
//! exact clients, timings and addresses one worker process is responsible for.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::stats::Class;
use crate::symbols::Dist;
use crate::target::Target;

/// Room kept under the open-file limit for the runtime, pipes and the odd HTTP request.
pub const FD_RESERVE: u64 = 200;
/// Connections per source address at most: the ephemeral port range here is ~28,000 wide,
/// and a worker never uses more than one process's worth (under 20,000) per address.
pub const MAX_CLIENTS_PER_SOURCE_ADDR: u64 = 28_000;

/// Load tester for the market data gateway: opens many WebSocket (or SSE) clients, subscribes
/// each to K symbols, and measures quote age at receipt, deliveries/s, conflation (seq jumps),
/// ordering, errors and closes; `--storm` drops them all at once and measures their resume.
/// Progress goes to stderr every second; a summary to stdout at the end.
///
/// Exit code: 0 every SLO met, 1 an SLO missed, 2 bad usage or the run could not be made.
#[derive(Debug, Clone, Parser)]
#[command(name = "load-tests", version)]
pub struct Cli {
    /// WebSocket URL of the gateway (ws:// only); several gateways: repeat --url or give a
    /// comma-separated list, and client i goes to URL i mod N (the report has a row per gateway,
    /// by `welcome.server`). `/symbols` and `/metrics` are read from the first URL's host:port.
    #[arg(
        long,
        env = "LOADTEST_URL",
        default_value = "ws://127.0.0.1:8080/ws",
        value_delimiter = ','
    )]
    pub url: Vec<String>,

    /// How each client reads: `ws`, a WebSocket session with the subscription sent as a request;
    /// `sse`, a `GET /sse` event stream with the subscription in its query (PROTOCOL.md §6).
    /// With `sse` a URL whose path is `/ws` (the default's) means `/sse` on the same host and
    /// port; `http://` URLs are taken as well.
    #[arg(long, value_enum, default_value = "ws")]
    pub transport: Transport,

    /// Reconnect storm: when the measured window starts, every reading client drops its
    /// connection at once (closes the socket, no close handshake), waits `--storm-pause-ms`,
    /// and reconnects at once resuming from the last `seq` it holds (WebSocket: `resume` in
    /// its subscribe; SSE: `resume_epoch` and `since`). Reported: the time until every client
    /// is live again (its `ack`), symbols resumed versus snapshotted (from the acks), resume
    /// gaps, and the gateway's CPU and memory during the storm. Stuck clients stay stuck.
    #[arg(long)]
    pub storm: bool,

    /// How long the clients of a storm stay disconnected, ms: the updates of that time are what
    /// their resume replays. The window must be longer than this plus a second.
    #[arg(long, default_value_t = 1_000)]
    pub storm_pause_ms: u64,

    /// Number of clients (WebSocket sessions or SSE streams) to open.
    #[arg(short = 'c', long, default_value_t = 100)]
    pub clients: u64,

    /// New connections per second while ramping up (all clients are opened in clients/ramp-rate s).
    #[arg(long, default_value_t = 1000.0)]
    pub ramp_rate: f64,

    /// Symbols each client subscribes to (K), in one subscribe request.
    #[arg(short = 'k', long = "subs", default_value_t = 10)]
    pub subs: usize,

    /// Comma-separated symbols to draw from, instead of the gateway's `GET /symbols`.
    #[arg(long, value_delimiter = ',')]
    pub symbols: Option<Vec<String>>,

    /// How each client's K symbols are drawn from the list.
    #[arg(long, value_enum, default_value = "uniform")]
    pub dist: Dist,

    /// Zipf exponent s for `--dist zipf`: P(rank k) ∝ 1/k^s, rank 1 the list's first symbol.
    #[arg(long, default_value_t = 1.0)]
    pub zipf_s: f64,

    /// `throttle_ms` sent in every subscribe (0: every update).
    #[arg(long, default_value_t = 0)]
    pub throttle_ms: u64,

    /// Fraction of clients that are slow: they read at most `--slow-rate` messages/s.
    #[arg(long, default_value_t = 0.0)]
    pub slow_fraction: f64,

    /// Messages per second a slow client reads at most.
    #[arg(long, default_value_t = 10.0)]
    pub slow_rate: f64,

    /// Fraction of clients that are stuck: they subscribe, then never read.
    #[arg(long, default_value_t = 0.0)]
    pub stuck_fraction: f64,

    /// Churning sessions beside the clients: each subscribes to `["*"]`, reads for
    /// `--churn-hold-ms`, closes with 1000 and reconnects, until the run ends. Counted apart,
    /// never in the latency figures (the soak scenario's session churn).
    #[arg(long, default_value_t = 0)]
    pub churn: u64,

    /// How long each churning session stays open, ms.
    #[arg(long, default_value_t = 2_000)]
    pub churn_hold_ms: u64,

    /// Seconds measured, after the ramp and the warmup.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds after the ramp that are run but left out of the figures.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// SLO: the fast clients' p99 quote age at receipt, in ms, at most this.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,

    /// SLO: quotes delivered per second (all clients, measured window) at least this.
    #[arg(long)]
    pub min_deliveries_per_sec: Option<f64>,

    /// SLO: order violations (a symbol's seq not strictly increasing for a client) at most this.
    #[arg(long, default_value_t = 0)]
    pub max_order_violations: u64,

    /// SLO: failed connection attempts (refused, timed out, non-101 answers) at most this.
    #[arg(long)]
    pub max_connect_failures: Option<u64>,

    /// PID of the gateway process on this machine: its CPU use and RSS are reported beside ours.
    #[arg(long)]
    pub gateway_pid: Option<u32>,

    /// Do not scrape the gateway's `/metrics` at the window's start and end (its own quote age,
    /// feed rate, conflation and slow-consumer closes are then missing from the report).
    #[arg(long)]
    pub no_gateway_metrics: bool,

    /// Access token, sent as `Authorization: Bearer TOKEN` in every upgrade request.
    #[arg(long, env = "LOADTEST_TOKEN")]
    pub token: Option<String>,

    /// Give up a connection attempt (TCP connect + upgrade) after this many ms.
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,

    /// Clients per worker process at most (default: the open-file hard limit less a reserve).
    /// More clients than this are spread over several worker processes.
    #[arg(long)]
    pub clients_per_process: Option<u64>,

    /// Comma-separated source addresses to bind client sockets to, used in turn. Default: none
    /// with one process; with several processes against a 127.x target, worker w binds to
    /// 127.0.0.(2+w), so each has its own ~28k ephemeral ports.
    #[arg(long, value_delimiter = ',')]
    pub source_addrs: Option<Vec<IpAddr>>,

    /// Each client's read buffer, bytes (grown only for a frame that does not fit).
    #[arg(long, default_value_t = 16 * 1024)]
    pub read_buffer: usize,

    /// SO_RCVBUF of each client socket, bytes (0: the kernel's default and autotuning).
    #[arg(long, default_value_t = 0)]
    pub rcvbuf: usize,

    /// Seed for symbol draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// No progress lines.
    #[arg(short, long)]
    pub quiet: bool,

    /// Internal: run as a worker process, plan on stdin, events as JSON lines on stdout.
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// How clients speak to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// `GET /ws`: a WebSocket session per client.
    Ws,
    /// `GET /sse`: a Server-Sent Events stream per client.
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// What one worker process runs. The coordinator makes one per worker and sends it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub transport: Transport,
    /// A reconnect storm at the start of the window (`--storm`), and its pause.
    pub storm: bool,
    pub storm_pause_ms: u64,
    /// The gateways; client i connects to `targets[i % len]`.
    pub targets: Vec<Target>,
    pub token: Option<String>,
    pub symbols: Vec<String>,
    pub subs: usize,
    pub dist: Dist,
    pub zipf_s: f64,
    pub throttle_ms: u64,
    /// Clients in the whole run, and this worker's range of them.
    pub total_clients: u64,
    pub first_client: u64,
    pub clients: u64,
    /// Slow and stuck clients in the whole run (spread evenly over the client indexes).
    pub slow_clients: u64,
    pub stuck_clients: u64,
    pub slow_rate: f64,
    pub seed: u64,
    /// Wall-clock start of the ramp, ns since the Unix epoch, the same for every worker.
    pub epoch_ns: u64,
    pub ramp_rate: f64,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    /// Source addresses this worker's clients bind to, used in turn; empty: let the kernel pick.
    pub source_addrs: Vec<IpAddr>,
    pub connect_timeout_ms: u64,
    pub read_buffer: usize,
    pub rcvbuf: usize,
    /// Churning `["*"]` sessions this worker runs (worker 0 runs them all), and how long each
    /// stays open.
    pub churn: u64,
    pub churn_hold_ms: u64,
}

impl Plan {
    /// When client `i` (a global index) starts connecting, ns since the Unix epoch.
    pub fn start_ns(&self, i: u64) -> u64 {
        self.epoch_ns + (i as f64 * 1e9 / self.ramp_rate) as u64
    }

    /// The measured window [start, end), ns since the Unix epoch.
    pub fn window(&self) -> (u64, u64) {
        let start = self.start_ns(self.total_clients) + self.warmup_ns;
        (start, start + self.duration_ns)
    }

    /// When the clients of a storm drop (the window's start) and when they reconnect, ns since
    /// the Unix epoch.
    pub fn storm_times(&self) -> (u64, u64) {
        let drop_at = self.window().0;
        (drop_at, drop_at + self.storm_pause_ms * 1_000_000)
    }

    /// The gateway client `i` (a global index) connects to.
    pub fn target_of(&self, i: u64) -> usize {
        (i % self.targets.len().max(1) as u64) as usize
    }

    /// The class of client `i`: stuck and slow clients spread evenly over the indexes, so
    /// every part of the ramp and every worker has its share.
    pub fn class_of(&self, i: u64) -> Class {
        let n = self.total_clients.max(1);
        let stuck_before = |i: u64| (i as u128 * self.stuck_clients as u128 / n as u128) as u64;
        if stuck_before(i + 1) > stuck_before(i) {
            return Class::Stuck;
        }
        let rest = (n - self.stuck_clients).max(1);
        let j = i - stuck_before(i);
        let slow_before = |j: u64| (j as u128 * self.slow_clients as u128 / rest as u128) as u64;
        if slow_before(j + 1) > slow_before(j) {
            Class::Slow
        } else {
            Class::Fast
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(total: u64, slow: u64, stuck: u64) -> Plan {
        Plan {
            transport: Transport::Ws,
            storm: false,
            storm_pause_ms: 0,
            targets: vec![Target::parse("ws://127.0.0.1:1/ws").unwrap()],
            token: None,
            symbols: vec![],
            subs: 1,
            dist: Dist::Uniform,
            zipf_s: 1.0,
            throttle_ms: 0,
            total_clients: total,
            first_client: 0,
            clients: total,
            slow_clients: slow,
            stuck_clients: stuck,
            slow_rate: 1.0,
            seed: 0,
            epoch_ns: 1_000,
            ramp_rate: 100.0,
            warmup_ns: 5,
            duration_ns: 7,
            source_addrs: vec![],
            connect_timeout_ms: 1,
            read_buffer: 1,
            rcvbuf: 0,
            churn: 0,
            churn_hold_ms: 1,
        }
    }

    #[test]
    fn classes_have_exact_counts() {
        for (total, slow, stuck) in
            [(1000, 100, 100), (7, 2, 3), (10, 0, 10), (10, 10, 0), (1, 0, 0)]
        {
            let p = plan(total, slow, stuck);
            let count = |c| (0..total).filter(|&i| p.class_of(i) == c).count() as u64;
            assert_eq!(count(Class::Stuck), stuck, "{total} {slow} {stuck}");
            assert_eq!(count(Class::Slow), slow, "{total} {slow} {stuck}");
            assert_eq!(count(Class::Fast), total - slow - stuck);
        }
    }

    #[test]
    fn urls_repeat_or_comma_separate_and_clients_alternate_over_them() {
        let cli = Cli::parse_from([
            "load-tests",
            "--url",
            "ws://a:1/ws,ws://b:2/ws",
            "--url",
            "ws://c:3/ws",
        ]);
        assert_eq!(cli.url, ["ws://a:1/ws", "ws://b:2/ws", "ws://c:3/ws"]);
        let mut p = plan(5, 0, 0);
        p.targets = cli.url.iter().map(|u| Target::parse(u).unwrap()).collect();
        assert_eq!((0..5).map(|i| p.target_of(i)).collect::<Vec<_>>(), [0, 1, 2, 0, 1]);
    }

    #[test]
    fn window_follows_ramp_and_warmup() {
        let p = plan(200, 0, 0);
        assert_eq!(p.start_ns(100), 1_000 + 1_000_000_000);
        assert_eq!(p.window(), (1_000 + 2_000_000_000 + 5, 1_000 + 2_000_000_000 + 12));
    }
}
