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

/// Resolves `user` (`uid`, `uid:gid`, `name`, `name:group`) inside `rootfs`.
/// A numeric uid needs no passwd entry (Kubernetes' runAsUser), and gets
/// gid 0 unless passwd or the request says otherwise.
pub fn resolve(rootfs: &Path, user: &str, supplemental: &[u32]) -> Result<Identity, Error> {
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
    let mut additional_gids: Vec<u32> = Vec::new();
    // A group given explicitly replaces the user's own groups, as Docker does.
    if let (Some(name), None) = (&name, group_part) {
        for (_, g, members) in &all_groups {
            if members.iter().any(|m| m == name) && !additional_gids.contains(g) {
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
            "root:x:0:\nwww:x:33:\nstaff:x:50:www,other\nnogroup:x:65534:\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_and_numbers_resolve_inside_the_rootfs() {
        let r = rootfs();
        let www = resolve(r.path(), "www", &[]).unwrap();
        assert_eq!((www.uid, www.gid, www.home.as_str()), (33, 33, "/var/www"));
        assert_eq!(www.additional_gids, [50], "member of staff");
        let n = resolve(r.path(), "1234", &[7]).unwrap();
        assert_eq!(
            (n.uid, n.gid, n.additional_gids.clone()),
            (1234, 0, vec![7])
        );
        let ng = resolve(r.path(), "www:nogroup", &[]).unwrap();
        assert_eq!((ng.uid, ng.gid), (33, 65534));
        assert!(ng.additional_gids.is_empty());
        let num = resolve(r.path(), "65534:5", &[]).unwrap();
        assert_eq!((num.uid, num.gid), (65534, 5));
        assert_eq!(
            resolve(r.path(), "ghost", &[]),
            Err(Error::UnknownUser("ghost".into()))
        );
        assert_eq!(
            resolve(r.path(), "0:ghosts", &[]),
            Err(Error::UnknownGroup("ghosts".into()))
        );
    }

    #[test]
    fn an_image_without_passwd_still_runs_numeric_users() {
        let empty = tempfile::tempdir().unwrap();
        let id = resolve(empty.path(), "1000:1000", &[]).unwrap();
        assert_eq!((id.uid, id.gid), (1000, 1000));
        assert!(resolve(empty.path(), "root", &[]).is_err());
    }
}
