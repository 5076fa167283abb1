//! The container service against a recording fake engine, a fixture
//! cgroup tree and a store in a tempdir: state machine, filters, rollback,
//! stop escalation, ExecSync (real `sh` processes), reconcile.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::Exit;
use super::test_engine::*;
use super::*;
use crate::cgroups::Resources;
use crate::error::{Classify, Kind};
use crate::monitor::sync::Step;
use crate::pod::record::State as PodState;

fn code<T: std::fmt::Debug>(r: Result<T, Error>) -> crate::error::Kind {
    crate::error::Classify::kind(&r.unwrap_err())
}

#[tokio::test]
async fn create_start_stop_remove() {
    let e = env();
    let id = e.svc.create(e.req("web", 0)).await.unwrap();
    made(&e, &id).await;
    let s = e.svc.status(&id[..8]).unwrap();
    assert_eq!(s.state, State::Created);
    assert_eq!(s.image_id, IMAGE_ID, "image_id is the image's id strictly");
    assert_eq!(s.image, "busybox");
    assert_eq!(s.stop_signal, libc::SIGINT, "the image's STOPSIGNAL");
    assert!(s.log_path.as_ref().unwrap().ends_with("web/0.log"));
    assert!(s.dir.join("u").is_dir() && s.dir.join("w").is_dir());
    assert!(e.cgroup_dir(&id).is_dir(), "leaf cgroup made");
    let launch = e.fake.launches.lock().unwrap()[0].clone();
    assert_eq!(launch.overlay.upper, s.dir.join("u"));
    assert!(!launch.cgroup_procs.is_empty());
    assert_eq!(
        launch
            .spec
            .process()
            .as_ref()
            .unwrap()
            .args()
            .as_ref()
            .unwrap(),
        &["sh".to_string()]
    );

    e.svc.start(&id).await.unwrap();
    let s = e.svc.status(&id).unwrap();
    assert_eq!(s.state, State::Running);
    assert!(s.started_at >= s.created_at);
    assert_eq!(
        code(e.svc.start(&id).await),
        crate::error::Kind::FailedPrecondition
    );

    e.svc.stop(&id, Duration::from_secs(5)).await.unwrap();
    let s = e.svc.status(&id).unwrap();
    assert_eq!(s.state, State::Exited);
    assert_eq!(s.exit_code, 128 + libc::SIGINT);
    assert_eq!(s.reason, "Error");
    assert_eq!(
        e.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("signal"))
            .count(),
        1,
        "no SIGKILL when the stop signal worked"
    );
    e.svc.stop(&id, Duration::from_secs(5)).await.unwrap();
    e.svc.remove(&id).await.unwrap();
    assert_eq!(code(e.svc.status(&id)), crate::error::Kind::NotFound);
    e.svc.settle_removals(None).await;
    assert!(!s.dir.exists(), "container directory removed");
    assert!(!e.cgroup_dir(&id).exists(), "leaf cgroup removed");
    e.svc.remove(&id).await.unwrap();
    e.svc.stop("nonexistent", Duration::ZERO).await.unwrap();
}

#[tokio::test]
async fn names_are_unique_per_pod_name_and_attempt() {
    let e = env();
    let a = e.svc.create(e.req("web", 0)).await.unwrap();
    let err = e.svc.create(e.req("web", 0)).await.unwrap_err();
    assert_eq!(
        crate::error::Classify::kind(&err),
        crate::error::Kind::AlreadyExists
    );
    assert!(err.to_string().contains(&a));
    let b = e.svc.create(e.req("web", 1)).await.unwrap();
    assert_ne!(a, b);
}

#[tokio::test]
async fn bad_input_leaves_nothing() {
    let e = env();
    let mut r = e.req("web", 0);
    r.image = "nothere".into();
    assert_eq!(code(e.svc.create(r).await), crate::error::Kind::NotFound);
    let mut r = e.req("web", 0);
    r.pod_id = "ffffffff".into();
    assert_eq!(code(e.svc.create(r).await), crate::error::Kind::NotFound);
    // A pod that is not ready.
    let mut pod = e.pod.clone();
    pod.state = PodState::NotReady;
    e.store
        .put(crate::pod::record::PODS, &pod.id, &pod)
        .unwrap();
    assert_eq!(
        code(e.svc.create(e.req("web", 0)).await),
        crate::error::Kind::NotFound
    );
    e.store
        .put(crate::pod::record::PODS, &pod.id, &e.pod)
        .unwrap();
    // A failing engine step (made after CreateContainer answered):
    // StartContainer names it, keeps its kind, and the container ends
    // with ContainerCannotRun; its removal leaves nothing.
    *e.fake.fail_create.lock().unwrap() = Some(Step::Mount("/data".into()));
    let id = e.svc.create(e.req("web", 0)).await.unwrap();
    let err = e.svc.start(&id).await.unwrap_err();
    assert!(
        crate::error::chain(&err).contains("mount /data"),
        "{}",
        crate::error::chain(&err)
    );
    assert_eq!(
        crate::error::Classify::kind(&err),
        crate::error::Kind::InvalidArgument
    );
    let s = e.svc.status(&id).unwrap();
    assert_eq!((s.state, s.exit_code), (State::Exited, 128));
    assert_eq!(s.reason, "ContainerCannotRun");
    assert!(s.message.contains("mount /data"), "{}", s.message);
    assert!(e.fake.calls().contains(&format!("remove {id}")));
    e.svc.remove(&id).await.unwrap();
    e.svc.settle_removals(None).await;
    assert!(e.store.list(record::CONTAINERS).unwrap().is_empty());
    let leftovers: Vec<_> = std::fs::read_dir(&e.svc.settings.dir)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let pod_cg = e.cgroup_dir("x");
    let pod_cg = pod_cg.parent().unwrap();
    let children: Vec<_> = std::fs::read_dir(pod_cg)
        .unwrap()
        .flatten()
        .filter(|d| d.path().is_dir())
        .collect();
    assert!(children.is_empty(), "{children:?}");
}

#[tokio::test]
async fn stop_escalates_to_sigkill_at_the_timeout() {
    let e = env();
    let id = e.running("web").await;
    e.fake.ignored.lock().unwrap().insert(libc::SIGINT);
    let t = Instant::now();
    e.svc.stop(&id, Duration::from_millis(300)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    let s = e.svc.status(&id).unwrap();
    assert_eq!((s.state, s.exit_code), (State::Exited, 137));
    let signals: Vec<_> = e
        .fake
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("signal"))
        .collect();
    assert_eq!(
        signals,
        [format!("signal {id} 2"), format!("signal {id} 9")]
    );
    // Timeout 0: the stop signal, then SIGKILL at once, never skipped.
    let id = e.running("db").await;
    e.svc.stop(&id, Duration::ZERO).await.unwrap();
    assert!(e.fake.calls().contains(&format!("signal {id} 9")));
}

#[tokio::test]
async fn exit_is_noticed_at_once_and_remove_kills_first() {
    let e = env();
    let id = e.running("job").await;
    e.fake.exit(&id, 0);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let s = e.svc.status(&id).unwrap();
        if s.state == State::Exited {
            assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"));
            break;
        }
        assert!(Instant::now() < deadline, "exit not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let id = e.running("web").await;
    e.svc.remove(&id).await.unwrap();
    e.svc.settle_removals(None).await;
    let calls = e.fake.calls();
    let kill = calls.iter().position(|c| *c == format!("signal {id} 9"));
    let remove = calls.iter().position(|c| *c == format!("remove {id}"));
    assert!(kill.unwrap() < remove.unwrap(), "{calls:?}");
    assert!(e.svc.list(&Filter::default()).unwrap().len() == 1);
}

#[tokio::test]
async fn start_failure_is_container_cannot_run() {
    let e = env();
    let id = e.svc.create(e.req("web", 0)).await.unwrap();
    *e.fake.fail_start.lock().unwrap() = true;
    let err = e.svc.start(&id).await.unwrap_err();
    assert!(crate::error::chain(&err).contains("no such file"));
    let s = e.svc.status(&id).unwrap();
    assert_eq!(s.state, State::Exited);
    assert_eq!(s.reason, "ContainerCannotRun");
    assert!(s.message.contains("no such file"));
}

#[tokio::test]
async fn list_filters() {
    let e = env();
    let a = e.running("a").await;
    let b = e.svc.create(e.req("b", 0)).await.unwrap();
    let all = e.svc.list(&Filter::default()).unwrap();
    assert_eq!(all.len(), 2);
    let by = |f: Filter| -> Vec<String> {
        let mut v: Vec<_> = e.svc.list(&f).unwrap().into_iter().map(|r| r.id).collect();
        v.sort();
        v
    };
    assert_eq!(
        by(Filter {
            id: a[..10].into(),
            ..Default::default()
        }),
        vec![a.clone()]
    );
    assert_eq!(
        by(Filter {
            state: Some(State::Created),
            ..Default::default()
        }),
        vec![b.clone()]
    );
    assert_eq!(
        by(Filter {
            labels: [("app".to_string(), "a".to_string())].into(),
            ..Default::default()
        }),
        vec![a.clone()]
    );
    assert_eq!(
        by(Filter {
            pod_id: e.pod.id[..6].into(),
            ..Default::default()
        })
        .len(),
        2
    );
    assert!(
        by(Filter {
            pod_id: "zz".into(),
            ..Default::default()
        })
        .is_empty()
    );
}

#[tokio::test]
async fn concurrent_creates_of_one_key_share_the_outcome() {
    let e = env();
    let (a, b) = tokio::join!(e.svc.create(e.req("web", 0)), e.svc.create(e.req("web", 0)));
    let (a, b) = (a.unwrap(), b.unwrap_or_else(|e| format!("{e}")));
    // Either the retry waited for the first creation (same id), or it came
    // after and found it claimed (AlreadyExists naming it).
    assert!(b == a || b.contains(&a), "{a} vs {b}");
    assert_eq!(e.store.list(record::CONTAINERS).unwrap().len(), 1);
}

/// Waits until the creation of `id` is done (its init made or failed):
/// it holds the container's lock until then.
async fn made(e: &Env, id: &str) {
    let lock = e.svc.lock_of(id);
    let _made = lock.lock().await;
}

#[tokio::test]
async fn create_answers_before_the_init_is_made_and_start_waits_for_it() {
    let e = env();
    let gate = Arc::new(tokio::sync::Notify::new());
    *e.fake.create_gate.lock().unwrap() = Some(gate.clone());
    // The init is being made (held at the gate): CreateContainer has
    // answered, the container is listed as created.
    let id = tokio::time::timeout(Duration::from_secs(5), e.svc.create(e.req("web", 0)))
        .await
        .expect("CreateContainer waits for no init")
        .unwrap();
    let listed: Vec<_> = e.svc.list(&Filter::default()).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, State::Created);
    // StartContainer (and every call that takes the lock) waits for it.
    let svc = e.svc.clone();
    let started = {
        let id = id.clone();
        tokio::spawn(async move { svc.start(&id).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!started.is_finished(), "StartContainer waited for the init");
    gate.notify_one();
    started.await.unwrap().unwrap();
    assert_eq!(e.svc.status(&id).unwrap().state, State::Running);
    let calls = e.fake.calls();
    let created = calls.iter().position(|c| c.starts_with("create"));
    let start = calls.iter().position(|c| c.starts_with("start"));
    assert!(created.unwrap() < start.unwrap(), "{calls:?}");
}

#[tokio::test]
async fn oom_reason_comes_from_the_cgroup_counter() {
    let e = env();
    let id = e.running("hog").await;
    // Killed, but not by the OOM killer: Error.
    let other = e.running("other").await;
    e.fake.exit(&other, 137);
    // The kernel counted an OOM kill in hog's cgroup.
    std::fs::write(
        e.cgroup_dir(&id).join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    )
    .unwrap();
    e.fake.exit(&id, 137);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = e.store.get(record::CONTAINERS, &id).unwrap().unwrap();
        let o = e.store.get(record::CONTAINERS, &other).unwrap().unwrap();
        if r.state == State::Exited && o.state == State::Exited {
            assert_eq!((r.exit_code, r.reason.as_str()), (137, "OOMKilled"));
            assert_eq!((o.exit_code, o.reason.as_str()), (137, "Error"));
            break;
        }
        assert!(Instant::now() < deadline, "exits not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_lost_monitor_ends_running_containers_with_255() {
    let e = env();
    *e.fake.monitor_gone.lock().unwrap() = true;
    let id = e.running("web").await;
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = e.svc.status(&id).unwrap();
        if r.state == State::Exited {
            assert_eq!(r.exit_code, 255);
            assert!(r.message.contains("monitor"), "{}", r.message);
            break;
        }
        assert!(Instant::now() < deadline, "loss not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stop and remove still succeed.
    e.svc.stop(&id, Duration::from_secs(1)).await.unwrap();
    e.svc.remove(&id).await.unwrap();
}

/// A wait that fails while the monitor and the init live is asked again
/// once the init has exited (its pidfd), not every few hundred ms and not
/// given up: the exit recorded is the engine's, not the 255 of a lost one.
#[tokio::test]
async fn a_failed_wait_is_asked_again_when_the_init_exits() {
    let e = env();
    let mut init = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = init.id() as i32;
    *e.fake.init.lock().unwrap() = Some(crate::sys::process::ProcRef::of(pid).unwrap());
    *e.fake.failing_waits.lock().unwrap() = 1;
    let id = e.running("web").await;
    let waits = || {
        e.fake
            .calls()
            .iter()
            .filter(|c| c.starts_with("wait "))
            .count()
    };
    // The first wait failed; no second one while the init lives.
    let deadline = Instant::now() + Duration::from_secs(5);
    while waits() < 1 {
        assert!(Instant::now() < deadline, "no wait");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(waits(), 1, "asked again before the init exited");
    assert_eq!(e.svc.status(&id).unwrap().state, State::Running);
    // The init exits; the monitor has its status.
    e.fake.exit(&id, 7);
    init.kill().unwrap();
    init.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = e.svc.status(&id).unwrap();
        if r.state == State::Exited {
            assert_eq!(r.exit_code, 7, "{}", r.message);
            break;
        }
        assert!(Instant::now() < deadline, "exit not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(waits(), 2);
}

#[tokio::test]
async fn update_resources_and_reopen_log_need_a_live_container() {
    let e = env();
    let id = e.running("web").await;
    let res = Resources {
        memory_limit: Some(64 << 20),
        cpu_shares: Some(256),
        ..Default::default()
    };
    e.svc.update_resources(&id, res, None).await.unwrap();
    let mem = std::fs::read_to_string(e.cgroup_dir(&id).join("memory.limit_in_bytes")).unwrap();
    assert_eq!(mem.trim(), (64u64 << 20).to_string());
    assert_eq!(
        e.svc.status(&id).unwrap().resources.memory_limit,
        Some(64 << 20)
    );
    // All or nothing: a bad value changes nothing.
    let bad = Resources {
        memory_limit: Some(32 << 20),
        cpuset_cpus: Some("not-a-cpu-list".into()),
        ..Default::default()
    };
    assert!(e.svc.update_resources(&id, bad, None).await.is_err());
    let mem = std::fs::read_to_string(e.cgroup_dir(&id).join("memory.limit_in_bytes")).unwrap();
    assert_eq!(mem.trim(), (64u64 << 20).to_string());
    e.svc.reopen_log(&id).await.unwrap();
    e.svc.stop(&id, Duration::ZERO).await.unwrap();
    assert_eq!(
        code(e.svc.reopen_log(&id).await),
        crate::error::Kind::FailedPrecondition
    );
    assert_eq!(
        code(
            e.svc
                .update_resources(&id, Resources::default(), None)
                .await
        ),
        crate::error::Kind::FailedPrecondition
    );
    assert_eq!(
        code(e.svc.reopen_log("nope").await),
        crate::error::Kind::NotFound
    );
}

fn exec(id: &str, cmd: &str, timeout: Option<Duration>) -> ExecRequest {
    ExecRequest {
        container_id: id.into(),
        cmd: vec![cmd.into()],
        timeout,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_output_exit_code_timeout_and_drain() {
    let e = env();
    let id = e.running("web").await;
    let out = e
        .svc
        .exec_sync(exec(&id, "echo out; echo err >&2; exit 3", None))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert_eq!(out.exit_code, 3);

    // A background child holding stdout open does not hold the call.
    let t = Instant::now();
    let out = e
        .svc
        .exec_sync(exec(&id, "echo hi; sleep 3 & exit 0", None))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"hi\n");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // The timeout kills the whole process group.
    let marker = e._tmp.path().join("pgid");
    let cmd = format!("echo $$ > {}; sleep 30 & sleep 30", marker.display());
    let t = Instant::now();
    let err = e
        .svc
        .exec_sync(exec(&id, &cmd, Some(Duration::from_millis(300))))
        .await
        .unwrap_err();
    assert_eq!(
        crate::error::Classify::kind(&err),
        crate::error::Kind::DeadlineExceeded
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    let pgid: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(live_in_group(pgid), Vec::<i32>::new(), "exec's group left");

    // Output is capped.
    let out = e
        .svc
        .exec_sync(exec(&id, "head -c 20000000 /dev/zero", None))
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), exec::MAX_OUTPUT);

    e.svc.stop(&id, Duration::ZERO).await.unwrap();
    assert_eq!(
        code(e.svc.exec_sync(exec(&id, "true", None)).await),
        crate::error::Kind::FailedPrecondition
    );
    assert_eq!(
        code(e.svc.exec_sync(exec("0123abcd", "true", None)).await),
        crate::error::Kind::NotFound
    );
}

#[tokio::test]
async fn reconcile_records_exits_and_rolls_back_intents() {
    let e = env();
    let id = e.running("web").await;
    // crius "restarts": a new service on the same store, the engine has
    // lost the container, the monitor wrote its exit file.
    let exit = Exit {
        pid: 1,
        exit_code: 42,
        signal: None,
        finished_at: 77,
    };
    std::fs::write(e.pod.dir.exit_file(&id), serde_json::to_vec(&exit).unwrap()).unwrap();
    assert_eq!(
        e.svc.status(&id).unwrap().exit_code,
        42,
        "the exit file shows at once"
    );
    let mut intent = e.svc.status(&id).unwrap();
    intent.id = crate::ids::new_id();
    intent.state = State::Creating;
    intent.dir = e.svc.settings.dir.join(&intent.id);
    std::fs::create_dir_all(intent.dir.join("u")).unwrap();
    e.store
        .put(record::CONTAINERS, &intent.id, &intent)
        .unwrap();
    let orphan = e.svc.settings.dir.join("a".repeat(64));
    std::fs::create_dir_all(&orphan).unwrap();
    // A claimed container whose init crius was making when it stopped.
    let mut unmade = e.svc.status(&id).unwrap();
    unmade.id = crate::ids::new_id();
    unmade.name = "unmade".into();
    (unmade.state, unmade.init, unmade.claimed) = (State::Created, None, true);
    unmade.dir = e.svc.settings.dir.join(&unmade.id);
    std::fs::create_dir_all(unmade.dir.join("u")).unwrap();
    e.store
        .put(record::CONTAINERS, &unmade.id, &unmade)
        .unwrap();
    let engine2 = Arc::new(Fake::default());
    let svc2 = Arc::new(Containers::new(
        e.store.clone(),
        e.svc.images.clone(),
        e.svc.cgroups.clone(),
        engine2.clone(),
        e.svc.events.clone(),
        e.svc.settings.clone(),
    ));
    reconcile::start(&svc2).await.unwrap();
    // The monitor forgot whatever init it made; StartContainer says why
    // there is none, and the container ends.
    assert!(
        engine2.calls().contains(&format!("remove {}", unmade.id)),
        "{:?}",
        engine2.calls()
    );
    let err = svc2.start(&unmade.id).await.unwrap_err();
    assert_eq!(code::<()>(Err(err)), crate::error::Kind::FailedPrecondition);
    let r = svc2.status(&unmade.id).unwrap();
    assert_eq!((r.state, r.exit_code), (State::Exited, 128));
    assert!(r.message.contains("crius stopped"), "{}", r.message);
    assert!(unmade.dir.exists(), "kept until RemoveContainer");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let r = e.store.get(record::CONTAINERS, &id).unwrap().unwrap();
        if r.state == State::Exited {
            assert_eq!((r.exit_code, r.finished_at), (42, 77));
            break;
        }
        assert!(Instant::now() < deadline, "exit not recorded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        e.store
            .get(record::CONTAINERS, &intent.id)
            .unwrap()
            .is_none()
    );
    assert!(!intent.dir.exists());
    assert!(!orphan.exists());
    assert!(Containers::uses_image(&e.store, IMAGE_ID));
    assert!(!Containers::uses_image(&e.store, "sha256:22"));
}

#[test]
fn log_paths_stay_beneath_the_log_directory() {
    let p = create::log_path("/var/log/pods/x", "c/0.log")
        .unwrap()
        .unwrap();
    assert_eq!(p.full(), PathBuf::from("/var/log/pods/x/c/0.log"));
    assert_eq!(p.rel, PathBuf::from("c/0.log"));
    assert_eq!(create::log_path("", "c/0.log").unwrap(), None);
    assert_eq!(create::log_path("/var/log/pods/x", "").unwrap(), None);
    for bad in ["/tmp/c.log", "../c.log", "c/../../etc/passwd", "c\0.log"] {
        let e = create::log_path("/var/log/pods/x", bad).unwrap_err();
        assert_eq!(e.kind(), Kind::InvalidArgument, "{bad}: {e}");
        assert!(e.to_string().contains("log_path"), "{e}");
    }
}

#[test]
fn signals_by_name_and_number() {
    assert_eq!(create::parse_signal("SIGINT"), Some(libc::SIGINT));
    assert_eq!(create::parse_signal("quit"), Some(libc::SIGQUIT));
    assert_eq!(create::parse_signal("15"), Some(15));
    assert_eq!(create::parse_signal("SIGNOPE"), None);
    assert_eq!(create::parse_signal("0"), None);
}

/// Processes of group `pgid` that are not zombies (an orphan's zombie
/// waits for whoever adopts it).
fn live_in_group(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|&pid| crate::sys::process::live_group(pid) == Some(pgid))
        .collect()
}

/// The next event of `sub` (bounded wait: an event that never comes fails).
async fn next_event(sub: &mut crate::events::Subscriber) -> Arc<crate::events::Event> {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an event within 5s")
        .unwrap()
}

#[tokio::test]
async fn events_follow_the_recorded_states_in_order() {
    use crate::events::Type;
    let e = env();
    let mut sub = e.svc.events.subscribe();
    let id = e.svc.create(e.req("web", 0)).await.unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.id.as_str(), ev.kind), (id.as_str(), Type::Created));
    assert_eq!(ev.pod.as_ref().unwrap().id, e.pod.id, "the pod's status");
    assert_eq!(ev.containers.len(), 1);
    assert_eq!(ev.containers[0].state, State::Created);

    e.svc.start(&id).await.unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.id.as_str(), ev.kind), (id.as_str(), Type::Started));
    assert_eq!(ev.containers[0].state, State::Running);

    // An exit the engine reports on its own (no StopContainer).
    e.fake.exit(&id, 3);
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.id.as_str(), ev.kind), (id.as_str(), Type::Stopped));
    assert_eq!(
        (ev.containers[0].state, ev.containers[0].exit_code),
        (State::Exited, 3)
    );

    // Stopping a stopped container records nothing and says nothing.
    e.svc.stop(&id, Duration::ZERO).await.unwrap();
    e.svc.remove(&id).await.unwrap();
    let ev = next_event(&mut sub).await;
    assert_eq!((ev.id.as_str(), ev.kind), (id.as_str(), Type::Deleted));
    assert!(ev.containers.is_empty(), "the record is gone");
    // Removing again, or an unknown id: no event.
    e.svc.remove(&id).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sub.next())
            .await
            .is_err(),
        "no further event"
    );
}

/// The exit watcher writes EXITED, then emits STOPPED: a stop that reads
/// the written exit in between must not return before that event, or
/// what its caller emits next (a pod's STOPPED, the DELETED of a remove)
/// overtakes it (seen in CI: a pod's STOPPED before its container's).
/// The test reads the store in a tight loop, so its stop often lands in
/// that gap: without the wait, three runs failed in rounds 2, 3 and 11.
/// (RemoveContainer waits the same way; its durable delete is slower
/// than the gap, so no test here catches it there.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_reads_a_just_written_exit_returns_after_its_event() {
    use crate::events::Type;
    use futures::FutureExt;
    let e = env();
    let mut sub = e.svc.events.subscribe();
    for round in 0..40 {
        let id = e.svc.create(e.req(&format!("c{round}"), 0)).await.unwrap();
        made(&e, &id).await;
        e.svc.start(&id).await.unwrap();
        e.fake.exit(&id, 3);
        let deadline = Instant::now() + Duration::from_secs(5);
        while e.store.get(record::CONTAINERS, &id).unwrap().unwrap().state != State::Exited {
            assert!(
                Instant::now() < deadline,
                "round {round}: the exit was never written"
            );
        }
        e.svc.stop(&id, Duration::ZERO).await.unwrap();
        let mut seen = Vec::new();
        while let Some(ev) = sub.next().now_or_never() {
            seen.push(ev.unwrap().kind);
        }
        assert_eq!(
            seen,
            [Type::Created, Type::Started, Type::Stopped],
            "round {round}: the events out when StopContainer returned"
        );
        e.svc.remove(&id).await.unwrap();
        assert_eq!(next_event(&mut sub).await.kind, Type::Deleted);
    }
}

#[tokio::test]
async fn a_failed_creation_and_a_start_failure_announce_only_what_was_visible() {
    use crate::events::Type;
    let e = env();
    let mut sub = e.svc.events.subscribe();
    // A creation that fails before it answers is never visible: no event.
    let mut bad = e.req("bad", 0);
    bad.image = "nothere".into();
    assert!(e.svc.create(bad).await.is_err());
    // A start the engine refuses: created, then stopped (never started).
    let id = e.svc.create(e.req("web", 0)).await.unwrap();
    *e.fake.fail_start.lock().unwrap() = true;
    assert!(e.svc.start(&id).await.is_err());
    let kinds = [next_event(&mut sub).await, next_event(&mut sub).await]
        .iter()
        .map(|ev| (ev.id.clone(), ev.kind))
        .collect::<Vec<_>>();
    assert_eq!(
        kinds,
        [(id.clone(), Type::Created), (id.clone(), Type::Stopped)]
    );
}

#[tokio::test]
async fn an_image_volume_uses_the_images_own_layer_dirs_and_keeps_it_in_use() {
    let e = env();
    let volume = |image: &str| spec::BindMount {
        container_path: "/vol".into(),
        readonly: true,
        image: Some(spec::ImageVolume {
            image: image.into(),
            sub_path: "etc".into(),
        }),
        ..Default::default()
    };
    // Not present: NotFound naming the mount, nothing left.
    let mut r = e.req("web", 0);
    r.config.mounts = vec![volume("nothere")];
    let err = e.svc.create(r).await.unwrap_err();
    assert_eq!(crate::error::Classify::kind(&err), Kind::NotFound);
    assert!(err.to_string().contains("mount /vol"), "{err}");
    assert!(e.store.list(record::CONTAINERS).unwrap().is_empty());

    let mut r = e.req("web", 0);
    r.config.mounts = vec![volume(IMAGE_ID)];
    let id = e.svc.create(r).await.unwrap();
    made(&e, &id).await;
    let launch = e.fake.launches.lock().unwrap()[0].clone();
    let s = e.svc.status(&id).unwrap();
    assert_eq!(launch.volumes.len(), 1);
    let v = &launch.volumes[0];
    assert_eq!(v.layers, launch.overlay.layers, "the rootfs' layer dirs");
    assert_eq!(v.sub_path, PathBuf::from("etc"));
    assert_eq!(v.staging, s.dir.join("v0"));
    assert!(
        v.staging.is_dir(),
        "the staging dir is made with the others"
    );
    let image = s.mounts[0].image.clone().unwrap();
    assert_eq!(
        (image.id.as_str(), image.sub_path.as_str()),
        (IMAGE_ID, "etc")
    );

    // A container that uses an image only as a volume keeps it in use.
    let mut other = s.clone();
    other.id = "other".into();
    other.image_id = "sha256:22".into();
    e.store.put(record::CONTAINERS, &other.id, &other).unwrap();
    e.store.delete(record::CONTAINERS, &id).unwrap();
    assert!(Containers::uses_image(&e.store, IMAGE_ID));
    other.mounts.clear();
    e.store.put(record::CONTAINERS, &other.id, &other).unwrap();
    assert!(!Containers::uses_image(&e.store, IMAGE_ID));
}
