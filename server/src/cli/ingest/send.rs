//! The workers: each batch sent as a request (NDJSON as read, or Arrow
//! IPC), its answer counted, and failures retried with backoff.

use super::*;

/// What the workers send.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// NDJSON lines as they are.
    Lines,
    /// NDJSON lines parsed client-side into Arrow IPC.
    ParsedLines,
    /// The rows of an Arrow input.
    ArrowRows,
}

impl From<WireFormat> for Sent {
    fn from(f: WireFormat) -> Sent {
        match f {
            WireFormat::Ndjson => Sent::Lines,
            WireFormat::Arrow => Sent::ParsedLines,
        }
    }
}

/// A request body: as read (NDJSON lines, Arrow record batches), or
/// encoded by the worker.
pub(super) enum Wire {
    Pooled(PooledBuf),
    Encoded(Vec<u8>),
}

impl std::ops::Deref for Wire {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Wire::Pooled(b) => b,
            Wire::Encoded(b) => b,
        }
    }
}

/// One sending thread's view of the run.
pub(super) struct Worker {
    pub(super) agent: ureq::Agent,
    pub(super) endpoint: String,
    /// The `Authorization` header, when a token is given.
    pub(super) authorization: Option<String>,
    pub(super) format: Sent,
    pub(super) max_attempts: u32,
    pub(super) max_wait: Duration,
    pub(super) totals: Arc<Totals>,
    pub(super) progress: ProgressBar,
    pub(super) started: Instant,
    pub(super) stop: Arc<AtomicBool>,
    /// Size of the input file; `None` for standard input.
    pub(super) input_bytes: Option<u64>,
    /// The events of the whole input, estimated once, from the first batch
    /// sent; `None` for standard input.
    pub(super) load_events: Arc<OnceLock<Option<u64>>>,
}

/// What one attempt to deliver a batch came to.
pub(super) enum Attempt {
    Done(IngestReply),
    /// Worth another try, after at least this long.
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// The server is up but asks to come back after this long
    /// (backpressure, not a failure).
    Wait {
        after: Duration,
        why: String,
    },
    Fatal(String),
}

impl Worker {
    pub(super) fn send(&self, batch: Batch) {
        let t = &self.totals;
        let sent_before = t.sent.fetch_add(batch.events, Ordering::Relaxed);
        const ARROW: &str = "application/vnd.apache.arrow.stream";
        const NDJSON: &str = "application/x-ndjson";
        let encoded = match (self.format, batch.body) {
            (Sent::Lines, Payload::Lines(lines)) => Ok((lines.len() as u64, Some(Wire::Pooled(lines)), NDJSON, 0)),
            (Sent::ParsedLines, Payload::Lines(lines)) => to_arrow(&lines, batch.first_line, t)
                .map(|(body, rejected)| (lines.len() as u64, body.map(Wire::Encoded), ARROW, rejected)),
            (_, Payload::Rows(record)) => {
                encode_record_batch(&record).map(|body| (body.len() as u64, Some(Wire::Encoded(body)), ARROW, 0))
            }
            (_, Payload::Ipc(body)) => Ok((body.len() as u64, Some(Wire::Pooled(body)), ARROW, 0)),
            (Sent::ArrowRows, Payload::Lines(_)) => {
                Err(ArrowError::InvalidArgumentError("lines from an Arrow input".into()))
            }
        };
        let (raw_len, body, content_type, client_rejected) = match encoded {
            Ok(e) => e,
            Err(e) => {
                self.fail(format!("{} {}..: cannot encode Arrow IPC: {e}", self.unit(), batch.first_line));
                return;
            }
        };
        t.rejected.fetch_add(client_rejected, Ordering::Relaxed);
        let mut attempt = 1;
        let mut waited = Duration::ZERO;
        // Nothing valid to send (every line rejected client-side).
        let Some(body) = body else {
            self.advance(raw_len);
            return;
        };
        // Announced to the server: the events still to come, this batch's
        // included. Estimated once, so that the announcements only shrink.
        let load = *self.load_events.get_or_init(|| load_events(self.input_bytes, raw_len, batch.events));
        let to_come = load.map(|load| load.saturating_sub(sent_before).max(batch.events));
        loop {
            match self.post(&body, content_type, to_come) {
                Attempt::Done(reply) => {
                    t.accepted.fetch_add(reply.accepted, Ordering::Relaxed);
                    t.duplicates.fetch_add(reply.duplicates, Ordering::Relaxed);
                    t.rejected.fetch_add(reply.rejected, Ordering::Relaxed);
                    for e in reply.errors {
                        let at = match self.format {
                            Sent::Lines => format!("line {}", batch.first_line + e.line - 1),
                            Sent::ParsedLines => {
                                format!("row {} of the batch from line {}", e.line, batch.first_line)
                            }
                            Sent::ArrowRows => format!("row {}", batch.first_line + e.line - 1),
                        };
                        let field = e.field.map(|f| format!(" {f}:")).unwrap_or_default();
                        t.note_error(format!("{at}:{field} {}", e.reason));
                    }
                    break;
                }
                Attempt::Retry { after, why } if attempt < self.max_attempts && !self.stop.load(Ordering::Relaxed) => {
                    t.retries.fetch_add(1, Ordering::Relaxed);
                    let backoff = backoff(attempt).max(after.unwrap_or_default());
                    self.progress.suspend(|| {
                        tracing::warn!(first_line = batch.first_line, attempt, error = %why, "retrying batch");
                    });
                    self.sleep_unless_stopped(backoff);
                    attempt += 1;
                }
                Attempt::Wait { .. } if self.stop.load(Ordering::Relaxed) => {
                    // Another batch failed for good and the run is ending;
                    // that failure is the one to report.
                    break;
                }
                Attempt::Wait { after, why } if after <= self.max_wait.saturating_sub(waited) => {
                    t.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(first_line = batch.first_line, after_s = after.as_secs(), error = %why,
                        "server asks to wait");
                    self.sleep_unless_stopped(after);
                    waited += after;
                }
                Attempt::Wait { why, .. } => {
                    self.fail(format!(
                        "{} {}..: gave up after waiting {} s in all for the server: {why}",
                        self.unit(),
                        batch.first_line,
                        waited.as_secs()
                    ));
                    break;
                }
                Attempt::Retry { why, .. } => {
                    self.fail(format!(
                        "{} {}..: gave up after {attempt} attempts: {why}",
                        self.unit(),
                        batch.first_line
                    ));
                    break;
                }
                Attempt::Fatal(why) => {
                    self.fail(format!("{} {}..: {why}", self.unit(), batch.first_line));
                    break;
                }
            }
        }
        self.advance(raw_len);
    }

    /// Sleeps for `duration`, or less if the run is stopped meanwhile.
    fn sleep_unless_stopped(&self, duration: Duration) {
        const SLICE: Duration = Duration::from_millis(100);
        let deadline = Instant::now() + duration;
        while !self.stop.load(Ordering::Relaxed) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(SLICE));
        }
    }

    /// What the input is counted in, for messages.
    fn unit(&self) -> &'static str {
        if self.format == Sent::ArrowRows { "rows" } else { "lines" }
    }

    /// Moves the progress bar past a finished batch of `raw_len` input bytes.
    fn advance(&self, raw_len: u64) {
        let t = &self.totals;
        let done = t.bytes_done.fetch_add(raw_len, Ordering::Relaxed) + raw_len;
        self.progress.set_position(done);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let acked = t.accepted.load(Ordering::Relaxed) + t.duplicates.load(Ordering::Relaxed);
        self.progress.set_message(format!("{acked} events, {:.0} events/s", acked as f64 / secs));
    }

    fn fail(&self, message: String) {
        self.totals.failed_batches.fetch_add(1, Ordering::Relaxed);
        self.totals.note_error(message);
        // A batch the server refuses outright (413, 415, 404) will not go
        // better for the next one: stop reading.
        self.stop.store(true, Ordering::Relaxed);
    }

    fn post(&self, body: &[u8], content_type: &str, events_to_come: Option<u64>) -> Attempt {
        let mut request = self.agent.post(&self.endpoint).header("content-type", content_type);
        if let Some(value) = &self.authorization {
            request = request.header("authorization", value);
        }
        if let Some(n) = events_to_come {
            request = request.header(EXPECTED_EVENTS_HEADER, n.to_string());
        }
        let response = request.send(body);
        let mut response = match response {
            Ok(r) => r,
            Err(e) => return Attempt::Retry { after: None, why: e.to_string() },
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = match response.body_mut().read_to_string() {
            Ok(t) => t,
            Err(e) => return Attempt::Retry { after: None, why: format!("reading the response: {e}") },
        };
        match status {
            200..=299 | 400 | 422 => match serde_json::from_str::<IngestReply>(&text) {
                Ok(reply) => Attempt::Done(reply),
                Err(_) => Attempt::Fatal(format!("HTTP {status}: {}", error_message(&text))),
            },
            429 | 500..=599 => {
                let why = format!("HTTP {status}: {}", error_message(&text));
                match retry_after {
                    Some(after) if status == 429 || status == 503 => {
                        Attempt::Wait { after: after.max(Duration::from_millis(100)), why }
                    }
                    _ => Attempt::Retry { after: retry_after, why },
                }
            }
            413 => Attempt::Fatal(format!("HTTP 413: {}; use a smaller --batch-size", error_message(&text))),
            _ => Attempt::Fatal(format!("HTTP {status}: {}", error_message(&text))),
        }
    }
}

/// The events of the whole input, estimated from its size at the bytes
/// per event of one batch; `None` for an input of unknown size. Each
/// request announces this less the events sent before it in the
/// `adstore-expected-events` header, so that the server sizes its dedupe
/// index for the whole load at once.
pub(super) fn load_events(input_bytes: Option<u64>, batch_bytes: u64, batch_events: u64) -> Option<u64> {
    if batch_bytes == 0 || batch_events == 0 {
        return None;
    }
    let estimate = (u128::from(input_bytes?) * u128::from(batch_events)).div_ceil(u128::from(batch_bytes));
    Some(u64::try_from(estimate).unwrap_or(u64::MAX))
}

/// 100 ms, 200 ms, 400 ms, … capped at 10 s, with up to 25% jitter so
/// retrying workers do not march in step.
pub(super) fn backoff(attempt: u32) -> Duration {
    let base = 100u64.saturating_mul(1 << attempt.saturating_sub(1).min(7)).min(10_000);
    Duration::from_millis(base + fastrand::u64(0..=base / 4))
}

/// The `message` of a JSON error body, or the body itself.
pub(super) fn error_message(text: &str) -> String {
    #[derive(Deserialize)]
    struct Wrapper {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        message: String,
    }
    match serde_json::from_str::<Wrapper>(text) {
        Ok(w) => w.error.message,
        Err(_) => text.chars().take(200).collect(),
    }
}

/// Parses NDJSON lines client-side and encodes the valid events as one Arrow
/// IPC stream of the input columns. Lines the parser rejects are reported
/// here and not sent; the server still applies its own checks (time window).
pub(super) fn to_arrow(body: &[u8], first_line: usize, totals: &Totals) -> Result<(Option<Vec<u8>>, u64), ArrowError> {
    let opts = ParseOptions {
        max_future_skew_ms: i64::MAX,
        min_ts_ms: None,
        max_errors: SHOWN_ERRORS,
        ..ParseOptions::default()
    };
    let outcome = parse_ndjson(body, &opts);
    for e in &outcome.errors {
        let field = e.field.as_deref().map(|f| format!(" {f}:")).unwrap_or_default();
        totals.note_error(format!("line {}:{field} {}", first_line + e.line - 1, e.reason));
    }
    let encoded = if outcome.accepted() == 0 { None } else { Some(encode_arrow_ipc(&outcome.batch())?) };
    Ok((encoded, outcome.rejected as u64))
}

/// The input columns of `batch` (all but the seal-time ones) as an Arrow IPC stream.
pub fn encode_arrow_ipc(batch: &EventBatch) -> Result<Vec<u8>, ArrowError> {
    encode_record_batch(&input_columns(batch)?)
}

/// The input columns of `batch`: all but the seal-time ones.
pub fn input_columns(batch: &EventBatch) -> Result<RecordBatch, ArrowError> {
    // Invariant: the seal-time columns (`attributed`, `attributed_to`,
    // `invalid_reason`) are the last ones of the event schema.
    let input: Vec<usize> = (0..ColumnId::Attributed.index()).collect();
    batch.record_batch().project(&input)
}

/// One record batch as an Arrow IPC stream (schema, batch, end marker).
pub(super) fn encode_record_batch(record: &RecordBatch) -> Result<Vec<u8>, ArrowError> {
    let mut out = Vec::with_capacity(record.get_array_memory_size() + 4096);
    let mut writer = StreamWriter::try_new(&mut out, &record.schema())?;
    writer.write(record)?;
    writer.finish()?;
    drop(writer);
    Ok(out)
}
