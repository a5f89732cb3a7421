//! Section 1 of the contract: every HTTP row, and the handshake refusals before the upgrade.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn root_serves_the_dashboard_page() {
    let gw = TestGateway::start().await;
    let r = gw.get("/").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"), "{:?}", r.headers);
    assert!(r.body.to_ascii_lowercase().contains("<html"), "an HTML document");
}

#[tokio::test]
async fn metrics_is_prometheus_text_exposition() {
    let gw = TestGateway::start().await;
    let r = gw.get("/metrics").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    for name in [
        "gateway_sessions_active",
        "gateway_feed_updates_total",
        "gateway_quote_age_seconds_bucket",
        "process_open_fds",
    ] {
        assert!(r.body.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn healthz_answers_200_while_serving() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.get("/healthz").await.status, 200);
}

#[tokio::test]
async fn readyz_is_200_with_a_live_feed() {
    let gw = TestGateway::start().await;
    assert_eq!(gw.get("/readyz").await.status, 200);
}

#[tokio::test]
async fn readyz_is_503_when_the_feed_is_stale() {
    // One update a second against a 1 ms window: the feed is stale almost all the time.
    let gw = TestGateway::start_with(|c| {
        c.sim_rate = 1;
        c.sim_symbols = 1;
        c.staleness_ms = 1;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = gw.get("/readyz").await;
        statuses.push(r.status);
        if r.status == 503 {
            assert!(r.body.contains("no quote from the feed"), "{}", r.body);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never 503: {statuses:?}");
}

#[tokio::test]
async fn symbols_lists_every_subscribable_symbol() {
    let gw = TestGateway::start().await;
    let r = gw.get("/symbols").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let symbols = r.json();
    let symbols = symbols.as_array().unwrap();
    assert_eq!(symbols.len(), 500);
    assert_eq!(symbols[0], "AAPL");
    assert_eq!(symbols[1], "MSFT");
}

#[tokio::test]
async fn symbols_lists_the_most_active_first() {
    let names = [("AAPL", 2), ("MSFT", 2), ("NVDA", 2), ("AMZN", 2)];
    let (gw, feed) = TestGateway::start_manual(&names, |_| {}).await;
    let listed = |r: HttpResponse| r.json().as_array().unwrap().clone();
    // Too few updates to rank: the feed's own order.
    assert_eq!(listed(gw.get("/symbols").await), ["AAPL", "MSFT", "NVDA", "AMZN"]);
    let quote = |seq| proto::Quote {
        seq,
        bid: proto::Price(100),
        ask: proto::Price(101),
        last: proto::Price(100),
        ..proto::Quote::default()
    };
    // 5,000 updates (gateway::store::MIN_RANKED_UPDATES): NVDA 3,000, AMZN 2,000, MSFT none.
    for (symbol, n) in [("NVDA", 3_000), ("AMZN", 1_999), ("AAPL", 1)] {
        for seq in 1..=n {
            feed.publish(symbol, 2, quote(seq)).await.unwrap();
        }
    }
    // A ranking is reused for a second (gateway::store::RANKING_TTL_NS).
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(listed(gw.get("/symbols").await), ["NVDA", "AMZN", "AAPL", "MSFT"]);
    gw.stop().await;
}

#[tokio::test]
async fn snapshot_returns_the_latest_quote_of_each_symbol() {
    let gw = TestGateway::start().await;
    let r = gw.get("/snapshot?symbols=AAPL,EURUSD").await;
    assert_eq!(r.status, 200);
    let quotes = r.json();
    let quotes = quotes.as_array().unwrap();
    assert_eq!(quotes.len(), 2);
    assert_eq!(quotes[0]["symbol"], "AAPL");
    assert_eq!(quotes[1]["symbol"], "EURUSD");
    for q in quotes {
        assert_eq!(q["type"], "quote");
        for field in ["seq", "bid_size", "ask_size", "last_size", "volume", "ts"] {
            assert!(q[field].is_u64(), "{field} is an integer in {q}");
        }
        assert!(q["ask"].as_f64() > q["bid"].as_f64());
    }
    // Written with the symbol's precision: 2 decimals for AAPL, 5 for EURUSD.
    let decimals = |body: &str, field: &str, symbol: &str| {
        let at = body.find(&format!("\"symbol\":\"{symbol}\"")).unwrap();
        let rest = &body[at..];
        let value = rest[rest.find(&format!("\"{field}\":")).unwrap() + field.len() + 3..]
            .split([',', '}'])
            .next()
            .unwrap();
        value.split('.').nth(1).map_or(0, str::len)
    };
    assert_eq!(decimals(&r.body, "bid", "AAPL"), 2);
    assert_eq!(decimals(&r.body, "bid", "EURUSD"), 5);
}

#[tokio::test]
async fn snapshot_of_an_unknown_symbol_is_404() {
    let gw = TestGateway::start().await;
    let r = gw.get("/snapshot?symbols=AAPL,NOPE").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("NOPE"));
}

#[tokio::test]
async fn ws_without_an_upgrade_is_426() {
    let gw = TestGateway::start().await;
    let r = gw.get("/ws").await;
    assert_eq!(r.status, 426);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    assert_eq!(gw.metric("gateway_handshake_rejections_total{status=\"426\"}").await, 1.0);
}

#[tokio::test]
async fn any_other_path_is_404() {
    let gw = TestGateway::start().await;
    for path in ["/nope", "/ws/extra", "/metrics/x", "/favicon.ico"] {
        assert_eq!(gw.get(path).await.status, 404, "{path}");
    }
}

const UPGRADE: [(&str, &str); 4] = [
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
];

#[tokio::test]
async fn upgrade_at_the_connection_limit_is_503_with_retry_after() {
    let gw = TestGateway::start_with(|c| c.max_connections = 2).await;
    let (_a, _) = gw.client().await;
    let (_b, _) = gw.client().await;
    let r = http_get(gw.addr, "/ws", &UPGRADE).await;
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some());
    assert_eq!(gw.metric("gateway_handshake_rejections_total{status=\"503\"}").await, 1.0);
    drop(_a);
    // The place frees once the session ends.
    for _ in 0..50 {
        if http_get(gw.addr, "/ws", &UPGRADE).await.status == 101 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the freed place was never reusable");
}

#[tokio::test]
async fn origin_not_on_the_allow_list_is_403() {
    let gw =
        TestGateway::start_with(|c| c.allowed_origins = vec!["https://desk.example".into()]).await;
    let mut headers = UPGRADE.to_vec();
    headers.push(("Origin", "https://evil.example"));
    assert_eq!(http_get(gw.addr, "/ws", &headers).await.status, 403);
    headers.pop();
    headers.push(("Origin", "https://desk.example"));
    assert_eq!(http_get(gw.addr, "/ws", &headers).await.status, 101);
}

#[tokio::test]
async fn missing_or_invalid_token_is_401_and_a_valid_one_opens_a_session() {
    let gw = TestGateway::start_with(|c| c.access_tokens = vec!["s3cret".into()]).await;
    assert_eq!(http_get(gw.addr, "/ws", &UPGRADE).await.status, 401);
    let mut headers = UPGRADE.to_vec();
    headers.push(("Authorization", "Bearer wrong"));
    assert_eq!(http_get(gw.addr, "/ws", &headers).await.status, 401);
    headers.pop();
    headers.push(("Authorization", "Bearer s3cret"));
    assert_eq!(http_get(gw.addr, "/ws", &headers).await.status, 101);
    assert_eq!(http_get(gw.addr, "/ws?token=s3cret", &UPGRADE).await.status, 101);
    assert_eq!(gw.metric("gateway_handshake_rejections_total{status=\"401\"}").await, 2.0);
}
