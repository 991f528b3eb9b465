//! `carapace serve`: the CRI v1 daemon kubelet and crictl talk to.
//!
//! Reads the TOML config (default /etc/carapace/config.toml; embedded defaults when that file is
//! absent), reattaches to the pod VMs recorded in the state dir, serves the RuntimeService on the
//! configured Unix socket until SIGTERM/SIGINT. Stopping the daemon leaves pod VMs running.
//! Exit status: 0 after a requested stop, 1 on error (one line on stderr).

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `carapace serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// TOML config file [default: /etc/carapace/config.toml, embedded defaults when absent].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// CRI socket, overriding the config's `listen` (unix:///path or /path).
    #[arg(long)]
    pub listen: Option<String>,
}

fn fail(message: &str) -> ExitCode {
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("carapace serve: error: {one_line}");
    ExitCode::from(1)
}

/// The configuration these arguments select.
pub fn load_config(args: &ServeArgs) -> Result<carapace_cri::Config, String> {
    let (path, explicit) = match &args.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(carapace_cri::DEFAULT_CONFIG_PATH), false),
    };
    let mut cfg = carapace_cri::Config::load(&path, explicit).map_err(|e| e.to_string())?;
    if let Some(listen) = &args.listen {
        cfg.socket = carapace_cri::config::parse_listen(listen).map_err(|e| e.to_string())?;
    }
    Ok(cfg)
}

/// Runs `carapace serve`.
pub fn run(args: ServeArgs) -> ExitCode {
    let cfg = match load_config(&args) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    match carapace_cri::serve_blocking(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    #[test]
    fn named_config_and_listen_override() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("c.toml");
        std::fs::write(&cfg_path, "cgroup_driver = \"systemd\"\n").unwrap();
        let cli = Cli::parse_from([
            "serve",
            "--config",
            cfg_path.to_str().unwrap(),
            "--listen",
            "unix:///tmp/other.sock",
        ]);
        let cfg = load_config(&cli.serve).unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/tmp/other.sock"));
        assert_eq!(cfg.cgroup_driver, carapace_cri::config::CgroupDriver::Systemd);
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("c.toml");
        std::fs::write(&cfg_path, "[runtime_handlers]\nkata = \"nope\"\n").unwrap();
        let cli = Cli::parse_from(["serve", "--config", cfg_path.to_str().unwrap()]);
        let err = load_config(&cli.serve).unwrap_err();
        assert!(err.contains("runtime_handlers.\"kata\" names profile \"nope\""), "{err}");
        let missing = dir.path().join("missing.toml");
        let cli = Cli::parse_from(["serve", "--config", missing.to_str().unwrap()]);
        assert!(load_config(&cli.serve).unwrap_err().contains("cannot read config file"));
        std::fs::write(&cfg_path, "").unwrap();
        let cli = Cli::parse_from([
            "serve",
            "--config",
            cfg_path.to_str().unwrap(),
            "--listen",
            "tcp://x",
        ]);
        assert!(load_config(&cli.serve).unwrap_err().contains("only Unix sockets"));
    }
}
