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

/// `mi_option_allow_thp` in mimalloc v3's `mi_option_t`, likewise.
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Transparent huge pages are off unless `MIMALLOC_ALLOW_THP=1`. The head
/// is gigabytes of memory the process has not touched before, and on a VM
/// that reports free memory to its host (free page reporting works on 2 MiB
/// blocks) a fresh huge page cost up to six times as much per byte as 4 KiB
/// pages did: a 10M-event Arrow load took 7.4-9.5 s of server CPU with huge
/// pages and 5.2-5.3 s without (docs/configuration.md).
fn huge_pages_wanted() -> bool {
    std::env::var("MIMALLOC_ALLOW_THP").is_ok_and(|v| v.trim() == "1")
}

#[allow(unsafe_code)]
fn main() -> std::process::ExitCode {
    let huge_pages = huge_pages_wanted();
    // SAFETY: called before any other thread exists, as mimalloc requires of
    // option setters; `MIMALLOC_PURGE_DELAY` in the environment still wins.
    unsafe {
        libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        libmimalloc_sys::mi_option_set_default(MI_OPTION_ALLOW_THP, std::ffi::c_long::from(huge_pages));
    }
    if !huge_pages {
        // mimalloc's first arena was mapped (and advised for huge pages)
        // before main; the process flag covers it too. Advice only: a kernel
        // without it keeps its default.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
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

    #[test]
    #[allow(unsafe_code)]
    fn the_huge_page_option_is_the_one_we_mean() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            // SAFETY: reads options; no other thread sets options.
            let (thp, min_purge) = unsafe {
                (
                    libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP),
                    libmimalloc_sys::mi_option_get(MI_OPTION_ALLOW_THP + 1),
                )
            };
            // allow_thp defaults to 1, and the option after it,
            // minimal_purge_size, to 0 (KiB, chosen at start).
            assert_eq!((thp, min_purge), (1, 0));
        }
    }
}
