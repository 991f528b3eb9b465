//! Tests of CreateContainer's parse and build steps (create.rs).

use super::*;
use crate::store::tests::sample as pod;

#[test]
fn mounts_are_validated() {
    let dir = Path::new("/s/c");
    let m = |c: &str, h: &str| cri::Mount {
        container_path: c.into(),
        host_path: h.into(),
        ..Default::default()
    };
    let r = Volume::parse(2, &m("/data", "/srv")).unwrap().record(2, "cid", dir);
    assert_eq!(r.shared_path, std::path::PathBuf::from("/s/c/mounts/2"));
    assert_eq!(r.guest_path, "/run/carapace/shared/cid/mounts/2");
    assert!(matches!(Volume::parse(0, &m("data", "/srv")), Err(CriError::InvalidArgument(_))));
    assert!(matches!(Volume::parse(0, &m("/data", "srv")), Err(CriError::InvalidArgument(_))));
}

#[test]
fn names_are_checked() {
    let md = |name: &str| cri::ContainerMetadata { name: name.into(), attempt: 2 };
    let n = ContainerName::parse(Some(&md("web"))).unwrap();
    assert_eq!((n.name.as_str(), n.attempt), ("web", 2));
    for bad in ["", "a/b", "a\nb", &"x".repeat(254)] {
        assert!(matches!(ContainerName::parse(Some(&md(bad))), Err(CriError::InvalidArgument(_))));
    }
    assert!(ContainerName::parse(None).is_err());
}

#[test]
fn the_agent_request_is_built_from_the_spec_alone() {
    let sb = pod(&"b".repeat(64), "web");
    let name = ContainerName { name: "c".into(), attempt: 0 };
    let config = cri::ContainerConfig {
        image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
        log_path: "c/0.log".into(),
        tty: true,
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                readonly_rootfs: true,
                namespace_options: Some(cri::NamespaceOption {
                    pid: cri::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let spec = ContainerSpec::parse(config, name.clone(), &sb).unwrap();
    assert_eq!(spec.log_path, "/var/log/pods/x/c/0.log");
    let mut rec = crate::store::tests::container(&"a".repeat(64), &sb.id, "c");
    rec.process.args = vec!["sh".into()];
    let req = agent_request(&rec, &spec, &sb, Vec::new());
    assert_eq!(req.rootfs_path, format!("/run/carapace/shared/{}/rootfs", rec.id));
    assert!(req.rootfs_readonly);
    assert!(req.process.as_ref().unwrap().tty);
    assert_eq!(req.namespaces.unwrap().pid, pb::NamespaceMode::Container as i32);
    assert_eq!(req.hostname, "web");
    assert!(req.pod_sysctls.is_empty());
    let mut sb2 = sb.clone();
    sb2.security.sysctls.insert("kernel.shm_rmid_forced".into(), "1".into());
    let req = agent_request(&rec, &spec, &sb2, Vec::new());
    assert_eq!(req.pod_sysctls.get("kernel.shm_rmid_forced").map(String::as_str), Some("1"));
    // Devices and a missing image are refused while parsing.
    let devices = cri::ContainerConfig {
        image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
        devices: vec![cri::Device::default()],
        ..Default::default()
    };
    assert!(matches!(
        ContainerSpec::parse(devices, name.clone(), &sb),
        Err(CriError::InvalidArgument(_))
    ));
    assert!(matches!(
        ContainerSpec::parse(cri::ContainerConfig::default(), name, &sb),
        Err(CriError::InvalidArgument(_))
    ));
}

fn parse_err(f: impl FnOnce(&mut cri::ContainerConfig)) -> String {
    let sb = pod(&"b".repeat(64), "web");
    let mut config = cri::ContainerConfig {
        image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
        log_path: "c/0.log".into(),
        ..Default::default()
    };
    f(&mut config);
    match ContainerSpec::parse(config, ContainerName { name: "c".into(), attempt: 0 }, &sb) {
        Err(CriError::InvalidArgument(m)) => m,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn log_paths_stay_in_the_pod_log_directory() {
    for bad in ["/etc/cron.d/evil", "../../../etc/passwd", "c/../../x"] {
        assert!(parse_err(|c| c.log_path = bad.into()).contains("log_path"), "{bad}");
    }
}

#[test]
fn volume_paths_are_normalised_and_never_climb() {
    let r = Volume::parse(
        0,
        &cri::Mount {
            container_path: "/data//x/".into(),
            host_path: "/srv/./vol".into(),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!((r.container_path.as_str(), r.host_path.as_str()), ("/data/x", "/srv/vol"));
    let m = cri::Mount {
        container_path: "/data".into(),
        host_path: "/srv/../etc".into(),
        ..Default::default()
    };
    assert!(parse_err(|c| c.mounts = vec![m]).contains("mounts[0].host_path"));
}

#[test]
fn run_as_group_needs_a_user() {
    let sc = |user: Option<i64>, name: &str| cri::LinuxContainerSecurityContext {
        run_as_group: Some(cri::Int64Value { value: 10 }),
        run_as_user: user.map(|value| cri::Int64Value { value }),
        run_as_username: name.into(),
        ..Default::default()
    };
    let linux =
        |s| Some(cri::LinuxContainerConfig { security_context: Some(s), ..Default::default() });
    assert!(parse_err(|c| c.linux = linux(sc(None, ""))).contains("run_as_group"));
    let sb = pod(&"b".repeat(64), "web");
    for ok in [sc(Some(0), ""), sc(None, "www")] {
        let config = cri::ContainerConfig {
            image: Some(cri::ImageSpec { image: "busybox".into(), ..Default::default() }),
            linux: linux(ok),
            ..Default::default()
        };
        ContainerSpec::parse(config, ContainerName { name: "c".into(), attempt: 0 }, &sb).unwrap();
    }
}
