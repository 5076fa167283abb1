//! Warming cgroup migrations: putting the kernel's migration lock into its
//! writer mode ahead of a migration that follows soon (a container's init
//! moved into the systemd scope made around it), so that migration does
//! not wait for an RCU grace period on the critical path. Other inits and
//! exec processes need none: they are born in their cgroup v2 directory
//! and move only their one thread into v1 ones, which the kernel does
//! without that lock ([`super::Cgroups::join_files`]).
//!
//! # Why a migration waits (kernel/cgroup/cgroup.c, kernel/rcu/sync.c)
//!
//! A write to `cgroup.procs` takes `cgroup_mutex`, then (unless the mount
//! has `favordynmods`) `percpu_down_write(&cgroup_threadgroup_rwsem)`, in
//! `cgroup_procs_write_start` for v1 and v2 alike: the pid is looked up
//! first, then the lock is taken whatever the move turns out to be (a move
//! into the cgroup the process is in already takes it too, and then moves
//! nothing: `cgroup_migrate_prepare_dst` drops a source css_set equal to
//! its destination). `percpu_down_write` calls `rcu_sync_enter`, whose
//! state machine is:
//!
//! - `GP_IDLE`: the writer calls `synchronize_rcu()`: one grace period,
//!   measured at 7 to 29 ms on this 2-core host under load;
//! - `GP_ENTER` (another writer is waiting out that grace period): the
//!   writer waits for the same one, not a new one;
//! - `GP_PASSED`, `GP_EXIT`, `GP_REPLAY`: no wait at all.
//!
//! The last writer's `rcu_sync_exit` moves `GP_PASSED` to `GP_EXIT` and
//! queues a callback after one more grace period; only then does the state
//! fall back to `GP_IDLE` (one more grace period per writer that came and
//! went meanwhile: `GP_REPLAY`). So a no-op write started shortly before a
//! real migration either shares its grace period with it or leaves the
//! state in `GP_EXIT`, where the real one enters at once.
//!
//! With `favordynmods` (a mount option of cgroup2, and of v1 hierarchies on
//! recent kernels) the kernel keeps the semaphore in writer mode for good
//! (and on 6.18 locks per thread group instead): nothing to warm, and
//! [`target`] is `None`.
//!
//! # The write
//!
//! The caller writes `0` (itself) into the `cgroup.procs` of the cgroup it
//! is already in, in one hierarchy: a move to where it is. It changes
//! nothing, and it never creates the file (a missing file is an error).

use std::io::Write;
use std::path::PathBuf;

use super::Error;
use super::layout::Layout;

/// The `cgroup.procs` file of the caller's own cgroup (`proc_cgroup` is
/// its `/proc/self/cgroup`) in the first hierarchy of `layout` that file
/// lists; `None` with `favordynmods`, or when no line names a hierarchy
/// of the layout.
pub fn target(layout: &Layout, proc_cgroup: &str) -> Option<PathBuf> {
    if layout.favor_dynmods {
        return None;
    }
    // "hierarchy-id:controller,list:/path"; cgroup v2 has an empty list.
    let own: Vec<(Vec<&str>, &str)> = proc_cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mut names: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
            names.sort_unstable();
            Some((names, path))
        })
        .collect();
    layout.hierarchies.iter().find_map(|h| {
        let (_, path) = own.iter().find(|(names, _)| {
            if h.unified {
                names.is_empty()
            } else {
                names
                    .iter()
                    .copied()
                    .eq(h.controllers.iter().map(String::as_str))
            }
        })?;
        Some(h.dir(path).join("cgroup.procs"))
    })
}

/// Writes `0` to `file` (see the module doc). Blocking: it may wait for an
/// RCU grace period.
pub fn write_self(file: &std::path::Path) -> Result<(), Error> {
    let werr = |source| Error::Write {
        path: file.into(),
        value: "0".into(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .map_err(werr)?;
    f.write_all(b"0").map_err(werr)
}
