//! The stats and metrics RPCs: ContainerStats, ListContainerStats,
//! PodSandboxStats, ListPodSandboxStats, ListMetricDescriptors,
//! ListPodSandboxMetrics (and their Stream* forms in `streams`). They read
//! the sampler's cache (crate::stats); a record it has not seen yet is
//! sampled on a blocking thread.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use tonic::{Response, Status};

use super::Cri;
use super::error::{missing, status};
use super::proto::*;
use crate::cgroups::stats::{Pressure, PressureLine};
use crate::container::{self, ContainerRecord};
use crate::pod::record::{PodRecord, State as PodState};
use crate::stats::{ContainerSample, PodSample, metrics};

type Reply<T> = Result<Response<T>, Status>;

impl Cri {
    pub(super) async fn container_stats_rpc(
        &self,
        req: ContainerStatsRequest,
    ) -> Reply<ContainerStatsResponse> {
        if req.container_id.is_empty() {
            return Err(missing("container_id"));
        }
        let rec = self
            .daemon
            .containers
            .status(&req.container_id)
            .map_err(status)?;
        let stats = self.container_stats(vec![rec]).await?.pop();
        Ok(Response::new(ContainerStatsResponse { stats }))
    }

    pub(super) async fn list_container_stats_rpc(
        &self,
        req: ListContainerStatsRequest,
    ) -> Reply<ListContainerStatsResponse> {
        let stats = self.container_stats_filtered(req.filter).await?;
        Ok(Response::new(ListContainerStatsResponse { stats }))
    }

    pub(super) async fn container_stats_filtered(
        &self,
        filter: Option<ContainerStatsFilter>,
    ) -> Result<Vec<ContainerStats>, Status> {
        let filter = filter.unwrap_or_default();
        let recs = self
            .daemon
            .containers
            .list(&container::Filter {
                id: filter.id,
                pod_id: filter.pod_sandbox_id,
                state: None,
                labels: filter.label_selector.into_iter().collect(),
            })
            .map_err(status)?;
        self.container_stats(recs).await
    }

    async fn container_stats(
        &self,
        recs: Vec<ContainerRecord>,
    ) -> Result<Vec<ContainerStats>, Status> {
        let sampler = self.daemon.stats.clone();
        let fs_id = self.writable_fs();
        blocking(move || {
            let samples = sampler.containers(&recs);
            recs.iter()
                .zip(&samples)
                .map(|(r, s)| container_stats(r, s, &fs_id))
                .collect()
        })
        .await
    }

    pub(super) async fn pod_sandbox_stats_rpc(
        &self,
        req: PodSandboxStatsRequest,
    ) -> Reply<PodSandboxStatsResponse> {
        if req.pod_sandbox_id.is_empty() {
            return Err(missing("pod_sandbox_id"));
        }
        let pod = self
            .daemon
            .pods
            .status(&req.pod_sandbox_id)
            .map_err(status)?;
        let stats = self.pod_stats(vec![pod]).await?.pop();
        Ok(Response::new(PodSandboxStatsResponse { stats }))
    }

    pub(super) async fn list_pod_sandbox_stats_rpc(
        &self,
        req: ListPodSandboxStatsRequest,
    ) -> Reply<ListPodSandboxStatsResponse> {
        let stats = self.pod_stats_filtered(req.filter).await?;
        Ok(Response::new(ListPodSandboxStatsResponse { stats }))
    }

    /// The READY pods the filter selects, with their stats.
    pub(super) async fn pod_stats_filtered(
        &self,
        filter: Option<PodSandboxStatsFilter>,
    ) -> Result<Vec<PodSandboxStats>, Status> {
        let pods = self.ready_pods(filter.unwrap_or_default())?;
        self.pod_stats(pods).await
    }

    fn ready_pods(&self, f: PodSandboxStatsFilter) -> Result<Vec<PodRecord>, Status> {
        self.daemon
            .pods
            .list(&crate::pod::Filter {
                id: f.id,
                state: Some(PodState::Ready),
                labels: f.label_selector.into_iter().collect(),
            })
            .map_err(status)
    }

    /// Every container of `pods`, by pod id.
    fn containers_of(
        &self,
        pods: &[PodRecord],
    ) -> Result<HashMap<String, Vec<ContainerRecord>>, Status> {
        let mut by_pod: HashMap<String, Vec<ContainerRecord>> =
            pods.iter().map(|p| (p.id.clone(), Vec::new())).collect();
        let filter = match pods {
            [one] => container::Filter {
                pod_id: one.id.clone(),
                ..Default::default()
            },
            _ => container::Filter::default(),
        };
        for c in self.daemon.containers.list(&filter).map_err(status)? {
            if let Some(list) = by_pod.get_mut(&c.pod_id) {
                list.push(c);
            }
        }
        Ok(by_pod)
    }

    async fn pod_stats(&self, pods: Vec<PodRecord>) -> Result<Vec<PodSandboxStats>, Status> {
        let mut by_pod = self.containers_of(&pods)?;
        let sampler = self.daemon.stats.clone();
        let fs_id = self.writable_fs();
        blocking(move || {
            let samples = sampler.pods(&pods);
            pods.iter()
                .zip(&samples)
                .map(|(p, s)| {
                    let recs = by_pod.remove(&p.id).unwrap_or_default();
                    let cs = sampler.containers(&recs);
                    let containers = recs
                        .iter()
                        .zip(&cs)
                        .map(|(r, c)| container_stats(r, c, &fs_id))
                        .collect();
                    pod_stats(p, s, containers)
                })
                .collect()
        })
        .await
    }

    pub(super) fn list_metric_descriptors_rpc(&self) -> Reply<ListMetricDescriptorsResponse> {
        let descriptors = metrics::DESCRIPTORS
            .iter()
            .map(|d| MetricDescriptor {
                name: d.name.into(),
                help: d.help.into(),
                label_keys: d.label_keys(),
            })
            .collect();
        Ok(Response::new(ListMetricDescriptorsResponse { descriptors }))
    }

    pub(super) async fn list_pod_sandbox_metrics_rpc(
        &self,
    ) -> Reply<ListPodSandboxMetricsResponse> {
        let pod_metrics = self.pod_metrics().await?;
        Ok(Response::new(ListPodSandboxMetricsResponse { pod_metrics }))
    }

    pub(super) async fn pod_metrics(&self) -> Result<Vec<PodSandboxMetrics>, Status> {
        let pods = self.ready_pods(PodSandboxStatsFilter::default())?;
        let mut by_pod = self.containers_of(&pods)?;
        let sampler = self.daemon.stats.clone();
        let dir = self.writable_fs();
        blocking(move || {
            let fs = filesystem(&dir);
            let samples = sampler.pods(&pods);
            pods.iter()
                .zip(&samples)
                .map(|(p, s)| {
                    let recs = by_pod.remove(&p.id).unwrap_or_default();
                    let cs = sampler.containers(&recs);
                    let pairs: Vec<_> = recs.into_iter().zip(cs).collect();
                    pod_metrics(metrics::pod_metrics(p, s, &pairs, fs))
                })
                .collect()
        })
        .await
    }

    /// Where the writable layers live: the filesystem kubelet accounts
    /// them to.
    fn writable_fs(&self) -> PathBuf {
        self.daemon.containers.settings().dir.clone()
    }
}

/// The sampler works with files: off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("stats task failed: {e}")))
}

/// The statvfs(3) of the writable layers' filesystem (zeros if it fails).
fn filesystem(dir: &std::path::Path) -> metrics::Filesystem {
    match nix::sys::statvfs::statvfs(dir) {
        Ok(v) => metrics::Filesystem {
            capacity_bytes: v.blocks() * v.fragment_size(),
            inodes: v.files(),
            inodes_free: v.files_available(),
        },
        Err(err) => {
            tracing::debug!(dir = %dir.display(), ?err, "statvfs");
            metrics::Filesystem::default()
        }
    }
}

fn u64v(v: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value: v })
}

fn unsorted(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn psi_data(l: &PressureLine) -> PsiData {
    PsiData {
        total: l.total_us.saturating_mul(1000),
        avg10: l.avg10,
        avg60: l.avg60,
        avg300: l.avg300,
    }
}

fn psi(p: &Option<Pressure>) -> Option<PsiStats> {
    p.as_ref().map(|p| PsiStats {
        full: Some(psi_data(&p.full)),
        some: Some(psi_data(&p.some)),
    })
}

fn cpu(ts: i64, s: &crate::cgroups::Stats, nano_cores: Option<u64>) -> CpuUsage {
    CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: s.cpu.as_ref().and_then(|c| u64v(c.usage_ns)),
        usage_nano_cores: nano_cores.and_then(u64v),
        psi: psi(&s.psi.cpu),
    }
}

fn memory(ts: i64, s: &crate::cgroups::Stats) -> MemoryUsage {
    let m = s.memory.clone().unwrap_or_default();
    MemoryUsage {
        timestamp: ts,
        working_set_bytes: u64v(m.working_set_bytes),
        available_bytes: m.available_bytes().and_then(u64v),
        usage_bytes: u64v(m.usage_bytes),
        rss_bytes: u64v(m.rss_bytes),
        page_faults: u64v(m.page_faults),
        major_page_faults: u64v(m.major_page_faults),
        psi: psi(&s.psi.memory),
    }
}

fn io(ts: i64, s: &crate::cgroups::Stats) -> Option<IoUsage> {
    s.psi.io.as_ref().map(|_| IoUsage {
        timestamp: ts,
        psi: psi(&s.psi.io),
    })
}

fn container_stats(
    r: &ContainerRecord,
    s: &ContainerSample,
    fs_dir: &std::path::Path,
) -> ContainerStats {
    let ts = s.timestamp;
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: r.id.clone(),
            metadata: Some(ContainerMetadata {
                name: r.name.clone(),
                attempt: r.attempt,
            }),
            labels: unsorted(&r.labels),
            annotations: unsorted(&r.annotations),
        }),
        cpu: Some(cpu(s.cpu_timestamp, &s.cgroup, s.nano_cores)),
        memory: Some(memory(ts, &s.cgroup)),
        writable_layer: Some(FilesystemUsage {
            timestamp: ts,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: fs_dir.display().to_string(),
            }),
            used_bytes: u64v(s.writable.bytes),
            inodes_used: u64v(s.writable.inodes),
        }),
        swap: s.cgroup.swap.as_ref().map(|w| SwapUsage {
            timestamp: ts,
            swap_available_bytes: w.available_bytes().and_then(u64v),
            swap_usage_bytes: u64v(w.usage_bytes),
        }),
        io: io(ts, &s.cgroup),
    }
}

fn interface(i: &crate::stats::netdev::Interface) -> NetworkInterfaceUsage {
    NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: u64v(i.rx_bytes),
        rx_errors: u64v(i.rx_errors),
        tx_bytes: u64v(i.tx_bytes),
        tx_errors: u64v(i.tx_errors),
    }
}

fn pod_stats(p: &PodRecord, s: &PodSample, containers: Vec<ContainerStats>) -> PodSandboxStats {
    let ts = s.timestamp;
    let network = s.network.as_ref().map(|ifs| NetworkUsage {
        timestamp: ts,
        // The interface CNI set up for the pod is eth0.
        default_interface: ifs
            .iter()
            .find(|i| i.name == "eth0")
            .or_else(|| ifs.first())
            .map(interface),
        interfaces: ifs.iter().map(interface).collect(),
    });
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: p.id.clone(),
            metadata: Some(PodSandboxMetadata {
                name: p.spec.name.clone(),
                uid: p.spec.uid.clone(),
                namespace: p.spec.namespace.clone(),
                attempt: p.spec.attempt,
            }),
            labels: unsorted(&p.spec.labels),
            annotations: unsorted(&p.spec.annotations),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: Some(cpu(s.cpu_timestamp, &s.cgroup, s.nano_cores)),
            memory: Some(memory(ts, &s.cgroup)),
            network,
            process: Some(ProcessUsage {
                timestamp: ts,
                process_count: u64v(s.cgroup.pids.unwrap_or(s.procs.processes)),
            }),
            containers,
            io: io(ts, &s.cgroup),
        }),
        windows: None,
    }
}

fn metric(m: &metrics::Metric) -> Metric {
    Metric {
        name: m.name.into(),
        timestamp: m.timestamp,
        metric_type: if m.counter {
            MetricType::Counter as i32
        } else {
            MetricType::Gauge as i32
        },
        label_values: m.labels.clone(),
        value: u64v(m.value),
    }
}

fn pod_metrics(m: metrics::PodMetrics) -> PodSandboxMetrics {
    PodSandboxMetrics {
        pod_sandbox_id: m.pod_id,
        metrics: m.metrics.iter().map(metric).collect(),
        container_metrics: m
            .containers
            .into_iter()
            .map(|(id, ms)| ContainerMetrics {
                container_id: id,
                metrics: ms.iter().map(metric).collect(),
            })
            .collect(),
    }
}
