//! Bytes on the wire: HTTP/1.1 request heads and responses, query strings, WebSocket framing,
//! the TLS configuration, the PROXY protocol header, and the socket.

pub mod http;
pub mod proxy_protocol;
pub mod query;
pub mod tls;
pub mod transport;
pub mod ws;
