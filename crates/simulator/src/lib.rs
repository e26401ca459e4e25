//! Realistic, deterministic DSMR P1 telegram streams for tests and benchmarks.
//!
//! A [`Simulator`] plays one household's meter from `start` to `end`: a seeded daily load
//! shape with appliances, rooftop solar that exports around midday, a gas meter that heats
//! in the morning and evening, and the meter's clock in Europe/Amsterdam local time with
//! its `S`/`W` flag. The bytes are what a meter sends on its P1 port (CRLF lines, CRC-16/ARC
//! in upper-case hex), so they can be fed to a framer as they are.
//!
//! Pure: no I/O and no clock. Everything derives from the [`MeterSpec`] (its seed included),
//! `start`, `end` and the gaps, so the same inputs always give the same bytes. The model
//! uses only IEEE arithmetic and square roots (no `sin`/`cos` from the platform's libm), so
//! streams are identical on every platform too.
//!
//! ```
//! use p1guard_simulator::{MeterSpec, Simulator, Style};
//!
//! let spec = MeterSpec {
//!     style: Style::Dsmr5,
//!     equipment_id: "E0012345678901234".into(),
//!     gas_id: Some("G0012345678901234".into()),
//!     seed: 7,
//! };
//! let start: jiff::Timestamp = "2026-03-29T00:59:58Z".parse().unwrap();
//! let end: jiff::Timestamp = "2026-03-29T01:00:01Z".parse().unwrap();
//! let telegrams: Vec<_> = Simulator::new(spec, start, end, Vec::new()).collect();
//! assert_eq!(telegrams.len(), 3);
//! // 02:59:59 winter time is followed by 03:00:00 summer time.
//! assert!(telegrams[1].1.windows(16).any(|w| w == b"0-0:1.0.0(260329"));
//! assert!(telegrams[1].1.windows(9).any(|w| w == b"015959W)\r"));
//! assert!(telegrams[2].1.windows(9).any(|w| w == b"030000S)\r"));
//! ```

#![forbid(unsafe_code)]

mod appliances;
mod format;
mod gas;
mod household;
mod rng;
mod simulator;
mod spec;

pub use simulator::{Simulator, stream};
pub use spec::{Gap, MeterSpec, Style};
