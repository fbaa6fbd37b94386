//! The Hyp vector table (HVBAR), the guest trap frame, and the fatal-exception report.
//!
//! Arm ARM (DDI 0406C.d) B1.8.1, the Hyp mode vector table: +0x04 undefined
//! instruction, +0x08 SVC or HVC, +0x0C/+0x10 prefetch/data abort, each taken
//! from Hyp mode itself; +0x14 "Hyp trap", every exception routed to Hyp from a
//! guest; +0x18/+0x1C IRQ/FIQ. (QEMU 7.2, measured: an HVC executed in Hyp mode
//! arrives at +0x08 with HSR.EC = 0x12.) The table must be 32-byte aligned
//! (HVBAR bits [4:0] are reserved).
//!
//! Two paths:
//! - **Fatal** (+0x00, +0x04, +0x0C, +0x10, +0x1C): the monitor itself went
//!   wrong. The stub parks the interrupted SP in HTPIDR, switches to the fault
//!   stack (the Hyp stack may be what broke), saves r0-r12 and LR, and calls
//!   [`hyp_fault`], which logs HSR, HDFAR, HIFAR, ELR_hyp and the registers and
//!   exits with [`ExitCode::HypException`]. A second fatal exception before that
//!   exit ends the run at once, without a log ([`ExitCode::DoubleFault`]).
//! - **Trap** (+0x14, +0x18, and +0x08 whose SVC/HVC is a deliberate instruction
//!   on a good stack): save every register the monitor's code can change into a
//!   [`TrapFrame`] on the Hyp stack, call [`hyp_trap`], restore, `eret`. A trap
//!   from a guest goes to the handler the `vm` layer installed with
//!   [`set_guest_trap_handler`], with the HSR as a [`Syndrome`] (carve-core
//!   decodes it); the architecture layer never calls up into `vm` by name. Hyp mode
//!   has no banked LR: it uses LR_usr (Arm ARM B1.3.2), so the guest's LR_usr is
//!   saved and restored with r0-r12. ELR_hyp and SPSR_hyp (the guest's return
//!   state) are saved too, because the handler may take another exception to Hyp
//!   mode. SPSR_hyp is written with `msr spsr_cxsf`: the banked form
//!   `msr spsr_hyp` is UNPREDICTABLE in Hyp mode (UNDEF on QEMU). An SVC from Hyp
//!   mode is never right (semihosting's `svc 0x123456` does not get here: QEMU
//!   intercepts it), so [`hyp_trap`] reports it like a fatal exception.

use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use aarch32_cpu::register::{Hdfar, Hifar, Hsr};
use carve_core::syndrome::{Class, Syndrome};

use super::entry::{StackSlot, FAULT_STACK};
use super::semihost::{self, ExitCode};

/// Registers of the interrupted context, as the +0x08/+0x14/+0x18 entries save them.
#[repr(C)]
#[derive(Clone, Debug)]
pub struct TrapFrame {
    /// r0-r12 as the guest sees them (for a guest in FIQ mode, r8-r12 are the
    /// User-mode ones: the FIQ-banked copies are untouched by Hyp code).
    pub r: [u32; 13],
    /// LR_usr, which Hyp mode uses as its own LR.
    pub lr_usr: u32,
    /// ELR_hyp: the guest's return address.
    pub elr: u32,
    /// SPSR_hyp: the guest's CPSR at the trap.
    pub spsr: u32,
}
const _: () = assert!(core::mem::size_of::<TrapFrame>() == 64);

/// Which vector a [`TrapFrame`] came through.
#[derive(Clone, Copy, PartialEq, Eq, Debug, defmt::Format)]
#[repr(u32)]
pub enum TrapKind {
    /// +0x14: a trap from a guest (HSR says which).
    Trap = 0,
    /// +0x18: a physical IRQ (routed to Hyp by HCR.IMO, or taken in Hyp mode).
    Irq = 1,
    /// +0x08: SVC or HVC executed in Hyp mode.
    HypCall = 2,
}

impl TrapKind {
    /// What the log calls it.
    fn name(self) -> &'static str {
        match self {
            Self::Trap => "guest trap",
            Self::Irq => "IRQ",
            Self::HypCall => "SVC/HVC",
        }
    }
}

/// Registers saved by the fatal path, on the fault stack.
#[repr(C)]
pub struct FaultFrame {
    /// r0-r12 at the exception.
    pub r: [u32; 13],
    /// LR (LR_usr: Hyp mode's LR) at the exception.
    pub lr: u32,
    /// SP_hyp at the exception.
    pub sp: u32,
    /// Which vector: the offset in the table divided by 4.
    pub vector: u32,
}
const _: () = assert!(core::mem::size_of::<FaultFrame>() == 64);

/// How many fatal exceptions are being reported; more than one ends the run without a log.
static FAULT_DEPTH: AtomicU32 = AtomicU32::new(0);

/// The HVC immediate of the boot self-test: an HVC with it, executed in Hyp
/// mode, returns with r0 inverted (see [`hyp_trap`] and `arch::trap_selftest`).
/// It runs the same save, call, restore and `eret` code as a guest trap.
pub const SELFTEST_HVC: u16 = 0xca7e;

/// A handler of traps from guests.
pub type GuestTrapHandler = fn(&mut TrapFrame, Syndrome);

/// The address of the [`GuestTrapHandler`] the `vm` layer installed (0: none yet).
static GUEST_TRAP: AtomicUsize = AtomicUsize::new(0);

/// Installs the handler of traps from guests. The `vm` layer calls it before
/// it starts any guest (and so before any other CPU enters one: PSCI CPU_ON
/// makes what the caller wrote visible to the CPU it starts).
pub fn set_guest_trap_handler(handler: GuestTrapHandler) {
    GUEST_TRAP.store(handler as usize, Ordering::Relaxed);
}

/// A handler of physical IRQs taken while a guest runs (HCR.IMO set).
pub type GuestIrqHandler = fn(&mut TrapFrame);

/// The address of the [`GuestIrqHandler`] the `vm` layer installed (0: none).
static GUEST_IRQ: AtomicUsize = AtomicUsize::new(0);

/// Installs the handler of physical IRQs taken from guests, before any guest runs with HCR.IMO set.
pub fn set_guest_irq_handler(handler: GuestIrqHandler) {
    GUEST_IRQ.store(handler as usize, Ordering::Relaxed);
}

/// The installed handler, if any.
#[inline(always)]
fn guest_trap_handler() -> Option<GuestTrapHandler> {
    match GUEST_TRAP.load(Ordering::Relaxed) {
        0 => None,
        // SAFETY: a non-zero value was stored by `set_guest_trap_handler` from a
        // `GuestTrapHandler`, and a function pointer and `usize` have one size here.
        addr => Some(unsafe { core::mem::transmute::<usize, GuestTrapHandler>(addr) }),
    }
}

core::arch::global_asm!(
    r#"
    .section .text.carve.vectors, "ax", %progbits
    .arm
    .arch_extension virt
    .balign 32
    .global carve_hyp_vectors
carve_hyp_vectors:
    b       .Lfault_reset               @ +0x00 not used in the Hyp table
    b       .Lfault_undef               @ +0x04 undefined instruction, from Hyp mode
    b       .Lhyp_call                  @ +0x08 SVC or HVC, from Hyp mode
    b       .Lfault_pabt                @ +0x0C prefetch abort, from Hyp mode
    b       .Lfault_dabt                @ +0x10 data abort, from Hyp mode
    b       .Ltrap                      @ +0x14 Hyp trap
    b       .Lirq                       @ +0x18 IRQ
    b       .Lfault_fiq                 @ +0x1C FIQ (never routed to Hyp)

    @ Fatal: HTPIDR := interrupted SP, switch to the fault stack, build a FaultFrame.
    .macro carve_fault vector
    mcr     p15, 4, sp, c13, c0, 2
    ldr     sp, ={fault_stack} + {slot_size}
    sub     sp, sp, #8                  @ FaultFrame.sp, FaultFrame.vector
    push    {{r0-r12, lr}}
    mov     r0, #\vector
    b       .Lfault_common
    .endm

.Lfault_reset:  carve_fault 0
.Lfault_undef:  carve_fault 1
.Lfault_pabt:   carve_fault 3
.Lfault_dabt:   carve_fault 4
.Lfault_fiq:    carve_fault 7

.Lfault_common:
    str     r0, [sp, #60]               @ FaultFrame.vector
    mrc     p15, 4, r1, c13, c0, 2
    str     r1, [sp, #56]               @ FaultFrame.sp
    ldr     r2, ={fault_depth}          @ a fault while reporting a fault: stop now
    ldr     r3, [r2]
    add     r3, r3, #1
    str     r3, [r2]
    cmp     r3, #1
    bne     carve_exit_double_fault
    mov     r0, sp
    bl      {hyp_fault}                 @ logs and exits
    b       carve_exit_double_fault

    @ Trap, IRQ, Hyp call: TrapFrame = r0-r12, LR_usr, ELR_hyp, SPSR_hyp on the Hyp stack.
.Lhyp_call:
    sub     sp, sp, #8
    push    {{r0-r12, lr}}
    mov     r1, #{kind_hyp_call}
    b       .Ltrap_common
.Ltrap:
    sub     sp, sp, #8
    push    {{r0-r12, lr}}
    mov     r1, #{kind_trap}
    b       .Ltrap_common
.Lirq:
    sub     sp, sp, #8
    push    {{r0-r12, lr}}
    mov     r1, #{kind_irq}
.Ltrap_common:
    mrs     r2, elr_hyp
    mrs     r3, spsr                    @ SPSR_hyp: the current mode's SPSR
    str     r2, [sp, #56]
    str     r3, [sp, #60]
    mov     r0, sp                      @ hyp_trap(frame, kind)
    mov     r4, sp                      @ r4 is callee-saved: the frame survives the call
    bic     r5, r4, #7                  @ AAPCS: 8-byte aligned SP at the call
    mov     sp, r5
    bl      {hyp_trap}
    mov     sp, r4
    ldr     r2, [sp, #56]
    ldr     r3, [sp, #60]
    msr     elr_hyp, r2
    msr     spsr_cxsf, r3               @ not `msr spsr_hyp`: UNPREDICTABLE in Hyp mode
    pop     {{r0-r12, lr}}
    add     sp, sp, #8
    eret
    .ltorg
"#,
    fault_stack = sym FAULT_STACK,
    slot_size = const core::mem::size_of::<StackSlot>(),
    fault_depth = sym FAULT_DEPTH,
    hyp_fault = sym hyp_fault,
    hyp_trap = sym hyp_trap,
    kind_trap = const TrapKind::Trap as u32,
    kind_irq = const TrapKind::Irq as u32,
    kind_hyp_call = const TrapKind::HypCall as u32,
);

/// The name of a Hyp vector, from its offset divided by 4.
fn vector_name(vector: u32) -> &'static str {
    match vector {
        0 => "reset (unused Hyp vector)",
        1 => "undefined instruction",
        3 => "prefetch abort",
        4 => "data abort",
        7 => "FIQ",
        _ => "unknown",
    }
}

/// Reports an exception taken from Hyp mode itself and ends the run.
///
/// Called by the fatal stub on the fault stack with the saved registers.
extern "C" fn hyp_fault(frame: &FaultFrame) -> ! {
    let hsr = Syndrome::from_raw(Hsr::read().raw_value());
    defmt::error!("hyp: {} in Hyp mode at ELR_hyp={=u32:#010x}", vector_name(frame.vector), super::elr_hyp());
    defmt::error!(
        "hyp: HSR={=u32:#010x} (EC={=u8:#04x} IL={=u8} ISS={=u32:#09x}) HDFAR={=u32:#010x} HIFAR={=u32:#010x}",
        hsr.raw(),
        hsr.ec(),
        u8::from(hsr.il32()),
        hsr.iss(),
        Hdfar::read().0,
        Hifar::read().0
    );
    defmt::error!("hyp: SPSR_hyp={=u32:#010x} SP={=u32:#010x} LR={=u32:#010x}", super::spsr_hyp(), frame.sp, frame.lr);
    log_registers(&frame.r);
    semihost::exit(ExitCode::HypException)
}

/// Logs r0-r12, four to a line.
fn log_registers(r: &[u32; 13]) {
    defmt::error!("hyp: r0-r3   {=u32:#010x} {=u32:#010x} {=u32:#010x} {=u32:#010x}", r[0], r[1], r[2], r[3]);
    defmt::error!("hyp: r4-r7   {=u32:#010x} {=u32:#010x} {=u32:#010x} {=u32:#010x}", r[4], r[5], r[6], r[7]);
    defmt::error!("hyp: r8-r11  {=u32:#010x} {=u32:#010x} {=u32:#010x} {=u32:#010x}", r[8], r[9], r[10], r[11]);
    defmt::error!("hyp: r12     {=u32:#010x}", r[12]);
}

/// CPSR.M for Hyp mode.
const MODE_HYP: u32 = 0x1a;

/// Handles a trap, IRQ or Hyp call taken to Hyp mode; returning resumes the interrupted code.
///
/// A trap from a guest goes to the `vm` layer's handler. From Hyp mode the
/// only call handled is the boot self-test (HVC #[`SELFTEST_HVC`], answered
/// by inverting r0); an SVC or another HVC from Hyp mode is a monitor bug:
/// logged, and the run ends with [`ExitCode::HypException`]. Anything else
/// (an IRQ, a guest trap before a handler is installed) is logged with the
/// whole frame and ends the run with [`ExitCode::UnhandledTrap`].
extern "C" fn hyp_trap(frame: &mut TrapFrame, kind: u32) {
    // A guest's physical IRQ first: the virtual timer's path is the hot one.
    if kind == TrapKind::Irq as u32 && frame.spsr & 0x1f != MODE_HYP {
        let addr = GUEST_IRQ.load(Ordering::Relaxed);
        if addr != 0 {
            // SAFETY: a non-zero value was stored by `set_guest_irq_handler` from a
            // `GuestIrqHandler`, and a function pointer and `usize` have one size here.
            let handler = unsafe { core::mem::transmute::<usize, GuestIrqHandler>(addr) };
            handler(frame);
            return;
        }
    }
    let kind = match kind {
        1 => TrapKind::Irq,
        2 => TrapKind::HypCall,
        _ => TrapKind::Trap,
    };
    let hsr = Syndrome::from_raw(Hsr::read().raw_value());
    let from_hyp = frame.spsr & 0x1f == MODE_HYP;
    if kind == TrapKind::Trap && !from_hyp {
        if let Some(handler) = guest_trap_handler() {
            handler(frame, hsr);
            return;
        }
    }
    if kind == TrapKind::HypCall && from_hyp && hsr.class() == Class::Hvc && hsr.call_immediate() == Some(SELFTEST_HVC)
    {
        frame.r[0] = !frame.r[0];
        return;
    }
    defmt::error!(
        "hyp: unhandled {=str} from mode {=u32:#04x}{=str}: HSR={=u32:#010x} (EC={=u8:#04x} ISS={=u32:#09x})",
        kind.name(),
        frame.spsr & 0x1f,
        if from_hyp { " (Hyp mode itself)" } else { "" },
        hsr.raw(),
        hsr.ec(),
        hsr.iss()
    );
    defmt::error!(
        "hyp: ELR_hyp={=u32:#010x} SPSR_hyp={=u32:#010x} LR_usr={=u32:#010x} HDFAR={=u32:#010x} HIFAR={=u32:#010x}",
        frame.elr,
        frame.spsr,
        frame.lr_usr,
        Hdfar::read().0,
        Hifar::read().0
    );
    log_registers(&frame.r);
    semihost::exit(if from_hyp { ExitCode::HypException } else { ExitCode::UnhandledTrap })
}
