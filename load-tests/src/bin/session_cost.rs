//! `session_cost`: what sessions cost a gateway, measured from outside the process (issue 9).
//!
//! - `idle`: resident memory per idle session holding `--subs` subscriptions.
//! - `hostile`: resident memory per session driven by its client to the most it can make the
//!   gateway hold (a full table of subscriptions, answers it never reads, requests past the
//!   outbox's bound).
//! - `storm`: the gateway's CPU time for N sessions subscribing to `["*"]` at once, then
//!   unsubscribing at once, subscribing again, and disconnecting at once: a subscription change
//!   that costs O(1) makes these grow linearly with N.
//!
//! Each measurement starts a gateway of its own (`--gateway`, a release build) on
//! 127.0.0.1:0, and kills it at the end. Never point it at a gateway others use: it loads it
//! on purpose. Clients connect from addresses spread over 127.1.0.0/16, so that ten thousand
//! connections do not run out of ephemeral ports. Figures: `/proc/PID/status` (VmRSS) and
//! `/proc/PID/task/*/schedstat` (ns on a CPU, all threads).

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use load_tests::procstat::{pid_rss_kib, pid_run_queue_wait_seconds, raise_fd_limit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Connections opened at once, at most (the listen backlog is 1,024).
const CONNECT_CONCURRENCY: usize = 256;
/// How long any one step may take before the run fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Parser)]
#[command(
    name = "session_cost",
    about = "What sessions cost a gateway: memory per session, CPU of subscription storms"
)]
struct Cli {
    /// The gateway binary (a release build: target/release/gateway)
    #[arg(long)]
    gateway: String,
    /// Session counts to measure, one fresh gateway each
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    sessions: Vec<usize>,
    /// More flags for the gateway (repeat: --gateway-arg=--shards --gateway-arg=2)
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    gateway_args: Vec<String>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Resident memory per idle session with `--subs` subscriptions each
    Idle {
        #[arg(long, default_value_t = 10)]
        subs: usize,
    },
    /// Resident memory per session at the most a client can make it hold
    Hostile {
        /// Subscribe frames of ~64 KiB of unknown names each session sends and never reads
        /// the answers of
        #[arg(long, default_value_t = 6)]
        frames: usize,
    },
    /// CPU time of `["*"]` subscribe, unsubscribe, subscribe and disconnect storms
    Storm,
}

/// A gateway process of this run.
struct Gateway {
    child: Child,
    addr: SocketAddr,
    pid: u32,
}

impl Gateway {
    fn start(bin: &str, args: &[String]) -> anyhow::Result<Gateway> {
        let mut child = Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {bin}"))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("unexpected first line from the gateway: {line:?}"))?;
        let pid = child.id();
        Ok(Gateway { child, addr, pid })
    }

    fn rss_kib(&self) -> u64 {
        pid_rss_kib(self.pid).unwrap_or(0)
    }

    /// ns all of the gateway's threads have spent on a CPU.
    fn cpu_ns(&self) -> u64 {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else { return 0 };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()))
            .sum()
    }

    /// Seconds its threads waited for a CPU (a busy machine shows here).
    fn waited_s(&self) -> f64 {
        pid_run_queue_wait_seconds(self.pid).unwrap_or(0.0)
    }

    async fn get(&self, path: &str) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(self.addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        Ok(text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    async fn metric(&self, name: &str) -> anyhow::Result<f64> {
        let body = self.get("/metrics").await?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .with_context(|| format!("no {name} in /metrics"))
    }

    async fn symbols(&self) -> anyhow::Result<Vec<String>> {
        Ok(serde_json::from_str(&self.get("/symbols").await?)?)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The source address of client `i`.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// A session past its `welcome`, from address `from`, its socket's receive buffer set to
/// `recv_buffer` if given.
async fn connect(addr: SocketAddr, from: Ipv4Addr, recv_buffer: Option<u32>) -> anyhow::Result<Ws> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket.bind(SocketAddr::new(from.into(), 0))?;
    let stream = socket.connect(addr).await?;
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}/ws"),
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"welcome""#) => Ok(ws),
        other => bail!("expected a welcome, got {other:?}"),
    }
}

/// Reads until the answer whose text starts with `prefix` and carries `"id":id`.
async fn until_answer(ws: &mut Ws, prefix: &str, id: u64) -> anyhow::Result<()> {
    let id = format!(r#""id":{id}"#);
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with(prefix) && t.contains(&id) => return Ok(()),
            Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"error""#) => {
                bail!("error: {t}")
            }
            Some(Ok(_)) => {}
            other => bail!("session ended: {other:?}"),
        }
    }
}

/// Opens `n` sessions with `open(i)`, `CONNECT_CONCURRENCY` at a time; each is then run by
/// `run(i, ws)` on a task of its own.
async fn open_all<O, R, F, G>(n: usize, open: O, run: R) -> anyhow::Result<()>
where
    O: Fn(usize) -> F + Send + Sync + 'static,
    F: std::future::Future<Output = anyhow::Result<Ws>> + Send,
    R: Fn(usize, Ws) -> G + Send + Sync + 'static,
    G: std::future::Future<Output = ()> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    let open = Arc::new(open);
    let run = Arc::new(run);
    let (opened_tx, mut opened) = mpsc::unbounded_channel::<anyhow::Result<()>>();
    for i in 0..n {
        let (limit, open, run, opened_tx) =
            (limit.clone(), open.clone(), run.clone(), opened_tx.clone());
        tokio::spawn(async move {
            let permit = limit.acquire_owned().await;
            match open(i).await {
                Ok(ws) => {
                    drop(permit);
                    let _ = opened_tx.send(Ok(()));
                    run(i, ws).await;
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            }
        });
    }
    for _ in 0..n {
        opened.recv().await.context("a session task ended")??;
    }
    Ok(())
}

/// Waits for `n` completions on `done`.
async fn wait_for(
    done: &mut mpsc::UnboundedReceiver<anyhow::Result<()>>,
    n: usize,
) -> anyhow::Result<()> {
    tokio::time::timeout(STEP_TIMEOUT, async {
        for _ in 0..n {
            done.recv().await.context("a session task ended")??;
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("timed out")?
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn idle(cli: &Cli, n: usize, subs: usize) -> anyhow::Result<()> {
    let mut args = vec!["--shards=2", "--sim-rate=10", "--max-connections=19500"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(cli.gateway_args.iter().cloned());
    let gw = Gateway::start(&cli.gateway, &args)?;
    let symbols = Arc::new(gw.symbols().await?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = gw.rss_kib();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let addr = gw.addr;
    open_all(
        n,
        move |i| connect(addr, source(i), None),
        move |i, mut ws| {
            let (symbols, done_tx) = (symbols.clone(), done_tx.clone());
            async move {
                let names: Vec<&String> =
                    (0..subs).map(|j| &symbols[(i * 7 + j * 31) % symbols.len()]).collect();
                let request = serde_json::json!({"op": "subscribe", "id": 1, "symbols": names});
                let result = async {
                    ws.send(Message::text(request.to_string())).await?;
                    until_answer(&mut ws, r#"{"type":"ack""#, 1).await
                }
                .await;
                let _ = done_tx.send(result);
                // Idle: read what comes (snapshots, a quote now and then, heartbeats, Pings).
                while let Some(Ok(_)) = ws.next().await {}
            }
        },
    )
    .await?;
    wait_for(&mut done, n).await?;
    // Let every snapshot go out and the shards settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = gw.rss_kib();
    let active = gw.metric("gateway_subscriptions_active").await?;
    println!(
        "idle: {n} sessions x {subs} subscriptions ({active} active): RSS {:.1} MiB -> {:.1} MiB, +{:.0} bytes per session",
        mib(before),
        mib(after),
        (after.saturating_sub(before) * 1024) as f64 / n as f64
    );
    Ok(())
}

async fn hostile(cli: &Cli, n: usize, frames: usize) -> anyhow::Result<()> {
    let mut args = vec![
        "--shards=2",
        "--sim-rate=10",
        "--sim-symbols=1000",
        "--max-connections=19500",
        "--slow-client-timeout-ms=600000",
        "--idle-timeout-ms=600000",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(cli.gateway_args.iter().cloned());
    let gw = Gateway::start(&cli.gateway, &args)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = gw.rss_kib();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let addr = gw.addr;
    open_all(
        n,
        // The smallest receive buffer Linux allows: the answers stay in the gateway.
        move |i| connect(addr, source(i), Some(4096)),
        move |i, mut ws| {
            let done_tx = done_tx.clone();
            async move {
                let result = async {
                    // A full table of subscriptions (no snapshots: what it holds, not sends).
                    let all = r#"{"op":"subscribe","id":1,"symbols":["*"],"snapshot":false}"#;
                    ws.send(Message::text(all)).await?;
                    until_answer(&mut ws, r#"{"type":"ack""#, 1).await?;
                    // Then requests whose answers are as large as a request can cause (every
                    // name unknown, listed back), never read.
                    for f in 0..frames {
                        let names: Vec<String> = (0..1_000)
                            .map(|k| format!("{:X>58}", format!("{i}-{f}-{k}")))
                            .collect();
                        let request =
                            serde_json::json!({"op": "subscribe", "id": 2 + f, "symbols": names});
                        let text = request.to_string();
                        anyhow::ensure!(text.len() <= 65_536, "{} bytes", text.len());
                        // The gateway stops reading once its outbox is over its bound: a send
                        // may then wait on TCP's flow control for good.
                        if tokio::time::timeout(
                            Duration::from_secs(2),
                            ws.send(Message::text(text)),
                        )
                        .await
                        .is_err()
                        {
                            break;
                        }
                    }
                    Ok(())
                }
                .await;
                let _ = done_tx.send(result);
                // Hold the session open, reading nothing.
                tokio::time::sleep(Duration::from_secs(3_600)).await;
                drop(ws);
            }
        },
    )
    .await?;
    wait_for(&mut done, n).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = gw.rss_kib();
    let subs = gw.metric("gateway_subscriptions_active").await?;
    let sessions = gw.metric("gateway_sessions_active").await?;
    println!(
        "hostile: {n} sessions ({sessions} open, {subs} subscriptions), {frames} unread answers of ~64 KiB each: RSS {:.1} MiB -> {:.1} MiB, +{:.0} KiB per session",
        mib(before),
        mib(after),
        after.saturating_sub(before) as f64 / n as f64
    );
    Ok(())
}

/// What the storm's sessions are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Wait,
    Subscribe(u64),
    Unsubscribe(u64),
    Disconnect,
}

async fn storm_session(
    mut ws: Ws,
    mut phase: watch::Receiver<Phase>,
    done: mpsc::UnboundedSender<anyhow::Result<()>>,
) {
    loop {
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *phase.borrow_and_update();
                let result = match now {
                    Phase::Wait => continue,
                    Phase::Subscribe(id) => {
                        let request = format!(r#"{{"op":"subscribe","id":{id},"symbols":["*"],"snapshot":false}}"#);
                        match ws.send(Message::text(request)).await {
                            Ok(()) => until_answer(&mut ws, r#"{"type":"ack""#, id).await,
                            Err(e) => Err(e.into()),
                        }
                    }
                    Phase::Unsubscribe(id) => {
                        let request = format!(r#"{{"op":"unsubscribe","id":{id},"symbols":["*"]}}"#);
                        match ws.send(Message::text(request)).await {
                            Ok(()) => until_answer(&mut ws, r#"{"type":"ack""#, id).await,
                            Err(e) => Err(e.into()),
                        }
                    }
                    Phase::Disconnect => {
                        drop(ws);
                        let _ = done.send(Ok(()));
                        return;
                    }
                };
                let _ = done.send(result);
            }
            next = ws.next() => match next {
                Some(Ok(_)) => {}
                other => {
                    let _ = done.send(Err(anyhow::anyhow!("session ended: {other:?}")));
                    return;
                }
            },
        }
    }
}

async fn storm(cli: &Cli, n: usize) -> anyhow::Result<()> {
    let mut args = vec!["--shards=2", "--sim-rate=1", "--max-connections=19500"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    args.extend(cli.gateway_args.iter().cloned());
    let gw = Gateway::start(&cli.gateway, &args)?;
    let symbols = gw.symbols().await?.len();
    let (phase_tx, phase) = watch::channel(Phase::Wait);
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let addr = gw.addr;
    open_all(
        n,
        move |i| connect(addr, source(i), None),
        move |_, ws| storm_session(ws, phase.clone(), done_tx.clone()),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // What the gateway spends with N sessions and nothing happening, for comparison.
    let (idle_cpu, idle_wall) = {
        let (c, t) = (gw.cpu_ns(), Instant::now());
        tokio::time::sleep(Duration::from_secs(1)).await;
        (gw.cpu_ns() - c, t.elapsed())
    };
    let idle_rate = idle_cpu as f64 / idle_wall.as_secs_f64();
    println!(
        "storm: {n} sessions, {symbols} symbols; idle with no subscriptions: {:.1} ms CPU/s",
        idle_rate / 1e6
    );
    let changes = (n * symbols) as f64;
    let steps = [
        ("subscribe [\"*\"]", Phase::Subscribe(1)),
        ("unsubscribe [\"*\"]", Phase::Unsubscribe(2)),
        ("subscribe [\"*\"] again", Phase::Subscribe(3)),
        ("disconnect", Phase::Disconnect),
    ];
    for (what, step) in steps {
        let (cpu0, waited0, t0) = (gw.cpu_ns(), gw.waited_s(), Instant::now());
        phase_tx.send(step)?;
        wait_for(&mut done, n).await?;
        if step == Phase::Disconnect {
            // Gone from the gateway's side too: every session and subscription removed.
            let deadline = Instant::now() + STEP_TIMEOUT;
            while gw.metric("gateway_sessions_active").await? > 0.0
                || gw.metric("gateway_subscriptions_active").await? > 0.0
            {
                anyhow::ensure!(Instant::now() < deadline, "sessions still open");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let (cpu, wall, waited) = (gw.cpu_ns() - cpu0, t0.elapsed(), gw.waited_s() - waited0);
        let subs = gw.metric("gateway_subscriptions_active").await?;
        let expected = if matches!(step, Phase::Subscribe(_)) { changes } else { 0.0 };
        anyhow::ensure!(subs == expected, "{what}: {subs} subscriptions active, not {expected}");
        println!(
            "storm: {n:>6} sessions {what:<24} {:>8.1} ms CPU, {:>7.1} ms wall, {:>6.0} ns CPU per subscription change ({} changes); gateway threads waited {:.0} ms for a CPU",
            cpu as f64 / 1e6,
            wall.as_secs_f64() * 1e3,
            cpu as f64 / changes,
            changes,
            waited * 1e3
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let limit = raise_fd_limit();
    let most = cli.sessions.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(
        most as u64 + 100 <= limit,
        "{most} sessions need more open files than this process may have ({limit})"
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        for &n in &cli.sessions {
            match &cli.mode {
                Mode::Idle { subs } => idle(&cli, n, *subs).await?,
                Mode::Hostile { frames } => hostile(&cli, n, *frames).await?,
                Mode::Storm => storm(&cli, n).await?,
            }
        }
        Ok(())
    })
}
