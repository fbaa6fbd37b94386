//! The device tree as an owned tree of nodes and raw properties, read through fdt 0.2's fallible API.
//!
//! carve asks the `fdt` crate only for what it does safely once the header is
//! checked (node names, raw properties, children) and interprets every value
//! itself, so cell counts, string terminators and lengths are checked in one
//! place. The tree borrows the blob: names and values are slices of it.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use fdt::nodes::{Node as FdtNode, NodeChildrenIter};
use fdt::parsing::{unaligned::UnalignedParser, NoPanic};
use fdt::Fdt;

use super::header::{Header, HeaderError};
use crate::addr::PhysRange;

/// Deeper trees are refused: real ones are under 10 levels.
pub const MAX_DEPTH: usize = 32;
/// More nodes are refused: Debian's largest board DTB (am572x-idk) has 860.
pub const MAX_NODES: usize = 4096;
/// Longer string lists are refused (a `compatible` has a handful).
pub const MAX_STRINGS: usize = 256;
/// Longer `reg`-like properties are refused (real ones have a few entries).
pub const MAX_REG_ENTRIES: usize = 1024;
/// Longer node names are refused: the specification allows 31 characters (plus `@unit`).
pub const MAX_NAME: usize = 255;
/// The most heap a tree may take, counted as [`NODE_COST`] per node, [`PROP_COST`]
/// per property and the bytes of each node's name and path (the same count on
/// every target, so the plan tool and the monitor refuse the same trees). The
/// monitor reads the tree on a small heap: a tree that would not fit is
/// refused with the numbers rather than left to run it out of memory. Debian's
/// largest board DTB (am572x-idk) counts 205 KiB; the monitor's heap holds it in 302 KiB.
pub const MAX_TREE_BYTES: usize = 512 << 10;
/// What one node costs in [`MAX_TREE_BYTES`], besides its name and path.
pub const NODE_COST: usize = 64;
/// What one property costs in [`MAX_TREE_BYTES`] (its value stays in the blob).
pub const PROP_COST: usize = 16;

type P<'a> = (UnalignedParser<'a>, NoPanic);

/// One property: its name and raw big-endian value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prop<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// One node, with its full path for messages.
#[derive(Clone, Debug)]
pub struct Node<'a> {
    /// `name@unit`, or `` for the root.
    pub name: String,
    /// `/a/b@1`; `/` for the root.
    pub path: String,
    pub props: Vec<Prop<'a>>,
    pub children: Vec<Node<'a>>,
}

/// The whole tree and the header fields carve uses.
#[derive(Clone, Debug)]
pub struct Tree<'a> {
    pub header: Header,
    pub root: Node<'a>,
    pub memreserve: Vec<PhysRange>,
    /// What the tree counts against [`MAX_TREE_BYTES`].
    pub held_bytes: usize,
}

/// Why a blob could not be read as a tree, or a value in it is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DtError {
    Header(HeaderError),
    /// The structure block does not parse; `what` is the parser's reason.
    Structure {
        near: String,
        what: String,
    },
    TooDeep {
        path: String,
    },
    TooManyNodes,
    /// A node name longer than [`MAX_NAME`].
    NameTooLong {
        parent: String,
        len: usize,
    },
    /// The tree would take more than [`MAX_TREE_BYTES`] to hold.
    TooLarge {
        near: String,
        nodes: usize,
        props: usize,
    },
    /// A property whose value is malformed; names the node, the property and the problem.
    Property {
        path: String,
        prop: &'static str,
        problem: String,
    },
    /// A node the description needs that is missing or wrong; a sentence.
    Node {
        path: String,
        problem: String,
    },
}

impl From<HeaderError> for DtError {
    fn from(e: HeaderError) -> Self {
        DtError::Header(e)
    }
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(e) => write!(f, "{e}"),
            Self::Structure { near, what } => write!(f, "FDT structure block: {what} (near {near})"),
            Self::TooDeep { path } => write!(f, "{path}: nodes nest deeper than {MAX_DEPTH} levels"),
            Self::TooManyNodes => write!(f, "FDT has more than {MAX_NODES} nodes; carve reads up to {MAX_NODES}"),
            Self::NameTooLong { parent, len } => write!(
                f,
                "{parent}: a child's name is {len} bytes long; carve reads names of up to {MAX_NAME} (the specification allows 31)"
            ),
            Self::TooLarge { near, nodes, props } => write!(
                f,
                "FDT needs more than {} KiB to hold ({nodes} nodes and {props} properties read, up to {near}); carve reads smaller trees",
                MAX_TREE_BYTES >> 10
            ),
            Self::Property { path, prop, problem } => write!(f, "{path}: {prop}: {problem}"),
            Self::Node { path, problem } => write!(f, "{path}: {problem}"),
        }
    }
}

impl DtError {
    pub fn prop(path: &str, prop: &'static str, problem: impl Into<String>) -> Self {
        DtError::Property { path: path.into(), prop, problem: problem.into() }
    }
    pub fn node(path: &str, problem: impl Into<String>) -> Self {
        DtError::Node { path: path.into(), problem: problem.into() }
    }
}

impl<'a> Tree<'a> {
    /// Validates the header, then reads the whole structure block into a tree.
    /// Never panics, whatever `blob` holds.
    pub fn parse(blob: &'a [u8]) -> Result<Self, DtError> {
        let header = Header::parse(blob)?;
        let memreserve = header.memreserve(blob)?;
        let blob = &blob[..header.totalsize as usize];
        // Strings must end in their terminator inside the strings block: fdt 0.2
        // would otherwise read a property name past it.
        let strings = &blob[header.off_dt_strings as usize..][..header.size_dt_strings as usize];
        if !strings.is_empty() && strings.last() != Some(&0) {
            return Err(DtError::Structure {
                near: String::from("strings block"),
                what: String::from("the last string has no terminating NUL"),
            });
        }
        let fdt = Fdt::<P>::new_unaligned_fallible(blob)
            .map_err(|e| DtError::Structure { near: String::from("header"), what: format!("{e}") })?;
        let root = fdt.root().map_err(|e| structure("/", e))?;
        let root_node = fdt::nodes::AsNode::as_node(&root);
        let mut budget = Budget::default();
        let root = convert(root_node, &mut budget)?;
        Ok(Tree { header, root, memreserve, held_bytes: budget.bytes })
    }

    /// The node at `path` (`/`, `/chosen`, `/soc/serial@1000`). A component
    /// without a unit address matches a node whose name has none.
    pub fn find(&self, path: &str) -> Option<&Node<'a>> {
        let mut node = &self.root;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            node = node.child(part)?;
        }
        Some(node)
    }
}

fn structure(near: &str, e: fdt::FdtError) -> DtError {
    DtError::Structure { near: String::from(near), what: format!("{e}") }
}

/// What the tree read so far holds, against [`MAX_NODES`] and [`MAX_TREE_BYTES`].
#[derive(Default)]
struct Budget {
    nodes: usize,
    props: usize,
    bytes: usize,
}

impl Budget {
    fn take(&mut self, path: &str, bytes: usize) -> Result<(), DtError> {
        self.bytes = self.bytes.saturating_add(bytes);
        if self.bytes > MAX_TREE_BYTES {
            let near = String::from(if path.is_empty() { "/" } else { path });
            return Err(DtError::TooLarge { near, nodes: self.nodes, props: self.props });
        }
        Ok(())
    }
}

/// The whole tree below `root`, read without recursion: the monitor reads it
/// on a 16 KiB stack, and a frame per level of nesting would not fit
/// [`MAX_DEPTH`] levels there. The open nodes wait on a heap stack instead.
fn convert<'a>(root: FdtNode<'a, P<'a>>, budget: &mut Budget) -> Result<Node<'a>, DtError> {
    let mut open: Vec<(Node<'a>, NodeChildrenIter<'a, P<'a>>)> = Vec::new();
    open.push(open_node(root, "", 0, budget)?);
    loop {
        let depth = open.len();
        let Some((parent, children)) = open.last_mut() else {
            return Err(DtError::Structure { near: String::from("/"), what: String::from("no root node") });
        };
        match children.next() {
            Some(child) => {
                let child = child.map_err(|e| structure(&parent.path, e))?;
                let next = open_node(child, &parent.path, depth, budget)?;
                open.push(next);
            }
            None => {
                let Some((done, _)) = open.pop() else { continue };
                unique_names(&done)?;
                match open.last_mut() {
                    Some((parent, _)) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
        }
    }
}

/// Refuses two children of `node` with one name: a path must name one node
/// (Devicetree Specification v0.4, 2.2.3 "Path Names": an ambiguous path is
/// undefined behaviour). carve names nodes by path everywhere (the console,
/// the GIC, the guest DTB writer's selection), so it reads no such tree; dtc
/// and libfdt (U-Boot's `fdt_add_subnode`) never write one.
fn unique_names(node: &Node<'_>) -> Result<(), DtError> {
    if node.children.len() < 2 {
        return Ok(());
    }
    let mut names: Vec<&str> = node.children.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(DtError::node(
            &node.path,
            format!("two children are named {}; sibling nodes need distinct names, or their path is ambiguous", w[0]),
        )),
        None => Ok(()),
    }
}

/// One node read with its properties and checked (name, depth, budget), and
/// the iterator over its children; `depth` is 0 for the root.
fn open_node<'a>(
    node: FdtNode<'a, P<'a>>,
    parent_path: &str,
    depth: usize,
    budget: &mut Budget,
) -> Result<(Node<'a>, NodeChildrenIter<'a, P<'a>>), DtError> {
    budget.nodes += 1;
    if budget.nodes > MAX_NODES {
        return Err(DtError::TooManyNodes);
    }
    let name_parsed = node.name().map_err(|e| structure(parent_path, e))?;
    let len = name_parsed.name.len() + name_parsed.unit_address.map_or(0, |u| u.len() + 1);
    let parent = || String::from(if parent_path.is_empty() { "/" } else { parent_path });
    if len > MAX_NAME {
        return Err(DtError::NameTooLong { parent: parent(), len });
    }
    // Names end up in one-line messages and logs: a line break in one would split them.
    let unit = name_parsed.unit_address.unwrap_or("");
    if let Some(c) = name_parsed.name.chars().chain(unit.chars()).find(|c| c.is_control()) {
        return Err(DtError::node(
            &parent(),
            format!("a child's name holds the control character U+{:04X}; node names are printable", c as u32),
        ));
    }
    let name = raw_name(name_parsed);
    let path = if depth == 0 {
        String::from("/")
    } else if parent_path == "/" {
        format!("/{name}")
    } else {
        format!("{parent_path}/{name}")
    };
    if depth > MAX_DEPTH {
        return Err(DtError::TooDeep { path });
    }
    budget.take(&path, NODE_COST + name.len() + path.len())?;
    let mut props = Vec::new();
    for p in node.properties().map_err(|e| structure(&path, e))?.iter() {
        let p = p.map_err(|e| structure(&path, e))?;
        budget.props += 1;
        budget.take(&path, PROP_COST)?;
        props.push(Prop { name: p.name, value: p.value });
    }
    let children = node.children().map_err(|e| structure(&path, e))?.iter();
    Ok((Node { name, path, props, children: Vec::new() }, children))
}

/// The node's name as written in the blob: `name@unit`, or `` for the root.
fn raw_name(n: fdt::nodes::NodeName<'_>) -> String {
    match n.unit_address {
        Some(unit) => format!("{}@{}", n.name, unit),
        None if n.name == "/" => String::new(),
        None => String::from(n.name),
    }
}

impl<'a> Node<'a> {
    pub fn prop(&self, name: &str) -> Option<&'a [u8]> {
        self.props.iter().find(|p| p.name == name).map(|p| p.value)
    }

    pub fn has_prop(&self, name: &str) -> bool {
        self.props.iter().any(|p| p.name == name)
    }

    /// The child called `name`; `name` without `@unit` also matches `name@anything`
    /// when exactly that base name is asked for and no exact match exists.
    pub fn child(&self, name: &str) -> Option<&Node<'a>> {
        self.children.iter().find(|c| c.name == name).or_else(|| {
            if name.contains('@') {
                None
            } else {
                self.children.iter().find(|c| c.base_name() == name)
            }
        })
    }

    /// The name without its unit address.
    pub fn base_name(&self) -> &str {
        self.name.split('@').next().unwrap_or(&self.name)
    }

    /// A string property: one NUL-terminated UTF-8 string.
    pub fn str_prop(&self, name: &'static str) -> Result<Option<&'a str>, DtError> {
        match self.prop(name) {
            None => Ok(None),
            Some(v) => {
                let mut it = strings(v).map_err(|p| DtError::prop(&self.path, name, p))?;
                Ok(it.next())
            }
        }
    }

    /// A string-list property such as `compatible`; more than [`MAX_STRINGS`] strings are refused.
    pub fn strings_prop(&self, name: &'static str) -> Result<Vec<&'a str>, DtError> {
        match self.prop(name) {
            None => Ok(Vec::new()),
            Some(v) => {
                let it = strings(v).map_err(|p| DtError::prop(&self.path, name, p))?;
                let mut out = Vec::new();
                for s in it {
                    if out.len() == MAX_STRINGS {
                        let n = v.iter().filter(|&&b| b == 0).count();
                        return Err(DtError::prop(
                            &self.path,
                            name,
                            format!("{n} strings; carve reads lists of up to {MAX_STRINGS}"),
                        ));
                    }
                    out.push(s);
                }
                Ok(out)
            }
        }
    }

    /// The first string of a string-list property, if the list ends in its NUL
    /// and that string is UTF-8 (only the first string is looked at).
    pub fn first_string(&self, name: &str) -> Option<&'a str> {
        match self.prop(name)? {
            [body @ .., 0] => core::str::from_utf8(body.split(|&b| b == 0).next()?).ok(),
            _ => None,
        }
    }

    /// Whether `compatible` lists `what`. One without its final NUL matches nothing.
    /// Compares bytes, string by string: a list of a million strings costs one pass.
    pub fn is_compatible(&self, what: &str) -> bool {
        match self.prop("compatible") {
            Some([body @ .., 0]) => body.split(|&b| b == 0).any(|s| s == what.as_bytes()),
            _ => false,
        }
    }

    /// A one-cell property.
    pub fn u32_prop(&self, name: &'static str) -> Result<Option<u32>, DtError> {
        match self.prop(name) {
            None => Ok(None),
            Some(v) if v.len() == 4 => Ok(Some(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))),
            Some(v) => Err(DtError::prop(&self.path, name, format!("{} bytes, expected one 4-byte cell", v.len()))),
        }
    }

    /// A number in one or two cells (by length).
    pub fn u64_prop(&self, name: &'static str) -> Result<Option<u64>, DtError> {
        match self.prop(name) {
            None => Ok(None),
            Some(v) if v.len() == 4 || v.len() == 8 => Ok(Some(cells_to_u64(v))),
            Some(v) => Err(DtError::prop(&self.path, name, format!("{} bytes, expected one or two cells", v.len()))),
        }
    }

    /// `status` is absent, `okay` or `ok`.
    pub fn is_enabled(&self) -> bool {
        match self.prop("status") {
            None => true,
            Some(v) => matches!(strings(v).ok().and_then(|mut s| s.next()), Some("okay" | "ok")),
        }
    }

    /// This node's `#address-cells` / `#size-cells` (for its children), checked:
    /// carve reads addresses of 1 or 2 cells and sizes of 0 (for buses), 1 or 2.
    pub fn cells(&self) -> Result<Cells, DtError> {
        let address = self.u32_prop("#address-cells")?.unwrap_or(2);
        let size = self.u32_prop("#size-cells")?.unwrap_or(1);
        if !(1..=2).contains(&address) {
            return Err(DtError::prop(
                &self.path,
                "#address-cells",
                format!("{address}; carve reads addresses of 1 or 2 cells (up to 64 bits)"),
            ));
        }
        if size > 2 {
            return Err(DtError::prop(
                &self.path,
                "#size-cells",
                format!("{size}; carve reads sizes of 0, 1 or 2 cells"),
            ));
        }
        Ok(Cells { address, size })
    }

    /// Walk every node below this one (this one included), depth first.
    pub fn walk<'t>(&'t self, f: &mut impl FnMut(&'t Node<'a>)) {
        f(self);
        for c in &self.children {
            c.walk(f);
        }
    }
}

/// The cell counts a parent gives its children's `reg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cells {
    pub address: u32,
    pub size: u32,
}

impl Cells {
    pub fn entry_bytes(self) -> usize {
        4 * (self.address + self.size) as usize
    }

    /// Splits a `reg`-like value into (address, size) pairs. `path` and `prop` name it in errors.
    pub fn pairs(self, path: &str, prop: &'static str, v: &[u8]) -> Result<Vec<(u64, u64)>, DtError> {
        let entry = self.entry_bytes();
        if self.size == 0 {
            return Err(DtError::prop(path, prop, "the parent's #size-cells is 0, so it holds no sizes"));
        }
        if v.len() / entry > MAX_REG_ENTRIES {
            return Err(DtError::prop(
                path,
                prop,
                format!("{} entries; carve reads up to {MAX_REG_ENTRIES}", v.len() / entry),
            ));
        }
        if !v.len().is_multiple_of(entry) {
            return Err(DtError::prop(
                path,
                prop,
                format!(
                    "{} bytes is not a whole number of ({} address + {} size) cell entries",
                    v.len(),
                    self.address,
                    self.size
                ),
            ));
        }
        Ok(v.chunks_exact(entry)
            .map(|e| {
                let (a, s) = e.split_at(4 * self.address as usize);
                (cells_to_u64(a), cells_to_u64(s))
            })
            .collect())
    }
}

/// Big-endian cells (one or two) as a number.
pub fn cells_to_u64(v: &[u8]) -> u64 {
    v.chunks(4).fold(0u64, |acc, c| {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        (acc << 32) | u32::from_be_bytes(w) as u64
    })
}

/// The NUL-terminated strings of a value; the last must be terminated and all UTF-8.
pub fn strings(v: &[u8]) -> Result<impl Iterator<Item = &str>, String> {
    if v.is_empty() {
        return Err(String::from("empty, expected a string"));
    }
    if v.last() != Some(&0) {
        return Err(String::from("string without its terminating NUL"));
    }
    let body = &v[..v.len() - 1];
    let s = core::str::from_utf8(body).map_err(|_| String::from("not UTF-8 text"))?;
    Ok(s.split('\0'))
}
