//! The public [`Simulator`] and [`stream`]: when telegrams are due (the style's interval,
//! `start` to `end`, minus the gaps) and the state carried from one to the next. Advancing
//! the household lives in `model`, writing the telegram in `telegram`.

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};

use crate::appliances::{APPLIANCES, Running};
use crate::format::hex;
use crate::gas::{Drawing, GAS_USES, GasCapture};
use crate::household::{Day, House};
use crate::rng::Rng;
use crate::spec::{Gap, MeterSpec, Style};

mod model;
mod telegram;

/// One meter's telegram generator. Telegrams are due every
/// [`interval_seconds`](Style::interval_seconds), at the multiples of the interval in
/// `[start, end)`, except inside gaps. Construct with [`Simulator::new`], then drain with
/// [`next_into`](Simulator::next_into) (no allocation per telegram) or as an [`Iterator`].
///
/// The power in a telegram is the average over the interval that ends at its time, and the
/// energy of that interval goes to the registers of the tariff the telegram shows, so
/// consecutive telegrams differ by exactly that energy (to the register's 1 Wh resolution).
#[derive(Debug, Clone)]
pub struct Simulator {
    style: Style,
    equipment_hex: Vec<u8>,
    gas_hex: Option<Vec<u8>>,
    house: House,
    tz: TimeZone,
    offset: Offset,
    /// First second at which `offset` may be wrong (the next transition).
    offset_until: i64,
    /// Time of the next step, unix seconds.
    next: i64,
    end: i64,
    /// Gaps as unix seconds `[from, to)`, sorted by `from`, and the first that may still
    /// matter.
    gaps: Vec<(i64, i64)>,
    gap_index: usize,
    rng: Rng,
    gas_rng: Rng,
    day: Option<Day>,
    running: Vec<Running>,
    busy_until: [i64; APPLIANCES.len()],
    drawing: Vec<Drawing>,
    gas_busy_until: [i64; GAS_USES.len()],
    /// Slow random walks: household load (W) and cloud (fraction).
    load_walk: f64,
    cloud_walk: f64,
    voltage_walk: [f64; 3],
    /// Energy registers in joules (W·s), `[tariff 1, tariff 2]`.
    import_j: [u64; 2],
    export_j: [u64; 2],
    /// Gas counter in ml·s/h (3600 of these make a millilitre).
    gas_acc: u64,
    /// The last gas capture.
    gas_capture: GasCapture,
    /// What the current step measured.
    now: Measured,
}

/// The instantaneous state a telegram reports.
#[derive(Debug, Clone, Copy, Default)]
struct Measured {
    local: [u8; 6],
    summer: bool,
    tariff: u8,
    import_w: u64,
    export_w: u64,
    phase_import_w: [u64; 3],
    phase_export_w: [u64; 3],
    /// Tenths of a volt.
    decivolts: [u64; 3],
    amps: [u64; 3],
}

impl Simulator {
    /// A meter that sends from the first multiple of the style's interval at or after
    /// `start` until before `end`, silent during `gaps`. The registers start at values the
    /// seed decides.
    pub fn new(spec: MeterSpec, start: Timestamp, end: Timestamp, gaps: Vec<Gap>) -> Simulator {
        let style = spec.style;
        let interval = style.interval_seconds();
        let first_second = start.as_second() + i64::from(start.subsec_nanosecond() > 0);
        let next = first_second + (interval - first_second.rem_euclid(interval)) % interval;
        let mut gaps: Vec<(i64, i64)> = gaps
            .iter()
            .map(|g| {
                let ceil = |t: Timestamp| t.as_second() + i64::from(t.subsec_nanosecond() > 0);
                (ceil(g.from), ceil(g.to))
            })
            .filter(|(from, to)| from < to)
            .collect();
        gaps.sort_unstable();
        let tz = TimeZone::get("Europe/Amsterdam")
            .or_else(|_| TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3"))
            .unwrap_or(TimeZone::fixed(Offset::constant(1)));
        let mut start_rng = Rng(spec.seed ^ 0x7265_6769_7374_6572); // "register"
        let mut wh = |lo: u64, hi: u64| lo + start_rng.next_u64() % (hi - lo);
        let import_wh = [wh(2_000_000, 18_000_000), wh(2_000_000, 16_000_000)];
        let export_wh = [wh(200_000, 3_000_000), wh(500_000, 7_000_000)];
        let gas_litres = wh(400_000, 9_000_000);
        let capture = style.gas_capture_seconds();
        let gas_capture = GasCapture::new(&tz, next - next.rem_euclid(capture), gas_litres);
        let mut sim = Simulator {
            style,
            equipment_hex: hex(spec.equipment_id.as_bytes()),
            gas_hex: spec.gas_id.as_deref().map(|id| hex(id.as_bytes())),
            house: House::new(spec.seed),
            tz,
            offset: Offset::UTC,
            offset_until: i64::MIN,
            next,
            end: end.as_second() + i64::from(end.subsec_nanosecond() > 0),
            gaps,
            gap_index: 0,
            rng: Rng(spec.seed ^ 0x656C_6563_7472_6963), // "electric"
            gas_rng: Rng(spec.seed ^ 0x6761_7320_6D65_7465), // "gas mete"
            day: None,
            running: Vec::new(),
            busy_until: [i64::MIN; APPLIANCES.len()],
            drawing: Vec::new(),
            gas_busy_until: [i64::MIN; GAS_USES.len()],
            load_walk: 0.0,
            cloud_walk: 0.0,
            voltage_walk: [0.0; 3],
            import_j: import_wh.map(|wh| wh * 3600),
            export_j: export_wh.map(|wh| wh * 3600),
            gas_acc: gas_litres * 1000 * 3600,
            gas_capture,
            now: Measured::default(),
        };
        sim.running.reserve(APPLIANCES.len() * 3);
        sim.drawing.reserve(GAS_USES.len());
        sim
    }

    /// Appends the next telegram to `out`, exactly as the meter sends it (CRLF line ends,
    /// `!` and the upper-case CRC-16/ARC, CRLF), and returns its meter time; `None` once the
    /// next telegram would be at or after `end`.
    pub fn next_into(&mut self, out: &mut Vec<u8>) -> Option<Timestamp> {
        let interval = self.style.interval_seconds();
        loop {
            let t = self.next;
            if t >= self.end {
                return None;
            }
            let ts = Timestamp::from_second(t).ok()?;
            self.next = t + interval;
            self.step(t, ts, interval);
            if !self.silent(t) {
                self.write(out);
                return Some(ts);
            }
        }
    }

    /// Whether `t` lies in a gap. `t` only grows, so passed gaps are skipped for good.
    fn silent(&mut self, t: i64) -> bool {
        while let Some(&(_, to)) = self.gaps.get(self.gap_index) {
            if to > t {
                break;
            }
            self.gap_index += 1;
        }
        // Sorted by `from`: if the first gap not yet over has not begun, none has.
        self.gaps[self.gap_index..]
            .iter()
            .take_while(|&&(from, _)| from <= t)
            .any(|&(_, to)| to > t)
    }
}

impl Iterator for Simulator {
    /// The telegram's meter time and its bytes.
    type Item = (Timestamp, Vec<u8>);

    fn next(&mut self) -> Option<Self::Item> {
        let mut bytes = Vec::with_capacity(1024);
        let time = self.next_into(&mut bytes)?;
        Some((time, bytes))
    }
}

/// Every telegram of a simulated meter back to back, as a logger on its P1 port would
/// record them.
pub fn stream(spec: MeterSpec, start: Timestamp, end: Timestamp, gaps: Vec<Gap>) -> Vec<u8> {
    let mut simulator = Simulator::new(spec, start, end, gaps);
    let mut out = Vec::new();
    while simulator.next_into(&mut out).is_some() {}
    out
}
