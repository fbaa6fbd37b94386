//! UART drivers: the Arm PL011 (QEMU `virt`, Versatile Express) and the 8250/16550 family (Allwinner, TI, NVIDIA).
//!
//! The monitor drives a UART only where the guests cannot (its own log on a
//! board, or the physical console when several guests share it), so these
//! drivers are small and polled: transmit waits for room in the FIFO, receive
//! takes what is there, and the receive interrupt can be switched on for a
//! monitor that takes physical interrupts. Line settings (baud rate, framing)
//! are left as the firmware set them, as Linux's earlycon does.
//!
//! Registers: PL011 Technical Reference Manual (DDI 0183G) 3.2; 16550: the
//! National Semiconductor PC16550D data sheet, register `n` at
//! `base + (n << reg-shift)`, `reg-io-width` bytes wide.

use carve_core::dt::machine::UartKind;

use super::mmu::{self, MmuError};

// PL011 (DDI 0183G, 3.3).
/// UARTDR: data.
const PL011_DR: usize = 0x00;
/// UARTFR: flags.
const PL011_FR: usize = 0x18;
/// UARTFR.RXFE: receive FIFO empty.
const PL011_FR_RXFE: u32 = 1 << 4;
/// UARTFR.TXFF: transmit FIFO full.
const PL011_FR_TXFF: u32 = 1 << 5;
/// UARTFR.BUSY: still transmitting.
const PL011_FR_BUSY: u32 = 1 << 3;
/// UARTIMSC: interrupt mask set/clear (1 = enabled).
const PL011_IMSC: usize = 0x38;
/// UARTICR: interrupt clear.
const PL011_ICR: usize = 0x44;
/// UARTIMSC/UARTICR.RXIM and RTIM: receive and receive-timeout interrupts.
const PL011_RX_INTERRUPTS: u32 = (1 << 4) | (1 << 6);

// 16550 (PC16550D, table II), as register numbers.
/// RBR (read) / THR (write), with LCR.DLAB = 0.
const NS_RBR_THR: usize = 0;
/// IER: interrupt enable.
const NS_IER: usize = 1;
/// IER.ERBFI: received data available.
const NS_IER_RX: u32 = 1 << 0;
/// LSR: line status.
const NS_LSR: usize = 5;
/// LSR.DR: data ready.
const NS_LSR_DR: u32 = 1 << 0;
/// LSR.THRE: transmit holding register empty.
const NS_LSR_THRE: u32 = 1 << 5;
/// LSR.TEMT: transmitter empty (holding and shift registers).
const NS_LSR_TEMT: u32 = 1 << 6;

/// A UART the monitor drives, at a virtual address the Hyp stage-1 maps as Device memory.
///
/// Receiving (`get`, `set_rx_interrupt`) is for the physical console the
/// monitor owns when several guests share it; the log only transmits.
#[derive(Clone, Copy, Debug)]
pub struct Uart {
    base: usize,
    kind: UartKind,
}

impl Uart {
    /// The UART of `kind` whose registers start at virtual address `base`.
    ///
    /// # Safety
    /// `base` must map the UART's whole register block as Device memory for as
    /// long as the value (and its copies) are used, and nothing else may drive
    /// that UART meanwhile (a guest given it, another driver).
    pub unsafe fn new(base: usize, kind: UartKind) -> Self {
        Self { base, kind }
    }

    /// Register `reg` (a PL011 offset, or a 16550 register number).
    fn read(&self, reg: usize) -> u32 {
        match self.kind {
            UartKind::Pl011 => {
                // SAFETY: `new`'s contract: the block is mapped as Device memory and ours; PL011 registers are 32-bit.
                unsafe { core::ptr::read_volatile((self.base + reg) as *const u32) }
            }
            UartKind::Ns16550 { reg_shift, io_width } => {
                let at = self.base + (reg << reg_shift);
                // SAFETY: as above; the access width is the tree's `reg-io-width` (1 or 4, checked by the reader).
                unsafe {
                    if io_width == 4 {
                        core::ptr::read_volatile(at as *const u32)
                    } else {
                        u32::from(core::ptr::read_volatile(at as *const u8))
                    }
                }
            }
        }
    }

    fn write(&self, reg: usize, value: u32) {
        match self.kind {
            UartKind::Pl011 => {
                // SAFETY: as in `read`.
                unsafe { core::ptr::write_volatile((self.base + reg) as *mut u32, value) }
            }
            UartKind::Ns16550 { reg_shift, io_width } => {
                let at = self.base + (reg << reg_shift);
                // SAFETY: as in `read`.
                unsafe {
                    if io_width == 4 {
                        core::ptr::write_volatile(at as *mut u32, value)
                    } else {
                        core::ptr::write_volatile(at as *mut u8, value as u8)
                    }
                }
            }
        }
    }

    /// Whether the transmitter can take a byte now.
    pub fn can_send(&self) -> bool {
        match self.kind {
            UartKind::Pl011 => self.read(PL011_FR) & PL011_FR_TXFF == 0,
            UartKind::Ns16550 { .. } => self.read(NS_LSR) & NS_LSR_THRE != 0,
        }
    }

    /// Sends `byte`, waiting for room in the transmitter.
    pub fn put(&self, byte: u8) {
        while !self.can_send() {
            core::hint::spin_loop();
        }
        match self.kind {
            UartKind::Pl011 => self.write(PL011_DR, u32::from(byte)),
            UartKind::Ns16550 { .. } => self.write(NS_RBR_THR, u32::from(byte)),
        }
    }

    /// Sends every byte of `bytes`.
    pub fn write_all(&self, bytes: &[u8]) {
        for &b in bytes {
            self.put(b);
        }
    }

    /// Waits until everything sent has left the transmitter (before power-off, say).
    pub fn flush(&self) {
        let done = || match self.kind {
            UartKind::Pl011 => self.read(PL011_FR) & PL011_FR_BUSY == 0,
            UartKind::Ns16550 { .. } => self.read(NS_LSR) & NS_LSR_TEMT != 0,
        };
        while !done() {
            core::hint::spin_loop();
        }
    }

    /// A received byte, if one is waiting. Taking it also clears the receive
    /// interrupt once nothing more waits (both families raise it by level).
    pub fn get(&self) -> Option<u8> {
        let ready = match self.kind {
            UartKind::Pl011 => self.read(PL011_FR) & PL011_FR_RXFE == 0,
            UartKind::Ns16550 { .. } => self.read(NS_LSR) & NS_LSR_DR != 0,
        };
        if !ready {
            return None;
        }
        let byte = match self.kind {
            UartKind::Pl011 => self.read(PL011_DR),
            UartKind::Ns16550 { .. } => self.read(NS_RBR_THR),
        };
        Some(byte as u8)
    }

    /// Switches the receive interrupt on or off (the only interrupt the monitor wants of a UART).
    pub fn set_rx_interrupt(&self, on: bool) {
        match self.kind {
            UartKind::Pl011 => {
                self.write(PL011_ICR, PL011_RX_INTERRUPTS);
                let imsc = self.read(PL011_IMSC) & !PL011_RX_INTERRUPTS;
                self.write(PL011_IMSC, if on { imsc | PL011_RX_INTERRUPTS } else { imsc });
            }
            UartKind::Ns16550 { .. } => {
                let ier = self.read(NS_IER) & !NS_IER_RX;
                self.write(NS_IER, if on { ier | NS_IER_RX } else { ier });
            }
        }
    }
}

/// Maps the UART at physical `pa` (`size` bytes of registers, within one
/// page) in the fixmap's console slot for good, and drives it for the
/// monitor's log. The plan refuses a machine whose guests would be given it.
pub fn map_log_uart(pa: u64, size: u64, kind: UartKind) -> Result<Uart, MmuError> {
    let va = mmu::map_console(pa, size)?;
    // SAFETY: the console slot now maps the register block as Device memory and
    // is never remapped; the monitor is its only driver (the log's), as the plan
    // keeps it from every guest.
    Ok(unsafe { Uart::new(va, kind) })
}
