//! The plan over every board DTB in Debian's armhf kernel package, with a 256 MiB guest.
//!
//! Each must give a plan that passes `verify`, or a refusal that names a node
//! or part of the plan. None may panic. The DTBs come from `scripts/setup`'s
//! cache; without them this test fails and says so (it never skips).

use std::collections::BTreeMap;
use std::path::PathBuf;

use carve_core::dt::Machine;
use carve_core::plan::{self, PlanConfig};

fn dtb_dir() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    match std::env::var_os("CARVE_CACHE") {
        Some(c) => PathBuf::from(c).join("linux/dtbs"),
        None => root.join(".cache/linux/dtbs"),
    }
}

/// What happened to one board.
enum Outcome {
    Planned,
    Refused(String),
}

fn plan_one(blob: &[u8]) -> Result<Outcome, String> {
    let machine = match Machine::from_dtb(blob) {
        Ok(m) => m,
        Err(e) => return Ok(Outcome::Refused(e.to_string())),
    };
    let config = PlanConfig { extra_guests: vec![256 << 20], require_kernel: false, ..PlanConfig::default() };
    match plan::plan(&machine, &config) {
        Ok(p) => {
            plan::verify(&p)?;
            if p.guests.len() != 1 || p.guests[0].size != 256 << 20 {
                return Err(format!("{} guests planned, expected the one 256 MiB guest", p.guests.len()));
            }
            Ok(Outcome::Planned)
        }
        Err(e) => Ok(Outcome::Refused(e.to_string())),
    }
}

/// The kind of a refusal: its text with node names and numbers taken out.
fn reason_kind(msg: &str) -> String {
    let after = msg.split_once(": ").map(|(_, r)| r).unwrap_or(msg);
    after
        .split_whitespace()
        .map(|w| if w.chars().any(|c| c.is_ascii_digit()) || w.contains('@') || w.starts_with('/') { "_" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn every_debian_board_dtb_plans_or_is_refused_clearly() {
    let dir = dtb_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}: run scripts/setup to fetch Debian's board DTBs", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dtb"))
        .collect();
    files.sort();
    assert!(files.len() > 500, "only {} DTBs in {}: run scripts/setup", files.len(), dir.display());

    let mut planned = 0;
    let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut broken = Vec::new();
    for f in &files {
        let blob = std::fs::read(f).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        match std::panic::catch_unwind(|| plan_one(&blob)) {
            Err(_) => broken.push(format!("{name}: PANIC")),
            Ok(Err(e)) => broken.push(format!("{name}: plan broke an invariant: {e}")),
            Ok(Ok(Outcome::Planned)) => planned += 1,
            Ok(Ok(Outcome::Refused(msg))) => {
                // A clear refusal names what it is about before its colon.
                if !msg.contains(": ") || msg.len() < 20 {
                    broken.push(format!("{name}: unclear refusal \"{msg}\""));
                }
                refused.entry(reason_kind(&msg)).or_default().push(format!("{name}: {msg}"));
            }
        }
    }
    let n_refused: usize = refused.values().map(Vec::len).sum();
    println!("{} board DTBs: {planned} planned, {n_refused} refused, {} broken", files.len(), broken.len());
    let mut kinds: Vec<_> = refused.iter().collect();
    kinds.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    for (kind, v) in kinds.iter().take(10) {
        println!("  {:4}  {kind}\n        e.g. {}", v.len(), v[0]);
    }
    assert!(broken.is_empty(), "{} boards broke:\n{}", broken.len(), broken.join("\n"));
    assert_eq!(planned + n_refused, files.len());
}
