//! The daemon's configuration: a TOML file (`/etc/crius/crius.toml` by default)
//! whose every key has a built-in default, overridden by command-line flags.
//!
//! Every path the daemon touches comes from here, so tests run a real daemon
//! with temporary roots. Unknown keys are an error that names the key: a typo
//! must not silently fall back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Classify, Kind};

/// Where the daemon looks for its file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/crius/crius.toml";

/// The full default configuration, commented: what `crius config default`
/// prints. A unit test keeps it equal to `Config::default()`.
pub const DEFAULT_TOML: &str = include_str!("config/default.toml");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        Kind::InvalidArgument
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Unix socket the CRI gRPC server listens on.
    pub listen: PathBuf,
    /// Persistent state: images, layers, the metadata database.
    pub root: PathBuf,
    /// Ephemeral state: pinned namespaces, monitor sockets, exit files.
    pub state: PathBuf,
    /// tracing filter: error, warn, info, debug, trace (or a full filter).
    pub log_level: String,
    #[serde(default)]
    pub cgroup: CgroupConfig,
    #[serde(default)]
    pub registry: RegistryConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    #[serde(default)]
    pub pod: PodConfig,
    #[serde(default)]
    pub stats: StatsConfig,
    pub streaming: StreamingConfig,
    pub grpc: GrpcConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupConfig {
    /// "cgroupfs" or "systemd"; kubelet reads it through the RuntimeConfig RPC.
    pub driver: CgroupDriver,
    /// Parent of pod cgroups when kubelet sends an empty cgroup_parent; with
    /// the systemd driver a path maps to the slice of the same name.
    pub default_parent: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Directory of containerd-style `<host>/hosts.toml` files.
    pub config_path: PathBuf,
    /// Never pulled by crius (pods need no pause container), but reported
    /// pinned when present so kubelet's image GC keeps it.
    pub sandbox_image: String,
    /// A pull that makes no progress for this many seconds is cancelled.
    pub pull_progress_timeout_secs: u64,
    /// The largest manifest, index or image config a pull accepts, in bytes.
    pub max_manifest_bytes: u64,
    /// The most tar entries one layer may hold.
    pub max_layer_entries: u64,
    /// The most bytes of file content one layer may unpack to.
    pub max_layer_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// CNI configuration directory: the first .conflist/.conf/.json wins.
    pub conf_dir: PathBuf,
    /// Directories searched for CNI plugin binaries, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// Use the built-in bridge network when conf_dir holds no config.
    pub default_network: bool,
    /// Subnet of the built-in bridge network (unless kubelet sets a pod CIDR).
    pub default_subnet: String,
    /// Linux bridge of the built-in network.
    pub default_bridge: String,
    /// Timeout of one CNI plugin invocation, in seconds.
    pub plugin_timeout_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodConfig {
    /// Size of each pod's /dev/shm tmpfs, in bytes.
    pub shm_size: u64,
    /// A pod finished after its RunPodSandbox caller gave up waits this
    /// long for a retry to claim it, then is removed.
    pub unclaimed_ttl_secs: u64,
    /// The crius-monitor binary; `None`: the one beside the crius binary.
    pub monitor: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StatsConfig {
    /// How often the sampler reads every pod's and container's usage, in
    /// milliseconds (the window of the CPU rates); at least 100.
    pub interval_ms: u64,
    /// How many container events a GetContainerEvents subscriber may fall
    /// behind before it is dropped with an error; at least 1.
    pub events_buffer: usize,
}

impl Default for StatsConfig {
    fn default() -> Self {
        StatsConfig {
            interval_ms: 10_000,
            events_buffer: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// `host:port` of the Exec/Attach/PortForward server; port 0 picks a
    /// free port at start. An unspecified host (0.0.0.0, [::]) listens on
    /// all addresses and puts the node's first global address in URLs.
    pub address: String,
    /// A streaming URL not used within this many seconds expires.
    pub token_ttl_secs: u64,
    /// PEM certificate chain and private key: both set serves HTTPS.
    pub tls_cert_file: PathBuf,
    pub tls_key_file: PathBuf,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: "127.0.0.1:0".into(),
            token_ttl_secs: 60,
            tls_cert_file: PathBuf::new(),
            tls_key_file: PathBuf::new(),
        }
    }
}

/// What the CRI server accepts from one client: request sizes and how long
/// a silent connection or request stream is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// The most one PodSandboxConfig or ContainerConfig may carry (its
    /// encoded size: labels, annotations, env, command, args, mounts, ...).
    pub max_config_bytes: u64,
    /// The most labels + annotations (keys and values) one pod may carry:
    /// they travel in every ListPodSandbox answer.
    pub max_pod_labels_bytes: u64,
    /// The same for one container (ListContainers).
    pub max_container_labels_bytes: u64,
    /// HTTP/2 PING sent to a client every this many seconds...
    pub keepalive_interval_secs: u64,
    /// ...which closes the connection when unanswered for this many seconds.
    pub keepalive_timeout_secs: u64,
    /// A connection that sends nothing for this long (not even a PING
    /// answer), or a request whose body stops arriving for this long, is
    /// closed.
    pub idle_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "/run/crius/crius.sock".into(),
            root: "/var/lib/crius".into(),
            state: "/run/crius".into(),
            log_level: "info".into(),
            cgroup: CgroupConfig::default(),
            registry: RegistryConfig::default(),
            network: NetworkConfig::default(),
            pod: PodConfig::default(),
            stats: StatsConfig::default(),
            streaming: StreamingConfig::default(),
            grpc: GrpcConfig::default(),
        }
    }
}

impl Default for CgroupConfig {
    fn default() -> Self {
        CgroupConfig {
            driver: CgroupDriver::Cgroupfs,
            default_parent: "/crius".into(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: "/etc/crius/certs.d".into(),
            sandbox_image: "registry.k8s.io/pause:3.10".into(),
            pull_progress_timeout_secs: 300,
            max_manifest_bytes: 4 << 20,
            max_layer_entries: 1_000_000,
            max_layer_bytes: 64 << 30,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            default_network: true,
            default_subnet: "10.88.0.0/16".into(),
            default_bridge: "crius0".into(),
            plugin_timeout_secs: 60,
        }
    }
}

impl Default for PodConfig {
    fn default() -> Self {
        PodConfig {
            shm_size: 64 << 20,
            unclaimed_ttl_secs: 600,
            monitor: None,
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            max_config_bytes: 1 << 20,
            max_pod_labels_bytes: 64 << 10,
            max_container_labels_bytes: 16 << 10,
            keepalive_interval_secs: 60,
            keepalive_timeout_secs: 20,
            idle_timeout_secs: 300,
        }
    }
}

impl GrpcConfig {
    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_secs(self.keepalive_interval_secs)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_secs(self.keepalive_timeout_secs)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

impl Config {
    /// The crius-monitor binary: `pod.monitor`, else the one beside the
    /// running crius binary.
    pub fn monitor_path(&self) -> PathBuf {
        if let Some(p) = &self.pod.monitor {
            return p.clone();
        }
        let exe = std::env::current_exe().unwrap_or_default();
        exe.parent()
            .unwrap_or(Path::new("/usr/local/bin"))
            .join(crate::monitor::MONITOR_BIN)
    }
}

impl RegistryConfig {
    pub fn pull_progress_timeout(&self) -> Duration {
        Duration::from_secs(self.pull_progress_timeout_secs)
    }
}

impl NetworkConfig {
    pub fn plugin_timeout(&self) -> Duration {
        Duration::from_secs(self.plugin_timeout_secs)
    }
}

impl Config {
    /// Loads `path`; with `None` the default path is used and may be absent
    /// (built-in defaults). A file named explicitly must exist.
    pub fn load(path: Option<&Path>) -> Result<Config, Error> {
        let (path, must_exist) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_CONFIG_PATH), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(Error::Read {
                    path: path.into(),
                    source,
                });
            }
        };
        let config = Config::parse(&text).map_err(|source| Error::Parse {
            path: path.into(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document; keys left out keep their defaults.
    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        // Top-level keys default individually: merge the document over the
        // defaults' own TOML form, then deserialize strictly.
        let mut merged = toml::Table::try_from(Config::default()).expect("defaults serialize");
        let doc: toml::Table = toml::from_str(text)?;
        for (k, v) in doc {
            merged.insert(k, v);
        }
        toml::Value::Table(merged).try_into()
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), Error> {
        for (name, p) in [
            ("listen", &self.listen),
            ("root", &self.root),
            ("state", &self.state),
        ] {
            if !p.is_absolute() {
                return Err(Error::Invalid(format!(
                    "{name} must be an absolute path, got {}",
                    p.display()
                )));
            }
        }
        if let Some(p) = &self.pod.monitor
            && !p.is_absolute()
        {
            return Err(Error::Invalid(format!(
                "pod.monitor must be an absolute path, got {}",
                p.display()
            )));
        }
        if !self.cgroup.default_parent.starts_with('/')
            && self.cgroup.driver == CgroupDriver::Cgroupfs
        {
            return Err(Error::Invalid(format!(
                "cgroup.default_parent must be an absolute cgroup path, got {:?}",
                self.cgroup.default_parent
            )));
        }
        for (name, v) in [
            (
                "registry.max_manifest_bytes",
                self.registry.max_manifest_bytes,
            ),
            (
                "registry.max_layer_entries",
                self.registry.max_layer_entries,
            ),
            ("registry.max_layer_bytes", self.registry.max_layer_bytes),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("{name} must be positive")));
            }
        }
        if self.stats.interval_ms < 100 {
            return Err(Error::Invalid(format!(
                "stats.interval_ms must be at least 100, got {}",
                self.stats.interval_ms
            )));
        }
        if self.stats.events_buffer == 0 {
            return Err(Error::Invalid(
                "stats.events_buffer must be at least 1".into(),
            ));
        }
        let net = &self.network;
        if net.default_bridge.is_empty()
            || net.default_bridge.len() > 15
            || net.default_bridge.contains(['/', ' '])
        {
            return Err(Error::Invalid(format!(
                "network.default_bridge must be a link name of 1 to 15 characters, got {:?}",
                net.default_bridge
            )));
        }
        if net.plugin_timeout_secs == 0 {
            return Err(Error::Invalid(
                "network.plugin_timeout_secs must be at least 1".into(),
            ));
        }
        let st = &self.streaming;
        if st.address.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Invalid(format!(
                "streaming.address must be an ip:port (port 0 for any free port), got {:?}",
                st.address
            )));
        }
        if st.token_ttl_secs == 0 {
            return Err(Error::Invalid(
                "streaming.token_ttl_secs must be at least 1".into(),
            ));
        }
        if st.tls_cert_file.as_os_str().is_empty() != st.tls_key_file.as_os_str().is_empty() {
            return Err(Error::Invalid(
                "streaming.tls_cert_file and streaming.tls_key_file must be set together".into(),
            ));
        }
        let grpc = &self.grpc;
        for (name, v) in [
            ("keepalive_interval_secs", grpc.keepalive_interval_secs),
            ("keepalive_timeout_secs", grpc.keepalive_timeout_secs),
            ("idle_timeout_secs", grpc.idle_timeout_secs),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("grpc.{name} must be at least 1")));
            }
        }
        // A live client answers each PING; only a silent one may time out.
        if grpc.idle_timeout_secs <= grpc.keepalive_interval_secs + grpc.keepalive_timeout_secs {
            return Err(Error::Invalid(format!(
                "grpc.idle_timeout_secs ({}) must exceed keepalive_interval_secs + keepalive_timeout_secs ({})",
                grpc.idle_timeout_secs,
                grpc.keepalive_interval_secs + grpc.keepalive_timeout_secs
            )));
        }
        for (name, v) in [
            ("max_config_bytes", grpc.max_config_bytes),
            ("max_pod_labels_bytes", grpc.max_pod_labels_bytes),
            (
                "max_container_labels_bytes",
                grpc.max_container_labels_bytes,
            ),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("grpc.{name} must be at least 1")));
            }
        }
        Ok(())
    }

    /// The metadata database file.
    pub fn db_path(&self) -> PathBuf {
        self.root.join("crius.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_equals_builtin_defaults() {
        assert_eq!(Config::parse(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = Config::parse("root = \"/x\"\n[network]\nconf_dir = \"/cni\"\n").unwrap();
        assert_eq!(c.root, PathBuf::from("/x"));
        assert_eq!(c.network.conf_dir, PathBuf::from("/cni"));
        assert_eq!(c.network.bin_dirs, NetworkConfig::default().bin_dirs);
        assert_eq!(c.state, PathBuf::from("/run/crius"));
    }

    #[test]
    fn streaming_keys_are_checked() {
        let bad = |toml: &str| {
            Config::parse(toml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(bad("[streaming]\naddress = \"localhost\"\n").contains("streaming.address"));
        assert!(bad("[streaming]\ntoken_ttl_secs = 0\n").contains("token_ttl_secs"));
        assert!(bad("[streaming]\ntls_cert_file = \"/c.pem\"\n").contains("set together"));
        let c = Config::parse("[streaming]\naddress = \"[::]:10010\"\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.streaming.token_ttl_secs, 60);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("lissten = \"/x\"").unwrap_err().to_string();
        assert!(e.contains("lissten"), "{e}");
        let e = Config::parse("[network]\nconfdir = \"/x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("confdir"), "{e}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let c = Config::parse("root = \"rel\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("root"));
    }

    #[test]
    fn network_values_are_checked() {
        for (text, key) in [
            ("[network]\ndefault_bridge = \"\"", "default_bridge"),
            (
                "[network]\ndefault_bridge = \"a-very-long-bridge0\"",
                "default_bridge",
            ),
            ("[network]\nplugin_timeout_secs = 0", "plugin_timeout_secs"),
        ] {
            let e = Config::parse(text).unwrap().validate().unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        Config::default().validate().unwrap();
    }

    #[test]
    fn explicit_missing_file_is_an_error_default_is_not() {
        let e = Config::load(Some(Path::new("/nonexistent/crius.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/crius.toml"));
    }
}
