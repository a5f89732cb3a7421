//! The subscriptions of one shard: one record per (session, symbol), the list of each symbol's
//! subscribers that the fan-out walks, and the per-session lists of subscriptions with
//! something to send.
//!
//! Everything here belongs to the shard's thread: no atomics, no locks, no reference counts.
//! Adding or removing a subscription costs O(1) (a push, or a swap-remove that fixes the moved
//! record's position), so a reconnect storm of `["*"]` sessions costs what it adds, not the
//! square of the session count. Marking an update for a subscriber is a flag test and, when the
//! subscription was clean, a link into its session's ready list: no allocation, no queue that a
//! slow client can grow.

use slab::Slab;

use crate::delivery as policy;
use crate::store::SymbolId;

/// Key of a subscription record.
pub type SubKey = u32;

/// No record (end of a list).
pub const NONE: u32 = u32::MAX;

/// Tables and lists larger than this many entries give memory back as they empty.
const SHRINK_ABOVE: usize = 1_024;

/// Where a subscription is waiting, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    No,
    /// On its session's ready list: something to send now.
    Ready,
    /// On its session's deferred list: throttled until `state.next_send_ns`.
    Deferred,
}

/// One subscription.
#[derive(Debug)]
pub struct Sub {
    /// The session's connection key.
    pub session: u32,
    pub symbol: SymbolId,
    pub state: policy::Subscription,
    pub waiting: Waiting,
    /// Index in the symbol's subscriber list.
    pos: u32,
    prev: u32,
    next: u32,
}

/// A doubly linked list of subscriptions, threaded through their records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct List {
    head: u32,
    tail: u32,
}

impl Default for List {
    fn default() -> Self {
        List { head: NONE, tail: NONE }
    }
}

impl List {
    pub fn is_empty(&self) -> bool {
        self.head == NONE
    }

    pub fn front(&self) -> Option<SubKey> {
        (self.head != NONE).then_some(self.head)
    }
}

/// The shard's subscriptions.
#[derive(Default)]
pub struct Registry {
    subs: Slab<Sub>,
    /// Per symbol, its subscribers on this shard.
    lists: Vec<Vec<SubKey>>,
}

impl Registry {
    /// Adds a subscription; returns its key and whether it is the symbol's first on this shard.
    pub fn insert(
        &mut self,
        session: u32,
        symbol: SymbolId,
        state: policy::Subscription,
    ) -> (SubKey, bool) {
        let i = symbol as usize;
        if self.lists.len() <= i {
            self.lists.resize_with(i + 1, Vec::new);
        }
        let list = &mut self.lists[i];
        let key = self.subs.insert(Sub {
            session,
            symbol,
            state,
            waiting: Waiting::No,
            pos: list.len() as u32,
            prev: NONE,
            next: NONE,
        }) as SubKey;
        list.push(key);
        (key, list.len() == 1)
    }

    /// Removes a subscription that is on no list; returns whether its symbol has no subscriber
    /// left on this shard.
    pub fn remove(&mut self, key: SubKey) -> bool {
        let sub = self.subs.remove(key as usize);
        debug_assert_eq!(sub.waiting, Waiting::No, "unlink before removing");
        let list = &mut self.lists[sub.symbol as usize];
        list.swap_remove(sub.pos as usize);
        if let Some(&moved) = list.get(sub.pos as usize) {
            self.subs[moved as usize].pos = sub.pos;
        }
        let last = if list.is_empty() {
            // Give the memory of a symbol nobody here watches any more back.
            *list = Vec::new();
            true
        } else {
            if list.capacity() > SHRINK_ABOVE && list.len() * 4 < list.capacity() {
                // A storm's subscribers left: halve what is held (amortised O(1), as growth).
                list.shrink_to(list.len() * 2);
            }
            false
        };
        if self.subs.is_empty() && self.subs.capacity() > SHRINK_ABOVE {
            // The last subscription on this shard went: the table's high-water mark goes too.
            // (While some remain, it keeps its size: records cannot move, their keys are
            // linked from the lists.)
            self.subs = Slab::new();
        }
        last
    }

    /// Removes every subscription of `session`, whatever lists they are on, and calls
    /// `removed(symbol, last)` for each (`last`: its symbol has no subscriber left here).
    ///
    /// For a session that panicked: its own list of subscriptions may lack records inserted
    /// just before the panic, so the records are found here, by a scan of the shard's
    /// subscriptions (O(subscriptions on the shard): a bug's path, never a client's). The ready
    /// and deferred lists they were on belong to that session alone and go with it.
    pub fn remove_session(&mut self, session: u32, mut removed: impl FnMut(SymbolId, bool)) {
        let keys: Vec<SubKey> = self
            .subs
            .iter()
            .filter(|(_, sub)| sub.session == session)
            .map(|(key, _)| key as SubKey)
            .collect();
        for key in keys {
            let sub = &mut self.subs[key as usize];
            sub.waiting = Waiting::No;
            sub.prev = NONE;
            sub.next = NONE;
            let symbol = sub.symbol;
            let last = self.remove(key);
            removed(symbol, last);
        }
    }

    pub fn get(&self, key: SubKey) -> &Sub {
        &self.subs[key as usize]
    }

    pub fn get_mut(&mut self, key: SubKey) -> &mut Sub {
        &mut self.subs[key as usize]
    }

    /// The subscribers of `symbol` on this shard.
    pub fn subscribers(&self, symbol: SymbolId) -> &[SubKey] {
        self.lists.get(symbol as usize).map_or(&[], Vec::as_slice)
    }

    /// Subscriptions on this shard.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }

    /// Appends `key` to `list` (it must be on none).
    pub fn push_back(&mut self, list: &mut List, key: SubKey, waiting: Waiting) {
        let tail = list.tail;
        let sub = &mut self.subs[key as usize];
        debug_assert_eq!(sub.waiting, Waiting::No);
        sub.waiting = waiting;
        sub.prev = tail;
        sub.next = NONE;
        if tail == NONE {
            list.head = key;
        } else {
            self.subs[tail as usize].next = key;
        }
        list.tail = key;
    }

    /// Takes `key` off `list` (which must be the list it is on).
    pub fn unlink(&mut self, list: &mut List, key: SubKey) {
        let (prev, next) = {
            let sub = &mut self.subs[key as usize];
            sub.waiting = Waiting::No;
            (std::mem::replace(&mut sub.prev, NONE), std::mem::replace(&mut sub.next, NONE))
        };
        if prev == NONE {
            list.head = next;
        } else {
            self.subs[prev as usize].next = next;
        }
        if next == NONE {
            list.tail = prev;
        } else {
            self.subs[next as usize].prev = prev;
        }
    }

    /// Takes the first subscription off `list`.
    pub fn pop_front(&mut self, list: &mut List) -> Option<SubKey> {
        let key = list.front()?;
        self.unlink(list, key);
        Some(key)
    }

    /// The subscriptions on `list`, in order (for walks that may unlink the current one).
    pub fn next_of(&self, key: SubKey) -> Option<SubKey> {
        let next = self.subs[key as usize].next;
        (next != NONE).then_some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriber_lists_stay_exact_through_swap_removes() {
        let mut r = Registry::default();
        let keys: Vec<SubKey> = (0..5).map(|s| r.insert(s, 7, Default::default()).0).collect();
        assert!(r.insert(9, 3, Default::default()).1, "first on symbol 3");
        assert!(!r.remove(keys[1]));
        assert!(!r.remove(keys[0]));
        let mut left: Vec<u32> = r.subscribers(7).iter().map(|&k| r.get(k).session).collect();
        left.sort_unstable();
        assert_eq!(left, [2, 3, 4]);
        for &k in r.subscribers(7).to_vec().iter().rev() {
            r.remove(k);
        }
        assert!(r.subscribers(7).is_empty());
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_session_is_removed_whole_whatever_lists_its_subscriptions_are_on() {
        let mut r = Registry::default();
        let mut ready = List::default();
        let mut deferred = List::default();
        let mine: Vec<SubKey> = (0..4).map(|s| r.insert(7, s, Default::default()).0).collect();
        let other = r.insert(8, 1, Default::default()).0;
        r.push_back(&mut ready, mine[0], Waiting::Ready);
        r.push_back(&mut ready, mine[1], Waiting::Ready);
        r.push_back(&mut deferred, mine[2], Waiting::Deferred);
        let mut seen = Vec::new();
        r.remove_session(7, |symbol, last| seen.push((symbol, last)));
        seen.sort_unstable();
        // Symbol 1 keeps session 8's subscription; the others have nobody left.
        assert_eq!(seen, [(0, true), (1, false), (2, true), (3, true)]);
        assert_eq!(r.len(), 1);
        assert_eq!(r.subscribers(1), [other]);
        assert_eq!(r.get(other).session, 8);
        assert!(r.subscribers(0).is_empty() && r.subscribers(3).is_empty());
    }

    #[test]
    fn lists_link_unlink_and_keep_order() {
        let mut r = Registry::default();
        let k: Vec<SubKey> = (0..4).map(|s| r.insert(0, s, Default::default()).0).collect();
        let mut ready = List::default();
        for &key in &k[..3] {
            r.push_back(&mut ready, key, Waiting::Ready);
        }
        r.unlink(&mut ready, k[1]);
        r.push_back(&mut ready, k[3], Waiting::Ready);
        let mut order = Vec::new();
        while let Some(key) = r.pop_front(&mut ready) {
            assert_eq!(r.get(key).waiting, Waiting::No);
            order.push(key);
        }
        assert_eq!(order, [k[0], k[2], k[3]]);
        assert!(ready.is_empty());
    }
}
