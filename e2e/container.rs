//! Containers end to end: busybox from the local test registry in pods of
//! a real daemon (the test's own CNI config, never /etc/cni). Lifecycle,
//! logs, ExecSync (output, timeout that leaves no process), stop with
//! SIGKILL escalation, names per attempt, bad input leaving nothing,
//! RemoveImage refused while in use, OOM, PID modes, kill -9 restart.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crius::cri::proto::*;
use tonic::Code;

use crate::cgroup;
use crate::harness::TestDaemon;
use crate::pod::{self, Client};
use crate::registry::Registry;
use crate::require_registry_tools;

/// A daemon with busybox pulled; the registry stays up while it lives.
pub struct Setup {
    pub d: TestDaemon,
    /// The registry the test images came from (tests push more to it).
    pub reg: Registry,
    pub busybox: String,
    pub image_id: String,
}

async fn setup() -> Setup {
    setup_with_env(&[]).await
}

/// A daemon (with test-hook environment) and busybox pulled into it.
pub async fn setup_with_env(env: &[(&str, &str)]) -> Setup {
    setup_with("", env).await
}

/// Like [`setup_with_env`], with more config (TOML) for the daemon.
pub async fn setup_with(extra_toml: &str, env: &[(&str, &str)]) -> Setup {
    let reg = Registry::with_test_images(None);
    let d = crate::harness::start_with_env(
        &format!("[registry]\nconfig_path = \"/nonexistent/crius-e2e-certs.d\"\n{extra_toml}"),
        env,
    )
    .await;
    let busybox = reg.image("busybox");
    let image_id = pull_into(&d, &busybox).await;
    Setup {
        d,
        reg,
        busybox,
        image_id,
    }
}

impl Setup {
    /// Pulls `image` into the daemon; its image id.
    pub async fn pull(&self, image: &str) -> String {
        pull_into(&self.d, image).await
    }
}

async fn pull_into(d: &TestDaemon, image: &str) -> String {
    d.images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref
}

pub fn pod_config(name: &str, pid: NamespaceMode, logs: &Path) -> PodSandboxConfig {
    let mut c = pod::with_namespaces(
        pod::config(name),
        NamespaceMode::Pod,
        pid,
        NamespaceMode::Pod,
    );
    c.log_directory = logs.display().to_string();
    c
}

pub fn container(name: &str, image: &str, cmd: &[&str], pid: NamespaceMode) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        labels: HashMap::from([("name".into(), name.into())]),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption {
                    pid: pid as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Adds capabilities (names as the CRI takes them) to a container built by
/// [`container`].
pub fn add_capabilities(c: &mut ContainerConfig, caps: &[&str]) {
    let sc = c
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default);
    sc.capabilities
        .get_or_insert_with(Default::default)
        .add_capabilities
        .extend(caps.iter().map(|c| c.to_string()));
}

pub async fn create(
    rt: &mut Client,
    pod: &str,
    c: ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod.into(),
        config: Some(c),
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// The verbose status of created container `id` once its init is made
/// (after CreateContainer answered): it then shows the init's pid.
pub async fn made(rt: &mut Client, id: &str) -> (ContainerStatus, serde_json::Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, info) = status(rt, id).await;
        if info["pid"].is_i64() {
            return (st, info);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no init made for {id}: {info}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The refusal of container `c`: CreateContainer's error, or, for what
/// only making its init finds (that runs after CreateContainer answered),
/// StartContainer's, after which the container, ended with
/// ContainerCannotRun, is removed. Panics if the container starts.
pub async fn refused(rt: &mut Client, pod: &str, c: ContainerConfig) -> tonic::Status {
    let id = match create(rt, pod, c).await {
        Ok(id) => id,
        Err(e) => return e,
    };
    let e = rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("the container started");
    let (st, _) = status(rt, &id).await;
    assert_eq!(st.reason, "ContainerCannotRun", "{st:?}");
    rt.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    e
}

pub async fn start(rt: &mut Client, id: &str) {
    rt.start_container(StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap();
}

/// Creates and starts a container `name` of `image` that sleeps (in its
/// own PID namespace); its id.
pub async fn sleeping(rt: &mut Client, pod: &str, image: &str, name: &str) -> String {
    let c = container(name, image, &["sleep", "1000"], NamespaceMode::Container);
    let id = create(rt, pod, c).await.unwrap();
    start(rt, &id).await;
    id
}

pub async fn status(rt: &mut Client, id: &str) -> (ContainerStatus, serde_json::Value) {
    let r = rt
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    (
        r.status.unwrap(),
        serde_json::from_str(&r.info["info"]).unwrap(),
    )
}

pub async fn exec(
    rt: &mut Client,
    id: &str,
    cmd: &[&str],
    timeout: i64,
) -> Result<ExecSyncResponse, tonic::Status> {
    rt.exec_sync(ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    })
    .await
    .map(|r| r.into_inner())
}

pub async fn wait_state(
    rt: &mut Client,
    id: &str,
    state: ContainerState,
    limit: Duration,
) -> ContainerStatus {
    let deadline = Instant::now() + limit;
    loop {
        let (s, _) = status(rt, id).await;
        if s.state == state as i32 {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "container {id} never reached {state:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn container_lifecycle_logs_exec_stop_remove() {
    require_registry_tools!();
    let s = setup().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("life", NamespaceMode::Container, &logs))
        .await
        .unwrap();

    // Bad input leaves nothing behind.
    let err = create(
        &mut rt,
        &pod,
        container("x", "nothere:1", &["true"], NamespaceMode::Container),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = create(
        &mut rt,
        "0000",
        container("x", &s.busybox, &["true"], NamespaceMode::Container),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = create(
        &mut rt,
        &pod,
        container(
            "x",
            &s.busybox,
            &["/no/such/binary"],
            NamespaceMode::Container,
        ),
    )
    .await;
    if let Ok(id) = &err {
        // The entrypoint is checked at execve: StartContainer says so.
        let e = rt
            .start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_err();
        assert!(
            e.message().contains("/no/such/binary") || e.message().contains("exec"),
            "{e:?}"
        );
        let (st, _) = status(&mut rt, id).await;
        assert_eq!(st.reason, "ContainerCannotRun");
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    }

    let c = container(
        "web",
        &s.busybox,
        &["sh", "-c", "echo hello; echo oops >&2; exec sleep 1000"],
        NamespaceMode::Container,
    );
    let id = create(&mut rt, &pod, c.clone()).await.unwrap();
    let dup = create(&mut rt, &pod, c.clone()).await.unwrap_err();
    assert_eq!(dup.code(), Code::AlreadyExists);
    let mut next = c.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    next.log_path = "web1.log".into();
    let id1 = create(&mut rt, &pod, next).await.unwrap();

    let (st, _) = status(&mut rt, &id).await;
    assert_eq!(st.state, ContainerState::ContainerCreated as i32);
    assert_eq!(st.image_id, s.image_id);
    assert_eq!(st.image_ref, s.image_id);
    start(&mut rt, &id).await;
    let (st, info) = status(&mut rt, &id).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    assert!(st.started_at > 0);
    assert!(info["pid"].as_i64().unwrap() > 1);
    assert!(info["runtimeSpec"]["process"]["args"].is_array());

    // The log in CRI format.
    let log = logs.join("web.log");
    crate::pod::wait_for("log lines", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("stderr F oops"))
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(" stdout F hello\n"), "{text}");

    // List with filters.
    let list = rt
        .list_containers(ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.clone(),
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(
        list.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        vec![id.clone()]
    );

    // ExecSync: output and exit code; PID 1 is the entrypoint.
    let out = exec(
        &mut rt,
        &id,
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
        0,
    )
    .await
    .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice(), out.exit_code),
        (&b"out\n"[..], &b"err\n"[..], 7)
    );
    let out = exec(&mut rt, &id, &["cat", "/proc/1/cmdline"], 0)
        .await
        .unwrap();
    assert!(
        out.stdout.starts_with(b"sleep\0"),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A background child holding stdout does not hold the call.
    let t = Instant::now();
    let out = exec(&mut rt, &id, &["sh", "-c", "sleep 30 & echo bg"], 0)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"bg\n");
    assert!(t.elapsed() < Duration::from_secs(10));
    // The timeout kills the exec's process group and answers DEADLINE_EXCEEDED.
    let cgroup = info["cgroupPath"].as_str().unwrap().to_string();
    let pid = info["pid"].as_i64().unwrap() as i32;
    assert_eq!(
        cgroup::of_pid(pid, "pids").as_deref(),
        Some(cgroup.as_str()),
        "the container's process is in its cgroup"
    );
    let before = cgroup::procs(&cgroup).len();
    assert!(before >= 1, "{cgroup} lists its process");
    let t = Instant::now();
    let err = exec(&mut rt, &id, &["sh", "-c", "sleep 100 & sleep 100"], 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(t.elapsed() < Duration::from_secs(8));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        cgroup::procs(&cgroup).len() <= before,
        "the timed-out exec left processes"
    );

    // Stop: sleep as PID 1 has no SIGTERM handler: SIGKILL at the timeout.
    let t = Instant::now();
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 2,
    })
    .await
    .unwrap();
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    let (st, _) = status(&mut rt, &id).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 137);
    assert_eq!(st.reason, "Error");
    assert!(st.finished_at >= st.started_at);
    let err = exec(&mut rt, &id, &["true"], 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = rt
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();

    // RemoveImage is refused while a container uses the image.
    let err =
        s.d.images()
            .await
            .remove_image(RemoveImageRequest {
                image: Some(ImageSpec {
                    image: s.busybox.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    for c in [&id, &id1] {
        rt.remove_container(RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
        rt.remove_container(RemoveContainerRequest {
            container_id: c.clone(),
        })
        .await
        .unwrap();
        let err = rt
            .container_status(ContainerStatusRequest {
                container_id: c.clone(),
                verbose: false,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    // The directories go into the trash after the reply (container::removal).
    let left = || -> Vec<_> {
        std::fs::read_dir(s.d.root.join("containers"))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default()
    };
    pod::wait_for("the container dirs to go", Duration::from_secs(10), || {
        left().is_empty()
    })
    .await;
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn container_pid_modes_share_pod_namespaces() {
    require_registry_tools!();
    let s = setup().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("modes", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let sleeper = |name: &str, mode| container(name, &s.busybox, &["sleep", "1000"], mode);
    let a = create(&mut rt, &pod, sleeper("a", NamespaceMode::Container))
        .await
        .unwrap();
    let b = create(&mut rt, &pod, sleeper("b", NamespaceMode::Pod))
        .await
        .unwrap();
    start(&mut rt, &a).await;
    start(&mut rt, &b).await;
    let ns = |pid: i64, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let (_, ia) = status(&mut rt, &a).await;
    let (_, ib) = status(&mut rt, &b).await;
    let (pa, pb) = (ia["pid"].as_i64().unwrap(), ib["pid"].as_i64().unwrap());
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(ns(pa, kind), ns(pb, kind), "{kind} shared");
    }
    assert_ne!(ns(pa, "mnt"), ns(pb, "mnt"));
    assert_ne!(ns(pa, "pid"), ns(pb, "pid"));
    let one = exec(&mut rt, &a, &["cat", "/proc/1/cmdline"], 0)
        .await
        .unwrap();
    assert!(
        one.stdout.starts_with(b"sleep\0"),
        "CONTAINER: PID 1 is the entrypoint"
    );
    let one = exec(&mut rt, &b, &["cat", "/proc/1/cmdline"], 0)
        .await
        .unwrap();
    assert!(
        !one.stdout.starts_with(b"sleep\0"),
        "POD: PID 1 is the pod init"
    );
    // POD mode: a child left behind is killed at stop through the cgroup.
    let cgroup = ib["cgroupPath"].as_str().unwrap().to_string();
    exec(
        &mut rt,
        &b,
        &["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 &"],
        0,
    )
    .await
    .unwrap();
    assert!(
        cgroup::procs(&cgroup).len() >= 2,
        "the entrypoint and the leftover in {cgroup}"
    );
    rt.stop_container(StopContainerRequest {
        container_id: b.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    // StopContainer returns once the cgroup's processes are gone.
    assert!(
        cgroup::procs(&cgroup).is_empty(),
        "processes left in a stopped POD-mode container"
    );
    // StopPodSandbox stops the containers; RemovePodSandbox removes them.
    pod::stop_remove(&mut rt, &pod).await;
    let left = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn container_over_its_memory_limit_is_oom_killed() {
    require_registry_tools!();
    let s = setup().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("oom", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let mut c = container(
        "hog",
        &s.busybox,
        &["sh", "-c", "tail /dev/zero"],
        NamespaceMode::Container,
    );
    c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let id = create(&mut rt, &pod, c).await.unwrap();
    // The cgroup is made after CreateContainer answers, before the init.
    let (_, info) = made(&mut rt, &id).await;
    let cgroup = info["cgroupPath"].as_str().unwrap().to_string();
    assert_eq!(cgroup::memory_limit(&cgroup), Some(32 << 20), "{cgroup}");
    start(&mut rt, &id).await;
    let st = wait_state(
        &mut rt,
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await;
    // The exit file may show first; the watcher adds the OOM reason.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut st = st;
    while st.reason != "OOMKilled" && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        st = status(&mut rt, &id).await.0;
    }
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (137, "OOMKilled"),
        "{st:?}"
    );
    pod::stop_remove(&mut rt, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_a_daemon_kill() {
    require_registry_tools!();
    let mut s = setup().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("restart", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    let long = create(
        &mut rt,
        &pod,
        container(
            "long",
            &s.busybox,
            &["sleep", "1000"],
            NamespaceMode::Container,
        ),
    )
    .await
    .unwrap();
    let short = create(
        &mut rt,
        &pod,
        container(
            "short",
            &s.busybox,
            &["sh", "-c", "sleep 2; exit 3"],
            NamespaceMode::Container,
        ),
    )
    .await
    .unwrap();
    start(&mut rt, &long).await;
    start(&mut rt, &short).await;
    let (_, info) = status(&mut rt, &long).await;
    let pid = info["pid"].as_i64().unwrap() as i32;
    drop(rt);
    s.d.signal_and_wait(9, Duration::from_secs(5))
        .expect("crius died");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "container died with crius"
    );
    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    let (st, _) = status(&mut rt, &long).await;
    assert_eq!(st.state, ContainerState::ContainerRunning as i32);
    let (st, _) = status(&mut rt, &short).await;
    assert_eq!(st.state, ContainerState::ContainerExited as i32);
    assert_eq!(st.exit_code, 3);
    // The exit watcher works again after the restart: stop is noticed.
    rt.stop_container(StopContainerRequest {
        container_id: long.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let (st, _) = status(&mut rt, &long).await;
    assert_eq!(
        (st.state, st.exit_code),
        (ContainerState::ContainerExited as i32, 137)
    );
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

/// Every container ListContainers shows.
async fn list_all(rt: &mut Client) -> Vec<Container> {
    rt.list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
}

/// RemoveContainer replies once the record is deleted; the monitor's
/// forgetting, the cgroup and the directory follow (container::removal).
/// A daemon killed in between (the test hook pauses there) leaves them,
/// and the next start releases them: nothing leaks, and the removed
/// container never comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_removal_cut_short_after_its_reply_is_finished_by_the_next_start() {
    require_registry_tools!();
    let mut s = setup_with_env(&[("CRIUS_TEST_PAUSE_AT", "release removed container")]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("cut", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let (_, info) = pod::status(&mut rt, &pod).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let fds = || {
        std::fs::read_dir(format!("/proc/{monitor}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let id = sleeping(&mut rt, &pod, &s.busybox, "gone").await;
    let (_, info) = status(&mut rt, &id).await;
    let leaf = info["cgroupPath"].as_str().unwrap().to_string();
    let dir = s.d.root.join("containers").join(&id);
    let exit_file = s.d.state.join("pods").join(&pod).join("exits").join(&id);
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let listed = list_all(&mut rt).await;
    assert!(listed.is_empty(), "{listed:?}");
    let log = || s.d.log();
    pod::wait_for("the cleanup to pause", Duration::from_secs(20), || {
        log().contains("test hook: pausing")
    })
    .await;
    // With the systemd driver the scope goes as soon as it is empty
    // (systemd's own doing); the cgroupfs leaf waits for the cleanup.
    if !leaf.ends_with(".scope") {
        assert!(cgroup::dir(&leaf, "memory").is_dir(), "{leaf}");
    }
    assert!(dir.is_dir() && exit_file.is_file());
    // What the monitor holds for the container it has not forgotten.
    let held = fds();

    drop(rt);
    s.d.signal_and_wait(9, Duration::from_secs(10))
        .expect("crius died");
    s.d.env.clear();
    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    let listed = list_all(&mut rt).await;
    assert!(
        listed.is_empty(),
        "the removed container is back: {listed:?}"
    );
    assert!(!cgroup::dir(&leaf, "memory").exists(), "{leaf} left");
    assert!(!exit_file.exists(), "exit file left");
    pod::wait_for("the directory to go", Duration::from_secs(10), || {
        !dir.exists()
    })
    .await;
    // The monitor was told to forget it: it let go of its fds.
    pod::wait_for("the monitor to forget it", Duration::from_secs(10), || {
        fds() < held
    })
    .await;
    assert!(
        s.d.log()
            .contains("releasing a removed container: its monitor forgets it")
    );
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

/// A created init is in its cgroup before anything of the workload runs:
/// without a cgroup namespace of its own (cgroup v1) it joins there itself
/// (through the `tasks` files it opened at create) between the start and
/// its execve, not before; when that join fails (the container's cgroup is
/// gone) the workload never runs: the container cannot run, and its init
/// is gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_created_init_joins_its_cgroup_before_the_workload_runs() {
    require_registry_tools!();
    let s = setup().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("move", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let early = cgroup::unified();
    let sleeper = |name: &str| {
        container(
            name,
            &s.busybox,
            &["sleep", "1000"],
            NamespaceMode::Container,
        )
    };
    let id = create(&mut rt, &pod, sleeper("a")).await.unwrap();
    let (_, info) = made(&mut rt, &id).await;
    let (leaf, pid) = (
        info["cgroupPath"].as_str().unwrap().to_string(),
        info["pid"].as_i64().unwrap() as i32,
    );
    let in_leaf = |pid: i32| cgroup::of_pid(pid, "pids").as_deref() == Some(leaf.as_str());
    assert_eq!(in_leaf(pid), early, "created init in {leaf}");
    // Nothing else is: with systemd the scope was made with a holder
    // process, gone once the init was in.
    let alone = match early {
        true => vec![pid],
        false => vec![],
    };
    assert_eq!(cgroup::procs(&leaf), alone, "processes in {leaf}");
    start(&mut rt, &id).await;
    assert!(in_leaf(pid), "started init (the entrypoint) in {leaf}");
    // What the container sees: on cgroup v2 its own cgroup namespace,
    // rooted at its leaf (made while the init was there); on v1 the
    // host's paths, its leaf among them.
    let out = exec(&mut rt, &id, &["cat", "/proc/1/cgroup"], 5)
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    if early {
        assert_eq!(seen.trim(), "0::/", "the container's cgroup namespace");
    } else {
        let pids = format!(":pids:{leaf}");
        assert!(seen.lines().any(|l| l.ends_with(&pids)), "{seen}");
    }

    if !early {
        // Its cgroup removed behind crius's back (empty until the start).
        let b = create(&mut rt, &pod, sleeper("b")).await.unwrap();
        let (_, info) = made(&mut rt, &b).await;
        let leaf_b = info["cgroupPath"].as_str().unwrap().to_string();
        let pid_b = info["pid"].as_i64().unwrap() as i32;
        std::fs::remove_dir(cgroup::dir(&leaf_b, "pids")).unwrap();
        assert!(
            rt.start_container(StartContainerRequest {
                container_id: b.clone(),
            })
            .await
            .is_err()
        );
        let (st, _) = status(&mut rt, &b).await;
        assert_eq!(st.state, ContainerState::ContainerExited as i32);
        assert_eq!(st.reason, "ContainerCannotRun");
        assert!(st.message.contains("cgroup"), "{}", st.message);
        pod::wait_for("the unjoined init's end", Duration::from_secs(10), || {
            !std::path::Path::new(&format!("/proc/{pid_b}")).exists()
        })
        .await;
    }
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}
