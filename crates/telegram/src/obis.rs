//! OBIS codes: the `A-B:C.D.E` names of COSEM objects.

use std::fmt;

/// An OBIS code `A-B:C.D.E`, with the optional `*F` suffix some German meters send. A missing
/// `F` is 255, COSEM's "not used", so `1-0:1.8.0*255` and `1-0:1.8.0` are the same code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Obis {
    /// Medium: 0 abstract, 1 electricity.
    pub a: u8,
    /// Channel: 0 the meter itself, 1-4 M-Bus devices.
    pub b: u8,
    /// Quantity.
    pub c: u8,
    /// Processing.
    pub d: u8,
    /// Tariff or classification.
    pub e: u8,
    /// Historical value; 255 when absent.
    pub f: u8,
}

impl Obis {
    /// `a-b:c.d.e`.
    pub const fn new(a: u8, b: u8, c: u8, d: u8, e: u8) -> Obis {
        Obis {
            a,
            b,
            c,
            d,
            e,
            f: 255,
        }
    }

    /// The six fields as one word: one compare instead of six, for the parser's index.
    pub(crate) const fn key(self) -> u64 {
        u64::from_le_bytes([self.a, self.b, self.c, self.d, self.e, self.f, 0, 0])
    }

    /// The same code on M-Bus channel `b`.
    pub const fn on_channel(self, b: u8) -> Obis {
        Obis { b, ..self }
    }
}

impl fmt::Display for Obis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Obis {
            a,
            b,
            c,
            d,
            e,
            f: hist,
        } = *self;
        write!(f, "{a}-{b}:{c}.{d}.{e}")?;
        if hist != 255 {
            write!(f, "*{hist}")?;
        }
        Ok(())
    }
}

/// The codes p1guard gives typed access to (DSMR 5.0.2 P1 companion standard and e-MUCS).
pub mod codes {
    use super::Obis;

    /// DSMR version, `1-3:0.2.8`.
    pub const VERSION: Obis = Obis::new(1, 3, 0, 2, 8);
    /// e-MUCS (Belgian) version, `0-0:96.1.4`.
    pub const VERSION_EMUCS: Obis = Obis::new(0, 0, 96, 1, 4);
    /// Meter time, `0-0:1.0.0`.
    pub const TIME: Obis = Obis::new(0, 0, 1, 0, 0);
    /// Equipment identifier, `0-0:96.1.1`.
    pub const EQUIPMENT_ID: Obis = Obis::new(0, 0, 96, 1, 1);
    /// Meter serial number used as id by some meters (Iskra IE, Hungarian E.ON), `0-0:96.1.0`.
    pub const SERIAL_NUMBER: Obis = Obis::new(0, 0, 96, 1, 0);
    /// COSEM logical device name, `0-0:42.0.0`.
    pub const LOGICAL_DEVICE_NAME: Obis = Obis::new(0, 0, 42, 0, 0);
    /// Device id of German meters, `1-0:0.0.0`.
    pub const DEVICE_ID: Obis = Obis::new(1, 0, 0, 0, 0);
    /// Tariff indicator, `0-0:96.14.0`.
    pub const TARIFF: Obis = Obis::new(0, 0, 96, 14, 0);
    /// Power delivered to the client (import), `1-0:1.7.0`.
    pub const POWER_IMPORT: Obis = Obis::new(1, 0, 1, 7, 0);
    /// Power received from the client (export), `1-0:2.7.0`.
    pub const POWER_EXPORT: Obis = Obis::new(1, 0, 2, 7, 0);
    /// Number of power failures, `0-0:96.7.21`.
    pub const POWER_FAILURES: Obis = Obis::new(0, 0, 96, 7, 21);
    /// Number of long power failures, `0-0:96.7.9`.
    pub const LONG_POWER_FAILURES: Obis = Obis::new(0, 0, 96, 7, 9);
    /// Text message, hex-encoded, `0-0:96.13.0`.
    pub const TEXT_MESSAGE: Obis = Obis::new(0, 0, 96, 13, 0);
    /// M-Bus device type on channel 0 (use [`Obis::on_channel`]), `0-n:24.1.0`.
    pub const MBUS_DEVICE_TYPE: Obis = Obis::new(0, 0, 24, 1, 0);
    /// M-Bus equipment id, `0-n:96.1.0`.
    pub const MBUS_ID: Obis = Obis::new(0, 0, 96, 1, 0);
    /// M-Bus equipment id as Belgian meters send it, `0-n:96.1.1`.
    pub const MBUS_ID_EMUCS: Obis = Obis::new(0, 0, 96, 1, 1);
    /// M-Bus reading with capture time, `0-n:24.2.1`.
    pub const MBUS_READING: Obis = Obis::new(0, 0, 24, 2, 1);
    /// Belgian gas reading, not temperature-corrected, `0-n:24.2.3`.
    pub const MBUS_READING_EMUCS: Obis = Obis::new(0, 0, 24, 2, 3);
    /// DSMR 2.2/3 gas reading: capture time, ..., unit, value on the next line, `0-n:24.3.0`.
    pub const MBUS_READING_DSMR3: Obis = Obis::new(0, 0, 24, 3, 0);
}
