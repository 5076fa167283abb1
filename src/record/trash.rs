//! Deleting directory trees off the request path: a removed container's or
//! pod's directory is renamed into a trash directory on the same
//! filesystem (one `rename(2)`), and a background thread deletes what the
//! trash holds.
//!
//! Why: deleting a tree frees its blocks, and where freeing a block waits
//! for the device (the root filesystem of the machine the benchmark ran
//! on, ext4 on a virtio disk mounted with `discard`: an `rmdir` of a
//! directory took 1.5 ms of waiting, not of CPU; a `rename` 0.03 ms) a
//! container directory (upper dir with the mount points the init made,
//! work dir, rootfs mount point) took about 15 ms to delete. containerd
//! defers the same work to its garbage collector.
//!
//! Crash safety: the trash is on disk, so whatever a crash or restart
//! leaves in it is deleted by the next start ([`Trash::reap`]); the caller
//! deletes its record after the rename, so a record never names a
//! directory that is half deleted.
//!
//! The deletion holds at most three file descriptors (the trash, the
//! directory being emptied, a listing of it), whatever the depth of the
//! tree (a container can create any depth in its upper dir): it
//! never descends, it moves each subdirectory up into the trash (a rename
//! on the same filesystem) and empties it later as a top-level entry of
//! its own. It never crosses a mount point and never follows a symlink
//! (`openat2` with `RESOLVE_NO_XDEV | RESOLVE_NO_SYMLINKS`; a mount point
//! cannot be renamed): an entry it cannot delete stays in the trash, is
//! logged once, and is tried again at the next start.

use std::collections::HashSet;
use std::ffi::{CStr, CString, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, RenameFlags, ResolveFlags};
use rustix::io::Errno;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("move {path} into the trash {trash}")]
    Move {
        path: PathBuf,
        trash: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create the trash directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Entries read from a directory before acting on them: bounds the memory
/// a huge directory takes.
const BATCH: usize = 256;

/// A trash directory and its deleting thread (one at a time, started when
/// there is something to delete, ending when the trash is empty).
pub struct Trash {
    dir: PathBuf,
    seq: AtomicU64,
    state: Mutex<Reaper>,
}

#[derive(Default)]
struct Reaper {
    /// A thread is deleting.
    running: bool,
    /// Something was put in the trash since that thread last listed it.
    again: bool,
    /// Top-level entries that could not be deleted (logged once each).
    stuck: HashSet<OsString>,
}

impl Trash {
    /// A trash at `dir` (made on first use, mode 0700). It must be on the
    /// filesystem of what is put in it.
    pub fn new(dir: PathBuf) -> Arc<Trash> {
        Arc::new(Trash {
            dir,
            seq: AtomicU64::new(0),
            state: Mutex::default(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the tree at `path` into the trash and has it deleted in the
    /// background. A missing `path` is fine. Where the trash is on another
    /// filesystem (EXDEV), the tree is deleted here and now.
    pub fn put(self: &Arc<Self>, path: &Path) -> Result<(), Error> {
        let moved = |source| Error::Move {
            path: path.into(),
            trash: self.dir.clone(),
            source,
        };
        let base = path.file_name().map(OsStrExt::as_bytes).unwrap_or(b"x");
        let mut created = false;
        let target = loop {
            let mut name = base.to_vec();
            name.extend_from_slice(
                format!(".{}", self.seq.fetch_add(1, Ordering::Relaxed)).as_bytes(),
            );
            let target = self.dir.join(std::ffi::OsStr::from_bytes(&name));
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                path,
                rustix::fs::CWD,
                &target,
                RenameFlags::NOREPLACE,
            ) {
                Ok(()) => break target,
                Err(Errno::NOENT) if std::fs::symlink_metadata(path).is_err() => return Ok(()),
                Err(Errno::NOENT) if !created => {
                    self.create()?;
                    created = true;
                }
                Err(Errno::EXIST) => continue,
                Err(Errno::XDEV) => {
                    tracing::debug!(path = %path.display(), trash = %self.dir.display(), "the trash is on another filesystem: deleting in place");
                    return self.delete_in_place(path).map_err(|e| moved(e.into()));
                }
                Err(e) => return Err(moved(e.into())),
            }
        };
        tracing::debug!(path = %path.display(), trash = %target.display(), "moved into the trash");
        self.wake();
        Ok(())
    }

    fn create(&self) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(Error::Create {
                path: self.dir.clone(),
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// At start: deletes in the background what a previous run left.
    pub fn reap(self: &Arc<Self>) {
        let left = std::fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some());
        if left {
            tracing::info!(trash = %self.dir.display(), "deleting what the trash holds from before");
            self.wake();
        }
    }

    /// Whether no thread is deleting and the trash holds nothing it could
    /// delete (only entries it gave up on).
    pub fn idle(&self) -> bool {
        let state = self.lock();
        let done = match std::fs::read_dir(&self.dir) {
            Ok(d) => d.flatten().all(|e| state.stuck.contains(&e.file_name())),
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        };
        !state.running && done
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reaper> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the deleting thread, or tells the running one to look again.
    fn wake(self: &Arc<Self>) {
        {
            let mut state = self.lock();
            if state.running {
                state.again = true;
                return;
            }
            state.running = true;
            state.again = false;
        }
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("crius-trash".into())
            .spawn(move || this.run());
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "start the trash's deleting thread; the next start deletes what it holds");
            self.lock().running = false;
        }
    }

    fn run(&self) {
        loop {
            self.drain();
            let mut state = self.lock();
            if !std::mem::take(&mut state.again) {
                state.running = false;
                return;
            }
        }
    }

    /// Deletes every top-level entry of the trash that can be deleted.
    fn drain(&self) {
        let trash = match open_dir(rustix::fs::CWD, &self.dir, false) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return,
            Err(e) => {
                tracing::warn!(trash = %self.dir.display(), error = %e, "open the trash");
                return;
            }
        };
        let mut stuck = self.lock().stuck.clone();
        let emptied = self.empty(trash.as_fd(), &self.dir, &mut stuck, &|name| {
            self.lock().stuck.insert(name.to_owned());
        });
        if let Err(e) = emptied {
            tracing::warn!(trash = %self.dir.display(), error = %e, "list the trash");
        }
    }

    /// Deletes the tree at `path` here and now, by the same walk as the
    /// trash's (no mount point crossed, no symlink followed, three fds at
    /// any depth), with `path` itself as the place its subdirectories are
    /// moved up to: for a tree that cannot be renamed into the trash
    /// (another filesystem). `path` itself being a mount point is refused
    /// (EXDEV); an entry that cannot be deleted leaves the tree in place
    /// and fails with ENOTEMPTY.
    fn delete_in_place(&self, path: &Path) -> rustix::io::Result<()> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or(Errno::INVAL)?;
        let parent = open_dir(rustix::fs::CWD, parent, false)?;
        let top = match open_dir(parent.as_fd(), name, true) {
            Err(Errno::NOENT) => return Ok(()),
            r => r?,
        };
        let mut stuck = HashSet::new();
        self.empty(top.as_fd(), path, &mut stuck, &|_| {})?;
        drop(top);
        if !stuck.is_empty() {
            return Err(Errno::NOTEMPTY);
        }
        ignore_missing(rustix::fs::unlinkat(
            parent.as_fd(),
            name,
            AtFlags::REMOVEDIR,
        ))
    }

    /// Deletes every entry of the directory `top` (at `path`, named in the
    /// logs) that can be deleted, moving subdirectories up into `top`
    /// itself. `stuck` holds the names given up on; each new one is logged
    /// once, added to it and passed to `gave_up`.
    fn empty(
        &self,
        top: BorrowedFd<'_>,
        path: &Path,
        stuck: &mut HashSet<OsString>,
        gave_up: &dyn Fn(&std::ffi::OsStr),
    ) -> rustix::io::Result<()> {
        loop {
            let names = batch(top, |n| {
                !stuck.contains(std::ffi::OsStr::from_bytes(n.to_bytes()))
            })?;
            if names.is_empty() {
                return Ok(());
            }
            for name in names {
                if let Err(e) = self.delete_top(top, &name) {
                    let name = std::ffi::OsStr::from_bytes(name.to_bytes());
                    tracing::warn!(path = %path.join(name).display(), error = %e, "cannot delete (a mount point, an immutable file?): left where it is (in the trash: tried again at the next start)");
                    stuck.insert(name.to_owned());
                    gave_up(name);
                }
            }
        }
    }

    /// Deletes the top-level entry `name`: a directory is emptied (its
    /// subdirectories moved up into the trash), then removed.
    fn delete_top(&self, trash: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<()> {
        let stat = match rustix::fs::statat(trash, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::NOENT) => return Ok(()),
            Err(e) => return Err(e),
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
            return ignore_missing(rustix::fs::unlinkat(trash, name, AtFlags::empty()));
        }
        let dir = open_dir(trash, name, true)?;
        let fd = dir.as_fd();
        loop {
            let names = batch(fd, |_| true)?;
            if names.is_empty() {
                break;
            }
            for entry in names {
                let is_dir = match rustix::fs::statat(fd, &entry, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(s) => FileType::from_raw_mode(s.st_mode) == FileType::Directory,
                    Err(Errno::NOENT) => continue,
                    Err(e) => return Err(e),
                };
                if is_dir {
                    self.move_up(fd, &entry, trash)?;
                } else {
                    ignore_missing(rustix::fs::unlinkat(fd, &entry, AtFlags::empty()))?;
                }
            }
        }
        drop(dir);
        ignore_missing(rustix::fs::unlinkat(trash, name, AtFlags::REMOVEDIR))
    }

    /// Moves the directory `name` of `from` to the top of the trash, under
    /// a new name (a mount point refuses with EBUSY).
    fn move_up(
        &self,
        from: BorrowedFd<'_>,
        name: &CStr,
        trash: BorrowedFd<'_>,
    ) -> rustix::io::Result<()> {
        loop {
            let to = format!(
                "d{}.{}",
                std::process::id(),
                self.seq.fetch_add(1, Ordering::Relaxed)
            );
            match rustix::fs::renameat_with(from, name, trash, to.as_str(), RenameFlags::NOREPLACE)
            {
                Err(Errno::EXIST) => continue,
                r => return ignore_missing(r),
            }
        }
    }
}

fn ignore_missing(r: rustix::io::Result<()>) -> rustix::io::Result<()> {
    match r {
        Err(Errno::NOENT) => Ok(()),
        r => r,
    }
}

/// Opens a directory. `beneath`: `name` is an entry of `at`, inside the
/// trash, opened without following a symlink or crossing a mount point.
/// Else `name` is the trash itself, the daemon's own path, which may lie
/// on another mount than `/` (a tmpfs /tmp, a root on its own disk).
fn open_dir<P: rustix::path::Arg>(
    at: BorrowedFd<'_>,
    name: P,
    beneath: bool,
) -> rustix::io::Result<OwnedFd> {
    let mut resolve = ResolveFlags::NO_MAGICLINKS;
    if beneath {
        resolve |= ResolveFlags::NO_XDEV | ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS;
    }
    rustix::fs::openat2(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        resolve,
    )
}

/// Up to [`BATCH`] names of `dir` (not `.` or `..`) that `keep` accepts,
/// read from the start of the directory through a stream of its own (one
/// more fd, for the time of the listing).
fn batch(dir: BorrowedFd<'_>, keep: impl Fn(&CStr) -> bool) -> rustix::io::Result<Vec<CString>> {
    let mut stream = Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(entry) = stream.read() {
        let entry = entry?;
        let name = entry.file_name();
        if name == c"." || name == c".." || !keep(name) {
            continue;
        }
        names.push(name.to_owned());
        if names.len() == BATCH {
            break;
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests;
