//! Ways out of a container that the init and the pod init must close, each
//! tried as the attack itself (issue 10): a forged cap_last_cap, mounts that
//! resolve onto procfs, a /dev that plants its own `null`, and the pod init
//! seen through /proc/1 from a container holding CAP_SYS_PTRACE.

use std::path::Path;

use crius::cri::proto::*;

use crate::container::{
    add_capabilities, container, create, exec, pod_config, refused, setup_with_env, start,
};
use crate::pod;
use crate::require_registry_tools;

/// Docker's and containerd's default bounding set (the 14 default
/// capabilities): what a default container must show as CapBnd.
const DEFAULT_CAPS: u64 = 0xa80425fb;

fn bind(src: &Path, dst: &str, readonly: bool) -> Mount {
    Mount {
        container_path: dst.into(),
        host_path: src.display().to_string(),
        readonly,
        ..Default::default()
    }
}

fn status_field(status: &[u8], name: &str) -> String {
    String::from_utf8_lossy(status)
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in {}", String::from_utf8_lossy(status)))
}

#[tokio::test(flavor = "multi_thread")]
async fn mounts_onto_procfs_and_dev_are_refused_and_caps_stay_bounded() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(
        &mut rt,
        pod_config("escape", NamespaceMode::Container, &logs),
    )
    .await
    .unwrap();
    let host = s.d.dir.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    // A ConfigMap-like file holding "0": over cap_last_cap it would have
    // stopped the init from dropping any capability.
    std::fs::write(host.join("zero"), "0\n").unwrap();
    // A volume whose symlink leads into /proc inside the container.
    let vol = host.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel", vol.join("k")).unwrap();
    let containers_before = std::fs::read_dir(s.d.root.join("containers"))
        .map(|r| r.count())
        .unwrap_or(0);

    let attacks: Vec<(&str, Vec<Mount>)> = vec![
        (
            "direct",
            vec![bind(
                &host.join("zero"),
                "/proc/sys/kernel/cap_last_cap",
                true,
            )],
        ),
        (
            "symlink",
            vec![
                bind(&vol, "/data", false),
                bind(&host.join("zero"), "/data/k/cap_last_cap", true),
            ],
        ),
        (
            "core_pattern",
            vec![bind(
                &host.join("zero"),
                "/proc/sys/kernel/core_pattern",
                true,
            )],
        ),
        // Any sysfs target that exists (a dir here: /sys is read-only, so
        // nothing missing can be created there anyway).
        ("sysfs", vec![bind(&vol, "/sys/kernel", true)]),
    ];
    for (name, mounts) in attacks {
        let mut c = container(
            name,
            &s.busybox,
            &["sleep", "1000"],
            NamespaceMode::Container,
        );
        c.mounts = mounts;
        let err = refused(&mut rt, &pod, c).await;
        assert!(
            err.message().contains("resolves onto procfs")
                || err.message().contains("resolves onto sysfs"),
            "{name}: {err:?}"
        );
    }
    // A volume replacing /dev (where a planted `null` would turn masking
    // into a writable bind of anything) is refused before anything is made.
    let dev = host.join("dev");
    std::fs::create_dir_all(&dev).unwrap();
    std::os::unix::fs::symlink("/proc/sys/kernel/core_pattern", dev.join("null")).unwrap();
    for path in ["/dev", "/dev/", "/x/../dev"] {
        let mut c = container(
            "dev",
            &s.busybox,
            &["sleep", "1000"],
            NamespaceMode::Container,
        );
        c.mounts = vec![bind(&dev, path, false)];
        let err = refused(&mut rt, &pod, c).await;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{path}: {err:?}");
    }
    // A file planted at /dev/null itself is no 1:3 device: masking refuses it.
    let mut c = container(
        "null",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    c.mounts = vec![bind(&host.join("zero"), "/dev/null", false)];
    let err = refused(&mut rt, &pod, c).await;
    assert!(err.message().contains("/dev/null"), "{err:?}");
    assert_eq!(
        std::fs::read_to_string(host.join("zero")).unwrap(),
        "0\n",
        "the host file is untouched"
    );
    // Refusals leave no container dir (a removal's release ends after
    // its reply).
    let count = || {
        std::fs::read_dir(s.d.root.join("containers"))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    pod::wait_for(
        "refusals to leave no container dir",
        std::time::Duration::from_secs(10),
        || count() == containers_before,
    )
    .await;

    // The allowed ones still work, and the bounding set is the default one.
    let mut c = container(
        "ok",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Container,
    );
    c.mounts = vec![
        bind(&host.join("zero"), "/proc/uptime", true),
        bind(&dev, "/dev/extra", true),
    ];
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    let out = exec(&mut rt, &id, &["cat", "/proc/self/status"], 5)
        .await
        .unwrap();
    let bnd = u64::from_str_radix(&status_field(&out.stdout, "CapBnd:"), 16).unwrap();
    assert_eq!(bnd, DEFAULT_CAPS, "bounding set {bnd:x}");
    let out = exec(&mut rt, &id, &["cat", "/proc/uptime"], 5)
        .await
        .unwrap();
    assert_eq!(
        out.stdout, b"0\n",
        "an allowlisted /proc file can be covered"
    );
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pod_init_shows_a_container_nothing_of_the_host() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("podinit", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let mut c = container("spy", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod);
    add_capabilities(&mut c, &["CAP_SYS_PTRACE"]);
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    let out = exec(&mut rt, &id, &["cat", "/proc/1/status"], 5)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(status_field(&out.stdout, "Name:"), "crius-init");
    assert_eq!(
        status_field(&out.stdout, "Uid:"),
        "65535\t65535\t65535\t65535"
    );
    assert_eq!(
        status_field(&out.stdout, "Gid:"),
        "65535\t65535\t65535\t65535"
    );
    assert_eq!(status_field(&out.stdout, "CapBnd:"), "0000000000000000");
    assert_eq!(status_field(&out.stdout, "CapEff:"), "0000000000000000");
    assert_eq!(status_field(&out.stdout, "NoNewPrivs:"), "1");
    // Its root is an empty tmpfs, its mount table that tmpfs alone.
    let out = exec(&mut rt, &id, &["ls", "-A", "/proc/1/root/"], 5)
        .await
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "the pod init's root shows {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = exec(&mut rt, &id, &["cat", "/proc/1/mountinfo"], 5)
        .await
        .unwrap();
    let mountinfo = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(mountinfo.lines().count(), 1, "{mountinfo}");
    assert!(mountinfo.contains(" / / ro,"), "{mountinfo}");
    // Nothing of the host can be written through it either.
    let out = exec(&mut rt, &id, &["sh", "-c", "echo x > /proc/1/root/x"], 5)
        .await
        .unwrap();
    assert_ne!(out.exit_code, 0);
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}

/// Connects to `socket` (reached through `dir`, an O_PATH fd of its
/// directory) from a thread whose own uid is `uid` (setresuid(2) as a raw
/// syscall changes only the calling thread) and says whether the monitor
/// hung up at once (true) or kept the connection waiting for a request.
fn hung_up_on(dir: &std::fs::File, uid: u32) -> bool {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let path = format!("/proc/thread-self/fd/{}/monitor.sock", dir.as_raw_fd());
    std::thread::spawn(move || {
        #[allow(unsafe_code)]
        // SAFETY: a raw setresuid changes this thread's credentials only
        // (glibc's wrapper would change every thread's); the thread ends here.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
        assert_eq!(rc, 0, "setresuid {uid}");
        let mut s = std::os::unix::net::UnixStream::connect(&path).expect("connect");
        s.set_read_timeout(Some(std::time::Duration::from_millis(1500)))
            .unwrap();
        let mut buf = [0u8; 64];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    })
    .join()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_root_may_speak_to_a_monitor() {
    use std::os::unix::fs::PermissionsExt;
    let d = crate::harness::TestDaemon::start("").await;
    let mut rt = d.runtime().await;
    let pod = pod::run(&mut rt, pod::config("peer")).await.unwrap();
    let pod_dir = d.state.join("pods").join(&pod);
    let socket = pod_dir.join("monitor.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "monitor socket mode {mode:o}");
    // Take the first fences away (directory and socket modes) to see the
    // second one: the peer's credentials.
    let dir_mode = std::fs::metadata(&pod_dir).unwrap().permissions().mode();
    std::fs::set_permissions(&pod_dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let dir = std::fs::File::open(&pod_dir).unwrap();
    let stranger = hung_up_on(&dir, 65534);
    let root = hung_up_on(&dir, 0);
    std::fs::set_permissions(&pod_dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(stranger, "a non-root peer was kept");
    assert!(!root, "root was hung up on");
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&d);
}

/// Size and change times of a file, to see that a host binary was not
/// written (debug binaries are too big to hash in every test run).
fn digest(path: &Path) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (
        m.len(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.ctime_nsec() + m.ctime() * 1_000_000_000,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn no_container_can_write_the_binaries_of_crius_processes() {
    require_registry_tools!();
    let s = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let pod = pod::run(&mut rt, pod_config("exe", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let bins = Path::new(crate::harness::BIN)
        .parent()
        .unwrap()
        .to_path_buf();
    let monitor_bin = bins.join("crius-monitor");
    let init_bin = bins.join("crius-pod-init");
    let before = (digest(&monitor_bin), digest(&init_bin));
    // The host side: the monitor and the pod init run from handles nothing
    // can write through (a read-only detached mount or a sealed memfd).
    let monitors = crate::harness::monitor_pids(&s.d.state);
    assert_eq!(monitors.len(), 1);
    let init = crate::harness::children_of(monitors[0])[0];
    for pid in [monitors[0], init] {
        let exe = std::fs::File::open(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            !crius::sys::exe::writable(&exe).unwrap(),
            "/proc/{pid}/exe can be written"
        );
        assert!(
            std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/exe"))
                .is_err(),
            "/proc/{pid}/exe opened for writing"
        );
    }
    // The attack: a container in the host's PID namespace with
    // CAP_SYS_PTRACE writes to the exe of every process it can see.
    let mut c = container(
        "attacker",
        &s.busybox,
        &["sleep", "1000"],
        NamespaceMode::Node,
    );
    add_capabilities(&mut c, &["CAP_SYS_PTRACE"]);
    let id = create(&mut rt, &pod, c).await.unwrap();
    start(&mut rt, &id).await;
    let script = format!(
        "ok=0; for p in {} {}; do if echo pwned >> /proc/$p/exe; then ok=1; fi; done; echo $ok",
        monitors[0], init
    );
    let out = exec(&mut rt, &id, &["sh", "-c", &script], 10)
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "a write went through: {out:?}"
    );
    assert_eq!((digest(&monitor_bin), digest(&init_bin)), before);
    pod::stop_remove(&mut rt, &pod).await;
    pod::assert_no_trace(&s.d);
}
