//! Sections 2 and 3 of the contract: requests, answers, snapshots, quotes and their order.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[tokio::test]
async fn welcome_comes_first_and_announces_the_limits() {
    let gw = TestGateway::start_with(|c| {
        c.max_subscriptions = 7;
        c.max_message_bytes = 4096;
        c.max_requests_per_sec = 9;
        c.heartbeat_ms = 1234;
    })
    .await;
    let (_ws, welcome) = gw.client().await;
    assert_eq!(welcome["protocol"], 1);
    assert_eq!(welcome["server"], "gw-test");
    assert!(welcome["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(welcome["ts"].as_u64().unwrap() > 1_700_000_000_000_000_000, "ns since the epoch");
    assert_eq!(welcome["heartbeat_ms"], 1234);
    assert_eq!(
        welcome["limits"],
        json!({"max_subscriptions": 7, "max_message_bytes": 4096, "max_requests_per_sec": 9})
    );
}

#[tokio::test]
async fn sessions_get_distinct_ids() {
    let gw = TestGateway::start().await;
    let (_a, wa) = gw.client().await;
    let (_b, wb) = gw.client().await;
    assert_ne!(wa["session"], wb["session"]);
}

#[tokio::test]
async fn ack_then_snapshots_then_quotes_with_rising_seq() {
    // A tenth of the default rate: the client keeps up even on a loaded CI machine, so every
    // update must arrive.
    let gw = TestGateway::start_with(|c| c.sim_rate = 200).await;
    let (mut ws, _) = gw.client().await;
    send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["AAPL", "MSFT", "NVDA"]})).await;
    let ack = recv(&mut ws).await;
    assert_eq!(
        ack,
        json!({"type": "ack", "id": 1, "op": "subscribe", "symbols": ["AAPL", "MSFT", "NVDA"]})
    );
    let mut check = OrderCheck::default();
    let mut snapshots = Vec::new();
    for _ in 0..3 {
        let m = recv(&mut ws).await;
        assert_eq!(m["type"], "snapshot", "snapshots come right after the ack: {m}");
        snapshots.push(m["symbol"].as_str().unwrap().to_string());
        check.observe(&m);
    }
    snapshots.sort();
    assert_eq!(snapshots, ["AAPL", "MSFT", "NVDA"]);
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let m = recv(&mut ws).await;
        assert!(m["type"] == "quote" || m["type"] == "heartbeat", "{m}");
        check.observe(&m);
    }
    assert!(check.quotes > 10, "a steady flow of quotes, got {}", check.quotes);
    assert_eq!(check.jumps, 0, "a client that keeps up gets every update");
}

#[tokio::test]
async fn quote_fields_have_the_contract_types_and_precision() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    subscribe(&mut ws, 1, &["EURUSD"]).await;
    let snapshot = recv(&mut ws).await;
    let keys: Vec<&str> = snapshot.as_object().unwrap().keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            "ask",
            "ask_size",
            "bid",
            "bid_size",
            "last",
            "last_size",
            "seq",
            "symbol",
            "ts",
            "type",
            "volume"
        ]
    );
    for field in ["seq", "bid_size", "ask_size", "last_size", "volume", "ts"] {
        assert!(snapshot[field].is_u64(), "{field}: {snapshot}");
    }
    for field in ["bid", "ask", "last"] {
        let v = snapshot[field].as_f64().unwrap();
        assert_eq!((v * 1e5).round() / 1e5, v, "{field} has at most 5 decimals: {snapshot}");
    }
}

#[tokio::test]
async fn partly_unknown_symbols_ack_the_known_and_error_the_rest() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    send(
        &mut ws,
        json!({"op": "subscribe", "id": "s1", "symbols": ["AAPL", "FOO", "MSFT", "BAR"]}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "ack", "id": "s1", "op": "subscribe", "symbols": ["AAPL", "MSFT"]})
    );
    let error = recv(&mut ws).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["id"], "s1");
    assert_eq!(error["code"], "unknown_symbol");
    assert_eq!(error["symbols"], json!(["FOO", "BAR"]));
    let mut seen = Vec::new();
    for _ in 0..2 {
        let m = recv(&mut ws).await;
        assert_eq!(m["type"], "snapshot");
        seen.push(m["symbol"].as_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["AAPL", "MSFT"]);
}

#[tokio::test]
async fn all_unknown_symbols_get_only_an_error() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    send(&mut ws, json!({"op": "subscribe", "id": 4, "symbols": ["FOO"]})).await;
    let error = recv(&mut ws).await;
    assert_eq!(error["code"], "unknown_symbol");
    assert_eq!(error["message"], "unknown symbol: FOO");
    send(&mut ws, json!({"op": "ping", "id": 5})).await;
    assert_eq!(
        recv(&mut ws).await["type"],
        "pong",
        "nothing else was sent, and the session goes on"
    );
}

#[tokio::test]
async fn resubscribe_replaces_options_and_sends_a_fresh_snapshot() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    subscribe(&mut ws, 1, &["AAPL"]).await;
    send(&mut ws, json!({"op": "subscribe", "id": 2, "symbols": ["AAPL"], "throttle_ms": 1000}))
        .await;
    let (ack, _) = recv_until(&mut ws, |m| m["type"] == "ack").await;
    assert_eq!(ack["id"], 2);
    let snapshot = recv(&mut ws).await;
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["symbol"], "AAPL");
    // The new throttle applies: AAPL updates ~300 times a second, at most ~2 quotes in 1.5 s.
    let mut quotes = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while let Some(m) = recv_within(&mut ws, until.saturating_duration_since(Instant::now())).await
    {
        if m["type"] == "quote" {
            quotes += 1;
        }
    }
    assert!((1..=2).contains(&quotes), "{quotes} quotes with throttle_ms 1000");
    // Without asking for a snapshot, a re-subscribe sends none.
    send(&mut ws, json!({"op": "subscribe", "id": 3, "symbols": ["AAPL"], "snapshot": false}))
        .await;
    let (_, _) = recv_until(&mut ws, |m| m["type"] == "ack" && m["id"] == 3).await;
    let next = recv(&mut ws).await;
    assert_eq!(next["type"], "quote", "no snapshot with snapshot:false: {next}");
}

#[tokio::test]
async fn snapshot_false_starts_with_the_next_quote() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["AAPL"], "snapshot": false}))
        .await;
    assert_eq!(recv(&mut ws).await["type"], "ack");
    assert_eq!(recv(&mut ws).await["type"], "quote");
}

#[tokio::test]
async fn unsubscribe_stops_quotes_after_its_ack() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    subscribe(&mut ws, 1, &["AAPL", "MSFT"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut ws, json!({"op": "unsubscribe", "id": 2, "symbols": ["AAPL", "NOT_SUBSCRIBED"]}))
        .await;
    let (ack, _) = recv_until(&mut ws, |m| m["type"] == "ack" && m["id"] == 2).await;
    assert_eq!(
        ack,
        json!({"type": "ack", "id": 2, "op": "unsubscribe", "symbols": ["AAPL", "NOT_SUBSCRIBED"]})
    );
    let until = Instant::now() + Duration::from_millis(800);
    let mut msft = 0;
    while let Some(m) = recv_within(&mut ws, until.saturating_duration_since(Instant::now())).await
    {
        assert_ne!(m["symbol"], "AAPL", "nothing for AAPL after the unsubscribe ack: {m}");
        msft += u32::from(m["symbol"] == "MSFT");
    }
    assert!(msft > 0, "MSFT goes on");
    send(&mut ws, json!({"op": "unsubscribe", "id": 3, "symbols": ["*"]})).await;
    let (_, _) = recv_until(&mut ws, |m| m["type"] == "ack" && m["id"] == 3).await;
    let after = recv_within(&mut ws, Duration::from_millis(500)).await;
    assert!(after.is_none(), "nothing after unsubscribing everything: {after:?}");
}

#[tokio::test]
async fn throttle_sends_at_most_one_latest_quote_per_interval() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["AAPL"], "throttle_ms": 250}))
        .await;
    recv_until(&mut ws, |m| m["type"] == "snapshot").await;
    let mut arrivals = Vec::new();
    let mut check = OrderCheck::default();
    check.observe(&json!({"type": "snapshot", "symbol": "AAPL", "seq": 0}));
    let until = Instant::now() + Duration::from_secs(2);
    while let Some(m) = recv_within(&mut ws, until.saturating_duration_since(Instant::now())).await
    {
        if m["type"] == "quote" {
            check.observe(&m);
            arrivals.push(Instant::now());
        }
    }
    assert!((5..=9).contains(&arrivals.len()), "{} quotes in 2 s at 250 ms", arrivals.len());
    for pair in arrivals.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(150),
            "quotes {:?} apart",
            pair[1] - pair[0]
        );
    }
    assert!(check.jumps > 0, "a throttled hot symbol skips to the latest");
}

#[tokio::test]
async fn an_idle_session_gets_heartbeats() {
    let gw = TestGateway::start_with(|c| c.heartbeat_ms = 200).await;
    let (mut ws, welcome) = gw.client().await;
    let mut last_ts = welcome["ts"].as_u64().unwrap();
    for _ in 0..3 {
        let m = recv_within(&mut ws, Duration::from_millis(2000))
            .await
            .expect("a heartbeat within heartbeat_ms");
        assert_eq!(m["type"], "heartbeat");
        let ts = m["ts"].as_u64().unwrap();
        // The server's clock says when it was sent: one per interval after the last message.
        assert!(
            ts - last_ts >= 190_000_000,
            "{} ms after the previous message",
            (ts - last_ts) / 1_000_000
        );
        last_ts = ts;
    }
}

#[tokio::test]
async fn star_subscribes_to_every_symbol() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    let ack = subscribe(&mut ws, 1, &["*"]).await;
    assert_eq!(ack["symbols"], json!(["*"]));
    let mut snapshots = HashMap::new();
    let mut check = OrderCheck::default();
    while snapshots.len() < 500 {
        let m = recv(&mut ws).await;
        check.observe(&m);
        if m["type"] == "snapshot" {
            snapshots.insert(m["symbol"].as_str().unwrap().to_string(), ());
        }
    }
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 500.0);
}

#[tokio::test]
async fn ping_is_answered_with_pong_echoing_the_id() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    send(&mut ws, json!({"op": "ping", "id": 3})).await;
    let pong = recv(&mut ws).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["id"], 3);
    assert!(pong["ts"].as_u64().is_some());
    send(&mut ws, json!({"op": "ping"})).await;
    let pong = recv(&mut ws).await;
    assert!(pong.get("id").is_none(), "no id, none echoed: {pong}");
}

#[tokio::test]
async fn bad_requests_get_bad_request_and_the_session_goes_on() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    let cases = [
        ("not json", None),
        ("[1,2]", None),
        (r#"{"id":1}"#, Some(json!(1))),
        (r#"{"op":"dance","id":"d"}"#, Some(json!("d"))),
        (r#"{"op":"subscribe","id":2,"symbols":"AAPL"}"#, Some(json!(2))),
        (r#"{"op":"subscribe","id":3,"symbols":["AAPL"],"throttle_ms":60001}"#, Some(json!(3))),
        (r#"{"op":"subscribe","id":-4,"symbols":["AAPL"]}"#, None),
    ];
    for (text, id) in cases {
        send_text(&mut ws, text).await;
        let error = recv(&mut ws).await;
        assert_eq!(error["type"], "error", "{text}");
        assert_eq!(error["code"], "bad_request", "{text}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert_eq!(error.get("id").cloned(), id, "{text}");
    }
    // A rejected request changed nothing: no subscriptions, and the session still answers.
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 0.0);
    send(&mut ws, json!({"op": "ping", "id": 9})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
}

#[tokio::test]
async fn too_many_subscriptions_rejects_the_whole_request() {
    let gw = TestGateway::start_with(|c| c.max_subscriptions = 3).await;
    let (mut ws, _) = gw.client().await;
    subscribe(&mut ws, 1, &["AAPL", "MSFT"]).await;
    send(&mut ws, json!({"op": "subscribe", "id": 2, "symbols": ["NVDA", "AMZN"]})).await;
    let (error, _) = recv_until(&mut ws, |m| m["type"] == "error").await;
    assert_eq!(error["code"], "too_many_subscriptions");
    assert_eq!(error["id"], 2);
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 2.0, "nothing changed");
    let until = Instant::now() + Duration::from_millis(500);
    while let Some(m) = recv_within(&mut ws, until.saturating_duration_since(Instant::now())).await
    {
        assert!(m["symbol"] == "AAPL" || m["symbol"] == "MSFT", "{m}");
    }
    // Re-subscribing what is already subscribed adds nothing, so it fits.
    let ack = subscribe(&mut ws, 3, &["AAPL", "NVDA"]).await;
    assert_eq!(ack["symbols"], json!(["AAPL", "NVDA"]));
}

#[tokio::test]
async fn forbidden_symbols_are_refused_per_token() {
    let gw = TestGateway::start_with(|c| c.access_tokens = vec!["desk=AAPL+MSFT".into()]).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}?token=desk", gw.ws_url())).await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["AAPL", "NVDA"]})).await;
    assert_eq!(recv(&mut ws).await["symbols"], json!(["AAPL"]));
    let error = recv(&mut ws).await;
    assert_eq!(error["code"], "forbidden");
    assert_eq!(error["symbols"], json!(["NVDA"]));
}

#[tokio::test]
async fn every_session_sees_the_same_seq_for_a_symbol() {
    let gw = TestGateway::start().await;
    let (mut a, _) = gw.client().await;
    let (mut b, _) = gw.client().await;
    subscribe(&mut a, 1, &["MSFT"]).await;
    subscribe(&mut b, 1, &["MSFT"]).await;
    let collect = |ws: &mut Ws| {
        let ws = ws as *mut Ws;
        async move {
            // SAFETY: each future gets its own socket.
            let ws = unsafe { &mut *ws };
            let mut seen = HashMap::new();
            let until = Instant::now() + Duration::from_millis(800);
            while let Some(m) =
                recv_within(ws, until.saturating_duration_since(Instant::now())).await
            {
                if m["type"] == "quote" {
                    seen.insert(m["seq"].as_u64().unwrap(), m["bid"].clone());
                }
            }
            seen
        }
    };
    let (sa, sb) = tokio::join!(collect(&mut a), collect(&mut b));
    let common: Vec<_> = sa.keys().filter(|k| sb.contains_key(k)).collect();
    assert!(!common.is_empty());
    for seq in common {
        assert_eq!(sa[seq], sb[seq], "seq {seq} carries the same quote everywhere");
    }
}

#[tokio::test]
async fn lowering_the_throttle_applies_at_once() {
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["AAPL"], "throttle_ms": 60000}))
        .await;
    recv_until(&mut ws, |m| m["type"] == "snapshot").await;
    send(&mut ws, json!({"op": "subscribe", "id": 2, "symbols": ["AAPL"], "throttle_ms": 0, "snapshot": false})).await;
    recv_until(&mut ws, |m| m["type"] == "ack" && m["id"] == 2).await;
    let next = recv_within(&mut ws, Duration::from_secs(2))
        .await
        .expect("quotes resume at once, not after 60 s");
    assert_eq!(next["type"], "quote");
}

#[tokio::test]
async fn star_with_a_token_entitled_to_nothing_known_is_still_acked() {
    let gw = TestGateway::start_with(|c| c.access_tokens = vec!["t=NOSUCH".into()]).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{}?token=t", gw.ws_url())).await.unwrap();
    assert_eq!(recv(&mut ws).await["type"], "welcome");
    let ack = subscribe(&mut ws, 1, &["*"]).await;
    assert_eq!(ack["symbols"], json!(["*"]));
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
    let gw = TestGateway::start().await;
    let (mut ws, _) = gw.client().await;
    // SAFETY: deliberately invalid, to test the server; the client never reads it back.
    let bad =
        unsafe { Utf8Bytes::from_bytes_unchecked(bytes::Bytes::from_static(b"{\"op\":\"\xff\"}")) };
    ws.send(Message::Text(bad)).await.unwrap();
    assert_eq!(close_code(&mut ws, Duration::from_secs(5)).await, Some(1007));
    let (_other, _) = gw.client().await;
}

#[tokio::test]
async fn a_feed_slower_than_ten_updates_a_second_still_updates() {
    // 5 updates/s over 2 symbols, uniform: the feed's catch-up bound (100 ms of updates) is
    // under one update here, and must not swallow them all.
    let gw = TestGateway::start_with(|c| {
        c.sim_symbols = 2;
        c.sim_rate = 5;
        c.sim_activity = gateway::config::SimActivity::Uniform;
    })
    .await;
    let (mut ws, _) = gw.client().await;
    subscribe(&mut ws, 1, &["AAPL", "MSFT"]).await;
    let mut quotes = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Some(m) = recv_within(&mut ws, until - tokio::time::Instant::now()).await {
        quotes += usize::from(m["type"] == "quote");
    }
    assert!(quotes >= 5, "~15 quotes expected in 3 s at 5 updates/s, got {quotes}");
}

/// The deterministic form of `lowering_the_throttle_applies_at_once`: an update arrives while
/// the 60 s throttle holds (the subscription is deferred until then), and a subscribe with
/// `throttle_ms: 0` must send it at once, not when the old interval ends.
#[tokio::test]
async fn lowering_the_throttle_releases_an_update_held_by_the_old_one() {
    let (gw, feed) = TestGateway::start_manual(&[("AAPL", 2)], |_| {}).await;
    feed.publish("AAPL", 2, manual_quote(1)).await.unwrap();
    let (mut ws, _) = gw.client().await;
    send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["AAPL"], "throttle_ms": 60000}))
        .await;
    let (snapshot, _) = recv_until(&mut ws, |m| m["type"] == "snapshot").await;
    assert_eq!(snapshot["seq"], 1);
    // Held by the throttle: nothing within a short wait.
    feed.publish("AAPL", 2, manual_quote(2)).await.unwrap();
    assert_eq!(recv_within(&mut ws, Duration::from_millis(200)).await, None);
    send(
        &mut ws,
        json!({"op": "subscribe", "id": 2, "symbols": ["AAPL"], "throttle_ms": 0, "snapshot": false}),
    )
    .await;
    let (next, _) = recv_until(&mut ws, |m| m["type"] == "quote").await;
    assert_eq!(next["seq"], 2, "{next}");
    gw.stop().await;
}
