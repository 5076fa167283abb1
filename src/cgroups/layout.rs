//! Which cgroup hierarchy holds which controller, discovered from
//! mountinfo (proc(5) `/proc/self/mountinfo`) and, for cgroup v2, the
//! `cgroup.controllers` file of the unified mount (cgroups(7),
//! Documentation/admin-guide/cgroup-v2.rst).
//!
//! Nothing is assumed: a host can be pure v1, pure v2 (unified), or hybrid
//! (v1 controllers plus a cgroup2 mount holding whatever v1 did not claim;
//! this development host has hugetlb there). Both inputs are parameters so
//! tests run against fixture trees in a tempdir.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::Error;

/// The v1 controllers crius knows by name; other mount options are not
/// controllers (`rw`, `relatime`, `clone_children`, `name=systemd`, ...).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "blkio",
    "perf_event",
    "hugetlb",
    "pids",
    "rdma",
    "misc",
];

/// One mounted hierarchy crius manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (the cgroup path "/" of what this process sees).
    pub mount: PathBuf,
    /// Controllers bound to it; for v2, those in the root's
    /// `cgroup.controllers`.
    pub controllers: BTreeSet<String>,
    /// A cgroup2 (unified) hierarchy.
    pub unified: bool,
}

impl Hierarchy {
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.contains(controller)
    }

    /// The directory of cgroup `path` ("/a/b") in this hierarchy.
    pub fn dir(&self, path: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            self.mount.clone()
        } else {
            self.mount.join(rel)
        }
    }
}

/// The layout of the cgroup mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only v1 hierarchies.
    Legacy,
    /// v1 hierarchies plus a cgroup2 mount for the rest.
    Hybrid,
    /// cgroup2 alone at the cgroup root.
    Unified,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// v1 hierarchies with at least one controller, in mountinfo order,
    /// then the unified hierarchy (if any) last.
    pub hierarchies: Vec<Hierarchy>,
    pub mode: Mode,
    /// A cgroup mount has the `favordynmods` option: the kernel keeps
    /// migrations in their writer mode (see [`super::warm`]).
    pub favor_dynmods: bool,
}

impl Layout {
    /// Reads `mountinfo` and keeps the cgroup mounts under `cgroup_root`
    /// (normally /sys/fs/cgroup); a cgroup2 mount's controllers come from
    /// its `cgroup.controllers`.
    pub fn detect(mountinfo: &Path, cgroup_root: &Path) -> Result<Layout, Error> {
        let text = std::fs::read_to_string(mountinfo).map_err(|source| Error::Io {
            op: "read mountinfo",
            path: mountinfo.into(),
            source,
        })?;
        Layout::parse(&text, cgroup_root, |mount| {
            let file = mount.join("cgroup.controllers");
            std::fs::read_to_string(&file).map_err(|source| Error::Io {
                op: "read",
                path: file,
                source,
            })
        })
    }

    /// The pure part of [`Layout::detect`]: `controllers_of` reads a cgroup2
    /// mount's `cgroup.controllers`.
    pub fn parse(
        mountinfo: &str,
        cgroup_root: &Path,
        controllers_of: impl Fn(&Path) -> Result<String, Error>,
    ) -> Result<Layout, Error> {
        let mut v1: Vec<Hierarchy> = Vec::new();
        let mut unified: Option<Hierarchy> = None;
        let mut seen = BTreeSet::new();
        let mut favor_dynmods = false;
        for line in mountinfo.lines() {
            let Some(m) = MountLine::parse(line) else {
                continue;
            };
            if !m.mount.starts_with(cgroup_root) {
                continue;
            }
            if matches!(m.fstype, "cgroup" | "cgroup2") {
                favor_dynmods |= m.super_opts.split(',').any(|o| o == "favordynmods");
            }
            match m.fstype {
                "cgroup" => {
                    let controllers: BTreeSet<String> = m
                        .super_opts
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o))
                        .map(String::from)
                        .collect();
                    // Named hierarchies (name=systemd) carry no controller;
                    // a second mount of the same controllers is a bind.
                    if controllers.is_empty() || controllers.iter().any(|c| seen.contains(c)) {
                        continue;
                    }
                    seen.extend(controllers.iter().cloned());
                    v1.push(Hierarchy {
                        mount: m.mount,
                        controllers,
                        unified: false,
                    });
                }
                "cgroup2" if unified.is_none() => {
                    let controllers = controllers_of(&m.mount)?
                        .split_whitespace()
                        .map(String::from)
                        .collect();
                    unified = Some(Hierarchy {
                        mount: m.mount,
                        controllers,
                        unified: true,
                    });
                }
                _ => {}
            }
        }
        let mode = match (&unified, v1.is_empty()) {
            (None, true) => {
                return Err(Error::NoCgroups {
                    root: cgroup_root.into(),
                });
            }
            (None, false) => Mode::Legacy,
            (Some(_), false) => Mode::Hybrid,
            (Some(_), true) => Mode::Unified,
        };
        // A controller bound to v1 is never usable on the unified mount,
        // even if it is listed there.
        if let Some(u) = unified.as_mut() {
            u.controllers.retain(|c| !seen.contains(c));
        }
        let mut hierarchies = v1;
        hierarchies.extend(unified);
        Ok(Layout {
            hierarchies,
            mode,
            favor_dynmods,
        })
    }

    /// The hierarchy that holds `controller`, if any.
    pub fn controller(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.has(controller))
    }

    pub fn unified(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.unified)
    }

    /// The hierarchy whose view of a cgroup is used to decide whether it
    /// already exists: memory on v1 (kubelet always creates it there),
    /// else the unified one.
    pub fn reference(&self) -> &Hierarchy {
        match self.mode {
            Mode::Unified => self.unified().expect("unified layout has the v2 mount"),
            _ => self
                .controller("memory")
                .unwrap_or_else(|| &self.hierarchies[0]),
        }
    }
}

/// The fields of one mountinfo line crius needs.
struct MountLine<'a> {
    mount: PathBuf,
    fstype: &'a str,
    super_opts: &'a str,
}

impl<'a> MountLine<'a> {
    /// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`
    fn parse(line: &'a str) -> Option<MountLine<'a>> {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let _source = right.next()?;
        let super_opts = right.next().unwrap_or("");
        Some(MountLine {
            mount: PathBuf::from(unescape(mount)),
            fstype,
            super_opts,
        })
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// This development host: v1 controllers, cpu and cpuacct apart, a
    /// named systemd hierarchy, hugetlb on the cgroup2 mount.
    pub fn hybrid_mountinfo(root: &Path) -> String {
        let r = root.display();
        let mut s = format!("31 23 0:28 / {r} rw,relatime - tmpfs tmpfs rw,mode=755\n");
        for (i, c) in [
            "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
        ]
        .iter()
        .enumerate()
        {
            s += &format!(
                "{} 31 0:{} / {r}/{c} rw,relatime - cgroup cgroup rw,{c}\n",
                32 + i,
                29 + i
            );
        }
        s += &format!("40 31 0:37 / {r}/systemd rw,relatime - cgroup cgroup rw,name=systemd\n");
        s += &format!("41 31 0:38 / {r}/unified rw,relatime - cgroup2 cgroup2 rw\n");
        s
    }

    pub fn unified_mountinfo(root: &Path) -> String {
        format!(
            "25 1 0:22 / / rw - ext4 /dev/sda rw\n\
             30 25 0:26 / {} rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
            root.display()
        )
    }

    pub fn legacy_mountinfo(root: &Path) -> String {
        let r = root.display();
        format!(
            "31 23 0:28 / {r} rw - tmpfs tmpfs rw\n\
             32 31 0:29 / {r}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
             33 31 0:30 / {r}/memory rw - cgroup cgroup rw,memory\n\
             34 31 0:31 / {r}/pids rw - cgroup cgroup rw,pids\n\
             35 31 0:32 / {r}/freezer rw - cgroup cgroup rw,freezer\n\
             36 31 0:33 / {r}/hugetlb rw - cgroup cgroup rw,hugetlb\n\
             37 31 0:34 / {r}/cpuset rw - cgroup cgroup rw,cpuset\n\
             39 31 0:35 / {r}/devices rw - cgroup cgroup rw,devices\n\
             38 99 0:29 / /var/lib/x/rootfs/sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n"
        )
    }

    fn none(_: &Path) -> Result<String, Error> {
        Ok("cpuset cpu io memory hugetlb pids rdma misc".into())
    }

    #[test]
    fn hybrid_host_layout() {
        let root = Path::new("/sys/fs/cgroup");
        let l = Layout::parse(&hybrid_mountinfo(root), root, |_| Ok("hugetlb\n".into())).unwrap();
        assert_eq!(l.mode, Mode::Hybrid);
        assert_eq!(l.hierarchies.len(), 9, "{l:#?}");
        assert_eq!(
            l.controller("cpu").unwrap().mount,
            Path::new("/sys/fs/cgroup/cpu")
        );
        assert_eq!(
            l.controller("cpuacct").unwrap().mount,
            Path::new("/sys/fs/cgroup/cpuacct")
        );
        let h = l.controller("hugetlb").unwrap();
        assert!(h.unified);
        assert_eq!(h.mount, Path::new("/sys/fs/cgroup/unified"));
        assert!(l.controller("io").is_none());
        assert_eq!(l.reference().mount, Path::new("/sys/fs/cgroup/memory"));
    }

    #[test]
    fn unified_layout_reads_controllers() {
        let root = Path::new("/sys/fs/cgroup");
        let l = Layout::parse(&unified_mountinfo(root), root, none).unwrap();
        assert_eq!(l.mode, Mode::Unified);
        assert_eq!(l.hierarchies.len(), 1);
        assert!(l.controller("memory").unwrap().unified);
        assert!(l.controller("io").is_some());
        assert!(l.controller("freezer").is_none());
        assert_eq!(l.reference().mount, root);
    }

    #[test]
    fn legacy_layout_with_comounted_controllers_and_foreign_mounts() {
        let root = Path::new("/sys/fs/cgroup");
        let l = Layout::parse(&legacy_mountinfo(root), root, none).unwrap();
        assert_eq!(l.mode, Mode::Legacy);
        assert_eq!(l.hierarchies.len(), 7);
        assert_eq!(
            l.controller("cpuacct").unwrap().mount,
            Path::new("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert!(l.unified().is_none());
    }

    #[test]
    fn controllers_claimed_by_v1_are_not_unified() {
        let root = Path::new("/sys/fs/cgroup");
        let l = Layout::parse(&hybrid_mountinfo(root), root, none).unwrap();
        let u = l.unified().unwrap();
        assert!(!u.has("memory") && !u.has("cpu"), "{u:?}");
        assert!(u.has("hugetlb") && u.has("io"));
    }

    #[test]
    fn no_cgroup_mount_is_an_error_naming_the_root() {
        let e = Layout::parse(
            "25 1 0:22 / / rw - ext4 /dev/sda rw\n",
            Path::new("/cg"),
            none,
        )
        .unwrap_err();
        assert!(e.to_string().contains("/cg"), "{e}");
    }

    #[test]
    fn escaped_mount_points() {
        assert_eq!(unescape(r"/a\040b\134c"), "/a b\\c");
        assert_eq!(unescape(r"/plain\"), "/plain\\");
    }

    #[test]
    fn detect_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cg");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        let mi = dir.path().join("mountinfo");
        std::fs::write(&mi, unified_mountinfo(&root)).unwrap();
        let l = Layout::detect(&mi, &root).unwrap();
        assert!(l.controller("pids").is_some());
        let e = Layout::detect(&dir.path().join("missing"), &root).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
