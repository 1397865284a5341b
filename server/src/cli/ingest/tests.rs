use super::*;

fn batches(input: &[u8], lines: usize, chunk_reads: usize) -> Vec<(usize, u64, Vec<u8>)> {
    // A reader that returns at most `chunk_reads` bytes per read, to cut lines across reads.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(self.1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let mut s = Splitter::new(Dribble(input, chunk_reads), BufferPool::new(4, 1 << 20));
    let mut out = Vec::new();
    while let Some(b) = s.next_batch(lines).expect("read") {
        let Payload::Lines(body) = b.body else { panic!("the splitter cuts lines") };
        out.push((b.first_line, b.events, body.to_vec()));
    }
    out
}

/// What `queue_arrow_input` queued: (first row, events, sent as read?,
/// the request's record batches).
fn queued_arrow(input: &[u8], rows: usize, max_bytes: usize) -> Result<Vec<Queued>, ServerError> {
    let (tx, rx) = mpsc::sync_channel(1024);
    queue_arrow_input(
        input,
        "in.arrows",
        (rows, max_bytes),
        &BufferPool::new(4, 1 << 20),
        &tx,
        &AtomicBool::new(false),
    )?;
    drop(tx);
    Ok(rx
        .into_iter()
        .map(|b| {
            let (as_read, records) = match b.body {
                Payload::Ipc(bytes) => {
                    let reader = StreamReader::try_new(&bytes[..], None).expect("a whole IPC stream");
                    (true, reader.collect::<Result<Vec<_>, _>>().expect("valid"))
                }
                Payload::Rows(record) => (false, vec![record]),
                Payload::Lines(_) => panic!("lines from an Arrow input"),
            };
            (b.first_line, b.events, as_read, records)
        })
        .collect())
}

type Queued = (usize, u64, bool, Vec<RecordBatch>);

/// (first row, events, sent as read?, rows of each batch) of each request.
fn shapes(got: &[Queued]) -> Vec<(usize, u64, bool, Vec<usize>)> {
    got.iter().map(|(l, n, r, b)| (*l, *n, *r, b.iter().map(RecordBatch::num_rows).collect())).collect()
}

/// Every row queued, in order, is the input's row of the same number.
fn assert_rows_in_order(got: &[Queued], total: i64) {
    let mut row = 0;
    for (first, .., records) in got {
        assert_eq!(*first as i64, row + 1);
        for record in records {
            assert_eq!(record, &numbers(row, record.num_rows()), "rows from {row}");
            row += record.num_rows() as i64;
        }
    }
    assert_eq!(row, total);
}

fn arrow_stream(batches: &[RecordBatch]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batches[0].schema()).expect("writer");
    for b in batches {
        w.write(b).expect("write");
    }
    w.finish().expect("finish");
    drop(w);
    out
}

fn numbers(from: i64, n: usize) -> RecordBatch {
    let ts = arrow_array::Int64Array::from_iter_values(from..from + n as i64);
    let id = arrow_array::StringArray::from_iter_values((from..from + n as i64).map(|i| format!("e{i}")));
    RecordBatch::try_from_iter([("ts", Arc::new(ts) as _), ("event_id", Arc::new(id) as _)]).expect("batch")
}

#[test]
fn small_arrow_batches_go_out_as_read_and_joined() {
    let batches = [numbers(0, 3), numbers(3, 5), numbers(8, 0), numbers(8, 2), numbers(10, 1), numbers(11, 4)];
    let got = queued_arrow(&arrow_stream(&batches), 5, usize::MAX).expect("queue");
    let want = [(1, 3, true, vec![3]), (4, 5, true, vec![5]), (9, 3, true, vec![2, 1]), (12, 4, true, vec![4])];
    assert_eq!(shapes(&got), want);
    assert_rows_in_order(&got, 15);
}

#[test]
fn joined_requests_stay_under_the_byte_limit() {
    let batches: Vec<RecordBatch> = (0..6).map(|i| numbers(i * 100, 100)).collect();
    let stream = arrow_stream(&batches);
    // Room for the schema and two batches' messages (the end marker is
    // not counted), not three. Later batches have longer ids.
    let two = arrow_stream(&batches[4..]).len() - IPC_END.len();
    let got = queued_arrow(&stream, 1_000, two).expect("queue");
    assert_eq!(shapes(&got).iter().map(|s| s.3.clone()).collect::<Vec<_>>(), vec![vec![100, 100]; 3]);
    assert_rows_in_order(&got, 600);
    // A batch larger than the limit still goes out, alone.
    let got = queued_arrow(&stream, 1_000, 10).expect("queue");
    assert_eq!(got.len(), 6);
    assert_rows_in_order(&got, 600);
}

#[test]
fn a_larger_arrow_batch_hands_the_rest_to_the_decoder() {
    let batches = [numbers(0, 3), numbers(3, 12), numbers(15, 2)];
    let got = queued_arrow(&arrow_stream(&batches), 5, usize::MAX).expect("queue");
    let want = [
        (1, 3, true, vec![3]),
        (4, 5, false, vec![5]),
        (9, 5, false, vec![5]),
        (14, 2, false, vec![2]),
        (16, 2, false, vec![2]),
    ];
    assert_eq!(shapes(&got), want);
    assert_rows_in_order(&got, 17);
}

#[test]
fn dictionaries_and_broken_streams_go_to_the_decoder() {
    let keys = arrow_array::Int32Array::from(vec![0, 1, 0]);
    let values = arrow_array::StringArray::from(vec!["a", "b"]);
    let dict = arrow_array::DictionaryArray::try_new(keys, Arc::new(values)).expect("dictionary");
    let batch = RecordBatch::try_from_iter([("device", Arc::new(dict) as _)]).expect("batch");
    let got = queued_arrow(&arrow_stream(std::slice::from_ref(&batch)), 5, usize::MAX).expect("queue");
    assert_eq!(got.len(), 1);
    assert!(!got[0].2, "a dictionary batch is decoded, not passed through");
    assert_eq!(got[0].3, [batch]);
    // Cut short inside the third batch: the two before it go out, joined,
    // then the decoder reports the damage.
    let bytes = arrow_stream(&[numbers(0, 2), numbers(2, 2), numbers(4, 1)]);
    let (tx, rx) = mpsc::sync_channel(16);
    let pool = BufferPool::new(4, 1 << 20);
    let Err(err) = queue_arrow_input(
        &bytes[..bytes.len() - 20],
        "in.arrows",
        (5, usize::MAX),
        &pool,
        &tx,
        &AtomicBool::new(false),
    ) else {
        panic!("truncated")
    };
    assert!(matches!(err, ServerError::ArrowInput { .. }), "{err}");
    drop(tx);
    let sent: Vec<(usize, u64)> = rx.into_iter().map(|b| (b.first_line, b.events)).collect();
    assert_eq!(sent, [(1, 4)]);
}

#[test]
fn splitter_cuts_at_line_boundaries() {
    let input = b"a\nb\n\nc\nd\ne";
    for chunk in [1, 2, 3, 100] {
        let got = batches(input, 2, chunk);
        assert_eq!(
            got,
            vec![(1, 2, b"a\nb\n".to_vec()), (3, 1, b"\nc\n".to_vec()), (5, 2, b"d\ne".to_vec()),],
            "chunk {chunk}"
        );
    }
    assert!(batches(b"", 10, 5).is_empty());
    assert_eq!(batches(b"x\n", 10, 5), vec![(1, 1, b"x\n".to_vec())]);
    // Whitespace-only lines, cut across reads, are not events; nor is a
    // blank last line without a newline, though it is sent.
    for chunk in [1, 2, 100] {
        let input = b"a\n \t\nb\n \r\n\nc\n  ";
        let got = batches(input, 3, chunk);
        let want = vec![(1, 2, b"a\n \t\nb\n".to_vec()), (4, 1, b" \r\n\nc\n".to_vec()), (7, 0, b"  ".to_vec())];
        assert_eq!(got, want, "chunk {chunk}");
    }
}

#[test]
fn the_events_of_a_load_are_estimated_from_the_input_size() {
    // 1,000 bytes of 100-byte events.
    assert_eq!(load_events(Some(1_000), 200, 2), Some(10));
    assert_eq!(load_events(Some(1_000), 150, 1), Some(7), "rounded up");
    assert_eq!(load_events(Some(u64::MAX), 1, u64::MAX), Some(u64::MAX), "saturates");
    assert_eq!(load_events(None, 200, 2), None, "standard input");
    assert_eq!(load_events(Some(1_000), 0, 0), None);
}

#[test]
fn backoff_grows_and_is_capped() {
    assert!(backoff(1) >= Duration::from_millis(100) && backoff(1) <= Duration::from_millis(125));
    assert!(backoff(3) >= Duration::from_millis(400));
    assert!(backoff(30) <= Duration::from_millis(12_500));
}

#[test]
fn error_messages_are_unwrapped() {
    assert_eq!(error_message(r#"{"error":{"code":"x","message":"too big"}}"#), "too big");
    assert_eq!(error_message("plain"), "plain");
}
