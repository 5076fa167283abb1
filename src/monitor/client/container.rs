//! Containers and exec processes of a pod, as the daemon drives them
//! through the pod's monitor ([`PodMonitor`]). This is the engine's API for
//! the container service (see CONTAINER-CONTRACT.md):
//!
//! ```text
//! let pod = PodMonitor::new(PodDir::new(state, pod_id));
//! pod.create_container(&Launch { .. }) -> ProcRef            // init blocked before execve,
//!                                                            // every mount done
//! pod.start_container(id)                                    // execve; Failed{step:"exec"} if it fails
//! pod.signal_container(id, signal)                           // to its init
//! pod.wait_container(id) -> Exit                             // resolves at the reap, at once if exited;
//!                                                            // also written to PodDir::exit_file(id)
//! pod.reopen_container_log(id)                               // after kubelet's rotation; running only
//! pod.remove_container(id)                                   // kill if alive, reap, forget, exit file gone
//! pod.exec(&ExecLaunch { .. }) -> ExecHandle                 // stdio fds in the daemon
//! pod.wait_exec(exec_id) -> Exit                             // then the monitor forgets the exec
//! pod.signal_exec(exec_id, signal)                           // its whole process group
//! ```
//!
//! Every call opens its own connection (a wait may block for hours; the
//! others are short). Errors: [`Error::Failed`] carries the step that
//! failed (`"mount /data"`, `"exec"`, `"user"`, `"cwd"`, `"join cgroup"`,
//! `"unknown container"`, `"not running"`...). A failed create leaves no
//! process, no mount (they live in the container's own mount namespace) and
//! no exit file; only a missing bind-mount source is created as a directory
//! (what containerd and CRI-O do), and the rootfs mount point directory.
//!
//! The monitor copies a container's stdout/stderr into `log_path` in the CRI
//! format (a container without a log path has its output read and dropped).
//! The init is born in `cgroup_procs`' cgroup v2 directory when the kernel
//! can, and joins the others (cgroup v1 `tasks`) before any namespace when
//! the container gets a cgroup namespace of its own, otherwise just before
//! it execs the workload ([`ContainerLaunch::joins_cgroup_in_setup`]):
//! its setup (mounts, the rootfs' files) is then accounted to the
//! monitor's v1 cgroups. The daemon owns the upper/work dirs, the
//! cgroup and the rootfs directory.

use std::borrow::Cow;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

pub use super::launch::Launch;
use super::{self as client, Connection};
use crate::error::{Classify, Kind};
use crate::init::user::GroupsPolicy;
use crate::monitor::PodDir;
pub use crate::monitor::protocol::AttachEnd;
use crate::monitor::protocol::{
    ATTACH_VERSION, COMPACT_LAUNCH_VERSION, Exit, MOUNTS_VERSION, Reply, Request, SECURITY_VERSION,
};
pub use crate::monitor::protocol::{ContainerLaunch, ExecLaunch};
use crate::monitor::sync::Step;
use crate::sys::process::ProcRef;

/// A client attached to a container's own stdio: pipes from and to the
/// monitor, owned by the daemon (closing `end` detaches).
#[derive(Debug)]
pub struct AttachHandle {
    /// One byte ([`AttachEnd`]) then EOF when the attachment ends.
    pub end: OwnedFd,
    /// The container's stdout (its terminal's output with a tty).
    pub stdout: OwnedFd,
    /// `None` when the container has a tty.
    pub stderr: Option<OwnedFd>,
    /// `None` when not asked or the container has no stdin.
    pub stdin: Option<OwnedFd>,
    pub tty: bool,
}

/// A started exec: its process and its stdio, owned by the daemon.
#[derive(Debug)]
pub struct ExecHandle {
    pub process: ProcRef,
    pub stdin: Option<OwnedFd>,
    /// stdout, or the pty master with a tty.
    pub stdout: OwnedFd,
    /// `None` with a tty.
    pub stderr: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Monitor(#[from] client::Error),
    /// The monitor refused or failed the request at `step`.
    #[error("{step}: {message}")]
    Failed { step: Step, message: String },
    #[error("monitor of {dir}: unexpected reply {reply}")]
    Unexpected { dir: PathBuf, reply: String },
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::Monitor(e) => e.kind(),
            Error::Failed { step, .. } => step.kind(),
            Error::Unexpected { .. } => Kind::Internal,
        }
    }
}

/// A refusal or failure reply as an error.
fn failed(reply: Reply) -> Result<Reply, Error> {
    match reply {
        Reply::Failed { step, message } => Err(Error::Failed { step, message }),
        Reply::Error { message } => Err(Error::Failed {
            step: Step::Monitor,
            message,
        }),
        other => Ok(other),
    }
}

/// `create_container` as monitors of protocol 5 and earlier read it: the
/// launch carries the OCI Spec.
#[derive(serde::Serialize)]
#[serde(tag = "op", rename = "create_container")]
struct LegacyCreate<'a> {
    launch: &'a Launch,
}

/// How long a create may take (mounts of a big image, a slow disk).
pub const CREATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The monitor of one pod, as seen from the daemon.
#[derive(Debug, Clone)]
pub struct PodMonitor {
    pod: PodDir,
}

impl PodMonitor {
    pub fn new(pod: PodDir) -> PodMonitor {
        PodMonitor { pod }
    }

    pub fn dir(&self) -> &PodDir {
        &self.pod
    }

    async fn call(&self, req: Request<'_>, limit: Option<Duration>) -> Result<Reply, Error> {
        let mut conn = Connection::open(&self.pod).await?;
        failed(conn.call_within(&req, limit).await?)
    }

    fn unexpected(&self, reply: Reply) -> Error {
        Error::Unexpected {
            dir: self.pod.dir.clone(),
            reply: format!("{reply:?}"),
        }
    }

    async fn ok(&self, req: Request<'_>) -> Result<(), Error> {
        match self.call(req, Some(client::CALL_TIMEOUT)).await? {
            Reply::Ok => Ok(()),
            other => Err(self.unexpected(other)),
        }
    }

    /// Creates the container's init, blocked before execve with its rootfs
    /// mounted.
    /// A monitor older than [`SECURITY_VERSION`] would ignore the filter
    /// and the Strict groups policy: such a launch is refused. Monitors
    /// of [`COMPACT_LAUNCH_VERSION`] and later get the compact launch,
    /// older ones the Spec-carrying one they know.
    pub async fn create_container(&self, launch: &Launch) -> Result<ProcRef, Error> {
        let needs = launch.seccomp.is_some() || launch.groups != GroupsPolicy::Merge;
        let mut conn = Connection::open(&self.pod).await?;
        let version = conn.version;
        if needs && version < SECURITY_VERSION {
            return Err(Error::Failed {
                step: Step::MonitorVersion,
                message: format!(
                    "the pod's monitor speaks protocol {version}, which cannot apply a seccomp \
                     filter or a Strict groups policy; recreate the pod"
                ),
            });
        }
        if version < MOUNTS_VERSION && launch.needs_mounts_version() {
            return Err(Error::Failed {
                step: Step::MonitorVersion,
                message: format!(
                    "the pod's monitor speaks protocol {version}, which cannot mount image \
                     volumes or recursive read-only binds; recreate the pod"
                ),
            });
        }
        let reply = if version >= COMPACT_LAUNCH_VERSION {
            let compact = launch.compact().map_err(|r| Error::Failed {
                step: r.step,
                message: r.message,
            })?;
            let req = Request::CreateContainer {
                launch: Cow::Owned(compact),
            };
            conn.call_within(&req, Some(CREATE_TIMEOUT)).await?
        } else {
            let req = LegacyCreate { launch };
            conn.call_within(&req, Some(CREATE_TIMEOUT)).await?
        };
        match failed(reply)? {
            Reply::Created { init } => Ok(init),
            other => Err(self.unexpected(other)),
        }
    }

    /// Releases the init to execve its entrypoint.
    pub async fn start_container(&self, id: &str) -> Result<(), Error> {
        self.ok(Request::StartContainer { id: id.into() }).await
    }

    /// Signals the container's init.
    pub async fn signal_container(&self, id: &str, signal: i32) -> Result<(), Error> {
        self.ok(Request::SignalContainer {
            id: id.into(),
            signal,
        })
        .await
    }

    /// Resolves when the container's init has been reaped.
    pub async fn wait_container(&self, id: &str) -> Result<Exit, Error> {
        match self
            .call(Request::WaitContainer { id: id.into() }, None)
            .await?
        {
            Reply::Exited { exit } => Ok(exit),
            other => Err(self.unexpected(other)),
        }
    }

    pub async fn reopen_container_log(&self, id: &str) -> Result<(), Error> {
        self.ok(Request::ReopenContainerLog { id: id.into() }).await
    }

    /// Kills (if alive), reaps and forgets the container; unknown ids succeed.
    pub async fn remove_container(&self, id: &str) -> Result<(), Error> {
        self.ok(Request::RemoveContainer { id: id.into() }).await
    }

    /// Starts a process in a running container.
    pub async fn exec(&self, launch: &ExecLaunch) -> Result<ExecHandle, Error> {
        let mut conn = Connection::open(&self.pod).await?;
        let req = Request::Exec {
            launch: Cow::Borrowed(launch),
        };
        let (reply, fds) = conn.call_with_fds(&req, CREATE_TIMEOUT).await?;
        match reply {
            Reply::ExecStarted { process, fds: n } if n == fds.len() => {
                let mut fds = fds.into_iter();
                let stdin = if launch.stdin { fds.next() } else { None };
                let stdout = fds.next().ok_or_else(|| Error::Unexpected {
                    dir: self.pod.dir.clone(),
                    reply: "exec reply without stdout".into(),
                })?;
                let stderr = if launch.tty { None } else { fds.next() };
                Ok(ExecHandle {
                    process,
                    stdin,
                    stdout,
                    stderr,
                })
            }
            Reply::Failed { step, message } => Err(Error::Failed { step, message }),
            other => Err(self.unexpected(other)),
        }
    }

    /// Resolves when the exec process has been reaped.
    pub async fn wait_exec(&self, exec_id: &str) -> Result<Exit, Error> {
        match self
            .call(Request::WaitExec { id: exec_id.into() }, None)
            .await?
        {
            Reply::Exited { exit } => Ok(exit),
            other => Err(self.unexpected(other)),
        }
    }

    /// Attaches to a running container's stdio (`stdin`: also write to
    /// its stdin, if it has one).
    pub async fn attach_container(&self, id: &str, stdin: bool) -> Result<AttachHandle, Error> {
        let mut conn = Connection::open(&self.pod).await?;
        if conn.version < ATTACH_VERSION {
            return Err(Error::Failed {
                step: Step::MonitorVersion,
                message: format!(
                    "the pod's monitor speaks protocol {}, which cannot attach; recreate the pod",
                    conn.version
                ),
            });
        }
        let req = Request::AttachContainer {
            id: id.into(),
            stdin,
        };
        let (reply, fds) = conn.call_with_fds(&req, client::CALL_TIMEOUT).await?;
        match reply {
            Reply::Attached { fds: n, stdin, tty }
                if n == fds.len() && n == 2 + usize::from(!tty) + usize::from(stdin) =>
            {
                let mut fds = fds.into_iter();
                let mut next = || fds.next().expect("counted");
                Ok(AttachHandle {
                    end: next(),
                    stdout: next(),
                    stderr: (!tty).then(&mut next),
                    stdin: stdin.then(&mut next),
                    tty,
                })
            }
            Reply::Failed { step, message } => Err(Error::Failed { step, message }),
            other => Err(self.unexpected(other)),
        }
    }

    /// Sets the terminal size of a tty container.
    pub async fn resize_container(&self, id: &str, width: u16, height: u16) -> Result<(), Error> {
        self.ok(Request::ResizeContainer {
            id: id.into(),
            width,
            height,
        })
        .await
    }

    /// Signals the exec's process group (e.g. SIGKILL at an ExecSync timeout).
    pub async fn signal_exec(&self, exec_id: &str, signal: i32) -> Result<(), Error> {
        self.ok(Request::SignalExec {
            id: exec_id.into(),
            signal,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};

    use super::*;
    use crate::init::rootfs::Overlay;

    /// A monitor of protocol `version` that answers `connections`
    /// connections: it reads each line with the request types of its
    /// protocol (5 and older: [`protocol::v5`], else this build's) and
    /// answers with that protocol's replies: `hello`, then `created` to
    /// any request, and what a monitor says to a line it cannot read.
    /// Returns the request lines after `hello`.
    fn old_monitor(
        pod: &PodDir,
        version: u32,
        connections: usize,
    ) -> std::thread::JoinHandle<Vec<String>> {
        use crate::monitor::protocol::v5;
        std::fs::create_dir_all(&pod.dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(pod.socket()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let me = ProcRef {
            pid: 1,
            start_time: 0,
        };
        // The reply line, and whether the request was a hello.
        let answer = move |line: &str| -> (String, bool) {
            let (reply, hello) = if version <= v5::VERSION {
                let (reply, hello) = match serde_json::from_str::<v5::Request>(line) {
                    Ok(v5::Request::Hello { .. }) => (
                        v5::Reply::Hello {
                            version,
                            monitor: me,
                        },
                        true,
                    ),
                    Ok(_) => (v5::Reply::Created { init: me }, false),
                    Err(e) => (v5::unsupported(&e), false),
                };
                (serde_json::to_string(&reply), hello)
            } else {
                let (reply, hello) = match serde_json::from_str::<Request>(line) {
                    Ok(Request::Hello { .. }) => (
                        Reply::Hello {
                            version,
                            monitor: me,
                        },
                        true,
                    ),
                    Ok(_) => (Reply::Created { init: me }, false),
                    Err(e) => (
                        Reply::Error {
                            message: format!("unsupported request: {e}"),
                        },
                        false,
                    ),
                };
                (serde_json::to_string(&reply), hello)
            };
            (reply.expect("serializable"), hello)
        };
        std::thread::spawn(move || {
            let mut requests = Vec::new();
            for _ in 0..connections {
                let Ok((stream, _)) = listener.accept() else {
                    break;
                };
                let mut w = stream.try_clone().unwrap();
                let mut lines = BufReader::new(stream).lines();
                while let Some(Ok(line)) = lines.next() {
                    let (reply, hello) = answer(&line);
                    if !hello {
                        requests.push(line);
                    }
                    if writeln!(w, "{reply}").is_err() {
                        break;
                    }
                }
            }
            requests
        })
    }

    fn launch() -> Launch {
        Launch {
            id: "c".into(),
            spec: oci_spec::runtime::Spec::default(),
            env: Vec::new(),
            user: "0".into(),
            groups: GroupsPolicy::Merge,
            seccomp: None,
            overlay: Overlay {
                layers: Vec::new(),
                upper: "/u".into(),
                work: "/w".into(),
            },
            volumes: Vec::new(),
            cgroup_procs: Vec::new(),
            log_path: None,
            log_dir: None,
            tty: false,
            stdin: false,
            stdin_once: false,
        }
    }

    #[tokio::test]
    async fn an_old_monitor_never_gets_a_launch_it_would_not_confine() {
        let state = tempfile::tempdir().unwrap();
        let pod = PodDir::new(state.path(), "p");
        let server = old_monitor(&pod, 2, 2);
        let mut l = launch();
        l.seccomp = Some(crate::seccomp::Filter {
            program: vec![0; 8],
            flags: 0,
        });
        let err = PodMonitor::new(pod.clone())
            .create_container(&l)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), Kind::FailedPrecondition, "{err}");
        assert!(err.to_string().contains("protocol 2"), "{err}");
        // Without a filter or Strict groups the old monitor still creates.
        PodMonitor::new(pod)
            .create_container(&launch())
            .await
            .unwrap();
        assert_eq!(
            server.join().unwrap().len(),
            1,
            "only the unconfined launch was sent"
        );
    }

    #[tokio::test]
    async fn a_version_3_monitor_never_gets_image_volumes_or_rro() {
        let state = tempfile::tempdir().unwrap();
        let pod = PodDir::new(state.path(), "p");
        let server = old_monitor(&pod, 3, 3);
        let mut volume = launch();
        volume.volumes = vec![crate::init::rootfs::ImageVolume {
            target: "/v".into(),
            layers: vec!["/l/1".into()],
            sub_path: Default::default(),
            image: "sha256:i".into(),
            staging: "/c/v".into(),
        }];
        let mut rro = launch();
        rro.spec.set_mounts(Some(vec![
            oci_spec::runtime::MountBuilder::default()
                .destination("/m")
                .typ("bind")
                .source("/h")
                .options(vec!["rbind".into(), "ro".into(), "rro".into()])
                .build()
                .unwrap(),
        ]));
        for l in [volume, rro] {
            let err = PodMonitor::new(pod.clone())
                .create_container(&l)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), Kind::FailedPrecondition, "{err}");
            assert!(err.to_string().contains("protocol 3"), "{err}");
        }
        PodMonitor::new(pod)
            .create_container(&launch())
            .await
            .unwrap();
        assert_eq!(
            server.join().unwrap().len(),
            1,
            "only the plain launch was sent"
        );
    }

    /// A launch with a process, a namespace to join and one to create.
    fn full_launch() -> Launch {
        use oci_spec::runtime::{
            LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, ProcessBuilder, RootBuilder,
        };
        let mut l = launch();
        l.overlay.layers = vec!["/l/1".into()];
        l.spec = oci_spec::runtime::SpecBuilder::default()
            .root(RootBuilder::default().path("/c/rootfs").build().unwrap())
            .process(
                ProcessBuilder::default()
                    .args(vec!["sleep".to_string(), "1".to_string()])
                    .cwd("/work")
                    .build()
                    .unwrap(),
            )
            .linux(
                LinuxBuilder::default()
                    .namespaces(vec![
                        LinuxNamespaceBuilder::default()
                            .typ(LinuxNamespaceType::Network)
                            .path("/ns/net")
                            .build()
                            .unwrap(),
                        LinuxNamespaceBuilder::default()
                            .typ(LinuxNamespaceType::Pid)
                            .build()
                            .unwrap(),
                        LinuxNamespaceBuilder::default()
                            .typ(LinuxNamespaceType::Mount)
                            .build()
                            .unwrap(),
                    ])
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        l
    }

    /// The upgrade: a monitor started by the previous crius (protocol 5)
    /// still running under a daemon of this build gets the Spec-carrying
    /// launch it reads (field for field protocol 5's `ContainerLaunch`);
    /// a monitor of this build gets the compact one, without the Spec.
    #[tokio::test]
    async fn each_monitor_gets_the_launch_of_its_protocol() {
        let l = full_launch();
        for version in [5, 6] {
            let state = tempfile::tempdir().unwrap();
            let pod = PodDir::new(state.path(), "p");
            let server = old_monitor(&pod, version, 1);
            PodMonitor::new(pod).create_container(&l).await.unwrap();
            let lines = server.join().unwrap();
            assert_eq!(lines.len(), 1);
            let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
            assert_eq!(v["op"], "create_container");
            let sent = &v["launch"];
            if version == 5 {
                let mut keys: Vec<&str> = sent
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(String::as_str)
                    .collect();
                keys.sort_unstable();
                // Protocol 5's ContainerLaunch, field for field.
                let mut v5 = [
                    "id",
                    "spec",
                    "env",
                    "user",
                    "groups",
                    "seccomp",
                    "overlay",
                    "volumes",
                    "cgroup_procs",
                    "log_path",
                    "log_dir",
                    "tty",
                    "stdin",
                    "stdin_once",
                ];
                v5.sort_unstable();
                assert_eq!(keys, v5);
                let back: Launch = serde_json::from_value(sent.clone()).unwrap();
                assert_eq!(back, l);
                // Read by protocol 5's own types, it is the same launch.
                let old: crate::monitor::protocol::v5::Request =
                    serde_json::from_str(&lines[0]).unwrap();
                let crate::monitor::protocol::v5::Request::CreateContainer { launch } = old else {
                    panic!("{old:?}");
                };
                assert_eq!(launch.spec, l.spec);
                assert_eq!(launch.overlay, l.overlay);
                assert_eq!(
                    (&launch.id, &launch.user, &launch.env),
                    (&l.id, &l.user, &l.env)
                );
            } else {
                assert!(sent.get("spec").is_none(), "{sent}");
                let c: ContainerLaunch = serde_json::from_value(sent.clone()).unwrap();
                assert_eq!(c, l.compact().unwrap());
                assert_eq!(c.root, std::path::Path::new("/c/rootfs"));
                assert_eq!(c.join, [("/ns/net".into(), crate::sys::ns::Kind::Net)]);
                assert_eq!(c.create, [crate::sys::ns::Kind::Pid]);
                assert_eq!(c.process.args, ["sleep", "1"]);
                assert_eq!(c.process.cwd, std::path::Path::new("/work"));
                assert!(
                    c.rootfs
                        .iter()
                        .any(|s| matches!(s, crate::init::rootfs::Step::PivotRoot(_))),
                    "{:?}",
                    c.rootfs
                );
            }
        }
    }

    #[tokio::test]
    async fn a_launch_the_daemon_cannot_plan_never_reaches_the_monitor() {
        let state = tempfile::tempdir().unwrap();
        let pod = PodDir::new(state.path(), "p");
        let server = old_monitor(&pod, 6, 1);
        let mut l = full_launch();
        l.overlay.layers.clear();
        let err = PodMonitor::new(pod).create_container(&l).await.unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Failed {
                    step: Step::RootfsPlan,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.kind(), Step::RootfsPlan.kind());
        assert!(server.join().unwrap().is_empty());
    }
}
