//! The manager with Debian's real plugins (`containernetworking-plugins` in /usr/lib/cni):
//! bridge + host-local + portmap + loopback. Every test runs its CNI calls in a network
//! namespace of its own (a thread that unshares CLONE_NEWNET), so the bridge, veths and
//! iptables rules the plugins make never touch the machine's namespace and vanish with it.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_cri::v1 as cri;

use super::*;

const DEBIAN_PLUGINS: &str = "/usr/lib/cni";
const SUBNET_PREFIX: &str = "10.99.0.";

struct Env {
    dir: tempfile::TempDir,
    cfg: CniConfig,
}

impl Env {
    fn new(extra_bin: bool) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::create_dir_all(d.join("net.d")).unwrap();
        fs::create_dir_all(d.join("bin")).unwrap();
        let mut bin_dirs = vec![PathBuf::from(DEBIAN_PLUGINS)];
        if extra_bin {
            bin_dirs.insert(0, d.join("bin"));
        }
        let cfg = CniConfig {
            enabled: true,
            conf_dir: d.join("net.d"),
            bin_dirs,
            netns_dir: d.join("netns"),
        };
        Env { dir, cfg }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn ipam_dir(&self) -> PathBuf {
        self.path().join("ipam")
    }

    /// bridge (+ host-local) then the given plugins.
    fn write_conflist(&self, extra: &str) {
        self.write_conflist_version("1.0.0", extra)
    }

    fn write_conflist_version(&self, version: &str, extra: &str) {
        let text = format!(
            r#"{{"cniVersion":"{version}","name":"testnet","plugins":[
              {{"type":"bridge","bridge":"cnitest0","isGateway":true,"ipMasq":false,
                "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.99.0.0/24"}}]],
                         "routes":[{{"dst":"0.0.0.0/0"}}],"dataDir":"{ipam}"}}}}{extra}]}}"#,
            ipam = self.ipam_dir().display()
        );
        fs::write(self.cfg.conf_dir.join("10-test.conflist"), text).unwrap();
    }

    fn manager(&self) -> CniManager {
        CniManager::new(&self.cfg, &self.path().join("state"))
    }

    /// host-local's allocation files (one per IP, named by the IP).
    fn allocations(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(self.ipam_dir().join("testnet")) else { return Vec::new() };
        let mut v: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(SUBNET_PREFIX))
            .collect();
        v.sort();
        v
    }

    fn netns_files(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.cfg.netns_dir) else { return Vec::new() };
        rd.flatten().filter_map(|e| e.file_name().into_string().ok()).collect()
    }
}

impl Drop for Env {
    /// Whatever a failed test left mounted is unmounted, so the temp dir can go.
    fn drop(&mut self) {
        for n in self.netns_files() {
            let _ = netns::remove(&self.cfg.netns_dir.join(n));
        }
    }
}

/// Runs `f` on a thread in a new network namespace (gone when the thread ends).
fn in_test_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

fn pod(id: &str) -> PodIdentity {
    PodIdentity {
        sandbox_id: id.into(),
        name: format!("pod-{id}"),
        namespace: "default".into(),
        uid: format!("uid-{id}"),
    }
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn skip_without_plugins() -> bool {
    let missing = !Path::new(DEBIAN_PLUGINS).join("bridge").exists();
    if missing {
        eprintln!("skipped: {DEBIAN_PLUGINS}/bridge missing (make deps installs it)");
    }
    missing
}

#[test]
fn add_gives_pods_distinct_ips_and_del_releases_them_idempotently() {
    if skip_without_plugins() {
        return;
    }
    let env = Env::new(false);
    env.write_conflist(
        r#",{"type":"portmap","capabilities":{"portMappings":true}},{"type":"loopback"}"#,
    );
    in_test_netns(|| {
        let m = env.manager();
        assert!(m.status().ready, "{:?}", m.status());
        let ports = [cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 18080,
            host_ip: String::new(),
        }];
        let dns = cri::DnsConfig { servers: vec!["10.96.0.10".into()], ..Default::default() };
        let a = m.setup(&pod("aaa"), &ports, Some(&dns), &BTreeMap::new()).unwrap();
        let b = m.setup(&pod("bbb"), &[], None, &BTreeMap::new()).unwrap();

        let (ip_a, ip_b) = (a.primary_ip().unwrap(), b.primary_ip().unwrap());
        assert!(ip_a.to_string().starts_with(SUBNET_PREFIX), "{ip_a}");
        assert!(ip_b.to_string().starts_with(SUBNET_PREFIX), "{ip_b}");
        assert_ne!(ip_a, ip_b);
        assert!(a.additional_ips().is_empty());
        assert_eq!(a.netns, env.cfg.netns_dir.join("aaa"));
        let mac = a.mac().expect("eth0's MAC in the result").to_string();
        assert_eq!(mac.len(), 17, "{mac}");
        assert_eq!(a.ip_configs()[0].gateway.map(|g| g.to_string()), Some("10.99.0.1".into()));
        assert_eq!(a.result.cni_version, "1.0.0");

        // eth0 really is in the pod's netns, with that address and MAC.
        let inside = sh(&format!("nsenter --net={} ip -o addr show eth0", a.netns.display()));
        assert!(inside.contains(&format!("{ip_a}/24")), "{inside}");
        let link = sh(&format!("nsenter --net={} ip -o link show eth0", a.netns.display()));
        assert!(link.contains(&mac), "{link}");
        // The bridge is in this test's namespace (not the machine's), with the gateway.
        assert!(sh("ip -o addr show cnitest0").contains("10.99.0.1/24"));
        // portmap got the runtime config: a DNAT rule for the host port.
        let nat = sh("iptables-save -t nat");
        assert!(nat.contains("18080"), "{nat}");
        assert_eq!(env.allocations().len(), 2);

        // After a "restart": a new manager finds the network in the cache.
        let again = env.manager().attached("aaa").unwrap().unwrap();
        assert_eq!(again, a);
        // CHECK passes while the network is intact and fails once eth0 is gone.
        m.check("bbb").unwrap();
        sh(&format!("nsenter --net={} ip link del eth0", b.netns.display()));
        let e = m.check("bbb").unwrap_err();
        assert!(e.to_string().contains("CHECK"), "{e}");

        m.teardown("aaa").unwrap();
        assert_eq!(env.allocations(), vec![ip_b.to_string()]);
        assert!(!a.netns.exists());
        assert!(!sh("iptables-save -t nat").contains("18080"), "portmap's rule left");
        assert_eq!(m.attached("aaa").unwrap(), None);
        m.teardown("aaa").unwrap();

        // Only the cache is left (the netns went away): DEL still releases the address.
        netns::remove(&b.netns).unwrap();
        m.teardown("bbb").unwrap();
        assert!(env.allocations().is_empty(), "{:?}", env.allocations());
        assert!(m.cached_sandboxes().is_empty());
        m.teardown("bbb").unwrap();
        m.teardown("never-set-up").unwrap();
    });
    assert!(env.netns_files().is_empty());
}

#[test]
fn del_uses_the_cached_config_after_the_conf_dir_changed() {
    if skip_without_plugins() {
        return;
    }
    let env = Env::new(false);
    env.write_conflist("");
    in_test_netns(|| {
        let m = env.manager();
        m.setup(&pod("ccc"), &[], None, &BTreeMap::new()).unwrap();
        assert_eq!(env.allocations().len(), 1);
        // The admin replaces the config with one this pod was not set up with.
        fs::remove_file(env.cfg.conf_dir.join("10-test.conflist")).unwrap();
        fs::write(
            env.cfg.conf_dir.join("20-other.conflist"),
            r#"{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"loopback"}]}"#,
        )
        .unwrap();
        assert_eq!(m.current_network().unwrap().name, "other");
        env.manager().teardown("ccc").unwrap();
        assert!(env.allocations().is_empty(), "{:?}", env.allocations());
    });
}

#[test]
fn a_failing_plugin_fails_setup_with_its_message_and_leaves_nothing() {
    if skip_without_plugins() {
        return;
    }
    let env = Env::new(true);
    let failer = env.path().join("bin/failer");
    fs::write(
        &failer,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n\
         echo '{\"cniVersion\":\"1.0.0\",\"code\":100,\"msg\":\"failer says no\",\
         \"details\":\"by design\"}'\nexit 1\nfi\nexit 0\n",
    )
    .unwrap();
    fs::set_permissions(&failer, fs::Permissions::from_mode(0o755)).unwrap();
    env.write_conflist(r#",{"type":"failer"}"#);
    in_test_netns(|| {
        let m = env.manager();
        let e = m.setup(&pod("ddd"), &[], None, &BTreeMap::new()).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("failer says no") && s.contains("by design"), "{s}");
        assert!(matches!(e, CniError::Plugin { ref plugin, .. } if plugin == "failer"), "{e:?}");
        assert!(env.netns_files().is_empty(), "{:?}", env.netns_files());
        assert!(env.allocations().is_empty(), "{:?}", env.allocations());
        assert!(m.cached_sandboxes().is_empty());
        assert!(!sh("ip -o link").contains("veth"), "{}", sh("ip -o link"));
    });
}

#[test]
fn setup_without_a_config_or_with_a_missing_plugin_is_refused_before_anything_is_made() {
    let env = Env::new(false);
    let m = env.manager();
    let e = m.setup(&pod("eee"), &[], None, &BTreeMap::new()).unwrap_err();
    assert!(matches!(e, CniError::NotReady(_)), "{e}");
    fs::write(
        env.cfg.conf_dir.join("10.conflist"),
        r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"no-such-plugin"}]}"#,
    )
    .unwrap();
    let e = m.setup(&pod("eee"), &[], None, &BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("no-such-plugin"), "{e}");
    assert!(env.netns_files().is_empty());
}

#[test]
fn older_cni_versions_of_the_plugins_give_the_same_network() {
    if skip_without_plugins() {
        return;
    }
    for version in ["0.4.0", "0.3.1"] {
        let env = Env::new(false);
        env.write_conflist_version(version, r#",{"type":"loopback"}"#);
        in_test_netns(|| {
            let m = env.manager();
            let n = m.setup(&pod("fff"), &[], None, &BTreeMap::new()).unwrap();
            assert_eq!(n.result.cni_version, version);
            let ip = n.primary_ip().unwrap().to_string();
            assert!(ip.starts_with(SUBNET_PREFIX), "{version}: {ip}");
            assert!(n.mac().is_some(), "{version}");
            m.check("fff").unwrap();
            m.teardown("fff").unwrap();
            assert!(env.allocations().is_empty(), "{version}: {:?}", env.allocations());
        });
    }
}

#[test]
fn bandwidth_annotations_reach_the_bandwidth_plugin() {
    if skip_without_plugins() {
        return;
    }
    let env = Env::new(false);
    env.write_conflist(r#",{"type":"bandwidth","capabilities":{"bandwidth":true}}"#);
    in_test_netns(|| {
        let m = env.manager();
        let annotations = BTreeMap::from([
            (runtime_config::INGRESS_ANNOTATION.to_string(), "10M".to_string()),
            (runtime_config::EGRESS_ANNOTATION.to_string(), "20M".to_string()),
        ]);
        m.setup(&pod("ggg"), &[], None, &annotations).unwrap();
        // The plugin shaped the host side of the pod's veth with the annotations' rates.
        let qdiscs = sh("tc qdisc show");
        assert!(qdiscs.contains("tbf") && qdiscs.contains("10Mbit"), "{qdiscs}");
        assert!(qdiscs.contains("20Mbit"), "{qdiscs}");
        m.teardown("ggg").unwrap();
        assert!(!sh("tc qdisc show").contains("tbf"), "{}", sh("tc qdisc show"));
    });
}
