//! CRI devices (`ContainerConfig.devices`) checked against the host: each
//! `host_path` must resolve to an existing character or block device node
//! (the resolved path is opened O_PATH|O_NOFOLLOW and fstat'ed, so the node
//! checked is the one whose numbers are used). Nothing of the host path
//! reaches the container: the init makes a node of the same type and
//! numbers at `container_path` (mknod), and the device cgroup allows
//! exactly those numbers with the requested permissions
//! ([`crate::cgroups::devices`]). Anything else (a regular file, a missing
//! path, `/dev/../etc/passwd`) is InvalidArgument, and nothing is created
//! on the host.

use std::path::{Component, Path};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};
use rustix::fs::{FileType, Mode, OFlags};

use super::Error;
use super::spec::Device;
use crate::cgroups::{Access, DevKind, Rule};

/// A CRI device as checked on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    pub container_path: String,
    pub kind: DevKind,
    pub major: u32,
    pub minor: u32,
    /// Permission bits of the host node (the container's node gets them).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub access: Access,
}

fn invalid(d: &Device, field: &str, reason: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "device {field} {:?}: {reason}",
        if field == "container_path" {
            d.container_path.clone()
        } else {
            d.host_path.display().to_string()
        }
    ))
}

/// Checks one CRI device against the host.
pub fn resolve(d: &Device) -> Result<HostDevice, Error> {
    let cpath = Path::new(&d.container_path);
    if !cpath.is_absolute()
        || d.container_path.contains('\0')
        || cpath.components().any(|c| c == Component::ParentDir)
        || cpath.components().count() < 2
    {
        return Err(invalid(
            d,
            "container_path",
            "must be an absolute path of a file, without '..'",
        ));
    }
    let access = Access::parse(&d.permissions).map_err(|e| invalid(d, "permissions", e))?;
    let host = &d.host_path;
    if !host.is_absolute() || host.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(invalid(d, "host_path", "must be an absolute path"));
    }
    // Symlinks such as /dev/disk/by-id/... are fine: resolve them, then
    // look at what the path resolved to without following anything more.
    let real = std::fs::canonicalize(host).map_err(|e| invalid(d, "host_path", e))?;
    let fd = rustix::fs::open(
        &real,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| invalid(d, "host_path", format!("open {}: {e}", real.display())))?;
    let st = rustix::fs::fstat(&fd)
        .map_err(|e| invalid(d, "host_path", format!("stat {}: {e}", real.display())))?;
    let kind = match FileType::from_raw_mode(st.st_mode) {
        FileType::CharacterDevice => DevKind::Char,
        FileType::BlockDevice => DevKind::Block,
        other => {
            return Err(invalid(
                d,
                "host_path",
                format!(
                    "{} is a {other:?}, not a character or block device",
                    real.display()
                ),
            ));
        }
    };
    let rdev = st.st_rdev;
    Ok(HostDevice {
        container_path: d.container_path.clone(),
        kind,
        major: rustix::fs::major(rdev),
        minor: rustix::fs::minor(rdev),
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        access,
    })
}

/// Checks every CRI device; the first bad one fails the request.
pub fn resolve_all(devices: &[Device]) -> Result<Vec<HostDevice>, Error> {
    devices.iter().map(resolve).collect()
}

impl HostDevice {
    /// The device cgroup rule: these numbers, the requested access.
    pub fn rule(&self) -> Rule {
        Rule::new(self.kind, Some(self.major), Some(self.minor), self.access)
    }

    /// The node the init makes inside the container.
    pub fn linux_device(&self) -> Result<LinuxDevice, oci_spec::OciSpecError> {
        LinuxDeviceBuilder::default()
            .path(&self.container_path)
            .typ(match self.kind {
                DevKind::Block => LinuxDeviceType::B,
                _ => LinuxDeviceType::C,
            })
            .major(self.major as i64)
            .minor(self.minor as i64)
            .file_mode(self.mode)
            .uid(self.uid)
            .gid(self.gid)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Classify, Kind};
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    fn dev(host: &str, path: &str, perms: &str) -> Device {
        Device {
            container_path: path.into(),
            host_path: PathBuf::from(host),
            permissions: perms.into(),
        }
    }

    #[test]
    fn a_character_device_keeps_its_numbers() {
        let d = resolve(&dev("/dev/null", "/dev/xnull", "rw")).unwrap();
        assert_eq!((d.kind, d.major, d.minor), (DevKind::Char, 1, 3));
        assert_eq!(d.rule().to_string(), "c 1:3 rw");
        let meta = std::fs::metadata("/dev/null").unwrap();
        assert_eq!(d.mode, meta.mode() & 0o7777);
    }

    /// The requests of the hostile campaign: a regular file, a missing
    /// node, a path through `..` to a file, a symlink to a file, bad
    /// container paths and permissions.
    #[test]
    fn anything_but_a_device_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let missing = dir.path().join("sda");
        for d in [
            dev(victim.to_str().unwrap(), "/dev/xdb", "rwm"),
            dev(missing.to_str().unwrap(), "/dev/sda", "rwm"),
            dev("/dev/../etc/passwd", "/dev/p", "r"),
            dev(link.to_str().unwrap(), "/dev/l", "r"),
            dev(dir.path().to_str().unwrap(), "/dev/d", "r"),
            dev("dev/null", "/dev/n", "r"),
            dev("/dev/null", "dev/n", "r"),
            dev("/dev/null", "/dev/../n", "r"),
            dev("/dev/null", "/", "r"),
            dev("/dev/null", "/dev/n", "rx"),
        ] {
            let e = resolve(&d).unwrap_err();
            assert_eq!(e.kind(), Kind::InvalidArgument, "{d:?}: {e}");
            assert!(e.to_string().starts_with("device "), "{e}");
        }
        assert!(!missing.exists(), "nothing is created on the host");
        assert_eq!(std::fs::read(&victim).unwrap(), b"x");
    }
}
