//! A query whose cancel flag is set stops before its next block (the
//! PostgreSQL protocol's cancel request sets it). Its own test binary, so
//! that its timing shares the thread pool with no other test.

use std::time::Instant;

use adstore_query::{QueryOptions, execute};
use blocks::{BASE, store};

mod blocks;

#[test]
fn a_cancelled_query_stops_before_its_next_block() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(dir.path(), 30_000);
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let opts = QueryOptions { now_ms: BASE, cancel: Some(cancel.clone()), ..QueryOptions::default() };
    let terms = vec!["1"; 3000].join(" + ");
    let heavy = format!("SELECT count(*) FROM events WHERE cost_micros + {terms} > 0");
    // The same query, not cancelled, to know how long it runs.
    let full = Instant::now();
    execute(&store.snapshot(), &heavy, &QueryOptions { cancel: None, ..opts.clone() }).expect("uncancelled");
    let full = full.elapsed();

    let setter = {
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(full / 4);
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    let started = Instant::now();
    let outcome = execute(&store.snapshot(), &heavy, &opts);
    let took = started.elapsed();
    setter.join().expect("setter");
    assert!(matches!(outcome, Err(adstore_query::QueryError::Cancelled)), "{:?}", outcome.map(|r| r.num_rows()));
    assert!(took < full * 3 / 4, "cancelled after {:?}, the whole query takes {full:?}", full / 4);
}
