//! Global descriptor table of the boot CPU: descriptors and the KVM segments built from them.

use kvm_bindings::kvm_segment;

/// Flags of a 64-bit code segment (present, DPL 0, code execute/read accessed, L=1, G=1).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a data segment (present, DPL 0, read/write accessed, D/B=1, G=1).
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of a 64-bit TSS (present, busy).
pub const TSS_FLAGS: u16 = 0x808b;

/// Selector index of the code segment.
pub const CODE_INDEX: u16 = 1;
/// Selector index of the data segment.
pub const DATA_INDEX: u16 = 2;
/// Selector index of the TSS.
pub const TSS_INDEX: u16 = 3;

/// Encodes one 8-byte segment descriptor.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT: null, code, data, TSS.
pub fn boot_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(CODE64_FLAGS, 0, 0xfffff),
        gdt_entry(DATA_FLAGS, 0, 0xfffff),
        gdt_entry(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// The KVM segment register value that loading selector `index` of a GDT holding `entry` gives.
pub fn segment_from_entry(entry: u64, index: u16) -> kvm_segment {
    let bit = |shift: u32| ((entry >> shift) & 1) as u8;
    let raw_limit = ((entry >> 32) & 0x000f_0000) as u32 | (entry & 0xffff) as u32;
    let g = bit(55);
    kvm_segment {
        base: ((entry >> 32) & 0xff00_0000) | ((entry >> 16) & 0x00ff_ffff),
        limit: if g == 1 { (raw_limit << 12) | 0xfff } else { raw_limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_encoding() {
        // Well-known encoding of a flat 64-bit kernel code segment.
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let e = gdt_entry(DATA_FLAGS, 0x1234_5678, 0xabcde);
        let s = segment_from_entry(e, 2);
        assert_eq!(s.base, 0x1234_5678);
        assert_eq!(s.limit, 0xabcd_efff, "4 KiB granularity");
        assert_eq!(s.selector, 16);
        let byte_granular = segment_from_entry(gdt_entry(DATA_FLAGS & !0x8000, 0, 0xabcde), 2);
        assert_eq!((byte_granular.limit, byte_granular.g), (0xabcde, 0));
    }

    #[test]
    fn code_segment_fields() {
        let s = segment_from_entry(boot_gdt()[1], CODE_INDEX);
        assert_eq!(s.selector, 8);
        assert_eq!(s.type_, 0xb);
        assert_eq!((s.present, s.s, s.l, s.g, s.db, s.dpl), (1, 1, 1, 1, 0, 0));
        assert_eq!(s.limit, 0xffff_ffff);
        let t = segment_from_entry(boot_gdt()[3], TSS_INDEX);
        assert_eq!((t.type_, t.s, t.selector), (0xb, 0, 24));
    }
}
