//! The emulated distributor against the GICv2 specification's rules (IHI 0048B chapter 4.3).

use super::*;

const UART: u32 = 33;
const DEV: u32 = 40;

fn two_cpus() -> Distributor {
    Distributor::new(&Config { cpus: 2, virtual_spis: &[UART], hw_spis: &[DEV], hw_ppis: 1 << VTIMER_PPI })
}

fn w(d: &mut Distributor, vcpu: usize, off: u32, v: u32) -> Outcome {
    d.write(vcpu, off, 4, v).expect("a valid word write")
}

fn r(d: &Distributor, vcpu: usize, off: u32) -> u32 {
    d.read(vcpu, off, 4).expect("a valid word read")
}

#[test]
fn typer_says_the_guests_cpu_count_and_lines() {
    let d = two_cpus();
    // CPUNumber [7:5] = cpus - 1; ITLinesNumber [4:0] = lines / 32 - 1; no Security Extensions.
    assert_eq!(r(&d, 0, reg::TYPER), (1 << 5) | 1);
    let one = Distributor::new(&Config { cpus: 1, virtual_spis: &[100], ..Config::default() });
    assert_eq!(r(&one, 0, reg::TYPER), 3); // 128 lines: SPI 100 is covered
    let many = Distributor::new(&Config { cpus: 40, ..Config::default() });
    assert_eq!(r(&many, 0, reg::TYPER) >> 5 & 7, 7, "eight CPU interfaces at most");
}

#[test]
fn id_registers_read_as_a_gic400() {
    let d = two_cpus();
    assert_eq!(r(&d, 0, reg::IIDR), IIDR);
    assert_eq!(r(&d, 0, 0xfe8) >> 4 & 0xf, 2, "PIDR2 ArchRev: GICv2");
    assert_eq!([r(&d, 0, 0xff0), r(&d, 0, 0xff4), r(&d, 0, 0xff8), r(&d, 0, 0xffc)], [0x0d, 0xf0, 0x05, 0xb1]);
    // Read-only: a write changes nothing.
    let mut d = d;
    w(&mut d, 0, reg::TYPER, 0xffff_ffff);
    w(&mut d, 0, reg::IIDR, 0);
    assert_eq!(r(&d, 0, reg::TYPER), (1 << 5) | 1);
    assert_eq!(r(&d, 0, reg::IIDR), IIDR);
}

#[test]
fn ctlr_keeps_its_enable_bit_only() {
    let mut d = two_cpus();
    assert_eq!(r(&d, 0, reg::CTLR), 0);
    w(&mut d, 0, reg::CTLR, 0xffff_ffff);
    assert_eq!(r(&d, 0, reg::CTLR), 1);
    assert!(d.enabled());
    w(&mut d, 1, reg::CTLR, 0);
    assert!(!d.enabled());
}

#[test]
fn itargetsr_of_sgis_and_ppis_reads_the_readers_own_bit() {
    let d = two_cpus();
    // Linux finds its CPU interface number this way (gic_get_cpumask).
    assert_eq!(r(&d, 0, reg::ITARGETSR), 0x0101_0101);
    assert_eq!(r(&d, 1, reg::ITARGETSR + 12), 0x0202_0202);
    // A PPI the guest does not own reads as zero; the timer's is its own.
    assert_eq!(r(&d, 1, reg::ITARGETSR + 24) & 0xff, 0, "PPI 24 is not the guest's");
    assert_eq!(r(&d, 1, reg::ITARGETSR + 24) >> 24, 0x02, "PPI 27 is");
}

#[test]
fn enables_are_banked_for_sgis_and_ppis_and_shared_for_spis() {
    let mut d = two_cpus();
    w(&mut d, 0, reg::ISENABLER, 0xffff_ffff);
    assert_eq!(r(&d, 0, reg::ISENABLER), 0xffff | 1 << VTIMER_PPI, "SGIs and the owned PPI only");
    assert_eq!(r(&d, 1, reg::ISENABLER), 0, "vCPU 1's bank is its own");
    assert_eq!(d.ignored_writes(), 1, "the other PPIs' bits were a forbidden write");
    w(&mut d, 1, reg::ISENABLER + 4, 0xffff_ffff);
    assert_eq!(r(&d, 0, reg::ISENABLER + 4), 1 << (UART - 32) | 1 << (DEV - 32));
    assert_eq!(r(&d, 0, reg::ICENABLER + 4), r(&d, 0, reg::ISENABLER + 4), "ICENABLER reads the same");
    w(&mut d, 0, reg::ICENABLER + 4, 1 << (UART - 32));
    assert_eq!(r(&d, 1, reg::ISENABLER + 4), 1 << (DEV - 32));
}

#[test]
fn hardware_backed_interrupts_are_forwarded() {
    let mut d = two_cpus();
    let o = w(&mut d, 0, reg::ISENABLER, 1 << VTIMER_PPI | 1 << 3);
    assert_eq!(o.hw, HwOp::Bits { bank: Bank::SetEnable, first: 0, mask: 1 << VTIMER_PPI }, "the timer, not the SGI");
    let o = w(&mut d, 0, reg::ICENABLER + 4, 0xffff_ffff);
    assert_eq!(o.hw, HwOp::Bits { bank: Bank::ClearEnable, first: 32, mask: 1 << (DEV - 32) });
    let o = w(&mut d, 0, reg::ISPENDR + 4, 1 << (DEV - 32));
    assert_eq!(o.hw, HwOp::Bits { bank: Bank::SetPending, first: 32, mask: 1 << (DEV - 32) });
    assert_eq!(r(&d, 0, reg::ISPENDR + 4), 0, "hardware pending state is not kept here");
    let o = d.write(0, reg::ITARGETSR + DEV, 1, 0x02).unwrap();
    assert_eq!(o.hw, HwOp::Target { first: DEV, vcpus: [2, 0, 0, 0], mask: 1 });
    // A word write names four: only the hardware-backed one is reported.
    let o = w(&mut d, 0, reg::ITARGETSR + (DEV & !3), 0x0101_0303);
    assert_eq!(o.hw, HwOp::Target { first: DEV & !3, vcpus: [3, 0, 0, 0], mask: 1 });
    let o = w(&mut d, 0, reg::ICFGR + 8, 2 << (2 * (DEV - 32)));
    assert_eq!(o.hw, HwOp::Config { first: 32, edge: 1 << (DEV - 32), mask: 1 << (DEV - 32) });
    assert_eq!(r(&d, 0, reg::ICFGR + 8), 2 << (2 * (DEV - 32)));
}

#[test]
fn another_guests_interrupts_read_as_zero_and_writes_are_ignored_and_counted() {
    let mut d = two_cpus();
    let other = 34; // an SPI this guest does not own
    let before = d.ignored_writes();
    for off in [reg::ISENABLER + 4, reg::ISPENDR + 4, reg::ISACTIVER + 4] {
        let o = w(&mut d, 0, off, 1 << (other - 32));
        assert_eq!(o, Outcome::NONE);
        assert_eq!(r(&d, 0, off) & 1 << (other - 32), 0);
    }
    d.write(0, reg::IPRIORITYR + other, 1, 0x80).unwrap();
    d.write(0, reg::ITARGETSR + other, 1, 0x01).unwrap();
    w(&mut d, 0, reg::ICFGR + 8, 2 << (2 * (other - 32)));
    assert_eq!(d.read(0, reg::IPRIORITYR + other, 1), Ok(0));
    assert_eq!(d.read(0, reg::ITARGETSR + other, 1), Ok(0));
    assert_eq!(r(&d, 0, reg::ICFGR + 8), 0);
    assert_eq!(d.ignored_writes() - before, 6);
    // Beyond the lines TYPER claims: nothing, counted.
    assert_eq!(w(&mut d, 0, reg::ISENABLER + 0x40, !0), Outcome::NONE);
    assert_eq!(r(&d, 0, reg::ISENABLER + 0x40), 0);
    assert_eq!(d.ignored_writes() - before, 7);
}

#[test]
fn priority_reads_what_the_guest_set_for_its_own_interrupts_only() {
    let mut d = two_cpus();
    d.write(1, reg::IPRIORITYR + VTIMER_PPI, 1, 0x90).unwrap();
    d.write(0, reg::IPRIORITYR + DEV, 1, 0x48).unwrap();
    assert_eq!(d.priority(1, VTIMER_PPI), 0x90);
    assert_eq!(d.priority(0, VTIMER_PPI), 0, "banked: vCPU 0's is untouched");
    assert_eq!(d.priority(0, DEV), 0x48);
    assert_eq!(d.priority(0, 34), 0, "not its own");
    assert_eq!(d.priority(9, 3), 0, "no such vCPU");
}

#[test]
fn priorities_keep_five_bits_and_are_byte_accessible() {
    let mut d = two_cpus();
    w(&mut d, 0, reg::IPRIORITYR + 24, 0xffa0_1234);
    // Byte 3 is PPI 27 (owned), bytes 0-2 are PPIs 24-26 (not): only 27 keeps its value.
    assert_eq!(r(&d, 0, reg::IPRIORITYR + 24), 0xf800_0000);
    assert_eq!(r(&d, 1, reg::IPRIORITYR + 24), 0, "banked");
    d.write(1, reg::IPRIORITYR + UART, 1, 0x47).unwrap();
    assert_eq!(d.read(0, reg::IPRIORITYR + UART, 1), Ok(0x40));
    assert_eq!(r(&d, 0, reg::IPRIORITYR + 32) >> 8 & 0xff, 0x40);
}

#[test]
fn sizes_and_alignments_the_spec_does_not_allow_are_refused() {
    let mut d = two_cpus();
    assert_eq!(d.read(0, reg::CTLR, 1), Err(BadAccess), "CTLR is word-only");
    assert_eq!(d.read(0, reg::CTLR, 2), Err(BadAccess), "no halfword access");
    assert_eq!(d.write(0, reg::ISENABLER + 1, 4, 1), Err(BadAccess), "unaligned");
    assert_eq!(d.write(0, reg::IPRIORITYR + 1, 2, 1), Err(BadAccess));
    assert_eq!(d.read(0, 0x1000, 4), Err(BadAccess), "past the page");
    assert_eq!(d.read(0, reg::SGIR, 4), Ok(0), "SGIR is write-only: reads as zero");
    assert!(d.write(0, reg::ITARGETSR + UART, 1, 1).is_ok());
    assert!(d.write(0, reg::SPENDSGIR + 3, 1, 1).is_ok());
}

#[test]
fn no_access_panics_and_state_stays_within_the_guest() {
    // Every offset, every size, a spread of values, from a vCPU that exists and one that does not.
    let mut d = two_cpus();
    let mut x = 0x1234_5678u32;
    for off in 0..0x1000u32 {
        for size in [1, 2, 4] {
            for vcpu in [0, 1, 7] {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let _ = d.write(vcpu, off, size, x);
                let _ = d.read(vcpu, off, size);
            }
        }
    }
    // Whatever was written, only the guest's own interrupts ever show up.
    for i in 1..(d.lines() / 32) {
        let owned = d.owned_mask(i as usize);
        for base in [reg::ISENABLER, reg::ISPENDR, reg::ISACTIVER] {
            assert_eq!(r(&d, 0, base + 4 * i) & !owned, 0);
        }
    }
    assert_eq!(r(&d, 0, reg::ISENABLER) & !(0xffff | 1 << VTIMER_PPI), 0);
    assert!(d.ignored_writes() > 0);
    while let Some(p) = d.next(0) {
        assert!(p.intid < 16 || p.intid == UART, "only the guest's virtual interrupts are delivered: {p:?}");
        d.retire(0, p.intid);
        if p.intid >= 16 {
            break; // a level-high line comes back forever
        }
    }
}

#[test]
fn sgir_reaches_the_guests_own_vcpus_only() {
    let mut d = two_cpus();
    w(&mut d, 0, reg::CTLR, 1);
    for v in 0..2 {
        w(&mut d, v, reg::ISENABLER, 0xffff);
    }
    // Target list naming vCPUs 1 and 5: 5 does not exist.
    let o = w(&mut d, 0, reg::SGIR, (0b10_0010 << 16) | 3);
    assert_eq!(o.kick, 0b10);
    assert_eq!(d.ignored_writes(), 1);
    assert_eq!(d.next(1), Some(Pending { intid: 3, source: 0, priority: 0, level: false }));
    assert_eq!(d.next(1), None);
    assert_eq!(d.next(0), None);
    // "All but self" from vCPU 1 reaches vCPU 0 only; "self" reaches the sender.
    assert_eq!(w(&mut d, 1, reg::SGIR, (1 << 24) | 5).kick, 0b01);
    assert_eq!(w(&mut d, 1, reg::SGIR, (2 << 24) | 6).kick, 0b10);
    assert_eq!(d.next(0).map(|p| (p.intid, p.source)), Some((5, 1)));
    assert_eq!(d.next(1).map(|p| (p.intid, p.source)), Some((6, 1)));
    // Filter 3 is reserved: nothing, counted.
    assert_eq!(w(&mut d, 0, reg::SGIR, (3 << 24) | (0xff << 16)).kick, 0);
    assert_eq!(d.ignored_writes(), 2);
    // A lone vCPU sending to "all but self" reaches nobody.
    let mut one = Distributor::new(&Config { cpus: 1, ..Config::default() });
    assert_eq!(w(&mut one, 0, reg::SGIR, (1 << 24) | 1).kick, 0);
}

#[test]
fn an_sgi_is_not_handed_out_twice_while_a_list_register_holds_it() {
    let mut d = two_cpus();
    w(&mut d, 0, reg::CTLR, 1);
    w(&mut d, 1, reg::ISENABLER, 1 << 2);
    w(&mut d, 0, reg::SGIR, (0b10 << 16) | 2);
    assert_eq!(d.next(1).map(|p| p.intid), Some(2));
    w(&mut d, 0, reg::SGIR, (0b10 << 16) | 2);
    assert_eq!(d.next(1), None, "SGI 2 is in a list register");
    assert_eq!(r(&d, 1, reg::SPENDSGIR), 0b01 << 16, "pending from vCPU 0 meanwhile");
    assert!(d.retire(1, 2));
    assert_eq!(d.next(1).map(|p| p.intid), Some(2));
}

#[test]
fn spendsgir_and_cpendsgir_set_and_clear_sources() {
    let mut d = two_cpus();
    d.write(0, reg::SPENDSGIR + 1, 1, 0xff).unwrap();
    assert_eq!(r(&d, 0, reg::SPENDSGIR), 0x0300, "sources beyond the guest's vCPUs are dropped");
    assert_eq!(r(&d, 0, reg::ISPENDR) & 0xffff, 1 << 1);
    d.write(0, reg::CPENDSGIR + 1, 1, 0x01).unwrap();
    assert_eq!(r(&d, 0, reg::CPENDSGIR), 0x0200);
    // ISPENDR/ICPENDR do not change SGIs.
    w(&mut d, 0, reg::ICPENDR, 0xffff);
    assert_eq!(r(&d, 0, reg::SPENDSGIR), 0x0200);
}

#[test]
fn a_level_sensitive_virtual_spi_pends_while_high_and_again_after_eoi() {
    let mut d = two_cpus();
    // Not deliverable until the guest enabled the distributor and the interrupt.
    assert_eq!(d.set_level(UART, true), 0);
    assert_eq!(d.next(0), None);
    w(&mut d, 0, reg::CTLR, 1);
    d.write(0, reg::ITARGETSR + UART, 1, 0x02).unwrap();
    let o = w(&mut d, 0, reg::ISENABLER + 4, 1 << (UART - 32));
    assert_eq!(o.kick, 0b10, "targeted at vCPU 1");
    assert_eq!(r(&d, 0, reg::ISPENDR + 4), 1 << (UART - 32));
    assert_eq!(d.next(0), None);
    let p = d.next(1).expect("the UART's interrupt");
    assert_eq!((p.intid, p.level), (UART, true));
    assert_eq!(d.next(1), None, "held by a list register");
    // Still high at EOI: pending again.
    assert!(d.retire(1, UART));
    assert_eq!(d.next(1).map(|p| p.intid), Some(UART));
    d.set_level(UART, false);
    assert!(!d.retire(1, UART), "low at EOI: done");
    assert_eq!(d.next(1), None);
    assert_eq!(r(&d, 0, reg::ISPENDR + 4), 0);
    // The monitor cannot raise a line the guest does not own.
    assert_eq!(d.set_level(34, true), 0);
    assert_eq!(d.set_level(DEV, true), 0);
    assert_eq!(d.set_level(5, true), 0);
}

#[test]
fn an_edge_triggered_virtual_spi_latches_one_edge() {
    let mut d = two_cpus();
    w(&mut d, 0, reg::CTLR, 1);
    w(&mut d, 0, reg::ICFGR + 8, 2 << (2 * (UART - 32)));
    w(&mut d, 0, reg::ISENABLER + 4, 1 << (UART - 32));
    assert_eq!(d.set_level(UART, true), 1);
    assert_eq!(d.set_level(UART, true), 1, "still deliverable, no second edge");
    let p = d.next(0).unwrap();
    assert!(!p.level);
    assert!(!d.retire(0, UART), "one edge, one interrupt");
    d.set_level(UART, false);
    d.set_level(UART, true);
    assert_eq!(d.next(0).map(|p| p.intid), Some(UART));
}

#[test]
fn the_highest_priority_goes_first() {
    let mut d = two_cpus();
    w(&mut d, 0, reg::CTLR, 1);
    w(&mut d, 0, reg::ISENABLER, 0xffff);
    w(&mut d, 0, reg::ISENABLER + 4, 1 << (UART - 32));
    w(&mut d, 0, reg::IPRIORITYR, 0x0000_a000); // SGI 1 at 0xa0, SGI 0 at 0
    d.write(0, reg::IPRIORITYR + UART, 1, 0x50).unwrap();
    w(&mut d, 0, reg::SGIR, (2 << 24) | 1);
    d.set_level(UART, true);
    assert_eq!(d.next(0).map(|p| (p.intid, p.priority)), Some((UART, 0x50)));
    assert_eq!(d.next(0).map(|p| (p.intid, p.priority)), Some((1, 0xa0)));
    w(&mut d, 0, reg::SGIR, 2 << 24); // SGI 0 to self
    assert_eq!(d.next(0).map(|p| p.intid), Some(0));
}

#[test]
fn disabling_the_distributor_holds_everything() {
    let mut d = two_cpus();
    w(&mut d, 0, reg::ISENABLER, 0xffff);
    w(&mut d, 0, reg::SGIR, (2 << 24) | 4);
    assert!(!d.has_pending(0));
    assert_eq!(d.next(0), None);
    assert_eq!(w(&mut d, 0, reg::CTLR, 1).kick, 0b01, "enabling releases what waited");
    assert_eq!(d.next(0).map(|p| p.intid), Some(4));
}

#[test]
fn icfgr_of_sgis_is_read_only_edge() {
    let mut d = two_cpus();
    w(&mut d, 0, reg::ICFGR, 0);
    assert_eq!(r(&d, 0, reg::ICFGR), 0xaaaa_aaaa);
    w(&mut d, 0, reg::ICFGR + 4, 0xffff_ffff);
    assert_eq!(r(&d, 0, reg::ICFGR + 4), 2 << (2 * (VTIMER_PPI - 16)), "only the timer's field");
}

#[test]
fn an_spi_can_be_claimed_after_creation_within_the_lines() {
    let mut d = Distributor::new(&Config { cpus: 1, ..Config::default() });
    assert_eq!(d.kind(40), Kind::None);
    assert!(d.claim_spi(40, false));
    assert_eq!(d.kind(40), Kind::Virtual);
    assert!(!d.claim_spi(40, true), "already a virtual SPI");
    assert!(!d.claim_spi(64, false), "past the 64 lines TYPER claims");
    assert!(!d.claim_spi(27, false), "not an SPI");
    w(&mut d, 0, reg::CTLR, 1);
    w(&mut d, 0, reg::ISENABLER + 4, 1 << 8);
    assert_eq!(d.set_level(40, true), 1);
}

#[test]
fn itargetsr_is_raz_wi_with_one_cpu() {
    // A uniprocessor implementation (4.3.12): every interrupt targets the one CPU.
    let mut d = Distributor::new(&Config { cpus: 1, virtual_spis: &[UART], ..Config::default() });
    assert_eq!(r(&d, 0, reg::ITARGETSR), 0);
    d.write(0, reg::ITARGETSR + UART, 1, 0xff).unwrap();
    assert_eq!(d.read(0, reg::ITARGETSR + UART, 1), Ok(0));
    assert_eq!(d.ignored_writes(), 0, "not a forbidden write: the register ignores it");
    w(&mut d, 0, reg::CTLR, 1);
    w(&mut d, 0, reg::ISENABLER + 4, 1 << (UART - 32));
    assert_eq!(d.set_level(UART, true), 1, "delivered to the one vCPU");
}
