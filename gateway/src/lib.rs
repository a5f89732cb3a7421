//! The market data push gateway.
//!
//! Data path, left to right (one module each):
//!
//! ```text
//! feed ──> store ──> fanout ──────────> session::writer ──> socket
//! (sim,    (latest   (per shard: mark    (one per session:
//!  nats)    quote,    each subscriber's   take marks, send
//!           encoded   slot dirty, wake    frames, flush once)
//!           once)     its writer)
//!                                         session::reader <── socket
//!                                         (requests, limits)
//! ```
//!
//! - [`feed`]: where quotes come from (the simulator, NATS JetStream, a test's manual feed),
//!   behind one `Feed` trait; its `Publisher` stores them and queues their symbols per shard.
//! - [`store`]: the snapshot store, lock-free reads of every symbol's latest quote and frames.
//! - [`fanout`]: dirty-mark fan-out; a session holds one slot per subscription, never a queue.
//! - [`session`]: one task per session, a reader and the writer that owns the session's order.
//! - [`http`]: the HTTP endpoints and the WebSocket upgrade, on the same port.
//! - [`server`]: shards, the accept loop, shutdown; [`run`] is the whole gateway.
//! - [`access`]: who a request is and which symbols it may see (tokens, JWT, entitlements).
//! - [`net`]: client bytes below the endpoints: query strings, TLS configuration, PROXY protocol.
//! - [`config`], [`metrics`], [`clock`]: settings, the Prometheus metrics, time.
//! - [`memory`]: freed heap memory returned to the system on a timer.

pub mod access;
pub mod clock;
pub mod config;
pub mod fanout;
pub mod feed;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod server;
pub mod session;
pub mod store;

pub use config::Config;
pub use server::run;
