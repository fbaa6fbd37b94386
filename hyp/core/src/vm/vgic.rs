//! A guest's GICv2 distributor, emulated: its register file and the state behind it.
//!
//! ARM Generic Interrupt Controller Architecture Specification v2.0 (IHI
//! 0048B): chapter 4.3 (distributor register map and each register's rules),
//! 3.2 (SGIs: GICD_SGIR's target filter, the source CPU of each pending SGI),
//! 5.3 (the virtual interface's list registers, which the monitor fills from
//! [`Distributor::next`]).
//!
//! A guest sees a distributor that holds only its own interrupts:
//! - SGIs 0-15 of each of its vCPUs (virtual: pended by GICD_SGIR and
//!   delivered through list registers);
//! - the PPIs given in [`Config::hw_ppis`] (in practice the virtual timer's
//!   PPI 27), banked per vCPU and backed by the physical interrupt of the CPU
//!   the vCPU runs on: enabling one enables the physical one ([`HwOp`]);
//! - the SPIs of [`Config::virtual_spis`] (an emulated device's line, raised
//!   and lowered by the monitor with [`Distributor::set_level`]) and of
//!   [`Config::hw_spis`] (a device given to the guest).
//!
//! Everything else reads as zero and ignores writes; a write that tries to
//! change an interrupt the guest does not own is counted
//! ([`Distributor::ignored_writes`]). Accesses of a size or alignment the
//! specification does not allow for a register are refused ([`BadAccess`]):
//! the monitor injects an abort. Nothing here panics on any input.
//!
//! Pending state of virtual interrupts lives here until the monitor puts the
//! interrupt in a list register ([`Distributor::next`]); from then until the
//! list register drains ([`Distributor::retire`]) the list register owns it,
//! and the same interrupt is not handed out twice. Hardware-backed interrupts
//! never pend here: the physical GIC holds their state.

use alloc::vec;
use alloc::vec::Vec;

/// Size of the distributor's register page.
pub const GICD_SIZE: u64 = 0x1000;
/// The most CPU interfaces GICv2 has (GICD_TYPER.CPUNumber is three bits).
pub const MAX_CPUS: usize = 8;
/// The highest interrupt ID that is not special (1020-1023 are).
pub const MAX_INTID: u32 = 1019;
/// The virtual timer's PPI.
pub const VTIMER_PPI: u32 = 27;

/// GIC-400's GICD_IIDR (implementer ARM 0x43b, product 0x02, variant 0, revision 1).
pub const IIDR: u32 = 0x0200_143b;
/// Peripheral and component ID registers, 0xFD0..=0xFFC (GIC-400, arch. version 2 in PIDR2[7:4]).
const ID_REGS: [u32; 12] = [0x04, 0, 0, 0, 0x90, 0xb4, 0x2b, 0, 0x0d, 0xf0, 0x05, 0xb1];

/// Register offsets (4.1.2, Table 4-1).
pub mod reg {
    pub const CTLR: u32 = 0x000;
    pub const TYPER: u32 = 0x004;
    pub const IIDR: u32 = 0x008;
    pub const IGROUPR: u32 = 0x080;
    pub const ISENABLER: u32 = 0x100;
    pub const ICENABLER: u32 = 0x180;
    pub const ISPENDR: u32 = 0x200;
    pub const ICPENDR: u32 = 0x280;
    pub const ISACTIVER: u32 = 0x300;
    pub const ICACTIVER: u32 = 0x380;
    pub const IPRIORITYR: u32 = 0x400;
    pub const ITARGETSR: u32 = 0x800;
    pub const ICFGR: u32 = 0xc00;
    pub const SGIR: u32 = 0xf00;
    pub const CPENDSGIR: u32 = 0xf10;
    pub const SPENDSGIR: u32 = 0xf20;
    pub const PIDR4: u32 = 0xfd0;
}

/// What a guest's distributor holds.
#[derive(Clone, Debug, Default)]
pub struct Config<'a> {
    /// Number of vCPUs (1..=8; more is clamped to 8, 0 taken as 1).
    pub cpus: usize,
    /// SPIs the monitor raises itself (an emulated device's line).
    pub virtual_spis: &'a [u32],
    /// SPIs of devices given to the guest: the physical interrupt follows the guest's settings.
    pub hw_spis: &'a [u32],
    /// PPIs (bit n = INTID n, 16..=31) backed by the physical PPI of the vCPU's CPU.
    pub hw_ppis: u32,
}

/// How an interrupt belongs to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Not the guest's: reads as zero, writes ignored and counted.
    None,
    /// Pended by the monitor (SGIs, emulated devices); delivered with HW = 0.
    Virtual,
    /// Backed by the physical interrupt of the same ID; delivered with HW = 1.
    Hw,
}

/// An access the specification does not allow for that register (wrong size or alignment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadAccess;

/// What the monitor must do to the physical GIC after a guest's write: the
/// same operation on the hardware-backed interrupts among those the write
/// named (`mask` bit n = INTID `first + n`). PPIs (`first` 0) are the ones of
/// the CPU the writing vCPU runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwOp {
    None,
    /// The same set/clear register write, for the hardware-backed bits only.
    Bits {
        bank: Bank,
        first: u32,
        mask: u32,
    },
    /// SPI `first + k` (for each bit k of `mask`) should go to the vCPUs in
    /// `vcpus[k]` (bit v = vCPU v); the monitor maps them to physical CPUs.
    Target {
        first: u32,
        vcpus: [u8; 4],
        mask: u8,
    },
    /// SPI `first + k` (for each bit k of `mask`) is edge-triggered (bit k of `edge` set) or level-sensitive.
    Config {
        first: u32,
        edge: u16,
        mask: u16,
    },
}

/// What a write asks of the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// vCPUs (bit v) that have a new pending interrupt: kick those running on other CPUs.
    pub kick: u8,
    /// The physical operation for hardware-backed interrupts (one register's worth).
    pub hw: HwOp,
}

impl Outcome {
    const NONE: Outcome = Outcome { kick: 0, hw: HwOp::None };

    fn kick(kick: u8) -> Outcome {
        Outcome { kick, ..Outcome::NONE }
    }

    fn hw(hw: HwOp) -> Outcome {
        Outcome { hw, ..Outcome::NONE }
    }
}

/// An interrupt ready for a list register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub intid: u32,
    /// For an SGI, the vCPU that sent it (the list register's CPUID field); 0 otherwise.
    pub source: u8,
    /// The guest's priority for it (8 bits; a list register keeps the top 5).
    pub priority: u8,
    /// Level-sensitive: ask for an EOI maintenance interrupt so the monitor can pend it again.
    pub level: bool,
}

/// State banked per vCPU: its SGIs and PPIs (INTIDs 0-31).
#[derive(Clone, Debug, Default)]
struct Banked {
    enabled: u32,
    active: u32,
    /// Per SGI, the vCPUs (bit s) whose SGI waits for this vCPU.
    sgi_sources: [u8; 16],
    /// SGIs (bit n) in a list register of this vCPU now.
    in_lr: u32,
    priority: [u8; 32],
    /// PPI configuration (ICFGR1), 2 bits each for INTIDs 16-31.
    ppi_cfg: u32,
}

/// A guest's distributor.
#[derive(Clone, Debug)]
pub struct Distributor {
    enabled: bool,
    cpus: usize,
    /// Interrupt IDs the distributor claims (GICD_TYPER.ITLinesNumber * 32 + 32).
    lines: u32,
    banked: Vec<Banked>,
    hw_ppis: u32,
    /// SPI state, one bit (or byte) per INTID from 0; bits below 32 unused.
    kind: Vec<Kind>,
    enabled_spi: Vec<u32>,
    /// Latched pending (an edge, or a guest's ISPENDR write).
    pending: Vec<u32>,
    /// The line's level, for virtual level-sensitive SPIs.
    level: Vec<u32>,
    active: Vec<u32>,
    /// In a list register now.
    in_lr: Vec<u32>,
    edge: Vec<u32>,
    priority: Vec<u8>,
    targets: Vec<u8>,
    ignored: u64,
}

fn word_bit(intid: u32) -> (usize, u32) {
    ((intid / 32) as usize, 1 << (intid % 32))
}

impl Distributor {
    /// A distributor at reset (4.3: everything disabled, not pending, priority 0, SPIs targeted nowhere).
    pub fn new(config: &Config<'_>) -> Distributor {
        let cpus = config.cpus.clamp(1, MAX_CPUS);
        let highest = config
            .virtual_spis
            .iter()
            .chain(config.hw_spis)
            .copied()
            .filter(|&i| (32..=MAX_INTID).contains(&i))
            .max()
            .unwrap_or(31);
        // At least one bank of SPIs (Linux expects some), covering the highest one the guest owns.
        let lines = ((highest / 32 + 1) * 32).clamp(64, 1024);
        let words = (lines / 32) as usize;
        let mut kind = vec![Kind::None; lines as usize];
        for &i in config.virtual_spis.iter().filter(|&&i| (32..=MAX_INTID).contains(&i)) {
            kind[i as usize] = Kind::Virtual;
        }
        for &i in config.hw_spis.iter().filter(|&&i| (32..=MAX_INTID).contains(&i)) {
            kind[i as usize] = Kind::Hw;
        }
        Distributor {
            enabled: false,
            cpus,
            lines,
            banked: vec![Banked::default(); cpus],
            hw_ppis: config.hw_ppis & 0xffff_0000,
            kind,
            enabled_spi: vec![0; words],
            pending: vec![0; words],
            level: vec![0; words],
            active: vec![0; words],
            in_lr: vec![0; words],
            edge: vec![0; words],
            priority: vec![0; lines as usize],
            targets: vec![0; lines as usize],
            ignored: 0,
        }
    }

    /// Makes SPI `intid` the guest's after creation (a device the monitor
    /// emulates, `hw` false, or one given to it). Only within the lines
    /// GICD_TYPER claims (at least 64); false if outside or already another kind.
    pub fn claim_spi(&mut self, intid: u32, hw: bool) -> bool {
        let want = if hw { Kind::Hw } else { Kind::Virtual };
        match self.kind.get_mut(intid as usize) {
            Some(k) if intid >= 32 && (*k == Kind::None || *k == want) => {
                *k = want;
                true
            }
            _ => false,
        }
    }

    /// Number of vCPUs.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Interrupt IDs claimed in GICD_TYPER (a multiple of 32).
    pub fn lines(&self) -> u32 {
        self.lines
    }

    /// Writes ignored because they named interrupts or CPUs that are not the guest's.
    pub fn ignored_writes(&self) -> u64 {
        self.ignored
    }

    /// The guest's priority for INTID `intid` as vCPU `vcpu` sees it (0 if not its own).
    pub fn priority(&self, vcpu: usize, intid: u32) -> u8 {
        match intid {
            0..=31 if self.owned_mask(0) & (1 << intid) != 0 => {
                self.banked.get(vcpu).map_or(0, |b| b.priority[intid as usize])
            }
            0..=31 => 0,
            _ if self.kind(intid) != Kind::None => self.priority.get(intid as usize).copied().unwrap_or(0),
            _ => 0,
        }
    }

    /// Whether the distributor forwards interrupts (GICD_CTLR.Enable).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// How INTID `intid` belongs to the guest.
    pub fn kind(&self, intid: u32) -> Kind {
        match intid {
            0..=15 => Kind::Virtual,
            16..=31 if self.hw_ppis & (1 << intid) != 0 => Kind::Hw,
            16..=31 => Kind::None,
            _ => self.kind.get(intid as usize).copied().unwrap_or(Kind::None),
        }
    }

    /// Bit n set: INTID `32 * word + n` is the guest's (for vCPU `vcpu`'s banked word 0).
    fn owned_mask(&self, word: usize) -> u32 {
        if word == 0 {
            return 0xffff | self.hw_ppis;
        }
        let base = word * 32;
        (0..32).filter(|&n| self.kind.get(base + n).is_some_and(|k| *k != Kind::None)).fold(0, |m, n| m | 1 << n)
    }

    fn hw_mask(&self, word: usize) -> u32 {
        if word == 0 {
            return self.hw_ppis;
        }
        let base = word * 32;
        (0..32).filter(|&n| self.kind.get(base + n) == Some(&Kind::Hw)).fold(0, |m, n| m | 1 << n)
    }

    fn count_if(&mut self, forbidden: bool) {
        if forbidden {
            self.ignored += 1;
        }
    }

    /// The vCPUs an SPI is delivered to: its first target (1-of-N, 3.1.1), vCPU 0 if none.
    fn spi_target(&self, intid: u32) -> usize {
        let t = self.targets.get(intid as usize).copied().unwrap_or(0);
        if t == 0 {
            0
        } else {
            t.trailing_zeros() as usize
        }
    }

    /// Raises or lowers virtual SPI `intid`'s line. Returns the vCPUs (bit v) to kick: the
    /// target, when the interrupt became deliverable. Not a virtual SPI of the guest: nothing.
    pub fn set_level(&mut self, intid: u32, high: bool) -> u8 {
        if self.kind(intid) != Kind::Virtual || intid < 32 {
            return 0;
        }
        let (w, b) = word_bit(intid);
        let was = self.level[w] & b != 0;
        if high {
            self.level[w] |= b;
            if self.edge[w] & b != 0 && !was {
                self.pending[w] |= b;
            }
        } else {
            self.level[w] &= !b;
        }
        if high && self.deliverable_spi(intid) {
            1 << self.spi_target(intid)
        } else {
            0
        }
    }

    fn spi_pending(&self, intid: u32) -> bool {
        let (w, b) = word_bit(intid);
        (self.pending[w] | (self.level[w] & !self.edge[w])) & b != 0
    }

    fn deliverable_spi(&self, intid: u32) -> bool {
        let (w, b) = word_bit(intid);
        self.enabled && self.enabled_spi[w] & b != 0 && self.in_lr[w] & b == 0 && self.spi_pending(intid)
    }

    /// The highest-priority virtual interrupt pending for `vcpu` that no list
    /// register holds, marked as held: the monitor puts it in a list register.
    /// `None` when nothing waits (or the distributor is disabled).
    pub fn next(&mut self, vcpu: usize) -> Option<Pending> {
        if !self.enabled || vcpu >= self.cpus {
            return None;
        }
        let mut best: Option<Pending> = None;
        let better = |p: &Pending, best: &Option<Pending>| best.is_none_or(|b| p.priority < b.priority);
        let bank = &self.banked[vcpu];
        for sgi in 0..16u32 {
            let sources = bank.sgi_sources[sgi as usize];
            if sources == 0 || bank.enabled & (1 << sgi) == 0 || bank.in_lr & (1 << sgi) != 0 {
                continue;
            }
            let p = Pending {
                intid: sgi,
                source: sources.trailing_zeros() as u8,
                priority: bank.priority[sgi as usize],
                level: false,
            };
            if better(&p, &best) {
                best = Some(p);
            }
        }
        for w in 1..self.pending.len() {
            let mut cand = (self.pending[w] | (self.level[w] & !self.edge[w])) & self.enabled_spi[w] & !self.in_lr[w];
            while cand != 0 {
                let n = cand.trailing_zeros();
                cand &= cand - 1;
                let intid = w as u32 * 32 + n;
                if self.kind(intid) != Kind::Virtual || self.spi_target(intid) != vcpu {
                    continue;
                }
                let p = Pending {
                    intid,
                    source: 0,
                    priority: self.priority[intid as usize],
                    level: self.edge[w] & (1 << n) == 0,
                };
                if better(&p, &best) {
                    best = Some(p);
                }
            }
        }
        let p = best?;
        if p.intid < 16 {
            let bank = &mut self.banked[vcpu];
            bank.sgi_sources[p.intid as usize] &= !(1 << p.source);
            bank.in_lr |= 1 << p.intid;
        } else {
            let (w, b) = word_bit(p.intid);
            self.pending[w] &= !b;
            self.in_lr[w] |= b;
        }
        Some(p)
    }

    /// The list register that held `intid` for `vcpu` drained (the guest
    /// deactivated it). A level-sensitive SPI whose line is still high pends
    /// again. Returns true if `vcpu` has something to deliver now.
    pub fn retire(&mut self, vcpu: usize, intid: u32) -> bool {
        if vcpu >= self.cpus {
            return false;
        }
        if intid < 16 {
            self.banked[vcpu].in_lr &= !(1 << intid);
        } else if intid >= 32 && intid < self.lines {
            let (w, b) = word_bit(intid);
            self.in_lr[w] &= !b;
        }
        self.has_pending(vcpu)
    }

    /// Whether `vcpu` has a deliverable virtual interrupt no list register holds.
    pub fn has_pending(&self, vcpu: usize) -> bool {
        if !self.enabled || vcpu >= self.cpus {
            return false;
        }
        let bank = &self.banked[vcpu];
        if (0..16).any(|s| bank.sgi_sources[s] != 0 && (bank.enabled & !bank.in_lr) & (1 << s) != 0) {
            return true;
        }
        (32..self.lines).any(|i| self.kind(i) == Kind::Virtual && self.spi_target(i) == vcpu && self.deliverable_spi(i))
    }

    /// A guest read of `size` bytes (1, 2 or 4) at `offset` in the page, by vCPU `vcpu`.
    pub fn read(&self, vcpu: usize, offset: u32, size: u32) -> Result<u32, BadAccess> {
        let vcpu = vcpu.min(self.cpus - 1);
        let byte_ok = matches!(offset, reg::IPRIORITYR..=0xbff | reg::CPENDSGIR..=0xf2f);
        check(offset, size, byte_ok)?;
        let word = offset & !3;
        let v = self.read_word(vcpu, word);
        Ok(if size == 4 { v } else { (v >> ((offset & 3) * 8)) & 0xff })
    }

    fn read_word(&self, vcpu: usize, word: u32) -> u32 {
        let bank = &self.banked[vcpu];
        let bits = |base: u32| ((word - base) / 4) as usize;
        match word {
            reg::CTLR => self.enabled as u32,
            reg::TYPER => ((self.cpus as u32 - 1) << 5) | (self.lines / 32 - 1),
            reg::IIDR => IIDR,
            reg::ISENABLER..=0x17c | reg::ICENABLER..=0x1fc => {
                let i = bits(if word < reg::ICENABLER { reg::ISENABLER } else { reg::ICENABLER });
                if i == 0 {
                    bank.enabled & self.owned_mask(0)
                } else {
                    self.enabled_spi.get(i).copied().unwrap_or(0)
                }
            }
            reg::ISPENDR..=0x27c | reg::ICPENDR..=0x2fc => {
                let i = bits(if word < reg::ICPENDR { reg::ISPENDR } else { reg::ICPENDR });
                if i == 0 {
                    (0..16).filter(|&s| bank.sgi_sources[s] != 0).fold(0, |m, s| m | 1 << s)
                } else if i < self.pending.len() {
                    (self.pending[i] | (self.level[i] & !self.edge[i])) & !self.hw_mask(i)
                } else {
                    0
                }
            }
            reg::ISACTIVER..=0x37c | reg::ICACTIVER..=0x3fc => {
                let i = bits(if word < reg::ICACTIVER { reg::ISACTIVER } else { reg::ICACTIVER });
                if i == 0 {
                    bank.active & self.owned_mask(0)
                } else {
                    self.active.get(i).copied().unwrap_or(0)
                }
            }
            reg::IPRIORITYR..=0x7fc => (0..4).fold(0, |v, k| {
                let intid = word - reg::IPRIORITYR + k;
                let p = if intid < 32 {
                    if self.owned_mask(0) & (1 << intid) != 0 {
                        bank.priority[intid as usize]
                    } else {
                        0
                    }
                } else if self.kind(intid) != Kind::None {
                    self.priority[intid as usize]
                } else {
                    0
                };
                v | u32::from(p) << (8 * k)
            }),
            // A uniprocessor implementation's ITARGETSRs are RAZ/WI (4.3.12), as QEMU's one-CPU GIC shows.
            reg::ITARGETSR..=0xbfc if self.cpus == 1 => 0,
            reg::ITARGETSR..=0xbfc => (0..4).fold(0, |v, k| {
                let intid = word - reg::ITARGETSR + k;
                let t = if intid < 32 {
                    // Read-only: the reading CPU's own bit (4.3.12).
                    if self.owned_mask(0) & (1 << intid) != 0 {
                        1u8 << vcpu
                    } else {
                        0
                    }
                } else if self.kind(intid) != Kind::None {
                    self.targets[intid as usize]
                } else {
                    0
                };
                v | u32::from(t) << (8 * k)
            }),
            reg::ICFGR..=0xcfc => {
                let i = (word - reg::ICFGR) / 4;
                match i {
                    // SGIs are edge-triggered, read-only (4.3.13).
                    0 => 0xaaaa_aaaa,
                    1 => bank.ppi_cfg & self.cfg_owned_mask(1),
                    _ => (0..16u32).fold(0, |v, k| {
                        let intid = i * 16 + k;
                        let (w, b) = word_bit(intid);
                        let edge = self.kind(intid) != Kind::None && self.edge.get(w).is_some_and(|e| e & b != 0);
                        v | (u32::from(edge) << (2 * k + 1))
                    }),
                }
            }
            reg::CPENDSGIR..=0xf1c | reg::SPENDSGIR..=0xf2c => {
                let first = (word & 0xf) as usize;
                (0..4).fold(0, |v, k| v | u32::from(bank.sgi_sources[first + k]) << (8 * k))
            }
            reg::PIDR4..=0xffc => ID_REGS[((word - reg::PIDR4) / 4) as usize],
            // IGROUPR (no Security Extensions seen: RAZ/WI), reserved and implementation-defined space.
            _ => 0,
        }
    }

    /// Two-bit ICFGR fields of word `i` (16 INTIDs) the guest owns, as a mask.
    fn cfg_owned_mask(&self, i: u32) -> u32 {
        (0..16u32).filter(|&k| self.kind(i * 16 + k) != Kind::None).fold(0, |m, k| m | (3 << (2 * k)))
    }

    /// A guest write of `size` bytes (1, 2 or 4) at `offset`, by vCPU `vcpu`.
    pub fn write(&mut self, vcpu: usize, offset: u32, size: u32, value: u32) -> Result<Outcome, BadAccess> {
        let vcpu = vcpu.min(self.cpus - 1);
        let byte_ok = matches!(offset, reg::IPRIORITYR..=0xbff | reg::CPENDSGIR..=0xf2f);
        check(offset, size, byte_ok)?;
        let word = offset & !3;
        if size == 1 {
            return Ok(self.write_bytes(vcpu, offset, value & 0xff, 1));
        }
        Ok(match word {
            reg::CTLR => {
                self.enabled = value & 1 != 0;
                Outcome::kick(if self.enabled { self.pending_mask() } else { 0 })
            }
            reg::ISENABLER..=0x17c => {
                self.write_bits(vcpu, ((word - reg::ISENABLER) / 4) as usize, value, Bank::SetEnable)
            }
            reg::ICENABLER..=0x1fc => {
                self.write_bits(vcpu, ((word - reg::ICENABLER) / 4) as usize, value, Bank::ClearEnable)
            }
            reg::ISPENDR..=0x27c => {
                self.write_bits(vcpu, ((word - reg::ISPENDR) / 4) as usize, value, Bank::SetPending)
            }
            reg::ICPENDR..=0x2fc => {
                self.write_bits(vcpu, ((word - reg::ICPENDR) / 4) as usize, value, Bank::ClearPending)
            }
            reg::ISACTIVER..=0x37c => {
                self.write_bits(vcpu, ((word - reg::ISACTIVER) / 4) as usize, value, Bank::SetActive)
            }
            reg::ICACTIVER..=0x3fc => {
                self.write_bits(vcpu, ((word - reg::ICACTIVER) / 4) as usize, value, Bank::ClearActive)
            }
            reg::IPRIORITYR..=0xbfc | reg::CPENDSGIR..=0xf2c => self.write_bytes(vcpu, offset, value, 4),
            reg::ICFGR..=0xcfc => self.write_cfg(vcpu, (word - reg::ICFGR) / 4, value),
            reg::SGIR => self.write_sgir(vcpu, value),
            // TYPER, IIDR, ID registers: read-only; IGROUPR and reserved space: RAZ/WI.
            _ => Outcome::NONE,
        })
    }

    /// vCPUs (bit v) with something deliverable.
    fn pending_mask(&self) -> u8 {
        (0..self.cpus).filter(|&v| self.has_pending(v)).fold(0, |m, v| m | 1 << v)
    }

    fn write_bits(&mut self, vcpu: usize, i: usize, value: u32, op: Bank) -> Outcome {
        if i * 32 >= self.lines as usize {
            self.count_if(value != 0);
            return Outcome::NONE;
        }
        let owned = self.owned_mask(i);
        self.count_if(value & !owned != 0);
        let mut v = value & owned;
        if i == 0 && matches!(op, Bank::SetPending | Bank::ClearPending) {
            // SGI pending state is set and cleared through GICD_SPENDSGIR/CPENDSGIR only (4.3.7, 4.3.8).
            v &= 0xffff_0000;
        }
        let hw = v & self.hw_mask(i);
        let first = i as u32 * 32;
        let mut kick = 0;
        match op {
            Bank::SetEnable => {
                if i == 0 {
                    self.banked[vcpu].enabled |= v;
                    kick = if self.has_pending(vcpu) { 1 << vcpu } else { 0 };
                } else {
                    self.enabled_spi[i] |= v;
                    kick = self.pending_mask();
                }
            }
            Bank::ClearEnable => {
                if i == 0 {
                    self.banked[vcpu].enabled &= !v;
                } else {
                    self.enabled_spi[i] &= !v;
                }
            }
            Bank::SetPending => {
                if i > 0 {
                    self.pending[i] |= v & !hw;
                    kick = self.pending_mask();
                }
            }
            Bank::ClearPending => {
                if i > 0 {
                    self.pending[i] &= !v;
                }
            }
            Bank::SetActive => {
                if i == 0 {
                    self.banked[vcpu].active |= v;
                } else {
                    self.active[i] |= v;
                }
            }
            Bank::ClearActive => {
                if i == 0 {
                    self.banked[vcpu].active &= !v;
                } else {
                    self.active[i] &= !v;
                }
            }
        }
        let hw = if hw == 0 { HwOp::None } else { HwOp::Bits { bank: op, first, mask: hw } };
        Outcome { kick, ..Outcome::hw(hw) }
    }

    /// Byte-wise registers: IPRIORITYR, ITARGETSR, CPENDSGIR, SPENDSGIR; `n` bytes from `offset`.
    fn write_bytes(&mut self, vcpu: usize, offset: u32, value: u32, n: u32) -> Outcome {
        let mut out = Outcome::NONE;
        let (mut vcpus, mut hw) = ([0u8; 4], 0u8);
        for k in 0..n {
            let at = offset + k;
            let b = ((value >> (8 * k)) & 0xff) as u8;
            match at {
                reg::IPRIORITYR..=0x7ff => {
                    let intid = at - reg::IPRIORITYR;
                    // Five priority bits, as the list registers keep (4.3.11: low bits RAZ/WI).
                    let p = b & 0xf8;
                    if intid < 32 {
                        if self.owned_mask(0) & (1 << intid) != 0 {
                            self.banked[vcpu].priority[intid as usize] = p;
                        } else {
                            self.count_if(b != 0);
                        }
                    } else if self.kind(intid) != Kind::None {
                        self.priority[intid as usize] = p;
                    } else {
                        self.count_if(b != 0);
                    }
                }
                reg::ITARGETSR..=0xbff => {
                    let intid = at - reg::ITARGETSR;
                    if intid < 32 || self.cpus == 1 {
                        continue; // read-only (4.3.12); all RAZ/WI with one CPU
                    }
                    let valid = ((1u32 << self.cpus) - 1) as u8;
                    let kind = self.kind(intid);
                    self.count_if((kind == Kind::None && b != 0) || b & !valid != 0);
                    if kind == Kind::None {
                        continue;
                    }
                    self.targets[intid as usize] = b & valid;
                    if kind == Kind::Hw {
                        vcpus[(at % 4) as usize] = b & valid;
                        hw |= 1 << (at % 4);
                    } else if self.deliverable_spi(intid) {
                        out.kick |= 1 << self.spi_target(intid);
                    }
                }
                reg::CPENDSGIR..=0xf1f => {
                    let sgi = (at - reg::CPENDSGIR) as usize;
                    self.banked[vcpu].sgi_sources[sgi] &= !b;
                }
                reg::SPENDSGIR..=0xf2f => {
                    let sgi = (at - reg::SPENDSGIR) as usize;
                    let valid = ((1u32 << self.cpus) - 1) as u8;
                    self.count_if(b & !valid != 0);
                    self.banked[vcpu].sgi_sources[sgi] |= b & valid;
                    if b & valid != 0 && self.has_pending(vcpu) {
                        out.kick |= 1 << vcpu;
                    }
                }
                _ => {}
            }
        }
        if hw != 0 {
            out.hw = HwOp::Target { first: (offset & !3) - reg::ITARGETSR, vcpus, mask: hw };
        }
        out
    }

    fn write_cfg(&mut self, vcpu: usize, i: u32, value: u32) -> Outcome {
        if i == 0 {
            return Outcome::NONE; // SGIs: read-only
        }
        let owned = self.cfg_owned_mask(i);
        // Bit 0 of each field is reserved (4.3.13): only Int_config[1] is looked at.
        self.count_if(value & !owned & 0xaaaa_aaaa != 0);
        if i == 1 {
            let b = &mut self.banked[vcpu];
            b.ppi_cfg = (b.ppi_cfg & !owned) | (value & owned & 0xaaaa_aaaa);
            return Outcome::NONE;
        }
        let (mut edges, mut hw) = (0u16, 0u16);
        for k in 0..16u32 {
            let intid = i * 16 + k;
            let kind = self.kind(intid);
            if kind == Kind::None {
                continue;
            }
            let edge = value & (2 << (2 * k)) != 0;
            let (w, b) = word_bit(intid);
            let was = self.edge[w] & b != 0;
            if edge {
                self.edge[w] |= b;
            } else {
                self.edge[w] &= !b;
            }
            if kind == Kind::Hw && was != edge {
                hw |= 1 << k;
                edges |= u16::from(edge) << k;
            }
        }
        if hw == 0 {
            return Outcome::NONE;
        }
        Outcome::hw(HwOp::Config { first: i * 16, edge: edges, mask: hw })
    }

    /// GICD_SGIR (4.3.15): SGI `value[3:0]` to the CPUs the filter names,
    /// among this guest's vCPUs only; naming any other is ignored and counted.
    fn write_sgir(&mut self, vcpu: usize, value: u32) -> Outcome {
        let sgi = (value & 0xf) as usize;
        let valid = ((1u32 << self.cpus) - 1) as u8;
        let list = ((value >> 16) & 0xff) as u8;
        let targets = match (value >> 24) & 3 {
            0 => {
                self.count_if(list & !valid != 0);
                list & valid
            }
            1 => valid & !(1 << vcpu),
            2 => 1 << vcpu,
            _ => {
                self.count_if(true); // reserved filter value
                0
            }
        };
        let mut kick = 0;
        for t in 0..self.cpus {
            if targets & (1 << t) != 0 {
                self.banked[t].sgi_sources[sgi] |= 1 << vcpu;
                if self.has_pending(t) {
                    kick |= 1 << t;
                }
            }
        }
        Outcome::kick(kick)
    }
}

/// A set/clear register bank of the distributor (4.3.5-4.3.10): what a bit written as 1 does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bank {
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

/// Size and alignment rules (4.1.4): every register is word-accessible,
/// aligned; IPRIORITYR, ITARGETSR, CPENDSGIR and SPENDSGIR also byte-accessible.
/// Halfword accesses are not supported by the distributor.
fn check(offset: u32, size: u32, byte_ok: bool) -> Result<(), BadAccess> {
    match size {
        4 if offset.is_multiple_of(4) && offset < GICD_SIZE as u32 => Ok(()),
        1 if byte_ok => Ok(()),
        _ => Err(BadAccess),
    }
}

#[cfg(test)]
#[path = "vgic_tests.rs"]
mod tests;
