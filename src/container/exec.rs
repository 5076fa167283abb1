//! ExecSync: runs a command in a running container and returns its output.
//!
//! The engine forks the process inside the container (namespaces, cgroup,
//! user, env) and hands its stdio to the daemon as fds; the output is
//! buffered here, never in the monitor. Combined output is capped below
//! kubelet's 16 MiB message limit (the rest is read and dropped, so the
//! command never blocks on a full pipe). A `timeout` kills the exec's whole
//! process group, reaps it and answers DEADLINE_EXCEEDED (what kubelet maps
//! to a probe timeout). The call returns when the command exits even if a
//! background child still holds stdout open: after the exit the pipes are
//! drained for a short bound only, as containerd does.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::engine::ExecLaunch;
use super::{Containers, Error};

/// The most output ExecSync returns, stdout and stderr together: below
/// kubelet's 16 MiB gRPC message limit with room for the envelope.
pub const MAX_OUTPUT: usize = 16 * 1024 * 1024 - 64 * 1024;

#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    /// `None`: no limit.
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// One captured stream; what was read stays even if the reader is cut off.
#[derive(Clone, Default)]
struct Capture {
    data: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    fn spawn(&self, fd: OwnedFd, total: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
        let data = self.data.clone();
        tokio::spawn(async move {
            let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                return;
            };
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let before = total.fetch_add(n, Ordering::SeqCst);
                        let room = MAX_OUTPUT.saturating_sub(before).min(n);
                        if room > 0 {
                            data.lock()
                                .expect("lock poisoned")
                                .extend_from_slice(&buf[..room]);
                        }
                    }
                }
            }
        })
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.data.lock().expect("lock poisoned"))
    }
}

impl Containers {
    /// The files through which an exec process joins the container's
    /// cgroup before execve ([`crate::cgroups::Cgroups::join_files`]: it
    /// is born in the cgroup v2 one); in a delegated cgroup the container
    /// made an inner node, its init's.
    fn exec_cgroup_procs(&self, rec: &super::record::ContainerRecord) -> Vec<std::path::PathBuf> {
        rec.cgroup
            .as_ref()
            .map(|c| {
                self.cgroups
                    .exec_join_files(c, rec.init.as_ref().map(|i| i.pid))
            })
            .unwrap_or_default()
    }

    /// ExecSync.
    pub async fn exec_sync(&self, req: ExecRequest) -> Result<ExecOutput, Error> {
        if req.cmd.is_empty() {
            return Err(Error::Invalid("exec: cmd is required".into()));
        }
        let rec = self.running(&req.container_id)?;
        let id = rec.id.clone();
        let exec_id = crate::ids::new_id();
        let launch = ExecLaunch {
            exec_id: exec_id.clone(),
            container_id: id.clone(),
            args: req.cmd.clone(),
            tty: false,
            stdin: false,
            cgroup_procs: self.exec_cgroup_procs(&rec),
        };
        let handle = self.engine.exec(&rec.pod_dir, &launch).await?;
        drop(handle.stdin);
        let total = Arc::new(AtomicUsize::new(0));
        let (out, err) = (Capture::default(), Capture::default());
        let mut readers = vec![out.spawn(handle.stdout, total.clone())];
        if let Some(stderr) = handle.stderr {
            readers.push(err.spawn(stderr, total.clone()));
        }
        let wait = self.engine.wait_exec(&rec.pod_dir, &exec_id);
        let exit = match req.timeout {
            Some(limit) => match tokio::time::timeout(limit, wait).await {
                Ok(exit) => exit,
                Err(_) => {
                    tracing::info!(container_id = %id, exec_id = %exec_id, ?limit, "exec timed out; killing its process group");
                    if let Err(e) = self.engine.kill_exec(&rec.pod_dir, &exec_id).await {
                        tracing::warn!(exec_id = %exec_id, error = %crate::error::chain(&e), "kill exec");
                    }
                    let reaped = tokio::time::timeout(
                        self.settings.kill_grace,
                        self.engine.wait_exec(&rec.pod_dir, &exec_id),
                    )
                    .await;
                    if reaped.is_err() {
                        tracing::warn!(exec_id = %exec_id, "exec not reaped after SIGKILL");
                    }
                    for r in readers {
                        r.abort();
                    }
                    return Err(Error::Deadline(format!(
                        "command {:?} timed out after {limit:?}",
                        req.cmd
                    )));
                }
            },
            None => wait.await,
        }?;
        // Drain what the command wrote, for a short bound: a background
        // child may keep the pipes open for ever.
        let drain = async {
            for r in &mut readers {
                let _ = r.await;
            }
        };
        if tokio::time::timeout(self.settings.exec_drain, drain)
            .await
            .is_err()
        {
            tracing::debug!(exec_id = %exec_id, "exec output still open after exit; cut off");
        }
        for r in &readers {
            r.abort();
        }
        Ok(ExecOutput {
            stdout: out.take(),
            stderr: err.take(),
            exit_code: exit.exit_code,
        })
    }
}

/// An exec started for a stream (Exec): its stdio, and the handle that
/// waits for it or kills it.
pub struct StreamExec {
    pub handle: super::engine::ExecHandle,
    pub waiter: ExecWaiter,
}

/// Waits for, or kills, one exec process.
pub struct ExecWaiter {
    engine: Arc<dyn super::engine::Engine>,
    pod_dir: crate::monitor::PodDir,
    exec_id: String,
    kill_grace: Duration,
}

impl ExecWaiter {
    /// The exit code, once the process has exited and was reaped.
    pub async fn wait(&self) -> Result<i32, Error> {
        Ok(self
            .engine
            .wait_exec(&self.pod_dir, &self.exec_id)
            .await?
            .exit_code)
    }

    /// SIGKILLs the exec's process group and waits (bounded) for the reap.
    pub async fn kill(&self) {
        if let Err(e) = self.engine.kill_exec(&self.pod_dir, &self.exec_id).await {
            tracing::warn!(exec_id = %self.exec_id, error = %crate::error::chain(&e), "kill exec");
        }
        let reaped = tokio::time::timeout(
            self.kill_grace,
            self.engine.wait_exec(&self.pod_dir, &self.exec_id),
        )
        .await;
        if reaped.is_err() {
            tracing::warn!(exec_id = %self.exec_id, "exec not reaped after SIGKILL");
        }
    }
}

/// A container a client is attached to: resizes its terminal.
pub struct Attached {
    engine: Arc<dyn super::engine::Engine>,
    pod_dir: crate::monitor::PodDir,
    id: String,
}

impl Attached {
    pub async fn resize(&self, width: u16, height: u16) -> Result<(), Error> {
        Ok(self
            .engine
            .resize(&self.pod_dir, &self.id, width, height)
            .await?)
    }
}

impl Containers {
    /// Starts `cmd` in a running container for a streaming session: the
    /// caller copies its stdio and must wait for it or kill it.
    pub async fn exec_stream(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<StreamExec, Error> {
        if cmd.is_empty() {
            return Err(Error::Invalid("exec: cmd is required".into()));
        }
        let rec = self.running(container_id)?;
        let exec_id = crate::ids::new_id();
        let launch = ExecLaunch {
            exec_id: exec_id.clone(),
            container_id: rec.id.clone(),
            args: cmd.to_vec(),
            tty,
            // With a tty, stdin is written to the pty master.
            stdin: stdin && !tty,
            cgroup_procs: self.exec_cgroup_procs(&rec),
        };
        let handle = self.engine.exec(&rec.pod_dir, &launch).await?;
        tracing::debug!(container_id = %rec.id, exec_id = %exec_id, tty, stdin, "exec started for a stream");
        Ok(StreamExec {
            handle,
            waiter: ExecWaiter {
                engine: self.engine.clone(),
                pod_dir: rec.pod_dir.clone(),
                exec_id,
                kill_grace: self.settings.kill_grace,
            },
        })
    }

    /// Attaches to a running container's own stdio (CRI Attach): the
    /// handle's pipes come from the pod's monitor, which keeps reading the
    /// container's output for the log whatever the client does.
    pub async fn attach_stream(
        &self,
        container_id: &str,
        stdin: bool,
    ) -> Result<(super::engine::AttachHandle, Attached), Error> {
        let rec = self.running(container_id)?;
        let handle = self.engine.attach(&rec.pod_dir, &rec.id, stdin).await?;
        tracing::debug!(container_id = %rec.id, stdin, tty = handle.tty, "attached");
        Ok((
            handle,
            Attached {
                engine: self.engine.clone(),
                pod_dir: rec.pod_dir,
                id: rec.id,
            },
        ))
    }

    /// Checks that `container_id` names a running container.
    pub fn check_running(&self, container_id: &str) -> Result<(), Error> {
        self.running(container_id).map(drop)
    }
}
