//! The Hyp system registers and TLB operations aarch32-cpu 0.4 lacks, one per definition.
//!
//! Everything else (HCR, HSCTLR, HSR, HVBAR, HDFAR, HIFAR, HPFAR, HMAIR0/1, ...)
//! comes from `aarch32_cpu::register`. The encodings below are from the Arm
//! Architecture Reference Manual ARMv7-A/R (DDI 0406C.d): B4.1 (the register
//! descriptions, by name) and B3.10 (TLB maintenance requirements); each definition plugs
//! into aarch32-cpu's public `SysReg`/`SysReg64` traits, so the `mrc`/`mcr`/`mrrc`/
//! `mcrr` instructions are the crate's.
//!
//! Reads are safe (no register here has read side effects). Writes are `unsafe`:
//! a wrong translation base or control value makes every later access undefined.

// A catalogue: the stage-2 and timer registers are here for the guest work
// that follows, before anything calls them.
#![allow(dead_code)]

use aarch32_cpu::register::{SysReg, SysReg64, SysRegRead, SysRegRead64, SysRegWrite, SysRegWrite64};

/// Declares a 32-bit coprocessor-15 register with `read()` and an `unsafe write()`.
macro_rules! sysreg32 {
    ($(#[$doc:meta])* $name:ident, op1 = $op1:literal, crn = $crn:literal, crm = $crm:literal, op2 = $op2:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl SysReg for $name {
            const CP: u32 = 15;
            const CRN: u32 = $crn;
            const OP1: u32 = $op1;
            const CRM: u32 = $crm;
            const OP2: u32 = $op2;
        }
        impl SysRegRead for $name {}
        impl SysRegWrite for $name {}

        impl $name {
            /// Reads the register.
            #[inline]
            pub fn read() -> u32 {
                <Self as SysRegRead>::read_raw()
            }

            /// Writes the register.
            ///
            /// # Safety
            /// The value must be one the Arm ARM allows for this register, and
            /// the rest of the translation state must agree with it.
            #[inline]
            pub unsafe fn write(value: u32) {
                // SAFETY: the caller vouches for the value (this function's contract).
                unsafe { <Self as SysRegWrite>::write_raw(value) }
            }
        }
    };
}

/// Declares a 64-bit coprocessor-15 register with `read()` and an `unsafe write()`.
macro_rules! sysreg64 {
    ($(#[$doc:meta])* $name:ident, op1 = $op1:literal, crm = $crm:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl SysReg64 for $name {
            const CP: u32 = 15;
            const OP1: u32 = $op1;
            const CRM: u32 = $crm;
        }
        impl SysRegRead64 for $name {}
        impl SysRegWrite64 for $name {}

        impl $name {
            /// Reads the register.
            #[inline]
            pub fn read() -> u64 {
                <Self as SysRegRead64>::read_raw()
            }

            /// Writes the register.
            ///
            /// # Safety
            /// The value must be one the Arm ARM allows for this register, and
            /// the rest of the translation state must agree with it.
            #[inline]
            pub unsafe fn write(value: u64) {
                // SAFETY: the caller vouches for the value (this function's contract).
                unsafe { <Self as SysRegWrite64>::write_raw(value) }
            }
        }
    };
}

/// Declares a TLB maintenance operation: a write-only coprocessor-15 encoding.
macro_rules! tlbop {
    ($(#[$doc:meta])* $name:ident, op1 = $op1:literal, crn = $crn:literal, crm = $crm:literal, op2 = $op2:literal) => {
        $(#[$doc])*
        pub struct $name;

        impl SysReg for $name {
            const CP: u32 = 15;
            const CRN: u32 = $crn;
            const OP1: u32 = $op1;
            const CRM: u32 = $crm;
            const OP2: u32 = $op2;
        }
        impl SysRegWrite for $name {}
    };
}

sysreg32!(
    /// HTCR, Hyp Translation Control Register (Arm ARM B4.1): the Hyp stage-1 walk's
    /// input size (T0SZ) and the cacheability and shareability of its table walks.
    Htcr, op1 = 4, crn = 2, crm = 0, op2 = 2
);

sysreg32!(
    /// VTCR, Virtualization Translation Control Register (Arm ARM B4.1): the stage-2
    /// walk's input size (T0SZ, S), starting level (SL0) and walk attributes.
    Vtcr, op1 = 4, crn = 2, crm = 1, op2 = 2
);

sysreg64!(
    /// HTTBR, Hyp Translation Table Base Register (Arm ARM B4.1): bits [39:x] hold the
    /// physical address of the Hyp stage-1 first-level table.
    Httbr, op1 = 4, crm = 2
);

sysreg64!(
    /// VTTBR, Virtualization Translation Table Base Register (Arm ARM B4.1): the
    /// stage-2 first-level table's physical address and, in bits [55:48], the VMID.
    Vttbr, op1 = 6, crm = 2
);

sysreg64!(
    /// CNTHP_CVAL, the Hyp physical timer's compare value (Arm ARM B4.1).
    /// aarch32-cpu 0.4's `CnthpCval` uses op1 = 2, which is CNTP_CVAL's encoding;
    /// the architectural one is `mcrr p15, 6, <Rt>, <Rt2>, c14`.
    CnthpCval, op1 = 6, crm = 14
);

tlbop!(
    /// TLBIALLH: invalidate every Hyp-mode TLB entry on this PE (Arm ARM B4.1, B3.10).
    Tlbiallh, op1 = 4, crn = 8, crm = 7, op2 = 0
);

tlbop!(
    /// TLBIALLHIS: TLBIALLH broadcast to the Inner Shareable domain (Arm ARM B4.1).
    Tlbiallhis, op1 = 4, crn = 8, crm = 3, op2 = 0
);

tlbop!(
    /// TLBIMVAH: invalidate Hyp-mode TLB entries for one virtual address on this PE (Arm ARM B4.1).
    Tlbimvah, op1 = 4, crn = 8, crm = 7, op2 = 1
);

tlbop!(
    /// TLBIMVAHIS: TLBIMVAH broadcast to the Inner Shareable domain (Arm ARM B4.1).
    Tlbimvahis, op1 = 4, crn = 8, crm = 3, op2 = 1
);

tlbop!(
    /// TLBIALLNSNH: invalidate all Non-secure, non-Hyp TLB entries (every VMID,
    /// stage 1 and stage 2) on this PE (Arm ARM B4.1).
    Tlbiallnsnh, op1 = 4, crn = 8, crm = 7, op2 = 4
);

tlbop!(
    /// TLBIALLNSNHIS: TLBIALLNSNH broadcast to the Inner Shareable domain (Arm ARM B4.1).
    Tlbiallnsnhis, op1 = 4, crn = 8, crm = 3, op2 = 4
);

tlbop!(
    /// TLBIALLIS: invalidate the entire TLB, Inner Shareable. Executed in Hyp
    /// mode it acts on the Non-secure PL1&0 entries of the VMID that VTTBR
    /// holds, stage 1 and 2 (Arm ARM B4.2.2): invalidation by VMID.
    Tlbiallis, op1 = 0, crn = 8, crm = 3, op2 = 0
);
