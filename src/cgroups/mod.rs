//! Pod and container cgroups: where they live, what limits they carry, the
//! processes in them (cgroups(7); cgroup v1 in
//! Documentation/admin-guide/cgroup-v1/, v2 in cgroup-v2.rst).
//!
//! A pod cgroup sits at kubelet's `cgroup_parent` (or, when that is empty,
//! under crius's configured default parent); each container, and the pod's
//! PID-namespace init, is a leaf below it. crius supports cgroup v1, v2 and
//! hybrid layouts (discovered, never assumed: see [`layout`]) with two
//! drivers:
//!
//! - **cgroupfs**: crius makes the directories itself.
//! - **systemd**: the pod cgroup is a slice and each leaf a transient scope
//!   that crius asks systemd for over D-Bus ([`systemd`]); crius then
//!   writes the same files as with cgroupfs, as runc does.
//!
//! # API for the pod and container code
//!
//! ```text
//! let cg = Cgroups::from_config(&config.cgroup)?;     // or Cgroups::detect(driver, mountinfo, root)
//! let pod = cg.pod_path(&cri_parent, &pod_id)?;       // kubelet's parent, or default + pod id
//! let created = cg.create(&pod, &pod_resources)?;     // false: kubelet made it, never remove it
//! let leaf = cg.container_path(&pod, &container_id)?; // or cg.init_path(&pod, &pod_id)
//! cg.create_with_pid(&leaf, &resources, init_pid)?;   // leaves: both drivers (a systemd scope
//!                                                     //  needs its first process)
//! cg.update(&leaf, &resources)?;                      // all or nothing
//! cg.delegate(&leaf, host_uid)?;                      // v2: the leaf to a userns container
//! cg.join_files(&leaf)                                // tasks (v1) / cgroup.procs (v2) per hierarchy
//! let wake = cg.oom_follow(&id, &leaf)?;            // before it starts; wake readable: cg.oom_refresh(&id)
//! let kills = cg.oom_finish(&id, &leaf, sigkilled); // at its exit, even if systemd removed the scope
//! cg.oom_kills(&leaf)? ; cg.kill_all(&leaf)? ; cg.remove(&leaf)?
//! cg.join_monitors(monitor_pid)? ; cg.monitors_path()?        // the monitors' own cgroup
//! cg.warm_migrations()?                             // before a join that follows soon (see [`warm`])
//! cg.children(&cg.default_parent_path()?)?          // reconcile
//! ```
//!
//! Differences from the first sketch of this API: `pod_path`,
//! `container_path` return `Result` (a bad `cgroup_parent` is
//! InvalidArgument); `create` of a systemd *scope* is refused, use
//! `create_with_pid` (it also works for cgroupfs: create + add_process).
//! Every call is blocking (file writes; D-Bus round trips with systemd):
//! from async code use `tokio::task::spawn_blocking`.
//!
//! The default parent: `/crius` with cgroupfs (pods at `/crius/pod-<id>`);
//! with systemd a path maps to the slice of the same name, so the default
//! `/crius` becomes `crius.slice` (pods `crius-pod<id>.slice`); a slice name
//! may also be configured directly.
//!
//! # Tests
//!
//! Unit tests run on fixture trees (v1, v2, hybrid) in tempdirs. Tests on
//! the real hierarchies need root and run here on the host's v1 (or
//! whatever layout the machine has) under a unique `/crius-test-<rand>`:
//! `cargo test --lib cgroups::` (they say why they skip when not root).
//! Tests that need a real cgroup v2 or a running systemd are gated:
//!
//! ```text
//! CRIUS_TEST_CGROUP_V2=1 cargo test --lib cgroups::host_tests   # cgroup2 alone at /sys/fs/cgroup
//! CRIUS_TEST_SYSTEMD=1   cargo test --lib cgroups::systemd      # systemd as PID 1, system bus up
//! ```
//!
//! The VM tier (hack/vm-e2e.sh) sets these variables in its guests and
//! runs `lib -- cgroups:: --test-threads=1` in both modes (hack/vm/tests.list),
//! so the same tests cover v2 with cgroupfs and v2 with systemd for real.
//! On a hybrid host, `host_v2_mount_of_a_hybrid_host_for_real` also drives
//! the real cgroup2 mount alone (cgroup.kill, delegation, rmdir).
//! `host_timing` (ignored) measures the lifecycle; on this host (v1, 9
//! hierarchies) about 1 ms per pod cgroup, 10 ms per leaf with its process
//! (its first cgroup.procs write waits for an RCU grace period; the other
//! hierarchies' writes that follow do not: see [`warm`]), 9 ms for
//! kill_all + wait + remove. `host_warm_timing` (ignored) measures a
//! leaf's mkdirs and join, cold and after [`Cgroups::warm_migrations`]:
//! here (load 4-6) cold 8.1 ms p50 of which the join 6.9; warmed 5 ms
//! before, the join 0.23 ms but the mkdirs wait for the warming's grace
//! period, so the 8 ms after the lead stay: what the warming saves is the
//! work done during the lead.

pub mod delegate;
pub mod devices;
#[cfg(test)]
mod fake_kernel;
pub mod fs;
#[cfg(test)]
mod host_tests;
pub mod layout;
pub mod oom;
pub mod paths;
pub mod resources;
pub mod stats;
pub mod systemd;
#[cfg(test)]
pub(crate) mod tests;
pub mod warm;

use std::path::{Path, PathBuf};

use crate::config::{CgroupConfig, CgroupDriver};
use crate::error::{Classify, Kind};
pub use devices::{Access, DevKind, DeviceRules, Rule};
pub use layout::{Layout, Mode};
pub use oom::{OomLedger, OomWake};
pub use paths::{CgroupPath, Unit};
pub use resources::Resources;
pub use stats::Stats;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected content {text:?} in {path}")]
    Parse { path: PathBuf, text: String },
    #[error("no device controller: neither a cgroup v1 devices hierarchy nor cgroup v2 is mounted")]
    NoDeviceController,
    #[error("no cgroup hierarchy is mounted under {root}")]
    NoCgroups { root: PathBuf },
    #[error("invalid cgroup path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid cgroup resources: {0}")]
    InvalidResources(String),
    #[error(
        "cgroup file {path} does not exist (its controller is not enabled or this kernel lacks it)"
    )]
    MissingFile { path: PathBuf },
    #[error("cgroup {path} still has processes {pids:?} after waiting for them to exit")]
    Busy { path: PathBuf, pids: Vec<i32> },
    #[error("cgroup {0} already exists")]
    Exists(String),
    #[error("the systemd scope {0} needs its first process: use create_with_pid")]
    NeedsProcess(String),
    #[error(
        "cgroup {0}: delegating a cgroup to a container needs cgroup v2 alone (this host has v1 hierarchies)"
    )]
    DelegationNeedsV2(String),
    #[error("systemd: {op} {unit}")]
    Systemd {
        op: &'static str,
        unit: String,
        #[source]
        source: Box<zbus::Error>,
    },
    #[error("systemd: {op} {unit}: job {result}")]
    SystemdJob {
        op: &'static str,
        unit: String,
        result: String,
    },
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::InvalidPath { .. } | Error::InvalidResources(_) | Error::MissingFile { .. } => {
                Kind::InvalidArgument
            }
            Error::Exists(_) => Kind::AlreadyExists,
            Error::DelegationNeedsV2(_) => Kind::FailedPrecondition,
            // The kernel refused a value from the request (a cpuset naming
            // CPUs this host does not have, a number out of its range).
            Error::Write { source, .. }
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EINVAL | libc::ERANGE | libc::EOVERFLOW)
                ) =>
            {
                Kind::InvalidArgument
            }
            // A memory limit below what the cgroup uses and the kernel
            // could not reclaim (v1 memory.limit_in_bytes, v2 memory.max
            // refuse with EBUSY): the request cannot apply now.
            Error::Write { path, source, .. }
                if source.raw_os_error() == Some(libc::EBUSY)
                    && path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("memory.")) =>
            {
                Kind::FailedPrecondition
            }
            // A memory limit (the pod's, from the request, or the host's)
            // leaves no room for the kernel's own accounting of a new
            // cgroup or a value: mkdir and writes fail with ENOMEM.
            Error::Io { source, .. } | Error::Write { source, .. }
                if source.raw_os_error() == Some(libc::ENOMEM) =>
            {
                Kind::ResourceExhausted
            }
            Error::Systemd { .. } | Error::SystemdJob { .. } => Kind::Unavailable,
            _ => Kind::Internal,
        }
    }
}

/// What crius asks of systemd: units behind a trait, so the systemd
/// driver's logic runs in unit tests against a recording fake.
pub trait UnitManager: Send + Sync + std::fmt::Debug {
    /// Starts the transient slice or scope (a scope with `pid` in it) and
    /// waits for systemd to finish the job.
    fn start(&self, unit: &Unit, res: &Resources, pid: Option<i32>) -> Result<(), Error>;
    fn exists(&self, unit: &Unit) -> Result<bool, Error>;
    /// Sets the unit's resource properties (so that systemd, re-applying
    /// them on daemon-reload, keeps crius's limits).
    fn set_resources(&self, unit: &Unit, res: &Resources) -> Result<(), Error>;
    /// Stops the unit (an unknown unit is fine) and waits for it.
    fn stop(&self, unit: &Unit) -> Result<(), Error>;
    /// Moves `pid` into the running scope `unit` (AttachProcessesToUnit;
    /// the scope must delegate). An unknown or inactive unit is an error.
    fn attach(&self, unit: &Unit, pid: i32) -> Result<(), Error>;
}

/// How often [`Cgroups::join_monitors`] tries to attach to, or start, the
/// monitors' scope before it gives up.
const JOIN_ATTEMPTS: u32 = 4;

/// The cgroup layer: one per daemon.
#[derive(Debug)]
pub struct Cgroups {
    driver: CgroupDriver,
    default_parent: String,
    tree: fs::Tree,
    units: Option<Box<dyn UnitManager>>,
    /// One monitor joins its scope at a time: two pods starting together
    /// would both find no scope and both try to start it.
    monitors_lock: std::sync::Mutex<()>,
    /// The OOM-kill counters of the running containers (see [`oom`]).
    oom: OomLedger,
}

impl Cgroups {
    /// The host's cgroups: /proc/self/mountinfo, /sys/fs/cgroup.
    pub fn from_config(config: &CgroupConfig) -> Result<Cgroups, Error> {
        Cgroups::detect(
            config.driver,
            Path::new("/proc/self/mountinfo"),
            Path::new("/sys/fs/cgroup"),
        )?
        .with_default_parent(&config.default_parent)
    }

    /// Discovers the layout from `mountinfo`, keeping mounts under
    /// `cgroup_root`. The default parent is `/crius` until
    /// [`Cgroups::with_default_parent`].
    pub fn detect(
        driver: CgroupDriver,
        mountinfo: &Path,
        cgroup_root: &Path,
    ) -> Result<Cgroups, Error> {
        let layout = Layout::detect(mountinfo, cgroup_root)?;
        let units: Option<Box<dyn UnitManager>> = match driver {
            CgroupDriver::Cgroupfs => None,
            CgroupDriver::Systemd => Some(Box::new(systemd::Systemd::new(
                layout.mode == Mode::Unified,
            ))),
        };
        Ok(Cgroups::with_parts(driver, layout, units))
    }

    fn with_parts(
        driver: CgroupDriver,
        layout: Layout,
        units: Option<Box<dyn UnitManager>>,
    ) -> Cgroups {
        Cgroups {
            driver,
            default_parent: "/crius".into(),
            tree: fs::Tree::new(layout),
            units,
            monitors_lock: std::sync::Mutex::new(()),
            oom: OomLedger::default(),
        }
    }

    /// Sets (and checks) the parent used when kubelet sends none.
    pub fn with_default_parent(mut self, parent: &str) -> Result<Cgroups, Error> {
        paths::pod_path(self.driver, parent, "", "check")?;
        self.default_parent = parent.into();
        Ok(self)
    }

    pub fn driver(&self) -> CgroupDriver {
        self.driver
    }

    /// cgroup v2 alone (no v1 hierarchy).
    pub fn is_unified(&self) -> bool {
        self.tree.layout.mode == Mode::Unified
    }

    pub fn layout(&self) -> &Layout {
        &self.tree.layout
    }

    /// The pod cgroup: kubelet's `parent` itself, or (empty parent) one of
    /// crius's own under the default parent.
    pub fn pod_path(&self, parent: &str, pod_id: &str) -> Result<CgroupPath, Error> {
        paths::pod_path(self.driver, &self.default_parent, parent, pod_id)
    }

    /// A container's leaf under its pod cgroup.
    pub fn container_path(&self, pod: &CgroupPath, id: &str) -> Result<CgroupPath, Error> {
        paths::leaf_path(pod, id)
    }

    /// The leaf of the pod's PID-namespace init.
    pub fn init_path(&self, pod: &CgroupPath, pod_id: &str) -> Result<CgroupPath, Error> {
        paths::leaf_path(pod, &format!("init_{pod_id}"))
    }

    /// The cgroup every pod monitor lives in (see [`paths::monitors_path`]):
    /// `/crius-monitors` with cgroupfs, the scope `crius-monitors.scope`
    /// with systemd, never the daemon's cgroup or unit, so stopping or
    /// restarting crius's service leaves the monitors (and their pods)
    /// running, and their memory is accounted apart.
    pub fn monitors_path(&self) -> Result<CgroupPath, Error> {
        paths::monitors_path(self.driver, &self.default_parent)
    }

    /// Moves `pid` (a pod monitor) into [`Self::monitors_path`], made on
    /// first use. With systemd the monitor is attached to the running
    /// scope over D-Bus, or, when there is none (systemd drops a scope as
    /// soon as its last process exits), the scope is started with `pid` as
    /// its first process; a scope going away between the two is retried,
    /// bounded. The pid is then written to every hierarchy (systemd places
    /// it only in those it manages).
    pub fn join_monitors(&self, pid: i32) -> Result<CgroupPath, Error> {
        let path = self.monitors_path()?;
        if let (Some(units), Some(unit)) = (&self.units, &path.unit) {
            let _one_at_a_time = self
                .monitors_lock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            join_scope(units.as_ref(), unit, pid)?;
            self.tree.create_dirs(&path.path)?;
        } else if !self.tree.exists(&path.path) {
            self.tree.create_dirs(&path.path)?;
        }
        self.tree.add_process(&path.path, pid)?;
        Ok(path)
    }

    /// The default parent as a cgroup (`/crius`, or its slice).
    pub fn default_parent_path(&self) -> Result<CgroupPath, Error> {
        paths::default_parent_path(self.driver, &self.default_parent)
    }

    /// The cgroups directly below `parent`, e.g. to find pods and leaves
    /// without a record when crius starts. Only cgroups whose names crius
    /// makes are returned (`pod-*`/`crius-*`, `*-pod*.slice`/`crius-*.scope`).
    pub fn children(&self, parent: &CgroupPath) -> Result<Vec<CgroupPath>, Error> {
        let mut out = Vec::new();
        for name in self.tree.children(&parent.path)? {
            if let Some(child) = paths::child_path(parent, &name) {
                out.push(child);
            }
        }
        Ok(out)
    }

    pub fn exists(&self, path: &CgroupPath) -> bool {
        self.tree.exists(&path.path)
    }

    /// Creates `path` with `res`. A cgroup that already exists (kubelet
    /// made it) is left exactly as it is and `false` says so: the caller
    /// must then never remove it. On failure nothing is left behind.
    pub fn create(&self, path: &CgroupPath, res: &Resources) -> Result<bool, Error> {
        let writes = resources::plan(&self.tree.layout, res)?;
        if let Some(unit) = &path.unit
            && unit.is_scope()
        {
            return Err(Error::NeedsProcess(unit.name.clone()));
        }
        if self.tree.exists(&path.path) || self.unit_exists(path)? {
            tracing::debug!(cgroup = %path, "cgroup exists, left as it is");
            return Ok(false);
        }
        self.make(path, &writes, res, None)?;
        Ok(true)
    }

    /// Creates the leaf `path` with `res` and `pid` as its first process
    /// (with systemd a scope cannot exist empty). A leaf that exists
    /// already is an error: leaves are always crius's own.
    pub fn create_with_pid(
        &self,
        path: &CgroupPath,
        res: &Resources,
        pid: i32,
    ) -> Result<(), Error> {
        let writes = resources::plan(&self.tree.layout, res)?;
        if self.tree.exists(&path.path) || self.unit_exists(path)? {
            return Err(Error::Exists(path.path.clone()));
        }
        self.make(path, &writes, res, Some(pid))?;
        if let Err(e) = self.tree.add_process(&path.path, pid) {
            self.undo(path);
            return Err(e);
        }
        Ok(())
    }

    fn make(
        &self,
        path: &CgroupPath,
        writes: &[resources::Write],
        res: &Resources,
        pid: Option<i32>,
    ) -> Result<(), Error> {
        if let (Some(units), Some(unit)) = (&self.units, &path.unit) {
            units.start(unit, res, pid)?;
        }
        // systemd realizes a unit's cgroup only in the hierarchies it
        // manages, and maybe lazily: make every directory (runc does too).
        let made = match self.tree.create_dirs(&path.path) {
            Ok(made) => made,
            Err(e) => {
                self.stop_unit(path);
                return Err(e);
            }
        };
        let applied = self
            .tree
            .apply(&path.path, writes)
            .and_then(|()| match &res.devices {
                Some(rules) => self.tree.set_devices(&path.path, rules),
                None => Ok(()),
            });
        if let Err(e) = applied {
            self.tree.undo_create(&made);
            self.stop_unit(path);
            return Err(e);
        }
        Ok(())
    }

    fn undo(&self, path: &CgroupPath) {
        self.stop_unit(path);
        if let Err(e) = self.tree.remove(&path.path) {
            tracing::warn!(cgroup = %path, err = %e, "undo cgroup creation");
        }
    }

    fn stop_unit(&self, path: &CgroupPath) {
        if let (Some(units), Some(unit)) = (&self.units, &path.unit)
            && let Err(e) = units.stop(unit)
        {
            tracing::warn!(unit = %unit.name, err = %e, "stop systemd unit");
        }
    }

    fn unit_exists(&self, path: &CgroupPath) -> Result<bool, Error> {
        match (&self.units, &path.unit) {
            (Some(units), Some(unit)) => units.exists(unit),
            _ => Ok(false),
        }
    }

    /// Checks `res` as [`Self::update`] would, without touching a cgroup.
    pub fn check(&self, res: &Resources) -> Result<(), Error> {
        resources::plan(&self.tree.layout, res).map(|_| ())
    }

    /// Changes the resources of an existing cgroup, all or nothing: every
    /// value and file is checked first, and what was written is restored
    /// when a write fails.
    pub fn update(&self, path: &CgroupPath, res: &Resources) -> Result<(), Error> {
        let writes = resources::plan(&self.tree.layout, res)?;
        if !self.tree.exists(&path.path) {
            return Err(Error::Io {
                op: "update cgroup",
                path: self.tree.layout.reference().dir(&path.path),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        self.tree.apply(&path.path, &writes)?;
        if let (Some(units), Some(unit)) = (&self.units, &path.unit) {
            // The files hold the limits now; the unit's properties only
            // keep systemd from resetting them later.
            if let Err(e) = units.set_resources(unit, res) {
                tracing::warn!(unit = %unit.name, err = %e, "set systemd unit properties");
            }
        }
        Ok(())
    }

    /// Delegates the existing leaf `path` (cgroup v2 only) to host uid
    /// `uid`: see [`delegate`]. The container's cgroup namespace and a
    /// writable cgroup2 mount are the container's side of it.
    pub fn delegate(&self, path: &CgroupPath, uid: u32) -> Result<(), Error> {
        if !self.is_unified() {
            return Err(Error::DelegationNeedsV2(path.path.clone()));
        }
        let names = delegate::delegatable_files(Path::new(delegate::DELEGATE_LIST))?;
        let dir = self.tree.layout.reference().dir(&path.path);
        delegate::delegate_dir(&dir, &names, uid)
    }

    /// The files an exec process in the leaf `path` joins through:
    /// [`Self::join_files`], but on cgroup v2 below a leaf the container
    /// turned into an inner node, its init's cgroup ([`delegate::exec_cgroup`]).
    pub fn exec_join_files(&self, path: &CgroupPath, init_pid: Option<i32>) -> Vec<PathBuf> {
        let (Some(pid), true) = (init_pid, self.is_unified()) else {
            return self.join_files(path);
        };
        let init = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let dir = self.tree.layout.reference().dir(&path.path);
        let joined = delegate::exec_cgroup(&path.path, &dir, &init);
        self.tree.join_files(&joined)
    }

    /// Puts the kernel's cgroup migration lock into its writer mode ahead
    /// of a migration that follows soon (a container's init joining its
    /// leaf), by a no-op move of this process into its own cgroup: see
    /// [`warm`]. Blocking, and it may wait for an RCU grace period with
    /// the kernel's cgroup_mutex held: run it on a thread of its own,
    /// without waiting for it. `false`: nothing to warm (`favordynmods`).
    pub fn warm_migrations(&self) -> Result<bool, Error> {
        let file = Path::new("/proc/self/cgroup");
        let own = std::fs::read_to_string(file).map_err(|source| Error::Io {
            op: "read",
            path: file.into(),
            source,
        })?;
        self.warm_from(&own)
    }

    /// [`Self::warm_migrations`] for the process whose /proc/PID/cgroup
    /// is `proc_cgroup` (the caller's own: it writes `0`).
    fn warm_from(&self, proc_cgroup: &str) -> Result<bool, Error> {
        match warm::target(&self.tree.layout, proc_cgroup) {
            Some(file) => warm::write_self(&file).map(|()| true),
            None => Ok(false),
        }
    }

    /// Moves `pid` into `path` in every hierarchy.
    pub fn add_process(&self, path: &CgroupPath, pid: i32) -> Result<(), Error> {
        self.tree.add_process(&path.path, pid)
    }

    /// The `cgroup.procs` file of `path` in each hierarchy: writing a pid
    /// to each moves that whole process there.
    #[cfg(test)]
    pub fn procs_files(&self, path: &CgroupPath) -> Vec<PathBuf> {
        self.tree.procs_files(&path.path)
    }

    /// The file of `path` in each hierarchy through which a process about
    /// to exec a container's workload joins it itself: v1 `tasks`, v2
    /// `cgroup.procs` (see [`fs`]'s `join_files`). A cgroup v2 entry is
    /// best used as the directory to clone the process into instead.
    pub fn join_files(&self, path: &CgroupPath) -> Vec<PathBuf> {
        self.tree.join_files(&path.path)
    }

    /// Every process in `path` and below, sorted.
    pub fn procs(&self, path: &CgroupPath) -> Result<Vec<i32>, Error> {
        self.tree.procs(&path.path)
    }

    /// SIGKILLs every process in `path` and below (v2 cgroup.kill, else
    /// freeze + kill + thaw). Returns once the signals are sent; `remove`
    /// waits for the exits.
    pub fn kill_all(&self, path: &CgroupPath) -> Result<(), Error> {
        self.tree.kill_all(&path.path)
    }

    /// OOM kills counted in `path` (v1 memory.oom_control, v2
    /// memory.events). Read it before `remove`; with systemd, while the
    /// scope still has a process (systemd removes empty scopes).
    pub fn oom_kills(&self, path: &CgroupPath) -> Result<u64, Error> {
        self.tree.oom_kills(&path.path)
    }

    /// Starts following the OOM-kill counter of container `id`'s leaf
    /// `path` (see [`oom`]): with systemd, the counter must be read before
    /// the scope empties. On v2, poll the wake and call `oom_refresh`.
    pub fn oom_follow(&self, id: &str, path: &CgroupPath) -> Result<OomWake, Error> {
        let (file, unified) = self.tree.oom_file(&path.path)?;
        self.oom.follow(id, file, unified)
    }

    /// Reads container `id`'s counter again (its wake was readable).
    pub fn oom_refresh(&self, id: &str) -> u64 {
        self.oom.refresh(id)
    }

    /// The OOM kills of container `id`, which has exited (`sigkilled`: by
    /// SIGKILL), and the end of following it; never an error: 0 when
    /// nothing can be read.
    pub fn oom_finish(&self, id: &str, path: &CgroupPath, sigkilled: bool) -> u64 {
        match self.tree.oom_file(&path.path) {
            Ok((file, _)) => self.oom.finish(id, &file, sigkilled),
            Err(_) => 0,
        }
    }

    /// Removes `path` and everything below it; idempotent. Processes
    /// still inside make it fail after a short wait: `kill_all` first.
    pub fn remove(&self, path: &CgroupPath) -> Result<(), Error> {
        if let (Some(units), Some(unit)) = (&self.units, &path.unit) {
            units.stop(unit)?;
        }
        self.tree.remove(&path.path)
    }

    pub fn stats(&self, path: &CgroupPath) -> Result<Stats, Error> {
        self.tree.stats(&path.path)
    }

    /// The cumulative CPU time of `path`, in nanoseconds (`None` without
    /// a CPU accounting controller).
    pub fn cpu_usage(&self, path: &CgroupPath) -> Result<Option<u64>, Error> {
        self.tree.cpu_usage(&path.path)
    }
}

/// Attaches `pid` to the scope `unit`, or starts the scope with it.
fn join_scope(units: &dyn UnitManager, unit: &Unit, pid: i32) -> Result<(), Error> {
    let mut last = None;
    for attempt in 0..JOIN_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)));
        }
        match units.attach(unit, pid) {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::debug!(unit = %unit.name, pid, err = %e, "attach to the monitors' scope")
            }
        }
        match units.start(unit, &Resources::default(), Some(pid)) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("JOIN_ATTEMPTS > 0"))
}
