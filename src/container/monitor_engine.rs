//! The production engine: the pod's monitor ([`crate::monitor::client::container`]),
//! one connection per call.

use crate::container::engine::{self, Engine, ExecHandle, ExecLaunch, Exit, Launch};
use crate::error::Classify;
use crate::monitor::PodDir;
use crate::monitor::client;
use crate::monitor::client::container::{self as mc, PodMonitor};
use crate::monitor::sync::Step;
use crate::sys::process::ProcRef;

/// Drives containers through each pod's monitor.
pub struct Monitors {
    /// `crius-pod-init`, run as a scope's [`engine::Holder`].
    pub pod_init: std::path::PathBuf,
}

fn convert(e: mc::Error) -> engine::Error {
    match e {
        mc::Error::Failed {
            step: Step::Unknown(_),
            message,
        } => engine::Error::Unknown(message),
        mc::Error::Monitor(client::Error::Io { what, .. })
            if what == "connect to monitor" || what == "open pod directory" =>
        {
            engine::Error::MonitorGone(crate::error::chain(&e))
        }
        e => {
            let kind = e.kind();
            match e {
                mc::Error::Failed { step, message } => engine::Error::Step {
                    step,
                    message,
                    kind,
                },
                e => engine::Error::Step {
                    step: Step::Monitor,
                    message: crate::error::chain(&e),
                    kind,
                },
            }
        }
    }
}

fn monitor(pod: &PodDir) -> PodMonitor {
    PodMonitor::new(pod.clone())
}

#[async_trait::async_trait]
impl Engine for Monitors {
    async fn create(&self, pod: &PodDir, l: &Launch) -> engine::Result<ProcRef> {
        monitor(pod).create_container(l).await.map_err(convert)
    }
    async fn holder(&self) -> engine::Result<engine::Holder> {
        engine::Holder::spawn(&self.pod_init).map_err(|e| convert(mc::Error::Monitor(e)))
    }
    async fn start(&self, pod: &PodDir, id: &str) -> engine::Result<()> {
        monitor(pod).start_container(id).await.map_err(convert)
    }
    async fn signal(&self, pod: &PodDir, id: &str, signal: i32) -> engine::Result<()> {
        monitor(pod)
            .signal_container(id, signal)
            .await
            .map_err(convert)
    }
    async fn wait(&self, pod: &PodDir, id: &str) -> engine::Result<Exit> {
        monitor(pod).wait_container(id).await.map_err(convert)
    }
    async fn reopen_log(&self, pod: &PodDir, id: &str) -> engine::Result<()> {
        monitor(pod).reopen_container_log(id).await.map_err(convert)
    }
    async fn remove(&self, pod: &PodDir, id: &str) -> engine::Result<()> {
        monitor(pod).remove_container(id).await.map_err(convert)
    }
    async fn exec(&self, pod: &PodDir, l: &ExecLaunch) -> engine::Result<ExecHandle> {
        let h = monitor(pod).exec(l).await.map_err(convert)?;
        Ok(ExecHandle {
            proc: h.process,
            stdin: h.stdin,
            stdout: h.stdout,
            stderr: h.stderr,
        })
    }
    async fn attach(
        &self,
        pod: &PodDir,
        id: &str,
        stdin: bool,
    ) -> engine::Result<engine::AttachHandle> {
        monitor(pod)
            .attach_container(id, stdin)
            .await
            .map_err(convert)
    }
    async fn resize(&self, pod: &PodDir, id: &str, width: u16, height: u16) -> engine::Result<()> {
        monitor(pod)
            .resize_container(id, width, height)
            .await
            .map_err(convert)
    }
    async fn wait_exec(&self, pod: &PodDir, exec_id: &str) -> engine::Result<Exit> {
        monitor(pod).wait_exec(exec_id).await.map_err(convert)
    }
    async fn kill_exec(&self, pod: &PodDir, exec_id: &str) -> engine::Result<()> {
        monitor(pod)
            .signal_exec(exec_id, libc::SIGKILL)
            .await
            .map_err(convert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::sync::Subject;

    #[test]
    fn monitor_errors_keep_their_meaning() {
        let gone = convert(mc::Error::Monitor(client::Error::Io {
            what: "connect to monitor",
            path: "/x/monitor.sock".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        }));
        assert!(matches!(gone, engine::Error::MonitorGone(_)), "{gone:?}");
        let unknown = convert(mc::Error::Failed {
            step: Step::Unknown(Subject::Container),
            message: "abc".into(),
        });
        assert!(matches!(unknown, engine::Error::Unknown(_)));
        let mount = convert(mc::Error::Failed {
            step: Step::Mount("/data".into()),
            message: "no such file".into(),
        });
        assert_eq!(mount.to_string(), "mount /data: no such file");
        assert_eq!(mount.kind(), crate::error::Kind::InvalidArgument);
    }
}
