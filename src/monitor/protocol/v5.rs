//! Protocol 5, as the monitor of crius before protocol 6 (main at
//! `ecfda08`, `src/monitor/protocol.rs`) read requests and wrote replies:
//! its types, kept for the tests that play such a monitor after an
//! upgrade of the daemon. Their wire form is pinned by the lines
//! recorded in [`super::tests`]; the shared pieces (`Step`, `ProcRef`,
//! `Exit`, the launch's parts) are today's types, whose wire form those
//! lines pin too.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ExecLaunch, Exit, SeccompFilter};
use crate::init::rootfs::{ImageVolume, Overlay};
use crate::monitor::sync::Step;
use crate::sys::process::ProcRef;

/// The version these types speak.
pub const VERSION: u32 = 5;
/// The oldest daemon version a protocol 5 monitor accepted in `hello`.
pub const MIN_VERSION: u32 = 1;

/// Protocol 5's requests (`exec`'s launch had the fields of today's
/// [`ExecLaunch`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)]
pub enum Request {
    Hello { version: u32 },
    Status,
    Shutdown,
    CreateContainer { launch: ContainerLaunch },
    StartContainer { id: String },
    SignalContainer { id: String, signal: i32 },
    WaitContainer { id: String },
    ReopenContainerLog { id: String },
    RemoveContainer { id: String },
    Exec { launch: ExecLaunch },
    WaitExec { id: String },
    SignalExec { id: String, signal: i32 },
    AttachContainer { id: String, stdin: bool },
    ResizeContainer { id: String, width: u16, height: u16 },
}

/// Protocol 5's replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Hello {
        version: u32,
        monitor: ProcRef,
    },
    Status {
        init: Option<ProcRef>,
        init_exit: Option<Exit>,
    },
    Ok,
    Error {
        message: String,
    },
    Failed {
        step: Step,
        message: String,
    },
    Created {
        init: ProcRef,
    },
    Exited {
        exit: Exit,
    },
    ExecStarted {
        process: ProcRef,
        fds: usize,
    },
    Attached {
        fds: usize,
        stdin: bool,
        tty: bool,
    },
}

/// Protocol 5's container launch: the OCI Spec and the image's dirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerLaunch {
    pub id: String,
    pub spec: oci_spec::runtime::Spec,
    pub env: Vec<Vec<u8>>,
    pub user: String,
    #[serde(default)]
    pub groups: crate::init::user::GroupsPolicy,
    #[serde(default)]
    pub seccomp: Option<SeccompFilter>,
    pub overlay: Overlay,
    #[serde(default)]
    pub volumes: Vec<ImageVolume>,
    pub cgroup_procs: Vec<PathBuf>,
    pub log_path: Option<PathBuf>,
    #[serde(default)]
    pub log_dir: Option<PathBuf>,
    pub tty: bool,
    pub stdin: bool,
    pub stdin_once: bool,
}

/// What a protocol 5 monitor answered a line it could not read (its
/// `answer_lines`): an error reply, never a closed connection.
pub fn unsupported(e: &serde_json::Error) -> Reply {
    Reply::Error {
        message: format!("unsupported request: {e}"),
    }
}
