//! End-to-end: carapace's VMM boots the real guest kernel + agent initramfs, the host reaches the
//! agent over vsock, reads kernel version and uptime, asks it to shut down, and the VMM exits 0.
//! Needs a KVM that boots Linux; `make test-e2e` runs it (inside the test host on these machines).

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};
use carapace_tests::{GuestImage, VmOptions, VmProcess};

const AGENT_DEADLINE: Duration = Duration::from_secs(90);
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// One full boot: start, health over vsock, shutdown, clean exit, nothing left behind.
fn boot_once(rt: &tokio::runtime::Runtime, image: &GuestImage, opts: &VmOptions) -> Result<()> {
    let mut vm = VmProcess::spawn(image, opts)?;
    let sock = vm.vsock_path();
    let health = rt.block_on(async {
        let agent = AgentClient::connect(&sock, AGENT_VSOCK_PORT, AGENT_DEADLINE).await?;
        let health = agent.health().await?;
        agent.shutdown().await?;
        Ok::<_, anyhow::Error>(health)
    });
    let health = match health {
        Ok(h) => h,
        Err(e) => bail!("agent not reached: {e:#}\n{}", vm.diagnostics()),
    };
    ensure!(
        health.kernel_version.starts_with("6.1."),
        "unexpected guest kernel version {:?}",
        health.kernel_version
    );
    ensure!(health.uptime_ms > 0, "guest uptime is 0");
    ensure!(
        health.cpu_count == u32::from(opts.vcpus),
        "guest sees {} CPUs, VM has {}",
        health.cpu_count,
        opts.vcpus
    );
    ensure!(health.mem_total_bytes > 0, "guest reports no memory");
    let status = vm
        .wait_exit(EXIT_DEADLINE)
        .with_context(|| format!("VMM did not exit after shutdown\n{}", vm.diagnostics()))?;
    ensure!(
        status.code() == Some(0),
        "VMM exited with {status} after shutdown\n{}",
        vm.diagnostics()
    );
    ensure!(!sock.exists(), "VMM left its vsock socket {} behind", sock.display());
    Ok(())
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn twenty_boots_in_a_row_reach_the_agent_and_exit_cleanly() {
    let image = GuestImage::from_env().expect("guest image");
    let boots: usize =
        std::env::var("CARAPACE_E2E_BOOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let rt = runtime();
    let mut failures = Vec::new();
    for i in 0..boots {
        let started = std::time::Instant::now();
        match boot_once(&rt, &image, &VmOptions::default()) {
            Ok(()) => eprintln!("boot {i}: ok in {:?}", started.elapsed()),
            Err(e) => {
                eprintln!("boot {i}: FAILED after {:?}", started.elapsed());
                failures.push(format!("boot {i}: {e:#}"));
                if failures.len() >= 3 {
                    break;
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {boots} boots failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn two_vcpus_are_both_online_in_the_guest() {
    let image = GuestImage::from_env().expect("guest image");
    let rt = runtime();
    let opts = VmOptions { vcpus: 2, mem_mib: 512, ..Default::default() };
    if let Err(e) = boot_once(&rt, &image, &opts) {
        panic!("{e:#}");
    }
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn sigterm_stops_the_guest_gracefully() {
    let image = GuestImage::from_env().expect("guest image");
    let rt = runtime();
    let mut vm = VmProcess::spawn(&image, &VmOptions::default()).expect("spawn");
    let sock = vm.vsock_path();
    rt.block_on(async {
        let agent = AgentClient::connect(&sock, AGENT_VSOCK_PORT, AGENT_DEADLINE).await?;
        agent.health().await?;
        Ok::<_, anyhow::Error>(())
    })
    .unwrap_or_else(|e| panic!("agent not reached: {e:#}\n{}", vm.diagnostics()));
    // SAFETY: plain kill(2) on our own child's PID.
    unsafe { libc::kill(vm.child.id() as i32, libc::SIGTERM) };
    let status =
        vm.wait_exit(EXIT_DEADLINE).unwrap_or_else(|e| panic!("{e:#}\n{}", vm.diagnostics()));
    assert_eq!(status.code(), Some(0), "graceful stop must exit 0\n{}", vm.diagnostics());
    assert!(!sock.exists(), "vsock socket left behind");
}
