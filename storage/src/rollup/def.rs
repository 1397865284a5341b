//! What a rollup is: a name and the `metrics` dimensions it keeps.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::event::{ColumnId, ColumnKind};
use crate::manifest::Level;
use crate::measure::{DIMENSIONS, Measure};
use crate::segment::{ColumnDef, MAX_SORT_COLUMNS, SegmentSchema};

/// The time column of every rollup: the start of the row's bucket.
pub const TS_COLUMN: &str = "ts";
/// The sketch column of every rollup.
pub const USERS_COLUMN: &str = "users";
/// Longest rollup name.
const MAX_NAME: usize = 64;

/// The time bucket of a rollup's rows, written at seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    /// A row per minute: answers any `metrics` query.
    #[default]
    Minute,
    /// A row per hour: answers queries whose time filters and time
    /// groupings are whole hours (far fewer rows where traffic per
    /// dimension combination is thin).
    Hour,
    /// A row per day (UTC): merged from a rollup's rows once the day is
    /// final; answers whole-day filters and groupings.
    Day,
}

impl Granularity {
    pub fn width_ms(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    pub fn level(self) -> Level {
        match self {
            Granularity::Minute => Level::Minute,
            Granularity::Hour => Level::Hour,
            Granularity::Day => Level::Day,
        }
    }

    pub fn name(self) -> &'static str {
        self.level().as_str()
    }

    /// The granularities a seal writes rows at (`[[rollups]] granularity`);
    /// day rows are only merged from them.
    pub const AT_SEAL: [Granularity; 2] = [Granularity::Minute, Granularity::Hour];

    /// A granularity a seal writes rows at, by name.
    pub fn parse(name: &str) -> Option<Granularity> {
        Granularity::AT_SEAL.into_iter().find(|g| g.name() == name)
    }
}

/// A configured rollup: `[[rollups]]` with a `name`, `dimensions` and a
/// `granularity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupDef {
    name: String,
    dims: Vec<ColumnId>,
    granularity: Granularity,
}

/// How a catalog entry names the rollup a segment belongs to: enough to
/// open it with the schema it was written with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RollupRef {
    pub name: String,
    pub dimensions: Vec<String>,
    /// The granularity of the segment's rows: the rollup's own for a
    /// segment written at seal, hour or day for one merged when a day
    /// became final. Absent in entries written before rollups had one:
    /// minute.
    #[serde(default)]
    pub granularity: Granularity,
}

impl RollupRef {
    /// Whether this segment belongs to `def` as configured now (same name
    /// and dimensions, whatever the granularity of its rows).
    pub fn is_of(&self, def: &RollupDef) -> bool {
        self.name == def.name && self.dimensions.iter().map(String::as_str).eq(def.dims.iter().map(|d| d.name()))
    }
}

impl RollupDef {
    /// A rollup `name` keeping `dimensions` (names of `metrics`
    /// dimensions, in the order rows are sorted by).
    ///
    /// # Errors
    /// A message naming the fault: a name that is empty, too long or not
    /// `[a-z0-9_]`; a dimension that is not one of `metrics`, or repeated.
    pub fn new(name: &str, dimensions: &[&str]) -> Result<RollupDef, String> {
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(format!(
                "rollup name {name:?} must be 1 to {MAX_NAME} characters of lowercase letters, digits and _"
            ));
        }
        let mut dims = Vec::with_capacity(dimensions.len());
        for d in dimensions {
            let Some(id) = ColumnId::from_name(d).filter(|id| DIMENSIONS.contains(id)) else {
                let all: Vec<&str> = DIMENSIONS.iter().map(|c| c.name()).collect();
                return Err(format!("rollup {name}: {d:?} is not a dimension of metrics ({})", all.join(", ")));
            };
            if dims.contains(&id) {
                return Err(format!("rollup {name}: dimension {d} appears twice"));
            }
            dims.push(id);
        }
        Ok(RollupDef { name: name.to_string(), dims, granularity: Granularity::Minute })
    }

    /// This rollup with rows of `granularity`.
    pub fn with_granularity(self, granularity: Granularity) -> RollupDef {
        RollupDef { granularity, ..self }
    }

    /// The set a dashboard needs when nothing is configured: a narrow
    /// campaign view per minute, the advertiser side and the supply side per
    /// hour (per minute, their many combinations hold about one event each
    /// at modest rates, so the rows would outnumber the events).
    pub fn defaults() -> Vec<RollupDef> {
        let def = |name: &str, dims: &[&str], g: Granularity| {
            // Invariant: the names below are dimensions of metrics.
            RollupDef::new(name, dims).expect("default rollups are valid").with_granularity(g)
        };
        vec![
            def("campaign", &["advertiser_id", "campaign_id"], Granularity::Minute),
            def(
                "advertiser",
                &["advertiser_id", "campaign_id", "ad_group_id", "ad_id", "device", "country"],
                Granularity::Hour,
            ),
            def("supply", &["publisher_id", "placement", "country", "device"], Granularity::Hour),
        ]
    }

    /// A rollup as a catalog entry recorded it.
    pub fn from_ref(r: &RollupRef) -> Result<RollupDef, String> {
        let dims: Vec<&str> = r.dimensions.iter().map(String::as_str).collect();
        Ok(RollupDef::new(&r.name, &dims)?.with_granularity(r.granularity))
    }

    pub fn to_ref(&self) -> RollupRef {
        RollupRef {
            name: self.name.clone(),
            dimensions: self.dims.iter().map(|d| d.name().to_string()).collect(),
            granularity: self.granularity,
        }
    }

    pub fn granularity(&self) -> Granularity {
        self.granularity
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dims(&self) -> &[ColumnId] {
        &self.dims
    }

    /// Whether every column of `needed` is one of this rollup's dimensions.
    pub fn covers(&self, needed: &[ColumnId]) -> bool {
        needed.iter().all(|c| self.dims.contains(c))
    }

    /// The segment schema of this rollup's rows: `ts`, the dimensions,
    /// the summed measures in [`Measure::ALL`] order, `users`. Sorted by the
    /// first three dimensions, then time.
    pub fn schema(&self) -> Arc<SegmentSchema> {
        let mut columns = vec![ColumnDef { name: TS_COLUMN, kind: ColumnKind::I64, nullable: false, dimension: false }];
        columns.extend(self.dims.iter().map(|d| ColumnDef {
            name: d.name(),
            kind: ColumnKind::Str,
            nullable: d.spec().nullable,
            dimension: true,
        }));
        columns.extend(Measure::sums().map(|m| ColumnDef {
            name: m.name(),
            kind: ColumnKind::I64,
            nullable: false,
            dimension: false,
        }));
        columns.push(ColumnDef { name: USERS_COLUMN, kind: ColumnKind::Bytes, nullable: true, dimension: false });
        let sort = (1..=self.dims.len().min(MAX_SORT_COLUMNS)).collect();
        // Invariant: the columns above meet every rule of a schema (distinct
        // names, a non-null I64 time column, string dimensions).
        Arc::new(SegmentSchema::new(columns, 0, sort).expect("a rollup schema is valid"))
    }
}
