//! A quote and its frames. One update is encoded once, into one buffer holding the `snapshot`
//! frame, the `quote` frame and the bare NATS payload; every subscriber then shares those bytes.

use bytes::Bytes;

use crate::json;
use crate::price::Price;

/// One update of one symbol. Prices are fixed-point in the symbol's precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quote {
    /// The symbol's sequence number: +1 per update.
    pub seq: u64,
    pub bid: Price,
    pub ask: Price,
    pub bid_size: u64,
    pub ask_size: u64,
    pub last: Price,
    pub last_size: u64,
    pub volume: u64,
    /// The feed's timestamp of the update, nanoseconds since the Unix epoch.
    pub ts: u64,
}

/// The encoded forms of one quote, all slices of one allocation.
#[derive(Debug, Clone)]
pub struct QuoteFrames {
    /// `{"type":"snapshot",...}`: sent when a client subscribes.
    pub snapshot: Bytes,
    /// `{"type":"quote",...}`: sent for every update.
    pub quote: Bytes,
    /// `{...}` without `type`: the NATS payload (section 5) and the `/snapshot` array elements.
    pub payload: Bytes,
}

const SNAPSHOT_PREFIX: &[u8] = b"{\"type\":\"snapshot\",";
const QUOTE_PREFIX: &[u8] = b"{\"type\":\"quote\",";

impl Quote {
    /// Encodes the quote once. `symbol` must be a valid symbol name (the symbol table only
    /// admits names that need no JSON escaping, but escaping is applied regardless).
    pub fn encode(&self, symbol: &str, precision: u8) -> QuoteFrames {
        let mut body = Vec::with_capacity(192);
        self.write_body(symbol, precision, &mut body);
        let mut buf =
            Vec::with_capacity(SNAPSHOT_PREFIX.len() + QUOTE_PREFIX.len() + 3 * body.len() + 1);
        buf.extend_from_slice(SNAPSHOT_PREFIX);
        buf.extend_from_slice(&body);
        let quote_start = buf.len();
        buf.extend_from_slice(QUOTE_PREFIX);
        buf.extend_from_slice(&body);
        let payload_start = buf.len();
        buf.push(b'{');
        buf.extend_from_slice(&body);
        let all = Bytes::from(buf);
        QuoteFrames {
            snapshot: all.slice(..quote_start),
            quote: all.slice(quote_start..payload_start),
            payload: all.slice(payload_start..),
        }
    }

    /// Writes `"symbol":...,"ts":...}`: every field after `type`, and the closing brace.
    fn write_body(&self, symbol: &str, precision: u8, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"symbol\":");
        json::write_str(out, symbol);
        out.extend_from_slice(b",\"seq\":");
        json::write_u64(out, self.seq);
        out.extend_from_slice(b",\"bid\":");
        self.bid.write(precision, out);
        out.extend_from_slice(b",\"ask\":");
        self.ask.write(precision, out);
        out.extend_from_slice(b",\"bid_size\":");
        json::write_u64(out, self.bid_size);
        out.extend_from_slice(b",\"ask_size\":");
        json::write_u64(out, self.ask_size);
        out.extend_from_slice(b",\"last\":");
        self.last.write(precision, out);
        out.extend_from_slice(b",\"last_size\":");
        json::write_u64(out, self.last_size);
        out.extend_from_slice(b",\"volume\":");
        json::write_u64(out, self.volume);
        out.extend_from_slice(b",\"ts\":");
        json::write_u64(out, self.ts);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn aapl() -> Quote {
        Quote {
            seq: 1042,
            bid: Price(18725),
            ask: Price(18727),
            bid_size: 200,
            ask_size: 500,
            last: Price(18726),
            last_size: 50,
            volume: 1_203_450,
            ts: 1_763_775_600_124_456_789,
        }
    }

    #[test]
    fn quote_frame_has_the_exact_bytes_of_the_contract() {
        let frames = aapl().encode("AAPL", 2);
        assert_eq!(
            std::str::from_utf8(&frames.quote).unwrap(),
            r#"{"type":"quote","symbol":"AAPL","seq":1042,"bid":187.25,"ask":187.27,"bid_size":200,"ask_size":500,"last":187.26,"last_size":50,"volume":1203450,"ts":1763775600124456789}"#
        );
    }

    #[test]
    fn snapshot_and_payload_share_the_body() {
        let frames = aapl().encode("AAPL", 2);
        let body = r#""symbol":"AAPL","seq":1042,"bid":187.25,"ask":187.27,"bid_size":200,"ask_size":500,"last":187.26,"last_size":50,"volume":1203450,"ts":1763775600124456789}"#;
        assert_eq!(frames.snapshot, format!(r#"{{"type":"snapshot",{body}"#).as_bytes());
        assert_eq!(frames.payload, format!("{{{body}").as_bytes());
    }

    #[test]
    fn trailing_zeros_follow_the_precision() {
        let q = Quote { bid: Price(10_000), ask: Price(10_010), last: Price(10_005), ..aapl() };
        let frames = q.encode("X", 3);
        let text = std::str::from_utf8(&frames.payload).unwrap();
        assert!(text.contains(r#""bid":10.000,"ask":10.010"#), "{text}");
        assert!(text.contains(r#""last":10.005"#), "{text}");
    }

    proptest! {
        /// Every encodable quote parses back, with a standard JSON parser, to the same values.
        #[test]
        fn every_quote_parses_back_to_its_values(
            symbol in "[A-Z][A-Z0-9.]{0,11}",
            precision in 0u8..=8,
            seq in any::<u64>(),
            bid in 0i64..1_000_000_000_000,
            spread in 0i64..1_000_000,
            last in -1_000_000_000i64..1_000_000_000_000,
            sizes in any::<(u64, u64, u64, u64)>(),
            ts in any::<u64>(),
        ) {
            let q = Quote {
                seq,
                bid: Price(bid),
                ask: Price(bid + spread),
                bid_size: sizes.0,
                ask_size: sizes.1,
                last: Price(last),
                last_size: sizes.2,
                volume: sizes.3,
                ts,
            };
            let frames = q.encode(&symbol, precision);
            for (bytes, kind) in [(&frames.quote, Some("quote")), (&frames.snapshot, Some("snapshot")), (&frames.payload, None)] {
                let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
                prop_assert_eq!(v.get("type").and_then(|t| t.as_str()), kind);
                prop_assert_eq!(v["symbol"].as_str().unwrap(), symbol.as_str());
                prop_assert_eq!(v["seq"].as_u64().unwrap(), seq);
                prop_assert_eq!(v["bid_size"].as_u64().unwrap(), sizes.0);
                prop_assert_eq!(v["ask_size"].as_u64().unwrap(), sizes.1);
                prop_assert_eq!(v["last_size"].as_u64().unwrap(), sizes.2);
                prop_assert_eq!(v["volume"].as_u64().unwrap(), sizes.3);
                prop_assert_eq!(v["ts"].as_u64().unwrap(), ts);
                // Prices: the written decimal text, read back as a number, is the fixed-point value.
                for (field, units) in [("bid", q.bid), ("ask", q.ask), ("last", q.last)] {
                    let n = v[field].as_f64().unwrap();
                    prop_assert_eq!(n, units.to_f64(precision), "field {}", field);
                    let text = v[field].to_string();
                    let decimals = text.split('.').nth(1).map_or(0, str::len);
                    prop_assert!(decimals <= precision as usize, "{} has {} decimals", text, decimals);
                }
            }
        }
    }
}
