//! The Hyp Syndrome Register (HSR) decoded: why an exception was taken to Hyp mode, as types.
//!
//! Arm ARM (DDI 0406C.d) B4.1.72 (HSR) and B3.13.6 (use of the HSR): bits
//! [31:26] are the exception class (EC), bit [25] the instruction length (IL:
//! 1 for a 32-bit instruction, 0 for a 16-bit Thumb one; 1 for every class
//! that is not a trapped instruction), bits [24:0] the instruction-specific
//! syndrome (ISS), whose layout depends on EC:
//!
//! - HVC (EC 0x12) and SVC (0x11): ISS[15:0] is the instruction's 16-bit
//!   immediate. A trapped SMC (0x13, HCR.TSC) reports only its condition
//!   (CV, COND): the SMC's 4-bit immediate is not in the syndrome.
//! - Data abort (0x24 from a guest, 0x25 from Hyp mode): ISV [24] says
//!   whether SAS [23:22] (access size: byte, halfword, word), SSE [21] (sign
//!   extension), SRT [19:16] (the register transferred) are valid; EA [9]
//!   external abort type, CM [8] cache maintenance, S1PTW [7] a stage-1
//!   table walk faulted at stage 2, WnR [6] write, DFSC [5:0].
//! - Prefetch abort (0x20 from a guest, 0x21 from Hyp mode): EA [9], S1PTW
//!   [7], IFSC [5:0].
//!
//! DFSC and IFSC use the long-descriptor fault status encoding whatever the
//! guest's own translation format (B3.13.3, Table B3-24): `0b0001LL`
//! translation fault, `0b0010LL` access flag, `0b0011LL` permission, with LL
//! the lookup level.
//!
//! The monitor's architecture layer reads the register and hands the raw
//! value over; everything that interprets it is here, tested on the host.

use core::fmt;

/// An HSR value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Syndrome(u32);

/// HSR.EC, the exception class (B3.13.6): the ones carve meets, by name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// 0x00: unknown reason.
    Unknown,
    /// 0x01: WFI or WFE trapped (HCR.TWI/TWE).
    WfiWfe,
    /// 0x03: MCR or MRC to CP15 trapped.
    Cp15Transfer,
    /// 0x04: MCRR or MRRC to CP15 trapped.
    Cp15DoubleTransfer,
    /// 0x07: an Advanced SIMD or floating-point access trapped (HCPTR).
    FloatingPoint,
    /// 0x11: SVC taken to Hyp mode.
    Svc,
    /// 0x12: HVC, from a guest or from Hyp mode itself.
    Hvc,
    /// 0x13: SMC trapped by HCR.TSC.
    Smc,
    /// 0x20: a prefetch abort routed to Hyp mode (a stage-2 fault of a guest's fetch).
    PrefetchAbortFromGuest,
    /// 0x21: a prefetch abort taken in Hyp mode.
    PrefetchAbortInHyp,
    /// 0x24: a data abort routed to Hyp mode (a stage-2 fault of a guest's access).
    DataAbortFromGuest,
    /// 0x25: a data abort taken in Hyp mode.
    DataAbortInHyp,
    /// Any other EC value.
    Other(u8),
}

impl Class {
    /// The class of EC value `ec` (six bits).
    #[inline(always)]
    pub const fn from_ec(ec: u8) -> Class {
        match ec {
            0x00 => Class::Unknown,
            0x01 => Class::WfiWfe,
            0x03 => Class::Cp15Transfer,
            0x04 => Class::Cp15DoubleTransfer,
            0x07 => Class::FloatingPoint,
            0x11 => Class::Svc,
            0x12 => Class::Hvc,
            0x13 => Class::Smc,
            0x20 => Class::PrefetchAbortFromGuest,
            0x21 => Class::PrefetchAbortInHyp,
            0x24 => Class::DataAbortFromGuest,
            0x25 => Class::DataAbortInHyp,
            other => Class::Other(other),
        }
    }

    /// The EC value.
    #[inline(always)]
    pub const fn ec(self) -> u8 {
        match self {
            Class::Unknown => 0x00,
            Class::WfiWfe => 0x01,
            Class::Cp15Transfer => 0x03,
            Class::Cp15DoubleTransfer => 0x04,
            Class::FloatingPoint => 0x07,
            Class::Svc => 0x11,
            Class::Hvc => 0x12,
            Class::Smc => 0x13,
            Class::PrefetchAbortFromGuest => 0x20,
            Class::PrefetchAbortInHyp => 0x21,
            Class::DataAbortFromGuest => 0x24,
            Class::DataAbortInHyp => 0x25,
            Class::Other(ec) => ec,
        }
    }
}

/// The size of the access a data abort reports (ISS.SAS).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AccessSize {
    Byte,
    Halfword,
    Word,
}

impl AccessSize {
    /// Bytes in the access.
    #[inline(always)]
    pub const fn bytes(self) -> u32 {
        match self {
            AccessSize::Byte => 1,
            AccessSize::Halfword => 2,
            AccessSize::Word => 4,
        }
    }
}

/// What a data abort with ISV set says about the load or store: enough to emulate it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Access {
    pub size: AccessSize,
    /// SSE: a load sign-extends the value to 32 bits.
    pub sign_extend: bool,
    /// SRT: the general-purpose register transferred (0-15; 13-15 are banked SP, LR and the PC).
    pub reg: u8,
}

impl Access {
    /// The value a load of this access puts in its register, from `value`
    /// already shifted to the accessed bytes: the access's low bytes, zero-
    /// or sign-extended (SSE) to 32 bits.
    pub const fn load_value(&self, value: u32) -> u32 {
        match (self.size, self.sign_extend) {
            (AccessSize::Byte, false) => value & 0xff,
            (AccessSize::Byte, true) => value as u8 as i8 as u32,
            (AccessSize::Halfword, false) => value & 0xffff,
            (AccessSize::Halfword, true) => value as u16 as i16 as u32,
            (AccessSize::Word, _) => value,
        }
    }
}

/// A fault status code (DFSC or IFSC), long-descriptor format (B3.13.3, Table B3-24).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultStatus {
    /// 0b0000LL: an output or table address too large for the translation.
    AddressSize { level: u8 },
    /// 0b0001LL: no valid descriptor at lookup level `level`.
    Translation { level: u8 },
    /// 0b0010LL: the descriptor's access flag is clear.
    AccessFlag { level: u8 },
    /// 0b0011LL: the descriptor does not allow the access.
    Permission { level: u8 },
    /// 0b010000: synchronous external abort.
    SyncExternal,
    /// 0b0101LL: synchronous external abort on a translation table walk.
    SyncExternalOnWalk { level: u8 },
    /// 0b011000: synchronous parity error on a memory access.
    SyncParity,
    /// 0b0111LL: synchronous parity error on a translation table walk.
    SyncParityOnWalk { level: u8 },
    /// 0b100001: alignment fault.
    Alignment,
    /// 0b100010: debug event.
    Debug,
    /// Any other code (asynchronous aborts, TLB conflict, IMPLEMENTATION DEFINED ones).
    Other(u8),
}

impl FaultStatus {
    /// The status of the six-bit code `code`.
    #[inline(always)]
    pub const fn from_code(code: u8) -> FaultStatus {
        let level = code & 0b11;
        match code & 0x3f {
            0b00_0000..=0b00_0011 => FaultStatus::AddressSize { level },
            0b00_0100..=0b00_0111 => FaultStatus::Translation { level },
            0b00_1000..=0b00_1011 => FaultStatus::AccessFlag { level },
            0b00_1100..=0b00_1111 => FaultStatus::Permission { level },
            0b01_0000 => FaultStatus::SyncExternal,
            0b01_0100..=0b01_0111 => FaultStatus::SyncExternalOnWalk { level },
            0b01_1000 => FaultStatus::SyncParity,
            0b01_1100..=0b01_1111 => FaultStatus::SyncParityOnWalk { level },
            0b10_0001 => FaultStatus::Alignment,
            0b10_0010 => FaultStatus::Debug,
            other => FaultStatus::Other(other),
        }
    }

    /// Whether it is a translation or a permission fault: the two a stage-2
    /// entry that is invalid or read-only for a while (a page being moved) causes.
    #[inline(always)]
    pub const fn is_translation_or_permission(self) -> bool {
        matches!(self, FaultStatus::Translation { .. } | FaultStatus::Permission { .. })
    }
}

/// A data or prefetch abort routed to Hyp mode: a view of its ISS, each field decoded when asked.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Abort {
    iss: u32,
    data: bool,
}

impl Abort {
    #[inline(always)]
    const fn bit(self, n: u32) -> bool {
        self.iss & (1 << n) != 0
    }

    /// A data access (else an instruction fetch).
    #[inline(always)]
    pub const fn is_data(self) -> bool {
        self.data
    }

    /// WnR: the access was a write (data aborts only; valid with or without ISV).
    #[inline(always)]
    pub const fn write(self) -> bool {
        self.data && self.bit(6)
    }

    /// ISV with a valid SAS: the load or store, for emulation (data aborts only).
    #[inline(always)]
    pub const fn access(self) -> Option<Access> {
        if !self.data || !self.bit(24) {
            return None;
        }
        let size = match (self.iss >> 22) & 0b11 {
            0 => AccessSize::Byte,
            1 => AccessSize::Halfword,
            2 => AccessSize::Word,
            _ => return None, // reserved in ARMv7
        };
        Some(Access { size, sign_extend: self.bit(21), reg: ((self.iss >> 16) & 0xf) as u8 })
    }

    /// EA: the external abort type bit (IMPLEMENTATION DEFINED meaning).
    #[inline(always)]
    pub const fn external(self) -> bool {
        self.bit(9)
    }

    /// CM: a cache maintenance or address translation operation faulted (data aborts only).
    #[inline(always)]
    pub const fn cache_maintenance(self) -> bool {
        self.data && self.bit(8)
    }

    /// S1PTW: a stage-1 translation table walk faulted at stage 2.
    #[inline(always)]
    pub const fn stage1_walk(self) -> bool {
        self.bit(7)
    }

    /// DFSC or IFSC.
    #[inline(always)]
    pub const fn status(self) -> FaultStatus {
        FaultStatus::from_code((self.iss & 0x3f) as u8)
    }
}

impl Syndrome {
    /// The syndrome of an HSR value read from the register.
    #[inline(always)]
    pub const fn from_raw(hsr: u32) -> Self {
        Syndrome(hsr)
    }

    /// The HSR value.
    #[inline(always)]
    pub const fn raw(self) -> u32 {
        self.0
    }

    /// HSR.EC, the six-bit exception class value.
    #[inline(always)]
    pub const fn ec(self) -> u8 {
        (self.0 >> 26) as u8
    }

    /// HSR.EC, decoded.
    #[inline(always)]
    pub const fn class(self) -> Class {
        Class::from_ec(self.ec())
    }

    /// HSR.IL: the trapped instruction was 32 bits long (else a 16-bit Thumb one).
    #[inline(always)]
    pub const fn il32(self) -> bool {
        self.0 & (1 << 25) != 0
    }

    /// Bytes to step over the trapped instruction: 4, or 2 for a 16-bit one (HSR.IL).
    #[inline(always)]
    pub const fn instruction_len(self) -> u32 {
        if self.il32() {
            4
        } else {
            2
        }
    }

    /// HSR.ISS, the instruction-specific syndrome (25 bits).
    #[inline(always)]
    pub const fn iss(self) -> u32 {
        self.0 & 0x01ff_ffff
    }

    /// The 16-bit immediate of an HVC or SVC (ISS[15:0]); `None` for every
    /// other class, a trapped SMC included (its immediate is not reported).
    #[inline(always)]
    pub const fn call_immediate(self) -> Option<u16> {
        match self.class() {
            Class::Hvc | Class::Svc => Some(self.0 as u16),
            _ => None,
        }
    }

    /// The abort, for a data or prefetch abort (EC 0x20, 0x21, 0x24, 0x25).
    #[inline(always)]
    pub const fn abort(self) -> Option<Abort> {
        let data = match self.class() {
            Class::DataAbortFromGuest | Class::DataAbortInHyp => true,
            Class::PrefetchAbortFromGuest | Class::PrefetchAbortInHyp => false,
            _ => return None,
        };
        Some(Abort { iss: self.iss(), data })
    }
}

impl fmt::Display for Syndrome {
    /// `HSR 0x93810006 (EC 0x24, IL 1, ISS 0x1810006)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HSR {:#010x} (EC {:#04x}, IL {}, ISS {:#09x})", self.0, self.ec(), self.il32() as u8, self.iss())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HSR from its fields, as the Arm ARM lays them out.
    fn hsr(ec: u32, il: bool, iss: u32) -> Syndrome {
        assert!(ec < 64 && iss < 1 << 25);
        Syndrome::from_raw((ec << 26) | (u32::from(il) << 25) | iss)
    }

    /// A data-abort ISS from its fields (B3.13.6).
    #[allow(clippy::too_many_arguments)]
    fn dabt_iss(
        isv: bool,
        sas: u32,
        sse: bool,
        srt: u32,
        ea: bool,
        cm: bool,
        s1ptw: bool,
        wnr: bool,
        dfsc: u32,
    ) -> u32 {
        (u32::from(isv) << 24)
            | (sas << 22)
            | (u32::from(sse) << 21)
            | (srt << 16)
            | (u32::from(ea) << 9)
            | (u32::from(cm) << 8)
            | (u32::from(s1ptw) << 7)
            | (u32::from(wnr) << 6)
            | dfsc
    }

    #[test]
    fn classes_round_trip_through_their_ec_values() {
        for ec in 0..64u8 {
            assert_eq!(Class::from_ec(ec).ec(), ec);
        }
        let named = [
            (0x00, Class::Unknown),
            (0x01, Class::WfiWfe),
            (0x03, Class::Cp15Transfer),
            (0x04, Class::Cp15DoubleTransfer),
            (0x07, Class::FloatingPoint),
            (0x11, Class::Svc),
            (0x12, Class::Hvc),
            (0x13, Class::Smc),
            (0x20, Class::PrefetchAbortFromGuest),
            (0x21, Class::PrefetchAbortInHyp),
            (0x24, Class::DataAbortFromGuest),
            (0x25, Class::DataAbortInHyp),
        ];
        for (ec, class) in named {
            assert_eq!(hsr(ec, true, 0).class(), class, "EC {ec:#x}");
        }
        assert_eq!(hsr(0x3f, true, 0).class(), Class::Other(0x3f));
    }

    #[test]
    fn il_gives_the_length_to_step_over() {
        assert_eq!(hsr(0x13, true, 0).instruction_len(), 4);
        assert_eq!(hsr(0x13, false, 0).instruction_len(), 2);
        assert!(hsr(0x24, true, 0).il32());
        assert_eq!(hsr(0x24, true, 0x1ff_ffff).iss(), 0x1ff_ffff);
    }

    #[test]
    fn hvc_and_svc_give_their_immediate_smc_none() {
        assert_eq!(hsr(0x12, true, 0xca7e).call_immediate(), Some(0xca7e));
        assert_eq!(hsr(0x12, true, 0).call_immediate(), Some(0));
        assert_eq!(hsr(0x11, true, 0xffff).call_immediate(), Some(0xffff));
        // A trapped SMC: CV and COND (always, 0xe) in ISS[24:20]; no immediate.
        assert_eq!(hsr(0x13, true, (1 << 24) | (0xe << 20)).call_immediate(), None);
        assert_eq!(hsr(0x24, true, 0x1234).call_immediate(), None);
        assert!(hsr(0x12, true, 0).abort().is_none());
    }

    #[test]
    fn a_data_abort_with_isv_says_size_sign_register_and_direction() {
        // `ldr r1, [r0]` at an unmapped IPA: a word read into r1, translation fault at level 1
        // (the value tests/isolation.rs sees from QEMU: HSR 0x93810005).
        let s = Syndrome::from_raw(0x9381_0005);
        assert_eq!(s.class(), Class::DataAbortFromGuest);
        let a = s.abort().unwrap();
        assert!(a.is_data() && !a.write() && !a.external() && !a.cache_maintenance() && !a.stage1_walk());
        assert_eq!(a.access(), Some(Access { size: AccessSize::Word, sign_extend: false, reg: 1 }));
        assert_eq!(a.status(), FaultStatus::Translation { level: 1 });

        for (sas, size) in [(0, AccessSize::Byte), (1, AccessSize::Halfword), (2, AccessSize::Word)] {
            for srt in [0, 7, 12, 15] {
                for (sse, wnr) in [(false, false), (true, false), (false, true)] {
                    let s = hsr(0x24, true, dabt_iss(true, sas, sse, srt, false, false, false, wnr, 0b00_0111));
                    let a = s.abort().unwrap();
                    assert_eq!(a.access(), Some(Access { size, sign_extend: sse, reg: srt as u8 }), "{s}");
                    assert_eq!(a.write(), wnr);
                    assert_eq!(a.status(), FaultStatus::Translation { level: 3 });
                }
            }
        }
        assert_eq!(AccessSize::Halfword.bytes(), 2);
    }

    #[test]
    fn without_isv_or_with_a_reserved_size_there_is_no_access_to_emulate() {
        let no_isv = hsr(0x24, true, dabt_iss(false, 2, false, 3, false, false, false, true, 0b00_1111));
        let a = no_isv.abort().unwrap();
        assert_eq!(a.access(), None);
        assert!(a.write(), "WnR is valid without ISV");
        assert_eq!(a.status(), FaultStatus::Permission { level: 3 });
        let reserved = hsr(0x24, true, dabt_iss(true, 3, false, 3, false, false, false, false, 0b00_0101));
        assert_eq!(reserved.abort().unwrap().access(), None);
    }

    #[test]
    fn ea_cm_and_s1ptw_are_read() {
        let s = hsr(0x24, true, dabt_iss(false, 0, false, 0, true, true, true, false, 0b01_0000));
        let a = s.abort().unwrap();
        assert!(a.external() && a.cache_maintenance() && a.stage1_walk());
        assert_eq!(a.status(), FaultStatus::SyncExternal);
    }

    #[test]
    fn a_prefetch_abort_has_no_access_and_no_direction() {
        // Bits that mean ISV, SAS, SRT, CM and WnR for a data abort are reserved here.
        let s = hsr(0x20, true, dabt_iss(true, 2, true, 5, false, true, true, true, 0b00_0110));
        let a = s.abort().unwrap();
        assert!(!a.is_data() && !a.write() && !a.cache_maintenance() && a.access().is_none());
        assert!(a.stage1_walk());
        assert_eq!(a.status(), FaultStatus::Translation { level: 2 });
        assert_eq!(hsr(0x21, false, 0x10).abort().unwrap().status(), FaultStatus::SyncExternal);
        assert!(hsr(0x25, false, 0x21).abort().unwrap().is_data());
    }

    #[test]
    fn fault_status_codes_follow_table_b3_24() {
        let table = [
            (0b00_0000, FaultStatus::AddressSize { level: 0 }),
            (0b00_0011, FaultStatus::AddressSize { level: 3 }),
            (0b00_0101, FaultStatus::Translation { level: 1 }),
            (0b00_0110, FaultStatus::Translation { level: 2 }),
            (0b00_0111, FaultStatus::Translation { level: 3 }),
            (0b00_1001, FaultStatus::AccessFlag { level: 1 }),
            (0b00_1011, FaultStatus::AccessFlag { level: 3 }),
            (0b00_1101, FaultStatus::Permission { level: 1 }),
            (0b00_1111, FaultStatus::Permission { level: 3 }),
            (0b01_0000, FaultStatus::SyncExternal),
            (0b01_0101, FaultStatus::SyncExternalOnWalk { level: 1 }),
            (0b01_1000, FaultStatus::SyncParity),
            (0b01_1110, FaultStatus::SyncParityOnWalk { level: 2 }),
            (0b10_0001, FaultStatus::Alignment),
            (0b10_0010, FaultStatus::Debug),
            (0b01_0001, FaultStatus::Other(0b01_0001)),
            (0b11_0000, FaultStatus::Other(0b11_0000)),
        ];
        for (code, status) in table {
            assert_eq!(FaultStatus::from_code(code), status, "code {code:#08b}");
        }
        // Exactly the translation and permission codes, all levels, are the ones a move causes.
        let moved: Vec<u8> = (0..64u8).filter(|&c| FaultStatus::from_code(c).is_translation_or_permission()).collect();
        assert_eq!(moved, [4, 5, 6, 7, 12, 13, 14, 15]);
    }

    #[test]
    fn displays_the_fields() {
        assert_eq!(format!("{}", Syndrome::from_raw(0x9381_0005)), "HSR 0x93810005 (EC 0x24, IL 1, ISS 0x1810005)");
    }

    #[test]
    fn a_load_value_is_cut_to_its_size_and_extended_as_sse_says() {
        let a = |size, sign_extend| Access { size, sign_extend, reg: 0 };
        assert_eq!(a(AccessSize::Byte, false).load_value(0x1234_5680), 0x80);
        assert_eq!(a(AccessSize::Byte, true).load_value(0x1234_5680), 0xffff_ff80);
        assert_eq!(a(AccessSize::Halfword, false).load_value(0x1234_8001), 0x8001);
        assert_eq!(a(AccessSize::Halfword, true).load_value(0x1234_8001), 0xffff_8001);
        assert_eq!(a(AccessSize::Halfword, true).load_value(0x1234_7001), 0x7001);
        assert_eq!(a(AccessSize::Word, true).load_value(0x8765_4321), 0x8765_4321);
    }
}
