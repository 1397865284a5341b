//! The WAL's on-disk framing: file names, the file header and record frames.
//!
//! ```text
//! file   = header record*
//! header = magic "ADSWAL\0\0" (8 bytes) | version: u32 LE | 4 zero bytes   (16 bytes)
//! record = len: u32 LE | crc32c: u32 LE | lsn: u64 LE | payload    (16 + len bytes)
//!          crc32c covers lsn (8 bytes LE) followed by payload; len is the payload length
//! ```
//!
//! The header is 16 bytes so that a payload whose length is a multiple of 8
//! (an Arrow IPC stream, as the store writes) starts at a multiple of 8 in
//! the file, and so in a page-aligned mapping of it: Arrow reads its
//! columns in place only at such addresses. Version 1 had a 12-byte header
//! (no zero bytes). Version 3 has version 2's layout; its payloads may list
//! rows they do not store (see the codec), which a build that reads only
//! version 2 would take for events. Version 4 has the same layout; its
//! payloads may start with when their events arrived, which a build that
//! reads only version 3 would take for a broken stream. Replay reads all
//! four; appends go to
//! a file of the current version only, so that an older build refuses a
//! log it cannot read instead of misreading it.
//!
//! Nothing here touches the file system; the writer and replay use these
//! helpers so the layout is defined in one place.

use crate::ids::Lsn;

/// First bytes of every WAL file.
pub(crate) const MAGIC: [u8; 8] = *b"ADSWAL\0\0";
/// Format version written after the magic. Bump on any layout change.
pub(crate) const VERSION: u32 = 4;
/// Size of the file header: magic + version + 4 zero bytes.
pub(crate) const FILE_HEADER_LEN: u64 = 16;
/// Size of a version 1 file header: magic + version.
pub(crate) const V1_FILE_HEADER_LEN: u64 = 12;
/// Size of a record header: len + crc + lsn.
pub(crate) const RECORD_HEADER_LEN: usize = 16;
/// Largest payload a record can carry (its length is stored as u32).
pub(crate) const MAX_PAYLOAD_BYTES: usize = u32::MAX as usize;
/// File name suffix of WAL files.
pub(crate) const EXTENSION: &str = "wal";

/// The file header bytes.
pub(crate) fn file_header() -> [u8; FILE_HEADER_LEN as usize] {
    let mut h = [0u8; FILE_HEADER_LEN as usize];
    h[..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// `{first_lsn:020}.wal`: zero-padded so lexical order is LSN order.
pub(crate) fn file_name(first_lsn: Lsn) -> String {
    format!("{:020}.{EXTENSION}", first_lsn.0)
}

/// The first LSN encoded in a WAL file name, or `None` if `name` is not a
/// WAL file name.
pub(crate) fn parse_file_name(name: &str) -> Option<Lsn> {
    let stem = name.strip_suffix(EXTENSION)?.strip_suffix('.')?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok().map(Lsn)
}

/// Checksum of one record: crc32c over the LSN (LE) then the payload.
pub(crate) fn record_crc(lsn: Lsn, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&lsn.0.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

/// Appends the framed record to `out`. The caller has checked
/// `payload.len() <= MAX_PAYLOAD_BYTES`.
#[cfg(test)]
pub(crate) fn encode_record(out: &mut Vec<u8>, lsn: Lsn, payload: &[u8]) {
    out.reserve(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&record_header(lsn, payload));
    out.extend_from_slice(payload);
}

/// The header of the record holding `payload` at `lsn`: what
/// [`encode_record`] writes before the payload.
pub(crate) fn record_header(lsn: Lsn, payload: &[u8]) -> [u8; RECORD_HEADER_LEN] {
    // Invariant: callers reject payloads above MAX_PAYLOAD_BYTES (= u32::MAX).
    let len = u32::try_from(payload.len()).expect("payload length checked by caller");
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..8].copy_from_slice(&record_crc(lsn, payload).to_le_bytes());
    header[8..].copy_from_slice(&lsn.0.to_le_bytes());
    header
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub(crate) len: u32,
    pub(crate) crc: u32,
    pub(crate) lsn: Lsn,
}

impl RecordHeader {
    pub(crate) fn decode(bytes: &[u8; RECORD_HEADER_LEN]) -> RecordHeader {
        let [l0, l1, l2, l3, c0, c1, c2, c3, s0, s1, s2, s3, s4, s5, s6, s7] = *bytes;
        RecordHeader {
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
            lsn: Lsn(u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7])),
        }
    }

    /// Bytes the whole frame occupies.
    pub(crate) fn frame_len(&self) -> u64 {
        RECORD_HEADER_LEN as u64 + u64::from(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the byte layout: a change here is a format change and needs a
    /// new VERSION.
    #[test]
    fn golden_frame() {
        let mut out = Vec::new();
        encode_record(&mut out, Lsn(7), b"hi");
        let crc = record_crc(Lsn(7), b"hi");
        let mut want = vec![2, 0, 0, 0];
        want.extend_from_slice(&crc.to_le_bytes());
        want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
        assert_eq!(out, want);
        assert_eq!(crc, 0x9C5A_D1E2, "crc32c of lsn||payload changed");
        let h = RecordHeader::decode(out[..16].try_into().expect("16 bytes"));
        assert_eq!(h, RecordHeader { len: 2, crc, lsn: Lsn(7) });
        assert_eq!(h.frame_len(), 18);
        assert_eq!(file_header(), *b"ADSWAL\0\0\x04\0\0\0\0\0\0\0");
    }

    #[test]
    fn file_names() {
        assert_eq!(file_name(Lsn(1)), "00000000000000000001.wal");
        assert_eq!(parse_file_name("00000000000000000001.wal"), Some(Lsn(1)));
        assert_eq!(parse_file_name(&file_name(Lsn(u64::MAX))), Some(Lsn(u64::MAX)));
        assert_eq!(parse_file_name("1.wal"), None);
        assert_eq!(parse_file_name("0000000000000000000x.wal"), None);
        assert_eq!(parse_file_name("00000000000000000001.wal.tmp"), None);
        assert_eq!(parse_file_name("00000000000000000001wal"), None);
    }
}
