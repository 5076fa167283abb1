//! The kernel interface: the only part of crius allowed to use `unsafe`.
//!
//! Namespaces (creating, pinning by bind mount, joining), process handles
//! (pidfds, start times, a fork into new namespaces for single-threaded
//! helpers), mounts and sysctls. Callers above this module see safe
//! functions with errors that name the operation and the path.
#![allow(unsafe_code)]

pub mod bpf;
pub mod caps;
pub mod exe;
pub mod fds;
pub mod idle;
pub mod idmap;
pub mod libm;
pub mod malloc;
pub mod mount;
pub mod net;
pub mod ns;
pub mod pages;
pub mod process;
pub mod pty;
#[cfg(target_arch = "x86_64")]
pub mod raw;
pub mod seccomp;
pub mod sysctl;
pub mod writeback;

use std::path::PathBuf;

use crate::error::{Classify, Kind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call failed; `what` names the operation and its object.
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid sysctl name {0:?}")]
    SysctlName(String),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::SysctlName(_) => Kind::InvalidArgument,
            _ => Kind::Internal,
        }
    }
}

impl Error {
    /// The errno behind a failed system call, when there is one.
    pub fn errno(&self) -> Option<nix::Error> {
        match self {
            Error::Sys { source, .. } => Some(*source),
            Error::Io { source, .. } => source.raw_os_error().map(nix::Error::from_raw),
            Error::SysctlName(_) => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds the error-mapping closure for a failed system call.
pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Error {
    let what = what.into();
    move |source| Error::Sys { what, source }
}

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { what, path, source }
}
