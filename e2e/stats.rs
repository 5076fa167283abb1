//! Stats and metrics end to end, against values the test knows: a
//! container that holds N MiB shows at least N MiB of working set; a busy
//! loop's CPU time grows and its rate matches the counters; rx bytes grow
//! by what the test sends into the pod; a created container reads zero;
//! filters select; every metric has as many label values as its
//! descriptor has keys; the Stream* forms answer what List answers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crius::cri::proto::*;
use futures::StreamExt;

use crate::container::{container, create, pod_config, start};
use crate::harness::{self, TestDaemon};
use crate::pod::{self, Client};
use crate::registry::Registry;
use crate::require_registry_tools;

const MIB: u64 = 1 << 20;

/// A daemon sampling every second, with busybox pulled.
pub async fn setup() -> (TestDaemon, Registry, String) {
    let reg = Registry::with_test_images(None);
    let d = harness::start_with_env(
        "[registry]\nconfig_path = \"/nonexistent/crius-e2e-certs.d\"\n[stats]\ninterval_ms = 1000\n",
        &[],
    )
    .await;
    let busybox = reg.image("busybox");
    d.images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: busybox.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    (d, reg, busybox)
}

async fn cstats(rt: &mut Client, id: &str) -> ContainerStats {
    rt.container_stats(ContainerStatsRequest {
        container_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .stats
    .unwrap()
}

async fn pstats(rt: &mut Client, id: &str) -> PodSandboxStats {
    rt.pod_sandbox_stats(PodSandboxStatsRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .stats
    .unwrap()
}

fn v(x: &Option<UInt64Value>) -> u64 {
    x.as_ref().map(|v| v.value).unwrap_or(0)
}

/// Polls ContainerStats until `ok` holds (the sampler runs every second).
async fn wait_stats(
    rt: &mut Client,
    id: &str,
    what: &str,
    mut ok: impl FnMut(&ContainerStats) -> bool,
) -> ContainerStats {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = cstats(rt, id).await;
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first answer from a sampler round newer than `after` (memory's
/// timestamp is the round's) whose CPU values are still the round's own
/// (an answer later than CPU_FRESH after the round reads the CPU counter
/// again, with its own timestamp).
async fn next_sample(rt: &mut Client, id: &str, after: i64) -> ContainerStats {
    wait_stats(rt, id, "a new sample", |s| {
        let round = s.memory.as_ref().unwrap().timestamp;
        round > after && s.cpu.as_ref().unwrap().timestamp == round
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn stats_of_memory_cpu_network_and_writable_layer() {
    require_registry_tools!();
    let (d, _reg, busybox) = setup().await;
    let mut rt = d.runtime().await;
    let logs = d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("stats", NamespaceMode::Pod, &logs))
        .await
        .unwrap();

    // Created, never started: zeros, not an error.
    let idle = create(
        &mut rt,
        &pod,
        container(
            "idle",
            &busybox,
            &["sleep", "1000"],
            NamespaceMode::Container,
        ),
    )
    .await
    .unwrap();
    let s = cstats(&mut rt, &idle).await;
    assert_eq!(s.attributes.as_ref().unwrap().id, idle);
    let (cpu, mem) = (s.cpu.unwrap(), s.memory.unwrap());
    assert!(cpu.timestamp > 0 && mem.timestamp > 0);
    assert_eq!(v(&cpu.usage_core_nano_seconds), 0);
    assert_eq!(v(&mem.working_set_bytes), 0);

    // 32 MiB held in the pod's /dev/shm (tmpfs pages are charged to the
    // cgroup of the process that writes them, and are not reclaimable file
    // cache), 2 MiB written to the writable layer.
    let hold = 32;
    let mem_id = create(
        &mut rt,
        &pod,
        container(
            "mem",
            &busybox,
            &[
                "sh",
                "-c",
                &format!(
                    "dd if=/dev/zero of=/filler bs=1024 count=2048; \
                     dd if=/dev/zero of=/dev/shm/held bs=1048576 count={hold}; exec sleep 1000"
                ),
            ],
            NamespaceMode::Container,
        ),
    )
    .await
    .unwrap();
    start(&mut rt, &mem_id).await;
    let busy = create(
        &mut rt,
        &pod,
        container(
            "busy",
            &busybox,
            &["sh", "-c", "while :; do :; done"],
            NamespaceMode::Container,
        ),
    )
    .await
    .unwrap();
    start(&mut rt, &busy).await;

    let s = wait_stats(&mut rt, &mem_id, "the held memory", |s| {
        v(&s.memory.as_ref().unwrap().working_set_bytes) >= hold * MIB
    })
    .await;
    let m = s.memory.unwrap();
    eprintln!(
        "mem: working set {} MiB, usage {} MiB, rss {} MiB, faults {}",
        v(&m.working_set_bytes) / MIB,
        v(&m.usage_bytes) / MIB,
        v(&m.rss_bytes) / MIB,
        v(&m.page_faults)
    );
    assert!(v(&m.usage_bytes) >= v(&m.working_set_bytes));
    assert!(v(&m.page_faults) > 0);
    let s = wait_stats(&mut rt, &mem_id, "the filler in the writable layer", |s| {
        v(&s.writable_layer.as_ref().unwrap().used_bytes) >= 2 * MIB
    })
    .await;
    let w = s.writable_layer.unwrap();
    assert!(v(&w.inodes_used) >= 2, "{w:?}");
    assert!(w.fs_id.unwrap().mountpoint.ends_with("/containers"));

    // CPU: the rate over one sampler round matches the cumulative counter
    // (two consecutive rounds, a second apart: retried when the polling
    // missed one).
    let mut first = next_sample(&mut rt, &busy, 0).await;
    let (c1, c2) = loop {
        let c1 = first.cpu.unwrap();
        let second = next_sample(&mut rt, &busy, c1.timestamp).await;
        let c2 = second.cpu.unwrap();
        if c2.timestamp - c1.timestamp < 1_800_000_000 {
            break (c1, c2);
        }
        first = second;
    };
    let used = v(&c2.usage_core_nano_seconds) - v(&c1.usage_core_nano_seconds);
    assert!(used > 0, "CPU time of a busy loop grows");
    let expected = used as f64 * 1e9 / (c2.timestamp - c1.timestamp) as f64;
    let rate = v(&c2.usage_nano_cores) as f64;
    eprintln!(
        "busy loop: {:.3} cores over the last round (counters say {:.3})",
        rate / 1e9,
        expected / 1e9
    );
    assert!(
        (rate - expected).abs() <= expected * 0.1 + 1e7,
        "usage_nano_cores {rate} vs counters {expected}"
    );
    // One thread: never more than one core (10% for the window's edges);
    // how much of one it gets depends on the machine's load.
    assert!((1e7..=1.1e9).contains(&rate), "{rate}");

    // Network: datagrams sent from the host into the pod are received.
    let (st, _) = pod::status(&mut rt, &pod).await;
    let ip = st.network.unwrap().ip;
    assert!(!ip.is_empty());
    let before = pstats(&mut rt, &pod).await;
    let net = before.linux.as_ref().unwrap().network.clone().unwrap();
    let eth0 = net.default_interface.unwrap();
    assert_eq!(eth0.name, "eth0");
    let rx0 = v(&eth0.rx_bytes);
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    for _ in 0..100 {
        sock.send_to(&[7u8; 1000], (ip.as_str(), 9)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let p = pstats(&mut rt, &pod).await;
        let eth0 = p
            .linux
            .as_ref()
            .unwrap()
            .network
            .clone()
            .unwrap()
            .default_interface
            .unwrap();
        if v(&eth0.rx_bytes) >= rx0 + 100_000 {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "rx bytes stayed {} (from {rx0})",
            v(&eth0.rx_bytes)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let linux = after.linux.unwrap();
    assert!(
        v(&linux.process.unwrap().process_count) >= 3,
        "init + 2 containers' processes"
    );
    let ids: HashSet<_> = linux
        .containers
        .iter()
        .map(|c| c.attributes.as_ref().unwrap().id.clone())
        .collect();
    assert_eq!(
        ids,
        HashSet::from([idle.clone(), mem_id.clone(), busy.clone()])
    );
    assert!(v(&linux.memory.unwrap().working_set_bytes) >= hold * MIB);
    assert!(v(&linux.cpu.unwrap().usage_core_nano_seconds) > 0);

    // Filters.
    let list = |f: ContainerStatsFilter| {
        let mut rt = rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_container_stats(ListContainerStatsRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .stats
                .into_iter()
                .map(|s| s.attributes.unwrap().id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut all = vec![idle.clone(), mem_id.clone(), busy.clone()];
    all.sort();
    assert_eq!(
        list(ContainerStatsFilter {
            pod_sandbox_id: pod.clone(),
            ..Default::default()
        })
        .await,
        all
    );
    assert_eq!(
        list(ContainerStatsFilter {
            label_selector: HashMap::from([("name".into(), "mem".into())]),
            ..Default::default()
        })
        .await,
        vec![mem_id.clone()]
    );
    assert_eq!(
        list(ContainerStatsFilter {
            id: busy.clone(),
            ..Default::default()
        })
        .await,
        vec![busy.clone()]
    );
    assert!(
        list(ContainerStatsFilter {
            pod_sandbox_id: "0000".into(),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    let err = rt
        .container_stats(ContainerStatsRequest {
            container_id: "0000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = rt
        .pod_sandbox_stats(PodSandboxStatsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

    // The stream forms answer what the lists answer.
    let streamed: Vec<String> = rt
        .stream_container_stats(StreamContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .flat_map(|m| futures::stream::iter(m.unwrap().container_stats))
        .map(|s| s.attributes.unwrap().id)
        .collect()
        .await;
    let mut streamed = streamed;
    streamed.sort();
    assert_eq!(streamed, all);
    let pods: Vec<String> = rt
        .stream_pod_sandbox_stats(StreamPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .flat_map(|m| futures::stream::iter(m.unwrap().pod_sandbox_stats))
        .map(|s| s.attributes.unwrap().id)
        .collect()
        .await;
    assert_eq!(pods, vec![pod.clone()]);

    // Metrics: every descriptor's label keys match its values' count.
    let descs = rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let keys: HashMap<String, usize> = descs
        .iter()
        .map(|d| (d.name.clone(), d.label_keys.len()))
        .collect();
    assert!(
        descs
            .iter()
            .all(|d| !d.help.is_empty() && !d.label_keys.is_empty())
    );
    let metrics = rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let pm = metrics.iter().find(|m| m.pod_sandbox_id == pod).unwrap();
    let mut seen = HashSet::new();
    let all_metrics = pm
        .metrics
        .iter()
        .chain(pm.container_metrics.iter().flat_map(|c| c.metrics.iter()));
    for m in all_metrics {
        assert_eq!(
            Some(&m.label_values.len()),
            keys.get(&m.name),
            "labels of {m:?}"
        );
        seen.insert(m.name.clone());
    }
    let blkio = [
        "container_blkio_device_usage_total",
        "container_fs_reads_bytes_total",
        "container_fs_reads_total",
        "container_fs_writes_bytes_total",
        "container_fs_writes_total",
    ];
    for d in &descs {
        if !blkio.contains(&d.name.as_str()) && !d.name.starts_with("container_pressure_") {
            assert!(seen.contains(&d.name), "no value for {}", d.name);
        }
    }
    let ws = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == mem_id)
        .unwrap()
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .unwrap();
    assert!(v(&ws.value) >= hold * MIB);
    assert_eq!(ws.label_values[4], "mem");
    let rx = pm
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total" && m.label_values[5] == "eth0")
        .unwrap();
    assert!(v(&rx.value) >= rx0 + 100_000);

    pod::stop_remove(&mut rt, &pod).await;
    let gone = rt
        .list_container_stats(ListContainerStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(gone.is_empty(), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_lists_answer_what_list_answers() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            pod::run(&mut rt, pod::config(&format!("s{i}")))
                .await
                .unwrap(),
        );
    }
    let streamed: Vec<String> = rt
        .stream_pod_sandboxes(StreamPodSandboxesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .flat_map(|m| futures::stream::iter(m.unwrap().pod_sandboxes))
        .map(|p| p.id)
        .collect()
        .await;
    let mut listed: Vec<String> = pod::list(&mut rt, None)
        .await
        .into_iter()
        .map(|p| p.id)
        .collect();
    listed.sort();
    let mut streamed = streamed;
    streamed.sort();
    assert_eq!(streamed, listed);
    assert_eq!(streamed.len(), 3);
    let containers = rt
        .stream_containers(StreamContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .collect::<Vec<_>>()
        .await;
    assert!(containers.is_empty(), "no container: no message");
    for id in ids {
        pod::stop_remove(&mut rt, &id).await;
    }
}

/// What `crictl stats` and `crictl statsp` do: two List answers a second
/// apart, from which they compute CPU% (and fail when the CPU timestamp did
/// not move). With a sampler interval of a minute, no round runs between
/// them: the CPU counter is read again for each answer.
#[tokio::test(flavor = "multi_thread")]
async fn two_answers_a_second_apart_show_cpu_moving_between_sampler_rounds() {
    require_registry_tools!();
    let s = crate::container::setup_with("[stats]\ninterval_ms = 60000\n", &[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("crictl", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let busy = create(
        &mut rt,
        &pod,
        container(
            "busy",
            &s.busybox,
            &["sh", "-c", "while :; do :; done"],
            NamespaceMode::Pod,
        ),
    )
    .await
    .unwrap();
    start(&mut rt, &busy).await;
    let both = |rt: &Client| {
        let mut rt = rt.clone();
        async move {
            let c = rt
                .list_container_stats(ListContainerStatsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .stats
                .remove(0);
            let p = rt
                .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                .await
                .unwrap()
                .into_inner()
                .stats
                .remove(0);
            (
                c.cpu.unwrap(),
                p.linux.unwrap().cpu.unwrap(),
                c.memory.unwrap(),
            )
        }
    };
    let (c1, p1, m1) = both(&rt).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (c2, p2, m2) = both(&rt).await;
    for (what, a, b) in [("container", &c1, &c2), ("pod", &p1, &p2)] {
        assert!(
            b.timestamp >= a.timestamp + 900_000_000,
            "{what}: {a:?} then {b:?}"
        );
        assert!(
            v(&b.usage_core_nano_seconds) > v(&a.usage_core_nano_seconds),
            "{what}: {a:?} then {b:?}"
        );
    }
    assert_eq!(m1.timestamp, m2.timestamp, "no sampler round between them");
    pod::stop_remove(&mut rt, &pod).await;
}
