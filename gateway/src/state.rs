//! What every part of one gateway shares: the configuration, the store, the metrics, access
//! control, and the few counters that limits are checked against. Read by every shard; written
//! only on connection and subscription changes, never per delivery.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use arc_swap::ArcSwap;

use crate::access::{AccessConfig, AuditDecision, AuditLimiter, AuthFailure, SessionCounts};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::tls::TlsConfigHolder;
use crate::store::SnapshotStore;

/// The shared state of one gateway.
pub struct Gateway {
    pub config: Config,
    pub server_name: String,
    pub store: Arc<SnapshotStore>,
    pub metrics: Arc<Metrics>,
    /// Tokens, JWT key, entitlements: replaced whole on SIGHUP.
    pub access: ArcSwap<AccessConfig>,
    /// Sessions open per token entry or JWT `sub` (their `max_sessions`).
    pub sessions_per_grant: Arc<SessionCounts>,
    /// `--tls-cert`, `--tls-key`: the port speaks TLS only (the certificate is replaced on
    /// SIGHUP; open connections keep theirs).
    pub tls: Option<TlsConfigHolder>,
    origins: Vec<String>,
    auth_log: Mutex<AuditLimiter>,
    pub started_wall_ns: u64,
    pub sessions_active: AtomicU64,
    pub sse_sessions_active: AtomicU64,
    pub subscriptions_active: AtomicU64,
    /// Connections that have not finished their HTTP request or upgrade.
    pub pending_connections: AtomicU64,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    session_counter: AtomicU64,
}

impl Gateway {
    pub fn new(
        config: Config,
        store: Arc<SnapshotStore>,
        metrics: Arc<Metrics>,
        access: AccessConfig,
        started_wall_ns: u64,
    ) -> Gateway {
        Gateway {
            server_name: config.server_name(),
            origins: config.allowed_origins.iter().filter(|o| !o.is_empty()).cloned().collect(),
            auth_log: Mutex::new(AuditLimiter::new(config.auth_log_per_sec)),
            config,
            store,
            metrics,
            access: ArcSwap::from_pointee(access),
            sessions_per_grant: SessionCounts::new(),
            tls: None,
            started_wall_ns,
            sessions_active: AtomicU64::new(0),
            sse_sessions_active: AtomicU64::new(0),
            subscriptions_active: AtomicU64::new(0),
            pending_connections: AtomicU64::new(0),
            per_ip: Mutex::new(HashMap::new()),
            session_counter: AtomicU64::new(0),
        }
    }

    /// Serves TLS only, with this certificate.
    pub fn with_tls(mut self, tls: Option<TlsConfigHolder>) -> Gateway {
        self.tls = tls;
        self
    }

    /// Whether a session may be opened from `origin` (the allow-list, if one is configured).
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        self.origins.is_empty() || origin.is_some_and(|o| self.origins.iter().any(|a| a == o))
    }

    /// Logs an authentication failure at info, at most `--auth-log-per-sec` a second: the
    /// peer, the endpoint (a path, never its query: `?token=` is there) and the reason.
    pub fn audit_auth_failure(&self, peer: SocketAddr, path: &str, failure: AuthFailure) {
        match self.auth_log.lock().admit(std::time::Instant::now()) {
            AuditDecision::Log { suppressed_before } => tracing::info!(
                %peer, path, reason = failure.as_str(), suppressed = suppressed_before,
                "authentication failed"
            ),
            AuditDecision::Suppress => {}
        }
    }

    /// A short unique session id: a per-process random base plus a counter.
    pub fn next_session_id(&self) -> u64 {
        let n = self.session_counter.fetch_add(1, Ordering::Relaxed);
        (self.started_wall_ns >> 10).wrapping_mul(0x9e37_79b9).wrapping_add(n) & 0xffff_ffff_ffff
    }
}

/// The key a client address is counted under for the per-address cap: an IPv4 address, or
/// the /64 network of an IPv6 one (one host usually holds a whole /64, so counting single
/// IPv6 addresses would cap nothing).
pub fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
        v4 => v4,
    }
}

/// A reserved session place: counted against the connection limits until dropped.
pub struct SessionPermit {
    gateway: Arc<Gateway>,
    ip: Option<IpAddr>,
}

impl std::fmt::Debug for SessionPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionPermit").field("ip", &self.ip).finish()
    }
}

impl SessionPermit {
    /// Reserves a place, or says which limit is reached.
    pub fn acquire(gw: &Arc<Gateway>, ip: IpAddr) -> Result<SessionPermit, &'static str> {
        let max = u64::from(gw.config.max_connections);
        if gw
            .sessions_active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| (n < max).then_some(n + 1))
            .is_err()
        {
            return Err("connection limit reached");
        }
        let mut permit = SessionPermit { gateway: Arc::clone(gw), ip: None };
        let per_ip_max = gw.config.max_connections_per_ip;
        if per_ip_max > 0 {
            let key = per_ip_key(ip);
            let mut counts = gw.per_ip.lock();
            let count = counts.entry(key).or_insert(0);
            if *count >= per_ip_max {
                return Err("connection limit per client address reached");
            }
            *count += 1;
            permit.ip = Some(key);
        }
        Ok(permit)
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.gateway.sessions_active.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut counts = self.gateway.per_ip.lock();
            if let Some(count) = counts.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(per_ip_key(a), per_ip_key(b));
        assert_ne!(per_ip_key(a), per_ip_key(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(per_ip_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
