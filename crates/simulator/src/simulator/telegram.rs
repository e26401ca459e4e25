//! The telegram's bytes for the current step, exactly as a meter sends them on its P1 port:
//! header, version, time, registers, instantaneous values, the M-Bus gas lines, `!` and the
//! CRC-16/ARC.

use super::Simulator;
use crate::format::{push_fixed, push_kw, push_time, push_uint};
use crate::spec::Style;

impl Simulator {
    /// Writes the telegram for the current step.
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(1200 + self.equipment_hex.len());
        let m = &self.now;
        out.extend_from_slice(self.style.header());
        out.extend_from_slice(b"\r\n\r\n1-3:0.2.8(");
        out.extend_from_slice(self.style.version());
        out.extend_from_slice(b")\r\n0-0:1.0.0(");
        push_time(out, m.local, m.summer);
        out.extend_from_slice(b")\r\n0-0:96.1.1(");
        out.extend_from_slice(&self.equipment_hex);
        out.extend_from_slice(b")\r\n");
        let registers = [
            (b"1-0:1.8.1(", self.import_j[0]),
            (b"1-0:1.8.2(", self.import_j[1]),
            (b"1-0:2.8.1(", self.export_j[0]),
            (b"1-0:2.8.2(", self.export_j[1]),
        ];
        for (code, joules) in registers {
            out.extend_from_slice(code);
            push_fixed(out, joules / 3600, 6, 3);
            out.extend_from_slice(b"*kWh)\r\n");
        }
        out.extend_from_slice(b"0-0:96.14.0(");
        push_uint(out, u64::from(m.tariff), 4);
        out.extend_from_slice(b")\r\n1-0:1.7.0(");
        push_kw(out, m.import_w);
        out.extend_from_slice(b")\r\n1-0:2.7.0(");
        push_kw(out, m.export_w);
        out.extend_from_slice(b")\r\n0-0:96.7.21(");
        push_uint(out, u64::from(self.house.short_failures), 5);
        out.extend_from_slice(b")\r\n0-0:96.7.9(00000)\r\n1-0:99.97.0(0)(0-0:96.7.19)\r\n");
        for (code, count) in [b"1-0:32.32.0(", b"1-0:52.32.0(", b"1-0:72.32.0("]
            .into_iter()
            .zip(self.house.sags)
            .chain(
                [b"1-0:32.36.0(", b"1-0:52.36.0(", b"1-0:72.36.0("]
                    .into_iter()
                    .zip(self.house.swells),
            )
        {
            out.extend_from_slice(code);
            push_uint(out, u64::from(count), 5);
            out.extend_from_slice(b")\r\n");
        }
        if self.style == Style::Dsmr4 {
            out.extend_from_slice(b"0-0:96.13.1()\r\n");
        }
        out.extend_from_slice(b"0-0:96.13.0()\r\n");
        for (code, dv) in [b"1-0:32.7.0(", b"1-0:52.7.0(", b"1-0:72.7.0("]
            .into_iter()
            .zip(m.decivolts)
        {
            out.extend_from_slice(code);
            push_fixed(out, dv, 3, 1);
            out.extend_from_slice(b"*V)\r\n");
        }
        for (code, a) in [b"1-0:31.7.0(", b"1-0:51.7.0(", b"1-0:71.7.0("]
            .into_iter()
            .zip(m.amps)
        {
            out.extend_from_slice(code);
            push_uint(out, a, 3);
            out.extend_from_slice(b"*A)\r\n");
        }
        let phase_powers = [b"1-0:21.7.0(", b"1-0:41.7.0(", b"1-0:61.7.0("]
            .into_iter()
            .zip(m.phase_import_w)
            .chain(
                [b"1-0:22.7.0(", b"1-0:42.7.0(", b"1-0:62.7.0("]
                    .into_iter()
                    .zip(m.phase_export_w),
            );
        for (code, w) in phase_powers {
            out.extend_from_slice(code);
            push_kw(out, w);
            out.extend_from_slice(b")\r\n");
        }
        if let Some(gas_hex) = &self.gas_hex {
            out.extend_from_slice(b"0-1:24.1.0(003)\r\n0-1:96.1.0(");
            out.extend_from_slice(gas_hex);
            out.extend_from_slice(b")\r\n0-1:24.2.1(");
            out.extend_from_slice(&self.gas_capture.text);
            out.extend_from_slice(b")(");
            push_fixed(out, self.gas_capture.litres, 5, 3);
            out.extend_from_slice(b"*m3)\r\n");
        }
        out.push(b'!');
        let crc = p1guard_telegram::crc16(&out[start..]);
        for shift in [12, 8, 4, 0] {
            out.push(b"0123456789ABCDEF"[usize::from((crc >> shift) as u8 & 0xF)]);
        }
        out.extend_from_slice(b"\r\n");
    }
}
