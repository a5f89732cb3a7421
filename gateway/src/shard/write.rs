//! The write path: everything a session is owed, in one vectored write.
//!
//! A frame is a small head (a 2–10 byte WebSocket header, or an SSE `event:`/`data:` line) and
//! a payload that is already encoded: a quote's frame from the shard's cache of the latest
//! snapshots (borrowed, no reference count), a replayed update from the history, or a control
//! message. The iovecs point at those bytes; nothing is copied per session. What the kernel
//! takes is committed frame by frame; a frame it took in part stays as an offset on the
//! session ([`PartialFrame`]); the frames it did not take are not lost but not sent either:
//! their subscriptions go to the back of the ready list, to be decided again (and
//! conflated, if the session stays behind).

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::sync::Arc;

use bytes::Bytes;

use super::Core;
use crate::delivery::{self as policy, Delivery};
use crate::fanout::{SubKey, Waiting};
use crate::metrics::{EndReason, MsgType};
use crate::net::transport::Transport;
use crate::net::ws::{self, FrameHeader};
use crate::session::{Ending, Framing, Head, Out, PartialFrame, Session};
use crate::store::{Snapshot, SymbolId};

/// Frames per write at most (each takes up to three iovecs; Linux allows 1,024).
const MAX_FRAMES: usize = 128;
const MAX_IOV: usize = 3 * MAX_FRAMES + 3;

/// Writes per session per turn: a session owed more than that waits for the next turn, so one
/// busy session cannot hold up the others.
const MAX_ROUNDS: usize = 4;

/// What ends an SSE event.
const SSE_END: &[u8] = b"\n\n";

/// The line that opens an SSE event of each message type.
fn sse_head(kind: MsgType) -> &'static [u8] {
    match kind {
        MsgType::Welcome => b"event: welcome\ndata: ",
        MsgType::Ack => b"event: ack\ndata: ",
        MsgType::Error => b"event: error\ndata: ",
        MsgType::Snapshot => b"event: snapshot\ndata: ",
        MsgType::Quote => b"event: quote\ndata: ",
        MsgType::Heartbeat => b"event: heartbeat\ndata: ",
        MsgType::Pong => b"event: pong\ndata: ",
    }
}

/// Reusable buffers of the write path (one per shard).
#[derive(Default)]
pub struct Plan {
    frames: Vec<Planned>,
    /// Subscriptions taken off the ready list for this write, in order.
    taken: Vec<SubKey>,
    /// The held updates this write replays; their frames are borrowed from here.
    history: Vec<Arc<Snapshot>>,
}

struct Planned {
    head: Head,
    payload: Payload,
    tail: &'static [u8],
    len: usize,
    commit: Commit,
}

enum Payload {
    /// The cached latest snapshot of a symbol: its `snapshot` or its `quote` frame.
    Cached {
        symbol: SymbolId,
        snapshot: bool,
    },
    /// A replayed update: the `quote` frame of `Plan::history[i]`.
    History(usize),
    Owned(Bytes),
}

enum Commit {
    /// The front of the session's outbox.
    Outbox(Option<MsgType>),
    Sub {
        sub: SubKey,
        seq: u64,
        ts: u64,
        snapshot: bool,
        skipped: u64,
    },
    Close,
}

impl Planned {
    fn wire_len(&self) -> usize {
        self.head.as_bytes().len() + self.len + self.tail.len()
    }
}

fn payload_bytes<'a>(
    core: &'a Core,
    history: &'a [Arc<Snapshot>],
    payload: &'a Payload,
) -> &'a [u8] {
    match payload {
        Payload::Cached { symbol, snapshot } => core
            .latest
            .get(*symbol as usize)
            .and_then(Option::as_ref)
            .map_or(&[][..], |s| if *snapshot { &s.frames.snapshot } else { &s.frames.quote }),
        Payload::History(i) => &history[*i].frames.quote,
        Payload::Owned(b) => b,
    }
}

fn owned_payload(core: &Core, history: &[Arc<Snapshot>], payload: &Payload) -> Bytes {
    match payload {
        Payload::Cached { symbol, snapshot } => core
            .latest
            .get(*symbol as usize)
            .and_then(Option::as_ref)
            .map_or_else(Bytes::new, |s| {
                if *snapshot {
                    s.frames.snapshot.clone()
                } else {
                    s.frames.quote.clone()
                }
            }),
        Payload::History(i) => history[*i].frames.quote.clone(),
        Payload::Owned(b) => b.clone(),
    }
}

/// A JSON message framed for the session.
fn text_frame(framing: Framing, kind: MsgType, len: usize) -> (Head, &'static [u8]) {
    match framing {
        Framing::WebSocket => (Head::Ws(FrameHeader::new(ws::OP_TEXT, len)), b""),
        Framing::Sse => (Head::Sse(sse_head(kind)), SSE_END),
    }
}

/// Writes what session `key` is owed, in up to [`MAX_ROUNDS`] vectored writes.
pub fn write_session(
    core: &mut Core,
    plan: &mut Plan,
    s: &mut Session,
    io: &mut Transport,
    now: u64,
    wall_now: u64,
) {
    let budget = core.gw.config.write_budget_bytes;
    for _ in 0..MAX_ROUNDS {
        plan.frames.clear();
        plan.taken.clear();
        plan.history.clear();
        let mut used = plan_outbox(s, plan, budget);
        if let Some(closing) = s.closing {
            if !closing.frame_sent && used < budget {
                if let Some(cause) = closing.frame {
                    let payload = Bytes::from(ws::close_payload(cause.code, cause.reason));
                    let len = payload.len();
                    plan.frames.push(Planned {
                        head: Head::Ws(FrameHeader::new(ws::OP_CLOSE, len)),
                        payload: Payload::Owned(payload),
                        tail: b"",
                        len,
                        commit: Commit::Close,
                    });
                }
            }
        } else {
            used += plan_subs(core, plan, s, now, budget.saturating_sub(used));
        }
        let _ = used;
        if s.partial.is_none() && plan.frames.is_empty() {
            break;
        }
        let offered: usize = s.partial.as_ref().map_or(0, |p| partial_len(p) - p.written)
            + plan.frames.iter().map(Planned::wire_len).sum::<usize>();
        let written = {
            let mut iov = IoVecs::new();
            if let Some(p) = &s.partial {
                push_partial(&mut iov, p);
            }
            for f in &plan.frames {
                for part in
                    [f.head.as_bytes(), payload_bytes(core, &plan.history, &f.payload), f.tail]
                {
                    iov.push(part);
                }
            }
            io.write_vectored(iov.as_slice())
        };
        let written = match written {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                tracing::debug!(peer = %s.peer, error = %e, "session write failed");
                s.close(Ending::Gone(EndReason::IoError), now);
                if let Some(c) = &mut s.closing {
                    c.wait_for_client = false;
                }
                requeue_taken(core, plan, s);
                return;
            }
        };
        if !plan.taken.is_empty() {
            core.gw.metrics.note_pending(plan.taken.len() as u64);
        }
        commit(core, plan, s, written, now, wall_now);
        requeue_taken(core, plan, s);
        if written < offered {
            s.behind = true;
            if written == 0 {
                // The kernel's buffer is full: wait for the socket to become writable.
                s.blocked = true;
                if s.blocked_since_ns == 0 {
                    s.blocked_since_ns = now;
                }
                return;
            }
            if s.blocked_since_ns != 0 {
                s.blocked_since_ns = now;
            }
            continue;
        }
        if !s.has_output() {
            s.behind = false;
            s.blocked_since_ns = 0;
            return;
        }
    }
}

/// Plans the outbox's messages, in order, within `budget` bytes (at least one).
fn plan_outbox(s: &Session, plan: &mut Plan, budget: usize) -> usize {
    let mut used = 0;
    for out in &s.outbox {
        if used >= budget || plan.frames.len() >= MAX_FRAMES {
            break;
        }
        let (head, payload, tail, kind) = match out {
            Out::Raw(b) => (Head::Sse(b""), b.clone(), &b""[..], None),
            Out::Text(kind, b) => {
                let (head, tail) = text_frame(s.framing, *kind, b.len());
                (head, b.clone(), tail, Some(*kind))
            }
            Out::Ping => (Head::Ws(FrameHeader::new(ws::OP_PING, 0)), Bytes::new(), &b""[..], None),
            Out::Pong(b) => {
                (Head::Ws(FrameHeader::new(ws::OP_PONG, b.len())), b.clone(), &b""[..], None)
            }
        };
        let len = payload.len();
        let planned = Planned {
            head,
            payload: Payload::Owned(payload),
            tail,
            len,
            commit: Commit::Outbox(kind),
        };
        used += planned.wire_len();
        plan.frames.push(planned);
    }
    used
}

/// Plans the ready subscriptions, as the policy says, within `budget` bytes.
fn plan_subs(core: &mut Core, plan: &mut Plan, s: &mut Session, now: u64, budget: usize) -> usize {
    let mut used = 0;
    let conditions = policy::Conditions {
        now_ns: now,
        behind: s.behind,
        replay_max_age_ns: core.gw.config.replay_max_age_ms * 1_000_000,
    };
    while used < budget && plan.frames.len() < MAX_FRAMES {
        let Some(sub) = core.registry.pop_front(&mut s.ready) else { break };
        let (symbol, state) = {
            let record = core.registry.get(sub);
            (record.symbol, record.state)
        };
        let latest = core.latest.get(symbol as usize).and_then(Option::as_ref);
        let (latest_seq, latest_ts) = latest.map_or((0, 0), |l| (l.quote.seq, l.quote.ts));
        let first_missed_received_ns = if !state.snapshot_due && latest_seq > state.last_seq + 1 {
            let table = core.gw.store.table();
            table.entries.get(symbol as usize).and_then(|e| e.received_ns_of(state.last_seq + 1))
        } else {
            None
        };
        let symbol_view = policy::Symbol { latest_seq, first_missed_received_ns };
        let mut decision = policy::decide(&state, &symbol_view, &conditions);
        if let Delivery::Replay { from } = decision {
            let first = plan.history.len();
            let room = MAX_FRAMES - plan.frames.len();
            let table = core.gw.store.table();
            let held = table
                .entries
                .get(symbol as usize)
                .is_some_and(|e| e.history_after(from - 1, latest_seq, room, &mut plan.history));
            if held && plan.history.len() > first {
                for i in first..plan.history.len() {
                    let snap = &plan.history[i];
                    let len = snap.frames.quote.len();
                    let (head, tail) = text_frame(s.framing, MsgType::Quote, len);
                    let commit = Commit::Sub {
                        sub,
                        seq: snap.quote.seq,
                        ts: snap.quote.ts,
                        snapshot: false,
                        skipped: 0,
                    };
                    let planned = Planned { head, payload: Payload::History(i), tail, len, commit };
                    used += planned.wire_len();
                    plan.frames.push(planned);
                }
                plan.taken.push(sub);
                continue;
            }
            decision = Delivery::Latest { skipped: latest_seq - state.last_seq - 1 };
        }
        let (snapshot, skipped) = match decision {
            Delivery::Skip => continue,
            Delivery::DeferUntil(at) => {
                core.registry.push_back(&mut s.deferred, sub, Waiting::Deferred);
                s.next_deferred_ns = s.next_deferred_ns.min(at);
                continue;
            }
            Delivery::Snapshot => (true, 0),
            Delivery::Latest { skipped } => (false, skipped),
            Delivery::Replay { .. } => unreachable!("handled above"),
        };
        let payload = Payload::Cached { symbol, snapshot };
        let len = payload_bytes(core, &plan.history, &payload).len();
        let kind = if snapshot { MsgType::Snapshot } else { MsgType::Quote };
        let (head, tail) = text_frame(s.framing, kind, len);
        let commit = Commit::Sub { sub, seq: latest_seq, ts: latest_ts, snapshot, skipped };
        let planned = Planned { head, payload, tail, len, commit };
        used += planned.wire_len();
        plan.frames.push(planned);
        plan.taken.push(sub);
    }
    used
}

fn partial_len(p: &PartialFrame) -> usize {
    p.head.as_bytes().len() + p.payload.len() + p.tail.len()
}

/// The unwritten rest of a partial frame, as iovecs; returns how many.
fn push_partial<'a>(iov: &mut IoVecs<'a>, p: &'a PartialFrame) {
    let mut skip = p.written;
    for part in [p.head.as_bytes(), &p.payload[..], p.tail] {
        if skip >= part.len() {
            skip -= part.len();
            continue;
        }
        iov.push(&part[skip..]);
        skip = 0;
    }
}

/// The iovecs of one write, on the stack and never initialised beyond what is pushed: a write
/// is built per session per turn, and zeroing all [`MAX_IOV`] slots each time showed in the
/// profile.
struct IoVecs<'a> {
    slots: [MaybeUninit<IoSlice<'a>>; MAX_IOV],
    len: usize,
}

impl<'a> IoVecs<'a> {
    fn new() -> Self {
        IoVecs { slots: [const { MaybeUninit::uninit() }; MAX_IOV], len: 0 }
    }

    /// Adds `part` (empty parts are left out). The plan never holds more than [`MAX_FRAMES`]
    /// frames of at most three parts, plus a partial frame's three.
    #[inline]
    fn push(&mut self, part: &'a [u8]) {
        if !part.is_empty() && self.len < MAX_IOV {
            self.slots[self.len].write(IoSlice::new(part));
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[IoSlice<'a>] {
        // SAFETY: the first `len` slots were written by `push`, and `IoSlice` has no drop glue.
        unsafe { std::slice::from_raw_parts(self.slots.as_ptr().cast::<IoSlice<'a>>(), self.len) }
    }
}

/// Applies what the kernel took: `written` bytes of the partial frame, then of the plan.
fn commit(
    core: &mut Core,
    plan: &mut Plan,
    s: &mut Session,
    mut written: usize,
    now: u64,
    wall_now: u64,
) {
    if let Some(p) = &mut s.partial {
        let rest = partial_len(p) - p.written;
        if written < rest {
            p.written += written;
            return;
        }
        written -= rest;
        s.partial = None;
    }
    let mut frames = 0u64;
    let mut newest_ts = 0;
    for f in plan.frames.drain(..) {
        if written == 0 {
            break;
        }
        let wire = f.wire_len();
        if written < wire {
            s.partial = Some(Box::new(PartialFrame {
                head: f.head,
                payload: owned_payload(core, &plan.history, &f.payload),
                tail: f.tail,
                written,
            }));
            written = 0;
        } else {
            written -= wire;
        }
        frames += 1;
        match f.commit {
            Commit::Outbox(kind) => {
                if let Some(out) = s.outbox.pop_front() {
                    s.outbox_bytes -= out.len();
                    match out {
                        Out::Ping => s.ping_pending = false,
                        Out::Text(MsgType::Heartbeat, _) => s.heartbeat_pending = false,
                        _ => {}
                    }
                }
                if let Some(kind) = kind {
                    core.tally.sent(kind, f.len);
                    s.last_message_ns = now;
                }
            }
            Commit::Sub { sub, seq, ts, snapshot, skipped } => {
                let latest_seq = core.latest_seq(core.registry.get(sub).symbol);
                let state = &mut core.registry.get_mut(sub).state;
                state.last_seq = seq;
                if snapshot {
                    state.snapshot_due = false;
                }
                if state.resuming && seq >= latest_seq {
                    state.resuming = false;
                }
                if state.throttle_ns > 0 && (snapshot || !state.resuming) {
                    state.next_send_ns = now + state.throttle_ns;
                }
                core.tally.sent(if snapshot { MsgType::Snapshot } else { MsgType::Quote }, f.len);
                core.tally.conflated += skipped;
                newest_ts = newest_ts.max(ts);
                s.last_message_ns = now;
            }
            Commit::Close => {
                if let Some(c) = &mut s.closing {
                    c.frame_sent = true;
                }
            }
        }
    }
    plan.frames.clear();
    if frames > 0 {
        core.gw.metrics.record_frames_per_write(core.shard, frames);
    }
    if newest_ts > 0 {
        // One sample per write, not per frame: the freshest quote it carried.
        core.gw.metrics.quote_age(core.shard).record_ns(wall_now.saturating_sub(newest_ts));
    }
}

/// Subscriptions taken for a write that still owe something go back on the ready list.
fn requeue_taken(core: &mut Core, plan: &mut Plan, s: &mut Session) {
    // To the back, in order: a subscription with more to send (a long replay, or what the
    // kernel refused) waits its turn behind the others, so one symbol's replay cannot hold back
    // the session's other symbols until it ends. Each symbol's own order is its `last_seq`.
    for &sub in &plan.taken {
        let record = core.registry.get(sub);
        if record.waiting != Waiting::No {
            continue;
        }
        let pending =
            record.state.snapshot_due || record.state.last_seq < core.latest_seq(record.symbol);
        if pending {
            core.registry.push_back(&mut s.ready, sub, Waiting::Ready);
        }
    }
    plan.taken.clear();
    plan.frames.clear();
}
