//! One JSON event object read into borrowed slots, without a JSON tree.
//!
//! [`RawEvent`] has one slot per input field of DESIGN.md §1, indexed by
//! [`ColumnId`] (the first [`INPUT_FIELDS`] columns of the event schema are
//! exactly the input fields, in order). Unescaped strings borrow from the
//! request body; only strings with escapes are copied (`Cow::Owned`).
//!
//! Reading never fails on a *semantic* problem: values of any JSON type are
//! kept as a [`Val`] so validation can say "expected an integer >= 0, found
//! a float" and name the field, and unknown or duplicate keys are recorded
//! rather than aborting. Only malformed JSON (or a non-object) is an error.

use std::borrow::Cow;
use std::fmt;

use adstore_storage::ColumnId;
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Number of input fields: columns `0..INPUT_FIELDS` of the event schema.
pub(crate) const INPUT_FIELDS: usize = 20;

/// The input fields in schema order.
pub(crate) const INPUT_COLUMNS: [ColumnId; INPUT_FIELDS] = {
    use ColumnId as C;
    [
        C::EventId,
        C::Type,
        C::Ts,
        C::PublisherId,
        C::AdvertiserId,
        C::CampaignId,
        C::AdGroupId,
        C::AdId,
        C::ImpressionId,
        C::ClickId,
        C::UserKey,
        C::Device,
        C::Os,
        C::Country,
        C::Region,
        C::Placement,
        C::CostMicros,
        C::ValueMicros,
        C::IpHash,
        C::UaHash,
    ]
};

/// The input field called `name`; `None` for anything else, including the
/// columns that seal fills in (`attributed`, `attributed_to`, `invalid_reason`).
pub(crate) fn input_column(name: &str) -> Option<ColumnId> {
    use ColumnId as C;
    Some(match name {
        "event_id" => C::EventId,
        "type" => C::Type,
        "ts" => C::Ts,
        "publisher_id" => C::PublisherId,
        "advertiser_id" => C::AdvertiserId,
        "campaign_id" => C::CampaignId,
        "ad_group_id" => C::AdGroupId,
        "ad_id" => C::AdId,
        "impression_id" => C::ImpressionId,
        "click_id" => C::ClickId,
        "user_key" => C::UserKey,
        "device" => C::Device,
        "os" => C::Os,
        "country" => C::Country,
        "region" => C::Region,
        "placement" => C::Placement,
        "cost_micros" => C::CostMicros,
        "value_micros" => C::ValueMicros,
        "ip_hash" => C::IpHash,
        "ua_hash" => C::UaHash,
        _ => return None,
    })
}

/// One JSON value, shallow: containers are skipped, not kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val<'a> {
    Null,
    Bool,
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    NegInt(i64),
    Float,
    /// A whole number too large for 64 bits (serde reads it as a float).
    Huge,
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Val<'_> {
    /// "a string", "an integer", ... for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool => "a boolean",
            Val::UInt(_) => "an integer",
            Val::NegInt(_) => "a negative integer",
            Val::Float => "a number with a fraction or exponent",
            Val::Huge => "a number beyond the 64-bit integer range",
            Val::Str(_) => "a string",
            Val::Array => "an array",
            Val::Object => "an object",
        }
    }
}

/// The fields of one event object as read, before validation.
#[derive(Debug, PartialEq)]
pub(crate) struct RawEvent<'a> {
    vals: [Option<Val<'a>>; INPUT_FIELDS],
    /// The first key that is not an input field.
    pub(crate) unknown: Option<String>,
    /// The first input field that appeared twice.
    pub(crate) duplicate: Option<ColumnId>,
}

impl<'a> RawEvent<'a> {
    pub(crate) fn empty() -> RawEvent<'a> {
        RawEvent { vals: [const { None }; INPUT_FIELDS], unknown: None, duplicate: None }
    }

    /// Back to [`RawEvent::empty`], for the next line.
    pub(crate) fn clear(&mut self) {
        self.vals.iter_mut().for_each(|v| *v = None);
        self.unknown = None;
        self.duplicate = None;
    }

    /// Records `column`'s value; the first one wins and a repeat is noted.
    #[inline]
    pub(crate) fn set(&mut self, column: ColumnId, value: Val<'a>) {
        // Invariant: `input_column` only yields columns below INPUT_FIELDS.
        let slot = &mut self.vals[column.index()];
        if slot.is_some() {
            self.duplicate.get_or_insert(column);
        } else {
            *slot = Some(value);
        }
    }

    /// Notes a key that is not an input field; the first one is kept.
    pub(crate) fn note_unknown(&mut self, name: &str) {
        if self.unknown.is_none() {
            self.unknown = Some(name.to_owned());
        }
    }

    /// `None` when the field is absent; `Some(Val::Null)` for an explicit `null`.
    pub(crate) fn get(&self, column: ColumnId) -> Option<&Val<'a>> {
        self.vals.get(column.index()).and_then(Option::as_ref)
    }
}

impl<'de> Deserialize<'de> for RawEvent<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = RawEvent<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with the fields of an event")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEvent<'de>, A::Error> {
        let mut raw = RawEvent::empty();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match key {
                Key::Known(column) => raw.set(column, map.next_value::<Val<'de>>()?),
                Key::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    raw.note_unknown(&name);
                }
            }
        }
        Ok(raw)
    }
}

/// An object key: an input field, or an unknown name kept for the error.
enum Key<'a> {
    Known(ColumnId),
    Unknown(Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(input_column(v).map_or(Key::Unknown(Cow::Borrowed(v)), Key::Known))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
        // An escaped key, e.g. "event\u005fid": still matched after unescaping.
        Ok(input_column(v).map_or_else(|| Key::Unknown(Cow::Owned(v.to_owned())), Key::Known))
    }
}

impl<'de> Deserialize<'de> for Val<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValVisitor)
    }
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(Val::UInt(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(u64::try_from(v).map_or(Val::NegInt(v), Val::UInt))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Val<'de>, E> {
        // 2^63: every whole f64 at or past it overflows an i64.
        const HUGE: f64 = 9_223_372_036_854_775_808.0;
        Ok(if v.abs() >= HUGE || !v.is_finite() { Val::Huge } else { Val::Float })
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Val::Array)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Val<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Val::Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adstore_storage::COLUMNS;

    #[test]
    fn input_columns_are_the_schema_prefix() {
        for (i, c) in INPUT_COLUMNS.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(input_column(c.name()), Some(*c));
        }
        for spec in &COLUMNS[INPUT_FIELDS..] {
            assert_eq!(input_column(spec.name), None, "{} is filled by seal, not by producers", spec.name);
        }
    }

    #[test]
    fn borrows_plain_strings_and_owns_escaped_ones() {
        let raw: RawEvent<'_> =
            serde_json::from_slice(br#"{"event_id":"plain","os":"a\"b","ad_id":null,"x":[1,{"y":2}]}"#).expect("valid");
        assert!(matches!(raw.get(ColumnId::EventId), Some(Val::Str(Cow::Borrowed("plain")))));
        assert!(matches!(raw.get(ColumnId::Os), Some(Val::Str(Cow::Owned(s))) if s == "a\"b"));
        assert_eq!(raw.get(ColumnId::AdId), Some(&Val::Null));
        assert_eq!(raw.get(ColumnId::Ts), None);
        assert_eq!(raw.unknown.as_deref(), Some("x"));
    }

    #[test]
    fn records_value_kinds_and_duplicates() {
        let raw: RawEvent<'_> =
            serde_json::from_slice(br#"{"ts":-5,"cost_micros":1.0,"value_micros":7,"type":true,"ts":1}"#)
                .expect("valid");
        assert_eq!(raw.get(ColumnId::Ts), Some(&Val::NegInt(-5)));
        assert_eq!(raw.get(ColumnId::CostMicros), Some(&Val::Float));
        assert_eq!(raw.get(ColumnId::ValueMicros), Some(&Val::UInt(7)));
        assert_eq!(raw.get(ColumnId::Type), Some(&Val::Bool));
        assert_eq!(raw.duplicate, Some(ColumnId::Ts));
    }

    #[test]
    fn escaped_key_matches_its_field() {
        let raw: RawEvent<'_> = serde_json::from_slice(br#"{"event\u005fid":"e"}"#).expect("valid");
        assert!(matches!(raw.get(ColumnId::EventId), Some(Val::Str(s)) if s == "e"));
        assert_eq!(raw.unknown, None);
    }

    #[test]
    fn non_objects_and_bad_syntax_are_errors() {
        for bad in [&b"[1]"[..], b"5", b"\"s\"", b"{\"a\":}", b"{", b"{} x"] {
            assert!(serde_json::from_slice::<RawEvent<'_>>(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
