//! ListPodSandbox / ListPodSandboxStats filters, with CRI's semantics: every set field must
//! match; `id` matches a full ID or a prefix of it; every label of the selector must be present
//! with the same value.

use std::collections::{BTreeMap, HashMap};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
