//! Contained failures (issue 9 item 5, PROTOCOL.md section 4): a panic while serving one
//! session ends that session with `1011`, counted as `internal_error`, and nothing else: the
//! shard, the process and every other session go on, and the shard forgets the session's
//! subscriptions. A failure outside any session (the shard's own loop) stops the gateway with an
//! error, so that a supervisor restarts it instead of a process that serves stale quotes.
//!
//! The panics are injected by test-only settings (`Config::panic_on_symbol`,
//! `Config::panic_shard_on_symbol`), which no flag or environment variable can set. Every test
//! runs a real gateway in this process and speaks real WebSocket or HTTP to it on 127.0.0.1.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use gateway::feed::manual::ManualFeedHandle;
use proto::{Price, Quote};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// The name whose subscribe panics.
const POISON: &str = "POISON";

const SYMBOLS: [(&str, u8); 4] = [("AAPL", 2), ("MSFT", 2), ("NVDA", 2), (POISON, 2)];

fn quote(seq: u64) -> Quote {
    Quote {
        seq,
        bid: Price(18_700 + seq as i64 % 50),
        ask: Price(18_760),
        bid_size: 300,
        ask_size: 500,
        last: Price(18_730),
        last_size: 100,
        volume: 1_000 + seq,
        ts: wall_ns(),
    }
}

/// Publishes AAPL, MSFT and NVDA in turn, one quote every 5 ms, with rising `seq`, until
/// stopped.
fn publish_steadily(feed: ManualFeedHandle) -> (Arc<AtomicBool>, JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let halt = stop.clone();
    let task = tokio::spawn(async move {
        let mut seq = 1;
        while !halt.load(Ordering::Relaxed) {
            for symbol in ["AAPL", "MSFT", "NVDA"] {
                if feed.publish(symbol, 2, quote(seq)).await.is_none() {
                    return;
                }
            }
            seq += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (stop, task)
}

/// The `seq` of every quote and snapshot of each symbol a session received, in order.
#[derive(Debug, Default)]
struct Seen {
    by_symbol: std::collections::BTreeMap<String, Vec<u64>>,
}

impl Seen {
    fn observe(&mut self, m: &Value) {
        if matches!(m["type"].as_str(), Some("quote" | "snapshot")) {
            let symbol = m["symbol"].as_str().expect("symbol").to_string();
            self.by_symbol.entry(symbol).or_default().push(m["seq"].as_u64().expect("seq"));
        }
    }

    fn count(&self, symbol: &str) -> usize {
        self.by_symbol.get(symbol).map_or(0, Vec::len)
    }

    /// Every symbol's `seq` strictly rising (section 3).
    fn assert_in_order(&self) {
        for (symbol, seqs) in &self.by_symbol {
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{symbol} out of order: {seqs:?}");
        }
    }
}

/// Reads `ws` until `symbol` has `more` quotes or snapshots beyond what `seen` has.
async fn read_more(ws: &mut Ws, seen: &mut Seen, symbol: &str, more: usize) {
    let want = seen.count(symbol) + more;
    while seen.count(symbol) < want {
        seen.observe(&recv(ws).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_session_closes_it_with_1011_and_its_shard_goes_on() {
    // One shard: the bystander, the failing session and the one after it share it.
    let (gw, feed) = TestGateway::start_manual(&SYMBOLS, |c| {
        c.shards = 1;
        c.panic_on_symbol = Some(POISON.into());
    })
    .await;
    let (stop, publisher) = publish_steadily(feed);

    let (mut bystander, _) = gw.client().await;
    subscribe(&mut bystander, 1, &["AAPL", "MSFT"]).await;
    let mut seen = Seen::default();
    read_more(&mut bystander, &mut seen, "AAPL", 5).await;

    let (mut failing, _) = gw.client().await;
    subscribe(&mut failing, 1, &["MSFT"]).await;
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 3.0);
    // Its AAPL and NVDA reach the registry, then the request panics (see Config::panic_on_symbol).
    send(&mut failing, json!({"op": "subscribe", "id": 2, "symbols": ["AAPL", "NVDA", POISON]}))
        .await;
    let mut before_close = Vec::new();
    let close = loop {
        match tokio::time::timeout(STEP, failing.next()).await.expect("a close in time") {
            Some(Ok(Message::Text(text))) => {
                before_close.push(serde_json::from_str::<Value>(&text).expect("JSON"))
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("the session ended without a close frame: {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!((u16::from(close.code), close.reason.as_str()), (1011, "internal error"));
    // The request that panicked changed nothing the client can see: no ack, no AAPL or NVDA.
    assert!(
        before_close.iter().all(|m| m["id"] != 2 && m["symbol"] != "AAPL" && m["symbol"] != "NVDA"),
        "{before_close:?}"
    );
    // Closed the usual way: the client's close reply is read, then the socket ends.
    drop(failing);

    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="internal_error"}"#, 1.0, STEP).await;
    // Every registry record of the failed session is gone, the two it had not yet listed too:
    // only the bystander's two subscriptions are left.
    wait_metric(&gw, "gateway_subscriptions_active", 2.0, STEP).await;
    assert_eq!(gw.metric("gateway_sessions_active").await, 1.0);

    // The bystander on the same shard goes on receiving its quotes, in order.
    read_more(&mut bystander, &mut seen, "AAPL", 20).await;
    read_more(&mut bystander, &mut seen, "MSFT", 20).await;
    seen.assert_in_order();

    // The next session takes the failed one's place in the shard's table: it gets what it
    // subscribes to and nothing of the failed session's (its AAPL, NVDA and MSFT records).
    let (mut next, _) = gw.client().await;
    subscribe(&mut next, 1, &["NVDA"]).await;
    let mut next_seen = Seen::default();
    read_more(&mut next, &mut next_seen, "NVDA", 20).await;
    assert_eq!(next_seen.by_symbol.keys().collect::<Vec<_>>(), ["NVDA"], "{next_seen:?}");
    next_seen.assert_in_order();
    assert_eq!(gw.metric("gateway_subscriptions_active").await, 3.0);

    read_more(&mut bystander, &mut seen, "AAPL", 5).await;
    seen.assert_in_order();
    assert_eq!(gw.get("/healthz").await.status, 200);
    assert_eq!(
        gw.metric(r#"gateway_sessions_closed_total{reason="internal_error"}"#).await,
        1.0,
        "counted once"
    );
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_an_sse_stream_opens_ends_that_stream_only() {
    let (gw, feed) = TestGateway::start_manual(&SYMBOLS, |c| {
        c.shards = 1;
        c.panic_on_symbol = Some(POISON.into());
    })
    .await;
    let (stop, publisher) = publish_steadily(feed);
    let (mut bystander, _) = gw.client().await;
    subscribe(&mut bystander, 1, &["AAPL"]).await;
    let mut seen = Seen::default();
    read_more(&mut bystander, &mut seen, "AAPL", 3).await;

    // The stream's fixed subscription panics while the stream opens.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.expect("connect");
    let request = format!(
        "GET /sse?symbols=MSFT,{POISON} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
        gw.addr
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut got = Vec::new();
    tokio::time::timeout(STEP, stream.read_to_end(&mut got))
        .await
        .expect("the stream ends in time")
        .expect("read");
    let got = String::from_utf8_lossy(&got);
    // Its head went out, then the stream ended: no event, no quote.
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.to_ascii_lowercase().contains("text/event-stream"), "{got}");
    assert!(!got.contains("event: quote") && !got.contains("event: snapshot"), "{got}");
    wait_metric(&gw, r#"gateway_sessions_closed_total{reason="internal_error"}"#, 1.0, STEP).await;
    wait_metric(&gw, "gateway_subscriptions_active", 1.0, STEP).await;
    assert_eq!(gw.metric("gateway_sse_sessions_active").await, 0.0);

    // The connection was counted once, as a session, not also as a pending connection: new
    // connections are accepted as before (a pending count gone wrong refuses them all, 503).
    a_new_client_gets_quotes(&gw, "MSFT").await;
    assert_eq!(gw.get("/healthz").await.status, 200);
    read_more(&mut bystander, &mut seen, "AAPL", 10).await;
    seen.assert_in_order();
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shard_stops_the_gateway_with_an_error() {
    let (gw, feed) = TestGateway::start_manual(&SYMBOLS, |c| {
        c.panic_shard_on_symbol = Some(POISON.into());
    })
    .await;
    // Two sessions, one per shard (connections go round robin); one subscribes to the symbol
    // whose fan-out fails.
    let (mut a, _) = gw.client().await;
    let (mut b, _) = gw.client().await;
    subscribe(&mut a, 1, &[POISON]).await;
    subscribe(&mut b, 1, &["AAPL"]).await;
    feed.publish("AAPL", 2, quote(1)).await.expect("published");
    feed.publish(POISON, 2, quote(1)).await.expect("published");
    // The failed shard's session loses its socket; the other shard's is closed with 1001, as at
    // any stop.
    assert_eq!(close_code(&mut a, STEP).await, None);
    assert_eq!(close_code(&mut b, STEP).await, Some(1001));
    let ended = gw.ended(Duration::from_secs(10)).await;
    let message = format!("{:#}", ended.expect_err("run must fail"));
    assert!(message.contains("shard"), "{message}");
    assert!(message.contains("injected fault: the fan-out of POISON"), "{message}");
}
