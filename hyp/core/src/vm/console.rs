//! One physical console shared by several guests: output a line at a time, prefixed; input to the guest with the focus.
//!
//! Output. Each guest's text reaches the physical UART a line at a time,
//! each line prefixed with the guest's name (`guest@1| `), so lines of
//! guests writing at once never mix inside a line. A guest's line is held
//! until its newline, or until [`LINE_MAX`] bytes (then it is cut, and the
//! rest continues on a new prefixed line).
//!
//! The guest with the input focus is shown as it writes, as in Xen's
//! console: a person types to it and must see its prompt and the echo of
//! each key. Its line is *open* on the UART (prefix and bytes so far, no
//! newline yet). Another guest's whole line that comes meanwhile waits in a
//! queue while the open line is busy (its last byte less than the hold time
//! ago) and goes out when the open line ends. When the open line has been
//! quiet for the hold time (a prompt waiting for a key), or the queue is
//! full, the open line is ended there (`\r\n`), the queue goes out, and the
//! open line is shown again whole on a fresh line, so the person's view of
//! it is never lost and every line still appears whole. Time is the
//! caller's counter ([`Console::tick`] lets quiet time pass with no output).
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
//! The console is a pure state machine: bytes and the time in, bytes for the
//! UART out through a callback. The monitor's `vm` layer feeds it what
//! guests write and what the UART receives, under one lock.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

/// Bytes of a line held for a guest before it is cut.
pub const LINE_MAX: usize = 256;

/// Bytes of other guests' whole lines that may wait behind the focused guest's open line.
pub const QUEUE_MAX: usize = 4096;

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
    /// The line so far: held, or (the focused guest's) shown open.
    line: Vec<u8>,
    /// Lines (whole, or cut at [`LINE_MAX`]) this guest wrote.
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
    /// The focused guest's line is shown on the UART, unfinished.
    open: bool,
    /// When the focused guest last wrote a byte.
    last: u64,
    /// How long the open line may hold other lines back after the focused guest's last byte.
    hold: u64,
    /// Other guests' whole lines waiting for the open line: (guest, text).
    queue: VecDeque<(usize, Vec<u8>)>,
    queued: usize,
}

/// Sends one whole line for guest `name`, prefixed and ended.
fn line_out(name: &str, text: &[u8], out: &mut impl FnMut(&[u8])) {
    out(name.as_bytes());
    out(SEPARATOR.as_bytes());
    out(text);
    out(b"\r\n");
}

impl Console {
    /// A console for guests named `names`, the focus on the first; an open
    /// line holds others back for `hold` units of the caller's time after its last byte.
    pub fn new<S: Into<String>>(names: impl IntoIterator<Item = S>, hold: u64) -> Self {
        let lanes = names.into_iter().map(|n| Lane { name: n.into(), line: Vec::new(), lines: 0 }).collect();
        Self { lanes, focus: 0, switches: 0, open: false, last: 0, hold, queue: VecDeque::new(), queued: 0 }
    }

    /// The guest with the input focus.
    pub fn focus(&self) -> usize {
        self.focus
    }

    /// Guest `guest`'s name ("" for no such guest).
    pub fn name(&self, guest: usize) -> &str {
        self.lanes.get(guest).map_or("", |l| l.name.as_str())
    }

    /// How many guests share the console.
    pub fn guests(&self) -> usize {
        self.lanes.len()
    }

    /// Lines (whole, or cut at [`LINE_MAX`]) guest `guest` wrote.
    pub fn lines(&self, guest: usize) -> u64 {
        self.lanes.get(guest).map_or(0, |l| l.lines)
    }

    /// Whether the open line is busy at `now`: shown, and written to less than the hold time ago.
    fn busy(&self, now: u64) -> bool {
        self.open && now.saturating_sub(self.last) < self.hold
    }

    /// Makes room for other lines: ends the open line where it is (it will be shown again).
    fn cut(&mut self, out: &mut impl FnMut(&[u8])) {
        if core::mem::take(&mut self.open) {
            out(b"\r\n");
        }
    }

    /// Sends the waiting lines.
    fn drain(&mut self, out: &mut impl FnMut(&[u8])) {
        while let Some((g, text)) = self.queue.pop_front() {
            line_out(&self.lanes[g].name, &text, out);
        }
        self.queued = 0;
    }

    /// Shows the focused guest's unfinished line again, open, if it has one.
    fn reopen(&mut self, out: &mut impl FnMut(&[u8])) {
        let lane = &self.lanes[self.focus];
        if !self.open && !lane.line.is_empty() {
            out(lane.name.as_bytes());
            out(SEPARATOR.as_bytes());
            out(&lane.line);
            self.open = true;
        }
    }

    /// Everything waiting goes out now: the open line cut, the queue, the open line again.
    fn release(&mut self, out: &mut impl FnMut(&[u8])) {
        self.cut(out);
        self.drain(out);
        self.reopen(out);
    }

    /// When lines wait behind the open line, the time [`Console::tick`] will
    /// let them out if nothing happens before: the open line's last byte
    /// plus the hold time. `None` when nothing waits.
    pub fn deadline(&self) -> Option<u64> {
        (!self.queue.is_empty() && self.open).then(|| self.last.saturating_add(self.hold))
    }

    /// Lets time pass: lines waiting behind an open line that went quiet go out.
    pub fn tick(&mut self, now: u64, out: &mut impl FnMut(&[u8])) {
        if !self.queue.is_empty() && !self.busy(now) {
            self.release(out);
        }
    }

    /// Another guest's whole line: out now, or queued behind a busy open line.
    fn whole_line(&mut self, guest: usize, now: u64, out: &mut impl FnMut(&[u8])) {
        let text = core::mem::take(&mut self.lanes[guest].line);
        self.lanes[guest].lines += 1;
        if self.busy(now) && self.queued + text.len() <= QUEUE_MAX {
            self.queued += text.len();
            self.queue.push_back((guest, text));
            return;
        }
        self.cut(out);
        self.drain(out);
        line_out(&self.lanes[guest].name, &text, out);
        self.reopen(out);
    }

    /// A byte guest `guest` wrote to its UART at time `now`. Bytes for the
    /// UART come out through `out`. Carriage returns are dropped (each line
    /// out ends `\r\n`); an unknown guest's bytes are dropped.
    pub fn output(&mut self, guest: usize, byte: u8, now: u64, out: &mut impl FnMut(&[u8])) {
        self.tick(now, out);
        if guest >= self.lanes.len() || byte == b'\r' {
            return;
        }
        if guest == self.focus {
            self.output_focused(byte, now, out);
            return;
        }
        if byte != b'\n' {
            self.lanes[guest].line.push(byte);
            if self.lanes[guest].line.len() < LINE_MAX {
                return;
            }
        }
        self.whole_line(guest, now, out);
    }

    /// The focused guest's byte: on its open line at once.
    fn output_focused(&mut self, byte: u8, now: u64, out: &mut impl FnMut(&[u8])) {
        self.last = now;
        if !self.open {
            let lane = &self.lanes[self.focus];
            out(lane.name.as_bytes());
            out(SEPARATOR.as_bytes());
            out(&lane.line);
            self.open = true;
        }
        let lane = &mut self.lanes[self.focus];
        if byte != b'\n' {
            out(&[byte]);
            lane.line.push(byte);
            if lane.line.len() < LINE_MAX {
                return;
            }
        }
        // The line is done: ended, and what waited behind it goes out.
        out(b"\r\n");
        lane.line.clear();
        lane.lines += 1;
        self.open = false;
        self.drain(out);
    }

    /// Guest `guest`'s unfinished line goes out, ended (the guest ended), with what waited.
    pub fn flush(&mut self, guest: usize, out: &mut impl FnMut(&[u8])) {
        if guest >= self.lanes.len() {
            return;
        }
        let shown = guest == self.focus && self.open;
        self.cut(out);
        self.drain(out);
        let text = core::mem::take(&mut self.lanes[guest].line);
        if !text.is_empty() {
            if !shown {
                line_out(&self.lanes[guest].name, &text, out);
            }
            self.lanes[guest].lines += 1;
        }
        self.reopen(out);
    }

    /// A line of the monitor's own, prefixed with [`MONITOR_PREFIX`]; what waits goes out first.
    pub fn notice(&mut self, text: &str, out: &mut impl FnMut(&[u8])) {
        self.cut(out);
        self.drain(out);
        out(MONITOR_PREFIX.as_bytes());
        out(text.as_bytes());
        out(b"\r\n");
        self.reopen(out);
    }

    /// Moves the focus to guest `guest` at `now` and says so. Its unfinished
    /// line (a prompt, say) is shown after the notice, open: what it writes
    /// next continues it. The old focus's unfinished line is held from now on
    /// and goes out whole when it ends.
    pub fn set_focus(&mut self, guest: usize, now: u64, out: &mut impl FnMut(&[u8])) {
        if guest >= self.lanes.len() {
            return;
        }
        self.cut(out);
        self.drain(out);
        self.focus = guest;
        self.last = now;
        let mut text = String::from("input goes to ");
        text.push_str(&self.lanes[guest].name);
        text.push_str(" (Ctrl-A three times: the next guest)");
        self.notice(&text, out);
    }

    /// A byte typed on the physical console at `now`: where it goes.
    pub fn input(&mut self, byte: u8, now: u64, out: &mut impl FnMut(&[u8])) -> Input {
        self.tick(now, out);
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
            self.set_focus(next, now, out);
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

    /// The hold time the tests use.
    const HOLD: u64 = 100;

    /// Runs `f` on a console and returns what it sent to the UART, `\r` removed.
    fn sent(c: &mut Console, f: impl FnOnce(&mut Console, &mut dyn FnMut(&[u8]))) -> String {
        let mut buf = Vec::new();
        f(c, &mut |b: &[u8]| buf.extend_from_slice(b));
        String::from_utf8(buf).unwrap().replace('\r', "")
    }

    /// Guest `guest` writes `text` at time `now`, a byte at a time.
    fn write(c: &mut Console, guest: usize, text: &str, now: u64, out: &mut dyn FnMut(&[u8])) {
        for &b in text.as_bytes() {
            c.output(guest, b, now, &mut |x: &[u8]| out(x));
        }
    }

    #[test]
    fn lines_of_guests_writing_at_once_come_out_whole_and_prefixed() {
        let mut c = Console::new(["guest@0", "guest@1", "guest@2"], HOLD);
        c.set_focus(2, 0, &mut |_: &[u8]| {});
        let out = sent(&mut c, |c, out| {
            // Byte by byte, round robin: the worst interleaving.
            let texts = ["alpha one\nalpha two\n", "beta one\nbeta two\n"];
            let mut at = [0usize; 2];
            while at.iter().zip(texts).any(|(&i, t)| i < t.len()) {
                for g in 0..2 {
                    if let Some(&b) = texts[g].as_bytes().get(at[g]) {
                        c.output(g, b, 0, &mut |x: &[u8]| out(x));
                        at[g] += 1;
                    }
                }
            }
        });
        let lines: Vec<&str> = out.lines().collect();
        // "beta one" is a byte shorter: it ends first.
        assert_eq!(lines, vec!["guest@1| beta one", "guest@0| alpha one", "guest@1| beta two", "guest@0| alpha two"]);
        assert_eq!((c.lines(0), c.lines(1), c.lines(2)), (2, 2, 0));
    }

    #[test]
    fn the_focused_guest_is_shown_at_once_and_others_wait_for_its_line_to_end() {
        let mut c = Console::new(["a", "b"], HOLD);
        let out = sent(&mut c, |c, out| {
            write(c, 0, "ech", 10, out);
            out(b"<");
            write(c, 1, "boot done\n", 20, out);
            out(b">");
            write(c, 0, "o\nok\n", 30, out);
        });
        assert_eq!(out, "a| ech<>o\nb| boot done\na| ok\n");
    }

    /// The deadline the monitor arms its timer for: the open line's last byte
    /// plus the hold, only while lines wait; ticking at it lets them out.
    #[test]
    fn the_deadline_is_when_held_lines_may_go_and_only_while_some_wait() {
        let mut c = Console::new(["a", "b"], HOLD);
        assert_eq!(c.deadline(), None);
        let mut out = String::new();
        let mut sink = |b: &[u8]| out.push_str(core::str::from_utf8(b).unwrap());
        write(&mut c, 0, "~ # ", 10, &mut sink);
        assert_eq!(c.deadline(), None, "an open line alone holds nothing");
        write(&mut c, 1, "early\n", 50, &mut sink);
        assert_eq!(c.deadline(), Some(10 + HOLD));
        write(&mut c, 0, "l", 60, &mut sink);
        assert_eq!(c.deadline(), Some(60 + HOLD), "a new byte of the open line moves it");
        c.tick(60 + HOLD - 1, &mut sink);
        assert_eq!(c.deadline(), Some(60 + HOLD), "before it, nothing goes");
        c.tick(60 + HOLD, &mut sink);
        assert_eq!(c.deadline(), None);
        assert!(out.replace('\r', "").ends_with("b| early\na| ~ # l"), "{out:?}");
    }

    #[test]
    fn a_quiet_open_line_is_cut_for_others_and_shown_again_whole() {
        let mut c = Console::new(["a", "b"], HOLD);
        let out = sent(&mut c, |c, out| {
            write(c, 0, "~ # ", 10, out);
            out(b"<");
            // Within the hold time: queued.
            write(c, 1, "early\n", 50, out);
            out(b"|");
            // The open line went quiet: the queue goes out, the prompt again.
            c.tick(10 + HOLD, &mut |b: &[u8]| out(b));
            out(b">");
            write(c, 1, "late\n", 500, out);
            write(c, 0, "ls\n", 600, out);
        });
        assert_eq!(out, "a| ~ # <|\nb| early\na| ~ # >\nb| late\na| ~ # ls\n");
    }

    #[test]
    fn a_full_queue_goes_out_even_while_the_open_line_is_busy() {
        let mut c = Console::new(["a", "b"], HOLD);
        let line = "x".repeat(100);
        let out = sent(&mut c, |c, out| {
            write(c, 0, "busy", 0, out);
            for _ in 0..QUEUE_MAX / 100 + 1 {
                write(c, 1, &format!("{line}\n"), 1, out);
            }
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "a| busy");
        assert_eq!(lines.len(), QUEUE_MAX / 100 + 3, "{out}");
        assert!(lines[1..lines.len() - 1].iter().all(|l| *l == format!("b| {line}")));
        assert_eq!(*lines.last().unwrap(), "a| busy", "shown again");
    }

    #[test]
    fn a_long_line_is_cut_at_line_max_and_continues_prefixed() {
        let mut c = Console::new(["x", "y"], HOLD);
        let long: String = (0..LINE_MAX + 10).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
        let want = vec![format!("y| {}", &long[..LINE_MAX]), format!("y| {}", &long[LINE_MAX..])];
        let out = sent(&mut c, |c, out| write(c, 1, &format!("{long}\n"), 0, out));
        assert_eq!(out.lines().collect::<Vec<_>>(), want);
        // The focused guest's too.
        let out = sent(&mut c, |c, out| write(c, 0, &format!("{long}\n"), 0, out));
        let want: Vec<String> = want.iter().map(|l| l.replacen('y', "x", 1)).collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), want);
    }

    #[test]
    fn carriage_returns_are_dropped_and_unknown_guests_ignored() {
        let mut c = Console::new(["g"], HOLD);
        let out = sent(&mut c, |c, out| {
            write(c, 0, "one\r\ntwo\r\n", 0, out);
            write(c, 7, "nobody\n", 0, out);
        });
        assert_eq!(out, "g| one\ng| two\n");
    }

    #[test]
    fn three_ctrl_a_move_the_focus_round_and_the_monitor_says_so() {
        let mut c = Console::new(["g0", "g1", "g2"], HOLD);
        let mut buf = Vec::new();
        let mut seen = Vec::new();
        for _ in 0..9 {
            seen.push(c.input(SWITCH, 0, &mut |b: &[u8]| buf.extend_from_slice(b)));
        }
        assert_eq!(
            seen.iter().filter(|i| !matches!(i, Input::Held)).copied().collect::<Vec<_>>(),
            vec![Input::Focus { guest: 1 }, Input::Focus { guest: 2 }, Input::Focus { guest: 0 }]
        );
        let out = String::from_utf8(buf).unwrap().replace('\r', "");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with(MONITOR_PREFIX) && lines[0].contains("input goes to g1"), "{out}");
        assert!(lines[1].contains("g2") && lines[2].contains("g0"), "{out}");
        assert_eq!(c.focus(), 0);
    }

    #[test]
    fn typed_bytes_reach_only_the_focused_guest_and_short_ctrl_a_runs_are_delivered() {
        let mut c = Console::new(["g0", "g1"], HOLD);
        let mut none = |_: &[u8]| {};
        let i = c.input(b'l', 0, &mut none);
        assert_eq!((i, i.bytes()), (Input::Deliver { guest: 0, bytes: [b'l', 0, 0], len: 1 }, &b"l"[..]));
        assert_eq!(c.input(SWITCH, 0, &mut none), Input::Held);
        assert_eq!(c.input(SWITCH, 0, &mut none), Input::Held);
        let i = c.input(b's', 0, &mut none);
        assert_eq!(i.bytes(), &[SWITCH, SWITCH, b's'][..]);
        assert!(matches!(i, Input::Deliver { guest: 0, .. }));
        for _ in 0..3 {
            c.input(SWITCH, 0, &mut none);
        }
        let i = c.input(b'\r', 0, &mut none);
        assert_eq!((i, i.bytes()), (Input::Deliver { guest: 1, bytes: [b'\r', 0, 0], len: 1 }, &b"\r"[..]));
    }

    #[test]
    fn a_held_partial_line_shows_open_when_the_focus_comes_to_its_guest() {
        let mut c = Console::new(["g0", "g1"], HOLD);
        let out = sent(&mut c, |c, out| {
            write(c, 1, "login: ", 0, out);
            out(b"|");
            c.set_focus(1, 0, &mut |b: &[u8]| out(b));
            write(c, 1, "root\n", 0, out);
        });
        assert_eq!(out, "|(carve)| input goes to g1 (Ctrl-A three times: the next guest)\ng1| login: root\n");
    }

    #[test]
    fn losing_the_focus_mid_line_ends_the_open_line_and_holds_the_rest_whole() {
        let mut c = Console::new(["g0", "g1"], HOLD);
        let out = sent(&mut c, |c, out| {
            write(c, 0, "~ # ", 0, out);
            for _ in 0..3 {
                c.input(SWITCH, 0, &mut |b: &[u8]| out(b));
            }
            write(c, 0, "late\n", 0, out);
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "g0| ~ # ");
        assert!(lines[1].starts_with(MONITOR_PREFIX));
        assert_eq!(lines[2], "g0| ~ # late", "held now, and whole");
    }

    #[test]
    fn a_guest_that_ends_mid_line_gets_its_line_out() {
        let mut c = Console::new(["g0", "g1"], HOLD);
        let out = sent(&mut c, |c, out| {
            write(c, 1, "half", 0, out);
            write(c, 0, "open", 0, out);
            c.flush(1, &mut |b: &[u8]| out(b));
            c.flush(0, &mut |b: &[u8]| out(b));
        });
        assert_eq!(out, "g0| open\ng1| half\ng0| open\n");
        assert_eq!((c.lines(0), c.lines(1)), (1, 1));
    }

    /// A pseudo-random schedule of four guests' bytes, time steps and focus
    /// switches: every output line has one known prefix, every line a guest
    /// wrote appears whole, and anything else of a guest's is the start of
    /// one of its lines, shown while it was being written (an open line cut
    /// for others, or the focus moving).
    #[test]
    fn every_line_appears_whole_whatever_the_schedule() {
        let names = ["guest@0", "guest@1", "guest@2", "guest@3"];
        let texts: Vec<Vec<String>> = (0..4)
            .map(|g| (0..40).map(|l| format!("g{g} line {l} {}", "x".repeat((l * 7 + g) % 50))).collect())
            .collect();
        for seed in [0x9e37_79b9u32, 1, 0xdead_beef, 42] {
            let mut c = Console::new(names, HOLD);
            let mut buf = Vec::new();
            let mut at = [0usize; 4];
            let mut now = 0u64;
            let mut seed = seed;
            let bytes: Vec<Vec<u8>> =
                texts.iter().map(|t| t.iter().flat_map(|l| format!("{l}\n").into_bytes()).collect()).collect();
            while at.iter().zip(&bytes).any(|(&i, t)| i < t.len()) {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                now += u64::from(seed % 7);
                if seed.is_multiple_of(97) {
                    for _ in 0..3 {
                        c.input(SWITCH, now, &mut |b: &[u8]| buf.extend_from_slice(b));
                    }
                    continue;
                }
                if seed.is_multiple_of(89) {
                    now += HOLD;
                    c.tick(now, &mut |b: &[u8]| buf.extend_from_slice(b));
                }
                let g = (seed >> 8) as usize % 4;
                if let Some(&b) = bytes[g].get(at[g]) {
                    c.output(g, b, now, &mut |x: &[u8]| buf.extend_from_slice(x));
                    at[g] += 1;
                }
            }
            let out = String::from_utf8(buf).unwrap();
            assert!(out.ends_with("\r\n"));
            let mut whole: Vec<Vec<&str>> = vec![Vec::new(); 4];
            for line in out.split("\r\n").filter(|l| !l.is_empty()) {
                if line.starts_with(MONITOR_PREFIX) {
                    continue;
                }
                let (name, text) = line.split_once(SEPARATOR).expect("every line has a prefix");
                let g = names.iter().position(|&n| n == name).expect("a known guest");
                if texts[g].iter().any(|l| l == text) {
                    // An open line shown again when all of it had been written already, then ended: once.
                    if whole[g].last() != Some(&text) {
                        whole[g].push(text);
                    }
                } else {
                    assert!(texts[g].iter().any(|l| l.starts_with(text)), "{line:?} is no start of a line of {name}");
                }
            }
            for g in 0..4 {
                let want: Vec<&str> = texts[g].iter().map(String::as_str).collect();
                assert_eq!(whole[g], want, "guest {g}: each line whole, once, in order");
            }
        }
    }
}
