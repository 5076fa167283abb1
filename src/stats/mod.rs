//! The node's stats sampler: one background loop that reads every pod's and
//! container's usage each interval (default 10 s, like kubelet's
//! housekeeping) into a cache, so that the stats and metrics RPCs answer
//! from memory and CPU rates have a window.
//!
//! Per container: its cgroup ([`crate::cgroups::stats`]), the CPU rate over
//! the last interval (`usage_nano_cores`), the disk usage of its writable
//! layer ([`fs_usage`], walked here and never on an RPC's path), process,
//! thread, fd and socket counts ([`procs`]) and OOM kills. Per pod: its
//! cgroup and rate, and the network counters of its pinned network
//! namespace ([`netdev`], read on a dedicated OS thread).
//!
//! An RPC asks for the records it answers about: a record the cache has in
//! the same state is answered from the cache; one it has not seen yet (a
//! container created since the last round) is sampled at once and added.
//! The cumulative CPU counter of a running container or ready pod is read
//! again when its sample is older than [`CPU_FRESH`] (one file), so two
//! answers a second apart show CPU moving (crictl computes its CPU% so);
//! the rate (`nano_cores`) and everything else stay the sampler's.
//! A container that is not running (created, exited) has zero CPU and
//! memory, never an error.

pub mod fs_usage;
pub mod metrics;
pub mod netdev;
pub mod procs;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::cgroups::{CgroupPath, Cgroups, Stats, stats};
use crate::container::record::{CONTAINERS, ContainerRecord, State};
use crate::pod::record::{PODS, PodRecord, State as PodState};
use crate::record::Record;
use crate::store::Store;

/// How old a sample's CPU counter may be before a stats RPC reads it
/// again: `crictl stats` and `statsp` take two answers a second apart and
/// need the counter and its timestamp to move between them, whatever the
/// sampler's interval. One file per running container or ready pod.
pub const CPU_FRESH: Duration = Duration::from_millis(500);

/// What the sampler knows about one container.
#[derive(Debug, Clone)]
pub struct ContainerSample {
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// When `cgroup.cpu`'s usage was read: the sample's time, or later
    /// when an RPC read the counter again ([`CPU_FRESH`]).
    pub cpu_timestamp: i64,
    /// The container's state when sampled (a new state samples again).
    pub state: State,
    pub cgroup: Stats,
    /// CPU rate over the time since the previous sample, in billionths of
    /// a core; `None` until there are two samples of the running container.
    pub nano_cores: Option<u64>,
    pub writable: fs_usage::Usage,
    pub procs: procs::Counts,
    pub oom_kills: u64,
    at: Instant,
}

/// What the sampler knows about one pod.
#[derive(Debug, Clone)]
pub struct PodSample {
    pub timestamp: i64,
    pub cpu_timestamp: i64,
    pub state: PodState,
    pub cgroup: Stats,
    pub nano_cores: Option<u64>,
    /// Interfaces of the pod's own network namespace (`None` for a pod in
    /// the host's network, or when it could not be read).
    pub network: Option<Vec<netdev::Interface>>,
    pub procs: procs::Counts,
    at: Instant,
}

#[derive(Default)]
struct Cache {
    containers: HashMap<String, ContainerSample>,
    pods: HashMap<String, PodSample>,
}

pub struct Sampler {
    cgroups: Arc<Cgroups>,
    store: Arc<Store>,
    interval: Duration,
    proc_root: PathBuf,
    cache: RwLock<Cache>,
    /// The last walk of each writable layer.
    walks: Mutex<HashMap<String, fs_usage::Walk>>,
}

impl Sampler {
    pub fn new(cgroups: Arc<Cgroups>, store: Arc<Store>, interval: Duration) -> Sampler {
        Sampler {
            cgroups,
            store,
            interval,
            proc_root: PathBuf::from("/proc"),
            cache: RwLock::new(Cache::default()),
            walks: Mutex::new(HashMap::new()),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Starts the background loop on the tokio runtime: a round now, then
    /// one per interval (a slow round delays the next, never overlaps it).
    pub fn spawn(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let round = me.clone();
                let started = Instant::now();
                match tokio::task::spawn_blocking(move || round.round()).await {
                    Ok(Ok(n)) => tracing::debug!(
                        samples = n,
                        took_ms = started.elapsed().as_millis() as u64,
                        "stats round"
                    ),
                    Ok(Err(err)) => tracing::warn!(?err, "stats round"),
                    Err(err) => tracing::error!(?err, "stats round panicked"),
                }
            }
        });
    }

    /// One sampling round over every visible pod and container; returns
    /// how many were sampled.
    pub fn round(&self) -> Result<usize, crate::store::Error> {
        let containers: Vec<ContainerRecord> = self
            .store
            .list(CONTAINERS)?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.visible())
            .map(ContainerRecord::effective)
            .collect();
        let pods: Vec<PodRecord> = self
            .store
            .list(PODS)?
            .into_iter()
            .map(|(_, r)| r)
            .filter(|r| r.visible())
            .map(|mut r| {
                r.state = r.effective_state();
                r
            })
            .collect();
        let started = Instant::now();
        let (old_containers, old_pods) = {
            let cache = self.cache.read().expect("stats cache poisoned");
            (cache.containers.clone(), cache.pods.clone())
        };
        let mut fresh = Cache::default();
        for rec in &containers {
            let s = self.sample_container(rec, old_containers.get(&rec.id));
            fresh.containers.insert(rec.id.clone(), s);
        }
        for (rec, s) in pods.iter().zip(self.sample_pods(&pods, &old_pods)) {
            fresh.pods.insert(rec.id.clone(), s);
        }
        let n = fresh.containers.len() + fresh.pods.len();
        self.walks
            .lock()
            .expect("walks poisoned")
            .retain(|id, _| fresh.containers.contains_key(id));
        // Samples an RPC took during the round (records newer than the
        // round's listing) stay; those of removed records go.
        let mut cache = self.cache.write().expect("stats cache poisoned");
        for (id, s) in cache.containers.drain() {
            if s.at >= started {
                fresh.containers.entry(id).or_insert(s);
            }
        }
        for (id, s) in cache.pods.drain() {
            if s.at >= started {
                fresh.pods.entry(id).or_insert(s);
            }
        }
        *cache = fresh;
        Ok(n)
    }

    /// Samples of `recs` (effective records), from the cache, or taken now
    /// for a record it has not seen in this state. Blocking.
    pub fn containers(&self, recs: &[ContainerRecord]) -> Vec<ContainerSample> {
        let mut out = Vec::with_capacity(recs.len());
        let mut missing = Vec::new();
        {
            let cache = self.cache.read().expect("stats cache poisoned");
            for (i, rec) in recs.iter().enumerate() {
                match cache.containers.get(&rec.id) {
                    Some(s) if s.state == rec.state => out.push(Some(s.clone())),
                    _ => {
                        out.push(None);
                        missing.push(i);
                    }
                }
            }
        }
        for i in missing {
            let rec = &recs[i];
            let prev = self
                .cache
                .read()
                .expect("stats cache poisoned")
                .containers
                .get(&rec.id)
                .cloned();
            let s = self.sample_container(rec, prev.as_ref());
            self.cache
                .write()
                .expect("stats cache poisoned")
                .containers
                .insert(rec.id.clone(), s.clone());
            out[i] = Some(s);
        }
        let mut out: Vec<ContainerSample> = out.into_iter().flatten().collect();
        for (rec, s) in recs.iter().zip(&mut out) {
            if rec.state == State::Running {
                self.fresh_cpu(
                    rec.cgroup.as_ref(),
                    s.at,
                    &mut s.cgroup,
                    &mut s.cpu_timestamp,
                );
            }
        }
        out
    }

    /// Reads the CPU counter again when the sample is older than
    /// [`CPU_FRESH`] (the rate stays the sampler's).
    fn fresh_cpu(&self, cg: Option<&CgroupPath>, at: Instant, stats: &mut Stats, ts: &mut i64) {
        let (Some(cg), Some(cpu)) = (cg, stats.cpu.as_mut()) else {
            return;
        };
        if at.elapsed() < CPU_FRESH {
            return;
        }
        if let Ok(Some(ns)) = self.cgroups.cpu_usage(cg) {
            cpu.usage_ns = ns;
            *ts = crate::pod::now_ns();
        }
    }

    /// Samples of `pods` (with their effective state), as for containers.
    pub fn pods(&self, pods: &[PodRecord]) -> Vec<PodSample> {
        let mut out = Vec::with_capacity(pods.len());
        let mut missing = Vec::new();
        {
            let cache = self.cache.read().expect("stats cache poisoned");
            for rec in pods {
                match cache.pods.get(&rec.id) {
                    Some(s) if s.state == rec.state => out.push(Some(s.clone())),
                    _ => {
                        out.push(None);
                        missing.push(rec.clone());
                    }
                }
            }
        }
        if !missing.is_empty() {
            let prev = self
                .cache
                .read()
                .expect("stats cache poisoned")
                .pods
                .clone();
            let samples = self.sample_pods(&missing, &prev);
            let mut cache = self.cache.write().expect("stats cache poisoned");
            let mut samples = samples.into_iter();
            for (slot, rec) in out.iter_mut().zip(pods) {
                if slot.is_none() {
                    let s = samples.next().expect("one sample per missing pod");
                    cache.pods.insert(rec.id.clone(), s.clone());
                    *slot = Some(s);
                }
            }
        }
        let mut out: Vec<PodSample> = out.into_iter().flatten().collect();
        for (rec, s) in pods.iter().zip(&mut out) {
            if rec.state == PodState::Ready {
                self.fresh_cpu(
                    rec.cgroup.as_ref(),
                    s.at,
                    &mut s.cgroup,
                    &mut s.cpu_timestamp,
                );
            }
        }
        out
    }

    fn sample_container(
        &self,
        rec: &ContainerRecord,
        prev: Option<&ContainerSample>,
    ) -> ContainerSample {
        let timestamp = crate::pod::now_ns();
        let at = Instant::now();
        let mut s = ContainerSample {
            timestamp,
            cpu_timestamp: timestamp,
            state: rec.state,
            cgroup: zero_stats(),
            nano_cores: None,
            writable: self.writable(&rec.id, &crate::container::upper_dir(&rec.dir)),
            procs: procs::Counts::default(),
            oom_kills: prev.map(|p| p.oom_kills).unwrap_or(0),
            at,
        };
        if rec.state != State::Running {
            return s;
        }
        let Some(cg) = &rec.cgroup else { return s };
        match self.cgroups.stats(cg) {
            Ok(stats) => s.cgroup = stats,
            // The container may have exited (and its cgroup gone) since
            // its record was read.
            Err(err) => {
                tracing::debug!(container_id = %rec.id, ?err, "container cgroup stats");
                return s;
            }
        }
        if let Ok(pids) = self.cgroups.procs(cg) {
            s.procs = procs::count(&self.proc_root, &pids);
        }
        if let Ok(n) = self.cgroups.oom_kills(cg) {
            s.oom_kills = n;
        }
        s.nano_cores = prev
            .filter(|p| p.state == State::Running)
            .and_then(|p| rate(p.cgroup.cpu.as_ref(), p.at, s.cgroup.cpu.as_ref(), at));
        s
    }

    /// The writable layer's usage: walked again when due, else the last walk.
    fn writable(&self, id: &str, upper: &Path) -> fs_usage::Usage {
        let now = Instant::now();
        if let Some(w) = self.walks.lock().expect("walks poisoned").get(id)
            && !fs_usage::due(Some(w), self.interval, now)
        {
            return w.usage;
        }
        match fs_usage::walk(upper) {
            Ok(w) => {
                self.walks
                    .lock()
                    .expect("walks poisoned")
                    .insert(id.to_string(), w);
                w.usage
            }
            Err(err) => {
                tracing::debug!(container_id = %id, ?err, "walk writable layer");
                fs_usage::Usage::default()
            }
        }
    }

    fn sample_pods(&self, pods: &[PodRecord], prev: &HashMap<String, PodSample>) -> Vec<PodSample> {
        let pins: Vec<(String, PathBuf)> = pods
            .iter()
            .filter(|p| p.state == PodState::Ready)
            .filter_map(|p| Some((p.id.clone(), p.netns.clone()?)))
            .collect();
        let mut networks = match netdev::read_all(pins) {
            Ok(n) => n,
            Err(err) => {
                tracing::warn!(?err, "read pod network counters");
                HashMap::new()
            }
        };
        pods.iter()
            .map(|rec| {
                let at = Instant::now();
                let timestamp = crate::pod::now_ns();
                let mut s = PodSample {
                    timestamp,
                    cpu_timestamp: timestamp,
                    state: rec.state,
                    cgroup: zero_stats(),
                    nano_cores: None,
                    network: None,
                    procs: procs::Counts::default(),
                    at,
                };
                match networks.remove(&rec.id) {
                    Some(Ok(ifs)) => s.network = Some(ifs),
                    Some(Err(err)) => tracing::debug!(pod_id = %rec.id, ?err, "pod network"),
                    None => {}
                }
                if rec.state != PodState::Ready {
                    return s;
                }
                let Some(cg) = &rec.cgroup else { return s };
                match self.cgroups.stats(cg) {
                    Ok(stats) => s.cgroup = stats,
                    Err(err) => {
                        tracing::debug!(pod_id = %rec.id, ?err, "pod cgroup stats");
                        return s;
                    }
                }
                if let Ok(pids) = self.cgroups.procs(cg) {
                    s.procs = procs::count(&self.proc_root, &pids);
                }
                s.nano_cores = prev
                    .get(&rec.id)
                    .filter(|p| p.state == PodState::Ready)
                    .and_then(|p| rate(p.cgroup.cpu.as_ref(), p.at, s.cgroup.cpu.as_ref(), at));
                s
            })
            .collect()
    }
}

/// The stats of something that is not running: zero CPU and memory.
fn zero_stats() -> Stats {
    Stats {
        cpu: Some(stats::Cpu::default()),
        memory: Some(stats::Memory::default()),
        pids: Some(0),
        ..Default::default()
    }
}

/// CPU used between two samples, in billionths of a core.
fn rate(
    before: Option<&stats::Cpu>,
    t0: Instant,
    after: Option<&stats::Cpu>,
    t1: Instant,
) -> Option<u64> {
    let (before, after) = (before?, after?);
    let elapsed = t1.checked_duration_since(t0)?.as_nanos();
    if elapsed == 0 {
        return None;
    }
    let used = u128::from(after.usage_ns.checked_sub(before.usage_ns)?);
    u64::try_from(used * 1_000_000_000 / elapsed).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_is_cpu_time_over_wall_time() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(2);
        let cpu = |ns| stats::Cpu {
            usage_ns: ns,
            ..Default::default()
        };
        // One second of CPU in two seconds: half a core.
        assert_eq!(
            rate(Some(&cpu(1_000_000_000)), t0, Some(&cpu(2_000_000_000)), t1),
            Some(500_000_000)
        );
        // A counter that went back (a new cgroup): no rate.
        assert_eq!(rate(Some(&cpu(5)), t0, Some(&cpu(1)), t1), None);
        assert_eq!(rate(None, t0, Some(&cpu(1)), t1), None);
        assert_eq!(rate(Some(&cpu(1)), t1, Some(&cpu(2)), t0), None);
    }
}
