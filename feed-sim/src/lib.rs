//! The simulated market: S symbols, each a seeded random walk, updated at a total rate with
//! skewed activity (a few hot symbols, a long quiet tail), as in a real market, or with uniform
//! activity (every symbol equally often), as the peer servers' feeds in `make bench-peers`.
//!
//! The library is pure: [`Simulator::next_update`] produces the next quote, and the caller (the
//! gateway's embedded feed, or the `feed-sim` process) decides when. The same seed gives the
//! same market, update by update. The `feed-sim` binary (`src/main.rs`) publishes it on NATS
//! (contract section 5), records it, or replays a recording.

use proto::{Price, Quote};
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Default number of simulated symbols.
pub const DEFAULT_SYMBOLS: usize = 500;
/// Default total update rate, updates per second across all symbols.
pub const DEFAULT_RATE: u32 = 2_000;
/// Default seed: any fixed value keeps runs reproducible.
pub const DEFAULT_SEED: u64 = 42;
/// Activity skew: symbol `i` (0-based, by rank) updates in proportion to `1 / (i + 1)^SKEW`.
/// With 500 symbols the hottest takes ~15% of all updates and the quietest ~0.03%.
pub const SKEW: f64 = 1.0;

/// Which symbols the updates go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activity {
    /// Symbol `i` (by rank) gets updates in proportion to `1 / (i + 1)^SKEW`: a real market's
    /// shape, and the default.
    #[default]
    Skewed,
    /// Every update goes to a symbol drawn uniformly: the model of the peers' feeds, so that a
    /// benchmark against them compares like with like.
    Uniform,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Skewed => "skewed",
            Activity::Uniform => "uniform",
        }
    }
}

/// How the next updated symbol is drawn.
enum Picker {
    Weighted(WeightedIndex<f64>),
    Uniform(usize),
}

/// Well-known instruments listed first, with a plausible starting price and precision.
const KNOWN: &[(&str, f64, u8)] = &[
    ("AAPL", 187.25, 2),
    ("MSFT", 415.10, 2),
    ("NVDA", 875.40, 2),
    ("AMZN", 178.90, 2),
    ("GOOGL", 152.30, 2),
    ("META", 492.65, 2),
    ("TSLA", 175.20, 2),
    ("BRK.B", 408.75, 2),
    ("JPM", 198.45, 2),
    ("V", 279.80, 2),
    ("UNH", 492.10, 2),
    ("XOM", 118.35, 2),
    ("JNJ", 152.60, 2),
    ("WMT", 60.15, 2),
    ("MA", 468.20, 2),
    ("PG", 162.40, 2),
    ("AVGO", 1318.50, 2),
    ("HD", 352.75, 2),
    ("CVX", 157.90, 2),
    ("MRK", 128.30, 2),
    ("ABBV", 178.45, 2),
    ("COST", 735.60, 2),
    ("PEP", 168.20, 2),
    ("KO", 60.05, 2),
    ("ADBE", 505.30, 2),
    ("CRM", 299.10, 2),
    ("NFLX", 627.45, 2),
    ("AMD", 162.80, 2),
    ("ORCL", 125.35, 2),
    ("INTC", 30.55, 2),
    ("CSCO", 48.20, 2),
    ("BAC", 37.85, 2),
    ("DIS", 112.40, 2),
    ("NKE", 92.15, 2),
    ("QCOM", 168.70, 2),
    ("IBM", 185.30, 2),
    ("GS", 455.20, 2),
    ("UBER", 70.35, 2),
    ("SPY", 520.85, 2),
    ("QQQ", 445.10, 2),
    ("EURUSD", 1.08512, 5),
    ("GBPUSD", 1.26403, 5),
    ("USDJPY", 151.482, 3),
    ("BTCUSD", 67250.50, 2),
    ("ETHUSD", 3480.25, 2),
];

/// A simulated instrument.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolSpec {
    pub name: String,
    /// Decimals its prices are written with.
    pub precision: u8,
}

#[derive(Debug, Clone)]
struct Walk {
    /// Bid in price units; the ask sits a whole number of ticks (`spread`) above it.
    bid: i64,
    spread: i64,
    quote: Quote,
}

/// The simulated market.
pub struct Simulator {
    specs: Vec<SymbolSpec>,
    walks: Vec<Walk>,
    picker: Picker,
    rng: SmallRng,
}

impl Simulator {
    /// A market of `symbols` instruments (at least 1), seeded with `seed`, with skewed activity.
    pub fn new(symbols: usize, seed: u64) -> Simulator {
        Simulator::with_activity(symbols, seed, Activity::Skewed)
    }

    /// A market of `symbols` instruments (at least 1), seeded with `seed`, whose updates are
    /// spread over the symbols as `activity` says. The symbols and their opening quotes do not
    /// depend on `activity`.
    pub fn with_activity(symbols: usize, seed: u64, activity: Activity) -> Simulator {
        let symbols = symbols.max(1);
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut specs = Vec::with_capacity(symbols);
        let mut walks = Vec::with_capacity(symbols);
        for i in 0..symbols {
            let (name, price, precision) = match KNOWN.get(i) {
                Some(&(name, price, precision)) => (name.to_string(), price, precision),
                None => (format!("SYM{i:04}"), rng.random_range(5.0..500.0), 2),
            };
            let units = (price * Price::scale(precision) as f64).round() as i64;
            let spread = rng.random_range(1..=3);
            let quote = Quote {
                seq: 0,
                bid: Price(units),
                ask: Price(units + spread),
                bid_size: 100 * rng.random_range(1..=50),
                ask_size: 100 * rng.random_range(1..=50),
                last: Price(units),
                last_size: 100,
                volume: 0,
                ts: 0,
            };
            specs.push(SymbolSpec { name, precision });
            walks.push(Walk { bid: units, spread, quote });
        }
        let picker = match activity {
            Activity::Skewed => {
                let weights = (0..symbols).map(|i| 1.0 / ((i + 1) as f64).powf(SKEW));
                Picker::Weighted(
                    WeightedIndex::new(weights).expect("weights are positive and finite"),
                )
            }
            Activity::Uniform => Picker::Uniform(symbols),
        };
        Simulator { specs, walks, picker, rng }
    }

    /// The instruments, in rank order (the hottest first).
    pub fn symbols(&self) -> &[SymbolSpec] {
        &self.specs
    }

    /// Opens symbol `i`: its first quote (`seq` 1) stamped `ts`, so that every symbol has a
    /// snapshot before the market starts moving. Later calls return the current quote again.
    pub fn opening_quote(&mut self, i: usize, ts: u64) -> Quote {
        let q = &mut self.walks[i].quote;
        if q.seq == 0 {
            q.seq = 1;
            q.ts = ts;
        }
        *q
    }

    /// Continues symbol `i` from `quote`, the last one published for it (read back from a
    /// stream after a restart): its next update has `seq` one above, and its walk goes on from
    /// that quote's prices and volume. `quote` must be in the symbol's precision.
    pub fn resume(&mut self, i: usize, quote: Quote) {
        let walk = &mut self.walks[i];
        walk.bid = quote.bid.0.max(1);
        walk.spread = (quote.ask.0 - quote.bid.0).max(1);
        walk.quote = quote;
    }

    /// Advances the market by one update stamped `ts` (ns since the epoch): returns the
    /// updated symbol's index and its new quote, whose `seq` is one more than its previous.
    pub fn next_update(&mut self, ts: u64) -> (usize, Quote) {
        let i = match &self.picker {
            Picker::Weighted(w) => w.sample(&mut self.rng),
            Picker::Uniform(n) => self.rng.random_range(0..*n),
        };
        let rng = &mut self.rng;
        let walk = &mut self.walks[i];
        // A step of -2..=2 ticks, never below one tick.
        walk.bid = (walk.bid + rng.random_range(-2..=2)).max(1);
        if rng.random_bool(0.1) {
            walk.spread = rng.random_range(1..=3);
        }
        let q = &mut walk.quote;
        q.seq += 1;
        q.ts = ts;
        q.bid = Price(walk.bid);
        q.ask = Price(walk.bid + walk.spread);
        q.bid_size = 100 * rng.random_range(1..=50);
        q.ask_size = 100 * rng.random_range(1..=50);
        if rng.random_bool(0.5) {
            q.last = if rng.random_bool(0.5) { q.bid } else { q.ask };
            q.last_size = rng.random_range(1..=20) * 50;
            q.volume += q.last_size;
        }
        (i, *q)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_market() {
        let mut a = Simulator::new(50, 7);
        let mut b = Simulator::new(50, 7);
        for ts in 0..1000 {
            assert_eq!(a.next_update(ts), b.next_update(ts));
        }
    }

    #[test]
    fn seq_rises_by_one_and_quotes_stay_sane() {
        let mut sim = Simulator::new(100, 1);
        let mut last_seq = vec![0u64; 100];
        let mut last_volume = vec![0u64; 100];
        for ts in 1..20_000 {
            let (i, q) = sim.next_update(ts);
            assert_eq!(q.seq, last_seq[i] + 1);
            assert!(q.bid.0 >= 1 && q.ask > q.bid, "{q:?}");
            assert!(q.volume >= last_volume[i]);
            assert_eq!(q.ts, ts);
            last_seq[i] = q.seq;
            last_volume[i] = q.volume;
        }
    }

    #[test]
    fn a_resumed_symbol_continues_its_seq_and_prices() {
        let mut sim = Simulator::new(1, 9);
        let last = Quote {
            seq: 41,
            bid: Price(10_000),
            ask: Price(10_002),
            volume: 700,
            ..Quote::default()
        };
        sim.resume(0, last);
        assert_eq!(sim.opening_quote(0, 5).seq, 41, "a resumed symbol is open already");
        let (_, next) = sim.next_update(6);
        assert_eq!(next.seq, 42);
        assert!((next.bid.0 - 10_000).abs() <= 2, "{next:?}");
        assert!(next.volume >= 700);
    }

    #[test]
    fn activity_is_skewed_towards_the_first_symbols() {
        let mut sim = Simulator::new(500, 3);
        let mut counts = vec![0u32; 500];
        for ts in 0..100_000 {
            counts[sim.next_update(ts).0] += 1;
        }
        let head: u32 = counts[..10].iter().sum();
        let tail: u32 = counts[490..].iter().sum();
        assert!(head > 20 * tail, "head {head} tail {tail}");
        assert_eq!(sim.symbols()[0].name, "AAPL");
        assert_eq!(sim.symbols()[499].name, "SYM0499");
    }

    #[test]
    fn uniform_activity_spreads_updates_evenly_over_the_same_symbols() {
        let mut sim = Simulator::with_activity(500, 3, Activity::Uniform);
        assert_eq!(sim.symbols(), Simulator::new(500, 3).symbols());
        let mut counts = vec![0u32; 500];
        for ts in 0..500_000 {
            counts[sim.next_update(ts).0] += 1;
        }
        // 1,000 expected per symbol; a binomial's spread is ~32, so ±20% never trips by chance.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "min {min} max {max}");
        let head: u32 = counts[..10].iter().sum();
        let tail: u32 = counts[490..].iter().sum();
        assert!(head < tail * 5 / 4 && tail < head * 5 / 4, "head {head} tail {tail}");
    }
}
