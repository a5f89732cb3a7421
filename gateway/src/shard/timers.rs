//! The shard's timers: one deadline per connection (its earliest: heartbeat, ping, idle,
//! slow consumer, throttle, handshake, close grace), in a min-heap.
//!
//! A connection's deadline often moves later (every message sent pushes its heartbeat back);
//! the heap is not updated then. An entry that fires early finds nothing due and is re-armed
//! at the connection's current deadline. A connection therefore has at most a few entries,
//! and the heap holds O(connections).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Deadlines, in monotonic ns, of connection keys.
#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

impl Timers {
    /// Arms `key` at `deadline_ns` if that is earlier than `armed_ns` (the connection's
    /// earliest entry, updated here).
    pub fn arm(&mut self, key: u32, deadline_ns: u64, armed_ns: &mut u64) {
        if deadline_ns < *armed_ns {
            *armed_ns = deadline_ns;
            self.heap.push(Reverse((deadline_ns, key)));
        }
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<u64> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the next entry due at `now_ns`: (key, the deadline it was armed for).
    pub fn pop_due(&mut self, now_ns: u64) -> Option<(u32, u64)> {
        match self.heap.peek() {
            Some(&Reverse((at, key))) if at <= now_ns => {
                self.heap.pop();
                Some((key, at))
            }
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_earlier_deadline_adds_an_entry() {
        let mut t = Timers::default();
        let mut armed = u64::MAX;
        t.arm(1, 100, &mut armed);
        t.arm(1, 200, &mut armed);
        t.arm(1, 50, &mut armed);
        assert_eq!((armed, t.len()), (50, 2));
        let mut other = u64::MAX;
        t.arm(2, 70, &mut other);
        assert_eq!(t.pop_due(60), Some((1, 50)));
        assert_eq!(t.pop_due(60), None);
        assert_eq!(t.next(), Some(70));
        assert_eq!(t.pop_due(1000), Some((2, 70)));
        assert_eq!(t.pop_due(1000), Some((1, 100)));
        assert!(t.is_empty());
    }
}
