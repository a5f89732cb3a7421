//! The NATS feed (contract section 5): the last quote of every symbol from a JetStream stream,
//! then every update as it is published, with no gap and no duplicate between the two.
//!
//! How: subscribe to `md.quote.>` first (plain NATS, flushed so that the server has it), then
//! load the stream: read its last sequence L, and the last message of every subject up to L
//! (an ordered consumer with "last per subject"). Every update published after the
//! subscription is in the subscription; every one before L is in the load (the last of its
//! symbol); so nothing falls between. Where they overlap, a live update at or below the `seq`
//! the load stored for its symbol is skipped and counted as a duplicate. After a lost
//! connection the client restores the subscription and the load is done again.
//!
//! Why not follow the stream itself: it keeps one message per subject, and a JetStream
//! consumer skips a message the stream replaced before the consumer got to it, which drops
//! updates of busy symbols; the plain subscription gets every one, one hop sooner.
//!
//! `epoch` is derived from the stream's name and creation time, which every gateway reads the
//! same. If the stream is recreated (its `seq` values may start again) the feed fails, so the
//! gateway exits non-zero and its supervisor restarts it under the new epoch.
//!
//! This module must never trust a payload (each is decoded by the bounded
//! [`proto::decode_payload`]; what does not decode is counted and dropped), never block a shard
//! (it runs on the feed's own thread), and never go on as live while NATS is unreachable:
//! `set_live(false)` then, and the last snapshots stay served.

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::{self, Context};
use async_nats::Event;
use futures_util::{FutureExt as _, StreamExt as _};
use proto::payload::rescale;
use proto::PayloadQuote;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Feed, FeedError, FeedRun, Published, Publisher};
use crate::config::Config;
use crate::metrics::MalformedReason;
use crate::store::SymbolId;

/// The subjects quotes are published on (contract section 5).
pub const SUBJECTS: &str = "md.quote.>";

/// Longest wait between two reconnection attempts: a gateway is back within two seconds of
/// NATS, while a NATS server that is down for long gets one attempt every two seconds.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(2);
/// First reconnection delay, doubled per failed attempt up to [`RECONNECT_DELAY_MAX`].
const RECONNECT_DELAY_FIRST: Duration = Duration::from_millis(50);
/// A JetStream API request (stream info, consumer creation) that takes longer has failed:
/// on a healthy server it takes well under a millisecond.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest load of the stream's last quotes: 500 symbols take milliseconds, a million a few
/// seconds; past this the load is retried.
const LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Between attempts to find the stream and create the consumer.
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// How often the stream's identity is checked (a recreated stream is a new epoch).
const STREAM_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Messages the NATS client buffers for the live subscription (while the stream loads, or
/// while the feed thread is busy) before it drops them and reports a slow consumer: 64k is
/// half a minute at the default rate, ~15 MiB at most.
const SUBSCRIPTION_CAPACITY: usize = 65_536;
/// Messages handled between two wake-ups of the shards: bounds the delay a burst (the initial
/// load) adds to the first of its updates.
const MAX_BATCH: usize = 256;
/// At most one warning per this interval about malformed messages (a broken publisher would
/// otherwise fill the log); the count is in `gateway_feed_malformed_messages_total`.
const MALFORMED_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The gateway's side of a NATS JetStream stream of quotes.
pub struct NatsFeed {
    url: String,
    stream: String,
    client_name: String,
}

impl NatsFeed {
    /// The feed `--feed nats://HOST:PORT --nats-stream NAME` describes.
    pub fn from_config(config: &Config) -> Result<NatsFeed, FeedError> {
        let url = config.feed.clone();
        let authority = url.strip_prefix("nats://").unwrap_or_default();
        if authority.is_empty() || authority.contains('/') {
            return Err(FeedError::Config(format!(
                "--feed {url}: expected a NATS URL such as nats://127.0.0.1:4222"
            )));
        }
        let stream = config.nats_stream.clone();
        if !valid_stream_name(&stream) {
            return Err(FeedError::Config(format!(
                "--nats-stream {stream:?}: a JetStream stream name is 1 to 255 characters \
                 without spaces, `.`, `*`, `>`, `/` or `\\`"
            )));
        }
        Ok(NatsFeed { url, stream, client_name: format!("gateway {}", config.server_name()) })
    }
}

fn valid_stream_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && !name.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

/// The epoch of a stream: its name and creation time, hashed (FNV-1a, 64 bits) to 16 hex
/// digits. Every gateway reads the same creation time, so every gateway announces the same.
pub fn stream_epoch(stream: &str, created_unix_ns: i128) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.bytes().chain([b'@']).chain(created_unix_ns.to_string().bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

impl Feed for NatsFeed {
    fn name(&self) -> &'static str {
        "nats"
    }

    /// Nothing is known before NATS answers: no symbols, no epoch, not live.
    fn prime(&mut self, publisher: &mut Publisher) {
        publisher.set_connected(false);
        publisher.set_live(false);
    }

    fn run(self: Box<Self>, publisher: Publisher, stop: CancellationToken) -> FeedRun {
        Box::pin(async move {
            let (events_tx, events) = mpsc::unbounded_channel();
            let options = async_nats::ConnectOptions::new()
                .name(&self.client_name)
                .retry_on_initial_connect()
                .max_reconnects(None)
                .connection_timeout(REQUEST_TIMEOUT)
                .subscription_capacity(SUBSCRIPTION_CAPACITY)
                .reconnect_delay_callback(reconnect_delay)
                .event_callback(move |event| {
                    let tx = events_tx.clone();
                    async move {
                        let _ = tx.send(event);
                    }
                });
            let client = options.connect(&self.url).await.map_err(|e| {
                FeedError::Config(format!("--feed {}: cannot use this NATS URL: {e}", self.url))
            })?;
            tracing::info!(url = %self.url, stream = %self.stream, "NATS feed: connecting");
            let mut follower = Follower {
                publisher,
                stop,
                events,
                url: self.url,
                stream: self.stream,
                connected: false,
                ever_connected: false,
                loaded: false,
                reconnections: 0,
                created: None,
                load_seq: Vec::new(),
                malformed_since_log: 0,
                malformed_logged: None,
            };
            let js = jetstream::new(client.clone());
            let result = follower.run(&client, &js).await;
            follower.publisher.set_live(false);
            follower.publisher.set_connected(false);
            result
        })
    }
}

fn reconnect_delay(attempts: usize) -> Duration {
    let shift = attempts.min(16) as u32;
    RECONNECT_DELAY_FIRST.saturating_mul(1 << shift).min(RECONNECT_DELAY_MAX)
}

/// What the follower's wait ended with.
enum Step<T> {
    Stopped,
    Event(Event),
    Done(T),
}

/// How following the live subjects ended.
enum Ended {
    Stopped,
    /// The connection came back: messages may have been missed meanwhile, load again.
    Reload,
}

struct Follower {
    publisher: Publisher,
    stop: CancellationToken,
    events: mpsc::UnboundedReceiver<Event>,
    url: String,
    stream: String,
    connected: bool,
    ever_connected: bool,
    /// The last quote of every symbol has been loaded since the last (re)connection.
    loaded: bool,
    /// Times the connection came back after a loss: a load during which it changed may have
    /// missed updates, and is done again.
    reconnections: u64,
    /// The stream's creation time (ns since the Unix epoch), once known.
    created: Option<i128>,
    /// Per symbol id, the highest `seq` the last load stored: a live message at or below it
    /// arrived both ways (the overlap of subscription and load) and is skipped, not dropped.
    load_seq: Vec<u64>,
    malformed_since_log: u64,
    malformed_logged: Option<Instant>,
}

impl Follower {
    /// Subscribe to the live subjects first, then load the stream: every update published
    /// after the subscription reached the server is in the subscription, every one before it
    /// is in the stream (its last per symbol), so nothing falls between. After a reconnection
    /// the subscription is restored by the client and the load is done again.
    async fn run(&mut self, client: &async_nats::Client, js: &Context) -> Result<(), FeedError> {
        let mut live = loop {
            match client.subscribe(SUBJECTS).await {
                Ok(subscriber) => break subscriber,
                Err(e) => {
                    tracing::warn!(url = %self.url, error = %e, "cannot subscribe to {SUBJECTS} yet; retrying");
                    if self.wait(tokio::time::sleep(RETRY_DELAY)).await.is_none() {
                        return Ok(());
                    }
                }
            }
        };
        loop {
            if !self.load(client, js).await? {
                return Ok(());
            }
            match self.follow(&mut live, js).await? {
                Ended::Stopped => return Ok(()),
                Ended::Reload => continue,
            }
        }
    }

    /// Waits for `fut`, handling connection events meanwhile; `None` once stopped.
    async fn wait<T>(&mut self, fut: impl Future<Output = T>) -> Option<T> {
        tokio::pin!(fut);
        loop {
            let step = tokio::select! {
                biased;
                () = self.stop.cancelled() => Step::Stopped,
                Some(event) = self.events.recv() => Step::Event(event),
                out = &mut fut => Step::Done(out),
            };
            match step {
                Step::Stopped => return None,
                Step::Event(event) => {
                    self.on_event(event);
                }
                Step::Done(out) => return Some(out),
            }
        }
    }

    /// Handles a connection event; `true` when the connection came back after a loss.
    fn on_event(&mut self, event: Event) -> bool {
        let mut back = false;
        match event {
            Event::Connected => {
                if self.ever_connected && !self.connected {
                    self.publisher.metrics().feed_reconnected();
                    tracing::info!(url = %self.url, "NATS connection is back: loading the stream again, then following live");
                    back = true;
                    self.reconnections += 1;
                } else if !self.ever_connected {
                    tracing::info!(url = %self.url, "connected to NATS");
                }
                self.connected = true;
                self.ever_connected = true;
                self.publisher.set_connected(true);
            }
            Event::Disconnected => {
                if self.connected {
                    tracing::warn!(url = %self.url, "lost the NATS connection: serving the last snapshots, /readyz answers 503 until it is back; reconnecting");
                }
                self.connected = false;
                self.loaded = false;
                self.publisher.set_connected(false);
            }
            Event::SlowConsumer(_) => tracing::warn!(
                "this gateway reads NATS messages slower than they arrive and the client dropped some: \
                 clients see seq jumps; see docs/deployment.md (slow consumers)"
            ),
            Event::ServerError(e) => tracing::warn!(url = %self.url, error = %e, "NATS server error"),
            // While disconnected, every failed reconnection attempt is one: not worth a warning each.
            Event::ClientError(e) if !self.connected => {
                tracing::debug!(url = %self.url, error = %e, "NATS reconnection attempt failed")
            }
            Event::ClientError(e) => tracing::warn!(url = %self.url, error = %e, "NATS client error"),
            other => tracing::info!(url = %self.url, event = %other, "NATS connection event"),
        }
        self.update_live();
        back
    }

    fn update_live(&mut self) {
        self.publisher.set_live(self.connected && self.loaded);
    }

    /// Loads the last quote of every symbol from the stream, retrying until it is done (`true`)
    /// or the feed stops (`false`). The live subscription buffers meanwhile.
    async fn load(&mut self, client: &async_nats::Client, js: &Context) -> Result<bool, FeedError> {
        let mut failures: u32 = 0;
        loop {
            let reconnections = self.reconnections;
            let attempt = load_once(client.clone(), js.clone(), self.stream.clone());
            let Some(result) = self.wait(attempt).await else { return Ok(false) };
            match result {
                Ok(_) if self.reconnections != reconnections => {
                    tracing::info!(stream = %self.stream, "the connection was lost during the load: loading again");
                }
                Ok((created, messages)) => {
                    self.note_created(created)?;
                    self.load_seq.clear();
                    let (mut stored, mut last_stream_seq) = (0, 0);
                    for message in &messages {
                        // nats-server 2.9 repeats a few deliveries while it switches from the
                        // last message of every subject to new ones: once each is enough.
                        if let Ok(info) = message.info() {
                            if info.stream_sequence <= last_stream_seq {
                                continue;
                            }
                            last_stream_seq = info.stream_sequence;
                        }
                        let Some(decoded) = self.decode(&message.payload, &message.subject) else {
                            continue;
                        };
                        // Live got here first (a reload after a reconnection): not an error.
                        if self.stored_at_or_above(&decoded) {
                            self.publisher.metrics().feed_duplicate();
                            continue;
                        }
                        if let Some((id, Published::Stored)) =
                            self.publish(decoded, &message.subject)
                        {
                            stored += 1;
                            let seq = self.publisher.stored_seq(id).unwrap_or(0);
                            let slot = id as usize;
                            if self.load_seq.len() <= slot {
                                self.load_seq.resize(slot + 1, 0);
                            }
                            self.load_seq[slot] = seq;
                        }
                    }
                    self.publisher.flush();
                    self.loaded = true;
                    tracing::info!(
                        stream = %self.stream,
                        symbols = self.publisher.store().table().len(),
                        updated = stored,
                        "loaded the last quote of every symbol: following live"
                    );
                    self.update_live();
                    return Ok(true);
                }
                Err(why) => {
                    // The first failure and then one in 20 (every ~5 s): enough to see why.
                    if failures.is_multiple_of(20) {
                        tracing::warn!(url = %self.url, stream = %self.stream, "cannot load the stream yet ({why}); retrying every {} ms. Is the feed running (feed-sim --nats {})?", RETRY_DELAY.as_millis(), self.url);
                    }
                    failures = failures.saturating_add(1);
                    if self.wait(tokio::time::sleep(RETRY_DELAY)).await.is_none() {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// The first creation time seen names the epoch; a different one later is a new stream.
    fn note_created(&mut self, created: i128) -> Result<(), FeedError> {
        match self.created {
            None => {
                let epoch = stream_epoch(&self.stream, created);
                tracing::info!(stream = %self.stream, %epoch, "epoch of the stream");
                self.publisher.set_epoch(&epoch);
                self.created = Some(created);
                Ok(())
            }
            Some(known) if known == created => Ok(()),
            Some(_) => Err(FeedError::Failed(format!(
                "stream {} was deleted and created again: its seq values start over under a new \
                 epoch, so this gateway stops (restart it, or let its supervisor, to serve the new one)",
                self.stream
            ))),
        }
    }

    /// Handles live messages until the feed stops or the connection comes back after a loss.
    async fn follow(
        &mut self,
        live: &mut async_nats::Subscriber,
        js: &Context,
    ) -> Result<Ended, FeedError> {
        let (check_tx, mut check_rx) = mpsc::channel::<Result<Option<i128>, String>>(1);
        let mut check = tokio::time::interval(STREAM_CHECK_INTERVAL);
        check.reset();
        loop {
            let step = tokio::select! {
                biased;
                () = self.stop.cancelled() => Step::Stopped,
                Some(event) = self.events.recv() => Step::Event(event),
                Some(checked) = check_rx.recv() => {
                    self.on_stream_check(checked)?;
                    continue;
                }
                _ = check.tick() => {
                    if self.connected {
                        let (js, stream, tx) = (js.clone(), self.stream.clone(), check_tx.clone());
                        tokio::spawn(async move {
                            let _ = tx.send(stream_created(&js, &stream).await).await;
                        });
                    }
                    continue;
                }
                next = live.next() => Step::Done(next),
            };
            let first = match step {
                Step::Stopped => return Ok(Ended::Stopped),
                Step::Event(event) => {
                    if self.on_event(event) {
                        return Ok(Ended::Reload);
                    }
                    continue;
                }
                Step::Done(Some(message)) => message,
                // The client was closed: nothing more will come.
                Step::Done(None) => {
                    return Err(FeedError::Failed("the NATS client closed the subscription".into()))
                }
            };
            self.handle_live(&first);
            for _ in 1..MAX_BATCH {
                match live.next().now_or_never() {
                    Some(Some(message)) => self.handle_live(&message),
                    _ => break,
                }
            }
            self.publisher.flush();
        }
    }

    fn on_stream_check(&mut self, checked: Result<Option<i128>, String>) -> Result<(), FeedError> {
        match checked {
            Ok(Some(created)) => self.note_created(created),
            Ok(None) => {
                tracing::warn!(stream = %self.stream, "the stream is gone: serving the last snapshots until it is back");
                Ok(())
            }
            Err(why) => {
                tracing::debug!(stream = %self.stream, %why, "stream check failed");
                Ok(())
            }
        }
    }

    /// Whether the store already holds this symbol at or above the quote's `seq`.
    fn stored_at_or_above(&self, decoded: &PayloadQuote<'_>) -> bool {
        let id = self.publisher.store().table().get(&decoded.symbol).map(|e| e.id);
        id.and_then(|id| self.publisher.stored_seq(id)).is_some_and(|s| decoded.quote.seq <= s)
    }

    /// One live message. One at or below what the last load stored for its symbol came both
    /// ways (subscription and load): skipped and counted as a duplicate. Any other `seq` not
    /// above the stored one is dropped and counted by the publisher.
    fn handle_live(&mut self, message: &async_nats::Message) {
        let Some(decoded) = self.decode(&message.payload, &message.subject) else { return };
        let id = self.publisher.store().table().get(&decoded.symbol).map(|e| e.id);
        if let Some(id) = id {
            let loaded = self.load_seq.get(id as usize).copied().unwrap_or(0);
            if decoded.quote.seq <= loaded && self.stored_at_or_above(&decoded) {
                self.publisher.metrics().feed_duplicate();
                return;
            }
        }
        if let Some((_, Published::Stale)) = self.publish(decoded, &message.subject) {
            tracing::debug!(subject = %message.subject, "dropped an update whose seq is not above the stored one");
        }
    }

    /// Decodes a payload; `None` (counted, logged) if it is not a quote.
    fn decode<'a>(&mut self, payload: &'a [u8], subject: &str) -> Option<PayloadQuote<'a>> {
        match proto::decode_payload(payload) {
            Ok(decoded) => Some(decoded),
            Err(why) => {
                self.malformed(MalformedReason::Payload, subject, &why.to_string());
                None
            }
        }
    }

    /// Publishes a decoded quote in its symbol's precision; `None` if that cannot be done
    /// (counted).
    fn publish(
        &mut self,
        decoded: PayloadQuote<'_>,
        subject: &str,
    ) -> Option<(SymbolId, Published)> {
        let Some(id) = self.publisher.intern(&decoded.symbol, decoded.precision) else {
            self.malformed(MalformedReason::Symbol, subject, "not a valid symbol name");
            return None;
        };
        let precision = self.publisher.store().table().entries[id as usize].precision;
        let mut quote = decoded.quote;
        if precision != decoded.precision {
            let at = |p| rescale(p, decoded.precision, precision);
            match (at(quote.bid), at(quote.ask), at(quote.last)) {
                (Some(bid), Some(ask), Some(last)) => {
                    quote.bid = bid;
                    quote.ask = ask;
                    quote.last = last;
                }
                _ => {
                    self.malformed(
                        MalformedReason::Precision,
                        subject,
                        &format!("a price has more than the symbol's {precision} decimals"),
                    );
                    return None;
                }
            }
        }
        Some((id, self.publisher.publish(id, quote)))
    }

    fn malformed(&mut self, reason: MalformedReason, subject: &str, why: &str) {
        self.publisher.metrics().feed_malformed(reason);
        self.malformed_since_log += 1;
        let due = self.malformed_logged.is_none_or(|at| at.elapsed() >= MALFORMED_LOG_INTERVAL);
        if due {
            tracing::warn!(
                %subject,
                reason = reason.as_str(),
                dropped = self.malformed_since_log,
                "dropped a feed message that is not a usable quote: {why} (further ones are counted in gateway_feed_malformed_messages_total, logged at most every {} s)",
                MALFORMED_LOG_INTERVAL.as_secs()
            );
            self.malformed_since_log = 0;
            self.malformed_logged = Some(Instant::now());
        }
    }
}

/// One load: makes sure the live subscription has reached the server (a flush), then reads
/// the stream's last sequence L and the last message of every subject up to L. Everything
/// after L is in the live subscription, so the load ends at the first delivery at or past L
/// (deliveries come in stream order). Returns the stream's creation time and the messages.
async fn load_once(
    client: async_nats::Client,
    js: Context,
    stream: String,
) -> Result<(i128, Vec<jetstream::Message>), String> {
    tokio::time::timeout(REQUEST_TIMEOUT, client.flush())
        .await
        .map_err(|_| "no answer from NATS".to_string())?
        .map_err(|e| format!("flushing the subscription: {e}"))?;
    let (created, last_seq, mut consumer, pending) = attempt_subscribe(js, stream).await?;
    let mut messages = Vec::new();
    if pending == 0 || last_seq == 0 {
        return Ok((created, messages));
    }
    let read = async {
        while let Some(message) = consumer.next().await {
            let message = message.map_err(|e| format!("reading the stream: {e}"))?;
            let done = message
                .info()
                .map(|i| i.stream_sequence >= last_seq || i.pending == 0)
                .unwrap_or(false);
            messages.push(message);
            if done {
                return Ok(());
            }
        }
        Err("the stream's consumer ended".to_string())
    };
    tokio::time::timeout(LOAD_TIMEOUT, read)
        .await
        .map_err(|_| format!("the load took over {} s", LOAD_TIMEOUT.as_secs()))??;
    Ok((created, messages))
}

/// Looks the stream up and creates a consumer of the last message of every subject and what
/// follows. Returns the stream's creation time and last sequence, the messages and how many
/// the consumer has pending.
async fn attempt_subscribe(
    js: Context,
    stream: String,
) -> Result<(i128, u64, Ordered, u64), String> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, js.get_stream(&stream))
        .await
        .map_err(|_| "no answer from JetStream".to_string())?
        .map_err(|e| format!("stream {stream}: {e}"))?;
    let created = stream.cached_info().created.unix_timestamp_nanos();
    let last_seq = stream.cached_info().state.last_sequence;
    let config = OrderedConfig {
        deliver_subject: js.client().new_inbox(),
        filter_subject: SUBJECTS.to_string(),
        deliver_policy: DeliverPolicy::LastPerSubject,
        ..OrderedConfig::default()
    };
    let consumer = tokio::time::timeout(REQUEST_TIMEOUT, stream.create_consumer(config))
        .await
        .map_err(|_| "no answer from JetStream".to_string())?
        .map_err(|e| format!("creating a consumer: {e}"))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer.messages().await.map_err(|e| format!("subscribing: {e}"))?;
    Ok((created, last_seq, messages, pending))
}

/// The stream's creation time; `None` if it does not exist.
async fn stream_created(js: &Context, stream: &str) -> Result<Option<i128>, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, js.get_stream(stream)).await {
        Err(_) => Err("no answer from JetStream".into()),
        Ok(Ok(stream)) => Ok(Some(stream.cached_info().created.unix_timestamp_nanos())),
        Ok(Err(e)) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_depends_on_the_stream_and_its_creation_time_only() {
        let a = stream_epoch("MD_QUOTES", 1_763_775_600_123_456_789);
        assert_eq!(a, stream_epoch("MD_QUOTES", 1_763_775_600_123_456_789));
        assert_eq!(a.len(), 16);
        assert_ne!(a, stream_epoch("MD_QUOTES", 1_763_775_600_123_456_790));
        assert_ne!(a, stream_epoch("OTHER", 1_763_775_600_123_456_789));
    }

    #[test]
    fn reconnect_delays_double_up_to_the_cap() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(50));
        assert_eq!(reconnect_delay(1), Duration::from_millis(100));
        assert_eq!(reconnect_delay(5), Duration::from_millis(1600));
        assert_eq!(reconnect_delay(6), RECONNECT_DELAY_MAX);
        assert_eq!(reconnect_delay(usize::MAX), RECONNECT_DELAY_MAX);
    }

    #[test]
    fn the_feed_flags_are_checked_before_anything_is_served() {
        let config = |feed: &str, stream: &str| {
            <Config as clap::Parser>::parse_from([
                "gateway",
                "--feed",
                feed,
                "--nats-stream",
                stream,
            ])
        };
        assert!(NatsFeed::from_config(&config("nats://127.0.0.1:4222", "MD_QUOTES")).is_ok());
        for (feed, stream) in
            [("nats://", "MD_QUOTES"), ("nats://h:1/x", "MD_QUOTES"), ("nats://h:1", "MD.QUOTES")]
        {
            let err = NatsFeed::from_config(&config(feed, stream)).err().expect(feed);
            assert!(matches!(err, FeedError::Config(_)), "{feed} {stream}: {err}");
        }
    }

    #[test]
    fn stream_names_follow_jetstream_rules() {
        assert!(valid_stream_name("MD_QUOTES"));
        for bad in ["", "MD.QUOTES", "A B", "A*", "A>", "a/b"] {
            assert!(!valid_stream_name(bad), "{bad}");
        }
    }
}
