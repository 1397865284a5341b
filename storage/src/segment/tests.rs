//! Writer/reader tests: round trips against an in-memory model, stats and
//! index against naive scans, corruption, and the version-1 golden file.

use std::path::{Path, PathBuf};

use arrow_array::Array;
use proptest::prelude::*;

use super::*;
use crate::error::StorageError;
use crate::event::{COLUMNS, ColumnId, ColumnKind, Event, EventBatch, EventType, InvalidReason};
use crate::ids::SegmentId;
use crate::testutil::any_event;

const ID: SegmentId = SegmentId(7);

/// The order `write_segment` promises: by (advertiser, campaign, ad, ts), ties in input order.
fn model_sort(events: &[Event]) -> Vec<Event> {
    let mut v = events.to_vec();
    v.sort_by(|a, b| {
        (&a.advertiser_id, &a.campaign_id, &a.ad_id, a.ts).cmp(&(&b.advertiser_id, &b.campaign_id, &b.ad_id, b.ts))
    });
    v
}

fn write(dir: &Path, events: &[Event], opts: &SegmentWriteOptions) -> (PathBuf, SegmentSummary) {
    let path = dir.join(ID.file_name());
    let summary = write_segment(&path, &EventBatch::from_events(events), opts).expect("write segment");
    (path, summary)
}

fn opts(block_rows: usize) -> SegmentWriteOptions {
    SegmentWriteOptions { block_rows, zstd_level: 3, user_meta: b"meta".to_vec(), id_index: true }
}

fn small_events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            event_id: format!("ev-{i:04}"),
            kind: EventType::ALL[i % 3],
            ts: 1_700_000_000_000 + (i as i64 * 7919) % 5000,
            publisher_id: format!("pub{}", i % 2),
            advertiser_id: ["acme", "globex", "initech"][i % 3].into(),
            campaign_id: format!("c{}", i % 4),
            ad_group_id: if i % 5 == 0 { None } else { Some(format!("g{}", i % 3)) },
            ad_id: format!("ad{}", i % 6),
            impression_id: Some(format!("imp-{i}")),
            click_id: if i % 2 == 0 { None } else { Some(String::new()) },
            user_key: Some(format!("u{}", i % 4)),
            device: Some("mobile".into()),
            os: if i % 4 == 0 { None } else { Some("android".into()) },
            country: Some(["DE", "FR", "US"][i % 3].into()),
            region: None,
            placement: Some("feed".into()),
            cost_micros: (i as i64) * 1000 - 3000,
            value_micros: if i % 7 == 0 { i64::MAX } else { 0 },
            ip_hash: Some(format!("{:x}", i * 2654435761)),
            ua_hash: None,
            attributed: i % 2 == 0,
            attributed_to: if i % 3 == 0 { Some(format!("imp-{}", i / 2)) } else { None },
            invalid_reason: InvalidReason::ALL[i % 5],
        })
        .collect()
}

// ---------------------------------------------------------------- naive checks

fn naive_block_stats(data: &ColumnData) -> ColumnStats {
    fn int(vals: impl Iterator<Item = i64>) -> ValueRange {
        vals.fold(ValueRange::Empty, |r, v| match r {
            ValueRange::Int { min, max } => ValueRange::Int { min: min.min(v), max: max.max(v) },
            _ => ValueRange::Int { min: v, max: v },
        })
    }
    match data {
        ColumnData::I64(v) => ColumnStats { null_count: 0, range: int(v.iter().copied()) },
        ColumnData::U8(v) => ColumnStats { null_count: 0, range: int(v.iter().map(|&x| i64::from(x))) },
        ColumnData::Bool(v) => ColumnStats { null_count: 0, range: int(v.iter().map(|&x| i64::from(x))) },
        ColumnData::Dict { codes, .. } => {
            let nn: Vec<u32> = codes.iter().copied().filter(|&c| c != 0).collect();
            let range = match (nn.iter().min(), nn.iter().max()) {
                (Some(&min), Some(&max)) => ValueRange::Codes { min, max },
                _ => ValueRange::Empty,
            };
            ColumnStats { null_count: (codes.len() - nn.len()) as u64, range }
        }
        ColumnData::Str(a) => {
            let vals: Vec<&str> = a.iter().flatten().collect();
            let range = match (vals.iter().min(), vals.iter().max()) {
                (Some(min), Some(max)) => ValueRange::Str { min: min.to_string(), max: max.to_string() },
                _ => ValueRange::Empty,
            };
            ColumnStats { null_count: a.null_count() as u64, range }
        }
        ColumnData::Bytes(a) => ColumnStats { null_count: a.null_count() as u64, range: ValueRange::Empty },
    }
}

/// Column stats as the union of block stats computed naively.
fn union(a: ColumnStats, b: ColumnStats) -> ColumnStats {
    let range = match (a.range, b.range) {
        (ValueRange::Empty, r) | (r, ValueRange::Empty) => r,
        (ValueRange::Int { min, max }, ValueRange::Int { min: m, max: x }) => {
            ValueRange::Int { min: min.min(m), max: max.max(x) }
        }
        (ValueRange::Codes { min, max }, ValueRange::Codes { min: m, max: x }) => {
            ValueRange::Codes { min: min.min(m), max: max.max(x) }
        }
        (ValueRange::Str { min, max }, ValueRange::Str { min: m, max: x }) => {
            ValueRange::Str { min: min.min(m), max: max.max(x) }
        }
        (r, other) => panic!("mixed stats {r:?} / {other:?}"),
    };
    ColumnStats { null_count: a.null_count + b.null_count, range }
}

/// Checks everything the reader reports against what it decodes and against `model`.
fn check_segment(r: &SegmentReader, model: &[Event], block_rows: usize) {
    let batch = r.read_batch().expect("read batch");
    assert_eq!(batch.events(), model);
    assert_eq!(r.num_rows(), model.len());
    assert_eq!(r.num_blocks(), model.len().div_ceil(block_rows));
    let want_range = model.iter().fold((i64::MAX, i64::MIN), |(lo, hi), e| (lo.min(e.ts), hi.max(e.ts)));
    assert_eq!(r.time_range(), want_range);
    r.verify().expect("verify");

    for spec in &COLUMNS {
        let mut total = ColumnStats { null_count: 0, range: ValueRange::Empty };
        for block in 0..r.num_blocks() {
            let rows = r.block_rows(block);
            assert_eq!(rows.start, block * block_rows);
            let data = r.read_column(spec.id, block).expect("read column");
            assert_eq!(data.len(), rows.len());
            let naive = naive_block_stats(&data);
            assert_eq!(r.block_stats(spec.id, block), Some(&naive), "{} block {block}", spec.name);
            total = union(total, naive);
        }
        assert_eq!(r.column_stats(spec.id), &total, "column {}", spec.name);
        if spec.dimension {
            assert!(
                r.dictionary(spec.id).expect("dictionary").is_some(),
                "dimension {} must be dictionary-encoded",
                spec.name
            );
        }
        if spec.kind != ColumnKind::Str {
            assert!(r.dictionary(spec.id).expect("dictionary").is_none());
        }

        if let Some(dict) = r.dictionary(spec.id).expect("dictionary") {
            let entries: Vec<&str> = dict.iter().map(|(_, v)| v).collect();
            assert!(entries.windows(2).all(|w| w[0] < w[1]), "dictionary sorted");
            for (code, v) in dict.iter() {
                assert_eq!(dict.code_of(v), Some(code));
            }
            assert_eq!(dict.value(0), None);
            assert_eq!(dict.value(dict.len() as u32 + 1), None);
        }
        if r.has_index(spec.id) {
            let col = batch.str_column(spec.id);
            let dict = r.dictionary(spec.id).expect("dictionary").expect("indexed columns have a dictionary");
            for code in 0..=dict.len() as u32 {
                let want: Vec<u32> = (0..col.len())
                    .filter(|&i| match dict.value(code) {
                        None => col.is_null(i),
                        Some(v) => col.is_valid(i) && col.value(i) == v,
                    })
                    .map(|i| i as u32)
                    .collect();
                let got: Vec<u32> = r.index_rows(spec.id, code).expect("index rows").iter().collect();
                assert_eq!(got, want, "index of {} code {code}", spec.name);
            }
            assert!(r.index_rows(spec.id, dict.len() as u32 + 1).expect("past the end").is_empty());
        }
    }
}

// ---------------------------------------------------------------- round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn round_trip_matches_model(
        events in prop::collection::vec(any_event(), 0..150),
        block_rows in prop_oneof![Just(1usize), 2usize..20, Just(64), Just(65536)],
        zstd_level in prop_oneof![Just(1), Just(3)],
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = SegmentWriteOptions { block_rows, zstd_level, user_meta: vec![1, 2, 3], id_index: true };
        let (path, summary) = write(dir.path(), &events, &opts);
        let r = SegmentReader::open(ID, &path).expect("open");
        prop_assert_eq!(summary.rows as usize, events.len());
        prop_assert_eq!(summary.size_bytes, std::fs::metadata(&path).expect("stat").len());
        prop_assert_eq!(r.size_bytes(), summary.size_bytes);
        prop_assert_eq!((summary.min_ts, summary.max_ts), r.time_range());
        prop_assert_eq!(r.user_meta(), &[1u8, 2, 3][..]);
        check_segment(&r, &model_sort(&events), block_rows);
    }
}

#[test]
fn empty_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, summary) = write(dir.path(), &[], &SegmentWriteOptions::default());
    assert_eq!(summary.rows, 0);
    assert_eq!((summary.min_ts, summary.max_ts), (i64::MAX, i64::MIN));
    let r = SegmentReader::open(ID, &path).expect("open");
    assert_eq!(r.num_blocks(), 0);
    assert!(r.read_batch().expect("read").is_empty());
    assert_eq!(r.column_stats(ColumnId::Ts).range, ValueRange::Empty);
    assert!(r.index_rows(ColumnId::AdvertiserId, 0).expect("index").is_empty());
    assert!(matches!(r.read_column(ColumnId::Ts, 0), Err(StorageError::Internal(_))));
    check_segment(&r, &[], 65536);
}

#[test]
fn one_row_and_stable_ties() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut events = small_events(1);
    check_segment(&SegmentReader::open(ID, &write(dir.path(), &events, &opts(4)).0).expect("open"), &events, 4);

    // Identical sort keys: input order must survive.
    events = (0..20).map(|i| Event { event_id: format!("{}", 19 - i), ..small_events(1)[0].clone() }).collect();
    let r = SegmentReader::open(ID, &write(dir.path(), &events, &opts(3)).0).expect("open");
    assert_eq!(r.read_batch().expect("read").events(), events);
}

#[test]
fn encodings_follow_cardinality() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = small_events(300);
    let (path, _) = write(dir.path(), &events, &opts(64));
    let r = SegmentReader::open(ID, &path).expect("open");
    // Unique per row: plain. Few distinct values: dictionary even if not a dimension.
    assert!(r.dictionary(ColumnId::EventId).expect("dictionary").is_none());
    assert!(matches!(r.read_column(ColumnId::EventId, 0).expect("read"), ColumnData::Str(_)));
    assert_eq!(r.dictionary(ColumnId::UserKey).expect("dictionary").map(|d| d.len()), Some(4));
    assert!(!r.has_index(ColumnId::UserKey), "only dimensions are indexed");
    let dict = r.dictionary(ColumnId::AdvertiserId).expect("dictionary").expect("dimension");
    assert_eq!(dict.iter().map(|(_, v)| v).collect::<Vec<_>>(), ["acme", "globex", "initech"]);
    assert_eq!(dict.code_of("globex"), Some(2));
    assert_eq!(dict.code_of("zzz"), None);
    // All-NULL dimension: only the NULL bitmap, covering every row.
    assert_eq!(r.dictionary(ColumnId::Region).expect("dictionary").map(|d| d.len()), Some(0));
    assert_eq!(r.index_rows(ColumnId::Region, 0).expect("index").len(), 300);
    check_segment(&r, &model_sort(&events), 64);
}

#[test]
fn rejects_bad_options() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.seg");
    let batch = EventBatch::from_events(&small_events(3));
    for o in [
        SegmentWriteOptions { block_rows: 0, ..Default::default() },
        SegmentWriteOptions { zstd_level: 1000, ..Default::default() },
    ] {
        assert!(matches!(write_segment(&path, &batch, &o), Err(StorageError::Config(_))));
    }
}

// ---------------------------------------------------------------- corruption

/// Opening and fully reading `bytes` as a segment must fail, naming the file.
fn assert_detected(path: &Path, bytes: &[u8], original: &[Event], what: &str) {
    std::fs::write(path, bytes).expect("write corrupted file");
    let shown = path.display().to_string();
    let err = match SegmentReader::open(ID, path) {
        Err(e) => e,
        Ok(r) => {
            // Never wrong data: a full read either fails or returns the original rows.
            if let Ok(b) = r.read_batch() {
                assert_eq!(b.events(), original, "{what}: read_batch returned wrong data");
            }
            r.verify().expect_err(&format!("{what}: verify must detect the corruption"))
        }
    };
    assert!(err.to_string().contains(&shown), "{what}: error {err} does not name {shown}");
}

fn corrupt_fixture() -> (tempfile::TempDir, PathBuf, Vec<u8>, Vec<Event>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = small_events(40);
    let (path, _) = write(dir.path(), &events, &opts(16));
    let bytes = std::fs::read(&path).expect("read file");
    (dir, path, bytes, model_sort(&events))
}

#[test]
fn every_flipped_byte_is_detected() {
    let (_dir, path, bytes, model) = corrupt_fixture();
    for pos in 0..bytes.len() {
        let mut b = bytes.clone();
        b[pos] ^= 0x10;
        assert_detected(&path, &b, &model, &format!("flip at {pos}/{}", bytes.len()));
    }
}

#[test]
fn flipped_block_fails_read_column() {
    let (_dir, path, bytes, _) = corrupt_fixture();
    let r = SegmentReader::open(ID, &path).expect("open");
    let b = &r.footer.columns[ColumnId::CostMicros.index()].blocks[1];
    let pos = (b.offset + b.stored_len / 2) as usize;
    drop(r);
    let mut bad = bytes.clone();
    bad[pos] ^= 1;
    std::fs::write(&path, &bad).expect("write");
    let r = SegmentReader::open(ID, &path).expect("footer intact: open succeeds");
    let err = r.read_column(ColumnId::CostMicros, 1).expect_err("corrupt block");
    assert!(matches!(err, StorageError::SegmentCorrupt { .. }), "{err}");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    assert!(err.to_string().contains("cost_micros block 1"), "{err}");
    r.read_column(ColumnId::CostMicros, 0).expect("other blocks still readable");
    assert!(r.read_batch().is_err());
}

#[test]
fn flipped_index_fails_index_rows() {
    let (_dir, path, bytes, _) = corrupt_fixture();
    let r = SegmentReader::open(ID, &path).expect("open");
    let code = r.dictionary(ColumnId::Country).expect("dictionary").and_then(|d| d.code_of("FR")).expect("FR");
    let e = r.footer.columns[ColumnId::Country.index()].index.as_ref().expect("indexed")[code as usize];
    drop(r);
    let mut bad = bytes.clone();
    bad[(e.offset + e.len - 1) as usize] ^= 0x80;
    std::fs::write(&path, &bad).expect("write");
    let r = SegmentReader::open(ID, &path).expect("open");
    let err = r.index_rows(ColumnId::Country, code).expect_err("corrupt bitmap");
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    r.index_rows(ColumnId::Country, code - 1).expect("neighbouring bitmap intact");
    assert!(r.verify().is_err());
}

#[test]
fn flipped_footer_fails_open() {
    let (_dir, path, bytes, _) = corrupt_fixture();
    let footer_len = u64::from_le_bytes(bytes[bytes.len() - 24..bytes.len() - 16].try_into().expect("8 bytes"));
    let footer_start = bytes.len() - 24 - footer_len as usize;
    for pos in [footer_start, footer_start + footer_len as usize / 2, bytes.len() - 25] {
        let mut bad = bytes.clone();
        bad[pos] ^= 4;
        std::fs::write(&path, &bad).expect("write");
        let err = SegmentReader::open(ID, &path).expect_err("corrupt footer");
        assert!(err.to_string().contains("footer checksum mismatch"), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
}

#[test]
fn truncated_file_fails_open() {
    let (_dir, path, bytes, _) = corrupt_fixture();
    for len in [0, 1, 16, 39, 40, bytes.len() / 2, bytes.len() - 24, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..len]).expect("write");
        let err = SegmentReader::open(ID, &path).expect_err("truncated");
        assert!(matches!(err, StorageError::SegmentCorrupt { .. }), "len {len}: {err}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
}

#[test]
fn unknown_version_is_unsupported() {
    let (_dir, path, mut bytes, _) = corrupt_fixture();
    let n = bytes.len();
    let next = super::format::FORMAT_VERSION + 1;
    bytes[8..12].copy_from_slice(&next.to_le_bytes());
    bytes[n - 12..n - 8].copy_from_slice(&next.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    match SegmentReader::open(ID, &path) {
        Err(StorageError::UnsupportedFormat { version, path: p }) if version == next => assert_eq!(p, path),
        other => panic!("expected UnsupportedFormat, got {other:?}"),
    }
}

// ---------------------------------------------------------------- golden file

fn golden_path(version: u32) -> PathBuf {
    PathBuf::from(format!("{}/../tests/golden/segment-v{version}.seg", env!("CARGO_MANIFEST_DIR")))
}

/// The input of the golden files. Changing it requires regenerating the
/// file, which only `ADSTORE_REGENERATE_GOLDEN=1` does.
fn golden_events() -> Vec<Event> {
    let mut events = small_events(10);
    events[3].ts = i64::MIN;
    events[4].ts = i64::MAX;
    events[5].country = Some("日本".into());
    events[6].region = Some(String::new());
    events
}

fn golden_options() -> SegmentWriteOptions {
    SegmentWriteOptions { block_rows: 4, zstd_level: 3, user_meta: b"golden-v1".to_vec(), id_index: true }
}

/// Version 2's golden file: a derived schema with a bytes column.
fn golden_v2_rows() -> Vec<DerivedRow> {
    let mut rows = derived_rows(9);
    rows[2].4 = Some(Vec::new());
    rows[7].2 = Some("日本".into());
    rows
}

/// Writes the golden file of the version this build writes (older ones
/// are never rewritten: they pin what old builds wrote). Version 3's is an
/// events segment with its id index.
#[test]
fn regenerate_golden_file() {
    if std::env::var("ADSTORE_REGENERATE_GOLDEN").as_deref() != Ok("1") {
        return;
    }
    let path = golden_path(super::format::FORMAT_VERSION);
    std::fs::create_dir_all(path.parent().expect("golden dir")).expect("mkdir");
    let options = SegmentWriteOptions { user_meta: b"golden-v3".to_vec(), ..golden_options() };
    write_segment(&path, &EventBatch::from_events(&golden_events()), &options).expect("write golden");
}

#[test]
fn golden_file_v3_reads_back_exactly_with_its_id_index() {
    let r = SegmentReader::open(SegmentId(3), &golden_path(3)).expect("open golden segment-v3.seg");
    r.verify().expect("golden verifies");
    assert_eq!(r.user_meta(), b"golden-v3");
    assert_eq!(r.read_batch().expect("read golden").events(), model_sort(&golden_events()));
    // Ten rows: one granule, found by any id it holds, and by no other.
    let found = r.id_rows(ColumnId::ImpressionId, &["imp-3".into()]).expect("lookup").expect("an id index");
    assert_eq!(found.len(), 10);
    let none = r.id_rows(ColumnId::EventId, &["ev-0010".into()]).expect("lookup").expect("an id index");
    assert!(none.is_empty());
}

#[test]
fn golden_file_v2_reads_back_exactly() {
    let schema = derived_schema();
    let r = SegmentReader::open_as(SegmentId(2), &golden_path(2), schema.clone()).expect("open golden segment-v2.seg");
    r.verify().expect("golden verifies");
    assert_eq!(r.user_meta(), b"golden-v2");
    assert_eq!((r.num_rows(), r.num_blocks()), (9, 3));
    let mut want = golden_v2_rows();
    want.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    assert_eq!(r.read_record_batch().expect("read golden"), derived_batch(&schema, &want));
    // Stored order, pinned literally: acme (rows 7, 4, 1 by time), then mid.
    let ColumnData::I64(clicks) = r.read_column(3usize, 0).expect("block 0") else { panic!("i64 column") };
    assert_eq!(clicks, [21, 12, 3, 6]);
}

#[test]
fn golden_file_v1_reads_back_exactly() {
    let path = golden_path(1);
    let r = SegmentReader::open(SegmentId(1), &path).expect("open golden segment-v1.seg");
    r.verify().expect("golden verifies");
    assert_eq!(r.user_meta(), b"golden-v1");
    assert_eq!(r.num_rows(), 10);
    assert_eq!(r.num_blocks(), 3);
    assert_eq!(r.time_range(), (i64::MIN, i64::MAX));
    let events = r.read_batch().expect("read golden").events();
    // Stored order, pinned literally: acme rows first, by campaign, ad, ts.
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        ids,
        ["ev-0000", "ev-0009", "ev-0006", "ev-0003", "ev-0004", "ev-0001", "ev-0007", "ev-0008", "ev-0005", "ev-0002"]
    );
    assert_eq!(events, model_sort(&golden_events()));
    let e = &events[3];
    assert_eq!(
        (e.ts, e.advertiser_id.as_str(), e.campaign_id.as_str(), e.ad_id.as_str()),
        (i64::MIN, "acme", "c3", "ad3")
    );
    assert_eq!(e.attributed_to.as_deref(), Some("imp-1"));
    assert_eq!(e.invalid_reason, InvalidReason::ALL[3]);
    let adv = r.dictionary(ColumnId::AdvertiserId).expect("dictionary").expect("dict");
    let globex = adv.code_of("globex").expect("globex");
    assert_eq!(r.index_rows(ColumnId::AdvertiserId, globex).expect("index").iter().collect::<Vec<_>>(), [4, 5, 6]);
    assert_eq!(r.column_stats(ColumnId::Ts).range, ValueRange::Int { min: i64::MIN, max: i64::MAX });
    check_segment(&r, &events, 4);
}

#[test]
fn cached_reads_match_file_reads_and_leave_with_the_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = small_events(40);
    let (path, _) = write(dir.path(), &events, &opts(8));
    let plain = SegmentReader::open(ID, &path).expect("open");
    let cache = std::sync::Arc::new(BlockCache::new(1 << 20));
    let cached = SegmentReader::open(ID, &path).expect("open").with_cache(cache.clone());
    for spec in &COLUMNS {
        for block in 0..plain.num_blocks() {
            let want = plain.read_column(spec.id, block).expect("file read");
            // First read fills the cache, the second is served from it.
            for _ in 0..2 {
                assert_eq!(cached.read_column(spec.id, block).expect("cached read"), want, "{}", spec.id.name());
                let rows = 1..plain.block_rows(block).len();
                assert_eq!(
                    cached.read_column_rows(spec.id, block, rows.clone()).expect("cached rows"),
                    plain.read_column_rows(spec.id, block, rows).expect("file rows")
                );
            }
        }
    }
    assert!(cache.used_bytes() > 0, "query reads fill the cache");
    drop(cached);
    assert_eq!(cache.used_bytes(), 0, "a dropped reader's blocks leave the cache");
}

#[test]
fn dictionaries_are_read_through_the_block_cache_not_kept_by_open_readers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = small_events(300);
    let (path, _) = write(dir.path(), &events, &opts(64));
    let cache = std::sync::Arc::new(BlockCache::new(1 << 20));
    let r = SegmentReader::open(ID, &path).expect("open").with_cache(cache.clone());
    assert!(r.footer.columns.iter().all(|c| c.dict.is_none()), "the footer's dictionaries go once checked");
    assert_eq!(cache.used_bytes(), 0, "opening reads nothing into the cache");
    let first = r.dictionary(ColumnId::AdvertiserId).expect("read").expect("dimension");
    let used = cache.used_bytes();
    assert!(used >= first.memory_bytes() as u64, "the dictionary is counted in the cache: {used}");
    let again = r.dictionary(ColumnId::AdvertiserId).expect("read").expect("dimension");
    assert!(std::sync::Arc::ptr_eq(&first, &again), "the second read is the cached one");
    assert_eq!(cache.used_bytes(), used);
    let plain = SegmentReader::open(ID, &path).expect("open");
    for spec in &COLUMNS {
        assert_eq!(r.read_column(spec.id, 1).expect("cached"), plain.read_column(spec.id, 1).expect("plain"));
    }
    drop(r);
    assert_eq!(cache.used_bytes(), 0, "a dropped reader's dictionaries leave the cache");
    // A dictionary the cache does not take stays with its reader, read once.
    let off = std::sync::Arc::new(BlockCache::new(0));
    let uncached = SegmentReader::open(ID, &path).expect("open").with_cache(off.clone());
    let a = uncached.dictionary(ColumnId::UserKey).expect("read").expect("dict");
    drop(uncached.dictionary(ColumnId::UserKey));
    let b = uncached.dictionary(ColumnId::UserKey).expect("read").expect("dict");
    assert!(std::sync::Arc::ptr_eq(&a, &b) && a.len() == 4, "one dictionary object per reader");
    assert_eq!(off.used_bytes(), 0);
    check_segment(&uncached, &model_sort(&events), 64);
}

#[test]
fn a_dictionary_damaged_after_open_is_an_error_not_wrong_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = small_events(300);
    let (path, _) = write(dir.path(), &events, &opts(64));
    let r = SegmentReader::open(ID, &path).expect("open").with_cache(std::sync::Arc::new(BlockCache::new(0)));
    let at = r.dicts[ColumnId::AdvertiserId.index()].as_ref().expect("dictionary-encoded").at.clone();
    let bytes = std::fs::read(&path).expect("read");
    let pos =
        at.start + bytes[at.start as usize..at.end as usize].iter().position(|&b| b == b'g').expect("globex") as u64;
    {
        // Damage the file in place: "globex" becomes "flobex", still sorted.
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).expect("open rw");
        f.seek(SeekFrom::Start(pos)).expect("seek");
        f.write_all(b"f").expect("write");
    }
    let err = r.dictionary(ColumnId::AdvertiserId).expect_err("checked against its checksum").to_string();
    assert!(err.contains("dictionary of column advertiser_id: checksum mismatch"), "{err}");
    assert!(r.read_column(ColumnId::AdvertiserId, 0).is_err(), "codes are not named by a damaged dictionary");
    let err = r.verify().expect_err("verification reads the dictionaries").to_string();
    assert!(err.contains("dictionary of column advertiser_id"), "{err}");
    assert!(SegmentReader::open(ID, &path).is_err(), "the footer's checksum catches it at the next open");
}

#[test]
fn verify_reads_the_file_not_the_cache() {
    let (_dir, path, _bytes, _) = corrupt_fixture();
    let cache = std::sync::Arc::new(BlockCache::new(1 << 20));
    let r = SegmentReader::open(ID, &path).expect("open").with_cache(cache);
    let before = r.read_column(ColumnId::CostMicros, 1).expect("read into the cache");
    let b = &r.footer.columns[ColumnId::CostMicros.index()].blocks[1];
    let pos = b.offset + b.stored_len / 2;
    {
        // Damage the file in place (same length, the map stays valid).
        use std::io::{Read, Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).expect("open rw");
        let mut byte = [0u8; 1];
        f.seek(SeekFrom::Start(pos)).expect("seek");
        f.read_exact(&mut byte).expect("read");
        f.seek(SeekFrom::Start(pos)).expect("seek");
        f.write_all(&[byte[0] ^ 1]).expect("write");
    }
    assert_eq!(r.read_column(ColumnId::CostMicros, 1).expect("served from the cache"), before);
    let err = r.verify().expect_err("verification reads the damaged file");
    assert!(err.to_string().contains("cost_micros block 1"), "{err}");
    let fresh = SegmentReader::open(ID, &path).expect("footer intact");
    assert!(fresh.read_column(ColumnId::CostMicros, 1).is_err(), "an uncached read sees the damage");
}

// ------------------------------------------------------------- any schema

/// A derived table's shape: two dimensions (one sorting), time, a sum and
/// a nullable bytes column (a sketch).
fn derived_schema() -> std::sync::Arc<SegmentSchema> {
    let col = |name, kind, nullable, dimension| ColumnDef { name, kind, nullable, dimension };
    let columns = vec![
        col("ts", ColumnKind::I64, false, false),
        col("advertiser_id", ColumnKind::Str, false, true),
        col("country", ColumnKind::Str, true, true),
        col("clicks", ColumnKind::I64, false, false),
        col("users", ColumnKind::Bytes, true, false),
    ];
    std::sync::Arc::new(SegmentSchema::new(columns, 0, vec![1]).expect("schema"))
}

/// Rows `(ts, advertiser, country, clicks, users)` as a batch of `derived_schema`.
type DerivedRow = (i64, String, Option<String>, i64, Option<Vec<u8>>);

fn derived_batch(schema: &SegmentSchema, rows: &[DerivedRow]) -> arrow_array::RecordBatch {
    use arrow_array::{ArrayRef, BinaryArray, Int64Array, StringArray};
    let columns: Vec<ArrayRef> = vec![
        std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        std::sync::Arc::new(rows.iter().map(|r| Some(r.1.as_str())).collect::<StringArray>()),
        std::sync::Arc::new(rows.iter().map(|r| r.2.as_deref()).collect::<StringArray>()),
        std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
        std::sync::Arc::new(rows.iter().map(|r| r.4.as_deref()).collect::<BinaryArray>()),
    ];
    arrow_array::RecordBatch::try_new(schema.arrow(), columns).expect("batch")
}

fn derived_rows(n: usize) -> Vec<DerivedRow> {
    (0..n)
        .map(|i| {
            let sketch = (i % 4 != 0).then(|| (0..(i % 7) as u8).map(|b| b.wrapping_mul(37) ^ i as u8).collect());
            (
                1_700_000_000_000 + ((i * 7919) % 5000) as i64 * 60_000,
                ["zeta", "acme", "mid"][i % 3].to_string(),
                (i % 5 != 0).then(|| ["DE", "FR"][i % 2].to_string()),
                i as i64 * 3,
                sketch,
            )
        })
        .collect()
}

#[test]
fn a_segment_of_any_schema_reads_back_sorted_with_its_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = derived_schema();
    let rows = derived_rows(300);
    let path = dir.path().join(ID.file_name());
    let summary = write_columns(&path, &schema, &derived_batch(&schema, &rows), &opts(64)).expect("write");
    assert_eq!(summary.rows, 300);
    assert_eq!(
        (summary.min_ts, summary.max_ts),
        (rows.iter().map(|r| r.0).min().expect("rows"), rows.iter().map(|r| r.0).max().expect("rows"))
    );

    let r = SegmentReader::open_as(ID, &path, schema.clone()).expect("open");
    r.verify().expect("verify");
    let mut want = rows.clone();
    // Sorted by advertiser then time; ties keep input order (stable sort).
    want.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    assert_eq!(r.read_record_batch().expect("read"), derived_batch(&schema, &want));
    // Block reads by position, the dimension indexed, the bytes picked.
    let block1 = r.block_rows(1);
    let ColumnData::Bytes(users) = r.read_column(4usize, 1).expect("block") else { panic!("bytes column") };
    assert_eq!(users.len(), block1.len());
    for (k, row) in block1.clone().enumerate() {
        assert_eq!(users.is_valid(k).then(|| users.value(k).to_vec()), want[row].4);
    }
    let ColumnData::Bytes(picked) = r.read_column_at(4usize, 1, &[5, 0, 5]).expect("picked") else {
        panic!("bytes column")
    };
    let at = |k: usize| picked.is_valid(k).then(|| picked.value(k).to_vec());
    assert_eq!(
        (at(0), at(1), at(2)),
        (want[block1.start + 5].4.clone(), want[block1.start].4.clone(), want[block1.start + 5].4.clone())
    );
    assert!(r.has_index(2usize));
    let de = r
        .dictionary(2usize)
        .expect("dictionary")
        .and_then(|d| (1..=d.len() as u32).find(|&c| d.value(c) == Some("DE")))
        .expect("DE");
    let de_rows: Vec<u32> = r.index_rows(2usize, de).expect("index").iter().collect();
    let model: Vec<u32> =
        want.iter().enumerate().filter(|(_, w)| w.2.as_deref() == Some("DE")).map(|(i, _)| i as u32).collect();
    assert_eq!(de_rows, model);

    // Opened as events, or as another derived schema, it is refused by name.
    let err = SegmentReader::open(ID, &path).expect_err("not an events segment");
    assert!(matches!(err, StorageError::SegmentCorrupt { .. }), "{err}");
    let col = |name, kind| ColumnDef { name, kind, nullable: false, dimension: false };
    let other = SegmentSchema::new(
        vec![
            col("ts", ColumnKind::I64),
            col("advertiser_id", ColumnKind::Str),
            col("country", ColumnKind::Str),
            col("clicks", ColumnKind::I64),
            col("users", ColumnKind::I64),
        ],
        0,
        vec![],
    )
    .expect("schema");
    let err = SegmentReader::open_as(ID, &path, std::sync::Arc::new(other)).expect_err("other schema");
    assert!(err.to_string().contains("users"), "{err}");
}

#[test]
fn every_flipped_byte_of_a_derived_segment_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = derived_schema();
    let path = dir.path().join(ID.file_name());
    write_columns(&path, &schema, &derived_batch(&schema, &derived_rows(40)), &opts(16)).expect("write");
    let bytes = std::fs::read(&path).expect("read");
    for i in (0..bytes.len()).step_by(3) {
        let mut bad = bytes.clone();
        bad[i] ^= 0x5a;
        std::fs::write(&path, &bad).expect("write");
        let outcome = SegmentReader::open_as(ID, &path, schema.clone()).and_then(|r| r.verify());
        assert!(outcome.is_err(), "flipped byte {i} of {} went unnoticed", bytes.len());
    }
}

#[test]
fn bad_schemas_and_batches_are_refused_by_name() {
    let col = |name, kind, nullable, dimension| ColumnDef { name, kind, nullable, dimension };
    let refused = |columns: Vec<ColumnDef>, ts: usize, sort: Vec<usize>| match SegmentSchema::new(columns, ts, sort) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    let ts = || col("ts", ColumnKind::I64, false, false);
    let dim = |name| col(name, ColumnKind::Str, false, true);
    assert!(refused(vec![], 0, vec![]).contains("0 columns"));
    assert!(refused(vec![ts(), ts()], 0, vec![]).contains("ts appears twice"));
    assert!(refused(vec![ts(), dim("a")], 1, vec![]).contains("time column 1"));
    assert!(refused(vec![ts(), col("n", ColumnKind::I64, true, false)], 0, vec![]).contains("n is nullable"));
    assert!(refused(vec![ts(), col("b", ColumnKind::Bytes, true, true)], 0, vec![]).contains("dimension b"));
    assert!(refused(vec![ts(), dim("a")], 0, vec![0]).contains("sort column 0"));
    assert!(
        refused(vec![ts(), dim("a"), dim("b"), dim("c"), dim("d")], 0, vec![1, 2, 3, 4]).contains("4 sort columns")
    );

    // A batch whose columns are not the schema's is refused, nothing written.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(ID.file_name());
    let events = EventBatch::from_events(&small_events(3));
    let err = write_columns(&path, &derived_schema(), events.record_batch(), &opts(16)).expect_err("mismatch");
    assert!(err.to_string().contains("advertiser_id"), "{err}");
    assert!(!path.exists());
}

#[test]
fn bytes_in_a_version_1_file_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(ID.file_name());
    let mut bytes = std::fs::read(golden_path(2)).expect("golden v2");
    let n = bytes.len();
    bytes[8..12].copy_from_slice(&1u32.to_le_bytes());
    bytes[n - 12..n - 8].copy_from_slice(&1u32.to_le_bytes());
    std::fs::write(&path, &bytes).expect("write");
    let err = SegmentReader::open_as(ID, &path, derived_schema()).expect_err("v1 with bytes");
    assert!(err.to_string().contains("users: bytes in a version 1 file"), "{err}");
}

// ---------------------------------------------------------------- id index

/// Events whose ids repeat across rows, granules and columns: impressions
/// share `impression_id`s, users and ip hashes come from small pools, and
/// one value (`shared`) is an `event_id` in one row and a `user_key` in another.
fn id_events(n: usize) -> Vec<Event> {
    let mut events = small_events(n);
    for (i, e) in events.iter_mut().enumerate() {
        e.event_id = format!("ev-{i}");
        e.impression_id = Some(format!("imp-{}", i % 997));
        e.click_id = (i % 3 == 0).then(|| format!("clk-{}", i / 3));
        e.user_key = (i % 5 != 0).then(|| format!("u-{}", (i * 7) % 1300));
        e.ip_hash = Some(format!("ip-{}", i % 4001));
    }
    events[17].event_id = "shared".into();
    events[n - 3].user_key = Some("shared".into());
    events
}

fn id_of(e: &Event, col: ColumnId) -> Option<&str> {
    match col {
        ColumnId::EventId => Some(&e.event_id),
        ColumnId::ImpressionId => e.impression_id.as_deref(),
        ColumnId::ClickId => e.click_id.as_deref(),
        ColumnId::UserKey => e.user_key.as_deref(),
        ColumnId::IpHash => e.ip_hash.as_deref(),
        _ => None,
    }
}

/// Checks `id_rows` of `r` against the stored rows `model`: every row
/// holding a value is a candidate, and candidates come in whole granules
/// that hold it somewhere.
fn check_id_rows(r: &SegmentReader, model: &[Event]) {
    let values = ["ev-0", "ev-12345", "imp-5", "clk-100", "u-42", "ip-4000", "shared", "nowhere", "imp-"];
    for col in crate::idindex::ID_COLUMNS {
        for v in values {
            let got = r.id_rows(col, &[v.to_string()]).expect("lookup").expect("the segment has an id index");
            let want: Vec<u32> =
                model.iter().enumerate().filter(|(_, e)| id_of(e, col) == Some(v)).map(|(i, _)| i as u32).collect();
            assert!(want.iter().all(|row| got.contains(*row)), "{col:?} = {v}: a matching row is not a candidate");
            let granule = crate::idindex::GRANULE_ROWS as usize;
            let granules: std::collections::BTreeSet<usize> = got.iter().map(|row| row as usize / granule).collect();
            for g in granules {
                let rows = &model[g * granule..((g + 1) * granule).min(model.len())];
                let holds = rows.iter().any(|e| crate::idindex::ID_COLUMNS.iter().any(|&c| id_of(e, c) == Some(v)));
                assert!(holds, "{col:?} = {v}: granule {g} holds no {v} in any id column");
            }
        }
    }
    let pair = ["clk-7".to_string(), "clk-3000".to_string()];
    let got = r.id_rows(ColumnId::ClickId, &pair).expect("lookup").expect("index");
    for (i, e) in model.iter().enumerate() {
        if e.click_id.as_deref().is_some_and(|c| pair.iter().any(|p| p == c)) {
            assert!(got.contains(i as u32), "IN misses row {i}");
        }
    }
    assert_eq!(r.id_rows(ColumnId::Country, &["DE".into()]).expect("lookup"), None, "not an id column");
}

#[test]
fn id_index_candidates_hold_every_row_with_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = id_events(20_000);
    let (path, _) = write(dir.path(), &events, &opts(3000));
    let r = SegmentReader::open(ID, &path).expect("open");
    assert!(r.has_id_index());
    r.verify().expect("verify");
    check_id_rows(&r, &model_sort(&events));

    let off = SegmentWriteOptions { id_index: false, ..opts(3000) };
    let (path, _) = write(dir.path(), &events, &off);
    let r = SegmentReader::open(ID, &path).expect("open");
    assert!(!r.has_id_index());
    assert_eq!(r.id_rows(ColumnId::EventId, &["ev-0".into()]).expect("lookup"), None);
}

/// Every distinct value of every id column of `model`, with its column.
fn all_ids(model: &[Event]) -> Vec<(ColumnId, String)> {
    let mut out: Vec<(ColumnId, String)> = crate::idindex::ID_COLUMNS
        .iter()
        .flat_map(|&c| model.iter().filter_map(move |e| id_of(e, c).map(|v| (c, v.to_string()))))
        .collect();
    out.sort_by(|a, b| (a.0.index(), &a.1).cmp(&(b.0.index(), &b.1)));
    out.dedup();
    out
}

/// Flips one byte in the middle of the id section's largest file (its
/// term dictionary or postings), returning the file's bytes.
fn flip_in_id_section(path: &Path) -> Vec<u8> {
    let ids = SegmentReader::open(ID, path).expect("open").footer.ids.clone().expect("id section");
    let (_, largest) = ids.files.iter().max_by_key(|(_, r)| r.end - r.start).expect("files");
    let mut bytes = std::fs::read(path).expect("read");
    bytes[(ids.offset + (largest.start + largest.end) / 2) as usize] ^= 0x01;
    bytes
}

/// Looks `values` up in `r` (stored rows `model`): a lookup fails with
/// `want_err`'s kind or finds every row holding its value; returns (ok, failed).
fn lookups_never_lose_a_row(
    r: &SegmentReader,
    model: &[Event],
    values: &[(ColumnId, String)],
    want_err: fn(&StorageError) -> bool,
) -> (u32, u32) {
    let (mut ok, mut failed) = (0, 0);
    for (col, v) in values {
        let (col, v) = (*col, v.as_str());
        match r.id_rows(col, &[v.to_string()]) {
            Err(e) => {
                assert!(want_err(&e), "{col:?} = {v}: {e}");
                failed += 1;
            }
            Ok(rows) => {
                let rows = rows.expect("an index");
                let lost = model.iter().enumerate().any(|(i, e)| id_of(e, col) == Some(v) && !rows.contains(i as u32));
                assert!(!lost, "{col:?} = {v}: a row was lost to the damage");
                ok += 1;
            }
        }
    }
    (ok, failed)
}

#[test]
fn a_flipped_byte_in_the_id_section_fails_the_lookups_that_read_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = id_events(5000);
    let model = model_sort(&events);
    let (path, _) = write(dir.path(), &events, &opts(1000));
    std::fs::write(&path, flip_in_id_section(&path)).expect("write");
    let r = SegmentReader::open(ID, &path).expect("the footer is intact");
    let corrupt = |e: &StorageError| {
        matches!(e, StorageError::SegmentCorrupt { .. }) && e.to_string().contains("checksum mismatch")
    };
    let (ok, failed) = lookups_never_lose_a_row(&r, &model, &all_ids(&model), corrupt);
    assert!(failed > 0, "the lookups that read the damaged page fail");
    assert!(ok > failed, "the others, on pages intact, still answer (pages are checked one by one)");
    let err = r.verify().expect_err("verify checks every page of the id section");
    assert!(err.to_string().contains("id section page"), "{err}");
}

#[test]
fn a_cold_segment_answers_lookups_from_a_few_ranges_not_the_file() {
    use crate::tier::{ChunkCache, ObjectTier};
    let dir = tempfile::tempdir().expect("tempdir");
    let events = id_events(150_000);
    let (path, summary) = write(dir.path(), &events, &SegmentWriteOptions::default());
    let tier =
        ObjectTier::open(dir.path().join("objects").to_str().expect("utf-8"), std::time::Duration::from_secs(30))
            .expect("open store")
            .with_cache(ChunkCache::open(&dir.path().join("cache"), 64 << 20).expect("cache"));
    let tier = std::sync::Arc::new(tier);
    tier.upload(ID, &path).expect("upload");
    let r = SegmentReader::open_remote(ID, tier.clone(), SegmentSchema::events().clone(), summary.size_bytes)
        .expect("open remote")
        .with_cache(std::sync::Arc::new(BlockCache::new(64 << 20)));
    let before = tier.stats().read_bytes;
    check_id_rows(&r, &model_sort(&events));
    let read = tier.stats().read_bytes - before;
    assert!(
        read * 2 < summary.size_bytes,
        "lookups read {read} bytes of a {} byte segment (whole chunks of its id section)",
        summary.size_bytes
    );
    // Asked again: the pages read are in the block cache, not even the
    // chunk cache is read.
    let (hits, misses) = (tier.stats().cache.hits, tier.stats().cache.misses);
    check_id_rows(&r, &model_sort(&events));
    assert_eq!((tier.stats().cache.hits, tier.stats().cache.misses), (hits, misses));
    drop(r);

    // Damaged in the bucket: the pages a lookup reads are checked as they
    // arrive. Gone from the bucket: an outage, not damage.
    let uncached = std::sync::Arc::new(
        ObjectTier::open(dir.path().join("objects").to_str().expect("utf-8"), std::time::Duration::from_secs(30))
            .expect("open store"),
    );
    let damaged = dir.path().join("damaged.seg");
    std::fs::write(&damaged, flip_in_id_section(&path)).expect("write");
    let other = SegmentId(ID.0 + 1);
    uncached.upload(other, &damaged).expect("upload");
    let r = SegmentReader::open_remote(other, uncached.clone(), SegmentSchema::events().clone(), summary.size_bytes)
        .expect("open remote");
    let corrupt = |e: &StorageError| matches!(e, StorageError::SegmentCorrupt { .. });
    let model = model_sort(&events);
    let values: Vec<(ColumnId, String)> = all_ids(&model).into_iter().step_by(50).collect();
    let (ok, failed) = lookups_never_lose_a_row(&r, &model, &values, corrupt);
    assert!(ok > 0 && failed > 0, "{ok} lookups answered, {failed} failed");
    uncached.delete(other).expect("delete");
    let r = SegmentReader::open_remote(ID, uncached.clone(), SegmentSchema::events().clone(), summary.size_bytes)
        .expect("open remote");
    uncached.delete(ID).expect("delete");
    let err = r.id_rows(ColumnId::EventId, &["ev-1".into()]).expect_err("the object is gone");
    assert!(matches!(err, StorageError::ObjectStore { .. }), "{err}");
}
