//! The production pod engine: one `crius monitor` process per pod.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::engine::{self, Engine, Spec, Started};
use crate::error::{Classify, chain};
use crate::monitor::{PodDir, client};
use crate::sys::process::ProcRef;

pub struct Monitors {
    /// The binary to run as the monitor.
    pub exe: PathBuf,
    /// How long a monitor may take to set a pod up.
    pub setup_timeout: Duration,
}

fn map(e: client::Error) -> engine::Error {
    let kind = e.kind();
    match e {
        client::Error::Setup { step, message } => engine::Error::Step {
            step,
            message,
            kind,
        },
        client::Error::Timeout { .. } => engine::Error::Timeout(chain(&e)),
        e => engine::Error::Monitor(chain(&e)),
    }
}

#[async_trait::async_trait]
impl Engine for Monitors {
    async fn start(&self, dir: &PodDir, spec: &Spec) -> engine::Result<Started> {
        let s = client::start(&self.exe, dir, spec, self.setup_timeout)
            .await
            .map_err(map)?;
        Ok(Started {
            monitor: s.monitor,
            init: s.init,
        })
    }

    async fn attach(&self, dir: &PodDir) -> engine::Result<ProcRef> {
        let conn = client::Connection::open(dir).await.map_err(map)?;
        Ok(conn.monitor)
    }

    async fn stop(&self, dir: &PodDir, monitor: Option<ProcRef>) {
        let Some(m) = monitor.or_else(|| read_pid_file(dir)) else {
            return;
        };
        if !m.alive() {
            return;
        }
        if let Err(e) = client::shutdown(dir).await {
            tracing::debug!(dir = %dir.dir.display(), error = %chain(&e), "monitor shutdown failed; killing it");
        }
        kill_and_wait(m).await;
    }

    async fn exited(&self, monitor: ProcRef) {
        if let Some(pidfd) = monitor.open() {
            pidfd.exited().await;
        }
    }
}

/// SIGKILL, then waits up to 5 s for the process to be gone: the pidfd
/// turns readable at the exit, no polling.
pub(super) async fn kill_and_wait(m: ProcRef) {
    if let Some(fd) = m.open() {
        let _ = fd.signal(Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), fd.exited()).await;
    }
}

/// The monitor's own record of itself, for when the daemon died before
/// storing it.
pub(super) fn read_pid_file(dir: &PodDir) -> Option<ProcRef> {
    let text = std::fs::read(dir.pid_file()).ok()?;
    serde_json::from_slice(&text).ok()
}
