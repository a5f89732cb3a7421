//! Resume (contract section 2, `resume` of `subscribe`; issue 12): a client that reconnects
//! with the last `seq` it holds gets exactly the updates it missed, in order, as quotes, or a
//! snapshot when the gateway cannot replay them all. Never partly replayed.
//!
//! Each test runs a real gateway on a manual feed, so every `seq` is known, and speaks real
//! WebSocket to it. What is asserted is the exact sequence of messages.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const EPOCH: &str = "test-epoch";

/// Subscribes with `resume` and returns the `ack`.
async fn resume(ws: &mut Ws, id: u64, symbols: &[&str], epoch: &str, seq: Value) -> Value {
    let request = json!({
        "op": "subscribe", "id": id, "symbols": symbols, "resume": {"epoch": epoch, "seq": seq},
    });
    send(ws, request).await;
    let (ack, before) = recv_until(ws, |m| m["id"] == id).await;
    assert!(before.iter().all(|m| m["type"] == "heartbeat"), "before the ack: {before:?}");
    assert_eq!(ack["type"], "ack", "{ack}");
    ack
}

/// The `resumed` list of an ack, sorted.
fn resumed(ack: &Value) -> Vec<String> {
    let mut names: Vec<String> = ack["resumed"]
        .as_array()
        .unwrap_or_else(|| panic!("an ack of a resume lists `resumed`: {ack}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Reads until every symbol of `upto` has reached its `seq`, returning each symbol's messages
/// as (type, seq), in arrival order. Checks the section 3 ordering rules as it goes.
async fn read_upto(ws: &mut Ws, upto: &[(&str, u64)]) -> HashMap<String, Vec<(String, u64)>> {
    let mut got: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    let done = |got: &HashMap<String, Vec<(String, u64)>>| {
        upto.iter()
            .all(|(s, want)| got.get(*s).and_then(|v| v.last()).is_some_and(|l| l.1 >= *want))
    };
    while !done(&got) {
        let m = recv(ws).await;
        let kind = m["type"].as_str().unwrap();
        if kind == "heartbeat" {
            continue;
        }
        assert!(kind == "quote" || kind == "snapshot", "unexpected {m}");
        let symbol = m["symbol"].as_str().unwrap().to_string();
        let seq = m["seq"].as_u64().unwrap();
        let list = got.entry(symbol.clone()).or_default();
        if let Some(&(_, last)) = list.last() {
            assert!(seq > last, "{symbol}: {kind} {seq} after {last}");
        }
        list.push((kind.to_string(), seq));
    }
    got
}

fn quotes(seqs: impl IntoIterator<Item = u64>) -> Vec<(String, u64)> {
    seqs.into_iter().map(|s| ("quote".to_string(), s)).collect()
}

/// A first session that subscribes to `symbols` and reads up to the latest of each, then
/// closes: what a client holds before it loses its connection.
async fn first_session(gw: &TestGateway, symbols: &[(&str, u64)]) -> String {
    let (mut ws, welcome) = gw.client().await;
    let names: Vec<&str> = symbols.iter().map(|(s, _)| *s).collect();
    subscribe(&mut ws, 1, &names).await;
    let got = read_upto(&mut ws, symbols).await;
    for (symbol, latest) in symbols {
        assert_eq!(got[*symbol], [("snapshot".to_string(), *latest)], "{symbol}");
    }
    ws.close(None).await.ok();
    welcome["epoch"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn resume_after_a_disconnect_replays_every_missed_seq_once_and_in_order() {
    let symbols = [("AAPL", 2), ("MSFT", 2), ("NVDA", 2), ("TSLA", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |_| {}).await;
    publish(&feed, "AAPL", 1..=5).await;
    publish(&feed, "MSFT", 1..=3).await;
    publish(&feed, "NVDA", 1..=7).await;
    publish(&feed, "TSLA", 1..=2).await;
    let epoch = first_session(&gw, &[("AAPL", 5), ("MSFT", 3), ("NVDA", 7), ("TSLA", 2)]).await;
    assert_eq!(epoch, EPOCH);

    // Offline: AAPL moves 40 times, MSFT 7, NVDA not at all, TSLA 3.
    publish(&feed, "AAPL", 6..=45).await;
    publish(&feed, "MSFT", 4..=10).await;
    publish(&feed, "TSLA", 3..=5).await;

    let (mut ws, welcome) = gw.client().await;
    assert_eq!(welcome["epoch"], epoch.as_str(), "the same feed run: the same epoch");
    // TSLA is asked for without a seq: a snapshot, as if there were no resume.
    let ack = resume(
        &mut ws,
        2,
        &["AAPL", "MSFT", "NVDA", "TSLA"],
        &epoch,
        json!({"AAPL": 5, "MSFT": 3, "NVDA": 7}),
    )
    .await;
    assert_eq!(ack["op"], "subscribe");
    assert_eq!(ack["symbols"], json!(["AAPL", "MSFT", "NVDA", "TSLA"]));
    assert_eq!(resumed(&ack), ["AAPL", "MSFT", "NVDA"]);

    let got = read_upto(&mut ws, &[("AAPL", 45), ("MSFT", 10), ("TSLA", 5)]).await;
    assert_eq!(got["AAPL"], quotes(6..=45), "every missed AAPL update, once, in order");
    assert_eq!(got["MSFT"], quotes(4..=10));
    assert_eq!(got["TSLA"], [("snapshot".to_string(), 5)]);
    assert!(!got.contains_key("NVDA"), "nothing missed, nothing sent: {:?}", got.get("NVDA"));

    // Then live, with nothing repeated.
    publish(&feed, "NVDA", 8..=8).await;
    publish(&feed, "AAPL", 46..=46).await;
    let got = read_upto(&mut ws, &[("NVDA", 8), ("AAPL", 46)]).await;
    assert_eq!((got["NVDA"].clone(), got["AAPL"].clone()), (quotes([8]), quotes([46])));
    assert!(recv_within(&mut ws, Duration::from_millis(200)).await.is_none());

    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"resumed\"}").await, 3.0);
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"snapshot\"}").await, 0.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_gap_longer_than_the_history_gets_a_snapshot_never_a_partial_replay() {
    // At most 32 updates held per symbol (the smallest setting).
    let symbols = [("AAPL", 2), ("MSFT", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |c| c.history_max_updates = 32).await;
    publish(&feed, "AAPL", 1..=5).await;
    publish(&feed, "MSFT", 1..=5).await;
    let epoch = first_session(&gw, &[("AAPL", 5), ("MSFT", 5)]).await;
    // AAPL misses 40 updates (only the last 32 are held); MSFT misses 32, all held.
    publish(&feed, "AAPL", 6..=45).await;
    publish(&feed, "MSFT", 6..=37).await;

    let (mut ws, _) = gw.client().await;
    let ack = resume(&mut ws, 2, &["AAPL", "MSFT"], &epoch, json!({"AAPL": 5, "MSFT": 5})).await;
    assert_eq!(resumed(&ack), ["MSFT"]);
    let got = read_upto(&mut ws, &[("AAPL", 45), ("MSFT", 37)]).await;
    assert_eq!(got["AAPL"], [("snapshot".to_string(), 45)], "no part of the gap replayed");
    assert_eq!(got["MSFT"], quotes(6..=37));
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"resumed\"}").await, 1.0);
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"snapshot\"}").await, 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_gap_older_than_the_history_window_gets_a_snapshot() {
    let symbols = [("AAPL", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |c| c.history_ms = 200).await;
    publish(&feed, "AAPL", 1..=5).await;
    let epoch = first_session(&gw, &[("AAPL", 5)]).await;
    publish(&feed, "AAPL", 6..=10).await;
    // Past the window: the next update drops 6..=10 from the history.
    tokio::time::sleep(Duration::from_millis(400)).await;
    publish(&feed, "AAPL", 11..=11).await;

    // From 5: 6..=10 are gone, a snapshot.
    let (mut old, _) = gw.client().await;
    let ack = resume(&mut old, 2, &["AAPL"], &epoch, json!({"AAPL": 5})).await;
    assert_eq!(resumed(&ack), Vec::<String>::new());
    assert_eq!(read_upto(&mut old, &[("AAPL", 11)]).await["AAPL"], [("snapshot".to_string(), 11)]);
    // From 10: 11 is held, replayed.
    let (mut recent, _) = gw.client().await;
    let ack = resume(&mut recent, 2, &["AAPL"], &epoch, json!({"AAPL": 10})).await;
    assert_eq!(resumed(&ack), ["AAPL"]);
    assert_eq!(read_upto(&mut recent, &[("AAPL", 11)]).await["AAPL"], quotes([11]));
    gw.stop().await;
}

#[tokio::test]
async fn a_wrong_epoch_gets_snapshots() {
    let symbols = [("AAPL", 2), ("MSFT", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |_| {}).await;
    publish(&feed, "AAPL", 1..=5).await;
    publish(&feed, "MSFT", 1..=5).await;
    first_session(&gw, &[("AAPL", 5), ("MSFT", 5)]).await;
    publish(&feed, "AAPL", 6..=8).await;

    // Another feed run's seq values mean nothing here, even those that would be held.
    let (mut ws, _) = gw.client().await;
    let ack =
        resume(&mut ws, 2, &["AAPL", "MSFT"], "another-run", json!({"AAPL": 5, "MSFT": 5})).await;
    assert_eq!(ack["symbols"], json!(["AAPL", "MSFT"]));
    assert_eq!(resumed(&ack), Vec::<String>::new(), "`resumed` is present, and empty");
    let got = read_upto(&mut ws, &[("AAPL", 8), ("MSFT", 5)]).await;
    assert_eq!(got["AAPL"], [("snapshot".to_string(), 8)]);
    // A snapshot of an unchanged symbol repeats the seq the client last had: allowed (§3).
    assert_eq!(got["MSFT"], [("snapshot".to_string(), 5)]);
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"snapshot\"}").await, 2.0);
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"resumed\"}").await, 0.0);
    gw.stop().await;
}

#[tokio::test]
async fn only_symbols_of_the_request_count_in_the_resume_metrics() {
    let symbols = [("AAPL", 2), ("MSFT", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |_| {}).await;
    publish(&feed, "AAPL", 1..=3).await;
    publish(&feed, "MSFT", 1..=3).await;
    // `seq` names MSFT (not requested) and FOO (unknown): neither is resumed nor snapshotted.
    let (mut ws, _) = gw.client().await;
    let ack = resume(&mut ws, 1, &["AAPL"], EPOCH, json!({"AAPL": 2, "MSFT": 1, "FOO": 1})).await;
    assert_eq!((ack["symbols"].clone(), resumed(&ack)), (json!(["AAPL"]), vec!["AAPL".into()]));
    assert_eq!(read_upto(&mut ws, &[("AAPL", 3)]).await["AAPL"], quotes([3]));
    assert!(recv_within(&mut ws, Duration::from_millis(200)).await.is_none(), "nothing for MSFT");
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"resumed\"}").await, 1.0);
    assert_eq!(gw.metric("gateway_resume_symbols_total{outcome=\"snapshot\"}").await, 0.0);
    gw.stop().await;
}

/// The rule (docs/protocol.md, Decisions): a resume replays every held update at once,
/// whatever `throttle_ms`; the throttle applies from the last replayed update on.
#[tokio::test]
async fn a_throttled_resume_replays_the_gap_then_throttles() {
    let symbols = [("AAPL", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |_| {}).await;
    publish(&feed, "AAPL", 1..=5).await;
    let epoch = first_session(&gw, &[("AAPL", 5)]).await;
    publish(&feed, "AAPL", 6..=25).await;

    let (mut ws, _) = gw.client().await;
    let request = json!({
        "op": "subscribe", "id": 2, "symbols": ["AAPL"], "throttle_ms": 1000,
        "resume": {"epoch": epoch, "seq": {"AAPL": 5}},
    });
    send(&mut ws, request).await;
    let (ack, _) = recv_until(&mut ws, |m| m["type"] == "ack").await;
    assert_eq!(resumed(&ack), ["AAPL"]);
    assert_eq!(read_upto(&mut ws, &[("AAPL", 25)]).await["AAPL"], quotes(6..=25));

    // Three live updates right after the replay: the throttle holds them back, then sends
    // the latest only.
    publish(&feed, "AAPL", 26..=28).await;
    let held = tokio::time::Instant::now();
    assert!(
        recv_within(&mut ws, Duration::from_millis(400)).await.is_none(),
        "the throttle applies after the replay"
    );
    let next = recv(&mut ws).await;
    assert_eq!((next["type"].as_str(), next["seq"].as_u64()), (Some("quote"), Some(28)), "{next}");
    assert!(held.elapsed() >= Duration::from_millis(400));
    gw.stop().await;
}

/// A resuming client that reads slower than the feed: its replay goes at its socket's pace, so
/// it falls behind the history window, and from there it gets the latest: conflated, never
/// queued. The gateway holds nothing for it beyond the shared, bounded history (a refused write
/// during a replay is no sign of slowness by itself: a replay is larger than a socket buffer).
#[tokio::test]
async fn a_slow_resuming_reader_is_conflated_not_queued() {
    const MISSED: u64 = 3_000;
    let symbols = [("AAPL", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |c| {
        c.history_ms = 300;
        c.history_max_updates = 10_000;
        c.send_buffer_bytes = 4096;
        c.write_budget_bytes = 4096;
        c.slow_client_timeout_ms = 10_000;
    })
    .await;
    publish(&feed, "AAPL", 1..=1).await;
    let epoch = first_session(&gw, &[("AAPL", 1)]).await;
    publish(&feed, "AAPL", 2..=MISSED + 1).await;

    let small =
        ClientOptions { recv_buffer: Some(2048), read_buffer: Some(2048), ..Default::default() };
    let (mut ws, _) = connect_client(gw.addr, small).await;
    let request = json!({
        "op": "subscribe", "id": 2, "symbols": ["AAPL"], "resume": {"epoch": epoch, "seq": {"AAPL": 1}},
    });
    send(&mut ws, request).await;
    // Not reading: the gateway's writes fill both socket buffers and stop, while the missed
    // updates age out of the 300 ms window (the next update prunes them).
    tokio::time::sleep(Duration::from_millis(800)).await;
    publish(&feed, "AAPL", MISSED + 2..=MISSED + 2).await;
    let (ack, _) = recv_until(&mut ws, |m| m["type"] == "ack").await;
    assert_eq!(resumed(&ack), ["AAPL"]);
    let got = read_upto(&mut ws, &[("AAPL", MISSED + 2)]).await["AAPL"].clone();
    assert!(got.iter().all(|(kind, _)| kind == "quote"), "a resumed symbol gets no snapshot");
    let seqs: Vec<u64> = got.iter().map(|(_, s)| *s).collect();
    let contiguous = seqs.iter().zip(2..).take_while(|(s, want)| **s == *want).count();
    assert!(contiguous > 0, "the replay starts at the first missed update: {:?}", &seqs[..5]);
    assert!(
        (seqs.len() as u64) < MISSED / 2,
        "{} of {MISSED} missed updates delivered: a backlog, not conflation",
        seqs.len()
    );
    assert_eq!(seqs.last(), Some(&(MISSED + 2)), "the latest is delivered");
    assert!(gw.metric("gateway_conflated_updates_total").await > 0.0);
    // Caught up, it is live again: the next update arrives as the next seq.
    publish(&feed, "AAPL", MISSED + 3..=MISSED + 3).await;
    assert_eq!(read_upto(&mut ws, &[("AAPL", MISSED + 3)]).await["AAPL"], quotes([MISSED + 3]));
    gw.stop().await;
}

#[tokio::test]
async fn a_resume_of_a_symbol_already_subscribed_is_a_resubscribe() {
    let symbols = [("AAPL", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |_| {}).await;
    publish(&feed, "AAPL", 1..=5).await;
    let (mut ws, _) = gw.client().await;
    subscribe(&mut ws, 1, &["AAPL"]).await;
    assert_eq!(read_upto(&mut ws, &[("AAPL", 5)]).await["AAPL"], [("snapshot".to_string(), 5)]);
    // Nothing to replay within a session: the options are replaced and a fresh snapshot goes
    // (section 2), with the seq it already had (section 3).
    let ack = resume(&mut ws, 2, &["AAPL"], EPOCH, json!({"AAPL": 3})).await;
    assert_eq!(resumed(&ack), Vec::<String>::new());
    let m = recv(&mut ws).await;
    assert_eq!((m["type"].as_str(), m["seq"].as_u64()), (Some("snapshot"), Some(5)), "{m}");
    gw.stop().await;
}

/// A long replay of one symbol takes turns with the session's other symbols: MSFT's one missed
/// update comes while AAPL's 2,000 are still being replayed, not after all of them (a client
/// that reads slowly would otherwise see nothing of MSFT for as long as AAPL's replay lasts).
#[tokio::test]
async fn a_long_replay_does_not_hold_back_the_other_symbols() {
    const MISSED: u64 = 2_000;
    let symbols = [("AAPL", 2), ("MSFT", 2)];
    let (gw, feed) = TestGateway::start_manual(&symbols, |c| {
        c.history_max_updates = 10_000;
    })
    .await;
    publish(&feed, "AAPL", 1..=1).await;
    publish(&feed, "MSFT", 1..=1).await;
    let epoch = first_session(&gw, &[("AAPL", 1), ("MSFT", 1)]).await;
    publish(&feed, "AAPL", 2..=MISSED + 1).await;
    publish(&feed, "MSFT", 2..=2).await;

    let (mut ws, _) = gw.client().await;
    let ack = resume(&mut ws, 2, &["AAPL", "MSFT"], &epoch, json!({"AAPL": 1, "MSFT": 1})).await;
    assert_eq!(resumed(&ack), ["AAPL", "MSFT"]);
    let mut aapl_before_msft = 0;
    loop {
        let m = recv(&mut ws).await;
        match (m["type"].as_str(), m["symbol"].as_str()) {
            (Some("quote"), Some("MSFT")) => {
                assert_eq!(m["seq"], 2, "{m}");
                break;
            }
            (Some("quote"), Some("AAPL")) => aapl_before_msft += 1,
            _ => {}
        }
    }
    assert!(
        aapl_before_msft < MISSED,
        "MSFT waited for all {aapl_before_msft} of AAPL's replayed updates"
    );
    let rest = read_upto(&mut ws, &[("AAPL", MISSED + 1)]).await["AAPL"].len() as u64;
    assert_eq!(aapl_before_msft + rest, MISSED, "every missed AAPL update, once");
    gw.stop().await;
}
