//! The monitor's setup of a pod: new namespaces in a forked child, pinned
//! from the parent, sysctls written and lo brought up by the child from
//! inside them, the pod's /dev/shm. Each step is named, so a failure says
//! which one broke, and [`undo`] removes whatever was done.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::init::error::{Error, StepError, fail, io};
use crate::monitor::sync::{Message, Step};
use crate::monitor::{PodDir, Spec};
use crate::sys::exe::Sealed;
use crate::sys::mount::{Host, Mounts, detach_all};
use crate::sys::ns::{self, Kind};
use crate::sys::process::{Forked, ProcRef, SingleThreaded, exit_immediately, fork_into};
use crate::sys::sysctl;

/// What setup leaves running: the namespace child when it stays as the pod init.
pub struct Sandbox {
    pub init: Option<ProcRef>,
}

/// Sets the pod up as `spec` asks. On error, what was done is undone.
pub fn setup(one: SingleThreaded, dir: &PodDir, spec: &Spec) -> Result<Sandbox, StepError> {
    let result = setup_steps(one, dir, spec);
    if result.is_err() {
        undo(dir);
    }
    result
}

fn setup_steps(one: SingleThreaded, dir: &PodDir, spec: &Spec) -> Result<Sandbox, StepError> {
    let m = Host;
    let mut init = None;
    // 1. The namespaces, with hostname and sysctls applied from inside.
    let flags = spec
        .namespaces
        .iter()
        .map(|k| k.clone_flag())
        .fold(CloneFlags::empty(), |a, b| a | b);
    let pid_ns = spec.pid_namespace;
    // The pod init is a program of its own beside the monitor's binary,
    // checked before anything is created.
    let pod_init = if pid_ns {
        Some(pod_init_exe().map_err(fail(Step::FindPodInit))?)
    } else {
        None
    };
    if !flags.is_empty() || pid_ns {
        ns::ensure_shared_dir(&m, &spec.ns_root).map_err(fail(Step::PrepareNamespaceDir))?;
        std::fs::create_dir_all(&dir.ns_dir)
            .map_err(io(format!("create {}", dir.ns_dir.display())))
            .map_err(fail(Step::PrepareNamespaceDir))?;
        let all = if pid_ns {
            flags | CloneFlags::CLONE_NEWPID
        } else {
            flags
        };
        let (mut parent_end, child_end) = UnixStream::pair()
            .map_err(io("socketpair"))
            .map_err(fail(Step::CreateNamespaces))?;
        let pid = match fork_into(one, all).map_err(fail(Step::CreateNamespaces))? {
            Forked::Child => {
                drop(parent_end);
                namespace_child(child_end, spec, pod_init.as_ref())
            }
            Forked::Parent(pid) => pid,
        };
        drop(child_end);
        let child = ChildGuard(pid);
        // 1b. The user namespace's mappings, from here (the host's user
        //     namespace): the child waits for them before anything else.
        if let Some(maps) = &spec.user {
            ns::write_maps(pid.as_raw(), maps).map_err(fail(Step::MapUserIds))?;
            parent_end
                .write_all(b"m")
                .map_err(io("tell the namespace child its ids are mapped"))
                .map_err(fail(Step::MapUserIds))?;
        }
        // 2. The child reports how its in-namespace work went.
        let mut report = String::new();
        let _ = (&parent_end).take(4096).read_to_string(&mut report);
        match Message::decode(&report) {
            Some(Message::Ready) => {}
            Some(Message::Failed { step, message }) => {
                return Err(fail(step)(Error::Reported(message)));
            }
            _ => {
                let early = format!("namespace child ended early: {report:?}");
                return Err(fail(Step::CreateNamespaces)(Error::Reported(early)));
            }
        }
        // 3. Pin them from the host mount namespace.
        for &kind in &spec.namespaces {
            ns::pin(&m, pid.as_raw(), kind, &dir.ns(kind)).map_err(fail(Step::PinNamespaces))?;
        }
        // The child now becomes the pod init, or has served its purpose
        // (the guard kills and reaps it).
        if pid_ns {
            parent_end
                .write_all(b"go\n")
                .map_err(io("tell the namespace child to become the pod init"))
                .map_err(fail(Step::StartPodInit))?;
            init = ProcRef::of(pid.as_raw());
            std::mem::forget(child);
        }
    }
    // 4. The pod's /dev/shm.
    if let Some(size) = spec.shm_size {
        let shm = dir.shm();
        std::fs::create_dir_all(&shm)
            .map_err(io(format!("create {}", shm.display())))
            .map_err(fail(Step::MountShm))?;
        // In the pod's user namespace its root owns it, as a host pod's
        // root owns its own.
        let owner = spec
            .user
            .and_then(|m| Some((m.uid.to_host(0)?, m.gid.to_host(0)?)));
        m.tmpfs(&shm, size, owner).map_err(fail(Step::MountShm))?;
    }
    Ok(Sandbox { init })
}

/// Kills and reaps the namespace child unless forgotten.
struct ChildGuard(Pid);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(self.0, None);
    }
}

/// The forked child, inside the new namespaces: hostname, sysctls, lo up,
/// report, then wait to be pinned and either exit or become the pod init.
fn namespace_child(mut sock: UnixStream, spec: &Spec, pod_init: Option<&Sealed>) -> ! {
    if spec.user.is_some() {
        let mut mapped = [0u8; 1];
        if sock.read_exact(&mut mapped).is_err() {
            exit_immediately(1);
        }
    }
    let result = (|| -> Result<(), Message> {
        let failed = |step, message| Message::Failed { step, message };
        // Root of the pod's user namespace (mapped by now) before the
        // sysctls: IPC and mqueue sysctls of a namespace owned by it are
        // its root's files (a write as the unmapped host root is EACCES).
        if spec.user.is_some() {
            crate::sys::process::become_root_in_user_namespace().map_err(|e| {
                failed(
                    Step::MapUserIds,
                    format!("become root of the pod's user namespace: {e}"),
                )
            })?;
        }
        if let Some(name) = &spec.hostname
            && spec.namespaces.contains(&Kind::Uts)
        {
            nix::unistd::sethostname(name)
                .map_err(|e| failed(Step::SetHostname, format!("hostname {name:?}: {e}")))?;
        }
        for (name, value) in &spec.sysctls {
            sysctl::write(name, value).map_err(|e| {
                let why = format!("sysctl {name}={value}: {}", crate::error::chain(&e));
                failed(Step::ApplySysctls, why)
            })?;
        }
        // A new network namespace starts with lo down. Up here, after the
        // sysctls (an IPv6 one may keep ::1 off it), it costs an ioctl,
        // not a run of the CNI loopback plugin (a Go binary, 5-7 ms).
        if spec.namespaces.contains(&Kind::Net) {
            crate::sys::net::loopback_up()
                .map_err(|e| failed(Step::LoopbackUp, crate::error::chain(&e)))?;
        }
        Ok(())
    })();
    let report = match &result {
        Ok(()) => Message::Ready.encode(),
        Err(m) => m.encode(),
    };
    // Half-close so the parent's read_to_string ends.
    let _ = sock.write_all(report.as_bytes());
    let _ = sock.shutdown(std::net::Shutdown::Write);
    if result.is_err() {
        exit_immediately(1);
    }
    let mut go = [0u8; 3];
    if sock.read_exact(&mut go).is_err() {
        exit_immediately(1);
    }
    if let Some(exe) = pod_init {
        // Close-on-exec fds go; the socket is one of them.
        let _ = exe.exec(&[c"crius-pod-init"]);
        exit_immediately(127)
    }
    exit_immediately(0)
}

/// The pod init binary, sealed (see [`crate::sys::exe`]): the one the
/// daemon names in [`crate::monitor::POD_INIT_ENV`], else the one beside
/// this monitor's binary (a monitor the daemon ran from a sealed handle has
/// no host path of its own to look beside).
fn pod_init_exe() -> Result<Sealed, Error> {
    let path = match std::env::var_os(crate::monitor::POD_INIT_ENV) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let exe = std::env::current_exe().map_err(io("read /proc/self/exe"))?;
            exe.parent()
                .unwrap_or(std::path::Path::new("/"))
                .join(crate::monitor::POD_INIT_BIN)
        }
    };
    if !path.is_file() {
        return Err(Error::Refused(format!("{} is not a file", path.display())));
    }
    Ok(Sealed::open(&path)?)
}

/// Removes the pins and the /dev/shm mount of the pod, if present.
pub fn undo(dir: &PodDir) {
    let m = Host;
    for kind in [Kind::Net, Kind::Ipc, Kind::Uts, Kind::User] {
        let _ = ns::unpin(&m, &dir.ns(kind));
    }
    let _ = std::fs::remove_dir(&dir.ns_dir);
    let _ = detach_all(&m, &dir.shm());
}
