//! The image's entry points, `_start` (boot CPU) and `_secondary_start` / `_secondary_pen` (the other CPUs), and the stacks.
//!
//! `_start` is the first byte of the image (`link.x`) and carries Linux's
//! zImage header, so a loader treats the image as an ARM Linux kernel: QEMU's
//! Linux loader, U-Boot's `bootz`, and QEMU's ELF loader on `virt` (the same
//! bytes, from the ELF). The loader enters it in Hyp mode with the MMU and
//! data cache off, r0 = 0, r1 = the machine type, r2 = the DTB's physical
//! address (0 from QEMU's ELF loader: the DTB is then at the start of RAM),
//! Linux's ARM boot protocol (Documentation/arch/arm/booting.rst).
//!
//! The image is linked at one virtual address (`__carve_link_base`) and loaded
//! wherever the loader chose (4 KiB aligned). Until the MMU is on, `_start`
//! runs position independent: it computes the offset between where it runs
//! and where it is linked, clears `.bss`, and builds a small boot table in
//! `.bss` that maps the whole image at its link address with 4 KiB pages
//! (read/write/execute) and the 2 MiB block holding the entry code at its
//! own physical address (identity), so the instruction after the MMU turns
//! on is still mapped. It turns the MMU and caches on with that table (Arm
//! ARM B3.10, B2.2: tables in memory, HMAIR0/HTCR/HTTBR, TLBIALLH, stale data
//! cache lines invalidated, HSCTLR.{M,C,I}), jumps to the link address, and
//! calls `hyp_main` on the boot CPU's stack. The monitor's own boot map
//! (`mmu::enable_boot_map`) replaces the boot table at once; the boot table
//! stays, for the other CPUs to turn their MMU on with.
//!
//! Other CPUs start at a physical address too: `_secondary_start`, through
//! PSCI CPU_ON (r0 = the CPU number), or `_secondary_pen`, released from a
//! boot monitor's holding loop by the Versatile Express SYS_FLAGS register
//! (the CPU number from MPIDR and [`CPU_MPIDRS`]). Each turns its MMU on with
//! the boot table, jumps to the link address, switches to the monitor's map
//! ([`HYP_HTTBR`]) and calls `hyp_secondary`.
//!
//! Each CPU gets a 16 KiB Hyp stack above a 4 KiB guard page that the Hyp
//! stage-1 map leaves unmapped, so an overflow is a data abort (reported by the
//! fault path on its own stack) rather than silent corruption of a neighbour.

use core::mem::size_of;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use carve_core::mm::table::hyp_leaf_attrs;
use carve_core::mm::{Attrs, HMAIR0, HTCR_VALUE};

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

/// Level-3 tables in the boot table: each maps 2 MiB of the image (`link.x`
/// checks the image fits: `__carve_image_max`).
const BOOT_L3_TABLES: usize = 4;
/// The boot table's pages: the root (level 1, four entries used), the level-2
/// table of the image's 1 GiB, the level-2 table of the entry code's 1 GiB
/// (when that is another one), then the image's level-3 tables.
const BOOT_TABLE_PAGES: usize = 3 + BOOT_L3_TABLES;

/// The boot translation table, built by `_start` with the MMU off.
#[repr(C, align(4096))]
pub struct BootTables([[u64; 512]; BOOT_TABLE_PAGES]);

/// Built once by `_start` (in `.bss`, cleared first) and never written again:
/// every CPU turns its MMU on with it.
static mut BOOT_TABLES: BootTables = BootTables([[0; 512]; BOOT_TABLE_PAGES]);

/// Where the image runs minus where it is linked (physical minus virtual,
/// modulo 2^32): written by `_start` once the MMU is on.
static PHYS_OFFSET: AtomicU32 = AtomicU32::new(0);

/// HTTBR of the monitor's own map, which every other CPU switches to after
/// turning its MMU on with the boot table (set by `mmu::enable_boot_map`,
/// cleaned to the point of coherency: those CPUs read it with caches off).
pub(super) static HYP_HTTBR: AtomicU64 = AtomicU64::new(0);

/// MPIDR affinity (bits 23:0) of each CPU number, for `_secondary_pen`, which
/// learns its number by looking itself up here (read with caches off: set by
/// [`set_cpu_mpidrs`]). `u32::MAX` matches no CPU.
static CPU_MPIDRS: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];

/// Physical minus virtual address of the image (modulo 2^32).
pub fn phys_offset() -> u32 {
    PHYS_OFFSET.load(Ordering::Relaxed)
}

/// Records the MPIDR affinity of each CPU number (the machine's `/cpus`, in
/// order) for CPUs that find their number through `_secondary_pen`.
pub fn set_cpu_mpidrs(mpidrs: &[u64]) {
    for (slot, &m) in CPU_MPIDRS.iter().zip(mpidrs) {
        slot.store((m & 0x00ff_ffff) as u32, Ordering::Relaxed);
    }
    super::cache::clean_dcache_range_poc((&raw const CPU_MPIDRS) as usize, size_of::<[AtomicU32; MAX_CPUS]>());
}

/// HSCTLR as `_start` leaves it before the MMU is on: MMU, caches and
/// alignment checks off, exceptions taken in A32 state and little-endian; only
/// the bits that are reserved-one (bits 29:28, 23:22, 18, 16, 11, 4:3; Arm
/// ARM B4.1, HSCTLR) are set. HSCTLR has no architectural reset value.
const HSCTLR_BOOT: u32 = 0x30c5_0818;
/// HSCTLR.M, .C and .I: stage-1 translation, data and instruction caches.
const HSCTLR_MMU_CACHES: u32 = (1 << 0) | (1 << 2) | (1 << 12);

/// The low word of a boot-table leaf: Normal memory, read/write, executable
/// (the same attribute bits as carve-core's tables); the high word is 0.
const BOOT_LEAF_ATTRS: u64 = hyp_leaf_attrs(Attrs::ram());
const _: () = assert!(BOOT_LEAF_ATTRS >> 32 == 0, "boot leaves are executable: no upper attributes");
/// Descriptor type bits: table or page (0b11), block (0b01) (Arm ARM B3.6.1).
const DESC_TABLE_OR_PAGE: u32 = 0b11;
const DESC_BLOCK: u32 = 0b01;

/// Whether the early exits may use semihosting (QEMU test builds only: a board has none).
const SEMIHOSTING: u32 = cfg!(feature = "semihosting") as u32;

/// Semihosting: SYS_EXIT_EXTENDED takes a block {reason, subcode}; SYS_EXIT a reason.
const SYS_EXIT: u32 = 0x18;
const SYS_EXIT_EXTENDED: u32 = 0x20;
/// SYS_WRITE0: a NUL-terminated string to the debug console (QEMU: its stderr).
const SYS_WRITE0: u32 = 0x04;
/// ADP_Stopped_ApplicationExit: a normal exit, whose subcode is the status.
const ADP_APPLICATION_EXIT: u32 = 0x2_0026;
/// ADP_Stopped_RunTimeErrorUnknown: SYS_EXIT's failure reason (status 1).
const ADP_RUNTIME_ERROR: u32 = 0x2_0023;

// The entry code. Everything up to `.Lboot_virtual` / `.Lsecondary_virtual`
// runs at the physical address the loader chose: it uses only PC-relative
// addresses (`adr`) and link-time values from literal pools (`ldr rN, =x`,
// read PC-relatively) to which it adds the offset itself.
//
// Registers in `_start`: r4-r6 the loader's r0-r2, r8 the physical address
// of `_start`, r9 the CPU number, r10 physical minus virtual, r11 the boot
// table's physical address.
core::arch::global_asm!(
    r#"
    .section .text.carve.entry, "ax", %progbits
    .arm
    .arch_extension virt
    .arch_extension sec
    .global _start
    .type _start, %function
_start:
    @ The zImage header (Linux's arch/arm/boot/compressed layout): eight
    @ no-ops, a branch over the header, the magic, the image's extent.
    .rept 8
    mov     r0, r0
    .endr
    b       .Lboot                      @ +0x20
    .word   0x016f2818                  @ +0x24 zImage magic
    .word   0                           @ +0x28 start: 0, runs wherever it is loaded
    .word   __carve_file_size           @ +0x2c end: the file's size
    .word   0x04030201                  @ +0x30 little-endian

.Lboot:
    mov     r4, r0                      @ keep the loader's r0-r2 for hyp_main
    mov     r5, r1
    mov     r6, r2

    @ Hyp mode or nothing: every later step relies on HVBAR, HSCTLR and ELR_hyp.
    mrs     r7, cpsr
    and     r7, r7, #0x1f
    cmp     r7, #0x1a
    bne     .Lnot_hyp

    cpsid   aif                         @ no IRQ, FIQ or asynchronous abort in the monitor
    ldr     r7, ={hsctlr_boot}          @ HSCTLR: a known state (MMU, caches, alignment check off)
    mcr     p15, 4, r7, c1, c0, 0
    isb

    @ The boot CPU's stack slot from MPIDR: Aff0 < max_cpus, Aff1 = Aff2 = 0.
    mrc     p15, 0, r7, c0, c0, 5       @ MPIDR
    ubfx    r8, r7, #8, #16             @ Aff2:Aff1
    cmp     r8, #0
    bne     .Lexit_bad_cpu
    and     r9, r7, #0xff               @ Aff0
    cmp     r9, #{max_cpus}
    bhs     .Lexit_bad_cpu

    @ Where the image runs: r10 = physical - virtual, r8 = physical _start.
11: adr     r8, 11b
    ldr     r7, =11b
    sub     r10, r8, r7
    ldr     r8, =_start
    add     r8, r8, r10
    lsl     r7, r8, #20                 @ 4 KiB aligned, or the pages cannot map it
    cmp     r7, #0
    bne     .Lexit_bad_load

    @ The image's whole footprint (.bss and the stacks too) must neither wrap
    @ past 4 GiB nor hold the DTB: clearing .bss would destroy it.
    ldr     r7, =__carve_image_size
    adds    r3, r8, r7
    bcs     .Lexit_bad_load
    sub     r3, r6, r8                  @ DTB - start, unsigned
    cmp     r3, r7
    blo     .Lexit_bad_load

    @ Clear .bss (physical addresses, caches off).
    ldr     r0, =__bss_start
    ldr     r1, =__bss_end
    add     r0, r0, r10
    add     r1, r1, r10
    mov     r2, #0
    mov     r3, #0
1:  cmp     r0, r1
    strdlo  r2, r3, [r0], #8
    blo     1b
    dsb

    ldr     r11, ={boot_tables}
    add     r11, r11, r10
    bl      .Lbuild_boot_tables
    bl      .Lmmu_on
    ldr     r0, =.Lboot_virtual
    bx      r0

.Lboot_virtual:
    @ Running at the link address.
    ldr     r0, ={phys_offset}
    str     r10, [r0]

    @ sp = STACKS + (cpu + 1) * slot_size: the top of this CPU's slot.
    ldr     r7, ={stacks}
    ldr     r0, ={slot_size}
    add     r1, r9, #1
    mla     r7, r1, r0, r7
    mov     sp, r7

    ldr     r0, =carve_hyp_vectors      @ HVBAR: exceptions taken to Hyp mode
    mcr     p15, 4, r0, c12, c0, 0
    isb

    mov     r0, r4
    mov     r1, r5
    mov     r2, r6
    bl      {hyp_main}                  @ never returns
    b       .Lexit_double_fault
    .size _start, . - _start

    @ The boot table at r11 (physical, zeroed): the image at its link address
    @ with pages, the 2 MiB block holding the entry code at its physical
    @ address. In: r8, r10, r11. Clobbers r0-r3, r7, r12.
.Lbuild_boot_tables:
    ldr     r0, =__image_start          @ the link address (2 MiB aligned, link.x)
    mov     r3, #0                      @ every descriptor's high word
    @ root[V >> 30] -> the image's level-2 table
    lsr     r1, r0, #30
    add     r2, r11, #0x1000
    orr     r2, r2, #{desc_table}
    add     r12, r11, r1, lsl #3
    strd    r2, r3, [r12]
    @ level 2: one slot per 2 MiB of the image -> the level-3 tables
    ubfx    r1, r0, #21, #9
    add     r12, r11, #0x1000
    add     r12, r12, r1, lsl #3
    add     r2, r11, #0x3000
    orr     r2, r2, #{desc_table}
    ldr     r7, =__carve_image_size
    add     r7, r7, #0x1f0000           @ + 2 MiB - 1: the slots the image spans
    add     r7, r7, #0xff00
    add     r7, r7, #0xff
    lsr     r7, r7, #21
2:  strd    r2, r3, [r12], #8
    add     r2, r2, #0x1000
    subs    r7, r7, #1
    bne     2b
    @ level 3: one page per image page, virtual V + 4 KiB * k -> physical r8 + 4 KiB * k
    add     r12, r11, #0x3000
    ldr     r7, =__carve_image_size
    lsr     r7, r7, #12
    ldr     r2, ={leaf_attrs}
    orr     r2, r2, #{desc_page}
    orr     r2, r2, r8
3:  strd    r2, r3, [r12], #8
    add     r2, r2, #0x1000
    subs    r7, r7, #1
    bne     3b
    @ The entry code at its own address, unless the image already is (loaded at its link address).
    cmp     r10, #0
    beq     5f
    lsr     r1, r8, #30                 @ root slot of the entry code
    lsr     r0, r0, #30                 @ root slot of the image
    cmp     r0, r1
    addeq   r12, r11, #0x1000           @ the same 1 GiB: the image's level-2 table
    beq     4f
    add     r2, r11, #0x2000
    orr     r2, r2, #{desc_table}
    add     r12, r11, r1, lsl #3
    strd    r2, r3, [r12]
    add     r12, r11, #0x2000
4:  ubfx    r1, r8, #21, #9
    add     r12, r12, r1, lsl #3
    ldr     r2, [r12]                   @ a slot the image's pages use: the two clash
    cmp     r2, #0
    bne     .Lexit_bad_load
    lsr     r2, r8, #21
    lsl     r2, r2, #21
    ldr     r1, ={leaf_attrs}
    orr     r2, r2, r1
    orr     r2, r2, #{desc_block}
    strd    r2, r3, [r12]
5:  dsb                                 @ the table is in memory before a walker reads it
    bx      lr

    @ Turns the MMU and caches on with the table at r11 (physical); this code
    @ is identity mapped by it. Clobbers r0-r3, r7, r12.
.Lmmu_on:
    ldr     r0, ={hmair0}
    mcr     p15, 4, r0, c10, c2, 0      @ HMAIR0: attribute 0 Normal WB, 1 Device
    mov     r0, #0
    mcr     p15, 4, r0, c10, c2, 1      @ HMAIR1
    ldr     r0, ={htcr}
    mcr     p15, 4, r0, c2, c0, 2       @ HTCR: 32-bit VA, walks cacheable inner shareable
    mov     r0, r11
    mov     r1, #0
    mcrr    p15, 4, r0, r1, c2          @ HTTBR
    isb
    mcr     p15, 4, r0, c8, c7, 0       @ TLBIALLH
    dsb
    isb
    @ Stale lines of this CPU's level-1 data cache must not be hit once
    @ HSCTLR.C is set: invalidate it by set/way (B2.2; the boot protocol has
    @ the loader leave outer caches clean).
    mov     r0, #0
    mcr     p15, 2, r0, c0, c0, 0       @ CSSELR: level 1 data
    isb
    mrc     p15, 1, r0, c0, c0, 0       @ CCSIDR
    and     r1, r0, #7
    add     r1, r1, #4                  @ log2(line bytes)
    ubfx    r2, r0, #3, #10             @ ways - 1
    ubfx    r3, r0, #13, #15            @ sets - 1
    clz     r7, r2                      @ the way number's shift (32 - log2 ways)
6:  mov     r12, r3
7:  lsl     r0, r2, r7
    orr     r0, r0, r12, lsl r1
    mcr     p15, 0, r0, c7, c6, 2       @ DCISW
    subs    r12, r12, #1
    bge     7b
    subs    r2, r2, #1
    bge     6b
    dsb
    mov     r0, #0
    mcr     p15, 0, r0, c7, c5, 0       @ ICIALLU
    mcr     p15, 0, r0, c7, c5, 6       @ BPIALL
    dsb
    isb
    mrc     p15, 4, r0, c1, c0, 0       @ HSCTLR
    ldr     r1, ={hsctlr_on}
    orr     r0, r0, r1
    bic     r0, r0, #(1 << 19)          @ WXN clear: permissions as the tables say
    mcr     p15, 4, r0, c1, c0, 0
    isb
    bx      lr

    @ Secondary CPUs: PSCI CPU_ON(mpidr, _secondary_start, cpu) enters here in
    @ Hyp mode with all Hyp registers reset, r0 = context_id = the CPU number.
    .global _secondary_start
    .type _secondary_start, %function
_secondary_start:
    mov     r9, r0
    mov     r4, #0                      @ not from the pen
    b       .Lsecondary

    @ A CPU a boot monitor held until SYS_FLAGS named this address: its
    @ number is where its MPIDR is in CPU_MPIDRS.
    .global _secondary_pen
    .type _secondary_pen, %function
_secondary_pen:
    mrc     p15, 0, r0, c0, c0, 5       @ MPIDR
    bic     r0, r0, #0xff000000         @ the affinity fields
12: adr     r8, 12b
    ldr     r7, =12b
    sub     r10, r8, r7
    ldr     r1, ={cpu_mpidrs}
    add     r1, r1, r10
    mov     r9, #0
8:  ldr     r2, [r1, r9, lsl #2]
    cmp     r2, r0
    beq     9f
    add     r9, r9, #1
    cmp     r9, #{max_cpus}
    blo     8b
    b       .Lpark                      @ not a CPU of the tree: nothing to run
9:  mov     r4, #1                      @ from the pen

.Lsecondary:
    mrs     r7, cpsr
    and     r7, r7, #0x1f
    cmp     r7, #0x1a
    bne     .Lpark
    cpsid   aif
    ldr     r7, ={hsctlr_boot}
    mcr     p15, 4, r7, c1, c0, 0
    isb
    cmp     r9, #{max_cpus}             @ 0 < cpu < max_cpus: 0 is the boot CPU's stack
    bhs     .Lpark
    cmp     r9, #0
    beq     .Lpark
13: adr     r8, 13b
    ldr     r7, =13b
    sub     r10, r8, r7
    ldr     r11, ={boot_tables}
    add     r11, r11, r10
    bl      .Lmmu_on
    ldr     r0, =.Lsecondary_virtual
    bx      r0

.Lsecondary_virtual:
    @ Running at the link address: now the monitor's own map, which maps the image alike.
    ldr     r0, ={hyp_httbr}
    ldrd    r0, r1, [r0]
    mcrr    p15, 4, r0, r1, c2          @ HTTBR
    isb
    mcr     p15, 4, r0, c8, c7, 0       @ TLBIALLH: no boot-table entry stays
    dsb
    isb
    ldr     r7, ={stacks}
    ldr     r0, ={slot_size}
    add     r1, r9, #1
    mla     r7, r1, r0, r7
    mov     sp, r7
    ldr     r0, =carve_hyp_vectors
    mcr     p15, 4, r0, c12, c0, 0
    isb
    mov     r0, r9
    mov     r1, r4
    bl      {hyp_secondary}             @ never returns
    b       .Lexit_double_fault
    .size _secondary_start, . - _secondary_start

    @ Not in Hyp mode: say why in one line if a semihosting host listens,
    @ then stop. A core without the Virtualization Extensions (ID_PFR1
    @ [15:12]) or LPAE (ID_MMFR0 [3:0] >= 5) cannot run carve at all.
.Lnot_hyp:
    mrc     p15, 0, r7, c0, c1, 1       @ ID_PFR1
    ubfx    r7, r7, #12, #4
    cmp     r7, #0
    ldreq   r0, =.Lmsg_no_virt
    ldreq   r1, =.Lblock_no_virt
    beq     .Lexit_early
    mrc     p15, 0, r7, c0, c1, 4       @ ID_MMFR0
    and     r7, r7, #0xf
    cmp     r7, #5
    ldrlo   r0, =.Lmsg_no_lpae
    ldrlo   r1, =.Lblock_no_virt
    blo     .Lexit_early
    ldr     r0, =.Lmsg_not_hyp
    ldr     r1, =.Lblock_not_hyp
    b       .Lexit_early

    @ Exits that cannot log: the CPU state is not fit to run Rust code.
    @ SYS_EXIT_EXTENDED ends QEMU with the subcode as its status; if the
    @ host does not know it, SYS_EXIT ends it with status 1. Without
    @ semihosting (a board), the CPU stops here.
.Lexit_bad_cpu:
    ldr     r0, =.Lmsg_bad_cpu
    ldr     r1, =.Lblock_bad_cpu
    b       .Lexit_early
.Lexit_bad_load:
    ldr     r0, =.Lmsg_bad_load
    ldr     r1, =.Lblock_bad_load
    b       .Lexit_early
    .global carve_exit_double_fault
carve_exit_double_fault:
.Lexit_double_fault:
    mov     r0, #0
    ldr     r1, =.Lblock_double_fault
    @ r0 = the message (or 0), r1 = the exit block, as link addresses: make
    @ them where they are (the MMU may be off).
.Lexit_early:
14: adr     r2, 14b
    ldr     r3, =14b
    sub     r2, r2, r3
    cmp     r0, #0
    addne   r0, r0, r2
    add     r1, r1, r2
    .if {semihosting}
    mov     r7, r1
    movs    r1, r0                      @ the message, if any
    beq     10f
    mov     r0, #{sys_write0}
    svc     0x123456                    @ A32 semihosting trap (QEMU intercepts it)
10: mov     r1, r7
    mov     r0, #{sys_exit_extended}
    svc     0x123456
    ldr     r1, ={adp_runtime_error}
    mov     r0, #{sys_exit}
    svc     0x123456
    .endif
.Lpark:
    wfi                                 @ nothing else to do
    b       .Lpark

    .balign 4
.Lblock_not_hyp:
    .word   {adp_exit}, {not_hyp}
.Lblock_no_virt:
    .word   {adp_exit}, {no_virt}
.Lblock_bad_cpu:
    .word   {adp_exit}, {bad_cpu}
.Lblock_bad_load:
    .word   {adp_exit}, {bad_load}
.Lblock_double_fault:
    .word   {adp_exit}, {double_fault}
.Lmsg_not_hyp:
    .asciz  "carve: not started in Hyp mode: this CPU has the Virtualization Extensions, so the loader left Hyp; start carve as a Linux kernel in Hyp mode (zImage, bootz)\n"
.Lmsg_no_virt:
    .asciz  "carve: this CPU has no Virtualization Extensions (ID_PFR1.Virtualization = 0): carve runs on cores that have them and LPAE (Cortex-A15, A7, A17)\n"
.Lmsg_no_lpae:
    .asciz  "carve: this CPU has no LPAE (ID_MMFR0.VMSA < 5): carve runs on cores with the Virtualization Extensions and LPAE (Cortex-A15, A7, A17)\n"
.Lmsg_bad_cpu:
    .asciz  "carve: the boot CPU's MPIDR is not Aff2 = Aff1 = 0 with Aff0 below the CPUs carve supports\n"
.Lmsg_bad_load:
    .asciz  "carve: bad load: the image must be 4 KiB aligned, below 4 GiB, away from the DTB (r2) and not within its own size of its link address\n"
    .balign 4
    .ltorg
"#,
    hsctlr_boot = const HSCTLR_BOOT,
    hsctlr_on = const HSCTLR_MMU_CACHES,
    hmair0 = const HMAIR0,
    htcr = const HTCR_VALUE,
    leaf_attrs = const BOOT_LEAF_ATTRS as u32,
    desc_table = const DESC_TABLE_OR_PAGE,
    desc_page = const DESC_TABLE_OR_PAGE,
    desc_block = const DESC_BLOCK,
    max_cpus = const MAX_CPUS,
    stacks = sym STACKS,
    slot_size = const SLOT_SIZE,
    boot_tables = sym BOOT_TABLES,
    phys_offset = sym PHYS_OFFSET,
    hyp_httbr = sym HYP_HTTBR,
    cpu_mpidrs = sym CPU_MPIDRS,
    hyp_main = sym crate::hyp_main,
    hyp_secondary = sym crate::hyp_secondary,
    semihosting = const SEMIHOSTING,
    sys_write0 = const SYS_WRITE0,
    sys_exit = const SYS_EXIT,
    sys_exit_extended = const SYS_EXIT_EXTENDED,
    adp_exit = const ADP_APPLICATION_EXIT,
    adp_runtime_error = const ADP_RUNTIME_ERROR,
    not_hyp = const ExitCode::NotHyp as u8,
    no_virt = const ExitCode::NoVirtualization as u8,
    bad_cpu = const ExitCode::BadCpu as u8,
    bad_load = const ExitCode::BadLoad as u8,
    double_fault = const ExitCode::DoubleFault as u8,
);
