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

use fdt::nodes::Node as FdtNode;
use fdt::parsing::{unaligned::UnalignedParser, NoPanic};
use fdt::Fdt;

use super::header::{Header, HeaderError};
use crate::addr::PhysRange;

/// Deeper trees are refused: real ones are under 10 levels.
pub const MAX_DEPTH: usize = 32;
/// More nodes are refused: Debian's largest board DTB has about 3,000.
pub const MAX_NODES: usize = 50_000;

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
            Self::TooManyNodes => write!(f, "FDT has more than {MAX_NODES} nodes"),
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
        let mut count = 0;
        let root = convert(root_node, String::new(), 0, &mut count)?;
        Ok(Tree { header, root, memreserve })
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

fn convert<'a>(
    node: FdtNode<'a, P<'a>>,
    parent_path: String,
    depth: usize,
    count: &mut usize,
) -> Result<Node<'a>, DtError> {
    *count += 1;
    if *count > MAX_NODES {
        return Err(DtError::TooManyNodes);
    }
    let name_parsed = node.name().map_err(|e| structure(&parent_path, e))?;
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
    let mut props = Vec::new();
    for p in node.properties().map_err(|e| structure(&path, e))?.iter() {
        let p = p.map_err(|e| structure(&path, e))?;
        props.push(Prop { name: p.name, value: p.value });
    }
    let mut children = Vec::new();
    for c in node.children().map_err(|e| structure(&path, e))?.iter() {
        let c = c.map_err(|e| structure(&path, e))?;
        children.push(convert(c, path.clone(), depth + 1, count)?);
    }
    Ok(Node { name, path, props, children })
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

    /// A string-list property such as `compatible`.
    pub fn strings_prop(&self, name: &'static str) -> Result<Vec<&'a str>, DtError> {
        match self.prop(name) {
            None => Ok(Vec::new()),
            Some(v) => Ok(strings(v).map_err(|p| DtError::prop(&self.path, name, p))?.collect()),
        }
    }

    /// Whether `compatible` lists `what`. A malformed `compatible` matches nothing.
    pub fn is_compatible(&self, what: &str) -> bool {
        self.prop("compatible").and_then(|v| strings(v).ok()).is_some_and(|mut it| it.any(|s| s == what))
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
