//! Binaries that run next to containers, made unwritable for them
//! (CVE-2019-5736): a process inside a container can reach the executable
//! of any crius process it can see through /proc/<pid>/exe, and a writable
//! reopen of that file would replace crius on the host. So the monitor,
//! which forks every container init and exec helper, and the pod init are
//! executed from a sealed handle, never from the host's path:
//!
//! - a detached read-only bind mount of the file (open_tree(2) with
//!   OPEN_TREE_CLONE + mount_setattr(2) MOUNT_ATTR_RDONLY, Linux >= 5.12,
//!   as runc 1.2 does): visible in no mount table, free, and every reopen of
//!   /proc/<pid>/exe is EROFS;
//! - else a memfd copy sealed against writes, growth and shrinking
//!   (memfd_create(2), F_ADD_SEALS).

use std::ffi::CStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::{Result, io, sys};

/// How the handle was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ReadOnlyMount,
    SealedMemfd,
}

/// An executable that nothing can write through.
#[derive(Debug)]
pub struct Sealed {
    fd: OwnedFd,
    pub kind: Kind,
}

impl Sealed {
    /// Seals `path` (see the module doc).
    pub fn open(path: &Path) -> Result<Sealed> {
        match readonly_mount(path) {
            Ok(fd) => Ok(Sealed {
                fd,
                kind: Kind::ReadOnlyMount,
            }),
            Err(_) => Ok(Sealed {
                fd: sealed_copy(path)?,
                kind: Kind::SealedMemfd,
            }),
        }
    }

    /// A path that executes it while this handle is open in the process
    /// that calls execve (the fd is close-on-exec: gone once exec is done).
    pub fn exec_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Replaces this process with the sealed program (execveat(2) on the
    /// fd); returns only on failure.
    pub fn exec(&self, argv: &[&CStr]) -> nix::Error {
        let env: [&CStr; 0] = [];
        match nix::unistd::fexecve(&self.fd, argv, &env) {
            Err(e) => e,
            Ok(never) => match never {},
        }
    }
}

fn readonly_mount(path: &Path) -> Result<OwnedFd> {
    let fd = super::idmap::open_tree_clone(path, false)?;
    super::mount::mount_setattr(
        fd.as_raw_fd(),
        c"",
        libc::AT_EMPTY_PATH,
        libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
    )
    .map_err(sys(format!(
        "make the bind of {} read-only",
        path.display()
    )))?;
    Ok(fd)
}

fn sealed_copy(path: &Path) -> Result<OwnedFd> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        c"crius-sealed-exe",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )
    .map_err(sys("memfd_create"))?;
    let mut src = std::fs::File::open(path).map_err(io("open", path))?;
    let mut dst = std::fs::File::from(fd);
    std::io::copy(&mut src, &mut dst).map_err(io("copy into a memfd", path))?;
    let seals = SealFlag::F_SEAL_SEAL
        | SealFlag::F_SEAL_SHRINK
        | SealFlag::F_SEAL_GROW
        | SealFlag::F_SEAL_WRITE;
    fcntl(&dst, FcntlArg::F_ADD_SEALS(seals)).map_err(sys("seal the memfd"))?;
    Ok(dst.into())
}

/// Whether the file behind `fd` can be written by anyone: false for a file
/// on a read-only mount or a memfd sealed against writes (for tests and
/// checks of /proc/<pid>/exe).
pub fn writable(fd: &impl std::os::fd::AsFd) -> Result<bool> {
    use nix::fcntl::{FcntlArg, SealFlag, fcntl};
    let vfs = rustix::fs::fstatvfs(fd)
        .map_err(|e| sys("fstatvfs")(nix::Error::from_raw(e.raw_os_error())))?;
    if vfs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
        return Ok(false);
    }
    match fcntl(fd, FcntlArg::F_GET_SEALS) {
        Ok(bits) => Ok(!SealFlag::from_bits_truncate(bits).contains(SealFlag::F_SEAL_WRITE)),
        Err(_) => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_binaries_run_and_cannot_be_written() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: open_tree needs root");
            return;
        }
        let host = Path::new("/bin/true");
        let host_fd = std::fs::File::open(host).unwrap();
        let before = writable(&host_fd).unwrap();
        for (make, kind) in [
            (
                readonly_mount as fn(&Path) -> Result<OwnedFd>,
                Kind::ReadOnlyMount,
            ),
            (sealed_copy, Kind::SealedMemfd),
        ] {
            let s = Sealed {
                fd: make(host).unwrap(),
                kind,
            };
            assert!(!writable(&s.fd).unwrap(), "{kind:?} is writable");
            // A sealed memfd may be opened for writing, but no write lands.
            let written = std::fs::OpenOptions::new()
                .append(true)
                .open(s.exec_path())
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"pwned"));
            assert!(written.is_err(), "{kind:?} written");
            let status = std::process::Command::new(s.exec_path()).status().unwrap();
            assert!(status.success(), "{kind:?} does not run");
        }
        assert_eq!(
            writable(&host_fd).unwrap(),
            before,
            "the host file is unchanged"
        );
        let s = Sealed::open(host).unwrap();
        assert_eq!(s.kind, Kind::ReadOnlyMount, "this kernel has open_tree");
    }
}
