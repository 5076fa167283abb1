//! RemoveContainer in two halves: what the reply waits for, and what may
//! finish after it.
//!
//! Before the reply: the container's processes are dead (a created or
//! running one is killed first and its exit recorded: StopContainer's
//! path) and its record is deleted durably (one fdatasync, shared with
//! concurrent writers by the store's group commit), so a container whose
//! removal returned OK never comes back in List, whatever crashes next.
//!
//! After the reply ([`Containers::release`], on a task of its own): the
//! pod's monitor forgets the container (and unlinks its exit file), what
//! is left in its cgroup is killed and the cgroup removed (an `rmdir` in
//! each v1 hierarchy), its directory is renamed into the trash. Measured
//! with strace in the benchmark (hack/bench.sh, cgroup v1 with 9
//! hierarchies and v2's unified one): this took about three quarters of
//! the request's time, none of which the caller needs.
//!
//! Nothing leaks when crius stops in between: each of these steps is
//! redone by the next start for a container without a record
//! ([`super::reconcile`]: exit files of recorded pods, whose monitors are
//! asked to forget those containers; `crius-<id>` cgroups under recorded
//! pods' cgroups; container directories; the trash). And nothing waits on
//! it where it matters: RemovePodSandbox waits for its pod's pending
//! cleanups first (the pod cgroup and directory are removed after its
//! containers' are), and the daemon's shutdown waits for every one
//! ([`Containers::settle_removals`]). StopPodSandbox does not: a cleanup
//! whose monitor it shuts down meanwhile finds the monitor gone (and with
//! it the monitor's memory of the container) and does the rest.
//!
//! A record still being created (CREATING: RemovePodSandbox racing a
//! CreateContainer's rollback) is discarded the old way, everything
//! before the record's deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::record::{CONTAINERS, ContainerRecord, State};
use super::{Containers, Error, blocking, rootfs_dir};
use crate::record::Record;

/// Test hook ([`crate::record::step::pause_point`]): the cleanup after a
/// removal's reply pauses here, so an e2e test can kill the daemon
/// between the reply and the cleanup.
pub const PAUSE_RELEASE: &str = "release removed container";

/// Removals whose reply went out before their cleanup ended, by container
/// id: the pod id, and a channel that closes when the cleanup ends.
#[derive(Default)]
pub(super) struct Pending(Mutex<HashMap<String, (String, watch::Receiver<()>)>>);

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, watch::Receiver<()>)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Ends a pending entry when the cleanup's task ends, even by a panic.
struct Ending {
    containers: Arc<Containers>,
    id: String,
    _done: watch::Sender<()>,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.containers.removals.lock().remove(&self.id);
    }
}

impl Containers {
    /// Removes a container whose lock the caller holds: kills it first
    /// when it is not exited; see the module doc for what happens before
    /// and after the reply. An absent record succeeds.
    pub(super) async fn remove_locked(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let mut rec = self.store.get(CONTAINERS, id)?;
        match rec.as_ref().map(|r| r.state) {
            Some(State::Exited) => self.exit_told(id).await,
            Some(_) => {
                self.stop_locked(id, std::time::Duration::ZERO).await?;
                rec = self.store.get(CONTAINERS, id)?;
            }
            None => {}
        }
        let Some(rec) = rec else {
            return Ok(());
        };
        if rec.state == State::Exited {
            self.records.delete(id)?;
            self.exits.lock().expect("lock poisoned").remove(id);
            self.release_later(rec.clone());
        } else {
            self.discard(&rec).await;
        }
        if rec.visible() {
            self.events.container(crate::events::Type::Deleted, &rec);
        }
        Ok(())
    }

    /// Runs [`Self::release`] of a container whose record is deleted on a
    /// task of its own, tracked until it ends.
    fn release_later(self: &Arc<Self>, rec: ContainerRecord) {
        let (done, ended) = watch::channel(());
        self.removals
            .lock()
            .insert(rec.id.clone(), (rec.pod_id.clone(), ended));
        let ending = Ending {
            containers: self.clone(),
            id: rec.id.clone(),
            _done: done,
        };
        tokio::spawn(async move {
            crate::record::step::pause_point(PAUSE_RELEASE).await;
            ending.containers.release(&rec).await;
            drop(ending);
        });
    }

    /// Waits until the cleanups of removals that already replied have
    /// ended: those of pod `pod_id`, or all of them.
    pub async fn settle_removals(&self, pod_id: Option<&str>) {
        let waits: Vec<watch::Receiver<()>> = self
            .removals
            .lock()
            .values()
            .filter(|(pod, _)| pod_id.is_none_or(|p| p == pod))
            .map(|(_, ended)| ended.clone())
            .collect();
        for mut ended in waits {
            // Resolves with an error once the sender is dropped: the end.
            while ended.changed().await.is_ok() {}
        }
    }

    /// Releases what a container holds besides its record, from any
    /// state: the engine's process and its memory of the container,
    /// leftover processes in its cgroup, the cgroup, the directory (into
    /// the trash), the exit file. Idempotent.
    pub(super) async fn release(&self, rec: &ContainerRecord) {
        if rec.init.is_some() || matches!(rec.state, State::Creating | State::Created) {
            if let Err(e) = self.engine.remove(&rec.pod_dir, &rec.id).await {
                tracing::debug!(container_id = %rec.id, error = %crate::error::chain(&e), "engine remove");
            }
            if let Some(init) = rec.init
                && init.alive()
            {
                init.signal(nix::sys::signal::Signal::SIGKILL);
            }
        }
        let (cg, leaf, id) = (self.cgroups.clone(), rec.cgroup.clone(), rec.id.clone());
        let (dir, trash, exit_file) = (rec.dir.clone(), self.trash.clone(), rec.exit_file());
        let _ = blocking(move || {
            if let Some(leaf) = leaf
                && cg.exists(&leaf)
                && let Err(e) = cg.kill_all(&leaf).and_then(|()| cg.remove(&leaf))
            {
                tracing::warn!(container_id = %id, error = %crate::error::chain(&e), "remove container cgroup");
            }
            // Into the trash: one rename; the trash's thread deletes it.
            let _ = crate::sys::mount::detach_all(&crate::sys::mount::Host, &rootfs_dir(&dir));
            if let Err(e) = trash.put(&dir) {
                tracing::warn!(dir = %dir.display(), error = %crate::error::chain(&e), "remove container directory");
            }
            let _ = std::fs::remove_file(exit_file);
            Ok::<_, Error>(())
        })
        .await;
    }
}

#[cfg(test)]
mod tests;
