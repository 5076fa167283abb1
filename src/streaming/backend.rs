//! The daemon's side of the streaming server: exec into and attach to the
//! containers of [`Containers`], port-forward into the pods of [`Pods`].

use std::sync::Arc;

use super::fdio::FdIo;
use super::{Control, Error, NetTarget, Process, Request, Runtime, Stdio};
use crate::container::engine::AttachEnd;
use crate::container::{Attached, Containers, ExecWaiter};
use crate::pod::{Pods, State};

pub struct DaemonRuntime {
    pub containers: Arc<Containers>,
    pub pods: Arc<Pods>,
}

struct ExecControl(ExecWaiter);

#[async_trait::async_trait]
impl Control for ExecControl {
    async fn wait(&self) -> Result<i32, Error> {
        self.0.wait().await.map_err(|e| Error::runtime(&e))
    }

    async fn abandon(&self) {
        self.0.kill().await;
    }
}

/// An attached client: the session lasts until the monitor ends the
/// attachment (one byte on the end pipe, then EOF); dropping the end pipe
/// detaches.
struct AttachControl {
    end: FdIo,
    container: Attached,
}

#[async_trait::async_trait]
impl Control for AttachControl {
    async fn wait(&self) -> Result<i32, Error> {
        let mut b = [0u8; 1];
        match self.end.read(&mut b).await {
            Ok(1) if AttachEnd::from_byte(b[0]) == Some(AttachEnd::TooSlow) => Err(Error::Precondition(
                "the attached client fell too far behind the container's output and was cut off"
                    .into(),
            )),
            // The container exited (an attach reports no exit code, as
            // containerd's and CRI-O's do not).
            Ok(_) => Ok(0),
            Err(e) => Err(Error::Io {
                what: "read the attachment's end pipe".into(),
                source: e,
            }),
        }
    }

    async fn abandon(&self) {
        // Detaching is closing the pipes, which dropping the session does.
    }

    async fn resize(&self, width: u16, height: u16) {
        if let Err(e) = self.container.resize(width, height).await {
            tracing::debug!(error = %crate::error::chain(&e), "resize the container's terminal");
        }
    }
}

#[async_trait::async_trait]
impl Runtime for DaemonRuntime {
    async fn check(&self, req: &Request) -> Result<(), Error> {
        match req {
            Request::Exec {
                container_id, cmd, ..
            } => {
                if cmd.is_empty() {
                    return Err(Error::Invalid("exec: cmd is required".into()));
                }
                self.containers
                    .check_running(container_id)
                    .map_err(|e| Error::runtime(&e))
            }
            Request::Attach { container_id, .. } => self
                .containers
                .check_running(container_id)
                .map_err(|e| Error::runtime(&e)),
            Request::PortForward { pod_id } => self.net_target(pod_id).await.map(drop),
        }
    }

    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<Process, Error> {
        let started = self
            .containers
            .exec_stream(container_id, cmd, tty, stdin)
            .await
            .map_err(|e| Error::runtime(&e))?;
        let h = started.handle;
        let stdio = if tty {
            Stdio::Pty {
                master: h.stdout,
                stdin,
            }
        } else {
            Stdio::Pipes {
                stdin: h.stdin,
                stdout: Some(h.stdout),
                stderr: h.stderr,
            }
        };
        Ok(Process {
            stdio,
            control: Box::new(ExecControl(started.waiter)),
        })
    }

    async fn attach(&self, container_id: &str, _tty: bool, stdin: bool) -> Result<Process, Error> {
        let (h, container) = self
            .containers
            .attach_stream(container_id, stdin)
            .await
            .map_err(|e| Error::runtime(&e))?;
        let end = FdIo::new(h.end).map_err(|e| Error::Io {
            what: "poll the attachment's end pipe".into(),
            source: e,
        })?;
        // The container's terminal stays in the monitor: output and input
        // are pipes here, resizes go to the monitor.
        Ok(Process {
            stdio: Stdio::Pipes {
                stdin: h.stdin,
                stdout: Some(h.stdout),
                stderr: h.stderr,
            },
            control: Box::new(AttachControl { end, container }),
        })
    }

    async fn net_target(&self, pod_id: &str) -> Result<NetTarget, Error> {
        let rec = self.pods.status(pod_id).map_err(|e| Error::runtime(&e))?;
        if rec.state != State::Ready {
            return Err(Error::Precondition(format!(
                "pod sandbox {} is not ready",
                rec.id
            )));
        }
        Ok(match rec.netns {
            Some(path) => NetTarget::Netns(path),
            None => NetTarget::Host,
        })
    }
}
