//! A bare tokio fan-out: the peer server `make bench-peers` measures the gateway against. It is
//! what a competent user would write with tokio and tokio-tungstenite and no features: an
//! in-process feed of the gateway's model (feed-sim, uniform activity, batches every 1 ms), one
//! task per session, and per session a bounded channel the feed pushes each update into.
//!
//! Speaks the contract's messages with the gateway's bytes (proto's encoders): `welcome` first,
//! the `ack` of a subscribe, a `snapshot` per symbol, then every `quote`; `ping` gets `pong`.
//! Serves `GET /symbols` so the load tester finds the symbols as it does on the gateway.
//!
//! It must never grow the gateway's features (conflation, throttling, heartbeats, limits): it is
//! the yardstick of what the bare design costs. What it does when a session cannot keep up is
//! the simplest thing: the channel fills and further updates for that session are dropped (the
//! client sees `seq` jumps).
//!
//! ```sh
//! cargo build --release -p load-tests --example tokio_fanout
//! taskset -c 0 target/release/examples/tokio_fanout --listen 127.0.0.1:9200 --symbols 500 --rate 2000
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use feed_sim::{Activity, Simulator};
use futures_util::{SinkExt, StreamExt};
use proto::request::{Op, Request, Symbols};
use proto::server::Limits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Updates one session may have queued; past it, further ones are dropped for that session.
/// About 6 s of a session's share at the heaviest benchmark load (160 updates/s), so only a
/// session that has stopped keeping up loses any.
const SESSION_QUEUE: usize = 1024;
/// Client requests are small; tungstenite's 128 KiB default would cost 1.2 GiB at 10k sessions.
const READ_BUFFER_BYTES: usize = 4096;
/// Frames buffered before tungstenite writes on its own (we flush after each drain anyway).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// Largest request read; the announced limit.
const MAX_MESSAGE_BYTES: u32 = 65_536;

#[derive(Parser, Clone)]
#[command(about = "Bare tokio fan-out peer server for make bench-peers")]
struct Args {
    /// Address to listen on (port 0: an ephemeral port, printed on stdout).
    #[arg(long, env = "PEER_LISTEN", default_value = "127.0.0.1:9200")]
    listen: SocketAddr,
    /// Symbols of the feed (S), named as the gateway's simulator names them.
    #[arg(long, env = "PEER_SYMBOLS", default_value_t = feed_sim::DEFAULT_SYMBOLS)]
    symbols: usize,
    /// Total updates per second across all symbols (R).
    #[arg(long, env = "PEER_RATE", default_value_t = feed_sim::DEFAULT_RATE)]
    rate: u32,
    /// Seed of the simulated market.
    #[arg(long, default_value_t = feed_sim::DEFAULT_SEED)]
    seed: u64,
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// One queued delivery: the symbol (so an unsubscribe can drop what is already queued) and
/// its frame, shared by every subscriber.
type Delivery = (u32, Utf8Bytes);

/// What the feed and the sessions share. One thread runs everything, so the lock is never
/// contended; it is held only to push to subscribers or to change a subscription.
struct Market {
    names: Vec<String>,
    ids: HashMap<String, u32>,
    /// The latest `snapshot` frame of each symbol.
    snapshots: Vec<Utf8Bytes>,
    /// Each symbol's subscribers: (session id, its queue).
    subscribers: Vec<Vec<(u64, mpsc::Sender<Delivery>)>>,
}

type Shared = Arc<Mutex<Market>>;

fn frame(bytes: bytes::Bytes) -> Utf8Bytes {
    // The encoders write JSON, which is UTF-8; the check runs once per update, not per client.
    Utf8Bytes::try_from(bytes).unwrap_or_else(|_| Utf8Bytes::from_static("{}"))
}

/// The feed: every millisecond, the updates due at `rate` since the start, each encoded once
/// and pushed to every subscriber's queue. After a stall, at most 100 ms of updates are caught
/// up, as the gateway's feed does.
async fn feed(market: Shared, mut sim: Simulator, rate: u32) {
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let specs = sim.symbols().to_vec();
    loop {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * f64::from(rate)) as u64;
        sent = sent.max(due.saturating_sub(u64::from(rate).div_ceil(10)));
        let mut m = market.lock().unwrap_or_else(|e| e.into_inner());
        while sent < due {
            let (i, q) = sim.next_update(now_ns());
            let frames = q.encode(&specs[i].name, specs[i].precision);
            let quote = frame(frames.quote);
            m.snapshots[i] = frame(frames.snapshot);
            m.subscribers[i].retain(|(_, tx)| match tx.try_send((i as u32, quote.clone())) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
            sent += 1;
        }
    }
}

/// Answers `GET /symbols` itself; anything else goes to tungstenite's server handshake.
async fn accept(mut tcp: TcpStream, market: &Shared) -> Option<WebSocketStream<TcpStream>> {
    // Look at the request line without consuming it: the handshake reads it again.
    let mut line = [0u8; 16];
    let n = loop {
        let n = tcp.peek(&mut line).await.ok()?;
        if n == 0 {
            return None;
        }
        if n == line.len() || line[..n].contains(&b'\n') {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    if line[..n].starts_with(b"GET /symbols ") || line[..n].starts_with(b"GET /symbols?") {
        let names = market.lock().unwrap_or_else(|e| e.into_inner()).names.clone();
        let body = serde_json::to_string(&names).ok()?;
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        // Read the request so that closing does not reset the connection under the answer.
        let mut head = [0u8; 4096];
        let _ = tcp.read(&mut head).await;
        tcp.write_all(resp.as_bytes()).await.ok()?;
        return None;
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(Some(MAX_MESSAGE_BYTES as usize));
    tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await.ok()
}

async fn session(tcp: TcpStream, market: Shared, id: u64) -> Option<()> {
    tcp.set_nodelay(true).ok()?;
    let mut ws = accept(tcp, &market).await?;
    let limits = Limits {
        max_subscriptions: 1000,
        max_message_bytes: MAX_MESSAGE_BYTES,
        max_requests_per_sec: 50,
    };
    let welcome = proto::server::welcome(
        "tokio-fanout",
        &format!("{id:x}"),
        "tokio-fanout",
        now_ns(),
        5000,
        limits,
    );
    ws.send(Message::text(String::from_utf8(welcome).ok()?)).await.ok()?;
    let (tx, mut rx) = mpsc::channel::<Delivery>(SESSION_QUEUE);
    let mut subscribed: Vec<u32> = Vec::new();
    let result = async {
        loop {
            tokio::select! {
                delivery = rx.recv() => {
                    let Some((sym, frame)) = delivery else { return Some(()) };
                    if subscribed.contains(&sym) {
                        ws.feed(Message::Text(frame)).await.ok()?;
                    }
                    // Everything queued goes out in one flush.
                    while let Ok((sym, frame)) = rx.try_recv() {
                        if subscribed.contains(&sym) {
                            ws.feed(Message::Text(frame)).await.ok()?;
                        }
                    }
                    ws.flush().await.ok()?;
                }
                msg = ws.next() => match msg? .ok()? {
                    Message::Text(text) => {
                        let out = request(&market, id, &tx, &mut subscribed, text.as_bytes());
                        for m in out {
                            ws.feed(Message::Text(m)).await.ok()?;
                        }
                        ws.flush().await.ok()?;
                    }
                    Message::Close(_) => return Some(()),
                    // tungstenite answers pings itself, with the next write.
                    _ => {}
                },
            }
        }
    }
    .await;
    let mut m = market.lock().unwrap_or_else(|e| e.into_inner());
    for &sym in &subscribed {
        m.subscribers[sym as usize].retain(|(s, _)| *s != id);
    }
    result
}

/// Applies one request; returns the frames that answer it, in order.
fn request(
    market: &Shared,
    id: u64,
    tx: &mpsc::Sender<Delivery>,
    subscribed: &mut Vec<u32>,
    text: &[u8],
) -> Vec<Utf8Bytes> {
    let mut scratch = proto::DecodeScratch::new();
    let limits = proto::DecodeLimits { max_symbols: 1_000 };
    let req = match Request::decode(text, &mut scratch, limits) {
        Ok(r) => r,
        Err(e) => {
            let err = proto::server::error(
                e.id.as_ref(),
                proto::server::ErrorCode::BadRequest,
                &e.message,
                [],
                None,
            );
            return vec![frame(err.into())];
        }
    };
    let mut m = market.lock().unwrap_or_else(|e| e.into_inner());
    let named: Vec<u32> = match req.op {
        Op::Subscribe { symbols: Symbols::All, .. } | Op::Unsubscribe { symbols: Symbols::All } => {
            (0..m.names.len() as u32).collect()
        }
        Op::Subscribe { symbols: Symbols::List(ref l), .. }
        | Op::Unsubscribe { symbols: Symbols::List(ref l) } => {
            l.iter().filter_map(|s| m.ids.get(s).copied()).collect()
        }
        Op::Ping => return vec![frame(proto::server::pong(req.id.as_ref(), now_ns()).into())],
    };
    let names = named.iter().map(|&s| m.names[s as usize].as_str());
    let op = if matches!(req.op, Op::Subscribe { .. }) { "subscribe" } else { "unsubscribe" };
    let mut out = Vec::with_capacity(named.len() + 1);
    out.push(frame(proto::server::ack(req.id.as_ref(), op, names).into()));
    match req.op {
        Op::Subscribe { snapshot, .. } => {
            for &s in &named {
                if !subscribed.contains(&s) {
                    subscribed.push(s);
                    m.subscribers[s as usize].push((id, tx.clone()));
                }
                if snapshot {
                    out.push(m.snapshots[s as usize].clone());
                }
            }
        }
        _ => {
            for &s in &named {
                subscribed.retain(|&x| x != s);
                m.subscribers[s as usize].retain(|(sid, _)| *sid != id);
            }
        }
    }
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut sim = Simulator::with_activity(args.symbols, args.seed, Activity::Uniform);
    let specs = sim.symbols().to_vec();
    let mut snapshots = Vec::with_capacity(specs.len());
    for (i, spec) in specs.iter().enumerate() {
        let q = sim.opening_quote(i, now_ns());
        snapshots.push(frame(q.encode(&spec.name, spec.precision).snapshot));
    }
    let market = Arc::new(Mutex::new(Market {
        names: specs.iter().map(|s| s.name.clone()).collect(),
        ids: specs.iter().enumerate().map(|(i, s)| (s.name.clone(), i as u32)).collect(),
        snapshots,
        subscribers: vec![Vec::new(); specs.len()],
    }));
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("tokio_fanout: serving on http://{addr}/ (WebSocket: ws://{addr}/ws)");
    tokio::spawn(feed(Arc::clone(&market), sim, args.rate));
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            // Out of file descriptors and the like: wait, then go on accepting.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        next_id += 1;
        tokio::spawn(session(tcp, Arc::clone(&market), next_id));
    }
}
