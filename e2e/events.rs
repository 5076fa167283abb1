//! GetContainerEvents and UpdatePodSandboxResources end to end: events
//! arrive in order for a pod and its containers (an exit on its own
//! included), each with the pod's and containers' statuses; a subscriber
//! that never reads stalls nothing and is dropped with an error; a restart
//! sends no event for a state that did not change; pod resources land in
//! the pod cgroup crius made.

use std::time::{Duration, Instant};

use crius::cri::proto::runtime_service_client::RuntimeServiceClient;
use crius::cri::proto::*;
use futures::StreamExt;
use tonic::Code;

use crate::container::{container, create, pod_config, setup_with, start, wait_state};
use crate::pod::{self, Client};
use crate::require_registry_tools;

type Events = tonic::Streaming<ContainerEventResponse>;

async fn subscribe(rt: &mut Client) -> Events {
    rt.get_container_events(GetEventsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The next event, within `limit`.
async fn next(events: &mut Events, limit: Duration) -> Option<ContainerEventResponse> {
    match tokio::time::timeout(limit, events.next()).await {
        Ok(Some(Ok(e))) => Some(e),
        Ok(Some(Err(status))) => panic!("event stream failed: {status}"),
        Ok(None) => panic!("event stream ended"),
        Err(_) => None,
    }
}

/// Events until (and with) the one `last` matches, as (id, type) pairs.
async fn until(
    events: &mut Events,
    mut last: impl FnMut(&ContainerEventResponse) -> bool,
) -> Vec<ContainerEventResponse> {
    let mut out = Vec::new();
    loop {
        let e = next(events, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("no event within 60s after {:?}", summary(&out)));
        let done = last(&e);
        out.push(e);
        if done {
            return out;
        }
    }
}

fn kind(e: &ContainerEventResponse) -> ContainerEventType {
    ContainerEventType::try_from(e.container_event_type).unwrap()
}

fn summary(events: &[ContainerEventResponse]) -> Vec<(String, ContainerEventType)> {
    events
        .iter()
        .map(|e| (e.container_id[..12].to_string(), kind(e)))
        .collect()
}

/// The status of container `id` in event `e`.
fn status_in<'a>(e: &'a ContainerEventResponse, id: &str) -> Option<&'a ContainerStatus> {
    e.containers_statuses.iter().find(|c| c.id == id)
}

#[tokio::test(flavor = "multi_thread")]
async fn events_arrive_in_order_with_the_statuses() {
    use ContainerEventType::*;
    require_registry_tools!();
    let s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;
    let mut events = subscribe(&mut rt).await;
    let mut second = subscribe(&mut s.d.runtime().await).await;
    let logs = s.d.dir.path().join("logs");

    let pod = pod::run(&mut rt, pod_config("events", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let web = create(
        &mut rt,
        &pod,
        container("web", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod),
    )
    .await
    .unwrap();
    start(&mut rt, &web).await;
    rt.stop_container(StopContainerRequest {
        container_id: web.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(RemoveContainerRequest {
        container_id: web.clone(),
    })
    .await
    .unwrap();
    // An exit nobody asked for: STOPPED when the monitor reports it.
    let quits = create(
        &mut rt,
        &pod,
        container(
            "quits",
            &s.busybox,
            &["sh", "-c", "exit 3"],
            NamespaceMode::Pod,
        ),
    )
    .await
    .unwrap();
    start(&mut rt, &quits).await;
    wait_state(
        &mut rt,
        &quits,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await;
    pod::stop_remove(&mut rt, &pod).await;

    let got = until(&mut events, |e| {
        e.container_id == pod && kind(e) == ContainerDeletedEvent
    })
    .await;
    let expected = [
        (&pod, ContainerCreatedEvent),
        (&pod, ContainerStartedEvent),
        (&web, ContainerCreatedEvent),
        (&web, ContainerStartedEvent),
        (&web, ContainerStoppedEvent),
        (&web, ContainerDeletedEvent),
        (&quits, ContainerCreatedEvent),
        (&quits, ContainerStartedEvent),
        (&quits, ContainerStoppedEvent),
        // StopPodSandbox, then RemovePodSandbox removes the containers
        // before the pod.
        (&pod, ContainerStoppedEvent),
        (&quits, ContainerDeletedEvent),
        (&pod, ContainerDeletedEvent),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(id, k)| (id[..12].to_string(), *k))
        .collect();
    assert_eq!(summary(&got), expected);
    // A second subscriber sees the same sequence.
    let again = until(&mut second, |e| {
        e.container_id == pod && kind(e) == ContainerDeletedEvent
    })
    .await;
    assert_eq!(summary(&again), expected);

    // Every event carries the pod's status; the container's own status is
    // the state the event reports.
    for e in &got {
        let p = e.pod_sandbox_status.as_ref().expect("pod status");
        assert_eq!(p.id, pod);
        assert_eq!(p.metadata.as_ref().unwrap().uid, "uid-events");
        assert!(e.created_at > 0);
    }
    let state_of = |i: usize, id: &str| status_in(&got[i], id).map(|c| c.state);
    assert_eq!(state_of(1, &pod), None, "a pod is not a container");
    assert_eq!(
        got[1].pod_sandbox_status.as_ref().unwrap().state,
        PodSandboxState::SandboxReady as i32
    );
    assert_eq!(
        state_of(2, &web),
        Some(ContainerState::ContainerCreated as i32)
    );
    assert_eq!(
        state_of(3, &web),
        Some(ContainerState::ContainerRunning as i32)
    );
    assert_eq!(
        state_of(4, &web),
        Some(ContainerState::ContainerExited as i32)
    );
    assert_eq!(state_of(5, &web), None, "removed");
    let quit = status_in(&got[8], &quits).unwrap();
    assert_eq!(
        (quit.state, quit.exit_code),
        (ContainerState::ContainerExited as i32, 3)
    );
    assert_eq!(
        got[9].pod_sandbox_status.as_ref().unwrap().state,
        PodSandboxState::SandboxNotready as i32
    );
    assert_eq!(
        state_of(9, &quits),
        Some(ContainerState::ContainerExited as i32)
    );
    assert_eq!(
        got[11].pod_sandbox_status.as_ref().unwrap().state,
        PodSandboxState::SandboxNotready as i32,
        "a removed pod's last status"
    );
}

/// A client whose HTTP/2 windows are 1 KiB: a stream it does not read
/// stops the server from sending after about one event.
async fn stingy_client(socket: &std::path::Path) -> Client {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://crius.invalid")
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1024)
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    RuntimeServiceClient::new(channel)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_stalls_nothing_and_is_dropped() {
    use ContainerEventType::*;
    require_registry_tools!();
    let s = setup_with("[stats]\nevents_buffer = 4\n", &[]).await;
    let mut rt = s.d.runtime().await;
    let mut stalled = subscribe(&mut stingy_client(&s.d.socket).await).await;
    let mut reader = subscribe(&mut rt).await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("stall", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    // 2 pod events + 4 per container: far more than the buffer of 4 and
    // than a 1 KiB window holds.
    let mut ids = Vec::new();
    for i in 0..4 {
        let t = Instant::now();
        let id = create(
            &mut rt,
            &pod,
            container(
                &format!("c{i}"),
                &s.busybox,
                &["sleep", "1000"],
                NamespaceMode::Pod,
            ),
        )
        .await
        .unwrap();
        start(&mut rt, &id).await;
        rt.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        eprintln!(
            "container {i}: create, start, remove took {:?}",
            t.elapsed()
        );
        ids.push(id);
    }
    // The reader got everything, in order.
    let got = until(&mut reader, |e| {
        e.container_id == ids[3] && kind(e) == ContainerDeletedEvent
    })
    .await;
    assert_eq!(got.len(), 2 + 4 * 4, "{:?}", summary(&got));

    // The stalled subscriber: whatever the transport held, then an error
    // saying it fell behind; its stream ends there.
    let deadline = Instant::now() + Duration::from_secs(30);
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(30), stalled.next()).await {
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(status))) => break status,
            Ok(None) => panic!("the stalled stream ended without an error"),
            Err(_) => panic!("the stalled stream neither answered nor failed"),
        }
        assert!(Instant::now() < deadline);
    };
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("fell"), "{}", err.message());
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(5), stalled.next()).await,
        Ok(None)
    ));
    // The runtime goes on: a new subscriber works.
    let mut fresh = subscribe(&mut rt).await;
    pod::stop_remove(&mut rt, &pod).await;
    let e = next(&mut fresh, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (e.container_id.as_str(), kind(&e)),
        (pod.as_str(), ContainerStoppedEvent)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_sends_no_event_for_an_unchanged_state() {
    use ContainerEventType::*;
    require_registry_tools!();
    let mut s = setup_with("", &[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("restart", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let id = create(
        &mut rt,
        &pod,
        container("web", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod),
    )
    .await
    .unwrap();
    start(&mut rt, &id).await;
    // An open subscription does not hold the shutdown: it ends.
    let mut open = subscribe(&mut rt).await;
    tokio::task::block_in_place(|| s.d.signal_and_wait(15, Duration::from_secs(10)))
        .expect("crius stops on SIGTERM within 10s");
    match tokio::time::timeout(Duration::from_secs(5), open.next()).await {
        Ok(Some(Err(status))) => assert_eq!(status.code(), Code::Unavailable, "{status}"),
        Ok(None) => {}
        other => panic!("the subscription did not end: {other:?}"),
    }
    drop(rt);
    s.d.spawn();
    s.d.wait_ready().await;
    let mut rt = s.d.runtime().await;
    let mut events = subscribe(&mut rt).await;
    if let Some(e) = next(&mut events, Duration::from_secs(3)).await {
        panic!("an event nobody caused: {:?}", summary(&[e]));
    }
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let e = next(&mut events, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (e.container_id.as_str(), kind(&e)),
        (id.as_str(), ContainerStoppedEvent)
    );
    pod::stop_remove(&mut rt, &pod).await;
}

/// The pod cgroup's memory limit, from the path PodSandboxStatus shows
/// (cgroup v2 or v1's memory hierarchy).
fn pod_memory_limit(cgroup_path: &str) -> String {
    let rel = cgroup_path.trim_start_matches('/');
    let v2 = std::path::Path::new("/sys/fs/cgroup")
        .join(rel)
        .join("memory.max");
    let v1 = std::path::Path::new("/sys/fs/cgroup/memory")
        .join(rel)
        .join("memory.limit_in_bytes");
    std::fs::read_to_string(&v2)
        .or_else(|_| std::fs::read_to_string(&v1))
        .unwrap_or_else(|e| panic!("read the memory limit of {cgroup_path}: {e}"))
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn update_pod_sandbox_resources_applies_to_the_pod_cgroup() {
    let d = crate::harness::TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let mut c = pod::config("resize");
    c.linux.get_or_insert_default().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 128 << 20,
        ..Default::default()
    });
    let id = pod::run(&mut rt, c).await.unwrap();
    let (_, info) = pod::status(&mut rt, &id).await;
    let cgroup = info["cgroupPath"].as_str().unwrap().to_string();
    assert_eq!(info["cgroupCreated"], true);
    assert_eq!(pod_memory_limit(&cgroup), (128u64 << 20).to_string());

    let update = |resources, overhead| UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: id.clone(),
        resources,
        overhead,
    };
    let memory = |bytes| {
        Some(LinuxContainerResources {
            memory_limit_in_bytes: bytes,
            cpu_period: 100_000,
            cpu_quota: 50_000,
            ..Default::default()
        })
    };
    rt.update_pod_sandbox_resources(update(memory(64 << 20), memory(16 << 20)))
        .await
        .unwrap();
    assert_eq!(
        pod_memory_limit(&cgroup),
        (80u64 << 20).to_string(),
        "resources plus overhead"
    );
    let (_, info) = pod::status(&mut rt, &id).await;
    assert_eq!(
        info["config"]["resources"]["memory_limit_in_bytes"],
        64 << 20,
        "recorded: {info}"
    );
    assert_eq!(
        info["config"]["overhead"]["memory_limit_in_bytes"],
        16 << 20
    );

    let err = rt
        .update_pod_sandbox_resources(update(memory(-2), None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("memory_limit_in_bytes"),
        "{}",
        err.message()
    );
    assert_eq!(
        pod_memory_limit(&cgroup),
        (80u64 << 20).to_string(),
        "unchanged"
    );
    let err = rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "0123456789abcdef".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = rt
        .update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    pod::stop_remove(&mut rt, &id).await;
}
