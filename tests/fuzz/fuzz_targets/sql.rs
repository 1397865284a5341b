//! A statement of the SQL grammar against a store with segments and a head.
#![no_main]

#[path = "../targets.rs"]
mod targets;

use std::sync::LazyLock;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

static STORE: LazyLock<targets::SqlFixture> = LazyLock::new(targets::SqlFixture::new);

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = targets::sql_statement(&mut Unstructured::new(data)) else { return };
    if let Err(e) = STORE.check(&sql) {
        panic!("{e}\n{sql}");
    }
});
