//! The daemon <-> monitor protocol: JSON lines over the monitor's unix
//! socket (`<pod dir>/monitor.sock`), one request and one reply per line.
//!
//! Every connection starts with `Hello`, naming the protocol version the
//! daemon speaks; the monitor answers with its own. A daemon accepts
//! monitors from `MIN_VERSION` to `VERSION` (the previous version at least),
//! so pods survive an upgrade of crius. Requests a monitor does not know
//! answer `Error`, never a closed connection, so a newer daemon can fall back.
//! Later requests (create a container init, exec) hand fds over the same
//! socket with SCM_RIGHTS next to their JSON line.

use serde::{Deserialize, Serialize};

use std::borrow::Cow;
use std::path::PathBuf;

use crate::init::rootfs;
pub use crate::monitor::process::log::LogPath;
use crate::monitor::sync::Step;
use crate::sys::caps::Sets;
use crate::sys::ns::Kind;
use crate::sys::process::ProcRef;

/// The version this build speaks (2: containers and execs; 3: a container
/// launch carries its seccomp filter and groups policy, which a version 2
/// monitor would silently ignore; 4: image volumes and recursive read-only
/// binds, which a version 3 monitor would silently skip or make plain
/// read-only; 5: attach and resize of a container's own stdio, terminals
/// from the container's devpts; 6: a container launch is the compact
/// [`ContainerLaunch`] (rootfs plan, namespaces, process settings) the
/// daemon builds from the OCI Spec, no longer the Spec itself, so the
/// monitor links no OCI types. A daemon sends monitors of 5 and older the
/// Spec-carrying launch they know, `monitor::client::Launch`).
pub const VERSION: u32 = 6;
/// The first version whose `create_container` takes the compact launch.
pub const COMPACT_LAUNCH_VERSION: u32 = 6;
/// The first version that serves `attach_container`.
pub const ATTACH_VERSION: u32 = 5;
/// The first version that applies a launch's seccomp filter and groups
/// policy.
pub const SECURITY_VERSION: u32 = 3;
/// The first version that mounts a launch's image volumes and `rro` binds.
pub const MOUNTS_VERSION: u32 = 4;
/// The oldest monitor version this daemon still drives.
pub const MIN_VERSION: u32 = 1;
/// The longest request line a monitor reads (every version: a container's
/// launch with its env); the daemon refuses to send a longer one.
pub const MAX_REQUEST: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
// One request lives per call, never in a collection: its size is moot.
#[allow(clippy::large_enum_variant)]
pub enum Request<'a> {
    Hello {
        version: u32,
    },
    /// The processes the monitor looks after.
    Status,
    /// Kill every child (the pod init first), reap them, then exit.
    Shutdown,
    /// Fork a container's init, set it up and leave it blocked before
    /// execve. Replies `Created` or `Failed`.
    CreateContainer {
        /// Borrowed by the daemon, owned once deserialized by the monitor.
        launch: Cow<'a, ContainerLaunch>,
    },
    /// Release a created init to execve. `Ok` or `Failed` (step "exec").
    StartContainer {
        id: String,
    },
    SignalContainer {
        id: String,
        signal: i32,
    },
    /// Answered with `Exited` when the container's init is reaped (at once
    /// if it already was): no polling.
    WaitContainer {
        id: String,
    },
    ReopenContainerLog {
        id: String,
    },
    /// Kill (if alive), reap and forget a container; its exit file goes too.
    RemoveContainer {
        id: String,
    },
    /// Fork a process in a running container. Replies `ExecStarted` with
    /// its stdio fds attached (SCM_RIGHTS): stdin (if asked), stdout,
    /// stderr (absent with a tty, whose master is the stdout fd).
    Exec {
        launch: Cow<'a, ExecLaunch>,
    },
    /// Answered with `Exited` when the exec process is reaped; the monitor
    /// then forgets it.
    WaitExec {
        id: String,
    },
    /// Signals the exec's whole process group.
    SignalExec {
        id: String,
        signal: i32,
    },
    /// Attaches a client to a running container's stdio. Replies
    /// `Attached` with pipes attached (SCM_RIGHTS): the end pipe (one
    /// byte, [`AttachEnd`], then EOF when the attachment ends; closing it
    /// detaches), stdout (the terminal's output with a tty), stderr (no
    /// tty only), stdin (when asked and the container has one).
    AttachContainer {
        id: String,
        stdin: bool,
    },
    /// Sets the terminal size of a tty container.
    ResizeContainer {
        id: String,
        width: u16,
        height: u16,
    },
}

/// Why an attachment ended: the byte written on its end pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AttachEnd {
    /// The container exited (or was removed).
    Exited = 0,
    /// The reader fell a full pipe behind and was cut off.
    TooSlow = 1,
}

impl AttachEnd {
    pub fn from_byte(b: u8) -> Option<AttachEnd> {
        match b {
            0 => Some(AttachEnd::Exited),
            1 => Some(AttachEnd::TooSlow),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        version: u32,
        monitor: ProcRef,
    },
    Status {
        /// The pod init while it lives.
        init: Option<ProcRef>,
        /// How the pod init ended, once it did.
        init_exit: Option<Exit>,
    },
    Ok,
    Error {
        message: String,
    },
    /// A container or exec request failed; `step` names what broke
    /// (on the wire its name: "mount /data", "exec", "unknown container").
    Failed {
        step: Step,
        message: String,
    },
    Created {
        init: ProcRef,
    },
    Exited {
        exit: Exit,
    },
    ExecStarted {
        process: ProcRef,
        /// How many fds ride with this line: stdin (if asked), stdout,
        /// stderr (if no tty), in that order.
        fds: usize,
    },
    Attached {
        /// How many fds ride with this line (see `AttachContainer`).
        fds: usize,
        /// Whether a stdin pipe is among them.
        stdin: bool,
        /// Whether the container has a terminal (then no stderr pipe).
        tty: bool,
    },
}

/// Everything the monitor needs to create a container's init, blocked
/// before execve (protocol 6 and later): what the init does, decided by the
/// daemon from the container's OCI Spec (`monitor::client::Launch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerLaunch {
    pub id: String,
    /// The rootfs mount point (host path).
    pub root: PathBuf,
    /// Namespaces stage 1 joins by path, in order (the pod's user
    /// namespace is not among them: see `userns`).
    pub join: Vec<(PathBuf, Kind)>,
    /// Namespaces stage 1 creates besides the container's own mount
    /// namespace (always created).
    pub create: Vec<Kind>,
    /// The pod's user namespace pin, joined by stage 2 once its mounts are
    /// made.
    pub userns: Option<PathBuf>,
    /// The host uid and gid the pod's user namespace maps its root to: the
    /// init and exec processes give their stdio pipes to them before
    /// joining it (absent from an older daemon: left host root's).
    #[serde(default)]
    pub userns_root: Option<(u32, u32)>,
    /// The rootfs plan (`init::rootfs::plan`), executed by stage 2.
    pub rootfs: Vec<rootfs::Step>,
    /// The process settings, shared by the container's exec processes.
    pub process: Process,
    /// The process environment, exact bytes, `KEY=value` each.
    pub env: Vec<Vec<u8>>,
    /// Resolved inside the rootfs by the init ([`crate::init::user`]).
    pub user: String,
    /// Where `user`'s supplemental groups come from.
    pub groups: crate::init::user::GroupsPolicy,
    /// The compiled seccomp filter, loaded by the init and every exec
    /// process; `None`: unconfined.
    pub seccomp: Option<SeccompFilter>,
    /// The files of the container's leaf the init joins through, one per
    /// hierarchy ([`crate::cgroups::Cgroups::join_files`]: v1 `tasks`, v2
    /// `cgroup.procs`; the wire name is older). An older monitor writes
    /// the init's pid to each: a v1 `tasks` file then moves its one thread.
    pub cgroup_procs: Vec<PathBuf>,
    /// The CRI log file; `None`: output is read and dropped.
    pub log_path: Option<PathBuf>,
    /// The pod's log directory: `log_path` is opened beneath it, never
    /// following a symlink out.
    pub log_dir: Option<PathBuf>,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

impl ContainerLaunch {
    /// The log file as a path beneath its directory.
    pub fn log_file(&self) -> Option<LogPath> {
        log_file(self.log_path.as_deref(), self.log_dir.as_deref())
    }

    /// Whether the init joins `cgroup_procs` in its setup (stage 1,
    /// before any namespace) rather than just before it execs the
    /// workload. Only a container with a cgroup namespace of its own needs
    /// the early join: the namespace's root is the cgroup its creator is
    /// in at that moment. Either way it is born in its cgroup v2
    /// directory when the kernel can, and nothing of the workload runs
    /// outside the cgroups.
    pub fn joins_cgroup_in_setup(&self) -> bool {
        self.create.contains(&Kind::Cgroup)
    }
}

/// The CRI log file `log_path` as a path beneath `log_dir` (absent: the
/// file's own directory); `None` without a log file or when it is not
/// beneath `log_dir`.
pub fn log_file(
    log_path: Option<&std::path::Path>,
    log_dir: Option<&std::path::Path>,
) -> Option<LogPath> {
    let full = log_path?;
    let (dir, rel) = match log_dir {
        Some(dir) => (
            dir.to_path_buf(),
            full.strip_prefix(dir).ok()?.to_path_buf(),
        ),
        None => (full.parent()?.to_path_buf(), full.file_name()?.into()),
    };
    Some(LogPath { dir, rel })
}

/// The settings of a container's process (OCI `process`), applied by its
/// init and by every exec process in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub args: Vec<String>,
    /// The working directory inside the container.
    pub cwd: PathBuf,
    pub rlimits: Vec<Rlimit>,
    pub oom_score_adj: Option<i32>,
    pub apparmor_profile: Option<String>,
    pub no_new_privileges: bool,
    /// The capability sets asked for (kernel numbers as bits); the process
    /// keeps those it holds.
    pub capabilities: Sets,
    /// Supplemental groups asked for besides the user's.
    pub additional_gids: Vec<u32>,
}

/// One resource limit (setrlimit(2)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// The OCI name: `RLIMIT_NOFILE`...
    pub resource: String,
    pub soft: u64,
    pub hard: u64,
}

/// A process to run in a running container, with the container's user,
/// environment, capabilities, working directory and cgroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecLaunch {
    /// Unique within the pod while the exec is known to the monitor.
    pub exec_id: String,
    pub container_id: String,
    pub args: Vec<String>,
    pub tty: bool,
    /// Hand the daemon a pipe to the process's stdin (else /dev/null).
    pub stdin: bool,
    /// The files of the container's cgroup the exec process joins through
    /// before execve ([`crate::cgroups::Cgroups::join_files`]; the wire
    /// name is older). The daemon sends them because with systemd the
    /// container's init joined no cgroup itself (the scope was made
    /// around it); empty (an older daemon): those the container's init
    /// joined.
    #[serde(default)]
    pub cgroup_procs: Vec<PathBuf>,
}

/// A compiled seccomp filter, as seccomp(2) takes it (built by
/// [`crate::seccomp`] in the daemon, loaded by the init).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompFilter {
    /// The `struct sock_filter` array (8 bytes per instruction, native
    /// byte order).
    pub program: Vec<u8>,
    /// SECCOMP_FILTER_FLAG_* bits for the load.
    pub flags: u32,
}

/// How a child ended: what the monitor writes to `<pod dir>/exits/<name>`
/// the moment it reaps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub pid: i32,
    /// The shell convention: the exit code, or 128 + the signal number.
    pub exit_code: i32,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Nanoseconds since the Unix epoch.
    pub finished_at: i64,
}

/// What the monitor prints on its stdout once the pod's namespaces are in
/// place (or could not be made); then it closes stdout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SetupReply {
    Ready {
        monitor: ProcRef,
        init: Option<ProcRef>,
    },
    Failed {
        /// The setup step that failed (on the wire its name, e.g. "apply sysctls").
        step: Step,
        message: String,
    },
}

/// What `crius-monitor --probe-userns <dir>` found (one JSON line on its
/// stdout): each probe needs the one before.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsernsProbe {
    /// A user namespace can be created and mapped.
    pub user_namespaces: bool,
    /// A mount of the probed dir's filesystem can be idmapped.
    pub idmapped_mounts: bool,
    /// overlayfs stacks an idmapped lower layer (Linux >= 5.19).
    pub overlay_idmapped: bool,
    /// Why the first probe that failed did.
    pub message: String,
}

impl UsernsProbe {
    /// Pods with their own user namespace can run.
    pub fn supported(&self) -> bool {
        self.user_namespaces && self.idmapped_mounts && self.overlay_idmapped
    }

    pub fn failed(mut self, message: String) -> UsernsProbe {
        self.message = message;
        self
    }
}

#[cfg(test)]
pub(crate) mod v5;

/// Whether a daemon of this build can drive a monitor speaking `version`.
pub fn supported(version: u32) -> bool {
    (MIN_VERSION..=VERSION).contains(&version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_stable() {
        let line = serde_json::to_string(&Request::Hello { version: 1 }).unwrap();
        assert_eq!(line, r#"{"op":"hello","version":1}"#);
        let unknown: Result<Request, _> = serde_json::from_str(r#"{"op":"exec_v9"}"#);
        assert!(unknown.is_err(), "unknown ops are detectable");
        let r = Reply::Error {
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"reply":"error","message":"x"}"#
        );
    }

    /// Lines of protocol 5 (the monitor of crius before protocol 6, main
    /// at ecfda08), recorded from that version's types: they pin
    /// [`v5`], the types the tests play an old monitor with, to what such
    /// a monitor reads and writes.
    const V5_REPLIES: [&str; 10] = [
        r#"{"reply":"hello","version":5,"monitor":{"pid":41,"start_time":7}}"#,
        r#"{"reply":"status","init":{"pid":42,"start_time":8},"init_exit":null}"#,
        r#"{"reply":"status","init":null,"init_exit":{"pid":42,"exit_code":137,"signal":9,"finished_at":1700000000000000000}}"#,
        r#"{"reply":"ok"}"#,
        r#"{"reply":"error","message":"hello first"}"#,
        r#"{"reply":"failed","step":"mount /data","message":"mount /h on /r/data: EPERM"}"#,
        r#"{"reply":"created","init":{"pid":43,"start_time":9}}"#,
        r#"{"reply":"exited","exit":{"pid":43,"exit_code":0,"signal":null,"finished_at":5}}"#,
        r#"{"reply":"exec_started","process":{"pid":44,"start_time":10},"fds":2}"#,
        r#"{"reply":"attached","fds":3,"stdin":false,"tty":false}"#,
    ];

    const V5_REQUESTS: [&str; 13] = [
        r#"{"op":"hello","version":5}"#,
        r#"{"op":"status"}"#,
        r#"{"op":"shutdown"}"#,
        r#"{"op":"start_container","id":"c"}"#,
        r#"{"op":"signal_container","id":"c","signal":15}"#,
        r#"{"op":"wait_container","id":"c"}"#,
        r#"{"op":"reopen_container_log","id":"c"}"#,
        r#"{"op":"remove_container","id":"c"}"#,
        r#"{"op":"exec","launch":{"exec_id":"e","container_id":"c","args":["ls"],"tty":false,"stdin":true,"cgroup_procs":["/sys/fs/cgroup/x/cgroup.procs"]}}"#,
        r#"{"op":"wait_exec","id":"e"}"#,
        r#"{"op":"signal_exec","id":"e","signal":9}"#,
        r#"{"op":"attach_container","id":"c","stdin":true}"#,
        r#"{"op":"resize_container","id":"c","width":80,"height":24}"#,
    ];

    #[test]
    fn the_protocol_5_types_speak_the_recorded_lines() {
        for line in V5_REPLIES {
            let r: v5::Reply = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(serde_json::to_string(&r).unwrap(), line);
        }
        for line in V5_REQUESTS {
            let r: v5::Request =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(serde_json::to_string(&r).unwrap(), line);
        }
    }

    fn proc(pid: i32) -> ProcRef {
        ProcRef {
            pid,
            start_time: pid as u64 * 10,
        }
    }

    /// Every reply a protocol 5 monitor writes (encoded with its own
    /// types) reads in this build as what it meant, and encodes back to
    /// the same bytes.
    #[test]
    fn protocol_5_replies_read_the_same_here() {
        let exit = Exit {
            pid: 42,
            exit_code: 137,
            signal: Some(9),
            finished_at: 1_700_000_000_000_000_000,
        };
        let old = [
            v5::Reply::Hello {
                version: v5::VERSION,
                monitor: proc(41),
            },
            v5::Reply::Status {
                init: Some(proc(42)),
                init_exit: None,
            },
            v5::Reply::Status {
                init: None,
                init_exit: Some(exit),
            },
            v5::Reply::Ok,
            v5::Reply::Error {
                message: "hello first".into(),
            },
            v5::Reply::Failed {
                step: Step::Mount("/data".into()),
                message: "mount /h on /r/data: EPERM".into(),
            },
            v5::Reply::Created { init: proc(43) },
            v5::Reply::Exited { exit },
            v5::Reply::ExecStarted {
                process: proc(44),
                fds: 2,
            },
            v5::Reply::Attached {
                fds: 3,
                stdin: false,
                tty: false,
            },
        ];
        for reply in old {
            let line = serde_json::to_string(&reply).unwrap();
            let now: Reply = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(serde_json::to_string(&now).unwrap(), line);
            let same = match (&reply, &now) {
                (
                    v5::Reply::Hello { version, monitor },
                    Reply::Hello {
                        version: v,
                        monitor: m,
                    },
                ) => version == v && monitor == m,
                (
                    v5::Reply::Failed { step, message },
                    Reply::Failed {
                        step: s,
                        message: m,
                    },
                ) => step == s && message == m,
                (v5::Reply::Exited { exit }, Reply::Exited { exit: e }) => exit == e,
                (
                    v5::Reply::Status { init, init_exit },
                    Reply::Status {
                        init: i,
                        init_exit: e,
                    },
                ) => init == i && init_exit == e,
                (v5::Reply::Ok, Reply::Ok)
                | (v5::Reply::Error { .. }, Reply::Error { .. })
                | (v5::Reply::Created { .. }, Reply::Created { .. })
                | (v5::Reply::ExecStarted { .. }, Reply::ExecStarted { .. })
                | (v5::Reply::Attached { .. }, Reply::Attached { .. }) => true,
                _ => false,
            };
            assert!(same, "{reply:?} read as {now:?}");
        }
        // The files a protocol 5 monitor writes: its pid, exits.
        let me: ProcRef = serde_json::from_str(r#"{"pid":41,"start_time":7}"#).unwrap();
        assert_eq!(me.pid, 41);
        let exit: Exit =
            serde_json::from_str(r#"{"pid":42,"exit_code":1,"signal":null,"finished_at":3}"#)
                .unwrap();
        assert_eq!((exit.exit_code, exit.signal), (1, None));
    }

    /// Every request this build sends a monitor of protocol 5 but
    /// `create_container` (see `client::container`'s tests for that one)
    /// reads there as it was meant: the same bytes from its types.
    #[test]
    fn requests_of_this_build_read_in_protocol_5() {
        let exec = ExecLaunch {
            exec_id: "e".into(),
            container_id: "c".into(),
            args: vec!["ls".into()],
            tty: false,
            stdin: true,
            cgroup_procs: vec!["/sys/fs/cgroup/x/cgroup.procs".into()],
        };
        let id = || "c".to_string();
        let now = [
            Request::Hello { version: VERSION },
            Request::Status,
            Request::Shutdown,
            Request::StartContainer { id: id() },
            Request::SignalContainer {
                id: id(),
                signal: 15,
            },
            Request::WaitContainer { id: id() },
            Request::ReopenContainerLog { id: id() },
            Request::RemoveContainer { id: id() },
            Request::Exec {
                launch: Cow::Borrowed(&exec),
            },
            Request::WaitExec { id: "e".into() },
            Request::SignalExec {
                id: "e".into(),
                signal: 9,
            },
            Request::AttachContainer {
                id: id(),
                stdin: true,
            },
            Request::ResizeContainer {
                id: id(),
                width: 80,
                height: 24,
            },
        ];
        for req in now {
            let line = serde_json::to_string(&req).unwrap();
            let old: v5::Request =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
            assert_eq!(serde_json::to_string(&old).unwrap(), line);
            // A hello of this build (6) passes protocol 5's check, which
            // refuses only versions below its minimum.
            if let v5::Request::Hello { version } = old {
                assert!(version >= v5::MIN_VERSION);
            }
        }
    }

    #[test]
    fn a_protocol_5_create_container_is_refused_by_name() {
        // What a daemon of protocol 5 sends (a launch with a Spec): this
        // monitor cannot run it and says so instead of guessing.
        let old = v5::Request::CreateContainer {
            launch: v5::ContainerLaunch {
                id: "c".into(),
                spec: Default::default(),
                env: Vec::new(),
                user: "0".into(),
                groups: Default::default(),
                seccomp: None,
                overlay: crate::init::rootfs::Overlay {
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
            },
        };
        let line = serde_json::to_string(&old).unwrap();
        let err = serde_json::from_str::<Request>(&line).unwrap_err();
        assert!(err.to_string().contains("missing field"), "{err}");
    }

    #[test]
    fn versions() {
        assert!(supported(VERSION));
        assert!(supported(MIN_VERSION));
        assert!(!supported(VERSION + 1));
        assert!(!supported(0));
    }
}
