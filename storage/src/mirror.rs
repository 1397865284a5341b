//! The Parquet mirror: each settled day's raw events and rollup rows, as
//! Hive-partitioned Parquet files in the object store, for Spark, Trino,
//! DuckDB or a reconciliation run elsewhere (`[tiering] parquet_mirror`).
//!
//! ```text
//!  {prefix}/parquet/events/day=2026-11-02/part-{segment}.parquet            raw events
//!  {prefix}/parquet/rollups/{rollup}/{minute|hour|day}/day=…/part-….parquet  rollup rows
//! ```
//!
//! One part per segment, one row group per segment block, zstd. Columns
//! are the segment's, in its order, made plain for other engines: `ts` a
//! UTC timestamp in microseconds (what Iceberg's `timestamptz` is, so the
//! parts are also the data files of the Iceberg tables, `crate::iceberg`), `type` and `invalid_reason` their names
//! (as SQL shows them: `''` for a valid event); a rollup's `users` stays
//! its HyperLogLog sketch (bytes). This module only writes files; the
//! task that decides what to write is `store/mirror.rs`.

use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt8Array};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::billing::day_name;
use crate::error::{IoContext, Result, StorageError};
use crate::event::{ColumnId, EventType, InvalidReason};
use crate::manifest::{Level, SegmentMeta};
use crate::rollup::Granularity;
use crate::segment::SegmentReader;
use crate::time::floor_to;

/// Where the mirror lives under the object store's prefix.
pub const MIRROR_DIR: &str = "parquet";
/// The directory of the raw events' parts, under `MIRROR_DIR`.
pub const EVENTS_PREFIX: &str = "parquet/events/";
/// In the data directory: a part written before its upload, by the mirror
/// task and by an erasure (removed at open: a process stopped while
/// writing it).
pub const PART_TMP: &str = "mirror-part.parquet.tmp";
pub const ERASED_PART_TMP: &str = "erased-part.parquet.tmp";

/// The day (epoch ms of its midnight, UTC) a segment's rows belong to.
pub fn day_of(meta: &SegmentMeta) -> i64 {
    floor_to(meta.partition.bucket_start_ms, Granularity::Day.width_ms())
}

/// The key of a segment's part under the store's prefix; `None` for a
/// rollup segment whose entry names no rollup (never written).
pub fn part_key(meta: &SegmentMeta) -> Option<String> {
    let table = match (meta.level, &meta.rollup) {
        (Level::Raw, _) => EVENTS_PREFIX.to_string(),
        (level, Some(r)) => format!("{MIRROR_DIR}/rollups/{}/{}/", r.name, level.as_str()),
        (_, None) => return None,
    };
    Some(format!("{table}day={}/part-{:016x}.parquet", day_name(day_of(meta)), meta.id.0))
}

/// Writes the rows of `reader` (a segment of `level`) to `path` as Parquet,
/// one row group per block. Returns the rows written.
pub fn write_part(reader: &SegmentReader, level: Level, path: &Path) -> Result<u64> {
    let failed = |e: parquet::errors::ParquetError| StorageError::Internal(format!("{}: {e}", path.display()));
    let schema = plain_schema(&reader.schema().arrow(), level);
    let block_rows = reader.block_rows(0).len().max(1);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(failed)?))
        .set_max_row_group_row_count(Some(block_rows))
        .build();
    let file = std::fs::File::create(path).at(path)?;
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(failed)?;
    let mut rows = 0u64;
    for block in 0..reader.num_blocks() {
        let batch = plain_batch(&reader.read_blocks(block..block + 1)?, &schema, level)?;
        rows += batch.num_rows() as u64;
        writer.write(&batch).map_err(failed)?;
        writer.flush().map_err(failed)?;
    }
    let file = writer.into_inner().map_err(failed)?;
    file.sync_all().at(path)?;
    Ok(rows)
}

/// `part` (a part of the mirror's events) without the identity of the
/// rows whose `user_key` is `user_key`, written to `path` as it was
/// written (row groups, zstd); the rows erased, or `None` (nothing
/// written) when none is that user's.
///
/// # Errors
/// `Internal` for a part that does not read or write as Parquet.
pub fn erase_part(part: bytes::Bytes, user_key: &str, path: &Path) -> Result<Option<u64>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let failed = |e: parquet::errors::ParquetError| StorageError::Internal(format!("{}: {e}", path.display()));
    let builder = ParquetRecordBatchReaderBuilder::try_new(part).map_err(failed)?;
    let schema = builder.schema().clone();
    let group_rows = builder.metadata().row_groups().first().map_or(1, |g| usize::try_from(g.num_rows()).unwrap_or(1));
    let mut batches = Vec::new();
    let mut erased = 0u64;
    for batch in builder.build().map_err(failed)? {
        let batch = batch?;
        match crate::erasure::erase_rows(&batch, user_key)? {
            Some((batch, hit)) => {
                erased += hit.iter().filter(|h| **h).count() as u64;
                batches.push(batch);
            }
            None => batches.push(batch),
        }
    }
    if erased == 0 {
        return Ok(None);
    }
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(failed)?))
        .set_max_row_group_row_count(Some(group_rows.max(1)))
        .build();
    let file = std::fs::File::create(path).at(path)?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(failed)?;
    for batch in &batches {
        writer.write(batch).map_err(failed)?;
    }
    let file = writer.into_inner().map_err(failed)?;
    file.sync_all().at(path)?;
    Ok(Some(erased))
}

/// Whether column `name` of a `level` segment is an event code written as
/// its name.
fn named_code(name: &str, level: Level) -> Option<&'static [&'static str]> {
    match name {
        _ if level != Level::Raw => None,
        n if n == ColumnId::Type.name() => Some(&EventType::NAMES),
        n if n == ColumnId::InvalidReason.name() => Some(&InvalidReason::NAMES),
        _ => None,
    }
}

/// The segment schema (of a `level` segment) as the mirror writes it.
pub(crate) fn plain_schema(schema: &Schema, level: Level) -> Arc<Schema> {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match (f.name().as_str(), f.data_type()) {
            ("ts", DataType::Int64) => {
                Field::new(f.name(), DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())), f.is_nullable())
            }
            (name, DataType::UInt8) if named_code(name, level).is_some() => {
                Field::new(f.name(), DataType::Utf8, f.is_nullable())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// `batch` (of the segment's schema) as rows of `schema` (`plain_schema`).
fn plain_batch(batch: &RecordBatch, schema: &Arc<Schema>, level: Level) -> Result<RecordBatch> {
    let mismatch = |name: &str| StorageError::Internal(format!("column {name} is not of its schema's type"));
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| -> Result<ArrayRef> {
            let name = field.name().as_str();
            Ok(match field.data_type() {
                DataType::Timestamp(..) => {
                    let ms = column.as_any().downcast_ref::<Int64Array>().ok_or_else(|| mismatch(name))?;
                    let us: TimestampMicrosecondArray = ms.unary(|ms| ms.saturating_mul(1_000));
                    Arc::new(us.with_timezone("UTC"))
                }
                DataType::Utf8 if let Some(names) = named_code(name, level) => {
                    let codes = column.as_any().downcast_ref::<UInt8Array>().ok_or_else(|| mismatch(name))?;
                    let named = codes
                        .iter()
                        .map(|c| c.map(|c| names.get(usize::from(c)).copied().ok_or(c)).transpose())
                        .collect::<std::result::Result<Vec<Option<&str>>, u8>>()
                        .map_err(|c| StorageError::Internal(format!("column {name}: unknown code {c}")))?;
                    Arc::new(StringArray::from(named))
                }
                _ => column.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
