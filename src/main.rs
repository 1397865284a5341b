//! The `adstore` binary: everything is in `adstore_server::cli`.

// mimalloc: scans allocate and free large decoded blocks at a high rate;
// glibc malloc turns those into mmap/munmap and page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_t` (libmimalloc-sys
/// does not name it); the test below pins it to this mimalloc version.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long mimalloc keeps freed memory before returning it to the OS.
/// Its default (1 s) gave a 10M-event NDJSON load about 40,000 page faults
/// of fresh, zeroed memory for buffers that the next requests would have
/// reused; with 10 s, about 2,000, and less server CPU for the load and the
/// seal after it, at the price of a higher peak RSS while sealing (figures
/// in docs/configuration.md). Freed memory still goes back after 10 s.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

#[allow(unsafe_code)]
fn main() -> std::process::ExitCode {
    // SAFETY: called before any other thread exists, as mimalloc requires of
    // option setters; `MIMALLOC_PURGE_DELAY` in the environment still wins.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    adstore_server::cli::main()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)]
    fn the_purge_delay_option_is_the_one_we_mean() {
        // mimalloc v3's default purge delay is 1000 ms; another option at
        // this index would mean the enum was renumbered.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads one option; no other thread sets options.
            assert_eq!(unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }, 1000);
        }
    }
}
