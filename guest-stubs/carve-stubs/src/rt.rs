//! The stubs' runtime: entry, exception vectors, data-abort accounting, secondary CPUs, panics.
//!
//! `_start` runs where carve enters a kernel (IPA base + 0x10000, SVC mode,
//! MMU and caches off, r2 = DTB). It checks that it runs at its link address
//! (the stubs are not position-independent: a wrong place is reported with
//! PC-relative code and the guest powered off), points VBAR at the vectors,
//! clears `.bss` (which holds the stacks), sets the SVC, Abort and Undefined
//! stacks and calls the stub's `stub_main(dtb)` (see [`entry!`](crate::entry)).
//!
//! Data aborts: the isolation probe touches addresses that must be refused
//! and expects the monitor to inject a data abort at the guest's own vector
//! (DFSR and DFAR set, LR_abt = the faulting instruction + 8, Arm ARM
//! B1.9.8). Only the two touch instructions ([`touch_read`], [`touch_write`])
//! may abort, and only while a touch is under way: the handler records DFSR,
//! DFAR and the PC, and resumes after the touch. Any other exception is a
//! failure: it is reported on the console and the guest powered off.

use core::arch::global_asm;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::{abi, hvc, mmu, say, Hex};

global_asm!(
    r#"
    .arm
    .arch_extension virt
    .section .text._start, "ax", %progbits
    .global _start
    .type _start, %function
_start:
    cpsid aif
    @ Are we where we were linked? (r0-r2 hold the boot arguments: keep them.)
    adr r4, _start
    ldr r5, =_start
    cmp r4, r5
    bne 9f
    mov r8, r2
    bl __carve_cpu_setup
    @ Clear .bss (it holds the stacks, so no stack yet).
    ldr r4, =__bss_start
    ldr r5, =__bss_end
    mov r6, #0
1:  cmp r4, r5
    strlo r6, [r4], #4
    blo 1b
    cps #0x17
    ldr sp, =__carve_abt_stack_top
    cps #0x1b
    ldr sp, =__carve_und_stack_top
    cps #0x12
    ldr sp, =__carve_irq_stack_top
    cps #0x13
    ldr sp, =__carve_svc_stack_top
    mov r0, r8
    bl stub_main
    b .
9:  @ Loaded elsewhere: only PC-relative addresses are right. CONSOLE_WRITE the
    @ message (its runtime address is its IPA: the MMU is off), then SYSTEM_OFF.
    adr r1, 8f
    ldr r2, 7f
    movw r0, #{console_write_lo}
    movt r0, #{console_write_hi}
    hvc #0
    movw r0, #{system_off_lo}
    movt r0, #{system_off_hi}
    hvc #0
    b .
7:  .word 6f - 8f
8:  .ascii "stub: FAIL: not loaded at its link address (0x40010000): the stubs need guest RAM at 0x40000000\n"
6:
    .balign 4
    .ltorg

    @ Per-CPU setup: vectors at VBAR (SCTLR.V = 0), exceptions in ARM state (SCTLR.TE = 0).
    .section .text.__carve_cpu_setup, "ax", %progbits
__carve_cpu_setup:
    ldr r4, =__carve_vectors
    mcr p15, 0, r4, c12, c0, 0
    mrc p15, 0, r4, c1, c0, 0
    bic r4, r4, #(1 << 13)
    bic r4, r4, #(1 << 30)
    mcr p15, 0, r4, c1, c0, 0
    isb
    bx lr
    .ltorg

    @ A secondary vCPU started by PSCI CPU_ON: r0 = context.
    .section .text.carve_secondary_start, "ax", %progbits
    .global carve_secondary_start
    .type carve_secondary_start, %function
carve_secondary_start:
    cpsid aif
    mov r8, r0
    bl __carve_cpu_setup
    cps #0x17
    ldr sp, =__carve_abt2_stack_top
    cps #0x1b
    ldr sp, =__carve_und2_stack_top
    cps #0x12
    ldr sp, =__carve_irq2_stack_top
    cps #0x13
    ldr sp, =__carve_svc2_stack_top
    mov r0, r8
    bl carve_secondary_main
    b .
    .ltorg

    .section .text.__carve_vectors, "ax", %progbits
    .balign 32
    .global __carve_vectors
__carve_vectors:
    b __carve_exc_reset
    b __carve_exc_undef
    b __carve_exc_svc
    b __carve_exc_pabt
    b __carve_exc_dabt
    b __carve_exc_hyp
    b __carve_exc_irq
    b __carve_exc_fiq

__carve_exc_dabt:
    push {{r0-r3, r12, lr}}
    mrc p15, 0, r0, c5, c0, 0   @ DFSR
    mrc p15, 0, r1, c6, c0, 0   @ DFAR
    sub r2, lr, #8              @ the aborted instruction
    mrs r3, spsr
    bl carve_data_abort         @ returns only for an expected abort
    pop {{r0-r3, r12, lr}}
    subs pc, lr, #4             @ resume after the aborted instruction

__carve_exc_reset:
    mov r0, #0
    b __carve_unexpected
__carve_exc_undef:
    mov r0, #1
    b __carve_unexpected
__carve_exc_svc:
    mov r0, #2
    b __carve_unexpected
__carve_exc_pabt:
    mov r0, #3
    b __carve_unexpected
__carve_exc_hyp:
    mov r0, #5
    b __carve_unexpected
__carve_exc_irq:
    @ An IRQ: the handler a stub installed (`set_irq_handler`), on the IRQ stack.
    sub lr, lr, #4
    push {{r0-r3, r12, lr}}
    ldr r0, =carve_irq_handler
    ldr r0, [r0]
    cmp r0, #0
    beq 1f
    blx r0
    pop {{r0-r3, r12, lr}}
    movs pc, lr
1:  pop {{r0-r3, r12, lr}}
    add lr, lr, #4
    mov r0, #6
    b __carve_unexpected
__carve_exc_fiq:
    mov r0, #7
    b __carve_unexpected
__carve_unexpected:
    @ Never returns: report from SVC mode, whose stack is valid on either CPU.
    mov r1, lr
    mrs r2, spsr
    mrs r3, cpsr
    cps #0x13
    bic sp, sp, #7
    bl carve_unexpected_exception
    b .

    @ The only instructions allowed to abort (see touch_read / touch_write).
    .section .text.carve_touch, "ax", %progbits
    .global carve_touch_read
    .type carve_touch_read, %function
carve_touch_read:
    mov r1, #0
    .global carve_touch_read_insn
carve_touch_read_insn:
    ldr r1, [r0]
    mov r0, r1
    bx lr
    .global carve_touch_write
    .type carve_touch_write, %function
carve_touch_write:
    .global carve_touch_write_insn
carve_touch_write_insn:
    str r1, [r0]
    bx lr

    @ Access operations that may abort anywhere inside [carve_ops_start, carve_ops_end):
    @ op(addr = r0, value = r1) -> r0. One access each, of every shape: sizes,
    @ writeback, doubleword and multiple transfers (the last give no valid syndrome).
    .section .text.carve_ops, "ax", %progbits
    .balign 4
    .global carve_ops_start
carve_ops_start:
    .global carve_op_table
carve_op_table:
    b 0f
    b 1f
    b 2f
    b 3f
    b 4f
    b 5f
    b 6f
    b 7f
    b 8f
    b 9f
    b 10f
    b 11f
0:  ldrb r0, [r0]
    bx lr
1:  ldrh r0, [r0]
    bx lr
2:  ldr r0, [r0]
    bx lr
3:  strb r1, [r0]
    bx lr
4:  strh r1, [r0]
    bx lr
5:  str r1, [r0]
    bx lr
6:  ldr r2, [r0], #4
    mov r0, r2
    bx lr
7:  str r1, [r0, #4]!
    bx lr
8:  ldrd r2, r3, [r0]
    mov r0, r2
    bx lr
9:  mov r2, r1
    mov r3, r1
    strd r2, r3, [r0]
    bx lr
10: ldm r0, {{r2, r3}}
    mov r0, r2
    bx lr
11: mov r2, r1
    mov r3, r1
    stm r0, {{r2, r3}}
    bx lr
    .global carve_ops_end
carve_ops_end:

    .section .bss.carve_stacks, "aw", %nobits
    .balign 8
    .space 0x8000
__carve_svc_stack_top:
    .space 0x1000
__carve_abt_stack_top:
    .space 0x1000
__carve_und_stack_top:
    .space 0x2000
__carve_svc2_stack_top:
    .space 0x1000
__carve_abt2_stack_top:
    .space 0x1000
__carve_und2_stack_top:
    .space 0x1000
__carve_irq_stack_top:
    .space 0x1000
__carve_irq2_stack_top:
"#,
    console_write_lo = const abi::CONSOLE_WRITE & 0xffff,
    console_write_hi = const abi::CONSOLE_WRITE >> 16,
    system_off_lo = const abi::SYSTEM_OFF & 0xffff,
    system_off_hi = const abi::SYSTEM_OFF >> 16,
);

extern "C" {
    fn carve_touch_read(addr: u32) -> u32;
    fn carve_touch_write(addr: u32, value: u32);
    fn carve_secondary_start();
    static carve_touch_read_insn: u8;
    static carve_touch_write_insn: u8;
    static carve_ops_start: u8;
    static carve_ops_end: u8;
    static __image_start: u8;
    static __image_end: u8;
}

/// The IRQ handler `__carve_exc_irq` calls (0: an IRQ is unexpected).
#[no_mangle]
#[allow(non_upper_case_globals)] // named for the assembly
static carve_irq_handler: AtomicU32 = AtomicU32::new(0);

/// Installs `f` as the IRQ handler (IRQ mode, its own stack; r0-r3, r12 and LR saved around it).
pub fn set_irq_handler(f: extern "C" fn()) {
    carve_irq_handler.store(f as usize as u32, Ordering::Release);
}

/// Defines the stub's entry: `carve_stubs::entry!(main)` with `fn main(dtb: u32) -> !`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        /// Called by `_start` with the DTB's IPA (r2 at entry).
        #[no_mangle]
        pub extern "C" fn stub_main(dtb: u32) -> ! {
            let main: fn(u32) -> ! = $main;
            main(dtb)
        }
    };
}

/// The stub's image in guest RAM: `[start, end)`, `.bss` and stacks included.
pub fn image() -> (u32, u32) {
    (&raw const __image_start as u32, &raw const __image_end as u32)
}

// --- data aborts ---------------------------------------------------------------------

/// One data abort taken at the stub's vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abort {
    pub dfsr: u32,
    pub dfar: u32,
    /// The aborted instruction (LR_abt - 8).
    pub pc: u32,
}

/// Whether a touch is under way (aborts at the touch instructions are expected).
static EXPECTING: AtomicBool = AtomicBool::new(false);
/// Aborts taken at a touch instruction, ever.
static ABORTS: AtomicU32 = AtomicU32::new(0);
static LAST_DFSR: AtomicU32 = AtomicU32::new(0);
static LAST_DFAR: AtomicU32 = AtomicU32::new(0);
static LAST_PC: AtomicU32 = AtomicU32::new(0);

/// What became of a touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Touch {
    /// A data abort was taken at the touch instruction.
    Refused(Abort),
    /// The access completed (a read gives the value read; a write 0).
    Done(u32),
}

fn read_insn() -> u32 {
    &raw const carve_touch_read_insn as u32
}

fn write_insn() -> u32 {
    &raw const carve_touch_write_insn as u32
}

/// The abort handler's Rust half (called from the Abort-mode vector).
#[no_mangle]
extern "C" fn carve_data_abort(dfsr: u32, dfar: u32, pc: u32, spsr: u32) {
    let in_ops = (&raw const carve_ops_start as u32..&raw const carve_ops_end as u32).contains(&pc);
    if EXPECTING.load(Ordering::Acquire) && (pc == read_insn() || pc == write_insn() || in_ops) {
        LAST_DFSR.store(dfsr, Ordering::Relaxed);
        LAST_DFAR.store(dfar, Ordering::Relaxed);
        LAST_PC.store(pc, Ordering::Relaxed);
        // Only this CPU's main code and this handler touch the count: no atomic RMW needed.
        ABORTS.store(ABORTS.load(Ordering::Relaxed).wrapping_add(1), Ordering::Release);
        return;
    }
    say!(
        "stub: FAIL: unexpected data abort at PC {}: DFSR {:#x}, DFAR {}, SPSR {:#x}",
        Hex(pc.into()),
        dfsr,
        Hex(dfar.into()),
        spsr
    );
    hvc::system_off()
}

fn touch(f: impl FnOnce() -> u32) -> Touch {
    let before = ABORTS.load(Ordering::Acquire);
    EXPECTING.store(true, Ordering::Release);
    let value = f();
    EXPECTING.store(false, Ordering::Release);
    if ABORTS.load(Ordering::Acquire) == before {
        return Touch::Done(value);
    }
    Touch::Refused(Abort {
        dfsr: LAST_DFSR.load(Ordering::Relaxed),
        dfar: LAST_DFAR.load(Ordering::Relaxed),
        pc: LAST_PC.load(Ordering::Relaxed),
    })
}

/// Reads the word at virtual address `addr` with one `ldr`, which may abort.
pub fn touch_read(addr: u32) -> Touch {
    // SAFETY: `carve_touch_read` is a leaf that reads one word at `addr`. If
    // the access aborts, the handler above resumes after the load with every
    // register intact, so the call returns normally either way. Reading a
    // device register could have side effects: that is what the probe tests
    // the monitor never lets happen.
    touch(|| unsafe { carve_touch_read(addr) })
}

/// Writes `value` to virtual address `addr` with one `str`, which may abort.
pub fn touch_write(addr: u32, value: u32) -> Touch {
    // SAFETY: as for `touch_read`; the probe only writes where its own RAM is
    // not (it checks its DT first), so a write that is not refused hits
    // memory or a device the guest was never given, which the test reports.
    touch(|| unsafe {
        carve_touch_write(addr, value);
        0
    })
}

/// How many access shapes [`touch_op`] has.
pub const OPS: u32 = 12;
/// What each [`touch_op`] shape is, by number.
pub const OP_NAMES: [&str; OPS as usize] =
    ["ldrb", "ldrh", "ldr", "strb", "strh", "str", "ldr post-index", "str pre-index!", "ldrd", "strd", "ldm", "stm"];

/// One access of shape `op` (see [`OP_NAMES`]) at `addr` (stores write `value`), which may abort.
pub fn touch_op(op: u32, addr: u32, value: u32) -> Touch {
    let entry = &raw const carve_ops_start as u32 + 4 * (op % OPS);
    // SAFETY: each entry of the op table branches to a leaf of one access (and
    // moves) that takes r0, r1, clobbers r2, r3 and returns r0, as the AAPCS
    // allows; an abort inside the table resumes after the aborted instruction.
    let f: extern "C" fn(u32, u32) -> u32 = unsafe { core::mem::transmute(entry as usize) };
    touch(|| f(addr, value))
}

/// The instructions a touch's abort must be reported at: (read, write).
pub fn touch_instructions() -> (u32, u32) {
    (read_insn(), write_insn())
}

// --- other exceptions ------------------------------------------------------------------

const EXCEPTIONS: [&str; 8] =
    ["reset", "undefined instruction", "SVC", "prefetch abort", "data abort", "hyp trap", "IRQ", "FIQ"];

#[no_mangle]
extern "C" fn carve_unexpected_exception(kind: u32, lr: u32, spsr: u32, cpsr: u32) -> ! {
    let name = EXCEPTIONS.get(kind as usize).copied().unwrap_or("?");
    let (fsr, far) = if kind == 3 { (ifsr(), ifar()) } else { (0, 0) };
    say!(
        "stub: FAIL: unexpected {} exception: LR {}, SPSR {:#x}, CPSR at entry {:#x}, IFSR {:#x}, IFAR {}",
        name,
        Hex(lr.into()),
        spsr,
        cpsr,
        fsr,
        Hex(far.into())
    );
    hvc::system_off()
}

fn ifsr() -> u32 {
    let v: u32;
    // SAFETY: reading IFSR has no side effects.
    unsafe { core::arch::asm!("mrc p15, 0, {v}, c5, c0, 1", v = out(reg) v, options(nomem, nostack)) };
    v
}

fn ifar() -> u32 {
    let v: u32;
    // SAFETY: reading IFAR has no side effects.
    unsafe { core::arch::asm!("mrc p15, 0, {v}, c6, c0, 2", v = out(reg) v, options(nomem, nostack)) };
    v
}

/// CPSR.M, the current mode.
pub fn cpsr_mode() -> u32 {
    let v: u32;
    // SAFETY: reading CPSR has no side effects.
    unsafe { core::arch::asm!("mrs {v}, cpsr", v = out(reg) v, options(nomem, nostack)) };
    v & 0x1f
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    say!("stub: FAIL: panic: {}", info);
    hvc::system_off()
}

// --- secondary CPUs ---------------------------------------------------------------------

/// What a secondary vCPU saw when it ran (written by it, read by the boot CPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondaryRun {
    /// How many times a secondary entered [`secondary_entry`].
    pub runs: u32,
    /// r0 at entry: CPU_ON's context.
    pub context: u32,
    /// CPSR.M at entry.
    pub mode: u32,
    /// Whether its MMU was on at entry.
    pub mmu_on: bool,
    /// CPU_OFF's status if it returned (it must not); `None` if it did not return.
    pub cpu_off_returned: Option<i32>,
}

static SEC_RUNS: AtomicU32 = AtomicU32::new(0);
static SEC_CONTEXT: AtomicU32 = AtomicU32::new(0);
static SEC_MODE: AtomicU32 = AtomicU32::new(0);
static SEC_OFF: AtomicU32 = AtomicU32::new(0);
static SEC_OFF_RETURNED: AtomicBool = AtomicBool::new(false);

/// The run a secondary may end: it calls CPU_OFF once this reaches its run number.
static SEC_RELEASE: AtomicU32 = AtomicU32::new(0);
/// How long a secondary waits to be released before turning itself off anyway.
const SEC_WAIT_S: u64 = 10;

#[no_mangle]
extern "C" fn carve_secondary_main(context: u32) -> ! {
    let mode = cpsr_mode() | if mmu::enabled() { 0x100 } else { 0 };
    SEC_CONTEXT.store(context, Ordering::Relaxed);
    SEC_MODE.store(mode, Ordering::Relaxed);
    // Published last, with release ordering: the boot CPU polls the count.
    let run = SEC_RUNS.load(Ordering::Relaxed).wrapping_add(1);
    SEC_RUNS.store(run, Ordering::Release);
    if context == RESET_CONTEXT {
        // The smpreset stub: this vCPU, not vCPU 0, restarts the guest.
        let r = hvc::system_reset();
        crate::say!("secondary: SYSTEM_RESET returned {}, FAIL", r);
        hvc::halt()
    }
    // Stay on until the boot CPU has looked at us (or long enough).
    let deadline = crate::timer::cntvct() + SEC_WAIT_S * u64::from(crate::timer::cntfrq());
    while SEC_RELEASE.load(Ordering::Acquire) < run && crate::timer::cntvct() < deadline {}
    let r = hvc::cpu_off();
    SEC_OFF.store(r as u32, Ordering::Relaxed);
    SEC_OFF_RETURNED.store(true, Ordering::Release);
    hvc::halt()
}

/// The CPU_ON context that makes a secondary ask for SYSTEM_RESET at once (the smpreset stub).
pub const RESET_CONTEXT: u32 = 0x5e5e_7e57;

/// The IPA a CPU_ON should start a secondary at: it records its run, waits for
/// [`release_secondary`] and turns itself off.
pub fn secondary_entry() -> u32 {
    carve_secondary_start as *const () as usize as u32
}

/// Lets the secondary of run `run` (1 for the first) call CPU_OFF.
pub fn release_secondary(run: u32) {
    SEC_RELEASE.store(run, Ordering::Release);
}

/// What secondaries reported so far.
pub fn secondary_run() -> SecondaryRun {
    let runs = SEC_RUNS.load(Ordering::Acquire);
    let mode = SEC_MODE.load(Ordering::Relaxed);
    SecondaryRun {
        runs,
        context: SEC_CONTEXT.load(Ordering::Relaxed),
        mode: mode & 0x1f,
        mmu_on: mode & 0x100 != 0,
        cpu_off_returned: SEC_OFF_RETURNED.load(Ordering::Acquire).then(|| SEC_OFF.load(Ordering::Relaxed) as i32),
    }
}

// --- the device tree ------------------------------------------------------------------

/// The most a guest DTB may take (carve reserves 2 MiB for it, hyp/core/src/vm/boot.rs).
pub const DTB_MAX: usize = 2 << 20;

/// Calls `f` for each `reg` range of the DTB at `dtb` (see [`crate::fdt`]).
///
/// The blob is read in place and only during the call: a stub that later
/// writes over its RAM (where the DTB lies) keeps what it needs from here.
pub fn read_dt(dtb: u32, f: impl FnMut(crate::fdt::Reg<'_>)) -> Result<(), crate::fdt::Error> {
    with_fdt(dtb, |fdt| fdt.for_each_reg(f))
}

/// Whether the DTB at `dtb` holds the bytes `needle` anywhere (a word in `bootargs`, say).
pub fn dtb_holds(dtb: u32, needle: &[u8]) -> bool {
    // SAFETY: the DTB's header is in guest RAM at `dtb` (the boot protocol); its size is read from it.
    let header = unsafe { core::slice::from_raw_parts(dtb as *const u8, 40) };
    let Ok(size) = crate::fdt::totalsize(header) else { return false };
    // SAFETY: the whole blob lies in guest RAM, `size` bytes from `dtb`.
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, size.min(DTB_MAX)) };
    blob.windows(needle.len()).any(|w| w == needle)
}

/// The base of the console UART the DTB at `dtb` gives (its first node named
/// `pl011@...`: with several guests carve's emulated SBSA UART).
pub fn console_uart(dtb: u32) -> Result<Option<u32>, crate::fdt::Error> {
    let mut base = None;
    read_dt(dtb, |r| {
        if base.is_none() && r.node.starts_with("pl011@") && r.size > 0 {
            base = Some(r.base as u32);
        }
    })?;
    Ok(base)
}

/// The initrd `/chosen` of the DTB at `dtb` names, as `(start, end)`.
pub fn initrd(dtb: u32) -> Result<Option<(u64, u64)>, crate::fdt::Error> {
    with_fdt(dtb, |fdt| fdt.initrd())
}

/// Runs `f` on the DTB at `dtb`, read in place during the call (see [`read_dt`]).
fn with_fdt<R>(
    dtb: u32,
    f: impl FnOnce(&crate::fdt::Fdt<'_>) -> Result<R, crate::fdt::Error>,
) -> Result<R, crate::fdt::Error> {
    if dtb % 8 != 0 {
        return Err(crate::fdt::Error::BadHeader);
    }
    // SAFETY: r2 at entry is the DTB's IPA in our RAM (the boot protocol);
    // reading the 8-byte header there is reading our own memory.
    let header = unsafe { core::slice::from_raw_parts(dtb as *const u8, 8) };
    let total = crate::fdt::totalsize(header)?;
    if total > DTB_MAX || (dtb as usize).checked_add(total).is_none() {
        return Err(crate::fdt::Error::BadHeader);
    }
    // SAFETY: as above, `total` bytes (at most 2 MiB, not wrapping) that the
    // monitor wrote for us; nothing writes them while the slice lives (this call).
    let blob = unsafe { core::slice::from_raw_parts(dtb as *const u8, total) };
    f(&crate::fdt::Fdt::new(blob)?)
}

/// Why [`ram_bank`] found no bank.
pub enum BankError {
    /// The DTB at this address could not be read.
    Dtb(u32, crate::fdt::Error),
    /// The DTB at this address has no non-empty memory node.
    NoMemory(u32),
}

impl core::fmt::Display for BankError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Dtb(at, e) => write!(f, "DTB at {}: {}", crate::Hex((*at).into()), e),
            Self::NoMemory(at) => write!(f, "no memory node in the DTB at {}", crate::Hex((*at).into())),
        }
    }
}

/// The guest's RAM: the first non-empty memory node of the DTB at `dtb`, as `(base, size)`.
pub fn ram_bank(dtb: u32) -> Result<(u64, u64), BankError> {
    let mut bank = None;
    read_dt(dtb, |r| {
        if r.is_memory && r.size > 0 && bank.is_none() {
            bank = Some((r.base, r.size));
        }
    })
    .map_err(|e| BankError::Dtb(dtb, e))?;
    bank.ok_or(BankError::NoMemory(dtb))
}
