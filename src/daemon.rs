//! The daemon's shared state: what every RPC handler reaches through `Arc<Daemon>`.
//! Each service (images, pods, containers) is a field that owns its own locks,
//! so a slow pull or CNI call never blocks an unrelated List or Status.

use std::sync::{Arc, OnceLock, RwLock};

use crate::cgroups::{self, Cgroups};
use crate::config::Config;
use crate::container::{self, Containers};
use crate::events::Events;
use crate::image::{self, Images};
use crate::network::Network;
use crate::pod::{self, Pods};
use crate::stats::Sampler;
use crate::store::{self, Store};

pub struct Daemon {
    pub config: Config,
    /// The metadata database under the root dir.
    pub store: Arc<Store>,
    /// Images: pull, store, unpack, list, remove (see crate::image).
    pub images: Images,
    /// Pod networking (CNI).
    pub network: Arc<Network>,
    /// Pod and container cgroups.
    pub cgroups: Arc<Cgroups>,
    /// Pod sandboxes.
    pub pods: Arc<Pods>,
    /// Containers (see crate::container).
    pub containers: Arc<Containers>,
    /// The stats sampler and its cache (see crate::stats).
    pub stats: Arc<Sampler>,
    /// Container and pod events (GetContainerEvents, see crate::events).
    pub events: Arc<Events>,
    /// Settings kubelet pushes with UpdateRuntimeConfig.
    runtime_config: RwLock<RuntimeConfig>,
    /// The Exec/Attach/PortForward server, once started.
    streaming: OnceLock<crate::streaming::Server>,
    /// Whether pods with their own user namespace can run here (probed
    /// once at open on the root dir's filesystem).
    pub userns: crate::monitor::protocol::UsernsProbe,
}

/// Why the daemon's state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("open image store")]
    Images(#[from] image::Error),
    #[error(transparent)]
    Pod(#[from] pod::Error),
    #[error("cgroups")]
    Cgroups(#[from] cgroups::Error),
    #[error("restrict the permissions of {path}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl crate::error::Classify for OpenError {
    fn kind(&self) -> crate::error::Kind {
        crate::error::Kind::Internal
    }
}

/// Closes crius's storage to other host users: the root and state dirs
/// 0711 (the socket's own mode decides who may connect), every directory
/// crius keeps below them 0700, so no host user can reach a container's
/// upper dir or an image layer (and run a set-id binary a container left
/// there, CVE-2021-41091) or read the database (it is also 0600: it
/// holds every container's environment). Applied at every start, so an
/// older install is closed too.
pub fn restrict_dirs(config: &Config) -> Result<(), OpenError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let set = |dir: &std::path::Path, mode: u32| -> Result<(), OpenError> {
        let err = |source| OpenError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(err)
    };
    set(&config.root, 0o711)?;
    set(&config.state, 0o711)?;
    for dir in [
        config.root.join("containers"),
        config.root.join("image"),
        config.state.join("pods"),
        config.state.join("ns"),
    ] {
        set(&dir, 0o700)?;
    }
    Ok(())
}

/// Why reconciling at start failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reconcile pods")]
    Pod(#[from] pod::Error),
    #[error("reconcile containers")]
    Container(#[from] container::Error),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// The node's pod CIDR, once kubelet has sent it ("" before).
    pub pod_cidr: String,
}

impl Daemon {
    /// Opens the daemon's state under the configured root.
    pub fn open(config: Config) -> Result<Daemon, OpenError> {
        restrict_dirs(&config)?;
        let store = Arc::new(Store::open(&config.db_path())?);
        // Probed once: recursive read-only mounts and their Status feature.
        tracing::info!(
            supported = crate::sys::mount::recursive_readonly_supported(),
            "recursive read-only mounts (mount_setattr)"
        );
        let images = Images::open(&config, store.clone())?;
        let network = Arc::new(Network::new(&config.network, &config.state));
        let cgroups = Arc::new(Cgroups::from_config(&config.cgroup)?);
        let events = Arc::new(Events::new(store.clone(), config.stats.events_buffer));
        let pod_settings = pod::Settings::from_config(&config);
        let userns = crate::monitor::client::probe_userns(&pod_settings.exe, &config.root);
        tracing::info!(
            supported = userns.supported(),
            idmapped_mounts = userns.idmapped_mounts,
            overlay_idmapped = userns.overlay_idmapped,
            why_not = %userns.message,
            "user namespaces for pods"
        );
        let pods = Arc::new(Pods::new(
            store.clone(),
            network.clone(),
            cgroups.clone(),
            Pods::monitors(&pod_settings),
            events.clone(),
            pod_settings,
        )?);
        let containers = Arc::new(Containers::new(
            store.clone(),
            Arc::new(images.clone()),
            cgroups.clone(),
            Arc::new(container::monitor_engine::Monitors {
                pod_init: config
                    .monitor_path()
                    .with_file_name(crate::monitor::POD_INIT_BIN),
            }),
            events.clone(),
            container::Settings::from_config(&config),
        ));
        pods.set_container_hooks(Arc::new(container::PodHooks(Arc::downgrade(&containers))));
        let in_use = store.clone();
        images.set_in_use(move |image_id| Containers::uses_image(&in_use, image_id));
        let stats = Arc::new(Sampler::new(
            cgroups.clone(),
            store.clone(),
            std::time::Duration::from_millis(config.stats.interval_ms),
        ));
        Ok(Daemon {
            config,
            store,
            images,
            network,
            cgroups,
            pods,
            containers,
            stats,
            events,
            runtime_config: RwLock::new(RuntimeConfig::default()),
            streaming: OnceLock::new(),
            userns,
        })
    }

    /// Brings the services in line with what the host holds (pods left by
    /// a previous run, a crash, a reboot); run once before serving.
    pub async fn reconcile(&self) -> Result<(), ReconcileError> {
        pod::reconcile::start(&self.pods).await?;
        container::reconcile::start(&self.containers).await?;
        Ok(())
    }

    /// Starts the streaming server on the configured address.
    pub async fn start_streaming(&self) -> Result<(), crate::streaming::Error> {
        let runtime = Arc::new(crate::streaming::backend::DaemonRuntime {
            containers: self.containers.clone(),
            pods: self.pods.clone(),
        });
        let settings = crate::streaming::Settings::from_config(&self.config.streaming);
        let server = crate::streaming::Server::start(settings, runtime).await?;
        let _ = self.streaming.set(server);
        Ok(())
    }

    pub fn streaming(&self) -> Option<&crate::streaming::Server> {
        self.streaming.get()
    }

    pub fn runtime_config(&self) -> RuntimeConfig {
        self.runtime_config.read().expect("lock poisoned").clone()
    }

    pub fn update_runtime_config(&self, update: RuntimeConfig) {
        *self.runtime_config.write().expect("lock poisoned") = update;
    }
}

impl Daemon {
    /// Whether pods can get a network, and why not: Status's NetworkReady.
    pub fn network_readiness(&self) -> Result<(), String> {
        self.network.readiness()
    }
}
