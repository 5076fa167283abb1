//! The streaming server behind Exec, Attach and PortForward.
//!
//! The CRI calls only return a URL: `http(s)://<address>/<kind>/<token>`,
//! where the token is one-time and expires ([`tokens`]). The client (kubelet
//! proxying for the API server, crictl) then upgrades an HTTP/1.1 request on
//! that URL to SPDY/3.1 or WebSocket ([`server`]) and speaks one of the
//! Kubernetes stream protocols: remote command (`v5.channel.k8s.io` and
//! older, [`remotecommand`]) for exec and attach, `portforward.k8s.io`
//! ([`portforward`]) for port-forward, which WebSocket clients tunnel as
//! SPDY frames inside binary messages.
//!
//! What runs behind a stream comes from a [`Runtime`]: the daemon's
//! containers and pods in production ([`backend`]), a fake in unit tests.

pub mod backend;
mod fdio;
pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod tokens;
mod websocket;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::StreamingConfig;
use crate::error::{Classify, Kind};

pub use server::Server;

/// What a token stands for: the CRI request that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec {
        container_id: String,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    Attach {
        container_id: String,
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    },
    PortForward {
        pod_id: String,
    },
}

impl Request {
    /// The URL path segment of this kind of request.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Exec { .. } => "exec",
            Request::Attach { .. } => "attach",
            Request::PortForward { .. } => "portforward",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Precondition(String),
    #[error("too many streaming requests waiting for their client ({0})")]
    Exhausted(usize),
    /// An error of the runtime behind the stream, with its kind.
    #[error("{message}")]
    Runtime { kind: Kind, message: String },
    #[error("streaming server: {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("streaming server TLS: {0}")]
    Tls(String),
}

impl Error {
    /// Wraps a classified error of another module, keeping its kind.
    pub fn runtime(err: &(dyn Classify + 'static)) -> Error {
        Error::Runtime {
            kind: err.kind(),
            message: crate::error::chain(err),
        }
    }
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::NotFound(_) => Kind::NotFound,
            Error::Invalid(_) => Kind::InvalidArgument,
            Error::Precondition(_) => Kind::FailedPrecondition,
            Error::Exhausted(_) => Kind::ResourceExhausted,
            Error::Runtime { kind, .. } => *kind,
            Error::Io { .. } | Error::Tls(_) => Kind::Internal,
        }
    }
}

/// The server's settings, from `[streaming]` in the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `host:port` to listen on; port 0 picks a free one at start.
    pub address: String,
    pub token_ttl: Duration,
    /// PEM certificate chain and key: both set means HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long a client may take to open the streams of a session.
    pub stream_creation_timeout: Duration,
    /// How long output is still copied after the process exited (a
    /// background child may hold its stdout open for ever).
    pub drain: Duration,
}

impl Settings {
    pub fn from_config(c: &StreamingConfig) -> Settings {
        let tls = match (
            c.tls_cert_file.as_os_str().is_empty(),
            c.tls_key_file.as_os_str().is_empty(),
        ) {
            (false, false) => Some((c.tls_cert_file.clone(), c.tls_key_file.clone())),
            _ => None,
        };
        Settings {
            address: c.address.clone(),
            token_ttl: Duration::from_secs(c.token_ttl_secs),
            tls,
            stream_creation_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(1),
        }
    }
}

/// The stdio of a process behind a stream, as the daemon's fds.
#[derive(Debug)]
pub enum Stdio {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    /// A terminal: output and input on the pty master, resized through it.
    Pty { master: OwnedFd, stdin: bool },
}

/// Waiting for and ending the process behind a stream.
#[async_trait::async_trait]
pub trait Control: Send + Sync {
    /// The exit code, once the process has exited.
    async fn wait(&self) -> Result<i32, Error>;
    /// The client went away: end the process (exec: SIGKILL to its process
    /// group; attach: detach only).
    async fn abandon(&self);
    /// Sets the size of a terminal the daemon does not hold (an attached
    /// container's, which its monitor holds); a pty master in
    /// [`Stdio::Pty`] is resized directly.
    async fn resize(&self, _width: u16, _height: u16) {}
}

pub struct Process {
    pub stdio: Stdio,
    pub control: Box<dyn Control>,
}

/// Where a port-forward connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetTarget {
    /// The pod's network namespace (pinned file).
    Netns(PathBuf),
    /// A host-network pod: the host's loopback.
    Host,
}

/// What the streaming server asks of the rest of the daemon.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// Checks a request when the CRI call arrives: an unknown container or
    /// pod is NotFound then, not when the client connects.
    async fn check(&self, req: &Request) -> Result<(), Error>;
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<Process, Error>;
    async fn attach(&self, container_id: &str, tty: bool, stdin: bool) -> Result<Process, Error>;
    async fn net_target(&self, pod_id: &str) -> Result<NetTarget, Error>;
}
