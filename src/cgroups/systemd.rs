//! The systemd cgroup driver: pod slices and container scopes as transient
//! units, created over D-Bus (org.freedesktop.systemd1(5):
//! StartTransientUnit, StopUnit, SetUnitProperties, AttachProcessesToUnit;
//! systemd.resource-control(5)
//! for the properties), the way runc's systemd driver does it.
//!
//! Every call is blocking (zbus's blocking API, with its own executor
//! thread): the daemon calls these from `spawn_blocking`, never from the
//! single-threaded monitor. A start or stop waits for systemd's job to
//! finish (JobRemoved), so the cgroup is there (or gone) when it returns.
//!
//! Real tests need systemd as PID 1 and run only with
//! `CRIUS_TEST_SYSTEMD=1` (the VM tier's systemd guest):
//! `CRIUS_TEST_SYSTEMD=1 cargo test --lib cgroups::systemd -- --test-threads=1`.

use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

use cgroups_rs::systemd::{
    CPU_ACCOUNTING, CPU_QUOTA_PER_SEC_US, CPU_QUOTA_PERIOD_US, CPU_SHARES, CPU_WEIGHT,
    DEFAULT_DEPENDENCIES, DELEGATE, DESCRIPTION, MEMORY_ACCOUNTING, MEMORY_LIMIT, MEMORY_MAX,
    MEMORY_SWAP_MAX, NO_SUCH_UNIT, PIDS, SLICE, TASKS_ACCOUNTING, TASKS_MAX, UNIT_MODE_REPLACE,
    WANTS,
};
use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, Value};

use super::resources::{shares_to_weight, swap_for_v2};
use super::{Error, Resources, Unit, UnitManager};

/// How long a start or stop job may take.
const JOB_TIMEOUT: Duration = Duration::from_secs(30);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false,
    gen_blocking = true,
    blocking_name = "ManagerProxy"
)]
trait Manager {
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, Value<'_>)],
        aux: &[(&str, Vec<(&str, Value<'_>)>)],
    ) -> zbus::Result<OwnedObjectPath>;

    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    fn attach_processes_to_unit(
        &self,
        unit_name: &str,
        subcgroup: &str,
        pids: &[u32],
    ) -> zbus::Result<()>;

    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn set_unit_properties(
        &self,
        name: &str,
        runtime: bool,
        properties: &[(&str, Value<'_>)],
    ) -> zbus::Result<()>;

    fn subscribe(&self) -> zbus::Result<()>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

/// The system bus connection to systemd, made on first use.
#[derive(Debug)]
pub struct Systemd {
    /// cgroup v2 alone: v2 property names (CPUWeight, MemoryMax, ...).
    unified: bool,
    conn: Mutex<Option<Connection>>,
}

impl Systemd {
    pub fn new(unified: bool) -> Systemd {
        Systemd {
            unified,
            conn: Mutex::new(None),
        }
    }

    fn manager(&self, unit: &str) -> Result<ManagerProxy<'static>, Error> {
        let err = |op, source| Error::Systemd {
            op,
            unit: unit.into(),
            source: Box::new(source),
        };
        let mut conn = self.conn.lock().expect("lock poisoned");
        if conn.is_none() {
            let c = Connection::system().map_err(|e| err("connect to the system bus for", e))?;
            let proxy = ManagerProxy::new(&c).map_err(|e| err("manager proxy for", e))?;
            // JobRemoved is only sent to subscribed clients.
            proxy.subscribe().map_err(|e| err("subscribe for", e))?;
            *conn = Some(c);
        }
        let c = conn.as_ref().expect("connected above");
        ManagerProxy::new(c).map_err(|e| err("manager proxy for", e))
    }

    /// Runs a job-returning call and waits for its JobRemoved signal.
    fn run_job(
        &self,
        op: &'static str,
        unit: &str,
        call: impl FnOnce(&ManagerProxy<'static>) -> zbus::Result<OwnedObjectPath>,
    ) -> Result<(), Error> {
        let result = self.try_run_job(op, unit, call);
        if let Err(Error::Systemd { .. }) = &result {
            // A broken connection is re-made by the next call.
            *self.conn.lock().expect("lock poisoned") = None;
        }
        result
    }

    fn try_run_job(
        &self,
        op: &'static str,
        unit: &str,
        call: impl FnOnce(&ManagerProxy<'static>) -> zbus::Result<OwnedObjectPath>,
    ) -> Result<(), Error> {
        let err = |source| Error::Systemd {
            op,
            unit: unit.into(),
            source: Box::new(source),
        };
        let proxy = self.manager(unit)?;
        // Listen before the call: the job may finish before it returns.
        let signals = proxy.receive_job_removed().map_err(err)?;
        let job = call(&proxy).map_err(err)?;
        let (tx, rx) = mpsc::channel();
        // The blocking iterator has no timeout: a helper thread reads it
        // and ends with our job's signal (or when the connection closes).
        std::thread::Builder::new()
            .name("systemd-job".into())
            .spawn(move || {
                for signal in signals {
                    if let Ok(args) = signal.args()
                        && args.job == job
                    {
                        let _ = tx.send(args.result.clone());
                        return;
                    }
                }
            })
            .map_err(|e| err(zbus::Error::InputOutput(e.into())))?;
        match rx.recv_timeout(JOB_TIMEOUT) {
            Ok(result) if result == "done" => Ok(()),
            Ok(result) => Err(Error::SystemdJob {
                op,
                unit: unit.into(),
                result,
            }),
            Err(_) => Err(Error::SystemdJob {
                op,
                unit: unit.into(),
                result: format!("did not finish within {}s", JOB_TIMEOUT.as_secs()),
            }),
        }
    }
}

impl UnitManager for Systemd {
    fn start(&self, unit: &Unit, res: &Resources, pid: Option<i32>) -> Result<(), Error> {
        let props = start_properties(unit, res, pid, self.unified)?;
        self.run_job("start", &unit.name, |m| {
            m.start_transient_unit(&unit.name, UNIT_MODE_REPLACE, &props, &[])
        })
    }

    fn exists(&self, unit: &Unit) -> Result<bool, Error> {
        let proxy = self.manager(&unit.name)?;
        match proxy.get_unit(&unit.name) {
            Ok(_) => Ok(true),
            Err(e) if is_no_such_unit(&e) => Ok(false),
            Err(source) => Err(Error::Systemd {
                op: "look up",
                unit: unit.name.clone(),
                source: Box::new(source),
            }),
        }
    }

    fn set_resources(&self, unit: &Unit, res: &Resources) -> Result<(), Error> {
        let props = resource_properties(res, self.unified)?;
        if props.is_empty() {
            return Ok(());
        }
        let proxy = self.manager(&unit.name)?;
        proxy
            .set_unit_properties(&unit.name, true, &props)
            .map_err(|source| Error::Systemd {
                op: "set properties of",
                unit: unit.name.clone(),
                source: Box::new(source),
            })
    }

    fn stop(&self, unit: &Unit) -> Result<(), Error> {
        match self.run_job("stop", &unit.name, |m| {
            m.stop_unit(&unit.name, UNIT_MODE_REPLACE)
        }) {
            Err(Error::Systemd { source, .. }) if is_no_such_unit(&source) => {}
            r => r?,
        }
        // A unit whose processes failed stays loaded as "failed".
        if let Ok(proxy) = self.manager(&unit.name)
            && let Err(e) = proxy.reset_failed_unit(&unit.name)
            && !is_no_such_unit(&e)
        {
            tracing::debug!(unit = %unit.name, err = %e, "reset failed unit");
        }
        Ok(())
    }

    fn attach(&self, unit: &Unit, pid: i32) -> Result<(), Error> {
        let pid = u32::try_from(pid).map_err(|_| Error::InvalidPath {
            path: unit.name.clone(),
            reason: format!("pid {pid} cannot be attached"),
        })?;
        let proxy = self.manager(&unit.name)?;
        proxy
            .attach_processes_to_unit(&unit.name, "", &[pid])
            .map_err(|source| Error::Systemd {
                op: "attach a process to",
                unit: unit.name.clone(),
                source: Box::new(source),
            })
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _) if name.as_str() == NO_SUCH_UNIT)
}

/// The properties of a new transient unit, as runc sets them: a slice
/// hangs below its parent through Wants=, a scope goes into its Slice=
/// with delegation; accounting on, no default dependencies.
pub fn start_properties(
    unit: &Unit,
    res: &Resources,
    pid: Option<i32>,
    unified: bool,
) -> Result<Vec<(&'static str, Value<'static>)>, Error> {
    let mut props: Vec<(&'static str, Value<'static>)> =
        vec![(DESCRIPTION, Value::from(format!("crius {}", unit.name)))];
    if unit.is_scope() {
        props.push((SLICE, Value::from(unit.slice.clone())));
        props.push((DELEGATE, Value::from(true)));
        let pids: Vec<u32> = pid.map(|p| p as u32).into_iter().collect();
        props.push((PIDS, Value::from(pids)));
    } else if unit.slice != "-.slice" {
        // Wants= is a list of units ("as"), as runc sends it.
        props.push((WANTS, Value::from(vec![unit.slice.clone()])));
    }
    props.extend([
        (CPU_ACCOUNTING, Value::from(true)),
        (MEMORY_ACCOUNTING, Value::from(true)),
        (TASKS_ACCOUNTING, Value::from(true)),
        (DEFAULT_DEPENDENCIES, Value::from(false)),
    ]);
    props.extend(resource_properties(res, unified)?);
    if let Some(rules) = &res.devices {
        props.extend(rules.systemd_properties());
    }
    Ok(props)
}

/// systemd's names for crius's resources (systemd.resource-control(5)).
/// cpusets and hugepages are written to the files only.
pub fn resource_properties(
    res: &Resources,
    unified: bool,
) -> Result<Vec<(&'static str, Value<'static>)>, Error> {
    let limit = |v: i64| if v < 0 { u64::MAX } else { v as u64 };
    let mut props = Vec::new();
    if let Some(shares) = res.cpu_shares {
        if unified {
            props.push((CPU_WEIGHT, Value::from(shares_to_weight(shares))));
        } else {
            props.push((CPU_SHARES, Value::from(shares)));
        }
    }
    if let Some(period) = res.cpu_period {
        props.push((CPU_QUOTA_PERIOD_US, Value::from(period)));
    }
    if let Some(quota) = res.cpu_quota {
        props.push((
            CPU_QUOTA_PER_SEC_US,
            Value::from(quota_per_sec(quota, res.cpu_period)),
        ));
    }
    if let Some(m) = res.memory_limit {
        let name = if unified { MEMORY_MAX } else { MEMORY_LIMIT };
        props.push((name, Value::from(limit(m))));
    }
    if unified && let Some(swap) = swap_for_v2(res.memory_swap_limit, res.memory_limit)? {
        props.push((MEMORY_SWAP_MAX, Value::from(limit(swap))));
    }
    if let Some(p) = res.pids_limit {
        props.push((TASKS_MAX, Value::from(limit(p))));
    }
    Ok(props)
}

/// CPUQuotaPerSecUSec from a CFS quota and period, rounded up to systemd's
/// 10ms granularity as runc does (else systemd would round it down).
pub fn quota_per_sec(quota: i64, period: Option<u64>) -> u64 {
    if quota <= 0 {
        return u64::MAX;
    }
    let period = period.unwrap_or(100_000).max(1);
    let per_sec = (quota as u64).saturating_mul(1_000_000) / period;
    per_sec.div_ceil(10_000) * 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(props: &[(&str, Value<'_>)]) -> Vec<String> {
        props.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    #[test]
    fn scope_properties() {
        let unit = Unit {
            name: "crius-c1.scope".into(),
            slice: "kubepods-podx.slice".into(),
        };
        let res = Resources {
            cpu_shares: Some(1024),
            memory_limit: Some(1 << 20),
            memory_swap_limit: Some(2 << 20),
            pids_limit: Some(-1),
            ..Default::default()
        };
        let p = names(&start_properties(&unit, &res, Some(42), true).unwrap());
        for want in [
            "Slice=\"kubepods-podx.slice\"",
            "Delegate=true",
            "PIDs=[uint32 42]",
            "CPUWeight=uint64 39",
            "MemoryMax=uint64 1048576",
            "MemorySwapMax=uint64 1048576",
            "TasksMax=uint64 18446744073709551615",
            "DefaultDependencies=false",
        ] {
            assert!(p.iter().any(|x| x == want), "{want} not in {p:?}");
        }
        assert!(!p.iter().any(|x| x.starts_with("Wants")), "{p:?}");
    }

    #[test]
    fn slice_properties_v1_names() {
        let unit = Unit {
            name: "kubepods-podx.slice".into(),
            slice: "kubepods.slice".into(),
        };
        let res = Resources {
            cpu_shares: Some(512),
            memory_limit: Some(4096),
            ..Default::default()
        };
        let p = names(&start_properties(&unit, &res, None, false).unwrap());
        assert!(
            p.contains(&"Wants=[\"kubepods.slice\"]".to_string()),
            "{p:?}"
        );
        assert!(p.contains(&"CPUShares=uint64 512".to_string()), "{p:?}");
        assert!(p.contains(&"MemoryLimit=uint64 4096".to_string()), "{p:?}");
        assert!(
            !p.iter()
                .any(|x| x.starts_with("PIDs") || x.starts_with("Delegate"))
        );
        let root = Unit {
            name: "crius.slice".into(),
            slice: "-.slice".into(),
        };
        let p = names(&start_properties(&root, &Resources::default(), None, true).unwrap());
        assert!(!p.iter().any(|x| x.starts_with("Wants")), "{p:?}");
    }

    #[test]
    fn quota_rounds_up_to_10ms() {
        assert_eq!(quota_per_sec(50_000, Some(100_000)), 500_000);
        assert_eq!(quota_per_sec(1_234, Some(100_000)), 20_000);
        assert_eq!(quota_per_sec(-1, Some(100_000)), u64::MAX);
        assert_eq!(quota_per_sec(200_000, None), 2_000_000);
    }

    /// From the daemon's blocking pool: with systemd (the VM guest) an
    /// unknown unit is absent and stopping it is fine; without a system
    /// bus (this host) the error is Unavailable, promptly.
    #[test]
    fn unknown_units_from_a_tokio_blocking_thread() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let unit = Unit {
            name: format!("crius-absent{}.scope", &crate::ids::new_id()[..8]),
            slice: "-.slice".into(),
        };
        let started = std::time::Instant::now();
        let (exists, stop) = rt.block_on(async move {
            tokio::task::spawn_blocking(move || {
                let s = Systemd::new(true);
                (s.exists(&unit), s.stop(&unit))
            })
            .await
            .unwrap()
        });
        if std::env::var("CRIUS_TEST_SYSTEMD").is_ok_and(|v| v == "1") {
            assert!(matches!(exists, Ok(false)), "{exists:?}");
            assert!(stop.is_ok(), "{stop:?}");
        } else {
            use crate::error::{Classify, Kind};
            let e = exists.unwrap_err();
            assert_eq!(e.kind(), Kind::Unavailable, "{e}");
            assert!(e.to_string().contains("crius-absent"), "{e}");
            assert!(stop.is_err());
        }
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn bad_swap_is_refused() {
        let res = Resources {
            memory_limit: Some(100),
            memory_swap_limit: Some(50),
            ..Default::default()
        };
        assert!(resource_properties(&res, true).is_err());
    }
}
