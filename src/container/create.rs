//! Creating a container: CreateContainer.
//!
//! Everything that can be refused is checked before anything exists: the
//! pod (exists and READY), the image (present locally: never an implicit
//! pull), the (pod, name, attempt) key, and the OCI spec built from the
//! config. The steps then run as a detached task, so a client that gives
//! up never interrupts them halfway: the finished container stays
//! unclaimed, invisible to List/Status, until a retry with the same key
//! claims it or the reaper removes it; a retry that arrives while the
//! first call still runs waits for its outcome.
//!
//! The steps the caller waits for, each named in the error when it fails;
//! a failure undoes every step before it ([`Containers::discard`]):
//! 1. record intent   2. create container directory (upper, work, rootfs
//!    mount point, a staging dir per image volume)
//! 3. create log directory   4. record container (CREATED), claimed.
//!
//! Then, after the answer and under the container's lock, so that Start,
//! Stop, Remove and Update wait for it ([`Containers::finish_creation`]):
//! create container cgroup, create container init (the engine: mounts,
//! namespaces, blocked before execve), delegate container cgroup (a pod
//! that asks for it: [`crate::pod::spec::CGROUP_WRITABLE_ANNOTATIONS`]).
//! Their outcome is recorded (lazily: durable with the next durable
//! commit, StartContainer's at the latest): the init, or the failed step
//! ([`super::record::Unmade`]), which StartContainer reports. The init's
//! setup (about 3 ms of mounts) thus overlaps the client's next call.

use std::path::PathBuf;
use std::sync::Arc;

use super::engine::Launch;
use super::record::{
    CONTAINERS, ContainerRecord, Key, MountInfo, MountedImage, PidMode, ProcessUser, State, Unmade,
};
use super::spec::{self, ContainerConfig, PidNamespace, PodContext, Propagation};
use super::{Containers, Error, blocking, rootfs_dir, upper_dir, volume_dir, work_dir};
use crate::cgroups::{CgroupPath, DeviceRules};
use crate::init::rootfs;
use crate::monitor::process::log::LogPath;
use crate::pod::now_ns;
use crate::pod::record::PodRecord;
use crate::record::{Kind, Records, StepFailed, pause_point};

/// CreateContainer's input in crius's terms.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub pod_id: String,
    pub config: ContainerConfig,
    pub attempt: u32,
    /// The image as the config names it (tag, digest or id).
    pub image: String,
    /// Relative to the pod's log directory.
    pub log_path: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub stdin_once: bool,
    /// The CRI stop_signal, when set.
    pub stop_signal: Option<i32>,
    pub pid_mode: crate::pod::spec::NamespaceMode,
    /// The container whose PID namespace TARGET mode joins.
    pub target_id: String,
}

const OP: &str = "create container";

fn step_err<E>(name: &str) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + crate::error::Classify + Send + Sync + 'static,
{
    let f = crate::record::step(OP, name);
    move |e| Error::Step(f(e))
}

/// A cgroup error of a blocking step, as the step `name`.
fn cgroup_step(name: &str) -> impl FnOnce(Error) -> Error {
    let f = step_err(name);
    move |e| match e {
        Error::Cgroups(e) => f(e),
        e => e,
    }
}

fn io_step(name: &str, path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Step(StepFailed::io(OP, name, path, e))
}

/// What creation decided before the first side effect (besides the
/// intent record).
pub struct Plan {
    launch: Launch,
    cgroup: CgroupOrder,
    /// The container's cgroup is delegated to its user once the init
    /// has taken that user.
    delegate_cgroup: bool,
}

/// When the container's cgroup is made, against its init.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CgroupOrder {
    /// Made first (cgroupfs): the init is born in its cgroup v2 directory
    /// and joins the v1 ones itself (`tasks`), in its setup when it gets a
    /// cgroup namespace, else just before it execs the workload.
    First,
    /// A systemd scope, which needs its first process: made with the
    /// created init's pid.
    AfterInit,
    /// A systemd scope for an init that gets a cgroup namespace, which is
    /// rooted where the init is when it is made: the scope is made first
    /// with a [`Holder`](super::engine::Holder), and the init is born in
    /// it.
    Held,
}

impl Containers {
    /// CreateContainer: the container id.
    pub async fn create(self: &Arc<Self>, req: CreateRequest) -> Result<String, Error> {
        let pod = self.pod(&req.pod_id)?;
        let key = Key {
            pod_id: pod.id.clone(),
            name: req.config.name.clone(),
            attempt: req.attempt,
        };
        crate::record::create(self, key, || self.plan(&pod, req)).await
    }

    /// The container's init is moved into its systemd scope in a few ms
    /// (the scope is made with its pid: [`CgroupOrder::AfterInit`]). A
    /// whole-process cgroup migration waits for an RCU grace period
    /// first (7 to 29 ms here on cgroup v1). This starts that wait now,
    /// beside the init's setup, with a move of the daemon to where it is
    /// ([`crate::cgroups::warm`]); it is not awaited, and its failure only
    /// costs the wait it would have saved. It runs after the container's
    /// cgroup is made: the move holds `cgroup_mutex` through its grace
    /// period, which a mkdir in a cgroup hierarchy needs too. The other
    /// orders need no warming: their init is born in its cgroup v2
    /// directory and joins v1 ones by moving only itself.
    fn warm_cgroup_migrations(&self) {
        let cg = self.cgroups.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = cg.warm_migrations() {
                tracing::debug!(error = %crate::error::chain(&e), "warm cgroup migrations");
            }
        });
    }

    /// Everything decided without side effects: bad input fails here.
    fn plan(
        &self,
        pod: &PodRecord,
        mut req: CreateRequest,
    ) -> Result<(ContainerRecord, Plan), Error> {
        req.config.oom_score_adj = req
            .config
            .oom_score_adj
            .map(|adj| spec::restrict_oom_score_adj(adj, own_oom_floor()));
        if req.image.is_empty() {
            return Err(Error::Invalid("container image is required".into()));
        }
        // containerd's rule: a privileged container needs a privileged pod.
        if req.config.security.privileged && !pod.spec.privileged {
            return Err(Error::Invalid(format!(
                "security_context.privileged: a privileged container is not allowed in the non-privileged pod sandbox {}",
                pod.id
            )));
        }
        // A container lives in its pod's user namespace: its own
        // userns_options (kubelet sends the pod's) may only repeat it.
        let pod_userns = pod.spec.namespaces.user;
        if let Some(asked) = req.config.security.userns
            && asked != pod_userns
        {
            return Err(Error::Invalid(format!(
                "security_context.namespace_options.userns_options: a container's user namespace must be its pod's ({})",
                if pod_userns.is_some() {
                    "mode POD with the pod's mappings"
                } else {
                    "mode NODE"
                }
            )));
        }
        let log_path = log_path(&pod.spec.log_directory, &req.log_path)?;
        let image = self
            .images
            .find(&req.image)?
            .ok_or_else(|| Error::ImageNotFound(req.image.clone()))?;
        let id = crate::ids::new_id();
        let dir = self.container_dir(&id);
        let pod_cgroup = pod
            .cgroup
            .clone()
            .ok_or_else(|| Error::Internal(format!("pod {} has no cgroup", pod.id)))?;
        let leaf = self
            .cgroups
            .container_path(&pod_cgroup, &id)
            .map_err(|e| Error::Invalid(crate::error::chain(&e)))?;
        let (pid_mode, pid) = self.pid_namespace(pod, &req)?;
        let cgroup_writable = self.cgroup_delegation(pod)?;
        let ctx = PodContext {
            net_ns: pod.netns.clone(),
            ipc_ns: pod.ipcns.clone(),
            uts_ns: pod.utsns.clone(),
            pid,
            shm: pod.shm.clone().unwrap_or_else(|| "/dev/shm".into()),
            hostname_file: Some(pod.dir.hostname()),
            resolv_conf: Some(pod.dir.resolv_conf()),
            cgroup_path: PathBuf::from(&leaf.path),
            cgroup_v2: self.cgroups.is_unified(),
            cgroup_writable,
            user_ns: pod_userns.map(|maps| (pod.dir.ns(crate::sys::ns::Kind::User), maps)),
        };
        let rootfs = rootfs_dir(&dir);
        let devices = super::devices::resolve_all(&req.config.devices)?;
        let rules: Vec<_> = devices.iter().map(|d| d.rule()).collect();
        let device_rules = DeviceRules::container(req.config.security.privileged, &rules);
        let mut built = spec::build(&req.config, &image.config, &ctx, &rootfs)
            .map_err(step_err("build the OCI spec"))?;
        spec::add_devices(&mut built.spec, &devices, &device_rules)
            .map_err(step_err("build the OCI spec"))?;
        let security = &req.config.security;
        let apparmor = super::lsm::apparmor_profile(security, super::lsm::Host::current())
            .map_err(Error::Invalid)?;
        if let Some(process) = built.spec.process_mut() {
            process.set_apparmor_profile(apparmor);
        }
        // The filter is compiled here, so a bad profile fails before
        // anything exists; RuntimeDefault depends on the bounding set.
        let bounding: Vec<String> = built
            .spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().as_ref())
            .and_then(|c| c.bounding().clone())
            .into_iter()
            .flatten()
            .map(|c| c.to_string())
            .collect();
        let seccomp = crate::seccomp::prepare(
            &security.seccomp,
            security.privileged,
            bounding.iter().map(String::as_str),
        )
        .map_err(step_err("compile the seccomp profile"))?;
        let overlay = rootfs::Overlay {
            layers: image.layers.clone(),
            upper: upper_dir(&dir),
            work: work_dir(&dir),
        };
        // The options must fit in one page: refuse now, not in the init
        // (in a user namespace the layers are named by their idmapped
        // mounts).
        let data = match &ctx.user_ns {
            Some(_) => overlay
                .idmapped(&rootfs::idmapped_layers_dir(&rootfs))
                .data(),
            None => overlay.data(),
        };
        data.map_err(|e| Error::Invalid(crate::error::chain(&e)))?;
        let (volumes, mounted) = self.image_volumes(&req.config, &dir, ctx.user_ns.is_some())?;
        let stop_signal = match req.stop_signal {
            Some(s) => s,
            None if image.config.stop_signal.is_empty() => libc::SIGTERM,
            None => parse_signal(&image.config.stop_signal).ok_or_else(|| {
                Error::Invalid(format!(
                    "the image's stop signal {:?} is not a signal",
                    image.config.stop_signal
                ))
            })?,
        };
        let c = &req.config;
        let rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name: c.name.clone(),
            attempt: req.attempt,
            state: State::Creating,
            claimed: false,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            image: req.image.clone(),
            image_id: image.id.clone(),
            labels: req.labels.clone(),
            annotations: c.annotations.clone(),
            log_path: log_path.as_ref().map(LogPath::full),
            mounts: c
                .mounts
                .iter()
                .zip(mounted)
                .map(|(m, image)| MountInfo {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                    propagation: match m.propagation {
                        Propagation::Private => 0,
                        Propagation::HostToContainer => 1,
                        Propagation::Bidirectional => 2,
                    },
                    recursive_readonly: m.recursive_readonly,
                    image,
                })
                .collect(),
            resources: crate::cgroups::Resources {
                devices: Some(device_rules),
                ..c.resources.clone()
            },
            oom_score_adj: c.oom_score_adj,
            dir,
            pod_dir: pod.dir.clone(),
            cgroup: Some(leaf.clone()),
            pid_mode,
            init: None,
            unmade: None,
            user: None,
            stop_signal,
            spec: serde_json::to_value(&built.spec).unwrap_or_default(),
            tty: c.tty,
            stdin: c.stdin,
            stdin_once: req.stdin_once,
        };
        let launch = Launch {
            id,
            spec: built.spec,
            env: built.env,
            user: built.user,
            groups: security.groups,
            seccomp,
            overlay,
            volumes,
            cgroup_procs: Vec::new(),
            log_path: log_path.as_ref().map(LogPath::full),
            log_dir: log_path.map(|p| p.dir),
            tty: c.tty,
            stdin: c.stdin,
            stdin_once: req.stdin_once,
        };
        Ok((
            rec,
            Plan {
                cgroup: match leaf.unit.as_ref().is_some_and(|u| u.is_scope()) {
                    false => CgroupOrder::First,
                    true if launch.creates_cgroup_namespace() => CgroupOrder::Held,
                    true => CgroupOrder::AfterInit,
                },
                delegate_cgroup: cgroup_writable,
                launch,
            },
        ))
    }

    /// The image volumes of `config` (each image present: never pulled),
    /// and per CRI mount the image it mounts, if any. A recursive
    /// read-only bind needs mount_setattr(2), probed once.
    fn image_volumes(
        &self,
        config: &ContainerConfig,
        dir: &std::path::Path,
        userns: bool,
    ) -> Result<(Vec<rootfs::ImageVolume>, Vec<Option<MountedImage>>), Error> {
        let mut volumes = Vec::new();
        let mut mounted = Vec::with_capacity(config.mounts.len());
        for m in &config.mounts {
            if m.recursive_readonly && !crate::sys::mount::recursive_readonly_supported() {
                return Err(Error::Invalid(format!(
                    "mount {}: recursive_read_only needs mount_setattr(2) (Linux >= 5.12), \
                     which this kernel lacks",
                    m.container_path
                )));
            }
            let Some(v) = &m.image else {
                mounted.push(None);
                continue;
            };
            let image = self
                .images
                .find(&v.image)?
                .ok_or_else(|| Error::VolumeImageNotFound {
                    path: m.container_path.clone(),
                    image: v.image.clone(),
                })?;
            let volume = rootfs::ImageVolume {
                target: m.container_path.clone().into(),
                layers: image.layers,
                sub_path: v.sub_path.clone().into(),
                image: image.id.clone(),
                staging: volume_dir(dir, volumes.len()),
            };
            // The overlay options must fit in one page: refuse now (in a
            // user namespace the layers are named by their idmapped mounts).
            match userns {
                true => volume
                    .idmapped(&rootfs::idmapped_volume_layers_dir(&volume.staging))
                    .data(),
                false => volume.data(),
            }
            .map_err(|e| Error::Invalid(crate::error::chain(&e)))?;
            volumes.push(volume);
            mounted.push(Some(MountedImage {
                image: v.image.clone(),
                id: image.id,
                sub_path: v.sub_path.clone(),
            }));
        }
        Ok((volumes, mounted))
    }

    /// Whether the pod asks for its containers' cgroups delegated to them
    /// (checked at RunPodSandbox too; a pod recorded before that check
    /// existed is refused here): only with the pod's own user namespace
    /// (InvalidArgument) and cgroup v2 alone (FailedPrecondition).
    fn cgroup_delegation(&self, pod: &PodRecord) -> Result<bool, Error> {
        let writable = pod
            .spec
            .cgroup_writable()
            .map_err(|e| Error::Invalid(e.to_string()))?;
        if writable && pod.spec.namespaces.user.is_none() {
            return Err(Error::Invalid(format!(
                "pod sandbox {}: a writable, delegated cgroup needs the pod's own user namespace",
                pod.id
            )));
        }
        if writable && !self.cgroups.is_unified() {
            return Err(Error::WrongState(format!(
                "pod sandbox {}: a writable, delegated cgroup needs cgroup v2 alone, and this node has cgroup v1 hierarchies",
                pod.id
            )));
        }
        Ok(writable)
    }

    fn pid_namespace(
        &self,
        pod: &PodRecord,
        req: &CreateRequest,
    ) -> Result<(PidMode, PidNamespace), Error> {
        use crate::pod::spec::NamespaceMode as M;
        Ok(match req.pid_mode {
            M::Container => (PidMode::Container, PidNamespace::Container),
            M::Node => (PidMode::Node, PidNamespace::Node),
            M::Pod => {
                let path = pod.pid_ns_path().ok_or_else(|| {
                    Error::Invalid(format!(
                        "PID mode POD: pod sandbox {} has no PID namespace of its own",
                        pod.id
                    ))
                })?;
                (PidMode::Pod, PidNamespace::Pod(path))
            }
            M::Target => {
                let target = self
                    .resolve(&req.target_id)?
                    .and_then(|id| self.store.get(CONTAINERS, &id).ok().flatten())
                    .map(ContainerRecord::effective)
                    .filter(|t| t.pod_id == pod.id)
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "PID mode TARGET: no container {:?} in pod sandbox {}",
                            req.target_id, pod.id
                        ))
                    })?;
                let init = target.init.filter(|_| target.state == State::Running);
                let Some(init) = init else {
                    return Err(Error::Invalid(format!(
                        "PID mode TARGET: container {} is not running",
                        target.id
                    )));
                };
                (
                    PidMode::Target(target.id.clone()),
                    PidNamespace::Target(crate::sys::ns::Kind::Pid.proc_path(init.pid)),
                )
            }
        })
    }

    /// The steps CreateContainer's caller waits for: intent, directories,
    /// log directory, the CREATED record.
    async fn steps(&self, rec: &mut ContainerRecord, launch: &Launch) -> Result<(), Error> {
        // 1. The intent, before any side effect on the host.
        pause_point("record container intent").await;
        self.records
            .put_intent(rec)
            .map_err(step_err("record intent"))?;

        // 2. The container's directories.
        self.create_dirs(rec, launch)?;

        // 3. The log file's directory (kubelet usually made it), beneath
        //    the pod's log directory.
        if let Some(log) = launch.log_file() {
            log.create_parent()
                .map_err(|e| io_step("create log directory", &e.path, e.source))?;
        }

        // 4. Created, but unclaimed until the caller (or a retry) takes
        //    it; its init is made next ([`Self::make_init`]).
        pause_point("record container").await;
        rec.state = State::Created;
        // Durable with the claim's commit; unclaimed, it is rolled back
        // after a crash.
        self.records
            .put_lazy(rec)
            .map_err(step_err("record container"))?;
        Ok(())
    }

    /// What CreateContainer makes after its caller has the container
    /// (under the container's lock, which StartContainer, StopContainer,
    /// RemoveContainer and UpdateContainerResources take, so they wait for
    /// it): the cgroup and the init, whose setup thus overlaps the client's
    /// next call. Its outcome is recorded, lazily: the init, or why there
    /// is none ([`Unmade`]), which StartContainer then reports.
    async fn finish_creation(&self, mut rec: ContainerRecord, plan: Plan) {
        let made = self
            .make_init(&mut rec, plan.launch, plan.cgroup, plan.delegate_cgroup)
            .await;
        let unmade = match made {
            Ok(()) => None,
            Err(e) => {
                let unmade = match &e {
                    Error::Step(f) => Unmade {
                        step: f.step.clone(),
                        kind: f.kind,
                        message: crate::error::chain(&*f.source),
                    },
                    e => Unmade {
                        step: "create container init".into(),
                        kind: crate::error::Classify::kind(e),
                        message: crate::error::chain(e),
                    },
                };
                tracing::warn!(container_id = %rec.id, step = %unmade.step, error = %unmade.message, "the container's init could not be made; StartContainer reports it");
                // Nothing of the init stays behind: the monitor forgets it
                // (killing it if it was made) and its cgroup is emptied.
                let _ = self.engine.remove(&rec.pod_dir, &rec.id).await;
                self.kill_leftovers(&rec, true).await;
                rec.init = None;
                Some(unmade)
            }
        };
        let (init, user) = (rec.init, rec.user.clone());
        // Lazy: durable with the next durable commit (StartContainer's
        // own, at the latest). A crash of crius before that finds the
        // record as a crash while the init was made would: the init is
        // ended and StartContainer says why (reconcile's
        // `end_interrupted_init`). Each durable commit here was an fsync
        // that every creation's writes waited behind.
        let written = self.store.write_lazy(|txn| {
            let Some(mut r) = txn.get(CONTAINERS, &rec.id)? else {
                return Ok(());
            };
            r.init = init;
            r.user = user;
            r.unmade = unmade;
            txn.put(CONTAINERS, &rec.id, &r)
        });
        if let Err(e) = written {
            tracing::error!(container_id = %rec.id, error = %crate::error::chain(&e), "record the container's init");
        }
    }

    /// The container's cgroup and its init, blocked before execve.
    async fn make_init(
        &self,
        rec: &mut ContainerRecord,
        mut launch: Launch,
        order: CgroupOrder,
        delegate_cgroup: bool,
    ) -> Result<(), Error> {
        let leaf: CgroupPath = rec.cgroup.clone().expect("set by plan");
        if order == CgroupOrder::First {
            let cg = self.cgroups.clone();
            let (l, res) = (leaf.clone(), rec.resources.clone());
            blocking(move || {
                if cg.exists(&l) {
                    return Err(crate::cgroups::Error::Exists(l.path.clone()));
                }
                cg.create(&l, &res)
            })
            .await
            .map_err(cgroup_step("create container cgroup"))?;
        }

        // A systemd scope the init is born in, made with a holder process;
        // released (killed and reaped) once the init is made or failed,
        // killed if this future is dropped.
        let mut holder = None;
        if order == CgroupOrder::Held {
            let h = self
                .engine
                .holder()
                .await
                .map_err(step_err("start the container cgroup's holder"))?;
            let cg = self.cgroups.clone();
            let (l, res, pid) = (leaf.clone(), rec.resources.clone(), h.pid);
            match blocking(move || cg.create_with_pid(&l, &res, pid)).await {
                Ok(()) => holder = Some(h),
                Err(e) => {
                    h.release().await;
                    return Err(cgroup_step("create container cgroup")(e));
                }
            }
        }
        if order == CgroupOrder::AfterInit {
            self.warm_cgroup_migrations();
        } else {
            launch.cgroup_procs = self.cgroups.join_files(&leaf);
        }

        // The init: mounts done, blocked before execve.
        pause_point("create container init").await;
        let created = self.engine.create(&rec.pod_dir, &launch).await;
        if let Some(h) = holder {
            h.release().await;
        }
        let init = created.map_err(|e| {
            let step = match &e {
                super::engine::Error::Step { step, .. } => step.to_string(),
                _ => "create container init".into(),
            };
            step_err(&step)(e)
        })?;
        rec.init = Some(init);
        rec.user = ProcessUser::of(init.pid);
        if order == CgroupOrder::AfterInit {
            let cg = self.cgroups.clone();
            let (l, res) = (leaf.clone(), rec.resources.clone());
            blocking(move || cg.create_with_pid(&l, &res, init.pid))
                .await
                .map_err(cgroup_step("create container cgroup"))?;
        }

        // The cgroup delegated to the container's user (its host uid, now
        // that the blocked init has taken it), as runc does.
        if delegate_cgroup {
            let uid = rec.user.as_ref().map(|u| u.uid).ok_or_else(|| {
                Error::Internal(format!("the init of container {} has no user", rec.id))
            })?;
            let cg = self.cgroups.clone();
            blocking(move || cg.delegate(&leaf, uid))
                .await
                .map_err(cgroup_step("delegate container cgroup"))?;
        }
        Ok(())
    }
    /// Step 2: the container's directory (0700: its upper dir holds what
    /// the container wrote): upper, work, rootfs mount point, a staging
    /// dir per image volume.
    fn create_dirs(&self, rec: &ContainerRecord, launch: &Launch) -> Result<(), Error> {
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&rec.dir)
                .map_err(|e| io_step("create container directory", &rec.dir, e))?;
        }
        let staging = launch.volumes.iter().map(|v| v.staging.clone());
        for d in [
            upper_dir(&rec.dir),
            work_dir(&rec.dir),
            rootfs_dir(&rec.dir),
        ]
        .into_iter()
        .chain(staging)
        {
            std::fs::create_dir_all(&d)
                .map_err(|e| io_step("create container directory", &d, e))?;
        }
        // In a user namespace the upper dir is the rootfs' / as the
        // container sees it: its root's (only this empty dir; no layer
        // is ever chowned).
        let linux = launch.spec.linux().as_ref();
        let root_of = |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| {
            m.and_then(|m| m.first()).map(|m| m.host_id())
        };
        if let (Some(uid), Some(gid)) = (
            root_of(linux.and_then(|l| l.uid_mappings().as_ref())),
            root_of(linux.and_then(|l| l.gid_mappings().as_ref())),
        ) {
            let upper = upper_dir(&rec.dir);
            std::os::unix::fs::chown(&upper, Some(uid), Some(gid))
                .map_err(|e| io_step("create container directory", &upper, e))?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Kind for Containers {
    type Record = ContainerRecord;
    type Error = Error;
    type Plan = Plan;
    type Rest = Plan;

    fn records(&self) -> &Records<ContainerRecord, Error> {
        &self.records
    }

    fn already_exists(&self, key: Key, id: &str) -> Error {
        Error::AlreadyExists {
            pod_id: key.pod_id,
            name: key.name,
            attempt: key.attempt,
            id: id.to_string(),
        }
    }

    async fn create_steps(
        self: &Arc<Self>,
        rec: &mut ContainerRecord,
        plan: Plan,
    ) -> Result<Plan, Error> {
        self.steps(rec, &plan.launch).await?;
        tracing::info!(container_id = %rec.id, name = %rec.name, pod_id = %rec.pod_id, "container created");
        Ok(plan)
    }

    async fn finish(self: &Arc<Self>, rec: ContainerRecord, plan: Plan) {
        self.finish_creation(rec, plan).await;
    }

    async fn rollback(&self, rec: &ContainerRecord) {
        self.discard(rec).await;
    }

    fn on_claimed(&self, rec: &ContainerRecord) {
        self.events.container(crate::events::Type::Created, rec);
    }
}

impl Containers {
    /// Undoes whatever exists of a container, from any state: what it
    /// holds ([`Self::release`]), then the record. Idempotent.
    pub(super) async fn discard(&self, rec: &ContainerRecord) {
        self.release(rec).await;
        if let Err(e) = self.records.delete(&rec.id) {
            tracing::error!(container_id = %rec.id, error = %crate::error::chain(&e), "delete container record");
        }
        self.exits.lock().expect("lock poisoned").remove(&rec.id);
    }
}

/// The lowest oom_score_adj crius can give a process: its own when it
/// lacks CAP_SYS_RESOURCE (containerd's restrict_oom_score_adj), `None`
/// when it may set any.
fn own_oom_floor() -> Option<i32> {
    const CAP_SYS_RESOURCE: u32 = 24;
    let me = std::process::id() as i32;
    let capable =
        crate::sys::caps::effective_of(me).is_some_and(|e| e & (1 << CAP_SYS_RESOURCE) != 0);
    if capable {
        return None;
    }
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The CRI log file: the pod's log directory + the container's log path,
/// which must stay beneath it: an absolute path, `..`, or NUL is refused.
/// Without a directory (or a relative one) there is no log file. The file
/// itself is opened beneath the directory ([`crate::monitor::process::log`]).
pub fn log_path(directory: &str, path: &str) -> Result<Option<LogPath>, Error> {
    use std::path::Component;
    if path.is_empty() {
        return Ok(None);
    }
    let bad = |reason: &str| Error::Invalid(format!("log_path {path:?} {reason}"));
    if path.contains('\0') {
        return Err(bad("contains NUL"));
    }
    let rel = std::path::Path::new(path);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(
                    "is absolute: it must be relative to the pod's log_directory",
                ));
            }
            Component::ParentDir => return Err(bad("contains '..'")),
        }
    }
    let dir = PathBuf::from(directory);
    if !dir.is_absolute() {
        return Ok(None);
    }
    Ok(Some(LogPath {
        dir,
        rel: rel.components().collect(),
    }))
}

/// A signal by name ("SIGTERM", "TERM", "sigint") or number ("15").
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}
