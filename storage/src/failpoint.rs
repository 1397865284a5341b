//! Failure injection for crash and fault tests: abort the process at a
//! named point, or make one operation fail.
//!
//! Set `ADSTORE_FAILPOINT=<name>` to act at the first hit of `name`, or
//! `ADSTORE_FAILPOINT=<name>:<n>` at its `n`th hit (counting from 1): a
//! [`hit`] aborts, a [`fails`] returns true (once) so that its caller fails
//! as the real fault would. The variable is read once, on the first `hit`; afterwards a `hit` that
//! is not armed costs one atomic load and a string compare at most. Crash
//! tests run the binary as a child process with the variable set and then
//! check what survives on disk.
//!
//! Points in this crate:
//! - `wal_after_write`: a WAL record is written to the file but not fsynced;
//! - `wal_after_fsync`: a group-commit fsync completed, before any waiter is
//!   acknowledged;
//! - `seal_after_segment_write`, `seal_after_commit`: any seal wrote its
//!   segment and sidecars / committed its catalog edit; and the same per
//!   kind of seal, `{kind}_after_segment_write` and `{kind}_after_commit`
//!   with `kind` one of `seal`, `final`, `reprocess`, `compact`;
//! - `catalog_before_fsync`, `catalog_before_rename`, `catalog_after_rename`:
//!   the steps of a catalog commit;
//! - `retention_after_commit`: the retention task committed its catalog
//!   edit, before it deletes the files of what it expired.
//!
//! Points that fail instead of aborting:
//! - `wal_write_enospc`: a WAL write stops half way for want of space;
//! - `wal_fsync_eio`: a WAL fsync fails with an I/O error.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a failpoint.
pub const ENV_VAR: &str = "ADSTORE_FAILPOINT";

#[derive(Debug, PartialEq, Eq)]
struct Armed {
    name: String,
    nth: u64,
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

/// Aborts the process if the failpoint `name` is armed and this is the hit
/// it is armed for; otherwise does nothing.
pub fn hit(name: &str) {
    if fails(name) {
        eprintln!("adstore: failpoint {name} reached, aborting");
        std::process::abort();
    }
}

/// Whether the failpoint `name` is armed and this is the hit it is armed
/// for: true at that one hit, false before and after it.
pub fn fails(name: &str) -> bool {
    let Some(armed) = ARMED.get_or_init(|| parse(std::env::var(ENV_VAR).ok().as_deref())) else { return false };
    if armed.name != name {
        return false;
    }
    HITS.fetch_add(1, Ordering::SeqCst) + 1 == armed.nth
}

/// Parses `name` or `name:n`. An unparsable count disarms rather than
/// guessing.
fn parse(value: Option<&str>) -> Option<Armed> {
    let value = value?.trim();
    if value.is_empty() {
        return None;
    }
    match value.rsplit_once(':') {
        Some((name, n)) => n.parse().ok().filter(|&n| n > 0).map(|nth| Armed { name: name.to_string(), nth }),
        None => Some(Armed { name: value.to_string(), nth: 1 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec() {
        assert_eq!(parse(None), None);
        assert_eq!(parse(Some("")), None);
        assert_eq!(parse(Some("wal_after_write")), Some(Armed { name: "wal_after_write".into(), nth: 1 }));
        assert_eq!(parse(Some("wal_after_fsync:3")), Some(Armed { name: "wal_after_fsync".into(), nth: 3 }));
        assert_eq!(parse(Some("x:0")), None);
        assert_eq!(parse(Some("x:y")), None);
    }

    #[test]
    fn unarmed_hit_returns() {
        // The test process does not set ADSTORE_FAILPOINT for this name.
        hit("no_such_failpoint_in_this_test");
    }
}
