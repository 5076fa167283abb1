//! Stopping and removing a pod, and watching its monitor.
//!
//! Teardown works from whatever state a record is in (a failed creation,
//! an intent left by a crash, a stopped pod) and is idempotent: kill the
//! monitor and every process of the pod (through its cgroup), CNI DEL,
//! unpin the namespaces, unmount /dev/shm; then remove the cgroups and
//! directories.

use std::sync::Arc;

use nix::sys::signal::Signal;

use super::record::{PodRecord, State};
use super::spec;
use super::{Error, Pods};
use crate::events::Type;
use crate::record::Record;
use crate::sys::mount::{Host, detach_all};
use crate::sys::ns;
use crate::sys::process::ProcRef;

impl Pods {
    /// StopPodSandbox: stops the pod's containers, its processes, network
    /// and namespaces. An unknown id succeeds.
    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let Some(id) = self.resolve(id)? else {
            return Ok(());
        };
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        if let Some(hooks) = self.container_hooks()
            && let Err(e) = hooks.stop_all(&id).await
        {
            tracing::warn!(pod_id = %id, error = %e, "stop the pod's containers");
        }
        self.stop_locked(&id).await
    }

    async fn stop_locked(&self, id: &str) -> Result<(), Error> {
        let Some(mut rec) = self.records.get(id)? else {
            return Ok(());
        };
        let was_ready = rec.state == State::Ready;
        if was_ready {
            // NOTREADY first: the watcher then knows the monitor's end is
            // expected. Lazy: the durable write below follows; after a
            // crash in between, the start finds the monitor gone.
            rec.state = State::NotReady;
            rec.reason = "stopped".into();
            self.records.put_lazy(&rec)?;
            if rec.visible() {
                self.events.pod(Type::Stopped, &rec);
            }
        }
        self.teardown(&rec, true).await?;
        // A stopped pod's record already says so (RemovePodSandbox after
        // StopPodSandbox): no write.
        if was_ready || rec.monitor.is_some() {
            rec.monitor = None;
            self.records.put(&rec)?;
        }
        tracing::info!(pod_id = %id, "pod sandbox stopped");
        Ok(())
    }

    /// RemovePodSandbox: stops the pod if needed and removes every trace of
    /// it. An unknown id succeeds.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let Some(id) = self.resolve(id)? else {
            return Ok(());
        };
        let lock = self.lock_of(&id);
        let guard = lock.lock().await;
        if let Some(hooks) = self.container_hooks()
            && let Err(e) = hooks.remove_all(&id).await
        {
            tracing::warn!(pod_id = %id, error = %e, "remove the pod's containers");
        }
        self.stop_locked(&id).await?;
        let last = self.records.get(&id)?;
        if let Some(rec) = &last {
            self.remove_files(rec).await;
        }
        self.records.delete(&id)?;
        if let Some(rec) = last.filter(|r| r.visible()) {
            self.events.pod(Type::Deleted, &rec);
        }
        drop(guard);
        self.forget_lock(&id);
        tracing::info!(pod_id = %id, "pod sandbox removed");
        Ok(())
    }

    /// UpdatePodSandboxResources: records the pod's resources and overhead
    /// (one left out keeps its value) and applies their sum to the pod
    /// cgroup when crius created it; a cgroup kubelet made is kubelet's to
    /// resize (it calls this after doing so). All or nothing.
    pub async fn update_resources(
        self: &Arc<Self>,
        id: &str,
        resources: Option<spec::Resources>,
        overhead: Option<spec::Resources>,
    ) -> Result<(), Error> {
        if let Some(r) = &resources {
            r.validate("resources")?;
        }
        if let Some(o) = &overhead {
            o.validate("overhead")?;
        }
        let id = self
            .resolve(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        let mut rec = self
            .records
            .get(&id)?
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        if resources.is_some() {
            rec.spec.resources = resources;
        }
        if overhead.is_some() {
            rec.spec.overhead = overhead;
        }
        let res = super::create::pod_resources(&rec.spec);
        self.cgroups
            .check(&res)
            .map_err(|e| Error::Invalid(crate::error::chain(&e)))?;
        if let Some(cg) = rec
            .cgroup
            .clone()
            .filter(|c| rec.cgroup_created && self.cgroups.exists(c))
        {
            let cgroups = self.cgroups.clone();
            blocking(move || cgroups.update(&cg, &res))
                .await
                .map_err(crate::record::step(
                    "update pod sandbox resources",
                    "apply to the pod cgroup",
                ))?;
        }
        self.records.put(&rec)?;
        tracing::info!(pod_id = %id, "pod sandbox resources updated");
        Ok(())
    }

    /// Stops what runs and releases what is held (network, pins, /dev/shm),
    /// from whatever state the record is in. Idempotent. With `strict`
    /// (StopPodSandbox) a failed CNI DEL is returned and the netns stays
    /// pinned so that a retried stop can run DEL again; otherwise
    /// (rollback, reconcile) it is logged and the network's cache keeps
    /// the entry for the sweep at the next start.
    pub(super) async fn teardown(&self, rec: &PodRecord, strict: bool) -> Result<(), Error> {
        // The processes are killed while the plugins run DEL: the network
        // namespace is pinned, so neither waits for the other, and DEL
        // (tens of ms of plugin runs) hides the kill's few ms.
        let del = async {
            match &rec.netns {
                Some(netns) => self.network.teardown(&rec.id, netns).await,
                None => Ok(()),
            }
        };
        let ((), deleted) = tokio::join!(self.kill_processes(rec), del);
        let m = Host;
        if let Err(e) = deleted {
            tracing::warn!(pod_id = %rec.id, error = %crate::error::chain(&e), "CNI DEL failed");
            if strict {
                return Err(
                    crate::record::step("stop pod sandbox", "tear down pod network")(e).into(),
                );
            }
        }
        // The user namespace last: it owns the others.
        let userns = rec.spec.namespaces.user.map(|_| rec.dir.ns(ns::Kind::User));
        for pin in [&rec.netns, &rec.ipcns, &rec.utsns, &userns]
            .into_iter()
            .flatten()
        {
            if let Err(e) = ns::unpin(&m, pin) {
                tracing::warn!(pod_id = %rec.id, error = %crate::error::chain(&e), "unpin namespace");
            }
        }
        let _ = std::fs::remove_dir(&rec.dir.ns_dir);
        if let Some(shm) = &rec.shm
            && let Err(e) = detach_all(&m, shm)
        {
            tracing::warn!(pod_id = %rec.id, error = %crate::error::chain(&e), "unmount /dev/shm");
        }
        Ok(())
    }

    /// Removes the pod's cgroups and directories (after [`Self::teardown`]).
    pub(super) async fn remove_files(&self, rec: &PodRecord) {
        let cg = self.cgroups.clone();
        let leaf = rec.init_cgroup.clone();
        let pod = rec.cgroup.clone().filter(|_| rec.cgroup_created);
        let removed = blocking(move || {
            if let Some(leaf) = leaf {
                cg.remove(&leaf)?;
            }
            if let Some(pod) = pod {
                cg.remove(&pod)?;
            }
            Ok(())
        })
        .await;
        if let Err(e) = removed {
            tracing::warn!(pod_id = %rec.id, error = %crate::error::chain(&e), "remove pod cgroup");
        }
        let _ = detach_all(&Host, &rec.dir.shm());
        // Into the trash (one rename; deleted in the background).
        if let Err(e) = self.trash.put(&rec.dir.dir) {
            tracing::warn!(pod_id = %rec.id, error = %crate::error::chain(&e), "remove pod directory");
        }
        let _ = std::fs::remove_dir(&rec.dir.ns_dir);
    }

    /// Watches the pod's monitor through a pidfd: when it ends, reaps it (if
    /// it is our child) and, unless the pod was being stopped, kills the
    /// pod's processes and marks it NOTREADY.
    pub(super) fn watch(self: &Arc<Self>, id: &str, monitor: ProcRef) {
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            this.engine.exited(monitor).await;
            this.monitor_lost(&id, monitor).await;
        });
    }

    async fn monitor_lost(&self, id: &str, monitor: ProcRef) {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let Ok(Some(mut rec)) = self.records.get(id) else {
            return;
        };
        if rec.monitor != Some(monitor) || rec.state != State::Ready {
            return; // stopped, removed or being created: expected
        }
        tracing::warn!(pod_id = %id, pid = monitor.pid, "pod monitor died; killing the pod's processes");
        self.kill_processes(&rec).await;
        rec.state = State::NotReady;
        rec.reason = format!("the pod's monitor (pid {}) was lost", monitor.pid);
        match self.records.put(&rec) {
            Ok(()) if rec.visible() => self.events.pod(Type::Stopped, &rec),
            Ok(()) => {}
            Err(e) => {
                tracing::error!(pod_id = %id, error = %crate::error::chain(&e), "record lost monitor")
            }
        }
    }
}

impl Pods {
    /// Kills the monitor (asking it first, so it reaps and records its
    /// children) and every process of the pod, through its cgroup.
    pub(super) async fn kill_processes(&self, rec: &PodRecord) {
        self.engine.stop(&rec.dir, rec.monitor).await;
        if let Some(init) = rec.init {
            init.signal(Signal::SIGKILL);
        }
        if let Some(pod) = rec.cgroup.clone()
            && self.cgroups.exists(&pod)
        {
            let cg = self.cgroups.clone();
            if let Err(e) = blocking(move || cg.kill_all(&pod)).await {
                tracing::warn!(pod_id = %rec.id, error = %crate::error::chain(&e), "kill the pod's processes");
            }
        }
    }
}

/// Runs blocking cgroup work off the async workers.
pub(super) async fn blocking<T, F>(f: F) -> Result<T, crate::cgroups::Error>
where
    F: FnOnce() -> Result<T, crate::cgroups::Error> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(crate::cgroups::Error::InvalidResources(format!(
            "cgroup task failed: {e}"
        )))
    })
}
