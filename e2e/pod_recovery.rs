//! Pods and failure: a lost monitor, a dead pod init, pods surviving a
//! daemon restart, a daemon killed in the middle of RunPodSandbox,
//! timeout-safe creation, and 100 pods that leave no trace.

use std::time::{Duration, Instant};

use crius::cri::proto::*;
use tonic::Code;

use crate::harness::{TestDaemon, children_of, monitor_pids, start_with_env};
use crate::pod::{
    Client, assert_no_trace, config, list, run, run_giving_up, status, stop_remove, wait_for,
    with_namespaces,
};

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

fn alive(pid: i32) -> bool {
    crius::sys::process::ProcRef::of(pid).is_some_and(|p| p.alive())
}

async fn state_of(rt: &mut Client, id: &str) -> i32 {
    status(rt, id).await.0.state
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_whose_monitor_is_killed_becomes_notready() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let id = run(&mut rt, config("lost")).await.unwrap();
    let (_, info) = status(&mut rt, &id).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let init = info["initPid"].as_i64().unwrap() as i32;
    kill9(monitor);
    let deadline = Instant::now() + Duration::from_secs(5);
    while state_of(&mut rt, &id).await != PodSandboxState::SandboxNotready as i32 {
        assert!(
            Instant::now() < deadline,
            "pod still READY after its monitor died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, info) = status(&mut rt, &id).await;
    assert!(
        info["reason"].as_str().unwrap().contains("monitor"),
        "{info}"
    );
    wait_for("the pod init to be killed", Duration::from_secs(5), || {
        !alive(init)
    })
    .await;
    assert!(!alive(monitor));
    stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_whose_init_dies_is_notready_with_its_exit_recorded() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let id = run(&mut rt, config("initdies")).await.unwrap();
    let (_, info) = status(&mut rt, &id).await;
    let init = info["initPid"].as_i64().unwrap() as i32;
    kill9(init);
    let exit_file = d.state.join("pods").join(&id).join("exits/init");
    wait_for("the init's exit file", Duration::from_secs(5), || {
        exit_file.exists()
    })
    .await;
    let exit: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&exit_file).unwrap()).unwrap();
    assert_eq!(exit["signal"], 9);
    assert_eq!(exit["exit_code"], 137);
    assert_eq!(
        state_of(&mut rt, &id).await,
        PodSandboxState::SandboxNotready as i32
    );
    stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_survive_a_daemon_restart() {
    let mut d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let a = run(&mut rt, config("survivor")).await.unwrap();
    let b = run(&mut rt, config("stopped")).await.unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: b.clone(),
    })
    .await
    .unwrap();
    let (_, before) = status(&mut rt, &a).await;
    let monitor = before["monitorPid"].as_i64().unwrap() as i32;
    drop(rt);

    // A graceful stop, then a kill -9: the pods never notice.
    for signal in [15, 9] {
        d.signal_and_wait(signal, Duration::from_secs(10))
            .expect("daemon stops");
        assert!(
            alive(monitor),
            "the monitor outlives the daemon (signal {signal})"
        );
        d.spawn();
        d.wait_ready().await;
        let mut rt = d.runtime().await;
        let pods = list(&mut rt, None).await;
        assert_eq!(pods.len(), 2);
        assert_eq!(
            state_of(&mut rt, &a).await,
            PodSandboxState::SandboxReady as i32
        );
        assert_eq!(
            state_of(&mut rt, &b).await,
            PodSandboxState::SandboxNotready as i32
        );
        let (_, after) = status(&mut rt, &a).await;
        assert_eq!(after["monitorPid"], before["monitorPid"]);
        assert!(d.log().contains("reattached to pod monitor"));
    }
    // The reattached daemon still watches the monitor.
    let mut rt = d.runtime().await;
    kill9(monitor);
    let deadline = Instant::now() + Duration::from_secs(5);
    while state_of(&mut rt, &a).await != PodSandboxState::SandboxNotready as i32 {
        assert!(
            Instant::now() < deadline,
            "a reattached pod's lost monitor went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_remove(&mut rt, &a).await;
    stop_remove(&mut rt, &b).await;
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_killed_during_run_pod_sandbox_leaves_nothing_after_restart() {
    // The test hook pauses RunPodSandbox before a step: before the network
    // (cgroup, monitor, pins, pod init, /dev/shm exist) and after it (the
    // CNI ADD is done too, so the rollback must DEL from the cached result).
    for step in ["set up pod network", "write resolv.conf and hostname"] {
        killed_at(step).await;
    }
}

async fn killed_at(step: &str) {
    let mut d = start_with_env("", &[("CRIUS_TEST_PAUSE_AT", step)]).await;
    let mut rt = d.runtime().await;
    let pending = tokio::spawn(async move { run(&mut rt, config("interrupted")).await });
    let d_log = || d.log();
    wait_for("the creation to pause", Duration::from_secs(20), || {
        d_log().contains("test hook: pausing")
    })
    .await;
    let monitors = monitor_pids(&d.state);
    assert_eq!(monitors.len(), 1, "the monitor was started");
    assert!(!crius::sys::mount::mounts_under(&d.state.join("pods")).is_empty());
    if step != "set up pod network" {
        let veths = std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", d.bridge.as_ref().unwrap()])
            .output()
            .unwrap();
        assert!(
            !veths.stdout.is_empty(),
            "the pod was attached before the kill"
        );
    }
    d.signal_and_wait(9, Duration::from_secs(10))
        .expect("daemon dies");
    assert!(
        pending.await.unwrap().is_err(),
        "the client saw the daemon die"
    );

    d.env.clear();
    d.spawn();
    d.wait_ready().await;
    let mut rt = d.runtime().await;
    assert!(list(&mut rt, None).await.is_empty());
    assert!(
        d.log()
            .contains("rolling back a pod whose creation was interrupted")
    );
    wait_for("the monitor to end", Duration::from_secs(5), || {
        !alive(monitors[0])
    })
    .await;
    assert_no_trace(&d);
    // The name is free again.
    let id = run(&mut rt, config("interrupted")).await.unwrap();
    stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_a_client_timeout_gets_the_same_pod() {
    let d = start_with_env(
        "[pod]\nunclaimed_ttl_secs = 1\n",
        &[
            ("CRIUS_TEST_PAUSE_AT", "record pod"),
            ("CRIUS_TEST_PAUSE_SECS", "2"),
        ],
    )
    .await;
    let mut rt = d.runtime().await;
    let e = run_giving_up(&mut rt, config("slow"), Duration::from_millis(300))
        .await
        .unwrap_err();
    // tonic's client gives up by itself (CANCELLED) or the server answers
    // DEADLINE_EXCEEDED: either way the caller is gone.
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    // The creation is paused inside its step, holding the pod's lock:
    // List answers at once anyway, without the unfinished pod.
    let t = Instant::now();
    assert!(
        list(&mut rt, None).await.is_empty(),
        "an unfinished pod is invisible"
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "List waited {:?}",
        t.elapsed()
    );
    // The retry waits for the first call's pod and gets it.
    let id = run(&mut rt, config("slow")).await.unwrap();
    let pods = list(&mut rt, None).await;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].id, id);
    assert_eq!(
        state_of(&mut rt, &id).await,
        PodSandboxState::SandboxReady as i32
    );
    // Another call with the same key is a duplicate.
    let e = run(&mut rt, config("slow")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    // A pod nobody claims is removed after the bound (1 s here).
    let gave_up = run_giving_up(&mut rt, config("orphan"), Duration::from_millis(300));
    assert!(gave_up.await.is_err());
    let pods_dir = d.state.join("pods");
    wait_for("the orphan to be created", Duration::from_secs(10), || {
        std::fs::read_dir(&pods_dir).map(|r| r.count()).unwrap_or(0) == 2
    })
    .await;
    wait_for(
        "the unclaimed pod to be removed",
        Duration::from_secs(15),
        || std::fs::read_dir(&pods_dir).map(|r| r.count()).unwrap_or(0) == 1,
    )
    .await;
    assert_eq!(list(&mut rt, None).await.len(), 1, "never visible");
    assert!(d.log().contains("no RunPodSandbox retry claimed"));
    stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);
}

fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// PSS of a process in KiB, from /proc/PID/smaps_rollup.
fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_pods_leave_no_trace() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    // Warm up (lazy state in the daemon: the ns mount, connections).
    let id = run(&mut rt, config("warmup")).await.unwrap();
    stop_remove(&mut rt, &id).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_before = fd_count(d.pid());

    let start = Instant::now();
    let mut pss = Vec::new();
    for i in 0..100 {
        let c = if i % 2 == 0 {
            config(&format!("p{i}"))
        } else {
            with_namespaces(
                config(&format!("p{i}")),
                NamespaceMode::Node,
                NamespaceMode::Node,
                NamespaceMode::Node,
            )
        };
        let id = run(&mut rt, c).await.unwrap();
        if i < 10 {
            let (_, info) = status(&mut rt, &id).await;
            let m = info["monitorPid"].as_i64().unwrap() as i32;
            pss.push(pss_kib(m));
        }
        stop_remove(&mut rt, &id).await;
    }
    let elapsed = start.elapsed();
    // Monitors are reaped through their pidfd watchers, asynchronously.
    let pid = d.pid();
    wait_for(
        "the daemon's fds to settle",
        Duration::from_secs(10),
        || fd_count(pid) <= fds_before,
    )
    .await;
    assert_eq!(fd_count(pid), fds_before);
    assert!(list(&mut rt, None).await.is_empty());
    assert!(
        !d.log().contains("monitor shutdown failed"),
        "every monitor obeyed Shutdown over its socket"
    );
    assert_no_trace(&d);
    // No zombie children left for the daemon.
    for child in children_of(pid) {
        let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
        assert!(!stat.contains(") Z"), "zombie child {child}: {stat}");
    }
    pss.sort();
    eprintln!(
        "100 pods created and removed in {elapsed:?}; monitor PSS (KiB) min {} median {} max {}",
        pss[0],
        pss[pss.len() / 2],
        pss[pss.len() - 1]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reboot_is_detected_from_the_boot_id() {
    let mut d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let id = run(&mut rt, config("rebooted")).await.unwrap();
    let (_, info) = status(&mut rt, &id).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let init = info["initPid"].as_i64().unwrap() as i32;
    drop(rt);
    d.signal_and_wait(15, Duration::from_secs(10))
        .expect("daemon stops");
    // What a reboot does to a state dir that is not on tmpfs: the
    // processes are gone and the boot id differs.
    kill9(init);
    kill9(monitor);
    wait_for("the pod's processes to end", Duration::from_secs(5), || {
        !alive(init) && !alive(monitor)
    })
    .await;
    std::fs::write(
        d.state.join("boot_id"),
        "00000000-0000-0000-0000-000000000000",
    )
    .unwrap();
    d.spawn();
    d.wait_ready().await;
    let mut rt = d.runtime().await;
    let (s, info) = status(&mut rt, &id).await;
    assert_eq!(s.state, PodSandboxState::SandboxNotready as i32);
    assert_eq!(info["reason"], "the machine rebooted", "{info}");
    assert!(d.log().contains("the machine rebooted"));
    stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);
}
