//! The parser and the zero-copy telegram it yields.

use memchr::{memchr, memchr_iter};

use crate::crc::crc16;
use crate::error::{Error, ErrorKind};
use crate::framer::Frame;
use crate::grammar::{self, Group, Then};
use crate::groups::{GroupRead, Groups, Span};
use crate::mbus::MbusDevice;
use crate::obis::{Obis, codes};
use crate::value::{MeterTime, Number, Value};

/// An object as the parser keeps it: its code, its line, and where its groups are (one line's,
/// or more where a DSMR 2.2/3 value continues on the next line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawObject {
    obis: Obis,
    line: u32,
    groups_start: u32,
    groups_end: u32,
}

/// Parses frames into [`Telegram`]s. It keeps its buffers from one telegram to the next, so
/// that parsing allocates nothing once it has seen the largest telegram of a stream, the codes
/// it read, so that the next telegram's codes, the same as a meter's always are, are
/// recognised rather than read again, and the frame it read, so that a telegram that differs
/// from it only inside values keeps the lines and groups read from it.
///
/// Each `(...)` group is typed by its shape ([`Value`]). In a telegram parsed anew, a group is
/// typed where it is read, so that a reader that wants three values of forty pays for three.
/// A telegram that keeps the groups of the one before (a meter's next telegram most often
/// differs from its last only in the clock and a few readings) types them all once, and after
/// that only the groups whose bytes changed. Typing never fails (what is neither empty, a
/// number nor a time is text). There is one exception for times without
/// an `S`/`W` flag (DSMR 2.2 and 3): twelve digits `YYMMDDhhmmss` are a [`Value::Time`] (its
/// [`MeterTime::utc`] fails with [`TimeFlag::Unflagged`]) only where a time is expected and if
/// the fields fit a clock reading (month 1-12, day 1-31, hour 0-23, minute and second 0-59).
/// A time is expected in the first group of the meter clock `0-0:1.0.0` and of the M-Bus
/// readings `0-n:24.2.1`, `0-n:24.2.3` and `0-n:24.3.0`. Anywhere else, and where the fields do
/// not fit (`000000000000`), twelve digits stay [`Value::Text`]: they may be an id or a counter.
///
/// [`TimeFlag::Unflagged`]: crate::TimeFlag::Unflagged
#[derive(Debug, Default)]
pub struct Parser {
    objects: Vec<RawObject>,
    groups: Groups,
    line_errors: Vec<Error>,
    index: CodeIndex,
    /// The code read at each object position of the telegrams before.
    codes_read: CodesRead,
}

/// The code each object position held in the telegram before, with the bytes it was read
/// from. A meter sends the same codes in the same order every time, so a line that starts with
/// the same bytes up to its `(` as the line at its position did is that code again, found by
/// one compare instead of reading six fields. Reading a code looks no further than the `(`
/// after it, so the same bytes give the same code: nothing else is assumed.
///
/// It also tells whether every code of a telegram was recognised so: then each object holds
/// the code the same object held in the telegram before, as a code that was read and could not
/// be kept leaves its position matching nothing.
#[derive(Debug, Default)]
struct CodesRead {
    codes: Vec<CodeRead>,
    /// Whether a code of this telegram had to be read.
    missed: bool,
}

/// A code, the bytes of its line up to and including the `(` (at most [`CodeRead::WINDOW`]),
/// and the mask that selects them from the line's first bytes.
#[derive(Debug, Clone, Copy)]
struct CodeRead {
    bytes: u128,
    mask: u128,
    obis: Obis,
    len: u8,
}

impl CodeRead {
    /// The line bytes compared at once.
    const WINDOW: usize = 16;

    /// Matches no line: no masked bytes equal 1.
    const NONE: CodeRead = CodeRead {
        bytes: 1,
        mask: 0,
        obis: Obis::new(0, 0, 0, 0, 0),
        len: 0,
    };
}

impl CodesRead {
    /// The code at the start of `text` (a line and what follows it) for the object at
    /// `position`, and its length: the one read before if the bytes are the same, else read
    /// now and kept. `None` if the line does not start with a code followed by `(`.
    fn read(&mut self, text: &[u8], position: usize) -> Option<(Obis, usize)> {
        if let Some(recognised) = self.recognised(text, position) {
            return Some(recognised);
        }
        self.missed = true;
        let window = text
            .first_chunk::<{ CodeRead::WINDOW }>()
            .map(|bytes| u128::from_le_bytes(*bytes));
        let Ok((rest @ [b'(', ..], obis)) = grammar::obis(text) else {
            return None;
        };
        let len = text.len() - rest.len();
        if self.codes.len() <= position {
            self.codes.resize(position + 1, CodeRead::NONE);
        }
        self.codes[position] = match window {
            Some(window) if len < CodeRead::WINDOW => {
                let mask = u128::MAX >> (8 * (CodeRead::WINDOW - 1 - len));
                CodeRead {
                    bytes: window & mask,
                    mask,
                    obis,
                    len: len as u8,
                }
            }
            _ => CodeRead::NONE,
        };
        Some((obis, len))
    }

    /// The code at the start of `text` and its length, if it is the one read before at
    /// `position`.
    fn recognised(&self, text: &[u8], position: usize) -> Option<(Obis, usize)> {
        let window = u128::from_le_bytes(*text.first_chunk::<{ CodeRead::WINDOW }>()?);
        let before = self.codes.get(position)?;
        (window & before.mask == before.bytes).then_some((before.obis, usize::from(before.len)))
    }
}

/// Slots of the [`CodeIndex`]: a power of two, twice the objects it indexes.
const INDEX_SLOTS: usize = 128;

/// Where each code's first object is: an open-addressing table from [`Obis`] to the object's
/// position plus one (0 is an empty slot), so that reading a telegram by code (the meter id,
/// the clock, each register, each M-Bus device's objects) costs a hash and a compare instead
/// of a walk over every object. It indexes a telegram's first [`CodeIndex::MAX_OBJECTS`]
/// objects; a telegram with more (none seen so far) is searched object by object.
#[derive(Debug, Clone, Copy)]
struct CodeIndex {
    slots: [u8; INDEX_SLOTS],
    /// Whether every object of the telegram is in the table.
    complete: bool,
    /// How many objects it indexes.
    objects: usize,
}

impl Default for CodeIndex {
    fn default() -> Self {
        CodeIndex {
            slots: [0; INDEX_SLOTS],
            complete: true,
            objects: 0,
        }
    }
}

impl CodeIndex {
    /// At most half the slots are used, so that a probe ends soon.
    const MAX_OBJECTS: usize = INDEX_SLOTS / 2;

    /// Indexes `objects`, unless the table already does: when every code was recognised at
    /// its position as the telegram before's ([`CodesRead`]) and there are as many objects,
    /// each object has the code of the one at its position before, and the table stands.
    fn update(&mut self, objects: &[RawObject], same_codes: bool) {
        if same_codes && objects.len() == self.objects {
            return;
        }
        *self = CodeIndex {
            objects: objects.len(),
            ..CodeIndex::default()
        };
        for position in 0..objects.len() {
            self.add(objects, position);
        }
    }

    /// The first slot to probe for the code whose [`Obis::key`] is `key`.
    fn home(key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 57) as usize
    }

    /// Adds the object at `position` unless an earlier object has its code.
    fn add(&mut self, objects: &[RawObject], position: usize) {
        if position >= CodeIndex::MAX_OBJECTS {
            self.complete = false;
            return;
        }
        if let Err(empty) = self.probe(objects, objects[position].obis) {
            self.slots[empty] = position as u8 + 1;
        }
    }

    /// The position of the first object with code `obis`.
    fn find(&self, objects: &[RawObject], obis: Obis) -> Option<usize> {
        if !self.complete {
            return objects.iter().position(|o| o.obis == obis);
        }
        self.probe(objects, obis).ok()
    }

    /// The position of the object with code `obis` in the table, or the empty slot where its
    /// probe ends. (At most half the slots are taken, so there always is one.)
    fn probe(&self, objects: &[RawObject], obis: Obis) -> Result<usize, usize> {
        let key = obis.key();
        let mut slot = CodeIndex::home(key);
        loop {
            match usize::from(self.slots[slot]) {
                0 => return Err(slot),
                taken if objects[taken - 1].obis.key() == key => return Ok(taken - 1),
                _ => slot = (slot + 1) % INDEX_SLOTS,
            }
        }
    }
}

impl Parser {
    /// A parser with empty buffers.
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Checks the frame's CRC (if it has one) and parses every line. A bad line is recorded in
    /// [`Telegram::line_errors`] and skipped; only a CRC mismatch or a bad header fails the
    /// whole frame.
    pub fn parse<'t>(&'t mut self, frame: &Frame<'t>) -> Result<Telegram<'t>, Error> {
        let bytes = frame.bytes();
        let base = frame.offset();
        let end = bytes.len() - 1; // the '!'
        if let Some(expected) = frame.crc() {
            let computed = crc16(bytes);
            if computed != expected {
                let line = memchr_iter(b'\n', bytes).count() as u32 + 1;
                let kind = ErrorKind::CrcMismatch { expected, computed };
                return Err(Error::new(kind, base + end as u64, line));
            }
        }
        let header_end = memchr(b'\n', &bytes[..end]).unwrap_or(end);
        let header = trim_cr(&bytes[1..header_end]);
        if header.len() < 3 || !header[..3].iter().all(u8::is_ascii_alphabetic) {
            return Err(Error::new(ErrorKind::BadHeader, base, 1));
        }
        if !self.groups.follow(bytes) {
            self.parse_body(&bytes[..end], header_end, base);
            let clean = self.line_errors.is_empty();
            self.groups.finish(clean.then_some(bytes));
        }
        Ok(Telegram {
            bytes,
            offset: base,
            crc: frame.crc(),
            header,
            objects: &self.objects,
            groups: self.groups.as_slice(),
            line_errors: &self.line_errors,
            index: &self.index,
        })
    }

    /// Reads the lines of the body, `text[header_end + 1..]` (`text` ends before the '!'),
    /// into objects. The lines end at each LF, the last one at the '!'. Each line is read
    /// where it starts, and reading it finds where the next one starts.
    fn parse_body(&mut self, text: &[u8], header_end: usize, base: u64) {
        self.objects.clear();
        self.groups.start();
        self.line_errors.clear();
        self.codes_read.missed = false;
        let mut line_number = 1;
        let mut start = header_end + 1;
        while start < text.len() {
            line_number += 1;
            start = match self.parse_line(text, start, line_number) {
                Ok(next_line) => next_line,
                Err((kind, next_line)) => {
                    let offset = base + start as u64;
                    self.line_errors.push(Error::new(kind, offset, line_number));
                    next_line
                }
            };
        }
        self.index.update(&self.objects, !self.codes_read.missed);
    }

    /// Adds the object on the line at `text[start..]`, or the groups of a continuation line (a
    /// DSMR 2.2/3 gas value on the line after its `0-n:24.3.0`) to the object before it; an
    /// empty line adds nothing. Returns where the next line starts, or the error if the line
    /// could not be read and where the next line starts.
    fn parse_line(
        &mut self,
        text: &[u8],
        start: usize,
        line_number: u32,
    ) -> Result<usize, (ErrorKind, usize)> {
        let line = &text[start..];
        let skip = |kind| Err((kind, next_line(text, start)));
        let (obis, mut open) = match line {
            [b'\n', ..] => return Ok(start + 1),
            [b'\r', b'\n', ..] => return Ok(start + 2),
            [b'\r'] => return Ok(text.len()),
            [b'(', ..] if self.objects.is_empty() => return skip(ErrorKind::BadValue),
            [b'(', ..] => (None, start),
            _ => match self.codes_read.read(line, self.objects.len()) {
                Some((obis, len)) => (Some(obis), start + len),
                None => return skip(ErrorKind::BadObis),
            },
        };
        // A continuation's groups follow the object's first.
        let mut time_expected = obis.is_some_and(first_group_is_a_time);
        let mark = self.groups.len();
        let next_line = loop {
            match grammar::group(text, open) {
                Group::Next { close, then } => {
                    let content = Span::of(open + 1, close);
                    self.groups.push(content, time_expected);
                    time_expected = false;
                    match then {
                        Then::Group => open = close + 1,
                        Then::LineEnd { next_line } => break next_line,
                    }
                }
                Group::Malformed { next_line } => {
                    self.groups.truncate(mark);
                    return Err((ErrorKind::BadValue, next_line));
                }
            }
        };
        let groups_end = self.groups.len() as u32;
        match (obis, self.objects.last_mut()) {
            (Some(obis), _) => self.objects.push(RawObject {
                obis,
                line: line_number,
                groups_start: mark as u32,
                groups_end,
            }),
            (None, Some(previous)) => previous.groups_end = groups_end,
            // Ruled out above: a continuation follows an object.
            (None, None) => return Err((ErrorKind::BadValue, next_line)),
        }
        Ok(next_line)
    }
}

/// Where the line after the one at `text[start..]` starts: past its LF, or at the end.
fn next_line(text: &[u8], start: usize) -> usize {
    memchr(b'\n', &text[start..]).map_or(text.len(), |i| start + i + 1)
}

/// Whether the code's first group is a time: the meter clock and the M-Bus readings.
fn first_group_is_a_time(obis: Obis) -> bool {
    let channel = obis.b;
    obis == codes::TIME
        || [
            codes::MBUS_READING,
            codes::MBUS_READING_EMUCS,
            codes::MBUS_READING_DSMR3,
        ]
        .into_iter()
        .any(|code| obis == code.on_channel(channel))
}

/// Whether a version (`1-3:0.2.8` or e-MUCS `0-0:96.1.4`) is one whose telegrams carry a CRC:
/// DSMR 4.0 and later (`40`, `42`, `50`), and e-MUCS, whose versions start with the DSMR
/// version they build on (`50217`: DSMR 5.0.2).
fn version_requires_crc(version: &[u8]) -> bool {
    matches!(version, [b'4'..=b'9', rest @ ..] if rest.iter().all(u8::is_ascii_digit))
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A parsed telegram, borrowing its frame and the parser's buffers.
#[derive(Debug, Clone, Copy)]
pub struct Telegram<'t> {
    bytes: &'t [u8],
    offset: u64,
    crc: Option<u16>,
    header: &'t [u8],
    objects: &'t [RawObject],
    groups: &'t [GroupRead],
    line_errors: &'t [Error],
    index: &'t CodeIndex,
}

/// One COSEM object: an OBIS code and its value groups.
#[derive(Debug, Clone, Copy)]
pub struct Object<'t> {
    obis: Obis,
    line: u32,
    groups: &'t [GroupRead],
    bytes: &'t [u8],
}

impl<'t> Object<'t> {
    fn of(raw: &RawObject, groups: &'t [GroupRead], bytes: &'t [u8]) -> Object<'t> {
        Object {
            obis: raw.obis,
            line: raw.line,
            groups: &groups[raw.groups_start as usize..raw.groups_end as usize],
            bytes,
        }
    }

    /// The object's code.
    pub fn obis(&self) -> Obis {
        self.obis
    }

    /// The 1-based line of the telegram it was read from.
    pub fn line(&self) -> u32 {
        self.line
    }

    /// Its value groups, in order.
    pub fn values(&self) -> impl ExactSizeIterator<Item = Value<'t>> + 't {
        let bytes = self.bytes;
        self.groups.iter().map(move |group| group.value(bytes))
    }

    /// Its `index`th value group.
    pub fn value(&self, index: usize) -> Option<Value<'t>> {
        Some(self.groups.get(index)?.value(self.bytes))
    }
}

/// Import (delivered to the client, `1.8.x`) or export (received from the client, `2.8.x`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// `1-0:1.8.x`: energy delivered to the household.
    Import,
    /// `1-0:2.8.x`: energy the household delivered back.
    Export,
}

/// An electricity energy register: direction and tariff (0 = total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnergyRegister {
    /// Import or export.
    pub direction: Direction,
    /// Tariff 1, 2, ...; 0 for the total some meters send.
    pub tariff: u8,
}

/// A phase, L1 to L3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// L1.
    L1,
    /// L2.
    L2,
    /// L3.
    L3,
}

impl Phase {
    /// All three phases.
    pub const ALL: [Phase; 3] = [Phase::L1, Phase::L2, Phase::L3];

    /// OBIS C offset: L1 quantities are 20 above the total, L2 40, L3 60.
    fn c_offset(self) -> u8 {
        match self {
            Phase::L1 => 20,
            Phase::L2 => 40,
            Phase::L3 => 60,
        }
    }
}

impl<'t> Telegram<'t> {
    /// The frame's bytes, `/` through `!`.
    pub fn bytes(&self) -> &'t [u8] {
        self.bytes
    }

    /// Byte offset of the frame in the stream.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The verified CRC, or `None` for CRC-less versions.
    pub fn crc(&self) -> Option<u16> {
        self.crc
    }

    /// Whether the telegram has no CRC although its version requires one: it declares DSMR 4
    /// or 5 (`1-3:0.2.8(40)`, `(42)`, `(50)`) or an e-MUCS version (`0-0:96.1.4(50217)`), all of
    /// which end in `!XXXX`. Such a telegram is parsed as any other, but nothing verified that
    /// its bytes arrived intact.
    pub fn crc_missing(&self) -> bool {
        self.crc.is_none() && self.version().is_some_and(version_requires_crc)
    }

    /// The identification after `/`, such as `ISk5\2MT382-1000`.
    pub fn header(&self) -> &'t [u8] {
        self.header
    }

    /// Every object, in telegram order.
    pub fn objects(&self) -> impl ExactSizeIterator<Item = Object<'t>> + Clone + 't {
        let (bytes, groups) = (self.bytes, self.groups);
        self.objects
            .iter()
            .map(move |raw| Object::of(raw, groups, bytes))
    }

    /// The first object with code `obis`.
    pub fn object(&self, obis: Obis) -> Option<Object<'t>> {
        let position = self.index.find(self.objects, obis)?;
        Some(Object::of(&self.objects[position], self.groups, self.bytes))
    }

    /// Lines that could not be read, each skipped without losing the rest.
    pub fn line_errors(&self) -> &'t [Error] {
        self.line_errors
    }

    /// The first value of the first object with code `obis`: what most accessors read, so
    /// it is read without making the object.
    fn first_value(&self, obis: Obis) -> Option<Value<'t>> {
        let object = &self.objects[self.index.find(self.objects, obis)?];
        let groups = object.groups_start as usize..object.groups_end as usize;
        Some(self.groups.get(groups)?.first()?.value(self.bytes))
    }

    /// The DSMR version (`50` for 5.0) or, for Belgian meters, the e-MUCS version.
    pub fn version(&self) -> Option<&'t [u8]> {
        [codes::VERSION, codes::VERSION_EMUCS]
            .into_iter()
            .find_map(|c| self.first_value(c)?.text())
    }

    /// The meter's clock (`0-0:1.0.0`); absent in DSMR 2.2 and 3.
    pub fn time(&self) -> Option<MeterTime> {
        self.first_value(codes::TIME)?.time()
    }

    /// The meter's identifier as sent (hex-encoded on Dutch and Belgian meters): the equipment
    /// identifier, else the serial number, logical device name or German device id.
    pub fn equipment_id(&self) -> Option<&'t [u8]> {
        [
            codes::EQUIPMENT_ID,
            codes::SERIAL_NUMBER,
            codes::LOGICAL_DEVICE_NAME,
            codes::DEVICE_ID,
        ]
        .into_iter()
        .find_map(|c| self.first_value(c)?.text().filter(|id| !id.is_empty()))
    }

    /// The register's reading in kWh (converted from Wh where the meter counts in Wh).
    pub fn energy_kwh(&self, register: EnergyRegister) -> Option<f64> {
        self.register(register)?.kwh()
    }

    /// The register's reading in Wh, exact: what billing counts, without floating point.
    pub fn energy_wh(&self, register: EnergyRegister) -> Option<i64> {
        self.register(register)?.wh()
    }

    fn register(&self, register: EnergyRegister) -> Option<Number<'t>> {
        let c = match register.direction {
            Direction::Import => 1,
            Direction::Export => 2,
        };
        self.first_value(Obis::new(1, 0, c, 8, register.tariff))?
            .number()
    }

    /// Every electricity energy register the telegram carries, in kWh.
    pub fn energy_registers(&self) -> impl Iterator<Item = (EnergyRegister, f64)> + 't {
        let (bytes, groups) = (self.bytes, self.groups);
        // The codes are matched before an object is made of the few that match.
        self.objects.iter().filter_map(move |raw| {
            let direction = match raw.obis {
                Obis {
                    a: 1,
                    b: 0,
                    c: 1,
                    d: 8,
                    f: 255,
                    ..
                } => Direction::Import,
                Obis {
                    a: 1,
                    b: 0,
                    c: 2,
                    d: 8,
                    f: 255,
                    ..
                } => Direction::Export,
                _ => return None,
            };
            let kwh = Object::of(raw, groups, bytes).value(0)?.number()?.kwh()?;
            Some((
                EnergyRegister {
                    direction,
                    tariff: raw.obis.e,
                },
                kwh,
            ))
        })
    }

    fn watts(&self, obis: Obis) -> Option<f64> {
        self.first_value(obis)?.number()?.watts()
    }

    /// Power drawn now (`1-0:1.7.0`), in W.
    pub fn power_import_w(&self) -> Option<f64> {
        self.watts(codes::POWER_IMPORT)
    }

    /// Power delivered back now (`1-0:2.7.0`), in W.
    pub fn power_export_w(&self) -> Option<f64> {
        self.watts(codes::POWER_EXPORT)
    }

    /// Power drawn on one phase (`1-0:21.7.0`, `41.7.0`, `61.7.0`), in W.
    pub fn phase_power_import_w(&self, phase: Phase) -> Option<f64> {
        self.watts(Obis::new(1, 0, phase.c_offset() + 1, 7, 0))
    }

    /// Power delivered back on one phase (`1-0:22.7.0`, `42.7.0`, `62.7.0`), in W.
    pub fn phase_power_export_w(&self, phase: Phase) -> Option<f64> {
        self.watts(Obis::new(1, 0, phase.c_offset() + 2, 7, 0))
    }

    /// Voltage of one phase (`1-0:32.7.0`, `52.7.0`, `72.7.0`), in V.
    pub fn voltage_v(&self, phase: Phase) -> Option<f64> {
        let obis = Obis::new(1, 0, phase.c_offset() + 12, 7, 0);
        self.first_value(obis)?.number()?.in_unit("V")
    }

    /// Current of one phase (`1-0:31.7.0`, `51.7.0`, `71.7.0`), in A.
    pub fn current_a(&self, phase: Phase) -> Option<f64> {
        let obis = Obis::new(1, 0, phase.c_offset() + 11, 7, 0);
        self.first_value(obis)?.number()?.in_unit("A")
    }

    /// The tariff in force (`0-0:96.14.0`): 1 low, 2 normal in the Netherlands.
    pub fn tariff(&self) -> Option<u32> {
        self.first_value(codes::TARIFF)?.count()
    }

    /// Number of power failures in any phase (`0-0:96.7.21`).
    pub fn power_failures(&self) -> Option<u32> {
        self.first_value(codes::POWER_FAILURES)?.count()
    }

    /// Number of long power failures in any phase (`0-0:96.7.9`).
    pub fn long_power_failures(&self) -> Option<u32> {
        self.first_value(codes::LONG_POWER_FAILURES)?.count()
    }

    /// The text message (`0-0:96.13.0`), still hex-encoded as sent; `None` if empty.
    pub fn text_message_hex(&self) -> Option<&'t [u8]> {
        self.first_value(codes::TEXT_MESSAGE)?
            .text()
            .filter(|t| !t.is_empty())
    }

    /// The M-Bus devices (gas, water, heat) on channels 1 to 4 that the telegram mentions.
    pub fn mbus_devices(&self) -> impl Iterator<Item = MbusDevice<'t>> + 't {
        let telegram = *self;
        // One pass for the channels mentioned, then only those channels' objects are read.
        let mentioned = self
            .objects
            .iter()
            .filter(|o| o.obis.a == 0 && (1..=4).contains(&o.obis.b))
            .fold(0u8, |channels, o| channels | (1 << o.obis.b));
        (1..=4u8)
            .filter(move |channel| mentioned & (1 << channel) != 0)
            .map(move |channel| MbusDevice::on(telegram, channel))
    }
}
