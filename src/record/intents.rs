//! The write-ahead intents of creations under way, one file each beside
//! the database (`<root>/intents/<kind>-<id>.json`, 0600 in a 0700 dir).
//!
//! An intent must outlive what a crash leaves of the creation's side
//! effects, no more. Most of them are kernel objects (cgroups, mounts,
//! namespaces, processes): they survive a crash of crius and end with the
//! machine. A file written without an fsync does the same: the page cache
//! keeps it when crius dies, so the next start finds the intent and rolls
//! the creation back. What a creation leaves on disk across a crash of
//! the machine (a container's or a pod's directory) is found by the
//! start's sweeps of directories no record owns, not from the intent, and
//! the CNI cache that a DEL needs after a reboot is fsynced before the
//! first plugin runs. So an intent costs a write and a rename, not an
//! fsync: the record itself is written lazily beside it
//! ([`super::Records::put_intent`]), and becomes durable with the claim.
//!
//! The file lives from the intent until the record is claimed or deleted;
//! a file left by a crash is read by [`super::reconcile`].

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
#[error("write the intent {path}")]
pub struct Error {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The directory of intent files.
#[derive(Debug, Clone)]
pub struct Intents {
    dir: PathBuf,
}

/// An intent file found at start: its record, or `None` when the file
/// cannot be read as one (a machine crash can leave it empty).
pub struct Found<R> {
    pub id: String,
    pub record: Option<R>,
}

impl crate::error::Classify for Error {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::Internal
    }
}

impl Intents {
    pub fn new(dir: PathBuf) -> Intents {
        Intents { dir }
    }

    fn path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.join(format!("{kind}-{id}.json"))
    }

    /// Where `write` puts the new intent before renaming it over `path`.
    fn tmp_path(&self, kind: &str, id: &str) -> PathBuf {
        self.dir.join(format!(".{kind}-{id}.tmp"))
    }

    /// Writes (or replaces) the intent of record `id`: a temporary file
    /// renamed over it, so a crash leaves the old intent or the new one.
    pub fn write<R: Serialize>(&self, kind: &str, id: &str, rec: &R) -> Result<(), Error> {
        let path = self.path(kind, id);
        let tmp = self.tmp_path(kind, id);
        let err = |source| Error {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec(rec).map_err(|e| err(std::io::Error::other(e)))?;
        let open = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
        };
        let mut file = match open() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&self.dir)
                    .map_err(err)?;
                open()
            }
            r => r,
        }
        .map_err(err)?;
        file.write_all(&bytes).map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(err)
    }

    /// Removes the intent of record `id`, if there is one.
    pub fn remove(&self, kind: &str, id: &str) {
        let path = self.path(kind, id);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "remove intent");
        }
    }

    /// The intents of `kind` left in the directory. A temporary file of
    /// a write that a crash interrupted (`.<kind>-<id>.tmp`) is removed:
    /// the intent it was to replace, or none, is the one to go by. Other
    /// names that are not `<kind>-<64 hex digits>.json` are not crius's
    /// and are left alone.
    pub fn list<R: DeserializeOwned>(&self, kind: &str) -> Vec<Found<R>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str() else {
                continue;
            };
            if name
                .strip_prefix('.')
                .and_then(|n| id_in(n, kind, ".tmp"))
                .is_some()
            {
                if let Err(e) = std::fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "remove an interrupted intent write");
                }
                continue;
            }
            let Some(id) = id_in(name, kind, ".json") else {
                continue;
            };
            found.push(Found {
                id: id.to_string(),
                record: read(&entry.path()),
            });
        }
        found
    }
}

/// The id in a name `<kind>-<id><suffix>`, if it is one crius gives.
fn id_in<'a>(name: &'a str, kind: &str, suffix: &str) -> Option<&'a str> {
    name.strip_prefix(kind)?
        .strip_prefix('-')?
        .strip_suffix(suffix)
        .filter(|id| crate::ids::is_id(id))
}

fn read<R: DeserializeOwned>(path: &Path) -> Option<R> {
    let bytes = std::fs::read(path)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "read intent"))
        .ok()?;
    serde_json::from_slice(&bytes)
        .map_err(|e| tracing::warn!(path = %path.display(), error = %e, "an intent that is not a record"))
        .ok()
}
