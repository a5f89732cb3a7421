//! RFC 6455, server side: the handshake's accept key, a parser of client frames that works in
//! place on the bytes read, and the headers of server frames.
//!
//! A server frame is a 2–10 byte header plus a payload that is already encoded and shared by
//! every session; the header is all that is built per frame, so the payload is written straight
//! from the shared bytes (a vectored write), never copied. Client frames are masked: the parser
//! unmasks them in place in the read buffer. Nothing here allocates, and no input can make it
//! panic: every malformed frame is a [`FrameError`].

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// RFC 6455 section 1.3.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Largest payload of a control frame (RFC 6455 section 5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_CLIENT_HEADER: usize = 14;

/// The header of an unmasked, final server frame.
#[derive(Clone, Copy)]
pub struct FrameHeader {
    bytes: [u8; 10],
    len: u8,
}

impl FrameHeader {
    /// The header of a final frame with `opcode` carrying `payload_len` bytes.
    #[inline]
    pub fn new(opcode: u8, payload_len: usize) -> FrameHeader {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let len = if payload_len < 126 {
            bytes[1] = payload_len as u8;
            2
        } else if payload_len <= usize::from(u16::MAX) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
            10
        };
        FrameHeader { bytes, len }
    }

    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A client frame found at the start of a buffer; its payload has been unmasked in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFrame {
    pub fin: bool,
    pub opcode: u8,
    /// Where the payload starts in the buffer given to [`parse_client_frame`].
    pub payload_start: usize,
    pub payload_len: usize,
}

impl ClientFrame {
    /// Bytes of the buffer the frame occupies.
    pub fn end(&self) -> usize {
        self.payload_start + self.payload_len
    }

    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Why a client's bytes are not acceptable frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The framing rules are broken (close 1002).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The frame's payload is over the limit (close 1009).
    #[error("frame of {0} bytes is over the limit")]
    TooBig(u64),
}

/// Parses the frame at the start of `buf`. `Ok(None)`: more bytes are needed (and, once the
/// header is known, the frame fits the limit). A frame whose payload is over `max_payload` is
/// refused as soon as its header is read, before any of the payload is buffered.
pub fn parse_client_frame(
    buf: &mut [u8],
    max_payload: usize,
) -> Result<Option<ClientFrame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Protocol("reserved bits set without an extension"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG => {}
        _ => return Err(FrameError::Protocol("reserved opcode")),
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Protocol("client frames must be masked"));
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(FrameError::Protocol("payload length with the high bit set"));
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode & 0x8 != 0 {
        if !fin {
            return Err(FrameError::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(FrameError::Protocol("control frame payload over 125 bytes"));
        }
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig(len));
    }
    let len = len as usize;
    if buf.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    unmask(&mut buf[at..at + len], mask);
    Ok(Some(ClientFrame { fin, opcode, payload_start: at, payload_len: len }))
}

/// XORs `payload` with the repeating 4-byte mask, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// A client's close frame: its code (if any) and whether the frame itself is valid.
pub fn parse_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(FrameError::Protocol("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                return Err(FrameError::Protocol("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(FrameError::Protocol("close reason is not UTF-8"));
            }
            Ok(Some(code))
        }
    }
}

/// The payload of a close frame: the code, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A masked client frame, as a browser sends it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 65535 {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn server_headers_use_the_shortest_length_form() {
        assert_eq!(FrameHeader::new(OP_TEXT, 5).as_bytes(), [0x81, 5]);
        assert_eq!(FrameHeader::new(OP_TEXT, 125).as_bytes(), [0x81, 125]);
        assert_eq!(FrameHeader::new(OP_TEXT, 126).as_bytes(), [0x81, 126, 0, 126]);
        assert_eq!(FrameHeader::new(OP_PING, 0).as_bytes(), [0x89, 0]);
        assert_eq!(
            FrameHeader::new(OP_TEXT, 70_000).as_bytes(),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
    }

    #[test]
    fn parses_and_unmasks_a_text_frame() {
        let mut buf = client_frame(true, OP_TEXT, b"Hello", [0x37, 0xfa, 0x21, 0x3d]);
        // RFC 6455 section 5.7's example bytes.
        assert_eq!(buf, [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        let frame = parse_client_frame(&mut buf, 100).unwrap().unwrap();
        assert_eq!(
            frame,
            ClientFrame { fin: true, opcode: OP_TEXT, payload_start: 6, payload_len: 5 }
        );
        assert_eq!(&buf[6..11], b"Hello");
    }

    #[test]
    fn incomplete_frames_ask_for_more_and_oversized_ones_are_refused_at_the_header() {
        let full = client_frame(true, OP_TEXT, &[b'a'; 300], [1, 2, 3, 4]);
        for cut in 0..full.len() {
            let mut part = full[..cut].to_vec();
            assert_eq!(parse_client_frame(&mut part, 1000), Ok(None), "cut at {cut}");
        }
        let mut header_only = full[..4].to_vec();
        assert_eq!(parse_client_frame(&mut header_only, 299), Err(FrameError::TooBig(300)));
    }

    #[test]
    fn framing_violations_are_protocol_errors() {
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![0x81, 0x05, b'h', b'e', b'l', b'l', b'o'], "client frames must be masked"),
            (vec![0xC1, 0x80, 0, 0, 0, 0], "reserved bits set without an extension"),
            (vec![0x83, 0x80, 0, 0, 0, 0], "reserved opcode"),
            (vec![0x09, 0x80, 0, 0, 0, 0], "fragmented control frame"),
            (
                client_frame(true, OP_PING, &[0; 126], [0; 4]),
                "control frame payload over 125 bytes",
            ),
            (
                vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                "payload length with the high bit set",
            ),
        ];
        for (mut bytes, why) in cases {
            assert_eq!(parse_client_frame(&mut bytes, 1 << 20), Err(FrameError::Protocol(why)));
        }
    }

    #[test]
    fn close_frames_carry_a_valid_code_and_utf8_reason() {
        assert_eq!(parse_close(&[]), Ok(None));
        assert_eq!(parse_close(&[0x03, 0xE8]), Ok(Some(1000)));
        assert!(parse_close(&[0x03]).is_err());
        assert!(parse_close(&[0x03, 0xED]).is_err(), "1005 may not be sent");
        assert!(parse_close(&[0x03, 0xE8, 0xFF]).is_err());
        assert_eq!(close_payload(4008, "slow consumer"), b"\x0f\xa8slow consumer");
    }

    proptest! {
        /// Any bytes: a frame, a request for more, or an error; never a panic, never a frame
        /// that claims more bytes than the buffer has.
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let len = bytes.len();
            if let Ok(Some(frame)) = parse_client_frame(&mut bytes, 200) {
                prop_assert!(frame.end() <= len);
            }
        }

        /// What a client frames, the parser reads back exactly.
        #[test]
        fn round_trips(payload in proptest::collection::vec(any::<u8>(), 0..70_000), mask in any::<[u8; 4]>(), op in prop_oneof![Just(OP_TEXT), Just(OP_BINARY), Just(OP_CONTINUATION)], fin in any::<bool>()) {
            let mut buf = client_frame(fin, op, &payload, mask);
            let frame = parse_client_frame(&mut buf, 70_000).unwrap().unwrap();
            prop_assert_eq!(frame.end(), buf.len());
            prop_assert_eq!((frame.fin, frame.opcode), (fin, op));
            prop_assert_eq!(&buf[frame.payload_start..], &payload[..]);
        }
    }
}
