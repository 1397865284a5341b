//! CPU priority of the background work: seals, compaction, finalization,
//! rollups, verification and tiering run `background_nice` steps below
//! the rest of the process, so that while a load is being sealed the
//! kernel gives queries and ingest the cores first.
//!
//! ```text
//!  process nice n ─► query, ingest and HTTP threads: n
//!                    adstore-sealer, adstore-tiering, adstore-seal-*: min(n + background_nice, 19)
//! ```
//!
//! Linux keeps a nice value per thread, so each background thread lowers
//! its own as it starts. The work still runs whenever the cores are free:
//! under a steady load it only yields to a query while the query runs, and
//! a head that fills up refuses ingest until seals catch up, as before.

/// The nicest value Linux allows.
#[cfg(target_os = "linux")]
const LOWEST: i32 = 19;

/// Lowers the calling thread's priority by `steps` nice values (0: leaves
/// it as it is). A thread that cannot be lowered runs on at its priority,
/// with a warning: it does the same work, only sooner. Elsewhere than on
/// Linux, where nice values belong to the process, it does nothing.
pub(super) fn lower_this_thread(steps: u8) {
    #[cfg(target_os = "linux")]
    if steps > 0 {
        use rustix::process::{getpriority_process, setpriority_process};
        let tid = rustix::thread::gettid();
        let lowered = getpriority_process(Some(tid))
            .and_then(|now| setpriority_process(Some(tid), (now + i32::from(steps)).min(LOWEST)));
        if let Err(e) = lowered {
            tracing::warn!(error = %e, steps, "cannot lower the priority of a background thread");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = steps;
}

/// The calling thread's nice value (0 elsewhere than on Linux).
#[cfg(test)]
pub(super) fn this_thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    return rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(i32::MIN);
    #[cfg(not(target_os = "linux"))]
    0
}
