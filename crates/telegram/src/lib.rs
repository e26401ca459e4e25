//! DSMR P1 telegrams, from bytes on a wire to typed readings.
//!
//! Pure: no I/O, no clock, no async. The pipeline is
//!
//! 1. [`Framer`]: byte chunks in, complete [`Frame`]s out (resync on `/`, size cap, 7E1 and
//!    lost-CR repair);
//! 2. [`Parser`]: checks the CRC-16/ARC and reads every line with a generic COSEM grammar into
//!    a zero-copy [`Telegram`] (lines and groups found in one pass, each group typed by its
//!    shape; for a telegram that differs from the one before only inside values, as a meter's
//!    next one most often does, its lines and groups kept and only the changed groups typed
//!    again), with typed access to registers, instantaneous values, the meter time (S/W flag to
//!    UTC) and M-Bus devices;
//! 3. for encrypted meters (Luxembourg, Austria), [`dlms::CipherFramer`] and
//!    [`dlms::Decryptor`] come first and feed the plain telegram to the framer.
//!
//! ```
//! use p1guard_telegram::{Framer, FramerConfig, Parser};
//!
//! let mut framer = Framer::new(FramerConfig::default());
//! let mut parser = Parser::new();
//! framer.push(b"/ISk5\\2MT382-1000\r\n\r\n1-0:1.8.1(123456.789*kWh)\r\n!");
//! framer.push(b"\r\n");
//! let frame = framer.next_frame().expect("a whole frame").expect("well framed");
//! let telegram = parser.parse(&frame).expect("no CRC to fail, a valid header");
//! let import = telegram.energy_registers().next().expect("one register");
//! assert_eq!(import.1, 123456.789);
//! ```
//!
//! Errors are `Copy` values with a kind, the stream offset and the line; a bad line never
//! loses the rest of its telegram, and no input makes this crate panic.

#![forbid(unsafe_code)]

mod crc;
pub mod dlms;
mod error;
mod framer;
mod grammar;
mod groups;
#[cfg(feature = "serde")]
pub mod json;
mod mbus;
mod obis;
mod telegram;
mod value;

pub use crate::crc::crc16;
pub use crate::error::{Error, ErrorKind};
pub use crate::framer::{Frame, Framer, FramerConfig, OwnedFrame};
pub use crate::mbus::{MbusDevice, MbusKind, MbusReading};
pub use crate::obis::{Obis, codes};
pub use crate::telegram::{Direction, EnergyRegister, Object, Parser, Phase, Telegram};
pub use crate::value::{Decimal, Dst, MeterTime, Number, TimeFlag, Value};
