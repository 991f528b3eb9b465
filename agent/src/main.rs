//! carapace-agent: PID 1 of every carapace pod VM.
//!
//! As PID 1 it mounts the guest's pseudo filesystems, reaps orphans, and
//! serves `carapace.agent.v1.Agent` (proto/agent.proto) on AF_VSOCK port
//! 1024. Once listening it prints `carapace-agent: ready` on the console.
//! Shutdown (RPC, Ctrl+Alt+Del, SIGTERM) ends with sync + reboot(RESTART);
//! anything fatal also ends in a reboot, never in an exit (the kernel panics
//! when init exits).
//!
//! `--listen-unix PATH` is a dev mode for tests on the host: no mounts, no
//! reaper, no reboot; Shutdown makes the process exit 0.

use std::time::Duration;

use carapace_agent::args::{self, Args, Command, KernelOpts, Listen};
use carapace_agent::service::{AgentService, ShutdownReason, ShutdownTrigger};
use carapace_agent::{console, mounts, power, reaper, serve, sysinfo};

/// Grace period for leftover processes before SIGKILL at shutdown.
const KILL_GRACE: Duration = Duration::from_millis(500);

/// After the API connections are closed, time for the VMM to pick the last
/// bytes (the Shutdown answer, the close) off the vsock queue before the
/// guest resets: the reset does not wait for the host to read them.
const VSOCK_LINGER: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
}

fn init_logging(kernel_log: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| kernel_log.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(filter)
        .try_init();
}

/// As PID 1 a panic anywhere ends in a reboot: the guest cannot continue
/// without its init, and exiting would panic the kernel.
fn install_pid1_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        tracing::error!("carapace-agent panicked as PID 1; restarting the guest");
        power::restart();
    }));
}

fn pid1_setup(args: &Args, kopts: &KernelOpts) {
    if let Err(e) = power::disable_ctrl_alt_del() {
        tracing::warn!(error = %e, "cannot disable Ctrl+Alt+Del reboot");
    }
    if let Some(name) = args.hostname.as_deref().or(kopts.hostname.as_deref()) {
        match nix::unistd::sethostname(name) {
            Ok(()) => tracing::info!(hostname = name, "hostname set"),
            Err(e) => tracing::warn!(hostname = name, error = %e, "cannot set hostname"),
        }
    }
    let dir = carapace_agent_client::GUEST_SHARED_DIR;
    match mounts::mount_shared_dir() {
        mounts::SharedDir::Mounted => tracing::info!(
            tag = mounts::SHARED_FS_TAG,
            target = dir,
            "shared directory mounted (virtio-fs)"
        ),
        mounts::SharedDir::NoDevice => {
            tracing::info!(target = dir, "no virtio-fs device: no shared directory")
        }
        mounts::SharedDir::Failed(e) => {
            tracing::warn!(error = %e, "cannot mount the shared directory; continuing without it")
        }
    }
}

async fn signal_task(trigger: ShutdownTrigger) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            tracing::info!(signal = sig, "shutdown signal received");
            trigger.fire(ShutdownReason::Signal(sig));
        }
    });
    Ok(())
}

fn run(pid1: bool, args: &Args) -> Result<Option<ShutdownReason>, AgentError> {
    let started_at_uptime = sysinfo::uptime().unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    rt.block_on(async {
        let reaper = reaper::Reaper::new();
        if pid1 {
            reaper.start().map_err(AgentError::Signals)?;
        }
        let (trigger, shutdown_rx) = ShutdownTrigger::new();
        signal_task(trigger.clone()).await?;
        let service = AgentService {
            started_at_uptime,
            pid1,
            shutdown: trigger,
            containers: if pid1 {
                carapace_agent::container::Containers::new(reaper.clone(), Default::default())
            } else {
                carapace_agent::container::Containers::disabled(
                    "dev mode: containers need the agent as PID 1 of a guest",
                )
            },
        };
        let reason = serve::serve(&args.listen, service, shutdown_rx).await?;
        Ok(reason)
    })
}

fn main() {
    let pid1 = std::process::id() == 1;
    // The agent's own child that runs one libcontainer call (never PID 1:
    // the kernel's words for init cannot make it one).
    if !pid1
        && std::env::args_os().nth(1).as_deref()
            == Some(std::ffi::OsStr::new(carapace_agent::container::helper::HELPER_ARG))
    {
        std::process::exit(carapace_agent::container::helper::helper_main());
    }
    if pid1 {
        install_pid1_panic_hook();
    }
    let args = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(a)) => a,
        Ok(Command::Help) if !pid1 => {
            println!("{}", args::USAGE);
            return;
        }
        Ok(Command::Version) if !pid1 => {
            println!("carapace-agent {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        // PID 1 must never return from main: --help/--version are ignored.
        Ok(Command::Help | Command::Version) => {
            Args { listen: Listen::Vsock(carapace_agent_client::AGENT_VSOCK_PORT), hostname: None }
        }
        Err(e) if pid1 => {
            // The kernel hands init whatever words it did not understand;
            // a typo must not stop the guest.
            eprintln!("carapace-agent: {e}; using defaults");
            Args { listen: Listen::Vsock(carapace_agent_client::AGENT_VSOCK_PORT), hostname: None }
        }
        Err(e) => {
            eprintln!("carapace-agent: {e}\n{}", args::USAGE);
            std::process::exit(2);
        }
    };

    let mut mount_errors = Vec::new();
    let mut kopts = KernelOpts::default();
    if pid1 {
        mount_errors = mounts::mount_all();
        let _ = console::ensure_stdio_on_console();
        if let Ok(cmdline) = std::fs::read_to_string("/proc/cmdline") {
            kopts = args::parse_kernel_cmdline(&cmdline);
        }
    }
    init_logging(kopts.log.as_deref());
    tracing::info!(version = env!("CARGO_PKG_VERSION"), pid1, "carapace-agent starting");
    for e in &mount_errors {
        tracing::warn!(error = %e, "mount failed");
    }
    if pid1 {
        pid1_setup(&args, &kopts);
    }

    let result = run(pid1, &args);
    match (&result, pid1) {
        (Ok(reason), true) => {
            tracing::info!(?reason, "shutting down the guest");
            std::thread::sleep(VSOCK_LINGER);
            power::terminate_all(KILL_GRACE);
            power::restart();
        }
        (Err(e), true) => {
            tracing::error!(error = %e, "fatal error as PID 1; restarting the guest");
            power::terminate_all(KILL_GRACE);
            power::restart();
        }
        (Ok(reason), false) => {
            tracing::info!(?reason, "agent stopped");
        }
        (Err(e), false) => {
            tracing::error!(error = %e, "agent failed");
            std::process::exit(1);
        }
    }
}
