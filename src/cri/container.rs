//! prost ↔ domain conversions of the container RPCs: the CRI
//! ContainerConfig becomes `container::spec::ContainerConfig`.

use tonic::Status;

use super::error::missing;
use super::proto;
use crate::container::spec::{
    AppArmor, BindMount, ContainerConfig, Device, ImageVolume, Propagation, Resources, Security,
};
use crate::init::user::GroupsPolicy;
use crate::seccomp;

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// A CRI Int64Value id (uid/gid) as u32.
fn id_value(field: &str, v: Option<&proto::Int64Value>) -> Result<Option<u32>, Status> {
    v.map(|v| {
        u32::try_from(v.value).map_err(|_| invalid(format!("{field} {} is out of range", v.value)))
    })
    .transpose()
}

pub fn resources(r: &proto::LinuxContainerResources) -> Result<Resources, Status> {
    let positive_u64 = |v: i64| (v > 0).then_some(v as u64);
    let nonzero = |v: i64| (v != 0).then_some(v);
    let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let mut hugepage_limits = std::collections::BTreeMap::new();
    for h in &r.hugepage_limits {
        if h.page_size.is_empty() {
            return Err(invalid("hugepage limit without a page size".into()));
        }
        hugepage_limits.insert(h.page_size.clone(), h.limit);
    }
    Ok(Resources {
        cpu_period: positive_u64(r.cpu_period),
        cpu_quota: nonzero(r.cpu_quota),
        cpu_shares: positive_u64(r.cpu_shares),
        memory_limit: nonzero(r.memory_limit_in_bytes),
        memory_swap_limit: nonzero(r.memory_swap_limit_in_bytes),
        cpuset_cpus: nonempty(&r.cpuset_cpus),
        cpuset_mems: nonempty(&r.cpuset_mems),
        hugepage_limits,
        pids_limit: None,
        unified: r.unified.clone().into_iter().collect(),
        // Device rules come from the devices and privilege, not from here.
        devices: None,
    })
}

fn oom_score_adj(r: &proto::LinuxContainerResources) -> Result<i32, Status> {
    i32::try_from(r.oom_score_adj)
        .ok()
        .filter(|v| (-1000..=1000).contains(v))
        .ok_or_else(|| invalid(format!("oom_score_adj {} is out of range", r.oom_score_adj)))
}

/// A CRI SecurityProfile: `Ok(None)` when it is absent.
fn profile<T>(
    field: &'static str,
    p: Option<&proto::SecurityProfile>,
    localhost: impl FnOnce(String) -> T,
    runtime_default: T,
    unconfined: T,
) -> Result<Option<T>, Status> {
    use proto::security_profile::ProfileType;
    let Some(p) = p else { return Ok(None) };
    let typ = ProfileType::try_from(p.profile_type).map_err(|_| {
        invalid(format!(
            "{field}.profile_type {} is unknown",
            p.profile_type
        ))
    })?;
    if typ != ProfileType::Localhost && !p.localhost_ref.is_empty() {
        return Err(invalid(format!(
            "{field}.localhost_ref is set but the profile type is {}",
            typ.as_str_name()
        )));
    }
    Ok(Some(match typ {
        ProfileType::RuntimeDefault => runtime_default,
        ProfileType::Unconfined => unconfined,
        ProfileType::Localhost if p.localhost_ref.is_empty() => {
            return Err(invalid(format!(
                "{field}.localhost_ref is required for a Localhost profile"
            )));
        }
        ProfileType::Localhost => localhost(p.localhost_ref.clone()),
    }))
}

/// The deprecated `*_profile_path` form: `runtime/default` (also
/// `docker/default`), `unconfined`, `localhost/<ref>`; `Ok(None)` when empty.
fn legacy_profile<T>(
    field: &'static str,
    path: &str,
    localhost: impl FnOnce(String) -> T,
    runtime_default: T,
    unconfined: T,
) -> Result<Option<T>, Status> {
    Ok(Some(match path {
        "" => return Ok(None),
        "runtime/default" | "docker/default" => runtime_default,
        "unconfined" => unconfined,
        p => match p.strip_prefix("localhost/") {
            Some(r) if !r.is_empty() => localhost(r.to_string()),
            _ => {
                return Err(invalid(format!(
                    "{field} {path:?} is not runtime/default, unconfined or localhost/<profile>"
                )));
            }
        },
    }))
}

/// The seccomp profile: the container's field, else its deprecated path,
/// else the pod's (field, then path); none at all means unconfined.
#[allow(deprecated)] // the deprecated path is still part of the CRI
fn seccomp_request(
    s: &proto::LinuxContainerSecurityContext,
    pod: Option<&proto::LinuxSandboxSecurityContext>,
) -> Result<seccomp::Request, Status> {
    let localhost = |field: &'static str| {
        move |path: String| seccomp::Request::Localhost {
            path: path.into(),
            field,
        }
    };
    let sc = |field: &'static str, p: Option<&proto::SecurityProfile>| {
        profile(
            field,
            p,
            localhost(field),
            seccomp::Request::RuntimeDefault,
            seccomp::Request::Unconfined,
        )
    };
    let legacy = |field: &'static str, path: &str| {
        legacy_profile(
            field,
            path,
            localhost(field),
            seccomp::Request::RuntimeDefault,
            seccomp::Request::Unconfined,
        )
    };
    // (field, profile, deprecated path field, path), the container's first.
    let mut candidates = vec![(
        "security_context.seccomp",
        s.seccomp.as_ref(),
        "security_context.seccomp_profile_path",
        s.seccomp_profile_path.as_str(),
    )];
    if let Some(pod) = pod {
        candidates.push((
            "pod security_context.seccomp",
            pod.seccomp.as_ref(),
            "pod security_context.seccomp_profile_path",
            pod.seccomp_profile_path.as_str(),
        ));
    }
    for (field, p, path_field, path) in candidates {
        if let Some(r) = sc(field, p)? {
            return Ok(r);
        }
        if let Some(r) = legacy(path_field, path)? {
            return Ok(r);
        }
    }
    Ok(seccomp::Request::Unconfined)
}

#[allow(deprecated)] // the deprecated name is still part of the CRI
fn apparmor_request(s: &proto::LinuxContainerSecurityContext) -> Result<AppArmor, Status> {
    let field = "security_context.apparmor";
    if let Some(a) = profile(
        field,
        s.apparmor.as_ref(),
        AppArmor::Localhost,
        AppArmor::RuntimeDefault,
        AppArmor::Unconfined,
    )? {
        return Ok(a);
    }
    Ok(legacy_profile(
        "security_context.apparmor_profile",
        &s.apparmor_profile,
        AppArmor::Localhost,
        AppArmor::RuntimeDefault,
        AppArmor::Unconfined,
    )?
    .unwrap_or_default())
}

fn security(
    s: &proto::LinuxContainerSecurityContext,
    pod: Option<&proto::LinuxSandboxSecurityContext>,
) -> Result<Security, Status> {
    let caps = s.capabilities.clone().unwrap_or_default();
    let mut supplemental_groups = Vec::with_capacity(s.supplemental_groups.len());
    for g in &s.supplemental_groups {
        supplemental_groups.push(
            u32::try_from(*g)
                .map_err(|_| invalid(format!("supplemental group {g} is out of range")))?,
        );
    }
    // A name alone: "root:0" would otherwise set the group too.
    if s.run_as_username.contains([':', '\0']) {
        return Err(invalid(format!(
            "run_as_username {:?} must be a user name alone (no ':' or NUL)",
            s.run_as_username
        )));
    }
    // The CRI: run_as_group only together with run_as_user or
    // run_as_username, "otherwise, the runtime MUST error".
    if s.run_as_group.is_some() && s.run_as_user.is_none() && s.run_as_username.is_empty() {
        return Err(invalid(
            "run_as_group requires run_as_user or run_as_username".into(),
        ));
    }
    Ok(Security {
        privileged: s.privileged,
        run_as_user: id_value("run_as_user", s.run_as_user.as_ref())?,
        run_as_group: id_value("run_as_group", s.run_as_group.as_ref())?,
        run_as_username: s.run_as_username.clone(),
        supplemental_groups,
        groups: match proto::SupplementalGroupsPolicy::try_from(s.supplemental_groups_policy) {
            Ok(proto::SupplementalGroupsPolicy::Merge) => GroupsPolicy::Merge,
            Ok(proto::SupplementalGroupsPolicy::Strict) => GroupsPolicy::Strict,
            Err(_) => {
                return Err(invalid(format!(
                    "supplemental_groups_policy {} is unknown",
                    s.supplemental_groups_policy
                )));
            }
        },
        readonly_rootfs: s.readonly_rootfs,
        no_new_privs: s.no_new_privs,
        add_capabilities: caps.add_capabilities,
        drop_capabilities: caps.drop_capabilities,
        ambient_capabilities: caps.add_ambient_capabilities,
        masked_paths: s.masked_paths.clone(),
        readonly_paths: s.readonly_paths.clone(),
        seccomp: seccomp_request(s, pod)?,
        apparmor: apparmor_request(s)?,
        selinux: s.selinux_options.as_ref().is_some_and(|o| {
            !(o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty())
        }),
        userns: match s
            .namespace_options
            .as_ref()
            .and_then(|n| n.userns_options.as_ref())
        {
            Some(u) => Some(super::pod::user_namespace(Some(u))?),
            None => None,
        },
    })
}

fn mount(m: &proto::Mount) -> Result<BindMount, Status> {
    if m.container_path.is_empty() {
        return Err(missing("mount container_path"));
    }
    let at = &m.container_path;
    let propagation = match proto::MountPropagation::try_from(m.propagation) {
        Ok(proto::MountPropagation::PropagationPrivate) => Propagation::Private,
        Ok(proto::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(proto::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Err(_) => {
            return Err(invalid(format!(
                "unknown mount propagation {}",
                m.propagation
            )));
        }
    };
    // KEP-3857: only a read-only, private mount can be recursively
    // read-only (a propagated submount would arrive writable).
    if m.recursive_read_only && !m.readonly {
        return Err(invalid(format!(
            "mount {at}: recursive_read_only requires readonly"
        )));
    }
    if m.recursive_read_only && propagation != Propagation::Private {
        return Err(invalid(format!(
            "mount {at}: recursive_read_only requires private propagation"
        )));
    }
    let image = match m.image.as_ref().filter(|i| !i.image.is_empty()) {
        Some(i) => Some(image_volume(m, &i.image, propagation)?),
        None if !m.image_sub_path.is_empty() => {
            return Err(invalid(format!(
                "mount {at}: image_sub_path is set but image is not"
            )));
        }
        None if m.host_path.is_empty() => return Err(missing("mount host_path")),
        None => None,
    };
    Ok(BindMount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone().into(),
        readonly: m.readonly,
        recursive_readonly: m.recursive_read_only,
        propagation,
        image,
    })
}

/// An image volume (KEP-4639): read-only, no host path, private, and a
/// sub path that stays inside the image (relative, no `..`, no NUL).
fn image_volume(
    m: &proto::Mount,
    image: &str,
    propagation: Propagation,
) -> Result<ImageVolume, Status> {
    let at = &m.container_path;
    if !m.readonly {
        return Err(invalid(format!(
            "mount {at}: an image volume must be readonly"
        )));
    }
    if !m.host_path.is_empty() {
        return Err(invalid(format!(
            "mount {at}: an image volume has no host_path (got {:?})",
            m.host_path
        )));
    }
    if propagation != Propagation::Private {
        return Err(invalid(format!(
            "mount {at}: an image volume has no host side to propagate: propagation must be private"
        )));
    }
    let sub = &m.image_sub_path;
    let path = std::path::Path::new(sub);
    let bad = if sub.contains('\0') {
        Some("contains NUL")
    } else if path.is_absolute() {
        Some("is absolute: it must be relative to the image's root")
    } else if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        Some("contains \"..\"")
    } else {
        None
    };
    if let Some(reason) = bad {
        return Err(invalid(format!(
            "mount {at}: image_sub_path {sub:?} {reason}"
        )));
    }
    Ok(ImageVolume {
        image: image.to_string(),
        sub_path: sub.clone(),
    })
}

/// The CRI ContainerConfig in crius's terms (`pod`: the sandbox's security
/// context, whose seccomp profile containers without one inherit). The
/// image reference and the log path stay with the caller, which resolves
/// them.
pub fn container_config(
    c: &proto::ContainerConfig,
    pod: Option<&proto::LinuxSandboxSecurityContext>,
) -> Result<ContainerConfig, Status> {
    let name = c
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .ok_or_else(|| missing("container metadata"))?;
    super::validate::name("container metadata.name", &name)?;
    let linux = c.linux.clone().unwrap_or_default();
    let mut envs = Vec::with_capacity(c.envs.len());
    for kv in &c.envs {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(invalid(format!(
                "invalid environment variable name {:?}",
                kv.key
            )));
        }
        envs.push((kv.key.clone(), kv.value.clone()));
    }
    Ok(ContainerConfig {
        name,
        command: c.command.clone(),
        args: c.args.clone(),
        working_dir: c.working_dir.clone(),
        envs,
        mounts: c.mounts.iter().map(mount).collect::<Result<_, _>>()?,
        devices: c
            .devices
            .iter()
            .map(|d| Device {
                container_path: d.container_path.clone(),
                host_path: d.host_path.clone().into(),
                permissions: d.permissions.clone(),
            })
            .collect(),
        annotations: c.annotations.clone().into_iter().collect(),
        tty: c.tty,
        stdin: c.stdin,
        resources: linux
            .resources
            .as_ref()
            .map(resources)
            .transpose()?
            .unwrap_or_default(),
        oom_score_adj: linux.resources.as_ref().map(oom_score_adj).transpose()?,
        security: security(&linux.security_context.clone().unwrap_or_default(), pod)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn config() -> proto::ContainerConfig {
        proto::ContainerConfig {
            metadata: Some(proto::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            envs: vec![proto::KeyValue {
                key: "RAW".into(),
                value: vec![0xfe, 0xff],
            }],
            mounts: vec![proto::Mount {
                container_path: "/data".into(),
                host_path: "/srv".into(),
                propagation: proto::MountPropagation::PropagationBidirectional as i32,
                ..Default::default()
            }],
            linux: Some(proto::LinuxContainerConfig {
                resources: Some(proto::LinuxContainerResources {
                    cpu_shares: 2,
                    memory_limit_in_bytes: 1 << 20,
                    oom_score_adj: 1000,
                    ..Default::default()
                }),
                security_context: Some(proto::LinuxContainerSecurityContext {
                    run_as_user: Some(proto::Int64Value { value: 1000 }),
                    capabilities: Some(proto::Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn converts_the_cri_config() {
        let c = container_config(&config(), None).unwrap();
        assert_eq!(c.name, "c");
        assert_eq!(c.envs, [("RAW".to_string(), vec![0xfe, 0xff])]);
        assert_eq!(c.mounts[0].propagation, Propagation::Bidirectional);
        assert_eq!(c.resources.cpu_shares, Some(2));
        assert_eq!(c.resources.memory_limit, Some(1 << 20));
        assert_eq!(c.resources.cpu_quota, None, "0 means unset");
        assert_eq!(c.oom_score_adj, Some(1000));
        assert_eq!(c.security.run_as_user, Some(1000));
        assert_eq!(c.security.add_capabilities, ["NET_ADMIN"]);
    }

    #[test]
    fn bad_fields_are_invalid_arguments() {
        let mut c = config();
        c.metadata = None;
        assert_eq!(
            container_config(&c, None).unwrap_err().code(),
            Code::InvalidArgument
        );
        let mut c = config();
        c.envs[0].key = "A=B".into();
        assert_eq!(
            container_config(&c, None).unwrap_err().code(),
            Code::InvalidArgument
        );
        let mut c = config();
        c.mounts[0].propagation = 42;
        assert_eq!(
            container_config(&c, None).unwrap_err().code(),
            Code::InvalidArgument
        );
        let mut c = config();
        c.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .run_as_user = Some(proto::Int64Value { value: -1 });
        assert_eq!(
            container_config(&c, None).unwrap_err().code(),
            Code::InvalidArgument
        );
        let mut c = config();
        c.linux
            .as_mut()
            .unwrap()
            .resources
            .as_mut()
            .unwrap()
            .oom_score_adj = 5000;
        assert_eq!(
            container_config(&c, None).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    #[allow(deprecated)] // the legacy paths are part of the CRI
    fn seccomp_profiles_from_every_field() {
        use proto::security_profile::ProfileType;
        let with = |edit: &dyn Fn(&mut proto::LinuxContainerSecurityContext)| {
            let mut c = config();
            edit(c.linux.as_mut().unwrap().security_context.as_mut().unwrap());
            c
        };
        let profile = |typ: ProfileType, r: &str| {
            Some(proto::SecurityProfile {
                profile_type: typ as i32,
                localhost_ref: r.into(),
            })
        };
        let get = |c: &proto::ContainerConfig, pod: Option<&proto::LinuxSandboxSecurityContext>| {
            container_config(c, pod).map(|c| c.security.seccomp)
        };
        assert_eq!(get(&config(), None).unwrap(), seccomp::Request::Unconfined);
        let c = with(&|sc| sc.seccomp = profile(ProfileType::RuntimeDefault, ""));
        assert_eq!(get(&c, None).unwrap(), seccomp::Request::RuntimeDefault);
        let c = with(&|sc| sc.seccomp = profile(ProfileType::Localhost, "/p.json"));
        assert_eq!(
            get(&c, None).unwrap(),
            seccomp::Request::Localhost {
                path: "/p.json".into(),
                field: "security_context.seccomp"
            }
        );
        for (path, want) in [
            ("runtime/default", seccomp::Request::RuntimeDefault),
            ("docker/default", seccomp::Request::RuntimeDefault),
            ("unconfined", seccomp::Request::Unconfined),
        ] {
            let c = with(&|sc| sc.seccomp_profile_path = path.into());
            assert_eq!(get(&c, None).unwrap(), want, "{path}");
        }
        // The pod's profile when the container has none; the container's wins.
        let pod = proto::LinuxSandboxSecurityContext {
            seccomp_profile_path: "localhost//pod.json".into(),
            ..Default::default()
        };
        assert_eq!(
            get(&config(), Some(&pod)).unwrap(),
            seccomp::Request::Localhost {
                path: "/pod.json".into(),
                field: "pod security_context.seccomp_profile_path"
            }
        );
        let c = with(&|sc| sc.seccomp = profile(ProfileType::Unconfined, ""));
        assert_eq!(get(&c, Some(&pod)).unwrap(), seccomp::Request::Unconfined);
        // Malformed requests are refused.
        for bad in [
            with(&|sc| sc.seccomp_profile_path = "localhost/".into()),
            with(&|sc| sc.seccomp_profile_path = "my-profile".into()),
            with(&|sc| sc.seccomp = profile(ProfileType::Localhost, "")),
            with(&|sc| sc.seccomp = profile(ProfileType::RuntimeDefault, "/x")),
            with(&|sc| {
                sc.seccomp = Some(proto::SecurityProfile {
                    profile_type: 9,
                    localhost_ref: String::new(),
                })
            }),
            with(&|sc| sc.apparmor_profile = "my-profile".into()),
            with(&|sc| sc.supplemental_groups_policy = 7),
        ] {
            let e = container_config(&bad, None).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        }
    }

    #[test]
    fn image_volumes_and_rro_are_converted_or_refused() {
        let image = |readonly, sub: &str| proto::Mount {
            container_path: "/v".into(),
            readonly,
            image: Some(proto::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            image_sub_path: sub.into(),
            ..Default::default()
        };
        let m = mount(&image(true, "etc/ssl")).unwrap();
        assert_eq!(
            m.image,
            Some(ImageVolume {
                image: "busybox".into(),
                sub_path: "etc/ssl".into(),
            })
        );
        assert!(m.readonly && !m.recursive_readonly);
        let refused = |m: proto::Mount, needle: &str| {
            let e = mount(&m).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(needle), "{needle}: {e:?}");
        };
        refused(image(false, ""), "must be readonly");
        refused(image(true, "../etc"), "contains \"..\"");
        refused(image(true, "a/../../b"), "contains \"..\"");
        refused(image(true, "/etc"), "is absolute");
        refused(image(true, "a\0b"), "contains NUL");
        refused(
            proto::Mount {
                host_path: "/srv".into(),
                ..image(true, "")
            },
            "has no host_path",
        );
        refused(
            proto::Mount {
                propagation: proto::MountPropagation::PropagationHostToContainer as i32,
                ..image(true, "")
            },
            "propagation must be private",
        );
        refused(
            proto::Mount {
                image: None,
                host_path: "/srv".into(),
                ..image(true, "etc")
            },
            "image_sub_path is set but image is not",
        );
        let rro = |readonly, propagation: proto::MountPropagation| proto::Mount {
            container_path: "/m".into(),
            host_path: "/srv".into(),
            readonly,
            recursive_read_only: true,
            propagation: propagation as i32,
            ..Default::default()
        };
        let m = mount(&rro(true, proto::MountPropagation::PropagationPrivate)).unwrap();
        assert!(m.readonly && m.recursive_readonly && m.image.is_none());
        refused(
            rro(false, proto::MountPropagation::PropagationPrivate),
            "recursive_read_only requires readonly",
        );
        for p in [
            proto::MountPropagation::PropagationHostToContainer,
            proto::MountPropagation::PropagationBidirectional,
        ] {
            refused(
                rro(true, p),
                "recursive_read_only requires private propagation",
            );
        }
    }
}
