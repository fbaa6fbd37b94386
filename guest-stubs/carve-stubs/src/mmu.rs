//! An LPAE stage-1 for the stubs: four 1 GiB blocks covering the 32-bit virtual space.
//!
//! Arm ARM (DDI 0406C.d) B3.6 (long-descriptor translation): with TTBCR.EAE = 1
//! and T0SZ = 0, TTBR0 translates all 4 GiB through one first-level table of
//! four entries, each of which may be a 1 GiB block whose output address has
//! 40 bits (B3.6.1). A stub maps its RAM 1:1 as Normal write-back memory
//! (caches on) and can point another entry, a "window", at any 1 GiB of the
//! guest's 40-bit IPA space: the only way a 32-bit guest reaches IPAs above
//! 4 GiB. Memory attributes come from MAIR0: index 0 Normal write-back
//! read/write-allocate, index 1 Strongly-ordered (B3.8.2).
//!
//! Only the boot CPU uses this; secondaries run with their MMU off.

use core::arch::asm;
use core::cell::UnsafeCell;

pub const GIB: u64 = 1 << 30;
/// The first-level entries and the 1 GiB of virtual space each one maps.
pub const SLOTS: usize = 4;

/// What a block maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// No mapping: an access is a translation fault at the guest's own vector.
    Invalid,
    /// RAM: Normal, write-back cacheable, inner shareable, executable.
    Normal,
    /// Devices and the probe's window: Strongly-ordered, never executed.
    Device,
}

#[repr(C, align(4096))]
struct Table(UnsafeCell<[u64; SLOTS]>);

// SAFETY: only the boot CPU's main code reads or writes the table (secondary
// CPUs never turn their MMU on), so there are no concurrent accesses.
unsafe impl Sync for Table {}

static L1: Table = Table(UnsafeCell::new([0; SLOTS]));

/// TTBCR: EAE, TTBR0 walks inner shareable (SH0 = 0b11), outer and inner
/// write-back write-allocate (ORGN0 = IRGN0 = 0b01), T0SZ = 0 (B4.1.153).
const TTBCR_VALUE: u32 = (1 << 31) | (0b11 << 12) | (0b01 << 10) | (0b01 << 8);
/// MAIR0: Attr0 = 0xff (Normal WB RW-allocate), Attr1 = 0x00 (Strongly-ordered).
const MAIR0_VALUE: u32 = 0x0000_00ff;
const SCTLR_M: u32 = 1 << 0;
const SCTLR_C: u32 = 1 << 2;
const SCTLR_Z: u32 = 1 << 11;
const SCTLR_I: u32 = 1 << 12;

/// A first-level block descriptor for the 1 GiB of IPA space at `ipa` (B3.6.2).
fn block(ipa: u64, kind: Kind) -> u64 {
    let out = ipa & 0xff_c000_0000;
    // Bits [1:0] = 0b01 block, AF (10) set, AP[2:1] (7:6) = 0b00: read/write at PL1.
    match kind {
        Kind::Invalid => 0,
        // AttrIndx (4:2) = 0, SH (9:8) = 0b11 inner shareable.
        Kind::Normal => out | 0b01 | (0b11 << 8) | (1 << 10),
        // AttrIndx = 1, PXN (53) and XN (54).
        Kind::Device => out | 0b01 | (1 << 2) | (1 << 10) | (1 << 53) | (1 << 54),
    }
}

fn dsb_isb() {
    // SAFETY: barriers only order this CPU's accesses and instruction fetches.
    unsafe { asm!("dsb", "isb", options(nostack, preserves_flags)) };
}

fn write_entry(slot: usize, value: u64) {
    let table = L1.0.get() as *mut u64;
    // SAFETY: `slot` < SLOTS (checked by the callers' indexing below), the
    // table is ours and only this CPU uses it; a volatile write so that it
    // reaches memory before the barriers and TLB maintenance that follow.
    unsafe { table.add(slot).write_volatile(value) };
}

fn invalidate_tlb() {
    // SAFETY: TLBIALL, then ICIALLU and BPIALL (B4.2): only drop cached
    // translations and predictions, which the walker and fetch refill.
    unsafe {
        asm!(
            "dsb",
            "mcr p15, 0, {z}, c8, c7, 0",
            "mcr p15, 0, {z}, c7, c5, 0",
            "mcr p15, 0, {z}, c7, c5, 6",
            "dsb",
            "isb",
            z = in(reg) 0u32,
            options(nostack, preserves_flags),
        )
    };
}

fn sctlr() -> u32 {
    let v: u32;
    // SAFETY: reading SCTLR has no side effects.
    unsafe { asm!("mrc p15, 0, {v}, c1, c0, 0", v = out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Whether stage-1 translation is on.
pub fn enabled() -> bool {
    sctlr() & SCTLR_M != 0
}

/// Whether the long-descriptor format is in use (TTBCR.EAE): it decides the DFSR format.
pub fn long_descriptors() -> bool {
    let v: u32;
    // SAFETY: reading TTBCR has no side effects.
    unsafe { asm!("mrc p15, 0, {v}, c2, c0, 2", v = out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & (1 << 31) != 0
}

/// Turns the MMU and the caches on with the first 4 GiB mapped 1:1: the GiBs
/// that hold the RAM bank `[base, end)` as [`Kind::Normal`], the others as
/// [`Kind::Device`] (so touching them still goes to the monitor as MMIO).
pub fn enable_identity(base: u64, end: u64) {
    enable(core::array::from_fn(|i| {
        let g = i as u64 * GIB;
        (g, if g < end && base < g + GIB { Kind::Normal } else { Kind::Device })
    }))
}

/// Turns the MMU and the caches on: virtual GiB `i` maps `slots[i]`
/// (the IPA of a 1 GiB-aligned block and its kind). The code that runs
/// this must be in a slot mapped 1:1 as [`Kind::Normal`].
pub fn enable(slots: [(u64, Kind); SLOTS]) {
    for (i, &(ipa, kind)) in slots.iter().enumerate() {
        write_entry(i, block(ipa, kind));
    }
    let table = L1.0.get() as u32;
    dsb_isb();
    // SAFETY: MAIR0/1, TTBCR and TTBR0 (64-bit, MCRR) are set before the MMU
    // is turned on; the table maps this code 1:1 (the caller's promise), so
    // the instruction after the SCTLR write is fetched from the same place.
    unsafe {
        asm!(
            "mcr p15, 0, {mair0}, c10, c2, 0",
            "mcr p15, 0, {zero}, c10, c2, 1",
            "mcr p15, 0, {ttbcr}, c2, c0, 2",
            "mcrr p15, 0, {table}, {zero}, c2",
            "isb",
            mair0 = in(reg) MAIR0_VALUE,
            ttbcr = in(reg) TTBCR_VALUE,
            table = in(reg) table,
            zero = in(reg) 0u32,
            options(nostack, preserves_flags),
        )
    };
    invalidate_tlb();
    let v = sctlr() | SCTLR_M | SCTLR_C | SCTLR_I | SCTLR_Z;
    // SAFETY: see above; the ISB makes the new translation regime apply to what follows.
    unsafe { asm!("mcr p15, 0, {v}, c1, c0, 0", "isb", v = in(reg) v, options(nostack, preserves_flags)) };
}

/// Points virtual GiB `slot` at the 1 GiB of IPA space at `ipa` (after [`enable`]).
pub fn set_slot(slot: usize, ipa: u64, kind: Kind) {
    assert!(slot < SLOTS, "slot {slot} out of range");
    write_entry(slot, block(ipa, kind));
    invalidate_tlb();
}

/// The smallest D-cache line (CTR.DminLine, B4.1.42).
fn dcache_line() -> usize {
    let ctr: u32;
    // SAFETY: reading CTR has no side effects.
    unsafe { asm!("mrc p15, 0, {v}, c0, c0, 1", v = out(reg) ctr, options(nomem, nostack, preserves_flags)) };
    4 << ((ctr >> 16) & 0xf)
}

/// Cleans `[start, start + len)` from the data cache to the point of coherency (DCCMVAC).
pub fn clean_dcache_range(start: usize, len: usize) {
    dcache_by_line(start, len, false);
}

/// Cleans and invalidates `[start, start + len)` to the point of coherency (DCCIMVAC):
/// what is read next comes from memory.
pub fn clean_invalidate_dcache_range(start: usize, len: usize) {
    dcache_by_line(start, len, true);
}

fn dcache_by_line(start: usize, len: usize, invalidate: bool) {
    if len == 0 {
        return;
    }
    let line = dcache_line();
    let mut a = start & !(line - 1);
    let end = start.saturating_add(len);
    while a < end {
        // SAFETY: cache maintenance by virtual address only moves data between
        // the cache and memory; the addresses are mapped (the caller's RAM).
        unsafe {
            if invalidate {
                asm!("mcr p15, 0, {a}, c7, c14, 1", a = in(reg) a, options(nostack, preserves_flags));
            } else {
                asm!("mcr p15, 0, {a}, c7, c10, 1", a = in(reg) a, options(nostack, preserves_flags));
            }
        }
        a = match a.checked_add(line) {
            Some(n) => n,
            None => break,
        };
    }
    // SAFETY: a barrier: the maintenance completes before what follows.
    unsafe { asm!("dsb", options(nostack, preserves_flags)) };
}
