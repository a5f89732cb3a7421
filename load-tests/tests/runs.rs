//! The `load-tests` binary end to end: short runs against a real gateway (in one process and
//! spread over worker processes and source addresses), and against a tiny in-test WebSocket
//! server that breaks the `seq` order on purpose, which the tool must catch and fail on.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const LOAD_TESTS: &str = env!("CARGO_BIN_EXE_load-tests");

/// The gateway binary next to this test's own build (`<target>/<profile>/gateway`), built with
/// `cargo build -p gateway` when it is not there yet.
fn gateway_bin() -> PathBuf {
    if let Ok(p) = std::env::var("GATEWAY_BIN") {
        if Path::new(&p).exists() {
            return p.into();
        }
    }
    // This test runs from <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("<target>/<profile>");
    let bin = profile_dir.join("gateway");
    if !bin.exists() {
        let target_dir = profile_dir.parent().expect("<target>");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "gateway"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build -p gateway");
        assert!(status.success(), "cargo build -p gateway failed");
    }
    bin
}

/// A gateway on an ephemeral port, killed (by its PID) when dropped.
struct Gateway {
    child: Child,
    port: u16,
}

impl Gateway {
    fn start(extra: &[&str]) -> Gateway {
        let mut child = Command::new(gateway_bin())
            .args(["--listen", "127.0.0.1:0", "--shards", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the gateway");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the gateway's first line");
        // `gateway: serving on http://127.0.0.1:PORT/ (WebSocket: ws://127.0.0.1:PORT/ws)`
        let port = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|hostport| hostport.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in the gateway's first line: {line:?}"));
        Gateway { child, port }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the tool to its end (bounded), returns its exit code and JSON report.
fn run_tool(args: &[String]) -> (i32, Value, String) {
    let dir = std::env::temp_dir().join(format!(
        "load-tests-{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let mut child = Command::new(LOAD_TESTS)
        .args(args)
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start load-tests");
    // Bounded: a run that hangs is killed and fails the test.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("load-tests did not finish within 40 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let _ = std::fs::remove_dir_all(&dir);
    (status.code().unwrap_or(-1), report, text)
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn assert_sane(r: &Value, text: &str, clients: u64) {
    assert_sane_connections(r, text, clients, 1);
}

/// As [`assert_sane`], for clients that each opened `connections` sessions (a storm: 2).
fn assert_sane_connections(r: &Value, text: &str, clients: u64, connections: u64) {
    let t = &r["total"];
    assert!(f(&t["deliveries"]) > 0.0, "no deliveries:\n{text}");
    assert_eq!(t["order_violations"], 0, "{text}");
    assert_eq!(t["parse_errors"], 0, "{text}");
    assert_eq!(t["protocol_errors"], 0, "{text}");
    assert_eq!(t["unexpected_symbols"], 0, "{text}");
    assert_eq!(t["welcome_not_first"], 0, "{text}");
    assert_eq!(t["closes_by_code"], serde_json::json!({}), "{text}");
    assert_eq!(t["errors_by_code"], serde_json::json!({}), "{text}");
    let fast = &r["fast"]["age_ms"];
    assert!(f(&fast["p50"]) > 0.0, "{text}");
    assert!(f(&fast["p50"]) <= f(&fast["p99"]), "{text}");
    assert!(f(&fast["p99"]) <= f(&fast["max"]), "{text}");
    assert_eq!(r["connect"]["failures"], 0, "{text}");
    assert_eq!(r["connect"]["successes"], clients, "{text}");
    assert_eq!(r["connect"]["open_at_window_end"], clients, "{text}");
    let welcomes: u64 =
        ["fast", "slow", "stuck"].iter().map(|c| r[c]["welcomes"].as_u64().unwrap()).sum();
    // Stuck clients never read their welcome; every other client did.
    let stuck = r["stuck"]["clients"].as_u64().unwrap();
    assert_eq!(welcomes + stuck * connections, clients * connections, "{text}");
    assert!(f(&r["tester"]["cpu_seconds"]) > 0.0, "{text}");
    assert_eq!(r["slo"]["passed"], true, "{text}");
}

#[test]
fn short_run_against_the_gateway_reports_sane_figures() {
    let gw = Gateway::start(&["--sim-rate", "1000"]);
    let pid = gw.child.id().to_string();
    let (code, r, text) = run_tool(&args(&[
        "--url",
        &gw.url(),
        "-c",
        "40",
        "--ramp-rate",
        "200",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--gateway-pid",
        &pid,
        "--max-connect-failures",
        "0",
        "--max-p99-ms",
        "60000",
        "--min-deliveries-per-sec",
        "1",
    ]));
    assert_eq!(code, 0, "{text}");
    assert_sane(&r, &text, 40);
    assert_eq!(r["settings"]["workers"], 1);
    assert_eq!(r["fast"]["clients"], 40);
    // 40 clients × 10 symbols: every one got its snapshot.
    assert_eq!(r["fast"]["snapshots"], 400, "{text}");
    let g = &r["gateway"];
    assert!(f(&g["cpu_seconds"]) > 0.0, "{text}");
    assert!(f(&g["rss_kib_window_end"]) > 0.0, "{text}");
    assert!(text.contains("measure]"), "no progress line:\n{text}");
    // The gateway's own view of the window, from its /metrics.
    let m = &r["gateway_metrics"];
    assert!(f(&m["feed_updates_per_sec"]) > 0.0, "{text}");
    assert!(m["quote_age_count"].as_u64().unwrap() > 0, "{text}");
}

#[test]
fn workers_and_source_addresses_carry_slow_and_stuck_clients() {
    let gw = Gateway::start(&["--sim-rate", "1000"]);
    let (code, r, text) = run_tool(&args(&[
        "--url",
        &gw.url(),
        "-c",
        "60",
        "--clients-per-process",
        "25",
        "--ramp-rate",
        "300",
        "--slow-fraction",
        "0.1",
        "--slow-rate",
        "5",
        "--stuck-fraction",
        "0.1",
        "--dist",
        "zipf",
        "--duration",
        "3",
        "--warmup",
        "1",
    ]));
    assert_eq!(code, 0, "{text}");
    assert_sane(&r, &text, 60);
    assert_eq!(r["settings"]["workers"], 3, "{text}");
    assert_eq!(
        r["settings"]["source_addrs"],
        serde_json::json!(["127.0.0.2", "127.0.0.3", "127.0.0.4"]),
        "{text}"
    );
    assert_eq!(r["fast"]["clients"], 48, "{text}");
    assert_eq!(r["slow"]["clients"], 6, "{text}");
    assert_eq!(r["stuck"]["clients"], 6, "{text}");
    assert_eq!(r["stuck"]["deliveries"], 0, "{text}");
    // A slow client reads at most 5 messages/s: over a 3 s window, 6 of them at most ~90.
    let slow = r["slow"]["deliveries"].as_u64().unwrap();
    assert!(slow <= 6 * 5 * 4, "slow clients read too fast: {slow}\n{text}");
    assert!(r["fast"]["deliveries"].as_u64().unwrap() > slow * 4, "{text}");
}

#[test]
fn refused_connections_are_counted_by_reason_and_fail_the_slo() {
    let gw = Gateway::start(&["--sim-rate", "500", "--max-connections", "5"]);
    let (code, r, text) = run_tool(&args(&[
        "--url",
        &gw.url(),
        "-c",
        "8",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--max-connect-failures",
        "0",
    ]));
    assert_eq!(code, 1, "{text}");
    assert_eq!(r["connect"]["successes"], 5, "{text}");
    assert_eq!(r["connect"]["failures"], 3, "{text}");
    assert_eq!(r["connect"]["failures_by_reason"], serde_json::json!({"http_503": 3}), "{text}");
    let failed: Vec<&Value> =
        r["slo"]["checks"].as_array().unwrap().iter().filter(|c| c["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "{text}");
    assert_eq!(failed[0]["name"], "max_connect_failures");
}

/// A WebSocket server that answers a subscribe like the gateway would, then sends one symbol's
/// quotes with `seq` 11, 12, 13, 9, 14, …: a violation every few quotes.
async fn serve_broken_order(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let now = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
            let welcome = format!(
                r#"{{"type":"welcome","protocol":1,"server":"broken","session":"x","ts":{},"heartbeat_ms":5000,"limits":{{"max_subscriptions":1000,"max_message_bytes":65536,"max_requests_per_sec":50}}}}"#,
                now()
            );
            if ws.send(Message::text(welcome)).await.is_err() {
                return;
            }
            // The subscribe request.
            let _ = ws.next().await;
            let ack = r#"{"type":"ack","id":1,"op":"subscribe","symbols":["AAA","BBB"]}"#;
            let _ = ws.send(Message::text(ack)).await;
            let snap = format!(
                r#"{{"type":"snapshot","symbol":"AAA","seq":10,"bid":1.0,"ask":1.1,"bid_size":1,"ask_size":1,"last":1.05,"last_size":1,"volume":1,"ts":{}}}"#,
                now()
            );
            let _ = ws.send(Message::text(snap)).await;
            let mut seq = 10u64;
            for i in 0..400u64 {
                seq = if i % 4 == 3 { seq - 3 } else { seq + 1 };
                let q = format!(
                    r#"{{"type":"quote","symbol":"AAA","seq":{seq},"bid":1.0,"ask":1.1,"bid_size":1,"ask_size":1,"last":1.05,"last_size":1,"volume":1,"ts":{}}}"#,
                    now()
                );
                if ws.send(Message::text(q)).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backwards_seq_is_caught_and_fails_the_run() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(serve_broken_order(listener));
    let argv = args(&[
        "--url",
        &format!("ws://127.0.0.1:{port}/ws"),
        "--symbols",
        "AAA,BBB",
        "-k",
        "2",
        "-c",
        "3",
        "--duration",
        "2",
        "--warmup",
        "0.5",
    ]);
    let (code, r, text) = tokio::task::spawn_blocking(move || run_tool(&argv)).await.unwrap();
    server.abort();
    assert_eq!(code, 1, "an order violation must fail the run:\n{text}");
    let v = r["total"]["order_violations"].as_u64().unwrap();
    assert!(v > 0, "{text}");
    assert_eq!(r["slo"]["passed"], false);
    let check = &r["slo"]["checks"][0];
    assert_eq!(check["name"], "max_order_violations");
    assert_eq!(check["passed"], false);
    assert!(text.contains("SLO MISSED"), "{text}");
}

#[test]
fn churning_sessions_reconnect_beside_the_clients_and_stay_out_of_the_figures() {
    let gw = Gateway::start(&["--sim-rate", "500"]);
    let (code, r, text) = run_tool(&args(&[
        "--url",
        &gw.url(),
        "-c",
        "5",
        "--duration",
        "3",
        "--warmup",
        "1",
        "--churn",
        "2",
        "--churn-hold-ms",
        "400",
        "--no-gateway-metrics",
    ]));
    assert_eq!(code, 0, "{text}");
    // The measured clients are as without churn: their figures do not include the churners'.
    assert_sane(&r, &text, 5);
    assert!(r["gateway_metrics"].is_null(), "--no-gateway-metrics: /metrics never read");
    let c = &r["churn"];
    // 2 at once, 400 ms each, for ~4 s: about 20 sessions, each closed by the handshake.
    let sessions = c["sessions"].as_u64().unwrap();
    assert!(sessions >= 8, "{text}");
    assert!(c["clean_closes"].as_u64().unwrap() + 2 >= sessions, "{text}");
    assert_eq!(c["server_closes_by_code"], serde_json::json!({}), "{text}");
    assert_eq!(c["failures_by_reason"], serde_json::json!({}), "{text}");
    // `["*"]`: every symbol's snapshot, then its quotes.
    assert!(c["messages"].as_u64().unwrap() >= sessions * 500, "{text}");
    assert!(text.contains("churn     :"), "no churn line in the summary:\n{text}");
}

#[test]
fn usage_errors_exit_2_and_help_names_every_flag() {
    let out =
        Command::new(LOAD_TESTS).args(["--slow-fraction", "2", "--symbols", "A"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A storm whose window cannot see the clients come back.
    let out = Command::new(LOAD_TESTS)
        .args(["--storm", "--storm-pause-ms", "2000", "--duration", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--storm-pause-ms"));
    let out = Command::new(LOAD_TESTS).arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(LOAD_TESTS).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--url",
        "--clients",
        "--ramp-rate",
        "--subs",
        "--symbols",
        "--dist",
        "--zipf-s",
        "--throttle-ms",
        "--slow-fraction",
        "--slow-rate",
        "--stuck-fraction",
        "--duration",
        "--warmup",
        "--json",
        "--max-p99-ms",
        "--min-deliveries-per-sec",
        "--max-order-violations",
        "--max-connect-failures",
        "--gateway-pid",
        "--clients-per-process",
        "--source-addrs",
        "--churn",
        "--churn-hold-ms",
        "--no-gateway-metrics",
        "--transport",
        "--storm",
        "--storm-pause-ms",
    ] {
        assert!(help.contains(flag), "--help does not explain {flag}");
    }
    assert!(!help.contains("--worker"), "the worker flag is internal");
}

/// A short reconnect storm against a real gateway: `clients` drop at the window's start and
/// come back after 500 ms resuming; returns the report after the checks both transports share.
fn storm_run(transport: &str, clients: u64) -> (Value, String) {
    let gw = Gateway::start(&["--sim-rate", "1000"]);
    let pid = gw.child.id().to_string();
    let clients_arg = clients.to_string();
    let (code, r, text) = run_tool(&args(&[
        "--url",
        &gw.url(),
        "--transport",
        transport,
        "-c",
        &clients_arg,
        "--ramp-rate",
        "500",
        "--duration",
        "2.5",
        "--warmup",
        "1",
        "--storm",
        "--storm-pause-ms",
        "500",
        "--gateway-pid",
        &pid,
        "--max-connect-failures",
        "0",
        "--max-p99-ms",
        "60000",
    ]));
    assert_eq!(code, 0, "{text}");
    assert_sane_connections(&r, &text, clients, 2);
    assert_eq!(r["settings"]["transport"], transport, "{text}");
    assert_eq!(r["settings"]["storm"], true, "{text}");
    let s = &r["storm"];
    assert_eq!(s["dropped"], clients, "{text}");
    assert_eq!(s["live_again"], clients, "{text}");
    assert!(f(&s["all_live_ms"]) > 0.0, "{text}");
    assert_eq!(s["failed_attempts_by_reason"], serde_json::json!({}), "{text}");
    // Every symbol held a seq (its first snapshot) and the pause is well inside the history:
    // each is resumed, none snapshotted, and every replay starts right after the held seq.
    let resumed = s["resumed_symbols"].as_u64().unwrap();
    let snapshotted = s["snapshotted_symbols"].as_u64().unwrap();
    assert!(resumed > 0, "{text}");
    assert_eq!(resumed + snapshotted, clients * 10, "{text}");
    assert_eq!(s["resume_gaps"], 0, "{text}");
    assert_eq!(s["resume_breaches"], 0, "{text}");
    assert_eq!(s["epoch_changes"], 0, "{text}");
    assert!(s["resume_exact"].as_u64().unwrap() > 0, "{text}");
    assert!(s["replayed_quotes"].as_u64().unwrap() > 0, "{text}");
    // The gateway counts the same resumes as the acks say.
    assert_eq!(f(&s["gateway_resumed_symbols"]), resumed as f64, "{text}");
    assert!(s["gateway_rss_kib_max"].as_u64().unwrap() > 0, "{text}");
    assert!(f(&s["gateway_cpu_percent_first_second"]) > 0.0, "{text}");
    // The first connection's snapshots, then only those of symbols not resumed.
    assert_eq!(r["fast"]["snapshots"].as_u64().unwrap(), clients * 10 + snapshotted, "{text}");
    assert!(text.contains("storm     :"), "no storm line in the summary:\n{text}");
    (r, text)
}

#[test]
fn a_websocket_reconnect_storm_resumes_every_client_without_a_gap() {
    storm_run("ws", 50);
}

#[test]
fn sse_clients_read_the_event_stream_and_resume_after_a_storm() {
    storm_run("sse", 20);
}
