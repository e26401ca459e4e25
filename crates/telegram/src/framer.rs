//! The framer: arbitrary byte chunks in, complete telegrams out.
//!
//! A telegram runs from `/` to `!`, followed by 0 to 4 hex digits of CRC (either case) and
//! normally CRLF. The framer resynchronises on every `/`, so garbage before, between and after
//! telegrams is skipped and a truncated telegram is reported once and then dropped.

use memchr::{memchr, memchr2};

use crate::error::{Error, ErrorKind};

/// How the framer reads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramerConfig {
    /// Largest frame accepted, `/` through `!`. Belgian telegrams reach about 1.7 KiB.
    pub max_frame_len: usize,
    /// Clear bit 7 of every byte: reads a 7E1 line (DSMR 2.2 to 4) opened as 8N1.
    pub clear_bit7: bool,
    /// Insert a CR before every LF that lacks one. Repairs captures whose CRs were lost in
    /// storage; real meters send CRLF, so this is off unless asked for.
    pub lf_to_crlf: bool,
}

impl Default for FramerConfig {
    fn default() -> Self {
        FramerConfig {
            max_frame_len: 8 * 1024,
            clear_bit7: false,
            lf_to_crlf: false,
        }
    }
}

/// One complete telegram as it was framed, not yet checked or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    bytes: &'a [u8],
    crc: Option<u16>,
    offset: u64,
}

impl<'a> Frame<'a> {
    /// The bytes from `/` through `!`: what the CRC covers.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The CRC written after `!`, or `None` for CRC-less versions (DSMR 2.2 and 3, some
    /// German meters).
    pub fn crc(&self) -> Option<u16> {
        self.crc
    }

    /// Byte offset of the `/` in the stream fed to the framer.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// A [`Frame`] that owns its bytes: how a frame framed in one task reaches a parser in another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedFrame {
    bytes: Box<[u8]>,
    crc: Option<u16>,
    offset: u64,
}

impl OwnedFrame {
    /// The frame, to hand to [`Parser::parse`](crate::Parser::parse).
    pub fn as_frame(&self) -> Frame<'_> {
        Frame {
            bytes: &self.bytes,
            crc: self.crc,
            offset: self.offset,
        }
    }
}

impl From<Frame<'_>> for OwnedFrame {
    fn from(frame: Frame<'_>) -> OwnedFrame {
        OwnedFrame {
            bytes: frame.bytes.into(),
            crc: frame.crc,
            offset: frame.offset,
        }
    }
}

/// Splits a byte stream into [`Frame`]s. Feed it with [`push`](Framer::push), drain it with
/// [`next_frame`](Framer::next_frame), and call [`finish`](Framer::finish) at end of stream.
#[derive(Debug, Default)]
pub struct Framer {
    config: FramerConfig,
    buf: Vec<u8>,
    /// Everything before `pos` has been framed or discarded.
    pos: usize,
    /// Bytes in `buf[pos + 1..scanned]` are known to hold neither `!` nor `/`.
    scanned: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// The last byte pushed, for `lf_to_crlf` across chunk boundaries.
    last_pushed: u8,
    finished: bool,
    /// A frame just ended: this many more bytes of its line ending (CRLF, LF or NUL) are not
    /// garbage, even if they arrive in a later chunk.
    ending_left: u8,
    discarded: u64,
}

impl Framer {
    /// A framer reading with `config`.
    pub fn new(config: FramerConfig) -> Self {
        Framer {
            config,
            ..Framer::default()
        }
    }

    /// Starts a new stream, as a new framer would, but keeps the buffer's memory: for
    /// sources whose every message holds whole telegrams (MQTT), framed one at a time.
    /// Bytes discarded so far stay counted.
    pub fn reset(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        *self = Framer {
            config: self.config,
            buf,
            discarded: self.discarded,
            ..Framer::default()
        };
    }

    /// Appends a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.scanned = self.scanned.saturating_sub(self.pos);
            self.pos = 0;
        }
        let FramerConfig {
            clear_bit7,
            lf_to_crlf,
            ..
        } = self.config;
        if !clear_bit7 && !lf_to_crlf {
            self.buf.extend_from_slice(chunk);
            return;
        }
        self.buf.reserve(chunk.len());
        for &byte in chunk {
            let byte = if clear_bit7 { byte & 0x7F } else { byte };
            if lf_to_crlf && byte == b'\n' && self.last_pushed != b'\r' {
                self.buf.push(b'\r');
            }
            self.buf.push(byte);
            self.last_pushed = byte;
        }
    }

    /// Marks the end of the stream: a frame waiting for more CRC digits is complete, and a
    /// frame without `!` is reported as truncated.
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Bytes skipped because they were outside any frame (line noise, gateway trailers), not
    /// counting the line ending after each frame.
    pub fn discarded_bytes(&self) -> u64 {
        self.discarded
    }

    /// The next complete frame, a framing error, or `None` when more input is needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, Error>> {
        let max = self.config.max_frame_len;
        if self.ending_left > 0 {
            let ending = &self.buf[self.pos..];
            let len = ending
                .iter()
                .take(usize::from(self.ending_left))
                .take_while(|b| matches!(b, b'\r' | b'\n' | 0))
                .count();
            self.pos += len;
            // Stop at anything else; if the chunk ran out first, the rest may follow.
            self.ending_left = if len == ending.len() {
                self.ending_left - len as u8
            } else {
                0
            };
        }
        let (start, hit) = loop {
            let Some(skip) = memchr(b'/', &self.buf[self.pos..]) else {
                self.discarded += (self.buf.len() - self.pos) as u64;
                self.pos = self.buf.len();
                return None;
            };
            self.discarded += skip as u64;
            self.pos += skip;
            let start = self.pos;
            let scan_from = self.scanned.max(start + 1);
            let hit = memchr2(b'!', b'/', &self.buf[scan_from..]).map(|i| scan_from + i);
            let end = hit.unwrap_or(self.buf.len());
            let cut_short = hit.map_or(self.finished, |hit| self.buf[hit] == b'/');
            // A `/` cut short before its first line ended is line noise, not a telegram: a
            // burst of noise is not a burst of errors.
            if cut_short && end - start <= max && memchr(b'\n', &self.buf[start..end]).is_none() {
                self.discarded += (end - start) as u64;
                self.pos = end;
                continue;
            }
            break (start, hit);
        };
        let offset = self.base + start as u64;
        let Some(hit) = hit else {
            self.scanned = self.buf.len();
            if self.buf.len() - start > max {
                self.pos = start + 1;
                return Some(Err(Error::new(ErrorKind::TooLong, offset, 0)));
            }
            if self.finished {
                self.pos = self.buf.len();
                return Some(Err(Error::new(ErrorKind::Truncated, offset, 0)));
            }
            return None;
        };
        if self.buf[hit] == b'/' || hit + 1 - start > max {
            let kind = if hit + 1 - start > max {
                ErrorKind::TooLong
            } else {
                ErrorKind::Truncated
            };
            self.pos = if kind == ErrorKind::TooLong {
                start + 1
            } else {
                hit
            };
            return Some(Err(Error::new(kind, offset, 0)));
        }
        let after = &self.buf[hit + 1..];
        let digits = after
            .iter()
            .take(4)
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if digits < 4 && digits == after.len() && !self.finished {
            self.scanned = hit;
            return None;
        }
        let crc = after[..digits].iter().fold(None, |acc: Option<u16>, &b| {
            Some((acc.unwrap_or(0) << 4) | hex_value(b))
        });
        self.pos = hit + 1 + digits;
        self.scanned = self.pos;
        self.ending_left = 2;
        Some(Ok(Frame {
            bytes: &self.buf[start..=hit],
            crc,
            offset,
        }))
    }
}

fn hex_value(digit: u8) -> u16 {
    match digit {
        b'0'..=b'9' => u16::from(digit - b'0'),
        _ => u16::from((digit | 0x20) - b'a' + 10),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame's bytes and CRC, or the kind of framing error.
    type Outcome = Result<(Vec<u8>, Option<u16>), ErrorKind>;

    fn frames(config: FramerConfig, input: &[u8]) -> Vec<Outcome> {
        let mut framer = Framer::new(config);
        framer.push(input);
        framer.finish();
        std::iter::from_fn(|| {
            framer
                .next_frame()
                .map(|r| r.map(|f| (f.bytes().to_vec(), f.crc())).map_err(|e| e.kind))
        })
        .collect()
    }

    #[test]
    fn frames_a_telegram_with_lower_case_and_short_crc() {
        let got = frames(
            FramerConfig::default(),
            b"/A\r\n!1e1D\r\n/B\r\n!B9F\r\n/C\r\n!\r\n",
        );
        assert_eq!(
            got,
            vec![
                Ok((b"/A\r\n!".to_vec(), Some(0x1E1D))),
                Ok((b"/B\r\n!".to_vec(), Some(0x0B9F))),
                Ok((b"/C\r\n!".to_vec(), None)),
            ]
        );
    }

    #[test]
    fn after_a_reset_a_new_stream_frames_as_in_a_new_framer() {
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(b"noise/A\r\n1-0:1.8.1(");
        framer.finish();
        assert_eq!(
            framer.next_frame().map(|r| r.map_err(|e| e.kind).err()),
            Some(Some(ErrorKind::Truncated))
        );
        assert!(framer.next_frame().is_none());
        framer.reset();
        framer.push(b"/B\r\n!0000\r\n");
        let frame = framer.next_frame().unwrap().unwrap();
        assert_eq!((frame.bytes(), frame.offset()), (&b"/B\r\n!"[..], 0));
        assert!(
            framer.next_frame().is_none(),
            "not finished: nothing cut short"
        );
        assert_eq!(
            framer.discarded_bytes(),
            5,
            "what the first stream discarded stays counted"
        );
    }

    #[test]
    fn a_slash_cut_short_before_its_first_line_ends_is_noise() {
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(b"////x/\x00/A\r\n!0000\r\n/B//");
        framer.finish();
        let frame = framer.next_frame().unwrap().unwrap();
        assert_eq!((frame.bytes(), frame.offset()), (&b"/A\r\n!"[..], 7));
        assert!(framer.next_frame().is_none());
        assert_eq!(framer.discarded_bytes(), 7 + 4);
    }

    #[test]
    fn a_new_slash_truncates_the_frame_in_progress() {
        let got = frames(FramerConfig::default(), b"junk/A\r\n1-0:1.8.1(/B\r\n!0000");
        assert_eq!(
            got,
            vec![
                Err(ErrorKind::Truncated),
                Ok((b"/B\r\n!".to_vec(), Some(0)))
            ]
        );
    }

    #[test]
    fn waits_for_crc_digits_until_the_stream_ends() {
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(b"/A\r\n!12");
        assert!(framer.next_frame().is_none());
        framer.push(b"3");
        assert!(framer.next_frame().is_none());
        framer.finish();
        assert_eq!(framer.next_frame().unwrap().unwrap().crc(), Some(0x123));
    }

    #[test]
    fn caps_the_frame_size_and_resyncs() {
        let config = FramerConfig {
            max_frame_len: 16,
            ..FramerConfig::default()
        };
        let mut input = b"/A\r\n".to_vec();
        input.extend([b'x'; 40]);
        input.extend(b"!0000/B\r\n!0000");
        let got = frames(config, &input);
        assert_eq!(
            got,
            vec![Err(ErrorKind::TooLong), Ok((b"/B\r\n!".to_vec(), Some(0)))]
        );
    }

    #[test]
    fn clears_bit_7_and_repairs_line_endings_across_chunks() {
        let config = FramerConfig {
            clear_bit7: true,
            lf_to_crlf: true,
            ..FramerConfig::default()
        };
        let mut framer = Framer::new(config);
        framer.push(&[b'/' | 0x80, b'A', b'\r']);
        framer.push(b"\n\n!");
        framer.finish();
        assert_eq!(
            framer.next_frame().unwrap().unwrap().bytes(),
            b"/A\r\n\r\n!"
        );
    }

    #[test]
    fn counts_discarded_bytes_and_stream_offsets() {
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(b"noise/A\r\n!0000\r\n");
        assert_eq!(framer.next_frame().unwrap().unwrap().offset(), 5);
        framer.push(b"more/B\r\n!0000");
        assert_eq!(framer.next_frame().unwrap().unwrap().offset(), 20);
        assert_eq!(
            framer.discarded_bytes(),
            5 + 4,
            "the CRLF after a frame is not noise"
        );
    }

    #[test]
    fn a_line_ending_split_across_chunks_is_not_noise() {
        // Found by fuzz/fuzz_targets/framer.rs: the LF came in the chunk after the CR.
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(b"/A\r\n!1234\r");
        assert!(framer.next_frame().unwrap().is_ok());
        assert!(framer.next_frame().is_none());
        framer.push(b"\n");
        assert!(framer.next_frame().is_none());
        framer.push(b"\n");
        assert!(framer.next_frame().is_none());
        assert_eq!(
            framer.discarded_bytes(),
            1,
            "only the third line-ending byte is noise"
        );
    }

    #[test]
    fn an_owned_frame_is_the_frame_it_was_made_from() {
        let mut framer = Framer::new(FramerConfig::default());
        framer.push(b"noise/A\r\n!1E1D\r\n");
        let frame = framer.next_frame().unwrap().unwrap();
        let owned = OwnedFrame::from(frame);
        assert_eq!(owned.as_frame(), frame);
        assert_eq!(owned.as_frame().offset(), 5);
    }
}
