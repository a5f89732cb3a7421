//! One simulated client: connect, subscribe to its K symbols (a WebSocket request, or the query
//! of an SSE stream), then read as its class says (fast: everything; slow: at most `slow_rate`
//! messages/s; stuck: nothing) until the run stops. In a storm (`--storm`) a reading client
//! drops its connection when the window starts, and reconnects after the pause resuming from
//! the last `seq` of each symbol ([`crate::storm`]).
//!
//! Per message it finds the frame (WebSocket) or the event's `data:` line (SSE) in place, scans
//! four fields and updates counters and histograms of its worker's shared stats: no
//! allocation, no copy, one clock read per socket read. It never logs per message.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::churn::ChurnStats;
use crate::config::{Plan, Transport};
use crate::connect::{self, Dial, ReadBuf, Upgrade};
use crate::frame::{self, Header};
use crate::procstat::now_ns;
use crate::scan::{self, Kind};
use crate::stats::{Class, ClassStats, ConnectStats, ServerStats};
use crate::storm::StormStats;
use crate::symbols::SymbolPicker;

/// One gateway URL, resolved.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
    /// Path and query of its event stream, before the subscription's parameters.
    pub sse_path: String,
}

/// What every client of one worker shares (one thread: plain `RefCell`s).
pub struct WorkerShared {
    pub plan: Plan,
    /// The gateways, as `plan.targets`.
    pub targets: Vec<Endpoint>,
    /// Per gateway named in a `welcome`, in order of first appearance (few: a `Vec` search).
    pub servers: RefCell<Vec<(String, ServerStats)>>,
    /// Symbol names as bytes, indexed by symbol id (position in the list).
    pub names: Vec<Box<[u8]>>,
    pub picker: SymbolPicker,
    pub classes: [RefCell<ClassStats>; 3],
    pub connect: RefCell<ConnectStats>,
    /// Sessions open now, and the most at once.
    pub open: Cell<u64>,
    pub peak_open: Cell<u64>,
    /// The measured window, ns since the Unix epoch.
    pub window: (u64, u64),
    /// Cancelled when the measured window ends: every client closes.
    pub stop: CancellationToken,
    /// What the churning sessions counted (`--churn`).
    pub churn: RefCell<ChurnStats>,
    /// Cancelled when a storm's clients drop (`--storm`: the window's start).
    pub storm: CancellationToken,
    pub storm_stats: RefCell<StormStats>,
}

/// A seq no message has carried yet.
const NO_SEQ: u64 = u64::MAX;
/// How much a stuck client reads at the end looking for the server's close frame.
const STUCK_DRAIN_BYTES: usize = 8 << 20;
/// Pause after a failed reconnection in a storm, before the next attempt (a gateway at its
/// connection limit answers 503 and must not be hammered).
const RECONNECT_RETRY: Duration = Duration::from_millis(100);
/// Longest SSE event the reader accepts; the gateway's are a few hundred bytes.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// How a session ended.
enum End {
    /// The run stopped: we close it ourselves.
    Stopped,
    /// A storm began: drop the connection and reconnect.
    Storm,
    /// The server closed it (close code), or the connection failed (`1006`, `io_error`).
    Closed,
}

/// Per-session state: the subscribed symbols and the last seq of each.
struct Session {
    class: Class,
    /// Subscribed symbol ids, sorted by name for a binary search per message.
    ids: Vec<u32>,
    last_seq: Vec<u64>,
    got_first: bool,
    /// Index in `WorkerShared::servers` of the gateway its `welcome` named.
    server: Option<usize>,
    /// A fragmented message being reassembled (the gateway does not fragment; kept for others).
    fragment: Option<Vec<u8>>,
    /// Frames to send (subscribe, pongs, close), reused.
    out: Vec<u8>,
    mask_state: u32,
    /// `welcome.epoch` of the current (or last) connection.
    epoch: Option<String>,
    /// This connection is the storm's reconnection.
    stormed: bool,
    /// Waiting for the ack of the resuming subscribe.
    awaiting_resume_ack: bool,
    /// Per slot: resumed, and its first message since the reconnect not seen yet.
    expect_replay: Vec<bool>,
}

enum Flow {
    Continue,
    Closed,
}

impl Session {
    fn new(sh: &WorkerShared, index: u64, class: Class) -> Session {
        let mut ids = sh.picker.pick(index);
        ids.sort_unstable_by(|&a, &b| sh.names[a as usize].cmp(&sh.names[b as usize]));
        let n = ids.len();
        Session {
            class,
            ids,
            last_seq: vec![NO_SEQ; n],
            got_first: false,
            server: None,
            fragment: None,
            out: Vec::with_capacity(256),
            mask_state: (index as u32).wrapping_mul(2_654_435_761) | 1,
            epoch: None,
            stormed: false,
            awaiting_resume_ack: false,
            expect_replay: vec![false; n],
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        // xorshift32: masking protects proxies' caches, not secrets; a cheap varying key is enough.
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x.to_be_bytes()
    }

    fn push_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.mask();
        frame::write_frame(&mut self.out, opcode, payload, mask);
    }

    fn subscribe_request(&mut self, sh: &WorkerShared) {
        let symbols: Vec<&str> =
            self.ids.iter().map(|&i| sh.plan.symbols[i as usize].as_str()).collect();
        let mut req = serde_json::json!({
            "op": "subscribe",
            "id": 1,
            "symbols": symbols,
            "snapshot": true,
            "throttle_ms": sh.plan.throttle_ms,
        });
        if self.stormed {
            let seq: serde_json::Map<String, serde_json::Value> =
                self.held(sh).map(|(name, seq)| (name.to_string(), seq.into())).collect();
            req["resume"] =
                serde_json::json!({"epoch": self.epoch.as_deref().unwrap_or(""), "seq": seq});
        }
        let text = serde_json::to_vec(&req).expect("a JSON value serializes");
        self.push_frame(frame::OP_TEXT, &text);
    }

    /// The (symbol, last seq) pairs this client holds, for a resume.
    fn held<'a>(&'a self, sh: &'a WorkerShared) -> impl Iterator<Item = (&'a str, u64)> + 'a {
        self.ids
            .iter()
            .zip(&self.last_seq)
            .filter(|(_, &seq)| seq != NO_SEQ)
            .map(|(&id, &seq)| (sh.plan.symbols[id as usize].as_str(), seq))
    }

    /// The event stream's path: the endpoint's, then the subscription (section 6).
    fn sse_path(&self, sh: &WorkerShared, endpoint: &Endpoint) -> String {
        let mut path = endpoint.sse_path.clone();
        path.push(if path.contains('?') { '&' } else { '?' });
        path.push_str("symbols=");
        for (i, &id) in self.ids.iter().enumerate() {
            if i > 0 {
                path.push(',');
            }
            percent_encode(&mut path, &sh.plan.symbols[id as usize]);
        }
        path.push_str(&format!("&throttle_ms={}", sh.plan.throttle_ms));
        if self.stormed {
            path.push_str("&resume_epoch=");
            percent_encode(&mut path, self.epoch.as_deref().unwrap_or(""));
            path.push_str("&since=");
            for (i, (name, seq)) in self.held(sh).enumerate() {
                if i > 0 {
                    path.push(',');
                }
                percent_encode(&mut path, name);
                path.push_str(&format!(":{seq}"));
            }
        }
        path
    }

    fn slot(&self, names: &[Box<[u8]>], symbol: &[u8]) -> Option<usize> {
        self.ids.binary_search_by(|&id| names[id as usize].as_ref().cmp(symbol)).ok()
    }

    /// Uses the complete frames in `buf`, at most `max_msgs` text messages. Returns the flow and
    /// how many text messages were used; leaves a partial frame in place, with room made for it.
    fn consume(&mut self, sh: &WorkerShared, buf: &mut ReadBuf, max_msgs: usize) -> (Flow, usize) {
        let recv_ns = now_ns();
        let in_window = recv_ns >= sh.window.0 && recv_ns < sh.window.1;
        let mut stats = sh.classes[self.class.index()].borrow_mut();
        let mut msgs = 0;
        while msgs < max_msgs {
            let avail = buf.filled();
            let h: Header = match frame::parse_header(avail) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    stats.protocol_errors += 1;
                    stats.count_close("protocol_error");
                    return (Flow::Closed, msgs);
                }
            };
            if avail.len() < h.total_len() {
                buf.make_room(h.total_len());
                return (Flow::Continue, msgs);
            }
            let (p0, p1) = (buf.start + h.header_len, buf.start + h.total_len());
            buf.start = p1;
            let payload = &buf.data[p0..p1];
            match h.opcode {
                frame::OP_TEXT if h.fin => {
                    self.on_message(sh, payload, recv_ns, in_window, &mut stats);
                    msgs += 1;
                }
                frame::OP_TEXT => self.fragment = Some(payload.to_vec()),
                frame::OP_CONTINUATION => match self.fragment.as_mut() {
                    Some(f) => {
                        f.extend_from_slice(payload);
                        if h.fin {
                            let whole = self.fragment.take().unwrap_or_default();
                            self.on_message(sh, &whole, recv_ns, in_window, &mut stats);
                            msgs += 1;
                        }
                    }
                    None => stats.protocol_errors += 1,
                },
                frame::OP_PING => {
                    let payload = payload.to_owned();
                    self.push_frame(frame::OP_PONG, &payload);
                }
                frame::OP_PONG => {}
                frame::OP_CLOSE => {
                    let code = frame::close_code(payload);
                    stats.count_close(&code.to_string());
                    let reply = code.to_be_bytes();
                    self.push_frame(frame::OP_CLOSE, &reply);
                    return (Flow::Closed, msgs);
                }
                _ => stats.protocol_errors += 1,
            }
        }
        buf.make_room(0);
        (Flow::Continue, msgs)
    }

    /// Uses the complete events in `buf`, at most `max_msgs` of them: an event's `event:` line
    /// names its type, its `data:` line is the message (section 6). Lines end with LF or CRLF;
    /// comments (`:`) and other fields are skipped. Leaves a partial event in place.
    fn consume_sse(
        &mut self,
        sh: &WorkerShared,
        buf: &mut ReadBuf,
        max_msgs: usize,
    ) -> (Flow, usize) {
        let recv_ns = now_ns();
        let in_window = recv_ns >= sh.window.0 && recv_ns < sh.window.1;
        let mut stats = sh.classes[self.class.index()].borrow_mut();
        let mut msgs = 0;
        while msgs < max_msgs {
            let avail = buf.filled();
            let Some((end, after)) = event_end(avail) else {
                if avail.len() > MAX_EVENT_BYTES {
                    stats.protocol_errors += 1;
                    stats.count_close("protocol_error");
                    return (Flow::Closed, msgs);
                }
                if buf.end == buf.data.len() {
                    buf.make_room(buf.data.len() + 1);
                }
                return (Flow::Continue, msgs);
            };
            let (p0, block_end) = (buf.start, buf.start + end);
            buf.start += after;
            let mut name: &[u8] = b"";
            let mut data: Option<(usize, usize)> = None;
            let mut data_lines = 0;
            let mut at = p0;
            while at < block_end {
                let line_end = buf.data[at..block_end]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(block_end, |i| at + i);
                let mut line = &buf.data[at..line_end];
                if let Some(l) = line.strip_suffix(b"\r") {
                    line = l;
                }
                let value_at = |field: &[u8]| {
                    line.strip_prefix(field).map(|v| v.strip_prefix(b" ").unwrap_or(v))
                };
                if let Some(v) = value_at(b"event:") {
                    name = v;
                } else if let Some(v) = value_at(b"data:") {
                    let start = v.as_ptr() as usize - buf.data.as_ptr() as usize;
                    data = Some((start, start + v.len()));
                    data_lines += 1;
                }
                at = line_end + 1;
            }
            let Some((d0, d1)) = data else {
                continue; // A comment or an event without data: nothing to dispatch.
            };
            if data_lines > 1 {
                // The gateway writes one line per message: more is a framing it does not use.
                stats.protocol_errors += 1;
                continue;
            }
            let named = Kind::from_name(name);
            let payload = &buf.data[d0..d1];
            let kind = self.on_message(sh, payload, recv_ns, in_window, &mut stats);
            if kind.is_some_and(|k| k != named) {
                stats.protocol_errors += 1;
            }
            msgs += 1;
        }
        buf.make_room(0);
        (Flow::Continue, msgs)
    }

    /// Counts one message; returns its kind (`None`: it could not be read).
    fn on_message(
        &mut self,
        sh: &WorkerShared,
        msg: &[u8],
        recv_ns: u64,
        in_window: bool,
        stats: &mut ClassStats,
    ) -> Option<Kind> {
        let Ok(f) = scan::scan(msg) else {
            stats.parse_errors += 1;
            return None;
        };
        if !self.got_first {
            self.got_first = true;
            if f.kind != Kind::Welcome {
                stats.welcome_not_first += 1;
            }
        }
        match f.kind {
            Kind::Quote | Kind::Snapshot => {
                let (Some(symbol), Some(seq)) = (f.symbol, f.seq) else {
                    stats.parse_errors += 1;
                    return Some(f.kind);
                };
                let Some(slot) = self.slot(&sh.names, symbol) else {
                    stats.unexpected_symbols += 1;
                    return Some(f.kind);
                };
                let last = self.last_seq[slot];
                if self.expect_replay[slot] {
                    self.expect_replay[slot] = false;
                    let mut storm = sh.storm_stats.borrow_mut();
                    match f.kind {
                        Kind::Snapshot => storm.resume_snapshots += 1,
                        _ if last != NO_SEQ && seq == last + 1 => storm.resume_exact += 1,
                        _ if last != NO_SEQ && seq > last + 1 => {
                            storm.resume_gaps += 1;
                            storm.resume_gap_updates += seq - last - 1;
                        }
                        _ => {} // Not above: an order violation, counted below.
                    }
                }
                // A snapshot may repeat the seq of the message before it (section 3): a fresh
                // snapshot of an unchanged symbol, after a reconnect say.
                let repeat = f.kind == Kind::Snapshot && seq == last;
                if last == NO_SEQ || seq > last || repeat {
                    if last != NO_SEQ && seq > last + 1 && f.kind == Kind::Quote && in_window {
                        stats.seq_jumps += 1;
                        stats.missed_updates += seq - last - 1;
                    }
                    self.last_seq[slot] = seq;
                } else {
                    stats.order_violations += 1;
                }
                if f.kind == Kind::Snapshot {
                    stats.snapshots += 1;
                    return Some(f.kind);
                }
                let Some(ts) = f.ts else {
                    stats.parse_errors += 1;
                    return Some(f.kind);
                };
                stats.quotes_all += 1;
                if self.stormed && ts < sh.plan.storm_times().1 {
                    // Replayed: an update of the pause, old by design.
                    sh.storm_stats.borrow_mut().replayed_quotes += 1;
                    if in_window {
                        stats.deliveries += 1;
                    }
                    return Some(f.kind);
                }
                let age = recv_ns.saturating_sub(ts).max(1);
                stats.interval_age_ns.saturating_record(age);
                if in_window {
                    stats.deliveries += 1;
                    stats.age_ns.saturating_record(age);
                    if let Some(i) = self.server {
                        let servers = &mut sh.servers.borrow_mut()[i].1;
                        servers.deliveries += 1;
                        if self.class == Class::Fast {
                            servers.age_ns.saturating_record(age);
                        }
                    }
                }
            }
            Kind::Heartbeat => stats.heartbeats += 1,
            Kind::Welcome => {
                stats.welcomes += 1;
                let (server, epoch) = welcome_fields(sh, msg);
                self.server = Some(server);
                if self.stormed && self.epoch.is_some() && self.epoch != epoch {
                    sh.storm_stats.borrow_mut().epoch_changes += 1;
                }
                self.epoch = epoch;
            }
            Kind::Ack => {
                stats.acks += 1;
                if self.awaiting_resume_ack {
                    self.awaiting_resume_ack = false;
                    self.on_resume_ack(sh, msg, recv_ns);
                }
            }
            Kind::Pong => stats.pongs += 1,
            Kind::Error => stats.count_error(f.code.unwrap_or(b"none")),
            Kind::Other => stats.parse_errors += 1,
        }
        Some(f.kind)
    }

    /// The ack of the storm's resuming subscribe: the client is live again (once per client,
    /// so a JSON parse is fine).
    fn on_resume_ack(&mut self, sh: &WorkerShared, msg: &[u8], recv_ns: u64) {
        let ack: serde_json::Value = serde_json::from_slice(msg).unwrap_or_default();
        let accepted = ack.get("symbols").and_then(|v| v.as_array()).map_or(0, Vec::len) as u64;
        let mut storm = sh.storm_stats.borrow_mut();
        storm.live_again += 1;
        storm.last_live_ns = storm.last_live_ns.max(recv_ns);
        let since_reconnect = recv_ns.saturating_sub(sh.plan.storm_times().1);
        storm.live_us.saturating_record((since_reconnect / 1_000).max(1));
        let Some(resumed) = ack.get("resumed").and_then(|v| v.as_array()) else {
            storm.acks_without_resumed += 1;
            storm.snapshotted_symbols += accepted;
            return;
        };
        let mut n = 0;
        for name in resumed.iter().filter_map(|v| v.as_str()) {
            if let Some(slot) = self.slot(&sh.names, name.as_bytes()) {
                self.expect_replay[slot] = true;
                n += 1;
            }
        }
        storm.resumed_symbols += n;
        storm.snapshotted_symbols += accepted.saturating_sub(n);
    }
}

/// Where the first event of `buf` ends: (the end of its last line, where the next event
/// starts). An event ends with an empty line (LF or CRLF endings).
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n').map(|i| from + i) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some((i, i + 2)),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some((i, i + 3)),
            Some(_) => from = i + 1,
            None => return None,
        }
    }
    None
}

/// Appends `text` to a URL's query, percent-encoding all but unreserved characters.
fn percent_encode(out: &mut String, text: &str) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The index of the gateway a `welcome` names, and its `epoch` (once per session: a JSON parse
/// is fine).
fn welcome_fields(sh: &WorkerShared, welcome: &[u8]) -> (usize, Option<String>) {
    let value = serde_json::from_slice::<serde_json::Value>(welcome).ok();
    let field = |key: &str| {
        value.as_ref().and_then(|v| v.get(key)).and_then(|s| s.as_str()).map(str::to_string)
    };
    let name = field("server").unwrap_or_else(|| "?".to_string());
    let mut servers = sh.servers.borrow_mut();
    let i = match servers.iter().position(|(n, _)| *n == name) {
        Some(i) => i,
        None => {
            servers.push((name, ServerStats::new()));
            servers.len() - 1
        }
    };
    servers[i].1.sessions += 1;
    (i, field("epoch"))
}

/// Runs client `index` of the plan to the end of the run.
pub async fn run(sh: &WorkerShared, index: u64) {
    let class = sh.plan.class_of(index);
    let src = &sh.plan.source_addrs;
    let target = &sh.targets[sh.plan.target_of(index)];
    let transport = sh.plan.transport;
    let mut session = Session::new(sh, index, class);
    let mut buf = ReadBuf::new(sh.plan.read_buffer);
    loop {
        let path = match transport {
            Transport::Ws => target.path.clone(),
            Transport::Sse => session.sse_path(sh, target),
        };
        let dial = Dial {
            upgrade: match transport {
                Transport::Ws => Upgrade::WebSocket,
                Transport::Sse => Upgrade::EventStream,
            },
            addr: target.addr,
            source: (!src.is_empty()).then(|| src[(index % src.len() as u64) as usize]),
            host_header: &target.host_header,
            path: &path,
            token: sh.plan.token.as_deref(),
            rcvbuf: sh.plan.rcvbuf,
            timeout: Duration::from_millis(sh.plan.connect_timeout_ms),
        };
        let opened = if session.stormed {
            reconnect(sh, &dial, &mut buf).await
        } else {
            connect_first(sh, &dial, &mut buf, class).await
        };
        let Some(mut stream) = opened else { return };
        sh.open.set(sh.open.get() + 1);
        sh.peak_open.set(sh.peak_open.get().max(sh.open.get()));
        session.got_first = false;
        session.awaiting_resume_ack = session.stormed;
        if transport == Transport::Ws {
            session.subscribe_request(sh);
        }
        let end = if flush(&mut stream, &mut session.out).await.is_err() {
            sh.classes[class.index()].borrow_mut().count_close("io_error");
            End::Closed
        } else if class == Class::Stuck {
            sh.stop.cancelled().await;
            match transport {
                Transport::Ws => drain_for_close(sh, &mut stream, &mut buf, class).await,
                Transport::Sse => drain_for_end(sh, &mut stream, &mut buf, class).await,
            }
        } else {
            read_loop(sh, &mut stream, &mut buf, &mut session).await
        };
        match end {
            End::Storm => {
                // Dropped: the socket closes with no close handshake, as when a network or a
                // proxy fails under the client.
                drop(stream);
                sh.open.set(sh.open.get() - 1);
                sh.storm_stats.borrow_mut().dropped += 1;
                session.stormed = true;
                session.fragment = None;
                session.out.clear();
                let wait = sh.plan.storm_times().1.saturating_sub(now_ns());
                tokio::select! {
                    _ = sh.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_nanos(wait)) => {}
                }
                continue;
            }
            End::Stopped if transport == Transport::Ws => {
                session.out.clear();
                session.push_frame(frame::OP_CLOSE, &1000u16.to_be_bytes());
            }
            End::Stopped | End::Closed => {}
        }
        // Best effort: the server's close reply is not waited for.
        let _ =
            tokio::time::timeout(Duration::from_millis(500), flush(&mut stream, &mut session.out))
                .await;
        sh.open.set(sh.open.get() - 1);
        return;
    }
}

/// The client's first connection: counted in the connect figures; a failure ends the client.
async fn connect_first(
    sh: &WorkerShared,
    dial: &Dial<'_>,
    buf: &mut ReadBuf,
    class: Class,
) -> Option<TcpStream> {
    sh.connect.borrow_mut().attempts += 1;
    let t0 = Instant::now();
    let opened = tokio::select! {
        _ = sh.stop.cancelled() => return None,
        r = connect::open(dial, buf) => r,
    };
    match opened {
        Ok(stream) => {
            let mut c = sh.connect.borrow_mut();
            c.successes += 1;
            c.latency_us.saturating_record((t0.elapsed().as_micros() as u64).max(1));
            sh.classes[class.index()].borrow_mut().connected += 1;
            Some(stream)
        }
        Err(reason) => {
            *sh.connect.borrow_mut().failures_by_reason.entry(reason).or_default() += 1;
            None
        }
    }
}

/// A storm's reconnection: retried after a short pause until it succeeds or the run stops;
/// each failure is counted in the storm's figures.
async fn reconnect(sh: &WorkerShared, dial: &Dial<'_>, buf: &mut ReadBuf) -> Option<TcpStream> {
    loop {
        let opened = tokio::select! {
            _ = sh.stop.cancelled() => return None,
            r = connect::open(dial, buf) => r,
        };
        match opened {
            Ok(stream) => return Some(stream),
            Err(reason) => {
                let mut storm = sh.storm_stats.borrow_mut();
                *storm.failed_attempts_by_reason.entry(reason).or_default() += 1;
            }
        }
        tokio::select! {
            _ = sh.stop.cancelled() => return None,
            _ = tokio::time::sleep(RECONNECT_RETRY) => {}
        }
    }
}

async fn flush(stream: &mut TcpStream, out: &mut Vec<u8>) -> std::io::Result<()> {
    if !out.is_empty() {
        let r = stream.write_all(out).await;
        out.clear();
        r?;
    }
    Ok(())
}

async fn read_loop(
    sh: &WorkerShared,
    stream: &mut TcpStream,
    buf: &mut ReadBuf,
    session: &mut Session,
) -> End {
    let mut stop = pin!(sh.stop.cancelled());
    let mut storm = pin!(sh.storm.cancelled());
    // A client is dropped by the storm once, on its first connection.
    let storm_armed = sh.plan.storm && !session.stormed;
    let sse = sh.plan.transport == Transport::Sse;
    let pace = (session.class == Class::Slow)
        .then(|| Duration::from_secs_f64(1.0 / sh.plan.slow_rate.max(1e-3)));
    let max_msgs = if pace.is_some() { 1 } else { usize::MAX };
    let mut next_allowed = tokio::time::Instant::now();
    loop {
        // Use what is buffered (a slow client one message at a time, paced).
        loop {
            let (flow, used) = if sse {
                session.consume_sse(sh, buf, max_msgs)
            } else {
                session.consume(sh, buf, max_msgs)
            };
            if flush(stream, &mut session.out).await.is_err() {
                sh.classes[session.class.index()].borrow_mut().count_close("io_error");
                return End::Closed;
            }
            if let Flow::Closed = flow {
                return End::Closed;
            }
            match pace {
                Some(p) if used > 0 => {
                    next_allowed += p;
                    let now = tokio::time::Instant::now();
                    if next_allowed < now {
                        next_allowed = now;
                    }
                    tokio::select! {
                        biased;
                        _ = &mut stop => return End::Stopped,
                        _ = &mut storm, if storm_armed => return End::Storm,
                        _ = tokio::time::sleep_until(next_allowed) => {}
                    }
                }
                _ => break,
            }
        }
        if buf.end == buf.data.len() {
            buf.make_room(buf.data.len() + 1);
        }
        let r = tokio::select! {
            biased;
            _ = &mut stop => return End::Stopped,
            _ = &mut storm, if storm_armed => return End::Storm,
            r = stream.read(&mut buf.data[buf.end..]) => r,
        };
        match r {
            Ok(0) => {
                // A stream's end is the server's only way to close an SSE session.
                let label = if sse { "eof" } else { "1006" };
                sh.classes[session.class.index()].borrow_mut().count_close(label);
                return End::Closed;
            }
            Ok(n) => buf.end += n,
            Err(_) => {
                sh.classes[session.class.index()].borrow_mut().count_close("io_error");
                return End::Closed;
            }
        }
    }
}

/// At the end of the run, a stuck client reads what piled up, only to see whether the server
/// closed it (typically `4008`, slow consumer) while it was not reading.
async fn drain_for_close(
    sh: &WorkerShared,
    stream: &mut TcpStream,
    buf: &mut ReadBuf,
    class: Class,
) -> End {
    let mut skip = 0usize;
    let mut budget = STUCK_DRAIN_BYTES;
    loop {
        // Skip payloads, look at headers.
        loop {
            let avail = buf.end - buf.start;
            if skip > 0 {
                let n = skip.min(avail);
                buf.start += n;
                skip -= n;
                if skip > 0 {
                    break;
                }
            }
            match frame::parse_header(buf.filled()) {
                Ok(Some(h)) if h.opcode == frame::OP_CLOSE => {
                    if buf.filled().len() < h.total_len() {
                        break;
                    }
                    let p = &buf.data[buf.start + h.header_len..buf.start + h.total_len()];
                    let code = frame::close_code(p);
                    sh.classes[class.index()].borrow_mut().count_close(&code.to_string());
                    return End::Closed;
                }
                Ok(Some(h)) => skip = h.total_len(),
                Ok(None) => break,
                Err(_) => return End::Stopped,
            }
        }
        buf.make_room(16);
        if budget == 0 {
            return End::Stopped;
        }
        let read =
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf.data[buf.end..]))
                .await;
        match read {
            Err(_) => return End::Stopped,
            Ok(Ok(0)) => {
                sh.classes[class.index()].borrow_mut().count_close("1006");
                return End::Closed;
            }
            Ok(Ok(n)) => {
                buf.end += n;
                budget = budget.saturating_sub(n);
            }
            Ok(Err(_)) => {
                sh.classes[class.index()].borrow_mut().count_close("io_error");
                return End::Closed;
            }
        }
    }
}

/// At the end of the run, a stuck SSE client reads what piled up, only to see whether the
/// server ended its stream (a slow consumer, typically) while it was not reading.
async fn drain_for_end(
    sh: &WorkerShared,
    stream: &mut TcpStream,
    buf: &mut ReadBuf,
    class: Class,
) -> End {
    let mut budget = STUCK_DRAIN_BYTES;
    let mut chunk = std::mem::take(&mut buf.data);
    let end = loop {
        if budget == 0 {
            break End::Stopped;
        }
        let read = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut chunk)).await;
        match read {
            Err(_) => break End::Stopped,
            Ok(Ok(0)) => {
                sh.classes[class.index()].borrow_mut().count_close("eof");
                break End::Closed;
            }
            Ok(Ok(n)) => budget = budget.saturating_sub(n),
            Ok(Err(_)) => {
                sh.classes[class.index()].borrow_mut().count_close("io_error");
                break End::Closed;
            }
        }
    };
    buf.data = chunk;
    end
}
