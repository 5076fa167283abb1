//! The pod sandbox RPCs: RunPodSandbox, StopPodSandbox, RemovePodSandbox,
//! PodSandboxStatus, ListPodSandbox; prost <-> `crate::pod` conversions.

use std::collections::{BTreeMap, HashMap};

use tonic::{Response, Status};

use super::Cri;
use super::error::{missing, status};
use super::proto::*;
use super::validate;
use crate::pod::spec::{self, NamespaceMode as Mode};
use crate::pod::{Filter, PodRecord, PodSpec, State};

impl Cri {
    pub(super) async fn run_pod(
        &self,
        req: RunPodSandboxRequest,
    ) -> Result<Response<RunPodSandboxResponse>, Status> {
        let config = req.config.ok_or_else(|| missing("config"))?;
        validate::pod_size(&config, &self.daemon.config.grpc)?;
        let spec = pod_spec(config, req.runtime_handler)?;
        let userns = &self.daemon.userns;
        if spec.namespaces.user.is_some() && !userns.supported() {
            // A request that is wrong anywhere says so first.
            spec.validate().map_err(status)?;
            return Err(Status::failed_precondition(format!(
                "userns_options: pods with their own user namespace cannot run on this node: {}",
                userns.message
            )));
        }
        let pod_cidr = self.daemon.runtime_config().pod_cidr;
        let id = self.daemon.pods.run(spec, pod_cidr).await.map_err(status)?;
        super::record_field("pod_id", id.as_str());
        Ok(Response::new(RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    pub(super) async fn stop_pod(
        &self,
        req: StopPodSandboxRequest,
    ) -> Result<Response<StopPodSandboxResponse>, Status> {
        super::record_field("pod_id", req.pod_sandbox_id.as_str());
        if req.pod_sandbox_id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        self.daemon
            .pods
            .stop(&req.pod_sandbox_id)
            .await
            .map_err(status)?;
        Ok(Response::new(StopPodSandboxResponse {}))
    }

    pub(super) async fn remove_pod(
        &self,
        req: RemovePodSandboxRequest,
    ) -> Result<Response<RemovePodSandboxResponse>, Status> {
        super::record_field("pod_id", req.pod_sandbox_id.as_str());
        if req.pod_sandbox_id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        self.daemon
            .pods
            .remove(&req.pod_sandbox_id)
            .await
            .map_err(status)?;
        Ok(Response::new(RemovePodSandboxResponse {}))
    }

    pub(super) async fn update_pod_resources(
        &self,
        req: UpdatePodSandboxResourcesRequest,
    ) -> Result<Response<UpdatePodSandboxResourcesResponse>, Status> {
        super::record_field("pod_id", req.pod_sandbox_id.as_str());
        if req.pod_sandbox_id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        self.daemon
            .pods
            .update_resources(
                &req.pod_sandbox_id,
                req.resources.map(resources),
                req.overhead.map(resources),
            )
            .await
            .map_err(status)?;
        Ok(Response::new(UpdatePodSandboxResourcesResponse {}))
    }

    pub(super) fn pod_status(
        &self,
        req: PodSandboxStatusRequest,
    ) -> Result<Response<PodSandboxStatusResponse>, Status> {
        super::record_field("pod_id", req.pod_sandbox_id.as_str());
        if req.pod_sandbox_id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        let rec = self
            .daemon
            .pods
            .status(&req.pod_sandbox_id)
            .map_err(status)?;
        let mut info = HashMap::new();
        if req.verbose {
            info.insert("info".to_string(), verbose_info(&rec).to_string());
        }
        Ok(Response::new(PodSandboxStatusResponse {
            status: Some(pod_sandbox_status(&rec)),
            info,
            containers_statuses: Vec::new(),
            timestamp: crate::pod::now_ns(),
        }))
    }

    pub(super) fn list_pods(
        &self,
        req: ListPodSandboxRequest,
    ) -> Result<Response<ListPodSandboxResponse>, Status> {
        let filter = req.filter.map(filter).unwrap_or_default();
        let items = self
            .daemon
            .pods
            .list(&filter)
            .map_err(status)?
            .iter()
            .map(pod_sandbox)
            .collect();
        Ok(Response::new(ListPodSandboxResponse { items }))
    }
}

fn mode(m: i32) -> Result<Mode, Status> {
    Ok(match NamespaceMode::try_from(m) {
        Ok(NamespaceMode::Pod) => Mode::Pod,
        Ok(NamespaceMode::Container) => Mode::Container,
        Ok(NamespaceMode::Node) => Mode::Node,
        Ok(NamespaceMode::Target) => Mode::Target,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown namespace mode {m}"
            )));
        }
    })
}

fn mode_back(m: Mode) -> i32 {
    let mode = match m {
        Mode::Pod => NamespaceMode::Pod,
        Mode::Container => NamespaceMode::Container,
        Mode::Node => NamespaceMode::Node,
        Mode::Target => NamespaceMode::Target,
    };
    mode as i32
}

fn resources(r: LinuxContainerResources) -> spec::Resources {
    spec::Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus,
        cpuset_mems: r.cpuset_mems,
        hugepage_limits: r
            .hugepage_limits
            .into_iter()
            .map(|h| (h.page_size, h.limit))
            .collect(),
        unified: r.unified.into_iter().collect(),
    }
}

fn sorted(m: HashMap<String, String>) -> BTreeMap<String, String> {
    m.into_iter().collect()
}

/// PodSandboxConfig -> crius's pod spec.
fn pod_spec(c: PodSandboxConfig, runtime_handler: String) -> Result<PodSpec, Status> {
    let meta = c.metadata.ok_or_else(|| missing("config.metadata"))?;
    validate::name("metadata.name", &meta.name)?;
    validate::name("metadata.uid", &meta.uid)?;
    validate::name("metadata.namespace", &meta.namespace)?;
    if !c.log_directory.is_empty() && !c.log_directory.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "log_directory {:?} is not an absolute path",
            c.log_directory
        )));
    }
    let linux = c.linux.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let ns = sc.namespace_options.unwrap_or_default();
    if let Some(p) = c
        .port_mappings
        .iter()
        .find(|p| !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err())
    {
        return Err(Status::invalid_argument(format!(
            "port_mappings host_ip {:?} is not an IP address",
            p.host_ip
        )));
    }
    let port_mappings = c
        .port_mappings
        .into_iter()
        .map(|p| spec::PortMapping {
            protocol: match Protocol::try_from(p.protocol) {
                Ok(Protocol::Udp) => spec::Protocol::Udp,
                Ok(Protocol::Sctp) => spec::Protocol::Sctp,
                _ => spec::Protocol::Tcp,
            },
            container_port: p.container_port,
            host_port: p.host_port,
            host_ip: p.host_ip,
        })
        .collect();
    Ok(PodSpec {
        name: meta.name,
        uid: meta.uid,
        namespace: meta.namespace,
        attempt: meta.attempt,
        hostname: c.hostname,
        log_directory: c.log_directory,
        dns: c.dns_config.map(|d| spec::Dns {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        port_mappings,
        labels: sorted(c.labels),
        annotations: sorted(c.annotations),
        cgroup_parent: linux.cgroup_parent,
        namespaces: spec::NamespaceOptions {
            network: mode(ns.network)?,
            pid: mode(ns.pid)?,
            ipc: mode(ns.ipc)?,
            target_id: ns.target_id,
            user: user_namespace(ns.userns_options.as_ref())?,
        },
        sysctls: sorted(linux.sysctls),
        privileged: sc.privileged,
        resources: linux.resources.map(resources),
        overhead: linux.overhead.map(resources),
        runtime_handler,
    })
}

/// CRI userns_options -> the pod's user namespace (`None`: the host's).
pub(super) fn user_namespace(
    u: Option<&UserNamespace>,
) -> Result<Option<spec::UserNamespace>, Status> {
    let Some(u) = u else { return Ok(None) };
    let maps = |v: &[IdMapping]| -> Vec<spec::IdMap> {
        v.iter()
            .map(|m| spec::IdMap {
                container_id: m.container_id,
                host_id: m.host_id,
                length: m.length,
            })
            .collect()
    };
    spec::UserNamespace::from_request(mode(u.mode)?, &maps(&u.uids), &maps(&u.gids))
        .map_err(Status::invalid_argument)
}

/// The pod's user namespace as CRI userns_options.
fn user_namespace_back(u: Option<&spec::UserNamespace>) -> UserNamespace {
    let map = |m: &spec::IdMap| IdMapping {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    };
    match u {
        None => UserNamespace {
            mode: NamespaceMode::Node as i32,
            ..Default::default()
        },
        Some(u) => UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids: vec![map(&u.uid)],
            gids: vec![map(&u.gid)],
        },
    }
}

fn metadata(s: &PodSpec) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: s.name.clone(),
        uid: s.uid.clone(),
        namespace: s.namespace.clone(),
        attempt: s.attempt,
    }
}

fn state(s: State) -> i32 {
    match s {
        State::Ready => PodSandboxState::SandboxReady as i32,
        State::NotReady | State::Creating => PodSandboxState::SandboxNotready as i32,
    }
}

fn namespace_options(s: &PodSpec) -> NamespaceOption {
    let ns = &s.namespaces;
    NamespaceOption {
        network: mode_back(ns.network),
        pid: mode_back(ns.pid),
        ipc: mode_back(ns.ipc),
        target_id: ns.target_id.clone(),
        userns_options: Some(user_namespace_back(ns.user.as_ref())),
    }
}

fn unsorted(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

pub(super) fn pod_sandbox_status(r: &PodRecord) -> PodSandboxStatus {
    let network = r.network.as_ref().map(|n| PodSandboxNetworkStatus {
        ip: n.ip.clone(),
        additional_ips: n
            .additional_ips
            .iter()
            .map(|ip| PodIp { ip: ip.clone() })
            .collect(),
    });
    PodSandboxStatus {
        id: r.id.clone(),
        metadata: Some(metadata(&r.spec)),
        state: state(r.state),
        created_at: r.created_at,
        network: Some(network.unwrap_or_default()),
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(namespace_options(&r.spec)),
            }),
        }),
        labels: unsorted(&r.spec.labels),
        annotations: unsorted(&r.spec.annotations),
        runtime_handler: r.spec.runtime_handler.clone(),
    }
}

fn pod_sandbox(r: &PodRecord) -> PodSandbox {
    PodSandbox {
        id: r.id.clone(),
        metadata: Some(metadata(&r.spec)),
        state: state(r.state),
        created_at: r.created_at,
        labels: unsorted(&r.spec.labels),
        annotations: unsorted(&r.spec.annotations),
        runtime_handler: r.spec.runtime_handler.clone(),
    }
}

/// PodSandboxStatus's verbose info: what an operator debugging a pod needs.
fn verbose_info(r: &PodRecord) -> serde_json::Value {
    serde_json::json!({
        "id": r.id,
        "state": r.state,
        "reason": r.reason,
        "namespaces": {
            "network": r.netns,
            "ipc": r.ipcns,
            "uts": r.utsns,
            "pid": r.pid_ns_path(),
        },
        "shm": r.shm,
        "cgroupPath": r.cgroup.as_ref().map(|c| &c.path),
        "cgroupCreated": r.cgroup_created,
        "initCgroupPath": r.init_cgroup.as_ref().map(|c| &c.path),
        "monitorPid": r.monitor.map(|m| m.pid),
        "initPid": r.init.map(|m| m.pid),
        "stateDir": r.dir.dir,
        "cniResult": r.network.as_ref().map(|n| &n.result),
        "config": r.spec,
        "bootId": r.boot_id,
    })
}

fn filter(f: PodSandboxFilter) -> Filter {
    Filter {
        id: f.id,
        state: f.state.map(|s| {
            if s.state == PodSandboxState::SandboxReady as i32 {
                State::Ready
            } else {
                State::NotReady
            }
        }),
        labels: sorted(f.label_selector),
    }
}
