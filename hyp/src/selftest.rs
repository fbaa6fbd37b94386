//! `carve.selftest=` on the monitor's command line: which self-tests a run asks for.
//!
//! `carve.selftest=mm,cma` (or `all`) in `/chosen/bootargs`: `mm` runs the
//! memory self-tests and benchmarks at boot (`mm::selftest`); `cma` lets
//! guests use the CMA test calls (`vm::selftest`). `cma-no-tlbi` does too,
//! and breaks the monitor on purpose: its page moves leave the TLB alone, so
//! a guest keeps stale translations (the stale-translation test shows that
//! its check fails then); `no-zero` maps guest RAM on first touch without
//! zeroing it (the first-touch test's control); `all` includes neither. Only an image built with
//! the `selftest` feature (`scripts/build --selftest`) has them; a plain
//! image asked for them refuses to run rather than run without them.

/// The self-tests a `selftest` build knows.
pub const NAMES: &str = "mm, cma, cma-no-tlbi, no-zero";

/// What `carve.selftest=` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    /// `mm`: the memory self-tests and benchmarks, at boot.
    pub mm: bool,
    /// `cma`: the CMA test calls, for guests.
    pub cma: bool,
    /// `cma-no-tlbi`: the CMA test calls, with moves that skip the TLB invalidation.
    pub cma_no_tlbi: bool,
    /// `no-zero`: first touches map guest RAM without zeroing it.
    pub no_zero: bool,
}

impl Requested {
    /// Whether anything is asked for.
    pub fn any(&self) -> bool {
        self.mm || self.cma || self.no_zero
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
            "cma-no-tlbi" => (r.cma, r.cma_no_tlbi) = (true, true),
            "no-zero" => r.no_zero = true,
            "all" => (r.mm, r.cma) = (true, true),
            other => return Err(other),
        }
    }
    Ok(r)
}
