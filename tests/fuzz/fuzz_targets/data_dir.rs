//! A data directory with one segment or WAL file damaged.
#![no_main]

#[path = "../targets.rs"]
mod targets;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static DATA_DIR: LazyLock<targets::DataDirFixture> = LazyLock::new(targets::DataDirFixture::new);

fuzz_target!(|input: (u8, targets::Damage)| {
    let (which, damage) = input;
    if let Err(e) = DATA_DIR.check(which, &damage) {
        panic!("{e}");
    }
});
