//! Following the OOM-kill counters of running containers, so that a kill
//! is known even after its cgroup is gone.
//!
//! With the systemd driver the kernel cgroup of a container's scope
//! disappears as soon as its last process exits: systemd stops the empty
//! scope and removes its cgroup, taking `memory.events` with it. A
//! process leaves its cgroup when it exits, not when its parent reaps it,
//! so reading the counter at the reap (daemon or monitor) races with
//! systemd. crius therefore follows each running container's counter
//! ([`OomLedger`], one per daemon):
//!
//! 1. On cgroup v2 the kernel signals every change of `memory.events` as
//!    an inotify IN_MODIFY (cgroup-v2.rst), raised when the OOM killer
//!    picks its victim, before the victim has exited. The caller polls
//!    [`OomWake`] and calls [`OomLedger::refresh`] when it is readable.
//! 2. If the container's counter still cannot be read at its exit, the
//!    pod cgroup's `memory.events`, which counts the kills of all its
//!    descendants (cgroup-v2.rst, unless mounted with memory_localevents)
//!    and outlives the container, tells the kills no followed counter has
//!    seen; a container that died of SIGKILL and whose cgroup went away
//!    unread claims them. The other containers of the pod are read first,
//!    so only a kill in another cgroup that also vanished unread in the
//!    same moment (or in the pod's init leaf) could be claimed wrongly.
//!    Kills that may predate the ledger's view are counted as explained,
//!    so a doubt makes a kill missed, never invented.
//! 3. On cgroup v1 (`memory.oom_control`) there is no inotify event and
//!    no hierarchical count; the counter is read at exit, which is sound
//!    with cgroupfs, where crius removes the cgroup itself after reading
//!    it. With systemd on v1 the race of the introduction remains.
//!
//! ```text
//! let wake = cg.oom_follow(&id, &leaf)?;   // before the container starts
//! // wake.as_fd() readable => cg.oom_refresh(&id)
//! let kills = cg.oom_finish(&id, &leaf, killed_by_sigkill);
//! ```

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use super::Error;

/// The daemon's view of the OOM kills of the containers it follows.
#[derive(Debug, Default)]
pub struct OomLedger {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// By container id.
    members: HashMap<String, Member>,
    /// By the pod cgroup's `memory.events` (v2 only).
    pods: HashMap<PathBuf, Pod>,
}

#[derive(Debug)]
struct Member {
    /// The container's counter file.
    file: PathBuf,
    /// Its pod's `memory.events` (v2), the key of [`State::pods`].
    pod: Option<PathBuf>,
    last: u64,
}

#[derive(Debug)]
struct Pod {
    /// The pod's count when the ledger began to follow it.
    base: u64,
    /// Kills since `base` that the ledger can name: growth seen in its
    /// members' counters, their counts when they joined, and claims.
    explained: u64,
    members: usize,
}

/// Readable when a followed container's counter changed (v2); nothing to
/// poll on v1.
#[derive(Debug)]
pub struct OomWake {
    inotify: Option<Inotify>,
}

impl OomWake {
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// Drains the pending events (non-blocking).
    pub fn drain(&self) {
        if let Some(ino) = &self.inotify {
            while ino.read_events().is_ok_and(|e| !e.is_empty()) {}
        }
    }
}

impl OomLedger {
    /// Starts following container `id`, whose counter is `file`
    /// (`memory.events` on v2, `memory.oom_control` on v1). Following it
    /// again keeps the first count and gives a new wake.
    pub(super) fn follow(&self, id: &str, file: PathBuf, unified: bool) -> Result<OomWake, Error> {
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
        let mut state = self.state.lock().expect("lock poisoned");
        if state.members.contains_key(id) {
            return Ok(OomWake { inotify });
        }
        // The container's count first, then the pod's: kills between the
        // two reads are in both, so at worst counted twice (missed).
        let count = read_count(&file)?;
        let pod_file = unified.then(|| pod_events(&file)).flatten();
        let pod = pod_file.filter(|p| match state.pods.get_mut(p) {
            Some(pod) => {
                // When these kills happened is unknown: explained.
                pod.explained += count;
                pod.members += 1;
                true
            }
            None => match read_count(p) {
                Ok(base) => {
                    let pod = Pod {
                        base,
                        explained: 0,
                        members: 1,
                    };
                    state.pods.insert(p.clone(), pod);
                    true
                }
                Err(e) => {
                    tracing::debug!(container_id = id, err = %e, "no pod OOM counter to fall back on");
                    false
                }
            },
        });
        state.members.insert(
            id.to_string(),
            Member {
                file,
                pod,
                last: count,
            },
        );
        Ok(OomWake { inotify })
    }

    /// Reads container `id`'s counter again; its last count (0 when not
    /// followed).
    pub fn refresh(&self, id: &str) -> u64 {
        let mut state = self.state.lock().expect("lock poisoned");
        let State { members, pods } = &mut *state;
        let Some(m) = members.get_mut(id) else {
            return 0;
        };
        let _ = update(m, pods);
        m.last
    }

    /// Stops following container `id`, which has exited, and returns its
    /// OOM kills: its counter read now if it is still there, else the last
    /// count seen plus, when it died of SIGKILL (`killed`), the pod's kills
    /// no counter explains. A container never followed is read from `file`.
    pub(super) fn finish(&self, id: &str, file: &Path, killed: bool) -> u64 {
        let mut state = self.state.lock().expect("lock poisoned");
        let State { members, pods } = &mut *state;
        let Some(mut m) = members.remove(id) else {
            return read_count(file).unwrap_or(0);
        };
        let mut kills = m.last;
        if update(&mut m, pods).is_ok() {
            kills = m.last;
        } else if let Some(p) = m.pod.as_ref().filter(|_| killed) {
            // Read the pod's other containers before the pod's count, so
            // that their kills are explained.
            for other in members.values_mut().filter(|o| o.pod.as_ref() == Some(p)) {
                let _ = update(other, pods);
            }
            if let (Some(pod), Ok(total)) = (pods.get_mut(p), read_count(p)) {
                let unexplained = total.saturating_sub(pod.base.saturating_add(pod.explained));
                pod.explained += unexplained;
                kills += unexplained;
                if unexplained > 0 {
                    tracing::info!(
                        container_id = id,
                        kills = unexplained,
                        "OOM kills found in the pod's count: the container's cgroup was gone unread"
                    );
                }
            }
        }
        if let Some(p) = &m.pod
            && let Some(pod) = pods.get_mut(p)
        {
            pod.members -= 1;
            if pod.members == 0 {
                pods.remove(p);
            }
        }
        kills
    }

    /// How many containers it follows.
    pub fn len(&self) -> usize {
        self.state.lock().expect("lock poisoned").members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads `m`'s counter; its growth is explained in its pod.
fn update(m: &mut Member, pods: &mut HashMap<PathBuf, Pod>) -> Result<(), Error> {
    let n = read_count(&m.file)?;
    if n > m.last {
        if let Some(pod) = m.pod.as_ref().and_then(|p| pods.get_mut(p)) {
            pod.explained += n - m.last;
        }
        m.last = n;
    }
    Ok(())
}

/// The pod cgroup's `memory.events` for a leaf's: the leaf's parent's.
fn pod_events(leaf_file: &Path) -> Option<PathBuf> {
    let name = leaf_file.file_name()?;
    Some(leaf_file.parent()?.parent()?.join(name))
}

/// The `oom_kill` count of a counter file (0 when the line is missing).
pub(super) fn read_count(file: &Path) -> Result<u64, Error> {
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io {
        op: "read",
        path: file.to_path_buf(),
        source,
    })?;
    Ok(super::fs::key_value(&text, "oom_kill").unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 pod cgroup with containers, as files in a tempdir.
    struct Pod {
        dir: tempfile::TempDir,
    }

    impl Pod {
        fn new() -> Pod {
            let pod = Pod {
                dir: tempfile::tempdir().unwrap(),
            };
            pod.set(None, 0);
            pod
        }

        fn file(&self, leaf: Option<&str>) -> PathBuf {
            match leaf {
                Some(l) => self.dir.path().join(l).join("memory.events"),
                None => self.dir.path().join("memory.events"),
            }
        }

        fn set(&self, leaf: Option<&str>, kills: u64) {
            let file = self.file(leaf);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, format!("low 0\nmax 3\noom 1\noom_kill {kills}\n")).unwrap();
        }

        fn remove(&self, leaf: &str) {
            std::fs::remove_dir_all(self.dir.path().join(leaf)).unwrap();
        }
    }

    #[test]
    fn a_change_wakes_and_the_count_outlives_the_cgroup() {
        let pod = Pod::new();
        pod.set(Some("a"), 0);
        let l = OomLedger::default();
        let wake = l.follow("a", pod.file(Some("a")), true).unwrap();
        pod.set(Some("a"), 1);
        pod.set(None, 1);
        let mut fds = [nix::poll::PollFd::new(
            wake.as_fd().unwrap(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).unwrap();
        assert_eq!(n, 1, "no inotify event for the change");
        wake.drain();
        assert_eq!(l.refresh("a"), 1);
        pod.remove("a");
        // Not SIGKILLed: the last count.
        assert_eq!(l.finish("a", &pod.file(Some("a")), false), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn a_kill_never_read_is_found_in_the_pods_count() {
        let pod = Pod::new();
        pod.set(None, 2); // two kills before: a removed container's
        pod.set(Some("a"), 0);
        pod.set(Some("b"), 0);
        let l = OomLedger::default();
        l.follow("a", pod.file(Some("a")), true).unwrap();
        l.follow("b", pod.file(Some("b")), true).unwrap();
        // b is killed and read; a is killed and gone before any read.
        pod.set(Some("b"), 1);
        pod.set(None, 4);
        pod.remove("a");
        assert_eq!(l.finish("a", &pod.file(Some("a")), true), 1);
        // b's own count: read, never claimed twice.
        assert_eq!(l.finish("b", &pod.file(Some("b")), true), 1);
        assert!(l.is_empty());
    }

    #[test]
    fn no_kill_is_invented() {
        let pod = Pod::new();
        pod.set(Some("a"), 0);
        let l = OomLedger::default();
        l.follow("a", pod.file(Some("a")), true).unwrap();
        // Stopped with SIGKILL, no OOM: the pod's count did not move.
        pod.remove("a");
        assert_eq!(l.finish("a", &pod.file(Some("a")), true), 0);
        // Killed, but not by a signal: the pod's kill stays unclaimed.
        pod.set(Some("b"), 0);
        pod.set(Some("c"), 0);
        l.follow("b", pod.file(Some("b")), true).unwrap();
        l.follow("c", pod.file(Some("c")), true).unwrap();
        pod.set(None, 1);
        pod.remove("b");
        assert_eq!(l.finish("b", &pod.file(Some("b")), false), 0);
        // A container joining with kills of unknown date: explained.
        pod.set(Some("d"), 1);
        l.follow("d", pod.file(Some("d")), true).unwrap();
        pod.remove("c");
        assert_eq!(l.finish("c", &pod.file(Some("c")), true), 0);
        assert_eq!(l.finish("d", &pod.file(Some("d")), true), 1);
    }

    #[test]
    fn v1_reads_at_exit_without_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = dir.path().join("c");
        std::fs::create_dir(&leaf).unwrap();
        let file = leaf.join("memory.oom_control");
        std::fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
        let l = OomLedger::default();
        let wake = l.follow("c", file.clone(), false).unwrap();
        assert!(wake.as_fd().is_none());
        std::fs::write(&file, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(l.finish("c", &file, true), 2);
        // Never followed: read as it is.
        assert_eq!(l.finish("c", &file, true), 2);
        std::fs::remove_dir_all(&leaf).unwrap();
        assert_eq!(l.finish("c", &file, true), 0);
    }
}
