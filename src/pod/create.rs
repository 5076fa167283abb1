//! Creating a pod: RunPodSandbox.
//!
//! It runs as a detached task, so a client that gives up (its deadline, a
//! cancel) never interrupts it halfway: the finished pod stays unclaimed,
//! invisible to List/Status, until a retry with the same
//! name/namespace/uid/attempt claims it or the reaper removes it. A retry
//! that arrives while the first call still runs waits for its outcome.
//!
//! The steps, each named in the error when it fails; a failure undoes
//! every step before it ([`Pods::teardown`], [`Pods::remove_files`]).
//! Single-flight, claim and rollback are the shared record lifecycle
//! ([`crate::record`]); this file holds the pod's steps:
//! 1. record intent   2. create pod directory   3. create pod cgroup
//! 4. start pod monitor (its sub-steps: prepare namespace directory, create
//!    namespaces, set hostname, apply sysctls, bring lo up, pin namespaces,
//!    start pod init, mount /dev/shm)   5. create pod init cgroup
//! 6. set up pod network (5 and 6 at once, beside the monitor's move into
//!    its cgroup)   7. write resolv.conf and hostname   8. record pod

use std::sync::Arc;

use super::lifecycle::blocking;
use super::record::{PodRecord, State};
use super::spec::{Key, PodSpec};
use super::{Error, NetworkInfo, Pods, now_ns};
use crate::cgroups::{CgroupPath, Resources};
use crate::monitor::{self, PodDir};
use crate::network::PodNetwork;
use crate::network::dns::{self, DnsConfig};
use crate::record::{self, Kind, Records, StepFailed, pause_point};
use crate::sys::ns::Kind as Ns;
use crate::sys::process::ProcRef;

const OP: &str = "run pod sandbox";

fn step<E>(name: &str) -> impl FnOnce(E) -> StepFailed
where
    E: std::error::Error + crate::error::Classify + Send + Sync + 'static,
{
    record::step(OP, name)
}

/// What RunPodSandbox decided before its first side effect.
pub struct Plan {
    /// kubelet's pod CIDR, from UpdateRuntimeConfig ("" if none).
    pod_cidr: String,
}

impl Pods {
    /// RunPodSandbox: the pod id.
    /// `pod_cidr`: kubelet's, from UpdateRuntimeConfig ("" if none).
    pub async fn run(self: &Arc<Self>, spec: PodSpec, pod_cidr: String) -> Result<String, Error> {
        spec.validate()?;
        if spec.cgroup_writable()? && !self.cgroups.is_unified() {
            return Err(Error::Unsupported(format!(
                "annotation {}: a writable, delegated cgroup needs cgroup v2 alone, and this node has cgroup v1 hierarchies",
                super::spec::CGROUP_WRITABLE_ANNOTATIONS[0]
            )));
        }
        let key = spec.key();
        record::create(self, key, || {
            let id = crate::ids::new_id();
            tracing::Span::current().record("pod_id", id.as_str());
            Ok((self.intent(id, spec)?, Plan { pod_cidr }))
        })
        .await
    }

    /// The intent record: every path decided, nothing created. A bad
    /// cgroup_parent is the caller's error, refused here.
    fn intent(&self, id: String, spec: PodSpec) -> Result<PodRecord, Error> {
        let cgroup = self
            .cgroups
            .pod_path(&spec.cgroup_parent, &id)
            .map_err(|e| Error::Invalid(crate::error::chain(&e)))?;
        let dir = PodDir::new(&self.settings.state, &id);
        let ns_path = |kind: Ns, own: bool| own.then(|| dir.ns(kind));
        let init_cgroup = if spec.pod_pid_namespace() {
            Some(
                self.cgroups
                    .init_path(&cgroup, &id)
                    .map_err(|e| Error::Invalid(crate::error::chain(&e)))?,
            )
        } else {
            None
        };
        Ok(PodRecord {
            id,
            created_at: now_ns(),
            state: State::Creating,
            reason: String::new(),
            claimed: false,
            finished_at: 0,
            netns: ns_path(Ns::Net, !spec.host_network()),
            ipcns: ns_path(Ns::Ipc, !spec.host_ipc()),
            // Host-network pods use the host's UTS namespace too.
            utsns: ns_path(Ns::Uts, !spec.host_network()),
            shm: (!spec.host_ipc()).then(|| dir.shm()),
            // Pessimistic until step 3 knows: if crius dies meanwhile, the
            // rollback removes a cgroup that did not exist before.
            cgroup_created: !self.cgroups.exists(&cgroup),
            cgroup: Some(cgroup),
            init_cgroup,
            monitor: None,
            init: None,
            network: None,
            boot_id: self.boot_id.clone(),
            dir,
            spec,
        })
    }
}

#[async_trait::async_trait]
impl Kind for Pods {
    type Record = PodRecord;
    type Error = Error;
    type Plan = Plan;
    type Rest = ();

    fn records(&self) -> &Records<PodRecord, Error> {
        &self.records
    }

    fn already_exists(&self, key: Key, id: &str) -> Error {
        Error::AlreadyExists {
            name: key.name,
            namespace: key.namespace,
            uid: key.uid,
            attempt: key.attempt,
            id: id.to_string(),
        }
    }

    async fn create_steps(self: &Arc<Self>, rec: &mut PodRecord, plan: Plan) -> Result<(), Error> {
        self.steps(rec, &plan.pod_cidr).await?;
        tracing::info!(pod_id = %rec.id, name = %rec.spec.name, "pod sandbox ready");
        Ok(())
    }

    async fn rollback(&self, rec: &PodRecord) {
        let _ = self.teardown(rec, false).await;
        self.remove_files(rec).await;
        if let Err(e) = self.records.delete(&rec.id) {
            tracing::error!(pod_id = %rec.id, error = %crate::error::chain(&e), "delete pod record");
        }
    }

    /// A claimed pod is READY: created and started at once.
    fn on_claimed(&self, rec: &PodRecord) {
        self.events.pod(crate::events::Type::Created, rec);
        self.events.pod(crate::events::Type::Started, rec);
    }
}

impl Pods {
    async fn steps(self: &Arc<Self>, rec: &mut PodRecord, pod_cidr: &str) -> Result<(), Error> {
        // 1. The intent, before any side effect on the host.
        pause_point("record intent").await;
        self.records
            .put_intent(rec)
            .map_err(step("record intent"))?;

        // 2. The pod's directory under the state dir.
        pause_point("create pod directory").await;
        std::fs::create_dir_all(rec.dir.exits())
            .map_err(|e| StepFailed::io(OP, "create pod directory", &rec.dir.dir, e))?;

        // 3. The pod cgroup (left as it is when kubelet made it).
        pause_point("create pod cgroup").await;
        let cg = self.cgroups.clone();
        let path = rec.cgroup.clone().expect("set by intent");
        let res = pod_resources(&rec.spec);
        let created = blocking(move || cg.create(&path, &res))
            .await
            .map_err(step("create pod cgroup"))?;
        // The intent assumed the cgroup is crius's when it did not exist.
        if created != rec.cgroup_created {
            rec.cgroup_created = created;
            self.records
                .put_intent(rec)
                .map_err(step("create pod cgroup"))?;
        }

        // 4. The monitor: namespaces, sysctls, pod init, /dev/shm.
        pause_point("start pod monitor").await;
        let mspec = self.monitor_spec(rec);
        let started = self.engine.start(&rec.dir, &mspec).await.map_err(|e| {
            let name = match &e {
                super::engine::Error::Step { step, .. } => step.to_string(),
                _ => "start pod monitor".into(),
            };
            step(&name)(e)
        })?;
        rec.monitor = Some(started.monitor);
        rec.init = started.init;
        self.watch(&rec.id, started.monitor);
        // Lazy: a rollback from the intent finds the monitor by its pid
        // file and the pod init through the monitor and the pod cgroup.
        self.records
            .put_lazy(rec)
            .map_err(step("record pod monitor"))?;
        // 5 and 6 run while the monitor moves to its cgroup (best effort):
        // a cgroup v1 move waits for an RCU grace period (milliseconds,
        // tens under load), which the network setup hides. Both end here,
        // also on failure, so a rollback never races the move.
        let (attached, ()) = tokio::join!(
            self.attach(rec, pod_cidr),
            self.move_to_monitors_cgroup(started.monitor)
        );
        attached?;

        // 7. The files containers will mount.
        pause_point("write resolv.conf and hostname").await;
        self.write_dns_files(rec)
            .map_err(step("write resolv.conf and hostname"))?;

        // 8. Ready, but unclaimed until the caller (or a retry) takes it.
        pause_point("record pod").await;
        rec.state = State::Ready;
        rec.finished_at = now_ns();
        // Durable with the claim's commit; unclaimed, it is rolled back
        // after a crash.
        self.records.put_lazy(rec).map_err(step("record pod"))?;
        Ok(())
    }

    /// Steps 5 and 6, at once (moving the pod init into its cgroup waits
    /// for an RCU grace period on cgroup v1, which the plugins hide); both
    /// end here, also on failure, so a rollback never races either.
    async fn attach(&self, rec: &mut PodRecord, pod_cidr: &str) -> Result<(), Error> {
        let init = rec.init_cgroup.clone().zip(rec.init);
        let (cgroup, network) =
            tokio::join!(self.init_cgroup(init), self.add_network(rec, pod_cidr));
        cgroup.and(network)
    }

    /// Step 5: the pod init's own leaf cgroup under the pod cgroup.
    async fn init_cgroup(&self, init: Option<(CgroupPath, ProcRef)>) -> Result<(), Error> {
        let Some((leaf, init)) = init else {
            return Ok(());
        };
        let cg = self.cgroups.clone();
        blocking(move || cg.create_with_pid(&leaf, &Resources::default(), init.pid))
            .await
            .map_err(step("create pod init cgroup"))?;
        Ok(())
    }

    /// Step 6: CNI ADD, unless the pod uses the host network.
    async fn add_network(&self, rec: &mut PodRecord, pod_cidr: &str) -> Result<(), Error> {
        pause_point("set up pod network").await;
        let Some(netns) = &rec.netns else {
            return Ok(());
        };
        let req = PodNetwork {
            pod_id: rec.id.clone(),
            name: rec.spec.name.clone(),
            namespace: rec.spec.namespace.clone(),
            uid: rec.spec.uid.clone(),
            netns: netns.clone(),
            port_mappings: port_mappings(&rec.spec),
            pod_cidr: pod_cidr.to_string(),
        };
        let status = self
            .network
            .setup(&req)
            .await
            .map_err(step("set up pod network"))?;
        rec.network = Some(NetworkInfo {
            ip: status.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            additional_ips: status
                .additional_ips
                .iter()
                .map(|ip| ip.to_string())
                .collect(),
            result: status.result,
        });
        // Lazy: the CNI cache holds the result for a rollback's DEL.
        self.records
            .put_lazy(rec)
            .map_err(step("set up pod network"))?;
        Ok(())
    }

    fn monitor_spec(&self, rec: &PodRecord) -> monitor::Spec {
        let spec = &rec.spec;
        // The user namespace first: the others are created inside it.
        let user = spec.namespaces.user.map(|_| rec.dir.ns(Ns::User));
        let namespaces = [
            (Ns::User, &user),
            (Ns::Net, &rec.netns),
            (Ns::Ipc, &rec.ipcns),
            (Ns::Uts, &rec.utsns),
        ]
        .into_iter()
        .filter(|(_, pin)| pin.is_some())
        .map(|(kind, _)| kind)
        .collect();
        monitor::Spec {
            pod_id: rec.id.clone(),
            ns_root: self.settings.state.join("ns"),
            namespaces,
            user: spec.namespaces.user,
            pid_namespace: spec.pod_pid_namespace(),
            hostname: (!spec.hostname.is_empty()).then(|| spec.hostname.clone()),
            sysctls: spec
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            shm_size: rec.shm.is_some().then_some(self.settings.shm_size),
        }
    }

    fn write_dns_files(&self, rec: &PodRecord) -> Result<(), crate::network::Error> {
        let dns = rec.spec.dns.as_ref().map(|d| DnsConfig {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        });
        dns::write_resolv_conf(
            &rec.dir.resolv_conf(),
            dns.as_ref(),
            std::path::Path::new("/etc/resolv.conf"),
        )?;
        let hostname = if rec.spec.hostname.is_empty() || rec.spec.host_network() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            rec.spec.hostname.clone()
        };
        dns::write_hostname(&rec.dir.hostname(), &hostname)?;
        // In the pod's own user namespace its root owns these files, as a
        // host pod's root does (not the overflow id), so they can be
        // rewritten where they are mounted read-write.
        if let Some(maps) = &rec.spec.namespaces.user {
            let (uid, gid) = (maps.uid.to_host(0), maps.gid.to_host(0));
            for path in [rec.dir.resolv_conf(), rec.dir.hostname()] {
                std::os::unix::fs::lchown(&path, uid, gid).map_err(|source| {
                    crate::network::Error::Io {
                        op: "chown to the pod's root",
                        path,
                        source,
                    }
                })?;
            }
        }
        Ok(())
    }

    /// Puts a monitor in crius's monitors cgroup, outside the daemon's and
    /// the pod's: killing either, or stopping crius's systemd unit, never
    /// kills pods. Best effort.
    async fn move_to_monitors_cgroup(&self, monitor: ProcRef) {
        let cg = self.cgroups.clone();
        let moved = blocking(move || cg.join_monitors(monitor.pid)).await;
        if let Err(e) = moved {
            tracing::warn!(pid = monitor.pid, error = %crate::error::chain(&e), "move monitor to its cgroup");
        }
    }

    /// `<default parent>-monitors` with cgroupfs (e.g. /crius-monitors),
    /// the scope `crius-monitors.scope` with systemd
    /// ([`crate::cgroups::Cgroups::monitors_path`]).
    pub(super) fn monitors_cgroup(&self) -> Option<CgroupPath> {
        self.cgroups.monitors_path().ok()
    }
}

/// Pod-level limits for a pod cgroup crius creates: the pod's resources
/// plus its overhead. CRI zero values mean "not set".
pub(super) fn pod_resources(spec: &PodSpec) -> Resources {
    let Some(r) = spec.resources.as_ref().or(spec.overhead.as_ref()) else {
        return Resources::default();
    };
    let extra = spec.overhead.as_ref().filter(|_| spec.resources.is_some());
    let pos = |v: i64| (v > 0).then_some(v);
    // Saturating: a sum past i64 (hostile values) is "more than any
    // machine has", not a panic.
    let add = |a: Option<i64>, b: Option<i64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, _) => a,
    };
    Resources {
        cpu_shares: pos(r.cpu_shares).map(|v| v as u64),
        // -1: unlimited, whatever the overhead.
        cpu_quota: match r.cpu_quota {
            -1 => Some(-1),
            q => add(pos(q), extra.and_then(|o| pos(o.cpu_quota))),
        },
        cpu_period: pos(r.cpu_period).map(|v| v as u64),
        cpuset_cpus: Some(r.cpuset_cpus.clone()).filter(|s| !s.is_empty()),
        cpuset_mems: Some(r.cpuset_mems.clone()).filter(|s| !s.is_empty()),
        memory_limit: add(
            pos(r.memory_limit_in_bytes),
            extra.and_then(|o| pos(o.memory_limit_in_bytes)),
        ),
        hugepage_limits: r.hugepage_limits.clone(),
        unified: r.unified.clone(),
        ..Default::default()
    }
}

fn port_mappings(spec: &PodSpec) -> Vec<crate::network::PortMapping> {
    use crate::network::Protocol as P;
    spec.port_mappings
        .iter()
        .map(|p| crate::network::PortMapping {
            protocol: match p.protocol {
                super::spec::Protocol::Tcp => P::Tcp,
                super::spec::Protocol::Udp => P::Udp,
                super::spec::Protocol::Sctp => P::Sctp,
            },
            // Ranges are checked by PodSpec::validate.
            container_port: p.container_port as u16,
            host_port: p.host_port as u16,
            host_ip: p.host_ip.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::spec::Resources as PodRes;

    #[test]
    fn pod_cgroup_gets_resources_plus_overhead() {
        let mut spec = PodSpec::default();
        assert!(
            pod_resources(&spec).is_empty(),
            "nothing asked, nothing set"
        );
        spec.resources = Some(PodRes {
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpu_shares: 512,
            memory_limit_in_bytes: 100 << 20,
            ..Default::default()
        });
        spec.overhead = Some(PodRes {
            cpu_quota: 10_000,
            memory_limit_in_bytes: 20 << 20,
            ..Default::default()
        });
        let r = pod_resources(&spec);
        assert_eq!(r.cpu_quota, Some(60_000));
        assert_eq!(r.memory_limit, Some(120 << 20));
        assert_eq!(r.cpu_period, Some(100_000));
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.cpuset_cpus, None, "CRI zero values are unset");
        spec.resources = None;
        assert_eq!(
            pod_resources(&spec).memory_limit,
            Some(20 << 20),
            "overhead alone"
        );
    }
}
