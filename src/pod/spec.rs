//! What a pod sandbox is asked to be: crius's own form of the CRI
//! PodSandboxConfig (no prost type below `cri/`), and its validation:
//! namespace modes a sandbox may use, where each sysctl belongs, the
//! runtime handler.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Error;

/// CRI NamespaceMode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NamespaceMode {
    /// The pod's own namespace (the CRI default, enum value 0).
    #[default]
    Pod,
    /// Each container its own.
    Container,
    /// The host's.
    Node,
    /// Another container's (ephemeral debug containers, PID only).
    Target,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceOptions {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
    pub target_id: String,
    /// The pod's own user namespace (CRI userns_options mode POD);
    /// `None`: the host's (mode NODE, or no options).
    #[serde(default)]
    pub user: Option<UserNamespace>,
}

pub use crate::sys::ns::{IdMap, UserMaps as UserNamespace};

impl UserNamespace {
    /// What a CRI UserNamespace asks for, checked as containerd does:
    /// NODE is the host's user namespace and takes no mappings; POD takes
    /// exactly one uid and one gid mapping, each mapping container id 0 to
    /// a host range that neither holds host id 0 (container root would be
    /// host root) nor runs past the last valid id; CONTAINER and TARGET
    /// are refused. The error names the field.
    pub fn from_request(
        mode: NamespaceMode,
        uids: &[IdMap],
        gids: &[IdMap],
    ) -> Result<Option<UserNamespace>, String> {
        match mode {
            NamespaceMode::Node => {
                if !uids.is_empty() || !gids.is_empty() {
                    return Err(
                        "userns_options: mode NODE (the host's user namespace) takes no uids or gids"
                            .into(),
                    );
                }
                Ok(None)
            }
            NamespaceMode::Container | NamespaceMode::Target => Err(format!(
                "userns_options: mode {} is not supported: a user namespace is the pod's (POD) or the host's (NODE)",
                if mode == NamespaceMode::Container {
                    "CONTAINER"
                } else {
                    "TARGET"
                }
            )),
            NamespaceMode::Pod => Ok(Some(UserNamespace {
                uid: one_mapping("uids", uids)?,
                gid: one_mapping("gids", gids)?,
            })),
        }
    }
}

fn one_mapping(field: &str, maps: &[IdMap]) -> Result<IdMap, String> {
    let [m] = maps else {
        return Err(format!(
            "userns_options.{field}: exactly one mapping is supported, got {}",
            maps.len()
        ));
    };
    if m.container_id != 0 {
        return Err(format!(
            "userns_options.{field}: the mapping must start at container id 0 (got {}): container root must be mapped",
            m.container_id
        ));
    }
    if m.length == 0 {
        return Err(format!("userns_options.{field}: the mapping has length 0"));
    }
    if m.host_id == 0 {
        return Err(format!(
            "userns_options.{field}: host id 0 is mapped: container root would be host root"
        ));
    }
    // (uid_t)-1 is no id; the range must end before it.
    if u64::from(m.host_id) + u64::from(m.length) > u64::from(u32::MAX) {
        return Err(format!(
            "userns_options.{field}: host range {}+{} runs past the last valid id",
            m.host_id, m.length
        ));
    }
    Ok(*m)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub protocol: Protocol,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// Pod-level resources (LinuxPodSandboxConfig resources/overhead), for the
/// pod cgroup crius creates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    pub hugepage_limits: BTreeMap<String, u64>,
    pub unified: BTreeMap<String, String>,
}

impl Resources {
    /// Refuses what no cgroup can take: negative values (but a CPU quota
    /// of -1, unlimited). `field` names the request field in the error.
    pub fn validate(&self, field: &str) -> Result<(), Error> {
        for (name, v, min) in [
            ("cpu_period", self.cpu_period, 0),
            ("cpu_quota", self.cpu_quota, -1),
            ("cpu_shares", self.cpu_shares, 0),
            ("memory_limit_in_bytes", self.memory_limit_in_bytes, 0),
        ] {
            if v < min {
                return Err(Error::Invalid(format!("{field}.{name} {v} is below {min}")));
            }
        }
        Ok(())
    }
}

/// Identity of a pod for kubelet: a second RunPodSandbox with the same key
/// is a retry or a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Key {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<Dns>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub namespaces: NamespaceOptions,
    pub sysctls: BTreeMap<String, String>,
    pub privileged: bool,
    pub resources: Option<Resources>,
    pub overhead: Option<Resources>,
    pub runtime_handler: String,
}

/// The pod annotations that ask for the containers' cgroup v2 to be
/// writable and delegated to them (CRI-O's, in its old and new spelling;
/// no CRI field asks for it).
pub const CGROUP_WRITABLE_ANNOTATIONS: [&str; 2] = [
    "io.kubernetes.cri-o.cgroup2-mount-hierarchy-rw",
    "cgroup2-mount-hierarchy-rw.crio.io",
];

impl PodSpec {
    /// Whether the pod asks for its containers' cgroups to be delegated to
    /// them ([`CGROUP_WRITABLE_ANNOTATIONS`] set to "true"; "false" or no
    /// annotation: not). Any other value is refused, naming the annotation.
    pub fn cgroup_writable(&self) -> Result<bool, Error> {
        let mut writable = false;
        for name in CGROUP_WRITABLE_ANNOTATIONS {
            match self.annotations.get(name).map(String::as_str) {
                None | Some("false") => {}
                Some("true") => writable = true,
                Some(other) => {
                    return Err(Error::Invalid(format!(
                        "annotation {name}: {other:?} is neither \"true\" nor \"false\""
                    )));
                }
            }
        }
        Ok(writable)
    }

    pub fn key(&self) -> Key {
        Key {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
            attempt: self.attempt,
        }
    }

    pub fn host_network(&self) -> bool {
        self.namespaces.network == NamespaceMode::Node
    }

    pub fn host_ipc(&self) -> bool {
        self.namespaces.ipc == NamespaceMode::Node
    }

    /// Whether the pod gets a PID namespace with a pod init.
    pub fn pod_pid_namespace(&self) -> bool {
        self.namespaces.pid == NamespaceMode::Pod
    }

    /// Checks what crius can run; every refusal is InvalidArgument.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |m: String| Err(Error::Invalid(m));
        if !self.runtime_handler.is_empty() {
            return Err(Error::UnknownHandler(self.runtime_handler.clone()));
        }
        if self.name.is_empty() {
            return invalid("metadata.name is required".into());
        }
        if self.hostname.len() > 64 {
            return invalid(format!(
                "hostname {:?} is longer than 64 bytes",
                self.hostname
            ));
        }
        let ns = &self.namespaces;
        for (what, mode) in [("network", ns.network), ("ipc", ns.ipc)] {
            if !matches!(mode, NamespaceMode::Pod | NamespaceMode::Node) {
                return invalid(format!(
                    "a pod's {what} namespace mode must be POD or NODE, got {mode:?}"
                ));
            }
        }
        if ns.pid == NamespaceMode::Target {
            return invalid("a pod's pid namespace mode cannot be TARGET".into());
        }
        if ns.user.is_some() {
            for (host, what) in [
                (self.host_network(), "hostNetwork"),
                (self.host_ipc(), "hostIPC"),
                (ns.pid == NamespaceMode::Node, "hostPID"),
            ] {
                if host {
                    return invalid(format!(
                        "a pod with its own user namespace cannot use {what}: the host's namespace belongs to the host's user namespace"
                    ));
                }
            }
        }
        if self.cgroup_writable()? && ns.user.is_none() {
            return invalid(format!(
                "annotation {}: a writable, delegated cgroup needs the pod's own user namespace (userns_options mode POD, hostUsers: false): container root would be host root",
                CGROUP_WRITABLE_ANNOTATIONS[0]
            ));
        }
        for p in &self.port_mappings {
            if !(1..=65535).contains(&p.container_port) || !(0..=65535).contains(&p.host_port) {
                return invalid(format!(
                    "port mapping {}->{} is out of range",
                    p.host_port, p.container_port
                ));
            }
        }
        for name in self.sysctls.keys() {
            match sysctl_namespace(name) {
                Some(SysctlNamespace::Net) if self.host_network() => {
                    return invalid(format!(
                        "sysctl {name} needs the pod's network namespace, but the pod uses the host network"
                    ));
                }
                Some(SysctlNamespace::Ipc) if self.host_ipc() => {
                    return invalid(format!(
                        "sysctl {name} needs the pod's IPC namespace, but the pod uses the host IPC namespace"
                    ));
                }
                Some(_) => {}
                None => {
                    return invalid(format!(
                        "sysctl {name} is not namespaced: only kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* and net.* can be set for a pod"
                    ));
                }
            }
            crate::sys::sysctl::path(name).map_err(|e| Error::Invalid(e.to_string()))?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNamespace {
    Ipc,
    Net,
}

/// The namespace a sysctl belongs to, `None` for host-wide ones.
pub fn sysctl_namespace(name: &str) -> Option<SysctlNamespace> {
    let dotted = name.replace('/', ".");
    if dotted.starts_with("kernel.shm")
        || dotted.starts_with("kernel.msg")
        || dotted == "kernel.sem"
        || dotted.starts_with("fs.mqueue.")
    {
        Some(SysctlNamespace::Ipc)
    } else if dotted.starts_with("net.") {
        Some(SysctlNamespace::Net)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PodSpec {
        PodSpec {
            name: "p".into(),
            namespace: "ns".into(),
            uid: "u".into(),
            ..Default::default()
        }
    }

    #[test]
    fn sysctls_are_placed_by_namespace() {
        assert_eq!(
            sysctl_namespace("kernel.shmmax"),
            Some(SysctlNamespace::Ipc)
        );
        assert_eq!(
            sysctl_namespace("kernel.shm_rmid_forced"),
            Some(SysctlNamespace::Ipc)
        );
        assert_eq!(
            sysctl_namespace("kernel.msgmax"),
            Some(SysctlNamespace::Ipc)
        );
        assert_eq!(sysctl_namespace("kernel.sem"), Some(SysctlNamespace::Ipc));
        assert_eq!(
            sysctl_namespace("fs.mqueue.msg_max"),
            Some(SysctlNamespace::Ipc)
        );
        assert_eq!(
            sysctl_namespace("net/ipv4/ip_forward"),
            Some(SysctlNamespace::Net)
        );
        assert_eq!(sysctl_namespace("kernel.hostname"), None);
        assert_eq!(sysctl_namespace("vm.swappiness"), None);
        assert_eq!(sysctl_namespace("kernel.semx"), None);
    }

    /// The delegation annotation: "true" asks, "false" or none does not,
    /// anything else is refused naming it; it needs the pod's own user
    /// namespace.
    #[test]
    fn the_cgroup_writable_annotation() {
        let mut s = spec();
        assert!(!s.cgroup_writable().unwrap());
        for name in CGROUP_WRITABLE_ANNOTATIONS {
            let mut s = spec();
            s.annotations.insert(name.into(), "false".into());
            assert!(!s.cgroup_writable().unwrap());
            s.annotations.insert(name.into(), "yes".into());
            let e = s.cgroup_writable().unwrap_err().to_string();
            assert!(e.contains(name) && e.contains("yes"), "{e}");
            s.annotations.insert(name.into(), "true".into());
            assert!(s.cgroup_writable().unwrap());
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("user namespace"), "{e}");
        }
        let map = IdMap {
            container_id: 0,
            host_id: 100_000,
            length: 65_536,
        };
        s.namespaces.user = Some(UserNamespace { uid: map, gid: map });
        s.annotations
            .insert(CGROUP_WRITABLE_ANNOTATIONS[1].into(), "true".into());
        s.validate().unwrap();
        assert!(s.cgroup_writable().unwrap());
    }

    #[test]
    fn validation() {
        spec().validate().unwrap();
        let mut s = spec();
        s.runtime_handler = "kata".into();
        assert!(matches!(s.validate(), Err(Error::UnknownHandler(_))));

        let mut s = spec();
        s.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        s.validate().unwrap();
        s.namespaces.network = NamespaceMode::Node;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("host network"), "{e}");

        let mut s = spec();
        s.sysctls.insert("kernel.msgmax".into(), "1".into());
        s.namespaces.ipc = NamespaceMode::Node;
        assert!(s.validate().is_err());

        let mut s = spec();
        s.sysctls.insert("vm.swappiness".into(), "1".into());
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("vm.swappiness")
        );

        let mut s = spec();
        s.namespaces.network = NamespaceMode::Container;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.namespaces.pid = NamespaceMode::Container;
        s.validate().unwrap();
        assert!(!s.pod_pid_namespace());
        assert!(spec().pod_pid_namespace(), "POD is the default PID mode");
        let mut s = spec();
        s.name.clear();
        assert!(s.validate().is_err());
    }

    fn map(container_id: u32, host_id: u32, length: u32) -> IdMap {
        IdMap {
            container_id,
            host_id,
            length,
        }
    }

    #[test]
    fn user_namespace_requests() {
        use NamespaceMode as M;
        let one = [map(0, 65536, 65536)];
        let ns = UserNamespace::from_request(M::Pod, &one, &one)
            .unwrap()
            .unwrap();
        assert_eq!(ns.uid, one[0]);
        assert_eq!(UserNamespace::from_request(M::Node, &[], &[]), Ok(None));
        let refused = |mode, uids: &[IdMap], gids: &[IdMap], says: &str| {
            let e = UserNamespace::from_request(mode, uids, gids).unwrap_err();
            assert!(e.contains(says), "{e}");
        };
        refused(M::Node, &one, &[], "takes no uids");
        refused(M::Container, &[], &[], "CONTAINER");
        refused(M::Target, &[], &[], "TARGET");
        let two = [map(0, 1000, 100000), map(0, 2000, 100000)];
        refused(M::Pod, &two, &two, "uids: exactly one mapping");
        refused(
            M::Pod,
            &one,
            &[],
            "gids: exactly one mapping is supported, got 0",
        );
        refused(M::Pod, &[map(1, 1000, 10)], &one, "container id 0");
        refused(M::Pod, &[map(0, 1000, 0)], &one, "length 0");
        refused(M::Pod, &one, &[map(0, 0, 65536)], "host root");
        refused(M::Pod, &[map(0, u32::MAX - 10, 11)], &one, "last valid id");
        UserNamespace::from_request(M::Pod, &[map(0, u32::MAX - 10, 10)], &one).unwrap();

        let mut s = spec();
        s.namespaces.user = Some(ns);
        s.validate().unwrap();
        for host in ["network", "ipc", "pid"] {
            let mut s = s.clone();
            match host {
                "network" => s.namespaces.network = M::Node,
                "ipc" => s.namespaces.ipc = M::Node,
                _ => s.namespaces.pid = M::Node,
            }
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains("own user namespace"), "{host}: {e}");
        }
    }
}
