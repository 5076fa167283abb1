//! A minimal CRI client for the footprint measurement (hack/footprint.sh)
//! where crictl is not installed:
//!   `cri-pods SOCKET up N IMAGE [LOGDIR]`  pulls IMAGE, then runs N pods
//!                                 in the host network, each with one
//!                                 `sleep` container; with LOGDIR each pod
//!                                 logs under LOGDIR/<i> and its container
//!                                 prints one line to its CRI log first
//!   `cri-pods SOCKET stats ROUNDS` calls ListPodSandboxStats and
//!                                 ListContainerStats ROUNDS times each and
//!                                 prints their latency (first call, p50,
//!                                 p95, max)
//!   `cri-pods SOCKET down`        stops and removes every pod

use anyhow::Context;
use crius::cri::proto::image_service_client::ImageServiceClient;
use crius::cri::proto::runtime_service_client::RuntimeServiceClient;
use crius::cri::proto::*;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

async fn connect(socket: String) -> anyhow::Result<Channel> {
    Endpoint::from_static("http://crius.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(socket)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .context("connect to the CRI socket")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: cri-pods SOCKET up N IMAGE [LOGDIR] | cri-pods SOCKET stats ROUNDS | cri-pods SOCKET down";
    let (socket, cmd) = match &args[..] {
        [_, socket, cmd, ..] => (socket.clone(), cmd.as_str()),
        _ => anyhow::bail!(usage),
    };
    let channel = connect(socket).await?;
    let mut rt = RuntimeServiceClient::new(channel.clone());
    match (cmd, &args[3..]) {
        ("up", [n, image, logs @ ..]) if logs.len() <= 1 => {
            let n: usize = n.parse().context("N")?;
            let logs = logs.first();
            let image = ImageSpec {
                image: image.clone(),
                ..Default::default()
            };
            ImageServiceClient::new(channel)
                .pull_image(PullImageRequest {
                    image: Some(image.clone()),
                    ..Default::default()
                })
                .await
                .context("pull")?;
            for i in 0..n {
                let config = PodSandboxConfig {
                    metadata: Some(PodSandboxMetadata {
                        name: format!("footprint-{i}"),
                        uid: format!("footprint-uid-{i}"),
                        namespace: "footprint".into(),
                        attempt: 0,
                    }),
                    linux: Some(LinuxPodSandboxConfig {
                        security_context: Some(LinuxSandboxSecurityContext {
                            namespace_options: Some(NamespaceOption {
                                network: NamespaceMode::Node as i32,
                                pid: NamespaceMode::Pod as i32,
                                ipc: NamespaceMode::Pod as i32,
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    log_directory: logs.map(|d| format!("{d}/{i}")).unwrap_or_default(),
                    ..Default::default()
                };
                let (command, log_path) = match logs {
                    Some(_) => (
                        vec!["sh".into(), "-c".into(), "echo up; exec sleep 3600".into()],
                        "sleep.log".to_string(),
                    ),
                    None => (vec!["sleep".into(), "3600".into()], String::new()),
                };
                let pod = rt
                    .run_pod_sandbox(RunPodSandboxRequest {
                        config: Some(config.clone()),
                        ..Default::default()
                    })
                    .await
                    .context("RunPodSandbox")?
                    .into_inner()
                    .pod_sandbox_id;
                let c = rt
                    .create_container(CreateContainerRequest {
                        pod_sandbox_id: pod.clone(),
                        config: Some(ContainerConfig {
                            metadata: Some(ContainerMetadata {
                                name: "sleep".into(),
                                attempt: 0,
                            }),
                            image: Some(image.clone()),
                            command,
                            log_path,
                            ..Default::default()
                        }),
                        sandbox_config: Some(config),
                    })
                    .await
                    .context("CreateContainer")?
                    .into_inner()
                    .container_id;
                rt.start_container(StartContainerRequest { container_id: c })
                    .await
                    .context("StartContainer")?;
                println!("{pod}");
            }
        }
        ("stats", [rounds]) => {
            let rounds: usize = rounds.parse().context("ROUNDS")?;
            let mut pods = Vec::new();
            let mut containers = Vec::new();
            let mut counts = (0, 0);
            for _ in 0..rounds.max(1) {
                let t = std::time::Instant::now();
                counts.0 = rt
                    .list_pod_sandbox_stats(ListPodSandboxStatsRequest::default())
                    .await
                    .context("ListPodSandboxStats")?
                    .into_inner()
                    .stats
                    .len();
                pods.push(t.elapsed());
                let t = std::time::Instant::now();
                counts.1 = rt
                    .list_container_stats(ListContainerStatsRequest::default())
                    .await
                    .context("ListContainerStats")?
                    .into_inner()
                    .stats
                    .len();
                containers.push(t.elapsed());
            }
            print_latency("ListPodSandboxStats", counts.0, &pods);
            print_latency("ListContainerStats", counts.1, &containers);
        }
        ("down", []) => {
            let pods = rt
                .list_pod_sandbox(ListPodSandboxRequest::default())
                .await?
                .into_inner()
                .items;
            for p in pods {
                rt.stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: p.id.clone(),
                })
                .await
                .context("StopPodSandbox")?;
                rt.remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: p.id,
                })
                .await
                .context("RemovePodSandbox")?;
            }
        }
        _ => anyhow::bail!(usage),
    }
    Ok(())
}

/// One line: the first call, then p50, p95 and max of every call, in ms.
fn print_latency(rpc: &str, items: usize, samples: &[std::time::Duration]) {
    let ms = |d: &std::time::Duration| d.as_secs_f64() * 1000.0;
    let first = samples.first().map(ms).unwrap_or(0.0);
    let mut sorted: Vec<f64> = samples.iter().map(ms).collect();
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    println!(
        "{rpc:<20} {items:>4} items  first {first:7.2} ms  p50 {:7.2} ms  p95 {:7.2} ms  max {:7.2} ms  ({} calls)",
        at(0.5),
        at(0.95),
        at(1.0),
        sorted.len()
    );
}
