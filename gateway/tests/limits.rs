//! Hard limits (issue 3, PROTOCOL.md sections 1, 2 and 4): each limit's error or close code, and
//! that the session, or the process, is otherwise unharmed afterwards. Every test runs a real
//! gateway in this process and speaks real WebSocket (or raw TCP) to it on 127.0.0.1.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for a close it expects.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Sends a WebSocket upgrade request for `/ws` over raw TCP (from `from`, default 127.0.0.1)
/// and reads the response head and body. For refusals, which answer before the upgrade.
async fn raw_upgrade(addr: SocketAddr, from: Option<Ipv4Addr>) -> HttpResponse {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip.into(), 0)).unwrap();
    }
    let mut stream = socket.connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        // The head, then the body its Content-Length announces (a 101 has neither).
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            if raw.len() >= end + 4 + length {
                return parse_response(&raw);
            }
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "connection closed mid-response: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&chunk[..n]);
    }
}

/// Asserts a refusal of the connection limits: 503 with a Retry-After in seconds.
fn assert_refused_with_503(response: &HttpResponse) {
    assert_eq!(response.status, 503, "{response:?}");
    let retry =
        response.header("Retry-After").unwrap_or_else(|| panic!("no Retry-After: {response:?}"));
    let seconds: u64 =
        retry.parse().unwrap_or_else(|_| panic!("Retry-After {retry:?} is not delta-seconds"));
    assert!(seconds >= 1, "Retry-After {seconds}");
}

/// A ping request padded with an unknown field to exactly `len` bytes.
fn padded_ping(id: u64, len: usize) -> String {
    let bare = json!({"op": "ping", "id": id, "pad": ""}).to_string();
    let text = json!({"op": "ping", "id": id, "pad": "x".repeat(len - bare.len())}).to_string();
    assert_eq!(text.len(), len);
    text
}

#[tokio::test]
async fn a_frame_over_max_message_bytes_closes_with_1009_and_a_frame_at_it_is_served() {
    let gw = TestGateway::start_with(|c| c.max_message_bytes = 1024).await;
    let (mut bystander, _) = gw.client().await;
    let (mut ws, _) = gw.client().await;
    // Exactly the limit is allowed: the request is answered.
    ws.send(Message::text(padded_ping(7, 1024))).await.unwrap();
    let (pong, before) = recv_until(&mut ws, |m| m["type"] == "pong").await;
    assert_eq!(pong["id"], 7);
    assert!(before.iter().all(|m| m["type"] == "heartbeat"), "{before:?}");
    // One byte more closes the session with 1009.
    ws.send(Message::text(padded_ping(8, 1025))).await.unwrap();
    assert_eq!(close_code(&mut ws, CLOSE_WAIT).await, Some(1009));
    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="message_too_big"}"#, 1.0, STEP).await;
    // Nobody else notices.
    assert_eq!(ping(&mut bystander, 1).await["id"], 1);
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

#[tokio::test]
async fn a_message_over_max_message_bytes_in_small_fragments_closes_with_1009() {
    let gw = TestGateway::start_with(|c| c.max_message_bytes = 1024).await;
    let (mut ws, _) = gw.client().await;
    // Two fragments of 600 bytes: each frame is under the limit, the message is not.
    let first = Frame::message(vec![b' '; 600], OpCode::Data(Data::Text), false);
    let last = Frame::message(vec![b' '; 600], OpCode::Data(Data::Continue), true);
    ws.send(Message::Frame(first)).await.unwrap();
    ws.send(Message::Frame(last)).await.unwrap();
    assert_eq!(close_code(&mut ws, CLOSE_WAIT).await, Some(1009));
    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="message_too_big"}"#, 1.0, STEP).await;
    a_new_client_gets_quotes(&gw, "MSFT").await;
}

#[tokio::test]
async fn a_request_flood_is_rate_limited_with_retry_after_then_closed_with_1008() {
    let rate = 10;
    let gw = TestGateway::start_with(|c| c.max_requests_per_sec = rate).await;
    let (mut bystander, _) = gw.client().await;
    let (mut ws, welcome) = gw.client().await;
    assert_eq!(welcome["limits"]["max_requests_per_sec"], rate);
    // A second's worth at once is allowed; the next request is not.
    for id in 1..=u64::from(rate) + 1 {
        ws.feed(Message::text(json!({"op": "ping", "id": id}).to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    for id in 1..=u64::from(rate) {
        let (pong, _) = recv_until(&mut ws, |m| m["type"] == "pong" || m["type"] == "error").await;
        assert_eq!((&pong["type"], &pong["id"]), (&json!("pong"), &json!(id)), "{pong}");
    }
    let (limited, _) = recv_until(&mut ws, |m| m["type"] != "heartbeat").await;
    assert_eq!(limited["type"], "error", "{limited}");
    assert_eq!(limited["code"], "rate_limited", "{limited}");
    assert_eq!(limited["id"], rate + 1, "{limited}");
    // The wait for the next allowed request: at most one request interval at the limit.
    let retry_after = limited["retry_after_ms"].as_u64().unwrap_or_else(|| panic!("{limited}"));
    assert!((1..=1000 / u64::from(rate)).contains(&retry_after), "{limited}");

    // The session is unharmed: after the wait, requests are answered again.
    tokio::time::sleep(Duration::from_millis(retry_after)).await;
    assert_eq!(ping(&mut ws, 100).await["id"], 100);

    // Sustained abuse closes the session with 1008: nothing but pongs and rate_limited first.
    for id in 1000..1100 {
        ws.feed(Message::text(json!({"op": "ping", "id": id}).to_string())).await.unwrap();
    }
    ws.flush().await.unwrap();
    let mut limited = 0;
    let code = loop {
        match tokio::time::timeout(CLOSE_WAIT, futures_util::StreamExt::next(&mut ws)).await {
            Err(_) => panic!("no close after a sustained flood"),
            Ok(Some(Ok(Message::Text(text)))) => {
                let m: Value = serde_json::from_str(&text).unwrap();
                match m["type"].as_str() {
                    Some("pong" | "heartbeat") => {}
                    Some("error") if m["code"] == "rate_limited" => limited += 1,
                    _ => panic!("unexpected {m}"),
                }
            }
            Ok(Some(Ok(Message::Close(frame)))) => break frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => panic!("connection failed before its close frame: {e}"),
            Ok(None) => panic!("connection ended without a close frame"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(limited >= 1, "closed before any rate_limited answer");
    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="policy"}"#, 1.0, STEP).await;
    // Limits are per session: another one is not limited by this one's flood.
    assert_eq!(ping(&mut bystander, 1).await["id"], 1);
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

#[tokio::test]
async fn a_rate_limited_subscribe_changes_nothing() {
    let gw = TestGateway::start_with(|c| {
        c.max_requests_per_sec = 2;
        c.sim_symbols = 5;
        c.sim_rate = 500;
    })
    .await;
    let (mut ws, _) = gw.client().await;
    assert_eq!(ping(&mut ws, 1).await["id"], 1);
    assert_eq!(ping(&mut ws, 2).await["id"], 2);
    send(&mut ws, json!({"op": "subscribe", "id": 3, "symbols": ["AAPL"]})).await;
    let (limited, _) = recv_until(&mut ws, |m| m["type"] != "heartbeat").await;
    assert_eq!(
        (&limited["type"], &limited["code"], &limited["id"]),
        (&json!("error"), &json!("rate_limited"), &json!(3))
    );
    let retry_after = limited["retry_after_ms"].as_u64().unwrap_or_else(|| panic!("{limited}"));
    tokio::time::sleep(Duration::from_millis(retry_after)).await;
    let (pong, before) = {
        send(&mut ws, json!({"op": "ping", "id": 4})).await;
        recv_until(&mut ws, |m| m["type"] == "pong").await
    };
    assert_eq!(pong["id"], 4);
    assert!(before.iter().all(|m| m["type"] == "heartbeat"), "{before:?}");
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 0.0);
    // AAPL, the hottest of 5 symbols at 500 updates/s, would have sent something by now.
    if let Some(m) = recv_within(&mut ws, Duration::from_millis(500)).await {
        assert_eq!(m["type"], "heartbeat", "a rejected subscribe delivered {m}");
    }
}

#[tokio::test]
async fn too_many_subscriptions_rejects_the_whole_request_and_changes_nothing() {
    let gw = TestGateway::start_with(|c| {
        c.max_subscriptions = 3;
        c.sim_symbols = 8;
        c.sim_rate = 1000;
    })
    .await;
    let (mut ws, welcome) = gw.client().await;
    assert_eq!(welcome["limits"]["max_subscriptions"], 3);
    let ack = subscribe(&mut ws, 1, &["AAPL", "MSFT"]).await;
    assert_eq!(ack["symbols"], json!(["AAPL", "MSFT"]));

    // Two more would make 4: the request is rejected whole, NVDA is not taken alone.
    send(&mut ws, json!({"op": "subscribe", "id": 2, "symbols": ["NVDA", "AMZN"]})).await;
    let (error, before) = recv_until(&mut ws, |m| m["type"] == "error" || m["type"] == "ack").await;
    assert_eq!(
        (&error["type"], &error["code"], &error["id"]),
        (&json!("error"), &json!("too_many_subscriptions"), &json!(2)),
        "{error}"
    );
    // Every symbol: rejected too.
    send(&mut ws, json!({"op": "subscribe", "id": 3, "symbols": ["*"]})).await;
    let (error, mut more) =
        recv_until(&mut ws, |m| m["type"] == "error" || m["type"] == "ack").await;
    assert_eq!(
        (&error["type"], &error["code"], &error["id"]),
        (&json!("error"), &json!("too_many_subscriptions"), &json!(3)),
        "{error}"
    );
    // Nothing changed: still exactly AAPL and MSFT, for the gateway and on the wire.
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 2.0);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
    while let Some(m) = recv_within(&mut ws, deadline - tokio::time::Instant::now()).await {
        more.push(m);
    }
    let delivered: BTreeSet<&str> =
        before.iter().chain(&more).filter_map(|m| m["symbol"].as_str()).collect();
    assert!(delivered.is_subset(&BTreeSet::from(["AAPL", "MSFT"])), "{delivered:?}");
    assert!(!delivered.is_empty(), "the existing subscriptions stopped");

    // Up to the limit is fine, and re-subscribing counts nothing twice.
    let ack = subscribe(&mut ws, 4, &["AAPL", "NVDA"]).await;
    assert_eq!(ack["symbols"], json!(["AAPL", "NVDA"]));
    send(&mut ws, json!({"op": "subscribe", "id": 5, "symbols": ["AMZN"]})).await;
    let (error, _) = recv_until(&mut ws, |m| m["type"] == "error" || m["type"] == "ack").await;
    assert_eq!(
        (&error["code"], &error["id"]),
        (&json!("too_many_subscriptions"), &json!(5)),
        "{error}"
    );
    // A freed place can be taken.
    send(&mut ws, json!({"op": "unsubscribe", "id": 6, "symbols": ["MSFT"]})).await;
    recv_until(&mut ws, |m| m["type"] == "ack" && m["id"] == 6).await;
    let ack = subscribe(&mut ws, 7, &["AMZN"]).await;
    assert_eq!(ack["symbols"], json!(["AMZN"]));
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 3.0);
    assert_eq!(
        gw.metric(r#"gateway_request_errors_total{code="too_many_subscriptions"}"#).await,
        3.0
    );
}

#[tokio::test]
async fn bad_requests_past_the_error_budget_close_with_1008() {
    let gw = TestGateway::start_with(|c| c.error_budget = 5).await;
    let (mut ws, _) = gw.client().await;
    let bad: [(Message, Value); 5] = [
        (Message::text("not json"), Value::Null),
        (Message::text("[1,2]"), Value::Null),
        (Message::text(r#"{"op":"dance","id":3}"#), json!(3)),
        (Message::text(r#"{"id":"four"}"#), json!("four")),
        (Message::binary(br#"{"op":"ping","id":5}"#.to_vec()), Value::Null),
    ];
    for (message, id) in bad {
        ws.send(message).await.unwrap();
        let (error, _) = recv_until(&mut ws, |m| m["type"] != "heartbeat").await;
        assert_eq!(
            (&error["type"], &error["code"]),
            (&json!("error"), &json!("bad_request")),
            "{error}"
        );
        assert_eq!(error["id"], id, "{error}");
        assert!(error["message"].as_str().is_some_and(|s| !s.is_empty()), "{error}");
    }
    // Within the budget the session is unharmed.
    assert_eq!(ping(&mut ws, 100).await["id"], 100);
    // One more spends it: answered, then closed with 1008.
    send_text(&mut ws, "{").await;
    let (error, _) = recv_until(&mut ws, |m| m["type"] != "heartbeat").await;
    assert_eq!(error["code"], "bad_request", "{error}");
    assert_eq!(close_code(&mut ws, CLOSE_WAIT).await, Some(1008));
    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="policy"}"#, 1.0, STEP).await;
    assert_eq!(gw.metric(r#"gateway_request_errors_total{code="bad_request"}"#).await, 6.0);
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

#[tokio::test]
async fn unknown_symbol_floods_spend_the_error_budget() {
    let gw = TestGateway::start_with(|c| c.error_budget = 2).await;
    let (mut ws, _) = gw.client().await;
    // Each is answered, the one that overflows the budget too; then the session closes.
    for id in 1..=3u64 {
        send(&mut ws, json!({"op": "subscribe", "id": id, "symbols": ["NO-SUCH"]})).await;
        let (error, _) = recv_until(&mut ws, |m| m["type"] != "heartbeat").await;
        assert_eq!(
            (&error["type"], &error["code"], &error["id"], &error["symbols"]),
            (&json!("error"), &json!("unknown_symbol"), &json!(id), &json!(["NO-SUCH"])),
            "{error}"
        );
    }
    assert_eq!(close_code(&mut ws, STEP).await, Some(1008));
    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="policy"}"#, 1.0, STEP).await;
}

#[tokio::test]
async fn at_the_connection_limit_an_upgrade_gets_503_with_retry_after_before_the_upgrade() {
    let gw = TestGateway::start_with(|c| c.max_connections = 2).await;
    let (mut a, _) = gw.client().await;
    let (mut b, _) = gw.client().await;
    let refused = raw_upgrade(gw.addr, None).await;
    assert_refused_with_503(&refused);
    assert!(refused.header("Sec-WebSocket-Accept").is_none(), "{refused:?}");
    assert_eq!(gw.metric(r#"gateway_handshake_rejections_total{status="503"}"#).await, 1.0);
    assert_eq!(gw.metric("gateway_sessions_active").await, 2.0);
    assert_eq!(gw.metric("gateway_max_connections").await, 2.0);
    // Plain HTTP is still served, and the open sessions are unharmed.
    assert_eq!(gw.get("/healthz").await.status, 200);
    assert_eq!(ping(&mut a, 1).await["id"], 1);
    assert_eq!(ping(&mut b, 2).await["id"], 2);
    // A place frees when a session ends.
    a.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.unwrap();
    assert_eq!(close_code(&mut a, CLOSE_WAIT).await, Some(1000));
    wait_metric(&gw, "gateway_sessions_active", 1.0, STEP).await;
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

#[tokio::test]
async fn the_per_address_cap_refuses_a_third_session_from_one_address_only() {
    let gw = TestGateway::start_with(|c| c.max_connections_per_ip = 2).await;
    let (mut a, _) = gw.client().await;
    let (_b, _) = gw.client().await;
    assert_refused_with_503(&raw_upgrade(gw.addr, None).await);
    assert_eq!(gw.metric(r#"gateway_handshake_rejections_total{status="503"}"#).await, 1.0);
    // Another address is not affected.
    let other = ClientOptions { from: Some(Ipv4Addr::new(127, 0, 0, 2)), ..Default::default() };
    let (mut c, _) = connect_client(gw.addr, other).await;
    assert_eq!(ping(&mut c, 1).await["id"], 1);
    assert_eq!(ping(&mut a, 2).await["id"], 2);
    assert_eq!(gw.metric("gateway_sessions_active").await, 3.0);
    // A place freed on the first address can be taken again.
    a.close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() })).await.unwrap();
    assert_eq!(close_code(&mut a, CLOSE_WAIT).await, Some(1000));
    wait_metric(&gw, "gateway_sessions_active", 2.0, STEP).await;
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

#[tokio::test]
async fn the_per_address_cap_counts_ipv6_clients_too() {
    // On ::1, the only IPv6 address a loopback test can connect from: every client here is in
    // one /64 anyway. That distinct addresses of one /64 share a count, and that other /64s
    // do not, is shown by the unit test of `state::per_ip_key` (no second IPv6 source address
    // exists on loopback without changing the machine's network configuration).
    let mut config = test_config();
    config.max_connections_per_ip = 2;
    let feed = gateway::feed::from_config(&config).expect("the simulated feed");
    let gw = TestGateway::start_at("[::1]:0", config, feed).await;
    assert!(gw.addr.is_ipv6(), "{}", gw.addr);
    let (mut a, _) = gw.client().await;
    let (_b, _) = gw.client().await;
    let refused = http_get(gw.addr, "/ws", &UPGRADE_HEADERS).await;
    assert_refused_with_503(&refused);
    assert!(refused.body.contains("per client address"), "{refused:?}");
    assert_eq!(ping(&mut a, 1).await["id"], 1);
    a.close(None).await.unwrap();
    wait_metric(&gw, "gateway_sessions_active", 1.0, STEP).await;
    let (mut c, _) = gw.client().await;
    assert_eq!(ping(&mut c, 2).await["id"], 2);
}

/// The headers of a WebSocket upgrade request, for [`http_get`].
const UPGRADE_HEADERS: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

/// The start of an upgrade request that never ends.
const HALF_HEAD: &[u8] = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n";

/// Everything the gateway sends on a connection that sends nothing, until it closes it.
async fn answer_unasked(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut got = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut got))
        .await
        .expect("an answer and a close in time")
        .expect("read");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn past_max_pending_connections_a_connection_is_refused_at_once_with_503() {
    // One shard, so that connections are taken in the order they were made.
    let gw = TestGateway::start_with(|c| {
        c.shards = 1;
        c.max_pending_connections = 3;
        c.handshake_timeout_ms = 20_000;
    })
    .await;
    // Sessions are not pending: three of them take no pending place.
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(gw.client().await.0);
    }
    // Three connections that never finish their request fill the pending places.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
        stream.write_all(HALF_HEAD).await.expect("send");
        stalled.push(stream);
    }
    // The next one is answered at once, before it sends a byte, and closed: it holds nothing.
    let refused = answer_unasked(gw.addr).await;
    let response = parse_response(refused.as_bytes());
    assert_eq!(response.status, 503, "{refused}");
    assert_eq!(response.header("Retry-After"), Some("1"), "{refused}");
    assert!(response.body.contains("still in their handshake"), "{refused}");
    // The stalled ones are still waiting (not dropped to make room), and the sessions are served.
    for stream in &mut stalled {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte)).await;
        assert!(read.is_err(), "a stalled connection was answered or closed: {read:?}");
    }
    for (i, ws) in sessions.iter_mut().enumerate() {
        assert_eq!(ping(ws, i as u64).await["id"], i as u64);
    }
    // One stalled connection goes: its place is free again.
    drop(stalled.pop());
    let deadline = tokio::time::Instant::now() + STEP;
    while gw.get("/healthz").await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the freed pending place is not reused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gw.metric(r#"gateway_handshake_rejections_total{status="503"}"#).await, 1.0);
}

/// Sends `request` and reads the whole answer (the gateway closes after it).
async fn raw_request(addr: SocketAddr, request: &[u8]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut got = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut got))
        .await
        .expect("an answer in time")
        .expect("read");
    parse_response(&got)
}

/// A `GET /healthz` head of exactly `len` bytes, padded with a header, or in its URL.
fn head_of(len: usize, in_url: bool) -> Vec<u8> {
    let bare = "GET /healthz?p= HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: \r\n\r\n";
    let pad = "p".repeat(len - bare.len());
    let (url_pad, header_pad) = if in_url { (pad.as_str(), "") } else { ("", pad.as_str()) };
    let head = format!(
        "GET /healthz?p={url_pad} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {header_pad}\r\n\r\n"
    );
    assert_eq!(head.len(), len);
    head.into_bytes()
}

#[tokio::test]
async fn a_request_head_over_max_request_head_bytes_gets_414_or_431_and_one_at_it_is_served() {
    let max = 1_024;
    let gw = TestGateway::start_with(|c| c.max_request_head_bytes = max as u32).await;
    for in_url in [false, true] {
        let at = raw_request(gw.addr, &head_of(max, in_url)).await;
        assert_eq!(at.status, 200, "{max} bytes (padded in the URL: {in_url}): {at:?}");
    }
    let over = raw_request(gw.addr, &head_of(max + 1, false)).await;
    assert_eq!(over.status, 431, "{over:?}");
    assert!(over.body.contains("request head too large"), "{over:?}");
    // A request line that has not ended by the cap is a long URL.
    let mut long_url = b"GET /snapshot?symbols=".to_vec();
    long_url.resize(max + 1, b'A');
    let over = raw_request(gw.addr, &long_url).await;
    assert_eq!(over.status, 414, "{over:?}");
    assert!(over.body.contains("request URL too long"), "{over:?}");
    // The default fits a /snapshot URL naming max_subscriptions symbols.
    let defaults = TestGateway::start().await;
    let names: Vec<String> = (0..1_000).map(|i| format!("S{i:04}")).collect();
    let answer = defaults.get(&format!("/snapshot?symbols={}", names.join(","))).await;
    assert_eq!(answer.status, 404, "a head of 1,000 names is read whole: {answer:?}");
}

#[tokio::test]
async fn snapshot_names_are_deduplicated_then_capped_at_max_subscriptions() {
    let gw = TestGateway::start_with(|c| c.max_subscriptions = 3).await;
    // Each name once, in the order first named.
    let r = gw.get("/snapshot?symbols=MSFT,AAPL,MSFT,%20AAPL,,NVDA,AAPL").await;
    assert_eq!(r.status, 200, "{r:?}");
    let symbols: Vec<Value> =
        r.json().as_array().unwrap().iter().map(|q| q["symbol"].clone()).collect();
    assert_eq!(symbols, [json!("MSFT"), json!("AAPL"), json!("NVDA")]);
    // 2,000 repeats of one name are one name.
    let r = gw.get(&format!("/snapshot?symbols={}", vec!["AAPL"; 2_000].join(","))).await;
    assert_eq!((r.status, r.json().as_array().map(Vec::len)), (200, Some(1)), "{r:?}");
    // One distinct name more than max_subscriptions: 400, before any name is looked up (these
    // do not exist, and the answer is not 404).
    let r = gw.get("/snapshot?symbols=AAPL,NO-1,NO-2,NO-3").await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("more than 3 distinct symbols"), "{r:?}");
    // At the cap, unknown names are looked up, and are 404.
    let r = gw.get("/snapshot?symbols=AAPL,NO-1,NO-2").await;
    assert_eq!(r.status, 404, "{r:?}");
}

#[tokio::test]
async fn an_unfinished_handshake_takes_no_session_place() {
    let gw = TestGateway::start_with(|c| {
        c.max_connections = 1;
        c.handshake_timeout_ms = 2_000;
    })
    .await;
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await.unwrap();
    // The one place is still free for a client that completes its upgrade.
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

/// Reads from `stream` until the gateway closes it; returns what arrived and when it closed.
async fn read_until_dropped(
    stream: &mut TcpStream,
    trickle: bool,
    wait: Duration,
) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return (got, Instant::now()),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            },
            _ = tick.tick(), if trickle => {
                // A slowloris: one more header byte now and then, never the end of the head.
                let _ = stream.write_all(b"x").await;
            }
            () = tokio::time::sleep_until(deadline) => panic!("connection still open after {wait:?}"),
        }
    }
}

#[tokio::test]
async fn a_partial_request_is_dropped_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(400);
    let gw = TestGateway::start_with(|c| c.handshake_timeout_ms = timeout.as_millis() as u64).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nX-Slow: ")
        .await
        .unwrap();
    let (got, closed) = read_until_dropped(&mut stream, true, timeout + CLOSE_WAIT).await;
    assert!(closed - started >= timeout, "dropped after {:?}", closed - started);
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains(" 101 "), "upgraded: {got}");
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

#[tokio::test]
async fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    let timeout = Duration::from_millis(400);
    let gw = TestGateway::start_with(|c| c.handshake_timeout_ms = timeout.as_millis() as u64).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let (got, closed) = read_until_dropped(&mut stream, false, timeout + CLOSE_WAIT).await;
    assert!(closed - started >= timeout, "dropped after {:?}", closed - started);
    assert!(!String::from_utf8_lossy(&got).contains(" 101 "));
    a_new_client_gets_quotes(&gw, "AAPL").await;
}

// ---- Property test: arbitrary input to a live session.

/// One frame a client may send.
#[derive(Debug, Clone)]
enum Input {
    Text(String),
    Binary(Vec<u8>),
}

/// Any JSON value, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like requests: the contract's fields, with valid and invalid values.
fn request_like() -> impl Strategy<Value = Value> {
    let op = prop_oneof![
        3 => Just(json!("subscribe")),
        2 => Just(json!("unsubscribe")),
        2 => Just(json!("ping")),
        1 => Just(json!("Ping")),
        1 => json_value(),
    ];
    let id = prop_oneof![
        2 => any::<u64>().prop_map(Value::from),
        3 => (0u64..100).prop_map(Value::from),
        3 => "[a-z0-9-]{0,64}".prop_map(Value::String),
        1 => "[a-z0-9-]{65,70}".prop_map(Value::String),
        1 => ".{0,70}".prop_map(Value::String),
        1 => json_value(),
    ];
    let name = prop_oneof![
        4 => Just("AAPL".to_string()),
        4 => Just("MSFT".to_string()),
        2 => Just("NO-SUCH".to_string()),
        3 => "[A-Z]{1,5}",
        1 => Just("*".to_string()),
        1 => Just(String::new()),
        1 => ".{0,6}",
    ];
    let symbols = prop_oneof![
        6 => prop::collection::vec(name.prop_map(Value::String), 1..4).prop_map(Value::Array),
        1 => Just(json!(["*"])),
        1 => Just(json!([])),
        1 => json_value(),
    ];
    let snapshot = prop_oneof![4 => any::<bool>().prop_map(Value::Bool), 1 => json_value()];
    let throttle = prop_oneof![
        4 => (0u64..=60_000).prop_map(Value::from),
        1 => (60_001u64..200_000).prop_map(Value::from),
        1 => (-5i64..0).prop_map(Value::from),
        1 => json_value(),
    ];
    (
        prop::option::weighted(0.9, op),
        prop::option::weighted(0.6, id),
        prop::option::weighted(0.8, symbols),
        prop::option::weighted(0.3, snapshot),
        prop::option::weighted(0.3, throttle),
        prop::option::weighted(0.2, json_value()),
    )
        .prop_map(|(op, id, symbols, snapshot, throttle, extra)| {
            let mut object = serde_json::Map::new();
            for (key, value) in [
                ("op", op),
                ("id", id),
                ("symbols", symbols),
                ("snapshot", snapshot),
                ("throttle_ms", throttle),
                ("extra", extra),
            ] {
                if let Some(value) = value {
                    object.insert(key.to_string(), value);
                }
            }
            Value::Object(object)
        })
}

fn any_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        12 => request_like().prop_map(|v| Input::Text(v.to_string())),
        2 => json_value().prop_map(|v| Input::Text(v.to_string())),
        2 => any::<String>().prop_map(Input::Text),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(|b| Input::Text(String::from_utf8_lossy(&b).into_owned())),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Input::Binary),
    ]
}

/// What the contract says a frame must get.
#[derive(Debug)]
enum Expect {
    /// Exactly one `error` of code `bad_request`, echoing this id (None: no `id` field).
    BadRequest(Option<Value>),
    /// The answer to a valid request.
    Valid(ValidRequest),
    /// Where the contract leaves the choice to the project: either of the two.
    Either(Option<Value>, ValidRequest),
}

#[derive(Debug, Clone)]
enum ValidRequest {
    Ping(Option<Value>),
    /// `None`: `["*"]`.
    Subscribe(Option<Value>, Option<Vec<String>>),
    Unsubscribe(Option<Value>),
}

/// A valid `id` per section 2: an unsigned integer, or a string of at most 64 characters.
/// `Err`: not valid.
fn valid_id(v: &Value) -> Result<Value, ()> {
    match v {
        Value::Number(n) if n.is_u64() => Ok(v.clone()),
        Value::String(s) if s.chars().count() <= 64 => Ok(v.clone()),
        _ => Err(()),
    }
}

/// The contract's answer to `input` (sections 2 and 3).
fn expect(input: &Input) -> Expect {
    let Input::Text(text) = input else {
        // Frames are UTF-8 text, one JSON object each (section 1): a binary frame is not a request.
        return Expect::BadRequest(None);
    };
    let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(text) else {
        return Expect::BadRequest(None);
    };
    let id = match fields.get("id").map(valid_id) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => return Expect::BadRequest(None),
    };
    let bad = Expect::BadRequest(id.clone());
    let Some(Value::String(op)) = fields.get("op") else { return bad };
    if op == "ping" {
        return Expect::Valid(ValidRequest::Ping(id));
    }
    if op != "subscribe" && op != "unsubscribe" {
        return bad;
    }
    // symbols: 1 or more symbol names, or ["*"].
    let Some(Value::Array(items)) = fields.get("symbols") else { return bad };
    let Some(names) =
        items.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<String>>>()
    else {
        return bad;
    };
    if names.is_empty() {
        return bad;
    }
    // Left open by the contract: an empty name; "*" beside other names, or repeated (rejected,
    // or taken as unknown symbols, or as every symbol).
    let mut unique: Vec<String> = Vec::new();
    for name in &names {
        if !unique.contains(name) {
            unique.push(name.clone());
        }
    }
    let star = names.iter().any(|n| n == "*");
    let ambiguous = unique.iter().any(String::is_empty) || (star && names.len() > 1);
    let symbols = (unique != ["*"]).then_some(unique);
    let request = if op == "subscribe" {
        if fields.get("snapshot").is_some_and(|v| !v.is_boolean()) {
            return bad;
        }
        match fields.get("throttle_ms") {
            None => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|ms| ms <= 60_000) => {}
            // 5.0: an integer written as a float; either answer will do.
            Some(Value::Number(n))
                if n.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && (0.0..=60_000.0).contains(&f)) =>
            {
                return Expect::Either(id.clone(), ValidRequest::Subscribe(id, symbols));
            }
            Some(_) => return bad,
        }
        ValidRequest::Subscribe(id.clone(), symbols)
    } else {
        ValidRequest::Unsubscribe(id.clone())
    };
    if ambiguous {
        Expect::Either(id, request)
    } else {
        Expect::Valid(request)
    }
}

/// Checks `answers` (the acks, errors and pongs the input caused) against `expect`.
fn check(expect: &Expect, answers: &[Value], known: &HashSet<String>) -> Result<(), String> {
    let as_bad_request = |id: &Option<Value>| -> Result<(), String> {
        match answers {
            [one] if one["type"] == "error" && one["code"] == "bad_request" => {
                if one.get("id") != id.as_ref() {
                    return Err(format!(
                        "bad_request with id {:?}, expected {id:?}",
                        one.get("id")
                    ));
                }
                if !one["message"].is_string() {
                    return Err("bad_request without a message".into());
                }
                Ok(())
            }
            _ => Err(format!("expected one bad_request, got {answers:?}")),
        }
    };
    let as_valid = |request: &ValidRequest| -> Result<(), String> {
        let id_is = |m: &Value, id: &Option<Value>| m.get("id") == id.as_ref();
        match request {
            ValidRequest::Ping(id) => match answers {
                [pong] if pong["type"] == "pong" && id_is(pong, id) && pong["ts"].is_u64() => {
                    Ok(())
                }
                _ => Err(format!("expected a pong with id {id:?}, got {answers:?}")),
            },
            ValidRequest::Subscribe(id, symbols) => {
                let (ack_symbols, unknown): (Option<Vec<String>>, Vec<String>) = match symbols {
                    None => (Some(vec!["*".into()]), Vec::new()),
                    Some(names) => {
                        let mut seen = HashSet::new();
                        let unique: Vec<String> =
                            names.iter().filter(|n| seen.insert(n.as_str())).cloned().collect();
                        let (k, u): (Vec<String>, Vec<String>) =
                            unique.into_iter().partition(|n| known.contains(n));
                        ((!k.is_empty()).then_some(k), u)
                    }
                };
                let mut rest = answers.iter();
                if let Some(expected) = &ack_symbols {
                    let ack = rest.next().ok_or("no ack")?;
                    let got: BTreeSet<&str> = ack["symbols"]
                        .as_array()
                        .ok_or("ack without symbols")?
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    let want: BTreeSet<&str> = expected.iter().map(String::as_str).collect();
                    let all_listed =
                        symbols.is_none() && got == known.iter().map(String::as_str).collect();
                    if ack["type"] != "ack"
                        || ack["op"] != "subscribe"
                        || !id_is(ack, id)
                        || (got != want && !all_listed)
                    {
                        return Err(format!(
                            "expected an ack of {expected:?} with id {id:?}, got {answers:?}"
                        ));
                    }
                }
                if !unknown.is_empty() {
                    let error = rest.next().ok_or("no unknown_symbol error")?;
                    let got: BTreeSet<&str> = error["symbols"]
                        .as_array()
                        .ok_or("error without symbols")?
                        .iter()
                        .filter_map(Value::as_str)
                        .collect();
                    let want: BTreeSet<&str> = unknown.iter().map(String::as_str).collect();
                    if error["type"] != "error"
                        || error["code"] != "unknown_symbol"
                        || !id_is(error, id)
                        || got != want
                    {
                        return Err(format!(
                            "expected unknown_symbol {unknown:?} with id {id:?}, got {answers:?}"
                        ));
                    }
                }
                match rest.next() {
                    None => Ok(()),
                    Some(extra) => Err(format!("unexpected {extra} in {answers:?}")),
                }
            }
            ValidRequest::Unsubscribe(id) => {
                // Unsubscribing what is not subscribed is not an error: one ack.
                match answers {
                    [ack]
                        if ack["type"] == "ack" && ack["op"] == "unsubscribe" && id_is(ack, id) =>
                    {
                        Ok(())
                    }
                    _ => {
                        Err(format!("expected an unsubscribe ack with id {id:?}, got {answers:?}"))
                    }
                }
            }
        }
    };
    match expect {
        Expect::BadRequest(id) => as_bad_request(id),
        Expect::Valid(request) => as_valid(request),
        Expect::Either(id, request) => as_valid(request).or_else(|valid| {
            as_bad_request(id).map_err(|bad| {
                format!("neither a valid answer ({valid}) nor a bad_request ({bad})")
            })
        }),
    }
}

/// Sends `input`, then a marker ping, and returns the answers that came before the marker's
/// pong (quotes, snapshots and heartbeats left out).
async fn answers_to(ws: &mut Ws, input: &Input, marker: u64) -> Result<Vec<Value>, String> {
    let message = match input {
        Input::Text(text) => Message::text(text.clone()),
        Input::Binary(bytes) => Message::binary(bytes.clone()),
    };
    ws.send(message).await.map_err(|e| format!("send: {e}"))?;
    let marker = json!(format!("marker-{marker}"));
    ws.send(Message::text(json!({"op": "ping", "id": marker}).to_string()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut answers = Vec::new();
    loop {
        let next = tokio::time::timeout(STEP, futures_util::StreamExt::next(ws)).await;
        let m: Value = match next {
            Err(_) => return Err("no answer in time".into()),
            Ok(Some(Ok(Message::Text(text)))) => {
                serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}: {text}"))?
            }
            Ok(Some(Ok(Message::Close(frame)))) => {
                return Err(format!("session closed: {frame:?}"))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(format!("session failed: {e}")),
            Ok(None) => return Err("session ended".into()),
        };
        match m["type"].as_str() {
            Some("pong") if m["id"] == marker => return Ok(answers),
            Some("quote" | "snapshot" | "heartbeat") => {}
            _ => answers.push(m),
        }
    }
}

#[test]
fn arbitrary_frames_get_bad_request_or_their_valid_answer_and_the_session_stays_open() {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let gw = rt.block_on(TestGateway::start_with(|c| {
        c.error_budget = 1_000_000;
        c.max_requests_per_sec = 1_000_000;
        c.sim_symbols = 20;
        c.sim_rate = 50;
    }));
    let known: HashSet<String> = rt
        .block_on(gw.get("/symbols"))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let session = std::cell::RefCell::new(rt.block_on(gw.client()).0);
    let marker = std::cell::Cell::new(0u64);
    // PROPTEST_CASES=N runs more cases.
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&any_input(), |input| {
        marker.set(marker.get() + 1);
        let expected = expect(&input);
        let mut ws = session.borrow_mut();
        let outcome = rt.block_on(answers_to(&mut ws, &input, marker.get()));
        let verdict = outcome.and_then(|answers| check(&expected, &answers, &known));
        if let Err(why) = verdict {
            // Start the next case (shrinking) on a fresh session.
            *ws = rt.block_on(gw.client()).0;
            return Err(TestCaseError::fail(format!("{why}\nexpected: {expected:?}")));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // Nothing was closed along the way, and nothing was held against the session.
    let closed: f64 = ["policy", "message_too_big", "internal_error"]
        .iter()
        .map(|r| {
            rt.block_on(gw.metric(&format!(r#"gateway_sessions_closed_total{{reason="{r}"}}"#)))
        })
        .sum();
    assert_eq!(closed, 0.0);
    rt.block_on(gw.stop());
}

#[tokio::test]
async fn an_id_of_64_non_ascii_characters_is_echoed() {
    // Section 2: `id` is "a string of at most 64 characters"; 64 "é" are 64 characters (128
    // bytes of UTF-8).
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    let id = "é".repeat(64);
    send(&mut ws, json!({"op": "ping", "id": id})).await;
    let (answer, _) = recv_until(&mut ws, |m| m["type"] != "heartbeat").await;
    assert_eq!((&answer["type"], &answer["id"]), (&json!("pong"), &json!(id)), "{answer}");
    // 65 characters are too many.
    send(&mut ws, json!({"op": "ping", "id": "x".repeat(65)})).await;
    let (answer, _) = recv_until(&mut ws, |m| m["type"] != "heartbeat").await;
    assert_eq!(
        (&answer["type"], &answer["code"]),
        (&json!("error"), &json!("bad_request")),
        "{answer}"
    );
}
