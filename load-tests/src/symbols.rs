//! Which symbols each client subscribes to: K distinct symbols drawn uniformly or by a Zipf
//! law over the gateway's list (rank 1 = its first symbol, the busiest ticker in real markets).
//!
//! Draws are reproducible: the same seed, client index and list give the same set in every
//! worker process.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dist {
    /// Every symbol equally likely.
    Uniform,
    /// P(rank k) ∝ 1/k^s (`--zipf-s`).
    Zipf,
}

/// Draws K distinct symbol indexes per client.
pub struct SymbolPicker {
    n: usize,
    k: usize,
    /// Cumulative Zipf weights, normalised to end at 1.0; empty for uniform.
    cdf: Vec<f64>,
    seed: u64,
}

impl SymbolPicker {
    pub fn new(n_symbols: usize, k: usize, dist: Dist, zipf_s: f64, seed: u64) -> SymbolPicker {
        let cdf = match dist {
            Dist::Uniform => Vec::new(),
            Dist::Zipf => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (1..=n_symbols)
                    .map(|r| {
                        acc += 1.0 / (r as f64).powf(zipf_s);
                        acc
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= acc;
                }
                cdf
            }
        };
        SymbolPicker { n: n_symbols, k: k.min(n_symbols), cdf, seed }
    }

    /// The symbol indexes of client `client`, distinct, in draw order.
    pub fn pick(&self, client: u64) -> Vec<u32> {
        let mut rng =
            SmallRng::seed_from_u64(self.seed ^ client.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut chosen = vec![false; self.n];
        let mut out = Vec::with_capacity(self.k);
        if self.k == self.n {
            return (0..self.n as u32).collect();
        }
        // Rejection of repeats; bounded so a steep Zipf with a large K still ends.
        let mut tries = 0usize;
        while out.len() < self.k && tries < self.k * 64 {
            tries += 1;
            let i = if self.cdf.is_empty() {
                rng.random_range(0..self.n)
            } else {
                let u: f64 = rng.random();
                self.cdf.partition_point(|&c| c < u).min(self.n - 1)
            };
            if !chosen[i] {
                chosen[i] = true;
                out.push(i as u32);
            }
        }
        // Fill what rejection did not reach with the highest-ranked symbols left.
        for (i, taken) in chosen.iter().enumerate() {
            if out.len() == self.k {
                break;
            }
            if !taken {
                out.push(i as u32);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_k_distinct_symbols_reproducibly() {
        for dist in [Dist::Uniform, Dist::Zipf] {
            let p = SymbolPicker::new(500, 10, dist, 1.0, 7);
            for c in 0..100 {
                let mut s = p.pick(c);
                assert_eq!(s, p.pick(c));
                s.sort_unstable();
                s.dedup();
                assert_eq!(s.len(), 10);
                assert!(s.iter().all(|&i| i < 500));
            }
        }
        let p = SymbolPicker::new(5, 10, Dist::Zipf, 3.0, 1);
        assert_eq!(p.pick(0).len(), 5);
    }

    #[test]
    fn zipf_favours_the_first_symbols() {
        let p = SymbolPicker::new(500, 1, Dist::Zipf, 1.0, 3);
        let first = (0..2000).filter(|&c| p.pick(c)[0] == 0).count();
        // P(rank 1) = 1/H(500) ≈ 0.147.
        assert!((200..400).contains(&first), "{first}");
        let u = SymbolPicker::new(500, 1, Dist::Uniform, 1.0, 3);
        let first = (0..2000).filter(|&c| u.pick(c)[0] == 0).count();
        assert!(first < 20, "{first}");
    }
}
