//! The electrical appliances a household switches on: their programs, phases, and how often
//! and when they run.

use crate::household::When;

/// An appliance: its program as `(watts, seconds)` stages, its phase and how often it runs.
pub(crate) struct Appliance {
    pub(crate) stages: &'static [(u32, u32)],
    pub(crate) phase: usize,
    pub(crate) per_hour: f64,
    pub(crate) when: When,
    /// Only in households cooking electrically.
    pub(crate) induction: bool,
}

pub(crate) const APPLIANCES: &[Appliance] = &[
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

/// An electrical load running over `[from, until)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Running {
    pub(crate) from: i64,
    pub(crate) until: i64,
    pub(crate) watts: u32,
    pub(crate) phase: usize,
}
