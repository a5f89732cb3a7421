//! Query strings of the HTTP endpoints (`/snapshot?symbols=A,B`, `/sse?symbols=…&since=A:1041`,
//! `?token=T`): percent-decoding, key/value pairs, symbol lists and `since` lists (contract
//! sections 1 and 6).
//!
//! Pure functions of client bytes, so they must never panic and never cost more than time
//! linear in their input: every loop is one pass, de-duplication uses a set, and every list has
//! a cap that is an error past it (answered `400` by the HTTP layer), never a truncation. They do
//! no I/O and know nothing of the symbol table: resolving names is the caller's job, after the
//! caps have been applied.
//!
//! Decisions where the contract is silent (documented in `docs/protocol.md`):
//! - `+` is a space and `%XX` a byte, in keys and values (HTML form encoding); a `%` not followed
//!   by two hex digits, or bytes that are not UTF-8 once decoded, are errors;
//! - a parameter given twice counts as its last value, as a JSON field given twice does;
//! - in a list, names are trimmed of spaces, empty entries are skipped (`A,,B,` is `A,B`), and a
//!   name given twice counts once (in `since`, with its last value).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

/// Most `key=value` pairs one query string may carry. `/sse` has six parameters
/// (`symbols`, `throttle_ms`, `snapshot`, `resume_epoch`, `since`, `token`); 16 leaves room for
/// cache-busters and tracking parameters some clients add, while a query of thousands of empty
/// pairs is refused before any of them is decoded.
pub const MAX_QUERY_PAIRS: usize = 16;

/// Longest entry quoted back in an error message, so an error never echoes a huge input.
const SHOWN_CHARS: usize = 32;

/// Why a query string, or one of its values, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-escape at byte {at}: write a byte as %XX with two hex digits")]
    BadEscape { at: usize },
    /// The decoded bytes are not UTF-8.
    #[error("a query parameter is not UTF-8 once percent-decoded")]
    NotUtf8,
    /// More `key=value` pairs than the cap.
    #[error("more than {max} query parameters")]
    TooManyPairs { max: usize },
    /// A list names more distinct symbols than the cap.
    #[error("more than {max} distinct symbols: ask for at most {max} at once")]
    TooManySymbols { max: usize },
    /// A list with no name in it.
    #[error("no symbol named: give a comma-separated list, such as AAPL,MSFT")]
    NoSymbols,
    /// A `since` entry that is not `SYMBOL:SEQ` with an unsigned integer `SEQ`.
    #[error("since entry {entry:?} must be SYMBOL:SEQ, such as AAPL:1041")]
    BadSince { entry: String },
}

/// Decodes one query component: `%XX` to its byte and, when `plus_as_space`, `+` to a space.
/// Borrows the input when there is nothing to decode; otherwise allocates once, never more than
/// the input's length (so the HTTP layer's cap on the request line bounds it).
pub fn percent_decode(input: &str, plus_as_space: bool) -> Result<Cow<'_, str>, QueryError> {
    let bytes = input.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || (plus_as_space && b == b'+')) {
        return Ok(Cow::Borrowed(input));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = |j: usize| bytes.get(j).and_then(|&d| char::from(d).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(QueryError::BadEscape { at: i });
                };
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map(Cow::Owned).map_err(|_| QueryError::NotUtf8)
}

/// A query string split into decoded `key=value` pairs, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Query<'a> {
    pairs: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

impl<'a> Query<'a> {
    /// Splits `query` (what follows the `?`, without it) on `&` and each part at its first `=`
    /// (a part without one has an empty value), decoding both. Empty parts (`a=1&&b=2`) are
    /// skipped. More than `max_pairs` parts is an error before any is decoded.
    pub fn parse(query: &'a str, max_pairs: usize) -> Result<Query<'a>, QueryError> {
        let parts = query.split('&').filter(|p| !p.is_empty());
        if parts.clone().count() > max_pairs {
            return Err(QueryError::TooManyPairs { max: max_pairs });
        }
        let pairs = parts
            .map(|part| {
                let (key, value) = part.split_once('=').unwrap_or((part, ""));
                Ok((percent_decode(key, true)?, percent_decode(value, true)?))
            })
            .collect::<Result<Vec<_>, QueryError>>()?;
        Ok(Query { pairs })
    }

    /// The value of the last parameter named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_ref())
    }

    /// Every pair, decoded, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }
}

/// The entries of a comma-separated list, trimmed, without empty ones.
fn entries(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(|e| e.trim_matches(' ')).filter(|e| !e.is_empty())
}

/// A comma-separated symbol list (`symbols=A,B`, already percent-decoded): each name once, in
/// order of first appearance. More than `max` distinct names, or none, is an error.
pub fn symbol_list(list: &str, max: usize) -> Result<Vec<&str>, QueryError> {
    // The set never holds more than `max` names: one more is the error.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut names = Vec::new();
    for name in entries(list) {
        if seen.contains(name) {
            continue;
        }
        if seen.len() == max {
            return Err(QueryError::TooManySymbols { max });
        }
        seen.insert(name);
        names.push(name);
    }
    if names.is_empty() {
        return Err(QueryError::NoSymbols);
    }
    Ok(names)
}

/// A `since` list of section 6 (`since=A:1041,B:877`, already percent-decoded): each symbol once
/// with the `seq` it was last given, in order of first appearance. More than `max` distinct
/// symbols is an error; an empty list is an empty resume. The name is what precedes the last
/// `:`, so a name holding a `:` still works.
pub fn since_list(list: &str, max: usize) -> Result<Vec<(&str, u64)>, QueryError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(&str, u64)> = Vec::new();
    for entry in entries(list) {
        let parsed = entry.rsplit_once(':').and_then(|(name, seq)| {
            let name = name.trim_matches(' ');
            let digits = seq.trim_matches(' ');
            // `u64::from_str` takes a leading `+`; the contract's integers do not have one.
            let seq = digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok())??;
            (!name.is_empty()).then_some((name, seq))
        });
        let Some((name, seq)) = parsed else {
            return Err(QueryError::BadSince { entry: shown(entry) });
        };
        match index.get(name) {
            Some(&at) => {
                if let Some(slot) = out.get_mut(at) {
                    slot.1 = seq;
                }
            }
            None if index.len() == max => return Err(QueryError::TooManySymbols { max }),
            None => {
                index.insert(name, out.len());
                out.push((name, seq));
            }
        }
    }
    Ok(out)
}

/// `entry`, cut to [`SHOWN_CHARS`] characters for an error message.
fn shown(entry: &str) -> String {
    let mut out: String = entry.chars().take(SHOWN_CHARS).collect();
    if out.len() < entry.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn percent_decoding_takes_escapes_and_plus_and_refuses_broken_escapes() {
        assert_eq!(percent_decode("AAPL", true), Ok(Cow::Borrowed("AAPL")));
        assert_eq!(percent_decode("BRK%2EB%2cMSFT", true).unwrap(), "BRK.B,MSFT");
        assert_eq!(percent_decode("a+b%20c", true).unwrap(), "a b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert_eq!(percent_decode("%C3%A9", true).unwrap(), "é");
        assert_eq!(percent_decode("%", true), Err(QueryError::BadEscape { at: 0 }));
        assert_eq!(percent_decode("ab%4", true), Err(QueryError::BadEscape { at: 2 }));
        assert_eq!(percent_decode("%zz", true), Err(QueryError::BadEscape { at: 0 }));
        // A multi-byte character right after `%` is not a hex digit (and no slicing in it).
        assert_eq!(percent_decode("%é1", true), Err(QueryError::BadEscape { at: 0 }));
        assert_eq!(percent_decode("%FF", true), Err(QueryError::NotUtf8));
    }

    #[test]
    fn a_query_splits_into_decoded_pairs_and_the_last_of_a_name_counts() {
        let q =
            Query::parse("symbols=AAPL%2CMSFT&&throttle_ms=250&snapshot&symbols=NVDA&t+k=a+b", 8)
                .unwrap();
        assert_eq!(
            q.pairs().collect::<Vec<_>>(),
            [
                ("symbols", "AAPL,MSFT"),
                ("throttle_ms", "250"),
                ("snapshot", ""),
                ("symbols", "NVDA"),
                ("t k", "a b")
            ]
        );
        assert_eq!(q.get("symbols"), Some("NVDA"));
        assert_eq!(q.get("snapshot"), Some(""));
        assert_eq!(q.get("token"), None);
        assert_eq!(Query::parse("", 8).unwrap().pairs().count(), 0);
        assert_eq!(Query::parse("a=%x", 8), Err(QueryError::BadEscape { at: 0 }));
        // The cap counts non-empty parts, before decoding any.
        assert!(Query::parse(&"a=1&".repeat(16), 16).is_ok());
        assert_eq!(Query::parse(&"a=%&".repeat(17), 16), Err(QueryError::TooManyPairs { max: 16 }));
    }

    #[test]
    fn a_symbol_list_is_trimmed_deduplicated_and_capped() {
        assert_eq!(symbol_list("AAPL, MSFT,,AAPL,BRK.B,", 3), Ok(vec!["AAPL", "MSFT", "BRK.B"]));
        assert_eq!(symbol_list("A,B,C,D", 3), Err(QueryError::TooManySymbols { max: 3 }));
        // Repeats do not count against the cap.
        assert_eq!(symbol_list("A,A,A,A,B", 2), Ok(vec!["A", "B"]));
        assert_eq!(symbol_list("", 3), Err(QueryError::NoSymbols));
        assert_eq!(symbol_list(" , ,", 3), Err(QueryError::NoSymbols));
        assert_eq!(symbol_list("A", 0), Err(QueryError::TooManySymbols { max: 0 }));
    }

    #[test]
    fn a_since_list_gives_each_symbol_its_last_seq() {
        assert_eq!(
            since_list("AAPL:1041, MSFT:877,AAPL:1042,X:Y:5", 3),
            Ok(vec![("AAPL", 1042), ("MSFT", 877), ("X:Y", 5)])
        );
        assert_eq!(since_list("", 3), Ok(vec![]));
        assert_eq!(since_list("A:18446744073709551615", 3), Ok(vec![("A", u64::MAX)]));
        for bad in ["AAPL", "AAPL:", ":5", "A:-1", "A:+1", "A:1.5", "A:18446744073709551616", "A:x"]
        {
            assert_eq!(
                since_list(bad, 3),
                Err(QueryError::BadSince { entry: bad.to_string() }),
                "{bad}"
            );
        }
        assert_eq!(since_list("A:1,B:2,C:3,D:4", 3), Err(QueryError::TooManySymbols { max: 3 }));
        let long = format!("{}:x", "S".repeat(100));
        let Err(QueryError::BadSince { entry }) = since_list(&long, 3) else { panic!("refused") };
        assert_eq!(entry, format!("{}…", "S".repeat(SHOWN_CHARS)));
    }

    /// Percent-encodes every byte that is not unreserved (the way a browser's
    /// `encodeURIComponent` does), spaces as `+` when asked.
    fn encode(s: &str, plus: bool) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                b' ' if plus => "+".to_string(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Any input, up to the size of a long URL, never panics any of the parsers.
        #[test]
        fn arbitrary_input_never_panics(input in "(?s).{0,2000}", max in 0usize..20) {
            let _ = percent_decode(&input, true);
            let _ = percent_decode(&input, false);
            if let Ok(q) = Query::parse(&input, max) {
                prop_assert!(q.pairs().count() <= max);
            }
            if let Ok(names) = symbol_list(&input, max) {
                prop_assert!(!names.is_empty() && names.len() <= max);
            }
            if let Ok(entries) = since_list(&input, max) {
                prop_assert!(entries.len() <= max);
            }
        }

        /// What a client encodes, the parser decodes back: pairs, in order.
        #[test]
        fn encoded_pairs_decode_back(
            pairs in proptest::collection::vec(("(?s).{1,12}", "(?s).{0,12}"), 0..10),
            plus in any::<bool>(),
        ) {
            let query: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", encode(k, plus), encode(v, plus)))
                .collect();
            let query = query.join("&");
            let parsed = Query::parse(&query, 10).unwrap();
            let got: Vec<(String, String)> =
                parsed.pairs().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            prop_assert_eq!(got, pairs);
        }

        /// A symbol list is its distinct trimmed names in order, or the right error.
        #[test]
        fn symbol_lists_match_a_simple_model(
            names in proptest::collection::vec("[A-E ]{0,3}", 0..40),
            max in 0usize..8,
        ) {
            let list = names.join(",");
            let mut model: Vec<&str> = Vec::new();
            for name in names.iter().map(|n| n.trim_matches(' ')).filter(|n| !n.is_empty()) {
                if !model.contains(&name) {
                    model.push(name);
                }
            }
            let expected = if model.len() > max {
                Err(QueryError::TooManySymbols { max })
            } else if model.is_empty() {
                Err(QueryError::NoSymbols)
            } else {
                Ok(model)
            };
            prop_assert_eq!(symbol_list(&list, max), expected);
        }

        /// A since list is each symbol's last seq, in order of first appearance.
        #[test]
        fn since_lists_match_a_simple_model(
            entries in proptest::collection::vec(("[A-D]{1,2}", any::<u64>()), 0..30),
            max in 0usize..8,
        ) {
            let list: Vec<String> = entries.iter().map(|(s, n)| format!("{s}:{n}")).collect();
            let mut model: Vec<(&str, u64)> = Vec::new();
            for (name, n) in &entries {
                match model.iter_mut().find(|(m, _)| m == name) {
                    Some(slot) => slot.1 = *n,
                    None => model.push((name, *n)),
                }
            }
            let list = list.join(",");
            let got = since_list(&list, max);
            if model.len() > max {
                prop_assert_eq!(got, Err(QueryError::TooManySymbols { max }));
            } else {
                prop_assert_eq!(got, Ok(model));
            }
        }
    }
}
