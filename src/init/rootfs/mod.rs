//! The container's root filesystem as a plan: the ordered mount steps that
//! turn the image layers and the Spec's mounts into the tree the container
//! sees, computed as data so it is unit-tested without privileges. The
//! executor ([`apply`]) runs the steps, inside the container's new mount
//! namespace, in this order (runc's `prepareRootfs`):
//!
//! 1. root propagation from the Spec (rslave / rshared / rprivate, recursive)
//! 2. the rootfs' parent made private when it is shared (pivot_root fails
//!    on a shared parent; a slave one stays a slave, see [`apply`])
//! 3. overlayfs over the layer dirs with the container's upper/work dirs
//!    (in a user namespace over idmapped copies of the layers)
//! 4. the rootfs bind-mounted onto itself (pivot_root needs a mount point)
//! 5. the Spec's mounts, targets created beneath the rootfs, each followed by
//!    its read-only remount (recursive for `rro`) and propagation change
//!    where asked; then the image volumes (each image's layers as a
//!    read-only overlay, or its one layer bound read-only, at a staging dir
//!    of the container; its sub path opened beneath it and bound at the
//!    target; the staging mount detached)
//! 6. device nodes and the /dev symlinks, then the CRI devices' nodes
//! 7. pivot_root(".", "."), old root detached; masked and read-only paths;
//!    the root remounted read-only when the Spec asks.

pub mod apply;

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

use crate::error::{Classify, Kind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mount destination {0:?} is not absolute")]
    RelativeDestination(PathBuf),
    #[error("mount destination {0:?} escapes the rootfs")]
    Escapes(PathBuf),
    #[error("unknown rootfs propagation {0:?}")]
    Propagation(String),
    #[error("the overlay options for {layers} layers exceed one page ({len} bytes)")]
    OverlayTooLong { layers: usize, len: usize },
    #[error("an image needs at least one layer")]
    NoLayers,
    #[error("device {0:?}: major or minor number out of range")]
    DeviceNumber(PathBuf),
    #[error(
        "image volume {target}: the overlay options for {layers} layers exceed one page ({len} bytes)"
    )]
    VolumeTooLong {
        target: PathBuf,
        layers: usize,
        len: usize,
    },
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        Kind::InvalidArgument
    }
}

/// Parsed OCI mount options.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountOptions {
    /// Flags for the mount(2) call itself.
    #[serde(with = "ms_flags")]
    pub flags: MsFlags,
    /// Propagation changes applied after the mount (each its own call).
    #[serde(with = "ms_flags_list")]
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific data, comma-joined.
    pub data: String,
    /// An idmapped bind (OCI `idmap`, or `ridmap`: with its submounts),
    /// through the container's user namespace: `Some(recursive)`.
    pub idmap: Option<bool>,
    /// `rro`: the mount and all its submounts read-only (mount_setattr
    /// AT_RECURSIVE, after the mount).
    pub recursive_readonly: bool,
}

/// mount(2) flags in a launch (the plan travels from the daemon to the
/// monitor, `monitor::protocol::ContainerLaunch`): their bits.
mod ms_flags {
    use nix::mount::MsFlags;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(flags: &MsFlags, s: S) -> Result<S::Ok, S::Error> {
        flags.bits().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MsFlags, D::Error> {
        Ok(MsFlags::from_bits_retain(libc::c_ulong::deserialize(d)?))
    }
}

mod ms_flags_list {
    use nix::mount::MsFlags;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[MsFlags], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(list.iter().map(|f| f.bits()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<MsFlags>, D::Error> {
        let bits = Vec::<libc::c_ulong>::deserialize(d)?;
        Ok(bits.into_iter().map(MsFlags::from_bits_retain).collect())
    }
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            data: String::new(),
            idmap: None,
            recursive_readonly: false,
        }
    }
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// A bind mount ignores MS_RDONLY & co.; they need a remount.
    pub fn needs_remount(&self) -> bool {
        self.is_bind() && !(self.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC)).is_empty()
    }
}

/// Parses OCI/fstab-style options as runc does: flags, their negations,
/// propagation keywords; anything else is filesystem data.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    let mut data = Vec::new();
    for opt in options {
        let (set, clear): (MsFlags, MsFlags) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "idmap" | "ridmap" => {
                out.idmap = Some(opt == "ridmap");
                continue;
            }
            "rro" => {
                out.recursive_readonly = true;
                continue;
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                out.propagation
                    .push(propagation_flags(opt).expect("listed above"));
                continue;
            }
            _ => {
                data.push(opt.as_str());
                continue;
            }
        };
        out.flags |= set;
        out.flags &= !clear;
    }
    out.data = data.join(",");
    out
}

/// The mount(2) flags of a propagation keyword.
pub fn propagation_flags(name: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    })
}

/// The image side of the rootfs: read-only layers and the container's own
/// writable dirs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Overlay {
    /// Layer dirs, lowest (base) first.
    pub layers: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// mount(2) data is limited to one page.
const PAGE: usize = 4096;

impl Overlay {
    /// The overlayfs mount data. overlayfs lists lowerdir top-most first.
    pub fn data(&self) -> Result<String, Error> {
        if self.layers.is_empty() {
            return Err(Error::NoLayers);
        }
        let data = format!(
            "{},upperdir={},workdir={}",
            lowerdir(&self.layers),
            self.upper.display(),
            self.work.display()
        );
        if data.len() >= PAGE {
            return Err(Error::OverlayTooLong {
                layers: self.layers.len(),
                len: data.len(),
            });
        }
        Ok(data)
    }
}

impl Overlay {
    /// The overlay of a container in a user namespace: the same layers,
    /// each idmapped and mounted at `<at>/<index>` in the container's
    /// mount namespace ([`Step::IdmapLayers`]).
    pub fn idmapped(&self, at: &Path) -> Overlay {
        Overlay {
            layers: (0..self.layers.len())
                .map(|i| at.join(i.to_string()))
                .collect(),
            ..self.clone()
        }
    }
}

/// An image mounted read-only at a container path: its layers (the same
/// directories every container of that image uses as its rootfs' lower
/// dirs), optionally only `sub_path` inside it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageVolume {
    /// The container path.
    pub target: PathBuf,
    /// Layer dirs, lowest (base) first.
    pub layers: Vec<PathBuf>,
    /// Relative, checked free of `..` by the daemon; empty: the whole image.
    /// Resolved beneath the image's root by the init (openat2
    /// RESOLVE_IN_ROOT): a symlink in the image never leads out of it.
    pub sub_path: PathBuf,
    /// The image, for messages.
    pub image: String,
    /// An empty directory of the container (on the host, outside the
    /// rootfs) where the image is mounted, in the container's mount
    /// namespace only, before its sub path is bound at the target.
    pub staging: PathBuf,
}

impl ImageVolume {
    /// The overlayfs data of a read-only overlay (lower dirs only, top-most
    /// first); `None` for a one-layer image, which is bound read-only
    /// instead (overlayfs wants two lower dirs when there is no upper).
    pub fn data(&self) -> Result<Option<String>, Error> {
        match self.layers.len() {
            0 => Err(Error::NoLayers),
            1 => Ok(None),
            n => {
                let data = lowerdir(&self.layers);
                if data.len() >= PAGE {
                    return Err(Error::VolumeTooLong {
                        target: self.target.clone(),
                        layers: n,
                        len: data.len(),
                    });
                }
                Ok(Some(data))
            }
        }
    }

    /// The volume of a container in a user namespace: the same layers,
    /// each idmapped and mounted at `<at>/<index>` ([`Step::IdmapLayers`]).
    pub fn idmapped(&self, at: &Path) -> ImageVolume {
        ImageVolume {
            layers: (0..self.layers.len())
                .map(|i| at.join(i.to_string()))
                .collect(),
            ..self.clone()
        }
    }
}

/// Where the idmapped layers of the image volume staged at `staging` are
/// mounted: beside its staging dir, in the container's own dir.
pub fn idmapped_volume_layers_dir(staging: &Path) -> PathBuf {
    let mut name = staging.file_name().unwrap_or_default().to_os_string();
    name.push("l");
    staging.with_file_name(name)
}

/// Where the idmapped layers of a container whose rootfs is `root` are
/// mounted: beside the rootfs, under the mount that step 2 makes private.
pub fn idmapped_layers_dir(root: &Path) -> PathBuf {
    root.parent().unwrap_or(Path::new("/")).join("l")
}

/// Whether the Spec puts the container in a user namespace (joined by path).
pub fn in_user_namespace(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::User)
        .and_then(|n| n.path().clone())
}

/// The `lowerdir=` option of `layers` (lowest first): overlayfs lists
/// them top-most first.
fn lowerdir(layers: &[PathBuf]) -> String {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    format!("lowerdir={}", lower.join(":"))
}

/// What a mount target must be created as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TargetKind {
    Dir,
    /// A bind mount of a non-directory source needs a file to mount on.
    File,
}

/// One step of the plan; paths are absolute on the host (before pivot_root)
/// or in the container (after it), as each step says.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// mount(NULL, "/", NULL, flags) — recursive propagation of every mount.
    RootPropagation(#[serde(with = "ms_flags")] MsFlags),
    /// Make the mount that holds this (host) path private if it is shared.
    PrivateParent(PathBuf),
    /// Idmapped copies of the layer dirs (through the container's user
    /// namespace), mounted at `<at>/<index>` for the overlay to stack.
    IdmapLayers { layers: Vec<PathBuf>, at: PathBuf },
    /// Mount the overlay at the (host) rootfs path.
    Overlay { target: PathBuf, data: String },
    /// Bind-mount the rootfs onto itself.
    BindSelf(PathBuf),
    /// One Spec mount at a host path beneath the rootfs (already resolved
    /// safely by the executor: symlinks inside the rootfs must not lead out).
    Mount {
        source: PathBuf,
        target: PathBuf,
        fstype: String,
        options: MountOptions,
        kind: TargetKind,
    },
    /// An image volume: `layers` (overlay data, or the one layer dir to
    /// bind) mounted read-only at `staging`, `sub_path` opened beneath it
    /// and bound read-only at the (host) `target` beneath the rootfs.
    ImageVolume {
        target: PathBuf,
        lower: Lower,
        sub_path: PathBuf,
        image: String,
        staging: PathBuf,
    },
    /// /dev nodes bind-mounted from the host's (works without mknod rights
    /// in user namespaces) and the standard /dev symlinks.
    Devices { dev: PathBuf },
    /// The CRI devices: nodes made (mknod) at host paths beneath the
    /// rootfs, their parents created beneath it like mount targets.
    Nodes(Vec<Node>),
    /// pivot_root(".", ".") in the rootfs, then detach the old root.
    PivotRoot(PathBuf),
    /// Container paths to mask (/dev/null over files, a read-only tmpfs
    /// over directories).
    Mask(Vec<PathBuf>),
    /// Container paths to make read-only (bind onto itself + remount ro).
    ReadOnly(Vec<PathBuf>),
    /// Remount the container's / read-only.
    ReadOnlyRoot,
}

/// The read-only lower side of an image volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Lower {
    /// overlayfs mount data (`lowerdir=...`).
    Overlay(String),
    /// The image's only layer dir.
    Bind(PathBuf),
}

/// A device node to make: type, numbers, permission bits and owner as the
/// host's node has them (checked by the daemon, `container::devices`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub target: PathBuf,
    pub block: bool,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// `dest` joined beneath `rootfs`, lexically: `..` cannot climb out. (The
/// executor also resolves symlinks beneath the root when it opens targets.)
pub fn beneath(rootfs: &Path, dest: &Path) -> Result<PathBuf, Error> {
    use std::path::Component;
    if !dest.is_absolute() {
        return Err(Error::RelativeDestination(dest.into()));
    }
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    for c in dest.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::ParentDir if parts.pop().is_none() => {
                return Err(Error::Escapes(dest.into()));
            }
            _ => {}
        }
    }
    let mut out = rootfs.to_path_buf();
    out.extend(parts);
    Ok(out)
}

/// The plan for `spec` over `overlay`, with the image `volumes`.
/// `source_is_dir` tells whether a bind source is a directory (the
/// executor stats it; tests fake it).
pub fn plan(
    spec: &Spec,
    overlay: &Overlay,
    volumes: &[ImageVolume],
    source_is_dir: &dyn Fn(&Path) -> bool,
) -> Result<Vec<Step>, Error> {
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    let linux = spec.linux().as_ref();
    let propagation = linux
        .and_then(|l| l.rootfs_propagation().clone())
        .unwrap_or_else(|| "rprivate".into());
    let root_flags = propagation_flags(&propagation).ok_or(Error::Propagation(propagation))?;

    // 1-4: propagation, private parent, overlay (over idmapped layers in
    // a user namespace), self bind.
    // Only an rshared root leaves the rootfs' parent shared: a private or
    // slave one (the default rprivate) makes every mount of the new
    // namespace private or a slave already, so the executor's look at
    // mountinfo for it would find nothing to do.
    let mut steps = vec![Step::RootPropagation(root_flags | MsFlags::MS_REC)];
    if root_flags.contains(MsFlags::MS_SHARED) {
        steps.push(Step::PrivateParent(
            root.parent().unwrap_or(Path::new("/")).to_path_buf(),
        ));
    }
    let data = if in_user_namespace(spec).is_some() {
        let at = idmapped_layers_dir(&root);
        let data = overlay.idmapped(&at).data()?;
        steps.push(Step::IdmapLayers {
            layers: overlay.layers.clone(),
            at,
        });
        data
    } else {
        overlay.data()?
    };
    steps.push(Step::Overlay {
        target: root.clone(),
        data,
    });
    steps.push(Step::BindSelf(root.clone()));

    // 5: the Spec's mounts, in order.
    let mut dev = None;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        let target = beneath(&root, m.destination())?;
        let options = parse_options(m.options().as_deref().unwrap_or_default());
        let source = m.source().clone().unwrap_or_default();
        let fstype = m.typ().clone().unwrap_or_else(|| "none".into());
        let kind = if options.is_bind() && !source_is_dir(&source) {
            TargetKind::File
        } else {
            TargetKind::Dir
        };
        if m.destination() == Path::new("/dev") {
            dev = Some(target.clone());
        }
        steps.push(Step::Mount {
            source,
            target,
            fstype,
            options,
            kind,
        });
    }

    // In a user namespace an image volume stacks on idmapped copies of its
    // layers too (as the rootfs does), so its files show their image owners.
    let userns = in_user_namespace(spec).is_some();
    for v in volumes {
        let idmapped;
        let v = if userns {
            let at = idmapped_volume_layers_dir(&v.staging);
            steps.push(Step::IdmapLayers {
                layers: v.layers.clone(),
                at: at.clone(),
            });
            idmapped = v.idmapped(&at);
            &idmapped
        } else {
            v
        };
        let lower = match v.data()? {
            Some(data) => Lower::Overlay(data),
            None => Lower::Bind(v.layers[0].clone()),
        };
        steps.push(Step::ImageVolume {
            target: beneath(&root, &v.target)?,
            lower,
            sub_path: v.sub_path.clone(),
            image: v.image.clone(),
            staging: v.staging.clone(),
        });
    }

    // 6: device nodes where /dev is a fresh tmpfs, then the CRI devices.
    if let Some(dev) = dev {
        steps.push(Step::Devices { dev });
    }
    // A node's owner is the host node's; in a user namespace it is made
    // with the host ids that the namespace maps to those ids, so the
    // container sees the host's owner (root as its root, not as the
    // overflow id). An owner outside the mapping stays the host's.
    let to_host = |maps: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>, id: u32| -> u32 {
        if !userns {
            return id;
        }
        maps.into_iter()
            .flatten()
            .find_map(|m| {
                let off = id.checked_sub(m.container_id())?;
                (off < m.size())
                    .then(|| m.host_id().checked_add(off))
                    .flatten()
            })
            .unwrap_or(id)
    };
    let mut nodes = Vec::new();
    for d in linux
        .and_then(|l| l.devices().as_deref())
        .unwrap_or_default()
    {
        let number = |v: i64| u32::try_from(v).map_err(|_| Error::DeviceNumber(d.path().clone()));
        nodes.push(Node {
            target: beneath(&root, d.path())?,
            block: d.typ() == oci_spec::runtime::LinuxDeviceType::B,
            major: number(d.major())?,
            minor: number(d.minor())?,
            mode: d.file_mode().unwrap_or(0o666) & 0o7777,
            uid: to_host(
                linux.and_then(|l| l.uid_mappings().as_ref()),
                d.uid().unwrap_or(0),
            ),
            gid: to_host(
                linux.and_then(|l| l.gid_mappings().as_ref()),
                d.gid().unwrap_or(0),
            ),
        });
    }
    if !nodes.is_empty() {
        steps.push(Step::Nodes(nodes));
    }

    // 7: pivot, then the paths that only make sense from inside.
    steps.push(Step::PivotRoot(root.clone()));
    if let Some(l) = linux {
        let paths = |v: &Option<Vec<String>>| -> Vec<PathBuf> {
            v.as_deref()
                .unwrap_or_default()
                .iter()
                .map(PathBuf::from)
                .collect()
        };
        let masked = paths(l.masked_paths());
        if !masked.is_empty() {
            steps.push(Step::Mask(masked));
        }
        let readonly = paths(l.readonly_paths());
        if !readonly.is_empty() {
            steps.push(Step::ReadOnly(readonly));
        }
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        steps.push(Step::ReadOnlyRoot);
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::{
        self, BindMount, ContainerConfig, ImageConfig, PidNamespace, PodContext, Propagation,
    };

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_parse_like_runc() {
        let o = parse_options(&strings(&["rbind", "rslave", "ro", "nosuid"]));
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        assert_eq!(o.propagation, [MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert!(o.needs_remount());
        let o = parse_options(&strings(&["nosuid", "mode=755", "size=65536k", "ro", "rw"]));
        assert_eq!(o.flags, MsFlags::MS_NOSUID, "rw clears an earlier ro");
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!parse_options(&strings(&["rbind", "rw"])).needs_remount());
    }

    #[test]
    fn rro_is_an_option_not_data() {
        let o = parse_options(&strings(&["rbind", "rprivate", "ro", "rro"]));
        assert!(o.recursive_readonly && o.needs_remount());
        assert_eq!(o.data, "");
        assert!(!parse_options(&strings(&["rbind", "ro"])).recursive_readonly);
    }

    #[test]
    fn beneath_never_climbs_out() {
        let r = Path::new("/r");
        assert_eq!(
            beneath(r, Path::new("/a/../b")).unwrap(),
            PathBuf::from("/r/b")
        );
        assert!(matches!(
            beneath(r, Path::new("/../etc")),
            Err(Error::Escapes(_))
        ));
        assert!(matches!(
            beneath(r, Path::new("etc")),
            Err(Error::RelativeDestination(_))
        ));
    }

    #[test]
    fn overlays_list_the_top_layer_first_and_fit_a_page() {
        let o = Overlay {
            layers: vec!["/l/1".into(), "/l/2".into()],
            upper: "/c/u".into(),
            work: "/c/w".into(),
        };
        assert_eq!(
            o.data().unwrap(),
            "lowerdir=/l/2:/l/1,upperdir=/c/u,workdir=/c/w"
        );
        let many = Overlay {
            layers: (0..1000)
                .map(|i| PathBuf::from(format!("/var/lib/crius/layers/{i}")))
                .collect(),
            ..o.clone()
        };
        assert!(matches!(many.data(), Err(Error::OverlayTooLong { .. })));
        let none = Overlay {
            layers: vec![],
            ..o
        };
        assert!(matches!(none.data(), Err(Error::NoLayers)));
        // An image volume: lower dirs only; one layer is bound instead.
        let v = ImageVolume {
            target: "/v".into(),
            layers: vec!["/l/1".into(), "/l/2".into()],
            sub_path: PathBuf::new(),
            image: "i".into(),
            staging: "/c/v".into(),
        };
        assert_eq!(v.data().unwrap().unwrap(), "lowerdir=/l/2:/l/1");
        let one = ImageVolume {
            layers: vec!["/l/1".into()],
            ..v.clone()
        };
        assert_eq!(one.data().unwrap(), None);
        let many = ImageVolume {
            layers: many.layers,
            ..v.clone()
        };
        assert!(matches!(many.data(), Err(Error::VolumeTooLong { .. })));
        let none = ImageVolume {
            layers: vec![],
            ..v
        };
        assert!(matches!(none.data(), Err(Error::NoLayers)));
    }

    #[test]
    fn plan_orders_the_steps() {
        let pod = PodContext {
            net_ns: None,
            ipc_ns: None,
            uts_ns: None,
            pid: PidNamespace::Container,
            shm: "/run/crius/pods/p/shm".into(),
            hostname_file: Some("/run/crius/pods/p/hostname".into()),
            resolv_conf: None,
            cgroup_path: "/crius/c".into(),
            cgroup_v2: false,
            cgroup_writable: false,
            user_ns: None,
        };
        let config = ContainerConfig {
            command: strings(&["/bin/sh"]),
            mounts: vec![BindMount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                propagation: Propagation::Bidirectional,
                ..Default::default()
            }],
            ..Default::default()
        };
        let built = spec::build(
            &config,
            &ImageConfig::default(),
            &pod,
            Path::new("/run/c/rootfs"),
        )
        .unwrap();
        let overlay = Overlay {
            layers: vec!["/l/1".into()],
            upper: "/c/u".into(),
            work: "/c/w".into(),
        };
        let is_dir = |p: &Path| p != Path::new("/run/crius/pods/p/hostname");
        let mut spec = built.spec;
        let node = crate::container::devices::HostDevice {
            container_path: "/dev/snd/c0".into(),
            kind: crate::cgroups::DevKind::Block,
            major: 7,
            minor: 3,
            mode: 0o4660,
            uid: 5,
            gid: 6,
            access: crate::cgroups::Access::READ,
        };
        let rules = crate::cgroups::DeviceRules::container(false, &[node.rule()]);
        spec::add_devices(&mut spec, &[node], &rules).unwrap();
        let volumes = [ImageVolume {
            target: "/vol".into(),
            layers: vec!["/l/1".into(), "/l/2".into()],
            sub_path: "etc".into(),
            image: "sha256:v".into(),
            staging: "/c/v".into(),
        }];
        let steps = plan(&spec, &overlay, &volumes, &is_dir).unwrap();
        let nodes = steps
            .iter()
            .position(|s| matches!(s, Step::Nodes(_)))
            .expect("a node step");
        assert_eq!(
            steps[nodes],
            Step::Nodes(vec![Node {
                target: "/run/c/rootfs/dev/snd/c0".into(),
                block: true,
                major: 7,
                minor: 3,
                mode: 0o4660,
                uid: 5,
                gid: 6,
            }])
        );
        assert_eq!(
            steps[0],
            Step::RootPropagation(MsFlags::MS_SHARED | MsFlags::MS_REC)
        );
        assert_eq!(steps[1], Step::PrivateParent("/run/c".into()));
        assert!(
            matches!(&steps[2], Step::Overlay { target, .. } if target == Path::new("/run/c/rootfs"))
        );
        assert_eq!(steps[3], Step::BindSelf("/run/c/rootfs".into()));
        let mount_at = |dest: &str| {
            steps
                .iter()
                .position(|s| matches!(s, Step::Mount { target, .. } if target == Path::new(dest)))
                .unwrap_or_else(|| panic!("{dest} mounted"))
        };
        assert!(mount_at("/run/c/rootfs/dev") < mount_at("/run/c/rootfs/dev/pts"));
        let hostname = &steps[mount_at("/run/c/rootfs/etc/hostname")];
        assert!(matches!(
            hostname,
            Step::Mount {
                kind: TargetKind::File,
                ..
            }
        ));
        let data = &steps[mount_at("/run/c/rootfs/data")];
        assert!(
            matches!(data, Step::Mount { options, kind: TargetKind::Dir, .. } if options.needs_remount())
        );
        let devices = steps
            .iter()
            .position(|s| matches!(s, Step::Devices { .. }))
            .unwrap();
        let pivot = steps
            .iter()
            .position(|s| matches!(s, Step::PivotRoot(_)))
            .unwrap();
        assert!(mount_at("/run/c/rootfs/data") < devices && devices < pivot);
        let volume = steps
            .iter()
            .position(|s| matches!(s, Step::ImageVolume { .. }))
            .unwrap();
        assert_eq!(
            steps[volume],
            Step::ImageVolume {
                target: "/run/c/rootfs/vol".into(),
                lower: Lower::Overlay("lowerdir=/l/2:/l/1".into()),
                sub_path: "etc".into(),
                image: "sha256:v".into(),
                staging: "/c/v".into(),
            },
            "the volume shares the image's layer dirs, top-most first"
        );
        assert!(mount_at("/run/c/rootfs/data") < volume && volume < devices);
        assert!(devices < nodes && nodes < pivot);
        assert!(matches!(steps[pivot + 1], Step::Mask(_)));
        assert!(matches!(steps[pivot + 2], Step::ReadOnly(_)));
        assert!(!steps.contains(&Step::ReadOnlyRoot));

        // An rprivate or rslave root leaves no mount shared: no look for
        // a shared parent.
        for (name, flags) in [
            ("rprivate", MsFlags::MS_PRIVATE),
            ("rslave", MsFlags::MS_SLAVE),
        ] {
            let mut other = spec.clone();
            if let Some(linux) = other.linux_mut() {
                linux.set_rootfs_propagation(Some(name.into()));
            }
            let steps = plan(&other, &overlay, &volumes, &is_dir).unwrap();
            assert_eq!(steps[0], Step::RootPropagation(flags | MsFlags::MS_REC));
            assert!(
                matches!(&steps[1], Step::Overlay { target, .. } if target == Path::new("/run/c/rootfs")),
                "{name}: {:?}",
                steps[1]
            );
        }
    }

    #[test]
    fn a_user_namespace_stacks_the_overlay_on_idmapped_layers() {
        let mut pod = PodContext {
            net_ns: None,
            ipc_ns: None,
            uts_ns: None,
            pid: PidNamespace::Container,
            shm: "/s".into(),
            hostname_file: None,
            resolv_conf: None,
            cgroup_path: "/c".into(),
            cgroup_v2: false,
            cgroup_writable: false,
            user_ns: None,
        };
        let map = crate::sys::ns::IdMap {
            container_id: 0,
            host_id: 100000,
            length: 65536,
        };
        pod.user_ns = Some((
            "/run/ns/p/user".into(),
            crate::sys::ns::UserMaps { uid: map, gid: map },
        ));
        let config = ContainerConfig {
            command: strings(&["/bin/sh"]),
            mounts: vec![BindMount {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let built =
            spec::build(&config, &ImageConfig::default(), &pod, Path::new("/c/1/r")).unwrap();
        assert_eq!(
            in_user_namespace(&built.spec),
            Some(PathBuf::from("/run/ns/p/user"))
        );
        let overlay = Overlay {
            layers: vec!["/l/1".into(), "/l/2".into()],
            upper: "/c/1/u".into(),
            work: "/c/1/w".into(),
        };
        let steps = plan(&built.spec, &overlay, &[], &|_| true).unwrap();
        assert_eq!(
            steps[1],
            Step::IdmapLayers {
                layers: overlay.layers.clone(),
                at: "/c/1/l".into()
            }
        );
        assert_eq!(
            steps[2],
            Step::Overlay {
                target: "/c/1/r".into(),
                data: "lowerdir=/c/1/l/1:/c/1/l/0,upperdir=/c/1/u,workdir=/c/1/w".into()
            }
        );
        let data = steps.iter().find_map(|s| match s {
            Step::Mount {
                target, options, ..
            } if target == Path::new("/c/1/r/data") => Some(options.clone()),
            _ => None,
        });
        assert_eq!(data.unwrap().idmap, Some(true), "a CRI volume is idmapped");
        let dev = built
            .spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/dev/pts"))
            .unwrap();
        assert!(
            dev.options()
                .as_ref()
                .unwrap()
                .contains(&"gid=100005".to_string()),
            "devpts' tty group is the namespace's"
        );

        // Image volumes stack on idmapped layers of their own; CRI device
        // nodes get the host ids their owners map to.
        let mut spec = built.spec.clone();
        let mut linux = spec.linux().clone().unwrap();
        let node = |path: &str, uid: u32| {
            oci_spec::runtime::LinuxDeviceBuilder::default()
                .path(path)
                .typ(oci_spec::runtime::LinuxDeviceType::C)
                .major(1)
                .minor(3)
                .uid(uid)
                .gid(5u32)
                .build()
                .unwrap()
        };
        linux.set_devices(Some(vec![node("/dev/xnull", 0), node("/dev/far", 70000)]));
        spec.set_linux(Some(linux));
        let volume = |layers: &[&str], n: usize| ImageVolume {
            target: format!("/img{n}").into(),
            layers: layers.iter().map(PathBuf::from).collect(),
            sub_path: PathBuf::new(),
            image: "sha256:i".into(),
            staging: format!("/c/1/v{n}").into(),
        };
        let volumes = [volume(&["/l/1", "/l/2"], 0), volume(&["/l/3"], 1)];
        let steps = plan(&spec, &overlay, &volumes, &|_| true).unwrap();
        let at = steps
            .iter()
            .position(|s| matches!(s, Step::ImageVolume { .. }))
            .unwrap();
        assert_eq!(
            steps[at - 1],
            Step::IdmapLayers {
                layers: vec!["/l/1".into(), "/l/2".into()],
                at: "/c/1/v0l".into()
            }
        );
        assert!(
            matches!(&steps[at], Step::ImageVolume { lower: Lower::Overlay(d), .. }
            if d == "lowerdir=/c/1/v0l/1:/c/1/v0l/0")
        );
        assert_eq!(
            steps[at + 1],
            Step::IdmapLayers {
                layers: vec!["/l/3".into()],
                at: "/c/1/v1l".into()
            }
        );
        assert!(
            matches!(&steps[at + 2], Step::ImageVolume { lower: Lower::Bind(l), .. }
            if l == Path::new("/c/1/v1l/0"))
        );
        let nodes = steps
            .iter()
            .find_map(|s| match s {
                Step::Nodes(n) => Some(n.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!((nodes[0].uid, nodes[0].gid), (100000, 100005));
        assert_eq!(
            (nodes[1].uid, nodes[1].gid),
            (70000, 100005),
            "an owner outside the mapping stays the host's"
        );
    }
}
