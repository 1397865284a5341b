//! Events to rollup rows, per minute or hour (the rollup's granularity).
//!
//! ```text
//!  events ─► per dimension: codes (0 = NULL), once for every rollup ─► key per row (bucket, codes), packed in a u128
//!         ─► group per key: measure sums (i128, must end in i64), users sketch ─► rows, in first-seen order
//! ```

use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Int64Array, RecordBatch, StringArray};
use rustc_hash::FxHashMap;

use super::def::RollupDef;
use crate::error::{Result, StorageError};
use crate::event::{ColumnId, EventBatch, EventType, InvalidReason};
use crate::hll::{Hll, hash_bytes};
use crate::measure::Measure;
use crate::time::floor_to;

/// One dimension's values as codes: 0 for NULL, else 1 + index in `values`.
struct Codes<'a> {
    codes: Vec<u32>,
    values: Vec<&'a str>,
}

fn encode(array: &StringArray) -> Codes<'_> {
    use arrow_array::Array;
    let mut ids: FxHashMap<&str, u32> = FxHashMap::default();
    let mut values = Vec::new();
    let codes = (0..array.len())
        .map(|i| {
            if array.is_null(i) {
                return 0;
            }
            let v = array.value(i);
            *ids.entry(v).or_insert_with(|| {
                values.push(v);
                values.len() as u32
            })
        })
        .collect();
    Codes { codes, values }
}

/// Bits that hold every value up to `max`.
fn bits(max: u64) -> u32 {
    64 - max.leading_zeros()
}

/// What every rollup over one batch of events shares: each dimension's
/// codes (encoded once, for whichever rollups need them), each row's
/// measure values and `user_key` hash.
pub struct RollupInput<'a> {
    events: &'a EventBatch,
    dims: FxHashMap<ColumnId, Codes<'a>>,
    /// `Measure::sums()` values, row-major.
    values: Vec<i64>,
    users: Vec<Option<u64>>,
}

impl<'a> RollupInput<'a> {
    pub fn new(events: &'a EventBatch, defs: &[RollupDef]) -> Result<RollupInput<'a>> {
        let n = events.num_rows();
        let mut dims = FxHashMap::default();
        for d in defs.iter().flat_map(|d| d.dims()) {
            dims.entry(*d).or_insert_with(|| encode(events.str_column(*d)));
        }
        let kinds = events.u8_column(ColumnId::Type).values();
        let invalid = events.u8_column(ColumnId::InvalidReason).values();
        let attributed = events.bool_column(ColumnId::Attributed);
        let cost = events.i64_column(ColumnId::CostMicros).values();
        let value = events.i64_column(ColumnId::ValueMicros).values();
        let sums: Vec<Measure> = Measure::sums().collect();
        let mut values = Vec::with_capacity(n * sums.len());
        for row in 0..n {
            // Invariant: EventBatch checks its enum codes at construction.
            let kind = EventType::from_code(kinds[row])
                .ok_or_else(|| StorageError::Internal(format!("event type code {}", kinds[row])))?;
            let reason = InvalidReason::from_code(invalid[row])
                .ok_or_else(|| StorageError::Internal(format!("invalid reason code {}", invalid[row])))?;
            values.extend(
                sums.iter()
                    .map(|m| m.of_parts(kind, reason, attributed.value(row), cost[row], value[row]).unwrap_or(0)),
            );
        }
        let user_key = events.str_column(ColumnId::UserKey);
        let users = (0..n)
            .map(|row| {
                use arrow_array::Array;
                user_key.is_valid(row).then(|| hash_bytes(user_key.value(row).as_bytes()))
            })
            .collect();
        Ok(RollupInput { events, dims, values, users })
    }

    /// The rows of `def` (one per bucket of its granularity and dimension
    /// combination), as a batch of `def.schema()`; `None` when a group's
    /// sum does not fit an i64 (see the module docs of `rollup`).
    pub fn rows(&self, def: &RollupDef) -> Result<Option<RecordBatch>> {
        let events = self.events;
        let n = events.num_rows();
        let width = def.granularity().width_ms();
        // Bucket numbers (not starts, which saturate at the low end of i64).
        let buckets: Vec<i64> = events.ts().iter().map(|&t| t.div_euclid(width)).collect();
        let dims = def
            .dims()
            .iter()
            .map(|d| self.dims.get(d).ok_or_else(|| StorageError::Internal(format!("{} not encoded", d.name()))))
            .collect::<Result<Vec<&Codes<'_>>>>()?;

        // Group ids per row, keyed on (bucket - first bucket, codes) packed
        // into 128 bits, or on a vector when they do not fit.
        let first = buckets.iter().copied().min().unwrap_or(0);
        let last = buckets.iter().copied().max().unwrap_or(0);
        let widths: Vec<u32> = std::iter::once(bits(last.abs_diff(first)))
            .chain(dims.iter().map(|d| bits(d.values.len() as u64)))
            .collect();
        let key_of = |row: usize, out: &mut Vec<u64>| {
            out.clear();
            out.push(buckets[row].abs_diff(first));
            out.extend(dims.iter().map(|d| u64::from(d.codes[row])));
        };
        let mut rep: Vec<usize> = Vec::new(); // a row of each group
        let mut gid: Vec<u32> = Vec::with_capacity(n);
        let mut parts = Vec::with_capacity(widths.len());
        if widths.iter().sum::<u32>() <= 128 {
            let mut groups: FxHashMap<u128, u32> = FxHashMap::default();
            for row in 0..n {
                key_of(row, &mut parts);
                let key = parts.iter().zip(&widths).fold(0u128, |k, (&p, &w)| (k << w) | u128::from(p));
                let next = rep.len() as u32;
                let g = *groups.entry(key).or_insert_with(|| {
                    rep.push(row);
                    next
                });
                gid.push(g);
            }
        } else {
            let mut groups: FxHashMap<Vec<u64>, u32> = FxHashMap::default();
            for row in 0..n {
                key_of(row, &mut parts);
                let next = rep.len() as u32;
                let g = *groups.entry(parts.clone()).or_insert_with(|| {
                    rep.push(row);
                    next
                });
                gid.push(g);
            }
        }
        let ng = rep.len();

        let k = Measure::sums().count();
        // In i128: a sum may pass outside i64 on its way and end inside.
        let mut totals = vec![0i128; ng * k];
        for (row, &g) in gid.iter().enumerate() {
            let base = g as usize * k;
            for (t, &v) in totals[base..base + k].iter_mut().zip(&self.values[row * k..row * k + k]) {
                *t += i128::from(v);
            }
        }
        let Ok(totals) = totals.into_iter().map(i64::try_from).collect::<Result<Vec<i64>, _>>() else {
            return Ok(None);
        };
        // Users: the (group, hash) pairs sorted, each group's sketch built once.
        let mut pairs: Vec<(u32, u64)> = gid.iter().zip(&self.users).filter_map(|(&g, h)| h.map(|h| (g, h))).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut users: Vec<Option<Vec<u8>>> = vec![None; ng];
        for run in pairs.chunk_by(|a, b| a.0 == b.0) {
            let mut h = Hll::default();
            for &(_, hash) in run {
                h.insert_hash(hash);
            }
            users[run[0].0 as usize] = Some(h.to_bytes());
        }

        let schema = def.schema();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.columns().len());
        let starts = rep.iter().map(|&r| floor_to(events.ts()[r], width));
        columns.push(Arc::new(Int64Array::from_iter_values(starts)));
        for d in &dims {
            let strings: StringArray =
                rep.iter().map(|&r| d.codes[r].checked_sub(1).map(|c| d.values[c as usize])).collect();
            columns.push(Arc::new(strings));
        }
        for j in 0..k {
            columns.push(Arc::new(Int64Array::from_iter_values((0..ng).map(|g| totals[g * k + j]))));
        }
        let sketches: BinaryArray = users.iter().map(|u| u.as_deref()).collect();
        columns.push(Arc::new(sketches));
        Ok(Some(RecordBatch::try_new(schema.arrow(), columns)?))
    }
}
