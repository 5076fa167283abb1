// Tests build configs step by step, field after field, for readability.
#![allow(clippy::field_reassign_with_default)]

use super::*;

fn pod() -> PodContext {
    PodContext {
        net_ns: Some("/run/crius/ns/p/net".into()),
        ipc_ns: Some("/run/crius/ns/p/ipc".into()),
        uts_ns: Some("/run/crius/ns/p/uts".into()),
        pid: PidNamespace::Pod("/proc/42/ns/pid".into()),
        shm: "/run/crius/pods/p/shm".into(),
        hostname_file: Some("/run/crius/pods/p/hostname".into()),
        resolv_conf: Some("/run/crius/pods/p/resolv.conf".into()),
        cgroup_path: "/crius/pod-p/crius-c".into(),
        cgroup_v2: false,
        cgroup_writable: false,
        user_ns: None,
    }
}

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/entry".into()],
        cmd: vec!["default-arg".into()],
        env: vec!["PATH=/image/bin".into(), "A=image".into()],
        working_dir: "/work".into(),
        user: "www".into(),
        stop_signal: "SIGQUIT".into(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn kubernetes_command_rules() {
    let img = image();
    let mut c = ContainerConfig::default();
    assert_eq!(process_args(&c, &img).unwrap(), ["/entry", "default-arg"]);
    c.args = strings(&["x"]);
    assert_eq!(
        process_args(&c, &img).unwrap(),
        ["/entry", "x"],
        "args replace Cmd only"
    );
    c.command = strings(&["/bin/sh", "-c"]);
    assert_eq!(process_args(&c, &img).unwrap(), ["/bin/sh", "-c", "x"]);
    c.args.clear();
    assert_eq!(
        process_args(&c, &img).unwrap(),
        ["/bin/sh", "-c"],
        "command drops Cmd"
    );
    let bare = ImageConfig::default();
    assert!(matches!(
        process_args(&ContainerConfig::default(), &bare),
        Err(Error::NoCommand)
    ));
    let empty_entry = ImageConfig {
        entrypoint: vec![String::new()],
        cmd: strings(&["/cmd"]),
        ..Default::default()
    };
    assert_eq!(
        process_args(&ContainerConfig::default(), &empty_entry).unwrap(),
        ["/cmd"]
    );
}

#[test]
fn env_config_overrides_image_and_keeps_bytes() {
    let mut c = ContainerConfig::default();
    c.envs = vec![
        ("A".into(), b"config".to_vec()),
        ("RAW".into(), vec![0xff, b'x']),
    ];
    let env = process_env(&c, &image());
    assert_eq!(env[0], b"PATH=/image/bin");
    assert_eq!(env[1], b"A=config", "replaced in place");
    assert_eq!(
        env[2],
        [b'R', b'A', b'W', b'=', 0xff, b'x'],
        "non-UTF-8 survives"
    );
    let no_path = process_env(&ContainerConfig::default(), &ImageConfig::default());
    assert!(no_path[0].starts_with(b"PATH=/usr/local/sbin"));
    let ab = ImageConfig {
        env: strings(&["AB=1", "A=2"]),
        ..Default::default()
    };
    let mut c = ContainerConfig::default();
    c.envs = vec![("A".into(), b"3".to_vec())];
    let env = process_env(&c, &ab);
    assert!(env.contains(&b"AB=1".to_vec()), "A does not match AB");
    assert!(env.contains(&b"A=3".to_vec()));
}

/// Issue 17: 100,000 env vars took 6.8 s and 30,000 0.7 s (a scan per
/// entry). Merged through an index, 200,000 entries overriding 200,000 of
/// the image take well under a second; a scan per entry would take
/// minutes, so the bound below only fails for a quadratic merge.
#[test]
fn env_merge_is_linear_in_the_number_of_entries() {
    const N: usize = 200_000;
    let image = ImageConfig {
        env: (0..N).map(|i| format!("IMAGE_{i}=image")).collect(),
        ..Default::default()
    };
    let mut c = ContainerConfig::default();
    c.envs = (0..N)
        .map(|i| (format!("IMAGE_{}", N - 1 - i), b"config".to_vec()))
        .collect();
    let start = std::time::Instant::now();
    let env = process_env(&c, &image);
    let took = start.elapsed();
    assert_eq!(env.len(), N + 1, "PATH + one entry per key");
    assert_eq!(env[1], b"IMAGE_0=config", "replaced in place");
    assert!(
        took < std::time::Duration::from_secs(10),
        "{N} entries took {took:?}"
    );
}

#[test]
fn user_precedence() {
    let img = image();
    let mut s = Security::default();
    assert_eq!(process_user(&s, &img), "www");
    s.run_as_username = "nobody".into();
    assert_eq!(process_user(&s, &img), "nobody");
    s.run_as_user = Some(1000);
    s.run_as_group = Some(2000);
    assert_eq!(process_user(&s, &img), "1000:2000");
    assert_eq!(
        process_user(&Security::default(), &ImageConfig::default()),
        "0"
    );
}

#[test]
fn propagation_follows_the_mounts() {
    let m = |p| BindMount {
        container_path: "/m".into(),
        host_path: "/h".into(),
        readonly: false,
        propagation: p,
        ..Default::default()
    };
    assert_eq!(rootfs_propagation(&[]), "rprivate");
    assert_eq!(rootfs_propagation(&[m(Propagation::Private)]), "rprivate");
    assert_eq!(
        rootfs_propagation(&[m(Propagation::HostToContainer)]),
        "rslave"
    );
    assert_eq!(
        rootfs_propagation(&[
            m(Propagation::HostToContainer),
            m(Propagation::Bidirectional)
        ]),
        "rshared"
    );
}

#[test]
fn capabilities_default_add_drop_privileged() {
    let mut s = Security::default();
    assert_eq!(capabilities(&s).unwrap(), DEFAULT_CAPABILITIES.to_vec());
    s.add_capabilities = strings(&["SYS_ADMIN", "cap_net_admin"]);
    s.drop_capabilities = strings(&["CAP_CHOWN"]);
    let caps = capabilities(&s).unwrap();
    assert!(caps.contains(&Capability::SysAdmin) && caps.contains(&Capability::NetAdmin));
    assert!(!caps.contains(&Capability::Chown));
    s.drop_capabilities = strings(&["ALL"]);
    assert_eq!(
        capabilities(&s).unwrap(),
        [Capability::SysAdmin, Capability::NetAdmin]
    );
    s.add_capabilities = strings(&["NOT_A_CAP"]);
    assert!(matches!(capabilities(&s), Err(Error::Invalid { .. })));
    let p = Security {
        privileged: true,
        ..Default::default()
    };
    assert_eq!(capabilities(&p).unwrap().len(), ALL_CAPABILITIES.len());
}

#[test]
fn spec_has_namespaces_mounts_and_resources() {
    let mut c = ContainerConfig::default();
    c.mounts = vec![
        BindMount {
            container_path: "/data".into(),
            host_path: "/srv/data".into(),
            readonly: true,
            propagation: Propagation::HostToContainer,
            ..Default::default()
        },
        BindMount {
            container_path: "/etc/resolv.conf".into(),
            host_path: "/custom/resolv".into(),
            readonly: false,
            propagation: Propagation::Private,
            ..Default::default()
        },
    ];
    c.resources = Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        memory_swap_limit: Some(128 << 20),
        hugepage_limits: [("2MB".to_string(), 4 << 20)].into(),
        unified: [("memory.oom.group".to_string(), "1".to_string())].into(),
        ..Default::default()
    };
    c.oom_score_adj = Some(999);
    let built = build(&c, &image(), &pod(), Path::new("/rootfs")).unwrap();
    let spec = built.spec;
    let linux = spec.linux().as_ref().unwrap();
    let ns = linux.namespaces().as_ref().unwrap();
    let find = |t| ns.iter().find(|n| n.typ() == t);
    assert!(
        find(LinuxNamespaceType::Mount).unwrap().path().is_none(),
        "new mount ns"
    );
    assert_eq!(
        find(LinuxNamespaceType::Network).unwrap().path().as_deref(),
        Some(Path::new("/run/crius/ns/p/net"))
    );
    assert_eq!(
        find(LinuxNamespaceType::Pid).unwrap().path().as_deref(),
        Some(Path::new("/proc/42/ns/pid"))
    );
    assert!(
        find(LinuxNamespaceType::Cgroup).is_none(),
        "v1: no cgroup ns"
    );
    assert_eq!(linux.rootfs_propagation().as_deref(), Some("rslave"));

    let mounts = spec.mounts().as_ref().unwrap();
    let dests: Vec<_> = mounts
        .iter()
        .map(|m| m.destination().display().to_string())
        .collect();
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/mqueue",
        "/sys",
        "/dev/shm",
        "/etc/hostname",
        "/data",
    ] {
        assert!(dests.contains(&d.to_string()), "{d} in {dests:?}");
    }
    let resolv: Vec<_> = mounts
        .iter()
        .filter(|m| m.destination() == Path::new("/etc/resolv.conf"))
        .collect();
    assert_eq!(resolv.len(), 1, "the CRI mount replaces the default one");
    assert_eq!(
        resolv[0].source().as_deref(),
        Some(Path::new("/custom/resolv"))
    );
    let data = mounts
        .iter()
        .find(|m| m.destination() == Path::new("/data"))
        .unwrap();
    let opts = data.options().as_ref().unwrap();
    assert!(opts.contains(&"ro".to_string()) && opts.contains(&"rslave".to_string()));

    let r = linux.resources().as_ref().unwrap();
    let cpu = r.cpu().as_ref().unwrap();
    assert_eq!(
        (cpu.shares(), cpu.quota(), cpu.period()),
        (Some(512), Some(50_000), Some(100_000))
    );
    let mem = r.memory().as_ref().unwrap();
    assert_eq!((mem.limit(), mem.swap()), (Some(64 << 20), Some(128 << 20)));
    assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].limit(), 4 << 20);
    assert_eq!(r.unified().as_ref().unwrap()["memory.oom.group"], "1");

    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.args().as_ref().unwrap(), &["/entry", "default-arg"]);
    assert_eq!(process.cwd(), Path::new("/work"));
    assert_eq!(process.oom_score_adj(), Some(999));
    assert_eq!(built.user, "www");
    assert!(
        linux
            .masked_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/kcore".to_string())
    );
}

#[test]
fn pid_modes_and_cgroup_v2() {
    let mut p = pod();
    p.pid = PidNamespace::Container;
    p.cgroup_v2 = true;
    let spec = build(&ContainerConfig::default(), &image(), &p, Path::new("/r"))
        .unwrap()
        .spec;
    let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    let pid = ns
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Pid)
        .unwrap();
    assert!(pid.path().is_none(), "a new PID namespace");
    assert!(ns.iter().any(|n| n.typ() == LinuxNamespaceType::Cgroup));
    let mounts = spec.mounts().as_ref().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m.destination() == Path::new("/sys/fs/cgroup"))
    );

    p.pid = PidNamespace::Node;
    p.net_ns = None;
    let spec = build(&ContainerConfig::default(), &image(), &p, Path::new("/r"))
        .unwrap()
        .spec;
    let ns = spec.linux().as_ref().unwrap().namespaces().clone().unwrap();
    assert!(
        !ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid),
        "host PID ns"
    );
    assert!(
        !ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network),
        "host network"
    );
}

/// /sys/fs/cgroup is read-only unless the pod has its own user namespace
/// and asks for a delegated cgroup; the flag alone never makes it writable.
#[test]
fn the_cgroup_mount_is_writable_only_when_delegated_in_a_user_namespace() {
    let cgroup_options = |p: &PodContext| {
        let spec = build(&ContainerConfig::default(), &image(), p, Path::new("/r"))
            .unwrap()
            .spec;
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/sys/fs/cgroup"))
            .and_then(|m| m.options().clone())
            .unwrap()
    };
    let mut p = pod();
    p.cgroup_v2 = true;
    assert!(cgroup_options(&p).contains(&"ro".to_string()));
    p.cgroup_writable = true;
    assert!(cgroup_options(&p).contains(&"ro".to_string()), "no userns");
    let map = crate::sys::ns::IdMap {
        container_id: 0,
        host_id: 100_000,
        length: 65_536,
    };
    p.user_ns = Some((
        "/run/ns/p/user".into(),
        crate::sys::ns::UserMaps { uid: map, gid: map },
    ));
    let options = cgroup_options(&p);
    assert!(options.contains(&"rw".to_string()), "{options:?}");
    assert!(!options.contains(&"ro".to_string()), "{options:?}");
    p.cgroup_writable = false;
    assert!(cgroup_options(&p).contains(&"ro".to_string()));
}

#[test]
fn bad_inputs_are_invalid_arguments() {
    let mut c = ContainerConfig::default();
    c.working_dir = "relative".into();
    let e = build(&c, &image(), &pod(), Path::new("/r")).unwrap_err();
    assert_eq!(e.kind(), Kind::InvalidArgument);
    let mut c = ContainerConfig::default();
    c.mounts = vec![BindMount {
        container_path: "data".into(),
        ..Default::default()
    }];
    assert!(matches!(
        build(&c, &image(), &pod(), Path::new("/r")),
        Err(Error::Invalid { .. })
    ));
    // A user that is no valid id is refused here, naming where it came from.
    let mut img = image();
    img.user = "4294967296".into();
    assert!(matches!(
        build(&ContainerConfig::default(), &img, &pod(), Path::new("/r")),
        Err(Error::Invalid {
            field: "image config User",
            ..
        })
    ));
    let mut c = ContainerConfig::default();
    c.security.run_as_username = "-5".into();
    assert!(matches!(
        build(&c, &image(), &pod(), Path::new("/r")),
        Err(Error::Invalid {
            field: "run_as_username",
            ..
        })
    ));
    c.security.run_as_user = Some(7);
    assert!(
        build(&c, &img, &pod(), Path::new("/r")).is_ok(),
        "run_as_user wins"
    );
}

#[test]
fn masked_paths_from_the_request_replace_the_defaults() {
    let mut c = ContainerConfig::default();
    c.security.masked_paths = strings(&["/proc/secret"]);
    let spec = build(&c, &image(), &pod(), Path::new("/r")).unwrap().spec;
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().as_ref().unwrap(), &["/proc/secret"]);
    assert!(
        linux
            .readonly_paths()
            .as_ref()
            .unwrap()
            .contains(&"/proc/sys".to_string())
    );
    c.security.privileged = true;
    let spec = build(&c, &image(), &pod(), Path::new("/r")).unwrap().spec;
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(
        linux.masked_paths().as_deref(),
        Some(&[][..]),
        "privileged: nothing masked"
    );
    assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
}

fn caps_of(spec: &oci_spec::runtime::Spec) -> oci_spec::runtime::LinuxCapabilities {
    spec.process()
        .as_ref()
        .unwrap()
        .capabilities()
        .clone()
        .unwrap()
}

#[test]
fn inheritable_and_ambient_stay_empty_even_when_all_is_dropped() {
    let mut c = ContainerConfig::default();
    c.security.drop_capabilities = strings(&["ALL"]);
    let spec = build(&c, &image(), &pod(), Path::new("/r")).unwrap().spec;
    let caps = caps_of(&spec);
    for set in [
        caps.bounding(),
        caps.effective(),
        caps.permitted(),
        caps.inheritable(),
        caps.ambient(),
    ] {
        assert_eq!(set.as_ref().map(|s| s.len()), Some(0));
    }
    let default = build(
        &ContainerConfig::default(),
        &image(),
        &pod(),
        Path::new("/r"),
    )
    .unwrap()
    .spec;
    let caps = caps_of(&default);
    assert_eq!(
        caps.bounding().as_ref().unwrap().len(),
        DEFAULT_CAPABILITIES.len()
    );
    assert!(caps.inheritable().as_ref().unwrap().is_empty());
    assert!(caps.ambient().as_ref().unwrap().is_empty());
}

#[test]
fn devices_become_nodes_and_cgroup_rules() {
    let c = ContainerConfig::default();
    let mut spec = build(&c, &image(), &pod(), Path::new("/r")).unwrap().spec;
    let d = crate::container::devices::HostDevice {
        container_path: "/dev/xzero".into(),
        kind: crate::cgroups::DevKind::Char,
        major: 1,
        minor: 5,
        mode: 0o666,
        uid: 0,
        gid: 0,
        access: crate::cgroups::Access::READ,
    };
    let rules = crate::cgroups::DeviceRules::container(false, &[d.rule()]);
    add_devices(&mut spec, &[d], &rules).unwrap();
    let linux = spec.linux().as_ref().unwrap();
    let nodes = linux.devices().as_ref().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].path(), Path::new("/dev/xzero"));
    assert_eq!((nodes[0].major(), nodes[0].minor()), (1, 5));
    let cg = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .as_ref()
        .unwrap();
    assert!(!cg[0].allow(), "deny all first");
    let last = cg.last().unwrap();
    assert!(last.allow());
    assert_eq!((last.major(), last.minor()), (Some(1), Some(5)));
    assert_eq!(last.access().as_deref(), Some("r"));
    assert!(
        !spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/dev/xzero")),
        "no bind mount of a host path"
    );
}

#[test]
fn ambient_capabilities_are_in_every_set() {
    let mut c = ContainerConfig::default();
    c.security.drop_capabilities = strings(&["ALL"]);
    c.security.ambient_capabilities = strings(&["CAP_NET_BIND_SERVICE"]);
    let spec = build(&c, &image(), &pod(), Path::new("/r")).unwrap().spec;
    let caps = caps_of(&spec);
    for set in [
        caps.bounding(),
        caps.effective(),
        caps.permitted(),
        caps.inheritable(),
        caps.ambient(),
    ] {
        let set = set.as_ref().unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains(&Capability::NetBindService));
    }
    c.security.ambient_capabilities = strings(&["CAP_TELEPATHY"]);
    assert!(build(&c, &image(), &pod(), Path::new("/r")).is_err());
}

#[test]
fn oom_score_adj_is_raised_to_the_floor() {
    assert_eq!(restrict_oom_score_adj(-998, Some(0)), 0);
    assert_eq!(restrict_oom_score_adj(500, Some(0)), 500);
    assert_eq!(restrict_oom_score_adj(-998, None), -998);
}
