//! The monitor's own command line (`/chosen/bootargs` of the machine tree): the layout knobs it may override.
//!
//! Only `vmalloc=SIZE` is read, with the meaning seed 000 gives it: the size
//! of *all* vmalloc space, the virtual holes of `no-map` carveouts included
//! ([`LayoutConfig::vmalloc_size`]), so the dedicated area is what the holes
//! leave of it. Sizes are written as Linux's `memparse` reads them: a decimal
//! or `0x` hexadecimal number, optionally followed by `K`, `M` or `G` (either
//! case). Other words (`console=ttyAMA0`, ...) are left alone; when a word is
//! repeated the last one counts, as in Linux.
//!
//! The plan does not apply this by itself: the caller reads
//! [`Machine::bootargs`](crate::dt::Machine), and applies the overrides to the
//! [`LayoutConfig`] it plans with (a command-line option of a tool may then still win).

use alloc::format;

use super::layout::LayoutConfig;
use super::PlanError;
use crate::addr::{PAGE_SIZE, SIZE_4G};

/// What the bootargs override.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BootArgs {
    /// `vmalloc=`: all vmalloc space in bytes (rounded up to a page).
    pub vmalloc: Option<u64>,
}

impl BootArgs {
    /// `base` with these overrides applied.
    pub fn apply(&self, base: &LayoutConfig) -> LayoutConfig {
        LayoutConfig { vmalloc_size: self.vmalloc.unwrap_or(base.vmalloc_size), ..*base }
    }
}

/// A size as `memparse` reads it: `256M`, `0x10000000`, `1g`, `4096`. `None` if it is not one or overflows.
pub fn parse_size(s: &str) -> Option<u64> {
    let (digits, shift) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 10),
        b'm' | b'M' => (&s[..s.len() - 1], 20),
        b'g' | b'G' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    let n = match digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u64::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => digits.parse::<u64>().ok()?,
        None => return None,
    };
    n.checked_mul(1 << shift)
}

/// Reads the overrides in `bootargs`. A malformed or impossible `vmalloc=` is a
/// refusal naming `/chosen`, the word and why.
pub fn parse_bootargs(bootargs: &str) -> Result<BootArgs, PlanError> {
    let mut out = BootArgs::default();
    for word in bootargs.split_ascii_whitespace() {
        let Some(value) = word.strip_prefix("vmalloc=") else { continue };
        let size = parse_size(value).ok_or_else(|| {
            PlanError::new(
                "/chosen",
                format!("bootargs {word}: not a size (write e.g. vmalloc=256M or vmalloc=0x10000000)"),
            )
        })?;
        let size = size.checked_next_multiple_of(PAGE_SIZE).filter(|&s| s < SIZE_4G).ok_or_else(|| {
            PlanError::new("/chosen", format!("bootargs {word}: more than the 4 GiB a Hyp virtual address reaches"))
        })?;
        out.vmalloc = Some(size);
    }
    Ok(out)
}

/// `base` with the overrides of `bootargs` (none if there are no bootargs).
pub fn layout_config(bootargs: Option<&str>, base: &LayoutConfig) -> Result<LayoutConfig, PlanError> {
    Ok(match bootargs {
        Some(args) => parse_bootargs(args)?.apply(base),
        None => *base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{PhysRange, SIZE_2M};
    use crate::dt::machine::{Machine, RamBank, Reserved, ReservedKind};
    use crate::plan::layout::VmallocSource;
    use crate::plan::{plan, PlanConfig};
    use alloc::string::ToString;
    use alloc::vec;

    const MIB: u64 = 1 << 20;

    #[test]
    fn sizes_read_like_memparse() {
        assert_eq!(parse_size("256M"), Some(256 * MIB));
        assert_eq!(parse_size("256m"), Some(256 * MIB));
        assert_eq!(parse_size("1G"), Some(1 << 30));
        assert_eq!(parse_size("64k"), Some(64 << 10));
        assert_eq!(parse_size("0x10000000"), Some(0x1000_0000));
        assert_eq!(parse_size("0x10M"), Some(16 * MIB));
        assert_eq!(parse_size("0xfg"), Some(15 << 30), "0xf, then G");
        assert_eq!(parse_size("4096"), Some(4096));
        for bad in ["", "M", "0x", "12Q", "-1M", "1.5G", "0xfz", " 1M", "99999999999999999999"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert_eq!(parse_size("18446744073709551615K"), None, "overflow");
    }

    #[test]
    fn vmalloc_is_read_and_the_rest_left_alone() {
        let b = parse_bootargs("console=ttyAMA0 vmalloc=128M earlycon").unwrap();
        assert_eq!(b.vmalloc, Some(128 * MIB));
        assert_eq!(parse_bootargs("vmalloc=64M vmalloc=320M").unwrap().vmalloc, Some(320 * MIB), "last wins");
        assert_eq!(parse_bootargs("vmalloc=4097").unwrap().vmalloc, Some(8192), "whole pages");
        assert_eq!(parse_bootargs("console=ttyAMA0").unwrap(), BootArgs::default());
        assert_eq!(parse_bootargs("").unwrap(), BootArgs::default());
        let e = parse_bootargs("vmalloc=lots").unwrap_err().to_string();
        assert!(e.starts_with("/chosen: bootargs vmalloc=lots: not a size"), "{e}");
        let e = parse_bootargs("vmalloc=4G").unwrap_err().to_string();
        assert!(e.contains("4 GiB"), "{e}");
        let base = LayoutConfig::default();
        assert_eq!(layout_config(None, &base).unwrap(), base);
        assert_eq!(layout_config(Some("vmalloc=96M"), &base).unwrap().vmalloc_size, 96 * MIB);
    }

    /// `vmalloc=` counts hole space: with two 128 MiB holes, `vmalloc=320M`
    /// leaves a dedicated area of 64 MiB, and the total is the budget.
    #[test]
    fn the_budget_counts_the_holes() {
        let carve = |name: &str, base: u64| Reserved {
            name: name.into(),
            kind: ReservedKind::Static(vec![PhysRange::from_raw(base, 128 * MIB).unwrap()]),
            no_map: true,
            reusable: false,
            compatible: None,
            memreserve: false,
            phandle: None,
        };
        let m = Machine {
            ram: vec![RamBank { node: "/memory".into(), range: PhysRange::from_raw(0x4000_0000, 1280 * MIB).unwrap() }],
            reserved: vec![carve("a@50000000", 0x5000_0000), carve("b@60000000", 0x6000_0000)],
            cpus: vec![0],
            bootargs: Some("console=ttyAMA0 vmalloc=320M".into()),
            ..Machine::default()
        };
        let mut cfg = PlanConfig { require_kernel: false, ..PlanConfig::default() };
        cfg.layout = layout_config(m.bootargs.as_deref(), &cfg.layout).unwrap();
        let p = plan(&m, &cfg).unwrap();
        let l = &p.monitor;
        assert_eq!(l.vmalloc_in_holes(), 256 * MIB);
        assert!(l.vmalloc_total() >= 320 * MIB && l.vmalloc_total() < 320 * MIB + SIZE_2M, "{:#x}", l.vmalloc_total());
        let dedicated: u64 = l.vmalloc.iter().filter(|v| v.source == VmallocSource::Dedicated).map(|v| v.size).sum();
        assert!((64 * MIB..64 * MIB + SIZE_2M).contains(&dedicated));
    }
}
