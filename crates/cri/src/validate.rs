//! Checks of the path-like and line-like fields of CRI requests. Each error is an
//! InvalidArgument naming the field, so that a caller can fix the request; nothing is created
//! before the checks pass.
//!
//! Paths: absolute ones are normalised (`//` and `.` dropped) and may not contain `..` (a path
//! that climbs is never what a kubelet sends, and normalising it lexically could change where it
//! points once symlinks are involved); relative ones (a container's `log_path` under the pod's
//! `log_directory`) may not be absolute or climb. Lines (resolv.conf entries) may not contain
//! whitespace or control characters, which would add lines or options to the file the guest
//! reads.

use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use crate::error::CriError;

fn invalid(field: &str, value: &str, why: &str) -> CriError {
    CriError::InvalidArgument(format!("{field} {value:?} {why}"))
}

/// An absolute host or guest path, normalised.
pub fn absolute_path(field: &str, value: &str) -> Result<PathBuf, CriError> {
    if !value.starts_with('/') {
        return Err(invalid(field, value, "must be an absolute path"));
    }
    clean(field, value)
}

/// A path relative to a directory the caller chose, which must stay beneath it.
pub fn relative_path(field: &str, value: &str) -> Result<PathBuf, CriError> {
    if value.starts_with('/') {
        return Err(invalid(field, value, "must be relative (to the pod's log_directory)"));
    }
    let p = clean(field, value)?;
    if p.as_os_str().is_empty() {
        return Err(invalid(field, value, "names no file"));
    }
    Ok(p)
}

fn clean(field: &str, value: &str) -> Result<PathBuf, CriError> {
    if value.contains('\0') {
        return Err(invalid(field, value, "contains a NUL byte"));
    }
    if value.len() > 4096 {
        return Err(invalid(
            field,
            &value[..value.floor_char_boundary(64)],
            "is longer than 4096 bytes",
        ));
    }
    let mut out = PathBuf::new();
    for c in Path::new(value).components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(invalid(field, value, "must not contain '..'"));
            }
            Component::Prefix(_) => return Err(invalid(field, value, "is not a Unix path")),
        }
    }
    Ok(out)
}

/// One word of a configuration file line: not empty, no whitespace or control characters.
pub fn word(field: &str, value: &str) -> Result<(), CriError> {
    if value.is_empty() {
        return Err(invalid(field, value, "must not be empty"));
    }
    if let Some(c) = value.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(field, value, &format!("must not contain {c:?}")));
    }
    if value.len() > 255 {
        return Err(invalid(
            field,
            &value[..value.floor_char_boundary(64)],
            "is longer than 255 bytes",
        ));
    }
    Ok(())
}

/// The pod's DNS config: servers are IP addresses, searches and options single words (each
/// becomes part of one resolv.conf line).
pub fn dns(config: &k8s_cri::v1::DnsConfig) -> Result<(), CriError> {
    for (i, s) in config.servers.iter().enumerate() {
        if s.parse::<IpAddr>().is_err() {
            return Err(invalid(&format!("dns_config.servers[{i}]"), s, "is not an IP address"));
        }
    }
    for (i, s) in config.searches.iter().enumerate() {
        word(&format!("dns_config.searches[{i}]"), s)?;
    }
    for (i, s) in config.options.iter().enumerate() {
        word(&format!("dns_config.options[{i}]"), s)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(e: CriError) -> String {
        match e {
            CriError::InvalidArgument(m) => m,
            other => panic!("not InvalidArgument: {other:?}"),
        }
    }

    #[test]
    fn absolute_paths_are_normalised_and_never_climb() {
        assert_eq!(absolute_path("f", "/a//b/./c/").unwrap(), PathBuf::from("/a/b/c"));
        assert_eq!(absolute_path("f", "/").unwrap(), PathBuf::from("/"));
        assert!(msg(absolute_path("host_path", "a/b").unwrap_err()).contains("host_path"));
        assert!(msg(absolute_path("f", "/a/../etc").unwrap_err()).contains(".."));
        assert!(msg(absolute_path("f", "/a\0b").unwrap_err()).contains("NUL"));
        assert!(absolute_path("f", &format!("/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn relative_paths_stay_beneath() {
        assert_eq!(relative_path("f", "c/0.log").unwrap(), PathBuf::from("c/0.log"));
        assert_eq!(relative_path("f", "./c.log").unwrap(), PathBuf::from("c.log"));
        assert!(msg(relative_path("log_path", "/etc/shadow").unwrap_err()).contains("log_path"));
        assert!(relative_path("f", "../../etc/cron.d/x").is_err());
        assert!(relative_path("f", "c/../../x").is_err());
        assert!(relative_path("f", ".").is_err());
        assert!(relative_path("f", "").is_err());
    }

    #[test]
    fn dns_entries_cannot_add_lines() {
        let ok = k8s_cri::v1::DnsConfig {
            servers: vec!["10.0.0.10".into(), "fd00::a".into()],
            searches: vec!["svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        dns(&ok).unwrap();
        let bad = |f: fn(&mut k8s_cri::v1::DnsConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            msg(dns(&c).unwrap_err())
        };
        assert!(
            bad(|c| c.servers[0] = "10.0.0.1\nnameserver 6.6.6.6".into()).contains("servers[0]")
        );
        assert!(bad(|c| c.servers.push("dns.example".into())).contains("servers[2]"));
        assert!(bad(|c| c.searches[0] = "a\noptions debug".into()).contains("searches[0]"));
        assert!(bad(|c| c.options.push("ndots:1 debug".into())).contains("options[1]"));
        assert!(bad(|c| c.options.push(String::new())).contains("empty"));
        assert!(bad(|c| c.searches.push("x".repeat(300))).contains("255"));
    }
}
