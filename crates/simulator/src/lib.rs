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

use jiff::Timestamp;
use jiff::civil::Weekday;
use jiff::tz::{Offset, TimeZone};

/// Which generation of meter to imitate: it sets the telegram interval, the gas capture
/// period, the header and the version line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Style {
    /// DSMR 5.0.2 (`/ISk5\2MT382-1000`, version 50): a telegram every second, gas captured
    /// every 5 minutes.
    Dsmr5,
    /// DSMR 4.2 (`/KFM5KAIFA-METER`, version 42): a telegram every 10 seconds, gas captured
    /// every full hour.
    Dsmr4,
}

impl Style {
    /// Seconds between two telegrams: 1 for DSMR 5, 10 for DSMR 4.
    pub const fn interval_seconds(self) -> i64 {
        match self {
            Style::Dsmr5 => 1,
            Style::Dsmr4 => 10,
        }
    }

    /// Seconds between two gas captures: 300 for DSMR 5, 3600 for DSMR 4. Captures fall on
    /// multiples of this in UTC, which are also local 5-minute marks and full hours.
    pub const fn gas_capture_seconds(self) -> i64 {
        match self {
            Style::Dsmr5 => 300,
            Style::Dsmr4 => 3600,
        }
    }

    const fn header(self) -> &'static [u8] {
        match self {
            Style::Dsmr5 => b"/ISk5\\2MT382-1000",
            Style::Dsmr4 => b"/KFM5KAIFA-METER",
        }
    }

    const fn version(self) -> &'static [u8] {
        match self {
            Style::Dsmr5 => b"50",
            Style::Dsmr4 => b"42",
        }
    }
}

/// The meter to simulate: its generation, identifiers and the seed that decides the
/// household (its appliances, solar panels, heating) and every random draw.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MeterSpec {
    /// Generation of meter.
    pub style: Style,
    /// Equipment identifier as text (ASCII, such as `E0012345678901234`); the telegram
    /// carries it hex-encoded in `0-0:96.1.1`, as Dutch meters do.
    pub equipment_id: String,
    /// The gas meter's identifier, hex-encoded in `0-1:96.1.0`; `None` for a household
    /// without a gas meter (no M-Bus lines at all).
    pub gas_id: Option<String>,
    /// Seed of everything random.
    pub seed: u64,
}

/// A period in which the meter sends nothing (a logger outage, a pulled cable): no telegram
/// has a time in `[from, to)`. The household's consumption goes on, so the registers after a
/// gap have grown by what was used during it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gap {
    /// First silent instant.
    pub from: Timestamp,
    /// First instant after the gap.
    pub to: Timestamp,
}

/// splitmix64 (Steele, Lea, Flood 2014): a 64-bit counter through a strong mixer. Tiny,
/// fast, and good enough for test data; not for anything secret.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`, from the top 53 bits.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Roughly normal with mean 0 and standard deviation 1 (sum of four uniforms).
    fn noise(&mut self) -> f64 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 1.732_050_8
    }
}

/// splitmix64's finaliser: a bijective avalanche of 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A portable cosine of `2π·turns` (Bhaskara I's rational approximation, error below 0.002):
/// plenty for seasons, and free of libm differences between platforms.
fn cos_turns(turns: f64) -> f64 {
    let d = (turns - turns.round()).abs(); // distance to the nearest whole turn, 0..=0.5
    let bhaskara = |d: f64| (1.0 - 16.0 * d * d) / (1.0 + 4.0 * d * d); // cos(2πd), |d| <= 1/4
    if d <= 0.25 {
        bhaskara(d)
    } else {
        -bhaskara(0.5 - d)
    }
}

/// Linear interpolation through `(hour, value)` points spanning 0 to 24.
fn profile(points: &[(f64, f64)], hour: f64) -> f64 {
    let hour = hour.rem_euclid(24.0);
    for pair in points.windows(2) {
        let ((h0, v0), (h1, v1)) = (pair[0], pair[1]);
        if hour <= h1 {
            return v0 + (v1 - v0) * (hour - h0) / (h1 - h0);
        }
    }
    points.last().map_or(0.0, |p| p.1)
}

/// How busy a weekday household is (0 asleep or out, 1 everyone home and cooking).
const WEEKDAY: &[(f64, f64)] = &[
    (0.0, 0.05),
    (6.0, 0.05),
    (6.5, 0.5),
    (8.0, 0.6),
    (8.75, 0.15),
    (12.0, 0.2),
    (13.0, 0.15),
    (16.5, 0.3),
    (18.0, 0.9),
    (21.0, 0.8),
    (22.5, 0.4),
    (23.5, 0.1),
    (24.0, 0.05),
];

/// How busy a weekend household is: later mornings, home during the day.
const WEEKEND: &[(f64, f64)] = &[
    (0.0, 0.15),
    (1.0, 0.05),
    (7.5, 0.05),
    (8.5, 0.5),
    (10.5, 0.5),
    (12.0, 0.6),
    (14.0, 0.4),
    (17.0, 0.5),
    (18.5, 0.9),
    (21.5, 0.8),
    (23.5, 0.3),
    (24.0, 0.15),
];

/// Heating demand through the day (fraction of the boiler's rate): night setback, a morning
/// boost, comfort, an evening boost.
const THERMOSTAT: &[(f64, f64)] = &[
    (0.0, 0.12),
    (6.0, 0.12),
    (6.5, 1.5),
    (8.0, 1.2),
    (9.0, 0.5),
    (16.5, 0.6),
    (17.5, 1.2),
    (20.0, 0.9),
    (22.5, 0.6),
    (23.0, 0.12),
    (24.0, 0.12),
];

/// When an appliance is likely to be switched on.
#[derive(Debug, Clone, Copy)]
enum When {
    /// Whenever people are active.
    Active,
    /// 06:30 to 08:30.
    Morning,
    /// Dinner, 17:00 to 19:30.
    Meal,
    /// 09:00 to 20:00.
    Day,
    /// 19:30 to 23:00.
    Evening,
}

impl When {
    fn weight(self, hour: f64, activity: f64) -> f64 {
        let within = |a: f64, b: f64| if hour >= a && hour < b { 1.0 } else { 0.0 };
        match self {
            When::Active => activity,
            When::Morning => within(6.5, 8.5),
            When::Meal => within(17.0, 19.5),
            When::Day => within(9.0, 20.0),
            When::Evening => within(19.5, 23.0),
        }
    }
}

/// An appliance: its program as `(watts, seconds)` stages, its phase and how often it runs.
struct Appliance {
    stages: &'static [(u32, u32)],
    phase: usize,
    per_hour: f64,
    when: When,
    /// Only in households cooking electrically.
    induction: bool,
}

const APPLIANCES: &[Appliance] = &[
    // kettle
    Appliance {
        stages: &[(2200, 180)],
        phase: 0,
        per_hour: 0.8,
        when: When::Active,
        induction: false,
    },
    // microwave
    Appliance {
        stages: &[(1050, 150)],
        phase: 1,
        per_hour: 0.4,
        when: When::Active,
        induction: false,
    },
    // induction hob
    Appliance {
        stages: &[(3100, 600), (1400, 1200)],
        phase: 2,
        per_hour: 0.9,
        when: When::Meal,
        induction: true,
    },
    // oven
    Appliance {
        stages: &[(2400, 900), (1100, 1800)],
        phase: 2,
        per_hour: 0.12,
        when: When::Meal,
        induction: false,
    },
    // washing machine: heating, then washing and spinning
    Appliance {
        stages: &[(2050, 900), (280, 3000), (450, 600)],
        phase: 1,
        per_hour: 0.06,
        when: When::Day,
        induction: false,
    },
    // dishwasher
    Appliance {
        stages: &[(1900, 1200), (120, 2400), (1900, 900)],
        phase: 0,
        per_hour: 0.3,
        when: When::Evening,
        induction: false,
    },
    // vacuum cleaner
    Appliance {
        stages: &[(1350, 700)],
        phase: 0,
        per_hour: 0.05,
        when: When::Day,
        induction: false,
    },
    // hair dryer
    Appliance {
        stages: &[(1700, 300)],
        phase: 1,
        per_hour: 0.5,
        when: When::Morning,
        induction: false,
    },
    // television and game console
    Appliance {
        stages: &[(160, 7200)],
        phase: 2,
        per_hour: 0.35,
        when: When::Evening,
        induction: false,
    },
];

/// A gas draw: `(millilitres per hour, seconds)`, how often and when.
struct GasUse {
    ml_per_hour: u64,
    seconds: i64,
    per_hour: f64,
    when: When,
    /// Only in households cooking on gas.
    gas_hob: bool,
}

const GAS_USES: &[GasUse] = &[
    // morning shower
    GasUse {
        ml_per_hour: 1_900_000,
        seconds: 480,
        per_hour: 1.2,
        when: When::Morning,
        gas_hob: false,
    },
    // evening shower or bath
    GasUse {
        ml_per_hour: 1_700_000,
        seconds: 600,
        per_hour: 0.25,
        when: When::Evening,
        gas_hob: false,
    },
    // hot tap
    GasUse {
        ml_per_hour: 1_200_000,
        seconds: 60,
        per_hour: 1.5,
        when: When::Active,
        gas_hob: false,
    },
    // cooking on gas
    GasUse {
        ml_per_hour: 450_000,
        seconds: 1800,
        per_hour: 0.9,
        when: When::Meal,
        gas_hob: true,
    },
];

/// The household, fixed by the seed.
#[derive(Debug, Clone)]
struct House {
    seed: u64,
    /// Always-on load per phase (router, standby), W.
    standby_w: [f64; 3],
    /// Lights, computers and small things at full activity, W.
    misc_w: f64,
    /// The household's clock runs this many hours later than the profile.
    shift_h: f64,
    fridge_offset: i64,
    freezer_offset: i64,
    /// Solar peak power, kW.
    solar_kwp: f64,
    induction: bool,
    /// Boiler rate at full heating demand in mid-winter, m3/h.
    heat_m3h: f64,
    /// Voltage per phase with no load, V.
    volt: [f64; 3],
    short_failures: u32,
    sags: [u32; 3],
    swells: [u32; 3],
}

impl House {
    fn new(seed: u64) -> House {
        let mut rng = Rng(seed ^ 0x686F_7573_6568_6F6C); // "househol"
        let mut count = |max: u64| (rng.next_u64() % (max + 1)) as u32;
        let short_failures = count(9);
        let sags = [count(3), count(3), count(2)];
        let swells = [count(1), count(1), count(1)];
        House {
            seed,
            short_failures,
            sags,
            swells,
            standby_w: [
                rng.range(25.0, 70.0),
                rng.range(20.0, 50.0),
                rng.range(15.0, 40.0),
            ],
            misc_w: rng.range(200.0, 520.0),
            shift_h: rng.range(-0.75, 0.75),
            fridge_offset: (rng.next_u64() % 2700) as i64,
            freezer_offset: (rng.next_u64() % 3600) as i64,
            solar_kwp: rng.range(2.2, 4.8),
            induction: rng.unit() < 0.6,
            heat_m3h: rng.range(0.45, 0.85),
            volt: [
                rng.range(228.0, 234.0),
                rng.range(228.0, 234.0),
                rng.range(228.0, 234.0),
            ],
        }
    }

    /// How sunny a day is, 0.15 (overcast) to 1 (clear), decided by the seed and the day.
    fn clearness(&self, day: i64) -> f64 {
        let u = (mix(self.seed ^ (day as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 11) as f64
            / (1u64 << 53) as f64;
        0.15 + 0.85 * u.sqrt()
    }
}

/// Values that change once a day, cached.
#[derive(Debug, Clone, Copy)]
struct Day {
    /// Local days since 1970-01-01.
    number: i64,
    weekend: bool,
    /// Hours of daylight.
    daylight_h: f64,
    /// Solar output at noon relative to a clear June day.
    solar_peak: f64,
    /// Heating demand, 0 in summer to 1 in mid-winter.
    heating: f64,
    clearness: f64,
}

/// An electrical load running over `[from, until)`.
#[derive(Debug, Clone, Copy)]
struct Running {
    from: i64,
    until: i64,
    watts: u32,
    phase: usize,
}

/// A gas draw over `[from, until)`.
#[derive(Debug, Clone, Copy)]
struct Drawing {
    until: i64,
    ml_per_hour: u64,
}

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

/// A gas reading as the meter captured it.
#[derive(Debug, Clone, Copy)]
struct GasCapture {
    /// `YYMMDDhhmmssS|W` of the capture.
    text: [u8; 13],
    litres: u64,
}

impl GasCapture {
    fn new(tz: &TimeZone, at: i64, litres: u64) -> GasCapture {
        let text = match Timestamp::from_second(at) {
            Ok(ts) => {
                let offset = tz.to_offset(ts);
                let mut text = Vec::with_capacity(13);
                push_time(
                    &mut text,
                    local_fields(offset.to_datetime(ts)),
                    offset.seconds() == 7200,
                );
                text.try_into().unwrap_or(*b"000101000001W")
            }
            // Only before the year -9999: the meter's "never" placeholder instead.
            Err(_) => *b"000101000001W",
        };
        GasCapture { text, litres }
    }
}

/// `YY`, month, day, hour, minute, second of a civil time.
fn local_fields(local: jiff::civil::DateTime) -> [u8; 6] {
    [
        local.year().rem_euclid(100) as u8,
        local.month() as u8,
        local.day() as u8,
        local.hour() as u8,
        local.minute() as u8,
        local.second() as u8,
    ]
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

    /// Advances the household over the `dt` seconds ending at `t` and books the energy.
    fn step(&mut self, t: i64, ts: Timestamp, dt: i64) {
        if t >= self.offset_until {
            self.offset = self.tz.to_offset(ts);
            self.offset_until = self
                .tz
                .following(ts)
                .map(|tr| tr.timestamp().as_second())
                .find(|&s| s > t)
                .unwrap_or(i64::MAX);
        }
        let local = self.offset.to_datetime(ts);
        let local_day = (t + i64::from(self.offset.seconds())).div_euclid(86_400);
        let day = match self.day {
            Some(day) if day.number == local_day => day,
            _ => {
                let doy = f64::from(local.date().day_of_year());
                // 1 at the June solstice, -1 at the December one.
                let summer = cos_turns((doy - 172.0) / 365.25);
                let day = Day {
                    number: local_day,
                    weekend: matches!(local.weekday(), Weekday::Saturday | Weekday::Sunday),
                    daylight_h: 12.0 + 4.4 * summer,
                    solar_peak: 0.6 + 0.4 * summer,
                    heating: (0.4 - 0.6 * summer).clamp(0.0, 1.0),
                    clearness: self.house.clearness(local_day),
                };
                self.day = Some(day);
                day
            }
        };
        let hour = f64::from(local.hour())
            + f64::from(local.minute()) / 60.0
            + f64::from(local.second()) / 3600.0;
        let house_hour = hour - self.house.shift_h;
        let activity = profile(if day.weekend { WEEKEND } else { WEEKDAY }, house_hour);
        let dtf = dt as f64;

        // Sun: a bell between sunrise and sunset around solar noon (11:40 UTC in the
        // Netherlands), scaled by season and clouds.
        let utc_hour = t.rem_euclid(86_400) as f64 / 3600.0;
        let x = (utc_hour - (11.67 - day.daylight_h / 2.0)) / day.daylight_h;
        let bell = if (0.0..=1.0).contains(&x) {
            let q = 4.0 * x * (1.0 - x);
            q * q.sqrt()
        } else {
            0.0
        };
        let fast = 0.02 * dtf.min(60.0).sqrt();
        self.cloud_walk = (self.cloud_walk * (1.0 - 0.01 * dtf.min(50.0))
            + fast * self.rng.noise())
        .clamp(-0.5, 0.5);
        let cloud = (day.clearness + self.cloud_walk * (1.0 - day.clearness * 0.6)).clamp(0.1, 1.0);
        let solar_w = 1000.0 * self.house.solar_kwp * 0.85 * day.solar_peak * bell * cloud;

        // Household load per phase.
        let mut load = self.house.standby_w;
        if (t + self.house.fridge_offset).rem_euclid(2700) < 900 {
            load[1] += 95.0;
        }
        if (t + self.house.freezer_offset).rem_euclid(3600) < 1300 {
            load[2] += 80.0;
        }
        let dark = if bell < 0.05 { 1.0 } else { 0.3 };
        let misc = self.house.misc_w * activity * (0.6 + 0.4 * dark);
        self.load_walk = (self.load_walk * (1.0 - 0.002 * dtf.min(500.0))
            + 6.0 * dtf.min(60.0).sqrt() * self.rng.noise())
        .clamp(-0.3 * self.house.misc_w, 0.3 * self.house.misc_w);
        let misc = (misc + self.load_walk * activity.max(0.2)).max(0.0);
        load[0] += misc * 0.45;
        load[1] += misc * 0.3;
        load[2] += misc * 0.25;

        self.running.retain(|r| r.until > t);
        for (i, appliance) in APPLIANCES.iter().enumerate() {
            let draw = self.rng.unit();
            if (appliance.induction && !self.house.induction) || self.busy_until[i] > t {
                continue;
            }
            let p = appliance.per_hour * appliance.when.weight(house_hour, activity) * dtf / 3600.0;
            if draw < p {
                let mut from = t;
                for &(watts, seconds) in appliance.stages {
                    let until = from + i64::from(seconds);
                    self.running.push(Running {
                        from,
                        until,
                        watts,
                        phase: appliance.phase,
                    });
                    from = until;
                }
                self.busy_until[i] = from;
            }
        }
        for r in &self.running {
            if r.from <= t {
                load[r.phase] += f64::from(r.watts);
            }
        }
        let load_w = load.map(|w| w.round() as i64);
        // A single-phase inverter on L1.
        let solar = [solar_w.round() as i64, 0, 0];
        let net: [i64; 3] = std::array::from_fn(|p| load_w[p] - solar[p]);
        let total: i64 = net.iter().sum();
        let import_w = total.max(0) as u64;
        let export_w = (-total).max(0) as u64;

        let tariff = if day.weekend || !(7..23).contains(&local.hour()) {
            1
        } else {
            2
        };
        let register = usize::from(tariff - 1);
        let dtu = dt as u64;
        self.import_j[register] += import_w * dtu;
        self.export_j[register] += export_w * dtu;

        // Voltages sag under load and rise with export, plus a slow wander.
        let mut decivolts = [0; 3];
        let mut amps = [0; 3];
        for p in 0..3 {
            self.voltage_walk[p] = (self.voltage_walk[p] * (1.0 - 0.001 * dtf.min(500.0))
                + 0.04 * dtf.min(60.0).sqrt() * self.rng.noise())
            .clamp(-2.5, 2.5);
            let volts = self.house.volt[p] - 0.0012 * net[p].max(0) as f64
                + 0.0016 * (-net[p]).max(0) as f64
                - 2.0 * activity
                + self.voltage_walk[p];
            let volts = volts.clamp(207.0, 253.0);
            decivolts[p] = (volts * 10.0).round() as u64;
            amps[p] = (net[p].unsigned_abs() as f64 / volts).round() as u64;
        }

        // Gas: heating by the thermostat's schedule and the season, plus hot water.
        if self.gas_hex.is_some() {
            let heat = self.house.heat_m3h
                * day.heating
                * profile(THERMOSTAT, house_hour)
                * (1.0 + 0.15 * self.gas_rng.noise()).max(0.0);
            let mut ml_per_hour = (heat * 1e6).round() as u64;
            self.drawing.retain(|d| d.until > t);
            for (i, gas_use) in GAS_USES.iter().enumerate() {
                let draw = self.gas_rng.unit();
                if (gas_use.gas_hob && self.house.induction) || self.gas_busy_until[i] > t {
                    continue;
                }
                let p = gas_use.per_hour * gas_use.when.weight(house_hour, activity) * dtf / 3600.0;
                if draw < p {
                    let until = t + gas_use.seconds;
                    self.drawing.push(Drawing {
                        until,
                        ml_per_hour: gas_use.ml_per_hour,
                    });
                    self.gas_busy_until[i] = until;
                }
            }
            ml_per_hour += self.drawing.iter().map(|d| d.ml_per_hour).sum::<u64>();
            self.gas_acc += ml_per_hour * dtu;
            if t.rem_euclid(self.style.gas_capture_seconds()) == 0 {
                self.gas_capture = GasCapture::new(&self.tz, t, self.gas_acc / 3600 / 1000);
            }
        }

        self.now = Measured {
            local: local_fields(local),
            summer: self.offset.seconds() == 7200,
            tariff,
            import_w,
            export_w,
            phase_import_w: net.map(|w| w.max(0) as u64),
            phase_export_w: net.map(|w| (-w).max(0) as u64),
            decivolts,
            amps,
        };
    }

    /// Writes the telegram for the current step.
    fn write(&self, out: &mut Vec<u8>) {
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

/// Upper-case hex of `bytes`, as meters encode identifiers.
fn hex(bytes: &[u8]) -> Vec<u8> {
    bytes
        .iter()
        .flat_map(|b| [b >> 4, b & 0xF])
        .map(|nibble| b"0123456789ABCDEF"[usize::from(nibble)])
        .collect()
}

/// `value` in decimal, zero-padded to at least `width` digits (at most 20).
fn push_uint(out: &mut Vec<u8>, value: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = value;
    let mut first = digits.len();
    while n > 0 {
        first -= 1;
        digits[first] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let first = first.min(digits.len() - width.clamp(1, digits.len()));
    out.extend_from_slice(&digits[first..]);
}

/// `value` thousandths (or tenths, per `decimals`) as `int.frac` with `int` zero-padded.
fn push_fixed(out: &mut Vec<u8>, value: u64, int_width: usize, decimals: u32) {
    let scale = 10u64.pow(decimals);
    push_uint(out, value / scale, int_width);
    out.push(b'.');
    push_uint(out, value % scale, decimals as usize);
}

/// Watts as `kW` with 3 decimals, `99.999` at most as the format allows.
fn push_kw(out: &mut Vec<u8>, watts: u64) {
    push_fixed(out, watts.min(99_999), 2, 3);
    out.extend_from_slice(b"*kW");
}

/// `YYMMDDhhmmss` and the `S`/`W` flag.
fn push_time(out: &mut Vec<u8>, fields: [u8; 6], summer: bool) {
    let mut text = [if summer { b'S' } else { b'W' }; 13];
    for (pair, field) in text.chunks_exact_mut(2).zip(fields) {
        pair[0] = b'0' + field / 10;
        pair[1] = b'0' + field % 10;
    }
    out.extend_from_slice(&text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cos_turns_is_close_to_cos() {
        for i in -100..=100 {
            let turns = f64::from(i) / 37.0;
            let exact = (turns * std::f64::consts::TAU).cos();
            assert!((cos_turns(turns) - exact).abs() < 0.002, "{turns}");
        }
    }

    #[test]
    fn number_formats_are_fixed_width() {
        let mut out = Vec::new();
        push_fixed(&mut out, 123_456, 6, 3);
        out.push(b' ');
        push_kw(&mut out, 1193);
        out.push(b' ');
        push_fixed(&mut out, 2298, 3, 1);
        out.push(b' ');
        push_uint(&mut out, 2, 4);
        assert_eq!(out, b"000123.456 01.193*kW 229.8 0002");
    }

    #[test]
    fn profiles_cover_the_day() {
        for table in [WEEKDAY, WEEKEND, THERMOSTAT] {
            assert_eq!(table.first().map(|p| p.0), Some(0.0));
            assert_eq!(table.last().map(|p| p.0), Some(24.0));
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert!((profile(WEEKDAY, 7.25) - 0.55).abs() < 1e-9);
    }
}
