//! The oracle of the differential tests: random events and queries of the
//! SQL subset, and a deliberately naive row-at-a-time evaluator of them,
//! sharing no code with the engine. Used by `differential.rs`,
//! `retention.rs` and `scope.rs` (each its own test binary).

#![allow(dead_code)]

pub use std::cmp::Ordering;
pub use std::collections::{BTreeMap, BTreeSet};

pub use adstore_query::{Cell, QueryOptions, execute};
pub use adstore_storage::rollup::{Granularity, RollupDef};
pub use adstore_storage::{Event, EventBatch, EventType, InvalidReason, SealPipeline, Store, StoreConfig};
pub use proptest::prelude::*;

pub const BASE: i64 = 1_795_341_600_000; // 2026-11-22T10:00:00Z
pub const SPAN_S: i64 = 4 * 3600;
pub const MINUTE: i64 = 60_000;

// ---------------------------------------------------------------- data

pub fn pick(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(pool).prop_map(str::to_owned)
}

pub fn opt(pool: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop::option::weighted(0.8, pick(pool))
}

pub const PUBS: &[&str] = &["p1", "p2"];
pub const ADVS: &[&str] = &["a1", "a2", "a3"];
pub const CAMPS: &[&str] = &["c1", "c2", "c3", "c4"];
pub const GROUPS: &[&str] = &["g1", "g2"];
pub const ADS: &[&str] = &["x", "y", "z"];
pub const DEVICES: &[&str] = &["mobile", "desktop", "tablet"];
pub const OSES: &[&str] = &["ios", "android"];
pub const COUNTRIES: &[&str] = &["US", "DE", "FR"];
pub const REGIONS: &[&str] = &["r1", "r2"];
pub const PLACEMENTS: &[&str] = &["feed", "banner", "video"];
pub const USERS: &[&str] = &["u1", "u2", "u3", "u4", "u5", "u6"];

pub fn any_event() -> impl Strategy<Value = Event> {
    (
        (0u8..3, 0..SPAN_S, pick(PUBS), pick(ADVS), pick(CAMPS), opt(GROUPS), pick(ADS)),
        (opt(USERS), opt(DEVICES), opt(OSES), opt(COUNTRIES), opt(REGIONS), opt(PLACEMENTS)),
        (0i64..1000, 0i64..500, any::<bool>(), prop_oneof![3 => Just(0u8), 1 => 1u8..5]),
    )
        .prop_map(|(a, b, c)| Event {
            event_id: String::new(),
            kind: EventType::from_code(a.0).unwrap_or_default(),
            ts: BASE + a.1 * 1000,
            publisher_id: a.2,
            advertiser_id: a.3,
            campaign_id: a.4,
            ad_group_id: a.5,
            ad_id: a.6,
            user_key: b.0,
            device: b.1,
            os: b.2,
            country: b.3,
            region: b.4,
            placement: b.5,
            cost_micros: c.0,
            value_micros: c.1,
            attributed: c.2,
            invalid_reason: InvalidReason::from_code(c.3).unwrap_or_default(),
            ..Event::default()
        })
}

// ---------------------------------------------------------------- query model

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Dim {
    Publisher,
    Advertiser,
    Campaign,
    AdGroup,
    Ad,
    Device,
    Os,
    Country,
    Region,
    Placement,
}

pub const DIMS: [Dim; 10] = [
    Dim::Publisher,
    Dim::Advertiser,
    Dim::Campaign,
    Dim::AdGroup,
    Dim::Ad,
    Dim::Device,
    Dim::Os,
    Dim::Country,
    Dim::Region,
    Dim::Placement,
];

impl Dim {
    pub fn name(self) -> &'static str {
        match self {
            Dim::Publisher => "publisher_id",
            Dim::Advertiser => "advertiser_id",
            Dim::Campaign => "campaign_id",
            Dim::AdGroup => "ad_group_id",
            Dim::Ad => "ad_id",
            Dim::Device => "device",
            Dim::Os => "os",
            Dim::Country => "country",
            Dim::Region => "region",
            Dim::Placement => "placement",
        }
    }

    pub fn pool(self) -> &'static [&'static str] {
        match self {
            Dim::Publisher => PUBS,
            Dim::Advertiser => ADVS,
            Dim::Campaign => CAMPS,
            Dim::AdGroup => GROUPS,
            Dim::Ad => ADS,
            Dim::Device => DEVICES,
            Dim::Os => OSES,
            Dim::Country => COUNTRIES,
            Dim::Region => REGIONS,
            Dim::Placement => PLACEMENTS,
        }
    }

    pub fn get(self, e: &Event) -> Option<&str> {
        match self {
            Dim::Publisher => Some(&e.publisher_id),
            Dim::Advertiser => Some(&e.advertiser_id),
            Dim::Campaign => Some(&e.campaign_id),
            Dim::AdGroup => e.ad_group_id.as_deref(),
            Dim::Ad => Some(&e.ad_id),
            Dim::Device => e.device.as_deref(),
            Dim::Os => e.os.as_deref(),
            Dim::Country => e.country.as_deref(),
            Dim::Region => e.region.as_deref(),
            Dim::Placement => e.placement.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measure {
    Impressions,
    Clicks,
    Conversions,
    InvalidImpressions,
    InvalidClicks,
    BillableImpressions,
    BillableClicks,
    AttributedConversions,
    Spend,
    ConversionValue,
}

pub const MEASURES: [Measure; 10] = [
    Measure::Impressions,
    Measure::Clicks,
    Measure::Conversions,
    Measure::InvalidImpressions,
    Measure::InvalidClicks,
    Measure::BillableImpressions,
    Measure::BillableClicks,
    Measure::AttributedConversions,
    Measure::Spend,
    Measure::ConversionValue,
];

impl Measure {
    pub fn metrics_name(self) -> &'static str {
        match self {
            Measure::Impressions => "impressions",
            Measure::Clicks => "clicks",
            Measure::Conversions => "conversions",
            Measure::InvalidImpressions => "invalid_impressions",
            Measure::InvalidClicks => "invalid_clicks",
            Measure::BillableImpressions => "billable_impressions",
            Measure::BillableClicks => "billable_clicks",
            Measure::AttributedConversions => "attributed_conversions",
            Measure::Spend => "spend_micros",
            Measure::ConversionValue => "conversion_value_micros",
        }
    }

    /// The same number over events, written the way a user would.
    pub fn events_sql(self) -> &'static str {
        match self {
            Measure::Impressions => "sum(CASE WHEN type = 'impression' THEN 1 ELSE 0 END)",
            Measure::Clicks => "sum(CASE WHEN type = 'click' THEN 1 ELSE 0 END)",
            Measure::Conversions => "sum(CASE type WHEN 'conversion' THEN 1 ELSE 0 END)",
            Measure::InvalidImpressions => {
                "sum(CASE WHEN type = 'impression' AND invalid_reason <> '' THEN 1 ELSE 0 END)"
            }
            Measure::InvalidClicks => "sum(CASE WHEN type = 'click' AND invalid_reason <> '' THEN 1 ELSE 0 END)",
            Measure::BillableImpressions => {
                "sum(CASE WHEN type = 'impression' AND invalid_reason = '' THEN 1 ELSE 0 END)"
            }
            Measure::BillableClicks => {
                "coalesce(sum(CASE WHEN type = 'click' AND NOT invalid_reason <> '' THEN 1 END), sum(0))"
            }
            Measure::AttributedConversions => "sum(CASE WHEN type = 'conversion' AND attributed THEN 1 ELSE 0 END)",
            Measure::Spend => {
                "sum(CASE WHEN type IN ('impression', 'click') AND invalid_reason = '' THEN cost_micros ELSE 0 END)"
            }
            Measure::ConversionValue => {
                "sum(CASE WHEN type = 'conversion' AND attributed THEN value_micros ELSE 0 END)"
            }
        }
    }

    /// Per-event contribution.
    pub fn of(self, e: &Event) -> i64 {
        let valid = e.invalid_reason == InvalidReason::Valid;
        let (imp, clk, conv) =
            (e.kind == EventType::Impression, e.kind == EventType::Click, e.kind == EventType::Conversion);
        let b = |x: bool| i64::from(x);
        match self {
            Measure::Impressions => b(imp),
            Measure::Clicks => b(clk),
            Measure::Conversions => b(conv),
            Measure::InvalidImpressions => b(imp && !valid),
            Measure::InvalidClicks => b(clk && !valid),
            Measure::BillableImpressions => b(imp && valid),
            Measure::BillableClicks => b(clk && valid),
            Measure::AttributedConversions => b(conv && e.attributed),
            Measure::Spend => {
                if (imp || clk) && valid {
                    e.cost_micros
                } else {
                    0
                }
            }
            Measure::ConversionValue => {
                if conv && e.attributed {
                    e.value_micros
                } else {
                    0
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TsForm {
    Typed,
    Plain,
    Epoch,
    /// Epoch seconds, as Grafana's `$__unixEpochFilter` writes them.
    EpochSeconds,
    /// RFC 3339 with a nanosecond fraction of zeros, as `$__timeFilter`
    /// may write it (Go's RFC3339Nano prints 0–9 digits).
    Nano,
}

#[derive(Debug, Clone)]
pub enum Pred {
    Eq(Dim, String),
    Ne(Dim, String),
    In(Dim, Vec<String>, bool),
    IsNull(Dim, bool),
    Like(Dim, String),
    Ts(&'static str, i64, TsForm),
    Between(i64, i64, TsForm),
    // events only
    TypeEq(&'static str),
    Valid(bool),
    CostGt(i64),
    Attributed,
    Not(Box<Pred>),
    And(Box<Pred>, Box<Pred>),
    Or(Box<Pred>, Box<Pred>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Key {
    Dim(Dim),
    Hour,
    Bucket15,
    /// Grafana's `$__timeGroup(ts, '5m')`: `floor(extract(epoch from ts)/300)*300`,
    /// epoch seconds (a double) of the bucket.
    GrafanaGroup(i64),
    Minute,
    Day,
    // events only
    Type,
    CoalesceDevice,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Agg {
    Measure(Measure),
    Ctr,
    MaxDim(Dim),
    MinDim(Dim),
    DistinctDim(Dim),
    ApproxUsers,
    // events only
    CountStar,
    CountClicks,
    CountDim(Dim),
    SumCost,
    MinTs,
    AvgValue,
    DistinctUsers,
}

#[derive(Debug, Clone)]
pub struct AggQuery {
    pub metrics: bool,
    pub keys: Vec<Key>,
    pub aggs: Vec<Agg>,
    pub filter: Option<Pred>,
    pub having: Option<(Agg, i64)>,
    pub limit: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub struct RowQuery {
    pub filter: Option<Pred>,
    pub limit: u64,
}

#[derive(Debug, Clone)]
pub enum Query {
    Agg(AggQuery),
    Rows(RowQuery),
}

pub fn ts_literal(ms: i64, form: TsForm) -> String {
    // Whole seconds: RFC 3339 without a fraction.
    let text = adstore_storage::time::format_timestamp(ms);
    match form {
        TsForm::Typed => format!("TIMESTAMP '{text}'"),
        TsForm::Plain => format!("'{text}'"),
        TsForm::Epoch => ms.to_string(),
        TsForm::EpochSeconds => ms.div_euclid(1000).to_string(),
        TsForm::Nano => format!("'{}.000000000Z'", text.trim_end_matches('Z')),
    }
}

/// A number of seconds as Go's `%v` of a float64 prints it (Grafana's
/// macros): `300`, `3600`, but `1.0368e+06` from a million on.
pub fn go_float(secs: i64) -> String {
    if secs < 1_000_000 {
        return secs.to_string();
    }
    let text = format!("{:e}", secs as f64);
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    format!("{mantissa}e+{:02}", exponent.parse::<i32>().unwrap_or(0))
}

pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl Pred {
    /// `ts_col` is how the table's ts is written (`ts` or `date_trunc('minute', ts)`).
    pub fn sql(&self, ts_col: &str) -> String {
        match self {
            Pred::Eq(d, v) => format!("{} = {}", d.name(), quote(v)),
            Pred::Ne(d, v) => format!("{} <> {}", d.name(), quote(v)),
            Pred::In(d, vs, neg) => format!(
                "{} {}IN ({})",
                d.name(),
                if *neg { "NOT " } else { "" },
                vs.iter().map(|v| quote(v)).collect::<Vec<_>>().join(", ")
            ),
            Pred::IsNull(d, neg) => format!("{} IS {}NULL", d.name(), if *neg { "NOT " } else { "" }),
            Pred::Like(d, p) => format!("{} LIKE {}", d.name(), quote(p)),
            Pred::Ts(op, t, f) => format!("{ts_col} {op} {}", ts_literal(*t, *f)),
            Pred::Between(a, b, f) => format!("{ts_col} BETWEEN {} AND {}", ts_literal(*a, *f), ts_literal(*b, *f)),
            Pred::TypeEq(t) => format!("type = '{t}'"),
            Pred::Valid(v) => format!("invalid_reason {} ''", if *v { "=" } else { "<>" }),
            Pred::CostGt(c) => format!("cost_micros > {c}"),
            Pred::Attributed => "attributed".into(),
            Pred::Not(p) => format!("NOT ({})", p.sql(ts_col)),
            Pred::And(a, b) => format!("({}) AND ({})", a.sql(ts_col), b.sql(ts_col)),
            Pred::Or(a, b) => format!("({}) OR ({})", a.sql(ts_col), b.sql(ts_col)),
        }
    }

    /// Three-valued truth on one event; `ts` is the table's ts of the row.
    pub fn eval(&self, e: &Event, ts: i64) -> Option<bool> {
        let like = |s: &str, p: &str| {
            // Only patterns 'X%' and '%X' and '_X' are generated.
            if let Some(prefix) = p.strip_suffix('%') {
                s.starts_with(prefix)
            } else if let Some(suffix) = p.strip_prefix('%') {
                s.ends_with(suffix)
            } else if let Some(rest) = p.strip_prefix('_') {
                s.chars().count() == rest.chars().count() + 1 && s.ends_with(rest)
            } else {
                s == p
            }
        };
        match self {
            Pred::Eq(d, v) => d.get(e).map(|x| x == v),
            Pred::Ne(d, v) => d.get(e).map(|x| x != v),
            Pred::In(d, vs, neg) => d.get(e).map(|x| vs.iter().any(|v| v == x) != *neg),
            Pred::IsNull(d, neg) => Some(d.get(e).is_none() != *neg),
            Pred::Like(d, p) => d.get(e).map(|x| like(x, p)),
            Pred::Ts(op, t, _) => Some(match *op {
                ">=" => ts >= *t,
                ">" => ts > *t,
                "<" => ts < *t,
                "<=" => ts <= *t,
                "=" => ts == *t,
                _ => ts != *t,
            }),
            Pred::Between(a, b, _) => Some(ts >= *a && ts <= *b),
            Pred::TypeEq(t) => Some(e.kind.as_str() == *t),
            Pred::Valid(v) => Some((e.invalid_reason == InvalidReason::Valid) == *v),
            Pred::CostGt(c) => Some(e.cost_micros > *c),
            Pred::Attributed => Some(e.attributed),
            Pred::Not(p) => p.eval(e, ts).map(|b| !b),
            Pred::And(a, b) => match (a.eval(e, ts), b.eval(e, ts)) {
                (Some(false), _) | (_, Some(false)) => Some(false),
                (Some(true), Some(true)) => Some(true),
                _ => None,
            },
            Pred::Or(a, b) => match (a.eval(e, ts), b.eval(e, ts)) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }
}

impl Key {
    pub fn sql(self, metrics: bool, events_equiv: bool) -> String {
        let ts = if events_equiv { "date_trunc('minute', ts)" } else { "ts" };
        match self {
            Key::Dim(d) => d.name().into(),
            Key::Hour => format!("date_trunc('hour', {ts})"),
            Key::Day => format!("date_trunc('day', {ts})"),
            Key::Bucket15 => format!("time_bucket(INTERVAL '15 minutes', {ts})"),
            Key::GrafanaGroup(secs) => {
                let n = go_float(secs);
                format!("floor(extract(epoch from {ts})/{n})*{n}")
            }
            Key::Minute if metrics && !events_equiv => "ts".into(),
            Key::Minute => format!("date_trunc('minute', {ts})"),
            Key::Type => "type".into(),
            Key::CoalesceDevice => "coalesce(device, 'none')".into(),
        }
    }

    pub fn eval(self, e: &Event) -> V {
        let floor = |w: i64| V::Ts(e.ts.div_euclid(w) * w);
        match self {
            Key::Dim(d) => d.get(e).map_or(V::Null, |s| V::Str(s.into())),
            Key::Hour => floor(3_600_000),
            Key::Day => floor(DAY),
            Key::Bucket15 => floor(900_000),
            Key::GrafanaGroup(secs) => V::Float((e.ts.div_euclid(secs * 1000) * secs) as f64),
            Key::Minute => floor(MINUTE),
            Key::Type => V::Str(e.kind.as_str().into()),
            Key::CoalesceDevice => V::Str(e.device.clone().unwrap_or_else(|| "none".into())),
        }
    }
}

impl Agg {
    pub fn sql(self, metrics: bool) -> String {
        match (self, metrics) {
            (Agg::Measure(m), true) => format!("sum({})", m.metrics_name()),
            (Agg::Measure(m), false) => m.events_sql().into(),
            (Agg::Ctr, true) => "sum(clicks) * 1.0 / nullif(sum(impressions), 0)".into(),
            (Agg::Ctr, false) => "count(*) FILTER (WHERE type = 'click') * 1.0 / nullif(sum(CASE WHEN type = 'impression' THEN 1 ELSE 0 END), 0)".into(),
            (Agg::MaxDim(d), _) => format!("max({})", d.name()),
            (Agg::MinDim(d), _) => format!("min({})", d.name()),
            (Agg::DistinctDim(d), _) => format!("count(DISTINCT {})", d.name()),
            (Agg::ApproxUsers, true) => "approx_count_distinct(users)".into(),
            (Agg::ApproxUsers, false) => "approx_count_distinct(user_key)".into(),
            (Agg::CountStar, _) => "count(*)".into(),
            (Agg::CountClicks, _) => "count(*) FILTER (WHERE type = 'click')".into(),
            (Agg::CountDim(d), _) => format!("count({})", d.name()),
            (Agg::SumCost, _) => "sum(cost_micros)".into(),
            (Agg::MinTs, _) => "min(ts)".into(),
            (Agg::AvgValue, _) => "avg(value_micros)".into(),
            (Agg::DistinctUsers, _) => "count(DISTINCT user_key)".into(),
        }
    }

    pub fn eval(self, rows: &[&Event]) -> V {
        let strs = |d: Dim| rows.iter().filter_map(|e| d.get(e)).collect::<Vec<_>>();
        match self {
            // sum() of no rows is NULL.
            Agg::Measure(_) if rows.is_empty() => V::Null,
            Agg::Measure(m) => V::Int(rows.iter().map(|e| m.of(e)).sum()),
            Agg::CountClicks => V::Int(rows.iter().filter(|e| e.kind == EventType::Click).count() as i64),
            Agg::Ctr => {
                let c: i64 = rows.iter().map(|e| Measure::Clicks.of(e)).sum();
                let i: i64 = rows.iter().map(|e| Measure::Impressions.of(e)).sum();
                if i == 0 { V::Null } else { V::Float(c as f64 * 1.0 / i as f64) }
            }
            Agg::MaxDim(d) => strs(d).into_iter().max().map_or(V::Null, |s| V::Str(s.into())),
            Agg::MinDim(d) => strs(d).into_iter().min().map_or(V::Null, |s| V::Str(s.into())),
            Agg::DistinctDim(d) => V::Int(strs(d).into_iter().collect::<BTreeSet<_>>().len() as i64),
            Agg::ApproxUsers | Agg::DistinctUsers => {
                V::Int(rows.iter().filter_map(|e| e.user_key.as_deref()).collect::<BTreeSet<_>>().len() as i64)
            }
            Agg::CountStar => V::Int(rows.len() as i64),
            Agg::CountDim(d) => V::Int(strs(d).len() as i64),
            Agg::SumCost => {
                if rows.is_empty() {
                    V::Null
                } else {
                    V::Int(rows.iter().map(|e| e.cost_micros).sum())
                }
            }
            Agg::MinTs => rows.iter().map(|e| e.ts).min().map_or(V::Null, V::Ts),
            Agg::AvgValue => {
                if rows.is_empty() {
                    V::Null
                } else {
                    V::Float(rows.iter().map(|e| e.value_micros).sum::<i64>() as f64 / rows.len() as f64)
                }
            }
        }
    }
}

// ---------------------------------------------------------------- values

#[derive(Debug, Clone)]
pub enum V {
    Null,
    Int(i64),
    Float(f64),
    Str(String),
    Ts(i64),
    Bool(bool),
}

pub fn rank(v: &V) -> u8 {
    match v {
        V::Null => 9,
        _ => 0,
    }
}

/// ASC NULLS LAST, the engine's default.
pub fn cmp_v(a: &V, b: &V) -> Ordering {
    match (a, b) {
        (V::Int(x), V::Int(y)) | (V::Ts(x), V::Ts(y)) => x.cmp(y),
        (V::Float(x), V::Float(y)) => x.total_cmp(y),
        (V::Str(x), V::Str(y)) => x.cmp(y),
        (V::Bool(x), V::Bool(y)) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

pub fn cmp_row(a: &[V], b: &[V]) -> Ordering {
    a.iter().zip(b).map(|(x, y)| cmp_v(x, y)).find(|o| *o != Ordering::Equal).unwrap_or(Ordering::Equal)
}

pub fn from_cell(c: &Cell) -> V {
    match c {
        Cell::Null => V::Null,
        Cell::Bool(b) => V::Bool(*b),
        Cell::Int(i) => V::Int(*i),
        Cell::Float(f) => V::Float(*f),
        Cell::Str(s) => V::Str(s.clone()),
        Cell::Timestamp(t) => V::Ts(*t),
    }
}

pub fn same(a: &V, b: &V) -> bool {
    match (a, b) {
        (V::Float(x), V::Float(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        (V::Null, V::Null) => true,
        _ => {
            cmp_v(a, b) == Ordering::Equal
                && rank(a) == rank(b)
                && std::mem::discriminant(a) == std::mem::discriminant(b)
        }
    }
}

// ---------------------------------------------------------------- the naive evaluator

pub fn naive_agg(q: &AggQuery, events: &[Event]) -> Vec<Vec<V>> {
    let ts_of = |e: &Event| if q.metrics { e.ts.div_euclid(MINUTE) * MINUTE } else { e.ts };
    let mut groups: BTreeMap<String, (Vec<V>, Vec<&Event>)> = BTreeMap::new();
    for e in events {
        if let Some(f) = &q.filter
            && f.eval(e, ts_of(e)) != Some(true)
        {
            continue;
        }
        let key: Vec<V> = q.keys.iter().map(|k| k.eval(e)).collect();
        groups.entry(format!("{key:?}")).or_insert_with(|| (key, Vec::new())).1.push(e);
    }
    if q.keys.is_empty() && groups.is_empty() {
        groups.insert(String::new(), (Vec::new(), Vec::new()));
    }
    let mut out = Vec::new();
    for (_, (key, rows)) in groups {
        if let Some((agg, k)) = q.having {
            let keep = match agg.eval(&rows) {
                V::Int(x) => x > k,
                V::Float(x) => x > k as f64,
                _ => false,
            };
            if !keep {
                continue;
            }
        }
        let mut row = key;
        row.extend(q.aggs.iter().map(|a| a.eval(&rows)));
        out.push(row);
    }
    finish(out, q.limit)
}

pub fn finish(mut rows: Vec<Vec<V>>, limit: Option<(u64, u64)>) -> Vec<Vec<V>> {
    rows.sort_by(|a, b| cmp_row(a, b));
    match limit {
        None => rows,
        Some((l, o)) => rows.into_iter().skip(o as usize).take(l as usize).collect(),
    }
}

pub fn naive_rows(q: &RowQuery, events: &[Event]) -> Vec<Vec<V>> {
    let rows = events
        .iter()
        .filter(|e| q.filter.as_ref().is_none_or(|f| f.eval(e, e.ts) == Some(true)))
        .map(|e| {
            vec![
                V::Str(e.event_id.clone()),
                V::Ts(e.ts),
                V::Str(e.campaign_id.clone()),
                e.device.clone().map_or(V::Null, V::Str),
                V::Int(e.cost_micros),
                V::Str(e.kind.as_str().into()),
            ]
        })
        .collect();
    finish(rows, Some((q.limit, 0)))
}

pub fn order_by_all(n: usize) -> String {
    (1..=n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

pub fn agg_sql(q: &AggQuery, metrics: bool) -> String {
    let events_equiv = q.metrics && !metrics;
    let mut items: Vec<String> = q.keys.iter().map(|k| k.sql(q.metrics, events_equiv)).collect();
    items.extend(q.aggs.iter().map(|a| a.sql(metrics)));
    let mut sql = format!("SELECT {} FROM {}", items.join(", "), if metrics { "metrics" } else { "events" });
    let ts_col = if events_equiv { "date_trunc('minute', ts)" } else { "ts" };
    if let Some(f) = &q.filter {
        sql += &format!(" WHERE {}", f.sql(ts_col));
    }
    if !q.keys.is_empty() {
        sql += &format!(" GROUP BY {}", order_by_all(q.keys.len()));
    }
    if let Some((agg, k)) = q.having {
        sql += &format!(" HAVING {} > {k}", agg.sql(metrics));
    }
    sql += &format!(" ORDER BY {}", order_by_all(items.len()));
    if let Some((l, o)) = q.limit {
        sql += &format!(" LIMIT {l} OFFSET {o}");
    }
    sql
}

// ---------------------------------------------------------------- strategies

pub fn any_dim() -> impl Strategy<Value = Dim> {
    prop::sample::select(&DIMS[..])
}

pub fn dim_value(d: Dim) -> impl Strategy<Value = String> {
    // Mostly values that exist, sometimes one that does not.
    prop_oneof![4 => prop::sample::select(d.pool()).prop_map(str::to_owned), 1 => Just("nope".to_string())]
}

/// The time the data and the queries span.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Span {
    /// 10:00 to 14:00 of one day.
    Hours,
    /// Three days from 10:00 on the first (events at `BASE + DAYS_STRETCH`
    /// times their offset), queries grouped and filtered by whole days too.
    Days,
}

pub const DAY: i64 = 86_400_000;
pub const DAYS_STRETCH: i64 = 18;

impl Span {
    pub fn point(self) -> BoxedStrategy<i64> {
        match self {
            // Seconds from 09:00 to 15:00, on minute boundaries half the time.
            Span::Hours => prop_oneof![
                (-60i64..300).prop_map(|m| BASE + m * MINUTE),
                (-3600i64..SPAN_S + 3600).prop_map(|s| BASE + s * 1000)
            ]
            .boxed(),
            // Midnights, hours and seconds from the day before to the day after.
            Span::Days => {
                let day0 = BASE.div_euclid(DAY) * DAY;
                prop_oneof![
                    2 => (-1i64..5).prop_map(move |d| day0 + d * DAY),
                    2 => (-24i64..120).prop_map(move |h| day0 + h * 3_600_000),
                    1 => (-86_400i64..5 * 86_400).prop_map(move |s| day0 + s * 1000),
                ]
                .boxed()
            }
        }
    }
}

pub fn ts_form() -> impl Strategy<Value = TsForm> {
    prop_oneof![
        Just(TsForm::Typed),
        Just(TsForm::Plain),
        Just(TsForm::Epoch),
        Just(TsForm::EpochSeconds),
        Just(TsForm::Nano)
    ]
}

pub fn leaf_pred(events_only: bool, span: Span) -> BoxedStrategy<Pred> {
    let common = prop_oneof![
        any_dim().prop_flat_map(|d| dim_value(d).prop_map(move |v| Pred::Eq(d, v))),
        any_dim().prop_flat_map(|d| dim_value(d).prop_map(move |v| Pred::Ne(d, v))),
        (any_dim(), any::<bool>())
            .prop_flat_map(|(d, neg)| prop::collection::vec(dim_value(d), 1..3).prop_map(move |v| Pred::In(d, v, neg))),
        (any_dim(), any::<bool>()).prop_map(|(d, n)| Pred::IsNull(d, n)),
        (any_dim(), 0..3usize).prop_map(|(d, k)| {
            let v = d.pool()[0];
            let p = match k {
                0 => format!("{}%", &v[..1]),
                1 => format!("%{}", &v[v.len() - 1..]),
                _ => format!("_{}", &v[1..]),
            };
            Pred::Like(d, p)
        }),
        (prop::sample::select(&[">=", ">", "<", "<=", "=", "<>"][..]), span.point(), ts_form())
            .prop_map(|(op, t, f)| Pred::Ts(op, t, f)),
        (span.point(), span.point(), ts_form()).prop_map(|(a, b, f)| Pred::Between(a.min(b), a.max(b), f)),
    ];
    if !events_only {
        return common.boxed();
    }
    prop_oneof![
        5 => common,
        1 => prop::sample::select(&["impression", "click", "conversion"][..]).prop_map(Pred::TypeEq),
        1 => any::<bool>().prop_map(Pred::Valid),
        1 => (0i64..1000).prop_map(Pred::CostGt),
        1 => Just(Pred::Attributed),
    ]
    .boxed()
}

pub fn any_pred(events_only: bool, span: Span) -> BoxedStrategy<Pred> {
    leaf_pred(events_only, span)
        .prop_recursive(2, 6, 2, |inner| {
            prop_oneof![
                2 => (inner.clone(), inner.clone()).prop_map(|(a, b)| Pred::And(Box::new(a), Box::new(b))),
                1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| Pred::Or(Box::new(a), Box::new(b))),
                1 => inner.prop_map(|a| Pred::Not(Box::new(a))),
            ]
        })
        .boxed()
}

pub fn any_key(events: bool, span: Span) -> BoxedStrategy<Key> {
    let common = prop_oneof![
        4 => any_dim().prop_map(Key::Dim),
        1 => Just(Key::Hour),
        1 => Just(Key::Bucket15),
        1 => prop::sample::select(&[60i64, 300, 3_600, 1_036_800][..]).prop_map(Key::GrafanaGroup),
        1 => Just(Key::Minute),
        if span == Span::Days { 3 } else { 0 } => Just(Key::Day),
    ];
    if events {
        prop_oneof![4 => common, 1 => Just(Key::Type), 1 => Just(Key::CoalesceDevice)].boxed()
    } else {
        common.boxed()
    }
}

pub fn any_agg(events: bool) -> BoxedStrategy<Agg> {
    let common = prop_oneof![
        4 => prop::sample::select(&MEASURES[..]).prop_map(Agg::Measure),
        1 => Just(Agg::Ctr),
        1 => any_dim().prop_map(Agg::MaxDim),
        1 => any_dim().prop_map(Agg::MinDim),
        1 => any_dim().prop_map(Agg::DistinctDim),
        1 => Just(Agg::ApproxUsers),
    ];
    if events {
        prop_oneof![
            4 => common,
            2 => Just(Agg::CountStar),
            1 => Just(Agg::CountClicks),
            1 => any_dim().prop_map(Agg::CountDim),
            1 => Just(Agg::SumCost),
            1 => Just(Agg::MinTs),
            1 => Just(Agg::AvgValue),
            1 => Just(Agg::DistinctUsers),
        ]
        .boxed()
    } else {
        common.boxed()
    }
}

pub fn any_query(span: Span) -> impl Strategy<Value = Query> {
    let agg = any::<bool>().prop_flat_map(move |metrics| {
        let events = !metrics;
        (
            prop::collection::vec(any_key(events, span), 0..3),
            prop::collection::vec(any_agg(events), 1..4),
            prop::option::weighted(0.7, any_pred(events, span)),
            prop::option::weighted(0.2, (any_agg(events), 0i64..3)),
            prop::option::weighted(0.3, (0u64..5, 0u64..3)),
        )
            .prop_map(move |(mut keys, aggs, filter, having, limit)| {
                keys.dedup();
                // Ratios are not exact integers: keep them out of HAVING.
                let having = having.filter(|(a, _)| {
                    !matches!(a, Agg::Ctr | Agg::AvgValue | Agg::MaxDim(_) | Agg::MinDim(_) | Agg::MinTs)
                });
                Query::Agg(AggQuery { metrics, keys, aggs, filter, having, limit })
            })
    });
    let rows = (prop::option::weighted(0.8, any_pred(true, span)), 0u64..20)
        .prop_map(|(filter, limit)| Query::Rows(RowQuery { filter, limit }));
    prop_oneof![5 => agg, 1 => rows]
}

/// `count(*)` grouped by bare dimension (and `type`) columns, filtered by
/// AND-ed leaf predicates: the shape the executor answers from packed
/// codes without reading rows (`count_block`), when every predicate is
/// pushed into the scan.
pub fn count_query() -> impl Strategy<Value = Query> {
    let key = prop_oneof![4 => any_dim().prop_map(Key::Dim), 1 => Just(Key::Type)];
    (
        prop::collection::vec(key, 0..3),
        1..3usize,
        prop::collection::vec(leaf_pred(true, Span::Hours), 0..3),
        prop::option::weighted(0.2, 0i64..3),
        prop::option::weighted(0.3, (0u64..5, 0u64..3)),
    )
        .prop_map(|(mut keys, counts, preds, having, limit)| {
            keys.dedup();
            let filter = preds.into_iter().reduce(|a, b| Pred::And(Box::new(a), Box::new(b)));
            let having = having.map(|n| (Agg::CountStar, n));
            Query::Agg(AggQuery { metrics: false, keys, aggs: vec![Agg::CountStar; counts], filter, having, limit })
        })
}

/// Rollup configurations: none, the default set, or up to three random
/// dimension sets, per minute or per hour (so some queries are covered and some are not).
pub fn any_rollups() -> impl Strategy<Value = Vec<RollupDef>> {
    const DIMS: [&str; 10] = [
        "publisher_id",
        "advertiser_id",
        "campaign_id",
        "ad_group_id",
        "ad_id",
        "device",
        "os",
        "country",
        "region",
        "placement",
    ];
    let one = (prop::sample::subsequence(DIMS.to_vec(), 0..=5), any::<bool>());
    let random = prop::collection::vec(one, 0..=3).prop_map(|sets| {
        sets.iter()
            .enumerate()
            .map(|(i, (dims, hourly))| {
                let g = if *hourly { Granularity::Hour } else { Granularity::Minute };
                RollupDef::new(&format!("r{i}"), dims).expect("rollup").with_granularity(g)
            })
            .collect::<Vec<_>>()
    });
    prop_oneof![Just(Vec::new()), Just(RollupDef::defaults()), random]
}

// ---------------------------------------------------------------- the test

pub fn load(events: &[Event], sealed: usize, rollups: Vec<RollupDef>) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { shards: 2, block_rows: 128, fsync: false, rollups, ..StoreConfig::default() };
    let store = Store::open(dir.path(), config, SealPipeline::new()).expect("open");
    let (a, b) = events.split_at(sealed.min(events.len()));
    if !a.is_empty() {
        store.append(&EventBatch::from_events(a)).expect("append");
        store.seal_all().expect("seal");
    }
    if !b.is_empty() {
        store.append(&EventBatch::from_events(b)).expect("append");
    }
    (dir, store)
}

pub fn run(store: &Store, sql: &str) -> Result<Vec<Vec<V>>, String> {
    let opts = QueryOptions { now_ms: BASE, ..QueryOptions::default() };
    let r = execute(&store.snapshot(), sql, &opts).map_err(|e| format!("{e}"))?;
    Ok(r.rows().iter().map(|row| row.iter().map(from_cell).collect()).collect())
}

pub fn check(got: &[Vec<V>], want: &[Vec<V>], sql: &str) -> Result<(), TestCaseError> {
    let ok = got.len() == want.len()
        && got.iter().zip(want).all(|(g, w)| g.len() == w.len() && g.iter().zip(w).all(|(a, b)| same(a, b)));
    prop_assert!(ok, "{sql}\n engine: {got:?}\n  naive: {want:?}");
    Ok(())
}
