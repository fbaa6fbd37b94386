//! The memory plan: a pure function from a machine description to where everything goes.
//!
//! [`plan`] places the dynamic carveouts, backs each guest's one dense IPA
//! range with physical extents that avoid everything else, and lays out the
//! monitor's own Hyp virtual space (lowmem linear map, vmalloc including the
//! virtual holes of `no-map` carveouts, highmem). It never panics; a refusal
//! is a [`PlanError`]: one sentence naming the node and the numbers.

pub mod bootargs;
pub mod carveouts;
pub mod guests;
pub mod layout;
pub mod ranges;
pub mod verify;

#[cfg(test)]
mod tests;

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::addr::{Address, Ipa, PhysRange, VirtAddr, SIZE_1G};
use crate::dt::Machine;

pub use carveouts::Carveout;
pub use guests::{Extent, GuestPlan, Movable};
pub use layout::{LinearRun, MonitorLayout, VmallocRange};
pub use ranges::RangeSet;
pub use verify::verify;

/// Where guests' RAM starts in IPA space unless the guest node says otherwise.
pub const DEFAULT_IPA_BASE: Ipa = Ipa::new(SIZE_1G);

/// Where the monitor's image sits in physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MonitorImage {
    /// Exactly here (the running monitor knows: its link range, plus the DTB it was given).
    At(PhysRange),
    /// Somewhere in the lowest RAM that no carveout holds, 2 MiB aligned: what
    /// `scripts/plan` assumes for a board build.
    Lowest { size: u64 },
}

/// The knobs of the plan. [`PlanConfig::default`] is what the monitor uses.
#[derive(Clone, Debug)]
pub struct PlanConfig {
    pub monitor_image: MonitorImage,
    /// Other ranges the monitor holds at boot (the DTB it was handed, say).
    pub monitor_extra: Vec<PhysRange>,
    /// RAM that must stay free for the monitor after guests (tables, vmemmap, heap).
    pub monitor_min_free: u64,
    /// Guests to add to those the tree describes (`scripts/plan --guest SIZE`): sizes in bytes.
    pub extra_guests: Vec<u64>,
    /// Whether a guest must name a `multiboot,kernel` module (the monitor: yes; a what-if plan: no).
    pub require_kernel: bool,
    /// The monitor's virtual layout knobs.
    pub layout: layout::LayoutConfig,
}

impl Default for PlanConfig {
    fn default() -> Self {
        PlanConfig {
            monitor_image: MonitorImage::Lowest { size: 8 << 20 },
            monitor_extra: Vec::new(),
            monitor_min_free: 16 << 20,
            extra_guests: Vec::new(),
            require_kernel: true,
            layout: layout::LayoutConfig::default(),
        }
    }
}

/// The whole decision.
#[derive(Clone, Debug)]
pub struct Plan {
    /// RAM banks, sorted, merged.
    pub ram: Vec<PhysRange>,
    /// Every reserved range in address order, with dynamic ones placed.
    pub carveouts: Vec<Carveout>,
    /// Where the monitor's image (and what it holds at boot) sits.
    pub monitor_image: PhysRange,
    pub guests: Vec<GuestPlan>,
    /// RAM left to the monitor after carveouts, its image and guests.
    pub monitor_free: RangeSet,
    pub monitor: MonitorLayout,
    /// Sentences about untidy input that carve accepted.
    pub warnings: Vec<String>,
}

/// A refusal: `subject: sentence`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanError {
    /// The node (or part of the plan) the refusal is about.
    pub subject: String,
    pub reason: String,
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.reason)
    }
}

impl PlanError {
    pub fn new(subject: impl Into<String>, reason: impl Into<String>) -> Self {
        PlanError { subject: subject.into(), reason: reason.into() }
    }
}

/// Plans `machine` under `config`. Pure: same input, same plan.
pub fn plan(machine: &Machine, config: &PlanConfig) -> Result<Plan, PlanError> {
    let mut warnings = machine.warnings.clone();
    let ram = RangeSet::from_ranges(machine.ram.iter().map(|b| b.range));
    if ram.is_empty() {
        return Err(match machine.empty_memory.first() {
            Some(node) => PlanError::new(
                node.as_str(),
                "every memory bank has size 0 (left for a bootloader to fill in): no RAM to plan",
            ),
            None => PlanError::new("/", "no memory node (a bootloader is meant to add one): no RAM to plan"),
        });
    }
    if ram.total() != machine.ram.iter().map(|b| b.range.size).sum::<u64>() {
        warnings.push(alloc::format!("memory nodes overlap: {} of RAM counted once", crate::addr::Size(ram.total())));
    }

    // The monitor's log UART is the monitor's: no guest may be given it.
    if let (Some(log), Some(console), false) = (&machine.log_uart, &machine.uart, machine.guests.is_empty()) {
        let shared = log.device.regs.iter().any(|l| console.regs.iter().any(|c| c.overlaps(l)));
        if shared {
            return Err(PlanError::new(
                "/chosen",
                alloc::format!(
                    "carve,log names {}, the console UART the guests use: name another UART for the monitor's log",
                    log.device.node
                ),
            ));
        }
    }

    // 1. Carveouts: static ones as given, then dynamic ones placed in tree order.
    let monitor_fixed = match config.monitor_image {
        MonitorImage::At(r) => Some(r),
        MonitorImage::Lowest { .. } => None,
    };
    let mut held = RangeSet::from_ranges(config.monitor_extra.iter().copied().chain(monitor_fixed));
    for g in &machine.guests {
        for m in [&g.kernel, &g.ramdisk, &g.device_tree].into_iter().flatten() {
            held.insert(m.range);
        }
    }
    let carveouts = carveouts::place(machine, &ram, &held, &mut warnings)?;
    let reserved = RangeSet::from_ranges(carveouts.iter().map(|c| c.range)).page_outward();

    // 2. The monitor's image.
    let monitor_image = match config.monitor_image {
        MonitorImage::At(r) => {
            if reserved.overlaps(&r) {
                let c = carveouts.iter().find(|c| c.range.overlaps(&r));
                return Err(PlanError::new(
                    "monitor",
                    alloc::format!(
                        "its image {} overlaps the carveout {}",
                        r,
                        c.map(|c| c.name.as_str()).unwrap_or("?")
                    ),
                ));
            }
            r
        }
        MonitorImage::Lowest { size } => {
            let mut free = ram.clone();
            free.remove_all(&reserved);
            free.remove_all(&held);
            let free = free.align_inward(crate::addr::SIZE_2M);
            free.ranges().iter().find(|r| r.size >= size).and_then(|r| PhysRange::new(r.base, size)).ok_or_else(
                || {
                    PlanError::new(
                        "monitor",
                        alloc::format!("no 2 MiB-aligned {} of free RAM for its image", crate::addr::Size(size)),
                    )
                },
            )?
        }
    };
    // What the monitor holds at boot is no module's: a module there was
    // overwritten by the image or the blob the monitor was handed, or overwrote them.
    let holds = [("the monitor image", monitor_image)]
        .into_iter()
        .chain(config.monitor_extra.iter().map(|r| ("what the monitor holds at boot (its device tree)", *r)));
    for (what, r) in holds {
        let modules = machine.guests.iter().flat_map(|g| [&g.kernel, &g.ramdisk, &g.device_tree]).flatten();
        if let Some(m) = modules.into_iter().find(|m| m.range.overlaps(&r)) {
            return Err(PlanError::new(m.node.as_str(), alloc::format!("{} overlaps {what} {r}", m.range)));
        }
    }
    held.insert(monitor_image);

    // 3. Guests.
    let mut free = ram.clone();
    free.remove_all(&reserved);
    free.remove_all(&held);
    let free = free.align_inward(crate::addr::PAGE_SIZE);
    let (guests, monitor_free) = guests::place(machine, config, &ram, &carveouts, free, &mut warnings)?;

    // A vCPU on another CPU than the boot CPU needs that CPU started.
    if machine.cpu_start.is_none() {
        for g in &guests {
            if let Some((vcpu, &cpu)) = g.cpu_ids.iter().enumerate().find(|(_, &c)| c != 0) {
                return Err(PlanError::new(
                    g.name.as_str(),
                    alloc::format!(
                        "vCPU {vcpu} runs on CPU {cpu}, but the tree gives no way to start a CPU (no PSCI node with method \"smc\", no Versatile Express system registers)"
                    ),
                ));
            }
        }
    }

    // 4. The monitor's virtual space.
    let monitor = layout::lay_out(&ram, &carveouts, &config.layout)?;

    Ok(Plan { ram: ram.ranges().to_vec(), carveouts, monitor_image, guests, monitor_free, monitor, warnings })
}

impl Plan {
    /// Guest RAM backed by physical memory, in bytes.
    pub fn guest_total(&self) -> u64 {
        self.guests.iter().map(|g| g.size).sum()
    }

    /// The lowest Hyp virtual address of the linear map.
    pub fn page_offset(&self) -> VirtAddr {
        self.monitor.page_offset
    }

    /// The physical address the linear map puts at `va`, if any.
    pub fn linear_pa(&self, va: VirtAddr) -> Option<crate::addr::PhysAddr> {
        self.monitor
            .lowmem
            .iter()
            .find(|l| l.va_range().contains(va.as_u64()))
            .and_then(|l| crate::addr::PhysAddr::from_u64(l.pa.as_u64() + (va.as_u64() - l.va.as_u64())))
    }
}
