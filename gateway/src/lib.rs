//! The market data push gateway.
//!
//! Data path, left to right (one module each):
//!
//! ```text
//! feed ──> store ──> shard: fan-out ──> shard: write pass ──> socket
//! (sim,    (latest,  (mark each         (per session: what the
//!  NATS)    history,  subscriber's       policy says is due, in one
//!           encoded   subscription)      vectored write)
//!           once)
//!                    shard: read ──> session::requests (limits, subscriptions, answers)
//! ```
//!
//! - [`feed`]: where quotes come from (an input of [`run`]); the [`feed::Publisher`] stores
//!   them and tells the shards.
//! - [`store`]: every symbol's latest quote (encoded once) and its recent history.
//! - [`shard`]: one thread and event loop per core: connections, fan-out, timers, writes.
//! - [`session`]: one session's state, its requests, and the pure delivery [`session::policy`].
//! - [`net`]: bytes on the wire: HTTP/1.1 heads, query strings, WebSocket framing, TLS, the
//!   PROXY protocol header, the socket.
//! - [`routes`]: what each HTTP endpoint answers, and the checks before a session opens.
//! - [`server`]: shards, the feed thread, the accept loop, shutdown; [`run`] is the gateway.
//! - [`access`]: who a request is and which symbols it may see (tokens, JWT, entitlements).
//! - [`state`], [`config`], [`metrics`], [`clock`]: shared state, settings, the Prometheus
//!   metrics, time.
//! - [`memory`]: freed heap memory returned to the system on a timer.
//!
//! Layers (imports point one way): config, clock, metrics -> store -> feed -> session ->
//! shard -> routes, net -> server.

pub mod access;
pub mod clock;
pub mod config;
pub mod feed;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod routes;
pub mod server;
pub mod session;
pub mod shard;
pub mod state;
pub mod store;

pub use config::Config;
pub use server::run;
