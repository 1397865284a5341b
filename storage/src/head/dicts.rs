//! Dictionary codes of the head's dimension columns, one dictionary per
//! run of chunks: scans filter and group unsealed rows by code, as they do
//! the rows of segments, and read a run as one batch with one dictionary
//! instead of each chunk (one per WAL record and partition, often a few
//! hundred rows) with a dictionary of its own.
//!
//! ```text
//!  Head::insert ─► a partition's chunks join its open run until it holds RUN_ROWS rows
//!  scan of a run, dimension column c ─► chunks without codes? encode them against the run's dictionary
//!                                        └─ values it lacks ─► a new sorted dictionary, earlier chunks' codes remapped
//!  bytes: 4 a row a column, the dictionary and its index; in the head's gauge until the run is dropped
//! ```
//!
//! Codes are built by the first scan that reads a column, not at ingest:
//! a store nobody queries pays nothing. A run is bounded (`RUN_ROWS`), so
//! a new value remaps at most that many codes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::{Array, StringArray};
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};

use super::HeadChunk;
use crate::event::{COLUMNS, ColumnId, ColumnKind};
use crate::ids::Lsn;
use crate::segment::Dictionary;

/// A column of chunks as codes: the dictionary, and each chunk's codes.
pub type RunCodes = (Arc<Dictionary>, Vec<Arc<[u32]>>);

/// Rows of a partition's chunks that share one run.
pub(super) const RUN_ROWS: usize = 65_536;

/// Chunks of one partition that share dictionaries.
#[derive(Debug)]
pub struct Run {
    /// Indexed by `ColumnId as usize`; `None` until a scan reads the column.
    columns: Vec<Mutex<Option<RunColumn>>>,
    bytes: AtomicU64,
    /// The head's total, which this run's bytes are part of.
    gauge: Arc<AtomicU64>,
}

/// One column of a run's chunks as codes of one sorted dictionary.
#[derive(Debug)]
struct RunColumn {
    dict: Arc<Dictionary>,
    /// Each entry of `dict` and its code.
    index: FxHashMap<String, u32>,
    /// The codes of each chunk's rows, by the chunk's LSN (a partition has
    /// one chunk per WAL record).
    chunks: FxHashMap<Lsn, Arc<[u32]>>,
    /// Bytes of the codes in `chunks`.
    codes_bytes: usize,
}

impl RunColumn {
    fn bytes(&self) -> u64 {
        // The index holds each entry again, with a map slot.
        let index = self.dict.memory_bytes() + self.index.len() * (size_of::<String>() + size_of::<u32>());
        (self.codes_bytes + self.dict.memory_bytes() + index) as u64
    }

    fn keep(&mut self, lsn: Lsn, codes: Arc<[u32]>) {
        self.codes_bytes += codes.len() * size_of::<u32>();
        if let Some(old) = self.chunks.insert(lsn, codes) {
            self.codes_bytes -= old.len() * size_of::<u32>();
        }
    }

    fn drop_chunk(&mut self, lsn: Lsn) {
        if let Some(old) = self.chunks.remove(&lsn) {
            self.codes_bytes -= old.len() * size_of::<u32>();
        }
    }

    /// The codes of `rows` of `array`, or `None` if one of their values is
    /// not in the dictionary (added to `missing`).
    fn encode<'a>(
        &self,
        array: &'a StringArray,
        rows: impl Iterator<Item = usize>,
        missing: &mut FxHashSet<&'a str>,
    ) -> Option<Arc<[u32]>> {
        let mut complete = true;
        let codes: Vec<u32> = rows
            .map(|i| {
                if array.is_null(i) {
                    return 0;
                }
                let v = array.value(i);
                self.index.get(v).copied().unwrap_or_else(|| {
                    complete = false;
                    missing.insert(v);
                    0
                })
            })
            .collect();
        complete.then(|| codes.into())
    }

    /// The dictionary with `values` added, every chunk's codes remapped to it.
    fn extend(&mut self, values: &FxHashSet<&str>) {
        let old = self.dict.clone();
        let entries: Vec<&str> =
            (1..=old.len() as u32).filter_map(|c| old.value(c)).chain(values.iter().copied()).collect();
        let dict = Dictionary::from_distinct(entries);
        let index: FxHashMap<String, u32> =
            (1..=dict.len() as u32).filter_map(|c| dict.value(c).map(|v| (v.to_string(), c))).collect();
        // new_code[old code]; NULL stays 0.
        let new_code: Vec<u32> =
            (0..=old.len() as u32).map(|c| old.value(c).and_then(|v| index.get(v).copied()).unwrap_or(0)).collect();
        for codes in self.chunks.values_mut() {
            *codes = codes.iter().map(|&c| new_code.get(c as usize).copied().unwrap_or(0)).collect();
        }
        self.dict = Arc::new(dict);
        self.index = index;
    }
}

impl Run {
    pub fn new(gauge: Arc<AtomicU64>) -> Run {
        Run { columns: COLUMNS.iter().map(|_| Mutex::new(None)).collect(), bytes: AtomicU64::new(0), gauge }
    }

    /// Column `c` of `chunks` (chunks of this run) as codes of one
    /// dictionary, the codes of each chunk's rows in order; `None` if `c`
    /// is not a string dimension.
    pub fn codes(&self, c: ColumnId, chunks: &[&HeadChunk]) -> Option<RunCodes> {
        let spec = c.spec();
        if !spec.dimension || spec.kind != ColumnKind::Str {
            return None;
        }
        let mut slot = self.columns.get(c as usize)?.lock();
        let col = slot.get_or_insert_with(|| RunColumn {
            dict: Arc::new(Dictionary::default()),
            index: FxHashMap::default(),
            chunks: FxHashMap::default(),
            codes_bytes: 0,
        });
        let before = col.bytes();
        let new: Vec<&HeadChunk> = chunks.iter().copied().filter(|ch| !col.chunks.contains_key(&ch.lsn)).collect();
        if !new.is_empty() {
            let mut missing = FxHashSet::default();
            let mut pending = Vec::new();
            for ch in &new {
                match col.encode(ch.source().str_column(c), rows_of(ch), &mut missing) {
                    Some(codes) => col.keep(ch.lsn, codes),
                    None => pending.push(*ch),
                }
            }
            if !missing.is_empty() {
                col.extend(&missing);
                let mut none = FxHashSet::default();
                for ch in pending {
                    // Every value is in the extended dictionary.
                    let codes = col.encode(ch.source().str_column(c), rows_of(ch), &mut none)?;
                    col.keep(ch.lsn, codes);
                }
            }
            let after = col.bytes();
            self.bytes.fetch_add(after.wrapping_sub(before), Ordering::Relaxed);
            self.gauge.fetch_add(after.wrapping_sub(before), Ordering::Relaxed);
        }
        let codes = chunks.iter().map(|ch| col.chunks.get(&ch.lsn).cloned()).collect::<Option<Vec<_>>>()?;
        Some((col.dict.clone(), codes))
    }

    /// Drops the codes of sealed chunks: a run outlives them while later
    /// chunks of its partition are in the head. Called under the store's
    /// lock, it never waits: a column a scan is encoding keeps them until
    /// the run is dropped (at most `RUN_ROWS` rows of codes).
    pub(super) fn forget(&self, sealed: &[Lsn]) {
        for slot in &self.columns {
            let Some(mut slot) = slot.try_lock() else { continue };
            let Some(col) = slot.as_mut() else { continue };
            let before = col.bytes();
            for lsn in sealed {
                col.drop_chunk(*lsn);
            }
            let freed = before.saturating_sub(col.bytes());
            self.bytes.fetch_sub(freed, Ordering::Relaxed);
            self.gauge.fetch_sub(freed, Ordering::Relaxed);
        }
    }
}

/// The chunk's rows of its source.
fn rows_of(chunk: &HeadChunk) -> Box<dyn Iterator<Item = usize> + '_> {
    match chunk.rows() {
        Some(rows) => Box::new(rows.iter().map(|&i| i as usize)),
        None => Box::new(0..chunk.source().num_rows()),
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.gauge.fetch_sub(*self.bytes.get_mut(), Ordering::Relaxed);
    }
}
