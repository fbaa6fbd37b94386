//! probe: a guest that touches what it was not given and looks for what it must never see.
//!
//! carve's isolation from inside a guest, run with `carve,on-fault = "inject"`:
//!
//! 1. **Touches.** It reads (and at some places writes) guest-physical (IPA)
//!    addresses outside everything its DT gives it (its RAM bank, the devices
//!    passed through) and outside carve's emulated test page:
//!    - below 4 GiB with its MMU off (VA = IPA): every 2 MiB, a write as well
//!      every 64 MiB, and every device window of QEMU `virt` it was not given
//!      (GIC hypervisor and virtual CPU interfaces, RTC, fw-cfg, GPIO, the 32
//!      virtio-mmio slots, flash, PCIe windows), read and written;
//!    - above 4 GiB, up to the 40-bit IPA limit (1 TiB) of LPAE stage-2,
//!      through its own LPAE stage-1: a 1 GiB block "window" moved across the
//!      IPA space, touching each GiB once (a write as well every 32 GiB) and
//!      the PCIe ECAM and 64-bit MMIO windows. A 32-bit guest reaches IPAs
//!      above 4 GiB only this way; the 1 GiB stride (instead of 2 MiB) keeps
//!      the run to about 3,000 faults instead of half a million: each GiB is
//!      one first-level entry of carve's stage-2, and nothing of this guest
//!      is mapped above 4 GiB.
//!
//!    Each touch must be refused: the monitor logs a stage-2 fault and
//!    injects a data abort, taken at this stub's own vector with DFAR = the
//!    address touched, DFSR = a synchronous external abort in the format its
//!    TTBCR.EAE selects (short: FS 0b01000; long: STATUS 0b010000 and the
//!    LPAE bit) with WnR for writes, and LR_abt pointing after the touch.
//!
//! 2. **Marker scan.** The test planted the 16-byte marker
//!    `CARVE-SECRET-MRK` in every carveout and in the monitor's free RAM; the
//!    probe scans all of its RAM for it and must find none. It first proves
//!    the scanner finds a copy it plants in a scratch buffer. The marker
//!    never exists in this image: the scanner compares against words kept
//!    XOR-ed with a key and unmasked only in registers (assembly below), so
//!    the scan cannot find itself.
//!
//! Output: one line per result, `probe: ... PASS` or `... FAIL`, then `probe: PASS` or `probe: FAIL`.
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::arch::global_asm;

    use carve_stubs::mmu::{self, Kind, GIB};
    use carve_stubs::rt::{self, Touch};
    use carve_stubs::{abi, hvc, say, Hex};

    carve_stubs::entry!(main);

    const MIB: u64 = 1 << 20;
    /// Below 4 GiB: a read every 2 MiB...
    const LOW_STEP: u64 = 2 * MIB;
    /// ... and a write every 32nd step (64 MiB).
    const LOW_WRITE_EVERY: u64 = 32;
    const LOW_END: u64 = 4 * GIB;
    /// Above 4 GiB: a read at the start of every GiB, a write every 32 GiB.
    const HIGH_WRITE_EVERY: u64 = 32;
    /// LPAE stage-2 input addresses have 40 bits.
    const IPA_END: u64 = 1 << 40;
    /// What a write stores (if it is not refused, the test finds it reported).
    const WRITE_VALUE: u32 = 0xbad0_c0de;

    /// QEMU 7.2 `virt`'s device windows (dts/qemu-virt.dtsi), besides the 32 virtio-mmio slots.
    const VIRT_WINDOWS: [(u64, &str); 16] = [
        (0x0000_0000, "flash bank 0"),
        (0x0400_0000, "flash bank 1"),
        (0x0800_0000, "GIC distributor"),
        (0x0801_0000, "GIC CPU interface"),
        (0x0802_0000, "GICv2m MSI frame"),
        (0x0803_0000, "GIC hypervisor control (GICH)"),
        (0x0804_0000, "GIC virtual CPU interface (GICV)"),
        (0x0900_0000, "PL011 UART"),
        (0x0901_0000, "PL031 RTC"),
        (0x0902_0000, "fw-cfg"),
        (0x0903_0000, "PL061 GPIO"),
        (0x0c00_0000, "platform bus"),
        (0x1000_0000, "PCIe 32-bit MMIO"),
        (0x3eff_0000, "PCIe I/O"),
        (0x40_1000_0000, "PCIe ECAM"),
        (0x80_0000_0000, "PCIe 64-bit MMIO"),
    ];
    const VIRTIO_BASE: u64 = 0x0a00_0000;
    const VIRTIO_SLOTS: u64 = 32;
    const VIRTIO_STRIDE: u64 = 0x200;

    /// The marker, XOR-ed with [`MARKER_KEY`] word by word (little-endian words of the 16 bytes).
    const MARKER_KEY: u32 = 0x5a3c_96e1;
    const fn masked(b: &[u8; 16], i: usize) -> u32 {
        u32::from_le_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]]) ^ MARKER_KEY
    }
    // Evaluated at compile time: only the masked words reach the image.
    const MASKED: [u32; 4] = {
        let m = b"CARVE-SECRET-MRK";
        [masked(m, 0), masked(m, 1), masked(m, 2), masked(m, 3)]
    };
    static MASKED_WORDS: [u32; 4] = MASKED;

    global_asm!(
        r#"
        .arm
        @ probe_scan(start, end, masked, key) -> address of the first marker copy in
        @ [start, end) at a 4-byte boundary, or 0. The unmasked words live in r4-r7 only.
        .section .text.probe_scan, "ax", %progbits
        .global probe_scan
        .type probe_scan, %function
probe_scan:
        push {{r4-r8, lr}}
        ldm r2, {{r4-r7}}
        eor r4, r4, r3
        eor r5, r5, r3
        eor r6, r6, r3
        eor r7, r7, r3
        sub r1, r1, #12
1:      cmp r0, r1
        bhs 3f
        ldr r8, [r0]
        cmp r8, r4
        bne 2f
        ldr r8, [r0, #4]
        cmp r8, r5
        ldreq r8, [r0, #8]
        cmpeq r8, r6
        ldreq r8, [r0, #12]
        cmpeq r8, r7
        beq 4f
2:      add r0, r0, #4
        b 1b
3:      mov r0, #0
4:      pop {{r4-r8, pc}}

        @ probe_plant(dst, masked, key): writes one marker copy at dst (for the self-test).
        .section .text.probe_plant, "ax", %progbits
        .global probe_plant
        .type probe_plant, %function
probe_plant:
        push {{r4-r7, lr}}
        ldm r1, {{r4-r7}}
        eor r4, r4, r2
        eor r5, r5, r2
        eor r6, r6, r2
        eor r7, r7, r2
        stm r0, {{r4-r7}}
        pop {{r4-r7, pc}}
"#
    );

    extern "C" {
        fn probe_scan(start: u32, end: u32, masked: *const u32, key: u32) -> u32;
        fn probe_plant(dst: *mut u32, masked: *const u32, key: u32);
    }

    /// Address ranges the guest was given: its DT's `reg` ranges and the test device page.
    struct Given {
        ranges: [(u64, u64); 48],
        n: usize,
        overflow: bool,
        ram: Option<(u64, u64)>,
    }

    impl Given {
        fn add(&mut self, base: u64, size: u64) {
            if self.n == self.ranges.len() {
                self.overflow = true;
                return;
            }
            self.ranges[self.n] = (base, base.saturating_add(size));
            self.n += 1;
        }

        fn contains(&self, addr: u64) -> bool {
            self.ranges[..self.n].iter().any(|&(s, e)| s <= addr && addr < e)
        }

        /// Whether any given range meets `[start, end)`.
        fn meets(&self, start: u64, end: u64) -> bool {
            self.ranges[..self.n].iter().any(|&(s, e)| s < end && start < e)
        }
    }

    /// The tally of touches.
    #[derive(Default)]
    struct Tally {
        reads: u32,
        writes: u32,
        refused: u32,
        not_refused: u32,
        bad_syndrome: u32,
        problems_shown: u32,
    }

    impl Tally {
        fn problem(&mut self, args: core::fmt::Arguments<'_>) {
            if self.problems_shown < 12 {
                say!("probe: {}", args);
                self.problems_shown += 1;
            }
        }

        /// Touches virtual address `va` (IPA `ipa`) and checks the abort that must follow.
        fn touch(&mut self, va: u32, ipa: u64, write: bool, what: &str) {
            let t = if write {
                self.writes += 1;
                rt::touch_write(va, WRITE_VALUE)
            } else {
                self.reads += 1;
                rt::touch_read(va)
            };
            let kind = if write { "write" } else { "read" };
            let abort = match t {
                Touch::Done(v) => {
                    self.not_refused += 1;
                    self.problem(format_args!(
                        "NOT refused: {} of IPA {} ({}) at VA {} completed (read {:#x}), FAIL",
                        kind,
                        Hex(ipa),
                        what,
                        Hex(va.into()),
                        v
                    ));
                    return;
                }
                Touch::Refused(a) => a,
            };
            self.refused += 1;
            let long = mmu::long_descriptors();
            // Synchronous external abort (Arm ARM B3.13.3): long STATUS 0b010000 with DFSR.LPAE (bit 9),
            // short FS 0b01000 (FS[4] is bit 10); WnR is bit 11. The short format's domain is UNKNOWN.
            let (mask, status) = if long { (0xe3f, (1 << 9) | 0x10) } else { (0xe0f, 0x008) };
            let want = status | if write { 1 << 11 } else { 0 };
            let (read_insn, write_insn) = rt::touch_instructions();
            let pc_ok = abort.pc == if write { write_insn } else { read_insn };
            if abort.dfar != va || abort.dfsr & mask != want || !pc_ok {
                self.bad_syndrome += 1;
                self.problem(format_args!(
                    "{} of IPA {} ({}) at VA {}: abort with DFAR {}, DFSR {:#x} (want {:#x} under mask {:#x}), PC {}, FAIL",
                    kind,
                    Hex(ipa),
                    what,
                    Hex(va.into()),
                    Hex(abort.dfar.into()),
                    abort.dfsr,
                    want,
                    mask,
                    Hex(abort.pc.into())
                ));
            }
        }

        fn touches(&self) -> u32 {
            self.reads + self.writes
        }
    }

    fn fail(args: core::fmt::Arguments<'_>) -> ! {
        say!("probe: {}, FAIL", args);
        say!("probe: FAIL");
        hvc::system_off()
    }

    fn main(dtb: u32) -> ! {
        let mut given = Given { ranges: [(0, 0); 48], n: 0, overflow: false, ram: None };
        if let Err(e) = rt::read_dt(dtb, |r| {
            if r.size == 0 {
                return;
            }
            if r.is_memory && given.ram.is_none() {
                given.ram = Some((r.base, r.size));
            }
            given.add(r.base, r.size);
        }) {
            fail(format_args!("DTB at {}: {}", Hex(dtb.into()), e));
        }
        given.add(abi::TESTDEV_IPA, abi::TESTDEV_SIZE);
        if given.overflow {
            fail(format_args!("its DT lists more than {} ranges", given.ranges.len()));
        }
        let Some((ram_base, ram_size)) = given.ram else { fail(format_args!("no memory node in its DT")) };
        let ram_end = ram_base + ram_size;
        let (img_start, img_end) = rt::image();
        if ram_end > LOW_END || !(ram_base <= u64::from(img_start) && u64::from(img_end) <= ram_end) {
            fail(format_args!("RAM {}+{} must lie below 4 GiB and hold the stub", Hex(ram_base), Hex(ram_size)));
        }
        say!("probe: RAM {}+{}; {} ranges given in all (DT and test device):", Hex(ram_base), Hex(ram_size), given.n);
        for &(s, e) in &given.ranges[..given.n] {
            say!("probe:   given {}-{}", Hex(s), Hex(e));
        }

        let mut t = Tally::default();

        // 1a. Below 4 GiB, MMU off: VA = IPA.
        let mut slot = 0;
        while slot < LOW_END {
            if !given.contains(slot) {
                t.touch(slot as u32, slot, false, "2 MiB step");
                if (slot / LOW_STEP) % LOW_WRITE_EVERY == 0 {
                    t.touch(slot as u32, slot, true, "2 MiB step");
                }
            }
            slot += LOW_STEP;
        }
        let low_grid = t.touches();
        let mut windows = 0;
        let mut windows_given = 0;
        let virtio = (0..VIRTIO_SLOTS).map(|i| (VIRTIO_BASE + i * VIRTIO_STRIDE, "virtio-mmio"));
        for (ipa, what) in VIRT_WINDOWS.iter().copied().chain(virtio).filter(|w| w.0 < LOW_END) {
            if given.contains(ipa) {
                windows_given += 1;
                continue;
            }
            windows += 1;
            t.touch(ipa as u32, ipa, false, what);
            t.touch(ipa as u32, ipa, true, what);
        }
        say!(
            "probe: below 4 GiB (MMU off): {} touches on the 2 MiB grid, {} device windows read and written ({} given, skipped)",
            low_grid,
            windows,
            windows_given
        );

        // 1b. Above 4 GiB: LPAE stage-1 with RAM 1:1 and a 1 GiB window.
        let ram_slot = |i: usize| {
            let g = i as u64 * GIB;
            g < ram_end && ram_base < g + GIB
        };
        let Some(win) = [3usize, 2, 0].into_iter().find(|&i| !ram_slot(i)) else {
            fail(format_args!("no GiB of virtual space free for a window"))
        };
        let slots = core::array::from_fn(|i| (i as u64 * GIB, if ram_slot(i) { Kind::Normal } else { Kind::Invalid }));
        mmu::enable(slots);
        let win_va = (win as u64 * GIB) as u32;
        let before_high = t.touches();
        let mut g = LOW_END / GIB;
        while g < IPA_END / GIB {
            let ipa = g * GIB;
            if !given.meets(ipa, ipa + GIB) {
                mmu::set_slot(win, ipa, Kind::Device);
                t.touch(win_va, ipa, false, "1 GiB step");
                if g % HIGH_WRITE_EVERY == 0 {
                    t.touch(win_va, ipa, true, "1 GiB step");
                }
            }
            g += 1;
        }
        for (ipa, what) in VIRT_WINDOWS.iter().copied().filter(|w| w.0 >= LOW_END && w.0 % GIB != 0) {
            if given.contains(ipa) {
                continue;
            }
            mmu::set_slot(win, ipa & !(GIB - 1), Kind::Device);
            let va = win_va + (ipa % GIB) as u32;
            t.touch(va, ipa, false, what);
            t.touch(va, ipa, true, what);
        }
        mmu::set_slot(win, 0, Kind::Invalid);
        say!(
            "probe: above 4 GiB (LPAE window at VA {}): {} touches up to IPA {}",
            Hex(win_va.into()),
            t.touches() - before_high,
            Hex(IPA_END - 1)
        );
        let touches_ok = t.not_refused == 0 && t.bad_syndrome == 0 && t.refused == t.touches();
        say!(
            "probe: {} touches ({} reads, {} writes), {} refused with an abort at the guest's vector, {} not refused, {} bad syndromes, {}",
            t.touches(),
            t.reads,
            t.writes,
            t.refused,
            t.not_refused,
            t.bad_syndrome,
            if touches_ok { "PASS" } else { "FAIL" }
        );

        // 2. The marker scan. First the scanner itself, on a copy planted in a scratch buffer.
        let key = core::hint::black_box(MARKER_KEY);
        let mut scratch = [0u32; 12];
        let s = scratch.as_mut_ptr();
        // SAFETY: `s + 3` .. `s + 7` lies inside `scratch` (12 words); the
        // assembly reads `MASKED_WORDS` (4 words) and writes 4 words there.
        unsafe { probe_plant(s.add(3), MASKED_WORDS.as_ptr(), key) };
        // SAFETY: scans `scratch` only (its bounds); the assembly only reads.
        let found = unsafe { probe_scan(s as u32, s.add(12) as u32, MASKED_WORDS.as_ptr(), key) };
        scratch.iter_mut().for_each(|w| {
            // SAFETY: a word of our own array; volatile so the clearing is not dropped.
            unsafe { (w as *mut u32).write_volatile(0) }
        });
        let self_test_ok = found == s as u32 + 12;
        if !self_test_ok {
            say!("probe: scanner self-test: planted at {}, found at {}, FAIL", Hex(s as u64 + 12), Hex(found.into()));
        }
        let mut hits = 0u32;
        let mut at = ram_base as u32;
        loop {
            // SAFETY: [at, ram_end) is our RAM, mapped 1:1; the assembly only reads it.
            let hit = unsafe { probe_scan(at, ram_end as u32, MASKED_WORDS.as_ptr(), key) };
            if hit == 0 {
                break;
            }
            if hits < 8 {
                say!("probe: marker found in its RAM at IPA {}, FAIL", Hex(hit.into()));
            }
            hits += 1;
            at = hit + 4;
        }
        let scan_ok = self_test_ok && hits == 0;
        say!(
            "probe: marker scan of {}+{}: {} copies (scanner self-test {}), {}",
            Hex(ram_base),
            Hex(ram_size),
            hits,
            if self_test_ok { "ok" } else { "failed" },
            if scan_ok { "PASS" } else { "FAIL" }
        );
        say!("probe: {}", if touches_ok && scan_ok { "PASS" } else { "FAIL" });
        hvc::system_off()
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!("probe is a guest for carve: build it with scripts/build-stubs");
    std::process::exit(2);
}
