//! The CRI security context of a container as the agent's security settings: capabilities
//! (containerd's rules over the default set), seccomp ([`super::seccomp`]), privileged, masked
//! and read-only paths.

use carapace_agent_client::pb;
use carapace_agent_client::{ALL_CAPABILITIES, DEFAULT_CAPABILITIES};
use k8s_cri::v1 as cri;

use crate::error::CriError;

/// The agent's security settings for a CRI security context.
pub fn agent_security(
    sc: Option<&cri::LinuxContainerSecurityContext>,
) -> Result<pb::Security, CriError> {
    let Some(sc) = sc else {
        return Ok(pb::Security {
            seccomp: Some(pb::Seccomp {
                kind: pb::seccomp::Kind::Unconfined as i32,
                profile_json: String::new(),
            }),
            ..Default::default()
        });
    };
    let mut caps: Vec<String> = Vec::new();
    // Set once the set is computed here: then an empty list means "none" to the agent.
    let mut caps_exact = false;
    if let Some(c) = &sc.capabilities {
        let norm = |s: &String| {
            let s = s.to_uppercase();
            if s.starts_with("CAP_") {
                s
            } else {
                format!("CAP_{s}")
            }
        };
        let all = c.add_capabilities.iter().any(|s| s.eq_ignore_ascii_case("ALL"));
        if !c.add_capabilities.is_empty() || !c.drop_capabilities.is_empty() {
            // Start from the default set, as containerd does.
            let mut set: Vec<String> = default_capabilities();
            if all {
                set = ALL_CAPABILITIES.iter().map(|s| s.to_string()).collect();
            } else {
                for a in &c.add_capabilities {
                    let a = norm(a);
                    if !set.contains(&a) {
                        set.push(a);
                    }
                }
            }
            if c.drop_capabilities.iter().any(|s| s.eq_ignore_ascii_case("ALL")) {
                set.clear();
                for a in c.add_capabilities.iter().filter(|s| !s.eq_ignore_ascii_case("ALL")) {
                    set.push(norm(a));
                }
            } else {
                let drop: Vec<String> = c.drop_capabilities.iter().map(norm).collect();
                set.retain(|s| !drop.contains(s));
            }
            caps = set;
            caps_exact = true;
        }
    }
    let seccomp = super::seccomp::agent_seccomp(sc)?;
    Ok(pb::Security {
        capabilities: caps,
        privileged: sc.privileged,
        no_new_privs: sc.no_new_privs,
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
        seccomp: Some(seccomp),
        capabilities_exact: caps_exact,
    })
}

/// The capabilities containers get by default (the agent's default set): the one place the
/// daemon reads that list.
fn default_capabilities() -> Vec<String> {
    DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_maps_to_the_agent() {
        let sc = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CAP_KILL".into()],
                ..Default::default()
            }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = agent_security(Some(&sc)).unwrap();
        assert!(s.capabilities.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!s.capabilities.contains(&"CAP_KILL".to_string()));
        assert!(s.capabilities.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(s.seccomp.unwrap().kind, pb::seccomp::Kind::RuntimeDefault as i32);
        let drop_all = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["chown".into()],
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            agent_security(Some(&drop_all)).unwrap().capabilities,
            vec!["CAP_CHOWN".to_string()]
        );
    }

    #[test]
    fn drop_all_is_an_exact_empty_set_no_change_is_the_default_set() {
        let ctx = |add: &[&str], drop: &[&str]| cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = agent_security(Some(&ctx(&[], &["ALL"]))).unwrap();
        assert!(s.capabilities.is_empty() && s.capabilities_exact, "{s:?}");
        let s = agent_security(Some(&ctx(&[], &["all"]))).unwrap();
        assert!(s.capabilities.is_empty() && s.capabilities_exact, "{s:?}");
        // Dropping every default capability one by one is an empty set too.
        let defaults: Vec<&str> = DEFAULT_CAPABILITIES.to_vec();
        let s = agent_security(Some(&ctx(&[], &defaults))).unwrap();
        assert!(s.capabilities.is_empty() && s.capabilities_exact, "{s:?}");
        // Nothing added or dropped: the agent's default set (an empty, inexact list).
        let s = agent_security(Some(&ctx(&[], &[]))).unwrap();
        assert!(s.capabilities.is_empty() && !s.capabilities_exact, "{s:?}");
        let s = agent_security(Some(&cri::LinuxContainerSecurityContext::default())).unwrap();
        assert!(!s.capabilities_exact, "{s:?}");
        let s = agent_security(Some(&ctx(&["ALL"], &[]))).unwrap();
        assert!(s.capabilities_exact && s.capabilities.len() == ALL_CAPABILITIES.len(), "{s:?}");
    }
}
