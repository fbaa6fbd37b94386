//! Guest DTBs: the machine's tree as a Linux guest sees it under carve.
//!
//! The guest sees the machine unchanged except where the monitor changes it:
//! - one `memory` node, its dense IPA range;
//! - `/reserved-memory` only with the carveouts the guest owns (mapped 1:1);
//! - no `/memreserve/` entries (they are the machine's);
//! - `/chosen` rewritten: `bootargs`, `linux,initrd-start`/`-end`, `stdout-path`,
//!   and `carve,restarts` (the boots before this one: 0, patched in place by
//!   [`set_restarts`] when the monitor restarts the guest);
//! - PSCI 1.0/0.2 through `hvc`, the conduit the monitor traps;
//! - the first `cpus` CPU nodes, each started through PSCI;
//! - the devices passed through (the GIC's distributor and CPU interface, the
//!   timer, the console UART) and whatever they reference by phandle that has
//!   no `reg` of its own (fixed clocks, fixed regulators), with the buses that
//!   hold them;
//! - the devices the console UART cannot work without: the providers of its
//!   clocks, resets and pin control, and what those need in turn (a clock
//!   controller, a pin controller, the Versatile Express system registers its
//!   clocks are configured through). [`passed_through`] lists these devices
//!   with the console: a lone guest is given them all.
//! - for a lone guest whose node says `carve,devices = "all"`: the whole
//!   board, every node but the monitor's log UART and power-off node (and
//!   the CPUs the guest does not have), each device listed by [`passed_through`]; and, because
//!   the guest's RAM is remapped while devices see physical addresses,
//!   `dma-ranges` on the buses that hold them ([`dma_ranges`]: bus address =
//!   PA, CPU address = IPA, one entry per extent of the guest's RAM).
//!
//! Every other node with `reg` is dropped, so the guest never probes a device
//! the monitor did not map, and so is every node without `reg` that nothing
//! kept references (`gpio-keys` naming a dropped GPIO controller, say).
//! `aliases` keeps the entries whose node survives; `__symbols__` is dropped.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use vm_fdt::FdtWriter;

use super::machine::{cpu_mpidr, root_role, share_a_page, Device, DeviceGrant, PowerOff, RootRole};
use super::tree::{cells_to_u64, strings, Cells, DtError, Node, Tree};
use super::Machine;
use crate::addr::{Address, IpaRange, PhysRange};
use crate::plan::{Extent, GuestPlan};

#[cfg(test)]
#[path = "write_tests.rs"]
mod tests;

/// What the monitor tells a guest beyond its RAM and CPUs.
#[derive(Clone, Copy, Debug, Default)]
pub struct GuestDtbOptions<'s> {
    /// Where the monitor put the initrd in guest IPA space: `/chosen` `linux,initrd-start`/`-end`.
    pub initrd: Option<IpaRange>,
    /// The kernel command line: `/chosen` `bootargs`.
    pub bootargs: Option<&'s str>,
    /// Names (`fb@60000000`) of the `/reserved-memory` children this guest owns.
    /// They are kept with their `reg` unchanged: the monitor maps them 1:1.
    pub owned_carveouts: &'s [&'s str],
    /// The console UART is the monitor's emulated one (several guests share
    /// the machine): its node is written as an `arm,sbsa-uart` at the same
    /// address with the same interrupt, and `stdout-path` still names it.
    pub emulated_console: bool,
}

/// The most property and name bytes a guest DTB may hold. Guest trees are a
/// few KiB (QEMU virt's: 1.4 KiB); the cap keeps a machine tree with huge
/// properties on kept nodes from running the monitor's heap out while the DTB
/// is written: it is refused with the numbers instead.
pub const MAX_GUEST_DTB: usize = 256 << 10;

/// What a guest's PSCI node says it is: the standard function IDs apply.
pub const PSCI_COMPATIBLE: [&str; 2] = ["arm,psci-1.0", "arm,psci-0.2"];

/// The architected timer's bindings.
const TIMERS: [&str; 2] = ["arm,armv7-timer", "arm,armv8-timer"];

/// Properties whose cells may name other nodes by phandle (besides `pinctrl-N` and `*-supply`).
const PHANDLE_PROPS: [&str; 8] = [
    "interrupt-parent",
    "interrupts-extended",
    "clocks",
    "assigned-clock-parents",
    "power-domains",
    "resets",
    "dmas",
    "phys",
];

/// Writes the DTB the monitor hands `guest`: the machine's `tree` (read as
/// `machine`) with the changes listed in this module's documentation.
/// Never panics; a tree it cannot write for the guest is a [`DtError`] naming
/// the node and the numbers.
pub fn guest_dtb(
    tree: &Tree<'_>,
    machine: &Machine,
    guest: &GuestPlan,
    opts: &GuestDtbOptions<'_>,
) -> Result<Vec<u8>, DtError> {
    let sel = strip_for_guest(tree, machine, guest)?;
    check_owned(tree, opts.owned_carveouts)?;
    let mut w = FdtWriter::new().map_err(fdt_err("/"))?;
    if let Some(id) = guest_mpidrs(machine, guest).first().and_then(|&id| u32::try_from(id).ok()) {
        w.set_boot_cpuid_phys(id);
    }
    let mut out = Out { w, sel: &sel, tree, machine, guest, opts, written: 0 };
    out.root()?;
    out.w.finish().map_err(fdt_err("/"))
}

/// The MPIDR affinity values the guest's CPU nodes give its vCPUs, in order:
/// the `reg` of the machine's first `guest.cpus` CPU nodes. vCPU `i` must read
/// `mpidrs[i]` (through VMPIDR) and PSCI `CPU_ON` names vCPUs by these values.
pub fn guest_mpidrs<'m>(machine: &'m Machine, guest: &GuestPlan) -> &'m [u64] {
    let n = (guest.cpus as usize).min(machine.cpus.len());
    machine.cpus.get(..n).unwrap_or(&[])
}

/// The machine nodes a guest's tree keeps (before the monitor's edits), by
/// depth-first index into the tree.
#[derive(Clone, Debug)]
pub struct Selection<'t, 'a> {
    nodes: Vec<&'t Node<'a>>,
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    /// Written (as it is, or with the GIC or CPU edits).
    keep: Vec<bool>,
    /// Root children the writer replaces or filters, and their subtrees.
    special: Vec<Option<RootRole>>,
    gic: Option<usize>,
    cpus: Vec<usize>,
    /// The devices (nodes with `reg`) kept for the console: the UART and its
    /// providers; then those the guest's `carve,devices` names, and theirs
    /// (from [`Selection::given_from`] on); for a guest given the board,
    /// every device after them.
    devices: Vec<usize>,
    /// Where the devices the guest is given besides the console begin in `devices`.
    given_from: usize,
    /// Given the board: the root's children that are buses holding devices
    /// (their `dma-ranges` translate), and the buses below them (an empty
    /// `dma-ranges` where they have none, so Linux looks further up).
    dma_top: Vec<usize>,
    dma_inner: Vec<usize>,
}

impl Selection<'_, '_> {
    /// The paths of the machine nodes kept, in tree order (the root, buses,
    /// passed-through devices, what they reference, `/cpus` and the guest's CPUs).
    pub fn paths(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.nodes.len()).filter(|&i| self.keep[i]).map(|i| self.nodes[i].path.as_str())
    }

    /// Whether the node at `path` is kept.
    pub fn keeps(&self, path: &str) -> bool {
        self.index_of(path).is_some_and(|i| self.keep[i])
    }

    /// The index of the node at `path`, found as [`Tree::find`] finds it (by
    /// walking down the path, not by scanning every node: `aliases` may hold thousands).
    fn find(&self, path: &str) -> Option<usize> {
        let mut at = 0;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let kids = self.children.get(at)?;
            let exact = kids.iter().copied().find(|&c| self.nodes[c].name == part);
            at = exact.or_else(|| {
                if part.contains('@') {
                    None
                } else {
                    kids.iter().copied().find(|&c| self.nodes[c].base_name() == part)
                }
            })?;
        }
        (!self.nodes.is_empty()).then_some(at)
    }

    fn index_of(&self, path: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.path == path)
    }
}

/// Chooses the machine nodes `guest` sees: the devices passed through (GIC,
/// timer, console UART), the first `guest.cpus` CPUs, what they reference by
/// phandle that has no `reg`, and the nodes that contain them; given the
/// board, every node but the monitor's (`mark_board`).
pub fn strip_for_guest<'t, 'a>(
    tree: &'t Tree<'a>,
    machine: &Machine,
    guest: &GuestPlan,
) -> Result<Selection<'t, 'a>, DtError> {
    let mut sel = Selection {
        nodes: Vec::new(),
        parent: Vec::new(),
        children: Vec::new(),
        keep: Vec::new(),
        special: Vec::new(),
        gic: None,
        cpus: Vec::new(),
        devices: Vec::new(),
        given_from: 0,
        dma_top: Vec::new(),
        dma_inner: Vec::new(),
    };
    index(&mut sel, &tree.root, None, None);
    sel.gic = machine.gic.as_ref().and_then(|g| sel.index_of(&g.node));
    sel.cpus = guest_cpus(&sel, tree, guest)?;
    let mut seeds: Vec<usize> = sel.gic.into_iter().chain(sel.cpus.iter().copied()).collect();
    seeds.extend((0..sel.nodes.len()).filter(|&i| TIMERS.iter().any(|t| sel.nodes[i].is_compatible(t))));
    let console: Vec<usize> = machine.uart.as_ref().and_then(|u| sel.index_of(&u.node)).into_iter().collect();
    mark(&mut sel, &seeds, &console);
    sel.given_from = sel.devices.len();
    let named: Vec<usize> = guest
        .desc
        .as_ref()
        .map(|d| d.named.iter().filter_map(|p| sel.index_of(p)).filter(|i| !sel.devices.contains(i)).collect())
        .unwrap_or_default();
    mark(&mut sel, &[], &named);
    if gets_the_board(machine, guest) {
        mark_board(&mut sel, tree, machine);
    }
    Ok(sel)
}

/// Whether `guest` is given the whole board: it runs alone and its node says `carve,devices = "all"`.
pub fn gets_the_board(machine: &Machine, guest: &GuestPlan) -> bool {
    machine.guests.len() <= 1 && guest.desc.as_ref().is_some_and(|d| d.devices == DeviceGrant::All)
}

/// Keeps every node but the special root children, the CPUs the guest does
/// not have, the monitor's log UART and its power-off node; lists the devices among them (nodes
/// with `reg` on memory-mapped buses, [`on_mmio_bus`]) after the console's,
/// the GIC apart; and picks the buses that get `dma-ranges`.
fn mark_board(sel: &mut Selection<'_, '_>, tree: &Tree<'_>, machine: &Machine) {
    let cpus = tree.root.child("cpus").and_then(|c| sel.index_of(&c.path));
    // The monitor's own: its log UART, and the node it powers the board off
    // through (a guest's power-off must reach the monitor, as PSCI SYSTEM_OFF).
    let log = machine.log_uart.as_ref().and_then(|l| sel.index_of(&l.device.node));
    let power_off = match &machine.power_off {
        Some(PowerOff::VexpressSysCfg { node, .. }) => sel.index_of(node),
        _ => None,
    };
    let within = |sel: &Selection<'_, '_>, i: usize, top: Option<usize>| {
        top.is_some_and(|t| core::iter::successors(Some(i), |&a| sel.parent[a]).any(|a| a == t))
    };
    let (mut queue, mut with) = (Vec::new(), alloc::vec![false; sel.nodes.len()]);
    let mut listed = alloc::vec![false; sel.nodes.len()];
    for &d in &sel.devices {
        listed[d] = true;
    }
    for i in 1..sel.nodes.len() {
        if sel.special[i].is_some() || within(sel, i, cpus) || within(sel, i, log) || within(sel, i, power_off) {
            continue;
        }
        keep(sel, i, &mut queue, false, &mut with);
        queue.clear();
        if Some(i) != sel.gic && !listed[i] && on_mmio_bus(sel, i) {
            listed[i] = true;
            sel.devices.push(i);
        }
    }
    let buses = |sel: &Selection<'_, '_>, i: usize| sel.keep[i] && sel.nodes[i].has_prop("ranges");
    for &top in &sel.children[0] {
        let holds_devices = sel.devices.iter().any(|&d| d != top && within(sel, d, Some(top)));
        if sel.special[top].is_none() && buses(sel, top) && holds_devices {
            sel.dma_top.push(top);
        }
    }
    for i in 1..sel.nodes.len() {
        let below = sel.parent[i].is_some_and(|p| sel.dma_top.iter().any(|&t| within(sel, p, Some(t))));
        if below && buses(sel, i) && sel.children[i].iter().any(|&c| sel.keep[c]) {
            sel.dma_inner.push(i);
        }
    }
}

/// A device the monitor maps: a node with `reg` whose parent gives it sizes
/// and every ancestor below the root is a bus (no `reg`, or `ranges` that
/// translate into its parent), so `reg` is a physical window. An I2C or MDIO
/// child, whose `reg` is an address on its controller's bus, is none.
fn on_mmio_bus(sel: &Selection<'_, '_>, i: usize) -> bool {
    let Some(parent) = sel.parent[i] else { return false };
    if !sel.nodes[i].has_prop("reg") || !sel.nodes[parent].cells().is_ok_and(|c| c.size > 0) {
        return false;
    }
    core::iter::successors(Some(parent), |&a| sel.parent[a])
        .take_while(|&a| a != 0)
        .all(|a| !sel.nodes[a].has_prop("reg") || sel.nodes[a].has_prop("ranges"))
}

/// The devices the guest's tree lists besides the GIC (whose hypervisor
/// parts the writer leaves out): the console UART and the devices it depends
/// on, then, for a guest given the board ([`gets_the_board`]), every other
/// device on a memory-mapped bus; each with its `reg` windows translated to
/// physical addresses. A lone guest must have all of them mapped, 1:1.
pub fn passed_through(tree: &Tree<'_>, machine: &Machine, guest: &GuestPlan) -> Result<Vec<Device>, DtError> {
    let sel = strip_for_guest(tree, machine, guest)?;
    sel.devices.iter().map(|&i| super::machine::device(tree, sel.nodes[i])).collect()
}

/// The devices `guest` is given besides the console and what it needs: those
/// its `carve,devices` names and the devices they depend on that the console
/// does not (clock and reset providers with registers), then, given the
/// board, every other one. A guest that shares the machine is given exactly
/// these (its console is emulated); a lone one gets [`passed_through`].
pub fn given_devices(tree: &Tree<'_>, machine: &Machine, guest: &GuestPlan) -> Result<Vec<Device>, DtError> {
    let sel = strip_for_guest(tree, machine, guest)?;
    let given = sel.devices.get(sel.given_from..).unwrap_or(&[]);
    given.iter().map(|&i| super::machine::device(tree, sel.nodes[i])).collect()
}

/// Refuses guests given devices that share a 4 KiB page with another
/// guest's: the named devices are checked as the tree is read
/// ([`Machine::from_tree`]); this also covers the devices they depend on.
pub fn check_given(tree: &Tree<'_>, machine: &Machine, guests: &[GuestPlan]) -> Result<(), DtError> {
    if guests.len() < 2 {
        return Ok(());
    }
    let mut seen: Vec<(String, String, PhysRange)> = Vec::new();
    for g in guests {
        for d in given_devices(tree, machine, g)? {
            for r in d.regs.iter().filter(|r| r.size > 0) {
                if let Some((who, what, _)) = seen.iter().find(|(who, _, o)| *who != g.name && share_a_page(r, o)) {
                    return Err(DtError::node(
                        &d.node,
                        format!(
                            "given to {} (its carve,devices needs it) shares a 4 KiB page with {what}, given to {who}",
                            g.name
                        ),
                    ));
                }
                seen.push((g.name.clone(), d.node.clone(), *r));
            }
        }
    }
    Ok(())
}

/// The buses of `guest`'s tree that get translating `dma-ranges` (the
/// root's children holding devices, given the board), by path: empty unless
/// [`gets_the_board`]. Devices directly under the root are not covered:
/// Linux 6.1 translates no `dma-ranges` of the root itself.
pub fn dma_buses(tree: &Tree<'_>, machine: &Machine, guest: &GuestPlan) -> Result<Vec<String>, DtError> {
    let sel = strip_for_guest(tree, machine, guest)?;
    Ok(sel.dma_top.iter().map(|&i| sel.nodes[i].path.clone()).collect())
}

/// One `dma-ranges` entry: devices on the bus address `bus..bus + size`, the
/// CPU (the guest) sees it at `cpu..cpu + size`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRange {
    pub bus: u64,
    pub cpu: u64,
    pub size: u64,
}

/// The most entries carve composes from a bus's own `dma-ranges` (each is
/// split by the guest's extents, so the product is bounded too).
pub const MAX_DMA_RANGES: usize = 256;

/// The `dma-ranges` a bus gets in a guest whose RAM is `extents` (IPA to
/// PA): for each extent, devices address its physical frames and the guest
/// sees them at its IPAs. `existing` is the bus's own `dma-ranges` in the
/// machine's tree (bus address to PA; absent or empty: the identity), which
/// each extent is composed with, one entry per piece where both overlap.
/// `bus` is the bus's own cell counts (bus addresses and sizes), `parent`
/// its parent's (CPU addresses), as in `ranges`.
pub fn dma_ranges(
    path: &str,
    existing: Option<&[u8]>,
    bus: Cells,
    parent: Cells,
    extents: &[Extent],
) -> Result<Vec<DmaRange>, DtError> {
    let machine = match existing {
        Some(v) if !v.is_empty() => decode_dma_ranges(path, v, bus, parent)?,
        _ => alloc::vec![DmaRange { bus: 0, cpu: 0, size: u64::MAX }],
    };
    let mut out = Vec::new();
    for m in &machine {
        let m_end = m.cpu.saturating_add(m.size);
        for e in extents {
            let (pa, pa_end) = (e.pa.as_u64(), e.pa.as_u64().saturating_add(e.size));
            let (lo, hi) = (pa.max(m.cpu), pa_end.min(m_end));
            if lo < hi {
                let bus = m.bus.checked_add(lo - m.cpu).ok_or_else(|| {
                    DtError::prop(path, "dma-ranges", format!("bus address {:#x} + {:#x} overflows", m.bus, lo - m.cpu))
                })?;
                out.push(DmaRange { bus, cpu: e.ipa.as_u64() + (lo - pa), size: hi - lo });
            }
        }
    }
    Ok(out)
}

/// `ranges` as `dma-ranges` cells: bus address in `bus.address` cells, CPU
/// address in `parent.address` cells, size in `bus.size` cells.
pub fn encode_dma_ranges(path: &str, ranges: &[DmaRange], bus: Cells, parent: Cells) -> Result<Vec<u8>, DtError> {
    let mut out = Vec::with_capacity(ranges.len() * 4 * (bus.address + parent.address + bus.size) as usize);
    for r in ranges {
        for (value, n, what) in
            [(r.bus, bus.address, "bus address"), (r.cpu, parent.address, "CPU address"), (r.size, bus.size, "size")]
        {
            match n {
                2 => out.extend(value.to_be_bytes()),
                1 => out.extend(
                    u32::try_from(value)
                        .map_err(|_| {
                            DtError::prop(path, "dma-ranges", format!("{what} {value:#x} does not fit in one cell"))
                        })?
                        .to_be_bytes(),
                ),
                _ => return Err(DtError::prop(path, "dma-ranges", format!("{what} cannot be written in {n} cells"))),
            }
        }
    }
    Ok(out)
}

/// Reads `dma-ranges` cells back (the inverse of [`encode_dma_ranges`]).
pub fn decode_dma_ranges(path: &str, value: &[u8], bus: Cells, parent: Cells) -> Result<Vec<DmaRange>, DtError> {
    let entry = 4 * (bus.address + parent.address + bus.size) as usize;
    if entry == 0 || bus.size == 0 || !value.len().is_multiple_of(entry) {
        return Err(DtError::prop(
            path,
            "dma-ranges",
            format!("{} bytes, not whole entries of {entry} bytes (#address-cells and #size-cells)", value.len()),
        ));
    }
    if value.len() / entry > MAX_DMA_RANGES {
        return Err(DtError::prop(
            path,
            "dma-ranges",
            format!("{} entries; carve composes up to {MAX_DMA_RANGES}", value.len() / entry),
        ));
    }
    Ok(value
        .chunks_exact(entry)
        .map(|e| {
            let (b, rest) = e.split_at(4 * bus.address as usize);
            let (c, s) = rest.split_at(4 * parent.address as usize);
            DmaRange { bus: cells_to_u64(b), cpu: cells_to_u64(c), size: cells_to_u64(s) }
        })
        .collect())
}

/// Flattens the tree depth first; root children get their [`RootRole`].
fn index<'t, 'a>(sel: &mut Selection<'t, 'a>, node: &'t Node<'a>, parent: Option<usize>, special: Option<RootRole>) {
    let i = sel.nodes.len();
    sel.nodes.push(node);
    sel.parent.push(parent);
    sel.children.push(Vec::new());
    sel.keep.push(false);
    let special = match parent {
        Some(0) => root_role(node),
        _ => special,
    };
    sel.special.push(special);
    if let Some(p) = parent {
        if let Some(c) = sel.children.get_mut(p) {
            c.push(i);
        }
    }
    for c in &node.children {
        index(sel, c, Some(i), special);
    }
}

/// The first `guest.cpus` CPU nodes of `/cpus`, in order: the nodes
/// [`Machine::cpus`] counts ([`cpu_mpidr`]), so that vCPU `i`'s node says the
/// MPIDR [`guest_mpidrs`] gives it.
fn guest_cpus(sel: &Selection<'_, '_>, tree: &Tree<'_>, guest: &GuestPlan) -> Result<Vec<usize>, DtError> {
    let want = guest.cpus as usize;
    let cpus_node = tree.root.child("cpus");
    let all: Vec<usize> = match (cpus_node.and_then(|c| c.cells().ok()), cpus_node.and_then(|c| sel.index_of(&c.path)))
    {
        (Some(cells), Some(cpus)) => {
            sel.children[cpus].iter().copied().filter(|&c| cpu_mpidr(sel.nodes[c], cells).is_some()).collect()
        }
        _ => Vec::new(),
    };
    if all.len() < want && !(all.is_empty() && want == 1) {
        return Err(DtError::node(
            "/cpus",
            format!("{} wants {want} CPU(s), the tree describes {}", guest.name, all.len()),
        ));
    }
    Ok(all.into_iter().take(want).collect())
}

/// Keeps the root, the seeds, everything they reference (transitively) that
/// may be kept, and every ancestor of a kept node; for the `devices` seeds
/// (the console), also the devices they depend on ([`dependencies`]), and
/// theirs in turn, recorded in [`Selection::devices`].
fn mark(sel: &mut Selection<'_, '_>, seeds: &[usize], devices: &[usize]) {
    let phandles = phandles(sel);
    // (node, whether its device dependencies come too)
    let mut queue = Vec::new();
    let mut with_devices = alloc::vec![false; sel.nodes.len()];
    keep(sel, 0, &mut queue, false, &mut with_devices);
    for &s in seeds {
        keep(sel, s, &mut queue, false, &mut with_devices);
    }
    for &d in devices {
        keep(sel, d, &mut queue, true, &mut with_devices);
        sel.devices.push(d);
    }
    while let Some((i, devs)) = queue.pop() {
        let node = sel.nodes[i];
        for t in references(node, &phandles) {
            if referable(sel, t) {
                keep_subtree(sel, t, &mut queue, devs, &mut with_devices);
            }
        }
        if devs {
            for t in dependencies(node, sel, &phandles) {
                if sel.special[t].is_some() || Some(t) == sel.gic {
                    continue;
                }
                // The device is the node, or the nearest ancestor with `reg`
                // (a pin group's controller, say).
                let device =
                    core::iter::successors(Some(t), |&a| sel.parent[a]).find(|&a| sel.nodes[a].has_prop("reg"));
                if let Some(d) = device.filter(|&d| d != 0 && Some(d) != sel.gic && !sel.devices.contains(&d)) {
                    sel.devices.push(d);
                    keep(sel, d, &mut queue, true, &mut with_devices);
                }
                keep_subtree(sel, t, &mut queue, true, &mut with_devices);
            }
        }
    }
}

/// Marks `i` and its ancestors kept; queues each newly kept node for its
/// references (again when it is now reached on a device's behalf, `devs`).
fn keep(sel: &mut Selection<'_, '_>, i: usize, queue: &mut Vec<(usize, bool)>, devs: bool, with: &mut [bool]) {
    if sel.special.get(i).is_some_and(|s| s.is_some()) {
        return;
    }
    let mut at = Some(i);
    while let Some(k) = at {
        let news = !sel.keep[k] || (devs && !with[k]);
        if !news {
            break;
        }
        sel.keep[k] = true;
        with[k] |= devs;
        queue.push((k, devs));
        at = sel.parent[k];
    }
}

/// A referenced node comes with its children, except those with `reg`.
fn keep_subtree(sel: &mut Selection<'_, '_>, i: usize, queue: &mut Vec<(usize, bool)>, devs: bool, with: &mut [bool]) {
    keep(sel, i, queue, devs, with);
    for c in sel.children[i].clone() {
        if !sel.nodes[c].has_prop("reg") {
            keep_subtree(sel, c, queue, devs, with);
        }
    }
}

/// Properties through which a device needs another one to work, and the
/// provider's property that says how many argument cells follow each phandle
/// (`None`: a plain list of phandles). An interrupt parent counts (an
/// Allwinner pin controller's interrupts go through the R_INTC stacked on the
/// GIC); the GIC itself is passed through apart. DMA is left out: a device
/// given to a guest works without its DMA channels, and a DMA engine works on
/// guest physical addresses only with `dma-ranges` the monitor does not write yet.
const DEPENDENCIES: [(&str, Option<&str>); 6] = [
    ("clocks", Some("#clock-cells")),
    ("resets", Some("#reset-cells")),
    ("power-domains", Some("#power-domain-cells")),
    ("interrupt-parent", None),
    ("interrupts-extended", Some("#interrupt-cells")),
    ("arm,vexpress,config-bridge", None),
];

/// The nodes `node` depends on through [`DEPENDENCIES`], `pinctrl-N` and
/// `*-supply`, each phandle read with its provider's argument count (so an
/// argument never passes for a phandle). A malformed list stops where it breaks.
fn dependencies(node: &Node<'_>, sel: &Selection<'_, '_>, phandles: &BTreeMap<u32, usize>) -> Vec<usize> {
    let mut out = Vec::new();
    for p in &node.props {
        let args = match DEPENDENCIES.iter().find(|(name, _)| *name == p.name) {
            Some((_, args)) => *args,
            None if p.name.ends_with("-supply") || (follows(p.name) && p.name.starts_with("pinctrl-")) => None,
            None => continue,
        };
        let cells: Vec<u32> = p.value.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
        let mut at = 0;
        while let Some(&ph) = cells.get(at) {
            let Some(&t) = phandles.get(&ph) else { break };
            out.push(t);
            let n = args.and_then(|a| sel.nodes[t].u32_prop(a).ok().flatten()).unwrap_or(0) as usize;
            at += 1 + n;
        }
    }
    out
}

/// A referenced node is kept only if it has no `reg` (it is no device the
/// monitor would have to map), is not one the writer replaces, and sits under
/// nothing but buses, kept nodes and nodes without `reg`.
fn referable(sel: &Selection<'_, '_>, i: usize) -> bool {
    if sel.keep[i] || sel.special[i].is_some() || sel.nodes[i].has_prop("reg") {
        return false;
    }
    let mut at = sel.parent[i];
    while let Some(a) = at {
        let n = sel.nodes[a];
        if !(sel.keep[a] || !n.has_prop("reg") || n.has_prop("ranges")) {
            return false;
        }
        at = sel.parent[a];
    }
    true
}

/// Every node's `phandle` (or `linux,phandle`) value.
fn phandles(sel: &Selection<'_, '_>) -> BTreeMap<u32, usize> {
    let mut map = BTreeMap::new();
    for (i, n) in sel.nodes.iter().enumerate() {
        for name in ["phandle", "linux,phandle"] {
            if let Ok(Some(p)) = n.u32_prop(name) {
                if p != 0 && p != u32::MAX {
                    map.entry(p).or_insert(i);
                }
            }
        }
    }
    map
}

/// The nodes `node` may reference: every cell of a phandle-bearing property
/// that equals a known phandle (a cell that is really an argument and happens
/// to match only keeps an extra node without `reg`).
/// Lazily: a property of a few MiB must not become a list of as many entries.
fn references<'n>(node: &'n Node<'_>, phandles: &'n BTreeMap<u32, usize>) -> impl Iterator<Item = usize> + 'n {
    node.props
        .iter()
        .filter(|p| follows(p.name))
        .flat_map(|p| p.value.chunks_exact(4))
        .filter_map(|c| phandles.get(&u32::from_be_bytes([c[0], c[1], c[2], c[3]])).copied())
}

fn follows(prop: &str) -> bool {
    PHANDLE_PROPS.contains(&prop)
        || prop.ends_with("-supply")
        || prop.strip_prefix("pinctrl-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Every owned carveout must be a `/reserved-memory` child.
fn check_owned(tree: &Tree<'_>, owned: &[&str]) -> Result<(), DtError> {
    let rm = tree.root.child("reserved-memory");
    for name in owned {
        if !rm.is_some_and(|rm| rm.children.iter().any(|c| c.name == *name)) {
            return Err(DtError::node(
                &format!("/reserved-memory/{name}"),
                "the guest is to own this carveout, but the tree has no such node",
            ));
        }
    }
    Ok(())
}

/// The `/chosen` property that tells a guest how many times it was restarted.
pub const RESTARTS: &str = "carve,restarts";

/// Sets `/chosen/carve,restarts` of a guest DTB [`guest_dtb`] wrote to
/// `restarts`, in place (the blob keeps its size). An error names what is missing.
pub fn set_restarts(dtb: &mut [u8], restarts: u32) -> Result<(), &'static str> {
    let h = super::header::Header::parse(dtb).map_err(|_| "not a device tree")?;
    let word = |b: &[u8], at: usize| -> Option<u32> { Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?)) };
    let strings = h.off_dt_strings as usize..(h.off_dt_strings + h.size_dt_strings) as usize;
    let is_restarts = |b: &[u8], off: u32| -> bool {
        let want = RESTARTS.as_bytes();
        let from = strings.start.saturating_add(off as usize);
        from.checked_add(want.len() + 1).is_some_and(|e| e <= strings.end)
            && b.get(from..from + want.len()) == Some(want)
            && b.get(from + want.len()) == Some(&0)
    };
    let (mut at, end) = (h.off_dt_struct as usize, (h.off_dt_struct + h.size_dt_struct) as usize);
    let mut depth = 0u32;
    let mut in_chosen = false;
    while at + 4 <= end {
        match word(dtb, at).ok_or("truncated")? {
            1 => {
                // FDT_BEGIN_NODE: a NUL-terminated name, padded to 4 bytes.
                let name = dtb.get(at + 4..end).ok_or("truncated")?;
                let len = name.iter().position(|&c| c == 0).ok_or("an unterminated node name")?;
                depth += 1;
                in_chosen = depth == 2 && &name[..len] == b"chosen";
                at += 4 + (len + 1).next_multiple_of(4);
            }
            2 => {
                depth = depth.saturating_sub(1);
                in_chosen = false;
                at += 4;
            }
            3 => {
                // FDT_PROP: length, name offset, value padded to 4 bytes.
                let len = word(dtb, at + 4).ok_or("truncated")? as usize;
                let off = word(dtb, at + 8).ok_or("truncated")?;
                if in_chosen && len == 4 && is_restarts(dtb, off) {
                    dtb.get_mut(at + 12..at + 16).ok_or("truncated")?.copy_from_slice(&restarts.to_be_bytes());
                    return Ok(());
                }
                at += 12 + len.next_multiple_of(4);
            }
            4 => at += 4,
            _ => break,
        }
    }
    Err("no /chosen/carve,restarts")
}

fn fdt_err(path: &str) -> impl Fn(vm_fdt::Error) -> DtError + '_ {
    move |e| DtError::node(path, format!("cannot be written to the guest DTB: {e}"))
}

/// `value` as `n` big-endian cells, or an error naming the numbers.
fn encode(value: u64, n: u32, what: &str) -> Result<Vec<u8>, DtError> {
    match n {
        2 => Ok(value.to_be_bytes().to_vec()),
        1 => u32::try_from(value).map(|v| v.to_be_bytes().to_vec()).map_err(|_| {
            DtError::node("/", format!("{what} {value:#x} does not fit the root's one-cell #address-cells/#size-cells"))
        }),
        _ => Err(DtError::node("/", format!("{what} {value:#x} cannot be written in {n} cells"))),
    }
}

/// The writer's state: one guest DTB being written.
struct Out<'x, 't, 'a> {
    w: FdtWriter,
    sel: &'x Selection<'t, 'a>,
    tree: &'x Tree<'a>,
    machine: &'x Machine,
    guest: &'x GuestPlan,
    opts: &'x GuestDtbOptions<'x>,
    /// Property and name bytes written so far, against [`MAX_GUEST_DTB`].
    written: usize,
}

impl Out<'_, '_, '_> {
    /// Counts `bytes` more against [`MAX_GUEST_DTB`]; `path` is where the writer is.
    fn count(&mut self, path: &str, bytes: usize) -> Result<(), DtError> {
        self.written = self.written.saturating_add(bytes);
        if self.written > MAX_GUEST_DTB {
            return Err(DtError::node(
                path,
                format!(
                    "{}'s DTB would hold more than {} KiB of properties ({} bytes when this node is written); carve writes guest DTBs of up to that",
                    self.guest.name,
                    MAX_GUEST_DTB >> 10,
                    self.written
                ),
            ));
        }
        Ok(())
    }

    /// Writes one property, counted.
    fn prop(&mut self, path: &str, name: &str, value: &[u8]) -> Result<(), DtError> {
        self.count(path, name.len() + value.len() + 12)?;
        self.w.property(name, value).map_err(fdt_err(path))
    }

    /// Opens a node, counted.
    fn begin(&mut self, path: &str, name: &str) -> Result<vm_fdt::FdtWriterNode, DtError> {
        self.count(path, name.len() + 8)?;
        self.w.begin_node(name).map_err(fdt_err(path))
    }

    fn root(&mut self) -> Result<(), DtError> {
        let (sel, root) = (self.sel, &self.tree.root);
        let node = self.w.begin_node("").map_err(fdt_err("/"))?;
        self.props_as_they_are(root)?;
        let kids = &sel.children[0];
        let roles: Vec<Option<RootRole>> = kids.iter().map(|&c| sel.special[c]).collect();
        if !roles.contains(&Some(RootRole::Memory)) {
            self.memory()?;
        }
        let (mut memory, mut psci, mut chosen) = (false, false, false);
        for (&c, role) in kids.iter().zip(roles) {
            match role {
                Some(RootRole::Memory) if !memory => {
                    self.memory()?;
                    memory = true;
                }
                Some(RootRole::Psci) if !psci => {
                    // Always `psci`: the machine's node may be named anything
                    // (even `cpus`, which would then shadow the real one).
                    self.psci("psci")?;
                    psci = true;
                }
                Some(RootRole::Chosen) if !chosen => {
                    self.chosen(Some(sel.nodes[c]))?;
                    chosen = true;
                }
                Some(RootRole::ReservedMemory) => self.reserved_memory(sel.nodes[c])?,
                Some(RootRole::Aliases) => self.aliases(sel.nodes[c])?,
                Some(_) => {}
                None if sel.keep[c] => self.node(c)?,
                None => {}
            }
        }
        if !psci {
            self.psci("psci")?;
        }
        if !chosen {
            self.chosen(None)?;
        }
        self.w.end_node(node).map_err(fdt_err("/"))
    }

    /// `memory@<base>`: the guest's one dense bank, in the root's cell counts.
    fn memory(&mut self) -> Result<(), DtError> {
        let cells = self.tree.root.cells()?;
        let ram = self.guest.ipa_range();
        if cells.address == 1 && ram.end() > 1 << 32 {
            return Err(DtError::node(
                "/",
                format!(
                    "{}'s RAM {ram} ends above 4 GiB, which the root's #address-cells = 1 cannot describe",
                    self.guest.name
                ),
            ));
        }
        let mut reg = encode(ram.start(), cells.address, "guest RAM base")?;
        reg.extend(encode(ram.size, cells.size, "guest RAM size")?);
        let name = format!("memory@{:x}", ram.start());
        let sel = self.sel;
        if sel.children[0].iter().any(|&c| sel.keep[c] && sel.nodes[c].name == name) {
            return Err(DtError::node(
                &format!("/{name}"),
                format!(
                    "{} is given this node, which is not RAM, and its RAM node would take the same name",
                    self.guest.name
                ),
            ));
        }
        let node = self.w.begin_node(&name).map_err(fdt_err("/"))?;
        let path = format!("/{name}");
        self.w.property_string("device_type", "memory").map_err(fdt_err(&path))?;
        self.prop(&path, "reg", &reg)?;
        self.w.end_node(node).map_err(fdt_err(&path))
    }

    /// PSCI 1.0 (and 0.2) through HVC: the monitor traps it whatever the machine uses.
    fn psci(&mut self, name: &str) -> Result<(), DtError> {
        let path = format!("/{name}");
        let node = self.w.begin_node(name).map_err(fdt_err(&path))?;
        let compatible = PSCI_COMPATIBLE.iter().map(|s| String::from(*s)).collect();
        self.w.property_string_list("compatible", compatible).map_err(fdt_err(&path))?;
        self.w.property_string("method", "hvc").map_err(fdt_err(&path))?;
        self.w.end_node(node).map_err(fdt_err(&path))
    }

    /// `/chosen` from scratch: command line, initrd, and the console if it is passed through.
    fn chosen(&mut self, machine_chosen: Option<&Node<'_>>) -> Result<(), DtError> {
        let path = "/chosen";
        let node = self.w.begin_node("chosen").map_err(fdt_err(path))?;
        if let Some(args) = self.opts.bootargs {
            self.count(path, args.len() + 20)?;
            self.w.property_string("bootargs", args).map_err(fdt_err(path))?;
        }
        if let Some(initrd) = self.opts.initrd {
            let cells = if self.tree.root.cells()?.address == 2 { 2 } else { 1 };
            let start = encode(initrd.start(), cells, "initrd start")?;
            let end = encode(initrd.end(), cells, "initrd end")?;
            self.w.property("linux,initrd-start", &start).map_err(fdt_err(path))?;
            self.w.property("linux,initrd-end", &end).map_err(fdt_err(path))?;
        }
        if self.machine.uart.is_some() {
            if let Some(sp) = machine_chosen.and_then(|c| c.prop("stdout-path")) {
                self.prop(path, "stdout-path", sp)?;
            }
        }
        self.count(path, 24)?;
        self.w.property_u32(RESTARTS, 0).map_err(fdt_err(path))?;
        self.w.end_node(node).map_err(fdt_err(path))
    }

    /// `/reserved-memory` with only the owned children, or nothing.
    fn reserved_memory(&mut self, rm: &Node<'_>) -> Result<(), DtError> {
        let owned: Vec<&Node<'_>> =
            rm.children.iter().filter(|c| self.opts.owned_carveouts.contains(&c.name.as_str())).collect();
        if owned.is_empty() {
            return Ok(());
        }
        let node = self.begin(&rm.path, &rm.name)?;
        self.props_as_they_are(rm)?;
        for c in owned {
            self.subtree_as_it_is(c)?;
        }
        self.w.end_node(node).map_err(fdt_err(&rm.path))
    }

    /// `aliases` / `__symbols__` with only the entries whose path survives.
    fn aliases(&mut self, n: &Node<'_>) -> Result<(), DtError> {
        let kept: Vec<_> = n.props.iter().filter(|p| self.survives(p.value)).collect();
        if kept.is_empty() {
            return Ok(());
        }
        let node = self.begin(&n.path, &n.name)?;
        for p in kept {
            self.prop(&n.path, p.name, p.value)?;
        }
        self.w.end_node(node).map_err(fdt_err(&n.path))
    }

    /// Whether a path-valued property names a node the guest's tree has.
    fn survives(&self, value: &[u8]) -> bool {
        let Some(path) = strings(value).ok().and_then(|mut s| s.next()) else { return false };
        let Some(i) = self.sel.find(path).filter(|_| path.starts_with('/')) else { return false };
        let found = self.sel.nodes[i];
        match self.sel.special[i] {
            None => self.sel.keep[i],
            Some(RootRole::ReservedMemory) => self.owned(found),
            Some(RootRole::Chosen | RootRole::Psci) => self.sel.parent[i] == Some(0),
            Some(_) => false,
        }
    }

    /// An owned carveout, or `/reserved-memory` itself when it is written.
    fn owned(&self, n: &Node<'_>) -> bool {
        let owns = |name: &str| self.opts.owned_carveouts.contains(&name);
        if n.name == "reserved-memory" {
            n.children.iter().any(|c| owns(&c.name))
        } else {
            owns(&n.name) && n.path.matches('/').count() == 2
        }
    }

    /// A kept machine node, with the GIC's and the CPUs' edits, and its kept children.
    fn node(&mut self, i: usize) -> Result<(), DtError> {
        let sel = self.sel;
        let n = sel.nodes[i];
        let node = self.begin(&n.path, &n.name)?;
        if sel.gic == Some(i) {
            self.gic_props(i)?;
        } else if sel.cpus.contains(&i) {
            self.cpu_props(n)?;
        } else if self.opts.emulated_console && self.machine.uart.as_ref().is_some_and(|u| u.node == n.path) {
            self.emulated_console_props(n)?;
        } else if sel.dma_top.contains(&i) {
            self.dma_bus_props(n)?;
        } else {
            self.props_as_they_are(n)?;
            if sel.dma_inner.contains(&i) && !n.has_prop("dma-ranges") {
                self.prop(&n.path, "dma-ranges", &[])?;
            }
        }
        for &c in &sel.children[i] {
            if sel.keep[c] {
                self.node(c)?;
            }
        }
        self.w.end_node(node).map_err(fdt_err(&n.path))
    }

    /// The GIC as a guest's: distributor and CPU interface only (not GICH or
    /// GICV), and no maintenance interrupt.
    fn gic_props(&mut self, i: usize) -> Result<(), DtError> {
        let (sel, tree) = (self.sel, self.tree);
        let n = sel.nodes[i];
        let parent = sel.parent[i].map_or(&tree.root, |p| sel.nodes[p]);
        let two = 2 * parent.cells()?.entry_bytes();
        for p in &n.props {
            let value = match p.name {
                "interrupts" => continue,
                "reg" => p.value.get(..two).unwrap_or(p.value),
                _ => p.value,
            };
            self.prop(&n.path, p.name, value)?;
        }
        Ok(())
    }

    /// A bus under the root holding devices given to the guest: its
    /// `dma-ranges` map physical (bus) addresses to the guest's IPAs.
    fn dma_bus_props(&mut self, n: &Node<'_>) -> Result<(), DtError> {
        for p in n.props.iter().filter(|p| p.name != "dma-ranges") {
            self.prop(&n.path, p.name, p.value)?;
        }
        let (bus, parent) = (n.cells()?, self.tree.root.cells()?);
        let ranges = dma_ranges(&n.path, n.prop("dma-ranges"), bus, parent, &self.guest.extents)?;
        let value = encode_dma_ranges(&n.path, &ranges, bus, parent)?;
        self.prop(&n.path, "dma-ranges", &value)
    }

    /// A guest CPU: started through PSCI, whatever the machine uses.
    fn cpu_props(&mut self, n: &Node<'_>) -> Result<(), DtError> {
        for p in n.props.iter().filter(|p| !matches!(p.name, "enable-method" | "cpu-release-addr")) {
            self.prop(&n.path, p.name, p.value)?;
        }
        self.w.property_string("enable-method", "psci").map_err(fdt_err(&n.path))
    }

    /// The console as the monitor's emulated SBSA UART (`crate::vm::vuart`):
    /// its `reg` and interrupt kept, a fixed baud rate, no clocks or IDs.
    fn emulated_console_props(&mut self, n: &Node<'_>) -> Result<(), DtError> {
        self.prop(&n.path, "compatible", b"arm,sbsa-uart\0")?;
        for p in n.props.iter().filter(|p| matches!(p.name, "reg" | "interrupts" | "interrupt-parent" | "status")) {
            self.prop(&n.path, p.name, p.value)?;
        }
        self.prop(&n.path, "current-speed", &crate::vm::vuart::BAUD.to_be_bytes())
    }

    fn props_as_they_are(&mut self, n: &Node<'_>) -> Result<(), DtError> {
        for p in &n.props {
            self.prop(&n.path, p.name, p.value)?;
        }
        Ok(())
    }

    fn subtree_as_it_is(&mut self, n: &Node<'_>) -> Result<(), DtError> {
        let node = self.begin(&n.path, &n.name)?;
        self.props_as_they_are(n)?;
        for c in &n.children {
            self.subtree_as_it_is(c)?;
        }
        self.w.end_node(node).map_err(fdt_err(&n.path))
    }
}
