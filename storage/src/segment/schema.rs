//! What a segment holds: its columns, the one that carries time, and the
//! dictionary columns its rows are sorted by. Raw events are one schema
//! ([`SegmentSchema::events`]); derived tables (rollups) bring their own.
//! The writer lays a batch out by its schema, and the reader checks a
//! file's footer against the schema its caller expects.

use std::sync::{Arc, OnceLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::error::{Result, StorageError};
use crate::event::{COLUMNS, ColumnId, ColumnKind};

/// One column of a segment schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: &'static str,
    pub kind: ColumnKind,
    pub nullable: bool,
    /// A low-cardinality dimension: dictionary-encoded and indexed.
    pub dimension: bool,
}

/// Most dictionary columns a schema sorts its rows by (their codes are
/// packed into one 128-bit sort key, 32 bits each, above nothing else).
pub const MAX_SORT_COLUMNS: usize = 3;

/// The columns of one kind of segment.
#[derive(Debug, Clone)]
pub struct SegmentSchema {
    columns: Vec<ColumnDef>,
    ts: usize,
    sort: Vec<usize>,
    arrow: SchemaRef,
}

impl SegmentSchema {
    /// A schema of `columns`, time in column `ts` (a non-null `I64`), rows
    /// sorted by the dictionary-encoded dimensions `sort`, then time.
    ///
    /// # Errors
    /// `Config` naming the fault: no columns, a repeated name, a `ts` or
    /// sort column that is not what it must be, more than
    /// [`MAX_SORT_COLUMNS`] sort columns, a nullable non-string column.
    pub fn new(columns: Vec<ColumnDef>, ts: usize, sort: Vec<usize>) -> Result<SegmentSchema> {
        let fail = |what: String| Err(StorageError::Config(format!("segment schema: {what}")));
        if columns.is_empty() || columns.len() > usize::from(u16::MAX) {
            return fail(format!("{} columns; 1 to 65535 are allowed", columns.len()));
        }
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].iter().any(|d| d.name == c.name) {
                return fail(format!("column {} appears twice", c.name));
            }
            if c.nullable && !matches!(c.kind, ColumnKind::Str | ColumnKind::Bytes) {
                return fail(format!("column {} is nullable, which only strings and bytes may be", c.name));
            }
            if c.dimension && c.kind != ColumnKind::Str {
                return fail(format!("dimension {} is not a string column", c.name));
            }
        }
        match columns.get(ts) {
            Some(c) if c.kind == ColumnKind::I64 => {}
            _ => return fail(format!("time column {ts} is not an I64 column")),
        }
        if sort.len() > MAX_SORT_COLUMNS {
            return fail(format!("{} sort columns; at most {MAX_SORT_COLUMNS}", sort.len()));
        }
        if let Some(&bad) = sort.iter().find(|&&s| columns.get(s).is_none_or(|c| !c.dimension)) {
            return fail(format!("sort column {bad} is not a dimension"));
        }
        let fields: Vec<Field> = columns
            .iter()
            .map(|c| {
                let dt = match c.kind {
                    ColumnKind::Str => DataType::Utf8,
                    ColumnKind::I64 => DataType::Int64,
                    ColumnKind::U8 => DataType::UInt8,
                    ColumnKind::Bool => DataType::Boolean,
                    ColumnKind::Bytes => DataType::Binary,
                };
                Field::new(c.name, dt, c.nullable)
            })
            .collect();
        Ok(SegmentSchema { columns, ts, sort, arrow: Arc::new(Schema::new(fields)) })
    }

    /// Raw events: the columns of `storage/src/event.rs`, sorted by
    /// `(advertiser_id, campaign_id, ad_id, ts)`.
    pub fn events() -> &'static Arc<SegmentSchema> {
        static EVENTS: OnceLock<Arc<SegmentSchema>> = OnceLock::new();
        EVENTS.get_or_init(|| {
            let columns = COLUMNS
                .iter()
                .map(|c| ColumnDef { name: c.name, kind: c.kind, nullable: c.nullable, dimension: c.dimension })
                .collect();
            let sort = vec![ColumnId::AdvertiserId.index(), ColumnId::CampaignId.index(), ColumnId::AdId.index()];
            // Invariant: the event schema meets every rule `new` checks
            // (the segment tests open events segments through it).
            Arc::new(SegmentSchema::new(columns, ColumnId::Ts.index(), sort).expect("the event schema is valid"))
        })
    }

    pub fn columns(&self) -> &[ColumnDef] {
        &self.columns
    }

    /// The time column's position.
    pub fn ts(&self) -> usize {
        self.ts
    }

    /// The sort columns' positions, most significant first.
    pub fn sort(&self) -> &[usize] {
        &self.sort
    }

    /// The position of the column named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// The Arrow schema of a batch of this segment's rows.
    pub fn arrow(&self) -> SchemaRef {
        self.arrow.clone()
    }
}

/// A column of a segment, by position in its schema: a [`ColumnId`] for
/// events, a plain position for any schema.
pub trait SegmentColumn: Copy {
    fn position(self) -> usize;
}

impl SegmentColumn for ColumnId {
    fn position(self) -> usize {
        self.index()
    }
}

impl SegmentColumn for usize {
    fn position(self) -> usize {
        self
    }
}
