//! The seeds are real traffic: each reaches the code it is meant for (a seed the parser
//! rejects early would leave the fuzzer starting from nothing).

use carapace_fuzz::seeds;
use carapace_fuzz::targets::{agent_check, mmio_ops};
use carapace_virtio_devices::fuzz_hooks;

fn seed(target: &str, name: &str) -> Vec<u8> {
    seeds::all()
        .into_iter()
        .find(|(t, n, _)| *t == target && n == name)
        .map(|(_, _, d)| d)
        .unwrap_or_else(|| panic!("no seed {target}/{name}"))
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn chain_seeds_make_chains_available() {
    for (name, want) in [
        ("one-readable-one-writable", 1),
        ("three-chains-event-idx", 3),
        ("readable-after-writable", 1),
        ("indirect-table", 1),
    ] {
        assert_eq!(fuzz_hooks::descriptor_chains(&seed("virtio_chain", name)), want, "{name}");
    }
}

#[test]
fn mmio_driver_seeds_activate_the_device() {
    assert!(mmio_ops(&seed("virtio_mmio", "linux-driver-init-request")));
    assert!(mmio_ops(&seed("virtio_mmio", "linux-driver-init-request-reset")));
    assert!(!mmio_ops(&seed("virtio_mmio", "driver-ok-before-setup")));
}

#[test]
fn vsock_sessions_get_packets_back() {
    // Data reaches the guest only over an established connection: a guest-initiated one gets
    // the host listener's line, a host-initiated one the client's bytes after the handshake.
    assert_eq!(fuzz_hooks::vsock_packets(scratch().path(), &[]), 0);
    for name in ["guest-initiated-session", "host-initiated-session"] {
        let got = fuzz_hooks::vsock_packets(scratch().path(), &seed("vsock", name));
        assert!(got >= 1, "{name}: no data packet reached the guest");
    }
    assert_eq!(fuzz_hooks::vsock_packets(scratch().path(), &seed("vsock", "stray-rw")), 0);
}

#[test]
fn fuse_seeds_are_answered() {
    for (name, want) in [("init", 1), ("create-write-read-lookup", 7), ("lookup-before-init", 1)] {
        let got = fuzz_hooks::fuse_requests(scratch().path(), &seed("virtio_fs", name));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn agent_seeds_pass_the_agents_checks() {
    for name in [
        "create-container",
        "exec-process",
        "configure-network",
        "update-resources",
        "signal-process",
        "port-forward",
    ] {
        let r = agent_check(&seed("agent_request", name));
        assert!(r.is_ok(), "{name}: {r:?}");
    }
}

#[test]
fn registry_seeds_parse_or_are_refused_as_meant() {
    use carapace_image::fuzz_hooks::{image_config, layer, manifest};
    for name in [
        "oci-manifest.json",
        "docker-manifest.json",
        "oci-index.json",
        "docker-manifest-list.json",
        "index-without-media-type.json",
    ] {
        assert!(manifest(&seed("oci_manifest", name)), "{name}");
    }
    assert!(!manifest(&seed("oci_manifest", "schema1.json")));
    for name in ["docker-config.json", "oci-config.json", "named-user.json"] {
        assert!(image_config(&seed("oci_config", name)), "{name}");
    }
    assert!(!image_config(&seed("oci_config", "wrong-rootfs-type.json")));
    let plain = layer(scratch().path(), &seed("layer_tar", "plain.tar"));
    assert!(plain.is_ok(), "plain.tar: {plain:?}");
    let hostile = layer(scratch().path(), &seed("layer_tar", "hostile.tar"));
    assert!(hostile.is_err(), "hostile.tar unpacked: {hostile:?}");
}
