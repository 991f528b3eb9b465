//! Running one CNI plugin binary as libcni does: looked up by `type` in the plugin dirs, the
//! `CNI_*` environment, the network config on stdin, the result (or a CNI error object) on
//! stdout. The plugin is untrusted: its stdout is read up to a bound, it runs in a process group
//! of its own that is killed at the deadline, and it cannot keep the daemon waiting on a pipe.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::error::{CniError, PluginError};
use super::netconf::valid_plugin_type;

/// The most a plugin may write to stdout.
pub const MAX_STDOUT: u64 = 1 << 20;
/// How much of a plugin's stderr is kept for an error message.
const MAX_STDERR: u64 = 64 << 10;
/// How long a plugin may run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long pipes may stay open after the plugin exited (a child it left behind holds them).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// What a plugin is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

/// The `CNI_*` variables of one call.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub command: CniCommand,
    pub container_id: &'a str,
    /// None: the netns is gone (DEL only); CNI_NETNS is then empty, as libcni leaves it.
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
}

/// Finds and runs plugins from a list of directories.
#[derive(Debug, Clone)]
pub struct PluginRunner {
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    details: String,
}

fn read_bounded(mut r: impl Read, max: u64) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let _ = (&mut r).take(max + 1).read_to_end(&mut buf);
    let over = buf.len() as u64 > max;
    buf.truncate(max as usize);
    (buf, over)
}

/// How much of a plugin's error `msg` and `details` is kept (they end up in a gRPC status).
const MAX_ERROR_TEXT: usize = 4096;

/// `s` cut to at most `max` bytes (at a character boundary), marked when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let end = (0..=max).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}...", &s[..end])
}

fn text_tail(bytes: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(max);
    let start = (start..=s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
    s[start..].replace('\n', " | ")
}

impl PluginRunner {
    pub fn new(bin_dirs: Vec<PathBuf>) -> PluginRunner {
        PluginRunner { bin_dirs, timeout: DEFAULT_TIMEOUT }
    }

    fn dirs_text(&self) -> String {
        let d: Vec<String> = self.bin_dirs.iter().map(|d| d.display().to_string()).collect();
        d.join(":")
    }

    /// The executable for `plugin_type`, from the first dir that has it.
    pub fn find(&self, plugin_type: &str) -> Result<PathBuf, CniError> {
        let not_found =
            || CniError::PluginNotFound { plugin: plugin_type.into(), dirs: self.dirs_text() };
        if !valid_plugin_type(plugin_type) {
            return Err(not_found());
        }
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| {
                std::fs::metadata(p)
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .ok_or_else(not_found)
    }

    /// Runs `plugin_type` with `inv` and `stdin`; its stdout when it succeeds.
    pub fn run(
        &self,
        plugin_type: &str,
        inv: &Invocation<'_>,
        stdin: &[u8],
    ) -> Result<Vec<u8>, CniError> {
        let bin = self.find(plugin_type)?;
        let command = inv.command.as_str();
        let plugin = plugin_type.to_string();
        let mut cmd = Command::new(&bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CNI_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", inv.container_id)
            .env("CNI_NETNS", inv.netns.map(|p| p.as_os_str()).unwrap_or_default())
            .env("CNI_IFNAME", inv.ifname)
            .env("CNI_ARGS", inv.args)
            .env("CNI_PATH", self.dirs_text())
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child =
            cmd.spawn().map_err(|source| CniError::Spawn { plugin: plugin.clone(), source })?;
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let kill_group = || {
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        };

        let (tx, rx) = mpsc::channel::<(bool, Vec<u8>, bool)>();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let (b, over) = read_bounded(out, MAX_STDOUT);
                let _ = tx.send((true, b, over));
            });
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let (b, over) = read_bounded(err, MAX_STDERR);
                let _ = tx.send((false, b, over));
            });
        }
        drop(tx);
        if let Some(mut input) = child.stdin.take() {
            let data = stdin.to_vec();
            // A plugin that never reads its stdin must not block us: write from a thread.
            std::thread::spawn(move || {
                let _ = input.write_all(&data);
            });
        }

        let deadline = Instant::now() + self.timeout;
        let status: ExitStatus = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() >= deadline => {
                    kill_group();
                    let _ = child.wait();
                    return Err(CniError::Timeout {
                        plugin,
                        command,
                        secs: self.timeout.as_secs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(source) => {
                    kill_group();
                    return Err(CniError::Spawn { plugin, source });
                }
            }
        };
        let (mut stdout, mut stderr, mut stdout_over) = (Vec::new(), Vec::new(), false);
        let grace = Instant::now() + PIPE_GRACE;
        for _ in 0..2 {
            match rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
                Ok((true, b, over)) => (stdout, stdout_over) = (b, over),
                Ok((false, b, _)) => stderr = b,
                Err(_) => {
                    // Something the plugin started still holds its pipes: end its group.
                    kill_group();
                    break;
                }
            }
        }
        if stdout_over {
            // Whatever its exit status (it may have died of SIGPIPE when we stopped reading).
            return Err(CniError::PluginFailed {
                plugin,
                command,
                message: format!("wrote more than {MAX_STDOUT} bytes to stdout"),
            });
        }
        if status.success() {
            return Ok(stdout);
        }
        if let Ok(w) = serde_json::from_slice::<WireError>(&stdout) {
            if !w.msg.is_empty() || w.code != 0 {
                let error = PluginError {
                    code: w.code,
                    msg: clip(&w.msg, MAX_ERROR_TEXT),
                    details: clip(&w.details, MAX_ERROR_TEXT),
                };
                return Err(CniError::Plugin { plugin, command, error });
            }
        }
        let mut message = format!("{status}");
        if !stdout.is_empty() {
            message += &format!("; stdout: {}", text_tail(&stdout, 2048));
        }
        if !stderr.is_empty() {
            message += &format!("; stderr: {}", text_tail(&stderr, 2048));
        }
        Err(CniError::PluginFailed { plugin, command, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn inv(netns: Option<&Path>) -> Invocation<'_> {
        Invocation {
            command: CniCommand::Add,
            container_id: "c1",
            netns,
            ifname: "eth0",
            args: "IgnoreUnknown=1;K8S_POD_NAME=p",
        }
    }

    #[test]
    fn the_plugin_gets_the_environment_and_stdin_and_its_stdout_is_returned() {
        let d = tempfile::tempdir().unwrap();
        plugin(
            d.path(),
            "echo",
            "printf '%s|%s|%s|%s|%s|%s|' \"$CNI_COMMAND\" \"$CNI_CONTAINERID\" \"$CNI_NETNS\" \
             \"$CNI_IFNAME\" \"$CNI_ARGS\" \"$CNI_PATH\"; cat",
        );
        let r = PluginRunner::new(vec![d.path().join("none"), d.path().into()]);
        let out = r.run("echo", &inv(Some(Path::new("/run/x"))), b"{\"in\":1}").unwrap();
        let want = format!(
            "ADD|c1|/run/x|eth0|IgnoreUnknown=1;K8S_POD_NAME=p|{}/none:{}|{{\"in\":1}}",
            d.path().display(),
            d.path().display()
        );
        assert_eq!(String::from_utf8(out).unwrap(), want);
        let out = r.run("echo", &inv(None), b"").unwrap();
        assert!(String::from_utf8(out).unwrap().starts_with("ADD|c1||eth0|"));
    }

    #[test]
    fn a_cni_error_object_becomes_the_error_with_msg_and_details() {
        let d = tempfile::tempdir().unwrap();
        plugin(
            d.path(),
            "bad",
            concat!(
                r#"cat >/dev/null; "#,
                r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"bad thing","details":"more"}'; "#,
                "exit 1"
            ),
        );
        plugin(d.path(), "crash", "echo oops >&2; exit 3");
        let r = PluginRunner::new(vec![d.path().into()]);
        let e = r.run("bad", &inv(None), b"{}").unwrap_err();
        assert!(matches!(&e, CniError::Plugin { error, .. } if error.code == 7), "{e}");
        let s = e.to_string();
        assert!(s.contains("bad thing") && s.contains("more"), "{s}");
        let s = r.run("crash", &inv(None), b"{}").unwrap_err().to_string();
        assert!(s.contains("oops") && s.contains("3"), "{s}");
    }

    #[test]
    fn missing_or_walking_plugin_names_are_not_found() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("noexec"), "x").unwrap();
        let r = PluginRunner::new(vec![d.path().into()]);
        for t in ["nope", "../bin/sh", "/bin/sh", "noexec", ""] {
            let e = r.run(t, &inv(None), b"").unwrap_err();
            assert!(matches!(e, CniError::PluginNotFound { .. }), "{t}: {e}");
        }
    }

    #[test]
    fn a_hanging_plugin_is_killed_at_the_deadline_with_its_children() {
        let d = tempfile::tempdir().unwrap();
        plugin(d.path(), "hang", "sleep 30 & sleep 30");
        let mut r = PluginRunner::new(vec![d.path().into()]);
        r.timeout = Duration::from_millis(300);
        let t = Instant::now();
        let e = r.run("hang", &inv(None), b"").unwrap_err();
        assert!(matches!(e, CniError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
        // A plugin that exits but leaves a child holding stdout does not keep us either.
        plugin(d.path(), "leave", "sleep 30 & echo '{}'");
        r.timeout = Duration::from_secs(10);
        let t = Instant::now();
        let _ = r.run("leave", &inv(None), b"");
        assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    }

    #[test]
    fn long_error_texts_are_clipped() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("abcdef", 3), "abc...");
        assert_eq!(clip("ééé", 3), "é...");
    }

    #[test]
    fn oversized_stdout_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        plugin(d.path(), "flood", "head -c 2000000 /dev/zero");
        let r = PluginRunner::new(vec![d.path().into()]);
        let e = r.run("flood", &inv(None), b"").unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
    }
}
