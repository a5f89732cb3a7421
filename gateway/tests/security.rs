//! Access control, TLS and the PROXY protocol end to end (issue 13; contract sections 1 and 4;
//! decisions 26-31 and 40-43 of docs/protocol.md): every refusal path, a token revoked or
//! narrowed by a real SIGHUP to the real binary, a JWT that expires under a live session, TLS
//! with clients that verify the certificate (rustls, curl), PROXY protocol v2 from a real
//! HAProxy, and a run whose logs and metrics are searched for every credential it used.
//!
//! External programs come from Debian (scripts/setup.sh): `openssl` (through
//! scripts/dev-cert.sh), `curl`, `haproxy`. A missing one fails its test with the fix, never
//! skips it.

mod common;

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secret of the JWT tests (32 bytes, the least the gateway accepts).
const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";

// ------------------------------------------------------------------------------ files

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir()
            .join(format!("gateway-security-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a secret-holding file as an operator should (mode 600), replacing it atomically (a
/// rename, so a SIGHUP never reads half a file).
fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A token file: `(name, token, symbols)` entries, the token in clear.
fn token_file(entries: &[(&str, &str, &[&str])]) -> String {
    let mut out = String::new();
    for (name, token, symbols) in entries {
        let symbols: Vec<String> = symbols.iter().map(|s| format!("{s:?}")).collect();
        out.push_str(&format!(
            "[[token]]\nname = {name:?}\ntoken = {token:?}\nsymbols = [{}]\n\n",
            symbols.join(", ")
        ));
    }
    out
}

/// The SHA-256 of a token, as a token file's `sha256` (with the `sha256sum` a real operator
/// uses, so the test does not lean on the gateway's own digest code).
fn sha256_hex(token: &str) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child.stdin.take().unwrap().write_all(token.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

/// A fresh self-signed certificate from scripts/dev-cert.sh (openssl): `dir/cert.pem`,
/// `dir/key.pem`, for localhost, 127.0.0.1 and ::1.
fn dev_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/dev-cert.sh");
    let status = Command::new(script)
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("scripts/dev-cert.sh runs (openssl: scripts/setup.sh installs it)");
    assert!(status.success(), "scripts/dev-cert.sh failed");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// An HS256 JWT signed with [`JWT_SECRET`].
fn jwt(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// Every byte but ASCII letters and digits as `%XX` (what `encodeURIComponent` does, and more).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(
            |b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            },
        )
        .collect()
}

// ------------------------------------------------------------------------------ clients

/// A WebSocket session on `path` (with its query) and an optional `Authorization` header:
/// the client past its `welcome`, or the HTTP status that refused it.
async fn ws_open(addr: SocketAddr, path: &str, auth: Option<&str>) -> Result<(Ws, Value), u16> {
    ws_open_from(addr, path, auth, None).await
}

/// [`ws_open`] from a chosen local address (any of 127.0.0.0/8).
async fn ws_open_from(
    addr: SocketAddr,
    path: &str,
    auth: Option<&str>,
    from: Option<std::net::Ipv4Addr>,
) -> Result<(Ws, Value), u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(ip) = from {
        socket.bind(SocketAddr::new(ip.into(), 0)).expect("bind the client address");
    }
    let stream = socket.connect(addr).await.expect("connect");
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    if let Some(auth) = auth {
        request.headers_mut().insert("Authorization", auth.parse().unwrap());
    }
    let handshake = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream));
    match tokio::time::timeout(STEP, handshake).await.expect("handshake in time") {
        Ok((mut ws, _)) => {
            let welcome = recv(&mut ws).await;
            assert_eq!(welcome["type"], "welcome", "{welcome}");
            Ok((ws, welcome))
        }
        Err(tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(e) => panic!("unexpected handshake failure: {e}"),
    }
}

/// The next JSON message of a WebSocket over any stream (control frames skipped).
async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Value {
    loop {
        match tokio::time::timeout(STEP, ws.next()).await.expect("a message in time") {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Sends a `ping` request and waits for its `pong`: every message decided before it has
/// arrived by then.
async fn ping_over<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    id: u64,
) -> Vec<Value> {
    ws.send(Message::text(json!({"op": "ping", "id": id}).to_string())).await.unwrap();
    let mut before = Vec::new();
    loop {
        let m = next_json(ws).await;
        if m["type"] == "pong" && m["id"] == id {
            return before;
        }
        before.push(m);
    }
}

/// Every message arriving in the next `wait` (a fixed window: the simulated feed never goes
/// quiet, so waiting for a gap would never end).
async fn drain(ws: &mut Ws, wait: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return out;
        }
        match recv_within(ws, left).await {
            Some(m) => out.push(m),
            None => return out,
        }
    }
}

/// A Server-Sent Events stream read by hand.
struct Sse {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Sse {
    /// Opens `path`; returns the status and, for a 200, the stream past its head.
    async fn open(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, Sse) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        if let Some(auth) = auth {
            request.push_str(&format!("Authorization: {auth}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut sse = Sse { stream, buf: Vec::new() };
        let head = tokio::time::timeout(STEP, sse.until(b"\r\n\r\n")).await.expect("a head");
        let head = String::from_utf8_lossy(&head.expect("a head")).to_string();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, sse)
    }

    /// Bytes up to and including `end`; `None` at the end of the stream.
    async fn until(&mut self, end: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.buf.windows(end.len()).position(|w| w == end) {
                return Some(self.buf.drain(..at + end.len()).collect());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next event as (type, data); `None` once the server ended the stream.
    async fn event(&mut self, wait: Duration) -> Option<(String, Value)> {
        let raw =
            tokio::time::timeout(wait, self.until(b"\n\n")).await.expect("an event in time")?;
        let text = String::from_utf8(raw).unwrap();
        let kind = text.lines().find_map(|l| l.strip_prefix("event: ")).unwrap().to_string();
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        Some((kind, serde_json::from_str(data).unwrap()))
    }
}

fn metric_of(body: &str, series: &str) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

/// Polls `/metrics` at `addr` until `series` is `value`, failing after `wait`.
async fn await_metric(addr: SocketAddr, series: &str, value: f64, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        let now = metric_of(&http_get(addr, "/metrics", &[]).await.body, series);
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {now}, expected {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ------------------------------------------------------------------------------ processes

/// The `gateway` binary, its log in a file (ANSI colours off), stopped by its PID.
struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    log: PathBuf,
    /// Held so the gateway's stdout stays open.
    _stdout: BufReader<ChildStdout>,
}

impl GatewayProcess {
    fn spawn(args: &[&str], log: &Path, rust_log: &str) -> GatewayProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--listen", "127.0.0.1:0", "--shards", "2", "--server-id", "gw-sec"])
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start the gateway binary");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut address_of = |what: &str| -> SocketAddr {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            line.split("://")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| {
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    panic!("no {what} address in {line:?}; log:\n{log}")
                })
        };
        let addr = address_of("serving");
        let metrics_addr = args.contains(&"--metrics-listen").then(|| address_of("metrics"));
        GatewayProcess { child, addr, metrics_addr, log: log.to_path_buf(), _stdout: stdout }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling a child process this test started, by its PID.
        assert_eq!(unsafe { libc::kill(self.child.id() as libc::pid_t, signal) }, 0);
    }

    /// The log so far, without ANSI escapes.
    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Waits until the log has a line with every one of `parts`; returns it.
    async fn await_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + 2 * STEP;
        loop {
            if let Some(line) = self.log().lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(Instant::now() < deadline, "no log line with {parts:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, wait for the exit, and the whole log.
    async fn stop(mut self) -> String {
        self.signal(libc::SIGTERM);
        let mut child = std::mem::replace(&mut self.child, Command::new("true").spawn().unwrap());
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "the gateway exits cleanly: {status}\n{}", self.log());
        self.log()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends a request on a fresh connection and returns everything the server sent back before
/// it closed (or nothing, if it only closed).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(STEP, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server closed the connection in time");
    out
}

// ------------------------------------------------------------------------------ refusals

const ALICE: &str = "alice-token-0123456789";
const BOB: &str = "bob-token-0123456789ab";

/// A gateway with a token file: alice may see AAPL and MSFT, bob every symbol.
async fn gateway_with_tokens(
    dir: &TempDir,
    configure: impl FnOnce(&mut gateway::Config),
) -> TestGateway {
    let tokens = dir.join("tokens.toml");
    write_secret(
        &tokens,
        &token_file(&[("alice", ALICE, &["AAPL", "MSFT"]), ("bob", BOB, &["*"])]),
    );
    TestGateway::start_with(|c| {
        c.tokens_file = Some(tokens);
        configure(c);
    })
    .await
}

#[tokio::test]
async fn every_endpoint_refuses_a_missing_or_unknown_token_with_401() {
    let dir = TempDir::new("refusals");
    let gw = gateway_with_tokens(&dir, |_| {}).await;
    let upgrade = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13"),
    ];
    let endpoints = ["/ws", "/sse?symbols=AAPL", "/snapshot?symbols=AAPL", "/symbols"];
    let near_miss = "alice-token-012345678"; // alice's token less its last character
    for path in endpoints {
        let headers: &[(&str, &str)] = if path == "/ws" { &upgrade } else { &[] };
        let missing = http_get(gw.addr, path, headers).await;
        assert_eq!(missing.status, 401, "{path}: {}", missing.body);
        assert_eq!(missing.header("WWW-Authenticate"), Some("Bearer"), "{path}");
        assert!(missing.body.contains("(missing)"), "{path}: {}", missing.body);
        assert_eq!(missing.header("X-Content-Type-Options"), Some("nosniff"), "{path}");

        let sep = if path.contains('?') { '&' } else { '?' };
        let unknown = http_get(gw.addr, &format!("{path}{sep}token={near_miss}"), headers).await;
        assert_eq!(unknown.status, 401, "{path}");
        assert!(unknown.body.contains("(unknown_token)"), "{path}: {}", unknown.body);
        assert!(!unknown.body.contains(near_miss), "the answer never echoes the credential");

        let mut basic = headers.to_vec();
        basic.push(("Authorization", "Basic YWxpY2U6c2VjcmV0"));
        let scheme = http_get(gw.addr, path, &basic).await;
        assert_eq!(scheme.status, 401, "{path}");
        assert!(scheme.body.contains("(unsupported_scheme)"), "{path}: {}", scheme.body);
    }
    // A WebSocket client sees the same refusal.
    assert_eq!(ws_open(gw.addr, "/ws", None).await.err(), Some(401));
    assert_eq!(
        ws_open(gw.addr, "/ws", Some(&format!("Bearer {near_miss}"))).await.err(),
        Some(401)
    );
    // And the right token, in either place (`Bearer` in any case), opens a session.
    assert!(ws_open(gw.addr, "/ws", Some(&format!("bEaReR {ALICE}"))).await.is_ok());
    assert!(ws_open(gw.addr, &format!("/ws?token={}", percent_encode(BOB)), None).await.is_ok());

    // What needs no credential, with nosniff on every answer.
    for path in ["/", "/healthz", "/metrics"] {
        let r = gw.get(path).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("X-Content-Type-Options"), Some("nosniff"), "{path}");
    }
    // The page: no framing, no inline code but its own (by hash), no token in a Referer.
    let page = gw.get("/").await;
    let csp = page.header("Content-Security-Policy").expect("a CSP on /");
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(page.header("X-Frame-Options"), Some("DENY"));
    assert_eq!(page.header("Referrer-Policy"), Some("no-referrer"));
    assert_eq!(gw.metric("gateway_auth_failures_total{reason=\"missing\"}").await, 5.0);
    assert_eq!(gw.metric("gateway_auth_failures_total{reason=\"unknown_token\"}").await, 5.0);
    assert_eq!(gw.metric("gateway_auth_failures_total{reason=\"unsupported_scheme\"}").await, 4.0);
    // Only /ws and /sse are upgrades: 2 refusals of each kind there, and the two clients'.
    assert_eq!(gw.metric("gateway_handshake_rejections_total{status=\"401\"}").await, 8.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_symbol_outside_the_entitlement_is_refused_on_ws_snapshot_and_sse() {
    let dir = TempDir::new("forbidden");
    let gw = gateway_with_tokens(&dir, |_| {}).await;
    let alice = format!("Bearer {ALICE}");

    // /ws: the entitled symbol is accepted, the other answered `forbidden`.
    let (mut ws, _) = ws_open(gw.addr, "/ws", Some(&alice)).await.unwrap();
    send(&mut ws, json!({"op": "subscribe", "id": 1, "symbols": ["AAPL", "NVDA"]})).await;
    let ack = recv(&mut ws).await;
    assert_eq!((ack["type"].as_str(), &ack["symbols"]), (Some("ack"), &json!(["AAPL"])), "{ack}");
    let error = recv(&mut ws).await;
    assert_eq!(error["code"], "forbidden", "{error}");
    assert_eq!(error["symbols"], json!(["NVDA"]));
    // ["*"] means every entitled symbol: only AAPL and MSFT ever arrive.
    send(&mut ws, json!({"op": "subscribe", "id": 2, "symbols": ["*"]})).await;
    let seen: std::collections::BTreeSet<String> = drain(&mut ws, Duration::from_millis(800))
        .await
        .iter()
        .filter_map(|m| m["symbol"].as_str().map(String::from))
        .collect();
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["AAPL", "MSFT"]);

    // /snapshot: 403 naming the first forbidden symbol, before any 404 of an unknown one.
    let auth = [("Authorization", alice.as_str())];
    let ok = http_get(gw.addr, "/snapshot?symbols=AAPL,MSFT", &auth).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.json().as_array().unwrap().len(), 2);
    let forbidden = http_get(gw.addr, "/snapshot?symbols=AAPL,NVDA", &auth).await;
    assert_eq!(
        (forbidden.status, forbidden.body.as_str()),
        (403, "not entitled to symbol: NVDA\n")
    );
    let before_404 = http_get(gw.addr, "/snapshot?symbols=NOSUCH,NVDA", &auth).await;
    assert_eq!(before_404.status, 403, "{}", before_404.body);

    // /symbols lists only the entitled ones.
    let symbols = http_get(gw.addr, "/symbols", &auth).await;
    assert_eq!(symbols.json(), json!(["AAPL", "MSFT"]));

    // /sse: 403 when nothing named is entitled; otherwise the entitled ones, and a
    // `forbidden` error event for the rest.
    let (status, _) = Sse::open(gw.addr, "/sse?symbols=NVDA,TSLA", Some(&alice)).await;
    assert_eq!(status, 403);
    let (status, mut sse) = Sse::open(gw.addr, "/sse?symbols=AAPL,NVDA", Some(&alice)).await;
    assert_eq!(status, 200);
    let kinds: Vec<(String, Value)> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(sse.event(STEP).await.expect("an event"));
        }
        v
    };
    assert_eq!(kinds[0].0, "welcome");
    assert_eq!((kinds[1].0.as_str(), &kinds[1].1["symbols"]), ("ack", &json!(["AAPL"])));
    assert_eq!(kinds[2].0, "error");
    assert_eq!(
        (&kinds[2].1["code"], &kinds[2].1["symbols"]),
        (&json!("forbidden"), &json!(["NVDA"]))
    );
    assert_eq!((kinds[3].0.as_str(), &kinds[3].1["symbol"]), ("snapshot", &json!("AAPL")));
    assert_eq!(gw.metric("gateway_handshake_rejections_total{status=\"403\"}").await, 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn an_origin_off_the_allow_list_is_403_even_with_a_valid_token() {
    let dir = TempDir::new("origin");
    let gw = gateway_with_tokens(&dir, |c| c.allowed_origins = vec!["https://desk.example".into()])
        .await;
    let path = format!("/ws?token={ALICE}");
    let upgrade = |origin: &'static str| {
        vec![
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("Sec-WebSocket-Version", "13"),
            ("Origin", origin),
        ]
    };
    let evil = http_get(gw.addr, &path, &upgrade("https://evil.example")).await;
    assert_eq!((evil.status, evil.body.as_str()), (403, "origin not allowed\n"));
    // Checked before the credential: no token and a bad Origin is 403, not 401.
    let no_token = http_get(gw.addr, "/ws", &upgrade("https://evil.example")).await;
    assert_eq!(no_token.status, 403);
    let sse = http_get(
        gw.addr,
        &format!("/sse?symbols=AAPL&token={ALICE}"),
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(sse.status, 403);
    let good = http_get(gw.addr, &path, &upgrade("https://desk.example")).await;
    assert_eq!(good.status, 101);
    assert_eq!(gw.metric("gateway_auth_failures_total{reason=\"missing\"}").await, 0.0);
    gw.stop().await;
}

// ------------------------------------------------------------------------------ JWT

#[tokio::test]
async fn a_jwt_session_closes_with_4001_at_exp_and_the_expired_jwt_is_then_refused() {
    let dir = TempDir::new("jwt");
    let key = dir.join("jwt.secret");
    write_secret(&key, JWT_SECRET);
    let gw = TestGateway::start_with(|c| c.jwt_key = Some(key)).await;
    // `exp` is whole seconds: 2 to 3 s from now.
    let exp = unix_now().floor() as u64 + 3;
    let token = jwt(&json!({"sub": "erin@example.com", "exp": exp, "symbols": ["AAPL"]}));
    let auth = format!("Bearer {token}");

    let (mut ws, welcome) = ws_open(gw.addr, "/ws", Some(&auth)).await.unwrap();
    assert_eq!(welcome["limits"]["max_subscriptions"], 1000);
    subscribe(&mut ws, 1, &["AAPL"]).await;
    let (status, mut sse) = Sse::open(gw.addr, "/sse?symbols=AAPL", Some(&auth)).await;
    assert_eq!(status, 200);

    // The session is served until exp, then closed with 4001 `token expired`.
    let close = close_frame(&mut ws, Duration::from_secs(5)).await;
    let closed_at = unix_now();
    assert_eq!(close, Some((4001, "token expired".to_string())));
    assert!(closed_at >= exp as f64 - 0.02, "closed at {closed_at}, before exp {exp}");
    assert!(closed_at < exp as f64 + 1.0, "closed at {closed_at}, well after exp {exp}");
    // The SSE stream of the same JWT ends then too.
    while sse.event(Duration::from_secs(3)).await.is_some() {}
    assert!(unix_now() >= exp as f64 - 0.02);

    // The same JWT is now refused: `expired`.
    let again = http_get(gw.addr, "/snapshot?symbols=AAPL", &[("Authorization", &auth)]).await;
    assert_eq!(again.status, 401);
    assert!(again.body.contains("(expired)"), "{}", again.body);
    // A JWT signed with another key is `bad_jwt`; one without `symbols` is `bad_claims`.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "mallory", "exp": exp + 3600, "symbols": ["*"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-of-32-bytes-or-more!!").unwrap(),
    )
    .unwrap();
    let r = http_get(gw.addr, "/symbols", &[("Authorization", &format!("Bearer {forged}"))]).await;
    assert!(r.status == 401 && r.body.contains("(bad_jwt)"), "{}", r.body);
    let no_symbols = jwt(&json!({"sub": "erin", "exp": exp + 3600}));
    let r =
        http_get(gw.addr, "/symbols", &[("Authorization", &format!("Bearer {no_symbols}"))]).await;
    assert!(r.status == 401 && r.body.contains("(bad_claims)"), "{}", r.body);

    wait_metric(&gw, "gateway_sessions_closed_total{reason=\"token_expired\"}", 2.0, STEP).await;
    // Two sessions closed at exp, one request refused after it.
    assert_eq!(gw.metric("gateway_auth_failures_total{reason=\"expired\"}").await, 3.0);
    gw.stop().await;
}

// ------------------------------------------------------------------------------ SIGHUP

#[tokio::test]
async fn sighup_revokes_a_removed_token_narrows_another_and_keeps_everyone_else() {
    let dir = TempDir::new("sighup");
    let tokens = dir.join("tokens.toml");
    let carol = "carol-token-0123456789";
    write_secret(
        &tokens,
        &token_file(&[
            ("alice", ALICE, &["AAPL", "MSFT"]),
            ("bob", BOB, &["*"]),
            ("carol", carol, &["AAPL"]),
        ]),
    );
    let log = dir.join("gateway.log");
    let gw = GatewayProcess::spawn(
        &["--tokens-file", tokens.to_str().unwrap(), "--sim-symbols", "60"],
        &log,
        "info",
    );
    let (mut alice, _) = ws_open(gw.addr, "/ws", Some(&format!("Bearer {ALICE}"))).await.unwrap();
    subscribe(&mut alice, 1, &["AAPL", "MSFT"]).await;
    let (mut bob, _) = ws_open(gw.addr, &format!("/ws?token={BOB}"), None).await.unwrap();
    subscribe(&mut bob, 1, &["*"]).await;
    let (mut carol_ws, _) = ws_open(gw.addr, &format!("/ws?token={carol}"), None).await.unwrap();
    subscribe(&mut carol_ws, 1, &["AAPL"]).await;
    await_metric(gw.addr, "gateway_subscriptions_active", 2.0 + 60.0 + 1.0, STEP).await;

    // carol removed, alice loses MSFT, bob keeps only the symbols starting with A.
    write_secret(&tokens, &token_file(&[("alice", ALICE, &["AAPL"]), ("bob", BOB, &["A*"])]));
    gw.signal(libc::SIGHUP);
    assert_eq!(
        close_frame(&mut carol_ws, STEP).await,
        Some((4001, "token revoked".to_string())),
        "the removed token's live session is closed with 4001"
    );
    let a_symbols = http_get(gw.addr, &format!("/symbols?token={BOB}"), &[]).await.json();
    let a_count = a_symbols.as_array().unwrap().len();
    assert!(
        a_count >= 2
            && a_symbols.as_array().unwrap().iter().all(|s| s.as_str().unwrap().starts_with('A'))
    );
    await_metric(gw.addr, "gateway_subscriptions_active", 1.0 + a_count as f64, STEP).await;
    // Everything decided before the pong has arrived; from then on, only entitled symbols.
    ping_over(&mut alice, 10).await;
    ping_over(&mut bob, 10).await;
    let later = drain(&mut alice, Duration::from_millis(500)).await;
    assert!(later.iter().all(|m| m["symbol"].is_null() || m["symbol"] == "AAPL"), "{later:?}");
    assert!(
        later.iter().all(|m| m["type"] != "error"),
        "no message for the lost symbols: {later:?}"
    );
    let later = drain(&mut bob, Duration::from_millis(500)).await;
    assert!(later.iter().any(|m| m["type"] == "quote"), "bob is still served");
    assert!(
        later.iter().all(|m| m["symbol"].as_str().is_none_or(|s| s.starts_with('A'))),
        "{later:?}"
    );
    assert_eq!(
        await_metric_value(gw.addr, "gateway_reloads_total{what=\"access\",result=\"ok\"}").await,
        1.0
    );
    gw.await_log(&["session closed", "token=\"carol\"", "code=4001", "token revoked"]).await;

    // A refused reload (a broken file) keeps the configuration in force and drops nobody.
    write_secret(&tokens, "[[token]]\nname = \"alice\"\ntoken = \"unterminated\n");
    gw.signal(libc::SIGHUP);
    await_metric(gw.addr, "gateway_reloads_total{what=\"access\",result=\"refused\"}", 1.0, STEP)
        .await;
    gw.await_log(&["reload refused", "line 3"]).await;
    ping_over(&mut alice, 11).await;
    assert!(ws_open(gw.addr, &format!("/ws?token={ALICE}"), None).await.is_ok());
    assert_eq!(ws_open(gw.addr, &format!("/ws?token={carol}"), None).await.err(), Some(401));

    // bob regains every symbol: his ["*"] gains them by itself, each with its snapshot.
    write_secret(&tokens, &token_file(&[("alice", ALICE, &["AAPL"]), ("bob", BOB, &["*"])]));
    gw.signal(libc::SIGHUP);
    let (snapshot, _) =
        recv_until(&mut bob, |m| m["type"] == "snapshot" && m["symbol"] == "MSFT").await;
    assert_eq!(snapshot["symbol"], "MSFT");
    ping_over(&mut alice, 12).await;
    await_metric(gw.addr, "gateway_sessions_closed_total{reason=\"token_revoked\"}", 1.0, STEP)
        .await;
    assert_eq!(
        await_metric_value(gw.addr, "gateway_auth_failures_total{reason=\"revoked\"}").await,
        1.0
    );
    gw.stop().await;
}

async fn await_metric_value(addr: SocketAddr, series: &str) -> f64 {
    metric_of(&http_get(addr, "/metrics", &[]).await.body, series)
}

// ------------------------------------------------------------------------------ TLS

type TlsWs = WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// A TLS client that trusts only the certificates in `ca` (PEM) and verifies the name.
fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// A `wss://` session to `addr` as `localhost`, verifying against `ca`; the TLS or WebSocket
/// error if it fails.
async fn wss_open(addr: SocketAddr, ca: &Path) -> Result<(TlsWs, Value), String> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(ca).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.map_err(|e| e.to_string())?;
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    Ok((ws, welcome))
}

fn curl(args: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "5"])
        .args(args)
        .output()
        .expect("curl (scripts/setup.sh installs it)")
}

#[tokio::test]
async fn tls_serves_verifying_clients_and_sighup_rotates_the_certificate() {
    let dir = TempDir::new("tls");
    let first = dir.join("first");
    let second = dir.join("second");
    let live = dir.join("live");
    for d in [&first, &second, &live] {
        std::fs::create_dir_all(d).unwrap();
    }
    let (first_cert, first_key) = dev_cert(&first);
    let (second_cert, second_key) = dev_cert(&second);
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    std::fs::copy(&first_cert, &cert).unwrap();
    write_secret(&key, &std::fs::read_to_string(&first_key).unwrap());

    let log = dir.join("gateway.log");
    let gw = GatewayProcess::spawn(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--sim-symbols",
            "200",
        ],
        &log,
        // An open gateway logs its (anonymous) sessions at debug.
        "info,gateway::shard=debug",
    );
    let metrics = gw.metrics_addr.unwrap();
    let port = gw.addr.port().to_string();
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let resolve = format!("localhost:{port}:127.0.0.1");

    // curl, verifying with the certificate: served; without it: refused by curl (exit 60).
    let ok = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        first_cert.to_str().unwrap(),
        "-i",
        &url("/healthz"),
    ]);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success() && text.starts_with("HTTP/1.1 200") && text.ends_with("ok\n"),
        "{text}"
    );
    assert!(text.to_ascii_lowercase().contains("x-content-type-options: nosniff"), "{text}");
    let untrusted = curl(&["--resolve", &resolve, &url("/healthz")]);
    assert_eq!(untrusted.status.code(), Some(60), "curl refuses an unknown certificate");
    let snapshot = curl(&[
        "--resolve",
        &resolve,
        "--cacert",
        first_cert.to_str().unwrap(),
        &url("/snapshot?symbols=AAPL,MSFT"),
    ]);
    let quotes: Value = serde_json::from_slice(&snapshot.stdout).unwrap();
    assert_eq!(quotes.as_array().unwrap().len(), 2);

    // A wss session: everything on 200 symbols, in order, through TLS records and partial
    // writes.
    let (mut ws, _) = wss_open(gw.addr, &first_cert).await.unwrap();
    ws.send(Message::text(json!({"op": "subscribe", "id": 1, "symbols": ["*"]}).to_string()))
        .await
        .unwrap();
    let mut order = OrderCheck::default();
    let mut snapshots = 0;
    while snapshots < 200 || order.quotes < 500 {
        let m = next_json(&mut ws).await;
        order.observe(&m);
        snapshots += usize::from(m["type"] == "snapshot");
    }
    // From here on the session is read by a task of its own (a session left unread would be
    // closed as a slow consumer while the steps below take their time); its pongs come back on
    // a channel.
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (pongs, mut pong_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = ws_rx.next().await {
            if let Message::Text(text) = message {
                let m: Value = serde_json::from_str(&text).unwrap();
                if m["type"] == "pong" {
                    let _ = pongs.send(m);
                }
            }
        }
    });

    // Plain HTTP to the TLS port gets no HTTP answer, only the end of the connection.
    let plain = raw_exchange(gw.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!plain.starts_with(b"HTTP/"), "{:?}", String::from_utf8_lossy(&plain));

    // --metrics-listen: plain HTTP, /metrics /healthz /readyz only.
    assert_eq!(http_get(metrics, "/metrics", &[]).await.status, 200);
    assert_eq!(http_get(metrics, "/healthz", &[]).await.status, 200);
    assert_eq!(http_get(metrics, "/ws", &[]).await.status, 404);
    assert_eq!(http_get(metrics, "/snapshot?symbols=AAPL", &[]).await.status, 404);

    // A refused reload (the key of another certificate) keeps the first one.
    write_secret(&key, &std::fs::read_to_string(&second_key).unwrap());
    gw.signal(libc::SIGHUP);
    await_metric(metrics, "gateway_reloads_total{what=\"tls\",result=\"refused\"}", 1.0, STEP)
        .await;
    gw.await_log(&["reload refused", "does not belong to the certificate"]).await;
    assert!(wss_open(gw.addr, &first_cert).await.is_ok());

    // Rotation: the new pair in place, SIGHUP; new connections get the new certificate, the
    // open session keeps going on the old one.
    std::fs::copy(&second_cert, dir.join("cert.tmp")).unwrap();
    std::fs::rename(dir.join("cert.tmp"), &cert).unwrap();
    gw.signal(libc::SIGHUP);
    await_metric(metrics, "gateway_reloads_total{what=\"tls\",result=\"ok\"}", 1.0, STEP).await;
    assert!(wss_open(gw.addr, &second_cert).await.is_ok());
    let old = wss_open(gw.addr, &first_cert).await.expect_err("the old certificate is gone");
    assert!(old.contains("certificate"), "{old}");
    let ok =
        curl(&["--resolve", &resolve, "--cacert", second_cert.to_str().unwrap(), &url("/healthz")]);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "ok\n");
    // The session opened before the rotation is still served, on the old certificate.
    ws_tx.send(Message::text(json!({"op": "ping", "id": 7}).to_string())).await.unwrap();
    let pong = tokio::time::timeout(STEP, pong_rx.recv()).await.expect("a pong in time");
    assert_eq!(pong.expect("the session is open")["id"], 7);
    drop(ws_tx);
    reader.abort();
    gw.await_log(&["session opened", "tls=\"TLSv1.3\""]).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_tls_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let dir = TempDir::new("tls-slow");
    let (cert, key) = dev_cert(&dir.0);
    // The binary, so that /metrics can be read in clear on --metrics-listen.
    let gw = GatewayProcess::spawn(
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
            "--sim-rate",
            "20000",
            "--slow-client-timeout-ms",
            "500",
        ],
        &dir.join("gateway.log"),
        "info",
    );
    let metrics = gw.metrics_addr.unwrap();
    // A small receive window, and a client that sends its subscribe and then reads nothing.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tls_connector(&cert).connect(name, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/ws", gw.addr.port());
    let config = tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, tls, Some(config)).await.unwrap();
    ws.send(Message::text(json!({"op": "subscribe", "id": 1, "symbols": ["*"]}).to_string()))
        .await
        .unwrap();
    await_metric(
        metrics,
        "gateway_sessions_closed_total{reason=\"slow_consumer\"}",
        1.0,
        Duration::from_secs(10),
    )
    .await;
    drop(ws);
    // And the gateway still serves TLS sessions that read.
    let (mut reader, _) = wss_open(gw.addr, &cert).await.unwrap();
    ping_over(&mut reader, 1).await;
    gw.stop().await;
}

// ------------------------------------------------------------------------------ PROXY v2

/// HAProxy in TCP mode, listening on a socket this test bound (handed over as fd 3, so no
/// port is guessed), sending PROXY v2 to `gateway`.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    fn start(dir: &TempDir, gateway: SocketAddr) -> Haproxy {
        use std::os::fd::AsRawFd as _;
        use std::os::unix::process::CommandExt as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = dir.join("haproxy.cfg");
        std::fs::write(
            &config,
            format!(
                "global\n    log stderr format short local0 notice\n\
                 defaults\n    mode tcp\n    log global\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
                 frontend clients\n    bind fd@3\n    default_backend gateway\n\
                 backend gateway\n    server gw1 {gateway} send-proxy-v2\n"
            ),
        )
        .unwrap();
        let fd = listener.as_raw_fd();
        let mut command = Command::new("haproxy");
        command
            .args(["-db", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).unwrap());
        // SAFETY: dup2 is async-signal-safe; it gives the child our listening socket as fd 3
        // (without close-on-exec), which `bind fd@3` takes over.
        unsafe {
            command.pre_exec(move || {
                if libc::dup2(fd, 3) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("haproxy (scripts/setup.sh installs it)");
        drop(listener);
        Haproxy { child, addr }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn proxy_protocol_v2_from_haproxy_gives_caps_and_logs_the_client_address() {
    let dir = TempDir::new("proxy");
    let tokens = dir.join("tokens.toml");
    write_secret(&tokens, &token_file(&[("alice", ALICE, &["*"])]));
    let log = dir.join("gateway.log");
    let gw = GatewayProcess::spawn(
        &[
            "--proxy-protocol",
            "--max-connections-per-ip",
            "1",
            "--tokens-file",
            tokens.to_str().unwrap(),
        ],
        &log,
        "info",
    );
    let haproxy = Haproxy::start(&dir, gw.addr);
    // Ready once a request through it is answered (the socket listens already: no race).
    let health = http_get(haproxy.addr, "/healthz", &[]).await;
    assert_eq!(
        health.status,
        200,
        "{}",
        std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
    );

    let path = format!("/ws?token={ALICE}");
    let two = Some(std::net::Ipv4Addr::new(127, 0, 0, 2));
    let three = Some(std::net::Ipv4Addr::new(127, 0, 0, 3));
    // Every connection reaches the gateway from HAProxy's 127.0.0.1; the cap of one session
    // per address counts the clients' own addresses.
    let (mut first, _) = ws_open_from(haproxy.addr, &path, None, two).await.unwrap();
    assert_eq!(ws_open_from(haproxy.addr, &path, None, two).await.err(), Some(503));
    let (mut other, _) = ws_open_from(haproxy.addr, &path, None, three).await.unwrap();
    ping(&mut first, 1).await;
    ping(&mut other, 1).await;
    let line = gw.await_log(&["session opened", "peer=127.0.0.2:", "token=\"alice\""]).await;
    assert!(!line.contains("127.0.0.1"), "{line}");
    gw.await_log(&["session opened", "peer=127.0.0.3:"]).await;
    assert!(
        !gw.log().lines().any(|l| l.contains("session opened") && l.contains("peer=127.0.0.1:")),
        "no session is logged with the balancer's address"
    );
    // The session closes are logged with the client's address too.
    first.close(None).await.unwrap();
    gw.await_log(&["session closed", "peer=127.0.0.2:"]).await;
    let (mut again, _) = ws_open_from(haproxy.addr, &path, None, two).await.unwrap();
    ping(&mut again, 2).await;

    // A connection without the header (straight to the gateway) is dropped unanswered.
    let direct = raw_exchange(gw.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(direct.is_empty(), "{:?}", String::from_utf8_lossy(&direct));
    let body = http_get(haproxy.addr, "/metrics", &[]).await.body;
    assert_eq!(metric_of(&body, "gateway_handshake_rejections_total{status=\"503\"}"), 1.0);
    drop(haproxy);
    gw.stop().await;
}

// ------------------------------------------------------------------------------ no leaks

#[tokio::test]
async fn no_credential_appears_in_the_logs_or_metrics_of_a_whole_run() {
    let dir = TempDir::new("leaks");
    // Tokens with characters that need encoding, one given only as its SHA-256, one on the
    // command line, and JWTs.
    let alice = "alice tok+en/with=odd%chars!";
    let bob = "bob-only-known-by-its-digest-42";
    let local = "local-quick-token-from-the-flag";
    let dropped = "dropped-at-the-reload-token-7";
    let in_bad_file = "token-inside-a-broken-file-9";
    let tokens = dir.join("tokens.toml");
    let file = |with_dropped: bool| {
        let mut text = token_file(&[("alice", alice, &["AAPL", "MSFT"])]);
        text.push_str(&format!(
            "[[token]]\nname = \"bob\"\nsha256 = \"{}\"\nsymbols = [\"*\"]\n\n",
            sha256_hex(bob)
        ));
        if with_dropped {
            text.push_str(&token_file(&[("dropped", dropped, &["AAPL"])]));
        }
        text
    };
    write_secret(&tokens, &file(true));
    let key = dir.join("jwt.secret");
    write_secret(&key, JWT_SECRET);
    let log = dir.join("gateway.log");
    let access_tokens = format!("--access-tokens={local}");
    let gw = GatewayProcess::spawn(
        &[
            "--tokens-file",
            tokens.to_str().unwrap(),
            "--jwt-key",
            key.to_str().unwrap(),
            &access_tokens,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &log,
        "debug",
    );
    let exp = unix_now() as u64 + 2;
    let short_jwt = jwt(&json!({"sub": "erin", "exp": exp, "symbols": ["AAPL"]}));
    let long_jwt = jwt(&json!({"sub": "frank", "exp": exp + 3600, "symbols": ["*"]}));
    let expired_jwt = jwt(&json!({"sub": "gina", "exp": exp - 100, "symbols": ["*"]}));
    let bad_jwt = format!("{}x", &long_jwt[..long_jwt.len() - 1]);
    let near_misses =
        ["alice tok+en/with=odd%chars?".to_string(), format!("{bob}3"), local.to_uppercase()];

    // Sessions by header and by query, each credential kind; requests that fail.
    let (mut a, _) = ws_open(gw.addr, "/ws", Some(&format!("Bearer {alice}"))).await.unwrap();
    subscribe(&mut a, 1, &["AAPL", "NVDA"]).await;
    let (mut b, _) =
        ws_open(gw.addr, &format!("/ws?token={}", percent_encode(bob)), None).await.unwrap();
    subscribe(&mut b, 1, &["MSFT"]).await;
    let (mut d, _) = ws_open(gw.addr, &format!("/ws?token={dropped}"), None).await.unwrap();
    let (mut e, _) = ws_open(gw.addr, "/ws", Some(&format!("Bearer {short_jwt}"))).await.unwrap();
    let (mut f, _) = ws_open(gw.addr, &format!("/ws?token={long_jwt}"), None).await.unwrap();
    subscribe(&mut f, 1, &["*"]).await;
    for path in ["/symbols", "/snapshot?symbols=AAPL", "/sse?symbols=AAPL&snapshot=false"] {
        let sep = if path.contains('?') { '&' } else { '?' };
        let (status, _) = Sse::open(gw.addr, &format!("{path}{sep}token={local}"), None).await;
        assert_eq!(status, 200, "{path}");
    }
    let refused = [
        expired_jwt.as_str(),
        bad_jwt.as_str(),
        near_misses[0].as_str(),
        near_misses[1].as_str(),
        near_misses[2].as_str(),
    ];
    for token in refused {
        let q = format!("/ws?token={}", percent_encode(token));
        assert_eq!(ws_open(gw.addr, &q, None).await.err(), Some(401));
        let h = http_get(
            gw.addr,
            "/snapshot?symbols=AAPL",
            &[("Authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(h.status, 401);
    }
    // A reload that drops a token (its session: 4001), then one refused for a broken file
    // that holds a token.
    write_secret(&tokens, &file(false));
    gw.signal(libc::SIGHUP);
    assert_eq!(close_frame(&mut d, STEP).await.map(|c| c.0), Some(4001));
    write_secret(
        &tokens,
        &format!("[[token]]\nname = \"x\"\ntoken = \"{in_bad_file}\nsymbols = [\"*\"]\n"),
    );
    gw.signal(libc::SIGHUP);
    gw.await_log(&["reload refused"]).await;
    // The JWT session expires.
    assert_eq!(close_frame(&mut e, Duration::from_secs(5)).await.map(|c| c.0), Some(4001));
    ping(&mut a, 9).await;
    a.close(None).await.unwrap();
    drop(b);
    let metrics = http_get(gw.metrics_addr.unwrap(), "/metrics", &[]).await.body;
    let main_metrics = http_get(gw.addr, "/metrics", &[]).await.body;
    drop(f);
    let log = gw.stop().await;

    // The run did log what the audit needs: names, subs, reasons.
    for expected in [
        "token=\"alice\"",
        "token=\"bob\"",
        "token=\"access-tokens#1\"",
        "sub=\"erin\"",
        "sub=\"frank\"",
        "reason=\"unknown_token\"",
        "reason=\"expired\"",
        "token revoked",
        "token expired",
        "reload refused",
    ] {
        assert!(log.contains(expected), "the log has {expected}:\n{log}");
    }
    let mut secrets: Vec<String> = [
        alice,
        bob,
        local,
        dropped,
        in_bad_file,
        &short_jwt,
        &long_jwt,
        &expired_jwt,
        &bad_jwt,
        JWT_SECRET,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    secrets.extend(near_misses.iter().cloned());
    // Their percent-encoded forms, and each JWT's signature alone.
    let encoded: Vec<String> = secrets.iter().map(|s| percent_encode(s)).collect();
    secrets.extend(encoded);
    for token in [&short_jwt, &long_jwt, &expired_jwt, &bad_jwt] {
        secrets.push(token.rsplit('.').next().unwrap().to_string());
    }
    for secret in &secrets {
        for (what, text) in
            [("the log", &log), ("/metrics", &metrics), ("/metrics on --listen", &main_metrics)]
        {
            assert!(!text.contains(secret.as_str()), "{what} holds a credential: {secret}");
        }
    }
}
