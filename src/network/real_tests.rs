//! Privileged tests with Debian's real plugins (containernetworking-plugins):
//! a network namespace the test creates, a conf dir with its own bridge name
//! and subnet, host-local leases in a temp dir. Never /etc/cni or
//! /var/lib/cni. Skipped (saying why) when not root or without plugins.
//! Cleanup runs in Drop, also when an assertion fails.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use super::*;

const REAL_BIN_DIRS: &[&str] = &["/opt/cni/bin", "/usr/lib/cni"];

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    let dirs: Vec<PathBuf> = REAL_BIN_DIRS.iter().map(PathBuf::from).collect();
    for p in ["bridge", "host-local", "portmap"] {
        if plugin::find(&dirs, p).is_none() {
            return Some(format!(
                "CNI plugin {p} missing (apt-get install containernetworking-plugins)"
            ));
        }
    }
    None
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap()
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Everything one test created; Drop removes it whatever happened.
struct Env {
    dir: tempfile::TempDir,
    config: crate::config::NetworkConfig,
    bridge: String,
    net_name: String,
    /// Third octet of 10.213.X.0/24.
    octet: u8,
    netns: Vec<String>,
    pods: Vec<String>,
}

impl Env {
    fn new() -> Env {
        let rand = crate::ids::new_id();
        let dir = tempfile::tempdir().unwrap();
        let confd = dir.path().join("net.d");
        std::fs::create_dir(&confd).unwrap();
        let octet = u8::from_str_radix(&rand[..2], 16).unwrap();
        let bridge = format!("crt{}", &rand[2..10]);
        let net_name = format!("crius-test-{}", &rand[..8]);
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": net_name,
            "plugins": [
                {
                    "type": "bridge", "bridge": bridge, "isGateway": true, "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": format!("10.213.{octet}.0/24")}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": dir.path().join("ipam"),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(confd.join("10-test.conflist"), conf.to_string()).unwrap();
        let config = crate::config::NetworkConfig {
            conf_dir: confd,
            bin_dirs: REAL_BIN_DIRS.iter().map(PathBuf::from).collect(),
            default_network: false,
            default_subnet: "10.88.0.0/16".into(),
            default_bridge: "unused0".into(),
            plugin_timeout_secs: 30,
        };
        Env {
            dir,
            config,
            bridge,
            net_name,
            octet,
            netns: vec![],
            pods: vec![],
        }
    }

    fn network(&self) -> Network {
        Network::new(&self.config, &self.dir.path().join("state"))
    }

    /// A new netns (`ip netns add`) and its path.
    fn add_netns(&mut self) -> PathBuf {
        let name = format!("crius-test-{}", &crate::ids::new_id()[..12]);
        ok("ip", &["netns", "add", &name]);
        self.netns.push(name.clone());
        PathBuf::from(format!("/run/netns/{name}"))
    }

    fn lease(&self, ip: IpAddr) -> PathBuf {
        self.dir
            .path()
            .join("ipam")
            .join(&self.net_name)
            .join(ip.to_string())
    }

    fn pod(&mut self, netns: &Path, host_port: u16) -> PodNetwork {
        let id = crate::ids::new_id();
        self.pods.push(id.clone());
        PodNetwork {
            pod_id: id,
            name: "real".into(),
            namespace: "test".into(),
            uid: "uid-1".into(),
            netns: netns.into(),
            port_mappings: vec![PortMapping {
                protocol: Protocol::Tcp,
                container_port: 8080,
                host_port,
                host_ip: String::new(),
            }],
            pod_cidr: String::new(),
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // DEL whatever is still cached (removes iptables chains and leases);
        // on its own thread, since the test's runtime cannot be re-entered.
        let config = self.config.clone();
        let state = self.dir.path().join("state");
        let pods = std::mem::take(&mut self.pods);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let net = Network::new(&config, &state);
            for pod in pods {
                if let Err(e) = rt.block_on(net.teardown(&pod, Path::new(""))) {
                    eprintln!("cleanup: teardown {pod}: {e}");
                }
            }
        })
        .join();
        for ns in &self.netns {
            let _ = run("ip", &["netns", "del", ns]);
        }
        let _ = run("ip", &["link", "del", &self.bridge]);
    }
}

/// A TCP server inside `netns` on 0.0.0.0:8080 answering "hello" to
/// `conns` connections. Binding happens on a dedicated thread that joined
/// the netns (a socket stays in the namespace it was created in).
fn serve_in_netns(netns: &Path, conns: usize) -> std::thread::JoinHandle<()> {
    let file = std::fs::File::open(netns).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind("0.0.0.0:8080").unwrap();
        tx.send(()).unwrap();
        for _ in 0..conns {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"hello").unwrap();
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    handle
}

fn fetch(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn nat_rules() -> String {
    ok("iptables-save", &["-t", "nat"])
}

#[tokio::test]
async fn real_plugins_add_reach_portmap_and_del() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut env = Env::new();
    let net = env.network();
    net.readiness().unwrap();
    // Debian's plugins speak the test list's 1.0.0 ...
    probe::check(&net.probe_job(net.load("").unwrap()).unwrap())
        .await
        .unwrap();
    // ... but not 1.1.0: readiness would say so.
    let mut newer = net.load("").unwrap();
    newer.cni_version = "1.1.0".into();
    let e = probe::check(&net.probe_job(newer).unwrap())
        .await
        .unwrap_err();
    assert!(e.contains("does not support cniVersion 1.1.0"), "{e}");
    let netns = env.add_netns();
    let host_port = 20000 + u16::from(env.octet) * 10;
    let pod = env.pod(&netns, host_port);

    // ADD: the pod gets an address of the test subnet on eth0 (lo is the
    // pod monitor's, not the network's: here it stays down).
    let started = std::time::Instant::now();
    let status = net.setup(&pod).await.unwrap();
    eprintln!("bridge + portmap ADD: {:?}", started.elapsed());
    let ip = status.ip.expect("pod IP");
    assert!(
        ip.to_string()
            .starts_with(&format!("10.213.{}.", env.octet)),
        "{ip}"
    );
    assert!(status.additional_ips.is_empty());
    let ns_name = netns.file_name().unwrap().to_str().unwrap().to_string();
    let addrs = ok("ip", &["-n", &ns_name, "-4", "addr", "show", "eth0"]);
    assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
    assert!(env.lease(ip).exists());
    assert_eq!(net.cached_status(&pod.pod_id), Some(status.clone()));
    let rules = nat_rules();
    assert!(
        rules.contains(&pod.pod_id),
        "no nat rule names the pod:\n{rules}"
    );

    // The host reaches the pod directly and through the host port
    // (portmap's OUTPUT DNAT for local addresses, here the bridge gateway).
    let server = serve_in_netns(&netns, 2);
    assert_eq!(fetch(SocketAddr::new(ip, 8080)), "hello");
    let gateway: IpAddr = format!("10.213.{}.1", env.octet).parse().unwrap();
    assert_eq!(fetch(SocketAddr::new(gateway, host_port)), "hello");
    server.join().unwrap();

    // DEL with a fresh instance (as after a daemon restart): lease, link,
    // NAT rules and cache are gone; a second DEL does nothing.
    let net = env.network();
    let started = std::time::Instant::now();
    net.teardown(&pod.pod_id, &netns).await.unwrap();
    eprintln!("portmap + bridge DEL: {:?}", started.elapsed());
    assert!(!env.lease(ip).exists());
    let links = ok("ip", &["-n", &ns_name, "link", "show"]);
    assert!(!links.contains("eth0"), "{links}");
    let rules = nat_rules();
    assert!(!rules.contains(&pod.pod_id), "nat rules left:\n{rules}");
    assert_eq!(net.cached_status(&pod.pod_id), None);
    net.teardown(&pod.pod_id, &netns).await.unwrap();
}

#[tokio::test]
async fn real_del_releases_the_ip_when_the_netns_is_gone() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut env = Env::new();
    // bridge 1.1.1 removes its ipMasq rule only while the pod's eth0 exists
    // (it learns the addresses from the link), so a DEL after the netns is
    // gone would leave that rule: callers DEL before unpinning. Without
    // ipMasq this test leaves nothing behind either way.
    let path = env.config.conf_dir.join("10-test.conflist");
    let mut conf: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    conf["plugins"][0]["ipMasq"] = json!(false);
    std::fs::write(&path, conf.to_string()).unwrap();
    let net = env.network();
    let netns = env.add_netns();
    let pod = env.pod(&netns, 0);
    let ip = net.setup(&pod).await.unwrap().ip.unwrap();
    assert!(env.lease(ip).exists());
    let ns_name = env.netns.pop().unwrap();
    ok("ip", &["netns", "del", &ns_name]);
    net.teardown(&pod.pod_id, &netns).await.unwrap();
    assert!(!env.lease(ip).exists());
    assert!(net.cached_pods().unwrap().is_empty());
}

#[tokio::test]
async fn real_failed_add_is_undone() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut env = Env::new();
    // tuning fails on a sysctl that does not exist, after bridge succeeded.
    let path = env.config.conf_dir.join("10-test.conflist");
    let mut conf: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    conf["plugins"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}}));
    std::fs::write(&path, conf.to_string()).unwrap();
    let net = env.network();
    let netns = env.add_netns();
    let pod = env.pod(&netns, 0);
    let err = net.setup(&pod).await.unwrap_err();
    let msg = crate::error::chain(&err);
    assert!(msg.contains("plugin tuning"), "{msg}");
    // bridge's work is undone: no lease, no eth0, no NAT rules, no cache.
    let leases: Vec<_> = std::fs::read_dir(env.dir.path().join("ipam").join(&env.net_name))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leases
            .iter()
            .all(|n| n.to_string_lossy().starts_with("last_reserved") || n == "lock"),
        "{leases:?}"
    );
    let ns_name = netns.file_name().unwrap().to_str().unwrap().to_string();
    assert!(!ok("ip", &["-n", &ns_name, "link", "show"]).contains("eth0"));
    assert!(!nat_rules().contains(&pod.pod_id));
    assert_eq!(net.cached_pods().unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_parallel_pods_get_distinct_ips_and_release_them() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    const PODS: usize = 8;
    let mut env = Env::new();
    let net = std::sync::Arc::new(env.network());
    let pods: Vec<PodNetwork> = (0..PODS)
        .map(|_| {
            let netns = env.add_netns();
            env.pod(&netns, 0)
        })
        .collect();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = pods
        .iter()
        .cloned()
        .map(|p| {
            let net = net.clone();
            tokio::spawn(async move { net.setup(&p).await })
        })
        .collect();
    let mut ips = Vec::new();
    for t in tasks {
        ips.push(t.await.unwrap().unwrap().ip.unwrap());
    }
    eprintln!("{PODS} parallel ADDs: {:?}", started.elapsed());
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), PODS, "{ips:?}");
    for ip in &ips {
        assert!(env.lease(*ip).exists());
    }
    let started = std::time::Instant::now();
    let tasks: Vec<_> = pods
        .iter()
        .cloned()
        .map(|p| {
            let net = net.clone();
            tokio::spawn(async move { net.teardown(&p.pod_id, &p.netns).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    eprintln!("{PODS} parallel DELs: {:?}", started.elapsed());
    for ip in &ips {
        assert!(!env.lease(*ip).exists());
    }
    let rules = nat_rules();
    for p in &pods {
        assert!(!rules.contains(&p.pod_id));
    }
    assert!(net.cached_pods().unwrap().is_empty());
}
