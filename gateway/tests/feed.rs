//! The feed as an input of the gateway: a manual feed publishes exact quotes when the test
//! says so, a feed's epoch reaches every `welcome`, and a failing feed stops the gateway.

mod common;

use std::time::Duration;

use common::*;
use proto::{Price, Quote};
use serde_json::json;

fn quote(seq: u64, bid: i64) -> Quote {
    Quote {
        seq,
        bid: Price(bid),
        ask: Price(bid + 2),
        bid_size: 300,
        ask_size: 500,
        last: Price(bid + 1),
        last_size: 100,
        volume: 1_203_400 + seq,
        ts: 1_763_775_600_123_456_789 + seq,
    }
}

#[tokio::test]
async fn a_manual_feed_delivers_exactly_what_it_publishes() {
    let (gw, feed) = TestGateway::start_manual(&[("AAPL", 2), ("MSFT", 2)], |_| {}).await;
    let (mut ws, welcome) = gw.client().await;
    assert_eq!(welcome["epoch"], "test-epoch");
    feed.publish("AAPL", 2, quote(1041, 18724)).await.unwrap();
    let ack = subscribe(&mut ws, 1, &["AAPL"]).await;
    assert_eq!(ack["symbols"], json!(["AAPL"]));
    let snapshot = recv(&mut ws).await;
    assert_eq!(
        snapshot.to_string(),
        r#"{"ask":187.26,"ask_size":500,"bid":187.24,"bid_size":300,"last":187.25,"last_size":100,"seq":1041,"symbol":"AAPL","ts":1763775600123457830,"type":"snapshot","volume":1204441}"#
    );
    for seq in 1042..1045 {
        feed.publish("AAPL", 2, quote(seq, 18724 + seq as i64 - 1041)).await.unwrap();
        let q = recv(&mut ws).await;
        assert_eq!((q["type"].as_str(), q["seq"].as_u64()), (Some("quote"), Some(seq)), "{q}");
    }
    // A stale update is dropped and counted, and never reaches a session.
    assert_eq!(
        feed.publish("AAPL", 2, quote(1043, 1)).await,
        Some(gateway::feed::Published::Stale)
    );
    assert_eq!(gw.metric("gateway_feed_dropped_updates_total").await, 1.0);
    assert!(recv_within(&mut ws, Duration::from_millis(200)).await.is_none());
    gw.stop().await;
}

#[tokio::test]
async fn the_simulator_announces_one_epoch_per_process_start() {
    let gw = TestGateway::start().await;
    let (_a, first) = gw.client().await;
    let (_b, second) = gw.client().await;
    let epoch = first["epoch"].as_str().unwrap().to_string();
    assert!(!epoch.is_empty());
    assert_eq!(second["epoch"], epoch.as_str());
    gw.stop().await;
    let again = TestGateway::start().await;
    let (_c, third) = again.client().await;
    assert_ne!(third["epoch"], epoch.as_str(), "a new simulator run reuses seq values");
    again.stop().await;
}

#[tokio::test]
async fn a_failing_feed_closes_every_session_and_stops_the_gateway_with_an_error() {
    let (gw, feed) = TestGateway::start_manual(&[("AAPL", 2)], |_| {}).await;
    let (mut ws, _) = gw.client().await;
    feed.fail("upstream gone");
    assert_eq!(close_code(&mut ws, STEP).await, Some(1001));
    let ended = gw.ended(Duration::from_secs(10)).await;
    let message = format!("{:#}", ended.expect_err("run must fail"));
    assert!(message.contains("upstream gone"), "{message}");
}
