//! The narrow interface between the container service and whatever creates
//! container processes: in production the pod's monitor (src/monitor), in
//! unit tests a recording fake.
//!
//! The service owns records, the state machine, cgroups, rollback and
//! timeouts; the engine owns processes: it creates a container's init
//! blocked before execve, releases it, signals it, reports its exit (at
//! once, never by polling), reopens its log, forgets it, and forks exec
//! processes whose stdio it hands to the daemon as fds.

use std::os::fd::OwnedFd;

use crate::error::{Classify, Kind};
use crate::monitor::PodDir;
pub use crate::monitor::protocol::Exit;
pub use crate::monitor::sync::Step;
use crate::sys::process::ProcRef;

/// What an engine needs to create a container's init (blocked before
/// execve) and to run a process in a running container: the monitor
/// protocol's own types, so nothing is copied between layers.
pub use crate::monitor::client::Launch;
pub use crate::monitor::protocol::ExecLaunch;

/// A client attached to a container's own stdio (the monitor's pipes).
pub use crate::monitor::client::container::{AttachEnd, AttachHandle};

/// A process a systemd scope is made with before the init exists.
pub use crate::monitor::client::Holder;

/// A running exec process and its stdio, handed to the daemon.
#[derive(Debug)]
pub struct ExecHandle {
    pub proc: ProcRef,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    /// `None` with a tty (stderr goes to the pty too).
    pub stderr: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step of creating the init failed; `step` names it ("mount /data",
    /// "exec: no such file").
    #[error("{step}: {message}")]
    Step {
        step: Step,
        message: String,
        kind: Kind,
    },
    /// The engine does not know this container (any more).
    #[error("container {0} is not known to its pod's monitor")]
    Unknown(String),
    /// The pod's monitor is gone: its containers are gone too.
    #[error("the pod's monitor is gone: {0}")]
    MonitorGone(String),
    #[error("{0}")]
    Other(String),
    #[error("the container engine is not available: {0}")]
    Unavailable(String),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::Step { kind, .. } => *kind,
            Error::Unknown(_) => Kind::NotFound,
            Error::MonitorGone(_) => Kind::FailedPrecondition,
            Error::Other(_) => Kind::Internal,
            Error::Unavailable(_) => Kind::Unimplemented,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The engine calls, per pod (addressed by its [`PodDir`]).
#[async_trait::async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Creates the init, every mount done, blocked before execve. A failure
    /// leaves nothing behind.
    async fn create(&self, pod: &PodDir, launch: &Launch) -> Result<ProcRef>;
    /// Releases the init to execve.
    async fn start(&self, pod: &PodDir, id: &str) -> Result<()>;
    /// Sends `signal` to the init.
    async fn signal(&self, pod: &PodDir, id: &str, signal: i32) -> Result<()>;
    /// Resolves when the init has exited (at once if it already has).
    async fn wait(&self, pod: &PodDir, id: &str) -> Result<Exit>;
    async fn reopen_log(&self, pod: &PodDir, id: &str) -> Result<()>;
    /// Forgets the container, killing its init first if it lives.
    async fn remove(&self, pod: &PodDir, id: &str) -> Result<()>;
    /// Forks an exec process in the container.
    async fn exec(&self, pod: &PodDir, launch: &ExecLaunch) -> Result<ExecHandle>;
    /// Resolves when the exec process has exited and was reaped.
    async fn wait_exec(&self, pod: &PodDir, exec_id: &str) -> Result<Exit>;
    /// SIGKILLs the exec's whole process group.
    async fn kill_exec(&self, pod: &PodDir, exec_id: &str) -> Result<()>;
    /// Attaches to a running container's stdio.
    async fn attach(&self, _pod: &PodDir, _id: &str, _stdin: bool) -> Result<AttachHandle> {
        Err(missing())
    }
    /// Sets a tty container's terminal size.
    async fn resize(&self, _pod: &PodDir, _id: &str, _width: u16, _height: u16) -> Result<()> {
        Err(missing())
    }
    /// A process to make a systemd scope with before the init exists
    /// ([`Holder`]).
    async fn holder(&self) -> Result<Holder> {
        Err(missing())
    }
}

/// The engine used until the monitor's container requests exist: every
/// call answers UNIMPLEMENTED with a clear message.
pub struct Missing;

#[async_trait::async_trait]
impl Engine for Missing {
    async fn create(&self, _: &PodDir, _: &Launch) -> Result<ProcRef> {
        Err(missing())
    }
    async fn start(&self, _: &PodDir, _: &str) -> Result<()> {
        Err(missing())
    }
    async fn signal(&self, _: &PodDir, _: &str, _: i32) -> Result<()> {
        Err(missing())
    }
    async fn wait(&self, _: &PodDir, _: &str) -> Result<Exit> {
        Err(missing())
    }
    async fn reopen_log(&self, _: &PodDir, _: &str) -> Result<()> {
        Err(missing())
    }
    async fn remove(&self, _: &PodDir, _: &str) -> Result<()> {
        Ok(())
    }
    async fn exec(&self, _: &PodDir, _: &ExecLaunch) -> Result<ExecHandle> {
        Err(missing())
    }
    async fn wait_exec(&self, _: &PodDir, _: &str) -> Result<Exit> {
        Err(missing())
    }
    async fn kill_exec(&self, _: &PodDir, _: &str) -> Result<()> {
        Err(missing())
    }
}

fn missing() -> Error {
    Error::Unavailable("the pod monitor cannot create containers in this build".into())
}
