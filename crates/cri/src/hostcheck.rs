//! Whether this host's KVM can boot a guest, found once per daemon by running
//! `<vmm_binary> check --kvm-only` (the probe touches /dev/kvm, which the daemon itself never
//! does). The RuntimeReady condition reports it, so that kubelet marks the node not ready
//! instead of failing every pod.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OnceCell;

/// How long the probe may take (it boots a tiny VM; the emulated test host is slow).
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// The outcome of the host check: `Err` says what failed, as `carapace check` words it.
pub struct HostCheck {
    vmm_binary: PathBuf,
    result: OnceCell<Result<(), String>>,
}

impl HostCheck {
    /// A check that runs when its result is first asked for (the first Status call).
    pub fn new(vmm_binary: PathBuf) -> Arc<HostCheck> {
        Arc::new(HostCheck { vmm_binary, result: OnceCell::new() })
    }

    /// The check's outcome (waits for it the first time).
    pub async fn result(&self) -> Result<(), String> {
        self.result.get_or_init(|| probe(self.vmm_binary.clone())).await.clone()
    }
}

async fn probe(vmm_binary: PathBuf) -> Result<(), String> {
    let mut cmd = tokio::process::Command::new(&vmm_binary);
    cmd.args(["check", "--kvm-only"]).stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = match tokio::time::timeout(PROBE_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("cannot run {} check: {e}", vmm_binary.display())),
        Err(_) => {
            return Err(format!(
                "{} check did not finish within {PROBE_TIMEOUT:?}",
                vmm_binary.display()
            ))
        }
    };
    let result = verdict(out.status.success(), &String::from_utf8_lossy(&out.stdout));
    match &result {
        Ok(()) => tracing::info!("host check: this KVM boots guests"),
        Err(e) => tracing::warn!(problem = %e, "host check failed: pods cannot start on this host"),
    }
    result
}

/// The verdict from `carapace check`'s exit status and its `FAIL  <what>: <why>` lines.
fn verdict(success: bool, stdout: &str) -> Result<(), String> {
    if success {
        return Ok(());
    }
    let fails: Vec<&str> =
        stdout.lines().filter_map(|l| l.strip_prefix("FAIL")).map(str::trim).collect();
    Err(if fails.is_empty() {
        "`carapace check --kvm-only` failed without saying why".to_string()
    } else {
        fails.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_quotes_the_failed_checks() {
        assert_eq!(verdict(true, "ok    kvm: fine\n"), Ok(()));
        let out = "ok    kvm: /dev/kvm opens\nFAIL  guest boot: stuck at 0x10\n";
        assert_eq!(verdict(false, out), Err("guest boot: stuck at 0x10".into()));
        assert!(verdict(false, "").unwrap_err().contains("without saying why"));
    }

    #[tokio::test]
    async fn a_vmm_binary_that_fails_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("fake");
        std::fs::write(&bin, "#!/bin/sh\necho 'FAIL  kvm: /dev/kvm does not exist'\nexit 1\n")
            .unwrap();
        std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let c = HostCheck::new(bin);
        assert_eq!(c.result().await, Err("kvm: /dev/kvm does not exist".into()));
        let missing = HostCheck::new(d.path().join("nope"));
        assert!(missing.result().await.unwrap_err().contains("cannot run"));
    }
}
