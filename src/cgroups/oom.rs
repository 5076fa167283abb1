//! Watching a cgroup's OOM-kill counter while its processes run.
//!
//! With the systemd driver the kernel cgroup of a scope disappears as soon
//! as its last process exits (systemd prunes empty scopes), taking
//! `memory.events` with it; so the counter must be read *before* that. On
//! cgroup v2 the kernel signals every change of `memory.events` as an
//! inotify IN_MODIFY (cgroup-v2.rst), so a watcher wakes exactly when an
//! OOM kill happens. On v1 (`memory.oom_control`) there is no inotify
//! event; callers read it at exit, which is safe there because crius
//! removes v1 cgroups itself.
//!
//! Use from the daemon: register [`OomWatch::as_fd`] with
//! `tokio::io::unix::AsyncFd` (or poll it), and call [`OomWatch::refresh`]
//! whenever it is readable and once more when the container exits; the
//! count stays at its last value after the cgroup is gone.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::Error;

#[derive(Debug)]
pub struct OomWatch {
    file: PathBuf,
    /// v2 only: IN_MODIFY on `memory.events`.
    inotify: Option<Inotify>,
    last: u64,
}

impl OomWatch {
    /// Starts watching `file` (`memory.events` on v2, `memory.oom_control`
    /// on v1) and reads its current count.
    pub(super) fn new(file: PathBuf, unified: bool) -> Result<OomWatch, Error> {
        let inotify = if unified {
            let io = |source: nix::errno::Errno| Error::Io {
                op: "watch",
                path: file.clone(),
                source: source.into(),
            };
            let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).map_err(io)?;
            ino.add_watch(&file, AddWatchFlags::IN_MODIFY).map_err(io)?;
            Some(ino)
        } else {
            None
        };
        let mut w = OomWatch {
            file,
            inotify,
            last: 0,
        };
        w.last = w.read()?;
        Ok(w)
    }

    /// Readable when the counter file changed (v2); `None` on v1.
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// Drains pending events and returns the current OOM-kill count, or
    /// the last one seen if the cgroup is gone.
    pub fn refresh(&mut self) -> u64 {
        if let Some(ino) = &self.inotify {
            // Non-blocking: EAGAIN once drained.
            while ino.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
        if let Ok(n) = self.read() {
            self.last = self.last.max(n);
        }
        self.last
    }

    /// The count when last refreshed.
    pub fn last(&self) -> u64 {
        self.last
    }

    fn read(&self) -> Result<u64, Error> {
        let text = std::fs::read_to_string(&self.file).map_err(|source| Error::Io {
            op: "read",
            path: self.file.clone(),
            source,
        })?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_the_cgroup_and_changes_wake_the_fd() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.events");
        std::fs::write(&file, "low 0\noom 0\noom_kill 0\n").unwrap();
        let mut w = OomWatch::new(file.clone(), true).unwrap();
        assert_eq!(w.last(), 0);
        assert!(w.as_fd().is_some());
        std::fs::write(&file, "low 0\noom 1\noom_kill 1\n").unwrap();
        let ino = w.inotify.as_ref().unwrap();
        let mut fds = [nix::poll::PollFd::new(
            ino.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).unwrap();
        assert_eq!(n, 1, "no inotify event for the change");
        assert_eq!(w.refresh(), 1);
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert_eq!(w.refresh(), 1);
    }

    #[test]
    fn v1_has_no_fd_but_reads() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("memory.oom_control");
        std::fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        let mut w = OomWatch::new(file, false).unwrap();
        assert!(w.as_fd().is_none());
        assert_eq!(w.refresh(), 2);
    }
}
