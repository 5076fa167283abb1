//! The gRPC layer: the CRI RuntimeService and ImageService over a unix socket.
//!
//! Handlers are thin: validate, convert the prost types to crius's own, call
//! the module that does the work, convert back. No prost type is used below
//! this module.

mod authority;
pub mod container;
mod container_rpc;
pub mod error;
mod events;
mod hpack;
mod image;
mod pod;
pub mod proto;
mod runtime;
pub mod server;
mod stats;
mod status;
mod stream_rpc;
mod streams;
pub mod validate;

use std::sync::Arc;

use crate::daemon::Daemon;

/// The service object tonic dispatches to; cheap to clone.
#[derive(Clone)]
pub struct Cri {
    daemon: Arc<Daemon>,
}

impl Cri {
    pub fn new(daemon: Arc<Daemon>) -> Cri {
        Cri { daemon }
    }
}

/// The most of a client-sent id or name the RPC's span carries: a hostile
/// client may send megabytes, and the span is in every log line of the RPC.
const MAX_FIELD_LOGGED: usize = 100;

/// Records `value` (cut to [`MAX_FIELD_LOGGED`] bytes) as `name` on the
/// current RPC span.
fn record_field(name: &'static str, value: &str) {
    let span = tracing::Span::current();
    span.record(name, &*crate::error::cut(value, MAX_FIELD_LOGGED));
}
