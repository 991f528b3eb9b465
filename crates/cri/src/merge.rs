//! How a container's process is assembled from its image config and the CRI ContainerConfig,
//! with Kubernetes' rules (the same containerd's CRI plugin applies).

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use carapace_image::{ImageUser, RuntimeConfig};
use k8s_cri::v1 as cri;

/// The most of /etc/passwd or /etc/group read from an image (the image is not trusted).
const MAX_ACCOUNT_FILE: u64 = 1 << 20;

/// argv by Kubernetes' rules: `command` replaces the image's ENTRYPOINT (and drops its CMD);
/// `args` replaces CMD. Empty result: an error naming the image.
pub fn command(
    image: &RuntimeConfig,
    command: &[String],
    args: &[String],
    image_name: &str,
) -> Result<Vec<String>, String> {
    let mut argv: Vec<String> = if command.is_empty() {
        let mut v = image.entrypoint.clone();
        if args.is_empty() {
            v.extend(image.cmd.iter().cloned());
        }
        v
    } else {
        command.to_vec()
    };
    argv.extend(args.iter().cloned());
    if argv.is_empty() {
        return Err(format!(
            "no command for the container: image {image_name:?} has no ENTRYPOINT or CMD and the \
             container config sets neither command nor args"
        ));
    }
    Ok(argv)
}

/// The image's environment with the config's entries added; a config key replaces the image's
/// entry of the same key in place.
pub fn env(image_env: &[String], envs: &[cri::KeyValue]) -> Vec<String> {
    let mut out: Vec<String> = image_env.to_vec();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, e) in out.iter().enumerate() {
        let key = e.split('=').next().unwrap_or("").to_string();
        index.insert(key, i);
    }
    for kv in envs {
        let entry = format!("{}={}", kv.key, kv.value);
        match index.get(&kv.key) {
            Some(&i) => out[i] = entry,
            None => {
                index.insert(kv.key.clone(), out.len());
                out.push(entry);
            }
        }
    }
    out
}

/// The working directory: the config's, else the image's, else "/".
pub fn working_dir(image: &RuntimeConfig, config_dir: &str) -> String {
    if !config_dir.is_empty() {
        config_dir.to_string()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone()
    } else {
        "/".to_string()
    }
}

/// uid, gid and supplementary groups of the container's process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// The account files of an image's rootfs (text, possibly empty).
#[derive(Debug, Clone, Default)]
pub struct Accounts {
    pub passwd: String,
    pub group: String,
}

impl Accounts {
    /// Reads `<rootfs>/etc/passwd` and `<rootfs>/etc/group` where `rootfs` is
    /// `<shared>/<cid>/rootfs`: the shared dir (its grandparent, which the guest cannot
    /// replace) is the trusted root and the rest is resolved beneath it (see
    /// [`Accounts::read_beneath`]).
    pub fn read(rootfs: &Path) -> Accounts {
        let root = rootfs.ancestors().nth(2).unwrap_or(Path::new(""));
        let rel = rootfs.strip_prefix(root).unwrap_or(rootfs);
        let root = if root.as_os_str().is_empty() { Path::new(".") } else { root };
        match std::fs::File::open(root) {
            Ok(dir) => Accounts::read_beneath(dir.as_fd(), rel),
            Err(e) => {
                let dir = root.display();
                tracing::warn!(%dir, error = %e, "cannot open the rootfs's parent");
                Accounts::default()
            }
        }
    }

    /// Reads `etc/passwd` and `etc/group` of the rootfs at `rootfs` beneath the directory
    /// `root` (for a staged container: its dir and `rootfs`), at most 1 MiB each, only if they
    /// are regular files reached without any symlink (the image and, once the rootfs is in
    /// the share, the guest control every name there); a FIFO or device is never opened for
    /// reading. Anything else reads as an empty file.
    pub fn read_beneath(root: BorrowedFd<'_>, rootfs: &Path) -> Accounts {
        let read = |name: &str| -> String {
            let rel = rootfs.join("etc").join(name);
            match carapace_podfs::read_file_beneath(root, &rel, MAX_ACCOUNT_FILE) {
                Ok(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
                Ok(None) => String::new(),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring the image's /etc/{name}");
                    String::new()
                }
            }
        };
        Accounts { passwd: read("passwd"), group: read("group") }
    }

    /// (uid, primary gid) of a user named `name` in passwd.
    pub fn user_by_name(&self, name: &str) -> Option<(u32, u32)> {
        self.passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    }

    /// The primary gid of `uid` in passwd.
    pub fn gid_of_uid(&self, uid: u32) -> Option<u32> {
        self.passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 4 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok())?
        })
    }

    /// The gid of a group named `name` (or a numeric gid).
    pub fn group(&self, name: &str) -> Option<u32> {
        if let Ok(gid) = name.parse() {
            return Some(gid);
        }
        self.group.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
        })
    }
}

fn id_u32(what: &str, v: i64) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} {v} is out of range"))
}

/// The user: the security context's run_as_user / run_as_username (with run_as_group), else the
/// image's USER ("name", "uid", "name:group", "uid:gid"), else root; the primary gid comes from
/// the rootfs's passwd when not given; supplemental groups from the security context.
pub fn user(
    image: &RuntimeConfig,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    accounts: &Accounts,
) -> Result<User, String> {
    let unknown = |name: &str| {
        format!("user {name:?} is not in the image's /etc/passwd: give a numeric uid instead")
    };
    let mut gid_given = None;
    let (uid, mut gid) = if let Some(u) = sc.and_then(|s| s.run_as_user.as_ref()) {
        let uid = id_u32("run_as_user", u.value)?;
        (uid, accounts.gid_of_uid(uid).unwrap_or(0))
    } else if let Some(name) = sc.map(|s| s.run_as_username.as_str()).filter(|n| !n.is_empty()) {
        accounts.user_by_name(name).ok_or_else(|| unknown(name))?
    } else {
        let group = image.user.split_once(':').map(|(_, g)| g).filter(|g| !g.is_empty());
        if let Some(g) = group {
            gid_given = Some(accounts.group(g).ok_or_else(|| {
                format!("group {g:?} of the image's USER is not in its /etc/group")
            })?);
        }
        match image.image_user() {
            ImageUser::None => (0, 0),
            ImageUser::Uid(uid) => {
                let uid = id_u32("image USER uid", uid)?;
                (uid, accounts.gid_of_uid(uid).unwrap_or(0))
            }
            ImageUser::Name(name) => accounts.user_by_name(&name).ok_or_else(|| unknown(&name))?,
        }
    };
    if let Some(g) = gid_given {
        gid = g;
    }
    if let Some(g) = sc.and_then(|s| s.run_as_group.as_ref()) {
        gid = id_u32("run_as_group", g.value)?;
    }
    let mut additional_gids = Vec::new();
    for g in sc.map(|s| s.supplemental_groups.as_slice()).unwrap_or(&[]) {
        let g = id_u32("supplemental group", *g)?;
        if !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }
    Ok(User { uid, gid, additional_gids })
}

/// cgroup v2 cpu.weight for CRI's cpu_shares (cgroup v1 shares), as runc converts it.
pub fn cpu_weight(shares: i64) -> u64 {
    if shares <= 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144) as u64;
    1 + ((shares - 2) * 9999) / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn img(entrypoint: &[&str], cmd: &[&str]) -> RuntimeConfig {
        RuntimeConfig { entrypoint: s(entrypoint), cmd: s(cmd), ..Default::default() }
    }

    #[test]
    fn kubernetes_command_rules() {
        let i = img(&["/ep"], &["c1", "c2"]);
        assert_eq!(command(&i, &[], &[], "x").unwrap(), s(&["/ep", "c1", "c2"]));
        assert_eq!(command(&i, &[], &s(&["a"]), "x").unwrap(), s(&["/ep", "a"]));
        assert_eq!(command(&i, &s(&["sh"]), &[], "x").unwrap(), s(&["sh"]));
        assert_eq!(
            command(&i, &s(&["sh", "-c"]), &s(&["echo"]), "x").unwrap(),
            s(&["sh", "-c", "echo"])
        );
        let only_cmd = img(&[], &["sh"]);
        assert_eq!(command(&only_cmd, &[], &[], "x").unwrap(), s(&["sh"]));
        assert_eq!(command(&only_cmd, &[], &s(&["ls"]), "x").unwrap(), s(&["ls"]));
        let err = command(&img(&[], &[]), &[], &[], "busybox").unwrap_err();
        assert!(err.contains("busybox"), "{err}");
    }

    #[test]
    fn env_config_overrides_image_in_place() {
        let kv = |k: &str, v: &str| cri::KeyValue { key: k.into(), value: v.into() };
        let out = env(&s(&["PATH=/bin", "A=1"]), &[kv("A", "2"), kv("B", "x=y"), kv("B", "3")]);
        assert_eq!(out, s(&["PATH=/bin", "A=2", "B=3"]));
    }

    #[test]
    fn working_dir_order() {
        let mut i = RuntimeConfig::default();
        assert_eq!(working_dir(&i, ""), "/");
        i.working_dir = "/app".into();
        assert_eq!(working_dir(&i, ""), "/app");
        assert_eq!(working_dir(&i, "/w"), "/w");
    }

    fn accounts() -> Accounts {
        Accounts {
            passwd: "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34::/var/www:/bin/false\nbad:x:zz\n"
                .into(),
            group: "root:x:0:\nstaff:x:50:\n".into(),
        }
    }

    #[test]
    fn users_from_image_and_security_context() {
        let a = accounts();
        let u = |user: &str| RuntimeConfig { user: user.into(), ..Default::default() };
        assert_eq!(user(&u(""), None, &a).unwrap(), User::default());
        assert_eq!(
            user(&u("www"), None, &a).unwrap(),
            User { uid: 33, gid: 34, ..Default::default() }
        );
        assert_eq!(
            user(&u("33"), None, &a).unwrap(),
            User { uid: 33, gid: 34, ..Default::default() }
        );
        assert_eq!(
            user(&u("1000"), None, &a).unwrap(),
            User { uid: 1000, gid: 0, ..Default::default() }
        );
        assert_eq!(user(&u("www:staff"), None, &a).unwrap().gid, 50);
        assert_eq!(user(&u("www:7"), None, &a).unwrap().gid, 7);
        assert!(user(&u("nobody"), None, &a).unwrap_err().contains("nobody"));
        assert!(user(&u("bad"), None, &a).is_err());
        assert!(user(&u("www:nogroup"), None, &a).is_err());
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: 33 }),
            run_as_group: Some(cri::Int64Value { value: 99 }),
            supplemental_groups: vec![5, 6, 5],
            ..Default::default()
        };
        assert_eq!(
            user(&u("root"), Some(&sc), &a).unwrap(),
            User { uid: 33, gid: 99, additional_gids: vec![5, 6] }
        );
        let sc = cri::LinuxContainerSecurityContext {
            run_as_username: "www".into(),
            ..Default::default()
        };
        assert_eq!(user(&u(""), Some(&sc), &a).unwrap().uid, 33);
        let sc = cri::LinuxContainerSecurityContext {
            run_as_user: Some(cri::Int64Value { value: -1 }),
            ..Default::default()
        };
        assert!(user(&u(""), Some(&sc), &a).is_err());
    }

    #[test]
    fn account_files_are_not_read_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("etc")).unwrap();
        std::fs::write(d.path().join("secret"), "evil:x:1:1::/:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(d.path().join("secret"), d.path().join("etc/passwd")).unwrap();
        std::fs::write(d.path().join("etc/group"), "g:x:9:\n").unwrap();
        let a = Accounts::read(d.path());
        assert!(a.passwd.is_empty());
        assert_eq!(a.group("g"), Some(9));
    }

    #[test]
    fn shares_to_weight() {
        assert_eq!(cpu_weight(0), 0);
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
    }

    /// The old code checked only the last two names: a rootfs (or any parent) swapped for a
    /// symlink to a host directory had the daemon read host account files.
    #[test]
    fn account_files_are_not_read_through_a_symlinked_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host");
        std::fs::create_dir_all(host.join("etc")).unwrap();
        std::fs::write(host.join("etc/passwd"), "evil:x:1:1::/:/bin/sh\n").unwrap();
        std::fs::create_dir_all(d.path().join("shared/c")).unwrap();
        std::os::unix::fs::symlink(&host, d.path().join("shared/c/rootfs")).unwrap();
        let a = Accounts::read(&d.path().join("shared/c/rootfs"));
        assert!(a.passwd.is_empty(), "read {:?}", a.passwd);
        // A FIFO in place of passwd does not block the daemon.
        let etc = d.path().join("shared/c2/rootfs/etc");
        std::fs::create_dir_all(&etc).unwrap();
        let fifo = std::ffi::CString::new(etc.join("passwd").to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::write(etc.join("group"), "g:x:9:\n").unwrap();
        let a = Accounts::read(&d.path().join("shared/c2/rootfs"));
        assert!(a.passwd.is_empty());
        assert_eq!(a.group("g"), Some(9));
    }
}
