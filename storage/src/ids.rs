//! Newtypes for the identifiers the storage layers hand to each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Log sequence number: the position of one record in the write-ahead log.
/// Assigned in append order, starting at 1; 0 means "nothing".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn next(self) -> Lsn {
        Lsn(self.0 + 1)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifier of an immutable segment file, unique for the life of a data
/// directory. The file is named `{id:016x}.seg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct SegmentId(pub u64);

impl SegmentId {
    pub fn file_name(self) -> String {
        format!("{:016x}.seg", self.0)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}
