//! The daemon's side of a monitor: starting one (a re-exec of the crius
//! binary, never a fork of the multi-threaded daemon) and talking to it.

pub mod container;
pub mod launch;

pub use launch::Launch;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::protocol::{self as proto, Reply, Request, SetupReply};
use super::sync::Step;
use super::{PodDir, Spec};
use crate::error::{Classify, Kind};
use crate::record::step::{TEST_PAUSE_ENV, TEST_PAUSE_SECS_ENV};
use crate::sys::exe::Sealed;
use crate::sys::process::ProcRef;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A binary could not be run: the monitor, or `crius-pod-init` as a
    /// scope's [`Holder`].
    #[error("start {exe}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The monitor could not set the pod up; `step` names what failed.
    #[error("{step}: {message}")]
    Setup { step: Step, message: String },
    #[error("monitor of {dir} did not answer within {limit:?}")]
    Timeout { dir: PathBuf, limit: Duration },
    #[error("monitor of {dir}: {message}")]
    Protocol { dir: PathBuf, message: String },
    /// What the monitor printed for its pod's setup could not be read.
    #[error("setup reply of the monitor of {dir}")]
    SetupReply {
        dir: PathBuf,
        #[source]
        source: SetupReplyError,
    },
    #[error("{exe} --probe-userns answered {answer:?}")]
    Answer {
        exe: PathBuf,
        answer: String,
        #[source]
        source: serde_json::Error,
    },
    /// A request longer than a monitor reads: only a client's oversized
    /// input makes one.
    #[error("the request to the monitor of {dir} is {bytes} bytes, more than the {limit} it reads")]
    TooLarge {
        dir: PathBuf,
        bytes: usize,
        limit: usize,
    },
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::Setup { step, .. } => step.kind(),
            Error::Timeout { .. } => Kind::DeadlineExceeded,
            Error::TooLarge { .. } => Kind::InvalidArgument,
            _ => Kind::Internal,
        }
    }
}

/// A monitor that set its pod up.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub monitor: ProcRef,
    pub init: Option<ProcRef>,
}

/// The sealed handle of the monitor binary at `exe`, made once per path
/// and kept for the daemon's life (a detached read-only mount costs
/// nothing; a sealed memfd copy is made once).
fn sealed(exe: &Path) -> Result<std::sync::Arc<Sealed>, Error> {
    static CACHE: std::sync::Mutex<Vec<(PathBuf, std::sync::Arc<Sealed>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = cache.iter().find(|(p, _)| p == exe) {
        return Ok(s.clone());
    }
    let s = std::sync::Arc::new(Sealed::open(exe).map_err(|e| Error::Spawn {
        exe: exe.into(),
        source: std::io::Error::other(crate::error::chain(&e)),
    })?);
    cache.push((exe.to_path_buf(), s.clone()));
    Ok(s)
}

/// Runs `crius-monitor --probe-userns <dir>` (see
/// [`crate::monitor::process::probe`]) and reads what it found; blocking,
/// meant to run once at startup. A monitor that cannot run or answers
/// nonsense counts as "not supported", with the reason.
pub fn probe_userns(exe: &Path, dir: &Path) -> super::protocol::UsernsProbe {
    let run = || -> Result<super::protocol::UsernsProbe, Error> {
        let sealed = sealed(exe)?;
        let mut cmd = std::process::Command::new(sealed.exec_path());
        std::os::unix::process::CommandExt::arg0(&mut cmd, super::MONITOR_BIN);
        let out = cmd
            .arg("--probe-userns")
            .arg(dir)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .env_clear()
            .output()
            .map_err(|source| Error::Spawn {
                exe: exe.into(),
                source,
            })?;
        serde_json::from_slice(out.stdout.trim_ascii()).map_err(|source| Error::Answer {
            exe: exe.into(),
            answer: String::from_utf8_lossy(&out.stdout).into_owned(),
            source,
        })
    };
    run()
        .unwrap_or_else(|e| super::protocol::UsernsProbe::default().failed(crate::error::chain(&e)))
}

/// A process that holds a cgroup until a container's init is in it. A
/// systemd scope cannot be made empty, and a container with a cgroup
/// namespace of its own must be born in its scope (the namespace is rooted
/// where its creator is, and so is its /sys/fs/cgroup), so the scope is
/// made with this process and the init is then cloned into it, as runc
/// makes it with its blocked `runc init`. It is `crius-pod-init` run as a
/// plain child of the daemon: a few pages, every privilege given up, it
/// only waits. [`Holder::release`] kills and reaps it; dropped, it is
/// killed.
#[derive(Debug)]
pub struct Holder {
    child: tokio::process::Child,
    pub pid: i32,
}

impl Holder {
    /// Runs `pod_init` (from a sealed copy, as the monitors are run).
    pub fn spawn(pod_init: &Path) -> Result<Holder, Error> {
        let sealed = sealed(pod_init)?;
        let mut cmd = tokio::process::Command::new(sealed.exec_path());
        cmd.arg0(super::POD_INIT_BIN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_clear()
            .kill_on_drop(true);
        let spawn = |source| Error::Spawn {
            exe: pod_init.into(),
            source,
        };
        let child = cmd.spawn().map_err(spawn)?;
        let pid = child
            .id()
            .ok_or_else(|| spawn(std::io::Error::other("the holder exited at once")))?;
        Ok(Holder {
            child,
            pid: pid as i32,
        })
    }

    /// Kills the holder and reaps it.
    pub async fn release(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Starts the monitor of `pod` (`crius-monitor <pod dir>`) and waits for its
/// setup reply. On failure the monitor has exited (or is killed) and reaped.
pub async fn start(
    exe: &Path,
    pod: &PodDir,
    spec: &Spec,
    limit: Duration,
) -> Result<Started, Error> {
    let spec_path = pod.spec();
    let text = serde_json::to_vec_pretty(spec).expect("serializable");
    std::fs::write(&spec_path, text).map_err(|source| Error::Io {
        what: "write monitor spec",
        path: spec_path.clone(),
        source,
    })?;
    let log_path = pod.log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| Error::Io {
            what: "open monitor log",
            path: log_path,
            source,
        })?;
    // The monitor runs from a sealed handle of its binary, never the host
    // path: every container init and exec helper is a fork of it, and a
    // container must not be able to reopen /proc/<pid>/exe for writing.
    let sealed = sealed(exe)?;
    let pod_init = exe
        .parent()
        .unwrap_or(Path::new("/"))
        .join(super::POD_INIT_BIN);
    let mut child = std::process::Command::new(sealed.exec_path());
    std::os::unix::process::CommandExt::arg0(&mut child, super::MONITOR_BIN);
    child
        .arg(&pod.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env(super::POD_INIT_ENV, &pod_init);
    // Test hooks reach the monitor (and the inits it forks) only from a
    // daemon that has them itself (see crate::init::setup::test_pause).
    for var in [TEST_PAUSE_ENV, TEST_PAUSE_SECS_ENV] {
        if let Some(value) = std::env::var_os(var) {
            child.env(var, value);
        }
    }
    let mut child = child.spawn().map_err(|source| Error::Spawn {
        exe: exe.into(),
        source,
    })?;
    let stdout: OwnedFd = child.stdout.take().expect("piped").into();
    let reply = tokio::time::timeout(limit, read_setup(stdout)).await;
    let reply = match reply {
        Ok(Ok(reply)) => reply,
        Ok(Err(source)) => {
            reap(child).await;
            return Err(Error::SetupReply {
                dir: pod.dir.clone(),
                source,
            });
        }
        Err(_) => {
            let _ = child.kill();
            reap(child).await;
            return Err(Error::Timeout {
                dir: pod.dir.clone(),
                limit,
            });
        }
    };
    match reply {
        // The child handle is dropped without waiting: the pod's watcher
        // reaps the monitor through its pidfd when it ends.
        SetupReply::Ready { monitor, init } => Ok(Started { monitor, init }),
        SetupReply::Failed { step, message } => {
            reap(child).await;
            Err(Error::Setup { step, message })
        }
    }
}

async fn reap(mut child: std::process::Child) {
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
}

/// Why a monitor's setup reply could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SetupReplyError {
    #[error("read the monitor's stdout")]
    Read(#[source] std::io::Error),
    #[error("the monitor exited before it set the pod up (see monitor.log)")]
    Exited,
    #[error("bad setup reply {line:?}")]
    Parse {
        line: String,
        #[source]
        source: serde_json::Error,
    },
}

async fn read_setup(stdout: OwnedFd) -> Result<SetupReply, SetupReplyError> {
    let pipe =
        tokio::net::unix::pipe::Receiver::from_owned_fd(stdout).map_err(SetupReplyError::Read)?;
    let mut line = String::new();
    BufReader::new(pipe)
        .read_line(&mut line)
        .await
        .map_err(SetupReplyError::Read)?;
    if line.is_empty() {
        return Err(SetupReplyError::Exited);
    }
    serde_json::from_str(&line).map_err(|source| SetupReplyError::Parse { line, source })
}

/// One connection to a monitor: the handshake done, requests in order.
pub struct Connection {
    dir: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    /// The protocol version the monitor speaks.
    pub version: u32,
    pub monitor: ProcRef,
}

/// How long one exchange with a monitor may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Connection {
    /// Connects and says hello; refuses a monitor whose version this daemon
    /// cannot drive.
    pub async fn open(pod: &PodDir) -> Result<Connection, Error> {
        let path = pod.socket();
        let (dir_fd, short) = crate::monitor::socket_path(pod).map_err(|source| Error::Io {
            what: "open pod directory",
            path: pod.dir.clone(),
            source,
        })?;
        let stream = tokio::time::timeout(CALL_TIMEOUT, tokio::net::UnixStream::connect(&short))
            .await
            .map_err(|_| Error::Timeout {
                dir: pod.dir.clone(),
                limit: CALL_TIMEOUT,
            })?
            .map_err(|source| Error::Io {
                what: "connect to monitor",
                path,
                source,
            })?;
        drop(dir_fd);
        let (r, w) = stream.into_split();
        let mut conn = Connection {
            dir: pod.dir.clone(),
            reader: BufReader::new(r),
            writer: w,
            version: 0,
            monitor: ProcRef {
                pid: 0,
                start_time: 0,
            },
        };
        match conn
            .call(&Request::Hello {
                version: proto::VERSION,
            })
            .await?
        {
            Reply::Hello { version, monitor } if proto::supported(version) => {
                conn.version = version;
                conn.monitor = monitor;
                Ok(conn)
            }
            other => Err(conn.protocol(format!("handshake refused: {other:?}"))),
        }
    }

    fn protocol(&self, message: String) -> Error {
        Error::Protocol {
            dir: self.dir.clone(),
            message,
        }
    }

    /// `req` as the line the monitor reads, refused when longer than it
    /// reads ([`proto::MAX_REQUEST`]).
    fn request_line(&self, req: &impl serde::Serialize) -> Result<Vec<u8>, Error> {
        let mut line = serde_json::to_vec(req).expect("serializable");
        line.push(b'\n');
        if line.len() > proto::MAX_REQUEST {
            return Err(Error::TooLarge {
                dir: self.dir.clone(),
                bytes: line.len(),
                limit: proto::MAX_REQUEST,
            });
        }
        Ok(line)
    }

    /// Sends one request and reads its reply.
    pub async fn call(&mut self, req: &Request<'_>) -> Result<Reply, Error> {
        self.call_within(req, Some(CALL_TIMEOUT)).await
    }

    /// Sends one request and reads its reply, waiting at most `limit`
    /// (`None`: as long as it takes, e.g. a wait for an exit).
    pub async fn call_within(
        &mut self,
        req: &(impl serde::Serialize + Sync),
        limit: Option<Duration>,
    ) -> Result<Reply, Error> {
        let line = self.request_line(req)?;
        let exchange = async {
            self.writer.write_all(&line).await?;
            let mut reply = String::new();
            self.reader.read_line(&mut reply).await?;
            Ok::<_, std::io::Error>(reply)
        };
        let reply = match limit {
            Some(limit) => {
                tokio::time::timeout(limit, exchange)
                    .await
                    .map_err(|_| Error::Timeout {
                        dir: self.dir.clone(),
                        limit,
                    })?
            }
            None => exchange.await,
        }
        .map_err(|e| self.protocol(format!("exchange failed: {e}")))?;
        if reply.is_empty() {
            return Err(self.protocol("closed the connection".into()));
        }
        serde_json::from_str(&reply).map_err(|e| self.protocol(format!("bad reply {reply:?}: {e}")))
    }
}

impl Connection {
    /// Sends one request and reads a reply that may carry fds (SCM_RIGHTS
    /// on its first bytes). The reader holds no buffered bytes between
    /// exchanges (one reply per request), so the socket is read directly.
    pub async fn call_with_fds(
        &mut self,
        req: &Request<'_>,
        limit: Duration,
    ) -> Result<(Reply, Vec<OwnedFd>), Error> {
        if !self.reader.buffer().is_empty() {
            return Err(self.protocol("unexpected bytes before a reply with fds".into()));
        }
        let line = self.request_line(req)?;
        let exchange = async {
            self.writer.write_all(&line).await?;
            let stream: &tokio::net::UnixStream = self.reader.get_ref().as_ref();
            let mut data = Vec::new();
            let mut fds = Vec::new();
            while !data.ends_with(b"\n") {
                stream.readable().await?;
                match stream.try_io(tokio::io::Interest::READABLE, || {
                    crate::sys::fds::recv_with_fds(stream, &mut data, &mut fds)
                }) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            Ok::<_, std::io::Error>((data, fds))
        };
        let (data, fds) = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| Error::Timeout {
                dir: self.dir.clone(),
                limit,
            })?
            .map_err(|e| self.protocol(format!("exchange failed: {e}")))?;
        if data.is_empty() {
            return Err(self.protocol("closed the connection".into()));
        }
        let reply = serde_json::from_slice(&data).map_err(|e| {
            self.protocol(format!(
                "bad reply {:?}: {e}",
                String::from_utf8_lossy(&data)
            ))
        })?;
        Ok((reply, fds))
    }
}

/// Asks the monitor of `pod` to kill its children and exit.
pub async fn shutdown(pod: &PodDir) -> Result<(), Error> {
    let mut conn = Connection::open(pod).await?;
    match conn.call(&Request::Shutdown).await? {
        Reply::Ok => Ok(()),
        other => Err(conn.protocol(format!("shutdown refused: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_holder_whose_binary_is_missing_names_it() {
        let err = Holder::spawn(Path::new("/nonexistent/crius-pod-init")).unwrap_err();
        let text = crate::error::chain(&err);
        assert!(
            text.starts_with("start /nonexistent/crius-pod-init"),
            "{text}"
        );
        assert_eq!(err.kind(), Kind::Internal);
    }
}
