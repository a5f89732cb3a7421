//! One simulated client: connect, subscribe to its K symbols, then read as its class says
//! (fast: everything; slow: at most `slow_rate` messages/s; stuck: nothing) until the run stops.
//!
//! Per message it scans four fields in place and updates counters and histograms of its
//! worker's shared stats: no allocation, no copy, one clock read per socket read. It never
//! logs per message.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::pin::pin;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::churn::ChurnStats;
use crate::config::Plan;
use crate::connect::{self, Dial, ReadBuf};
use crate::frame::{self, Header};
use crate::procstat::now_ns;
use crate::scan::{self, Kind};
use crate::stats::{Class, ClassStats, ConnectStats, ServerStats};
use crate::symbols::SymbolPicker;

/// One gateway URL, resolved.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
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
}

/// A seq no message has carried yet.
const NO_SEQ: u64 = u64::MAX;
/// How much a stuck client reads at the end looking for the server's close frame.
const STUCK_DRAIN_BYTES: usize = 8 << 20;

/// How a session ended.
enum End {
    /// The run stopped: we close it ourselves.
    Stopped,
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
        let req = serde_json::json!({
            "op": "subscribe",
            "id": 1,
            "symbols": symbols,
            "snapshot": true,
            "throttle_ms": sh.plan.throttle_ms,
        });
        let text = serde_json::to_vec(&req).expect("a JSON value serializes");
        self.push_frame(frame::OP_TEXT, &text);
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

    fn on_message(
        &mut self,
        sh: &WorkerShared,
        msg: &[u8],
        recv_ns: u64,
        in_window: bool,
        stats: &mut ClassStats,
    ) {
        let Ok(f) = scan::scan(msg) else {
            stats.parse_errors += 1;
            return;
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
                    return;
                };
                let Some(slot) = self.slot(&sh.names, symbol) else {
                    stats.unexpected_symbols += 1;
                    return;
                };
                let last = self.last_seq[slot];
                if last == NO_SEQ || seq > last {
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
                    return;
                }
                let Some(ts) = f.ts else {
                    stats.parse_errors += 1;
                    return;
                };
                let age = recv_ns.saturating_sub(ts).max(1);
                stats.quotes_all += 1;
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
                self.server = Some(server_index(sh, msg));
            }
            Kind::Ack => stats.acks += 1,
            Kind::Pong => stats.pongs += 1,
            Kind::Error => stats.count_error(f.code.unwrap_or(b"none")),
            Kind::Other => stats.parse_errors += 1,
        }
    }
}

/// The index of the gateway a `welcome` names (once per session: a JSON parse is fine).
fn server_index(sh: &WorkerShared, welcome: &[u8]) -> usize {
    let name = serde_json::from_slice::<serde_json::Value>(welcome)
        .ok()
        .and_then(|v| v.get("server").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| "?".to_string());
    let mut servers = sh.servers.borrow_mut();
    let i = match servers.iter().position(|(n, _)| *n == name) {
        Some(i) => i,
        None => {
            servers.push((name, ServerStats::new()));
            servers.len() - 1
        }
    };
    servers[i].1.sessions += 1;
    i
}

/// Runs client `index` of the plan to the end of the run.
pub async fn run(sh: &WorkerShared, index: u64) {
    let class = sh.plan.class_of(index);
    let src = &sh.plan.source_addrs;
    let target = &sh.targets[sh.plan.target_of(index)];
    let dial = Dial {
        addr: target.addr,
        source: (!src.is_empty()).then(|| src[(index % src.len() as u64) as usize]),
        host_header: &target.host_header,
        path: &target.path,
        token: sh.plan.token.as_deref(),
        rcvbuf: sh.plan.rcvbuf,
        timeout: Duration::from_millis(sh.plan.connect_timeout_ms),
    };
    let mut buf = ReadBuf::new(sh.plan.read_buffer);
    sh.connect.borrow_mut().attempts += 1;
    let t0 = Instant::now();
    let opened = tokio::select! {
        _ = sh.stop.cancelled() => return,
        r = connect::open(&dial, &mut buf) => r,
    };
    let mut stream = match opened {
        Ok(s) => s,
        Err(reason) => {
            *sh.connect.borrow_mut().failures_by_reason.entry(reason).or_default() += 1;
            return;
        }
    };
    {
        let mut c = sh.connect.borrow_mut();
        c.successes += 1;
        c.latency_us.saturating_record((t0.elapsed().as_micros() as u64).max(1));
    }
    sh.classes[class.index()].borrow_mut().connected += 1;
    sh.open.set(sh.open.get() + 1);
    sh.peak_open.set(sh.peak_open.get().max(sh.open.get()));

    let mut session = Session::new(sh, index, class);
    session.subscribe_request(sh);
    let end = if flush(&mut stream, &mut session.out).await.is_err() {
        sh.classes[class.index()].borrow_mut().count_close("io_error");
        End::Closed
    } else if class == Class::Stuck {
        sh.stop.cancelled().await;
        drain_for_close(sh, &mut stream, &mut buf, class).await
    } else {
        read_loop(sh, &mut stream, &mut buf, &mut session).await
    };
    if let End::Stopped = end {
        session.out.clear();
        session.push_frame(frame::OP_CLOSE, &1000u16.to_be_bytes());
    }
    // Best effort: the server's close reply is not waited for.
    let _ = tokio::time::timeout(Duration::from_millis(500), flush(&mut stream, &mut session.out))
        .await;
    sh.open.set(sh.open.get() - 1);
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
    let pace = (session.class == Class::Slow)
        .then(|| Duration::from_secs_f64(1.0 / sh.plan.slow_rate.max(1e-3)));
    let max_msgs = if pace.is_some() { 1 } else { usize::MAX };
    let mut next_allowed = tokio::time::Instant::now();
    loop {
        // Use what is buffered (a slow client one message at a time, paced).
        loop {
            let (flow, used) = session.consume(sh, buf, max_msgs);
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
            r = stream.read(&mut buf.data[buf.end..]) => r,
        };
        match r {
            Ok(0) => {
                sh.classes[session.class.index()].borrow_mut().count_close("1006");
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
