//! Pod sandboxes: lifecycle with and without namespace options, namespaces
//! distinct from the host's, the pod IP, sysctls, bad input, rollback of a
//! failed step; and the helpers the other pod test files share.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crius::cri::proto::runtime_service_client::RuntimeServiceClient;
use crius::cri::proto::*;
use tonic::Code;
use tonic::transport::Channel;

use crate::cgroup;
use crate::harness::TestDaemon;

pub type Client = RuntimeServiceClient<Channel>;

pub fn config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: format!("host-{name}"),
        labels: HashMap::from([("app".into(), name.into()), ("suite".into(), "pod".into())]),
        linux: Some(LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

pub fn with_namespaces(
    mut c: PodSandboxConfig,
    network: NamespaceMode,
    pid: NamespaceMode,
    ipc: NamespaceMode,
) -> PodSandboxConfig {
    let linux = c.linux.get_or_insert_default();
    linux
        .security_context
        .get_or_insert_default()
        .namespace_options = Some(NamespaceOption {
        network: network as i32,
        pid: pid as i32,
        ipc: ipc as i32,
        ..Default::default()
    });
    c
}

pub async fn run(rt: &mut Client, c: PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(c),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

/// RunPodSandbox whose caller gives up after `timeout`.
pub async fn run_giving_up(
    rt: &mut Client,
    c: PodSandboxConfig,
    timeout: Duration,
) -> Result<String, tonic::Status> {
    let mut req = tonic::Request::new(RunPodSandboxRequest {
        config: Some(c),
        runtime_handler: String::new(),
    });
    req.set_timeout(timeout);
    rt.run_pod_sandbox(req)
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

pub async fn status(rt: &mut Client, id: &str) -> (PodSandboxStatus, serde_json::Value) {
    let r = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info = serde_json::from_str(&r.info["info"]).unwrap();
    (r.status.unwrap(), info)
}

pub async fn list(rt: &mut Client, filter: Option<PodSandboxFilter>) -> Vec<PodSandbox> {
    rt.list_pod_sandbox(ListPodSandboxRequest { filter })
        .await
        .unwrap()
        .into_inner()
        .items
}

/// The default runtime handler's features, from Status.
pub async fn handler_features(rt: &mut Client) -> RuntimeHandlerFeatures {
    rt.status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers[0]
        .features
        .unwrap()
}

pub async fn stop_remove(rt: &mut Client, id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap();
}

fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

fn path(v: &serde_json::Value) -> Option<PathBuf> {
    v.as_str().map(PathBuf::from)
}

/// Runs `nsenter` with the given namespace flags and a command; its stdout.
fn nsenter(args: &[String], cmd: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .args(args)
        .args(cmd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "nsenter {args:?} {cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits (bounded) until the daemon's trash dirs (`<root>/trash`,
/// `<state>/trash`: removed containers' and pods' directories being
/// deleted in the background) are empty and its deleting thread has ended
/// (it holds a few fds while it runs); fails when they do not drain.
pub fn wait_trash_drained(d: &TestDaemon) {
    let trashes = [d.root.join("trash"), d.state.join("trash")];
    let empty = |dir: &PathBuf| {
        std::fs::read_dir(dir)
            .map(|mut r| r.next().is_none())
            .unwrap_or(true)
    };
    let deleting = || {
        let Some(child) = d.child.as_ref() else {
            return false;
        };
        std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "crius-trash")
                })
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !trashes.iter().all(empty) || deleting() {
        let left: Vec<_> = trashes
            .iter()
            .flat_map(|t| std::fs::read_dir(t).into_iter().flatten().flatten())
            .map(|e| e.path())
            .collect();
        assert!(
            Instant::now() < deadline,
            "the trash did not drain: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Everything a pod could leave behind under the daemon's dirs.
pub fn assert_no_trace(d: &TestDaemon) {
    wait_trash_drained(d);
    let mounts = crius::sys::mount::mounts_under(d.dir.path());
    // The shared <state>/ns mount itself may stay (like /run/netns).
    let ns_root = d.state.join("ns");
    let leftover: Vec<_> = mounts.iter().filter(|m| **m != ns_root).collect();
    assert!(leftover.is_empty(), "mounts left: {leftover:?}");
    // Pod state, namespace pins and the intents of unclaimed creations.
    for dir in [
        d.state.join("pods"),
        d.state.join("ns"),
        d.root.join("intents"),
    ] {
        let entries: Vec<_> = std::fs::read_dir(&dir)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            entries.is_empty(),
            "{} entries left: {entries:?}",
            dir.display()
        );
    }
    let procs = processes_mentioning(d.dir.path());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    // Pod cgroups under the test's parent (and no process in the monitors').
    if let Some(parent) = &d.cgroup_parent {
        let children = cgroup::children(parent, "memory");
        assert!(
            children.is_empty(),
            "cgroups left under {parent}: {children:?}"
        );
    }
    if let Some(monitors) = &d.monitors_cgroup {
        let procs = cgroup::procs(monitors);
        assert!(procs.is_empty(), "monitors left in {monitors}: {procs:?}");
    }
    // veths on the test's bridge, and host-local leases.
    if let Some(bridge) = &d.bridge {
        let out = std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", bridge])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.trim().is_empty(), "veths left on {bridge}: {text}");
    }
    let leases: Vec<_> = walk(&d.dir.path().join("ipam"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            !name.starts_with("last_reserved_ip") && name != "lock"
        })
        .collect();
    assert!(leases.is_empty(), "IP leases left: {leases:?}");
    let cni_cache: Vec<_> = walk(&d.state.join("cni/results"));
    assert!(cni_cache.is_empty(), "CNI results left: {cni_cache:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// Live processes whose command line names `dir` (monitors and inits do).
pub fn processes_mentioning(dir: &Path) -> Vec<(i32, String)> {
    let needle = dir.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'));
        if cmd.contains(&needle) && cmd.contains(" monitor ") && !zombie {
            out.push((pid, cmd));
        }
    }
    out
}

pub async fn wait_for<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_lifecycle_with_its_own_namespaces() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let mut c = config("own");
    c.linux.as_mut().unwrap().sysctls = HashMap::from([
        ("net.ipv4.ip_forward".into(), "1".into()),
        ("kernel.shmmni".into(), "1234".into()),
        ("fs.mqueue.msg_max".into(), "17".into()),
    ]);
    let id = run(&mut rt, c).await.unwrap();
    assert_eq!(id.len(), 64);

    let (s, info) = status(&mut rt, &id).await;
    assert_eq!(s.id, id);
    assert_eq!(s.state, PodSandboxState::SandboxReady as i32);
    assert_eq!(s.metadata.unwrap().name, "own");
    assert!(s.created_at > 0);
    let opts = s.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(opts.network, NamespaceMode::Pod as i32);
    assert_eq!(opts.pid, NamespaceMode::Pod as i32);
    assert_eq!(opts.ipc, NamespaceMode::Pod as i32);

    // Namespaces distinct from the host's, by inode.
    let ns = &info["namespaces"];
    let me = std::process::id();
    for (kind, host) in ["network", "ipc", "uts", "pid"]
        .iter()
        .zip(["net", "ipc", "uts", "pid"])
    {
        let p = path(&ns[kind]).unwrap_or_else(|| panic!("{kind} path in {info}"));
        assert_ne!(
            ino(&p),
            ino(Path::new(&format!("/proc/{me}/ns/{host}"))),
            "{kind} is the host's"
        );
    }
    let net = path(&ns["network"]).unwrap();
    assert!(net.starts_with(d.state.join("ns").join(&id)), "{net:?}");
    let monitor = info["monitorPid"].as_i64().unwrap() as i32;
    let init = info["initPid"].as_i64().unwrap() as i32;
    assert!(crius::sys::process::start_time(monitor).is_some());
    assert!(crius::sys::process::start_time(init).is_some());
    // The init is PID 1 of the pod's PID namespace.
    let status_text = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let nspid = status_text
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap();
    assert!(nspid.split_whitespace().last() == Some("1"), "{nspid}");

    // Hostname in the pod's UTS namespace, sysctls in its net and IPC ones.
    let uts = format!("--uts={}", path(&ns["uts"]).unwrap().display());
    assert_eq!(nsenter(&[uts], &["hostname"]), "host-own");
    let netarg = format!("--net={}", net.display());
    assert_eq!(
        nsenter(
            std::slice::from_ref(&netarg),
            &["cat", "/proc/sys/net/ipv4/ip_forward"]
        ),
        "1"
    );
    // lo is up in the new network namespace, with 127.0.0.1 (the monitor
    // brings it up; no CNI loopback plugin runs).
    let lo = nsenter(&[netarg], &["ip", "-o", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("inet 127.0.0.1/8"), "{lo}");
    let ipc = format!("--ipc={}", path(&ns["ipc"]).unwrap().display());
    assert_eq!(
        nsenter(
            std::slice::from_ref(&ipc),
            &["cat", "/proc/sys/kernel/shmmni"]
        ),
        "1234"
    );
    assert_eq!(
        nsenter(&[ipc], &["cat", "/proc/sys/fs/mqueue/msg_max"]),
        "17"
    );
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/shmmni")
            .unwrap()
            .trim(),
        "1234"
    );

    // /dev/shm is the pod's own tmpfs, 64 MiB by default.
    let shm = path(&info["shm"]).unwrap();
    let df = std::process::Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SIZE"])
        .arg(&shm)
        .output()
        .unwrap();
    let df = String::from_utf8_lossy(&df.stdout).to_string();
    assert!(df.contains("tmpfs") && df.contains("64M"), "{df}");

    // An IP on the test's bridge that the host can ping; DNS files written.
    let ip = s.network.as_ref().unwrap().ip.clone();
    let prefix = d
        .subnet
        .as_ref()
        .unwrap()
        .rsplit_once('.')
        .unwrap()
        .0
        .to_string();
    assert!(ip.starts_with(&prefix), "pod IP {ip} not in {prefix}.0/24");
    let ping = std::process::Command::new("ping")
        .args(["-c", "1", "-W", "5", &ip])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping {ip}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(info["cniResult"]["ips"].is_array(), "{info}");
    let state_dir = path(&info["stateDir"]).unwrap();
    assert_eq!(
        std::fs::read_to_string(state_dir.join("hostname")).unwrap(),
        "host-own\n"
    );
    assert!(state_dir.join("resolv.conf").exists());
    // The pod init sits in its own leaf under the pod cgroup.
    let init_cg = info["initCgroupPath"].as_str().unwrap().to_string();
    assert!(
        init_cg.starts_with(info["cgroupPath"].as_str().unwrap()),
        "{info}"
    );
    assert_eq!(cgroup::procs(&init_cg), [init]);
    assert_eq!(
        cgroup::of_pid(init, "memory").as_deref(),
        Some(init_cg.as_str())
    );
    // The monitor is in neither the daemon's cgroup nor the pod's, but in
    // the monitors' own (`<parent>-monitors`, or its scope with systemd).
    let mcg = cgroup::of_pid(monitor, "memory").unwrap();
    let dcg = cgroup::of_pid(d.pid(), "memory").unwrap();
    assert_ne!(mcg, dcg);
    assert_eq!(
        Some(&mcg),
        d.monitors_cgroup.as_ref(),
        "the monitor's cgroup"
    );

    // Listed, with filters.
    assert_eq!(list(&mut rt, None).await.len(), 1);
    let by_prefix = list(
        &mut rt,
        Some(PodSandboxFilter {
            id: id[..13].into(),
            ..Default::default()
        }),
    )
    .await;
    assert_eq!(by_prefix.len(), 1);
    let by_label = list(
        &mut rt,
        Some(PodSandboxFilter {
            label_selector: HashMap::from([("app".into(), "other".into())]),
            ..Default::default()
        }),
    )
    .await;
    assert!(by_label.is_empty());
    let not_ready = list(
        &mut rt,
        Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }),
    )
    .await;
    assert!(not_ready.is_empty());

    // Stop: NOTREADY, processes and pins gone, the record stays.
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.clone(),
    })
    .await
    .unwrap();
    let (s, _) = status(&mut rt, &id).await;
    assert_eq!(s.state, PodSandboxState::SandboxNotready as i32);
    assert!(
        s.linux.unwrap().namespaces.unwrap().options.is_some(),
        "options echoed after stop"
    );
    assert!(!net.exists(), "netns pin released at stop");
    wait_for("monitor and init to end", Duration::from_secs(5), || {
        !crius::sys::process::ProcRef::of(monitor).is_some_and(|p| p.alive())
            && !crius::sys::process::ProcRef::of(init).is_some_and(|p| p.alive())
    })
    .await;
    // Stop again, remove, remove again: all fine.
    stop_remove(&mut rt, &id).await;
    stop_remove(&mut rt, &id).await;
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(list(&mut rt, None).await.is_empty());
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn host_namespace_pod_uses_the_hosts_namespaces() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let mut c = with_namespaces(
        config("host"),
        NamespaceMode::Node,
        NamespaceMode::Node,
        NamespaceMode::Node,
    );
    c.hostname.clear(); // kubelet sends none for host-network pods
    let id = run(&mut rt, c).await.unwrap();
    let (s, info) = status(&mut rt, &id).await;
    assert_eq!(s.state, PodSandboxState::SandboxReady as i32);
    let opts = s
        .linux
        .clone()
        .unwrap()
        .namespaces
        .unwrap()
        .options
        .unwrap();
    assert_eq!(opts.network, NamespaceMode::Node as i32);
    assert_eq!(opts.pid, NamespaceMode::Node as i32);
    assert_eq!(opts.ipc, NamespaceMode::Node as i32);
    for kind in ["network", "ipc", "uts", "pid"] {
        assert!(info["namespaces"][kind].is_null(), "{kind}: {info}");
    }
    assert!(
        s.network.unwrap_or_default().ip.is_empty(),
        "no CNI for host-network pods"
    );
    assert!(info["cniResult"].is_null());
    assert!(
        info["shm"].is_null(),
        "host IPC pods use the host's /dev/shm"
    );
    assert!(info["initPid"].is_null());
    stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);

    // Host network, own IPC, PID per container: an IPC ns and /dev/shm only.
    let c = with_namespaces(
        config("mixed"),
        NamespaceMode::Node,
        NamespaceMode::Container,
        NamespaceMode::Pod,
    );
    let id = run(&mut rt, c).await.unwrap();
    let (_, info) = status(&mut rt, &id).await;
    assert!(info["namespaces"]["network"].is_null());
    assert!(
        info["namespaces"]["uts"].is_null(),
        "host network means host UTS"
    );
    assert!(path(&info["namespaces"]["ipc"]).unwrap().exists());
    assert!(
        info["initPid"].is_null(),
        "PID mode CONTAINER needs no pod init"
    );
    assert!(path(&info["shm"]).is_some());
    stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_and_leaves_nothing() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;

    let e = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config("h")),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("kata"), "{}", e.message());

    let mut c = config("vm");
    c.linux.as_mut().unwrap().sysctls = HashMap::from([("vm.swappiness".into(), "1".into())]);
    let e = run(&mut rt, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("vm.swappiness"), "{}", e.message());

    let mut c = with_namespaces(
        config("hostnet"),
        NamespaceMode::Node,
        NamespaceMode::Pod,
        NamespaceMode::Pod,
    );
    c.linux.as_mut().unwrap().sysctls = HashMap::from([("net.ipv4.ip_forward".into(), "1".into())]);
    let e = run(&mut rt, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A sysctl that passes validation but the kernel refuses: the failing
    // step is named and every earlier step (namespaces, pins, monitor) is undone.
    let mut c = config("badsysctl");
    c.linux.as_mut().unwrap().sysctls =
        HashMap::from([("net.ipv4.no_such_knob".into(), "1".into())]);
    let e = run(&mut rt, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains("apply sysctls") && e.message().contains("no_such_knob"),
        "{}",
        e.message()
    );
    assert!(list(&mut rt, None).await.is_empty());
    assert_no_trace(&d);

    // Duplicates name the existing pod.
    let id = run(&mut rt, config("dup")).await.unwrap();
    let e = run(&mut rt, config("dup")).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    assert!(e.message().contains(&id), "{}", e.message());
    let mut again = config("dup");
    again.metadata.as_mut().unwrap().attempt = 1;
    let id2 = run(&mut rt, again).await.unwrap();
    assert_ne!(id, id2);

    // Unknown ids: Stop/Remove succeed, Status is NotFound.
    let unknown = "f".repeat(64);
    stop_remove(&mut rt, &unknown).await;
    let e = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: unknown,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    stop_remove(&mut rt, &id).await;
    stop_remove(&mut rt, &id2).await;
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_network_rolls_the_pod_back() {
    // A CNI config whose plugin does not exist: everything before the
    // network step (cgroup, monitor, namespaces, pod init) is undone.
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("cni");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::write(
        conf.join("10-bad.conflist"),
        r#"{"cniVersion":"1.0.0","name":"bad","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let d = TestDaemon::start(&format!("[network]\nconf_dir = \"{}\"\n", conf.display())).await;
    let mut rt = d.runtime().await;
    let e = run(&mut rt, config("badnet")).await.unwrap_err();
    assert!(
        e.message().contains("set up pod network") && e.message().contains("no-such-plugin"),
        "{}",
        e.message()
    );
    assert!(list(&mut rt, None).await.is_empty());
    assert_no_trace(&d);
    // A host-network pod needs no CNI and still works.
    let c = with_namespaces(
        config("hostnet"),
        NamespaceMode::Node,
        NamespaceMode::Pod,
        NamespaceMode::Pod,
    );
    let id = run(&mut rt, c).await.unwrap();
    stop_remove(&mut rt, &id).await;
    assert_no_trace(&d);
}

#[tokio::test(flavor = "multi_thread")]
async fn port_mappings_reach_cni_and_are_released_at_stop() {
    let d = TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let mut c = config("ports");
    c.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 80,
        host_port: 38080,
        host_ip: String::new(),
    }];
    let id = run(&mut rt, c).await.unwrap();
    let nat = || {
        let out = std::process::Command::new("iptables-save")
            .args(["-t", "nat"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&id) && l.contains("38080"))
            .count()
    };
    assert!(nat() > 0, "portmap's DNAT rule for the pod");
    stop_remove(&mut rt, &id).await;
    assert_eq!(nat(), 0, "DNAT rules left after stop");
    assert_no_trace(&d);

    // Out-of-range ports are refused before anything happens.
    let mut c = config("badport");
    c.port_mappings = vec![PortMapping {
        protocol: Protocol::Tcp as i32,
        container_port: 70000,
        host_port: 1,
        host_ip: String::new(),
    }];
    let e = run(&mut rt, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_no_trace(&d);
}
