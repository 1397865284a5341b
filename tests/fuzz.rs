//! Fuzzing on the stable toolchain (issue 25): each target runs generated
//! inputs for a time budget, `ADSTORE_FUZZ_SECONDS` (default 10) each, and
//! fails with the smallest input proptest finds that panics or breaks the
//! target's promise:
//!
//! - `ndjson`: any bytes as an ingest body are parsed or rejected line by
//!   line, with messages of bounded length (no echo of a huge value);
//! - `arrow_ipc`: a valid Arrow IPC stream, mutated, truncated or spliced,
//!   is read or rejected, never a panic;
//! - `sql`: statements from a grammar of the SQL subset (and beyond it)
//!   answer or fail with a user error; never a panic or an internal error;
//! - `data_dir`: a data directory with one segment or WAL file mutated
//!   opens with the damage reported by name (or the open refused, naming
//!   the file), and reading it never panics nor serves a damaged segment.
//!
//! A longer run: `ADSTORE_FUZZ_SECONDS=600 cargo test --release --test fuzz`.

use std::time::{Duration, Instant};

use adstore_ingest::{ParseOptions, parse_arrow_ipc, parse_ndjson};
use adstore_query::{QueryOptions, execute};
use adstore_storage::{Event, EventBatch, EventType, SealPipeline, Store, StoreConfig, encode_batch};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};

const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z

fn budget() -> Duration {
    let secs = std::env::var("ADSTORE_FUZZ_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    Duration::from_secs(secs)
}

/// Runs `test` on values of `strategy` until the budget is spent; a failure
/// is shrunk and reported with its input.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config { failure_persistence: None, ..Config::default() });
    let deadline = Instant::now() + budget();
    let mut cases = 0u64;
    while Instant::now() < deadline {
        let tree = strategy.new_tree(&mut runner).expect("a value");
        match runner.run_one(tree, &test) {
            Ok(_) => cases += 1,
            Err(TestError::Fail(reason, input)) => panic!("fuzz {name}: {reason}\nminimal input: {input:?}"),
            Err(TestError::Abort(reason)) => panic!("fuzz {name}: aborted: {reason}"),
        }
    }
    eprintln!("fuzz {name}: {cases} cases, no finding");
}

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

fn events(n: usize) -> Vec<Event> {
    (0..n).map(event).collect()
}

/// A store holding sealed segments and head rows.
fn store(dir: &std::path::Path) -> Store {
    let config = StoreConfig { fsync: false, block_rows: 128, min_free_bytes: 0, ..StoreConfig::default() };
    let store = Store::open(dir, config, SealPipeline::new()).expect("open");
    let all = events(120);
    store.append(&EventBatch::from_events(&all[..80])).expect("append");
    store.seal_all().expect("seal");
    store.append(&EventBatch::from_events(&all[80..])).expect("append");
    store
}

/// Mutations of `bytes`: overwritten bytes, a cut, a splice of itself.
fn mutated(bytes: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = bytes.len().max(1);
    (prop::collection::vec((0..len, any::<u8>()), 0..8), prop::option::of(0..len), prop::option::of((0..len, 0..len)))
        .prop_map(move |(writes, cut, splice)| {
            let mut b = bytes.clone();
            for (at, v) in writes {
                if at < b.len() {
                    b[at] = v;
                }
            }
            if let Some((from, to)) = splice {
                let (from, to) = (from.min(to), from.max(to));
                let piece = b[from.min(b.len())..to.min(b.len())].to_vec();
                b.splice(from.min(b.len())..from.min(b.len()), piece);
            }
            if let Some(cut) = cut {
                b.truncate(cut);
            }
            b
        })
}

#[test]
fn fuzz_ndjson() {
    let line = prop_oneof![
        // Bytes of any kind.
        prop::collection::vec(any::<u8>(), 0..300),
        // Lines that look like events, with fields of any shape.
        (
            prop::sample::select(vec!["event_id", "type", "ts", "publisher_id", "cost_micros", "user_key", "x"]),
            prop_oneof![
                Just("\"click\"".to_string()),
                Just("null".to_string()),
                Just("[[[[[[[[]]]]]]]]".to_string()),
                Just("{\"a\":{\"b\":1}}".to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| f.to_string()),
                ".{0,40}".prop_map(|s| format!("{s:?}")),
                Just(format!("\"{}\"", "9".repeat(5000))),
            ],
        )
            .prop_map(|(k, v)| {
                format!(
                    "{{\"event_id\":\"e\",\"type\":\"impression\",\"ts\":1795341600000,\"publisher_id\":\"p\",\
                     \"advertiser_id\":\"a\",\"campaign_id\":\"c\",\"ad_id\":\"x\",\"impression_id\":\"i\",\"{k}\":{v}}}"
                )
                .into_bytes()
            }),
    ];
    let body = prop::collection::vec(line, 0..6).prop_map(|lines| lines.join(&b'\n'));
    let opts = ParseOptions { now_ms: BASE, ..ParseOptions::default() };
    fuzz("ndjson", body, |body| {
        let out = parse_ndjson(&body, &opts);
        for e in &out.errors {
            prop_assert!(e.reason.len() <= 600, "a message of {} bytes: {}", e.reason.len(), &e.reason[..200]);
        }
        prop_assert!(out.accepted() + out.rejected <= body.split(|&b| b == b'\n').count());
        Ok(())
    });
}

#[test]
fn fuzz_arrow_ipc() {
    let valid = encode_batch(&EventBatch::from_events(&events(40))).expect("encode");
    let opts = ParseOptions { now_ms: BASE, ..ParseOptions::default() };
    fuzz("arrow_ipc", mutated(valid), |body| {
        let out = parse_arrow_ipc(body, &opts);
        prop_assert!(out.accepted() <= 40);
        Ok(())
    });
}

/// Expressions of the SQL subset and a little beyond, of any type.
fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
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
        ])
        .prop_map(str::to_string),
        any::<i64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
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
        ])
        .prop_map(str::to_string),
    ];
    leaf.prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["+", "-", "*", "/", "%", "=", "<>", "<", ">=", "AND", "OR", "||"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("({a} {op} {b})")),
            inner.clone().prop_map(|a| format!("NOT {a}")),
            inner.clone().prop_map(|a| format!("-{a}")),
            inner.clone().prop_map(|a| format!("{a} IS NULL")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} IN ({b}, 1, 'x')")),
            (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, b, c)| format!("{a} BETWEEN {b} AND {c}")),
            inner.clone().prop_map(|a| format!("{a} LIKE 'c%'")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("CASE WHEN {a} THEN {b} ELSE {c} END")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("coalesce({a}, {b})")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("nullif({a}, {b})")),
            inner.clone().prop_map(|a| format!("date_trunc('hour', {a})")),
            inner.clone().prop_map(|a| format!("time_bucket(INTERVAL '5 minutes', {a})")),
            inner.clone().prop_map(|a| format!("CAST({a} AS BIGINT)")),
            inner.clone().prop_map(|a| format!("extract(epoch FROM {a})")),
        ]
    })
}

fn aggregate() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["count", "sum", "min", "max", "avg", "count_distinct", "approx_count_distinct"]),
        expr(),
        prop::option::of(expr()),
    )
        .prop_map(|(f, a, filter)| {
            let call = match f {
                "count_distinct" => format!("count(DISTINCT {a})"),
                "count" => "count(*)".to_string(),
                f => format!("{f}({a})"),
            };
            match filter {
                Some(w) => format!("{call} FILTER (WHERE {w})"),
                None => call,
            }
        })
}

fn statement() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["events", "metrics"]),
        prop::collection::vec(prop_oneof![expr(), aggregate()], 1..4),
        prop::option::of(expr()),
        prop::option::of(prop::sample::select(vec!["campaign_id", "device", "type", "ts", "1"])),
        prop::option::of(expr()),
        prop::option::of((1u32..4, any::<bool>())),
        prop::option::of(0u64..20),
        any::<bool>(),
    )
        .prop_map(|(table, items, filter, group, having, order, limit, explain)| {
            let mut q = format!("SELECT {} FROM {table}", items.join(", "));
            if let Some(w) = filter {
                q += &format!(" WHERE {w}");
            }
            if let Some(g) = group {
                q += &format!(" GROUP BY {g}");
            }
            if let Some(h) = having {
                q += &format!(" HAVING {h}");
            }
            if let Some((n, desc)) = order {
                q += &format!(" ORDER BY {n}{}", if desc { " DESC" } else { "" });
            }
            if let Some(l) = limit {
                q += &format!(" LIMIT {l}");
            }
            if explain { format!("EXPLAIN {q}") } else { q }
        })
}

#[test]
fn fuzz_sql() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path());
    let opts = QueryOptions { now_ms: BASE + 86_400_000, ..QueryOptions::default() };
    fuzz("sql", statement(), |sql| {
        match execute(&store.snapshot(), &sql, &opts) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.is_user_error(), "not a user error: {e}"),
        }
        Ok(())
    });
}

#[test]
fn fuzz_data_dir() {
    let template = tempfile::tempdir().expect("tempdir");
    drop(store(template.path()));
    let copy_of = |from: &std::path::Path, to: &std::path::Path| {
        for d in ["segments", "wal"] {
            std::fs::create_dir_all(to.join(d)).expect("dir");
            for e in std::fs::read_dir(from.join(d)).expect("dir").flatten() {
                std::fs::copy(e.path(), to.join(d).join(e.file_name())).expect("copy");
            }
        }
        for e in std::fs::read_dir(from).expect("dir").flatten().filter(|e| e.path().is_file()) {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    };
    let config = StoreConfig { fsync: false, min_free_bytes: 0, ..StoreConfig::default() };
    let stored = |store: &Store| -> Result<Vec<String>, String> {
        let batches = store.snapshot().read_events().map_err(|e| e.to_string())?;
        let mut out: Vec<String> = batches.iter().flat_map(EventBatch::events).map(|e| format!("{e:?}")).collect();
        out.sort();
        Ok(out)
    };
    let original = {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_of(template.path(), copy.path());
        let store = Store::open(copy.path(), config.clone(), SealPipeline::new()).expect("open the copy");
        stored(&store).expect("read the copy")
    };
    assert_eq!(original.len(), 120);
    let mut files: Vec<std::path::PathBuf> = ["segments", "wal"]
        .iter()
        .flat_map(|d| std::fs::read_dir(template.path().join(d)).expect("dir").flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "seg" || x == "wal"))
        .collect();
    files.sort();
    assert!(files.iter().any(|p| p.extension().is_some_and(|x| x == "seg")), "a segment to mutate");
    assert!(files.iter().any(|p| p.extension().is_some_and(|x| x == "wal")), "a WAL file to mutate");
    let sizes: Vec<usize> = files.iter().map(|p| std::fs::metadata(p).expect("meta").len() as usize).collect();
    let strategy = (0..files.len()).prop_flat_map(move |i| {
        let size = sizes[i].max(1);
        (Just(i), prop::collection::vec((0..size, any::<u8>()), 1..6), prop::option::of(0..size))
    });
    fuzz("data_dir", strategy, |(i, writes, cut)| {
        let copy = tempfile::tempdir().expect("tempdir");
        copy_of(template.path(), copy.path());
        let name = files[i].strip_prefix(template.path()).expect("inside");
        let target = copy.path().join(name);
        let mut bytes = std::fs::read(&target).expect("read");
        for (at, v) in writes {
            if at < bytes.len() {
                bytes[at] = v;
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut);
        }
        std::fs::write(&target, &bytes).expect("write");
        let file = name.file_name().expect("file name").to_string_lossy().into_owned();
        match Store::open(copy.path(), config.clone(), SealPipeline::new()) {
            Err(e) => {
                // Refused: the error names the file (or its segment id).
                let stem = file.split('.').next().unwrap_or_default().trim_start_matches('0');
                prop_assert!(e.to_string().contains(stem), "{file} mutated; open refused without naming it: {e}");
            }
            Ok(store) => {
                // Whatever is served is what was stored: every event read
                // back is one of the originals, unaltered (a cut WAL tail may
                // lose events; damage is detected, never served). Queries
                // over it answer or fail, without a panic.
                if let Ok(events) = stored(&store) {
                    let mut left = original.clone();
                    for e in &events {
                        let Some(at) = left.iter().position(|o| o == e) else {
                            return Err(TestCaseError::fail(format!("{file} mutated: an altered event served: {e}")));
                        };
                        left.swap_remove(at);
                    }
                    if file.ends_with(".seg") && events.len() < original.len() {
                        // Not served: reported as damaged, by name, and a
                        // query over its time fails rather than undercount.
                        let damaged: Vec<String> = store.damaged().iter().map(|d| d.meta.id.file_name()).collect();
                        prop_assert!(damaged.contains(&file), "{} mutated: events lost, damaged {:?}", file, damaged);
                        let q = execute(&store.snapshot(), "SELECT count(*) FROM events", &QueryOptions::default());
                        prop_assert!(
                            q.is_err(),
                            "{} damaged, yet a query over it answered {:?}",
                            file,
                            q.map(|r| r.rows())
                        );
                    }
                }
                let _ = execute(
                    &store.snapshot(),
                    "SELECT count(*), sum(cost_micros) FROM events",
                    &QueryOptions::default(),
                );
                let _ = store.close();
            }
        }
        Ok(())
    });
}
