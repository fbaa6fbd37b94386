//! The console several guests share (issue 10): whole prefixed lines out, input to the guest with the focus.
//!
//! Four `consoles` stubs (guest-stubs/carve-stubs/src/bin/consoles.rs) run at
//! once on `-smp 4`, each writing 40 lines a byte at a time to its emulated
//! UART. QEMU's first serial port is a Unix socket the test holds: it reads
//! what the monitor prints and types into it, as a person would.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use carve_tests::{
    compile_dts, consoles_line, monitor_elf, stub, test_dir, tool, virt_dts, GuestNode, MACHINE_HYP, MEM_MIB,
};

/// Lines each stub writes (`LINES` in the stub).
const LINES: u32 = 40;
const GUESTS: u32 = 4;

/// The console's output so far, `\r` removed.
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).replace('\r', "")
    }

    /// Waits until the output holds `needle`, at most `secs` seconds; when it was seen (polled every 10 ms).
    fn wait_for(&self, needle: &str, secs: u64, log: &Path) -> Instant {
        let start = Instant::now();
        while !self.text().contains(needle) {
            assert!(
                start.elapsed() < Duration::from_secs(secs),
                "no {needle:?} on the console within {secs} s; console so far:\n{}\n(monitor log: {})",
                self.text(),
                log.display()
            );
            thread::sleep(Duration::from_millis(10));
        }
        Instant::now()
    }
}

/// QEMU running the monitor with `guests` on `-smp` as many, its first
/// serial port a Unix socket the test holds, its log decoded into `hyp.log`.
struct Session {
    qemu: Child,
    decoder: Child,
    reader: JoinHandle<()>,
    out: Output,
    con: UnixStream,
    dir: PathBuf,
    log_path: PathBuf,
}

impl Session {
    fn start(dir: PathBuf, guests: &[GuestNode]) -> Session {
        let cpus = guests.len() as u32;
        let (dtb, _) = compile_dts(&dir, &virt_dts(cpus, MEM_MIB, "", guests));
        let sock = dir.join("console.sock");
        let _ = std::fs::remove_file(&sock);
        let elf = monitor_elf();
        let mut qemu = Command::new(tool("timeout"));
        qemu.args(["--kill-after=5", "240"])
            .arg(tool("qemu-system-arm"))
            .args(["-M", MACHINE_HYP, "-cpu", "cortex-a15", "-m", &MEM_MIB.to_string(), "-smp", &cpus.to_string()])
            .args(["-semihosting", "-nographic", "-nic", "none", "-monitor", "none"])
            .arg("-chardev")
            .arg(format!("socket,id=con,path={},server=on,wait=on", sock.display()))
            .args(["-serial", "chardev:con", "-kernel"])
            .arg(elf)
            .arg("-dtb")
            .arg(&dtb);
        for g in guests {
            qemu.arg("-device").arg(format!("loader,file={},addr={:#x},force-raw=on", g.kernel.display(), g.module));
        }
        let mut qemu =
            qemu.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start QEMU");
        let frames = qemu.stdout.take().expect("QEMU's stdout is piped");
        let log_path = dir.join("hyp.log");
        let log_file = std::fs::File::create(&log_path).expect("create hyp.log");
        let decoder = Command::new(tool("defmt-print"))
            .arg("-e")
            .arg(elf)
            .stdin(Stdio::from(frames))
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::null())
            .spawn()
            .expect("start defmt-print");

        // QEMU waits for the console's client before it starts the machine.
        let start = Instant::now();
        let con = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) if start.elapsed() < Duration::from_secs(30) => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot connect to QEMU's console socket {}: {e}", sock.display()),
            }
        };
        let (buf, reader) = carve_tests::gather(con.try_clone().expect("clone the socket"));
        Session { qemu, decoder, reader, out: Output(buf), con, dir, log_path }
    }

    /// Types `bytes` into the console.
    fn send(&mut self, bytes: &[u8]) {
        self.con.write_all(bytes).expect("type into the console");
    }

    fn wait_for(&self, needle: &str, secs: u64) -> Instant {
        self.out.wait_for(needle, secs, &self.log_path)
    }

    /// Waits for QEMU to end; its status, the console's text (kept in
    /// `console.txt`), and a context of both with the monitor's log.
    fn finish(mut self) -> (ExitStatus, String, String, String) {
        let status = self.qemu.wait().expect("wait for QEMU");
        let _ = self.decoder.wait();
        let _ = self.reader.join();
        let text = self.out.text();
        std::fs::write(self.dir.join("console.txt"), &text).expect("keep the console's output");
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let context = format!("console:\n{text}\n--- monitor log ---\n{log}");
        (status, text, log, context)
    }
}

/// One guest's pieces of console lines, in order, split into its lines and
/// the pieces the console cut off an open line: a piece its successor starts
/// with is such a cut (the console shows the line again from its start).
fn fold_cuts<'a>(pieces: &[&'a str]) -> (Vec<&'a str>, Vec<&'a str>) {
    let (mut whole, mut cuts) = (Vec::new(), Vec::new());
    for (i, &piece) in pieces.iter().enumerate() {
        match pieces.get(i + 1) {
            Some(next) if next.starts_with(piece) => cuts.push(piece),
            _ => whole.push(piece),
        }
    }
    (whole, cuts)
}

#[test]
fn four_guests_lines_come_out_whole_and_prefixed_and_input_reaches_only_the_focused_guest() {
    let dir = test_dir!("consoles", "four-guests");
    const NAMES: [&str; GUESTS as usize] = ["guest@0", "guest@1", "guest@2", "guest@3"];
    let guests: Vec<GuestNode> = (0..GUESTS)
        .map(|i| GuestNode {
            name: NAMES[i as usize],
            kib: 64 * 1024,
            cpus: 1,
            module: 0x4800_0000 + u64::from(i) * 0x100_0000,
            kernel: stub("consoles").to_path_buf(),
            props: String::from("\t\t\tbootargs = \"consoles.input\";\n"),
        })
        .collect();
    let mut session = Session::start(dir, &guests);
    for v in 1..=GUESTS {
        session.wait_for(&format!("vm{v} ready"), 120);
    }
    // The focus starts on guest@0; each Ctrl-A x3 moves it on.
    session.send(b"k");
    session.wait_for("guest@0| vm1 got #1 6b", 30);
    let typed: [(&[u8], &[&str]); 3] = [
        // Two Ctrl-A and a key: all three delivered.
        (b"\x01\x01z", &["vm2 got #2 01", "vm2 got #3 7a"]),
        (b"n", &["vm3 got #1 6e"]),
        (b"o", &["vm4 got #1 6f"]),
    ];
    for (g, (keys, want)) in (1..).zip(typed) {
        session.send(b"\x01\x01\x01");
        session.wait_for(&format!("(carve)| input goes to guest@{g}"), 30);
        session.send(keys);
        for w in want {
            session.wait_for(&format!("guest@{g}| {w}"), 30);
        }
    }
    // Power them off one by one, each when it has the focus: guest@3 now, then 0, 1, 2.
    session.send(b".");
    session.wait_for("guest@3| vm4 bye", 30);
    for g in 0..3 {
        session.send(b"\x01\x01\x01");
        session.wait_for(&format!("(carve)| input goes to guest@{g}"), 30);
        session.send(b".");
        session.wait_for(&format!("guest@{g}| vm{} bye", g + 1), 30);
    }
    let (status, text, log, context) = session.finish();
    assert_eq!(status.code(), Some(0), "QEMU's exit status\n{context}");
    assert!(log.contains("console: 4 guests share /pl011@9000000"), "{context}");

    // Every line carries a known prefix; gather each guest's pieces in order.
    let mut pieces: Vec<Vec<&str>> = vec![Vec::new(); GUESTS as usize];
    let mut order = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with("(carve)| ") {
            continue;
        }
        let (name, rest) =
            line.split_once("| ").unwrap_or_else(|| panic!("a line without a prefix: {line:?}\n{context}"));
        let g: usize = name
            .strip_prefix("guest@")
            .and_then(|n| n.parse().ok())
            .filter(|&g| g < GUESTS as usize)
            .unwrap_or_else(|| panic!("an unknown prefix {name:?} in {line:?}\n{context}"));
        pieces[g].push(rest);
        if rest.contains(" line ") {
            order.push(g);
        }
    }
    for (g, p) in pieces.iter().enumerate() {
        let v = g as u32 + 1;
        // The focused guest's line is shown as it is written and, when it
        // pauses with others' lines waiting, cut for them and shown again
        // from its start: a cut piece is followed by that guest's next piece,
        // which starts with it (or is it, when the cut came just before the
        // newline). No two of a stub's lines start one with the other (its
        // echoes are numbered), so that tells a cut from a line.
        let (whole, cuts) = fold_cuts(p);
        for cut in &cuts {
            assert!(
                g == 0 || !cut.contains(" line "),
                "guest@{g} is never focused while it writes its lines, yet {cut:?} is cut\n{context}"
            );
        }
        // Each line appears whole, once, in order.
        let lines: Vec<&str> = whole.iter().copied().filter(|l| l.starts_with(&format!("vm{v} line "))).collect();
        let want: Vec<String> = (0..LINES).map(|i| consoles_line(v, i)).collect();
        assert_eq!(lines, want, "guest@{g}'s lines, each whole, in order\n{context}");
        // Input reached only the guest that had the focus, and all of it, each byte once.
        let got: Vec<&str> = whole.iter().copied().filter(|l| l.contains(" got ")).collect();
        let want: &[&str] = match g {
            0 => &["vm1 got #1 6b"],
            1 => &["vm2 got #1 01", "vm2 got #2 01", "vm2 got #3 7a"],
            2 => &["vm3 got #1 6e"],
            _ => &["vm4 got #1 6f"],
        };
        assert_eq!(got, want, "what guest@{g} received\n{context}");
        assert!(!p.iter().any(|l| l.contains("FAIL")), "guest@{g} reported a failure\n{context}");
    }
    // The guests wrote at the same time: their lines alternate on the console
    // (one after the other would change guest GUESTS - 1 times).
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(
        switches >= 4 * GUESTS as usize,
        "only {switches} changes of guest between lines: they did not overlap\n{context}"
    );
}

/// Two `consoles` stubs in `consoles.quiet` mode: guest@0, which has the
/// focus, types an open line for half a second and then leaves its UART
/// alone for 3 s; guest@1's whole line, written meanwhile, waits behind it
/// and must come out once guest@0's line has been quiet for the hold (20 ms)
/// without any guest touching a UART again: on the monitor's Hyp timer.
/// Seen on the socket: guest@1's line at least 1.5 s before guest@0 ends its line.
#[test]
fn a_held_line_goes_out_when_the_focused_line_falls_quiet_with_no_guest_event() {
    let dir = test_dir!("consoles", "quiet");
    let guests: Vec<GuestNode> = ["guest@0", "guest@1"]
        .iter()
        .zip(0u64..)
        .map(|(&name, i)| GuestNode {
            name,
            kib: 64 * 1024,
            cpus: 1,
            module: 0x4800_0000 + i * 0x100_0000,
            kernel: stub("consoles").to_path_buf(),
            props: String::from("\t\t\tbootargs = \"consoles.quiet\";\n"),
        })
        .collect();
    let session = Session::start(dir, &guests);
    let held = session.wait_for("guest@1| vm2 whole line", 60);
    let ended = session.wait_for(" done", 60);
    let (status, text, _, context) = session.finish();
    assert_eq!(status.code(), Some(0), "QEMU's exit status\n{context}");
    let early = ended.saturating_duration_since(held);
    assert!(
        early >= Duration::from_millis(1500),
        "guest@1's line came out only {early:?} before guest@0 ended its own: it waited for a guest's next access\n{context}"
    );
    // The open line was cut for it and shown again whole.
    assert!(text.contains("guest@0| vm1 typing xxxxxxxxxx"), "{context}");
    let done = text.lines().find(|l| l.ends_with(" done")).unwrap_or_default();
    assert_eq!(done, format!("guest@0| vm1 typing {} done", "x".repeat(50)), "{context}");
}
