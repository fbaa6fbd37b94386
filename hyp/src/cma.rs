//! CMA at run time: guest RAM lent from pools, and contiguous allocations that move it while the guest runs on.
//!
//! A guest with movable memory (`memory-region` + `carve,movable-memory`)
//! gets the top of its RAM from free pages of a CMA pool ([`lend`]), mapped in
//! stage-2 page by page. A contiguous allocation ([`alloc`]) claims a run of
//! the pool; for each guest page in its way the core's [`CmaPool`] names a
//! fresh page from the buddy, and [`migrate_page`] moves it while the guest
//! runs: the stage-2 entry is made read-only (the TLB invalidated by the
//! guest's VMID), the page copied, then the entry switched to the new page
//! by break-before-make (invalid, TLB by VMID, new entry). A guest access
//! that faults meanwhile waits on the guests' lock and is retried once the
//! entry is switched (`vm::trap`). Migrations stop at the first failure and
//! the allocation is undone ([`CmaPool::abort_contig`]): no guest page is lost.
//!
//! The test calls (`carve.selftest=cma` in the monitor's bootargs) let a guest
//! start an allocation from its own pool on a physical CPU no guest uses
//! ([`test_alloc`], run by [`run_job`] on that CPU), watch it
//! ([`test_status`]), and have the monitor check and free it ([`test_free`]).

use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicU32, Ordering};

use carve_core::addr::{Address, PhysAddr, PhysRange, VirtRange, PAGE_SIZE};
use carve_core::mm::table::Access;
use carve_core::mm::{Attrs, CmaAllocation, Migration, PageTable, Pfn, Stage2};
use carve_core::plan::GuestPlan;
use carve_core::vm::hypercall as hc;
use spin::Mutex;

use crate::arch;
use crate::arch::memmap::{self, MEM};
use crate::arch::mmu;
use crate::mm::{copy_page, with_page, CMA, VMALLOC};
use crate::vm::{self, Vm, VmError};

/// Lends the movable part of guest `g` (VMID `vmid`) from its pool: the frame behind each of its pages.
pub fn lend(g: &GuestPlan, vmid: u8) -> Result<alloc::vec::Vec<u32>, VmError> {
    let Some(m) = &g.movable else { return Ok(alloc::vec::Vec::new()) };
    let mut mem = MEM.lock();
    let state = mem.as_mut().ok_or_else(|| format!("{}: no page allocator for movable memory", g.name))?;
    let mut pools = CMA.lock();
    let pool = pools
        .iter_mut()
        .find(|p| p.name() == m.pool)
        .ok_or_else(|| format!("{}: no CMA pool {} for its movable memory", g.name, m.pool))?;
    let pages = pool
        .lend(&mut state.buddy, m.size / PAGE_SIZE, vmid, m.ipa)
        .map_err(|e| format!("{}: movable memory from {}: {e}", g.name, m.pool))?;
    defmt::info!(
        "cma: {=str}: {=usize} pages ({=u64} KiB) of IPA {=u64:#x}.. lent from pool {=str} (PA {=u64:#x}..{=u64:#x}), mapped page by page",
        g.name.as_str(),
        pages.len(),
        m.size / 1024,
        m.ipa.as_u64(),
        pool.name(),
        pages.first().map(|p| p.raw_addr()).unwrap_or(0),
        pages.last().map(|p| p.raw_addr() + PAGE_SIZE).unwrap_or(0)
    );
    Ok(pages.into_iter().map(|p| p.0 as u32).collect())
}

/// Moves one guest page as `m` says, in the stage-2 `stage2` of the guest
/// whose VTTBR is `vttbr`: read-only, copy, switch (see the module's doc). On
/// an error the guest still maps the old page, read/write.
pub fn migrate_page(stage2: &mut PageTable<Stage2>, vttbr: u64, m: &Migration) -> Result<(), String> {
    let from = m.from.addr().ok_or("a frame past the physical space")?;
    let to = m.to.addr().ok_or("a frame past the physical space")?;
    let remap = |s2: &mut PageTable<Stage2>, pa: PhysAddr, attrs: Attrs| -> Result<(), String> {
        mmu::with_guest_tables(vttbr, |tm| s2.remap_page(tm, m.ipa, pa, attrs))
            .ok_or("no Hyp map")?
            .map_err(|e| format!("IPA {:#x}: {e}", m.ipa.as_u64()))
    };
    remap(stage2, from, Attrs { access: Access::ReadOnly, ..Attrs::ram() })?;
    if let Err(e) = copy_page(m.to, m.from) {
        let _ = remap(stage2, from, Attrs::ram());
        return Err(e);
    }
    remap(stage2, to, Attrs::ram())
}

/// Moves a page of a running guest (looked up by VMID under the guests' lock, which its traps wait on).
fn migrate_guest_page(m: &Migration) -> Result<(), String> {
    let mut vms = vm::VMS.lock();
    let v: &mut Vm = vms.iter_mut().find(|v| v.vmid == m.vmid).ok_or("no guest with that VMID")?;
    let i = v.movable_index(m.ipa).ok_or("not a movable page of the guest")?;
    if v.movable.get(i).map(|&f| u64::from(f)) != Some(m.from.0) {
        return Err(format!("the guest's page at IPA {:#x} is not {}", m.ipa.as_u64(), m.from));
    }
    let vttbr = v.vttbr();
    migrate_page(&mut v.stage2, vttbr, m)?;
    v.movable[i] = m.to.0 as u32;
    Ok(())
}

/// A finished contiguous allocation.
#[derive(Clone, Debug)]
pub struct Allocation {
    pub pool: usize,
    pub range: PhysRange,
    pub va: Option<VirtRange>,
    pub moved: u32,
    /// Counter ticks for all of it, and for the claim alone (choosing the run, fresh pages from the buddy).
    pub ticks: u64,
    pub claim_ticks: u64,
}

/// Guest pages moved by the allocation under way (for the status call).
static MOVED: AtomicU32 = AtomicU32::new(0);

/// Claims `count` pages aligned to `align` pages from pool `pool`, moving the
/// guest pages in the way with `mover` (each guest's own, or a test's), then
/// maps the range in vmalloc space if `map`. On a failure the allocation is
/// undone and the guests keep every page.
pub fn alloc(
    pool: usize,
    count: u64,
    align: u64,
    map: bool,
    mut mover: impl FnMut(&Migration) -> Result<(), String>,
) -> Result<Allocation, String> {
    let t0 = arch::counter();
    let a: CmaAllocation = {
        let mut mem = MEM.lock();
        let m = mem.as_mut().ok_or("no page allocator")?;
        let mut pools = CMA.lock();
        let p = pools.get_mut(pool).ok_or("no such CMA pool")?;
        let mut vmalloc = VMALLOC.lock();
        let v = if map { Some(vmalloc.as_mut().ok_or("no vmalloc")?) } else { None };
        p.alloc_contig(&mut m.buddy, count, align, v).map_err(|e| format!("{}: {e}", p.name()))?
    };
    let claim_ticks = arch::counter() - t0;
    MOVED.store(0, Ordering::Relaxed);
    let mut failure = None;
    for (k, m) in a.migrations.iter().enumerate() {
        if let Err(e) = mover(m) {
            failure =
                Some((k, format!("moving {} (IPA {:#x} of VMID {}) to {}: {e}", m.from, m.ipa.as_u64(), m.vmid, m.to)));
            break;
        }
        MOVED.fetch_add(1, Ordering::Relaxed);
    }
    let mapped = match (&failure, a.va) {
        (None, Some(va)) => {
            let mut mem = MEM.lock();
            mmu::with_hyp_table(mem.as_mut(), |t, tm| t.map(tm, va.base, a.range.base, a.range.size, Attrs::ram_nx()))
                .ok_or_else(|| String::from("no Hyp map"))
                .and_then(|r| r.map(|_| ()).map_err(|e| format!("mapping the allocation: {e}")))
        }
        _ => Ok(()),
    };
    if let Err(e) = mapped {
        failure = Some((a.migrations.len(), e));
    }
    if let Some((done, why)) = failure {
        undo(pool, &a, done);
        return Err(why);
    }
    Ok(Allocation {
        pool,
        range: a.range,
        va: a.va,
        moved: a.migrations.len() as u32,
        ticks: arch::counter() - t0,
        claim_ticks,
    })
}

fn undo(pool: usize, a: &CmaAllocation, done: usize) {
    let mut mem = MEM.lock();
    let Some(m) = mem.as_mut() else { return };
    let mut pools = CMA.lock();
    let Some(p) = pools.get_mut(pool) else { return };
    match p.abort_contig(&mut m.buddy, a, done) {
        Ok(Some(va)) => {
            if let Some(v) = VMALLOC.lock().as_mut() {
                let _ = v.free(va.base);
            }
        }
        Ok(None) => {}
        Err(e) => defmt::error!("cma: undoing an allocation: {=str}", format!("{e}").as_str()),
    }
}

/// Gives an allocation back: unmapped (if it was mapped) and its pages free in the pool.
pub fn free(a: &Allocation) -> Result<(), String> {
    let mut mem = MEM.lock();
    let m = mem.as_mut().ok_or("no page allocator")?;
    if let Some(va) = a.va {
        mmu::with_hyp_table(Some(&mut *m), |t, tm| t.unmap(tm, va.base, va.size))
            .ok_or("no Hyp map")?
            .map_err(|e| format!("unmapping the allocation: {e}"))?;
        VMALLOC.lock().as_mut().ok_or("no vmalloc")?.free(va.base).map_err(|e| format!("{e}"))?;
    }
    let mut pools = CMA.lock();
    let p = pools.get_mut(a.pool).ok_or("no such CMA pool")?;
    p.free_contig(&mut m.buddy, a.range.base).map_err(|e| format!("{e}"))?;
    Ok(())
}

/// The word the monitor writes at physical `pa` of an allocation it owns.
fn poison(pa: u64) -> u32 {
    (pa as u32) ^ 0x5ca1_ab1e
}

/// Writes (`write`) or checks the poison pattern over the allocation, page by page; true if all of it matched.
fn poison_pass(a: &Allocation, write: bool) -> Result<bool, String> {
    let mut ok = true;
    let (start, end) = Pfn::inside(&a.range);
    for p in start.0..end.0 {
        let base = p * PAGE_SIZE;
        let f = |i: usize| poison(base + 4 * i as u64);
        ok &= with_page(Pfn(p), |va| {
            if write {
                memmap::fill_words(va, PAGE_SIZE as usize, f);
                true
            } else {
                memmap::check_words(va, PAGE_SIZE as usize, f)
            }
        })?;
    }
    // A mapped allocation is read back through its own mapping too.
    if let (Some(va), false) = (a.va, write) {
        let base = a.range.start();
        ok &= memmap::check_words(va.base.raw(), a.range.size as usize, |i| poison(base + 4 * i as u64));
    }
    Ok(ok)
}

// --- the test calls ----------------------------------------------------------------------

/// What a test allocation is doing.
enum TestState {
    Idle,
    Running,
    Done(Allocation),
    Failed(i32),
}

struct Test {
    enabled: bool,
    state: TestState,
    pages: u64,
}

static TEST: Mutex<Test> = Mutex::new(Test { enabled: false, state: TestState::Idle, pages: 0 });

/// A test allocation for a CPU to run.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    cpu: u32,
    pool: usize,
    count: u64,
    align: u64,
    map: bool,
    vmid: u8,
}

static JOB: Mutex<Option<Job>> = Mutex::new(None);

/// Allows the test calls (`carve.selftest=cma`).
pub fn enable_test_calls() {
    TEST.lock().enabled = true;
}

/// `CMA_TEST_ALLOC` from `vm` (the guests' lock is held): starts the job on a free CPU.
#[inline(never)] // off the hot trap path
pub fn test_alloc(vms: &[Vm], caller: usize, pages: u32, align: u32, flags: u32) -> i32 {
    let vm = &vms[caller];
    let mut test = TEST.lock();
    if !test.enabled {
        return hc::NOT_SUPPORTED;
    }
    if !matches!(test.state, TestState::Idle | TestState::Failed(_)) {
        return hc::DENIED;
    }
    let Some(m) = &vm.plan.movable else { return hc::NOT_SUPPORTED };
    let Some(pool) = CMA.lock().iter().position(|p| p.name() == m.pool) else { return hc::NOT_SUPPORTED };
    if !align.is_power_of_two() {
        return hc::INVALID_PARAMETERS;
    }
    let count = match pages {
        0 => CMA.lock().get(pool).map(|p| p.total_pages()).unwrap_or(0),
        n => u64::from(n),
    };
    // The lowest CPU no guest runs on.
    let Some((cpu, mpidr)) = vm::PLAN.lock().as_ref().and_then(|(machine, _)| {
        (0..machine.cpus.len() as u32)
            .find(|c| !vms.iter().any(|v| v.cpu_ids.contains(c)))
            .map(|c| (c, machine.cpus[c as usize] as u32))
    }) else {
        defmt::error!("cma: {=str}: no CPU is free to run a test allocation beside the guests", vm.name());
        return hc::NOT_SUPPORTED;
    };
    *JOB.lock() = Some(Job { cpu, pool, count, align: u64::from(align), map: flags & hc::CMA_MAP != 0, vmid: vm.vmid });
    test.state = TestState::Running;
    test.pages = count;
    MOVED.store(0, Ordering::Relaxed);
    // The CPU may still be listing the monitor's deferred memory, or on its way off after an earlier job.
    vm::wait_deferred_init(cpu);
    let mut r = carve_core::vm::psci::ALREADY_ON;
    for _ in 0..100_000 {
        r = arch::smp::cpu_on(cpu, mpidr);
        if r != carve_core::vm::psci::ALREADY_ON {
            break;
        }
    }
    if r != hc::SUCCESS {
        defmt::error!("cma: CPU_ON of CPU {=u32} for the test allocation failed: {=i32}", cpu, r);
        *JOB.lock() = None;
        test.state = TestState::Failed(hc::INTERNAL_FAILURE);
        return hc::INTERNAL_FAILURE;
    }
    defmt::info!(
        "cma: {=str} asked for {=u64} pages aligned to {=u32} from pool {=u32} ({=str}); CPU {=u32} runs it while the guest runs on",
        vm.name(),
        count,
        align,
        pool as u32,
        if flags & hc::CMA_MAP != 0 { "mapped in vmalloc" } else { "no mapping" },
        cpu
    );
    hc::SUCCESS
}

/// The job waiting for CPU `cpu`, if any.
pub fn take_job(cpu: u32) -> Option<Job> {
    let mut job = JOB.lock();
    if job.is_some_and(|j| j.cpu == cpu) {
        job.take()
    } else {
        None
    }
}

/// Runs a test allocation on this CPU, then turns the CPU off.
pub fn run_job(job: Job) -> ! {
    let r = alloc(job.pool, job.count, job.align, job.map, migrate_guest_page).and_then(|a| {
        poison_pass(&a, true)?;
        Ok(a)
    });
    let state = match r {
        Ok(a) => {
            let per_page = if a.moved > 0 { a.ticks / u64::from(a.moved) } else { 0 };
            defmt::info!(
                "cma: VMID {=u8}'s test allocation: {=u64} pages at PA {=u64:#x}..{=u64:#x}{=str}, {=u32} guest pages moved (copy, stage-2 switch, TLB invalidation by VMID) in {=u64} counter ticks ({=u64} a page), poison written",
                job.vmid,
                a.range.size / PAGE_SIZE,
                a.range.start(),
                a.range.end(),
                if a.va.is_some() { ", mapped in vmalloc" } else { ", not mapped" },
                a.moved,
                a.ticks,
                per_page
            );
            TestState::Done(a)
        }
        Err(e) => {
            defmt::error!("cma: VMID {=u8}'s test allocation failed: {=str}", job.vmid, e.as_str());
            TestState::Failed(hc::INTERNAL_FAILURE)
        }
    };
    TEST.lock().state = state;
    // Off, or (a boot monitor's CPUs) back in the pen until started again.
    arch::smp::cpu_off(job.cpu);
    vm::run_cpu(job.cpu)
}

/// `CMA_TEST_STATUS(what)` for `vm`.
#[inline(never)] // off the hot trap path
pub fn test_status(vm: &Vm, what: u32) -> i32 {
    let test = TEST.lock();
    if !test.enabled {
        return hc::NOT_SUPPORTED;
    }
    match what {
        hc::CMA_STATUS_STATE => match test.state {
            TestState::Idle => 0,
            TestState::Running => 1,
            TestState::Done(_) => 2,
            TestState::Failed(code) => code,
        },
        hc::CMA_STATUS_MOVED => MOVED.load(Ordering::Relaxed) as i32,
        hc::CMA_STATUS_WAITS => vm.migration_waits.min(i32::MAX as u64) as i32,
        hc::CMA_STATUS_PAGES => test.pages.min(i32::MAX as u64) as i32,
        _ => hc::INVALID_PARAMETERS,
    }
}

/// `CMA_TEST_FREE` from `vm`: checks the poison, frees the allocation.
#[inline(never)] // off the hot trap path
pub fn test_free(vm: &Vm) -> i32 {
    let mut test = TEST.lock();
    if !test.enabled {
        return hc::NOT_SUPPORTED;
    }
    let TestState::Done(a) = core::mem::replace(&mut test.state, TestState::Idle) else {
        return hc::DENIED;
    };
    let intact = poison_pass(&a, false);
    let freed = free(&a);
    defmt::info!(
        "cma: {=str}: the allocation at PA {=u64:#x}..{=u64:#x} {=str} after the guest ran on ({=u64} of its accesses waited for a move); freed: {=str}",
        vm.name(),
        a.range.start(),
        a.range.end(),
        match &intact {
            Ok(true) => "kept the monitor's poison",
            Ok(false) => "LOST the monitor's poison (a guest wrote to a page after it moved)",
            Err(_) => "could not be checked",
        },
        vm.migration_waits,
        match &freed {
            Ok(()) => "yes",
            Err(e) => e.as_str(),
        }
    );
    match (intact, freed) {
        (Ok(true), Ok(())) => hc::SUCCESS,
        _ => hc::INTERNAL_FAILURE,
    }
}
