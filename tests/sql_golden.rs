//! Golden SQL tests: every `tests/sql/*.sql` file holds queries separated
//! by `;` at the end of a line; `tests/sql/<name>.out` holds what the
//! engine answers over a fixed, deterministic dataset (results, or the
//! error with its code and position). Regenerate after an intended change
//! with `ADSTORE_REGENERATE_GOLDEN=1 cargo test --test sql_golden`.
//!
//! Dataset: 4000 generated events over 2026-11-22 and 2026-11-23 (UTC),
//! day buckets, two shards, 128-row blocks; events before
//! 2026-11-23T18:00Z are sealed into segments, later ones stay in the head.
//! `now()` is 2026-11-24T00:00:00Z; queries run on 2 rayon threads.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use adstore_query::{QueryOptions, execute};
use adstore_storage::{Event, EventBatch, EventType, InvalidReason, SealPipeline, Store, StoreConfig};

const DAY0: i64 = 1_795_305_600_000; // 2026-11-22T00:00:00Z
const HOUR: i64 = 3_600_000;

/// A tiny deterministic generator (xorshift), so the dataset never changes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }

    fn maybe(&mut self, xs: &[&str], none_in: u64) -> Option<String> {
        if self.below(none_in) == 0 { None } else { Some(self.pick(xs).to_string()) }
    }
}

fn dataset() -> Vec<Event> {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::new();
    for i in 0..4000u64 {
        let adv = ["a1", "a1", "a2", "a3"][r.below(4) as usize];
        let camp = format!("{adv}-c{}", r.below(3) + 1);
        let ad = format!("{camp}-ad{}", r.below(4) + 1);
        let roll = r.below(100);
        let kind = if roll < 80 {
            EventType::Impression
        } else if roll < 95 {
            EventType::Click
        } else {
            EventType::Conversion
        };
        let invalid = match (kind, r.below(20)) {
            (EventType::Click, 0) => InvalidReason::Unattributed,
            (EventType::Click, 1) => InvalidReason::TooFast,
            (EventType::Click, 2) => InvalidReason::ClickFlood,
            (EventType::Impression, 0) => InvalidReason::BotUa,
            _ => InvalidReason::Valid,
        };
        // Busier during the day: hours 8..20 twice as likely.
        let hour = loop {
            let h = r.below(48);
            if (8..20).contains(&(h % 24)) || r.below(2) == 0 {
                break h as i64;
            }
        };
        let ts = DAY0 + hour * HOUR + r.below(HOUR as u64) as i64;
        let cost = match kind {
            EventType::Impression => 1000 + r.below(2000) as i64,
            EventType::Click => 100_000 + r.below(400_000) as i64,
            EventType::Conversion => 0,
        };
        let attributed = kind != EventType::Impression && invalid == InvalidReason::Valid && r.below(4) != 0;
        out.push(Event {
            event_id: format!("ev{i:05}"),
            kind,
            ts,
            publisher_id: r.pick(&["pub1", "pub2", "pub3"]).to_string(),
            advertiser_id: adv.to_string(),
            campaign_id: camp,
            ad_group_id: r.maybe(&["g1", "g2"], 5),
            ad_id: ad,
            impression_id: None,
            click_id: None,
            user_key: r
                .maybe(&["u01", "u02", "u03", "u04", "u05", "u06", "u07", "u08", "u09", "u10", "u11", "u12"], 10),
            device: r.maybe(&["mobile", "mobile", "desktop", "tablet", "ctv"], 12),
            os: r.maybe(&["ios", "android", "windows", "macos"], 12),
            country: r.maybe(&["US", "US", "DE", "FR", "GB"], 15),
            region: r.maybe(&["north", "south"], 4),
            placement: r.maybe(&["feed", "banner", "video", "search"], 8),
            cost_micros: cost,
            value_micros: if kind == EventType::Conversion { 1_000_000 + r.below(9_000_000) as i64 } else { 0 },
            ip_hash: None,
            ua_hash: None,
            attributed,
            attributed_to: attributed.then(|| format!("t{}", r.below(1000))),
            invalid_reason: invalid,
        });
    }
    out
}

fn open_store(dir: &Path) -> Store {
    let config =
        StoreConfig { shards: 2, bucket_width_ms: 24 * HOUR, block_rows: 128, fsync: false, ..StoreConfig::default() };
    let store = Store::open(dir, config, SealPipeline::new()).expect("open store");
    let events = dataset();
    let cut = DAY0 + 42 * HOUR;
    let (sealed, head): (Vec<Event>, Vec<Event>) = events.into_iter().partition(|e| e.ts < cut);
    store.append(&EventBatch::from_events(&sealed)).expect("append");
    store.seal_all().expect("seal");
    store.append(&EventBatch::from_events(&head)).expect("append");
    store
}

fn render(store: &Store, sql: &str) -> String {
    let opts = QueryOptions { now_ms: DAY0 + 48 * HOUR, ..QueryOptions::default() };
    let mut out = String::new();
    match execute(&store.snapshot(), sql, &opts) {
        Err(e) => {
            let at = e.position().map(|p| format!(" at {p}")).unwrap_or_default();
            let _ = writeln!(out, "-- error [{}{at}] (user error: {})", e.code(), e.is_user_error());
            let _ = writeln!(out, "{e}");
        }
        Ok(r) => {
            let _ = writeln!(
                out,
                "-- {} row(s); source {}; provisional {}",
                r.num_rows(),
                r.stats.source,
                r.stats.provisional
            );
            let header: Vec<String> = r.columns().iter().map(|(n, t)| format!("{n} {t}")).collect();
            let _ = writeln!(out, "{}", header.join(" | "));
            for row in r.rows() {
                let cells: Vec<String> = row
                    .iter()
                    .map(|c| match c {
                        adstore_query::Cell::Null => "NULL".to_string(),
                        adstore_query::Cell::Float(f) => format!("{f:.6}"),
                        other => other.to_string(),
                    })
                    .collect();
                let _ = writeln!(out, "{}", cells.join(" | "));
            }
        }
    }
    out
}

fn split_queries(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        if cur.is_empty() && (line.trim().is_empty() || line.trim_start().starts_with("--")) {
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
        if line.trim_end().ends_with(';') {
            out.push(cur.trim().trim_end_matches(';').to_string());
            cur.clear();
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[test]
fn sql_golden() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
    let dir = tempfile::tempdir().expect("tempdir");
    // Seal on one thread so segment ids are assigned in a fixed order.
    let store =
        rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool").install(|| open_store(dir.path()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sql");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/sql")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no golden files in {}", root.display());
    let regenerate = std::env::var("ADSTORE_REGENERATE_GOLDEN").is_ok_and(|v| v == "1");
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read sql");
        let mut actual = String::new();
        for q in split_queries(&text) {
            let _ = writeln!(actual, "{q};");
            actual.push_str(&pool.install(|| render(&store, &q)));
            actual.push('\n');
        }
        let out = file.with_extension("out");
        if regenerate {
            std::fs::write(&out, &actual).expect("write golden");
            continue;
        }
        let expected = std::fs::read_to_string(&out).unwrap_or_default();
        if expected != actual {
            let line = expected.lines().zip(actual.lines()).position(|(a, b)| a != b).unwrap_or(0);
            failures.push(format!(
                "{}: differs at line {} (expected {:?}, got {:?})",
                out.display(),
                line + 1,
                expected.lines().nth(line).unwrap_or("<end>"),
                actual.lines().nth(line).unwrap_or("<end>")
            ));
        }
    }
    assert!(failures.is_empty(), "golden mismatches (ADSTORE_REGENERATE_GOLDEN=1 to accept):\n{}", failures.join("\n"));
}
