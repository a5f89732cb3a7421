//! One session's state: what it subscribes to, what it owes the client, and its budgets. A
//! session is plain data owned by its shard; the shard's event loop reads its socket, feeds the
//! bytes to [`inbound`], answers requests with [`crate::shard::requests`], and writes what is due (the shard's
//! write pass, which asks [`crate::delivery`] per subscription). One session logic, two framings:
//! WebSocket (`/ws`) and Server-Sent Events (`/sse`) differ only in how a message is framed
//! and in what a client can send.
//!
//! Memory at rest is this struct and one small record per subscription: no task, no channel,
//! no read or write buffer (the bytes of an incomplete frame, a partly written frame and the
//! control messages owed are held only while they exist, and bounded).

pub mod budget;
pub mod inbound;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use proto::close::{self, CloseCause};

use crate::access::Grant;
use crate::fanout::{List, SubKey};
use crate::metrics::{EndReason, MsgType};
use crate::net::ws::FrameHeader;
use crate::store::SymbolId;
use budget::{Strikes, TokenBucket};

/// After the session decides to close, how long its close frame (and the client's reply) may
/// take before the socket is dropped.
pub const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);
pub const CLOSE_GRACE_NS: u64 = CLOSE_GRACE.as_nanos() as u64;

/// A message built with more spare capacity than this is shrunk to its length before it is
/// queued: small ones (the common case) are left alone, large ones never hold twice their size.
const SHRINK_SLACK_BYTES: usize = 1024;

/// How messages are framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// RFC 6455 text frames; the client sends requests.
    WebSocket,
    /// `event: TYPE` / `data: JSON` events; the subscription is fixed (query string).
    Sse,
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

/// A message owed to the client, in the order it was decided.
#[derive(Debug)]
pub enum Out {
    /// Bytes written as they are: the HTTP head that opens the session.
    Raw(Bytes),
    /// A JSON message.
    Text(MsgType, Bytes),
    /// A WebSocket Ping (no payload).
    Ping,
    /// A WebSocket Pong answering a client's Ping.
    Pong(Bytes),
}

impl Out {
    pub fn len(&self) -> usize {
        match self {
            Out::Raw(b) | Out::Text(_, b) | Out::Pong(b) => b.len(),
            Out::Ping => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rest of a frame the kernel took in part: what is left is sent before anything else.
#[derive(Debug)]
pub struct PartialFrame {
    pub head: Head,
    pub payload: Bytes,
    pub tail: &'static [u8],
    /// Bytes of `head + payload + tail` already written.
    pub written: usize,
}

/// What precedes a payload on the wire.
#[derive(Clone, Copy)]
pub enum Head {
    Ws(FrameHeader),
    Sse(&'static [u8]),
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Head").field(&self.as_bytes()).finish()
    }
}

impl Head {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Head::Ws(h) => h.as_bytes(),
            Head::Sse(s) => s,
        }
    }
}

/// A close in progress.
#[derive(Debug, Clone, Copy)]
pub struct Closing {
    /// Why, for the metrics and the log.
    pub ending: Ending,
    /// The close frame to send, if any (none on SSE, none once the socket is gone).
    pub frame: Option<CloseCause>,
    pub frame_sent: bool,
    /// After our close frame, read on until the client's reply or EOF: closing a socket with
    /// unread data makes the kernel send a reset, which can destroy the close frame unread.
    pub wait_for_client: bool,
    /// Drop the socket at this time, whatever the client does.
    pub deadline_ns: u64,
}

/// What `["*"]` subscribed with: symbols that appear later are added with these options.
#[derive(Debug, Clone, Copy)]
pub struct AllSymbols {
    pub snapshot: bool,
    pub throttle_ms: u32,
}

/// Request budgets.
#[derive(Debug)]
pub struct Budgets {
    pub rate: TokenBucket,
    /// Requests refused for rate: enough of them closes the session (1008).
    pub rate_strikes: Strikes,
    /// Bad and unknown-symbol requests: enough of them closes the session (1008).
    pub bad_strikes: Strikes,
}

/// One session.
#[derive(Debug)]
pub struct Session {
    pub id: u64,
    pub framing: Framing,
    pub peer: SocketAddr,
    /// Who the session is and what it may see (replaced on a reload).
    pub grant: Arc<Grant>,
    /// Monotonic ns at which the grant expires (a JWT's `exp`): the session closes with 4001
    /// then. `u64::MAX`: never.
    pub expires_ns: u64,
    /// Its `max_subscriptions` (the grant's, or the gateway's).
    pub max_subscriptions: usize,
    /// Subscriptions, sorted by symbol.
    pub subs: Vec<(SymbolId, SubKey)>,
    pub all: Option<AllSymbols>,
    /// Subscriptions with something to send, oldest first.
    pub ready: List,
    /// Throttled subscriptions waiting for their next send time.
    pub deferred: List,
    /// Earliest `next_send_ns` on `deferred` (u64::MAX: none).
    pub next_deferred_ns: u64,
    /// On the shard's list of sessions to write.
    pub queued: bool,
    pub outbox: VecDeque<Out>,
    pub outbox_bytes: usize,
    pub partial: Option<Box<PartialFrame>>,
    /// An incomplete client frame (or unread frames while reading is paused).
    pub inbuf: Vec<u8>,
    /// A fragmented client message being assembled, and its opcode.
    pub message: Vec<u8>,
    pub message_opcode: Option<u8>,
    pub budgets: Budgets,
    /// Requests are not read while the outbox is over its bound.
    pub read_paused: bool,
    /// Monotonic ns: last frame from the client, last message to it, next Ping.
    pub last_read_ns: u64,
    pub last_message_ns: u64,
    pub next_ping_ns: u64,
    /// A Ping or a heartbeat is in the outbox (never more than one of each).
    pub ping_pending: bool,
    pub heartbeat_pending: bool,
    /// The socket refused data since the session last caught up.
    pub behind: bool,
    /// Monotonic ns of the last progress while blocked (0: not blocked).
    pub blocked_since_ns: u64,
    /// The socket would block: wait for it to become writable.
    pub blocked: bool,
    pub closing: Option<Closing>,
    /// A panic ended it (it is closing with 1011): a second one drops it at once.
    pub failed: bool,
}

impl Session {
    pub fn new(
        id: u64,
        framing: Framing,
        peer: SocketAddr,
        grant: Arc<Grant>,
        max_subscriptions: usize,
        budgets: Budgets,
        now_ns: u64,
    ) -> Session {
        Session {
            id,
            framing,
            peer,
            grant,
            expires_ns: u64::MAX,
            max_subscriptions,
            subs: Vec::new(),
            all: None,
            ready: List::default(),
            deferred: List::default(),
            next_deferred_ns: u64::MAX,
            queued: false,
            outbox: VecDeque::new(),
            outbox_bytes: 0,
            partial: None,
            inbuf: Vec::new(),
            message: Vec::new(),
            message_opcode: None,
            budgets,
            read_paused: false,
            last_read_ns: now_ns,
            last_message_ns: now_ns,
            next_ping_ns: u64::MAX,
            ping_pending: false,
            heartbeat_pending: false,
            behind: false,
            blocked_since_ns: 0,
            blocked: false,
            closing: None,
            failed: false,
        }
    }

    /// Gives the session `grant` (at open, or after a reload), and the monotonic time at which
    /// it expires: a JWT's `exp` is wall-clock time, turned into the shard's clock once here.
    pub fn set_grant(&mut self, grant: Arc<Grant>, now_ns: u64) {
        self.expires_ns = grant
            .time_left(std::time::SystemTime::now())
            .map_or(u64::MAX, |left| now_ns.saturating_add(left.as_nanos() as u64));
        self.grant = grant;
    }

    /// The session's id as `welcome` and the logs show it.
    pub fn id_hex(&self) -> String {
        format!("{:x}", self.id)
    }

    /// Owes the client `out`.
    pub fn push(&mut self, out: Out) {
        self.outbox_bytes += out.len();
        self.outbox.push_back(out);
    }

    /// Owes the client a JSON message.
    pub fn push_text(&mut self, kind: MsgType, mut json: Vec<u8>) {
        if json.capacity() - json.len() > SHRINK_SLACK_BYTES {
            // A large answer was built by doubling: hold what it is, not up to twice that (the
            // outbox's bound counts lengths).
            json.shrink_to_fit();
        }
        self.push(Out::Text(kind, Bytes::from(json)));
    }

    /// The subscription of `symbol`, if any.
    pub fn sub_of(&self, symbol: SymbolId) -> Option<SubKey> {
        self.subs.binary_search_by_key(&symbol, |&(s, _)| s).ok().map(|i| self.subs[i].1)
    }

    /// Whether anything is owed now (not counting throttled subscriptions).
    pub fn has_output(&self) -> bool {
        self.partial.is_some()
            || !self.outbox.is_empty()
            || !self.ready.is_empty()
            || self.closing.is_some_and(|c| !c.frame_sent)
    }

    /// Starts closing the session (the first ending decided wins). `echo`: the client closed,
    /// and this is the code of our reply.
    pub fn close(&mut self, ending: Ending, now_ns: u64) {
        if self.closing.is_some() {
            return;
        }
        let ws = self.framing == Framing::WebSocket;
        let frame = match ending {
            Ending::Close(cause, _) if ws => Some(cause),
            _ => None,
        };
        self.closing = Some(Closing {
            ending,
            frame,
            frame_sent: frame.is_none(),
            wait_for_client: matches!(ending, Ending::Close(..)) && ws,
            deadline_ns: now_ns + CLOSE_GRACE_NS,
        });
    }

    /// The client sent its close frame: reply with `code` (or 1000) and end.
    pub fn client_closed(&mut self, code: Option<u16>, now_ns: u64) {
        match &mut self.closing {
            Some(closing) => closing.wait_for_client = false,
            None => {
                let cause = CloseCause { code: code.unwrap_or(1000), reason: "" };
                self.closing = Some(Closing {
                    ending: Ending::Gone(EndReason::Client),
                    frame: Some(cause),
                    frame_sent: false,
                    wait_for_client: false,
                    deadline_ns: now_ns + CLOSE_GRACE_NS,
                });
            }
        }
    }

    /// After a panic while serving it (its subscriptions are already gone): forget what it
    /// was owed and what it had half read, keep the rest of a frame the kernel took in part
    /// (cutting it would break the stream) and an HTTP head not yet written, and close with
    /// 1011. Nothing here can be trusted
    /// but plain values, so it is all reset to them.
    pub fn fail(&mut self, now_ns: u64) {
        // The HTTP head that opens the session stays, if it is not out yet: the client reads
        // the close as the end of a session, not as garbage after its request.
        self.outbox.retain(|out| matches!(out, Out::Raw(_)));
        self.outbox_bytes = self.outbox.iter().map(Out::len).sum();
        self.inbuf = Vec::new();
        self.message = Vec::new();
        self.message_opcode = None;
        self.read_paused = false;
        self.ping_pending = false;
        self.heartbeat_pending = false;
        // Queued again by the caller, even if a write list had it.
        self.queued = false;
        let ending = Ending::Close(close::INTERNAL, EndReason::Internal);
        match &mut self.closing {
            // Its close frame is out already: only the reason changes.
            Some(closing) if closing.frame_sent => closing.ending = ending,
            _ => {
                self.closing = None;
                self.close(ending, now_ns);
            }
        }
    }

    /// Whether the session is finished and its socket can go. (An SSE stream, which has no
    /// close frame, ends once what it was owed is written, within the close grace.)
    pub fn is_done(&self, now_ns: u64) -> bool {
        self.closing.is_some_and(|c| {
            now_ns >= c.deadline_ns
                || (c.frame_sent
                    && self.partial.is_none()
                    && !c.wait_for_client
                    && (self.framing == Framing::WebSocket || self.outbox.is_empty()))
                || (c.frame.is_none() && matches!(c.ending, Ending::Gone(_)))
        })
    }
}
