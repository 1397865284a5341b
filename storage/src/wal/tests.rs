//! Behaviour of the WAL as a whole: round trips, torn tails, corruption,
//! group commit, poisoning, deletion and crashes of a child process.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use super::format::{FILE_HEADER_LEN, RECORD_HEADER_LEN};
use super::replay::list_files;
use super::*;
use crate::error::StorageError;
use crate::ids::Lsn;

type Records = Vec<(Lsn, Vec<u8>)>;

fn config(dir: &Path, file_size_bytes: u64, fsync: bool) -> WalConfig {
    WalConfig { dir: dir.to_path_buf(), file_size_bytes, fsync }
}

fn open(config: &WalConfig) -> crate::Result<(Wal, Records)> {
    let mut seen = Vec::new();
    let wal = Wal::open(config.clone(), |lsn, payload| {
        seen.push((lsn, payload.to_vec()));
        Ok(())
    })?;
    Ok((wal, seen))
}

/// Deterministic, non-zero payload bytes (zeros would blur torn-tail tests).
fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((seed * 31 + i * 7) % 251 + 1) as u8).collect()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    list_files(dir).expect("list").into_iter().map(|(_, p)| p).collect()
}

fn only_file(dir: &Path) -> PathBuf {
    let mut all = files(dir);
    assert_eq!(all.len(), 1, "one file expected in {}", dir.display());
    all.remove(0)
}

fn frame_len(payload: &[u8]) -> u64 {
    (RECORD_HEADER_LEN + payload.len()) as u64
}

fn expect_records(got: &Records, want: &[Vec<u8>], first: u64) {
    assert_eq!(got.len(), want.len(), "record count");
    for (i, ((lsn, bytes), want)) in got.iter().zip(want).enumerate() {
        assert_eq!(*lsn, Lsn(first + i as u64), "lsn of record {i}");
        assert!(bytes == want, "payload of record {i} differs");
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x5A;
    fs::write(path, bytes).expect("write");
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new().write(true).open(path).expect("open").set_len(len).expect("set_len");
}

fn expect_corrupt(config: &WalConfig, path: &Path, offset: u64) -> String {
    let err = open(config).expect_err("open must report corruption");
    let msg = err.to_string();
    match &err {
        StorageError::WalCorrupt { path: p, offset: o, .. } => {
            assert_eq!(p, path, "{msg}");
            assert_eq!(*o, offset, "{msg}");
        }
        other => panic!("expected WalCorrupt, got {other}"),
    }
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains(&format!("offset {offset}")), "{msg}");
    msg
}

#[test]
fn fresh_log_in_absent_dir() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(&tmp.path().join("a/b/wal"), 1 << 20, true);
    let (wal, seen) = open(&cfg).expect("open");
    assert!(seen.is_empty());
    assert_eq!(wal.next_lsn(), Lsn(1));
    assert_eq!(wal.last_lsn(), Lsn(0));
    wal.sync().expect("sync of an empty log");
    assert_eq!(files(&cfg.dir), vec![cfg.dir.join("00000000000000000001.wal")]);
    assert_eq!(WalConfig::new("x").file_size_bytes, 64 << 20);
    assert!(WalConfig::new("x").fsync);
}

#[test]
fn round_trip_various_sizes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 64 << 20, true);
    let sizes = [0, 1, 15, 16, 17, 100, 4096, 3 << 20, 0, 7, 5 << 20, 2];
    let want: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| payload(i, n)).collect();
    {
        let (wal, seen) = open(&cfg).expect("open");
        assert!(seen.is_empty());
        for (i, p) in want.iter().enumerate() {
            assert_eq!(wal.append(p).expect("append"), Lsn(i as u64 + 1));
        }
        let stats = wal.stats();
        assert_eq!(stats.appends, want.len() as u64);
        assert_eq!(stats.bytes, want.iter().map(|p| frame_len(p)).sum::<u64>());
        assert!(stats.fsyncs >= 1);
    }
    let (wal, seen) = open(&cfg).expect("reopen");
    expect_records(&seen, &want, 1);
    assert_eq!(wal.next_lsn(), Lsn(want.len() as u64 + 1));
    let extra = payload(99, 10);
    assert_eq!(wal.append(&extra).expect("append after reopen"), Lsn(want.len() as u64 + 1));
    drop(wal);
    let (_, seen) = open(&cfg).expect("reopen again");
    let mut all = want.clone();
    all.push(extra);
    expect_records(&seen, &all, 1);
}

#[test]
fn round_trip_across_rotation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 256, true);
    let want: Vec<Vec<u8>> = (0..120).map(|i| payload(i, i % 50)).chain([payload(500, 1000)]).collect();
    {
        let (wal, _) = open(&cfg).expect("open");
        for p in &want {
            wal.append(p).expect("append");
        }
    }
    let names = files(tmp.path());
    assert!(names.len() > 10, "expected rotation, got {} files", names.len());
    // Every closed file respects the size limit unless it holds a single record.
    for p in &names[..names.len() - 1] {
        let len = fs::metadata(p).expect("metadata").len();
        assert!(len <= 256 || len == FILE_HEADER_LEN + 16 + 1000, "{} is {len} bytes", p.display());
    }
    let (wal, seen) = open(&cfg).expect("reopen");
    expect_records(&seen, &want, 1);
    // Each file is named after the LSN of its first record, and the names
    // are contiguous: each starts where the previous file's records end.
    let mut expected_first = 1u64;
    for p in &names {
        let bytes = fs::read(p).expect("read");
        let name_lsn = super::format::parse_file_name(&p.file_name().expect("name").to_string_lossy());
        let lsn_at = FILE_HEADER_LEN as usize + 8;
        let first_record_lsn = u64::from_le_bytes(bytes[lsn_at..lsn_at + 8].try_into().expect("8 bytes"));
        assert_eq!(name_lsn, Some(Lsn(first_record_lsn)), "{}", p.display());
        assert_eq!(first_record_lsn, expected_first, "{}", p.display());
        let mut off = FILE_HEADER_LEN as usize;
        while off < bytes.len() {
            let len = u32::from_le_bytes(bytes[off..off + 4].try_into().expect("4 bytes")) as usize;
            off += RECORD_HEADER_LEN + len;
            expected_first += 1;
        }
        assert_eq!(off, bytes.len(), "{} ends on a record boundary", p.display());
    }
    assert_eq!(wal.next_lsn(), Lsn(want.len() as u64 + 1));
}

/// Writes `n` records of `len` bytes each; returns their payloads.
fn write_records(cfg: &WalConfig, n: usize, len: usize) -> Vec<Vec<u8>> {
    let (wal, seen) = open(cfg).expect("open");
    let start = seen.len();
    let out: Vec<Vec<u8>> = (0..n).map(|i| payload(start + i, len)).collect();
    for p in &out {
        wal.append(p).expect("append");
    }
    out
}

#[test]
fn torn_tail_at_every_length_of_the_last_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let src_cfg = config(&src, 1 << 20, false);
    let want = write_records(&src_cfg, 5, 40);
    let file = only_file(&src);
    let full = fs::read(&file).expect("read");
    let last_start = full.len() as u64 - frame_len(&want[4]);

    for cut in last_start..full.len() as u64 {
        let dir = tmp.path().join(format!("cut{cut}"));
        fs::create_dir(&dir).expect("mkdir");
        let path = dir.join(file.file_name().expect("name"));
        fs::write(&path, &full[..cut as usize]).expect("write");
        let cfg = config(&dir, 1 << 20, true);

        let (wal, seen) = open(&cfg).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        expect_records(&seen, &want[..4], 1);
        assert_eq!(fs::metadata(&path).expect("metadata").len(), last_start, "torn tail truncated");
        let again = payload(1000 + cut as usize, 33);
        assert_eq!(wal.append(&again).expect("append after repair"), Lsn(5));
        drop(wal);

        let (_, seen) = open(&cfg).unwrap_or_else(|e| panic!("second reopen after cut at {cut}: {e}"));
        let mut expected = want[..4].to_vec();
        expected.push(again);
        expect_records(&seen, &expected, 1);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}

#[test]
fn torn_file_header_of_the_last_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    // Two records per file: 12 + 2 * (16 + 40) = 124 bytes.
    let want = write_records(&config(&src, 130, false), 6, 40);
    let names = files(&src);
    assert_eq!(names.len(), 3);
    let last = names.last().expect("last file").clone();

    for cut in 0..FILE_HEADER_LEN {
        let dir = tmp.path().join(format!("cut{cut}"));
        fs::create_dir(&dir).expect("mkdir");
        for p in &names {
            fs::copy(p, dir.join(p.file_name().expect("name"))).expect("copy");
        }
        let path = dir.join(last.file_name().expect("name"));
        set_len(&path, cut);
        let cfg = config(&dir, 130, true);

        let (wal, seen) = open(&cfg).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        expect_records(&seen, &want[..4], 1);
        assert_eq!(wal.next_lsn(), Lsn(5));
        wal.append(b"after").expect("append");
        drop(wal);
        let (_, seen) = open(&cfg).expect("reopen");
        assert_eq!(seen.len(), 5);
        assert_eq!(seen[4], (Lsn(5), b"after".to_vec()));
    }
}

#[test]
fn zero_filled_tail_is_torn() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20, true);
    let want = write_records(&cfg, 3, 64);
    let file = only_file(tmp.path());
    let len = fs::metadata(&file).expect("metadata").len();

    // Zeros appended after the last record (a file extended but never written).
    {
        let mut bytes = fs::read(&file).expect("read");
        bytes.extend(std::iter::repeat_n(0u8, 4096));
        fs::write(&file, bytes).expect("write");
    }
    let (wal, seen) = open(&cfg).expect("open");
    expect_records(&seen, &want, 1);
    assert_eq!(fs::metadata(&file).expect("metadata").len(), len);
    assert_eq!(wal.append(b"x").expect("append"), Lsn(4));
    drop(wal);

    // The last record's payload zeroed (header landed, data did not).
    let last_payload_start = fs::metadata(&file).expect("metadata").len() - 1;
    {
        let mut bytes = fs::read(&file).expect("read");
        bytes[last_payload_start as usize] = 0;
        bytes.extend(std::iter::repeat_n(0u8, 100));
        fs::write(&file, bytes).expect("write");
    }
    let (wal, seen) = open(&cfg).expect("open");
    expect_records(&seen, &want, 1);
    assert_eq!(wal.next_lsn(), Lsn(4));
    drop(wal);

    // A whole zeroed record header at the tail.
    {
        let mut bytes = fs::read(&file).expect("read");
        bytes.extend([0u8; RECORD_HEADER_LEN]);
        fs::write(&file, bytes).expect("write");
    }
    let (_, seen) = open(&cfg).expect("open");
    expect_records(&seen, &want, 1);
}

#[test]
fn damaged_middle_record_of_last_file_is_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let want = write_records(&config(&src, 1 << 20, false), 5, 24);
    let file = only_file(&src);
    let full = fs::read(&file).expect("read");
    let rec3 = FILE_HEADER_LEN + 2 * frame_len(&want[0]);

    // Every byte of the third record, header included: no flip may pass as a
    // torn tail and silently drop records 3 to 5.
    for at in rec3..rec3 + frame_len(&want[2]) {
        let dir = tmp.path().join(format!("flip{at}"));
        fs::create_dir(&dir).expect("mkdir");
        let path = dir.join(file.file_name().expect("name"));
        fs::write(&path, &full).expect("write");
        flip_byte(&path, at);
        expect_corrupt(&config(&dir, 1 << 20, false), &path, rec3);
        // Nothing was truncated.
        assert_eq!(fs::read(&path).expect("read").len(), full.len());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}

#[test]
fn damaged_record_in_closed_file_is_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 130, false);
    let want = write_records(&cfg, 6, 40);
    let names = files(tmp.path());
    assert_eq!(names.len(), 3);
    // The last record of the first file: a torn tail would be tolerated in
    // the last file, never in a closed one.
    let at = FILE_HEADER_LEN + frame_len(&want[0]);
    flip_byte(&names[0], at + 20);
    let msg = expect_corrupt(&cfg, &names[0], at);
    assert!(msg.contains("checksum"), "{msg}");
    flip_byte(&names[0], at + 20);
    open(&cfg).expect("restored file opens");

    // A truncated closed file is corruption too.
    let len = fs::metadata(&names[1]).expect("metadata").len();
    set_len(&names[1], len - 3);
    expect_corrupt(&cfg, &names[1], at);
}

#[test]
fn lsn_out_of_sequence_and_gaps_are_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20, false);
    let path = tmp.path().join(super::format::file_name(Lsn(1)));
    let mut bytes = super::format::file_header().to_vec();
    super::format::encode_record(&mut bytes, Lsn(1), b"a");
    let second = bytes.len() as u64;
    super::format::encode_record(&mut bytes, Lsn(3), b"b");
    fs::write(&path, &bytes).expect("write");
    let msg = expect_corrupt(&cfg, &path, second);
    assert!(msg.contains("expected 2, found 3"), "{msg}");

    // A missing middle file.
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 130, false);
    write_records(&cfg, 6, 40);
    let names = files(tmp.path());
    fs::remove_file(&names[1]).expect("rm");
    let msg = expect_corrupt(&cfg, &names[2], 0);
    assert!(msg.contains("starts at LSN 5"), "{msg}");
}

#[test]
fn bad_file_header_is_corruption() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 130, false);
    write_records(&cfg, 6, 40);
    let names = files(tmp.path());
    flip_byte(&names[0], 0);
    let msg = expect_corrupt(&cfg, &names[0], 0);
    assert!(msg.contains("magic"), "{msg}");
    flip_byte(&names[0], 0);
    flip_byte(&names[2], 8);
    let msg = expect_corrupt(&cfg, &names[2], 8);
    assert!(msg.contains("version"), "{msg}");
}

#[test]
fn group_commit_shares_fsyncs() {
    const THREADS: usize = 8;
    const PER_THREAD: usize = 200;
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 8 << 10, true);
    let (wal, _) = open(&cfg).expect("open");
    let wal = Arc::new(wal);
    let assigned = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = Arc::clone(&wal);
            let assigned = Arc::clone(&assigned);
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|i| {
                        let p = format!("t{t}-i{i}").into_bytes();
                        let lsn = wal.append_with(&p, |lsn| assigned.lock().push(lsn)).expect("append");
                        (lsn, p)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written: Records = handles.into_iter().flat_map(|h| h.join().expect("thread")).collect();
    written.sort();
    let total = (THREADS * PER_THREAD) as u64;
    let lsns: Vec<u64> = written.iter().map(|(l, _)| l.0).collect();
    assert_eq!(lsns, (1..=total).collect::<Vec<_>>(), "LSNs distinct and contiguous");
    // on_assigned runs under the append lock, so it sees LSNs in order.
    assert_eq!(*assigned.lock(), (1..=total).map(Lsn).collect::<Vec<_>>());
    let stats = wal.stats();
    assert_eq!(stats.appends, total);
    assert!(stats.fsyncs < stats.appends, "no fsync sharing: {stats:?}");
    assert!(files(tmp.path()).len() > 1, "the test should cross rotations");
    drop(wal);

    let (_, seen) = open(&cfg).expect("reopen");
    assert_eq!(seen, written);
}

/// A payload maps back as written: after its group commit, once its file
/// has rotated, and once the file is deleted (as after a seal: the mapping
/// keeps its pages). Payloads whose lengths are multiples of 8 start at
/// multiples of 8, where Arrow reads columns in place.
#[test]
fn written_payloads_map_back_as_written() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 256 << 10, true);
    let (wal, _) = open(&cfg).expect("open");
    let mut maps = Vec::new();
    for i in 0..6 {
        let p = payload(i, 100 << 10);
        let mut written = None;
        let lsn = wal.write_with(&p, |_, w| written = Some(w)).expect("write");
        wal.wait_written(lsn).expect("durable");
        let w = written.expect("assigned");
        assert_eq!((w.len(), w.offset() % 8), (p.len(), 0));
        maps.push((w.map().expect("mapped"), p));
    }
    assert!(files(&cfg.dir).len() > 2, "the log rotated");
    assert!(wal.truncate_before(wal.next_lsn()).expect("truncate") > 0, "closed files deleted");
    for (i, (mapped, p)) in maps.iter().enumerate() {
        assert!(mapped[..] == p[..], "payload {i} changed");
    }
}

/// A log whose last file is of an older format version (1: a 12-byte
/// header; 2: the current layout, with payloads that never list dropped
/// rows) replays; appends go to a new file of the current version, so that
/// the older file stays readable by the builds that wrote it, and the log
/// replays whole after a reopen.
#[test]
fn files_of_older_versions_replay_and_appends_go_to_a_new_file() {
    for (version, header) in [(1, b"ADSWAL\0\0\x01\0\0\0".to_vec()), (2, b"ADSWAL\0\0\x02\0\0\0\0\0\0\0".to_vec())] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let cfg = config(tmp.path(), 1 << 20, true);
        let mut bytes = header;
        let old: Vec<Vec<u8>> = (0..3).map(|i| payload(i, 100 + i)).collect();
        for (i, p) in old.iter().enumerate() {
            super::format::encode_record(&mut bytes, Lsn(i as u64 + 1), p);
        }
        let old_file = cfg.dir.join(super::format::file_name(Lsn(1)));
        fs::write(&old_file, &bytes).expect("write");
        let (wal, seen) = open(&cfg).expect("open");
        expect_records(&seen, &old, 1);
        assert_eq!(wal.append(b"new").expect("append"), Lsn(4), "version {version}");
        drop(wal);
        assert_eq!(fs::read(&old_file).expect("read"), bytes, "version {version}: the old file is left as it was");
        let new_file = cfg.dir.join(super::format::file_name(Lsn(4)));
        let new = fs::read(&new_file).expect("a new file for the appends");
        assert_eq!(new[..16], super::format::file_header(), "version {version}");
        let (_, seen) = open(&cfg).expect("reopen");
        let mut all = old.clone();
        all.push(b"new".to_vec());
        expect_records(&seen, &all, 1);
    }
}

/// The last file is made durable at open, before anything builds on the
/// records replay read from it: a process killed before its fsync may have
/// left them in the page cache only, and an append acknowledged after them
/// (or a retry of them answered "duplicate") must not outlive them. This
/// holds for a file of an older version, which then stays closed, as for
/// one of the current version. A failed sync fails the open.
#[test]
fn the_last_file_is_synced_at_open() {
    for header in [b"ADSWAL\0\0\x02\0\0\0\0\0\0\0", b"ADSWAL\0\0\x03\0\0\0\0\0\0\0", &super::format::file_header()] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut bytes = header.to_vec();
        super::format::encode_record(&mut bytes, Lsn(1), &payload(1, 64));
        let last = tmp.path().join(super::format::file_name(Lsn(1)));
        fs::write(&last, &bytes).expect("write");
        super::writer::FAIL_SYNC_OF.with(|p| *p.borrow_mut() = Some(last.clone()));
        let Err(err) = open(&config(tmp.path(), 1 << 20, true)) else { panic!("the sync failed") };
        assert!(err.to_string().contains("injected sync failure"), "{err}");
        assert_eq!(files(tmp.path()), vec![last.clone()], "no new file before the last one is durable");
        let (wal, _) = open(&config(tmp.path(), 1 << 20, false)).expect("no sync without fsync");
        drop(wal);
        super::writer::FAIL_SYNC_OF.with(|p| *p.borrow_mut() = None);
    }
}

/// A last file of format version 2 with no record in it takes the current
/// header, and the appends.
#[test]
fn an_empty_file_of_an_older_version_takes_the_current_header() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20, true);
    let path = cfg.dir.join(super::format::file_name(Lsn(5)));
    fs::write(&path, b"ADSWAL\0\0\x02\0\0\0\0\0\0\0").expect("write");
    let (wal, seen) = open(&cfg).expect("open");
    assert!(seen.is_empty());
    assert_eq!(wal.append(b"new").expect("append"), Lsn(5));
    drop(wal);
    assert_eq!(files(tmp.path()), vec![path.clone()]);
    assert_eq!(fs::read(&path).expect("read")[..16], super::format::file_header());
    let (_, seen) = open(&cfg).expect("reopen");
    expect_records(&seen, &[b"new".to_vec()], 5);
}

#[test]
fn failed_fsync_poisons() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20, true);
    let (wal, _) = open(&cfg).expect("open");
    assert_eq!(wal.append(b"ok").expect("append"), Lsn(1));

    wal.fail_next_sync.store(true, Ordering::SeqCst);
    let mut assigned = None;
    let err = wal.append_with(b"lost", |lsn| assigned = Some(lsn)).expect_err("fsync failed");
    assert!(matches!(&err, StorageError::WalPoisoned(m) if m.contains("injected")), "{err}");
    assert_eq!(assigned, Some(Lsn(2)));

    // The hook is spent, yet the log stays poisoned.
    for _ in 0..3 {
        let err = wal.append(b"later").expect_err("poisoned");
        assert!(matches!(err, StorageError::WalPoisoned(_)), "{err}");
    }
    assert!(matches!(wal.sync(), Err(StorageError::WalPoisoned(_))));
    assert_eq!(wal.next_lsn(), Lsn(3), "no LSN is assigned once poisoned");
}

#[test]
fn failed_fsync_wakes_concurrent_waiters_with_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (wal, _) = open(&config(tmp.path(), 1 << 20, true)).expect("open");
    let wal = Arc::new(wal);
    wal.fail_next_sync.store(true, Ordering::SeqCst);
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || (0..20).map(|i| wal.append(format!("{t}/{i}").as_bytes())).collect::<Vec<_>>())
        })
        .collect();
    let results: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("thread")).collect();
    // The very first fsync failed and none is attempted once poisoned, so
    // no append may have been acknowledged, and every one reports poison.
    for r in &results {
        assert!(matches!(r, Err(StorageError::WalPoisoned(_))), "{r:?}");
    }
    assert!(matches!(wal.append(b"after"), Err(StorageError::WalPoisoned(_))));
    assert_eq!(wal.stats().fsyncs, 0);
}

#[test]
fn truncate_before_deletes_only_covered_closed_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // Two 40-byte records per file: files start at LSN 1, 3, 5, 7, 9.
    let cfg = config(tmp.path(), 130, true);
    let want = write_records(&cfg, 10, 40);
    let (wal, _) = open(&cfg).expect("open");
    assert_eq!(files(tmp.path()).len(), 5);

    assert_eq!(wal.truncate_before(Lsn(1)).expect("truncate"), 0);
    assert_eq!(wal.truncate_before(Lsn(2)).expect("truncate"), 0, "file 1..=2 still holds LSN 2");
    assert_eq!(wal.truncate_before(Lsn(3)).expect("truncate"), 1);
    assert_eq!(wal.truncate_before(Lsn(6)).expect("truncate"), 1, "only 3..=4; 5..=6 holds LSN 6");
    let left = files(tmp.path());
    assert_eq!(left.first(), Some(&tmp.path().join(super::format::file_name(Lsn(5)))));
    // The active file (9..=10) survives even a cut past every LSN.
    assert_eq!(wal.truncate_before(Lsn(1000)).expect("truncate"), 2);
    assert_eq!(files(tmp.path()), vec![tmp.path().join(super::format::file_name(Lsn(9)))]);
    assert_eq!(wal.truncate_before(Lsn(1000)).expect("truncate"), 0);
    assert_eq!(wal.append(b"eleven").expect("append"), Lsn(11));
    drop(wal);

    let (wal, seen) = open(&cfg).expect("reopen");
    let mut expected = want[8..].to_vec();
    expected.push(b"eleven".to_vec());
    expect_records(&seen, &expected, 9);
    assert_eq!(wal.next_lsn(), Lsn(12));
}

#[test]
fn replay_after_partial_deletion_starts_at_first_remaining_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 130, false);
    let want = write_records(&cfg, 7, 40);
    let (wal, _) = open(&cfg).expect("open");
    assert_eq!(wal.truncate_before(Lsn(5)).expect("truncate"), 2);
    drop(wal);
    let (wal, seen) = open(&cfg).expect("reopen");
    expect_records(&seen, &want[4..], 5);
    assert_eq!(wal.append(b"8").expect("append"), Lsn(8));
}

#[test]
fn visit_error_stops_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20, false);
    write_records(&cfg, 3, 8);
    let mut calls = 0;
    let err = Wal::open(cfg, |lsn, _| {
        calls += 1;
        if lsn == Lsn(2) { Err(StorageError::Internal("stop".into())) } else { Ok(()) }
    })
    .expect_err("visit error propagates");
    assert!(matches!(err, StorageError::Internal(_)));
    assert_eq!(calls, 2);
}

#[test]
fn event_batches_through_the_log() {
    use crate::event::{Event, EventBatch};
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = config(tmp.path(), 1 << 20, true);
    let events: Vec<Event> = (0..50)
        .map(|i| Event { event_id: format!("e{i}"), ts: i, country: Some("DÉ".into()), ..Event::default() })
        .collect();
    {
        let (wal, _) = open(&cfg).expect("open");
        wal.append(&encode_batch(&EventBatch::from_events(&events)).expect("encode")).expect("append");
    }
    let (_, seen) = open(&cfg).expect("reopen");
    let batch = decode_batch(&seen[0].1).expect("decode");
    assert_eq!(batch.events(), events);
}

/// Crash tests: the test binary re-runs this very test as a child with a
/// failpoint armed; the child appends until the failpoint aborts it, and the
/// parent checks what a reopen recovers.
fn crash_child(test_name: &str, failpoint: &str) -> (PathBuf, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(crate::failpoint::ENV_VAR, failpoint)
        .env(CRASH_DIR_VAR, tmp.path())
        .status()
        .expect("spawn child");
    assert!(!status.success(), "child should have aborted at {failpoint}: {status}");
    (tmp.path().to_path_buf(), tmp)
}

const CRASH_DIR_VAR: &str = "ADSTORE_WAL_TEST_CRASH_DIR";
const CRASH_RECORDS: usize = 10;

/// The child side: appends records with fsync on until the failpoint fires.
fn crash_child_body() -> bool {
    let Some(dir) = std::env::var_os(CRASH_DIR_VAR) else { return false };
    let (wal, _) = open(&config(Path::new(&dir), 1 << 20, true)).expect("child open");
    for i in 0..CRASH_RECORDS {
        wal.append(&payload(i, 100)).expect("child append");
    }
    // Reaching here means the failpoint never fired; exit cleanly so the
    // parent's "must abort" assertion fails.
    true
}

#[test]
fn crash_after_fsync_keeps_acknowledged_records() {
    if crash_child_body() {
        return;
    }
    let (dir, _tmp) = crash_child("wal::tests::crash_after_fsync_keeps_acknowledged_records", "wal_after_fsync:4");
    let (_, seen) = open(&config(&dir, 1 << 20, true)).expect("reopen after crash");
    // Appends are sequential, so the 4th fsync covers exactly record 4.
    let want: Vec<Vec<u8>> = (0..4).map(|i| payload(i, 100)).collect();
    expect_records(&seen, &want, 1);
}

#[test]
fn crash_after_write_before_fsync() {
    if crash_child_body() {
        return;
    }
    let (dir, _tmp) = crash_child("wal::tests::crash_after_write_before_fsync", "wal_after_write:6");
    let (wal, seen) = open(&config(&dir, 1 << 20, true)).expect("reopen after crash");
    // Records 1..=5 were acknowledged; record 6 reached the page cache,
    // which a process crash (unlike a power cut) does not lose.
    let want: Vec<Vec<u8>> = (0..6).map(|i| payload(i, 100)).collect();
    expect_records(&seen, &want, 1);
    assert_eq!(wal.append(b"resume").expect("append"), Lsn(7));
}
