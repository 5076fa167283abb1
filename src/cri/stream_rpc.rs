//! Exec, Attach and PortForward: validate, then hand back a one-time URL on
//! the streaming server (see crate::streaming), as kubelet expects.

use tonic::{Response, Status};

use super::Cri;
use super::error::{missing, status};
use super::proto::*;
use crate::streaming::Request;

type Reply<T> = Result<Response<T>, Status>;

/// The stdio flags kubelet's streaming server accepts.
fn check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument(
            "one of stdin, stdout or stderr must be true",
        ));
    }
    Ok(())
}

impl Cri {
    async fn stream_url(&self, req: Request) -> Result<String, Status> {
        let server = self
            .daemon
            .streaming()
            .ok_or_else(|| Status::unavailable("the streaming server is not running"))?;
        server.url_for(req).await.map_err(status)
    }

    pub(super) async fn exec_rpc(&self, req: ExecRequest) -> Reply<ExecResponse> {
        super::record_field("container_id", req.container_id.as_str());
        if req.container_id.is_empty() {
            return Err(missing("container_id"));
        }
        if req.cmd.is_empty() {
            return Err(missing("cmd"));
        }
        super::validate::exec_cmd(&req.cmd, &self.daemon.config.grpc)?;
        check_stdio(req.tty, req.stdin, req.stdout, req.stderr)?;
        let url = self
            .stream_url(Request::Exec {
                container_id: req.container_id,
                cmd: req.cmd,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })
            .await?;
        Ok(Response::new(ExecResponse { url }))
    }

    pub(super) async fn attach_rpc(&self, req: AttachRequest) -> Reply<AttachResponse> {
        super::record_field("container_id", req.container_id.as_str());
        if req.container_id.is_empty() {
            return Err(missing("container_id"));
        }
        check_stdio(req.tty, req.stdin, req.stdout, req.stderr)?;
        let url = self
            .stream_url(Request::Attach {
                container_id: req.container_id,
                tty: req.tty,
                stdin: req.stdin,
                stdout: req.stdout,
                stderr: req.stderr,
            })
            .await?;
        Ok(Response::new(AttachResponse { url }))
    }

    pub(super) async fn port_forward_rpc(
        &self,
        req: PortForwardRequest,
    ) -> Reply<PortForwardResponse> {
        super::record_field("pod_id", req.pod_sandbox_id.as_str());
        if req.pod_sandbox_id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        if let Some(port) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Status::invalid_argument(format!(
                "port: {port} is not a TCP port"
            )));
        }
        let url = self
            .stream_url(Request::PortForward {
                pod_id: req.pod_sandbox_id,
            })
            .await?;
        Ok(Response::new(PortForwardResponse { url }))
    }
}
