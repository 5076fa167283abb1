//! Where a pod's and a container's cgroups live, in the two forms of
//! kubelet's `cgroup_parent`:
//!
//! - cgroupfs driver: a path, `/kubepods/burstable/pod<uid>`; containers
//!   are leaves `crius-<id>` under it.
//! - systemd driver: a slice name, `kubepods-burstable-pod<uid>.slice`,
//!   whose dashes spell its ancestry (systemd.slice(5)): the cgroup is
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`;
//!   containers are transient scopes `crius-<id>.scope` in that slice.
//!
//! Kubelet's `cgroup_parent` *is* the pod cgroup (it creates it before
//! RunPodSandbox); an empty parent (crictl, critest) gets a pod cgroup of
//! crius's own under the configured default parent.

use serde::{Deserialize, Serialize};

use super::Error;
use crate::config::CgroupDriver;

/// A cgroup crius manages, as stored in pod and container records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CgroupPath {
    /// Its path in every hierarchy, "/"-rooted: `/crius/pod-<id>/crius-<cid>`.
    pub path: String,
    /// systemd driver: the unit owning the cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
}

/// A systemd unit and the slice it lives in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Unit {
    /// `kubepods-burstable-pod<uid>.slice` or `crius-<id>.scope`.
    pub name: String,
    /// The slice containing it (`-.slice` for the root slice).
    pub slice: String,
}

impl Unit {
    pub fn is_scope(&self) -> bool {
        self.name.ends_with(".scope")
    }
}

impl std::fmt::Display for CgroupPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.path)
    }
}

/// The pod cgroup for kubelet's `parent` (empty: `default_parent`).
pub fn pod_path(
    driver: CgroupDriver,
    default_parent: &str,
    parent: &str,
    pod_id: &str,
) -> Result<CgroupPath, Error> {
    check_id(pod_id)?;
    match driver {
        CgroupDriver::Cgroupfs => {
            if parent.is_empty() {
                let base = cgroupfs_path(default_parent)?;
                let path = if base == "/" {
                    format!("/pod-{pod_id}")
                } else {
                    format!("{base}/pod-{pod_id}")
                };
                return Ok(CgroupPath { path, unit: None });
            }
            if parent.ends_with(".slice") && !parent.contains('/') {
                return Err(Error::InvalidPath {
                    path: parent.into(),
                    reason: "a systemd slice name, but the cgroup driver is cgroupfs".into(),
                });
            }
            Ok(CgroupPath {
                path: cgroupfs_path(parent)?,
                unit: None,
            })
        }
        CgroupDriver::Systemd => {
            let slice = if parent.is_empty() {
                let base = default_slice(default_parent)?;
                match base.strip_suffix(".slice") {
                    Some("-") => format!("pod{pod_id}.slice"),
                    Some(prefix) => format!("{prefix}-pod{pod_id}.slice"),
                    None => unreachable!("default_slice returns a slice"),
                }
            } else {
                check_slice(parent)?;
                parent.to_string()
            };
            slice_path(&slice)
        }
    }
}

/// The leaf `name` under the pod cgroup: a directory `crius-<name>`, or
/// with systemd the scope `crius-<name>.scope`.
pub fn leaf_path(pod: &CgroupPath, name: &str) -> Result<CgroupPath, Error> {
    check_id(name)?;
    match &pod.unit {
        None => Ok(CgroupPath {
            path: join(&pod.path, &format!("crius-{name}")),
            unit: None,
        }),
        Some(unit) if !unit.is_scope() => {
            let scope = format!("crius-{name}.scope");
            Ok(CgroupPath {
                path: join(&pod.path, &scope),
                unit: Some(Unit {
                    name: scope,
                    slice: unit.name.clone(),
                }),
            })
        }
        Some(unit) => Err(Error::InvalidPath {
            path: pod.path.clone(),
            reason: format!("the scope {} cannot hold other cgroups", unit.name),
        }),
    }
}

/// The configured default parent as a cgroup: `/crius`, or its slice.
pub fn default_parent_path(
    driver: CgroupDriver,
    default_parent: &str,
) -> Result<CgroupPath, Error> {
    match driver {
        CgroupDriver::Cgroupfs => Ok(CgroupPath {
            path: cgroupfs_path(default_parent)?,
            unit: None,
        }),
        CgroupDriver::Systemd => slice_path(&default_slice(default_parent)?),
    }
}

/// crius's monitors cgroup: a sibling of the default parent, outside the
/// daemon's cgroup and every pod's (a monitor must outlive both), and never
/// below the default parent, whose children the reconcile sweeps. With
/// cgroupfs `<default parent>-monitors` (`/crius-monitors`); with systemd
/// the scope `<default slice>-monitors.scope` in the default slice's
/// parent (`crius-monitors.scope` beside `crius.slice`, in `-.slice`).
pub fn monitors_path(driver: CgroupDriver, default_parent: &str) -> Result<CgroupPath, Error> {
    match driver {
        CgroupDriver::Cgroupfs => {
            let base = cgroupfs_path(default_parent)?;
            let path = if base == "/" {
                "/crius-monitors".to_string()
            } else {
                format!("{base}-monitors")
            };
            Ok(CgroupPath { path, unit: None })
        }
        CgroupDriver::Systemd => {
            let slice = default_slice(default_parent)?;
            let name = match slice.strip_suffix(".slice") {
                Some("-") | None => "crius-monitors.scope".to_string(),
                Some(prefix) => format!("{prefix}-monitors.scope"),
            };
            let parent = parent_slice(&slice);
            let base = if slice == "-.slice" || parent == "-.slice" {
                "/".to_string()
            } else {
                slice_path(&parent)?.path
            };
            Ok(CgroupPath {
                path: join(&base, &name),
                unit: Some(Unit {
                    name,
                    slice: if slice == "-.slice" { slice } else { parent },
                }),
            })
        }
    }
}

/// The cgroup `name` found below `parent`, if crius names cgroups so: pods
/// (`pod-<id>`, `<slice prefix>-pod<id>.slice`) and leaves (`crius-<id>`,
/// `crius-<id>.scope`).
pub fn child_path(parent: &CgroupPath, name: &str) -> Option<CgroupPath> {
    match &parent.unit {
        None => (name.starts_with("pod-") || name.starts_with("crius-")).then(|| CgroupPath {
            path: join(&parent.path, name),
            unit: None,
        }),
        Some(unit) if name.ends_with(".slice") => {
            let prefix = match unit.name.strip_suffix(".slice")? {
                "-" => String::new(),
                p => format!("{p}-"),
            };
            name.strip_prefix(&prefix)?
                .starts_with("pod")
                .then_some(())?;
            slice_path(name).ok()
        }
        Some(unit) if name.starts_with("crius-") && name.ends_with(".scope") => Some(CgroupPath {
            path: join(&parent.path, name),
            unit: Some(Unit {
                name: name.into(),
                slice: unit.name.clone(),
            }),
        }),
        Some(_) => None,
    }
}

/// The cgroup of a systemd slice name.
pub fn slice_path(slice: &str) -> Result<CgroupPath, Error> {
    check_slice(slice)?;
    let expanded =
        cgroups_rs::systemd::utils::expand_slice(slice).map_err(|_| Error::InvalidPath {
            path: slice.into(),
            reason: "not a valid systemd slice name".into(),
        })?;
    Ok(CgroupPath {
        path: format!("/{expanded}"),
        unit: Some(Unit {
            name: slice.into(),
            slice: parent_slice(slice),
        }),
    })
}

/// `a-b-c.slice` -> `a-b.slice`; `a.slice` -> `-.slice`.
pub fn parent_slice(slice: &str) -> String {
    let name = slice.trim_end_matches(".slice");
    match name.rfind('-') {
        Some(i) if i > 0 => format!("{}.slice", &name[..i]),
        _ => "-.slice".into(),
    }
}

/// The systemd form of the configured default parent: a slice name is
/// used as is; a cgroupfs-style path (the built-in default `/crius`) maps
/// to the slice of the same name (`/crius` -> `crius.slice`,
/// `/a/b` -> `a-b.slice`), so one default serves both drivers.
fn default_slice(default_parent: &str) -> Result<String, Error> {
    if default_parent.ends_with(".slice") && !default_parent.contains('/') {
        check_slice(default_parent)?;
        return Ok(default_parent.into());
    }
    let path = cgroupfs_path(default_parent)?;
    if path == "/" {
        return Ok("-.slice".into());
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.iter().any(|p| p.contains('-')) {
        return Err(Error::InvalidPath {
            path: default_parent.into(),
            reason: "with the systemd driver the default parent must be a slice name".into(),
        });
    }
    let slice = format!("{}.slice", parts.join("-"));
    check_slice(&slice)?;
    Ok(slice)
}

/// A normalized absolute cgroupfs path with no `.`/`..` components.
fn cgroupfs_path(p: &str) -> Result<String, Error> {
    if !p.starts_with('/') {
        return Err(Error::InvalidPath {
            path: p.into(),
            reason: "a cgroupfs cgroup parent must be an absolute path".into(),
        });
    }
    let mut out = String::new();
    for part in p.split('/').filter(|s| !s.is_empty()) {
        if part == "." || part == ".." || part.contains('\0') {
            return Err(Error::InvalidPath {
                path: p.into(),
                reason: "path components . and .. are not allowed".into(),
            });
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn check_slice(slice: &str) -> Result<(), Error> {
    let valid = slice.len() > ".slice".len()
        && slice.ends_with(".slice")
        && slice
            .trim_end_matches(".slice")
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_:.\\".contains(c));
    if valid && cgroups_rs::systemd::utils::expand_slice(slice).is_ok() {
        Ok(())
    } else {
        Err(Error::InvalidPath {
            path: slice.into(),
            reason: "the systemd cgroup driver needs a slice name such as \
                     kubepods-burstable-pod<uid>.slice"
                .into(),
        })
    }
}

/// Ids become cgroup and unit names: no separators, nothing systemd would
/// read as slice nesting.
fn check_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(Error::InvalidPath {
            path: id.into(),
            reason: "a cgroup name must be non-empty letters, digits or _".into(),
        });
    }
    Ok(())
}

fn join(base: &str, name: &str) -> String {
    if base == "/" {
        format!("/{name}")
    } else {
        format!("{base}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupDriver::*;

    #[test]
    fn cgroupfs_parent_is_the_pod_cgroup() {
        let p = pod_path(Cgroupfs, "/crius", "/kubepods/burstable/podabc", "p1").unwrap();
        assert_eq!(p.path, "/kubepods/burstable/podabc");
        assert_eq!(p.unit, None);
        let p = pod_path(Cgroupfs, "/crius", "//kubepods//besteffort/", "p1").unwrap();
        assert_eq!(p.path, "/kubepods/besteffort");
    }

    #[test]
    fn cgroupfs_empty_parent_uses_default() {
        let p = pod_path(Cgroupfs, "/crius", "", "abc123").unwrap();
        assert_eq!(p.path, "/crius/pod-abc123");
        let p = pod_path(Cgroupfs, "/", "", "abc").unwrap();
        assert_eq!(p.path, "/pod-abc");
    }

    #[test]
    fn cgroupfs_refuses_escapes_relative_and_slices() {
        for bad in ["/a/../b", "relative", "/a/./b", "kubepods-pod1.slice"] {
            let e = pod_path(Cgroupfs, "/crius", bad, "p").unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
        assert!(pod_path(Cgroupfs, "/crius", "/a", "bad/id").is_err());
        assert!(pod_path(Cgroupfs, "/crius", "/a", "").is_err());
    }

    #[test]
    fn systemd_slice_expands() {
        let p = pod_path(Systemd, "/crius", "kubepods-burstable-podabc.slice", "p1").unwrap();
        assert_eq!(
            p.path,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podabc.slice"
        );
        let u = p.unit.as_ref().unwrap();
        assert_eq!(u.name, "kubepods-burstable-podabc.slice");
        assert_eq!(u.slice, "kubepods-burstable.slice");
        assert!(!u.is_scope());
    }

    #[test]
    fn systemd_default_parent() {
        let p = pod_path(Systemd, "/crius", "", "abc").unwrap();
        assert_eq!(p.path, "/crius.slice/crius-podabc.slice");
        assert_eq!(p.unit.as_ref().unwrap().slice, "crius.slice");
        let p = pod_path(Systemd, "machine.slice", "", "abc").unwrap();
        assert_eq!(p.path, "/machine.slice/machine-podabc.slice");
        let p = pod_path(Systemd, "-.slice", "", "abc").unwrap();
        assert_eq!(p.path, "/podabc.slice");
        assert_eq!(p.unit.unwrap().slice, "-.slice");
        let p = pod_path(Systemd, "/a/b", "", "x").unwrap();
        assert_eq!(p.path, "/a.slice/a-b.slice/a-b-podx.slice");
        assert!(pod_path(Systemd, "/my-parent", "", "x").is_err());
    }

    #[test]
    fn systemd_refuses_paths_and_bad_slices() {
        for bad in [
            "/kubepods/burstable",
            "kubepods--x.slice",
            ".slice",
            "a/b.slice",
        ] {
            let e = pod_path(Systemd, "/crius", bad, "p").unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn container_leaves() {
        let pod = pod_path(Cgroupfs, "/crius", "/kubepods/podx", "p").unwrap();
        let c = leaf_path(&pod, "c1").unwrap();
        assert_eq!(c.path, "/kubepods/podx/crius-c1");
        let pod = pod_path(Systemd, "/crius", "kubepods-podx.slice", "p").unwrap();
        let c = leaf_path(&pod, "c1").unwrap();
        assert_eq!(c.path, "/kubepods.slice/kubepods-podx.slice/crius-c1.scope");
        assert_eq!(
            c.unit,
            Some(Unit {
                name: "crius-c1.scope".into(),
                slice: "kubepods-podx.slice".into()
            })
        );
        assert!(leaf_path(&c, "nested").is_err());
        assert!(leaf_path(&pod, "../x").is_err());
    }

    #[test]
    fn default_parents_and_children() {
        let root = default_parent_path(Cgroupfs, "/crius").unwrap();
        assert_eq!(root.path, "/crius");
        let pod = child_path(&root, "pod-abc").unwrap();
        assert_eq!(pod, pod_path(Cgroupfs, "/crius", "", "abc").unwrap());
        let leaf = child_path(&pod, "crius-c1").unwrap();
        assert_eq!(leaf, leaf_path(&pod, "c1").unwrap());
        assert_eq!(child_path(&root, "kubelet-thing"), None);

        let root = default_parent_path(Systemd, "/crius").unwrap();
        assert_eq!(root.path, "/crius.slice");
        let pod = child_path(&root, "crius-podabc.slice").unwrap();
        assert_eq!(pod, pod_path(Systemd, "/crius", "", "abc").unwrap());
        let leaf = child_path(&pod, "crius-c1.scope").unwrap();
        assert_eq!(leaf, leaf_path(&pod, "c1").unwrap());
        let monitor = child_path(&root, "crius-monitor_abc.scope").unwrap();
        assert_eq!(monitor, leaf_path(&root, "monitor_abc").unwrap());
        assert_eq!(child_path(&root, "other-x.slice"), None);
        assert_eq!(child_path(&root, "session-1.scope"), None);
    }

    #[test]
    fn monitors_are_a_sibling_of_the_default_parent() {
        let m = monitors_path(Cgroupfs, "/crius").unwrap();
        assert_eq!((m.path.as_str(), m.unit), ("/crius-monitors", None));
        assert_eq!(
            monitors_path(Cgroupfs, "/a/b/").unwrap().path,
            "/a/b-monitors"
        );
        assert_eq!(
            monitors_path(Cgroupfs, "/").unwrap().path,
            "/crius-monitors"
        );
        assert!(monitors_path(Cgroupfs, "/a/../b").is_err());

        let m = monitors_path(Systemd, "/crius").unwrap();
        assert_eq!(m.path, "/crius-monitors.scope");
        let unit = m.unit.unwrap();
        assert_eq!(
            (unit.name.as_str(), unit.slice.as_str()),
            ("crius-monitors.scope", "-.slice")
        );
        assert!(unit.is_scope());
        let m = monitors_path(Systemd, "a-b.slice").unwrap();
        assert_eq!(m.path, "/a.slice/a-b-monitors.scope");
        assert_eq!(m.unit.unwrap().slice, "a.slice");
        let m = monitors_path(Systemd, "-.slice").unwrap();
        assert_eq!(m.path, "/crius-monitors.scope");
        // Never below the default parent, whose children the reconcile sweeps.
        for (driver, parent) in [
            (Cgroupfs, "/crius"),
            (Systemd, "/crius"),
            (Systemd, "a-b.slice"),
        ] {
            let root = default_parent_path(driver, parent).unwrap();
            let m = monitors_path(driver, parent).unwrap();
            assert!(
                !m.path.starts_with(&format!("{}/", root.path)),
                "{m} in {root}"
            );
        }
    }

    #[test]
    fn parent_slices() {
        assert_eq!(parent_slice("a-b-c.slice"), "a-b.slice");
        assert_eq!(parent_slice("a.slice"), "-.slice");
    }

    #[test]
    fn records_round_trip() {
        let pod = pod_path(Systemd, "/crius", "kubepods-podx.slice", "p").unwrap();
        let json = serde_json::to_string(&pod).unwrap();
        assert_eq!(serde_json::from_str::<CgroupPath>(&json).unwrap(), pod);
        let fs = pod_path(Cgroupfs, "/crius", "", "p").unwrap();
        assert_eq!(
            serde_json::to_string(&fs).unwrap(),
            r#"{"path":"/crius/pod-p"}"#
        );
    }
}
