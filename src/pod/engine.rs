//! The narrow interface between the pod service and whatever runs a pod's
//! processes: in production the pod's monitor ([`super::monitor_engine`]),
//! in unit tests a recording fake.
//!
//! The service owns records, cgroups, the network, rollback and timeouts;
//! the engine owns the pod's processes: it starts the monitor (which
//! creates and pins the namespaces, starts the pod init and mounts
//! /dev/shm), finds a running monitor again after a restart, stops a
//! monitor with everything it started, and tells when a monitor ends.

use crate::error::{Classify, Kind};
use crate::monitor::PodDir;
pub use crate::monitor::Spec;
pub use crate::monitor::sync::Step;
use crate::sys::process::ProcRef;

/// A started pod: its monitor and, in PID mode POD, its init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub monitor: ProcRef,
    pub init: Option<ProcRef>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of setting the pod up failed; `step` names it ("apply
    /// sysctls", "pin namespaces").
    #[error("{step}: {message}")]
    Step {
        step: Step,
        message: String,
        kind: Kind,
    },
    /// The monitor could not be started or reached.
    #[error("{0}")]
    Monitor(String),
    #[error("{0}")]
    Timeout(String),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::Step { kind, .. } => *kind,
            Error::Monitor(_) => Kind::Internal,
            Error::Timeout(_) => Kind::DeadlineExceeded,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[async_trait::async_trait]
pub trait Engine: Send + Sync {
    /// Starts the pod's monitor and waits until it has set the pod up; on
    /// failure nothing of it runs any more.
    async fn start(&self, dir: &PodDir, spec: &Spec) -> Result<Started>;
    /// The monitor answering on the pod's socket (versioned handshake).
    async fn attach(&self, dir: &PodDir) -> Result<ProcRef>;
    /// Stops a pod's monitor and everything it started: asks it to kill
    /// and reap its children, then kills it; waits (bounded) until it is
    /// gone. `monitor` is the one recorded, if any.
    async fn stop(&self, dir: &PodDir, monitor: Option<ProcRef>);
    /// Resolves when `monitor` has ended (at once if it already has).
    async fn exited(&self, monitor: ProcRef);
}
