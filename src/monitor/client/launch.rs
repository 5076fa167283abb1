//! A container launch as the daemon holds it (the OCI Spec and the image's
//! dirs) and what it becomes on the wire: the compact
//! [`ContainerLaunch`] for monitors of protocol 6 and later (the rootfs
//! plan, the namespaces and the process settings decided here, so the
//! monitor links no OCI types), or this type itself, the Spec-carrying
//! launch of protocol 5 and earlier, for monitors an older crius started.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

use crate::init::rootfs::{self, ImageVolume, Overlay};
use crate::init::user::GroupsPolicy;
use crate::monitor::protocol::{ContainerLaunch, Process, Rlimit, SeccompFilter};
use crate::monitor::sync::Step;
use crate::sys::caps::Sets;
use crate::sys::ns::Kind;

/// Everything a monitor needs to create a container's init, as the
/// daemon builds it. Its JSON form is protocol 5's `launch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Launch {
    pub id: String,
    /// From `container::spec::build`; `root.path` is the rootfs mount point.
    pub spec: Spec,
    /// The process environment, exact bytes, `KEY=value` each.
    pub env: Vec<Vec<u8>>,
    /// Resolved inside the rootfs by the init ([`crate::init::user`]).
    pub user: String,
    /// Where `user`'s supplemental groups come from.
    #[serde(default)]
    pub groups: GroupsPolicy,
    /// The compiled seccomp filter, loaded by the init and every exec
    /// process; `None`: unconfined.
    #[serde(default)]
    pub seccomp: Option<SeccompFilter>,
    pub overlay: Overlay,
    /// Images mounted as volumes.
    #[serde(default)]
    pub volumes: Vec<ImageVolume>,
    /// cgroup.procs files of the container's leaf, one per hierarchy.
    pub cgroup_procs: Vec<PathBuf>,
    /// The CRI log file; `None`: output is read and dropped.
    pub log_path: Option<PathBuf>,
    /// The pod's log directory: `log_path` is opened beneath it.
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

/// Why a launch cannot be made compact: the step it names and why.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct Refused {
    pub step: Step,
    pub message: String,
}

impl Launch {
    /// Whether the init gets a cgroup namespace of its own (rooted in the
    /// cgroup the init is in when it is made).
    pub fn creates_cgroup_namespace(&self) -> bool {
        namespaces(&self.spec).1.contains(&Kind::Cgroup)
    }

    /// Whether a monitor older than protocol 4 would get this launch
    /// wrong: it has image volumes or a recursive read-only bind.
    pub fn needs_mounts_version(&self) -> bool {
        let rro = self
            .spec
            .mounts()
            .iter()
            .flatten()
            .any(|m| m.options().iter().flatten().any(|o| o.as_str() == "rro"));
        rro || !self.volumes.is_empty()
    }

    /// The log file as a path beneath its directory.
    pub fn log_file(&self) -> Option<crate::monitor::protocol::LogPath> {
        crate::monitor::protocol::log_file(self.log_path.as_deref(), self.log_dir.as_deref())
    }

    /// The launch of protocol 6: the rootfs plan made here (bind sources
    /// are stat'ed now, on the host, as the init would), the namespaces
    /// and the process settings taken from the Spec.
    pub fn compact(&self) -> Result<ContainerLaunch, Refused> {
        let is_dir = |p: &Path| p.is_dir() || !p.exists();
        let steps =
            rootfs::plan(&self.spec, &self.overlay, &self.volumes, &is_dir).map_err(|e| {
                Refused {
                    step: Step::RootfsPlan,
                    message: e.to_string(),
                }
            })?;
        let process = self.spec.process().as_ref().ok_or_else(|| Refused {
            step: Step::Exec,
            message: "the spec has no process".into(),
        })?;
        let (join, create) = namespaces(&self.spec);
        Ok(ContainerLaunch {
            id: self.id.clone(),
            root: self
                .spec
                .root()
                .as_ref()
                .map(|r| r.path().clone())
                .unwrap_or_default(),
            join,
            create,
            userns: rootfs::in_user_namespace(&self.spec),
            userns_root: userns_root(&self.spec),
            rootfs: steps,
            process: process_of(process),
            env: self.env.clone(),
            user: self.user.clone(),
            groups: self.groups,
            seccomp: self.seccomp.clone(),
            cgroup_procs: self.cgroup_procs.clone(),
            log_path: self.log_path.clone(),
            log_dir: self.log_dir.clone(),
            tty: self.tty,
            stdin: self.stdin,
            stdin_once: self.stdin_once,
        })
    }
}

/// The host ids the Spec's uid and gid mappings give container id 0.
fn userns_root(spec: &oci_spec::runtime::Spec) -> Option<(u32, u32)> {
    let linux = spec.linux().as_ref()?;
    let root = |maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>| {
        maps.iter()
            .flatten()
            .find(|m| m.container_id() == 0 && m.size() > 0)
            .map(|m| m.host_id())
    };
    Some((root(linux.uid_mappings())?, root(linux.gid_mappings())?))
}

/// The OCI process settings the init and exec processes apply.
fn process_of(p: &oci_spec::runtime::Process) -> Process {
    Process {
        args: p.args().clone().unwrap_or_default(),
        cwd: p.cwd().clone(),
        rlimits: p
            .rlimits()
            .iter()
            .flatten()
            .map(|r| Rlimit {
                resource: r.typ().to_string(),
                soft: r.soft(),
                hard: r.hard(),
            })
            .collect(),
        oom_score_adj: p.oom_score_adj(),
        apparmor_profile: p.apparmor_profile().clone(),
        no_new_privileges: p.no_new_privileges().unwrap_or(false),
        capabilities: Sets::requested(p.capabilities().as_ref()),
        additional_gids: p.user().additional_gids().clone().unwrap_or_default(),
    }
}

/// The kind of an OCI namespace entry joined or created by stage 1 of the
/// init (the user namespace is joined by stage 2, after its mounts; crius
/// does not use time namespaces).
fn kind(t: LinuxNamespaceType) -> Option<Kind> {
    Some(match t {
        LinuxNamespaceType::Network => Kind::Net,
        LinuxNamespaceType::Ipc => Kind::Ipc,
        LinuxNamespaceType::Uts => Kind::Uts,
        LinuxNamespaceType::Pid => Kind::Pid,
        LinuxNamespaceType::Mount => Kind::Mnt,
        LinuxNamespaceType::Cgroup => Kind::Cgroup,
        _ => return None,
    })
}

/// Namespaces of the Spec: (to join by path, to create). The mount
/// namespace is always the container's own and is not listed.
pub fn namespaces(spec: &Spec) -> (Vec<(PathBuf, Kind)>, Vec<Kind>) {
    let mut join = Vec::new();
    let mut create = Vec::new();
    let list = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for ns in list {
        let Some(kind) = kind(ns.typ()) else {
            continue;
        };
        match ns.path() {
            Some(p) => join.push((p.clone(), kind)),
            None if kind != Kind::Mnt && !create.contains(&kind) => create.push(kind),
            None => {}
        }
    }
    (join, create)
}
