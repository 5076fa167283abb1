//! The daemon's side of the streaming server: exec into the containers of
//! [`Containers`], port-forward into the pods of [`Pods`].

use std::sync::Arc;

use super::{Control, Error, NetTarget, Process, Request, Runtime, Stdio};
use crate::container::{Containers, ExecWaiter};
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
            Request::Attach { .. } => Err(Error::Runtime {
                kind: crate::error::Kind::Unimplemented,
                message: "Attach is not implemented yet".into(),
            }),
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

    async fn attach(&self, _: &str, _: bool, _: bool) -> Result<Process, Error> {
        Err(Error::Runtime {
            kind: crate::error::Kind::Unimplemented,
            message: "Attach is not implemented yet".into(),
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
