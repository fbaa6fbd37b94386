//! cma: a guest whose RAM the monitor moves while it runs, checking every word before, during and after.
//!
//! Its DTB's one bank is its dense RAM; carve backs the top of it (the
//! guest's `carve,movable-memory`) with free pages of a CMA pool. The stub
//! maps the bank 1:1, cacheable, writes round 0 of a pattern over every word
//! but its own image, and asks the monitor (`CMA_TEST_ALLOC`, a test call
//! that `carve.selftest=cma` enables) for a contiguous allocation of the
//! whole pool, mapped in the monitor's vmalloc space. The monitor runs it on
//! another physical CPU and moves each of this guest's pages in the way;
//! meanwhile the stub keeps sweeping its RAM, downwards (the monitor moves
//! pages upwards, so the two cross): each sweep checks round `r` and
//! writes round `r + 1`. When the monitor says it is done, two more sweeps
//! and a last check run, then `CMA_TEST_FREE` has the monitor check that its
//! own poison in the allocation is intact (a write through a stale mapping
//! would break it) and free it.
//!
//! Output (CONSOLE_WRITE), e.g.:
//! `cma: bank 0x40000000+0x01800000, allocation of 4096 pages: 4096 guest pages moved, 30000 KiB swept while it ran, 4 sweeps in all, 1 accesses waited for a move, poison SUCCESS, 0 mismatches, PASS`
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use carve_stubs::mmu;
    use carve_stubs::{abi, hvc, rt, say, Hex};

    carve_stubs::entry!(main);

    fn pattern(addr: usize, seed: u32, round: u32) -> u32 {
        (addr as u32 ^ seed).wrapping_add(round.wrapping_mul(0x9e37_79b9))
    }

    fn fail(why: core::fmt::Arguments<'_>) -> ! {
        say!("cma: {}, FAIL", why);
        hvc::system_off()
    }

    /// Bytes between two looks at the allocation's state during a sweep.
    const CHUNK: usize = 64 << 10;

    /// Checks round `round` over `ranges` and, with `next`, writes round
    /// `round + 1`; returns the mismatches. While `*running`, it asks the
    /// monitor every [`CHUNK`] whether the allocation still runs, and counts
    /// the bytes it swept meanwhile in `*during`.
    fn sweep(
        ranges: &[(usize, usize)],
        seed: u32,
        round: u32,
        next: bool,
        running: &mut bool,
        during: &mut u64,
    ) -> u64 {
        let mut bad = 0u64;
        // Downwards: the monitor moves pages upwards, so each sweep crosses its path.
        for &(start, end) in ranges.iter().rev() {
            let mut a = end;
            while a > start {
                a -= 4;
                if *running && a % CHUNK == 0 {
                    *running = status(abi::CMA_STATUS_STATE) == 1;
                }
                if *running {
                    *during += 4;
                }
                // SAFETY: `a` is a word of our RAM bank outside our own image: memory nothing else of ours uses.
                let got = unsafe { (a as *const u32).read_volatile() };
                let want = pattern(a, seed, round);
                if got != want {
                    if bad < 4 {
                        say!(
                            "cma: round {} mismatch at {}: want {:#010x}, read {:#010x}",
                            round,
                            Hex(a as u64),
                            want,
                            got
                        );
                    }
                    bad += 1;
                }
                if next {
                    // SAFETY: as above.
                    unsafe { (a as *mut u32).write_volatile(pattern(a, seed, round + 1)) };
                }
            }
        }
        bad
    }

    fn status(what: u32) -> i32 {
        hvc::call(abi::CMA_TEST_STATUS, what, 0, 0)
    }

    fn main(dtb: u32) -> ! {
        let vmid = hvc::info(abi::INFO_VMID);
        let (base, size) = rt::ram_bank(dtb).unwrap_or_else(|e| fail(format_args!("{e}")));
        let end = base.saturating_add(size);
        let (img_start, img_end) = rt::image();
        if end > 0xffff_f000 || !(base <= u64::from(img_start) && u64::from(img_end) <= end) {
            fail(format_args!("bank {}+{} is past 4 GiB or does not hold this stub", Hex(base), Hex(size)));
        }
        let seed = (vmid as u32).wrapping_mul(0x85eb_ca6b) ^ 0x1234_5678;
        mmu::enable_identity(base, end);
        let ranges = [(base as usize, img_start as usize), (img_end as usize, end as usize)];

        // Round 0 everywhere, then ask for the whole pool behind our movable memory.
        for &(s, e) in &ranges {
            let mut a = s;
            while a < e {
                // SAFETY: a word of our RAM outside our image.
                unsafe { (a as *mut u32).write_volatile(pattern(a, seed, 0)) };
                a += 4;
            }
            mmu::clean_invalidate_dcache_range(s, e - s);
        }
        let r = hvc::call(abi::CMA_TEST_ALLOC, 0, 256, abi::CMA_MAP);
        if r != abi::SUCCESS {
            fail(format_args!("CMA_TEST_ALLOC returned {} ({})", r, abi::status_name(r)));
        }
        let (mut round, mut during, mut bad, mut running) = (0u32, 0u64, 0u64, true);
        while running {
            bad += sweep(&ranges, seed, round, true, &mut running, &mut during);
            round += 1;
        }
        let state = status(abi::CMA_STATUS_STATE);
        if state != 2 {
            fail(format_args!("the allocation ended with state {} ({})", state, abi::status_name(state)));
        }
        for _ in 0..2 {
            bad += sweep(&ranges, seed, round, true, &mut running, &mut during);
            round += 1;
        }
        for &(s, e) in &ranges {
            mmu::clean_invalidate_dcache_range(s, e - s);
        }
        bad += sweep(&ranges, seed, round, false, &mut running, &mut during);
        let (moved, pages, waits) =
            (status(abi::CMA_STATUS_MOVED), status(abi::CMA_STATUS_PAGES), status(abi::CMA_STATUS_WAITS));
        let freed = hvc::call(abi::CMA_TEST_FREE, 0, 0, 0);
        let pass = bad == 0 && freed == abi::SUCCESS && moved > 0;
        say!(
            "cma: bank {}+{}, allocation of {} pages: {} guest pages moved, {} KiB swept while it ran, {} sweeps in all, {} accesses waited for a move, poison {}, {} mismatches, {}",
            Hex(base),
            Hex(size),
            pages,
            moved,
            during / 1024,
            round,
            waits,
            abi::status_name(freed),
            bad,
            if pass { "PASS" } else { "FAIL" }
        );
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("cma is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
