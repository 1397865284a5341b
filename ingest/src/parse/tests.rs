use adstore_storage::{Event, EventType, InvalidReason};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::rfc3339::tests::format_ms;
use super::*;

/// 2026-11-22T10:00:00Z
const NOW: i64 = 1_795_341_600_000;
const HOUR: i64 = 3_600_000;

fn opts() -> ParseOptions {
    ParseOptions { now_ms: NOW, ..ParseOptions::default() }
}

fn ids(out: &ParseOutcome) -> Vec<String> {
    out.batch().events().into_iter().map(|e| e.event_id).collect()
}

/// (line, field, reason) of every listed error.
fn errs(out: &ParseOutcome) -> Vec<(usize, Option<&str>, &str)> {
    out.errors.iter().map(|e| (e.line, e.field.as_deref(), e.reason.as_str())).collect()
}

fn base(kind: EventType, id: &str) -> Event {
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
        ..Event::default()
    }
}

/// The JSON object a producer would send for `e`.
fn to_json(e: &Event, rfc3339_ts: bool, explicit_nulls: bool) -> Value {
    let mut m = Map::new();
    m.insert("event_id".into(), e.event_id.clone().into());
    m.insert("type".into(), e.kind.as_str().into());
    m.insert("ts".into(), if rfc3339_ts { format_ms(e.ts).into() } else { e.ts.into() });
    m.insert("publisher_id".into(), e.publisher_id.clone().into());
    m.insert("advertiser_id".into(), e.advertiser_id.clone().into());
    m.insert("campaign_id".into(), e.campaign_id.clone().into());
    m.insert("ad_id".into(), e.ad_id.clone().into());
    let optional = [
        ("ad_group_id", &e.ad_group_id),
        ("impression_id", &e.impression_id),
        ("click_id", &e.click_id),
        ("user_key", &e.user_key),
        ("device", &e.device),
        ("os", &e.os),
        ("country", &e.country),
        ("region", &e.region),
        ("placement", &e.placement),
        ("ip_hash", &e.ip_hash),
        ("ua_hash", &e.ua_hash),
    ];
    for (name, value) in optional {
        match value {
            Some(v) => {
                m.insert(name.into(), v.clone().into());
            }
            None if explicit_nulls => {
                m.insert(name.into(), Value::Null);
            }
            None => {}
        }
    }
    for (name, v) in [("cost_micros", e.cost_micros), ("value_micros", e.value_micros)] {
        if v != 0 {
            m.insert(name.into(), v.into());
        } else if explicit_nulls {
            m.insert(name.into(), Value::Null);
        }
    }
    Value::Object(m)
}

fn full_event() -> Event {
    Event {
        ad_group_id: Some("ag-1".into()),
        impression_id: Some("imp-9".into()),
        click_id: Some("clk-9".into()),
        user_key: Some("u-42".into()),
        device: Some("mobile".into()),
        os: Some("ios".into()),
        country: Some("DE".into()),
        region: Some("BE".into()),
        placement: Some("feed_top".into()),
        cost_micros: 1_500,
        value_micros: 25_000_000,
        ip_hash: Some("iph".into()),
        ua_hash: Some("uah".into()),
        ..base(EventType::Conversion, "full")
    }
}

#[test]
fn every_field_round_trips() {
    let e = full_event();
    for rfc in [false, true] {
        let line = to_json(&e, rfc, false).to_string();
        let out = parse_ndjson(line.as_bytes(), &opts());
        assert_eq!(errs(&out), []);
        assert_eq!(out.batch().events(), std::slice::from_ref(&e));
        assert_eq!(out.batch().event(0).invalid_reason, InvalidReason::Valid);
    }
}

#[test]
fn only_required_fields() {
    let body = concat!(
        r#"{"event_id":"i","type":"impression","ts":1795338000000,"publisher_id":"p","advertiser_id":"a","campaign_id":"c","ad_id":"d","impression_id":"imp"}"#,
        "\n",
        r#"{"event_id":"c","type":"click","ts":1795338000000,"publisher_id":"p","advertiser_id":"a","campaign_id":"c","ad_id":"d","click_id":"clk"}"#,
        "\n",
        r#"{"event_id":"v","type":"conversion","ts":1795338000000,"publisher_id":"p","advertiser_id":"a","campaign_id":"c","ad_id":"d"}"#,
    );
    let out = parse_ndjson(body.as_bytes(), &opts());
    assert_eq!(errs(&out), []);
    let mk = |id: &str, kind| Event {
        event_id: id.into(),
        kind,
        ts: 1_795_338_000_000,
        publisher_id: "p".into(),
        advertiser_id: "a".into(),
        campaign_id: "c".into(),
        ad_id: "d".into(),
        ..Event::default()
    };
    let want = vec![
        Event { impression_id: Some("imp".into()), ..mk("i", EventType::Impression) },
        Event { click_id: Some("clk".into()), ..mk("c", EventType::Click) },
        mk("v", EventType::Conversion),
    ];
    assert_eq!(out.batch().events(), want);
}

#[test]
fn explicit_nulls_are_absent_values() {
    let e = base(EventType::Conversion, "n");
    let v = to_json(&e, true, true);
    assert_eq!(v["cost_micros"], Value::Null, "the line really carries nulls");
    let out = parse_ndjson(v.to_string().as_bytes(), &opts());
    assert_eq!(errs(&out), []);
    assert_eq!(out.batch().events(), [e]);
}

#[test]
fn empty_optional_strings_are_stored_as_null() {
    let mut v = to_json(&base(EventType::Conversion, "e"), true, false);
    v["click_id"] = "".into();
    v["os"] = "".into();
    let out = parse_ndjson(v.to_string().as_bytes(), &opts());
    assert_eq!(out.batch().events(), [base(EventType::Conversion, "e")]);
}

#[test]
fn unicode_and_escaped_strings() {
    let body = concat!(
        r#"{"event_id":"a\"b\\u00e9","type":"click","ts":"2026-11-22T09:00:00.250+00:00","publisher_id":"p\u00e9","#,
        r#""advertiser_id":"München","campaign_id":"🚀 launch","ad_id":"tab\tnew\nline","click_id":"\ud83d\ude80","#,
        r#""region":"\/slash"}"#
    );
    let out = parse_ndjson(body.as_bytes(), &opts());
    assert_eq!(errs(&out), []);
    let e = out.batch().event(0);
    assert_eq!(e.event_id, "a\"b\\u00e9");
    assert_eq!(e.publisher_id, "pé");
    assert_eq!(e.advertiser_id, "München");
    assert_eq!(e.campaign_id, "🚀 launch");
    assert_eq!(e.ad_id, "tab\tnew\nline");
    assert_eq!(e.click_id.as_deref(), Some("🚀"));
    assert_eq!(e.region.as_deref(), Some("/slash"));
    assert_eq!(e.ts, NOW - HOUR + 250);
}

#[test]
fn rfc3339_and_epoch_ts_agree() {
    let mk = |ts: &str| {
        format!(
            r#"{{"event_id":"x","type":"conversion","ts":{ts},"publisher_id":"p","advertiser_id":"a","campaign_id":"c","ad_id":"d"}}"#
        )
    };
    let body = [
        mk("1795338000123"),
        mk(r#""2026-11-22T09:00:00.123Z""#),
        mk(r#""2026-11-22T10:30:00.123456+01:30""#),
        mk(r#""2026-11-22T04:00:00.123-05:00""#),
    ]
    .join("\n");
    let out = parse_ndjson(body.as_bytes(), &opts());
    assert_eq!(errs(&out), []);
    assert_eq!(out.batch().ts(), [1_795_338_000_123; 4]);
}

#[test]
fn bad_lines_are_rejected_and_good_lines_land_in_order() {
    let good = |id: &str| to_json(&base(EventType::Click, id), true, false);
    let with = |id: &str, field: &str, v: Value| {
        let mut j = good(id);
        j[field] = v;
        j.to_string()
    };
    let without = |id: &str, field: &str| {
        let mut j = good(id);
        j.as_object_mut().expect("object").remove(field);
        j.to_string()
    };
    let lines = [
        good("g1").to_string(),                                     // 1
        r#"{"event_id":"m1","type":"click""#.to_string(),           // 2 malformed (EOF)
        without("m2", "ad_id"),                                     // 3
        with("u1", "campaign", "x".into()),                         // 4
        with("w1", "publisher_id", 7.into()),                       // 5
        with("n1", "cost_micros", (-5).into()),                     // 6
        with("f1", "cost_micros", 1.5.into()),                      // 7
        with("s1", "value_micros", "12".into()),                    // 8
        with(&"x".repeat(129), "event_id", "x".repeat(129).into()), // 9
        with("c1", "country", "de".into()),                         // 10
        with("c2", "country", "DEU".into()),                        // 11
        with("d1", "device", "phone".into()),                       // 12
        with("t1", "type", "view".into()),                          // 13
        with("fu", "ts", (NOW + HOUR).into()),                      // 14
        with("la", "ts", (NOW - 48 * HOUR).into()),                 // 15
        good("g2").to_string(),                                     // 16
        with("ts1", "ts", "2026-11-22 10:00".into()),               // 17
        with("ts2", "ts", 1.7e12.into()),                           // 18
        without("ci", "click_id"),                                  // 19
        with("cn", "click_id", Value::Null),                        // 20
        with("e1", "publisher_id", "".into()),                      // 21
        with("l1", "placement", "p".repeat(1025).into()),           // 22
        r#"{"event_id":"dup","event_id":"dup"}"#.to_string(),       // 23
        "[1,2]".to_string(),                                        // 24
        with("ty", "type", 1.into()),                               // 25
        with("at", "attributed", true.into()),                      // 26
        with("ok", "placement", "p".repeat(1024).into()),           // 27 (good: exactly at the limit)
        with(&"y".repeat(128), "event_id", "y".repeat(128).into()), // 28 (good)
    ];
    let body = lines.join("\n");
    let o = ParseOptions { min_ts_ms: Some(NOW - 24 * HOUR), ..opts() };
    let out = parse_ndjson(body.as_bytes(), &o);

    assert_eq!(ids(&out), ["g1".to_string(), "g2".into(), "ok".into(), "y".repeat(128)]);
    assert_eq!(out.rejected, lines.len() - 4);
    assert_eq!((out.rejected_late, out.rejected_future), (1, 1));
    let got = errs(&out);
    let want: Vec<(usize, Option<&str>, &str)> = vec![
        (2, None, "malformed JSON: EOF while parsing an object at column 31"),
        (3, Some("ad_id"), "missing required field"),
        (4, Some("campaign"), "unknown field"),
        (5, Some("publisher_id"), "expected a string, found an integer"),
        (6, Some("cost_micros"), "expected an integer >= 0, found -5"),
        (7, Some("cost_micros"), "expected an integer >= 0, found a number with a fraction or exponent"),
        (8, Some("value_micros"), "expected an integer >= 0, found a string"),
        (9, Some("event_id"), "value is 129 bytes, over the limit of 128 bytes"),
        (10, Some("country"), r#"expected an ISO 3166 alpha-2 code (2 uppercase ASCII letters), found "de""#),
        (11, Some("country"), r#"expected an ISO 3166 alpha-2 code (2 uppercase ASCII letters), found "DEU""#),
        (12, Some("device"), r#"expected one of mobile, desktop, tablet, ctv, other, found "phone""#),
        (13, Some("type"), r#"expected one of impression, click, conversion, found "view""#),
        (
            14,
            Some("ts"),
            "future: ts 2026-11-22T11:00:00Z is 3600 s ahead of the server clock (2026-11-22T10:00:00Z), \
             more than ingest.max_future_skew_ms (300000 ms)",
        ),
        (
            15,
            Some("ts"),
            "late: ts 2026-11-20T10:00:00Z is before 2026-11-21T10:00:00Z, the oldest time accepted \
             (the newest event time less ingest.allowed_lateness_ms); load history with mode=backfill",
        ),
        (
            17,
            Some("ts"),
            "invalid RFC 3339 timestamp: expected YYYY-MM-DDTHH:MM:SS[.fraction] followed by Z or an offset +HH:MM / -HH:MM",
        ),
        (
            18,
            Some("ts"),
            "expected an RFC 3339 timestamp string or integer epoch milliseconds, found a number with a fraction or exponent",
        ),
        (19, Some("click_id"), "missing required field"),
        (20, Some("click_id"), "required field must not be null"),
        (21, Some("publisher_id"), "must not be empty"),
        (22, Some("placement"), "value is 1025 bytes, over the limit of 1024 bytes"),
        (23, Some("event_id"), "duplicate field"),
        (
            24,
            None,
            "malformed JSON: invalid type: sequence, expected a JSON object with the fields of an event at column 1",
        ),
        (25, Some("type"), "expected a string, found an integer"),
        (26, Some("attributed"), "unknown field"),
    ];
    assert_eq!(got, want);
}

/// Issue 25: a whole number past 64 bits is named as such, not as a
/// fraction (serde reads it as a float).
#[test]
fn numbers_past_64_bits_are_named() {
    let with_raw = |field: &str, number: &str| {
        let mut event = to_json(&base(EventType::Impression, "h"), false, false);
        event.as_object_mut().expect("object").remove(field);
        let text = event.to_string();
        format!("{},\"{field}\":{number}}}", &text[..text.len() - 1])
    };
    let cases = [
        ("ts", "18446744073709551616", "found a number beyond the 64-bit integer range"),
        ("ts", "9223372036854775808", "found a number beyond the 64-bit integer range"),
        ("ts", "-9223372036854775809", "found a number beyond the 64-bit integer range"),
        ("ts", "1e30", "found a number beyond the 64-bit integer range"),
        ("ts", "1.5", "found a number with a fraction or exponent"),
        ("cost_micros", "99999999999999999999999", "found a number beyond the 64-bit integer range"),
    ];
    for (field, number, want) in cases {
        let line = with_raw(field, number);
        let out = parse_ndjson(line.as_bytes(), &opts());
        let reason = out.errors.first().map(|e| (e.field.clone(), e.reason.clone()));
        assert!(
            reason.as_ref().is_some_and(|(f, r)| f.as_deref() == Some(field) && r.ends_with(want)),
            "{field}: {number}: {reason:?}"
        );
    }
}

#[test]
fn malformed_lines_do_not_stop_the_body() {
    let good = to_json(&base(EventType::Impression, "g"), false, false).to_string();
    let body = format!("{good}\n{{\"event_id\": \"x\",, }}\n\u{1}\n{{}} {{}}\n{good}");
    let out = parse_ndjson(body.as_bytes(), &opts());
    assert_eq!(out.accepted(), 2);
    assert_eq!(out.rejected, 3);
    let got = errs(&out);
    assert_eq!(got[0], (2, None, "malformed JSON: key must be a string at column 18"));
    assert_eq!(got[1].0, 3);
    assert_eq!(got[2], (4, None, "malformed JSON: trailing characters at column 4"));
}

#[test]
fn invalid_utf8_costs_only_its_line() {
    let good = |id: &str| to_json(&base(EventType::Impression, id), false, false).to_string();
    let mut body = format!("{}\n", good("a")).into_bytes();
    body.extend_from_slice(b"{\"event_id\":\"\xff\xfe\"}\n");
    body.extend_from_slice(format!("{}\n{}", good("b"), good("c")).as_bytes());
    for chunk in [1, 2, usize::MAX] {
        let out = parse_items(&body, split::NdjsonItems::new(&body), &opts(), chunk);
        assert_eq!(ids(&out), ["a", "b", "c"]);
        assert_eq!(out.rejected, 1);
        assert_eq!(out.errors[0].line, 2);
        assert!(out.errors[0].reason.contains("invalid unicode code point"), "{:?}", out.errors);
    }
}

#[test]
fn typed_endpoint_implies_and_enforces_the_type() {
    let mut implied = to_json(&base(EventType::Click, "implied"), false, false);
    implied.as_object_mut().expect("object").remove("type");
    let mut null_type = to_json(&base(EventType::Click, "null"), false, false);
    null_type["type"] = Value::Null;
    let same = to_json(&base(EventType::Click, "same"), false, false);
    let other = to_json(&base(EventType::Impression, "other"), false, false);
    let body = [implied, null_type, same, other].map(|v| v.to_string()).join("\n");

    let o = ParseOptions { expected_type: Some(EventType::Click), ..opts() };
    let out = parse_ndjson(body.as_bytes(), &o);
    assert_eq!(ids(&out), ["implied", "null", "same"]);
    assert!(out.batch().events().iter().all(|e| e.kind == EventType::Click));
    assert_eq!(errs(&out), [(4, Some("type"), "type impression does not match the endpoint's type click")]);

    // Without a typed endpoint, a missing or null type is an error.
    let out = parse_ndjson(body.as_bytes(), &opts());
    assert_eq!(ids(&out), ["same", "other"]);
    assert_eq!(
        errs(&out),
        [(1, Some("type"), "missing required field"), (2, Some("type"), "required field must not be null")]
    );
}

#[test]
fn no_lateness_bound_accepts_old_events() {
    let mut e = base(EventType::Impression, "old");
    e.ts = NOW - 400 * 24 * HOUR;
    let line = to_json(&e, true, false).to_string();
    assert_eq!(parse_ndjson(line.as_bytes(), &opts()).accepted(), 1);
    let bounded = ParseOptions { min_ts_ms: Some(NOW - 24 * HOUR), ..opts() };
    let out = parse_ndjson(line.as_bytes(), &bounded);
    assert_eq!((out.accepted(), out.rejected_late), (0, 1));

    // At the skew limit exactly is still accepted; one ms more is not.
    let mut e = base(EventType::Impression, "edge");
    e.ts = NOW + 300_000;
    assert_eq!(parse_ndjson(to_json(&e, false, false).to_string().as_bytes(), &opts()).accepted(), 1);
    e.ts += 1;
    assert_eq!(parse_ndjson(to_json(&e, false, false).to_string().as_bytes(), &opts()).rejected_future, 1);
}

#[test]
fn blank_lines_crlf_and_bom() {
    let a = to_json(&base(EventType::Impression, "a"), false, false).to_string();
    let b = to_json(&base(EventType::Impression, "b"), true, false).to_string();
    let body = format!("\u{feff}{a}\r\n\r\n   \r\n{{\"x\":1}}\r\n{b}\r\n\r\n");
    let out = parse_ndjson(body.as_bytes(), &opts());
    assert_eq!(ids(&out), ["a", "b"]);
    assert_eq!(out.rejected, 1);
    assert_eq!(errs(&out), [(4, Some("x"), "unknown field")]);

    let out = parse_ndjson(b"", &opts());
    assert_eq!((out.accepted(), out.rejected, out.errors.len()), (0, 0, 0));
}

#[test]
fn long_lines_are_rejected_unparsed() {
    let line = to_json(&base(EventType::Impression, "a"), false, false).to_string();
    let o = ParseOptions { max_line_bytes: line.len() - 1, ..opts() };
    let body = format!("{line}\n{{}}");
    let out = parse_ndjson(body.as_bytes(), &o);
    assert_eq!(out.accepted(), 0);
    let reason = format!("line is {} bytes, over the limit of {} bytes", line.len(), line.len() - 1);
    assert_eq!(errs(&out)[0], (1, None, reason.as_str()));
    assert_eq!(errs(&out)[1], (2, Some("type"), "missing required field"));
}

#[test]
fn errors_are_capped_but_counts_stay_exact() {
    let good = to_json(&base(EventType::Impression, "g"), false, false).to_string();
    let mut lines = Vec::new();
    for i in 0..10_000 {
        lines.push(if i % 3 == 0 { good.clone() } else { "{".into() });
    }
    let body = lines.join("\n");
    let o = ParseOptions { max_errors: 100, ..opts() };
    for chunk in [1, 7, 1000, usize::MAX] {
        let out = parse_items(body.as_bytes(), split::NdjsonItems::new(body.as_bytes()), &o, chunk);
        assert_eq!(out.accepted(), 3334);
        assert_eq!(out.rejected, 6666);
        assert_eq!(out.errors.len(), 100);
        let want: Vec<usize> = (1..=10_000).filter(|l| (l - 1) % 3 != 0).take(100).collect();
        assert_eq!(out.errors.iter().map(|e| e.line).collect::<Vec<_>>(), want);
    }
    let out = parse_ndjson(body.as_bytes(), &ParseOptions { max_errors: 0, ..opts() });
    assert_eq!((out.rejected, out.errors.len()), (6666, 0));
}

#[test]
fn parallel_parse_matches_sequential() {
    let mut lines = Vec::new();
    for i in 0..20_000 {
        let kind = EventType::ALL[i % 3];
        let mut e = base(kind, &format!("e{i}"));
        e.ts = NOW - i as i64 * 1000;
        e.cost_micros = i as i64;
        lines.push(if i % 97 == 0 { "not json".to_string() } else { to_json(&e, i % 2 == 0, false).to_string() });
    }
    let body = lines.join("\n");
    let items = || split::NdjsonItems::new(body.as_bytes());
    let seq = parse_items(body.as_bytes(), items(), &opts(), usize::MAX);
    let par = parse_ndjson(body.as_bytes(), &opts());
    let tiny = parse_items(body.as_bytes(), items(), &opts(), 3);
    let on_caller = ParseOptions { parallel: false, ..opts() };
    let tiny_on_caller = parse_items(body.as_bytes(), items(), &on_caller, 3);
    assert_eq!(seq.accepted(), 20_000 - 207);
    assert!(tiny_on_caller.batches.len() > 1, "chunks stay apart");
    for other in [&par, &tiny, &tiny_on_caller] {
        assert_eq!(other.batch().events(), seq.batch().events());
        assert_eq!(other.errors, seq.errors);
        assert_eq!(other.rejected, seq.rejected);
    }
}

#[test]
fn json_array_bodies() {
    let g1 = to_json(&base(EventType::Impression, "g1"), false, false);
    let g2 = to_json(&base(EventType::Click, "g2"), true, false);
    let mut bad = to_json(&base(EventType::Click, "bad"), false, false);
    bad["device"] = "toaster".into();
    let body = format!(
        "[\n  {g1},\n  {bad},\n  {{\"event_id\": }},\n  {{\n    \"event_id\": \"multi\"\n  }},\n  {g2}\n]\n",
        g1 = serde_json::to_string_pretty(&g1).expect("json").replace('\n', " "),
    );
    let out = parse_json_array(body.as_bytes(), &opts());
    assert_eq!(ids(&out), ["g1", "g2"]);
    assert_eq!(out.rejected, 3);
    assert_eq!(
        errs(&out),
        [
            (3, Some("device"), r#"expected one of mobile, desktop, tablet, ctv, other, found "toaster""#),
            (4, None, "malformed JSON: expected value at column 16"),
            (5, Some("type"), "missing required field"),
        ]
    );

    let out = parse_json_array(b"[]", &opts());
    assert_eq!((out.accepted(), out.rejected), (0, 0));
    let out = parse_json_array(b"  ", &opts());
    assert_eq!((out.accepted(), out.rejected), (0, 0));

    let out = parse_json_array(br#"{"event_id":"x"}"#, &opts());
    assert_eq!(out.rejected, 1);
    assert_eq!(errs(&out), [(1, None, "malformed JSON: expected a JSON array of event objects at line 1 column 1")]);

    // A truncated body keeps the complete elements before the cut.
    let body = format!("[{g1},\n{g2},\n{{\"event_id\":\"cut", g1 = g1, g2 = g2);
    let out = parse_json_array(body.as_bytes(), &opts());
    assert_eq!(ids(&out), ["g1", "g2"]);
    assert_eq!(out.rejected, 2);
    assert_eq!(out.errors[0].line, 3);
    assert!(out.errors[0].reason.starts_with("malformed JSON: EOF while parsing a string"), "{:?}", out.errors);
    assert_eq!(out.errors[1].reason, "malformed JSON: unterminated array: expected `,` or `]` at line 3 column 17");

    // Empty elements are rejections of their own.
    let body = format!("[{g1},,{g2},]");
    let out = parse_json_array(body.as_bytes(), &opts());
    assert_eq!(ids(&out), ["g1", "g2"]);
    assert_eq!(out.rejected, 2);
    assert!(out.errors.iter().all(|e| e.reason.starts_with("malformed JSON: empty array element")));
}

#[test]
fn array_element_errors_point_into_the_body() {
    let body = "[{\"event_id\":\"a\"},\n   {\"event_id\":\n  \"b\" \"c\"}]";
    let out = parse_json_array(body.as_bytes(), &opts());
    assert_eq!(out.rejected, 2);
    assert_eq!(out.errors[1].line, 2);
    assert_eq!(out.errors[1].reason, "malformed JSON: expected `,` or `}` at line 3 column 7");
}

#[test]
fn line_error_serializes_for_the_response() {
    let e = LineError { line: 3, field: Some("ts".into()), reason: "late".into() };
    assert_eq!(serde_json::to_value(&e).expect("json"), json!({"line": 3, "field": "ts", "reason": "late"}));
    let e = LineError { line: 1, field: None, reason: "malformed JSON".into() };
    assert_eq!(serde_json::to_value(&e).expect("json"), json!({"line": 1, "field": null, "reason": "malformed JSON"}));
}

#[test]
fn long_user_values_are_truncated_in_messages() {
    let mut v = to_json(&base(EventType::Impression, "a"), false, false);
    v["device"] = "d".repeat(1000).into();
    let out = parse_ndjson(v.to_string().as_bytes(), &opts());
    assert!(out.errors[0].reason.len() < 200, "{}", out.errors[0].reason);
}

// ---- property test: random mixes of valid, invalid and blank lines ----

const DEVICES: [&str; 5] = ["mobile", "desktop", "tablet", "ctv", "other"];

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![3 => "[a-z0-9_-]{1,16}", 1 => "\\PC{1,6}", 1 => Just("q\"uo\\te/\u{e9}\t".to_string())]
}

fn arb_event() -> impl Strategy<Value = Event> {
    let ids = (arb_text(), arb_text(), arb_text(), arb_text(), arb_text());
    let opts = (
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_text()),
        proptest::option::of(proptest::sample::select(&DEVICES[..]).prop_map(str::to_owned)),
        proptest::option::of("[A-Z]{2}"),
        proptest::option::of(arb_text()),
    );
    let nums = (0usize..3, -240 * HOUR..300_000i64, 0i64..10_000_000_000, 0i64..2);
    (ids, opts, nums).prop_map(
        |((id, publ, adv, camp, ad), (ag, imp, clk, device, country, user), (k, dt, cost, v))| {
            let kind = EventType::ALL[k];
            Event {
                event_id: id,
                kind,
                ts: NOW + dt,
                publisher_id: publ,
                advertiser_id: adv,
                campaign_id: camp,
                ad_group_id: ag,
                ad_id: ad,
                impression_id: if kind == EventType::Impression { imp.or(Some("imp".into())) } else { imp },
                click_id: if kind == EventType::Click { clk.or(Some("clk".into())) } else { clk },
                user_key: user,
                device,
                country,
                cost_micros: cost,
                value_micros: v * cost,
                ..Event::default()
            }
        },
    )
}

/// Ways to break a valid line; `0` (truncation) unbalances brackets, so
/// array bodies skip it.
const MUTATIONS: usize = 13;

fn mutate(e: &Event, m: usize) -> String {
    let mut v = to_json(e, true, false);
    let obj = |v: &mut Value| v.as_object_mut().expect("object").clone();
    match m {
        0 => {
            let s = v.to_string();
            return s[..s.len() - 1].to_string();
        }
        1 => return v.to_string().replacen(':', " ", 1),
        2 => v["surprise"] = 1.into(),
        3 => v["cost_micros"] = (-1).into(),
        4 => v["country"] = "de".into(),
        5 => v["device"] = "phone".into(),
        6 => {
            let mut o = obj(&mut v);
            o.remove("event_id");
            v = Value::Object(o);
        }
        7 => v["event_id"] = "x".repeat(129).into(),
        8 => v["type"] = "view".into(),
        9 => v["ts"] = (NOW + HOUR).into(),
        10 => v["ts"] = (NOW - 30 * 24 * HOUR).into(),
        11 => v["publisher_id"] = 5.into(),
        _ => return "[]".into(),
    }
    v.to_string()
}

#[derive(Debug, Clone)]
enum Line {
    Valid(Event, bool),
    Invalid(Event, usize),
    Blank(&'static str),
}

fn arb_lines(mutations: std::ops::Range<usize>) -> impl Strategy<Value = Vec<Line>> {
    let line = prop_oneof![
        4 => (arb_event(), any::<bool>()).prop_map(|(e, rfc)| Line::Valid(e, rfc)),
        3 => (arb_event(), mutations).prop_map(|(e, m)| Line::Invalid(e, m)),
        1 => proptest::sample::select(&["", " ", "\t", "\r"][..]).prop_map(Line::Blank),
    ];
    proptest::collection::vec(line, 0..40)
}

fn mixed_opts() -> ParseOptions {
    ParseOptions { min_ts_ms: Some(NOW - 20 * 24 * HOUR), ..opts() }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn ndjson_mix_accepts_exactly_the_valid_lines(
        lines in arb_lines(0..MUTATIONS),
        crlf: bool,
        chunk in 1usize..8,
    ) {
        let texts: Vec<String> = lines.iter().map(|l| match l {
            Line::Valid(e, rfc) => to_json(e, *rfc, false).to_string(),
            Line::Invalid(e, m) => mutate(e, *m),
            Line::Blank(s) => (*s).to_string(),
        }).collect();
        let body = texts.join(if crlf { "\r\n" } else { "\n" });
        let out = parse_items(body.as_bytes(), split::NdjsonItems::new(body.as_bytes()), &mixed_opts(), chunk);

        let valid: Vec<Event> = lines.iter().filter_map(|l| match l { Line::Valid(e, _) => Some(e.clone()), _ => None }).collect();
        let invalid_lines: Vec<usize> = lines.iter().enumerate()
            .filter_map(|(i, l)| matches!(l, Line::Invalid(..)).then_some(i + 1)).collect();
        let non_blank = lines.iter().filter(|l| !matches!(l, Line::Blank(_))).count();

        prop_assert_eq!(out.accepted() + out.rejected, non_blank);
        prop_assert_eq!(out.batch().events(), valid);
        prop_assert_eq!(out.errors.iter().map(|e| e.line).collect::<Vec<_>>(), invalid_lines);
        let late = lines.iter().filter(|l| matches!(l, Line::Invalid(_, 10))).count();
        let future = lines.iter().filter(|l| matches!(l, Line::Invalid(_, 9))).count();
        prop_assert_eq!((out.rejected_late, out.rejected_future), (late, future));
    }

    #[test]
    fn array_mix_accepts_exactly_the_valid_elements(lines in arb_lines(1..MUTATIONS), pretty: bool) {
        let elements: Vec<String> = lines.iter().filter_map(|l| match l {
            Line::Valid(e, rfc) if pretty => Some(serde_json::to_string_pretty(&to_json(e, *rfc, false)).expect("json")),
            Line::Valid(e, rfc) => Some(to_json(e, *rfc, false).to_string()),
            Line::Invalid(e, m) => Some(mutate(e, *m)),
            Line::Blank(_) => None,
        }).collect();
        let body = format!("[\n{}\n]", elements.join(",\n"));
        let out = parse_json_array(body.as_bytes(), &mixed_opts());

        let valid: Vec<Event> = lines.iter().filter_map(|l| match l { Line::Valid(e, _) => Some(e.clone()), _ => None }).collect();
        prop_assert_eq!(out.accepted() + out.rejected, elements.len());
        prop_assert_eq!(out.batch().events(), valid);
        // Each element starts on its own line; the first on line 2.
        let mut line = 2;
        let mut want_lines = Vec::new();
        for (text, l) in elements.iter().zip(lines.iter().filter(|l| !matches!(l, Line::Blank(_)))) {
            if matches!(l, Line::Invalid(..)) {
                want_lines.push(line);
            }
            line += text.matches('\n').count() + 1;
        }
        prop_assert_eq!(out.errors.iter().map(|e| e.line).collect::<Vec<_>>(), want_lines);
    }
}

#[test]
fn lines_of_publishers_outside_the_scope_are_rejected_one_by_one() {
    let lines: Vec<String> = ["pub-1", "pub-2", "pub-1", "pub-3"]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let e = Event { publisher_id: (*p).into(), ..base(EventType::Impression, &format!("e{i}")) };
            to_json(&e, true, false).to_string()
        })
        .collect();
    let body = lines.join("\n");
    let scoped = ParseOptions { publishers: Some(vec!["pub-1".into()]), ..opts() };
    let out = parse_ndjson(body.as_bytes(), &scoped);
    assert_eq!(ids(&out), ["e0", "e2"]);
    assert_eq!(out.rejected, 2);
    let reason = |p: &str| format!("publisher_not_allowed: the token may not send events of publisher \"{p}\"");
    let (r2, r4) = (reason("pub-2"), reason("pub-3"));
    assert_eq!(errs(&out), [(2, Some("publisher_id"), r2.as_str()), (4, Some("publisher_id"), r4.as_str())]);
    assert_eq!(ids(&parse_ndjson(body.as_bytes(), &opts())).len(), 4, "no scope: every publisher");
}
