//! The market data push gateway.
//!
//! Data path, left to right (one module each):
//!
//! ```text
//! feed ──> store ──> inbox ──> shard: fan-out ──> shard: write pass ──> socket
//! (sim,    (latest,  (symbol   (fanout: link      (per session: what delivery
//!  NATS)    history,  ids,      each subscriber    says is due, in one vectored
//!           encoded   once per  onto its ready     write)
//!           once)     shard)    list)
//!                    shard: read ──> session::inbound ──> shard::requests (limits, answers)
//! ```
//!
//! - [`feed`]: where quotes come from (an input of [`run`]); the [`feed::Publisher`] stores
//!   them and tells the shards.
//! - [`store`]: every symbol's latest quote (encoded once) and its recent history.
//! - [`inbox`]: what other threads hand a shard (connections, commands, updated symbols).
//! - [`shard`]: one thread and event loop per core: connections, fan-out, timers, requests,
//!   writes.
//! - [`fanout`]: a shard's subscription records, subscriber lists and ready lists.
//! - [`delivery`]: the pure delivery policy (what one subscription gets next).
//! - [`session`]: one session's state, and its client frames ([`session::inbound`]).
//! - [`net`]: bytes on the wire: HTTP/1.1 heads, query strings, WebSocket framing, TLS, the
//!   PROXY protocol header, the socket.
//! - [`routes`]: what each HTTP endpoint answers, and the checks before a session opens.
//! - [`server`]: shards, the feed thread, the accept loop, shutdown; [`run`] is the gateway.
//! - [`access`]: who a request is and which symbols it may see (tokens, JWT, entitlements).
//! - [`state`], [`config`], [`metrics`], [`clock`]: shared state, settings, the Prometheus
//!   metrics, time.
//! - [`memory`]: freed heap memory returned to the system on a timer.
//!
//! Layers (imports point one way, no cycle): config, clock, metrics, access -> store ->
//! inbox -> feed; store -> delivery -> fanout -> session -> shard -> routes, net, state;
//! everything -> server.

pub mod access;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod fanout;
pub mod feed;
pub mod inbox;
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
