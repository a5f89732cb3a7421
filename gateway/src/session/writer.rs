//! The writing half of a session: the only place that sends to the client.
//!
//! Each wake-up takes what is pending (requests from the reader, dirty subscriptions, timers),
//! frames it into the WebSocket write buffer, and flushes once: several quotes per system call.
//! Quote frames are the feed's bytes, shared, never copied or re-encoded here.
//!
//! Backpressure: a subscription's slot holds at most one pending update. A session that keeps
//! up gets every update, missed ones replayed from the symbol's short history; a session whose
//! socket is full gets the latest quote of each symbol (a `seq` jump, counted as conflation).
//! A socket that accepts nothing for the slow-client timeout closes the session with 4008.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use proto::close::{self, CloseCause};
use proto::request::RequestId;
use proto::server::{self, ErrorCode, Limits};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

use super::io::Progress;
use super::{Control, Ending, Resolved, SessionParams, CLOSE_GRACE};
use crate::clock::{mono_ns, wall_ns};
use crate::fanout::{SessionSignal, Slot};
use crate::metrics::{EndReason, MsgType, Tally};
use crate::server::Gateway;
use crate::store::{QuoteRef, SymbolId, HISTORY};

type Step = Result<(), Ending>;

/// A subscribe's snapshots are flushed every this many bytes. tungstenite's write buffer keeps
/// the largest size it ever reached, so a burst of snapshots framed at once would leave every
/// idle session holding a few KiB it never uses again; a few extra writes per subscribe avoid it.
const SNAPSHOT_FLUSH_BYTES: usize = 1024;

/// Missed updates received (by this gateway) longer ago than this are not replayed from the history: the session is behind,
/// not briefly late, and gets the latest quote (a `seq` jump) instead. A writer that keeps up
/// misses updates only for the instant between a mark and its run (well under a millisecond;
/// tens of milliseconds when the OS deschedules the shard), so 50 ms loses nothing then,
/// while under CPU overload it bounds the age of what is sent instead of queueing.
const REPLAY_MAX_AGE_NS: u64 = 50_000_000;

pub struct Writer<S> {
    sink: S,
    rx: mpsc::Receiver<Box<Control>>,
    gw: Arc<Gateway>,
    shard: usize,
    session_id: String,
    /// The shard's shutdown token.
    shutdown: CancellationToken,
    signal: Arc<SessionSignal>,
    progress: Arc<Progress>,
    subs: Subscriptions,
    entitlement: Option<Arc<super::Entitlement>>,
    /// Slots taken from the ready list, reused between batches.
    ready: Vec<Arc<Slot>>,
    /// Throttled slots waiting for their next send time (still marked dirty meanwhile).
    deferred: Vec<Arc<Slot>>,
    tally: Tally,
    /// Bytes framed since the last flush.
    unflushed: usize,
    /// Monotonic ns of the last JSON message framed (heartbeats fill the gaps).
    last_message_ns: u64,
    /// The clocks, read once per wake-up rather than per message.
    now_ns: u64,
    wall_now_ns: u64,
    next_ping_ns: u64,
}

impl<S> Writer<S>
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    pub fn new(
        sink: S,
        rx: mpsc::Receiver<Box<Control>>,
        params: &SessionParams,
        progress: Arc<Progress>,
        session_id: String,
    ) -> Self {
        let gw = Arc::clone(&params.gateway);
        let signal = Arc::new(SessionSignal::default());
        let now = mono_ns();
        Writer {
            sink,
            rx,
            subs: Subscriptions {
                gw: Arc::clone(&gw),
                shard: params.shard,
                signal: Arc::clone(&signal),
                slots: HashMap::new(),
            },
            next_ping_ns: now + gw.config.ping_interval().as_nanos() as u64,
            gw,
            shard: params.shard,
            shutdown: params.shutdown.clone(),
            session_id,
            signal,
            progress,
            entitlement: params.entitlement.clone(),
            ready: Vec::new(),
            deferred: Vec::new(),
            tally: Tally::default(),
            unflushed: 0,
            last_message_ns: now,
            now_ns: now,
            wall_now_ns: wall_ns(),
        }
    }

    /// Serves the session until it ends, then sends the close frame if one is due.
    pub async fn run(mut self) -> Ending {
        let ending = match self.serve().await {
            Ok(()) => Ending::Gone(EndReason::Client),
            Err(ending) => ending,
        };
        self.gw.metrics.add_tally(&self.tally);
        match ending {
            Ending::Close(cause, _) => self.send_close(cause).await,
            // The client's close: tungstenite has queued its reply; push it out, briefly.
            Ending::Gone(EndReason::Client) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, self.sink.flush()).await;
            }
            Ending::Gone(_) => {}
        }
        ending
    }

    async fn send_close(&mut self, cause: CloseCause) {
        let frame = CloseFrame { code: cause.code.into(), reason: cause.reason.into() };
        let _ =
            tokio::time::timeout(CLOSE_GRACE, self.sink.send(Message::Close(Some(frame)))).await;
    }

    async fn serve(&mut self) -> Step {
        let config = &self.gw.config;
        let limits = Limits {
            max_subscriptions: config.max_subscriptions,
            max_message_bytes: config.max_message_bytes,
            max_requests_per_sec: config.max_requests_per_sec,
        };
        let epoch = self.gw.store.epoch();
        let welcome = server::welcome(
            &self.gw.server_name,
            &self.session_id,
            &epoch,
            wall_ns(),
            config.heartbeat_ms,
            limits,
        );
        self.send(MsgType::Welcome, welcome.into()).await?;
        self.flush().await?;

        // Registered once for the session's life: polling a fresh one per wake-up would take
        // the token's lock every time.
        let shutdown = self.shutdown.clone();
        let cancelled = shutdown.cancelled();
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(cancelled, sleep);
        // When the armed timer fires; re-armed only when something is due earlier (a timer that
        // fires early finds nothing due and is re-armed then), not on every wake-up.
        let mut armed_ns = 0;
        loop {
            let deadline = self.next_deadline_ns();
            if deadline < armed_ns || armed_ns <= self.now_ns {
                sleep.as_mut().reset(deadline_instant(deadline));
                armed_ns = deadline;
            }
            let signal = &self.signal;
            tokio::select! {
                biased;
                () = &mut cancelled => return Err(Ending::Close(close::GOING_AWAY, EndReason::Shutdown)),
                control = self.rx.recv() => match control {
                    Some(control) => Box::pin(self.handle(control)).await?,
                    None => return Err(Ending::Gone(EndReason::Client)),
                },
                () = poll_fn(|cx| {
                    signal.waker.register(cx.waker());
                    if signal.ready.is_empty() { Poll::Pending } else { Poll::Ready(()) }
                }) => {}
                () = &mut sleep => armed_ns = 0,
            }
            self.now_ns = mono_ns();
            self.wall_now_ns = wall_ns();
            self.on_timers().await?;
            self.send_updates().await?;
            if self.now_ns.saturating_sub(self.last_message_ns)
                >= self.gw.config.heartbeat().as_nanos() as u64
            {
                self.send(MsgType::Heartbeat, server::heartbeat(wall_ns()).into()).await?;
            }
            self.flush().await?;
        }
    }

    /// The earliest time something is due: heartbeat, ping, idle check, a throttled symbol.
    fn next_deadline_ns(&self) -> u64 {
        let config = &self.gw.config;
        let heartbeat = self.last_message_ns + config.heartbeat().as_nanos() as u64;
        let idle = self.progress.last_read_ns.load(Ordering::Relaxed)
            + config.idle_timeout().as_nanos() as u64;
        let throttled = self
            .deferred
            .iter()
            .map(|s| s.next_send_ns.load(Ordering::Relaxed))
            .min()
            .unwrap_or(u64::MAX);
        heartbeat.min(self.next_ping_ns).min(idle).min(throttled)
    }

    async fn on_timers(&mut self) -> Step {
        let now = self.now_ns;
        let config = &self.gw.config;
        let last_read = self.progress.last_read_ns.load(Ordering::Relaxed);
        if now.saturating_sub(last_read) >= config.idle_timeout().as_nanos() as u64 {
            return Err(Ending::Close(close::HEARTBEAT_TIMEOUT, EndReason::HeartbeatTimeout));
        }
        if now >= self.next_ping_ns {
            self.next_ping_ns = now + config.ping_interval().as_nanos() as u64;
            self.io_feed(Message::Ping(Bytes::new())).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, control: Box<Control>) -> Step {
        match *control {
            Control::Subscribe { id, symbols, snapshot, throttle_ms } => {
                self.subscribe(id, symbols, snapshot, throttle_ms).await
            }
            Control::Unsubscribe { id, symbols } => self.unsubscribe(id, symbols).await,
            Control::Ping { id } => {
                self.send(MsgType::Pong, server::pong(id.as_ref(), wall_ns()).into()).await
            }
            Control::Error { id, code, message, retry_after_ms } => {
                self.send_error(id.as_ref(), code, &message, &[], retry_after_ms).await
            }
            Control::End(ending) => Err(ending),
        }
    }

    async fn send_error(
        &mut self,
        id: Option<&RequestId>,
        code: ErrorCode,
        message: &str,
        symbols: &[String],
        retry_after_ms: Option<u64>,
    ) -> Step {
        self.gw.metrics.request_error(code);
        let frame =
            server::error(id, code, message, symbols.iter().map(String::as_str), retry_after_ms);
        self.send(MsgType::Error, frame.into()).await
    }

    async fn subscribe(
        &mut self,
        id: Option<RequestId>,
        symbols: Resolved,
        snapshot: bool,
        throttle_ms: u32,
    ) -> Step {
        let table = self.gw.store.table_full();
        let (accepted, unknown, forbidden, all): (Vec<SymbolId>, _, _, _) = match symbols {
            Resolved::All => {
                let ids = table
                    .entries
                    .iter()
                    .filter(|e| {
                        self.entitlement
                            .as_ref()
                            .is_none_or(|allowed| allowed.contains(e.name.as_ref()))
                    })
                    .map(|e| e.id)
                    .collect();
                (ids, Vec::new(), Vec::new(), true)
            }
            Resolved::List { known, unknown, forbidden } => (known, unknown, forbidden, false),
        };
        let added = accepted.iter().filter(|id| !self.subs.slots.contains_key(id)).count();
        let max = self.gw.config.max_subscriptions as usize;
        if self.subs.slots.len() + added > max {
            let message = format!(
                "subscribing to {added} more symbols would exceed max_subscriptions ({max}); this session has {}",
                self.subs.slots.len()
            );
            return self
                .send_error(id.as_ref(), ErrorCode::TooManySubscriptions, &message, &[], None)
                .await;
        }
        if !accepted.is_empty() || all {
            let ack = if all {
                server::ack(id.as_ref(), "subscribe", ["*"])
            } else {
                server::ack(
                    id.as_ref(),
                    "subscribe",
                    accepted.iter().map(|&s| table.entries[s as usize].name.as_ref()),
                )
            };
            self.send(MsgType::Ack, ack.into()).await?;
        }
        if !unknown.is_empty() {
            let message = format!("unknown symbol: {}", unknown.join(", "));
            self.send_error(id.as_ref(), ErrorCode::UnknownSymbol, &message, &unknown, None)
                .await?;
        }
        if !forbidden.is_empty() {
            let message = format!("not entitled to symbol: {}", forbidden.join(", "));
            self.send_error(id.as_ref(), ErrorCode::Forbidden, &message, &forbidden, None).await?;
        }
        let now = mono_ns();
        for symbol in accepted {
            let entry = &table.entries[symbol as usize];
            let (slot, new) = self.subs.add(symbol, throttle_ms);
            let latest = entry.latest();
            if snapshot {
                match latest {
                    Some(latest) => {
                        slot.last_seq.store(latest.quote.seq, Ordering::Relaxed);
                        slot.next_send_ns
                            .store(now + u64::from(throttle_ms) * 1_000_000, Ordering::Relaxed);
                        self.send(MsgType::Snapshot, latest.frames.snapshot.clone()).await?;
                        if self.unflushed >= SNAPSHOT_FLUSH_BYTES {
                            self.flush().await?;
                        }
                    }
                    // No quote yet (the feed has not reached this symbol): the first one will
                    // go out as this snapshot.
                    None => slot.snapshot_due.store(true, Ordering::Relaxed),
                }
            } else if new {
                // No snapshot asked for: quotes start with the next update.
                slot.last_seq.store(latest.map_or(0, |l| l.quote.seq), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    async fn unsubscribe(&mut self, id: Option<RequestId>, symbols: Resolved) -> Step {
        let table = self.gw.store.table_full();
        let ack = match symbols {
            Resolved::All => {
                let all: Vec<SymbolId> = self.subs.slots.keys().copied().collect();
                for symbol in all {
                    self.subs.remove(symbol);
                }
                server::ack(id.as_ref(), "unsubscribe", ["*"])
            }
            Resolved::List { known, unknown, forbidden } => {
                for &symbol in &known {
                    self.subs.remove(symbol);
                }
                // Unsubscribing what is not subscribed (or does not exist) is not an error.
                let names = known.iter().map(|&s| table.entries[s as usize].name.as_ref());
                server::ack(
                    id.as_ref(),
                    "unsubscribe",
                    names
                        .chain(unknown.iter().map(String::as_str))
                        .chain(forbidden.iter().map(String::as_str)),
                )
            }
        };
        // Slots removed above may still be on the ready list or deferred: they are inactive
        // now and skipped, so nothing for these symbols follows this ack.
        self.send(MsgType::Ack, ack.into()).await
    }

    /// Sends what the feed has marked: every update to a session that keeps up, the latest of
    /// each symbol to one that does not.
    async fn send_updates(&mut self) -> Step {
        let now = self.now_ns;
        // A write that had to wait since the last batch: the session is behind.
        let behind = self.progress.blocked.swap(false, Ordering::Relaxed);
        let mut due = Vec::new();
        self.deferred.retain(|slot| {
            if !slot.is_active() {
                false
            } else if slot.next_send_ns.load(Ordering::Relaxed) <= now {
                due.push(Arc::clone(slot));
                false
            } else {
                true
            }
        });
        let mut ready = std::mem::take(&mut self.ready);
        ready.append(&mut due);
        self.signal.ready.take_all(&mut ready);
        if ready.is_empty() {
            self.ready = ready;
            return Ok(());
        }
        self.gw.metrics.note_pending(ready.len() as u64);
        let table = self.gw.store.table_full();
        let mut result = Ok(());
        for slot in ready.drain(..) {
            if result.is_err() || !slot.is_active() {
                continue;
            }
            let throttle_ns = u64::from(slot.throttle_ms.load(Ordering::Relaxed)) * 1_000_000;
            if throttle_ns > 0 && now < slot.next_send_ns.load(Ordering::Relaxed) {
                self.deferred.push(slot);
                continue;
            }
            slot.take_mark();
            let entry = &table.entries[slot.symbol as usize];
            let Some(latest) = entry.latest_quote() else { continue };
            let last = slot.last_seq.load(Ordering::Relaxed);
            let target = latest.seq;
            if target <= last {
                continue;
            }
            if slot.snapshot_due.swap(false, Ordering::Relaxed) {
                // Rare (subscribed before the symbol's first quote): the whole snapshot.
                if let Some(snap) = entry.latest() {
                    result = self.send(MsgType::Snapshot, snap.frames.snapshot.clone()).await;
                    slot.last_seq.store(snap.quote.seq, Ordering::Relaxed);
                    slot.next_send_ns.store(now + throttle_ns, Ordering::Relaxed);
                }
                continue;
            }
            let mut next = last + 1;
            if throttle_ns == 0 {
                let behind = behind || self.progress.blocked.load(Ordering::Relaxed);
                if !behind && target - last <= HISTORY as u64 {
                    let oldest_replayed = self.wall_now_ns.saturating_sub(REPLAY_MAX_AGE_NS);
                    while next < target {
                        let Some(missed) = entry.quote_at_seq(next) else { break };
                        // The gateway's own receive time, not the feed's `ts`: a remote feed's
                        // clock may be skewed.
                        if missed.received_ns < oldest_replayed {
                            // The writer itself runs late (the shard is saturated): replaying
                            // would be a queue; jump to the latest instead.
                            break;
                        }
                        result = self.send_quote(missed).await;
                        if result.is_err() {
                            break;
                        }
                        next += 1;
                    }
                }
                self.tally.conflated += target - next;
            } else {
                slot.next_send_ns.store(now + throttle_ns, Ordering::Relaxed);
            }
            if result.is_ok() {
                result = self.send_quote(latest).await;
                slot.last_seq.store(target, Ordering::Relaxed);
            }
        }
        self.ready = ready;
        result
    }

    async fn send_quote(&mut self, quote: QuoteRef) -> Step {
        let age = self.wall_now_ns.saturating_sub(quote.ts);
        self.gw.metrics.quote_age(self.shard).record_ns(age);
        self.send(MsgType::Quote, quote.frame).await
    }

    /// Frames one JSON message; it goes out with the next flush (or sooner, when the write
    /// buffer passes its budget).
    async fn send(&mut self, kind: MsgType, json: Bytes) -> Step {
        let len = json.len();
        // SAFETY: every message is JSON written by `proto` from `&str` pieces: valid UTF-8.
        let text = unsafe { Utf8Bytes::from_bytes_unchecked(json) };
        self.io_feed(Message::Text(text)).await?;
        self.tally.sent(kind, len);
        self.unflushed += len;
        // Quotes go out in batches stamped once per wake-up; the rest (rare) read the clock.
        self.last_message_ns = if kind == MsgType::Quote { self.now_ns } else { mono_ns() };
        Ok(())
    }

    async fn io_feed(&mut self, message: Message) -> Step {
        let fut = self.sink.feed(message);
        guard_io(fut, &self.progress, &self.gw.config, &self.shutdown).await
    }

    /// Writes out what is framed; the batch's counts go to the metrics once, here.
    async fn flush(&mut self) -> Step {
        let fut = self.sink.flush();
        guard_io(fut, &self.progress, &self.gw.config, &self.shutdown).await?;
        if self.unflushed > 0 {
            self.unflushed = 0;
            self.gw.metrics.add_tally(&self.tally);
            self.tally = Tally::default();
        }
        Ok(())
    }
}

/// Runs one socket operation, ending the session when the socket accepts nothing for the
/// slow-client timeout (4008) or the gateway shuts down meanwhile (1001).
async fn guard_io(
    fut: impl Future<Output = Result<(), WsError>>,
    progress: &Progress,
    config: &crate::Config,
    shutdown: &CancellationToken,
) -> Step {
    tokio::pin!(fut);
    // Fast path: a frame that fits the write buffer completes at once, with no timer and no
    // shutdown registration (this runs once per message).
    if let Poll::Ready(result) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
        return result.map_err(write_ending);
    }
    // Slow path, boxed: its timer and shutdown waiter would otherwise sit in every session's
    // future for its whole life.
    Box::pin(wait_io(fut, progress, config, shutdown)).await
}

/// Waits for a socket operation that could not complete at once, watching the session's clocks.
async fn wait_io(
    mut fut: std::pin::Pin<&mut impl Future<Output = Result<(), WsError>>>,
    progress: &Progress,
    config: &crate::Config,
    shutdown: &CancellationToken,
) -> Step {
    let timeout = config.slow_client_timeout().as_nanos() as u64;
    let idle = config.idle_timeout().as_nanos() as u64;
    let started = mono_ns();
    loop {
        // Two clocks run while the socket is full: no progress for the slow-client timeout
        // (4008), and nothing from the client for the idle timeout (4000).
        let stalled_at = progress.last_write_ns.load(Ordering::Relaxed).max(started) + timeout;
        let idle_at = progress.last_read_ns.load(Ordering::Relaxed) + idle;
        tokio::select! {
            result = fut.as_mut() => return result.map_err(write_ending),
            () = tokio::time::sleep_until(deadline_instant(stalled_at.min(idle_at))) => {
                let now = mono_ns();
                if now >= progress.last_read_ns.load(Ordering::Relaxed) + idle {
                    return Err(Ending::Close(close::HEARTBEAT_TIMEOUT, EndReason::HeartbeatTimeout));
                }
                if now >= progress.last_write_ns.load(Ordering::Relaxed).max(started) + timeout {
                    return Err(Ending::Close(close::SLOW_CONSUMER, EndReason::SlowConsumer));
                }
            }
            () = shutdown.cancelled() => return Err(Ending::Close(close::GOING_AWAY, EndReason::Shutdown)),
        }
    }
}

fn write_ending(e: WsError) -> Ending {
    match e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => Ending::Gone(EndReason::Client),
        WsError::Io(_) => Ending::Gone(EndReason::IoError),
        e => {
            tracing::warn!(error = %e, "session write failed");
            Ending::Close(close::INTERNAL, EndReason::Internal)
        }
    }
}

/// A tokio instant for a monotonic ns deadline.
fn deadline_instant(deadline_ns: u64) -> tokio::time::Instant {
    let now = mono_ns();
    let wait = Duration::from_nanos(deadline_ns.saturating_sub(now)).min(Duration::from_secs(3600));
    tokio::time::Instant::now() + wait
}

/// A session's subscriptions, registered with the shard's fan-out; released on drop.
struct Subscriptions {
    gw: Arc<Gateway>,
    shard: usize,
    signal: Arc<SessionSignal>,
    slots: HashMap<SymbolId, Arc<Slot>>,
}

impl Subscriptions {
    /// The slot for `symbol`, created and registered if new (the bool); options replaced.
    fn add(&mut self, symbol: SymbolId, throttle_ms: u32) -> (Arc<Slot>, bool) {
        if let Some(slot) = self.slots.get(&symbol) {
            slot.throttle_ms.store(throttle_ms, Ordering::Relaxed);
            // A shorter throttle applies at once, not after the old interval.
            let next = mono_ns() + u64::from(throttle_ms) * 1_000_000;
            slot.next_send_ns.fetch_min(next, Ordering::Relaxed);
            return (Arc::clone(slot), false);
        }
        let slot = Slot::new(symbol, Arc::clone(&self.signal), throttle_ms);
        let table = self.gw.store.table();
        table.entries[symbol as usize].shards[self.shard].slots.rcu(|list| {
            let mut list = Vec::clone(list);
            list.push(Arc::clone(&slot));
            list
        });
        self.slots.insert(symbol, Arc::clone(&slot));
        self.gw.subscriptions_active.fetch_add(1, Ordering::Relaxed);
        (slot, true)
    }

    fn remove(&mut self, symbol: SymbolId) {
        let Some(slot) = self.slots.remove(&symbol) else { return };
        slot.deactivate();
        let table = self.gw.store.table();
        table.entries[symbol as usize].shards[self.shard].slots.rcu(|list| {
            list.iter().filter(|s| !Arc::ptr_eq(s, &slot)).cloned().collect::<Vec<_>>()
        });
        self.gw.subscriptions_active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        let symbols: Vec<SymbolId> = self.slots.keys().copied().collect();
        for symbol in symbols {
            self.remove(symbol);
        }
        // Slots still listed hold the signal, which holds the list: break the cycle.
        let mut rest = Vec::new();
        self.signal.ready.take_all(&mut rest);
    }
}
