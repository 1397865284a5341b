//! The measures and dimensions of `metrics` (DESIGN.md §6), defined once:
//! which events each measure counts or sums, and what. The query binder turns a definition into
//! an expression over `events`; reprocessing totals (and rollups) compute
//! them from events. (The test oracle keeps its own definitions on
//! purpose: it must share no code with what it checks.)

use crate::event::{ColumnId, Event, EventType, InvalidReason};

/// A measure of `metrics`: read with `sum()`, except `users`, a distinct
/// count read with `approx_count_distinct()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Measure {
    Impressions,
    Clicks,
    Conversions,
    InvalidImpressions,
    InvalidClicks,
    BillableImpressions,
    BillableClicks,
    AttributedConversions,
    /// Cost of billable (valid) impressions and clicks.
    SpendMicros,
    /// Value of attributed conversions.
    ConversionValueMicros,
    /// Distinct `user_key`s.
    Users,
}

/// Which events a measure takes, by their validity or attribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    All,
    /// `invalid_reason` is empty.
    Valid,
    /// `invalid_reason` is not empty.
    Invalid,
    Attributed,
}

/// What a measure adds up for each event it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    One,
    CostMicros,
    ValueMicros,
    /// Not a sum: distinct `user_key`s.
    DistinctUsers,
}

/// A measure as events define it: `value` summed over the events of
/// `types` that `only` admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Definition {
    pub types: &'static [EventType],
    pub only: Only,
    pub value: Value,
}

impl Measure {
    pub const ALL: [Measure; 11] = [
        Measure::Impressions,
        Measure::Clicks,
        Measure::Conversions,
        Measure::InvalidImpressions,
        Measure::InvalidClicks,
        Measure::BillableImpressions,
        Measure::BillableClicks,
        Measure::AttributedConversions,
        Measure::SpendMicros,
        Measure::ConversionValueMicros,
        Measure::Users,
    ];

    /// Its column name in `metrics`.
    pub fn name(self) -> &'static str {
        match self {
            Measure::Impressions => "impressions",
            Measure::Clicks => "clicks",
            Measure::Conversions => "conversions",
            Measure::InvalidImpressions => "invalid_impressions",
            Measure::InvalidClicks => "invalid_clicks",
            Measure::BillableImpressions => "billable_impressions",
            Measure::BillableClicks => "billable_clicks",
            Measure::AttributedConversions => "attributed_conversions",
            Measure::SpendMicros => "spend_micros",
            Measure::ConversionValueMicros => "conversion_value_micros",
            Measure::Users => "users",
        }
    }

    pub fn parse(name: &str) -> Option<Measure> {
        Measure::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn definition(self) -> Definition {
        use EventType::{Click, Conversion, Impression};
        let (types, only, value): (&'static [EventType], Only, Value) = match self {
            Measure::Impressions => (&[Impression], Only::All, Value::One),
            Measure::Clicks => (&[Click], Only::All, Value::One),
            Measure::Conversions => (&[Conversion], Only::All, Value::One),
            Measure::InvalidImpressions => (&[Impression], Only::Invalid, Value::One),
            Measure::InvalidClicks => (&[Click], Only::Invalid, Value::One),
            Measure::BillableImpressions => (&[Impression], Only::Valid, Value::One),
            Measure::BillableClicks => (&[Click], Only::Valid, Value::One),
            Measure::AttributedConversions => (&[Conversion], Only::Attributed, Value::One),
            Measure::SpendMicros => (&[Impression, Click], Only::Valid, Value::CostMicros),
            Measure::ConversionValueMicros => (&[Conversion], Only::Attributed, Value::ValueMicros),
            Measure::Users => (&[Impression, Click, Conversion], Only::All, Value::DistinctUsers),
        };
        Definition { types, only, value }
    }

    /// What one event adds to this measure; `None` for `users`, which is
    /// not a sum.
    pub fn of(self, e: &Event) -> Option<i64> {
        self.of_parts(e.kind, e.invalid_reason, e.attributed, e.cost_micros, e.value_micros)
    }

    /// [`Measure::of`] from an event's fields, as columnar code reads them.
    pub fn of_parts(
        self,
        kind: EventType,
        invalid: InvalidReason,
        attributed: bool,
        cost_micros: i64,
        value_micros: i64,
    ) -> Option<i64> {
        let d = self.definition();
        let taken = d.types.contains(&kind)
            && match d.only {
                Only::All => true,
                Only::Valid => invalid == InvalidReason::Valid,
                Only::Invalid => invalid != InvalidReason::Valid,
                Only::Attributed => attributed,
            };
        match d.value {
            Value::DistinctUsers => None,
            _ if !taken => Some(0),
            Value::One => Some(1),
            Value::CostMicros => Some(cost_micros),
            Value::ValueMicros => Some(value_micros),
        }
    }

    /// The measures that are sums (every one but `users`).
    pub fn sums() -> impl Iterator<Item = Measure> {
        Measure::ALL.into_iter().filter(|m| m.definition().value != Value::DistinctUsers)
    }
}

/// Dimensions of `metrics` (DESIGN.md §6), besides `ts`: the columns a
/// rollup may keep.
pub const DIMENSIONS: [ColumnId; 10] = [
    ColumnId::PublisherId,
    ColumnId::AdvertiserId,
    ColumnId::CampaignId,
    ColumnId::AdGroupId,
    ColumnId::AdId,
    ColumnId::Device,
    ColumnId::Os,
    ColumnId::Country,
    ColumnId::Region,
    ColumnId::Placement,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sums_take_what_they_say() {
        for m in Measure::ALL {
            assert_eq!(Measure::parse(m.name()), Some(m));
        }
        let click = Event { kind: EventType::Click, cost_micros: 7, ..Event::default() };
        assert_eq!(Measure::Clicks.of(&click), Some(1));
        assert_eq!(Measure::BillableClicks.of(&click), Some(1));
        assert_eq!(Measure::SpendMicros.of(&click), Some(7));
        assert_eq!(Measure::Impressions.of(&click), Some(0));
        let invalid = Event { invalid_reason: InvalidReason::TooFast, ..click };
        assert_eq!((Measure::BillableClicks.of(&invalid), Measure::InvalidClicks.of(&invalid)), (Some(0), Some(1)));
        assert_eq!(Measure::SpendMicros.of(&invalid), Some(0));
        assert_eq!(Measure::Users.of(&invalid), None);
    }
}
