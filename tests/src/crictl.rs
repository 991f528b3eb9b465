//! The real CRI client, crictl (`../shared/bin/crictl`, or `$CRICTL`), pointed at a test
//! daemon's socket, for the streaming tests and benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{ensure, Context, Result};

use crate::repo_root;

/// The streaming transports crictl speaks (`--transport`).
pub const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

/// crictl's `--timeout` (reaching the daemon).
const CONNECT_TIMEOUT: &str = "60s";

/// crictl for one daemon.
#[derive(Debug, Clone)]
pub struct Crictl {
    pub bin: PathBuf,
    pub endpoint: String,
    /// Options of the streaming subcommands (exec, attach, port-forward), e.g. `--tls-ca`.
    pub stream_args: Vec<String>,
}

/// The subcommands that connect to the streaming server.
const STREAMING: [&str; 3] = ["exec", "attach", "port-forward"];

impl Crictl {
    /// crictl talking to the daemon listening on `socket`.
    pub fn new(socket: &Path) -> Result<Crictl> {
        let bin = std::env::var_os("CRICTL")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("../shared/bin/crictl"));
        ensure!(bin.is_file(), "crictl not found at {} (set CRICTL)", bin.display());
        Ok(Crictl { bin, endpoint: format!("unix://{}", socket.display()), stream_args: vec![] })
    }

    /// The same crictl trusting `ca` for the streaming server's TLS (its name: `localhost`).
    /// crictl takes `--tls-ca` only together with a client certificate and key (it refuses
    /// otherwise, and without any of the three it skips verification), so one is passed too;
    /// the server does not ask for it.
    pub fn with_streaming_tls(mut self, ca: &Path, cert: &Path, key: &Path) -> Crictl {
        self.stream_args = [("--tls-ca", ca), ("--tls-cert", cert), ("--tls-key", key)]
            .iter()
            .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
            .collect();
        self
    }

    fn sub_args(&self, sub: &str) -> &[String] {
        if STREAMING.contains(&sub) {
            &self.stream_args
        } else {
            &[]
        }
    }

    /// `crictl <global options> <sub> <args>` with stdio null/piped/piped.
    pub fn command(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(["--runtime-endpoint", &self.endpoint, "--timeout", CONNECT_TIMEOUT, sub])
            .args(self.sub_args(sub))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// The command line as a shell would take it (for `script`, `tmux`, `sh -c` pipelines).
    pub fn shell_line(&self, sub: &str, args: &[&str]) -> String {
        let mut words = vec![self.bin.display().to_string()];
        words.extend(["--runtime-endpoint".into(), self.endpoint.clone()]);
        words.extend(["--timeout".into(), CONNECT_TIMEOUT.into()]);
        words.push(sub.into());
        words.extend(self.sub_args(sub).iter().cloned());
        words.extend(args.iter().map(|a| a.to_string()));
        words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" ")
    }

    /// Runs `crictl <sub> <args>` to its end.
    pub fn run(&self, sub: &str, args: &[&str]) -> Result<Output> {
        self.command(sub, args).output().with_context(|| format!("run {}", self.bin.display()))
    }
}

/// `s` single-quoted for sh.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// stdout and stderr of an output, for messages.
pub fn describe(o: &Output) -> String {
    format!(
        "{} | stdout: {:?} | stderr: {:?}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_quotes() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("x'y z")))
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"x'y z");
    }
}
