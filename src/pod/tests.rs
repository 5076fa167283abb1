//! The pod service against the fake engine: creation, every failed step
//! undone and named, claim by a retry after the caller gave up, the
//! reaper, a lost monitor, and reconcile after a restart.

use std::time::Duration;

use super::test_engine::env;
use super::*;
use crate::error::Classify;
use crate::monitor::sync::Step;

fn kind<T: std::fmt::Debug>(r: Result<T, Error>) -> Kind {
    r.expect_err("an error").kind()
}

/// RunPodSandbox whose caller gives up while the monitor starts; the
/// creation then goes on by itself.
async fn give_up_on(e: &super::test_engine::Env, name: &str) {
    let gate = Arc::new(tokio::sync::Notify::new());
    *e.fake.gate.lock().unwrap() = Some(gate.clone());
    let gave_up = tokio::time::timeout(
        Duration::from_millis(50),
        e.pods.run(e.spec(name, false), String::new()),
    )
    .await;
    assert!(gave_up.is_err(), "the caller gave up");
    gate.notify_one();
}

/// Waits for the one pod to be READY, and checks it is unclaimed.
async fn finished_unclaimed(e: &super::test_engine::Env) -> String {
    loop {
        let all = e.store.list(record::PODS).unwrap();
        if let Some((id, r)) = all.first()
            && r.state == State::Ready
        {
            assert!(!r.claimed);
            return id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn run_stop_remove() {
    let e = env(Duration::from_secs(600));
    let id = e.pods.run(e.spec("a", false), String::new()).await.unwrap();
    let rec = e.pods.status(&id[..12]).unwrap();
    assert_eq!(rec.state, State::Ready);
    assert!(rec.claimed);
    assert_eq!(rec.monitor, e.fake.monitor(&id), "the monitor is recorded");
    assert!(e.cgroup_dir(&id).is_dir(), "pod cgroup created");
    assert!(e.pod_dir(&id).join("resolv.conf").is_file());
    assert_eq!(e.pods.list(&Filter::default()).unwrap().len(), 1);
    assert_eq!(
        kind(e.pods.run(e.spec("a", false), String::new()).await),
        Kind::AlreadyExists
    );

    e.pods.stop(&id).await.unwrap();
    let rec = e.pods.status(&id).unwrap();
    assert_eq!((rec.state, rec.monitor), (State::NotReady, None));
    assert_eq!(e.fake.monitor(&id), None, "the monitor is stopped");
    e.pods.remove(&id).await.unwrap();
    e.assert_gone(&id);
    assert_eq!(kind(e.pods.status(&id)), Kind::NotFound);
    e.pods
        .remove(&id)
        .await
        .expect("removing an unknown pod succeeds");
    let calls = e.fake.calls();
    assert_eq!(calls[0], format!("start {id}"));
    assert!(
        calls[1..].iter().all(|c| *c == format!("stop {id}")),
        "stop is idempotent: {calls:?}"
    );
}

#[tokio::test]
async fn a_failed_monitor_step_is_named_and_leaves_nothing() {
    let e = env(Duration::from_secs(600));
    *e.fake.fail_start.lock().unwrap() = Some((Step::ApplySysctls, Kind::InvalidArgument));
    let err = e
        .pods
        .run(e.spec("a", false), String::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::InvalidArgument, "the step's kind");
    let msg = crate::error::chain(&err);
    assert!(
        msg.contains("run pod sandbox: step \"apply sysctls\" failed"),
        "{msg}"
    );
    assert!(msg.contains("refused by the fake"), "{msg}");
    assert!(e.store.list(record::PODS).unwrap().is_empty(), "no record");
    let pods = std::fs::read_dir(e.pods.settings.state.join("pods"))
        .unwrap()
        .count();
    assert_eq!(pods, 0, "no pod directory");
    assert!(e.pods.list(&Filter::default()).unwrap().is_empty());
    // The name is free again.
    *e.fake.fail_start.lock().unwrap() = None;
    e.pods.run(e.spec("a", false), String::new()).await.unwrap();
}

#[tokio::test]
async fn a_failed_network_step_undoes_the_monitor_and_the_cgroup() {
    let e = env(Duration::from_secs(600));
    // Its own network namespace, and no CNI config: step 6 fails after the
    // cgroup and the monitor exist.
    let err = e
        .pods
        .run(e.spec("net", true), String::new())
        .await
        .unwrap_err();
    let msg = crate::error::chain(&err);
    assert!(msg.contains("step \"set up pod network\" failed"), "{msg}");
    let calls = e.fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    let id = calls[0].strip_prefix("start ").unwrap().to_string();
    assert_eq!(
        calls[1],
        format!("stop {id}"),
        "the rollback stops the monitor"
    );
    e.assert_gone(&id);
}

#[tokio::test]
async fn a_retry_waits_for_the_creation_under_way_and_claims_it() {
    let e = env(Duration::from_secs(600));
    let gate = Arc::new(tokio::sync::Notify::new());
    *e.fake.gate.lock().unwrap() = Some(gate.clone());
    // The first caller gives up while the monitor starts.
    let first = tokio::time::timeout(
        Duration::from_millis(50),
        e.pods.run(e.spec("slow", false), String::new()),
    )
    .await;
    assert!(first.is_err(), "the caller gave up");
    assert!(
        e.pods.list(&Filter::default()).unwrap().is_empty(),
        "an intent is invisible"
    );
    // A retry arrives while the creation still runs: it waits and shares it.
    let pods = e.pods.clone();
    let spec = e.spec("slow", false);
    let retry = tokio::spawn(async move { pods.run(spec, String::new()).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.notify_one();
    let id = retry.await.unwrap().unwrap();
    assert_eq!(e.fake.calls(), [format!("start {id}")], "one creation");
    assert!(e.pods.status(&id).unwrap().claimed);
}

#[tokio::test]
async fn a_pod_finished_after_its_caller_gave_up_is_claimed_by_the_retry() {
    let e = env(Duration::from_secs(600));
    give_up_on(&e, "late").await;
    // The creation finishes without its caller: READY, unclaimed, hidden.
    let id = finished_unclaimed(&e).await;
    assert!(e.pods.list(&Filter::default()).unwrap().is_empty());
    assert_eq!(
        kind(e.pods.status(&id)),
        Kind::NotFound,
        "hidden from Status"
    );
    let claimed = e
        .pods
        .run(e.spec("late", false), String::new())
        .await
        .unwrap();
    assert_eq!(claimed, id, "the retry gets the same pod");
    assert_eq!(e.pods.list(&Filter::default()).unwrap().len(), 1);
}

#[tokio::test]
async fn an_unclaimed_pod_is_reaped_after_the_bound() {
    let e = env(Duration::ZERO);
    give_up_on(&e, "orphan").await;
    let id = finished_unclaimed(&e).await;
    crate::record::reap_unclaimed(&e.pods).await;
    e.assert_gone(&id);
}

#[tokio::test]
async fn a_lost_monitor_makes_the_pod_notready() {
    let e = env(Duration::from_secs(600));
    let id = e
        .pods
        .run(e.spec("lost", false), String::new())
        .await
        .unwrap();
    e.fake.kill_monitor(&id);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let rec = e.pods.status(&id).unwrap();
        if rec.state == State::NotReady {
            assert!(rec.reason.contains("monitor"), "{}", rec.reason);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still READY");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// After a restart no caller can be waiting: intents and unclaimed pods
/// are rolled back; a claimed pod whose monitor answers is kept READY.
#[tokio::test]
async fn reconcile_rolls_back_intents_and_unclaimed_pods() {
    let e = env(Duration::from_secs(600));
    let kept = e
        .pods
        .run(e.spec("kept", false), String::new())
        .await
        .unwrap();
    let unclaimed = e
        .pods
        .run(e.spec("unclaimed", false), String::new())
        .await
        .unwrap();
    let mut rec = e.store.get(record::PODS, &unclaimed).unwrap().unwrap();
    rec.claimed = false;
    e.store.put(record::PODS, &unclaimed, &rec).unwrap();
    let intent = e
        .pods
        .run(e.spec("intent", false), String::new())
        .await
        .unwrap();
    let mut rec = e.store.get(record::PODS, &intent).unwrap().unwrap();
    rec.state = State::Creating;
    e.store.put(record::PODS, &intent, &rec).unwrap();

    reconcile::start(&e.pods).await.unwrap();
    e.assert_gone(&unclaimed);
    e.assert_gone(&intent);
    let rec = e.pods.status(&kept).unwrap();
    assert_eq!(rec.state, State::Ready, "reattached");
    assert!(e.fake.monitor(&kept).is_some());
    assert!(e.tmp.path().exists());
}

/// The next event of `sub`, within 5 s.
async fn next_event(sub: &mut crate::events::Subscriber) -> (String, crate::events::Type) {
    let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an event within 5s")
        .unwrap();
    (e.id.clone(), e.kind)
}

#[tokio::test]
async fn pod_events_use_the_pod_id_and_follow_the_recorded_states() {
    use crate::events::Type;
    let e = env(Duration::from_secs(600));
    let mut sub = e.pods.events.subscribe();
    let id = e
        .pods
        .run(e.spec("ev", false), String::new())
        .await
        .unwrap();
    assert_eq!(next_event(&mut sub).await, (id.clone(), Type::Created));
    assert_eq!(next_event(&mut sub).await, (id.clone(), Type::Started));
    e.pods.stop(&id).await.unwrap();
    assert_eq!(next_event(&mut sub).await, (id.clone(), Type::Stopped));
    e.pods.stop(&id).await.unwrap();
    e.pods.remove(&id).await.unwrap();
    // A second stop records nothing: the next event is the removal, which
    // carries the pod's last status.
    let ev = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((ev.id.as_str(), ev.kind), (id.as_str(), Type::Deleted));
    assert_eq!(ev.pod.as_ref().unwrap().state, State::NotReady);

    // A lost monitor is recorded NOTREADY: STOPPED.
    let lost = e
        .pods
        .run(e.spec("lost", false), String::new())
        .await
        .unwrap();
    assert_eq!(next_event(&mut sub).await, (lost.clone(), Type::Created));
    assert_eq!(next_event(&mut sub).await, (lost.clone(), Type::Started));
    e.fake.kill_monitor(&lost);
    assert_eq!(next_event(&mut sub).await, (lost.clone(), Type::Stopped));
}

#[tokio::test]
async fn a_pod_nobody_claimed_says_nothing_until_its_retry_claims_it() {
    use crate::events::Type;
    let e = env(Duration::from_secs(600));
    let mut sub = e.pods.events.subscribe();
    give_up_on(&e, "late").await;
    let id = finished_unclaimed(&e).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), sub.next())
            .await
            .is_err(),
        "invisible: no event"
    );
    e.pods
        .run(e.spec("late", false), String::new())
        .await
        .unwrap();
    assert_eq!(next_event(&mut sub).await, (id.clone(), Type::Created));
    assert_eq!(next_event(&mut sub).await, (id, Type::Started));
}

#[tokio::test]
async fn update_resources_records_and_applies_to_a_pod_cgroup_crius_made() {
    let e = env(Duration::from_secs(600));
    let id = e
        .pods
        .run(e.spec("res", false), String::new())
        .await
        .unwrap();
    let res = spec::Resources {
        cpu_period: 100_000,
        cpu_quota: 50_000,
        cpu_shares: 512,
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    };
    let overhead = spec::Resources {
        memory_limit_in_bytes: 16 << 20,
        ..Default::default()
    };
    e.pods
        .update_resources(&id[..12], Some(res.clone()), Some(overhead.clone()))
        .await
        .unwrap();
    let limit = e.cgroup_dir(&id).join("memory.limit_in_bytes");
    assert_eq!(
        std::fs::read_to_string(&limit).unwrap().trim(),
        (80u64 << 20).to_string(),
        "resources plus overhead"
    );
    let rec = e.pods.status(&id).unwrap();
    assert_eq!(rec.spec.resources.as_ref(), Some(&res), "recorded");
    assert_eq!(rec.spec.overhead.as_ref(), Some(&overhead));

    // Bad values: InvalidArgument naming the field, nothing changed.
    let bad = spec::Resources {
        memory_limit_in_bytes: -5,
        ..Default::default()
    };
    let err = e
        .pods
        .update_resources(&id, Some(bad), None)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::InvalidArgument);
    assert!(
        err.to_string().contains("resources.memory_limit_in_bytes"),
        "{err}"
    );
    let too_few_shares = spec::Resources {
        cpu_shares: 1,
        ..Default::default()
    };
    assert_eq!(
        kind(
            e.pods
                .update_resources(&id, Some(too_few_shares), None)
                .await
        ),
        Kind::InvalidArgument
    );
    assert_eq!(e.pods.status(&id).unwrap().spec.resources, Some(res));
    assert_eq!(
        std::fs::read_to_string(&limit).unwrap().trim(),
        (80u64 << 20).to_string()
    );
    assert_eq!(
        kind(e.pods.update_resources("nonexistent", None, None).await),
        Kind::NotFound
    );

    // A pod cgroup crius did not create is recorded, never written.
    let mut rec = e.store.get(record::PODS, &id).unwrap().unwrap();
    rec.cgroup_created = false;
    e.store.put(record::PODS, &id, &rec).unwrap();
    let smaller = spec::Resources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    };
    e.pods
        .update_resources(&id, Some(smaller.clone()), None)
        .await
        .unwrap();
    assert_eq!(e.pods.status(&id).unwrap().spec.resources, Some(smaller));
    assert_eq!(
        std::fs::read_to_string(&limit).unwrap().trim(),
        (80u64 << 20).to_string(),
        "kubelet's cgroup left alone"
    );
}

#[test]
fn pod_resources_saturate_instead_of_overflowing() {
    use super::spec::{PodSpec, Resources};
    let big = Resources {
        memory_limit_in_bytes: i64::MAX,
        cpu_quota: i64::MAX,
        ..Default::default()
    };
    let spec = PodSpec {
        resources: Some(big.clone()),
        overhead: Some(big),
        ..Default::default()
    };
    let r = super::create::pod_resources(&spec);
    assert_eq!(r.memory_limit, Some(i64::MAX));
    assert_eq!(r.cpu_quota, Some(i64::MAX));
}
