//! `feed-sim`: the simulated market as a process of its own, publishing on NATS JetStream
//! (contract section 5) for any number of gateways, or replaying a recording.
//!
//! On start it creates or updates the stream, reads back the last quote of every symbol, and
//! continues each symbol's `seq` (and prices) from it: a restarted feed never reuses a `seq`.
//! It must never publish anything before that read-back, and never block on an acknowledgement
//! in the publishing loop.

mod recording;
mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use clap::builder::TypedValueParser as _;
use clap::Parser;
use feed_sim::Simulator;
use proto::payload::rescale;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use recording::{Recorder, Replay};
use upstream::QuotePublisher;

/// Contract default (section 5).
const DEFAULT_STREAM: &str = "MD_QUOTES";
/// The NATS server `nats-server -js` listens on by default.
const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";
/// How often the simulator publishes the updates that are due (as the embedded one does).
const TICK: Duration = Duration::from_millis(1);
/// Longest catch-up after a stall (descheduled, or NATS unreachable): beyond it, updates are
/// skipped rather than burst, as the embedded simulator does.
const MAX_CATCH_UP: Duration = Duration::from_millis(100);
/// Exit status for bad flags (sysexits' EX_USAGE), as the gateway.
const EX_USAGE: u8 = 64;

/// Simulated market data feed on NATS JetStream: publishes quotes on `md.quote.<SYMBOL>` (the
/// payload is the quote object of PROTOCOL.md section 3 without `type`), creating or updating
/// the stream first and continuing every symbol's seq from it. Or replays a recording.
/// Progress goes to stderr every few seconds; a summary at the end. SIGINT/SIGTERM stop it.
#[derive(Debug, Parser)]
#[command(name = "feed-sim", version)]
struct Cli {
    /// NATS server to publish to
    #[arg(long, env = "FEED_SIM_NATS", default_value = DEFAULT_NATS)]
    nats: String,

    /// JetStream stream created or updated on start (subjects md.quote.>, one message per subject)
    #[arg(long, env = "FEED_SIM_STREAM", default_value = DEFAULT_STREAM)]
    stream: String,

    /// Number of simulated symbols (well-known tickers first), as the gateway's --sim-symbols
    #[arg(long, env = "FEED_SIM_SYMBOLS", default_value_t = feed_sim::DEFAULT_SYMBOLS, value_parser = clap::value_parser!(u32).range(1..=1_000_000).map(|v| v as usize))]
    symbols: usize,

    /// Total updates per second across all symbols, as the gateway's --sim-rate
    #[arg(long, env = "FEED_SIM_RATE", default_value_t = feed_sim::DEFAULT_RATE, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    rate: u32,

    /// Random seed (the same seed gives the same market), as the gateway's --sim-seed
    #[arg(long, env = "FEED_SIM_SEED", default_value_t = feed_sim::DEFAULT_SEED)]
    seed: u64,

    /// Also write every published quote to FILE, one payload per line (NDJSON)
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,

    /// Publish the recording FILE (NDJSON, one payload per line) instead of the simulated
    /// market, keeping each seq and the recorded spacing (from ts); exits when done
    #[arg(long, value_name = "FILE", conflicts_with_all = ["symbols", "rate", "seed"])]
    replay: Option<PathBuf>,

    /// Replay speed: 1 (as recorded), 10 (ten times faster), any factor above 0, or max (no waits)
    #[arg(long, default_value = "1", value_parser = parse_speed, requires = "replay")]
    speed: Speed,

    /// Replay with ts set to the publishing time (the spacing kept), instead of the recorded ts
    #[arg(long, requires = "replay")]
    restamp: bool,

    /// Seconds between two progress lines on stderr
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    progress_secs: u64,
}

#[derive(Debug, Clone, Copy)]
enum Speed {
    Factor(f64),
    Max,
}

fn parse_speed(text: &str) -> Result<Speed, String> {
    if text == "max" {
        return Ok(Speed::Max);
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(Speed::Factor(f)),
        _ => Err(format!("expected 1, 10, another factor above 0, or max; got {text:?}")),
    }
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EX_USAGE) } else { ExitCode::SUCCESS };
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,async_nats=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("feed-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("feed-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            }
            stop.cancel();
        });
    }
    let js = upstream::connect(&cli.nats).await?;
    let messages = upstream::ensure_stream(&js, &cli.stream).await?;
    let last = upstream::last_quotes(&js, &cli.stream).await?;
    tracing::info!(
        stream = %cli.stream, messages, symbols_in_stream = last.len(),
        "stream ready (subjects {}, one message per subject)", upstream::SUBJECTS
    );
    let mut recorder = cli.record.as_deref().map(Recorder::create).transpose()?;
    let mut publisher = QuotePublisher::new(js);
    let result = match &cli.replay {
        Some(path) => replay(&cli, path, &last, &mut publisher, recorder.as_mut(), &stop).await,
        None => simulate(&cli, &last, &mut publisher, recorder.as_mut(), &stop).await,
    };
    publisher.flush().await;
    if let Some(recorder) = recorder.as_mut() {
        recorder.flush()?;
        tracing::info!(lines = recorder.lines, file = %cli.record.as_deref().unwrap_or_else(|| "".as_ref()).display(), "recording written");
    }
    // Let the last acknowledgements arrive before counting them.
    tokio::time::sleep(Duration::from_millis(50)).await;
    tracing::info!(
        published = publisher.published,
        unacknowledged = publisher.unacknowledged(),
        "feed-sim stopped"
    );
    result
}

/// The simulated market: every symbol the stream does not hold gets its opening quote, the
/// others continue from their last quote; then `--rate` updates per second in 1 ms batches.
async fn simulate(
    cli: &Cli,
    last: &HashMap<String, (u8, proto::Quote)>,
    publisher: &mut QuotePublisher,
    mut recorder: Option<&mut Recorder>,
    stop: &CancellationToken,
) -> Result<()> {
    let mut sim = Simulator::new(cli.symbols, cli.seed);
    let specs = sim.symbols().to_vec();
    let mut resumed = 0;
    for (i, spec) in specs.iter().enumerate() {
        if let Some(&(precision, mut quote)) = last.get(&spec.name) {
            let at = |p| rescale(p, precision, spec.precision);
            let (Some(bid), Some(ask), Some(last_price)) =
                (at(quote.bid), at(quote.ask), at(quote.last))
            else {
                bail!(
                    "stream {} holds a quote of {} with more than its {} decimals: not this simulator's; use another --stream",
                    cli.stream, spec.name, spec.precision
                );
            };
            (quote.bid, quote.ask, quote.last) = (bid, ask, last_price);
            sim.resume(i, quote);
            resumed += 1;
        }
    }
    let now = wall_ns();
    let mut opened = 0;
    for (i, spec) in specs.iter().enumerate() {
        if last.contains_key(&spec.name) {
            continue;
        }
        let quote = sim.opening_quote(i, now);
        let payload = quote.encode(&spec.name, spec.precision).payload;
        if let Some(r) = recorder.as_deref_mut() {
            r.write(&payload)?;
        }
        publisher.publish(&spec.name, payload).await;
        opened += 1;
    }
    tracing::info!(
        symbols = specs.len(),
        resumed,
        opened,
        rate = cli.rate,
        seed = cli.seed,
        "publishing the simulated market (resumed symbols continue their seq from the stream)"
    );
    let started = Instant::now();
    let mut sent: u64 = 0;
    let behind_limit = (MAX_CATCH_UP.as_secs_f64() * f64::from(cli.rate)) as u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut progress = Progress::new(cli.progress_secs);
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let due = (started.elapsed().as_secs_f64() * f64::from(cli.rate)) as u64;
        if due.saturating_sub(sent) > behind_limit {
            sent = due - behind_limit;
        }
        while sent < due {
            let (i, quote) = sim.next_update(wall_ns());
            let spec = &specs[i];
            let payload = quote.encode(&spec.name, spec.precision).payload;
            if let Some(r) = recorder.as_deref_mut() {
                r.write(&payload)?;
            }
            publisher.publish(&spec.name, payload).await;
            sent += 1;
        }
        if progress.due() {
            if let Some(r) = recorder.as_deref_mut() {
                r.flush()?;
            }
            progress.log(publisher);
        }
    }
}

/// Publishes a recording with its spacing (scaled by `--speed`) and its `seq` values.
async fn replay(
    cli: &Cli,
    path: &std::path::Path,
    last: &HashMap<String, (u8, proto::Quote)>,
    publisher: &mut QuotePublisher,
    mut recorder: Option<&mut Recorder>,
    stop: &CancellationToken,
) -> Result<()> {
    let mut replay = Replay::open(path)?;
    tracing::info!(file = %path.display(), speed = ?cli.speed, restamp = cli.restamp, "replaying");
    let started = Instant::now();
    let mut first_ts = None;
    let mut symbols = HashMap::<String, ()>::new();
    let mut already_held = 0u64;
    let mut progress = Progress::new(cli.progress_secs);
    while let Some(rec) = replay.next_quote()? {
        let first = *first_ts.get_or_insert(rec.quote.ts);
        if let Speed::Factor(speed) = cli.speed {
            let offset_s = rec.quote.ts.saturating_sub(first) as f64 / 1e9 / speed;
            let at = started + Duration::from_secs_f64(offset_s);
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(at) => {}
            }
        } else if stop.is_cancelled() {
            return Ok(());
        }
        if last.get(&rec.symbol).is_some_and(|(_, q)| q.seq >= rec.quote.seq) {
            already_held += 1;
        }
        let payload = if cli.restamp {
            let quote = proto::Quote { ts: wall_ns(), ..rec.quote };
            quote.encode(&rec.symbol, rec.precision).payload
        } else {
            bytes::Bytes::from(rec.line.into_bytes())
        };
        if let Some(r) = recorder.as_deref_mut() {
            r.write(&payload)?;
        }
        publisher.publish(&rec.symbol, payload).await;
        symbols.entry(rec.symbol).or_default();
        if progress.due() {
            progress.log(publisher);
        }
    }
    if already_held > 0 {
        tracing::warn!(
            already_held,
            "some recorded quotes have a seq the stream already held for their symbol: gateways drop them as stale; replay into a fresh stream (another --stream, or a new nats-server store)"
        );
    }
    tracing::info!(
        quotes = publisher.published,
        symbols = symbols.len(),
        seconds = format!("{:.2}", started.elapsed().as_secs_f64()),
        "replay done"
    );
    Ok(())
}

/// A progress line every few seconds: what was published, and at what rate.
struct Progress {
    every: Duration,
    last: Instant,
    last_published: u64,
}

impl Progress {
    fn new(secs: u64) -> Progress {
        Progress { every: Duration::from_secs(secs), last: Instant::now(), last_published: 0 }
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= self.every
    }

    fn log(&mut self, publisher: &QuotePublisher) {
        let elapsed = self.last.elapsed().as_secs_f64();
        let rate = (publisher.published - self.last_published) as f64 / elapsed.max(1e-9);
        tracing::info!(
            published = publisher.published,
            per_sec = format!("{rate:.0}"),
            unacknowledged = publisher.unacknowledged(),
            "progress"
        );
        self.last = Instant::now();
        self.last_published = publisher.published;
    }
}
