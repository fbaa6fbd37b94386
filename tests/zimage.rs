//! The board image, `hyp.zImage`: a Linux zImage without semihosting that runs wherever a loader puts it.
//!
//! - Its header is Linux's (magic at 0x24, start 0, end = its size) and it
//!   holds no semihosting trap; a build that has one is refused on a board path.
//! - On QEMU's two board models, with Debian's own DTBs and `scripts/run
//!   --board`, QEMU's Linux loader starts it and a 512 MiB Debian guest on
//!   all the board's CPUs reaches `/init` with one dense bank, then powers
//!   the board off (QEMU exits 0). Each run has two minutes (`--timeout`).
//! - On QEMU `virt`, a four-instruction loader that follows Linux's boot
//!   protocol starts it from three load addresses, one of them above the
//!   monitor's PAGE_OFFSET, with two guests on two CPUs.
//! - Debian's U-Boot (`u-boot-qemu`, `qemu_arm`) adds the guest node with
//!   `fdt` commands and starts it with `bootz`.
//!
//! Without semihosting the monitor's log is defmt frames on the UART
//! `/chosen/carve,log` names, decoded here with `hyp-board` (the ELF the
//! zImage is made of); its status is its last line, `hyp: stopping: status N`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use carve_tests::{board_image, decode_defmt_with, dtc, monitor_elf, repo_root, stub, tool};

/// Seconds a board run may take (`scripts/run --timeout`): the issue's two minutes.
const BOARD_TIMEOUT_S: u32 = 120;
/// Seconds a run on `virt` may take.
const VIRT_TIMEOUT_S: u32 = 60;
/// `LowTotal` of a native boot on one dense 512 MiB bank (DESIGN.md, QEMU virt).
const DENSE_512_LOWTOTAL_KB: u64 = 499_604;

/// QEMU runs one at a time (TCG is heavy; the machine may have two cores).
static QEMU: Mutex<()> = Mutex::new(());

fn test_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("zimage").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the test directory");
    dir
}

/// The little-endian 32-bit words of `bytes` at 4-byte aligned offsets.
fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks_exact(4).map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
}

/// The A32 semihosting traps: `svc 0x123456` and `hlt 0xf000`.
const SEMIHOSTING_TRAPS: [u32; 2] = [0xef12_3456, 0xe10f_0070];

#[test]
fn hyp_zimage_is_a_zimage_without_semihosting_calls() {
    let (zimage, _) = board_image();
    let image = std::fs::read(&zimage).expect("read hyp.zImage");
    let word = |at: usize| u32::from_le_bytes(image[at..at + 4].try_into().unwrap());
    assert_eq!(word(0x24), 0x016f_2818, "zImage magic at 0x24");
    assert_eq!(word(0x28), 0, "start 0: the image runs wherever it is loaded");
    assert_eq!(word(0x2c) as usize, image.len(), "end: the image's size");
    let traps = words(&image).filter(|w| SEMIHOSTING_TRAPS.contains(w)).count();
    assert_eq!(traps, 0, "hyp.zImage holds {traps} semihosting trap(s)");
    // The scan finds them where they are: in the ELF the QEMU tests run.
    let elf = std::fs::read(monitor_elf()).expect("read the monitor ELF");
    assert!(
        words(&elf).any(|w| SEMIHOSTING_TRAPS.contains(&w)),
        "the semihosting ELF shows no trap: the scan is blind"
    );
}

/// `scripts/run --board` flattens the ELF it is given and refuses it, before
/// any QEMU runs, when it makes semihosting calls.
#[test]
fn a_build_with_semihosting_never_boots_on_a_board() {
    let dir = test_dir("semihosting-refused");
    let out = Command::new(repo_root().join("scripts/run"))
        .args(["--board", "vexpress-a15", "-q", "--hyp"])
        .arg(monitor_elf())
        .arg("--out")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "scripts/run booted a semihosting build on a board:\n{stderr}");
    assert!(stderr.contains("makes semihosting calls"), "the refusal does not say why:\n{stderr}");
    assert!(!dir.join("qemu.cmd").exists() && !dir.join("uart.log").exists(), "QEMU was started");
}

/// One `scripts/run --board` boot: its status, the guest's console, the monitor's log.
struct BoardBoot {
    status: Option<i32>,
    qemu_status: String,
    console: String,
    log: String,
    output: String,
    elapsed: Duration,
}

impl BoardBoot {
    fn context(&self) -> String {
        format!(
            "scripts/run status {:?}, QEMU status {:?}, {:.1} s\n--- output ---\n{}\n--- monitor log ---\n{}\n--- console (last 40 lines) ---\n{}",
            self.status,
            self.qemu_status,
            self.elapsed.as_secs_f64(),
            self.output,
            self.log,
            self.console.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// The value in kB of a `/proc/meminfo` field the guest's /init printed.
    fn meminfo_kb(&self, field: &str) -> u64 {
        let line = self.console.lines().find(|l| l.starts_with(&format!("{field}:")));
        let line = line.unwrap_or_else(|| panic!("no {field} on the console\n{}", self.context()));
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad line {line:?}"))
    }

    fn assert_logged(&self, needle: &str) {
        assert!(self.log.contains(needle), "the monitor's log lacks {needle:?}\n{}", self.context());
    }
}

fn boot_board(board: &str) -> BoardBoot {
    boot_board_with(board, &test_dir(board), &[])
}

/// [`boot_board`] with more `scripts/run` arguments, its files kept in `dir`.
fn boot_board_with(board: &str, dir: &Path, extra: &[&str]) -> BoardBoot {
    let _one = QEMU.lock().unwrap_or_else(|p| p.into_inner());
    let started = Instant::now();
    let out = Command::new(repo_root().join("scripts/run"))
        .args(["--board", board, "-q", "--timeout", &BOARD_TIMEOUT_S.to_string(), "--out"])
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/run");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default().replace('\r', "");
    BoardBoot {
        status: out.status.code(),
        qemu_status: read("qemu.status").trim().to_string(),
        console: read("uart.log"),
        log: read("hyp.log"),
        output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        elapsed: started.elapsed(),
    }
}

/// What both boards must show: the guest reached /init on `cpus` CPUs with
/// one dense 512 MiB bank (LowTotal within 1 % of a native dense boot, no
/// highmem), powered off, and QEMU exited 0 after the monitor's last line.
fn check_board(b: &BoardBoot, cpus: u32) {
    assert_eq!(b.status, Some(0), "scripts/run failed\n{}", b.context());
    assert_eq!(b.qemu_status, "0", "QEMU did not exit 0\n{}", b.context());
    assert!(b.console.contains("CARVE-INIT-DONE"), "the guest's /init never reported\n{}", b.context());
    let (low, high) = (b.meminfo_kb("LowTotal"), b.meminfo_kb("HighTotal"));
    let off = (low as f64 - DENSE_512_LOWTOTAL_KB as f64).abs() / DENSE_512_LOWTOTAL_KB as f64 * 100.0;
    assert!(off < 1.0 && high == 0, "LowTotal {low} kB ({off:.2} % off), HighTotal {high} kB\n{}", b.context());
    assert!(b.console.contains(&format!("nproc: {cpus}")), "the guest does not run on {cpus} CPUs\n{}", b.context());
    b.assert_logged("hyp: image loaded at PA");
    for v in 1..cpus {
        b.assert_logged(&format!("vm: guest@0: vCPU {v} on CPU {v} entering"));
    }
    b.assert_logged("vm: guest@0 powered off (SYSTEM_OFF)");
    b.assert_logged("hyp: stopping: status 0 (Success): powering off");
}

/// Versatile Express (Cortex-A15 x 2, no PSCI firmware): the monitor is in
/// Hyp mode from QEMU's Linux loader (r2 = the DTB at RAM + 128 MiB), logs on
/// UART1, releases CPU 1 from the boot monitor's loop through SYS_FLAGS, and
/// powers the board off through the configuration controller.
#[test]
fn vexpress_a15_boots_a_linux_guest_on_both_cpus() {
    let b = boot_board("vexpress-a15");
    check_board(&b, 2);
    b.assert_logged("hyp: loader registers r0=0x0 r1=0x8e0 r2=0x88000000");
    b.assert_logged("hyp: CPU Cortex-A15 r");
    b.assert_logged("iofpga-bus@300000000/serial@a0000 (carve,log)");
    b.assert_logged("hyp: CPUs start from the boot monitor's loop");
    b.assert_logged("mcc/shutdown, SYS_CFGCTRL function 8 site 0");
    // Given the board, but not the shutdown node the monitor powers it off through.
    b.assert_logged("vm: guest@0: given the board (carve,devices = \"all\")");
    b.assert_logged("vm: guest@0: dma-ranges on /bus@8000000: 1 entries");
    assert!(b.log.lines().any(|l| l.contains("mmc@50000") && l.contains("passed through")), "{}", b.context());
}

/// Orange Pi PC (Allwinner H3, Cortex-A7 x 4, PSCI from the firmware): the
/// log on the second 8250 (reg-shift 2), CPUs started and the board powered
/// off through PSCI, the console with its clock, pin and interrupt providers.
#[test]
fn orangepi_pc_boots_a_linux_guest_on_four_cpus() {
    let b = boot_board("orangepi-pc");
    check_board(&b, 4);
    b.assert_logged("hyp: loader registers r0=0x0 r1=0x0 r2=0x48000000");
    // Accepted by its features, as the Cortex-A15 is.
    b.assert_logged("hyp: CPU Cortex-A7 r0p5: Virtualization Extensions true");
    b.assert_logged("log on /soc/serial@1c28400 (carve,log)");
    b.assert_logged("hyp: CPUs start through PSCI CPU_ON (SMC)");
    b.assert_logged("hyp: power-off: PSCI SYSTEM_OFF through the firmware (SMC)");
    // Given the board: the console's clock and pin controllers among the
    // rest, the SD card's controller too, and /soc's dma-ranges.
    b.assert_logged("vm: guest@0: given the board (carve,devices = \"all\")");
    b.assert_logged("clock@1c20000 and pinctrl@1c20800 and ");
    assert!(b.log.lines().any(|l| l.contains("mmc@1c0f000") && l.contains("passed through")), "{}", b.context());
    b.assert_logged("vm: guest@0: dma-ranges on /soc: 1 entries, one per extent (1 remapped)");
    assert!(!b.log.contains("serial@1c28400 passed through"), "the log UART was given\n{}", b.context());
}

/// `len` bytes that depend on `seed` (xorshift64), for a file whose checksum the test knows.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend(x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The SHA-256 of `file`, from the host's `sha256sum`.
fn sha256(file: &Path) -> String {
    let out = Command::new(tool("sha256sum")).arg(file).output().expect("run sha256sum");
    assert!(out.status.success(), "sha256sum {}", file.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

/// Orange Pi PC, its guest's RAM split in two extents by a carveout the
/// test puts inside the board's RAM (0x5f000000, 32 MiB, `no-map`: less than
/// 512 MiB is free above it, and the IPAs of the rest are carved out at
/// their own PAs), neither extent at its own IPAs: the guest mounts an ext2 filesystem from the board's SD
/// card (`-drive if=sd`; the H3's MMC controller reads it by DMA, its
/// descriptors and buffers in the guest's RAM) and reads a 6 MiB file whose
/// SHA-256 the test knows. The controller puts what it reads at the physical
/// addresses the guest's DMA API gives it: right only through the
/// `dma-ranges` the monitor writes on `/soc` (one entry per extent).
#[test]
fn orangepi_pc_guest_reads_its_sd_card_by_dma_into_remapped_ram() {
    let dir = test_dir("orangepi-pc-sd");
    let files = dir.join("sd");
    std::fs::create_dir_all(&files).expect("create the SD card's files");
    let data = files.join("data.bin");
    std::fs::write(&data, pattern(0x5d_ca7e, 6 << 20)).expect("write the file");
    let want = sha256(&data);
    // An ext2 image of 16 MiB (QEMU's SD card wants a power of two), built without root.
    let image = dir.join("sd.img");
    // mke2fs (e2fsprogs, scripts/setup) is in /usr/sbin, which a user's PATH may lack.
    let mke2fs = carve_tests::find_tool("mke2fs").unwrap_or_else(|| PathBuf::from("/usr/sbin/mke2fs"));
    let mkfs = Command::new(mke2fs)
        .args(["-q", "-t", "ext2", "-b", "4096", "-d"])
        .arg(&files)
        .arg(&image)
        .arg("16M")
        .output()
        .expect("run mke2fs");
    assert!(mkfs.status.success(), "mke2fs: {}", String::from_utf8_lossy(&mkfs.stderr));
    let initrd = dir.join("initrd-blk.cpio.gz");
    let mk = Command::new(repo_root().join("scripts/mkinitrd")).arg("--blk").arg(&initrd).output().expect("mkinitrd");
    assert!(mk.status.success(), "scripts/mkinitrd --blk: {}", String::from_utf8_lossy(&mk.stderr));
    let carveout = dir.join("carveout.dtsi");
    std::fs::write(
        &carveout,
        "/ {\n\treserved-memory {\n\t\t#address-cells = <1>;\n\t\t#size-cells = <1>;\n\t\tranges;\n\t\tsplit@5f000000 {\n\t\t\treg = <0x5f000000 0x2000000>;\n\t\t\tno-map;\n\t\t};\n\t};\n};\n",
    )
    .expect("write the carveout");
    let drive = format!("-drive if=sd,format=raw,file={}", image.display());
    let run = dir.join("run");
    let (initrd_s, carveout_s) = (initrd.display().to_string(), carveout.display().to_string());
    let b = boot_board_with(
        "orangepi-pc",
        &run,
        &["--initrd", &initrd_s, "--carveouts", &carveout_s, "--append", "carve.blk=mmcblk0", "--qemu-args", &drive],
    );
    check_board(&b, 4);
    // The guest's RAM: two extents, each at a PA other than its IPA.
    let extents = carve_tests::logged_extents(&b.log, "guest@0");
    assert_eq!(extents.len(), 2, "extents {extents:x?}\n{}", b.context());
    assert!(extents.iter().all(|&(ipa, pa, _)| ipa != pa), "extents {extents:x?}");
    b.assert_logged("vm: guest@0: dma-ranges on /soc: 2 entries, one per extent (2 remapped)");
    let read: Vec<&str> = b.console.lines().filter(|l| l.starts_with("CARVE-BLK")).collect();
    assert!(read.contains(&"CARVE-BLK-END"), "the guest never finished reading the card\n{}", b.context());
    let line = format!("CARVE-BLK {want}  /mnt/data.bin");
    assert!(read.contains(&line.as_str()), "want {line:?}, the guest read {read:?}\n{}", b.context());
    assert!(b.elapsed < Duration::from_secs(u64::from(BOARD_TIMEOUT_S)), "{:?}", b.elapsed);
}

/// QEMU `virt` with two memtest guests, one CPU each, and the monitor's log
/// on the PL011 (no guest is given it: it is no console, `stdout-path` goes).
fn two_guest_virt_dtb(dir: &Path) -> PathBuf {
    let size = |s: &str| std::fs::metadata(stub(s)).expect("stat the stub").len();
    let mut dts = String::from(
        "/dts-v1/;\n/include/ \"qemu-virt.dtsi\"\n&cpu0 {\n\tenable-method = \"psci\";\n};\n&cpus {\n\tcpu@1 {\n\t\tdevice_type = \"cpu\";\n\t\tcompatible = \"arm,cortex-a15\";\n\t\treg = <1>;\n\t\tenable-method = \"psci\";\n\t};\n};\n/ {\n\tchosen {\n\t\t#address-cells = <1>;\n\t\t#size-cells = <1>;\n\t\t/delete-property/ stdout-path;\n\t\tcarve,log = \"/pl011@9000000\";\n",
    );
    for (i, module) in [(0, 0x4800_0000u32), (1, 0x4900_0000)] {
        dts += &format!(
            "\t\tguest@{i} {{\n\t\t\tcompatible = \"carve,guest\";\n\t\t\t#address-cells = <1>;\n\t\t\t#size-cells = <1>;\n\t\t\tmemory = <0x0 0x10000>;\n\t\t\tcpus = <1>;\n\t\t\tmodule@{module:x} {{\n\t\t\t\tcompatible = \"multiboot,kernel\", \"multiboot,module\";\n\t\t\t\treg = <{module:#x} {:#x}>;\n\t\t\t}};\n\t\t}};\n",
            size("memtest")
        );
    }
    dts += "\t};\n};\n";
    let src = dir.join("machine.dts");
    std::fs::write(&src, dts).expect("write the tree");
    let dtb = dir.join("machine.dtb");
    dtc(&src, &dtb);
    dtb
}

/// A loader in four instructions, as Linux's ARM boot protocol asks: r0 = 0,
/// r1 = ~0 (no machine type: a DT boot), r2 = `dtb`, then a jump to `image`,
/// in Hyp mode with the MMU off (QEMU's reset state without a kernel).
fn mini_loader(dtb: u32, image: u32) -> Vec<u8> {
    [0xe3a0_0000u32, 0xe3e0_1000, 0xe59f_2000, 0xe59f_f000, dtb, image].iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A run of the board image: QEMU's status, the monitor's log from the UART, QEMU's stderr.
struct ImageRun {
    status: Option<i32>,
    log: String,
    stderr: String,
}

impl ImageRun {
    fn context(&self) -> String {
        format!("QEMU status {:?}\n--- monitor log ---\n{}--- QEMU stderr ---\n{}", self.status, self.log, self.stderr)
    }
    fn assert_logged(&self, needle: &str) {
        assert!(self.log.contains(needle), "the monitor's log lacks {needle:?}\n{}", self.context());
    }
}

/// The board image from `addr` on QEMU virt (no semihosting), started by [`mini_loader`].
#[test]
fn the_zimage_runs_from_three_load_addresses_on_virt() {
    let (zimage, elf) = board_image();
    // Low in RAM and 2 MiB aligned; only 4 KiB aligned; above 0xc0000000,
    // where the monitor's own lowmem linear map lives in its address space.
    for addr in [0x4080_0000u32, 0x6543_2000, 0xd000_8000] {
        let dir = test_dir(&format!("load-{addr:08x}"));
        let dtb = two_guest_virt_dtb(&dir);
        let loader = dir.join("loader.bin");
        // QEMU puts the DTB at the start of RAM when it starts no kernel itself.
        std::fs::write(&loader, mini_loader(0x4000_0000, addr)).expect("write the loader");
        let uart = dir.join("uart.log");
        let _one = QEMU.lock().unwrap_or_else(|p| p.into_inner());
        let out = Command::new(tool("timeout"))
            .args(["--kill-after=5", &VIRT_TIMEOUT_S.to_string()])
            .arg(tool("qemu-system-arm"))
            .args(["-M", "virt,virtualization=on", "-cpu", "cortex-a15", "-m", "2560", "-smp", "2"])
            .args(["-nographic", "-nic", "none", "-monitor", "none", "-serial"])
            .arg(format!("file:{}", uart.display()))
            .arg("-dtb")
            .arg(&dtb)
            .arg("-device")
            .arg(format!("loader,file={},addr={addr:#x},force-raw=on", zimage.display()))
            .arg("-device")
            .arg(format!("loader,file={},addr=0x48000000,force-raw=on", stub("memtest").display()))
            .arg("-device")
            .arg(format!("loader,file={},addr=0x49000000,force-raw=on", stub("memtest").display()))
            .arg("-device")
            .arg(format!("loader,file={},addr=0x40100000,force-raw=on", loader.display()))
            .args(["-device", "loader,addr=0x40100000,cpu-num=0"])
            .stdin(Stdio::null())
            .output()
            .expect("run QEMU");
        let run = ImageRun {
            status: out.status.code(),
            log: decode_defmt_with(&elf, &std::fs::read(&uart).unwrap_or_default()),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        std::fs::write(dir.join("log.txt"), run.context()).expect("keep the log");
        assert_eq!(run.status, Some(0), "load address {addr:#x}\n{}", run.context());
        run.assert_logged("hyp: loader registers r0=0x0 r1=0xffffffff r2=0x40000000");
        run.assert_logged(&format!("hyp: image loaded at PA {addr:#010x}-"));
        for g in ["guest@0", "guest@1"] {
            let pass = run.log.lines().any(|l| l.contains(&format!(" {g}: memtest: bank ")) && l.ends_with("PASS"));
            assert!(pass, "{g} did not pass memtest from load address {addr:#x}\n{}", run.context());
        }
        run.assert_logged("vm: guest@1: vCPU 0 on CPU 1 entering");
        run.assert_logged("hyp: stopping: status 0 (Success): powering off");
    }
}

/// Bytes a child writes, gathered by a thread, and waited for by pattern.
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn spawn(mut from: impl Read + Send + 'static) -> Self {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let to = Arc::clone(&buf);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = from.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                to.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Output(buf)
    }

    /// Waits until `needle` appears at or after byte `from`; returns where it ends.
    fn wait_for(&self, needle: &str, from: usize, deadline: Instant) -> Option<usize> {
        loop {
            {
                let b = self.0.lock().unwrap();
                if let Some(at) =
                    b.get(from..).and_then(|s| s.windows(needle.len()).position(|w| w == needle.as_bytes()))
                {
                    return Some(from + at + needle.len());
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

/// Debian's U-Boot for QEMU `virt` (`u-boot-qemu`, `qemu_arm`) is the
/// firmware: it reads `hyp.zImage` from QEMU (fw_cfg, `qfw load`), adds to
/// its device tree, with `fdt` commands, the monitor's log UART and a guest
/// (a memtest stub QEMU put at 0x48000000), and starts the image with
/// `bootz`, in Hyp mode with r2 = that tree.
#[test]
fn u_boot_starts_the_zimage_with_bootz() {
    let (zimage, elf) = board_image();
    let firmware = Path::new("/usr/lib/u-boot/qemu_arm/u-boot.bin");
    assert!(firmware.is_file(), "{} is missing: run scripts/setup (it installs u-boot-qemu)", firmware.display());
    let dir = test_dir("u-boot");
    let memtest = stub("memtest");
    let size = std::fs::metadata(memtest).expect("stat the stub").len();
    let _one = QEMU.lock().unwrap_or_else(|p| p.into_inner());
    let mut qemu = Command::new(tool("timeout"))
        .args(["--kill-after=5", &VIRT_TIMEOUT_S.to_string()])
        .arg(tool("qemu-system-arm"))
        .args(["-M", "virt,virtualization=on", "-cpu", "cortex-a15", "-m", "1280"])
        .args(["-nographic", "-nic", "none", "-monitor", "none", "-serial", "stdio", "-bios"])
        .arg(firmware)
        .arg("-kernel")
        .arg(&zimage)
        .arg("-device")
        .arg(format!("loader,file={},addr=0x48000000,force-raw=on", memtest.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start QEMU");
    let mut input = qemu.stdin.take().expect("QEMU's stdin is piped");
    let out = Output::spawn(qemu.stdout.take().expect("QEMU's stdout is piped"));
    let err = Output::spawn(qemu.stderr.take().expect("QEMU's stderr is piped"));
    let deadline = Instant::now() + Duration::from_secs(u64::from(VIRT_TIMEOUT_S));
    let commands = [
        // Stop the autoboot (it would `bootz` the image with QEMU's tree as it is).
        String::new(),
        "qfw load ${kernel_addr_r} ${ramdisk_addr_r}".into(),
        "fdt addr ${fdtcontroladdr}".into(),
        "fdt resize 4096".into(),
        // The log UART is the console's: the guest must not be given it.
        "fdt rm /chosen stdout-path".into(),
        "fdt set /chosen carve,log /pl011@9000000".into(),
        "fdt set /chosen \"#address-cells\" <1>".into(),
        "fdt set /chosen \"#size-cells\" <1>".into(),
        "fdt mknode /chosen guest@0".into(),
        "fdt set /chosen/guest@0 compatible carve,guest".into(),
        "fdt set /chosen/guest@0 \"#address-cells\" <1>".into(),
        "fdt set /chosen/guest@0 \"#size-cells\" <1>".into(),
        "fdt set /chosen/guest@0 memory <0x0 0x10000>".into(),
        "fdt set /chosen/guest@0 cpus <1>".into(),
        "fdt mknode /chosen/guest@0 module@48000000".into(),
        "fdt set /chosen/guest@0/module@48000000 compatible multiboot,kernel multiboot,module".into(),
        format!("fdt set /chosen/guest@0/module@48000000 reg <0x48000000 {size:#x}>"),
        "printenv fdtcontroladdr".into(),
        "bootz ${kernel_addr_r} - ${fdtcontroladdr}".into(),
    ];
    let mut at = 0;
    let mut failed = None;
    for (i, cmd) in commands.iter().enumerate() {
        let prompt = if i == 0 { "Hit any key to stop autoboot" } else { "=> " };
        match out.wait_for(prompt, at, deadline) {
            Some(end) => at = end,
            None => {
                failed = Some(format!("no {prompt:?} before {cmd:?}"));
                break;
            }
        }
        writeln!(input, "{cmd}").expect("write to U-Boot");
        input.flush().expect("flush");
    }
    let started = failed.is_none().then(|| out.wait_for("Starting kernel ...", at, deadline)).flatten();
    let status = qemu.wait().expect("wait for QEMU").code();
    let bytes = out.bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    // After U-Boot's last line the UART carries the monitor's defmt frames.
    let log = started.map(|s| decode_defmt_with(&elf, &bytes[s..])).unwrap_or_default();
    let context = format!(
        "QEMU status {status:?}, {}\n--- monitor log ---\n{log}--- U-Boot (text part) ---\n{}\n--- QEMU stderr ---\n{}",
        failed.as_deref().unwrap_or("every command sent"),
        text.split("Starting kernel ...").next().unwrap_or(""),
        String::from_utf8_lossy(&err.bytes())
    );
    std::fs::write(dir.join("log.txt"), &context).expect("keep the log");
    assert!(failed.is_none() && started.is_some(), "U-Boot did not start the image\n{context}");
    assert_eq!(status, Some(0), "QEMU did not exit 0\n{context}");
    // bootz passes the tree where it is (fdt_high = 0xffffffff): r2 is its address.
    let fdt = text.lines().find_map(|l| l.trim().strip_prefix("fdtcontroladdr="));
    let fdt = u32::from_str_radix(fdt.unwrap_or_else(|| panic!("U-Boot printed no fdtcontroladdr\n{context}")), 16)
        .unwrap_or_else(|e| panic!("fdtcontroladdr: {e}\n{context}"));
    assert!(log.contains(&format!(" r2={fdt:#010x}")), "r2 is not U-Boot's tree at {fdt:#x}\n{context}");
    for needle in [
        "hyp: CPU mode Hyp (0x1a)",
        "hyp: image loaded at PA 0x40400000-",
        "hyp: log on /pl011@9000000 (carve,log)",
        "map: guest@0: 64 MiB",
        "guest@0: memtest: bank 0x40000000+0x04000000",
        "vm: guest@0 powered off (SYSTEM_OFF)",
        "hyp: stopping: status 0 (Success): powering off",
    ] {
        assert!(log.contains(needle), "the monitor's log lacks {needle:?}\n{context}");
    }
    let pass = log.lines().any(|l| l.contains(" guest@0: memtest: bank ") && l.ends_with("PASS"));
    assert!(pass, "memtest did not pass\n{context}");
}
