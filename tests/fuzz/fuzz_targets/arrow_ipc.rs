//! A valid Arrow IPC stream, damaged.
#![no_main]

#[path = "../targets.rs"]
mod targets;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static VALID: LazyLock<Vec<u8>> = LazyLock::new(targets::valid_arrow_ipc);

fuzz_target!(|damage: targets::Damage| {
    let mut body = VALID.clone();
    damage.apply(&mut body);
    if let Err(e) = targets::arrow_ipc(&body) {
        panic!("{e}");
    }
});
