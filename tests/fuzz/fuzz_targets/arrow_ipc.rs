//! A valid Arrow IPC stream, damaged.
#![no_main]

#[path = "../targets.rs"]
mod targets;

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static VALID: LazyLock<Vec<u8>> = LazyLock::new(targets::valid_arrow_ipc);

fuzz_target!(
    init: {
        // libfuzzer-sys aborts at any panic, even one that is caught. Ingest
        // decodes Arrow under `catch_unwind` on purpose (arrow-rs panics on
        // some malformed buffers; docs/ingest.md) and answers a rejection:
        // only a panic that escapes is a finding, and libfuzzer-sys still
        // aborts on one of those.
        std::panic::set_hook(Box::new(|_| {}));
    },
    |damage: targets::Damage| {
        let mut body = VALID.clone();
        damage.apply(&mut body);
        if let Err(e) = targets::arrow_ipc(&body) {
            panic!("{e}");
        }
    }
);
