//! The architecture layer: everything that touches the CPU (ARMv7-A with the Virtualization Extensions).
//!
//! - [`entry`]: `_start` / `_secondary_start` and the per-CPU stacks.
//! - [`vectors`]: the HVBAR table, the guest trap frame, the fatal-exception report.
//! - [`regs`]: the Hyp registers and TLB operations aarch32-cpu lacks.
//! - [`cache`]: barriers, cache and TLB maintenance.
//! - [`mmu`]: translation-table memory, the boot Hyp stage-1 map (the DTB in the fixmap) and the linear map.
//! - [`guest`]: the virtualization registers, entering a guest, firmware PSCI calls.
//! - [`smp`]: starting and stopping the other CPUs (PSCI, or a boot monitor's SYS_FLAGS).
//! - [`timer`]: the Hyp physical timer, the monitor's own deadline on each CPU.
//! - [`phys`]: reading loader-provided memory (the DTB) through the fixmap.
//! - [`heap`]: the global allocator.
//! - [`uart`]: PL011 and 8250/16550 drivers; [`logger`]: the global defmt logger (semihosting or a UART).
//! - [`memmap`]: the page records over the vmemmap window, translation-table memory from the buddy.
//! - [`memops`]: bulk copy, zero and record fill with LDM/STM.
//! - [`semihost`]: exit statuses and how the run ends (semihosting, or [`power`]: the board's power-off).
//!
//! `unsafe` lives only in this module, each block with its `// SAFETY:` reason.

pub mod cache;
pub mod entry;
pub mod gic;
pub mod guest;
pub mod heap;
pub mod logger;
pub mod memmap;
pub mod memops;
pub mod mmu;
pub mod phys;
pub mod power;
pub mod regs;
pub mod semihost;
pub mod smp;
pub mod timer;
pub mod uart;
pub mod vectors;

use core::arch::asm;

use aarch32_cpu::register::{CntPct, Cntfrq, IdMmfr0, IdPfr1, Midr, Mpidr, SysRegRead};

/// CPSR.M of the mode the CPU runs in (Arm ARM B1.3.1): 0x1a is Hyp.
pub fn cpsr_mode() -> u32 {
    let cpsr: u32;
    // SAFETY: reading CPSR has no side effect.
    unsafe { asm!("mrs {}, cpsr", out(reg) cpsr, options(nomem, nostack, preserves_flags)) };
    cpsr & 0x1f
}

/// ELR_hyp: where an exception taken to Hyp mode returns to.
pub fn elr_hyp() -> u32 {
    let elr: u32;
    // SAFETY: reading ELR_hyp from Hyp mode (a banked-register MRS) has no side effect.
    unsafe { asm!(".arch_extension virt", "mrs {}, elr_hyp", out(reg) elr, options(nomem, nostack, preserves_flags)) };
    elr
}

/// SPSR_hyp: the CPSR of the context an exception to Hyp mode interrupted.
pub fn spsr_hyp() -> u32 {
    let spsr: u32;
    // SAFETY: reading the current mode's SPSR has no side effect.
    unsafe { asm!("mrs {}, spsr", out(reg) spsr, options(nomem, nostack, preserves_flags)) };
    spsr
}

/// MIDR, the main ID register (implementer, part number, revision).
pub fn midr() -> u32 {
    <Midr as SysRegRead>::read_raw()
}

/// What carve needs of a core, read by feature rather than by part number.
#[derive(Clone, Copy, Debug)]
pub struct CpuFeatures {
    /// ID_PFR1.Virtualization, bits [15:12] non-zero (Arm ARM B4.1.95).
    pub virtualization: bool,
    /// ID_MMFR0.VMSA support, bits [3:0] at least 0b0101: VMSAv7 with the
    /// Long-descriptor format, LPAE (Arm ARM B4.1.89).
    pub lpae: bool,
    pub id_pfr1: u32,
    pub id_mmfr0: u32,
}

/// This core's features.
pub fn cpu_features() -> CpuFeatures {
    let (id_pfr1, id_mmfr0) = (IdPfr1::read().0, IdMmfr0::read().0);
    CpuFeatures { virtualization: (id_pfr1 >> 12) & 0xf != 0, lpae: id_mmfr0 & 0xf >= 5, id_pfr1, id_mmfr0 }
}

/// A name for the core MIDR describes, for the log only: features, not the
/// name, decide whether carve runs ([`cpu_features`]).
pub fn cpu_name(midr: u32) -> &'static str {
    match (midr >> 24, (midr >> 4) & 0xfff) {
        (0x41, 0xc07) => "Cortex-A7",
        (0x41, 0xc0d) => "Cortex-A12",
        (0x41, 0xc0e) => "Cortex-A17",
        (0x41, 0xc0f) => "Cortex-A15",
        _ => "an Armv7-A core",
    }
}

/// MPIDR, the multiprocessor affinity register.
pub fn mpidr() -> u32 {
    Mpidr::read().0
}

/// The physical counter (CNTPCT), readable at PL2 whatever CNTHCTL says.
pub fn counter() -> u64 {
    CntPct::read().0
}

/// The counter's frequency in Hz (CNTFRQ, set by firmware; QEMU: 62.5 MHz).
pub fn counter_hz() -> u32 {
    Cntfrq::read().0
}

/// `[start, end)` addresses of the image and its parts, from `link.x`.
#[derive(Clone, Copy, Debug, defmt::Format)]
pub struct ImageLayout {
    /// The whole image, first byte of `.text` to the page-aligned end of the stacks.
    pub image: (usize, usize),
    /// Code: mapped read-only, executable.
    pub text: (usize, usize),
    /// Constants and unwind tables: read-only, execute-never.
    pub rodata: (usize, usize),
    /// Initialised data: read-write, execute-never.
    pub data: (usize, usize),
    /// Zeroed data (heap, table pool): read-write, execute-never.
    pub bss: (usize, usize),
    /// Stacks with their guard pages: read-write, execute-never, guards unmapped.
    pub stacks: (usize, usize),
}

extern "C" {
    static __image_start: u8;
    static __image_end: u8;
    static __text_start: u8;
    static __text_end: u8;
    static __rodata_start: u8;
    static __rodata_end: u8;
    static __data_start: u8;
    static __data_end: u8;
    static __bss_start: u8;
    static __bss_end: u8;
    static __stacks_start: u8;
    static __stacks_end: u8;
}

/// The image's layout, from the linker's symbols.
pub fn image_layout() -> ImageLayout {
    // Only the symbols' addresses are taken; nothing is read through them.
    let a = |p: *const u8| p as usize;
    ImageLayout {
        image: (a(&raw const __image_start), a(&raw const __image_end)),
        text: (a(&raw const __text_start), a(&raw const __text_end)),
        rodata: (a(&raw const __rodata_start), a(&raw const __rodata_end)),
        data: (a(&raw const __data_start), a(&raw const __data_end)),
        bss: (a(&raw const __bss_start), a(&raw const __bss_end)),
        stacks: (a(&raw const __stacks_start), a(&raw const __stacks_end)),
    }
}

/// Takes an HVC from Hyp mode and back (HVC #[`vectors::SELFTEST_HVC`], vector
/// +0x08): proves that HVBAR, the trap frame's save and restore (the code guest
/// traps at +0x14 share), and `eret` work.
/// The handler inverts r0; r1-r3 and r12 must come back unchanged.
pub fn trap_selftest() -> bool {
    const PROBE: [u32; 5] = [0x1234_5678, 0xa1a1_a1a1, 0xb2b2_b2b2, 0xc3c3_c3c3, 0xd4d4_d4d4];
    let (r0, r1, r2, r3, r12): (u32, u32, u32, u32, u32);
    // SAFETY: HVC from Hyp mode enters HVBAR+0x08 (set by `_start`); the stub
    // saves and restores every register, the handler changes only the saved r0,
    // and `eret` resumes after the HVC in Hyp mode. The exception pushes below SP
    // (AAPCS has no red zone), so the stack is used: no `nostack`.
    unsafe {
        asm!(
            ".arch_extension virt",
            "hvc #{imm}",
            imm = const vectors::SELFTEST_HVC,
            inlateout("r0") PROBE[0] => r0,
            inlateout("r1") PROBE[1] => r1,
            inlateout("r2") PROBE[2] => r2,
            inlateout("r3") PROBE[3] => r3,
            inlateout("r12") PROBE[4] => r12,
        )
    };
    [r0, r1, r2, r3, r12] == [!PROBE[0], PROBE[1], PROBE[2], PROBE[3], PROBE[4]]
}

/// The physical address of an address `va` in the image: where the loader
/// put that byte (the image runs at its link address, [`entry`]).
pub fn image_pa(va: usize) -> u64 {
    u64::from((va as u32).wrapping_add(entry::phys_offset()))
}

/// The physical address of `_secondary_start`, for PSCI CPU_ON: a CPU starts with its MMU off.
pub fn secondary_entry() -> u32 {
    extern "C" {
        fn _secondary_start();
    }
    image_pa(_secondary_start as *const () as usize) as u32
}

/// The physical address of `_secondary_pen`, for a boot monitor's SYS_FLAGS release.
pub fn secondary_pen_entry() -> u32 {
    extern "C" {
        fn _secondary_pen();
    }
    image_pa(_secondary_pen as *const () as usize) as u32
}
