//! CPUID of each vCPU: what KVM supports, with the topology of this VM and the KVM hypervisor
//! leaves a paravirtual guest needs for its clock.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::error::VmmError;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// KVM signature leaf.
pub const LEAF_KVM_SIGNATURE: u32 = 0x4000_0000;
/// KVM paravirtual features leaf.
pub const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// Timing information leaf (TSC and APIC bus frequencies in kHz).
pub const LEAF_TIMING: u32 = 0x4000_0010;
const HYPERVISOR_RANGE_END: u32 = 0x4000_00ff;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// kvmclock (old MSRs).
pub const KVM_FEATURE_CLOCKSOURCE: u32 = 1 << 0;
/// Port 0x80 delays are unnecessary.
pub const KVM_FEATURE_NOP_IO_DELAY: u32 = 1 << 1;
/// kvmclock (new MSRs).
pub const KVM_FEATURE_CLOCKSOURCE2: u32 = 1 << 3;
/// kvmclock's stable bit is honoured.
pub const KVM_FEATURE_CLOCKSOURCE_STABLE_BIT: u32 = 1 << 24;
/// Paravirtual features always advertised.
pub const KVM_REQUIRED_FEATURES: u32 = KVM_FEATURE_CLOCKSOURCE
    | KVM_FEATURE_NOP_IO_DELAY
    | KVM_FEATURE_CLOCKSOURCE2
    | KVM_FEATURE_CLOCKSOURCE_STABLE_BIT;

/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];
/// KVM's local APIC timer runs at 1 GHz.
const APIC_BUS_KHZ: u32 = 1_000_000;

const TOPOLOGY_LEVEL_SMT: u32 = 1;
const TOPOLOGY_LEVEL_CORE: u32 = 2;

/// Bits of the x2APIC ID that select a core inside the package.
fn core_id_bits(vcpus: u8) -> u32 {
    let n = u32::from(vcpus.max(1));
    32 - (n - 1).leading_zeros()
}

fn entry(function: u32, index: u32, regs: [u32; 4], indexed: bool) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: if indexed { KVM_CPUID_FLAG_SIGNIFCANT_INDEX } else { 0 },
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// Topology leaf (0xb or 0x1f) sub-leaves: one thread per core, `vcpus` cores, one package.
fn topology_entries(function: u32, apic_id: u8, vcpus: u8) -> Vec<kvm_cpuid_entry2> {
    let id = u32::from(apic_id);
    vec![
        entry(function, 0, [0, 1, TOPOLOGY_LEVEL_SMT << 8, id], true),
        entry(
            function,
            1,
            [core_id_bits(vcpus), u32::from(vcpus), 1 | (TOPOLOGY_LEVEL_CORE << 8), id],
            true,
        ),
        entry(function, 2, [0, 0, 2, id], true),
    ]
}

/// Adapts the KVM-supported CPUID entries to vCPU `apic_id` of a `vcpus`-CPU VM.
pub fn customize(
    supported: &[kvm_cpuid_entry2],
    apic_id: u8,
    vcpus: u8,
    tsc_khz: Option<u32>,
) -> Vec<kvm_cpuid_entry2> {
    let supported_kvm_features =
        supported.iter().find(|e| e.function == LEAF_KVM_FEATURES).map(|e| e.eax).unwrap_or(0);
    let max_basic = supported.iter().find(|e| e.function == 0).map(|e| e.eax).unwrap_or(0);
    let has_v2_topology = supported.iter().any(|e| e.function == LEAF_TOPOLOGY_V2);

    let mut out: Vec<kvm_cpuid_entry2> = Vec::with_capacity(supported.len() + 8);
    for e in supported {
        let mut e = *e;
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0xffff) | (u32::from(vcpus) << 16) | (u32::from(apic_id) << 24);
                e.ecx |= ECX_HYPERVISOR;
                if vcpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE => {
                e.eax = (e.eax & 0x03ff_ffff) | ((u32::from(vcpus.max(1)) - 1) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => continue,
            f if (LEAF_KVM_SIGNATURE..=HYPERVISOR_RANGE_END).contains(&f) => continue,
            _ => {}
        }
        out.push(e);
    }
    if max_basic >= LEAF_TOPOLOGY {
        out.extend(topology_entries(LEAF_TOPOLOGY, apic_id, vcpus));
    }
    if has_v2_topology && max_basic >= LEAF_TOPOLOGY_V2 {
        out.extend(topology_entries(LEAF_TOPOLOGY_V2, apic_id, vcpus));
    }

    let max_hv_leaf = if tsc_khz.is_some() { LEAF_TIMING } else { LEAF_KVM_FEATURES };
    let [b, c, d] = KVM_SIGNATURE;
    out.push(entry(LEAF_KVM_SIGNATURE, 0, [max_hv_leaf, b, c, d], false));
    out.push(entry(
        LEAF_KVM_FEATURES,
        0,
        [supported_kvm_features | KVM_REQUIRED_FEATURES, 0, 0, 0],
        false,
    ));
    if let Some(khz) = tsc_khz {
        out.push(entry(LEAF_TIMING, 0, [khz, APIC_BUS_KHZ, 0, 0], false));
    }
    out
}

/// Builds the CpuId for KVM_SET_CPUID2 of one vCPU.
pub fn vcpu_cpuid(
    supported: &CpuId,
    apic_id: u8,
    vcpus: u8,
    tsc_khz: Option<u32>,
) -> Result<CpuId, VmmError> {
    let entries = customize(supported.as_slice(), apic_id, vcpus, tsc_khz);
    CpuId::from_entries(&entries).map_err(VmmError::Cpuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).expect("leaf present")
    }

    fn host() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, [0x1f, 0x756e_6547, 0x6c65_746e, 0x4965_6e69], false),
            entry(1, 0, [0x806f8, 0x0f00_0800 | 0x00ff_0000, 0x7ffa_3203, 0x0f8b_fbff], false),
            entry(4, 0, [0xfc00_4121, 0, 0, 0], true),
            entry(0xb, 0, [1, 2, 0x100, 7], true),
            entry(0x1f, 0, [1, 2, 0x100, 7], true),
            entry(LEAF_KVM_SIGNATURE, 0, [0x4000_0001, 0, 0, 0], false),
            entry(LEAF_KVM_FEATURES, 0, [1 << 7, 0, 0, 0], false),
        ]
    }

    #[test]
    fn leaf1_has_apic_id_count_and_hypervisor_bit() {
        let v = customize(&host(), 3, 4, None);
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ebx & 0xffff, 0x0800);
        assert_ne!(l1.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(l1.edx & EDX_HTT, 0);
        let single = customize(&host(), 0, 1, None);
        assert_eq!(find(&single, 1, 0).edx & EDX_HTT, 0);
    }

    #[test]
    fn topology_leaf_reports_this_vm() {
        let v = customize(&host(), 5, 6, None);
        let smt = find(&v, 0xb, 0);
        let core = find(&v, 0xb, 1);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 5));
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        assert_eq!(find(&v, 0xb, 2).ecx >> 8, 0);
        assert_eq!(find(&v, 0x1f, 1).ebx, 6);
        assert_eq!(v.iter().filter(|e| e.function == 0xb).count(), 3);
    }

    #[test]
    fn core_bits() {
        assert_eq!(core_id_bits(1), 0);
        assert_eq!(core_id_bits(2), 1);
        assert_eq!(core_id_bits(3), 2);
        assert_eq!(core_id_bits(32), 5);
    }

    #[test]
    fn hypervisor_leaves_present() {
        let v = customize(&host(), 0, 1, Some(2_500_000));
        let sig = find(&v, LEAF_KVM_SIGNATURE, 0);
        let mut s = Vec::new();
        for r in [sig.ebx, sig.ecx, sig.edx] {
            s.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&s, b"KVMKVMKVM\0\0\0");
        assert_eq!(sig.eax, LEAF_TIMING);
        let feat = find(&v, LEAF_KVM_FEATURES, 0);
        assert_eq!(feat.eax & KVM_REQUIRED_FEATURES, KVM_REQUIRED_FEATURES);
        assert_ne!(feat.eax & (1 << 7), 0, "supported features kept");
        let t = find(&v, LEAF_TIMING, 0);
        assert_eq!((t.eax, t.ebx), (2_500_000, 1_000_000));
        assert_eq!(v.iter().filter(|e| e.function == LEAF_KVM_SIGNATURE).count(), 1);
    }

    #[test]
    fn hypervisor_leaves_added_when_kvm_lists_none() {
        let mut h = host();
        h.retain(|e| e.function < LEAF_KVM_SIGNATURE);
        let v = customize(&h, 0, 1, None);
        assert_eq!(find(&v, LEAF_KVM_SIGNATURE, 0).eax, LEAF_KVM_FEATURES);
        assert_eq!(find(&v, LEAF_KVM_FEATURES, 0).eax, KVM_REQUIRED_FEATURES);
        assert!(!v.iter().any(|e| e.function == LEAF_TIMING));
    }

    #[test]
    fn cache_leaf_core_count() {
        let v = customize(&host(), 0, 4, None);
        assert_eq!(find(&v, 4, 0).eax >> 26, 3);
        assert_eq!(find(&v, 4, 0).eax & 0x03ff_ffff, 0x0000_4121);
    }
}
