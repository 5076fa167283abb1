//! The host boundary, attacked: device nodes a root container makes or is
//! given (the device cgroup: v1 devices controller here, a BPF program on
//! cgroup v2 in the VM tier, both drivers), hostile CRI devices and log
//! paths, a privileged container in an unprivileged pod, and a host user
//! reaching into crius's storage.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crius::cri::proto::*;
use tonic::Code;

use crate::container::{
    Setup, container, create, exec, pod_config, refused, setup_with_env, start, status,
};
use crate::pod;
use crate::require_registry_tools;

/// An exec's exit code and stderr.
async fn sh(rt: &mut pod::Client, id: &str, script: &str) -> (i32, String) {
    let out = exec(rt, id, &["sh", "-c", script], 10).await.unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn device(host: &str, path: &str, permissions: &str) -> Device {
    Device {
        container_path: path.into(),
        host_path: host.into(),
        permissions: permissions.into(),
    }
}

fn privileged(c: &mut ContainerConfig) {
    let sc = c.linux.as_mut().unwrap().security_context.as_mut().unwrap();
    sc.privileged = true;
}

/// The device cgroup of a container's leaf on a v1 host, if there is one.
fn v1_devices_list(cgroups_path: &str) -> Option<String> {
    let dir = Path::new("/sys/fs/cgroup/devices").join(cgroups_path.trim_start_matches('/'));
    std::fs::read_to_string(dir.join("devices.list")).ok()
}

/// A root container may mknod any node (runc's `c *:* m`, `b *:* m`) but
/// open none but the defaults and its CRI devices: /dev/kmsg (c 1:11: the
/// host's kernel log) and a block device (b 7:0) are refused, exec'd
/// processes included; a CRI device gets the host node's numbers and only
/// the permissions asked for. A privileged container in a privileged pod
/// may open them; in an unprivileged pod it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn boundary_device_cgroup_stops_mknod_attacks() {
    require_registry_tools!();
    let s: Setup = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("dev", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let c = container(
        "attack",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    // Opened for writing: reading /dev/kmsg also needs CAP_SYSLOG
    // (dmesg_restrict), writing needs nothing but the device cgroup.
    let (code, err) = sh(
        &mut rt,
        &id,
        "mknod /kmsg c 1 11 && test -c /kmsg && : >/kmsg",
    )
    .await;
    assert_ne!(code, 0, "/dev/kmsg opened from a container");
    assert!(err.contains("Operation not permitted"), "{err}");
    let (code, err) = sh(
        &mut rt,
        &id,
        "mknod /loop b 7 0 && test -b /loop && : </loop",
    )
    .await;
    assert_ne!(code, 0, "a block device opened from a container");
    assert!(err.contains("Operation not permitted"), "{err}");
    assert_eq!(
        sh(&mut rt, &id, ": </dev/null && : </dev/urandom").await.0,
        0
    );

    // CRI devices: nodes with the host's numbers, permissions as asked.
    let mut c = container(
        "devs",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    // CAP_SYSLOG so that only the device cgroup decides about reading.
    crate::container::add_capabilities(&mut c, &["SYSLOG"]);
    c.devices = vec![
        device("/dev/null", "/dev/xnull", "rw"),
        device("/dev/kmsg", "/dev/sub/xkmsg", "r"),
    ];
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    assert_eq!(sh(&mut rt, &id, "echo x >/dev/xnull").await.0, 0);
    let out = exec(
        &mut rt,
        &id,
        &["stat", "-c", "%F %t:%T", "/dev/sub/xkmsg"],
        5,
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "character special file 1:b\n"
    );
    assert_eq!(
        sh(&mut rt, &id, ": </dev/sub/xkmsg").await.0,
        0,
        "r was asked for"
    );
    let (code, err) = sh(&mut rt, &id, ": >/dev/sub/xkmsg").await;
    assert_ne!(code, 0, "a read-only device written");
    assert!(err.contains("Operation not permitted"), "{err}");

    let (_, info) = status(&mut rt, &id).await;
    let cgroups_path = info["runtimeSpec"]["linux"]["cgroupsPath"]
        .as_str()
        .unwrap()
        .to_string();
    if let Some(list) = v1_devices_list(&cgroups_path) {
        // (v1 merges the CRI /dev/null's "rw" into the default "rwm".)
        for rule in ["c *:* m", "b *:* m", "c 1:3 rwm", "c 136:* rwm", "c 1:11 r"] {
            assert!(list.lines().any(|l| l == rule), "{rule} not in {list}");
        }
        assert!(
            !list.contains("a *:*") && !list.contains("c 1:11 rw"),
            "{list}"
        );
    }

    // Privileged: refused in this pod, everything allowed in a privileged one.
    let mut c = container("priv", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod);
    privileged(&mut c);
    let e = create(&mut rt, &pod, c.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("privileged"), "{}", e.message());
    let mut pc = pod_config("devpriv", NamespaceMode::Pod, &logs);
    pc.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let ppod = pod::run(&mut rt, pc).await.unwrap();
    let pid = create(&mut rt, &ppod, c).await.unwrap();
    start(&mut rt, &pid).await;
    let (code, err) = sh(&mut rt, &pid, "mknod /kmsg c 1 11 && : </kmsg && : >/kmsg").await;
    assert_eq!(code, 0, "privileged: {err}");

    pod::stop_remove(&mut rt, &pod).await;
    pod::stop_remove(&mut rt, &ppod).await;
    pod::assert_no_trace(&s.d);
}

/// The hostile campaign's devices and log paths: each InvalidArgument,
/// naming the field, with nothing created on the host and no container
/// left; a symlink planted in the pod's log directory is not followed.
#[tokio::test(flavor = "multi_thread")]
async fn boundary_hostile_devices_and_log_paths_leave_nothing() {
    require_registry_tools!();
    let s: Setup = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = pod::run(&mut rt, pod_config("hostile", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let victim = s.d.dir.path().join("victim");
    std::fs::write(&victim, "host\n").unwrap();
    let missing = format!("/dev/crius-missing-{}", std::process::id());
    let base = || container("h", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod);

    for (d, field) in [
        (
            device(victim.to_str().unwrap(), "/dev/xdb", "rwm"),
            "host_path",
        ),
        (device(&missing, "/dev/sda", "rwm"), "host_path"),
        (device("/dev/../etc/passwd", "/dev/p", "r"), "host_path"),
        (device("/dev/null", "/dev/../../n", "rw"), "container_path"),
        (device("/dev/null", "/dev/n", "rwx"), "permissions"),
    ] {
        let mut c = base();
        c.devices = vec![d.clone()];
        let e = create(&mut rt, &pod, c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{d:?}: {e:?}");
        assert!(
            e.message().contains(&format!("device {field}")),
            "{d:?}: {}",
            e.message()
        );
    }
    assert!(
        !Path::new(&missing).exists(),
        "{missing} created on the host"
    );

    for bad in ["../escape.log", "/tmp/crius-escape.log", "a/../../b.log"] {
        let mut c = base();
        c.log_path = bad.into();
        let e = create(&mut rt, &pod, c).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad}: {e:?}");
        assert!(e.message().contains("log_path"), "{}", e.message());
    }
    assert!(!Path::new("/tmp/crius-escape.log").exists());
    assert!(!logs.parent().unwrap().join("escape.log").exists());

    // Planted in the log directory: the file itself, and a directory
    // leading out of it.
    std::os::unix::fs::symlink(&victim, logs.join("planted.log")).unwrap();
    std::os::unix::fs::symlink(s.d.dir.path(), logs.join("out")).unwrap();
    for planted in ["planted.log", "out/victim"] {
        let mut c = base();
        c.log_path = planted.into();
        // Refused by the monitor, which opens the log file as it makes the
        // init: StartContainer reports it.
        let e = refused(&mut rt, &pod, c).await;
        assert!(e.message().contains("log"), "{planted}: {e:?}");
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host\n");

    let left = rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(left.is_empty(), "{left:?}");
    let dirs: Vec<_> = std::fs::read_dir(s.d.root.join("containers"))
        .unwrap()
        .flatten()
        .collect();
    assert!(dirs.is_empty(), "container dirs left: {dirs:?}");
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `setpriv` as nobody (65534, no groups): whether `args` succeed. A
/// shell as nobody execs them: on this host the execve setpriv itself
/// makes right after setresuid still passes directory permissions.
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["sh", "-c", "exec \"$@\"", "sh"])
        .args(args)
        .output()
        .expect("setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A host user can neither run a set-uid binary a container left in its
/// upper dir (CVE-2021-41091) nor read the database (it holds every
/// container's environment): root and state 0711, internal dirs 0700, the
/// database 0600.
#[tokio::test(flavor = "multi_thread")]
async fn boundary_storage_is_closed_to_host_users() {
    require_registry_tools!();
    let s: Setup = setup_with_env(&[]).await;
    // Only crius's own modes may stand in the way: open the test's dir.
    std::fs::set_permissions(s.d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("store", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let mut c = container("suid", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod);
    c.envs = vec![KeyValue {
        key: "SECRET".into(),
        value: "hunter2".into(),
    }];
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    // Named after an applet: busybox picks it from argv[0].
    let (code, err) = sh(&mut rt, &id, "cp /bin/busybox /true && chmod 4755 /true").await;
    assert_eq!(code, 0, "{err}");

    assert_eq!(mode(&s.d.root), 0o711);
    assert_eq!(mode(&s.d.state), 0o711);
    for d in ["containers", "image"] {
        assert_eq!(mode(&s.d.root.join(d)), 0o700, "{d}");
    }
    for d in ["pods", "ns"] {
        assert_eq!(mode(&s.d.state.join(d)), 0o700, "{d}");
    }
    assert_eq!(mode(&s.d.root.join("containers").join(&id)), 0o700);
    let db = s.d.root.join("crius.redb");
    assert_eq!(mode(&db), 0o600);

    let suid = s.d.root.join("containers").join(&id).join("u/true");
    assert_eq!(mode(&suid), 0o4755, "the container's set-uid file");
    // The control: the same file where a host user may reach it runs.
    let reachable = s.d.dir.path().join("reachable");
    std::fs::create_dir(&reachable).unwrap();
    std::fs::copy(&suid, reachable.join("true")).unwrap();
    let (ok, err) = as_nobody(&[reachable.join("true").to_str().unwrap()]);
    assert!(ok, "control: {err}");
    let (ok, err) = as_nobody(&[suid.to_str().unwrap()]);
    assert!(!ok, "a host user ran the container's set-uid binary");
    assert!(err.contains("Permission denied"), "{err}");
    let (ok, err) = as_nobody(&["cat", db.to_str().unwrap()]);
    assert!(!ok, "a host user read the database");
    assert!(err.contains("Permission denied"), "{err}");

    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}
