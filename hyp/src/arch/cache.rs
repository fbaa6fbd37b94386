//! Barriers, cache maintenance and Hyp TLB maintenance.
//!
//! QEMU models no caches, so a missing clean or invalidate goes unnoticed
//! there and corrupts memory on a board. Everything the Arm ARM requires is
//! done here even though QEMU would not notice its absence. References are to
//! the Arm ARM ARMv7-A/R (DDI 0406C.d): B2.2 (caches and branch predictors,
//! their maintenance operations and the set/way format), B3.10 (TLB
//! maintenance requirements), A3.8.3 (memory barriers).

use aarch32_cpu::register::{
    BpIAll, Ccsidr, Clidr, Csselr, Ctr, Dccimvac, Dccisw, Dccmvac, Dccsw, Iciallu, SysRegRead, SysRegWrite,
};

use super::regs::{Tlbiallh, Tlbiallhis, Tlbiallis, Tlbiallnsnhis, Tlbimvahis, Vttbr};

pub use aarch32_cpu::asm::{dsb, isb};

/// The smallest data or unified cache line in the system, in bytes (CTR.DminLine, words as log2).
pub fn dcache_line_size() -> usize {
    4 << ((Ctr::read().0 >> 16) & 0xf)
}

/// Runs `op` (an operation by virtual address) on every line that holds a byte of `[start, start + len)`.
fn by_va<Op: SysRegWrite>(start: usize, len: usize) {
    if len == 0 {
        return;
    }
    let line = dcache_line_size();
    let mut addr = start & !(line - 1);
    let end = start.saturating_add(len);
    dsb(); // the stores to be cleaned complete before their lines are maintained
    while addr < end {
        // SAFETY: clean and clean+invalidate by VA keep memory's contents (dirty
        // data is written back first) and fault, rather than corrupt, on an
        // unmapped address; callers only pass these two operations.
        unsafe { <Op as SysRegWrite>::write_raw(addr as u32) };
        addr = match addr.checked_add(line) {
            Some(next) => next,
            None => break,
        };
    }
    dsb(); // the maintenance completes before anything that relies on it
}

/// Cleans the data cache lines covering `[start, start + len)` to the point of
/// coherency (DCCMVAC), so that an observer that does not snoop the caches
/// (a table walker on some boards, a device, a guest with caches off) sees the data.
pub fn clean_dcache_range_poc(start: usize, len: usize) {
    by_va::<Dccmvac>(start, len);
}

/// Cleans and invalidates the data cache lines covering `[start, start + len)`
/// to the point of coherency (DCCIMVAC): memory holds the data and no cache
/// keeps a copy, e.g. before memory is handed to a guest that runs with caches off.
#[allow(dead_code)] // for loading guests (their memory runs with caches off at first)
pub fn clean_invalidate_dcache_range_poc(start: usize, len: usize) {
    by_va::<Dccimvac>(start, len);
}

/// A data cache operation by set/way (Arm ARM B2.2, "set/way" format of DCISW/DCCSW/DCCISW).
#[derive(Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // Clean and CleanInvalidate serve the whole-cache cleans
enum SetWayOp {
    Clean,
    CleanInvalidate,
}

/// Runs `op` on every line of every data or unified cache from level 1 up to
/// `last_level` (1-based, inclusive), reading the geometry from CLIDR/CCSIDR.
///
/// Set/way operations act on this PE's caches only and are not ordered with
/// other PEs' accesses: they are for boot and power-down, never for sharing data.
fn data_cache_by_set_way(op: SetWayOp, last_level: u32) {
    let clidr = Clidr::read().0;
    dsb();
    for level in 0..last_level.min(7) {
        let ctype = (clidr >> (3 * level)) & 0b111;
        if ctype < 0b010 {
            continue; // no cache, or instruction cache only, at this level
        }
        // SAFETY: CSSELR only selects which cache CCSIDR describes (Level field, InD = 0).
        unsafe { <Csselr as SysRegWrite>::write_raw(level << 1) };
        isb(); // the new CSSELR is seen by the CCSIDR read
        let ccsidr = <Ccsidr as SysRegRead>::read_raw();
        let line_shift = (ccsidr & 0b111) + 4; // log2(line length in bytes)
        let ways = ((ccsidr >> 3) & 0x3ff) + 1;
        let sets = ((ccsidr >> 13) & 0x7fff) + 1;
        // The way number sits in the top bits: shift = 32 - ceil(log2(ways)).
        let way_shift = if ways > 1 { (ways - 1).leading_zeros() } else { 0 };
        for way in 0..ways {
            let way_bits = if ways > 1 { way << way_shift } else { 0 };
            for set in 0..sets {
                let value = way_bits | (set << line_shift) | (level << 1);
                // SAFETY: `value` names a line of a cache CCSIDR just described;
                // clean and clean+invalidate keep memory's contents. (Invalidating
                // by set/way, which discards data, is only done by `_start`.)
                unsafe {
                    match op {
                        SetWayOp::Clean => <Dccsw as SysRegWrite>::write_raw(value),
                        SetWayOp::CleanInvalidate => <Dccisw as SysRegWrite>::write_raw(value),
                    }
                }
            }
        }
    }
    // SAFETY: restore CSSELR to level 1 data; it only selects what CCSIDR reads.
    unsafe { <Csselr as SysRegWrite>::write_raw(0) };
    dsb();
    isb();
}

/// The level of coherency (CLIDR.LoC): caches up to it must be cleaned for memory to be up to date.
#[allow(dead_code)] // used by the whole-cache cleans, which guests need
fn level_of_coherency() -> u32 {
    (Clidr::read().0 >> 24) & 0b111
}

/// Cleans every data and unified cache up to the point of coherency, by set/way.
#[allow(dead_code)] // for loading guests (their memory runs with caches off at first)
pub fn clean_dcache_all() {
    data_cache_by_set_way(SetWayOp::Clean, level_of_coherency());
}

/// Cleans and invalidates every data and unified cache up to the point of coherency, by set/way.
#[allow(dead_code)] // for loading guests (their memory runs with caches off at first)
pub fn clean_invalidate_dcache_all() {
    data_cache_by_set_way(SetWayOp::CleanInvalidate, level_of_coherency());
}

/// Invalidates the whole instruction cache to the point of unification and the
/// branch predictor (ICIALLU, BPIALL), then DSB and ISB.
pub fn invalidate_icache_all() {
    Iciallu::write();
    BpIAll::write();
    dsb();
    isb();
}

/// Invalidates every Hyp-mode TLB entry on this PE (TLBIALLH), then DSB and ISB
/// (Arm ARM B3.10: the DSB completes the invalidation, the ISB makes the
/// following instructions use the new translations).
pub fn tlb_invalidate_hyp_all() {
    dsb(); // table writes are visible to the walker before the old entries go
           // SAFETY: invalidating TLB entries never changes memory; lost entries are refetched.
    unsafe { <Tlbiallh as SysRegWrite>::write_raw(0) };
    dsb();
    isb();
}

/// TLBIALLH broadcast to the Inner Shareable domain (TLBIALLHIS): every CPU's
/// Hyp TLB entries, for changes to tables all CPUs walk. Then DSB and ISB.
pub fn tlb_invalidate_hyp_all_is() {
    dsb();
    // SAFETY: invalidating TLB entries never changes memory; lost entries are refetched.
    unsafe { <Tlbiallhis as SysRegWrite>::write_raw(0) };
    dsb();
    isb();
}

/// Invalidates every CPU's Hyp-mode TLB entries for the page holding `va`
/// (TLBIMVAHIS), then DSB and ISB.
pub fn tlb_invalidate_hyp_va_is(va: u32) {
    dsb();
    // SAFETY: as for TLBIALLH; the operand is the page's virtual address (bits [31:12]).
    unsafe { <Tlbimvahis as SysRegWrite>::write_raw(va & !0xfff) };
    dsb();
    isb();
}

/// Invalidates every CPU's Non-secure non-Hyp TLB entries, all VMIDs, stage 1
/// and 2 (TLBIALLNSNHIS): after a stage-2 change, as ARMv7 has no invalidate-by-IPA.
pub fn tlb_invalidate_guests_all_is() {
    dsb();
    // SAFETY: invalidating TLB entries never changes memory; lost entries are refetched.
    unsafe { <Tlbiallnsnhis as SysRegWrite>::write_raw(0) };
    dsb();
    isb();
}

/// Invalidates every CPU's TLB entries of one guest, stage 1 and 2, by its
/// VMID: VTTBR is pointed at the guest (`vttbr`: its root and VMID), TLBIALLIS
/// is issued, which in Hyp mode acts on that VMID only (Arm ARM B4.2.2), and
/// VTTBR is put back. ARMv7 has no invalidation by IPA, so this is the
/// narrowest operation after a change to one guest's stage-2 (the way
/// KVM/ARM's `__kvm_tlb_flush_vmid` does it). Then DSB and ISB.
pub fn tlb_invalidate_vmid_is(vttbr: u64) {
    dsb(); // the table write is visible to every walker before the old entries go
    let saved = Vttbr::read();
    // SAFETY: VTTBR takes effect for PL1&0 only, never for the monitor running
    // here in Hyp mode, and is put back before this returns to any guest;
    // invalidating TLB entries never changes memory (lost entries are refetched).
    unsafe {
        Vttbr::write(vttbr);
        isb();
        <Tlbiallis as SysRegWrite>::write_raw(0);
        dsb();
        Vttbr::write(saved);
    }
    isb();
}
