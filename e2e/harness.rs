#![allow(dead_code)] // helpers used by some test files only
//! The e2e harness: a real `crius serve` process with temporary root, state
//! and socket, a tonic CRI client over that socket, and cleanup that always
//! runs (Drop), even when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius::cri::proto::image_service_client::ImageServiceClient;
use crius::cri::proto::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

pub const BIN: &str = env!("CARGO_BIN_EXE_crius");
/// The monitor binary, beside [`BIN`] (where the daemon looks for it).
pub const MONITOR_BIN: &str = env!("CARGO_BIN_EXE_crius-monitor");

/// A running daemon. Dropping it stops the process (SIGTERM, then SIGKILL)
/// and removes its directories. Tests use the multi-thread runtime: Drop
/// blocks its thread while the daemon shuts down, and the client connections
/// must still answer the server's HTTP/2 GOAWAY ping on another worker.
pub struct TestDaemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// Extra environment of the daemon process (test hooks).
    pub env: Vec<(String, String)>,
    /// The test's own CNI bridge and subnet (see [`test_network`]).
    pub bridge: Option<String>,
    pub subnet: Option<String>,
    /// The test's own default cgroup parent, removed at the end.
    pub cgroup_parent: Option<String>,
    /// Where its pod monitors live (beside the parent: `<parent>-monitors`,
    /// or with systemd the scope `<slice prefix>-monitors.scope`).
    pub monitors_cgroup: Option<String>,
    log: PathBuf,
}

impl TestDaemon {
    /// Starts a daemon whose config file holds `extra_toml` (paths are given
    /// as flags) and waits until it answers Version.
    pub async fn start(extra_toml: &str) -> TestDaemon {
        start_with_env(extra_toml, &[]).await
    }

    /// Starts the process (again, after `kill`), keeping the same dirs.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(self.serve_args())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn crius");
        self.child = Some(child);
    }

    /// The arguments of `crius serve` for this daemon's config and dirs.
    pub fn serve_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["serve".into()];
        for (flag, path) in [
            ("--config", &self.config),
            ("--listen", &self.socket),
            ("--root", &self.root),
            ("--state", &self.state),
        ] {
            args.push(flag.into());
            args.push(path.into());
        }
        args.extend(["--log-level".into(), "debug".into()]);
        args
    }

    pub async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("crius exited early with {status}:\n{}", self.log());
            }
            if let Ok(mut rt) = self.try_runtime().await
                && rt
                    .version(crius::cri::proto::VersionRequest::default())
                    .await
                    .is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!("crius did not become ready:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        connect(&self.socket).await
    }

    async fn try_runtime(&self) -> Result<RuntimeServiceClient<Channel>, tonic::transport::Error> {
        Ok(RuntimeServiceClient::new(self.channel().await?))
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.try_runtime().await.expect("connect to crius")
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel().await.expect("connect to crius"))
    }

    /// Sends `signal` and waits (up to `limit`) for the process to exit.
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::try_from(signal).expect("valid signal"),
        );
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let clean = self.signal_and_wait(15, Duration::from_secs(10));
            if clean.is_none() && !std::thread::panicking() {
                eprintln!("crius did not stop on SIGTERM:\n{}", self.log());
            }
        }
        if std::thread::panicking() {
            eprintln!("--- crius log ---\n{}", self.log());
        }
        kill_leftovers(&self.state);
        unmount_under(self.dir.path());
        for cgroup in self.cgroup_parent.iter().chain(&self.monitors_cgroup) {
            remove_cgroup_tree(cgroup);
        }
        if let Some(bridge) = &self.bridge {
            let _ = Command::new("ip")
                .args(["link", "del", bridge])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A CNI conf dir for one test: a bridge of its own (`cr<tag>`), a /24 of
/// its own, host-local leases under the test dir. Returns (conf dir,
/// bridge, subnet).
pub fn test_network(base: &Path, tag: &str) -> (PathBuf, String, String) {
    let conf_dir = base.join("cni");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let bridge = format!("cr{tag}");
    let n = u32::from_str_radix(&tag[..4], 16).unwrap();
    let subnet = format!("10.{}.{}.0/24", 200 + (n >> 8) % 50, n & 0xff);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": format!("e2e-{tag}"),
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "dataDir": base.join("ipam"),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(
        conf_dir.join("10-e2e.conflist"),
        serde_json::to_vec_pretty(&conf).unwrap(),
    )
    .unwrap();
    (conf_dir, bridge, subnet)
}

/// Removes a cgroup and its children in every mounted hierarchy.
pub fn remove_cgroup_tree(path: &str) {
    // Processes killed a moment ago (the monitors and pod inits of
    // `kill_leftovers`) keep their cgroups busy until they have exited:
    // retry, bounded, until no hierarchy holds the tree any more.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !remove_cgroup_tree_once(path) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One pass over every hierarchy; true when the tree is gone from all.
fn remove_cgroup_tree_once(path: &str) -> bool {
    let rel = path.trim_start_matches('/');
    let mut dirs = vec![Path::new("/sys/fs/cgroup").join(rel)];
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        dirs.extend(hierarchies.flatten().map(|h| h.path().join(rel)));
    }
    for d in &dirs {
        remove_dirs_deepest_first(d);
    }
    !dirs.iter().any(|d| d.exists())
}

fn remove_dirs_deepest_first(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dirs_deepest_first(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Starts a daemon with extra environment variables (test hooks).
pub async fn start_with_env(extra_toml: &str, env: &[(&str, &str)]) -> TestDaemon {
    let dir = tempfile::Builder::new()
        .prefix("crius-e2e-")
        .tempdir()
        .unwrap();
    let base = dir.path().to_path_buf();
    let mut d = TestDaemon {
        socket: base.join("run/crius.sock"),
        root: base.join("root"),
        state: base.join("state"),
        config: base.join("crius.toml"),
        log: base.join("crius.log"),
        dir,
        child: None,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        bridge: None,
        subnet: None,
        cgroup_parent: None,
        monitors_cgroup: None,
    };
    let mut toml = extra_toml.to_string();
    let tag = &crius::ids::new_id()[..8];
    // Never /etc/cni: the test's own network, bridge and IP leases.
    if !toml.contains("[network]") {
        let (conf_dir, bridge, subnet) = test_network(&base, tag);
        toml.push_str(&format!(
            "\n[network]\nconf_dir = \"{}\"\n",
            conf_dir.display()
        ));
        d.bridge = Some(bridge);
        d.subnet = Some(subnet);
    }
    // Pods of parallel tests never share a cgroup parent (a daemon sweeps
    // pod cgroups without a record under its parent at start).
    // The VM tier's systemd guest sets CRIUS_E2E_CGROUP_DRIVER=systemd
    // (hack/vm/tests.list): pods become slices below the test's own slice.
    if !toml.contains("[cgroup]") {
        if std::env::var("CRIUS_E2E_CGROUP_DRIVER").is_ok_and(|v| v == "systemd") {
            let slice = format!("criuse2e{tag}.slice");
            toml.push_str(&format!(
                "\n[cgroup]\ndriver = \"systemd\"\ndefault_parent = \"{slice}\"\n"
            ));
            d.cgroup_parent = Some(format!("/{slice}"));
            d.monitors_cgroup = Some(format!("/criuse2e{tag}-monitors.scope"));
        } else {
            let parent = format!("/crius-e2e-{tag}");
            toml.push_str(&format!("\n[cgroup]\ndefault_parent = \"{parent}\"\n"));
            d.monitors_cgroup = Some(format!("{parent}-monitors"));
            d.cgroup_parent = Some(parent);
        }
    }
    std::fs::write(&d.config, toml).unwrap();
    d.spawn();
    d.wait_ready().await;
    d
}

/// The pids of the pod monitors a daemon with this state dir started, from
/// the pid files they write (alive ones only).
pub fn monitor_pids(state: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir(state.join("pods")) else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(text) = std::fs::read(e.path().join("monitor.pid")) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
            continue;
        };
        let (Some(pid), Some(start)) = (v["pid"].as_i64(), v["start_time"].as_u64()) else {
            continue;
        };
        if crius::sys::process::start_time(pid as i32) == Some(start) {
            pids.push(pid as i32);
        }
    }
    pids
}

/// Kills the monitors a test left behind, and their children (pod inits).
fn kill_leftovers(state: &Path) {
    for pid in monitor_pids(state) {
        for child in children_of(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The direct children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Lazily unmounts everything mounted under `dir` (deepest first).
pub fn unmount_under(dir: &Path) {
    for m in crius::sys::mount::mounts_under(dir) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A tonic channel over a unix socket (the URI is a placeholder).
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
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
}

/// Runs the crius binary with `args` and returns (success, stderr).
pub fn run_crius(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
