//! The console: one line per `CONSOLE_WRITE`, which the monitor logs as `<guest name>: <line>`.
//!
//! The line is formatted into a buffer on the stack, in guest RAM, and its
//! address is passed as is: the stubs run with the MMU off or identity
//! mapped, so a virtual address is the IPA the monitor expects. Lines longer
//! than the monitor's limit ([`abi::CONSOLE_MAX`]) go out in pieces.

use core::fmt;

use crate::{abi, hvc, mmu};

/// A line being formatted; [`Line::finish`] sends it.
pub struct Line {
    buf: [u8; abi::CONSOLE_MAX as usize],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line { buf: [0; abi::CONSOLE_MAX as usize], len: 0 }
    }

    fn flush(&mut self) {
        if self.len == 0 {
            return;
        }
        // With the D-cache on, the monitor reads the buffer from memory: clean it to the point of coherency.
        mmu::clean_dcache_range(self.buf.as_ptr() as usize, self.len);
        // A refused write cannot be reported anywhere else: the test sees the line missing.
        let _ = hvc::console_write(self.buf.as_ptr() as u32, self.len as u32);
        self.len = 0;
    }

    /// Sends the line (with a newline).
    pub fn finish(mut self) {
        let _ = fmt::Write::write_str(&mut self, "\n");
        self.flush();
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints one formatted line on the monitor's console.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut line = $crate::console::Line::new();
        let _ = ::core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        line.finish();
    }};
}
