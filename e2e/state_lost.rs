//! State lost or hidden: the metadata store wiped after a kill -9, a
//! damaged database, creations that finished after their caller gave up
//! and a daemon restart in between. Each injects the fault and checks the
//! host afterwards: processes, mounts, cgroups, veths, IP leases.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crius::cri::proto::*;

use crate::container::{container, create, pod_config, setup_with_env, start};
use crate::harness::{TestDaemon, monitor_pids, run_crius, start_with_env};
use crate::pod::{self, assert_no_trace, config, list, run, wait_for};
use crate::require_registry_tools;

fn alive(pid: i32) -> bool {
    crius::sys::process::ProcRef::of(pid).is_some_and(|p| p.alive())
}

/// A pod in its own PID namespace (a pod init) with a running container:
/// (pod id, monitor pid, pod init pid, workload pid).
async fn pod_with_a_workload(s: &crate::container::Setup) -> (String, i32, i32, i32) {
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = run(&mut rt, pod_config("lost", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let (_, info) = pod::status(&mut rt, &pod).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let init = info["initPid"].as_i64().unwrap() as i32;
    let c = create(
        &mut rt,
        &pod,
        container("w", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod),
    )
    .await
    .unwrap();
    start(&mut rt, &c).await;
    let (_, cinfo) = crate::container::status(&mut rt, &c).await;
    let workload = cinfo["pid"].as_i64().unwrap() as i32;
    for pid in [monitor, init, workload] {
        assert!(alive(pid), "pid {pid} runs before the fault");
    }
    (pod, monitor, init, workload)
}

/// The host holds nothing of the pod any more.
async fn assert_all_gone(d: &TestDaemon, pids: &[i32]) {
    for &pid in pids {
        wait_for(
            &format!("pid {pid} to be killed"),
            Duration::from_secs(10),
            || !alive(pid),
        )
        .await;
    }
    assert!(monitor_pids(&d.state).is_empty());
    assert_no_trace(d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_store_leaves_no_pod_behind_after_restart() {
    require_registry_tools!();
    let mut s = setup_with_env(&[]).await;
    let (_, monitor, init, workload) = pod_with_a_workload(&s).await;
    s.d.signal_and_wait(9, Duration::from_secs(10))
        .expect("daemon dies");
    std::fs::remove_dir_all(&s.d.root).unwrap();
    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    assert!(list(&mut rt, None).await.is_empty());
    assert_all_gone(&s.d, &[monitor, init, workload]).await;
    assert!(
        s.d.log().contains("a pod without a record"),
        "{}",
        s.d.log()
    );
}

/// Everything `rm -rf` can remove below `dir` (busy mount points stay).
fn wipe(dir: &Path) {
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(dir)
        .stderr(std::process::Stdio::null())
        .status();
}

/// The root and the state dir wiped after a kill -9: no record, no pid
/// file, no cached CNI result; what is left is what the kernel shows (the
/// monitor in the monitors cgroup, its children, the pod cgroup, the pins
/// that are busy mount points).
#[tokio::test(flavor = "multi_thread")]
async fn a_wiped_root_and_state_dir_leave_no_pod_behind_after_restart() {
    require_registry_tools!();
    let mut s = setup_with_env(&[]).await;
    let (_, monitor, init, workload) = pod_with_a_workload(&s).await;
    s.d.signal_and_wait(9, Duration::from_secs(10))
        .expect("daemon dies");
    wipe(&s.d.root);
    wipe(&s.d.state);
    assert!(alive(monitor), "the pod outlives the wipe");
    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    assert!(list(&mut rt, None).await.is_empty());
    assert_all_gone(&s.d, &[monitor, init, workload]).await;
    assert!(
        s.d.log().contains("killing a pod monitor without a record"),
        "{}",
        s.d.log()
    );
}

/// Writes 8 KiB of random bytes over the database, from the start of each
/// 4 KiB page that holds `needle` (the live record is among them).
fn damage(db: &Path, needle: &str) {
    let bytes = std::fs::read(db).unwrap();
    let pages: std::collections::BTreeSet<u64> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_bytes())
        .map(|(i, _)| i as u64 / 4096 * 4096)
        .collect();
    assert!(!pages.is_empty(), "{needle} is in the database");
    let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
    for page in pages {
        let mut junk = vec![0u8; 8192];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut junk)
            .unwrap();
        f.seek(std::io::SeekFrom::Start(page)).unwrap();
        f.write_all(&junk).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_store_stops_start_with_a_clear_error_and_reset_starts_over() {
    let mut d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let id = run(&mut rt, config("damaged")).await.unwrap();
    let (_, info) = pod::status(&mut rt, &id).await;
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let init = info["initPid"].as_i64().unwrap() as i32;
    // redb keeps the commit before the last as a fallback, and opens it
    // when the last one is damaged: a later pod's durable claim makes the
    // damaged record part of both (a creation's only durable write is its
    // claim).
    let later = run(&mut rt, config("later")).await.unwrap();
    let (_, info) = pod::status(&mut rt, &later).await;
    let later_monitor = info["monitorPid"].as_i64().unwrap() as i32;
    drop(rt);
    d.signal_and_wait(9, Duration::from_secs(10))
        .expect("daemon dies");
    let db = d.root.join("crius.redb");
    damage(&db, &id);
    let damaged = std::fs::read(&db).unwrap();

    // Start fails at once, naming the file and what to do; no panic.
    d.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "crius started on a damaged store"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    d.child = None;
    assert!(!status.success());
    let log = d.log();
    assert!(log.contains(&db.display().to_string()), "{log}");
    assert!(log.contains("is damaged"), "{log}");
    assert!(log.contains("crius store reset"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    let after = std::fs::read(&db).unwrap();
    let changed: Vec<usize> = (0..after.len().min(damaged.len()))
        .filter(|&i| after[i] != damaged[i])
        .collect();
    // Never wiped nor truncated; redb may set its "needs repair" flag in
    // the file header (byte 28) when the check fails.
    assert_eq!(after.len(), damaged.len(), "never truncated");
    assert!(
        changed.iter().all(|&i| i < 64),
        "changed bytes: {changed:?}"
    );
    assert!(
        alive(monitor) && alive(later_monitor),
        "the pods are left alone until told"
    );

    let root = d.root.display().to_string();
    let config = d.config.display().to_string();
    let args = ["--config", config.as_str(), "--root", root.as_str()];
    let (ok, err) = run_crius(&[&["store", "check"][..], &args].concat());
    assert!(!ok, "check passed a damaged store");
    assert!(err.contains("is damaged"), "{err}");
    let (ok, err) = run_crius(&[&["store", "reset"][..], &args].concat());
    assert!(ok, "{err}");
    assert!(!db.exists());
    let aside: Vec<_> = std::fs::read_dir(&d.root)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("crius.redb.damaged-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "moved aside, not deleted");
    assert_eq!(std::fs::read(aside[0].path()).unwrap().len(), damaged.len());

    // Starting over removes what the lost records owned.
    d.spawn();
    d.wait_ready().await;
    let (ok, err) = run_crius(&[&["store", "check"][..], &args].concat());
    assert!(!ok, "check opened the database of a running daemon: {err}");
    let mut rt = d.runtime().await;
    assert!(list(&mut rt, None).await.is_empty());
    assert_all_gone(&d, &[monitor, init, later_monitor]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_finished_after_its_caller_gave_up_is_rolled_back_at_restart() {
    // The creation sleeps 2 s before its last step; the caller gives up
    // after 300 ms; the default bound on unclaimed pods (600 s) never
    // comes into play.
    let mut d = start_with_env(
        "",
        &[
            ("CRIUS_TEST_PAUSE_AT", "record pod"),
            ("CRIUS_TEST_PAUSE_SECS", "2"),
        ],
    )
    .await;
    let mut rt = d.runtime().await;
    let gave_up = pod::run_giving_up(&mut rt, config("gaveup"), Duration::from_millis(300));
    assert!(gave_up.await.is_err());
    wait_for("the creation to finish", Duration::from_secs(20), || {
        d.log().contains("pod sandbox ready")
    })
    .await;
    assert!(list(&mut rt, None).await.is_empty(), "hidden while we live");
    let monitors = monitor_pids(&d.state);
    assert_eq!(monitors.len(), 1);
    drop(rt);
    d.signal_and_wait(15, Duration::from_secs(10))
        .expect("daemon stops");
    d.env.clear();
    d.spawn();
    d.wait_ready().await;
    let mut rt = d.runtime().await;
    assert!(list(&mut rt, None).await.is_empty());
    assert!(
        d.log().contains("no caller can claim it any more"),
        "{}",
        d.log()
    );
    assert_all_gone(&d, &monitors).await;
    // The name is free again.
    let id = run(&mut rt, config("gaveup")).await.unwrap();
    pod::stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_finished_after_its_caller_gave_up_is_rolled_back_at_restart() {
    require_registry_tools!();
    let mut s = setup_with_env(&[
        ("CRIUS_TEST_PAUSE_AT", "record container"),
        ("CRIUS_TEST_PAUSE_SECS", "2"),
    ])
    .await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = run(&mut rt, pod_config("cgaveup", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let mut req = tonic::Request::new(CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container(
            "late",
            &s.busybox,
            &["sleep", "1000"],
            NamespaceMode::Pod,
        )),
        sandbox_config: None,
    });
    req.set_timeout(Duration::from_millis(300));
    assert!(rt.create_container(req).await.is_err());
    wait_for("the creation to finish", Duration::from_secs(20), || {
        s.d.log().contains("container created")
    })
    .await;
    let dirs = |d: &TestDaemon| {
        std::fs::read_dir(d.root.join("containers"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    assert_eq!(dirs(&s.d), 1);
    drop(rt);
    s.d.signal_and_wait(15, Duration::from_secs(10))
        .expect("daemon stops");
    s.d.env.clear();
    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    let all = rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(all.is_empty(), "{all:?}");
    assert!(s.d.log().contains("no caller can claim it any more"));
    assert_eq!(dirs(&s.d), 0, "rolled back");
    // The name is free again in the same pod.
    let c = create(
        &mut rt,
        &pod,
        container("late", &s.busybox, &["true"], NamespaceMode::Pod),
    )
    .await
    .unwrap();
    assert!(!c.is_empty());
    pod::stop_remove(&mut rt, &pod).await;
    assert_no_trace(&s.d);
}
