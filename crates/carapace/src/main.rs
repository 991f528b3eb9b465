//! `carapace`: a Kubernetes CRI runtime where every pod is a KVM microVM.
//!
//! Subcommands: `serve` (the CRI daemon), `vmm` (one VM per process, started by the daemon),
//! `check` (can this host run pods?).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod check;
mod probe;
mod serve_cmd;
mod vmm_cmd;
mod vmm_log;

#[derive(Parser)]
#[command(name = "carapace", version, about = "Kubernetes CRI runtime: every pod is a KVM microVM")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI v1 API kubelet and crictl use (every pod a microVM).
    Serve(serve_cmd::ServeArgs),
    /// Run one microVM in this process (started by the daemon, usable by hand).
    Vmm(Box<vmm_cmd::VmmArgs>),
    /// Say whether this host can run pods: KVM usable and able to boot Linux, cgroups, guest image.
    Check(check::CheckArgs),
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CARAPACE_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    // A log line that cannot be written is dropped, never reported with `eprintln!` (which
    // panics when stderr fails): the VMM's stderr is on the pod's disk, which the guest can fill.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| vmm_log::LogWriter)
        .log_internal_errors(false)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Serve(args) => serve_cmd::run(args),
        Command::Vmm(args) => vmm_cmd::run(*args),
        Command::Check(args) => check::run(args),
    }
}
