//! The gateway's own view of the measured window, from its Prometheus `/metrics` scraped at the
//! window's start and end: its quote age (feed `ts` → socket write) beside ours (→ receipt)
//! tells time spent in the gateway from time spent in the kernel and the tester; its feed rate,
//! conflation and slow-consumer closes explain a missed delivery figure.
//!
//! Best effort: a gateway without these metrics (or another server) gives `None`, never an error.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::target::{http_get, Target};

const QUOTE_AGE_BUCKET: &str = "gateway_quote_age_seconds_bucket";

/// One scrape: the quote-age histogram's cumulative buckets and the counters we read.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// (upper bound `le` in seconds, cumulative count), ascending; `+Inf` as `f64::INFINITY`.
    pub quote_age_buckets: Vec<(f64, f64)>,
    /// Sample values by their full series name (`name{labels}`), for the few series we use.
    pub series: BTreeMap<String, f64>,
}

const SERIES: &[&str] = &[
    "gateway_feed_updates_total",
    "gateway_conflated_updates_total",
    "gateway_slow_consumer_closes_total",
    "gateway_heartbeat_timeouts_total",
    "gateway_sessions_active",
    "gateway_messages_sent_total{type=\"quote\"}",
    "gateway_resume_symbols_total{outcome=\"resumed\"}",
    "gateway_resume_symbols_total{outcome=\"snapshot\"}",
];

pub fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if let Some(labels) = name.strip_prefix(QUOTE_AGE_BUCKET) {
            let le = labels.split("le=\"").nth(1).and_then(|r| r.split('"').next()).and_then(|v| {
                if v == "+Inf" {
                    Some(f64::INFINITY)
                } else {
                    v.parse::<f64>().ok()
                }
            });
            if let Some(le) = le {
                s.quote_age_buckets.push((le, value));
            }
        } else if SERIES.contains(&name) {
            s.series.insert(name.to_string(), value);
        }
    }
    s.quote_age_buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    s
}

/// What the gateway says about the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayMetrics {
    /// Quotes written in the window, by the gateway's histogram.
    pub quote_age_count: u64,
    /// Upper bounds (ms) of the buckets holding the 50th, 99th and 99.9th percentile of the
    /// gateway's quote age (feed `ts` → socket write); `None` past the last finite bucket.
    pub quote_age_p50_ms_at_most: Option<f64>,
    pub quote_age_p99_ms_at_most: Option<f64>,
    pub quote_age_p999_ms_at_most: Option<f64>,
    pub feed_updates_per_sec: Option<f64>,
    pub quotes_sent_per_sec: Option<f64>,
    pub conflated_updates: Option<f64>,
    pub slow_consumer_closes: Option<f64>,
    pub heartbeat_timeouts: Option<f64>,
    pub sessions_active_at_end: Option<f64>,
    /// Symbols resumed and snapshotted on resume (`gateway_resume_symbols_total`).
    pub resumed_symbols: Option<f64>,
    pub snapshotted_symbols: Option<f64>,
}

/// The window between two scrapes of `secs` seconds.
pub fn window(a: &Scrape, b: &Scrape, secs: f64) -> GatewayMetrics {
    let delta = |name: &str| Some(b.series.get(name)? - a.series.get(name).copied().unwrap_or(0.0));
    let mut m = GatewayMetrics {
        feed_updates_per_sec: delta("gateway_feed_updates_total").map(|d| d / secs),
        quotes_sent_per_sec: delta("gateway_messages_sent_total{type=\"quote\"}").map(|d| d / secs),
        conflated_updates: delta("gateway_conflated_updates_total"),
        slow_consumer_closes: delta("gateway_slow_consumer_closes_total"),
        heartbeat_timeouts: delta("gateway_heartbeat_timeouts_total"),
        sessions_active_at_end: b.series.get("gateway_sessions_active").copied(),
        resumed_symbols: delta("gateway_resume_symbols_total{outcome=\"resumed\"}"),
        snapshotted_symbols: delta("gateway_resume_symbols_total{outcome=\"snapshot\"}"),
        ..GatewayMetrics::default()
    };
    // Per-bucket differences; a bucket missing from the first scrape counts from zero.
    let buckets: Vec<(f64, f64)> = b
        .quote_age_buckets
        .iter()
        .map(|&(le, n)| {
            let before = a.quote_age_buckets.iter().find(|(l, _)| *l == le).map_or(0.0, |x| x.1);
            (le, n - before)
        })
        .collect();
    let total = buckets.last().map_or(0.0, |x| x.1);
    m.quote_age_count = total as u64;
    if total > 0.0 {
        let at = |q: f64| {
            buckets
                .iter()
                .find(|(_, n)| *n >= q * total)
                .and_then(|&(le, _)| le.is_finite().then_some(le * 1e3))
        };
        m.quote_age_p50_ms_at_most = at(0.50);
        m.quote_age_p99_ms_at_most = at(0.99);
        m.quote_age_p999_ms_at_most = at(0.999);
    }
    m
}

/// Scrapes `/metrics`; `None` when it cannot.
pub async fn scrape(target: &Target) -> Option<Scrape> {
    let body = http_get(target, "/metrics", Duration::from_secs(5)).await.ok()?;
    let text = String::from_utf8(body).ok()?;
    let s = parse(&text);
    (!s.quote_age_buckets.is_empty() || !s.series.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "# HELP x\n\
        gateway_feed_updates_total 1000\n\
        gateway_messages_sent_total{type=\"quote\"} 5000\n\
        gateway_messages_sent_total{type=\"heartbeat\"} 7\n\
        gateway_quote_age_seconds_bucket{le=\"0.001\"} 10\n\
        gateway_quote_age_seconds_bucket{le=\"0.01\"} 10\n\
        gateway_quote_age_seconds_bucket{le=\"+Inf\"} 10\n";
    const B: &str = "gateway_feed_updates_total 3000\n\
        gateway_messages_sent_total{type=\"quote\"} 25000\n\
        gateway_sessions_active 40\n\
        gateway_quote_age_seconds_bucket{le=\"0.001\"} 9910\n\
        gateway_quote_age_seconds_bucket{le=\"0.01\"} 10000\n\
        gateway_quote_age_seconds_bucket{le=\"+Inf\"} 10010\n";

    #[test]
    fn reads_the_window_between_two_scrapes() {
        let m = window(&parse(A), &parse(B), 2.0);
        assert_eq!(m.quote_age_count, 10_000);
        assert_eq!(m.feed_updates_per_sec, Some(1000.0));
        assert_eq!(m.quotes_sent_per_sec, Some(10_000.0));
        assert_eq!(m.quote_age_p50_ms_at_most, Some(1.0));
        assert_eq!(m.quote_age_p99_ms_at_most, Some(1.0));
        assert_eq!(m.quote_age_p999_ms_at_most, Some(10.0));
        assert_eq!(m.sessions_active_at_end, Some(40.0));
        assert_eq!(m.conflated_updates, None);
    }
}
