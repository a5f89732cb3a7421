//! Server-Sent Events (contract section 6; issue 12): `GET /sse` is the same session as `/ws`,
//! one-way, with its subscription fixed by the query. Each test runs a real gateway on a
//! manual feed and reads the `text/event-stream` over a real TCP connection; where the
//! guarantee is "the same as /ws", a WebSocket client reads beside it and the two are compared.

mod common;
#[path = "common/sse.rs"]
mod sse_client;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use sse_client::{Next, SseClient, SseEvent};

async fn open(gw: &TestGateway, path: &str) -> SseClient {
    match SseClient::open(gw.addr, path, &[]).await {
        Ok(client) => client,
        Err(refused) => panic!("GET {path}: {} {}", refused.status, refused.body),
    }
}

async fn status(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> u16 {
    match SseClient::open(gw.addr, path, headers).await {
        Ok(_) => 200,
        Err(refused) => refused.status,
    }
}

/// Reads events until every symbol of `upto` has reached its seq; each symbol's (type, seq)
/// in arrival order, checked against the ordering rules of section 3 as they come.
async fn read_upto(
    sse: &mut SseClient,
    upto: &[(&str, u64)],
) -> HashMap<String, Vec<(String, u64)>> {
    let mut got: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    let done = |got: &HashMap<String, Vec<(String, u64)>>| {
        upto.iter()
            .all(|(s, want)| got.get(*s).and_then(|v| v.last()).is_some_and(|l| l.1 >= *want))
    };
    while !done(&got) {
        let SseEvent { event, data } = sse.next().await;
        if event == "heartbeat" {
            continue;
        }
        assert!(event == "quote" || event == "snapshot", "unexpected {event}: {data}");
        let symbol = data["symbol"].as_str().unwrap().to_string();
        let seq = data["seq"].as_u64().unwrap();
        let list = got.entry(symbol.clone()).or_default();
        if let Some(&(_, last)) = list.last() {
            assert!(seq > last, "{symbol}: {event} {seq} after {last}");
        }
        list.push((event, seq));
    }
    got
}

#[tokio::test]
async fn a_stream_is_welcome_ack_error_snapshots_quotes_and_heartbeats() {
    let symbols = [("AAPL", 2), ("MSFT", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |c| c.heartbeat_ms = 300).await;
    publish(&feed, "AAPL", 1..=3).await;
    publish(&feed, "MSFT", 1..=2).await;

    let mut sse = open(&gw, "/sse?symbols=AAPL,FOO,MSFT").await;
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    let welcome = sse.next().await.data;
    assert_eq!(welcome["type"], "welcome", "welcome first: {welcome}");
    assert_eq!(
        (welcome["protocol"].as_u64(), welcome["epoch"].as_str()),
        (Some(1), Some("test-epoch"))
    );
    assert_eq!(welcome["heartbeat_ms"], 300);
    assert!(welcome["limits"]["max_subscriptions"].as_u64().is_some(), "{welcome}");
    // The query is the subscribe: its ack (no id), then the unknown names' error.
    let ack = sse.next().await.data;
    assert_eq!(ack, json!({"type": "ack", "op": "subscribe", "symbols": ["AAPL", "MSFT"]}));
    let error = sse.next().await.data;
    assert_eq!(error["code"], "unknown_symbol", "{error}");
    assert_eq!(error["symbols"], json!(["FOO"]));
    assert!(error.get("id").is_none(), "{error}");

    let got = read_upto(&mut sse, &[("AAPL", 3), ("MSFT", 2)]).await;
    assert_eq!(got["AAPL"], [("snapshot".to_string(), 3)]);
    assert_eq!(got["MSFT"], [("snapshot".to_string(), 2)]);
    publish(&feed, "AAPL", 4..=6).await;
    let got = read_upto(&mut sse, &[("AAPL", 6)]).await;
    let want: Vec<(String, u64)> = (4..=6).map(|s| ("quote".to_string(), s)).collect();
    assert_eq!(got["AAPL"], want);

    // Idle: a heartbeat within heartbeat_ms (and a margin for a busy machine), then another.
    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        let beat = sse.next().await;
        assert_eq!(beat.event, "heartbeat", "{:?}", beat.data);
        assert!(beat.data["ts"].as_u64().is_some());
        assert!(started.elapsed() < Duration::from_millis(300 + 1_000));
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_request_naming_no_valid_symbol_is_400_and_so_is_a_bad_option() {
    let (gw, _feed) = TestGateway::start_manual(&[("AAPL", 2)], |_| {}).await;
    for path in [
        "/sse",
        "/sse?symbols=",
        "/sse?symbols=FOO,BAR",
        "/sse?symbols=AAPL&throttle_ms=abc",
        "/sse?symbols=AAPL&throttle_ms=60001",
        "/sse?symbols=AAPL&snapshot=maybe",
        "/sse?symbols=AAPL&since=AAPL:5",
        "/sse?symbols=AAPL&resume_epoch=e&since=AAPL:x",
    ] {
        let refused = SseClient::open(gw.addr, path, &[]).await.err();
        let refused = refused.unwrap_or_else(|| panic!("{path} opened a stream"));
        assert_eq!(refused.status, 400, "{path}: {}", refused.body);
        assert!(!refused.body.trim().is_empty(), "{path}: a 400 says what is wrong");
    }
    assert_eq!(gw.metric("gateway_sse_sessions_active").await, 0.0);
    gw.stop().await;
}

#[tokio::test]
async fn the_query_options_apply_as_on_ws() {
    let (gw, feed) = TestGateway::start_manual(&[("AAPL", 2)], |_| {}).await;
    publish(&feed, "AAPL", 1..=5).await;
    // snapshot=false: the next update, as a quote; throttle_ms: then at most one a second.
    let mut sse = open(&gw, "/sse?symbols=AAPL&snapshot=false&throttle_ms=1000").await;
    sse.until(|e| e.event == "ack").await;
    publish(&feed, "AAPL", 6..=6).await;
    let first = sse.next().await.data;
    assert_eq!(
        (first["type"].as_str(), first["seq"].as_u64()),
        (Some("quote"), Some(6)),
        "{first}"
    );
    publish(&feed, "AAPL", 7..=8).await;
    assert!(matches!(sse.next_within(Duration::from_millis(400)).await, Next::Nothing));
    let next = sse.next().await.data;
    assert_eq!((next["type"].as_str(), next["seq"].as_u64()), (Some("quote"), Some(8)), "{next}");
    gw.stop().await;
}

/// Both readers read all the time, on their own tasks: a reader that stops reading while its
/// symbols update is conflated (that is the contract), and this test is about the updates of
/// readers that keep up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_ws_get_the_same_updates_in_the_same_order() {
    const LAST: u64 = 101;
    let symbols = [("AAPL", 2), ("MSFT", 2), ("NVDA", 2), ("TSLA", 2)];
    // A shard that is descheduled for a moment replays what it missed instead of conflating.
    let (gw, feed) = TestGateway::start_manual(&symbols, |c| c.replay_max_age_ms = 10_000).await;
    for (s, _) in symbols {
        publish(&feed, s, 1..=1).await;
    }
    let names: Vec<&str> = symbols.iter().map(|(s, _)| *s).collect();
    let mut sse = open(&gw, &format!("/sse?symbols={}", names.join(","))).await;
    let (mut ws, _) = gw.client().await;
    subscribe(&mut ws, 1, &names).await;
    sse.until(|e| e.event == "ack").await;

    // What each reader has seen so far: (symbol, latest seq) pairs, for the publisher's pace.
    let seen_ws = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let seen_sse = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let done = |seen: &HashMap<String, u64>| seen.len() == 4 && seen.values().all(|&q| q == LAST);
    let ws_reader = {
        let seen = Arc::clone(&seen_ws);
        tokio::spawn(async move {
            let mut all = Vec::new();
            while !done(&seen.lock().unwrap()) {
                let m = recv(&mut ws).await;
                if let (Some(s), Some(q)) = (m["symbol"].as_str(), m["seq"].as_u64()) {
                    seen.lock().unwrap().insert(s.to_string(), q);
                }
                all.push(m);
            }
            all
        })
    };
    let sse_reader = {
        let seen = Arc::clone(&seen_sse);
        tokio::spawn(async move {
            let mut all = Vec::new();
            while !done(&seen.lock().unwrap()) {
                let m = sse.next().await.data;
                if let (Some(s), Some(q)) = (m["symbol"].as_str(), m["seq"].as_u64()) {
                    seen.lock().unwrap().insert(s.to_string(), q);
                }
                all.push(m);
            }
            all
        })
    };
    // Rounds of 5 updates per symbol, interleaved; the next round once both readers have the
    // last one (so neither has more than a few KiB unread at any time).
    for round in 0..20u64 {
        let seqs = 2 + round * 5..2 + (round + 1) * 5;
        for seq in seqs.clone() {
            for (s, _) in symbols {
                publish(&feed, s, seq..=seq).await;
            }
        }
        let last = seqs.end - 1;
        let caught_up = |seen: &Mutex<HashMap<String, u64>>| {
            let seen = seen.lock().unwrap();
            seen.len() == 4 && seen.values().all(|&q| q >= last)
        };
        let deadline = tokio::time::Instant::now() + STEP;
        while !(caught_up(&seen_ws) && caught_up(&seen_sse)) {
            assert!(tokio::time::Instant::now() < deadline, "round {round}: readers stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let ws_seen = ws_reader.await.unwrap();
    let sse_seen = sse_reader.await.unwrap();
    let (mut ws_order, mut sse_order) = (OrderCheck::default(), OrderCheck::default());
    ws_seen.iter().for_each(|m| ws_order.observe(m));
    sse_seen.iter().for_each(|m| sse_order.observe(m));
    let per_symbol = |seen: &[Value]| {
        let mut by: HashMap<String, Vec<(String, u64)>> = HashMap::new();
        for m in seen.iter().filter(|m| m["type"] == "quote" || m["type"] == "snapshot") {
            by.entry(m["symbol"].as_str().unwrap().into())
                .or_default()
                .push((m["type"].as_str().unwrap().into(), m["seq"].as_u64().unwrap()));
        }
        by
    };
    let (ws_by, sse_by) = (per_symbol(&ws_seen), per_symbol(&sse_seen));
    for s in &names {
        let mut want = vec![("snapshot".to_string(), 1)];
        want.extend((2..=LAST).map(|q| ("quote".to_string(), q)));
        assert_eq!(ws_by[*s], want, "{s} on /ws");
        assert_eq!(sse_by[*s], want, "{s} on /sse: the same as /ws");
    }
    assert_eq!((ws_order.jumps, sse_order.jumps), (0, 0));
    // The quotes are the same messages.
    let quotes =
        |seen: &[Value]| seen.iter().filter(|m| m["type"] == "quote").cloned().collect::<Vec<_>>();
    let (mut a, mut b) = (quotes(&ws_seen), quotes(&sse_seen));
    let key = |m: &Value| (m["symbol"].as_str().unwrap().to_string(), m["seq"].as_u64().unwrap());
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_resumes_with_resume_epoch_and_since() {
    let symbols = [("AAPL", 2), ("MSFT", 2), ("NVDA", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |_| {}).await;
    publish(&feed, "AAPL", 1..=5).await;
    publish(&feed, "MSFT", 1..=3).await;
    publish(&feed, "NVDA", 1..=4).await;
    let mut first = open(&gw, "/sse?symbols=AAPL,MSFT,NVDA").await;
    let epoch = first.next().await.data["epoch"].as_str().unwrap().to_string();
    assert_eq!(first.next().await.event, "ack");
    read_upto(&mut first, &[("AAPL", 5), ("MSFT", 3), ("NVDA", 4)]).await;
    drop(first);
    publish(&feed, "AAPL", 6..=15).await;
    publish(&feed, "MSFT", 4..=5).await;
    publish(&feed, "NVDA", 5..=6).await;

    // AAPL and MSFT resume; NVDA is named without a seq: a snapshot.
    let path = format!("/sse?symbols=AAPL,MSFT,NVDA&resume_epoch={epoch}&since=AAPL:5,MSFT:3");
    let mut again = open(&gw, &path).await;
    assert_eq!(again.next().await.event, "welcome");
    let ack = again.next().await.data;
    assert_eq!(ack["symbols"], json!(["AAPL", "MSFT", "NVDA"]));
    assert_eq!(ack["resumed"], json!(["AAPL", "MSFT"]), "{ack}");
    let mut got: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    while got.get("AAPL").map_or(0, |v| v.last().unwrap().1) < 15
        || got.get("MSFT").map_or(0, |v| v.last().unwrap().1) < 5
        || got.get("NVDA").map_or(0, |v| v.last().unwrap().1) < 6
    {
        let m = again.next().await.data;
        got.entry(m["symbol"].as_str().unwrap().into())
            .or_default()
            .push((m["type"].as_str().unwrap().into(), m["seq"].as_u64().unwrap()));
    }
    let quotes =
        |r: std::ops::RangeInclusive<u64>| r.map(|s| ("quote".to_string(), s)).collect::<Vec<_>>();
    assert_eq!(got["AAPL"], quotes(6..=15));
    assert_eq!(got["MSFT"], quotes(4..=5));
    assert_eq!(got["NVDA"], [("snapshot".to_string(), 6)]);

    // Another epoch: snapshots, and an empty `resumed`.
    let mut other = open(&gw, "/sse?symbols=AAPL&resume_epoch=other&since=AAPL:5").await;
    other.next().await;
    assert_eq!(other.next().await.data["resumed"], json!([]));
    let m = other.next().await.data;
    assert_eq!((m["type"].as_str(), m["seq"].as_u64()), (Some("snapshot"), Some(15)), "{m}");
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"resumed\"}").await, 2.0);
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"snapshot\"}").await, 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn tokens_and_entitlements_apply_to_streams() {
    let (gw, feed) = TestGateway::start_manual(&[("AAPL", 2), ("MSFT", 2), ("TSLA", 2)], |c| {
        c.access_tokens = vec!["desk=AAPL+MSFT".into()];
    })
    .await;
    publish(&feed, "AAPL", 1..=1).await;
    publish(&feed, "TSLA", 1..=1).await;
    assert_eq!(status(&gw, "/sse?symbols=AAPL", &[]).await, 401);
    assert_eq!(status(&gw, "/sse?symbols=AAPL&token=wrong", &[]).await, 401);
    assert_eq!(status(&gw, "/sse?symbols=AAPL", &[("Authorization", "Bearer wrong")]).await, 401);
    // Entitled to none of the named symbols: 403.
    assert_eq!(status(&gw, "/sse?symbols=TSLA&token=desk", &[]).await, 403);

    let headers = [("Authorization", "Bearer desk")];
    let mut sse = SseClient::open(gw.addr, "/sse?symbols=AAPL,TSLA", &headers).await.unwrap();
    sse.next().await;
    assert_eq!(sse.next().await.data["symbols"], json!(["AAPL"]));
    let forbidden = sse.next().await.data;
    assert_eq!(
        (forbidden["code"].as_str(), forbidden["symbols"].clone()),
        (Some("forbidden"), json!(["TSLA"]))
    );
    let snapshot = sse.next().await.data;
    assert_eq!(
        (snapshot["type"].as_str(), snapshot["symbol"].as_str()),
        (Some("snapshot"), Some("AAPL"))
    );
    let mut by_query = open(&gw, "/sse?symbols=MSFT&token=desk").await;
    assert_eq!(by_query.next().await.event, "welcome");
    assert_eq!(gw.metric("gateway_handshake_rejections_total{status=\"401\"}").await, 3.0);
    gw.stop().await;
}

#[tokio::test]
async fn streams_are_counted_as_sessions_and_as_sse() {
    let (gw, feed) = TestGateway::start_manual(&[("AAPL", 2)], |_| {}).await;
    publish(&feed, "AAPL", 1..=1).await;
    let opened = gw.metric("gateway_sessions_opened_total").await;
    let mut a = open(&gw, "/sse?symbols=AAPL").await;
    let mut b = open(&gw, "/sse?symbols=AAPL").await;
    let (_ws, _) = gw.client().await;
    a.until(|e| e.event == "snapshot").await;
    b.until(|e| e.event == "snapshot").await;
    assert_eq!(gw.metric("gateway_sse_sessions_active").await, 2.0);
    assert_eq!(gw.metric("gateway_sessions_active").await, 3.0);
    assert_eq!(gw.metric("gateway_sessions_opened_total").await, opened + 3.0);
    assert!(gw.metric("gateway_messages_sent_total{type=\"snapshot\"}").await >= 2.0);
    drop(a);
    wait_metric(&gw, "gateway_sse_sessions_active", 1.0, STEP).await;
    drop(b);
    wait_metric(&gw, "gateway_sse_sessions_active", 0.0, STEP).await;
    assert_eq!(gw.metric("gateway_sessions_active").await, 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_graceful_stop_ends_every_stream_at_once() {
    // Long heartbeat and grace: the stream must end because of the stop, not of a timer.
    let (gw, feed) = TestGateway::start_manual(&[("AAPL", 2)], |c| {
        c.heartbeat_ms = 60_000;
        c.shutdown_grace_ms = 20_000;
    })
    .await;
    publish(&feed, "AAPL", 1..=1).await;
    let mut sse = open(&gw, "/sse?symbols=AAPL").await;
    sse.until(|e| e.event == "snapshot").await;
    let stopping = tokio::spawn(gw.stop());
    assert!(sse.ends_within(Duration::from_secs(2)).await, "the stream ends on a stop");
    stopping.await.unwrap();
}
