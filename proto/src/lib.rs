//! Wire types of the market data gateway and their exact encoding (`../shared/PROTOCOL.md`,
//! sections 2 and 3). Shared by the gateway, the simulated feed and the load tester.
//!
//! - [`price`]: fixed-point prices, written with the symbol's precision and never float noise.
//! - [`quote`]: a quote, encoded once per update into the frames every subscriber shares.
//! - [`request`]: client requests, decoded with `simd-json` in time linear in the frame;
//!   anything invalid is a [`request::DecodeError`] that becomes a `bad_request` (or
//!   `too_many_subscriptions`) answer, never a panic.
//! - [`payload`]: a quote payload from an upstream feed (section 5), decoded with a size cap;
//!   anything malformed is a [`payload::PayloadError`], never a panic.
//! - [`server`]: the other server messages (`welcome`, `ack`, `error`, `heartbeat`, `pong`).
//! - [`close`]: WebSocket close codes of the contract.
//!
//! Nothing here does I/O or allocates per subscriber: encoding happens once per message.

pub mod close;
pub mod json;
pub mod payload;
pub mod price;
pub mod quote;
pub mod request;
pub mod server;

pub use payload::{decode_payload, PayloadError, PayloadQuote};
pub use price::Price;
pub use quote::{Quote, QuoteFrames};
pub use request::{
    DecodeError, DecodeErrorKind, DecodeLimits, DecodeScratch, Op, Request, RequestId, Resume,
    Symbols, MAX_REQUEST_DEPTH,
};

/// Protocol version announced in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest `throttle_ms` a client may ask for.
pub const MAX_THROTTLE_MS: u32 = 60_000;

/// Longest string `id` a request may carry.
pub const MAX_ID_LEN: usize = 64;
