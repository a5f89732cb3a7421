//! A rate limit for audit log lines (authentication failures): at most N lines per second, and
//! the next line that gets through says how many were left out, so a flood of bad tokens cannot
//! flood the log, and the log still says how big the flood was.
//!
//! Pure: the caller passes the time. One limiter per shard, or one behind a lock; the counters
//! (`gateway_auth_failures_total{reason}`) count every failure regardless.

use std::time::{Duration, Instant};

/// Auth-failure log lines per second: enough to see who is failing during an incident, few
/// enough that a client hammering with bad tokens cannot fill the disk.
pub const DEFAULT_AUTH_LOG_PER_SEC: u32 = 10;

const WINDOW: Duration = Duration::from_secs(1);

/// Whether to write this line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDecision {
    /// Write it; `suppressed_before` lines were left out since the last one written (say so in
    /// the line, e.g. `suppressed=N`, when it is not zero).
    Log { suppressed_before: u64 },
    /// Leave it out (it is counted).
    Suppress,
}

/// At most `per_second` lines in each one-second window.
#[derive(Debug, Clone)]
pub struct AuditLimiter {
    per_second: u32,
    window_start: Option<Instant>,
    in_window: u32,
    suppressed: u64,
}

impl AuditLimiter {
    /// `per_second` of 0 writes no line at all (everything is only counted).
    pub fn new(per_second: u32) -> AuditLimiter {
        AuditLimiter { per_second, window_start: None, in_window: 0, suppressed: 0 }
    }

    /// Decides about one line at `now`.
    pub fn admit(&mut self, now: Instant) -> AuditDecision {
        let window_over = self.window_start.is_none_or(|start| now.duration_since(start) >= WINDOW);
        if window_over {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window < self.per_second {
            self.in_window += 1;
            AuditDecision::Log { suppressed_before: std::mem::take(&mut self.suppressed) }
        } else {
            self.suppressed += 1;
            AuditDecision::Suppress
        }
    }

    /// Lines left out and not yet reported by a written line.
    pub fn pending_suppressed(&self) -> u64 {
        self.suppressed
    }
}

impl Default for AuditLimiter {
    fn default() -> Self {
        AuditLimiter::new(DEFAULT_AUTH_LOG_PER_SEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_n_lines_per_second_and_the_next_one_counts_the_rest() {
        let t0 = Instant::now();
        let mut limiter = AuditLimiter::new(3);
        let first: Vec<_> =
            (0..5).map(|i| limiter.admit(t0 + Duration::from_millis(i * 10))).collect();
        assert_eq!(
            first,
            [
                AuditDecision::Log { suppressed_before: 0 },
                AuditDecision::Log { suppressed_before: 0 },
                AuditDecision::Log { suppressed_before: 0 },
                AuditDecision::Suppress,
                AuditDecision::Suppress,
            ]
        );
        assert_eq!(limiter.pending_suppressed(), 2);
        // Still inside the first second.
        assert_eq!(limiter.admit(t0 + Duration::from_millis(999)), AuditDecision::Suppress);
        // A new window: the first line reports the three left out.
        assert_eq!(
            limiter.admit(t0 + Duration::from_millis(1000)),
            AuditDecision::Log { suppressed_before: 3 }
        );
        assert_eq!(limiter.pending_suppressed(), 0);
        assert_eq!(
            limiter.admit(t0 + Duration::from_millis(1001)),
            AuditDecision::Log { suppressed_before: 0 }
        );
    }

    #[test]
    fn zero_per_second_logs_nothing() {
        let mut limiter = AuditLimiter::new(0);
        let t0 = Instant::now();
        assert_eq!(limiter.admit(t0), AuditDecision::Suppress);
        assert_eq!(limiter.admit(t0 + Duration::from_secs(5)), AuditDecision::Suppress);
        assert_eq!(limiter.pending_suppressed(), 2);
    }
}
