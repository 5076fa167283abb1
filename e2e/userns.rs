//! Pods with their own user namespace (hostUsers: false): container root
//! is an unprivileged host user, seen through /proc/PID/uid_map and
//! status; files keep their owners through idmapped mounts (the image's
//! root-owned files are the container root's, a volume's files keep their
//! host owners, files the container writes into its rootfs belong to the
//! mapped ids on the host); root of the pod's network namespace may bind
//! port 80 and set an interface up there, but loads no module and mounts
//! no block device; bad mappings and modes are refused.
//!
//! Status reports `user_namespaces` only where the daemon's probe passed:
//! this test host (6.18, the tests' dirs on ext4) passes all three probes,
//! and so do the VM guests (Debian 12's 6.1, hack/vm/tests.list), whose
//! userns line puts the tests' dirs on an ext4 disk (TMPDIR=/var/tmp).
//! Where the dirs are on tmpfs, which 6.1 cannot idmap (tmpfs idmapped
//! mounts came with 6.3), Status says false and a hostUsers:false pod is
//! FAILED_PRECONDITION naming that probe; the refusals are the same.
//!
//! A delegated cgroup (CRI-O's annotation) needs cgroup v2: tested for real
//! in the VM guests; this v1 host checks its refusal.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crius::cri::proto::*;
use tonic::Code;

use crate::container::{
    Setup, add_capabilities, container, create, exec, pod_config, setup_with_env, start, status,
};
use crate::pod;
use crate::require_registry_tools;

const HOST_BASE: u32 = 200_000;
const LENGTH: u32 = 65_536;

fn mapping(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        container_id,
        host_id,
        length,
    }
}

fn with_userns(mut c: PodSandboxConfig, u: UserNamespace) -> PodSandboxConfig {
    c.linux
        .get_or_insert_default()
        .security_context
        .get_or_insert_default()
        .namespace_options
        .get_or_insert_default()
        .userns_options = Some(u);
    c
}

fn pod_userns() -> UserNamespace {
    UserNamespace {
        mode: NamespaceMode::Pod as i32,
        uids: vec![mapping(0, HOST_BASE, LENGTH)],
        gids: vec![mapping(0, HOST_BASE, LENGTH)],
    }
}

/// Whether the tests' temp dir (where the daemons' roots are) is on tmpfs,
/// which Linux before 6.3 cannot idmap: the one reason Status may say no
/// to user namespaces on the machines these tests run on (a VM guest
/// whose TMPDIR is its tmpfs /tmp).
fn temp_dir_on_tmpfs() -> bool {
    nix::sys::statfs::statfs(&std::env::temp_dir())
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Whether Status reports `user_namespaces` for the default handler;
/// where it does not, the tests' temp dir must be on tmpfs.
async fn userns_supported(rt: &mut pod::Client, s: &Setup) -> bool {
    let features = pod::handler_features(rt).await;
    assert!(
        features.user_namespaces || temp_dir_on_tmpfs(),
        "no user namespaces with the daemon's root off tmpfs: {}",
        s.d.log()
    );
    features.user_namespaces
}

/// An exec's exit code, stdout and stderr.
async fn sh(rt: &mut pod::Client, id: &str, script: &str) -> (i32, String, String) {
    let out = exec(rt, id, &["sh", "-c", script], 10).await.unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The effective uid in /proc/PID/status (as the host sees it).
fn host_uid(pid: i64) -> u32 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn userns_pod_root_is_an_unprivileged_host_user() {
    require_registry_tools!();
    let s: Setup = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let st = rt
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let features = st.runtime_handlers[0].features.unwrap();
    let config: serde_json::Value = serde_json::from_str(&st.info["config"]).unwrap();
    assert!(config["stateDir"].is_string(), "{config}");
    let logs = s.d.dir.path().join("logs");
    if !features.user_namespaces {
        // Only a VM guest may lack it: its 6.1 kernel cannot idmap tmpfs,
        // where its /tmp is (tests.list gives the userns line an ext4
        // TMPDIR). Then such a pod is refused, saying why.
        assert!(
            temp_dir_on_tmpfs(),
            "the user namespace probes fail on this host: {}",
            s.d.log()
        );
        let pc = with_userns(
            pod_config("userns", NamespaceMode::Pod, &logs),
            pod_userns(),
        );
        let e = pod::run(&mut rt, pc).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("userns_options"), "{}", e.message());
        assert!(e.message().contains("idmapped mount"), "{}", e.message());
        eprintln!("user namespaces not supported here: {}", e.message());
        pod::assert_no_trace(&s.d);
        return;
    }

    let pc = with_userns(
        pod_config("userns", NamespaceMode::Pod, &logs),
        pod_userns(),
    );
    let pod_id = pod::run(&mut rt, pc).await.unwrap();
    // The pod init (PID mode POD) runs as uid 65535 of the namespace.
    let ps = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&ps.info["info"]).unwrap();
    let init_pid = info["initPid"].as_i64().unwrap();
    assert_eq!(host_uid(init_pid), HOST_BASE + 65535);
    let echoed = ps
        .status
        .unwrap()
        .linux
        .unwrap()
        .namespaces
        .unwrap()
        .options
        .unwrap();
    assert_eq!(echoed.userns_options, Some(pod_userns()));

    let vol = s.d.dir.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::os::unix::fs::chown(&vol, Some(0), Some(0)).unwrap();
    let mut c = container("c", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod);
    c.mounts = vec![Mount {
        container_path: "/vol".into(),
        host_path: vol.display().to_string(),
        ..Default::default()
    }];
    add_capabilities(&mut c, &["NET_ADMIN", "SYS_ADMIN", "SYS_MODULE", "MKNOD"]);
    let id = create(&mut rt, &pod_id, c).await.unwrap();
    start(&mut rt, &id).await;
    let (_, cinfo) = status(&mut rt, &id).await;
    let pid = cinfo["pid"].as_i64().unwrap();

    // 1. Root inside, HOST_BASE outside.
    let (code, out, err) = sh(&mut rt, &id, "id -u; id -g; cat /proc/self/uid_map").await;
    assert_eq!(code, 0, "{err}");
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "0", "0", &HOST_BASE.to_string(), &LENGTH.to_string()]
    );
    assert_eq!(host_uid(pid), HOST_BASE);
    let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0", &HOST_BASE.to_string(), &LENGTH.to_string()]
    );

    // 2. Owners: the image's files are root's (idmapped layers, never
    //    chowned), the volume keeps host owners both ways, the rootfs'
    //    new files belong to the mapped ids on the host.
    let (code, out, err) = sh(
        &mut rt,
        &id,
        "stat -c '%u:%g' /bin/busybox /vol && echo x >/vol/by-root && \
         touch /vol/by-1234 && chown 1234:1234 /vol/by-1234 && \
         echo y >/in-rootfs && chown 7:7 /bin/busybox",
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "0:0\n0:0\n");
    let owner = |p: &Path| {
        let m = std::fs::metadata(p).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(&vol.join("by-root")), (0, 0));
    assert_eq!(owner(&vol.join("by-1234")), (1234, 1234));
    let upper = s.d.root.join("containers").join(&id).join("u");
    assert_eq!(owner(&upper.join("in-rootfs")), (HOST_BASE, HOST_BASE));
    // The copied-up binary: the mapped container ids, the layer untouched.
    assert_eq!(
        owner(&upper.join("bin/busybox")),
        (HOST_BASE + 7, HOST_BASE + 7)
    );
    let out = std::process::Command::new("find")
        .arg(s.d.root.join("image"))
        .args(["-path", "*/bin/busybox"])
        .output()
        .unwrap();
    let layer_files = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!layer_files.trim().is_empty(), "no busybox in a layer");
    for f in layer_files.lines() {
        assert_eq!(owner(Path::new(f)), (0, 0), "{f} chowned");
    }

    // 3. Root of the pod's network namespace.
    let (code, _, err) = sh(
        &mut rt,
        &id,
        "ip link set lo down && ip link set lo up && \
         (nc -l -p 80 </dev/null >/dev/null & i=0; \
          while [ $i -lt 200 ]; do \
            cat /proc/net/tcp /proc/net/tcp6 | grep -q ':0050 ' && exit 0; \
            sleep 0.05; i=$((i+1)); \
          done; exit 1)",
    )
    .await;
    assert_eq!(code, 0, "network admin in its own namespace: {err}");

    // 4. But not the host's root: no module, no block device mount (even
    //    with CAP_SYS_MODULE, CAP_SYS_ADMIN and CAP_MKNOD asked for).
    //    (A kernel built without modules, as this test host's 6.18 is,
    //    says ENOSYS to everyone, host root included; the VM guest's 6.1
    //    has modules and must say EPERM.)
    let (code, _, err) = sh(&mut rt, &id, "insmod /bin/busybox").await;
    assert_ne!(code, 0);
    if Path::new("/proc/modules").exists() {
        assert!(err.contains("Operation not permitted"), "insmod: {err}");
    } else {
        assert!(err.contains("does not support"), "insmod: {err}");
    }
    let (code, _, err) = sh(
        &mut rt,
        &id,
        "mknod /dev/blk b 7 0; mkdir -p /mnt/x && mount -t ext4 /dev/blk /mnt/x",
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("Operation not permitted") || err.contains("Permission denied"),
        "mount: {err}"
    );

    pod::stop_remove(&mut rt, &pod_id).await;
    pod::assert_no_trace(&s.d);
}

/// Bad user namespace requests: InvalidArgument naming the field, with no
/// pod left; a container may only repeat its pod's user namespace.
#[tokio::test(flavor = "multi_thread")]
async fn userns_bad_requests_are_refused() {
    require_registry_tools!();
    let s: Setup = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let two = vec![mapping(0, 1000, 100_000), mapping(0, 2000, 100_000)];
    let cases = [
        (
            UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: two.clone(),
                gids: two,
            },
            "exactly one mapping",
        ),
        (
            UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![mapping(1, 1000, 100_000)],
                gids: vec![mapping(1, 1000, 100_000)],
            },
            "container id 0",
        ),
        (
            UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![mapping(0, 0, 100_000)],
                gids: vec![mapping(0, 0, 100_000)],
            },
            "host root",
        ),
        (
            UserNamespace {
                mode: NamespaceMode::Container as i32,
                ..Default::default()
            },
            "CONTAINER",
        ),
        (
            UserNamespace {
                mode: NamespaceMode::Target as i32,
                ..Default::default()
            },
            "TARGET",
        ),
    ];
    for (u, says) in cases {
        let pc = with_userns(pod_config("bad", NamespaceMode::Pod, &logs), u.clone());
        let e = pod::run(&mut rt, pc).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{u:?}: {e:?}");
        assert!(e.message().contains("userns_options"), "{}", e.message());
        assert!(e.message().contains(says), "{says}: {}", e.message());
    }
    // Host namespaces belong to the host's user namespace.
    let pc = with_userns(
        pod::with_namespaces(
            pod::config("hostnet"),
            NamespaceMode::Node,
            NamespaceMode::Pod,
            NamespaceMode::Pod,
        ),
        pod_userns(),
    );
    let e = pod::run(&mut rt, pc).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("hostNetwork"), "{}", e.message());

    // A container asking for another user namespace than its pod's.
    let pod_id = pod::run(&mut rt, pod_config("plain", NamespaceMode::Pod, &logs))
        .await
        .unwrap();
    let mut c = container("c", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod);
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options
        .as_mut()
        .unwrap()
        .userns_options = Some(pod_userns());
    let e = create(&mut rt, &pod_id, c).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("userns_options"), "{}", e.message());
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1, "only the plain pod: {pods:?}");
    pod::stop_remove(&mut rt, &pod_id).await;
    pod::assert_no_trace(&s.d);
}

/// What else a hostUsers:false container sees with the mapped owners: its
/// image volumes (idmapped layers, one bound or several overlaid), its CRI
/// device nodes, the pod's /etc/hostname, /etc/resolv.conf and /dev/shm
/// (all root's inside, where they were the overflow id before); and the
/// pod's sysctls (net, IPC, mqueue), written inside its namespaces, which
/// belong to its user namespace.
#[tokio::test(flavor = "multi_thread")]
async fn userns_volumes_devices_pod_files_and_sysctls() {
    require_registry_tools!();
    let s: Setup = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    if !userns_supported(&mut rt, &s).await {
        // userns_pod_root_is_an_unprivileged_host_user checks the refusal.
        eprintln!("skipped: user namespaces are not supported here");
        return;
    }
    let layered = s.reg.image("layered");
    s.pull(&layered).await;
    let logs = s.d.dir.path().join("logs");
    let mut pc = with_userns(pod_config("uvol", NamespaceMode::Pod, &logs), pod_userns());
    pc.linux.as_mut().unwrap().sysctls = std::collections::HashMap::from([
        ("net.ipv4.ip_forward".into(), "1".into()),
        ("kernel.shmmni".into(), "1234".into()),
        ("fs.mqueue.msg_max".into(), "17".into()),
    ]);
    let pod_id = pod::run(&mut rt, pc).await.unwrap();
    let volume = |path: &str, image: &str| Mount {
        container_path: path.into(),
        readonly: true,
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut c = container("c", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod);
    c.mounts = vec![volume("/one", &s.busybox), volume("/two", &layered)];
    c.devices = vec![Device {
        container_path: "/dev/xnull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let id = create(&mut rt, &pod_id, c).await.unwrap();
    start(&mut rt, &id).await;

    let (code, out, err) = sh(
        &mut rt,
        &id,
        "stat -c '%u:%g %n' /one/bin/busybox /two/bin/true /dev/xnull \
         /etc/hostname /etc/resolv.conf /dev/shm && \
         /one/bin/true && echo x >/dev/xnull && echo y >/dev/shm/f && \
         echo host-uvol >/etc/hostname && cat /etc/hostname && \
         cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni /proc/sys/fs/mqueue/msg_max",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        "0:0 /one/bin/busybox\n0:0 /two/bin/true\n0:0 /dev/xnull\n\
         0:0 /etc/hostname\n0:0 /etc/resolv.conf\n0:0 /dev/shm\n\
         host-uvol\n1\n1234\n17\n"
    );
    // On the host: the files are the mapped root's, the layers untouched.
    let pods = s.d.state.join("pods").join(&pod_id);
    for f in ["hostname", "resolv.conf"] {
        let m = std::fs::metadata(pods.join(f)).unwrap();
        assert_eq!((m.uid(), m.gid()), (HOST_BASE, HOST_BASE), "{f}");
    }
    let m = std::fs::metadata(pods.join("shm/f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (HOST_BASE, HOST_BASE), "/dev/shm/f");
    // The host's own sysctls are not the pod's.
    assert_ne!(
        std::fs::read_to_string("/proc/sys/kernel/shmmni")
            .unwrap()
            .trim(),
        "1234"
    );

    pod::stop_remove(&mut rt, &pod_id).await;
    pod::assert_no_trace(&s.d);
}

/// CRI-O's pod annotation for a writable, delegated cgroup.
const CGROUP_RW: &str = "io.kubernetes.cri-o.cgroup2-mount-hierarchy-rw";

/// The innermost pid of host process `pid` (its pid in the pod's PID
/// namespace), from the NSpid line of /proc/PID/status.
fn pod_pid(pid: i64) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    line.split_whitespace().last().unwrap().to_string()
}

/// A hostUsers:false pod with CRI-O's cgroup annotation. Everywhere: the
/// annotation without a user namespace, or with a value other than
/// true/false, is InvalidArgument naming it. On a cgroup v1 host (this
/// one) the pod is FAILED_PRECONDITION. On cgroup v2 (the VM guests) the
/// container's /sys/fs/cgroup is writable and its cgroup its root's:
/// container root makes a child cgroup, moves the container's processes
/// into it, enables pids there and sets a child's limit; it cannot raise
/// its own limits, mount the whole hierarchy, move its sibling's process,
/// or nest deeper than crius's bound; on the host the cgroup dir and its
/// delegated files are the mapped root's, the limits stay root's, and the
/// pod's removal takes the sub-tree with it.
#[tokio::test(flavor = "multi_thread")]
async fn userns_delegated_cgroup() {
    require_registry_tools!();
    let s: Setup = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    let logs = s.d.dir.path().join("logs");
    let annotated = |pc: PodSandboxConfig, value: &str| {
        let mut pc = pc;
        pc.annotations.insert(CGROUP_RW.into(), value.into());
        pc
    };
    let e = pod::run(
        &mut rt,
        annotated(pod_config("cgplain", NamespaceMode::Pod, &logs), "true"),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(CGROUP_RW), "{}", e.message());
    assert!(e.message().contains("user namespace"), "{}", e.message());
    let e = pod::run(
        &mut rt,
        annotated(
            with_userns(pod_config("cgbad", NamespaceMode::Pod, &logs), pod_userns()),
            "yes",
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains(CGROUP_RW), "{}", e.message());

    let pc = annotated(
        with_userns(pod_config("cgrw", NamespaceMode::Pod, &logs), pod_userns()),
        "true",
    );
    if !userns_supported(&mut rt, &s).await {
        let e = pod::run(&mut rt, pc).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        eprintln!("user namespaces are not supported here: {}", e.message());
        pod::assert_no_trace(&s.d);
        return;
    }
    if !crate::cgroup::unified() {
        let e = pod::run(&mut rt, pc).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains(CGROUP_RW), "{}", e.message());
        assert!(e.message().contains("cgroup v2"), "{}", e.message());
        pod::assert_no_trace(&s.d);
        return;
    }

    let pod_id = pod::run(&mut rt, pc).await.unwrap();
    let mut a = container("a", &s.busybox, &["sleep", "1000"], NamespaceMode::Pod);
    add_capabilities(&mut a, &["SYS_ADMIN"]);
    let a = create(&mut rt, &pod_id, a).await.unwrap();
    start(&mut rt, &a).await;
    let b = create(
        &mut rt,
        &pod_id,
        container("b", &s.busybox, &["sleep", "2000"], NamespaceMode::Pod),
    )
    .await
    .unwrap();
    start(&mut rt, &b).await;
    let a_pid = status(&mut rt, &a).await.1["pid"].as_i64().unwrap();
    let b_pid = status(&mut rt, &b).await.1["pid"].as_i64().unwrap();
    let a_leaf = crate::cgroup::of_pid(a_pid as i32, "pids").unwrap();
    let b_leaf = crate::cgroup::of_pid(b_pid as i32, "pids").unwrap();
    assert_ne!(a_leaf, b_leaf);
    let leaf_dir = crate::cgroup::dir(&a_leaf, "pids");
    let owner = |p: &Path| std::fs::metadata(p).unwrap().uid();

    // 1. The host side: the dir and the delegated files are the mapped
    //    root's, the limits root's.
    assert_eq!(owner(&leaf_dir), HOST_BASE);
    for f in ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
        assert_eq!(owner(&leaf_dir.join(f)), HOST_BASE, "{f}");
    }
    for f in ["pids.max", "memory.max", "cgroup.max.depth"] {
        assert_eq!(owner(&leaf_dir.join(f)), 0, "{f}");
    }

    // 2. Container root's view: its own cgroup is the root, writable; it
    //    makes a child and moves every process of its cgroup there.
    let (code, out, err) = sh(
        &mut rt,
        &a,
        "cat /proc/self/cgroup && grep -c ' /sys/fs/cgroup cgroup2 rw,' /proc/self/mounts && \
         mkdir /sys/fs/cgroup/child && \
         { for p in $(cat /sys/fs/cgroup/cgroup.procs); do \
             echo $p >/sys/fs/cgroup/child/cgroup.procs 2>/dev/null; done; true; } && \
         cat /proc/self/cgroup && wc -l </sys/fs/cgroup/cgroup.procs",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["0::/", "1", "0::/child", "0"]
    );
    let child = format!("{a_leaf}/child");
    assert!(
        crate::cgroup::procs(&child).contains(&(a_pid as i32)),
        "{child}"
    );
    assert_eq!(owner(&leaf_dir.join("child")), HOST_BASE);

    // 3. What it cannot do: raise its own limits, mount the hierarchy
    //    whole, move its sibling's process, nest deeper than the bound.
    let before: Vec<String> = ["pids.max", "memory.max", "cgroup.max.depth"]
        .iter()
        .map(|f| std::fs::read_to_string(leaf_dir.join(f)).unwrap())
        .collect();
    let script = format!(
        "for f in pids.max memory.max cgroup.max.depth cgroup.max.descendants; do \
           echo 1 >/sys/fs/cgroup/$f 2>/dev/null && echo wrote $f; done; \
         mkdir -p /tmp/cg && mount -t cgroup2 none /tmp/cg 2>/dev/null && echo mounted; \
         echo {} >/sys/fs/cgroup/child/cgroup.procs 2>/dev/null && echo moved; \
         d=/sys/fs/cgroup/child; i=1; while mkdir $d/d$i 2>/dev/null; do d=$d/d$i; i=$((i+1)); done; \
         echo depth $i",
        pod_pid(b_pid)
    );
    let (code, out, err) = sh(&mut rt, &a, &script).await;
    assert_eq!(code, 0, "{out}{err}");
    // The child is level 1: d1..d9 fill levels 2..10, d10 is refused.
    assert_eq!(out.trim(), "depth 10", "{err}");
    let after: Vec<String> = ["pids.max", "memory.max", "cgroup.max.depth"]
        .iter()
        .map(|f| std::fs::read_to_string(leaf_dir.join(f)).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(
        crate::cgroup::of_pid(b_pid as i32, "pids").as_deref(),
        Some(b_leaf.as_str())
    );

    // 4. It distributes what it has: pids enabled below its root (its
    //    shell leaves the root first: no process in an inner cgroup), a
    //    limit on its child.
    let (code, out, err) = sh(
        &mut rt,
        &a,
        "echo $$ >/sys/fs/cgroup/child/cgroup.procs && \
         echo +pids >/sys/fs/cgroup/cgroup.subtree_control && \
         echo 20 >/sys/fs/cgroup/child/pids.max && cat /sys/fs/cgroup/child/pids.max",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "20");
    assert_eq!(
        std::fs::read_to_string(leaf_dir.join("child/pids.max"))
            .unwrap()
            .trim(),
        "20"
    );
    // Its root may hold no process now: an exec joins the cgroup of the
    // container's init (moved to the child above), as with runc.
    let (code, out, err) = sh(&mut rt, &a, "cat /proc/self/cgroup").await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "0::/child");

    pod::stop_remove(&mut rt, &pod_id).await;
    assert!(!leaf_dir.exists(), "{} left", leaf_dir.display());
    pod::assert_no_trace(&s.d);
}

/// A non-root user of a hostUsers:false pod reopens its stdio by path
/// (/dev/stdout, /proc/self/fd/2), as runc's fixStdioPermissions allows:
/// the container's output (into its log) and an exec's. The monitor's
/// pipes belong to host root, which the pod's namespace does not map, so
/// they are given to the namespace's root first, then to the user.
#[tokio::test(flavor = "multi_thread")]
async fn userns_non_root_user_reopens_its_stdio() {
    require_registry_tools!();
    let s: Setup = setup_with_env(&[]).await;
    let mut rt = s.d.runtime().await;
    if !userns_supported(&mut rt, &s).await {
        eprintln!("skipped: user namespaces are not supported here");
        return;
    }
    let logs = s.d.dir.path().join("logs");
    let pc = with_userns(
        pod_config("ustdio", NamespaceMode::Pod, &logs),
        pod_userns(),
    );
    let pod_id = pod::run(&mut rt, pc).await.unwrap();
    let mut c = container(
        "c",
        &s.busybox,
        &[
            "sh",
            "-c",
            "echo out-by-path >/dev/stdout; echo err-by-path >/proc/self/fd/2; sleep 1000",
        ],
        NamespaceMode::Pod,
    );
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .run_as_user = Some(Int64Value { value: 1000 });
    let id = create(&mut rt, &pod_id, c).await.unwrap();
    start(&mut rt, &id).await;
    let log = logs.join("c.log");
    let wrote = || {
        std::fs::read_to_string(&log).is_ok_and(|t| {
            t.contains(" stdout F out-by-path") && t.contains(" stderr F err-by-path")
        })
    };
    pod::wait_for(
        "the user's output reopened by path, in the log",
        std::time::Duration::from_secs(20),
        wrote,
    )
    .await;
    let (code, out, err) = sh(
        &mut rt,
        &id,
        "id -u && echo exec-by-path >/dev/stdout && echo exec-err >/proc/self/fd/2",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "1000\nexec-by-path\n");
    assert_eq!(err, "exec-err\n");

    pod::stop_remove(&mut rt, &pod_id).await;
    pod::assert_no_trace(&s.d);
}
