//! Request budgets of a session: a token bucket for the request rate, and leaky buckets that
//! decide when rejected or bad requests have gone on long enough to close the session (1008).

/// A token bucket: `rate` tokens per second, holding at most `rate` (one second's burst).
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    tokens: f64,
    at_ns: u64,
}

impl TokenBucket {
    pub fn new(rate: u32, now_ns: u64) -> Self {
        TokenBucket { rate: f64::from(rate), tokens: f64::from(rate), at_ns: now_ns }
    }

    /// Takes a token; `Err(ms)` when none is left, with the wait until the next one.
    pub fn take(&mut self, now_ns: u64) -> Result<(), u64> {
        let elapsed = now_ns.saturating_sub(self.at_ns) as f64 * 1e-9;
        self.at_ns = now_ns;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - self.tokens) / self.rate) * 1000.0).ceil().max(1.0) as u64)
        }
    }
}

/// A leaky bucket: each strike adds one, `leak_per_sec` drain away each second; more than
/// `capacity` at once means the budget is spent.
#[derive(Debug)]
pub struct Strikes {
    capacity: f64,
    leak_per_sec: f64,
    level: f64,
    at_ns: u64,
}

impl Strikes {
    pub fn new(capacity: u32, leak_per_sec: f64, now_ns: u64) -> Self {
        Strikes { capacity: f64::from(capacity), leak_per_sec, level: 0.0, at_ns: now_ns }
    }

    /// Adds a strike; returns whether the budget is now exceeded.
    pub fn strike(&mut self, now_ns: u64) -> bool {
        let elapsed = now_ns.saturating_sub(self.at_ns) as f64 * 1e-9;
        self.at_ns = now_ns;
        self.level = (self.level - elapsed * self.leak_per_sec).max(0.0) + 1.0;
        self.level > self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(10, 0);
        for _ in 0..10 {
            assert_eq!(b.take(0), Ok(()));
        }
        assert_eq!(b.take(0), Err(100));
        assert_eq!(b.take(S / 10), Ok(()));
    }

    #[test]
    fn strikes_spend_a_budget_that_recovers() {
        let mut s = Strikes::new(3, 1.0, 0);
        assert!(!s.strike(0) && !s.strike(0) && !s.strike(0));
        assert!(s.strike(0));
        let mut s = Strikes::new(3, 1.0, 0);
        for i in 0..10 {
            assert!(!s.strike(i * S), "one strike a second never spends it");
        }
    }
}
