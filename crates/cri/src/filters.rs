//! ListPodSandbox(Stats) and ListContainer(Stats) filters, with CRI's semantics: every set
//! field must match; IDs match in full or by prefix; every label of the selector must be present
//! with the same value.

use std::collections::{BTreeMap, HashMap};

use crate::record::ContainerRecord;
use crate::util::container_state;

/// A filter over sandboxes (the union of CRI's PodSandboxFilter and PodSandboxStatsFilter).
#[derive(Debug, Clone, Default)]
pub struct SandboxFilter {
    pub id: String,
    /// CRI PodSandboxState number.
    pub state: Option<i32>,
    pub labels: HashMap<String, String>,
}

impl SandboxFilter {
    /// Whether a sandbox with this ID, state and labels passes.
    pub fn matches(&self, id: &str, state: i32, labels: &BTreeMap<String, String>) -> bool {
        (self.id.is_empty() || id.starts_with(&self.id))
            && self.state.is_none_or(|s| s == state)
            && self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A filter over containers (CRI ContainerFilter / ContainerStatsFilter).
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: String,
    pub pod_sandbox_id: String,
    /// CRI ContainerState number.
    pub state: Option<i32>,
    pub labels: HashMap<String, String>,
}

impl ContainerFilter {
    pub fn matches(&self, rec: &ContainerRecord) -> bool {
        (self.id.is_empty() || rec.id.starts_with(&self.id))
            && (self.pod_sandbox_id.is_empty() || rec.sandbox_id.starts_with(&self.pod_sandbox_id))
            && self.state.is_none_or(|s| s == container_state(rec) as i32)
            && self.labels.iter().all(|(k, v)| rec.labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ContainerPhase;
    use crate::store::tests::container as sample;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn empty_filter_matches_everything() {
        assert!(SandboxFilter::default().matches("abc", 1, &labels(&[])));
    }

    #[test]
    fn id_prefix_state_and_labels_must_all_match() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let f = SandboxFilter {
            id: "ab".into(),
            state: Some(0),
            labels: [("app".to_string(), "web".to_string())].into(),
        };
        assert!(f.matches("abcdef", 0, &l));
        assert!(!f.matches("bacdef", 0, &l), "id prefix");
        assert!(!f.matches("abcdef", 1, &l), "state");
        assert!(!f.matches("abcdef", 0, &labels(&[("app", "db")])), "label value");
        assert!(!f.matches("abcdef", 0, &labels(&[])), "missing label");
    }

    #[test]
    fn container_filters() {
        let mut r = sample(&"ab".repeat(32), &"cd".repeat(32), "web");
        r.phase = ContainerPhase::Running;
        let f =
            |id: &str, pod: &str, state: Option<i32>, labels: &[(&str, &str)]| ContainerFilter {
                id: id.into(),
                pod_sandbox_id: pod.into(),
                state,
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
        assert!(f("", "", None, &[]).matches(&r));
        assert!(f("abab", "cd", Some(1), &[("app", "web")]).matches(&r));
        assert!(!f("b", "", None, &[]).matches(&r));
        assert!(!f("", "x", None, &[]).matches(&r));
        assert!(!f("", "", Some(2), &[]).matches(&r));
        assert!(!f("", "", None, &[("app", "db")]).matches(&r));
        assert!(!f("", "", None, &[("tier", "web")]).matches(&r));
    }
}
