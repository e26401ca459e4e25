//! M-Bus devices (gas, water, heat meters) as a telegram describes them per channel.

use crate::obis::codes;
use crate::telegram::Telegram;
use crate::value::{MeterTime, Number, Value};

/// What an M-Bus device measures, from its device type (`0-n:24.1.0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MbusKind {
    /// Device type 3.
    Gas,
    /// Device types 6 (warm water) and 7.
    Water,
    /// Device types 4 and 12 (heat, cooling).
    Heat,
}

impl MbusKind {
    /// The kind for an M-Bus device type code, if it is one p1guard knows.
    pub fn from_device_type(code: u32) -> Option<MbusKind> {
        match code {
            3 => Some(MbusKind::Gas),
            6 | 7 => Some(MbusKind::Water),
            4 | 12 => Some(MbusKind::Heat),
            _ => None,
        }
    }
}

/// A device's last reading: the counter and when the device captured it, which is not the
/// telegram's time (gas meters report every 5 minutes on DSMR 5, hourly on DSMR 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbusReading<'t> {
    /// The device's capture time. Unflagged on DSMR 2.2 and 3.
    pub captured: MeterTime,
    /// The counter, with its unit (`m3`, `GJ`).
    pub value: Number<'t>,
}

/// One M-Bus channel's device, as the telegram describes it. Each of its values is read when
/// asked for: a reducer that sees the same capture again (DSMR 5 repeats it for 5 minutes,
/// DSMR 4 for an hour) stops after [`MbusDevice::reading`], never typing the id.
#[derive(Debug, Clone, Copy)]
pub struct MbusDevice<'t> {
    /// Channel 1 to 4 (the OBIS `B` field).
    pub channel: u8,
    telegram: Telegram<'t>,
}

impl<'t> MbusDevice<'t> {
    /// The device on `channel`, which the telegram mentions.
    pub(crate) fn on(telegram: Telegram<'t>, channel: u8) -> MbusDevice<'t> {
        MbusDevice { channel, telegram }
    }

    fn object(&self, code: crate::Obis) -> Option<crate::Object<'t>> {
        self.telegram.object(code.on_channel(self.channel))
    }

    /// The device type code (`0-n:24.1.0`), if sent.
    pub fn device_type(&self) -> Option<u32> {
        self.object(codes::MBUS_DEVICE_TYPE)?.value(0)?.count()
    }

    /// What the device measures, if its type is known.
    pub fn kind(&self) -> Option<MbusKind> {
        MbusKind::from_device_type(self.device_type()?)
    }

    /// The device's equipment id as sent (hex-encoded), if not empty.
    pub fn id(&self) -> Option<&'t [u8]> {
        [codes::MBUS_ID, codes::MBUS_ID_EMUCS]
            .into_iter()
            .find_map(|code| {
                self.object(code)?
                    .value(0)?
                    .text()
                    .filter(|id| !id.is_empty())
            })
    }

    /// The last reading, if the telegram carries one.
    pub fn reading(&self) -> Option<MbusReading<'t>> {
        [codes::MBUS_READING, codes::MBUS_READING_EMUCS]
            .into_iter()
            .find_map(|code| {
                let object = self.object(code)?;
                Some(MbusReading {
                    captured: object.value(0)?.time()?,
                    value: object.value(1)?.number()?,
                })
            })
            .or_else(|| {
                // DSMR 2.2/3: (capture time)(..)(..)(..)(obis)(unit) then (value) on the next line.
                // The capture time is unflagged: a time if its fields fit, else text that is
                // still read as an (impossible) time, such as `000000000000`.
                let object = self.object(codes::MBUS_READING_DSMR3)?;
                let captured = match object.value(0)? {
                    Value::Time(time) => time,
                    Value::Text(text) => MeterTime::from_digits(text)?,
                    Value::Empty | Value::Number(_) => return None,
                };
                let mut value = object.value(6)?.number()?;
                if value.unit.is_none() {
                    value.unit = object
                        .value(5)?
                        .text()
                        .and_then(|u| std::str::from_utf8(u).ok());
                }
                Some(MbusReading { captured, value })
            })
    }
}
