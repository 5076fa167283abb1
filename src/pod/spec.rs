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
    /// A user namespace was asked for (not supported yet).
    pub user_namespace: bool,
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

impl PodSpec {
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
        if ns.user_namespace {
            return invalid("user namespaces are not supported by crius yet".into());
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
}
