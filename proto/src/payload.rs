//! Decoding a quote payload from an upstream feed (contract section 5): the quote object of
//! section 3 without `type`, as a feed publishes it on `md.quote.<SYMBOL>` and as `feed-sim`
//! records it.
//!
//! Payloads are external input. The decoder is bounded (a size cap before any parsing,
//! serde_json's recursion limit, no allocation beyond the symbol name) and every way a payload
//! can be wrong is a [`PayloadError`], never a panic.
//!
//! **Precision.** A price's precision is read from its text: `187.25` has two decimals. A
//! conforming feed writes every price with the symbol's precision, trailing zeros included
//! (`187.20`), as section 3 requires, so the most decimals among `bid`, `ask` and `last` is the
//! symbol's precision; [`PayloadQuote::precision`] is that number. [`rescale`] moves a price to
//! another precision when that is exact (`187.250` at two decimals is `187.25`), and refuses
//! otherwise, so a value is never rounded.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::price::{Price, MAX_PRECISION};
use crate::quote::Quote;

/// Largest payload decoded. A quote is ~200 bytes; 4 KiB leaves room for long names and extra
/// fields a newer feed might add, and bounds what one malformed message can cost.
pub const MAX_PAYLOAD_BYTES: usize = 4096;

/// Why a payload was not a quote.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload of {0} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a quote object: {0}")]
    Json(String),
    #[error("`{0}` is not a price written as a plain decimal number (such as 187.25)")]
    Price(&'static str),
    #[error("`seq` must be at least 1")]
    Seq,
}

/// A decoded payload: the symbol's name, the precision its prices were written with, and the
/// quote in that precision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadQuote<'a> {
    pub symbol: Cow<'a, str>,
    pub precision: u8,
    pub quote: Quote,
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    symbol: Cow<'a, str>,
    seq: u64,
    #[serde(borrow)]
    bid: &'a RawValue,
    #[serde(borrow)]
    ask: &'a RawValue,
    bid_size: u64,
    ask_size: u64,
    #[serde(borrow)]
    last: &'a RawValue,
    last_size: u64,
    volume: u64,
    ts: u64,
}

/// Decodes one payload. Unknown fields are ignored (a newer feed may add some); a missing or
/// ill-typed field, a duplicate field, or a price in exponent form is an error.
pub fn decode_payload(bytes: &[u8]) -> Result<PayloadQuote<'_>, PayloadError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(PayloadError::TooLarge(bytes.len()));
    }
    let raw: Raw<'_> =
        serde_json::from_slice(bytes).map_err(|e| PayloadError::Json(e.to_string()))?;
    if raw.seq == 0 {
        return Err(PayloadError::Seq);
    }
    let bid = parse_price(raw.bid.get()).ok_or(PayloadError::Price("bid"))?;
    let ask = parse_price(raw.ask.get()).ok_or(PayloadError::Price("ask"))?;
    let last = parse_price(raw.last.get()).ok_or(PayloadError::Price("last"))?;
    let precision = bid.1.max(ask.1).max(last.1);
    let at = |(units, decimals): (i64, u8), field| {
        rescale(Price(units), decimals, precision).ok_or(PayloadError::Price(field))
    };
    let quote = Quote {
        seq: raw.seq,
        bid: at(bid, "bid")?,
        ask: at(ask, "ask")?,
        bid_size: raw.bid_size,
        ask_size: raw.ask_size,
        last: at(last, "last")?,
        last_size: raw.last_size,
        volume: raw.volume,
        ts: raw.ts,
    };
    Ok(PayloadQuote { symbol: raw.symbol, precision, quote })
}

/// `-?DIGITS(.DIGITS)?` as fixed-point units and the number of decimals; `None` for anything
/// else (exponents, more than [`MAX_PRECISION`] decimals, out of `i64` range).
fn parse_price(text: &str) -> Option<(i64, u8)> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (digits, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !all_digits(int) || !all_digits(frac) || digits.ends_with('.') {
        return None;
    }
    if frac.len() > MAX_PRECISION as usize {
        return None;
    }
    let mut units: i64 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        units = units.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some((if negative { -units } else { units }, frac.len() as u8))
}

/// `price` (in `from` decimals) in `to` decimals, when that is exact and in range.
pub fn rescale(price: Price, from: u8, to: u8) -> Option<Price> {
    if from > MAX_PRECISION || to > MAX_PRECISION {
        return None;
    }
    if to >= from {
        price.0.checked_mul(Price::scale(to - from)).map(Price)
    } else {
        let factor = Price::scale(from - to);
        (price.0 % factor == 0).then(|| Price(price.0 / factor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAPL: &str = r#"{"symbol":"AAPL","seq":1042,"bid":187.25,"ask":187.27,"bid_size":200,"ask_size":500,"last":187.26,"last_size":50,"volume":1203450,"ts":1763775600124456789}"#;

    #[test]
    fn decodes_the_contract_example_and_encodes_it_back_byte_for_byte() {
        let p = decode_payload(AAPL.as_bytes()).unwrap();
        assert_eq!(p.symbol, "AAPL");
        assert_eq!(p.precision, 2);
        assert_eq!(p.quote.seq, 1042);
        assert_eq!(p.quote.bid, Price(18725));
        assert_eq!(p.quote.ts, 1_763_775_600_124_456_789);
        let frames = p.quote.encode(&p.symbol, p.precision);
        assert_eq!(&frames.payload[..], AAPL.as_bytes());
    }

    #[test]
    fn precision_is_the_most_decimals_and_trailing_zeros_count() {
        let text = AAPL.replace("187.25", "187.250").replace("187.27", "187.2");
        let p = decode_payload(text.as_bytes()).unwrap();
        assert_eq!(p.precision, 3);
        assert_eq!(p.quote.bid, Price(187_250));
        assert_eq!(p.quote.ask, Price(187_200));
        assert_eq!(p.quote.last, Price(187_260));
        let whole = AAPL.replace("187.25", "187").replace("187.27", "188").replace("187.26", "-1");
        let p = decode_payload(whole.as_bytes()).unwrap();
        assert_eq!((p.precision, p.quote.bid, p.quote.last), (0, Price(187), Price(-1)));
    }

    #[test]
    fn unknown_fields_are_ignored_and_type_may_be_present() {
        let text = AAPL.replacen('{', r#"{"type":"quote","venue":{"id":[1,2]},"#, 1);
        assert_eq!(decode_payload(text.as_bytes()).unwrap().quote.seq, 1042);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "json"),
            ("[]".into(), "json"),
            ("{".into(), "json"),
            (AAPL.replace(r#""seq":1042"#, r#""seq":0"#), "seq"),
            (AAPL.replace(r#""seq":1042"#, r#""seq":-1"#), "json"),
            (AAPL.replace(r#""seq":1042"#, r#""seq":"1042""#), "json"),
            (AAPL.replace(r#","volume":1203450"#, ""), "json"),
            (AAPL.replace("187.25", "1.8725e2"), "price"),
            (AAPL.replace("187.25", r#""187.25""#), "price"),
            (AAPL.replace("187.25", "null"), "price"),
            (AAPL.replace("187.25", "99999999999999999999"), "price"),
            (AAPL.replace("187.25", "1.0000000000000000001"), "price"),
            (AAPL.replace(r#""bid_size":200"#, r#""bid_size":200.5"#), "json"),
            (AAPL.replace(r#""ts":"#, r#""seq":1,"ts":"#), "json"),
            (AAPL.replace("\"AAPL\"", "7"), "json"),
        ];
        for (text, kind) in cases {
            let err = decode_payload(text.as_bytes()).expect_err(&text);
            let got = match err {
                PayloadError::Json(_) => "json",
                PayloadError::Price(_) => "price",
                PayloadError::Seq => "seq",
                PayloadError::TooLarge(_) => "large",
            };
            assert_eq!(got, kind, "{text}: {err}");
        }
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_PAYLOAD_BYTES));
        assert_eq!(decode_payload(big.as_bytes()), Err(PayloadError::TooLarge(big.len())));
        let deep = "[".repeat(1000);
        assert!(decode_payload(deep.as_bytes()).is_err());
    }

    #[test]
    fn rescale_is_exact_or_refused() {
        assert_eq!(rescale(Price(18725), 2, 4), Some(Price(1_872_500)));
        assert_eq!(rescale(Price(187_250), 3, 2), Some(Price(18725)));
        assert_eq!(rescale(Price(187_251), 3, 2), None);
        assert_eq!(rescale(Price(i64::MAX), 0, 1), None);
        assert_eq!(rescale(Price(5), 0, 18), Some(Price(5_000_000_000_000_000_000)));
    }

    proptest::proptest! {
        /// Any bytes: an answer, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = decode_payload(&bytes);
        }
    }
}
