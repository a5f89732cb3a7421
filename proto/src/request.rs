//! Client requests (section 2), decoded with `simd-json`. Decoding never panics: anything
//! that is not a valid request becomes a [`DecodeError`], answered with `bad_request`.
//!
//! Decisions where the contract is silent (documented in `docs/protocol.md`):
//! - unknown fields are ignored, so clients can be newer than the server;
//! - duplicate symbols in one request count once; `"*"` must stand alone;
//! - an `id` is echoed even when the rest of the request is invalid, if the `id` itself is valid.

use std::borrow::Cow;

use simd_json::{BorrowedValue as Value, StaticNode};

use crate::{MAX_ID_LEN, MAX_THROTTLE_MS};

/// Deepest nesting of arrays and objects a request may have. The contract's deepest request is
/// a subscribe with `resume: {"epoch", "seq": {SYM: n}}`, depth 3; 8 leaves room for fields a
/// newer client may add (unknown fields are ignored) while keeping every walk of a request
/// shallow. Checked by a linear scan of the bytes before `simd-json` builds anything.
pub const MAX_REQUEST_DEPTH: usize = 8;

/// The optional `id` a request carries, echoed in its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestId {
    Num(u64),
    Str(String),
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `symbols` is non-empty and duplicate-free; `["*"]` is [`Symbols::All`].
    Subscribe {
        symbols: Symbols,
        snapshot: bool,
        throttle_ms: u32,
    },
    Unsubscribe {
        symbols: Symbols,
    },
    Ping,
}

/// The symbols a subscribe or unsubscribe names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Symbols {
    All,
    List(Vec<String>),
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: Option<RequestId>,
    pub op: Op,
}

/// Why a frame is not a valid request; answered with a `bad_request` error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The request's `id`, when it could be read, so the error can echo it.
    pub id: Option<RequestId>,
    pub message: Cow<'static, str>,
}

impl DecodeError {
    fn new(id: Option<RequestId>, message: impl Into<Cow<'static, str>>) -> Self {
        Self { id, message: message.into() }
    }
}

impl Request {
    /// Decodes one text frame. `scratch` is reused between calls: `simd-json` parses in place.
    pub fn decode(text: &[u8], scratch: &mut Vec<u8>) -> Result<Request, DecodeError> {
        // Building and dropping a `simd-json` value recurses once per nesting level: a frame of
        // 32,768 `[` then as many `]` overflowed the stack and aborted the process. Refuse deep
        // nesting before anything recurses; simd-json's own depth limit is the second line.
        if nests_deeper_than(text, MAX_REQUEST_DEPTH) {
            return Err(DecodeError::new(None, TOO_DEEP));
        }
        scratch.clear();
        scratch.extend_from_slice(text);
        let mut buffers = simd_json::Buffers::with_max_depth(text.len(), MAX_REQUEST_DEPTH);
        let value = simd_json::to_borrowed_value_with_buffers(scratch, &mut buffers)
            .map_err(|_| DecodeError::new(None, "request is not valid JSON"))?;
        let Value::Object(fields) = &value else {
            return Err(DecodeError::new(None, "request must be a JSON object"));
        };
        let id = match fields.get("id") {
            None => None,
            Some(v) => Some(decode_id(v)?),
        };
        let fail = |message: &'static str| DecodeError::new(id.clone(), message);
        let op = match fields.get("op") {
            None => return Err(fail("missing field: op")),
            Some(Value::String(op)) => op,
            Some(_) => return Err(fail("field op must be a string")),
        };
        let op = match op.as_ref() {
            "subscribe" => {
                let symbols = decode_symbols(fields.get("symbols")).map_err(fail)?;
                let snapshot = match fields.get("snapshot") {
                    None => true,
                    Some(Value::Static(StaticNode::Bool(b))) => *b,
                    Some(_) => return Err(fail("field snapshot must be true or false")),
                };
                let throttle_ms = match fields.get("throttle_ms") {
                    None => 0,
                    Some(v) => match as_u64(v) {
                        Some(ms) if ms <= u64::from(MAX_THROTTLE_MS) => ms as u32,
                        _ => {
                            return Err(fail(
                                "field throttle_ms must be an integer from 0 to 60000",
                            ))
                        }
                    },
                };
                Op::Subscribe { symbols, snapshot, throttle_ms }
            }
            "unsubscribe" => {
                Op::Unsubscribe { symbols: decode_symbols(fields.get("symbols")).map_err(fail)? }
            }
            "ping" => Op::Ping,
            other => {
                let mut shown: String = other.chars().take(32).collect();
                if shown.len() < other.len() {
                    shown.push('…');
                }
                return Err(DecodeError::new(id, format!("unknown op: {shown}")));
            }
        };
        Ok(Request { id, op })
    }
}

/// The answer to a frame nested deeper than [`MAX_REQUEST_DEPTH`].
const TOO_DEEP: &str = "request nests arrays or objects more than 8 levels deep";

/// Whether `text` opens more than `max` arrays or objects at once, counting only brackets
/// outside JSON strings (a `\"` inside a string does not end it). One pass, no allocation; for
/// a frame that is not JSON the answer is still well defined, and either answer is a
/// `bad_request`.
fn nests_deeper_than(text: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in text {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Static(StaticNode::U64(n)) => Some(*n),
        Value::Static(StaticNode::I64(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn decode_id(v: &Value) -> Result<RequestId, DecodeError> {
    match v {
        Value::String(s) if s.chars().count() <= MAX_ID_LEN => Ok(RequestId::Str(s.to_string())),
        v => as_u64(v).map(RequestId::Num).ok_or_else(|| {
            DecodeError::new(
                None,
                "field id must be an unsigned integer or a string of at most 64 characters",
            )
        }),
    }
}

fn decode_symbols(v: Option<&Value>) -> Result<Symbols, &'static str> {
    let Some(v) = v else {
        return Err("missing field: symbols");
    };
    let Value::Array(items) = v else {
        return Err("field symbols must be an array of strings");
    };
    if items.is_empty() {
        return Err("field symbols must name at least one symbol");
    }
    let mut names: Vec<String> = Vec::with_capacity(items.len());
    for item in items.iter() {
        let Value::String(name) = item else {
            return Err("field symbols must be an array of strings");
        };
        if name.is_empty() {
            return Err("a symbol name must not be empty");
        }
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    if names.iter().any(|n| n == "*") {
        return if names.len() == 1 {
            Ok(Symbols::All)
        } else {
            Err("\"*\" must be the only symbol when present")
        };
    }
    Ok(Symbols::List(names))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode(text: &str) -> Result<Request, DecodeError> {
        Request::decode(text.as_bytes(), &mut Vec::new())
    }

    fn list(names: &[&str]) -> Symbols {
        Symbols::List(names.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn decodes_the_contract_examples() {
        assert_eq!(
            decode(
                r#"{"op":"subscribe","id":1,"symbols":["AAPL","MSFT"],"snapshot":true,"throttle_ms":0}"#
            ),
            Ok(Request {
                id: Some(RequestId::Num(1)),
                op: Op::Subscribe {
                    symbols: list(&["AAPL", "MSFT"]),
                    snapshot: true,
                    throttle_ms: 0
                },
            })
        );
        assert_eq!(
            decode(r#"{"op":"unsubscribe","id":2,"symbols":["MSFT"]}"#),
            Ok(Request {
                id: Some(RequestId::Num(2)),
                op: Op::Unsubscribe { symbols: list(&["MSFT"]) }
            })
        );
        assert_eq!(
            decode(r#"{"op":"ping","id":"x-3"}"#),
            Ok(Request { id: Some(RequestId::Str("x-3".into())), op: Op::Ping })
        );
    }

    #[test]
    fn defaults_star_and_duplicates() {
        assert_eq!(
            decode(r#"{"op":"subscribe","symbols":["*"]}"#).unwrap().op,
            Op::Subscribe { symbols: Symbols::All, snapshot: true, throttle_ms: 0 }
        );
        assert_eq!(
            decode(r#"{"op":"subscribe","symbols":["A","A","B"],"snapshot":false,"throttle_ms":250,"extra":1}"#).unwrap().op,
            Op::Subscribe { symbols: list(&["A", "B"]), snapshot: false, throttle_ms: 250 }
        );
    }

    #[test]
    fn invalid_requests_are_errors_that_keep_a_valid_id() {
        let cases = [
            ("nope", None, "request is not valid JSON"),
            ("[1]", None, "request must be a JSON object"),
            (r#"{"id":7}"#, Some(RequestId::Num(7)), "missing field: op"),
            (r#"{"id":7,"op":"dance"}"#, Some(RequestId::Num(7)), "unknown op: dance"),
            (r#"{"op":5}"#, None, "field op must be a string"),
            (r#"{"op":"subscribe"}"#, None, "missing field: symbols"),
            (
                r#"{"op":"subscribe","symbols":[]}"#,
                None,
                "field symbols must name at least one symbol",
            ),
            (
                r#"{"op":"subscribe","symbols":"AAPL"}"#,
                None,
                "field symbols must be an array of strings",
            ),
            (
                r#"{"op":"subscribe","symbols":[1]}"#,
                None,
                "field symbols must be an array of strings",
            ),
            (
                r#"{"op":"subscribe","symbols":["*","A"]}"#,
                None,
                "\"*\" must be the only symbol when present",
            ),
            (
                r#"{"op":"subscribe","symbols":["A"],"throttle_ms":60001}"#,
                None,
                "field throttle_ms must be an integer from 0 to 60000",
            ),
            (
                r#"{"op":"subscribe","symbols":["A"],"throttle_ms":-1}"#,
                None,
                "field throttle_ms must be an integer from 0 to 60000",
            ),
            (
                r#"{"op":"subscribe","symbols":["A"],"snapshot":1}"#,
                None,
                "field snapshot must be true or false",
            ),
            (
                r#"{"op":"ping","id":-1}"#,
                None,
                "field id must be an unsigned integer or a string of at most 64 characters",
            ),
            (
                r#"{"op":"ping","id":1.5}"#,
                None,
                "field id must be an unsigned integer or a string of at most 64 characters",
            ),
        ];
        for (text, id, message) in cases {
            let err = decode(text).expect_err(text);
            assert_eq!((err.id, err.message.as_ref()), (id, message), "{text}");
        }
        let long_id = format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(65));
        assert!(decode(&long_id).is_err());
        // The limit counts characters, not bytes.
        let wide_id = format!(r#"{{"op":"ping","id":"{}"}}"#, "é".repeat(64));
        assert_eq!(decode(&wide_id).unwrap().id, Some(RequestId::Str("é".repeat(64))));
    }

    #[test]
    fn a_frame_of_32768_nested_arrays_is_a_bad_request_not_a_stack_overflow() {
        let frame = format!("{}{}", "[".repeat(32_768), "]".repeat(32_768));
        assert_eq!(frame.len(), 65_536);
        let err = decode(&frame).expect_err("too deep");
        assert_eq!((err.id, err.message.as_ref()), (None, TOO_DEEP));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(13_000), "}".repeat(13_000));
        assert_eq!(decode(&objects).expect_err("too deep").message, TOO_DEEP);
        // Exactly the limit is fine; brackets inside strings do not count.
        let at_limit = format!(
            r#"{{"op":"ping","x":{}1{},"y":"[[[[[[[[[[\"[[[["}}"#,
            "[".repeat(MAX_REQUEST_DEPTH - 1),
            "]".repeat(MAX_REQUEST_DEPTH - 1)
        );
        assert_eq!(decode(&at_limit).map(|r| r.op), Ok(Op::Ping));
        let over = format!(
            r#"{{"op":"ping","x":{}1{}}}"#,
            "[".repeat(MAX_REQUEST_DEPTH),
            "]".repeat(MAX_REQUEST_DEPTH)
        );
        assert_eq!(decode(&over).expect_err("too deep").message, TOO_DEEP);
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Request::decode(&bytes, &mut Vec::new());
        }
    }
}
