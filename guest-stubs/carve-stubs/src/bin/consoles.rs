//! consoles: a guest that writes lines through its emulated UART, times it, and echoes what it is sent.
//!
//! With several guests carve gives each an emulated SBSA UART at the
//! machine console's address (`hyp/core/src/vm/vuart.rs`) and prints their
//! lines on the one physical UART, prefixed with the guest's name
//! (`hyp/core/src/vm/console.rs`). This stub, run as four guests at once:
//! - finds its UART in its device tree (the node named `pl011@...`, now an
//!   `arm,sbsa-uart`) and checks its flags out of reset (transmit FIFO empty, receive FIFO empty);
//! - if its device tree holds the string `consoles.bench` (in `bootargs`):
//!   the guest with VMID 1 waits for the others to power off (they do at
//!   once: under `-icount` every CPU's instructions advance the one virtual
//!   clock), then times `BENCH_BYTES` bytes written to DR and as many reads
//!   of FR with the virtual counter, against the same loops on RAM, and
//!   reports both through `CONSOLE_WRITE` (`consoles: uart byte N.N ns, FR
//!   read M.M ns`: one instruction a nanosecond under `-icount shift=0`,
//!   `scripts/bench-traps`);
//! - if its device tree holds the string `consoles.quiet` (in `bootargs`):
//!   vm1 (the focused guest) types an open line, `vm1 typing` and a byte
//!   every 10 ms for half a second, then falls quiet for `QUIET_S` seconds
//!   (no UART access) before ending it with ` done`; vm2, 200 ms in, writes
//!   the whole line `vm2 whole line` (held behind vm1's busy line), then is
//!   quiet as long. The monitor must let vm2's line out once vm1's has been
//!   quiet for the hold time, by its own timer: no guest touches a UART to
//!   make it. Both then power off;
//! - writes `LINES` lines `vmV line I <payload> end` byte by byte, polling
//!   FR.TXFF like Linux's console (10 ms of the counter apart when asked for input, below);
//! - then, if its device tree holds the string `consoles.input` (in the
//!   kernel's `bootargs`), writes `vmV ready` and echoes each byte it
//!   receives as `vmV got #N XX` (the Nth byte, in hex: numbered, so no
//!   echo is the start of another and a reader can tell a line the console
//!   cut and showed again from a byte typed twice), checking that RIS.RT (the receive
//!   timeout) is raised while data waits, until it receives `.`: then
//!   `vmV bye` and SYSTEM_OFF. Without it, it powers off after its lines.
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod stub {
    use core::fmt::Write as _;

    use carve_stubs::sbsa::{read, write, Uart, DR, FR, FR_RXFE, FR_TXFE, FR_TXFF, INT_RT, RIS};
    use carve_stubs::{abi, hvc, rt, say, timer};

    carve_stubs::entry!(main);

    /// Lines each guest writes.
    const LINES: u32 = 40;
    /// Bytes (and FR reads) timed.
    const BENCH_BYTES: u32 = 256;
    /// Seconds the `consoles.quiet` guests leave their UARTs alone.
    const QUIET_S: u64 = 3;

    /// Waits `ms` milliseconds of the counter without touching the UART.
    fn pause_ms(ms: u64) {
        let t = timer::cntvct() + u64::from(timer::cntfrq()) * ms / 1000;
        while timer::cntvct() < t {
            core::hint::spin_loop();
        }
    }

    fn fail(args: core::fmt::Arguments<'_>) -> ! {
        say!("consoles: {}, FAIL", args);
        hvc::system_off()
    }

    /// Ticks of `n` iterations of `f`.
    fn timed(n: u32, mut f: impl FnMut(u32)) -> u64 {
        let t0 = timer::cntvct();
        for i in 0..n {
            f(i);
        }
        timer::cntvct() - t0
    }

    fn main(dtb: u32) -> ! {
        let vmid = hvc::info(abi::INFO_VMID);
        let base = match rt::console_uart(dtb) {
            Ok(Some(base)) => base,
            Ok(None) => fail(format_args!("vm{vmid}: no pl011@ node in the DT")),
            Err(e) => fail(format_args!("vm{vmid}: reading the DT: {e:?}")),
        };
        let fr = read(base, FR);
        if fr & (FR_TXFE | FR_RXFE | FR_TXFF) != FR_TXFE | FR_RXFE {
            fail(format_args!("vm{vmid}: FR out of reset {fr:#x}"));
        }
        let mut u = Uart(base);

        if rt::dtb_holds(dtb, b"consoles.bench") {
            if vmid != 1 {
                hvc::system_off()
            }
            // Long enough for the others' SYSTEM_OFF (a few thousand instructions each).
            for _ in 0..2_000_000 {
                core::hint::spin_loop();
            }
            // BENCH_BYTES bytes as two lines, and as many FR reads.
            let mut ram = [0u32; 2];
            let cell = ram.as_mut_ptr() as u32;
            let half = BENCH_BYTES / 2;
            let byte = |i: u32| if i % half == half - 1 { u32::from(b'\n') } else { u32::from(b'a') + i % 26 };
            let base_tx = timed(BENCH_BYTES, |i| write(cell, 0, byte(i)));
            let tx = timed(BENCH_BYTES, |i| write(base, DR, byte(i)));
            let base_fr = timed(BENCH_BYTES, |_| {
                read(cell, 4);
            });
            let frt = timed(BENCH_BYTES, |_| {
                read(base, FR);
            });
            let freq = u64::from(timer::cntfrq().max(1));
            let tenths = |t: u64, b: u64| t.saturating_sub(b) * 10_000_000_000 / freq / u64::from(BENCH_BYTES);
            let (txn, frn) = (tenths(tx, base_tx), tenths(frt, base_fr));
            say!(
                "consoles: uart byte {}.{} ns, FR read {}.{} ns of guest time ({} each; ticks {} {} baselines {} {} at {} Hz)",
                txn / 10,
                txn % 10,
                frn / 10,
                frn % 10,
                BENCH_BYTES,
                tx,
                frt,
                base_tx,
                base_fr,
                freq
            );
        }

        if rt::dtb_holds(dtb, b"consoles.quiet") {
            match vmid {
                1 => {
                    let _ = write!(u, "vm1 typing ");
                    for _ in 0..50 {
                        pause_ms(10);
                        let _ = u.write_char('x');
                    }
                    pause_ms(QUIET_S * 1000);
                    let _ = writeln!(u, " done");
                }
                _ => {
                    pause_ms(200);
                    let _ = writeln!(u, "vm{vmid} whole line");
                    pause_ms(QUIET_S * 1000);
                }
            }
            say!("consoles: vm{} quiet run done, PASS", vmid);
            hvc::system_off()
        }

        let input = rt::dtb_holds(dtb, b"consoles.input");
        for i in 0..LINES {
            if input {
                // Lines 10 ms of the counter apart: the four guests' lines overlap in time however their CPUs are scheduled.
                let t = timer::cntvct() + u64::from(timer::cntfrq() / 100);
                while timer::cntvct() < t {}
            }
            let fill = char::from(b'a' + (vmid as u8 % 26));
            let _ = write!(u, "vm{vmid} line {i} ");
            for _ in 0..(i * 7 + vmid as u32) % 60 {
                let _ = u.write_char(fill);
            }
            let _ = writeln!(u, " end");
        }
        if !input {
            say!("consoles: vm{} wrote {} lines, PASS", vmid, LINES);
            hvc::system_off()
        }
        let _ = writeln!(u, "vm{vmid} ready");
        let mut n = 0u32;
        loop {
            if read(base, FR) & FR_RXFE != 0 {
                // Nothing yet: wait a little before asking again (each read traps).
                for _ in 0..2000 {
                    core::hint::spin_loop();
                }
                continue;
            }
            let ris = read(base, RIS);
            let b = read(base, DR) & 0xff;
            if ris & INT_RT == 0 {
                let _ = writeln!(u, "vm{vmid} RIS {ris:#x} without RT while data waited, FAIL");
            }
            if b == u32::from(b'.') {
                let _ = writeln!(u, "vm{vmid} bye");
                say!("consoles: vm{} PASS", vmid);
                hvc::system_off()
            }
            n += 1;
            let _ = writeln!(u, "vm{vmid} got #{n} {b:02x}");
        }
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {}
