//! restart: a guest that asks for SYSTEM_RESET three times and checks that each boot gets fresh RAM.
//!
//! carve rebuilds a guest that asks for PSCI SYSTEM_RESET: fresh (zeroed on first touch)
//! RAM, fresh stage-2 tables, the same plan, its images loaded again. Each
//! boot this stub:
//! - asks carve which boot it is (INFO(RESTARTS): 0, 1, 2, 3) and how many
//!   stage-2 table pages are free (INFO(FREE_TABLE_PAGES)), and prints both
//!   (the test checks that the count is the same on every boot: a restart
//!   that leaked table pages would lower it);
//! - checks that all of its RAM outside its own image, its DTB and its initrd (if it has one) is zero
//!   (on every boot as carve must leave it: each unit zeroed on its first touch;
//!   no word of a previous boot or of what was there before survives);
//! - counts the pages that begin with [`PLANTED`] (the first-touch test
//!   loads pages of it into the machine's RAM before the monitor starts: the
//!   stub must see none, as the monitor zeroes each unit of RAM on its first
//!   touch; its control run, with that zeroing switched off, sees them);
//! - stamps every word of that RAM with `0x5a5a0000 | boot`, and asks for
//!   SYSTEM_RESET; after the third restart it powers off with SYSTEM_OFF.
//!
//! Output per boot: `restart: boot N: free table pages F, vmid V, RAM fresh (B bytes ..., W words not zero, P planted pages), ok`;
//! at the end `restart: 3 restarts, every boot with fresh RAM, PASS`.
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use carve_stubs::{abi, hvc, rt, say, Hex};

    carve_stubs::entry!(main);

    /// Restarts to ask for before powering off.
    const RESTARTS: i32 = 3;
    const STAMP: u32 = 0x5a5a_0000;
    /// What tests/stubs.rs plants in RAM before the monitor starts, repeated over whole pages.
    const PLANTED: &[u8; 16] = b"CARVE-PLANTED-PG";

    /// Whether the page at `a` (page aligned, ours to read) begins with [`PLANTED`].
    fn planted_at(a: u32) -> bool {
        (0..4).all(|i| {
            let want = u32::from_le_bytes([PLANTED[4 * i], PLANTED[4 * i + 1], PLANTED[4 * i + 2], PLANTED[4 * i + 3]]);
            // SAFETY: a word of the page at `a`, which the caller says is ours.
            unsafe { ((a + 4 * i as u32) as *const u32).read_volatile() == want }
        })
    }

    fn fail(args: core::fmt::Arguments<'_>) -> ! {
        say!("restart: {}, FAIL", args);
        hvc::system_off()
    }

    /// RAM outside `keep` (the image, the DTB, the initrd: empty ranges allowed), as at most four ranges.
    fn ranges(ram: (u32, u32), mut keep: [(u32, u32); 3]) -> [(u32, u32); 4] {
        keep.sort_unstable();
        let mut out = [(0, 0); 4];
        let mut at = ram.0;
        for (i, k) in keep.iter().enumerate() {
            let start = k.0.clamp(at, ram.1);
            out[i] = (at, start);
            at = at.max(k.1.min(ram.1));
        }
        out[3] = (at, ram.1);
        out
    }

    fn main(dtb: u32) -> ! {
        let boot = hvc::info(abi::INFO_RESTARTS);
        let free = hvc::info(abi::INFO_FREE_TABLE_PAGES);
        let vmid = hvc::info(abi::INFO_VMID);
        if boot < 0 || free < 0 || vmid < 0 {
            fail(format_args!("INFO answered RESTARTS {}, FREE_TABLE_PAGES {}, VMID {}", boot, free, vmid));
        }
        let mut ram = None;
        if let Err(e) = rt::read_dt(dtb, |r| {
            if r.is_memory && r.size > 0 && ram.is_none() {
                ram = Some((r.base, r.size));
            }
        }) {
            fail(format_args!("DTB at {}: {}", Hex(dtb.into()), e));
        }
        let Some((base, size)) = ram else { fail(format_args!("no memory node in the DTB")) };
        if base + size > 0xffff_f000 {
            fail(format_args!("RAM {}+{} reaches past 4 GiB: not supported", Hex(base), Hex(size)));
        }
        // SAFETY: read_dt checked the header at `dtb` (our RAM); totalsize is its second word.
        let dtb_size = u32::from_be(unsafe { (dtb as *const u32).add(1).read_volatile() });
        let (img_start, img_end) = rt::image();
        // An initrd (bench-restart gives one, for the copy it costs) is the monitor's copy, not old RAM.
        let initrd = match rt::initrd(dtb) {
            Ok(r) => r.map_or((0, 0), |(s, e)| (s as u32, (e as u32).next_multiple_of(4))),
            Err(e) => fail(format_args!("DTB at {}: {}", Hex(dtb.into()), e)),
        };
        let rs = ranges(
            (base as u32, (base + size) as u32),
            [(img_start, img_end), (dtb, dtb.saturating_add(dtb_size).next_multiple_of(4)), initrd],
        );

        let mut nonzero = 0u32;
        let mut planted = 0u32;
        let mut checked = 0u64;
        for &(s, e) in &rs {
            let mut a = s;
            while a < e {
                if a & 0xfff == 0 && e - a >= 16 && planted_at(a) {
                    planted += 1;
                }
                // SAFETY: a word of our RAM outside our image, DTB and initrd.
                let w = unsafe { (a as *const u32).read_volatile() };
                if w != 0 {
                    if nonzero < 4 {
                        let from = if w & 0xffff_0000 == STAMP { "a previous boot's stamp" } else { "not ours" };
                        say!("restart: boot {}: word at {} is {:#010x} ({})", boot, Hex(a.into()), w, from);
                    }
                    nonzero += 1;
                }
                a += 4;
            }
            checked += u64::from(e - s);
        }
        let fresh = nonzero == 0;
        say!(
            "restart: boot {}: free table pages {}, vmid {}, RAM {} ({} bytes outside image, DTB and initrd, {} words not zero, {} planted pages), {}",
            boot,
            free,
            vmid,
            if fresh { "fresh" } else { "NOT fresh" },
            checked,
            nonzero,
            planted,
            if fresh { "ok" } else { "FAIL" }
        );
        if !fresh {
            hvc::system_off()
        }
        if boot >= RESTARTS {
            say!(
                "restart: {} restarts, every boot with fresh RAM, {}",
                boot,
                if boot == RESTARTS { "PASS" } else { "FAIL (too many boots)" }
            );
            hvc::system_off()
        }
        for &(s, e) in &rs {
            let mut a = s;
            while a < e {
                // SAFETY: as above: RAM of ours that nothing else uses.
                unsafe { (a as *mut u32).write_volatile(STAMP | boot as u32) };
                a += 4;
            }
        }
        say!("restart: boot {}: RAM stamped, asking for SYSTEM_RESET", boot);
        let r = hvc::system_reset();
        fail(format_args!("SYSTEM_RESET returned {} ({})", r, abi::status_name(r)))
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("restart is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
