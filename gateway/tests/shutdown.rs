//! Graceful stop: SIGINT or SIGTERM stops accepting, closes every session with 1001, and
//! exits within the grace period. Driven on the real binary, with a real signal.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Starts the `gateway` binary on an ephemeral port; returns it and its address.
fn spawn_gateway(args: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", "127.0.0.1:0", "--shutdown-grace-ms", "3000"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the gateway binary");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .unwrap();
    (child, addr)
}

async fn stops_with_1001_on(signal: libc::c_int) {
    let (mut child, addr) = spawn_gateway(&[]);
    let mut clients = Vec::new();
    for i in 0..3 {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
        assert_eq!(recv(&mut ws).await["type"], "welcome");
        subscribe(&mut ws, i, &["AAPL", "MSFT"]).await;
        clients.push(ws);
    }
    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    for ws in &mut clients {
        assert_eq!(close_code(ws, Duration::from_secs(5)).await, Some(1001));
    }
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exits cleanly: {status}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "no longer accepting");
}

#[tokio::test]
async fn sigterm_closes_every_session_with_1001_and_exits() {
    stops_with_1001_on(libc::SIGTERM).await;
}

#[tokio::test]
async fn sigint_closes_every_session_with_1001_and_exits() {
    stops_with_1001_on(libc::SIGINT).await;
}

#[tokio::test]
async fn a_bad_flag_exits_64_naming_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--heartbeat-ms", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--heartbeat-ms"));
}

#[tokio::test]
async fn an_unsupported_feed_exits_64_before_serving() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", "127.0.0.1:0", "--feed", "kafka://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty(), "nothing served");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--feed kafka://x"));
}

#[tokio::test]
async fn help_explains_every_setting_with_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--listen", "GATEWAY_LISTEN"),
        ("--feed", "GATEWAY_FEED"),
        ("--max-connections", "GATEWAY_MAX_CONNECTIONS"),
    ] {
        assert!(help.contains(flag) && help.contains(env), "{flag} / {env} in --help");
    }
}

#[tokio::test]
async fn library_stop_closes_sessions_with_1001() {
    let gw = TestGateway::start().await;
    let (mut a, _) = gw.client().await;
    let (mut b, _) = gw.client().await;
    subscribe(&mut a, 1, &["*"]).await;
    let stop = tokio::spawn(gw.stop());
    assert_eq!(close_code(&mut a, Duration::from_secs(5)).await, Some(1001));
    assert_eq!(close_code(&mut b, Duration::from_secs(5)).await, Some(1001));
    stop.await.unwrap();
}
