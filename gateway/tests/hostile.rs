//! Hostile clients (issue 9, PROTOCOL.md section 4: "no request, however built within
//! `max_message_bytes`, may stop the process, stall other sessions or hold more than its share
//! of memory"). Each test pins one attack and its answer by the contract, with a bystander
//! session that must go on receiving its quotes in order (seq strictly rising per symbol) during
//! and after the attack. A stack overflow or an abort anywhere in the gateway ends this whole
//! test process, so "the process lives" is checked by every test reaching its end.
//!
//! Every test runs a real gateway in this process and speaks real WebSocket, HTTP or raw TCP to
//! it on 127.0.0.0/8. They run one at a time: several of them load the machine on purpose.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// One attack at a time: they load a 2-core machine on purpose, and each bystander must only
/// see its own test's attack.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The answer to a frame nested deeper than the decoder allows (proto's `MAX_REQUEST_DEPTH`).
const TOO_DEEP: &str = "request nests arrays or objects more than 8 levels deep";

/// A session subscribed to two busy symbols, reading all the time in a task of its own and
/// checking every message against the ordering rules of section 3 as it arrives.
struct Bystander {
    quotes: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<OrderCheck, String>>,
}

impl Bystander {
    async fn join(gw: &TestGateway) -> Bystander {
        let (mut ws, _) = gw.client().await;
        let ack = subscribe(&mut ws, 1, &["AAPL", "MSFT"]).await;
        assert_eq!(ack["symbols"], json!(["AAPL", "MSFT"]), "{ack}");
        let quotes = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (quotes.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut order = OrderCheck::default();
            while !halt.load(Ordering::Relaxed) {
                let next = tokio::time::timeout(Duration::from_millis(100), ws.next()).await;
                match next {
                    Err(_) => continue,
                    Ok(Some(Ok(Message::Text(text)))) => {
                        let m: Value = serde_json::from_str(&text).expect("JSON");
                        // Panics (failing the test at `finish`) when an order rule breaks.
                        order.observe(&m);
                        if m["type"] == "quote" {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(Ok(_))) => {}
                    Ok(other) => return Err(format!("the bystander's session ended: {other:?}")),
                }
            }
            Ok(order)
        });
        let bystander = Bystander { quotes, stop, task };
        bystander.receives_quotes("before the attack").await;
        bystander
    }

    /// Waits for a few more quotes; fails if they do not come within [`STEP`].
    async fn receives_quotes(&self, when: &str) {
        let start = self.quotes.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + STEP;
        while self.quotes.load(Ordering::Relaxed) < start + 3 {
            assert!(!self.task.is_finished(), "the bystander stopped {when}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bystander got no quotes for {STEP:?} {when}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops reading; fails if an order rule broke or the session ended.
    async fn finish(self) -> OrderCheck {
        self.receives_quotes("after the attack").await;
        self.stop.store(true, Ordering::Relaxed);
        let order = self.task.await.expect("the bystander saw messages out of order");
        order.unwrap_or_else(|why| panic!("{why}"))
    }
}

/// The next message that is not a quote, snapshot or heartbeat: the answer to a request.
async fn answer(ws: &mut Ws) -> Value {
    recv_until(ws, |m| !matches!(m["type"].as_str(), Some("quote" | "snapshot" | "heartbeat")))
        .await
        .0
}

/// Sends one hostile frame and expects one `bad_request` for it (without an `id`: the frame is
/// refused before it is read), then a normal answer on the same session.
async fn refused_as_too_deep(gw: &TestGateway, frame: String) {
    assert!(frame.len() <= 65_536, "{} bytes", frame.len());
    let _guard = SERIAL.lock().await;
    let bystander = Bystander::join(gw).await;
    let (mut ws, _) = gw.client().await;
    ws.send(Message::text(frame)).await.expect("send");
    let error = answer(&mut ws).await;
    assert_eq!(
        (&error["type"], &error["code"], &error.get("id"), &error["message"]),
        (&json!("error"), &json!("bad_request"), &None, &json!(TOO_DEEP)),
        "{error}"
    );
    // The session stays open and is served.
    assert_eq!(ping(&mut ws, 2).await["id"], 2);
    let order = bystander.finish().await;
    assert!(order.quotes >= 6, "{} quotes", order.quotes);
    a_new_client_gets_quotes(gw, "AAPL").await;
    assert_eq!(gw.get("/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_65536_byte_frame_of_nested_arrays_is_a_bad_request() {
    let gw = TestGateway::start().await;
    let frame = format!("{}{}", "[".repeat(32_768), "]".repeat(32_768));
    assert_eq!(frame.len(), 65_536);
    refused_as_too_deep(&gw, frame).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_nested_as_deep_are_a_bad_request() {
    let gw = TestGateway::start().await;
    // 10,922 levels of {"a": … } in 65,533 bytes.
    let levels = 65_536 / 6;
    let frame = format!("{}0{}", r#"{"a":"#.repeat(levels), "}".repeat(levels));
    refused_as_too_deep(&gw, frame).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_of_open_brackets_and_braces_is_a_bad_request() {
    let gw = TestGateway::start().await;
    // `[{` 32,768 times: never closed, and as deep as a frame can be.
    refused_as_too_deep(&gw, "[{".repeat(32_768)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_naming_6000_unknown_symbols_is_too_many_subscriptions_and_changes_nothing() {
    let _guard = SERIAL.lock().await;
    let gw = TestGateway::start().await;
    let bystander = Bystander::join(&gw).await;
    let (mut ws, welcome) = gw.client().await;
    assert_eq!(welcome["limits"]["max_subscriptions"], 1_000);
    subscribe(&mut ws, 1, &["NVDA"]).await;
    let names: Vec<String> = (0..6_000).map(|i| format!("NO-{i:04}")).collect();
    let frame = json!({"op": "subscribe", "id": 2, "symbols": names}).to_string();
    assert!(frame.len() <= 65_536, "{} bytes", frame.len());
    ws.send(Message::text(frame)).await.expect("send");
    // Refused whole: one error, no ack, no unknown_symbol listing 6,000 names.
    let error = answer(&mut ws).await;
    assert_eq!(
        (&error["type"], &error["code"], &error["id"]),
        (&json!("error"), &json!("too_many_subscriptions"), &json!(2)),
        "{error}"
    );
    assert!(error["message"].as_str().is_some_and(|m| m.len() < 200), "{error}");
    let (pong, before) = {
        send(&mut ws, json!({"op": "ping", "id": 3})).await;
        recv_until(&mut ws, |m| m["type"] == "pong").await
    };
    assert_eq!(pong["id"], 3);
    assert!(
        before
            .iter()
            .all(|m| m["type"] == "quote" && m["symbol"] == "NVDA" || m["type"] == "heartbeat"),
        "{before:?}"
    );
    // Nothing changed: the bystander's two subscriptions and NVDA, which still delivers.
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 3.0);
    assert_eq!(gw.metric(r#"gateway_request_errors_total{code="unknown_symbol"}"#).await, 0.0);
    assert_eq!(
        gw.metric(r#"gateway_request_errors_total{code="too_many_subscriptions"}"#).await,
        1.0
    );
    let (quote, _) = recv_until(&mut ws, |m| m["type"] == "quote").await;
    assert_eq!(quote["symbol"], "NVDA");
    bystander.finish().await;
}

/// What one churning client saw.
#[derive(Debug, Default)]
struct Churned {
    requests: u64,
    acks: u64,
    rate_limited: u64,
    ended: Option<String>,
}

/// Alternates subscribe and unsubscribe of `["*"]` at `rate` requests per second for `run`,
/// reading everything the gateway sends meanwhile; then, with `drain`, reads the answers still
/// on their way, and closes.
///
/// Without snapshots: with them, 500 snapshots per subscribe make this a test of the churners'
/// own bandwidth, which conflation bounds per session (tests/backpressure.rs). This pins the
/// cost of the subscription changes themselves, which every session on the shard shares.
async fn churn(
    gw_addr: SocketAddr,
    from: Ipv4Addr,
    rate: u32,
    run: Duration,
    drain: bool,
) -> Churned {
    let options = ClientOptions { from: Some(from), ..Default::default() };
    let (mut ws, _) = connect_client(gw_addr, options).await;
    let mut seen = Churned::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
    // Never faster than the limit, even after a stall.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = tokio::time::Instant::now() + run;
    while tokio::time::Instant::now() < until && seen.ended.is_none() {
        tokio::select! {
            _ = tick.tick() => {
                let op = if seen.requests % 2 == 0 { "subscribe" } else { "unsubscribe" };
                let request =
                    json!({"op": op, "id": seen.requests, "symbols": ["*"], "snapshot": false});
                if let Err(e) = ws.send(Message::text(request.to_string())).await {
                    seen.ended = Some(format!("send: {e}"));
                }
                seen.requests += 1;
            }
            next = ws.next() => match next {
                // A cheap look: a churning client receives thousands of snapshots a second.
                Some(Ok(Message::Text(text))) => {
                    if text.starts_with(r#"{"type":"ack""#) {
                        seen.acks += 1;
                    } else if text.contains(r#""code":"rate_limited""#) {
                        seen.rate_limited += 1;
                    }
                }
                Some(Ok(Message::Close(frame))) => seen.ended = Some(format!("closed: {frame:?}")),
                Some(Ok(_)) => {}
                other => seen.ended = Some(format!("{other:?}")),
            },
        }
    }
    if drain && seen.ended.is_none() {
        // The answers still on their way, up to a marker ping's pong (sent again while the
        // rate refuses it).
        let marker = json!({"op": "ping", "id": "last"});
        send(&mut ws, marker.clone()).await;
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let next = tokio::time::timeout_at(deadline, ws.next()).await;
            let Ok(Some(Ok(message))) = next else {
                seen.ended = Some(format!("answers still missing after {STEP:?}: {next:?}"));
                break;
            };
            let Message::Text(text) = message else { continue };
            let is_marker = text.contains(r#""id":"last""#);
            if text.starts_with(r#"{"type":"pong""#) && is_marker {
                break;
            } else if text.starts_with(r#"{"type":"ack""#) {
                seen.acks += 1;
            } else if text.contains(r#""code":"rate_limited""#) && is_marker {
                tokio::time::sleep(Duration::from_secs(1) / rate).await;
                send(&mut ws, marker.clone()).await;
            } else if text.contains(r#""code":"rate_limited""#) {
                seen.rate_limited += 1;
            }
        }
    }
    let _ = ws.close(None).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_churning_star_subscriptions_at_their_rate_limit_leave_a_bystander_unharmed()
{
    let _guard = SERIAL.lock().await;
    let gw = TestGateway::start().await;
    let bystander = Bystander::join(&gw).await;
    let (mut settled, welcome) = gw.client().await;
    let rate = welcome["limits"]["max_requests_per_sec"].as_u64().unwrap() as u32;
    assert_eq!(rate, 50);
    let churners: Vec<_> = (0..20u8)
        .map(|i| {
            tokio::spawn(churn(gw.addr, Ipv4Addr::new(127, 0, 1, i + 1), rate, STEP / 2, false))
        })
        .collect();
    // Meanwhile the bystander is served, and so is a new request of another session.
    bystander.receives_quotes("during the churn").await;
    assert_eq!(ping(&mut settled, 1).await["id"], 1);
    for churner in churners {
        let seen = churner.await.expect("churner");
        // A client at its limit is not closed. (How soon it is answered: see the next test.)
        assert_eq!(seen.ended, None, "a churner's session ended: {seen:?}");
    }
    // The churners are gone, and so are their subscriptions: only the bystander's are left.
    wait_metric(&gw, "gateway_subscriptions_active", 2.0, 2 * STEP).await;
    assert_eq!(gw.metric(r#"gateway_sessions_closed_total{reason="policy"}"#).await, 0.0);
    bystander.finish().await;
    a_new_client_gets_quotes(&gw, "MSFT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_churning_star_subscriptions_at_their_rate_limit_get_every_answer() {
    // Fails, intermittently, on the current core in a debug build on a loaded 2-core machine:
    // each subscribe or unsubscribe of `["*"]` copies the subscriber list of every symbol
    // (issue 9 item 4), so at 20 × 50 changes a second the shards fall behind by seconds, and a
    // churner has had no answer at all after 2.5 s of requests, or still misses some 5 s later.
    let _guard = SERIAL.lock().await;
    let gw = TestGateway::start().await;
    let bystander = Bystander::join(&gw).await;
    let rate = 50;
    let churners: Vec<_> = (0..20u8)
        .map(|i| {
            tokio::spawn(churn(gw.addr, Ipv4Addr::new(127, 0, 1, i + 1), rate, STEP / 2, true))
        })
        .collect();
    for churner in churners {
        let seen = churner.await.expect("churner");
        assert_eq!(seen.ended, None, "{seen:?}");
        // Each request got its one answer. (A few may be `rate_limited`: the limit is applied
        // when the gateway reads a frame, and frames that queued while it was busy are read as
        // a burst.)
        assert_eq!(seen.acks + seen.rate_limited, seen.requests, "{seen:?}");
        assert!(seen.rate_limited <= seen.requests / 10, "{seen:?}");
    }
    wait_metric(&gw, "gateway_subscriptions_active", 2.0, 2 * STEP).await;
    bystander.finish().await;
}

/// The start of an upgrade request, never finished.
const HALF_UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_upgrades_are_dropped_at_the_handshake_timeout_and_harm_nobody() {
    let _guard = SERIAL.lock().await;
    let timeout = Duration::from_millis(2_000);
    let gw = TestGateway::start_with(|c| c.handshake_timeout_ms = timeout.as_millis() as u64).await;
    let bystander = Bystander::join(&gw).await;
    // From an address of their own, so that a per-address rule may refuse them and not us.
    let attacker = SocketAddr::new(Ipv4Addr::new(127, 0, 2, 1).into(), 0);
    let mut stalled = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(attacker).expect("bind 127.0.2.1");
        let mut stream = socket.connect(gw.addr).await.expect("connect");
        // A gateway that refuses at once may already have closed: that is allowed too.
        let _ = stream.write_all(HALF_UPGRADE).await;
        stalled.push(stream);
    }
    let opened = tokio::time::Instant::now();
    // While they stall: the bystander is served, a new session opens, HTTP answers.
    bystander.receives_quotes("while 1,000 upgrades stall").await;
    a_new_client_gets_quotes(&gw, "AAPL").await;
    assert_eq!(gw.get("/healthz").await.status, 200);
    // Each is dropped by the handshake timeout (or sooner), never upgraded.
    let readers = stalled.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            let read = tokio::time::timeout(timeout + STEP, stream.read_to_end(&mut got)).await;
            (read.is_ok(), String::from_utf8_lossy(&got).into_owned())
        })
    });
    for reader in readers {
        let (dropped, got) = reader.await.expect("reader");
        assert!(
            dropped,
            "a half-open upgrade is still open {:?} after the last one opened",
            opened.elapsed()
        );
        assert!(!got.contains(" 101 "), "a half-open upgrade was upgraded: {got}");
    }
    bystander.finish().await;
    a_new_client_gets_quotes(&gw, "MSFT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_kb_snapshot_url_gets_a_4xx_and_harms_nobody() {
    let _guard = SERIAL.lock().await;
    let gw = TestGateway::start().await;
    let bystander = Bystander::join(&gw).await;
    let symbols = vec!["AAPL"; 400 * 1024 / 5].join(",");
    let request = format!(
        "GET /snapshot?symbols={symbols} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    assert!(request.len() >= 400 * 1024, "{} bytes", request.len());
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut read_half, mut write_half) = stream.split();
    // Write and read at once: a gateway may answer before it has read the whole URL.
    let write = async {
        let _ = write_half.write_all(request.as_bytes()).await;
    };
    let read = async {
        let mut raw = Vec::new();
        let _ = read_half.read_to_end(&mut raw).await;
        raw
    };
    let ((), raw) =
        tokio::time::timeout(STEP, async { tokio::join!(write, read) }).await.expect("in time");
    assert!(!raw.is_empty(), "the connection closed without an answer");
    let response = parse_response(&raw);
    assert!([400, 414, 431].contains(&response.status), "{response:?}");
    // The process is unharmed: HTTP, the bystander, new sessions, and a sane /snapshot.
    let snapshot = gw.get("/snapshot?symbols=AAPL,MSFT").await;
    assert_eq!(snapshot.status, 200, "{snapshot:?}");
    assert_eq!(snapshot.json().as_array().map(Vec::len), Some(2));
    bystander.finish().await;
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

/// This process's resident memory in bytes (the gateway runs in it).
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

/// The most a connection that has not finished its upgrade may make the gateway hold: a
/// request head of up to 16 KiB (the new HTTP layer's cap, answered 431 past it) and the
/// connection's own state.
const HEAD_HOLD_BYTES: u64 = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_half_open_upgrades_with_long_heads_hold_a_bounded_amount_each() {
    // Fails on the hyper-based core: each connection's 48 KiB of unfinished head is buffered
    // whole until the handshake timeout, so memory grows by about 48 MB or more.
    let _guard = SERIAL.lock().await;
    let gw = TestGateway::start_with(|c| c.handshake_timeout_ms = 10_000).await;
    let bystander = Bystander::join(&gw).await;
    let head_line = format!("X-Pad: {}\r\n", "p".repeat(1_000));
    let mut head = HALF_UPGRADE.to_vec();
    while head.len() < 48 * 1024 {
        head.extend_from_slice(head_line.as_bytes());
    }
    let before = resident_bytes();
    let attacker = SocketAddr::new(Ipv4Addr::new(127, 0, 2, 2).into(), 0);
    let mut stalled = Vec::with_capacity(1_000);
    for _ in 0..1_000 {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(attacker).expect("bind 127.0.2.2");
        let mut stream = socket.connect(gw.addr).await.expect("connect");
        // A gateway that stops reading past its cap may leave the rest unsent: fine.
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.write_all(&head)).await;
        stalled.push(stream);
    }
    // Let the gateway read what was sent.
    bystander.receives_quotes("while 1,000 long heads stall").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        grown <= 1_000 * HEAD_HOLD_BYTES,
        "1,000 unfinished heads of 48 KiB grew memory by {} KiB",
        grown / 1024
    );
    a_new_client_gets_quotes(&gw, "AAPL").await;
    drop(stalled);
    bystander.finish().await;
}

/// The most a session may be made to hold (docs/backpressure.md, "Memory bounds": about
/// 590 KiB at the defaults), plus the test's own share per attacker (its task and socket).
const SESSION_HOLD_BYTES: u64 = 640 * 1024;

/// A client frame: text, masked with an all-zero key (the payload stays as it is).
fn masked_text_frame(text: &str) -> Vec<u8> {
    let len = text.len();
    let mut frame = vec![0x81];
    match len {
        0..=125 => frame.push(0x80 | len as u8),
        126..=65_535 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// A raw WebSocket session from `from`, with the smallest receive buffer Linux allows, past
/// the `101` (what follows it stays unread).
async fn raw_small_window_session(addr: SocketAddr, from: Ipv4Addr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.bind(SocketAddr::new(from.into(), 0)).expect("bind");
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("upgrade request");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("101");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    stream
}

/// The next text frame's JSON off a raw session (Pings and other frames skipped).
async fn raw_next_json(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Value {
    loop {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.expect("a frame");
        let len = match head[1] & 0x7f {
            126 => u64::from(stream.read_u16().await.expect("length")),
            127 => stream.read_u64().await.expect("length"),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.expect("payload");
        if head[0] & 0x0f == 0x1 {
            return serde_json::from_slice(&payload).expect("JSON");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_the_answers_to_their_largest_requests_hold_a_bounded_amount_each()
{
    // Each attacker sends twelve subscribes of ~61 KB (1,000 unknown names of 58 characters, each
    // answered by an error listing them all) and reads nothing. The gateway stops reading a
    // session once its unread answers pass 2 × max_message_bytes + 4 KiB, so TCP pushes back
    // on the client instead of the gateway holding twelve answers per session.
    let _guard = SERIAL.lock().await;
    let gw = TestGateway::start_with(|c| {
        // Long enough that the stuck sessions are measured, not closed with 4008 or 4000.
        c.slow_client_timeout_ms = 60_000;
        c.idle_timeout_ms = 60_000;
    })
    .await;
    let bystander = Bystander::join(&gw).await;
    const ATTACKERS: usize = 100;
    // Twelve answers of ~61 KB (732 KB) are more than a session may hold: a gateway that did
    // not pause would fail the bound below. Twelve strikes stay inside the error budget (20).
    const FRAMES: u64 = 12;
    // The same frames for every attacker, shared: the test itself holds no copy per session.
    let frames: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..FRAMES)
            .map(|f| {
                let names: Vec<String> =
                    (0..1_000).map(|k| format!("{:X>58}", format!("{f}-{k}"))).collect();
                let text = json!({"op": "subscribe", "id": 2 + f, "symbols": names}).to_string();
                assert!(text.len() < 65_536, "{} bytes", text.len());
                masked_text_frame(&text)
            })
            .collect(),
    );
    let before = resident_bytes();
    let mut readers = Vec::with_capacity(ATTACKERS);
    let mut writers = Vec::with_capacity(ATTACKERS);
    for i in 0..ATTACKERS {
        let from = Ipv4Addr::new(127, 0, 3, 1 + i as u8);
        let (read, mut write) = raw_small_window_session(gw.addr, from).await.into_split();
        let frames = frames.clone();
        // Blocks for good once the gateway stops reading; finishes once the answers are read.
        writers.push(tokio::spawn(async move {
            for frame in frames.iter() {
                if write.write_all(frame).await.is_err() {
                    return;
                }
            }
            // Held open until the test ends.
            std::future::pending::<()>().await;
            drop(write);
        }));
        readers.push(read);
    }
    bystander.receives_quotes("while 100 sessions hold unread answers").await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let grown = resident_bytes().saturating_sub(before);
    eprintln!("{ATTACKERS} sessions with unread answers: +{} KiB", grown / 1024);
    assert!(
        grown <= ATTACKERS as u64 * SESSION_HOLD_BYTES,
        "{ATTACKERS} sessions with unread answers grew memory by {} KiB ({} KiB each)",
        grown / 1024,
        grown / 1024 / ATTACKERS as u64
    );
    assert_eq!(gw.metric("gateway_sessions_active").await, ATTACKERS as f64 + 1.0);
    // Pausing lost nothing: one attacker that starts reading gets every answer, in order,
    // each listing its 1,000 names with a short message.
    let mut reader = readers.pop().expect("an attacker");
    let welcome = tokio::time::timeout(STEP, raw_next_json(&mut reader)).await.expect("welcome");
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    for id in 2..2 + FRAMES {
        let error = loop {
            let m = tokio::time::timeout(STEP, raw_next_json(&mut reader)).await.expect("answer");
            if m["type"] != "heartbeat" {
                break m;
            }
        };
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["id"], id, "answers in order, none lost");
        assert_eq!(error["code"], "unknown_symbol");
        assert_eq!(error["symbols"].as_array().map(Vec::len), Some(1_000));
        let message = error["message"].as_str().expect("message");
        assert!(message.ends_with(" and 990 more"), "{message}");
        assert!(message.len() < 1_024, "{} bytes", message.len());
    }
    drop(readers);
    for writer in writers {
        writer.abort();
    }
    bystander.finish().await;
}
