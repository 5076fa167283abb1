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

fn run(one: SingleThreaded, dir: &Path) -> UsernsProbe {
    let mut p = UsernsProbe::default();
    // 1. A mapped user namespace, held by a child until we are done.
    let (mut parent_end, mut child_end) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(e) => return p.failed(format!("socketpair: {e}")),
    };
    let pid = match fork_into(one, CloneFlags::CLONE_NEWUSER) {
        Ok(Forked::Child) => {
            drop(parent_end);
            let mut b = [0u8; 1];
            let _ = child_end.read(&mut b);
            exit_immediately(0)
        }
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => {
            return p.failed(format!(
                "create a user namespace: {}",
                crate::error::chain(&e)
            ));
        }
    };
    drop(child_end);
    let maps = UserMaps {
        uid: PROBE_MAP,
        gid: PROBE_MAP,
    };
    let result = crate::sys::ns::write_maps(pid.as_raw(), &maps)
        .map_err(|e| format!("map a user namespace: {}", crate::error::chain(&e)))
        .and_then(|()| {
            let path = crate::sys::ns::Kind::User.proc_path(pid.as_raw());
            std::fs::File::open(&path)
                .map(OwnedFd::from)
                .map_err(|e| format!("open {}: {e}", path.display()))
        });
    let outcome = match result {
        Ok(userns) => {
            p.user_namespaces = true;
            idmap_probes(&mut p, dir, &userns)
        }
        Err(e) => Err(e),
    };
    let _ = parent_end.write_all(b"x");
    drop(parent_end);
    let _ = nix::sys::wait::waitpid(pid, None);
    match outcome {
        Ok(()) => p,
        Err(e) => p.failed(e),
    }
}

/// Probes 2 and 3.
fn idmap_probes(p: &mut UsernsProbe, dir: &Path, userns: &OwnedFd) -> Result<(), String> {
    crate::sys::idmap::idmapped_clone(dir, userns, false).map_err(|e| crate::error::chain(&e))?;
    p.idmapped_mounts = true;
    nix::sched::unshare(CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare the mount namespace: {e}"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make mounts private: {e}"))?;
    let scratch = dir.join(format!(".userns-probe-{}", std::process::id()));
    std::fs::create_dir(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let result = overlay_probe(&scratch, userns);
    let _ = nix::mount::umount2(&scratch.join("m"), MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(&scratch.join("i"), MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&scratch);
    result?;
    p.overlay_idmapped = true;
    Ok(())
}

fn overlay_probe(s: &Path, userns: &OwnedFd) -> Result<(), String> {
    for d in ["lower", "i", "u", "w", "m"] {
        std::fs::create_dir(s.join(d)).map_err(|e| format!("create {d}: {e}"))?;
    }
    // Owned by host root (the daemon's files are): seen as the mapping's base.
    std::fs::write(s.join("lower/f"), b"").map_err(|e| format!("create a file: {e}"))?;
    let tree = crate::sys::idmap::idmapped_clone(&s.join("lower"), userns, false)
        .map_err(|e| crate::error::chain(&e))?;
    crate::sys::idmap::move_mount_to(&tree, &s.join("i")).map_err(|e| crate::error::chain(&e))?;
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
    .map_err(|e| format!("overlayfs over an idmapped layer (Linux >= 5.19): {e}"))?;
    let uid = std::fs::metadata(s.join("m/f"))
        .map_err(|e| format!("stat through the overlay: {e}"))?
        .uid();
    if uid != PROBE_MAP.host_id {
        return Err(format!(
            "overlayfs shows a root-owned file of an idmapped layer as uid {uid}, not {}",
            PROBE_MAP.host_id
        ));
    }
    Ok(())
}
