//! Helpers shared by the integration tests: tools, the monitor image, QEMU runs.
//!
//! A missing tool fails the test that needs it with a pointer to
//! `scripts/setup`: nothing here lets a test skip itself into a pass.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The machine every monitor run uses unless told otherwise, as in `scripts/run-hyp`.
pub const MACHINE_HYP: &str = "virt,virtualization=on";
/// Where QEMU `virt`'s RAM starts.
pub const RAM_BASE: u64 = 0x4000_0000;
/// The RAM (`-m`, MiB) of a run that does not say: 0x40000000-0x90000000.
pub const MEM_MIB: u64 = 1280;
const MIB: u64 = 1 << 20;

/// Held while QEMU runs: the runs of one test process go one after the other.
static QEMU: Mutex<()> = Mutex::new(());

/// A test's working directory, `<the test crate's CARGO_TARGET_TMPDIR>/SUITE/NAME`, created.
#[macro_export]
macro_rules! test_dir {
    ($suite:expr, $name:expr) => {
        $crate::make_dir(&::std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join($suite).join($name))
    };
}

/// Creates `dir` (and its parents) and returns it.
pub fn make_dir(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir.to_path_buf()
}

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `name` on PATH or in cargo's bin directory (where `cargo install` puts defmt-print), if it is there.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin"));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain(cargo_bin).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// `name` on PATH or in cargo's bin directory; a missing tool fails the test with a pointer to `scripts/setup`.
pub fn tool(name: &str) -> PathBuf {
    find_tool(name)
        .unwrap_or_else(|| panic!("{name} is not installed (not on PATH, not in ~/.cargo/bin): run scripts/setup"))
}

/// Runs a build script that prints on stdout (`scripts/NAME`); returns its stdout.
pub fn run_script(name: &str) -> String {
    let script = repo_root().join("scripts").join(name);
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(out.status.success(), "scripts/{name} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A guest stub's flat image, all built once per test process by `scripts/build-stubs`.
pub fn stub(name: &str) -> &'static Path {
    static STUBS: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    let stubs = STUBS.get_or_init(|| {
        run_script("build-stubs")
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, p)| (n.to_string(), PathBuf::from(p)))
            .collect()
    });
    let path = stubs.get(name).unwrap_or_else(|| panic!("scripts/build-stubs built no stub `{name}`: {stubs:?}"));
    assert!(path.is_file(), "scripts/build-stubs printed {}, which is not a file", path.display());
    path
}

/// The number after `key` in `line` (decimal, or hex with 0x).
pub fn number_after(line: &str, key: &str) -> u64 {
    let rest = line.split_once(key).unwrap_or_else(|| panic!("{key:?} not in {line:?}")).1;
    let tok: String = rest.trim_start().chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    match tok.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => tok.parse(),
    }
    .unwrap_or_else(|e| panic!("no number after {key:?} in {line:?}: {e}"))
}

/// Compiles `dts` into `dtb` with dtc, includes from `dts/` (as `scripts/plan` does).
pub fn dtc(dts: &Path, dtb: &Path) {
    let out = Command::new(tool("dtc"))
        .args(["-q", "-I", "dts", "-O", "dtb", "-i"])
        .arg(repo_root().join("dts"))
        .arg("-o")
        .arg(dtb)
        .arg(dts)
        .stdin(Stdio::null())
        .output()
        .expect("run dtc");
    assert!(out.status.success(), "dtc failed on {}:\n{}", dts.display(), String::from_utf8_lossy(&out.stderr));
}

/// Compiles DTS `source` into `dir/machine.dtb` (the source kept beside it as
/// `machine.dts`); returns the DTB's path and bytes.
pub fn compile_dts(dir: &Path, source: &str) -> (PathBuf, Vec<u8>) {
    let src = dir.join("machine.dts");
    let dtb = dir.join("machine.dtb");
    std::fs::write(&src, source).expect("write the DTS");
    dtc(&src, &dtb);
    let bytes = std::fs::read(&dtb).expect("read the DTB");
    (dtb, bytes)
}

/// One guest node under `/chosen` of a test machine.
#[derive(Clone, Debug)]
pub struct GuestNode {
    /// The node name: `guest@N`.
    pub name: &'static str,
    /// Guest RAM in KiB (`memory = <0x0 KiB>`).
    pub kib: u64,
    pub cpus: u32,
    /// Where `-device loader` puts the kernel image (the module's `reg`).
    pub module: u64,
    /// The kernel image: a stub's flat image or a raw program.
    pub kernel: PathBuf,
    /// More properties of the node, each a line `\t\t\tname = value;\n`.
    pub props: String,
}

/// The DTS of a QEMU `virt` machine (`dts/qemu-virt.dtsi`) with `smp` CPUs
/// (PSCI enable methods for the secondaries), `mem_mib` of RAM at
/// [`RAM_BASE`], `reserved` (a `/reserved-memory` node, or nothing) and `guests`.
pub fn virt_dts(smp: u32, mem_mib: u64, reserved: &str, guests: &[GuestNode]) -> String {
    let mut s = String::from("/dts-v1/;\n/include/ \"qemu-virt.dtsi\"\n");
    if smp > 1 {
        s += "&cpu0 {\n\tenable-method = \"psci\";\n};\n&cpus {\n";
        for c in 1..smp {
            s += &format!(
                "\tcpu@{c} {{\n\t\tdevice_type = \"cpu\";\n\t\tcompatible = \"arm,cortex-a15\";\n\t\treg = <{c}>;\n\t\tenable-method = \"psci\";\n\t}};\n"
            );
        }
        s += "};\n";
    }
    s += &format!("/ {{\n\tmemory@40000000 {{\n\t\treg = <0x0 {RAM_BASE:#x} 0x0 {:#x}>;\n\t}};\n", mem_mib * MIB);
    s += reserved;
    s += "\tchosen {\n\t\t#address-cells = <1>;\n\t\t#size-cells = <1>;\n\t\tstdout-path = \"/pl011@9000000\";\n";
    for g in guests {
        let size = std::fs::metadata(&g.kernel).unwrap_or_else(|e| panic!("stat {}: {e}", g.kernel.display())).len();
        s += &format!(
            "\t\t{name} {{\n\t\t\tcompatible = \"carve,guest\";\n\t\t\t#address-cells = <1>;\n\t\t\t#size-cells = <1>;\n\t\t\tmemory = <0x0 {kib:#x}>;\n\t\t\tcpus = <{cpus}>;\n{props}\t\t\tmodule@{m:x} {{\n\t\t\t\tcompatible = \"multiboot,kernel\", \"multiboot,module\";\n\t\t\t\treg = <{m:#x} {size:#x}>;\n\t\t\t}};\n\t\t}};\n",
            name = g.name,
            kib = g.kib,
            cpus = g.cpus,
            props = g.props,
            m = g.module,
        );
    }
    s += "\t};\n};\n";
    s
}

/// How a machine runs: which QEMU, image, CPUs, RAM, blobs and bootargs.
#[derive(Clone, Debug, Default)]
pub struct RunOptions<'a> {
    /// `-smp` (1 if 0).
    pub smp: u32,
    /// `-m` in MiB ([`MEM_MIB`] if 0).
    pub mem_mib: u64,
    /// `-icount shift=0`: one instruction is 1 ns of guest time.
    pub icount: bool,
    /// `qemu-system-aarch64` (the same `virt` machine and Cortex-A15) instead of `qemu-system-arm`.
    pub aarch64: bool,
    /// The plain image, or the one with the self-tests.
    pub image: Image,
    /// `-device loader` blobs: (file, address).
    pub loads: Vec<(PathBuf, u64)>,
    /// The monitor's own bootargs (`-append`, which QEMU writes to `/chosen/bootargs`).
    pub append: Option<&'a str>,
    /// Seconds before `timeout` stops QEMU (120 if 0).
    pub timeout_s: u32,
}

/// Runs the monitor on QEMU `virt` with the machine `dtb` (`-dtb`) as `opts`
/// says; `dir` keeps the UART output and the run's log.
pub fn run_dtb(dir: &Path, name: &str, dtb: &Path, opts: &RunOptions<'_>) -> Run {
    let mut args: Vec<String> = vec!["-dtb".into(), dtb.display().to_string()];
    for (file, addr) in &opts.loads {
        args.push("-device".into());
        args.push(format!("loader,file={},addr={addr:#x},force-raw=on", file.display()));
    }
    if opts.smp > 1 {
        args.extend(["-smp".into(), opts.smp.to_string()]);
    }
    if opts.icount {
        args.extend(["-icount".into(), "shift=0".into()]);
    }
    if let Some(a) = opts.append {
        args.extend(["-append".into(), a.into()]);
    }
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let qemu = Qemu {
        binary: if opts.aarch64 { "qemu-system-aarch64" } else { "qemu-system-arm" },
        machine: MACHINE_HYP,
        mem_mib: if opts.mem_mib == 0 { MEM_MIB } else { opts.mem_mib },
        image: opts.image,
    };
    run_qemu(dir, name, &qemu, &extra, if opts.timeout_s == 0 { 120 } else { opts.timeout_s })
}

/// Which monitor image a run boots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Image {
    /// `scripts/build`: the image a board boots, with no test code.
    #[default]
    Plain,
    /// `scripts/build --selftest`: with the self-tests (`carve.selftest=`), the
    /// CMA test calls and the emulated test device.
    SelfTest,
}

impl Image {
    /// The image's ELF, built once per test process.
    pub fn elf(self) -> &'static Path {
        match self {
            Image::Plain => monitor_elf(),
            Image::SelfTest => selftest_elf(),
        }
    }
}

/// Runs `scripts/build ARGS` and returns the ELF it printed.
fn build_monitor(args: &[&str]) -> PathBuf {
    let build = repo_root().join("scripts/build");
    let out = Command::new(&build)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", build.display()));
    assert!(
        out.status.success(),
        "scripts/build {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let elf = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(elf.is_file(), "scripts/build printed {}, which is not a file", elf.display());
    elf
}

/// The plain monitor ELF (`scripts/build`), built once per test process.
pub fn monitor_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| build_monitor(&[]))
}

/// The monitor ELF with the self-tests (`scripts/build --selftest`), built once per test process.
pub fn selftest_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| build_monitor(&["--selftest"]))
}

/// The board image `scripts/build` leaves beside the monitor ELF: `hyp.zImage`
/// (no semihosting, Linux's zImage header), and `hyp-board`, the ELF it was
/// made of, which decodes its log.
pub fn board_image() -> (PathBuf, PathBuf) {
    let dir = monitor_elf().parent().expect("the ELF has a directory");
    let (zimage, elf) = (dir.join("hyp.zImage"), dir.join("hyp-board"));
    assert!(zimage.is_file() && elf.is_file(), "scripts/build left no {} or {}", zimage.display(), elf.display());
    (zimage, elf)
}

/// The plan tool (`scripts/plan`'s binary), built once per test process.
pub fn plan_tool() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "-q", "-p", "carve-plan", "--manifest-path"])
            .arg(repo_root().join("Cargo.toml"))
            .stdin(Stdio::null())
            .output()
            .expect("run cargo build -p carve-plan");
        assert!(
            out.status.success(),
            "cargo build -p carve-plan failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let target =
            std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
        let bin = target.join("release/carve-plan");
        assert!(bin.is_file(), "the build left no plan tool at {}", bin.display());
        bin
    })
}

/// What the `consoles` stub with VMID `v` writes through its emulated UART as its line `i`.
pub fn consoles_line(v: u32, i: u32) -> String {
    let fill = char::from(b'a' + (v % 26) as u8);
    format!("vm{v} line {i} {} end", fill.to_string().repeat(((i * 7 + v) % 60) as usize))
}

/// One QEMU run: its exit status and the decoded log.
pub struct Run {
    pub name: String,
    /// QEMU's exit status (the monitor's exit code); 124 when `timeout` stopped it.
    pub status: Option<i32>,
    /// The seconds `timeout` allowed.
    pub timeout_s: u32,
    /// How long QEMU ran.
    pub elapsed: Duration,
    pub log: String,
    pub qemu_stderr: String,
    pub decoder_stderr: String,
    /// Where QEMU wrote the UART's output (`-serial file:`).
    pub uart_path: PathBuf,
    /// The monitor image that ran (its ELF decodes the defmt frames).
    pub image: Image,
}

impl Run {
    pub fn context(&self) -> String {
        format!(
            "run `{}`: QEMU exit status {:?} after {:.1} s\n--- decoded log ---\n{}--- QEMU stderr ---\n{}--- defmt-print stderr ---\n{}",
            self.name,
            self.status,
            self.elapsed.as_secs_f64(),
            self.log,
            self.qemu_stderr,
            self.decoder_stderr
        )
    }

    /// The UART's output decoded as defmt frames: the monitor's log when
    /// `/chosen/carve,log` sent it there (empty when the UART carried none).
    pub fn uart_log(&self) -> String {
        let bytes = std::fs::read(&self.uart_path).unwrap_or_default();
        decode_defmt_with(self.image.elf(), &bytes)
    }

    /// Whether `timeout` had to stop QEMU.
    pub fn timed_out(&self) -> bool {
        self.status == Some(124) || self.status == Some(137)
    }

    pub fn assert_status(&self, want: i32) {
        assert!(!self.timed_out(), "QEMU did not exit within {} s\n{}", self.timeout_s, self.context());
        assert_eq!(self.status, Some(want), "unexpected exit status\n{}", self.context());
    }

    pub fn assert_logged(&self, needle: &str) {
        assert!(self.log.contains(needle), "the log lacks {needle:?}\n{}", self.context());
    }

    pub fn assert_not_logged(&self, needle: &str) {
        assert!(!self.log.contains(needle), "the log has {needle:?}\n{}", self.context());
    }

    /// The index of the one log line containing `needle` (panics on none or several).
    pub fn line_index(&self, needle: &str) -> usize {
        let found: Vec<usize> =
            self.log.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i).collect();
        assert_eq!(found.len(), 1, "want one log line with {needle:?}, got {}\n{}", found.len(), self.context());
        found[0]
    }

    /// What guest `guest` printed through `CONSOLE_WRITE`: the text after `<guest>: ` on the monitor's lines.
    pub fn console(&self, guest: &str) -> Vec<&str> {
        let prefix = format!(" {guest}: ");
        self.log.lines().filter_map(|l| l.split_once(&prefix).map(|(_, text)| text)).collect()
    }

    /// The one console line of `guest` that starts with `start`.
    pub fn line(&self, guest: &str, start: &str) -> &str {
        let found: Vec<&str> = self.console(guest).into_iter().filter(|l| l.starts_with(start)).collect();
        assert_eq!(found.len(), 1, "want one line of {guest} starting {start:?}, got {found:?}\n{}", self.context());
        found[0]
    }

    /// The stage-2 extents the monitor logged for `guest` ([`logged_extents`]).
    pub fn extents(&self, guest: &str) -> Vec<(u64, u64, u64)> {
        logged_extents(&self.log, guest)
    }

    /// Asserts that `guest` printed no line with FAIL in it.
    pub fn assert_no_fail(&self, guest: &str) {
        let fails: Vec<&str> = self.console(guest).into_iter().filter(|l| l.contains("FAIL")).collect();
        assert!(fails.is_empty(), "{guest} reported failures: {fails:#?}\n{}", self.context());
    }
}

/// The stage-2 extents the monitor logged for `guest` in `log` (its `map:` lines): (IPA, PA, bytes).
pub fn logged_extents(log: &str, guest: &str) -> Vec<(u64, u64, u64)> {
    let hex = |s: &str| {
        let t = s.trim_end_matches([',', ')', ':']);
        u64::from_str_radix(t.trim_start_matches("0x"), 16).unwrap_or_else(|e| panic!("not hex: {s:?}: {e}"))
    };
    let mut out = Vec::new();
    let mut current = false;
    for l in log.lines() {
        let Some((_, rest)) = l.split_once("map: ") else { continue };
        if let Some(name) = rest.split(':').next().filter(|n| n.starts_with("guest")) {
            current = name == guest;
        } else if let Some(e) = rest.trim_start().strip_prefix("IPA ") {
            // "IPA 0x040000000 -> PA 0x080000000 64 MiB"
            let w: Vec<&str> = e.split_whitespace().collect();
            if current && w.len() >= 6 && w[1] == "->" && w[2] == "PA" && w[5] == "MiB" {
                out.push((hex(w[0]), hex(w[3]), w[4].parse::<u64>().expect("MiB") * MIB));
            }
        } else {
            current = false;
        }
    }
    out
}

/// Runs the plain monitor on QEMU `machine` (Cortex-A15, 1280 MiB, semihosting,
/// no network) with `extra` arguments, stopped by `timeout` after `timeout_s`;
/// the log decoded by defmt-print. `dir` keeps the UART output and the run's
/// log (`log.txt`). Runs of one test process never overlap.
pub fn run_monitor(dir: &Path, name: &str, machine: &str, extra: &[&str], timeout_s: u32) -> Run {
    let qemu = Qemu { binary: "qemu-system-arm", machine, mem_mib: 1280, image: Image::Plain };
    run_qemu(dir, name, &qemu, extra, timeout_s)
}

/// Which QEMU runs which monitor image, on which machine, with how much RAM.
pub struct Qemu<'a> {
    /// `qemu-system-arm`, or `qemu-system-aarch64` (the same `virt` machine and
    /// Cortex-A15) where RAM above 4 GiB matters.
    pub binary: &'a str,
    pub machine: &'a str,
    pub mem_mib: u64,
    pub image: Image,
}

/// [`run_monitor`] with the QEMU binary and RAM size chosen by the caller.
pub fn run_qemu(dir: &Path, name: &str, q: &Qemu<'_>, extra: &[&str], timeout_s: u32) -> Run {
    let machine = q.machine;
    let qemu = tool(q.binary);
    let decoder = tool("defmt-print");
    let timeout = tool("timeout");
    let elf = q.image.elf();

    std::fs::create_dir_all(dir).expect("create the run directory");
    let uart = dir.join("uart.log");

    let _one_at_a_time = QEMU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let started = Instant::now();
    let mut qemu = Command::new(timeout)
        .args(["--kill-after=5", &timeout_s.to_string()])
        .arg(qemu)
        .args(["-M", machine, "-cpu", "cortex-a15", "-m", &q.mem_mib.to_string()])
        .args(["-semihosting", "-nographic", "-nic", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", uart.display()))
        .arg("-kernel")
        .arg(elf)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-system-arm");
    let frames = qemu.stdout.take().expect("QEMU's stdout is piped");
    let mut qemu_err = qemu.stderr.take().expect("QEMU's stderr is piped");
    let qemu_err = thread::spawn(move || {
        let mut text = String::new();
        let _ = qemu_err.read_to_string(&mut text);
        text
    });

    let decoded = Command::new(decoder)
        .arg("-e")
        .arg(elf)
        .stdin(Stdio::from(frames))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start defmt-print")
        .wait_with_output()
        .expect("read defmt-print's output");
    let status = qemu.wait().expect("wait for QEMU");
    let elapsed = started.elapsed();

    let run = Run {
        name: name.to_string(),
        status: status.code(),
        timeout_s,
        elapsed,
        log: String::from_utf8_lossy(&decoded.stdout).into_owned(),
        qemu_stderr: qemu_err.join().unwrap_or_default(),
        decoder_stderr: String::from_utf8_lossy(&decoded.stderr).into_owned(),
        uart_path: uart,
        image: q.image,
    };
    std::fs::write(dir.join("log.txt"), run.context()).expect("keep the run's log");
    run
}

/// `bytes` (defmt frames, as a UART or semihosting carried them) decoded
/// against the monitor's ELF by `defmt-print`.
pub fn decode_defmt(bytes: &[u8]) -> String {
    decode_defmt_with(monitor_elf(), bytes)
}

/// `bytes` decoded by `defmt-print` against `elf` (the image that logged them:
/// `hyp-board` for the board image).
pub fn decode_defmt_with(elf: &Path, bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut child = Command::new(tool("defmt-print"))
        .arg("-e")
        .arg(elf)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start defmt-print");
    let mut stdin = child.stdin.take().expect("defmt-print's stdin is piped");
    let input = bytes.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("read defmt-print's output");
    let _ = writer.join();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `-device loader` arguments that put `blob` at the start of RAM
/// (0x40000000) exactly as given, where the monitor looks for its DTB when r2
/// is 0, with QEMU's own edits nowhere in it.
///
/// QEMU refuses `-dtb` of a file that is not an FDT, rewrites the memory
/// node of one that is, and a `-device loader` blob over the DTB QEMU puts at
/// the start of RAM collides with it ("ROM regions are overlapping") in CPU
/// 0's address space. Loaded through CPU 1's (`cpu-num=1`, so the run needs
/// `-smp 2`; CPU 1 stays powered off until PSCI CPU_ON), the blob is written
/// after QEMU's DTB (measured on QEMU 7.2), so the monitor finds it at
/// 0x40000000. Bytes past the blob's end are still QEMU's DTB: pad the blob
/// to the length the monitor will read.
pub fn dtb_over_qemus(blob: &Path) -> [String; 4] {
    [
        "-smp".into(),
        "2".into(),
        "-device".into(),
        format!("loader,file={},addr=0x40000000,force-raw=on,cpu-num=1", blob.display()),
    ]
}

/// Bytes read from `from` (a console socket, a pipe) by a thread of their own,
/// as they come: the buffer they gather in, and the thread (done at end of file).
pub fn gather(mut from: impl Read + Send + 'static) -> (std::sync::Arc<Mutex<Vec<u8>>>, thread::JoinHandle<()>) {
    let buf = std::sync::Arc::new(Mutex::new(Vec::new()));
    let to = std::sync::Arc::clone(&buf);
    let reader = thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = from.read(&mut chunk) {
            if n == 0 {
                break;
            }
            to.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(&chunk[..n]);
        }
    });
    (buf, reader)
}
