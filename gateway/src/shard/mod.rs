//! A shard: one thread, one `epoll` event loop (mio), and every connection handed to it, from
//! the first byte of HTTP to the last frame of its session.
//!
//! Each turn of the loop: read what the sockets have (requests are answered at once), take
//! the symbols the feed updated and mark their subscribers here (fan-out), run the timers
//! that are due, then write each session that has something due, once, with every frame it is
//! owed in one vectored write ("corking"). No task, channel or buffer per session: a session
//! is a record in this shard's table, its subscriptions records in [`crate::fanout`], and what the
//! kernel refuses stays as an offset on the session (see [`write`]).
//!
//! What it must never do: block, hold a lock across a system call, or let one connection's
//! bytes or failure (a panic included) reach another: each connection's work runs under
//! `catch_unwind`, and a panic ends only that session (1011).

pub mod requests;
pub mod timers;
mod write;

use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use proto::close;
use proto::server::{self, Limits};
use slab::Slab;

use crate::access::{AuthFailure, Principal, Review};
use crate::clock::{mono_ns, wall_ns};
use crate::fanout::{Registry, SubKey, Waiting};
use crate::inbox::{Command, Inbox, Listener};
use crate::metrics::{EndReason, MsgType, Tally};
use crate::net::http::{self, Parse, Response};
use crate::net::transport::Transport;
use crate::routes::{self, Route};
use crate::session::budget::{Strikes, TokenBucket};
use crate::session::inbound::{self, Assembly, Event};
use crate::session::{Budgets, Ending, Framing, Out, Session};
use crate::state::Gateway;
use crate::store::{Snapshot, SymbolId};
use timers::Timers;

/// An event at info when `$info`, else at debug (audit lines: a credential's sessions are
/// worth a line each; an open gateway's are not).
macro_rules! audit {
    ($info:expr, $($arg:tt)+) => {
        if $info {
            tracing::info!($($arg)+)
        } else {
            tracing::debug!($($arg)+)
        }
    };
}

/// The token of the shard's waker.
const WAKER: Token = Token(usize::MAX);

/// Bytes read from one socket per read call: the shard's one read buffer. Requests are small;
/// a larger frame is assembled across reads in the session's own (temporary) buffer.
const READ_CHUNK: usize = 64 * 1024;

/// Bytes read from one connection per turn of the loop, so that a flooding client cannot
/// starve the others; the rest is read in the next turn.
const READ_BUDGET: usize = 4 * READ_CHUNK;

/// Events taken per `epoll_wait`.
const EVENTS: usize = 1024;

/// Why a shard stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: {source}")]
    Io { shard: usize, source: io::Error },
    #[error("shard {0} failed: {1}")]
    Panicked(usize, String),
}

/// What request handling and the write pass touch, besides the connection itself.
pub struct Core {
    pub gw: Arc<Gateway>,
    pub shard: usize,
    pub registry: Registry,
    /// The latest snapshot of each symbol subscribed on this shard, refreshed once per update:
    /// sessions write from it without touching a reference count.
    pub latest: Vec<Option<Arc<Snapshot>>>,
    /// Sessions with something to write this turn, each once.
    pub dirty: Vec<u32>,
    pub decode_scratch: proto::DecodeScratch,
    /// What this shard sent since the counters were last added to the metrics.
    pub tally: Tally,
    /// Symbols known to this shard (the table may grow: new symbols from the feed).
    known_symbols: usize,
}

impl Core {
    /// Puts session `key` on the list of sessions to write this turn.
    pub fn queue(&mut self, key: u32, s: &mut Session) {
        if !s.queued && !s.blocked && s.has_output() {
            s.queued = true;
            self.dirty.push(key);
        }
    }

    /// Makes a subscription ready (something to send): off the deferred list if throttled.
    pub fn make_ready(&mut self, s: &mut Session, sub: SubKey) {
        match self.registry.get(sub).waiting {
            Waiting::Ready => {}
            Waiting::Deferred => {
                self.registry.unlink(&mut s.deferred, sub);
                self.registry.push_back(&mut s.ready, sub, Waiting::Ready);
            }
            Waiting::No => self.registry.push_back(&mut s.ready, sub, Waiting::Ready),
        }
    }

    /// Loads the symbol's latest snapshot into this shard's cache; returns its `seq` (0: none).
    pub fn refresh_latest(&mut self, symbol: SymbolId) -> u64 {
        let i = symbol as usize;
        if self.latest.len() <= i {
            self.latest.resize(i + 1, None);
        }
        let table = self.gw.store.table();
        let latest = table.entries.get(i).and_then(|e| e.latest());
        let seq = latest.as_ref().map_or(0, |l| l.quote.seq);
        self.latest[i] = latest;
        seq
    }

    /// `seq` of the cached latest snapshot of `symbol` (0: none).
    pub fn latest_seq(&self, symbol: SymbolId) -> u64 {
        self.latest.get(symbol as usize).and_then(Option::as_ref).map_or(0, |l| l.quote.seq)
    }

    /// Registers a subscription of session `key`.
    pub fn insert_sub(
        &mut self,
        key: u32,
        symbol: SymbolId,
        state: crate::delivery::Subscription,
    ) -> SubKey {
        let (sub, first) = self.registry.insert(key, symbol, state);
        if first {
            let table = self.gw.store.table();
            if let Some(entry) = table.entries.get(symbol as usize) {
                // SeqCst with the feed's load of the flag after it stores an update: either the
                // feed sees the flag and queues the update, or the refresh below sees it.
                entry.shards[self.shard].subscribed.store(true, Ordering::SeqCst);
            }
            drop(table);
            self.refresh_latest(symbol);
        }
        self.gw.subscriptions_active.fetch_add(1, Ordering::Relaxed);
        sub
    }

    /// Unregisters one subscription (the caller removes it from `s.subs`).
    fn drop_sub(&mut self, s: &mut Session, sub: SubKey) {
        let (symbol, waiting) = {
            let record = self.registry.get(sub);
            (record.symbol, record.waiting)
        };
        match waiting {
            Waiting::Ready => self.registry.unlink(&mut s.ready, sub),
            Waiting::Deferred => self.registry.unlink(&mut s.deferred, sub),
            Waiting::No => {}
        }
        if self.registry.remove(sub) {
            self.symbol_left(symbol);
        }
        self.gw.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
    }

    /// `symbol` has no subscriber left on this shard: the feed need not queue it here, and its
    /// cached snapshot goes.
    fn symbol_left(&mut self, symbol: SymbolId) {
        let table = self.gw.store.table();
        if let Some(entry) = table.entries.get(symbol as usize) {
            entry.shards[self.shard].subscribed.store(false, Ordering::SeqCst);
        }
        if let Some(slot) = self.latest.get_mut(symbol as usize) {
            *slot = None;
        }
    }

    /// Removes every subscription of session `key` from the registry, those its own list has
    /// and any it lacks (inserted just before a panic), and empties its lists.
    fn purge_session(&mut self, key: u32, s: &mut Session) {
        let mut emptied = Vec::new();
        let mut removed = 0u64;
        self.registry.remove_session(key, |symbol, last| {
            removed += 1;
            if last {
                emptied.push(symbol);
            }
        });
        for symbol in emptied {
            self.symbol_left(symbol);
        }
        self.gw.subscriptions_active.fetch_sub(removed, Ordering::Relaxed);
        s.subs = Vec::new();
        s.all = None;
        s.ready = crate::fanout::List::default();
        s.deferred = crate::fanout::List::default();
        s.next_deferred_ns = u64::MAX;
    }

    /// Removes every subscription of the session.
    pub fn remove_all_subs(&mut self, s: &mut Session) {
        for (_, sub) in std::mem::take(&mut s.subs) {
            self.drop_sub(s, sub);
        }
    }

    /// Removes the subscriptions whose symbol `gone` says, in one pass.
    pub fn remove_subs_where(&mut self, s: &mut Session, gone: impl Fn(SymbolId) -> bool) {
        let mut subs = std::mem::take(&mut s.subs);
        subs.retain(|&(symbol, sub)| {
            if gone(symbol) {
                self.drop_sub(s, sub);
                false
            } else {
                true
            }
        });
        if subs.capacity() > 64 && subs.len() * 4 < subs.capacity() {
            subs.shrink_to(subs.len() * 2);
        }
        s.subs = subs;
    }
}

/// A connection and what it is at now.
struct Conn {
    io: Transport,
    peer: SocketAddr,
    listener: Listener,
    /// The earliest deadline this connection has in the timer heap.
    armed_ns: u64,
    state: State,
}

enum State {
    /// Reading a request head, or writing an answer.
    Http(Box<HttpConn>),
    /// A WebSocket or SSE session.
    Session { session: Box<Session>, _admission: routes::Admission },
}

/// An HTTP connection: the request head read so far and the answer being written.
struct HttpConn {
    buf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    close_after: bool,
    deadline_ns: u64,
    /// `--proxy-protocol`: the PROXY v2 header has not been read yet (it precedes TLS and
    /// HTTP).
    awaiting_proxy_header: bool,
}

/// A shard's handle, for the threads that talk to it.
pub struct ShardHandle {
    pub inbox: Arc<Inbox>,
    pub thread: std::thread::JoinHandle<Result<(), ShardError>>,
}

/// Starts shard `shard` on a thread of its own.
pub fn spawn(shard: usize, gw: Arc<Gateway>) -> io::Result<ShardHandle> {
    let poll = Poll::new()?;
    let waker = mio::Waker::new(poll.registry(), WAKER)?;
    let inbox = Arc::new(Inbox::new(waker));
    let shard_inbox = Arc::clone(&inbox);
    let thread =
        std::thread::Builder::new().name(format!("gw-shard-{shard}")).spawn(move || {
            let mut s = Shard::new(shard, gw, poll, shard_inbox);
            match catch_unwind(AssertUnwindSafe(|| s.run())) {
                Ok(result) => result,
                Err(panic) => Err(ShardError::Panicked(shard, panic_message(&panic))),
            }
        })?;
    Ok(ShardHandle { inbox, thread })
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

struct Shard {
    poll: Poll,
    inbox: Arc<Inbox>,
    conns: Slab<Conn>,
    core: Core,
    timers: Timers,
    scratch: Vec<u8>,
    /// Connections with unread bytes left after their read budget.
    reread: Vec<u32>,
    /// Connections whose timer is due (reused).
    due: Vec<u32>,
    commands: Vec<Command>,
    updates: Vec<SymbolId>,
    write_plan: write::Plan,
    /// Set once shutdown starts: the time by which the shard stops anyway.
    stop_by_ns: Option<u64>,
}

impl Shard {
    fn new(shard: usize, gw: Arc<Gateway>, poll: Poll, inbox: Arc<Inbox>) -> Shard {
        Shard {
            poll,
            inbox,
            conns: Slab::new(),
            core: Core {
                gw,
                shard,
                registry: Registry::default(),
                latest: Vec::new(),
                dirty: Vec::new(),
                decode_scratch: proto::DecodeScratch::new(),
                tally: Tally::default(),
                known_symbols: 0,
            },
            timers: Timers::default(),
            scratch: vec![0; READ_CHUNK],
            reread: Vec::new(),
            due: Vec::new(),
            commands: Vec::new(),
            updates: Vec::new(),
            write_plan: write::Plan::default(),
            stop_by_ns: None,
        }
    }

    fn gw(&self) -> &Arc<Gateway> {
        &self.core.gw
    }

    fn run(&mut self) -> Result<(), ShardError> {
        let shard = self.core.shard;
        let mut events = Events::with_capacity(EVENTS);
        self.core.known_symbols = self.gw().store.table().len();
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ShardError::Io { shard, source: e });
            }
            let mut woken = false;
            for event in events.iter() {
                if event.token() == WAKER {
                    woken = true;
                    continue;
                }
                let key = event.token().0 as u32;
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.guarded(key, |s, key| s.on_readable(key));
                }
                if event.is_writable() {
                    self.guarded(key, |s, key| s.on_writable(key));
                }
            }
            if woken {
                self.take_commands();
                self.fan_out();
            }
            self.run_timers();
            for key in std::mem::take(&mut self.reread) {
                self.guarded(key, |s, key| s.on_readable(key));
            }
            self.write_pass();
            self.flush_tally();
            if let Some(stop_by) = self.stop_by_ns {
                if self.conns.is_empty() {
                    return Ok(());
                }
                if mono_ns() >= stop_by {
                    tracing::warn!(
                        shard,
                        remaining = self.conns.len(),
                        grace_ms = self.gw().config.shutdown_grace_ms,
                        "shutdown grace period ended before every session had closed; dropping the rest"
                    );
                    return Ok(());
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.reread.is_empty() || !self.core.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut next = self.timers.next();
        if let Some(stop_by) = self.stop_by_ns {
            next = Some(next.map_or(stop_by, |n| n.min(stop_by)));
        }
        // An upper bound, so a lost wake-up costs at most this.
        let cap = Duration::from_secs(1);
        Some(next.map_or(cap, |at| Duration::from_nanos(at.saturating_sub(mono_ns())).min(cap)))
    }

    /// Runs `work` for connection `key`, then settles it; a panic ends only that connection
    /// (see [`Shard::contain`]).
    fn guarded(&mut self, key: u32, work: impl FnOnce(&mut Shard, u32)) {
        if !self.conns.contains(key as usize) {
            return;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            work(self, key);
            self.settle(key);
        }));
        if let Err(panic) = result {
            self.contain(key, &panic_message(&panic));
        }
    }

    /// A panic while serving connection `key`: that connection ends, nothing else does. A
    /// session loses its subscriptions (every registry record of it, see
    /// [`Core::purge_session`]) and what it was owed, then closes with 1011 the usual way (the
    /// rest of a partly written frame, the close frame, the client's reply, within
    /// `CLOSE_GRACE`), counted as `internal_error` when it goes. A second panic while it closes
    /// drops it at once. An HTTP connection gets a 500 if no answer was started, and goes.
    ///
    /// A panic on this path itself means the shard's own state is broken: it ends the shard,
    /// and with it the process (non-zero), for a supervisor to restart.
    fn contain(&mut self, key: u32, message: &str) {
        // The shard's read buffer is lent to the connection being read (`read_session`): a
        // panic there lost it.
        if self.scratch.len() != READ_CHUNK {
            self.scratch = vec![0; READ_CHUNK];
        }
        let result = catch_unwind(AssertUnwindSafe(|| self.end_failed(key, message)));
        if let Err(again) = result {
            let why = panic_message(&again);
            panic!("while ending a connection after a panic ({message}): {why}");
        }
    }

    fn end_failed(&mut self, key: u32, message: &str) {
        let now = mono_ns();
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let peer = conn.peer;
        match &mut conn.state {
            State::Http(http) => {
                tracing::error!(%peer, panic = %message, "internal error serving a connection: answering 500 and closing it; the others go on");
                if http.out_pos == 0 {
                    let answer = Response::text(500, "internal error: the gateway logged it\n");
                    let _ = conn.io.write(&answer.encode(false, false));
                }
                self.remove_conn(key, None);
            }
            State::Session { session, .. } => {
                let s = session.as_mut();
                let again = s.failed;
                s.failed = true;
                self.core.purge_session(key, s);
                if again {
                    tracing::error!(session = %s.id_hex(), %peer, panic = %message, "internal error again while the session closed: dropping it");
                    self.remove_conn(key, Some(EndReason::Internal));
                    return;
                }
                tracing::error!(session = %s.id_hex(), %peer, panic = %message, "internal error serving a connection: closing the session with 1011; the others go on");
                s.fail(now);
                self.core.queue(key, s);
                self.settle(key);
            }
        }
    }

    /// After work on a connection: close it if it is done, else re-arm its timer.
    fn settle(&mut self, key: u32) {
        let now = mono_ns();
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let deadline = match &mut conn.state {
            State::Http(http) => http.deadline_ns,
            State::Session { session, .. } => {
                // Over TLS, the close frame may still be ciphertext in rustls: wait for the
                // socket to take it, within the close grace.
                let flushed = !conn.io.wants_write()
                    || session.closing.is_some_and(|c| {
                        now >= c.deadline_ns
                            || (c.frame.is_none() && matches!(c.ending, Ending::Gone(_)))
                    });
                if session.is_done(now) && flushed {
                    let reason = session.closing.map(|c| c.ending.reason());
                    self.remove_conn(key, reason);
                    return;
                }
                self.core.queue(key, session);
                session_deadline(&self.core.gw, session)
            }
        };
        self.timers.arm(key, deadline, &mut conn.armed_ns);
    }

    fn take_commands(&mut self) {
        let mut commands = std::mem::take(&mut self.commands);
        self.inbox.take_commands(&mut commands);
        for command in commands.drain(..) {
            match command {
                Command::Connection { stream, peer, listener } => {
                    self.accept(stream, peer, listener)
                }
                Command::ReviewAccess => self.review_access(),
                Command::Shutdown => self.start_shutdown(),
            }
        }
        self.commands = commands;
    }

    fn accept(&mut self, stream: std::net::TcpStream, peer: SocketAddr, listener: Listener) {
        let gw = Arc::clone(self.gw());
        if self.stop_by_ns.is_some() {
            return;
        }
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let stream = mio::net::TcpStream::from_std(stream);
        // Only the session port speaks TLS and expects a PROXY header (`--metrics-listen` is
        // for Prometheus and health checks, reached directly).
        let main = listener == Listener::Main;
        let tls = gw.tls.as_ref().filter(|_| main);
        let mut io = match tls {
            None => Transport::plain(stream),
            Some(tls) => match Transport::tls(stream, tls.current()) {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "cannot start TLS on a connection");
                    return;
                }
            },
        };
        let max_pending = u64::from(gw.config.max_pending_connections);
        if gw
            .pending_connections
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_pending).then_some(n + 1)
            })
            .is_err()
        {
            // Refused at once, so a flood of half-open connections holds no buffers. Over TLS
            // no answer can be read before a handshake: the connection is just closed.
            gw.metrics.handshake_rejected(503);
            if !io.is_tls() {
                let answer = Response::text(
                    503,
                    "too many connections are still in their handshake: retry later\n",
                )
                .header("Retry-After", "1")
                .encode(false, false);
                let _ = io.write(&answer);
            }
            tracing::debug!(%peer, "connection refused: pending connection limit reached");
            return;
        }
        let now = mono_ns();
        let entry = self.conns.vacant_entry();
        let key = entry.key() as u32;
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(e) = self.poll.registry().register(io.source(), Token(key as usize), interest) {
            tracing::warn!(%peer, error = %e, "cannot register a connection");
            gw.pending_connections.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        entry.insert(Conn {
            io,
            peer,
            listener,
            armed_ns: u64::MAX,
            state: State::Http(Box::new(HttpConn {
                buf: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                close_after: false,
                // PROXY header, TLS handshake and HTTP request all within this one deadline.
                deadline_ns: now + gw.config.handshake_timeout().as_nanos() as u64,
                awaiting_proxy_header: main && gw.config.proxy_protocol,
            })),
        });
        // Data may have arrived before registration: edge-triggered readiness would not tell.
        self.reread.push(key);
        self.settle(key);
    }

    fn start_shutdown(&mut self) {
        if self.stop_by_ns.is_some() {
            return;
        }
        let now = mono_ns();
        self.stop_by_ns = Some(now + self.gw().config.shutdown_grace().as_nanos() as u64);
        let keys: Vec<u32> = self.conns.iter().map(|(k, _)| k as u32).collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            match &mut conn.state {
                State::Http(_) => self.remove_conn(key, None),
                State::Session { session, .. } => {
                    session.close(Ending::Close(close::GOING_AWAY, EndReason::Shutdown), now);
                    // Settled now, not at the session's next timer: an SSE stream owes no close
                    // frame, so nothing else would end it before its next heartbeat.
                    self.settle(key);
                }
            }
        }
    }

    /// The access configuration was reloaded: every session's grant is reviewed against the
    /// new one (decision 29 of docs/protocol.md). Revoked: closed with 4001 `token revoked`.
    /// Narrowed: the subscriptions it may no longer see are dropped, without a message (as an
    /// unsubscribe it did not send). Updated (and narrowed): the new grant applies from now on,
    /// to its later requests and to its `["*"]`, which gains the symbols it may now see.
    /// Sessions sharing a token share its grant, so each grant is reviewed once per shard.
    fn review_access(&mut self) {
        let access = self.gw().access.load_full();
        let now = mono_ns();
        let wall = std::time::SystemTime::now();
        let mut reviewed: std::collections::HashMap<*const crate::access::Grant, Review> =
            std::collections::HashMap::new();
        let keys: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.state, State::Session { session, .. } if session.closing.is_none()))
            .map(|(k, _)| k as u32)
            .collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            let State::Session { session, .. } = &mut conn.state else { continue };
            let grant = Arc::as_ptr(&session.grant);
            let review =
                reviewed.entry(grant).or_insert_with(|| access.review(&session.grant, wall));
            let renewed = match review {
                Review::Unchanged => continue,
                Review::Revoked => {
                    self.core.gw.metrics.auth_failed(AuthFailure::Revoked);
                    session
                        .close(Ending::Close(close::TOKEN_REVOKED, EndReason::TokenRevoked), now);
                    self.core.queue(key, session);
                    self.settle(key);
                    continue;
                }
                Review::Updated(grant) | Review::Narrowed(grant) => Arc::clone(grant),
            };
            self.regrant(key, renewed, now);
        }
    }

    /// Session `key` holds `grant` from now on: what it may no longer see is dropped, and a
    /// `["*"]` subscription gains what it may now see (within its `max_subscriptions`).
    fn regrant(&mut self, key: u32, grant: Arc<crate::access::Grant>, now: u64) {
        let gw = Arc::clone(self.gw());
        let gateway_max = gw.config.max_subscriptions;
        let table = gw.store.table_full();
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let State::Session { session, .. } = &mut conn.state else { return };
        session.set_grant(grant, now);
        // A lower limit applies to later requests; it drops nothing (decision 30).
        session.max_subscriptions = session.grant.max_subscriptions(gateway_max) as usize;
        let allowed = |symbol: SymbolId| {
            table.entries.get(symbol as usize).is_some_and(|e| session.grant.allows(&e.name))
        };
        let lost: Vec<SymbolId> =
            session.subs.iter().map(|&(symbol, _)| symbol).filter(|&s| !allowed(s)).collect();
        if !lost.is_empty() {
            self.core.remove_subs_where(session, |symbol| lost.binary_search(&symbol).is_ok());
        }
        if let Some(all) = session.all {
            let mut fresh = Vec::new();
            for entry in table.entries.iter() {
                if session.subs.len() + fresh.len() >= session.max_subscriptions {
                    break;
                }
                if session.sub_of(entry.id).is_none() && session.grant.allows(&entry.name) {
                    requests::add_or_update(
                        &mut self.core,
                        key,
                        session,
                        entry.id,
                        all.snapshot,
                        all.throttle_ms,
                        now,
                        &mut fresh,
                    );
                }
            }
            requests::merge_new(session, fresh);
        }
        self.core.queue(key, session);
        self.settle(key);
    }

    /// The feed updated symbols: mark every subscriber on this shard.
    fn fan_out(&mut self) {
        let mut updates = std::mem::take(&mut self.updates);
        self.inbox.take_updates(&mut updates);
        let table = self.gw().store.table_full();
        if table.len() > self.core.known_symbols {
            self.new_symbols(&table);
        }
        if let Some(poison) = &self.core.gw.config.panic_shard_on_symbol {
            // A fault injected by tests: the shard's own loop fails (no session's guard).
            let named = |symbol: SymbolId| table.entries.get(symbol as usize).map(|e| &*e.name);
            let hit = updates.iter().any(|&symbol| named(symbol) == Some(poison.as_str()));
            assert!(!hit, "injected fault: the fan-out of {poison}");
        }
        let metrics = Arc::clone(&self.gw().metrics);
        for &symbol in &updates {
            let Some(entry) = table.entries.get(symbol as usize) else { continue };
            let started = std::time::Instant::now();
            entry.shards[self.core.shard].queued.store(false, Ordering::Release);
            let i = symbol as usize;
            if self.core.latest.len() <= i {
                self.core.latest.resize(i + 1, None);
            }
            self.core.latest[i] = entry.latest();
            let subscribers = self.core.registry.subscribers(symbol).len();
            for n in 0..subscribers {
                let sub = self.core.registry.subscribers(symbol)[n];
                let record = self.core.registry.get(sub);
                if record.waiting != Waiting::No {
                    // Already owed something (or throttled): it will send the freshest value.
                    continue;
                }
                let key = record.session;
                let Some(conn) = self.conns.get_mut(key as usize) else { continue };
                let State::Session { session, .. } = &mut conn.state else { continue };
                self.core.registry.push_back(&mut session.ready, sub, Waiting::Ready);
                if !session.queued {
                    session.queued = true;
                    self.core.dirty.push(key);
                }
            }
            if subscribers > 0 {
                metrics.record_fanout(started.elapsed());
            }
        }
        updates.clear();
        self.updates = updates;
    }

    /// The feed added symbols: `["*"]` sessions get those they are entitled to.
    fn new_symbols(&mut self, table: &crate::store::SymbolTable) {
        let from = self.core.known_symbols;
        self.core.known_symbols = table.len();
        let now = mono_ns();
        let keys: Vec<u32> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(&c.state, State::Session { session, .. } if session.all.is_some()))
            .map(|(k, _)| k as u32)
            .collect();
        for key in keys {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            let State::Session { session, .. } = &mut conn.state else { continue };
            let Some(all) = session.all else { continue };
            let mut fresh = Vec::new();
            for entry in &table.entries[from..] {
                if session.subs.len() + fresh.len() >= session.max_subscriptions {
                    break;
                }
                if requests::entitled(session, &entry.name) {
                    requests::add_or_update(
                        &mut self.core,
                        key,
                        session,
                        entry.id,
                        // Its first quote goes out as a snapshot (decision 7 of docs/protocol.md).
                        true,
                        all.throttle_ms,
                        now,
                        &mut fresh,
                    );
                }
            }
            requests::merge_new(session, fresh);
            self.core.queue(key, session);
        }
    }

    fn run_timers(&mut self) {
        let now = mono_ns();
        // Taken first: a connection re-armed for "now" by its own timer runs next turn.
        let mut due = std::mem::take(&mut self.due);
        while let Some((key, at)) = self.timers.pop_due(now) {
            let Some(conn) = self.conns.get_mut(key as usize) else { continue };
            if conn.armed_ns != at {
                continue; // A stale entry: a newer, earlier one was armed.
            }
            conn.armed_ns = u64::MAX;
            due.push(key);
        }
        for &key in &due {
            self.guarded(key, |s, key| s.on_timer(key, now));
        }
        due.clear();
        self.due = due;
    }

    fn on_timer(&mut self, key: u32, now: u64) {
        let gw = Arc::clone(self.gw());
        let config = &gw.config;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        match &mut conn.state {
            State::Http(http) => {
                if now >= http.deadline_ns {
                    tracing::debug!(peer = %conn.peer, "handshake timeout: closing the connection");
                    self.remove_conn(key, None);
                }
            }
            State::Session { session, .. } => {
                let s = session.as_mut();
                if s.closing.is_some() {
                    return; // `settle` drops it at its deadline.
                }
                if now >= s.expires_ns {
                    // The JWT's `exp`: the client reconnects with a fresh token and resumes.
                    gw.metrics.auth_failed(AuthFailure::Expired);
                    s.close(Ending::Close(close::TOKEN_EXPIRED, EndReason::TokenExpired), now);
                    return;
                }
                let ws = s.framing == Framing::WebSocket;
                if ws
                    && now.saturating_sub(s.last_read_ns) >= config.idle_timeout().as_nanos() as u64
                {
                    s.close(
                        Ending::Close(close::HEARTBEAT_TIMEOUT, EndReason::HeartbeatTimeout),
                        now,
                    );
                    return;
                }
                if s.blocked_since_ns != 0
                    && now.saturating_sub(s.blocked_since_ns)
                        >= config.slow_client_timeout().as_nanos() as u64
                {
                    s.close(Ending::Close(close::SLOW_CONSUMER, EndReason::SlowConsumer), now);
                    return;
                }
                if ws && now >= s.next_ping_ns {
                    s.next_ping_ns = now + config.ping_interval().as_nanos() as u64;
                    if !s.ping_pending {
                        s.ping_pending = true;
                        s.push(Out::Ping);
                    }
                }
                if !s.heartbeat_pending
                    && now.saturating_sub(s.last_message_ns) >= config.heartbeat().as_nanos() as u64
                {
                    s.heartbeat_pending = true;
                    s.push_text(MsgType::Heartbeat, server::heartbeat(wall_ns()));
                }
                if now >= s.next_deferred_ns {
                    self.release_deferred(key, now);
                }
            }
        }
    }

    /// Moves the throttled subscriptions whose time has come back to the ready list.
    fn release_deferred(&mut self, key: u32, now: u64) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let State::Session { session, .. } = &mut conn.state else { return };
        let registry = &mut self.core.registry;
        let mut next = u64::MAX;
        let mut cursor = session.deferred.front();
        while let Some(sub) = cursor {
            cursor = registry.next_of(sub);
            let at = registry.get(sub).state.next_send_ns;
            if at <= now {
                registry.unlink(&mut session.deferred, sub);
                registry.push_back(&mut session.ready, sub, Waiting::Ready);
            } else {
                next = next.min(at);
            }
        }
        session.next_deferred_ns = next;
    }

    fn on_writable(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        match &mut conn.state {
            State::Http(_) => self.write_http(key),
            State::Session { session, .. } => {
                // Over TLS, ciphertext the socket refused goes first; until it is all out, the
                // session stays blocked (and its subscriptions conflate).
                match conn.io.flush() {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::debug!(peer = %conn.peer, error = %e, "session write failed");
                        session.close(Ending::Gone(EndReason::IoError), mono_ns());
                        if let Some(c) = &mut session.closing {
                            c.wait_for_client = false;
                        }
                        return;
                    }
                }
                session.blocked = false;
                self.core.queue(key, session);
            }
        }
    }

    fn on_readable(&mut self, key: u32) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        match &conn.state {
            State::Http(_) => self.read_http(key),
            State::Session { .. } => self.read_session(key),
        }
    }

    // --- HTTP ---

    fn read_http(&mut self, key: u32) {
        let max_head = self.gw().config.max_request_head_bytes as usize;
        if !self.read_proxy_header(key) {
            return;
        }
        loop {
            let Some(conn) = self.conns.get_mut(key as usize) else { return };
            let State::Http(http) = &mut conn.state else { return };
            if !http.out.is_empty() {
                return; // Answer the current request first; its bytes stay in the kernel.
            }
            let room = (max_head + 1).saturating_sub(http.buf.len()).min(READ_CHUNK);
            if room == 0 {
                break;
            }
            match conn.io.read(&mut self.scratch[..room]) {
                Ok(0) => {
                    self.remove_conn(key, None);
                    return;
                }
                Ok(n) => {
                    // Grown as a Vec grows, but never past the cap: a head of
                    // `max_request_head_bytes` holds that much, not twice as much.
                    let len = http.buf.len();
                    if http.buf.capacity() < len + n {
                        let want = (len + n).max(2 * http.buf.capacity()).min(max_head + 1);
                        http.buf.reserve_exact(want.saturating_sub(len));
                    }
                    http.buf.extend_from_slice(&self.scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.remove_conn(key, None);
                    return;
                }
            }
        }
        self.serve_http(key);
    }

    /// `--proxy-protocol`: reads the PROXY v2 header, if it is still awaited, and takes its
    /// client address as the connection's peer (for the per-address cap and the logs). The
    /// header is peeked at in the socket and removed only once complete, so nothing of the
    /// client's own bytes (a TLS ClientHello, an HTTP request) is taken with it. Returns
    /// whether the connection may go on to TLS and HTTP now; a bad header drops it.
    fn read_proxy_header(&mut self, key: u32) -> bool {
        use crate::net::proxy_protocol::{self, ProxyHeader, MAX_HEADER_BYTES};
        let Some(conn) = self.conns.get_mut(key as usize) else { return false };
        let State::Http(http) = &mut conn.state else { return true };
        if !http.awaiting_proxy_header {
            return true;
        }
        let mut head = [0u8; MAX_HEADER_BYTES];
        let seen = match conn.io.peek_raw(&mut head) {
            Ok(0) => {
                self.remove_conn(key, None);
                return false;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => {
                self.remove_conn(key, None);
                return false;
            }
        };
        match proxy_protocol::parse(&head[..seen]) {
            Ok(ProxyHeader::Incomplete) => false,
            Ok(ProxyHeader::Parsed { source, consumed }) => {
                if conn.io.discard_raw(consumed).is_err() {
                    self.remove_conn(key, None);
                    return false;
                }
                http.awaiting_proxy_header = false;
                if let Some(client) = source {
                    tracing::trace!(balancer = %conn.peer, peer = %client, "PROXY header");
                    conn.peer = client;
                }
                true
            }
            Err(e) => {
                tracing::debug!(peer = %conn.peer, error = %e, "dropping a connection: bad PROXY protocol header");
                self.remove_conn(key, None);
                false
            }
        }
    }

    /// Parses and answers the requests buffered on an HTTP connection.
    fn serve_http(&mut self, key: u32) {
        let gw = Arc::clone(self.gw());
        let max_head = gw.config.max_request_head_bytes as usize;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let State::Http(http) = &mut conn.state else { return };
        if !http.out.is_empty() {
            return;
        }
        let (head, consumed) = match http::parse_head(&http.buf, max_head) {
            Parse::Partial => return,
            Parse::Refuse(status, why) => {
                let answer = Response::text(status, format!("{why}\n"));
                self.respond(key, &answer, false, false);
                return;
            }
            Parse::Complete(head, consumed) => (head, consumed),
        };
        http.buf.drain(..consumed);
        let keep_alive = head.keep_alive() && !head.has_body;
        let head_only = head.method() == http::Method::Head;
        match routes::route(&gw, &head, conn.peer, conn.listener) {
            Route::Respond(answer) => self.respond(key, &answer, keep_alive, head_only),
            Route::WebSocket { accept, admission } => self.open_session(
                key,
                Framing::WebSocket,
                admission,
                http::switching_protocols(&accept),
                None,
            ),
            Route::Sse { admission, subscription } => self.open_session(
                key,
                Framing::Sse,
                admission,
                http::event_stream_head().to_vec(),
                Some(subscription),
            ),
        }
    }

    fn respond(&mut self, key: u32, answer: &Response, keep_alive: bool, head_only: bool) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let State::Http(http) = &mut conn.state else { return };
        http.out = answer.encode(keep_alive, head_only);
        http.out_pos = 0;
        http.close_after = !keep_alive;
        self.write_http(key);
    }

    fn write_http(&mut self, key: u32) {
        let handshake = self.gw().config.handshake_timeout().as_nanos() as u64;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let State::Http(http) = &mut conn.state else { return };
        while http.out_pos < http.out.len() {
            match conn.io.write(&http.out[http.out_pos..]) {
                Ok(n) => http.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.remove_conn(key, None);
                    return;
                }
            }
        }
        // Over TLS, the answer (or the handshake) may still be ciphertext the socket has not
        // taken: the connection is writable again before it can be closed or reused.
        match conn.io.flush() {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                self.remove_conn(key, None);
                return;
            }
        }
        if http.out.is_empty() {
            return;
        }
        if http.close_after {
            self.remove_conn(key, None);
            return;
        }
        // Kept alive: the next request gets a fresh deadline, and is served if buffered.
        http.out = Vec::new();
        http.out_pos = 0;
        http.deadline_ns = mono_ns() + handshake;
        if http.buf.is_empty() {
            http.buf = Vec::new();
        }
        self.serve_http(key);
        self.reread.push(key);
    }

    /// Turns HTTP connection `key` into a session: the response head, `welcome`, and for SSE
    /// its fixed subscription.
    fn open_session(
        &mut self,
        key: u32,
        framing: Framing,
        admission: routes::Admission,
        head: Vec<u8>,
        subscription: Option<routes::SseSubscription>,
    ) {
        let gw = Arc::clone(self.gw());
        let config = &gw.config;
        let now = mono_ns();
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let State::Http(http) = &mut conn.state else { return };
        let leftover = std::mem::take(&mut http.buf);
        let budgets = Budgets {
            rate: TokenBucket::new(config.max_requests_per_sec, now),
            // A second's worth of rejections at full rate spends it; it recovers at a tenth of
            // the rate, so only a client that keeps flooding is closed.
            rate_strikes: Strikes::new(
                config.max_requests_per_sec,
                f64::from(config.max_requests_per_sec) / 10.0,
                now,
            ),
            bad_strikes: Strikes::new(
                config.error_budget,
                f64::from(config.error_budget) / 60.0,
                now,
            ),
        };
        let id = gw.next_session_id();
        let max_subscriptions = admission.grant.max_subscriptions(config.max_subscriptions);
        let mut session = Box::new(Session::new(
            id,
            framing,
            conn.peer,
            Arc::clone(&admission.grant),
            max_subscriptions as usize,
            budgets,
            now,
        ));
        session.set_grant(Arc::clone(&admission.grant), now);
        if framing == Framing::WebSocket {
            session.next_ping_ns = now + config.ping_interval().as_nanos() as u64;
        }
        session.push(Out::Raw(head.into()));
        let epoch = gw.store.epoch();
        let limits = Limits {
            max_subscriptions,
            max_message_bytes: config.max_message_bytes,
            max_requests_per_sec: config.max_requests_per_sec,
        };
        let welcome = server::welcome(
            &gw.server_name,
            &session.id_hex(),
            &epoch,
            wall_ns(),
            config.heartbeat_ms,
            limits,
        );
        session.push_text(MsgType::Welcome, welcome);
        let principal = session.grant.principal();
        // Audit: at info for a credential's session (the token entry's name or the JWT's
        // `sub`, never the credential), at debug on an open gateway (every session anonymous).
        audit!(
            *principal != Principal::Anonymous,
            session = %session.id_hex(), peer = %conn.peer, token = principal.token_name(),
            sub = principal.sub(), shard = self.core.shard, ?framing, tls = conn.io.tls_version(),
            "session opened"
        );
        // No longer pending, and a session, in one step: whatever fails from here on (a panic
        // included) ends a session, counted once as one.
        gw.pending_connections.fetch_sub(1, Ordering::AcqRel);
        conn.state = State::Session { session, _admission: admission };
        gw.metrics.sessions_opened.increment(1);
        if framing == Framing::Sse {
            gw.sse_sessions_active.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some(sub), State::Session { session, .. }) = (subscription, &mut conn.state) {
            let request = requests::Subscribe {
                symbols: sub.symbols,
                snapshot: sub.snapshot,
                throttle_ms: sub.throttle_ms,
                resume: sub.resume,
            };
            requests::subscribe(&mut self.core, key, session, None, request, now);
        }
        if !leftover.is_empty() && framing == Framing::WebSocket {
            // Frames the client sent right behind its upgrade request.
            self.take_frames(key, leftover);
        }
        if let Some(conn) = self.conns.get_mut(key as usize) {
            if let State::Session { session, .. } = &mut conn.state {
                self.core.queue(key, session);
            }
        }
        self.reread.push(key);
    }

    // --- sessions ---

    fn read_session(&mut self, key: u32) {
        let mut total = 0;
        loop {
            let Some(conn) = self.conns.get_mut(key as usize) else { return };
            let State::Session { session, .. } = &mut conn.state else { return };
            if session.read_paused {
                return;
            }
            match conn.io.read(&mut self.scratch) {
                Ok(0) => {
                    session.close(Ending::Gone(EndReason::Client), mono_ns());
                    if let Some(c) = &mut session.closing {
                        c.wait_for_client = false;
                    }
                    return;
                }
                Ok(n) => {
                    total += n;
                    if session.framing == Framing::Sse {
                        // An SSE client has nothing to say; what it sends is ignored.
                        continue;
                    }
                    let mut data = std::mem::take(&mut self.scratch);
                    self.take_frames_from(key, &mut data[..n]);
                    self.scratch = data;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "session read failed");
                    session.close(Ending::Gone(EndReason::IoError), mono_ns());
                    return;
                }
            }
            if total >= READ_BUDGET {
                self.reread.push(key);
                return;
            }
        }
    }

    /// Handles frames in `bytes` (appended to what the session had buffered).
    fn take_frames(&mut self, key: u32, mut bytes: Vec<u8>) {
        self.take_frames_from(key, &mut bytes);
    }

    fn take_frames_from(&mut self, key: u32, bytes: &mut [u8]) {
        let max_message = self.gw().config.max_message_bytes as usize;
        let outbox_max = 2 * max_message + 4096;
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let State::Session { session, .. } = &mut conn.state else { return };
        let s = session.as_mut();
        let mut held = std::mem::take(&mut s.inbuf);
        let buf: &mut [u8] = if held.is_empty() {
            bytes
        } else {
            held.extend_from_slice(bytes);
            &mut held
        };
        let now = mono_ns();
        s.last_read_ns = now;
        let mut assembly =
            Assembly { bytes: std::mem::take(&mut s.message), opcode: s.message_opcode.take() };
        let core = &mut self.core;
        let result = inbound::parse(buf, &mut assembly, max_message, |event| {
            if let Some(closing) = &mut s.closing {
                // Closing: read on only for the client's close reply.
                if matches!(event, Event::Close(_)) {
                    closing.wait_for_client = false;
                }
                return true;
            }
            match event {
                Event::Text(text) => requests::handle_text(core, key, s, text, now),
                Event::Binary => {
                    core.gw.metrics.request(crate::metrics::OpLabel::Invalid);
                    let why =
                        "binary frames are not supported: send each request as a JSON text frame";
                    requests::error(
                        core,
                        s,
                        None,
                        proto::server::ErrorCode::BadRequest,
                        why,
                        &[],
                        None,
                    );
                    if s.budgets.bad_strikes.strike(now) {
                        s.close(Ending::Close(close::POLICY_ERRORS, EndReason::Policy), now);
                    }
                }
                Event::Ping(payload) => {
                    if !s.outbox.iter().any(|o| matches!(o, Out::Pong(_))) {
                        s.push(Out::Pong(bytes::Bytes::copy_from_slice(payload)));
                    }
                }
                Event::Pong => {}
                Event::Close(code) => s.client_closed(code, now),
            }
            core.queue(key, s);
            if s.outbox_bytes > outbox_max {
                s.read_paused = true;
            }
            !s.read_paused && s.closing.is_none()
        });
        match result {
            Ok(consumed) => {
                let rest = &buf[consumed..];
                if !rest.is_empty() {
                    s.inbuf = rest.to_vec();
                }
            }
            Err(ending) => {
                s.close(ending, now);
                if matches!(ending, Ending::Close(..)) {
                    tracing::debug!(peer = %s.peer, ?ending, "client broke the protocol");
                }
            }
        }
        // An assembly buffer is kept only while a message is in progress.
        if assembly.opcode.is_some() {
            s.message = assembly.bytes;
            s.message_opcode = assembly.opcode;
        }
        core.queue(key, s);
    }

    fn write_pass(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
        let now = mono_ns();
        let wall = wall_ns();
        for &key in &dirty {
            self.guarded(key, |s, key| s.write_one(key, now, wall));
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.core.dirty.is_empty() {
            self.core.dirty = dirty;
        }
    }

    /// Writes what session `key` is owed; then, if that brought its outbox under the bound,
    /// reads on (the frames held while reading was paused first).
    fn write_one(&mut self, key: u32, now: u64, wall: u64) {
        let Some(conn) = self.conns.get_mut(key as usize) else { return };
        let State::Session { session, .. } = &mut conn.state else { return };
        session.queued = false;
        if session.blocked {
            return; // Served when the socket is writable again.
        }
        let was_paused = session.read_paused;
        write::write_session(
            &mut self.core,
            &mut self.write_plan,
            session,
            &mut conn.io,
            now,
            wall,
        );
        let max_message = self.core.gw.config.max_message_bytes as usize;
        if was_paused && session.outbox_bytes <= max_message {
            session.read_paused = false;
            let held = std::mem::take(&mut session.inbuf);
            self.take_frames(key, held);
            self.reread.push(key);
        }
    }

    fn flush_tally(&mut self) {
        let tally = std::mem::take(&mut self.core.tally);
        if tally.is_empty() {
            return;
        }
        self.core.gw.metrics.add_tally(&tally);
    }

    /// Removes connection `key`: its subscriptions, its counts, its socket. `reason`: the
    /// session's ending, counted and logged here, once.
    fn remove_conn(&mut self, key: u32, reason: Option<EndReason>) {
        if !self.conns.contains(key as usize) {
            return;
        }
        let mut conn = self.conns.remove(key as usize);
        conn.io.close_notify();
        if self.conns.is_empty() && self.conns.capacity() > 1_024 {
            // The last connection of a crowd went: its table's high-water mark goes too.
            self.conns = Slab::new();
        }
        let _ = self.poll.registry().deregister(conn.io.source());
        let gw = Arc::clone(self.gw());
        match &mut conn.state {
            State::Http(_) => {
                gw.pending_connections.fetch_sub(1, Ordering::AcqRel);
            }
            State::Session { session, .. } => {
                let s = session.as_mut();
                self.core.remove_all_subs(s);
                if s.framing == Framing::Sse {
                    gw.sse_sessions_active.fetch_sub(1, Ordering::Relaxed);
                }
                if let Some(reason) = reason {
                    gw.metrics.session_closed(reason);
                    let (code, why) = match s.closing.map(|c| c.ending) {
                        Some(Ending::Close(cause, _)) => (Some(cause.code), Some(cause.reason)),
                        _ => (None, None),
                    };
                    // Audit: who and from where, at info for a credential's session and for
                    // a close the gateway decided (not a normal one or shutdown's 1001).
                    let principal = s.grant.principal();
                    let by_gateway = code.is_some_and(|c| c != 1000 && c != 1001);
                    audit!(
                        by_gateway || *principal != Principal::Anonymous,
                        session = %s.id_hex(), peer = %s.peer, token = principal.token_name(),
                        sub = principal.sub(), reason = reason.as_str(), code, close_reason = why,
                        "session closed"
                    );
                }
            }
        }
    }
}

/// A session's earliest deadline.
fn session_deadline(gw: &Gateway, s: &Session) -> u64 {
    let config = &gw.config;
    if let Some(closing) = s.closing {
        return closing.deadline_ns;
    }
    // A heartbeat or Ping already owed is not due again until it is written.
    let mut at = if s.heartbeat_pending {
        u64::MAX
    } else {
        s.last_message_ns + config.heartbeat().as_nanos() as u64
    };
    if s.framing == Framing::WebSocket {
        at = at.min(s.next_ping_ns).min(s.last_read_ns + config.idle_timeout().as_nanos() as u64);
    }
    if s.blocked_since_ns != 0 {
        at = at.min(s.blocked_since_ns + config.slow_client_timeout().as_nanos() as u64);
    }
    at.min(s.next_deferred_ns).min(s.expires_ns)
}
