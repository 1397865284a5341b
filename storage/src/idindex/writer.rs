//! Builds a segment's id index in memory, as the files tantivy wrote.

use std::path::PathBuf;

use arrow_array::{Array, StringArray};
use rustc_hash::FxHashSet;
use tantivy::directory::{OwnedBytes, RamDirectory};
use tantivy::indexer::NoMergePolicy;
use tantivy::schema::{FAST, IndexRecordOption, Schema, TextFieldIndexing, TextOptions};
use tantivy::store::Compressor;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{Directory, Index, IndexSettings, IndexWriter, TantivyDocument};

use super::tokenizer::{IdTokenizer, push_value};
use super::{GRANULE_FIELD, IDS_FIELD, TOKENIZER};
use crate::error::{Result, StorageError};

/// Memory the tantivy writer may hold before it writes what it has as one
/// of the index's (tantivy) segments: a seal's working memory, not kept.
const WRITER_BUDGET_BYTES: usize = 64 << 20;

/// The files of one id index, smallest first.
pub(crate) struct IdIndexFiles {
    pub granule_rows: u32,
    /// Shared with the in-memory directory they were written to, not copied.
    pub files: Vec<(String, OwnedBytes)>,
}

/// Whether a value is a term: an empty one is not indexed, and tantivy
/// drops tokens above its length limit, so neither is looked up either (a
/// filter on one is checked on every row).
pub(super) fn indexable(value: &str) -> bool {
    !value.is_empty() && value.len() <= tantivy::tokenizer::MAX_TOKEN_LEN
}

/// The tantivy schema of every id index: the values, and each document's granule.
fn schema() -> Schema {
    let mut b = Schema::builder();
    let indexing = TextFieldIndexing::default()
        .set_tokenizer(TOKENIZER)
        .set_index_option(IndexRecordOption::Basic)
        .set_fieldnorms(false);
    b.add_text_field(IDS_FIELD, TextOptions::default().set_indexing_options(indexing));
    b.add_u64_field(GRANULE_FIELD, FAST);
    b.build()
}

fn failed(e: impl std::fmt::Display) -> StorageError {
    StorageError::Internal(format!("building the id index in memory: {e}"))
}

/// Indexes `columns` (the id columns, each as long as the batch) over the
/// rows in stored order `perm` (stored row `r` is input row `perm[r]`).
/// `commit_every` granules the writer commits what it has as one tantivy
/// segment (the segment writer passes `usize::MAX`: tantivy then cuts
/// segments only at its memory budget; tests pass less, to get several).
pub(crate) fn build(
    columns: &[&StringArray],
    perm: &[u32],
    granule_rows: u32,
    commit_every: usize,
) -> Result<IdIndexFiles> {
    if granule_rows == 0 {
        return Err(StorageError::Internal("id index granule of 0 rows".into()));
    }
    let dir = RamDirectory::create();
    let settings = IndexSettings { docstore_compression: Compressor::None, ..IndexSettings::default() };
    let index = Index::builder().schema(schema()).settings(settings).open_or_create(dir.clone()).map_err(failed)?;
    index.tokenizers().register(TOKENIZER, TextAnalyzer::from(IdTokenizer::default()));
    let s = index.schema();
    let (ids, granule) = (s.get_field(IDS_FIELD).map_err(failed)?, s.get_field(GRANULE_FIELD).map_err(failed)?);
    let mut writer: IndexWriter = index.writer_with_num_threads(1, WRITER_BUDGET_BYTES).map_err(failed)?;
    writer.set_merge_policy(Box::new(NoMergePolicy));
    let mut seen: FxHashSet<&str> = FxHashSet::default();
    for (g, rows) in perm.chunks(granule_rows as usize).enumerate() {
        seen.clear();
        let mut text = String::new();
        for &row in rows {
            for col in columns {
                let row = row as usize;
                if col.is_valid(row) {
                    let v = col.value(row);
                    if indexable(v) && seen.insert(v) {
                        push_value(&mut text, v);
                    }
                }
            }
        }
        let mut doc = TantivyDocument::new();
        doc.add_text(ids, text);
        doc.add_u64(granule, g as u64);
        writer.add_document(doc).map_err(failed)?;
        if (g + 1) % commit_every.max(1) == 0 {
            writer.commit().map_err(failed)?;
        }
    }
    writer.commit().map_err(failed)?;
    writer.wait_merging_threads().map_err(failed)?;
    let mut names: Vec<PathBuf> = index.directory().list_managed_files().into_iter().collect();
    names.push(PathBuf::from("meta.json"));
    names.sort();
    names.dedup();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        // The writer's bookkeeping may name files it has since deleted.
        if !dir.exists(&name).map_err(failed)? {
            continue;
        }
        let bytes = dir.open_read(&name).map_err(failed)?.read_bytes().map_err(failed)?;
        let name = name.to_str().ok_or_else(|| failed(format!("file name {}", name.display())))?.to_owned();
        files.push((name, bytes));
    }
    // Small files first: what opening the index reads (metadata, footers of
    // the fast fields and the doc store) then sits in the section's first
    // bytes, one range of a cold segment, ahead of the terms and postings.
    files.sort_by(|(a, x), (b, y)| (x.len(), a).cmp(&(y.len(), b)));
    Ok(IdIndexFiles { granule_rows, files })
}
