//! Recovery: reads every WAL file in LSN order, hands each valid record to
//! the caller, cuts off a torn tail of the last file and reports anything
//! else as corruption.
//!
//! A damaged record at offset `off` of the last file is a torn tail when
//! - it is incomplete (its header or payload runs past end of file), or its
//!   checksum fails and every byte after its claimed end is zero; and
//! - no valid record carrying the next LSN starts anywhere after `off` (this
//!   catches a flipped length field in a middle record, which would otherwise
//!   look like an incomplete record and silently drop the records after it).
//!
//! The file is then truncated at `off` and fsynced. A damaged record in any
//! other file, or a valid record with the wrong LSN, is
//! [`StorageError::WalCorrupt`].

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result, StorageError};
use crate::ids::Lsn;
use crate::wal::format::{
    self, FILE_HEADER_LEN, MAGIC, RECORD_HEADER_LEN, RecordHeader, V1_FILE_HEADER_LEN, VERSION, file_header, record_crc,
};

/// A WAL file that is complete and will not be written again.
#[derive(Debug, Clone)]
pub(crate) struct ClosedFile {
    pub(crate) path: PathBuf,
    pub(crate) first_lsn: Lsn,
    pub(crate) last_lsn: Lsn,
}

/// The last WAL file, where appends continue.
#[derive(Debug)]
pub(crate) struct TailFile {
    pub(crate) path: PathBuf,
    pub(crate) first_lsn: Lsn,
    /// Length of the valid prefix (the file has been truncated to it).
    pub(crate) len_bytes: u64,
    pub(crate) records: u64,
    /// The format version of its header.
    pub(crate) version: u32,
}

/// What recovery found on disk.
#[derive(Debug)]
pub(crate) struct Recovered {
    pub(crate) closed: Vec<ClosedFile>,
    /// `None` when the directory held no WAL file.
    pub(crate) tail: Option<TailFile>,
    pub(crate) next_lsn: Lsn,
}

/// The WAL files of `dir`, sorted by first LSN.
pub(crate) fn list_files(dir: &Path) -> Result<Vec<(Lsn, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(lsn) = format::parse_file_name(name) {
            files.push((lsn, entry.path()));
        } else if Path::new(name).extension().is_some_and(|e| e == format::EXTENSION) {
            return Err(corrupt(&entry.path(), 0, "file name is not {first_lsn:020}.wal"));
        }
    }
    files.sort();
    Ok(files)
}

/// Replays every WAL file in `dir` through `visit`, repairing a torn tail.
pub(crate) fn recover(dir: &Path, fsync: bool, visit: &mut dyn FnMut(Lsn, &[u8]) -> Result<()>) -> Result<Recovered> {
    let files = list_files(dir)?;
    let mut closed = Vec::new();
    let mut tail = None;
    let mut next_lsn = files.first().map_or(Lsn(1), |(lsn, _)| *lsn);
    for (i, (first_lsn, path)) in files.iter().enumerate() {
        let is_last = i + 1 == files.len();
        if *first_lsn == Lsn(0) {
            return Err(corrupt(path, 0, "LSN 0 is never assigned"));
        }
        if *first_lsn != next_lsn {
            return Err(corrupt(
                path,
                0,
                &format!("file starts at LSN {first_lsn} but the previous file ends before LSN {next_lsn}"),
            ));
        }
        let scan = scan_file(path, *first_lsn, is_last, fsync, visit)?;
        if is_last {
            tail = Some(TailFile {
                path: path.clone(),
                first_lsn: *first_lsn,
                len_bytes: scan.len_bytes,
                records: scan.records,
                version: scan.version,
            });
        } else {
            if scan.records == 0 {
                return Err(corrupt(path, scan.len_bytes, "a WAL file other than the last holds no records"));
            }
            closed.push(ClosedFile { path: path.clone(), first_lsn: *first_lsn, last_lsn: Lsn(scan.next_lsn.0 - 1) });
        }
        next_lsn = scan.next_lsn;
    }
    Ok(Recovered { closed, tail, next_lsn })
}

struct Scan {
    next_lsn: Lsn,
    len_bytes: u64,
    records: u64,
    version: u32,
}

/// How a record failed to check.
enum Damage {
    /// Header or payload runs past end of file.
    Incomplete,
    /// The checksum does not match; the record claims to end at this offset.
    BadChecksum { claimed_end: u64 },
}

fn scan_file(
    path: &Path,
    first_lsn: Lsn,
    is_last: bool,
    fsync: bool,
    visit: &mut dyn FnMut(Lsn, &[u8]) -> Result<()>,
) -> Result<Scan> {
    let file = OpenOptions::new().read(true).write(is_last).open(path).at(path)?;
    let file_len = file.metadata().at(path)?.len();

    let Some((header_len, version)) = check_file_header(&file, path, file_len, is_last)? else {
        // Torn while the file was being created: no record can be in it.
        tracing::warn!(path = %path.display(), file_len, "WAL file header is torn; rewriting it");
        rewrite_header(&file, path, fsync)?;
        return Ok(Scan { next_lsn: first_lsn, len_bytes: FILE_HEADER_LEN, records: 0, version: VERSION });
    };

    let mut reader = BufReader::with_capacity(1 << 16, &file);
    reader.seek(SeekFrom::Start(header_len)).at(path)?;
    let mut off = header_len;
    let mut expected = first_lsn;
    let mut records = 0u64;
    let mut payload = Vec::new();
    'records: while off < file_len {
        let damage = 'check: {
            if file_len - off < RECORD_HEADER_LEN as u64 {
                break 'check Damage::Incomplete;
            }
            let mut hdr = [0u8; RECORD_HEADER_LEN];
            reader.read_exact(&mut hdr).at(path)?;
            let header = RecordHeader::decode(&hdr);
            if header.frame_len() > file_len - off {
                break 'check Damage::Incomplete;
            }
            payload.resize(header.len as usize, 0);
            reader.read_exact(&mut payload).at(path)?;
            if record_crc(header.lsn, &payload) != header.crc {
                break 'check Damage::BadChecksum { claimed_end: off + header.frame_len() };
            }
            if header.lsn != expected {
                return Err(corrupt(
                    path,
                    off,
                    &format!("LSN out of sequence: expected {expected}, found {}", header.lsn),
                ));
            }
            visit(header.lsn, &payload)?;
            expected = expected.next();
            records += 1;
            off += header.frame_len();
            continue 'records;
        };
        drop(reader);
        let reason = match damage {
            Damage::Incomplete => "record runs past end of file",
            Damage::BadChecksum { .. } => "record checksum mismatch",
        };
        if !is_last {
            return Err(corrupt(path, off, reason));
        }
        let tail = read_from(&file, path, off, file_len)?;
        if let Damage::BadChecksum { claimed_end } = damage {
            // Invariant: BadChecksum is only reported for records inside the file.
            let after = &tail[(claimed_end - off) as usize..];
            if let Some(pos) = after.iter().position(|&b| b != 0) {
                return Err(corrupt(
                    path,
                    off,
                    &format!("{reason}, followed by non-zero data at offset {}", claimed_end + pos as u64),
                ));
            }
        }
        if let Some(pos) = find_frame(&tail, expected.next()) {
            return Err(corrupt(
                path,
                off,
                &format!(
                    "{reason}, but a valid record for LSN {} follows at offset {}",
                    expected.next(),
                    off + pos as u64
                ),
            ));
        }
        tracing::warn!(path = %path.display(), offset = off, reason, dropped_bytes = file_len - off,
            "truncating torn tail of the WAL");
        file.set_len(off).at(path)?;
        if fsync {
            file.sync_all().at(path)?;
        }
        return Ok(Scan { next_lsn: expected, len_bytes: off, records, version });
    }
    Ok(Scan { next_lsn: expected, len_bytes: off, records, version })
}

/// Checks the file header and returns its length, which depends on the
/// version, and the version. `Ok(None)` means the header is torn (the last
/// file is shorter than a header, or header and rest are all zero) and must
/// be rewritten.
fn check_file_header(file: &File, path: &Path, file_len: u64, is_last: bool) -> Result<Option<(u64, u32)>> {
    let torn = || if is_last { Ok(None) } else { Err(corrupt(path, 0, "file header truncated")) };
    if file_len < V1_FILE_HEADER_LEN {
        return torn();
    }
    let hdr = read_from(file, path, 0, file_len.min(FILE_HEADER_LEN))?;
    if hdr == file_header() {
        return Ok(Some((FILE_HEADER_LEN, VERSION)));
    }
    if is_last && hdr.iter().all(|&b| b == 0) && read_from(file, path, 0, file_len)?.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    if hdr[..8] != MAGIC {
        return Err(corrupt(path, 0, "bad magic: not a WAL file"));
    }
    match u32::from_le_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]) {
        1 => Ok(Some((V1_FILE_HEADER_LEN, 1))),
        2 | 3 | VERSION if file_len < FILE_HEADER_LEN => torn(),
        version @ (2 | 3) if hdr[12..] == [0; 4] => Ok(Some((FILE_HEADER_LEN, version))),
        2 | 3 | VERSION => Err(corrupt(path, 12, "the header's last 4 bytes are not zero")),
        version => Err(corrupt(
            path,
            8,
            &format!("unsupported WAL format version {version} (this build reads 1 to {VERSION})"),
        )),
    }
}

pub(crate) fn rewrite_header(mut file: &File, path: &Path, fsync: bool) -> Result<()> {
    file.set_len(0).at(path)?;
    file.seek(SeekFrom::Start(0)).at(path)?;
    file.write_all(&file_header()).at(path)?;
    if fsync {
        file.sync_all().at(path)?;
    }
    Ok(())
}

fn read_from(mut file: &File, path: &Path, from: u64, to: u64) -> Result<Vec<u8>> {
    file.seek(SeekFrom::Start(from)).at(path)?;
    let mut buf = Vec::new();
    file.take(to - from).read_to_end(&mut buf).at(path)?;
    Ok(buf)
}

/// Position in `bytes` (after 0) where a complete, checksum-valid frame
/// carrying `lsn` starts.
fn find_frame(bytes: &[u8], lsn: Lsn) -> Option<usize> {
    let want = lsn.0.to_le_bytes();
    (1..bytes.len().saturating_sub(RECORD_HEADER_LEN - 1)).find(|&p| {
        let Some(hdr) = bytes.get(p..p + RECORD_HEADER_LEN) else { return false };
        if hdr[8..16] != want {
            return false;
        }
        // Invariant: `hdr` is exactly RECORD_HEADER_LEN bytes long.
        let header = RecordHeader::decode(hdr.try_into().expect("header-sized slice"));
        let start = p + RECORD_HEADER_LEN;
        bytes.get(start..start + header.len as usize).is_some_and(|payload| record_crc(lsn, payload) == header.crc)
    })
}

pub(crate) fn corrupt(path: &Path, offset: u64, reason: &str) -> StorageError {
    StorageError::WalCorrupt { path: path.to_path_buf(), offset, reason: reason.to_string() }
}
