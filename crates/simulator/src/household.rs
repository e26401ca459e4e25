//! The household a seed decides, and the shape of its days: how active it is by the hour,
//! when it heats, how sunny and how long a day is. Pure arithmetic, portable across platforms.

use crate::rng::{Rng, mix};

/// A portable cosine of `2π·turns` (Bhaskara I's rational approximation, error below 0.002):
/// plenty for seasons, and free of libm differences between platforms.
pub(crate) fn cos_turns(turns: f64) -> f64 {
    let d = (turns - turns.round()).abs(); // distance to the nearest whole turn, 0..=0.5
    let bhaskara = |d: f64| (1.0 - 16.0 * d * d) / (1.0 + 4.0 * d * d); // cos(2πd), |d| <= 1/4
    if d <= 0.25 {
        bhaskara(d)
    } else {
        -bhaskara(0.5 - d)
    }
}

/// Linear interpolation through `(hour, value)` points spanning 0 to 24.
pub(crate) fn profile(points: &[(f64, f64)], hour: f64) -> f64 {
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
pub(crate) const WEEKDAY: &[(f64, f64)] = &[
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
pub(crate) const WEEKEND: &[(f64, f64)] = &[
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
pub(crate) const THERMOSTAT: &[(f64, f64)] = &[
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
pub(crate) enum When {
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
    pub(crate) fn weight(self, hour: f64, activity: f64) -> f64 {
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

/// The household, fixed by the seed.
#[derive(Debug, Clone)]
pub(crate) struct House {
    pub(crate) seed: u64,
    /// Always-on load per phase (router, standby), W.
    pub(crate) standby_w: [f64; 3],
    /// Lights, computers and small things at full activity, W.
    pub(crate) misc_w: f64,
    /// The household's clock runs this many hours later than the profile.
    pub(crate) shift_h: f64,
    pub(crate) fridge_offset: i64,
    pub(crate) freezer_offset: i64,
    /// Solar peak power, kW.
    pub(crate) solar_kwp: f64,
    pub(crate) induction: bool,
    /// Boiler rate at full heating demand in mid-winter, m3/h.
    pub(crate) heat_m3h: f64,
    /// Voltage per phase with no load, V.
    pub(crate) volt: [f64; 3],
    pub(crate) short_failures: u32,
    pub(crate) sags: [u32; 3],
    pub(crate) swells: [u32; 3],
}

impl House {
    pub(crate) fn new(seed: u64) -> House {
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
    pub(crate) fn clearness(&self, day: i64) -> f64 {
        let u = (mix(self.seed ^ (day as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 11) as f64
            / (1u64 << 53) as f64;
        0.15 + 0.85 * u.sqrt()
    }
}

/// Values that change once a day, cached.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Day {
    /// Local days since 1970-01-01.
    pub(crate) number: i64,
    pub(crate) weekend: bool,
    /// Hours of daylight.
    pub(crate) daylight_h: f64,
    /// Solar output at noon relative to a clear June day.
    pub(crate) solar_peak: f64,
    /// Heating demand, 0 in summer to 1 in mid-winter.
    pub(crate) heating: f64,
    pub(crate) clearness: f64,
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
    fn profiles_cover_the_day() {
        for table in [WEEKDAY, WEEKEND, THERMOSTAT] {
            assert_eq!(table.first().map(|p| p.0), Some(0.0));
            assert_eq!(table.last().map(|p| p.0), Some(24.0));
            assert!(table.windows(2).all(|w| w[0].0 < w[1].0));
        }
        assert!((profile(WEEKDAY, 7.25) - 0.55).abs() < 1e-9);
    }
}
