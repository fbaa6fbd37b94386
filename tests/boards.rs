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

fn debian_dtb(name: &str) -> Vec<u8> {
    let path = dtb_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}: run scripts/setup", path.display()))
}

/// Versatile Express has no PSCI firmware: the monitor powers it off through
/// the configuration controller the tree's `arm,vexpress-shutdown` node names
/// (function 8 on the motherboard, site 0), and starts CPUs through SYS_FLAGS,
/// both in the system registers at 0x1c010000 (the iofpga bus's 0x10000,
/// translated through two buses' `ranges`).
#[test]
fn vexpress_powers_off_and_starts_cpus_through_its_system_registers() {
    use carve_core::addr::PhysRange;
    use carve_core::dt::machine::{CpuStart, PowerOff, UartKind};
    let m = Machine::from_dtb(&debian_dtb("vexpress-v2p-ca15-tc1.dtb")).unwrap();
    let sysreg = PhysRange::from_raw(0x1c01_0000, 0x1000).unwrap();
    assert_eq!(m.psci, None);
    assert_eq!(m.cpu_start, Some(CpuStart::VexpressSysFlags { sysreg }));
    assert_eq!(
        m.power_off,
        Some(PowerOff::VexpressSysCfg {
            node: "/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/mcc/shutdown".into(),
            sysreg,
            dcc: 0,
            function: 8,
            site: 0,
            position: 0,
            device: 0,
        }),
        "{:?}",
        m.warnings
    );
    assert_eq!(m.cpus, [0, 1]);
    // Its UARTs are PL011s.
    let blob = debian_dtb("vexpress-v2p-ca15-tc1.dtb");
    let tree = carve_core::dt::Tree::parse(&blob).unwrap();
    let uart = tree.find("/bus@8000000/motherboard-bus@8000000/iofpga-bus@300000000/serial@a0000").unwrap();
    assert_eq!(carve_core::dt::machine::uart_kind(uart).unwrap(), Some(UartKind::Pl011));
}

/// Debian's Orange Pi PC tree has no PSCI node (U-Boot's, or QEMU's Linux
/// loader, adds one): without it the monitor can neither power off nor
/// start a CPU, and says no guest can have a vCPU off the boot CPU; with the
/// node a loader adds (`method = "smc"`), both go through the firmware. Its
/// UARTs are `snps,dw-apb-uart` 8250s with `reg-shift = <2>` and 32-bit access.
#[test]
fn orangepi_pc_uses_the_psci_firmware_a_loader_names() {
    use carve_core::dt::machine::{CpuStart, PowerOff, UartKind};
    let blob = debian_dtb("sun8i-h3-orangepi-pc.dtb");
    let m = Machine::from_dtb(&blob).unwrap();
    assert_eq!((m.power_off.clone(), m.cpu_start.clone()), (None, None));
    assert_eq!(m.cpus, [0, 1, 2, 3]);
    assert_eq!(m.uart_kind, Some(UartKind::Ns16550 { reg_shift: 2, io_width: 4 }));

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("boards");
    std::fs::create_dir_all(&dir).unwrap();
    let with_psci = dir.join("orangepi-pc-psci.dtb");
    std::fs::write(&with_psci, &blob).unwrap();
    let fdtput = |args: &[&str]| {
        let out = std::process::Command::new(carve_tests::tool("fdtput")).arg(&with_psci).args(args).output().unwrap();
        assert!(out.status.success(), "fdtput {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    fdtput(&["-c", "/psci"]);
    fdtput(&["-t", "s", "/psci", "compatible", "arm,psci-1.0", "arm,psci-0.2", "arm,psci"]);
    fdtput(&["-t", "s", "/psci", "method", "smc"]);
    let m = Machine::from_dtb(&std::fs::read(&with_psci).unwrap()).unwrap();
    assert_eq!((m.power_off, m.cpu_start), (Some(PowerOff::Psci), Some(CpuStart::Psci)));
}
