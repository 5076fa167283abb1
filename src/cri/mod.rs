//! The gRPC layer: the CRI RuntimeService and ImageService over a unix socket.
//!
//! Handlers are thin: validate, convert the prost types to crius's own, call
//! the module that does the work, convert back. No prost type is used below
//! this module.

mod authority;
pub mod container;
mod container_rpc;
pub mod error;
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
