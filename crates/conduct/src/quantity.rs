//! What a record's values measure: one typed list that the record JSON and every sink
//! name, unit and classify values by.

use crate::record::Kind;

/// A unit a value is given in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// kWh.
    KilowattHour,
    /// W.
    Watt,
    /// V.
    Volt,
    /// A.
    Ampere,
    /// m³.
    CubicMetre,
    /// GJ.
    Gigajoule,
}

impl Unit {
    /// The unit's symbol, as SI writes it (`m³`, not the telegram's `m3`).
    pub const fn symbol(self) -> &'static str {
        match self {
            Unit::KilowattHour => "kWh",
            Unit::Watt => "W",
            Unit::Volt => "V",
            Unit::Ampere => "A",
            Unit::CubicMetre => "m³",
            Unit::Gigajoule => "GJ",
        }
    }
}

/// Declares [`Quantity`] from one row per quantity (its record JSON name, the kind of meter
/// that measures it, its unit, and whether it is a `register` or `live`-only), with
/// [`Quantity::ALL`] and a `const fn` per column, so that no two lists can disagree.
macro_rules! quantities {
    ($(
        $(#[$doc:meta])*
        $quantity:ident = $name:literal, $kind:ident, $unit:expr, $register:ident;
    )*) => {
        /// One value a record can carry, in the order of the record JSON's `values` object.
        ///
        /// Registers (cumulative counters, which boundary records carry) are the electricity
        /// energy registers and the M-Bus counters; the rest are live-only: instantaneous
        /// power, voltage and current, the tariff in force and the power-failure counts.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Quantity {
            $($(#[$doc])* $quantity,)*
        }

        impl Quantity {
            /// Every quantity, in the record JSON's order.
            pub const ALL: [Quantity; [$($name),*].len()] = [$(Quantity::$quantity),*];

            /// The field name in the record JSON's `values` object (and in storage and line
            /// protocol): snake_case, the unit last. Unique within a [`Kind`]: gas and water
            /// both read `volume_m3`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Quantity::$quantity => $name,)*
                }
            }

            /// The name as a record JSON key, quoted and with its colon: names are plain
            /// snake_case, which JSON needs no escaping for (tested).
            pub(crate) const fn json_key(self) -> &'static str {
                match self {
                    $(Quantity::$quantity => concat!("\"", $name, "\":"),)*
                }
            }

            /// The kind of meter that measures it.
            pub const fn kind(self) -> Kind {
                match self {
                    $(Quantity::$quantity => Kind::$kind,)*
                }
            }

            /// The unit, or `None` for a code or count.
            pub const fn unit(self) -> Option<Unit> {
                match self {
                    $(Quantity::$quantity => $unit,)*
                }
            }

            /// Whether it is a register: a cumulative counter that boundary records carry
            /// (billing, daily, quarter hour). Every other quantity is live-only.
            pub const fn is_register(self) -> bool {
                match self {
                    $(Quantity::$quantity => quantities!(@$register),)*
                }
            }
        }
    };
    (@register) => { true };
    (@live) => { false };
}

use Unit::{Ampere, CubicMetre, Gigajoule, KilowattHour, Volt, Watt};

quantities! {
    /// Energy drawn, total (`1-0:1.8.0`).
    EnergyImport = "energy_import_kwh", Electricity, Some(KilowattHour), register;
    /// Energy drawn at tariff 1 (`1-0:1.8.1`).
    EnergyImportT1 = "energy_import_t1_kwh", Electricity, Some(KilowattHour), register;
    /// Energy drawn at tariff 2 (`1-0:1.8.2`).
    EnergyImportT2 = "energy_import_t2_kwh", Electricity, Some(KilowattHour), register;
    /// Energy delivered back, total (`1-0:2.8.0`).
    EnergyExport = "energy_export_kwh", Electricity, Some(KilowattHour), register;
    /// Energy delivered back at tariff 1 (`1-0:2.8.1`).
    EnergyExportT1 = "energy_export_t1_kwh", Electricity, Some(KilowattHour), register;
    /// Energy delivered back at tariff 2 (`1-0:2.8.2`).
    EnergyExportT2 = "energy_export_t2_kwh", Electricity, Some(KilowattHour), register;
    /// Power drawn.
    PowerImport = "power_import_w", Electricity, Some(Watt), live;
    /// Power delivered back.
    PowerExport = "power_export_w", Electricity, Some(Watt), live;
    /// Power drawn on L1.
    PowerImportL1 = "power_import_l1_w", Electricity, Some(Watt), live;
    /// Power delivered back on L1.
    PowerExportL1 = "power_export_l1_w", Electricity, Some(Watt), live;
    /// Voltage of L1.
    VoltageL1 = "voltage_l1_v", Electricity, Some(Volt), live;
    /// Current on L1.
    CurrentL1 = "current_l1_a", Electricity, Some(Ampere), live;
    /// Power drawn on L2.
    PowerImportL2 = "power_import_l2_w", Electricity, Some(Watt), live;
    /// Power delivered back on L2.
    PowerExportL2 = "power_export_l2_w", Electricity, Some(Watt), live;
    /// Voltage of L2.
    VoltageL2 = "voltage_l2_v", Electricity, Some(Volt), live;
    /// Current on L2.
    CurrentL2 = "current_l2_a", Electricity, Some(Ampere), live;
    /// Power drawn on L3.
    PowerImportL3 = "power_import_l3_w", Electricity, Some(Watt), live;
    /// Power delivered back on L3.
    PowerExportL3 = "power_export_l3_w", Electricity, Some(Watt), live;
    /// Voltage of L3.
    VoltageL3 = "voltage_l3_v", Electricity, Some(Volt), live;
    /// Current on L3.
    CurrentL3 = "current_l3_a", Electricity, Some(Ampere), live;
    /// The tariff in force: a code.
    Tariff = "tariff", Electricity, None, live;
    /// Power failures so far: a count.
    PowerFailures = "power_failures", Electricity, None, live;
    /// Long power failures so far: a count.
    LongPowerFailures = "long_power_failures", Electricity, None, live;
    /// An M-Bus gas meter's counter.
    GasVolume = "volume_m3", Gas, Some(CubicMetre), register;
    /// An M-Bus water meter's counter.
    WaterVolume = "volume_m3", Water, Some(CubicMetre), register;
    /// An M-Bus heat meter's counter.
    HeatEnergy = "energy_gj", Heat, Some(Gigajoule), register;
}

impl Quantity {
    /// The counter of an M-Bus meter of `kind` (all an M-Bus record carries), or `None` for
    /// electricity.
    pub const fn mbus(kind: Kind) -> Option<Quantity> {
        match kind {
            Kind::Electricity => None,
            Kind::Gas => Some(Quantity::GasVolume),
            Kind::Water => Some(Quantity::WaterVolume),
            Kind::Heat => Some(Quantity::HeatEnergy),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn names_are_unique_within_a_kind_and_end_in_their_unit() {
        let mut seen = HashSet::new();
        for quantity in Quantity::ALL {
            let name = quantity.name();
            assert!(seen.insert((quantity.kind(), name)), "{name} twice");
            let suffix = match quantity.unit() {
                Some(unit) => unit.symbol().replace('³', "3").to_lowercase(),
                None => continue,
            };
            assert!(name.ends_with(&format!("_{suffix}")), "{name}");
        }
        assert_eq!(seen.len(), Quantity::ALL.len());
    }

    #[test]
    fn json_keys_are_the_names_as_json_writes_them() {
        for quantity in Quantity::ALL {
            let key = serde_json::to_string(quantity.name()).unwrap() + ":";
            assert_eq!(quantity.json_key(), key);
        }
    }

    #[test]
    fn an_mbus_kind_has_one_counter_and_it_is_a_register() {
        for kind in [Kind::Electricity, Kind::Gas, Kind::Water, Kind::Heat] {
            let counters: Vec<_> = Quantity::ALL
                .into_iter()
                .filter(|q| q.kind() == kind && kind != Kind::Electricity)
                .collect();
            assert_eq!(
                Quantity::mbus(kind).into_iter().collect::<Vec<_>>(),
                counters
            );
            assert!(counters.iter().all(|q| q.is_register()));
        }
    }

    #[test]
    fn registers_are_the_energy_and_volume_counters() {
        let registers: Vec<_> = Quantity::ALL
            .into_iter()
            .filter(|q| q.is_register())
            .map(Quantity::name)
            .collect();
        assert_eq!(
            registers,
            [
                "energy_import_kwh",
                "energy_import_t1_kwh",
                "energy_import_t2_kwh",
                "energy_export_kwh",
                "energy_export_t1_kwh",
                "energy_export_t2_kwh",
                "volume_m3",
                "volume_m3",
                "energy_gj",
            ]
        );
    }
}
