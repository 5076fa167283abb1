//! The container record in the metadata store: written as an intent (state
//! CREATING) before the first host side effect, so a crash at any step is
//! rolled back from it at the next start; then CREATED, RUNNING, EXITED.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroups::{CgroupPath, Resources};
use crate::monitor::{PodDir, read_exit};
use crate::store::Table;
use crate::sys::process::ProcRef;

pub const CONTAINERS: Table<ContainerRecord> = Table::new("containers");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// CreateContainer is under way (or was, when crius died): an intent.
    Creating,
    /// Handed to CreateContainer's caller. Its init is made right after
    /// (blocked before execve: `init`), or failed to be (`unmade`); a
    /// call that takes the container's lock waits for that.
    Created,
    Running,
    Exited,
}

/// Which PID namespace the container lives in, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PidMode {
    Container,
    Pod,
    Node,
    Target(String),
}

impl PidMode {
    /// The entrypoint is not PID 1 of its namespace: processes it leaves
    /// behind must be killed through the cgroup.
    pub fn leaves_orphans(&self) -> bool {
        *self != PidMode::Container
    }
}

/// A CRI mount as ContainerStatus echoes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
    /// 0 private, 1 host-to-container, 2 bidirectional (the CRI enum).
    pub propagation: i32,
    #[serde(default)]
    pub recursive_readonly: bool,
    /// An image volume: the image it mounts (also what keeps RemoveImage
    /// from removing it).
    #[serde(default)]
    pub image: Option<MountedImage>,
}

/// The image of an image volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountedImage {
    /// As the mount named it.
    pub image: String,
    /// Its id (`sha256:...`): ContainerStatus' `image.image_ref`.
    pub id: String,
    pub sub_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: State,
    /// Handed to a caller of CreateContainer; a container finished after
    /// its caller gave up stays invisible until a retry claims it.
    pub claimed: bool,
    /// Nanoseconds since the Unix epoch.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    /// The image as CreateContainer named it, and its id (`sha256:...`).
    pub image: String,
    pub image_id: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The CRI log path (pod log directory + config log path), if any.
    pub log_path: Option<PathBuf>,
    pub mounts: Vec<MountInfo>,
    pub resources: Resources,
    pub oom_score_adj: Option<i32>,
    /// `<root>/containers/<id>`: upper and work dirs, rootfs mount point.
    pub dir: PathBuf,
    pub pod_dir: PodDir,
    /// The container's leaf cgroup.
    pub cgroup: Option<CgroupPath>,
    pub pid_mode: PidMode,
    /// The init, once the engine created it.
    pub init: Option<ProcRef>,
    /// Why a CREATED container has no init: its making failed after
    /// CreateContainer answered, or crius stopped while making it.
    /// StartContainer reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmade: Option<Unmade>,
    /// The credentials the init really got (ContainerStatus.user).
    #[serde(default)]
    pub user: Option<ProcessUser>,
    /// The signal StopContainer sends first.
    pub stop_signal: i32,
    /// The OCI spec (verbose ContainerStatus).
    pub spec: serde_json::Value,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

/// A step of making a container's init that failed, as StartContainer
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmade {
    pub step: String,
    pub kind: crate::error::Kind,
    pub message: String,
}

/// The uid, gid and supplemental groups of a container's process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl ProcessUser {
    /// What the kernel says process `pid` runs as (its real ids, from
    /// /proc): read while the init waits before execve, after it took the
    /// container's user, so it is what the workload starts with.
    pub fn of(pid: i32) -> Option<ProcessUser> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        ProcessUser::parse(&status)
    }

    fn parse(status: &str) -> Option<ProcessUser> {
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)).map(|v| {
                v.split_whitespace()
                    .map(|n| n.parse::<u32>().ok())
                    .collect::<Option<Vec<_>>>()
            })
        };
        Some(ProcessUser {
            uid: *field("Uid:")??.first()?,
            gid: *field("Gid:")??.first()?,
            groups: field("Groups:")??,
        })
    }
}

impl crate::record::Record for ContainerRecord {
    type Key = Key;
    const TABLE: Table<ContainerRecord> = CONTAINERS;
    const KIND: &'static str = "container";
    const CREATE_RPC: &'static str = "CreateContainer";

    fn id(&self) -> &str {
        &self.id
    }
    fn key(&self) -> Key {
        ContainerRecord::key(self)
    }
    fn is_intent(&self) -> bool {
        self.state == State::Creating
    }
    fn is_finished(&self) -> bool {
        self.state == State::Created
    }
    fn claimed(&self) -> bool {
        self.claimed
    }
    fn set_claimed(&mut self) {
        self.claimed = true;
    }
    /// The bound on unclaimed containers runs from their creation.
    fn settled_at(&self) -> i64 {
        self.created_at
    }
    fn abandon(&mut self, reason: &str) {
        self.state = State::Exited;
        self.reason = reason.to_string();
    }
}

impl ContainerRecord {
    pub fn exit_file(&self) -> PathBuf {
        self.pod_dir.exit_file(&self.id)
    }

    /// The record as CRI sees it: a RUNNING container whose exit the
    /// monitor already wrote is EXITED with that code, before the exit
    /// watcher records it.
    pub fn effective(mut self) -> ContainerRecord {
        if self.state == State::Running
            && let Some(exit) = read_exit(&self.exit_file())
        {
            self.state = State::Exited;
            self.exit_code = exit.exit_code;
            self.finished_at = exit.finished_at;
            self.reason = exit_reason(exit.exit_code, false).into();
        }
        self
    }
}

/// The CRI reason of an exit.
pub fn exit_reason(code: i32, oom: bool) -> &'static str {
    if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// The key names are unique under: kubelet creates attempt N+1 while N
/// still exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
}

impl ContainerRecord {
    pub fn key(&self) -> Key {
        Key {
            pod_id: self.pod_id.clone(),
            name: self.name.clone(),
            attempt: self.attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_user_comes_from_proc_status() {
        let status = "Name:\tsleep\nUid:\t1000\t1000\t1000\t1000\nGid:\t3000\t3000\t3000\t3000\nGroups:\t3000 50 4000 \n";
        assert_eq!(
            ProcessUser::parse(status),
            Some(ProcessUser {
                uid: 1000,
                gid: 3000,
                groups: vec![3000, 50, 4000]
            })
        );
        let none = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n";
        assert_eq!(ProcessUser::parse(none).unwrap().groups, Vec::<u32>::new());
        let me = ProcessUser::of(std::process::id() as i32).unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
    }
}
