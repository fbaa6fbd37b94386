//! memtest: a guest that writes and checks patterns over all of its RAM, with its MMU and caches on.
//!
//! It reads its one memory bank from the DTB carve gave it, maps the bank
//! 1:1 as cacheable Normal memory with its own LPAE stage-1, and makes two
//! passes over every word of the bank except its own image (code, data,
//! stacks): pass 1 writes `address ^ seed`, pass 2 its complement, so each
//! bit is seen at 0 and 1 and two IPAs backed by one page would disagree.
//! Between writing and checking it cleans and invalidates the range to the
//! point of coherency, so the check reads memory, not the cache. A last
//! check at the end finds whether anything else (another guest on another
//! CPU, say) wrote into its RAM meanwhile. The seed comes from the guest's
//! VMID (carve's INFO call), so two guests use different patterns.
//!
//! Output (CONSOLE_WRITE), e.g.:
//! `memtest: bank 0x40000000+0x04000000, 66912256 bytes checked (image 0x40010000-0x40040000 kept), vmid 1, seed 0x9e3779b9, PASS`
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use carve_stubs::mmu;
    use carve_stubs::{abi, hvc, rt, say, Hex};

    carve_stubs::entry!(main);

    /// Mismatches found; the first few are printed.
    struct Errors {
        count: u64,
    }

    impl Errors {
        fn record(&mut self, addr: usize, want: u32, got: u32, pass: &str) {
            if self.count < 4 {
                say!("memtest: {} mismatch at {}: wrote {:#010x}, read {:#010x}", pass, Hex(addr as u64), want, got);
            }
            self.count += 1;
        }
    }

    fn pattern(addr: usize, seed: u32, invert: bool) -> u32 {
        let v = addr as u32 ^ seed;
        if invert {
            !v
        } else {
            v
        }
    }

    fn fill(r: (usize, usize), seed: u32, invert: bool) {
        let mut a = r.0;
        while a < r.1 {
            // SAFETY: `a` is a word of our RAM bank outside our own image
            // (see `ranges` in main): memory nothing else of ours uses.
            unsafe { (a as *mut u32).write_volatile(pattern(a, seed, invert)) };
            a += 4;
        }
    }

    fn verify(r: (usize, usize), seed: u32, invert: bool, pass: &str, errors: &mut Errors) {
        let mut a = r.0;
        while a < r.1 {
            // SAFETY: as in `fill`: a word of our RAM outside our image.
            let got = unsafe { (a as *const u32).read_volatile() };
            let want = pattern(a, seed, invert);
            if got != want {
                errors.record(a, want, got, pass);
            }
            a += 4;
        }
    }

    fn fail(why: core::fmt::Arguments<'_>) -> ! {
        say!("memtest: {}, FAIL", why);
        hvc::system_off()
    }

    fn main(dtb: u32) -> ! {
        let vmid = hvc::info(abi::INFO_VMID);
        let (base, size) = rt::ram_bank(dtb).unwrap_or_else(|e| fail(format_args!("{e}")));
        let end = base.saturating_add(size);
        let (img_start, img_end) = rt::image();
        if end > 0xffff_f000 {
            fail(format_args!("bank {}+{} reaches past 4 GiB: not supported", Hex(base), Hex(size)));
        }
        if !(base <= u64::from(img_start) && u64::from(img_end) <= end) {
            fail(format_args!(
                "bank {}+{} does not hold this stub ({}-{})",
                Hex(base),
                Hex(size),
                Hex(img_start.into()),
                Hex(img_end.into())
            ));
        }
        let seed = if vmid > 0 { (vmid as u32).wrapping_mul(0x9e37_79b9) } else { 0xa5a5_5a5a };
        if vmid <= 0 {
            say!("memtest: INFO(VMID) returned {} ({}): using a fixed seed", vmid, abi::status_name(vmid));
        }

        // RAM 1:1 and cacheable; the rest of the low 4 GiB 1:1 as Strongly-ordered.
        mmu::enable_identity(base, end);

        let ranges = [(base as usize, img_start as usize), (img_end as usize, end as usize)];
        let checked: usize = ranges.iter().map(|r| r.1 - r.0).sum();
        let mut errors = Errors { count: 0 };
        for (pass, invert) in [("pass 1", false), ("pass 2", true)] {
            for &r in &ranges {
                fill(r, seed, invert);
            }
            for &r in &ranges {
                mmu::clean_invalidate_dcache_range(r.0, r.1 - r.0);
            }
            for &r in &ranges {
                verify(r, seed, invert, pass, &mut errors);
            }
        }
        // The end: pass 2's pattern must still be there.
        for &r in &ranges {
            mmu::clean_invalidate_dcache_range(r.0, r.1 - r.0);
            verify(r, seed, true, "final check", &mut errors);
        }
        say!(
            "memtest: bank {}+{}, {} bytes checked (image {}-{} kept), vmid {}, seed {:#010x}, {} mismatches, {}",
            Hex(base),
            Hex(size),
            checked,
            Hex(img_start.into()),
            Hex(img_end.into()),
            vmid,
            seed,
            errors.count,
            if errors.count == 0 { "PASS" } else { "FAIL" }
        );
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("memtest is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
