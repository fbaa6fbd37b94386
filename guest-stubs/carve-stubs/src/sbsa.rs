//! The console UART carve gives each of several guests: an emulated SBSA UART (a PL011 subset, `hyp/core/src/vm/vuart.rs`).
//!
//! Found with [`crate::rt::console_uart`]; every access to its page traps to
//! the monitor, which emulates it.

// Registers (PL011 TRM DDI 0183G table 3-1).
/// UARTDR: data.
pub const DR: u32 = 0x00;
/// UARTFR: flags.
pub const FR: u32 = 0x18;
/// UARTIMSC: interrupt mask.
pub const IMSC: u32 = 0x38;
/// UARTRIS: raw interrupt status.
pub const RIS: u32 = 0x3c;
/// UARTICR: interrupt clear.
pub const ICR: u32 = 0x44;

// FR bits.
pub const FR_BUSY: u32 = 1 << 3;
pub const FR_RXFE: u32 = 1 << 4;
pub const FR_TXFF: u32 = 1 << 5;
pub const FR_TXFE: u32 = 1 << 7;

/// RIS/IMSC/ICR: receive timeout.
pub const INT_RT: u32 = 1 << 6;
/// RIS/IMSC/ICR: every interrupt bit.
pub const INT_ALL: u32 = 0x7ff;

/// Reads register `reg` of the UART at `base`.
pub fn read(base: u32, reg: u32) -> u32 {
    // SAFETY: `base` is the UART page the guest's DT names; carve emulates every access to it.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

/// Writes `v` to register `reg` of the UART at `base`.
pub fn write(base: u32, reg: u32, v: u32) {
    // SAFETY: as in `read`.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, v) }
}

/// Writes through the UART at `.0` a byte at a time, as Linux's console does: wait while FR.TXFF, then DR.
pub struct Uart(pub u32);

impl core::fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            while read(self.0, FR) & FR_TXFF != 0 {}
            write(self.0, DR, u32::from(b));
        }
        Ok(())
    }
}
