//! A guest's movable memory: lent from a CMA pool at build time, moved page by page while the guest runs.
//!
//! A guest with movable memory (`memory-region` + `carve,movable-memory`)
//! gets the top of its RAM from free pages of a CMA pool ([`lend`]), mapped
//! in stage-2 page by page ([`Vm::movable`] keeps the frame behind each).
//! When a contiguous allocation from the pool (`mm::cma::alloc`) finds one
//! of those pages in its way, [`migrate_guest_page`] moves it: the guest is
//! looked up by VMID under the guests' lock, which its traps wait on, and
//! `mm::cma::migrate_page` does the page and table work. A guest access that
//! faults meanwhile is retried once the entry is switched (`vm::trap`).
//!
//! The test calls (`carve.selftest=cma` in the monitor's bootargs) let a guest
//! start an allocation from its own pool on a physical CPU no guest uses
//! ([`test_alloc`], run by [`run_job`] on that CPU), watch it
//! ([`test_status`]), and have the monitor check and free it ([`test_free`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use carve_core::addr::{Address, PAGE_SIZE};
use carve_core::mm::{Migration, Pfn};
use carve_core::plan::GuestPlan;
use carve_core::vm::hypercall as hc;
use spin::Mutex;

use super::{Vm, VmError, PLAN, VMS};
use crate::arch;
use crate::arch::memmap;
use crate::mm::cma::{self as pool, Allocation};
use crate::mm::with_page;

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
pub fn migrate_guest_page(m: &Migration) -> Result<(), String> {
    let mut vms = VMS.lock();
    let v: &mut Vm = vms.iter_mut().find(|v| v.vmid == m.vmid).ok_or("no guest with that VMID")?;
    let i = v.movable_index(m.ipa).ok_or("not a movable page of the guest")?;
    if v.movable.get(i).map(|&f| u64::from(f)) != Some(m.from.0) {
        return Err(format!("the guest's page at IPA {:#x} is not {}", m.ipa.as_u64(), m.from));
    }
    let vttbr = v.vttbr();
    pool::migrate_page(&mut v.stage2, vttbr, m)?;
    v.movable[i] = m.to.0 as u32;
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
    let Some(pool) = pool::pool_index(&m.pool) else { return hc::NOT_SUPPORTED };
    if !align.is_power_of_two() {
        return hc::INVALID_PARAMETERS;
    }
    let count = match pages {
        0 => pool::pool_pages(pool).unwrap_or(0),
        n => u64::from(n),
    };
    // The lowest CPU no guest runs on.
    let Some((cpu, mpidr)) = PLAN.lock().as_ref().and_then(|(machine, _)| {
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
    // The CPU may still be listing the monitor's deferred memory, or on its way off after an earlier job.
    super::wait_deferred_init(cpu);
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
    let r = pool::alloc(job.pool, job.count, job.align, job.map, migrate_guest_page).and_then(|a| {
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
    super::run_cpu(job.cpu)
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
        hc::CMA_STATUS_MOVED => pool::moved_so_far() as i32,
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
    let freed = pool::free(&a);
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
