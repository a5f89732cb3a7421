//! The delivery policy: what one subscription gets next. A pure function of plain values: it
//! does no I/O, reads no clock and holds no state, so every rule is unit-tested with exact
//! numbers. The shard's writer asks it once per ready subscription and does what it says.
//!
//! The rules, in order:
//! - nothing stored yet, or nothing newer than what the session has: skip;
//! - a snapshot is due (a subscribe asked for one): the latest, as a `snapshot`;
//! - a resume replays every missed update in order (no age cut-off, no throttle), at the pace
//!   the socket takes them, until the history no longer holds the next one: then the latest
//!   (conflation). A replay is larger than a socket buffer by nature, so a refused write is no
//!   sign of a client that cannot keep up; one that reads slower than the feed falls out of the
//!   history window (a few seconds) and is conflated there, and nothing is queued for it;
//! - a throttled subscription waits until its next send time, then gets the latest;
//! - a session that keeps up gets every update: a short gap of recent updates is replayed
//!   from the history, then the latest;
//! - a session that is behind (its socket refused data), or a gap too long or too old to
//!   replay, gets the latest quote and the skipped updates are counted as conflated.

/// Longest gap a live (not resuming) session has replayed: a session further behind than
/// this is not briefly late but behind, and gets the latest instead.
pub const REPLAY_MAX_GAP: u64 = 32;

/// A subscription, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Subscription {
    /// `seq` of the last message of this symbol the session got (0: none).
    pub last_seq: u64,
    /// The next message must be a `snapshot`.
    pub snapshot_due: bool,
    /// Replaying a resume's gap: every missed update, whatever its age and the throttle.
    pub resuming: bool,
    /// `throttle_ms` in ns (0: every update).
    pub throttle_ns: u64,
    /// Earliest time (monotonic ns) the next throttled quote may go.
    pub next_send_ns: u64,
}

/// The symbol, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Symbol {
    /// `seq` of the latest update (0: none yet).
    pub latest_seq: u64,
    /// When the update `last_seq + 1` was received, if the history holds it.
    pub first_missed_received_ns: Option<u64>,
}

/// The session and the time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Conditions {
    pub now_ns: u64,
    /// The socket refused data since the session last caught up.
    pub behind: bool,
    /// Missed updates received longer ago than this are not replayed to a live session
    /// (`--replay-max-age-ms`): the shard runs late, and replaying would be a queue.
    pub replay_max_age_ns: u64,
}

/// What to send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing to send.
    Skip,
    /// Throttled: nothing before this time (monotonic ns).
    DeferUntil(u64),
    /// The latest, as a `snapshot`.
    Snapshot,
    /// The held updates `from ..= latest`, in order, as quotes (the last one is the latest).
    Replay { from: u64 },
    /// The latest, as a quote; `skipped` updates before it are conflated (counted).
    Latest { skipped: u64 },
}

/// The policy.
pub fn decide(sub: &Subscription, symbol: &Symbol, now: &Conditions) -> Delivery {
    if symbol.latest_seq == 0 {
        return Delivery::Skip;
    }
    if sub.snapshot_due {
        return Delivery::Snapshot;
    }
    if symbol.latest_seq <= sub.last_seq {
        return Delivery::Skip;
    }
    let gap = symbol.latest_seq - sub.last_seq - 1;
    let held = symbol.first_missed_received_ns.is_some();
    if sub.resuming {
        return if gap == 0 {
            Delivery::Latest { skipped: 0 }
        } else if !held {
            Delivery::Latest { skipped: gap }
        } else {
            Delivery::Replay { from: sub.last_seq + 1 }
        };
    }
    if sub.throttle_ns > 0 {
        // Updates skipped by the throttle were asked to be skipped: not conflation.
        return if now.now_ns < sub.next_send_ns {
            Delivery::DeferUntil(sub.next_send_ns)
        } else {
            Delivery::Latest { skipped: 0 }
        };
    }
    if gap == 0 {
        return Delivery::Latest { skipped: 0 };
    }
    let recent = symbol
        .first_missed_received_ns
        .is_some_and(|at| now.now_ns.saturating_sub(at) <= now.replay_max_age_ns);
    if !now.behind && gap <= REPLAY_MAX_GAP && recent {
        Delivery::Replay { from: sub.last_seq + 1 }
    } else {
        Delivery::Latest { skipped: gap }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn sub(last_seq: u64) -> Subscription {
        Subscription { last_seq, ..Subscription::default() }
    }

    fn symbol(latest_seq: u64, first_missed_received_ns: Option<u64>) -> Symbol {
        Symbol { latest_seq, first_missed_received_ns }
    }

    const MAX_AGE: u64 = 50 * MS;

    fn at(now_ns: u64) -> Conditions {
        Conditions { now_ns, behind: false, replay_max_age_ns: MAX_AGE }
    }

    fn behind(now_ns: u64) -> Conditions {
        Conditions { now_ns, behind: true, replay_max_age_ns: MAX_AGE }
    }

    #[test]
    fn nothing_new_is_skipped() {
        assert_eq!(decide(&sub(0), &symbol(0, None), &at(0)), Delivery::Skip);
        assert_eq!(decide(&sub(10), &symbol(10, None), &at(0)), Delivery::Skip);
        assert_eq!(decide(&sub(11), &symbol(10, None), &at(0)), Delivery::Skip);
    }

    #[test]
    fn a_due_snapshot_goes_first_even_unchanged_or_throttled() {
        let due = Subscription {
            snapshot_due: true,
            throttle_ns: 1000 * MS,
            next_send_ns: u64::MAX,
            ..sub(10)
        };
        assert_eq!(decide(&due, &symbol(10, None), &at(0)), Delivery::Snapshot);
        // Subscribed before the symbol's first quote: that quote goes out as the snapshot.
        assert_eq!(decide(&due, &symbol(0, None), &at(0)), Delivery::Skip);
    }

    #[test]
    fn the_next_update_goes_as_the_latest() {
        assert_eq!(decide(&sub(9), &symbol(10, None), &behind(0)), Delivery::Latest { skipped: 0 });
    }

    #[test]
    fn a_short_recent_gap_is_replayed_to_a_session_that_keeps_up() {
        let now = 100 * MS;
        assert_eq!(
            decide(&sub(5), &symbol(10, Some(now - 50 * MS)), &at(now)),
            Delivery::Replay { from: 6 }
        );
        assert_eq!(decide(&sub(0), &symbol(32, Some(now)), &at(now)), Delivery::Replay { from: 1 });
    }

    #[test]
    fn behind_long_old_or_unheld_gaps_conflate() {
        let now = 100 * MS;
        assert_eq!(
            decide(&sub(5), &symbol(10, Some(now)), &behind(now)),
            Delivery::Latest { skipped: 4 }
        );
        assert_eq!(
            decide(&sub(0), &symbol(34, Some(now)), &at(now)),
            Delivery::Latest { skipped: 33 }
        );
        assert_eq!(
            decide(&sub(5), &symbol(10, Some(now - 50 * MS - 1)), &at(now)),
            Delivery::Latest { skipped: 4 }
        );
        assert_eq!(decide(&sub(5), &symbol(10, None), &at(now)), Delivery::Latest { skipped: 4 });
    }

    #[test]
    fn a_throttle_defers_then_sends_the_latest_without_counting_conflation() {
        let s = Subscription { throttle_ns: 250 * MS, next_send_ns: 1000 * MS, ..sub(5) };
        assert_eq!(decide(&s, &symbol(9, Some(0)), &at(999 * MS)), Delivery::DeferUntil(1000 * MS));
        assert_eq!(
            decide(&s, &symbol(9, Some(0)), &at(1000 * MS)),
            Delivery::Latest { skipped: 0 }
        );
    }

    #[test]
    fn a_resume_replays_every_held_update_whatever_its_age_and_the_throttle() {
        let s = Subscription {
            resuming: true,
            throttle_ns: 1000 * MS,
            next_send_ns: u64::MAX,
            ..sub(1041)
        };
        let old = Some(0);
        assert_eq!(
            decide(&s, &symbol(2000, old), &at(60_000 * MS)),
            Delivery::Replay { from: 1042 }
        );
        assert_eq!(decide(&s, &symbol(1042, old), &at(0)), Delivery::Latest { skipped: 0 });
        // A refused write (the replay filled the socket's buffer) goes on replaying from the
        // shared history; once the history moved on, conflate: never a queue.
        assert_eq!(decide(&s, &symbol(2000, old), &behind(0)), Delivery::Replay { from: 1042 });
        assert_eq!(decide(&s, &symbol(2000, None), &at(0)), Delivery::Latest { skipped: 958 });
        assert_eq!(decide(&s, &symbol(2000, None), &behind(0)), Delivery::Latest { skipped: 958 });
    }
}
