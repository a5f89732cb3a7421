//! Configuration: one flag and one environment variable per setting, every default a named
//! constant here, with the reason for its value. `gateway --help` shows them all.

use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::Parser;

/// Contract default (section 1).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Contract default (section 1): the simulator inside the process.
pub const DEFAULT_FEED: &str = "sim";
/// At least one message every 5 s lets a dashboard call a feed dead within seconds, at a
/// negligible cost (a 40-byte frame per idle session every 5 s).
pub const DEFAULT_HEARTBEAT_MS: u64 = 5_000;
/// WebSocket Pings as often as heartbeats: a live client answers each with a Pong.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 5_000;
/// Three missed ping intervals: long enough for a busy browser tab, short enough to free a
/// dead session's resources within seconds.
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 15_000;
/// A socket that accepts nothing for 5 s while updates wait is not a slow reader but a stuck
/// one; holding it longer only ties up memory and a file descriptor.
pub const DEFAULT_SLOW_CLIENT_TIMEOUT_MS: u64 = 5_000;
/// More symbols than any screen shows, fewer than lets one session cost the fan-out much.
pub const DEFAULT_MAX_SUBSCRIPTIONS: u32 = 1_000;
/// Requests are small: 64 KiB holds a subscribe naming a few thousand symbols.
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 65_536;
/// Subscription changes are rare; 50/s is far above any real client and caps the cost of a
/// hostile one (each request is answered).
pub const DEFAULT_MAX_REQUESTS_PER_SEC: u32 = 50;
/// Bad requests tolerated per minute before the session is closed with 1008: enough for a
/// developer's typos, too few for a fuzzer.
pub const DEFAULT_ERROR_BUDGET: u32 = 20;
/// Under the 20,000 open files a process may have here, leaving room for everything else.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 19_500;
/// Off by default: behind a load balancer every client has the same address.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 0;
/// A client on any real network completes its upgrade in well under a second; a slowloris
/// one holds a socket no longer than this.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Long enough to send every session its close frame, short enough for an orchestrator's stop.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5_000;
/// `/readyz` says not ready when no quote arrived within this window.
pub const DEFAULT_STALENESS_MS: u64 = 5_000;
/// Kernel send buffer per session (Linux doubles it). Bytes in the kernel can no longer be
/// conflated: a small buffer keeps a slow reader's backlog in the dirty slots, where it
/// conflates, instead of seconds of stale quotes (see docs/backpressure.md).
pub const DEFAULT_SEND_BUFFER_BYTES: usize = 8 * 1024;
/// Bytes a writer frames before it flushes: several quotes per write system call, and a
/// bound on what is committed beyond the kernel buffer.
pub const DEFAULT_WRITE_BUDGET_BYTES: usize = 8 * 1024;
/// Client requests are small; tungstenite's 128 KiB default would cost 1.2 GiB at 10,000
/// sessions.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 1024;
/// Simulated updates per second, across all symbols.
pub const DEFAULT_SIM_RATE: u32 = feed_sim::DEFAULT_RATE;
/// Simulated symbols.
pub const DEFAULT_SIM_SYMBOLS: usize = feed_sim::DEFAULT_SYMBOLS;
/// Simulator seed.
pub const DEFAULT_SIM_SEED: u64 = feed_sim::DEFAULT_SEED;
/// Skewed, as a real market is: a few hot symbols, a long quiet tail. `uniform` is for
/// benchmarks against servers whose feeds spread updates evenly (`make bench-peers`).
pub const DEFAULT_SIM_ACTIVITY: SimActivity = SimActivity::Skewed;

/// How the simulated feed spreads its updates over the symbols (`--sim-activity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimActivity {
    /// Symbol i (by rank) gets updates in proportion to 1/(i+1): a few hot symbols, a long tail
    Skewed,
    /// Every symbol equally often
    Uniform,
}

impl From<SimActivity> for feed_sim::Activity {
    fn from(a: SimActivity) -> feed_sim::Activity {
        match a {
            SimActivity::Skewed => feed_sim::Activity::Skewed,
            SimActivity::Uniform => feed_sim::Activity::Uniform,
        }
    }
}

/// Real-time market data push gateway: quotes over WebSocket, with snapshots, conflation,
/// heartbeats and hard limits. Every flag can also be set by the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version, about, long_about = None)]
pub struct Config {
    /// Address to serve HTTP and WebSocket on (port 0: an ephemeral port)
    #[arg(long, env = "GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Quote source: `sim` (the simulator in this process) or a NATS URL (nats://HOST:PORT)
    #[arg(long, env = "GATEWAY_FEED", default_value = DEFAULT_FEED)]
    pub feed: String,

    /// Name of this node, announced in `welcome` (default: the host name)
    #[arg(long, env = "GATEWAY_SERVER_ID")]
    pub server_id: Option<String>,

    /// Simulated feed: number of symbols (well-known tickers first)
    #[arg(long = "sim-symbols", env = "GATEWAY_SIM_SYMBOLS", default_value_t = DEFAULT_SIM_SYMBOLS, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    pub sim_symbols: usize,

    /// Simulated feed: total updates per second across all symbols
    #[arg(long = "sim-rate", env = "GATEWAY_SIM_RATE", default_value_t = DEFAULT_SIM_RATE, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub sim_rate: u32,

    /// Simulated feed: random seed (the same seed gives the same market)
    #[arg(long = "sim-seed", env = "GATEWAY_SIM_SEED", default_value_t = DEFAULT_SIM_SEED)]
    pub sim_seed: u64,

    /// Simulated feed: how updates are spread over the symbols
    #[arg(long = "sim-activity", env = "GATEWAY_SIM_ACTIVITY", value_enum, default_value_t = DEFAULT_SIM_ACTIVITY)]
    pub sim_activity: SimActivity,

    /// Heartbeat interval announced in `welcome`: an idle session gets a message this often
    #[arg(long, env = "GATEWAY_HEARTBEAT_MS", default_value_t = DEFAULT_HEARTBEAT_MS, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub heartbeat_ms: u64,

    /// Interval of WebSocket Ping frames
    #[arg(long, env = "GATEWAY_PING_INTERVAL_MS", default_value_t = DEFAULT_PING_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub ping_interval_ms: u64,

    /// Close a session from which nothing (no frame, no Pong) arrived for this long (code 4000)
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT_MS", default_value_t = DEFAULT_IDLE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub idle_timeout_ms: u64,

    /// Close a session whose socket accepted no data for this long while updates waited (4008)
    #[arg(long, env = "GATEWAY_SLOW_CLIENT_TIMEOUT_MS", default_value_t = DEFAULT_SLOW_CLIENT_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub slow_client_timeout_ms: u64,

    /// Most symbols one session may subscribe to (announced in `welcome`)
    #[arg(long, env = "GATEWAY_MAX_SUBSCRIPTIONS", default_value_t = DEFAULT_MAX_SUBSCRIPTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscriptions: u32,

    /// Largest client frame or message in bytes; bigger closes the session with 1009
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES, value_parser = clap::value_parser!(u32).range(128..=16_777_216))]
    pub max_message_bytes: u32,

    /// Requests per second per session; beyond, `rate_limited`, and 1008 if it goes on
    #[arg(long, env = "GATEWAY_MAX_REQUESTS_PER_SEC", default_value_t = DEFAULT_MAX_REQUESTS_PER_SEC, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_requests_per_sec: u32,

    /// Bad requests per minute per session before it is closed with 1008
    #[arg(long, env = "GATEWAY_ERROR_BUDGET", default_value_t = DEFAULT_ERROR_BUDGET, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub error_budget: u32,

    /// Most sessions at once; further upgrades get 503 with Retry-After
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,

    /// Most sessions from one client address (0: no limit); further upgrades get 503
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS_PER_IP", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP)]
    pub max_connections_per_ip: u32,

    /// A connection must complete its HTTP request (or WebSocket upgrade) within this time
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT_MS", default_value_t = DEFAULT_HANDSHAKE_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub handshake_timeout_ms: u64,

    /// On SIGINT/SIGTERM, how long sessions get to receive their 1001 close before exit
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_MS", default_value_t = DEFAULT_SHUTDOWN_GRACE_MS)]
    pub shutdown_grace_ms: u64,

    /// `/readyz` answers 503 when no quote arrived within this window
    #[arg(long, env = "GATEWAY_STALENESS_MS", default_value_t = DEFAULT_STALENESS_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub staleness_ms: u64,

    /// Kernel send buffer per session (SO_SNDBUF; Linux doubles it)
    #[arg(long, env = "GATEWAY_SEND_BUFFER_BYTES", default_value_t = DEFAULT_SEND_BUFFER_BYTES, value_parser = clap::value_parser!(u32).range(1024..=16_777_216).map(|v| v as usize))]
    pub send_buffer_bytes: usize,

    /// Bytes a session's writer frames before flushing them in one write
    #[arg(long, env = "GATEWAY_WRITE_BUDGET_BYTES", default_value_t = DEFAULT_WRITE_BUDGET_BYTES, value_parser = clap::value_parser!(u32).range(512..=16_777_216).map(|v| v as usize))]
    pub write_budget_bytes: usize,

    /// Read buffer per session (chunk size of socket reads)
    #[arg(long, env = "GATEWAY_READ_BUFFER_BYTES", default_value_t = DEFAULT_READ_BUFFER_BYTES, value_parser = clap::value_parser!(u32).range(256..=16_777_216).map(|v| v as usize))]
    pub read_buffer_bytes: usize,

    /// Event-loop threads (shards) sessions are spread over (0: one per CPU core)
    #[arg(long, env = "GATEWAY_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Origins allowed to open sessions, comma-separated (empty: any); others get 403
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Access tokens, comma-separated (empty: no authentication); a session without a valid one
    /// gets 401. `TOKEN` is entitled to every symbol, `TOKEN=SYM1+SYM2` only to those listed.
    #[arg(long, env = "GATEWAY_ACCESS_TOKENS", value_delimiter = ',', hide_env_values = true)]
    pub access_tokens: Vec<String>,
}

impl Config {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn ping_interval(&self) -> Duration {
        Duration::from_millis(self.ping_interval_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn slow_client_timeout(&self) -> Duration {
        Duration::from_millis(self.slow_client_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Checks what the flags' own parsers cannot: that the feed is one this build serves.
    pub fn validate(&self) -> Result<(), String> {
        match self.feed.as_str() {
            "sim" => {}
            other if other.starts_with("nats://") => {
                return Err(format!(
                    "--feed {other}: this build serves the simulated feed only (--feed sim); the \
                     NATS feed of the contract's section 5 is not implemented yet"
                ))
            }
            other => {
                return Err(format!(
                    "--feed {other}: expected `sim` or a NATS URL (nats://HOST:PORT)"
                ))
            }
        }
        Ok(())
    }

    /// The number of shards to run.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// The node name announced in `welcome`.
    pub fn server_name(&self) -> String {
        self.server_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "gateway".to_string())
        })
    }
}
