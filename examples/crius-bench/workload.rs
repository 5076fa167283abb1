//! The CRI calls of the benchmark: pod and container configurations as
//! kubelet sends them (a cgroup parent per pod, a log directory the client
//! made) and each lifecycle step timed in this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use crius::cri::proto::runtime_service_client::RuntimeServiceClient;
use crius::cri::proto::*;
use tokio::sync::Barrier;
use tonic::transport::Channel;

use crate::stats::Results;

/// Kubelet's NamespaceMode values.
pub const POD: i32 = 0;
pub const CONTAINER: i32 = 1;
pub const NODE: i32 = 2;

/// A container that stops at SIGTERM at once, whatever its PID, once it
/// has written [`READY`] to its log: as PID 1 of its PID namespace (mode
/// CONTAINER) a SIGTERM before the trap is set is ignored (PID 1's default
/// disposition), and StopContainer would wait out its whole timeout.
pub const WORKLOAD: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 0' TERM; echo ready; sleep 3600 & wait",
];

/// The workload's line once its trap is set.
const READY: &str = "ready";

/// How long a workload may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a lockstep client waits for the others at a step: longer
/// than any call takes, so only a client that failed makes it run out.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// What every call of one run shares.
#[derive(Clone)]
pub struct Bench {
    pub rt: RuntimeServiceClient<Channel>,
    pub image: String,
    /// Parent of the per-pod cgroups, e.g. /crius-bench-crius.
    pub cgroup_root: String,
    pub logs: PathBuf,
    pub label: String,
    /// Parallel clients in lockstep: each timed call starts when every
    /// client has reached it, so all of them make the same RPC at once.
    pub lockstep: Option<Arc<Barrier>>,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// A pod of this run: its id and config (containers need both).
pub struct Pod {
    pub id: String,
    pub config: PodSandboxConfig,
}

impl Bench {
    /// Waits for the other lockstep clients before a timed call (nothing
    /// without lockstep).
    async fn step(&self, rpc: &str) -> anyhow::Result<()> {
        if let Some(b) = &self.lockstep {
            tokio::time::timeout(STEP_TIMEOUT, b.wait())
                .await
                .with_context(|| format!("the other clients never reached {rpc}"))?;
        }
        Ok(())
    }

    fn pod_config(&self, pid: i32) -> anyhow::Result<PodSandboxConfig> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let uid = format!("{}-{}-{n}", self.label, std::process::id());
        let logs = self.logs.join(&uid);
        std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
        Ok(PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: format!("bench-{n}"),
                uid: uid.clone(),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: format!("bench-{n}"),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{}", self.cgroup_root, uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    pub async fn run_pod(&mut self, pid: i32, r: &mut Results, tag: &str) -> anyhow::Result<Pod> {
        let config = self.pod_config(pid)?;
        self.step("RunPodSandbox").await?;
        let t = Instant::now();
        let id = self
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        r.time(&format!("{tag}RunPodSandbox"), t.elapsed());
        Ok(Pod { id, config })
    }

    pub async fn stop_pod(&mut self, pod: &Pod, r: &mut Results, name: &str) -> anyhow::Result<()> {
        self.step("StopPodSandbox").await?;
        let t = Instant::now();
        self.rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .context("StopPodSandbox")?;
        r.time(name, t.elapsed());
        Ok(())
    }

    pub async fn remove_pod(
        &mut self,
        pod: &Pod,
        r: &mut Results,
        tag: &str,
    ) -> anyhow::Result<()> {
        self.step("RemovePodSandbox").await?;
        let t = Instant::now();
        self.rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod.id.clone(),
            })
            .await
            .context("RemovePodSandbox")?;
        r.time(&format!("{tag}RemovePodSandbox"), t.elapsed());
        Ok(())
    }

    /// The workload container `name`, in the PID namespace mode `pid`.
    fn container_config(&self, name: &str, pid: i32) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: self.image.clone(),
                ..Default::default()
            }),
            command: WORKLOAD.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        pid,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// CreateContainer of container `name` in `pod`: its id and the call's
    /// time.
    async fn create_container(
        &mut self,
        pod: &Pod,
        name: &str,
        pid: i32,
    ) -> anyhow::Result<(String, Duration)> {
        let config = self.container_config(name, pid);
        self.step("CreateContainer").await?;
        let t = Instant::now();
        let id = self
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.id.clone(),
                config: Some(config),
                sandbox_config: Some(pod.config.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        Ok((id, t.elapsed()))
    }

    /// CreateContainer timed `n` times (each container removed after,
    /// untimed) in a pod that holds `others` created containers: what a
    /// creation costs on a node with many containers.
    pub async fn crowded_creates(
        &mut self,
        others: usize,
        n: usize,
        r: &mut Results,
    ) -> anyhow::Result<()> {
        let pod = self.run_pod(CONTAINER, &mut Results::default(), "").await?;
        let result = async {
            for i in 0..others {
                self.create_container(&pod, &format!("other-{i}"), CONTAINER)
                    .await?;
            }
            for i in 0..n {
                let (id, took) = self
                    .create_container(&pod, &format!("timed-{i}"), CONTAINER)
                    .await?;
                r.time(
                    &format!("CreateContainer, {others} other containers in the pod"),
                    took,
                );
                self.rt
                    .remove_container(RemoveContainerRequest { container_id: id })
                    .await
                    .context("RemoveContainer")?;
            }
            anyhow::Ok(())
        }
        .await;
        self.stop_pod(&pod, &mut Results::default(), "").await?;
        self.remove_pod(&pod, &mut Results::default(), "").await?;
        result
    }

    /// CreateContainer and StartContainer, each timed and their sum.
    pub async fn start_container(
        &mut self,
        pod: &Pod,
        pid: i32,
        r: &mut Results,
        tag: &str,
    ) -> anyhow::Result<String> {
        let (id, created) = self.create_container(pod, "c", pid).await?;
        self.step("StartContainer").await?;
        let t = Instant::now();
        self.rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .context("StartContainer")?;
        let started = t.elapsed();
        r.time(&format!("{tag}CreateContainer"), created);
        r.time(&format!("{tag}StartContainer"), started);
        // The two calls' own times (in lockstep, not the wait between).
        r.time(
            &format!("{tag}CreateContainer+StartContainer"),
            created + started,
        );
        // Outside the timed calls, for every runtime alike.
        let log = PathBuf::from(&pod.config.log_directory).join("c.log");
        tokio::task::spawn_blocking(move || wait_ready(&log))
            .await
            .context("wait for the workload's ready line")??;
        Ok(id)
    }

    pub async fn exec_true(&mut self, id: &str, r: &mut Results) -> anyhow::Result<()> {
        let t = Instant::now();
        let resp = self
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .context("ExecSync")?
            .into_inner();
        r.time("ExecSync true", t.elapsed());
        anyhow::ensure!(
            resp.exit_code == 0,
            "ExecSync true: exit code {}",
            resp.exit_code
        );
        Ok(())
    }

    pub async fn stop_remove_container(
        &mut self,
        id: &str,
        r: &mut Results,
        tag: &str,
    ) -> anyhow::Result<()> {
        self.step("StopContainer").await?;
        let t = Instant::now();
        self.rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 10,
            })
            .await
            .context("StopContainer")?;
        r.time(&format!("{tag}StopContainer"), t.elapsed());
        self.step("RemoveContainer").await?;
        let t = Instant::now();
        self.rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .context("RemoveContainer")?;
        r.time(&format!("{tag}RemoveContainer"), t.elapsed());
        Ok(())
    }

    pub async fn pod_status(&mut self, pod: &Pod, r: &mut Results) -> anyhow::Result<()> {
        let t = Instant::now();
        let s = self
            .rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: pod.id.clone(),
                verbose: false,
            })
            .await
            .context("PodSandboxStatus")?
            .into_inner();
        r.time("PodSandboxStatus", t.elapsed());
        let ip = s
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        anyhow::ensure!(!ip.is_empty(), "pod {} has no IP", pod.id);
        Ok(())
    }

    /// The kubelet order: run the pod, create and start its container,
    /// stop and remove the container, stop and remove the pod.
    pub async fn container_cycle(&mut self, r: &mut Results, tag: &str) -> anyhow::Result<()> {
        let pod = self.run_pod(CONTAINER, r, tag).await?;
        let c = self.start_container(&pod, CONTAINER, r, tag).await?;
        self.stop_remove_container(&c, r, tag).await?;
        self.stop_pod(&pod, r, &format!("{tag}StopPodSandbox"))
            .await?;
        self.remove_pod(&pod, r, tag).await
    }

    /// A pod without containers: run, status, stop, remove.
    pub async fn pod_cycle(&mut self, r: &mut Results, tag: &str) -> anyhow::Result<()> {
        let pod = self.run_pod(CONTAINER, r, tag).await?;
        if tag.is_empty() {
            self.pod_status(&pod, r).await?;
        }
        self.stop_pod(&pod, r, &format!("{tag}StopPodSandbox (empty pod)"))
            .await?;
        self.remove_pod(&pod, r, tag).await
    }

    /// StopPodSandbox of a pod whose container runs, in PID mode `pid`.
    pub async fn stop_running_pod(&mut self, pid: i32, r: &mut Results) -> anyhow::Result<()> {
        let name = match pid {
            POD => "POD",
            CONTAINER => "CONTAINER",
            _ => "NODE",
        };
        let pod = self.run_pod(pid, &mut Results::default(), "").await?;
        self.start_container(&pod, pid, &mut Results::default(), "")
            .await?;
        self.stop_pod(
            &pod,
            r,
            &format!("StopPodSandbox, container running, PID {name}"),
        )
        .await?;
        self.remove_pod(&pod, &mut Results::default(), "").await
    }

    /// Stops and removes every pod of this run's label (after a failure).
    pub async fn remove_all(&mut self) {
        let Ok(pods) = self
            .rt
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await
        else {
            return;
        };
        for p in pods.into_inner().items {
            let pod = Pod {
                id: p.id,
                config: PodSandboxConfig::default(),
            };
            let mut r = Results::default();
            let _ = self.stop_pod(&pod, &mut r, "").await;
            let _ = self.remove_pod(&pod, &mut r, "").await;
        }
    }
}

/// Waits until the CRI log `log` has the workload's [`READY`] line
/// (`<time> stdout F ready`), woken by inotify on its directory (the
/// runtime creates the file, then appends to it), for at most
/// [`READY_TIMEOUT`].
fn wait_ready(log: &std::path::Path) -> anyhow::Result<()> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::AsFd;
    let dir = log.parent().context("log file without a directory")?;
    let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_MOVED_TO,
    )
    .with_context(|| format!("inotify watch {}", dir.display()))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.lines().any(|l| l.ends_with(&format!(" {READY}"))) {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(
            !left.is_zero(),
            "no {READY:?} line in {} after {READY_TIMEOUT:?}: {text:?}",
            log.display()
        );
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(ms))? > 0 {
            // Drained: the next event wakes the next poll.
            while ino.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
    }
}

/// Waits for `d`, for the monitor-side work of the previous call to settle
/// before a memory reading.
pub async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}
