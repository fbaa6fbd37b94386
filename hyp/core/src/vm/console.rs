//! One physical console shared by several guests: output a line at a time, prefixed; input to the guest with the focus.
//!
//! Output. Each guest's text reaches the physical UART a line at a time,
//! each line prefixed with the guest's name (`guest@1| `), so lines of
//! guests writing at once never mix inside a line. A guest's line is held
//! until its newline, or until [`LINE_MAX`] bytes (then it is cut, and the
//! rest continues on a new prefixed line). The guest with the input focus
//! is the exception, as in Xen's console: a person types to it and must see
//! its prompt and the echo of each key, so its bytes go out as they come,
//! the prefix first at the start of each of its lines. When another line
//! must go out while the focused guest's line is open (its last byte was no
//! newline), the open line is ended first (`\r\n`) and its continuation gets
//! the prefix again: its text is cut in two lines, never mixed with another's.
//!
//! The monitor's own lines on this console (which guest has the focus, a
//! guest's end) carry the prefix [`MONITOR_PREFIX`], which no guest name can
//! produce (guest names are node names, which have no parentheses).
//!
//! Input. One guest has the focus and gets every byte typed. Ctrl-A three
//! times in a row moves the focus to the next guest (Xen's switch): the three
//! are not delivered, and the monitor says on the console which guest has
//! the focus now. One or two Ctrl-A followed by another key are delivered,
//! then the key, so a guest can still be sent Ctrl-A.
//!
//! The console is a pure state machine: bytes in, bytes for the UART out
//! through a callback. The monitor's `vm` layer feeds it what guests write
//! and what the UART receives, under one lock.

use alloc::string::String;
use alloc::vec::Vec;

/// Bytes of a line held for a guest before it is cut.
pub const LINE_MAX: usize = 160;

/// The key that, three times in a row, moves the input focus: Ctrl-A.
pub const SWITCH: u8 = 0x01;

/// How many [`SWITCH`] in a row move the focus.
pub const SWITCH_COUNT: u8 = 3;

/// What the monitor's own lines on the console start with.
pub const MONITOR_PREFIX: &str = "(carve)| ";

/// What separates a guest's name from its text.
pub const SEPARATOR: &str = "| ";

/// One guest's side of the console.
#[derive(Clone, Debug)]
struct Lane {
    name: String,
    /// The line being held (not the focused guest's: that one goes out at once).
    line: Vec<u8>,
    /// Lines (or cut pieces) sent for this guest.
    lines: u64,
}

/// Where each typed byte goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Input {
    /// Held: a Ctrl-A that may be the start of a switch.
    Held,
    /// Deliver these bytes (up to [`SWITCH_COUNT`]: held Ctrl-As, then the key) to guest `guest`.
    Deliver { guest: usize, bytes: [u8; SWITCH_COUNT as usize], len: u8 },
    /// The focus moved to guest `guest` (the monitor has said so on the console).
    Focus { guest: usize },
}

impl Input {
    /// The bytes to deliver, if any.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Input::Deliver { bytes, len, .. } => &bytes[..usize::from(*len)],
            _ => &[],
        }
    }
}

/// The console shared by the guests.
#[derive(Clone, Debug)]
pub struct Console {
    lanes: Vec<Lane>,
    focus: usize,
    /// Ctrl-As typed in a row, not delivered yet.
    switches: u8,
    /// The guest whose line is open on the UART (the focused guest's, mid-line).
    open: Option<usize>,
    /// Whether the UART is at the start of a line.
    at_line_start: bool,
}

/// Sends a guest's name as a prefix.
fn prefix(name: &str, out: &mut impl FnMut(&[u8])) {
    out(name.as_bytes());
    out(SEPARATOR.as_bytes());
}

impl Console {
    /// A console for guests named `names`, the focus on the first.
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        let lanes = names.into_iter().map(|n| Lane { name: n.into(), line: Vec::new(), lines: 0 }).collect();
        Self { lanes, focus: 0, switches: 0, open: None, at_line_start: true }
    }

    /// The guest with the input focus.
    pub fn focus(&self) -> usize {
        self.focus
    }

    /// How many guests share the console.
    pub fn guests(&self) -> usize {
        self.lanes.len()
    }

    /// Lines (and cut pieces) sent for guest `guest`.
    pub fn lines(&self, guest: usize) -> u64 {
        self.lanes.get(guest).map_or(0, |l| l.lines)
    }

    /// Ends the focused guest's open line, if there is one, before another line goes out.
    fn close_open(&mut self, out: &mut impl FnMut(&[u8])) {
        if self.open.take().is_some() || !self.at_line_start {
            out(b"\r\n");
            self.at_line_start = true;
        }
    }

    /// A whole line for guest `guest` (its held bytes) out, prefixed and ended.
    fn send_held(&mut self, guest: usize, out: &mut impl FnMut(&[u8])) {
        self.close_open(out);
        let lane = &mut self.lanes[guest];
        prefix(&lane.name, out);
        out(&lane.line);
        out(b"\r\n");
        lane.line.clear();
        lane.lines += 1;
    }

    /// A byte guest `guest` wrote to its UART. Bytes for the UART come out through `out`.
    /// Carriage returns are dropped (each line out ends `\r\n`); an unknown guest's bytes are dropped.
    pub fn output(&mut self, guest: usize, byte: u8, out: &mut impl FnMut(&[u8])) {
        if guest >= self.lanes.len() || byte == b'\r' {
            return;
        }
        if guest == self.focus {
            self.output_focused(guest, byte, out);
            return;
        }
        if byte == b'\n' {
            self.send_held(guest, out);
            return;
        }
        let lane = &mut self.lanes[guest];
        lane.line.push(byte);
        if lane.line.len() >= LINE_MAX {
            self.send_held(guest, out);
        }
    }

    /// The focused guest's byte: out at once, its prefix first at the start of a line.
    fn output_focused(&mut self, guest: usize, byte: u8, out: &mut impl FnMut(&[u8])) {
        if self.open != Some(guest) {
            self.close_open(out);
            prefix(&self.lanes[guest].name, out);
            self.open = Some(guest);
            self.at_line_start = false;
            self.lanes[guest].line.clear();
        }
        if byte == b'\n' {
            out(b"\r\n");
            self.open = None;
            self.at_line_start = true;
            self.lanes[guest].lines += 1;
            self.lanes[guest].line.clear();
            return;
        }
        out(&[byte]);
        // Counts the open line's length, to cut it at LINE_MAX as a held one would be.
        let lane = &mut self.lanes[guest];
        lane.line.push(byte);
        if lane.line.len() >= LINE_MAX {
            out(b"\r\n");
            lane.line.clear();
            lane.lines += 1;
            self.open = None;
            self.at_line_start = true;
        }
    }

    /// Sends guest `guest`'s held partial line, if any (when it ends, or before the focus moves to it).
    pub fn flush(&mut self, guest: usize, out: &mut impl FnMut(&[u8])) {
        if guest < self.lanes.len() && guest != self.focus && !self.lanes[guest].line.is_empty() {
            self.send_held(guest, out);
        }
    }

    /// A line of the monitor's own, prefixed with [`MONITOR_PREFIX`].
    pub fn notice(&mut self, text: &str, out: &mut impl FnMut(&[u8])) {
        self.close_open(out);
        out(MONITOR_PREFIX.as_bytes());
        out(text.as_bytes());
        out(b"\r\n");
    }

    /// Moves the focus to guest `guest` and says so. Its held partial line
    /// (a prompt, say) is shown after the notice, open: what it writes next continues it.
    pub fn set_focus(&mut self, guest: usize, out: &mut impl FnMut(&[u8])) {
        if guest >= self.lanes.len() {
            return;
        }
        // The old focus's open line was shown already: what it writes from now on is held afresh.
        let old = self.focus;
        self.lanes[old].line.clear();
        self.focus = guest;
        let held = core::mem::take(&mut self.lanes[guest].line);
        let mut text = String::from("input goes to ");
        text.push_str(&self.lanes[guest].name);
        text.push_str(" (Ctrl-A three times: the next guest)");
        self.notice(&text, out);
        if !held.is_empty() {
            prefix(&self.lanes[guest].name, out);
            out(&held);
            self.open = Some(guest);
            self.at_line_start = false;
            self.lanes[guest].line = held;
        }
    }

    /// A byte typed on the physical console: where it goes.
    pub fn input(&mut self, byte: u8, out: &mut impl FnMut(&[u8])) -> Input {
        if self.lanes.is_empty() {
            return Input::Held;
        }
        if byte == SWITCH {
            self.switches += 1;
            if self.switches < SWITCH_COUNT {
                return Input::Held;
            }
            self.switches = 0;
            let next = (self.focus + 1) % self.lanes.len();
            self.set_focus(next, out);
            return Input::Focus { guest: next };
        }
        let mut bytes = [0; SWITCH_COUNT as usize];
        let held = usize::from(core::mem::take(&mut self.switches));
        bytes[..held].fill(SWITCH);
        bytes[held] = byte;
        Input::Deliver { guest: self.focus, bytes, len: held as u8 + 1 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::vec;

    /// Runs `f` on a console and returns what it sent to the UART, `\r` removed.
    fn sent(c: &mut Console, f: impl FnOnce(&mut Console, &mut dyn FnMut(&[u8]))) -> String {
        let mut buf = Vec::new();
        f(c, &mut |b: &[u8]| buf.extend_from_slice(b));
        String::from_utf8(buf).unwrap().replace('\r', "")
    }

    fn write(c: &mut Console, guest: usize, text: &str, out: &mut dyn FnMut(&[u8])) {
        for &b in text.as_bytes() {
            c.output(guest, b, &mut |x: &[u8]| out(x));
        }
    }

    #[test]
    fn lines_of_guests_writing_at_once_come_out_whole_and_prefixed() {
        let mut c = Console::new(["guest@0", "guest@1", "guest@2"]);
        c.set_focus(2, &mut |_: &[u8]| {});
        let out = sent(&mut c, |c, out| {
            // Byte by byte, round robin: the worst interleaving.
            let texts = ["alpha one\nalpha two\n", "beta one\nbeta two\n"];
            let mut at = [0usize; 2];
            while at.iter().zip(texts).any(|(&i, t)| i < t.len()) {
                for g in 0..2 {
                    if let Some(&b) = texts[g].as_bytes().get(at[g]) {
                        c.output(g, b, &mut |x: &[u8]| out(x));
                        at[g] += 1;
                    }
                }
            }
        });
        let lines: Vec<&str> = out.lines().collect();
        // "beta one" is a byte shorter: it ends first.
        assert_eq!(lines, vec!["guest@1| beta one", "guest@0| alpha one", "guest@1| beta two", "guest@0| alpha two"]);
    }

    #[test]
    fn the_focused_guest_goes_out_at_once_and_is_cut_not_mixed_by_another_line() {
        let mut c = Console::new(["a", "b"]);
        let out = sent(&mut c, |c, out| {
            write(c, 0, "~ # ", out);
            out(b"<");
            write(c, 1, "boot done\n", out);
            out(b">");
            write(c, 0, "ls\nok\n", out);
        });
        assert_eq!(out, "a| ~ # <\nb| boot done\n>a| ls\na| ok\n");
        assert_eq!(c.lines(0), 2);
        assert_eq!(c.lines(1), 1);
    }

    #[test]
    fn a_long_line_is_cut_at_line_max_and_continues_prefixed() {
        let mut c = Console::new(["x", "y"]);
        let long: String = (0..LINE_MAX + 10).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let out = sent(&mut c, |c, out| write(c, 1, &format!("{long}\n"), out));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], format!("y| {}", &long[..LINE_MAX]));
        assert_eq!(lines[1], format!("y| {}", &long[LINE_MAX..]));
        // The focused guest's too.
        let out = sent(&mut c, |c, out| write(c, 0, &format!("{long}\n"), out));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines, vec![format!("x| {}", &long[..LINE_MAX]), format!("x| {}", &long[LINE_MAX..])]);
    }

    #[test]
    fn carriage_returns_are_dropped_and_unknown_guests_ignored() {
        let mut c = Console::new(["g"]);
        let out = sent(&mut c, |c, out| {
            write(c, 0, "one\r\ntwo\r\n", out);
            write(c, 7, "nobody\n", out);
        });
        assert_eq!(out, "g| one\ng| two\n");
    }

    #[test]
    fn three_ctrl_a_move_the_focus_round_and_the_monitor_says_so() {
        let mut c = Console::new(["g0", "g1", "g2"]);
        let mut out = String::new();
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut buf = Vec::new();
            for _ in 0..3 {
                seen.push(c.input(SWITCH, &mut |b: &[u8]| buf.extend_from_slice(b)));
            }
            out.push_str(&String::from_utf8(buf).unwrap().replace('\r', ""));
        }
        assert_eq!(
            seen.iter().filter(|i| !matches!(i, Input::Held)).copied().collect::<Vec<_>>(),
            vec![Input::Focus { guest: 1 }, Input::Focus { guest: 2 }, Input::Focus { guest: 0 }]
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(MONITOR_PREFIX) && lines[0].contains("input goes to g1"), "{out}");
        assert!(lines[1].contains("g2") && lines[2].contains("g0"), "{out}");
        assert_eq!(c.focus(), 0);
    }

    #[test]
    fn typed_bytes_reach_only_the_focused_guest_and_short_ctrl_a_runs_are_delivered() {
        let mut c = Console::new(["g0", "g1"]);
        let mut none = |_: &[u8]| {};
        let i = c.input(b'l', &mut none);
        assert_eq!((i, i.bytes()), (Input::Deliver { guest: 0, bytes: [b'l', 0, 0], len: 1 }, &b"l"[..]));
        assert_eq!(c.input(SWITCH, &mut none), Input::Held);
        assert_eq!(c.input(SWITCH, &mut none), Input::Held);
        let i = c.input(b's', &mut none);
        assert_eq!(i.bytes(), &[SWITCH, SWITCH, b's'][..]);
        assert!(matches!(i, Input::Deliver { guest: 0, .. }));
        for _ in 0..3 {
            c.input(SWITCH, &mut none);
        }
        let i = c.input(b'\r', &mut none);
        assert_eq!((i, i.bytes()), (Input::Deliver { guest: 1, bytes: [b'\r', 0, 0], len: 1 }, &b"\r"[..]));
    }

    #[test]
    fn a_held_partial_line_shows_open_when_the_focus_comes_to_its_guest() {
        let mut c = Console::new(["g0", "g1"]);
        let out = sent(&mut c, |c, out| {
            write(c, 1, "login: ", out);
            out(b"|");
            c.set_focus(1, &mut |b: &[u8]| out(b));
            write(c, 1, "root\n", out);
        });
        assert_eq!(out, "|(carve)| input goes to g1 (Ctrl-A three times: the next guest)\ng1| login: root\n");
    }

    #[test]
    fn the_focused_guest_losing_the_focus_mid_line_is_ended_first() {
        let mut c = Console::new(["g0", "g1"]);
        let out = sent(&mut c, |c, out| {
            write(c, 0, "~ # ", out);
            for _ in 0..3 {
                c.input(SWITCH, &mut |b: &[u8]| out(b));
            }
            write(c, 0, "late\n", out);
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "g0| ~ # ");
        assert!(lines[1].starts_with(MONITOR_PREFIX));
        assert_eq!(lines[2], "g0| late", "held now, whole");
    }

    #[test]
    fn every_guest_text_survives_any_interleaving_and_every_line_has_one_prefix() {
        // A pseudo-random schedule of four guests' bytes and focus switches:
        // each output line starts with a known prefix, and a guest's pieces,
        // joined, are exactly its text.
        let names = ["guest@0", "guest@1", "guest@2", "guest@3"];
        let texts: Vec<String> = (0..4)
            .map(|g| (0..40).map(|l| format!("g{g} line {l} {}\n", "x".repeat((l * 7 + g) % 50))).collect())
            .collect();
        let mut c = Console::new(names);
        let mut buf = Vec::new();
        let mut at = [0usize; 4];
        let mut seed = 0x9e37_79b9u32;
        while at.iter().zip(&texts).any(|(&i, t)| i < t.len()) {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            if seed.is_multiple_of(97) {
                for _ in 0..3 {
                    c.input(SWITCH, &mut |b: &[u8]| buf.extend_from_slice(b));
                }
                continue;
            }
            let g = (seed >> 8) as usize % 4;
            if let Some(&b) = texts[g].as_bytes().get(at[g]) {
                c.output(g, b, &mut |x: &[u8]| buf.extend_from_slice(x));
                at[g] += 1;
            }
        }
        let out = String::from_utf8(buf).unwrap();
        assert!(out.ends_with("\r\n"));
        let mut got = vec![String::new(); 4];
        for line in out.split("\r\n").filter(|l| !l.is_empty()) {
            if line.starts_with(MONITOR_PREFIX) {
                continue;
            }
            let (name, text) = line.split_once(SEPARATOR).expect("every line has a prefix");
            let g = names.iter().position(|&n| n == name).expect("a known guest");
            // A piece lies inside one of its guest's lines: nothing of another line, or another guest, in it.
            assert!(texts[g].lines().any(|l| l.contains(text)), "{line:?}");
            got[g].push_str(text);
        }
        for g in 0..4 {
            assert_eq!(got[g], texts[g].replace('\n', ""), "guest {g}");
        }
    }
}
