//! Resolving the user a container runs as against the container's own
//! /etc/passwd and /etc/group (never the host's): `uid`, `uid:gid`, `name`,
//! `name:group`, as Docker and containerd accept them.

use std::path::Path;

use crate::error::{Classify, Kind};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        Kind::InvalidArgument
    }
}

/// The numeric identity of a container process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// The user's groups from /etc/group plus the requested supplemental ones.
    pub additional_gids: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// (name, gid, members) of each /etc/group line.
fn groups(rootfs: &Path) -> Vec<(String, u32, Vec<String>)> {
    let text = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(String::from)
                .collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Where supplemental groups come from (the CRI's SupplementalGroupsPolicy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupsPolicy {
    /// The user's groups in the image's /etc/group, plus the requested ones.
    #[default]
    Merge,
    /// Only the requested ones: /etc/group is not read for memberships.
    Strict,
}

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) inside `rootfs`.
/// A numeric uid needs no passwd entry (Kubernetes' runAsUser), and gets
/// gid 0 unless passwd or the request says otherwise. The supplemental
/// groups are, as containerd 2 makes them: the primary gid, then (policy
/// Merge) every /etc/group entry listing the user's name (except a group
/// named like the user), then `supplemental`, each once.
pub fn resolve(
    rootfs: &Path,
    user: &str,
    supplemental: &[u32],
    policy: GroupsPolicy,
) -> Result<Identity, Error> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let users = passwd(rootfs);
    let (uid, mut gid, home, name) = match user_part.parse::<u32>() {
        Ok(uid) => match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, e.home.clone(), Some(e.name.clone())),
            None => (uid, 0, "/".to_string(), None),
        },
        Err(_) => {
            let e = users
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| Error::UnknownUser(user_part.to_string()))?;
            (e.uid, e.gid, e.home.clone(), Some(e.name.clone()))
        }
    };
    let all_groups = groups(rootfs);
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => all_groups
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| Error::UnknownGroup(g.to_string()))?,
        };
    }
    let mut additional_gids: Vec<u32> = vec![gid];
    if let (Some(name), GroupsPolicy::Merge) = (&name, policy) {
        for (group, g, members) in &all_groups {
            if group != name && members.iter().any(|m| m == name) && !additional_gids.contains(g) {
                additional_gids.push(*g);
            }
        }
    }
    for g in supplemental {
        if !additional_gids.contains(g) {
            additional_gids.push(*g);
        }
    }
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use GroupsPolicy::{Merge, Strict};

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\nwww:x:33:33:www:/var/www:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nwww:x:33:www\nstaff:x:50:www,other\nnogroup:x:65534:\n",
        )
        .unwrap();
        dir
    }

    fn ids(id: &Identity) -> (u32, u32, Vec<u32>) {
        (id.uid, id.gid, id.additional_gids.clone())
    }

    #[test]
    fn names_and_numbers_resolve_inside_the_rootfs() {
        let r = rootfs();
        let www = resolve(r.path(), "www", &[], Merge).unwrap();
        assert_eq!(ids(&www), (33, 33, vec![33, 50]), "primary, then staff");
        assert_eq!(www.home, "/var/www");
        let n = resolve(r.path(), "1234", &[7], Merge).unwrap();
        assert_eq!(ids(&n), (1234, 0, vec![0, 7]));
        let by_uid = resolve(r.path(), "33", &[], Merge).unwrap();
        assert_eq!(ids(&by_uid), (33, 33, vec![33, 50]), "memberships by name");
        let ng = resolve(r.path(), "www:nogroup", &[], Merge).unwrap();
        assert_eq!(ids(&ng), (33, 65534, vec![65534, 50]));
        let num = resolve(r.path(), "65534:5", &[], Merge).unwrap();
        assert_eq!(ids(&num), (65534, 5, vec![5]));
        assert_eq!(
            resolve(r.path(), "ghost", &[], Merge),
            Err(Error::UnknownUser("ghost".into()))
        );
        assert_eq!(
            resolve(r.path(), "0:ghosts", &[], Merge),
            Err(Error::UnknownGroup("ghosts".into()))
        );
    }

    #[test]
    fn strict_ignores_the_image_groups() {
        let r = rootfs();
        let merge = resolve(r.path(), "www", &[1000, 50], Merge).unwrap();
        assert_eq!(merge.additional_gids, [33, 50, 1000]);
        let strict = resolve(r.path(), "www", &[1000], Strict).unwrap();
        assert_eq!(strict.additional_gids, [33, 1000]);
    }

    #[test]
    fn an_image_without_passwd_still_runs_numeric_users() {
        let empty = tempfile::tempdir().unwrap();
        let id = resolve(empty.path(), "1000:1000", &[], Merge).unwrap();
        assert_eq!(ids(&id), (1000, 1000, vec![1000]));
        assert!(resolve(empty.path(), "root", &[], Merge).is_err());
    }
}
