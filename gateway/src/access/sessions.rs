//! Per-credential session caps (`max_sessions` of a token entry or a JWT): a count per
//! principal, taken when a session opens and given back when its [`SessionSlot`] drops.
//!
//! Shared by every shard behind one short lock, taken once per session open and close, never
//! per message. This module must never refuse a grant without a limit, and must never let a
//! count leak: the slot gives it back however the session ends.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Grant, Principal};

/// The grant's `max_sessions` is reached: answer 503 with `Retry-After`, like the connection
/// limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} already has {limit} sessions open, its limit")]
pub struct SessionLimitReached {
    /// `token=NAME` or `sub=USER`: not a secret.
    pub principal: String,
    pub limit: u32,
}

/// Open sessions per principal that has a limit.
#[derive(Debug, Default)]
pub struct SessionCounts {
    open: Mutex<HashMap<PrincipalKey, u32>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum PrincipalKey {
    Token(Box<str>),
    Jwt(Box<str>),
}

/// One counted session; dropping it gives the count back.
#[derive(Debug)]
pub struct SessionSlot {
    held: Option<(Arc<SessionCounts>, PrincipalKey)>,
}

impl SessionCounts {
    pub fn new() -> Arc<SessionCounts> {
        Arc::new(SessionCounts::default())
    }

    /// Counts one more session for `grant`, unless that would pass its `max_sessions`.
    pub fn try_acquire(
        self: &Arc<Self>,
        grant: &Grant,
    ) -> Result<SessionSlot, SessionLimitReached> {
        let Some(limit) = grant.limits().max_sessions else {
            return Ok(SessionSlot { held: None });
        };
        let key = match grant.principal() {
            Principal::Anonymous => return Ok(SessionSlot { held: None }),
            Principal::Token(name) => PrincipalKey::Token(name.clone()),
            Principal::Jwt(sub) => PrincipalKey::Jwt(sub.clone()),
        };
        let mut open = self.open.lock();
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= limit {
            return Err(SessionLimitReached { principal: grant.principal().to_string(), limit });
        }
        *count += 1;
        Ok(SessionSlot { held: Some((Arc::clone(self), key)) })
    }

    /// Sessions counted for a token entry's name (for tests and diagnostics).
    pub fn open_for_token(&self, name: &str) -> u32 {
        self.open.lock().get(&PrincipalKey::Token(name.into())).copied().unwrap_or(0)
    }
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        if let Some((counts, key)) = self.held.take() {
            let mut open = counts.open.lock();
            if let Some(count) = open.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{AccessConfig, TokenTable};
    use std::time::SystemTime;

    #[test]
    fn max_sessions_is_enforced_and_slots_give_back() {
        let table = TokenTable::parse_file(
            "[[token]]\nname = \"alice\"\ntoken = \"alice-token-0123456789\"\nsymbols = [\"*\"]\nmax_sessions = 2\n\
             [[token]]\nname = \"bob\"\ntoken = \"bob-token-0123456789\"\nsymbols = [\"*\"]\n",
        )
        .unwrap();
        let access = AccessConfig::new(table, None);
        let now = SystemTime::now();
        let alice = access.authenticate_request(None, Some("alice-token-0123456789"), now).unwrap();
        let bob = access.authenticate_request(None, Some("bob-token-0123456789"), now).unwrap();
        let counts = SessionCounts::new();
        let first = counts.try_acquire(&alice).unwrap();
        let _second = counts.try_acquire(&alice).unwrap();
        assert_eq!(counts.open_for_token("alice"), 2);
        assert_eq!(
            counts.try_acquire(&alice).unwrap_err(),
            SessionLimitReached { principal: "token=alice".into(), limit: 2 }
        );
        assert_eq!(
            SessionLimitReached { principal: "token=alice".into(), limit: 2 }.to_string(),
            "token=alice already has 2 sessions open, its limit"
        );
        drop(first);
        assert_eq!(counts.open_for_token("alice"), 1);
        assert!(counts.try_acquire(&alice).is_ok());
        // No limit: never refused, nothing counted.
        let slots: Vec<_> = (0..100).map(|_| counts.try_acquire(&bob).unwrap()).collect();
        assert_eq!(counts.open_for_token("bob"), 0);
        drop(slots);
    }
}
