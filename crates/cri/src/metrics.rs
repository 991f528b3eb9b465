//! ListMetricDescriptors / ListPodSandboxMetrics: the pod and container stats as CRI metrics
//! (what kubelet publishes when it takes its metrics from the runtime instead of cAdvisor).
//!
//! Container metrics use cAdvisor's names. CRI metric values are unsigned integers, so the CPU
//! counters are whole seconds (ContainerStats keeps nanoseconds). Pod metrics describe the pod's
//! VM as the host sees it (the VMM process), under carapace's own names. Values are gathered
//! live, so every timestamp is 0 (the CRI's convention for "not cached").

use k8s_cri::v1 as cri;

/// Label keys of container metrics: the container's ID and name.
const CONTAINER_LABELS: &[&str] = &["id", "name"];

struct Def {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
}

const POD_VM_CPU: Def = Def {
    name: "carapace_pod_vm_cpu_usage_seconds_total",
    help: "Cumulative CPU time of the pod's VM (its VMM process on the host), whole seconds.",
    kind: cri::MetricType::Counter,
};
const POD_VM_RSS: Def = Def {
    name: "carapace_pod_vm_memory_rss_bytes",
    help: "Resident memory of the pod's VM (its VMM process on the host), bytes.",
    kind: cri::MetricType::Gauge,
};
const CPU: Def = Def {
    name: "container_cpu_usage_seconds_total",
    help: "Cumulative cpu time consumed in whole seconds.",
    kind: cri::MetricType::Counter,
};
const MEM_USAGE: Def = Def {
    name: "container_memory_usage_bytes",
    help: "Current memory usage in bytes, including all memory regardless of when it was accessed.",
    kind: cri::MetricType::Gauge,
};
const MEM_WORKING_SET: Def = Def {
    name: "container_memory_working_set_bytes",
    help: "Current working set in bytes.",
    kind: cri::MetricType::Gauge,
};
const MEM_RSS: Def = Def {
    name: "container_memory_rss",
    help: "Size of RSS (anonymous memory) in bytes.",
    kind: cri::MetricType::Gauge,
};

const POD_DEFS: &[&Def] = &[&POD_VM_CPU, &POD_VM_RSS];
const CONTAINER_DEFS: &[&Def] = &[&CPU, &MEM_USAGE, &MEM_WORKING_SET, &MEM_RSS];

/// Every metric ListPodSandboxMetrics may return.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    let pod = POD_DEFS.iter().map(|d| (d, &[][..]));
    let ctr = CONTAINER_DEFS.iter().map(|d| (d, CONTAINER_LABELS));
    pod.chain(ctr)
        .map(|(d, labels)| cri::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: labels.iter().map(|l| l.to_string()).collect(),
        })
        .collect()
}

fn metric(d: &Def, labels: &[String], value: Option<u64>) -> Option<cri::Metric> {
    value.map(|value| cri::Metric {
        name: d.name.into(),
        timestamp: 0,
        metric_type: d.kind as i32,
        label_values: labels.to_vec(),
        value: Some(cri::UInt64Value { value }),
    })
}

fn seconds(ns: Option<&cri::UInt64Value>) -> Option<u64> {
    ns.map(|v| v.value / 1_000_000_000)
}

/// One pod's metrics from its stats (the VM's figures and each container's).
pub fn pod_metrics(stats: &cri::PodSandboxStats) -> cri::PodSandboxMetrics {
    let id = stats.attributes.as_ref().map(|a| a.id.clone()).unwrap_or_default();
    let linux = stats.linux.as_ref();
    let cpu = linux.and_then(|l| l.cpu.as_ref());
    let mem = linux.and_then(|l| l.memory.as_ref());
    let metrics = [
        metric(&POD_VM_CPU, &[], seconds(cpu.and_then(|c| c.usage_core_nano_seconds.as_ref()))),
        metric(&POD_VM_RSS, &[], mem.and_then(|m| m.rss_bytes.as_ref()).map(|v| v.value)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let container_metrics =
        linux.map(|l| l.containers.iter().map(container_metrics).collect()).unwrap_or_default();
    cri::PodSandboxMetrics { pod_sandbox_id: id, metrics, container_metrics }
}

fn container_metrics(s: &cri::ContainerStats) -> cri::ContainerMetrics {
    let attrs = s.attributes.as_ref();
    let id = attrs.map(|a| a.id.clone()).unwrap_or_default();
    let name = attrs.and_then(|a| a.metadata.as_ref()).map(|m| m.name.clone()).unwrap_or_default();
    let labels = [id.clone(), name];
    let mem = s.memory.as_ref();
    let val =
        |f: fn(&cri::MemoryUsage) -> Option<&cri::UInt64Value>| mem.and_then(f).map(|v| v.value);
    let metrics = [
        metric(
            &CPU,
            &labels,
            seconds(s.cpu.as_ref().and_then(|c| c.usage_core_nano_seconds.as_ref())),
        ),
        metric(&MEM_USAGE, &labels, val(|m| m.usage_bytes.as_ref())),
        metric(&MEM_WORKING_SET, &labels, val(|m| m.working_set_bytes.as_ref())),
        metric(&MEM_RSS, &labels, val(|m| m.rss_bytes.as_ref())),
    ]
    .into_iter()
    .flatten()
    .collect();
    cri::ContainerMetrics { container_id: id, metrics }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn u(value: u64) -> Option<cri::UInt64Value> {
        Some(cri::UInt64Value { value })
    }

    #[test]
    fn descriptors_are_unique_and_cover_every_metric_returned() {
        let d = descriptors();
        let names: HashMap<&str, usize> =
            d.iter().map(|d| (d.name.as_str(), d.label_keys.len())).collect();
        assert_eq!(names.len(), d.len(), "duplicate descriptor names");
        let stats = cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes { id: "pod1".into(), ..Default::default() }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    usage_core_nano_seconds: u(2_500_000_000),
                    ..Default::default()
                }),
                memory: Some(cri::MemoryUsage { rss_bytes: u(64 << 20), ..Default::default() }),
                containers: vec![cri::ContainerStats {
                    attributes: Some(cri::ContainerAttributes {
                        id: "c1".into(),
                        metadata: Some(cri::ContainerMetadata { name: "web".into(), attempt: 0 }),
                        ..Default::default()
                    }),
                    cpu: Some(cri::CpuUsage {
                        usage_core_nano_seconds: u(7_000_000_001),
                        ..Default::default()
                    }),
                    memory: Some(cri::MemoryUsage {
                        usage_bytes: u(3000),
                        working_set_bytes: u(2000),
                        rss_bytes: u(1000),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            windows: None,
        };
        let m = pod_metrics(&stats);
        assert_eq!(m.pod_sandbox_id, "pod1");
        let pod: HashMap<&str, u64> =
            m.metrics.iter().map(|x| (x.name.as_str(), x.value.as_ref().unwrap().value)).collect();
        assert_eq!(pod["carapace_pod_vm_cpu_usage_seconds_total"], 2);
        assert_eq!(pod["carapace_pod_vm_memory_rss_bytes"], 64 << 20);
        assert_eq!(m.container_metrics.len(), 1);
        let c = &m.container_metrics[0];
        assert_eq!(c.container_id, "c1");
        let got: HashMap<&str, u64> =
            c.metrics.iter().map(|x| (x.name.as_str(), x.value.as_ref().unwrap().value)).collect();
        assert_eq!(got["container_cpu_usage_seconds_total"], 7);
        assert_eq!(got["container_memory_usage_bytes"], 3000);
        assert_eq!(got["container_memory_working_set_bytes"], 2000);
        assert_eq!(got["container_memory_rss"], 1000);
        // Every metric is described, with as many label values as its descriptor has keys.
        for x in m.metrics.iter().chain(c.metrics.iter()) {
            assert_eq!(names.get(x.name.as_str()), Some(&x.label_values.len()), "{}", x.name);
            assert_eq!(x.timestamp, 0);
        }
        assert_eq!(c.metrics[0].label_values, vec!["c1", "web"]);
        assert_eq!(c.metrics[0].metric_type, cri::MetricType::Counter as i32);
    }

    #[test]
    fn missing_figures_give_no_metric_rather_than_zero() {
        let stats = cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes { id: "p".into(), ..Default::default() }),
            linux: Some(cri::LinuxPodSandboxStats {
                containers: vec![cri::ContainerStats::default()],
                ..Default::default()
            }),
            windows: None,
        };
        let m = pod_metrics(&stats);
        assert!(m.metrics.is_empty());
        assert!(m.container_metrics[0].metrics.is_empty());
    }
}
