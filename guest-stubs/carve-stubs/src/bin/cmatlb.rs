//! cmatlb: a guest that keeps the translations of a few of its movable pages hot while the monitor moves them, then checks it reads their new copies.
//!
//! Its DTB's one bank is its dense RAM; carve backs the top of it (the
//! guest's `carve,movable-memory`) with free pages of a CMA pool. The stub
//! maps the bank 1:1, cacheable, writes a pattern over the top `HOT` pages of
//! the bank (movable ones), and asks the monitor (`CMA_TEST_ALLOC`, a test
//! call `carve.selftest=cma` enables) to claim the whole pool, which moves
//! every one of its movable pages on another CPU. Meanwhile the stub does
//! nothing but read a word of each hot page, over and over, and now and then
//! ask whether the allocation is done: those few pages, its code and its
//! stack are all it touches, so its CPU's TLB keeps their translations.
//!
//! When the monitor says the allocation is done, it has also written its
//! poison over the claimed pages, the hot pages' old frames included. The
//! stub then reads every word of the hot pages: each must hold the pattern,
//! which only the new copies do. A stale translation (a move that did not
//! invalidate the TLB by the guest's VMID: `carve.selftest=cma-no-tlbi`)
//! reads the old frame, and the monitor's poison there.
//!
//! Output (CONSOLE_WRITE), e.g.:
//! `cmatlb: 8 hot pages at 0x41778000, 1200000 reads while 4096 guest pages moved, 0 of 8192 words stale, PASS`
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use carve_stubs::mmu;
    use carve_stubs::{abi, hvc, rt, say, Hex};

    carve_stubs::entry!(main);

    /// Pages kept hot: consecutive, so each has a TLB slot of its own.
    const HOT: usize = 8;
    const PAGE: usize = 4096;
    /// Reads of the hot pages between two looks at the allocation's state.
    const READS_PER_POLL: u32 = 4096;

    fn pattern(addr: usize, seed: u32) -> u32 {
        (addr as u32 ^ seed).wrapping_mul(0x9e37_79b9) | 1
    }

    fn fail(why: core::fmt::Arguments<'_>) -> ! {
        say!("cmatlb: {}, FAIL", why);
        hvc::system_off()
    }

    fn status(what: u32) -> i32 {
        hvc::call(abi::CMA_TEST_STATUS, what, 0, 0)
    }

    fn main(dtb: u32) -> ! {
        let vmid = hvc::info(abi::INFO_VMID);
        let (base, size) = rt::ram_bank(dtb).unwrap_or_else(|e| fail(format_args!("{e}")));
        let end = base.saturating_add(size);
        let (_, img_end) = rt::image();
        let hot = end.saturating_sub((HOT * PAGE) as u64);
        if end > 0xffff_f000 || hot < u64::from(img_end) {
            fail(format_args!("bank {}+{} is past 4 GiB or too small for {} hot pages", Hex(base), Hex(size), HOT));
        }
        let hot = hot as usize;
        let seed = (vmid as u32).wrapping_mul(0x85eb_ca6b) ^ 0x7e57_7e57;
        mmu::enable_identity(base, end);

        for a in (hot..hot + HOT * PAGE).step_by(4) {
            // SAFETY: a word of our RAM bank above our image: memory nothing else of ours uses.
            unsafe { (a as *mut u32).write_volatile(pattern(a, seed)) };
        }
        mmu::clean_invalidate_dcache_range(hot, HOT * PAGE);

        let r = hvc::call(abi::CMA_TEST_ALLOC, 0, 256, abi::CMA_MAP);
        if r != abi::SUCCESS {
            fail(format_args!("CMA_TEST_ALLOC returned {} ({})", r, abi::status_name(r)));
        }
        // Only the hot pages (and our code and stack) from here until the monitor is done.
        let (mut reads, mut sum) = (0u64, 0u32);
        loop {
            for _ in 0..READS_PER_POLL {
                for p in 0..HOT {
                    let a = hot + p * PAGE + (reads as usize % (PAGE / 4)) * 4;
                    // SAFETY: as above.
                    sum = sum.wrapping_add(unsafe { (a as *const u32).read_volatile() });
                }
                reads += HOT as u64;
            }
            if status(abi::CMA_STATUS_STATE) != 1 {
                break;
            }
        }
        let state = status(abi::CMA_STATUS_STATE);
        if state != 2 {
            fail(format_args!("the allocation ended with state {} ({})", state, abi::status_name(state)));
        }
        let (mut stale, mut first) = (0u32, None);
        for a in (hot..hot + HOT * PAGE).step_by(4) {
            // SAFETY: as above.
            let got = unsafe { (a as *const u32).read_volatile() };
            if got != pattern(a, seed) {
                stale += 1;
                first.get_or_insert((a, got));
            }
        }
        if let Some((a, got)) = first {
            say!(
                "cmatlb: first stale word at {}: read {:#010x}, the page's new copy holds {:#010x}",
                Hex(a as u64),
                got,
                pattern(a, seed)
            );
        }
        let moved = status(abi::CMA_STATUS_MOVED);
        let freed = hvc::call(abi::CMA_TEST_FREE, 0, 0, 0);
        let pass = stale == 0 && moved > 0 && freed == abi::SUCCESS;
        say!(
            "cmatlb: {} hot pages at {}, {} reads while {} guest pages moved (sum {:#x}), {} of {} words stale, free {}, {}",
            HOT,
            Hex(hot as u64),
            reads,
            moved,
            sum,
            stale,
            HOT * PAGE / 4,
            abi::status_name(freed),
            if pass { "PASS" } else { "FAIL" }
        );
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("cmatlb is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
