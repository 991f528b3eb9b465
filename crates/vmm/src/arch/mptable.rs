//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its CPUs,
//! the IOAPIC and the routing of ISA interrupts.

use vm_memory::{Bytes, GuestAddress};

use crate::error::{MpTableError, VmmError};
use crate::layout::{APIC_ADDR, EBDA_END, EBDA_START, IOAPIC_ADDR, IOAPIC_MAX_IRQ};
use crate::memory::GuestMemoryMmap;

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const SPEC_REV: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
/// Family 6 (signature only; the guest reads the real one from CPUID).
const CPU_SIGNATURE: u32 = 0x600;
/// FPU + APIC present.
const CPU_FEATURES: u32 = 0x201;
const ISA_BUS_ID: u8 = 0;

fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

/// IOAPIC ID: the first one after the vCPUs' APIC IDs.
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus.saturating_add(1)
}

/// Size in bytes of the structures for `vcpus` CPUs.
pub fn mptable_size(vcpus: u8) -> usize {
    FLOATING_POINTER_SIZE
        + HEADER_SIZE
        + PROCESSOR_ENTRY_SIZE * usize::from(vcpus)
        + SMALL_ENTRY_SIZE * (2 + (IOAPIC_MAX_IRQ as usize + 1) + 2)
}

/// Builds the floating pointer structure followed by the configuration table, to be placed at
/// guest physical address `base`.
pub fn build_mptable(vcpus: u8, base: u64) -> Result<Vec<u8>, VmmError> {
    if vcpus == 0 {
        return Err(MpTableError::NoVcpus.into());
    }
    let table_addr = u32::try_from(base + FLOATING_POINTER_SIZE as u64)
        .map_err(|source| MpTableError::Above4G { base, source })?;
    let ioapic = ioapic_id(vcpus);

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpus {
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION]);
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.push(flags);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, CPU_ENABLED]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for irq in 0..=IOAPIC_MAX_IRQ as u8 {
        // Flags 0: polarity and trigger conform to the bus (ISA: edge, active high).
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            ISA_BUS_ID,
            irq,
            ioapic,
            irq,
        ]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, ISA_BUS_ID, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let table_len = u16::try_from(HEADER_SIZE + entries.len()).map_err(MpTableError::TooLarge)?;
    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"CARAPACE");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDR.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    table.extend_from_slice(&entries);
    let sum = checksum(&table);
    if let Some(c) = table.get_mut(7) {
        *c = sum;
    }

    let mut fp = Vec::with_capacity(FLOATING_POINTER_SIZE);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(SPEC_REV);
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // features: configuration table present, no IMCR
    let sum = checksum(&fp);
    if let Some(c) = fp.get_mut(10) {
        *c = sum;
    }

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table at the start of the EBDA.
pub fn write_mptable(mem: &GuestMemoryMmap, vcpus: u8) -> Result<(), VmmError> {
    let bytes = build_mptable(vcpus, EBDA_START)?;
    if EBDA_START + bytes.len() as u64 > EBDA_END {
        return Err(MpTableError::BeyondEbda { len: bytes.len() }.into());
    }
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|source| VmmError::GuestMemoryWrite { what: "MP table", source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_are_zero() {
        for vcpus in [1u8, 2, 7, 32] {
            let t = build_mptable(vcpus, EBDA_START).unwrap();
            assert_eq!(t.len(), mptable_size(vcpus));
            assert_eq!(sum(&t[..16]), 0);
            assert_eq!(sum(&t[16..]), 0);
        }
    }

    #[test]
    fn layout_matches_the_spec() {
        let t = build_mptable(2, EBDA_START).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap());
        assert_eq!(u64::from(ptr), EBDA_START + 16);
        assert_eq!(t[8], 1);
        let h = &t[16..];
        assert_eq!(&h[0..4], b"PCMP");
        assert_eq!(usize::from(u16::from_le_bytes([h[4], h[5]])), h.len());
        let count = u16::from_le_bytes([h[34], h[35]]);
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        assert_eq!(u32::from_le_bytes(h[36..40].try_into().unwrap()), APIC_ADDR);
        // processors: APIC IDs 0 and 1, only the first is the bootstrap CPU
        let p0 = &h[44..64];
        let p1 = &h[64..84];
        assert_eq!((p0[0], p0[1], p0[3]), (ENTRY_PROCESSOR, 0, 3));
        assert_eq!((p1[0], p1[1], p1[3]), (ENTRY_PROCESSOR, 1, 1));
        // bus, then IOAPIC with its address
        assert_eq!(&h[84..92], b"\x01\x00ISA   ");
        let io = &h[92..100];
        assert_eq!((io[0], io[1], io[3]), (ENTRY_IOAPIC, 3, 1));
        assert_eq!(u32::from_le_bytes(io[4..8].try_into().unwrap()), IOAPIC_ADDR);
        // ISA IRQ 5 (first virtio device) goes to IOAPIC pin 5
        let irq5 = &h[100 + 5 * 8..100 + 6 * 8];
        assert_eq!(irq5, &[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0, 0, 5, 3, 5]);
    }

    #[test]
    fn fits_in_the_ebda_for_the_largest_vm() {
        assert!(mptable_size(32) as u64 <= EBDA_END - EBDA_START);
    }

    #[test]
    fn zero_vcpus_is_an_error() {
        assert!(build_mptable(0, EBDA_START).is_err());
    }
}
