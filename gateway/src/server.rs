//! The gateway as a whole: shared state, shards, the accept loop, and graceful shutdown.
//!
//! Sessions are spread over shards, one thread each with a current-thread runtime: a woken
//! writer then runs in FIFO order after the others, and each write carries more frames (see
//! `../shared/DESIGN-NOTES.md`, "Scheduling decides the tail"). The feed hands each shard its
//! updated symbols; everything else a session touches lives on its shard.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::wall_ns;
use crate::config::Config;
use crate::fanout::{run_shard_fanout, ShardQueue};
use crate::feed::{Feed, FeedError, Publisher};
use crate::http::{self, per_ip_key, Access, ShardCtx};
use crate::metrics::Metrics;
use crate::store::SnapshotStore;

/// Accepted connections waiting for their shard; the accept loop waits when a shard lags.
const SHARD_BACKLOG: usize = 256;

/// What every part of one gateway shares.
pub struct Gateway {
    pub config: Config,
    pub server_name: String,
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    pub access: Access,
    pub ws_config: WebSocketConfig,
    pub shutdown: CancellationToken,
    pub sessions_active: AtomicU64,
    pub subscriptions_active: AtomicU64,
    pub started_wall_ns: u64,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    session_counter: AtomicU64,
}

impl Gateway {
    /// A short unique session id: a per-process random base plus a counter, in hex.
    pub fn next_session_id(&self) -> String {
        let n = self.session_counter.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:x}",
            (self.started_wall_ns >> 10).wrapping_mul(0x9e37_79b9).wrapping_add(n)
                & 0xffff_ffff_ffff
        )
    }
}

/// A reserved session place: counted against the connection limits until dropped.
pub struct SessionPermit {
    gateway: Arc<Gateway>,
    ip: Option<IpAddr>,
}

impl SessionPermit {
    /// Reserves a place, or says which limit is reached.
    pub fn acquire(gw: &Arc<Gateway>, ip: IpAddr) -> Result<SessionPermit, &'static str> {
        let max = u64::from(gw.config.max_connections);
        if gw
            .sessions_active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            return Err("connection limit reached");
        }
        let mut permit = SessionPermit { gateway: Arc::clone(gw), ip: None };
        let per_ip_max = gw.config.max_connections_per_ip;
        if per_ip_max > 0 {
            let key = per_ip_key(ip);
            let mut counts = gw.per_ip.lock();
            let count = counts.entry(key).or_insert(0);
            if *count >= per_ip_max {
                return Err("connection limit per client address reached");
            }
            *count += 1;
            permit.ip = Some(key);
        }
        Ok(permit)
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.gateway.sessions_active.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut counts = self.gateway.per_ip.lock();
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

/// Runs a gateway on `listener`, serving the quotes of `feed`, until `shutdown` completes,
/// then closes every session with 1001 within the grace period and returns. If the feed
/// fails, every session is closed the same way and the error is returned: the caller exits
/// non-zero rather than serve stale quotes as if they were live.
pub async fn run(
    listener: TcpListener,
    config: Config,
    mut feed: Box<dyn Feed>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let shards = config.shard_count();
    let metrics = Arc::new(Metrics::new(shards));
    config.validate().map_err(anyhow::Error::msg)?;
    let store = Arc::new(SnapshotStore::new(std::iter::empty(), shards));
    let max_message = config.max_message_bytes as usize;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_bytes)
        .write_buffer_size(config.write_budget_bytes)
        .max_write_buffer_size(config.write_budget_bytes + 2 * max_message + 4096)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message));
    let gateway = Arc::new(Gateway {
        server_name: config.server_name(),
        access: Access::new(&config.allowed_origins, &config.access_tokens),
        store: Arc::clone(&store),
        metrics: Arc::clone(&metrics),
        ws_config,
        shutdown: CancellationToken::new(),
        sessions_active: AtomicU64::new(0),
        subscriptions_active: AtomicU64::new(0),
        started_wall_ns: wall_ns(),
        per_ip: Mutex::new(HashMap::new()),
        session_counter: AtomicU64::new(0),
        config,
    });
    let config = &gateway.config;

    let queues: Vec<Arc<ShardQueue>> =
        (0..shards).map(|_| Arc::new(ShardQueue::default())).collect();
    let mut shard_tx = Vec::with_capacity(shards);
    let mut shard_threads = Vec::with_capacity(shards);
    for (shard, queue) in queues.iter().enumerate() {
        let (tx, rx) = mpsc::channel(SHARD_BACKLOG);
        let gateway = Arc::clone(&gateway);
        let queue = Arc::clone(queue);
        let thread = std::thread::Builder::new()
            .name(format!("gw-shard-{shard}"))
            .spawn(move || run_shard(shard, gateway, queue, rx))
            .context("spawning a shard thread")?;
        shard_tx.push(tx);
        shard_threads.push(thread);
    }

    let feed_stop = CancellationToken::new();
    // If this future is dropped before it returns (its runtime ends), stop the threads too.
    let _stop_on_drop = StopOnDrop { feed: feed_stop.clone(), sessions: gateway.shutdown.clone() };
    let mut publisher = Publisher::new(Arc::clone(&store), queues, Arc::clone(&metrics));
    metrics.set_feed_name(feed.name());
    feed.prime(&mut publisher);
    let feed_name = feed.name();
    let (feed_done_tx, mut feed_done) = tokio::sync::oneshot::channel();
    let feed_thread = spawn_feed(feed, publisher, feed_stop.clone(), feed_done_tx)?;
    tokio::spawn(crate::memory::return_freed_memory(gateway.shutdown.clone()));
    tracing::info!(
        listen = %listener.local_addr()?, shards, symbols = store.table().len(), feed = feed_name,
        activity = feed_sim::Activity::from(config.sim_activity).as_str(),
        server = %gateway.server_name, "gateway serving"
    );

    tokio::pin!(shutdown);
    let mut next = 0usize;
    let mut failure = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            ended = &mut feed_done => {
                let why = match ended {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => FeedError::Failed("the feed ended by itself".into()),
                    Err(_) => FeedError::Failed("the feed's thread panicked".into()),
                };
                tracing::error!(feed = feed_name, error = %why, "the feed failed: stopping the gateway, so that a supervisor restarts it");
                failure = Some(why);
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(stream) = prepare(stream, config) else { continue };
                    if shard_tx[next].send((stream, peer)).await.is_err() {
                        break;
                    }
                    next = (next + 1) % shards;
                }
                Err(e) => {
                    // Out of file descriptors, typically: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    let sessions = gateway.sessions_active.load(Ordering::Relaxed);
    tracing::info!(
        sessions,
        grace_ms = config.shutdown_grace_ms,
        "shutting down: closing every session with 1001"
    );
    gateway.shutdown.cancel();
    drop(shard_tx);
    let joined = tokio::task::spawn_blocking(move || {
        for thread in shard_threads {
            let _ = thread.join();
        }
        feed_stop.cancel();
        let _ = feed_thread.join();
    });
    joined.await.context("joining the gateway's threads")?;
    if let Some(why) = failure {
        return Err(anyhow::Error::new(why).context("feed failed"));
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Runs `feed` on a thread of its own with a current-thread runtime; its result is sent on
/// `done` when it ends.
fn spawn_feed(
    feed: Box<dyn Feed>,
    publisher: Publisher,
    stop: CancellationToken,
    done: tokio::sync::oneshot::Sender<Result<(), FeedError>>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("feed-{}", feed.name()))
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(feed.run(publisher, stop)),
                Err(e) => Err(FeedError::Failed(format!("cannot start the feed's runtime: {e}"))),
            };
            let _ = done.send(result);
        })
        .context("spawning the feed thread")
}

/// Socket options of an accepted connection; `None` if the socket is already unusable.
fn prepare(stream: TcpStream, config: &Config) -> Option<std::net::TcpStream> {
    // Quotes are latency-sensitive and written in batches already: no Nagle delay.
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(config.send_buffer_bytes);
    stream.into_std().ok()
}

/// One shard: a thread with a current-thread runtime running the shard's fan-out and the
/// connections handed to it, until shutdown and the grace period have passed.
fn run_shard(
    shard: usize,
    gateway: Arc<Gateway>,
    queue: Arc<ShardQueue>,
    mut rx: mpsc::Receiver<(std::net::TcpStream, SocketAddr)>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(shard, error = %e, "cannot start a shard runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let ctx = Arc::new(ShardCtx {
            gateway: Arc::clone(&gateway),
            shard,
            sessions: TaskTracker::new(),
            shutdown: gateway.shutdown.child_token(),
        });
        tokio::spawn(run_shard_fanout(
            shard,
            queue,
            Arc::clone(&gateway.store),
            Arc::clone(&gateway.metrics),
            ctx.shutdown.clone(),
        ));
        let router = http::router(Arc::clone(&ctx));
        while let Some((stream, peer)) = rx.recv().await {
            match TcpStream::from_std(stream) {
                Ok(stream) => {
                    tokio::spawn(http::serve_connection(
                        stream,
                        peer,
                        router.clone(),
                        Arc::clone(&ctx),
                    ));
                }
                Err(e) => tracing::debug!(%peer, error = %e, "dropping a connection"),
            }
        }
        ctx.sessions.close();
        let grace = gateway.config.shutdown_grace();
        if tokio::time::timeout(grace, ctx.sessions.wait()).await.is_err() {
            tracing::warn!(
                shard,
                remaining = ctx.sessions.len(),
                grace_ms = grace.as_millis() as u64,
                "shutdown grace period ended before every session had closed; dropping the rest"
            );
        }
    });
}

/// Stops the feed thread and every session when [`run`] ends or is dropped.
struct StopOnDrop {
    feed: CancellationToken,
    sessions: CancellationToken,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.feed.cancel();
        self.sessions.cancel();
    }
}
