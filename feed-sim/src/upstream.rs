//! The NATS side of `feed-sim` (contract section 5): the stream it creates or updates on start,
//! the last quotes it reads back from it (so that a restart continues every symbol's `seq`),
//! and publishing with JetStream acknowledgements counted, never awaited in the publishing loop.
//!
//! It must never publish a `seq` the stream already holds for a symbol: the simulator resumes
//! from [`last_quotes`] before it publishes anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use async_nats::jetstream::consumer::push::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use futures_util::StreamExt as _;
use proto::{PayloadQuote, Quote};

/// Subjects of the stream; a quote of `SYM` goes to `md.quote.SYM`.
pub const SUBJECTS: &str = "md.quote.>";
/// Prefix of a symbol's subject.
pub const SUBJECT_PREFIX: &str = "md.quote.";
/// How long a JetStream request (stream create, consumer create) may take before it failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long reading the stream's last quotes back may take in all: 500 symbols take a few ms.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait between reconnection attempts when NATS goes away.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);

/// Connects to NATS; fails if the first connection cannot be made (nothing to publish to).
pub async fn connect(url: &str) -> Result<Context> {
    let client = async_nats::ConnectOptions::new()
        .name("feed-sim")
        .max_reconnects(None)
        .connection_timeout(REQUEST_TIMEOUT)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50u64.saturating_mul(1 << attempts.min(16))).min(RECONNECT_DELAY_MAX)
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connection up"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS connection lost: reconnecting; updates meanwhile are counted as not acknowledged")
                }
                other => tracing::info!(event = %other, "NATS event"),
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}: is nats-server running (with -js)?"))?;
    Ok(jetstream::new(client))
}

/// Creates the stream, or updates it to these settings: subjects `md.quote.>`, one message per
/// subject (the last quote of each symbol), file storage. Returns its message count.
pub async fn ensure_stream(js: &Context, name: &str) -> Result<u64> {
    let config = Config {
        name: name.to_string(),
        subjects: vec![SUBJECTS.to_string()],
        max_messages_per_subject: 1,
        retention: RetentionPolicy::Limits,
        discard: DiscardPolicy::Old,
        storage: StorageType::File,
        ..Config::default()
    };
    let info = tokio::time::timeout(REQUEST_TIMEOUT, js.create_or_update_stream(config))
        .await
        .map_err(|_| anyhow!("no answer from JetStream within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| {
            format!(
                "cannot create or update stream {name}: is JetStream enabled (nats-server -js)?"
            )
        })?;
    Ok(info.state.messages)
}

/// The last quote of every symbol in the stream, by symbol name (an empty map for an empty
/// stream). A message that does not decode is skipped with a warning.
pub async fn last_quotes(js: &Context, stream: &str) -> Result<HashMap<String, (u8, Quote)>> {
    let mut quotes = HashMap::new();
    let stream_handle = js.get_stream(stream).await.with_context(|| format!("stream {stream}"))?;
    let consumer = stream_handle
        .create_consumer(OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            filter_subject: SUBJECTS.to_string(),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..OrderedConfig::default()
        })
        .await
        .context("creating a consumer to read the last quotes")?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(quotes);
    }
    let mut messages = consumer.messages().await.context("reading the last quotes")?;
    let load = async {
        while let Some(message) = messages.next().await {
            let message = message.context("reading the last quotes")?;
            let pending = message.info().map(|i| i.pending).unwrap_or(0);
            match proto::decode_payload(&message.payload) {
                Ok(PayloadQuote { symbol, precision, quote }) => {
                    quotes.insert(symbol.into_owned(), (precision, quote));
                }
                Err(e) => {
                    tracing::warn!(subject = %message.subject, error = %e, "skipping a stream message that is not a quote")
                }
            }
            if pending == 0 {
                break;
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(LOAD_TIMEOUT, load)
        .await
        .map_err(|_| anyhow!("reading the last quotes took over {LOAD_TIMEOUT:?}"))??;
    Ok(quotes)
}

/// Publishes quotes with JetStream acknowledgements checked off the publishing path.
pub struct QuotePublisher {
    js: Context,
    pub published: u64,
    failed: Arc<AtomicU64>,
}

impl QuotePublisher {
    pub fn new(js: Context) -> QuotePublisher {
        QuotePublisher { js, published: 0, failed: Arc::new(AtomicU64::new(0)) }
    }

    /// Publishes one payload on `md.quote.<symbol>`. Waits only while the client's outgoing
    /// buffer is full (NATS unreachable for long); the acknowledgement is awaited by a task.
    pub async fn publish(&mut self, symbol: &str, payload: bytes::Bytes) {
        let subject = format!("{SUBJECT_PREFIX}{symbol}");
        self.published += 1;
        match self.js.publish(subject, payload).await {
            Ok(ack) => {
                let failed = Arc::clone(&self.failed);
                tokio::spawn(async move {
                    if ack.await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Publishes that JetStream did not acknowledge (lost while NATS was unreachable).
    pub fn unacknowledged(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Waits until everything published has reached the server.
    pub async fn flush(&self) {
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.js.client().flush()).await;
    }
}
