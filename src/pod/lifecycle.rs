//! Creating, stopping and removing a pod.
//!
//! RunPodSandbox runs as a detached task, so a client that gives up (its
//! deadline, a cancel) never interrupts it halfway: the finished pod stays
//! unclaimed, invisible to List/Status, until a retry with the same
//! name/namespace/uid/attempt claims it or the reaper removes it. A retry
//! that arrives while the first call still runs waits for its outcome.
//!
//! The steps, each named in the error when it fails:
//! 1. record intent   2. create pod directory   3. create pod cgroup
//! 4. start pod monitor (namespaces, hostname, sysctls, pod init, /dev/shm)
//! 5. set up pod network   6. write resolv.conf and hostname   7. record pod

use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::watch;

use super::record::{PODS, PodRecord, State};
use super::spec::PodSpec;
use super::{Error, Outcome, Pods, now_ns};
use crate::error::{Classify, Kind};
use crate::linux::mount::{Host, detach_all};
use crate::linux::ns::{self, Kind as Ns};
use crate::linux::process::ProcRef;
use crate::monitor::{self, PodDir, client};

/// Test hook: the env var naming a step before which RunPodSandbox pauses
/// (e2e tests kill the daemon there, or let a client's deadline pass), for
/// `CRIUS_TEST_PAUSE_SECS` seconds (default 3600). Never set in production.
pub const TEST_PAUSE_ENV: &str = "CRIUS_TEST_PAUSE_AT";
pub const TEST_PAUSE_SECS_ENV: &str = "CRIUS_TEST_PAUSE_SECS";

async fn test_pause(step: &str) {
    if std::env::var(TEST_PAUSE_ENV).is_ok_and(|s| s == step) {
        let secs = std::env::var(TEST_PAUSE_SECS_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3600);
        tracing::warn!(step, secs, "test hook: pausing before this step");
        tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
    }
}

fn step_err<E>(step: &str) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Classify + Send + Sync + 'static,
{
    let step = step.to_string();
    move |e| Error::Step {
        step,
        kind: e.kind(),
        source: Box::new(e),
    }
}

impl Pods {
    /// RunPodSandbox: the pod id.
    pub async fn run(self: &Arc<Self>, spec: PodSpec) -> Result<String, Error> {
        spec.validate()?;
        let key = spec.key();
        let mut rx = {
            let mut creating = self.creating.lock().expect("lock poisoned");
            match creating.get(&key) {
                Some(rx) => {
                    tracing::info!(name = %key.name, "a retry waits for the creation under way");
                    rx.clone()
                }
                None => {
                    if let Some(existing) = self.find_by_key(&key)? {
                        if !existing.claimed && existing.state == State::Ready {
                            tracing::info!(pod_id = %existing.id, "a retry claims the pod its first call created");
                            return self.claim(&existing.id);
                        }
                        return Err(Error::AlreadyExists {
                            name: key.name,
                            namespace: key.namespace,
                            uid: key.uid,
                            attempt: key.attempt,
                            id: existing.id,
                        });
                    }
                    let (tx, rx) = watch::channel(None);
                    creating.insert(key.clone(), rx.clone());
                    let this = self.clone();
                    let id = crate::ids::new_id();
                    tracing::Span::current().record("pod_id", id.as_str());
                    tokio::spawn(async move {
                        let outcome: Outcome = this.create(id, spec).await.map_err(Arc::new);
                        this.creating.lock().expect("lock poisoned").remove(&key);
                        let _ = tx.send(Some(outcome));
                    });
                    rx
                }
            }
        };
        let outcome = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Invalid("pod creation was abandoned".into()))?
            .clone()
            .expect("checked by wait_for");
        match outcome {
            Ok(id) => self.claim(&id),
            Err(e) => Err(Error::Shared(e)),
        }
    }

    fn find_by_key(&self, key: &super::spec::Key) -> Result<Option<PodRecord>, Error> {
        Ok(self
            .store
            .list(PODS)?
            .into_iter()
            .map(|(_, r)| r)
            .find(|r| r.state != State::Creating && &r.spec.key() == key))
    }

    /// Hands a finished pod to its caller: from now on List/Status show it.
    fn claim(&self, id: &str) -> Result<String, Error> {
        self.store.write(|txn| {
            let Some(mut rec) = txn.get(PODS, id)? else {
                return Err(Error::NotFound(id.to_string()));
            };
            if !rec.claimed {
                rec.claimed = true;
                txn.put(PODS, id, &rec)?;
            }
            Ok(id.to_string())
        })
    }

    /// The steps of RunPodSandbox; on failure everything done is undone.
    async fn create(self: &Arc<Self>, id: String, spec: PodSpec) -> Result<String, Error> {
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        let dir = PodDir::new(&self.settings.state, &id);
        let ns_path = |kind: Ns, own: bool| own.then(|| dir.ns(kind));
        let mut rec = PodRecord {
            id: id.clone(),
            created_at: now_ns(),
            state: State::Creating,
            reason: String::new(),
            claimed: false,
            finished_at: 0,
            netns: ns_path(Ns::Net, !spec.host_network()),
            ipcns: ns_path(Ns::Ipc, !spec.host_ipc()),
            // Host-network pods use the host's UTS namespace too.
            utsns: ns_path(Ns::Uts, !spec.host_network()),
            shm: (!spec.host_ipc()).then(|| dir.shm()),
            // INTEGRATION(cgroups): the pod cgroup path, decided here so the
            // intent names it: `cgroups::pod_path(parent, &id)` with parent =
            // spec.cgroup_parent or settings.default_cgroup_parent.
            cgroup: None,
            cgroup_created: false,
            monitor: None,
            init: None,
            network: None,
            boot_id: self.boot_id.clone(),
            dir: dir.clone(),
            spec,
        };
        let result = self.create_steps(&mut rec).await;
        match result {
            Ok(()) => {
                tracing::info!(pod_id = %id, name = %rec.spec.name, "pod sandbox ready");
                Ok(id)
            }
            Err(err) => {
                tracing::warn!(pod_id = %id, error = %crate::error::chain(&err), "pod sandbox creation failed; rolling back");
                self.teardown(&rec).await;
                self.remove_files(&rec);
                if let Err(e) = self.store.delete(PODS, &id) {
                    tracing::error!(pod_id = %id, error = %crate::error::chain(&e), "delete pod intent");
                }
                drop(_guard);
                self.forget_lock(&id);
                Err(err)
            }
        }
    }

    async fn create_steps(self: &Arc<Self>, rec: &mut PodRecord) -> Result<(), Error> {
        // 1. The intent, before any side effect on the host.
        test_pause("record intent").await;
        self.store
            .put(PODS, &rec.id, rec)
            .map_err(step_err("record intent"))?;

        // 2. The pod's directory under the state dir.
        test_pause("create pod directory").await;
        std::fs::create_dir_all(rec.dir.exits()).map_err(|e| Error::Step {
            step: "create pod directory".into(),
            kind: Kind::Internal,
            source: format!("create {}: {e}", rec.dir.dir.display()).into(),
        })?;

        // 3. INTEGRATION(cgroups): create the pod cgroup with the pod's
        //    resources/overhead (`rec.cgroup_created = cgroups.create(..)`),
        //    and persist the record before the next step.
        test_pause("create pod cgroup").await;

        // 4. The monitor: namespaces, sysctls, pod init, /dev/shm.
        test_pause("start pod monitor").await;
        let spec = &rec.spec;
        let mut namespaces = Vec::new();
        if rec.netns.is_some() {
            namespaces.push(Ns::Net);
        }
        if rec.ipcns.is_some() {
            namespaces.push(Ns::Ipc);
        }
        if rec.utsns.is_some() {
            namespaces.push(Ns::Uts);
        }
        let mspec = monitor::Spec {
            pod_id: rec.id.clone(),
            ns_root: self.settings.state.join("ns"),
            namespaces,
            pid_namespace: spec.pod_pid_namespace(),
            hostname: (!spec.hostname.is_empty()).then(|| spec.hostname.clone()),
            sysctls: spec
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            shm_size: rec.shm.is_some().then_some(self.settings.shm_size),
        };
        let started = client::start(
            &self.settings.exe,
            &rec.dir,
            &mspec,
            self.settings.setup_timeout,
        )
        .await
        .map_err(|e| match e {
            client::Error::Setup { ref step, .. } => {
                let step = step.clone();
                step_err(&step)(e)
            }
            e => step_err("start pod monitor")(e),
        })?;
        rec.monitor = Some(started.monitor);
        rec.init = started.init;
        self.watch(&rec.id, started.monitor);
        self.store
            .put(PODS, &rec.id, rec)
            .map_err(step_err("record pod monitor"))?;

        // 5. INTEGRATION(network): CNI ADD unless the pod uses the host
        //    network: `network.setup(&PodNetwork{..})` -> rec.network, put.
        test_pause("set up pod network").await;

        // 6. INTEGRATION(network): dns::write_resolv_conf and
        //    dns::write_hostname into rec.dir.
        test_pause("write resolv.conf and hostname").await;

        // 7. Ready, but unclaimed until the caller (or a retry) takes it.
        test_pause("record pod").await;
        rec.state = State::Ready;
        rec.finished_at = now_ns();
        self.store
            .put(PODS, &rec.id, rec)
            .map_err(step_err("record pod"))?;
        Ok(())
    }

    /// StopPodSandbox: kills the pod's processes and releases its network
    /// and namespaces. An unknown id succeeds.
    pub async fn stop(self: &Arc<Self>, id: &str) -> Result<(), Error> {
        let Some(id) = self.resolve(id)? else {
            return Ok(());
        };
        let lock = self.lock_of(&id);
        let _guard = lock.lock().await;
        self.stop_locked(&id).await
    }

    async fn stop_locked(&self, id: &str) -> Result<(), Error> {
        let Some(mut rec) = self.store.get(PODS, id)? else {
            return Ok(());
        };
        if rec.state == State::Ready {
            // NOTREADY first: the watcher then knows the monitor's end is
            // expected.
            rec.state = State::NotReady;
            rec.reason = "stopped".into();
            self.store.put(PODS, id, &rec)?;
        }
        self.teardown(&rec).await;
        rec.monitor = None;
        self.store.put(PODS, id, &rec)?;
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
        self.stop_locked(&id).await?;
        if let Some(rec) = self.store.get(PODS, &id)? {
            self.remove_files(&rec);
        }
        self.store.delete(PODS, &id)?;
        drop(guard);
        self.forget_lock(&id);
        tracing::info!(pod_id = %id, "pod sandbox removed");
        Ok(())
    }

    /// Stops what runs and releases what is held (network, pins, /dev/shm),
    /// from whatever state the record is in. Idempotent; errors are logged.
    pub(super) async fn teardown(&self, rec: &PodRecord) {
        kill_processes(rec).await;
        // INTEGRATION(network): CNI DEL with rec.network's cached result
        // (also when rec.network is None but the intent said CNI: DEL is
        // idempotent), before the netns pin goes.
        let m = Host;
        for pin in [&rec.netns, &rec.ipcns, &rec.utsns].into_iter().flatten() {
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
    }

    /// Removes the pod's cgroup and directories (after [`Self::teardown`]).
    pub(super) fn remove_files(&self, rec: &PodRecord) {
        // INTEGRATION(cgroups): remove rec.cgroup when rec.cgroup_created.
        let _ = detach_all(&Host, &rec.dir.shm());
        if let Err(e) = std::fs::remove_dir_all(&rec.dir.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(pod_id = %rec.id, error = %e, "remove pod directory");
        }
        let _ = std::fs::remove_dir(&rec.dir.ns_dir);
    }

    /// Watches the pod's monitor through a pidfd: when it ends, reaps it (if
    /// it is our child) and, unless the pod was being stopped, kills the
    /// pod's processes and marks it NOTREADY.
    pub(super) fn watch(self: &Arc<Self>, id: &str, monitor: ProcRef) {
        let Some(pidfd) = monitor.open() else {
            let this = self.clone();
            let id = id.to_string();
            tokio::spawn(async move { this.monitor_lost(&id, monitor).await });
            return;
        };
        let this = self.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            pidfd.exited().await;
            this.monitor_lost(&id, monitor).await;
        });
    }

    async fn monitor_lost(&self, id: &str, monitor: ProcRef) {
        let lock = self.lock_of(id);
        let _guard = lock.lock().await;
        let Ok(Some(mut rec)) = self.store.get(PODS, id) else {
            return;
        };
        if rec.monitor != Some(monitor) || rec.state != State::Ready {
            return; // stopped, removed or being created: expected
        }
        tracing::warn!(pod_id = %id, pid = monitor.pid, "pod monitor died; killing the pod's processes");
        kill_processes(&rec).await;
        rec.state = State::NotReady;
        rec.reason = format!("the pod's monitor (pid {}) was lost", monitor.pid);
        if let Err(e) = self.store.put(PODS, id, &rec) {
            tracing::error!(pod_id = %id, error = %crate::error::chain(&e), "record lost monitor");
        }
    }
}

/// Kills the monitor (asking it first, so it reaps and records its
/// children) and every process of the pod.
async fn kill_processes(rec: &PodRecord) {
    let monitor = rec.monitor.or_else(|| read_pid_file(&rec.dir));
    if let Some(m) = monitor
        && m.alive()
    {
        if let Err(e) = client::shutdown(&rec.dir).await {
            tracing::debug!(pod_id = %rec.id, error = %crate::error::chain(&e), "monitor shutdown failed; killing it");
        }
        if let Some(fd) = m.open() {
            let _ = fd.signal(Signal::SIGKILL);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while m.alive() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
    if let Some(init) = rec.init {
        init.signal(Signal::SIGKILL);
    }
    // INTEGRATION(cgroups): kill_all on the pod cgroup (and the init's leaf).
}

/// The monitor's own record of itself, for when the daemon died before
/// storing it.
pub(super) fn read_pid_file(dir: &PodDir) -> Option<ProcRef> {
    let text = std::fs::read(dir.pid_file()).ok()?;
    serde_json::from_slice(&text).ok()
}
