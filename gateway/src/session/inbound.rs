//! What a WebSocket client sends, frame by frame: complete messages (fragments assembled, text
//! checked as UTF-8) and control frames, and every way of breaking the rules mapped to the
//! contract's close code (1002, 1007, 1009). Works on the bytes the shard read, in place.

use proto::close;

use super::Ending;
use crate::metrics::EndReason;
use crate::net::ws::{self, FrameError};

/// One thing the client said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message (valid UTF-8).
    Text(&'a [u8]),
    /// A complete binary message (not part of the protocol).
    Binary,
    Ping(&'a [u8]),
    Pong,
    /// The client's close frame, with its code.
    Close(Option<u16>),
}

/// A fragmented message being assembled.
#[derive(Debug, Default)]
pub struct Assembly {
    pub bytes: Vec<u8>,
    pub opcode: Option<u8>,
}

/// Parses the frames at the start of `buf`, handing each event to `on_event` until it returns
/// `false` (stop reading: paused or closing). Returns the bytes consumed; what is left is an
/// incomplete frame (or frames not yet wanted). A message over `max_message` bytes, whole or
/// in fragments, is refused (1009) before it is buffered.
pub fn parse(
    buf: &mut [u8],
    assembly: &mut Assembly,
    max_message: usize,
    mut on_event: impl FnMut(Event<'_>) -> bool,
) -> Result<usize, Ending> {
    let mut at = 0;
    while at < buf.len() {
        let rest = &mut buf[at..];
        let frame = match ws::parse_client_frame(rest, max_message) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(FrameError::TooBig(_)) => {
                return Err(Ending::Close(close::MESSAGE_TOO_BIG, EndReason::MessageTooBig))
            }
            Err(FrameError::Protocol(_)) => {
                return Err(Ending::Close(close::PROTOCOL_ERROR, EndReason::IoError))
            }
        };
        let payload = &rest[frame.payload_start..frame.end()];
        at += frame.end();
        let go_on = match frame.opcode {
            ws::OP_PING => on_event(Event::Ping(payload)),
            ws::OP_PONG => on_event(Event::Pong),
            ws::OP_CLOSE => match ws::parse_close(payload) {
                Ok(code) => on_event(Event::Close(code)),
                Err(_) => return Err(Ending::Close(close::PROTOCOL_ERROR, EndReason::IoError)),
            },
            ws::OP_CONTINUATION => {
                let Some(opcode) = assembly.opcode else {
                    return Err(Ending::Close(close::PROTOCOL_ERROR, EndReason::IoError));
                };
                if assembly.bytes.len() + payload.len() > max_message {
                    return Err(Ending::Close(close::MESSAGE_TOO_BIG, EndReason::MessageTooBig));
                }
                append_bounded(&mut assembly.bytes, payload, max_message);
                if frame.fin {
                    let message = std::mem::take(&mut assembly.bytes);
                    assembly.opcode = None;
                    let go_on = deliver(opcode, &message, &mut on_event)?;
                    // The assembly buffer goes with the message: an idle session holds nothing.
                    go_on
                } else {
                    true
                }
            }
            opcode => {
                if assembly.opcode.is_some() {
                    return Err(Ending::Close(close::PROTOCOL_ERROR, EndReason::IoError));
                }
                if frame.fin {
                    deliver(opcode, payload, &mut on_event)?
                } else {
                    assembly.opcode = Some(opcode);
                    append_bounded(&mut assembly.bytes, payload, max_message);
                    true
                }
            }
        };
        if !go_on {
            break;
        }
    }
    Ok(at)
}

/// Appends a fragment (the total is at most `max`, checked by the caller), growing the buffer
/// as a Vec grows but never past `max`: a message of `max_message_bytes` holds that much.
fn append_bounded(bytes: &mut Vec<u8>, payload: &[u8], max: usize) {
    let len = bytes.len();
    if bytes.capacity() < len + payload.len() {
        let want = (len + payload.len()).max(2 * bytes.capacity()).min(max);
        bytes.reserve_exact(want.saturating_sub(len));
    }
    bytes.extend_from_slice(payload);
}

fn deliver(
    opcode: u8,
    message: &[u8],
    on_event: &mut impl FnMut(Event<'_>) -> bool,
) -> Result<bool, Ending> {
    if opcode == ws::OP_BINARY {
        return Ok(on_event(Event::Binary));
    }
    if simdutf8::basic::from_utf8(message).is_err() {
        return Err(Ending::Close(close::INVALID_PAYLOAD, EndReason::IoError));
    }
    Ok(on_event(Event::Text(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [9, 8, 7, 6];
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn events(bytes: &[u8], max: usize) -> (Result<usize, Ending>, Vec<String>) {
        let mut buf = bytes.to_vec();
        let mut seen = Vec::new();
        let mut assembly = Assembly::default();
        let result = parse(&mut buf, &mut assembly, max, |e| {
            seen.push(match e {
                Event::Text(t) => format!("text {}", String::from_utf8_lossy(t)),
                other => format!("{other:?}"),
            });
            true
        });
        (result, seen)
    }

    #[test]
    fn fragments_are_assembled_around_control_frames() {
        let mut bytes = frame(false, ws::OP_TEXT, b"{\"op\":");
        bytes.extend(frame(true, ws::OP_PING, b"hi"));
        bytes.extend(frame(true, ws::OP_CONTINUATION, b"\"ping\"}"));
        bytes.extend(frame(true, ws::OP_CLOSE, &[0x03, 0xE8]));
        let (result, seen) = events(&bytes, 100);
        assert_eq!(result, Ok(bytes.len()));
        assert_eq!(seen, ["Ping([104, 105])", "text {\"op\":\"ping\"}", "Close(Some(1000))"]);
    }

    #[test]
    fn an_incomplete_frame_is_left_for_later() {
        let mut bytes = frame(true, ws::OP_TEXT, b"one");
        let whole = bytes.len();
        bytes.extend(&frame(true, ws::OP_TEXT, b"two")[..4]);
        let (result, seen) = events(&bytes, 100);
        assert_eq!((result, seen), (Ok(whole), vec!["text one".to_string()]));
    }

    #[test]
    fn rule_breaking_gets_the_contract_close_code() {
        let code = |bytes: Vec<u8>, max| match events(&bytes, max).0 {
            Err(Ending::Close(cause, _)) => cause.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(frame(true, ws::OP_TEXT, &[0xff, 0xfe]), 100), 1007);
        assert_eq!(code(frame(true, ws::OP_CONTINUATION, b"x"), 100), 1002);
        let mut twice = frame(false, ws::OP_TEXT, b"a");
        twice.extend(frame(true, ws::OP_TEXT, b"b"));
        assert_eq!(code(twice, 100), 1002);
        assert_eq!(code(frame(true, ws::OP_TEXT, &[b'a'; 11]), 10), 1009);
        let mut growing = frame(false, ws::OP_TEXT, &[b'a'; 6]);
        growing.extend(frame(true, ws::OP_CONTINUATION, &[b'a'; 6]));
        assert_eq!(code(growing, 10), 1009);
        assert_eq!(code(frame(true, ws::OP_CLOSE, &[0x03]), 10), 1002);
    }
}
