//! Finding the pod network's config the way containerd's CRI plugin does: the first valid
//! `.conflist`, `.conf` or `.json` file in the config dir by file name. The dir is re-scanned
//! on every check (names, sizes, mtimes, inodes); files are re-read only when that changed, so
//! a config written or edited later is picked up without a restart.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::CniError;
use super::netconf::NetworkConfigList;

/// The largest network config file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// At most this many candidate files are looked at (a dir flooded with files stays cheap).
const MAX_CANDIDATES: usize = 1024;

/// What identifies the state of the config dir: per candidate file, its name, size, mtime and
/// inode (an edit in place, a rename over it and a new file all change it).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fingerprint {
    NoDir(String),
    Files(Vec<(String, u64, i64, i64, u64)>),
}

/// The outcome of a scan: the network to use, or why there is none (NetworkReady's message).
pub type Loaded = Result<Arc<NetworkConfigList>, String>;

/// The config dir and what was last found there.
#[derive(Debug)]
pub struct ConfLoader {
    dir: PathBuf,
    last: Option<(Fingerprint, Loaded)>,
}

fn is_candidate(name: &str) -> bool {
    [".conflist", ".conf", ".json"].iter().any(|ext| name.len() > ext.len() && name.ends_with(ext))
}

/// Reads a regular file of at most `max` bytes (a FIFO or device put there is not opened for
/// a blocking read; a bigger file is an error, not truncated).
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > max {
        return Err(format!("{} bytes is larger than the {max}-byte limit", meta.len()));
    }
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| format!("cannot read: {e}"))?;
    if buf.len() as u64 > max {
        return Err(format!("larger than the {max}-byte limit"));
    }
    Ok(buf)
}

impl ConfLoader {
    pub fn new(dir: PathBuf) -> ConfLoader {
        ConfLoader { dir, last: None }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn fingerprint(&self) -> Fingerprint {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => return Fingerprint::NoDir(e.to_string()),
        };
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else { continue };
            if !is_candidate(&name) {
                continue;
            }
            // Follows symlinks, as libcni does (the dir is the administrator's).
            let Ok(meta) = fs::metadata(entry.path()) else { continue };
            if !meta.is_file() {
                continue;
            }
            files.push((name, meta.len(), meta.mtime(), meta.mtime_nsec(), meta.ino()));
        }
        files.sort();
        files.truncate(MAX_CANDIDATES);
        Fingerprint::Files(files)
    }

    fn scan(&self, fp: &Fingerprint) -> Loaded {
        let dir = self.dir.display();
        let files = match fp {
            Fingerprint::NoDir(e) => {
                return Err(format!("no network config found in {dir}: cannot read the dir: {e}"))
            }
            Fingerprint::Files(f) if f.is_empty() => {
                return Err(format!(
                    "no network config found in {dir} (no .conflist, .conf or .json file)"
                ))
            }
            Fingerprint::Files(f) => f,
        };
        let mut problems = Vec::new();
        for (name, ..) in files {
            let path = self.dir.join(name);
            let parsed = read_bounded(&path, MAX_CONFIG_BYTES)
                .map_err(|e| format!("{}: {e}", path.display()))
                .and_then(|bytes| {
                    let src = path.display().to_string();
                    let r = if name.ends_with(".conflist") {
                        NetworkConfigList::from_conflist(&bytes, &src)
                    } else {
                        NetworkConfigList::from_conf(&bytes, &src)
                    };
                    r.map_err(|e| match e {
                        CniError::InvalidConfig { source_name, message } => {
                            format!("{source_name}: {message}")
                        }
                        other => other.to_string(),
                    })
                });
            match parsed {
                Ok(list) => {
                    for p in &problems {
                        tracing::warn!(problem = %p, "CNI: skipped an invalid network config");
                    }
                    return Ok(Arc::new(list));
                }
                Err(p) => problems.push(p),
            }
        }
        Err(format!("no valid network config found in {dir}: {}", problems.join("; ")))
    }

    /// The network to use now (re-scanning the dir; re-reading files only when it changed).
    pub fn current(&mut self) -> Loaded {
        let fp = self.fingerprint();
        if let Some((last_fp, loaded)) = &self.last {
            if *last_fp == fp {
                return loaded.clone();
            }
        }
        let loaded = self.scan(&fp);
        match &loaded {
            Ok(l) => {
                tracing::info!(
                    dir = %self.dir.display(),
                    network = %l.name,
                    "CNI network config loaded"
                )
            }
            Err(e) => tracing::info!(dir = %self.dir.display(), "CNI not ready: {e}"),
        }
        self.last = Some((fp, loaded.clone()));
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(name: &str) -> String {
        format!(r#"{{"cniVersion":"1.0.0","name":"{name}","plugins":[{{"type":"bridge"}}]}}"#)
    }

    #[test]
    fn a_missing_dir_is_not_ready_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let mut l = ConfLoader::new(d.path().join("none"));
        let e = l.current().unwrap_err();
        assert!(e.contains("no network config found") && e.contains("none"), "{e}");
    }

    #[test]
    fn an_empty_dir_is_not_ready_and_other_files_do_not_count() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("README"), "x").unwrap();
        fs::write(d.path().join(".conf"), "x").unwrap();
        let e = ConfLoader::new(d.path().into()).current().unwrap_err();
        assert!(e.contains("no .conflist"), "{e}");
    }

    #[test]
    fn the_first_valid_file_by_name_wins_and_invalid_ones_are_named() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("10-bad.conflist"), "{ nope").unwrap();
        fs::write(d.path().join("20-good.conflist"), list("good")).unwrap();
        fs::write(d.path().join("30-later.conflist"), list("later")).unwrap();
        let mut l = ConfLoader::new(d.path().into());
        assert_eq!(l.current().unwrap().name, "good");
        fs::remove_file(d.path().join("20-good.conflist")).unwrap();
        fs::remove_file(d.path().join("30-later.conflist")).unwrap();
        let e = l.current().unwrap_err();
        assert!(e.contains("no valid network config") && e.contains("10-bad.conflist"), "{e}");
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn a_single_plugin_conf_is_wrapped() {
        let d = tempfile::tempdir().unwrap();
        let conf = r#"{"cniVersion":"0.4.0","name":"single","type":"bridge"}"#;
        fs::write(d.path().join("99-one.conf"), conf).unwrap();
        let got = ConfLoader::new(d.path().into()).current().unwrap();
        assert_eq!((got.name.as_str(), got.plugins.len()), ("single", 1));
        assert!(got.text.contains("\"plugins\""));
    }

    #[test]
    fn changes_are_picked_up_without_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let mut l = ConfLoader::new(d.path().into());
        assert!(l.current().is_err());
        let f = d.path().join("10-net.conflist");
        fs::write(&f, list("first")).unwrap();
        assert_eq!(l.current().unwrap().name, "first");
        // An edit in place with the same length: the mtime (ns) or inode tells.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&f, list("secnd")).unwrap();
        assert_eq!(l.current().unwrap().name, "secnd");
        fs::write(
            d.path().join("05-new.conf"),
            r#"{"cniVersion":"1.0.0","name":"new","type":"x"}"#,
        )
        .unwrap();
        assert_eq!(l.current().unwrap().name, "new");
        fs::write(&f, "garbage").unwrap();
        assert_eq!(l.current().unwrap().name, "new");
    }

    #[test]
    fn oversized_files_and_fifos_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let big = d.path().join("a.conflist");
        fs::write(&big, vec![b' '; (MAX_CONFIG_BYTES + 1) as usize]).unwrap();
        let e = ConfLoader::new(d.path().into()).current().unwrap_err();
        assert!(e.contains("limit"), "{e}");
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_bounded(&fifo, 10).unwrap_err().contains("not a regular file"));
    }
}
