//! Configuration: one flag and one environment variable per setting, every default a named
//! constant here, with the reason for its value. `gateway --help` shows them all.
//!
//! `--config FILE` (TOML) sets any of them under the flag's long name (`max-connections`, or
//! `max_connections`). Precedence: flag, then environment, then file, then default. The file's
//! keys are checked against clap's own definition of the flags, so every flag, including one
//! added later, is a valid key with the same parser; this module never lists the settings twice.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::builder::TypedValueParser as _;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory as _, FromArgMatches as _, Parser};

/// Contract default (section 1).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Contract default (section 1): the simulator inside the process.
pub const DEFAULT_FEED: &str = "sim";
/// Contract default (section 5): the JetStream stream a NATS feed reads.
pub const DEFAULT_NATS_STREAM: &str = "MD_QUOTES";
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
/// Unsent bytes the kernel may hold per session (TCP_NOTSENT_LOWAT). The send buffer bounds everything the kernel holds,
/// including what it has not even tried to send; this bounds the part that waits only on the
/// client, so a slow reader's backlog stays in its subscriptions, where it conflates: quotes
/// 7.3 s old at p99 became 2.3 s (the client's own buffers hold most of that), at no cost to
/// fast readers (docs/benchmarks.md). 0 leaves the kernel's default (no limit).
pub const DEFAULT_SEND_LOWAT_BYTES: usize = 1024;
/// Bytes a writer frames before it flushes: several quotes per write system call, and a
/// bound on what is committed beyond the kernel buffer.
pub const DEFAULT_WRITE_BUDGET_BYTES: usize = 8 * 1024;
/// Connections still in their HTTP request or upgrade, at most, across the process. Each holds
/// at most `max_request_head_bytes` until its handshake timeout: 4,096 × 16 KiB = 64 MiB in the
/// worst case, whatever a flood of half-open connections does; past it, new connections are
/// refused at once (503).
pub const DEFAULT_MAX_PENDING_CONNECTIONS: u32 = 4_096;
/// An HTTP request head (request line and headers) must fit in this: enough for a
/// `/snapshot` URL naming every symbol a session may subscribe to (1,000 names).
pub const DEFAULT_MAX_REQUEST_HEAD_BYTES: u32 = 16 * 1024;
/// Each symbol keeps its updates of the last 5 s: a client that reconnects within a few
/// seconds resumes without loss (docs/backpressure.md has the memory this takes).
pub const DEFAULT_HISTORY_MS: u64 = 5_000;
/// ... at most this many per symbol: 6.8 s of the hottest simulated symbol at the default
/// rate (300 updates/s), so the window, not this cap, decides at the default rate.
pub const DEFAULT_HISTORY_MAX_UPDATES: u32 = 2_048;
/// ... and at most this many bytes in all: 5 s at the default 2,000 updates/s is ~8 MiB; at
/// 60,000 updates/s the window shrinks to ~1.3 s instead of holding 250 MiB.
pub const DEFAULT_HISTORY_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Missed updates received longer ago than this are not replayed to a session that keeps up:
/// the shard itself runs late (overload), and replaying would be a queue; the latest is sent
/// instead (conflation). A shard that keeps up is late by well under a millisecond (tens when
/// the OS deschedules it), so 50 ms loses nothing then, and bounds quote age under overload.
pub const DEFAULT_REPLAY_MAX_AGE_MS: u64 = 50;
/// Simulated updates per second, across all symbols.
pub const DEFAULT_SIM_RATE: u32 = feed_sim::DEFAULT_RATE;
/// Simulated symbols.
pub const DEFAULT_SIM_SYMBOLS: usize = feed_sim::DEFAULT_SYMBOLS;
/// Simulator seed.
pub const DEFAULT_SIM_SEED: u64 = feed_sim::DEFAULT_SEED;
/// Off by default: with it on, every connection must open with a PROXY v2 header, which only a
/// balancer sends; a client connecting directly would be refused.
pub const DEFAULT_PROXY_PROTOCOL: bool = false;
/// Authentication-failure log lines per second (see `access::audit`).
pub const DEFAULT_AUTH_LOG_PER_SEC: u32 = crate::access::audit::DEFAULT_AUTH_LOG_PER_SEC;
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
    /// TOML file of settings, named as the flags (`max-connections = 5000`); flags and
    /// environment variables override it
    #[arg(long, env = "GATEWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve HTTP and WebSocket on (port 0: an ephemeral port)
    #[arg(long, env = "GATEWAY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Quote source: `sim` (the simulator in this process) or a NATS URL (nats://HOST:PORT)
    #[arg(long, env = "GATEWAY_FEED", default_value = DEFAULT_FEED)]
    pub feed: String,

    /// NATS feed: the JetStream stream that keeps the last quote of every symbol
    #[arg(long, env = "GATEWAY_NATS_STREAM", default_value = DEFAULT_NATS_STREAM)]
    pub nats_stream: String,

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

    /// Unsent bytes the kernel may hold per session (TCP_NOTSENT_LOWAT); 0: no limit
    #[arg(long, env = "GATEWAY_SEND_LOWAT_BYTES", default_value_t = DEFAULT_SEND_LOWAT_BYTES, value_parser = clap::value_parser!(u32).range(0..=16_777_216).map(|v| v as usize))]
    pub send_lowat_bytes: usize,

    /// Bytes a session's writer frames before flushing them in one write
    #[arg(long, env = "GATEWAY_WRITE_BUDGET_BYTES", default_value_t = DEFAULT_WRITE_BUDGET_BYTES, value_parser = clap::value_parser!(u32).range(512..=16_777_216).map(|v| v as usize))]
    pub write_budget_bytes: usize,

    /// Connections still in their HTTP request or upgrade, at most (past it: refused, 503)
    #[arg(long, env = "GATEWAY_MAX_PENDING_CONNECTIONS", default_value_t = DEFAULT_MAX_PENDING_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_connections: u32,

    /// Largest HTTP request head in bytes (past it: 414 or 431)
    #[arg(long, env = "GATEWAY_MAX_REQUEST_HEAD_BYTES", default_value_t = DEFAULT_MAX_REQUEST_HEAD_BYTES, value_parser = clap::value_parser!(u32).range(1024..=1_048_576))]
    pub max_request_head_bytes: u32,

    /// How long each symbol's updates are kept for replay and resume, in ms
    #[arg(long, env = "GATEWAY_HISTORY_MS", default_value_t = DEFAULT_HISTORY_MS, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub history_ms: u64,

    /// Most bytes all symbols' histories hold together (past it, the window shrinks)
    #[arg(long, env = "GATEWAY_HISTORY_MAX_BYTES", default_value_t = DEFAULT_HISTORY_MAX_BYTES, value_parser = clap::value_parser!(u64).range(65_536..))]
    pub history_max_bytes: u64,

    /// Missed updates older than this are not replayed to a live session (overload: it gets the latest)
    #[arg(long, env = "GATEWAY_REPLAY_MAX_AGE_MS", default_value_t = DEFAULT_REPLAY_MAX_AGE_MS, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub replay_max_age_ms: u64,

    /// Most updates kept per symbol for replay and resume
    #[arg(long, env = "GATEWAY_HISTORY_MAX_UPDATES", default_value_t = DEFAULT_HISTORY_MAX_UPDATES, value_parser = clap::value_parser!(u32).range(32..=1_000_000))]
    pub history_max_updates: u32,

    /// Event-loop threads (shards) sessions are spread over (0: one per CPU core)
    #[arg(long, env = "GATEWAY_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Origins allowed to open sessions, comma-separated (empty: any); others get 403
    #[arg(long, env = "GATEWAY_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Access tokens for quick local use, comma-separated: `TOKEN` (every symbol) or
    /// `TOKEN=SYM1+SYM2`. Visible in `ps` and never reloaded: use --tokens-file beyond a laptop
    #[arg(long, env = "GATEWAY_ACCESS_TOKENS", value_delimiter = ',', hide_env_values = true)]
    pub access_tokens: Vec<String>,

    /// Token file (TOML, see docs/operations.md): named tokens or their SHA-256, symbol patterns
    /// and limits per token; re-read on SIGHUP
    #[arg(long, env = "GATEWAY_TOKENS_FILE", value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,

    /// JWT verification key: an HS256 secret, or an RS256/ES256 public key in PEM; claims `sub`,
    /// `exp`, `symbols`; re-read on SIGHUP
    #[arg(long, env = "GATEWAY_JWT_KEY", value_name = "FILE")]
    pub jwt_key: Option<PathBuf>,

    /// TLS certificate chain (PEM, leaf first); with --tls-key the port speaks only https/wss;
    /// re-read on SIGHUP
    #[arg(long, env = "GATEWAY_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// TLS private key (PEM: PKCS#8, RSA or EC) of --tls-cert; re-read on SIGHUP
    #[arg(long, env = "GATEWAY_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// A second address serving only /metrics, /healthz and /readyz, so metrics need not face
    /// clients (default: none; they are on --listen)
    #[arg(long, env = "GATEWAY_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Expect a PROXY protocol v2 header (HAProxy `send-proxy-v2`) on every connection and use
    /// its client address; only a balancer may then reach the port
    #[arg(long, env = "GATEWAY_PROXY_PROTOCOL", default_value_t = DEFAULT_PROXY_PROTOCOL)]
    pub proxy_protocol: bool,

    /// Authentication failures logged per second at most (the rest are counted in metrics, and
    /// the next line says how many were left out); 0 logs none
    #[arg(long, env = "GATEWAY_AUTH_LOG_PER_SEC", default_value_t = DEFAULT_AUTH_LOG_PER_SEC)]
    pub auth_log_per_sec: u32,

    /// A fault injected by tests: a session that subscribes to this name panics while its
    /// request is handled, after its other names were registered and before its list of
    /// subscriptions has them. Not settable from the command line or the environment.
    #[arg(skip)]
    #[doc(hidden)]
    pub panic_on_symbol: Option<String>,

    /// A fault injected by tests: a shard whose fan-out gets an update of this symbol panics
    /// outside any session's guard, as a bug in the shard's own loop would. Not settable from
    /// the command line or the environment.
    #[arg(skip)]
    #[doc(hidden)]
    pub panic_shard_on_symbol: Option<String>,
}

/// Why the configuration could not be read. Either way the gateway exits with 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag or environment value (or `--help`, `--version`: see [`clap::Error::use_stderr`]).
    #[error(transparent)]
    Flags(#[from] clap::Error),
    /// The `--config` file: unreadable, not TOML, an unknown key or a bad value.
    #[error("--config {path}: {message}")]
    File { path: String, message: String },
}

/// Flags that are no settings and so no keys of the file.
const NOT_FILE_KEYS: [&str; 3] = ["config", "help", "version"];

impl Config {
    /// Parses `args` (the program name first) and the environment, then the `--config` file if
    /// one is named: flag, then environment, then file, then default.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = Config::command();
        let matches = command.clone().try_get_matches_from(&args)?;
        if let Some(path) = matches.get_one::<PathBuf>("config") {
            let from_file = file_args(&command, &matches, path)?;
            args.extend(from_file);
            let matches = command.try_get_matches_from(&args)?;
            return Ok(Config::from_arg_matches(&matches)?);
        }
        Ok(Config::from_arg_matches(&matches)?)
    }

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
    pub fn history_limits(&self) -> crate::store::HistoryLimits {
        crate::store::HistoryLimits {
            max_age_ns: self.history_ms * 1_000_000,
            max_len: self.history_max_updates as usize,
            max_bytes: self.history_max_bytes,
        }
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// Checks what the flags' own parsers cannot: that the TLS files come in pairs, that every named file can be read, and that the metrics
    /// address is not the session address. The contents of the files are checked when they are
    /// loaded (`access::AccessConfig::load`, `net::tls::TlsConfigHolder::load`).
    pub fn validate(&self) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(
                    "--tls-cert needs --tls-key: give the private key of the certificate".into()
                )
            }
            (None, Some(_)) => {
                return Err("--tls-key needs --tls-cert: give the certificate of the key".into())
            }
            _ => {}
        }
        let files = [
            ("--tokens-file", &self.tokens_file),
            ("--jwt-key", &self.jwt_key),
            ("--tls-cert", &self.tls_cert),
            ("--tls-key", &self.tls_key),
        ];
        for (flag, path) in files {
            if let Some(path) = path {
                readable_file(flag, path)?;
            }
        }
        if let Some(metrics) = self.metrics_listen {
            if metrics == self.listen && metrics.port() != 0 {
                return Err(format!(
                    "--metrics-listen {metrics}: the same address as --listen; choose another \
                     port, or leave --metrics-listen out to serve /metrics on --listen"
                ));
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

/// A file the gateway will read: it must exist, be a regular file, and open for reading.
fn readable_file(flag: &str, path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) => return Err(format!("{flag} {shown}: {e}")),
        Ok(meta) if !meta.is_file() => return Err(format!("{flag} {shown}: not a regular file")),
        Ok(_) => {}
    }
    std::fs::File::open(path).map(drop).map_err(|e| format!("{flag} {shown}: cannot read it: {e}"))
}

/// The flags the file stands for, for the settings neither a flag nor the environment set.
/// Each key is checked alone with the flag's own parser, so an error names the key.
fn file_args(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    path: &std::path::Path,
) -> Result<Vec<OsString>, ConfigError> {
    let fail = |message: String| ConfigError::File { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| fail(format!("not valid TOML: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .filter(|a| !NOT_FILE_KEYS.contains(&a.get_id().as_str()) && !a.is_hide_set())
            .ok_or_else(|| {
                fail(format!(
                    "unknown setting `{key}`: a key is a flag's long name without `--` \
                     (such as `max-connections`); `gateway --help` lists them"
                ))
            })?;
        if !seen.insert(long.clone()) {
            return Err(fail(format!("`{key}` is given twice (as kebab-case and snake_case)")));
        }
        let id = arg.get_id().as_str();
        if matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let flags = flags_for(arg, &long, value).map_err(|why| fail(format!("`{key}`: {why}")))?;
        let alone = std::iter::once(OsString::from("gateway")).chain(flags.iter().cloned());
        if let Err(e) = command.clone().try_get_matches_from(alone) {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            let why = first.strip_prefix("error: ").unwrap_or(first);
            return Err(fail(format!("`{key}`: {why}")));
        }
        out.extend(flags);
    }
    Ok(out)
}

/// The command-line form of one file value: `--long=VALUE` once per value, or the bare flag
/// for a switch set to `true`.
fn flags_for(arg: &clap::Arg, long: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let scalar = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        _ => Err("expected a string, a number or a boolean".to_string()),
    };
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => match value {
            toml::Value::Boolean(on) => {
                let set = *on == matches!(arg.get_action(), ArgAction::SetTrue);
                Ok(if set { vec![format!("--{long}").into()] } else { Vec::new() })
            }
            _ => Err("expected true or false".into()),
        },
        ArgAction::Append => {
            let values: Vec<String> = match value {
                toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<_, _>>()?,
                one => vec![scalar(one)?],
            };
            Ok(values.into_iter().map(|v| format!("--{long}={v}").into()).collect())
        }
        _ => match value {
            toml::Value::Array(_) => Err("expected one value, not a list".into()),
            one => Ok(vec![format!("--{long}={}", scalar(one)?).into()]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(["gateway"].iter().chain(args))
    }

    #[test]
    fn security_flags_default_to_off() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.tokens_file, None);
        assert_eq!(config.jwt_key, None);
        assert_eq!((config.tls_cert.clone(), config.tls_key.clone()), (None, None));
        assert_eq!(config.metrics_listen, None);
        assert!(!config.proxy_protocol);
        assert_eq!(config.auth_log_per_sec, 10);
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn tls_files_come_in_pairs() {
        let err = parse(&["--tls-cert", "cert.pem"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--tls-key"), "{err}");
        let mut config = parse(&[]).unwrap();
        config.tls_key = Some("key.pem".into());
        assert_eq!(
            config.validate(),
            Err("--tls-key needs --tls-cert: give the certificate of the key".into())
        );
    }

    #[test]
    fn named_files_must_be_readable_files() {
        let dir = std::env::temp_dir().join(format!("gateway-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens.toml");
        std::fs::write(&file, "").unwrap();
        let ok = parse(&["--tokens-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(ok.validate(), Ok(()));
        let missing = dir.join("missing.toml");
        let config = parse(&["--jwt-key", missing.to_str().unwrap()]).unwrap();
        assert_eq!(
            config.validate(),
            Err(format!("--jwt-key {}: No such file or directory (os error 2)", missing.display()))
        );
        let config = parse(&["--tokens-file", dir.to_str().unwrap()]).unwrap();
        assert_eq!(
            config.validate(),
            Err(format!("--tokens-file {}: not a regular file", dir.display()))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn metrics_address_must_differ_from_the_session_address() {
        let config =
            parse(&["--listen", "127.0.0.1:8080", "--metrics-listen", "127.0.0.1:8080"]).unwrap();
        assert!(config
            .validate()
            .unwrap_err()
            .starts_with("--metrics-listen 127.0.0.1:8080: the same address"));
        let config =
            parse(&["--listen", "127.0.0.1:8080", "--metrics-listen", "127.0.0.1:9100"]).unwrap();
        assert_eq!(config.validate(), Ok(()));
        let config =
            parse(&["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(config.validate(), Ok(()), "two ephemeral ports never collide");
    }

    #[test]
    fn proxy_protocol_is_a_switch() {
        assert!(parse(&["--proxy-protocol"]).unwrap().proxy_protocol);
        assert!(!parse(&[]).unwrap().proxy_protocol);
    }

    fn file(text: &str) -> (tempdir::Dir, String) {
        let dir = tempdir::Dir::new();
        let path = dir.path.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        (dir, path)
    }

    /// A directory removed when dropped (no crate for so little).
    mod tempdir {
        pub struct Dir {
            pub path: std::path::PathBuf,
        }
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "gateway-config-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir { path }
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.path);
            }
        }
    }

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load(std::iter::once("gateway").chain(args.iter().copied()))
    }

    fn file_error(result: Result<Config, ConfigError>) -> String {
        match result {
            Err(ConfigError::File { message, .. }) => message,
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn the_file_sets_any_flag_by_its_long_name_in_kebab_or_snake_case() {
        let (_dir, path) = file(
            "listen = \"127.0.0.1:9001\"\nmax-connections = 1234\nmax_subscriptions = 7\n\
             feed = \"nats://127.0.0.1:4222\"\nallowed-origins = [\"https://a\", \"https://b\"]\n\
             server-id = \"gw-file\"\n",
        );
        let config = load(&["--config", &path]).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(config.max_connections, 1234);
        assert_eq!(config.max_subscriptions, 7);
        assert_eq!(config.feed, "nats://127.0.0.1:4222");
        assert_eq!(config.allowed_origins, ["https://a", "https://b"]);
        assert_eq!(config.server_id.as_deref(), Some("gw-file"));
        assert_eq!(config.heartbeat_ms, DEFAULT_HEARTBEAT_MS, "not in the file: the default");
    }

    #[test]
    fn a_flag_beats_the_environment_which_beats_the_file() {
        // The only test that sets this variable (tests run on threads of one process).
        let (_dir, path) = file("shutdown-grace-ms = 111\nerror-budget = 9\nshards = 3\n");
        std::env::set_var("GATEWAY_SHUTDOWN_GRACE_MS", "222");
        std::env::set_var("GATEWAY_ERROR_BUDGET", "8");
        let config = load(&["--config", &path, "--error-budget", "7"]);
        std::env::remove_var("GATEWAY_SHUTDOWN_GRACE_MS");
        std::env::remove_var("GATEWAY_ERROR_BUDGET");
        let config = config.unwrap();
        assert_eq!(config.error_budget, 7, "flag over environment and file");
        assert_eq!(config.shutdown_grace_ms, 222, "environment over file");
        assert_eq!(config.shards, 3, "file over default");
    }

    #[test]
    fn an_unknown_key_or_a_bad_value_is_named() {
        let (_dir, path) = file("max-conections = 5\n");
        let message = file_error(load(&["--config", &path]));
        assert!(message.contains("unknown setting `max-conections`"), "{message}");
        let (_dir, path) = file("max-connections = \"lots\"\n");
        let message = file_error(load(&["--config", &path]));
        assert!(message.starts_with("`max-connections`: invalid value 'lots'"), "{message}");
        let (_dir, path) = file("heartbeat-ms = 1\n");
        let message = file_error(load(&["--config", &path]));
        assert!(
            message.contains("`heartbeat-ms`") && message.contains("10..=3600000"),
            "{message}"
        );
        let (_dir, path) = file("listen = [\"a\", \"b\"]\n");
        assert!(file_error(load(&["--config", &path])).contains("not a list"));
        let (_dir, path) = file("[section]\nlisten = 1\n");
        assert!(file_error(load(&["--config", &path])).contains("unknown setting `section`"));
        let (_dir, path) = file("config = \"other.toml\"\n");
        assert!(file_error(load(&["--config", &path])).contains("unknown setting `config`"));
        let (_dir, path) = file("listen = \n");
        assert!(file_error(load(&["--config", &path])).contains("not valid TOML"));
        let message = file_error(load(&["--config", "/nonexistent/gateway.toml"]));
        assert!(message.contains("cannot read it"), "{message}");
    }

    #[test]
    fn a_bad_flag_is_still_the_flags_error() {
        assert!(matches!(load(&["--max-connections", "x"]), Err(ConfigError::Flags(_))));
    }
}
