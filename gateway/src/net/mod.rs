//! Bytes on the wire: HTTP/1.1 request heads and responses, WebSocket framing, the socket.

pub mod http;
pub mod transport;
pub mod ws;
