//! The container RPCs: CreateContainer, StartContainer, StopContainer,
//! RemoveContainer, ContainerStatus, ListContainers,
//! UpdateContainerResources, ReopenContainerLog, ExecSync; prost <->
//! `crate::container` conversions (the ContainerConfig itself is converted
//! in [`super::container`]).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Response, Status};

use super::Cri;
use super::error::{missing, status};
use super::proto::*;
use crate::container::record::{ContainerRecord, State};
use crate::container::{CreateRequest, ExecRequest, Filter};
use crate::pod::spec::NamespaceMode as Mode;

type Reply<T> = Result<Response<T>, Status>;

impl Cri {
    pub(super) async fn create_container_rpc(
        &self,
        req: CreateContainerRequest,
    ) -> Reply<CreateContainerResponse> {
        super::record_field("pod_id", req.pod_sandbox_id.as_str());
        if req.pod_sandbox_id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        let c = req.config.ok_or_else(|| missing("config"))?;
        super::validate::container_size(&c, &self.daemon.config.grpc)?;
        let pod_security = req
            .sandbox_config
            .as_ref()
            .and_then(|p| p.linux.as_ref())
            .and_then(|l| l.security_context.as_ref());
        let config = super::container::container_config(&c, pod_security)?;
        let ns = c
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let pid_mode = match NamespaceMode::try_from(ns.pid) {
            Ok(NamespaceMode::Pod) => Mode::Pod,
            Ok(NamespaceMode::Container) => Mode::Container,
            Ok(NamespaceMode::Node) => Mode::Node,
            Ok(NamespaceMode::Target) => Mode::Target,
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown PID namespace mode {}",
                    ns.pid
                )));
            }
        };
        let stop_signal = match Signal::try_from(c.stop_signal) {
            Ok(Signal::RuntimeDefault) => None,
            Ok(s) => Some(signal_number(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "stop signal {} is not supported",
                    s.as_str_name()
                ))
            })?),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "unknown stop signal {}",
                    c.stop_signal
                )));
            }
        };
        let request = CreateRequest {
            pod_id: req.pod_sandbox_id,
            attempt: c.metadata.as_ref().map(|m| m.attempt).unwrap_or(0),
            image: c
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            log_path: c.log_path.clone(),
            labels: c.labels.clone().into_iter().collect(),
            stdin_once: c.stdin_once,
            stop_signal,
            pid_mode,
            target_id: ns.target_id,
            config,
        };
        let id = self
            .daemon
            .containers
            .create(request)
            .await
            .map_err(status)?;
        super::record_field("container_id", id.as_str());
        Ok(Response::new(CreateContainerResponse { container_id: id }))
    }

    pub(super) async fn start_container_rpc(
        &self,
        req: StartContainerRequest,
    ) -> Reply<StartContainerResponse> {
        let id = required_id(&req.container_id)?;
        self.daemon.containers.start(id).await.map_err(status)?;
        Ok(Response::new(StartContainerResponse {}))
    }

    pub(super) async fn stop_container_rpc(
        &self,
        req: StopContainerRequest,
    ) -> Reply<StopContainerResponse> {
        let id = required_id(&req.container_id)?;
        let timeout = Duration::from_secs(req.timeout.max(0) as u64);
        self.daemon
            .containers
            .stop(id, timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(StopContainerResponse {}))
    }

    pub(super) async fn remove_container_rpc(
        &self,
        req: RemoveContainerRequest,
    ) -> Reply<RemoveContainerResponse> {
        let id = required_id(&req.container_id)?;
        self.daemon.containers.remove(id).await.map_err(status)?;
        Ok(Response::new(RemoveContainerResponse {}))
    }

    pub(super) fn container_status_rpc(
        &self,
        req: ContainerStatusRequest,
    ) -> Reply<ContainerStatusResponse> {
        let id = required_id(&req.container_id)?;
        let rec = self.daemon.containers.status(id).map_err(status)?;
        let mut info = HashMap::new();
        if req.verbose {
            info.insert("info".to_string(), verbose_info(&rec).to_string());
        }
        Ok(Response::new(ContainerStatusResponse {
            status: Some(container_status(&rec)),
            info,
        }))
    }

    pub(super) fn list_containers_rpc(
        &self,
        req: ListContainersRequest,
    ) -> Reply<ListContainersResponse> {
        let filter = match req.filter {
            Some(f) => Filter {
                id: f.id,
                pod_id: f.pod_sandbox_id,
                state: f.state.map(|s| state_from(s.state)).transpose()?,
                labels: f.label_selector.into_iter().collect(),
            },
            None => Filter::default(),
        };
        let containers = self
            .daemon
            .containers
            .list(&filter)
            .map_err(status)?
            .iter()
            .map(container)
            .collect();
        Ok(Response::new(ListContainersResponse { containers }))
    }

    pub(super) async fn update_container_resources_rpc(
        &self,
        req: UpdateContainerResourcesRequest,
    ) -> Reply<UpdateContainerResourcesResponse> {
        let id = required_id(&req.container_id)?;
        let linux = req.linux.ok_or_else(|| missing("linux"))?;
        let res = super::container::resources(&linux)?;
        let adj = i32::try_from(linux.oom_score_adj)
            .ok()
            .filter(|v| (-1000..=1000).contains(v))
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "oom_score_adj {} is out of range",
                    linux.oom_score_adj
                ))
            })?;
        self.daemon
            .containers
            .update_resources(id, res, Some(adj))
            .await
            .map_err(status)?;
        Ok(Response::new(UpdateContainerResourcesResponse {}))
    }

    pub(super) async fn reopen_container_log_rpc(
        &self,
        req: ReopenContainerLogRequest,
    ) -> Reply<ReopenContainerLogResponse> {
        let id = required_id(&req.container_id)?;
        self.daemon
            .containers
            .reopen_log(id)
            .await
            .map_err(status)?;
        Ok(Response::new(ReopenContainerLogResponse {}))
    }

    pub(super) async fn exec_sync_rpc(&self, req: ExecSyncRequest) -> Reply<ExecSyncResponse> {
        let id = required_id(&req.container_id)?;
        if req.cmd.is_empty() {
            return Err(missing("cmd"));
        }
        super::validate::exec_cmd(&req.cmd, &self.daemon.config.grpc)?;
        if req.timeout < 0 {
            return Err(Status::invalid_argument(format!(
                "timeout {} is negative",
                req.timeout
            )));
        }
        let out = self
            .daemon
            .containers
            .exec_sync(ExecRequest {
                container_id: id.to_string(),
                cmd: req.cmd,
                timeout: (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64)),
            })
            .await
            .map_err(status)?;
        Ok(Response::new(ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }
}

fn required_id(id: &str) -> Result<&str, Status> {
    super::record_field("container_id", id);
    if id.is_empty() {
        return Err(missing("container_id"));
    }
    Ok(id)
}

fn state_from(s: i32) -> Result<State, Status> {
    Ok(match ContainerState::try_from(s) {
        Ok(ContainerState::ContainerCreated) => State::Created,
        Ok(ContainerState::ContainerRunning) => State::Running,
        Ok(ContainerState::ContainerExited) => State::Exited,
        // No container is ever UNKNOWN to crius: match none.
        Ok(ContainerState::ContainerUnknown) => State::Creating,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown container state {s}"
            )));
        }
    })
}

fn state_back(s: State) -> i32 {
    let s = match s {
        State::Created => ContainerState::ContainerCreated,
        State::Running => ContainerState::ContainerRunning,
        State::Exited => ContainerState::ContainerExited,
        State::Creating => ContainerState::ContainerUnknown,
    };
    s as i32
}

fn metadata(r: &ContainerRecord) -> ContainerMetadata {
    ContainerMetadata {
        name: r.name.clone(),
        attempt: r.attempt,
    }
}

fn image_spec(r: &ContainerRecord) -> ImageSpec {
    ImageSpec {
        image: r.image.clone(),
        user_specified_image: r.image.clone(),
        ..Default::default()
    }
}

fn container(r: &ContainerRecord) -> Container {
    Container {
        id: r.id.clone(),
        pod_sandbox_id: r.pod_id.clone(),
        metadata: Some(metadata(r)),
        image: Some(image_spec(r)),
        image_ref: r.image_id.clone(),
        state: state_back(r.state),
        created_at: r.created_at,
        labels: r.labels.clone().into_iter().collect(),
        annotations: r.annotations.clone().into_iter().collect(),
        image_id: r.image_id.clone(),
    }
}

pub(super) fn container_status(r: &ContainerRecord) -> ContainerStatus {
    let res = &r.resources;
    ContainerStatus {
        id: r.id.clone(),
        metadata: Some(metadata(r)),
        state: state_back(r.state),
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        exit_code: r.exit_code,
        image: Some(image_spec(r)),
        image_ref: r.image_id.clone(),
        image_id: r.image_id.clone(),
        reason: r.reason.clone(),
        message: r.message.clone(),
        labels: r.labels.clone().into_iter().collect(),
        annotations: r.annotations.clone().into_iter().collect(),
        mounts: r
            .mounts
            .iter()
            .map(|m| Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.display().to_string(),
                readonly: m.readonly,
                propagation: m.propagation,
                recursive_read_only: m.recursive_readonly,
                image: m.image.as_ref().map(|i| ImageSpec {
                    image: i.image.clone(),
                    user_specified_image: i.image.clone(),
                    image_ref: i.id.clone(),
                    ..Default::default()
                }),
                image_sub_path: m
                    .image
                    .as_ref()
                    .map(|i| i.sub_path.clone())
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        log_path: r
            .log_path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        resources: Some(ContainerResources {
            linux: Some(LinuxContainerResources {
                cpu_period: res.cpu_period.unwrap_or(0) as i64,
                cpu_quota: res.cpu_quota.unwrap_or(0),
                cpu_shares: res.cpu_shares.unwrap_or(0) as i64,
                memory_limit_in_bytes: res.memory_limit.unwrap_or(0),
                memory_swap_limit_in_bytes: res.memory_swap_limit.unwrap_or(0),
                oom_score_adj: r.oom_score_adj.unwrap_or(0) as i64,
                cpuset_cpus: res.cpuset_cpus.clone().unwrap_or_default(),
                cpuset_mems: res.cpuset_mems.clone().unwrap_or_default(),
                hugepage_limits: res
                    .hugepage_limits
                    .iter()
                    .map(|(k, v)| HugepageLimit {
                        page_size: k.clone(),
                        limit: *v,
                    })
                    .collect(),
                unified: res.unified.clone().into_iter().collect(),
            }),
            windows: None,
        }),
        user: r.user.as_ref().map(|u| ContainerUser {
            linux: Some(LinuxContainerUser {
                uid: u.uid.into(),
                gid: u.gid.into(),
                supplemental_groups: u.groups.iter().map(|&g| g.into()).collect(),
            }),
        }),
        stop_signal: signal_enum(r.stop_signal),
    }
}

fn verbose_info(r: &ContainerRecord) -> serde_json::Value {
    let pid = r.init.map(|i| i.pid);
    let ns = |kind: &str| pid.map(|p| format!("/proc/{p}/ns/{kind}"));
    serde_json::json!({
        "id": r.id,
        "sandboxID": r.pod_id,
        "pid": pid,
        "state": r.state,
        "pidMode": r.pid_mode,
        "namespaces": {
            "network": ns("net"),
            "ipc": ns("ipc"),
            "uts": ns("uts"),
            "pid": ns("pid"),
            "mnt": ns("mnt"),
        },
        "cgroupPath": r.cgroup.as_ref().map(|c| &c.path),
        "stopSignal": r.stop_signal,
        "dir": r.dir,
        "runtimeSpec": r.spec,
    })
}

/// A signal number as the CRI Signal enum (RUNTIME_DEFAULT when it has no
/// name there).
fn signal_enum(n: i32) -> i32 {
    nix::sys::signal::Signal::try_from(n)
        .ok()
        .and_then(|s| Signal::from_str_name(&format!("SIGNAL_{}", s.as_str())))
        .unwrap_or(Signal::RuntimeDefault) as i32
}

/// The CRI Signal enum as a signal number.
fn signal_number(s: Signal) -> Option<i32> {
    let name = s.as_str_name().strip_prefix("SIGNAL_")?;
    match name {
        "SIGRTMIN" => Some(libc::SIGRTMIN()),
        "SIGRTMAX" => Some(libc::SIGRTMAX()),
        "SIGCLD" => Some(libc::SIGCHLD),
        "SIGPOLL" => Some(libc::SIGIO),
        n if n.starts_with("SIGRTMINPLUS") => n["SIGRTMINPLUS".len()..]
            .parse::<i32>()
            .ok()
            .map(|k| libc::SIGRTMIN() + k),
        n if n.starts_with("SIGRTMAXMINUS") => n["SIGRTMAXMINUS".len()..]
            .parse::<i32>()
            .ok()
            .map(|k| libc::SIGRTMAX() - k),
        n => crate::container::parse_signal(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_signals_map_to_numbers() {
        assert_eq!(signal_number(Signal::Sigterm), Some(libc::SIGTERM));
        assert_eq!(signal_number(Signal::Sigkill), Some(libc::SIGKILL));
        assert_eq!(signal_number(Signal::Sigcld), Some(libc::SIGCHLD));
        assert_eq!(
            signal_number(Signal::Sigrtminplus3),
            Some(libc::SIGRTMIN() + 3)
        );
        assert_eq!(signal_number(Signal::RuntimeDefault), None);
        assert_eq!(signal_enum(libc::SIGINT), Signal::Sigint as i32);
        assert_eq!(signal_enum(libc::SIGTERM), Signal::Sigterm as i32);
    }

    #[test]
    fn states_round_trip() {
        for s in [State::Created, State::Running, State::Exited] {
            assert_eq!(state_from(state_back(s)).unwrap(), s);
        }
        assert!(state_from(42).is_err());
    }
}
