//! Idmapped mounts (mount_setattr(2) with MOUNT_ATTR_IDMAP, Linux >= 5.12;
//! overlayfs over idmapped layers, Linux >= 5.19): a detached copy of a
//! mount (open_tree(2) OPEN_TREE_CLONE) that shows its files' owners
//! through a user namespace's mappings, attached with move_mount(2). A pod
//! with its own user namespace sees the image's root-owned files as its
//! own root's, and its volumes keep their host owners, without a single
//! chown.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::mount::path_cstr;
use super::{Result, sys};

/// A detached copy of the mount tree at `path` (only the mount itself
/// unless `recursive`), close-on-exec.
pub fn open_tree_clone(path: &Path, recursive: bool) -> Result<OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let c = path_cstr(path)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads a NUL-terminated path alive for the call and
    // returns a new fd (or -1), which we own at once.
    let rc = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if rc < 0 {
        return Err(sys(format!("open_tree {}", path.display()))(
            nix::Error::last(),
        ));
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(rc as i32) })
}

/// Makes the detached mount `tree` (and its submounts if `recursive`)
/// show ids through the mappings of the user namespace `userns`.
pub fn set_idmap(tree: &OwnedFd, userns: &impl AsFd, recursive: bool) -> nix::Result<()> {
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    let attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_fd().as_raw_fd() as u64,
    };
    super::mount::mount_setattr_with(tree.as_raw_fd(), c"", flags, &attr)
}

/// Attaches the detached mount `tree` at `target` (a path, which may be a
/// /proc/self/fd one: its last component is followed, as mount(2) does).
pub fn move_mount_to(tree: &OwnedFd, target: &Path) -> Result<()> {
    const MOVE_MOUNT_T_SYMLINKS: libc::c_uint = 0x10;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
    let c = path_cstr(target)?;
    // SAFETY: move_mount reads two NUL-terminated paths alive for the call
    // and an fd we own; it writes nothing of ours.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS,
        )
    };
    if rc != 0 {
        return Err(sys(format!("move_mount to {}", target.display()))(
            nix::Error::last(),
        ));
    }
    Ok(())
}

/// An idmapped copy of the mount at `path` (see the module doc), detached.
/// EINVAL from the kernel means the filesystem (or, `recursive`, one of
/// the submounts) cannot be idmapped; the error says so.
pub fn idmapped_clone(path: &Path, userns: &impl AsFd, recursive: bool) -> Result<OwnedFd> {
    let tree = open_tree_clone(path, recursive)?;
    set_idmap(&tree, userns, recursive).map_err(|e| {
        let hint = if e == nix::Error::EINVAL {
            " (its filesystem, or one mounted below it, does not support idmapped mounts)"
        } else {
            ""
        };
        sys(format!("idmapped mount of {}{hint}", path.display()))(e)
    })?;
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_tree_of_a_missing_path_names_it() {
        let e = open_tree_clone(Path::new("/nonexistent/crius-idmap"), false).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/crius-idmap"), "{e}");
    }
}
