//! The pod record in the metadata store: written as an intent (state
//! CREATING) before the first host side effect, so a crash at any step can
//! be rolled back from it at the next start; then READY, then NOTREADY.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::spec::PodSpec;
use crate::cgroups::CgroupPath;
use crate::monitor::{INIT, PodDir, read_exit};
use crate::store::Table;
use crate::sys::process::ProcRef;

pub const PODS: Table<PodRecord> = Table::new("pods");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// RunPodSandbox is under way (or was, when crius died): an intent.
    Creating,
    Ready,
    NotReady,
}

/// The pod's network as CNI set it up; kept to tear it down after a restart.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub ip: String,
    pub additional_ips: Vec<String>,
    /// The CNI ADD result, as the plugins returned it.
    pub result: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub spec: PodSpec,
    /// Nanoseconds since the Unix epoch.
    pub created_at: i64,
    pub state: State,
    /// Why the pod is not ready, when it is not.
    pub reason: String,
    /// Handed to a caller of RunPodSandbox. A pod finished after its caller
    /// gave up stays unclaimed (invisible) until a retry claims it.
    pub claimed: bool,
    /// When creation finished (for the bound on unclaimed pods).
    pub finished_at: i64,
    pub dir: PodDir,
    /// The pinned namespaces this pod owns (absent: the host's).
    pub netns: Option<PathBuf>,
    pub ipcns: Option<PathBuf>,
    pub utsns: Option<PathBuf>,
    /// The pod's /dev/shm (absent for host IPC pods).
    pub shm: Option<PathBuf>,
    /// The pod cgroup, decided before it is created.
    pub cgroup: Option<CgroupPath>,
    /// Whether crius created that cgroup (and so removes it); a cgroup
    /// kubelet made is left as it is.
    pub cgroup_created: bool,
    /// The pod init's leaf under the pod cgroup.
    pub init_cgroup: Option<CgroupPath>,
    pub monitor: Option<ProcRef>,
    pub init: Option<ProcRef>,
    pub network: Option<NetworkInfo>,
    /// The boot this pod was created in.
    pub boot_id: String,
}

impl crate::record::Record for PodRecord {
    type Key = super::spec::Key;
    const TABLE: Table<PodRecord> = PODS;
    const KIND: &'static str = "pod";
    const CREATE_RPC: &'static str = "RunPodSandbox";

    fn id(&self) -> &str {
        &self.id
    }
    fn key(&self) -> Self::Key {
        self.spec.key()
    }
    fn is_intent(&self) -> bool {
        self.state == State::Creating
    }
    fn is_finished(&self) -> bool {
        self.state == State::Ready
    }
    fn claimed(&self) -> bool {
        self.claimed
    }
    fn set_claimed(&mut self) {
        self.claimed = true;
    }
    fn settled_at(&self) -> i64 {
        self.finished_at
    }
    fn abandon(&mut self, reason: &str) {
        self.state = State::NotReady;
        self.reason = reason.to_string();
    }
}

impl PodRecord {
    /// The state CRI sees: a READY pod whose init has died is NOTREADY (its
    /// PID namespace is gone), which the monitor's exit file tells at once.
    pub fn effective_state(&self) -> State {
        if self.state == State::Ready
            && self.init.is_some()
            && read_exit(&self.dir.exit_file(INIT)).is_some()
        {
            return State::NotReady;
        }
        self.state
    }

    pub fn pid_ns_path(&self) -> Option<PathBuf> {
        self.init
            .map(|i| crate::sys::ns::Kind::Pid.proc_path(i.pid))
    }
}
