//! The image's entry points, `_start` (boot CPU) and `_secondary_start` (PSCI CPU_ON), and the stacks.
//!
//! `_start` is the first instruction of the image (`link.x`). A loader enters
//! it in Hyp mode with the MMU and data cache off: QEMU starting an ELF with
//! `-kernel` (r2 = 0, the DTB at the start of RAM) or U-Boot's `bootm`
//! (r2 = the DTB's physical address), following Linux's ARM boot protocol.
//!
//! Each CPU gets a 16 KiB Hyp stack above a 4 KiB guard page that the Hyp
//! stage-1 map leaves unmapped, so an overflow is a data abort (reported by the
//! fault path on its own stack) rather than silent corruption of a neighbour.

use core::mem::size_of;

use super::semihost::ExitCode;

/// The most CPUs the monitor runs on (one stack each).
pub const MAX_CPUS: usize = 8;
/// Each CPU's Hyp stack.
pub const STACK_SIZE: usize = 16 * 1024;
/// The unmapped page below each stack.
pub const GUARD_SIZE: usize = 4096;

/// One CPU's stack: a guard page, then the stack (which grows down towards the guard).
#[repr(C, align(4096))]
pub struct StackSlot {
    guard: [u8; GUARD_SIZE],
    stack: [u8; STACK_SIZE],
}

const SLOT_SIZE: usize = size_of::<StackSlot>();
const _: () = assert!(SLOT_SIZE == GUARD_SIZE + STACK_SIZE);

impl StackSlot {
    const ZERO: Self = Self { guard: [0; GUARD_SIZE], stack: [0; STACK_SIZE] };
}

/// The per-CPU Hyp stacks. Only the entry assembly touches them, through their address.
/// `.carve.stacks` goes to the NOLOAD `.stacks` output section (`link.x`), which
/// `_start` does not clear.
#[link_section = ".carve.stacks"]
static mut STACKS: [StackSlot; MAX_CPUS] = [StackSlot::ZERO; MAX_CPUS];

/// The stack the fatal-exception path switches to (`vectors.rs`), so a fault
/// caused by a bad or overflowed Hyp stack can still be reported.
#[link_section = ".carve.stacks"]
pub(super) static mut FAULT_STACK: StackSlot = StackSlot::ZERO;

/// `[start, end)` of the usable part (no guard page) of each stack the monitor
/// maps: every CPU's stack, then the fault stack.
pub fn stack_ranges() -> [(usize, usize); MAX_CPUS + 1] {
    let base = (&raw const STACKS) as usize;
    let mut ranges = [(0, 0); MAX_CPUS + 1];
    for (cpu, range) in ranges.iter_mut().take(MAX_CPUS).enumerate() {
        let slot = base + cpu * SLOT_SIZE;
        *range = (slot + GUARD_SIZE, slot + SLOT_SIZE);
    }
    let fault = (&raw const FAULT_STACK) as usize;
    ranges[MAX_CPUS] = (fault + GUARD_SIZE, fault + SLOT_SIZE);
    ranges
}

/// HSCTLR as `_start` leaves it: MMU, caches and alignment checks off,
/// exceptions taken in A32 state and little-endian; only the bits that are
/// reserved-one (bits 29:28, 23:22, 18, 16, 11, 4:3; Arm ARM B4.1, HSCTLR) are
/// set. HSCTLR has no architectural reset value, so nothing can be assumed.
const HSCTLR_BOOT: u32 = 0x30c5_0818;

/// Semihosting: SYS_EXIT_EXTENDED takes a block {reason, subcode}; SYS_EXIT a reason.
const SYS_EXIT: u32 = 0x18;
const SYS_EXIT_EXTENDED: u32 = 0x20;
/// ADP_Stopped_ApplicationExit: a normal exit, whose subcode is the status.
const ADP_APPLICATION_EXIT: u32 = 0x2_0026;
/// ADP_Stopped_RunTimeErrorUnknown: SYS_EXIT's failure reason (status 1).
const ADP_RUNTIME_ERROR: u32 = 0x2_0023;

// The entry code. Registers on entry to `_start`: r0 = 0, r1 = machine type
// (unused on DT platforms), r2 = DTB physical address or 0; they reach
// `hyp_main(r0, r1, r2)` unchanged. The code is position dependent only
// through the literal pool (`ldr rN, =symbol`): the image runs where it is linked.
core::arch::global_asm!(
    r#"
    .section .text.carve.entry, "ax", %progbits
    .arm
    .arch_extension virt
    .global _start
    .type _start, %function
_start:
    mov     r4, r0                      @ keep the loader's r0-r2 for hyp_main
    mov     r5, r1
    mov     r6, r2

    @ Hyp mode or nothing: every later step relies on HVBAR, HSCTLR and ELR_hyp.
    mrs     r7, cpsr
    and     r7, r7, #0x1f
    cmp     r7, #0x1a
    bne     .Lexit_not_hyp

    cpsid   aif                         @ no IRQ, FIQ or asynchronous abort in the monitor
    ldr     r7, ={hsctlr_boot}          @ HSCTLR: a known state (MMU, caches, alignment check off)
    mcr     p15, 4, r7, c1, c0, 0
    isb

    @ The boot CPU's stack slot from MPIDR: Aff0 < max_cpus, Aff1 = Aff2 = 0.
    mrc     p15, 0, r7, c0, c0, 5       @ MPIDR
    ubfx    r8, r7, #8, #16             @ Aff2:Aff1
    cmp     r8, #0
    bne     .Lexit_bad_cpu
    and     r8, r7, #0xff               @ Aff0
    cmp     r8, #{max_cpus}
    bhs     .Lexit_bad_cpu

    @ sp = STACKS + (cpu + 1) * slot_size: the top of this CPU's slot.
    ldr     r7, ={stacks}
    ldr     r9, ={slot_size}
    add     r10, r8, #1
    mla     r7, r10, r9, r7
    mov     sp, r7

    @ Clear .bss (only the boot CPU runs _start; the stacks are outside .bss).
    ldr     r0, =__bss_start
    ldr     r1, =__bss_end
    mov     r2, #0
    mov     r3, #0
1:  cmp     r0, r1
    strdlo  r2, r3, [r0], #8
    blo     1b
    dsb

    ldr     r0, =carve_hyp_vectors      @ HVBAR: exceptions taken to Hyp mode
    mcr     p15, 4, r0, c12, c0, 0
    isb

    mov     r0, r4
    mov     r1, r5
    mov     r2, r6
    bl      {hyp_main}                  @ never returns
    b       .Lexit_double_fault
    .size _start, . - _start

    @ Secondary CPUs: PSCI CPU_ON(mpidr, _secondary_start, cpu) enters here in
    @ Hyp mode with all Hyp registers reset, r0 = context_id = the CPU number.
    .global _secondary_start
    .type _secondary_start, %function
_secondary_start:
    mov     r4, r0
    mrs     r7, cpsr
    and     r7, r7, #0x1f
    cmp     r7, #0x1a
    bne     .Lexit_not_hyp
    cpsid   aif
    ldr     r7, ={hsctlr_boot}
    mcr     p15, 4, r7, c1, c0, 0
    isb
    cmp     r4, #{max_cpus}             @ 0 < cpu < max_cpus: 0 is the boot CPU's stack
    bhs     .Lexit_bad_cpu
    cmp     r4, #0
    beq     .Lexit_bad_cpu
    ldr     r7, ={stacks}
    ldr     r9, ={slot_size}
    add     r10, r4, #1
    mla     r7, r10, r9, r7
    mov     sp, r7
    ldr     r0, =carve_hyp_vectors
    mcr     p15, 4, r0, c12, c0, 0
    isb
    mov     r0, r4
    bl      {hyp_secondary}             @ never returns
    b       .Lexit_double_fault
    .size _secondary_start, . - _secondary_start

    @ Exits that cannot log: the CPU state is not fit to run Rust code.
    @ SYS_EXIT_EXTENDED ends QEMU with the subcode as its status; if the
    @ host does not know it, SYS_EXIT ends it with status 1.
.Lexit_not_hyp:
    adr     r1, .Lblock_not_hyp
    b       .Lexit_early
.Lexit_bad_cpu:
    adr     r1, .Lblock_bad_cpu
    b       .Lexit_early
    .global carve_exit_double_fault
carve_exit_double_fault:
.Lexit_double_fault:
    adr     r1, .Lblock_double_fault
.Lexit_early:
    mov     r0, #{sys_exit_extended}
    svc     0x123456                    @ A32 semihosting trap (QEMU intercepts it)
    ldr     r1, ={adp_runtime_error}
    mov     r0, #{sys_exit}
    svc     0x123456
2:  wfi                                 @ no semihosting host: nothing else to do
    b       2b

    .balign 4
.Lblock_not_hyp:
    .word   {adp_exit}, {not_hyp}
.Lblock_bad_cpu:
    .word   {adp_exit}, {bad_cpu}
.Lblock_double_fault:
    .word   {adp_exit}, {double_fault}
    .ltorg
"#,
    hsctlr_boot = const HSCTLR_BOOT,
    max_cpus = const MAX_CPUS,
    stacks = sym STACKS,
    slot_size = const SLOT_SIZE,
    hyp_main = sym crate::hyp_main,
    hyp_secondary = sym crate::hyp_secondary,
    sys_exit = const SYS_EXIT,
    sys_exit_extended = const SYS_EXIT_EXTENDED,
    adp_exit = const ADP_APPLICATION_EXIT,
    adp_runtime_error = const ADP_RUNTIME_ERROR,
    not_hyp = const ExitCode::NotHyp as u8,
    bad_cpu = const ExitCode::BadCpu as u8,
    double_fault = const ExitCode::DoubleFault as u8,
);
