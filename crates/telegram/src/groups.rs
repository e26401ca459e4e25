//! The groups the parser keeps from one telegram to the next: where each group's content is,
//! its value typed by shape, and the frame they were read from, so that a next frame that
//! differs only inside values changes only the values that changed.

use crate::grammar::{self, Shape};
use crate::value::{Decimal, MeterTime, Number, Value};

/// A byte range of the frame, so that the parser's buffers outlive any one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    pub(crate) fn of(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    pub(crate) fn get(self, frame: &[u8]) -> &[u8] {
        &frame[self.start as usize..self.end as usize]
    }
}

/// Every group of the telegram read last, and its frame.
#[derive(Debug, Default)]
pub(crate) struct Groups {
    read: Vec<GroupRead>,
    /// The frame the groups were read from, if it had no bad line; else empty.
    frame: Vec<u8>,
    /// Whether the groups were read anew and are not typed yet.
    untyped: bool,
}

impl Groups {
    /// Starts the groups of a telegram parsed anew.
    pub(crate) fn start(&mut self) {
        self.read.clear();
        self.untyped = true;
    }

    /// Ends them: `frame` is what a next frame is compared with, or `None` when the telegram
    /// had a bad line (whose bytes are in no group, so that a change there would go unseen).
    pub(crate) fn finish(&mut self, frame: Option<&[u8]>) {
        self.frame.clear();
        self.frame.extend_from_slice(frame.unwrap_or_default());
    }

    /// Adds a group whose content is `content`.
    pub(crate) fn push(&mut self, content: Span, time_expected: bool) {
        self.read.push(GroupRead::new(content, time_expected));
    }

    /// How many groups there are.
    pub(crate) fn len(&self) -> usize {
        self.read.len()
    }

    /// Drops the groups from `len` on: a line that turned out malformed.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.read.truncate(len);
    }

    /// Every group, in telegram order.
    pub(crate) fn as_slice(&self) -> &[GroupRead] {
        &self.read
    }

    /// Whether `frame` differs from the frame before only inside groups, in bytes that open,
    /// close or end nothing: then its lines, codes and groups are the frame before's, and the
    /// groups whose bytes changed are typed again. Otherwise it must be parsed anew (and some
    /// groups may have been typed from it already).
    ///
    /// A byte to or from `(`, `)`, CR or LF could open, close or end a line or a group; a byte
    /// outside every group's content is part of a code, the header or a line's end. Neither is
    /// taken as a change of value, so what is kept is what a new parse would read.
    pub(crate) fn follow(&mut self, frame: &[u8]) -> bool {
        /// Bytes compared at once, then a word at a time where they differ.
        const CHUNK: usize = 32;
        const WORD: usize = 8;
        let Groups {
            read: groups,
            frame: previous,
            untyped,
        } = self;
        if frame.len() != previous.len() {
            return false;
        }
        let mut changes = Changes {
            frame,
            groups,
            next: 0,
            retyped: usize::MAX,
        };
        let chunks = frame
            .chunks_exact(CHUNK)
            .zip(previous.chunks_exact_mut(CHUNK));
        for (chunk_index, (new, old)) in chunks.enumerate() {
            if new == old {
                continue;
            }
            let words = new.chunks_exact(WORD).zip(old.chunks_exact(WORD));
            for (word_index, (new, old)) in words.enumerate() {
                let at = chunk_index * CHUNK + word_index * WORD;
                let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("a word"));
                if !changes.word(at, word(new), word(old)) {
                    return false;
                }
            }
            old.copy_from_slice(new);
        }
        let done = frame.len() - frame.len() % CHUNK;
        let tail = frame[done..].iter().zip(&mut previous[done..]);
        for (at, (&new, old)) in (done..).zip(tail) {
            if new != *old && !changes.byte(at, new, *old) {
                return false;
            }
            *old = new;
        }
        if *untyped {
            for group in groups.iter_mut() {
                if group.value == Typed::Pending {
                    group.retype(frame);
                }
            }
            *untyped = false;
        }
        true
    }
}

/// A group as the parser keeps it: where its content is, and its value, typed by shape once
/// the group is kept for a next telegram, and again only when its bytes change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct GroupRead {
    content: Span,
    value: Typed,
    /// Whether twelve digits here are a time without a flag: the first group of a code whose
    /// first group is a time (see [`Parser`](crate::Parser)).
    time_expected: bool,
}

impl GroupRead {
    /// The group whose content is `content`, not typed yet.
    fn new(content: Span, time_expected: bool) -> GroupRead {
        GroupRead {
            content,
            value: Typed::Pending,
            time_expected,
        }
    }

    /// Types the group again from `frame`, whose bytes in it changed.
    fn retype(&mut self, frame: &[u8]) {
        self.value = Typed::of(self.content.get(frame), self.time_expected);
    }

    /// Takes into its value that the content's digit at `index` changed from `old` to `new`
    /// (both ASCII digits); `false` where it must be typed again. One digit for
    /// another keeps a shape (a number's count of digits, a time's fields, text): a number
    /// changes by the difference at the digit's place, a flagged time's field likewise, and
    /// text is the bytes themselves. Only an unflagged time, whose fields must fit a clock,
    /// and a digit of a unit (`m3`) are typed again.
    #[inline]
    fn change_digit(&mut self, index: usize, old: u8, new: u8) -> bool {
        match &mut self.value {
            Typed::Text => !self.time_expected,
            // Typed from the frame it is in, whatever changed.
            Typed::Pending => true,
            Typed::Time(time) if time.dst().is_some() => time.set_digit(index, new - b'0'),
            Typed::Number { value, places, .. } => {
                let Some(&power) = places.of(index).and_then(|place| POWERS_OF_TEN.get(place))
                else {
                    return false;
                };
                let step = (i64::from(new) - i64::from(old)) * power;
                value.mantissa += if places.negative { -step } else { step };
                true
            }
            _ => false,
        }
    }

    /// Its value, typed from `frame` now, for a group not typed yet: out of line, as a
    /// meter's telegrams after its first have every group typed.
    #[cold]
    #[inline(never)]
    fn value_typed_now<'t>(&self, frame: &'t [u8]) -> Value<'t> {
        let typed = GroupRead {
            value: Typed::of(self.content.get(frame), self.time_expected),
            ..*self
        };
        typed.value(frame)
    }

    /// Its value, borrowing `frame`.
    pub(crate) fn value<'t>(&self, frame: &'t [u8]) -> Value<'t> {
        match self.value {
            Typed::Pending => self.value_typed_now(frame),
            Typed::Empty => Value::Empty,
            Typed::Time(time) => Value::Time(time),
            Typed::Text => Value::Text(self.content.get(frame)),
            Typed::Number { value, unit, .. } => Value::Number(Number {
                value,
                unit: match unit {
                    Unit::None => None,
                    Unit::Known(unit) => Some(unit),
                    // ASCII alphanumerics by grammar: always UTF-8.
                    Unit::Other { len } => {
                        let content = self.content.get(frame);
                        std::str::from_utf8(&content[content.len() - len as usize..]).ok()
                    }
                },
            }),
        }
    }
}

/// `10^n` for each place of a number's at most 18 digits.
const POWERS_OF_TEN: [i64; 18] = {
    let mut powers = [1; 18];
    let mut n = 1;
    while n < powers.len() {
        powers[n] = powers[n - 1] * 10;
        n += 1;
    }
    powers
};

/// A group's [`Value`] without the slices that borrow the frame: the parser keeps it from one
/// frame to the next.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Typed {
    /// Not typed yet: a telegram parsed anew types a group only where it is read, as most
    /// readers want a few values of forty, and the next telegram that keeps it types it.
    Pending,
    Empty,
    Number {
        value: Decimal,
        unit: Unit,
        places: Places,
    },
    Time(MeterTime),
    Text,
}

/// Where a number's digits are in its content, so that a digit that changed changes its value
/// by the difference at the digit's place.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Places {
    /// The last digit's index.
    last: u32,
    /// The decimal point's index, or 0 without one (no digit is before it then).
    point: u32,
    negative: bool,
}

impl Places {
    /// The place (0 for ones) of the digit at `index`; `None` past the last digit (a unit's).
    fn of(self, index: usize) -> Option<usize> {
        let index = index as u32;
        let place = (self.last.checked_sub(index)?).checked_sub(u32::from(index < self.point))?;
        Some(place as usize)
    }
}

/// A number's unit: none, one of those meters send, or another, the content's last `len`
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Unit {
    None,
    Known(&'static str),
    Other { len: u32 },
}

impl Typed {
    /// `content` typed by its shape, and twelve digits a time where one is expected.
    fn of(content: &[u8], time_expected: bool) -> Typed {
        match grammar::shape(content) {
            Shape::Empty => Typed::Empty,
            Shape::Time(time) => Typed::Time(time),
            Shape::Number { value, unit } => {
                let unit_len = unit.map_or(0, |unit| unit.len() + 1);
                let last = content.len() - unit_len - 1;
                let scale = usize::from(value.scale);
                Typed::Number {
                    value,
                    unit: unit.map_or(Unit::None, Unit::of),
                    places: Places {
                        last: last as u32,
                        point: if scale > 0 { (last - scale) as u32 } else { 0 },
                        negative: content[0] == b'-',
                    },
                }
            }
            Shape::Text if time_expected => unflagged_time(content),
            Shape::Text => Typed::Text,
        }
    }
}

impl Unit {
    /// The units meters send are kept as `&'static str`, so that reading one costs no UTF-8
    /// check.
    fn of(unit: &[u8]) -> Unit {
        Unit::Known(match unit {
            b"kW" => "kW",
            b"kWh" => "kWh",
            b"A" => "A",
            b"V" => "V",
            b"m3" => "m3",
            b"s" => "s",
            b"W" => "W",
            b"Wh" => "Wh",
            b"kvar" => "kvar",
            b"kvarh" => "kvarh",
            b"GJ" => "GJ",
            _ => {
                return Unit::Other {
                    len: unit.len() as u32,
                };
            }
        })
    }
}

/// Twelve digits that fit a clock reading where a time is expected, else text. Rare, and kept
/// out of line so that typing other text stays as tight as without it.
#[cold]
#[inline(never)]
fn unflagged_time(content: &[u8]) -> Typed {
    grammar::unflagged_time(content).map_or(Typed::Text, Typed::Time)
}

/// The changes of a frame from the frame before, applied word by word in order: each group
/// whose bytes changed is typed again, once.
struct Changes<'a> {
    frame: &'a [u8],
    groups: &'a mut [GroupRead],
    /// The first group that may hold the next change: changes come in order.
    next: usize,
    /// The group last typed again, or `usize::MAX`.
    retyped: usize,
}

impl Changes<'_> {
    /// The eight bytes at `at` changed from `old` to `new` (little-endian words); `false` if
    /// one of them changed outside a group's content or to or from a byte that bounds one.
    fn word(&mut self, at: usize, new: u64, old: u64) -> bool {
        let mut difference = new ^ old;
        while difference != 0 {
            let lane = difference.trailing_zeros() / 8;
            difference &= !(0xFF << (lane * 8));
            let byte = |word: u64| (word >> (lane * 8)) as u8;
            if !self.byte(at + lane as usize, byte(new), byte(old)) {
                return false;
            }
        }
        true
    }

    /// The byte at `at` changed from `old` to `new`.
    fn byte(&mut self, at: usize, new: u8, old: u8) -> bool {
        // Most changes are a digit for a digit, which bounds nothing.
        let digits = new.is_ascii_digit() && old.is_ascii_digit();
        let bounds = |byte| matches!(byte, b'(' | b')' | b'\r' | b'\n');
        if !digits && (bounds(new) || bounds(old)) {
            return false;
        }
        let mut next = self.next;
        while let Some(group) = self.groups.get(next)
            && group.content.end as usize <= at
        {
            next += 1;
        }
        self.next = next;
        let Some(group) = self.groups.get_mut(next) else {
            return false;
        };
        let Some(index) = at.checked_sub(group.content.start as usize) else {
            return false;
        };
        if self.retyped == next {
            return true;
        }
        if !(digits && group.change_digit(index, old, new)) {
            group.retype(self.frame);
            self.retyped = next;
        }
        true
    }
}
