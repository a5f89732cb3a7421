//! One WebSocket session: a reader and a writer, run as two halves of one task.
//!
//! The reader parses requests and hands them, in order, to the writer over a small bounded
//! channel. The writer owns everything the session sends, so the ordering guarantees of the
//! contract (welcome first, `ack` before what it causes, snapshot before quotes, nothing after
//! an unsubscribe's `ack`) hold by construction. When either half ends, the session ends; the
//! cause is counted and logged once, here.

mod budget;
pub mod io;
mod reader;
mod writer;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use proto::close::CloseCause;
use proto::request::RequestId;
use proto::server::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;

use crate::metrics::EndReason;
use crate::server::Gateway;
use crate::store::SymbolId;
use io::{Progress, ProgressIo};

/// Requests the reader may have handed over before it waits for the writer: enough to absorb
/// a burst, small enough that a stuck writer stops the reader (and so the client) quickly.
const CONTROL_QUEUE: usize = 16;

/// After the session decides to close, how long its close frame (and the client's reply) may
/// take before the socket is dropped.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The symbols a token may subscribe to; `None` on a session means every symbol.
pub type Entitlement = HashSet<Box<str>>;

/// Symbols of a request, resolved against the symbol table by the reader.
#[derive(Debug)]
pub enum Resolved {
    /// `["*"]`: every symbol the session is entitled to.
    All,
    List {
        known: Vec<SymbolId>,
        unknown: Vec<String>,
        forbidden: Vec<String>,
    },
}

/// What the reader hands to the writer (boxed on the channel: requests are rare, and small
/// channel items keep each idle session's channel block small).
#[derive(Debug)]
pub enum Control {
    Subscribe {
        id: Option<RequestId>,
        symbols: Resolved,
        snapshot: bool,
        throttle_ms: u32,
    },
    Unsubscribe {
        id: Option<RequestId>,
        symbols: Resolved,
    },
    Ping {
        id: Option<RequestId>,
    },
    /// An error the reader decided on (`bad_request`, `rate_limited`).
    Error {
        id: Option<RequestId>,
        code: ErrorCode,
        message: String,
        retry_after_ms: Option<u64>,
    },
    /// The reader is done: the client went away, or the session must close.
    End(Ending),
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Send this close frame first.
    Close(CloseCause, EndReason),
    /// Nothing more can or need be sent (the client closed, or the socket failed).
    Gone(EndReason),
}

impl Ending {
    pub fn reason(self) -> EndReason {
        match self {
            Ending::Close(_, r) | Ending::Gone(r) => r,
        }
    }
}

/// Who the session belongs to.
pub struct SessionParams {
    pub gateway: Arc<Gateway>,
    pub shard: usize,
    pub peer: SocketAddr,
    pub entitlement: Option<Arc<Entitlement>>,
    /// Cancelled when the gateway stops (the shard's child of the gateway's token).
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Runs a session over an upgraded connection until it ends.
pub async fn run<S>(
    ws: WebSocketStream<ProgressIo<S>>,
    progress: Arc<Progress>,
    params: SessionParams,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let gw = Arc::clone(&params.gateway);
    let session_id = gw.next_session_id();
    gw.metrics.sessions_opened.increment(1);
    tracing::debug!(session = %session_id, peer = %params.peer, shard = params.shard, "session opened");

    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
    let ending = {
        let reader = reader::run(&mut stream, tx, &params, Arc::clone(&progress));
        let writer = writer::Writer::new(sink, rx, &params, progress, session_id.clone()).run();
        tokio::pin!(reader, writer);
        tokio::select! {
            ending = &mut writer => ending,
            () = &mut reader => writer.await,
        }
    };
    // Read on until the client's close reply (or briefly): closing a socket with unread data
    // makes the kernel send a reset, which can destroy our close frame before it is read.
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
    let reason = ending.reason();
    gw.metrics.session_closed(reason);
    match ending {
        Ending::Close(cause, _) if cause.code != 1000 && cause.code != 1001 => tracing::info!(
            session = %session_id, peer = %params.peer, code = cause.code, reason = cause.reason,
            "session closed by the gateway"
        ),
        _ => {
            tracing::debug!(session = %session_id, peer = %params.peer, reason = reason.as_str(), "session closed")
        }
    }
}
