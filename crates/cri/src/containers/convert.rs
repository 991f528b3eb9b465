//! Conversions: container records into CRI messages, CRI settings into the agent's, and the
//! agent's answers back into what a record holds.

use carapace_agent_client::pb;
use k8s_cri::v1 as cri;

use crate::merge;
use crate::record::ContainerRecord;
use crate::util::{container_state, hash_map, nanos_of_unix_ms};

pub(crate) fn metadata(rec: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata { name: rec.name.clone(), attempt: rec.attempt }
}

fn image_spec(rec: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: rec.image.clone(),
        user_specified_image: rec.image.clone(),
        ..Default::default()
    }
}

/// ListContainers entry of a record.
pub fn to_container(rec: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: rec.id.clone(),
        pod_sandbox_id: rec.sandbox_id.clone(),
        metadata: Some(metadata(rec)),
        image: Some(image_spec(rec)),
        image_ref: rec.image_ref.clone(),
        state: container_state(rec) as i32,
        created_at: rec.created_at,
        labels: hash_map(&rec.labels),
        annotations: hash_map(&rec.annotations),
        image_id: rec.image_id.clone(),
    }
}

/// ContainerStatus of a record.
pub fn to_status(rec: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: rec.id.clone(),
        metadata: Some(metadata(rec)),
        state: container_state(rec) as i32,
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        image: Some(image_spec(rec)),
        image_ref: rec.image_ref.clone(),
        reason: rec.reason.clone(),
        message: rec.message.clone(),
        labels: hash_map(&rec.labels),
        annotations: hash_map(&rec.annotations),
        mounts: rec
            .mounts
            .iter()
            .filter(|m| !m.host_path.is_empty())
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect(),
        log_path: rec.log_path.clone(),
        resources: rec
            .resources
            .clone()
            .map(|r| cri::ContainerResources { linux: Some(r), windows: None }),
        image_id: rec.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(rec.process.uid),
                gid: i64::from(rec.process.gid),
                supplemental_groups: rec
                    .process
                    .additional_gids
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
    }
}

/// The agent's cgroup limits for CRI resources.
pub fn agent_resources(r: &cri::LinuxContainerResources) -> pb::Resources {
    pb::Resources {
        cpu_quota_us: r.cpu_quota.max(0),
        cpu_period_us: u64::try_from(r.cpu_period).unwrap_or(0),
        cpu_weight: merge::cpu_weight(r.cpu_shares),
        memory_limit_bytes: r.memory_limit_in_bytes.max(0),
        pids_limit: 0,
    }
}

/// The agent's namespace mode for CRI's PID namespace mode (the VM is the node: NODE and TARGET
/// share the pod's namespace).
pub fn pid_mode(cri_mode: i32) -> i32 {
    match cri::NamespaceMode::try_from(cri_mode) {
        Ok(cri::NamespaceMode::Container) => pb::NamespaceMode::Container as i32,
        _ => pb::NamespaceMode::Pod as i32,
    }
}

/// The CRI reason for the agent's exit reason, as containerd gives them: Completed, Error,
/// OOMKilled (the agent's Killed, a stop whose grace period ran out, is an Error exit 137 to
/// kubelet). The one place that reads the agent's reason.
pub fn cri_reason(agent_reason: pb::ExitReason, exit_code: i32) -> &'static str {
    match agent_reason {
        pb::ExitReason::OomKilled => "OOMKilled",
        _ if exit_code == 0 => "Completed",
        _ => "Error",
    }
}

/// Exit code, CRI reason and finish time (ns) of an agent's wait answer.
pub fn exit_of(w: &pb::WaitProcessResponse) -> (i32, String, i64) {
    let reason = cri_reason(w.exit_reason(), w.exit_code).to_string();
    (w.exit_code, reason, nanos_of_unix_ms(w.finished_at_unix_ms))
}

/// The signal number of an image's STOPSIGNAL ("SIGQUIT", "QUIT", "3"); 0 (SIGTERM) when
/// empty; None when unknown.
pub fn stop_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        "STOP" => libc::SIGSTOP,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ContainerPhase;
    use crate::store::tests::container as sample;

    #[test]
    fn status_reports_state_exit_image_mounts_and_user() {
        let mut r = sample(&"a".repeat(64), &"b".repeat(64), "job");
        r.phase = ContainerPhase::Exited;
        r.started_at = 10;
        r.finished_at = 20;
        r.exit_code = 3;
        r.reason = "Error".into();
        let s = to_status(&r);
        assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!((s.started_at, s.finished_at, s.exit_code), (10, 20, 3));
        assert_eq!(s.reason, "Error");
        assert_eq!(s.image.unwrap().image, "busybox:latest");
        assert_eq!(s.image_ref, "registry/busybox@sha256:bb");
        assert_eq!(s.image_id, "sha256:aa");
        assert_eq!(s.mounts.len(), 1);
        assert!(s.mounts[0].readonly);
        assert_eq!(s.log_path, "/var/log/pods/x/c/0.log");
        assert_eq!(s.user.unwrap().linux.unwrap().uid, 5);
        assert_eq!(s.resources.unwrap().linux.unwrap().memory_limit_in_bytes, 1 << 20);
        let c = to_container(&r);
        assert_eq!(c.pod_sandbox_id, "b".repeat(64));
        assert_eq!(c.state, cri::ContainerState::ContainerExited as i32);
    }

    #[test]
    fn stop_signals() {
        assert_eq!(stop_signal(""), Some(0));
        assert_eq!(stop_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(stop_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(stop_signal("9"), Some(9));
        assert_eq!(stop_signal("99"), None);
        assert_eq!(stop_signal("SIGNOPE"), None);
    }

    #[test]
    fn exits_and_reasons() {
        let w = |code, reason: pb::ExitReason, fin| pb::WaitProcessResponse {
            exit_code: code,
            exit_reason: reason as i32,
            finished_at_unix_ms: fin,
            ..Default::default()
        };
        assert_eq!(
            exit_of(&w(0, pb::ExitReason::Unspecified, 5)),
            (0, "Completed".into(), 5_000_000)
        );
        assert_eq!(exit_of(&w(3, pb::ExitReason::Unspecified, 5)).1, "Error");
        assert_eq!(exit_of(&w(137, pb::ExitReason::OomKilled, 5)).1, "OOMKilled");
        assert_eq!(exit_of(&w(137, pb::ExitReason::Killed, 5)).1, "Error");
        assert_eq!(exit_of(&w(0, pb::ExitReason::Completed, 0)).1, "Completed");
        assert!(
            exit_of(&w(0, pb::ExitReason::Unspecified, 0)).2 > 0,
            "no finish time when the agent gave none"
        );
    }

    #[test]
    fn resources_and_pid_mode_map_to_the_agent() {
        let r = agent_resources(&cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 1024,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        });
        assert_eq!(
            (r.cpu_quota_us, r.cpu_period_us, r.cpu_weight, r.memory_limit_bytes),
            (50_000, 100_000, 39, 64 << 20)
        );
        assert_eq!(
            pid_mode(cri::NamespaceMode::Container as i32),
            pb::NamespaceMode::Container as i32
        );
        assert_eq!(pid_mode(cri::NamespaceMode::Pod as i32), pb::NamespaceMode::Pod as i32);
    }
}
