//! Reading the input into batches: NDJSON cut at line boundaries, an
//! Arrow IPC stream batch by batch as read (or decoded and sliced), onto
//! the bounded queue the workers take from.

use super::*;

/// Cuts a byte stream into batches of whole lines.
///
/// Batch buffers come from a pool and return to it when the worker drops
/// them after sending: megabytes of fresh memory per batch otherwise cost
/// the kernel mapping and zeroing pages each time.
pub(super) struct Splitter<R> {
    input: R,
    pool: Arc<BufferPool>,
    pending: PooledBuf,
    /// Bytes of `pending` already searched for newlines, the newlines
    /// found there, how many of the lines they end are not blank, and where
    /// the line after the last of them starts.
    scanned: usize,
    newlines: usize,
    events: u64,
    line_start: usize,
    next_line: usize,
    eof: bool,
}

impl<R: Read> Splitter<R> {
    pub(super) fn new(input: R, pool: Arc<BufferPool>) -> Splitter<R> {
        let pending = pool.take();
        Splitter { input, pool, pending, scanned: 0, newlines: 0, events: 0, line_start: 0, next_line: 1, eof: false }
    }

    pub(super) fn next_batch(&mut self, lines: usize) -> std::io::Result<Option<Batch>> {
        loop {
            // Newlines and non-blank lines are counted in one pass (a second
            // pass over each batch to count events was a tenth of the
            // client's time).
            let mut cut = None;
            for pos in memchr_iter(b'\n', &self.pending[self.scanned..]) {
                let end = self.scanned + pos;
                self.events += u64::from(!is_blank(&self.pending[self.line_start..end]));
                self.line_start = end + 1;
                self.newlines += 1;
                if self.newlines == lines {
                    cut = Some(end + 1);
                    break;
                }
            }
            if let Some(cut) = cut {
                let mut rest = self.pool.take();
                rest.vec_mut().extend_from_slice(&self.pending[cut..]);
                self.pending.vec_mut().truncate(cut);
                let body = std::mem::replace(&mut self.pending, rest);
                return Ok(Some(self.batch(body, lines)));
            }
            self.scanned = self.pending.len();
            if self.eof {
                if self.pending.is_empty() {
                    return Ok(None);
                }
                // A last line without a newline.
                let unterminated = self.line_start < self.pending.len();
                if unterminated {
                    self.events += u64::from(!is_blank(&self.pending[self.line_start..]));
                }
                let body = std::mem::replace(&mut self.pending, self.pool.take());
                let lines = self.newlines + usize::from(unterminated);
                return Ok(Some(self.batch(body, lines)));
            }
            // Into spare capacity: `read_to_end` does not zero it first, and
            // retries reads that were interrupted.
            let pending = self.pending.vec_mut();
            pending.reserve(READ_CHUNK);
            if (&mut self.input).take(READ_CHUNK as u64).read_to_end(pending)? == 0 {
                self.eof = true;
            }
        }
    }

    fn batch(&mut self, body: PooledBuf, lines: usize) -> Batch {
        let first_line = self.next_line;
        self.next_line += lines;
        let events = std::mem::take(&mut self.events);
        self.scanned = 0;
        self.newlines = 0;
        self.line_start = 0;
        Batch { first_line, events, body: Payload::Lines(body) }
    }
}

/// Whether a line holds nothing but whitespace. (It stops at the first
/// other byte, the line's first for any event.)
pub(super) fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// Queues an Arrow IPC stream. Record batches go out as they are: their
/// message bytes, behind the stream's schema message, are the request body,
/// with nothing decoded or re-encoded (decoding, checking and re-encoding
/// each batch was most of the client's time). Consecutive batches share a
/// request while together they hold at most `rows` rows and `max_bytes`
/// bytes ([`MAX_JOINED_REQUEST_BYTES`] in a load): fewer, larger requests
/// cost fewer round trips and fsync waits. At the first message that cannot
/// go out as it is (a batch larger than `rows`, a dictionary, bytes that are
/// not a message), the rest of the stream goes to [`queue_arrow_rows`],
/// which decodes it and reports any error.
pub(super) fn queue_arrow_input(
    mut input: impl Read,
    path: &str,
    limits: (usize, usize),
    pool: &Arc<BufferPool>,
    tx: &mpsc::SyncSender<Batch>,
    stop: &AtomicBool,
) -> Result<(), ServerError> {
    let (rows, max_bytes) = limits;
    let bad = |source| ServerError::Io { path: path.to_string(), source };
    let mut schema = Vec::new();
    let whole = match read_ipc_frame(&mut input, &mut schema).map_err(bad)? {
        IpcFrame::Message { kind: IpcKind::Schema, body_len } => {
            read_up_to(&mut input, &mut schema, body_len).map_err(bad)?
        }
        IpcFrame::Message { .. } | IpcFrame::End | IpcFrame::Unsupported => false,
    };
    // Anything else, or a schema the decoder cannot read, is left to the
    // decoder, to say why.
    if !whole || arrow_ipc::convert::try_schema_from_ipc_buffer(&schema).is_err() {
        return queue_arrow_rows(Cursor::new(schema).chain(input), path, rows, 1, tx, stop);
    }
    // The request being filled: the schema, then whole batch messages read
    // straight into it, so a batch's bytes are not copied again.
    let mut request = Request::new(&schema, pool);
    let mut frame = Vec::new();
    let leftover = loop {
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        frame.clear();
        match read_ipc_frame(&mut input, &mut frame).map_err(bad)? {
            // An empty batch adds nothing to a request: read past it.
            IpcFrame::Message { kind: IpcKind::RecordBatch(0), body_len } => {
                if !read_up_to(&mut input, &mut frame, body_len).map_err(bad)? {
                    break std::mem::take(&mut frame);
                }
            }
            IpcFrame::Message { kind: IpcKind::RecordBatch(n), body_len } if n <= rows => {
                let message_len = frame.len() + body_len;
                let fits = request.rows + n <= rows && request.bytes.len() + message_len <= max_bytes;
                if request.rows > 0 && !fits && !request.send(&schema, pool, tx) {
                    return Ok(());
                }
                if request.rows == 0 {
                    // Room for as many messages like this one as fit, and
                    // one more for messages a little larger, so the request
                    // is not copied as it grows (a pooled buffer has it).
                    let like = (rows / n).min(max_bytes / message_len.max(1)).max(1);
                    request.bytes.vec_mut().reserve(message_len.saturating_mul(like + 1) + IPC_END.len());
                }
                let bytes = request.bytes.vec_mut();
                let at = bytes.len();
                bytes.extend_from_slice(&frame);
                if !read_up_to(&mut input, bytes, body_len).map_err(bad)? {
                    // Cut short: the decoder reports it, after the whole batches before it.
                    break bytes.split_off(at);
                }
                request.rows += n;
            }
            IpcFrame::End if frame.is_empty() => break Vec::new(),
            IpcFrame::Message { .. } | IpcFrame::End | IpcFrame::Unsupported => break std::mem::take(&mut frame),
        }
    };
    let first_row = request.first_row + request.rows;
    if request.rows > 0 && !request.send(&schema, pool, tx) {
        return Ok(());
    }
    if leftover.is_empty() {
        return Ok(());
    }
    let rest = Cursor::new(schema).chain(Cursor::new(leftover)).chain(input);
    queue_arrow_rows(rest, path, rows, first_row, tx, stop)
}

/// Largest request that [`queue_arrow_input`] makes by joining record
/// batches: half the server's default `server.max_body_bytes`, so wide rows
/// do not turn a joined request into a 413. A single larger batch still goes
/// out alone, as it is.
pub(super) const MAX_JOINED_REQUEST_BYTES: usize = 32 << 20;

/// A request of whole record batch messages being filled by
/// [`queue_arrow_input`], in a buffer from its pool: a fresh one per
/// request cost the kernel mapping and zeroing its pages each time.
pub(super) struct Request {
    bytes: PooledBuf,
    rows: usize,
    /// 1-based row of the input of its first row.
    first_row: usize,
}

impl Request {
    pub(super) fn new(schema: &[u8], pool: &Arc<BufferPool>) -> Request {
        Request { bytes: Request::buffer(schema, pool), rows: 0, first_row: 1 }
    }

    fn buffer(schema: &[u8], pool: &Arc<BufferPool>) -> PooledBuf {
        let mut bytes = pool.take();
        bytes.vec_mut().extend_from_slice(schema);
        bytes
    }

    /// Queues the request, ended as a stream, and starts the next one;
    /// `false` when the workers are gone.
    pub(super) fn send(&mut self, schema: &[u8], pool: &Arc<BufferPool>, tx: &mpsc::SyncSender<Batch>) -> bool {
        let mut bytes = std::mem::replace(&mut self.bytes, Request::buffer(schema, pool));
        bytes.vec_mut().extend_from_slice(&IPC_END);
        let batch = Batch { first_line: self.first_row, events: self.rows as u64, body: Payload::Ipc(bytes) };
        self.first_row += self.rows;
        self.rows = 0;
        tx.send(batch).is_ok()
    }
}

/// The end-of-stream marker of the IPC stream format.
pub(super) const IPC_END: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];

/// Largest message the pass-through reads whole; a longer one is left to
/// the decoder.
pub(super) const MAX_IPC_MESSAGE_BYTES: usize = 1 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IpcKind {
    Schema,
    /// A record batch of this many rows.
    RecordBatch(usize),
    Other,
}

/// What [`read_ipc_frame`] found.
pub(super) enum IpcFrame {
    /// A message's framing and metadata; its body, `body_len` bytes, comes
    /// next in the input.
    Message { kind: IpcKind, body_len: usize },
    /// The end-of-stream marker, or the end of the input (the bytes hold
    /// what was read of a message cut short, if anything).
    End,
    /// Bytes that do not frame a message this reader understands.
    Unsupported,
}

/// Reads the frame of one message, appending what it reads to `bytes`:
/// `0xFFFFFFFF`, a little-endian `i32` metadata length, the metadata (a
/// flatbuffer `Message`, which gives the `bodyLength` of the body that
/// follows). The end-of-stream marker is not kept.
pub(super) fn read_ipc_frame(input: &mut impl Read, bytes: &mut Vec<u8>) -> std::io::Result<IpcFrame> {
    let at = bytes.len();
    if !read_up_to(input, bytes, 8)? {
        return Ok(IpcFrame::End);
    }
    if bytes[at..at + 4] != [0xFF; 4] {
        return Ok(IpcFrame::Unsupported);
    }
    let meta_len = i32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
    if meta_len == 0 {
        bytes.truncate(at);
        return Ok(IpcFrame::End);
    }
    let Ok(meta_len) = usize::try_from(meta_len) else {
        return Ok(IpcFrame::Unsupported);
    };
    if meta_len > MAX_IPC_MESSAGE_BYTES {
        return Ok(IpcFrame::Unsupported);
    }
    if !read_up_to(input, bytes, meta_len)? {
        return Ok(IpcFrame::End);
    }
    let (kind, body_len) = match arrow_ipc::root_as_message(&bytes[at + 8..]) {
        Ok(m) => {
            let kind = match m.header_type() {
                arrow_ipc::MessageHeader::Schema => IpcKind::Schema,
                // A compressed body is left to the decoder, which says
                // whether it can read it.
                arrow_ipc::MessageHeader::RecordBatch => m
                    .header_as_record_batch()
                    .filter(|b| b.compression().is_none())
                    .and_then(|b| usize::try_from(b.length()).ok())
                    .map_or(IpcKind::Other, IpcKind::RecordBatch),
                _ => IpcKind::Other,
            };
            (kind, usize::try_from(m.bodyLength()).ok())
        }
        Err(_) => (IpcKind::Other, None),
    };
    match body_len.filter(|&n| n <= MAX_IPC_MESSAGE_BYTES && kind != IpcKind::Other) {
        Some(body_len) => Ok(IpcFrame::Message { kind, body_len }),
        None => Ok(IpcFrame::Unsupported),
    }
}

/// Appends `n` bytes of `input` to `out`; `false` if the input ended first
/// (what was read stays in `out`).
pub(super) fn read_up_to(input: &mut impl Read, out: &mut Vec<u8>, n: usize) -> std::io::Result<bool> {
    let got = input.take(n as u64).read_to_end(out)?;
    Ok(got == n)
}

/// Reads an Arrow IPC stream and queues its rows in slices of `rows`,
/// numbering them from `first_row`. Stops early when `stop` is set or the
/// workers are gone.
pub(super) fn queue_arrow_rows(
    input: impl Read,
    path: &str,
    rows: usize,
    first_row: usize,
    tx: &mpsc::SyncSender<Batch>,
    stop: &AtomicBool,
) -> Result<(), ServerError> {
    let bad = |source| ServerError::ArrowInput { path: path.to_string(), source };
    let reader = StreamReader::try_new(input, None).map_err(bad)?;
    let mut next_row = first_row;
    for record in reader {
        let record = record.map_err(bad)?;
        let mut offset = 0;
        while offset < record.num_rows() {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let len = (record.num_rows() - offset).min(rows);
            let batch =
                Batch { first_line: next_row, events: len as u64, body: Payload::Rows(record.slice(offset, len)) };
            if tx.send(batch).is_err() {
                return Ok(());
            }
            next_row += len;
            offset += len;
        }
    }
    Ok(())
}
