//! Delegating a container's cgroup v2 to the container's user (cgroup-v2.rst
//! "Delegation"; cgroups(7) "Cgroups v2 delegation: delegation to a less
//! privileged user"), as runc does for a container with its own user and
//! cgroup namespaces and a writable /sys/fs/cgroup: the cgroup's directory
//! and the files the kernel lists in /sys/kernel/cgroup/delegate
//! (`cgroup.procs`, `cgroup.threads`, `cgroup.subtree_control`, and on
//! newer kernels a few more) are chowned to the host uid the container's
//! user maps to; the group is left as it is. Every other file (the
//! container's limits: memory.max, pids.max, cpu.max...) stays root's, so
//! the container can build a sub-tree and move its processes inside it but
//! never raise what its parent gave it. With `nsdelegate` (systemd mounts
//! cgroup2 with it; so does the VM tier's plain guest) the kernel also
//! refuses writes to the namespace root's non-delegatable files and
//! migrations from or to cgroups outside the writer's cgroup namespace.
//!
//! crius removes a container's cgroup with everything the container made
//! below it (walking the sub-tree), so the sub-tree is bounded first:
//! [`MAX_DEPTH`] levels and [`MAX_DESCENDANTS`] cgroups (cgroup.max.depth,
//! cgroup.max.descendants, both root's).

use std::path::Path;

use super::Error;

/// Where the kernel lists the files a delegatee may own (Linux >= 5.x).
pub const DELEGATE_LIST: &str = "/sys/kernel/cgroup/delegate";

/// What cgroup-v2.rst names when the kernel has no list.
const FALLBACK: [&str; 3] = ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"];

/// How deep the container's own sub-tree may go: ten names of at most
/// 255 bytes below the container's cgroup keep every path crius walks at
/// removal within PATH_MAX; systemd as a container's PID 1 needs about
/// five (user.slice/user-N.slice/user@N.service/app.slice/x.service).
pub const MAX_DEPTH: u32 = 10;

/// How many cgroups the container's sub-tree may hold.
pub const MAX_DESCENDANTS: u32 = 1000;

/// The file names a delegatee gets: the kernel's list, or cgroup-v2.rst's
/// three where the kernel has none. A name that is not a plain file name
/// is refused (the list is the kernel's, but crius chowns what it names).
pub fn delegatable_files(list: &Path) -> Result<Vec<String>, Error> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(FALLBACK.iter().map(|s| s.to_string()).collect());
        }
        Err(source) => {
            return Err(Error::Io {
                op: "read the delegatable cgroup files",
                path: list.into(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for name in text.split_whitespace() {
        if name == "." || name == ".." || name.contains('/') {
            return Err(Error::Parse {
                path: list.into(),
                text: name.into(),
            });
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// Bounds the sub-tree below the cgroup directory `dir`, then gives `dir`
/// and its files named in `names` to `uid` (files this kernel lacks are
/// skipped; symlinks are never followed).
pub fn delegate_dir(dir: &Path, names: &[String], uid: u32) -> Result<(), Error> {
    for (file, value) in [
        ("cgroup.max.depth", MAX_DEPTH),
        ("cgroup.max.descendants", MAX_DESCENDANTS),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, value.to_string()).map_err(|source| Error::Write {
            path,
            value: value.to_string(),
            source,
        })?;
    }
    let chown = |path: &Path| {
        std::os::unix::fs::lchown(path, Some(uid), None).map_err(|source| Error::Io {
            op: "delegate (chown) cgroup",
            path: path.into(),
            source,
        })
    };
    chown(dir)?;
    for name in names {
        let path = dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => chown(&path)?,
            Ok(_) => {
                return Err(Error::Parse {
                    path,
                    text: "not a regular file".into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    op: "delegate (stat) cgroup file",
                    path,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The cgroup an exec process joins in the cgroup `leaf` (a "/"-rooted
/// path), given the leaf's directory and the text of the container init's
/// /proc/PID/cgroup: the leaf itself, unless the container (its cgroup
/// delegated) enabled controllers in the leaf's `cgroup.subtree_control`,
/// after which the leaf may hold no process (EBUSY); then the cgroup its
/// init is in, as runc does, when that is strictly below the leaf. The
/// container names those cgroups, so the init's line must be the only
/// one, a v2 line (`0::PATH`), and PATH beneath the leaf.
pub fn exec_cgroup(leaf: &str, leaf_dir: &Path, init_cgroup: &str) -> String {
    let inner = std::fs::read_to_string(leaf_dir.join("cgroup.subtree_control"))
        .is_ok_and(|t| !t.trim().is_empty());
    if !inner {
        return leaf.to_string();
    }
    let mut lines = init_cgroup.lines();
    let (Some(line), None) = (lines.next(), lines.next()) else {
        return leaf.to_string();
    };
    let below = line.strip_prefix("0::").filter(|p| {
        p.strip_prefix(leaf)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| {
                !rest.is_empty() && rest.split('/').all(|c| !matches!(c, "" | "." | ".."))
            })
    });
    below.unwrap_or(leaf).to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_kernels_list_or_the_documented_three() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("delegate");
        assert_eq!(
            delegatable_files(&list).unwrap(),
            ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"]
        );
        std::fs::write(&list, "cgroup.procs\ncgroup.threads\nmemory.reclaim\n").unwrap();
        assert_eq!(
            delegatable_files(&list).unwrap(),
            ["cgroup.procs", "cgroup.threads", "memory.reclaim"]
        );
        for bad in ["../memory.max\n", "a/b\n", "..\n"] {
            std::fs::write(&list, bad).unwrap();
            assert!(
                matches!(delegatable_files(&list), Err(Error::Parse { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn an_exec_joins_the_inits_cgroup_only_below_an_inner_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = "/crius/pod-1/crius-c";
        let control = dir.path().join("cgroup.subtree_control");
        std::fs::write(&control, "\n").unwrap();
        assert_eq!(
            exec_cgroup(leaf, dir.path(), "0::/crius/pod-1/crius-c/child\n"),
            leaf
        );
        std::fs::write(&control, "pids\n").unwrap();
        assert_eq!(
            exec_cgroup(leaf, dir.path(), "0::/crius/pod-1/crius-c/child/x\n"),
            "/crius/pod-1/crius-c/child/x"
        );
        for hostile in [
            "0::/crius/pod-1/crius-c\n",
            "0::/crius/pod-1/crius-cx/child\n",
            "0::/crius/pod-1/crius-c/\n",
            "0::/crius/pod-1/crius-c/../../crius-monitors\n",
            "0::/crius/pod-1/crius-c/x\n0::/crius-monitors\n",
            "1:memory:/crius/pod-1/crius-c/x\n",
            "",
        ] {
            assert_eq!(exec_cgroup(leaf, dir.path(), hostile), leaf, "{hostile:?}");
        }
    }

    /// On a plain directory standing in for a cgroup: the limits written,
    /// the directory and the listed files chowned, the rest left root's,
    /// a missing listed file skipped, a symlink refused. Needs root (chown).
    #[test]
    fn delegation_chowns_only_the_listed_files() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("c");
        std::fs::create_dir(&cg).unwrap();
        for f in [
            "cgroup.procs",
            "cgroup.threads",
            "memory.max",
            "cgroup.max.depth",
            "cgroup.max.descendants",
        ] {
            std::fs::write(cg.join(f), "").unwrap();
        }
        let names: Vec<String> = ["cgroup.procs", "cgroup.threads", "memory.reclaim"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        delegate_dir(&cg, &names, 200_000).unwrap();
        let uid = |f: &str| std::fs::symlink_metadata(cg.join(f)).unwrap().uid();
        assert_eq!(uid(""), 200_000);
        assert_eq!(uid("cgroup.procs"), 200_000);
        assert_eq!(uid("cgroup.threads"), 200_000);
        assert_eq!(uid("memory.max"), 0);
        assert_eq!(uid("cgroup.max.depth"), 0);
        assert!(!cg.join("memory.reclaim").exists());
        let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap();
        assert_eq!(read("cgroup.max.depth"), MAX_DEPTH.to_string());
        assert_eq!(read("cgroup.max.descendants"), MAX_DESCENDANTS.to_string());
        // A listed name that is a symlink is refused, never followed.
        std::os::unix::fs::symlink("/etc/passwd", cg.join("memory.reclaim")).unwrap();
        assert!(matches!(
            delegate_dir(&cg, &names, 200_000),
            Err(Error::Parse { .. })
        ));
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }
}
