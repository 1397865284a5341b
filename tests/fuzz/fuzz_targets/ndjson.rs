//! An ingest body: bytes of any kind, or lines that look like events.
#![no_main]

#[path = "../targets.rs"]
mod targets;

use arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = targets::ndjson_body(&mut Unstructured::new(data)) else { return };
    if let Err(e) = targets::ndjson(&body) {
        panic!("{e}");
    }
});
