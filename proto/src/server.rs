//! Server messages other than quotes (section 3). These are rare next to quotes, so each is
//! written into its own buffer when sent.

use crate::json::{write_str, write_u64};
use crate::request::RequestId;

/// Error codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    UnknownSymbol,
    TooManySubscriptions,
    RateLimited,
    Forbidden,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 5] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownSymbol,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownSymbol => "unknown_symbol",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// The limits announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_subscriptions: u32,
    pub max_message_bytes: u32,
    pub max_requests_per_sec: u32,
}

/// `welcome`: the first message of every session. `epoch` names the feed's sequence space.
pub fn welcome(
    server: &str,
    session: &str,
    epoch: &str,
    ts: u64,
    heartbeat_ms: u64,
    limits: Limits,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"type\":\"welcome\",\"protocol\":");
    write_u64(&mut out, u64::from(crate::PROTOCOL_VERSION));
    out.extend_from_slice(b",\"server\":");
    write_str(&mut out, server);
    out.extend_from_slice(b",\"session\":");
    write_str(&mut out, session);
    out.extend_from_slice(b",\"epoch\":");
    write_str(&mut out, epoch);
    out.extend_from_slice(b",\"ts\":");
    write_u64(&mut out, ts);
    out.extend_from_slice(b",\"heartbeat_ms\":");
    write_u64(&mut out, heartbeat_ms);
    out.extend_from_slice(b",\"limits\":{\"max_subscriptions\":");
    write_u64(&mut out, u64::from(limits.max_subscriptions));
    out.extend_from_slice(b",\"max_message_bytes\":");
    write_u64(&mut out, u64::from(limits.max_message_bytes));
    out.extend_from_slice(b",\"max_requests_per_sec\":");
    write_u64(&mut out, u64::from(limits.max_requests_per_sec));
    out.extend_from_slice(b"}}");
    out
}

fn write_id(out: &mut Vec<u8>, id: Option<&RequestId>) {
    match id {
        None => {}
        Some(RequestId::Num(n)) => {
            out.extend_from_slice(b",\"id\":");
            write_u64(out, *n);
        }
        Some(RequestId::Str(s)) => {
            out.extend_from_slice(b",\"id\":");
            write_str(out, s);
        }
    }
}

fn write_symbols<'a>(out: &mut Vec<u8>, symbols: impl IntoIterator<Item = &'a str>) {
    out.extend_from_slice(b",\"symbols\":[");
    for (i, s) in symbols.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, s);
    }
    out.push(b']');
}

/// `ack` of a subscribe or unsubscribe, listing the symbols it applied to.
pub fn ack<'a>(
    id: Option<&RequestId>,
    op: &str,
    symbols: impl IntoIterator<Item = &'a str>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"type\":\"ack\"");
    write_id(&mut out, id);
    out.extend_from_slice(b",\"op\":");
    write_str(&mut out, op);
    write_symbols(&mut out, symbols);
    out.push(b'}');
    out
}

/// `ack` of a subscribe with `resume`: also lists the symbols replayed instead of snapshotted.
pub fn ack_resumed<'a>(
    id: Option<&RequestId>,
    op: &str,
    symbols: impl IntoIterator<Item = &'a str>,
    resumed: impl IntoIterator<Item = &'a str>,
) -> Vec<u8> {
    let mut out = ack(id, op, symbols);
    out.pop();
    out.extend_from_slice(b",\"resumed\":[");
    for (i, s) in resumed.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(&mut out, s);
    }
    out.extend_from_slice(b"]}");
    out
}

/// `error` answering one request. `symbols` is written when non-empty; `retry_after_ms` with
/// `rate_limited`.
pub fn error<'a>(
    id: Option<&RequestId>,
    code: ErrorCode,
    message: &str,
    symbols: impl IntoIterator<Item = &'a str>,
    retry_after_ms: Option<u64>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.extend_from_slice(b"{\"type\":\"error\"");
    write_id(&mut out, id);
    out.extend_from_slice(b",\"code\":");
    write_str(&mut out, code.as_str());
    out.extend_from_slice(b",\"message\":");
    write_str(&mut out, message);
    let mut symbols = symbols.into_iter().peekable();
    if symbols.peek().is_some() {
        write_symbols(&mut out, symbols);
    }
    if let Some(ms) = retry_after_ms {
        out.extend_from_slice(b",\"retry_after_ms\":");
        write_u64(&mut out, ms);
    }
    out.push(b'}');
    out
}

/// `heartbeat`: sent when nothing else was for `heartbeat_ms`.
pub fn heartbeat(ts: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(b"{\"type\":\"heartbeat\",\"ts\":");
    write_u64(&mut out, ts);
    out.push(b'}');
    out
}

/// `pong`: the answer to a `ping` request.
pub fn pong(id: Option<&RequestId>, ts: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    out.extend_from_slice(b"{\"type\":\"pong\"");
    write_id(&mut out, id);
    out.extend_from_slice(b",\"ts\":");
    write_u64(&mut out, ts);
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn messages_have_the_exact_bytes_of_the_contract() {
        let limits =
            Limits { max_subscriptions: 1000, max_message_bytes: 65536, max_requests_per_sec: 50 };
        assert_eq!(
            s(welcome("gw-1", "3f9c1a", "7f3a9c", 1763775600000000000, 5000, limits)),
            r#"{"type":"welcome","protocol":1,"server":"gw-1","session":"3f9c1a","epoch":"7f3a9c","ts":1763775600000000000,"heartbeat_ms":5000,"limits":{"max_subscriptions":1000,"max_message_bytes":65536,"max_requests_per_sec":50}}"#
        );
        assert_eq!(
            s(ack(Some(&RequestId::Num(1)), "subscribe", ["AAPL", "MSFT"])),
            r#"{"type":"ack","id":1,"op":"subscribe","symbols":["AAPL","MSFT"]}"#
        );
        assert_eq!(
            s(ack_resumed(Some(&RequestId::Num(4)), "subscribe", ["AAPL", "MSFT"], ["AAPL"])),
            r#"{"type":"ack","id":4,"op":"subscribe","symbols":["AAPL","MSFT"],"resumed":["AAPL"]}"#
        );
        assert_eq!(
            s(heartbeat(1763775605000000000)),
            r#"{"type":"heartbeat","ts":1763775605000000000}"#
        );
        assert_eq!(
            s(pong(Some(&RequestId::Num(3)), 1763775605000000000)),
            r#"{"type":"pong","id":3,"ts":1763775605000000000}"#
        );
        assert_eq!(
            s(error(
                Some(&RequestId::Num(1)),
                ErrorCode::UnknownSymbol,
                "unknown symbol: FOO",
                ["FOO"],
                None
            )),
            r#"{"type":"error","id":1,"code":"unknown_symbol","message":"unknown symbol: FOO","symbols":["FOO"]}"#
        );
        assert_eq!(
            s(error(None, ErrorCode::RateLimited, "slow down", [], Some(120))),
            r#"{"type":"error","code":"rate_limited","message":"slow down","retry_after_ms":120}"#
        );
        assert_eq!(
            s(ack(Some(&RequestId::Str("a\"b".into())), "unsubscribe", ["X"])),
            r#"{"type":"ack","id":"a\"b","op":"unsubscribe","symbols":["X"]}"#
        );
    }
}
