//! Retention policy: per level (raw events, minute, hour and day rollups),
//! how long data is kept (`ttl`) and how long on local disk (`hot`).
//!
//! ```text
//!  [retention.raw] / PUT /v1/retention ─► RetentionPolicy::validate ─► Store::set_retention
//!      (persisted in {data_dir}/retention.json, which wins over the file at open)
//!  retention task (every pass): a segment whose bucket ended `ttl` ago ─► deleted
//!      raw: only once final and held by every configured rollup's merged day
//! ```
//!
//! Ages are wall-clock time since the end of a segment's time bucket. The
//! default keeps everything forever: no data is deleted unless asked.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::manifest::Level;
use crate::rollup::Granularity;

/// A duration written like `90m`, `36h`, `7d` (also `s` and `w`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age {
    ms: i64,
}

const UNITS: [(&str, i64); 5] =
    [("w", 7 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)];

impl Age {
    pub fn from_ms(ms: i64) -> Age {
        Age { ms }
    }

    pub fn ms(self) -> i64 {
        self.ms
    }

    /// Parses `<digits><unit>`, unit one of `s m h d w`.
    pub fn parse(text: &str) -> Result<Age, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let bad = || format!("{text:?} is not a duration like \"90m\", \"36h\" or \"7d\" (units s, m, h, d, w)");
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let (_, per) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(bad)?;
        let ms = n.checked_mul(*per).ok_or_else(|| format!("{text:?} is too long a duration"))?;
        if ms <= 0 {
            return Err(format!("{text:?} must be longer than zero"));
        }
        Ok(Age { ms })
    }
}

impl fmt::Display for Age {
    /// In the largest unit up to days that divides it (`48h` is `2d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match UNITS[1..].iter().find(|(_, per)| self.ms % per == 0) {
            Some((unit, per)) => write!(f, "{}{unit}", self.ms / per),
            None => write!(f, "{}s", self.ms as f64 / 1000.0),
        }
    }
}

impl Serialize for Age {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Age {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Age, D::Error> {
        let text = String::deserialize(d)?;
        Age::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// One level's policy. `None` is never.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LevelPolicy {
    /// Kept on local disk this long, then moved to the object store.
    pub hot: Option<Age>,
    /// Deleted this long after the end of its time bucket.
    pub ttl: Option<Age>,
}

/// The policy of every level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionPolicy {
    pub raw: LevelPolicy,
    pub minute: LevelPolicy,
    pub hour: LevelPolicy,
    pub day: LevelPolicy,
}

impl RetentionPolicy {
    pub fn level(&self, level: Level) -> &LevelPolicy {
        match level {
            Level::Raw => &self.raw,
            Level::Minute => &self.minute,
            Level::Hour => &self.hour,
            Level::Day => &self.day,
        }
    }

    /// Whether data of `level` whose time bucket ended at `end_ms` is past
    /// its ttl at wall-clock time `now_ms`.
    pub fn expired(&self, level: Level, end_ms: i64, now_ms: i64) -> bool {
        self.level(level).ttl.is_some_and(|ttl| now_ms >= end_ms.saturating_add(ttl.ms()))
    }

    /// Refuses what cannot be honoured, naming the field: a `ttl` of `raw` or `minute` shorter than a day plus the allowed
    /// lateness: hour and day rows are merged from a day's minute rows, and
    /// raw events are re-sealed as final, only once the day's last bucket
    /// closed, so deleting them sooner would delete numbers no coarser
    /// level holds yet. (`hot` needs no such bound: segments move only
    /// once settled, and are still read where they are.)
    pub fn validate(&self, allowed_lateness_ms: i64) -> Result<(), String> {
        let needed = Granularity::Day.width_ms().saturating_add(allowed_lateness_ms.max(0));
        for level in [Level::Raw, Level::Minute, Level::Hour, Level::Day] {
            let p = self.level(level);
            let name = level.as_str();
            if let Some(ttl) = p.ttl
                && matches!(level, Level::Raw | Level::Minute)
                && ttl.ms() < needed
            {
                return Err(format!(
                    "retention.{name}.ttl = \"{ttl}\" would delete {name} data before the hour and day rollups \
                     that need it are built: at least a day plus the allowed lateness ({}) is needed",
                    Age::from_ms(needed)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_and_print() {
        for (text, ms, shown) in [
            ("90m", 5_400_000, "90m"),
            ("36h", 129_600_000, "36h"),
            ("1w", 604_800_000, "7d"),
            ("48h", 172_800_000, "2d"),
        ] {
            let age = Age::parse(text).expect(text);
            assert_eq!(age.ms(), ms);
            assert_eq!(age.to_string(), shown);
        }
        for bad in ["", "7", "d", "7days", "-3d", "0h", "1.5h", "99999999999999999w"] {
            assert!(Age::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policy_json_round_trips_and_validates() {
        let p: RetentionPolicy =
            serde_json::from_str(r#"{"raw": {"ttl": "30d"}, "minute": {"ttl": null}, "day": {}}"#).expect("parse");
        assert_eq!(p.raw.ttl, Some(Age::parse("30d").expect("30d")));
        assert_eq!(p.validate(86_400_000), Ok(()));
        let back: RetentionPolicy = serde_json::from_str(&serde_json::to_string(&p).expect("json")).expect("back");
        assert_eq!(back, p);
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"raw": {"ttl": "30x"}}"#).is_err());
        assert!(serde_json::from_str::<RetentionPolicy>(r#"{"rwa": {}}"#).is_err());
        let short: RetentionPolicy = serde_json::from_str(r#"{"minute": {"ttl": "36h"}}"#).expect("parse");
        let e = short.validate(86_400_000).expect_err("too short");
        assert!(e.starts_with("retention.minute.ttl"), "{e}");
        let hour: RetentionPolicy = serde_json::from_str(r#"{"hour": {"ttl": "36h"}}"#).expect("parse");
        assert_eq!(hour.validate(86_400_000), Ok(()));
        let hot: RetentionPolicy = serde_json::from_str(r#"{"raw": {"hot": "1h"}}"#).expect("parse");
        assert_eq!(hot.validate(86_400_000), Ok(()));
        let now = 100 * 86_400_000;
        assert!(p.expired(Level::Raw, now - 30 * 86_400_000, now));
        assert!(!p.expired(Level::Raw, now - 29 * 86_400_000, now));
        assert!(!p.expired(Level::Day, 0, now), "no ttl: never");
    }
}
