//! The cgroupfs operations on one cgroup path in every hierarchy of a
//! [`Layout`]: create the directories (enabling v2 controllers on the way
//! down, seeding v1 cpusets), apply resource writes all-or-nothing, move
//! processes, kill them all, read counters, remove.
//!
//! The systemd driver uses these too once systemd has made the unit: runc
//! does the same, since systemd does not realize every cgroup itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::sys::process::{PidFd, has_exited};

use super::Error;
use super::devices::DeviceRules;
use super::layout::{Layout, Mode};
use super::resources::Write;

/// How long `remove` waits for a cgroup's processes to finish exiting.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `kill_all` waits for the processes it killed to be gone.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// The cgroup trees crius works on.
#[derive(Debug, Clone)]
pub struct Tree {
    pub layout: Layout,
    /// Tests on fixture trees: plays the kernel by filling new directories
    /// with interface files, and removes trees with their files.
    #[cfg(test)]
    pub fake_kernel: bool,
}

impl Tree {
    pub fn new(layout: Layout) -> Tree {
        Tree {
            layout,
            #[cfg(test)]
            fake_kernel: false,
        }
    }

    /// Whether the cgroup exists (judged in the reference hierarchy).
    pub fn exists(&self, path: &str) -> bool {
        self.layout.reference().dir(path).is_dir()
    }

    /// Creates `path` in every hierarchy, with any missing ancestors.
    /// Returns the directories made, deepest last, for `undo_create`.
    pub fn create_dirs(&self, path: &str) -> Result<Vec<PathBuf>, Error> {
        let mut made = Vec::new();
        let result = self.create_dirs_into(path, &mut made);
        if let Err(e) = result {
            self.undo_create(&made);
            return Err(e);
        }
        Ok(made)
    }

    fn create_dirs_into(&self, path: &str, made: &mut Vec<PathBuf>) -> Result<(), Error> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        for h in &self.layout.hierarchies {
            let mut dir = h.mount.clone();
            for part in &parts {
                if h.unified {
                    enable_controllers(&dir);
                }
                let parent = dir.clone();
                dir.push(part);
                if dir.is_dir() {
                    continue;
                }
                match std::fs::create_dir(&dir) {
                    Ok(()) => made.push(dir.clone()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(source) => {
                        return Err(Error::Io {
                            op: "create cgroup",
                            path: dir,
                            source,
                        });
                    }
                }
                #[cfg(test)]
                if self.fake_kernel {
                    super::fake_kernel::populate(&dir, h);
                }
                if h.has("cpuset") && !h.unified {
                    seed_cpuset(&parent, &dir)?;
                }
            }
        }
        Ok(())
    }

    /// Removes directories `create_dirs` made, deepest first.
    pub fn undo_create(&self, made: &[PathBuf]) {
        for dir in made.iter().rev() {
            if let Err(e) = self.rmdir(dir) {
                tracing::warn!(dir = %dir.display(), err = %e, "undo cgroup creation");
            }
        }
    }

    /// Applies `writes` to `path`: every file is checked first, and on a
    /// failure the values already written are restored.
    pub fn apply(&self, path: &str, writes: &[Write]) -> Result<(), Error> {
        // 1. Resolve and check every file before touching any.
        let mut todo: Vec<(PathBuf, &Write)> = Vec::new();
        for w in writes {
            let file = self.layout.hierarchies[w.hierarchy].dir(path).join(&w.file);
            if !file.is_file() {
                if w.optional {
                    tracing::debug!(file = %file.display(), "cgroup file absent, skipped");
                    continue;
                }
                return Err(Error::MissingFile { path: file });
            }
            todo.push((file, w));
        }
        order_v1_memory(&mut todo);

        // 2. Write, remembering the old values.
        let mut done: Vec<(PathBuf, String)> = Vec::new();
        for (file, w) in &todo {
            let old = match read_trimmed(file) {
                Ok(old) => old,
                Err(e) => {
                    restore(&done);
                    return Err(e);
                }
            };
            if let Err(source) = std::fs::write(file, &w.value) {
                restore(&done);
                return Err(Error::Write {
                    path: file.clone(),
                    value: w.value.clone(),
                    source,
                });
            }
            done.push((file.clone(), old));
        }
        Ok(())
    }

    /// Applies a container's device policy to `path` ([`super::devices`]):
    /// through the v1 devices controller when one is mounted, else as a
    /// BPF_CGROUP_DEVICE program attached to the unified hierarchy's
    /// cgroup. A host with neither is an error: a container must never
    /// run without the device rules.
    pub fn set_devices(&self, path: &str, rules: &DeviceRules) -> Result<(), Error> {
        if let Some(h) = self
            .layout
            .hierarchies
            .iter()
            .find(|h| !h.unified && h.has("devices"))
        {
            let dir = h.dir(path);
            for (file, line) in rules.v1_writes() {
                write(&dir.join(file), &line)?;
            }
            return Ok(());
        }
        let Some(u) = self.layout.unified() else {
            return Err(Error::NoDeviceController);
        };
        let dir = u.dir(path);
        #[cfg(test)]
        if self.fake_kernel {
            // Fixture trees cannot hold a program: record its size.
            return write(
                &dir.join("crius.test.device_program"),
                &rules.bpf_program().len().to_string(),
            );
        }
        crate::sys::bpf::attach_device_program(&dir, &rules.bpf_program()).map_err(|source| {
            Error::Io {
                op: "attach the device program to cgroup",
                path: dir,
                source,
            }
        })
    }

    /// The `cgroup.procs` files of `path`, one per hierarchy: writing a pid
    /// to each moves that process into the cgroup.
    pub fn procs_files(&self, path: &str) -> Vec<PathBuf> {
        self.files(path, "cgroup.procs", "cgroup.procs")
    }

    /// The files through which a process joins `path` itself, one per
    /// hierarchy: cgroup v1's `tasks` (a thread writing `0` there moves
    /// only itself, which the kernel does without the lock that makes a
    /// whole-process move wait for an RCU grace period), cgroup v2's
    /// `cgroup.procs` (a process is better born there: CLONE_INTO_CGROUP).
    pub fn join_files(&self, path: &str) -> Vec<PathBuf> {
        self.files(path, "tasks", "cgroup.procs")
    }

    /// File `v1` (in a cgroup v1 hierarchy) or `v2` (in the unified one)
    /// of `path`, per hierarchy.
    fn files(&self, path: &str, v1: &str, v2: &str) -> Vec<PathBuf> {
        self.layout
            .hierarchies
            .iter()
            .map(|h| h.dir(path).join(if h.unified { v2 } else { v1 }))
            .collect()
    }

    pub fn add_process(&self, path: &str, pid: i32) -> Result<(), Error> {
        for file in self.procs_files(path) {
            std::fs::write(&file, pid.to_string()).map_err(|source| Error::Write {
                path: file.clone(),
                value: pid.to_string(),
                source,
            })?;
        }
        Ok(())
    }

    /// Every process in `path` and the cgroups below it, in any hierarchy.
    pub fn procs(&self, path: &str) -> Result<Vec<i32>, Error> {
        let mut pids = BTreeSet::new();
        for h in &self.layout.hierarchies {
            pids.extend(subtree_procs(&h.dir(path))?);
        }
        Ok(pids.into_iter().collect())
    }

    /// SIGKILLs every process of `path` and below and waits until they
    /// are gone (at most [`KILL_TIMEOUT`]: a process stuck in the kernel
    /// cannot be hurried), so that a stopped container has no process
    /// left when its stop returns. v2 `cgroup.kill` when the kernel has
    /// it, else (v1, or an old v2) kill each pid and read the cgroup again
    /// until it shows no pid not yet killed. A process with SIGKILL pending
    /// cannot fork any more (the kernel aborts a fork racing a fatal
    /// signal), so the loop ends, with no freezer: v1's FROZEN comes only
    /// once every killed task has left, which would mean polling for it.
    ///
    /// The waits are events: each killed process through a pidfd (readable
    /// once it has exited, when the kernel has also taken it out of its
    /// cgroups), and the v1 signal goes through that pidfd too, so a pid
    /// reused meanwhile is never hit. Only a process whose pidfd cannot be
    /// opened (out of fds) is killed by pid and waited for by reading
    /// /proc every few milliseconds, as before pidfds.
    pub fn kill_all(&self, path: &str) -> Result<(), Error> {
        let deadline = Instant::now() + KILL_TIMEOUT;
        let mut killed_by_v2 = false;
        if let Some(u) = self.layout.unified() {
            let file = u.dir(path).join("cgroup.kill");
            if file.is_file() {
                std::fs::write(&file, "1").map_err(|source| Error::Write {
                    path: file.clone(),
                    value: "1".into(),
                    source,
                })?;
                killed_by_v2 = true;
            }
        }
        if killed_by_v2 && self.layout.mode == Mode::Unified {
            // cgroup.kill reaches every process, forks included: wait for
            // those the cgroup lists (it may list a process forked after
            // the kill: read it again).
            loop {
                let procs = self.procs(path).unwrap_or_default();
                let mut waiting = Waiting::default();
                for pid in procs {
                    waiting.add(pid, false);
                }
                if waiting.is_empty() {
                    return Ok(());
                }
                if !waiting.wait(deadline) {
                    tracing::warn!(path, "killed processes still in the cgroup");
                    return Ok(());
                }
            }
        }
        let mut killed = Waiting::default();
        loop {
            let procs = self.procs(path)?;
            let mut signalled = false;
            for pid in procs {
                if killed.has_live(pid) {
                    continue;
                }
                signalled |= killed.add(pid, true);
            }
            if signalled && Instant::now() < deadline {
                continue; // read again: a fork may have raced the kill
            }
            if !killed.wait(deadline) {
                tracing::warn!(path, "killed processes still in the cgroup");
                return Ok(());
            }
            if killed.is_empty() {
                return Ok(());
            }
            // Every killed process has exited: the cgroup is read once
            // more for any forked before its parent died.
            killed.clear();
        }
    }

    /// How many processes the OOM killer killed in `path` (and below).
    pub fn oom_kills(&self, path: &str) -> Result<u64, Error> {
        let (file, _) = self.oom_file(path)?;
        Ok(key_value(&read_trimmed(&file)?, "oom_kill").unwrap_or(0))
    }

    /// The file holding `path`'s OOM-kill counter, and whether it is v2's.
    pub fn oom_file(&self, path: &str) -> Result<(PathBuf, bool), Error> {
        let h = self
            .layout
            .controller("memory")
            .ok_or_else(|| Error::InvalidResources("no memory controller on this host".into()))?;
        let name = if h.unified {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        Ok((h.dir(path).join(name), h.unified))
    }

    /// The names of the cgroups directly below `path` (reference
    /// hierarchy); none when `path` does not exist.
    pub fn children(&self, path: &str) -> Result<Vec<String>, Error> {
        let dir = self.layout.reference().dir(path);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    op: "list cgroup",
                    path: dir,
                    source,
                });
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes `path` and every cgroup below it in every hierarchy; an
    /// absent cgroup is not an error. Waits (up to a few seconds) for
    /// killed processes to finish exiting (EBUSY).
    pub fn remove(&self, path: &str) -> Result<(), Error> {
        let deadline = Instant::now() + REMOVE_TIMEOUT;
        for h in &self.layout.hierarchies {
            let top = h.dir(path);
            if top == h.mount {
                return Err(Error::InvalidPath {
                    path: path.into(),
                    reason: "the root cgroup cannot be removed".into(),
                });
            }
            // A leaf whose processes are gone (a removed container's, the
            // usual case) goes with one rmdir: no listing of its subtree.
            if self.rmdir(&top).is_ok() {
                continue;
            }
            let mut dirs = Vec::new();
            collect_subtree(&top, &mut dirs)?;
            // Deepest first.
            for dir in dirs.iter().rev() {
                self.rmdir_waiting(dir, deadline)?;
            }
        }
        Ok(())
    }

    /// Removes one cgroup directory; EBUSY means processes are still in
    /// it (exiting): waits for their pidfds, then tries again.
    fn rmdir_waiting(&self, dir: &Path, deadline: Instant) -> Result<(), Error> {
        loop {
            match self.rmdir(dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    let mut waiting = Waiting::default();
                    for pid in subtree_procs(dir).unwrap_or_default() {
                        waiting.add(pid, false);
                    }
                    if waiting.is_empty() {
                        // Listed no more, not yet out of the cgroup: the
                        // task is between its exit and the kernel's
                        // accounting, a matter of microseconds.
                        std::thread::sleep(Duration::from_millis(1));
                    } else {
                        waiting.wait(deadline);
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(Error::Busy {
                        path: dir.into(),
                        pids: subtree_procs(dir)
                            .map(|p| p.into_iter().collect())
                            .unwrap_or_default(),
                    });
                }
                Err(source) => {
                    return Err(Error::Io {
                        op: "remove cgroup",
                        path: dir.into(),
                        source,
                    });
                }
            }
        }
    }

    fn rmdir(&self, dir: &Path) -> std::io::Result<()> {
        #[cfg(test)]
        if self.fake_kernel {
            return match std::fs::remove_dir_all(dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            };
        }
        match std::fs::remove_dir(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// Enables in `dir` every controller its `cgroup.controllers` offers, so
/// the child about to be made gets their files. Failures (a cgroup with
/// processes cannot delegate domain controllers) are logged: the resource
/// writes that need a missing file fail later with its name.
fn enable_controllers(dir: &Path) {
    let Ok(available) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let file = dir.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&file).unwrap_or_default();
    let enabled: BTreeSet<&str> = enabled.split_whitespace().collect();
    let missing: Vec<String> = available
        .split_whitespace()
        .filter(|c| !enabled.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    if missing.is_empty() {
        return;
    }
    if std::fs::write(&file, missing.join(" ")).is_ok() {
        return;
    }
    // All at once failed: enable what can be enabled, one by one.
    for c in missing {
        if let Err(e) = std::fs::write(&file, &c) {
            tracing::debug!(file = %file.display(), controller = %c, err = %e, "enable controller");
        }
    }
}

/// A new v1 cpuset starts with no cpus and mems, and then no process can
/// join it: copy the parent's, as runc does.
fn seed_cpuset(parent: &Path, dir: &Path) -> Result<(), Error> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        if !own.is_file() || !read_trimmed(&own)?.is_empty() {
            continue;
        }
        let value = read_trimmed(&parent.join(file))?;
        write(&own, &value)?;
    }
    Ok(())
}

/// Moves v1 memory writes into an order the kernel accepts: the memory
/// limit may never exceed memory+swap, so raise memsw first when the new
/// memory limit is above the current memsw.
pub(crate) fn order_v1_memory(todo: &mut [(PathBuf, &Write)]) {
    let pos = |name: &str| todo.iter().position(|(_, w)| w.file == name);
    let (Some(mem), Some(memsw)) = (
        pos("memory.limit_in_bytes"),
        pos("memory.memsw.limit_in_bytes"),
    ) else {
        return;
    };
    let as_limit = |v: &str| match v.parse::<i64>() {
        Ok(-1) | Err(_) => i64::MAX,
        Ok(v) => v,
    };
    let new_mem = as_limit(&todo[mem].1.value);
    let current_memsw = read_trimmed(&todo[memsw].0)
        .map(|v| as_limit(&v))
        .unwrap_or(i64::MAX);
    let memory_first = new_mem <= current_memsw;
    if memory_first != (mem < memsw) {
        todo.swap(mem, memsw);
    }
}

/// Best-effort restore of written values, newest first; a second pass
/// catches values whose order mattered (v1 memory and memsw).
fn restore(done: &[(PathBuf, String)]) {
    let mut failed = Vec::new();
    for (file, old) in done.iter().rev() {
        if std::fs::write(file, old).is_err() {
            failed.push((file, old));
        }
    }
    for (file, old) in failed {
        if let Err(e) = std::fs::write(file, old) {
            tracing::warn!(file = %file.display(), old = %old, err = %e, "restore cgroup value");
        }
    }
}

/// `dir` and every directory below it, parents before children. An absent
/// `dir` gives nothing.
fn collect_subtree(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                op: "list cgroup",
                path: dir.into(),
                source,
            });
        }
    };
    out.push(dir.into());
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect_subtree(&entry.path(), out)?;
        }
    }
    Ok(())
}

fn subtree_procs(dir: &Path) -> Result<BTreeSet<i32>, Error> {
    let mut dirs = Vec::new();
    collect_subtree(dir, &mut dirs)?;
    let mut pids = BTreeSet::new();
    for d in dirs {
        let file = d.join("cgroup.procs");
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            // Removed meanwhile, or a fixture without the file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io {
                    op: "read",
                    path: file,
                    source,
                });
            }
        };
        pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    Ok(pids)
}

/// Processes being waited for: pidfds, readable once each has exited
/// (poll(2) on all of them); pids whose pidfd could not be opened are
/// checked in /proc every few milliseconds.
#[derive(Default)]
struct Waiting {
    fds: std::collections::HashMap<i32, PidFd>,
    by_pid: BTreeSet<i32>,
}

impl Waiting {
    /// Watches `pid` (and SIGKILLs it first when `kill_it`); `false` when
    /// it has already exited (gone, or a zombie).
    fn add(&mut self, pid: i32, kill_it: bool) -> bool {
        match PidFd::open(pid) {
            Ok(fd) if fd.ended() => false,
            Ok(fd) => {
                if kill_it && let Err(e) = fd.signal(Signal::SIGKILL) {
                    tracing::debug!(pid, error = %crate::error::chain(&e), "kill cgroup process");
                }
                self.fds.insert(pid, fd);
                true
            }
            // Gone (ESRCH), or not a process any more.
            Err(_) if has_exited(pid) => false,
            Err(e) => {
                tracing::debug!(pid, error = %crate::error::chain(&e), "no pidfd: killing and waiting by pid");
                if kill_it {
                    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                        Err(e) => tracing::warn!(pid, err = %e, "kill cgroup process"),
                    }
                }
                self.by_pid.insert(pid);
                true
            }
        }
    }

    /// Whether `pid` is watched and has not exited.
    fn has_live(&self, pid: i32) -> bool {
        self.fds.get(&pid).is_some_and(|fd| !fd.ended())
            || self.by_pid.contains(&pid) && !has_exited(pid)
    }

    fn is_empty(&self) -> bool {
        self.fds.is_empty() && self.by_pid.is_empty()
    }

    fn clear(&mut self) {
        self.fds.clear();
        self.by_pid.clear();
    }

    /// Waits until every watched process has exited; `false` at `deadline`.
    fn wait(&self, deadline: Instant) -> bool {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let mut live: Vec<&PidFd> = self.fds.values().collect();
        loop {
            live.retain(|fd| !fd.ended());
            let by_pid = self.by_pid.iter().any(|&p| !has_exited(p));
            if live.is_empty() && !by_pid {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let mut left = deadline - now;
            if by_pid {
                left = left.min(Duration::from_millis(5));
            }
            if live.is_empty() {
                std::thread::sleep(left);
                continue;
            }
            let mut fds: Vec<PollFd> = live
                .iter()
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let _ = poll(&mut fds, PollTimeout::from(ms));
        }
    }
}

pub(super) fn read_trimmed(file: &Path) -> Result<String, Error> {
    std::fs::read_to_string(file)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Io {
            op: "read",
            path: file.into(),
            source,
        })
}

fn write(file: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(file, value).map_err(|source| Error::Write {
        path: file.into(),
        value: value.into(),
        source,
    })
}

pub(super) fn parse_u64(file: &Path) -> Result<u64, Error> {
    let text = read_trimmed(file)?;
    text.parse().map_err(|_| Error::Parse {
        path: file.into(),
        text,
    })
}

/// The value of `key` in a flat-keyed file (`oom_kill 3`).
pub(super) fn key_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}
