//! Executing a container's rootfs plan ([`crate::init::rootfs::Step`])
//! on the real kernel, inside the container's new mount namespace: overlay,
//! propagation, Spec mounts whose targets are created and opened beneath
//! the rootfs with openat2(RESOLVE_IN_ROOT) (a symlink in the image can
//! never lead a mount out of it; the mount goes through the opened fd's
//! /proc/self/fd path), device nodes, pivot_root(".", "."), masked and
//! read-only paths (mount(2), pivot_root(2), openat2(2)).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::init::error::{Error, StepError, fail, io};
use crate::init::rootfs::{Lower, Node, Step, TargetKind};
use crate::monitor::sync::Step as SetupStep;

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    let data = data.filter(|d| !d.is_empty());
    nix::mount::mount(source, target, fstype, flags, data).map_err(|errno| Error::Mount {
        from: source.map(|s| s.display().to_string()).unwrap_or_default(),
        target: target.to_path_buf(),
        fstype: fstype.map(str::to_string),
        flags,
        errno,
    })
}

/// The mount point holding `path` and its propagation from mountinfo:
/// (mount point, shared, slave).
fn mount_of(path: &Path) -> Option<(PathBuf, bool, bool)> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(PathBuf, bool, bool)> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(point) = fields.get(4) else { continue };
        let point = PathBuf::from(point.replace("\\040", " "));
        if !path.starts_with(&point) {
            continue;
        }
        let optional = fields[6..].iter().take_while(|f| **f != "-");
        let (mut shared, mut slave) = (false, false);
        for f in optional {
            shared |= f.starts_with("shared:");
            slave |= f.starts_with("master:");
        }
        // Later lines are mounted later: the last match of the longest
        // prefix is the visible mount.
        if best
            .as_ref()
            .is_none_or(|(b, _, _)| point.components().count() >= b.components().count())
        {
            best = Some((point, shared, slave));
        }
    }
    best
}

/// Checks, before any propagation change, that the source of every
/// host-to-container (rslave) or bidirectional (rshared) mount sits on a
/// shared or slave mount, as containerd requires: otherwise the mount
/// would silently not propagate.
pub fn check_propagation_sources(steps: &[Step]) -> Result<(), StepError> {
    for s in steps {
        let Step::Mount {
            source, options, ..
        } = s
        else {
            continue;
        };
        let wants_shared = options
            .propagation
            .iter()
            .any(|p| p.contains(MsFlags::MS_SHARED));
        let wants_slave = options
            .propagation
            .iter()
            .any(|p| p.contains(MsFlags::MS_SLAVE));
        if !(wants_shared || wants_slave) {
            continue;
        }
        let real = std::fs::canonicalize(source).unwrap_or_else(|_| source.clone());
        let (point, shared, slave) = mount_of(&real).unwrap_or_default();
        let ok = if wants_shared {
            shared
        } else {
            shared || slave
        };
        if !ok {
            let need = if wants_shared {
                "shared"
            } else {
                "shared or slave"
            };
            return Err(StepError {
                step: SetupStep::Mount(source.display().to_string()),
                error: Error::Refused(format!(
                    "path {} is mounted on {} but it is not a {need} mount",
                    source.display(),
                    point.display()
                )),
            });
        }
    }
    Ok(())
}

fn open_in_root(root: &OwnedFd, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    rustix::fs::openat2(
        root,
        rel,
        flags | OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
}

/// Creates `rel` beneath `root` (directories for every missing component,
/// the last one as `kind`), resolving every component inside the root,
/// and returns an O_PATH fd of it.
pub fn create_beneath(root: &OwnedFd, rel: &Path, kind: TargetKind) -> Result<OwnedFd, Error> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    let mut prefix = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        let parent = open_in_root(root, &prefix, OFlags::DIRECTORY)
            .map_err(io(format!("open {} in the rootfs", prefix.display())))?;
        prefix.push(part);
        match open_in_root(root, &prefix, OFlags::empty()) {
            Ok(_) => continue,
            Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io(format!("open {} in the rootfs", prefix.display()))(e)),
        }
        let last = i + 1 == parts.len();
        let created = if last && kind == TargetKind::File {
            rustix::fs::openat(
                &parent,
                *part,
                OFlags::CREATE | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop)
        } else {
            rustix::fs::mkdirat(&parent, *part, Mode::from_raw_mode(0o755))
        };
        match created {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(format!("create {} in the rootfs", prefix.display()))(e)),
        }
    }
    open_in_root(root, &prefix, OFlags::empty())
        .map_err(io(format!("open {} in the rootfs", prefix.display())))
}

fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The standard device nodes (major, minor) every container gets.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

fn devices(dev: &OwnedFd) -> Result<(), Error> {
    for (name, major, minor) in DEVICES {
        match rustix::fs::mknodat(
            dev,
            name,
            rustix::fs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        ) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(format!("mknod /dev/{name}"))(e)),
        }
    }
    for (name, target) in DEV_LINKS {
        match rustix::fs::symlinkat(target, dev, name) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(format!("symlink /dev/{name}"))(e)),
        }
    }
    Ok(())
}

/// Makes a CRI device's node: its parent directories are created beneath
/// the root (symlinks resolved inside it), then mknod, owner and mode
/// (set after mknod: the umask must not narrow them).
fn make_node(root: &Path, root_fd: &OwnedFd, n: &Node) -> Result<(), Error> {
    let rel = n.target.strip_prefix(root).unwrap_or(&n.target);
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Err(Error::Refused(format!(
            "{} is not a file path",
            n.target.display()
        )));
    };
    let dir = create_beneath(root_fd, parent, TargetKind::Dir)?;
    let kind = if n.block {
        rustix::fs::FileType::BlockDevice
    } else {
        rustix::fs::FileType::CharacterDevice
    };
    let mode = Mode::from_raw_mode(n.mode);
    rustix::fs::mknodat(
        &dir,
        name,
        kind,
        mode,
        rustix::fs::makedev(n.major, n.minor),
    )
    .map_err(io("mknod"))?;
    rustix::fs::chownat(
        &dir,
        name,
        Some(rustix::fs::Uid::from_raw(n.uid)),
        Some(rustix::fs::Gid::from_raw(n.gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io("chown"))?;
    rustix::fs::chmodat(&dir, name, mode, rustix::fs::AtFlags::empty()).map_err(io("chmod"))
}

/// The container path of a host path beneath `root`, for messages.
fn inside(root: &Path, target: &Path) -> String {
    match target.strip_prefix(root) {
        Ok(rel) => format!("/{}", rel.display()),
        Err(_) => target.display().to_string(),
    }
}

/// The rootfs' fd, which the steps after the self bind work beneath.
fn mounted<'a>(root_fd: &'a Option<OwnedFd>, step: &SetupStep) -> Result<&'a OwnedFd, StepError> {
    root_fd.as_ref().ok_or_else(|| StepError {
        step: step.clone(),
        error: Error::Refused("the rootfs is not mounted".into()),
    })
}

/// Runs `steps` in order. Must run in the container's own mount
/// namespace: nothing here is undone, the namespace's end undoes it all.
/// `userns`: the container's user namespace, which idmapped mounts map
/// through (the caller is still in the host's, which making them needs).
pub fn execute(root: &Path, steps: &[Step], userns: Option<&OwnedFd>) -> Result<(), StepError> {
    check_propagation_sources(steps)?;
    let mut root_fd: Option<OwnedFd> = None;
    for s in steps {
        match s {
            Step::RootPropagation(flags) => mount(None, Path::new("/"), None, *flags, None)
                .map_err(fail(SetupStep::RootPropagation))?,
            Step::PrivateParent(path) => {
                // Only a shared parent (rshared root propagation) becomes
                // private: pivot_root refuses it, and binds into the rootfs
                // would reach the host. A slave parent (rslave) stays one,
                // so host-to-container binds of directories on it keep
                // receiving host mounts (runc's rootfsParentMountPrivate).
                let (point, shared, _) =
                    mount_of(path).unwrap_or((PathBuf::from("/"), true, false));
                if shared {
                    mount(None, &point, None, MsFlags::MS_PRIVATE, None)
                        .map_err(fail(SetupStep::PrivateParent))?
                }
            }
            Step::IdmapLayers { layers, at } => {
                let userns = userns.ok_or_else(|| StepError {
                    step: SetupStep::IdmapLayers,
                    error: Error::Refused("no user namespace to map through".into()),
                })?;
                idmap_layers(layers, at, userns).map_err(fail(SetupStep::IdmapLayers))?
            }
            Step::Overlay { target, data } => {
                std::fs::create_dir_all(target)
                    .map_err(io(format!("create {}", target.display())))
                    .map_err(fail(SetupStep::Overlay))?;
                mount(
                    Some(Path::new("overlay")),
                    target,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(data),
                )
                .map_err(fail(SetupStep::Overlay))?
            }
            Step::BindSelf(path) => {
                mount(
                    Some(path),
                    path,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )
                .map_err(fail(SetupStep::BindRoot))?;
                let fd = rustix::fs::open(
                    path,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io(format!("open {}", path.display())))
                .map_err(fail(SetupStep::BindRoot))?;
                root_fd = Some(fd);
            }
            Step::Mount {
                source,
                target,
                fstype,
                options,
                kind,
            } => {
                let name = SetupStep::Mount(inside(root, target));
                let root_fd = mounted(&root_fd, &name)?;
                let m = Target {
                    root,
                    root_fd,
                    target,
                    kind: *kind,
                };
                mount_one(&m, source, fstype, options, userns).map_err(fail(name))?
            }
            Step::ImageVolume {
                target,
                lower,
                sub_path,
                image,
                staging,
            } => {
                let name = SetupStep::Mount(inside(root, target));
                let root_fd = mounted(&root_fd, &name)?;
                let volume = Volume {
                    lower,
                    sub_path,
                    image,
                    staging,
                };
                mount_volume(root, root_fd, target, &volume).map_err(fail(name))?
            }
            Step::Devices { dev } => {
                let root_fd = mounted(&root_fd, &SetupStep::Devices)?;
                let rel = dev.strip_prefix(root).unwrap_or(dev);
                let dev_fd = open_in_root(root_fd, rel, OFlags::DIRECTORY)
                    .map_err(io("open /dev"))
                    .map_err(fail(SetupStep::Devices))?;
                devices(&dev_fd).map_err(fail(SetupStep::Devices))?
            }
            Step::Nodes(nodes) => {
                let root_fd = mounted(&root_fd, &SetupStep::CriDevices)?;
                for n in nodes {
                    let name = SetupStep::Device(inside(root, &n.target));
                    make_node(root, root_fd, n).map_err(fail(name))?
                }
            }
            Step::PivotRoot(path) => {
                root_fd = None;
                pivot(path).map_err(fail(SetupStep::PivotRoot))?
            }
            Step::Mask(paths) => {
                for p in paths {
                    mask(p).map_err(fail(SetupStep::Mask(p.display().to_string())))?
                }
            }
            Step::ReadOnly(paths) => {
                for p in paths {
                    readonly(p).map_err(fail(SetupStep::ReadOnlyPath(p.display().to_string())))?
                }
            }
            Step::ReadOnlyRoot => mount(
                None,
                Path::new("/"),
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            )
            .map_err(fail(SetupStep::ReadOnlyRoot))?,
        }
    }
    Ok(())
}

/// Idmapped copies of the image layers, each attached at `<at>/<index>`
/// (a directory beside the rootfs, under the mount made private before:
/// nothing propagates to the host). Layer dirs are never chowned.
fn idmap_layers(layers: &[PathBuf], at: &Path, userns: &OwnedFd) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    for (i, layer) in layers.iter().enumerate() {
        let dir = at.join(i.to_string());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(format!("create {}", dir.display())))?;
        let tree = crate::sys::idmap::idmapped_clone(layer, userns, false)?;
        crate::sys::idmap::move_mount_to(&tree, &dir)?;
    }
    Ok(())
}

/// A mount target beneath the rootfs.
struct Target<'a> {
    root: &'a Path,
    root_fd: &'a OwnedFd,
    target: &'a Path,
    kind: TargetKind,
}

fn mount_one(
    t: &Target,
    source: &Path,
    fstype: &str,
    options: &crate::init::rootfs::MountOptions,
    userns: Option<&OwnedFd>,
) -> Result<(), Error> {
    let (root, root_fd, target, kind) = (t.root, t.root_fd, t.target, t.kind);
    if options.is_bind() && !source.exists() {
        // What containerd and CRI-O do for a missing host path: 0755 with
        // its missing parents (exactly: the rootfs setup runs with umask 0).
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(source)
            .map_err(io(format!("create host path {}", source.display())))?;
    }
    let rel = target.strip_prefix(root).unwrap_or(target);
    let fd = create_beneath(root_fd, rel, kind)?;
    check_kernel_fs_target(&fd, &inside(root, target), fstype, options)?;
    let at = fd_path(&fd);
    if options.is_bind() {
        match (options.idmap, userns) {
            (Some(recursive), Some(userns)) => {
                // A detached idmapped copy, attached at the target.
                let tree = crate::sys::idmap::idmapped_clone(source, userns, recursive)?;
                crate::sys::idmap::move_mount_to(&tree, &at)?;
            }
            (Some(_), None) => {
                return Err(Error::Refused(
                    "an idmapped mount needs the container's user namespace".into(),
                ));
            }
            (None, _) => mount(Some(source), &at, None, options.flags, None)?,
        }
        if options.needs_remount() {
            // Remount the mount now at the target (reopened: the fd still
            // names the covered directory), keeping the nosuid/nodev/noexec
            // the source's mount has: a remount without them would clear
            // them (runc does the same).
            let fd = create_beneath(root_fd, rel, kind)?;
            let locked = crate::sys::mount::locked_flags_of(&fd)?;
            mount(
                None,
                &fd_path(&fd),
                None,
                options.flags | locked | MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
                None,
            )?;
        }
    } else {
        mount(
            Some(source),
            &at,
            Some(fstype),
            options.flags,
            Some(&options.data),
        )?;
    }
    if options.recursive_readonly {
        // The bind brought the source's submounts (rbind): all of them
        // read-only in one call, on the mount now at the target.
        let fd = create_beneath(root_fd, rel, kind)?;
        crate::sys::mount::set_readonly_recursive_fd(&fd, &inside(root, target))?;
    }
    if !options.propagation.is_empty() {
        let fd = create_beneath(root_fd, rel, kind)?;
        for p in &options.propagation {
            mount(None, &fd_path(&fd), None, *p, None)?;
        }
    }
    let _ = fd.as_fd();
    Ok(())
}

/// An image volume's source side, as its plan step gives it.
struct Volume<'a> {
    lower: &'a Lower,
    sub_path: &'a Path,
    image: &'a str,
    staging: &'a Path,
}

/// Mounts an image volume at `target` (beneath the rootfs): the image at
/// its staging dir (a read-only overlay of its layers, or its one layer
/// bound and remounted read-only), the sub path opened beneath the image's
/// root (RESOLVE_IN_ROOT: `..` and symlinks stay inside the image; no
/// crossing into another mount), bound at the target and remounted
/// read-only, then the staging mount detached (the bind keeps the image's
/// mount alive; both end with the container's mount namespace).
fn mount_volume(root: &Path, root_fd: &OwnedFd, target: &Path, v: &Volume) -> Result<(), Error> {
    let ro = MsFlags::MS_RDONLY;
    match v.lower {
        Lower::Overlay(data) => mount(
            Some(Path::new("overlay")),
            v.staging,
            Some("overlay"),
            ro,
            Some(data),
        )?,
        Lower::Bind(layer) => {
            mount(Some(layer), v.staging, None, MsFlags::MS_BIND, None)?;
            // As for any bind remount: the host mount's nosuid/nodev/noexec
            // stay.
            let fd = rustix::fs::open(
                v.staging,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(io(format!("open {}", v.staging.display())))?;
            let locked = crate::sys::mount::locked_flags_of(&fd)?;
            mount(
                None,
                v.staging,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro | locked,
                None,
            )?;
        }
    }
    let bound = bind_volume(root, root_fd, target, v);
    let detached = nix::mount::umount2(v.staging, MntFlags::MNT_DETACH)
        .map_err(io(format!("detach {}", v.staging.display())));
    bound.and(detached)
}

fn bind_volume(root: &Path, root_fd: &OwnedFd, target: &Path, v: &Volume) -> Result<(), Error> {
    let image_root = rustix::fs::open(
        v.staging,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io(format!(
        "open the image {} at {}",
        v.image,
        v.staging.display()
    )))?;
    let source = rustix::fs::openat2(
        &image_root,
        if v.sub_path.as_os_str().is_empty() {
            Path::new(".")
        } else {
            v.sub_path
        },
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV,
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => Error::Refused(format!(
            "image_sub_path {:?} does not exist in the image {}",
            v.sub_path, v.image
        )),
        e => io(format!(
            "image_sub_path {:?} in the image {}",
            v.sub_path, v.image
        ))(e),
    })?;
    let st = rustix::fs::fstat(&source).map_err(io("stat image_sub_path"))?;
    let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode) {
        rustix::fs::FileType::Directory => TargetKind::Dir,
        rustix::fs::FileType::RegularFile => TargetKind::File,
        other => {
            return Err(Error::Refused(format!(
                "image_sub_path {:?} in the image {} is a {other:?}, not a directory or a regular file",
                v.sub_path, v.image
            )));
        }
    };
    let rel = target.strip_prefix(root).unwrap_or(target);
    let dest = inside(root, target);
    let fd = create_beneath(root_fd, rel, kind)?;
    let bind = crate::init::rootfs::parse_options(&["bind".into()]);
    check_kernel_fs_target(&fd, &dest, "bind", &bind)?;
    mount(
        Some(&fd_path(&source)),
        &fd_path(&fd),
        None,
        MsFlags::MS_BIND,
        None,
    )?;
    let fd = create_beneath(root_fd, rel, kind)?;
    let locked = crate::sys::mount::locked_flags_of(&fd)?;
    mount(
        None,
        &fd_path(&fd),
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked,
        None,
    )
}

/// The /proc files a bind mount may cover (runc's checkProcMount list:
/// what lxcfs-style tools replace); nothing else below /proc.
const PROC_BIND_ALLOWED: [&str; 10] = [
    "/proc/cpuinfo",
    "/proc/diskstats",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/swaps",
    "/proc/uptime",
    "/proc/loadavg",
    "/proc/slabinfo",
    "/proc/net/dev",
    "/proc/sys/kernel/ns_last_pid",
];

/// Refuses a mount whose target, once resolved inside the rootfs, lies on
/// procfs or sysfs: a volume over /proc/sys/kernel/core_pattern (or reached
/// through an image's symlink into /proc) would rewrite a host kernel knob.
/// What the kernel says (fstatfs of the opened target) counts, not the
/// path's spelling. Allowed: a cgroup filesystem at /sys/fs/cgroup, and
/// binds over runc's short /proc list.
fn check_kernel_fs_target(
    fd: &OwnedFd,
    dest: &str,
    fstype: &str,
    options: &crate::init::rootfs::MountOptions,
) -> Result<(), Error> {
    use crate::sys::mount::{KernelFs, kernel_fs_of};
    let on = kernel_fs_of(fd)?;
    let allowed = match on {
        None => true,
        Some(KernelFs::Sys) => dest == "/sys/fs/cgroup" && matches!(fstype, "cgroup" | "cgroup2"),
        Some(KernelFs::Proc) => options.is_bind() && PROC_BIND_ALLOWED.contains(&dest),
    };
    if allowed {
        return Ok(());
    }
    let fs = match on {
        Some(KernelFs::Proc) => "procfs",
        _ => "sysfs",
    };
    Err(Error::Refused(format!(
        "mount target {dest} resolves onto {fs}: refused (a mount there would change a kernel setting)"
    )))
}

/// pivot_root(".", ".") in the new root; the old root, now stacked on top
/// of it, is entered through an fd opened before (a path "." would name
/// the new root beneath it), made a slave recursively so its detach never
/// propagates to the host, and detached. The new root's own mounts keep
/// their propagation (a bidirectional mount stays a peer of the host's).
fn pivot(root: &Path) -> Result<(), Error> {
    let old = rustix::fs::open(
        "/",
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(io("open the old root"))?;
    nix::unistd::chdir(root).map_err(io(format!("chdir {}", root.display())))?;
    nix::unistd::pivot_root(".", ".").map_err(io("pivot_root"))?;
    nix::unistd::fchdir(&old).map_err(io("enter the old root"))?;
    mount(
        None,
        Path::new("."),
        None,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None,
    )?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(io("detach the old root"))?;
    drop(old);
    nix::unistd::chdir("/").map_err(io("chdir /"))
}

fn mask(path: &Path) -> Result<(), Error> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(format!("stat {}", path.display()))(e)),
        Ok(m) if m.is_dir() => mount(
            Some(Path::new("tmpfs")),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        ),
        Ok(_) => {
            // Through a checked fd: the path /dev/null could name anything
            // the container planted in its /dev.
            let null = crate::sys::mount::open_dev_null()?;
            mount(Some(&fd_path(&null)), path, None, MsFlags::MS_BIND, None)
        }
    }
}

/// A read-only path with everything mounted below it read-only too (a
/// submount of /proc/sys must not stay writable).
fn readonly(path: &Path) -> Result<(), Error> {
    if !path.exists() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    readonly_recursive(path)
}

/// Makes the mount at `path` and all its submounts read-only: one
/// mount_setattr(AT_RECURSIVE) where the kernel has it (>= 5.12), else a
/// read-only remount of each mount point below `path`, deepest first.
pub fn readonly_recursive(path: &Path) -> Result<(), Error> {
    use crate::sys::mount;
    if mount::recursive_readonly_supported() {
        return Ok(mount::set_readonly_recursive(path)?);
    }
    readonly_each(path)
}

/// The fallback of [`readonly_recursive`] for kernels before 5.12.
fn readonly_each(path: &Path) -> Result<(), Error> {
    let mut points = crate::sys::mount::mounts_under(path);
    if !points.iter().any(|p| p == path) {
        points.push(path.to_path_buf());
    }
    for p in points {
        self::mount(
            None,
            &p,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_created_beneath_the_root_whatever_symlinks_say() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // An image's absolute symlink and a .. chain both point out.
        std::os::unix::fs::symlink(&outside, root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("rel")).unwrap();
        let root_fd =
            rustix::fs::open(&root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        // A dangling link (its target is not in the root) is refused...
        assert!(create_beneath(&root_fd, Path::new("abs/x/y"), TargetKind::Dir).is_err());
        assert!(create_beneath(&root_fd, Path::new("rel/f"), TargetKind::File).is_err());
        assert!(!outside.join("x").exists() && !outside.join("f").exists());
        // ...and one whose target exists in the root is followed there.
        let inner = root.join(outside.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inner).unwrap();
        std::fs::create_dir_all(root.join("outside")).unwrap();
        create_beneath(&root_fd, Path::new("abs/x/y"), TargetKind::Dir).unwrap();
        create_beneath(&root_fd, Path::new("rel/f"), TargetKind::File).unwrap();
        assert!(!outside.join("x").exists() && !outside.join("f").exists());
        assert!(inner.join("x/y").is_dir());
        assert!(root.join("outside/f").is_file());
    }

    /// Runs `f` on a thread of its own in a private mount namespace (the
    /// namespace ends with the thread), as root only.
    fn in_mount_namespace(f: impl FnOnce() + Send + 'static) {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mount namespaces need root");
            return;
        }
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            f()
        })
        .join()
        .unwrap();
    }

    fn tmpfs(at: &Path, data: &str, flags: MsFlags) {
        nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), flags, Some(data)).unwrap();
    }

    fn writable(dir: &Path) -> bool {
        std::fs::write(dir.join("probe"), b"x").is_ok()
    }

    #[test]
    fn read_only_paths_are_read_only_with_their_submounts() {
        for each in [false, true] {
            in_mount_namespace(move || {
                let dir = tempfile::tempdir().unwrap();
                let top = dir.path().join("top");
                std::fs::create_dir(&top).unwrap();
                tmpfs(&top, "size=64k", MsFlags::empty());
                std::fs::create_dir(top.join("sub")).unwrap();
                tmpfs(&top.join("sub"), "size=64k", MsFlags::empty());
                assert!(writable(&top) && writable(&top.join("sub")));
                mount(
                    Some(&top),
                    &top,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                )
                .unwrap();
                if each {
                    readonly_each(&top).unwrap();
                } else {
                    readonly_recursive(&top).unwrap();
                }
                assert!(!writable(&top), "top writable (fallback {each})");
                assert!(
                    !writable(&top.join("sub")),
                    "submount writable (fallback {each})"
                );
                let _ = nix::mount::umount2(&top, MntFlags::MNT_DETACH);
            });
        }
    }

    #[test]
    fn a_bind_remount_keeps_the_sources_nosuid_nodev_noexec() {
        in_mount_namespace(|| {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("src");
            std::fs::create_dir(&src).unwrap();
            let locked = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            tmpfs(&src, "size=64k", locked);
            let fd =
                rustix::fs::open(&src, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
            assert_eq!(crate::sys::mount::locked_flags_of(&fd).unwrap(), locked);
            let plain = dir.path().join("plain");
            std::fs::create_dir(&plain).unwrap();
            tmpfs(&plain, "size=64k", MsFlags::empty());
            let fd =
                rustix::fs::open(&plain, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
            assert_eq!(
                crate::sys::mount::locked_flags_of(&fd).unwrap(),
                MsFlags::empty()
            );
            let _ = nix::mount::umount2(&src, MntFlags::MNT_DETACH);
            let _ = nix::mount::umount2(&plain, MntFlags::MNT_DETACH);
        });
    }

    #[test]
    fn procfs_and_sysfs_targets_are_refused_except_their_own_mounts() {
        let open = |p: &str| rustix::fs::open(p, OFlags::PATH, Mode::empty()).unwrap();
        let bind = crate::init::rootfs::parse_options(&["rbind".into()]);
        let none = crate::init::rootfs::parse_options(&[]);
        let kernel = open("/proc/sys/kernel/core_pattern");
        assert!(
            check_kernel_fs_target(&kernel, "/proc/sys/kernel/core_pattern", "bind", &bind)
                .is_err()
        );
        let uptime = open("/proc/uptime");
        assert!(check_kernel_fs_target(&uptime, "/proc/uptime", "bind", &bind).is_ok());
        assert!(check_kernel_fs_target(&uptime, "/proc/uptime", "tmpfs", &none).is_err());
        let sys = open("/sys/kernel");
        assert!(check_kernel_fs_target(&sys, "/sys/fs/cgroup", "cgroup2", &none).is_ok());
        assert!(check_kernel_fs_target(&sys, "/sys/kernel", "bind", &bind).is_err());
        let tmp = open("/tmp");
        assert!(check_kernel_fs_target(&tmp, "/tmp", "bind", &bind).is_ok());
    }

    #[test]
    fn inside_names_container_paths() {
        assert_eq!(inside(Path::new("/r"), Path::new("/r/data")), "/data");
    }
}
