//! cgroup v2 for containers: enabling controllers, reading stats and OOM
//! events, updating limits, killing every process of a container.
//!
//! Each container lives in `<root>/carapace/<id>` (root: /sys/fs/cgroup,
//! mounted by the agent). libcontainer creates the cgroup and applies the
//! initial limits; this module does the rest on the files directly.

use std::path::{Path, PathBuf};

use carapace_agent_client::pb;

use super::error::ContainerError;

pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The parent cgroup of all containers, relative to the root.
pub const PARENT: &str = "carapace";
/// Controllers delegated to containers when the kernel has them.
const WANTED: &[&str] = &["cpu", "cpuset", "io", "memory", "pids"];

/// The cgroup path of a container as OCI `cgroupsPath` (relative to root).
pub fn spec_path(id: &str) -> String {
    format!("/{PARENT}/{id}")
}

/// The directory of a container's cgroup.
pub fn dir(root: &Path, id: &str) -> PathBuf {
    root.join(PARENT).join(id)
}

/// Writes `+ctrl` for every wanted controller `cgroup.controllers` lists
/// into the root's and the parent's `cgroup.subtree_control`. Returns the
/// controllers enabled.
pub fn enable_controllers(root: &Path) -> Result<Vec<String>, ContainerError> {
    let avail = std::fs::read_to_string(root.join("cgroup.controllers")).map_err(|e| {
        ContainerError::io(format!("read {}/cgroup.controllers", root.display()), e)
    })?;
    let enable: Vec<String> =
        avail.split_whitespace().filter(|c| WANTED.contains(c)).map(str::to_owned).collect();
    let parent = root.join(PARENT);
    std::fs::create_dir_all(&parent)
        .map_err(|e| ContainerError::io(format!("mkdir {}", parent.display()), e))?;
    for dir in [root, parent.as_path()] {
        let f = dir.join("cgroup.subtree_control");
        for c in &enable {
            // One write per controller: one missing in a child must not
            // stop the others.
            if let Err(e) = std::fs::write(&f, format!("+{c}")) {
                tracing::warn!(
                    controller = %c,
                    file = %f.display(),
                    error = %e,
                    "cannot enable cgroup controller"
                );
            }
        }
    }
    Ok(enable)
}

fn read_u64(dir: &Path, file: &str) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join(file)).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(0);
    }
    s.parse().ok()
}

/// `key value` lines (cpu.stat, memory.stat, memory.events).
fn read_keyed(dir: &Path, file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(dir.join(file)).ok()?;
    s.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// How many times the kernel OOM-killed a process of this cgroup.
pub fn oom_kills(dir: &Path) -> u64 {
    read_keyed(dir, "memory.events", "oom_kill").unwrap_or(0)
}

/// Stats from the cgroup files; missing files read as zero.
pub fn stats(dir: &Path) -> Result<pb::ContainerStatsResponse, ContainerError> {
    if !dir.is_dir() {
        return Err(ContainerError::State(format!("no cgroup at {}", dir.display())));
    }
    let usage = read_u64(dir, "memory.current").unwrap_or(0);
    let inactive_file = read_keyed(dir, "memory.stat", "inactive_file").unwrap_or(0);
    Ok(pb::ContainerStatsResponse {
        timestamp_unix_ms: super::common::now_unix_ms(),
        cpu_usage_usec: read_keyed(dir, "cpu.stat", "usage_usec").unwrap_or(0),
        cpu_user_usec: read_keyed(dir, "cpu.stat", "user_usec").unwrap_or(0),
        cpu_system_usec: read_keyed(dir, "cpu.stat", "system_usec").unwrap_or(0),
        memory_usage_bytes: usage,
        memory_working_set_bytes: usage.saturating_sub(inactive_file),
        memory_anon_bytes: read_keyed(dir, "memory.stat", "anon").unwrap_or(0),
        memory_file_bytes: read_keyed(dir, "memory.stat", "file").unwrap_or(0),
        memory_limit_bytes: read_u64(dir, "memory.max").unwrap_or(0),
        oom_kills: oom_kills(dir),
        pids_current: read_u64(dir, "pids.current").unwrap_or(0),
    })
}

/// The file writes that apply `r` (zero fields are left unchanged).
pub fn update_writes(r: &pb::Resources) -> Vec<(&'static str, String)> {
    let mut w = Vec::new();
    if r.cpu_quota_us > 0 || r.cpu_period_us > 0 {
        let period = if r.cpu_period_us > 0 { r.cpu_period_us } else { 100_000 };
        let quota = if r.cpu_quota_us > 0 { r.cpu_quota_us.to_string() } else { "max".to_owned() };
        w.push(("cpu.max", format!("{quota} {period}")));
    }
    if r.cpu_weight > 0 {
        w.push(("cpu.weight", r.cpu_weight.to_string()));
    }
    if r.memory_limit_bytes > 0 {
        w.push(("memory.max", r.memory_limit_bytes.to_string()));
    }
    if r.pids_limit > 0 {
        w.push(("pids.max", r.pids_limit.to_string()));
    }
    w
}

/// Applies new limits to a container's cgroup.
pub fn update(dir: &Path, r: &pb::Resources) -> Result<(), ContainerError> {
    for (file, value) in update_writes(r) {
        let p = dir.join(file);
        std::fs::write(&p, &value)
            .map_err(|e| ContainerError::io(format!("write {value:?} to {}", p.display()), e))?;
    }
    Ok(())
}

/// SIGKILLs every process of the cgroup (`cgroup.kill`, Linux 5.14+).
pub fn kill_all(dir: &Path) -> Result<(), ContainerError> {
    let p = dir.join("cgroup.kill");
    std::fs::write(&p, "1").map_err(|e| ContainerError::io(format!("write {}", p.display()), e))
}

/// Whether any process is left in the cgroup.
pub fn populated(dir: &Path) -> bool {
    read_keyed(dir, "cgroup.events", "populated").unwrap_or(0) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stats_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
            .unwrap();
        std::fs::write(d.join("memory.current"), "4096000\n").unwrap();
        std::fs::write(d.join("memory.stat"), "anon 3000000\nfile 1000000\ninactive_file 96000\n")
            .unwrap();
        std::fs::write(d.join("memory.max"), "max\n").unwrap();
        std::fs::write(d.join("memory.events"), "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
            .unwrap();
        std::fs::write(d.join("pids.current"), "3\n").unwrap();
        let s = stats(d).unwrap();
        assert_eq!(s.cpu_usage_usec, 1500);
        assert_eq!(s.cpu_system_usec, 500);
        assert_eq!(s.memory_usage_bytes, 4_096_000);
        assert_eq!(s.memory_working_set_bytes, 4_000_000);
        assert_eq!(s.memory_anon_bytes, 3_000_000);
        assert_eq!(s.memory_limit_bytes, 0);
        assert_eq!(s.oom_kills, 1);
        assert_eq!(s.pids_current, 3);
        assert!(stats(&d.join("missing")).is_err());
    }

    #[test]
    fn update_files() {
        let r = pb::Resources {
            cpu_quota_us: 50_000,
            memory_limit_bytes: 64 << 20,
            ..Default::default()
        };
        assert_eq!(
            update_writes(&r),
            vec![("cpu.max", "50000 100000".to_owned()), ("memory.max", (64u64 << 20).to_string())]
        );
        let t = tempfile::tempdir().unwrap();
        update(t.path(), &r).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("cpu.max")).unwrap(), "50000 100000");
        assert!(update_writes(&pb::Resources::default()).is_empty());
    }

    #[test]
    fn enables_wanted_controllers() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(
            t.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma\n",
        )
        .unwrap();
        let got = enable_controllers(t.path()).unwrap();
        assert_eq!(got, vec!["cpuset", "cpu", "io", "memory", "pids"]);
        assert!(t.path().join(PARENT).is_dir());
        assert_eq!(spec_path("x"), "/carapace/x");
    }
}
