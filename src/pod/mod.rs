//! Pod sandboxes: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus and ListPodSandbox, as a state machine over records in
//! the metadata store (CREATING -> READY -> NOTREADY -> removed).
//!
//! A pod is its pinned namespaces, its monitor ([`crate::monitor`]), its
//! /dev/shm, its cgroup and its network. Creation writes an intent record
//! before touching the host and undoes finished steps when a later one
//! fails ([`lifecycle`]); [`reconcile`] finishes that job after a crash.
//! List and Status read the store only: they never wait behind a pod's
//! lock, which creation, stop and removal hold across slow work.

mod create;
pub mod engine;
mod lifecycle;
pub mod monitor_engine;
pub mod reconcile;
pub mod record;
pub mod spec;
#[cfg(test)]
mod test_engine;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cgroups::Cgroups;
use crate::config::Config;
use crate::error::{Classify, Kind};
use crate::network::Network;
use crate::record::Record;
use crate::store::{self, Store};
pub use record::{NetworkInfo, PodRecord, State};
pub use spec::PodSpec;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    #[error(
        "pod sandbox {name:?} in namespace {namespace:?} (uid {uid:?}, attempt {attempt}) already exists with id {id}"
    )]
    AlreadyExists {
        name: String,
        namespace: String,
        uid: String,
        attempt: u32,
        id: String,
    },
    #[error("{0}")]
    Invalid(String),
    /// What the pod asks for cannot be done on this node.
    #[error("{0}")]
    Unsupported(String),
    #[error("runtime handler {0:?} is not known to crius (only the default handler \"\" exists)")]
    UnknownHandler(String),
    /// A step of RunPodSandbox failed; everything before it was undone.
    #[error(transparent)]
    Step(#[from] crate::record::StepFailed),
    #[error("read the boot id")]
    BootId(#[source] crate::sys::Error),
    #[error("{0} creation ended without an outcome")]
    Abandoned(&'static str),
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Id(#[from] crate::ids::Error),
    /// The outcome of a creation shared with a retry that waited for it.
    #[error(transparent)]
    Shared(Arc<Error>),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::NotFound(_) => Kind::NotFound,
            Error::AlreadyExists { .. } => Kind::AlreadyExists,
            Error::Invalid(_) | Error::UnknownHandler(_) => Kind::InvalidArgument,
            Error::Unsupported(_) => Kind::FailedPrecondition,
            Error::Step(e) => e.kind,
            Error::BootId(_) | Error::Abandoned(_) => Kind::Internal,
            Error::Store(e) => e.kind(),
            Error::Id(e) => e.kind(),
            Error::Shared(e) => e.kind(),
        }
    }
}

impl crate::record::RecordError for Error {
    fn shared(e: Arc<Error>) -> Error {
        Error::Shared(e)
    }
    fn abandoned(kind: &'static str) -> Error {
        Error::Abandoned(kind)
    }
    fn not_found(id: &str) -> Error {
        Error::NotFound(id.to_string())
    }
}

/// Tunables of the pod service, from the daemon config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state: PathBuf,
    /// The crius-monitor binary started for each pod.
    pub exe: PathBuf,
    pub shm_size: u64,
    /// How long a pod whose caller gave up waits for a retry to claim it.
    pub unclaimed_ttl: Duration,
    /// How long a monitor may take to set a pod up.
    pub setup_timeout: Duration,
}

impl Settings {
    /// `<state>/trash`: where a removed pod's directory goes to be deleted
    /// ([`crate::record::trash`]), on the state dir's filesystem.
    pub fn trash_dir(&self) -> PathBuf {
        self.state.join("trash")
    }

    pub fn from_config(config: &Config) -> Settings {
        Settings {
            state: config.state.clone(),
            exe: config.monitor_path(),
            shm_size: config.pod.shm_size,
            unclaimed_ttl: Duration::from_secs(config.pod.unclaimed_ttl_secs),
            setup_timeout: Duration::from_secs(60),
        }
    }
}

/// The pod service: a field of [`crate::daemon::Daemon`].
pub struct Pods {
    /// The pod records and their lifecycle (creations under way, locks).
    records: crate::record::Records<PodRecord, Error>,
    network: Arc<Network>,
    cgroups: Arc<Cgroups>,
    engine: Arc<dyn engine::Engine>,
    settings: Settings,
    boot_id: String,
    /// Where its state changes are announced.
    events: Arc<crate::events::Events>,
    /// The container service, which stops and removes a pod's containers.
    containers: std::sync::OnceLock<Arc<dyn ContainerHooks>>,
    /// Where removed pods' directories go to be deleted.
    trash: Arc<crate::record::trash::Trash>,
}

/// What stopping and removing a pod asks of the container service.
#[async_trait::async_trait]
pub trait ContainerHooks: Send + Sync {
    /// StopPodSandbox: stop every container of the pod.
    async fn stop_all(&self, pod_id: &str) -> Result<(), String>;
    /// RemovePodSandbox: remove every container of the pod.
    async fn remove_all(&self, pod_id: &str) -> Result<(), String>;
}

/// A pod as ListPodSandbox shows it.
pub type Summary = PodRecord;

/// ListPodSandbox's filter.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: String,
    pub state: Option<State>,
    pub labels: std::collections::BTreeMap<String, String>,
}

impl Pods {
    /// Opens the service; call [`reconcile::start`] next (it needs the Arc).
    pub fn new(
        store: Arc<Store>,
        network: Arc<Network>,
        cgroups: Arc<Cgroups>,
        engine: Arc<dyn engine::Engine>,
        events: Arc<crate::events::Events>,
        settings: Settings,
    ) -> Result<Pods, Error> {
        let boot_id = crate::sys::process::boot_id().map_err(Error::BootId)?;
        let settings_trash = settings.trash_dir();
        Ok(Pods {
            records: crate::record::Records::new(store, settings.unclaimed_ttl),
            network,
            cgroups,
            engine,
            settings,
            boot_id,
            events,
            containers: std::sync::OnceLock::new(),
            trash: crate::record::trash::Trash::new(settings_trash),
        })
    }

    /// The production engine: a `crius monitor` per pod.
    pub fn monitors(settings: &Settings) -> Arc<dyn engine::Engine> {
        Arc::new(monitor_engine::Monitors {
            exe: settings.exe.clone(),
            setup_timeout: settings.setup_timeout,
        })
    }

    /// Connects the container service (once, when the daemon opens).
    pub fn set_container_hooks(&self, hooks: Arc<dyn ContainerHooks>) {
        let _ = self.containers.set(hooks);
    }

    fn container_hooks(&self) -> Option<Arc<dyn ContainerHooks>> {
        self.containers.get().cloned()
    }

    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.records.lock_of(id)
    }

    fn forget_lock(&self, id: &str) {
        self.records.forget_lock(id);
    }

    /// Resolves a full id or unique prefix among visible pods.
    fn resolve(&self, prefix: &str) -> Result<Option<String>, Error> {
        self.records.resolve(prefix)
    }

    /// PodSandboxStatus: the record with its effective state.
    pub fn status(&self, id: &str) -> Result<PodRecord, Error> {
        let mut rec = self
            .records
            .resolve_record(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        rec.state = rec.effective_state();
        Ok(rec)
    }

    /// ListPodSandbox.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Summary>, Error> {
        let mut out = Vec::new();
        for mut rec in self.records.list()? {
            if !rec.visible() || !rec.id.starts_with(&filter.id) {
                continue;
            }
            if !filter
                .labels
                .iter()
                .all(|(k, v)| rec.spec.labels.get(k) == Some(v))
            {
                continue;
            }
            rec.state = rec.effective_state();
            if filter.state.is_some_and(|s| s != rec.state) {
                continue;
            }
            out.push(rec);
        }
        Ok(out)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
