//! `crius-monitor --probe-userns <dir>`: whether pods with their own user
//! namespace can run here, asked once by the daemon (which must not fork
//! itself) and reported in Status (RuntimeHandlerFeatures.user_namespaces).
//! Three probes, each needing the one before:
//! 1. a user namespace can be made and mapped (a child cloned into one);
//! 2. a mount of `<dir>`'s filesystem can be idmapped through it
//!    (mount_setattr MOUNT_ATTR_IDMAP, Linux >= 5.12 and a filesystem that
//!    supports it);
//! 3. overlayfs accepts an idmapped lower layer (Linux >= 5.19) and shows
//!    its files through the mapping: done in a private mount namespace of
//!    this process on a scratch dir under `<dir>`, removed after.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::monitor::protocol::UsernsProbe;
use crate::sys::ns::{IdMap, UserMaps};
use crate::sys::process::{Forked, SingleThreaded, exit_immediately, fork_into};

/// The ids the probe maps (as critest's own idmap probe does).
const PROBE_MAP: IdMap = IdMap {
    container_id: 0,
    host_id: 65536,
    length: 65536,
};

/// Runs the probes on `dir`'s filesystem and prints the result as one JSON
/// line on stdout.
#[allow(unsafe_code)]
pub fn main(dir: &Path) -> std::process::ExitCode {
    // SAFETY: called first by crius-monitor's main in probe mode; the
    // program starts no thread.
    let one = unsafe { SingleThreaded::new() };
    let probe = run(one, dir);
    println!("{}", serde_json::to_string(&probe).expect("serializable"));
    std::process::ExitCode::SUCCESS
}

/// Why a probe failed (its message is what Status reports).
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("socketpair")]
    SocketPair(#[source] std::io::Error),
    #[error("create a user namespace")]
    UserNamespace(#[source] crate::sys::Error),
    #[error("map a user namespace")]
    Map(#[source] crate::sys::Error),
    #[error("open {}", path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("idmap a mount")]
    Idmap(#[source] crate::sys::Error),
    #[error("unshare the mount namespace")]
    Unshare(#[source] nix::Error),
    #[error("make mounts private")]
    Private(#[source] nix::Error),
    #[error("create {}", path.display())]
    Create {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("overlayfs over an idmapped layer (Linux >= 5.19)")]
    Overlay(#[source] nix::Error),
    #[error("stat through the overlay")]
    Stat(#[source] std::io::Error),
    #[error("overlayfs shows a root-owned file of an idmapped layer as uid {uid}, not {want}")]
    Owner { uid: u32, want: u32 },
}

fn run(one: SingleThreaded, dir: &Path) -> UsernsProbe {
    let mut p = UsernsProbe::default();
    match probe(one, dir, &mut p) {
        Ok(()) => p,
        Err(e) => p.failed(crate::error::chain(&e)),
    }
}

/// The probes in order, each setting its finding in `p`.
fn probe(one: SingleThreaded, dir: &Path, p: &mut UsernsProbe) -> Result<(), Error> {
    // 1. A mapped user namespace, held by a child until we are done.
    let (mut parent_end, mut child_end) = UnixStream::pair().map_err(Error::SocketPair)?;
    let pid = match fork_into(one, CloneFlags::CLONE_NEWUSER).map_err(Error::UserNamespace)? {
        Forked::Child => {
            drop(parent_end);
            let mut b = [0u8; 1];
            let _ = child_end.read(&mut b);
            exit_immediately(0)
        }
        Forked::Parent(pid) => pid,
    };
    drop(child_end);
    let maps = UserMaps {
        uid: PROBE_MAP,
        gid: PROBE_MAP,
    };
    let result = crate::sys::ns::write_maps(pid.as_raw(), &maps)
        .map_err(Error::Map)
        .and_then(|()| {
            let path = crate::sys::ns::Kind::User.proc_path(pid.as_raw());
            std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(|source| Error::Open { path, source })
        });
    let outcome = result.and_then(|userns| {
        p.user_namespaces = true;
        idmap_probes(p, dir, &userns)
    });
    let _ = parent_end.write_all(b"x");
    drop(parent_end);
    let _ = nix::sys::wait::waitpid(pid, None);
    outcome
}

/// Probes 2 and 3.
fn idmap_probes(p: &mut UsernsProbe, dir: &Path, userns: &OwnedFd) -> Result<(), Error> {
    crate::sys::idmap::idmapped_clone(dir, userns, false).map_err(Error::Idmap)?;
    p.idmapped_mounts = true;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(Error::Unshare)?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(Error::Private)?;
    let scratch = dir.join(format!(".userns-probe-{}", std::process::id()));
    std::fs::create_dir(&scratch).map_err(|source| Error::Create {
        path: scratch.clone(),
        source,
    })?;
    let result = overlay_probe(&scratch, userns);
    let _ = nix::mount::umount2(&scratch.join("m"), MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(&scratch.join("i"), MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    p.overlay_idmapped = true;
    Ok(())
}

fn overlay_probe(s: &Path, userns: &OwnedFd) -> Result<(), Error> {
    let create = |path: std::path::PathBuf| move |source| Error::Create { path, source };
    for d in ["lower", "i", "u", "w", "m"] {
        std::fs::create_dir(s.join(d)).map_err(create(s.join(d)))?;
    }
    // Owned by host root (the daemon's files are): seen as the mapping's base.
    std::fs::write(s.join("lower/f"), b"").map_err(create(s.join("lower/f")))?;
    let tree =
        crate::sys::idmap::idmapped_clone(&s.join("lower"), userns, false).map_err(Error::Idmap)?;
    crate::sys::idmap::move_mount_to(&tree, &s.join("i")).map_err(Error::Idmap)?;
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.join("i").display(),
        s.join("u").display(),
        s.join("w").display()
    );
    nix::mount::mount(
        Some("overlay"),
        &s.join("m"),
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(Error::Overlay)?;
    let uid = std::fs::metadata(s.join("m/f")).map_err(Error::Stat)?.uid();
    if uid != PROBE_MAP.host_id {
        return Err(Error::Owner {
            uid,
            want: PROBE_MAP.host_id,
        });
    }
    Ok(())
}
