//! Injecting an abort into a guest, as the hardware would have taken it.
//!
//! Arm ARM (DDI 0406C.d) B1.8.3 (exception entry), B1.9.7/B1.9.8 (Data and
//! Prefetch Abort exceptions), B3.13.3 (fault status encodings). The guest
//! enters Abort mode at its own vector with SPSR_abt = its CPSR, LR_abt = the
//! preferred return address plus 8 (data) or 4 (prefetch), I and A masked, T
//! and E from SCTLR.TE/EE, and DFSR/DFAR (IFSR/IFAR) saying "synchronous
//! external abort" at the faulting address.

use crate::arch::guest::pl1;
use crate::arch::vectors::TrapFrame;

/// Which abort.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Data { write: bool },
    Prefetch,
}

const MODE_ABT: u32 = 0x17;
const CPSR_T: u32 = 1 << 5;
const CPSR_F: u32 = 1 << 6;
const CPSR_I: u32 = 1 << 7;
const CPSR_A: u32 = 1 << 8;
const CPSR_E: u32 = 1 << 9;
const SCTLR_V: u32 = 1 << 13;
const SCTLR_EE: u32 = 1 << 25;
const SCTLR_TE: u32 = 1 << 30;
const TTBCR_EAE: u32 = 1 << 31;

/// Makes the guest take `abort` at virtual address `far` when it resumes from `frame`.
pub fn abort(frame: &mut TrapFrame, abort: Abort, far: u32) {
    let sctlr = pl1::sctlr();
    let long = pl1::ttbcr() & TTBCR_EAE != 0;
    // Synchronous external abort: long-descriptor STATUS 0b010000 with the LPAE
    // bit (9); short-descriptor FS 0b01000 (B3.13.3, tables B3-23 and B3-24).
    let status = if long { (1 << 9) | 0b01_0000 } else { 0b0_1000 };
    let (offset, return_adjust) = match abort {
        Abort::Data { write } => {
            pl1::set_dfsr(status | if write { 1 << 11 } else { 0 });
            pl1::set_dfar(far);
            (0x10, 8)
        }
        Abort::Prefetch => {
            pl1::set_ifsr(status);
            pl1::set_ifar(far);
            (0x0c, 4)
        }
    };
    // The preferred return address is the faulting instruction (ELR_hyp), in ARM and Thumb state alike.
    pl1::set_abort_banked(frame.spsr, frame.elr.wrapping_add(return_adjust));
    let base = if sctlr & SCTLR_V != 0 { 0xffff_0000 } else { pl1::vbar() & !0x1f };
    let mut cpsr =
        (frame.spsr & !(0x1f | CPSR_T | CPSR_E | (0b11 << 25) | (0x3f << 10) | (1 << 24))) | MODE_ABT | CPSR_I | CPSR_A;
    cpsr &= !CPSR_F | (frame.spsr & CPSR_F); // F unchanged
    if sctlr & SCTLR_TE != 0 {
        cpsr |= CPSR_T;
    }
    if sctlr & SCTLR_EE != 0 {
        cpsr |= CPSR_E;
    }
    frame.spsr = cpsr;
    frame.elr = base.wrapping_add(offset);
}
