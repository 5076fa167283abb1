//! The test double of the pod engine: a pod's monitor is a real `sleep`
//! child (so pidfds, liveness and the monitors cgroup see a real process),
//! the pod init is absent, calls are recorded, failures and a slow start
//! are steered by the test; and the environment pod tests run in (store,
//! fixture cgroups, a network without any CNI config).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::engine::{self, Engine, Spec, Started};
use super::*;
use crate::error::Kind;
use crate::monitor::PodDir;
use crate::monitor::sync::Step;
use crate::sys::process::ProcRef;

#[derive(Default)]
pub(super) struct Fake {
    calls: Mutex<Vec<String>>,
    /// When set, start fails at this step with this kind.
    pub(super) fail_start: Mutex<Option<(Step, Kind)>>,
    /// When set, start waits for it (a slow monitor, a caller that gives up).
    pub(super) gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// The running monitors, by pod id.
    monitors: Mutex<HashMap<String, std::process::Child>>,
}

impl Fake {
    fn call(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }

    pub(super) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// The monitor of pod `id`, while it runs.
    pub(super) fn monitor(&self, id: &str) -> Option<ProcRef> {
        let mut monitors = self.monitors.lock().unwrap();
        let child = monitors.get_mut(id)?;
        match child.try_wait() {
            Ok(None) => ProcRef::of(child.id() as i32),
            _ => None,
        }
    }

    /// Kills a monitor behind the service's back (a lost monitor).
    pub(super) fn kill_monitor(&self, id: &str) {
        if let Some(mut child) = self.monitors.lock().unwrap().remove(id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn pod_id(dir: &PodDir) -> String {
        dir.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        for (_, mut child) in self.monitors.lock().unwrap().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[async_trait::async_trait]
impl Engine for Fake {
    async fn start(&self, dir: &PodDir, spec: &Spec) -> engine::Result<Started> {
        self.call(format!("start {}", spec.pod_id));
        let gate = self.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        if let Some((step, kind)) = self.fail_start.lock().unwrap().clone() {
            return Err(engine::Error::Step {
                step,
                message: "refused by the fake".into(),
                kind,
            });
        }
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .map_err(|e| engine::Error::Monitor(e.to_string()))?;
        let monitor = ProcRef::of(child.id() as i32).expect("just started");
        self.monitors
            .lock()
            .unwrap()
            .insert(Fake::pod_id(dir), child);
        Ok(Started {
            monitor,
            init: None,
        })
    }

    async fn attach(&self, dir: &PodDir) -> engine::Result<ProcRef> {
        self.monitor(&Fake::pod_id(dir))
            .ok_or_else(|| engine::Error::Monitor("connection refused".into()))
    }

    async fn stop(&self, dir: &PodDir, _monitor: Option<ProcRef>) {
        let id = Fake::pod_id(dir);
        self.call(format!("stop {id}"));
        self.kill_monitor(&id);
    }

    async fn exited(&self, monitor: ProcRef) {
        while monitor.alive() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub(super) struct Env {
    pub(super) tmp: tempfile::TempDir,
    _cg_dir: tempfile::TempDir,
    pub(super) cg_root: PathBuf,
    pub(super) fake: Arc<Fake>,
    pub(super) pods: Arc<Pods>,
    pub(super) store: Arc<Store>,
}

pub(super) fn env(unclaimed_ttl: Duration) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let (cg_dir, cg_root, cg) = crate::cgroups::tests::fake_v1();
    let store = Arc::new(Store::open(&tmp.path().join("db")).unwrap());
    let state = tmp.path().join("state");
    let confd = tmp.path().join("net.d");
    std::fs::create_dir_all(&confd).unwrap();
    let network = Network::new(
        &crate::config::NetworkConfig {
            conf_dir: confd,
            bin_dirs: vec![tmp.path().join("no-plugins")],
            default_network: false,
            default_subnet: "10.77.0.0/16".into(),
            default_bridge: "crt0".into(),
            plugin_timeout_secs: 2,
        },
        &state,
    );
    let fake = Arc::new(Fake::default());
    let settings = Settings {
        state,
        exe: PathBuf::from("/nonexistent/crius"),
        shm_size: 1 << 20,
        unclaimed_ttl,
        setup_timeout: Duration::from_secs(5),
    };
    let pods = Arc::new(
        Pods::new(
            store.clone(),
            Arc::new(network),
            Arc::new(cg),
            fake.clone(),
            Arc::new(crate::events::Events::new(store.clone(), 64)),
            settings,
        )
        .unwrap(),
    );
    Env {
        tmp,
        _cg_dir: cg_dir,
        cg_root,
        fake,
        pods,
        store,
    }
}

impl Env {
    /// A pod spec in the host's network (no CNI) unless `own_network`.
    pub(super) fn spec(&self, name: &str, own_network: bool) -> PodSpec {
        let mut spec = PodSpec {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "test".into(),
            ..Default::default()
        };
        if !own_network {
            spec.namespaces.network = spec::NamespaceMode::Node;
        }
        spec
    }

    /// The pod cgroup's directory in the fixture's memory hierarchy.
    pub(super) fn cgroup_dir(&self, id: &str) -> PathBuf {
        let path = self.pods.cgroups.pod_path("", id).unwrap();
        self.cg_root
            .join("memory")
            .join(path.path.trim_start_matches('/'))
    }

    pub(super) fn pod_dir(&self, id: &str) -> PathBuf {
        self.pods.settings.state.join("pods").join(id)
    }

    /// Nothing of pod `id` is left: record, directory, cgroup, monitor.
    pub(super) fn assert_gone(&self, id: &str) {
        assert_eq!(self.store.get(record::PODS, id).unwrap(), None, "record");
        assert!(!self.pod_dir(id).exists(), "pod directory");
        assert!(!self.cgroup_dir(id).exists(), "pod cgroup");
        assert_eq!(self.fake.monitor(id), None, "monitor");
    }
}
