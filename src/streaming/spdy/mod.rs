//! SPDY/3.1, server side, as far as Kubernetes uses it: the framer
//! ([`frame`]), header blocks and their compression ([`headers`]) and a
//! session that accepts the streams a client opens ([`session`]).
//!
//! No maintained Rust crate implements SPDY/3.1; the protocol subset the
//! Go peers use is small, so it lives here.

pub mod frame;
pub mod headers;
pub mod session;

pub use session::{Session, Stream, StreamReader, StreamWriter};
