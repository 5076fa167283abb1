//! `rtt`: the round trip of one small RPC, repeated: Version, and
//! PodSandboxStatus of one host-network pod (no CNI), each timed in this
//! process, interleaved; for where the time of an in-memory RPC goes (client, socket,
//! server), against any CRI runtime.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use crius::cri::proto::runtime_service_client::RuntimeServiceClient;
use crius::cri::proto::*;

use crate::stats::Summary;

pub struct Args {
    pub socket: PathBuf,
    pub n: usize,
    /// Also PodSandboxStatus of a host-network pod made for it.
    pub pod: bool,
    /// The pod's cgroup parent.
    pub cgroup_parent: String,
    /// Pod lifecycles whose PodSandboxStatus right after RunPodSandbox is
    /// timed (as in `run`).
    pub cycles: usize,
    /// Other pods that exist while the loop runs (a node's pods).
    pub others: usize,
}

fn report(name: &str, us: &[f64]) {
    let s = Summary::of(us);
    let mut v = us.to_vec();
    v.sort_by(f64::total_cmp);
    let p10 = v.get(v.len() / 10).copied().unwrap_or(f64::NAN);
    println!(
        "{name}: n {} p10 {p10:.1} us, p50 {:.1} us, p95 {:.1} us, max {:.1} us",
        s.n, s.p50, s.p95, s.max
    );
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let ch = crate::ready(a.socket.clone()).await?;
    let mut rt = RuntimeServiceClient::new(ch);
    let mut version = Vec::with_capacity(a.n);
    let time_version = async |rt: &mut RuntimeServiceClient<_>, us: &mut Vec<f64>| {
        let t = Instant::now();
        rt.version(VersionRequest::default())
            .await
            .context("Version")?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
        anyhow::Ok(())
    };
    if !a.pod {
        for _ in 0..a.n {
            time_version(&mut rt, &mut version).await?;
        }
        report("Version", &version);
        return Ok(());
    }
    let mut after_run = Vec::with_capacity(a.cycles);
    for i in 0..a.cycles {
        let id = run_pod(&mut rt, &a.cgroup_parent, &format!("c{i}")).await?;
        let t = Instant::now();
        let status = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await;
        after_run.push(t.elapsed().as_secs_f64() * 1e6);
        remove_pod(&mut rt, id).await?;
        status.context("PodSandboxStatus")?;
    }
    if a.cycles > 0 {
        report("PodSandboxStatus right after RunPodSandbox", &after_run);
    }
    let mut others = Vec::with_capacity(a.others);
    for i in 0..a.others {
        others.push(run_pod(&mut rt, &a.cgroup_parent, &format!("o{i}")).await?);
    }
    let id = run_pod(&mut rt, &a.cgroup_parent, "loop").await?;
    // Interleaved with Version, so that both see the same machine.
    let mut us = Vec::with_capacity(a.n);
    let mut result = Ok(());
    for _ in 0..a.n {
        if let Err(e) = time_version(&mut rt, &mut version).await {
            result = Err(e);
            break;
        }
        let t = Instant::now();
        if let Err(e) = rt
            .pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id.clone(),
                verbose: false,
            })
            .await
        {
            result = Err(anyhow::Error::from(e).context("PodSandboxStatus"));
            break;
        }
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    report("Version", &version);
    report(&format!("PodSandboxStatus ({} other pods)", a.others), &us);
    remove_pod(&mut rt, id).await?;
    for id in others {
        remove_pod(&mut rt, id).await?;
    }
    result
}

/// StopPodSandbox (its error ignored) and RemovePodSandbox.
async fn remove_pod(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    id: String,
) -> anyhow::Result<()> {
    let _ = rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await;
    rt.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
        .await
        .context("RemovePodSandbox")?;
    Ok(())
}

/// A host-network pod (no CNI): its id.
async fn run_pod(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    cgroup_parent: &str,
    name: &str,
) -> anyhow::Result<String> {
    let uid = format!("rtt-{}-{name}", std::process::id());
    let config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: uid.clone(),
            uid: uid.clone(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: uid.clone(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("{}/pod{uid}", cgroup_parent),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: crate::workload::NODE,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        })
        .await
        .context("RunPodSandbox")?
        .into_inner()
        .pod_sandbox_id)
}
