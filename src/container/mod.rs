//! Containers: the CRI container lifecycle and its translation into an OCI
//! runtime Spec.
//!
//! The translation (`spec`) is pure: CRI config + image config + the pod's
//! context in, an `oci_spec::runtime::Spec` out. The engine that creates the
//! container processes (src/init, src/monitor) consumes the Spec, so an
//! external OCI runtime could be plugged in later and the translation is
//! unit-tested without privileges.
//!
//! The service ([`Containers`]) is a state machine over records in the
//! metadata store (CREATING -> CREATED -> RUNNING -> EXITED -> removed),
//! built like the pod service: creation writes an intent before touching
//! the host, undoes finished steps when a later one fails and survives a
//! client that gives up ([`create`]); [`lifecycle`] starts, stops and
//! removes, and watches every running container's exit through its
//! engine, at once; [`removal`] removes in two halves, the record before
//! the reply and the rest after it; [`reconcile`] repairs after a crash
//! or restart. List
//! and Status read the store only and never wait behind a container's lock.
//! Processes come from an [`engine::Engine`] (the pod's monitor).

mod create;
pub mod devices;
pub mod engine;
mod exec;
mod lifecycle;
pub mod lsm;
pub mod monitor_engine;
pub mod reconcile;
pub mod record;
pub mod removal;
pub mod spec;
#[cfg(test)]
mod test_engine;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::record::Record;

use crate::cgroups::Cgroups;
use crate::config::Config;
use crate::error::{Classify, Kind};
use crate::pod::record::{PODS, PodRecord, State as PodState};
use crate::store::{self, Store};
pub use create::{CreateRequest, parse_signal};
pub use exec::{Attached, ExecOutput, ExecRequest, ExecWaiter, MAX_OUTPUT, StreamExec};
pub use lifecycle::PodHooks;
pub use record::{ContainerRecord, State};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("pod sandbox {0:?} not found")]
    PodNotFound(String),
    #[error("pod sandbox {0} is not ready")]
    PodNotReady(String),
    #[error("image {0:?} not found: pull it first (CreateContainer never pulls)")]
    ImageNotFound(String),
    #[error(
        "mount {path}: the image {image:?} of this image volume is not present: pull it first (CreateContainer never pulls)"
    )]
    VolumeImageNotFound { path: String, image: String },
    #[error(
        "container {name:?} (attempt {attempt}) already exists in pod sandbox {pod_id} with id {id}"
    )]
    AlreadyExists {
        pod_id: String,
        name: String,
        attempt: u32,
        id: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("container {id} is {state}, not running")]
    NotRunning { id: String, state: &'static str },
    #[error("{0}")]
    WrongState(String),
    #[error("{0}")]
    Deadline(String),
    /// A step of CreateContainer (or another multi-step call) failed;
    /// everything before it was undone.
    #[error(transparent)]
    Step(#[from] crate::record::StepFailed),
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error(transparent)]
    Cgroups(#[from] crate::cgroups::Error),
    #[error(transparent)]
    Image(#[from] crate::image::Error),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Id(#[from] crate::ids::Error),
    /// The outcome of a creation shared with a retry that waited for it.
    #[error(transparent)]
    Shared(Arc<Error>),
    #[error("{0}")]
    Internal(String),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::NotFound(_)
            | Error::PodNotFound(_)
            | Error::PodNotReady(_)
            | Error::ImageNotFound(_)
            | Error::VolumeImageNotFound { .. } => Kind::NotFound,
            Error::AlreadyExists { .. } => Kind::AlreadyExists,
            Error::Invalid(_) => Kind::InvalidArgument,
            Error::NotRunning { .. } | Error::WrongState(_) => Kind::FailedPrecondition,
            Error::Deadline(_) => Kind::DeadlineExceeded,
            Error::Step(e) => e.kind,
            Error::Engine(e) => e.kind(),
            Error::Cgroups(e) => e.kind(),
            Error::Image(e) => e.kind(),
            Error::Store(e) => e.kind(),
            Error::Id(e) => e.kind(),
            Error::Shared(e) => e.kind(),
            Error::Internal(_) => Kind::Internal,
        }
    }
}

pub fn state_name(state: State) -> &'static str {
    match state {
        State::Creating => "being created",
        State::Created => "created",
        State::Running => "running",
        State::Exited => "exited",
    }
}

/// Tunables of the container service, from the daemon config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `<root>/containers`: one short directory per container.
    pub dir: PathBuf,
    /// How long a container whose caller gave up waits for a retry.
    pub unclaimed_ttl: Duration,
    /// How long StopContainer waits for the exit after SIGKILL.
    pub kill_grace: Duration,
    /// How long ExecSync keeps reading after the command exited (a
    /// background child may hold its stdout open).
    pub exec_drain: Duration,
}

impl Settings {
    /// `<root>/trash`: beside `dir`, on its filesystem (a rename moves a
    /// removed container's directory there: [`crate::record::trash`]).
    pub fn trash_dir(&self) -> PathBuf {
        self.dir.with_file_name("trash")
    }

    pub fn from_config(config: &Config) -> Settings {
        Settings {
            dir: config.root.join("containers"),
            unclaimed_ttl: Duration::from_secs(config.pod.unclaimed_ttl_secs),
            kill_grace: Duration::from_secs(10),
            exec_drain: Duration::from_millis(500),
        }
    }
}

/// An image as a container needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct FoundImage {
    /// `sha256:...`
    pub id: String,
    pub config: spec::ImageConfig,
    /// Layer directories, lowest first.
    pub layers: Vec<PathBuf>,
}

/// Where images come from: the image service (a fake in unit tests).
pub trait ImageSource: Send + Sync + 'static {
    fn find(&self, name: &str) -> Result<Option<FoundImage>, crate::image::Error>;
}

impl ImageSource for crate::image::Images {
    fn find(&self, name: &str) -> Result<Option<FoundImage>, crate::image::Error> {
        let Some(rec) = self.lookup(name)? else {
            return Ok(None);
        };
        let layers = self.layer_dirs(&rec)?;
        let c = &rec.config;
        Ok(Some(FoundImage {
            id: rec.id.clone(),
            config: spec::ImageConfig {
                entrypoint: c.entrypoint.clone(),
                cmd: c.cmd.clone(),
                env: c.env.clone(),
                working_dir: c.working_dir.clone(),
                user: c.user.clone(),
                stop_signal: c.stop_signal.clone(),
            },
            layers,
        }))
    }
}

impl crate::record::RecordError for Error {
    fn shared(e: Arc<Error>) -> Error {
        Error::Shared(e)
    }
    fn abandoned(kind: &'static str) -> Error {
        Error::Internal(format!("{kind} creation ended without an outcome"))
    }
    fn not_found(id: &str) -> Error {
        Error::NotFound(id.to_string())
    }
}

/// The container service: a field of [`crate::daemon::Daemon`].
pub struct Containers {
    /// The container records and their lifecycle (creations under way,
    /// one lock per container for create/start/stop/remove/update, never
    /// taken by List/Status).
    records: crate::record::Records<ContainerRecord, Error>,
    store: Arc<Store>,
    images: Arc<dyn ImageSource>,
    cgroups: Arc<Cgroups>,
    engine: Arc<dyn engine::Engine>,
    /// Where its state changes are announced.
    events: Arc<crate::events::Events>,
    settings: Settings,
    /// Recorded exits of running containers, for StopContainer to wait on.
    exits: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// Where removed containers' directories go to be deleted.
    trash: Arc<crate::record::trash::Trash>,
    /// Removals whose cleanup runs after their reply ([`removal`]).
    removals: removal::Pending,
}

/// ListContainers' filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: String,
    pub pod_id: String,
    pub state: Option<State>,
    pub labels: BTreeMap<String, String>,
}

impl Containers {
    pub fn new(
        store: Arc<Store>,
        images: Arc<dyn ImageSource>,
        cgroups: Arc<Cgroups>,
        engine: Arc<dyn engine::Engine>,
        events: Arc<crate::events::Events>,
        settings: Settings,
    ) -> Containers {
        Containers {
            records: crate::record::Records::new(store.clone(), settings.unclaimed_ttl),
            trash: crate::record::trash::Trash::new(settings.trash_dir()),
            store,
            images,
            cgroups,
            engine,
            events,
            settings,
            exits: Mutex::new(HashMap::new()),
            removals: removal::Pending::default(),
        }
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.records.lock_of(id)
    }

    fn forget_lock(&self, id: &str) {
        self.records.forget_lock(id);
    }

    /// Resolves a full id or unique prefix among visible containers.
    fn resolve(&self, prefix: &str) -> Result<Option<String>, Error> {
        self.records.resolve(prefix)
    }

    /// ContainerStatus: the record with its effective state.
    pub fn status(&self, id: &str) -> Result<ContainerRecord, Error> {
        let rec = self
            .records
            .resolve_record(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        Ok(rec.effective())
    }

    /// The record of a running container (ExecSync, ReopenContainerLog);
    /// NotRunning for any other state.
    fn running(&self, id: &str) -> Result<ContainerRecord, Error> {
        let rec = self.status(id)?;
        if rec.state != State::Running {
            return Err(Error::NotRunning {
                id: rec.id,
                state: state_name(rec.state),
            });
        }
        Ok(rec)
    }

    /// ListContainers.
    pub fn list(&self, filter: &Filter) -> Result<Vec<ContainerRecord>, Error> {
        let mut out = Vec::new();
        for (id, rec) in self.store.list(record::CONTAINERS)? {
            if !rec.visible()
                || !id.starts_with(&filter.id)
                || !rec.pod_id.starts_with(&filter.pod_id)
            {
                continue;
            }
            if !filter
                .labels
                .iter()
                .all(|(k, v)| rec.labels.get(k) == Some(v))
            {
                continue;
            }
            let rec = rec.effective();
            if filter.state.is_some_and(|s| s != rec.state) {
                continue;
            }
            out.push(rec);
        }
        Ok(out)
    }

    /// Whether a container (in any state) uses the image `image_id`, as
    /// its rootfs or as a volume: RemoveImage refuses such an image.
    pub fn uses_image(store: &Store, image_id: &str) -> bool {
        store
            .list(record::CONTAINERS)
            .map(|all| {
                all.iter().any(|(_, r)| {
                    r.image_id == image_id
                        || r.mounts
                            .iter()
                            .any(|m| m.image.as_ref().is_some_and(|i| i.id == image_id))
                })
            })
            .unwrap_or(true)
    }

    /// The ids of a pod's containers (every state).
    fn of_pod(&self, pod_id: &str) -> Result<Vec<ContainerRecord>, Error> {
        Ok(self
            .store
            .list(record::CONTAINERS)?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.pod_id == pod_id)
            .collect())
    }

    /// A pod by id or unique prefix among visible pods.
    fn pod(&self, prefix: &str) -> Result<PodRecord, Error> {
        let all = self.store.list(PODS)?;
        let ids: Vec<&str> = all
            .iter()
            .filter(|(_, r)| r.visible())
            .map(|(k, _)| k.as_str())
            .collect();
        let id = crate::ids::resolve(prefix, ids)?
            .ok_or_else(|| Error::PodNotFound(prefix.to_string()))?
            .to_string();
        let rec = all
            .into_iter()
            .find(|(k, _)| *k == id)
            .map(|(_, r)| r)
            .ok_or_else(|| Error::PodNotFound(prefix.to_string()))?;
        if rec.effective_state() != PodState::Ready {
            return Err(Error::PodNotReady(id));
        }
        Ok(rec)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.settings.dir.join(id)
    }
}

/// Short names inside a container's directory: the overlay options must
/// fit in one page.
pub fn upper_dir(dir: &Path) -> PathBuf {
    dir.join("u")
}
pub fn work_dir(dir: &Path) -> PathBuf {
    dir.join("w")
}
pub fn rootfs_dir(dir: &Path) -> PathBuf {
    dir.join("r")
}
/// Where image volume `n` is mounted (in the container's mount namespace
/// only) before its sub path is bound into the rootfs.
pub fn volume_dir(dir: &Path, n: usize) -> PathBuf {
    dir.join(format!("v{n}"))
}

/// Runs blocking work (cgroup files, directory trees) off the async workers.
pub(crate) async fn blocking<T, E, F>(f: F) -> Result<T, Error>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: Into<Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(Error::Internal(format!("blocking task failed: {e}"))),
    }
}
