//! Connection-level building blocks below HTTP: TLS configuration and the PROXY protocol.

pub mod proxy_protocol;
pub mod tls;
