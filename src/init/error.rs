//! Why a step of a pod's, a container's or an exec process's setup failed:
//! one error type for the code that runs in processes the monitor forks
//! ([`super::setup`], [`super::rootfs::apply`]) and for the monitor's pod
//! setup. A failure crosses to the monitor as its step and the message of
//! its chain ([`crate::monitor::sync::Message::Failed`]).

use std::path::PathBuf;

use nix::mount::MsFlags;

use crate::monitor::sync::Step;

/// Why an operation failed; the message names the operation and its
/// object.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mount {from} on {} ({fstype:?}, {flags:?})", target.display())]
    Mount {
        from: String,
        target: PathBuf,
        fstype: Option<String>,
        flags: MsFlags,
        #[source]
        errno: nix::Error,
    },
    /// A system call failed; `what` names it and its object.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Sys(#[from] crate::sys::Error),
    #[error(transparent)]
    User(#[from] crate::init::user::Error),
    /// What is asked for cannot be done here (a NUL byte, a command not
    /// found, a cwd outside the root, a bind source that is no directory...).
    #[error("{0}")]
    Refused(String),
    /// A forked setup process reported this failure (its message), or
    /// ended without a report.
    #[error("{0}")]
    Reported(String),
}

/// `what` failed with the io, nix or rustix error it is given.
pub fn io<E: Into<std::io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> Error {
    move |e| Error::Io {
        what: what.into(),
        source: e.into(),
    }
}

/// A failed step: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}")]
pub struct StepError {
    pub step: Step,
    #[source]
    pub error: Error,
}

impl StepError {
    /// The reason, with its sources (what the monitor or the daemon is
    /// told).
    pub fn message(&self) -> String {
        crate::error::chain(&self.error)
    }
}

/// Tags an error with the step it failed.
pub fn fail<E: Into<Error>>(step: Step) -> impl FnOnce(E) -> StepError {
    move |e| StepError {
        step,
        error: e.into(),
    }
}
