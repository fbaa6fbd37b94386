//! A guest's movable memory: lent from a CMA pool at build time, moved page by page while the guest runs.
//!
//! A guest with movable memory (`memory-region` + `carve,movable-memory`)
//! gets the top of its RAM from free pages of a CMA pool ([`lend`]), mapped
//! in stage-2 page by page on its first touch ([`Vm::movable`] keeps the frame behind each).
//! When a contiguous allocation from the pool (`mm::cma::alloc`) finds one
//! of those pages in its way, [`migrate_guest_page`] moves it: the guest is
//! looked up by VMID under the guests' lock, which its traps wait on, and
//! `mm::cma::migrate_page` does the page and table work (a page the guest has
//! not touched yet is not mapped: only its frame changes). A guest access that
//! faults meanwhile is retried once the entry is switched (`vm::trap`).
//!
//! Nothing in the monitor claims CMA memory on its own yet: the test calls
//! of a `selftest` build (`super::selftest`) do, for a guest that asks.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use carve_core::addr::{Address, PAGE_SIZE};
use carve_core::mm::Migration;
use carve_core::plan::GuestPlan;

use super::{Vm, VmError, VMS};
use crate::mm::cma as pool;

/// Lends the movable part of guest `g` (VMID `vmid`) from its pool: the frame behind each of its pages.
pub fn lend(g: &GuestPlan, vmid: u8) -> Result<Vec<u32>, VmError> {
    let Some(m) = &g.movable else { return Ok(Vec::new()) };
    let pages = pool::lend(&m.pool, m.size / PAGE_SIZE, vmid, m.ipa)
        .map_err(|e| format!("{}: movable memory from {}: {e}", g.name, m.pool))?;
    defmt::info!(
        "cma: {=str}: {=usize} pages ({=u64} KiB) of IPA {=u64:#x}.. lent from pool {=str} (PA {=u64:#x}..{=u64:#x}), mapped page by page",
        g.name.as_str(),
        pages.len(),
        m.size / 1024,
        m.ipa.as_u64(),
        m.pool.as_str(),
        pages.first().map(|p| p.raw_addr()).unwrap_or(0),
        pages.last().map(|p| p.raw_addr() + PAGE_SIZE).unwrap_or(0)
    );
    Ok(pages.into_iter().map(|p| p.0 as u32).collect())
}

/// Moves a page of a running guest (looked up by VMID under the guests' lock, which its traps wait on).
#[cfg_attr(not(feature = "selftest"), allow(dead_code))] // only the test calls claim CMA memory yet
pub fn migrate_guest_page(m: &Migration) -> Result<(), String> {
    let mut vms = VMS.lock();
    let v: &mut Vm = vms.iter_mut().find(|v| v.vmid == m.vmid).ok_or("no guest with that VMID")?;
    let i = v.movable_index(m.ipa).ok_or("not a movable page of the guest")?;
    if v.movable.get(i).map(|&f| u64::from(f)) != Some(m.from.0) {
        return Err(format!("the guest's page at IPA {:#x} is not {}", m.ipa.as_u64(), m.from));
    }
    if v.touch.unit(&v.plan, m.ipa.as_u64()).is_some_and(|u| !v.touch.is_touched(u)) {
        // Not touched yet, so not mapped: its contents are nothing (the first touch zeroes the new frame).
        v.movable[i] = m.to.0 as u32;
        return Ok(());
    }
    let vttbr = v.vttbr();
    pool::migrate_page(&mut v.stage2, vttbr, m)?;
    v.movable[i] = m.to.0 as u32;
    Ok(())
}
