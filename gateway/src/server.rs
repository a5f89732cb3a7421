//! The gateway as a whole: the shards, the feed's thread, the accept loop, and shutdown.
//!
//! Connections are accepted here and handed to the shards round robin; from then on a
//! connection lives on its shard (see [`crate::shard`]). The feed runs on a thread of its own
//! and tells the shards which symbols changed. If the feed or a shard fails, every session is
//! closed (1001) and [`run`] returns the error, so that the process exits non-zero and a
//! supervisor restarts it: the gateway never goes on serving stale quotes as if they were live.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::access::{AccessConfig, AccessSources};
use crate::clock::wall_ns;
use crate::config::Config;
use crate::feed::{Feed, FeedError, Publisher};
use crate::inbox::{Command, Inbox, Listener};
use crate::metrics::Metrics;
use crate::shard::{self, ShardError, ShardHandle};
use crate::state::Gateway;
use crate::store::SnapshotStore;

/// Runs a gateway on `listener`, serving the quotes of `feed`, until `shutdown` completes,
/// then closes every session with 1001 within the grace period and returns. If the feed
/// fails, every session is closed the same way and the error is returned.
pub async fn run(
    listener: TcpListener,
    config: Config,
    mut feed: Box<dyn Feed>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.validate().map_err(anyhow::Error::msg)?;
    let shards = config.shard_count();
    let metrics = Arc::new(Metrics::new(shards));
    let store = Arc::new(SnapshotStore::new(std::iter::empty(), shards, config.history_limits()));
    let access = AccessConfig::load(&access_sources(&config)).map_err(anyhow::Error::new)?;
    for warning in access.warnings() {
        tracing::warn!("{warning}");
    }
    tracing::info!(access = %access.describe(), "access control");
    let gateway =
        Arc::new(Gateway::new(config, Arc::clone(&store), Arc::clone(&metrics), access, wall_ns()));
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
    tracing::info!(
        listen = %listener.local_addr()?, shards, symbols = store.table().len(), feed = feed_name,
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
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(stream) = prepare(stream, config) else { continue };
                    inboxes[next].send(Command::Connection { stream, peer, listener: Listener::Main });
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
    stream.into_std().ok()
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
