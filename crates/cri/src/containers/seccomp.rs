//! The seccomp profile of a container, as containerd chooses it: none when privileged; the
//! security context's `seccomp` profile (RuntimeDefault, Unconfined, or Localhost: a file on
//! this host that the daemon reads, checks and sends to the agent as an OCI `linux.seccomp`
//! object); else the deprecated `seccomp_profile_path` ("runtime/default", "docker/default",
//! "unconfined", "localhost/<path>"); else none.

use std::io::Read;
use std::path::Path;

use carapace_agent_client::pb;
use k8s_cri::v1 as cri;

use crate::error::CriError;
use crate::validate;

/// The largest profile file the daemon reads (the agent's bound as well).
pub const MAX_PROFILE_BYTES: u64 = 1 << 20;

use cri::security_profile::ProfileType;
use pb::seccomp::Kind;

fn kind(kind: Kind) -> pb::Seccomp {
    pb::Seccomp { kind: kind as i32, profile_json: String::new() }
}

/// The agent's seccomp settings for a container's security context.
pub fn agent_seccomp(sc: &cri::LinuxContainerSecurityContext) -> Result<pb::Seccomp, CriError> {
    if sc.privileged {
        return Ok(kind(Kind::Unconfined));
    }
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(kind(Kind::RuntimeDefault)),
            Ok(ProfileType::Unconfined) => Ok(kind(Kind::Unconfined)),
            Ok(ProfileType::Localhost) => localhost("seccomp.localhost_ref", &p.localhost_ref),
            Err(_) => Err(CriError::InvalidArgument(format!(
                "security_context.seccomp.profile_type {} is not a known profile type",
                p.profile_type
            ))),
        };
    }
    #[allow(deprecated)]
    let path = sc.seccomp_profile_path.as_str();
    match path {
        "" | "unconfined" => Ok(kind(Kind::Unconfined)),
        "runtime/default" | "docker/default" => Ok(kind(Kind::RuntimeDefault)),
        p => match p.strip_prefix("localhost/") {
            Some(file) => {
                localhost("seccomp_profile_path", &format!("/{}", file.trim_start_matches('/')))
            }
            None => Err(CriError::InvalidArgument(format!(
                "security_context.seccomp_profile_path {p:?}: expected \"runtime/default\", \
                 \"unconfined\" or \"localhost/<absolute path>\""
            ))),
        },
    }
}

/// A profile read from a file on this host (kubelet's seccomp directory).
fn localhost(field: &str, file: &str) -> Result<pb::Seccomp, CriError> {
    let field = format!("security_context.{field}");
    let path = validate::absolute_path(&field, file)?;
    let bad = |why: String| {
        CriError::InvalidArgument(format!("{field}: seccomp profile {}: {why}", path.display()))
    };
    let text = read_capped(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_slice(&text)
        .map_err(|e| bad(format!("not an OCI seccomp profile: {e}")))?;
    let profile_json =
        serde_json::to_string(&profile).map_err(|e| bad(format!("cannot encode it: {e}")))?;
    Ok(pb::Seccomp { kind: Kind::Custom as i32, profile_json })
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(MAX_PROFILE_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_PROFILE_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_PROFILE_BYTES} bytes")));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(t: ProfileType, r: &str) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile { profile_type: t as i32, localhost_ref: r.into() }),
            ..Default::default()
        }
    }

    fn err(r: Result<pb::Seccomp, CriError>) -> String {
        match r {
            Err(CriError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn profile_types_and_privileged() {
        let k = |sc: &cri::LinuxContainerSecurityContext| agent_seccomp(sc).unwrap().kind;
        assert_eq!(k(&profile(ProfileType::RuntimeDefault, "")), Kind::RuntimeDefault as i32);
        assert_eq!(k(&profile(ProfileType::Unconfined, "")), Kind::Unconfined as i32);
        let mut p = profile(ProfileType::Localhost, "/does/not/exist.json");
        p.privileged = true;
        assert_eq!(k(&p), Kind::Unconfined as i32, "privileged ignores every profile");
        assert_eq!(k(&cri::LinuxContainerSecurityContext::default()), Kind::Unconfined as i32);
        #[allow(deprecated)]
        let old = |path: &str| cri::LinuxContainerSecurityContext {
            seccomp_profile_path: path.into(),
            ..Default::default()
        };
        assert_eq!(k(&old("runtime/default")), Kind::RuntimeDefault as i32);
        assert_eq!(k(&old("unconfined")), Kind::Unconfined as i32);
        assert!(err(agent_seccomp(&old("docker/nope"))).contains("seccomp_profile_path"));
        let mut bad = profile(ProfileType::RuntimeDefault, "");
        bad.seccomp.as_mut().unwrap().profile_type = 9;
        assert!(err(agent_seccomp(&bad)).contains("profile_type 9"));
    }

    #[test]
    fn localhost_profiles_are_read_checked_and_sent() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("block-hostname.json");
        std::fs::write(
            &good,
            concat!(
                r#"{"defaultAction":"SCMP_ACT_ALLOW","#,
                r#""syscalls":[{"names":["sethostname"],"action":"SCMP_ACT_ERRNO"}]}"#
            ),
        )
        .unwrap();
        let s = agent_seccomp(&profile(ProfileType::Localhost, good.to_str().unwrap())).unwrap();
        assert_eq!(s.kind, Kind::Custom as i32);
        let v: serde_json::Value = serde_json::from_str(&s.profile_json).unwrap();
        assert_eq!(v["syscalls"][0]["names"][0], "sethostname");
        #[allow(deprecated)]
        let old = cri::LinuxContainerSecurityContext {
            seccomp_profile_path: format!("localhost/{}", good.display()),
            ..Default::default()
        };
        assert_eq!(agent_seccomp(&old).unwrap().kind, Kind::Custom as i32);

        let missing = d.path().join("missing.json");
        let m = err(agent_seccomp(&profile(ProfileType::Localhost, missing.to_str().unwrap())));
        assert!(m.contains("localhost_ref") && m.contains("cannot read"), "{m}");
        let junk = d.path().join("junk.json");
        std::fs::write(&junk, r#"{"defaultAction":"SCMP_ACT_EXPLODE"}"#).unwrap();
        let m = err(agent_seccomp(&profile(ProfileType::Localhost, junk.to_str().unwrap())));
        assert!(m.contains("not an OCI seccomp profile"), "{m}");
        let big = d.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_PROFILE_BYTES as usize + 1]).unwrap();
        let m = err(agent_seccomp(&profile(ProfileType::Localhost, big.to_str().unwrap())));
        assert!(m.contains("larger than"), "{m}");
        assert!(
            err(agent_seccomp(&profile(ProfileType::Localhost, "rel.json"))).contains("absolute")
        );
        assert!(err(agent_seccomp(&profile(ProfileType::Localhost, d.path().to_str().unwrap())))
            .contains("not a regular file"));
    }
}
