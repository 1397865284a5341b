//! Rollup rows to coarser rollup rows: minutes (or hours) of a final day
//! merged into its hours and into the day.
//!
//! ```text
//!  rows of the rollup's segments (any granularity at most the target's)
//!    ─► key per row: (bucket of the target, each dimension's value as a code)
//!    ─► per key: measure sums (i128, must end in i64), sketches merged ─► rows, in first-seen order
//! ```
//!
//! Summing rows is exact for every measure (they are sums), and merging
//! HyperLogLog sketches gives the sketch of the union of their users, so
//! the merged rows answer what the rows they came from would, at the
//! coarser granularity.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use rustc_hash::FxHashMap;

use super::def::{RollupDef, TS_COLUMN, USERS_COLUMN};
use crate::error::{Result, StorageError};
use crate::hll::Hll;
use crate::measure::Measure;
use crate::time::floor_to;

/// A column of `batch` by name, as `T`.
fn column<'b, T: 'static>(batch: &'b RecordBatch, name: &str) -> Result<&'b T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| StorageError::Internal(format!("rollup rows without a {name} column of the expected type")))
}

/// The rows of `target` (a rollup at a coarser granularity) that `batches`
/// (rows of the same rollup) sum to, as a batch of `target.schema()`;
/// `None` when a sum does not fit an i64.
///
/// # Errors
/// A batch that lacks a column of the rollup, or a sketch that does not
/// decode (a damaged segment).
pub fn merge(target: &RollupDef, batches: &[RecordBatch]) -> Result<Option<RecordBatch>> {
    let width = target.granularity().width_ms();
    let k = Measure::sums().count();
    let dims: Vec<&str> = target.dims().iter().map(|d| d.name()).collect();
    // Dimension values as codes shared by every batch: 0 for NULL. A key is
    // (bucket start, codes).
    let mut codes: Vec<FxHashMap<&str, u32>> = vec![FxHashMap::default(); dims.len()];
    let mut values: Vec<Vec<&str>> = vec![Vec::new(); dims.len()];
    let mut groups: FxHashMap<Box<[i64]>, usize> = FxHashMap::default();
    let mut keys: Vec<Box<[i64]>> = Vec::new();
    let mut totals: Vec<i128> = Vec::new();
    let mut users: Vec<Option<Hll>> = Vec::new();
    let mut key = Vec::with_capacity(dims.len() + 1);
    for batch in batches {
        let ts = column::<Int64Array>(batch, TS_COLUMN)?.values();
        let dim_columns =
            dims.iter().map(|d| column::<StringArray>(batch, d)).collect::<Result<Vec<&StringArray>>>()?;
        let measures =
            Measure::sums().map(|m| column::<Int64Array>(batch, m.name())).collect::<Result<Vec<&Int64Array>>>()?;
        let sketches = column::<BinaryArray>(batch, USERS_COLUMN)?;
        for row in 0..batch.num_rows() {
            key.clear();
            key.push(floor_to(ts[row], width));
            for (j, c) in dim_columns.iter().enumerate() {
                let code = if c.is_null(row) {
                    0
                } else {
                    let v = c.value(row);
                    let next = values[j].len() as u32 + 1;
                    *codes[j].entry(v).or_insert_with(|| {
                        values[j].push(v);
                        next
                    })
                };
                key.push(i64::from(code));
            }
            let g = match groups.get(key.as_slice()) {
                Some(&g) => g,
                None => {
                    let g = keys.len();
                    keys.push(key.clone().into_boxed_slice());
                    groups.insert(key.clone().into_boxed_slice(), g);
                    totals.extend(std::iter::repeat_n(0i128, k));
                    users.push(None);
                    g
                }
            };
            for (t, m) in totals[g * k..g * k + k].iter_mut().zip(&measures) {
                *t += i128::from(m.value(row));
            }
            if sketches.is_valid(row) {
                let h = Hll::from_bytes(sketches.value(row))
                    .map_err(|e| StorageError::Internal(format!("a users sketch does not decode: {e}")))?;
                match &mut users[g] {
                    Some(u) => u.merge(&h),
                    slot => *slot = Some(h),
                }
            }
        }
    }
    let Ok(totals) = totals.into_iter().map(i64::try_from).collect::<Result<Vec<i64>, _>>() else {
        return Ok(None);
    };

    let ng = keys.len();
    let schema = target.schema();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.columns().len());
    columns.push(Arc::new(Int64Array::from_iter_values(keys.iter().map(|key| key[0]))));
    for (j, dim_values) in values.iter().enumerate() {
        let strings: StringArray = keys
            .iter()
            .map(|key| usize::try_from(key[j + 1]).ok().and_then(|c| c.checked_sub(1)).map(|c| dim_values[c]))
            .collect();
        columns.push(Arc::new(strings));
    }
    for j in 0..k {
        columns.push(Arc::new(Int64Array::from_iter_values((0..ng).map(|g| totals[g * k + j]))));
    }
    let sketches: BinaryArray = users.iter().map(|u| u.as_ref().map(Hll::to_bytes)).collect();
    columns.push(Arc::new(sketches));
    Ok(Some(RecordBatch::try_new(schema.arrow(), columns)?))
}
