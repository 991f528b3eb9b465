//! Identity page tables for entering the kernel in 64-bit mode (first 1 GiB, 2 MiB pages).

use vm_memory::{Bytes, GuestAddress};

use crate::error::VmmError;
use crate::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::memory::GuestMemoryMmap;

const PRESENT_WRITABLE: u64 = 0x3;
const HUGE_PAGE: u64 = 0x80;
const ENTRIES: u64 = 512;

/// The three tables (PML4, PDPT, PD), as 512 entries each.
pub fn identity_tables() -> [Vec<u64>; 3] {
    let mut pml4 = vec![0u64; ENTRIES as usize];
    let mut pdpt = vec![0u64; ENTRIES as usize];
    pml4[0] = PDPTE_START | PRESENT_WRITABLE;
    pdpt[0] = PDE_START | PRESENT_WRITABLE;
    let pd = (0..ENTRIES).map(|i| (i << 21) | HUGE_PAGE | PRESENT_WRITABLE).collect();
    [pml4, pdpt, pd]
}

/// Writes the tables to guest memory; returns the CR3 value.
pub fn write_identity_tables(mem: &GuestMemoryMmap) -> Result<u64, VmmError> {
    let [pml4, pdpt, pd] = identity_tables();
    for (addr, table) in [(PML4_START, pml4), (PDPTE_START, pdpt), (PDE_START, pd)] {
        let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| VmmError::GuestMemoryWrite { what: "page tables", source })?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    /// Walks the tables the way the MMU does for a 2 MiB page.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
        let read = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).ok();
        let pml4e = read(cr3 + ((va >> 39) & 0x1ff) * 8)?;
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = read((pml4e & !0xfff) + ((va >> 30) & 0x1ff) * 8)?;
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = read((pdpte & !0xfff) + ((va >> 21) & 0x1ff) * 8)?;
        if pde & 1 == 0 || pde & HUGE_PAGE == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) | (va & 0x1f_ffff))
    }

    #[test]
    fn first_gib_is_identity_mapped() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = write_identity_tables(&mem).unwrap();
        for va in [0u64, 0x7000, 0x100_0000, 0x1234_5678, (1 << 30) - 1] {
            assert_eq!(translate(&mem, cr3, va), Some(va));
        }
        assert_eq!(translate(&mem, cr3, 1 << 30), None);
    }
}
