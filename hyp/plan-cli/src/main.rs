//! `scripts/plan DTB [--guest SIZE]... [--json]`: carve's memory plan for any DTB.
//!
//! Prints the physical map (RAM, carveouts, the monitor, guest extents), each
//! guest's movable part (the CMA pool that backs it) and the monitor's Hyp
//! virtual map, or the same as JSON. Exit status 0 with a plan, 1 with one
//! line on stderr for a refusal, 2 for a usage error.

mod report;

use std::process::ExitCode;

use carve_core::addr::PhysRange;
use carve_core::dt::machine::RamBank;
use carve_core::dt::Machine;
use carve_core::plan::{self, MonitorImage, PlanConfig};

const USAGE: &str =
    "usage: scripts/plan DTB [--guest SIZE]... [--json] [--monitor BASE,SIZE] [--vmalloc SIZE] [--dtb-at ADDR]
  DTB             a flattened device tree (a board's, or one of dts/)
  --guest SIZE    add a guest of SIZE (768M, 1G, 262144K) to those the tree describes
  --json          print the plan as JSON
  -m SIZE         the machine's RAM as QEMU's -m sets it: one bank of SIZE (bare number: MiB)
                  at the tree's lowest RAM base (QEMU virt: 0x40000000)
  --monitor B,S   the monitor's image is at B, S bytes (default: 8 MiB in the lowest free RAM)
  --vmalloc SIZE  the monitor's vmalloc budget, hole space included (default 240M)";

struct Args {
    dtb: String,
    json: bool,
    /// `-m`: replace the memory nodes by one bank of this size, as QEMU does.
    ram: Option<u64>,
    config: PlanConfig,
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'K' | 'k') => (&s[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&s[..i], 1 << 20),
        (i, 'G' | 'g') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    parse_num(num)?.checked_mul(mult)
}

fn parse_num(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16).ok(),
        None => s.replace('_', "").parse().ok(),
    }
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut dtb = None;
    let mut json = false;
    let mut ram = None;
    let mut config = PlanConfig { require_kernel: true, ..PlanConfig::default() };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => json = true,
            "-m" => {
                let v = it.next().ok_or("-m needs a size")?;
                let mib = v.chars().all(|c| c.is_ascii_digit());
                let size = if mib { v.parse::<u64>().ok().map(|m| m << 20) } else { parse_size(&v) };
                ram = Some(size.filter(|s| *s > 0).ok_or_else(|| format!("-m {v}: not a size"))?);
            }
            "--guest" => {
                let v = it.next().ok_or("--guest needs a size")?;
                let size = parse_size(&v).ok_or_else(|| format!("--guest {v}: not a size (try 768M or 1G)"))?;
                config.extra_guests.push(size);
            }
            "--vmalloc" => {
                let v = it.next().ok_or("--vmalloc needs a size")?;
                config.layout.vmalloc_size = parse_size(&v).ok_or_else(|| format!("--vmalloc {v}: not a size"))?;
            }
            "--monitor" => {
                let v = it.next().ok_or("--monitor needs BASE,SIZE")?;
                let (b, s) = v.split_once(',').ok_or_else(|| format!("--monitor {v}: expected BASE,SIZE"))?;
                let r = parse_num(b)
                    .zip(parse_size(s))
                    .and_then(|(b, s)| PhysRange::from_raw(b, s))
                    .ok_or_else(|| format!("--monitor {v}: not a physical range"))?;
                config.monitor_image = MonitorImage::At(r);
            }
            "-h" | "--help" => return Err(String::new()),
            _ if a.starts_with('-') => return Err(format!("unknown option {a}")),
            _ if dtb.is_none() => dtb = Some(a),
            _ => return Err(format!("one DTB at a time ({a})")),
        }
    }
    let dtb = dtb.ok_or("no DTB given")?;
    Ok(Args { dtb, json, ram, config })
}

/// The machine with one bank of `size` at its lowest RAM base: what QEMU's `-m` does to a `-dtb`.
fn with_ram(mut m: Machine, size: u64) -> Machine {
    let base = m.ram.first().map(|b| b.range.start()).unwrap_or(0x4000_0000);
    if let Some(range) = PhysRange::from_raw(base, size) {
        m.ram = vec![RamBank { node: "/memory (-m)".into(), range }];
        m.empty_memory.clear();
    }
    m
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("plan: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let blob = match std::fs::read(&args.dtb) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("plan: {}: {e}", args.dtb);
            return ExitCode::from(1);
        }
    };
    let machine = match Machine::from_dtb(&blob) {
        Ok(m) => match args.ram {
            Some(size) => with_ram(m, size),
            None => m,
        },
        Err(e) => {
            eprintln!("plan: {}: {e}", args.dtb);
            return ExitCode::from(1);
        }
    };
    let plan = match plan::plan(&machine, &args.config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("plan: {}: {e}", args.dtb);
            return ExitCode::from(1);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report::json(&machine, &plan)).expect("JSON of plain values"));
    } else {
        print!("{}", report::text(&args.dtb, &machine, &plan));
    }
    ExitCode::SUCCESS
}
