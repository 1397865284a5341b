//! The event model of DESIGN.md §1 as typed Arrow column vectors.
//!
//! An [`EventBatch`] is a `RecordBatch` whose schema is exactly
//! [`event_schema`]: one column per field of an event, plus the columns that
//! seal fills in (`attributed`, `attributed_to`, `invalid_reason`). Every
//! layer of the store (WAL records, head chunks, segment files, scans) moves
//! events in this shape, so there is one place that knows the schema.
//!
//! Invariants kept by every constructor:
//! - the schema is exactly [`event_schema`] (names, types, nullability);
//! - `ts` holds epoch milliseconds UTC;
//! - `type` holds an [`EventType`] code and `invalid_reason` an
//!   [`InvalidReason`] code.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Int64Builder, StringBuilder, UInt8Builder};
use arrow_array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, UInt8Array};
use arrow_schema::SchemaRef;

use crate::error::{Result, StorageError};

/// Epoch milliseconds, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TimestampMs(pub i64);

/// The idempotency key of one event: a 128-bit hash of its publisher, type
/// and id. Two publishers' colliding event ids never collide here.
pub fn idempotency_key(publisher_id: &str, kind: EventType, event_id: &str) -> u128 {
    // Hashed: publisher length (u32 LE), publisher, type code, event id.
    // Assembled on the stack for usual lengths: a heap buffer per event was
    // a few percent of ingest.
    let len = publisher_id.len() + event_id.len() + 5;
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let p = publisher_id.len();
    buf[..4].copy_from_slice(&(p as u32).to_le_bytes());
    buf[4..4 + p].copy_from_slice(publisher_id.as_bytes());
    buf[4 + p] = kind as u8;
    buf[5 + p..].copy_from_slice(event_id.as_bytes());
    xxhash_rust::xxh3::xxh3_128(buf)
}

/// The keys and event times of every row of a batch.
pub fn batch_keys(batch: &EventBatch) -> Vec<(u128, i64)> {
    let publisher = batch.str_column(ColumnId::PublisherId);
    let id = batch.str_column(ColumnId::EventId);
    let kind = batch.u8_column(ColumnId::Type).values();
    let ts = batch.ts();
    (0..batch.num_rows())
        .map(|i| {
            let k = EventType::from_code(kind[i]).unwrap_or_default();
            (idempotency_key(publisher.value(i), k, id.value(i)), ts[i])
        })
        .collect()
}

/// The kind of an advertising event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum EventType {
    #[default]
    Impression = 0,
    Click = 1,
    Conversion = 2,
}

impl EventType {
    pub const ALL: [EventType; 3] = [EventType::Impression, EventType::Click, EventType::Conversion];

    /// The names SQL and ingest use, indexed by code.
    pub const NAMES: [&'static str; 3] = ["impression", "click", "conversion"];

    pub fn as_str(self) -> &'static str {
        EventType::NAMES[self as usize]
    }

    pub fn from_code(code: u8) -> Option<EventType> {
        match code {
            0 => Some(EventType::Impression),
            1 => Some(EventType::Click),
            2 => Some(EventType::Conversion),
            _ => None,
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        match s {
            "impression" => Some(EventType::Impression),
            "click" => Some(EventType::Click),
            "conversion" => Some(EventType::Conversion),
            _ => None,
        }
    }
}

/// Why an event is not billable (DESIGN.md §4). `Valid` is the empty string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum InvalidReason {
    #[default]
    Valid = 0,
    Unattributed = 1,
    TooFast = 2,
    ClickFlood = 3,
    BotUa = 4,
    /// A click whose signed impression id does not verify with its
    /// publisher's secret (decided at ingest, kept by attribution).
    BadSignature = 5,
}

impl InvalidReason {
    pub const ALL: [InvalidReason; 6] = [
        InvalidReason::Valid,
        InvalidReason::Unattributed,
        InvalidReason::TooFast,
        InvalidReason::ClickFlood,
        InvalidReason::BotUa,
        InvalidReason::BadSignature,
    ];

    /// The names SQL compares `invalid_reason` as, indexed by code ('' = valid).
    pub const NAMES: [&'static str; 6] = ["", "unattributed", "too_fast", "click_flood", "bot_ua", "bad_signature"];

    pub fn as_str(self) -> &'static str {
        InvalidReason::NAMES[self as usize]
    }

    pub fn from_code(code: u8) -> Option<InvalidReason> {
        InvalidReason::ALL.get(usize::from(code)).copied()
    }
}

/// How a column is stored physically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// UTF-8 string (`Utf8`), possibly nullable.
    Str,
    /// Signed 64-bit integer (`Int64`), never null.
    I64,
    /// Small enum code (`UInt8`), never null.
    U8,
    /// Boolean, never null.
    Bool,
    /// Opaque bytes (`Binary`), possibly nullable: sketches of derived
    /// tables. No event column has this kind.
    Bytes,
}

/// Every column of the event schema, in schema order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(usize)]
pub enum ColumnId {
    EventId = 0,
    Type,
    Ts,
    PublisherId,
    AdvertiserId,
    CampaignId,
    AdGroupId,
    AdId,
    ImpressionId,
    ClickId,
    UserKey,
    Device,
    Os,
    Country,
    Region,
    Placement,
    CostMicros,
    ValueMicros,
    IpHash,
    UaHash,
    Attributed,
    AttributedTo,
    InvalidReason,
}

/// Static description of one column.
#[derive(Debug, Clone, Copy)]
pub struct ColumnSpec {
    pub id: ColumnId,
    pub name: &'static str,
    pub kind: ColumnKind,
    pub nullable: bool,
    /// A low-cardinality dimension: dictionary-encoded and indexed in segments.
    pub dimension: bool,
}

const fn spec(id: ColumnId, name: &'static str, kind: ColumnKind, nullable: bool, dimension: bool) -> ColumnSpec {
    ColumnSpec { id, name, kind, nullable, dimension }
}

use ColumnKind::{Bool, I64, Str, U8};

/// The event schema, in column order. Index with `ColumnId as usize`.
pub const COLUMNS: [ColumnSpec; 23] = [
    spec(ColumnId::EventId, "event_id", Str, false, false),
    spec(ColumnId::Type, "type", U8, false, false),
    spec(ColumnId::Ts, "ts", I64, false, false),
    spec(ColumnId::PublisherId, "publisher_id", Str, false, true),
    spec(ColumnId::AdvertiserId, "advertiser_id", Str, false, true),
    spec(ColumnId::CampaignId, "campaign_id", Str, false, true),
    spec(ColumnId::AdGroupId, "ad_group_id", Str, true, true),
    spec(ColumnId::AdId, "ad_id", Str, false, true),
    spec(ColumnId::ImpressionId, "impression_id", Str, true, false),
    spec(ColumnId::ClickId, "click_id", Str, true, false),
    spec(ColumnId::UserKey, "user_key", Str, true, false),
    spec(ColumnId::Device, "device", Str, true, true),
    spec(ColumnId::Os, "os", Str, true, true),
    spec(ColumnId::Country, "country", Str, true, true),
    spec(ColumnId::Region, "region", Str, true, true),
    spec(ColumnId::Placement, "placement", Str, true, true),
    spec(ColumnId::CostMicros, "cost_micros", I64, false, false),
    spec(ColumnId::ValueMicros, "value_micros", I64, false, false),
    spec(ColumnId::IpHash, "ip_hash", Str, true, false),
    spec(ColumnId::UaHash, "ua_hash", Str, true, false),
    spec(ColumnId::Attributed, "attributed", Bool, false, false),
    spec(ColumnId::AttributedTo, "attributed_to", Str, true, false),
    spec(ColumnId::InvalidReason, "invalid_reason", U8, false, false),
];

impl ColumnId {
    pub fn spec(self) -> &'static ColumnSpec {
        &COLUMNS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<ColumnId> {
        COLUMNS.iter().find(|c| c.name == name).map(|c| c.id)
    }

    pub fn from_index(index: usize) -> Option<ColumnId> {
        COLUMNS.get(index).map(|c| c.id)
    }

    /// For a `U8` enum column (`type`, `invalid_reason`), the name of each
    /// code, indexed by code: what SQL compares it as.
    pub fn enum_names(self) -> Option<&'static [&'static str]> {
        match self {
            ColumnId::Type => Some(&EventType::NAMES),
            ColumnId::InvalidReason => Some(&InvalidReason::NAMES),
            _ => None,
        }
    }
}

/// The Arrow schema of [`EventBatch`]: `type` and `invalid_reason` are
/// `UInt8` codes, `ts` is `Int64` epoch milliseconds.
pub fn event_schema() -> SchemaRef {
    crate::segment::SegmentSchema::events().arrow()
}

/// One event in row form: what producers send, what tests and the
/// generator build. Columnar code never goes through this type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub event_id: String,
    pub kind: EventType,
    pub ts: i64,
    pub publisher_id: String,
    pub advertiser_id: String,
    pub campaign_id: String,
    pub ad_group_id: Option<String>,
    pub ad_id: String,
    pub impression_id: Option<String>,
    pub click_id: Option<String>,
    pub user_key: Option<String>,
    pub device: Option<String>,
    pub os: Option<String>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub placement: Option<String>,
    pub cost_micros: i64,
    pub value_micros: i64,
    pub ip_hash: Option<String>,
    pub ua_hash: Option<String>,
    pub attributed: bool,
    pub attributed_to: Option<String>,
    pub invalid_reason: InvalidReason,
}

/// A batch of events with the [`event_schema`].
/// A batch of events in the event schema. Cloning is one reference count:
/// the head hands its chunks to every snapshot (each query, each seal).
#[derive(Debug, Clone)]
pub struct EventBatch {
    batch: Arc<RecordBatch>,
}

impl EventBatch {
    /// Wraps a `RecordBatch`, checking that its schema is the event schema
    /// and that its enum codes are valid.
    pub fn try_new(batch: RecordBatch) -> Result<EventBatch> {
        let expected = event_schema();
        let actual = batch.schema();
        if actual.fields().len() != expected.fields().len() {
            return Err(StorageError::Schema(format!(
                "expected {} columns, found {}",
                expected.fields().len(),
                actual.fields().len()
            )));
        }
        for (want, have) in expected.fields().iter().zip(actual.fields().iter()) {
            if want.name() != have.name() || want.data_type() != have.data_type() {
                return Err(StorageError::Schema(format!(
                    "column {:?}: expected {} {}, found {} {}",
                    want.name(),
                    want.name(),
                    want.data_type(),
                    have.name(),
                    have.data_type()
                )));
            }
            if !want.is_nullable() && batch.column_by_name(want.name()).is_some_and(|c| c.null_count() > 0) {
                return Err(StorageError::Schema(format!("column {:?} must not contain nulls", want.name())));
            }
        }
        // Re-stamp with the canonical schema so nullability flags match exactly.
        let batch = RecordBatch::try_new(expected, batch.columns().to_vec())?;
        let out = EventBatch { batch: Arc::new(batch) };
        if out.u8_column(ColumnId::Type).values().iter().any(|&c| EventType::from_code(c).is_none()) {
            return Err(StorageError::Schema("column \"type\" holds an unknown event type code".into()));
        }
        if out.u8_column(ColumnId::InvalidReason).values().iter().any(|&c| InvalidReason::from_code(c).is_none()) {
            return Err(StorageError::Schema("column \"invalid_reason\" holds an unknown code".into()));
        }
        Ok(out)
    }

    pub fn empty() -> EventBatch {
        EventBatch { batch: Arc::new(RecordBatch::new_empty(event_schema())) }
    }

    pub fn from_events(events: &[Event]) -> EventBatch {
        let mut b = EventBatchBuilder::with_capacity(events.len());
        for e in events {
            b.push(e);
        }
        b.finish()
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.num_rows() == 0
    }

    pub fn record_batch(&self) -> &RecordBatch {
        &self.batch
    }

    pub fn into_record_batch(self) -> RecordBatch {
        Arc::unwrap_or_clone(self.batch)
    }

    pub fn column(&self, id: ColumnId) -> &ArrayRef {
        self.batch.column(id.index())
    }

    pub fn str_column(&self, id: ColumnId) -> &StringArray {
        // Invariant: the schema is checked at construction; string columns are Utf8.
        self.column(id).as_any().downcast_ref::<StringArray>().expect("event schema: Utf8 column")
    }

    pub fn i64_column(&self, id: ColumnId) -> &Int64Array {
        // Invariant: the schema is checked at construction.
        self.column(id).as_any().downcast_ref::<Int64Array>().expect("event schema: Int64 column")
    }

    pub fn u8_column(&self, id: ColumnId) -> &UInt8Array {
        // Invariant: the schema is checked at construction.
        self.column(id).as_any().downcast_ref::<UInt8Array>().expect("event schema: UInt8 column")
    }

    pub fn bool_column(&self, id: ColumnId) -> &BooleanArray {
        // Invariant: the schema is checked at construction.
        self.column(id).as_any().downcast_ref::<BooleanArray>().expect("event schema: Boolean column")
    }

    pub fn ts(&self) -> &[i64] {
        self.i64_column(ColumnId::Ts).values()
    }

    /// Bytes of Arrow buffers this batch's rows take: a slice counts only
    /// its own rows, not the whole buffers it shares with other slices.
    pub fn memory_bytes(&self) -> usize {
        self.batch
            .columns()
            .iter()
            .map(|c| c.to_data().get_slice_memory_size().unwrap_or_else(|_| c.get_array_memory_size()))
            .sum()
    }

    /// Rows `offset..offset+len`, sharing buffers (no copy).
    pub fn slice(&self, offset: usize, len: usize) -> EventBatch {
        EventBatch { batch: Arc::new(self.batch.slice(offset, len)) }
    }

    /// The rows at `keep` (ascending row numbers, each once), in order:
    /// copied as runs of consecutive rows, which is cheaper than a gather
    /// when most rows stay; not copied when all stay.
    pub fn filter_rows(&self, keep: &[u32]) -> Result<EventBatch> {
        let n = self.num_rows();
        if !are_rows_under(keep, n) {
            return Err(StorageError::Internal(format!(
                "rows to keep must be ascending row numbers under {n}, one each"
            )));
        }
        // Ascending, distinct and under `n`: all rows when there are `n`.
        if keep.len() == n {
            return Ok(self.clone());
        }
        let mut mask = arrow_buffer::BooleanBufferBuilder::new(n);
        mask.append_n(n, false);
        for &i in keep {
            mask.set_bit(i as usize, true);
        }
        let mask = BooleanArray::new(mask.finish(), None);
        let batch = arrow_select::filter::filter_record_batch(&self.batch, &mask)?;
        Ok(EventBatch { batch: Arc::new(batch) })
    }

    /// Gathers the rows at `indices`, in that order.
    pub fn take(&self, indices: &[u32]) -> Result<EventBatch> {
        let idx = arrow_array::UInt32Array::from(indices.to_vec());
        let columns = self
            .batch
            .columns()
            .iter()
            .map(|c| arrow_select::take::take(c.as_ref(), &idx, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(EventBatch { batch: Arc::new(RecordBatch::try_new(event_schema(), columns)?) })
    }

    /// Concatenates batches into one.
    pub fn concat(batches: &[EventBatch]) -> Result<EventBatch> {
        if batches.len() == 1 {
            return Ok(batches[0].clone());
        }
        let refs: Vec<RecordBatch> = batches.iter().map(|b| (*b.batch).clone()).collect();
        let batch = arrow_select::concat::concat_batches(&event_schema(), &refs)?;
        Ok(EventBatch { batch: Arc::new(batch) })
    }

    /// Replaces one column (used by seal stages that fill in derived columns).
    pub fn with_column(&self, id: ColumnId, array: ArrayRef) -> Result<EventBatch> {
        let mut columns = self.batch.columns().to_vec();
        columns[id.index()] = array;
        EventBatch::try_new(RecordBatch::try_new(event_schema(), columns)?)
    }

    /// Row `i` in row form. For tests and small result sets only.
    pub fn event(&self, i: usize) -> Event {
        let s = |id: ColumnId| {
            let a = self.str_column(id);
            if a.is_null(i) { None } else { Some(a.value(i).to_string()) }
        };
        let req = |id: ColumnId| self.str_column(id).value(i).to_string();
        Event {
            event_id: req(ColumnId::EventId),
            kind: EventType::from_code(self.u8_column(ColumnId::Type).value(i)).unwrap_or_default(),
            ts: self.ts()[i],
            publisher_id: req(ColumnId::PublisherId),
            advertiser_id: req(ColumnId::AdvertiserId),
            campaign_id: req(ColumnId::CampaignId),
            ad_group_id: s(ColumnId::AdGroupId),
            ad_id: req(ColumnId::AdId),
            impression_id: s(ColumnId::ImpressionId),
            click_id: s(ColumnId::ClickId),
            user_key: s(ColumnId::UserKey),
            device: s(ColumnId::Device),
            os: s(ColumnId::Os),
            country: s(ColumnId::Country),
            region: s(ColumnId::Region),
            placement: s(ColumnId::Placement),
            cost_micros: self.i64_column(ColumnId::CostMicros).value(i),
            value_micros: self.i64_column(ColumnId::ValueMicros).value(i),
            ip_hash: s(ColumnId::IpHash),
            ua_hash: s(ColumnId::UaHash),
            attributed: self.bool_column(ColumnId::Attributed).value(i),
            attributed_to: s(ColumnId::AttributedTo),
            invalid_reason: InvalidReason::from_code(self.u8_column(ColumnId::InvalidReason).value(i))
                .unwrap_or_default(),
        }
    }

    pub fn events(&self) -> Vec<Event> {
        (0..self.num_rows()).map(|i| self.event(i)).collect()
    }
}

impl TryFrom<RecordBatch> for EventBatch {
    type Error = StorageError;
    fn try_from(batch: RecordBatch) -> Result<EventBatch> {
        EventBatch::try_new(batch)
    }
}

impl From<EventBatch> for RecordBatch {
    fn from(b: EventBatch) -> RecordBatch {
        Arc::unwrap_or_clone(b.batch)
    }
}

/// Builds an [`EventBatch`] row by row. Parsers push borrowed strings
/// directly, without building an [`Event`] first.
pub struct EventBatchBuilder {
    /// Indexed by `ColumnId as usize`; `Some` exactly for the string columns.
    strings: Vec<Option<StringBuilder>>,
    kind: UInt8Builder,
    ts: Int64Builder,
    cost: Int64Builder,
    value: Int64Builder,
    attributed: BooleanBuilder,
    invalid: UInt8Builder,
    rows: usize,
}

impl EventBatchBuilder {
    pub fn with_capacity(rows: usize) -> EventBatchBuilder {
        let strings =
            COLUMNS.iter().map(|c| (c.kind == Str).then(|| StringBuilder::with_capacity(rows, rows * 8))).collect();
        EventBatchBuilder {
            strings,
            kind: UInt8Builder::with_capacity(rows),
            ts: Int64Builder::with_capacity(rows),
            cost: Int64Builder::with_capacity(rows),
            value: Int64Builder::with_capacity(rows),
            attributed: BooleanBuilder::with_capacity(rows),
            invalid: UInt8Builder::with_capacity(rows),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Sets a string column of the row being built. Every column of a row
    /// must be set exactly once before [`EventBatchBuilder::end_row`].
    /// Setting a non-string column this way is a bug and panics.
    pub fn set_str(&mut self, id: ColumnId, value: Option<&str>) {
        // Invariant: callers pass string columns only (checked in debug builds
        // by the schema check in `finish`).
        match &mut self.strings[id.index()] {
            Some(b) => b.append_option(value),
            None => panic!("set_str on non-string column {}", id.name()),
        }
    }

    pub fn set_type(&mut self, t: EventType) {
        self.kind.append_value(t as u8);
    }

    pub fn set_ts(&mut self, ts: i64) {
        self.ts.append_value(ts);
    }

    pub fn set_cost_micros(&mut self, v: i64) {
        self.cost.append_value(v);
    }

    pub fn set_value_micros(&mut self, v: i64) {
        self.value.append_value(v);
    }

    pub fn set_attributed(&mut self, attributed: bool) {
        self.attributed.append_value(attributed);
    }

    pub fn set_invalid_reason(&mut self, r: InvalidReason) {
        self.invalid.append_value(r as u8);
    }

    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    pub fn push(&mut self, e: &Event) {
        use ColumnId as C;
        self.set_str(C::EventId, Some(&e.event_id));
        self.set_type(e.kind);
        self.set_ts(e.ts);
        self.set_str(C::PublisherId, Some(&e.publisher_id));
        self.set_str(C::AdvertiserId, Some(&e.advertiser_id));
        self.set_str(C::CampaignId, Some(&e.campaign_id));
        self.set_str(C::AdGroupId, e.ad_group_id.as_deref());
        self.set_str(C::AdId, Some(&e.ad_id));
        self.set_str(C::ImpressionId, e.impression_id.as_deref());
        self.set_str(C::ClickId, e.click_id.as_deref());
        self.set_str(C::UserKey, e.user_key.as_deref());
        self.set_str(C::Device, e.device.as_deref());
        self.set_str(C::Os, e.os.as_deref());
        self.set_str(C::Country, e.country.as_deref());
        self.set_str(C::Region, e.region.as_deref());
        self.set_str(C::Placement, e.placement.as_deref());
        self.set_cost_micros(e.cost_micros);
        self.set_value_micros(e.value_micros);
        self.set_str(C::IpHash, e.ip_hash.as_deref());
        self.set_str(C::UaHash, e.ua_hash.as_deref());
        self.set_attributed(e.attributed);
        self.set_str(C::AttributedTo, e.attributed_to.as_deref());
        self.set_invalid_reason(e.invalid_reason);
        self.end_row();
    }

    pub fn finish(mut self) -> EventBatch {
        let mut columns: Vec<Option<ArrayRef>> = vec![None; COLUMNS.len()];
        for (i, b) in std::mem::take(&mut self.strings).into_iter().enumerate() {
            if let Some(mut b) = b {
                columns[i] = Some(Arc::new(b.finish()));
            }
        }
        columns[ColumnId::Type.index()] = Some(Arc::new(self.kind.finish()));
        columns[ColumnId::Ts.index()] = Some(Arc::new(self.ts.finish()));
        columns[ColumnId::CostMicros.index()] = Some(Arc::new(self.cost.finish()));
        columns[ColumnId::ValueMicros.index()] = Some(Arc::new(self.value.finish()));
        columns[ColumnId::Attributed.index()] = Some(Arc::new(self.attributed.finish()));
        columns[ColumnId::InvalidReason.index()] = Some(Arc::new(self.invalid.finish()));
        // Invariant: every column of the schema was built above, with equal
        // lengths because each row sets every column once.
        let columns: Vec<ArrayRef> = columns.into_iter().map(|c| c.expect("every column built")).collect();
        let batch = RecordBatch::try_new(event_schema(), columns).expect("builder keeps columns aligned");
        EventBatch { batch: Arc::new(batch) }
    }
}

/// The shard of an advertiser: `xxh3(advertiser_id) mod shards`.
pub fn shard_of(advertiser_id: &str, shards: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(advertiser_id.as_bytes()) % u64::from(shards.max(1))) as u32
}

/// Whether `rows` are ascending row numbers under `n`, each once.
pub(crate) fn are_rows_under(rows: &[u32], n: usize) -> bool {
    rows.windows(2).all(|w| w[0] < w[1]) && rows.last().is_none_or(|&last| (last as usize) < n)
}

/// The row numbers under `n` that are not in `rows` (ascending, each once),
/// ascending.
pub(crate) fn other_rows(rows: &[u32], n: usize) -> Vec<u32> {
    let mut rows = rows.iter().copied().peekable();
    (0..n as u32).filter(|&i| rows.next_if_eq(&i).is_none()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cloned_batch_shares_its_columns() {
        // Snapshots clone every head chunk: a clone must not copy the
        // record batch (its column list), only count a reference.
        let a = EventBatch::from_events(&[Event::default(), Event::default()]);
        let b = a.clone();
        assert!(std::ptr::eq(a.record_batch(), b.record_batch()));
        assert_eq!(b.into_record_batch().num_rows(), 2, "the last owner still gets the batch");
    }

    pub(crate) fn sample() -> Event {
        Event {
            event_id: "e1".into(),
            kind: EventType::Click,
            ts: 1_700_000_000_000,
            publisher_id: "pub".into(),
            advertiser_id: "adv".into(),
            campaign_id: "c".into(),
            ad_id: "ad".into(),
            impression_id: Some("imp".into()),
            country: Some("DE".into()),
            cost_micros: 1500,
            ..Event::default()
        }
    }

    #[test]
    fn row_round_trip() {
        let e = sample();
        let b = EventBatch::from_events(std::slice::from_ref(&e));
        assert_eq!(b.num_rows(), 1);
        assert_eq!(b.event(0), e);
        let rb: RecordBatch = b.into();
        let back = EventBatch::try_new(rb).expect("valid");
        assert_eq!(back.event(0), e);
    }

    #[test]
    fn rejects_wrong_schema() {
        let rb = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]).expect("batch");
        let err = EventBatch::try_new(rb).expect_err("must fail");
        assert!(err.to_string().contains("expected 23 columns"), "{err}");
    }
}

#[cfg(test)]
mod enum_name_tests {
    use super::*;

    #[test]
    fn enum_names_are_the_codes_names() {
        let types = ColumnId::Type.enum_names().expect("type is an enum");
        assert_eq!(types.len(), EventType::ALL.len());
        for t in EventType::ALL {
            assert_eq!(types[t as usize], t.as_str());
        }
        let reasons = ColumnId::InvalidReason.enum_names().expect("invalid_reason is an enum");
        assert_eq!(reasons.len(), InvalidReason::ALL.len());
        for r in InvalidReason::ALL {
            assert_eq!(reasons[r as usize], r.as_str());
        }
        assert_eq!(ColumnId::Device.enum_names(), None);
    }
}
