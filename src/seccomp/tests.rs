use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::*;

fn parse(json: &str) -> Profile {
    serde_json::from_str(json).unwrap()
}

fn host() -> Host {
    Host::current()
}

fn compile_json(json: &str) -> Result<Filter, Error> {
    compile(&parse(json), "test", &HashSet::new(), &host())
}

fn invalid_field(e: Error) -> String {
    match e {
        Error::Invalid { field, .. } => field,
        other => panic!("not an Invalid error: {other:?}"),
    }
}

#[test]
fn oci_and_docker_profiles_parse() {
    let p = parse(
        r#"{
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "comment": "io"},
            {"name": "keyctl", "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
             "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}}
        ]}"#,
    );
    assert_eq!(p.syscalls.len(), 4);
    assert_eq!(
        p.syscalls[1].all_names().collect::<Vec<_>>(),
        ["keyctl"],
        "Docker's single name"
    );
    assert_eq!(p.syscalls[2].args[0].op, "SCMP_CMP_MASKED_EQ");
    let f = compile(&p, "test", &HashSet::new(), &host()).unwrap();
    assert_eq!(f.flags, 2);
    assert_eq!(f.program.len() % 8, 0);
    assert!(!f.program.is_empty());
}

#[test]
fn unknown_fields_are_refused() {
    let err = serde_json::from_str::<Profile>(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoret": 5}]}"#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("errnoret"), "{err}");
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        (r#"{"defaultAction": "SCMP_ACT_NOPE"}"#, "defaultAction"),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "defaultErrnoRet": 5}"#,
            "defaultAction",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NEW_LISTENER"]}"#,
            "flags",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"]}"#,
            "architectures[0]",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86"],
                "archMap": [{"architecture": "SCMP_ARCH_X86_64"}]}"#,
            "archMap",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL"},
                {"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 3}]}"#,
            "syscalls[1].action",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}"#,
            "syscalls[0].action",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "syscalls[0].action",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}"#,
            "syscalls[0]",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
            "syscalls[0].args[0]",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 1, "op": "SCMP_CMP_ALMOST"}]}]}"#,
            "syscalls[0].args[1]",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                "includes": {"minKernel": "new"}}]}"#,
            "syscalls[0]",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#,
            "listenerPath",
        ),
    ];
    for (json, field) in cases {
        let e = compile_json(json).expect_err(json);
        assert_eq!(e.kind(), crate::error::Kind::InvalidArgument);
        assert_eq!(invalid_field(e), field, "{json}");
    }
}

#[test]
fn unknown_syscall_names_are_skipped() {
    compile_json(
        r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read", "no_such_syscall_2099"], "action": "SCMP_ACT_ALLOW"}]}"#,
    )
    .unwrap();
}

#[test]
fn localhost_files_fail_naming_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let req = Request::Localhost {
        path: missing.clone(),
        field: "seccomp.localhost_ref",
    };
    let e = prepare(&req, false, []).unwrap_err();
    assert_eq!(e.kind(), crate::error::Kind::InvalidArgument);
    let text = e.to_string();
    assert!(
        text.contains(&missing.display().to_string()) && text.contains("seccomp.localhost_ref"),
        "{text}"
    );
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"defaultAction\": ").unwrap();
    let e = prepare(
        &Request::Localhost {
            path: bad.clone(),
            field: "seccomp_profile_path",
        },
        false,
        [],
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a seccomp profile"), "{e}");
    let relative = Request::Localhost {
        path: PathBuf::from("profile.json"),
        field: "seccomp.localhost_ref",
    };
    assert!(
        prepare(&relative, false, [])
            .unwrap_err()
            .to_string()
            .contains("not absolute")
    );
    assert_eq!(
        prepare(&req, true, []).unwrap(),
        None,
        "privileged ignores profiles"
    );
    assert_eq!(prepare(&Request::Unconfined, false, []).unwrap(), None);
}

#[test]
fn runtime_default_depends_on_capabilities() {
    let plain = prepare(&Request::RuntimeDefault, false, ["CHOWN"])
        .unwrap()
        .unwrap();
    let admin = prepare(&Request::RuntimeDefault, false, ["CAP_SYS_ADMIN"])
        .unwrap()
        .unwrap();
    assert_ne!(plain.program, admin.program);
    assert_eq!(plain.flags, 0);
}

/// A filter is compiled once per profile and capability set: the cache
/// answers the same bytes for the same inputs, and any change of the
/// capabilities or of a Localhost file's content compiles anew.
#[test]
fn compiled_filters_are_kept_per_profile_and_capabilities() {
    let cache = FilterCache::default();
    let rd = |caps: &[&str]| {
        prepare_with(
            &cache,
            &Request::RuntimeDefault,
            false,
            caps.iter().copied(),
        )
        .unwrap()
        .unwrap()
    };
    let first = rd(&["CHOWN", "CAP_KILL"]);
    assert_eq!(cache.len(), 1);
    assert_eq!(
        rd(&["CAP_KILL", "CAP_CHOWN"]),
        first,
        "any spelling, any order"
    );
    assert_eq!(
        cache.len(),
        1,
        "the second call was answered from the cache"
    );
    let admin = rd(&["CAP_SYS_ADMIN"]);
    assert_ne!(admin.program, first.program);
    assert_eq!(cache.len(), 2);
    // A Localhost file edited between two creates is compiled anew.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    let req = Request::Localhost {
        path: path.clone(),
        field: "seccomp.localhost_ref",
    };
    let allow = |names: &str| {
        format!(
            r#"{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{{"names": [{names}], "action": "SCMP_ACT_ALLOW"}}]}}"#
        )
    };
    std::fs::write(&path, allow(r#""read""#)).unwrap();
    let one = prepare_with(&cache, &req, false, []).unwrap().unwrap();
    assert_eq!(prepare_with(&cache, &req, false, []).unwrap().unwrap(), one);
    assert_eq!(cache.len(), 3);
    std::fs::write(&path, allow(r#""read", "write""#)).unwrap();
    let two = prepare_with(&cache, &req, false, []).unwrap().unwrap();
    assert_ne!(two.program, one.program, "the edited file was compiled");
    assert_eq!(cache.len(), 4);
    // A broken file still fails, every time, and is never kept.
    std::fs::write(&path, "{").unwrap();
    for _ in 0..2 {
        let e = prepare_with(&cache, &req, false, []).unwrap_err();
        assert!(e.to_string().contains("not a seccomp profile"), "{e}");
    }
    assert_eq!(cache.len(), 4);
    // The bound: a full cache starts over.
    for i in 0..FilterCache::LIMIT {
        std::fs::write(&path, allow(&format!(r#""read", "no_such_syscall_{i}""#))).unwrap();
        prepare_with(&cache, &req, false, []).unwrap();
    }
    assert!(cache.len() <= FilterCache::LIMIT);
}

#[test]
fn the_default_profile_covers_only_this_architecture_family() {
    let p = default::profile();
    assert!(p.syscalls[0].names.iter().any(|n| n == "read"));
    assert!(
        !p.syscalls[0]
            .names
            .iter()
            .any(|n| n == "unshare" || n == "keyctl"),
        "unshare needs CAP_SYS_ADMIN, keyctl is never allowed"
    );
    assert!(Path::new("/proc/sys/kernel/osrelease").exists());
    assert!(host().kernel >= (3, 17), "seccomp(2) exists");
}
