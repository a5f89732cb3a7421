//! The network layer of the new session core: parsing of what arrives on a socket, kept pure
//! so that it can be tested without one. Nothing here does I/O.

pub mod query;
