//! The physical model of one step: sun and clouds, the household's load and appliances per
//! phase, voltages and currents, tariffs and registers, and the gas meter.

use jiff::Timestamp;
use jiff::civil::Weekday;

use super::{Measured, Simulator};
use crate::appliances::{APPLIANCES, Running};
use crate::format::local_fields;
use crate::gas::{Drawing, GAS_USES, GasCapture};
use crate::household::{Day, THERMOSTAT, WEEKDAY, WEEKEND, cos_turns, profile};

impl Simulator {
    /// Advances the household over the `dt` seconds ending at `t` and books the energy.
    pub(super) fn step(&mut self, t: i64, ts: Timestamp, dt: i64) {
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
}
