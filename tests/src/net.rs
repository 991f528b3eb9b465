//! Pod networking for the end-to-end tests and benchmarks: a private CNI setup (conf dir, an
//! extra plugin dir, the daemon's netns dir, host-local's data dir) around Debian's plugins
//! (`containernetworking-plugins`, /usr/lib/cni), conflists written by the test, and a
//! [`Footprint`] of everything a pod's network can leave in the host: netns files (the daemon's
//! and `ip netns`), links and bridge ports, host-local allocations and portmap's nat rules.
//! Addresses are private (10.88.x.0/24, fd00:88:x::/64) and exist only inside the test host.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

use crate::cri::CniDirs;

/// Debian's CNI plugins (package containernetworking-plugins).
pub const DEBIAN_PLUGINS: &str = "/usr/lib/cni";

/// The plugins after bridge in the usual test chain: portmap (hostPort) and loopback.
pub const PORTMAP_AND_LOOPBACK: &str =
    r#",{"type":"portmap","capabilities":{"portMappings":true}},{"type":"loopback"}"#;

/// The CNI side of one test: conf dir, an extra plugin dir, the netns dir, host-local's data.
/// Dropping it unmounts netns files a failed test left.
pub struct CniEnv {
    dir: tempfile::TempDir,
}

impl CniEnv {
    /// Private dirs under /tmp (named with `prefix`).
    pub fn new(prefix: &str) -> Result<CniEnv> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp")?;
        for d in ["net.d", "bin", "netns", "ipam"] {
            std::fs::create_dir_all(dir.path().join(d))?;
        }
        Ok(CniEnv { dir })
    }

    /// The daemon's `[cni]` dirs: this conf dir, this bin dir then Debian's, this netns dir.
    pub fn dirs(&self) -> CniDirs {
        CniDirs {
            conf_dir: self.conf_dir(),
            bin_dirs: vec![self.dir.path().join("bin"), DEBIAN_PLUGINS.into()],
            netns_dir: self.netns_dir(),
        }
    }

    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    /// host-local's `dataDir` (one subdirectory per network).
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// Writes the network `name` on `bridge`: the host-local ranges (one per family), then
    /// `extra` plugins after bridge (JSON objects, each with a leading comma, e.g.
    /// [`PORTMAP_AND_LOOPBACK`]). Returns the conflist's path.
    pub fn write_conflist(
        &self,
        name: &str,
        bridge: &str,
        ranges: &[&str],
        extra: &str,
    ) -> Result<PathBuf> {
        let path = self.conf_dir().join("10-e2e.conflist");
        std::fs::write(&path, conflist(name, bridge, ranges, &self.ipam_dir(), extra))?;
        Ok(path)
    }

    /// A plugin in the test's bin dir that fails every ADD with a CNI error (DEL succeeds).
    pub fn write_failing_plugin(&self, name: &str, msg: &str) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join("bin").join(name);
        let body = format!(
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] || exit 0\n\
             echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"{msg}\"}}'\nexit 1\n"
        );
        std::fs::write(&path, body)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// host-local's allocation files of network `name` (one per IP, named by it).
    pub fn allocations(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = dir_names(&self.ipam_dir().join(name))
            .into_iter()
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v
    }

    /// The daemon's netns files (one bind mount per pod).
    pub fn netns_files(&self) -> Vec<String> {
        let mut v = dir_names(&self.netns_dir());
        v.sort();
        v
    }

    /// What the pods of network `name` on `bridge` hold in the host right now.
    pub fn footprint(&self, name: &str, bridge: &str) -> Result<Footprint> {
        Ok(Footprint {
            netns_files: self.netns_files(),
            ip_netns: ip_netns()?,
            links: links(""),
            bridge_ports: bridge_ports(bridge),
            allocations: self.allocations(name),
            nat: cni_nat_lines(&iptables_nat()?),
        })
    }
}

impl Drop for CniEnv {
    fn drop(&mut self) {
        // A failed test's netns bind mounts must go before the temp dir can.
        for n in self.netns_files() {
            let p = self.netns_dir().join(n);
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { continue };
            // SAFETY: umount2 of a path this test made, with a valid C string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The text of a bridge + host-local conflist (see [`CniEnv::write_conflist`]).
pub fn conflist(name: &str, bridge: &str, ranges: &[&str], ipam_dir: &Path, extra: &str) -> String {
    let ranges: Vec<String> = ranges.iter().map(|r| format!(r#"[{{"subnet":"{r}"}}]"#)).collect();
    let routes = if ranges.len() > 1 {
        r#"[{"dst":"0.0.0.0/0"},{"dst":"::/0"}]"#
    } else {
        r#"[{"dst":"0.0.0.0/0"}]"#
    };
    format!(
        r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[
          {{"type":"bridge","bridge":"{bridge}","isGateway":true,"ipMasq":false,
            "ipam":{{"type":"host-local","ranges":[{ranges}],"routes":{routes},
                     "dataDir":"{ipam}"}}}}{extra}]}}"#,
        ranges = ranges.join(","),
        ipam = ipam_dir.display()
    )
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| r.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
        .unwrap_or_default()
}

/// The host netns's links whose names start with `prefix` (veths the bridge plugin made:
/// "veth"; everything: "").
pub fn links(prefix: &str) -> Vec<String> {
    let mut v = dir_names(Path::new("/sys/class/net"));
    v.retain(|n| n.starts_with(prefix));
    v.sort();
    v
}

/// The ports of bridge `bridge` (none when it does not exist).
pub fn bridge_ports(bridge: &str) -> Vec<String> {
    let mut v = dir_names(&Path::new("/sys/class/net").join(bridge).join("brif"));
    v.sort();
    v
}

/// The named network namespaces `ip netns list` shows.
pub fn ip_netns() -> Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output().context("ip netns list")?;
    ensure!(out.status.success(), "ip netns list: {}", String::from_utf8_lossy(&out.stderr));
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    v.sort();
    Ok(v)
}

/// `iptables-save -t nat`.
pub fn iptables_nat() -> Result<String> {
    let out =
        Command::new("iptables-save").args(["-t", "nat"]).output().context("iptables-save")?;
    ensure!(out.status.success(), "iptables-save: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The CNI plugins' part of an `iptables-save` dump: chain declarations of `CNI-*` chains
/// (without their counters) and the rules that name one.
pub fn cni_nat_lines(dump: &str) -> BTreeSet<String> {
    dump.lines()
        .filter_map(|l| {
            if let Some(chain) = l.strip_prefix(':') {
                let name = chain.split_whitespace().next()?;
                name.starts_with("CNI-").then(|| format!(":{name}"))
            } else {
                (l.starts_with("-A ") && l.contains("CNI-")).then(|| l.to_string())
            }
        })
        .collect()
}

/// Whether a nat line is a pod's own: a per-pod chain (portmap's `CNI-DN-*`, bridge's
/// masquerade `CNI-<hash>`) or a rule of one, or a rule that names a container (portmap's
/// comments carry the sandbox ID). portmap's shared chains (`CNI-HOSTPORT-*`) and their static
/// rules are made by the first pod and stay, as they do under containerd.
pub fn is_per_pod_nat_line(l: &str) -> bool {
    let shared = |name: &str| name.starts_with("CNI-HOSTPORT-");
    if let Some(name) = l.strip_prefix(':') {
        return !shared(name);
    }
    let words: Vec<&str> = l.split_whitespace().collect();
    let chain = words.get(1).copied().unwrap_or("");
    let target = words.windows(2).find(|w| w[0] == "-j").map(|w| w[1]).unwrap_or("");
    let names_cni_chain = |n: &str| n.starts_with("CNI-") && !shared(n);
    names_cni_chain(chain) || names_cni_chain(target) || l.contains(" id: ")
}

/// Everything the pods of one network can hold in the host (see [`CniEnv::footprint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Footprint {
    /// The daemon's netns dir.
    pub netns_files: Vec<String>,
    /// `ip netns list`.
    pub ip_netns: Vec<String>,
    /// All links of the host netns (taps, veths, bridges).
    pub links: Vec<String>,
    /// The network's bridge's ports.
    pub bridge_ports: Vec<String>,
    /// host-local's allocations of the network.
    pub allocations: Vec<String>,
    /// The CNI lines of the nat table ([`cni_nat_lines`]).
    pub nat: BTreeSet<String>,
}

impl Footprint {
    /// Fails unless nothing is left beyond `baseline` (taken before the first pod) except the
    /// network's `bridge` itself and portmap's shared chains (as containerd leaves them).
    pub fn ensure_nothing_beyond(&self, baseline: &Footprint, bridge: &str) -> Result<()> {
        let extra = |now: &[String], base: &[String]| -> Vec<String> {
            now.iter().filter(|n| !base.contains(n)).cloned().collect()
        };
        let mut problems = Vec::new();
        let mut check = |what: &str, left: Vec<String>| {
            if !left.is_empty() {
                problems.push(format!("{what}: {left:?}"));
            }
        };
        check("netns files", extra(&self.netns_files, &baseline.netns_files));
        check("ip netns", extra(&self.ip_netns, &baseline.ip_netns));
        let mut links = extra(&self.links, &baseline.links);
        links.retain(|l| l != bridge);
        check("links", links);
        check("bridge ports", extra(&self.bridge_ports, &baseline.bridge_ports));
        check("host-local allocations", extra(&self.allocations, &baseline.allocations));
        check(
            "nat rules",
            self.nat
                .iter()
                .filter(|l| !baseline.nat.contains(*l) && is_per_pod_nat_line(l))
                .cloned()
                .collect(),
        );
        ensure!(problems.is_empty(), "left behind: {}", problems.join("; "));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "# Generated by iptables-save\n*nat\n\
        :PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [3:180]\n\
        :CNI-HOSTPORT-DNAT - [0:0]\n:CNI-HOSTPORT-MASQ - [0:0]\n:CNI-DN-4a2f1c - [0:0]\n\
        -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n\
        -A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE\n\
        -A CNI-HOSTPORT-DNAT -p tcp -m comment --comment \"dnat name: \\\"n\\\" id: \\\"abc\\\"\" \
        -m multiport --dports 18085 -j CNI-DN-4a2f1c\n\
        -A CNI-DN-4a2f1c -p tcp -m tcp --dport 18085 -j DNAT --to-destination 10.88.5.2:8080\n\
        -A OUTPUT -d 10.0.0.1 -j ACCEPT\nCOMMIT\n";

    #[test]
    fn nat_lines_keep_cni_chains_and_rules_without_counters() {
        let lines = cni_nat_lines(DUMP);
        assert!(lines.contains(":CNI-DN-4a2f1c") && lines.contains(":CNI-HOSTPORT-DNAT"));
        assert!(!lines.iter().any(|l| l.contains("PREROUTING ACCEPT") || l.contains("10.0.0.1")));
        assert_eq!(lines.len(), 7, "{lines:?}");
        let per_pod: Vec<&String> = lines.iter().filter(|l| is_per_pod_nat_line(l)).collect();
        assert_eq!(per_pod.len(), 3, "{per_pod:?}");
        assert!(per_pod.iter().all(|l| l.contains("CNI-DN-")));
    }

    fn footprint(links: &[&str], nat: &str) -> Footprint {
        Footprint {
            netns_files: Vec::new(),
            ip_netns: Vec::new(),
            links: links.iter().map(|s| s.to_string()).collect(),
            bridge_ports: Vec::new(),
            allocations: Vec::new(),
            nat: cni_nat_lines(nat),
        }
    }

    #[test]
    fn the_bridge_and_portmaps_shared_chains_may_stay_nothing_else() {
        let base = footprint(&["eth0", "lo"], "");
        let shared = "*nat\n:CNI-HOSTPORT-DNAT - [0:0]\n\
            -A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT\n";
        footprint(&["cnie2e5", "eth0", "lo"], shared)
            .ensure_nothing_beyond(&base, "cnie2e5")
            .expect("bridge and shared chains are fine");
        let e = footprint(&["cnie2e5", "eth0", "lo", "veth1234"], DUMP)
            .ensure_nothing_beyond(&base, "cnie2e5")
            .expect_err("a veth and a DNAT chain left");
        let msg = format!("{e}");
        assert!(msg.contains("veth1234") && msg.contains("CNI-DN-4a2f1c"), "{msg}");
        let mut left = footprint(&["eth0", "lo"], "");
        left.allocations = vec!["10.88.5.2".into()];
        left.netns_files = vec!["abc".into()];
        let msg = format!("{}", left.ensure_nothing_beyond(&base, "x").unwrap_err());
        assert!(msg.contains("10.88.5.2") && msg.contains("netns files"), "{msg}");
    }

    #[test]
    fn conflist_is_json_with_the_ranges_and_extra_plugins() {
        let text = conflist(
            "n",
            "br0",
            &["10.88.5.0/24", "fd00:88:5::/64"],
            Path::new("/tmp/x/ipam"),
            PORTMAP_AND_LOOPBACK,
        );
        let v: serde_json::Value = serde_json::from_str(&text).expect(&text);
        let plugins = v["plugins"].as_array().expect("plugins");
        let types: Vec<&str> = plugins.iter().filter_map(|p| p["type"].as_str()).collect();
        assert_eq!(types, ["bridge", "portmap", "loopback"]);
        assert_eq!(plugins[0]["ipam"]["ranges"].as_array().map(Vec::len), Some(2));
        assert_eq!(plugins[0]["ipam"]["dataDir"], "/tmp/x/ipam");
        assert_eq!(plugins[0]["ipam"]["routes"].as_array().map(Vec::len), Some(2));
    }
}
