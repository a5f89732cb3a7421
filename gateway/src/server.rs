//! The gateway as a whole: the shards, the feed's thread, the accept loop, and shutdown.
//!
//! Connections are accepted here and handed to the shards round robin; from then on a
//! connection lives on its shard (see [`crate::shard`]). The feed runs on a thread of its own
//! and tells the shards which symbols changed. If the feed or a shard fails, every session is
//! closed (1001) and [`run`] returns the error, so that the process exits non-zero and a
//! supervisor restarts it: the gateway never goes on serving stale quotes as if they were live.
//!
//! SIGHUP is handled here, in the accept loop (a tokio signal stream, installed by [`serve`]):
//! the access configuration (token file, JWT key) and the TLS certificate are loaded again,
//! each all or nothing. A refused one is logged and the one in force stays; an applied access
//! configuration is swapped in (`Gateway::access`) and every shard is told to review its
//! sessions (`Command::ReviewAccess`); a new certificate applies to new connections. Both count
//! in `gateway_reloads_total{what,result}`. Nobody is disconnected by a reload but the sessions
//! whose credential it revoked (4001).
//!
//! `--metrics-listen` is a second listener of the same loop; its connections go to the shards
//! marked [`Listener::Metrics`] (plain HTTP, no PROXY header: `/metrics`, `/healthz`,
//! `/readyz` only).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::access::{AccessConfig, AccessSources};
use crate::clock::wall_ns;
use crate::config::Config;
use crate::feed::{Feed, FeedError, Publisher};
use crate::inbox::{Command, Inbox, Listener};
use crate::metrics::Metrics;
use crate::net::tls::{TlsConfigError, TlsConfigHolder};
use crate::shard::{self, ShardError, ShardHandle};
use crate::state::Gateway;
use crate::store::SnapshotStore;

/// The sockets a gateway serves: the session port, and `--metrics-listen`'s if configured.
pub struct Listeners {
    pub main: TcpListener,
    pub metrics: Option<TcpListener>,
}

/// Runs a gateway on `listener`, serving the quotes of `feed`, until `shutdown` completes,
/// then closes every session with 1001 within the grace period and returns. If the feed
/// fails, every session is closed the same way and the error is returned. `--metrics-listen`,
/// if set, is bound here; [`serve`] takes it already bound.
pub async fn run(
    listener: TcpListener,
    config: Config,
    feed: Box<dyn Feed>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?,
        ),
        None => None,
    };
    serve(Listeners { main: listener, metrics }, config, feed, shutdown).await
}

/// [`run`] on listeners already bound.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    mut feed: Box<dyn Feed>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Listeners { main: listener, metrics: metrics_listener } = listeners;
    config.validate().map_err(anyhow::Error::msg)?;
    let shards = config.shard_count();
    let metrics = Arc::new(Metrics::new(shards));
    let store = Arc::new(SnapshotStore::new(std::iter::empty(), shards, config.history_limits()));
    let access = AccessConfig::load(&access_sources(&config)).map_err(anyhow::Error::new)?;
    for warning in access.warnings() {
        tracing::warn!("{warning}");
    }
    tracing::info!(access = %access.describe(), "access control");
    let tls = load_tls(&config).map_err(anyhow::Error::new)?;
    if let Some(tls) = &tls {
        for warning in tls.warnings() {
            tracing::warn!("{warning}");
        }
        tracing::info!(cert = %tls.cert_path().display(), "TLS: the port speaks https and wss only");
    }
    // Installed before the first connection is served, so a SIGHUP never kills the process.
    let mut hangup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let gateway = Arc::new(
        Gateway::new(config, Arc::clone(&store), Arc::clone(&metrics), access, wall_ns())
            .with_tls(tls),
    );
    let config = &gateway.config;

    let mut handles: Vec<ShardHandle> = Vec::with_capacity(shards);
    for shard in 0..shards {
        handles.push(shard::spawn(shard, Arc::clone(&gateway)).context("starting a shard")?);
    }
    let inboxes: Vec<Arc<Inbox>> = handles.iter().map(|h| Arc::clone(&h.inbox)).collect();
    // If this future is dropped before it returns (its runtime ends), stop the threads too.
    let feed_stop = CancellationToken::new();
    let _stop_on_drop = StopOnDrop { feed: feed_stop.clone(), shards: inboxes.clone() };

    let mut publisher = Publisher::new(Arc::clone(&store), inboxes.clone(), Arc::clone(&metrics));
    metrics.set_feed_name(feed.name());
    feed.prime(&mut publisher);
    let feed_name = feed.name();
    let (feed_done_tx, mut feed_done) = tokio::sync::oneshot::channel();
    let feed_thread = spawn_feed(feed, publisher, feed_stop.clone(), feed_done_tx)?;
    let (shard_failed_tx, mut shard_failed) = tokio::sync::mpsc::unbounded_channel();
    let mut shard_threads = Vec::with_capacity(shards);
    for handle in handles {
        let failed = shard_failed_tx.clone();
        // A watcher per shard thread: a shard that stops before shutdown is a failure.
        shard_threads.push(std::thread::spawn(move || {
            let result = handle.thread.join().unwrap_or_else(|_| {
                Err(ShardError::Panicked(usize::MAX, "shard thread panicked".into()))
            });
            let _ = failed.send(result);
        }));
    }
    drop(shard_failed_tx);
    // Freed memory goes back to the system while the gateway runs (docs/operations.md).
    tokio::spawn(crate::memory::return_freed_memory(feed_stop.clone()));
    if let Some(metrics_listener) = &metrics_listener {
        tracing::info!(listen = %metrics_listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    }
    tracing::info!(
        listen = %listener.local_addr()?, shards, symbols = store.table().len(), feed = feed_name,
        tls = gateway.tls.is_some(), proxy_protocol = config.proxy_protocol,
        activity = feed_sim::Activity::from(config.sim_activity).as_str(),
        server = %gateway.server_name, "gateway serving"
    );

    tokio::pin!(shutdown);
    let mut next = 0usize;
    let mut failure: Option<anyhow::Error> = None;
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
                failure = Some(anyhow::Error::new(why).context("feed failed"));
                break;
            }
            Some(ended) = shard_failed.recv() => {
                let why = match ended {
                    Ok(()) => anyhow::anyhow!("a shard stopped by itself"),
                    Err(e) => anyhow::Error::new(e),
                };
                tracing::error!(error = %why, "a shard failed: stopping the gateway, so that a supervisor restarts it");
                failure = Some(why.context("shard failed"));
                break;
            }
            _ = hangup.recv() => reload(&gateway, &inboxes),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(stream) = prepare(stream, config) else { continue };
                    inboxes[next].send(Command::Connection { stream, peer, listener: Listener::Main });
                    next = (next + 1) % shards;
                }
                Err(e) => accept_failed(e).await,
            },
            accepted = accept_on(metrics_listener.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    let Some(stream) = prepare(stream, config) else { continue };
                    inboxes[next].send(Command::Connection { stream, peer, listener: Listener::Metrics });
                    next = (next + 1) % shards;
                }
                Err(e) => accept_failed(e).await,
            },
        }
    }
    drop(listener);
    drop(metrics_listener);
    let sessions = gateway.sessions_active.load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        sessions,
        grace_ms = config.shutdown_grace_ms,
        "shutting down: closing every session with 1001"
    );
    for inbox in &inboxes {
        inbox.send(Command::Shutdown);
    }
    let joined = tokio::task::spawn_blocking(move || {
        for thread in shard_threads {
            let _ = thread.join();
        }
        feed_stop.cancel();
        let _ = feed_thread.join();
    });
    joined.await.context("joining the gateway's threads")?;
    if let Some(why) = failure {
        return Err(why);
    }
    tracing::info!("gateway stopped");
    Ok(())
}

/// Accepts on `listener`, or never (no such listener).
async fn accept_on(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Out of file descriptors, typically: back off instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!(error = %e, "accept failed; retrying in 100 ms");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The TLS configuration of `--tls-cert` and `--tls-key`, if given (at start an error is exit
/// 64: `main` loads it first).
pub fn load_tls(config: &Config) -> Result<Option<TlsConfigHolder>, TlsConfigError> {
    match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => TlsConfigHolder::load(cert, key).map(Some),
        _ => Ok(None),
    }
}

/// SIGHUP: the access configuration and the certificate, again from their files. Each is
/// applied whole or refused whole (logged; the one in force stays), and counted.
fn reload(gw: &Gateway, shards: &[Arc<Inbox>]) {
    tracing::info!("SIGHUP: reloading the access configuration and the TLS certificate");
    match AccessConfig::load(&access_sources(&gw.config)) {
        Ok(access) => {
            for warning in access.warnings() {
                tracing::warn!("{warning}");
            }
            tracing::info!(access = %access.describe(), "reload applied: access control; reviewing live sessions");
            gw.access.store(Arc::new(access));
            gw.metrics.reloaded("access", true);
            for inbox in shards {
                inbox.send(Command::ReviewAccess);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "reload refused: access control; the configuration in force stays");
            gw.metrics.reloaded("access", false);
        }
    }
    if let Some(tls) = &gw.tls {
        match tls.reload() {
            Ok(()) => {
                for warning in tls.warnings() {
                    tracing::warn!("{warning}");
                }
                tracing::info!(cert = %tls.cert_path().display(), "reload applied: TLS certificate, for new connections");
                gw.metrics.reloaded("tls", true);
            }
            Err(e) => {
                tracing::warn!(error = %e, "reload refused: TLS certificate; the one in force stays");
                gw.metrics.reloaded("tls", false);
            }
        }
    }
}

/// Where the access configuration is read from (again on every SIGHUP).
pub fn access_sources(config: &Config) -> AccessSources {
    AccessSources {
        tokens_file: config.tokens_file.clone(),
        access_tokens: config.access_tokens.clone(),
        jwt_key: config.jwt_key.clone(),
    }
}

/// Socket options of an accepted connection; `None` if the socket is already unusable.
fn prepare(stream: TcpStream, config: &Config) -> Option<std::net::TcpStream> {
    // Quotes are latency-sensitive and written in batches already: no Nagle delay.
    let _ = stream.set_nodelay(true);
    // Bytes in the kernel can no longer be conflated: a small send buffer keeps a slow
    // reader's backlog in its subscriptions, where it conflates (docs/backpressure.md).
    let _ = socket2::SockRef::from(&stream).set_send_buffer_size(config.send_buffer_bytes);
    // And of those bytes, the ones not yet sent are what a slow reader's quotes age in.
    if config.send_lowat_bytes > 0 {
        set_notsent_lowat(&stream, config.send_lowat_bytes);
    }
    stream.into_std().ok()
}

/// TCP_NOTSENT_LOWAT (Linux 3.12+): the socket takes no more data, and reports itself not
/// writable, while more than `bytes` of what it holds are unsent. Best effort, like SO_SNDBUF.
fn set_notsent_lowat(stream: &TcpStream, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor, a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            std::ptr::addr_of!(value).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT not set");
    }
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

/// Stops the feed thread and every shard when [`run`] ends or is dropped.
struct StopOnDrop {
    feed: CancellationToken,
    shards: Vec<Arc<Inbox>>,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.feed.cancel();
        for inbox in &self.shards {
            inbox.send(Command::Shutdown);
        }
    }
}
