//! Starting, stopping and removing containers, and watching their exits.
//!
//! Every running container has one exit watcher: a task waiting on the
//! engine (the monitor answers the moment it reaps the init) while it
//! follows the cgroup's OOM counter (on v2 it wakes on every change of
//! `memory.events`: with systemd the scope's cgroup is gone by the time
//! the init is reaped; see [`crate::cgroups::oom`]), which then takes the
//! OOM verdict, kills what the entrypoint left behind when it was not PID 1
//! of its namespace, and records the exit.
//! StopContainer waits for that record, never polls. The watcher takes no
//! container lock (StopContainer holds it while waiting); it updates the
//! record in one transaction and only while the container is RUNNING.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::engine::Exit;
use super::record::{CONTAINERS, ContainerRecord, State, Unmade, exit_reason};
use super::{Containers, Error, blocking, state_name};
use crate::cgroups::{OomWake, Resources};
use crate::events::Type;
use crate::pod::now_ns;
use crate::record::Record;

impl Containers {
    /// StartContainer: releases a CREATED container's init to execve.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let id = self
            .resolve(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        let mut rec = self
            .store
            .get(CONTAINERS, &id)?
            .ok_or_else(|| Error::NotFound(id.clone()))?;
        if rec.state != State::Created {
            return Err(Error::WrongState(format!(
                "container {id} is {}: only a created container can be started",
                state_name(rec.effective().state)
            )));
        }
        // Its init could not be made after CreateContainer answered.
        if rec.init.is_none() {
            let unmade = self.end_unmade(&mut rec)?;
            return Err(crate::record::StepFailed {
                op: "start container",
                step: unmade.step,
                kind: unmade.kind,
                source: unmade.message.into(),
            }
            .into());
        }
        // Followed before the entrypoint runs: it may be OOM-killed at once.
        let oom = self.follow_oom(&rec).await;
        if let Err(e) = self.engine.start(&rec.pod_dir, &id).await {
            self.finish_oom(&rec, None).await;
            // ContainerCannotRun: the init stays behind no more.
            let message = crate::error::chain(&e);
            tracing::warn!(container_id = %id, error = %message, "container cannot run");
            let _ = self.engine.remove(&rec.pod_dir, &id).await;
            self.kill_leftovers(&rec, true).await;
            rec.state = State::Exited;
            rec.finished_at = now_ns();
            rec.exit_code = 128;
            rec.reason = "ContainerCannotRun".into();
            rec.message = message;
            self.store.put(CONTAINERS, &id, &rec)?;
            self.events.container(Type::Stopped, &rec);
            return Err(crate::record::step("start container", "start container init")(e).into());
        }
        rec.state = State::Running;
        rec.started_at = now_ns();
        if let Err(e) = self.store.put(CONTAINERS, &id, &rec) {
            self.finish_oom(&rec, None).await;
            return Err(e.into());
        }
        self.events.container(Type::Started, &rec);
        self.watch_exit_with(&rec, oom);
        tracing::info!(container_id = %id, "container started");
        Ok(())
    }

    /// Ends a CREATED container whose init could not be made
    /// (ContainerCannotRun, as a failed start); why, for the caller.
    fn end_unmade(&self, rec: &mut ContainerRecord) -> Result<Unmade, Error> {
        let unmade = rec.unmade.clone().unwrap_or_else(|| Unmade {
            step: "create container init".into(),
            kind: crate::error::Kind::Internal,
            message: "the container has no init".into(),
        });
        rec.state = State::Exited;
        rec.finished_at = now_ns();
        rec.exit_code = 128;
        rec.reason = "ContainerCannotRun".into();
        rec.message = format!("{}: {}", unmade.step, unmade.message);
        self.store.put(CONTAINERS, &rec.id, rec)?;
        self.events.container(Type::Stopped, rec);
        Ok(unmade)
    }

    /// Starts the exit watcher of a running container (once).
    pub(super) fn watch_exit(self: &Arc<Self>, rec: &ContainerRecord) {
        self.watch_exit_with(rec, None);
    }

    /// `watch_exit` with the OOM wake `start` got before the entrypoint
    /// ran (`None`: the watcher starts following the counter itself).
    fn watch_exit_with(self: &Arc<Self>, rec: &ContainerRecord, oom: Option<OomWake>) {
        let (tx, rx) = watch::channel(false);
        {
            let mut exits = self.exits.lock().expect("lock poisoned");
            if exits.contains_key(&rec.id) {
                return;
            }
            exits.insert(rec.id.clone(), rx);
        }
        let this = self.clone();
        let rec = rec.clone();
        tokio::spawn(async move {
            let oom = match oom {
                Some(w) => Some(w),
                None => this.follow_oom(&rec).await,
            };
            let exit = this.wait_exit_following(&rec, oom).await;
            this.record_exit(&rec, exit).await;
            let _ = tx.send(true);
        });
    }

    /// Starts following the OOM counter of `rec`'s cgroup; `None` without
    /// a cgroup, or when it cannot be read (then its exit reads it once).
    async fn follow_oom(&self, rec: &ContainerRecord) -> Option<OomWake> {
        let leaf = rec.cgroup.clone()?;
        let (cg, id) = (self.cgroups.clone(), rec.id.clone());
        match blocking(move || cg.oom_follow(&id, &leaf)).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::debug!(container_id = %rec.id, error = %crate::error::chain(&e), "follow the OOM counter");
                None
            }
        }
    }

    /// The OOM kills of `rec`, which exited (`exit`), and the end of
    /// following its counter.
    async fn finish_oom(&self, rec: &ContainerRecord, exit: Option<&Exit>) -> u64 {
        let Some(leaf) = rec.cgroup.clone() else {
            return 0;
        };
        // The OOM killer kills with SIGKILL: only such an exit may claim
        // a kill its vanished cgroup could not show.
        let sigkilled = exit.is_some_and(|e| e.signal == Some(libc::SIGKILL) || e.exit_code == 137);
        let (cg, id) = (self.cgroups.clone(), rec.id.clone());
        blocking(move || Ok::<_, Error>(cg.oom_finish(&id, &leaf, sigkilled)))
            .await
            .unwrap_or(0)
    }

    /// `wait_exit`, refreshing the OOM counter whenever it changes (v2).
    async fn wait_exit_following(
        &self,
        rec: &ContainerRecord,
        oom: Option<OomWake>,
    ) -> Option<Exit> {
        let mut wake = oom.and_then(|w| {
            let fd = w.as_fd()?.as_raw_fd();
            // `AsyncFd::new` is deprecated for types that merely borrow a
            // raw fd; `WakeFd` owns the inotify fd for the AsyncFd's whole
            // life (as streaming::fdio's OwnedFd does).
            #[allow(deprecated)]
            AsyncFd::new(WakeFd { wake: w, fd }).ok()
        });
        let exit = self.wait_exit(rec);
        tokio::pin!(exit);
        loop {
            let Some(w) = &wake else {
                return exit.await;
            };
            tokio::select! {
                e = &mut exit => return e,
                ready = w.readable() => match ready {
                    Ok(mut guard) => {
                        guard.get_inner().wake.drain();
                        guard.clear_ready();
                        // Read at once, on this worker (a small cgroup
                        // file): systemd may remove the cgroup any moment.
                        self.cgroups.oom_refresh(&rec.id);
                    }
                    Err(e) => {
                        tracing::debug!(container_id = %rec.id, error = %e, "OOM wake; read at exit only");
                        wake = None;
                    }
                },
            }
        }
    }

    /// The init's exit, from the engine; from the exit file, or "lost"
    /// (`None`), when the monitor is gone. When the engine's wait fails
    /// while the monitor and the init live, it is asked again once the
    /// init has exited (its pidfd): the monitor has the status then.
    async fn wait_exit(&self, rec: &ContainerRecord) -> Option<Exit> {
        loop {
            match self.engine.wait(&rec.pod_dir, &rec.id).await {
                Ok(exit) => return Some(exit),
                Err(e) => {
                    if let Some(exit) = crate::monitor::read_exit(&rec.exit_file()) {
                        return Some(exit);
                    }
                    let init = rec.init.and_then(|i| i.open()).filter(|fd| !fd.ended());
                    let Some(init) =
                        init.filter(|_| !matches!(e, super::engine::Error::MonitorGone(_)))
                    else {
                        tracing::warn!(container_id = %rec.id, error = %crate::error::chain(&e), "container's exit is lost");
                        return None;
                    };
                    if !self
                        .store
                        .get(CONTAINERS, &rec.id)
                        .is_ok_and(|r| r.is_some())
                    {
                        return None; // removed meanwhile
                    }
                    tracing::debug!(container_id = %rec.id, error = %crate::error::chain(&e), "wait for container; asking again when its init exits");
                    init.exited().await;
                }
            }
        }
    }

    /// Records an exit: the OOM verdict taken before anything removes the
    /// cgroup, leftovers killed, then EXITED in one transaction.
    async fn record_exit(&self, rec: &ContainerRecord, exit: Option<Exit>) {
        let oom = self.finish_oom(rec, exit.as_ref()).await > 0 && exit.is_some();
        self.kill_leftovers(rec, false).await;
        let updated = self.store.write(|txn| {
            let Some(mut r) = txn.get(CONTAINERS, &rec.id)? else {
                return Ok::<_, crate::store::Error>(None);
            };
            if !matches!(r.state, State::Running | State::Created) {
                return Ok(None);
            }
            r.state = State::Exited;
            match exit {
                Some(e) => {
                    r.exit_code = e.exit_code;
                    r.finished_at = e.finished_at;
                    r.reason = exit_reason(e.exit_code, oom).into();
                    if oom {
                        r.message = "the container's cgroup ran out of memory".into();
                    }
                }
                None => {
                    r.exit_code = 255;
                    r.finished_at = now_ns();
                    r.reason = "Error".into();
                    r.message = "the pod's monitor was lost: the exit status is unknown".into();
                }
            }
            txn.put(CONTAINERS, &rec.id, &r)?;
            Ok(Some(r))
        });
        match updated {
            Ok(Some(r)) => {
                tracing::info!(container_id = %rec.id, exit_code = r.exit_code, reason = %r.reason, "container exited");
                if r.visible() {
                    self.events.container(Type::Stopped, &r);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(container_id = %rec.id, error = %crate::error::chain(&e), "record container exit")
            }
        }
    }

    /// Kills what is left in the container's cgroup: always with `all`,
    /// else only when the entrypoint was not PID 1 of its namespace.
    pub(super) async fn kill_leftovers(&self, rec: &ContainerRecord, all: bool) {
        if !all && !rec.pid_mode.leaves_orphans() {
            return;
        }
        let Some(leaf) = rec.cgroup.clone() else {
            return;
        };
        let cg = self.cgroups.clone();
        let killed = blocking(move || {
            if cg.exists(&leaf) {
                cg.kill_all(&leaf)?;
            }
            Ok::<_, crate::cgroups::Error>(())
        })
        .await;
        if let Err(e) = killed {
            tracing::warn!(container_id = %rec.id, error = %crate::error::chain(&e), "kill the container's leftover processes");
        }
    }

    /// StopContainer: the stop signal, then SIGKILL at `timeout`. An
    /// unknown id and a stopped container succeed.
    pub async fn stop(self: &Arc<Self>, id: &str, timeout: Duration) -> Result<(), Error> {
        let Some(id) = self.resolve(id)? else {
            return Ok(());
        };
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        self.stop_locked(&id, timeout).await
    }

    pub(super) async fn stop_locked(
        self: &Arc<Self>,
        id: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let Some(rec) = self.store.get(CONTAINERS, id)? else {
            return Ok(());
        };
        match rec.state {
            State::Creating => return Ok(()),
            State::Exited => {
                self.exit_told(id).await;
                self.kill_leftovers(&rec, false).await;
                return Ok(());
            }
            State::Created if rec.init.is_none() => {
                self.end_unmade(&mut rec.clone())?;
                return Ok(());
            }
            // Never started: the blocked init only needs killing.
            State::Created => {
                self.watch_exit(&rec);
                let _ = self.engine.signal(&rec.pod_dir, id, libc::SIGKILL).await;
                if !self.wait_recorded(id, self.settings.kill_grace).await {
                    return Err(Error::Deadline(format!(
                        "container {id} did not exit within {:?} of SIGKILL",
                        self.settings.kill_grace
                    )));
                }
                return Ok(());
            }
            State::Running => {}
        }
        self.watch_exit(&rec);
        tracing::info!(container_id = %id, signal = rec.stop_signal, ?timeout, "stopping container");
        if let Err(e) = self.engine.signal(&rec.pod_dir, id, rec.stop_signal).await {
            tracing::debug!(container_id = %id, error = %crate::error::chain(&e), "stop signal");
        }
        if !timeout.is_zero() && self.wait_recorded(id, timeout).await {
            return Ok(());
        }
        // Never skipped: a PID 1 may have had no handler yet.
        if let Err(e) = self.engine.signal(&rec.pod_dir, id, libc::SIGKILL).await {
            tracing::debug!(container_id = %id, error = %crate::error::chain(&e), "SIGKILL");
        }
        self.kill_leftovers(&rec, false).await;
        if !self.wait_recorded(id, self.settings.kill_grace).await {
            return Err(Error::Deadline(format!(
                "container {id} did not exit within {:?} of SIGKILL",
                self.settings.kill_grace
            )));
        }
        Ok(())
    }

    /// Waits until the exit watcher of a container recorded EXITED has
    /// also emitted its STOPPED (it writes, then emits): what the caller
    /// does next (a pod's STOPPED, this container's DELETED) then follows
    /// that event. Bounded: the watcher neither waits nor fails between
    /// the two.
    pub(super) async fn exit_told(&self, id: &str) {
        self.wait_recorded(id, self.settings.kill_grace).await;
    }

    /// Waits (up to `limit`) for the exit watcher to record the exit.
    async fn wait_recorded(&self, id: &str, limit: Duration) -> bool {
        let rx = self.exits.lock().expect("lock poisoned").get(id).cloned();
        let Some(mut rx) = rx else {
            return true;
        };
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|done| *done)).await,
            Ok(Ok(_))
        )
    }

    /// RemoveContainer: kills a running container first, then deletes
    /// its record; the rest is released after the reply (`removal`). An
    /// unknown id succeeds.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let Some(id) = self.resolve(id)? else {
            return Ok(());
        };
        self.remove_id(&id).await
    }

    async fn remove_id(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let lock = self.lock_of(id);
        let guard = lock.lock().await;
        self.remove_locked(id).await?;
        drop(guard);
        self.forget_lock(id);
        tracing::info!(container_id = %id, "container removed");
        Ok(())
    }

    /// StopPodSandbox: stops every container of the pod, at once. The
    /// cleanups of its removed containers may still run (RemovePodSandbox
    /// waits for them): one whose monitor is shut down meanwhile only
    /// finds it gone.
    pub async fn stop_pod(self: &Arc<Self>, pod_id: &str) -> Result<(), Error> {
        let mut first_err = None;
        for rec in self.of_pod(pod_id)? {
            if let Err(e) = self.stop(&rec.id, Duration::ZERO).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// RemovePodSandbox: removes every container of the pod, and waits
    /// for their cleanups (the pod cgroup is removed next).
    pub async fn remove_pod(self: &Arc<Self>, pod_id: &str) -> Result<(), Error> {
        let mut first_err = None;
        for rec in self.of_pod(pod_id)? {
            if let Err(e) = self.remove_id(&rec.id).await {
                first_err.get_or_insert(e);
            }
        }
        self.settle_removals(Some(pod_id)).await;
        first_err.map_or(Ok(()), Err)
    }

    /// UpdateContainerResources: all or nothing, on a created or running
    /// container.
    pub async fn update_resources(
        self: &Arc<Self>,
        id: &str,
        res: Resources,
        oom_score_adj: Option<i32>,
    ) -> Result<(), Error> {
        let id = self
            .resolve(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        let rec = self
            .store
            .get(CONTAINERS, &id)?
            .ok_or_else(|| Error::NotFound(id.clone()))?
            .effective();
        if !matches!(rec.state, State::Created | State::Running) {
            return Err(Error::NotRunning {
                id,
                state: state_name(rec.state),
            });
        }
        let leaf = rec
            .cgroup
            .clone()
            .ok_or_else(|| Error::Internal(format!("container {id} has no cgroup")))?;
        let cg = self.cgroups.clone();
        let r = res.clone();
        blocking(move || cg.update(&leaf, &r)).await?;
        self.store.write(|txn| {
            if let Some(mut r) = txn.get(CONTAINERS, &id)? {
                // The device rules are the container's for life.
                let devices = r.resources.devices.take();
                r.resources = crate::cgroups::Resources { devices, ..res };
                if oom_score_adj.is_some() {
                    r.oom_score_adj = oom_score_adj;
                }
                txn.put(CONTAINERS, &id, &r)?;
            }
            Ok::<_, crate::store::Error>(())
        })?;
        tracing::info!(container_id = %id, "container resources updated");
        Ok(())
    }

    /// ReopenContainerLog: only for a running container.
    pub async fn reopen_log(&self, id: &str) -> Result<(), Error> {
        let rec = self.running(id)?;
        let id = rec.id.clone();
        if rec.log_path.is_none() {
            return Err(Error::Invalid(format!("container {id} has no log path")));
        }
        Ok(self.engine.reopen_log(&rec.pod_dir, &id).await?)
    }
}

/// The pod service's view of this one: stopping or removing a pod stops or
/// removes its containers first (their exits are recorded properly while
/// the pod's monitor still runs). Holds the service weakly: the pod
/// service keeps it.
pub struct PodHooks(pub std::sync::Weak<Containers>);

#[async_trait::async_trait]
impl crate::pod::ContainerHooks for PodHooks {
    async fn stop_all(&self, pod_id: &str) -> Result<(), String> {
        let Some(this) = self.0.upgrade() else {
            return Ok(());
        };
        this.stop_pod(pod_id)
            .await
            .map_err(|e| crate::error::chain(&e))
    }
    async fn remove_all(&self, pod_id: &str) -> Result<(), String> {
        let Some(this) = self.0.upgrade() else {
            return Ok(());
        };
        this.remove_pod(pod_id)
            .await
            .map_err(|e| crate::error::chain(&e))
    }
}

/// An OOM wake as tokio polls it.
struct WakeFd {
    wake: OomWake,
    fd: RawFd,
}

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}
