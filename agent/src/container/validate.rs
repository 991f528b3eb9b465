//! Checks on the simple parts of requests: ids, process, resources,
//! signals. Paths are checked in [`super::path`].

use carapace_agent_client::pb;

use super::error::ContainerError;
use super::path::check_absolute;

pub const MAX_ID_LEN: usize = 128;
pub const MAX_ARGS: usize = 4096;
pub const MAX_ENV: usize = 4096;
pub const MAX_STRING: usize = 128 * 1024;
pub const MAX_MOUNTS: usize = 256;
pub const MAX_GIDS: usize = 64;

/// Container and exec ids: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`. They become
/// file and cgroup names, so nothing else is allowed.
pub fn check_id(what: &str, id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::invalid(format!(
            "{what} {id:?}: must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"
        )))
    }
}

fn check_string(what: &str, s: &str) -> Result<(), ContainerError> {
    if s.len() > MAX_STRING {
        return Err(ContainerError::invalid(format!("{what}: too long")));
    }
    if s.contains('\0') {
        return Err(ContainerError::invalid(format!("{what}: contains NUL")));
    }
    Ok(())
}

/// Checks a process description (init or exec).
pub fn check_process(p: Option<&pb::Process>) -> Result<&pb::Process, ContainerError> {
    let p = p.ok_or_else(|| ContainerError::invalid("process: missing"))?;
    if p.args.is_empty() || p.args[0].is_empty() {
        return Err(ContainerError::invalid("process.args: empty"));
    }
    if p.args.len() > MAX_ARGS {
        return Err(ContainerError::invalid("process.args: too many"));
    }
    for a in &p.args {
        check_string("process.args", a)?;
    }
    if p.env.len() > MAX_ENV {
        return Err(ContainerError::invalid("process.env: too many"));
    }
    for e in &p.env {
        check_string("process.env", e)?;
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => {
                return Err(ContainerError::invalid(format!("process.env: {e:?} is not KEY=value")))
            }
        }
    }
    if !p.cwd.is_empty() {
        check_absolute("process.cwd", &p.cwd)?;
    }
    if let Some(u) = &p.user {
        if u.additional_gids.len() > MAX_GIDS {
            return Err(ContainerError::invalid("process.user.additional_gids: too many"));
        }
    }
    Ok(p)
}

/// Checks cgroup limits (all optional: zero means unset).
pub fn check_resources(r: &pb::Resources) -> Result<(), ContainerError> {
    if r.cpu_quota_us < 0 || r.memory_limit_bytes < 0 || r.pids_limit < 0 {
        return Err(ContainerError::invalid("resources: negative limit"));
    }
    if r.cpu_quota_us > 0 && r.cpu_quota_us < 1000 {
        return Err(ContainerError::invalid("resources.cpu_quota_us: at least 1000"));
    }
    if r.cpu_period_us != 0 && !(1000..=1_000_000).contains(&r.cpu_period_us) {
        return Err(ContainerError::invalid("resources.cpu_period_us: 1000..=1000000"));
    }
    if r.cpu_weight != 0 && !(1..=10_000).contains(&r.cpu_weight) {
        return Err(ContainerError::invalid("resources.cpu_weight: 1..=10000"));
    }
    if r.memory_limit_bytes > 0 && r.memory_limit_bytes < 4 * 1024 * 1024 {
        return Err(ContainerError::invalid("resources.memory_limit_bytes: at least 4 MiB"));
    }
    Ok(())
}

/// A signal number the agent forwards.
pub fn check_signal(sig: i32) -> Result<nix::sys::signal::Signal, ContainerError> {
    nix::sys::signal::Signal::try_from(sig)
        .map_err(|_| ContainerError::invalid(format!("signal {sig}: not a valid signal")))
}

/// A capability name as OCI spells it (`CAP_` + upper case).
pub fn normalize_capability(c: &str) -> Result<String, ContainerError> {
    let up = c.trim().to_ascii_uppercase();
    let name = if up.starts_with("CAP_") { up } else { format!("CAP_{up}") };
    if name.len() > 64 || !name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(ContainerError::invalid(format!("capability {c:?}: bad name")));
    }
    // Known to the spec crate (rejects typos before anything is created).
    match serde_json::from_value::<oci_spec::runtime::Capability>(serde_json::Value::String(
        name.clone(),
    )) {
        Ok(_) => Ok(name),
        Err(_) => Err(ContainerError::invalid(format!("capability {c:?}: unknown"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_(args: &[&str]) -> pb::Process {
        pb::Process { args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    #[test]
    fn ids() {
        assert!(check_id("id", "abc-1.2_3").is_ok());
        assert!(check_id("id", "").is_err());
        assert!(check_id("id", "../x").is_err());
        assert!(check_id("id", ".hidden").is_err());
        assert!(check_id("id", "a/b").is_err());
        assert!(check_id("id", &"a".repeat(129)).is_err());
        assert!(check_id("id", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn processes() {
        assert!(check_process(None).is_err());
        assert!(check_process(Some(&proc_(&[]))).is_err());
        assert!(check_process(Some(&proc_(&[""]))).is_err());
        assert!(check_process(Some(&proc_(&["sh"]))).is_ok());
        let mut p = proc_(&["sh"]);
        p.env = vec!["NOEQUALS".into()];
        assert!(check_process(Some(&p)).is_err());
        p.env = vec!["=x".into()];
        assert!(check_process(Some(&p)).is_err());
        p.env = vec!["A=".into()];
        assert!(check_process(Some(&p)).is_ok());
        p.cwd = "relative".into();
        assert!(check_process(Some(&p)).is_err());
        p.cwd = "/tmp/../etc".into();
        assert!(check_process(Some(&p)).is_err());
        let mut t = proc_(&["sh"]);
        t.tty = true;
        assert!(check_process(Some(&t)).is_ok(), "terminals are served");
    }

    #[test]
    fn resources() {
        assert!(check_resources(&pb::Resources::default()).is_ok());
        let r = pb::Resources {
            memory_limit_bytes: 32 << 20,
            cpu_quota_us: 50_000,
            cpu_period_us: 100_000,
            cpu_weight: 100,
            pids_limit: 10,
        };
        assert!(check_resources(&r).is_ok());
        assert!(check_resources(&pb::Resources { memory_limit_bytes: -1, ..r }).is_err());
        assert!(check_resources(&pb::Resources { memory_limit_bytes: 10, ..r }).is_err());
        assert!(check_resources(&pb::Resources { cpu_weight: 10_001, ..r }).is_err());
        assert!(check_resources(&pb::Resources { cpu_period_us: 5, ..r }).is_err());
    }

    #[test]
    fn signals_and_caps() {
        assert!(check_signal(15).is_ok());
        assert!(check_signal(0).is_err());
        assert!(check_signal(-3).is_err());
        assert!(check_signal(1000).is_err());
        assert_eq!(normalize_capability("net_admin").unwrap(), "CAP_NET_ADMIN");
        assert_eq!(normalize_capability("CAP_KILL").unwrap(), "CAP_KILL");
        assert!(normalize_capability("CAP_BOGUS").is_err());
        assert!(normalize_capability("cap kill").is_err());
    }
}
