//! WAL payload codec for event batches: one Arrow IPC stream per record,
//! holding the schema message and exactly one record batch, after the
//! rows of the batch that the record does not store, if there are any:
//!
//! ```text
//! payload = [arrived] [offsets] [dropped] ipc
//! arrived = "ADSTIME\0" | epoch ms: i64 LE
//! offsets = source offsets (`crate::offsets`), a multiple of 8 bytes
//! dropped = "ADSDROP\0" | n: u32 LE | 4 zero bytes | row: u32 LE × n | zero bytes to a multiple of 8
//! ```
//!
//! The dropped rows are ascending row numbers of the batch. They are there
//! so that a request's rows can be written as they came, duplicates and
//! all, instead of copied without them (see
//! [`Partitioning::index`](crate::Partitioning::index)). The IPC stream
//! starts at a multiple of 8 in the payload either way, so that it can be
//! read in place. An IPC stream starts with `0xFFFFFFFF`, never with
//! `ADSDROP`.

use arrow_ipc::MetadataVersion;
use arrow_ipc::reader::{FileDecoder, StreamReader};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;

use crate::error::{Result, StorageError};
use crate::event::{EventBatch, are_rows_under, event_schema, other_rows};
use crate::offsets::SourceOffsets;

/// Room for the IPC schema and message headers on top of the batch's buffers.
const IPC_OVERHEAD_BYTES: usize = 16 << 10;

/// First bytes of a payload with dropped rows.
const DROPPED_MAGIC: [u8; 8] = *b"ADSDROP\0";

/// First bytes of a payload that notes when its events arrived: the
/// magic, then epoch ms as i64 LE (16 bytes), before the rest.
const ARRIVED_MAGIC: [u8; 8] = *b"ADSTIME\0";
const ARRIVED_PREFIX_LEN: usize = 16;

/// A decoded payload: the rows of `batch` not in `dropped` are the
/// record's events.
#[derive(Debug, Clone)]
pub struct Record {
    pub batch: EventBatch,
    /// Ascending row numbers of `batch`, each once.
    pub dropped: Vec<u32>,
    /// When the events arrived (epoch ms, the server's clock); `None` in
    /// records written before this was noted.
    pub arrived_ms: Option<i64>,
    /// How far into outside streams the consumer that wrote the record
    /// had read, once it is durable; `None` for other records.
    pub offsets: Option<SourceOffsets>,
}

/// What a record says besides its rows: when they arrived, the source
/// offsets they carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordNotes<'a> {
    pub arrived_ms: Option<i64>,
    pub offsets: Option<&'a SourceOffsets>,
}

/// Encodes `batch` as an Arrow IPC stream (schema + one batch + end marker).
pub fn encode_batch(batch: &EventBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_batch_into(batch, &[], RecordNotes::default(), &mut out)?;
    Ok(out)
}

/// Encodes the rows of `batch` not in `dropped` (ascending row numbers of
/// it), with `notes`, into `out` (cleared first), so a caller can reuse one
/// buffer for many records instead of megabytes of fresh memory each time.
pub fn encode_batch_into(batch: &EventBatch, dropped: &[u32], notes: RecordNotes<'_>, out: &mut Vec<u8>) -> Result<()> {
    let rb = batch.record_batch();
    // Sized up front: growing by doubling copied the payload several times,
    // each time into memory fresh from the kernel.
    out.clear();
    out.reserve(ARRIVED_PREFIX_LEN + dropped_prefix_len(dropped.len()) + batch.memory_bytes() + IPC_OVERHEAD_BYTES);
    if let Some(ms) = notes.arrived_ms {
        out.extend_from_slice(&ARRIVED_MAGIC);
        out.extend_from_slice(&ms.to_le_bytes());
    }
    if let Some(offsets) = notes.offsets {
        offsets.encode_into(out)?;
    }
    if !dropped.is_empty() {
        if !are_rows_under(dropped, batch.num_rows()) {
            return Err(StorageError::Internal("dropped rows must be ascending row numbers of the batch".into()));
        }
        let n = u32::try_from(dropped.len()).map_err(|_| ipc_error("too many dropped rows for one record"))?;
        let start = out.len();
        out.extend_from_slice(&DROPPED_MAGIC);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend(dropped.iter().flat_map(|row| row.to_le_bytes()));
        out.resize(start + dropped_prefix_len(dropped.len()), 0);
    }
    let mut writer = StreamWriter::try_new(out, rb.schema_ref())?;
    writer.write(rb)?;
    writer.finish()?;
    Ok(())
}

/// Bytes before the IPC stream of a payload with `n` dropped rows.
fn dropped_prefix_len(n: usize) -> usize {
    if n == 0 { 0 } else { (16 + 4 * n).next_multiple_of(8) }
}

/// What a payload holds before its IPC stream, and where that starts.
struct Prefix {
    arrived_ms: Option<i64>,
    offsets: Option<SourceOffsets>,
    dropped: Vec<u32>,
    ipc_at: usize,
}

fn split_payload(bytes: &[u8]) -> Result<Prefix> {
    let (arrived_ms, mut at) = match bytes.strip_prefix(&ARRIVED_MAGIC) {
        Some(rest) => {
            let ms = rest.get(..8).ok_or_else(|| ipc_error("the arrival time is cut short"))?;
            (Some(i64::from_le_bytes([ms[0], ms[1], ms[2], ms[3], ms[4], ms[5], ms[6], ms[7]])), ARRIVED_PREFIX_LEN)
        }
        None => (None, 0),
    };
    let offsets = match SourceOffsets::decode_prefix(&bytes[at..]).map_err(|e| ipc_error(&e))? {
        Some((offsets, len)) => {
            at += len;
            Some(offsets)
        }
        None => None,
    };
    let (dropped, start) = split_dropped(&bytes[at..])?;
    Ok(Prefix { arrived_ms, offsets, dropped, ipc_at: at + start })
}

/// The dropped rows of a payload (after any arrival time), and where its
/// IPC stream starts.
fn split_dropped(bytes: &[u8]) -> Result<(Vec<u32>, usize)> {
    if !bytes.starts_with(&DROPPED_MAGIC) {
        return Ok((Vec::new(), 0));
    }
    let n = bytes.get(8..12).ok_or_else(|| ipc_error("the list of dropped rows is cut short"))?;
    let n = u32::from_le_bytes([n[0], n[1], n[2], n[3]]) as usize;
    let start = dropped_prefix_len(n);
    if n == 0 {
        return Err(ipc_error("the list of dropped rows is empty"));
    }
    let list = bytes.get(16..16 + 4 * n).filter(|_| bytes.len() >= start);
    let list = list.ok_or_else(|| ipc_error("the list of dropped rows is cut short"))?;
    if bytes[12..16] != [0; 4] || bytes[16 + 4 * n..start].iter().any(|&b| b != 0) {
        return Err(ipc_error("the list of dropped rows has non-zero reserved or padding bytes"));
    }
    let dropped: Vec<u32> = list.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    if dropped.windows(2).any(|w| w[0] >= w[1]) {
        return Err(ipc_error("the dropped rows are not ascending"));
    }
    Ok((dropped, start))
}

/// The record's rows and their batch, checking that the dropped rows are
/// rows of it.
fn record(batch: EventBatch, prefix: Prefix) -> Result<Record> {
    let Prefix { arrived_ms, offsets, dropped, .. } = prefix;
    if dropped.last().is_some_and(|&last| last as usize >= batch.num_rows()) {
        return Err(ipc_error("a dropped row is not a row of the batch"));
    }
    Ok(Record { batch, dropped, arrived_ms, offsets })
}

/// Decodes a payload written by [`encode_batch_into`]: the stored rows.
///
/// # Errors
/// As [`decode_record`].
pub fn decode_batch(bytes: &[u8]) -> Result<EventBatch> {
    let Record { batch, dropped, .. } = decode_record(bytes)?;
    if dropped.is_empty() {
        return Ok(batch);
    }
    batch.filter_rows(&other_rows(&dropped, batch.num_rows()))
}

/// Decodes a payload written by [`encode_batch_into`].
///
/// # Errors
/// [`StorageError::Arrow`] if the bytes are not an IPC stream with exactly
/// one batch, after a well-formed list of dropped rows of it if any;
/// [`StorageError::Schema`] if the batch is not an event batch.
pub fn decode_record(bytes: &[u8]) -> Result<Record> {
    let prefix = split_payload(bytes)?;
    let mut reader = StreamReader::try_new(&bytes[prefix.ipc_at..], None)?;
    let batch = match reader.next() {
        Some(batch) => batch?,
        None => return Err(ipc_error("the IPC stream holds no record batch")),
    };
    if reader.next().is_some() {
        return Err(ipc_error("the IPC stream holds more than one record batch"));
    }
    record(EventBatch::try_new(batch)?, prefix)
}

/// [`decode_record`] without a copy and without checking the arrays: the
/// batch's columns point into `bytes`. Checking the arrays of a 10M-event
/// load took 4% of its time, and these are arrays the process checked
/// before it encoded them.
///
/// # Safety
/// `bytes` must be exactly what [`encode_batch_into`] wrote for a batch:
/// Arrow's reader trusts the offsets and UTF-8 of arrays it does not check,
/// and other bytes could make them read out of bounds.
///
/// # Errors
/// As [`decode_record`], for a stream that is not one batch of the event
/// schema.
#[allow(unsafe_code)]
pub(crate) unsafe fn decode_encoded_record(bytes: arrow_buffer::Buffer) -> Result<Record> {
    let prefix = split_payload(&bytes)?;
    let bytes = bytes.slice(prefix.ipc_at);
    // The stream `encode_batch_into` writes: the schema message, the batch
    // message, the end marker. Each message is the continuation marker, the
    // metadata length (i32 LE), the metadata, then its body.
    let frame = |at: usize| -> Result<(usize, i64)> {
        let meta = bytes.get(at + 4..at + 8).ok_or_else(|| ipc_error("a message is cut short"))?;
        let meta_len = i32::from_le_bytes([meta[0], meta[1], meta[2], meta[3]]);
        let meta_len = usize::try_from(meta_len).map_err(|_| ipc_error("a negative metadata length"))?;
        let message = bytes.get(at + 8..at + 8 + meta_len).ok_or_else(|| ipc_error("a message is cut short"))?;
        let body_len = arrow_ipc::root_as_message(message).map_err(|e| ipc_error(&e.to_string()))?.bodyLength();
        Ok((8 + meta_len, body_len))
    };
    let (schema_len, schema_body) = frame(0)?;
    let at = schema_len + usize::try_from(schema_body).map_err(|_| ipc_error("a negative body length"))?;
    let (meta_len, body_len) = frame(at)?;
    let block = arrow_ipc::Block::new(0, meta_len as i32, body_len);
    // SAFETY: the caller passes bytes `encode_batch_into` wrote, so the IPC
    // writer's encoding of arrays that were valid when written. (The stream
    // decoder does not pass this flag on to record batches; the file
    // decoder does.)
    let decoder = unsafe { FileDecoder::new(event_schema(), MetadataVersion::V5).with_skip_validation(true) };
    match decoder.read_record_batch(&block, &bytes.slice(at))? {
        Some(batch) => record(EventBatch::try_new(batch)?, prefix),
        None => Err(ipc_error("the IPC stream holds no record batch")),
    }
}

fn ipc_error(reason: &str) -> StorageError {
    StorageError::Arrow(ArrowError::IpcError(reason.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::event::{Event, EventType, InvalidReason};

    fn opt_string() -> impl Strategy<Value = Option<String>> {
        prop_oneof![Just(None), Just(Some(String::new())), any::<String>().prop_map(Some)]
    }

    prop_compose! {
        fn event()(
            event_id in any::<String>(),
            kind in prop::sample::select(EventType::ALL.to_vec()),
            ts in any::<i64>(),
            ids in prop::array::uniform4(any::<String>()),
            opts in prop::collection::vec(opt_string(), 13),
            cost_micros in any::<i64>(),
            value_micros in any::<i64>(),
            attributed in any::<bool>(),
            invalid_reason in prop::sample::select(InvalidReason::ALL.to_vec()),
        ) -> Event {
            let [publisher_id, advertiser_id, campaign_id, ad_id] = ids;
            let mut o = opts.into_iter();
            let mut next = move || o.next().flatten();
            Event {
                event_id, kind, ts, publisher_id, advertiser_id, campaign_id, ad_id, cost_micros, value_micros,
                attributed, invalid_reason,
                ad_group_id: next(), impression_id: next(), click_id: next(), user_key: next(), device: next(),
                os: next(), country: next(), region: next(), placement: next(), ip_hash: next(), ua_hash: next(),
                attributed_to: next(),
            }
        }
    }

    proptest! {
        #[test]
        fn round_trip(events in prop::collection::vec(event(), 0..40)) {
            let batch = EventBatch::from_events(&events);
            let bytes = encode_batch(&batch).expect("encode");
            let back = decode_batch(&bytes).expect("decode");
            prop_assert_eq!(back.events(), events);
        }

        #[test]
        fn sliced_round_trip(events in prop::collection::vec(event(), 1..20), cut in 0usize..20) {
            let batch = EventBatch::from_events(&events);
            let cut = cut % events.len();
            let sliced = batch.slice(cut, events.len() - cut);
            let back = decode_batch(&encode_batch(&sliced).expect("encode")).expect("decode");
            prop_assert_eq!(back.events(), events[cut..].to_vec());
        }

        /// A record with dropped rows reads back as its batch and those
        /// rows, and [`decode_batch`] gives the rest; the unchecked decoding
        /// of the store's own payloads reads back every encoding the checked
        /// one does, slices included.
        #[test]
        fn records_round_trip_with_their_dropped_rows(
            events in prop::collection::vec(event(), 0..30),
            cut in 0usize..30,
            drop in prop::collection::vec(any::<bool>(), 30),
            arrived in prop::option::of(any::<i64>()),
            offsets in prop::option::of(prop::collection::vec(("[a-z/]{1,10}", any::<i32>(), any::<i64>()), 1..4)),
        ) {
            let offsets = offsets.map(|entries| {
                let mut offsets = SourceOffsets::default();
                for (stream, partition, next) in entries {
                    offsets.advance(&stream, partition, next);
                }
                offsets
            });
            let notes = RecordNotes { arrived_ms: arrived, offsets: offsets.as_ref() };
            let batch = EventBatch::from_events(&events);
            let cut = cut.min(events.len());
            let events = &events[cut..];
            let dropped: Vec<u32> = (0..events.len() as u32).filter(|&i| drop[i as usize]).collect();
            let mut bytes = Vec::new();
            encode_batch_into(&batch.slice(cut, events.len()), &dropped, notes, &mut bytes).expect("encode");
            let stored: Vec<Event> =
                events.iter().enumerate().filter(|(i, _)| !drop[*i]).map(|(_, e)| e.clone()).collect();
            prop_assert_eq!(decode_batch(&bytes).expect("decode").events(), stored);
            let checked = decode_record(&bytes).expect("decode");
            prop_assert_eq!(checked.batch.events(), events.to_vec());
            prop_assert_eq!(&checked.dropped, &dropped);
            prop_assert_eq!(checked.arrived_ms, arrived);
            prop_assert_eq!(&checked.offsets, &offsets);
            // SAFETY: `bytes` are what `encode_batch_into` wrote.
            #[allow(unsafe_code)]
            let in_place = unsafe { decode_encoded_record(bytes.into()) }.expect("decode");
            prop_assert_eq!(in_place.batch.events(), events.to_vec());
            prop_assert_eq!(in_place.dropped, dropped);
            prop_assert_eq!(in_place.arrived_ms, arrived);
            prop_assert_eq!(in_place.offsets, offsets);
        }

        #[test]
        fn garbage_is_an_error(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            prop_assert!(decode_batch(&bytes).is_err());
        }

        /// A valid stream cut short is an error, never a panic.
        #[test]
        fn truncated_stream_is_an_error(events in prop::collection::vec(event(), 1..5), frac in 0.0f64..1.0) {
            let bytes = encode_batch(&EventBatch::from_events(&events)).expect("encode");
            let cut = (bytes.len() as f64 * frac) as usize;
            // The last 8 bytes are the end-of-stream marker, which the reader
            // does not need; cutting them off still decodes.
            prop_assume!(cut < bytes.len() - 8);
            prop_assert!(decode_batch(&bytes[..cut]).is_err());
        }
    }

    /// A list of dropped rows that is cut short, empty, not ascending,
    /// names a row the batch does not have, or has non-zero reserved or
    /// padding bytes is an error, written or read.
    #[test]
    fn bad_lists_of_dropped_rows_are_errors() {
        let batch = EventBatch::from_events(&vec![Event::default(); 4]);
        let mut good = Vec::new();
        encode_batch_into(&batch, &[1, 3], RecordNotes::default(), &mut good).expect("encode");
        assert_eq!(decode_record(&good).expect("decode").dropped, vec![1, 3]);
        let mut one = Vec::new();
        encode_batch_into(&batch, &[1], RecordNotes::default(), &mut one).expect("encode");
        assert_eq!(decode_record(&one).expect("decode").dropped, vec![1], "four bytes of padding");
        for bad in [&[1, 1][..], &[2, 1], &[4]] {
            let err = encode_batch_into(&batch, bad, RecordNotes::default(), &mut Vec::new())
                .expect_err("not rows of the batch");
            assert!(err.to_string().contains("ascending row numbers of the batch"), "{bad:?}: {err}");
        }
        let with_list = |n: u32, rows: &[u32]| {
            let mut bytes = DROPPED_MAGIC.to_vec();
            bytes.extend(n.to_le_bytes());
            bytes.extend([0; 4]);
            bytes.extend(rows.iter().flat_map(|r| r.to_le_bytes()));
            bytes.resize((16 + 4 * rows.len()).next_multiple_of(8), 0);
            bytes.extend(&good[dropped_prefix_len(2)..]);
            bytes
        };
        assert_eq!(decode_record(&with_list(2, &[0, 2])).expect("decode").dropped, vec![0, 2]);
        let set = |bytes: &[u8], at: usize, value: u8| {
            let mut bytes = bytes.to_vec();
            bytes[at] = value;
            bytes
        };
        for (bytes, want) in [
            (good[..12].to_vec(), "cut short"),
            (good[..17].to_vec(), "cut short"),
            (with_list(u32::MAX, &[0, 2]), "cut short"),
            (with_list(0, &[]), "empty"),
            (with_list(2, &[2, 2]), "not ascending"),
            (with_list(2, &[3, 1]), "not ascending"),
            (with_list(2, &[1, 4]), "not a row of the batch"),
            (set(&good, 12, 1), "non-zero reserved"),
            (set(&one, 20, 1), "non-zero reserved or padding"),
        ] {
            let err = decode_record(&bytes).expect_err(want);
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn empty_input_and_empty_batch() {
        assert!(decode_batch(&[]).is_err());
        let back = decode_batch(&encode_batch(&EventBatch::empty()).expect("encode")).expect("decode");
        assert!(back.is_empty());
    }

    #[test]
    fn two_batches_rejected() {
        let batch = EventBatch::empty();
        let rb = batch.record_batch();
        let mut writer = StreamWriter::try_new(Vec::new(), rb.schema_ref()).expect("writer");
        writer.write(rb).expect("write");
        writer.write(rb).expect("write");
        writer.finish().expect("finish");
        let err = decode_batch(&writer.into_inner().expect("bytes")).expect_err("two batches");
        assert!(err.to_string().contains("more than one"), "{err}");
    }

    #[test]
    fn foreign_schema_rejected() {
        use std::sync::Arc;

        use arrow_array::{ArrayRef, Int64Array, RecordBatch};
        let rb = RecordBatch::try_from_iter([("x", Arc::new(Int64Array::from(vec![1])) as ArrayRef)]).expect("batch");
        let mut writer = StreamWriter::try_new(Vec::new(), rb.schema_ref()).expect("writer");
        writer.write(&rb).expect("write");
        writer.finish().expect("finish");
        let err = decode_batch(&writer.into_inner().expect("bytes")).expect_err("wrong schema");
        assert!(matches!(err, StorageError::Schema(_)), "{err}");
    }
}
