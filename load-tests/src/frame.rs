//! The client side of RFC 6455 framing, just what the tester needs: read the server's
//! (unmasked) frames in place out of a byte buffer, and write small masked frames.
//!
//! Frames are parsed where they lie in the connection's read buffer, so a message costs no
//! allocation and no copy. Never used for anything but the tester's own connections.

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One frame's header, as found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub header_len: usize,
    pub payload_len: usize,
}

impl Header {
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// A frame a client must never receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV bits set without a negotiated extension.
    Reserved,
    /// A server frame with the mask bit set (RFC 6455 §5.1).
    Masked,
    /// A control frame over 125 bytes or fragmented.
    BadControl,
    /// A length that does not fit in memory.
    TooLong,
}

/// Parses the header at the start of `buf`; `Ok(None)` when more bytes are needed.
#[inline]
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    let (header_len, payload_len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (4, u64::from(u16::from_be_bytes([buf[2], buf[3]])))
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (10, u64::from_be_bytes(b))
        }
        n => (2, u64::from(n)),
    };
    if opcode >= 0x8 && (!fin || payload_len > 125) {
        return Err(FrameError::BadControl);
    }
    let payload_len =
        usize::try_from(payload_len).ok().filter(|&n| n <= 1 << 30).ok_or(FrameError::TooLong)?;
    Ok(Some(Header { fin, opcode, header_len, payload_len }))
}

/// Appends one masked client frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// The status code of a close frame's payload; 1005 (no status) when it has none.
pub fn close_code(payload: &[u8]) -> u16 {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]])
    } else {
        1005
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> (Header, Vec<u8>) {
        // A client frame has the mask bit: parse it by hand here.
        let mut copy = frame.to_vec();
        copy[1] &= 0x7F;
        let h = parse_header(&copy).unwrap().unwrap();
        let mask = &frame[h.header_len..h.header_len + 4];
        let payload =
            frame[h.header_len + 4..].iter().enumerate().map(|(i, b)| b ^ mask[i & 3]).collect();
        (h, payload)
    }

    #[test]
    fn written_frames_round_trip_at_every_length_form() {
        for n in [0usize, 5, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            write_frame(&mut out, OP_TEXT, &payload, [1, 2, 3, 4]);
            let (h, got) = unmask(&out);
            assert!(h.fin);
            assert_eq!(h.opcode, OP_TEXT);
            assert_eq!(h.payload_len, n);
            assert_eq!(got, payload);
        }
    }

    #[test]
    fn parses_server_headers_and_waits_for_more_bytes() {
        assert_eq!(parse_header(&[0x81]), Ok(None));
        assert_eq!(parse_header(&[0x81, 126, 0]), Ok(None));
        let h = parse_header(&[0x81, 126, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((h.header_len, h.payload_len), (4, 256));
        let h = parse_header(&[0x88, 2, 0x0F, 0xA8]).unwrap().unwrap();
        assert_eq!(h.opcode, OP_CLOSE);
        assert_eq!(close_code(&[0x0F, 0xA8]), 4008);
        assert_eq!(close_code(&[]), 1005);
    }

    #[test]
    fn rejects_frames_a_server_must_not_send() {
        assert_eq!(parse_header(&[0x81, 0x85]), Err(FrameError::Masked));
        assert_eq!(parse_header(&[0xC1, 0x05]), Err(FrameError::Reserved));
        assert_eq!(parse_header(&[0x09, 0x00]), Err(FrameError::BadControl));
        assert_eq!(parse_header(&[0x89, 126, 0, 200]), Err(FrameError::BadControl));
    }
}
