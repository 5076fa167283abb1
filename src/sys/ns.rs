//! Linux namespaces (namespaces(7)): the kinds a pod shares, their identity
//! (the nsfs inode), pinning one by bind-mounting its /proc/PID/ns file onto
//! a plain file so it outlives every process in it (as `ip netns add`
//! does), and joining one (setns(2)).
//!
//! Pins live in `<state>/ns/<pod-id>/{net,ipc,uts}`. `<state>/ns` is a
//! mount point of its own with shared propagation: when a pin is removed
//! the unmount propagates to copies of it in other mount namespaces, which
//! would otherwise keep a dead pod's namespace alive.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;
use serde::{Deserialize, Serialize};

use super::mount::{Mounts, detach_all};
use super::{Result, io, sys};

/// The namespace kinds crius creates or joins (a pod shares net, ipc, uts,
/// pid and user; a container has its own mnt and may have its own cgroup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Net,
    Ipc,
    Uts,
    Pid,
    Mnt,
    Cgroup,
    User,
}

impl Kind {
    /// The name of its file under /proc/PID/ns.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Net => "net",
            Kind::Ipc => "ipc",
            Kind::Uts => "uts",
            Kind::Pid => "pid",
            Kind::Mnt => "mnt",
            Kind::Cgroup => "cgroup",
            Kind::User => "user",
        }
    }

    /// The one mapping of kinds to clone(2)/setns(2) flags.
    pub fn clone_flag(self) -> CloneFlags {
        match self {
            Kind::Net => CloneFlags::CLONE_NEWNET,
            Kind::Ipc => CloneFlags::CLONE_NEWIPC,
            Kind::Uts => CloneFlags::CLONE_NEWUTS,
            Kind::Pid => CloneFlags::CLONE_NEWPID,
            Kind::Mnt => CloneFlags::CLONE_NEWNS,
            Kind::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            Kind::User => CloneFlags::CLONE_NEWUSER,
        }
    }

    /// /proc/PID/ns/<kind>.
    pub fn proc_path(self, pid: i32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/ns/{}", self.name()))
    }
}

/// One id range of a user namespace (user_namespaces(7)): `length` ids
/// from `container_id` inside are `host_id`.. on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

impl IdMap {
    /// The host id of container id `id`, if the range maps it.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        let off = id.checked_sub(self.container_id)?;
        (off < self.length).then(|| self.host_id + off)
    }

    /// The line /proc/PID/uid_map and gid_map take.
    pub fn line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }
}

/// The mappings of a user namespace: one uid and one gid range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMaps {
    pub uid: IdMap,
    pub gid: IdMap,
}

/// Writes the mappings of the (new, still unmapped) user namespace of
/// process `pid`, gid_map first. The writer needs CAP_SETUID and
/// CAP_SETGID in the parent user namespace; setgroups stays allowed.
pub fn write_maps(pid: i32, maps: &UserMaps) -> Result<()> {
    for (file, map) in [("gid_map", &maps.gid), ("uid_map", &maps.uid)] {
        let path = PathBuf::from(format!("/proc/{pid}/{file}"));
        std::fs::write(&path, map.line()).map_err(io("write id map", &path))?;
    }
    Ok(())
}

/// The identity of a namespace file (a /proc link or a pin): its inode.
pub fn inode(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(io("stat namespace", path))
}

/// Makes `dir` a shared mount point of its own (bind-mounted onto itself
/// first when it is not a mount point yet), as `ip netns add` does.
pub fn ensure_shared_dir(m: &dyn Mounts, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io("create namespace directory", dir))?;
    match m.make_shared(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.errno() == Some(nix::Error::EINVAL) => {
            m.bind(dir, dir)?;
            m.make_shared(dir)
        }
        Err(e) => Err(e),
    }
}

/// Pins namespace `kind` of process `pid` at `dst`. On failure nothing is
/// left at `dst`.
pub fn pin(m: &dyn Mounts, pid: i32, kind: Kind, dst: &Path) -> Result<()> {
    m.create_file(dst)?;
    if let Err(e) = m.bind(&kind.proc_path(pid), dst) {
        let _ = std::fs::remove_file(dst);
        return Err(e);
    }
    Ok(())
}

/// Releases a pin: unmounts and removes the file. A missing pin is fine.
pub fn unpin(m: &dyn Mounts, path: &Path) -> Result<()> {
    detach_all(m, path)?;
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove namespace pin", path)(e)),
    }
}

/// Moves the calling thread into each namespace pinned (or linked) at the
/// given paths, in order. Every file is opened first: a joined mount
/// namespace would hide the later paths. Only for single-threaded helpers
/// or dedicated threads.
pub fn join(list: &[(PathBuf, Kind)]) -> Result<()> {
    enter(open(list)?)
}

/// Namespace files opened by [`open`], to be entered by [`enter`].
pub struct Opened<'a>(Vec<(std::fs::File, Kind, &'a Path)>);

/// Opens each namespace file of `list`, entering none yet (a caller may
/// check whose files they are in between).
pub fn open(list: &[(PathBuf, Kind)]) -> Result<Opened<'_>> {
    let mut files = Vec::with_capacity(list.len());
    for (path, kind) in list {
        let file = std::fs::File::open(path).map_err(io("open namespace", path))?;
        files.push((file, *kind, path.as_path()));
    }
    Ok(Opened(files))
}

/// Moves the calling thread into each namespace opened, in order.
pub fn enter(opened: Opened<'_>) -> Result<()> {
    for (file, kind, path) in opened.0 {
        nix::sched::setns(&file, kind.clone_flag()).map_err(sys(format!(
            "setns {} {}",
            kind.name(),
            path.display()
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::mount::Recorder;

    #[test]
    fn shared_dir_is_bound_onto_itself_only_when_not_a_mount() {
        let dir = tempfile::tempdir().unwrap();
        let ns = dir.path().join("ns");
        let r = Recorder::default();
        ensure_shared_dir(&r, &ns).unwrap();
        assert_eq!(r.lines(), [format!("shared {}", ns.display())]);
        assert!(ns.is_dir());

        let r = Recorder {
            fail: vec![(format!("shared {}", ns.display()), nix::Error::EINVAL)],
            ..Default::default()
        };
        // The fake keeps failing make_shared, so the second call fails too;
        // what matters is the order of the plan.
        let _ = ensure_shared_dir(&r, &ns);
        let d = ns.display();
        assert_eq!(
            r.lines(),
            [
                format!("shared {d}"),
                format!("bind {d} {d}"),
                format!("shared {d}")
            ]
        );
    }

    #[test]
    fn pin_binds_the_proc_file_and_cleans_up_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("net");
        let r = Recorder::default();
        pin(&r, 42, Kind::Net, &dst).unwrap();
        assert_eq!(
            r.lines(),
            [
                format!("create {}", dst.display()),
                format!("bind /proc/42/ns/net {}", dst.display())
            ]
        );
        std::fs::write(&dst, "").unwrap();
        let r = Recorder {
            fail: vec![("bind".into(), nix::Error::EPERM)],
            ..Default::default()
        };
        assert!(pin(&r, 42, Kind::Ipc, &dst).is_err());
        assert!(!dst.exists(), "a failed pin leaves no file");
    }

    #[test]
    fn unpin_of_a_missing_pin_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recorder {
            fail: vec![("detach".into(), nix::Error::ENOENT)],
            ..Default::default()
        };
        unpin(&r, &dir.path().join("gone")).unwrap();
    }

    #[test]
    fn id_maps() {
        let m = IdMap {
            container_id: 0,
            host_id: 65536,
            length: 65536,
        };
        assert_eq!(m.to_host(0), Some(65536));
        assert_eq!(m.to_host(65535), Some(131071));
        assert_eq!(m.to_host(65536), None);
        assert_eq!(m.line(), "0 65536 65536\n");
        assert_eq!(Kind::User.proc_path(7), PathBuf::from("/proc/7/ns/user"));
    }

    #[test]
    fn inode_identifies_namespaces() {
        let a = inode(&Kind::Net.proc_path(std::process::id() as i32)).unwrap();
        assert_eq!(a, inode(Path::new("/proc/self/ns/net")).unwrap());
        assert_ne!(a, inode(Path::new("/proc/self/ns/ipc")).unwrap());
    }
}
