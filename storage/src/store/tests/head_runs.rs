//! Head runs: dimension codes built once per run, counted, released
//! with their chunks; a run read as one batch with one dictionary.

use super::*;

#[test]
fn head_dimension_codes_are_built_once_counted_and_released_with_their_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let events: Vec<Event> = (0..300).map(|k| event(k, k as i64 * 1000, ["a1", "a2"][(k % 2) as usize])).collect();
    store.append(&EventBatch::from_events(&events)).expect("append");
    assert_eq!(store.head_codes_bytes(), 0, "nothing is built before a scan reads it");

    let req = ScanRequest {
        time_range: TimeRange::ALL,
        filters: vec![DimFilter::eq(ColumnId::CampaignId, "c1")],
        columns: vec![ColumnId::Device, ColumnId::CostMicros],
    };
    // As queries read the head: by run.
    let scan = || -> Vec<ScanBatch> {
        let snapshot = store.snapshot();
        let plan = snapshot.plan_scan(&req).expect("plan");
        plan.head_runs()
            .iter()
            .filter_map(|run| {
                let chunks: Vec<&HeadChunk> = run.iter().map(|h| &h.chunk).collect();
                crate::scan::scan_head_run(&chunks, &req).expect("scan")
            })
            .collect()
    };
    let mut devices = Vec::new();
    for b in scan() {
        let ColumnData::Dict { codes, dict } = &b.columns[0] else {
            panic!("device from the head: {:?}", b.columns[0])
        };
        let ColumnData::I64(cost) = &b.columns[1] else { panic!("cost_micros must be I64") };
        devices.extend(codes.iter().zip(cost).map(|(&c, &n)| (n, dict.value(c).map(str::to_string))));
    }
    devices.sort();
    let want: Vec<(i64, Option<String>)> =
        events.iter().filter(|e| e.campaign_id == "c1").map(|e| (e.cost_micros, e.device.clone())).collect();
    assert_eq!(devices, want);
    let built = store.head_codes_bytes();
    // device and campaign_id: 4 bytes a row each, and their dictionaries.
    assert!(built >= 300 * 8, "{built} bytes for 300 rows of two columns");
    scan();
    assert_eq!(store.head_codes_bytes(), built, "a second scan reuses the codes");

    store.seal_all().expect("seal");
    assert_eq!(store.head_codes_bytes(), 0, "sealed chunks release their codes");
}

/// A run read as one batch gives the rows its chunks give one by one,
/// also when later chunks bring values its dictionary lacked (sorting
/// before and after the ones it has), and NULLs.
#[test]
fn head_runs_read_as_one_batch_with_one_dictionary_across_new_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open(dir.path(), StoreConfig { shards: 1, ..small_config() }, SealPipeline::new()).expect("open");
    let mut all = Vec::new();
    let req = ScanRequest {
        time_range: TimeRange::ALL,
        filters: vec![DimFilter { column: ColumnId::AdvertiserId, values: vec!["a0".into()], negated: true }],
        columns: vec![ColumnId::CostMicros, ColumnId::AdvertiserId, ColumnId::Device, ColumnId::CampaignId],
    };
    for (step, advertisers) in [["a5", "a6"], ["a0", "a5"], ["a9", "a1"]].iter().enumerate() {
        let events: Vec<Event> = (0..40u64)
            .map(|k| {
                let n = step as u64 * 100 + k;
                Event {
                    campaign_id: format!("c{}", n % 7),
                    ..event(n, 1_000 + n as i64, advertisers[(k % 2) as usize])
                }
            })
            .collect();
        store.append(&EventBatch::from_events(&events)).expect("append");
        all.extend(events);
        let snapshot = store.snapshot();
        let plan = snapshot.plan_scan(&req).expect("plan");
        let runs = plan.head_runs();
        assert_eq!(runs.len(), 1, "one partition, far below a run's rows");
        let chunks: Vec<&HeadChunk> = runs[0].iter().map(|h| &h.chunk).collect();
        assert_eq!(chunks.len(), step + 1, "one chunk a record");
        let batch = crate::scan::scan_head_run(&chunks, &req).expect("scan").expect("rows");
        let value = |c: &ColumnData, i: usize| match c {
            ColumnData::Dict { codes, dict } => dict.value(codes[i]).map(str::to_string),
            other => panic!("a dimension read from the head as {other:?}"),
        };
        let ColumnData::I64(cost) = &batch.columns[0] else { panic!("cost_micros must be I64") };
        type Row = (i64, Option<String>, Option<String>, Option<String>);
        let mut got: Vec<Row> = (0..batch.rows)
            .map(|i| (cost[i], value(&batch.columns[1], i), value(&batch.columns[2], i), value(&batch.columns[3], i)))
            .collect();
        got.sort();
        let want: Vec<Row> = all
            .iter()
            .filter(|e| e.advertiser_id != "a0")
            .map(|e| (e.cost_micros, Some(e.advertiser_id.clone()), e.device.clone(), Some(e.campaign_id.clone())))
            .collect();
        assert_eq!(got, want, "step {step}");
        let one_by_one: usize =
            chunks.iter().filter_map(|c| crate::scan::scan_head_chunk(c, &req).expect("scan")).map(|b| b.rows).sum();
        assert_eq!(one_by_one, batch.rows, "step {step}");
    }
}
