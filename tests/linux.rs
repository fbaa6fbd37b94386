//! A real Linux guest under the monitor: Debian's armhf LPAE kernel and the
//! test initrd (scripts/mkinitrd) booted by `scripts/run` on QEMU `virt`.
//!
//! Each test runs `scripts/run -q` (the monitor built once by scripts/build,
//! the machine DTB compiled and patched, kernel and initrd loaded at the
//! guest's module addresses, no network) under a timeout, then reads the guest's console
//! (`uart.log`) and QEMU's exit status (`qemu.status`: the monitor's exit
//! code; 0 when the guest powered off) from the run's directory. The guest
//! must see one dense bank: `LowTotal` within 1 % of a native boot on one
//! 768 MiB bank (759,060 kB, DESIGN.md "The problem, measured") and no
//! highmem, however the machine's RAM is holed or placed.
//!
//! QEMU runs one at a time (TCG is heavy; the machine may have two cores):
//! every test holds [`QEMU`] while it boots. A missing QEMU, kernel or tool
//! fails the test with a pointer to `scripts/setup`: nothing here skips
//! itself into a pass.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use carve_tests::{find_tool, logged_extents, monitor_elf, number_after, repo_root, test_dir};

/// Seconds each boot may take before `timeout` stops QEMU (status 124).
const TIMEOUT_S: u32 = 180;
/// `LowTotal` of a native boot on one dense 768 MiB bank (QEMU's own DTB).
const DENSE_LOWTOTAL_KB: u64 = 759_060;
/// How far the guest's `LowTotal` may be from [`DENSE_LOWTOTAL_KB`], in percent.
const LOWTOTAL_TOLERANCE_PCT: f64 = 1.0;

/// Held while QEMU runs, so the tests boot one after the other.
static QEMU: Mutex<()> = Mutex::new(());

/// Where scripts/setup caches the kernel and busybox (`$CARVE_CACHE`, as in scripts/lib.sh).
fn cache_dir() -> PathBuf {
    std::env::var_os("CARVE_CACHE").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".cache"))
}

/// Whether `name` is an executable on PATH or in cargo's bin directory.
fn have_tool(name: &str) -> bool {
    find_tool(name).is_some()
}

/// Fails (never skips) unless everything a boot needs is installed and cached.
fn require_setup() {
    let tools =
        ["qemu-system-arm", "qemu-system-aarch64", "dtc", "fdtput", "fdtget", "defmt-print", "timeout", "cpio", "gzip"];
    let mut missing: Vec<String> =
        tools.iter().filter(|t| !have_tool(t)).map(|t| format!("{t} (not installed)")).collect();
    let cache = cache_dir();
    for file in ["linux/zImage", "busybox/busybox"] {
        let path = cache.join(file);
        if !path.is_file() {
            missing.push(format!("{} (not cached)", path.display()));
        }
    }
    assert!(missing.is_empty(), "missing: {}: run scripts/setup", missing.join(", "));
}

/// One boot of the guest under the monitor.
struct Boot {
    name: &'static str,
    dir: PathBuf,
    /// `scripts/run`'s own exit status.
    script_status: Option<i32>,
    script_output: String,
    /// QEMU's exit status (the monitor's exit code), if QEMU ran.
    qemu_status: Option<i32>,
    /// The guest's console, carriage returns removed.
    console: String,
    /// The monitor's decoded defmt log.
    monitor_log: String,
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Boot {
    fn context(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "boot `{}` ({}): scripts/run exit status {:?}, QEMU exit status {:?}",
            self.name,
            self.dir.display(),
            self.script_status,
            self.qemu_status
        );
        let _ = writeln!(s, "--- scripts/run output ---\n{}", tail(&self.script_output, 30));
        let _ = writeln!(s, "--- monitor log (last 30 lines) ---\n{}", tail(&self.monitor_log, 30));
        let _ = writeln!(s, "--- guest console (last 40 lines) ---\n{}", tail(&self.console, 40));
        s
    }

    fn assert_powered_off(&self) {
        assert_ne!(self.qemu_status, Some(124), "QEMU did not exit within {TIMEOUT_S} s\n{}", self.context());
        assert_eq!(self.qemu_status, Some(0), "QEMU's exit status is not 0\n{}", self.context());
        assert_eq!(self.script_status, Some(0), "scripts/run failed\n{}", self.context());
    }

    /// The markers of the initrd's /init, each on a line of its own, in order.
    fn assert_markers(&self) {
        let mut want =
            ["CARVE-INIT-START", "CARVE-MEMINFO-BEGIN", "CARVE-MEMINFO-END", "CARVE-INIT-DONE"].into_iter().peekable();
        for line in self.console.lines() {
            if want.peek() == Some(&line.trim_end()) {
                want.next();
            }
        }
        if let Some(marker) = want.next() {
            panic!("the console lacks {marker:?} (after the markers before it)\n{}", self.context());
        }
        // guest-stubs/cntvct ran: the virtual counter and its frequency.
        let cntvct = self.console.lines().find_map(|l| l.strip_prefix("CARVE-CNTVCT "));
        let ok = cntvct.is_some_and(|rest| {
            let v: Vec<&str> = rest.split_whitespace().collect();
            v.len() == 2 && v.iter().all(|n| n.parse::<u64>().is_ok())
        });
        assert!(ok, "no `CARVE-CNTVCT <count> <Hz>` line from /bin/cntvct\n{}", self.context());
    }

    /// The lines between CARVE-MEMINFO-BEGIN and CARVE-MEMINFO-END.
    fn meminfo(&self) -> Vec<&str> {
        self.console
            .lines()
            .skip_while(|l| l.trim_end() != "CARVE-MEMINFO-BEGIN")
            .skip(1)
            .take_while(|l| l.trim_end() != "CARVE-MEMINFO-END")
            .collect()
    }

    /// The value after `key:` in the meminfo block (e.g. `LowTotal` -> "759060 kB").
    fn field(&self, key: &str) -> String {
        let prefix = format!("{key}:");
        self.meminfo()
            .iter()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("the meminfo block lacks {key}\n{}", self.context()))
    }

    fn kb(&self, key: &str) -> u64 {
        let v = self.field(key);
        v.strip_suffix(" kB")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{key}: {v:?} is not `N kB`\n{}", self.context()))
    }

    /// One dense bank: LowTotal as natively on 768 MiB, no highmem.
    fn assert_dense_view(&self) {
        let low = self.kb("LowTotal");
        let high = self.kb("HighTotal");
        let off_pct = (low as f64 - DENSE_LOWTOTAL_KB as f64).abs() * 100.0 / DENSE_LOWTOTAL_KB as f64;
        assert!(
            off_pct <= LOWTOTAL_TOLERANCE_PCT,
            "LowTotal {low} kB is {off_pct:.2} % from the dense {DENSE_LOWTOTAL_KB} kB (allowed {LOWTOTAL_TOLERANCE_PCT} %)\n{}",
            self.context()
        );
        assert_eq!(high, 0, "HighTotal {high} kB: the guest should see no highmem\n{}", self.context());
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).replace('\r', "")).unwrap_or_default()
}

/// Boots the guest with `scripts/run -q` and the given options.
fn boot(name: &'static str, args: &[&str]) -> Boot {
    require_setup();
    let _one_at_a_time = QEMU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let elf = monitor_elf();

    let dir = test_dir!("linux", name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run directory");

    let run = repo_root().join("scripts/run");
    let timeout = TIMEOUT_S.to_string();
    let out = Command::new(&run)
        .args(["-q", "--timeout", &timeout, "--hyp"])
        .arg(elf)
        .arg("--out")
        .arg(&dir)
        .args(args)
        // The options name trees relative to the repository.
        .current_dir(repo_root())
        // require_setup() checked the tools: scripts/run need not install anything.
        .env("CARVE_SETUP_DONE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", run.display()));

    let qemu_status = std::fs::read_to_string(dir.join("qemu.status")).ok().and_then(|s| s.trim().parse().ok());
    let script_output = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Boot {
        name,
        script_status: out.status.code(),
        script_output,
        qemu_status,
        console: read_lossy(&dir.join("uart.log")),
        monitor_log: read_lossy(&dir.join("hyp.log")),
        dir,
    }
}

/// The machine of DESIGN.md's table: 1280 MiB with two 128 MiB `no-map`
/// carveouts; the 768 MiB guest must see one dense bank.
#[test]
fn guest_sees_one_dense_bank_around_two_carveouts() {
    let b = boot("2carveouts", &["--dts", "dts/virt-2carveouts.dts", "-m", "1280"]);
    b.assert_powered_off();
    b.assert_markers();
    b.assert_dense_view();
}

/// Two CPUs (`-smp 2`, the guest with `cpus = <2>`): the secondary comes up
/// through PSCI CPU_ON and both are online.
#[test]
fn guest_brings_up_two_cpus() {
    let b = boot("smp2", &["--dts", "dts/virt-smp2.dts", "-m", "1280", "--smp", "2"]);
    b.assert_powered_off();
    b.assert_markers();
    let online = b.field("online");
    assert_eq!(online, "0-1", "/sys/devices/system/cpu/online\n{}", b.context());
    assert_eq!(b.field("nproc"), "2", "nproc\n{}", b.context());
    b.assert_dense_view();
}

/// A guest of two vCPUs restarts: its /init runs `reboot -f` on the first
/// boot (`carve.reboot-once=1`); Linux stops CPU 1 and asks for SYSTEM_RESET on
/// CPU 0; the monitor stops vCPU 1 (its RAM unmapped, its CPU woken), rebuilds
/// the guest and boots vCPU 0, which starts vCPU 1 again through CPU_ON. The
/// second boot sees both CPUs online and powers off, and the monitor's
/// stage-2 table pages and the buddy's free pages are the same at the start
/// of both boots.
#[test]
fn guest_of_two_cpus_reboots_once_with_both_cpus_and_no_page_lost() {
    let b = boot(
        "smp2-reboot",
        &["--dts", "dts/virt-smp2.dts", "-m", "1280", "--smp", "2", "--append", "carve.reboot-once=1"],
    );
    b.assert_powered_off();
    let reboots = b.console.lines().filter(|l| l.trim_end() == "CARVE-REBOOT").count();
    assert_eq!(reboots, 1, "/init should reboot once\n{}", b.context());
    // Two boots, each with its block; the second after the reboot, with both CPUs.
    let blocks: Vec<&str> = b.console.split("CARVE-MEMINFO-BEGIN").skip(1).collect();
    assert_eq!(blocks.len(), 2, "two boots' blocks\n{}", b.context());
    for (i, block) in blocks.iter().enumerate() {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")).map(|v| v.trim().to_string()))
                .unwrap_or_default()
        };
        assert_eq!(field("restarts"), i.to_string(), "boot {i}: restarts\n{}", b.context());
        assert_eq!(field("online"), "0-1", "boot {i}: /sys/devices/system/cpu/online\n{}", b.context());
        assert_eq!(field("nproc"), "2", "boot {i}: nproc\n{}", b.context());
    }
    let reboot_at = b.console.find("CARVE-REBOOT").unwrap();
    assert!(
        b.console[reboot_at..].contains("CPU1: Booted secondary processor")
            || b.console[reboot_at..].contains("smp: Brought up 1 node, 2 CPUs"),
        "the second boot brings CPU 1 up\n{}",
        b.context()
    );
    let log = &b.monitor_log;
    for want in [
        "vm: guest@0 asked for SYSTEM_RESET",
        "vm: guest@0: restart from vCPU 0: RAM unmapped, 1 other vCPU(s) asked to stop",
        "vm: guest@0: vCPU 1 stopped for the restart",
        "vm: guest@0: restarted (1 so far)",
        "vm: guest@0: PoweredOff after 1 restart(s)",
    ] {
        assert!(log.contains(want), "the monitor did not log {want:?}\n{}", b.context());
    }
    let counts: Vec<(u64, u64)> = log
        .lines()
        .filter(|l| l.contains("vm: guest@0: boot ") && l.contains("stage-2 table pages "))
        .map(|l| (number_after(l, "stage-2 table pages "), number_after(l, "buddy free pages ")))
        .collect();
    assert_eq!(counts.len(), 2, "one count per boot\n{}", b.context());
    assert_eq!(counts[0], counts[1], "table pages and free pages at the start of each boot\n{}", b.context());
}

/// RAM above 4 GiB (6 GiB, everything from 0x50000000 to 4 GiB carved out):
/// the guest is backed by highmem the monitor reaches through LPAE (its logged
/// extents say so: every one at or above 4 GiB physical), and still sees one
/// dense bank. qemu-system-aarch64 (scripts/run picks it above 3072 MiB).
#[test]
fn guest_backed_above_4gib_sees_one_dense_bank() {
    let b = boot("highmem", &["--dts", "dts/virt-highmem.dts", "-m", "6144"]);
    assert!(
        b.script_output.contains("qemu-system-aarch64"),
        "expected scripts/run to use qemu-system-aarch64 for -m 6144\n{}",
        b.context()
    );
    b.assert_powered_off();
    let extents = logged_extents(&b.monitor_log, "guest@0");
    assert!(!extents.is_empty(), "the monitor logged no extent for guest@0\n{}", b.context());
    assert_eq!(extents.iter().map(|e| e.2).sum::<u64>(), 768 << 20, "{extents:x?}\n{}", b.context());
    for &(ipa, pa, size) in &extents {
        assert!(pa >= 1 << 32, "IPA {ipa:#x} is backed at PA {pa:#x} ({size:#x} bytes), below 4 GiB\n{}", b.context());
    }
    b.assert_markers();
    b.assert_dense_view();
}

/// A 512 MiB guest whose top 32 MiB are movable pages of a CMA pool
/// (`dts/virt-cma-guest.dts`, `-m 1024`): lent page by page and mapped 4 KiB
/// at a time, they boot Linux like any RAM, and the guest sees one bank of
/// 512 MiB (less what Linux itself reserves).
#[test]
fn guest_with_movable_memory_from_a_cma_pool_boots() {
    let b = boot("cma-guest", &["--dts", "dts/virt-cma-guest.dts", "-m", "1024"]);
    b.assert_powered_off();
    b.assert_markers();
    assert!(
        b.monitor_log.contains("cma: guest@0: 8192 pages (32768 KiB) of IPA 0x5e000000.. lent from pool cma@50000000"),
        "the monitor did not lend the movable part\n{}",
        b.context()
    );
    let (low, high) = (b.kb("LowTotal"), b.kb("HighTotal"));
    // 512 MiB less the kernel image and Linux's own reservations: as the dense 768 MiB boot is to its RAM.
    assert!((490_000..=512 * 1024).contains(&low), "LowTotal {low} kB\n{}", b.context());
    assert_eq!(high, 0, "HighTotal {high} kB\n{}", b.context());
}

/// `virt-smp2.dts` with the guest on carve's virtual GIC (`carve,virtual-gic`,
/// `dts/virt-smp2-vgic.dts`): the monitor takes the physical interrupts,
/// emulates the GICD, injects the virtual timer and the console's line as
/// hardware interrupts and the IPIs as SGIs through list registers. Linux
/// must bring both CPUs online, see one dense bank, and power off.
#[test]
fn guest_on_the_virtual_gic_brings_up_two_cpus() {
    let b = boot("smp2-vgic", &["--dts", "dts/virt-smp2-vgic.dts", "-m", "1280", "--smp", "2"]);
    b.assert_powered_off();
    assert!(
        b.monitor_log.contains("vm: one guest with carve,virtual-gic")
            && b.monitor_log.contains("the monitor takes physical IRQs"),
        "the guest did not get the virtual GIC\n{}",
        b.context()
    );
    b.assert_markers();
    assert_eq!(b.field("online"), "0-1", "/sys/devices/system/cpu/online\n{}", b.context());
    b.assert_dense_view();
    let end = b.monitor_log.lines().find(|l| l.contains("vgic: guest@0:") && l.contains("GICD accesses emulated"));
    let timer = end.map(|l| carve_tests::number_after(l, "ignored; ")).unwrap_or(0);
    assert!(timer > 0, "no virtual-timer interrupt injected, or no vGIC summary at the end\n{}", b.context());
}

/// LowTotal of the same kernel natively on a dense 320 MiB machine (DESIGN.md).
const DENSE_320_LOWTOTAL_KB: u64 = 304_724;

impl Boot {
    /// What guest `name` wrote on the shared console: its lines (`<name>| text`), prefix removed.
    fn guest_console(&self, name: &str) -> String {
        let prefix = format!("{name}| ");
        self.console.lines().filter_map(|l| l.strip_prefix(&prefix)).map(|l| format!("{l}\n")).collect()
    }

    /// The value after `key:` between the guest's CARVE-MEMINFO markers.
    fn guest_field(&self, name: &str, key: &str) -> String {
        let text = self.guest_console(name);
        let prefix = format!("{key}:");
        text.lines()
            .skip_while(|l| l.trim_end() != "CARVE-MEMINFO-BEGIN")
            .take_while(|l| l.trim_end() != "CARVE-MEMINFO-END")
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{name}'s meminfo block lacks {key}\n{}", self.context()))
    }

    /// Guest `name` reached /init, printed its figures, and powered off (its own console and the monitor's log).
    fn assert_guest_done(&self, name: &str) {
        let text = self.guest_console(name);
        for marker in ["CARVE-INIT-START", "CARVE-MEMINFO-END", "CARVE-INIT-DONE", "reboot: Power down"] {
            assert!(text.contains(marker), "{name}'s console lacks {marker:?}\n{}", self.context());
        }
        let off = format!("vm: {name} powered off (SYSTEM_OFF)");
        assert!(self.monitor_log.contains(&off), "the monitor did not log {off:?}\n{}", self.context());
        let low: u64 = self
            .guest_field(name, "LowTotal")
            .strip_suffix(" kB")
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name}: LowTotal is not `N kB`\n{}", self.context()));
        let off_pct = (low as f64 - DENSE_320_LOWTOTAL_KB as f64).abs() * 100.0 / DENSE_320_LOWTOTAL_KB as f64;
        assert!(
            off_pct <= LOWTOTAL_TOLERANCE_PCT,
            "{name}: LowTotal {low} kB is {off_pct:.2} % from the dense 320 MiB {DENSE_320_LOWTOTAL_KB} kB\n{}",
            self.context()
        );
        assert_eq!(self.guest_field(name, "HighTotal"), "0 kB", "{name}: highmem\n{}", self.context());
    }
}

/// Four Linux guests at once (`dts/virt-4guests.dts`: `-m 2048 -smp 4`, the
/// two 128 MiB `no-map` carveouts, 320 MiB and one vCPU each, each from its
/// own kernel and ramdisk modules), on the virtual GIC with the shared
/// console: each reaches /init, sees one dense bank (LowTotal within 1 % of
/// a native dense 320 MiB boot), and powers off; the monitor exits 0 once all have.
#[test]
fn four_linux_guests_share_the_machine() {
    let b = boot("4guests", &["--guests", "4"]);
    b.assert_powered_off();
    assert!(b.monitor_log.contains("the monitor takes physical IRQs"), "no virtual GIC\n{}", b.context());
    for g in ["guest@0", "guest@1", "guest@2", "guest@3"] {
        b.assert_guest_done(g);
        assert_eq!(b.guest_field(g, "online"), "0", "{g}: one vCPU\n{}", b.context());
    }
}

/// Two Linux guests of two vCPUs each on `-smp 4` (`dts/virt-2guests-smp2.dts`):
/// each brings both its CPUs online (its IPIs are SGIs through the virtual
/// GIC, to its own vCPUs only) and powers off. guest@1 is given the PL031
/// RTC (`carve,devices`): its Linux registers it, with its interrupt, and
/// guest@0's never sees one.
#[test]
fn two_smp_linux_guests_each_bring_up_two_cpus_and_one_is_given_the_rtc() {
    let b = boot("2guests-smp2", &["--guests", "2", "--dts", "dts/virt-2guests-smp2.dts"]);
    b.assert_powered_off();
    for g in ["guest@0", "guest@1"] {
        b.assert_guest_done(g);
        assert_eq!(b.guest_field(g, "online"), "0-1", "{g}: /sys/devices/system/cpu/online\n{}", b.context());
        assert_eq!(b.guest_field(g, "nproc"), "2", "{g}: nproc\n{}", b.context());
    }
    let (rtc0, rtc1) = (b.guest_console("guest@0"), b.guest_console("guest@1"));
    assert!(
        rtc1.contains("rtc-pl031 9010000.pl031: registered as rtc0"),
        "guest@1 did not register the RTC it was given\n{}",
        b.context()
    );
    assert!(!rtc0.contains("pl031"), "guest@0 saw the RTC given to guest@1\n{}", b.context());
    assert!(
        b.monitor_log.contains("vgic: guest@1: physical interrupt 34 is its own, routed to CPU 2"),
        "the RTC's interrupt was not routed to guest@1's CPU\n{}",
        b.context()
    );
}

/// Two Debian guests with a shell (`carve.shell=1`) share the console; the
/// test types into QEMU's console socket (`scripts/run --console-socket`) as
/// a person would. A command typed reaches only the guest with the focus
/// (its emulated UART's receive interrupt, through its virtual GIC), its
/// answer comes back prefixed; Ctrl-A three times moves the focus; `exit` in
/// each shell powers that guest off and the monitor exits 0.
#[test]
fn typed_commands_reach_only_the_focused_linux_guest() {
    use std::io::Write as _;
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    require_setup();
    let _one_at_a_time = QEMU.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = test_dir!("linux", "typed-input");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the run directory");
    let sock = dir.join("console.sock");
    let timeout = TIMEOUT_S.to_string();
    let script = Command::new(repo_root().join("scripts/run"))
        .args(["-q", "--timeout", &timeout, "--guests", "2", "--append", "carve.shell=1", "--hyp"])
        .arg(monitor_elf())
        .arg("--out")
        .arg(&dir)
        .arg("--console-socket")
        .arg(&sock)
        .current_dir(repo_root())
        .env("CARVE_SETUP_DONE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start scripts/run");
    let start = Instant::now();
    let con = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no console socket at {}", sock.display());
        std::thread::sleep(Duration::from_millis(100));
    };
    let (seen, reader) = carve_tests::gather(con.try_clone().expect("clone the socket"));
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).replace('\r', "");
    let wait = |needle: &str| {
        let t = Instant::now();
        while !text().contains(needle) {
            assert!(
                t.elapsed() < Duration::from_secs(u64::from(TIMEOUT_S)),
                "no {needle:?} on the console:\n{}",
                text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut con = con;
    let mut send = |s: &str| {
        for b in s.bytes() {
            con.write_all(&[b]).expect("type into the console");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("guest@0| CARVE-INIT-DONE");
    wait("guest@1| CARVE-INIT-DONE");
    std::thread::sleep(Duration::from_secs(2));
    // The answers are computed by the shell, so they appear only if it ran the command.
    // Each answer is awaited with its newline: the focused guest's line shows
    // as it is written, and a focus switch before the newline would cut it
    // and show it again whole.
    send("echo to0-$((40+2))\r");
    wait("guest@0| to0-42\n");
    send("\x01\x01\x01");
    wait("(carve)| input goes to guest@1");
    send("echo to1-$((40+3))\r");
    wait("guest@1| to1-43\n");
    send("exit\r");
    wait("(carve)| guest@1 ended: powered off");
    send("\x01\x01\x01");
    wait("(carve)| input goes to guest@0");
    send("exit\r");
    let out = script.wait_with_output().expect("wait for scripts/run");
    let _ = reader.join();
    let console = text();
    let context = format!(
        "console:\n{console}\n--- scripts/run ---\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "scripts/run's exit status\n{context}");
    // Each answer came from its own guest only.
    assert!(!console.contains("guest@1| to0-42") && !console.contains("guest@0| to1-43"), "{context}");
    let got: Vec<&str> = console.lines().filter(|l| l.ends_with("to0-42") || l.ends_with("to1-43")).collect();
    assert_eq!(got, ["guest@0| to0-42", "guest@1| to1-43"], "{context}");
    assert!(console.contains("(carve)| guest@0 ended: powered off"), "{context}");
}
