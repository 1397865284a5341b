//! Looks values up in a segment's id index, reading the tantivy files
//! packed in the segment's id section through a read-only tantivy
//! [`Directory`] over that section.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use roaring::RoaringBitmap;
use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{DirectoryLock, FileHandle, Lock, OwnedBytes, WatchCallback, WatchHandle, WritePtr};
use tantivy::schema::{Field, IndexRecordOption};
use tantivy::{Directory, DocSet, HasLen, Index, ReloadPolicy, Searcher, TERMINATED, Term};

use super::writer::indexable;
use super::{GRANULE_FIELD, IDS_FIELD};

/// The bytes of one segment's id section: the segment reader's side of
/// the seam.
pub(crate) trait SectionBytes: Send + Sync + fmt::Debug + 'static {
    /// Bytes `range` of the section (offsets from its start).
    ///
    /// # Errors
    /// An `io::Error` saying what failed: the range is outside the section,
    /// or the object store could not be read.
    fn read(&self, range: Range<u64>) -> io::Result<Vec<u8>>;
}

/// An open id index. Cheap to share; lookups take `&self`.
pub(crate) struct IdIndex {
    searcher: Searcher,
    ids: Field,
    granule_rows: u32,
}

impl fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdIndex").field("granule_rows", &self.granule_rows).finish_non_exhaustive()
    }
}

impl IdIndex {
    /// Opens the index whose files are at `files` (name, range in the
    /// section) of `bytes`: reads tantivy's metadata and footers, not the
    /// terms.
    ///
    /// # Errors
    /// Why the files do not form an index, or could not be read.
    pub(crate) fn open(
        files: &[(String, Range<u64>)],
        granule_rows: u32,
        bytes: Arc<dyn SectionBytes>,
    ) -> Result<IdIndex, String> {
        if granule_rows == 0 {
            return Err("granule of 0 rows".into());
        }
        let files = files.iter().map(|(name, range)| (PathBuf::from(name), range.clone())).collect();
        let dir = SectionDirectory { files: Arc::new(files), bytes };
        let index = Index::open(dir).map_err(|e| format!("opening it: {e}"))?;
        let ids = index.schema().get_field(IDS_FIELD).map_err(|e| e.to_string())?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| format!("opening its segments: {e}"))?;
        Ok(IdIndex { searcher: reader.searcher(), ids, granule_rows })
    }

    /// The granules that may hold one of `values`, or `None` when a value
    /// cannot be looked up (empty, or longer than a term may be: the
    /// index has no term for it, so it cannot rule a granule out).
    ///
    /// # Errors
    /// Why the index could not be read.
    pub(crate) fn granules(&self, values: &[String]) -> Result<Option<RoaringBitmap>, String> {
        if !values.iter().all(|v| indexable(v)) {
            return Ok(None);
        }
        let mut out = RoaringBitmap::new();
        for segment in self.searcher.segment_readers() {
            let postings_of = segment.inverted_index(self.ids).map_err(|e| format!("its terms: {e}"))?;
            let mut granules = None;
            for v in values {
                let term = Term::from_field_text(self.ids, v);
                let Some(mut docs) =
                    postings_of.read_postings(&term, IndexRecordOption::Basic).map_err(|e| format!("postings: {e}"))?
                else {
                    continue;
                };
                let column = match &granules {
                    Some(c) => c,
                    None => granules.insert(
                        segment.fast_fields().u64(GRANULE_FIELD).map_err(|e| format!("its granule column: {e}"))?,
                    ),
                };
                let mut doc = docs.doc();
                while doc != TERMINATED {
                    let g = column.first(doc).ok_or_else(|| format!("document {doc} has no granule"))?;
                    out.insert(u32::try_from(g).map_err(|_| format!("granule {g} out of range"))?);
                    doc = docs.advance();
                }
            }
        }
        Ok(Some(out))
    }

    /// The rows (stored row ids) of `granules` in a segment of `rows` rows.
    pub(crate) fn rows_of(&self, granules: &RoaringBitmap, rows: u32) -> RoaringBitmap {
        let mut out = RoaringBitmap::new();
        let g = u64::from(self.granule_rows);
        for granule in granules {
            let start = u64::from(granule) * g;
            let end = (start + g).min(u64::from(rows));
            if start < end {
                out.insert_range(start as u32..end as u32);
            }
        }
        out
    }
}

/// The id section as a read-only tantivy directory.
#[derive(Clone)]
struct SectionDirectory {
    files: Arc<HashMap<PathBuf, Range<u64>>>,
    bytes: Arc<dyn SectionBytes>,
}

impl fmt::Debug for SectionDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SectionDirectory").field("files", &self.files.len()).finish_non_exhaustive()
    }
}

/// One file of the section.
#[derive(Debug)]
struct SectionFile {
    bytes: Arc<dyn SectionBytes>,
    range: Range<u64>,
}

impl HasLen for SectionFile {
    fn len(&self) -> usize {
        // The segment reader checked the range against the section (and a
        // section is far below 2^64 bytes, or 2^32 on 32-bit targets).
        usize::try_from(self.range.end.saturating_sub(self.range.start)).unwrap_or(usize::MAX)
    }
}

impl FileHandle for SectionFile {
    fn read_bytes(&self, range: Range<usize>) -> io::Result<OwnedBytes> {
        let at = |offset: usize| self.range.start.checked_add(offset as u64).filter(|&x| x <= self.range.end);
        match (at(range.start), at(range.end)) {
            (Some(start), Some(end)) if start <= end => Ok(OwnedBytes::new(self.bytes.read(start..end)?)),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("range {range:?} outside the file"))),
        }
    }
}

fn read_only(path: &Path) -> Arc<io::Error> {
    Arc::new(io::Error::new(io::ErrorKind::PermissionDenied, format!("{} is in a read-only id index", path.display())))
}

impl Directory for SectionDirectory {
    fn get_file_handle(&self, path: &Path) -> Result<Arc<dyn FileHandle>, OpenReadError> {
        let range = self.files.get(path).ok_or_else(|| OpenReadError::FileDoesNotExist(path.to_owned()))?;
        Ok(Arc::new(SectionFile { bytes: self.bytes.clone(), range: range.clone() }))
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        Err(DeleteError::IoError { io_error: read_only(path), filepath: path.to_owned() })
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        Ok(self.files.contains_key(path))
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        Err(OpenWriteError::IoError { io_error: read_only(path), filepath: path.to_owned() })
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        let range = self.files.get(path).ok_or_else(|| OpenReadError::FileDoesNotExist(path.to_owned()))?;
        self.bytes
            .read(range.clone())
            .map_err(|e| OpenReadError::IoError { io_error: Arc::new(e), filepath: path.to_owned() })
    }

    fn atomic_write(&self, path: &Path, _data: &[u8]) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("{} is in a read-only id index", path.display())))
    }

    fn sync_directory(&self) -> io::Result<()> {
        Ok(())
    }

    /// Readers take tantivy's meta lock; nothing writes here to exclude.
    fn acquire_lock(&self, _lock: &Lock) -> Result<DirectoryLock, LockError> {
        Ok(DirectoryLock::from(Box::new(())))
    }

    fn watch(&self, _callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        Ok(WatchHandle::empty())
    }
}
