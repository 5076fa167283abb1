//! Seccomp (seccomp(2), seccomp(7) in the kernel's terms; `linux.seccomp`
//! in the OCI runtime spec): the syscall filter a container's processes
//! run under. Namespaces and cgroups leave the kernel shared; the filter is
//! what keeps a container away from the syscalls that reach past them
//! (keyctl, unshare of a user namespace, mount, bpf, ...).
//!
//! The CRI asks for one of three profiles ([`Request`]): Unconfined (also
//! what a nil profile means), RuntimeDefault (the built-in profile in
//! [`default`], containerd 2's) or Localhost (an OCI/Docker JSON file on
//! the node, [`profile`]). The daemon compiles the profile into a BPF
//! program at CreateContainer ([`compile`], libseccomp), so a missing or
//! malformed profile is InvalidArgument before anything exists; the program
//! travels to the container's init, which loads it with seccomp(2) in
//! runc's order (`crate::sys::seccomp`). Privileged containers run
//! unconfined whatever they ask for.

mod compile;
mod default;
mod profile;

use std::collections::HashSet;
use std::io::Read;
use std::path::PathBuf;

pub use compile::{Host, Reason, cap_key, compile};
pub use profile::Profile;

use crate::error::{Classify, Kind};

/// A Localhost profile larger than this is refused (the moby default
/// profile is 20 KiB).
const MAX_PROFILE_BYTES: u64 = 4 << 20;

/// The profile the CRI asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Request {
    /// No filter: the CRI's nil profile and `unconfined`.
    #[default]
    Unconfined,
    /// The built-in profile.
    RuntimeDefault,
    /// A profile file on the node; `field` is the CRI field that named it
    /// (for errors).
    Localhost { path: PathBuf, field: &'static str },
}

/// A compiled filter, as seccomp(2) takes it: the type the monitor's
/// protocol carries to the init.
pub use crate::monitor::protocol::SeccompFilter as Filter;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp profile {path} ({field}): {reason}")]
    File {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
    #[error("seccomp profile {origin}: {field}: {reason}")]
    Invalid {
        origin: String,
        field: String,
        reason: Reason,
    },
    #[error("seccomp profile {origin}: {what}")]
    Compile {
        origin: String,
        what: String,
        #[source]
        source: libseccomp::error::SeccompError,
    },
    #[error("seccomp profile {origin}: {what}")]
    Export {
        origin: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            // What libseccomp refuses comes from the profile's rules.
            Error::File { .. } | Error::Invalid { .. } | Error::Compile { .. } => {
                Kind::InvalidArgument
            }
            Error::Export { .. } => Kind::Internal,
        }
    }
}

/// The filter for a container holding the capabilities `caps` (any
/// spelling: `SYS_ADMIN`, `CAP_SYS_ADMIN`); `None` runs it unconfined.
pub fn prepare<'a>(
    request: &Request,
    privileged: bool,
    caps: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Filter>, Error> {
    if privileged {
        return Ok(None);
    }
    let caps: HashSet<String> = caps.into_iter().map(cap_key).collect();
    let host = Host::current();
    match request {
        Request::Unconfined => Ok(None),
        Request::RuntimeDefault => {
            compile(&default::profile(), "RuntimeDefault", &caps, &host).map(Some)
        }
        Request::Localhost { path, field } => {
            let profile = read(path, field)?;
            compile(&profile, &path.display().to_string(), &caps, &host).map(Some)
        }
    }
}

/// Reads and parses a Localhost profile; every failure names the file and
/// the CRI field.
fn read(path: &std::path::Path, field: &'static str) -> Result<Profile, Error> {
    let fail = |reason: String| Error::File {
        path: path.to_path_buf(),
        field,
        reason,
    };
    if !path.is_absolute() {
        return Err(fail("the path is not absolute".into()));
    }
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut text = Vec::new();
    file.take(MAX_PROFILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > MAX_PROFILE_BYTES {
        return Err(fail(format!("larger than {MAX_PROFILE_BYTES} bytes")));
    }
    serde_json::from_slice(&text).map_err(|e| fail(format!("not a seccomp profile: {e}")))
}

#[cfg(test)]
mod tests;
