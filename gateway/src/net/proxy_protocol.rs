//! HAProxy's PROXY protocol, version 2 (binary): the header a balancer sends before the client's
//! bytes, giving the client's real address (`--proxy-protocol`). Spec: haproxy's
//! `doc/proxy-protocol.txt`, section 2.2.
//!
//! [`parse`] is pure: it looks at the bytes read so far and says `Incomplete` (read more),
//! `Parsed` (the client's address, and how many bytes to skip before HTTP or TLS starts), or why
//! the connection must be dropped. It never waits for more than [`MAX_HEADER_BYTES`], so a peer
//! cannot make the gateway buffer the 64 KiB the length field could announce.
//!
//! With `--proxy-protocol` every connection must start with the header (the spec forbids
//! guessing), so only the balancer may reach the port. A LOCAL header (the balancer's own health
//! check) and address families the gateway does not use (AF_UNSPEC, AF_UNIX, UDP) give no
//! source: the connection's own peer address stands. This module must never accept version 1
//! text or a malformed header as "no header".

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The 12 bytes that open every version 2 header.
pub const SIGNATURE: [u8; 12] =
    [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// Signature, version/command, family/transport, length.
pub const FIXED_BYTES: usize = 16;
/// Longest header accepted, TLVs included. The spec designs headers to fit 536 bytes; haproxy's
/// optional TLVs (SNI up to 255 bytes, a unique id up to 128, TLS details) can pass that, and
/// 1 KiB holds them all while bounding what an unauthenticated peer makes the gateway hold.
pub const MAX_HEADER_BYTES: usize = 1024;

/// The outcome of looking at the first bytes of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// Not enough bytes yet; read more (within the handshake timeout) and call again.
    Incomplete,
    /// A complete header: the client's address (`None`: use the connection's peer address) and
    /// the header's length, to skip before the client's own bytes.
    Parsed { source: Option<SocketAddr>, consumed: usize },
}

/// Why a connection's first bytes are not an acceptable version 2 header: drop the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol v2 header (is the balancer set to send-proxy-v2?)")]
    NotProxyProtocol,
    #[error("a PROXY protocol v1 (text) header: set the balancer to send-proxy-v2")]
    Version1,
    #[error("PROXY protocol version {0}, expected 2")]
    BadVersion(u8),
    #[error("PROXY protocol command {0:#x}, expected LOCAL (0) or PROXY (1)")]
    BadCommand(u8),
    #[error("PROXY protocol address family {0:#x}, expected 0 to 3")]
    BadFamily(u8),
    #[error("PROXY protocol transport {0:#x}, expected 0 to 2")]
    BadTransport(u8),
    #[error("PROXY protocol header of {0} bytes, more than the {MAX_HEADER_BYTES} accepted")]
    TooLong(usize),
    #[error(
        "PROXY protocol address block of {len} bytes, too short for its family (needs {needed})"
    )]
    AddressTooShort { len: usize, needed: usize },
}

/// Parses the PROXY v2 header at the start of `input` (everything read from the connection so
/// far).
pub fn parse(input: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    let seen = input.len().min(SIGNATURE.len());
    if input[..seen] != SIGNATURE[..seen] {
        let v1 = b"PROXY ";
        let seen_v1 = input.len().min(v1.len());
        return Err(if input[..seen_v1] == v1[..seen_v1] {
            ProxyHeaderError::Version1
        } else {
            ProxyHeaderError::NotProxyProtocol
        });
    }
    if input.len() < FIXED_BYTES {
        return Ok(ProxyHeader::Incomplete);
    }
    let (version, command) = (input[12] >> 4, input[12] & 0x0F);
    if version != 2 {
        return Err(ProxyHeaderError::BadVersion(version));
    }
    if command > 1 {
        return Err(ProxyHeaderError::BadCommand(command));
    }
    let (family, transport) = (input[13] >> 4, input[13] & 0x0F);
    if family > 3 {
        return Err(ProxyHeaderError::BadFamily(family));
    }
    if transport > 2 {
        return Err(ProxyHeaderError::BadTransport(transport));
    }
    let len = usize::from(u16::from_be_bytes([input[14], input[15]]));
    let total = FIXED_BYTES + len;
    if total > MAX_HEADER_BYTES {
        return Err(ProxyHeaderError::TooLong(total));
    }
    if input.len() < total {
        return Ok(ProxyHeader::Incomplete);
    }
    let block = &input[FIXED_BYTES..total];
    const LOCAL: u8 = 0;
    const STREAM: u8 = 1;
    let source = match (command, family, transport) {
        (LOCAL, _, _) => None,
        (_, 1, STREAM) => {
            let needed = 2 * 4 + 2 * 2;
            if len < needed {
                return Err(ProxyHeaderError::AddressTooShort { len, needed });
            }
            let ip = Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            let port = u16::from_be_bytes([block[8], block[9]]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        (_, 2, STREAM) => {
            let needed = 2 * 16 + 2 * 2;
            if len < needed {
                return Err(ProxyHeaderError::AddressTooShort { len, needed });
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&block[..16]);
            let port = u16::from_be_bytes([block[32], block[33]]);
            Some(SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(octets), port, 0, 0)))
        }
        // AF_UNSPEC, AF_UNIX, datagrams: the spec's fallback is to use the real endpoints.
        _ => None,
    };
    Ok(ProxyHeader::Parsed { source, consumed: total })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header haproxy sent (`send-proxy-v2`) for 172.19.0.1:42578 -> 172.19.0.3:80, followed by
    /// the start of the client's request.
    const HAPROXY_TCP4: [u8; 28] = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, // version 2, PROXY
        0x11, // AF_INET, STREAM
        0x00, 0x0c, // 12 address bytes
        0xac, 0x13, 0x00, 0x01, // source 172.19.0.1
        0xac, 0x13, 0x00, 0x03, // destination 172.19.0.3
        0xa6, 0x52, // source port 42578
        0x00, 0x50, // destination port 80
    ];

    fn header(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend_from_slice(&(block.len() as u16).to_be_bytes());
        out.extend_from_slice(block);
        out
    }

    #[test]
    fn haproxy_tcp4_header_gives_the_client_address() {
        let mut bytes = HAPROXY_TCP4.to_vec();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&bytes),
            Ok(ProxyHeader::Parsed {
                source: Some("172.19.0.1:42578".parse().unwrap()),
                consumed: 28
            })
        );
        assert_eq!(&bytes[28..32], b"GET ");
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for n in 0..HAPROXY_TCP4.len() {
            assert_eq!(parse(&HAPROXY_TCP4[..n]), Ok(ProxyHeader::Incomplete), "{n} bytes");
        }
    }

    #[test]
    fn tcp6_header_gives_the_client_address() {
        let mut block = Vec::new();
        block.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        block.extend_from_slice(&[0xc3, 0x50, 0x01, 0xbb]); // 50000 -> 443
        let bytes = header(0x21, 0x21, &block);
        assert_eq!(bytes.len(), 16 + 36);
        assert_eq!(
            parse(&bytes),
            Ok(ProxyHeader::Parsed {
                source: Some("[2001:db8::7]:50000".parse().unwrap()),
                consumed: 52
            })
        );
    }

    #[test]
    fn tlvs_are_skipped_by_the_length_field() {
        let mut block = HAPROXY_TCP4[16..].to_vec();
        block.extend_from_slice(&[0x01, 0x00, 0x08]); // PP2_TYPE_ALPN
        block.extend_from_slice(b"http/1.1");
        block.extend_from_slice(&[0x04, 0x00, 0x02, 0x00, 0x00]); // PP2_TYPE_NOOP
        let bytes = header(0x21, 0x11, &block);
        assert_eq!(
            parse(&bytes),
            Ok(ProxyHeader::Parsed {
                source: Some("172.19.0.1:42578".parse().unwrap()),
                consumed: 16 + 12 + 11 + 5
            })
        );
    }

    #[test]
    fn local_unspec_and_unix_headers_keep_the_peer_address() {
        // LOCAL (a health check), no address.
        assert_eq!(
            parse(&header(0x20, 0x00, &[])),
            Ok(ProxyHeader::Parsed { source: None, consumed: 16 })
        );
        // LOCAL with an address block: still skipped whole, still no source.
        assert_eq!(
            parse(&header(0x20, 0x11, &HAPROXY_TCP4[16..])),
            Ok(ProxyHeader::Parsed { source: None, consumed: 28 })
        );
        // PROXY over AF_UNSPEC.
        assert_eq!(
            parse(&header(0x21, 0x00, &[])),
            Ok(ProxyHeader::Parsed { source: None, consumed: 16 })
        );
        // AF_UNIX stream: 2 * 108 bytes.
        assert_eq!(
            parse(&header(0x21, 0x31, &[0u8; 216])),
            Ok(ProxyHeader::Parsed { source: None, consumed: 232 })
        );
        // UDP over IPv4: not a TCP client, fall back to the peer.
        assert_eq!(
            parse(&header(0x21, 0x12, &HAPROXY_TCP4[16..])),
            Ok(ProxyHeader::Parsed { source: None, consumed: 28 })
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        assert_eq!(
            parse(&header(0x11, 0x11, &HAPROXY_TCP4[16..])),
            Err(ProxyHeaderError::BadVersion(1))
        );
        assert_eq!(
            parse(&header(0x22, 0x11, &HAPROXY_TCP4[16..])),
            Err(ProxyHeaderError::BadCommand(2))
        );
        assert_eq!(parse(&header(0x21, 0x41, &[])), Err(ProxyHeaderError::BadFamily(4)));
        assert_eq!(parse(&header(0x21, 0x13, &[])), Err(ProxyHeaderError::BadTransport(3)));
        assert_eq!(
            parse(&header(0x21, 0x11, &[0xac, 0x13, 0x00, 0x01])),
            Err(ProxyHeaderError::AddressTooShort { len: 4, needed: 12 })
        );
        assert_eq!(
            parse(&header(0x21, 0x21, &[0u8; 12])),
            Err(ProxyHeaderError::AddressTooShort { len: 12, needed: 36 })
        );
    }

    #[test]
    fn an_oversized_length_is_refused_before_the_bytes_arrive() {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&bytes), Err(ProxyHeaderError::TooLong(16 + 65535)));
        let at_limit = header(0x21, 0x11, &[0u8; MAX_HEADER_BYTES - 16]);
        assert!(matches!(
            parse(&at_limit),
            Ok(ProxyHeader::Parsed { consumed: MAX_HEADER_BYTES, .. })
        ));
        let over = header(0x21, 0x11, &[0u8; MAX_HEADER_BYTES - 15]);
        assert_eq!(parse(&over[..16]), Err(ProxyHeaderError::TooLong(MAX_HEADER_BYTES + 1)));
    }

    #[test]
    fn other_protocols_are_refused_at_the_first_wrong_byte() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::NotProxyProtocol));
        assert_eq!(parse(b"G"), Err(ProxyHeaderError::NotProxyProtocol));
        assert_eq!(
            parse(&[0x16, 0x03, 0x01]),
            Err(ProxyHeaderError::NotProxyProtocol),
            "a TLS ClientHello"
        );
        assert_eq!(
            parse(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
            Err(ProxyHeaderError::Version1)
        );
        assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(ProxyHeaderError::NotProxyProtocol));
    }
}
