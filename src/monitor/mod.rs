//! The per-pod monitor: `crius-monitor <pod dir>`, a single-threaded
//! program of its own (no tokio; src/bin/crius-monitor.rs) that owns a
//! pod's processes. [`protocol`] is what the daemon and the monitor say to
//! each other, [`client`] the daemon's side (tokio), [`process`] the
//! monitor's; [`sync`] what a forked setup process tells the monitor and
//! the steps a failure names.
//!
//! It starts a new session (setsid), ignores SIGINT and SIGHUP and is a
//! child subreaper, so it outlives `crius serve` (restarts, Ctrl-C, a kill
//! of the daemon). It creates the pod's namespaces in a forked child (fork
//! is safe: the monitor has one thread), pins them, applies the sysctls
//! inside them, brings the new network namespace's lo up, mounts the pod's
//! /dev/shm, and in PID mode POD keeps that child as PID 1 of the pod's PID
//! namespace, where it executes the pod init ([`POD_INIT_BIN`],
//! [`crate::init::pod`]). It reaps every child the moment SIGCHLD arrives
//! and writes how it ended to `<pod dir>/exits/<name>` before anything
//! else, since only a parent can collect an exit status. The daemon talks
//! to it over `<pod dir>/monitor.sock` ([`protocol`]) and watches it with a
//! pidfd.

pub mod client;
pub mod process;
pub mod protocol;
pub mod sync;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sys::ns::Kind;

/// What the daemon asks a new monitor to set up, written to
/// `<pod dir>/monitor.json` before the monitor starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub pod_id: String,
    /// `<state>/ns`: the shared mount holding every pod's pins.
    pub ns_root: PathBuf,
    /// Namespaces to create and pin (user, net, ipc, uts); the others are
    /// the host's. With a user namespace every other one is created inside
    /// it.
    pub namespaces: Vec<Kind>,
    /// The mappings of the pod's user namespace (when `namespaces` holds
    /// one), written by the monitor before the namespace child goes on.
    #[serde(default)]
    pub user: Option<crate::sys::ns::UserMaps>,
    /// Fork a pod init as PID 1 of a new PID namespace (PID mode POD).
    pub pid_namespace: bool,
    /// Set in the new UTS namespace.
    pub hostname: Option<String>,
    /// Written inside the pod's namespaces, in order.
    pub sysctls: Vec<(String, String)>,
    /// Size of the pod's own /dev/shm; `None` for host IPC pods.
    pub shm_size: Option<u64>,
}

/// The files of one pod under `<state>/pods/<pod-id>/` and its pins under
/// `<state>/ns/<pod-id>/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDir {
    pub dir: PathBuf,
    pub ns_dir: PathBuf,
}

impl PodDir {
    pub fn new(state: &Path, pod_id: &str) -> PodDir {
        PodDir {
            dir: state.join("pods").join(pod_id),
            ns_dir: state.join("ns").join(pod_id),
        }
    }

    pub fn spec(&self) -> PathBuf {
        self.dir.join("monitor.json")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("monitor.sock")
    }
    /// The monitor's own [`ProcRef`], written by the monitor at its start
    /// (so a daemon killed before recording it can still find it).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("monitor.pid")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("monitor.log")
    }
    pub fn exits(&self) -> PathBuf {
        self.dir.join("exits")
    }
    pub fn exit_file(&self, name: &str) -> PathBuf {
        self.exits().join(name)
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn hostname(&self) -> PathBuf {
        self.dir.join("hostname")
    }
    pub fn shm(&self) -> PathBuf {
        self.dir.join("shm")
    }
    pub fn ns(&self, kind: Kind) -> PathBuf {
        self.ns_dir.join(kind.name())
    }
}

/// A unix socket path may hold 107 bytes; a state dir plus a 64-digit pod
/// id can be longer. The socket is therefore always addressed through an
/// open fd of its directory: `/proc/self/fd/N/monitor.sock`. Keep the
/// returned `File` open while the path is used.
pub fn socket_path(pod: &PodDir) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(&pod.dir)?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/monitor.sock", dir.as_raw_fd()));
    Ok((dir, path))
}

/// The file name of the monitor binary.
pub const MONITOR_BIN: &str = "crius-monitor";
/// The file name of the pod init binary, beside the monitor's.
pub const POD_INIT_BIN: &str = "crius-pod-init";
/// The environment variable through which the daemon names the pod init
/// binary to a monitor it runs from a sealed handle.
pub const POD_INIT_ENV: &str = "CRIUS_POD_INIT";

/// Name of the pod init's exit file.
pub const INIT: &str = "init";

/// Reads an exit file; `None` while the child has not ended.
pub fn read_exit(path: &Path) -> Option<protocol::Exit> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}
