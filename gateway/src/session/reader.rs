//! The reading half of a session: frames in, requests out (to the writer), in order.
//!
//! Everything a client can send wrongly is answered here or handed to the writer as an error:
//! invalid JSON and unknown ops (`bad_request`, within an error budget), floods
//! (`rate_limited`, then 1008 if it goes on), oversized frames (1009). Nothing a client sends
//! can panic the reader or reach another session.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use proto::close;
use proto::request::{DecodeErrorKind, DecodeLimits, DecodeScratch, Op, Request, Symbols};
use proto::server::ErrorCode;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{error::CapacityError, Error as WsError, Message};

use super::budget::{Strikes, TokenBucket};
use super::io::Progress;
use super::{Control, Ending, Resolved, SessionParams};
use crate::clock::mono_ns;
use crate::metrics::{EndReason, OpLabel};
use crate::store::SnapshotStore;

/// Reads until the stream ends or the session must close; the last thing it sends the writer
/// is [`Control::End`] (unless the writer is already gone).
pub async fn run<S>(
    stream: &mut S,
    tx: mpsc::Sender<Box<Control>>,
    params: &SessionParams,
    progress: Arc<Progress>,
) where
    S: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let gw = &params.gateway;
    let config = &gw.config;
    let now = mono_ns();
    let mut rate = TokenBucket::new(config.max_requests_per_sec, now);
    // Rejections for rate: a second's worth at full rate spends the budget, and it recovers at
    // a tenth of the rate, so only a client that keeps flooding is closed.
    let mut rate_strikes = Strikes::new(
        config.max_requests_per_sec,
        f64::from(config.max_requests_per_sec) / 10.0,
        now,
    );
    // Bad requests: `error_budget` per minute.
    let mut bad_strikes =
        Strikes::new(config.error_budget, f64::from(config.error_budget) / 60.0, now);
    let mut scratch = DecodeScratch::new();
    let limits = DecodeLimits { max_symbols: config.max_subscriptions as usize };

    let ending = loop {
        let message = match stream.next().await {
            None => break Ending::Gone(EndReason::Client),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. })))
            | Some(Err(WsError::Capacity(CapacityError::TooManyHeaders))) => {
                break Ending::Close(close::MESSAGE_TOO_BIG, EndReason::MessageTooBig)
            }
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                break Ending::Gone(EndReason::Client)
            }
            Some(Err(WsError::Io(e))) => {
                tracing::debug!(peer = %params.peer, error = %e, "session read failed");
                break Ending::Gone(EndReason::IoError);
            }
            Some(Err(WsError::Utf8(_))) => {
                break Ending::Close(close::INVALID_PAYLOAD, EndReason::IoError);
            }
            Some(Err(e)) => {
                // A protocol violation (bad framing, a reserved opcode): RFC 6455's 1002.
                tracing::debug!(peer = %params.peer, error = %e, "session protocol error");
                break Ending::Close(close::PROTOCOL_ERROR, EndReason::IoError);
            }
        };
        let now = mono_ns();
        progress.last_read_ns.store(now, Ordering::Relaxed);
        let text = match &message {
            Message::Text(text) => text.as_bytes(),
            Message::Binary(_) => b"",
            Message::Close(_) => break Ending::Gone(EndReason::Client),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
        };

        let decoded = if matches!(message, Message::Binary(_)) {
            Err(proto::DecodeError::bad_request(
                None,
                "binary frames are not supported: send each request as a JSON text frame",
            ))
        } else {
            Request::decode(text, &mut scratch, limits)
        };
        gw.metrics.request(decoded.as_ref().map_or(OpLabel::Invalid, |r| OpLabel::of(&r.op)));
        let control = match (rate.take(now), decoded) {
            (Err(retry_after_ms), decoded) => {
                if rate_strikes.strike(now) {
                    break Ending::Close(close::POLICY_RATE, EndReason::Policy);
                }
                Control::Error {
                    id: decoded.map_or_else(|e| e.id, |r| r.id),
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "more than {} requests per second: retry after {retry_after_ms} ms",
                        config.max_requests_per_sec
                    ),
                    retry_after_ms: Some(retry_after_ms),
                }
            }
            (Ok(()), Err(e)) if e.kind == DecodeErrorKind::TooManySymbols => {
                // Rejected whole before any name is resolved; not a malformed request, so it
                // does not spend the error budget (the rate limit bounds it).
                decode_error(e)
            }
            (Ok(()), Err(e)) => {
                if bad_strikes.strike(now) {
                    // Answer this one too, so the client sees why it is being closed.
                    let _ = tx.send(Box::new(decode_error(e))).await;
                    break Ending::Close(close::POLICY_ERRORS, EndReason::Policy);
                }
                decode_error(e)
            }
            (Ok(()), Ok(request)) => resolve(request, &gw.store, params),
        };
        if tx.send(Box::new(control)).await.is_err() {
            return; // The writer has ended the session.
        }
    };
    let _ = tx.send(Box::new(Control::End(ending))).await;
}

/// `bad_request`, or `too_many_subscriptions` for a request naming too many symbols.
fn decode_error(e: proto::DecodeError) -> Control {
    Control::Error {
        id: e.id,
        code: e.kind.code(),
        message: e.message.into_owned(),
        retry_after_ms: None,
    }
}

/// Turns a decoded request into the writer's terms: symbol names to ids, split into known,
/// unknown and not entitled.
fn resolve(request: Request, store: &SnapshotStore, params: &SessionParams) -> Control {
    let resolve_symbols = |symbols: Symbols| match symbols {
        Symbols::All => Resolved::All,
        Symbols::List(names) => {
            let table = store.table();
            let (mut known, mut unknown, mut forbidden) = (Vec::new(), Vec::new(), Vec::new());
            for name in names {
                match table.get(&name) {
                    None => unknown.push(name),
                    Some(entry) => match &params.entitlement {
                        Some(allowed) if !allowed.contains(entry.name.as_ref()) => {
                            forbidden.push(name)
                        }
                        _ => known.push(entry.id),
                    },
                }
            }
            Resolved::List { known, unknown, forbidden }
        }
    };
    match request.op {
        // `resume` is decoded and validated, but only the new session core replays from it;
        // this core serves the subscribe as if it were absent.
        Op::Subscribe { symbols, snapshot, throttle_ms, resume: _ } => Control::Subscribe {
            id: request.id,
            symbols: resolve_symbols(symbols),
            snapshot,
            throttle_ms,
        },
        Op::Unsubscribe { symbols } => {
            Control::Unsubscribe { id: request.id, symbols: resolve_symbols(symbols) }
        }
        Op::Ping => Control::Ping { id: request.id },
    }
}
