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
    /// A tmpfs of `size` bytes at `dst` (nosuid, nodev, noexec, mode 1777).
    fn tmpfs(&self, dst: &Path, size: u64) -> Result<()>;
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

    fn tmpfs(&self, dst: &Path, size: u64) -> Result<()> {
        let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let data = format!("mode=1777,size={size}");
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

/// Mount points at or below `prefix`, deepest first, from /proc/self/mountinfo.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
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
    fn tmpfs(&self, dst: &Path, size: u64) -> Result<()> {
        self.call(format!("tmpfs {} {size}", dst.display()))
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
