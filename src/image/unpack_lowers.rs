//! What a layer's unpacking leaves for when its lower layers are in place:
//! directories the tar omits take the metadata of the same directory below
//! (else overlayfs would show 0700 root for, say, /tmp), and hardlinks to a
//! file of a lower layer become copies of it. Then one `syncfs` makes the
//! whole layer durable before it is recorded.
//!
//! Both kinds were created during the unpack as placeholders (a 0700 root
//! directory, an empty 0600 file) and are known by their path beneath the
//! layer root (resolved, so with no symlink in it) and their inode. A
//! later entry of the same layer that removed one (a file over the
//! directory, a whiteout over the link, a removed parent) wins, as it would
//! have had the lower layers been there from the start: the removal drops
//! the pending work at that path and beneath it. Paths are opened again
//! beneath the layer root without following any symlink, and must still
//! be the same inode.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, openat2};
use rustix::io::Errno;

use super::{Meta, R, UnpackError, ioe, open_dir, resolve, set_meta_fd, stdioe, timestamps};

/// The lower-layer work of one unpacked layer. Paths are where the
/// placeholders are beneath the layer root, with no symlink on the way.
#[derive(Debug, Default)]
pub struct Pending {
    /// Implicit directories: the inode created for them.
    dirs: BTreeMap<PathBuf, u64>,
    /// Names of hardlink placeholders (more than one when the layer links
    /// to a placeholder again): their inode.
    names: BTreeMap<PathBuf, u64>,
    /// The lower file each placeholder inode copies.
    targets: HashMap<u64, PathBuf>,
}

impl Pending {
    pub(super) fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.names.is_empty()
    }

    pub(super) fn has_dirs(&self) -> bool {
        !self.dirs.is_empty()
    }

    pub(super) fn implicit_dir(&mut self, at: PathBuf, ino: u64) {
        self.dirs.insert(at, ino);
    }

    /// A directory entry of the layer itself: its metadata is the tar's.
    pub(super) fn explicit_dir(&mut self, at: &Path) {
        self.dirs.remove(at);
    }

    pub(super) fn lower_link(&mut self, ino: u64, at: PathBuf, target: &Path) {
        self.names.insert(at, ino);
        self.targets.insert(ino, target.to_path_buf());
    }

    pub(super) fn is_lower_link(&self, ino: u64) -> bool {
        self.targets.contains_key(&ino)
    }

    /// Another name, within the layer, of placeholder `ino`.
    pub(super) fn linked(&mut self, ino: u64, at: PathBuf) {
        self.names.insert(at, ino);
    }

    /// `at` and everything beneath it were removed (a later entry, a
    /// whiteout): what was pending there is gone with it. (Paths sort
    /// component by component, so a subtree is one range.)
    pub(super) fn forget(&mut self, at: &Path) {
        for map in [&mut self.dirs, &mut self.names] {
            let gone: Vec<PathBuf> = map
                .range::<Path, _>((std::ops::Bound::Included(at), std::ops::Bound::Unbounded))
                .map(|(p, _)| p)
                .take_while(|p| p.starts_with(at))
                .cloned()
                .collect();
            for p in gone {
                map.remove(&p);
            }
        }
    }

    /// Completes the layer unpacked at `target` from `lowers` (its lower
    /// layers, highest first, all complete), then flushes the filesystem
    /// it is on, so a layer recorded after this is whole on disk after a
    /// crash.
    pub fn finish(self, target: &Path, lowers: &[PathBuf]) -> R<()> {
        let root = open_dir(target)?;
        let lowers: Vec<OwnedFd> = lowers.iter().map(|l| open_dir(l)).collect::<R<_>>()?;
        // Each placeholder inode once, through its first name left.
        let mut filled = HashSet::new();
        for (at, ino) in &self.names {
            if filled.contains(ino) {
                continue;
            }
            if let Some(file) = open_own(&root, at, *ino, false)? {
                copy_lower_file(&lowers, file, at, &self.targets[ino])?;
                filled.insert(*ino);
            }
        }
        for (path, ino) in &self.dirs {
            let Some(fd) = open_own(&root, path, *ino, true)? else {
                continue;
            };
            let meta = lower_dir_meta(&lowers, path);
            set_meta_fd(&fd, &meta, path)?;
            rustix::fs::futimens(&fd, &meta.ts).map_err(ioe("set times", path))?;
        }
        // syncfs wants an fd opened for real, not an O_PATH one.
        let dir = rustix::fs::open(
            target,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(ioe("open", target))?;
        rustix::fs::syncfs(&dir).map_err(ioe("sync the filesystem of", target))
    }
}

/// `path` beneath `root`, opened without following symlinks, when it is
/// still the directory (`dir`) or regular file of inode `ino`.
fn open_own(root: &OwnedFd, path: &Path, ino: u64, dir: bool) -> R<Option<File>> {
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    // O_PATH first: opening a device or FIFO a later entry put there for
    // real could block or have effects.
    let fd = match openat2(
        root,
        path,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        how,
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
        Err(e) => return Err(ioe("open", path)(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(ioe("stat", path))?;
    let want = if dir {
        FileType::Directory
    } else {
        FileType::RegularFile
    };
    if st.st_ino != ino || FileType::from_raw_mode(st.st_mode) != want {
        return Ok(None);
    }
    let flags = if dir {
        OFlags::RDONLY | OFlags::DIRECTORY
    } else {
        OFlags::WRONLY
    };
    // Reopened through its O_PATH fd: the same inode, whatever the path
    // names now.
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd)),
        flags | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(ioe("open", path))?;
    Ok(Some(File::from(fd)))
}

/// The metadata of directory `path` in the highest lower layer that has
/// it (anything else there ends the search); 0755 root otherwise.
fn lower_dir_meta(lowers: &[OwnedFd], path: &Path) -> Meta {
    for lower in lowers {
        let Ok(st) = rustix::fs::statat(lower, path, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            return Meta {
                uid: st.st_uid,
                gid: st.st_gid,
                mode: st.st_mode & 0o7777,
                ts: timestamps(st.st_mtime, st.st_mtime_nsec as i64),
            };
        }
        break;
    }
    Meta {
        uid: 0,
        gid: 0,
        mode: 0o755,
        ts: timestamps(0, 0),
    }
}

/// Fills the placeholder `dst` (at `at`) with a copy of the highest lower
/// layer's regular file at `target`.
fn copy_lower_file(lowers: &[OwnedFd], mut dst: File, at: &Path, target: &Path) -> R<()> {
    let tparent = target.parent().unwrap_or(Path::new(""));
    let tname = target.file_name().unwrap_or_default();
    for lower in lowers {
        let Ok(dir) = resolve(lower, tparent) else {
            continue;
        };
        let Ok(st) = rustix::fs::statat(&dir, tname, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            break;
        }
        let src = rustix::fs::openat(
            &dir,
            tname,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(ioe("open lower", target))?;
        io::copy(&mut File::from(src), &mut dst).map_err(stdioe("copy lower file to", at))?;
        let meta = Meta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o7777,
            ts: timestamps(st.st_mtime, st.st_mtime_nsec as i64),
        };
        set_meta_fd(&dst, &meta, at)?;
        rustix::fs::futimens(&dst, &meta.ts).map_err(ioe("set times", at))?;
        return Ok(());
    }
    Err(UnpackError::Bad(format!(
        "hardlink {} points to {}, which is in no layer",
        at.display(),
        target.display()
    )))
}
