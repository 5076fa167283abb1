//! Security contexts end to end, each checked from inside the container
//! (ExecSync of the probe image's `probe`, or /proc/self/status): seccomp
//! profiles (RuntimeDefault, Localhost with errnoRet, the legacy path, a
//! missing file), users and groups, capabilities, no_new_privs.

use crius::cri::proto::*;
use tonic::Code;

use crate::container::{Setup, container, create, exec, pod_config, setup_with_env, start};
use crate::pod::{self, Client};
use crate::require_registry_tools;

/// The probe program (the image's PATH is /bin).
const PROBE: &str = "/usr/local/bin/probe";

/// A daemon with busybox and the probe image pulled; returns the probe
/// image's reference.
async fn setup() -> (Setup, String) {
    let s = setup_with_env(&[]).await;
    let probe = format!("{}probe", s.busybox.trim_end_matches("busybox"));
    s.d.images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: probe.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    (s, probe)
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
    let (s, probe) = setup().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("seccomp", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();

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

    // A privileged container ignores the profile.
    let privileged = run(
        &mut rt,
        &pod,
        sleeper("privileged", &probe, |sc| {
            sc.seccomp = runtime_default();
            sc.privileged = true;
        }),
    )
    .await;
    assert_eq!(proc_status(&mut rt, &privileged, "Seccomp").await, "0");
    pod::stop_remove(&mut rt, &pod).await;
}

#[tokio::test(flavor = "multi_thread")]
#[allow(deprecated)] // the legacy seccomp_profile_path is part of the test
async fn seccomp_localhost_profiles_and_their_errors() {
    require_registry_tools!();
    let (s, probe) = setup().await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("localhost", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
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
