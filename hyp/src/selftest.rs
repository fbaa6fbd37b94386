//! `carve.selftest=` on the monitor's command line: which self-tests a run asks for.
//!
//! `carve.selftest=mm,cma` (or `all`) in `/chosen/bootargs`: `mm` runs the
//! memory self-tests and benchmarks at boot (`mm::selftest`); `cma` lets
//! guests use the CMA test calls (`vm::selftest`). Only an image built with
//! the `selftest` feature (`scripts/build --selftest`) has them; a plain
//! image asked for them refuses to run rather than run without them.

/// The self-tests a `selftest` build knows.
pub const NAMES: &str = "mm, cma";

/// What `carve.selftest=` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    /// `mm`: the memory self-tests and benchmarks, at boot.
    pub mm: bool,
    /// `cma`: the CMA test calls, for guests.
    pub cma: bool,
}

impl Requested {
    /// Whether anything is asked for.
    pub fn any(&self) -> bool {
        self.mm || self.cma
    }
}

/// Reads every `carve.selftest=a,b,...` word of `bootargs`; an unknown name is
/// an error naming it.
pub fn requested(bootargs: Option<&str>) -> Result<Requested, &str> {
    let mut r = Requested::default();
    let words = bootargs.unwrap_or("").split_ascii_whitespace();
    for name in words.filter_map(|w| w.strip_prefix("carve.selftest=")).flat_map(|v| v.split(',')) {
        match name {
            "mm" => r.mm = true,
            "cma" => r.cma = true,
            "all" => r = Requested { mm: true, cma: true },
            other => return Err(other),
        }
    }
    Ok(r)
}
