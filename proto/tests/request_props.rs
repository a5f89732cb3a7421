//! Property tests of request decoding at the sizes the gateway accepts: frames up to
//! `max_message_bytes` (65,536 bytes by default) with deep nesting, arrays of 10,000 elements,
//! long strings, and every JSON type in every field.
//!
//! Each case is checked against an oracle written from the contract (section 2) and the
//! decisions in `docs/protocol.md`, not from the decoder: the generators build a request as
//! values, the oracle evaluates those values, and only the decoder sees the bytes. Deeply nested
//! frames are built as text whose depth is known by construction (a `serde_json::Value` that deep
//! would itself overflow the stack when dropped). Must never need a network or a gateway.

use std::collections::HashSet;

use proptest::prelude::*;
use proto::{
    DecodeErrorKind, DecodeLimits, DecodeScratch, Op, Request, RequestId, Resume, Symbols,
    MAX_REQUEST_DEPTH,
};
use serde_json::{Map, Value};

/// The gateway's default `max_message_bytes`: the largest frame a request can be.
const MAX_MESSAGE_BYTES: usize = 65_536;
/// The gateway's default `max_subscriptions`, the decoder's `max_symbols`.
const MAX_SYMBOLS: usize = 1_000;

// The contract's answers, written out here so that a changed message fails a test.
const TOO_DEEP: &str = "request nests arrays or objects more than 8 levels deep";
const NOT_JSON: &str = "request is not valid JSON";
const NOT_OBJECT: &str = "request must be a JSON object";
const BAD_ID: &str = "field id must be an unsigned integer or a string of at most 64 characters";
const NO_OP: &str = "missing field: op";
const OP_TYPE: &str = "field op must be a string";
const NO_SYMBOLS: &str = "missing field: symbols";
const SYMBOLS_TYPE: &str = "field symbols must be an array of strings";
const NO_SYMBOL: &str = "field symbols must name at least one symbol";
const EMPTY_NAME: &str = "a symbol name must not be empty";
const STAR_ALONE: &str = "\"*\" must be the only symbol when present";
const SNAPSHOT_TYPE: &str = "field snapshot must be true or false";
const THROTTLE_TYPE: &str = "field throttle_ms must be an integer from 0 to 60000";
const RESUME_TYPE: &str = "field resume must be an object with fields epoch and seq";
const EPOCH_TYPE: &str = "field resume.epoch must be a string";
const SEQ_TYPE: &str = "field resume.seq must be an object of symbol names to unsigned integers";

fn too_many(field: &str, max: usize) -> String {
    format!("field {field} names more than {max} symbols, the session limit (max_subscriptions)")
}

/// A decode's outcome in comparable form: the request, or (echoed id, kind, message).
type Outcome = Result<Request, (Option<RequestId>, DecodeErrorKind, String)>;

fn bad(id: Option<RequestId>, message: impl Into<String>) -> Outcome {
    Err((id, DecodeErrorKind::BadRequest, message.into()))
}

fn decode(text: &str, max_symbols: usize) -> Outcome {
    Request::decode(text.as_bytes(), &mut DecodeScratch::new(), DecodeLimits { max_symbols })
        .map_err(|e| (e.id, e.kind, e.message.into_owned()))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---- The oracle.

/// Nesting depth of a value: 0 for a scalar, 1 for `[]` or `{}`.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(fields) => 1 + fields.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// What the contract says a request object with these fields, in this order, must get.
fn oracle(fields: &[(String, Value)], max: usize) -> Outcome {
    if 1 + fields.iter().map(|(_, v)| depth(v)).max().unwrap_or(0) > MAX_REQUEST_DEPTH {
        return bad(None, TOO_DEEP);
    }
    // A field given twice counts as its last value.
    let field = |name: &str| fields.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v);
    let id = match field("id") {
        None => None,
        Some(Value::String(s)) if s.chars().count() <= 64 => Some(RequestId::Str(s.clone())),
        Some(v) => match v.as_u64() {
            Some(n) => Some(RequestId::Num(n)),
            None => return bad(None, BAD_ID),
        },
    };
    let op = match field("op") {
        None => return bad(id, NO_OP),
        Some(Value::String(op)) => op.as_str(),
        Some(_) => return bad(id, OP_TYPE),
    };
    let op = match op {
        "ping" => Op::Ping,
        "unsubscribe" => {
            let (symbols, distinct) = match oracle_symbols(field("symbols")) {
                Ok(s) => s,
                Err(m) => return bad(id, m),
            };
            if distinct > max {
                return Err((id, DecodeErrorKind::TooManySymbols, too_many("symbols", max)));
            }
            Op::Unsubscribe { symbols }
        }
        "subscribe" => {
            let (symbols, distinct) = match oracle_symbols(field("symbols")) {
                Ok(s) => s,
                Err(m) => return bad(id, m),
            };
            let snapshot = match field("snapshot") {
                None => true,
                Some(Value::Bool(b)) => *b,
                Some(_) => return bad(id, SNAPSHOT_TYPE),
            };
            let throttle_ms = match field("throttle_ms").map(Value::as_u64) {
                None => 0,
                Some(Some(ms)) if ms <= 60_000 => ms as u32,
                Some(_) => return bad(id, THROTTLE_TYPE),
            };
            let resume = match field("resume").map(oracle_resume) {
                None => None,
                Some(Ok(resume)) => Some(resume),
                Some(Err(m)) => return bad(id, m),
            };
            if distinct > max {
                return Err((id, DecodeErrorKind::TooManySymbols, too_many("symbols", max)));
            }
            if resume.as_ref().is_some_and(|r| r.seq.len() > max) {
                return Err((id, DecodeErrorKind::TooManySymbols, too_many("resume.seq", max)));
            }
            Op::Subscribe { symbols, snapshot, throttle_ms, resume }
        }
        other => {
            let shown = if other.chars().count() > 32 {
                format!("{}…", other.chars().take(32).collect::<String>())
            } else {
                other.to_string()
            };
            return bad(id, format!("unknown op: {shown}"));
        }
    };
    Ok(Request { id, op })
}

/// `symbols` per section 2 and the decisions: the names once each, in order, and how many.
fn oracle_symbols(v: Option<&Value>) -> Result<(Symbols, usize), &'static str> {
    let Some(v) = v else { return Err(NO_SYMBOLS) };
    let Value::Array(items) = v else { return Err(SYMBOLS_TYPE) };
    if items.is_empty() {
        return Err(NO_SYMBOL);
    }
    let mut names = Vec::new();
    for item in items {
        match item {
            Value::String(s) if s.is_empty() => return Err(EMPTY_NAME),
            Value::String(s) => names.push(s.as_str()),
            _ => return Err(SYMBOLS_TYPE),
        }
    }
    let mut seen = HashSet::new();
    let unique: Vec<String> =
        names.iter().filter(|n| seen.insert(**n)).map(|n| n.to_string()).collect();
    match (seen.contains("*"), unique.len()) {
        (true, 1) => Ok((Symbols::All, 1)),
        (true, _) => Err(STAR_ALONE),
        (false, n) => Ok((Symbols::List(unique), n)),
    }
}

fn oracle_resume(v: &Value) -> Result<Resume, &'static str> {
    let Value::Object(fields) = v else { return Err(RESUME_TYPE) };
    let (Some(epoch), Some(seq)) = (fields.get("epoch"), fields.get("seq")) else {
        return Err(RESUME_TYPE);
    };
    let Value::String(epoch) = epoch else { return Err(EPOCH_TYPE) };
    let Value::Object(seq) = seq else { return Err(SEQ_TYPE) };
    let mut entries = Vec::new();
    for (name, n) in seq {
        if name.is_empty() {
            return Err(EMPTY_NAME);
        }
        entries.push((name.clone(), n.as_u64().ok_or(SEQ_TYPE)?));
    }
    Ok(Resume { epoch: epoch.clone(), seq: entries })
}

// ---- Generators.

/// Characters that trouble a scanner: brackets and quotes inside strings, escapes, non-ASCII,
/// control characters.
fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('['),
            Just(']'),
            Just('{'),
            Just('}'),
            Just('"'),
            Just('\\'),
            Just(':'),
            Just(','),
            Just('a'),
            Just('Z'),
            Just('é'),
            Just('😀'),
            Just('\n'),
            Just('\u{1}'),
            Just(' '),
        ],
        0..=max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

/// A JSON scalar of any type: null, boolean, negative, unsigned (up to `u64::MAX`), fractional
/// or integral floats, strings.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (i64::MIN..0).prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..70_000).prop_map(Value::from),
        Just(Value::from(60_001)),
        any::<f64>()
            .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        (0u32..70_000).prop_map(|n| Value::from(f64::from(n))),
        tricky_string(12).prop_map(Value::String),
    ]
}

/// A JSON value of any type, nested at most 4 deep.
fn any_json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((tricky_string(6), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A value nested exactly `levels` deep (arrays and objects mixed), around a scalar.
fn nested(levels: usize, objects: u32, leaf: Value) -> Value {
    (0..levels).fold(leaf, |inner, level| {
        if objects >> (level % 32) & 1 == 1 {
            Value::Object(Map::from_iter([("k".to_string(), inner)]))
        } else {
            Value::Array(vec![inner])
        }
    })
}

/// Values that may be too deep for a request: 1 to 12 levels.
fn deep_json() -> impl Strategy<Value = Value> {
    (1usize..=12, any::<u32>(), scalar())
        .prop_map(|(levels, objects, leaf)| nested(levels, objects, leaf))
}

/// Large values, each alone well within `max_message_bytes`: arrays of up to 10,000 elements,
/// strings of up to 60,000 bytes, objects of up to 2,000 fields.
///
/// Built from a seed rather than element by element: proptest's per-element value trees make
/// 10,000 elements cost seconds in a debug build.
fn big_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0usize..=10_000, any::<u64>()).prop_map(|(n, seed)| {
            Value::Array((0..n).map(|i| small_scalar(mix(seed ^ i as u64))).collect())
        }),
        (0usize..=2_000, any::<u64>()).prop_map(|(n, seed)| {
            let row = |i: usize| {
                let h = mix(seed ^ i as u64);
                Value::Array((0..h % 3).map(|j| small_scalar(mix(h ^ j))).collect())
            };
            Value::Array((0..n).map(row).collect())
        }),
        (tricky_string(40), 0usize..=1_500)
            .prop_map(|(chunk, n)| Value::String(chunk.repeat(n).chars().take(30_000).collect())),
        (0usize..=2_000, any::<u64>()).prop_map(|(n, seed)| {
            Value::Object(
                (0..n).map(|i| (format!("k{i}"), small_scalar(mix(seed ^ i as u64)))).collect(),
            )
        }),
    ]
}

/// SplitMix64: a well-mixed hash of `x`, to derive many values from one seed.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A scalar of any JSON type, written in a few bytes, chosen by `h`.
fn small_scalar(h: u64) -> Value {
    match h % 8 {
        0 => Value::Null,
        1 => Value::Bool(h & 8 != 0),
        2 => Value::from(-((h >> 8) as i64 % 100)),
        3 => Value::from((h >> 8) % 1_000),
        4 => Value::from(((h >> 8) % 100) as f64 / 4.0),
        5 => Value::from(["[", "\"", "é", "", "*"][(h >> 8) as usize % 5]),
        6 => Value::Array(Vec::new()),
        _ => Value::Object(Map::new()),
    }
}

/// A symbol name from a pool of 1,332 short ones (so 10,000 of them fit in a frame, and
/// distinct counts fall both sides of `max_symbols`).
fn pool_name(i: usize) -> String {
    const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let i = i % 1_332;
    if i < 36 {
        (DIGITS[i] as char).to_string()
    } else {
        let j = i - 36;
        format!("{}{}", DIGITS[j / 36] as char, DIGITS[j % 36] as char)
    }
}

fn valid_symbols() -> impl Strategy<Value = Value> {
    let names = |max: usize| {
        proptest::collection::vec(0usize..1_332, 1..=max).prop_map(|ids| {
            Value::Array(ids.into_iter().map(|i| Value::from(pool_name(i))).collect())
        })
    };
    // Up to 10,000 names from a seed (see `big_json`), from a pool of `spread` names.
    let many = (1usize..=10_000, 1usize..=1_332, any::<u64>()).prop_map(|(n, spread, seed)| {
        Value::Array(
            (0..n)
                .map(|i| Value::from(pool_name(mix(seed ^ i as u64) as usize % spread)))
                .collect(),
        )
    });
    prop_oneof![
        4 => names(6),
        1 => Just(Value::Array(vec![Value::from("*")])),
        1 => many,
        1 => (900usize..=1_100).prop_map(|n| Value::Array((0..n).map(|i| Value::from(pool_name(i))).collect())),
    ]
}

fn valid_id() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        tricky_string(64).prop_map(Value::String),
        "[a-zé]{60,64}".prop_map(Value::String),
    ]
}

fn valid_resume() -> impl Strategy<Value = Value> {
    let seq = prop_oneof![
        4 => proptest::collection::vec((0usize..1_332, any::<u64>()), 0..6),
        1 => (900usize..=1_200, any::<u64>()).prop_map(|(n, seed)| {
            (0..n).map(|i| (i, mix(seed ^ i as u64) % 1_000_000)).collect()
        }),
    ];
    (tricky_string(16), seq).prop_map(|(epoch, seq)| {
        let seq: Map<String, Value> =
            seq.into_iter().map(|(i, n)| (pool_name(i), Value::from(n))).collect();
        Value::Object(Map::from_iter([
            ("epoch".to_string(), Value::String(epoch)),
            ("seq".to_string(), Value::Object(seq)),
        ]))
    })
}

/// A valid request of any op, as fields in order.
fn valid_request() -> impl Strategy<Value = Vec<(String, Value)>> {
    (
        prop_oneof![
            3 => Just("subscribe"),
            2 => Just("unsubscribe"),
            1 => Just("ping"),
        ],
        prop::option::of(valid_id()),
        valid_symbols(),
        prop::option::of(any::<bool>()),
        prop::option::of(prop_oneof![0u64..=60_000, Just(0), Just(60_000)]),
        prop::option::weighted(0.5, valid_resume()),
        any::<u64>(),
    )
        .prop_map(|(op, id, symbols, snapshot, throttle, resume, order)| {
            let mut fields = vec![("op".to_string(), Value::from(op))];
            if let Some(id) = id {
                fields.push(("id".into(), id));
            }
            if op != "ping" {
                fields.push(("symbols".into(), symbols));
            }
            if op == "subscribe" {
                if let Some(b) = snapshot {
                    fields.push(("snapshot".into(), Value::Bool(b)));
                }
                if let Some(ms) = throttle {
                    fields.push(("throttle_ms".into(), Value::from(ms)));
                }
                if let Some(resume) = resume {
                    fields.push(("resume".into(), resume));
                }
            }
            // Any order of fields.
            let n = fields.len();
            for i in (1..n).rev() {
                fields.swap(i, (order >> (i * 3)) as usize % (i + 1));
            }
            fields
        })
}

/// One change to a request: a field (or a part of one) given another value of any type,
/// removed, given twice, or joined by an unknown field.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(&'static str, Value),
    SymbolItem(usize, Value),
    Epoch(Value),
    Seq(Value),
    SeqValue(usize, Value),
    Remove(&'static str),
    Twice(&'static str, Value, bool),
    Unknown(String, Value),
    UnknownOp(String),
}

const FIELDS: [&str; 6] = ["id", "op", "symbols", "snapshot", "throttle_ms", "resume"];

fn mutation() -> impl Strategy<Value = Mutation> {
    let value = || prop_oneof![6 => any_json(), 2 => deep_json(), 1 => big_json()];
    let field = || proptest::sample::select(&FIELDS[..]);
    prop_oneof![
        6 => (field(), value()).prop_map(|(f, v)| Mutation::Replace(f, v)),
        3 => (any::<usize>(), value()).prop_map(|(i, v)| Mutation::SymbolItem(i, v)),
        1 => value().prop_map(Mutation::Epoch),
        1 => value().prop_map(Mutation::Seq),
        2 => (any::<usize>(), value()).prop_map(|(i, v)| Mutation::SeqValue(i, v)),
        2 => field().prop_map(Mutation::Remove),
        2 => (field(), value(), any::<bool>()).prop_map(|(f, v, after)| Mutation::Twice(f, v, after)),
        3 => (tricky_string(10), value()).prop_map(|(k, v)| Mutation::Unknown(k, v)),
        1 => tricky_string(80).prop_map(Mutation::UnknownOp),
    ]
}

/// The last field of this name (the one that counts).
fn get<'a>(fields: &'a mut [(String, Value)], name: &str) -> Option<&'a mut Value> {
    fields.iter_mut().rev().find(|(k, _)| k == name).map(|(_, v)| v)
}

fn apply(fields: &mut Vec<(String, Value)>, m: Mutation) {
    match m {
        Mutation::Replace(name, v) => match get(fields, name) {
            Some(slot) => *slot = v,
            None => fields.push((name.to_string(), v)),
        },
        Mutation::SymbolItem(i, v) => {
            if let Some(Value::Array(items)) = get(fields, "symbols") {
                let at = i % items.len().max(1);
                if items.is_empty() {
                    items.push(v);
                } else {
                    items[at] = v;
                }
            }
        }
        Mutation::Epoch(v) => {
            if let Some(Value::Object(resume)) = get(fields, "resume") {
                resume.insert("epoch".into(), v);
            }
        }
        Mutation::Seq(v) => {
            if let Some(Value::Object(resume)) = get(fields, "resume") {
                resume.insert("seq".into(), v);
            }
        }
        Mutation::SeqValue(i, v) => {
            if let Some(Value::Object(resume)) = get(fields, "resume") {
                if let Some(Value::Object(seq)) = resume.get_mut("seq") {
                    let n = seq.len();
                    if let Some((_, slot)) = seq.iter_mut().nth(i % n.max(1)) {
                        *slot = v;
                    }
                }
            }
        }
        Mutation::Remove(name) => fields.retain(|(k, _)| k != name),
        Mutation::Twice(name, v, after) => {
            let pair = (name.to_string(), v);
            if after {
                fields.push(pair);
            } else {
                fields.insert(0, pair);
            }
        }
        Mutation::Unknown(key, v) => {
            if !FIELDS.contains(&key.as_str()) {
                fields.push((key, v));
            }
        }
        Mutation::UnknownOp(op) => {
            if let Some(slot) = get(fields, "op") {
                *slot = Value::String(op);
            }
        }
    }
}

/// The request as one frame: fields in the given order (repeats kept), separated by a
/// little whitespace or none.
fn frame(fields: &[(String, Value)], spaced: bool) -> String {
    let sep = if spaced { " \n\t" } else { "" };
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{}{sep}:{sep}{}", Value::String(k.clone()), v))
        .collect();
    format!("{sep}{{{sep}{}{sep}}}{sep}", body.join(&format!("{sep},{sep}")))
}

// ---- The properties.

proptest! {
    #![proptest_config(config(256))]

    /// A valid request, changed in up to three ways (any field to any JSON type, parts of
    /// fields, repeats, unknown fields up to 10,000 elements or 30,000 characters): the decoder
    /// gives exactly the contract's answer.
    #[test]
    fn every_request_gets_exactly_the_contract_answer(
        mut fields in valid_request(),
        mutations in proptest::collection::vec(mutation(), 0..=3),
        spaced in any::<bool>(),
        max in prop_oneof![4 => Just(MAX_SYMBOLS), 1 => 0usize..8],
    ) {
        for m in mutations {
            apply(&mut fields, m);
        }
        let text = frame(&fields, spaced);
        prop_assert_eq!(decode(&text, max), oracle(&fields, max), "{}", text);
    }
}

proptest! {
    #![proptest_config(config(32))]

    /// Frames of exactly `max_message_bytes` built from large parts: still the exact answer.
    #[test]
    fn a_request_padded_to_max_message_bytes_gets_the_contract_answer(
        mut fields in valid_request(),
        m in mutation(),
        pad in tricky_string(8),
    ) {
        apply(&mut fields, m);
        let base = frame(&fields, false).len();
        // `"pad":""`, and the comma before it.
        let bare = r#""pad":"""#.len() + usize::from(!fields.is_empty());
        prop_assume!(base + bare <= MAX_MESSAGE_BYTES);
        // Pad with a string field of the exact length (each character written as one byte).
        let room = MAX_MESSAGE_BYTES - base - bare;
        let filler: String =
            pad.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '[' || *c == '{').cycle().take(room).collect();
        let filler = if filler.len() == room { filler } else { "[".repeat(room) };
        fields.push(("pad".to_string(), Value::String(filler)));
        let text = frame(&fields, false);
        prop_assert_eq!(text.len(), MAX_MESSAGE_BYTES);
        prop_assert_eq!(decode(&text, MAX_SYMBOLS), oracle(&fields, MAX_SYMBOLS));
    }
}

/// Shapes of nesting an attacker sends, as text of a known depth.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `[[[…]]]`
    Arrays,
    /// `{"a":{"a":…0}}`
    Objects,
    /// `[{"a":[{"a":…0}]}]`
    ArraysOfObjects,
    /// `[{[{[{…` never closed (not JSON).
    OpenRuns,
}

impl Shape {
    /// The text of `n` levels (for `OpenRuns` and `ArraysOfObjects`, `n` pairs) and its depth.
    fn text(self, n: usize) -> (String, usize) {
        match self {
            Shape::Arrays => (format!("{}{}", "[".repeat(n), "]".repeat(n)), n),
            Shape::Objects => (format!("{}0{}", r#"{"a":"#.repeat(n), "}".repeat(n)), n),
            Shape::ArraysOfObjects => {
                (format!("{}0{}", r#"[{"a":"#.repeat(n), "}]".repeat(n)), 2 * n)
            }
            Shape::OpenRuns => ("[{".repeat(n), 2 * n),
        }
    }
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![
        Just(Shape::Arrays),
        Just(Shape::Objects),
        Just(Shape::ArraysOfObjects),
        Just(Shape::OpenRuns),
    ]
}

/// Levels from 1 up to what fits in `max_message_bytes`, often near the limit of 8.
fn levels(bytes_per_level: usize) -> impl Strategy<Value = usize> {
    let most = (MAX_MESSAGE_BYTES - 64) / bytes_per_level;
    prop_oneof![1usize..=12, 1usize..=most, Just(most)]
}

proptest! {
    #![proptest_config(config(64))]

    /// Nesting alone, up to a whole frame of it: `bad_request` (too deep) past 8 levels, and
    /// otherwise the answer to what it is.
    #[test]
    fn nesting_past_the_limit_is_refused_and_within_it_answered(
        shape in shape(),
        n in levels(8),
    ) {
        let (text, depth) = shape.text(n);
        let expected = if depth > MAX_REQUEST_DEPTH {
            bad(None, TOO_DEEP)
        } else {
            match shape {
                Shape::Objects => bad(None, NO_OP),
                Shape::OpenRuns => bad(None, NOT_JSON),
                Shape::Arrays | Shape::ArraysOfObjects => bad(None, NOT_OBJECT),
            }
        };
        prop_assert_eq!(decode(&text, MAX_SYMBOLS), expected);
    }

    /// The same nesting inside a valid request's unknown field: too deep is refused without
    /// echoing the id (the frame is refused before it is read), within the limit it is ignored.
    #[test]
    fn nesting_inside_a_request_counts_from_its_top(
        shape in prop_oneof![Just(Shape::Arrays), Just(Shape::Objects), Just(Shape::ArraysOfObjects)],
        n in levels(8),
    ) {
        let (inner, depth) = shape.text(n);
        let text = format!(r#"{{"op":"ping","id":7,"x":{inner}}}"#);
        let expected = if 1 + depth > MAX_REQUEST_DEPTH {
            bad(None, TOO_DEEP)
        } else {
            Ok(Request { id: Some(RequestId::Num(7)), op: Op::Ping })
        };
        prop_assert_eq!(decode(&text, MAX_SYMBOLS), expected);
    }

    /// Brackets inside strings do not nest, however many, with escaped quotes and backslashes
    /// among them; after a string ends, nesting counts again.
    #[test]
    fn brackets_inside_strings_do_not_count(
        chunk in prop_oneof![Just(r"[{"), Just(r#"\"[{"#), Just(r"\\["), Just(r#"{\"a\":["#)],
        n in 1usize..=8_000,
        after in 0usize..=10,
    ) {
        let text = format!(
            r#"{{"op":"ping","x":"{}","y":"\\","z":{}0{}}}"#,
            chunk.repeat(n),
            "[".repeat(after),
            "]".repeat(after)
        );
        prop_assert!(text.len() <= MAX_MESSAGE_BYTES);
        let expected = if 1 + after > MAX_REQUEST_DEPTH {
            bad(None, TOO_DEEP)
        } else {
            Ok(Request { id: None, op: Op::Ping })
        };
        prop_assert_eq!(decode(&text, MAX_SYMBOLS), expected, "{}", &text[..text.len().min(200)]);
    }

    /// Any soup of JSON punctuation without strings, up to a whole frame: never a panic, always
    /// a `bad_request`, and the too-deep one exactly when brackets open more than 8 deep.
    #[test]
    fn punctuation_soup_is_a_bad_request_and_too_deep_by_its_brackets(
        tokens in proptest::collection::vec(
            proptest::sample::select(&["[", "]", "{", "}", ":", ",", "1", "-", "e", " ", "null", "tru"][..]),
            0..=20_000,
        ),
    ) {
        let text: String = tokens.concat();
        let (mut level, mut deepest) = (0usize, 0usize);
        for b in text.bytes() {
            match b {
                b'[' | b'{' => {
                    level += 1;
                    deepest = deepest.max(level);
                }
                b']' | b'}' => level = level.saturating_sub(1),
                _ => {}
            }
        }
        match decode(&text, MAX_SYMBOLS) {
            Ok(request) => prop_assert!(false, "{text} decoded as {request:?}"),
            Err((id, kind, message)) => {
                prop_assert_eq!((id, kind), (None, DecodeErrorKind::BadRequest));
                if deepest > MAX_REQUEST_DEPTH {
                    prop_assert_eq!(message, TOO_DEEP);
                } else {
                    prop_assert!([NOT_JSON, NOT_OBJECT, NO_OP].contains(&message.as_str()), "{}", message);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    /// Arbitrary bytes up to a whole frame never panic the decoder; neither do strings of
    /// JSON's structural characters, quotes and escapes (both built from a seed, see `big_json`).
    #[test]
    fn arbitrary_frames_up_to_max_message_bytes_never_panic(
        n in prop_oneof![0usize..=64, 0usize..=MAX_MESSAGE_BYTES],
        seed in any::<u64>(),
        alphabet in tricky_string(8),
    ) {
        let bytes: Vec<u8> = (0..n as u64).map(|i| mix(seed ^ i) as u8).collect();
        let alphabet: Vec<char> = alphabet.chars().collect();
        let soup: String = match alphabet.len() {
            0 => String::new(),
            k => (0..n as u64 / 4).map(|i| alphabet[mix(seed ^ i) as usize % k]).collect(),
        };
        let mut scratch = DecodeScratch::new();
        let limits = DecodeLimits { max_symbols: MAX_SYMBOLS };
        let _ = Request::decode(&bytes, &mut scratch, limits);
        let _ = Request::decode(soup.as_bytes(), &mut scratch, limits);
        let wrapped = format!(r#"{{"op":"subscribe","symbols":[{soup}]}}"#);
        if let Ok(request) = Request::decode(wrapped.as_bytes(), &mut scratch, limits) {
            let is_subscribe = matches!(request.op, Op::Subscribe { .. });
            prop_assert!(is_subscribe, "{:?}", request);
        }
    }
}

/// The frames of issue 9, exactly: each answered, none a panic or a stack overflow.
#[test]
fn the_frames_of_issue_9_are_bad_requests() {
    let arrays = format!("{}{}", "[".repeat(32_768), "]".repeat(32_768));
    assert_eq!(arrays.len(), MAX_MESSAGE_BYTES);
    assert_eq!(decode(&arrays, MAX_SYMBOLS), bad(None, TOO_DEEP));
    let objects = format!("{}0{}", r#"{"a":"#.repeat(10_900), "}".repeat(10_900));
    assert!(objects.len() <= MAX_MESSAGE_BYTES);
    assert_eq!(decode(&objects, MAX_SYMBOLS), bad(None, TOO_DEEP));
    let runs = "[{".repeat(MAX_MESSAGE_BYTES / 2);
    assert_eq!(decode(&runs, MAX_SYMBOLS), bad(None, TOO_DEEP));
    // 6,000 distinct unknown names: refused whole, for its size.
    let names: Vec<String> = (0..6_000).map(|i| format!(r#""N{i:04}""#)).collect();
    let many = format!(r#"{{"op":"subscribe","id":1,"symbols":[{}]}}"#, names.join(","));
    assert!(many.len() <= MAX_MESSAGE_BYTES);
    assert_eq!(
        decode(&many, MAX_SYMBOLS),
        Err((Some(RequestId::Num(1)), DecodeErrorKind::TooManySymbols, too_many("symbols", 1_000)))
    );
}
