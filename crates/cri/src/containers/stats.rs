//! ContainerStats and ListContainerStats: CPU and memory from the container's cgroup in the
//! guest (asked of the agent while it runs; attributes only otherwise).

use std::collections::HashMap;

use carapace_agent_client::{pb, AgentClient};
use k8s_cri::v1 as cri;

use super::agent::{agent_of, call};
use super::{convert, ContainerTable, Pods};
use crate::error::CriError;
use crate::filters::ContainerFilter;
use crate::record::{ContainerPhase, ContainerRecord};
use crate::util::{hash_map, nanos_of_unix_ms, sandbox_state};

impl ContainerTable {
    /// ContainerStats of one container.
    pub async fn stats(&self, pods: &dyn Pods, id: &str) -> Result<cri::ContainerStats, CriError> {
        let (c, sb) = self.with_pod(pods, id)?;
        let rec = c.rec().clone();
        let agent =
            if rec.phase == ContainerPhase::Running { agent_of(&sb).await.ok() } else { None };
        Ok(stats_of(&rec, agent.as_ref()).await)
    }

    /// ListContainerStats (containers whose pod runs).
    pub async fn list_stats(
        &self,
        pods: &dyn Pods,
        filter: &ContainerFilter,
    ) -> Vec<cri::ContainerStats> {
        let recs: Vec<ContainerRecord> =
            self.snapshot().into_iter().filter(|r| filter.matches(r)).collect();
        let mut agents: HashMap<String, Option<AgentClient>> = HashMap::new();
        let mut out = Vec::new();
        for rec in recs {
            let Ok(sb) = pods.pod(&rec.sandbox_id) else { continue };
            if sandbox_state(&sb) != cri::PodSandboxState::SandboxReady {
                continue;
            }
            if !agents.contains_key(&sb.id) {
                let a = if rec.phase == ContainerPhase::Running {
                    agent_of(&sb).await.ok()
                } else {
                    None
                };
                agents.insert(sb.id.clone(), a);
            }
            let agent = agents.get(&sb.id).and_then(|a| a.as_ref());
            out.push(
                stats_of(&rec, if rec.phase == ContainerPhase::Running { agent } else { None })
                    .await,
            );
        }
        out
    }
}

/// CRI stats of a container from the agent's cgroup figures.
pub fn cri_stats(
    rec: &ContainerRecord,
    s: Option<&pb::ContainerStatsResponse>,
) -> cri::ContainerStats {
    let attributes = Some(cri::ContainerAttributes {
        id: rec.id.clone(),
        metadata: Some(convert::metadata(rec)),
        labels: hash_map(&rec.labels),
        annotations: hash_map(&rec.annotations),
    });
    let Some(s) = s else {
        return cri::ContainerStats { attributes, ..Default::default() };
    };
    let ts = nanos_of_unix_ms(s.timestamp_unix_ms);
    let v = |value: u64| Some(cri::UInt64Value { value });
    cri::ContainerStats {
        attributes,
        cpu: Some(cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: v(s.cpu_usage_usec.saturating_mul(1000)),
            usage_nano_cores: None,
        }),
        memory: Some(cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: v(s.memory_working_set_bytes),
            available_bytes: (s.memory_limit_bytes > 0).then(|| cri::UInt64Value {
                value: s.memory_limit_bytes.saturating_sub(s.memory_working_set_bytes),
            }),
            usage_bytes: v(s.memory_usage_bytes),
            rss_bytes: v(s.memory_anon_bytes),
            page_faults: None,
            major_page_faults: None,
        }),
        writable_layer: None,
        swap: None,
    }
}

async fn stats_of(rec: &ContainerRecord, agent: Option<&AgentClient>) -> cri::ContainerStats {
    let s = match agent {
        Some(a) => {
            let mut g = a.grpc();
            call(
                "agent ContainerStats",
                g.container_stats(pb::ContainerStatsRequest { id: rec.id.clone() }),
            )
            .await
            .map_err(|e| tracing::debug!(id = %rec.id, error = %e, "no stats from the agent"))
            .ok()
        }
        None => None,
    };
    cri_stats(rec, s.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::container as sample;

    #[test]
    fn stats_convert_units() {
        let r = sample(&"a".repeat(64), &"b".repeat(64), "web");
        let s = cri_stats(
            &r,
            Some(&pb::ContainerStatsResponse {
                timestamp_unix_ms: 2,
                cpu_usage_usec: 7,
                memory_working_set_bytes: 100,
                memory_limit_bytes: 300,
                memory_usage_bytes: 150,
                memory_anon_bytes: 90,
                ..Default::default()
            }),
        );
        let cpu = s.cpu.unwrap();
        assert_eq!((cpu.timestamp, cpu.usage_core_nano_seconds.unwrap().value), (2_000_000, 7000));
        let m = s.memory.unwrap();
        assert_eq!(m.available_bytes.unwrap().value, 200);
        assert_eq!(m.rss_bytes.unwrap().value, 90);
        let none = cri_stats(&r, None);
        assert!(none.cpu.is_none());
        assert_eq!(none.attributes.unwrap().id, r.id);
    }
}
