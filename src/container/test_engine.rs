//! The test double of the engine: containers are virtual (a recorded
//! call per request, exits sent by the test), exec processes are real `sh`
//! children in their own process group; and the environment the service
//! tests run in (store, fixture cgroups, a READY pod, one image).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::create::CreateRequest;
use super::engine::{self, Engine, ExecHandle, ExecLaunch, Exit, Launch};
use super::*;
use crate::monitor::PodDir;
use crate::monitor::sync::Step;
use crate::pod::record::{PodRecord, State as PodState};
use crate::pod::spec::{NamespaceMode, PodSpec};
use crate::sys::process::ProcRef;

/// Containers are virtual (their init is a pid that does not exist);
/// exec processes are real `sh -c` children in their own process group.
#[derive(Default)]
pub(super) struct Fake {
    pub(super) calls: Mutex<Vec<String>>,
    pub(super) fail_create: Mutex<Option<Step>>,
    pub(super) fail_start: Mutex<bool>,
    /// Signals the container's process ignores (a PID 1 without handler).
    pub(super) ignored: Mutex<HashSet<i32>>,
    pub(super) exits: Mutex<HashMap<String, watch::Sender<Option<Exit>>>>,
    pub(super) execs: Mutex<HashMap<String, Arc<tokio::sync::Mutex<tokio::process::Child>>>>,
    pub(super) launches: Mutex<Vec<Launch>>,
    pub(super) pgids: Mutex<HashMap<String, i32>>,
    /// When set, create waits for it (a slow mount, a client that gives up).
    pub(super) create_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// When set, remove waits for it (a cleanup still running, or cut
    /// short by a crash).
    pub(super) remove_gate: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// When set, wait answers that the monitor is gone.
    pub(super) monitor_gone: Mutex<bool>,
    /// How many more waits fail with an error other than a lost monitor
    /// (a broken connection while the monitor lives).
    pub(super) failing_waits: Mutex<u32>,
    /// The init create reports instead of [`gone_pid`] (a real process).
    pub(super) init: Mutex<Option<ProcRef>>,
}

pub(super) fn gone_pid() -> ProcRef {
    ProcRef {
        pid: i32::MAX - 7,
        start_time: 1,
    }
}

impl Fake {
    pub(super) fn call(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    pub(super) fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    pub(super) fn exit(&self, id: &str, code: i32) {
        let tx = self.exits.lock().unwrap().get(id).cloned();
        if let Some(tx) = tx {
            tx.send_if_modified(|e| {
                if e.is_some() {
                    return false;
                }
                *e = Some(Exit {
                    pid: gone_pid().pid,
                    exit_code: code,
                    signal: None,
                    finished_at: crate::pod::now_ns(),
                });
                true
            });
        }
    }
}

#[async_trait::async_trait]
impl Engine for Fake {
    async fn create(&self, _: &PodDir, l: &Launch) -> engine::Result<ProcRef> {
        self.call(format!("create {}", l.id));
        let gate = self.create_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        if let Some(step) = self.fail_create.lock().unwrap().clone() {
            return Err(engine::Error::Step {
                step,
                message: "no such file or directory".into(),
                kind: crate::error::Kind::InvalidArgument,
            });
        }
        self.launches.lock().unwrap().push(l.clone());
        self.exits
            .lock()
            .unwrap()
            .insert(l.id.clone(), watch::channel(None).0);
        Ok(self.init.lock().unwrap().unwrap_or_else(gone_pid))
    }
    async fn start(&self, _: &PodDir, id: &str) -> engine::Result<()> {
        self.call(format!("start {id}"));
        if *self.fail_start.lock().unwrap() {
            return Err(engine::Error::Step {
                step: Step::Exec,
                message: "exec: \"nope\": no such file".into(),
                kind: crate::error::Kind::InvalidArgument,
            });
        }
        Ok(())
    }
    async fn signal(&self, _: &PodDir, id: &str, signal: i32) -> engine::Result<()> {
        self.call(format!("signal {id} {signal}"));
        if !self.ignored.lock().unwrap().contains(&signal) {
            self.exit(id, 128 + signal);
        }
        Ok(())
    }
    async fn wait(&self, _: &PodDir, id: &str) -> engine::Result<Exit> {
        if *self.monitor_gone.lock().unwrap() {
            return Err(engine::Error::MonitorGone("connect: refused".into()));
        }
        self.call(format!("wait {id}"));
        {
            let mut failing = self.failing_waits.lock().unwrap();
            if *failing > 0 {
                *failing -= 1;
                return Err(engine::Error::Other("read: connection reset".into()));
            }
        }
        let rx = self.exits.lock().unwrap().get(id).map(|tx| tx.subscribe());
        let Some(mut rx) = rx else {
            return Err(engine::Error::Unknown(id.into()));
        };
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| engine::Error::Unknown(id.into()))?;
        Ok(exit.expect("checked"))
    }
    async fn reopen_log(&self, _: &PodDir, id: &str) -> engine::Result<()> {
        self.call(format!("reopen {id}"));
        Ok(())
    }
    async fn remove(&self, _: &PodDir, id: &str) -> engine::Result<()> {
        self.call(format!("remove {id}"));
        let gate = self.remove_gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        self.exits.lock().unwrap().remove(id);
        Ok(())
    }
    async fn exec(&self, _: &PodDir, l: &ExecLaunch) -> engine::Result<ExecHandle> {
        use std::process::Stdio;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&l.args[0])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| engine::Error::Other(e.to_string()))?;
        let proc = ProcRef::of(child.id().unwrap() as i32).unwrap();
        self.pgids
            .lock()
            .unwrap()
            .insert(l.exec_id.clone(), proc.pid);
        let stdout = child.stdout.take().unwrap().into_owned_fd().unwrap();
        let stderr = child.stderr.take().unwrap().into_owned_fd().unwrap();
        self.execs
            .lock()
            .unwrap()
            .insert(l.exec_id.clone(), Arc::new(tokio::sync::Mutex::new(child)));
        Ok(ExecHandle {
            proc,
            stdin: None,
            stdout,
            stderr: Some(stderr),
        })
    }
    async fn wait_exec(&self, _: &PodDir, exec_id: &str) -> engine::Result<Exit> {
        let child = self.execs.lock().unwrap().get(exec_id).cloned().unwrap();
        let mut child = child.lock().await;
        let pid = child.id().unwrap_or(0) as i32;
        let status = child.wait().await.unwrap();
        use std::os::unix::process::ExitStatusExt;
        Ok(Exit {
            pid,
            exit_code: status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
            signal: status.signal(),
            finished_at: 0,
        })
    }
    async fn kill_exec(&self, _: &PodDir, exec_id: &str) -> engine::Result<()> {
        // The child is its own group leader: its pid is the group id.
        let pgid = *self.pgids.lock().unwrap().get(exec_id).unwrap();
        assert!(pgid > 1, "never signal our own group");
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
        Ok(())
    }
}

pub(super) struct Env {
    pub(super) _tmp: tempfile::TempDir,
    pub(super) _cg_dir: tempfile::TempDir,
    pub(super) cg_root: PathBuf,
    pub(super) fake: Arc<Fake>,
    pub(super) svc: Arc<Containers>,
    pub(super) store: Arc<Store>,
    pub(super) pod: PodRecord,
}

pub(super) struct Images(pub(super) FoundImage);

impl ImageSource for Images {
    fn find(&self, name: &str) -> Result<Option<FoundImage>, crate::image::Error> {
        Ok((name == "busybox" || name == self.0.id).then(|| self.0.clone()))
    }
}

pub(super) const IMAGE_ID: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

pub(super) fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let (cg_dir, cg_root, cg) = crate::cgroups::tests::fake_v1();
    let cg = Arc::new(cg);
    let store = Arc::new(Store::open(&tmp.path().join("db")).unwrap());
    let pod_id = crate::ids::new_id();
    let dir = PodDir::new(&tmp.path().join("state"), &pod_id);
    std::fs::create_dir_all(dir.exits()).unwrap();
    let pod_cg = cg.pod_path("", &pod_id).unwrap();
    cg.create(&pod_cg, &Default::default()).unwrap();
    let pod = PodRecord {
        id: pod_id.clone(),
        spec: PodSpec {
            name: "p".into(),
            log_directory: tmp.path().join("logs").display().to_string(),
            ..Default::default()
        },
        created_at: 1,
        state: PodState::Ready,
        reason: String::new(),
        claimed: true,
        finished_at: 1,
        dir,
        netns: None,
        ipcns: None,
        utsns: None,
        shm: None,
        cgroup: Some(pod_cg),
        cgroup_created: true,
        init_cgroup: None,
        monitor: None,
        init: None,
        network: None,
        boot_id: String::new(),
    };
    store.put(crate::pod::record::PODS, &pod_id, &pod).unwrap();
    let layer = tmp.path().join("layers/1");
    std::fs::create_dir_all(&layer).unwrap();
    let images = Arc::new(Images(FoundImage {
        id: IMAGE_ID.into(),
        config: spec::ImageConfig {
            cmd: vec!["sh".into()],
            stop_signal: "SIGINT".into(),
            ..Default::default()
        },
        layers: vec![layer],
    }));
    let fake = Arc::new(Fake::default());
    let settings = Settings {
        dir: tmp.path().join("containers"),
        unclaimed_ttl: Duration::from_secs(600),
        kill_grace: Duration::from_secs(2),
        exec_drain: Duration::from_millis(300),
    };
    let svc = Arc::new(Containers::new(
        store.clone(),
        images,
        cg,
        fake.clone(),
        Arc::new(crate::events::Events::new(store.clone(), 64)),
        settings,
    ));
    Env {
        _tmp: tmp,
        _cg_dir: cg_dir,
        cg_root,
        fake,
        svc,
        store,
        pod,
    }
}

impl Env {
    pub(super) fn req(&self, name: &str, attempt: u32) -> CreateRequest {
        CreateRequest {
            pod_id: self.pod.id.clone(),
            config: spec::ContainerConfig {
                name: name.into(),
                ..Default::default()
            },
            attempt,
            image: "busybox".into(),
            log_path: format!("{name}/{attempt}.log"),
            labels: [("app".to_string(), name.to_string())].into(),
            stdin_once: false,
            stop_signal: None,
            pid_mode: NamespaceMode::Container,
            target_id: String::new(),
        }
    }

    pub(super) fn cgroup_dir(&self, id: &str) -> PathBuf {
        let pod = self.pod.cgroup.clone().unwrap();
        let leaf = self.svc.cgroups.container_path(&pod, id).unwrap();
        self.cg_root
            .join("memory")
            .join(leaf.path.trim_start_matches('/'))
    }

    pub(super) async fn running(&self, name: &str) -> String {
        let id = self.svc.create(self.req(name, 0)).await.unwrap();
        self.svc.start(&id).await.unwrap();
        id
    }
}
