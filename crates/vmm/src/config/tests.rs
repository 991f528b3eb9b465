//! Tests of the VM configuration: limits, files, JSON.
use super::*;

fn config_with_kernel() -> (tempfile::NamedTempFile, VmConfig) {
    let kernel = tempfile::NamedTempFile::new().unwrap();
    let cfg = VmConfig::new(kernel.path());
    (kernel, cfg)
}

#[test]
fn defaults_are_valid() {
    let (_k, cfg) = config_with_kernel();
    cfg.validate().unwrap();
}

#[test]
fn too_little_memory_names_the_minimum() {
    let (_k, mut cfg) = config_with_kernel();
    cfg.mem_mib = 32;
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("at least 64 MiB"), "{e}");
    assert!(e.contains("32"), "{e}");
}

#[test]
fn the_serial_log_cap_is_a_field_with_a_floor() {
    let (_k, mut cfg) = config_with_kernel();
    assert_eq!(cfg.serial_log_max_bytes, DEFAULT_SERIAL_LOG_MAX_BYTES);
    cfg.serial_log_max_bytes = 100;
    let e = cfg.validate().unwrap_err();
    assert_eq!(e.field(), "serial_log_max_bytes");
    assert!(e.to_string().contains("at least 4096 bytes, got 100"), "{e}");
    cfg.serial_log_max_bytes = 1 << 16;
    cfg.validate().unwrap();
    let back: VmConfig = serde_json::from_str(&cfg.to_json()).unwrap();
    assert_eq!(back.serial_log_max_bytes, 1 << 16);
    // Left out of the JSON: the default.
    let old: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
    assert_eq!(old.serial_log_max_bytes, DEFAULT_SERIAL_LOG_MAX_BYTES);
}

#[test]
fn the_host_bounds_are_fields_with_ranges_and_defaults() {
    let (_k, cfg) = config_with_kernel();
    assert_eq!(cfg.vmm_log, None);
    assert_eq!(cfg.vmm_log_max_bytes, DEFAULT_VMM_LOG_MAX_BYTES);
    assert_eq!(cfg.guest_warnings_per_second, 10);
    assert_eq!(cfg.shared_dir_max_open_files, 65536);
    let bad = |f: &dyn Fn(&mut VmConfig)| {
        let mut c = cfg.clone();
        f(&mut c);
        c.validate_limits().unwrap_err()
    };
    let e = bad(&|c| c.vmm_log_max_bytes = 10);
    assert_eq!(e.field(), "vmm_log_max_bytes");
    assert!(e.to_string().contains("at least 4096 bytes, got 10"), "{e}");
    for rate in [0, MAX_GUEST_WARNINGS_PER_SECOND + 1] {
        let e = bad(&|c| c.guest_warnings_per_second = rate);
        assert_eq!(e.field(), "guest_warnings_per_second");
        assert!(e.to_string().contains("between 1 and 10000"), "{e}");
    }
    for files in [MIN_SHARED_DIR_MAX_OPEN_FILES - 1, MAX_SHARED_DIR_MAX_OPEN_FILES + 1] {
        let e = bad(&|c| c.shared_dir_max_open_files = files);
        assert_eq!(e.field(), "shared_dir_max_open_files");
        assert!(e.to_string().contains(&format!("got {files}")), "{e}");
    }
    let mut c = cfg.clone();
    c.vmm_log = Some("/run/pod/vmm.log".into());
    c.vmm_log_max_bytes = 8192;
    c.guest_warnings_per_second = 1;
    c.shared_dir_max_open_files = MIN_SHARED_DIR_MAX_OPEN_FILES;
    c.validate_limits().unwrap();
    let back: VmConfig = serde_json::from_str(&c.to_json()).unwrap();
    assert_eq!(back, c);
    let old: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
    assert_eq!(
        (old.vmm_log, old.vmm_log_max_bytes, old.guest_warnings_per_second),
        (None, DEFAULT_VMM_LOG_MAX_BYTES, DEFAULT_GUEST_WARNINGS_PER_SECOND)
    );
}

#[test]
fn zero_vcpus_rejected() {
    let (_k, mut cfg) = config_with_kernel();
    cfg.vcpus = 0;
    assert!(cfg.validate().unwrap_err().to_string().contains("vcpus"));
    cfg.vcpus = 33;
    assert!(cfg.validate().is_err());
    cfg.vcpus = 32;
    cfg.validate().unwrap();
}

#[test]
fn missing_kernel_rejected() {
    let cfg = VmConfig::new("/nonexistent/vmlinux");
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("kernel /nonexistent/vmlinux"), "{e}");
}

#[test]
fn missing_initramfs_rejected() {
    let (_k, mut cfg) = config_with_kernel();
    cfg.initramfs = Some("/nonexistent/initrd".into());
    assert!(cfg.validate().unwrap_err().to_string().contains("initramfs"));
}

#[test]
fn reserved_vsock_cid_rejected() {
    let (_k, mut cfg) = config_with_kernel();
    cfg.vsock = Some(VsockConfig { guest_cid: 2, uds_path: "/tmp/x.sock".into() });
    assert!(cfg.validate().unwrap_err().to_string().contains("CID"));
    cfg.vsock = Some(VsockConfig { guest_cid: 3, uds_path: "/tmp/x.sock".into() });
    cfg.validate().unwrap();
}

#[test]
fn missing_kvm_device_named() {
    let (_k, mut cfg) = config_with_kernel();
    cfg.kvm_path = "/nonexistent/kvm".into();
    assert!(cfg.validate().unwrap_err().to_string().contains("/nonexistent/kvm"));
}

#[test]
fn shared_dir_must_be_an_existing_directory() {
    let (k, mut cfg) = config_with_kernel();
    cfg.shared_dir = Some("/nonexistent/shared".into());
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("shared directory /nonexistent/shared"), "{e}");
    cfg.shared_dir = Some(k.path().to_path_buf());
    assert!(cfg.validate().unwrap_err().to_string().contains("not a directory"));
    let dir = tempfile::tempdir().unwrap();
    cfg.shared_dir = Some(dir.path().to_path_buf());
    cfg.validate().unwrap();
}

#[test]
fn zero_kick_interval_rejected() {
    let (_k, mut cfg) = config_with_kernel();
    cfg.kick_interval = Some(Duration::ZERO);
    assert!(cfg.validate().is_err());
}

#[test]
fn json_round_trip_in_milliseconds_with_defaults() {
    let mut cfg = VmConfig::new("/k");
    cfg.kick_interval = Some(Duration::from_millis(100));
    cfg.stop_timeout = Duration::from_millis(1500);
    cfg.vsock = Some(VsockConfig { guest_cid: 3, uds_path: "/r/vsock".into() });
    let json = cfg.to_json();
    assert!(json.contains("\"kick_interval_ms\": 100"), "{json}");
    assert!(json.contains("\"stop_timeout_ms\": 1500"), "{json}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.json");
    std::fs::write(&path, &json).unwrap();
    assert_eq!(VmConfig::from_json_file(&path).unwrap(), cfg);
    std::fs::write(&path, r#"{"kernel": "/k"}"#).unwrap();
    assert_eq!(VmConfig::from_json_file(&path).unwrap(), VmConfig::new("/k"));
    std::fs::write(&path, r#"{"kernel": "/k", "memory": 1}"#).unwrap();
    let e = VmConfig::from_json_file(&path).unwrap_err().to_string();
    assert!(e.contains("memory"), "{e}");
    let e = VmConfig::from_json_file(&dir.path().join("none")).unwrap_err().to_string();
    assert!(e.contains("cannot read VM config file"), "{e}");
}

/// A tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) made in a network namespace of its own,
/// which goes away with the descriptor.
fn test_tap() -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    std::thread::spawn(|| {
        // SAFETY: unshare affects only this short-lived thread; open/ioctl get valid
        // arguments and the new descriptor is owned once.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNET), 0, "unshare");
            let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            assert!(fd >= 0, "open /dev/net/tun");
            let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut ifr: libc::ifreq = std::mem::zeroed();
            ifr.ifr_ifru.ifru_flags =
                (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
            use std::os::fd::AsRawFd;
            assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr), 0);
            fd
        }
    })
    .join()
    .unwrap()
}

#[test]
fn the_nic_needs_a_unicast_mac_and_an_open_tap() {
    use std::os::fd::AsRawFd;
    let (_k, mut cfg) = config_with_kernel();
    let tap = test_tap();
    let net = |fd: i32, mac: &str| Some(NetConfig { tap_fd: fd, mac: mac.into() });
    cfg.net = net(tap.as_raw_fd(), "02:00:00:aa:bb:cc");
    cfg.validate().unwrap();
    for bad in ["02:00:00:aa:bb", "zz:00:00:aa:bb:cc", "03:00:00:aa:bb:cc", ""] {
        cfg.net = net(tap.as_raw_fd(), bad);
        let e = cfg.validate_limits().unwrap_err();
        assert_eq!(e.field(), "net");
        assert!(e.to_string().contains("mac"), "{e}");
    }
    cfg.net = net(2, "02:00:00:aa:bb:cc");
    assert!(cfg.validate_limits().unwrap_err().to_string().contains("3 or above"));
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array, owned once below.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors were just created and are owned nowhere else.
    let (r, _w) = unsafe {
        use std::os::fd::{FromRawFd, OwnedFd};
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    cfg.net = net(r.as_raw_fd(), "02:00:00:aa:bb:cc");
    cfg.validate_limits().unwrap();
    let e = cfg.validate().unwrap_err().to_string();
    assert!(
        e.contains(&format!("file descriptor {} is not an attached tun/tap", r.as_raw_fd())),
        "{e}"
    );
    drop(tap);
    cfg.net = net(999_999, "02:00:00:aa:bb:cc");
    let e = cfg.validate().unwrap_err().to_string();
    assert!(e.contains("is not open"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn the_nic_round_trips_through_json_and_defaults_to_none() {
    let mut cfg = VmConfig::new("/k");
    cfg.net = Some(NetConfig { tap_fd: 3, mac: "02:00:00:00:00:01".into() });
    let json = cfg.to_json();
    assert!(json.contains("\"tap_fd\": 3"), "{json}");
    assert_eq!(serde_json::from_str::<VmConfig>(&json).unwrap(), cfg);
    let old: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
    assert_eq!(old.net, None);
    let bad = r#"{"kernel": "/k", "net": {"tap_fd": 3, "mac": "02:00:00:00:00:01", "x": 1}}"#;
    assert!(serde_json::from_str::<VmConfig>(bad).is_err());
}

#[test]
fn limits_alone_need_no_files_and_name_their_field() {
    let mut cfg = VmConfig::new("/nonexistent/vmlinux");
    cfg.validate_limits().unwrap();
    cfg.mem_mib = MAX_MEM_MIB + 1;
    let e = cfg.validate_limits().unwrap_err();
    assert_eq!(e.field(), "mem_mib");
    assert!(matches!(
        e,
        ConfigError::MemoryTooLarge { got, max } if got == max + 1 && max == MAX_MEM_MIB
    ));
}
