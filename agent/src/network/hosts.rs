//! The pod's /etc/hosts: what kubelet writes for pods whose runtime gives
//! it no file of its own (localhost lines, then the pod's addresses with
//! its hostname).

use std::path::Path;

use super::config::NetConfig;
use super::error::NetError;

/// Where the agent keeps the pod's hosts file.
pub const POD_HOSTS_FILE: &str = "/run/carapace/pod/hosts";

/// The text: localhost lines, then one `<address>\t<hostname>` line for the
/// first IPv4 and the first IPv6 address of the first interface.
pub fn hosts_text(cfg: &NetConfig) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file (written by carapace-agent).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    if cfg.hostname.is_empty() {
        return s;
    }
    let addrs = cfg.interfaces.first().map(|i| i.addresses.as_slice()).unwrap_or(&[]);
    let v4 = addrs.iter().find(|a| a.addr.is_ipv4());
    let v6 = addrs.iter().find(|a| a.addr.is_ipv6());
    for a in [v4, v6].into_iter().flatten() {
        s.push_str(&format!("{}\t{}\n", a.addr, cfg.hostname));
    }
    s
}

/// Writes the file atomically (temp file + rename in the same directory).
pub fn write_hosts(path: &Path, cfg: &NetConfig) -> Result<(), NetError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)
        .map_err(|e| NetError::io(format!("mkdir {}", dir.display()), e))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, hosts_text(cfg))
        .map_err(|e| NetError::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| NetError::io(format!("rename to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::config::tests::request;

    #[test]
    fn hosts_names_the_pod_by_its_first_addresses() {
        let cfg = NetConfig::parse(&request()).unwrap();
        let t = hosts_text(&cfg);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines.contains(&"127.0.0.1\tlocalhost"));
        assert!(lines.contains(&"::1\tlocalhost ip6-localhost ip6-loopback"));
        assert!(lines.contains(&"10.88.0.4\tweb-0"));
        assert!(lines.contains(&"fd00::4\tweb-0"));
        assert_eq!(lines.iter().filter(|l| l.ends_with("web-0")).count(), 2);

        let mut no_name = cfg.clone();
        no_name.hostname.clear();
        assert!(!hosts_text(&no_name).contains("10.88.0.4"));

        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pod/hosts");
        write_hosts(&p, &cfg).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), t);
    }
}
