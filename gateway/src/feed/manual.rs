//! A feed that publishes exactly what a test tells it to, when it says so: the third
//! [`Feed`], beside the simulator and NATS, so tests can pin behaviour to exact quotes
//! instead of waiting on a random market.

use proto::Quote;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::{Feed, FeedError, FeedRun, Published, Publisher};

enum Command {
    Publish { symbol: String, precision: u8, quote: Quote, done: oneshot::Sender<Published> },
    SetLive(bool),
    Fail(String),
}

/// The feed half, handed to [`crate::run`].
pub struct ManualFeed {
    symbols: Vec<(String, u8)>,
    epoch: String,
    commands: mpsc::UnboundedReceiver<Command>,
}

/// The test's half: publishes quotes, flips liveness, or fails the feed.
#[derive(Clone)]
pub struct ManualFeedHandle {
    commands: mpsc::UnboundedSender<Command>,
}

impl ManualFeed {
    /// A feed whose symbols (name, precision) are known from the start, with no quotes yet.
    pub fn new(
        symbols: impl IntoIterator<Item = (String, u8)>,
        epoch: &str,
    ) -> (ManualFeed, ManualFeedHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = ManualFeed {
            symbols: symbols.into_iter().collect(),
            epoch: epoch.into(),
            commands: rx,
        };
        (feed, ManualFeedHandle { commands: tx })
    }
}

impl ManualFeedHandle {
    /// Publishes `quote` for `symbol` (added with `precision` if new) and returns once it is
    /// stored and the shards are told. `None` if the gateway has stopped.
    pub async fn publish(&self, symbol: &str, precision: u8, quote: Quote) -> Option<Published> {
        let (done, stored) = oneshot::channel();
        let command = Command::Publish { symbol: symbol.into(), precision, quote, done };
        self.commands.send(command).ok()?;
        stored.await.ok()
    }

    /// Marks the feed live or not (what `/readyz` reports).
    pub fn set_live(&self, live: bool) {
        let _ = self.commands.send(Command::SetLive(live));
    }

    /// Makes the feed fail: the gateway must then stop with an error.
    pub fn fail(&self, why: &str) {
        let _ = self.commands.send(Command::Fail(why.into()));
    }
}

impl Feed for ManualFeed {
    fn name(&self) -> &'static str {
        "manual"
    }

    fn prime(&mut self, publisher: &mut Publisher) {
        publisher.set_epoch(&self.epoch);
        for (name, precision) in &self.symbols {
            publisher.intern(name, *precision);
        }
        publisher.set_connected(true);
        publisher.set_live(true);
    }

    fn run(self: Box<Self>, mut publisher: Publisher, stop: CancellationToken) -> FeedRun {
        let mut commands = self.commands;
        Box::pin(async move {
            loop {
                let command = tokio::select! {
                    () = stop.cancelled() => return Ok(()),
                    command = commands.recv() => command,
                };
                match command {
                    // Every handle dropped: nothing more will be published; stay up.
                    None => {
                        stop.cancelled().await;
                        return Ok(());
                    }
                    Some(Command::Publish { symbol, precision, quote, done }) => {
                        let outcome = match publisher.intern(&symbol, precision) {
                            Some(id) => publisher.publish(id, quote),
                            None => Published::UnknownSymbol,
                        };
                        publisher.flush();
                        let _ = done.send(outcome);
                    }
                    Some(Command::SetLive(live)) => publisher.set_live(live),
                    Some(Command::Fail(why)) => return Err(FeedError::Failed(why)),
                }
            }
        })
    }
}
