//! Security contexts end to end, each checked from inside the container
//! (ExecSync of the probe image's `probe`, or /proc/self/status): seccomp
//! profiles (RuntimeDefault, Localhost with errnoRet, the legacy path, a
//! missing file), users and groups, capabilities, no_new_privs.

use crius::cri::proto::*;
use tonic::Code;

use crate::container::{
    Setup, container, create, exec, pod_config, refused, setup_with_env, start,
};
use crate::pod::{self, Client};
use crate::require_registry_tools;

/// The probe program (the image's PATH is /bin).
const PROBE: &str = "/usr/local/bin/probe";

/// A daemon with busybox and the probe image pulled, and a pod.
struct Env {
    s: Setup,
    /// The probe image's reference.
    probe: String,
    rt: Client,
    pod: String,
    logs: std::path::PathBuf,
}

async fn setup(pod_name: &str) -> Env {
    let s = setup_with_env(&[]).await;
    let probe = format!("{}probe", s.busybox.trim_end_matches("busybox"));
    s.pull(&probe).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config(pod_name, NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    Env {
        s,
        probe,
        rt,
        pod,
        logs,
    }
}

/// A container of the probe image that sleeps, with `edit` applied to its
/// security context.
fn sleeper(
    name: &str,
    image: &str,
    edit: impl FnOnce(&mut LinuxContainerSecurityContext),
) -> ContainerConfig {
    let mut c = container(name, image, &["sleep", "3600"], NamespaceMode::Container);
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    edit(sc);
    c
}

/// Creates and starts `c`, returning its id.
async fn run(rt: &mut Client, pod: &str, c: ContainerConfig) -> String {
    let id = create(rt, pod, c).await.unwrap();
    start(rt, &id).await;
    id
}

/// ExecSync `cmd`: (exit code, stdout, stderr).
async fn sh(rt: &mut Client, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = exec(rt, id, cmd, 10).await.unwrap();
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).trim().to_string(),
        String::from_utf8_lossy(&r.stderr).trim().to_string(),
    )
}

/// A field of /proc/self/status as an exec'd process of `id` sees it.
async fn proc_status(rt: &mut Client, id: &str, field: &str) -> String {
    let (code, out, err) = sh(rt, id, &["cat", "/proc/self/status"]).await;
    assert_eq!(code, 0, "{err}");
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {out}"))
        .trim()
        .to_string()
}

fn runtime_default() -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    })
}

fn localhost(path: &std::path::Path) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: security_profile::ProfileType::Localhost as i32,
        localhost_ref: path.display().to_string(),
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn seccomp_runtime_default_denies_unshare_and_keyctl() {
    require_registry_tools!();
    let Env {
        s: _s,
        probe,
        mut rt,
        pod,
        logs,
    } = setup("seccomp").await;

    let confined = run(
        &mut rt,
        &pod,
        sleeper("confined", &probe, |sc| sc.seccomp = runtime_default()),
    )
    .await;
    let free = run(&mut rt, &pod, sleeper("free", &probe, |_| {})).await;

    // The workload itself runs under the filter (mode 2), and so does
    // every exec'd process; the unconfined one has none.
    let (code, out, _) = sh(&mut rt, &confined, &["cat", "/proc/1/status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("Seccomp:\t2"), "the workload: {out}");
    assert_eq!(proc_status(&mut rt, &confined, "Seccomp").await, "2");
    assert_eq!(proc_status(&mut rt, &free, "Seccomp").await, "0");
    assert_eq!(
        sh(&mut rt, &confined, &["echo", "ordinary work"]).await.1,
        "ordinary work"
    );

    assert_eq!(
        sh(&mut rt, &confined, &[PROBE, "keyctl"]).await.1,
        "errno 1"
    );
    assert_eq!(
        sh(&mut rt, &confined, &[PROBE, "unshare-user"]).await.1,
        "errno 1"
    );
    let (code, _, err) = sh(&mut rt, &confined, &["unshare", "-U", "true"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "{err}");
    // Without the filter the same calls get past it.
    assert_ne!(sh(&mut rt, &free, &[PROBE, "keyctl"]).await.1, "errno 1");
    assert_eq!(sh(&mut rt, &free, &[PROBE, "unshare-user"]).await.1, "ok");

    // The pod's profile is inherited by a container without one.
    let mut inherit = sleeper("inherit", &probe, |_| {});
    inherit.log_path = "inherit.log".into();
    let mut sandbox = pod_config("seccomp", NamespaceMode::Container, &logs);
    sandbox
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .seccomp = runtime_default();
    let id = rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(inherit),
            sandbox_config: Some(sandbox),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    start(&mut rt, &id).await;
    assert_eq!(proc_status(&mut rt, &id, "Seccomp").await, "2");

    // A privileged container (in a privileged pod) ignores the profile.
    let mut privileged_pod = pod_config("privileged", NamespaceMode::Container, &logs);
    privileged_pod
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let ppod = pod::run(&mut rt, privileged_pod).await.unwrap();
    let privileged = run(
        &mut rt,
        &ppod,
        sleeper("privileged", &probe, |sc| {
            sc.seccomp = runtime_default();
            sc.privileged = true;
        }),
    )
    .await;
    assert_eq!(proc_status(&mut rt, &privileged, "Seccomp").await, "0");
    pod::stop_remove(&mut rt, &ppod).await;
    pod::stop_remove(&mut rt, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
#[allow(deprecated)] // the legacy seccomp_profile_path is part of the test
async fn seccomp_localhost_profiles_and_their_errors() {
    require_registry_tools!();
    let Env {
        s,
        probe,
        mut rt,
        pod,
        ..
    } = setup("localhost").await;
    let profile = s.d.dir.path().join("getppid-42.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}]}"#,
    )
    .unwrap();

    let id = run(
        &mut rt,
        &pod,
        sleeper("errno", &probe, |sc| sc.seccomp = localhost(&profile)),
    )
    .await;
    assert_eq!(sh(&mut rt, &id, &[PROBE, "getppid"]).await.1, "errno 42");
    assert_eq!(sh(&mut rt, &id, &[PROBE, "keyctl"]).await.1, "ok");

    // The deprecated path form names the same file.
    let legacy = run(
        &mut rt,
        &pod,
        sleeper("legacy", &probe, |sc| {
            sc.seccomp_profile_path = format!("localhost/{}", profile.display())
        }),
    )
    .await;
    assert_eq!(
        sh(&mut rt, &legacy, &[PROBE, "getppid"]).await.1,
        "errno 42"
    );

    // A missing or malformed file: InvalidArgument naming file and field,
    // and nothing created.
    let before = list(&mut rt).await;
    let missing = s.d.dir.path().join("no-such-profile.json");
    let err = create(
        &mut rt,
        &pod,
        sleeper("missing", &probe, |sc| sc.seccomp = localhost(&missing)),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains(&missing.display().to_string())
            && err.message().contains("security_context.seccomp"),
        "{err:?}"
    );
    let bad = s.d.dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"defaultAction": "SCMP_ACT_SOMETIMES"}"#).unwrap();
    let err = create(
        &mut rt,
        &pod,
        sleeper("bad", &probe, |sc| {
            sc.seccomp_profile_path = format!("localhost/{}", bad.display())
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("defaultAction"), "{err:?}");
    assert_eq!(
        list(&mut rt).await,
        before,
        "a refused create leaves nothing"
    );
    pod::stop_remove(&mut rt, &pod).await;
}

/// The ids of every container.
async fn list(rt: &mut Client) -> Vec<String> {
    let mut ids: Vec<String> = rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    ids.sort();
    ids
}

/// (uid, gid, sorted groups) from a /proc/PID/status text.
fn creds(status: &str) -> (i64, i64, Vec<i64>) {
    let field = |name: &str| -> Vec<i64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let mut groups = field("Groups:");
    groups.sort();
    (field("Uid:")[0], field("Gid:")[0], groups)
}

/// What the workload (PID 1 in its PID namespace) and an exec'd process
/// run as; they must agree.
async fn workload_creds(rt: &mut Client, id: &str) -> (i64, i64, Vec<i64>) {
    let (_, init, _) = sh(rt, id, &["cat", "/proc/1/status"]).await;
    let (_, me, _) = sh(rt, id, &["cat", "/proc/self/status"]).await;
    assert_eq!(
        creds(&init),
        creds(&me),
        "exec'd processes get the same user"
    );
    creds(&init)
}

/// ContainerStatus.user as (uid, gid, sorted groups).
async fn status_user(rt: &mut Client, id: &str) -> (i64, i64, Vec<i64>) {
    let (st, _) = crate::container::status(rt, id).await;
    let u = st.user.and_then(|u| u.linux).expect("ContainerStatus.user");
    let mut groups = u.supplemental_groups;
    groups.sort();
    (u.uid, u.gid, groups)
}

#[tokio::test(flavor = "multi_thread")]
async fn users_groups_and_container_status_user() {
    require_registry_tools!();
    let Env {
        s,
        probe,
        mut rt,
        pod,
        ..
    } = setup("users").await;
    // (name, image tag, security context, uid, gid, groups). alice is 1001
    // in /etc/passwd, member of staff (50) and audio (63).
    type Edit = fn(&mut LinuxContainerSecurityContext);
    type Creds = (i64, i64, Vec<i64>);
    let cases: Vec<(&str, &str, Edit, Creds)> = vec![
        (
            "run-as-user",
            "latest",
            |sc| {
                sc.run_as_user = Some(Int64Value { value: 1001 });
                sc.seccomp = runtime_default();
            },
            (1001, 1001, vec![50, 63, 1001]),
        ),
        (
            "username-group-supplemental",
            "latest",
            |sc| {
                sc.run_as_username = "alice".into();
                sc.run_as_group = Some(Int64Value { value: 3000 });
                sc.supplemental_groups = vec![4000];
            },
            (1001, 3000, vec![50, 63, 3000, 4000]),
        ),
        (
            "strict",
            "latest",
            |sc| {
                sc.run_as_user = Some(Int64Value { value: 1001 });
                sc.supplemental_groups = vec![4000];
                sc.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
            },
            (1001, 1001, vec![1001, 4000]),
        ),
        (
            "image-uid",
            "1001",
            |_| {},
            (1001, 1001, vec![50, 63, 1001]),
        ),
        ("image-uid-gid", "1001-63", |_| {}, (1001, 63, vec![50, 63])),
        (
            "image-name",
            "alice",
            |_| {},
            (1001, 1001, vec![50, 63, 1001]),
        ),
        (
            "image-name-group",
            "alice-audio",
            |_| {},
            (1001, 63, vec![50, 63]),
        ),
        (
            "image-user-strict",
            "alice",
            |sc| sc.supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32,
            (1001, 1001, vec![1001]),
        ),
    ];
    for (name, tag, edit, want) in cases {
        let image = format!("{probe}:{tag}");
        s.pull(&image).await;
        let mut c = sleeper(name, &image, edit);
        c.log_path = format!("{name}.log");
        let id = run(&mut rt, &pod, c).await;
        assert_eq!(workload_creds(&mut rt, &id).await, want, "{name}");
        assert_eq!(
            status_user(&mut rt, &id).await,
            want,
            "{name}: ContainerStatus.user"
        );
    }

    // run_as_group without a user is refused; so is a name not in the image.
    let err = create(
        &mut rt,
        &pod,
        sleeper("group-only", &probe, |sc| {
            sc.run_as_group = Some(Int64Value { value: 5 })
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // The name is looked up in the image as the init is made: after
    // CreateContainer answered, so StartContainer reports it.
    let err = refused(
        &mut rt,
        &pod,
        sleeper("ghost", &probe, |sc| sc.run_as_username = "ghost".into()),
    )
    .await;
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("ghost"), "{err:?}");

    let features = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .features
        .unwrap();
    assert!(features.supplemental_groups_policy);
    pod::stop_remove(&mut rt, &pod).await;
}

/// A capability set (`CapEff`, `CapBnd`...) of a /proc/PID/status text.
fn cap(status: &str, field: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(v.trim(), 16).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn capabilities_and_no_new_privs() {
    require_registry_tools!();
    // `_s` keeps the daemon and the registry alive to the end.
    let Env {
        s: _s,
        probe,
        mut rt,
        pod,
        ..
    } = setup("caps").await;
    let held = cap(
        &std::fs::read_to_string("/proc/self/status").unwrap(),
        "CapBnd",
    );
    // containerd's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL
    // SETGID SETUID SETPCAP NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD
    // AUDIT_WRITE SETFCAP.
    const DEFAULT: u64 = 0xa80425fb;
    const CHOWN: u64 = 1;
    const KILL: u64 = 1 << 5;
    const NET_BIND_SERVICE: u64 = 1 << 10;
    const SYS_ADMIN: u64 = 1 << 21;
    type Edit = fn(&mut LinuxContainerSecurityContext);
    let cases: Vec<(&str, Edit, u64)> = vec![
        ("default", |_| {}, DEFAULT),
        (
            "drop",
            |sc| {
                sc.capabilities = Some(Capability {
                    drop_capabilities: vec!["CHOWN".into(), "CAP_KILL".into()],
                    ..Default::default()
                })
            },
            DEFAULT & !(CHOWN | KILL),
        ),
        (
            "add",
            |sc| {
                sc.capabilities = Some(Capability {
                    add_capabilities: vec!["sys_admin".into()],
                    ..Default::default()
                })
            },
            DEFAULT | SYS_ADMIN,
        ),
        (
            "drop-all",
            |sc| {
                sc.capabilities = Some(Capability {
                    drop_capabilities: vec!["ALL".into()],
                    ..Default::default()
                })
            },
            0,
        ),
    ];
    for (name, edit, want) in cases {
        let mut c = sleeper(name, &probe, edit);
        c.log_path = format!("{name}.log");
        let id = run(&mut rt, &pod, c).await;
        let (_, init, _) = sh(&mut rt, &id, &["cat", "/proc/1/status"]).await;
        assert_eq!(cap(&init, "CapEff"), want, "{name}: {init}");
        assert_eq!(cap(&init, "CapBnd"), want, "{name}");
        assert_eq!(
            cap(
                &sh(&mut rt, &id, &["cat", "/proc/self/status"]).await.1,
                "CapEff"
            ),
            want,
            "{name}: exec'd processes get the container's capabilities"
        );
    }
    let mut all = sleeper("add-all", &probe, |sc| {
        sc.capabilities = Some(Capability {
            add_capabilities: vec!["ALL".into()],
            ..Default::default()
        })
    });
    all.log_path = "add-all.log".into();
    let id = run(&mut rt, &pod, all).await;
    let (_, init, _) = sh(&mut rt, &id, &["cat", "/proc/1/status"]).await;
    assert_eq!(
        cap(&init, "CapEff"),
        held,
        "ALL: every capability crius holds"
    );

    // A non-root user keeps only its ambient capabilities across execve.
    let mut ambient = sleeper("ambient", &probe, |sc| {
        sc.run_as_user = Some(Int64Value { value: 1000 });
        sc.capabilities = Some(Capability {
            drop_capabilities: vec!["ALL".into()],
            add_ambient_capabilities: vec!["CAP_NET_BIND_SERVICE".into()],
            ..Default::default()
        });
    });
    ambient.log_path = "ambient.log".into();
    let id = run(&mut rt, &pod, ambient).await;
    let (_, init, _) = sh(&mut rt, &id, &["cat", "/proc/1/status"]).await;
    assert_eq!(cap(&init, "CapEff"), NET_BIND_SERVICE, "{init}");
    assert_eq!(cap(&init, "CapAmb"), NET_BIND_SERVICE);
    let mut plain = sleeper("nonroot-plain", &probe, |sc| {
        sc.run_as_user = Some(Int64Value { value: 1000 })
    });
    plain.log_path = "nonroot-plain.log".into();
    let id = run(&mut rt, &pod, plain).await;
    let (_, init, _) = sh(&mut rt, &id, &["cat", "/proc/1/status"]).await;
    assert_eq!(cap(&init, "CapEff"), 0, "no ambient: nothing after execve");

    // no_new_privs: a setuid-root binary does not make a user root; with
    // it, the filter is loaded last and still applies.
    let suid = "/usr/local/bin/probe-suid";
    let mut nnp = sleeper("nnp", &probe, |sc| {
        sc.run_as_user = Some(Int64Value { value: 1000 });
        sc.no_new_privs = true;
        sc.seccomp = runtime_default();
    });
    nnp.log_path = "nnp.log".into();
    let nnp = run(&mut rt, &pod, nnp).await;
    let mut free = sleeper("suid", &probe, |sc| {
        sc.run_as_user = Some(Int64Value { value: 1000 })
    });
    free.log_path = "suid.log".into();
    let free = run(&mut rt, &pod, free).await;
    assert_eq!(sh(&mut rt, &free, &[suid, "euid"]).await.1, "0");
    assert_eq!(sh(&mut rt, &nnp, &[suid, "euid"]).await.1, "1000");
    let (_, init, _) = sh(&mut rt, &nnp, &["cat", "/proc/1/status"]).await;
    assert!(
        init.contains("NoNewPrivs:\t1") && init.contains("Seccomp:\t2"),
        "{init}"
    );
    assert_eq!(sh(&mut rt, &nnp, &[PROBE, "keyctl"]).await.1, "errno 1");
    pod::stop_remove(&mut rt, &pod).await;
}

/// The CRI's masked_paths and readonly_paths, as critest's MaskedPaths and
/// ReadonlyPaths specs ask (that MaskedPaths spec cannot see it with the
/// stand-in busybox, whose sh runs `ls` without exec'ing /bin/ls): a masked
/// file is /dev/null (it cannot be executed, reads empty), a masked
/// directory an empty read-only tmpfs, a read-only path refuses writes; the
/// defaults (/proc/kcore, ...) are replaced by the request.
#[tokio::test(flavor = "multi_thread")]
async fn masked_and_readonly_paths_from_the_request() {
    require_registry_tools!();
    let Env { s, mut rt, pod, .. } = setup("masks").await;
    let busybox = s.busybox.clone();
    let mut c = sleeper("masked", &busybox, |sc| {
        sc.masked_paths = vec!["/bin/ls".into(), "/root".into(), "/nowhere".into()];
        sc.readonly_paths = vec!["/tmp".into()];
    });
    c.log_path = "masked.log".into();
    let id = run(&mut rt, &pod, c).await;
    let (code, _, err) = sh(&mut rt, &id, &["/bin/sh", "-c", "/bin/ls /"]).await;
    assert_ne!(code, 0, "a masked binary ran");
    assert!(err.contains("Permission denied"), "{err}");
    let (code, out, err) = sh(
        &mut rt,
        &id,
        &[
            "/bin/sh",
            "-c",
            "wc -c </bin/ls; ls -A /root | wc -l; stat -c %t:%T /bin/ls",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "0\n0\n1:3", "/bin/ls is /dev/null, /root empty");
    let (code, _, err) = sh(&mut rt, &id, &["/bin/sh", "-c", "touch /root/x"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    let (code, _, err) = sh(&mut rt, &id, &["/bin/sh", "-c", "touch /tmp/test"]).await;
    assert_ne!(code, 0);
    assert_eq!(err, "touch: /tmp/test: Read-only file system");
    // The request replaced the defaults: /proc/kcore is not masked here.
    let (_, out, _) = sh(
        &mut rt,
        &id,
        &["/bin/sh", "-c", "stat -c %t:%T /proc/kcore"],
    )
    .await;
    assert_ne!(out, "1:3", "defaults replaced by the request");
    pod::stop_remove(&mut rt, &pod).await;
}
