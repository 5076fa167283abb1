//! CRI container config → OCI runtime Spec, the way containerd and CRI-O
//! build it: Kubernetes command/args rules over the image's Entrypoint/Cmd,
//! image env overridden by the config's, default mounts (/proc, /dev, /sys,
//! the pod's /dev/shm, hostname and resolv.conf), CRI mounts with their
//! propagation, namespaces from the pod and the PID mode, resources, and
//! containerd 2's default capability set.
//!
//! Environment values are bytes in the CRI (`KeyValue.value`), but
//! `Spec.process.env` is `Vec<String>`: the exact bytes travel beside the
//! Spec in [`Built::env`], and the Spec carries a lossy copy for display.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxHugepageLimitBuilder,
    LinuxIdMappingBuilder, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

pub use crate::cgroups::Resources;
use crate::error::{Classify, Kind};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no command specified: the config has no command or args and the image no entrypoint or cmd"
    )]
    NoCommand,
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("build the OCI spec")]
    Oci(#[from] oci_spec::OciSpecError),
}

impl Classify for Error {
    fn kind(&self) -> Kind {
        match self {
            Error::NoCommand | Error::Invalid { .. } => Kind::InvalidArgument,
            Error::Oci(_) => Kind::Internal,
        }
    }
}

/// What the image contributes (its OCI config).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

/// Mount propagation, as the CRI names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// A CRI mount: a bind of `host_path`, or an image volume when `image`
/// is set (then `host_path` is empty).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BindMount {
    pub container_path: String,
    pub host_path: PathBuf,
    pub readonly: bool,
    /// Read-only with every submount (`rro`: mount_setattr AT_RECURSIVE);
    /// the CRI layer only lets it through with `readonly` and private
    /// propagation.
    pub recursive_readonly: bool,
    pub propagation: Propagation,
    pub image: Option<ImageVolume>,
}

/// An image mounted read-only as a volume (KEP-4639).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageVolume {
    /// The image as the mount names it (tag, digest or id): it must be
    /// present, crius never pulls it.
    pub image: String,
    /// A relative path inside the image, no `..` (checked by the CRI
    /// layer); empty: the image's root.
    pub sub_path: String,
}

/// A CRI device.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub container_path: String,
    pub host_path: PathBuf,
    pub permissions: String,
}

/// The part of the CRI security context this translation applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Security {
    pub privileged: bool,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub run_as_username: String,
    pub supplemental_groups: Vec<u32>,
    /// SupplementalGroupsPolicy: whether the image's /etc/group counts.
    pub groups: crate::init::user::GroupsPolicy,
    pub readonly_rootfs: bool,
    pub no_new_privs: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// Capabilities kept across execve by a non-root user (ambient and
    /// inheritable, and so also permitted, effective and bounding).
    pub ambient_capabilities: Vec<String>,
    /// Paths to mask / make read-only; empty = containerd's defaults
    /// (kubelet sends its own list for unprivileged containers).
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// The seccomp profile, compiled by `crate::seccomp::prepare`.
    pub seccomp: crate::seccomp::Request,
    pub apparmor: AppArmor,
    /// SELinux options were given (crius applies no SELinux labels).
    pub selinux: bool,
    /// The user namespace the container's own userns_options ask for, if
    /// it sent any (`Some(None)`: the host's); it must be its pod's.
    pub userns: Option<Option<crate::sys::ns::UserMaps>>,
}

/// The AppArmor profile the CRI asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AppArmor {
    /// The CRI's nil profile: the runtime's default.
    #[default]
    RuntimeDefault,
    Unconfined,
    /// A profile loaded on the node, by name.
    Localhost(String),
}

/// The CRI container config, in crius's own terms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerConfig {
    pub name: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: String,
    /// (key, value bytes), in request order.
    pub envs: Vec<(String, Vec<u8>)>,
    pub mounts: Vec<BindMount>,
    pub devices: Vec<Device>,
    pub annotations: BTreeMap<String, String>,
    pub tty: bool,
    pub stdin: bool,
    /// cgroup limits (CRI LinuxContainerResources; no pids limit there).
    pub resources: Resources,
    /// The process's oom_score_adj (also in LinuxContainerResources).
    pub oom_score_adj: Option<i32>,
    pub security: Security,
}

/// Which PID namespace the container's processes live in.
#[derive(Debug, Clone, PartialEq)]
pub enum PidNamespace {
    /// Its own, new one: the entrypoint is PID 1 (CRI CONTAINER).
    Container,
    /// The pod's, joined by path (CRI POD, the default).
    Pod(PathBuf),
    /// The host's (CRI NODE).
    Node,
    /// Another container's, joined by path (CRI TARGET).
    Target(PathBuf),
}

/// What the pod provides to each of its containers.
#[derive(Debug, Clone, PartialEq)]
pub struct PodContext {
    /// Pinned namespace files; `None` = the host's namespace.
    pub net_ns: Option<PathBuf>,
    pub ipc_ns: Option<PathBuf>,
    pub uts_ns: Option<PathBuf>,
    pub pid: PidNamespace,
    /// The pod's /dev/shm (host's /dev/shm for hostIPC pods).
    pub shm: PathBuf,
    pub hostname_file: Option<PathBuf>,
    pub resolv_conf: Option<PathBuf>,
    /// The container's cgroup, as the cgroup layer names it.
    pub cgroup_path: PathBuf,
    /// cgroup v2 only: a private cgroup namespace and a read-only /sys/fs/cgroup.
    pub cgroup_v2: bool,
    /// With `cgroup_v2` and `user_ns`: /sys/fs/cgroup read-write, the
    /// container's cgroup delegated to its user (the pod's annotation,
    /// [`crate::pod::spec::CGROUP_WRITABLE_ANNOTATIONS`]).
    pub cgroup_writable: bool,
    /// The pod's user namespace: its pin and mappings (`None`: the host's).
    pub user_ns: Option<(PathBuf, crate::sys::ns::UserMaps)>,
}

/// The translation's result.
#[derive(Debug, Clone)]
pub struct Built {
    pub spec: Spec,
    /// The process environment, exact bytes, `KEY=value` each.
    pub env: Vec<Vec<u8>>,
    /// The user as the config and image ask for it, resolved against the
    /// rootfs's /etc/passwd by `user::resolve` before the process starts.
    pub user: String,
}

/// containerd 2's default capability set for unprivileged containers.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Every capability oci-spec knows: what a privileged container asks for.
pub const ALL_CAPABILITIES: [Capability; 41] = [
    Capability::AuditControl,
    Capability::AuditRead,
    Capability::AuditWrite,
    Capability::BlockSuspend,
    Capability::Bpf,
    Capability::CheckpointRestore,
    Capability::Chown,
    Capability::DacOverride,
    Capability::DacReadSearch,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Kill,
    Capability::Lease,
    Capability::LinuxImmutable,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::Mknod,
    Capability::NetAdmin,
    Capability::NetBindService,
    Capability::NetBroadcast,
    Capability::NetRaw,
    Capability::Perfmon,
    Capability::Setgid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysAdmin,
    Capability::SysBoot,
    Capability::SysChroot,
    Capability::SysModule,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysPtrace,
    Capability::SysRawio,
    Capability::SysResource,
    Capability::SysTime,
    Capability::SysTtyConfig,
    Capability::Syslog,
    Capability::WakeAlarm,
];

/// Paths masked for unprivileged containers (containerd's defaults).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only for unprivileged containers (containerd's defaults).
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments by the Kubernetes rules (containerd's
/// WithProcessArgs): a command replaces the image's Entrypoint and Cmd;
/// args alone replace only Cmd.
pub fn process_args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>, Error> {
    let mut command = config.command.clone();
    let mut args = config.args.clone();
    if command.is_empty() {
        if args.is_empty() {
            args = image.cmd.clone();
        }
        if !(image.entrypoint.len() == 1 && image.entrypoint[0].is_empty()) {
            command = image.entrypoint.clone();
        }
    }
    command.extend(args);
    if command.is_empty() {
        return Err(Error::NoCommand);
    }
    Ok(command)
}

/// The environment: a default PATH, then the image's, then the config's, a
/// later key replacing an earlier one in place. Linear in the number of
/// entries (a client may send a hundred thousand).
pub fn process_env(config: &ContainerConfig, image: &ImageConfig) -> Vec<Vec<u8>> {
    let mut env = Env::default();
    if !image.env.iter().any(|e| e.starts_with("PATH=")) {
        env.set(DEFAULT_PATH.as_bytes().to_vec());
    }
    for e in &image.env {
        env.set(e.as_bytes().to_vec());
    }
    for (key, value) in &config.envs {
        let mut entry = Vec::with_capacity(key.len() + 1 + value.len());
        entry.extend_from_slice(key.as_bytes());
        entry.push(b'=');
        entry.extend_from_slice(value);
        env.set(entry);
    }
    if config.tty && !env.index.contains_key(b"TERM".as_slice()) {
        env.set(b"TERM=xterm".to_vec());
    }
    env.entries
}

/// `KEY=value` entries in order, with an index by key.
#[derive(Default)]
struct Env {
    entries: Vec<Vec<u8>>,
    index: std::collections::HashMap<Vec<u8>, usize>,
}

impl Env {
    /// Sets `KEY=value`, replacing an entry with the same key in place.
    fn set(&mut self, entry: Vec<u8>) {
        let key_len = entry.iter().position(|&b| b == b'=').unwrap_or(entry.len());
        match self.index.entry(entry[..key_len].to_vec()) {
            std::collections::hash_map::Entry::Occupied(at) => self.entries[*at.get()] = entry,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(self.entries.len());
                self.entries.push(entry);
            }
        }
    }
}

/// The user string the process runs as: run_as_user(:run_as_group),
/// run_as_username, else the image's USER, else root.
pub fn process_user(security: &Security, image: &ImageConfig) -> String {
    let group = security
        .run_as_group
        .map(|g| format!(":{g}"))
        .unwrap_or_default();
    if let Some(uid) = security.run_as_user {
        return format!("{uid}{group}");
    }
    if !security.run_as_username.is_empty() {
        return format!("{}{group}", security.run_as_username);
    }
    if !image.user.is_empty() {
        return image.user.clone();
    }
    format!("0{group}")
}

/// A requested oom_score_adj raised to `floor` (crius's own, when it may
/// not lower a process below it): the kernel would refuse a lower value.
pub fn restrict_oom_score_adj(adj: i32, floor: Option<i32>) -> i32 {
    floor.map_or(adj, |f| adj.max(f))
}

/// rshared if any mount is bidirectional, rslave if any is
/// host-to-container, else rprivate.
pub fn rootfs_propagation(mounts: &[BindMount]) -> &'static str {
    if mounts
        .iter()
        .any(|m| m.propagation == Propagation::Bidirectional)
    {
        "rshared"
    } else if mounts
        .iter()
        .any(|m| m.propagation == Propagation::HostToContainer)
    {
        "rslave"
    } else {
        "rprivate"
    }
}

fn mount(dest: &str, typ: &str, source: &Path, options: &[&str]) -> Result<Mount, Error> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()?)
}

/// The mounts every container gets, before its CRI mounts.
fn default_mounts(pod: &PodContext, readonly_rootfs: bool) -> Result<Vec<Mount>, Error> {
    // In a user namespace the filesystems crius mounts for the container
    // belong to its root (and devpts to its tty group), not to host ids it
    // cannot see.
    let (dev_data, pts_gid) = match &pod.user_ns {
        Some((_, maps)) => (
            Some(format!(
                "uid={},gid={}",
                maps.uid.to_host(0).unwrap_or(0),
                maps.gid.to_host(0).unwrap_or(0)
            )),
            maps.gid.to_host(5).map(|g| format!("gid={g}")),
        ),
        None => (None, Some("gid=5".to_string())),
    };
    let mut mounts = vec![
        mount(
            "/proc",
            "proc",
            Path::new("proc"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev",
            "tmpfs",
            Path::new("tmpfs"),
            &["nosuid", "strictatime", "mode=755", "size=65536k"]
                .into_iter()
                .chain(dev_data.as_deref())
                .collect::<Vec<_>>(),
        )?,
        mount(
            "/dev/pts",
            "devpts",
            Path::new("devpts"),
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ]
            .into_iter()
            .chain(pts_gid.as_deref())
            .collect::<Vec<_>>(),
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            Path::new("mqueue"),
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            Path::new("sysfs"),
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
    ];
    if pod.cgroup_v2 {
        // Writable only for a delegated cgroup: the namespace's root is
        // the container's own cgroup, whose limits stay root's on the host.
        let writable = pod.cgroup_writable && pod.user_ns.is_some();
        mounts.push(mount(
            "/sys/fs/cgroup",
            "cgroup2",
            Path::new("cgroup"),
            &[
                "nosuid",
                "noexec",
                "nodev",
                "relatime",
                if writable { "rw" } else { "ro" },
            ],
        )?);
    }
    mounts.push(mount(
        "/dev/shm",
        "bind",
        &pod.shm,
        &["rbind", "rprivate", "rw"],
    )?);
    let rw = if readonly_rootfs { "ro" } else { "rw" };
    if let Some(hostname) = &pod.hostname_file {
        mounts.push(mount(
            "/etc/hostname",
            "bind",
            hostname,
            &["rbind", "rprivate", rw],
        )?);
    }
    if let Some(resolv) = &pod.resolv_conf {
        mounts.push(mount(
            "/etc/resolv.conf",
            "bind",
            resolv,
            &["rbind", "rprivate", rw],
        )?);
    }
    Ok(mounts)
}

/// The OCI mount of a CRI bind; `None` for an image volume, which the
/// rootfs plan mounts from its own step (its path is checked all the same).
/// In a pod with its own user namespace a bind is idmapped (`ridmap`), so
/// its files keep their host owners.
fn cri_mount(m: &BindMount, userns: bool) -> Result<Option<Mount>, Error> {
    if !m.container_path.starts_with('/') {
        return Err(Error::Invalid {
            field: "mount container_path",
            reason: format!("{:?} is not absolute", m.container_path),
        });
    }
    // The container's /dev is crius's tmpfs with checked nodes (masking
    // binds /dev/null from it): a volume replacing it whole could plant a
    // `null` that points anywhere. Paths below /dev stay allowed.
    let path = std::path::Path::new(&m.container_path);
    if path
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(Error::Invalid {
            field: "mount container_path",
            reason: format!("{:?} contains \"..\"", m.container_path),
        });
    }
    let normal: std::path::PathBuf = path.components().collect();
    if normal == std::path::Path::new("/dev") {
        return Err(Error::Invalid {
            field: "mount container_path",
            reason: "a mount onto /dev itself is refused (mount below /dev instead)".into(),
        });
    }
    if m.image.is_some() {
        return Ok(None);
    }
    let propagation = match m.propagation {
        Propagation::Private => "rprivate",
        Propagation::HostToContainer => "rslave",
        Propagation::Bidirectional => "rshared",
    };
    let rw = if m.readonly { "ro" } else { "rw" };
    let mut options = vec!["rbind", propagation, rw];
    if m.recursive_readonly {
        // OCI runtime-spec 1.1's recursive read-only option (runc's too).
        options.push("rro");
    }
    if userns {
        options.push("ridmap");
    }
    mount(&m.container_path, "bind", &m.host_path, &options).map(Some)
}

/// The CRI devices as nodes the init makes inside the container (checked
/// on the host first: [`super::devices`]), and the device cgroup rules in
/// the Spec (deny all, runc's defaults, these devices) for anyone reading
/// it; the cgroup layer applies the same rules from the record.
pub fn add_devices(
    spec: &mut Spec,
    devices: &[super::devices::HostDevice],
    rules: &crate::cgroups::DeviceRules,
) -> Result<(), Error> {
    use crate::cgroups::{DevKind, DeviceRules};
    use oci_spec::runtime::{LinuxDeviceCgroupBuilder, LinuxDeviceType};
    let nodes = devices
        .iter()
        .map(|d| d.linux_device())
        .collect::<Result<Vec<_>, _>>()?;
    let rule = |allow: bool, kind: DevKind, major: Option<u32>, minor: Option<u32>, access| {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(match kind {
                DevKind::All => LinuxDeviceType::A,
                DevKind::Char => LinuxDeviceType::C,
                DevKind::Block => LinuxDeviceType::B,
            })
            .access::<String>(access);
        // Absent numbers are wildcards.
        if let Some(m) = major {
            b = b.major(i64::from(m));
        }
        if let Some(m) = minor {
            b = b.minor(i64::from(m));
        }
        b.build()
    };
    let cgroup = match rules {
        DeviceRules::AllowAll => vec![rule(true, DevKind::All, None, None, "rwm".into())?],
        DeviceRules::Allow(list) => {
            std::iter::once(rule(false, DevKind::All, None, None, "rwm".into()))
                .chain(
                    list.iter()
                        .map(|r| rule(true, r.kind, r.major, r.minor, r.access.to_string())),
                )
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    if let Some(linux) = spec.linux_mut() {
        linux.set_devices(Some(nodes));
        if let Some(res) = linux.resources_mut() {
            res.set_devices(Some(cgroup));
        }
    }
    Ok(())
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, Error> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p);
    }
    Ok(b.build()?)
}

fn namespaces(pod: &PodContext) -> Result<Vec<LinuxNamespace>, Error> {
    use LinuxNamespaceType::*;
    let mut ns = vec![namespace(Mount, None)?];
    if let Some((pin, _)) = &pod.user_ns {
        ns.push(namespace(User, Some(pin))?);
    }
    for (typ, path) in [
        (Network, &pod.net_ns),
        (Ipc, &pod.ipc_ns),
        (Uts, &pod.uts_ns),
    ] {
        if let Some(p) = path {
            ns.push(namespace(typ, Some(p))?);
        }
    }
    match &pod.pid {
        PidNamespace::Container => ns.push(namespace(Pid, None)?),
        PidNamespace::Pod(p) | PidNamespace::Target(p) => ns.push(namespace(Pid, Some(p))?),
        PidNamespace::Node => {}
    }
    if pod.cgroup_v2 {
        ns.push(namespace(Cgroup, None)?);
    }
    Ok(ns)
}

/// "CAP_SYS_ADMIN" or "SYS_ADMIN", any case.
fn parse_capability(name: &str) -> Result<Capability, Error> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    bare.parse().map_err(|_| Error::Invalid {
        field: "capability",
        reason: format!("unknown capability {name:?}"),
    })
}

/// The capability set: containerd's default, plus adds, minus drops ("ALL"
/// works for both); privileged containers get every capability (the engine
/// keeps only those crius itself holds).
pub fn capabilities(security: &Security) -> Result<Vec<Capability>, Error> {
    let all = || ALL_CAPABILITIES.to_vec();
    if security.privileged {
        return Ok(all());
    }
    let is_all = |v: &Vec<String>| v.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut caps: Vec<Capability> = if is_all(&security.add_capabilities) {
        all()
    } else {
        let mut c = DEFAULT_CAPABILITIES.to_vec();
        for name in &security.add_capabilities {
            let cap = parse_capability(name)?;
            if !c.contains(&cap) {
                c.push(cap);
            }
        }
        c
    };
    if is_all(&security.drop_capabilities) {
        // Only what was added explicitly survives a drop of ALL.
        let mut kept = Vec::new();
        for name in &security.add_capabilities {
            if !name.eq_ignore_ascii_case("ALL") {
                kept.push(parse_capability(name)?);
            }
        }
        caps = kept;
    } else {
        for name in &security.drop_capabilities {
            let cap = parse_capability(name)?;
            caps.retain(|c| *c != cap);
        }
    }
    Ok(caps)
}

fn resources(r: &Resources) -> Result<oci_spec::runtime::LinuxResources, Error> {
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(v) = r.cpu_shares.filter(|&v| v > 0) {
        cpu = cpu.shares(v);
    }
    if let Some(v) = r.cpu_quota.filter(|&v| v != 0) {
        cpu = cpu.quota(v);
    }
    if let Some(v) = r.cpu_period.filter(|&v| v > 0) {
        cpu = cpu.period(v);
    }
    if let Some(v) = r.cpuset_cpus.as_ref().filter(|v| !v.is_empty()) {
        cpu = cpu.cpus(v.clone());
    }
    if let Some(v) = r.cpuset_mems.as_ref().filter(|v| !v.is_empty()) {
        cpu = cpu.mems(v.clone());
    }
    let mut memory = LinuxMemoryBuilder::default();
    if let Some(v) = r.memory_limit.filter(|&v| v > 0) {
        memory = memory.limit(v);
    }
    if let Some(v) = r.memory_swap_limit.filter(|&v| v != 0) {
        memory = memory.swap(v);
    }
    let hugepages = r
        .hugepage_limits
        .iter()
        .map(|(size, limit)| {
            LinuxHugepageLimitBuilder::default()
                .page_size(size.clone())
                .limit(*limit as i64)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut b = LinuxResourcesBuilder::default()
        .cpu(cpu.build()?)
        .memory(memory.build()?)
        .hugepage_limits(hugepages);
    if !r.unified.is_empty() {
        b = b.unified(
            r.unified
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        );
    }
    Ok(b.build()?)
}

/// Builds the OCI Spec for a container of `pod` running `image`.
pub fn build(
    config: &ContainerConfig,
    image: &ImageConfig,
    pod: &PodContext,
    rootfs: &Path,
) -> Result<Built, Error> {
    let args = process_args(config, image)?;
    let env = process_env(config, image);
    let user = process_user(&config.security, image);
    // The init reads it with the same parser; a bad one fails here, with
    // the field named, rather than in the blocked init.
    crate::init::user::parse(&user).map_err(|e| Error::Invalid {
        field: if config.security.run_as_user.is_none()
            && !config.security.run_as_username.is_empty()
        {
            "run_as_username"
        } else {
            "image config User"
        },
        reason: e.to_string(),
    })?;
    let cwd = [&config.working_dir, &image.working_dir]
        .into_iter()
        .find(|d| !d.is_empty())
        .cloned()
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(Error::Invalid {
            field: "working_dir",
            reason: format!("{cwd:?} is not absolute"),
        });
    }
    let mut caps = capabilities(&config.security)?;
    let mut ambient = oci_spec::runtime::Capabilities::new();
    if !config.security.privileged {
        for name in &config.security.ambient_capabilities {
            let cap = parse_capability(name)?;
            ambient.insert(cap);
            if !caps.contains(&cap) {
                caps.push(cap);
            }
        }
    }
    let set: oci_spec::runtime::Capabilities = caps.iter().copied().collect();
    // Inheritable and ambient hold only the ambient capabilities asked for,
    // as in containerd: the builder's defaults would put capabilities there
    // that a drop of ALL removed from the bounding set, which capset(2)
    // refuses.
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(set.clone())
        .effective(set.clone())
        .permitted(set)
        .inheritable(ambient.clone())
        .ambient(ambient)
        .build()?;
    let mut process = ProcessBuilder::default()
        .terminal(config.tty)
        .args(args)
        .env(
            env.iter()
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .collect::<Vec<_>>(),
        )
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(config.security.no_new_privs)
        // The numeric ids are settled by user::resolve against the rootfs.
        .user(
            UserBuilder::default()
                .uid(config.security.run_as_user.unwrap_or(0))
                .gid(config.security.run_as_group.unwrap_or(0))
                .additional_gids(config.security.supplemental_groups.clone())
                .build()?,
        );
    if let Some(adj) = config.oom_score_adj {
        process = process.oom_score_adj(adj);
    }

    // Default mounts first; a CRI mount (an image volume too) on the same
    // destination replaces it.
    let mut cri: Vec<Mount> = Vec::new();
    for m in &config.mounts {
        cri.extend(cri_mount(m, pod.user_ns.is_some())?);
    }
    let mut mounts: Vec<Mount> = default_mounts(pod, config.security.readonly_rootfs)?
        .into_iter()
        .filter(|d| {
            !config
                .mounts
                .iter()
                .any(|c| d.destination() == Path::new(&c.container_path))
        })
        .collect();
    mounts.extend(cri);

    let mut linux = LinuxBuilder::default();
    if let Some((_, maps)) = &pod.user_ns {
        let map = |m: &crate::sys::ns::IdMap| {
            LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.length)
                .build()
        };
        linux = linux
            .uid_mappings(vec![map(&maps.uid)?])
            .gid_mappings(vec![map(&maps.gid)?]);
    }
    let mut linux = linux
        .namespaces(namespaces(pod)?)
        .resources(resources(&config.resources)?)
        .cgroups_path(pod.cgroup_path.clone())
        .rootfs_propagation(rootfs_propagation(&config.mounts));
    if !config.security.privileged {
        let or_default = |given: &Vec<String>, default: &[&str]| -> Vec<String> {
            if given.is_empty() {
                default.iter().map(|s| s.to_string()).collect()
            } else {
                given.clone()
            }
        };
        linux = linux
            .masked_paths(or_default(&config.security.masked_paths, &MASKED_PATHS))
            .readonly_paths(or_default(&config.security.readonly_paths, &READONLY_PATHS));
    } else {
        // The builder's defaults mask paths too: a privileged container
        // sees everything.
        linux = linux.masked_paths(Vec::new()).readonly_paths(Vec::new());
    }
    let spec = SpecBuilder::default()
        .version("1.2.0")
        .root(
            RootBuilder::default()
                .path(rootfs)
                .readonly(config.security.readonly_rootfs)
                .build()?,
        )
        .process(process.build()?)
        .hostname(String::new())
        .mounts(mounts)
        .linux(linux.build()?)
        .annotations(
            config
                .annotations
                .clone()
                .into_iter()
                .collect::<std::collections::HashMap<_, _>>(),
        )
        .build()?;
    Ok(Built { spec, env, user })
}

#[cfg(test)]
mod tests;
