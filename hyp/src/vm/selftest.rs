//! Test calls and the test device of a `selftest` build: what the stubs use to test and time the monitor from inside.
//!
//! - The CMA test calls (`carve.selftest=cma` in the monitor's bootargs) let a
//!   guest start a contiguous allocation from the pool behind its own movable
//!   memory on a physical CPU no guest uses ([`cma_alloc`], run by
//!   [`run_job`] on that CPU), watch it ([`cma_status`]), and have the monitor
//!   check its poison in the allocation and free it ([`cma_free`]).
//! - The test device: a page at `TESTDEV_IPA` that nothing backs, so each
//!   access is a stage-2 data abort the monitor emulates from the syndrome
//!   ([`emulate_testdev`]); the trapcost stub times it.
//!
//! - `carve.selftest=no-zero` ([`SKIP_ZERO`]) breaks first-touch zeroing on purpose.
//!
//! A plain build has none of this: the calls answer NOT_SUPPORTED and the
//! page is a stage-2 fault like any other.

use alloc::string::String;

use carve_core::addr::PAGE_SIZE;
use carve_core::mm::Pfn;
use carve_core::syndrome::Abort;
use carve_core::vm::hypercall as hc;
use spin::Mutex;

use super::cma::migrate_guest_page;
use super::{Vm, PLAN};
use crate::arch;
use crate::arch::memmap;
use crate::arch::vectors::TrapFrame;
use crate::mm::cma::{self as pool, Allocation};
use crate::mm::with_page;

/// A test switch (`carve.selftest=no-zero`): a first touch maps guest RAM
/// without zeroing it (a broken monitor), so the first-touch test can show
/// that what was planted in RAM before the monitor is there to be found.
pub static SKIP_ZERO: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// The word the monitor writes at physical `pa` of an allocation it owns
/// (tests/stubs.rs reads a stale translation's old frame by it).
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

/// Allows the CMA test calls (`carve.selftest=cma`).
pub fn enable_cma_calls() {
    TEST.lock().enabled = true;
}

/// `CMA_TEST_ALLOC` from `vm` (the guests' lock is held): starts the job on a free CPU.
#[inline(never)] // off the hot trap path
pub fn cma_alloc(vms: &[Vm], caller: usize, pages: u32, align: u32, flags: u32) -> i32 {
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
    // The CPU may still be listing the monitor's deferred memory: the job is
    // published only once it is done, so that CPU cannot take the job instead.
    super::wait_deferred_init(cpu);
    *JOB.lock() = Some(Job { cpu, pool, count, align: u64::from(align), map: flags & hc::CMA_MAP != 0, vmid: vm.vmid });
    test.state = TestState::Running;
    test.pages = count;
    // It may also still be on its way off after an earlier job or the listing.
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
                "cma: VMID {=u8}'s test allocation: {=u64} pages at PA {=u64:#x}..{=u64:#x}{=str}, {=u32} guest pages moved (copy, stage-2 switch, {=str}) in {=u64} counter ticks ({=u64} a page), poison written",
                job.vmid,
                a.range.size / PAGE_SIZE,
                a.range.start(),
                a.range.end(),
                if a.va.is_some() { ", mapped in vmalloc" } else { ", not mapped" },
                a.moved,
                if pool::SKIP_TLBI.load(core::sync::atomic::Ordering::Relaxed) {
                    "NO TLB invalidation: carve.selftest=cma-no-tlbi"
                } else {
                    "TLB invalidation by VMID"
                },
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
pub fn cma_status(vm: &Vm, what: u32) -> i32 {
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
pub fn cma_free(vm: &Vm) -> i32 {
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

/// Whether `ipa` is in the test device's page.
pub fn is_testdev(ipa: u64) -> bool {
    (hc::TESTDEV_IPA..hc::TESTDEV_IPA + hc::TESTDEV_SIZE).contains(&ipa)
}

/// Emulates an access to the test device from the syndrome; `false` if it
/// cannot (no valid ISS, or a banked register: SP, LR, PC).
pub fn emulate_testdev(vm: &mut Vm, frame: &mut TrapFrame, a: Abort, ipa: u64) -> bool {
    let Some(access) = a.access().filter(|x| x.reg <= 12) else { return false };
    if a.write() {
        return true; // writes are ignored
    }
    let offset = ipa - hc::TESTDEV_IPA;
    let value = match offset & !3 {
        hc::TESTDEV_COUNTER => {
            vm.testdev_reads = vm.testdev_reads.wrapping_add(1);
            vm.testdev_reads
        }
        hc::TESTDEV_ID => hc::TESTDEV_MAGIC,
        _ => 0,
    };
    frame.r[usize::from(access.reg)] = access.load_value(value >> ((offset & 3) * 8));
    true
}
