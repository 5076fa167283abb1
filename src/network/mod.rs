//! Pod networking through CNI (the Container Network Interface, SPEC.md
//! v1.0.0): a pod's network namespace gets its interfaces, addresses and
//! routes from plugin executables, configured by the first file of the CNI
//! conf dir (see [`conf`]) or crius's built-in bridge network.
//!
//! API (used by the pod service):
//! - [`Network::new`]`(&NetworkConfig, state_dir)`: no I/O.
//! - [`Network::setup`]`(&PodNetwork) -> NetworkStatus`: ADD of every plugin
//!   of the list, chained through `prevResult`; the pod's netns is a pinned
//!   file the caller owns, its lo already up (the pod monitor brings it up
//!   when it creates the namespace: no CNI loopback plugin runs). A failure
//!   part-way runs DEL before the error (which names the plugin) is returned.
//! - [`Network::teardown`]`(pod_id, netns)`: DEL in reverse order with the
//!   cached configuration and result; idempotent (no cache entry = nothing to
//!   do), works after a daemon restart and when the netns is already gone (DEL
//!   still runs so that IPAM releases the address, as CNI requires). Call it
//!   *before* unpinning the netns: some plugins (bridge's ipMasq rule) can
//!   only clean up what they find inside it.
//! - [`Network::cached_status`]`(pod_id)`: the IPs from the cached result.
//! - [`Network::cached_pods`]: pod ids with a cache entry;
//!   [`Network::gc`]`(live_pod_ids)`: DEL for every other cached attachment,
//!   then CNI 1.1 GC where the plugins support it (reconciliation at start).
//! - [`Network::readiness`]: Status's NetworkReady (a usable config, every
//!   plugin binary it needs, and a background VERSION/STATUS check).
//! - [`dns::write_resolv_conf`], [`dns::write_hostname`], [`dns::write_hosts`]:
//!   the pod's files.
//!
//! State: `<state>/cni/results/<pod-id>.json` (see [`cache`]) and, for the
//! built-in network, host-local's leases under `<state>/cni/ipam/` (ephemeral
//! like the pods they belong to).

pub mod cache;
pub mod conf;
pub mod dns;
mod gc;
pub mod input;
pub mod plugin;
pub mod probe;
pub mod result;

#[cfg(test)]
mod real_tests;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::NetworkConfig;
use crate::error::{Classify, Kind};
use cache::{Cache, Entry};
use conf::NetworkList;
use input::{cni_args, del_netns, plugin_config, runtime_config, validate, validate_id};
use plugin::{Call, ExecError};

/// The pod's interface name, as every CRI runtime uses.
pub const IF_NAME: &str = "eth0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid CNI config {file}: {reason}")]
    InvalidConfig { file: String, reason: String },
    #[error("no CNI config in {0} and the built-in default network is disabled")]
    NoConfig(PathBuf),
    #[error("CNI plugin {name:?} (network {network}) not found in {dirs}")]
    PluginNotFound {
        name: String,
        network: String,
        dirs: String,
    },
    #[error("invalid pod network request: {0}")]
    InvalidRequest(String),
    #[error("CNI {command} of plugin {plugin} (network {network}) failed for pod {pod_id}")]
    Plugin {
        command: &'static str,
        plugin: String,
        network: String,
        pod_id: String,
        #[source]
        source: ExecError,
    },
    #[error("CNI plugin {plugin} (network {network}) returned an invalid result: {reason}")]
    BadResult {
        plugin: String,
        network: String,
        reason: String,
    },
    #[error("CNI cache {path}: {reason}")]
    Cache { path: PathBuf, reason: String },
    #[error(
        "{}; undoing it with DEL failed too: {}",
        crate::error::chain(.add.as_ref()),
        crate::error::chain(.del.as_ref())
    )]
    Rollback { add: Box<Error>, del: Box<Error> },
    #[error("invalid DNS config: {0}")]
    InvalidDns(String),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::InvalidRequest(_) | Error::InvalidDns(_) => Kind::InvalidArgument,
            Error::InvalidConfig { .. } | Error::NoConfig(_) | Error::PluginNotFound { .. } => {
                Kind::FailedPrecondition
            }
            Error::Rollback { add, .. } => add.kind(),
            _ => Kind::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// A hostPort mapping of the pod (CRI PortMapping), for portmap-style
/// plugins (`runtimeConfig.portMappings`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: u16,
    /// 0 = no host port: the mapping is not passed to plugins.
    pub host_port: u16,
    /// "" = all host addresses.
    #[serde(rename = "hostIP")]
    pub host_ip: String,
}

/// What `setup` needs to attach a pod.
#[derive(Debug, Clone, Default)]
pub struct PodNetwork {
    /// Also CNI_CONTAINERID and K8S_POD_INFRA_CONTAINER_ID.
    pub pod_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The pinned network namespace file.
    pub netns: PathBuf,
    pub port_mappings: Vec<PortMapping>,
    /// kubelet's pod CIDR (UpdateRuntimeConfig), "" if none: the subnet of
    /// the built-in network when set.
    pub pod_cidr: String,
}

/// The pod's addresses after ADD.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkStatus {
    /// The pod IP (IPv4 if the pod has one).
    pub ip: Option<IpAddr>,
    /// The other addresses, IPv4 first.
    pub additional_ips: Vec<IpAddr>,
    /// The final CNI result as the plugins returned it.
    pub result: Value,
}

impl NetworkStatus {
    fn from_result(result: Value) -> std::result::Result<NetworkStatus, String> {
        let mut ips = result::pod_ips(&result)?.into_iter();
        Ok(NetworkStatus {
            ip: ips.next(),
            additional_ips: ips.collect(),
            result,
        })
    }
}

pub struct Network {
    config: NetworkConfig,
    cache: Cache,
    ipam_dir: PathBuf,
    prober: probe::Prober,
}

impl Network {
    pub fn new(config: &NetworkConfig, state_dir: &Path) -> Network {
        let cni = state_dir.join("cni");
        Network {
            config: config.clone(),
            cache: Cache::new(cni.join("results")),
            ipam_dir: cni.join("ipam"),
            prober: probe::Prober::default(),
        }
    }

    fn timeout(&self) -> Duration {
        self.config.plugin_timeout()
    }

    fn cni_path(&self) -> String {
        let dirs: Vec<String> = self
            .config
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(":")
    }

    /// The network list pods join now: the conf dir's first file, else the
    /// built-in network (if enabled) on `pod_cidr` or the default subnet.
    pub fn load(&self, pod_cidr: &str) -> Result<NetworkList> {
        if let Some(file) = conf::first_file(&self.config.conf_dir)? {
            return conf::load_file(&file);
        }
        if !self.config.default_network {
            return Err(Error::NoConfig(self.config.conf_dir.clone()));
        }
        let subnet = if pod_cidr.is_empty() {
            self.config.default_subnet.as_str()
        } else {
            pod_cidr
        };
        Ok(conf::builtin(&conf::Builtin {
            bridge: &self.config.default_bridge,
            subnet,
            ipam_dir: &self.ipam_dir,
        }))
    }

    /// The path of a plugin binary the list needs.
    fn binary(&self, list: &NetworkList, name: &str) -> Result<PathBuf> {
        plugin::find(&self.config.bin_dirs, name).ok_or_else(|| Error::PluginNotFound {
            name: name.into(),
            network: list.name.clone(),
            dirs: self.cni_path(),
        })
    }

    /// Checks that every binary the list needs exists.
    fn check_binaries(&self, list: &NetworkList) -> Result<()> {
        for name in list.binaries().iter().map(String::as_str) {
            self.binary(list, name)?;
        }
        Ok(())
    }

    /// NetworkReady: `Err(message)` while pods cannot get a network: no
    /// usable config, a missing plugin binary, or (checked in the
    /// background, see [`probe`]) a plugin that does not speak the config's
    /// cniVersion or answers STATUS with an error.
    pub fn readiness(&self) -> std::result::Result<(), String> {
        let list = self.load("").map_err(|e| crate::error::chain(&e))?;
        self.check_binaries(&list)
            .map_err(|e| crate::error::chain(&e))?;
        let job = self.probe_job(list).map_err(|e| crate::error::chain(&e))?;
        self.prober.poll(job)
    }

    #[cfg(test)]
    fn prober_checked(&self) -> bool {
        self.prober.checked()
    }

    /// What a VERSION/STATUS/GC round over `list` needs.
    fn probe_job(&self, list: NetworkList) -> Result<probe::Job> {
        let mut plugins = Vec::new();
        for name in probe::direct_plugins(&list) {
            let binary = self.binary(&list, &name)?;
            plugins.push((name, binary));
        }
        Ok(probe::Job {
            list,
            plugins,
            cni_path: self.cni_path(),
            timeout: self.timeout(),
        })
    }

    /// Attaches the pod's netns to the network (CNI ADD).
    pub async fn setup(&self, req: &PodNetwork) -> Result<NetworkStatus> {
        // 1. Validate, load the config and find every binary before any
        //    side effect.
        validate(req)?;
        if !req.netns.exists() {
            return Err(Error::InvalidRequest(format!(
                "network namespace {} does not exist",
                req.netns.display()
            )));
        }
        let list = self.load(&req.pod_cidr)?;
        self.check_binaries(&list)?;
        // A retried setup (or a stale entry of a pod id reused after a
        // crash): undo the earlier attachment first, so nothing is held twice.
        if self.cache.read(&req.pod_id)?.is_some() {
            tracing::info!(pod_id = %req.pod_id, "pod already has a CNI attachment; deleting it first");
            self.teardown(&req.pod_id, &req.netns).await?;
        }
        let mut entry = Entry {
            format: cache::FORMAT,
            pod_id: req.pod_id.clone(),
            netns: req.netns.clone(),
            if_name: IF_NAME.into(),
            cni_args: cni_args(req),
            port_mappings: req
                .port_mappings
                .iter()
                .filter(|m| m.host_port != 0)
                .cloned()
                .collect(),
            config: list.raw.clone(),
            result: None,
        };
        // 2. Write-ahead: DEL must be possible whatever happens next.
        self.cache.write(&entry, true)?;
        // 3. The network's plugins in order.
        let added = self.add_list(&list, &entry).await;
        let (err, partial) = match added {
            Ok(result) => match NetworkStatus::from_result(result.clone()) {
                Ok(status) => {
                    entry.result = Some(status.result.clone());
                    // Not durable: see the cache's module doc.
                    if let Err(e) = self.cache.write(&entry, false) {
                        return Err(self.rollback(&list, &entry, e, Some(&result)).await);
                    }
                    tracing::info!(pod_id = %req.pod_id, network = %list.name, ip = ?status.ip, "pod network added");
                    return Ok(status);
                }
                Err(reason) => {
                    let plugin = list.plugin_type(list.plugins.len() - 1).to_string();
                    let err = Error::BadResult {
                        plugin,
                        network: list.name.clone(),
                        reason,
                    };
                    (err, Some(result))
                }
            },
            Err(failed) => failed,
        };
        Err(self.rollback(&list, &entry, err, partial.as_ref()).await)
    }

    /// Undoes a failed ADD; the returned error is the ADD's, or both.
    async fn rollback(
        &self,
        list: &NetworkList,
        entry: &Entry,
        add: Error,
        partial: Option<&Value>,
    ) -> Error {
        tracing::warn!(pod_id = %entry.pod_id, error = %crate::error::chain(&add), "CNI ADD failed; running DEL");
        match self.del_list(list, entry, partial).await {
            Ok(()) => match self.cache.remove(&entry.pod_id) {
                Ok(()) => add,
                Err(del) => Error::Rollback {
                    add: Box::new(add),
                    del: Box::new(del),
                },
            },
            Err(del) => Error::Rollback {
                add: Box::new(add),
                del: Box::new(del),
            },
        }
    }

    /// Detaches the pod (CNI DEL); nothing to do without a cache entry.
    pub async fn teardown(&self, pod_id: &str, netns: &Path) -> Result<()> {
        validate_id(pod_id)?;
        let Some(mut entry) = self.cache.read(pod_id)? else {
            return Ok(());
        };
        if !netns.as_os_str().is_empty() {
            entry.netns = netns.into();
        }
        let list = conf::parse_list(
            entry.config.clone(),
            &self.cache.path(pod_id).display().to_string(),
        )?;
        self.del_list(&list, &entry, entry.result.as_ref()).await?;
        self.cache.remove(pod_id)?;
        tracing::info!(%pod_id, network = %list.name, "pod network deleted");
        Ok(())
    }

    /// DEL for a pod whose cached ADD result is lost (the state dir was
    /// wiped): the current network config, no previous result, and the
    /// pod's `netns` pin when it is still mounted (empty: none).
    /// Plugins release what they hold by container id (host-local's lease);
    /// DEL of an attachment that never existed succeeds (CNI requires DEL
    /// to be idempotent). With a cache entry this is [`Network::teardown`].
    pub async fn teardown_uncached(&self, pod_id: &str, netns: &Path) -> Result<()> {
        validate_id(pod_id)?;
        if self.cache.read(pod_id)?.is_some() {
            return self.teardown(pod_id, netns).await;
        }
        let list = self.load("")?;
        let entry = Entry {
            format: cache::FORMAT,
            pod_id: pod_id.to_string(),
            netns: netns.to_path_buf(),
            if_name: IF_NAME.into(),
            cni_args: String::new(),
            port_mappings: Vec::new(),
            config: list.raw.clone(),
            result: None,
        };
        self.del_list(&list, &entry, None).await?;
        tracing::info!(%pod_id, network = %list.name, "pod network deleted without a cached result");
        Ok(())
    }

    /// The cached ADD result's addresses; `None` without a finished ADD.
    pub fn cached_status(&self, pod_id: &str) -> Option<NetworkStatus> {
        let entry = self.cache.read(pod_id).ok().flatten()?;
        NetworkStatus::from_result(entry.result?).ok()
    }

    /// Pod ids with a cache entry: attachments that a DEL still has to undo
    /// if their pod has no record.
    pub fn cached_pods(&self) -> Result<Vec<String>> {
        self.cache.pod_ids()
    }

    /// ADD through the list; on error also returns the last good result.
    async fn add_list(
        &self,
        list: &NetworkList,
        entry: &Entry,
    ) -> std::result::Result<Value, (Error, Option<Value>)> {
        let netns = entry.netns.display().to_string();
        let path = self.cni_path();
        let runtime = runtime_config(entry);
        let mut prev: Option<Value> = None;
        for (i, p) in list.plugins.iter().enumerate() {
            let name = list.plugin_type(i);
            let binary = self.binary(list, name).map_err(|e| (e, prev.clone()))?;
            let stdin = plugin_config(list, p, prev.as_ref(), &runtime);
            let call = Call {
                command: "ADD",
                container_id: &entry.pod_id,
                netns: &netns,
                if_name: &entry.if_name,
                args: &entry.cni_args,
                path: &path,
            };
            let plugin_err = |source| Error::Plugin {
                command: "ADD",
                plugin: name.into(),
                network: list.name.clone(),
                pod_id: entry.pod_id.clone(),
                source,
            };
            let out = plugin::exec(&binary, &call, stdin.to_string().as_bytes(), self.timeout())
                .await
                .map_err(|e| (plugin_err(e), prev.clone()))?;
            let result: Value = serde_json::from_slice(&out).map_err(|e| {
                let err = Error::BadResult {
                    plugin: name.into(),
                    network: list.name.clone(),
                    reason: format!("not JSON: {e}"),
                };
                (err, prev.clone())
            })?;
            prev = Some(result);
        }
        Ok(prev.expect("a network list has at least one plugin"))
    }

    /// DEL through the list in reverse order, each plugin given the ADD
    /// result as prevResult. Every plugin runs even if one fails (to free
    /// as much as possible); the first error is returned.
    async fn del_list(
        &self,
        list: &NetworkList,
        entry: &Entry,
        result: Option<&Value>,
    ) -> Result<()> {
        let netns = del_netns(&entry.netns);
        let path = self.cni_path();
        let runtime = runtime_config(entry);
        let mut first_err = None;
        for (i, p) in list.plugins.iter().enumerate().rev() {
            let name = list.plugin_type(i);
            let binary = match self.binary(list, name) {
                Ok(b) => b,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            let stdin = plugin_config(list, p, result, &runtime);
            let call = Call {
                command: "DEL",
                container_id: &entry.pod_id,
                netns: &netns,
                if_name: &entry.if_name,
                args: &entry.cni_args,
                path: &path,
            };
            if let Err(source) =
                plugin::exec(&binary, &call, stdin.to_string().as_bytes(), self.timeout()).await
            {
                let err = Error::Plugin {
                    command: "DEL",
                    plugin: name.into(),
                    network: list.name.clone(),
                    pod_id: entry.pod_id.clone(),
                    source,
                };
                tracing::warn!(pod_id = %entry.pod_id, error = %crate::error::chain(&err), "CNI DEL failed");
                first_err.get_or_insert(err);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
