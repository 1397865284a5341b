//! Checks one [`RawEvent`] against DESIGN.md §1 and §5, then appends it.
//!
//! [`check`] either rejects the event with the first problem found (in
//! schema order: unknown and duplicate keys, `type`, then each field, then
//! the time window) or returns a [`Checked`] event whose strings still
//! borrow from the body. Only a `Checked` event is ever appended, so an
//! [`EventBatchBuilder`] never sees half a row.
//!
//! An empty string in an optional field is stored as null: producers send
//! `""` for "unknown", and a stored `""` would, for example, make every
//! conversion with `"click_id": ""` join to the same click.

use adstore_storage::{ColumnId, EventBatchBuilder, EventType, InvalidReason};

use super::ParseOptions;
use super::raw::{INPUT_COLUMNS, INPUT_FIELDS, RawEvent, Val};
use super::rfc3339;
use crate::error::{IngestError, snippet};

/// Longest `event_id`, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;
/// Longest value of any other string field, in bytes.
pub const MAX_STR_BYTES: usize = 1024;

const DEVICES: [&str; 5] = ["mobile", "desktop", "tablet", "ctv", "other"];

/// A validated event, ready to append.
#[derive(Debug)]
pub(crate) struct Checked<'r> {
    kind: EventType,
    ts: i64,
    cost_micros: i64,
    value_micros: i64,
    /// String fields by column index; non-string slots stay `None`.
    strs: [Option<&'r str>; INPUT_FIELDS],
}

/// Validates `raw`; the first problem found is the error.
pub(crate) fn check<'r>(raw: &'r RawEvent<'_>, opts: &ParseOptions) -> Result<Checked<'r>, IngestError> {
    use ColumnId as C;
    if let Some(name) = &raw.unknown {
        return Err(IngestError::UnknownField { field: snippet(name) });
    }
    if let Some(column) = raw.duplicate {
        return Err(IngestError::DuplicateField { field: column.name() });
    }
    let kind = event_type(raw, opts.expected_type)?;
    let mut out = Checked { kind, ts: 0, cost_micros: 0, value_micros: 0, strs: [None; INPUT_FIELDS] };
    for column in INPUT_COLUMNS {
        match column {
            C::Type => {}
            C::Ts => out.ts = timestamp(raw)?,
            C::CostMicros => out.cost_micros = micros(raw, column)?,
            C::ValueMicros => out.value_micros = micros(raw, column)?,
            _ => out.strs[column.index()] = string(raw, column, is_required(column, kind))?,
        }
    }
    time_window(out.ts, opts)?;
    publisher_allowed(out.strs[C::PublisherId.index()].unwrap_or(""), opts)?;
    Ok(out)
}

/// Whether the sender may send events of `publisher_id` (`ParseOptions::publishers`).
pub(crate) fn publisher_allowed(publisher_id: &str, opts: &ParseOptions) -> Result<(), IngestError> {
    match &opts.publishers {
        Some(allowed) if !allowed.iter().any(|p| p == publisher_id) => {
            Err(IngestError::PublisherNotAllowed { publisher_id: snippet(publisher_id) })
        }
        _ => Ok(()),
    }
}

/// Whether a string field must be present (and non-empty) in an event of `kind`.
pub(crate) fn is_required(column: ColumnId, kind: EventType) -> bool {
    use ColumnId as C;
    match column {
        C::EventId | C::PublisherId | C::AdvertiserId | C::CampaignId | C::AdId => true,
        C::ImpressionId => kind == EventType::Impression,
        C::ClickId => kind == EventType::Click,
        _ => false,
    }
}

/// Checks a present, non-null string value of `column`: emptiness, length,
/// and the formats of `country` and `device`. An empty optional value is
/// `Ok(None)` (stored as null). Shared by the JSON and Arrow readers, so both
/// apply the same rules.
pub(crate) fn str_value(column: ColumnId, required: bool, s: &str) -> Result<Option<&str>, IngestError> {
    use ColumnId as C;
    let field = column.name();
    if s.is_empty() {
        return if required { Err(IngestError::EmptyString { field }) } else { Ok(None) };
    }
    let max_bytes = if column == C::EventId { MAX_EVENT_ID_BYTES } else { MAX_STR_BYTES };
    if s.len() > max_bytes {
        return Err(IngestError::ValueTooLong { field, len_bytes: s.len(), max_bytes });
    }
    match column {
        C::Country if !(s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase())) => {
            Err(IngestError::BadCountry { found: snippet(s) })
        }
        C::Device if !is_device(s.as_bytes()) => Err(IngestError::BadDevice { found: snippet(s) }),
        _ => Ok(Some(s)),
    }
}

/// Whether `value` names a device class (DESIGN.md §1).
pub(crate) fn is_device(value: &[u8]) -> bool {
    DEVICES.iter().any(|d| d.as_bytes() == value)
}

/// A named event type against the type a typed endpoint implies.
pub(crate) fn type_value(found: EventType, expected: Option<EventType>) -> Result<EventType, IngestError> {
    match expected {
        Some(expected) if expected != found => Err(IngestError::TypeMismatch { found, expected }),
        _ => Ok(found),
    }
}

/// Appends a checked event as one row; seal-time columns get their defaults.
pub(crate) fn push(builder: &mut EventBatchBuilder, e: &Checked<'_>) {
    use ColumnId as C;
    for column in INPUT_COLUMNS {
        match column {
            C::Type => builder.set_type(e.kind),
            C::Ts => builder.set_ts(e.ts),
            C::CostMicros => builder.set_cost_micros(e.cost_micros),
            C::ValueMicros => builder.set_value_micros(e.value_micros),
            _ => builder.set_str(column, e.strs[column.index()]),
        }
    }
    builder.set_attributed(false);
    builder.set_str(C::AttributedTo, None);
    builder.set_invalid_reason(InvalidReason::Valid);
    builder.end_row();
}

/// The event type: from the line, or implied by a typed endpoint.
fn event_type(raw: &RawEvent<'_>, expected: Option<EventType>) -> Result<EventType, IngestError> {
    let field = ColumnId::Type.name();
    match (raw.get(ColumnId::Type), expected) {
        (None | Some(Val::Null), Some(expected)) => Ok(expected),
        (None, None) => Err(IngestError::MissingField { field }),
        (Some(Val::Null), None) => Err(IngestError::NullField { field }),
        (Some(Val::Str(s)), expected) => {
            let found = EventType::parse(s).ok_or_else(|| IngestError::BadType { found: snippet(s) })?;
            type_value(found, expected)
        }
        (Some(other), _) => Err(IngestError::ExpectedString { field, found: other.kind() }),
    }
}

/// A string field: `None` when absent, null or (for optional fields) empty.
fn string<'r>(raw: &'r RawEvent<'_>, column: ColumnId, required: bool) -> Result<Option<&'r str>, IngestError> {
    let field = column.name();
    match raw.get(column) {
        None if required => Err(IngestError::MissingField { field }),
        Some(Val::Null) if required => Err(IngestError::NullField { field }),
        None | Some(Val::Null) => Ok(None),
        Some(Val::Str(s)) => str_value(column, required, s),
        Some(other) => Err(IngestError::ExpectedString { field, found: other.kind() }),
    }
}

/// `cost_micros` / `value_micros`: a non-negative integer, 0 when absent or null.
fn micros(raw: &RawEvent<'_>, column: ColumnId) -> Result<i64, IngestError> {
    let field = column.name();
    match raw.get(column) {
        None | Some(Val::Null) => Ok(0),
        Some(Val::UInt(v)) => i64::try_from(*v)
            .map_err(|_| IngestError::ExpectedNonNegativeInt { field, found: format!("{v}, which exceeds i64") }),
        Some(Val::NegInt(v)) => Err(IngestError::ExpectedNonNegativeInt { field, found: v.to_string() }),
        Some(other) => Err(IngestError::ExpectedNonNegativeInt { field, found: other.kind().to_owned() }),
    }
}

/// `ts`: an RFC 3339 string or integer epoch milliseconds.
fn timestamp(raw: &RawEvent<'_>) -> Result<i64, IngestError> {
    let field = ColumnId::Ts.name();
    match raw.get(ColumnId::Ts) {
        None => Err(IngestError::MissingField { field }),
        Some(Val::Null) => Err(IngestError::NullField { field }),
        Some(Val::Str(s)) => rfc3339::parse_ms(s).map_err(|detail| IngestError::BadTimestamp { detail }),
        Some(Val::UInt(v)) => i64::try_from(*v).map_err(|_| IngestError::ExpectedTimestamp { found: Val::Huge.kind() }),
        Some(Val::NegInt(v)) => Ok(*v),
        Some(other) => Err(IngestError::ExpectedTimestamp { found: other.kind() }),
    }
}

/// DESIGN.md §5: not too far ahead of the server clock, not older than the lateness bound.
pub(crate) fn time_window(ts: i64, opts: &ParseOptions) -> Result<(), IngestError> {
    let ahead_ms = ts.saturating_sub(opts.now_ms);
    if ahead_ms > opts.max_future_skew_ms {
        return Err(IngestError::Future { ts_ms: ts, ahead_ms, max_skew_ms: opts.max_future_skew_ms });
    }
    if let Some(min_ts_ms) = opts.min_ts_ms
        && ts < min_ts_ms
    {
        return Err(IngestError::Late { ts_ms: ts, min_ts_ms });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_the_five_classes_exactly() {
        for device in DEVICES {
            assert!(is_device(device.as_bytes()), "{device}");
            assert_eq!(str_value(ColumnId::Device, false, device).ok(), Some(Some(device)));
        }
        for other in ["", "Mobile", "mobil", "mobile ", "phone", "ctvs", "othe"] {
            assert!(!is_device(other.as_bytes()), "{other}");
        }
    }
}
