//! Resolving the user a container runs as against the container's own
//! /etc/passwd and /etc/group (never the host's): `uid`, `uid:gid`, `name`,
//! `name:group`, as Docker and containerd accept them.
//!
//! [`parse`] is the one reading of such a string: ImageStatus reports the
//! uid it finds (kubelet's runAsNonRoot check trusts it) and the container
//! init runs as that same uid, so the two can never disagree. A part that
//! looks numeric (digits, or a leading `-`) must be a valid id: `-1`,
//! `4294967296` (0 once truncated to 32 bits) and 4294967295 (the kernel's
//! "no id") are errors, never names to look up.

use std::path::Path;

use crate::error::{Classify, Kind};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("user {0:?} not found in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} not found in the image's /etc/group")]
    UnknownGroup(String),
    #[error("user {user:?}: {reason}")]
    Malformed { user: String, reason: String },
}

/// One part (user or group) of a user string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who<'a> {
    Id(u32),
    Name(&'a str),
}

/// A parsed `user[:group]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSpec<'a> {
    pub user: Who<'a>,
    pub group: Option<Who<'a>>,
}

/// Reads `user[:group]` (see the module header); `""` is root.
pub fn parse(spec: &str) -> Result<UserSpec<'_>, Error> {
    if spec.is_empty() {
        return Ok(UserSpec {
            user: Who::Id(0),
            group: None,
        });
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    Ok(UserSpec {
        user: who(spec, "user", user)?,
        group: group.map(|g| who(spec, "group", g)).transpose()?,
    })
}

/// One part of `spec`: an id when it looks numeric, else a name.
fn who<'a>(spec: &str, part: &str, v: &'a str) -> Result<Who<'a>, Error> {
    let bad = |reason: String| Error::Malformed {
        user: spec.to_string(),
        reason,
    };
    if v.is_empty() {
        return Err(bad(format!("the {part} is empty")));
    }
    if v.contains([':', '/']) || v.chars().any(char::is_control) {
        return Err(bad(format!(
            "the {part} {v:?} holds a ':', '/' or control character"
        )));
    }
    if v.starts_with('-') {
        return Err(bad(format!("the {part} id {v} is negative")));
    }
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Who::Name(v));
    }
    match v.parse::<u32>() {
        Ok(n) if n != u32::MAX => Ok(Who::Id(n)),
        _ => Err(bad(format!(
            "the {part} id {v} is out of range (0 to {})",
            u32::MAX - 1
        ))),
    }
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

/// The most of /etc/passwd or /etc/group read.
const MAX_DB: u64 = 16 << 20;

/// A regular file's text, at most [`MAX_DB`] bytes; empty when it is
/// missing or not a regular file (an image may plant a FIFO, which would
/// block, or a link to /dev/zero, which never ends).
fn read_small(path: &Path) -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    else {
        return String::new();
    };
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    let _ = file.take(MAX_DB).read_to_string(&mut text);
    text
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    let text = read_small(&rootfs.join("etc/passwd"));
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
    let text = read_small(&rootfs.join("etc/group"));
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
    let spec = parse(user)?;
    let users = passwd(rootfs);
    let (uid, mut gid, home, name) = match spec.user {
        Who::Id(uid) => match users.iter().find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, e.home.clone(), Some(e.name.clone())),
            None => (uid, 0, "/".to_string(), None),
        },
        Who::Name(user_part) => {
            let e = users
                .iter()
                .find(|e| e.name == user_part)
                .ok_or_else(|| Error::UnknownUser(user_part.to_string()))?;
            (e.uid, e.gid, e.home.clone(), Some(e.name.clone()))
        }
    };
    let all_groups = groups(rootfs);
    match spec.group {
        None => {}
        Some(Who::Id(g)) => gid = g,
        Some(Who::Name(g)) => {
            gid = all_groups
                .iter()
                .find(|(n, _, _)| n == g)
                .map(|(_, gid, _)| *gid)
                .ok_or_else(|| Error::UnknownGroup(g.to_string()))?
        }
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
    fn one_parser_numeric_parts_must_be_valid_ids() {
        assert_eq!(
            parse("").unwrap(),
            UserSpec {
                user: Who::Id(0),
                group: None
            }
        );
        assert_eq!(
            parse("1000:www").unwrap(),
            UserSpec {
                user: Who::Id(1000),
                group: Some(Who::Name("www"))
            }
        );
        assert_eq!(parse("www").unwrap().user, Who::Name("www"));
        assert_eq!(parse("4294967294").unwrap().user, Who::Id(4294967294));
        for bad in [
            "4294967296",
            "4294967295",
            "99999999999999999999",
            "-1",
            "-0",
            "0:-1",
            "0:4294967296",
            ":0",
            "0:",
            "a/b",
            "0:1:2",
        ] {
            let err = parse(bad).unwrap_err();
            assert!(matches!(err, Error::Malformed { .. }), "{bad}: {err}");
        }
        // Never a name lookup that could map to root: a passwd entry
        // called "4294967296" with uid 0 is not consulted.
        let r = rootfs();
        std::fs::write(r.path().join("etc/passwd"), "4294967296:x:0:0::/:/bin/sh\n").unwrap();
        assert!(matches!(
            resolve(r.path(), "4294967296", &[], Merge),
            Err(Error::Malformed { .. })
        ));
    }

    #[test]
    fn a_passwd_that_is_not_a_regular_file_is_not_read() {
        let r = rootfs();
        std::fs::remove_file(r.path().join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", r.path().join("etc/passwd")).unwrap();
        assert_eq!(
            resolve(r.path(), "www", &[], Merge),
            Err(Error::UnknownUser("www".into()))
        );
        assert_eq!(resolve(r.path(), "7", &[], Merge).unwrap().uid, 7);
    }

    #[test]
    fn an_image_without_passwd_still_runs_numeric_users() {
        let empty = tempfile::tempdir().unwrap();
        let id = resolve(empty.path(), "1000:1000", &[], Merge).unwrap();
        assert_eq!(ids(&id), (1000, 1000, vec![1000]));
        assert!(resolve(empty.path(), "root", &[], Merge).is_err());
    }
}
