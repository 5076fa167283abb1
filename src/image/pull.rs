//! Pulling an image: resolve the reference on the first endpoint that
//! answers (mirrors first), pick the host platform from an index, fetch the
//! config, then download every missing layer in parallel, each unpacked
//! into its own directory as its bytes arrive. The image record is written
//! last, in one transaction.
//!
//! Manifests: OCI image manifest and index, Docker schema2 manifest and
//! manifest list (same JSON shape). Manifests and the config are verified
//! against their digest and kept in the content store. A layer blob is
//! never stored: its bytes go from the socket through the decompressor
//! into the layer's files, its digest and length are checked on the way
//! (and the tar's against the config's diff_id), and the layer is recorded
//! only when both digests matched, the lower layers' part is done
//! ([`super::unpack::Pending`]) and its filesystem is synced; the layer
//! records and the layer dir counter are lazy writes, made durable by the
//! image record's write (one database fsync per pull besides the
//! manifests' and config's files, was eleven for five layers). After a
//! failed or interrupted (crashed) pull, garbage collection removes every
//! layer no image references, recorded or not; the next pull downloads
//! those layers again from their start.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use super::content::{self, Ingest, digest_of};
use super::registry::{self, Endpoint};
use super::{
    Error, IMAGES, ImageConfig, ImageRecord, Inner, LAYERS, LayerRecord, LayerRef, META,
    NEXT_LAYER_DIR, Reference, Result,
};
use crate::error::Kind;

/// Credentials from the CRI AuthConfig. Debug never shows secrets.
#[derive(Clone, Default)]
pub struct Auth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    /// A refresh token for the registry's token server (sent as password).
    pub identity_token: String,
    /// A bearer token sent as is.
    pub registry_token: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl Auth {
    fn to_registry_auth(&self) -> Result<RegistryAuth> {
        use base64::Engine;
        if !self.registry_token.is_empty() {
            return Ok(RegistryAuth::Bearer(self.registry_token.clone()));
        }
        if !self.identity_token.is_empty() {
            let user = if self.username.is_empty() {
                "<token>"
            } else {
                &self.username
            };
            return Ok(RegistryAuth::Basic(
                user.into(),
                self.identity_token.clone(),
            ));
        }
        if !self.username.is_empty() {
            return Ok(RegistryAuth::Basic(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        if !self.auth.is_empty() {
            let bad =
                || Error::BadReference("auth".into(), "auth is not base64 of user:password".into());
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(self.auth.trim())
                .map_err(|_| bad())?;
            let text = String::from_utf8(decoded).map_err(|_| bad())?;
            let (u, p) = text.split_once(':').ok_or_else(bad)?;
            return Ok(RegistryAuth::Basic(u.into(), p.into()));
        }
        Ok(RegistryAuth::Anonymous)
    }
}

const ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    /// Required: the exact length of the blob, where a download stops.
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RunConfig {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Option<Vec<String>>,
    user: Option<String>,
    working_dir: Option<String>,
    stop_signal: Option<String>,
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    volumes: Option<BTreeMap<String, serde_json::Value>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// In-flight layer jobs by chain id, shared by concurrent pulls.
pub type Inflight = Mutex<HashMap<String, SharedJob>>;
type SharedJob = Shared<BoxFuture<'static, Result<(), Arc<Error>>>>;

/// What a layer job needs to fetch its blob.
struct Fetch {
    client: oci_client::Client,
    reference: oci_client::Reference,
    timeout: Duration,
    name: String,
}

pub(super) fn registry_err(reference: &str, e: oci_client::errors::OciDistributionError) -> Error {
    use oci_client::errors::OciDistributionError as E;
    let kind = match &e {
        E::ImageManifestNotFoundError(_) => Kind::NotFound,
        E::ServerError { code: 404, .. } => Kind::NotFound,
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|x| {
                matches!(
                    x.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                        | oci_client::errors::OciErrorCode::BlobUnknown
                )
            }) =>
        {
            Kind::NotFound
        }
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => Kind::FailedPrecondition,
        E::ServerError {
            code: 401 | 403, ..
        } => Kind::FailedPrecondition,
        _ => Kind::Unavailable,
    };
    Error::Registry {
        reference: reference.to_string(),
        message: crate::error::chain(&e),
        kind,
    }
}

async fn within<T>(timeout: Duration, name: &str, f: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| Error::Stalled {
            reference: name.to_string(),
            secs: timeout.as_secs(),
        })
}

/// Pulls `reference`; returns the image id (config digest).
pub async fn pull(inner: &Arc<Inner>, reference: &Reference, auth: &Auth) -> Result<String> {
    let name = reference.to_string();
    let endpoints = registry::endpoints(&inner.config.config_path, &reference.registry)?;
    // Each endpoint's failure, so that a fallback's error (plain HTTP to a
    // TLS server) does not hide the first one's (an untrusted certificate).
    let mut failed: Vec<(String, String, Kind)> = Vec::new();
    for ep in endpoints
        .iter()
        .filter(|e| e.pull && (e.resolve || reference.digest.is_some()))
    {
        match pull_from(inner, reference, auth, ep).await {
            Ok(id) => return Ok(id),
            // Only a registry that fails to answer sends us to the next one;
            // bad content is an error whoever served it.
            Err(Error::Registry {
                mut message, kind, ..
            }) => {
                if let Some(hint) = registry::tls_hint(&message) {
                    message = format!("{message} ({hint})");
                }
                tracing::debug!(endpoint = %ep.url(), error = %message, "endpoint failed");
                failed.push((ep.url(), message, kind));
            }
            Err(err) => return Err(err),
        }
    }
    Err(endpoints_failed(name, failed))
}

/// The error of a pull that no endpoint served: the last endpoint's kind,
/// every endpoint's message.
fn endpoints_failed(reference: String, mut failed: Vec<(String, String, Kind)>) -> Error {
    let Some((_, _, kind)) = failed.last() else {
        return Error::Registry {
            reference,
            message: "no registry host configured for pulling it".into(),
            kind: Kind::FailedPrecondition,
        };
    };
    let kind = *kind;
    let message = if failed.len() == 1 {
        failed.remove(0).1
    } else {
        failed
            .iter()
            .map(|(url, message, _)| format!("{url}: {message}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    Error::Registry {
        reference,
        message,
        kind,
    }
}

async fn pull_from(
    inner: &Arc<Inner>,
    reference: &Reference,
    auth: &Auth,
    ep: &Endpoint,
) -> Result<String> {
    let name = reference.to_string();
    let timeout = inner.config.pull_progress_timeout();
    let client = ep.client()?;
    let http = ep.http_client()?;
    let limit = inner.config.max_manifest_bytes;
    let mut oref = match (&reference.tag, &reference.digest) {
        (_, Some(d)) => oci_client::Reference::with_digest(
            reference.registry.clone(),
            reference.repository.clone(),
            d.clone(),
        ),
        (Some(t), None) => oci_client::Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            t.clone(),
        ),
        (None, None) => unreachable!("parse always sets a tag or a digest"),
    };
    if oref.resolve_registry() != ep.host {
        oref.set_mirror_registry(ep.host.clone());
    }
    let rauth = auth.to_registry_auth()?;
    let source = super::manifest::Source {
        endpoint: ep,
        http: &http,
        oci: &client,
        auth: &rauth,
        name: &name,
    };

    // 1. The manifest (or index) the reference names.
    let bytes = within(
        timeout,
        &name,
        source.fetch(&oref, ACCEPT, limit, "manifest"),
    )
    .await??;
    let top_digest = digest_of(&bytes);
    if let Some(d) = &reference.digest
        && *d != top_digest
    {
        return Err(Error::DigestMismatch {
            what: format!("manifest of {name}"),
            expected: d.clone(),
            actual: top_digest,
        });
    }
    let mut manifests = vec![(top_digest.clone(), bytes.to_vec())];
    let mut manifest: Manifest = parse_json(&bytes, "manifest")?;

    // 2. An index: the host's platform.
    if let Some(list) = &manifest.manifests {
        let arch = host_arch();
        let chosen = list
            .iter()
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == arch)
            })
            .ok_or_else(|| Error::BadContent(format!("{name} has no image for linux/{arch}")))?;
        let digest = chosen.digest.clone();
        super::reference::check_digest(&digest).map_err(Error::BadContent)?;
        if chosen.size > limit {
            return Err(Error::TooLarge {
                what: format!(
                    "platform manifest {digest} of {name} ({} bytes)",
                    chosen.size
                ),
                limit,
                key: "registry.max_manifest_bytes",
            });
        }
        let child = oci_client::Reference::with_digest(
            reference.registry.clone(),
            reference.repository.clone(),
            digest.clone(),
        );
        let mut child = child;
        if child.resolve_registry() != ep.host {
            child.set_mirror_registry(ep.host.clone());
        }
        let bytes = within(
            timeout,
            &name,
            source.fetch(&child, ACCEPT, limit, "platform manifest"),
        )
        .await??;
        let actual = digest_of(&bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("platform manifest of {name}"),
                expected: digest,
                actual,
            });
        }
        manifest = parse_json(&bytes, "manifest")?;
        manifests.push((actual, bytes.to_vec()));
    }
    let config_desc = manifest
        .config
        .as_ref()
        .ok_or_else(|| Error::BadContent(format!("manifest of {name} has no config")))?;
    let id = config_desc.digest.clone();
    super::reference::check_digest(&id).map_err(Error::BadContent)?;
    if config_desc.size > limit {
        return Err(Error::TooLarge {
            what: format!("image config {id} of {name} ({} bytes)", config_desc.size),
            limit,
            key: "registry.max_manifest_bytes",
        });
    }
    for l in &manifest.layers {
        super::reference::check_digest(&l.digest).map_err(Error::BadContent)?;
    }

    // 3. Hold everything this image will reference, then fetch the config.
    let mut keys: Vec<String> = manifests.iter().map(|(d, _)| d.clone()).collect();
    keys.push(id.clone());
    let mut hold = inner.hold(&keys);
    let fetch = Arc::new(Fetch {
        client,
        reference: oref,
        timeout,
        name: name.clone(),
    });
    fetch_blob(inner, &fetch, &id, config_desc.size, "config").await?;
    let config_path = inner.dirs.blob(&id);
    let config_bytes = std::fs::read(&config_path).map_err(super::io_err("read", &config_path))?;
    let config: ConfigFile = parse_json(&config_bytes, "image config")?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::BadContent(format!(
            "{name}: the config lists {} diff_ids for {} layers",
            config.rootfs.diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let mut layers = Vec::new();
    let mut chain: Option<String> = None;
    for (desc, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        super::reference::check_digest(diff_id).map_err(Error::BadContent)?;
        let chain_id = match &chain {
            None => diff_id.clone(),
            Some(parent) => digest_of(format!("{parent} {diff_id}").as_bytes()),
        };
        layers.push(LayerRef {
            digest: desc.digest.clone(),
            diff_id: diff_id.clone(),
            chain_id: chain_id.clone(),
        });
        chain = Some(chain_id);
    }
    hold.add(
        &layers
            .iter()
            .map(|l| l.chain_id.clone())
            .collect::<Vec<_>>(),
    );
    for (digest, bytes) in &manifests {
        content::put_bytes(&inner.dirs, "manifest", digest, bytes).await?;
    }

    // 4. Layers: each downloaded and unpacked at once, all in parallel;
    //    each finished and recorded after the layers below it.
    let mut jobs = Vec::new();
    let mut parent: Option<(String, SharedJob)> = None;
    for (l, desc) in layers.iter().zip(&manifest.layers) {
        let job = layer_job(
            inner,
            &fetch,
            l,
            desc.size,
            parent.as_ref().map(|p| p.0.clone()),
            parent.map(|p| p.1),
        );
        jobs.push(job.clone());
        parent = Some((l.chain_id.clone(), job));
    }
    for result in futures::future::join_all(jobs).await {
        result.map_err(Error::Shared)?;
    }

    // 5. The record, with the tag moved here from any other image.
    let size = config_desc.size + manifest.layers.iter().map(|l| l.size).sum::<u64>();
    let repo_tag = reference.repo_tag();
    let repo_digest = reference.repo_digest(&top_digest);
    let run = config.config.unwrap_or_default();
    let record = ImageRecord {
        id: id.clone(),
        repo_tags: repo_tag.iter().cloned().collect(),
        repo_digests: vec![repo_digest],
        size,
        manifests: manifests.into_iter().map(|(d, _)| d).collect(),
        layers,
        config: ImageConfig {
            entrypoint: run.entrypoint.unwrap_or_default(),
            cmd: run.cmd.unwrap_or_default(),
            env: run.env.unwrap_or_default(),
            user: run.user.unwrap_or_default(),
            working_dir: run.working_dir.unwrap_or_default(),
            stop_signal: run.stop_signal.unwrap_or_default(),
            exposed_ports: run.exposed_ports.unwrap_or_default().into_keys().collect(),
            volumes: run.volumes.unwrap_or_default().into_keys().collect(),
            labels: run.labels.unwrap_or_default(),
        },
        annotations: manifest.annotations,
    };
    record_image(&inner.store, record, repo_tag.as_deref())?;
    drop(hold);
    tracing::info!(image = %name, %id, "pulled");
    Ok(id)
}

/// Stores a pulled image and moves its tag here from any other image: one
/// read-modify-write transaction, so concurrent pulls never lose each
/// other's tags (redb serialises write transactions). Tags, digests and
/// manifests the image already had are kept.
pub(crate) fn record_image(
    store: &crate::store::Store,
    mut record: ImageRecord,
    repo_tag: Option<&str>,
) -> Result<()> {
    store.write(|txn| {
        for (other_id, mut other) in txn.list(IMAGES)? {
            if other_id == record.id {
                continue;
            }
            let before = other.repo_tags.len();
            other.repo_tags.retain(|t| Some(t.as_str()) != repo_tag);
            if other.repo_tags.len() != before {
                txn.put(IMAGES, &other_id, &other)?;
            }
        }
        if let Some(old) = txn.get(IMAGES, &record.id)? {
            merge_new(&mut record.repo_tags, old.repo_tags);
            merge_new(&mut record.repo_digests, old.repo_digests);
            merge_new(&mut record.manifests, old.manifests);
        }
        txn.put(IMAGES, &record.id, &record)?;
        Ok(())
    })
}

fn merge_new(into: &mut Vec<String>, from: Vec<String>) {
    for v in from {
        if !into.contains(&v) {
            into.push(v);
        }
    }
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::BadContent(format!("parse {what}: {e}")))
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Streams a blob (the config) into the content store unless it is there
/// already.
/// One of the daemon's download slots, held while a blob downloads.
async fn download_slot(inner: &Inner) -> Result<tokio::sync::SemaphorePermit<'_>> {
    inner
        .downloads
        .acquire()
        .await
        .map_err(|_| Error::BadContent("download slots closed".into()))
}

async fn fetch_blob(
    inner: &Inner,
    fetch: &Fetch,
    digest: &str,
    size: u64,
    what: &str,
) -> Result<()> {
    let dest = inner.dirs.blob(digest);
    if dest.exists() {
        return Ok(());
    }
    let name = &fetch.name;
    let _permit = download_slot(inner).await?;
    if dest.exists() {
        return Ok(());
    }
    let mut stream = within(
        fetch.timeout,
        name,
        fetch.client.pull_blob_stream(&fetch.reference, digest),
    )
    .await?
    .map_err(|e| registry_err(name, e))?;
    let mut ingest = Ingest::new(&inner.dirs.tmp).await?;
    loop {
        let chunk = within(fetch.timeout, name, stream.next()).await?;
        match chunk {
            None => break,
            // Cut at the descriptor's size: a registry that sends more is
            // not trusted with the disk (the partial file goes with ingest).
            Some(Ok(bytes)) if ingest.size() + bytes.len() as u64 > size => {
                return Err(Error::BadContent(format!(
                    "{what} {digest} of {name}: the registry sent more than the {size} bytes its descriptor declares"
                )));
            }
            Some(Ok(bytes)) => ingest.write(&bytes).await?,
            Some(Err(e)) => {
                return Err(Error::Registry {
                    reference: name.clone(),
                    message: format!("download {digest}: {e}"),
                    kind: Kind::Unavailable,
                });
            }
        }
    }
    ingest
        .commit(
            &format!("{what} {digest} of {name}"),
            digest,
            Some(size),
            &dest,
        )
        .await
}

/// The job that makes layer `l` available, shared with any other pull of
/// the same chain id.
fn layer_job(
    inner: &Arc<Inner>,
    fetch: &Arc<Fetch>,
    l: &LayerRef,
    size: u64,
    parent_id: Option<String>,
    parent: Option<SharedJob>,
) -> SharedJob {
    let mut map = inner.inflight.lock().expect("lock poisoned");
    if let Some(job) = map.get(&l.chain_id) {
        return job.clone();
    }
    if matches!(inner.store.get(LAYERS, &l.chain_id), Ok(Some(_))) {
        return futures::future::ready(Ok(())).boxed().shared();
    }
    let (inner2, fetch, l2) = (inner.clone(), fetch.clone(), l.clone());
    let handle = tokio::spawn(async move {
        let result = make_layer(&inner2, &fetch, &l2, size, parent_id, parent).await;
        inner2
            .inflight
            .lock()
            .expect("lock poisoned")
            .remove(&l2.chain_id);
        result.map_err(Arc::new)
    });
    let job = async move {
        handle.await.unwrap_or_else(|e| {
            Err(Arc::new(Error::BadContent(format!(
                "layer task failed: {e}"
            ))))
        })
    }
    .boxed()
    .shared();
    map.insert(l.chain_id.clone(), job.clone());
    job
}

/// Bytes of one layer download waiting for its unpacker, at most.
const PIPE_BUDGET: usize = 1 << 20;

async fn make_layer(
    inner: &Arc<Inner>,
    fetch: &Fetch,
    l: &LayerRef,
    size: u64,
    parent_id: Option<String>,
    parent: Option<SharedJob>,
) -> Result<()> {
    // A fresh directory number, held so GC leaves the directory alone.
    // Lazy (no fsync of its own): a record naming dir n is written after
    // this, and a durable commit makes every earlier commit durable, so
    // after a crash the counter is past every recorded dir; dirs beyond it
    // have no record and GC at start removes them before any pull.
    let dir = {
        let mut busy = inner.busy.lock().expect("lock poisoned");
        let n = inner.store.write_lazy(|txn| {
            let n = txn.get(META, NEXT_LAYER_DIR)?.unwrap_or(1);
            txn.put(META, NEXT_LAYER_DIR, &(n + 1))?;
            Ok::<_, crate::store::Error>(n)
        })?;
        *busy.entry(format!("dir:{n}")).or_default() += 1;
        n
    };
    let _dir_hold = super::Hold::adopt(inner, vec![format!("dir:{dir}")]);
    let target = inner.dirs.layer(dir);
    let result = async {
        let pending = stream_layer(inner, fetch, l, size, &target).await?;
        if let Some(parent) = parent {
            parent.await.map_err(Error::Shared)?;
        }
        let lowers = lower_dirs(inner, parent_id.clone())?;
        let (inner2, l2, target2) = (inner.clone(), l.clone(), target.clone());
        tokio::task::spawn_blocking(move || {
            pending
                .finish(&target2, &lowers)
                .map_err(|e| Error::Unpack {
                    digest: l2.digest.clone(),
                    message: crate::error::chain(&e),
                })?;
            // Lazy: durable with the image record (or any later durable
            // write). Its data is on disk already (the syncfs in finish),
            // so a record never outlives its files; a crash before then
            // loses only the record, and GC at start removes the dir.
            inner2.store.put_lazy(
                LAYERS,
                &l2.chain_id,
                &LayerRecord {
                    dir,
                    diff_id: l2.diff_id.clone(),
                    parent: parent_id,
                },
            )?;
            Ok(())
        })
        .await
        .map_err(|e| Error::BadContent(format!("unpack task failed: {e}")))?
    }
    .await;
    if result.is_err() {
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(target)).await;
    }
    result
}

/// The directories of layer `parent` and those below it, highest first.
fn lower_dirs(inner: &Inner, parent: Option<String>) -> Result<Vec<std::path::PathBuf>> {
    let mut lowers = Vec::new();
    let mut next = parent;
    while let Some(id) = next {
        let rec = inner
            .store
            .get(LAYERS, &id)?
            .ok_or_else(|| Error::BadContent(format!("parent layer {id} is missing")))?;
        lowers.push(inner.dirs.layer(rec.dir));
        next = rec.parent;
    }
    Ok(lowers)
}

/// Downloads layer `l` and unpacks it into `target` (which it creates) as
/// the bytes arrive, on a blocking thread fed through a bounded pipe.
/// Fails unless the blob has the descriptor's length and digest and the
/// tar its diff_id; a blob that does not match its digest is reported as
/// such even when its content also failed to unpack.
async fn stream_layer(
    inner: &Inner,
    fetch: &Fetch,
    l: &LayerRef,
    size: u64,
    target: &std::path::Path,
) -> Result<super::unpack::Pending> {
    let name = &fetch.name;
    let _permit = download_slot(inner).await?;
    let mut stream = within(
        fetch.timeout,
        name,
        fetch
            .client
            .pull_blob_stream(&fetch.reference, l.digest.as_str()),
    )
    .await?
    .map_err(|e| registry_err(name, e))?;
    let (tx, mut rx) = content::pipe(PIPE_BUDGET);
    let limits = super::unpack::Limits {
        entries: inner.config.max_layer_entries,
        bytes: inner.config.max_layer_bytes,
    };
    let (target2, diff_id) = (target.to_path_buf(), l.diff_id.clone());
    let unpacker = tokio::task::spawn_blocking(move || {
        let unpacked = super::unpack::unpack(&mut rx, &target2, &diff_id, limits);
        // To the end of the blob whatever the unpack said, for its digest.
        (unpacked, rx.verify())
    });
    let downloaded = async {
        let mut sent = 0u64;
        loop {
            match within(fetch.timeout, name, stream.next()).await? {
                None => return Ok(()),
                // Cut at the descriptor's size: a registry that sends more
                // is not trusted with the disk.
                Some(Ok(bytes)) if sent + bytes.len() as u64 > size => {
                    return Err(Error::BadContent(format!(
                        "layer {} of {name}: the registry sent more than the {size} bytes its descriptor declares",
                        l.digest
                    )));
                }
                Some(Ok(bytes)) => {
                    sent += bytes.len() as u64;
                    if !tx.send(bytes).await {
                        return Ok(());
                    }
                }
                Some(Err(e)) => {
                    return Err(Error::Registry {
                        reference: name.clone(),
                        message: format!("download {}: {e}", l.digest),
                        kind: Kind::Unavailable,
                    });
                }
            }
        }
    }
    .await;
    drop(tx);
    drop(stream);
    let (unpacked, (digest, got)) = unpacker
        .await
        .map_err(|e| Error::BadContent(format!("unpack task failed: {e}")))?;
    downloaded?;
    let what = format!("layer {} of {name}", l.digest);
    if got != size {
        return Err(Error::BadContent(format!(
            "{what}: expected {size} bytes, got {got}"
        )));
    }
    if digest != l.digest {
        return Err(Error::DigestMismatch {
            what,
            expected: l.digest.clone(),
            actual: digest,
        });
    }
    unpacked.map_err(|e| Error::Unpack {
        digest: l.digest.clone(),
        message: crate::error::chain(&e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_config_forms() {
        let a = Auth {
            auth: "dXNlcjpwYXNz".into(),
            ..Auth::default()
        };
        assert!(
            matches!(a.to_registry_auth().unwrap(), RegistryAuth::Basic(u, p) if u == "user" && p == "pass")
        );
        let a = Auth {
            registry_token: "tok".into(),
            ..Auth::default()
        };
        assert!(matches!(a.to_registry_auth().unwrap(), RegistryAuth::Bearer(t) if t == "tok"));
        assert!(matches!(
            Auth::default().to_registry_auth().unwrap(),
            RegistryAuth::Anonymous
        ));
        let a = Auth {
            username: "u".into(),
            password: "secret".into(),
            ..Auth::default()
        };
        assert!(!format!("{a:?}").contains("secret"));
        let bad = Auth {
            auth: "!!".into(),
            ..Auth::default()
        };
        assert!(bad.to_registry_auth().is_err());
    }

    fn image(id: &str, tag: &str) -> ImageRecord {
        ImageRecord {
            id: id.into(),
            repo_tags: vec![tag.into()],
            repo_digests: vec![format!("r@{id}")],
            size: 1,
            manifests: vec![format!("m-{id}")],
            layers: Vec::new(),
            config: ImageConfig::default(),
            annotations: BTreeMap::new(),
        }
    }

    /// Pulls that move tags away from one image and pulls that add tags to
    /// it, all at once: every tag ends on exactly the image its last pull
    /// named, none is lost (the list is read inside the write transaction).
    #[test]
    fn concurrent_pulls_keep_every_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::Store::open(&dir.path().join("db")).unwrap());
        const N: usize = 8;
        let mut shared = image("sha256:shared", "t/moved:0");
        shared.repo_tags = (0..N).map(|i| format!("t/moved:{i}")).collect();
        record_image(&store, shared, None).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(2 * N));
        let mut threads = Vec::new();
        for i in 0..N {
            // Moves tag i to its own image.
            let (s, b) = (store.clone(), barrier.clone());
            threads.push(std::thread::spawn(move || {
                let tag = format!("t/moved:{i}");
                b.wait();
                record_image(&s, image(&format!("sha256:own{i}"), &tag), Some(&tag)).unwrap();
            }));
            // Adds a new tag to the shared image.
            let (s, b) = (store.clone(), barrier.clone());
            threads.push(std::thread::spawn(move || {
                let tag = format!("t/added:{i}");
                b.wait();
                record_image(&s, image("sha256:shared", &tag), Some(&tag)).unwrap();
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        let all: BTreeMap<String, ImageRecord> = store.list(IMAGES).unwrap().into_iter().collect();
        let mut shared_tags = all["sha256:shared"].repo_tags.clone();
        shared_tags.sort();
        let want: Vec<String> = (0..N).map(|i| format!("t/added:{i}")).collect();
        assert_eq!(shared_tags, want, "added tags kept, moved ones gone");
        for i in 0..N {
            assert_eq!(
                all[&format!("sha256:own{i}")].repo_tags,
                [format!("t/moved:{i}")]
            );
        }
        let total: usize = all.values().map(|r| r.repo_tags.len()).sum();
        assert_eq!(total, 2 * N, "each tag on one image");
    }
}
