//! Images: pulled from OCI registries, stored once, unpacked once per layer.
//!
//! On disk, under `<root>/image/`:
//! - `blobs/sha256/<hex>`: the content store of manifests, indexes and
//!   configs. Every blob is streamed into `tmp/` while its sha256 is
//!   computed, and renamed here only when the digest matches. Layer blobs
//!   are not stored: they unpack as they download (`pull.rs`).
//! - `layers/<n>`: one directory per layer *chain id*, unpacked in overlay
//!   format (whiteouts are 0/0 character devices, opaque directories carry
//!   `trusted.overlay.opaque=y`). Names are short numbers so that an overlay
//!   mount's `lowerdir=` fits in one page; the chain id -> number mapping is
//!   the `layers` table of the metadata database.
//! - `tmp/`: downloads in progress; emptied at every start.
//!
//! Metadata (images, layers) lives in [`crate::store::Store`]; an image
//! record is written in one transaction after all of its content is in
//! place (each layer record after its layer is synced to disk), so a
//! failed, cancelled or crashed pull leaves no image record, and the
//! garbage collection that runs at start, after a failed pull and after
//! RemoveImage deletes content no record references.
//!
//! # The API containers use
//! - [`Images::lookup`]: an image by id, unique id prefix, tag or digest.
//! - [`ImageRecord::config`]: Entrypoint, Cmd, Env, User, WorkingDir,
//!   StopSignal, ExposedPorts, Volumes of the image config.
//! - [`Images::layer_dirs`]: the layer directories lowest first, ready for
//!   an overlay `lowerdir` (which wants them highest first: reverse them).
//! - [`Images::set_in_use`]: registers the predicate RemoveImage consults;
//!   an image in use is refused with FailedPrecondition.

mod content;
mod gc;
mod manifest;
mod pull;
pub mod reference;
mod registry;
mod unpack;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Classify, Kind};
use crate::store::{self, Store, Table};

pub use pull::Auth;
pub use reference::Reference;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {0:?}: {1}")]
    BadReference(String, String),
    #[error("image {0:?} not found")]
    NotFound(String),
    #[error("image {0} is in use by a container")]
    InUse(String),
    #[error("pull {reference}: {message}")]
    Registry {
        reference: String,
        message: String,
        kind: Kind,
    },
    #[error("pull {reference}: no progress for {secs} s, pull cancelled")]
    Stalled { reference: String, secs: u64 },
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("invalid image content: {0}")]
    BadContent(String),
    #[error("{what} is larger than the {limit}-byte limit ({key})")]
    TooLarge {
        what: String,
        limit: u64,
        key: &'static str,
    },
    #[error("unpack layer {digest}: {message}")]
    Unpack { digest: String, message: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry hosts config {path}: {message}")]
    HostsConfig { path: PathBuf, message: String },
    #[error(transparent)]
    Id(#[from] crate::ids::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("{0}")]
    Shared(Arc<Error>),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::BadReference(..) | Error::Id(_) => Kind::InvalidArgument,
            Error::NotFound(_) => Kind::NotFound,
            Error::InUse(_) => Kind::FailedPrecondition,
            Error::Registry { kind, .. } => *kind,
            Error::Stalled { .. } => Kind::DeadlineExceeded,
            Error::DigestMismatch { .. }
            | Error::BadContent(_)
            | Error::TooLarge { .. }
            | Error::Unpack { .. } => Kind::FailedPrecondition,
            Error::HostsConfig { .. } => Kind::FailedPrecondition,
            Error::Io { .. } | Error::Store(_) => Kind::Internal,
            Error::Shared(e) => e.kind(),
        }
    }
}

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The subset of the OCI image config that containers run with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    pub working_dir: String,
    pub stop_signal: String,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// One layer of an image, lowest first in [`ImageRecord::layers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRef {
    /// Digest of the (compressed) blob as the manifest names it.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    /// Identity of the layer with all those below it.
    pub chain_id: String,
}

/// An image as stored: `id` is the config digest (`sha256:...`), the
/// identity kubelet and containers use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Config plus compressed layer sizes, as the manifest states them.
    pub size: u64,
    /// Manifests and indexes that led to this image (kept in the store).
    pub manifests: Vec<String>,
    pub layers: Vec<LayerRef>,
    pub config: ImageConfig,
    /// Annotations of the image manifest.
    pub annotations: BTreeMap<String, String>,
}

impl ImageRecord {
    /// The config's User split as CRI wants it: a numeric uid, or a name,
    /// read by the parser the container init uses (so the uid kubelet's
    /// runAsNonRoot check sees is the uid the process gets). A USER that
    /// is not valid (`-1`, `4294967296`) is reported as a name: kubelet
    /// then refuses runAsNonRoot ("non-numeric user"), and CreateContainer
    /// refuses the user with InvalidArgument.
    pub fn user(&self) -> (Option<i64>, String) {
        use crate::init::user::{Who, parse};
        if self.config.user.is_empty() {
            return (None, String::new());
        }
        match parse(&self.config.user) {
            Ok(spec) => match spec.user {
                Who::Id(uid) => (Some(i64::from(uid)), String::new()),
                Who::Name(name) => (None, name.to_string()),
            },
            Err(_) => {
                let user = self.config.user.split(':').next().unwrap_or_default();
                (None, user.to_string())
            }
        }
    }
}

/// An unpacked layer directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Directory name under `layers/`.
    pub dir: u64,
    pub diff_id: String,
    pub parent: Option<String>,
}

const IMAGES: Table<ImageRecord> = Table::new("images");
const LAYERS: Table<LayerRecord> = Table::new("layers");
const META: Table<u64> = Table::new("image_meta");
const NEXT_LAYER_DIR: &str = "next_layer_dir";

/// How long an ImageFsInfo answer is reused when nothing was pulled or
/// removed in between.
const USAGE_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Blob downloads at once (containerd's default is 3 per pull; this is for
/// all pulls together).
const MAX_DOWNLOADS: usize = 6;

type InUse = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// Disk usage of the image filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub timestamp_ns: i64,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// The image service: cheap to clone (all state is shared).
#[derive(Clone)]
pub struct Images {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Arc<Store>,
    pub(crate) dirs: Dirs,
    pub(crate) config: crate::config::RegistryConfig,
    /// Content a running pull is about to reference: blob digests and chain
    /// ids that garbage collection must keep. Also serialises GC.
    pub(crate) busy: Mutex<HashMap<String, usize>>,
    /// Layers being downloaded/unpacked, shared by concurrent pulls.
    pub(crate) inflight: pull::Inflight,
    /// Bounds the blob downloads running at once, across all pulls.
    pub(crate) downloads: tokio::sync::Semaphore,
    /// The last ImageFsInfo walk: kubelet asks every few seconds, and the
    /// walk visits every file of every layer. Cleared by pulls and removals.
    usage: Mutex<Option<(std::time::Instant, FsUsage)>>,
    in_use: RwLock<Option<InUse>>,
}

/// The directories of the image store.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub root: PathBuf,
    pub blobs: PathBuf,
    pub layers: PathBuf,
    pub tmp: PathBuf,
}

impl Dirs {
    pub fn new(root: &Path) -> Dirs {
        let root = root.join("image");
        Dirs {
            blobs: root.join("blobs/sha256"),
            layers: root.join("layers"),
            tmp: root.join("tmp"),
            root,
        }
    }

    pub fn blob(&self, digest: &str) -> PathBuf {
        self.blobs
            .join(digest.strip_prefix("sha256:").unwrap_or(digest))
    }

    pub fn layer(&self, dir: u64) -> PathBuf {
        self.layers.join(dir.to_string())
    }
}

impl Images {
    /// Opens the image store under the configured root: creates its
    /// directories, empties `tmp/` and collects garbage a crash left.
    pub fn open(config: &Config, store: Arc<Store>) -> Result<Images> {
        let dirs = Dirs::new(&config.root);
        for dir in [&dirs.blobs, &dirs.layers] {
            std::fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        }
        if dirs.tmp.exists() {
            std::fs::remove_dir_all(&dirs.tmp).map_err(io_err("remove", &dirs.tmp))?;
        }
        std::fs::create_dir_all(&dirs.tmp).map_err(io_err("create directory", &dirs.tmp))?;
        let images = Images {
            inner: Arc::new(Inner {
                store,
                dirs,
                config: config.registry.clone(),
                busy: Mutex::new(HashMap::new()),
                inflight: Default::default(),
                downloads: tokio::sync::Semaphore::new(MAX_DOWNLOADS),
                usage: Mutex::new(None),
                in_use: RwLock::new(None),
            }),
        };
        images.inner.collect_garbage()?;
        Ok(images)
    }

    pub fn dirs(&self) -> &Dirs {
        &self.inner.dirs
    }

    /// Registers the predicate RemoveImage asks, with the image id, before
    /// removing: `true` refuses the removal (FailedPrecondition).
    pub fn set_in_use(&self, f: impl Fn(&str) -> bool + Send + Sync + 'static) {
        *self.inner.in_use.write().expect("lock poisoned") = Some(Box::new(f));
    }

    /// Every image, optionally only those `filter` (any reference form)
    /// names.
    pub fn list(&self, filter: Option<&str>) -> Result<Vec<ImageRecord>> {
        match filter.filter(|f| !f.is_empty()) {
            Some(f) => Ok(self.lookup(f)?.into_iter().collect()),
            None => Ok(self
                .inner
                .store
                .list(IMAGES)?
                .into_iter()
                .map(|(_, r)| r)
                .collect()),
        }
    }

    /// Finds an image by id (`sha256:<hex>` or a unique hex prefix of it),
    /// by tag (`busybox`, `docker.io/library/busybox:1`) or by digest
    /// (`busybox@sha256:...`). `Ok(None)` when none matches.
    pub fn lookup(&self, name: &str) -> Result<Option<ImageRecord>> {
        let all = self.inner.store.list(IMAGES)?;
        if let Some((_, r)) = all.iter().find(|(id, _)| id == name) {
            return Ok(Some(r.clone()));
        }
        if let Ok(reference) = Reference::parse(name) {
            let found = all.iter().find(|(_, r)| match &reference.digest {
                Some(d) => r.repo_digests.contains(&reference.repo_digest(d)),
                None => reference
                    .repo_tag()
                    .is_some_and(|t| r.repo_tags.contains(&t)),
            });
            if let Some((_, r)) = found {
                return Ok(Some(r.clone()));
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if !hex.is_empty() && hex.len() <= 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let ids = all.iter().map(|(id, _)| &id["sha256:".len()..]);
            if let Some(id) = crate::ids::resolve(hex, ids)? {
                let id = format!("sha256:{id}");
                return Ok(all.into_iter().find(|(i, _)| *i == id).map(|(_, r)| r));
            }
        }
        Ok(None)
    }

    /// Whether kubelet's image GC must keep this image: the sandbox image.
    pub fn is_pinned(&self, image: &ImageRecord) -> bool {
        let Ok(sandbox) = Reference::parse(&self.inner.config.sandbox_image) else {
            return false;
        };
        match (&sandbox.digest, sandbox.repo_tag()) {
            (Some(d), _) => image.repo_digests.contains(&sandbox.repo_digest(d)),
            (None, Some(tag)) => image.repo_tags.contains(&tag),
            (None, None) => false,
        }
    }

    /// The layer directories of an image, lowest first.
    pub fn layer_dirs(&self, image: &ImageRecord) -> Result<Vec<PathBuf>> {
        image
            .layers
            .iter()
            .map(|l| {
                let rec =
                    self.inner.store.get(LAYERS, &l.chain_id)?.ok_or_else(|| {
                        Error::BadContent(format!("layer {} is missing", l.chain_id))
                    })?;
                Ok(self.inner.dirs.layer(rec.dir))
            })
            .collect()
    }

    /// The image config blob as stored (JSON), for ImageStatus verbose.
    pub fn raw_config(&self, image: &ImageRecord) -> Result<Vec<u8>> {
        let path = self.inner.dirs.blob(&image.id);
        std::fs::read(&path).map_err(io_err("read", path))
    }

    /// Pulls `reference` (never the sandbox image's job: kubelet asks) and
    /// returns the image id. Concurrent pulls share layer downloads. The
    /// pull runs as its own task: if the caller goes away (deadline), it
    /// completes or fails on its own, never leaving a partial record.
    pub async fn pull(&self, reference: &str, auth: Auth) -> Result<String> {
        let reference = Reference::parse(reference)?;
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let result = pull::pull(&inner, &reference, &auth).await;
            if let Err(err) = &result {
                tracing::warn!(%reference, error = %crate::error::chain(err), "pull failed");
                let inner = inner.clone();
                let _ = tokio::task::spawn_blocking(move || inner.collect_garbage()).await;
            }
            *inner.usage.lock().expect("lock poisoned") = None;
            // The pull's receive buffers came from malloc's heap
            // (sys::malloc, MMAP_THRESHOLD) and are free now: hand them
            // back at once, not at the trimmer's next look.
            drop(tokio::task::spawn_blocking(crate::sys::malloc::trim));
            result
        });
        task.await
            .map_err(|e| Error::BadContent(format!("pull task failed: {e}")))?
    }

    /// Removes the image `name` names with all its tags; `Ok(false)` when
    /// there was none. Content no other image uses is deleted.
    pub async fn remove(&self, name: &str) -> Result<bool> {
        let Some(image) = self.lookup(name)? else {
            return Ok(false);
        };
        if let Some(in_use) = self.inner.in_use.read().expect("lock poisoned").as_ref()
            && in_use(&image.id)
        {
            return Err(Error::InUse(image.id));
        }
        let existed = self.inner.store.delete(IMAGES, &image.id)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.collect_garbage())
            .await
            .map_err(|e| Error::BadContent(format!("garbage collection task failed: {e}")))??;
        *self.inner.usage.lock().expect("lock poisoned") = None;
        Ok(existed)
    }

    /// Bytes and inodes used under the image store (a walk at most every
    /// USAGE_TTL unless images changed).
    pub async fn fs_usage(&self) -> Result<FsUsage> {
        if let Some((at, usage)) = *self.inner.usage.lock().expect("lock poisoned")
            && at.elapsed() < USAGE_TTL
        {
            return Ok(usage);
        }
        let root = self.inner.dirs.root.clone();
        let usage = tokio::task::spawn_blocking(move || gc::usage(&root))
            .await
            .map_err(|e| Error::BadContent(format!("usage task failed: {e}")))??;
        *self.inner.usage.lock().expect("lock poisoned") = Some((std::time::Instant::now(), usage));
        Ok(usage)
    }
}

impl Inner {
    /// Marks content as used by a running pull (GC keeps it).
    pub(crate) fn hold(self: &Arc<Self>, keys: &[String]) -> Hold {
        let mut busy = self.busy.lock().expect("lock poisoned");
        for k in keys {
            *busy.entry(k.clone()).or_default() += 1;
        }
        Hold {
            inner: self.clone(),
            keys: keys.to_vec(),
        }
    }

    /// Every blob digest and chain id the images reference.
    fn referenced(&self) -> Result<HashSet<String>> {
        let mut keep = HashSet::new();
        for (_, image) in self.store.list(IMAGES)? {
            keep.insert(image.id.clone());
            keep.extend(image.manifests.iter().cloned());
            // Layer blobs are not kept (an older crius stored them): the
            // unpacked layer is the layer.
            keep.extend(image.layers.into_iter().map(|l| l.chain_id));
        }
        Ok(keep)
    }
}

/// Content held by a pull; released on drop.
pub(crate) struct Hold {
    inner: Arc<Inner>,
    keys: Vec<String>,
}

impl Hold {
    /// Takes over keys already counted in `busy`.
    pub(crate) fn adopt(inner: &Arc<Inner>, keys: Vec<String>) -> Hold {
        Hold {
            inner: inner.clone(),
            keys,
        }
    }

    pub(crate) fn add(&mut self, keys: &[String]) {
        let mut busy = self.inner.busy.lock().expect("lock poisoned");
        for k in keys {
            *busy.entry(k.clone()).or_default() += 1;
            self.keys.push(k.clone());
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut busy = self.inner.busy.lock().expect("lock poisoned");
        for k in &self.keys {
            if let Some(n) = busy.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    busy.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "images_tests.rs"]
mod tests;
