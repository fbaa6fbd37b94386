//! The malformed-input corpus: every device tree carve must refuse, every untidy one it must accept.
//!
//! `tests/corpus/bad/*.dts`: one case per file, refused with a one-line
//! message that names the node and the numbers, by the reader and plan
//! in-process, by the plan tool (`scripts/plan`'s binary: exit 1, one line on
//! stderr) and by the monitor under QEMU (logged, then exit 2 for a tree it
//! cannot read or 11 for one it cannot plan, within seconds).
//! `tests/corpus/untidy/*.dts`: legal but untidy trees that must plan (exit 0)
//! with the warning they deserve, and boot under the monitor (a guest, if the
//! tree has one, runs a four-instruction kernel that powers off through PSCI;
//! a ramdisk module is loaded where it says and must be copied into the guest).
//! `tests/corpus/fuzz-regressions/*.dtb`: inputs the fuzzer once crashed on,
//! run through the fuzz targets' own checks.
//!
//! Each `.dts` starts with `//` lines: a description, then directives:
//! - `// expect: TEXT` (bad, exactly one): a substring of the refusal;
//! - `// expect-monitor: TEXT` (bad): what the monitor logs instead, when it
//!   sees other bytes than the file (a blob in RAM has no end: see `patch`) or
//!   its own first look at the header (hyp/src/boot.rs) speaks first;
//! - `// patch: truncate EXPR`, `// patch: be32 EXPR = EXPR`,
//!   `// patch: byte EXPR = EXPR` (bad): what no DTS can say (corrupt headers,
//!   unterminated strings, offsets past the end) is made by patching the
//!   compiled blob. EXPR adds and subtracts numbers and the compiled blob's
//!   header fields (`totalsize`, `off_dt_struct`, `off_dt_strings`,
//!   `off_mem_rsvmap`, `size_dt_strings`, `size_dt_struct`, `version`).
//!   The monitor reads `totalsize` bytes: under QEMU a file shorter than
//!   that is followed by zeros;
//! - `// refused-by: guest-dtb` (bad): the tree plans, and the refusal comes
//!   when the monitor writes a guest's DTB; the plan tool, which writes none,
//!   plans it (exit 0). Without it a bad case is refused by the reader or the plan;
//! - `// qemu: skip REASON`: the QEMU half cannot show this case;
//! - `// expect-warning: TEXT` (untidy, any number): a warning the plan gives,
//!   which the monitor logs as `plan: TEXT`;
//! - `// expect-no-warning: TEXT` (untidy): a substring no warning may have;
//! - `// expect-output: TEXT` (untidy): a substring of the plan tool's map.
//!
//! Under QEMU the blob is put at the start of RAM over QEMU's own DTB
//! ([`carve_tests::dtb_over_qemus`]) rather than passed with `-dtb`: QEMU
//! refuses a corrupt `-dtb` and rewrites the memory node of a good one, so
//! only this way does the monitor read the very bytes the plan tool read.
//!
//! dtc, QEMU and defmt-print come from `scripts/setup`; a missing one fails
//! the test and says so.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use carve_core::dt::write::{guest_dtb, GuestDtbOptions};
use carve_core::dt::{Machine, Tree};
use carve_core::plan::{self, PlanConfig};
use carve_core::vm::boot;
use carve_tests::{dtb_over_qemus, dtc, repo_root, run_monitor, MACHINE_HYP};

#[path = "../hyp/core/fuzz/src/checks.rs"]
mod fuzz_checks;

/// Seconds QEMU may run before `timeout` stops it (status 124).
const QEMU_TIMEOUT_S: u32 = 30;
/// A refusal or an untidy boot must end the run within this many seconds ("within seconds, never a hang").
const WITHIN_S: f64 = 10.0;
/// How many files each part of the corpus has: a lost (or an added) file fails
/// the test until this count says so.
const BAD_CASES: usize = 80;
const UNTIDY_CASES: usize = 21;
const FUZZ_REGRESSIONS: usize = 6;
/// QEMU `virt`'s RAM in the runs here: [`carve_tests::RAM_BASE`], [`carve_tests::MEM_MIB`].
const QEMU_RAM: (u64, u64) = (carve_tests::RAM_BASE, carve_tests::MEM_MIB << 20);
/// The monitor's exit statuses (hyp/src/arch/semihost.rs).
const EXIT_BAD_DTB: i32 = 2;
const EXIT_BAD_PLAN: i32 = 11;
/// A guest kernel of four instructions: `movw r0, #8`, `movt r0, #0x8400`
/// (PSCI SYSTEM_OFF, 0x84000008), `hvc #0`, `b .`.
const POWEROFF_KERNEL: [u32; 4] = [0xe300_0008, 0xe348_0400, 0xe140_0070, 0xeaff_fffe];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bad,
    Untidy,
}

#[derive(Clone, Debug)]
enum Patch {
    Truncate(String),
    Be32(String, String),
    Byte(String, String),
}

/// One corpus file and what it expects.
#[derive(Clone, Debug, Default)]
struct Case {
    name: String,
    path: PathBuf,
    expect: Vec<String>,
    expect_monitor: Option<String>,
    patches: Vec<Patch>,
    qemu_skip: Option<String>,
    /// Refused when the guest DTB is written, not by the reader or the plan.
    guest_dtb_refusal: bool,
    warnings: Vec<String>,
    no_warnings: Vec<String>,
    outputs: Vec<String>,
}

impl Case {
    fn parse(path: &Path) -> Result<Case, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{e}"))?;
        let mut case = Case {
            name: path.file_stem().unwrap_or_default().to_string_lossy().into_owned(),
            path: path.to_path_buf(),
            ..Case::default()
        };
        for line in text.lines().take_while(|l| l.starts_with("//")) {
            let body = line.trim_start_matches('/').trim();
            let Some((key, value)) = body.split_once(": ") else { continue };
            let value = value.trim().to_string();
            match key {
                "expect" => case.expect.push(value),
                "expect-monitor" => case.expect_monitor = Some(value),
                "expect-warning" => case.warnings.push(value),
                "expect-no-warning" => case.no_warnings.push(value),
                "expect-output" => case.outputs.push(value),
                "qemu" => {
                    let reason = value.strip_prefix("skip ").ok_or(format!("qemu: {value}: expected `skip REASON`"))?;
                    case.qemu_skip = Some(reason.to_string());
                }
                "patch" => case.patches.push(parse_patch(&value)?),
                "refused-by" if value == "guest-dtb" => case.guest_dtb_refusal = true,
                "refused-by" => return Err(format!("refused-by: {value}: only `guest-dtb` is known")),
                k if !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') => {
                    return Err(format!("unknown directive `{k}:`"));
                }
                _ => {}
            }
        }
        Ok(case)
    }
}

fn parse_patch(s: &str) -> Result<Patch, String> {
    let (op, rest) = s.split_once(' ').ok_or(format!("patch: {s}: no operand"))?;
    let assign = |rest: &str| -> Result<(String, String), String> {
        let (a, v) = rest.split_once('=').ok_or(format!("patch: {s}: expected `AT = VALUE`"))?;
        Ok((a.trim().to_string(), v.trim().to_string()))
    };
    match op {
        "truncate" => Ok(Patch::Truncate(rest.trim().to_string())),
        "be32" => assign(rest).map(|(a, v)| Patch::Be32(a, v)),
        "byte" => assign(rest).map(|(a, v)| Patch::Byte(a, v)),
        _ => Err(format!("patch: unknown operation `{op}`")),
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("four bytes"))
}

/// `totalsize + 8`, `off_dt_strings + size_dt_strings - 1`, `0xd00dfeee`: over `good`'s header.
fn eval(expr: &str, good: &[u8]) -> Result<u64, String> {
    let field = |name: &str| -> Option<u64> {
        let at = match name {
            "totalsize" => 4,
            "off_dt_struct" => 8,
            "off_dt_strings" => 12,
            "off_mem_rsvmap" => 16,
            "version" => 20,
            "size_dt_strings" => 32,
            "size_dt_struct" => 36,
            _ => return None,
        };
        Some(be32(good, at) as u64)
    };
    let term = |t: &str| -> Result<u64, String> {
        if let Some(hex) = t.strip_prefix("0x") {
            u64::from_str_radix(hex, 16).map_err(|e| format!("{t}: {e}"))
        } else if t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse().map_err(|e| format!("{t}: {e}"))
        } else {
            field(t).ok_or(format!("`{t}` is no number or header field"))
        }
    };
    let mut tokens = expr.split_whitespace();
    let mut value = term(tokens.next().ok_or("an empty expression")?)?;
    while let Some(op) = tokens.next() {
        let t = term(tokens.next().ok_or(format!("{expr}: nothing after {op}"))?)?;
        value = match op {
            "+" => value.checked_add(t),
            "-" => value.checked_sub(t),
            _ => return Err(format!("{expr}: `{op}` is not + or -")),
        }
        .ok_or(format!("{expr} overflows"))?;
    }
    Ok(value)
}

fn apply(patches: &[Patch], good: &[u8]) -> Result<Vec<u8>, String> {
    let mut b = good.to_vec();
    let at = |e: &str, width: usize, len: usize| -> Result<usize, String> {
        let a = eval(e, good)? as usize;
        if a + width > len {
            return Err(format!("patch at {e} = {a} is past the blob's {len} bytes"));
        }
        Ok(a)
    };
    for p in patches {
        match p {
            Patch::Truncate(e) => {
                let n = at(e, 0, b.len())?;
                b.truncate(n);
            }
            Patch::Be32(a, v) => {
                let a = at(a, 4, b.len())?;
                let v = u32::try_from(eval(v, good)?).map_err(|_| format!("{v} does not fit 32 bits"))?;
                b[a..a + 4].copy_from_slice(&v.to_be_bytes());
            }
            Patch::Byte(a, v) => {
                let a = at(a, 1, b.len())?;
                b[a] = u8::try_from(eval(v, good)?).map_err(|_| format!("{v} does not fit a byte"))?;
            }
        }
    }
    Ok(b)
}

fn corpus_dir(kind: &str) -> PathBuf {
    repo_root().join("tests/corpus").join(kind)
}

fn cases(kind: Kind) -> Vec<Case> {
    let dir = corpus_dir(match kind {
        Kind::Bad => "bad",
        Kind::Untidy => "untidy",
    });
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dts"))
        .collect();
    files.sort();
    files.iter().map(|f| Case::parse(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))).collect()
}

/// Where a case's compiled and patched blobs go.
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("corpus")
}

/// The case's blob as the plan tool reads it (compiled, patched) and as the
/// monitor reads it under QEMU (the same, zero-padded to `totalsize`); both written to files.
struct Blobs {
    file: Vec<u8>,
    file_path: PathBuf,
    qemu_path: PathBuf,
}

/// `tag` keeps the tests that run at once from writing each other's files.
fn blobs(case: &Case, tag: &str) -> Result<Blobs, String> {
    let dir = work_dir().join(tag);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let good_path = dir.join(format!("{}.good.dtb", case.name));
    dtc(&case.path, &good_path);
    let good = std::fs::read(&good_path).map_err(|e| e.to_string())?;
    let file = apply(&case.patches, &good)?;
    let mut qemu = file.clone();
    // The monitor maps `totalsize` bytes: what follows a short file in RAM is zeros here.
    let total = if file.len() >= 8 { be32(&file, 4) as usize } else { be32(&good, 4) as usize };
    if qemu.len() < total.min(8 << 20) {
        qemu.resize(total.min(8 << 20), 0);
    }
    let file_path = dir.join(format!("{}.dtb", case.name));
    let qemu_path = dir.join(format!("{}.qemu.dtb", case.name));
    std::fs::write(&file_path, &file).map_err(|e| e.to_string())?;
    std::fs::write(&qemu_path, &qemu).map_err(|e| e.to_string())?;
    Ok(Blobs { file, file_path, qemu_path })
}

/// `scripts/plan`'s configuration: a kernel required, the monitor's image in the lowest free RAM.
fn cli_config() -> PlanConfig {
    PlanConfig { require_kernel: true, ..PlanConfig::default() }
}

/// Who refused a bad case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Reader,
    Plan,
    GuestDtb,
}

/// In-process, as the monitor goes: the reader's, the plan's or the guest DTB
/// writer's refusal, and the status the monitor must exit with.
fn refusal(blob: &[u8]) -> Option<(Stage, String, i32)> {
    let tree = match Tree::parse(blob) {
        Ok(t) => t,
        Err(e) => return Some((Stage::Reader, e.to_string(), EXIT_BAD_DTB)),
    };
    let machine = match Machine::from_tree(&tree) {
        Ok(m) => m,
        Err(e) => return Some((Stage::Reader, e.to_string(), EXIT_BAD_DTB)),
    };
    let p = match plan::plan(&machine, &cli_config()) {
        Ok(p) => p,
        Err(e) => return Some((Stage::Plan, e.to_string(), EXIT_BAD_PLAN)),
    };
    for g in &p.guests {
        let bootargs = g.desc.as_ref().and_then(|d| d.bootargs.as_deref());
        let opts = GuestDtbOptions { initrd: None, bootargs, owned_carveouts: &[], emulated_console: false };
        if let Err(e) = guest_dtb(&tree, &machine, g, &opts) {
            return Some((Stage::GuestDtb, e.to_string(), EXIT_BAD_PLAN));
        }
    }
    None
}

/// The fuzz targets' checks over `blob`: no panic, plans verify, guest DTBs read back.
fn fuzz_checks_hold(blob: &[u8]) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| {
        fuzz_checks::dt_plan(blob);
        fuzz_checks::guest_dtb_roundtrip(blob);
    }))
    .map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Runs the plan tool on `dtb`: (exit status, stdout, stderr).
fn plan_tool(dtb: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(carve_tests::plan_tool()).arg(dtb).stdin(Stdio::null()).output().expect("run the plan tool");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Collects failures so one run reports every broken case.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, case: &Case, ok: bool, msg: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("{}: {}", case.path.strip_prefix(repo_root()).unwrap_or(&case.path).display(), msg()));
        }
    }
    fn assert_none(self, what: &str, n: usize) {
        assert!(self.0.is_empty(), "{} of {n} {what} failed:\n\n{}", self.0.len(), self.0.join("\n\n"));
    }
}

#[test]
fn the_corpus_is_complete_and_well_formed() {
    let bad = cases(Kind::Bad);
    let untidy = cases(Kind::Untidy);
    assert_eq!(bad.len(), BAD_CASES, "bad cases in tests/corpus/bad (a file lost or added: say so in BAD_CASES)");
    assert_eq!(untidy.len(), UNTIDY_CASES, "untidy cases in tests/corpus/untidy (UNTIDY_CASES)");
    assert_eq!(regression_files().len(), FUZZ_REGRESSIONS, "tests/corpus/fuzz-regressions (FUZZ_REGRESSIONS)");
    for c in &bad {
        assert_eq!(c.expect.len(), 1, "{}: a bad case has exactly one `// expect:`", c.path.display());
        assert!(c.warnings.is_empty() && c.outputs.is_empty(), "{}: untidy directives in a bad case", c.path.display());
        if let Some(r) = &c.qemu_skip {
            assert!(r.len() > 20, "{}: say why QEMU cannot show it", c.path.display());
        }
    }
    for c in &untidy {
        assert!(c.expect.is_empty() && c.patches.is_empty(), "{}: bad-case directives", c.path.display());
        assert!(
            !(c.warnings.is_empty() && c.no_warnings.is_empty() && c.outputs.is_empty()),
            "{}: an untidy case expects something",
            c.path.display()
        );
    }
    let regressions = std::fs::read_dir(corpus_dir("fuzz-regressions")).expect("tests/corpus/fuzz-regressions exists");
    for f in regressions.filter_map(|e| e.ok()) {
        let p = f.path();
        assert!(
            p.extension().is_some_and(|x| x == "dtb") || p.file_name().is_some_and(|n| n == "README.md"),
            "{}: fuzz regressions are .dtb files",
            p.display()
        );
    }
}

#[test]
fn bad_cases_are_refused_in_one_line_by_the_reader_the_plan_and_the_plan_tool() {
    let all = cases(Kind::Bad);
    let mut f = Failures::default();
    for case in &all {
        let b = match blobs(case, "bad") {
            Ok(b) => b,
            Err(e) => {
                f.check(case, false, || e);
                continue;
            }
        };
        let expect = &case.expect[0];
        match refusal(&b.file) {
            None => f.check(case, false, || format!("planned; expected a refusal with {expect:?}")),
            Some((stage, msg, _)) => {
                f.check(case, msg.contains(expect.as_str()), || format!("refusal {msg:?} lacks {expect:?}"));
                f.check(case, !msg.contains('\n'), || format!("refusal of several lines: {msg:?}"));
                f.check(case, (stage == Stage::GuestDtb) == case.guest_dtb_refusal, || {
                    format!("refused by {stage:?}; the file says refused-by guest-dtb: {}", case.guest_dtb_refusal)
                });
            }
        }
        if let Err(e) = fuzz_checks_hold(&b.file) {
            f.check(case, false, || format!("the fuzz checks fail: {e}"));
        }
        let (status, stdout, stderr) = plan_tool(&b.file_path);
        if case.guest_dtb_refusal {
            // The plan tool plans (it writes no guest DTB); the monitor half checks the refusal.
            f.check(case, status == Some(0), || format!("plan tool exit status {status:?}, expected 0\n{stderr}"));
            continue;
        }
        f.check(case, status == Some(1), || format!("plan tool exit status {status:?}, expected 1\n{stderr}"));
        f.check(case, stdout.is_empty(), || format!("plan tool printed a plan:\n{stdout}"));
        f.check(case, stderr.lines().count() == 1 && stderr.ends_with('\n'), || {
            format!("plan tool stderr is not one line: {stderr:?}")
        });
        f.check(case, stderr.starts_with("plan: ") && stderr.contains(expect.as_str()), || {
            format!("plan tool said {stderr:?}, expected {expect:?}")
        });
    }
    f.assert_none("bad cases", all.len());
}

#[test]
fn untidy_cases_plan_with_their_warnings_and_write_guest_dtbs() {
    let all = cases(Kind::Untidy);
    let mut f = Failures::default();
    for case in &all {
        let b = match blobs(case, "untidy") {
            Ok(b) => b,
            Err(e) => {
                f.check(case, false, || e);
                continue;
            }
        };
        let tree = match Tree::parse(&b.file) {
            Ok(t) => t,
            Err(e) => {
                f.check(case, false, || format!("the reader refused it: {e}"));
                continue;
            }
        };
        let machine = match Machine::from_tree(&tree) {
            Ok(m) => m,
            Err(e) => {
                f.check(case, false, || format!("the reader refused it: {e}"));
                continue;
            }
        };
        let p = match plan::plan(&machine, &cli_config()) {
            Ok(p) => p,
            Err(e) => {
                f.check(case, false, || format!("the plan refused it: {e}"));
                continue;
            }
        };
        f.check(case, plan::verify(&p).is_ok(), || format!("the plan breaks an invariant: {:?}", plan::verify(&p)));
        for w in &case.warnings {
            f.check(case, p.warnings.iter().any(|x| x.contains(w.as_str())), || {
                format!("no warning has {w:?}; the warnings: {:#?}", p.warnings)
            });
        }
        for w in &case.no_warnings {
            f.check(case, !p.warnings.iter().any(|x| x.contains(w.as_str())), || {
                format!("a warning has {w:?}: {:#?}", p.warnings)
            });
        }
        // Each guest's DTB: written, small, without the machine's carveouts.
        for g in &p.guests {
            let d = g.desc.as_ref().expect("the tree's guests");
            let opts = GuestDtbOptions {
                initrd: None,
                bootargs: d.bootargs.as_deref(),
                owned_carveouts: &[],
                emulated_console: false,
            };
            match guest_dtb(&tree, &machine, g, &opts) {
                Err(e) => f.check(case, false, || format!("{}: no guest DTB: {e}", g.name)),
                Ok(out) => {
                    f.check(case, out.len() as u64 <= boot::DTB_MAX && out.len() <= b.file.len(), || {
                        format!("{}: guest DTB of {} bytes from a {}-byte machine DTB", g.name, out.len(), b.file.len())
                    });
                    let gm = Machine::from_dtb(&out);
                    f.check(case, gm.as_ref().is_ok_and(|m| m.reserved.is_empty()), || {
                        format!("{}: the guest DTB reads back as {gm:?}", g.name)
                    });
                }
            }
        }
        if let Err(e) = fuzz_checks_hold(&b.file) {
            f.check(case, false, || format!("the fuzz checks fail: {e}"));
        }
        let (status, stdout, stderr) = plan_tool(&b.file_path);
        f.check(case, status == Some(0), || format!("plan tool exit status {status:?}, expected 0\n{stderr}"));
        for text in case.warnings.iter().chain(&case.outputs) {
            f.check(case, stdout.contains(text.as_str()), || format!("the plan tool's map lacks {text:?}:\n{stdout}"));
        }
    }
    f.assert_none("untidy cases", all.len());
}

/// The poweroff kernel, written once.
fn poweroff_kernel() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = work_dir();
        std::fs::create_dir_all(&dir).expect("create the work directory");
        let path = dir.join("poweroff-kernel.bin");
        let bytes: Vec<u8> = POWEROFF_KERNEL.iter().flat_map(|w| w.to_le_bytes()).collect();
        std::fs::write(&path, bytes).expect("write the poweroff kernel");
        path
    })
}

#[test]
fn bad_cases_are_refused_by_the_monitor_under_qemu_within_seconds() {
    let all = cases(Kind::Bad);
    let mut f = Failures::default();
    let mut ran = 0;
    let mut slowest = (0.0f64, String::new());
    for case in all.iter().filter(|c| c.qemu_skip.is_none()) {
        let b = match blobs(case, "bad-qemu") {
            Ok(b) => b,
            Err(e) => {
                f.check(case, false, || e);
                continue;
            }
        };
        let Some((_, _, status)) = refusal(&b.file) else {
            f.check(case, false, || "planned in-process, so there is nothing for the monitor to refuse".into());
            continue;
        };
        let args = dtb_over_qemus(&b.qemu_path);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = work_dir().join("qemu").join(&case.name);
        let run = run_monitor(&dir, &case.name, MACHINE_HYP, &args, QEMU_TIMEOUT_S);
        ran += 1;
        let secs = run.elapsed.as_secs_f64();
        if secs > slowest.0 {
            slowest = (secs, case.name.clone());
        }
        let want = case.expect_monitor.as_ref().unwrap_or(&case.expect[0]);
        f.check(case, !run.timed_out(), || format!("the monitor hung\n{}", run.context()));
        f.check(case, run.status == Some(status), || {
            format!("exit status {:?}, expected {status}\n{}", run.status, run.context())
        });
        // A tree whose `carve,log` names a UART sends the refusal there.
        let logged = run.log.contains(want.as_str()) || run.uart_log().contains(want.as_str());
        f.check(case, logged, || format!("the log lacks {want:?}\n{}", run.context()));
        f.check(case, secs < WITHIN_S, || format!("took {secs:.1} s to refuse\n{}", run.context()));
        f.check(case, !run.log.contains("panicked"), || format!("the monitor panicked\n{}", run.context()));
    }
    println!("{ran} bad cases under QEMU; slowest {:.2} s ({})", slowest.0, slowest.1);
    let want = all.iter().filter(|c| c.qemu_skip.is_none()).count();
    assert!(all.len() == BAD_CASES && ran == want, "{ran} of {} bad cases ran under QEMU, {want} should", all.len());
    f.assert_none("bad cases under QEMU", ran);
}

#[test]
fn untidy_cases_plan_and_boot_under_the_monitor() {
    let all = cases(Kind::Untidy);
    let mut f = Failures::default();
    let mut ran = 0;
    for case in all.iter().filter(|c| c.qemu_skip.is_none()) {
        let b = match blobs(case, "untidy-qemu") {
            Ok(b) => b,
            Err(e) => {
                f.check(case, false, || e);
                continue;
            }
        };
        let machine = match Machine::from_dtb(&b.file) {
            Ok(m) => m,
            Err(e) => {
                f.check(case, false, || format!("the reader refused it: {e}"));
                continue;
            }
        };
        let mut args: Vec<String> = dtb_over_qemus(&b.qemu_path).to_vec();
        // The guest's kernel where its module says it is: it powers off at once.
        let guest = machine.guests.first();
        if let Some(k) = guest.and_then(|g| g.kernel.as_ref()) {
            args.push("-device".into());
            args.push(format!("loader,file={},addr={:#x},force-raw=on", poweroff_kernel().display(), k.range.start()));
        }
        // Its ramdisk, as a loader leaves one (in a /memreserve/, say): the monitor must copy it in.
        let ramdisk = guest.and_then(|g| g.ramdisk.as_ref());
        if let Some(r) = ramdisk {
            let file = work_dir().join(format!("{}.ramdisk", case.name));
            let bytes: Vec<u8> = (0..r.range.size).map(|i| (i % 251) as u8).collect();
            std::fs::write(&file, bytes).expect("write the ramdisk");
            args.push("-device".into());
            args.push(format!("loader,file={},addr={:#x},force-raw=on", file.display(), r.range.start()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let dir = work_dir().join("qemu").join(&case.name);
        let run = run_monitor(&dir, &case.name, MACHINE_HYP, &args, QEMU_TIMEOUT_S);
        ran += 1;
        f.check(case, !run.timed_out(), || format!("the monitor hung\n{}", run.context()));
        f.check(case, run.status == Some(0), || format!("exit status {:?}, expected 0\n{}", run.status, run.context()));
        f.check(case, run.elapsed.as_secs_f64() < WITHIN_S, || format!("took {:?}\n{}", run.elapsed, run.context()));
        for w in &case.warnings {
            let line = format!("plan: {w}");
            f.check(case, run.log.contains(&line), || format!("the log lacks {line:?}\n{}", run.context()));
        }
        if let Some(g) = guest {
            // Status 0 with a guest: its DTB was written, it ran, and its SYSTEM_OFF ended the run.
            let lines = format!("vm: {}: DTB ", g.name);
            f.check(case, run.log.contains(&lines), || format!("the log lacks {lines:?}\n{}", run.context()));
            f.check(case, run.log.contains("SYSTEM_OFF"), || format!("the guest did not power off\n{}", run.context()));
        }
        if let (Some(g), Some(r)) = (guest, ramdisk) {
            let line = format!("vm: {}: initrd {} bytes from PA {:#010x}", g.name, r.range.size, r.range.start());
            f.check(case, run.log.contains(&line), || format!("the log lacks {line:?}\n{}", run.context()));
        }
    }
    let want = all.iter().filter(|c| c.qemu_skip.is_none()).count();
    assert!(
        all.len() == UNTIDY_CASES && ran == want,
        "{ran} of {} untidy cases ran under QEMU, {want} should",
        all.len()
    );
    f.assert_none("untidy cases under QEMU", ran);
}

/// Every input the fuzzer once crashed on, through the fuzz targets' checks;
/// and, so this never passes on an empty directory alone, every corpus blob too.
#[test]
fn fuzz_regressions_no_longer_crash() {
    let mut inputs: Vec<(String, Vec<u8>)> = regression_files()
        .into_iter()
        .map(|p| (p.display().to_string(), std::fs::read(&p).expect("read a regression input")))
        .collect();
    let regressions = inputs.len();
    assert_eq!(regressions, FUZZ_REGRESSIONS, "fuzz regressions in tests/corpus/fuzz-regressions");
    for case in cases(Kind::Bad).iter().chain(&cases(Kind::Untidy)) {
        let b = blobs(case, "fuzz-checks").unwrap_or_else(|e| panic!("{}: {e}", case.path.display()));
        inputs.push((case.path.display().to_string(), b.file));
    }
    let broken: Vec<String> =
        inputs.iter().filter_map(|(name, blob)| fuzz_checks_hold(blob).err().map(|e| format!("{name}: {e}"))).collect();
    println!("{regressions} fuzz regressions and {} corpus blobs through the fuzz checks", inputs.len() - regressions);
    assert!(broken.is_empty(), "{} inputs fail the fuzz checks:\n{}", broken.len(), broken.join("\n"));
}

/// The `.dtb` files of `tests/corpus/fuzz-regressions`, sorted.
fn regression_files() -> Vec<PathBuf> {
    let dir = corpus_dir("fuzz-regressions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "dtb"))
        .collect();
    files.sort();
    files
}

/// Big-endian `cells` cells holding `v` (the high cells zero past two).
fn cells_be(v: u64, cells: u32) -> Vec<u8> {
    (0..cells).rev().flat_map(|i| if i < 2 { ((v >> (32 * i)) as u32).to_be_bytes() } else { [0; 4] }).collect()
}

/// Rewrites, in place and at the same length, the `reg` of the memory nodes
/// the reader takes (enabled root children with `device_type = "memory"`, or
/// named `memory` with a `reg` and no `device_type`): the first bank becomes
/// QEMU's RAM, every other bank size 0 (which the reader skips with a
/// warning). Nothing else of the blob changes: a fuzz regression keeps the
/// bytes that once broke carve, and runs on RAM this QEMU machine has.
/// `Ok(false)` when the blob's RAM already is QEMU's.
fn ram_made_qemus(blob: &mut [u8]) -> Result<bool, String> {
    let regs: Vec<(usize, usize, carve_core::dt::tree::Cells)> = {
        let tree = Tree::parse(blob).map_err(|e| e.to_string())?;
        let cells = tree.root.cells().map_err(|e| e.to_string())?;
        let mut regs = Vec::new();
        for n in tree.root.children.iter().filter(|n| n.is_enabled()) {
            let typed = n.str_prop("device_type").ok().flatten();
            if typed != Some("memory") && !(typed.is_none() && n.base_name() == "memory") {
                continue;
            }
            if let Some(reg) = n.prop("reg") {
                regs.push((reg.as_ptr() as usize - blob.as_ptr() as usize, reg.len(), cells));
            }
        }
        regs
    };
    let machine = Machine::from_dtb(blob).map_err(|e| e.to_string())?;
    if machine.ram.iter().all(|b| b.range.start() >= QEMU_RAM.0 && b.range.end() <= QEMU_RAM.0 + QEMU_RAM.1) {
        return Ok(false);
    }
    let mut first = true;
    for (at, len, cells) in regs {
        let entry = cells.entry_bytes();
        let a = (cells.address * 4) as usize;
        for e in (at..at + len - len % entry.max(1)).step_by(entry.max(1)) {
            let (base, size) = if first { QEMU_RAM } else { (QEMU_RAM.0, 0) };
            first = false;
            blob[e..e + a].copy_from_slice(&cells_be(base, cells.address));
            blob[e + a..e + entry].copy_from_slice(&cells_be(size, cells.size));
        }
    }
    Ok(true)
}

/// The monitor under QEMU on every fuzz regression, judged in full. A blob
/// whose RAM is not QEMU's (they come from board DTBs) has its memory nodes
/// rewritten to QEMU's RAM first ([`ram_made_qemus`]): a monitor told of RAM
/// where QEMU has flash or nothing cannot use it, and what is judged is the
/// rest of the blob. Each run must end, within seconds, in a refusal (exit 2
/// or 11, logged) or with the plan logged and status 0 (a guest, if the tree
/// has one, runs a kernel that powers off); never a panic (1), an exception in
/// Hyp mode (5, 7), or a hang.
#[test]
fn fuzz_regressions_do_not_crash_or_hang_the_monitor() {
    let files = regression_files();
    assert_eq!(files.len(), FUZZ_REGRESSIONS, "fuzz regressions in tests/corpus/fuzz-regressions");
    let work = work_dir().join("regressions");
    std::fs::create_dir_all(&work).expect("create the work directory");
    let mut broken = Vec::new();
    for f in &files {
        let name = f.file_stem().unwrap_or_default().to_string_lossy().into_owned();
        let mut blob = std::fs::read(f).expect("read a regression input");
        // Err: the reader refuses the blob, and the monitor must too.
        let patched = ram_made_qemus(&mut blob).unwrap_or_default();
        if let Ok(m) = Machine::from_dtb(&blob) {
            let qemus = m.ram.iter().all(|b| b.range.start() >= QEMU_RAM.0 && b.range.end() <= QEMU_RAM.0 + QEMU_RAM.1);
            assert!(qemus, "{name}: RAM {:x?} is not QEMU's after the rewrite", m.ram);
        }
        // What follows a short blob in RAM: zeros, up to the totalsize the monitor reads.
        if blob.len() >= 8 {
            let total = (be32(&blob, 4) as usize).min(1 << 20);
            if blob.len() < total {
                blob.resize(total, 0);
            }
        }
        // Over QEMU's DTB, but never into the monitor's image at 0x40200000.
        blob.truncate(2 << 20);
        let path = work.join(format!("{name}.qemu.dtb"));
        std::fs::write(&path, &blob).expect("write the blob");
        let mut args: Vec<String> = dtb_over_qemus(&path).to_vec();
        let kernels = Machine::from_dtb(&blob).map(|m| m.guests.clone()).unwrap_or_default();
        for k in kernels.iter().filter_map(|g| g.kernel.as_ref()) {
            args.push("-device".into());
            args.push(format!("loader,file={},addr={:#x},force-raw=on", poweroff_kernel().display(), k.range.start()));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = run_monitor(&work_dir().join("qemu").join(&name), &name, MACHINE_HYP, &args, QEMU_TIMEOUT_S);
        let what = if patched { " (its RAM rewritten to QEMU's)" } else { "" };
        let refused = matches!(run.status, Some(EXIT_BAD_DTB | EXIT_BAD_PLAN))
            && ["ERROR dt: ", "ERROR plan: ", "ERROR hyp: DTB", "ERROR vm: "].iter().any(|l| run.log.contains(l));
        let ran = run.status == Some(0) && run.log.contains("map: monitor");
        if run.timed_out() {
            broken.push(format!("{name}{what}: the monitor hung\n{}", run.context()));
        } else if !(refused || ran) {
            broken.push(format!("{name}{what}: neither refused nor planned and ended\n{}", run.context()));
        } else if run.log.contains("panicked") || run.elapsed.as_secs_f64() >= WITHIN_S {
            broken.push(format!("{name}{what}: a panic, or not within {WITHIN_S} s\n{}", run.context()));
        }
    }
    assert!(broken.is_empty(), "{} of {} regressions:\n{}", broken.len(), files.len(), broken.join("\n\n"));
}
