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
