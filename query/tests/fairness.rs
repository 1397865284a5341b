//! One heavy query must not hold every executor thread until it ends
//! (issue 25): a light query sent while it runs answers before it does.
//! Its own test binary, so no other test shares the thread pool.

use std::sync::mpsc;
use std::time::Instant;

use adstore_query::{QueryOptions, execute};
use blocks::{BASE, store};

mod blocks;

#[test]
fn a_light_query_answers_while_a_heavy_one_runs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(store(dir.path(), 30_000));
    let opts = QueryOptions { now_ms: BASE, ..QueryOptions::default() };
    // Thousands of operators on every row of every block.
    let terms = vec!["1"; 3000].join(" + ");
    let heavy = format!("SELECT count(*) FROM events WHERE cost_micros + {terms} > 0");
    let light = "SELECT count(*) FROM events WHERE advertiser_id = 'a1'";

    let (started_tx, started_rx) = mpsc::channel();
    let heavy_thread = {
        let (store, opts) = (store.clone(), opts.clone());
        std::thread::spawn(move || {
            started_tx.send(()).expect("signal");
            let r = execute(&store.snapshot(), &heavy, &opts).expect("heavy query");
            (Instant::now(), r.num_rows())
        })
    };
    started_rx.recv().expect("heavy query started");
    // Past its binding (a few hundred ms in a debug build): its blocks
    // fill the pool.
    std::thread::sleep(std::time::Duration::from_millis(1000));
    let light_sent = Instant::now();
    let r = execute(&store.snapshot(), light, &opts).expect("light query");
    let light_done = Instant::now();
    assert_eq!(r.num_rows(), 1);
    let (heavy_done, rows) = heavy_thread.join().expect("heavy thread");
    assert_eq!(rows, 1);
    assert!(heavy_done > light_sent, "the heavy query ended before the light one was sent: make it heavier");
    // Sharing the pool, the light query takes a few block tasks' time, not
    // the rest of the heavy query's.
    let (light_took, heavy_left) = (light_done - light_sent, heavy_done - light_sent);
    assert!(
        light_took * 4 < heavy_left,
        "the light query waited for the heavy one: it took {light_took:?}, the heavy one ended {heavy_left:?} after it was sent"
    );
}
