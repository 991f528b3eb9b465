//! Can this KVM run a Linux guest? Boots a tiny VM straight into 64-bit mode (the same page
//! tables and GDT as a real boot) and runs instructions Linux needs early.

use std::path::Path;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_cpuid_entry2, KVM_INTERNAL_ERROR_EMULATION};
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress};

use crate::arch::{boot_cpu, cpuid, paging};
use crate::error::VmmError;
use crate::kick::{install_kick_handler, PeriodicKicker};
use crate::kvm::{create_vm, open_kvm, supported_cpuid};
use crate::memory::register_memory;
use crate::memory::GuestMemoryMmap;
use crate::vcpu::{describe_registers, internal_error_suberror};

const PROBE_MEM_SIZE: usize = 2 << 20;
const CODE_ADDR: u64 = 0x1000;
const CMPXCHG_ADDR: u32 = 0x3000;
const XSAVE_ADDR: u32 = 0x4000;
/// The probe reports success with `out PROBE_PORT, PROBE_OK`.
const PROBE_PORT: u16 = 0xf4;
const PROBE_OK: u8 = 0x4b;
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const CR4_OSXSAVE: u64 = 1 << 18;

const ECX_CMPXCHG16B: u32 = 1 << 13;
const ECX_POPCNT: u32 = 1 << 23;
const ECX_XSAVE: u32 = 1 << 26;

/// Result of [`probe_guest_capability`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    /// The test VM ran its instructions in 64-bit mode and reported back.
    pub capable: bool,
    /// One line for a human: what ran, or what failed.
    pub detail: String,
}

/// Instructions the probe runs, by what the CPU (as KVM exposes it) has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ProbeSet {
    popcnt: bool,
    cmpxchg16b: bool,
    xsave: bool,
}

impl ProbeSet {
    fn from_cpuid(entries: &[kvm_cpuid_entry2]) -> Self {
        let ecx = entries.iter().find(|e| e.function == 1).map(|e| e.ecx).unwrap_or(0);
        ProbeSet {
            popcnt: ecx & ECX_POPCNT != 0,
            cmpxchg16b: ecx & ECX_CMPXCHG16B != 0,
            xsave: ecx & ECX_XSAVE != 0,
        }
    }

    fn names(&self) -> String {
        let mut n = Vec::new();
        if self.popcnt {
            n.push("popcnt");
        }
        if self.cmpxchg16b {
            n.push("cmpxchg16b");
        }
        if self.xsave {
            n.push("xsave/xrstor");
        }
        if n.is_empty() {
            "basic 64-bit code".to_string()
        } else {
            n.join(", ")
        }
    }
}

/// Machine code of the probe (64-bit mode).
fn probe_code(set: ProbeSet) -> Vec<u8> {
    let mut c = Vec::new();
    let imm32 = |c: &mut Vec<u8>, v: u32| c.extend_from_slice(&v.to_le_bytes());
    if set.popcnt {
        c.extend_from_slice(&[0x48, 0xc7, 0xc3]); // mov rbx, 0xff
        imm32(&mut c, 0xff);
        c.extend_from_slice(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3]); // popcnt rax, rbx
    }
    if set.cmpxchg16b {
        c.extend_from_slice(&[0x48, 0x31, 0xc0]); // xor rax, rax
        c.extend_from_slice(&[0x48, 0x31, 0xd2]); // xor rdx, rdx
        c.extend_from_slice(&[0x48, 0x31, 0xdb]); // xor rbx, rbx
        c.extend_from_slice(&[0x48, 0x31, 0xc9]); // xor rcx, rcx
        c.extend_from_slice(&[0x48, 0xc7, 0xc7]); // mov rdi, CMPXCHG_ADDR
        imm32(&mut c, CMPXCHG_ADDR);
        c.extend_from_slice(&[0x48, 0x0f, 0xc7, 0x0f]); // cmpxchg16b [rdi]
    }
    if set.xsave {
        c.push(0xb8); // mov eax, 1 (x87 state)
        imm32(&mut c, 1);
        c.extend_from_slice(&[0x31, 0xd2]); // xor edx, edx
        c.extend_from_slice(&[0x48, 0xc7, 0xc6]); // mov rsi, XSAVE_ADDR
        imm32(&mut c, XSAVE_ADDR);
        c.extend_from_slice(&[0x0f, 0xae, 0x26]); // xsave [rsi]
        c.extend_from_slice(&[0x0f, 0xae, 0x2e]); // xrstor [rsi]
    }
    c.extend_from_slice(&[0xb0, PROBE_OK]); // mov al, PROBE_OK
    c.extend_from_slice(&[0xe6, PROBE_PORT as u8]); // out PROBE_PORT, al
    c.push(0xf4); // hlt
    c
}

/// The message for a KVM that cannot emulate what a Linux guest runs.
pub const INCAPABLE_EMULATION: &str = "this KVM cannot run a Linux guest: instruction emulation \
failed in 64-bit mode (nested paravirtual KVM?)";

fn incapable(detail: String) -> Result<ProbeReport, VmmError> {
    Ok(ProbeReport { capable: false, detail })
}

/// Boots the probe VM on `kvm_path`. Err only when KVM itself cannot be used (cannot open,
/// create a VM...); a KVM that runs but cannot execute the probe gives `capable: false`.
pub fn probe_guest_capability(kvm_path: &Path) -> Result<ProbeReport, VmmError> {
    let kvm = open_kvm(kvm_path)?;
    let vm = create_vm(&kvm, false)?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), PROBE_MEM_SIZE)])
        .map_err(VmmError::GuestMemory)?;
    register_memory(&vm, &mem)?;

    let supported = supported_cpuid(&kvm)?;
    let set = ProbeSet::from_cpuid(supported.as_slice());
    mem.write_slice(&probe_code(set), GuestAddress(CODE_ADDR))
        .map_err(|source| VmmError::GuestMemoryWrite { what: "probe code", source })?;
    let cr3 = paging::write_identity_tables(&mem)?;
    boot_cpu::write_gdt_idt(&mem)?;

    let mut vcpu = vm.create_vcpu(0).map_err(|e| VmmError::kvm("KVM_CREATE_VCPU", e))?;
    let cpuid = cpuid::vcpu_cpuid(&supported, 0, 1, None)?;
    vcpu.set_cpuid2(&cpuid).map_err(|e| VmmError::kvm("KVM_SET_CPUID2", e))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| VmmError::kvm("KVM_GET_SREGS", e))?;
    boot_cpu::long_mode_sregs(&mut sregs, cr3);
    if set.xsave {
        sregs.cr4 |= CR4_OSXSAVE;
    }
    vcpu.set_sregs(&sregs).map_err(|e| VmmError::kvm("KVM_SET_SREGS", e))?;
    boot_cpu::setup_regs(&vcpu, &boot_cpu::boot_regs(CODE_ADDR))?;
    boot_cpu::setup_fpu(&vcpu)?;

    install_kick_handler()?;
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() };
    let kicker = PeriodicKicker::start(Duration::from_millis(250), vec![me])?;
    let started = Instant::now();
    let mut reported = false;
    let outcome = loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PROBE_PORT, data)) => reported = data.first() == Some(&PROBE_OK),
            Ok(VcpuExit::IoOut(..)) | Ok(VcpuExit::IoIn(..)) => {}
            Ok(VcpuExit::MmioRead(_, data)) => data.fill(0xff),
            Ok(VcpuExit::MmioWrite(..)) => {}
            Ok(VcpuExit::Hlt) => {
                break if reported {
                    Ok(ProbeReport {
                        capable: true,
                        detail: format!("a test VM ran {} in 64-bit mode", set.names()),
                    })
                } else {
                    incapable("the test VM halted without reporting success".to_string())
                };
            }
            Ok(VcpuExit::InternalError) => {
                let sub = internal_error_suberror(&mut vcpu);
                let regs = describe_registers(&vcpu);
                tracing::info!(suberror = sub, "probe VM: KVM internal error; {regs}");
                break if sub == KVM_INTERNAL_ERROR_EMULATION {
                    incapable(INCAPABLE_EMULATION.to_string())
                } else {
                    incapable(format!(
                        "this KVM cannot run a Linux guest: KVM internal error (suberror {sub}) \
                         in 64-bit mode"
                    ))
                };
            }
            Ok(VcpuExit::Shutdown) => {
                break incapable(format!(
                    "this KVM cannot run a Linux guest: the test VM triple-faulted in 64-bit \
                     mode ({})",
                    describe_registers(&vcpu)
                ));
            }
            Ok(VcpuExit::FailEntry(reason, _)) => {
                break incapable(format!(
                    "this KVM cannot run a Linux guest: VM entry failed \
                     (hardware reason {reason:#x})"
                ));
            }
            Ok(other) => {
                break incapable(format!(
                    "this KVM cannot run a Linux guest: unexpected exit {other:?}"
                ));
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                if started.elapsed() > PROBE_TIMEOUT {
                    break incapable(format!(
                        "this KVM cannot run a Linux guest: the test VM did not finish in \
                         {PROBE_TIMEOUT:?}"
                    ));
                }
            }
            Err(e) => break Err(VmmError::kvm("KVM_RUN", e)),
        }
    };
    kicker.stop();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_ends_with_report_and_halt() {
        let c = probe_code(ProbeSet::default());
        assert_eq!(c, vec![0xb0, PROBE_OK, 0xe6, 0xf4, 0xf4]);
        let all = probe_code(ProbeSet { popcnt: true, cmpxchg16b: true, xsave: true });
        assert!(all.windows(5).any(|w| w == [0xf3, 0x48, 0x0f, 0xb8, 0xc3]));
        assert!(all.windows(4).any(|w| w == [0x48, 0x0f, 0xc7, 0x0f]));
        assert!(all.windows(3).any(|w| w == [0x0f, 0xae, 0x2e]));
        assert_eq!(all.last(), Some(&0xf4));
    }

    #[test]
    fn set_from_cpuid() {
        let e = kvm_cpuid_entry2 { function: 1, ecx: ECX_POPCNT | ECX_XSAVE, ..Default::default() };
        let s = ProbeSet::from_cpuid(&[e]);
        assert_eq!(s, ProbeSet { popcnt: true, cmpxchg16b: false, xsave: true });
        assert_eq!(s.names(), "popcnt, xsave/xrstor");
    }

    #[test]
    fn missing_device_is_an_error() {
        assert!(probe_guest_capability(Path::new("/nonexistent/kvm")).is_err());
    }

    /// On a nested paravirtual KVM (kvm_pvm) Linux cannot run; elsewhere it can.
    #[test]
    fn probe_matches_this_host() {
        if !Path::new("/dev/kvm").exists() {
            return;
        }
        let report = probe_guest_capability(Path::new("/dev/kvm")).unwrap();
        eprintln!("probe: {report:?}");
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(!report.capable, "{report:?}");
            assert!(report.detail.starts_with("this KVM cannot run a Linux guest"), "{report:?}");
        } else {
            assert!(report.capable, "{report:?}");
        }
    }
}
