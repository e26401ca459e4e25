//! Framer and CipherFramer: invariants of every frame, and the same frames whether the stream
//! arrives in one push or in many small ones.
//!
//! Input: the last byte (XOR LF) chooses the configuration and the chunking, the rest is the
//! stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use p1guard_telegram::dlms::CipherFramer;
use p1guard_telegram::{ErrorKind, Framer, FramerConfig};

/// What the framer yielded, owned, so that runs can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Frame {
        bytes: Vec<u8>,
        crc: Option<u16>,
        offset: u64,
    },
    Error {
        kind: ErrorKind,
        offset: u64,
    },
    /// `discarded_bytes()` at the end of the stream, last in every run.
    Discarded(u64),
}

/// Typical chunk sizes, by the control byte's high nibble; chunks vary from 1 to twice that.
const CHUNKS: [usize; 16] = [
    64, 1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 100, 255, 512, 1024, 4096,
];

fuzz_target!(|data: &[u8]| {
    // The control byte is the last one, XOR LF, so that a capture ending in LF is a seed that
    // runs with the defaults and keeps its leading '/'.
    let Some((&last, input)) = data.split_last() else {
        return;
    };
    let control = last ^ b'\n';
    let nibble = usize::from(control >> 4);
    let config = FramerConfig {
        clear_bit7: control & 1 != 0,
        lf_to_crlf: control & 2 != 0,
        max_frame_len: match (control >> 2) & 3 {
            2 => 2 + nibble,       // 2..=17: tiny caps, hit constantly
            3 => 64 + 32 * nibble, // 64..=544
            _ => FramerConfig::default().max_frame_len,
        },
    };
    let chunks = split(input, CHUNKS[nibble], control);

    // The stream as the framer sees it after its byte repairs, for checking offsets.
    let stream = transform(config, input);
    let whole = run(config, &[input], &stream);
    let pieces = run(config, &chunks, &stream);
    assert_eq!(
        whole, pieces,
        "chunking changed the frames (config {config:?})"
    );

    let whole = run_cipher(&[input], input);
    let pieces = run_cipher(&chunks, input);
    assert_eq!(whole, pieces, "chunking changed the cipher frames");
});

/// Cuts `input` into chunks of varying length around `size`, deterministically.
fn split(input: &[u8], size: usize, seed: u8) -> Vec<&[u8]> {
    let mut state = u32::from(seed) | 0x100;
    let mut rest = input;
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (1 + state as usize % (2 * size)).min(rest.len());
        let (chunk, tail) = rest.split_at(len);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// What `Framer::push` documents: bit 7 cleared, a CR before every bare LF.
fn transform(config: FramerConfig, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut last = 0u8;
    for &byte in input {
        let byte = if config.clear_bit7 { byte & 0x7F } else { byte };
        if config.lf_to_crlf && byte == b'\n' && last != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        last = byte;
    }
    out
}

fn run(config: FramerConfig, chunks: &[&[u8]], stream: &[u8]) -> Vec<Item> {
    let mut framer = Framer::new(config);
    let mut items = Vec::new();
    for chunk in chunks {
        framer.push(chunk);
        drain(&mut framer, config, stream, &mut items);
    }
    framer.finish();
    drain(&mut framer, config, stream, &mut items);
    assert!(
        framer.next_frame().is_none(),
        "a drained, finished framer yields nothing"
    );
    // Every item consumes one '/' at least.
    let slashes = stream.iter().filter(|&&b| b == b'/').count();
    assert!(
        items.len() <= slashes,
        "{} items from {slashes} slashes",
        items.len()
    );
    assert!(framer.discarded_bytes() <= stream.len() as u64);
    items.push(Item::Discarded(framer.discarded_bytes()));
    items
}

fn drain(framer: &mut Framer, config: FramerConfig, stream: &[u8], items: &mut Vec<Item>) {
    while let Some(item) = framer.next_frame() {
        assert!(items.len() <= stream.len(), "the framer does not progress");
        let item = match item {
            Ok(frame) => {
                let bytes = frame.bytes();
                assert!(bytes.len() >= 2, "frame {bytes:?} too short");
                assert_eq!(bytes[0], b'/', "frame does not start with '/'");
                assert_eq!(bytes[bytes.len() - 1], b'!', "frame does not end with '!'");
                assert!(bytes.len() <= config.max_frame_len, "frame over the cap");
                let inner = &bytes[1..bytes.len() - 1];
                assert!(
                    !inner.iter().any(|&b| b == b'/' || b == b'!'),
                    "a frame holds a '/' or '!' inside"
                );
                let offset = usize::try_from(frame.offset()).unwrap();
                assert_eq!(
                    stream.get(offset..offset + bytes.len()),
                    Some(bytes),
                    "frame bytes differ from the stream at its offset"
                );
                check_crc(frame.crc(), &stream[offset + bytes.len()..]);
                Item::Frame {
                    bytes: bytes.to_vec(),
                    crc: frame.crc(),
                    offset: frame.offset(),
                }
            }
            Err(error) => {
                assert!(
                    matches!(error.kind, ErrorKind::TooLong | ErrorKind::Truncated),
                    "framer error {error:?}"
                );
                assert!(error.offset < stream.len() as u64);
                assert_eq!(stream[error.offset as usize], b'/', "error not at a '/'");
                Item::Error {
                    kind: error.kind,
                    offset: error.offset,
                }
            }
        };
        items.push(item);
    }
}

/// The CRC is the up-to-four hex digits right after the '!'.
fn check_crc(crc: Option<u16>, after: &[u8]) {
    let digits: Vec<u8> = after
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_hexdigit())
        .copied()
        .collect();
    let expected = (!digits.is_empty())
        .then(|| u16::from_str_radix(std::str::from_utf8(&digits).unwrap(), 16).unwrap());
    assert_eq!(crc, expected, "CRC field misread");
}

/// What the cipher framer yields, kept to compare single and chunked pushes: each frame with
/// its offset, or the error with its offset.
type CipherItem = Result<(Vec<u8>, u64), (ErrorKind, u64)>;

fn run_cipher(chunks: &[&[u8]], stream: &[u8]) -> Vec<CipherItem> {
    let mut framer = CipherFramer::new();
    let mut items = Vec::new();
    let tags = stream.iter().filter(|&&b| b == 0xDB).count();
    for chunk in chunks {
        framer.push(chunk);
        while let Some(item) = framer.next_frame() {
            assert!(items.len() < tags, "the cipher framer does not progress");
            items.push(match item {
                Ok((frame, offset)) => {
                    assert!(
                        frame.starts_with(&[0xDB, 0x08]),
                        "cipher frame without DB 08"
                    );
                    // Shortest header (one-byte length): tag, 8, title, length.
                    assert!(
                        frame.len() >= 11 + 5 + 12,
                        "cipher frame too short for SC, IC and tag"
                    );
                    assert!(frame.len() <= 8 * 1024 + 64, "cipher frame over the cap");
                    let at = usize::try_from(offset).unwrap();
                    assert_eq!(stream.get(at..at + frame.len()), Some(frame));
                    Ok((frame.to_vec(), offset))
                }
                Err(error) => {
                    assert_eq!(error.kind, ErrorKind::BadCipherFrame);
                    assert_eq!(stream[error.offset as usize], 0xDB);
                    Err((error.kind, error.offset))
                }
            });
        }
    }
    items
}
