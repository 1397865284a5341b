//! WAL payload codec for event batches: one Arrow IPC stream per record,
//! holding the schema message and exactly one record batch.

use arrow_ipc::MetadataVersion;
use arrow_ipc::reader::{FileDecoder, StreamReader};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;

use crate::error::{Result, StorageError};
use crate::event::{EventBatch, event_schema};

/// Room for the IPC schema and message headers on top of the batch's buffers.
const IPC_OVERHEAD_BYTES: usize = 16 << 10;

/// Encodes `batch` as an Arrow IPC stream (schema + one batch + end marker).
pub fn encode_batch(batch: &EventBatch) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_batch_into(batch, &mut out)?;
    Ok(out)
}

/// [`encode_batch`] into `out` (cleared first), so a caller can reuse one
/// buffer for many records instead of megabytes of fresh memory each time.
pub fn encode_batch_into(batch: &EventBatch, out: &mut Vec<u8>) -> Result<()> {
    let rb = batch.record_batch();
    // Sized up front: growing by doubling copied the payload several times,
    // each time into memory fresh from the kernel.
    out.clear();
    out.reserve(batch.memory_bytes() + IPC_OVERHEAD_BYTES);
    let mut writer = StreamWriter::try_new(out, rb.schema_ref())?;
    writer.write(rb)?;
    writer.finish()?;
    Ok(())
}

/// Decodes a payload written by [`encode_batch`].
///
/// # Errors
/// [`StorageError::Arrow`] if the bytes are not an IPC stream with exactly
/// one batch; [`StorageError::Schema`] if the batch is not an event batch.
pub fn decode_batch(bytes: &[u8]) -> Result<EventBatch> {
    let mut reader = StreamReader::try_new(bytes, None)?;
    let batch = match reader.next() {
        Some(batch) => batch?,
        None => return Err(ipc_error("the IPC stream holds no record batch")),
    };
    if reader.next().is_some() {
        return Err(ipc_error("the IPC stream holds more than one record batch"));
    }
    EventBatch::try_new(batch)
}

/// [`decode_batch`] without a copy and without checking the arrays: the
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
/// As [`decode_batch`], for a stream that is not one batch of the event
/// schema.
#[allow(unsafe_code)]
pub(crate) unsafe fn decode_encoded_batch(bytes: arrow_buffer::Buffer) -> Result<EventBatch> {
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
        Some(batch) => EventBatch::try_new(batch),
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

        /// The unchecked decoding of the store's own payloads reads back
        /// every encoding the checked one does, slices included.
        #[test]
        fn encoded_batches_decode_in_place(events in prop::collection::vec(event(), 0..30), cut in 0usize..30) {
            let batch = EventBatch::from_events(&events);
            let cut = cut.min(events.len());
            let bytes = encode_batch(&batch.slice(cut, events.len() - cut)).expect("encode");
            // SAFETY: `bytes` are what `encode_batch` wrote.
            #[allow(unsafe_code)]
            let back = unsafe { decode_encoded_batch(bytes.into()) }.expect("decode");
            prop_assert_eq!(back.events(), events[cut..].to_vec());
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
