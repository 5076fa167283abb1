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
//!
//! Compiled filters are kept ([`FilterCache`]) by what decides them: the
//! profile (RuntimeDefault, or the SHA-256 of a Localhost file's bytes,
//! read again at every CreateContainer, so an edited file is compiled
//! anew), the container's capabilities and the host. Most containers of a
//! node share one profile, and compiling RuntimeDefault with libseccomp
//! costs more than the rest of the spec.

mod compile;
mod default;
mod profile;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

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
/// A profile compiled before for the same capabilities comes from the
/// process-wide [`FilterCache`].
pub fn prepare<'a>(
    request: &Request,
    privileged: bool,
    caps: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Filter>, Error> {
    static CACHE: OnceLock<FilterCache> = OnceLock::new();
    prepare_with(
        CACHE.get_or_init(FilterCache::default),
        request,
        privileged,
        caps,
    )
}

fn prepare_with<'a>(
    cache: &FilterCache,
    request: &Request,
    privileged: bool,
    caps: impl IntoIterator<Item = &'a str>,
) -> Result<Option<Filter>, Error> {
    if privileged {
        return Ok(None);
    }
    let caps: BTreeSet<String> = caps.into_iter().map(cap_key).collect();
    let host = Host::current();
    let (source, text) = match request {
        Request::Unconfined => return Ok(None),
        Request::RuntimeDefault => (Source::RuntimeDefault, None),
        Request::Localhost { path, field } => {
            let text = read(path, field)?;
            let digest: [u8; 32] =
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&text))
                    .into();
            (Source::Localhost(digest), Some(text))
        }
    };
    let key = CacheKey {
        source,
        caps,
        arch: host.arch,
        kernel: host.kernel,
    };
    if let Some(filter) = cache.get(&key) {
        return Ok(Some(filter));
    }
    let set: HashSet<String> = key.caps.iter().cloned().collect();
    let filter = match (request, text) {
        (Request::Localhost { path, field }, Some(text)) => {
            let profile: Profile = serde_json::from_slice(&text).map_err(|e| Error::File {
                path: path.clone(),
                field,
                reason: format!("not a seccomp profile: {e}"),
            })?;
            compile(&profile, &path.display().to_string(), &set, &host)?
        }
        _ => compile(&default::profile(), "RuntimeDefault", &set, &host)?,
    };
    cache.put(key, filter.clone());
    Ok(Some(filter))
}

/// Where a compiled profile came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    RuntimeDefault,
    /// The SHA-256 of the Localhost file's bytes.
    Localhost([u8; 32]),
}

/// Everything a compiled filter depends on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    source: Source,
    /// [`cap_key`] names.
    caps: BTreeSet<String>,
    arch: &'static str,
    kernel: (u32, u32),
}

/// Compiled filters by [`CacheKey`]; at most [`FilterCache::LIMIT`]
/// entries (a node with more distinct profiles starts over), so a
/// stream of distinct Localhost files cannot grow the daemon.
#[derive(Default)]
struct FilterCache {
    map: Mutex<HashMap<CacheKey, Filter>>,
}

impl FilterCache {
    const LIMIT: usize = 64;

    fn get(&self, key: &CacheKey) -> Option<Filter> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn put(&self, key: CacheKey, filter: Filter) {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= Self::LIMIT {
            map.clear();
        }
        map.insert(key, filter);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

/// Reads a Localhost profile's bytes (at most [`MAX_PROFILE_BYTES`]);
/// every failure names the file and the CRI field.
fn read(path: &std::path::Path, field: &'static str) -> Result<Vec<u8>, Error> {
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
    Ok(text)
}

#[cfg(test)]
mod tests;
