use std::sync::Arc;

use adstore_storage::{Event, EventBatch, EventType};
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, DictionaryArray, Int64Array, LargeStringArray, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt8Array,
};
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{Field, Schema};
use proptest::strategy::Strategy;

use super::*;
use crate::parse_ndjson;

/// 2026-11-22T10:00:00Z
const NOW: i64 = 1_795_341_600_000;
const HOUR: i64 = 3_600_000;

fn opts() -> ParseOptions {
    ParseOptions { now_ms: NOW, ..ParseOptions::default() }
}

fn event(kind: EventType, id: &str) -> Event {
    Event {
        event_id: id.into(),
        kind,
        ts: NOW - HOUR,
        publisher_id: "pub-1".into(),
        advertiser_id: "adv-1".into(),
        campaign_id: "camp-1".into(),
        ad_id: "ad-1".into(),
        impression_id: (kind == EventType::Impression).then(|| format!("imp-{id}")),
        click_id: (kind == EventType::Click).then(|| format!("clk-{id}")),
        country: Some("DE".into()),
        device: Some("mobile".into()),
        cost_micros: 1500,
        ..Event::default()
    }
}

/// The input columns of `events`, as the store's own Arrow types.
fn input_batch(events: &[Event]) -> RecordBatch {
    let b = EventBatch::from_events(events);
    let indices: Vec<usize> = (0..INPUT_FIELDS).collect();
    b.record_batch().project(&indices).expect("project")
}

fn ipc(batches: &[RecordBatch]) -> Vec<u8> {
    let mut out = Vec::new();
    let schema = batches[0].schema();
    let mut w = StreamWriter::try_new(&mut out, &schema).expect("writer");
    for b in batches {
        w.write(b).expect("write");
    }
    w.finish().expect("finish");
    drop(w);
    out
}

fn batch_of(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let fields: Vec<Field> = columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns.into_iter().map(|(_, a)| a).collect()).expect("batch")
}

fn errs(out: &ParseOutcome) -> Vec<(usize, Option<&str>, &str)> {
    out.errors.iter().map(|e| (e.line, e.field.as_deref(), e.reason.as_str())).collect()
}

#[test]
fn store_schema_round_trips() {
    let events: Vec<Event> = (0..100)
        .map(|i| event(EventType::ALL[i % 3], &format!("e{i}")))
        .map(|mut e| {
            if e.kind == EventType::Conversion {
                e.value_micros = 99;
            }
            e
        })
        .collect();
    let body = ipc(&[input_batch(&events[..60]), input_batch(&events[60..])]);
    let out = parse_arrow_ipc(body.as_slice(), &opts());
    assert_eq!(out.rejected, 0, "{:?}", out.errors);
    assert_eq!(out.batch().events(), events);
}

#[test]
fn strings_timestamps_subsets_and_dictionaries() {
    let ts = NOW - 2 * HOUR;
    let campaigns: DictionaryArray<Int32Type> = vec!["c1", "c2", "c1"].into_iter().collect();
    let batch = batch_of(vec![
        ("type", Arc::new(StringArray::from(vec!["impression", "click", "conversion"]))),
        ("event_id", Arc::new(LargeStringArray::from(vec!["a", "b", "c"]))),
        ("ts", Arc::new(TimestampMicrosecondArray::from(vec![ts * 1000 + 999; 3]).with_timezone("UTC"))),
        ("publisher_id", Arc::new(StringArray::from(vec!["p"; 3]))),
        ("advertiser_id", Arc::new(StringArray::from(vec!["adv"; 3]))),
        ("campaign_id", Arc::new(campaigns)),
        ("ad_id", Arc::new(StringArray::from(vec!["ad"; 3]))),
        ("impression_id", Arc::new(StringArray::from(vec![Some("i"), None, Some("")]))),
        ("click_id", Arc::new(StringArray::from(vec![None, Some("k"), None]))),
        ("country", Arc::new(StringArray::from(vec![Some(""), None, Some("US")]))),
    ]);
    let out = parse_arrow_ipc(ipc(&[batch]), &opts());
    assert_eq!(out.rejected, 0, "{:?}", out.errors);
    let got = out.batch().events();
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].kind, EventType::Click);
    assert_eq!(got[0].ts, ts, "microseconds are floored to milliseconds");
    assert_eq!(got[1].campaign_id, "c2");
    assert_eq!(got[2].impression_id, None, "empty optional string is stored as null");
    assert_eq!(got[0].country, None);
    assert_eq!(got[2].country.as_deref(), Some("US"));
    assert_eq!(got[0].cost_micros, 0, "absent cost is 0");
}

#[test]
fn bad_rows_are_rejected_by_row_number_and_good_rows_kept() {
    let mut events: Vec<Event> = (0..6).map(|i| event(EventType::Impression, &format!("e{i}"))).collect();
    events[4].country = Some("germany".into());
    let first = input_batch(&events[..3]);
    let mut second = input_batch(&events[3..]);
    // Row 2 of the second batch (stream row 5): country; row 3 (row 6): null event_id.
    let ids: ArrayRef = Arc::new(StringArray::from(vec![Some("e3"), Some("e4"), None]));
    let mut cols = second.columns().to_vec();
    cols[ColumnId::EventId.index()] = ids;
    let schema = Arc::new(Schema::new(
        second.schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
    ));
    second = RecordBatch::try_new(schema.clone(), cols).expect("batch");
    let first = RecordBatch::try_new(schema, first.columns().to_vec()).expect("batch");
    let out = parse_arrow_ipc(ipc(&[first, second]), &opts());
    assert_eq!(out.accepted(), 4);
    assert_eq!(out.rejected, 2);
    assert_eq!(
        errs(&out),
        vec![
            (5, Some("country"), "expected an ISO 3166 alpha-2 code (2 uppercase ASCII letters), found \"germany\""),
            (6, Some("event_id"), "required field must not be null"),
        ]
    );
}

#[test]
fn type_codes_and_typed_endpoints() {
    let mut b = input_batch(&[event(EventType::Click, "a"), event(EventType::Impression, "b")]);
    let mut cols = b.columns().to_vec();
    cols[ColumnId::Type.index()] = Arc::new(UInt8Array::from(vec![1, 7]));
    b = RecordBatch::try_new(b.schema(), cols).expect("batch");
    let out = parse_arrow_ipc(ipc(std::slice::from_ref(&b)), &opts());
    assert_eq!(errs(&out), vec![(2, Some("type"), "expected one of impression, click, conversion, found \"code 7\"")]);

    let o = ParseOptions { expected_type: Some(EventType::Impression), ..opts() };
    let out = parse_arrow_ipc(ipc(&[input_batch(&[event(EventType::Click, "a")])]), &o);
    assert_eq!(out.accepted(), 0);
    assert_eq!(errs(&out), vec![(1, Some("type"), "type click does not match the endpoint's type impression")]);
}

#[test]
fn missing_required_columns_and_wrong_types() {
    let batch = batch_of(vec![
        ("event_id", Arc::new(StringArray::from(vec!["a", "b"]))),
        ("type", Arc::new(StringArray::from(vec!["click", "click"]))),
        ("ts", Arc::new(Int64Array::from(vec![NOW, NOW]))),
        ("publisher_id", Arc::new(StringArray::from(vec!["p", "p"]))),
        ("advertiser_id", Arc::new(Int64Array::from(vec![1, 2]))),
    ]);
    let out = parse_arrow_ipc(ipc(&[batch]), &opts());
    assert_eq!(out.rejected, 2);
    assert_eq!(out.errors[0].field.as_deref(), Some("advertiser_id"));
    assert_eq!(out.errors[0].reason, "Arrow type Int64 is not accepted for this field");
}

#[test]
fn unknown_column_rejects_every_row_with_capped_errors() {
    let events: Vec<Event> = (0..10).map(|i| event(EventType::Impression, &format!("e{i}"))).collect();
    let b = EventBatch::from_events(&events);
    let body = ipc(&[b.record_batch().clone()]); // carries the seal-time columns too
    let o = ParseOptions { max_errors: 3, ..opts() };
    let out = parse_arrow_ipc(body.as_slice(), &o);
    assert_eq!((out.accepted(), out.rejected), (0, 10));
    let unknown = |line| (line, Some("attributed"), "unknown field");
    assert_eq!(errs(&out), vec![unknown(1), unknown(2), unknown(3)]);
}

#[test]
fn truncated_stream_keeps_complete_batches() {
    let events: Vec<Event> = (0..8).map(|i| event(EventType::Impression, &format!("e{i}"))).collect();
    let body = ipc(&[input_batch(&events[..5]), input_batch(&events[5..])]);
    let cut = &body[..body.len() - 40];
    let out = parse_arrow_ipc(cut, &opts());
    assert_eq!(out.accepted(), 5);
    assert_eq!(out.rejected, 1);
    assert_eq!(out.errors[0].line, 6);
    assert!(out.errors[0].reason.starts_with("malformed Arrow IPC stream"), "{}", out.errors[0].reason);

    let out = parse_arrow_ipc(b"not arrow", &opts());
    assert_eq!((out.accepted(), out.rejected), (0, 1));
    let out = parse_arrow_ipc(Vec::<u8>::new(), &opts());
    assert_eq!((out.accepted(), out.rejected), (0, 1), "an empty body has no schema");
}

#[test]
fn a_second_stream_after_the_end_marker_is_reported_not_dropped() {
    let events: Vec<Event> = (0..5).map(|i| event(EventType::Impression, &format!("e{i}"))).collect();
    let mut body = ipc(&[input_batch(&events[..3])]);
    body.extend(ipc(&[input_batch(&events[3..])]));
    let out = parse_arrow_ipc(body, &opts());
    assert_eq!((out.accepted(), out.rejected), (3, 1));
    assert_eq!(out.errors[0].line, 4);
    assert!(out.errors[0].reason.starts_with("malformed Arrow IPC stream"), "{}", out.errors[0].reason);
}

#[test]
fn accepted_columns_point_into_the_body() {
    let events: Vec<Event> = (0..4).map(|i| event(EventType::Impression, &format!("e{i}"))).collect();
    let body = ipc(&[input_batch(&events)]);
    let range = body.as_ptr_range();
    let out = parse_arrow_ipc(body, &opts());
    assert_eq!(out.accepted(), 4);
    let ids = out.batch().str_column(ColumnId::EventId).values().as_ptr();
    assert!(range.contains(&ids), "event_id was copied out of the body");
}

#[test]
fn batches_are_checked_alike_on_the_pool_and_on_the_caller() {
    let mut events: Vec<Event> = (0..40).map(|i| event(EventType::ALL[i % 3], &format!("e{i}"))).collect();
    events[5].device = Some("phone".into());
    events[33].cost_micros = -1;
    let batches: Vec<RecordBatch> = events.chunks(7).map(input_batch).collect();
    let on_pool = parse_arrow_ipc(ipc(&batches), &opts());
    let on_caller = parse_arrow_ipc(ipc(&batches), &ParseOptions { parallel: false, ..opts() });
    assert_eq!((on_pool.accepted(), on_pool.rejected), (38, 2));
    assert_eq!(errs(&on_caller), errs(&on_pool));
    assert_eq!(on_caller.batch().events(), on_pool.batch().events());
}

#[test]
fn same_verdicts_as_ndjson() {
    // Late, future, negative cost, over-long value, bad device: the JSON and
    // Arrow readers must agree line by line.
    let mut events: Vec<Event> = (0..8).map(|i| event(EventType::ALL[i % 3], &format!("e{i}"))).collect();
    events[1].ts = NOW - 30 * HOUR;
    events[2].ts = NOW + HOUR;
    events[3].device = Some("phone".into());
    events[4].region = Some("x".repeat(2000));
    events[6].cost_micros = -5;
    let o = ParseOptions { min_ts_ms: Some(NOW - 24 * HOUR), ..opts() };
    let mut ndjson = Vec::new();
    for e in &events {
        let mut m = serde_json::json!({
            "event_id": e.event_id, "type": e.kind.as_str(), "ts": e.ts, "publisher_id": e.publisher_id,
            "advertiser_id": e.advertiser_id, "campaign_id": e.campaign_id, "ad_id": e.ad_id,
            "impression_id": e.impression_id, "click_id": e.click_id, "country": e.country,
            "device": e.device, "region": e.region, "cost_micros": e.cost_micros,
        });
        if e.cost_micros < 0 {
            m["cost_micros"] = serde_json::json!(e.cost_micros);
        }
        ndjson.extend_from_slice(m.to_string().as_bytes());
        ndjson.push(b'\n');
    }
    let from_json = parse_ndjson(&ndjson, &o);
    let from_arrow = parse_arrow_ipc(ipc(&[input_batch(&events)]), &o);
    assert_eq!(errs(&from_json), errs(&from_arrow));
    assert_eq!(from_json.rejected, 5);
    assert_eq!((from_json.rejected_late, from_json.rejected_future), (1, 1));
    assert_eq!((from_arrow.rejected_late, from_arrow.rejected_future), (1, 1));
    assert_eq!(from_json.batch().events(), from_arrow.batch().events());
}

proptest::proptest! {
    /// `all_plain` holds for exactly the columns whose every cell
    /// `str_cell` accepts unchanged for its row's event type.
    #[test]
    fn plain_columns_pass_the_per_value_checks(
        cells in proptest::collection::vec(
            (
                proptest::option::weighted(0.8, proptest::prop_oneof![
                    proptest::strategy::Just(String::new()),
                    "[a-z0-9-]{1,12}",
                    "[A-Z]{2}",
                    "[A-Za-z]{1,3}",
                    proptest::sample::select(vec!["mobile", "ctv", "other", "Mobile", "phone"]).prop_map(String::from),
                    proptest::strategy::Just("x".repeat(validate::MAX_EVENT_ID_BYTES + 1)),
                ]),
                proptest::sample::select(EventType::ALL.to_vec()),
            ),
            1..20,
        ),
        column in proptest::sample::select(vec![
            ColumnId::EventId, ColumnId::PublisherId, ColumnId::AdGroupId, ColumnId::ImpressionId,
            ColumnId::ClickId, ColumnId::UserKey, ColumnId::Country, ColumnId::Device,
        ]),
    ) {
        let a: StringArray = cells.iter().map(|(v, _)| v.as_deref()).collect();
        let kinds: Vec<u8> = cells.iter().map(|(_, k)| *k as u8).collect();
        let col = Col::Str(a.clone());
        let each_passes = cells.iter().enumerate().all(|(row, (v, kind))| {
            matches!(str_cell(&col, column, *kind, row), Ok(found) if found == v.as_deref())
        });
        proptest::prop_assert_eq!(all_plain(&a, column, &kinds), each_passes, "{:?} {:?}", column, cells);
    }

    /// Whole `type`, `ts` and `cost_micros` columns give the verdicts of a
    /// model of the rules, taken whole or cell by cell: a type code of an
    /// event type (the endpoint's, on a typed endpoint), a time, and a
    /// cost that is not negative (0 when null).
    #[test]
    fn integer_columns_are_checked_as_the_rules_say(
        rows in proptest::collection::vec(
            (
                proptest::option::weighted(0.95, proptest::prop_oneof![8 => 0u8..3, 1 => 3u8..9]),
                proptest::option::weighted(0.95, -2 * HOUR..0),
                proptest::option::weighted(0.9, proptest::prop_oneof![8 => 0i64..10_000, 1 => -5i64..0]),
            ),
            1..40,
        ),
        typed in proptest::option::weighted(0.3, proptest::sample::select(EventType::ALL.to_vec())),
    ) {
        let kind_of = |code: Option<u8>| match (code, typed) {
            (None, Some(t)) => Some(t),
            (Some(c), _) => EventType::from_code(c).filter(|k| typed.is_none_or(|t| t == *k)),
            (None, None) => None,
        };
        // Each row's other fields are those of its type (of an impression
        // when it has none).
        let events: Vec<Event> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| event(kind_of(r.0).unwrap_or(EventType::Impression), &format!("e{i}")))
            .collect();
        let base = input_batch(&events);
        let mut cols = base.columns().to_vec();
        cols[ColumnId::Type.index()] = Arc::new(rows.iter().map(|r| r.0).collect::<UInt8Array>());
        cols[ColumnId::Ts.index()] = Arc::new(rows.iter().map(|r| r.1.map(|d| NOW + d)).collect::<Int64Array>());
        cols[ColumnId::CostMicros.index()] = Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>());
        let schema = Arc::new(Schema::new(
            base.schema().fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
        ));
        let batch = RecordBatch::try_new(schema, cols).expect("batch");
        let o = ParseOptions { expected_type: typed, max_errors: 1000, ..opts() };
        let out = parse_arrow_ipc(ipc(&[batch]), &o);

        let mut expected_errors = Vec::new();
        let mut expected_costs = Vec::new();
        for (row, (code, ts, cost)) in rows.iter().enumerate() {
            let fault = if kind_of(*code).is_none() {
                Some("type")
            } else if ts.is_none() {
                Some("ts")
            } else if cost.is_some_and(|c| c < 0) {
                Some("cost_micros")
            } else {
                None
            };
            match fault {
                Some(field) => expected_errors.push((row + 1, Some(field))),
                None => expected_costs.push(cost.unwrap_or(0)),
            }
        }
        let found: Vec<(usize, Option<&str>)> = out.errors.iter().map(|e| (e.line, e.field.as_deref())).collect();
        proptest::prop_assert_eq!(found, expected_errors);
        let costs: Vec<i64> = out.batch().events().iter().map(|e| e.cost_micros).collect();
        proptest::prop_assert_eq!(costs, expected_costs);
    }
}

/// Found by tests/fuzz.rs: a batch may declare any number of rows when its
/// columns hold no buffers (type Null), and checking 10^9 rows took tens of
/// gigabytes. A batch declaring more rows than its body has bytes for (4 a
/// row: no valid event takes less, `ts` alone takes 8) is refused.
#[test]
fn a_batch_declaring_more_rows_than_its_bytes_is_refused() {
    let huge = batch_of(vec![("event_id", Arc::new(arrow_array::NullArray::new(1_000_000_000)) as ArrayRef)]);
    let body = ipc(&[huge]);
    assert!(body.len() < 10_000, "a tiny body: {} bytes", body.len());
    let out = parse_arrow_ipc(body, &opts());
    assert_eq!(out.accepted(), 0);
    let reason = out.errors.first().map(|e| e.reason.as_str()).unwrap_or_default();
    assert!(reason.contains("declares 1000000000 rows"), "{reason}");
}
