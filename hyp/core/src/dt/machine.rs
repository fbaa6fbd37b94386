//! What carve needs of the machine's device tree, as typed descriptions.
//!
//! RAM banks, reserved regions (`/reserved-memory` and `/memreserve/`), guests
//! under `/chosen` (the dom0less-shaped binding in DESIGN.md), and the devices
//! the monitor uses: the console UART, the GIC, the timer, PSCI and the CPUs.
//! Untidy but legal trees produce warnings, not errors; a tree carve cannot
//! plan from produces one error naming the node, the property and the numbers.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::tree::{Cells, DtError, Node, Tree};
use crate::addr::{Address, Ipa, PhysRange};

/// More RAM banks are refused: boards have a handful.
pub const MAX_RAM_BANKS: usize = 256;
/// More reserved ranges (`/reserved-memory` and `/memreserve/` together) are
/// refused: boards have dozens, and the plan compares each with the others.
pub const MAX_RESERVED: usize = 1024;
/// More guests under `/chosen` are refused (VMIDs are 8 bits; each guest needs a CPU).
pub const MAX_GUESTS: usize = 64;
/// A longer `carve,cpu-ids` is refused.
pub const MAX_VCPUS: usize = 256;

/// A bank of RAM from a `device_type = "memory"` node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RamBank {
    pub node: String,
    pub range: PhysRange,
}

/// Where a reserved region lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReservedKind {
    /// `reg`: fixed ranges (a node may list several).
    Static(Vec<PhysRange>),
    /// `size` (+ `alignment`, `alloc-ranges`): placed by the plan.
    Dynamic { size: u64, alignment: u64, alloc_ranges: Vec<PhysRange> },
}

/// A `/reserved-memory` child or a `/memreserve/` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reserved {
    /// The node name (`ipu-pool@50000000`), or `/memreserve/ #N`.
    pub name: String,
    pub kind: ReservedKind,
    pub no_map: bool,
    pub reusable: bool,
    /// The first `compatible` string, e.g. `shared-dma-pool`.
    pub compatible: Option<String>,
    /// From the header's memory reservation block rather than a node.
    pub memreserve: bool,
    /// The node's `phandle` (else `linux,phandle`): what a guest's `memory-region` names it by.
    pub phandle: Option<u32>,
}

/// A boot module of a guest (`multiboot,kernel`, `multiboot,ramdisk`, `multiboot,device-tree`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    pub node: String,
    pub range: PhysRange,
    pub bootargs: Option<String>,
}

/// A guest's RAM partly backed by a CMA pool (DESIGN.md, piece 5): the
/// guest node's `memory-region = <&pool>` and `carve,movable-memory = <hi lo>`
/// (KiB, 64-bit in two cells, like `memory`). That much of the guest's
/// `memory` (the top of its IPA range) is backed by free pages of the pool,
/// chosen at run time; the plan checks that the node is a pool and that the
/// guests naming it fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovableRequest {
    /// The phandle `memory-region` gives: a `/reserved-memory` node's [`Reserved::phandle`].
    pub region: u32,
    /// Bytes: a whole number of 4 KiB pages, more than 0 and at most the guest's `memory`.
    pub size: u64,
}

/// What the monitor does when a guest touches an IPA it was not given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultPolicy {
    /// Log it and stop the guest (the default: a fault outside the map is a bug worth seeing).
    #[default]
    Stop,
    /// Log it and boot the guest again from its images (same plan, fresh memory).
    Reset,
    /// Log it and inject an abort into the guest, at its own vector with DFSR/DFAR (or IFSR/IFAR) set.
    Inject,
}

/// Which of the machine's devices a guest alone on the machine is given
/// (`carve,devices`). With several guests, none is given the console or the
/// board: only the devices its node names ([`Guest::named`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceGrant {
    /// The console UART and what it needs (clocks, resets, pins, interrupt
    /// parents), and the GIC distributor and CPU interface (the default).
    #[default]
    Console,
    /// Every device of the machine the monitor does not keep for itself
    /// (its log UART, its power-off node, the GIC's hypervisor parts): the board. Without an
    /// IOMMU a DMA-capable device given to a guest can reach any memory, so
    /// the tree must ask for it.
    All,
}

/// A guest under `/chosen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    /// The node name, e.g. `guest@0`.
    pub name: String,
    pub path: String,
    /// RAM in bytes (the binding gives KiB).
    pub memory: u64,
    /// vCPUs: `cpus`, else the length of `carve,cpu-ids`, else 1.
    pub cpus: u32,
    /// `carve,cpu-ids = <0 1 ...>`: the machine CPU (an index into the `/cpus`
    /// nodes in tree order, [`Machine::cpus`]) each vCPU runs on, in vCPU
    /// order. Absent: the plan gives the guest the lowest free CPUs.
    pub cpu_ids: Option<Vec<u32>>,
    /// `carve,ipa-base`; the plan uses 0x40000000 when absent.
    pub ipa_base: Option<Ipa>,
    pub kernel: Option<Module>,
    pub ramdisk: Option<Module>,
    pub device_tree: Option<Module>,
    /// The kernel module's `bootargs`, else the guest node's.
    pub bootargs: Option<String>,
    /// `carve,on-fault = "stop" | "reset" | "inject"`.
    pub on_fault: FaultPolicy,
    /// `memory-region` + `carve,movable-memory`: the part of `memory` a CMA pool backs.
    pub movable: Option<MovableRequest>,
    /// `carve,virtual-gic`: a lone guest gets the virtual GIC instead of the
    /// physical one (guests that share the machine always do).
    pub virtual_gic: bool,

    /// `carve,devices = "console" | "all"`: what the guest is given when it runs alone.
    pub devices: DeviceGrant,
    /// The device nodes `carve,devices` names by path (`"/pl031@9010000"`),
    /// given to this guest alone, whether it shares the machine or not; the
    /// full paths once [`Machine::from_tree`] has checked them ([`GivenDevice`]).
    pub named: Vec<String>,
}

/// A device a guest's `carve,devices` names: mapped 1:1 into that guest
/// alone, its interrupts (GIC SPIs) delivered to that guest alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GivenDevice {
    /// The guest's node path.
    pub guest: String,
    pub device: Device,
    /// Its interrupts as GIC interrupt IDs (SPI n is 32 + n), in the node's order.
    pub spis: Vec<u32>,
}

/// An MMIO device window, translated to a physical address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub node: String,
    pub compatible: Option<String>,
    pub regs: Vec<PhysRange>,
}

/// How a UART's registers are laid out: which driver the monitor needs for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UartKind {
    /// Arm PrimeCell PL011 (`arm,pl011`), or its SBSA subset (`arm,sbsa-uart`).
    Pl011,
    /// The 8250/16550 family: register `n` at `n << reg_shift`, accessed
    /// `io_width` bytes wide (1 or 4; `reg-shift`, `reg-io-width`).
    Ns16550 { reg_shift: u8, io_width: u8 },
}

/// Compatibles of the 8250/16550 family whose registers need no more than
/// `reg-shift` and `reg-io-width` to reach (Linux's `of_serial` and
/// `8250_dw` handle these; the Allwinner, Rockchip, TI and NVIDIA boards
/// use them).
const NS16550_COMPATIBLES: [&str; 8] = [
    "ns16550a",
    "ns16550",
    "ns16450",
    "ns8250",
    "snps,dw-apb-uart",
    "ti,omap4-uart",
    "ti,am3352-uart",
    "nvidia,tegra20-uart",
];

/// The driver a UART node needs, from its `compatible` list and, for the
/// 8250 family, `reg-shift` (default 0) and `reg-io-width` (default 1).
/// `None`: carve has no driver for it (the caller says so).
pub fn uart_kind(node: &Node<'_>) -> Result<Option<UartKind>, DtError> {
    if node.is_compatible("arm,pl011") || node.is_compatible("arm,sbsa-uart") {
        return Ok(Some(UartKind::Pl011));
    }
    if !NS16550_COMPATIBLES.iter().any(|c| node.is_compatible(c)) {
        return Ok(None);
    }
    let reg_shift = node.u32_prop("reg-shift")?.unwrap_or(0);
    if reg_shift > 4 {
        return Err(DtError::prop(&node.path, "reg-shift", format!("{reg_shift}: registers more than 16 bytes apart")));
    }
    let io_width = node.u32_prop("reg-io-width")?.unwrap_or(1);
    if !matches!(io_width, 1 | 4) {
        return Err(DtError::prop(
            &node.path,
            "reg-io-width",
            format!("{io_width}: carve drives 8250 registers 1 or 4 bytes wide"),
        ));
    }
    Ok(Some(UartKind::Ns16550 { reg_shift: reg_shift as u8, io_width: io_width as u8 }))
}

/// The UART `/chosen/carve,log` names for the monitor's own log (defmt frames).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogUart {
    pub device: Device,
    pub kind: UartKind,
}

/// The node a `/chosen` path property names: "/path[:options]" or "alias[:options]".
fn resolve_path<'t, 'a>(tree: &'t Tree<'a>, value: &str) -> Option<&'t Node<'a>> {
    let path = value.split(':').next().unwrap_or(value);
    if path.starts_with('/') {
        tree.find(path)
    } else {
        let full = tree.root.child("aliases").and_then(|a| a.str_prop_lossy(path))?;
        tree.find(full)
    }
}

/// The GIC: distributor, CPU interface and, with the Virtualization Extensions, GICH and GICV.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gic {
    pub node: String,
    pub compatible: Option<String>,
    pub distributor: PhysRange,
    pub cpu_interface: PhysRange,
    /// The virtual interface control block (GICH), when the tree gives it.
    pub hyp_interface: Option<PhysRange>,
    /// The virtual CPU interface (GICV), when the tree gives it.
    pub vcpu_interface: Option<PhysRange>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    Smc,
    Hvc,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Psci {
    pub node: String,
    pub method: PsciMethod,
    /// `arm,psci-0.2` or later: the standard function IDs apply.
    pub v02: bool,
}

/// How the monitor powers the machine off (its own end on a board, a guest's SYSTEM_OFF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PowerOff {
    /// PSCI SYSTEM_OFF through the firmware: the tree's PSCI node says `method = "smc"`.
    Psci,
    /// The Versatile Express configuration controller: a write of `function`
    /// (8, shutdown) to SYS_CFGCTRL in the system registers at `sysreg`, for
    /// the `arm,vexpress-shutdown` node `node` (its `arm,vexpress-sysreg,func`,
    /// and the site, position and DCC its ancestors give).
    VexpressSysCfg { node: String, sysreg: PhysRange, dcc: u32, function: u32, site: u32, position: u32, device: u32 },
}

/// How the monitor starts the machine's other CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpuStart {
    /// PSCI CPU_ON through the firmware (SMC).
    Psci,
    /// A boot monitor holds them in a loop until the Versatile Express
    /// SYS_FLAGS register (the system registers at `sysreg`) names where to
    /// go, and an interrupt wakes them (the board has no PSCI firmware).
    VexpressSysFlags { sysreg: PhysRange },
}

/// What carve reads from a device tree.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub model: Option<String>,
    pub ram: Vec<RamBank>,
    /// `/reserved-memory` children in tree order, then `/memreserve/` entries.
    pub reserved: Vec<Reserved>,
    pub guests: Vec<Guest>,
    /// The console: the node `stdout-path` names, if any.
    pub uart: Option<Device>,
    /// How to drive [`Machine::uart`]; `None` when carve has no driver for its compatible.
    pub uart_kind: Option<UartKind>,
    /// [`Machine::uart`]'s first interrupt as a GIC interrupt ID, when it has one the GIC takes.
    pub uart_irq: Option<u32>,
    /// `/chosen/carve,log`: the UART the monitor writes its own log to.
    pub log_uart: Option<LogUart>,
    pub gic: Option<Gic>,
    /// `arm,armv7-timer`: its node, if present.
    pub timer: Option<String>,
    pub psci: Option<Psci>,
    /// How to power the machine off, when the tree says.
    pub power_off: Option<PowerOff>,
    /// How to start the other CPUs, when the tree says.
    pub cpu_start: Option<CpuStart>,
    /// The devices guests' `carve,devices` name, checked: each given to one guest.
    pub given: Vec<GivenDevice>,
    /// MPIDR affinity values of the `/cpus` nodes.
    pub cpus: Vec<u64>,
    /// Memory nodes whose every bank has size 0 (a bootloader is meant to fill them in).
    pub empty_memory: Vec<String>,
    /// `/chosen/bootargs`: the monitor's own command line (`vmalloc=`, see `plan::bootargs`).
    pub bootargs: Option<String>,
    /// Untidy things carve accepted, one sentence each.
    pub warnings: Vec<String>,
}

impl Machine {
    /// Reads a whole DTB. Never panics.
    pub fn from_dtb(blob: &[u8]) -> Result<Machine, DtError> {
        let tree = Tree::parse(blob)?;
        Machine::from_tree(&tree)
    }

    pub fn from_tree(tree: &Tree<'_>) -> Result<Machine, DtError> {
        let root = &tree.root;
        let mut m = Machine { model: root.str_prop("model").ok().flatten().map(String::from), ..Machine::default() };
        let root_cells = root.cells()?;
        m.read_memory(root, root_cells)?;
        m.read_reserved(tree)?;
        m.read_chosen(tree)?;
        m.read_devices(tree)?;
        m.read_given(tree)?;
        Ok(m)
    }

    /// Every enabled `device_type = "memory"` node under the root.
    fn read_memory(&mut self, root: &Node<'_>, cells: Cells) -> Result<(), DtError> {
        for node in root.children.iter().filter(|n| is_memory(n)) {
            if !node.is_enabled() {
                continue;
            }
            let Some(reg) = node.prop("reg") else {
                return Err(DtError::node(&node.path, "memory node has no reg: carve cannot tell where RAM is"));
            };
            let pairs = cells.pairs(&node.path, "reg", reg)?;
            if pairs.iter().all(|&(_, size)| size == 0) {
                self.empty_memory.push(node.path.clone());
            }
            for (base, size) in pairs {
                if size == 0 {
                    self.warnings.push(format!(
                        "{}: memory bank at {base:#x} has size 0 (left for a bootloader to fill in): ignored",
                        node.path
                    ));
                    continue;
                }
                let range = PhysRange::from_raw(base, size).ok_or_else(|| {
                    DtError::prop(
                        &node.path,
                        "reg",
                        format!("bank {base:#x} size {size:#x} runs past the 40-bit physical address space"),
                    )
                })?;
                if self.ram.len() == MAX_RAM_BANKS {
                    return Err(DtError::prop(
                        &node.path,
                        "reg",
                        format!("more than {MAX_RAM_BANKS} RAM banks in the memory nodes; carve reads up to {MAX_RAM_BANKS}"),
                    ));
                }
                self.ram.push(RamBank { node: node.path.clone(), range });
            }
        }
        self.ram.sort_by_key(|b| b.range.start());
        Ok(())
    }

    fn read_reserved(&mut self, tree: &Tree<'_>) -> Result<(), DtError> {
        if let Some(rm) = tree.root.child("reserved-memory") {
            let cells = rm.cells()?;
            for node in &rm.children {
                if !node.is_enabled() {
                    continue;
                }
                let kind = if let Some(reg) = node.prop("reg") {
                    let mut ranges = Vec::new();
                    for (base, size) in cells.pairs(&node.path, "reg", reg)? {
                        if size == 0 {
                            self.warnings.push(format!(
                                "{}: reserved range at {base:#x} has size 0 (left for a bootloader to fill in): ignored",
                                node.path
                            ));
                            continue;
                        }
                        ranges.push(PhysRange::from_raw(base, size).ok_or_else(|| {
                            DtError::prop(
                                &node.path,
                                "reg",
                                format!("{base:#x} size {size:#x} runs past the 40-bit physical address space"),
                            )
                        })?);
                    }
                    if ranges.is_empty() {
                        continue;
                    }
                    ReservedKind::Static(ranges)
                } else if let Some(size_v) = node.prop("size") {
                    let size = sized(node, "size", size_v, cells.size)?;
                    if size == 0 {
                        self.warnings.push(format!("{}: dynamic region of size 0: ignored", node.path));
                        continue;
                    }
                    let alignment = match node.prop("alignment") {
                        None => crate::addr::PAGE_SIZE,
                        Some(v) => {
                            let a = sized(node, "alignment", v, cells.size)?;
                            if !a.is_power_of_two() {
                                return Err(DtError::prop(
                                    &node.path,
                                    "alignment",
                                    format!("{a:#x} is not a power of two"),
                                ));
                            }
                            a.max(crate::addr::PAGE_SIZE)
                        }
                    };
                    let mut alloc_ranges = Vec::new();
                    if let Some(v) = node.prop("alloc-ranges") {
                        for (base, size) in cells.pairs(&node.path, "alloc-ranges", v)? {
                            alloc_ranges.push(PhysRange::from_raw(base, size).ok_or_else(|| {
                                DtError::prop(
                                    &node.path,
                                    "alloc-ranges",
                                    format!("{base:#x} size {size:#x} runs past the 40-bit physical address space"),
                                )
                            })?);
                        }
                    }
                    ReservedKind::Dynamic { size, alignment, alloc_ranges }
                } else {
                    self.warnings
                        .push(format!("{}: reserved-memory node with neither reg nor size: ignored", node.path));
                    continue;
                };
                let count = match &kind {
                    ReservedKind::Static(r) => r.len(),
                    ReservedKind::Dynamic { .. } => 1,
                };
                if reserved_ranges(&self.reserved) + count > MAX_RESERVED {
                    return Err(DtError::node(
                        &node.path,
                        format!("more than {MAX_RESERVED} reserved ranges in /reserved-memory; carve reads up to {MAX_RESERVED}"),
                    ));
                }
                self.reserved.push(Reserved {
                    name: node.name.clone(),
                    kind,
                    no_map: node.has_prop("no-map"),
                    reusable: node.has_prop("reusable"),
                    compatible: node.first_string("compatible").map(String::from),
                    memreserve: false,
                    phandle: phandle(node)?,
                });
            }
        }
        if reserved_ranges(&self.reserved) + tree.memreserve.len() > MAX_RESERVED {
            return Err(DtError::node(
                "/memreserve/",
                format!(
                    "{} entries after {} reserved ranges in /reserved-memory: more than the {MAX_RESERVED} carve reads",
                    tree.memreserve.len(),
                    reserved_ranges(&self.reserved)
                ),
            ));
        }
        for (i, r) in tree.memreserve.iter().enumerate() {
            self.reserved.push(Reserved {
                name: format!("/memreserve/ #{i}"),
                kind: ReservedKind::Static(alloc::vec![*r]),
                no_map: false,
                reusable: false,
                compatible: None,
                memreserve: true,
                phandle: None,
            });
        }
        Ok(())
    }

    /// Checks and resolves the devices guests name in `carve,devices`
    /// ([`GivenDevice`]): each a device on a memory-mapped bus with a window,
    /// none the monitor's (the GIC, its log UART, its power-off and CPU-start
    /// registers, the console when guests share it), in no RAM, given to one
    /// guest only and sharing no 4 KiB page or interrupt with another guest's.
    /// A guest on the virtual GIC (sharing the machine, or asking for it)
    /// needs every interrupt of its devices to be a GIC SPI.
    fn read_given(&mut self, tree: &Tree<'_>) -> Result<(), DtError> {
        let shared = self.guests.len() > 1;
        for gi in 0..self.guests.len() {
            let (gpath, virtual_gic) = (self.guests[gi].path.clone(), shared || self.guests[gi].virtual_gic);
            let mut resolved = Vec::new();
            for path in self.guests[gi].named.clone() {
                let refuse = |why: String| DtError::prop(&gpath, "carve,devices", format!("{path}: {why}"));
                let node = tree.find(&path).ok_or_else(|| refuse(String::from("names no node")))?;
                if !is_device_path(tree, &node.path) || node.path.starts_with("/cpus") {
                    return Err(refuse(format!(
                        "{} is no device (the root, a CPU, or inside memory, reserved-memory, chosen, PSCI or aliases)",
                        node.path
                    )));
                }
                if !node.is_enabled() {
                    return Err(refuse(format!("{} is disabled (status)", node.path)));
                }
                if !node.has_prop("reg") {
                    return Err(refuse(format!("{} has no reg: nothing to map", node.path)));
                }
                let device = device(tree, node).map_err(|e| refuse(e.to_string()))?;
                let windows: Vec<&PhysRange> = device.regs.iter().filter(|r| r.size > 0).collect();
                if windows.is_empty() {
                    return Err(refuse(format!("{} has no window of non-zero size", node.path)));
                }
                let overlaps = |regs: &[PhysRange]| windows.iter().any(|w| regs.iter().any(|r| share_a_page(w, r)));
                let mut monitors: Vec<(String, Vec<PhysRange>)> = Vec::new();
                if let Some(g) = &self.gic {
                    let parts = [Some(g.distributor), Some(g.cpu_interface), g.hyp_interface, g.vcpu_interface];
                    monitors.push((format!("the GIC {}", g.node), parts.into_iter().flatten().collect()));
                }
                if let Some(l) = &self.log_uart {
                    monitors.push((format!("the monitor's log UART {}", l.device.node), l.device.regs.clone()));
                }
                if let Some(u) = self.uart.as_ref().filter(|_| shared) {
                    monitors.push((
                        format!(
                            "the console UART {}, which the monitor emulates for guests that share the machine",
                            u.node
                        ),
                        u.regs.clone(),
                    ));
                }
                if let Some(PowerOff::VexpressSysCfg { node, sysreg, .. }) = &self.power_off {
                    monitors.push((format!("the monitor's power-off registers {node}"), alloc::vec![*sysreg]));
                }
                if let Some(CpuStart::VexpressSysFlags { sysreg }) = &self.cpu_start {
                    monitors.push((
                        String::from("the SYS_FLAGS registers the monitor starts CPUs with"),
                        alloc::vec![*sysreg],
                    ));
                }
                if let Some((what, _)) = monitors.iter().find(|(_, regs)| overlaps(regs)) {
                    return Err(refuse(format!("{} shares a 4 KiB page with {what}", node.path)));
                }
                if let Some(bank) = self.ram.iter().find(|b| windows.iter().any(|w| w.overlaps(&b.range))) {
                    return Err(refuse(format!("{} lies in RAM ({})", node.path, bank.node)));
                }
                let spis = match gic_interrupts(tree, node) {
                    Ok(ids) => ids,
                    Err(why) if virtual_gic => return Err(refuse(format!("{}: {why}", node.path))),
                    Err(_) => Vec::new(),
                };
                if virtual_gic {
                    if let Some(&ppi) = spis.iter().find(|&&i| i < 32) {
                        return Err(refuse(format!(
                            "{}: its interrupt {ppi} is a PPI, one per CPU: only SPIs can be given",
                            node.path
                        )));
                    }
                    if let Some(&i) = spis.iter().find(|&&i| shared && Some(i) == self.uart_irq) {
                        return Err(refuse(format!("{}: its interrupt {i} is the console UART's", node.path)));
                    }
                }
                for other in &self.given {
                    let who = if other.guest == gpath { String::from("this guest") } else { other.guest.clone() };
                    if other.device.node == node.path {
                        return Err(refuse(format!("{} is given to {who} already", node.path)));
                    }
                    if overlaps(&other.device.regs) {
                        return Err(refuse(format!(
                            "{} shares a 4 KiB page with {}, given to {who}",
                            node.path, other.device.node
                        )));
                    }
                    if let Some(i) = spis.iter().find(|i| other.spis.contains(i)) {
                        return Err(refuse(format!(
                            "{}: its interrupt {i} is also that of {}, given to {who}",
                            node.path, other.device.node
                        )));
                    }
                }
                resolved.push(node.path.clone());
                self.given.push(GivenDevice { guest: gpath.clone(), device, spis });
            }
            self.guests[gi].named = resolved;
        }
        Ok(())
    }

    fn read_chosen(&mut self, tree: &Tree<'_>) -> Result<(), DtError> {
        let Some(chosen) = tree.root.child("chosen") else { return Ok(()) };
        self.bootargs = chosen.str_prop("bootargs").ok().flatten().map(String::from);
        for node in &chosen.children {
            if !(node.is_compatible("carve,guest") || node.is_compatible("xen,domain")) || !node.is_enabled() {
                continue;
            }
            if self.guests.len() == MAX_GUESTS {
                return Err(DtError::node(
                    &chosen.path,
                    format!("more than {MAX_GUESTS} guests (at {}); carve runs up to {MAX_GUESTS}", node.name),
                ));
            }
            self.guests.push(read_guest(node)?);
        }
        // The console: `stdout-path` = "/path[:options]" or "alias[:options]".
        if let Ok(Some(sp)) = chosen.str_prop("stdout-path") {
            match resolve_path(tree, sp) {
                Some(node) if is_device_path(tree, &node.path) => {
                    self.uart = Some(device(tree, node)?);
                    // A console carve cannot drive is the guest's business: a warning, not a refusal.
                    self.uart_kind = uart_kind(node).unwrap_or_else(|e| {
                        self.warnings.push(e.to_string());
                        None
                    });
                    self.uart_irq = gic_interrupt(tree, node);
                }
                Some(node) => self.warnings.push(format!(
                    "/chosen: stdout-path {sp:?} names {}, which is no device (the root, or inside a memory, reserved-memory, chosen, PSCI or aliases node): no console",
                    node.path
                )),
                None => self.warnings.push(format!("/chosen: stdout-path {sp:?} names no node")),
            }
        }
        // The monitor's own log: `carve,log`, in the same form.
        if let Some(path) = chosen.str_prop("carve,log")? {
            let node = resolve_path(tree, path)
                .ok_or_else(|| DtError::prop(&chosen.path, "carve,log", format!("{path:?} names no node")))?;
            let kind = uart_kind(node)?.ok_or_else(|| {
                DtError::prop(
                    &chosen.path,
                    "carve,log",
                    format!(
                        "{} ({}) is not a UART carve has a driver for (PL011, 8250/16550)",
                        node.path,
                        node.first_string("compatible").unwrap_or("no compatible")
                    ),
                )
            })?;
            let device = device(tree, node)?;
            if device.regs.is_empty() {
                return Err(DtError::prop(&chosen.path, "carve,log", format!("{} has no reg", node.path)));
            }
            self.log_uart = Some(LogUart { device, kind });
        }
        Ok(())
    }

    fn read_devices(&mut self, tree: &Tree<'_>) -> Result<(), DtError> {
        let mut found: Vec<&Node<'_>> = Vec::new();
        for top in tree.root.children.iter().filter(|n| root_role(n).is_none()) {
            top.walk(&mut |n| {
                if n.is_enabled() && (is_gic(n) || n.is_compatible("arm,armv7-timer")) {
                    found.push(n);
                }
            });
        }
        for n in found {
            if is_gic(n) && self.gic.is_none() {
                let d = device(tree, n)?;
                if d.regs.len() < 2 {
                    return Err(DtError::prop(
                        &n.path,
                        "reg",
                        "a GIC needs at least its distributor and CPU interface",
                    ));
                }
                self.gic = Some(Gic {
                    node: d.node,
                    compatible: d.compatible,
                    distributor: d.regs[0],
                    cpu_interface: d.regs[1],
                    hyp_interface: d.regs.get(2).copied(),
                    vcpu_interface: d.regs.get(3).copied(),
                });
            } else if n.is_compatible("arm,armv7-timer") && self.timer.is_none() {
                self.timer = Some(n.path.clone());
            }
        }
        // PSCI: the first usable node among the root's children (where the
        // guest DTB writer puts its own), else anywhere in the tree.
        let mut psci: Vec<&Node<'_>> = tree.root.children.iter().filter(|n| n.is_enabled() && is_psci(n)).collect();
        tree.root.walk(&mut |n| {
            if n.is_enabled() && is_psci(n) && n.path.matches('/').count() != 1 {
                psci.push(n);
            }
        });
        for n in psci {
            let method = match n.str_prop("method")? {
                Some("smc") => PsciMethod::Smc,
                Some("hvc") => PsciMethod::Hvc,
                Some(other) => {
                    self.warnings.push(format!("{}: method {other:?} is neither smc nor hvc: PSCI ignored", n.path));
                    continue;
                }
                None => {
                    self.warnings.push(format!("{}: no method (smc or hvc): PSCI ignored", n.path));
                    continue;
                }
            };
            let v02 = n
                .prop("compatible")
                .and_then(|v| super::tree::strings(v).ok())
                .is_some_and(|mut it| it.any(|c| c != "arm,psci"));
            self.psci = Some(Psci { node: n.path.clone(), method, v02 });
            break;
        }
        self.read_board_control(tree)?;
        if let Some(cpus) = tree.root.child("cpus") {
            // CPU ids are only counted: odd cell counts here (some old trees say 0)
            // are worth a warning, not a refusal.
            let cells = match cpus.cells() {
                Ok(c) => c,
                Err(e) => {
                    self.warnings.push(format!("{e}: CPUs not counted"));
                    return Ok(());
                }
            };
            self.cpus.extend(cpus.children.iter().filter_map(|c| cpu_mpidr(c, cells)));
        }
        Ok(())
    }

    /// How the monitor powers off and starts CPUs: PSCI firmware reached by
    /// SMC (from Hyp mode, an HVC would come back to the monitor itself: a
    /// `method = "hvc"` node is no firmware carve can call), else the
    /// Versatile Express system registers.
    fn read_board_control(&mut self, tree: &Tree<'_>) -> Result<(), DtError> {
        if self.psci.as_ref().is_some_and(|p| p.method == PsciMethod::Smc) {
            self.power_off = Some(PowerOff::Psci);
            self.cpu_start = Some(CpuStart::Psci);
            return Ok(());
        }
        let mut sysregs: Vec<&Node<'_>> = Vec::new();
        let mut shutdown: Option<&Node<'_>> = None;
        tree.root.walk(&mut |n| {
            if !n.is_enabled() {
                return;
            }
            if n.is_compatible("arm,vexpress-sysreg") {
                sysregs.push(n);
            }
            if shutdown.is_none()
                && (n.is_compatible("arm,vexpress-shutdown") || n.is_compatible("arm,vexpress-poweroff"))
            {
                shutdown = Some(n);
            }
        });
        let Some(&first) = sysregs.first() else { return Ok(()) };
        let sysreg = |n: &Node<'_>| -> Result<PhysRange, DtError> {
            let d = device(tree, n)?;
            d.regs
                .first()
                .copied()
                .ok_or_else(|| DtError::prop(&n.path, "reg", "missing: where are the system registers?"))
        };
        self.cpu_start = Some(CpuStart::VexpressSysFlags { sysreg: sysreg(first)? });
        if let Some(node) = shutdown {
            match vexpress_function(tree, node)? {
                Some((bridge, dcc, function, site, position, device)) => {
                    match sysregs.iter().find(|s| phandle(s).ok().flatten() == Some(bridge)) {
                        Some(b) => {
                            self.power_off = Some(PowerOff::VexpressSysCfg {
                                node: node.path.clone(),
                                sysreg: sysreg(b)?,
                                dcc,
                                function,
                                site,
                                position,
                                device,
                            })
                        }
                        None => self.warnings.push(format!(
                            "{}: its config bridge (phandle {bridge:#x}) is no arm,vexpress-sysreg node: no power-off",
                            node.path
                        )),
                    }
                }
                None => self.warnings.push(format!(
                    "{}: the site is the master site (0xf), which carve does not resolve: no power-off",
                    node.path
                )),
            }
        }
        Ok(())
    }

    /// All RAM in bytes.
    pub fn ram_total(&self) -> u64 {
        self.ram.iter().map(|b| b.range.size).sum()
    }
}

/// The MPIDR affinity of a `/cpus` child that is a CPU (`device_type = "cpu"`
/// with a `reg` of at least `cells.address` cells); `cells` are `/cpus`'.
/// [`Machine::cpus`] lists these in tree order, and the guest DTB writer
/// gives a guest the first of the same nodes: the two must agree.
pub fn cpu_mpidr(node: &Node<'_>, cells: Cells) -> Option<u64> {
    if node.str_prop("device_type").ok().flatten() != Some("cpu") {
        return None;
    }
    let reg = node.prop("reg")?;
    let bytes = 4 * cells.address as usize;
    (reg.len() >= bytes).then(|| super::tree::cells_to_u64(&reg[..bytes]))
}

/// A Versatile Express configuration function (the `arm,vexpress,config-bus`
/// binding): the node's `arm,vexpress-sysreg,func = <function device>`, and
/// from the node or its nearest ancestor that has them, the config bridge
/// (`arm,vexpress,config-bridge`, a phandle), `arm,vexpress,site`,
/// `arm,vexpress,position` and `arm,vexpress,dcc` (0 when absent). `None`
/// when the site is 0xf, the "master site" a board resolves at run time.
#[allow(clippy::type_complexity)]
fn vexpress_function(tree: &Tree<'_>, node: &Node<'_>) -> Result<Option<(u32, u32, u32, u32, u32, u32)>, DtError> {
    let func = node.prop("arm,vexpress-sysreg,func").ok_or_else(|| {
        DtError::prop(&node.path, "arm,vexpress-sysreg,func", "missing: which configuration function powers off?")
    })?;
    let &[f0, f1, f2, f3, d0, d1, d2, d3] = func else {
        return Err(DtError::prop(
            &node.path,
            "arm,vexpress-sysreg,func",
            format!("{} bytes, expected two cells (function, device)", func.len()),
        ));
    };
    let (function, device) = (u32::from_be_bytes([f0, f1, f2, f3]), u32::from_be_bytes([d0, d1, d2, d3]));
    // The node, then its ancestors, nearest first.
    let ancestors: Vec<&Node<'_>> = core::iter::successors(Some(node.path.as_str()), |p| p.rfind('/').map(|i| &p[..i]))
        .filter_map(|p| if p.is_empty() { Some(&tree.root) } else { tree.find(p) })
        .collect();
    let nearest = |prop: &'static str| -> Result<Option<u32>, DtError> {
        for n in &ancestors {
            if let Some(v) = n.u32_prop(prop)? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    };
    let bridge = nearest("arm,vexpress,config-bridge")?.ok_or_else(|| {
        DtError::prop(
            &node.path,
            "arm,vexpress,config-bridge",
            "missing on the node and its buses: which system registers?",
        )
    })?;
    let site = nearest("arm,vexpress,site")?.unwrap_or(0);
    if site == 0xf {
        return Ok(None);
    }
    let position = nearest("arm,vexpress,position")?.unwrap_or(0);
    let dcc = nearest("arm,vexpress,dcc")?.unwrap_or(0);
    Ok(Some((bridge, dcc, function, site, position, device)))
}

/// Reserved ranges read so far: each static range, and one per dynamic region.
fn reserved_ranges(reserved: &[Reserved]) -> usize {
    reserved
        .iter()
        .map(|r| match &r.kind {
            ReservedKind::Static(ranges) => ranges.len(),
            ReservedKind::Dynamic { .. } => 1,
        })
        .sum()
}

/// What a child of the root is when it is not a device: its subtree is
/// described by the machine's other fields (or by nothing) and the guest DTB
/// writer replaces or filters it. Devices (the GIC, the timer, the console)
/// are looked for only outside these subtrees and never at the root itself,
/// by the reader and the writer alike: a GIC node that is also a `memory` node
/// or a PSCI node, or one inside `/reserved-memory`, is no GIC to either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootRole {
    Memory,
    ReservedMemory,
    Chosen,
    Psci,
    /// `aliases`: the writer keeps the entries whose node survives.
    Aliases,
    /// `__symbols__` (overlay labels): dropped from guest DTBs.
    Symbols,
}

/// The [`RootRole`] of `n`, a child of the root.
pub fn root_role(n: &Node<'_>) -> Option<RootRole> {
    if is_memory(n) {
        Some(RootRole::Memory)
    } else if n.name == "reserved-memory" {
        Some(RootRole::ReservedMemory)
    } else if n.name == "chosen" {
        Some(RootRole::Chosen)
    } else if is_psci(n) {
        Some(RootRole::Psci)
    } else if n.name == "aliases" {
        Some(RootRole::Aliases)
    } else if n.name == "__symbols__" {
        Some(RootRole::Symbols)
    } else {
        None
    }
}

/// Whether the node at `path` (in `tree`) may be a device: not the root, and
/// not inside a root child with a [`RootRole`].
pub fn is_device_path(tree: &Tree<'_>, path: &str) -> bool {
    let top = path.split('/').find(|p| !p.is_empty());
    top.and_then(|t| tree.root.children.iter().find(|c| c.name == t)).is_some_and(|c| root_role(c).is_none())
}

/// A RAM node: `device_type = "memory"`, or named `memory` with a `reg` and no `device_type`.
pub fn is_memory(n: &Node<'_>) -> bool {
    n.str_prop("device_type").ok().flatten() == Some("memory")
        || (n.base_name() == "memory" && !n.has_prop("device_type") && n.has_prop("reg"))
}

/// A PSCI node: named `psci`, or compatible with a PSCI binding (Linux goes by the compatible).
pub fn is_psci(n: &Node<'_>) -> bool {
    n.base_name() == "psci" || ["arm,psci", "arm,psci-0.2", "arm,psci-1.0"].iter().any(|c| n.is_compatible(c))
}

fn is_gic(n: &Node<'_>) -> bool {
    ["arm,cortex-a15-gic", "arm,cortex-a7-gic", "arm,gic-400", "arm,cortex-a9-gic", "arm,arm11mp-gic"]
        .iter()
        .any(|c| n.is_compatible(c))
}

/// A number whose width is the parent's `#size-cells`.
fn sized(node: &Node<'_>, prop: &'static str, v: &[u8], size_cells: u32) -> Result<u64, DtError> {
    if size_cells == 0 || v.len() != 4 * size_cells as usize {
        return Err(DtError::prop(
            &node.path,
            prop,
            format!("{} bytes, expected {} cell(s) per the parent's #size-cells", v.len(), size_cells),
        ));
    }
    Ok(super::tree::cells_to_u64(v))
}

impl Node<'_> {
    /// A string property when well-formed, else `None` (for optional lookups).
    fn str_prop_lossy(&self, name: &str) -> Option<&str> {
        let v = self.prop(name)?;
        super::tree::strings(v).ok()?.next()
    }
}

fn read_guest(node: &Node<'_>) -> Result<Guest, DtError> {
    let kib = node.u64_prop("memory")?.ok_or_else(|| {
        DtError::prop(&node.path, "memory", "missing: a guest needs its RAM size (KiB, 64-bit in two cells)")
    })?;
    let memory = kib.checked_mul(1024).filter(|b| *b < crate::addr::PA_LIMIT).ok_or_else(|| {
        DtError::prop(&node.path, "memory", format!("{kib} KiB is more than a 40-bit IPA space holds"))
    })?;
    if memory == 0 {
        return Err(DtError::prop(&node.path, "memory", "0 KiB: a guest needs RAM"));
    }
    let cpu_ids = cpu_ids(node)?;
    let cpus = match (node.u32_prop("cpus")?, &cpu_ids) {
        (Some(n), Some(ids)) if n as usize != ids.len() => {
            return Err(DtError::prop(
                &node.path,
                "carve,cpu-ids",
                format!("{} CPU id(s), but cpus = <{n}>: one id per vCPU", ids.len()),
            ))
        }
        (Some(n), _) => n,
        (None, Some(ids)) => ids.len() as u32,
        (None, None) => 1,
    };
    if cpus == 0 {
        return Err(DtError::prop(&node.path, "cpus", "0: a guest needs at least one CPU"));
    }
    let ipa_base = match node.u64_prop("carve,ipa-base")? {
        None => None,
        Some(v) => Some(Ipa::from_u64(v).ok_or_else(|| {
            DtError::prop(&node.path, "carve,ipa-base", format!("{v:#x} is past the 40-bit IPA space"))
        })?),
    };
    let on_fault = match node.str_prop("carve,on-fault")? {
        None | Some("stop") => FaultPolicy::Stop,
        Some("reset") => FaultPolicy::Reset,
        Some("inject") => FaultPolicy::Inject,
        Some(other) => {
            return Err(DtError::prop(
                &node.path,
                "carve,on-fault",
                format!("{other:?}: expected \"stop\", \"reset\" or \"inject\""),
            ))
        }
    };
    let (devices, named) = device_grant(node)?;
    let movable = movable(node, memory)?;
    let cells = node.cells()?;
    let mut g = Guest {
        name: node.name.clone(),
        path: node.path.clone(),
        memory,
        cpus,
        cpu_ids,
        ipa_base,
        kernel: None,
        ramdisk: None,
        device_tree: None,
        bootargs: node.str_prop("bootargs")?.map(String::from),
        on_fault,
        movable,
        virtual_gic: node.prop("carve,virtual-gic").is_some(),
        devices,
        named,
    };
    for m in &node.children {
        let slot = if m.is_compatible("multiboot,kernel") {
            &mut g.kernel
        } else if m.is_compatible("multiboot,ramdisk") {
            &mut g.ramdisk
        } else if m.is_compatible("multiboot,device-tree") {
            &mut g.device_tree
        } else {
            continue;
        };
        if slot.is_some() {
            return Err(DtError::node(&m.path, "a second module of the same kind in one guest"));
        }
        let reg = m.prop("reg").ok_or_else(|| DtError::prop(&m.path, "reg", "missing: where is the module?"))?;
        let pairs = cells.pairs(&m.path, "reg", reg)?;
        let &[(base, size)] = pairs.as_slice() else {
            return Err(DtError::prop(&m.path, "reg", format!("{} entries, a module has one", pairs.len())));
        };
        if size == 0 {
            return Err(DtError::prop(&m.path, "reg", format!("module at {base:#x} has size 0")));
        }
        let range = PhysRange::from_raw(base, size).ok_or_else(|| {
            DtError::prop(
                &m.path,
                "reg",
                format!("{base:#x} size {size:#x} runs past the 40-bit physical address space"),
            )
        })?;
        let bootargs = m.str_prop("bootargs")?.map(String::from);
        if m.is_compatible("multiboot,kernel") && bootargs.is_some() {
            g.bootargs = bootargs.clone();
        }
        *slot = Some(Module { node: m.path.clone(), range, bootargs });
    }
    Ok(g)
}

/// `carve,devices`: `"console"` (the default), `"all"` (alone), and/or the
/// paths of device nodes the guest is given (each a string starting with `/`).
fn device_grant(node: &Node<'_>) -> Result<(DeviceGrant, Vec<String>), DtError> {
    let list = node.strings_prop("carve,devices")?;
    let refuse = |why: String| DtError::prop(&node.path, "carve,devices", why);
    let mut grant = DeviceGrant::Console;
    let mut named: Vec<String> = Vec::new();
    for s in &list {
        match *s {
            "console" => {}
            "all" if list.len() == 1 => grant = DeviceGrant::All,
            "all" => return Err(refuse(String::from("\"all\" gives the whole board: name no device beside it"))),
            p if p.starts_with('/') => {
                if named.iter().any(|n| n == p) {
                    return Err(refuse(format!("{p} is named twice")));
                }
                named.push(String::from(p));
            }
            other => {
                return Err(refuse(format!(
                    "{other:?}: expected \"console\", \"all\" or the path of a device node (\"/pl031@9010000\")"
                )))
            }
        }
    }
    Ok((grant, named))
}

/// The interrupt controller a node's interrupts go to: its own
/// `interrupt-parent`, else the nearest ancestor's. `Err` with the reason
/// when the phandle is malformed or names no node.
fn interrupt_parent<'t, 'a>(tree: &'t Tree<'a>, node: &Node<'_>) -> Result<Option<&'t Node<'a>>, String> {
    let ancestors = core::iter::successors(Some(node.path.as_str()), |p| p.rfind('/').map(|i| &p[..i]));
    let parent = ancestors
        .map(|p| if p.is_empty() { Some(&tree.root) } else { tree.find(p) })
        .find_map(|n| n?.prop("interrupt-parent"));
    let Some(v) = parent else { return Ok(None) };
    let &[a, b, c, d] = v else {
        return Err(format!("its interrupt-parent is {} bytes, not one phandle cell", v.len()));
    };
    let want = u32::from_be_bytes([a, b, c, d]);
    let mut found = None;
    tree.root.walk(&mut |n| {
        if found.is_none() && phandle(n).ok().flatten() == Some(want) {
            found = Some(n);
        }
    });
    found.map(Some).ok_or_else(|| format!("its interrupt-parent {want:#x} is no node's phandle"))
}

/// Every interrupt of a node as a GIC interrupt ID (SPI n is 32 + n, PPI n is
/// 16 + n), in order: empty when it has none. `Err` with the reason when they
/// go to another controller, are malformed, or come as `interrupts-extended`.
pub fn gic_interrupts(tree: &Tree<'_>, node: &Node<'_>) -> Result<Vec<u32>, String> {
    if node.has_prop("interrupts-extended") {
        return Err(String::from("it has interrupts-extended, which carve does not route"));
    }
    let Some(v) = node.prop("interrupts") else { return Ok(Vec::new()) };
    let parent =
        interrupt_parent(tree, node)?.ok_or_else(|| String::from("its interrupts have no interrupt-parent"))?;
    if !is_gic(parent) {
        return Err(format!("its interrupts go to {}, not to the GIC", parent.path));
    }
    if parent.u32_prop("#interrupt-cells").ok().flatten() != Some(3) {
        return Err(format!("{} does not have #interrupt-cells = <3>", parent.path));
    }
    if v.is_empty() || v.len() % 12 != 0 {
        return Err(format!("interrupts is {} bytes, not a list of 3-cell GIC specifiers", v.len()));
    }
    let cell = |c: &[u8]| u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    v.chunks_exact(12)
        .map(|spec| match (cell(&spec[0..4]), cell(&spec[4..8])) {
            (0, n) if n < 988 => Ok(32 + n),
            (1, n) if n < 16 => Ok(16 + n),
            (kind, n) => Err(format!("interrupt <{kind} {n}> is no GIC SPI or PPI")),
        })
        .collect()
}

/// Whether two windows share a 4 KiB page (stage-2 maps pages, not bytes).
pub(crate) fn share_a_page(a: &PhysRange, b: &PhysRange) -> bool {
    let page = |r: &PhysRange| (r.start() & !0xfff, (r.start() + r.size).next_multiple_of(0x1000));
    let ((a0, a1), (b0, b1)) = (page(a), page(b));
    a.size > 0 && b.size > 0 && a0 < b1 && b0 < a1
}

/// A node's first interrupt as a GIC interrupt ID (SPI n is 32 + n, PPI n is
/// 16 + n; GIC binding, three cells), when its interrupt parent (its own
/// `interrupt-parent` or the nearest ancestor's) is the GIC. `None` for
/// anything else: no interrupt, another controller, a malformed property.
pub fn gic_interrupt(tree: &Tree<'_>, node: &Node<'_>) -> Option<u32> {
    let gic = interrupt_parent(tree, node).ok().flatten().filter(|g| is_gic(g))?;
    if gic.u32_prop("#interrupt-cells").ok().flatten() != Some(3) {
        return None;
    }
    let v = node.prop("interrupts")?;
    let cell = |i: usize| v.get(i * 4..i * 4 + 4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    let (kind, number) = (cell(0)?, cell(1)?);
    cell(2)?;
    match kind {
        0 if number < 988 => Some(32 + number),
        1 if number < 16 => Some(16 + number),
        _ => None,
    }
}

/// A node's `phandle`, else its `linux,phandle` (older dtc wrote both): one cell.
fn phandle(node: &Node<'_>) -> Result<Option<u32>, DtError> {
    for prop in ["phandle", "linux,phandle"] {
        let Some(v) = node.prop(prop) else { continue };
        let &[a, b, c, d] = v else {
            return Err(DtError::prop(
                &node.path,
                prop,
                format!("{} bytes, expected one 4-byte cell (the node's phandle)", v.len()),
            ));
        };
        return Ok(Some(u32::from_be_bytes([a, b, c, d])));
    }
    Ok(None)
}

/// `memory-region = <&pool>` with `carve,movable-memory = <hi lo>` (KiB): both
/// or neither. Whether the phandle names a CMA pool, and whether the pool has
/// room, is the plan's question (it knows the carveouts and the other guests).
fn movable(node: &Node<'_>, memory: u64) -> Result<Option<MovableRequest>, DtError> {
    let region = match node.prop("memory-region") {
        None => None,
        Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
        Some(v) if !v.is_empty() && v.len().is_multiple_of(4) => {
            return Err(DtError::prop(
                &node.path,
                "memory-region",
                format!("{} phandles; a guest's movable memory comes from one pool", v.len() / 4),
            ))
        }
        Some(v) => {
            return Err(DtError::prop(
                &node.path,
                "memory-region",
                format!("{} bytes, expected one 4-byte cell (the phandle of a /reserved-memory pool)", v.len()),
            ))
        }
    };
    let kib = node.u64_prop("carve,movable-memory")?;
    let (region, kib) = match (region, kib) {
        (None, None) => return Ok(None),
        (Some(region), None) => {
            return Err(DtError::prop(
                &node.path,
                "memory-region",
                format!(
                    "names a pool (phandle {region:#x}) but carve,movable-memory is missing: say how many KiB of the guest's memory it backs"
                ),
            ))
        }
        (None, Some(kib)) => {
            return Err(DtError::prop(
                &node.path,
                "carve,movable-memory",
                format!("{kib} KiB, but no memory-region names the CMA pool that backs it"),
            ))
        }
        (Some(region), Some(kib)) => (region, kib),
    };
    if kib == 0 {
        return Err(DtError::prop(
            &node.path,
            "carve,movable-memory",
            "0 KiB: leave it and memory-region out for a guest without movable memory",
        ));
    }
    if !kib.is_multiple_of(4) {
        return Err(DtError::prop(
            &node.path,
            "carve,movable-memory",
            format!("{kib} KiB is not a whole number of 4 KiB pages"),
        ));
    }
    let size = kib.checked_mul(1024).filter(|&b| b <= memory).ok_or_else(|| {
        DtError::prop(
            &node.path,
            "carve,movable-memory",
            format!("{kib} KiB is more than the guest's memory ({} KiB)", memory / 1024),
        )
    })?;
    Ok(Some(MovableRequest { region, size }))
}

/// `carve,cpu-ids`: one cell per vCPU, no CPU twice. Whether each names a CPU
/// the machine has is the plan's question (it knows the CPU count and the other guests).
fn cpu_ids(node: &Node<'_>) -> Result<Option<Vec<u32>>, DtError> {
    let Some(v) = node.prop("carve,cpu-ids") else { return Ok(None) };
    if v.is_empty() || !v.len().is_multiple_of(4) {
        return Err(DtError::prop(
            &node.path,
            "carve,cpu-ids",
            format!("{} bytes, expected one 4-byte cell (a CPU index) per vCPU", v.len()),
        ));
    }
    if v.len() / 4 > MAX_VCPUS {
        return Err(DtError::prop(
            &node.path,
            "carve,cpu-ids",
            format!("{} CPU ids; a guest has at most {MAX_VCPUS} vCPUs", v.len() / 4),
        ));
    }
    let ids: Vec<u32> = v.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
    let mut seen = alloc::collections::BTreeMap::new();
    for (i, &id) in ids.iter().enumerate() {
        if let Some(j) = seen.insert(id, i) {
            return Err(DtError::prop(
                &node.path,
                "carve,cpu-ids",
                format!("CPU {id} is listed twice (vCPUs {j} and {i}): a CPU runs one vCPU"),
            ));
        }
    }
    Ok(Some(ids))
}

/// A device node's `reg` windows translated through every parent bus's `ranges`.
pub(crate) fn device(tree: &Tree<'_>, node: &Node<'_>) -> Result<Device, DtError> {
    // The chain of ancestors, root first.
    let mut chain: Vec<&Node<'_>> = Vec::new();
    let mut path = String::new();
    chain.push(&tree.root);
    let parts: Vec<&str> = node.path.split('/').filter(|p| !p.is_empty()).collect();
    for p in &parts[..parts.len().saturating_sub(1)] {
        path.push('/');
        path.push_str(p);
        let n = tree.find(&path).ok_or_else(|| DtError::node(&node.path, "parent not found"))?;
        chain.push(n);
    }
    let parent = chain.last().copied().unwrap_or(&tree.root);
    let cells = parent.cells()?;
    let mut regs = Vec::new();
    if let Some(reg) = node.prop("reg") {
        if cells.size == 0 {
            return Ok(Device { node: node.path.clone(), compatible: None, regs });
        }
        for (addr, size) in cells.pairs(&node.path, "reg", reg)? {
            let pa = translate(&chain, addr).ok_or_else(|| {
                DtError::prop(&node.path, "reg", format!("{addr:#x} is not translated by the parent buses' ranges"))
            })?;
            regs.push(PhysRange::from_raw(pa, size).ok_or_else(|| {
                DtError::prop(&node.path, "reg", format!("{pa:#x} size {size:#x} runs past the physical address space"))
            })?);
        }
    }
    Ok(Device { node: node.path.clone(), compatible: node.first_string("compatible").map(String::from), regs })
}

/// Translates a bus address up through `chain` (root first, the device's parent last).
fn translate(chain: &[&Node<'_>], mut addr: u64) -> Option<u64> {
    // Walk from the device's parent up to (not including) the root.
    for i in (1..chain.len()).rev() {
        let bus = chain[i];
        let parent = chain[i - 1];
        let Some(ranges) = bus.prop("ranges") else {
            // No `ranges`: the bus is not memory-mapped; keep the address as is
            // (common for simple-bus nodes written without it).
            continue;
        };
        if ranges.is_empty() {
            continue; // identity
        }
        let child = bus.cells().ok()?;
        let up = parent.cells().ok()?;
        let entry = 4 * (child.address + up.address + child.size) as usize;
        if entry == 0 || ranges.len() % entry != 0 {
            return None;
        }
        let mut hit = None;
        for e in ranges.chunks_exact(entry) {
            let (c, rest) = e.split_at(4 * child.address as usize);
            let (p, s) = rest.split_at(4 * up.address as usize);
            let (c, p, s) = (super::tree::cells_to_u64(c), super::tree::cells_to_u64(p), super::tree::cells_to_u64(s));
            if addr >= c && addr - c < s {
                hit = p.checked_add(addr - c);
                break;
            }
        }
        addr = hit?;
    }
    Some(addr)
}
