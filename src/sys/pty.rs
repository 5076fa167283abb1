//! Pseudo-terminals from a container's own devpts instance (pts(4),
//! devpts newinstance): the master is opened through `<devpts>/ptmx` of the
//! mount namespace the caller is in, checked to be a ptmx node on a devpts
//! filesystem (the container could have mounted anything at /dev/pts), and
//! the slave is opened with TIOCGPTPEER, never by a path the container
//! could swap (runc's fix for CVE-2025-52565).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::{Result, sys};

/// statfs(2) f_type of devpts.
const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;
/// The device numbers of a devpts instance's ptmx node (5:2).
const PTMX_MAJOR: u64 = 5;
const PTMX_MINOR: u64 = 2;

/// A new terminal pair: the master (for the monitor) and the slave (the
/// process's stdio), both close-on-exec.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

/// Opens a pty from the devpts instance whose ptmx node is `ptmx`
/// (`/dev/pts/ptmx` inside a container, after its mount namespace is set up).
pub fn open(ptmx: &Path) -> Result<Pty> {
    let what = |op: &str| format!("{op} {}", ptmx.display());
    let master = nix::fcntl::open(
        ptmx,
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(sys(what("open")))?;
    let fs = nix::sys::statfs::fstatfs(&master).map_err(sys(what("fstatfs")))?;
    let st = nix::sys::stat::fstat(&master).map_err(sys(what("fstat")))?;
    let is_ptmx = st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && libc::major(st.st_rdev) as u64 == PTMX_MAJOR
        && libc::minor(st.st_rdev) as u64 == PTMX_MINOR;
    if fs.filesystem_type().0 as i64 != DEVPTS_SUPER_MAGIC || !is_ptmx {
        return Err(sys(what("not a devpts ptmx node:"))(nix::Error::ENOTTY));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which lives
    // for the call; the fd is a ptmx master we own.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(sys(what("unlock the terminal of"))(nix::Error::last()));
    }
    // SAFETY: TIOCGPTPEER takes open flags as an int argument and returns
    // a new fd, which we own from here on.
    let peer = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if peer < 0 {
        return Err(sys(what("open the terminal's peer of"))(nix::Error::last()));
    }
    // SAFETY: `peer` is a fresh fd the kernel just gave us.
    let slave = unsafe { OwnedFd::from_raw_fd(peer) };
    Ok(Pty { master, slave })
}

/// Sets the window size of the terminal whose master (or slave) is `fd`.
pub fn resize(fd: &impl AsRawFd, width: u16, height: u16) -> Result<()> {
    let ws = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which
    // lives for the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(sys("set the terminal size")(nix::Error::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_a_ptmx() {
        let err = open(Path::new("/dev/null")).err().expect("refused");
        assert!(err.to_string().contains("not a devpts ptmx"), "{err}");
        assert!(open(Path::new("/nonexistent/ptmx")).is_err());
    }

    #[test]
    fn the_host_devpts_gives_a_working_pair() {
        // The host's own devpts instance stands in for a container's.
        let Ok(pty) = open(Path::new("/dev/pts/ptmx")) else {
            eprintln!("skipped: /dev/pts/ptmx cannot be opened here");
            return;
        };
        resize(&pty.master, 100, 40).unwrap();
        let ws = rustix::termios::tcgetwinsize(&pty.slave).unwrap();
        assert_eq!((ws.ws_col, ws.ws_row), (100, 40));
        nix::unistd::write(&pty.slave, b"x").unwrap();
        let mut buf = [0u8; 8];
        let n = nix::unistd::read(&pty.master, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"x");
    }
}
