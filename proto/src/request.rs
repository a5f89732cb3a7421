//! Client requests (section 2), decoded with `simd-json`. Decoding never panics and costs time
//! linear in the frame: anything that is not a valid request becomes a [`DecodeError`], answered
//! with `bad_request`, or with `too_many_subscriptions` when it names more symbols than a
//! session may hold.
//!
//! It must never recurse per nesting level (a frame of 32,768 `[` overflowed the stack and
//! aborted the whole gateway): nesting is checked by a linear scan of the bytes before
//! `simd-json` parses, and the parse is read from simd-json's flat tape, never built into a tree.
//!
//! Decisions where the contract is silent (documented in `docs/protocol.md`):
//! - unknown fields are ignored, so clients can be newer than the server;
//! - a request nested deeper than [`MAX_REQUEST_DEPTH`] is a `bad_request`;
//! - a field given twice counts once, the last one (as `JSON.parse` does);
//! - duplicate symbols in one request count once; `"*"` must stand alone;
//! - more than `max_symbols` distinct names in `symbols` or `resume.seq` is `too_many_subscriptions`,
//!   for unsubscribe too; an ill-formed request is a `bad_request` first;
//! - an `id` is echoed even when the rest of the request is invalid, if the `id` itself is valid.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use simd_json::{Buffers, ErrorType, Node, StaticNode, Tape};

use crate::server::ErrorCode;
use crate::{MAX_ID_LEN, MAX_THROTTLE_MS};

/// Deepest nesting of arrays and objects a request may have. The contract's deepest request is
/// a subscribe with `resume: {"epoch", "seq": {SYM: n}}`, depth 3; 8 leaves room for fields a
/// newer client may add (unknown fields are ignored) while keeping every walk of a request
/// shallow. Checked by a linear scan of the bytes before `simd-json` builds anything.
pub const MAX_REQUEST_DEPTH: usize = 8;

/// Frames up to this size leave their parse buffers in place for the next request. A larger
/// frame gives them back when it is decoded: parsing holds up to 35 bytes per byte of frame
/// (the copy, simd-json's input copy, string buffer and structural indexes, and a 24-byte tape
/// node per structural character; measured in `tests/decode_memory.rs`), and one large request
/// must not make a session hold that for the rest of its life. 512 bytes holds a ping or a
/// subscribe of some 30 symbols, and bounds what a session keeps to about 18 KiB.
pub const SCRATCH_RETAIN_BYTES: usize = 512;

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
        /// The v1.1 `resume` option, when given.
        resume: Option<Resume>,
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

/// A subscribe's `resume` (section 2): the epoch of the client's earlier session and the last
/// `seq` it holds per symbol.
///
/// `seq` is in the order of the request, one entry per name (a name given twice keeps its last
/// value), at most `max_symbols` entries. Names are not checked against `symbols` here: an entry
/// for a symbol the request does not name, or an unknown one, is the session's to ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub epoch: String,
    pub seq: Vec<(String, u64)>,
}

/// A decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: Option<RequestId>,
    pub op: Op,
}

/// Bounds on what one request may name, from the session's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Most distinct names in `symbols` (and in `resume.seq`): the session's
    /// `max_subscriptions`, since a request naming more can never be served whole.
    pub max_symbols: usize,
}

/// Which answer a [`DecodeError`] gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// Not JSON, not an object, too deep, a missing or ill-typed field, an unknown `op`.
    BadRequest,
    /// A well-formed request naming more than [`DecodeLimits::max_symbols`] distinct symbols;
    /// refused before any name is resolved.
    TooManySymbols,
}

impl DecodeErrorKind {
    /// The contract's error code for this kind.
    pub fn code(self) -> ErrorCode {
        match self {
            DecodeErrorKind::BadRequest => ErrorCode::BadRequest,
            DecodeErrorKind::TooManySymbols => ErrorCode::TooManySubscriptions,
        }
    }
}

/// Why a frame is not a request that can be served; answered with the error of its `kind`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// The request's `id`, when it could be read, so the error can echo it.
    pub id: Option<RequestId>,
    pub kind: DecodeErrorKind,
    pub message: Cow<'static, str>,
}

impl DecodeError {
    /// A `bad_request`.
    pub fn bad_request(id: Option<RequestId>, message: impl Into<Cow<'static, str>>) -> Self {
        Self { id, kind: DecodeErrorKind::BadRequest, message: message.into() }
    }

    fn too_many_symbols(id: Option<RequestId>, message: String) -> Self {
        Self { id, kind: DecodeErrorKind::TooManySymbols, message: message.into() }
    }
}

/// What decoding reuses from one request to the next, per session. Empty until the first
/// request; given back after a frame over [`SCRATCH_RETAIN_BYTES`].
#[derive(Default)]
pub struct DecodeScratch {
    parser: Option<Box<Parser>>,
}

/// simd-json parses in place, into buffers and a tape that can be reused.
struct Parser {
    bytes: Vec<u8>,
    buffers: Buffers,
    /// Always empty between calls: [`Tape::reset`] lends it to one frame at a time.
    tape: Tape<'static>,
}

impl DecodeScratch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether parse buffers are held now (for tests of the shrink-back).
    pub fn is_holding_buffers(&self) -> bool {
        self.parser.is_some()
    }
}

/// The answer to a frame nested deeper than [`MAX_REQUEST_DEPTH`].
const TOO_DEEP: &str = "request nests arrays or objects more than 8 levels deep";
const _: () = assert!(MAX_REQUEST_DEPTH == 8, "TOO_DEEP names the depth limit");
const NOT_JSON: &str = "request is not valid JSON";
const SYMBOLS_TYPE: &str = "field symbols must be an array of strings";
const EMPTY_NAME: &str = "a symbol name must not be empty";
const RESUME_TYPE: &str = "field resume must be an object with fields epoch and seq";
const EPOCH_TYPE: &str = "field resume.epoch must be a string";
const SEQ_TYPE: &str = "field resume.seq must be an object of symbol names to unsigned integers";

impl Request {
    /// Decodes one text frame, in time linear in its length. `scratch` is reused between calls
    /// of one session.
    pub fn decode(
        text: &[u8],
        scratch: &mut DecodeScratch,
        limits: DecodeLimits,
    ) -> Result<Request, DecodeError> {
        // Refuse deep nesting before anything is built; simd-json's own depth limit (the same
        // value) is the second line, should this scan and its parser ever disagree.
        if nests_deeper_than(text, MAX_REQUEST_DEPTH) {
            return Err(DecodeError::bad_request(None, TOO_DEEP));
        }
        let parser = scratch.parser.get_or_insert_with(|| {
            Box::new(Parser {
                bytes: Vec::new(),
                buffers: Buffers::with_max_depth(0, MAX_REQUEST_DEPTH),
                tape: Tape(Vec::new()),
            })
        });
        let Parser { bytes, buffers, tape } = &mut **parser;
        bytes.clear();
        bytes.extend_from_slice(text);
        let mut frame_tape = std::mem::replace(tape, Tape(Vec::new())).reset();
        let decoded = match simd_json::fill_tape(bytes, buffers, &mut frame_tape) {
            Ok(()) => decode_tape(&frame_tape.0, limits),
            Err(e) if *e.error() == ErrorType::DepthLimitExceeded => {
                Err(DecodeError::bad_request(None, TOO_DEEP))
            }
            Err(_) => Err(DecodeError::bad_request(None, NOT_JSON)),
        };
        *tape = frame_tape.reset();
        if text.len() > SCRATCH_RETAIN_BYTES {
            scratch.parser = None;
        }
        decoded
    }
}

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

/// One value on simd-json's tape: its head node and every node inside it. The tape is flat, so
/// walking it needs no recursion and skipping a nested value costs nothing.
#[derive(Clone, Copy)]
struct Val<'t, 'i>(&'t [Node<'i>]);

impl<'t, 'i> Val<'t, 'i> {
    /// The value starting at the head of `nodes`, `None` if the tape is cut short (which
    /// simd-json never produces).
    fn first(nodes: &'t [Node<'i>]) -> Option<Self> {
        let span = match nodes.first()? {
            Node::Object { count, .. } | Node::Array { count, .. } => count.checked_add(1)?,
            _ => 1,
        };
        nodes.get(..span).map(Val)
    }

    fn head(self) -> Option<&'t Node<'i>> {
        self.0.first()
    }

    fn as_str(self) -> Option<&'i str> {
        match self.head() {
            Some(Node::String(s)) => Some(s),
            _ => None,
        }
    }

    fn as_bool(self) -> Option<bool> {
        match self.head() {
            Some(Node::Static(StaticNode::Bool(b))) => Some(*b),
            _ => None,
        }
    }

    fn as_u64(self) -> Option<u64> {
        match self.head() {
            Some(Node::Static(StaticNode::U64(n))) => Some(*n),
            Some(Node::Static(StaticNode::I64(n))) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    /// The elements of an array, `None` if this is not one.
    fn elements(self) -> Option<Elements<'t, 'i>> {
        match self.head() {
            Some(Node::Array { len, .. }) => Some(Elements { rest: self.0.get(1..)?, left: *len }),
            _ => None,
        }
    }

    /// The fields of an object in order, `None` if this is not one.
    fn fields(self) -> Option<Fields<'t, 'i>> {
        match self.head() {
            Some(Node::Object { len, .. }) => Some(Fields { rest: self.0.get(1..)?, left: *len }),
            _ => None,
        }
    }
}

struct Elements<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Elements<'t, 'i> {
    type Item = Val<'t, 'i>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let value = Val::first(self.rest)?;
        self.rest = self.rest.get(value.0.len()..)?;
        self.left -= 1;
        Some(value)
    }
}

struct Fields<'t, 'i> {
    rest: &'t [Node<'i>],
    left: usize,
}

impl<'t, 'i> Iterator for Fields<'t, 'i> {
    type Item = (&'i str, Val<'t, 'i>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let (Node::String(key), rest) = self.rest.split_first()? else {
            return None;
        };
        let value = Val::first(rest)?;
        self.rest = rest.get(value.0.len()..)?;
        self.left -= 1;
        Some((key, value))
    }
}

/// The request's known fields, each the last of its name.
#[derive(Default)]
struct KnownFields<'t, 'i> {
    id: Option<Val<'t, 'i>>,
    op: Option<Val<'t, 'i>>,
    symbols: Option<Val<'t, 'i>>,
    snapshot: Option<Val<'t, 'i>>,
    throttle_ms: Option<Val<'t, 'i>>,
    resume: Option<Val<'t, 'i>>,
}

fn decode_tape(tape: &[Node<'_>], limits: DecodeLimits) -> Result<Request, DecodeError> {
    let Some(root) = Val::first(tape) else {
        return Err(DecodeError::bad_request(None, NOT_JSON));
    };
    let Some(fields) = root.fields() else {
        return Err(DecodeError::bad_request(None, "request must be a JSON object"));
    };
    let mut known = KnownFields::default();
    for (key, value) in fields {
        let slot = match key {
            "id" => &mut known.id,
            "op" => &mut known.op,
            "symbols" => &mut known.symbols,
            "snapshot" => &mut known.snapshot,
            "throttle_ms" => &mut known.throttle_ms,
            "resume" => &mut known.resume,
            _ => continue,
        };
        *slot = Some(value);
    }
    let id = match known.id {
        None => None,
        Some(v) => Some(decode_id(v)?),
    };
    let fail = |message: &'static str| DecodeError::bad_request(id.clone(), message);
    let op = match known.op {
        None => return Err(fail("missing field: op")),
        Some(v) => v.as_str().ok_or_else(|| fail("field op must be a string"))?,
    };
    let op = match op {
        "subscribe" => {
            let symbols = decode_symbols(known.symbols, limits).map_err(fail)?;
            let snapshot = match known.snapshot {
                None => true,
                Some(v) => {
                    v.as_bool().ok_or_else(|| fail("field snapshot must be true or false"))?
                }
            };
            let throttle_ms = match known.throttle_ms.map(Val::as_u64) {
                None => 0,
                Some(Some(ms)) if ms <= u64::from(MAX_THROTTLE_MS) => ms as u32,
                Some(_) => {
                    return Err(fail("field throttle_ms must be an integer from 0 to 60000"))
                }
            };
            let resume = match known.resume {
                None => None,
                Some(v) => Some(decode_resume(v, limits).map_err(fail)?),
            };
            // Only a request that is otherwise well formed is refused for its size.
            check_count(&id, "symbols", symbols.over_limit, limits)?;
            if let Some(resume) = &resume {
                check_count(&id, "resume.seq", resume.over_limit, limits)?;
            }
            Op::Subscribe {
                symbols: symbols.symbols,
                snapshot,
                throttle_ms,
                resume: resume.map(|r| r.resume),
            }
        }
        "unsubscribe" => {
            let symbols = decode_symbols(known.symbols, limits).map_err(fail)?;
            check_count(&id, "symbols", symbols.over_limit, limits)?;
            Op::Unsubscribe { symbols: symbols.symbols }
        }
        "ping" => Op::Ping,
        other => {
            let mut shown: String = other.chars().take(32).collect();
            if shown.len() < other.len() {
                shown.push('…');
            }
            return Err(DecodeError::bad_request(id, format!("unknown op: {shown}")));
        }
    };
    Ok(Request { id, op })
}

fn check_count(
    id: &Option<RequestId>,
    field: &str,
    over_limit: bool,
    limits: DecodeLimits,
) -> Result<(), DecodeError> {
    if !over_limit {
        return Ok(());
    }
    let max = limits.max_symbols;
    Err(DecodeError::too_many_symbols(
        id.clone(),
        format!(
            "field {field} names more than {max} symbols, the session limit (max_subscriptions)"
        ),
    ))
}

fn decode_id(v: Val<'_, '_>) -> Result<RequestId, DecodeError> {
    match v.as_str() {
        Some(s) if s.chars().count() <= MAX_ID_LEN => Ok(RequestId::Str(s.to_string())),
        _ => v.as_u64().map(RequestId::Num).ok_or_else(|| {
            DecodeError::bad_request(
                None,
                "field id must be an unsigned integer or a string of at most 64 characters",
            )
        }),
    }
}

struct DecodedSymbols {
    symbols: Symbols,
    /// More than `max_symbols` distinct names: only the first `max_symbols` were kept.
    over_limit: bool,
}

fn decode_symbols(
    v: Option<Val<'_, '_>>,
    limits: DecodeLimits,
) -> Result<DecodedSymbols, &'static str> {
    let Some(v) = v else {
        return Err("missing field: symbols");
    };
    let Some(items) = v.elements() else {
        return Err(SYMBOLS_TYPE);
    };
    if items.left == 0 {
        return Err("field symbols must name at least one symbol");
    }
    // A set, so that de-duplicating costs time linear in the request; it holds at most
    // `max_symbols` names, past which the request is refused anyway.
    let mut seen: HashSet<&str> = HashSet::new();
    let mut names: Vec<String> = Vec::new();
    let (mut star, mut other, mut over_limit) = (false, false, false);
    for item in items {
        let Some(name) = item.as_str() else {
            return Err(SYMBOLS_TYPE);
        };
        if name.is_empty() {
            return Err(EMPTY_NAME);
        }
        if name == "*" {
            star = true;
        } else {
            other = true;
        }
        if over_limit || seen.contains(name) {
            continue;
        }
        if seen.len() == limits.max_symbols {
            over_limit = true;
            continue;
        }
        seen.insert(name);
        names.push(name.to_string());
    }
    if star {
        return if other {
            Err("\"*\" must be the only symbol when present")
        } else {
            Ok(DecodedSymbols { symbols: Symbols::All, over_limit })
        };
    }
    Ok(DecodedSymbols { symbols: Symbols::List(names), over_limit })
}

struct DecodedResume {
    resume: Resume,
    /// More than `max_symbols` distinct names in `seq`.
    over_limit: bool,
}

fn decode_resume(v: Val<'_, '_>, limits: DecodeLimits) -> Result<DecodedResume, &'static str> {
    let Some(fields) = v.fields() else {
        return Err(RESUME_TYPE);
    };
    let (mut epoch, mut seq) = (None, None);
    for (key, value) in fields {
        match key {
            "epoch" => epoch = Some(value),
            "seq" => seq = Some(value),
            _ => {}
        }
    }
    let (Some(epoch), Some(seq)) = (epoch, seq) else {
        return Err(RESUME_TYPE);
    };
    let epoch = epoch.as_str().ok_or(EPOCH_TYPE)?;
    let entries = seq.fields().ok_or(SEQ_TYPE)?;
    // Name → its place in `out`, so that a repeated name costs O(1) and keeps its last value.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut over_limit = false;
    for (name, value) in entries {
        if name.is_empty() {
            return Err(EMPTY_NAME);
        }
        let n = value.as_u64().ok_or(SEQ_TYPE)?;
        if over_limit {
            continue;
        }
        match index.get(name) {
            Some(&at) => {
                if let Some(entry) = out.get_mut(at) {
                    entry.1 = n;
                }
            }
            None if index.len() == limits.max_symbols => over_limit = true,
            None => {
                index.insert(name, out.len());
                out.push((name.to_string(), n));
            }
        }
    }
    Ok(DecodedResume { resume: Resume { epoch: epoch.to_string(), seq: out }, over_limit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: DecodeLimits = DecodeLimits { max_symbols: 1000 };

    fn decode(text: &str) -> Result<Request, DecodeError> {
        Request::decode(text.as_bytes(), &mut DecodeScratch::new(), LIMITS)
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
                    throttle_ms: 0,
                    resume: None,
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
            Op::Subscribe { symbols: Symbols::All, snapshot: true, throttle_ms: 0, resume: None }
        );
        assert_eq!(
            decode(r#"{"op":"subscribe","symbols":["A","A","B"],"snapshot":false,"throttle_ms":250,"extra":1}"#).unwrap().op,
            Op::Subscribe {
                symbols: list(&["A", "B"]),
                snapshot: false,
                throttle_ms: 250,
                resume: None
            }
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

    fn decode_with(text: &str, max_symbols: usize) -> Result<Request, DecodeError> {
        Request::decode(text.as_bytes(), &mut DecodeScratch::new(), DecodeLimits { max_symbols })
    }

    #[test]
    fn nested_unknown_fields_are_skipped_whole() {
        // Values inside values must not be mistaken for the request's own fields.
        let text = r#"{"x":{"op":"dance","symbols":[["B"]]},"op":"subscribe","y":[{"id":9},[1,[2]]],"symbols":["A"],"id":1}"#;
        assert_eq!(
            decode(text),
            Ok(Request {
                id: Some(RequestId::Num(1)),
                op: Op::Subscribe {
                    symbols: list(&["A"]),
                    snapshot: true,
                    throttle_ms: 0,
                    resume: None
                },
            })
        );
    }

    #[test]
    fn a_field_given_twice_counts_as_its_last_value() {
        assert_eq!(
            decode(r#"{"op":"dance","op":"ping","id":1,"id":2}"#).unwrap().id,
            Some(RequestId::Num(2))
        );
        // Also in an object of more than 32 fields, where simd-json itself would de-duplicate.
        let pad: String = (0..40).map(|i| format!(r#""p{i}":{i},"#)).collect();
        let text = format!(r#"{{{pad}"op":"ping","id":"a","id":"b"}}"#);
        assert_eq!(decode(&text).unwrap().id, Some(RequestId::Str("b".into())));
    }

    #[test]
    fn resume_is_decoded_in_order_with_repeated_names_keeping_their_last_seq() {
        let text = r#"{"op":"subscribe","id":4,"symbols":["AAPL","MSFT"],"resume":{"epoch":"7f3a9c","seq":{"AAPL":1041,"MSFT":877,"AAPL":1042},"later":true}}"#;
        assert_eq!(
            decode(text).unwrap().op,
            Op::Subscribe {
                symbols: list(&["AAPL", "MSFT"]),
                snapshot: true,
                throttle_ms: 0,
                resume: Some(Resume {
                    epoch: "7f3a9c".into(),
                    seq: vec![("AAPL".into(), 1042), ("MSFT".into(), 877)],
                }),
            }
        );
        let empty = r#"{"op":"subscribe","symbols":["*"],"resume":{"seq":{},"epoch":""}}"#;
        let Op::Subscribe { resume, .. } = decode(empty).unwrap().op else { panic!("subscribe") };
        assert_eq!(resume, Some(Resume { epoch: String::new(), seq: Vec::new() }));
        // Other ops carry no resume: there it is an unknown field.
        assert_eq!(decode(r#"{"op":"ping","resume":7}"#).unwrap().op, Op::Ping);
    }

    #[test]
    fn an_ill_typed_resume_is_a_bad_request() {
        let cases = [
            (r#""resume":null"#, RESUME_TYPE),
            (r#""resume":[1]"#, RESUME_TYPE),
            (r#""resume":{"seq":{}}"#, RESUME_TYPE),
            (r#""resume":{"epoch":"e"}"#, RESUME_TYPE),
            (r#""resume":{"epoch":7,"seq":{}}"#, EPOCH_TYPE),
            (r#""resume":{"epoch":"e","seq":[]}"#, SEQ_TYPE),
            (r#""resume":{"epoch":"e","seq":{"A":-1}}"#, SEQ_TYPE),
            (r#""resume":{"epoch":"e","seq":{"A":1.5}}"#, SEQ_TYPE),
            (r#""resume":{"epoch":"e","seq":{"A":"1"}}"#, SEQ_TYPE),
            (r#""resume":{"epoch":"e","seq":{"A":1e3}}"#, SEQ_TYPE),
            (r#""resume":{"epoch":"e","seq":{"":1}}"#, EMPTY_NAME),
        ];
        for (field, message) in cases {
            let text = format!(r#"{{"op":"subscribe","id":"r","symbols":["A"],{field}}}"#);
            let err = decode(&text).expect_err(&text);
            assert_eq!(
                (err.id, err.kind, err.message.as_ref()),
                (Some(RequestId::Str("r".into())), DecodeErrorKind::BadRequest, message),
                "{text}"
            );
        }
        let max = decode(
            r#"{"op":"subscribe","symbols":["A"],"resume":{"epoch":"e","seq":{"A":18446744073709551615}}}"#,
        );
        let Op::Subscribe { resume: Some(resume), .. } = max.unwrap().op else { panic!("resume") };
        assert_eq!(resume.seq, vec![("A".to_string(), u64::MAX)]);
    }

    #[test]
    fn more_distinct_names_than_max_symbols_is_too_many_symbols_after_bad_request_checks() {
        let names = |n: usize| (0..n).map(|i| format!(r#""S{i}""#)).collect::<Vec<_>>().join(",");
        // Exactly the limit, with repeats, is fine.
        let at = format!(r#"{{"op":"subscribe","symbols":[{},"S0","S2"]}}"#, names(3));
        let Op::Subscribe { symbols, .. } = decode_with(&at, 3).unwrap().op else { panic!() };
        assert_eq!(symbols, list(&["S0", "S1", "S2"]));
        for op in ["subscribe", "unsubscribe"] {
            let over = format!(r#"{{"op":"{op}","id":5,"symbols":[{}]}}"#, names(4));
            let err = decode_with(&over, 3).expect_err(&over);
            assert_eq!(
                (err.id, err.kind, err.message.as_ref()),
                (
                    Some(RequestId::Num(5)),
                    DecodeErrorKind::TooManySymbols,
                    "field symbols names more than 3 symbols, the session limit (max_subscriptions)"
                )
            );
            assert_eq!(err.kind.code(), ErrorCode::TooManySubscriptions);
        }
        // An ill-formed request is a bad_request first, wherever its fault is.
        let both = format!(r#"{{"op":"subscribe","symbols":[{},7]}}"#, names(4));
        assert_eq!(decode_with(&both, 3).unwrap_err().kind, DecodeErrorKind::BadRequest);
        let both = format!(r#"{{"op":"subscribe","symbols":[{}],"throttle_ms":-1}}"#, names(4));
        assert_eq!(decode_with(&both, 3).unwrap_err().kind, DecodeErrorKind::BadRequest);
        let star = format!(r#"{{"op":"subscribe","symbols":[{},"*"]}}"#, names(4));
        assert_eq!(
            decode_with(&star, 3).unwrap_err().message,
            "\"*\" must be the only symbol when present"
        );
        // `["*"]` names one symbol.
        assert!(decode_with(r#"{"op":"subscribe","symbols":["*","*"]}"#, 1).is_ok());
        // resume.seq is bounded the same way.
        let seq: String = (0..4).map(|i| format!(r#""S{i}":{i}"#)).collect::<Vec<_>>().join(",");
        let text = format!(
            r#"{{"op":"subscribe","symbols":["S0"],"resume":{{"epoch":"e","seq":{{{seq}}}}}}}"#
        );
        let err = decode_with(&text, 3).unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_ref()),
            (
                DecodeErrorKind::TooManySymbols,
                "field resume.seq names more than 3 symbols, the session limit (max_subscriptions)"
            )
        );
        assert!(decode_with(&text, 4).is_ok());
    }

    #[test]
    fn a_large_frame_gives_its_parse_buffers_back() {
        let mut scratch = DecodeScratch::new();
        assert!(!scratch.is_holding_buffers());
        let small = br#"{"op":"ping"}"#;
        assert!(Request::decode(small, &mut scratch, LIMITS).is_ok());
        assert!(scratch.is_holding_buffers());
        let large = format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(SCRATCH_RETAIN_BYTES));
        assert!(Request::decode(large.as_bytes(), &mut scratch, LIMITS).is_ok());
        assert!(!scratch.is_holding_buffers());
        // And the scratch still works afterwards, also after an invalid frame.
        assert!(Request::decode(b"[", &mut scratch, LIMITS).is_err());
        assert!(Request::decode(small, &mut scratch, LIMITS).is_ok());
    }

    proptest! {
        /// Arbitrary bytes never panic the decoder (for frames up to `max_message_bytes`, and
        /// the exact answers, see `tests/request_props.rs`).
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Request::decode(&bytes, &mut DecodeScratch::new(), LIMITS);
        }
    }
}

/// The `id` of a request, read without decoding the rest: for answering a request that is
/// refused before it is decoded (`rate_limited`). One pass over the top-level object, no
/// recursion, no allocation but the id itself; anything unexpected gives `None`.
pub fn peek_id(text: &[u8]) -> Option<RequestId> {
    let mut i = skip_ws(text, 0);
    if text.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(text, i);
        if text.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(text, i)?;
        let key = &text[i + 1..key_end - 1];
        i = skip_ws(text, key_end);
        if text.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(text, i + 1);
        let value_end = value_end(text, i)?;
        if key == b"id" {
            // The id alone is at most a 64-character string: never a deep value.
            let mut scratch = text[i..value_end].to_vec();
            let tape = simd_json::to_tape(&mut scratch).ok()?;
            return decode_id(Val::first(&tape.0)?).ok();
        }
        i = skip_ws(text, value_end);
        match text.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while text.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The index just past the string starting at `i` (a `"`).
fn string_end(text: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while let Some(&b) = text.get(i) {
        match b {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the JSON value starting at `i`, skipping nested values by counting
/// brackets (no recursion).
fn value_end(text: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    loop {
        match *text.get(i)? {
            b'"' => i = string_end(text, i)?,
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                if depth == 0 {
                    return Some(i);
                }
                depth -= 1;
                i += 1;
            }
            b',' if depth == 0 => return Some(i),
            _ => i += 1,
        }
        if depth == 0 && text.get(i).is_none_or(|&b| matches!(b, b',' | b'}' | b']')) {
            return Some(i);
        }
    }
}

#[cfg(test)]
mod peek_tests {
    use super::*;

    #[test]
    fn reads_only_the_id() {
        let id = |t: &str| peek_id(t.as_bytes());
        assert_eq!(id(r#"{"op":"ping","id":3}"#), Some(RequestId::Num(3)));
        assert_eq!(
            id(r#"{"symbols":[["x"],{"id":1}],"id" : "a\"b"}"#),
            Some(RequestId::Str("a\"b".into()))
        );
        assert_eq!(id(r#"{"op":"ping"}"#), None);
        assert_eq!(id(r#"{"id":-1}"#), None);
        assert_eq!(id(r#"[{"id":1}]"#), None);
        assert_eq!(id("not json"), None);
        let deep = format!("{{\"x\":{}{}, \"id\":7}}", "[".repeat(30_000), "]".repeat(30_000));
        assert_eq!(id(&deep), Some(RequestId::Num(7)));
    }
}
