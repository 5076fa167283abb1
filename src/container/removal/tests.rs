//! RemoveContainer's reply before its cleanup, RemovePodSandbox's wait
//! for that cleanup, and the start's release of a cleanup a crash cut short.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::super::test_engine::*;
use super::super::*;

/// A running container of `e`, stopped; its directory.
async fn exited(e: &Env, name: &str) -> (String, PathBuf) {
    let id = e.running(name).await;
    e.svc.stop(&id, Duration::ZERO).await.unwrap();
    let rec = e.svc.status(&id).unwrap();
    assert_eq!(rec.state, State::Exited);
    (id, rec.dir)
}

#[tokio::test]
async fn the_reply_comes_before_the_cleanup_and_the_pod_waits_for_it() {
    let e = env();
    let gate = Arc::new(Notify::new());
    *e.fake.remove_gate.lock().unwrap() = Some(gate.clone());
    let (id, dir) = exited(&e, "web").await;
    tokio::time::timeout(Duration::from_secs(5), e.svc.remove(&id))
        .await
        .expect("RemoveContainer replies without waiting for the monitor")
        .unwrap();
    assert_eq!(
        crate::error::Classify::kind(&e.svc.status(&id).unwrap_err()),
        crate::error::Kind::NotFound
    );
    assert!(e.svc.list(&Filter::default()).unwrap().is_empty());
    assert!(
        e.store.get(record::CONTAINERS, &id).unwrap().is_none(),
        "the record is deleted before the reply"
    );
    assert!(e.cgroup_dir(&id).is_dir(), "released after the reply");
    assert!(dir.is_dir(), "released after the reply");

    // StopPodSandbox does not wait for the pod's cleanups; RemovePodSandbox
    // (which removes the pod cgroup next) does.
    tokio::time::timeout(Duration::from_secs(5), e.svc.stop_pod(&e.pod.id))
        .await
        .expect("StopPodSandbox does not wait for the cleanup")
        .unwrap();
    let (svc, pod) = (e.svc.clone(), e.pod.id.clone());
    let removing = tokio::spawn(async move { svc.remove_pod(&pod).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !removing.is_finished(),
        "RemovePodSandbox waits for the cleanup"
    );
    // Another pod's wait does not.
    tokio::time::timeout(Duration::from_secs(1), e.svc.settle_removals(Some("other")))
        .await
        .expect("no cleanup of that pod");

    gate.notify_one();
    tokio::time::timeout(Duration::from_secs(5), removing)
        .await
        .expect("the pod's wait ends with the cleanup")
        .unwrap()
        .unwrap();
    assert!(!e.cgroup_dir(&id).exists(), "leaf cgroup removed");
    assert!(!dir.exists(), "directory moved into the trash");
    assert!(e.fake.calls().contains(&format!("remove {id}")));
    assert!(e.svc.removals.lock().is_empty(), "no cleanup pending");
}

#[tokio::test]
async fn a_cleanup_cut_short_by_a_crash_is_done_by_the_next_start() {
    let e = env();
    // The monitor never answers: the cleanup stays cut short.
    *e.fake.remove_gate.lock().unwrap() = Some(Arc::new(Notify::new()));
    let (id, dir) = exited(&e, "web").await;
    // What the monitor wrote when it reaped the init.
    let exit_file = e.pod.dir.exit_file(&id);
    std::fs::write(&exit_file, br#"{"pid":1,"exit_code":0,"finished_at":1}"#).unwrap();
    let kept = e.running("kept").await;
    let pod_cg = e.pod.cgroup.clone().unwrap();
    let init_cg = e.svc.cgroups.init_path(&pod_cg, &e.pod.id).unwrap();
    e.svc.cgroups.create(&init_cg, &Default::default()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), e.svc.remove(&id))
        .await
        .expect("RemoveContainer replies without waiting for the monitor")
        .unwrap();
    assert!(e.cgroup_dir(&id).is_dir() && dir.is_dir() && exit_file.exists());

    // crius "restarts": a new service on the same store and host; the
    // pod's monitor (a new fake) still knows the container.
    let fake = Arc::new(Fake::default());
    let svc = Arc::new(Containers::new(
        e.store.clone(),
        e.svc.images.clone(),
        e.svc.cgroups.clone(),
        fake.clone(),
        e.svc.events.clone(),
        e.svc.settings.clone(),
    ));
    reconcile::start(&svc).await.unwrap();
    assert!(
        !e.cgroup_dir(&id).exists(),
        "the removed container's cgroup"
    );
    assert!(!dir.exists(), "the removed container's directory");
    assert!(!exit_file.exists(), "the removed container's exit file");
    assert!(
        fake.calls().contains(&format!("remove {id}")),
        "the monitor is told to forget it: {:?}",
        fake.calls()
    );
    // What records still own stays.
    assert!(
        e.cgroup_dir(&kept).is_dir(),
        "a recorded container's cgroup"
    );
    assert!(svc.status(&kept).is_ok());
    let init_dir = e
        .cg_root
        .join("memory")
        .join(init_cg.path.trim_start_matches('/'));
    assert!(init_dir.is_dir(), "the pod init's cgroup");
}
