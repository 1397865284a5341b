//! The `adstore` binary: everything is in `adstore_server::cli`.

// mimalloc: scans allocate and free large decoded blocks at a high rate;
// glibc malloc turns those into mmap/munmap and page faults.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    adstore_server::cli::main()
}
