//! Source offsets: how far into each partition of an outside stream (a
//! Kafka topic) the store has durably read.
//!
//! A consumer hands the offsets of the messages an append carries to
//! [`Store::append_from`](crate::Store::append_from); they are written in
//! the same WAL record as the events, so a record is either durable with
//! its offsets or not at all. Replay takes the highest offsets of every
//! record it reads (sealed or not), and before WAL files are deleted the
//! offsets they held are committed to the catalog. A consumer that
//! restarts resumes after [`Store::source_offsets`](crate::Store::source_offsets):
//! nothing lost, nothing read twice.
//!
//! In a WAL payload, after the arrival time:
//!
//! ```text
//! "ADSOFFS\0" | len: u32 LE | 4 zero bytes | entries (len bytes) | zero bytes to a multiple of 8
//! entry = stream_len: u16 LE | stream (UTF-8) | partition: i32 LE | next: i64 LE
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};

/// First bytes of a payload's offsets.
pub(crate) const OFFSETS_MAGIC: [u8; 8] = *b"ADSOFFS\0";

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME_BYTES: usize = 1024;

/// For each stream (a name the consumer chooses, e.g. `{source}/{topic}`)
/// and partition, the offset of the next message not yet stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceOffsets(BTreeMap<String, BTreeMap<i32, i64>>);

impl SourceOffsets {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The next offset of `stream`'s `partition`, if any was stored.
    pub fn next(&self, stream: &str, partition: i32) -> Option<i64> {
        self.0.get(stream).and_then(|p| p.get(&partition)).copied()
    }

    /// Notes that messages of `partition` before `next` are stored; an
    /// offset never goes back.
    pub fn advance(&mut self, stream: &str, partition: i32, next: i64) {
        let at = self.0.entry(stream.to_string()).or_default().entry(partition).or_insert(next);
        *at = (*at).max(next);
    }

    /// Drops `stream`'s offset of `partition`.
    pub fn forget(&mut self, stream: &str, partition: i32) {
        if let Some(partitions) = self.0.get_mut(stream) {
            partitions.remove(&partition);
            if partitions.is_empty() {
                self.0.remove(stream);
            }
        }
    }

    /// Takes every offset of `other` that is ahead of this one's.
    pub fn merge(&mut self, other: &SourceOffsets) {
        for (stream, partitions) in &other.0 {
            for (&partition, &next) in partitions {
                self.advance(stream, partition, next);
            }
        }
    }

    /// Whether `other` holds an offset this one is behind.
    pub fn is_behind(&self, other: &SourceOffsets) -> bool {
        other.iter().any(|(stream, partition, next)| self.next(stream, partition).is_none_or(|have| have < next))
    }

    /// Every (stream, partition, next offset).
    pub fn iter(&self) -> impl Iterator<Item = (&str, i32, i64)> {
        self.0.iter().flat_map(|(s, p)| p.iter().map(move |(&partition, &next)| (s.as_str(), partition, next)))
    }

    /// Appends the payload prefix for these offsets to `out` (nothing when
    /// empty). `out` must be at a multiple of 8 bytes.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::new();
        for (stream, partition, next) in self.iter() {
            if stream.len() > MAX_STREAM_NAME_BYTES {
                return Err(StorageError::Internal(format!(
                    "a stream name of {} bytes; at most {MAX_STREAM_NAME_BYTES}",
                    stream.len()
                )));
            }
            entries.extend_from_slice(&(stream.len() as u16).to_le_bytes());
            entries.extend_from_slice(stream.as_bytes());
            entries.extend_from_slice(&partition.to_le_bytes());
            entries.extend_from_slice(&next.to_le_bytes());
        }
        let len = u32::try_from(entries.len()).map_err(|_| StorageError::Internal("too many source offsets".into()))?;
        out.extend_from_slice(&OFFSETS_MAGIC);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&entries);
        out.resize(out.len().next_multiple_of(8), 0);
        Ok(())
    }

    /// The offsets at the start of `bytes`, if it starts with them, and how
    /// many bytes they take.
    pub(crate) fn decode_prefix(bytes: &[u8]) -> std::result::Result<Option<(SourceOffsets, usize)>, String> {
        if !bytes.starts_with(&OFFSETS_MAGIC) {
            return Ok(None);
        }
        let len = bytes.get(8..12).ok_or("the source offsets are cut short")?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = (16 + len).next_multiple_of(8);
        let mut entries =
            bytes.get(16..16 + len).filter(|_| bytes.len() >= end).ok_or("the source offsets are cut short")?;
        let mut offsets = SourceOffsets::default();
        while !entries.is_empty() {
            let (n, rest) = entries.split_at_checked(2).ok_or("a source offset is cut short")?;
            let n = u16::from_le_bytes([n[0], n[1]]) as usize;
            let (stream, rest) = rest.split_at_checked(n).ok_or("a source offset is cut short")?;
            let stream = std::str::from_utf8(stream).map_err(|_| "a stream name is not UTF-8")?;
            let (partition, rest) = rest.split_at_checked(4).ok_or("a source offset is cut short")?;
            let (next, rest) = rest.split_at_checked(8).ok_or("a source offset is cut short")?;
            let partition = i32::from_le_bytes([partition[0], partition[1], partition[2], partition[3]]);
            let next = i64::from_le_bytes([next[0], next[1], next[2], next[3], next[4], next[5], next[6], next[7]]);
            offsets.advance(stream, partition, next);
            entries = rest;
        }
        Ok(Some((offsets, end)))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn offsets_survive_their_encoding(entries in prop::collection::vec(("[a-z/]{0,12}", any::<i32>(), any::<i64>()), 1..20)) {
            let mut offsets = SourceOffsets::default();
            for (stream, partition, next) in &entries {
                offsets.advance(stream, *partition, *next);
            }
            let mut out = Vec::new();
            offsets.encode_into(&mut out).expect("encode");
            prop_assert_eq!(out.len() % 8, 0);
            out.extend_from_slice(b"rest");
            let (back, len) = SourceOffsets::decode_prefix(&out).expect("decode").expect("offsets first");
            prop_assert_eq!(back, offsets);
            prop_assert_eq!(&out[len..], b"rest");
        }

        #[test]
        fn cut_offsets_are_refused(cut in 0usize..40) {
            let mut offsets = SourceOffsets::default();
            offsets.advance("kafka/events", 3, 17);
            let mut out = Vec::new();
            offsets.encode_into(&mut out).expect("encode");
            let cut = cut.min(out.len() - 1);
            prop_assert!(SourceOffsets::decode_prefix(&out[..cut]).is_err() || cut < 8);
        }
    }

    #[test]
    fn offsets_never_go_back() {
        let mut a = SourceOffsets::default();
        a.advance("s", 0, 10);
        a.advance("s", 0, 4);
        assert_eq!(a.next("s", 0), Some(10));
        let mut b = SourceOffsets::default();
        b.advance("s", 0, 12);
        b.advance("s", 1, 1);
        assert!(a.is_behind(&b));
        a.merge(&b);
        assert_eq!((a.next("s", 0), a.next("s", 1)), (Some(12), Some(1)));
        assert!(!a.is_behind(&b));
    }
}
