//! `cntvct`: print `CARVE-CNTVCT <count> <frequency>` for the test initrd.
//!
//! A static Linux user program for 32-bit Arm, built without a C toolchain:
//! `#![no_std]`, its own `_start`, and the two system calls it needs made
//! with `svc 0` (EABI: the call number in r7). It reads the virtual counter
//! CNTVCT (`mrrc p15, 1, r0, r1, c14`) and its frequency CNTFRQ
//! (`mrc p15, 0, r0, c14, c0, 0`); Linux lets user space read both
//! (CNTKCTL.PL0VCTEN, set for the vDSO). `/init` runs it first thing and
//! again just before powering off: the count over the frequency is the
//! guest's virtual time, which under `qemu -icount shift=0` counts
//! instructions (DESIGN.md, "How we measure").
//!
//! On any other target this crate is a stub: build it with
//! `cargo build --release -p cntvct --target armv7a-none-eabi` (scripts/mkinitrd does).
#![cfg_attr(target_arch = "arm", no_std, no_main)]

#[cfg(target_arch = "arm")]
mod linux {
    use core::arch::{asm, global_asm};

    // The kernel enters with sp at argc and nothing else set up that we
    // need: call `main` and never return (`main` exits).
    global_asm!(
        ".section .text._start, \"ax\", %progbits",
        ".global _start",
        ".type _start, %function",
        "_start:",
        "    mov fp, #0",
        "    mov lr, #0",
        "    bl {main}",
        "    udf #0",
        ".size _start, . - _start",
        main = sym main,
    );

    /// Linux EABI system call numbers (arch/arm/tools/syscall.tbl).
    const SYS_EXIT: u32 = 1;
    const SYS_WRITE: u32 = 4;

    /// `write(fd, buf, len)`; returns the kernel's result (bytes or -errno).
    fn write(fd: u32, buf: &[u8]) -> i32 {
        let ret: i32;
        // SAFETY: write(2) only reads `buf.len()` bytes from `buf`, which the
        // slice guarantees are valid; it touches no other memory of ours.
        unsafe {
            asm!(
                "svc 0",
                inlateout("r0") fd => ret,
                in("r1") buf.as_ptr(),
                in("r2") buf.len(),
                in("r7") SYS_WRITE,
                options(nostack, readonly),
            );
        }
        ret
    }

    /// `exit(code)`: ends the process.
    fn exit(code: u32) -> ! {
        // SAFETY: exit(2) does not return and touches no memory of ours.
        unsafe {
            asm!("svc 0", in("r0") code, in("r7") SYS_EXIT, options(nostack, noreturn));
        }
    }

    /// Writes all of `buf` to stdout; false if the kernel refused.
    fn write_all(mut buf: &[u8]) -> bool {
        while !buf.is_empty() {
            match write(1, buf) {
                n if n > 0 => buf = &buf[n as usize..],
                -4 => continue, // EINTR
                _ => return false,
            }
        }
        true
    }

    /// CNTVCT, the 64-bit virtual count.
    fn cntvct() -> u64 {
        let (lo, hi): (u32, u32);
        // SAFETY: reading CNTVCT has no side effects; Linux enables it at PL0.
        // The ISB orders the read after everything before it.
        unsafe {
            asm!("isb", "mrrc p15, 1, {lo}, {hi}, c14", lo = out(reg) lo, hi = out(reg) hi, options(nomem, nostack));
        }
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// CNTFRQ, the counter's frequency in Hz.
    fn cntfrq() -> u32 {
        let f: u32;
        // SAFETY: reading CNTFRQ has no side effects; readable at PL0 when
        // either PL0 counter access bit of CNTKCTL is set.
        unsafe {
            asm!("mrc p15, 0, {f}, c14, c0, 0", f = out(reg) f, options(nomem, nostack));
        }
        f
    }

    /// Appends `v` in decimal to `buf` at `*len`.
    fn push_u64(buf: &mut [u8], len: &mut usize, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &d in digits[..n].iter().rev() {
            buf[*len] = d;
            *len += 1;
        }
    }

    fn push(buf: &mut [u8], len: &mut usize, s: &[u8]) {
        buf[*len..*len + s.len()].copy_from_slice(s);
        *len += s.len();
    }

    extern "C" fn main() -> ! {
        // Read the counter before anything else: this is the figure that matters.
        let count = cntvct();
        let freq = cntfrq();
        let mut line = [0u8; 64];
        let mut len = 0;
        push(&mut line, &mut len, b"CARVE-CNTVCT ");
        push_u64(&mut line, &mut len, count);
        push(&mut line, &mut len, b" ");
        push_u64(&mut line, &mut len, u64::from(freq));
        push(&mut line, &mut len, b"\n");
        exit(if write_all(&line[..len]) { 0 } else { 1 })
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        exit(101)
    }
}

#[cfg(not(target_arch = "arm"))]
fn main() {
    eprintln!(
        "cntvct runs inside the Arm Linux guest: build it with \
         `cargo build --release -p cntvct --target armv7a-none-eabi` (scripts/mkinitrd does)"
    );
    std::process::exit(2);
}
