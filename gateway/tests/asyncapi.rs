//! The evidence for `docs/asyncapi.yaml`: a scripted set of real sessions, on `/ws` and on
//! `/sse`, that makes the gateway send every message type, every optional field, every error
//! code and every close code of the contract. What it received is written to a JSON file
//! (`ASYNCAPI_OBSERVED`, default `target/test-artifacts/asyncapi-observed.json`) that
//! `docs/asyncapi-check/check.mjs` (`make test-asyncapi`) validates against the spec's schemas,
//! and checks the spec against.
//!
//! The test asserts that it saw each of them, so a change that stops one from being sent fails
//! here, not as a hole in the check. Its parts run concurrently, each on its own gateway where
//! it needs other settings.

mod common;
#[path = "common/sse.rs"]
mod sse_client;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use gateway::feed::manual::ManualFeedHandle;
use proto::{Price, Quote};
use serde_json::{json, Value};
use sse_client::SseClient;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

/// Samples kept per message type: enough to see every optional field.
const SAMPLES_PER_TYPE: usize = 40;

#[derive(Default)]
struct Observed {
    ws: Vec<Value>,
    sse: Vec<Value>,
    requests: Vec<Value>,
    closes: Vec<(u16, String)>,
}

type Log = Arc<Mutex<Observed>>;

impl Observed {
    fn keep(list: &mut Vec<Value>, m: Value, kind: &str) {
        let same = list.iter().filter(|v| v["type"] == kind || v["event"] == kind).count();
        if same < SAMPLES_PER_TYPE {
            list.push(m);
        }
    }
}

/// A recording WebSocket client.
struct Client {
    ws: Ws,
    log: Log,
}

impl Client {
    async fn connect(gw: &TestGateway, query: &str, log: &Log) -> Client {
        let url = format!("{}{query}", gw.ws_url());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
        let mut client = Client { ws, log: Arc::clone(log) };
        let welcome = client.recv().await;
        assert_eq!(welcome["type"], "welcome");
        client
    }

    async fn recv(&mut self) -> Value {
        let m = recv(&mut self.ws).await;
        let kind = m["type"].as_str().expect("a type").to_string();
        Observed::keep(&mut self.log.lock().unwrap().ws, m.clone(), &kind);
        m
    }

    async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let m = self.recv().await;
            if pred(&m) {
                return m;
            }
        }
    }

    /// Sends a request the contract allows (recorded, for the check against the spec).
    async fn request(&mut self, request: Value) {
        self.log.lock().unwrap().requests.push(request.clone());
        send(&mut self.ws, request).await;
    }

    /// Reads (recording) until the server's close frame; records and returns its code.
    async fn closed(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            use futures_util::StreamExt;
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => panic!("no close frame within 10 s"),
                Ok(Some(Ok(Message::Text(text)))) => {
                    let m: Value = serde_json::from_str(&text).unwrap();
                    let kind = m["type"].as_str().unwrap().to_string();
                    Observed::keep(&mut self.log.lock().unwrap().ws, m, &kind);
                }
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    let code = u16::from(frame.code);
                    self.log.lock().unwrap().closes.push((code, frame.reason.to_string()));
                    return code;
                }
                Ok(Some(Ok(Message::Close(None)))) => panic!("a close frame without a code"),
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => panic!("the connection failed before a close frame: {e}"),
                Ok(None) => panic!("the connection ended without a close frame"),
            }
        }
    }
}

fn quote(seq: u64) -> Quote {
    Quote {
        seq,
        bid: Price(18_724 + seq as i64),
        ask: Price(18_726 + seq as i64),
        bid_size: 300,
        ask_size: 500,
        last: Price(18_725 + seq as i64),
        last_size: 100,
        volume: 1_203_400 + seq,
        ts: wall_ns(),
    }
}

async fn publish(feed: &ManualFeedHandle, symbol: &str, seq: u64) {
    feed.publish(symbol, 2, quote(seq)).await.expect("published");
}

const SYMBOLS: [(&str, u8); 4] = [("AAPL", 2), ("MSFT", 2), ("TSLA", 2), ("NVDA", 2)];

/// Requests, answers, quotes, heartbeats, entitlements, budgets and closes 1000, 1002, 1007,
/// 1008 (error budget), 1009, 1011 and, at the end, 1001; and an SSE stream beside them.
async fn main_gateway(log: Log) {
    let (gw, feed) = TestGateway::start_manual(&SYMBOLS, |c| {
        c.access_tokens = vec!["all".into(), "desk=AAPL+MSFT".into()];
        c.max_subscriptions = 3;
        c.heartbeat_ms = 200;
        c.error_budget = 3;
        c.max_message_bytes = 1024;
        c.panic_on_symbol = Some("BOOM".into());
    })
    .await;
    for (symbol, _) in SYMBOLS {
        publish(&feed, symbol, 1).await;
    }
    let mut sse = SseClient::open(gw.addr, "/sse?symbols=AAPL,FOO&token=all", &[]).await.unwrap();
    // A resumed stream (its ack lists `resumed`), and one with a forbidden symbol.
    let resumed = "/sse?symbols=AAPL,MSFT&token=all&resume_epoch=test-epoch&since=AAPL:1";
    let mut sse_resumed = SseClient::open(gw.addr, resumed, &[]).await.unwrap();
    let mut sse_desk =
        SseClient::open(gw.addr, "/sse?symbols=AAPL,TSLA&token=desk", &[]).await.unwrap();
    let mut a = Client::connect(&gw, "?token=all", &log).await;
    a.request(json!({"op": "subscribe", "id": 1, "symbols": ["AAPL", "FOO"]})).await;
    assert_eq!(a.recv().await["type"], "ack");
    assert_eq!(a.recv().await["code"], "unknown_symbol");
    assert_eq!(a.recv().await["type"], "snapshot");
    publish(&feed, "AAPL", 2).await;
    assert_eq!(a.recv().await["type"], "quote");
    a.request(json!({"op": "ping", "id": "p-1"})).await;
    assert_eq!(a.until(|m| m["type"] == "pong").await["id"], "p-1");
    a.request(json!({"op": "ping"})).await;
    a.until(|m| m["type"] == "pong").await;
    // Three known symbols more than one already held: over max_subscriptions.
    a.request(json!({"op": "subscribe", "id": 2, "symbols": ["MSFT", "TSLA", "NVDA"]})).await;
    assert_eq!(a.until(|m| m["id"] == 2).await["code"], "too_many_subscriptions");
    let epoch = "test-epoch";
    publish(&feed, "MSFT", 2).await;
    let resume = json!({"op": "subscribe", "id": 3, "symbols": ["MSFT"], "snapshot": true,
        "throttle_ms": 0, "resume": {"epoch": epoch, "seq": {"MSFT": 1}}});
    a.request(resume).await;
    let ack = a.until(|m| m["id"] == 3).await;
    assert_eq!(ack["resumed"], json!(["MSFT"]));
    a.until(|m| m["type"] == "quote" && m["symbol"] == "MSFT").await;
    a.request(json!({"op": "subscribe", "id": 4, "symbols": ["TSLA"], "snapshot": false,
        "throttle_ms": 250}))
        .await;
    a.until(|m| m["id"] == 4).await;
    a.request(json!({"op": "unsubscribe", "id": 5, "symbols": ["AAPL"]})).await;
    assert_eq!(a.until(|m| m["id"] == 5).await["op"], "unsubscribe");
    a.request(json!({"op": "unsubscribe", "id": "all-gone", "symbols": ["*"]})).await;
    a.until(|m| m["id"] == "all-gone").await;
    send_text(&mut a.ws, r#"{"op":"dance","id":6}"#).await;
    assert_eq!(a.until(|m| m["id"] == 6).await["code"], "bad_request");
    a.until(|m| m["type"] == "heartbeat").await;
    a.request(json!({"op": "subscribe", "id": 7, "symbols": ["*"]})).await;
    a.until(|m| m["id"] == 7).await;
    a.ws.close(None).await.expect("close");
    assert_eq!(a.closed().await, 1000);

    // Entitlements: a token for AAPL and MSFT only.
    let mut desk = Client::connect(&gw, "?token=desk", &log).await;
    desk.request(json!({"op": "subscribe", "id": 1, "symbols": ["AAPL", "TSLA"]})).await;
    assert_eq!(desk.until(|m| m["type"] == "error").await["code"], "forbidden");

    // The error budget (3 per minute): the fourth bad request closes with 1008.
    let mut bad = Client::connect(&gw, "?token=all", &log).await;
    for _ in 0..4 {
        send_text(&mut bad.ws, "not json").await;
    }
    assert_eq!(bad.closed().await, 1008);

    // A message over max_message_bytes: 1009.
    let mut big = Client::connect(&gw, "?token=all", &log).await;
    send_text(&mut big.ws, &format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(2048))).await;
    assert_eq!(big.closed().await, 1009);

    // A gateway bug (injected): 1011, and the gateway goes on.
    let mut bug = Client::connect(&gw, "?token=all", &log).await;
    send(&mut bug.ws, json!({"op": "subscribe", "id": 1, "symbols": ["BOOM"]})).await;
    assert_eq!(bug.closed().await, 1011);
    // Both shards still serve (sessions go to them in turn): a ping answered on each.
    for i in 0..2 {
        let mut after = Client::connect(&gw, "?token=all", &log).await;
        after.request(json!({"op": "ping", "id": 100 + i})).await;
        assert_eq!(after.until(|m| m["type"] == "pong").await["id"], 100 + i);
    }

    // RFC 6455 violations: a reserved opcode (1002), a text frame that is not UTF-8 (1007).
    let mut reserved = Client::connect(&gw, "?token=all", &log).await;
    let frame = Frame::message(vec![1u8, 2, 3], OpCode::Data(Data::Reserved(3)), true);
    reserved.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(reserved.closed().await, 1002);
    let mut utf8 = Client::connect(&gw, "?token=all", &log).await;
    let frame = Frame::message(vec![0xffu8, 0xfe], OpCode::Data(Data::Text), true);
    utf8.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(utf8.closed().await, 1007);

    // The stream beside it all: welcome, ack, error, snapshot, quote, heartbeat.
    publish(&feed, "AAPL", 3).await;
    let mut seen = BTreeSet::new();
    while seen.len() < 6 {
        let e = sse.next().await;
        seen.insert(e.event.clone());
        let mut kept = log.lock().unwrap();
        Observed::keep(&mut kept.sse, json!({"event": e.event, "data": e.data}), &e.event);
    }

    for (stream, until) in [(&mut sse_resumed, "ack"), (&mut sse_desk, "error")] {
        loop {
            let e = stream.next().await;
            let mut kept = log.lock().unwrap();
            Observed::keep(&mut kept.sse, json!({"event": e.event, "data": e.data}), &e.event);
            if e.event == until {
                break;
            }
        }
    }
    drop((sse_resumed, sse_desk));

    // A graceful stop: 1001 to every session.
    let mut last = Client::connect(&gw, "?token=all", &log).await;
    let stopping = tokio::spawn(gw.stop());
    assert_eq!(last.closed().await, 1001);
    assert_eq!(desk.closed().await, 1001);
    assert!(sse.ends_within(Duration::from_secs(10)).await);
    stopping.await.unwrap();
}

/// `rate_limited` with `retry_after_ms`, then 1008 (request rate exceeded).
async fn rate_gateway(log: Log) {
    let (gw, _feed) = TestGateway::start_manual(&SYMBOLS, |c| c.max_requests_per_sec = 2).await;
    let mut c = Client::connect(&gw, "", &log).await;
    for i in 0..10u64 {
        let ping = json!({"op": "ping", "id": i});
        c.request(ping).await;
    }
    assert_eq!(c.closed().await, 1008);
    gw.stop().await;
}

/// 4000: a client that sends nothing, not even Pongs, past the idle timeout.
async fn idle_gateway(log: Log) {
    let gw = TestGateway::start_with(|c| {
        c.ping_interval_ms = 100;
        c.idle_timeout_ms = 300;
    })
    .await;
    let mut c = Client::connect(&gw, "", &log).await;
    // Not reading: tungstenite answers Pings only while it reads.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.closed().await, 4000);
    gw.stop().await;
}

/// 4008: a client that stops reading while its symbols update.
async fn slow_gateway(log: Log) {
    for attempt in 1..=3 {
        let gw = TestGateway::start_with(|c| {
            c.sim_symbols = 20;
            c.sim_rate = 2_000;
            c.slow_client_timeout_ms = 500;
            c.send_buffer_bytes = 4096;
            c.write_budget_bytes = 4096;
        })
        .await;
        let small = ClientOptions {
            recv_buffer: Some(2048),
            read_buffer: Some(2048),
            ..Default::default()
        };
        let (ws, _) = connect_client(gw.addr, small).await;
        let mut c = Client { ws, log: Arc::clone(&log) };
        c.request(json!({"op": "subscribe", "id": 1, "symbols": ["*"]})).await;
        // The socket fills within milliseconds; the gateway gives up 500 ms later and then
        // allows 1 s (CLOSE_GRACE) for its close frame to be read: read in the middle of that.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            use futures_util::StreamExt;
            loop {
                match c.ws.next().await {
                    Some(Ok(Message::Close(Some(f)))) => {
                        return Some((u16::from(f.code), f.reason.to_string()))
                    }
                    Some(Ok(_)) => continue,
                    _ => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        gw.stop().await;
        match closed {
            Some(close) => {
                assert_eq!(close.0, 4008, "{close:?}");
                log.lock().unwrap().closes.push(close);
                return;
            }
            None => {
                eprintln!("slow consumer, attempt {attempt}: the close frame was not read in time")
            }
        }
    }
    panic!("no 4008 close frame read in 3 attempts");
}

/// 4001: a session opened with a JWT closes at its `exp`. The new core does not close expired
/// sessions yet (PROTOCOL.md section 4, docs/protocol.md decision 28): until it does, the session
/// stays open and nothing is recorded; `check.mjs` lists 4001 as a known gap.
async fn jwt_gateway(log: Log) {
    let secret = "0123456789abcdef0123456789abcdef-asyncapi-test";
    let dir = std::env::temp_dir().join(format!("asyncapi-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("jwt.secret");
    std::fs::write(&key, secret).unwrap();
    let gw = TestGateway::start_with(|c| c.jwt_key = Some(key.clone())).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let claims = json!({"sub": "asyncapi", "exp": now.as_secs() + 2, "symbols": ["*"]});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut c = Client::connect(&gw, &format!("?token={token}"), &log).await;
    match tokio::time::timeout(Duration::from_secs(4), c.closed()).await {
        Ok(code) => assert_eq!(code, 4001),
        Err(_) => eprintln!("asyncapi: a session past its JWT's exp is still open (no 4001 yet)"),
    }
    gw.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn observed_path() -> PathBuf {
    match std::env::var_os("ASYNCAPI_OBSERVED") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-artifacts/asyncapi-observed.json"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_field_and_close_code_is_sent_in_a_scripted_session() {
    let log: Log = Arc::default();
    tokio::join!(
        main_gateway(Arc::clone(&log)),
        rate_gateway(Arc::clone(&log)),
        idle_gateway(Arc::clone(&log)),
        slow_gateway(Arc::clone(&log)),
        jwt_gateway(Arc::clone(&log)),
    );
    let observed = std::mem::take(&mut *log.lock().unwrap());

    let types: BTreeSet<&str> = observed.ws.iter().filter_map(|m| m["type"].as_str()).collect();
    let want = ["ack", "error", "heartbeat", "pong", "quote", "snapshot", "welcome"];
    assert_eq!(types, want.into_iter().collect(), "every server message on /ws");
    let events: BTreeSet<&str> = observed.sse.iter().filter_map(|m| m["event"].as_str()).collect();
    let want = ["ack", "error", "heartbeat", "quote", "snapshot", "welcome"];
    assert_eq!(events, want.into_iter().collect(), "every server message on /sse");
    let codes: BTreeSet<&str> = observed
        .ws
        .iter()
        .filter(|m| m["type"] == "error")
        .filter_map(|m| m["code"].as_str())
        .collect();
    let want =
        ["bad_request", "forbidden", "rate_limited", "too_many_subscriptions", "unknown_symbol"];
    assert_eq!(codes, want.into_iter().collect(), "every error code");
    let closes: BTreeSet<u16> = observed.closes.iter().map(|c| c.0).collect();
    let want = [1000, 1001, 1002, 1007, 1008, 1009, 1011, 4000, 4008];
    let missing: Vec<u16> = want.into_iter().filter(|c| !closes.contains(c)).collect();
    assert!(missing.is_empty(), "close codes never sent: {missing:?}");
    let reasons: BTreeSet<&str> = observed.closes.iter().map(|c| c.1.as_str()).collect();
    for reason in ["request rate exceeded", "error budget exceeded"] {
        assert!(reasons.contains(reason), "no 1008 close for {reason}");
    }

    let out = json!({
        "ws": observed.ws,
        "sse": observed.sse,
        "requests": observed.requests,
        "closes": observed.closes.iter().map(|(code, reason)| json!({"code": code, "reason": reason})).collect::<Vec<_>>(),
    });
    let path = observed_path();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec_pretty(&out).unwrap()).unwrap();
    eprintln!("asyncapi: what the gateway sent is in {}", path.display());
}
