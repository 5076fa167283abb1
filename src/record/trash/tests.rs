use std::path::Path;
use std::time::{Duration, Instant};

use super::*;

fn wait_idle(trash: &Trash) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !trash.idle() {
        assert!(Instant::now() < deadline, "the trash did not drain");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn entries(dir: &Path) -> Vec<OsString> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// A container directory as the init leaves it.
fn container_dir(at: &Path) {
    std::fs::create_dir_all(at.join("u/etc")).unwrap();
    std::fs::write(at.join("u/etc/hostname"), "h\n").unwrap();
    std::fs::create_dir_all(at.join("w/work")).unwrap();
    std::fs::create_dir_all(at.join("r")).unwrap();
}

#[test]
fn put_moves_the_tree_at_once_and_the_thread_deletes_it() {
    let root = tempfile::tempdir().unwrap();
    let trash = Trash::new(root.path().join("trash"));
    let (a, b) = (root.path().join("c/a"), root.path().join("c/b"));
    container_dir(&a);
    container_dir(&b);
    trash.put(&a).unwrap();
    assert!(!a.exists(), "moved away when put returns");
    trash.put(&b).unwrap();
    assert!(!b.exists());
    wait_idle(&trash);
    assert!(entries(&trash.dir).is_empty());
    assert!(
        root.path().join("c").is_dir(),
        "only what was put is deleted"
    );
}

#[test]
fn a_missing_path_is_no_error() {
    let root = tempfile::tempdir().unwrap();
    let trash = Trash::new(root.path().join("trash"));
    trash.put(&root.path().join("gone")).unwrap();
    assert!(trash.idle());
}

#[test]
fn a_tree_deeper_than_path_max_is_deleted() {
    let root = tempfile::tempdir().unwrap();
    let top = root.path().join("deep");
    std::fs::create_dir(&top).unwrap();
    // 3000 levels of "dir/": paths far beyond PATH_MAX, built with *at calls.
    let mut fd = rustix::fs::open(&top, OFlags::DIRECTORY | OFlags::RDONLY, Mode::empty()).unwrap();
    for i in 0..3000 {
        rustix::fs::mkdirat(&fd, "dir", Mode::from_raw_mode(0o755)).unwrap();
        if i % 500 == 0 {
            let f = rustix::fs::openat(
                &fd,
                "f",
                OFlags::CREATE | OFlags::WRONLY,
                Mode::from_raw_mode(0o644),
            )
            .unwrap();
            rustix::io::write(&f, b"data").unwrap();
        }
        fd = rustix::fs::openat(
            &fd,
            "dir",
            OFlags::DIRECTORY | OFlags::RDONLY,
            Mode::empty(),
        )
        .unwrap();
    }
    drop(fd);
    let trash = Trash::new(root.path().join("trash"));
    trash.put(&top).unwrap();
    wait_idle(&trash);
    assert!(entries(&trash.dir).is_empty());
}

#[test]
fn symlinks_are_deleted_never_followed() {
    let root = tempfile::tempdir().unwrap();
    let keep = root.path().join("keep");
    std::fs::create_dir_all(keep.join("sub")).unwrap();
    std::fs::write(keep.join("sub/file"), "precious").unwrap();
    let tree = root.path().join("tree");
    std::fs::create_dir_all(tree.join("u/a")).unwrap();
    std::os::unix::fs::symlink(&keep, tree.join("u/to-dir")).unwrap();
    std::os::unix::fs::symlink(keep.join("sub/file"), tree.join("u/a/to-file")).unwrap();
    std::os::unix::fs::symlink("../../../keep", tree.join("u/a/relative")).unwrap();
    let trash = Trash::new(root.path().join("trash"));
    trash.put(&tree).unwrap();
    wait_idle(&trash);
    assert!(entries(&trash.dir).is_empty());
    assert_eq!(
        std::fs::read_to_string(keep.join("sub/file")).unwrap(),
        "precious"
    );
}

#[test]
fn reap_deletes_what_an_earlier_run_left() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("trash");
    container_dir(&dir.join("abc.0"));
    std::fs::write(dir.join("loose-file"), "x").unwrap();
    let trash = Trash::new(dir.clone());
    assert!(!trash.idle());
    trash.reap();
    wait_idle(&trash);
    assert!(entries(&dir).is_empty());
}

#[test]
fn names_already_in_the_trash_are_never_replaced() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("trash");
    // An entry of an earlier run under the name the first put would take.
    std::fs::create_dir_all(dir.join("a.0")).unwrap();
    let trash = Trash::new(dir.clone());
    let a = root.path().join("a");
    container_dir(&a);
    trash.put(&a).unwrap();
    assert!(!a.exists());
    wait_idle(&trash);
    assert!(entries(&dir).is_empty());
}

/// Unmounts whatever is mounted below a test's dir, wherever the trash
/// moved it, also when the test fails.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        for m in crate::sys::mount::mounts_under(&self.0).iter().rev() {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Mounts a fresh tmpfs at `at` (needs root).
fn mount_tmpfs(at: &Path) {
    nix::mount::mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

/// Needs root (mount(2)): a mount point inside a trashed tree is neither
/// crossed nor removed; what is mounted there survives.
#[test]
fn a_mount_point_in_the_tree_is_left_with_its_contents() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let _guard = Unmount(root.path().to_path_buf());
    let tree = root.path().join("tree");
    let mnt = tree.join("u/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(tree.join("u/file"), "x").unwrap();
    mount_tmpfs(&mnt);
    std::fs::write(mnt.join("precious"), "keep").unwrap();
    let trash = Trash::new(root.path().join("trash"));
    trash.put(&tree).unwrap();
    wait_idle(&trash);
    // Only the directory holding the mount point is left (moved up into
    // the trash), and the mounted file is whole.
    let left = entries(&trash.dir);
    assert_eq!(left.len(), 1, "{left:?}");
    let kept = trash.dir.join(&left[0]);
    assert_eq!(
        std::fs::read_to_string(kept.join("mnt/precious")).unwrap(),
        "keep"
    );
    assert_eq!(trash.lock().stuck.len(), 1);
}

/// Needs root (mount(2)): a trash on a tmpfs of its own at `<root>/fs`,
/// whatever is mounted below `root` unmounted when it drops (fields drop
/// in order: the guard before the temp dir).
struct TrashOnTmpfs {
    trash: Arc<Trash>,
    _guard: Unmount,
    root: tempfile::TempDir,
}

impl TrashOnTmpfs {
    /// `None` when not root.
    fn new() -> Option<TrashOnTmpfs> {
        if !rustix::process::geteuid().is_root() {
            return None;
        }
        let root = tempfile::tempdir().unwrap();
        let guard = Unmount(root.path().to_path_buf());
        let fs = root.path().join("fs");
        std::fs::create_dir(&fs).unwrap();
        mount_tmpfs(&fs);
        Some(TrashOnTmpfs {
            trash: Trash::new(fs.join("trash")),
            _guard: guard,
            root,
        })
    }
}

/// Needs root (mount(2)): a trash on another mount than `/` (the VM
/// guests' /tmp is a tmpfs) is drained; before, opening it refused to
/// cross into that mount (EXDEV) and nothing was ever deleted.
#[test]
fn a_trash_on_its_own_mount_is_drained() {
    let Some(t) = TrashOnTmpfs::new() else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (fs, trash) = (t.root.path().join("fs"), t.trash.clone());
    let c = fs.join("c/a");
    container_dir(&c);
    trash.put(&c).unwrap();
    wait_idle(&trash);
    assert!(entries(&trash.dir).is_empty(), "{:?}", entries(&trash.dir));
    assert!(trash.lock().stuck.is_empty());
}

/// Needs root (mount(2)): a tree on another filesystem than the trash
/// (EXDEV) is deleted in place by the trash's own walk, at once; a mount
/// point inside it is neither crossed nor emptied. Before, the fallback was
/// `std::fs::remove_dir_all`, which descends into mounts: the mounted
/// `precious` file was deleted.
#[test]
fn a_tree_on_another_filesystem_is_deleted_in_place_without_crossing_mounts() {
    let Some(t) = TrashOnTmpfs::new() else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let (root, trash) = (t.root.path(), t.trash.clone());

    // A plain tree, deep enough that subdirectories move up: gone at once.
    let plain = root.join("plain");
    container_dir(&plain);
    std::fs::create_dir_all(plain.join("u/a/b/c/d")).unwrap();
    std::fs::write(plain.join("u/a/b/c/d/f"), "x").unwrap();
    trash.put(&plain).unwrap();
    assert!(!plain.exists());
    assert!(trash.idle(), "nothing went through the trash");

    // A tree holding a mount point: refused, the mounted file whole.
    let tree = root.join("tree");
    let mnt = tree.join("u/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(tree.join("u/file"), "x").unwrap();
    mount_tmpfs(&mnt);
    std::fs::write(mnt.join("precious"), "keep").unwrap();
    let err = trash.put(&tree).unwrap_err();
    assert!(matches!(err, Error::Move { .. }), "{err:?}");
    assert_eq!(
        std::fs::read_to_string(mnt.join("precious")).unwrap(),
        "keep"
    );

    // The tree itself a mount point: refused before anything is deleted.
    let mounted = root.join("mounted");
    std::fs::create_dir(&mounted).unwrap();
    mount_tmpfs(&mounted);
    std::fs::write(mounted.join("precious"), "keep").unwrap();
    assert!(trash.put(&mounted).is_err());
    assert_eq!(
        std::fs::read_to_string(mounted.join("precious")).unwrap(),
        "keep"
    );
}
