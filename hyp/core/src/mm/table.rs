//! LPAE long-descriptor translation tables (4 KiB granule) for Hyp stage-1 and stage-2, and their walker.
//!
//! One builder serves both translation regimes. A regime is data: how wide its
//! input is, where its walk starts and how many entries its root has
//! ([`Regime`]), plus how it spells a leaf's attributes. Everything else, from
//! the level arithmetic to splitting blocks, is one code path (the way Bao
//! describes its formats with `page_table_dscr`).
//!
//! Changes happen in two steps, as in Hafnium's `mm.c`: a *prepare* step walks
//! the range, checks it and allocates every table the change needs (it may
//! fail, and then it gives back what it took, so no table is ever
//! half-updated); a *commit* step writes the descriptors and cannot fail.
//!
//! Architectural facts are from the Arm Architecture Reference Manual,
//! ARMv7-A and ARMv7-R edition (ARM DDI 0406C.d), cited as "Arm ARM":
//! B3.6 (long-descriptor format), B3.6.1 (descriptor layout), B3.6.2 (memory
//! attribute fields), B3.6.5 and B3.6.6 (lookup levels, the stage-2 first
//! level and concatenated tables), B3.10 (TLB maintenance, break-before-make).
//!
//! Tables are reached only through [`TableMemory`], so this file needs no
//! `unsafe`: the monitor implements it over its own table pages, host tests
//! and the plan tool use [`VecMemory`].

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::marker::PhantomData;
use core::ops::ControlFlow;

use crate::addr::{Address, Ipa, PhysAddr, VirtAddr, PAGE_SIZE, PA_BITS, PA_LIMIT, SIZE_1G, SIZE_2M};

// ---------------------------------------------------------------------------
// Registers whose values must agree with the tables built here.
// ---------------------------------------------------------------------------

/// HMAIR0 attribute index of Normal memory: the Hyp stage-1 `AttrIndx` of RAM.
pub const HMAIR_NORMAL_INDEX: u64 = 0;
/// HMAIR0 attribute index of Device memory: the Hyp stage-1 `AttrIndx` of MMIO.
pub const HMAIR_DEVICE_INDEX: u64 = 1;

/// HMAIR0, the Hyp Memory Attribute Indirection Register 0 (Arm ARM B4.1.69,
/// encoding as MAIR0, B4.1.104): the attributes Hyp stage-1 `AttrIndx` selects.
///
/// - Attr0 = 0xff: Normal, outer and inner write-back, read- and write-allocate, non-transient.
/// - Attr1 = 0x04: Device (Armv8 calls it Device-nGnRE).
/// - Attr2..Attr3: 0 (Strongly-ordered), unused.
pub const HMAIR0: u32 = (0xff << (8 * HMAIR_NORMAL_INDEX)) | (0x04 << (8 * HMAIR_DEVICE_INDEX));

/// Inner/outer cacheability 0b01 (write-back write-allocate) for table walks, as IRGN0/ORGN0 encode it.
const WALK_WBWA: u32 = 0b01;
/// Shareability 0b11 (inner shareable) for table walks, as SH0 encodes it.
const WALK_INNER_SHAREABLE: u32 = 0b11;

/// HTCR, the Hyp Translation Control Register (Arm ARM B4.1.74), for the
/// tables [`PageTable<HypStage1>`] builds:
///
/// - T0SZ `[2:0]` = 0: the whole 32-bit VA space, so the walk starts at level 1
///   with a 4-entry root indexed by `VA[31:30]` (Arm ARM B3.6.5).
/// - IRGN0 `[9:8]` = 0b01, ORGN0 `[11:10]` = 0b01: walks are write-back write-allocate cacheable.
/// - SH0 `[13:12]` = 0b11: walks are inner shareable.
/// - Bits 31 and 23: RES1 in the Armv8 Arm ARM's description of the AArch32
///   HTCR (ARM DDI 0487); DDI 0406C leaves them reserved. Written as ones.
pub const HTCR_VALUE: u32 = (1 << 31)
    | (1 << 23)
    | (WALK_INNER_SHAREABLE << 12)
    | (WALK_WBWA << 10)
    | (WALK_WBWA << 8)
    | (32 - HypStage1::INPUT_BITS);

/// VTCR, the Virtualization Translation Control Register (Arm ARM B4.1.159),
/// for the tables [`PageTable<Stage2>`] builds:
///
/// - T0SZ `[3:0]` = 0b1000 and S `[4]` = 1: T0SZ is a 4-bit signed field and
///   the IPA space is 2^(32 - T0SZ) bytes, so 40-bit IPAs need T0SZ = -8; S
///   must repeat `T0SZ[3]`. (AArch64's VTCR_EL2 would say T0SZ = 24 for the same size.)
/// - SL0 `[7:6]` = 0b01: the walk starts at level 1. With T0SZ = -8 that first
///   level resolves `IPA[39:30]`, 1024 entries: two concatenated 4 KiB tables,
///   so VTTBR must be 8 KiB aligned (Arm ARM B3.6.6, "Determining the required
///   first lookup level for stage 2 translations").
/// - IRGN0 `[9:8]` = 0b01, ORGN0 `[11:10]` = 0b01: walks are write-back write-allocate cacheable.
/// - SH0 `[13:12]` = 0b11: walks are inner shareable.
/// - Bit 31: RES1.
pub const VTCR_VALUE: u32 = {
    // 32 - 40 = -8, kept to its four bits: 0b1000.
    let t0sz = (32 - Stage2::INPUT_BITS as i32) as u32 & 0xf;
    let s = (t0sz >> 3) & 1;
    let sl0 = 0b01;
    (1 << 31) | (WALK_INNER_SHAREABLE << 12) | (WALK_WBWA << 10) | (WALK_WBWA << 8) | (sl0 << 6) | (s << 4) | t0sz
};

// ---------------------------------------------------------------------------
// Table shape: the levels of the 4 KiB granule.
// ---------------------------------------------------------------------------

/// The last lookup level: its entries are 4 KiB pages (Arm ARM B3.6.5).
pub const LAST_LEVEL: u8 = 3;
/// The first level that may hold a block: level 1 (1 GiB blocks, Arm ARM B3.6.1).
pub const FIRST_BLOCK_LEVEL: u8 = 1;
/// Descriptors in one 4 KiB table page.
pub const ENTRIES_PER_PAGE: usize = 512;
/// Bytes in one descriptor.
const DESC_BYTES: usize = 8;

/// The lowest input bit a level's index uses: 30 at level 1, 21 at level 2,
/// 12 at level 3; each level below the first resolves nine bits (Arm ARM B3.6.5).
pub const fn level_shift(level: u8) -> u32 {
    PAGE_SIZE.trailing_zeros() + 9 * LAST_LEVEL.saturating_sub(level) as u32
}

/// Bytes one entry at `level` covers: 1 GiB at level 1, 2 MiB at level 2, 4 KiB at level 3.
pub const fn level_size(level: u8) -> u64 {
    1 << level_shift(level)
}

const _: () = assert!(level_size(1) == SIZE_1G && level_size(2) == SIZE_2M && level_size(3) == PAGE_SIZE);

// ---------------------------------------------------------------------------
// Descriptors.
// ---------------------------------------------------------------------------

/// What a descriptor says, whatever its level and format.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Desc {
    /// Faults: nothing is mapped here.
    Invalid,
    /// Points at the next level's table (levels 1 and 2 only).
    Table(PhysAddr),
    /// Maps its whole slot, starting at this output address: a block at levels 1 and 2, a page at level 3.
    Leaf(PhysAddr),
}

/// Descriptor type bits `[1:0]`: table (levels 1-2) or page (level 3) (Arm ARM B3.6.1).
const TYPE_TABLE_OR_PAGE: u64 = 0b11;
/// Descriptor type bits `[1:0]`: block (levels 1-2); at level 3 this value is invalid.
const TYPE_BLOCK: u64 = 0b01;
/// Output address bits `[39:12]` of table and page descriptors.
const OUTPUT_MASK: u64 = (PA_LIMIT - 1) & !(PAGE_SIZE - 1);

/// Lower attribute: access flag, AF `[10]`. Set on every leaf, or the first access faults.
const AF: u64 = 1 << 10;
/// Lower attribute: shareability SH `[9:8]` = 0b11, inner shareable.
const SH_INNER: u64 = 0b11 << 8;
/// Upper attribute: execute-never, XN `[54]`.
const XN: u64 = 1 << 54;
/// Hyp stage-1 `AP[2:1]` `[7:6]` = 0b01: read/write. At PL2 `AP[1]` is should-be-one.
const HYP_AP_RW: u64 = 0b01 << 6;
/// Hyp stage-1 `AP[2:1]` `[7:6]` = 0b11: read-only.
const HYP_AP_RO: u64 = 0b11 << 6;
/// Hyp stage-1 `AP[2]`, bit 7: set for read-only.
const HYP_AP_READ_ONLY_BIT: u64 = 1 << 7;
/// Hyp stage-1 AttrIndx `[4:2]`.
const ATTR_INDX_SHIFT: u32 = 2;
/// Stage-2 `HAP[2:1]` `[7:6]` = 0b11: read/write.
const S2_HAP_RW: u64 = 0b11 << 6;
/// Stage-2 `HAP[2:1]` `[7:6]` = 0b01: read-only.
const S2_HAP_RO: u64 = 0b01 << 6;
/// Stage-2 MemAttr `[5:2]`.
const MEMATTR_SHIFT: u32 = 2;
/// Stage-2 MemAttr = 0b1111: Normal, outer and inner write-back cacheable.
const S2_MEMATTR_NORMAL_WB: u64 = 0b1111;
/// Stage-2 MemAttr = 0b0001: Device.
const S2_MEMATTR_DEVICE: u64 = 0b0001;

/// The hardware encoding of the descriptor kind and its address (Arm ARM B3.6.1).
fn lpae_encode(level: u8, desc: Desc) -> u64 {
    match desc {
        Desc::Invalid => 0,
        Desc::Table(next) if level < LAST_LEVEL => (next.as_u64() & OUTPUT_MASK) | TYPE_TABLE_OR_PAGE,
        // A table cannot hang below the last level: write a fault, never a page.
        Desc::Table(_) => 0,
        Desc::Leaf(out) if level == LAST_LEVEL => (out.as_u64() & OUTPUT_MASK) | TYPE_TABLE_OR_PAGE,
        Desc::Leaf(out) => (out.as_u64() & OUTPUT_MASK & !(level_size(level) - 1)) | TYPE_BLOCK,
    }
}

/// Reads the descriptor kind and address back from the hardware encoding (Arm ARM B3.6.1).
fn lpae_decode(level: u8, raw: u64) -> Desc {
    // Masked to 40 bits, so always a valid physical address.
    let out = |mask: u64| PhysAddr::new(raw & mask);
    match (raw & 0b11, level) {
        (TYPE_TABLE_OR_PAGE, LAST_LEVEL) => Desc::Leaf(out(OUTPUT_MASK)),
        (TYPE_TABLE_OR_PAGE, 1 | 2) => Desc::Table(out(OUTPUT_MASK)),
        (TYPE_BLOCK, 1 | 2) => Desc::Leaf(out(OUTPUT_MASK & !(level_size(level) - 1))),
        _ => Desc::Invalid,
    }
}

// ---------------------------------------------------------------------------
// Attributes.
// ---------------------------------------------------------------------------

/// Memory type of a mapping.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemType {
    /// Normal memory, inner and outer write-back cacheable, inner shareable.
    Normal,
    /// Device memory (MMIO).
    Device,
}

/// Access permission of a mapping, for the translation regime's own accesses
/// (the monitor's for Hyp stage-1, the guest's for stage-2).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    ReadWrite,
    ReadOnly,
}

/// What a leaf says about the memory it maps.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Attrs {
    pub mem: MemType,
    pub access: Access,
    /// Instructions may be fetched (XN clear).
    pub exec: bool,
}

impl Attrs {
    /// Normal read/write executable memory: guest RAM.
    pub const fn ram() -> Self {
        Self { mem: MemType::Normal, access: Access::ReadWrite, exec: true }
    }
    /// Normal read/write memory that cannot be executed: the monitor's data, heap and stacks.
    pub const fn ram_nx() -> Self {
        Self { mem: MemType::Normal, access: Access::ReadWrite, exec: false }
    }
    /// Normal read-only executable memory: the monitor's code.
    pub const fn text() -> Self {
        Self { mem: MemType::Normal, access: Access::ReadOnly, exec: true }
    }
    /// Normal read-only memory that cannot be executed: the monitor's constants.
    pub const fn rodata() -> Self {
        Self { mem: MemType::Normal, access: Access::ReadOnly, exec: false }
    }
    /// Device read/write memory, never executable: MMIO.
    pub const fn device() -> Self {
        Self { mem: MemType::Device, access: Access::ReadWrite, exec: false }
    }
}

// ---------------------------------------------------------------------------
// Regimes.
// ---------------------------------------------------------------------------

/// Which translation regime a table belongs to, for TLB maintenance.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegimeKind {
    /// The monitor's own translation (HTTBR; TLBIMVAH, TLBIALLH).
    HypStage1,
    /// A guest's stage-2 translation (VTTBR; TLBIALLNSNH, or by IPA where available).
    Stage2,
}

/// The shape and attribute encoding of one translation regime.
///
/// Implemented by [`HypStage1`] and [`Stage2`]. The descriptor-kind methods
/// default to the hardware format; the tests override them with a format that
/// tags each descriptor with its level, so that writing a descriptor at one
/// level and reading it at another fails a test (Hafnium's fake architecture
/// does the same).
pub trait Regime {
    /// The input address kind: [`VirtAddr`] for Hyp stage-1, [`Ipa`] for stage-2.
    type Input: Address;
    /// The regime's name in messages.
    const NAME: &'static str;
    /// Which regime this is, for [`TableMemory::invalidate_tlb`].
    const KIND: RegimeKind;
    /// Input address bits: 32 for Hyp stage-1 (HTCR.T0SZ = 0), 40 for stage-2 (VTCR.T0SZ = -8).
    const INPUT_BITS: u32;
    /// The level the walk starts at (1 for both regimes here).
    const ROOT_LEVEL: u8;
    /// Entries in the root table: `2^(INPUT_BITS - level_shift(ROOT_LEVEL))`.
    const ROOT_ENTRIES: usize;

    /// The upper and lower attribute bits of a block or page (Arm ARM B3.6.2).
    fn encode_leaf(attrs: Attrs) -> u64;
    /// The attributes a block or page descriptor holds.
    fn decode_leaf(desc: u64) -> Attrs;

    /// The descriptor kind and address bits of `desc` at `level` (Arm ARM B3.6.1).
    fn encode_desc(level: u8, desc: Desc) -> u64 {
        lpae_encode(level, desc)
    }
    /// What the descriptor `raw`, read at `level`, is.
    fn decode_desc(level: u8, raw: u64) -> Desc {
        lpae_decode(level, raw)
    }
}

/// The monitor's own translation: PL2 stage-1, 32-bit VA to 40-bit PA, root at HTTBR.
#[derive(Clone, Copy, Debug)]
pub struct HypStage1;

/// A guest's stage-2 translation: 40-bit IPA to 40-bit PA, root at VTTBR.
#[derive(Clone, Copy, Debug)]
pub struct Stage2;

/// The attribute bits of a Hyp stage-1 block or page (Arm ARM B3.6.2): AttrIndx
/// into [`HMAIR0`], `AP[2:1]` with `AP[1]` set, SH inner shareable for Normal
/// memory, AF, XN. NS and nG are 0; PXN does not exist at PL2. A `const fn`,
/// so the entry code's boot table (hyp/src/arch/entry.rs) uses the same bits.
pub const fn hyp_leaf_attrs(attrs: Attrs) -> u64 {
    let (index, sh) = match attrs.mem {
        MemType::Normal => (HMAIR_NORMAL_INDEX, SH_INNER),
        MemType::Device => (HMAIR_DEVICE_INDEX, 0),
    };
    let ap = match attrs.access {
        Access::ReadWrite => HYP_AP_RW,
        Access::ReadOnly => HYP_AP_RO,
    };
    let xn = if attrs.exec { 0 } else { XN };
    xn | AF | sh | ap | (index << ATTR_INDX_SHIFT)
}

impl Regime for HypStage1 {
    type Input = VirtAddr;
    const NAME: &'static str = "Hyp stage-1";
    const KIND: RegimeKind = RegimeKind::HypStage1;
    const INPUT_BITS: u32 = 32;
    const ROOT_LEVEL: u8 = 1;
    const ROOT_ENTRIES: usize = 4;

    fn encode_leaf(attrs: Attrs) -> u64 {
        hyp_leaf_attrs(attrs)
    }

    /// Any AttrIndx but the Normal one reads as Device.
    fn decode_leaf(desc: u64) -> Attrs {
        let index = (desc >> ATTR_INDX_SHIFT) & 0b111;
        Attrs {
            mem: if index == HMAIR_NORMAL_INDEX { MemType::Normal } else { MemType::Device },
            access: if desc & HYP_AP_READ_ONLY_BIT != 0 { Access::ReadOnly } else { Access::ReadWrite },
            exec: desc & XN == 0,
        }
    }
}

impl Regime for Stage2 {
    type Input = Ipa;
    const NAME: &'static str = "stage-2";
    const KIND: RegimeKind = RegimeKind::Stage2;
    const INPUT_BITS: u32 = PA_BITS;
    const ROOT_LEVEL: u8 = 1;
    const ROOT_ENTRIES: usize = 1024;

    /// `MemAttr[3:0]` (0b1111 Normal write-back, 0b0001 Device), `HAP[2:1]`, SH
    /// inner shareable for Normal memory, AF, XN.
    fn encode_leaf(attrs: Attrs) -> u64 {
        let (memattr, sh) = match attrs.mem {
            MemType::Normal => (S2_MEMATTR_NORMAL_WB, SH_INNER),
            MemType::Device => (S2_MEMATTR_DEVICE, 0),
        };
        let hap = match attrs.access {
            Access::ReadWrite => S2_HAP_RW,
            Access::ReadOnly => S2_HAP_RO,
        };
        let xn = if attrs.exec { 0 } else { XN };
        xn | AF | sh | hap | (memattr << MEMATTR_SHIFT)
    }

    /// `MemAttr[3:2]` = 0b00 reads as Device, anything else as Normal; any HAP
    /// but read/write (including no access) reads as read-only.
    fn decode_leaf(desc: u64) -> Attrs {
        let memattr = (desc >> MEMATTR_SHIFT) & 0b1111;
        Attrs {
            mem: if memattr & 0b1100 == 0 { MemType::Device } else { MemType::Normal },
            access: if desc & S2_HAP_RW == S2_HAP_RW { Access::ReadWrite } else { Access::ReadOnly },
            exec: desc & XN == 0,
        }
    }
}

// ---------------------------------------------------------------------------
// Table memory.
// ---------------------------------------------------------------------------

/// Where translation tables live. The monitor implements this over its own
/// table pages (and does the barriers and cache maintenance the table walker
/// needs); host tests and the plan tool use [`VecMemory`].
pub trait TableMemory {
    /// Allocates `pages` (1 or 2) physically contiguous, zeroed 4 KiB table
    /// pages, aligned to `pages` * 4 KiB, whose zeroes the table walker already
    /// sees. `None` when there is no memory left.
    fn alloc_table(&mut self, pages: usize) -> Option<PhysAddr>;
    /// Gives back what [`alloc_table`](Self::alloc_table) returned, with the same `pages`.
    fn free_table(&mut self, table: PhysAddr, pages: usize);
    /// The 64-bit descriptor at `table + 8 * index`.
    fn read(&self, table: PhysAddr, index: usize) -> u64;
    /// Writes the 64-bit descriptor at `table + 8 * index`, visibly to the table
    /// walker before the next write, with one single-copy atomic 64-bit store
    /// (STRD to an 8-byte aligned address is one with LPAE, Arm ARM A3.5.3), so
    /// the walker never sees half a descriptor.
    fn write(&mut self, table: PhysAddr, index: usize, value: u64);
    /// Invalidates the TLB entries (leaf and walk-cache) that translate any
    /// input in `[input, input + size)` through the table rooted at `root`.
    ///
    /// Called between the two writes of a break-before-make sequence (Arm ARM
    /// B3.10.1: a block becomes a table, or a table a block), once over the
    /// whole range at the end of an unmap, and before any table page that was
    /// reachable is freed. May invalidate more than asked (everything, for a
    /// large range). The default does nothing, which is right for memory no
    /// table walker reads.
    fn invalidate_tlb(&mut self, regime: RegimeKind, root: PhysAddr, input: u64, size: u64) {
        let _ = (regime, root, input, size);
    }
}

/// Table memory on the heap, at made-up physical addresses: for host tests
/// and for the plan tool, which measures how many table bytes a plan needs.
///
/// Pages are handed out upwards from a base address and never reused, so a
/// stale pointer to a freed table reads as a bug (a debug assertion) rather
/// than as someone else's table. An optional budget caps the pages in use.
#[derive(Clone)]
pub struct VecMemory {
    pages: BTreeMap<u64, Box<[u64; ENTRIES_PER_PAGE]>>,
    /// First page of each live allocation, and its length in pages.
    allocations: BTreeMap<u64, usize>,
    next: u64,
    budget: Option<usize>,
    in_use: usize,
    peak: usize,
    allocated_total: usize,
    tlb_invalidations: usize,
}

impl VecMemory {
    /// Empty table memory whose pages are handed out from `base` up.
    pub fn new(base: PhysAddr) -> Self {
        Self {
            pages: BTreeMap::new(),
            allocations: BTreeMap::new(),
            next: base.as_u64(),
            budget: None,
            in_use: 0,
            peak: 0,
            allocated_total: 0,
            tlb_invalidations: 0,
        }
    }

    /// Like [`new`](Self::new), but refusing to hold more than `pages` pages at once.
    pub fn with_budget(base: PhysAddr, pages: usize) -> Self {
        let mut mem = Self::new(base);
        mem.budget = Some(pages);
        mem
    }

    /// Caps the pages in use at once (`None`: no cap). Pages already in use stay.
    pub fn set_budget(&mut self, pages: Option<usize>) {
        self.budget = pages;
    }

    /// Table pages in use now.
    pub fn pages_in_use(&self) -> usize {
        self.in_use
    }

    /// Table bytes in use now.
    pub fn bytes_in_use(&self) -> u64 {
        self.in_use as u64 * PAGE_SIZE
    }

    /// The most table pages in use at any one time.
    pub fn peak_pages(&self) -> usize {
        self.peak
    }

    /// Table pages ever allocated, freed ones included.
    pub fn pages_allocated_total(&self) -> usize {
        self.allocated_total
    }

    /// How many times [`TableMemory::invalidate_tlb`] was called.
    pub fn tlb_invalidations(&self) -> usize {
        self.tlb_invalidations
    }

    /// The page holding descriptor `index` of `table`, and the index inside that page.
    fn locate(table: PhysAddr, index: usize) -> (u64, usize) {
        let page = table.as_u64() + (index / ENTRIES_PER_PAGE) as u64 * PAGE_SIZE;
        (page, index % ENTRIES_PER_PAGE)
    }
}

impl fmt::Debug for VecMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VecMemory")
            .field("pages_in_use", &self.in_use)
            .field("peak_pages", &self.peak)
            .field("next", &format_args!("{:#x}", self.next))
            .field("budget", &self.budget)
            .finish()
    }
}

impl Default for VecMemory {
    /// Table memory from 512 GiB up, far from the addresses tests map.
    fn default() -> Self {
        Self::new(PhysAddr::new(0x80_0000_0000))
    }
}

impl TableMemory for VecMemory {
    fn alloc_table(&mut self, pages: usize) -> Option<PhysAddr> {
        if pages == 0 || pages > 16 {
            return None;
        }
        if let Some(budget) = self.budget {
            if self.in_use + pages > budget {
                return None;
            }
        }
        let bytes = pages.next_power_of_two() as u64 * PAGE_SIZE;
        let start = PhysAddr::from_u64(self.next)?.align_up(bytes)?;
        let end = start.checked_add(pages as u64 * PAGE_SIZE)?;
        for page in 0..pages as u64 {
            self.pages.insert(start.as_u64() + page * PAGE_SIZE, Box::new([0; ENTRIES_PER_PAGE]));
        }
        self.allocations.insert(start.as_u64(), pages);
        self.next = end.as_u64();
        self.in_use += pages;
        self.allocated_total += pages;
        self.peak = self.peak.max(self.in_use);
        Some(start)
    }

    fn free_table(&mut self, table: PhysAddr, pages: usize) {
        let start = table.as_u64();
        if self.allocations.get(&start) != Some(&pages) {
            debug_assert!(false, "freeing {table:?} as {pages} pages, which is not how it was allocated");
            return;
        }
        self.allocations.remove(&start);
        for page in 0..pages as u64 {
            self.pages.remove(&(start + page * PAGE_SIZE));
        }
        self.in_use -= pages;
    }

    fn read(&self, table: PhysAddr, index: usize) -> u64 {
        let (page, slot) = Self::locate(table, index);
        match self.pages.get(&page) {
            Some(entries) => entries[slot],
            None => {
                debug_assert!(false, "read of {table:?}[{index}], which is not a live table");
                0
            }
        }
    }

    fn write(&mut self, table: PhysAddr, index: usize, value: u64) {
        let (page, slot) = Self::locate(table, index);
        match self.pages.get_mut(&page) {
            Some(entries) => entries[slot] = value,
            None => debug_assert!(false, "write to {table:?}[{index}], which is not a live table"),
        }
    }

    fn invalidate_tlb(&mut self, _regime: RegimeKind, _root: PhysAddr, _input: u64, _size: u64) {
        self.tlb_invalidations += 1;
    }
}

// ---------------------------------------------------------------------------
// Results and errors.
// ---------------------------------------------------------------------------

/// Where an input address goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Translation {
    /// The output address of the input address itself (not of its block).
    pub pa: PhysAddr,
    pub attrs: Attrs,
    /// The level of the leaf that maps it: 1, 2 or 3.
    pub level: u8,
    /// The size of that leaf: 1 GiB, 2 MiB or 4 KiB.
    pub block_size: u64,
}

/// One block or page of a table, as [`PageTable::for_each_leaf`] reports it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Leaf<A> {
    /// The first input address it maps.
    pub input: A,
    /// Where `input` goes.
    pub pa: PhysAddr,
    /// 1 GiB, 2 MiB or 4 KiB.
    pub size: u64,
    pub attrs: Attrs,
    /// 1, 2 or 3.
    pub level: u8,
}

/// What one [`PageTable::map`] wrote.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MapStats {
    /// Level-1 blocks written.
    pub blocks_1g: u32,
    /// Level-2 blocks written.
    pub blocks_2m: u32,
    /// Level-3 pages written.
    pub pages_4k: u32,
    /// Table pages allocated (level-2 and level-3 tables).
    pub tables_allocated: u32,
}

impl MapStats {
    fn count_leaf(&mut self, level: u8) {
        match level {
            1 => self.blocks_1g += 1,
            2 => self.blocks_2m += 1,
            _ => self.pages_4k += 1,
        }
    }
}

impl core::ops::AddAssign for MapStats {
    fn add_assign(&mut self, other: Self) {
        self.blocks_1g += other.blocks_1g;
        self.blocks_2m += other.blocks_2m;
        self.pages_4k += other.pages_4k;
        self.tables_allocated += other.tables_allocated;
    }
}

/// Why a table was left as it was. Every variant names the regime.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MapError {
    /// An address or size is not a multiple of 4 KiB. `what` is "input address", "physical address" or "size".
    Unaligned { regime: &'static str, what: &'static str, value: u64 },
    /// Nothing to do: the size is 0.
    ZeroSize { regime: &'static str },
    /// `[start, start + size)` runs past the `bits`-bit space of `what` ("input" or "physical").
    OutOfRange { regime: &'static str, what: &'static str, start: u64, size: u64, bits: u32 },
    /// `input` (the lowest such address in the range) is mapped already.
    AlreadyMapped { regime: &'static str, input: u64 },
    /// No memory for a translation table.
    OutOfMemory { regime: &'static str },
    /// `input` (the lowest such address in the range) is not mapped.
    NotMapped { regime: &'static str, input: u64 },
    /// `input` is mapped by a block of `level` (1 or 2), not by a 4 KiB page.
    NotAPage { regime: &'static str, input: u64, level: u8 },
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Unaligned { regime, what, value } => {
                write!(f, "{regime}: {what} {value:#x} is not a multiple of 4 KiB")
            }
            Self::ZeroSize { regime } => write!(f, "{regime}: nothing to map or unmap (size 0)"),
            Self::OutOfRange { regime, what, start, size, bits } => write!(
                f,
                "{regime}: {what} range {start:#x} + {size:#x} runs past the {bits}-bit limit {:#x}",
                1u128 << bits
            ),
            Self::AlreadyMapped { regime, input } => write!(f, "{regime}: {input:#x} is already mapped"),
            Self::OutOfMemory { regime } => write!(f, "{regime}: out of memory for translation tables"),
            Self::NotMapped { regime, input } => write!(f, "{regime}: {input:#x} is not mapped"),
            Self::NotAPage { regime, input, level } => {
                write!(f, "{regime}: {input:#x} is mapped by a level-{level} block, not a 4 KiB page")
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The walk.
// ---------------------------------------------------------------------------

/// One table during a walk: where it is, its level, the first input address it covers.
#[derive(Clone, Copy, Debug)]
struct Node {
    table: PhysAddr,
    level: u8,
    base: u64,
    entries: usize,
}

impl Node {
    /// The entry of this table that `input` (inside the table's span) selects.
    fn index(self, input: u64) -> usize {
        let index = input.saturating_sub(self.base) >> level_shift(self.level);
        index.min(self.entries as u64 - 1) as usize
    }

    /// The first input address entry `index` covers.
    fn slot_base(self, index: usize) -> u64 {
        self.base + ((index as u64) << level_shift(self.level))
    }

    /// The table entry `index` points at.
    fn child(self, index: usize, table: PhysAddr) -> Node {
        Node { table, level: self.level + 1, base: self.slot_base(index), entries: ENTRIES_PER_PAGE }
    }

    /// The entries whose slots overlap `span` (which must overlap this table's span).
    fn slots(self, span: Span) -> core::ops::RangeInclusive<usize> {
        self.index(span.start.max(self.base))..=self.index(span.end - 1)
    }
}

/// A non-empty half-open input range `[start, end)`.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u64,
    end: u64,
}

impl Span {
    fn covers(self, start: u64, size: u64) -> bool {
        self.start <= start && start + size <= self.end
    }
}

/// The leaves one map() writes, largest first wherever input and output are
/// both aligned: 1 GiB, then 2 MiB, then 4 KiB.
#[derive(Clone, Copy, Debug)]
struct Chunks {
    input: u64,
    pa: u64,
    end: u64,
    /// The largest leaf's level the regime allows.
    top: u8,
}

#[derive(Clone, Copy, Debug)]
struct Chunk {
    input: u64,
    pa: PhysAddr,
    level: u8,
}

impl Iterator for Chunks {
    type Item = Chunk;

    fn next(&mut self) -> Option<Chunk> {
        if self.input >= self.end {
            return None;
        }
        let left = self.end - self.input;
        let level = (self.top..LAST_LEVEL)
            .find(|&level| {
                let size = level_size(level);
                (self.input | self.pa) & (size - 1) == 0 && left >= size
            })
            .unwrap_or(LAST_LEVEL);
        let chunk = Chunk { input: self.input, pa: PhysAddr::from_u64(self.pa)?, level };
        self.input += level_size(level);
        self.pa += level_size(level);
        Some(chunk)
    }
}

/// A table the prepare step of map() allocated and linked, to unlink if the step fails.
#[derive(Clone, Copy, Debug)]
struct NewTable {
    parent: PhysAddr,
    index: usize,
    table: PhysAddr,
}

/// One translation table tree (a root and the tables below it) of regime `R`.
pub struct PageTable<R: Regime> {
    root: PhysAddr,
    regime: PhantomData<R>,
}

impl<R: Regime> fmt::Debug for PageTable<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PageTable<{}>({:?})", R::NAME, self.root)
    }
}

impl<R: Regime> PageTable<R> {
    /// 4 KiB pages in the root: 2 for stage-2 (1024 entries), 1 for Hyp stage-1
    /// (4 entries used). Also checks, at compile time, that the regime's
    /// numbers agree with each other.
    const ROOT_PAGES: usize = {
        assert!(R::ROOT_LEVEL >= 1 && R::ROOT_LEVEL <= LAST_LEVEL);
        assert!(R::INPUT_BITS > level_shift(R::ROOT_LEVEL) && R::INPUT_BITS <= 64);
        assert!(R::ROOT_ENTRIES == 1 << (R::INPUT_BITS - level_shift(R::ROOT_LEVEL)));
        assert!(R::INPUT_BITS == 64 || (1u64 << R::INPUT_BITS) <= R::Input::LIMIT);
        let pages = (R::ROOT_ENTRIES * DESC_BYTES).div_ceil(PAGE_SIZE as usize);
        // Up to 16 concatenated root tables (Arm ARM B3.6.6).
        assert!(pages <= 16);
        pages
    };

    /// One past the highest input address.
    const INPUT_LIMIT: u64 = 1 << R::INPUT_BITS;

    /// An empty table: allocates the root, `ROOT_PAGES` pages aligned to its size
    /// (8 KiB for stage-2, as VTTBR needs for two concatenated level-1 tables).
    pub fn new<M: TableMemory + ?Sized>(mem: &mut M) -> Result<Self, MapError> {
        let root = mem.alloc_table(Self::ROOT_PAGES).ok_or(MapError::OutOfMemory { regime: R::NAME })?;
        Ok(Self { root, regime: PhantomData })
    }

    /// The root table's physical address, for HTTBR or VTTBR.
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    fn root_node(&self) -> Node {
        Node { table: self.root, level: R::ROOT_LEVEL, base: 0, entries: R::ROOT_ENTRIES }
    }

    /// Maps `[input, input + size)` to `[pa, pa + size)` with `attrs`, using the
    /// largest leaves alignment allows: 1 GiB level-1 blocks, 2 MiB level-2
    /// blocks, 4 KiB level-3 pages (input and output must be aligned alike).
    ///
    /// Prepare walks the range and allocates every table the mapping needs; if
    /// any part of the range is mapped already, or memory runs out, it unlinks
    /// and frees what it allocated and the table is as it was. Commit then
    /// writes the leaves and cannot fail. No TLB maintenance is needed: only
    /// invalid entries become valid.
    pub fn map<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        input: R::Input,
        pa: PhysAddr,
        size: u64,
        attrs: Attrs,
    ) -> Result<MapStats, MapError> {
        let start = input.as_u64();
        self.check(start, Some(pa.as_u64()), size)?;
        let top = FIRST_BLOCK_LEVEL.max(R::ROOT_LEVEL);
        let chunks = Chunks { input: start, pa: pa.as_u64(), end: start + size, top };
        let mut new = Vec::new();
        match self.prepare_map(mem, chunks, &mut new) {
            Ok(stats) => {
                self.commit_map(mem, chunks, attrs);
                Ok(stats)
            }
            Err(error) => {
                self.rollback(mem, &new, Span { start, end: start + size });
                Err(error)
            }
        }
    }

    /// Unmaps `[input, input + size)`, every page of which must be mapped. A
    /// block only partly inside the range is split into the next level's
    /// leaves (tables allocated in the prepare step), so the rest of it stays
    /// mapped. Tables left empty are freed. The range's TLB entries are
    /// invalidated through [`TableMemory::invalidate_tlb`] before returning.
    pub fn unmap<M: TableMemory + ?Sized>(&mut self, mem: &mut M, input: R::Input, size: u64) -> Result<(), MapError> {
        let start = input.as_u64();
        self.check(start, None, size)?;
        let span = Span { start, end: start + size };

        // Prepare: all of it mapped?
        if let Some(hole) = self.first_hole(mem, span) {
            return Err(MapError::NotMapped { regime: R::NAME, input: hole });
        }
        // Prepare: reserve the tables that splitting the blocks across `start`
        // and `end` needs, and room to remember the tables that will empty.
        let oom = MapError::OutOfMemory { regime: R::NAME };
        let mut freed: Vec<PhysAddr> = Vec::new();
        freed.try_reserve_exact(self.count_tables(mem, self.root_node(), span)).map_err(|_| oom)?;
        let needed = self.split_tables_needed(mem, span);
        let mut pool: Vec<PhysAddr> = Vec::new();
        pool.try_reserve_exact(needed).map_err(|_| oom)?;
        for _ in 0..needed {
            match mem.alloc_table(1) {
                Some(table) => pool.push(table),
                None => {
                    for table in pool {
                        mem.free_table(table, 1);
                    }
                    return Err(oom);
                }
            }
        }

        // Commit.
        self.split_at(mem, span.start, &mut pool);
        if span.end < Self::INPUT_LIMIT {
            self.split_at(mem, span.end, &mut pool);
        }
        debug_assert!(pool.is_empty(), "unmap reserved {} tables it did not use", pool.len());
        self.clear(mem, self.root_node(), span, &mut freed);
        mem.invalidate_tlb(R::KIND, self.root, start, size);
        for table in freed.into_iter().chain(pool) {
            mem.free_table(table, 1);
        }
        Ok(())
    }

    /// Points the 4 KiB page that maps `input` at `pa` with `attrs`, in place:
    /// the way a movable page is write-protected and then moved (CMA).
    ///
    /// `input` must be mapped by a level-3 page (a block is refused as
    /// [`MapError::NotAPage`]: splitting it is [`Self::unmap`]'s job). When the
    /// output address stays, only the attributes change, which needs no
    /// break-before-make: the new descriptor is written and the page's TLB
    /// entries invalidated. When it moves, break-before-make (Arm ARM
    /// B3.10.1): the entry is made invalid, the TLB invalidated, then the new
    /// descriptor written (an invalid entry is never held in a TLB, so nothing
    /// more is needed). Allocates nothing, so it cannot run out of memory.
    pub fn remap_page<M: TableMemory + ?Sized>(
        &mut self,
        mem: &mut M,
        input: R::Input,
        pa: PhysAddr,
        attrs: Attrs,
    ) -> Result<(), MapError> {
        let start = input.as_u64();
        self.check(start, Some(pa.as_u64()), PAGE_SIZE)?;
        let mut node = self.root_node();
        loop {
            let index = node.index(start);
            match R::decode_desc(node.level, mem.read(node.table, index)) {
                Desc::Invalid => return Err(MapError::NotMapped { regime: R::NAME, input: start }),
                Desc::Leaf(old) if node.level == LAST_LEVEL => {
                    let leaf = R::encode_desc(node.level, Desc::Leaf(pa)) | R::encode_leaf(attrs);
                    if old != pa {
                        mem.write(node.table, index, R::encode_desc(node.level, Desc::Invalid));
                        mem.invalidate_tlb(R::KIND, self.root, start, PAGE_SIZE);
                        mem.write(node.table, index, leaf);
                    } else {
                        mem.write(node.table, index, leaf);
                        mem.invalidate_tlb(R::KIND, self.root, start, PAGE_SIZE);
                    }
                    return Ok(());
                }
                Desc::Leaf(_) => return Err(MapError::NotAPage { regime: R::NAME, input: start, level: node.level }),
                Desc::Table(_) if node.level >= LAST_LEVEL => {
                    return Err(MapError::NotMapped { regime: R::NAME, input: start })
                }
                Desc::Table(next) => node = node.child(index, next),
            }
        }
    }

    /// Where `input` goes, or `None` if it is not mapped.
    pub fn translate<M: TableMemory + ?Sized>(&self, mem: &M, input: R::Input) -> Option<Translation> {
        let input = input.as_u64();
        let (level, block, raw) = self.leaf_at(mem, input)?;
        let block_size = level_size(level);
        Some(Translation {
            pa: block.checked_add(input & (block_size - 1))?,
            attrs: R::decode_leaf(raw),
            level,
            block_size,
        })
    }

    /// Calls `f` on every leaf, in input order.
    pub fn for_each_leaf<M: TableMemory + ?Sized>(&self, mem: &M, mut f: impl FnMut(Leaf<R::Input>)) {
        let all = Span { start: 0, end: Self::INPUT_LIMIT };
        let _ = self.walk_leaves(mem, self.root_node(), all, &mut |input, pa, level, raw| {
            if let Some(input) = R::Input::from_u64(input) {
                f(Leaf { input, pa, size: level_size(level), attrs: R::decode_leaf(raw), level });
            }
            ControlFlow::<()>::Continue(())
        });
    }

    /// Frees every table page, the root included. The caller makes sure no CPU
    /// uses the table any more (and has invalidated its TLB entries).
    pub fn destroy<M: TableMemory + ?Sized>(self, mem: &mut M) {
        self.free_tree(mem, self.root_node(), Self::ROOT_PAGES);
    }

    // --- checks ---

    fn check(&self, input: u64, pa: Option<u64>, size: u64) -> Result<(), MapError> {
        let regime = R::NAME;
        if size == 0 {
            return Err(MapError::ZeroSize { regime });
        }
        let aligned = |value: u64| value & (PAGE_SIZE - 1) == 0;
        if !aligned(input) {
            return Err(MapError::Unaligned { regime, what: "input address", value: input });
        }
        if let Some(pa) = pa.filter(|&pa| !aligned(pa)) {
            return Err(MapError::Unaligned { regime, what: "physical address", value: pa });
        }
        if !aligned(size) {
            return Err(MapError::Unaligned { regime, what: "size", value: size });
        }
        let fits = |start: u64, limit: u64| start.checked_add(size).is_some_and(|end| end <= limit);
        if !fits(input, Self::INPUT_LIMIT) {
            return Err(MapError::OutOfRange { regime, what: "input", start: input, size, bits: R::INPUT_BITS });
        }
        if let Some(pa) = pa.filter(|&pa| !fits(pa, PA_LIMIT)) {
            return Err(MapError::OutOfRange { regime, what: "physical", start: pa, size, bits: PA_BITS });
        }
        Ok(())
    }

    // --- map ---

    fn prepare_map<M: TableMemory + ?Sized>(
        &self,
        mem: &mut M,
        chunks: Chunks,
        new: &mut Vec<NewTable>,
    ) -> Result<MapStats, MapError> {
        let already = |input| MapError::AlreadyMapped { regime: R::NAME, input };
        let oom = MapError::OutOfMemory { regime: R::NAME };
        let mut stats = MapStats::default();
        for chunk in chunks {
            let mut node = self.root_node();
            while node.level < chunk.level {
                let index = node.index(chunk.input);
                node = match R::decode_desc(node.level, mem.read(node.table, index)) {
                    Desc::Table(next) => node.child(index, next),
                    Desc::Leaf(_) => return Err(already(chunk.input)),
                    Desc::Invalid => {
                        new.try_reserve(1).map_err(|_| oom)?;
                        let table = mem.alloc_table(1).ok_or(oom)?;
                        new.push(NewTable { parent: node.table, index, table });
                        // Links an empty table: what the table translates is unchanged.
                        mem.write(node.table, index, R::encode_desc(node.level, Desc::Table(table)));
                        stats.tables_allocated += 1;
                        node.child(index, table)
                    }
                };
            }
            let index = node.index(chunk.input);
            match R::decode_desc(node.level, mem.read(node.table, index)) {
                Desc::Invalid => {}
                Desc::Leaf(_) => return Err(already(chunk.input)),
                // A table where the leaf goes: refused if anything below it is
                // mapped; an empty one (this file never leaves one) is replaced.
                Desc::Table(next) => {
                    let below = node.child(index, next);
                    let all = Span { start: below.base, end: below.base + level_size(node.level) };
                    if let ControlFlow::Break(input) =
                        self.walk_leaves(mem, below, all, &mut |input, _, _, _| ControlFlow::Break(input))
                    {
                        return Err(already(input));
                    }
                }
            }
            stats.count_leaf(chunk.level);
        }
        Ok(stats)
    }

    fn commit_map<M: TableMemory + ?Sized>(&self, mem: &mut M, chunks: Chunks, attrs: Attrs) {
        let leaf_attrs = R::encode_leaf(attrs);
        'chunks: for chunk in chunks {
            let mut node = self.root_node();
            while node.level < chunk.level {
                let index = node.index(chunk.input);
                match R::decode_desc(node.level, mem.read(node.table, index)) {
                    Desc::Table(next) => node = node.child(index, next),
                    _ => {
                        debug_assert!(false, "{}: prepare left no table above {:#x}", R::NAME, chunk.input);
                        continue 'chunks;
                    }
                }
            }
            let index = node.index(chunk.input);
            let leaf = R::encode_desc(chunk.level, Desc::Leaf(chunk.pa)) | leaf_attrs;
            match R::decode_desc(node.level, mem.read(node.table, index)) {
                Desc::Table(old) => {
                    // Break-before-make: a table becomes a block (Arm ARM B3.10.1).
                    mem.write(node.table, index, 0);
                    mem.invalidate_tlb(R::KIND, self.root, chunk.input, level_size(chunk.level));
                    mem.write(node.table, index, leaf);
                    self.free_tree(mem, node.child(index, old), 1);
                }
                _ => mem.write(node.table, index, leaf),
            }
        }
    }

    /// Undoes a failed prepare: unlinks and frees the tables it allocated, newest first.
    fn rollback<M: TableMemory + ?Sized>(&self, mem: &mut M, new: &[NewTable], span: Span) {
        for entry in new.iter().rev() {
            mem.write(entry.parent, entry.index, 0);
        }
        if !new.is_empty() {
            // Walk caches may hold the links just removed.
            mem.invalidate_tlb(R::KIND, self.root, span.start, span.end - span.start);
        }
        for entry in new.iter().rev() {
            mem.free_table(entry.table, 1);
        }
    }

    // --- unmap ---

    /// The lowest address of `span` no leaf maps.
    fn first_hole<M: TableMemory + ?Sized>(&self, mem: &M, span: Span) -> Option<u64> {
        let mut next = span.start;
        let gap = self.walk_leaves(mem, self.root_node(), span, &mut |input, _, level, _| {
            if input > next {
                return ControlFlow::Break(next);
            }
            next = input + level_size(level);
            ControlFlow::Continue(())
        });
        match gap {
            ControlFlow::Break(hole) => Some(hole),
            ControlFlow::Continue(()) => (next < span.end).then_some(next),
        }
    }

    /// Tables (root excluded) whose span overlaps `span`: at most the tables an unmap can empty.
    fn count_tables<M: TableMemory + ?Sized>(&self, mem: &M, node: Node, span: Span) -> usize {
        let mut count = 0;
        if node.level < LAST_LEVEL {
            for index in node.slots(span) {
                if let Desc::Table(next) = R::decode_desc(node.level, mem.read(node.table, index)) {
                    count += 1 + self.count_tables(mem, node.child(index, next), span);
                }
            }
        }
        count
    }

    /// Tables split_at(span.start) and split_at(span.end) will need: for an
    /// edge inside a leaf of level L, one table for each level from L down to
    /// the first level the edge is aligned to; a block both edges cut is split once.
    fn split_tables_needed<M: TableMemory + ?Sized>(&self, mem: &M, span: Span) -> usize {
        let mut split: [(u8, u64); 4] = [(0, 0); 4];
        let mut count = 0;
        for edge in [span.start, span.end] {
            let Some((mut level, _, _)) = self.leaf_at(mem, edge) else {
                continue;
            };
            while level < LAST_LEVEL && edge & (level_size(level) - 1) != 0 {
                let block = (level, edge & !(level_size(level) - 1));
                if !split[..count].contains(&block) && count < split.len() {
                    split[count] = block;
                    count += 1;
                }
                level += 1;
            }
        }
        count
    }

    /// Splits the leaves around `edge` until a leaf starts at `edge`, taking tables from `pool`.
    fn split_at<M: TableMemory + ?Sized>(&self, mem: &mut M, edge: u64, pool: &mut Vec<PhysAddr>) {
        let mut node = self.root_node();
        loop {
            let index = node.index(edge);
            let raw = mem.read(node.table, index);
            match R::decode_desc(node.level, raw) {
                Desc::Invalid => return,
                Desc::Table(_) if node.level >= LAST_LEVEL => return,
                Desc::Table(next) => node = node.child(index, next),
                Desc::Leaf(out) => {
                    let base = node.slot_base(index);
                    if base == edge || node.level >= LAST_LEVEL {
                        return;
                    }
                    let Some(table) = pool.pop() else {
                        debug_assert!(false, "{}: no table reserved to split at {edge:#x}", R::NAME);
                        return;
                    };
                    // Fill the new table with leaves that map what the block mapped.
                    let level = node.level + 1;
                    let attrs = R::encode_leaf(R::decode_leaf(raw));
                    for sub in 0..ENTRIES_PER_PAGE {
                        if let Some(pa) = out.checked_add(sub as u64 * level_size(level)) {
                            mem.write(table, sub, R::encode_desc(level, Desc::Leaf(pa)) | attrs);
                        }
                    }
                    // Break-before-make: a block becomes a table (Arm ARM B3.10.1).
                    mem.write(node.table, index, 0);
                    mem.invalidate_tlb(R::KIND, self.root, base, level_size(node.level));
                    mem.write(node.table, index, R::encode_desc(node.level, Desc::Table(table)));
                    node = node.child(index, table);
                }
            }
        }
    }

    /// Clears every leaf in `span` (each lies wholly inside it after the splits)
    /// and unlinks the tables that become empty, adding them to `freed`.
    fn clear<M: TableMemory + ?Sized>(&self, mem: &mut M, node: Node, span: Span, freed: &mut Vec<PhysAddr>) {
        for index in node.slots(span) {
            match R::decode_desc(node.level, mem.read(node.table, index)) {
                Desc::Invalid => {}
                Desc::Leaf(_) => {
                    debug_assert!(span.covers(node.slot_base(index), level_size(node.level)));
                    mem.write(node.table, index, 0);
                }
                Desc::Table(_) if node.level >= LAST_LEVEL => {}
                Desc::Table(next) => {
                    let child = node.child(index, next);
                    self.clear(mem, child, span, freed);
                    let empty = (0..child.entries)
                        .all(|sub| R::decode_desc(child.level, mem.read(child.table, sub)) == Desc::Invalid);
                    if empty {
                        mem.write(node.table, index, 0);
                        freed.push(next);
                    }
                }
            }
        }
    }

    // --- walking ---

    /// The leaf that maps `input`: its level, its output address and its raw descriptor.
    fn leaf_at<M: TableMemory + ?Sized>(&self, mem: &M, input: u64) -> Option<(u8, PhysAddr, u64)> {
        if input >= Self::INPUT_LIMIT {
            return None;
        }
        let mut node = self.root_node();
        loop {
            let index = node.index(input);
            let raw = mem.read(node.table, index);
            match R::decode_desc(node.level, raw) {
                Desc::Invalid => return None,
                Desc::Leaf(out) => return Some((node.level, out, raw)),
                Desc::Table(_) if node.level >= LAST_LEVEL => return None,
                Desc::Table(next) => node = node.child(index, next),
            }
        }
    }

    /// Calls `f(input, pa, level, raw)` on each leaf overlapping `span` below
    /// `node`, in input order, until `f` breaks.
    fn walk_leaves<M, B, F>(&self, mem: &M, node: Node, span: Span, f: &mut F) -> ControlFlow<B>
    where
        M: TableMemory + ?Sized,
        F: FnMut(u64, PhysAddr, u8, u64) -> ControlFlow<B>,
    {
        for index in node.slots(span) {
            let raw = mem.read(node.table, index);
            match R::decode_desc(node.level, raw) {
                Desc::Invalid => {}
                Desc::Leaf(out) => f(node.slot_base(index), out, node.level, raw)?,
                Desc::Table(_) if node.level >= LAST_LEVEL => {}
                Desc::Table(next) => self.walk_leaves(mem, node.child(index, next), span, f)?,
            }
        }
        ControlFlow::Continue(())
    }

    /// Frees the tables below `node`, then `node`'s own `pages` pages.
    fn free_tree<M: TableMemory + ?Sized>(&self, mem: &mut M, node: Node, pages: usize) {
        if node.level < LAST_LEVEL {
            for index in 0..node.entries {
                if let Desc::Table(next) = R::decode_desc(node.level, mem.read(node.table, index)) {
                    self.free_tree(mem, node.child(index, next), 1);
                }
            }
        }
        mem.free_table(node.table, pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;
    use proptest::prelude::*;

    // --- a format that catches level mix-ups ---

    /// Software-reserved bits `[58:55]` of a descriptor (Arm ARM B3.6.2: ignored by the walker).
    const LEVEL_TAG_SHIFT: u32 = 55;
    const LEVEL_TAG_MASK: u64 = 0xf << LEVEL_TAG_SHIFT;

    /// Regime `R` with every descriptor tagged with the level it was written
    /// for, and a panic when it is read at another level: a table mistaken for
    /// a page, or a block written one level off, fails the test that does it.
    /// (Hafnium's fake architecture, `src/arch/fake/mm.c`, does the same.)
    struct Checked<R>(PhantomData<R>);

    impl<R: Regime> Regime for Checked<R> {
        type Input = R::Input;
        const NAME: &'static str = R::NAME;
        const KIND: RegimeKind = R::KIND;
        const INPUT_BITS: u32 = R::INPUT_BITS;
        const ROOT_LEVEL: u8 = R::ROOT_LEVEL;
        const ROOT_ENTRIES: usize = R::ROOT_ENTRIES;

        fn encode_leaf(attrs: Attrs) -> u64 {
            let bits = R::encode_leaf(attrs);
            assert_eq!(bits & LEVEL_TAG_MASK, 0, "attributes overlap the level tag");
            bits
        }
        fn decode_leaf(desc: u64) -> Attrs {
            R::decode_leaf(desc)
        }
        fn encode_desc(level: u8, desc: Desc) -> u64 {
            match R::encode_desc(level, desc) {
                0 => 0,
                raw => raw | (u64::from(level) << LEVEL_TAG_SHIFT),
            }
        }
        fn decode_desc(level: u8, raw: u64) -> Desc {
            if raw == 0 {
                return Desc::Invalid;
            }
            let tag = (raw & LEVEL_TAG_MASK) >> LEVEL_TAG_SHIFT;
            assert_eq!(
                tag,
                u64::from(level),
                "level mix-up: {raw:#x} was written for level {tag}, read at level {level}"
            );
            R::decode_desc(level, raw & !LEVEL_TAG_MASK)
        }
    }

    // --- helpers ---

    fn ipa(raw: u64) -> Ipa {
        Ipa::new(raw)
    }
    fn pa(raw: u64) -> PhysAddr {
        PhysAddr::new(raw)
    }
    fn va(raw: u32) -> VirtAddr {
        VirtAddr::new(raw)
    }

    fn leaves<R: Regime>(pt: &PageTable<R>, mem: &VecMemory) -> Vec<Leaf<R::Input>> {
        let mut out = Vec::new();
        pt.for_each_leaf(mem, |leaf| out.push(leaf));
        out
    }

    /// The raw descriptor of the leaf mapping `input`.
    fn raw_leaf<R: Regime>(pt: &PageTable<R>, mem: &VecMemory, input: u64) -> u64 {
        pt.leaf_at(mem, input).expect("mapped").2
    }

    /// Tables below `node`, checking that none of them is empty.
    fn count_tables_checked<R: Regime>(mem: &VecMemory, node: Node) -> usize {
        let mut count = 0;
        for index in 0..node.entries {
            if let Desc::Table(next) = R::decode_desc(node.level, mem.read(node.table, index)) {
                let child = node.child(index, next);
                let live = (0..child.entries).filter(|&i| mem.read(child.table, i) != 0).count();
                assert!(live > 0, "empty level-{} table left at {:#x}", child.level, child.base);
                count += 1 + count_tables_checked::<R>(mem, child);
            }
        }
        count
    }

    /// Every table page in use is reachable from the root, and none is empty.
    fn assert_no_leaks<R: Regime>(pt: &PageTable<R>, mem: &VecMemory) {
        let tables = count_tables_checked::<R>(mem, pt.root_node());
        assert_eq!(mem.pages_in_use(), PageTable::<R>::ROOT_PAGES + tables, "table pages leaked");
    }

    // --- registers and shape ---

    #[test]
    fn register_values_match_hand_computed_ones() {
        assert_eq!(HMAIR0, 0x0000_04ff);
        // RES1 | SH0 inner | ORGN0 WBWA | IRGN0 WBWA | SL0 = 1 | S = 1 | T0SZ = 0b1000.
        assert_eq!(VTCR_VALUE, 0x8000_0000 | 0x3000 | 0x400 | 0x100 | 0x40 | 0x10 | 0x8);
        assert_eq!(VTCR_VALUE, 0x8000_3558);
        // RES1 (31, 23) | SH0 inner | ORGN0 WBWA | IRGN0 WBWA | T0SZ = 0.
        assert_eq!(HTCR_VALUE, 0x8080_3500);
    }

    #[test]
    fn shape_of_each_regime() {
        assert_eq!([level_shift(1), level_shift(2), level_shift(3)], [30, 21, 12]);
        assert_eq!(PageTable::<Stage2>::ROOT_PAGES, 2);
        assert_eq!(PageTable::<HypStage1>::ROOT_PAGES, 1);

        let mut mem = VecMemory::new(pa(0x1000));
        let s2 = PageTable::<Stage2>::new(&mut mem).unwrap();
        assert!(s2.root().is_aligned(0x2000), "VTTBR needs 8 KiB alignment: {:?}", s2.root());
        assert_eq!(mem.pages_in_use(), 2);
        let hyp = PageTable::<HypStage1>::new(&mut mem).unwrap();
        assert_eq!(mem.pages_in_use(), 3);
        hyp.destroy(&mut mem);
        s2.destroy(&mut mem);
        assert_eq!(mem.pages_in_use(), 0);
    }

    #[test]
    fn root_allocation_can_fail() {
        let mut mem = VecMemory::with_budget(pa(0), 1);
        assert_eq!(PageTable::<Stage2>::new(&mut mem).unwrap_err(), MapError::OutOfMemory { regime: "stage-2" });
        assert!(PageTable::<HypStage1>::new(&mut mem).is_ok());
    }

    // --- descriptors, bit by bit ---

    #[test]
    fn stage2_descriptors_match_hand_computed_values() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Stage2>::new(&mut mem).unwrap();
        // Normal RW 2 MiB block at PA 0x80000000: OA | AF 0x400 | SH 0x300 | HAP 0xc0 | MemAttr 0x3c | block 0b01.
        pt.map(&mut mem, ipa(0x4000_0000), pa(0x8000_0000), SIZE_2M, Attrs::ram()).unwrap();
        assert_eq!(raw_leaf(&pt, &mem, 0x4000_0000), 0x0000_0000_8000_07fd);
        // The level-1 entry is a table descriptor: next-level address | 0b11.
        let Desc::Table(l2) = lpae_decode(1, mem.read(pt.root(), 1)) else { panic!("no table") };
        assert_eq!(mem.read(pt.root(), 1), l2.as_u64() | 0b11);
        // Device RW XN page: XN 1<<54 | OA | AF | HAP 0xc0 | MemAttr 0b0001<<2 | page 0b11.
        pt.map(&mut mem, ipa(0x0900_0000), pa(0x0900_0000), PAGE_SIZE, Attrs::device()).unwrap();
        assert_eq!(raw_leaf(&pt, &mem, 0x0900_0000), 0x0040_0000_0900_04c7);
        // Read-only, non-executable Normal page above 4 GiB: HAP 0b01 (0x40) | 0x400 | 0x300 | 0x3c | 0b11.
        pt.map(&mut mem, ipa(0x1000), pa(0xab_cdef_1000), PAGE_SIZE, Attrs::rodata()).unwrap();
        assert_eq!(raw_leaf(&pt, &mem, 0x1000), 0x0040_00ab_cdef_177f);
        // Normal RW 1 GiB block at PA 4 GiB sits in the root: index IPA[39:30].
        pt.map(&mut mem, ipa(0x80_0000_0000), pa(0x1_0000_0000), SIZE_1G, Attrs::ram()).unwrap();
        assert_eq!(mem.read(pt.root(), 512), 0x0000_0001_0000_07fd);
    }

    /// Table memory that records descriptor writes and TLB invalidations in order.
    struct Recorder {
        mem: VecMemory,
        events: Vec<(&'static str, u64)>,
    }

    impl TableMemory for Recorder {
        fn alloc_table(&mut self, pages: usize) -> Option<PhysAddr> {
            self.mem.alloc_table(pages)
        }
        fn free_table(&mut self, table: PhysAddr, pages: usize) {
            self.mem.free_table(table, pages)
        }
        fn read(&self, table: PhysAddr, index: usize) -> u64 {
            self.mem.read(table, index)
        }
        fn write(&mut self, table: PhysAddr, index: usize, value: u64) {
            self.events.push(("write", value));
            self.mem.write(table, index, value)
        }
        fn invalidate_tlb(&mut self, _regime: RegimeKind, _root: PhysAddr, input: u64, size: u64) {
            assert_eq!(size, PAGE_SIZE);
            self.events.push(("tlbi", input));
        }
    }

    #[test]
    fn remap_page_protects_in_place_and_moves_with_break_before_make() {
        let mut rec = Recorder { mem: VecMemory::default(), events: Vec::new() };
        let mut pt = PageTable::<Stage2>::new(&mut rec).unwrap();
        pt.map(&mut rec, ipa(0x4000_0000), pa(0x8000_0000), SIZE_2M, Attrs::ram()).unwrap();
        pt.map(&mut rec, ipa(0x4020_0000), pa(0x9000_0000), 4 * PAGE_SIZE, Attrs::ram()).unwrap();
        let pages = rec.mem.pages_in_use();
        rec.events.clear();

        // Write-protect: same output, one write, then the TLB.
        let ro = Attrs { access: Access::ReadOnly, ..Attrs::ram() };
        pt.remap_page(&mut rec, ipa(0x4020_1000), pa(0x9000_1000), ro).unwrap();
        let t = pt.translate(&rec, ipa(0x4020_1000)).unwrap();
        assert_eq!((t.pa, t.attrs, t.level), (pa(0x9000_1000), ro, 3));
        assert_eq!(rec.events.len(), 2);
        assert_eq!(rec.events[0].0, "write");
        assert_eq!(rec.events[1], ("tlbi", 0x4020_1000));

        // Move: invalid, TLB, new descriptor.
        rec.events.clear();
        pt.remap_page(&mut rec, ipa(0x4020_1000), pa(0xab_0000_0000), Attrs::ram()).unwrap();
        assert_eq!(rec.events[0], ("write", 0));
        assert_eq!(rec.events[1], ("tlbi", 0x4020_1000));
        assert_eq!(rec.events[2].0, "write");
        assert_eq!(rec.events.len(), 3);
        let t = pt.translate(&rec, ipa(0x4020_1abc)).unwrap();
        assert_eq!((t.pa, t.attrs), (pa(0xab_0000_0abc), Attrs::ram()));
        // The neighbours are untouched, and nothing was allocated.
        assert_eq!(pt.translate(&rec, ipa(0x4020_0000)).unwrap().pa, pa(0x9000_0000));
        assert_eq!(pt.translate(&rec, ipa(0x4020_2000)).unwrap().pa, pa(0x9000_2000));
        assert_eq!(rec.mem.pages_in_use(), pages);

        // Refusals leave the table as it was.
        rec.events.clear();
        assert_eq!(
            pt.remap_page(&mut rec, ipa(0x4000_1000), pa(0x1000), Attrs::ram()),
            Err(MapError::NotAPage { regime: "stage-2", input: 0x4000_1000, level: 2 })
        );
        assert_eq!(
            pt.remap_page(&mut rec, ipa(0x4020_4000), pa(0x1000), Attrs::ram()),
            Err(MapError::NotMapped { regime: "stage-2", input: 0x4020_4000 })
        );
        assert_eq!(
            pt.remap_page(&mut rec, ipa(0x5000_0000), pa(0x1000), Attrs::ram()),
            Err(MapError::NotMapped { regime: "stage-2", input: 0x5000_0000 })
        );
        assert!(matches!(
            pt.remap_page(&mut rec, ipa(0x4020_1000), pa(0x1234), Attrs::ram()),
            Err(MapError::Unaligned { .. })
        ));
        assert!(rec.events.is_empty());
        pt.destroy(&mut rec);
        assert_eq!(rec.mem.pages_in_use(), 0);
    }

    #[test]
    fn hyp_descriptors_match_hand_computed_values() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<HypStage1>::new(&mut mem).unwrap();
        // Normal RW exec 2 MiB block: OA | AF 0x400 | SH 0x300 | AP[2:1]=01 0x40 | AttrIndx 0 | block.
        pt.map(&mut mem, va(0x4000_0000), pa(0x4000_0000), SIZE_2M, Attrs::ram()).unwrap();
        assert_eq!(raw_leaf(&pt, &mem, 0x4000_0000), 0x0000_0000_4000_0741);
        // Device RW XN page: XN | OA | AF | SH 0 | AP 0x40 | AttrIndx 1 (0x4) | page.
        pt.map(&mut mem, va(0xf000_0000), pa(0x0900_0000), PAGE_SIZE, Attrs::device()).unwrap();
        assert_eq!(raw_leaf(&pt, &mem, 0xf000_0000), 0x0040_0000_0900_0447);
        // Normal read-only XN page above 4 GiB: AP[2:1] = 11 (0xc0).
        pt.map(&mut mem, va(0x1000), pa(0x1_2345_6000), PAGE_SIZE, Attrs::rodata()).unwrap();
        assert_eq!(raw_leaf(&pt, &mem, 0x1000), 0x0040_0001_2345_67c3);
        // Read-only executable code.
        pt.map(&mut mem, va(0x2000), pa(0x1_2345_7000), PAGE_SIZE, Attrs::text()).unwrap();
        assert_eq!(raw_leaf(&pt, &mem, 0x2000), 0x0000_0001_2345_77c3);
        // 1 GiB block in the 4-entry root, index VA[31:30].
        pt.map(&mut mem, va(0x8000_0000), pa(0x80_0000_0000), SIZE_1G, Attrs::ram_nx()).unwrap();
        assert_eq!(mem.read(pt.root(), 2), 0x0040_0080_0000_0741);
    }

    #[test]
    fn attributes_round_trip_in_both_regimes() {
        for mem in [MemType::Normal, MemType::Device] {
            for access in [Access::ReadWrite, Access::ReadOnly] {
                for exec in [false, true] {
                    let attrs = Attrs { mem, access, exec };
                    assert_eq!(Stage2::decode_leaf(Stage2::encode_leaf(attrs)), attrs);
                    assert_eq!(HypStage1::decode_leaf(HypStage1::encode_leaf(attrs)), attrs);
                    // AF always set, or the first access faults.
                    assert_ne!(Stage2::encode_leaf(attrs) & AF, 0);
                    assert_ne!(HypStage1::encode_leaf(attrs) & AF, 0);
                }
            }
        }
    }

    #[test]
    fn descriptor_kinds_depend_on_the_level() {
        let out = pa(0x8000_0000);
        // 0b01 is a block at levels 1-2 but invalid at level 3; 0b11 is a table at 1-2, a page at 3.
        assert_eq!(lpae_decode(2, 0x8000_0001), Desc::Leaf(out));
        assert_eq!(lpae_decode(3, 0x8000_0001), Desc::Invalid);
        assert_eq!(lpae_decode(2, 0x8000_0003), Desc::Table(out));
        assert_eq!(lpae_decode(3, 0x8000_0003), Desc::Leaf(out));
        // Block addresses keep only the bits above the block size.
        assert_eq!(lpae_decode(1, 0x8020_0001), Desc::Leaf(out));
        assert_eq!(lpae_encode(1, Desc::Leaf(pa(0x8020_0000))), 0x8000_0001);
        // A table cannot sit below level 3.
        assert_eq!(lpae_encode(3, Desc::Table(out)), 0);
    }

    #[test]
    #[should_panic(expected = "level mix-up")]
    fn a_level_mix_up_fails() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<Stage2>>::new(&mut mem).unwrap();
        pt.map(&mut mem, ipa(0x4000_0000), pa(0x8000_0000), PAGE_SIZE, Attrs::ram()).unwrap();
        // The bug this catches: a page descriptor written into a level-2 slot.
        // In the hardware format 0b11 reads back as a table there, silently.
        let Desc::Table(l2) = Checked::<Stage2>::decode_desc(1, mem.read(pt.root(), 1)) else { panic!("no table") };
        let page = Checked::<Stage2>::encode_desc(3, Desc::Leaf(pa(0x8000_0000))) | Stage2::encode_leaf(Attrs::ram());
        mem.write(l2, 0, page);
        let _ = pt.translate(&mem, ipa(0x4000_0000));
    }

    // --- mapping ---

    #[test]
    fn blocks_are_the_largest_alignment_allows() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<Stage2>>::new(&mut mem).unwrap();
        let size = SIZE_1G + SIZE_2M + PAGE_SIZE;
        let stats = pt.map(&mut mem, ipa(0x4000_0000), pa(0x8000_0000), size, Attrs::ram()).unwrap();
        assert_eq!(stats, MapStats { blocks_1g: 1, blocks_2m: 1, pages_4k: 1, tables_allocated: 2 });
        let levels: Vec<(u64, u8)> = leaves(&pt, &mem).iter().map(|l| (l.input.as_u64(), l.level)).collect();
        assert_eq!(levels, vec![(0x4000_0000, 1), (0x8000_0000, 2), (0x8020_0000, 3)]);
        assert_no_leaks(&pt, &mem);

        let mut hyp_mem = VecMemory::default();
        let mut hyp = PageTable::<Checked<HypStage1>>::new(&mut hyp_mem).unwrap();
        let stats = hyp.map(&mut hyp_mem, va(0x4000_0000), pa(0x8000_0000), size, Attrs::ram_nx()).unwrap();
        assert_eq!(stats, MapStats { blocks_1g: 1, blocks_2m: 1, pages_4k: 1, tables_allocated: 2 });
    }

    #[test]
    fn two_gib_at_four_gib_physical_is_two_level_1_blocks() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Stage2>::new(&mut mem).unwrap();
        let stats = pt.map(&mut mem, ipa(0x4000_0000), pa(0x1_0000_0000), 2 * SIZE_1G, Attrs::ram()).unwrap();
        assert_eq!(stats, MapStats { blocks_1g: 2, ..MapStats::default() });
        assert_eq!(mem.read(pt.root(), 1), 0x0000_0001_0000_07fd);
        assert_eq!(mem.read(pt.root(), 2), 0x0000_0001_4000_07fd);
        let t = pt.translate(&mem, ipa(0x8123_4000)).unwrap();
        assert_eq!(t, Translation { pa: pa(0x1_4123_4000), attrs: Attrs::ram(), level: 1, block_size: SIZE_1G });
        assert_eq!(mem.pages_in_use(), 2);
    }

    #[test]
    fn output_aligned_only_to_4k_gets_only_pages() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<Stage2>>::new(&mut mem).unwrap();
        let stats = pt.map(&mut mem, ipa(0x4000_0000), pa(0x8000_1000), 2 * SIZE_2M, Attrs::ram()).unwrap();
        assert_eq!(stats, MapStats { pages_4k: 1024, tables_allocated: 3, ..MapStats::default() });
        // 2 MiB-aligned output but not 1 GiB-aligned: 2 MiB blocks, no 1 GiB one.
        let stats = pt.map(&mut mem, ipa(0xc000_0000), pa(0x8020_0000), SIZE_1G, Attrs::ram()).unwrap();
        assert_eq!(stats, MapStats { blocks_2m: 512, tables_allocated: 1, ..MapStats::default() });
    }

    #[test]
    fn every_mapped_page_walks_back() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<Stage2>>::new(&mut mem).unwrap();
        let (input, out, size) = (0x401f_d000, 0x9_001f_d000, 2 * SIZE_2M + 5 * PAGE_SIZE);
        pt.map(&mut mem, ipa(input), pa(out), size, Attrs::device()).unwrap();
        let mut off = 0;
        while off < size {
            let t = pt.translate(&mem, ipa(input + off + 0x123)).expect("mapped");
            assert_eq!(t.pa, pa(out + off + 0x123));
            assert_eq!(t.attrs, Attrs::device());
            off += PAGE_SIZE;
        }
        assert_eq!(pt.translate(&mem, ipa(input - PAGE_SIZE)), None);
        assert_eq!(pt.translate(&mem, ipa(input + size)), None);
        assert_eq!(pt.translate(&mem, ipa(0)), None);
        assert_eq!(pt.translate(&mem, ipa(PA_LIMIT - 1)), None);
    }

    #[test]
    fn leaves_come_in_input_order() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<HypStage1>>::new(&mut mem).unwrap();
        pt.map(&mut mem, va(0xf000_0000), pa(0x0900_0000), PAGE_SIZE, Attrs::device()).unwrap();
        pt.map(&mut mem, va(0x4000_0000), pa(0x4000_0000), SIZE_2M + PAGE_SIZE, Attrs::text()).unwrap();
        let found = leaves(&pt, &mem);
        let expected = vec![
            Leaf { input: va(0x4000_0000), pa: pa(0x4000_0000), size: SIZE_2M, attrs: Attrs::text(), level: 2 },
            Leaf { input: va(0x4020_0000), pa: pa(0x4020_0000), size: PAGE_SIZE, attrs: Attrs::text(), level: 3 },
            Leaf { input: va(0xf000_0000), pa: pa(0x0900_0000), size: PAGE_SIZE, attrs: Attrs::device(), level: 3 },
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn overlap_is_refused_before_anything_is_written() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<Stage2>>::new(&mut mem).unwrap();
        pt.map(&mut mem, ipa(0x4020_3000), pa(0x8020_3000), PAGE_SIZE, Attrs::ram()).unwrap();
        pt.map(&mut mem, ipa(0x1_0000_0000), pa(0x1_0000_0000), SIZE_1G, Attrs::ram()).unwrap();
        let before = mem.pages.clone();
        let in_use = mem.pages_in_use();

        let cases = [
            // A 1 GiB block over a table holding one page: the page is named.
            (0x4000_0000, 0xc000_0000, SIZE_1G, 0x4020_3000),
            // Pages that allocate a new level-3 table first, then meet the page.
            (0x401f_0000, 0x801f_0000, 0x20000, 0x4020_3000),
            // Inside a 1 GiB block.
            (0x1_2000_0000, 0x2000_0000, PAGE_SIZE, 0x1_2000_0000),
            // Straddling the block's start: the first overlapping address.
            (0xffe0_0000, 0x1000_0000, 2 * SIZE_2M, 0x1_0000_0000),
            // The very same mapping again.
            (0x4020_3000, 0x8020_3000, PAGE_SIZE, 0x4020_3000),
        ];
        for (input, out, size, first) in cases {
            let error = pt.map(&mut mem, ipa(input), pa(out), size, Attrs::ram()).unwrap_err();
            assert_eq!(error, MapError::AlreadyMapped { regime: "stage-2", input: first });
            assert!(mem.pages == before, "map of {input:#x} changed the tables before failing");
            assert_eq!(mem.pages_in_use(), in_use);
        }
        assert_eq!(
            format!("{}", MapError::AlreadyMapped { regime: "stage-2", input: 0x4000_1000 }),
            "stage-2: 0x40001000 is already mapped"
        );
    }

    #[test]
    fn out_of_memory_mid_prepare_leaves_the_table_unchanged() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<Stage2>>::new(&mut mem).unwrap();
        pt.map(&mut mem, ipa(0x4000_0000), pa(0x4000_0000), PAGE_SIZE, Attrs::ram()).unwrap();
        let before = mem.pages.clone();
        let in_use = mem.pages_in_use();
        let allocated = mem.pages_allocated_total();

        // Needs a level-3 table for the page below 0x80000000, then a level-2
        // table for the 2 MiB block above it, then a level-3 table for the
        // last page: three, and two are allowed.
        mem.set_budget(Some(in_use + 2));
        let (input, size) = (0x8000_0000 - PAGE_SIZE, SIZE_2M + 2 * PAGE_SIZE);
        let error = pt.map(&mut mem, ipa(input), pa(0x1_0000_0000 - PAGE_SIZE), size, Attrs::ram()).unwrap_err();
        assert_eq!(error, MapError::OutOfMemory { regime: "stage-2" });
        assert!(mem.pages == before, "a failed map changed the tables");
        assert_eq!(mem.pages_in_use(), in_use);
        assert_eq!(mem.pages_allocated_total(), allocated + 2, "prepare should have got two tables before failing");
        assert_no_leaks(&pt, &mem);

        mem.set_budget(Some(in_use + 4));
        let stats = pt.map(&mut mem, ipa(input), pa(0x1_0000_0000 - PAGE_SIZE), size, Attrs::ram()).unwrap();
        assert_eq!(stats, MapStats { blocks_1g: 0, blocks_2m: 1, pages_4k: 2, tables_allocated: 3 });
    }

    // --- unmapping ---

    #[test]
    fn unmap_in_the_middle_of_a_1g_block_keeps_the_rest() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<Stage2>>::new(&mut mem).unwrap();
        pt.map(&mut mem, ipa(0x4000_0000), pa(0x8000_0000), SIZE_1G, Attrs::ram()).unwrap();
        let invalidations = mem.tlb_invalidations();
        pt.unmap(&mut mem, ipa(0x4010_1000), PAGE_SIZE).unwrap();

        let at = |input: u64| pt.translate(&mem, ipa(input)).map(|t| (t.pa.as_u64(), t.level));
        assert_eq!(at(0x4010_1000), None);
        assert_eq!(at(0x4010_1fff), None);
        // The 2 MiB block around the hole became pages, the others stay blocks.
        assert_eq!(at(0x4000_0000), Some((0x8000_0000, 3)));
        assert_eq!(at(0x4010_0000), Some((0x8010_0000, 3)));
        assert_eq!(at(0x4010_2000), Some((0x8010_2000, 3)));
        assert_eq!(at(0x401f_f000), Some((0x801f_f000, 3)));
        assert_eq!(at(0x4020_0000), Some((0x8020_0000, 2)));
        assert_eq!(at(0x7fff_ffff), Some((0xbfff_ffff, 2)));
        let found = leaves(&pt, &mem);
        assert_eq!(found.iter().filter(|l| l.level == 2).count(), 511);
        assert_eq!(found.iter().filter(|l| l.level == 3).count(), 511);
        assert_eq!(found.iter().map(|l| l.size).sum::<u64>(), SIZE_1G - PAGE_SIZE);
        assert!(found.iter().all(|l| l.attrs == Attrs::ram()));
        assert_eq!(mem.pages_in_use(), 2 + 2);
        // Two break-before-make splits and the unmapped range.
        assert_eq!(mem.tlb_invalidations(), invalidations + 3);

        // Mapping the hole again and unmapping everything frees every table.
        pt.map(&mut mem, ipa(0x4010_1000), pa(0x8010_1000), PAGE_SIZE, Attrs::ram()).unwrap();
        pt.unmap(&mut mem, ipa(0x4000_0000), SIZE_1G).unwrap();
        assert!(leaves(&pt, &mem).is_empty());
        assert_eq!(mem.pages_in_use(), 2);
    }

    #[test]
    fn unmap_of_a_hole_is_refused_and_changes_nothing() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<HypStage1>>::new(&mut mem).unwrap();
        pt.map(&mut mem, va(0x4000_0000), pa(0x4000_0000), SIZE_1G, Attrs::ram()).unwrap();
        pt.map(&mut mem, va(0x8000_1000), pa(0x8000_1000), PAGE_SIZE, Attrs::ram()).unwrap();
        let before = mem.pages.clone();
        let error = pt.unmap(&mut mem, va(0x7fe0_0000), 4 * SIZE_2M).unwrap_err();
        assert_eq!(error, MapError::NotMapped { regime: "Hyp stage-1", input: 0x8000_0000 });
        let error = pt.unmap(&mut mem, va(0x8000_1000), 2 * PAGE_SIZE).unwrap_err();
        assert_eq!(error, MapError::NotMapped { regime: "Hyp stage-1", input: 0x8000_2000 });
        let error = pt.unmap(&mut mem, va(0x3fff_f000), 2 * PAGE_SIZE).unwrap_err();
        assert_eq!(error, MapError::NotMapped { regime: "Hyp stage-1", input: 0x3fff_f000 });
        assert!(mem.pages == before);
    }

    #[test]
    fn out_of_memory_while_splitting_changes_nothing() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<Stage2>>::new(&mut mem).unwrap();
        pt.map(&mut mem, ipa(0x4000_0000), pa(0x8000_0000), SIZE_1G, Attrs::ram()).unwrap();
        let before = mem.pages.clone();
        mem.set_budget(Some(mem.pages_in_use() + 1));
        // Both edges inside one 1 GiB block, in different 2 MiB blocks: three tables.
        let error = pt.unmap(&mut mem, ipa(0x4010_1000), SIZE_2M).unwrap_err();
        assert_eq!(error, MapError::OutOfMemory { regime: "stage-2" });
        assert!(mem.pages == before);
        assert_eq!(mem.pages_in_use(), 2);
        mem.set_budget(Some(2 + 3));
        pt.unmap(&mut mem, ipa(0x4010_1000), SIZE_2M).unwrap();
        assert_eq!(mem.pages_in_use(), 5);
        assert_no_leaks(&pt, &mem);
    }

    #[test]
    fn the_top_of_the_hyp_address_space() {
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<Checked<HypStage1>>::new(&mut mem).unwrap();
        pt.map(&mut mem, va(0xc000_0000), pa(0x1_c000_0000), SIZE_1G, Attrs::ram_nx()).unwrap();
        pt.unmap(&mut mem, va(0xffff_f000), PAGE_SIZE).unwrap();
        assert_eq!(pt.translate(&mem, va(0xffff_f000)), None);
        assert_eq!(pt.translate(&mem, va(0xffff_e000)).map(|t| t.pa), Some(pa(0x1_ffff_e000)));
        assert_eq!(
            pt.map(&mut mem, va(0xffff_e000), pa(0), 2 * PAGE_SIZE, Attrs::ram()).unwrap_err(),
            MapError::AlreadyMapped { regime: "Hyp stage-1", input: 0xffff_e000 }
        );
        pt.map(&mut mem, va(0xffff_f000), pa(0), PAGE_SIZE, Attrs::ram()).unwrap();
        assert_no_leaks(&pt, &mem);
    }

    // --- input checks ---

    #[test]
    fn bad_requests_are_errors_with_numbers() {
        let mut mem = VecMemory::default();
        let mut s2 = PageTable::<Stage2>::new(&mut mem).unwrap();
        let mut hyp = PageTable::<HypStage1>::new(&mut mem).unwrap();
        let before = mem.pages.clone();
        let cases = [
            (
                s2.map(&mut mem, ipa(0x4000_0800), pa(0), PAGE_SIZE, Attrs::ram()),
                "stage-2: input address 0x40000800 is not a multiple of 4 KiB",
            ),
            (
                s2.map(&mut mem, ipa(0x4000_0000), pa(0x10), PAGE_SIZE, Attrs::ram()),
                "stage-2: physical address 0x10 is not a multiple of 4 KiB",
            ),
            (s2.map(&mut mem, ipa(0), pa(0), 0x1800, Attrs::ram()), "stage-2: size 0x1800 is not a multiple of 4 KiB"),
            (s2.map(&mut mem, ipa(0), pa(0), 0, Attrs::ram()), "stage-2: nothing to map or unmap (size 0)"),
            (
                s2.map(&mut mem, ipa(0xff_c000_0000), pa(0), SIZE_2M << 10, Attrs::ram()),
                "stage-2: input range 0xffc0000000 + 0x80000000 runs past the 40-bit limit 0x10000000000",
            ),
            (
                s2.map(&mut mem, ipa(0), pa(0xff_ffff_f000), 2 * PAGE_SIZE, Attrs::ram()),
                "stage-2: physical range 0xfffffff000 + 0x2000 runs past the 40-bit limit 0x10000000000",
            ),
            (
                hyp.map(&mut mem, va(0xffff_f000), pa(0), 2 * PAGE_SIZE, Attrs::ram()),
                "Hyp stage-1: input range 0xfffff000 + 0x2000 runs past the 32-bit limit 0x100000000",
            ),
            (
                hyp.map(&mut mem, va(0), pa(0), !0xfff, Attrs::ram()),
                "Hyp stage-1: input range 0x0 + 0xfffffffffffff000 runs past the 32-bit limit 0x100000000",
            ),
        ];
        for (result, message) in cases {
            assert_eq!(format!("{}", result.unwrap_err()), message);
        }
        assert_eq!(
            format!("{}", s2.unmap(&mut mem, ipa(0x5000), PAGE_SIZE).unwrap_err()),
            "stage-2: 0x5000 is not mapped"
        );
        assert_eq!(
            format!("{}", MapError::OutOfMemory { regime: "stage-2" }),
            "stage-2: out of memory for translation tables"
        );
        assert!(mem.pages == before);
    }

    // --- properties ---

    /// One mapping as the model remembers it.
    #[derive(Clone, Copy, Debug)]
    struct Interval {
        start: u64,
        end: u64,
        pa: u64,
        attrs: Attrs,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            input: u64,
            pa: u64,
            size: u64,
            attrs: Attrs,
        },
        /// Anywhere: often refused.
        Unmap {
            input: u64,
            size: u64,
        },
        /// Pages inside one existing mapping: always allowed.
        UnmapInside {
            pick: usize,
            offset: u64,
            pages: u64,
        },
    }

    fn attrs_strategy() -> impl Strategy<Value = Attrs> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(normal, rw, exec)| Attrs {
            mem: if normal { MemType::Normal } else { MemType::Device },
            access: if rw { Access::ReadWrite } else { Access::ReadOnly },
            exec,
        })
    }

    /// An address below `space`, aligned to 4 KiB, 2 MiB or 1 GiB, sometimes a few pages past that.
    fn address(space: u64) -> impl Strategy<Value = u64> {
        (0usize..3, any::<u64>(), prop_oneof![3 => Just(0u64), 1 => 1u64..4]).prop_map(move |(unit, r, pages)| {
            let unit = [PAGE_SIZE, SIZE_2M, SIZE_1G][unit];
            (r % (space / unit)) * unit + pages * PAGE_SIZE
        })
    }

    fn size_strategy() -> impl Strategy<Value = u64> {
        (0usize..3, 1u64..4, prop_oneof![3 => Just(0u64), 1 => 1u64..4])
            .prop_map(|(unit, n, pages)| n * [PAGE_SIZE, SIZE_2M, SIZE_1G][unit] + pages * PAGE_SIZE)
    }

    fn op_strategy(space: u64) -> impl Strategy<Value = (Op, Option<usize>)> {
        let op = prop_oneof![
            4 => (address(space), address(PA_LIMIT), size_strategy(), attrs_strategy()).prop_map(
                |(input, pa, size, attrs)| {
                    // Output congruent to input only mod 4 KiB means all pages: keep those small.
                    let size = if (input ^ pa) & (SIZE_2M - 1) != 0 { size.min(8 * SIZE_2M) } else { size };
                    Op::Map { input, pa, size, attrs }
                }
            ),
            1 => (address(space), size_strategy()).prop_map(|(input, size)| Op::Unmap { input, size }),
            2 => (any::<usize>(), any::<u64>(), any::<u64>())
                .prop_map(|(pick, offset, pages)| Op::UnmapInside { pick, offset, pages }),
        ];
        // Sometimes a table-page budget only a few pages above what is in use.
        (op, prop_oneof![3 => Just(None), 1 => (0usize..4).prop_map(Some)])
    }

    /// The lowest address of `[start, end)` some interval maps.
    fn model_first_overlap(model: &[Interval], start: u64, end: u64) -> Option<u64> {
        model.iter().filter(|iv| iv.start < end && start < iv.end).map(|iv| iv.start.max(start)).min()
    }

    /// The lowest address of `[start, end)` no interval maps.
    fn model_first_hole(model: &[Interval], start: u64, end: u64) -> Option<u64> {
        let mut sorted: Vec<&Interval> = model.iter().filter(|iv| iv.start < end && start < iv.end).collect();
        sorted.sort_by_key(|iv| iv.start);
        let mut next = start;
        for iv in sorted {
            if iv.start > next {
                return Some(next);
            }
            next = next.max(iv.end);
        }
        (next < end).then_some(next)
    }

    fn model_unmap(model: &mut Vec<Interval>, start: u64, end: u64) {
        let mut kept = Vec::new();
        for iv in model.drain(..) {
            if iv.end <= start || end <= iv.start {
                kept.push(iv);
                continue;
            }
            if iv.start < start {
                kept.push(Interval { end: start, ..iv });
            }
            if end < iv.end {
                kept.push(Interval { start: end, pa: iv.pa + (end - iv.start), ..iv });
            }
        }
        *model = kept;
    }

    /// The table says exactly what the model says, with the largest leaves possible.
    fn check_against_model<R: Regime>(pt: &PageTable<R>, mem: &VecMemory, model: &[Interval]) {
        let mut covered = 0;
        let mut previous_end = 0;
        pt.for_each_leaf(mem, |leaf| {
            let input = leaf.input.as_u64();
            assert!(input >= previous_end, "leaves out of order at {input:#x}");
            previous_end = input + leaf.size;
            assert_eq!(leaf.size, level_size(leaf.level));
            assert_eq!((input | leaf.pa.as_u64()) % leaf.size, 0, "misaligned leaf {leaf:?}");
            let iv = model
                .iter()
                .find(|iv| iv.start <= input && input + leaf.size <= iv.end)
                .unwrap_or_else(|| panic!("leaf {leaf:?} maps what the model does not"));
            assert_eq!(leaf.pa.as_u64(), iv.pa + (input - iv.start), "leaf {leaf:?} in {iv:?}");
            assert_eq!(leaf.attrs, iv.attrs);
            if leaf.level > FIRST_BLOCK_LEVEL {
                let up = level_size(leaf.level - 1);
                let block = input & !(up - 1);
                let could =
                    block >= iv.start && block + up <= iv.end && (iv.pa + (block - iv.start)).is_multiple_of(up);
                assert!(!could, "leaf {leaf:?} of {iv:?} could be part of a {up:#x} block");
            }
            covered += leaf.size;
        });
        assert_eq!(covered, model.iter().map(|iv| iv.end - iv.start).sum::<u64>(), "leaves and model differ");

        let limit = 1u64 << R::INPUT_BITS;
        let mapped = |input: u64| model.iter().any(|iv| iv.start <= input && input < iv.end);
        for iv in model {
            for input in [iv.start, iv.end - PAGE_SIZE, iv.start + (((iv.end - iv.start) / 2) & !(PAGE_SIZE - 1))] {
                let t = pt.translate(mem, R::Input::from_u64(input + 0xabc).unwrap()).expect("mapped");
                assert_eq!(t.pa.as_u64(), iv.pa + (input - iv.start) + 0xabc);
                assert_eq!(t.attrs, iv.attrs);
            }
            for input in [iv.start.wrapping_sub(PAGE_SIZE), iv.end] {
                if input < limit && !mapped(input) {
                    assert_eq!(pt.translate(mem, R::Input::from_u64(input).unwrap()), None, "{input:#x}");
                }
            }
        }
        assert_no_leaks(pt, mem);
    }

    fn run_model<R: Regime>(ops: Vec<(Op, Option<usize>)>) {
        let limit = 1u64 << R::INPUT_BITS;
        let mut mem = VecMemory::default();
        let mut pt = PageTable::<R>::new(&mut mem).unwrap();
        let mut model: Vec<Interval> = Vec::new();
        for (op, slack) in ops {
            let before = mem.pages.clone();
            let budgeted = slack.is_some();
            mem.set_budget(slack.map(|slack| mem.pages_in_use() + slack));
            let (start, size, result, expected) = match op {
                Op::Map { input, pa, size, attrs } => {
                    let result = pt
                        .map(&mut mem, R::Input::from_u64(input).unwrap(), PhysAddr::from_u64(pa).unwrap(), size, attrs)
                        .map(|stats| {
                            let bytes = u64::from(stats.blocks_1g) * SIZE_1G
                                + u64::from(stats.blocks_2m) * SIZE_2M
                                + u64::from(stats.pages_4k) * PAGE_SIZE;
                            assert_eq!(bytes, size);
                        });
                    let expected = if input + size > limit {
                        Err(MapError::OutOfRange {
                            regime: R::NAME,
                            what: "input",
                            start: input,
                            size,
                            bits: R::INPUT_BITS,
                        })
                    } else if pa + size > PA_LIMIT {
                        Err(MapError::OutOfRange { regime: R::NAME, what: "physical", start: pa, size, bits: PA_BITS })
                    } else if let Some(first) = model_first_overlap(&model, input, input + size) {
                        Err(MapError::AlreadyMapped { regime: R::NAME, input: first })
                    } else {
                        Ok(())
                    };
                    if result.is_ok() {
                        model.push(Interval { start: input, end: input + size, pa, attrs });
                    }
                    (input, size, result, expected)
                }
                Op::Unmap { input, size } => {
                    let result = pt.unmap(&mut mem, R::Input::from_u64(input).unwrap(), size);
                    let expected = if input + size > limit {
                        Err(MapError::OutOfRange {
                            regime: R::NAME,
                            what: "input",
                            start: input,
                            size,
                            bits: R::INPUT_BITS,
                        })
                    } else if let Some(hole) = model_first_hole(&model, input, input + size) {
                        Err(MapError::NotMapped { regime: R::NAME, input: hole })
                    } else {
                        Ok(())
                    };
                    if result.is_ok() {
                        model_unmap(&mut model, input, input + size);
                    }
                    (input, size, result, expected)
                }
                Op::UnmapInside { pick, offset, pages } => {
                    if model.is_empty() {
                        continue;
                    }
                    let iv = model[pick % model.len()];
                    let total = (iv.end - iv.start) / PAGE_SIZE;
                    let offset = offset % total;
                    let size = (1 + pages % (total - offset)) * PAGE_SIZE;
                    let input = iv.start + offset * PAGE_SIZE;
                    let result = pt.unmap(&mut mem, R::Input::from_u64(input).unwrap(), size);
                    if result.is_ok() {
                        model_unmap(&mut model, input, input + size);
                    }
                    (input, size, result, Ok(()))
                }
            };
            match (result, expected) {
                (Ok(()), Ok(())) => {}
                (Err(MapError::OutOfMemory { .. }), _) if budgeted => {
                    assert!(mem.pages == before, "running out of memory at {start:#x}+{size:#x} changed the tables");
                }
                (Err(error), Err(expected)) if error == expected => {
                    assert!(mem.pages == before, "refusing {start:#x}+{size:#x} changed the tables");
                }
                (result, expected) => {
                    panic!("{start:#x}+{size:#x}: got {result:?}, expected {expected:?}")
                }
            }
            mem.set_budget(None);
            check_against_model(&pt, &mem, &model);
        }
        pt.destroy(&mut mem);
        assert_eq!(mem.pages_in_use(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn stage2_tables_follow_the_model(ops in proptest::collection::vec(op_strategy(8 * SIZE_1G), 1..14)) {
            run_model::<Checked<Stage2>>(ops);
        }

        #[test]
        fn hyp_tables_follow_the_model(ops in proptest::collection::vec(op_strategy(4 * SIZE_1G), 1..14)) {
            run_model::<Checked<HypStage1>>(ops);
        }

        #[test]
        fn hardware_format_follows_the_model(ops in proptest::collection::vec(op_strategy(4 * SIZE_1G), 1..8)) {
            run_model::<Stage2>(ops);
        }

        #[test]
        fn descriptors_round_trip(level in 1u8..=3, raw_pa in 0u64..PA_LIMIT, attrs in attrs_strategy()) {
            let out = pa(raw_pa & !(level_size(level) - 1));
            for (desc, attrs_back) in [
                (Stage2::encode_desc(level, Desc::Leaf(out)) | Stage2::encode_leaf(attrs), Stage2::decode_leaf as fn(u64) -> Attrs),
                (HypStage1::encode_desc(level, Desc::Leaf(out)) | HypStage1::encode_leaf(attrs), HypStage1::decode_leaf),
            ] {
                prop_assert_eq!(lpae_decode(level, desc), Desc::Leaf(out));
                prop_assert_eq!(attrs_back(desc), attrs);
            }
            if level < LAST_LEVEL {
                let table = pa(raw_pa & !(PAGE_SIZE - 1));
                prop_assert_eq!(lpae_decode(level, lpae_encode(level, Desc::Table(table))), Desc::Table(table));
            }
        }
    }
}
