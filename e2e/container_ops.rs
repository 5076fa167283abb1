//! Containers, continued: UpdateContainerResources and ReopenContainerLog on
//! a running container, an image given by its id with no command, NODE and
//! TARGET PID modes, a daemon killed or a client giving up in the middle of
//! CreateContainer, a lost monitor, a hung container setup that delays
//! nothing else in its pod, a stuck log disk that stalls no monitor, a
//! log writer that runs only while there is output, a killed log writer
//! replaced, a pod init that reaps the pod's orphans, an idle monitor that
//! hands back the pages its work touched, and 100 containers
//! that leave no mount, cgroup, process or fd behind.

use std::path::Path;
use std::time::{Duration, Instant};

use crius::cri::proto::*;
use tonic::Code;

use crate::cgroup;
use crate::container::{
    Setup, container, create, exec, made, pod_config, refused, setup_with_env, sleeping, start,
    status, wait_state,
};
use crate::pod::{self, Client, wait_for};
use crate::require_registry_tools;

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn container_dirs(s: &Setup) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(s.d.root.join("containers"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn container_update_resources_reopen_log_and_image_by_id() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("ops", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    // By id, no command: the image's Cmd (sh) runs; stdin keeps it alive.
    let mut c = container("byid", &s.image_id, &[], NamespaceMode::Container);
    c.stdin = true;
    let byid = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &byid).await;
    let (st, info) = status(&mut rt, &byid).await;
    assert_eq!(st.image_id, s.image_id);
    assert_eq!(info["runtimeSpec"]["process"]["args"][0], "sh");

    let mut c = container(
        "web",
        &s.busybox,
        &["sh", "-c", "while true; do echo tick; sleep 0.2; done"],
        NamespaceMode::Container,
    );
    // kubelet sends a hugepage limit for every page size on every
    // container: it must be taken wherever the hugetlb controller lives.
    c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        hugepage_limits: vec![
            HugepageLimit {
                page_size: "2MB".into(),
                limit: 0,
            },
            HugepageLimit {
                page_size: "1GB".into(),
                limit: 0,
            },
        ],
        ..Default::default()
    });
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    let (_, info) = status(&mut rt, &id).await;
    let cg = info["cgroupPath"].as_str().unwrap().to_string();
    assert_eq!(cgroup::cpu_weight(&cg), cgroup::weight_of_shares(512));
    assert_eq!(cgroup::memory_limit(&cg), Some(64 << 20));
    assert_eq!(cgroup::cpu_quota(&cg), None);
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            cpu_shares: 256,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 128 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(cgroup::cpu_weight(&cg), cgroup::weight_of_shares(256));
    assert_eq!(cgroup::cpu_quota(&cg), Some(50_000));
    assert_eq!(cgroup::memory_limit(&cg), Some(128 << 20));
    let (st, _) = status(&mut rt, &id).await;
    let r = st.resources.unwrap().linux.unwrap();
    assert_eq!((r.cpu_shares, r.memory_limit_in_bytes), (256, 128 << 20));
    // All or nothing: a bad cpuset changes nothing.
    let err = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 96 << 20,
                cpuset_cpus: "999999".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(cgroup::memory_limit(&cg), Some(128 << 20));

    // kubelet's rotation: rename, then ReopenContainerLog.
    let log = logs.join("web.log");
    wait_for("log lines", Duration::from_secs(10), || log.exists()).await;
    let rotated = logs.join("web.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    wait_for("the new log file", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("stdout F tick"))
    })
    .await;

    pod::stop_remove(&mut rt, &pod).await;
    assert!(container_dirs(&s).is_empty());
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn container_node_and_target_pid_modes() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("pidmodes", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    let sleeper = |name: &str, mode| container(name, &s.busybox, &["sleep", "1000"], mode);
    let main = create(&mut rt, &pod, sleeper("main", NamespaceMode::Container))
        .await
        .unwrap();
    start(&mut rt, &main).await;
    let mut dbg = sleeper("debug", NamespaceMode::Target);
    dbg.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .target_id = main.clone();
    let debug = create(&mut rt, &pod, dbg).await.unwrap();
    start(&mut rt, &debug).await;
    let node = create(&mut rt, &pod, sleeper("node", NamespaceMode::Node))
        .await
        .unwrap();
    start(&mut rt, &node).await;
    let ns = |pid: i64| std::fs::read_link(format!("/proc/{pid}/ns/pid")).unwrap();
    let pid = |info: &serde_json::Value| info["pid"].as_i64().unwrap();
    let (_, im) = status(&mut rt, &main).await;
    let (_, id) = status(&mut rt, &debug).await;
    let (_, inode) = status(&mut rt, &node).await;
    assert_eq!(
        ns(pid(&im)),
        ns(pid(&id)),
        "TARGET joins the target's PID ns"
    );
    assert_eq!(
        ns(pid(&inode)),
        std::fs::read_link("/proc/self/ns/pid").unwrap(),
        "NODE is the host's"
    );
    // The debug container sees the target's processes.
    let out = exec(&mut rt, &debug, &["cat", "/proc/1/cmdline"], 0)
        .await
        .unwrap();
    assert!(out.stdout.starts_with(b"sleep\0"));
    // NODE mode: a child left behind is killed when the container stops.
    let cg = inode["cgroupPath"].as_str().unwrap().to_string();
    exec(
        &mut rt,
        &node,
        &["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 &"],
        0,
    )
    .await
    .unwrap();
    assert!(cgroup::procs(&cg).len() >= 2, "{cg}");
    rt.stop_container(StopContainerRequest {
        container_id: node.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    wait_for("the leftover to die", Duration::from_secs(5), || {
        cgroup::procs(&cg).is_empty()
    })
    .await;
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_container_survives_a_client_deadline_and_a_daemon_kill() {
    require_registry_tools!();
    let mut s = setup_with_env(&[
        ("CRIUS_TEST_PAUSE_AT", "record container"),
        ("CRIUS_TEST_PAUSE_SECS", "2"),
    ])
    .await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("slow", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let c = container(
        "c",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    // The client gives up; the creation finishes unseen; the retry claims it.
    let mut req = tonic::Request::new(CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(c.clone()),
        sandbox_config: None,
    });
    req.set_timeout(Duration::from_millis(500));
    let err = rt.create_container(req).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{err:?}"
    );
    // List never waits behind the creation (paused 1.5 s more).
    let t = Instant::now();
    let listed = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(listed.is_empty(), "unclaimed containers are invisible");
    let id = create(&mut rt, &pod, c.clone()).await.unwrap();
    assert_eq!(container_dirs(&s).len(), 1, "created once");
    start(&mut rt, &id).await;
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();

    // Killed while paused before the container is recorded as created:
    // the restart rolls back.
    s.d.env = vec![("CRIUS_TEST_PAUSE_AT".into(), "record container".into())];
    s.d.signal_and_wait(15, Duration::from_secs(10));
    s.d.spawn();
    s.d.wait_ready().await;
    let rt = s.d.runtime().await;
    let pending = {
        let mut rt = rt.clone();
        let (pod, c) = (pod.clone(), c.clone());
        tokio::spawn(async move { create(&mut rt, &pod, c).await })
    };
    let log = || s.d.log();
    wait_for("the creation to pause", Duration::from_secs(20), || {
        log().matches("test hook: pausing").count() >= 2
    })
    .await;
    assert_eq!(container_dirs(&s).len(), 1);
    s.d.signal_and_wait(9, Duration::from_secs(10))
        .expect("daemon dies");
    assert!(pending.await.unwrap().is_err());
    let mut rt2 = restart_rolling_back(&mut s).await;
    assert!(container_dirs(&s).is_empty(), "{:?}", container_dirs(&s));
    // The name is free again.
    let id = create(&mut rt2, &pod, c).await.unwrap();
    rt2.remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap();
    drop(rt);
    pod::stop_remove(&mut rt2, &pod).await;
    pod::assert_no_trace(&s.d);
}

/// Starts the daemon again, without test hooks, after it was killed amid
/// a creation, and checks that it rolled the creation back; its client.
async fn restart_rolling_back(s: &mut Setup) -> Client {
    s.d.env.clear();
    s.d.spawn();
    s.d.wait_ready().await;
    let rt = s.d.runtime().await;
    assert!(
        s.d.log()
            .contains("rolling back a container whose creation was interrupted")
    );
    rt
}

/// CreateContainer answers before the init is made. A daemon killed
/// while it makes the init (paused once the container's cgroup exists:
/// with systemd on cgroup v2 the scope holds its holder process then)
/// leaves a created container without an init: the restart ends what was
/// made of it, StartContainer says why it cannot run, and RemoveContainer
/// leaves no cgroup, holder or directory.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_while_it_makes_the_init_leaves_no_cgroup_or_holder() {
    require_registry_tools!();
    let mut s = setup_with_env(&[("CRIUS_TEST_PAUSE_AT", "create container init")]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("held", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let (_, info) = pod::status(&mut rt, &pod).await;
    let pod_cg = info["cgroupPath"].as_str().unwrap().to_string();
    let c = container(
        "c",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    let id = tokio::time::timeout(Duration::from_secs(20), create(&mut rt, &pod, c))
        .await
        .expect("CreateContainer answers before the init is made")
        .unwrap();
    let log = || s.d.log();
    wait_for("the creation to pause", Duration::from_secs(20), || {
        log().contains("test hook: pausing")
    })
    .await;
    let leaves = cgroup::children(&pod_cg, "pids");
    assert_eq!(leaves.len(), 1, "{leaves:?}");
    let leaf = format!("{pod_cg}/{}", leaves[0]);
    let held = cgroup::procs(&leaf);
    if cgroup::unified() && leaf.ends_with(".scope") {
        assert_eq!(held.len(), 1, "the scope's holder: {held:?}");
    } else {
        assert!(held.is_empty(), "{held:?}");
    }
    let held: Vec<_> = held
        .into_iter()
        .filter_map(crius::sys::process::ProcRef::of)
        .collect();
    s.d.signal_and_wait(9, Duration::from_secs(10))
        .expect("daemon dies");
    drop(rt);

    s.d.env.clear();
    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    assert!(
        s.d.log()
            .contains("crius stopped while it made this container's init"),
        "{}",
        s.d.log()
    );
    wait_for("the holder's end", Duration::from_secs(10), || {
        !held.iter().any(|p| p.alive())
    })
    .await;
    let err = rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("crius stopped"), "{err:?}");
    let st = wait_state(
        &mut rt,
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        (st.exit_code, st.reason.as_str()),
        (128, "ContainerCannotRun")
    );
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    wait_for(
        "the container's cgroup to go",
        Duration::from_secs(10),
        || !cgroup::dir(&leaf, "pids").exists(),
    )
    .await;
    // The directory goes after the cgroup, in the removal's background
    // half, which RemovePodSandbox waits for.
    pod::stop_remove(&mut rt, &pod).await;
    assert!(container_dirs(&s).is_empty(), "{:?}", container_dirs(&s));
    pod::assert_no_trace(&s.d);
}

/// The record of a made init is a lazy write, durable with the next
/// durable commit (StartContainer's at the latest). A daemon killed once
/// CreateContainer's init is made and recorded, with no durable commit
/// since, restarts to find a created container without an init: the init
/// it had made is killed, StartContainer says why, and nothing stays. (A
/// durable commit in between, by the daemon's background work, would keep
/// the init: then the container starts, and nothing stays either.)
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_after_the_init_is_made_leaves_no_process() {
    stopped_after_the_init_is_made(9).await;
}

/// A daemon stopped by SIGTERM at the same point closes its database,
/// which makes the lazy write durable: after the restart the container
/// starts with the init it had.
#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_stopped_after_the_init_is_made_keeps_it() {
    stopped_after_the_init_is_made(15).await;
}

async fn stopped_after_the_init_is_made(signal: i32) {
    require_registry_tools!();
    let mut s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("made", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let c = container(
        "c",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    let id = create(&mut rt, &pod, c).await.unwrap();
    let (_, info) = made(&mut rt, &id).await;
    let pid = info["pid"].as_i64().expect("made") as i32;
    let init = crius::sys::process::ProcRef::of(pid).expect("the init lives");
    drop(rt);
    s.d.signal_and_wait(signal, Duration::from_secs(10))
        .expect("daemon stops");
    assert!(init.alive(), "the init outlives the daemon");

    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    let started = rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await;
    match started {
        Err(err) if signal == 9 => {
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            assert!(err.message().contains("crius stopped"), "{err:?}");
            assert!(
                s.d.log()
                    .contains("crius stopped while it made this container's init"),
                "{}",
                s.d.log()
            );
            wait_for("the made init's end", Duration::from_secs(10), || {
                !init.alive()
            })
            .await;
        }
        Err(err) => panic!("after signal {signal}: {err:?}"),
        Ok(_) => {
            let (st, info) = status(&mut rt, &id).await;
            assert_eq!(st.state, ContainerState::ContainerRunning as i32);
            assert_eq!(info["pid"].as_i64(), Some(init.pid.into()));
        }
    }
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    pod::stop_remove(&mut rt, &pod).await;
    assert!(!init.alive(), "the init outlives its container");
    assert!(container_dirs(&s).is_empty(), "{:?}", container_dirs(&s));
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_monitor_ends_its_containers_with_255() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("lost", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let id = sleeping(&mut rt, &pod, &s.busybox, "c").await;
    let (_, info) = pod::status(&mut rt, &pod).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = wait_state(
        &mut rt,
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(st.exit_code, 255, "{st:?}");
    assert!(st.message.contains("monitor"), "{st:?}");
    pod::stop_remove(&mut rt, &pod).await;
    assert!(container_dirs(&s).is_empty());
    pod::assert_no_trace(&s.d);
}

/// One container's setup hangs (the test hook pauses its init right
/// before it reports ready): its pod's monitor still answers an ExecSync
/// into a second container at once and reports a third container's exit
/// at once, while the StartContainer that waits for the hung setup is
/// still pending; that start then finishes, and the pod leaves nothing
/// behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_setup_never_delays_the_pods_other_containers() {
    require_registry_tools!();
    const HANG: Duration = Duration::from_secs(20);
    let s = setup_with_env(&[
        ("CRIUS_TEST_PAUSE_AT", "container setup"),
        ("CRIUS_TEST_PAUSE_SECS", "20"),
    ])
    .await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("hang", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let sleeper = |name: &str| {
        container(
            name,
            &s.busybox,
            &["sleep", "1000"],
            NamespaceMode::Container,
        )
    };
    let b = create(&mut rt, &pod, sleeper("b")).await.unwrap();
    start(&mut rt, &b).await;

    // Only the container whose own environment asks for it hangs.
    let mut hung = sleeper("a");
    hung.envs.push(KeyValue {
        key: "CRIUS_TEST_PAUSE_AT".into(),
        value: "container setup".into(),
    });
    let began = Instant::now();
    // CreateContainer answers at once; the StartContainer that follows
    // waits for the init's setup.
    let a = create(&mut rt, &pod, hung).await.unwrap();
    let pending = {
        let (mut rt, a) = (rt.clone(), a.clone());
        tokio::spawn(async move {
            rt.start_container(StartContainerRequest { container_id: a })
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!pending.is_finished(), "the hook did not hang the setup");

    let t = Instant::now();
    let out = exec(&mut rt, &b, &["echo", "still here"], 10)
        .await
        .unwrap();
    let exec_took = t.elapsed();
    assert_eq!(
        (out.exit_code, out.stdout.as_slice()),
        (0, &b"still here\n"[..])
    );
    assert!(
        exec_took < Duration::from_secs(5),
        "ExecSync took {exec_took:?}"
    );

    let t = Instant::now();
    let c = create(
        &mut rt,
        &pod,
        container(
            "c",
            &s.busybox,
            &["sh", "-c", "exit 3"],
            NamespaceMode::Container,
        ),
    )
    .await
    .unwrap();
    start(&mut rt, &c).await;
    let st = wait_state(
        &mut rt,
        &c,
        ContainerState::ContainerExited,
        Duration::from_secs(8),
    )
    .await;
    let third_took = t.elapsed();
    assert_eq!(st.exit_code, 3, "{st:?}");
    assert!(
        !pending.is_finished(),
        "the hung setup ended before the others were served: nothing was shown"
    );
    eprintln!("while a setup hung: ExecSync {exec_took:?}, create+start+exit {third_took:?}");

    // The hook lets go: the init is made and the start runs it.
    pending.await.unwrap().unwrap();
    assert!(began.elapsed() >= HANG, "{:?}", began.elapsed());
    let out = exec(&mut rt, &a, &["true"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0);
    pod::stop_remove(&mut rt, &pod).await;
    assert!(container_dirs(&s).is_empty());
    pod::assert_no_trace(&s.d);
}

/// A container's log on a disk that takes nothing (a FIFO whose reader
/// never reads): the pod's monitor still answers an ExecSync into another
/// container at once, the chatty container's exit is reported within the
/// log writer's bounds, and the records that found no room are counted in
/// monitor.log.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_log_disk_never_stalls_the_monitor() {
    use std::os::unix::fs::OpenOptionsExt;
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let fifo = logs.join("chatty.log");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let pod = pod::run(
        &mut rt,
        pod_config("stuck", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    let b = sleeping(&mut rt, &pod, &s.busybox, "b").await;
    let script = "yes 0123456789012345678901234567890123456789 | head -c 20000000; exit 4";
    let chatty = create(
        &mut rt,
        &pod,
        container(
            "chatty",
            &s.busybox,
            &["sh", "-c", script],
            NamespaceMode::Container,
        ),
    )
    .await
    .unwrap();
    let began = Instant::now();
    start(&mut rt, &chatty).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let out = exec(&mut rt, &b, &["echo", "still here"], 10)
        .await
        .unwrap();
    let exec_took = t.elapsed();
    assert_eq!(out.stdout, b"still here\n");
    assert!(
        exec_took < Duration::from_secs(5),
        "ExecSync took {exec_took:?}"
    );
    let st = wait_state(
        &mut rt,
        &chatty,
        ContainerState::ContainerExited,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(st.exit_code, 4, "{st:?}");
    let exited_after = began.elapsed();
    let monitor_log = s.d.state.join("pods").join(&pod).join("monitor.log");
    wait_for(
        "the dropped records counted",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(&monitor_log)
                .is_ok_and(|t| t.contains("log records were dropped"))
        },
    )
    .await;
    eprintln!(
        "stuck log: ExecSync {exec_took:?}, 20 MB written and exited after {exited_after:?}; {}",
        std::fs::read_to_string(&monitor_log)
            .unwrap_or_default()
            .trim()
    );
    // The reader goes: the writer's blocked write fails and it moves on.
    drop(reader);
    pod::stop_remove(&mut rt, &pod).await;
    assert!(container_dirs(&s).is_empty());
    pod::assert_no_trace(&s.d);
}

/// The monitor's log writers (its children named crius-logwriter).
fn log_writers(monitor: i32) -> Vec<i32> {
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    pids.filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // pid (comm) state ppid ...
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                return false;
            };
            let ppid = stat[close + 1..].split_whitespace().nth(1);
            &stat[open + 1..close] == "crius-logwriter" && ppid == Some(&monitor.to_string())
        })
        .collect()
}

/// A CRI log's records without their timestamps, in order.
fn log_contents(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').map_or("", |(_, rest)| rest).to_string())
        .collect()
}

/// The log writer runs only while there is output to write: a pod whose
/// container has gone quiet has none after the writer's idle time (5 s);
/// a log rotated meanwhile (ReopenContainerLog) starts none; the next
/// output starts one, and every line lands, in order, in the file it
/// belongs to.
#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_pod_has_no_log_writer_and_its_later_output_lands_in_order() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("quiet", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    let (_, info) = pod::status(&mut rt, &pod).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let script = "echo one; echo two; while [ ! -e /go ]; do sleep 0.1; done; \
                  echo three; echo four; sleep 1000";
    let id = create(
        &mut rt,
        &pod,
        container(
            "quiet",
            &s.busybox,
            &["sh", "-c", script],
            NamespaceMode::Container,
        ),
    )
    .await
    .unwrap();
    assert!(
        log_writers(monitor).is_empty(),
        "a writer before any output"
    );
    start(&mut rt, &id).await;
    let log = logs.join("quiet.log");
    wait_for("the first lines", Duration::from_secs(10), || {
        log_contents(&log).len() == 2
    })
    .await;
    let quiet = Instant::now();
    wait_for("the log writer to end", Duration::from_secs(30), || {
        log_writers(monitor).is_empty()
    })
    .await;
    eprintln!("no log writer {:?} after the last output", quiet.elapsed());

    // kubelet's rotation while no writer runs.
    let rotated = logs.join("quiet.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(log_writers(monitor).is_empty(), "a reopen starts no writer");

    // Output again: a writer, and the lines in the new file.
    let out = exec(&mut rt, &id, &["touch", "/go"], 10).await.unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    wait_for("the later lines", Duration::from_secs(10), || {
        log_contents(&log).len() == 2
    })
    .await;
    assert_eq!(log_writers(monitor).len(), 1, "a writer for the new output");
    assert_eq!(log_contents(&rotated), ["stdout F one", "stdout F two"]);
    assert_eq!(log_contents(&log), ["stdout F three", "stdout F four"]);

    pod::stop_remove(&mut rt, &pod).await;
    assert!(container_dirs(&s).is_empty());
    pod::assert_no_trace(&s.d);
}

/// A pod `name` with its CRI logs in the daemon's `logs` dir, running one
/// started busybox container `name` with `args`, both in PID mode `mode`:
/// the pod's id, its info (monitorPid, initPid) and the container's id.
async fn pod_running(
    s: &Setup,
    rt: &mut Client,
    name: &str,
    mode: NamespaceMode,
    args: &[&str],
) -> (String, serde_json::Value, String) {
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(rt, pod_config(name, mode, &logs)).await.unwrap();
    let (_, info) = pod::status(rt, &pod).await;
    let id = create(rt, &pod, container(name, &s.busybox, args, mode))
        .await
        .unwrap();
    start(rt, &id).await;
    (pod, info, id)
}

/// The CRI log's records as numbers (a container that prints a counter).
fn log_numbers(path: &Path) -> Vec<u64> {
    log_contents(path)
        .iter()
        .filter_map(|r| r.strip_prefix("stdout F ")?.parse().ok())
        .collect()
}

/// A log writer killed (SIGKILL) while its container logs is replaced by
/// the monitor at the next records: the output goes on landing in the CRI
/// log, in order, no record twice; what the dead writer had taken and not
/// written is lost (counted as dropped), so one gap may follow the kill.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_log_writer_is_replaced_and_later_output_lands_in_order() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let script = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.02; done";
    let (pod, info, _) = pod_running(
        &s,
        &mut rt,
        "counter",
        NamespaceMode::Container,
        &["sh", "-c", script],
    )
    .await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let log = s.d.dir.path().join("logs").join("counter.log");
    wait_for("the first records", Duration::from_secs(10), || {
        log_numbers(&log).len() >= 10
    })
    .await;
    let writers = log_writers(monitor);
    assert_eq!(writers.len(), 1, "one writer while the container logs");
    let killed = writers[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let at_kill = *log_numbers(&log).last().unwrap();
    wait_for("a new log writer", Duration::from_secs(10), || {
        let w = log_writers(monitor);
        w.len() == 1 && w[0] != killed
    })
    .await;
    // Written by the new writer: well beyond what the old one could have
    // had in hand.
    wait_for("records after the kill", Duration::from_secs(20), || {
        log_numbers(&log)
            .last()
            .is_some_and(|&n| n >= at_kill + 100)
    })
    .await;
    let numbers = log_numbers(&log);
    assert_eq!(
        numbers.len(),
        log_contents(&log).len(),
        "every record is a whole line of the counter"
    );
    assert_eq!(numbers[0], 0);
    let gaps: Vec<(u64, u64)> = numbers
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        gaps.iter().all(|&(a, b)| b > a),
        "records out of order or twice: {gaps:?}"
    );
    assert!(gaps.len() <= 1, "more than the kill's gap: {gaps:?}");
    assert!(
        gaps.iter().all(|&(a, _)| a >= at_kill.saturating_sub(10)),
        "a gap before the kill: {gaps:?} (kill at {at_kill})"
    );
    pod::stop_remove(&mut rt, &pod).await;
    assert!(container_dirs(&s).is_empty());
    pod::assert_no_trace(&s.d);
}

/// The mappings of `pid` (/proc/PID/smaps): the header's fields (range,
/// perms, offset, dev, inode, path), the size and the resident KiB.
fn mappings(pid: i32) -> Vec<(Vec<String>, u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut maps: Vec<(Vec<String>, u64, u64)> = Vec::new();
    for line in smaps.lines() {
        let fields: Vec<String> = line.split_whitespace().map(String::from).collect();
        if let Some((s, e)) = fields.first().and_then(|r| r.split_once('-'))
            && let (Ok(s), Ok(e)) = (u64::from_str_radix(s, 16), u64::from_str_radix(e, 16))
        {
            maps.push((fields, (e - s) / 1024, 0));
        } else if let Some(rss) = line.strip_prefix("Rss:")
            && let Some(last) = maps.last_mut()
        {
            last.2 = rss.trim().trim_end_matches(" kB").parse().unwrap();
        }
    }
    maps
}

/// A monitor that has been quiet for a moment hands back the pages its
/// start and its requests touched (sys::idle): the stack below its loop
/// (the create's and the exec's deep frames: 60 KiB in a debug build
/// before, 16 after, 36-40 and 16-20 in a release build) and the code it
/// does not run now (every page of it is mapped after a start; the kernel
/// maps pages around each fault).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_monitor_hands_back_the_pages_its_work_touched() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let (pod, info, id) =
        pod_running(&s, &mut rt, "idle", NamespaceMode::Pod, &["sleep", "1000"]).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let out = exec(&mut rt, &id, &["echo", "ok"], 5).await.unwrap();
    assert_eq!(out.stdout, b"ok\n");
    let released = || {
        let maps = mappings(monitor);
        let stack = maps
            .iter()
            .find(|m| m.0.get(5).is_some_and(|p| p == "[stack]"));
        // The program's code: the largest executable file mapping.
        let code = maps
            .iter()
            .filter(|m| m.0[1] == "r-xp" && m.0[4] != "0")
            .max_by_key(|m| m.1);
        match (stack, code) {
            (Some(stack), Some(code)) => (stack.2, code.1, code.2),
            _ => panic!("no stack or code mapping in {maps:?}"),
        }
    };
    wait_for(
        "the idle monitor's release",
        Duration::from_secs(10),
        || {
            let (stack, code_size, code_rss) = released();
            stack <= 32 && code_rss < code_size
        },
    )
    .await;
    eprintln!(
        "monitor KiB: stack, code size, code resident: {:?}",
        released()
    );
    // It still serves; what it runs is mapped again.
    let out = exec(&mut rt, &id, &["echo", "again"], 5).await.unwrap();
    assert_eq!(out.stdout, b"again\n");
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

/// The state letter of /proc/PID/stat (after the command's parenthesis).
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The children of `pid` (/proc/PID/task/*/children).
fn children(pid: i32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter();
    tasks
        .flatten()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// In PID mode POD the pod init is PID 1 of the pod's PID namespace, so
/// the kernel gives it every orphan of the pod's containers (the monitor,
/// a subreaper too, is in the parent namespace): it reaps them. A
/// container double-forks short-lived children and one long-lived one;
/// the long-lived one shows up as the init's child (the orphans went
/// there), and none of the others stays a zombie.
#[tokio::test(flavor = "multi_thread")]
async fn the_pod_init_reaps_orphans_of_the_pods_containers() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    // The short-lived ones first: once the long-lived one is the init's
    // child, every short one was forked, orphaned and given to it too.
    let script = "i=0; while [ $i -lt 6 ]; do (sleep 0.1 &); i=$((i+1)); done; \
                  (sleep 1000 &); sleep 1000";
    let (pod, info, _) = pod_running(
        &s,
        &mut rt,
        "orphans",
        NamespaceMode::Pod,
        &["sh", "-c", script],
    )
    .await;
    let init = info["initPid"].as_i64().expect("a pod init") as i32;
    let long_lived = |c: i32| {
        std::fs::read_to_string(format!("/proc/{c}/cmdline"))
            .is_ok_and(|cmd| cmd.starts_with("sleep\x001000\x00"))
    };
    wait_for(
        "the long-lived orphan under the pod init",
        Duration::from_secs(10),
        || children(init).into_iter().any(long_lived),
    )
    .await;
    // The short ones end after 0.1 s: the init reaps them, and only the
    // long-lived one stays its child.
    let settled = Instant::now();
    wait_for(
        "no zombie under the pod init",
        Duration::from_secs(10),
        || {
            let c = children(init);
            c.len() == 1 && long_lived(c[0]) && proc_state(c[0]) != Some('Z')
        },
    )
    .await;
    eprintln!("orphans reaped {:?} after the last one", settled.elapsed());
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_containers_leave_no_trace() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("many", NamespaceMode::Container, &logs))
        .await
        .unwrap();
    let (_, info) = pod::status(&mut rt, &pod).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let pod_cg = info["cgroupPath"].as_str().unwrap().to_string();
    // Warm up once (lazy fds: the store, the image files).
    let warm = create(
        &mut rt,
        &pod,
        container("warm", &s.busybox, &["true"], NamespaceMode::Container),
    )
    .await
    .unwrap();
    rt.remove_container(RemoveContainerRequest { container_id: warm })
        .await
        .unwrap();
    // Its cleanup, after the reply, ends with the move into the trash.
    pod::wait_for("the warm-up's cleanup", Duration::from_secs(10), || {
        container_dirs(&s).is_empty()
    })
    .await;
    pod::wait_trash_drained(&s.d);
    let (daemon_fds, monitor_fds) = (fd_count(s.d.pid()), fd_count(monitor));
    let mounts = crius::sys::mount::mounts_under(s.d.dir.path()).len();
    let t = Instant::now();
    for i in 0..100 {
        let name = format!("c{i}");
        let id = sleeping(&mut rt, &pod, &s.busybox, &name).await;
        if i % 10 == 0 {
            let out = exec(&mut rt, &id, &["echo", "ok"], 5).await.unwrap();
            assert_eq!(out.stdout, b"ok\n");
        }
        rt.remove_container(RemoveContainerRequest { container_id: id })
            .await
            .unwrap();
    }
    let took = t.elapsed();
    eprintln!("100 containers created, started and removed in {took:?}");
    // Each removal's cleanup runs after its reply (container::removal):
    // waited for here, then what is left is named by the asserts below.
    let leaves = || cgroup::children(&pod_cg, "memory");
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && !(container_dirs(&s).is_empty()
            && leaves().iter().all(|l| l.contains("init"))
            && fd_count(monitor) == monitor_fds
            && fd_count(s.d.pid()) == daemon_fds)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(container_dirs(&s).is_empty(), "{:?}", container_dirs(&s));
    // Their directories are deleted in the background: the deleting
    // thread's fds are counted only once it is done.
    pod::wait_trash_drained(&s.d);
    assert_eq!(
        crius::sys::mount::mounts_under(s.d.dir.path()).len(),
        mounts,
        "mounts left"
    );
    assert!(cgroup::dir(&pod_cg, "memory").is_dir(), "{pod_cg}");
    let leaves = cgroup::children(&pod_cg, "memory");
    assert!(
        leaves.iter().all(|l| l.contains("init")),
        "container cgroups left: {leaves:?}"
    );
    assert_eq!(fd_count(s.d.pid()), daemon_fds, "daemon fds leaked");
    assert_eq!(fd_count(monitor), monitor_fds, "monitor fds leaked");
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn container_mounts_readonly_missing_source_and_refused_propagation() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("mounts", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    let host = s.d.dir.path().join("host");
    std::fs::create_dir_all(host.join("ro")).unwrap();
    std::fs::write(host.join("ro/f"), "data\n").unwrap();
    let missing = host.join("missing/dir");
    let mount = |src: &Path, dst: &str, readonly, propagation: MountPropagation| Mount {
        container_path: dst.into(),
        host_path: src.display().to_string(),
        readonly,
        propagation: propagation as i32,
        ..Default::default()
    };
    let mut c = container(
        "m",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    c.mounts = vec![
        mount(
            &host.join("ro"),
            "/ro",
            true,
            MountPropagation::PropagationPrivate,
        ),
        mount(
            &missing,
            "/new",
            false,
            MountPropagation::PropagationPrivate,
        ),
    ];
    c.devices = vec![Device {
        container_path: "/dev/xnull".into(),
        host_path: "/dev/null".into(),
        permissions: "rwm".into(),
    }];
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    assert!(missing.is_dir(), "a missing host path is created");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&missing).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "created 0755, not 0777");
    let out = exec(&mut rt, &id, &["cat", "/ro/f"], 5).await.unwrap();
    assert_eq!(out.stdout, b"data\n");
    let out = exec(&mut rt, &id, &["touch", "/ro/x"], 5).await.unwrap();
    assert_ne!(out.exit_code, 0, "read-only mount written");
    let out = exec(&mut rt, &id, &["touch", "/new/x"], 5).await.unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(missing.join("x").exists());
    let device = ["sh", "-c", "test -c /dev/xnull && echo x >/dev/xnull"];
    let out = exec(&mut rt, &id, &device, 5).await.unwrap();
    assert_eq!(
        out.exit_code, 0,
        "the CRI device is a usable character device"
    );
    let (st, _) = status(&mut rt, &id).await;
    let mounts: Vec<_> = st
        .mounts
        .iter()
        .map(|m| (m.container_path.as_str(), m.readonly))
        .collect();
    assert_eq!(mounts, [("/ro", true), ("/new", false)]);

    // Host-to-container from a private mount cannot work: refused, and the
    // failed creation leaves nothing.
    let propagation = std::process::Command::new("findmnt")
        .args(["-n", "-o", "PROPAGATION", "-T"])
        .arg(&host)
        .output()
        .unwrap();
    let private = String::from_utf8_lossy(&propagation.stdout).trim() == "private";
    if private {
        let before = container_dirs(&s).len();
        let mut c = container(
            "h2c",
            &s.busybox,
            &["sleep", "1000"],
            NamespaceMode::Container,
        );
        c.mounts = vec![mount(
            &host.join("ro"),
            "/h2c",
            false,
            MountPropagation::PropagationHostToContainer,
        )];
        let err = refused(&mut rt, &pod, c).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains("not a shared or slave mount"),
            "{err:?}"
        );
        wait_for(
            "the refused container's removal",
            Duration::from_secs(10),
            || container_dirs(&s).len() == before,
        )
        .await;
        let names: Vec<_> = rt
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.metadata.unwrap().name)
            .collect();
        assert_eq!(names, ["m"]);
    } else {
        eprintln!(
            "the test dir is on a shared mount here: the refusal of a private source is not exercised"
        );
    }
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}
