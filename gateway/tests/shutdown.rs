//! Graceful stop: SIGINT or SIGTERM stops accepting, closes every session with 1001, and
//! exits within the grace period; a second signal during that drain exits at once (130 or
//! 143). Driven on the real binary, with real signals.

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

/// A session that upgraded and then says nothing more: it never answers the gateway's close
/// frame, so its close takes the whole close grace.
async fn silent_session(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    stream
}

/// The first signal starts the drain; `second` during it exits at once with `status`.
async fn a_second_signal_exits_at_once(first: libc::c_int, second: libc::c_int, status: i32) {
    // A grace period far longer than the test waits: only the second signal can end it soon.
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--listen", "127.0.0.1:0", "--shutdown-grace-ms", "60000"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the gateway binary");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let wait_for = |what: &str| -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = lines
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("no log line with {what:?}; saw {seen:#?}"));
            let found = line.contains(what);
            seen.push(line);
            if found {
                return seen;
            }
        }
    };
    wait_for("gateway serving");
    let _silent = silent_session(addr).await;

    // SAFETY: signalling a child process this test started.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, first) }, 0);
    wait_for("stop requested");
    // The drain is under way, and the silent session holds it (for its close grace, 1 s).
    wait_for("shutting down: closing every session with 1001");
    let sent = std::time::Instant::now();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, second) }, 0);
    let said = wait_for("second stop signal during the drain: exiting now");
    let exited = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert_eq!(exited.code(), Some(status), "{exited}; log: {said:#?}");
    // Not a speed test: a bound far under the 60 s grace, far over any exit.
    assert!(sent.elapsed() < Duration::from_secs(10), "exited {:?} after", sent.elapsed());
}

#[tokio::test]
async fn a_second_sigterm_during_the_drain_exits_at_once_with_143() {
    a_second_signal_exits_at_once(libc::SIGTERM, libc::SIGTERM, 143).await;
}

#[tokio::test]
async fn a_second_sigint_during_the_drain_exits_at_once_with_130() {
    a_second_signal_exits_at_once(libc::SIGINT, libc::SIGINT, 130).await;
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
