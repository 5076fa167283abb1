//! The steps of setting up a pod, a container or an exec process, and the
//! sync messages a forked setup process sends its monitor.
//!
//! A failed step is a [`Step`]: the daemon classifies the failure by its
//! variant ([`Step::kind`]), never by comparing text. On both wires (the
//! sync socket and the monitor protocol) a step is its name, the text error
//! messages show (`"apply sysctls"`, `"mount /data"`), so monitors and
//! daemons of other versions still understand each other: a name this
//! build does not know is [`Step::Other`].

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Kind;

/// Who a [`Step::Unknown`] refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Container,
    Exec,
}

/// A step that can fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum Step {
    // The pod (the monitor and its namespace child).
    StartMonitor,
    FindPodInit,
    PrepareNamespaceDir,
    CreateNamespaces,
    PinNamespaces,
    StartPodInit,
    MountShm,
    MapUserIds,
    SetHostname,
    ApplySysctls,
    LoopbackUp,
    // A container's init or an exec process, before its rootfs.
    OpenLog,
    ReopenLog,
    Stdio,
    Create,
    JoinCgroup,
    JoinNamespaces,
    Fork,
    Terminal,
    RootfsPlan,
    JoinUserNamespace,
    // The rootfs, in the container's mount namespace.
    RootPropagation,
    PrivateParent,
    IdmapLayers,
    Overlay,
    BindRoot,
    /// A mount of the spec, by its path inside the container.
    Mount(String),
    Devices,
    CriDevices,
    /// A CRI device node, by its path inside the container.
    Device(String),
    PivotRoot,
    /// A masked path.
    Mask(String),
    /// A read-only path.
    ReadOnlyPath(String),
    ReadOnlyRoot,
    // The process itself, after the rootfs.
    Cwd,
    Rlimits,
    OomScoreAdj,
    User,
    AppArmor,
    NoNewPrivs,
    Seccomp,
    Capabilities,
    Exec,
    Signal,
    // Attached clients of a container's stdio.
    Attach,
    AttachLimit,
    Resize,
    // The monitor's refusals and the daemon's own checks.
    AlreadyExists,
    NotCreated,
    NotRunning,
    Unknown(Subject),
    MonitorVersion,
    Monitor,
    /// A name this build does not know (another version's step).
    Other(String),
}

/// The steps named by a fixed text, with that text.
const FIXED: &[(Step, &str)] = &[
    (Step::StartMonitor, "start pod monitor"),
    (Step::FindPodInit, "find pod init"),
    (Step::PrepareNamespaceDir, "prepare namespace directory"),
    (Step::CreateNamespaces, "create namespaces"),
    (Step::PinNamespaces, "pin namespaces"),
    (Step::StartPodInit, "start pod init"),
    (Step::MountShm, "mount /dev/shm"),
    (Step::MapUserIds, "map user namespace ids"),
    (Step::SetHostname, "set hostname"),
    (Step::ApplySysctls, "apply sysctls"),
    (Step::LoopbackUp, "bring lo up"),
    (Step::OpenLog, "open log"),
    (Step::ReopenLog, "reopen log"),
    (Step::Stdio, "stdio"),
    (Step::Create, "create"),
    (Step::JoinCgroup, "join cgroup"),
    (Step::JoinNamespaces, "join namespaces"),
    (Step::Fork, "fork"),
    (Step::Terminal, "terminal"),
    (Step::RootfsPlan, "rootfs plan"),
    (Step::JoinUserNamespace, "join user namespace"),
    (Step::RootPropagation, "rootfs propagation"),
    (Step::PrivateParent, "make the rootfs parent private"),
    (Step::IdmapLayers, "idmap the image layers"),
    (Step::Overlay, "mount the overlay rootfs"),
    (Step::BindRoot, "bind the rootfs onto itself"),
    (Step::Devices, "create devices"),
    (Step::CriDevices, "create CRI devices"),
    (Step::PivotRoot, "pivot_root"),
    (Step::ReadOnlyRoot, "make the rootfs read-only"),
    (Step::Cwd, "cwd"),
    (Step::Rlimits, "rlimits"),
    (Step::OomScoreAdj, "oom_score_adj"),
    (Step::User, "user"),
    (Step::AppArmor, "apparmor"),
    (Step::NoNewPrivs, "no_new_privs"),
    (Step::Seccomp, "seccomp"),
    (Step::Capabilities, "capabilities"),
    (Step::Exec, "exec"),
    (Step::Signal, "signal"),
    (Step::Attach, "attach"),
    (Step::AttachLimit, "attach limit"),
    (Step::Resize, "resize"),
    (Step::AlreadyExists, "already exists"),
    (Step::NotCreated, "not created"),
    (Step::NotRunning, "not running"),
    (Step::Unknown(Subject::Container), "unknown container"),
    (Step::Unknown(Subject::Exec), "unknown exec"),
    (Step::MonitorVersion, "monitor version"),
    (Step::Monitor, "monitor"),
];

impl Step {
    /// What kind of error a failure at this step is: a request the
    /// container's own spec makes impossible is InvalidArgument, a refusal
    /// of the monitor's state its own kind, anything else Internal.
    pub fn kind(&self) -> Kind {
        match self {
            Step::SetHostname
            | Step::ApplySysctls
            | Step::RootfsPlan
            | Step::Mount(_)
            | Step::Cwd
            | Step::User
            | Step::Exec => Kind::InvalidArgument,
            Step::Unknown(_) => Kind::NotFound,
            Step::AlreadyExists => Kind::AlreadyExists,
            Step::NotCreated | Step::NotRunning | Step::MonitorVersion | Step::Resize => {
                Kind::FailedPrecondition
            }
            Step::AttachLimit => Kind::ResourceExhausted,
            _ => Kind::Internal,
        }
    }

    /// Parses a step's name (the inverse of its `Display`).
    pub fn parse(name: &str) -> Step {
        if let Some((step, _)) = FIXED.iter().find(|(_, n)| *n == name) {
            return step.clone();
        }
        let with = |prefix: &str| name.strip_prefix(prefix).map(str::to_string);
        if let Some(p) = with("mount ") {
            Step::Mount(p)
        } else if let Some(p) = with("create device ") {
            Step::Device(p)
        } else if let Some(p) = with("mask ") {
            Step::Mask(p)
        } else if let Some(p) = name
            .strip_prefix("make ")
            .and_then(|r| r.strip_suffix(" read-only"))
        {
            Step::ReadOnlyPath(p.to_string())
        } else {
            Step::Other(name.to_string())
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((_, name)) = FIXED.iter().find(|(s, _)| s == self) {
            return f.write_str(name);
        }
        match self {
            Step::Mount(p) => write!(f, "mount {p}"),
            Step::Device(p) => write!(f, "create device {p}"),
            Step::Mask(p) => write!(f, "mask {p}"),
            Step::ReadOnlyPath(p) => write!(f, "make {p} read-only"),
            Step::Other(name) => f.write_str(name),
            // Every other variant is in FIXED (a unit test checks).
            other => write!(f, "{other:?}"),
        }
    }
}

impl From<Step> for String {
    fn from(s: Step) -> String {
        s.to_string()
    }
}

impl From<String> for Step {
    fn from(name: String) -> Step {
        Step::parse(&name)
    }
}

/// A message of a forked setup process (a container's init, an exec
/// process, the pod's namespace child) to its monitor, one line each on
/// the sync socket. The monitor answers a container's `Ready` with `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Stage 1 forked stage 2, which has this pid.
    Pid(i32),
    /// Setup is done; the process waits for `start`.
    Ready,
    /// The process's terminal master rides with this line (SCM_RIGHTS).
    Pty,
    /// A step failed; the process ends.
    Failed { step: Step, message: String },
}

/// The most of a failed step's name a line carries (a mount step names
/// its destination, which a client chose).
const MAX_STEP: usize = 1024;
/// The most of a failure's message a line carries: it may quote a command
/// or a path a client chose, and the monitor refuses a line longer than it
/// buffers (64 KiB).
const MAX_MESSAGE: usize = 8 << 10;

impl Message {
    /// The line, newline included. Line breaks and tabs in a message are
    /// spaces, so that the line stays one; the step and the message are cut
    /// to [`MAX_STEP`] and [`MAX_MESSAGE`] bytes.
    pub fn encode(&self) -> String {
        match self {
            Message::Pid(pid) => format!("pid {pid}\n"),
            Message::Ready => "ready\n".into(),
            Message::Pty => "pty\n".into(),
            Message::Failed { step, message } => {
                let step =
                    crate::error::cut(&step.to_string(), MAX_STEP).replace(['\n', '\t'], " ");
                let message = crate::error::cut(message, MAX_MESSAGE).replace(['\n', '\t'], " ");
                format!("error {step}\t{message}\n")
            }
        }
    }

    /// Parses one line (with or without its newline); `None` for a line
    /// that is no message.
    pub fn decode(line: &str) -> Option<Message> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if line == "ready" {
            return Some(Message::Ready);
        }
        if line == "pty" {
            return Some(Message::Pty);
        }
        if let Some(pid) = line.strip_prefix("pid ") {
            return pid.trim().parse().ok().map(Message::Pid);
        }
        let rest = line.strip_prefix("error ")?;
        let (step, message) = rest.split_once('\t').unwrap_or((rest, ""));
        Some(Message::Failed {
            step: Step::parse(step),
            message: message.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_step() -> Vec<Step> {
        let mut all: Vec<Step> = FIXED.iter().map(|(s, _)| s.clone()).collect();
        all.extend([
            Step::Mount("/data".into()),
            Step::Device("/dev/fuse".into()),
            Step::Mask("/proc/kcore".into()),
            Step::ReadOnlyPath("/proc/sys".into()),
            Step::Other("a step of another version".into()),
        ]);
        all
    }

    #[test]
    fn names_round_trip_and_are_distinct() {
        let all = every_step();
        let mut names: Vec<String> = all.iter().map(Step::to_string).collect();
        for (step, name) in all.iter().zip(&names) {
            assert!(
                !name.contains("::") && !name.contains('('),
                "{step:?} has no name"
            );
            assert_eq!(&Step::parse(name), step, "{name}");
        }
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len(), "two steps share a name");
    }

    #[test]
    fn wire_names_stay_those_of_older_monitors() {
        // What monitor protocol 3 sent: a daemon must classify it the same.
        for (name, kind) in [
            ("apply sysctls", Kind::InvalidArgument),
            ("set hostname", Kind::InvalidArgument),
            ("mount /data", Kind::InvalidArgument),
            ("unknown container", Kind::NotFound),
            ("already exists", Kind::AlreadyExists),
            ("not running", Kind::FailedPrecondition),
            ("create devices", Kind::Internal),
            ("something new", Kind::Internal),
        ] {
            assert_eq!(Step::parse(name).kind(), kind, "{name}");
        }
        let json = serde_json::to_string(&Step::Mount("/x".into())).unwrap();
        assert_eq!(json, r#""mount /x""#);
        let back: Step = serde_json::from_str(r#""apply sysctls""#).unwrap();
        assert_eq!(back, Step::ApplySysctls);
    }

    #[test]
    fn messages_round_trip_as_one_line() {
        for m in [
            Message::Pid(42),
            Message::Ready,
            Message::Pty,
            Message::Failed {
                step: Step::Mount("/a".into()),
                message: "no\nsuch\tfile".into(),
            },
        ] {
            let line = m.encode();
            assert_eq!(line.matches('\n').count(), 1, "{line:?}");
            let back = Message::decode(&line).unwrap();
            match (&m, &back) {
                (Message::Failed { step, .. }, Message::Failed { step: s2, message }) => {
                    assert_eq!(step, s2);
                    assert_eq!(message, "no such file");
                }
                _ => assert_eq!(m, back),
            }
        }
        let huge = Message::Failed {
            step: Step::Mount(format!("/{}", "d".repeat(1 << 20))),
            message: format!("exec {}: not found", "a".repeat(1 << 20)),
        };
        let line = huge.encode();
        assert!(line.len() < 10 << 10, "{} bytes", line.len());
        assert!(line.contains("bytes cut"), "{line}");
        assert!(matches!(
            Message::decode(&line),
            Some(Message::Failed { .. })
        ));
        assert_eq!(Message::decode("pid x"), None);
        assert_eq!(Message::decode("hello"), None);
        assert_eq!(
            Message::decode("error exec"),
            Some(Message::Failed {
                step: Step::Exec,
                message: String::new()
            })
        );
    }
}
