//! Opening KVM and creating a VM with the in-kernel interrupt controllers.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};

use crate::error::VmmError;
use crate::layout::{KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR};

const KVM_API_VERSION: i32 = 12;

/// Opens the KVM device and checks the API version and the capabilities carapace needs.
pub fn open_kvm(path: &Path) -> Result<Kvm, VmmError> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        VmmError::Config(crate::config::ConfigError::KvmPathNul { path: path.to_path_buf() })
    })?;
    let kvm = Kvm::new_with_path(&c_path)
        .map_err(|source| VmmError::OpenKvm { path: path.to_path_buf(), source })?;
    let version = kvm.get_api_version();
    if version != KVM_API_VERSION {
        return Err(VmmError::KvmApiVersion(version));
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
        (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmmError::KvmCapability(name));
        }
    }
    Ok(kvm)
}

/// The CPUID entries KVM can expose.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmmError> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::kvm("KVM_GET_SUPPORTED_CPUID", e))
}

/// Creates a VM; with `irqchip`, also the in-kernel PIC/IOAPIC/LAPICs and PIT.
pub fn create_vm(kvm: &Kvm, irqchip: bool) -> Result<VmFd, VmmError> {
    let vm = kvm.create_vm().map_err(|e| VmmError::kvm("KVM_CREATE_VM", e))?;
    vm.set_tss_address(KVM_TSS_ADDR).map_err(|e| VmmError::kvm("KVM_SET_TSS_ADDR", e))?;
    if kvm.check_extension(Cap::SetIdentityMapAddr) {
        vm.set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(|e| VmmError::kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    }
    if irqchip {
        vm.create_irq_chip().map_err(|e| VmmError::kvm("KVM_CREATE_IRQCHIP", e))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm.create_pit2(pit).map_err(|e| VmmError::kvm("KVM_CREATE_PIT2", e))?;
    }
    Ok(vm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_names_the_path() {
        let e = open_kvm(Path::new("/nonexistent/kvm")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/kvm"), "{e}");
    }

    #[test]
    fn real_kvm_opens_when_present() {
        if !Path::new("/dev/kvm").exists() {
            return;
        }
        let kvm = open_kvm(Path::new("/dev/kvm")).unwrap();
        let cpuid = supported_cpuid(&kvm).unwrap();
        assert!(cpuid.as_slice().iter().any(|e| e.function == 1));
        create_vm(&kvm, true).unwrap();
    }
}
