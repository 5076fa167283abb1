//! The cAdvisor-style metrics kubelet exports from the CRI when it runs
//! without cAdvisor (ListMetricDescriptors, ListPodSandboxMetrics): the
//! names, help texts and label keys of cAdvisor's `container_*` metrics
//! (as critest's list of kubelet's metrics names them), computed from the
//! sampler's cache.
//!
//! Every metric carries the base labels `id image namespace pod container`
//! and then its own (`cpu`, `interface`, `failure_type scope`, `device`),
//! in its descriptor's order, so a metric has exactly as many label values
//! as its descriptor has keys. Values are integers (the CRI's UInt64Value):
//! seconds are whole seconds, as CRI-O reports them. Network counters
//! belong to the pod (`container="POD"`), the rest to each container.
//!
//! Not reported: hugetlb usage, memory reservation, soft ulimits (crius
//! does not track them); the block I/O metrics (`container_fs_reads*`,
//! `container_fs_writes*`, `container_blkio_device_usage_total`) have
//! descriptors but no values yet; PSI metrics have values on cgroup v2 only.

use super::{ContainerSample, PodSample};
use crate::container::record::ContainerRecord;
use crate::pod::record::PodRecord;

/// Label keys every metric starts with.
pub const BASE_LABELS: [&str; 5] = ["id", "image", "namespace", "pod", "container"];

pub struct Descriptor {
    pub name: &'static str,
    pub help: &'static str,
    /// Label keys after [`BASE_LABELS`].
    pub extra_labels: &'static [&'static str],
}

impl Descriptor {
    pub fn label_keys(&self) -> Vec<String> {
        BASE_LABELS
            .iter()
            .chain(self.extra_labels)
            .map(|s| s.to_string())
            .collect()
    }
}

const fn d(
    name: &'static str,
    help: &'static str,
    extra_labels: &'static [&'static str],
) -> Descriptor {
    Descriptor {
        name,
        help,
        extra_labels,
    }
}

const NET: &[&str] = &["interface"];
const DEV: &[&str] = &["device"];

/// Every metric crius reports, as ListMetricDescriptors lists them.
pub const DESCRIPTORS: &[Descriptor] = &[
    d(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        &["cpu"],
    ),
    d(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
        &[],
    ),
    d(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
        &[],
    ),
    d(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        &[],
    ),
    d(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        &[],
    ),
    d(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        &[],
    ),
    d(
        "container_fs_inodes_free",
        "Number of available inodes.",
        &[],
    ),
    d("container_fs_inodes_total", "Number of inodes.", &[]),
    d(
        "container_fs_limit_bytes",
        "Number of bytes that can be consumed by the container on this filesystem.",
        &[],
    ),
    d(
        "container_fs_usage_bytes",
        "Number of bytes that are consumed by the container on this filesystem.",
        &[],
    ),
    d(
        "container_fs_reads_bytes_total",
        "Cumulative count of bytes read.",
        DEV,
    ),
    d(
        "container_fs_reads_total",
        "Cumulative count of reads completed.",
        DEV,
    ),
    d(
        "container_fs_writes_bytes_total",
        "Cumulative count of bytes written.",
        DEV,
    ),
    d(
        "container_fs_writes_total",
        "Cumulative count of writes completed.",
        DEV,
    ),
    d(
        "container_blkio_device_usage_total",
        "Blkio device bytes usage.",
        &["device", "major", "minor", "operation"],
    ),
    d(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        &[],
    ),
    d("container_memory_rss", "Size of RSS in bytes.", &[]),
    d(
        "container_memory_kernel_usage",
        "Size of kernel memory allocated in bytes.",
        &[],
    ),
    d(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        &[],
    ),
    d(
        "container_memory_swap",
        "Container swap usage in bytes.",
        &[],
    ),
    d(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        &[],
    ),
    d(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        &[],
    ),
    d(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        &[],
    ),
    d(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        &[],
    ),
    d(
        "container_memory_failures_total",
        "Cumulative count of memory allocation failures.",
        &["failure_type", "scope"],
    ),
    d(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        NET,
    ),
    d(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        NET,
    ),
    d(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        NET,
    ),
    d(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        NET,
    ),
    d(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        NET,
    ),
    d(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        NET,
    ),
    d(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        NET,
    ),
    d(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        NET,
    ),
    d(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        &[],
    ),
    d(
        "container_file_descriptors",
        "Number of open file descriptors for the container.",
        &[],
    ),
    d(
        "container_processes",
        "Number of processes running inside the container.",
        &[],
    ),
    d(
        "container_sockets",
        "Number of open sockets for the container.",
        &[],
    ),
    d(
        "container_threads",
        "Number of threads running inside the container.",
        &[],
    ),
    d(
        "container_threads_max",
        "Maximum number of threads allowed inside the container, infinity if value is zero.",
        &[],
    ),
    d(
        "container_spec_cpu_period",
        "CPU period of the container.",
        &[],
    ),
    d(
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        &[],
    ),
    d(
        "container_spec_cpu_shares",
        "CPU share of the container.",
        &[],
    ),
    d(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        &[],
    ),
    d(
        "container_spec_memory_swap_limit_bytes",
        "Memory swap limit for the container.",
        &[],
    ),
    d(
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        &[],
    ),
    d(
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        &[],
    ),
    d(
        "container_pressure_cpu_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to CPU congestion.",
        &[],
    ),
    d(
        "container_pressure_cpu_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to CPU congestion.",
        &[],
    ),
    d(
        "container_pressure_memory_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to memory congestion.",
        &[],
    ),
    d(
        "container_pressure_memory_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to memory congestion.",
        &[],
    ),
    d(
        "container_pressure_io_waiting_seconds_total",
        "Total time duration tasks in the container have waited due to IO congestion.",
        &[],
    ),
    d(
        "container_pressure_io_stalled_seconds_total",
        "Total time duration no tasks in the container could make progress due to IO congestion.",
        &[],
    ),
];

/// One value of a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub counter: bool,
    /// Base label values, then the metric's own.
    pub labels: Vec<String>,
    pub value: u64,
    /// When it was sampled, nanoseconds since the Unix epoch.
    pub timestamp: i64,
}

/// The filesystem that holds the writable layers (statvfs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Filesystem {
    pub capacity_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub struct PodMetrics {
    pub pod_id: String,
    pub metrics: Vec<Metric>,
    /// Per container id.
    pub containers: Vec<(String, Vec<Metric>)>,
}

/// Collects values with their base labels and timestamp.
struct Out {
    base: Vec<String>,
    timestamp: i64,
    metrics: Vec<Metric>,
}

impl Out {
    fn add(&mut self, name: &'static str, counter: bool, extra: &[&str], value: u64) {
        debug_assert!(
            DESCRIPTORS
                .iter()
                .any(|d| d.name == name && d.extra_labels.len() == extra.len()),
            "{name} has no descriptor with {} extra labels",
            extra.len()
        );
        let mut labels = self.base.clone();
        labels.extend(extra.iter().map(|s| s.to_string()));
        self.metrics.push(Metric {
            name,
            counter,
            labels,
            value,
            timestamp: self.timestamp,
        });
    }
    fn gauge(&mut self, name: &'static str, value: u64) {
        self.add(name, false, &[], value);
    }
    fn counter(&mut self, name: &'static str, value: u64) {
        self.add(name, true, &[], value);
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;

/// The metrics of a pod and its containers.
pub fn pod_metrics(
    pod: &PodRecord,
    sample: &PodSample,
    containers: &[(ContainerRecord, ContainerSample)],
    fs: Filesystem,
) -> PodMetrics {
    let ns = &pod.spec.namespace;
    let name = &pod.spec.name;
    let mut out = Out {
        base: vec![
            pod.id.clone(),
            String::new(),
            ns.clone(),
            name.clone(),
            "POD".into(),
        ],
        timestamp: sample.timestamp,
        metrics: Vec::new(),
    };
    for i in sample.network.iter().flatten() {
        let iface = [i.name.as_str()];
        for (metric, value) in [
            ("container_network_receive_bytes_total", i.rx_bytes),
            ("container_network_receive_packets_total", i.rx_packets),
            (
                "container_network_receive_packets_dropped_total",
                i.rx_dropped,
            ),
            ("container_network_receive_errors_total", i.rx_errors),
            ("container_network_transmit_bytes_total", i.tx_bytes),
            ("container_network_transmit_packets_total", i.tx_packets),
            (
                "container_network_transmit_packets_dropped_total",
                i.tx_dropped,
            ),
            ("container_network_transmit_errors_total", i.tx_errors),
        ] {
            out.add(metric, true, &iface, value);
        }
    }
    let containers = containers
        .iter()
        .map(|(rec, s)| {
            let base = vec![
                rec.id.clone(),
                rec.image.clone(),
                ns.clone(),
                name.clone(),
                rec.name.clone(),
            ];
            (rec.id.clone(), container_metrics(rec, s, fs, base))
        })
        .collect();
    PodMetrics {
        pod_id: pod.id.clone(),
        metrics: out.metrics,
        containers,
    }
}

fn container_metrics(
    rec: &ContainerRecord,
    s: &ContainerSample,
    fs: Filesystem,
    base: Vec<String>,
) -> Vec<Metric> {
    let mut out = Out {
        base,
        timestamp: s.timestamp,
        metrics: Vec::new(),
    };
    let cpu = s.cgroup.cpu.clone().unwrap_or_default();
    out.add(
        "container_cpu_usage_seconds_total",
        true,
        &["total"],
        cpu.usage_ns / NS_PER_SEC,
    );
    out.counter("container_cpu_user_seconds_total", cpu.user_ns / NS_PER_SEC);
    out.counter(
        "container_cpu_system_seconds_total",
        cpu.system_ns / NS_PER_SEC,
    );
    out.counter("container_cpu_cfs_periods_total", cpu.periods);
    out.counter(
        "container_cpu_cfs_throttled_periods_total",
        cpu.throttled_periods,
    );
    out.counter(
        "container_cpu_cfs_throttled_seconds_total",
        cpu.throttled_ns / NS_PER_SEC,
    );

    out.gauge("container_fs_inodes_free", fs.inodes_free);
    out.gauge("container_fs_inodes_total", fs.inodes);
    out.gauge("container_fs_limit_bytes", fs.capacity_bytes);
    out.gauge("container_fs_usage_bytes", s.writable.bytes);

    let m = s.cgroup.memory.clone().unwrap_or_default();
    out.gauge("container_memory_cache", m.cache_bytes);
    out.gauge("container_memory_rss", m.rss_bytes);
    out.gauge("container_memory_kernel_usage", m.kernel_bytes);
    out.gauge("container_memory_mapped_file", m.mapped_file_bytes);
    out.gauge(
        "container_memory_swap",
        s.cgroup.swap.as_ref().map(|w| w.usage_bytes).unwrap_or(0),
    );
    out.counter("container_memory_failcnt", m.failcnt);
    out.gauge("container_memory_usage_bytes", m.usage_bytes);
    out.gauge("container_memory_max_usage_bytes", m.max_usage_bytes);
    out.gauge("container_memory_working_set_bytes", m.working_set_bytes);
    // The cgroup counts faults of its whole subtree: a leaf's own and its
    // hierarchy's are the same number.
    for (kind, value) in [
        ("pgfault", m.page_faults),
        ("pgmajfault", m.major_page_faults),
    ] {
        for scope in ["container", "hierarchy"] {
            out.add(
                "container_memory_failures_total",
                true,
                &[kind, scope],
                value,
            );
        }
    }
    out.counter("container_oom_events_total", s.oom_kills);

    out.gauge("container_file_descriptors", s.procs.fds);
    out.gauge("container_processes", s.procs.processes);
    out.gauge("container_sockets", s.procs.sockets);
    out.gauge("container_threads", s.procs.threads);
    let r = &rec.resources;
    let limit = |v: Option<i64>| v.filter(|v| *v > 0).map(|v| v as u64).unwrap_or(0);
    out.gauge("container_threads_max", limit(r.pids_limit));
    out.gauge("container_spec_cpu_period", r.cpu_period.unwrap_or(0));
    out.gauge("container_spec_cpu_quota", limit(r.cpu_quota));
    out.gauge("container_spec_cpu_shares", r.cpu_shares.unwrap_or(0));
    out.gauge("container_spec_memory_limit_bytes", limit(r.memory_limit));
    out.gauge(
        "container_spec_memory_swap_limit_bytes",
        limit(r.memory_swap_limit),
    );
    out.gauge(
        "container_start_time_seconds",
        (rec.started_at.max(0) as u64) / NS_PER_SEC,
    );
    out.gauge(
        "container_last_seen",
        (s.timestamp.max(0) as u64) / NS_PER_SEC,
    );

    let psi = &s.cgroup.psi;
    for (p, waiting, stalled) in [
        (
            &psi.cpu,
            "container_pressure_cpu_waiting_seconds_total",
            "container_pressure_cpu_stalled_seconds_total",
        ),
        (
            &psi.memory,
            "container_pressure_memory_waiting_seconds_total",
            "container_pressure_memory_stalled_seconds_total",
        ),
        (
            &psi.io,
            "container_pressure_io_waiting_seconds_total",
            "container_pressure_io_stalled_seconds_total",
        ),
    ] {
        if let Some(p) = p {
            out.counter(waiting, p.some.total_us / 1_000_000);
            out.counter(stalled, p.full.total_us / 1_000_000);
        }
    }
    out.metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_are_unique_with_help_and_labels() {
        let mut names: Vec<_> = DESCRIPTORS.iter().map(|d| d.name).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate descriptor");
        for d in DESCRIPTORS {
            assert!(!d.help.is_empty(), "{}", d.name);
            assert!(d.label_keys().len() >= BASE_LABELS.len());
        }
    }
}
