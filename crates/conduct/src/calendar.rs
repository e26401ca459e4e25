//! Where boundaries fall. Quarter hours and hours are fixed steps of UTC (the Netherlands is a
//! whole number of hours from UTC); days and billing periods start at local midnight in
//! Europe/Amsterdam, so DST days have 23 and 25 hours.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// How often billing readings fall: the 2012 code's bi-monthly periodic overview, or monthly.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum BillingCadence {
    /// 1 January, March, May, July, September, November.
    #[default]
    BiMonthly,
    /// The 1st of every month.
    Monthly,
}

/// Local midnights for daily and billing boundaries.
#[derive(Debug, Clone)]
pub struct Calendar {
    zone: TimeZone,
    billing: BillingCadence,
}

/// A half-open span `[start, end)` of Unix seconds between two boundaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Period {
    pub(crate) start: i64,
    pub(crate) end: i64,
}

impl Period {
    pub(crate) fn contains(self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

impl Calendar {
    /// The Dutch calendar: Europe/Amsterdam, from the time-zone database compiled into the
    /// binary (no OS tzdata needed).
    pub fn netherlands(billing: BillingCadence) -> Calendar {
        // The bundled database always has Europe/Amsterdam; UTC+1 is a last resort.
        let zone = TimeZone::get("Europe/Amsterdam")
            .unwrap_or_else(|_| TimeZone::fixed(jiff::tz::offset(1)));
        Calendar { zone, billing }
    }

    /// The time zone of daily and billing boundaries.
    pub fn zone(&self) -> &TimeZone {
        &self.zone
    }

    fn local_date(&self, t: i64) -> Option<Date> {
        Some(
            Timestamp::from_second(t)
                .ok()?
                .to_zoned_datetime(self.zone.clone())
                .date(),
        )
    }

    fn midnight(&self, date: Date) -> Option<i64> {
        Some(
            date.to_zoned_datetime(self.zone.clone())
                .ok()?
                .timestamp()
                .as_second(),
        )
    }

    /// The local day holding `t`.
    pub(crate) fn day(&self, t: i64) -> Option<Period> {
        let date = self.local_date(t)?;
        Some(Period {
            start: self.midnight(date)?,
            end: self.midnight(date.tomorrow().ok()?)?,
        })
    }

    /// The billing period holding `t`.
    pub(crate) fn billing_period(&self, t: i64) -> Option<Period> {
        let date = self.local_date(t)?;
        let (first_month, months) = match self.billing {
            BillingCadence::Monthly => (date.month(), 1),
            BillingCadence::BiMonthly => (date.month() - (date.month() - 1) % 2, 2),
        };
        let start = Date::new(date.year(), first_month, 1).ok()?;
        let end = start.checked_add(months.months()).ok()?;
        Some(Period {
            start: self.midnight(start)?,
            end: self.midnight(end)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(t: i64) -> String {
        Timestamp::from_second(t).unwrap().to_string()
    }

    fn at(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_second()
    }

    #[test]
    fn dst_days_have_23_and_25_hours() {
        let calendar = Calendar::netherlands(BillingCadence::BiMonthly);
        let spring = calendar.day(at("2026-03-29T12:00:00Z")).unwrap();
        assert_eq!(
            (utc(spring.start), utc(spring.end)),
            ("2026-03-28T23:00:00Z".into(), "2026-03-29T22:00:00Z".into())
        );
        assert_eq!(spring.end - spring.start, 23 * 3600);
        let autumn = calendar.day(at("2026-10-25T12:00:00Z")).unwrap();
        assert_eq!(autumn.end - autumn.start, 25 * 3600);
    }

    #[test]
    fn billing_periods_start_on_odd_months_or_every_month() {
        let bimonthly = Calendar::netherlands(BillingCadence::BiMonthly);
        let p = bimonthly
            .billing_period(at("2026-04-15T10:00:00Z"))
            .unwrap();
        assert_eq!(
            (utc(p.start), utc(p.end)),
            ("2026-02-28T23:00:00Z".into(), "2026-04-30T22:00:00Z".into())
        );
        let monthly = Calendar::netherlands(BillingCadence::Monthly);
        let p = monthly.billing_period(at("2026-04-15T10:00:00Z")).unwrap();
        assert_eq!(
            (utc(p.start), utc(p.end)),
            ("2026-03-31T22:00:00Z".into(), "2026-04-30T22:00:00Z".into())
        );
    }
}
