//! Guest physical memory layout of a carapace microVM (x86_64).

/// GDT of the boot CPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// A zeroed IDT (interrupts stay off until the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// Initial stack pointer of the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Linux boot_params ("zero page"); its address goes in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Level-4 page table (identity map).
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Maximum size of the kernel command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the extended BIOS data area: the MP table lives here; RAM below it.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte after conventional memory (640 KiB).
pub const EBDA_END: u64 = 0xa0000;
/// Kernel image is loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap: guest RAM never covers [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xd000_0000;
/// End of the 32-bit MMIO gap.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of one virtio-mmio slot.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Maximum number of virtio-mmio slots.
pub const VIRTIO_MMIO_MAX_SLOTS: u64 = 32;
/// First GSI used by virtio-mmio devices (slot i uses VIRTIO_IRQ_BASE + i).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Highest GSI of the in-kernel IOAPIC.
pub const IOAPIC_MAX_IRQ: u32 = 23;
/// GSI of the i8042 keyboard interrupt.
pub const I8042_IRQ: u32 = 1;
/// GSI of the first serial port.
pub const SERIAL_IRQ: u32 = 4;
/// Address of the IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Address of the local APIC.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS (three pages just below the IOAPIC / end of the 32-bit space).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// KVM's identity-map page (real-mode support), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

const _: () =
    assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000);

/// Base guest physical address of virtio-mmio slot `slot`.
pub fn virtio_mmio_base(slot: u64) -> u64 {
    MMIO_GAP_START + slot * VIRTIO_MMIO_SLOT_SIZE
}

/// GSI of virtio-mmio slot `slot`.
pub fn virtio_irq(slot: u32) -> u32 {
    VIRTIO_IRQ_BASE + slot
}

/// Guest RAM ranges for `mem_bytes` of memory: below the MMIO gap, the rest above 4 GiB.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_bytes - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
    }

    #[test]
    fn large_memory_skips_the_gap() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)]);
        let total: u64 = r.iter().map(|(_, l)| l).sum();
        assert_eq!(total, 4 << 30);
    }

    #[test]
    fn slots_and_irqs() {
        assert_eq!(virtio_mmio_base(0), 0xd000_0000);
        assert_eq!(virtio_mmio_base(1), 0xd000_1000);
        assert_eq!(virtio_irq(0), 5);
        assert_eq!(virtio_irq(1), 6);
    }

    #[test]
    fn low_structures_do_not_overlap() {
        let areas = [
            (BOOT_GDT_START, 4 * 8),
            (BOOT_IDT_START, 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, EBDA_END - EBDA_START),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in areas.iter().skip(i + 1) {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:?} overlaps {b:?}");
            }
        }
    }
}
