//! Backpressure and heartbeats (issue 3, PROTOCOL.md section 4): stuck clients, slow readers,
//! dead peers. Every test runs a real gateway in this process and speaks real WebSocket (or raw
//! TCP) to it on 127.0.0.1.
//!
//! Time: the gateway's timers run on its shard threads against the monotonic clock, out of reach
//! of tokio's test clock, so these tests use real time with short timeouts in the config. What
//! they assert about time is what the behaviour defines (a close within the timeout and its
//! grace; quote ages far below what a growing backlog would give), never a speed.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use gateway::session::CLOSE_GRACE;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// These tests measure timing-sensitive behaviour on a small machine: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// What one reader saw.
#[derive(Debug, Default)]
struct ReaderStats {
    quotes: u64,
    max_age: Duration,
    last_quote: Option<Instant>,
    /// Updates it did not get (seq jumps).
    missed: u64,
    ended: Option<String>,
}

/// Reads quotes until `stop`, checking order and noting their age (now minus `ts`).
async fn read_quotes(mut ws: Ws, stop: Arc<AtomicBool>) -> ReaderStats {
    let mut stats = ReaderStats::default();
    let mut order = OrderCheck::default();
    while !stop.load(Ordering::Relaxed) {
        match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(Message::Text(text)))) => {
                let m: Value = serde_json::from_str(&text).unwrap();
                order.observe(&m);
                if m["type"] == "quote" {
                    let age = wall_ns().saturating_sub(m["ts"].as_u64().unwrap());
                    stats.max_age = stats.max_age.max(Duration::from_nanos(age));
                    stats.quotes += 1;
                    stats.last_quote = Some(Instant::now());
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => {
                stats.ended = Some(format!("{other:?}"));
                break;
            }
        }
    }
    stats.missed = order.jumps;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_clients_are_closed_with_4008_and_readers_do_not_notice() {
    let _serial = SERIAL.lock().await;
    const STUCK: usize = 20;
    const READERS: usize = 50;
    // Small buffers: what stands in front of a stuck client's close frame must be read within
    // the close grace.
    const STUCK_RECV_BUFFER: u32 = 2048;
    let timeout = Duration::from_millis(1000);
    let send_buffer = 4096;
    let write_budget = 4096;
    let gw = TestGateway::start_with(|c| {
        c.slow_client_timeout_ms = timeout.as_millis() as u64;
        c.send_buffer_bytes = send_buffer;
        c.write_budget_bytes = write_budget;
        c.sim_symbols = 50;
        c.sim_rate = 200;
        // The shard shares two cores with this test's 70 clients: a descheduled shard is not
        // an overloaded one, and the readers must still get every update.
        c.replay_max_age_ms = 1_000;
    })
    .await;

    // 50 readers of the hottest symbol, reading as fast as they can.
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let (mut ws, _) = gw.client().await;
        subscribe(&mut ws, 1, &["AAPL"]).await;
        readers.push(tokio::spawn(read_quotes(ws, Arc::clone(&stop))));
    }

    // 20 clients with a small receive buffer that subscribe to everything, then stop reading.
    let small = ClientOptions {
        recv_buffer: Some(STUCK_RECV_BUFFER),
        read_buffer: Some(2048),
        ..Default::default()
    };
    let mut stuck = Vec::new();
    for _ in 0..STUCK {
        stuck.push(Some(connect_client(gw.addr, small).await.0));
    }
    for ws in stuck.iter_mut().flatten() {
        send(ws, json!({"op": "subscribe", "id": 1, "symbols": ["*"]})).await;
    }
    let ports: Vec<u16> = stuck.iter().map(|ws| local_port(ws.as_ref().unwrap())).collect();
    let started = Instant::now();

    // Watch the gateway's side of each stuck connection in the kernel: its send queue grows
    // with each write the kernel accepts, until it is full. `timeout` after the last one the
    // gateway decides to close, and has CLOSE_GRACE to deliver the close frame. A stuck client
    // that read before that decision would not be stuck; one that starts after the grace finds
    // the socket gone. So each starts reading early in its grace, leaving it time to read the
    // backlog in front of the close frame.
    let gw_port = gw.addr.port();
    let mut max_tx = [0u64; STUCK];
    let mut last_write: Vec<Option<Instant>> = vec![None; STUCK];
    let mut closes = Vec::new();
    while closes.len() < STUCK {
        assert!(started.elapsed() < Duration::from_secs(10), "not all stuck: {last_write:?}");
        let sockets = tcp_sockets();
        let now = Instant::now();
        for (i, &port) in ports.iter().enumerate() {
            let Some(ws) = stuck[i].take() else { continue };
            let tx = sockets.get(&(gw_port, port)).map_or(0, |q| q.tx);
            if tx > max_tx[i] || (tx > 0 && last_write[i].is_none()) {
                last_write[i] = Some(now);
            }
            max_tx[i] = max_tx[i].max(tx);
            match last_write[i] {
                Some(since) if now >= since + timeout + CLOSE_GRACE / 5 => {
                    let mut ws = ws;
                    let read_at = now - since;
                    closes.push(tokio::spawn(async move {
                        let close = close_frame(&mut ws, STEP).await;
                        (i, read_at, Instant::now() - since, close)
                    }));
                }
                _ => stuck[i] = Some(ws),
            }
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Getting the close frame at all proves it came within the timeout and its grace: after
    // that the gateway drops the socket, and what it still held with it.
    for close in closes {
        let (i, read_at, closed_at, close) = close.await.unwrap();
        assert_eq!(
            close,
            Some((4008, "slow consumer".to_string())),
            "stuck client {i}: read from {read_at:?} after its socket's last write, until {closed_at:?}"
        );
    }
    wait_metric(
        &gw,
        r#"gateway_sessions_closed_total{reason="slow_consumer"}"#,
        STUCK as f64,
        STEP,
    )
    .await;
    assert_eq!(gw.metric("gateway_slow_consumer_closes_total").await, STUCK as f64);

    // The gateway's buffered bytes per stuck client stayed bounded. In the kernel: the socket's
    // send queue is capped by SO_SNDBUF, which Linux doubles (2 × send_buffer_bytes); Linux
    // checks the cap before it starts a segment, not per byte, so the last segment may take up
    // to half the peer's largest window more: at most the stuck client's receive buffer. In
    // user space, by construction: what the WebSocket write buffer holds (write_budget_bytes
    // plus one frame) and one pending slot per subscribed symbol, never a queue of messages.
    let bound = 2 * send_buffer as u64 + u64::from(STUCK_RECV_BUFFER);
    for (i, &tx) in max_tx.iter().enumerate() {
        assert!(tx > 0, "stuck client {i}: its send queue never filled, nothing was measured");
        assert!(tx <= bound, "stuck client {i}: {tx} bytes queued in the kernel, over {bound}");
    }

    // Meanwhile the readers were served as usual: every update (they keep up, so nothing is
    // conflated for them), no quote ever near the slow-client timeout in age (a writer waiting
    // on a stuck socket would have made them wait that long), and they still get quotes now.
    let checked = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.metric("gateway_sessions_active").await, READERS as f64);
    stop.store(true, Ordering::Relaxed);
    for (i, reader) in readers.into_iter().enumerate() {
        let stats = reader.await.unwrap();
        assert_eq!(stats.ended, None, "reader {i} ended");
        assert!(stats.quotes > 0, "reader {i} got no quotes");
        assert_eq!(stats.missed, 0, "reader {i} keeps up, yet missed updates");
        assert!(
            stats.max_age < timeout / 2,
            "reader {i}: a quote {:?} old (timeout {timeout:?})",
            stats.max_age
        );
        assert!(
            stats.last_quote.is_some_and(|t| t >= checked),
            "reader {i} stopped getting quotes"
        );
    }
}

#[tokio::test]
async fn a_reader_at_5_messages_per_second_gets_latest_quotes_with_seq_jumps_and_catches_up() {
    let _serial = SERIAL.lock().await;
    // Everything that can be committed to this client at once is small: the gateway's kernel
    // send queue (SO_SNDBUF 1024, which Linux raises to its minimum, 4608), its WebSocket write
    // buffer (the 512-byte write budget and one frame), the client's receive buffer (1024,
    // raised to 2304) and its read chunk (256). Under 8.5 KiB: about 30 quotes, 6 s of reading
    // at 5 a second. The kernel's minimums make this test take that long.
    let (send_buffer, write_budget, recv_buffer, read_chunk) = (1024, 512, 1024, 256);
    let committed_max = 4608 + write_budget + 512 + 2304 + read_chunk;
    let gw = TestGateway::start_with(|c| {
        c.sim_symbols = 3;
        c.sim_rate = 60;
        c.send_buffer_bytes = send_buffer;
        c.write_budget_bytes = write_budget;
    })
    .await;
    let symbols = ["AAPL", "MSFT", "NVDA"];
    let small = ClientOptions {
        recv_buffer: Some(recv_buffer),
        read_buffer: Some(read_chunk),
        ..Default::default()
    };
    let (mut ws, _) = connect_client(gw.addr, small).await;
    let mut order = OrderCheck::default();
    let ack = subscribe(&mut ws, 1, &symbols).await;
    assert_eq!(ack["symbols"], json!(symbols));

    // Slow: one message every 200 ms. First it drains what was committed before it fell
    // behind: consecutive seqs, several seconds of them. From the first seq jump on it reads
    // conflated quotes, and their age no longer grows: over the next 5 s a backlog would add
    // 4.6 s to it (55 of the 60 updates a second pile up), conflation nothing.
    let started = Instant::now();
    let mut after_jump = Vec::new();
    while after_jump.len() < 25 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no seq jump after {:?}",
            started.elapsed()
        );
        let m = recv(&mut ws).await;
        order.observe(&m);
        if m["type"] == "quote" && order.jumps > 0 {
            after_jump
                .push(Duration::from_nanos(wall_ns().saturating_sub(m["ts"].as_u64().unwrap())));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = after_jump[..10].iter().max().unwrap();
    let then = after_jump[10..].iter().max().unwrap();
    assert!(
        *then <= *first + Duration::from_secs(1),
        "quote age grew from {first:?} to {then:?}: {after_jump:?}"
    );
    assert!(gw.metric("gateway_conflated_updates_total").await > 0.0);

    // Fast again: it catches up with `/snapshot`, reading no more than what can be committed
    // (a backlog would hold 55 quotes for every second spent slow).
    let snapshot = gw.get(&format!("/snapshot?symbols={}", symbols.join(","))).await.json();
    let target: HashMap<String, u64> = snapshot
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["symbol"].as_str().unwrap().to_string(), q["seq"].as_u64().unwrap()))
        .collect();
    let mut bytes = 0;
    while !symbols.iter().all(|s| order.last_seq(s) >= Some(target[*s])) {
        let m = recv(&mut ws).await;
        bytes += m.to_string().len(); // re-encoded: about the size it had on the wire
        order.observe(&m);
        assert!(
            bytes <= committed_max + 3 * 512,
            "{bytes} bytes read and not caught up with {target:?}"
        );
    }
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_4000_heartbeat_timeout() {
    let _serial = SERIAL.lock().await;
    let idle = Duration::from_millis(500);
    let gw = TestGateway::start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = idle.as_millis() as u64;
    })
    .await;
    let (mut ws, _) = gw.client().await;
    // Not reading, it answers no Ping. Read again after the timeout, within the close grace.
    tokio::time::sleep(idle + CLOSE_GRACE / 2).await;
    assert_eq!(close_frame(&mut ws, STEP).await, Some((4000, "heartbeat timeout".to_string())));
    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="heartbeat_timeout"}"#, 1.0, STEP)
        .await;
    assert_eq!(gw.metric("gateway_heartbeat_timeouts_total").await, 1.0);
}

/// A raw WebSocket client: the handshake by hand, then frames read off the socket without any
/// automatic answer (a tungstenite client answers Pings by itself).
async fn raw_session(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

/// Writes one masked text frame (a client's frames are masked; an all-zero key keeps the
/// payload as is).
async fn raw_send_text(stream: &mut TcpStream, text: &str) {
    assert!(text.len() < 126);
    let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
    frame.extend_from_slice(text.as_bytes());
    stream.write_all(&frame).await.unwrap();
}

/// Reads one server frame: (opcode, payload); `None` at the end of the stream.
async fn raw_read_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.ok()?;
    let len = match head[1] & 0x7f {
        126 => u64::from(stream.read_u16().await.ok()?),
        127 => stream.read_u64().await.ok()?,
        n => u64::from(n),
    };
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[0] & 0x0f, payload))
}

#[tokio::test]
async fn a_client_that_reads_but_never_answers_pings_is_closed_with_4000() {
    let _serial = SERIAL.lock().await;
    let idle = Duration::from_millis(600);
    let gw = TestGateway::start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = idle.as_millis() as u64;
        c.sim_symbols = 5;
        c.sim_rate = 200;
    })
    .await;
    let mut stream = raw_session(gw.addr).await;
    raw_send_text(&mut stream, r#"{"op":"subscribe","id":1,"symbols":["AAPL"]}"#).await;
    let sent = Instant::now();
    let (mut pings, mut quotes) = (0, 0);
    let close = loop {
        let frame =
            tokio::time::timeout(STEP, raw_read_frame(&mut stream)).await.expect("a frame in time");
        match frame.expect("a close frame before the end") {
            (0x9, _) => pings += 1,
            (0x1, text) => {
                quotes +=
                    u64::from(serde_json::from_slice::<Value>(&text).unwrap()["type"] == "quote")
            }
            (0x8, payload) => break payload,
            (opcode, _) => panic!("unexpected opcode {opcode}"),
        }
    };
    assert!(sent.elapsed() >= idle, "closed after {:?}, before the idle timeout", sent.elapsed());
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 4000);
    assert_eq!(&close[2..], b"heartbeat timeout");
    assert!(pings >= 1 && quotes >= 1, "{pings} pings, {quotes} quotes: it was reading");
    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="heartbeat_timeout"}"#, 1.0, STEP)
        .await;
}

#[tokio::test]
async fn pongs_alone_keep_a_quiet_session_open_and_heartbeats_reach_it() {
    let _serial = SERIAL.lock().await;
    let idle = Duration::from_millis(400);
    let gw = TestGateway::start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = idle.as_millis() as u64;
        c.heartbeat_ms = 200;
    })
    .await;
    let (mut ws, welcome) = gw.client().await;
    assert_eq!(welcome["heartbeat_ms"], 200);
    // Four idle timeouts without a request: only the client's automatic Pongs arrive.
    let quiet = idle * 4;
    let started = Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < quiet {
        let m = recv(&mut ws).await;
        assert_eq!(m["type"], "heartbeat", "{m}");
        heartbeats += 1;
    }
    assert!(heartbeats >= 4, "{heartbeats} heartbeats in {quiet:?} at heartbeat_ms 200");
    assert_eq!(ping(&mut ws, 1).await["id"], 1);
    assert_eq!(
        gw.metric(r#"gateway_sessions_closed_total{reason="heartbeat_timeout"}"#).await,
        0.0
    );
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn a_silent_client_with_a_full_socket_is_closed_at_the_idle_timeout() {
    let _serial = SERIAL.lock().await;
    // Nothing arrives from this client (it reads nothing, so it answers no Ping) and its socket
    // is full. The idle timeout is the shorter: the session ends with 4000 then, not with 4008
    // at the slow-client timeout.
    let gw = TestGateway::start_with(|c| {
        c.ping_interval_ms = 200;
        c.idle_timeout_ms = 800;
        c.slow_client_timeout_ms = 4_000;
        c.sim_symbols = 50;
        c.sim_rate = 500;
    })
    .await;
    let small =
        ClientOptions { recv_buffer: Some(4096), read_buffer: Some(4096), ..Default::default() };
    let (mut ws, _) = connect_client(gw.addr, small).await;
    send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["*"]})).await;
    let started = Instant::now();
    let (heartbeat, slow) = loop {
        let heartbeat =
            gw.metric(r#"gateway_sessions_closed_total{reason="heartbeat_timeout"}"#).await;
        let slow = gw.metric(r#"gateway_sessions_closed_total{reason="slow_consumer"}"#).await;
        if heartbeat + slow > 0.0 || started.elapsed() > Duration::from_secs(8) {
            break (heartbeat, slow);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((heartbeat, slow), (1.0, 0.0), "closed after {:?}", started.elapsed());
    drop(ws);
}

/// `send_lowat_bytes` (TCP_NOTSENT_LOWAT): what the kernel holds unsent for a client that
/// stopped reading stays near the low-water mark plus one write, instead of filling the send
/// buffer, since bytes in the kernel can no longer be conflated. Measured both ways on the same
/// load, so the test shows the setting is what makes the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_clients_unsent_bytes_stay_near_the_low_water_mark() {
    let _serial = SERIAL.lock().await;
    const WRITE_BUDGET: usize = 2048;
    const LOWAT: usize = 1024;
    async fn max_unsent(lowat: usize) -> u64 {
        let gw = TestGateway::start_with(|c| {
            c.send_buffer_bytes = 16 * 1024;
            c.write_budget_bytes = WRITE_BUDGET;
            c.send_lowat_bytes = lowat;
            c.slow_client_timeout_ms = 60_000;
            c.sim_symbols = 50;
            c.sim_rate = 500;
        })
        .await;
        let small = ClientOptions {
            recv_buffer: Some(2048),
            read_buffer: Some(2048),
            ..Default::default()
        };
        let (mut ws, _) = connect_client(gw.addr, small).await;
        send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["*"]})).await;
        let port = local_port(&ws);
        let mut max = 0;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            let tx = tcp_sockets().get(&(gw.addr.port(), port)).map_or(0, |q| q.tx);
            max = max.max(tx);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(ws);
        gw.stop().await;
        max
    }
    let with = max_unsent(LOWAT).await;
    let without = max_unsent(0).await;
    // The mark, one write that crossed it, and the frame that crossed the write budget.
    let bound = (LOWAT + WRITE_BUDGET + 1024) as u64;
    assert!(with > 0, "nothing was ever queued: the client was not stuck");
    assert!(with <= bound, "{with} bytes unsent with a {LOWAT}-byte mark, over {bound}");
    assert!(
        without > bound,
        "without the mark the send buffer fills ({without} bytes): the measurement must tell them apart"
    );
}
