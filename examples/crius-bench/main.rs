//! `crius-bench`: the CRI benchmark client that `hack/bench.sh` runs against
//! crius and against containerd with the same workload.
//!
//! - `run`: pod and container lifecycles sequentially, N-way parallel and
//!   N-way in lockstep (a barrier before each call), ExecSync of `true`,
//!   StopPodSandbox with a running container in each PID mode, a cold
//!   pull, the daemon's RSS (idle, after churn) and the per-pod footprint;
//!   each CRI call timed in this process.
//! - `cni`: the CNI plugins' own ADD/DEL time with the same configuration.
//! - `compare`: the side-by-side table of two result files.

mod cni;
mod mem;
mod rtt;
mod stats;
mod workload;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use crius::cri::proto::image_service_client::ImageServiceClient;
use crius::cri::proto::runtime_service_client::RuntimeServiceClient;
use crius::cri::proto::*;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use stats::Results;
use workload::{Bench, CONTAINER, NODE, POD};

#[derive(Parser)]
struct Cli {
    /// Worker threads of this client's async runtime; 0 (the default): one
    /// thread, on which a call, tonic's buffer task and the connection task
    /// hand over to each other without waking another thread. The client's
    /// share of a round trip is the same for every runtime measured; the
    /// smaller it is, the more a ratio says about the runtimes themselves.
    #[arg(long, global = true, default_value_t = 0)]
    client_threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Run(RunArgs),
    Cni {
        #[arg(long)]
        conflist: PathBuf,
        #[arg(long)]
        bin_dir: PathBuf,
        #[arg(long)]
        work: PathBuf,
        #[arg(long, default_value_t = 20)]
        n: usize,
        /// Pairs run at once after the sequential ones (0: none), and
        /// how many each runs.
        #[arg(long, default_value_t = 0)]
        par: usize,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// The round trip of Version and PodSandboxStatus, repeated.
    Rtt {
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 2000)]
        n: usize,
        /// Also PodSandboxStatus of a host-network pod made for it.
        #[arg(long)]
        pod: bool,
        #[arg(long, default_value = "/crius-bench-rtt")]
        cgroup_parent: String,
        /// Pod lifecycles with PodSandboxStatus timed right after
        /// RunPodSandbox (needs --pod).
        #[arg(long, default_value_t = 0)]
        cycles: usize,
        /// Other pods that exist during the PodSandboxStatus loop.
        #[arg(long, default_value_t = 0)]
        others: usize,
    },
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// The CNI plugins' own times (`cni --out`).
        #[arg(long)]
        cni: Option<PathBuf>,
        #[arg(long, default_value = "crius")]
        a_name: String,
        #[arg(long, default_value = "containerd")]
        b_name: String,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The runtime's CRI socket.
    #[arg(long)]
    socket: PathBuf,
    /// Names this run's pods (uids) and the result lines' file.
    #[arg(long)]
    label: String,
    /// The container image (pulled first, not timed).
    #[arg(long)]
    image: String,
    /// Pulled first into the cold store, timed.
    #[arg(long)]
    big_image: Option<String>,
    /// Pulled before the workload, not timed (containerd's sandbox image).
    #[arg(long)]
    pause_image: Option<String>,
    /// Parent of the pods' cgroups (kubelet's cgroup_parent per pod).
    #[arg(long)]
    cgroup_root: String,
    /// Processes in a cgroup whose path starts with this count as the pods'.
    #[arg(long)]
    cgroup_prefix: String,
    /// Pod log directories go below this one.
    #[arg(long)]
    logs: PathBuf,
    /// The daemon's pid, for its memory.
    #[arg(long)]
    daemon_pid: i32,
    #[arg(long)]
    out: PathBuf,
    /// Iterations of each sequential lifecycle.
    #[arg(long, default_value_t = 20)]
    n: usize,
    /// Parallel clients, and lifecycles each runs.
    #[arg(long, default_value_t = 10)]
    par: usize,
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    #[arg(long, default_value_t = 50)]
    execs: usize,
    /// Pods with a running container for the per-pod footprint.
    #[arg(long, default_value_t = 10)]
    footprint_pods: usize,
    /// Created containers in the pod of the crowded CreateContainer line.
    #[arg(long, default_value_t = 100)]
    crowd: usize,
    /// Pod create/remove cycles before the last RSS reading.
    #[arg(long, default_value_t = 1000)]
    churn: usize,
}

async fn connect(socket: PathBuf) -> anyhow::Result<Channel> {
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

async fn pull(img: &mut ImageServiceClient<Channel>, image: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    img.pull_image(PullImageRequest {
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .with_context(|| format!("PullImage {image}"))?;
    Ok(t.elapsed())
}

fn rss(pid: i32) -> anyhow::Result<f64> {
    mem::status_mib(pid, "VmRSS").with_context(|| format!("VmRSS of pid {pid}"))
}

/// Connects and waits until the runtime answers Version (containerd's CRI
/// plugin starts after its socket exists).
async fn ready(socket: PathBuf) -> anyhow::Result<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let err = match connect(socket.clone()).await {
            Ok(ch) => match RuntimeServiceClient::new(ch.clone())
                .version(VersionRequest::default())
                .await
            {
                Ok(_) => return Ok(ch),
                Err(e) => anyhow::Error::from(e),
            },
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(err.context("the runtime did not answer Version in 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let ch = ready(a.socket.clone()).await?;
    let mut img = ImageServiceClient::new(ch.clone()).max_decoding_message_size(16 << 20);
    let mut b = Bench {
        rt: RuntimeServiceClient::new(ch).max_decoding_message_size(16 << 20),
        image: a.image.clone(),
        cgroup_root: a.cgroup_root.clone(),
        logs: a.logs.clone(),
        label: a.label.clone(),
        lockstep: None,
    };
    let mut r = Results::default();
    let result = workload(&a, &mut b, &mut img, &mut r).await;
    if result.is_err() {
        b.remove_all().await;
    }
    r.write(&a.out)?;
    result
}

/// `a.par` clients each running `a.rounds` container lifecycles at once
/// (in lockstep when `lockstep` is given), their calls timed under `tag`,
/// with the machine's and the daemon's CPU use over the phase.
async fn parallel(
    a: &RunArgs,
    b: &Bench,
    r: &mut Results,
    tag: &str,
    lockstep: Option<std::sync::Arc<tokio::sync::Barrier>>,
) -> anyhow::Result<()> {
    let pid = a.daemon_pid;
    let (busy0, total0) = mem::cpu_ticks()?;
    let (own0, children0) = mem::proc_cpu_ticks(pid)?;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.par {
        let mut b = Bench {
            lockstep: lockstep.clone(),
            ..b.clone()
        };
        let (tag, rounds) = (tag.to_string(), a.rounds);
        tasks.push(tokio::spawn(async move {
            let mut r = Results::default();
            for _ in 0..rounds {
                b.container_cycle(&mut r, &tag).await?;
            }
            anyhow::Ok(r)
        }));
    }
    // The first failure that is not a client given up at a barrier: that
    // one only says another client failed.
    let mut failed: Option<anyhow::Error> = None;
    for t in tasks {
        match t.await? {
            Ok(done) => r.merge(done),
            Err(e) => {
                let waited = |e: &anyhow::Error| e.is::<tokio::time::error::Elapsed>();
                if failed.as_ref().is_none_or(|f| waited(f) && !waited(&e)) {
                    failed = Some(e);
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    // Whether the phase was bound by the machine's CPUs (every process on
    // it counts: the runtime, its plugins and pods, anything else running).
    let (busy1, total1) = mem::cpu_ticks()?;
    let (own1, children1) = mem::proc_cpu_ticks(pid)?;
    r.time(&format!("{tag}the whole phase"), started.elapsed());
    // The daemon's CPU time per container lifecycle of the phase: its own
    // threads, and the children it waited for (CNI plugins and what they
    // ran; containerd's shims are not its children).
    let per_cycle = |ticks: u64| {
        ticks as f64 * 1000.0 / mem::ticks_per_second() / (a.par * a.rounds).max(1) as f64
    };
    r.add(
        &format!("{tag}daemon CPU per lifecycle, own threads"),
        "ms",
        per_cycle(own1 - own0),
    );
    r.add(
        &format!("{tag}daemon CPU per lifecycle, waited-for children"),
        "ms",
        per_cycle(children1 - children0),
    );
    r.add(
        &format!("{tag}CPU busy, whole machine"),
        "%",
        100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64,
    );
    Ok(())
}

async fn workload(
    a: &RunArgs,
    b: &mut Bench,
    img: &mut ImageServiceClient<Channel>,
    r: &mut Results,
) -> anyhow::Result<()> {
    let pid = a.daemon_pid;
    r.add("daemon RSS, idle", "MiB", rss(pid)?);
    if let Some(big) = &a.big_image {
        eprintln!("{}: cold pull of {big}", a.label);
        let before = rss(pid)?;
        let d = pull(img, big).await?;
        r.time("PullImage multi-layer, cold store", d);
        let hwm = mem::status_mib(pid, "VmHWM").context("VmHWM")?;
        r.add(
            "daemon peak RSS growth during the pull",
            "MiB",
            hwm - before,
        );
    }
    pull(img, &a.image).await?;
    if let Some(p) = &a.pause_image {
        pull(img, p).await?;
    }
    // Warm-up: the first pod pays one-time work (bridge, iptables chains).
    b.container_cycle(&mut Results::default(), "").await?;

    eprintln!("{}: sequential lifecycles", a.label);
    for _ in 0..a.n {
        b.pod_cycle(r, "").await?;
    }
    for _ in 0..a.n {
        b.container_cycle(r, "").await?;
    }

    eprintln!("{}: ExecSync", a.label);
    let pod = b.run_pod(CONTAINER, &mut Results::default(), "").await?;
    let c = b
        .start_container(&pod, CONTAINER, &mut Results::default(), "")
        .await?;
    for _ in 0..a.execs {
        b.exec_true(&c, r).await?;
    }
    b.stop_pod(&pod, &mut Results::default(), "").await?;
    b.remove_pod(&pod, &mut Results::default(), "").await?;

    eprintln!("{}: CreateContainer beside {} others", a.label, a.crowd);
    b.crowded_creates(a.crowd, a.n, r).await?;

    eprintln!("{}: StopPodSandbox per PID mode", a.label);
    for mode in [POD, CONTAINER, NODE] {
        for _ in 0..a.n.div_ceil(2) {
            b.stop_running_pod(mode, r).await?;
        }
    }

    eprintln!("{}: {} parallel clients", a.label, a.par);
    parallel(a, b, r, &format!("{}-way parallel: ", a.par), None).await?;
    // The same lifecycles with every client making the same call at once:
    // each RPC's own concurrency, apart from the CNI plugins that the
    // phase above runs beside every other call.
    eprintln!("{}: {} parallel clients in lockstep", a.label, a.par);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(a.par.max(1)));
    parallel(a, b, r, &format!("{}-way lockstep: ", a.par), Some(barrier)).await?;

    eprintln!("{}: footprint of {} pods", a.label, a.footprint_pods);
    let before = mem::pids();
    let rss_before = rss(pid)?;
    let mut pods = Vec::new();
    for _ in 0..a.footprint_pods {
        let pod = b.run_pod(CONTAINER, &mut Results::default(), "").await?;
        b.start_container(&pod, CONTAINER, &mut Results::default(), "")
            .await?;
        pods.push(pod);
    }
    workload::settle(Duration::from_secs(1)).await;
    let now = mem::pids();
    let ours: std::collections::BTreeSet<i32> = now
        .iter()
        .copied()
        .filter(|p| *p != pid && in_cgroup(*p, &a.cgroup_prefix))
        .collect();
    let (pss, procs) = mem::new_processes_pss(&before, &ours);
    let growth = rss(pid)? - rss_before;
    let n = a.footprint_pods as f64;
    r.add("per pod: PSS of its processes", "MiB", pss / n);
    r.add(
        "per pod: processes (pod + 1 container)",
        "count",
        procs as f64 / n,
    );
    r.add("per pod: daemon RSS growth", "MiB", growth / n);
    for pod in &pods {
        b.stop_pod(pod, &mut Results::default(), "").await?;
        b.remove_pod(pod, &mut Results::default(), "").await?;
    }

    eprintln!("{}: {} pod create/remove cycles", a.label, a.churn);
    let mut tasks = Vec::new();
    let workers = 4;
    for w in 0..workers {
        let mut b = b.clone();
        let count = a.churn / workers + usize::from(w < a.churn % workers);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                b.pod_cycle(&mut Results::default(), "churn ").await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    workload::settle(Duration::from_secs(2)).await;
    r.add(
        &format!("daemon RSS after {} pod cycles", a.churn),
        "MiB",
        rss(pid)?,
    );
    Ok(())
}

/// Whether any of the process's cgroups lies below `prefix`.
fn in_cgroup(pid: i32, prefix: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|t| {
        t.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|p| p.starts_with(prefix))
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rt = match cli.client_threads {
        0 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    rt.enable_all()
        .build()
        .context("start the async runtime")?
        .block_on(command(cli.cmd))
}

async fn command(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(a) => run(a).await,
        Cmd::Cni {
            conflist,
            bin_dir,
            work,
            n,
            par,
            rounds,
            out,
        } => {
            let mut r = Results::default();
            let c = cni::Cni {
                conflist,
                bin_dir,
                work,
            };
            let res = c.measure(n, par, rounds, &mut r);
            r.write(&out)?;
            res
        }
        Cmd::Rtt {
            socket,
            n,
            pod,
            cgroup_parent,
            cycles,
            others,
        } => {
            rtt::run(rtt::Args {
                socket,
                n,
                pod,
                cgroup_parent,
                cycles,
                others,
            })
            .await
        }
        Cmd::Compare {
            a,
            b,
            cni,
            a_name,
            b_name,
        } => {
            print!(
                "{}",
                stats::compare(&a, &b, cni.as_deref(), &a_name, &b_name)?
            );
            Ok(())
        }
    }
}
