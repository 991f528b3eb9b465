//! Can this KVM boot a Linux guest? Asks the VMM's probe, which runs early-boot instructions in a
//! tiny 64-bit VM (limited nested KVMs fail them in the instruction emulator).

use std::path::Path;

pub fn guest_boot_capability(kvm: &Path) -> Result<String, String> {
    match carapace_vmm::probe_guest_capability(kvm) {
        Ok(report) if report.capable => Ok(report.detail),
        Ok(report) => Err(report.detail),
        Err(e) => Err(format!("probe VM failed: {e}")),
    }
}
