//! Mounts (mount(2), umount2(2)) behind a narrow trait, so the plans built
//! on them (namespace pinning, the pod's /dev/shm) are unit-tested with a
//! recording fake and run for real only where the kernel is needed.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::{Result, io, sys};

/// The mount operations crius's plans issue.
pub trait Mounts {
    /// `mount --bind src dst`.
    fn bind(&self, src: &Path, dst: &Path) -> Result<()>;
    /// `mount --make-shared path`: EINVAL when `path` is not a mount point.
    fn make_shared(&self, path: &Path) -> Result<()>;
    /// A tmpfs of `size` bytes at `dst` (nosuid, nodev, noexec, mode 1777),
    /// its root owned by `owner` (uid, gid) when given, else by the caller.
    fn tmpfs(&self, dst: &Path, size: u64, owner: Option<(u32, u32)>) -> Result<()>;
    /// `umount -l path`: EINVAL when nothing is mounted there.
    fn detach(&self, path: &Path) -> Result<()>;
    /// Creates an empty regular file (a bind-mount target).
    fn create_file(&self, path: &Path) -> Result<()>;
}

/// The real thing.
pub struct Host;

impl Mounts for Host {
    fn bind(&self, src: &Path, dst: &Path) -> Result<()> {
        nix::mount::mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>).map_err(
            sys(format!("bind mount {} on {}", src.display(), dst.display())),
        )
    }

    fn make_shared(&self, path: &Path) -> Result<()> {
        nix::mount::mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .map_err(sys(format!("make mount {} shared", path.display())))
    }

    fn tmpfs(&self, dst: &Path, size: u64, owner: Option<(u32, u32)>) -> Result<()> {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let mut data = format!("mode=1777,size={size}");
        if let Some((uid, gid)) = owner {
            data.push_str(&format!(",uid={uid},gid={gid}"));
        }
        nix::mount::mount(Some("shm"), dst, Some("tmpfs"), flags, Some(data.as_str()))
            .map_err(sys(format!("mount tmpfs on {}", dst.display())))
    }

    fn detach(&self, path: &Path) -> Result<()> {
        nix::mount::umount2(path, MntFlags::MNT_DETACH)
            .map_err(sys(format!("unmount {}", path.display())))
    }

    fn create_file(&self, path: &Path) -> Result<()> {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(drop)
            .map_err(io("create mount point", path))
    }
}

/// Unmounts everything at `path` (stacked mounts too); nothing mounted is
/// not an error.
pub fn detach_all(m: &dyn Mounts, path: &Path) -> Result<()> {
    for _ in 0..16 {
        match m.detach(path) {
            Ok(()) => continue,
            Err(e) if matches!(e.errno(), Some(nix::Error::EINVAL | nix::Error::ENOENT)) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A path as the C string a system call takes.
pub(crate) fn path_cstr(path: &Path) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| sys(format!("{} holds a NUL byte", path.display()))(nix::Error::EINVAL))
}

/// mount_setattr(2) (Linux >= 5.12): sets the attributes `set` on the mount
/// `path` names relative to `dirfd` (with `flags` such as AT_RECURSIVE or
/// AT_EMPTY_PATH); nothing is cleared and propagation is left alone.
pub(crate) fn mount_setattr(
    dirfd: std::os::fd::RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    set: u64,
) -> nix::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    mount_setattr_with(dirfd, path, flags, &attr)
}

/// mount_setattr(2) with a whole `struct mount_attr` (an idmap's user
/// namespace fd, say).
pub(crate) fn mount_setattr_with(
    dirfd: std::os::fd::RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    attr: &libc::mount_attr,
) -> nix::Result<()> {
    // SAFETY: mount_setattr reads a NUL-terminated path and a mount_attr of
    // the size passed, both alive for the call; it writes nothing of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dirfd,
            path.as_ptr(),
            flags as libc::c_uint,
            attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc != 0 {
        return Err(nix::Error::last());
    }
    Ok(())
}

/// Makes the mount at `path` and every mount below it read-only in one
/// call (mount_setattr(2) with AT_RECURSIVE, Linux >= 5.12). A plain
/// `MS_REMOUNT|MS_RDONLY` changes only the top mount and leaves submounts
/// writable. ENOSYS on older kernels: see [`recursive_readonly_supported`].
pub fn set_readonly_recursive(path: &Path) -> Result<()> {
    let c = path_cstr(path)?;
    readonly_recursive_at(libc::AT_FDCWD, &c, 0, &path.display().to_string())
}

/// [`set_readonly_recursive`] of the mount whose root `fd` (an O_PATH fd
/// opened after the mount) names; `what` names it in the error.
pub fn set_readonly_recursive_fd(fd: &impl std::os::fd::AsRawFd, what: &str) -> Result<()> {
    readonly_recursive_at(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH, what)
}

fn readonly_recursive_at(
    dirfd: std::os::fd::RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_int,
    what: &str,
) -> Result<()> {
    mount_setattr(
        dirfd,
        path,
        flags | libc::AT_RECURSIVE,
        libc::MOUNT_ATTR_RDONLY,
    )
    .map_err(sys(format!(
        "make {what} and its submounts read-only (mount_setattr)"
    )))
}

/// Whether the kernel has mount_setattr(2): probed once per process with a
/// call that changes nothing (no attribute set on fd -1: EBADF/EINVAL mean
/// the call exists, ENOSYS that it doesn't).
pub fn recursive_readonly_supported() -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| mount_setattr(-1, c"", libc::AT_EMPTY_PATH, 0) != Err(nix::Error::ENOSYS))
}

/// The filesystem kinds a mount target must never resolve onto (unless
/// the mount is that filesystem's own, at its own place): a bind over a
/// procfs or sysfs file is how a container rewrites a kernel knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFs {
    Proc,
    Sys,
}

/// What filesystem the open file `fd` lives on, when it is procfs or sysfs
/// (fstatfs(2), which works on O_PATH fds).
pub fn kernel_fs_of(fd: &impl std::os::fd::AsFd) -> Result<Option<KernelFs>> {
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    let st = rustix::fs::fstatfs(fd)
        .map_err(|e| sys("fstatfs of a mount target")(nix::Error::from_raw(e.raw_os_error())))?;
    Ok(match st.f_type as i64 {
        PROC_SUPER_MAGIC => Some(KernelFs::Proc),
        SYSFS_MAGIC => Some(KernelFs::Sys),
        _ => None,
    })
}

/// The mount flags of the filesystem holding `fd` that a bind remount must
/// keep (nosuid, nodev, noexec): a remount without them would clear them
/// on the new mount, giving the container set-id or device files a host
/// mount had disabled (statfs(2) f_flags).
pub fn locked_flags_of(fd: &impl std::os::fd::AsFd) -> Result<MsFlags> {
    let st = rustix::fs::fstatvfs(fd)
        .map_err(|e| sys("fstatvfs of a bind source")(nix::Error::from_raw(e.raw_os_error())))?;
    let f = st.f_flag;
    let mut out = MsFlags::empty();
    if f.contains(rustix::fs::StatVfsMountFlags::NOSUID) {
        out |= MsFlags::MS_NOSUID;
    }
    if f.contains(rustix::fs::StatVfsMountFlags::NODEV) {
        out |= MsFlags::MS_NODEV;
    }
    if f.contains(rustix::fs::StatVfsMountFlags::NOEXEC) {
        out |= MsFlags::MS_NOEXEC;
    }
    Ok(out)
}

/// Opens `/dev/null` of the current root and checks that it really is the
/// 1:3 character device: a container that controls its /dev could plant a
/// symlink or a file there, turning a "mask with /dev/null" bind into a
/// bind of something else (runc's CVE-2025-31133). The returned O_PATH fd
/// is what the caller mounts from (through /proc/self/fd).
pub fn open_dev_null() -> Result<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    let fd = rustix::fs::open(
        "/dev/null",
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys("open /dev/null")(nix::Error::from_raw(e.raw_os_error())))?;
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| sys("stat /dev/null")(nix::Error::from_raw(e.raw_os_error())))?;
    let is_char =
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::CharacterDevice;
    if !is_char || st.st_rdev != rustix::fs::makedev(1, 3) {
        return Err(sys("/dev/null is not the 1:3 character device")(
            nix::Error::EPERM,
        ));
    }
    Ok(fd)
}

/// Mount points at or below `prefix`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    // thread-self: a thread that unshared its mount namespace sees its own.
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(prefix))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// A fake that records every operation as a line, and fails the ones a test
/// asks it to fail.
#[derive(Default)]
pub struct Recorder {
    pub log: std::cell::RefCell<Vec<String>>,
    /// (operation prefix, errno) pairs: a matching call fails with errno.
    pub fail: Vec<(String, nix::Error)>,
}

impl Recorder {
    fn call(&self, line: String) -> Result<()> {
        let failure = self.fail.iter().find(|(p, _)| line.starts_with(p.as_str()));
        self.log.borrow_mut().push(line.clone());
        match failure {
            Some((_, errno)) => Err(sys(line)(*errno)),
            None => Ok(()),
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.borrow().clone()
    }
}

impl Mounts for Recorder {
    fn bind(&self, src: &Path, dst: &Path) -> Result<()> {
        self.call(format!("bind {} {}", src.display(), dst.display()))
    }
    fn make_shared(&self, path: &Path) -> Result<()> {
        self.call(format!("shared {}", path.display()))
    }
    fn tmpfs(&self, dst: &Path, size: u64, owner: Option<(u32, u32)>) -> Result<()> {
        self.call(format!("tmpfs {} {size} {owner:?}", dst.display()))
    }
    fn detach(&self, path: &Path) -> Result<()> {
        self.call(format!("detach {}", path.display()))
    }
    fn create_file(&self, path: &Path) -> Result<()> {
        self.call(format!("create {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape_mountinfo("/a\\040b\\134c"),
            PathBuf::from("/a b\\c")
        );
    }

    #[test]
    fn root_is_a_mount() {
        assert!(mounts_under(Path::new("/")).contains(&PathBuf::from("/")));
    }

    #[test]
    fn detach_all_stops_when_nothing_is_mounted() {
        let r = Recorder {
            fail: vec![("detach".into(), nix::Error::EINVAL)],
            ..Default::default()
        };
        detach_all(&r, Path::new("/x")).unwrap();
        assert_eq!(r.lines(), ["detach /x"]);
        let r = Recorder {
            fail: vec![("detach".into(), nix::Error::EBUSY)],
            ..Default::default()
        };
        assert!(detach_all(&r, Path::new("/x")).is_err());
    }
}
