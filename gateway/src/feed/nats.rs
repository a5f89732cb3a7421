//! The NATS feed (contract section 5): the last quote of every symbol from a JetStream stream,
//! then every update as it is published, with no gap and no duplicate between the two.
//!
//! How: one ordered push consumer on `md.quote.>` that starts with "the last message of every
//! subject" and then goes on with new messages. JetStream delivers in stream order and the
//! client checks each delivery's sequence, recreating the consumer from the next stream
//! sequence after a gap or a reconnect; so the load and the live follow are one sequence, with
//! nothing between them. A message whose `pending` count is 0 marks the load as done.
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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Feed, FeedError, FeedRun, Published, Publisher};
use crate::config::Config;
use crate::metrics::MalformedReason;

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
/// Between attempts to find the stream and create the consumer.
const RETRY_DELAY: Duration = Duration::from_millis(250);
/// How often the stream's identity is checked (a recreated stream is a new epoch).
const STREAM_CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Messages the NATS client buffers for the consumer before it drops them and reports a slow
/// consumer: 64k is half a minute at the default rate, and ~15 MiB at most.
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
                created: None,
                last_stream_seq: 0,
                malformed_since_log: 0,
                malformed_logged: None,
            };
            let js = jetstream::new(client);
            let result = follower.run(&js).await;
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

/// How a subscription ended.
enum Ended {
    Stopped,
    Resubscribe,
}

struct Follower {
    publisher: Publisher,
    stop: CancellationToken,
    events: mpsc::UnboundedReceiver<Event>,
    url: String,
    stream: String,
    connected: bool,
    ever_connected: bool,
    /// The last quote of every symbol has been loaded.
    loaded: bool,
    /// The stream's creation time (ns since the Unix epoch), once known.
    created: Option<i128>,
    /// The stream sequence of the last message handled: a new consumer starts after it.
    last_stream_seq: u64,
    malformed_since_log: u64,
    malformed_logged: Option<Instant>,
}

impl Follower {
    async fn run(&mut self, js: &Context) -> Result<(), FeedError> {
        loop {
            let Some(messages) = self.subscribe(js).await? else { return Ok(()) };
            match self.follow(messages, js).await? {
                Ended::Stopped => return Ok(()),
                Ended::Resubscribe => continue,
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
                Step::Event(event) => self.on_event(event),
                Step::Done(out) => return Some(out),
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Connected => {
                if self.ever_connected && !self.connected {
                    self.publisher.metrics().feed_reconnected();
                    tracing::info!(url = %self.url, "NATS connection is back: resuming the stream after sequence {}", self.last_stream_seq);
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
    }

    fn update_live(&mut self) {
        self.publisher.set_live(self.connected && self.loaded);
    }

    /// Finds the stream and creates the consumer, retrying until it works or the feed stops.
    async fn subscribe(&mut self, js: &Context) -> Result<Option<Ordered>, FeedError> {
        let mut failures: u32 = 0;
        loop {
            let attempt = attempt_subscribe(js.clone(), self.stream.clone(), self.last_stream_seq);
            let Some(result) = self.wait(attempt).await else { return Ok(None) };
            match result {
                Ok((created, messages, pending)) => {
                    self.note_created(created)?;
                    if failures > 0 {
                        tracing::info!(stream = %self.stream, "found the stream: following it");
                    }
                    if pending == 0 && !self.loaded {
                        self.mark_loaded();
                    }
                    return Ok(Some(messages));
                }
                Err(why) => {
                    // The first failure and then one in 20 (every ~5 s): enough to see why.
                    if failures.is_multiple_of(20) {
                        tracing::warn!(url = %self.url, stream = %self.stream, "cannot follow the stream yet ({why}); retrying every {} ms. Is the feed running (feed-sim --nats {})?", RETRY_DELAY.as_millis(), self.url);
                    }
                    failures = failures.saturating_add(1);
                    if self.wait(tokio::time::sleep(RETRY_DELAY)).await.is_none() {
                        return Ok(None);
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

    fn mark_loaded(&mut self) {
        self.loaded = true;
        tracing::info!(
            stream = %self.stream,
            symbols = self.publisher.store().table().len(),
            "loaded the last quote of every symbol: following live"
        );
        self.update_live();
    }

    /// Handles the consumer's messages until it ends, fails, or the feed stops.
    async fn follow(&mut self, mut messages: Ordered, js: &Context) -> Result<Ended, FeedError> {
        let (check_tx, mut check_rx) = mpsc::channel::<Result<Option<i128>, String>>(1);
        let mut check = tokio::time::interval(STREAM_CHECK_INTERVAL);
        check.reset();
        loop {
            let step = tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ok(Ended::Stopped),
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
                next = messages.next() => Step::Done(next),
            };
            let next = match step {
                Step::Stopped => return Ok(Ended::Stopped),
                Step::Event(event) => {
                    self.on_event(event);
                    continue;
                }
                Step::Done(next) => next,
            };
            let mut next = Some(next);
            let mut handled = 0;
            while let Some(item) = next.take() {
                match item {
                    Some(Ok(message)) => self.handle(&message),
                    Some(Err(e)) => {
                        self.publisher.flush();
                        tracing::warn!(stream = %self.stream, error = %e, "the NATS consumer failed; subscribing again after stream sequence {}", self.last_stream_seq);
                        return Ok(Ended::Resubscribe);
                    }
                    None => {
                        self.publisher.flush();
                        tracing::warn!(stream = %self.stream, "the NATS subscription ended; subscribing again after stream sequence {}", self.last_stream_seq);
                        return Ok(Ended::Resubscribe);
                    }
                }
                handled += 1;
                if handled < MAX_BATCH {
                    next = messages.next().now_or_never();
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

    /// One message: decoded, checked, stored (the publisher drops a stale `seq` and counts it).
    fn handle(&mut self, message: &jetstream::Message) {
        let mut caught_up = false;
        if let Ok(info) = message.info() {
            // Deliveries come in stream order; one at or below the last handled is the same
            // message again (nats-server 2.9 repeats a few while it switches from the last
            // message of every subject to new ones). Counted, never stored twice.
            if info.stream_sequence <= self.last_stream_seq {
                self.publisher.metrics().feed_duplicate();
                return;
            }
            self.last_stream_seq = info.stream_sequence;
            caught_up = info.pending == 0;
        }
        if self.publish(&message.payload, message.subject.as_str()) == Some(Published::Stale) {
            tracing::debug!(subject = %message.subject, stream_seq = self.last_stream_seq, "dropped an update whose seq is not above the stored one");
        }
        if caught_up && !self.loaded {
            self.publisher.flush();
            self.mark_loaded();
        }
    }

    /// Decodes and publishes one payload; `None` if it was malformed (counted).
    fn publish(&mut self, payload: &[u8], subject: &str) -> Option<Published> {
        let decoded = match proto::decode_payload(payload) {
            Ok(decoded) => decoded,
            Err(why) => {
                self.malformed(MalformedReason::Payload, subject, &why.to_string());
                return None;
            }
        };
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
        Some(self.publisher.publish(id, quote))
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

/// Looks the stream up and creates the consumer: from the last message of every subject on the
/// first attempt, after `after_seq` on later ones. Returns the stream's creation time, the
/// messages and how many the consumer has pending.
async fn attempt_subscribe(
    js: Context,
    stream: String,
    after_seq: u64,
) -> Result<(i128, Ordered, u64), String> {
    let stream = tokio::time::timeout(REQUEST_TIMEOUT, js.get_stream(&stream))
        .await
        .map_err(|_| "no answer from JetStream".to_string())?
        .map_err(|e| format!("stream {stream}: {e}"))?;
    let created = stream.cached_info().created.unix_timestamp_nanos();
    let deliver_policy = if after_seq == 0 {
        DeliverPolicy::LastPerSubject
    } else {
        DeliverPolicy::ByStartSequence { start_sequence: after_seq + 1 }
    };
    let config = OrderedConfig {
        deliver_subject: js.client().new_inbox(),
        filter_subject: SUBJECTS.to_string(),
        deliver_policy,
        ..OrderedConfig::default()
    };
    let consumer = tokio::time::timeout(REQUEST_TIMEOUT, stream.create_consumer(config))
        .await
        .map_err(|_| "no answer from JetStream".to_string())?
        .map_err(|e| format!("creating a consumer: {e}"))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer.messages().await.map_err(|e| format!("subscribing: {e}"))?;
    Ok((created, messages, pending))
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
        assert_eq!(reconnect_delay(5), RECONNECT_DELAY_MAX);
        assert_eq!(reconnect_delay(usize::MAX), RECONNECT_DELAY_MAX);
    }

    #[test]
    fn stream_names_follow_jetstream_rules() {
        assert!(valid_stream_name("MD_QUOTES"));
        for bad in ["", "MD.QUOTES", "A B", "A*", "A>", "a/b"] {
            assert!(!valid_stream_name(bad), "{bad}");
        }
    }
}
