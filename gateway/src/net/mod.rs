//! Client bytes below the endpoints: query strings, the TLS configuration, the PROXY protocol
//! header. Pure parsers and builders: nothing here does I/O.

pub mod proxy_protocol;
pub mod query;
pub mod tls;
