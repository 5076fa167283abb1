//! The foundation: Version, Status, RuntimeConfig, UpdateRuntimeConfig,
//! only the checkpoint RPCs UNIMPLEMENTED, deadlines, shutdown and refusal to start.

use std::time::Duration;

use crius::cri::proto::*;
use tonic::Code;

use crate::harness::{TestDaemon, connect, run_crius};

#[tokio::test(flavor = "multi_thread")]
async fn version_names_crius_and_v1() {
    let d = TestDaemon::start("").await;
    let v = d
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "crius");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_conditions_handlers_and_config() {
    let d = TestDaemon::start("").await;
    let s = d
        .runtime()
        .await
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conditions = s.status.unwrap().conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(runtime.status);
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    if !network.status {
        assert!(!network.reason.is_empty() && !network.message.is_empty());
    }
    assert!(
        s.runtime_handlers
            .iter()
            .any(|h| h.name.is_empty() && h.features.is_some()),
        "the default handler must be listed: {:?}",
        s.runtime_handlers
    );
    assert!(s.features.is_some());
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["stateDir"], d.state.display().to_string());
    assert_eq!(config["root"], d.root.display().to_string());

    let quiet = d
        .runtime()
        .await
        .status(StatusRequest { verbose: false })
        .await
        .unwrap();
    assert!(quiet.into_inner().info.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_config_reports_the_configured_driver() {
    let d = TestDaemon::start("").await;
    let r = d
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().linux.unwrap().cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );

    let d = TestDaemon::start("[cgroup]\ndriver = \"systemd\"\n").await;
    let r = d
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().linux.unwrap().cgroup_driver,
        CgroupDriver::Systemd as i32
    );
}

fn pod_cidr_update(cidr: &str) -> UpdateRuntimeConfigRequest {
    UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn update_runtime_config_keeps_the_pod_cidr() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    rt.update_runtime_config(pod_cidr_update("10.244.1.0/24"))
        .await
        .unwrap();
    let s = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["podCIDR"], "10.244.1.0/24");

    let err = rt
        .update_runtime_config(pod_cidr_update("10.244.1.0/99"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// Every CRI v1 RPC of the vendored proto, called with an empty request:
/// only the checkpoint ones answer UNIMPLEMENTED, and they say why.
#[tokio::test(flavor = "multi_thread")]
async fn only_the_checkpoint_rpcs_answer_unimplemented() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let mut im = d.images().await;
    macro_rules! code {
        ($call:expr) => {
            match $call.await {
                Ok(_) => Code::Ok,
                Err(s) => s.code(),
            }
        };
    }
    let answers: Vec<(&str, Code)> = vec![
        ("Version", code!(rt.version(VersionRequest::default()))),
        (
            "RunPodSandbox",
            code!(rt.run_pod_sandbox(RunPodSandboxRequest::default())),
        ),
        (
            "StopPodSandbox",
            code!(rt.stop_pod_sandbox(StopPodSandboxRequest::default())),
        ),
        (
            "RemovePodSandbox",
            code!(rt.remove_pod_sandbox(RemovePodSandboxRequest::default())),
        ),
        (
            "PodSandboxStatus",
            code!(rt.pod_sandbox_status(PodSandboxStatusRequest::default())),
        ),
        (
            "ListPodSandbox",
            code!(rt.list_pod_sandbox(ListPodSandboxRequest::default())),
        ),
        (
            "StreamPodSandboxes",
            code!(rt.stream_pod_sandboxes(StreamPodSandboxesRequest::default())),
        ),
        (
            "CreateContainer",
            code!(rt.create_container(CreateContainerRequest::default())),
        ),
        (
            "StartContainer",
            code!(rt.start_container(StartContainerRequest::default())),
        ),
        (
            "StopContainer",
            code!(rt.stop_container(StopContainerRequest::default())),
        ),
        (
            "RemoveContainer",
            code!(rt.remove_container(RemoveContainerRequest::default())),
        ),
        (
            "ListContainers",
            code!(rt.list_containers(ListContainersRequest::default())),
        ),
        (
            "StreamContainers",
            code!(rt.stream_containers(StreamContainersRequest::default())),
        ),
        (
            "ContainerStatus",
            code!(rt.container_status(ContainerStatusRequest::default())),
        ),
        (
            "UpdateContainerResources",
            code!(rt.update_container_resources(UpdateContainerResourcesRequest::default())),
        ),
        (
            "ReopenContainerLog",
            code!(rt.reopen_container_log(ReopenContainerLogRequest::default())),
        ),
        ("ExecSync", code!(rt.exec_sync(ExecSyncRequest::default()))),
        ("Exec", code!(rt.exec(ExecRequest::default()))),
        ("Attach", code!(rt.attach(AttachRequest::default()))),
        (
            "PortForward",
            code!(rt.port_forward(PortForwardRequest::default())),
        ),
        (
            "ContainerStats",
            code!(rt.container_stats(ContainerStatsRequest::default())),
        ),
        (
            "ListContainerStats",
            code!(rt.list_container_stats(ListContainerStatsRequest::default())),
        ),
        (
            "StreamContainerStats",
            code!(rt.stream_container_stats(StreamContainerStatsRequest::default())),
        ),
        (
            "PodSandboxStats",
            code!(rt.pod_sandbox_stats(PodSandboxStatsRequest::default())),
        ),
        (
            "ListPodSandboxStats",
            code!(rt.list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())),
        ),
        (
            "StreamPodSandboxStats",
            code!(rt.stream_pod_sandbox_stats(StreamPodSandboxStatsRequest::default())),
        ),
        (
            "UpdateRuntimeConfig",
            code!(rt.update_runtime_config(UpdateRuntimeConfigRequest::default())),
        ),
        ("Status", code!(rt.status(StatusRequest::default()))),
        (
            "GetContainerEvents",
            code!(rt.get_container_events(GetEventsRequest::default())),
        ),
        (
            "ListMetricDescriptors",
            code!(rt.list_metric_descriptors(ListMetricDescriptorsRequest::default())),
        ),
        (
            "ListPodSandboxMetrics",
            code!(rt.list_pod_sandbox_metrics(ListPodSandboxMetricsRequest::default())),
        ),
        (
            "StreamPodSandboxMetrics",
            code!(rt.stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest::default())),
        ),
        (
            "RuntimeConfig",
            code!(rt.runtime_config(RuntimeConfigRequest::default())),
        ),
        (
            "UpdatePodSandboxResources",
            code!(rt.update_pod_sandbox_resources(UpdatePodSandboxResourcesRequest::default())),
        ),
        (
            "ListImages",
            code!(im.list_images(ListImagesRequest::default())),
        ),
        (
            "StreamImages",
            code!(im.stream_images(StreamImagesRequest::default())),
        ),
        (
            "ImageStatus",
            code!(im.image_status(ImageStatusRequest::default())),
        ),
        (
            "PullImage",
            code!(im.pull_image(PullImageRequest::default())),
        ),
        (
            "RemoveImage",
            code!(im.remove_image(RemoveImageRequest::default())),
        ),
        (
            "ImageFsInfo",
            code!(im.image_fs_info(ImageFsInfoRequest::default())),
        ),
    ];
    let checkpoint = [
        (
            "CheckpointContainer",
            rt.checkpoint_container(CheckpointContainerRequest::default())
                .await
                .map(drop),
        ),
        (
            "CheckpointPod",
            rt.checkpoint_pod(CheckpointPodRequest::default())
                .await
                .map(drop),
        ),
        (
            "RestorePod",
            rt.restore_pod(RestorePodRequest::default()).await.map(drop),
        ),
    ];
    // Every RPC of the proto is called above.
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/proto/pkg/apis/runtime/v1/api.proto"
    ))
    .unwrap();
    let mut in_proto: Vec<&str> = proto
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .map(|l| l.split('(').next().unwrap().trim())
        .collect();
    let mut called: Vec<&str> = answers
        .iter()
        .map(|(n, _)| *n)
        .chain(checkpoint.iter().map(|(n, _)| *n))
        .collect();
    in_proto.sort();
    called.sort();
    assert_eq!(called, in_proto, "every RPC of the proto, once");

    for (rpc, code) in &answers {
        assert_ne!(*code, Code::Unimplemented, "{rpc} answers UNIMPLEMENTED");
    }
    for (rpc, answer) in checkpoint {
        let err = answer.unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented, "{rpc}");
        assert!(err.message().contains(rpc), "{}", err.message());
        assert!(
            err.message().contains("criu check"),
            "says why: {}",
            err.message()
        );
    }
}

/// A unary Version call over raw HTTP/2 whose request body never arrives, so
/// the handler waits until the deadline sent in `grpc-timeout`. (A tonic
/// client would enforce the same deadline itself and race the server.)
/// Returns the grpc-status code the server answered.
async fn stalled_version_call(socket: std::path::PathBuf, timeout: &'static str) -> i32 {
    use http_body_util::StreamBody;
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = StreamBody::new(futures::stream::pending::<
        Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
    >());
    let req = http::Request::post("http://crius/runtime.v1.RuntimeService/Version")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(body)
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    // A trailers-only answer carries grpc-status in the headers.
    resp.headers()["grpc-status"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_deadline_answers_deadline_exceeded() {
    let d = TestDaemon::start("").await;
    let code = stalled_version_call(d.socket.clone(), "200m").await;
    assert_eq!(code, Code::DeadlineExceeded as i32);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_rpcs_finish_and_removes_the_socket() {
    let mut d = TestDaemon::start("").await;
    let in_flight = tokio::spawn(stalled_version_call(d.socket.clone(), "1500m"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::block_in_place(|| d.signal_and_wait(15, Duration::from_secs(10)))
        .expect("crius exits on SIGTERM");
    assert!(status.success(), "exit status {status}");
    // The RPC got its own answer instead of a broken connection.
    assert_eq!(in_flight.await.unwrap(), Code::DeadlineExceeded as i32);
    assert!(!d.socket.exists(), "socket removed on shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_socket_is_replaced() {
    let mut d = TestDaemon::start("").await;
    tokio::task::block_in_place(|| d.signal_and_wait(9, Duration::from_secs(10))).unwrap();
    assert!(d.socket.exists(), "SIGKILL leaves the socket file behind");
    d.spawn();
    d.wait_ready().await;
    assert!(connect(&d.socket).await.is_ok());
}

#[test]
fn refuses_to_start_on_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("crius.toml");
    std::fs::write(&config, "[network]\nconfdir = \"/x\"\n").unwrap();
    let sock = dir.path().join("s.sock");
    let (ok, stderr) = run_crius(&[
        "serve",
        "--config",
        config.to_str().unwrap(),
        "--listen",
        sock.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("confdir"),
        "the unknown key is named: {stderr}"
    );
    assert!(!sock.exists());
}

#[test]
fn refuses_to_start_on_a_socket_path_it_cannot_create() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let sock = file.join("crius.sock");
    let (ok, stderr) = run_crius(&[
        "serve",
        "--listen",
        sock.to_str().unwrap(),
        "--root",
        dir.path().join("root").to_str().unwrap(),
        "--state",
        dir.path().join("state").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(stderr.contains("socket directory"), "{stderr}");
}

#[test]
fn config_default_prints_a_config_that_parses_to_the_defaults() {
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("# "), "commented");
    assert_eq!(
        crius::config::Config::parse(&text).unwrap(),
        crius::config::Config::default()
    );
}
