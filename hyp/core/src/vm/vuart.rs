//! The emulated UART a guest gets when several guests share the machine: an SBSA generic UART.
//!
//! The SBSA generic UART (Arm Server Base System Architecture, appendix B) is
//! the subset of the Arm PL011 (Technical Reference Manual DDI 0183G, 3.3)
//! that needs no set-up: data, receive status, flags, and the interrupt
//! mask, raw and masked status and clear registers. It is what Xen's vpl011
//! offers its guests, and Linux drives it as `arm,sbsa-uart`
//! (`drivers/tty/serial/amba-pl011.c`, `sbsa_uart_probe`): a platform device
//! with a fixed baud rate (`current-speed`), 32-bit accesses, a 32-entry FIFO,
//! and no control register writes (the vendor's `always_enabled`). That
//! driver touches DR, FR, IMSC, MIS and ICR (and RIS through MIS); it reads
//! no identification register (only the AMBA bus reads those, for
//! `arm,pl011`). The PL011's identification registers are answered anyway,
//! for a guest that probes them, and every other offset of the 4 KiB page
//! reads as zero and ignores writes, counted.
//!
//! The transmit side drains at once: a byte written to DR goes to the
//! console ([`super::console`]) when the access is emulated, so the transmit
//! FIFO is always empty (FR.TXFE set, TXFF and BUSY clear) and the transmit
//! interrupt is raised by every write (the FIFO level passes the trigger
//! level at once) until ICR clears it. The receive side is a 32-byte FIFO the
//! monitor fills from the physical console; RXIS is raised when it holds
//! half of it or more, RTIS (the receive timeout) whenever it holds anything
//! (there is no line time to wait for), both lowered as DR reads drain it
//! below those levels, or by ICR. A byte received into a full FIFO is lost
//! and sets the overrun flag (RSR.OE, RIS.OEIS), as on the PL011.
//!
//! The interrupt line is `RIS & IMSC != 0`, level-sensitive: the monitor
//! compares [`Vuart::irq`] before and after each event and raises or lowers
//! the guest's SPI.
//!
//! Everything here is a pure function over [`Vuart`]: the monitor's `vm`
//! layer decodes the stage-2 abort and calls [`Vuart::read`]/[`Vuart::write`].

/// Bytes of register space the emulated UART takes in the guest's IPA space (one page).
pub const SIZE: u64 = 0x1000;

/// Entries in the receive FIFO (the PL011's and what Linux's sbsa driver assumes).
pub const FIFO: usize = 32;

/// The baud rate the guest's device tree gives as `current-speed` (fixed: there is no line).
pub const BAUD: u32 = 115_200;

// Register offsets (DDI 0183G table 3-1).
/// UARTDR: data.
pub const DR: u32 = 0x000;
/// UARTRSR (read) / UARTECR (write): receive status, error clear.
pub const RSR: u32 = 0x004;
/// UARTFR: flags.
pub const FR: u32 = 0x018;
/// UARTIMSC: interrupt mask set/clear.
pub const IMSC: u32 = 0x038;
/// UARTRIS: raw interrupt status.
pub const RIS: u32 = 0x03c;
/// UARTMIS: masked interrupt status.
pub const MIS: u32 = 0x040;
/// UARTICR: interrupt clear.
pub const ICR: u32 = 0x044;
/// UARTPeriphID0: the first identification register (PeriphID0-3, then PCellID0-3, one a word).
pub const PERIPH_ID0: u32 = 0xfe0;

// FR bits.
/// FR.BUSY: transmitting.
pub const FR_BUSY: u32 = 1 << 3;
/// FR.RXFE: receive FIFO empty.
pub const FR_RXFE: u32 = 1 << 4;
/// FR.TXFF: transmit FIFO full.
pub const FR_TXFF: u32 = 1 << 5;
/// FR.RXFF: receive FIFO full.
pub const FR_RXFF: u32 = 1 << 6;
/// FR.TXFE: transmit FIFO empty.
pub const FR_TXFE: u32 = 1 << 7;

// Interrupt bits (IMSC, RIS, MIS, ICR).
/// Receive.
pub const INT_RX: u32 = 1 << 4;
/// Transmit.
pub const INT_TX: u32 = 1 << 5;
/// Receive timeout.
pub const INT_RT: u32 = 1 << 6;
/// Overrun error.
pub const INT_OE: u32 = 1 << 10;
/// The interrupt bits that exist (the modem ones, 0-3, do not on the SBSA UART; 7-9 are never raised here).
pub const INT_ALL: u32 = 0x7ff;

/// DR bit 11 / RSR bit 3: overrun.
const DR_OE: u32 = 1 << 11;
const RSR_OE: u32 = 1 << 3;

/// The PL011's PeriphID0-3 and PCellID0-3 (r1p5, DDI 0183G 3.3.14-15).
const ID: [u32; 8] = [0x11, 0x10, 0x34, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// One emulated UART's state.
#[derive(Clone, Debug)]
pub struct Vuart {
    rx: [u8; FIFO],
    /// Index of the oldest received byte in `rx`.
    rx_head: usize,
    rx_len: usize,
    imsc: u32,
    ris: u32,
    /// RSR: only OE is ever set here.
    rsr: u32,
    /// The next byte read from DR carries the overrun flag (bit 11).
    dr_overrun: bool,
    /// Bytes the guest wrote to DR.
    pub tx_bytes: u64,
    /// Bytes received for the guest, and of them lost to a full FIFO.
    pub rx_bytes: u64,
    pub rx_lost: u64,
    /// Accesses to offsets the UART does not have (read as zero, writes ignored).
    pub unknown: u64,
}

impl Default for Vuart {
    fn default() -> Self {
        Self::new()
    }
}

/// What the guest's write did that the monitor must act on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteEffect {
    None,
    /// A byte to the console.
    Transmit(u8),
}

impl Vuart {
    /// A UART out of reset: FIFOs empty, every interrupt masked.
    pub const fn new() -> Self {
        Self {
            rx: [0; FIFO],
            rx_head: 0,
            rx_len: 0,
            imsc: 0,
            ris: 0,
            rsr: 0,
            dr_overrun: false,
            tx_bytes: 0,
            rx_bytes: 0,
            rx_lost: 0,
            unknown: 0,
        }
    }

    /// Back to reset for a guest's restart (FIFO empty, interrupts masked and
    /// clear); the counts of the whole run are kept.
    pub fn reset(&mut self) {
        *self = Self {
            tx_bytes: self.tx_bytes,
            rx_bytes: self.rx_bytes,
            rx_lost: self.rx_lost,
            unknown: self.unknown,
            ..Self::new()
        };
    }

    /// Whether the interrupt line is asserted: a raised interrupt that is not masked.
    pub fn irq(&self) -> bool {
        self.ris & self.imsc != 0
    }

    /// Bytes waiting in the receive FIFO.
    pub fn rx_level(&self) -> usize {
        self.rx_len
    }

    /// Whether the receive FIFO has room for another byte.
    pub fn can_receive(&self) -> bool {
        self.rx_len < FIFO
    }

    fn flags(&self) -> u32 {
        let mut fr = FR_TXFE;
        if self.rx_len == 0 {
            fr |= FR_RXFE;
        }
        if self.rx_len == FIFO {
            fr |= FR_RXFF;
        }
        fr
    }

    /// The 32-bit register at word offset `reg`; reading DR takes a byte.
    fn read_reg(&mut self, reg: u32) -> u32 {
        match reg {
            DR => self.pop(),
            RSR => self.rsr,
            FR => self.flags(),
            IMSC => self.imsc,
            RIS => self.ris,
            MIS => self.ris & self.imsc,
            ICR => 0, // write-only
            r if (PERIPH_ID0..PERIPH_ID0 + 32).contains(&r) => ID[((r - PERIPH_ID0) / 4) as usize],
            _ => {
                self.unknown += 1;
                0
            }
        }
    }

    /// A guest load of `bytes` (1, 2 or 4) at `offset` in the UART's page:
    /// the register's value shifted to the access (little-endian), zero
    /// beyond the page. A sub-word read of DR still takes a byte.
    pub fn read(&mut self, offset: u64, bytes: u32) -> u32 {
        if offset >= SIZE {
            self.unknown += 1;
            return 0;
        }
        let reg = (offset as u32) & !3;
        let v = self.read_reg(reg) >> ((offset as u32 & 3) * 8);
        match bytes {
            1 => v & 0xff,
            2 => v & 0xffff,
            _ => v,
        }
    }

    /// A guest store of `value` (`bytes` wide) at `offset`.
    ///
    /// Only DR, ECR, IMSC and ICR are writable; a store of fewer than four
    /// bytes writes the low bytes of the register it falls in (DR's byte is
    /// its low eight bits).
    pub fn write(&mut self, offset: u64, bytes: u32, value: u32) -> WriteEffect {
        if offset >= SIZE {
            self.unknown += 1;
            return WriteEffect::None;
        }
        let shift = (offset as u32 & 3) * 8;
        let mask = match bytes {
            1 => 0xff,
            2 => 0xffff,
            _ => u32::MAX,
        };
        let v = (value & mask) << shift;
        match (offset as u32) & !3 {
            DR if shift == 0 => {
                self.tx_bytes += 1;
                // The FIFO drains at once: its level falls through the trigger level.
                self.ris |= INT_TX;
                return WriteEffect::Transmit(v as u8);
            }
            RSR => {
                self.rsr = 0;
                self.dr_overrun = false;
            }
            IMSC => self.imsc = (self.imsc & !(mask << shift)) | (v & INT_ALL),
            ICR => self.ris &= !(v & INT_ALL),
            FR | RIS | MIS => {} // read-only
            r if (PERIPH_ID0..PERIPH_ID0 + 32).contains(&r) => {}
            _ => self.unknown += 1,
        }
        WriteEffect::None
    }

    /// A byte from the physical console for this guest. Returns false if the
    /// FIFO was full: the byte is lost and the overrun is flagged.
    pub fn receive(&mut self, byte: u8) -> bool {
        self.rx_bytes += 1;
        if self.rx_len == FIFO {
            self.rx_lost += 1;
            self.rsr |= RSR_OE;
            self.dr_overrun = true;
            self.ris |= INT_OE;
            return false;
        }
        self.rx[(self.rx_head + self.rx_len) % FIFO] = byte;
        self.rx_len += 1;
        self.ris |= INT_RT;
        if self.rx_len >= FIFO / 2 {
            self.ris |= INT_RX;
        }
        true
    }

    /// Takes the oldest received byte (0 if none), with the overrun flag once after a loss.
    fn pop(&mut self) -> u32 {
        if self.rx_len == 0 {
            return 0;
        }
        let b = u32::from(self.rx[self.rx_head]);
        self.rx_head = (self.rx_head + 1) % FIFO;
        self.rx_len -= 1;
        if self.rx_len < FIFO / 2 {
            self.ris &= !INT_RX;
        }
        if self.rx_len == 0 {
            self.ris &= !INT_RT;
        }
        if core::mem::take(&mut self.dr_overrun) {
            b | DR_OE
        } else {
            b
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart's reset: what the guest had received and enabled is gone, the run's counts stay.
    #[test]
    fn reset_empties_the_fifo_and_masks_but_keeps_the_counts() {
        let mut u = Vuart::new();
        linux_startup(&mut u);
        assert!(u.receive(b'x') && u.receive(b'y'));
        u.write(u64::from(DR), 4, u32::from(b'z'));
        assert!(u.irq() && u.rx_level() == 2);
        u.reset();
        assert!(!u.irq() && u.rx_level() == 0);
        assert_eq!(u.read(u64::from(IMSC), 4), 0);
        assert_ne!(u.read(u64::from(FR), 4) & FR_RXFE, 0, "receive FIFO empty");
        assert_eq!((u.tx_bytes, u.rx_bytes), (1, 2));
    }

    /// What Linux's `sbsa_uart_startup` and `pl011_enable_interrupts` do, in order.
    fn linux_startup(u: &mut Vuart) {
        u.write(u64::from(ICR), 4, 0x7f0); // OE, BE, PE, FE, RT, RX
        let _ = u.read(u64::from(IMSC), 4);
        u.write(u64::from(IMSC), 4, INT_RT | INT_RX);
        u.write(u64::from(ICR), 4, INT_RT | INT_RX);
        for _ in 0..2 * FIFO {
            if u.read(u64::from(FR), 4) & FR_RXFE != 0 {
                break;
            }
            u.read(u64::from(DR), 4);
        }
        u.write(u64::from(IMSC), 4, INT_RT | INT_RX);
    }

    #[test]
    fn out_of_reset_nothing_is_raised_and_the_transmitter_is_empty() {
        let mut u = Vuart::new();
        assert!(!u.irq());
        let fr = u.read(u64::from(FR), 4);
        assert_eq!(fr & (FR_TXFE | FR_RXFE), FR_TXFE | FR_RXFE);
        assert_eq!(fr & (FR_TXFF | FR_RXFF | FR_BUSY), 0);
        assert_eq!(u.read(u64::from(DR), 4), 0, "an empty FIFO reads as zero");
    }

    #[test]
    fn a_written_byte_is_transmitted_and_raises_tx_only_if_unmasked() {
        let mut u = Vuart::new();
        assert_eq!(u.write(u64::from(DR), 4, 0x141), WriteEffect::Transmit(0x41), "DR's byte is its low bits");
        assert_eq!(u.read(u64::from(RIS), 4) & INT_TX, INT_TX);
        assert!(!u.irq(), "TX is masked");
        u.write(u64::from(IMSC), 4, INT_TX);
        assert!(u.irq());
        assert_eq!(u.read(u64::from(MIS), 4), INT_TX);
        u.write(u64::from(ICR), 4, INT_TX);
        assert!(!u.irq());
        u.write(u64::from(DR), 1, b'b' as u32);
        assert!(u.irq(), "every write passes the trigger level again");
        assert_eq!(u.tx_bytes, 2);
    }

    #[test]
    fn received_bytes_come_out_in_order_with_rt_then_rx_levels() {
        let mut u = Vuart::new();
        linux_startup(&mut u);
        assert!(!u.irq());
        assert!(u.receive(b'x'));
        assert!(u.irq(), "one byte raises the receive timeout");
        assert_eq!(u.read(u64::from(MIS), 4), INT_RT);
        for i in 1..FIFO / 2 {
            assert!(u.receive(b'a' + i as u8));
        }
        assert_eq!(u.read(u64::from(RIS), 4) & (INT_RX | INT_RT), INT_RX | INT_RT, "half full raises RX");
        assert_eq!(u.read(u64::from(DR), 4), u32::from(b'x'));
        assert_eq!(u.read(u64::from(RIS), 4) & INT_RX, 0, "below half: RX lowered");
        let mut n = 1;
        while u.read(u64::from(FR), 4) & FR_RXFE == 0 {
            assert_eq!(u.read(u64::from(DR), 4), u32::from(b'a' + n));
            n += 1;
        }
        assert_eq!(n as usize, FIFO / 2);
        assert!(!u.irq(), "drained: the line drops without an ICR write");
    }

    #[test]
    fn a_full_fifo_loses_the_next_byte_and_flags_the_overrun_once() {
        let mut u = Vuart::new();
        for i in 0..FIFO {
            assert!(u.receive(i as u8));
        }
        assert_eq!(u.read(u64::from(FR), 4) & FR_RXFF, FR_RXFF);
        assert!(!u.can_receive());
        assert!(!u.receive(0xee));
        assert_eq!(u.rx_lost, 1);
        assert_eq!(u.read(u64::from(RIS), 4) & INT_OE, INT_OE);
        assert_eq!(u.read(u64::from(RSR), 4), RSR_OE);
        assert_eq!(u.read(u64::from(DR), 4), DR_OE, "byte 0 with OE");
        assert_eq!(u.read(u64::from(DR), 4), 1, "the flag comes once");
        u.write(u64::from(RSR), 4, 0);
        assert_eq!(u.read(u64::from(RSR), 4), 0, "ECR clears it");
        for i in 2..FIFO {
            assert_eq!(u.read(u64::from(DR), 4), i as u32, "0xee was never stored");
        }
        assert_eq!(u.rx_level(), 0);
    }

    #[test]
    fn the_fifo_wraps_around() {
        let mut u = Vuart::new();
        for round in 0..5u32 {
            for i in 0..FIFO as u32 - 3 {
                assert!(u.receive((round * 7 + i) as u8));
            }
            for i in 0..FIFO as u32 - 3 {
                assert_eq!(u.read(u64::from(DR), 4), (round * 7 + i) & 0xff);
            }
        }
    }

    #[test]
    fn icr_clears_only_what_it_names_and_masked_bits_do_not_raise_the_line() {
        let mut u = Vuart::new();
        u.receive(1);
        u.write(u64::from(DR), 4, 2);
        assert_eq!(u.read(u64::from(RIS), 4), INT_RT | INT_TX);
        u.write(u64::from(IMSC), 4, INT_RX);
        assert!(!u.irq(), "RT and TX are raised but masked");
        u.write(u64::from(ICR), 4, INT_TX);
        assert_eq!(u.read(u64::from(RIS), 4), INT_RT);
        u.write(u64::from(IMSC), 4, 0xffff_ffff);
        assert_eq!(u.read(u64::from(IMSC), 4), INT_ALL, "only the interrupt bits stick");
        assert!(u.irq());
    }

    #[test]
    fn sub_word_accesses_shift_and_mask() {
        let mut u = Vuart::new();
        u.write(u64::from(IMSC), 2, 0x1_0040);
        assert_eq!(u.read(u64::from(IMSC), 4), INT_RT, "a halfword store writes 16 bits");
        u.write(u64::from(IMSC) + 1, 1, 0x04);
        assert_eq!(u.read(u64::from(IMSC), 4), INT_RT | INT_OE);
        assert_eq!(u.read(u64::from(IMSC) + 1, 1), 0x04);
        assert_eq!(u.read(u64::from(FR), 1), FR_TXFE | FR_RXFE);
        assert_eq!(u.write(u64::from(DR) + 1, 1, 0x41), WriteEffect::None, "not DR's data byte");
    }

    #[test]
    fn identification_registers_read_as_a_pl011_and_the_rest_as_zero_counted() {
        let mut u = Vuart::new();
        let ids: [u32; 8] = core::array::from_fn(|i| u.read(u64::from(PERIPH_ID0) + 4 * i as u64, 4));
        assert_eq!(ids, ID);
        assert_eq!(u.unknown, 0);
        assert_eq!(u.read(0x30, 4), 0, "CR is not on the SBSA UART");
        u.write(0x30, 4, 0x301);
        u.write(0x24, 4, 1);
        assert_eq!(u.read(0x2000, 4), 0, "past the page");
        assert_eq!(u.unknown, 4);
        // The read-only registers ignore stores, uncounted.
        u.write(u64::from(FR), 4, 0);
        u.write(u64::from(MIS), 4, 0xff);
        assert_eq!(u.unknown, 4);
        assert_eq!(u.read(u64::from(FR), 4), FR_TXFE | FR_RXFE);
    }

    #[test]
    fn no_access_panics_or_changes_state_it_should_not() {
        // Every offset, width and value pattern: nothing panics, TX is never full.
        let mut u = Vuart::new();
        let mut seed = 0x1234_5678u32;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let offset = u64::from(seed % 0x1100);
            let bytes = [1, 2, 4][(seed >> 20) as usize % 3];
            if seed & 1 == 0 {
                u.read(offset, bytes);
            } else {
                u.write(offset, bytes, seed.rotate_left(7));
            }
            if seed & 0x30 == 0 {
                u.receive(seed as u8);
            }
            assert_eq!(u.read(u64::from(FR), 4) & (FR_TXFF | FR_BUSY), 0);
            assert!(u.rx_level() <= FIFO);
            assert_eq!(u.read(u64::from(MIS), 4), u.read(u64::from(RIS), 4) & u.read(u64::from(IMSC), 4));
        }
    }
}
