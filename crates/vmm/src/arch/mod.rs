//! x86_64 specifics: boot CPU state, page tables, GDT, CPUID, MP table, zero page.

pub mod boot_cpu;
pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod mptable;
pub mod paging;
