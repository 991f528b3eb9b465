//! Register state that puts a vCPU straight into 64-bit mode at the kernel entry point.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcr,
    kvm_xcrs, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{boot_gdt, segment_from_entry, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use crate::error::VmmError;
use crate::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, ZERO_PAGE_START};
use crate::memory::GuestMemoryMmap;

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MTRR_ENABLE: u64 = 1 << 11;
const MTRR_TYPE_WRBACK: u64 = 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Writes the boot GDT and an empty IDT to guest memory.
pub fn write_gdt_idt(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    let gdt: Vec<u8> = boot_gdt().iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt, GuestAddress(BOOT_GDT_START))
        .and_then(|_| mem.write_obj(0u64, GuestAddress(BOOT_IDT_START)))
        .map_err(|source| VmmError::GuestMemoryWrite { what: "GDT/IDT", source })
}

/// Turns `sregs` (as KVM_GET_SREGS returned them) into 64-bit mode with paging at `cr3`.
pub fn long_mode_sregs(sregs: &mut kvm_sregs, cr3: u64) {
    let gdt = boot_gdt();
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    let code = segment_from_entry(gdt[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment_from_entry(gdt[usize::from(DATA_INDEX)], DATA_INDEX);
    let tss = segment_from_entry(gdt[usize::from(TSS_INDEX)], TSS_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    sregs.cr0 |= CR0_PE | CR0_PG;
    sregs.cr3 = cr3;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
}

/// Sets the special registers of `vcpu` for 64-bit mode (GDT/IDT must be in memory).
pub fn setup_sregs(vcpu: &VcpuFd, cr3: u64) -> Result<(), VmmError> {
    let mut sregs = vcpu.get_sregs().map_err(|e| VmmError::kvm("KVM_GET_SREGS", e))?;
    long_mode_sregs(&mut sregs, cr3);
    vcpu.set_sregs(&sregs).map_err(|e| VmmError::kvm("KVM_SET_SREGS", e))
}

/// General registers at the kernel entry (64-bit boot protocol: RSI = boot_params).
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    }
}

/// Sets RIP/RSP/RSI... of `vcpu`.
pub fn setup_regs(vcpu: &VcpuFd, regs: &kvm_regs) -> Result<(), VmmError> {
    vcpu.set_regs(regs).map_err(|e| VmmError::kvm("KVM_SET_REGS", e))
}

/// x87 and SSE control words at reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|e| VmmError::kvm("KVM_SET_FPU", e))
}

/// The MSRs a Linux guest expects a VMM to initialise.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let entry = |index: u32, data: u64| kvm_msr_entry { index, data, ..Default::default() };
    vec![
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_TSC, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRBACK),
    ]
}

/// Writes [`boot_msrs`] to `vcpu`; all of them must be accepted.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let entries = boot_msrs();
    let msrs = Msrs::from_entries(&entries).map_err(VmmError::Msrs)?;
    let set = vcpu.set_msrs(&msrs).map_err(|e| VmmError::kvm("KVM_SET_MSRS", e))?;
    if set != entries.len() {
        let index = entries.get(set).map(|e| e.index).unwrap_or_default();
        return Err(VmmError::MsrRefused(index));
    }
    Ok(())
}

const LEAF_XSAVE: u32 = 0xd;
const ECX_XSAVE: u32 = 1 << 26;

/// The XCR0 value enabling every user state component the vCPU's CPUID enumerates (leaf 0xd),
/// if it has XSAVE.
pub fn full_xcr0(cpuid: &[kvm_cpuid_entry2]) -> Option<u64> {
    let has_xsave = cpuid.iter().any(|e| e.function == 1 && e.ecx & ECX_XSAVE != 0);
    let leaf = cpuid.iter().find(|e| e.function == LEAF_XSAVE && e.index == 0)?;
    let mask = u64::from(leaf.eax) | (u64::from(leaf.edx) << 32);
    (has_xsave && mask & 1 == 1).then_some(mask)
}

/// Starts the vCPU with XCR0 = every component its CPUID offers, the value Linux programs
/// anyway. KVM then reports the matching XSAVE area size in CPUID 0xd from the first
/// instruction on, even where the guest's XSETBV does not reach KVM (nested, emulated hosts),
/// which otherwise makes Linux warn about an XSAVE size mismatch. Best effort.
pub fn setup_xcr0(vcpu: &VcpuFd, cpuid: &[kvm_cpuid_entry2]) {
    let Some(value) = full_xcr0(cpuid) else { return };
    let mut xcrs = kvm_xcrs { nr_xcrs: 1, ..Default::default() };
    xcrs.xcrs[0] = kvm_xcr { xcr: 0, reserved: 0, value };
    if let Err(e) = vcpu.set_xcrs(&xcrs) {
        tracing::debug!(
            error = %e,
            xcr0 = format!("{value:#x}"),
            "KVM_SET_XCRS refused; keeping the reset XCR0"
        );
    }
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = lapic.regs.get(offset + i).copied().unwrap_or_default() as u8;
    }
    u32::from_le_bytes(b)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        if let Some(r) = lapic.regs.get_mut(offset + i) {
            *r = *byte as _;
        }
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// LINT0 = ExtINT (the PIC), LINT1 = NMI, as a BIOS leaves them.
pub fn configure_lints(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Applies [`configure_lints`] to the in-kernel LAPIC of `vcpu`.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), VmmError> {
    let mut lapic = vcpu.get_lapic().map_err(|e| VmmError::kvm("KVM_GET_LAPIC", e))?;
    configure_lints(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(|e| VmmError::kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sregs_enter_long_mode() {
        let mut s = kvm_sregs::default();
        long_mode_sregs(&mut s, 0x9000);
        assert_eq!(s.cr3, 0x9000);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (8, 1, 0));
        assert_eq!(s.ss.selector, 16);
        assert_eq!(s.tr.selector, 24);
        assert_eq!(s.gdt.base, BOOT_GDT_START);
        assert_eq!(s.gdt.limit, 31);
    }

    #[test]
    fn regs_point_at_entry_and_zero_page() {
        let r = boot_regs(0x100_0000);
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, ZERO_PAGE_START);
        assert_eq!(r.rflags, 2);
    }

    #[test]
    fn lints_get_extint_and_nmi() {
        let mut l = kvm_lapic_state::default();
        set_lapic_reg(&mut l, APIC_LVT0, 0x0001_0700); // masked, some mode
        configure_lints(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x0001_0700);
        assert_eq!(lapic_reg(&l, APIC_LVT1), 0x400);
        set_lapic_reg(&mut l, APIC_LVT0, 0);
        configure_lints(&mut l);
        assert_eq!(lapic_reg(&l, APIC_LVT0), 0x700);
    }

    #[test]
    fn xcr0_from_cpuid() {
        let l1 = kvm_cpuid_entry2 { function: 1, ecx: ECX_XSAVE, ..Default::default() };
        let d =
            kvm_cpuid_entry2 { function: 0xd, index: 0, eax: 0x7, edx: 0x2, ..Default::default() };
        let d1 = kvm_cpuid_entry2 { function: 0xd, index: 1, eax: 0xf, ..Default::default() };
        assert_eq!(full_xcr0(&[l1, d1, d]), Some(0x2_0000_0007));
        let no_xsave = kvm_cpuid_entry2 { function: 1, ..Default::default() };
        assert_eq!(full_xcr0(&[no_xsave, d]), None);
        assert_eq!(full_xcr0(&[l1]), None);
    }

    #[test]
    fn msrs_include_misc_enable_and_mtrr() {
        let m = boot_msrs();
        assert!(m.iter().any(|e| e.index == MSR_IA32_MISC_ENABLE && e.data == 1));
        assert!(m.iter().any(|e| e.index == MSR_MTRR_DEF_TYPE && e.data == 0x806));
    }
}
