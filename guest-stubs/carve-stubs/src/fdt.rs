//! A minimal, bounds-checked reader of a flattened device tree: the `reg` ranges it lists.
//!
//! Devicetree Specification v0.4, chapter 5: a header of big-endian words,
//! a structure block of tokens (BEGIN_NODE name, PROP len nameoff value,
//! END_NODE, NOP, END), a strings block of property names. A node's `reg`
//! is read with its parent's `#address-cells` and `#size-cells` (defaults 2
//! and 1); nodes whose parent has `#size-cells = <0>` (CPUs) have no address
//! range and are skipped, as are cell counts above 2 (PCI addresses).
//! `ranges` are not applied: every range is taken as an address in the
//! parent bus's space, which is the guest's physical (IPA) space for the
//! trees carve writes (devices at the root or under buses with an empty
//! `ranges`).
//!
//! Every read is checked against the blob's length: a malformed tree is an
//! [`Error`], never an out-of-bounds read.

/// FDT header magic.
pub const MAGIC: u32 = 0xd00d_feed;
/// The header is ten big-endian words.
pub const HEADER_SIZE: usize = 40;

const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;
/// Nesting deeper than this is refused.
pub const MAX_DEPTH: usize = 16;

/// Why a blob could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The first word is not [`MAGIC`].
    BadMagic(u32),
    /// `totalsize` or a block's offset or size does not fit the blob.
    BadHeader,
    /// The structure block ends in the middle of a token.
    Truncated,
    /// An unknown token at this offset of the structure block.
    BadToken(u32),
    /// Nodes nested deeper than [`MAX_DEPTH`], or more END_NODEs than BEGIN_NODEs.
    BadNesting,
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            Error::BadMagic(m) => write!(f, "bad FDT magic {m:#010x}"),
            Error::BadHeader => write!(f, "FDT header sizes do not fit the blob"),
            Error::Truncated => write!(f, "FDT structure block truncated"),
            Error::BadToken(at) => write!(f, "bad FDT token at structure offset {at:#x}"),
            Error::BadNesting => write!(f, "FDT nodes badly nested"),
        }
    }
}

/// One address range of one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg<'a> {
    /// The node's name with its unit address (`pl011@9000000`); the root is "".
    pub node: &'a str,
    /// 1 for children of the root.
    pub depth: usize,
    /// `device_type = "memory"`, or a root child named `memory` / `memory@...`.
    pub is_memory: bool,
    pub base: u64,
    pub size: u64,
}

impl Reg<'_> {
    /// The end of the range (saturating at 2^64).
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    pub fn contains(&self, addr: u64) -> bool {
        self.base <= addr && addr < self.end()
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let w = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

/// `totalsize` from the first eight bytes of a blob, after checking the magic.
pub fn totalsize(header: &[u8]) -> Result<usize, Error> {
    let magic = be32(header, 0).ok_or(Error::BadHeader)?;
    if magic != MAGIC {
        return Err(Error::BadMagic(magic));
    }
    let size = be32(header, 4).ok_or(Error::BadHeader)? as usize;
    if size < HEADER_SIZE {
        return Err(Error::BadHeader);
    }
    Ok(size)
}

/// A checked view of a blob.
#[derive(Clone, Copy)]
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

/// One step of [`Fdt::walk`].
#[derive(Clone, Copy)]
enum Token<'a> {
    /// A node starts: its name with its unit address.
    Begin(&'a str),
    /// A property of the node being read: its name and value.
    Prop(&'a str, &'a [u8]),
    /// The node being read ends.
    End,
}

/// What is known about the node being walked.
#[derive(Clone, Copy)]
struct Level<'a> {
    name: &'a str,
    /// Its own `#address-cells` / `#size-cells`: how its children's `reg` read.
    address_cells: u32,
    size_cells: u32,
    reg: &'a [u8],
    device_type_memory: bool,
}

impl<'a> Level<'a> {
    const fn new(name: &'a str) -> Self {
        Level { name, address_cells: 2, size_cells: 1, reg: &[], device_type_memory: false }
    }
}

impl<'a> Fdt<'a> {
    /// Checks the header of `blob` (which may be longer than `totalsize`).
    pub fn new(blob: &'a [u8]) -> Result<Fdt<'a>, Error> {
        let total = totalsize(blob)?;
        let blob = blob.get(..total).ok_or(Error::BadHeader)?;
        let word = |i: usize| be32(blob, 4 * i).ok_or(Error::BadHeader);
        let (off_struct, off_strings) = (word(2)? as usize, word(3)? as usize);
        let (size_strings, size_struct) = (word(8)? as usize, word(9)? as usize);
        let block =
            |off: usize, size: usize| off.checked_add(size).and_then(|end| blob.get(off..end)).ok_or(Error::BadHeader);
        Ok(Fdt { structs: block(off_struct, size_struct)?, strings: block(off_strings, size_strings)? })
    }

    fn string_at(&self, off: usize) -> &'a str {
        let tail = self.strings.get(off..).unwrap_or(&[]);
        let end = tail.iter().position(|&c| c == 0).unwrap_or(tail.len());
        core::str::from_utf8(&tail[..end]).unwrap_or("?")
    }

    /// Walks the structure block, calling `f` for each node's start (its
    /// name), property (name, value) and end, checked all the way.
    fn walk(&self, mut f: impl FnMut(Token<'a>)) -> Result<(), Error> {
        let s = self.structs;
        let mut depth = 0usize;
        let mut pos = 0usize;
        loop {
            let token = be32(s, pos).ok_or(Error::Truncated)?;
            let at = pos as u32;
            pos += 4;
            match token {
                BEGIN_NODE => {
                    let tail = s.get(pos..).ok_or(Error::Truncated)?;
                    let len = tail.iter().position(|&c| c == 0).ok_or(Error::Truncated)?;
                    let name = core::str::from_utf8(&tail[..len]).unwrap_or("?");
                    pos = (pos + len + 1).next_multiple_of(4);
                    if depth == MAX_DEPTH {
                        return Err(Error::BadNesting);
                    }
                    depth += 1;
                    f(Token::Begin(name));
                }
                PROP => {
                    let len = be32(s, pos).ok_or(Error::Truncated)? as usize;
                    let nameoff = be32(s, pos + 4).ok_or(Error::Truncated)? as usize;
                    pos += 8;
                    let value = s.get(pos..pos.checked_add(len).ok_or(Error::Truncated)?).ok_or(Error::Truncated)?;
                    pos = (pos + len).next_multiple_of(4);
                    if depth == 0 {
                        return Err(Error::BadNesting);
                    }
                    f(Token::Prop(self.string_at(nameoff), value));
                }
                END_NODE => {
                    depth = depth.checked_sub(1).ok_or(Error::BadNesting)?;
                    f(Token::End);
                }
                NOP => {}
                END => return if depth == 0 { Ok(()) } else { Err(Error::BadNesting) },
                _ => return Err(Error::BadToken(at)),
            }
        }
    }

    /// Calls `f` for every `reg` range of every node, in tree order (a node's
    /// ranges when its END_NODE is reached: children's before their parent's).
    pub fn for_each_reg(&self, mut f: impl FnMut(Reg<'a>)) -> Result<(), Error> {
        let mut stack = [Level::new(""); MAX_DEPTH];
        // Number of open nodes; the node being read is stack[depth - 1].
        let mut depth = 0usize;
        self.walk(|t| match t {
            Token::Begin(name) => {
                stack[depth] = Level::new(name); // walk refuses nesting past MAX_DEPTH
                depth += 1;
            }
            Token::Prop(name, value) => {
                let node = &mut stack[depth - 1]; // walk refuses a property outside a node
                match name {
                    "#address-cells" => node.address_cells = be32(value, 0).unwrap_or(2),
                    "#size-cells" => node.size_cells = be32(value, 0).unwrap_or(1),
                    "reg" => node.reg = value,
                    "device_type" => node.device_type_memory = value.strip_suffix(&[0]).unwrap_or(value) == b"memory",
                    _ => {}
                }
            }
            Token::End => {
                depth -= 1; // walk refuses an END_NODE without its BEGIN_NODE
                let node = stack[depth];
                if depth >= 1 {
                    let parent = stack[depth - 1];
                    let memory = node.device_type_memory
                        || (depth == 1 && (node.name == "memory" || node.name.starts_with("memory@")));
                    emit_regs(&node, &parent, depth, memory, &mut f);
                }
            }
        })
    }

    /// The initrd `/chosen` names (`linux,initrd-start`, `linux,initrd-end`, one
    /// or two cells each), as `(start, end)`, if it names one.
    pub fn initrd(&self) -> Result<Option<(u64, u64)>, Error> {
        let (mut depth, mut in_chosen) = (0usize, false);
        let (mut start, mut end) = (None, None);
        self.walk(|t| match t {
            Token::Begin(name) => {
                in_chosen = depth == 1 && name == "chosen";
                depth += 1;
            }
            Token::Prop(name, value) if in_chosen && (value.len() == 4 || value.len() == 8) => {
                let v = cells_value(value, value.len() as u32 / 4);
                match name {
                    "linux,initrd-start" => start = Some(v),
                    "linux,initrd-end" => end = Some(v),
                    _ => {}
                }
            }
            Token::Prop(..) => {}
            Token::End => {
                depth -= 1;
                in_chosen = false;
            }
        })?;
        Ok(start.zip(end).filter(|(a, b)| a < b))
    }

    /// The first memory range (the guest's one dense bank), if any.
    pub fn memory(&self) -> Result<Option<Reg<'a>>, Error> {
        let mut found = None;
        self.for_each_reg(|r| {
            if r.is_memory && r.size > 0 && found.is_none() {
                found = Some(r);
            }
        })?;
        Ok(found)
    }
}

/// Reads a big-endian number of `cells` (0 to 2) words.
fn cells_value(b: &[u8], cells: u32) -> u64 {
    (0..cells as usize).fold(0u64, |v, i| (v << 32) | u64::from(be32(b, 4 * i).unwrap_or(0)))
}

fn emit_regs<'a>(node: &Level<'a>, parent: &Level<'a>, depth: usize, memory: bool, f: &mut impl FnMut(Reg<'a>)) {
    let (ac, sc) = (parent.address_cells, parent.size_cells);
    if sc == 0 || ac > 2 || sc > 2 {
        return;
    }
    let entry = 4 * (ac + sc) as usize;
    for chunk in node.reg.chunks_exact(entry) {
        let base = cells_value(chunk, ac);
        let size = cells_value(&chunk[4 * ac as usize..], sc);
        f(Reg { node: node.name, depth, is_memory: memory, base, size });
    }
}
