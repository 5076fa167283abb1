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
    log: PathBuf,
}

impl TestDaemon {
    /// Starts a daemon whose config file holds `extra_toml` (paths are given
    /// as flags) and waits until it answers Version.
    pub async fn start(extra_toml: &str) -> TestDaemon {
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
        };
        std::fs::write(&d.config, extra_toml).unwrap();
        d.spawn();
        d.wait_ready().await;
        d
    }

    /// Starts the process (again, after `kill`), keeping the same dirs.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--listen")
            .arg(&self.socket)
            .arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--log-level")
            .arg("debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn crius");
        self.child = Some(child);
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
