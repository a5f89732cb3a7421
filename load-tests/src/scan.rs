//! Reads the few fields the tester needs (`type`, `symbol`, `seq`, `ts`, `code`) out of one
//! server message, in place, without allocating.
//!
//! It walks the top-level object once, skipping every other value without decoding it. Key order
//! and whitespace do not matter. It is not a JSON validator: a message it cannot walk is reported
//! as a parse error and counted, never trusted. Quotes laid out in the contract's field order
//! (as the gateway writes them) take a shorter path that reads only their head and tail.
//! `examples/scan_bench.rs` measures both against `simd-json` and `serde_json` on a quote
//! frame; the figures are in `docs/benchmarks.md`.

/// The message kinds of the contract (PROTOCOL.md §3); anything else is `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Kind {
    Welcome,
    Ack,
    Snapshot,
    Quote,
    Heartbeat,
    Pong,
    Error,
    #[default]
    Other,
}

impl Kind {
    pub fn from_name(name: &[u8]) -> Kind {
        match name {
            b"quote" => Kind::Quote,
            b"snapshot" => Kind::Snapshot,
            b"heartbeat" => Kind::Heartbeat,
            b"welcome" => Kind::Welcome,
            b"ack" => Kind::Ack,
            b"pong" => Kind::Pong,
            b"error" => Kind::Error,
            _ => Kind::Other,
        }
    }
}

/// What the tester takes from one message. Slices borrow the message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fields<'a> {
    pub kind: Kind,
    /// False when the message had no `type` at all.
    pub has_type: bool,
    pub symbol: Option<&'a [u8]>,
    pub seq: Option<u64>,
    pub ts: Option<u64>,
    pub code: Option<&'a [u8]>,
}

/// The message is not a JSON object the scan can walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanError;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    #[inline]
    fn peek(&self) -> Result<u8, ScanError> {
        self.b.get(self.i).copied().ok_or(ScanError)
    }

    #[inline]
    fn expect(&mut self, c: u8) -> Result<(), ScanError> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(ScanError)
        }
    }

    /// A string's raw bytes between its quotes (escapes left as they are).
    #[inline]
    fn string(&mut self) -> Result<&'a [u8], ScanError> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => {
                    let s = &self.b[start..self.i];
                    self.i += 1;
                    return Ok(s);
                }
                b'\\' => self.i += 2,
                _ => self.i += 1,
            }
        }
    }

    #[inline]
    fn unsigned(&mut self) -> Result<u64, ScanError> {
        let start = self.i;
        let mut v: u64 = 0;
        while let Some(&c) = self.b.get(self.i) {
            if !c.is_ascii_digit() {
                break;
            }
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(c - b'0')))
                .ok_or(ScanError)?;
            self.i += 1;
        }
        if self.i == start || matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return Err(ScanError);
        }
        Ok(v)
    }

    /// Skips one value of any type.
    fn skip_value(&mut self) -> Result<(), ScanError> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
            }
            _ => {
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    Err(ScanError)
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Scans one message: the fast path for quotes and snapshots laid out as the gateway writes
/// them, else the general walk.
#[inline]
pub fn scan(msg: &[u8]) -> Result<Fields<'_>, ScanError> {
    match scan_quote_layout(msg) {
        Some(f) => Ok(f),
        None => scan_object(msg),
    }
}

/// A quote or snapshot in the contract's field order, `{"type":"quote","symbol":"S","seq":N,…,
/// "ts":T}`: reads the head and the tail and skips the prices in between. `None` when the
/// message is laid out any other way (the general walk then reads it).
#[inline]
fn scan_quote_layout(msg: &[u8]) -> Option<Fields<'_>> {
    const QUOTE: &[u8] = b"{\"type\":\"quote\",\"symbol\":\"";
    const SNAPSHOT: &[u8] = b"{\"type\":\"snapshot\",\"symbol\":\"";
    let (kind, rest) = if let Some(r) = msg.strip_prefix(QUOTE) {
        (Kind::Quote, r)
    } else {
        (Kind::Snapshot, msg.strip_prefix(SNAPSHOT)?)
    };
    let q = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[q] != b'"' {
        return None;
    }
    let symbol = &rest[..q];
    let rest = rest[q..].strip_prefix(b"\",\"seq\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(digits) != Some(&b',') {
        return None;
    }
    let seq = parse_digits(&rest[..digits])?;
    let body = msg.strip_suffix(b"}")?;
    let ts_digits = body.iter().rev().take_while(|b| b.is_ascii_digit()).count();
    let (head, ts) = body.split_at(body.len() - ts_digits);
    if !head.ends_with(b",\"ts\":") {
        return None;
    }
    Some(Fields {
        kind,
        has_type: true,
        symbol: Some(symbol),
        seq: Some(seq),
        ts: Some(parse_digits(ts)?),
        code: None,
    })
}

#[inline]
fn parse_digits(d: &[u8]) -> Option<u64> {
    if d.is_empty() || d.len() > 20 {
        return None;
    }
    d.iter().try_fold(0u64, |v, &c| v.checked_mul(10)?.checked_add(u64::from(c - b'0')))
}

/// Walks the top-level object. Stops as soon as a quote's or snapshot's four fields are known.
pub fn scan_object(msg: &[u8]) -> Result<Fields<'_>, ScanError> {
    let mut f = Fields::default();
    let mut c = Cursor { b: msg, i: 0 };
    c.ws();
    c.expect(b'{')?;
    c.ws();
    if c.peek()? == b'}' {
        return Ok(f);
    }
    loop {
        c.ws();
        let key = c.string()?;
        c.ws();
        c.expect(b':')?;
        c.ws();
        match key {
            b"type" => {
                f.kind = Kind::from_name(c.string()?);
                f.has_type = true;
            }
            b"symbol" => f.symbol = Some(c.string()?),
            b"seq" => f.seq = Some(c.unsigned()?),
            b"ts" => f.ts = Some(c.unsigned()?),
            b"code" => f.code = Some(c.string()?),
            _ => c.skip_value()?,
        }
        if matches!(f.kind, Kind::Quote | Kind::Snapshot)
            && f.symbol.is_some()
            && f.seq.is_some()
            && f.ts.is_some()
        {
            return Ok(f);
        }
        c.ws();
        match c.peek()? {
            b',' => c.i += 1,
            b'}' => return Ok(f),
            _ => return Err(ScanError),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTE: &[u8] = br#"{"type":"quote","symbol":"AAPL","seq":1042,"bid":187.25,"ask":187.27,"bid_size":200,"ask_size":500,"last":187.26,"last_size":50,"volume":1203450,"ts":1763775600124456789}"#;

    #[test]
    fn scans_a_quote() {
        let f = scan(QUOTE).unwrap();
        assert_eq!(f.kind, Kind::Quote);
        assert_eq!(f.symbol, Some(&b"AAPL"[..]));
        assert_eq!(f.seq, Some(1042));
        assert_eq!(f.ts, Some(1_763_775_600_124_456_789));
    }

    #[test]
    fn key_order_and_whitespace_do_not_matter() {
        let msg = br#" { "ts" : 5 , "x": {"a":[1,"}",{"b":null}]}, "seq":7, "symbol" : "B\"Q", "type":"snapshot" } "#;
        let f = scan(msg).unwrap();
        assert_eq!(f.kind, Kind::Snapshot);
        assert_eq!(f.symbol, Some(&br#"B\"Q"#[..]));
        assert_eq!((f.seq, f.ts), (Some(7), Some(5)));
    }

    #[test]
    fn scans_welcome_and_error() {
        let w = br#"{"type":"welcome","protocol":1,"server":"gw-1","session":"3f9c1a","ts":1763775600000000000,"heartbeat_ms":5000,"limits":{"max_subscriptions":1000,"max_message_bytes":65536,"max_requests_per_sec":50}}"#;
        let f = scan(w).unwrap();
        assert_eq!(f.kind, Kind::Welcome);
        assert_eq!(f.ts, Some(1_763_775_600_000_000_000));
        let e = br#"{"type":"error","id":1,"code":"unknown_symbol","message":"unknown symbol: FOO","symbols":["FOO"]}"#;
        let f = scan(e).unwrap();
        assert_eq!(f.kind, Kind::Error);
        assert_eq!(f.code, Some(&b"unknown_symbol"[..]));
    }

    #[test]
    fn the_fast_path_agrees_with_the_walk() {
        let snapshot = br#"{"type":"snapshot","symbol":"BRK.B","seq":0,"bid":1,"ts":7}"#;
        for msg in [QUOTE, &snapshot[..]] {
            assert!(scan_quote_layout(msg).is_some());
            assert_eq!(scan_quote_layout(msg), scan_object(msg).ok());
        }
        // Laid out otherwise: the fast path declines, the walk reads it.
        for msg in [
            &br#"{"type":"quote","symbol":"A"B","seq":1,"ts":2}"#[..],
            br#"{"type":"quote","symbol":"A","seq":1,"ts":2 }"#,
            br#"{"type":"quote","symbol":"A","seq":1,"x":{"ts":2}}"#,
            br#"{"type":"quote","symbol":"A","seq":1.5,"ts":2}"#,
            br#"{"type":"quote","symbol":"A","seq":1,"ts":99999999999999999999999}"#,
        ] {
            assert_eq!(scan_quote_layout(msg), None, "{}", String::from_utf8_lossy(msg));
        }
        let f = scan(br#"{"type":"quote","symbol":"A","seq":1,"ts":2 }"#).unwrap();
        assert_eq!((f.seq, f.ts), (Some(1), Some(2)));
        assert_eq!(
            scan(br#"{"type":"quote","symbol":"A","seq":1,"x":{"ts":2}}"#).unwrap().ts,
            None
        );
    }

    #[test]
    fn rejects_what_it_cannot_walk() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"type\":",
            b"{\"seq\":-1}",
            b"{\"seq\":1.5}",
            b"{\"a\":1 \"b\":2}",
            b"{\"a\":\"unterminated",
        ] {
            assert_eq!(scan(bad), Err(ScanError), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn agrees_with_serde_json_on_generated_quotes() {
        for i in 0..200u64 {
            let msg = format!(
                r#"{{"type":"quote","symbol":"S{i}","seq":{},"bid":{}.5,"ask":1,"ts":{}}}"#,
                i * 7919,
                i,
                i * 1_000_000_007
            );
            let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
            let f = scan(msg.as_bytes()).unwrap();
            assert_eq!(f.seq, v["seq"].as_u64());
            assert_eq!(f.ts, v["ts"].as_u64());
            assert_eq!(f.symbol.map(|s| std::str::from_utf8(s).unwrap()), v["symbol"].as_str());
        }
    }
}
