//! The fuzz targets (issue 25): what each one is fed and what it promises.
//! Shared by the stable runs in `tests/fuzz.rs` (proptest, a time budget,
//! in every test run) and the coverage-guided cargo-fuzz targets in
//! `tests/fuzz/fuzz_targets/` (libFuzzer, where a nightly toolchain or
//! `RUSTC_BOOTSTRAP=1` allows). Every input comes from bytes read through
//! [`Unstructured`], so both drivers walk the same grammars; a check
//! returns `Err` with what broke the promise.
//!
//! - `ndjson`: any body, or lines that look like events with fields of any
//!   shape, is parsed or rejected line by line, with messages of bounded
//!   length (no echo of a huge value);
//! - `arrow_ipc`: a valid Arrow IPC stream, damaged, is read or rejected;
//! - `sql`: statements from a grammar of the SQL subset (and beyond it)
//!   answer or fail with a user error, never an internal one;
//! - `data_dir`: a data directory with one segment or WAL file damaged
//!   opens with the damage reported by name (or the open refused, naming
//!   the file), and never serves an altered event.
//!
//! None may panic: a panic is a finding too.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use adstore_ingest::{ParseOptions, parse_arrow_ipc, parse_ndjson};
use adstore_query::{QueryOptions, execute};
use adstore_storage::{Event, EventBatch, EventType, SealPipeline, Store, StoreConfig, encode_batch};
use arbitrary::{Arbitrary, Result, Unstructured};

pub const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

/// Longest rejection message a line may get.
const MAX_MESSAGE_BYTES: usize = 600;

fn event(n: usize) -> Event {
    let kind = [EventType::Impression, EventType::Click, EventType::Conversion][n % 3];
    Event {
        event_id: format!("e{n}"),
        kind,
        ts: BASE + (n as i64) * 61_000,
        publisher_id: format!("p{}", n % 3),
        advertiser_id: format!("a{}", n % 2),
        campaign_id: format!("c{}", n % 4),
        ad_id: format!("x{}", n % 5),
        impression_id: (kind != EventType::Conversion).then(|| format!("i{n}")),
        click_id: (kind == EventType::Click).then(|| format!("k{n}")),
        user_key: (!n.is_multiple_of(7)).then(|| format!("u{}", n % 11)),
        device: Some(["mobile", "desktop", "tablet"][n % 3].into()),
        country: Some(["US", "DE", "FR"][n % 3].into()),
        cost_micros: (n as i64) * 1_000 - 3_000,
        ..Event::default()
    }
}

pub fn events(n: usize) -> Vec<Event> {
    (0..n).map(event).collect()
}

/// A store holding sealed segments and head rows.
pub fn store(dir: &Path) -> Store {
    let config = StoreConfig { fsync: false, block_rows: 128, min_free_bytes: 0, ..StoreConfig::default() };
    let store = Store::open(dir, config, SealPipeline::new()).expect("open");
    let events = events(120);
    store.append(&EventBatch::from_events(&events[..80])).expect("append");
    store.seal_all().expect("seal");
    store.append(&EventBatch::from_events(&events[80..])).expect("append");
    store
}

/// Damage done to a file: bytes overwritten, a piece of it spliced in, the
/// tail cut off. Offsets wrap around the file's length.
#[derive(Debug, Arbitrary)]
pub struct Damage {
    writes: Vec<(u32, u8)>,
    splice: Option<(u32, u32)>,
    cut: Option<u32>,
}

impl Damage {
    pub fn apply(&self, bytes: &mut Vec<u8>) {
        let at = |off: u32, len: usize| off as usize % len.max(1);
        for &(off, v) in &self.writes {
            if !bytes.is_empty() {
                let i = at(off, bytes.len());
                bytes[i] = v;
            }
        }
        if let Some((a, b)) = self.splice {
            let (a, b) = (at(a, bytes.len()), at(b, bytes.len()));
            let (from, to) = (a.min(b), a.max(b));
            let piece = bytes[from.min(bytes.len())..to.min(bytes.len())].to_vec();
            bytes.splice(from.min(bytes.len())..from.min(bytes.len()), piece);
        }
        if let Some(cut) = self.cut {
            bytes.truncate(at(cut, bytes.len() + 1));
        }
    }
}

// ---- ndjson ----

/// A body of up to 6 lines: bytes of any kind, or an event with one field
/// of any shape.
pub fn ndjson_body(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for _ in 0..u.int_in_range(0..=5)? {
        if u.ratio(1, 3)? {
            let n = u.int_in_range(0..=300)?;
            lines.push(u.bytes(n.min(u.len()))?.to_vec());
            continue;
        }
        let key = *u.choose(&["event_id", "type", "ts", "publisher_id", "cost_micros", "user_key", "x"])?;
        let value = match u.int_in_range(0..=7)? {
            0 => "\"click\"".to_string(),
            1 => "null".to_string(),
            2 => "[[[[[[[[]]]]]]]]".to_string(),
            3 => "{\"a\":{\"b\":1}}".to_string(),
            4 => i64::arbitrary(u)?.to_string(),
            5 => f64::arbitrary(u)?.to_string(),
            6 => format!("{:?}", String::arbitrary(u)?),
            _ => format!("\"{}\"", "9".repeat(5000)),
        };
        lines.push(
            format!(
                "{{\"event_id\":\"e\",\"type\":\"impression\",\"ts\":{BASE},\"publisher_id\":\"p\",\
                 \"advertiser_id\":\"a\",\"campaign_id\":\"c\",\"ad_id\":\"x\",\"impression_id\":\"i\",\"{key}\":{value}}}"
            )
            .into_bytes(),
        );
    }
    Ok(lines.join(&b'\n'))
}

pub fn ndjson(body: &[u8]) -> std::result::Result<(), String> {
    let opts = ParseOptions { now_ms: BASE, ..ParseOptions::default() };
    let out = parse_ndjson(body, &opts);
    if let Some(e) = out.errors.iter().find(|e| e.reason.len() > MAX_MESSAGE_BYTES) {
        let head: String = e.reason.chars().take(200).collect();
        return Err(format!("a message of {} bytes: {head}", e.reason.len()));
    }
    let lines = body.split(|&b| b == b'\n').count();
    if out.accepted() + out.rejected > lines {
        return Err(format!("{} accepted and {} rejected of {lines} lines", out.accepted(), out.rejected));
    }
    Ok(())
}

// ---- arrow_ipc ----

/// How many events [`valid_arrow_ipc`] holds.
const ARROW_EVENTS: usize = 40;

pub fn valid_arrow_ipc() -> Vec<u8> {
    encode_batch(&EventBatch::from_events(&events(ARROW_EVENTS))).expect("encode")
}

pub fn arrow_ipc(body: &[u8]) -> std::result::Result<(), String> {
    let opts = ParseOptions { now_ms: BASE, ..ParseOptions::default() };
    let out = parse_arrow_ipc(body.to_vec(), &opts);
    if out.accepted() > ARROW_EVENTS {
        return Err(format!("{} events read from a stream of {ARROW_EVENTS}", out.accepted()));
    }
    Ok(())
}

// ---- sql ----

/// Expressions of the SQL subset and a little beyond, of any type, at most
/// `depth` operators deep.
fn expr(u: &mut Unstructured<'_>, depth: u32) -> Result<String> {
    if depth == 0 || u.ratio(1, 3)? {
        return Ok(match u.int_in_range(0..=2)? {
            0 => (*u.choose(&[
                "cost_micros",
                "ts",
                "type",
                "campaign_id",
                "device",
                "country",
                "user_key",
                "attributed",
                "invalid_reason",
                "impressions",
                "nope",
            ])?)
            .to_string(),
            1 => i64::arbitrary(u)?.to_string(),
            _ => (*u.choose(&[
                "0",
                "-1",
                "1.5",
                "1e308",
                "NULL",
                "TRUE",
                "'click'",
                "'%o%'",
                "''",
                "now()",
                "TIMESTAMP '2026-11-22T10:00:00Z'",
                "INTERVAL '1 hour'",
                "'2026-11-22'",
                "9223372036854775807",
            ])?)
            .to_string(),
        });
    }
    let d = depth - 1;
    Ok(match u.int_in_range(0..=13)? {
        0 => {
            let op = u.choose(&["+", "-", "*", "/", "%", "=", "<>", "<", ">=", "AND", "OR", "||"])?;
            format!("({} {op} {})", expr(u, d)?, expr(u, d)?)
        }
        1 => format!("NOT {}", expr(u, d)?),
        2 => format!("-{}", expr(u, d)?),
        3 => format!("{} IS NULL", expr(u, d)?),
        4 => format!("{} IN ({}, 1, 'x')", expr(u, d)?, expr(u, d)?),
        5 => format!("{} BETWEEN {} AND {}", expr(u, d)?, expr(u, d)?, expr(u, d)?),
        6 => format!("{} LIKE 'c%'", expr(u, d)?),
        7 => format!("CASE WHEN {} THEN {} ELSE {} END", expr(u, d)?, expr(u, d)?, expr(u, d)?),
        8 => format!("coalesce({}, {})", expr(u, d)?, expr(u, d)?),
        9 => format!("nullif({}, {})", expr(u, d)?, expr(u, d)?),
        10 => format!("date_trunc('hour', {})", expr(u, d)?),
        11 => format!("time_bucket(INTERVAL '5 minutes', {})", expr(u, d)?),
        12 => format!("CAST({} AS BIGINT)", expr(u, d)?),
        _ => format!("extract(epoch FROM {})", expr(u, d)?),
    })
}

fn aggregate(u: &mut Unstructured<'_>) -> Result<String> {
    let f = *u.choose(&["count", "sum", "min", "max", "avg", "count_distinct", "approx_count_distinct"])?;
    let a = expr(u, 5)?;
    let call = match f {
        "count_distinct" => format!("count(DISTINCT {a})"),
        "count" => "count(*)".to_string(),
        f => format!("{f}({a})"),
    };
    Ok(if u.arbitrary()? { format!("{call} FILTER (WHERE {})", expr(u, 5)?) } else { call })
}

/// A statement of the grammar: items, WHERE, GROUP BY, HAVING, ORDER BY,
/// LIMIT, EXPLAIN, over `events` or `metrics`.
pub fn sql_statement(u: &mut Unstructured<'_>) -> Result<String> {
    let table = u.choose(&["events", "metrics"])?;
    let mut items = Vec::new();
    for _ in 0..u.int_in_range(1..=3)? {
        items.push(if u.arbitrary()? { expr(u, 5)? } else { aggregate(u)? });
    }
    let mut q = format!("SELECT {} FROM {table}", items.join(", "));
    if u.arbitrary()? {
        q += &format!(" WHERE {}", expr(u, 5)?);
    }
    if u.arbitrary()? {
        q += &format!(" GROUP BY {}", u.choose(&["campaign_id", "device", "type", "ts", "1"])?);
    }
    if u.arbitrary()? {
        q += &format!(" HAVING {}", expr(u, 5)?);
    }
    if u.arbitrary()? {
        let n = u.int_in_range(1..=3)?;
        q += &format!(" ORDER BY {n}{}", if u.arbitrary()? { " DESC" } else { "" });
    }
    if u.arbitrary()? {
        q += &format!(" LIMIT {}", u.int_in_range(0..=19)?);
    }
    Ok(if u.arbitrary()? { format!("EXPLAIN {q}") } else { q })
}

/// A store to query, in a directory that lives as long as it does.
pub struct SqlFixture {
    store: Store,
    _dir: tempfile::TempDir,
}

impl SqlFixture {
    pub fn new() -> SqlFixture {
        let dir = tempfile::tempdir().expect("tempdir");
        SqlFixture { store: store(dir.path()), _dir: dir }
    }

    pub fn check(&self, sql: &str) -> std::result::Result<(), String> {
        let opts = QueryOptions { now_ms: BASE + 86_400_000, ..QueryOptions::default() };
        match execute(&self.store.snapshot(), sql, &opts) {
            Err(e) if !e.is_user_error() => Err(format!("not a user error: {e}")),
            _ => Ok(()),
        }
    }
}

// ---- data_dir ----

/// A closed data directory with sealed segments and a WAL, copied afresh
/// for each damage.
pub struct DataDirFixture {
    template: tempfile::TempDir,
    /// Its segment and WAL files, relative to it.
    files: Vec<PathBuf>,
    /// Every stored event, as `{:?}`, sorted.
    original: Vec<String>,
}

fn config() -> StoreConfig {
    StoreConfig { fsync: false, min_free_bytes: 0, ..StoreConfig::default() }
}

fn stored(store: &Store) -> std::result::Result<Vec<String>, String> {
    let batches = store.snapshot().read_events().map_err(|e| e.to_string())?;
    let mut out: Vec<String> = batches.iter().flat_map(EventBatch::events).map(|e| format!("{e:?}")).collect();
    out.sort();
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) {
    for d in ["segments", "wal"] {
        std::fs::create_dir_all(to.join(d)).expect("dir");
        for e in std::fs::read_dir(from.join(d)).expect("dir").flatten() {
            std::fs::copy(e.path(), to.join(d).join(e.file_name())).expect("copy");
        }
    }
    for e in std::fs::read_dir(from).expect("dir").flatten().filter(|e| e.path().is_file()) {
        std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
    }
}

impl DataDirFixture {
    pub fn new() -> DataDirFixture {
        let template = tempfile::tempdir().expect("tempdir");
        drop(store(template.path()));
        let original = {
            let copy = tempfile::tempdir().expect("tempdir");
            copy_dir(template.path(), copy.path());
            let store = Store::open(copy.path(), config(), SealPipeline::new()).expect("open the copy");
            stored(&store).expect("read the copy")
        };
        assert_eq!(original.len(), 120);
        let mut files: Vec<PathBuf> = ["segments", "wal"]
            .iter()
            .flat_map(|d| std::fs::read_dir(template.path().join(d)).expect("dir").flatten().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg" || x == "wal"))
            .map(|p| p.strip_prefix(template.path()).expect("inside").to_path_buf())
            .collect();
        files.sort();
        assert!(files.iter().any(|p| p.extension().is_some_and(|x| x == "seg")), "a segment to damage");
        assert!(files.iter().any(|p| p.extension().is_some_and(|x| x == "wal")), "a WAL file to damage");
        DataDirFixture { template, files, original }
    }

    /// Opens a copy with file `which` (wrapping around) damaged.
    pub fn check(&self, which: u8, damage: &Damage) -> std::result::Result<(), String> {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_dir(self.template.path(), copy.path());
        let name = &self.files[usize::from(which) % self.files.len()];
        let target = copy.path().join(name);
        let mut bytes = std::fs::read(&target).expect("read");
        damage.apply(&mut bytes);
        std::fs::write(&target, &bytes).expect("write");
        let file = name.file_name().expect("file name").to_string_lossy().into_owned();
        let store = match Store::open(copy.path(), config(), SealPipeline::new()) {
            Ok(store) => store,
            Err(e) => {
                // Refused: the error names the file (or its segment id).
                let stem = file.split('.').next().unwrap_or_default().trim_start_matches('0');
                if e.to_string().contains(stem) {
                    return Ok(());
                }
                return Err(format!("{file} damaged; open refused without naming it: {e}"));
            }
        };
        // Whatever is served is what was stored: every event read back is
        // one of the originals, unaltered (a cut WAL tail may lose events;
        // damage is detected, never served).
        if let Ok(events) = stored(&store) {
            let mut left = self.original.clone();
            for e in &events {
                let Some(at) = left.iter().position(|o| o == e) else {
                    return Err(format!("{file} damaged: an altered event served: {e}"));
                };
                left.swap_remove(at);
            }
            if file.ends_with(".seg") && events.len() < self.original.len() {
                // Not served: reported as damaged, by name, and a query over
                // its time fails rather than undercount.
                let damaged: Vec<String> = store.damaged().iter().map(|d| d.meta.id.file_name()).collect();
                if !damaged.contains(&file) {
                    return Err(format!("{file} damaged: events lost, damaged segments {damaged:?}"));
                }
                let q = execute(&store.snapshot(), "SELECT count(*) FROM events", &QueryOptions::default());
                if let Ok(r) = q {
                    return Err(format!("{file} damaged, yet a query over it answered {:?}", r.rows()));
                }
            }
        }
        // Queries over it answer or fail, without a panic.
        let _ = execute(&store.snapshot(), "SELECT count(*), sum(cost_micros) FROM events", &QueryOptions::default());
        let _ = store.close();
        Ok(())
    }
}
