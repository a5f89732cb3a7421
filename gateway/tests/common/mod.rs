//! Test harness: a real gateway on an ephemeral port, real WebSocket clients, plain HTTP.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use gateway::feed::manual::{ManualFeed, ManualFeedHandle};
use gateway::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for any one expected message before failing.
pub const STEP: Duration = Duration::from_secs(5);

/// A gateway running in this process on 127.0.0.1:0.
pub struct TestGateway {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// The configuration tests start from: the defaults, on an ephemeral port, two shards.
pub fn test_config() -> Config {
    let mut config =
        Config::parse_from(["gateway", "--listen", "127.0.0.1:0", "--server-id", "gw-test"]);
    config.shards = 2;
    config
}

impl TestGateway {
    pub async fn start() -> TestGateway {
        Self::start_with(|_| {}).await
    }

    /// A gateway on the simulated feed its configuration describes.
    pub async fn start_with(configure: impl FnOnce(&mut Config)) -> TestGateway {
        let mut config = test_config();
        configure(&mut config);
        let feed = gateway::feed::from_config(&config).expect("the configured feed");
        Self::start_on(config, feed).await
    }

    /// A gateway on a manual feed: symbols (name, precision) known, no quotes until the
    /// returned handle publishes them.
    pub async fn start_manual(
        symbols: &[(&str, u8)],
        configure: impl FnOnce(&mut Config),
    ) -> (TestGateway, ManualFeedHandle) {
        let mut config = test_config();
        configure(&mut config);
        let (feed, handle) = ManualFeed::new(
            symbols.iter().map(|&(name, precision)| (name.to_string(), precision)),
            "test-epoch",
        );
        (Self::start_on(config, Box::new(feed)).await, handle)
    }

    pub async fn start_on(config: Config, feed: Box<dyn gateway::feed::Feed>) -> TestGateway {
        Self::start_at("127.0.0.1:0", config, feed).await
    }

    /// A gateway listening on `bind` (a loopback address, port 0), such as `[::1]:0`.
    pub async fn start_at(
        bind: &str,
        config: Config,
        feed: Box<dyn gateway::feed::Feed>,
    ) -> TestGateway {
        let listener = TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway::run(listener, config, feed, async move {
            let _ = stopped.await;
        }));
        TestGateway { addr, stop: Some(stop), task: Some(task) }
    }

    /// Waits for `run` to return by itself (the feed failed, say), within `within`.
    pub async fn ended(mut self, within: Duration) -> anyhow::Result<()> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(within, task).await.expect("gateway stops by itself").unwrap()
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A client past its `welcome`, which is returned with it.
    pub async fn client(&self) -> (Ws, Value) {
        let (mut ws, _) = tokio_tungstenite::connect_async(self.ws_url()).await.expect("connect");
        let welcome = recv(&mut ws).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    }

    /// Stops the gateway the way a signal does and waits for `run` to return.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).ok();
        let task = self.task.take().unwrap();
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("gateway stops")
            .unwrap()
            .unwrap();
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path, &[]).await
    }

    /// A metric's value from `/metrics` (the first sample whose name and labels start so).
    pub async fn metric(&self, series: &str) -> f64 {
        let body = self.get("/metrics").await.body;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("no series {series} in /metrics"))
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The next JSON message (skipping WebSocket control frames), or a failure after [`STEP`].
pub async fn recv(ws: &mut Ws) -> Value {
    recv_within(ws, STEP).await.expect("a message in time")
}

/// The next JSON message within `wait`, `None` if none came.
pub async fn recv_within(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => {
                return Some(serde_json::from_str(&text).expect("every message is JSON"));
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(other) => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Reads until a message satisfies `pred`, returning it and what came before.
pub async fn recv_until(ws: &mut Ws, pred: impl Fn(&Value) -> bool) -> (Value, Vec<Value>) {
    let mut before = Vec::new();
    loop {
        let m = recv(ws).await;
        if pred(&m) {
            return (m, before);
        }
        before.push(m);
    }
}

pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::text(value.to_string())).await.expect("send");
}

pub async fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text.to_string())).await.expect("send");
}

/// Subscribes and returns the `ack`.
pub async fn subscribe(ws: &mut Ws, id: u64, symbols: &[&str]) -> Value {
    send(ws, json!({"op": "subscribe", "id": id, "symbols": symbols})).await;
    let (ack, _) = recv_until(ws, |m| m["type"] == "ack" && m["id"] == id).await;
    ack
}

/// Reads until the server closes; returns the close code (None: closed without a frame).
pub async fn close_code(ws: &mut Ws, wait: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close within {wait:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
        }
    }
}

pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// A plain HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// GET `path` with extra headers, `Connection: close`, and the whole response read.
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let read = async {
        // Up to the end of the head; a 101 has no body (the connection is a session now).
        let mut buf = [0u8; 4096];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            raw.extend_from_slice(&buf[..n]);
        }
        if !raw.starts_with(b"HTTP/1.1 101") {
            stream.read_to_end(&mut raw).await.unwrap();
        }
    };
    tokio::time::timeout(STEP, read).await.expect("response in time");
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> HttpResponse {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.lines();
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    HttpResponse { status, headers, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Checks one session's stream against the ordering rules of section 3 as messages arrive.
#[derive(Default)]
pub struct OrderCheck {
    last_seq: std::collections::HashMap<String, u64>,
    snapshotted: std::collections::HashSet<String>,
    pub quotes: u64,
    pub jumps: u64,
}

impl OrderCheck {
    pub fn observe(&mut self, m: &Value) {
        let kind = m["type"].as_str().unwrap();
        if kind != "quote" && kind != "snapshot" {
            return;
        }
        let symbol = m["symbol"].as_str().unwrap().to_string();
        let seq = m["seq"].as_u64().unwrap();
        if kind == "snapshot" {
            self.snapshotted.insert(symbol.clone());
        } else {
            assert!(self.snapshotted.contains(&symbol), "quote of {symbol} before its snapshot");
            self.quotes += 1;
        }
        if let Some(&last) = self.last_seq.get(&symbol) {
            assert!(seq > last, "{symbol}: seq {seq} after {last}");
            if kind == "quote" && seq > last + 1 {
                self.jumps += seq - last - 1;
            }
        }
        self.last_seq.insert(symbol, seq);
    }

    pub fn last_seq(&self, symbol: &str) -> Option<u64> {
        self.last_seq.get(symbol).copied()
    }
}

// ---- Helpers added for the limits and backpressure tests (tests/limits.rs, tests/backpressure.rs).

/// Options of a client built by [`connect_client`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientOptions {
    /// `SO_RCVBUF` of the client socket, set before connecting (Linux doubles it and applies
    /// a minimum). `None`: the kernel's autotuning.
    pub recv_buffer: Option<u32>,
    /// Local address to connect from (any of 127.0.0.0/8); `None`: 127.0.0.1.
    pub from: Option<std::net::Ipv4Addr>,
    /// tungstenite's read chunk; `None`: its default (128 KiB). Small keeps a slow client
    /// from slurping a large backlog out of its socket in one read.
    pub read_buffer: Option<usize>,
}

/// A WebSocket client built on a socket of our own (receive buffer, source address), past its
/// `welcome`.
pub async fn connect_client(addr: SocketAddr, options: ClientOptions) -> (Ws, Value) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    if let Some(ip) = options.from {
        socket.bind(SocketAddr::new(ip.into(), 0)).expect("bind the client address");
    }
    let stream = socket.connect(addr).await.expect("connect");
    let mut config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    if let Some(size) = options.read_buffer {
        config = config.read_buffer_size(size);
    }
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/ws"),
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await
    .expect("upgrade");
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The client side's local port of a connection (to find the gateway's side in /proc).
pub fn local_port(ws: &Ws) -> u16 {
    match ws.get_ref() {
        MaybeTlsStream::Plain(s) => s.local_addr().expect("local address").port(),
        _ => unreachable!("tests speak plain WebSocket"),
    }
}

/// Queues of one IPv4 TCP socket as the kernel reports them in /proc/net/tcp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpQueues {
    /// Bytes written but not yet acknowledged by the peer (the send queue).
    pub tx: u64,
    /// Bytes received but not yet read by the application.
    pub rx: u64,
}

/// Every IPv4 TCP socket of this network namespace as (local port, remote port) → queues.
pub fn tcp_sockets() -> std::collections::HashMap<(u16, u16), TcpQueues> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |address: &str| {
        let hex = address.rsplit(':').next().expect("ADDR:PORT");
        u16::from_str_radix(hex, 16).expect("a hex port")
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = fields.get(4)?.split_once(':')?;
            let queues = TcpQueues {
                tx: u64::from_str_radix(tx, 16).ok()?,
                rx: u64::from_str_radix(rx, 16).ok()?,
            };
            Some(((port(fields[1]), port(fields[2])), queues))
        })
        .collect()
}

/// Sends a `ping` request and returns its `pong` (messages before it are skipped).
pub async fn ping(ws: &mut Ws, id: u64) -> Value {
    send(ws, json!({"op": "ping", "id": id})).await;
    let (pong, _) = recv_until(ws, |m| m["type"] == "pong" && m["id"] == id).await;
    pong
}

/// A client that subscribes to `symbol` and receives its snapshot and a quote: proof that the
/// gateway still serves new sessions normally.
pub async fn a_new_client_gets_quotes(gw: &TestGateway, symbol: &str) {
    let (mut ws, _) = gw.client().await;
    subscribe(&mut ws, 1, &[symbol]).await;
    let (snapshot, _) = recv_until(&mut ws, |m| m["type"] == "snapshot").await;
    assert_eq!(snapshot["symbol"], symbol);
    let (quote, _) = recv_until(&mut ws, |m| m["type"] == "quote").await;
    assert_eq!(quote["symbol"], symbol);
    assert!(quote["seq"].as_u64() > snapshot["seq"].as_u64(), "{snapshot} then {quote}");
}

/// Wall clock in ns since the Unix epoch, as quotes' `ts`.
pub fn wall_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Waits until a metric has `value` (it is updated when a session has fully ended), or fails
/// after `wait` with the last value seen.
pub async fn wait_metric(gw: &TestGateway, series: &str, value: f64, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = gw.metric(series).await;
        if now == value {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{series} is {now}, expected {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the server closes; returns the close frame's code and reason (None: the
/// connection ended without a close frame). Fails after `wait`.
pub async fn close_frame(ws: &mut Ws, wait: Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("no close within {wait:?}"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()))
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
        }
    }
}

/// A quote for the manual feed whose every field follows from `seq`, so a test can say exactly
/// what a client must receive.
pub fn manual_quote(seq: u64) -> proto::Quote {
    let bid = 18_700 + (seq % 100) as i64;
    proto::Quote {
        seq,
        bid: proto::Price(bid),
        ask: proto::Price(bid + 2),
        bid_size: 300,
        ask_size: 500,
        last: proto::Price(bid + 1),
        last_size: 100,
        volume: 1_000_000 + seq,
        ts: 1_763_775_600_000_000_000 + seq,
    }
}

/// Publishes `seqs` of `symbol` (precision 2) on the manual feed, each one asserted stored.
pub async fn publish(feed: &ManualFeedHandle, symbol: &str, seqs: impl IntoIterator<Item = u64>) {
    for seq in seqs {
        let published = feed.publish(symbol, 2, manual_quote(seq)).await;
        assert_eq!(published, Some(gateway::feed::Published::Stored), "{symbol} {seq}");
    }
}
