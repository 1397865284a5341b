//! Timestamps and intervals: parsing literals, formatting results, and the
//! calendar arithmetic behind `date_trunc` (proleptic Gregorian, UTC).

pub(crate) const SECOND_MS: i64 = 1_000;
pub(crate) const MINUTE_MS: i64 = 60 * SECOND_MS;
pub(crate) const HOUR_MS: i64 = 60 * MINUTE_MS;
pub(crate) const DAY_MS: i64 = 24 * HOUR_MS;

pub(crate) use adstore_storage::time::{civil_from_days, format_timestamp};

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn digits(s: &[u8], n: usize) -> Option<(i64, &[u8])> {
    if s.len() < n || !s[..n].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let v = s[..n].iter().fold(0i64, |acc, b| acc * 10 + i64::from(b - b'0'));
    Some((v, &s[n..]))
}

fn expect(s: &[u8], c: u8) -> Option<&[u8]> {
    s.split_first().filter(|(b, _)| **b == c).map(|(_, r)| r)
}

/// Parses `YYYY-MM-DD`, optionally followed by `T` or a space and
/// `HH:MM[:SS[.fff…]]`, optionally followed by `Z` or `±HH[:MM]`.
/// Without an offset the time is UTC.
pub(crate) fn parse_timestamp(text: &str) -> Option<i64> {
    let s = text.trim().as_bytes();
    let (y, s) = digits(s, 4)?;
    let (mo, s) = digits(expect(s, b'-')?, 2)?;
    let (d, mut s) = digits(expect(s, b'-')?, 2)?;
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let mut ms = days_from_civil(y, mo, d) * DAY_MS;
    if let Some((&sep, rest)) = s.split_first()
        && (sep == b'T' || sep == b't' || sep == b' ')
    {
        let (h, r) = digits(rest, 2)?;
        let (mi, mut r) = digits(expect(r, b':')?, 2)?;
        let mut sec = 0;
        let mut frac_ms = 0;
        if let Some(r2) = expect(r, b':') {
            let (sv, mut r3) = digits(r2, 2)?;
            sec = sv;
            if let Some(r4) = expect(r3, b'.') {
                let n = r4.iter().take_while(|b| b.is_ascii_digit()).count();
                if n == 0 {
                    return None;
                }
                let mut scale = 100;
                for b in &r4[..n.min(3)] {
                    frac_ms += i64::from(b - b'0') * scale;
                    scale /= 10;
                }
                r3 = &r4[n..];
            }
            r = r3;
        }
        if h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        ms += h * HOUR_MS + mi * MINUTE_MS + sec * SECOND_MS + frac_ms;
        s = r;
    }
    match s.split_first() {
        None => Some(ms),
        Some((b'Z' | b'z', [])) => Some(ms),
        Some((&sign @ (b'+' | b'-'), rest)) => {
            let (oh, r) = digits(rest, 2)?;
            let r = expect(r, b':').unwrap_or(r);
            let (om, r) = if r.is_empty() { (0, r) } else { digits(r, 2)? };
            if !r.is_empty() || oh > 23 || om > 59 {
                return None;
            }
            let off = oh * HOUR_MS + om * MINUTE_MS;
            Some(if sign == b'+' { ms - off } else { ms + off })
        }
        _ => None,
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// A unit of `date_trunc` (and of interval literals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeUnit {
    Millisecond,
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Quarter,
    Year,
}

impl TimeUnit {
    pub(crate) fn parse(s: &str) -> Option<TimeUnit> {
        let s = s.trim().to_ascii_lowercase();
        // Compact forms, as in Grafana's `5m` and `300.000s` (PostgreSQL reads
        // `m` as minutes too; months are `mon`).
        match s.as_str() {
            "ms" => return Some(TimeUnit::Millisecond),
            "s" => return Some(TimeUnit::Second),
            "m" => return Some(TimeUnit::Minute),
            _ => {}
        }
        let s = s.strip_suffix('s').unwrap_or(&s);
        Some(match s {
            "millisecond" | "ms" | "msec" => TimeUnit::Millisecond,
            "second" | "sec" => TimeUnit::Second,
            "minute" | "min" => TimeUnit::Minute,
            "hour" | "h" => TimeUnit::Hour,
            "day" | "d" => TimeUnit::Day,
            "week" | "w" => TimeUnit::Week,
            "month" | "mon" => TimeUnit::Month,
            "quarter" => TimeUnit::Quarter,
            "year" | "y" => TimeUnit::Year,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            TimeUnit::Millisecond => "millisecond",
            TimeUnit::Second => "second",
            TimeUnit::Minute => "minute",
            TimeUnit::Hour => "hour",
            TimeUnit::Day => "day",
            TimeUnit::Week => "week",
            TimeUnit::Month => "month",
            TimeUnit::Quarter => "quarter",
            TimeUnit::Year => "year",
        }
    }

    /// Length in ms for units of fixed length.
    pub(crate) fn fixed_ms(self) -> Option<i64> {
        match self {
            TimeUnit::Millisecond => Some(1),
            TimeUnit::Second => Some(SECOND_MS),
            TimeUnit::Minute => Some(MINUTE_MS),
            TimeUnit::Hour => Some(HOUR_MS),
            TimeUnit::Day => Some(DAY_MS),
            TimeUnit::Week => Some(7 * DAY_MS),
            TimeUnit::Month | TimeUnit::Quarter | TimeUnit::Year => None,
        }
    }
}

/// `date_trunc(unit, ts)`: the start of the unit containing `ms`. Weeks
/// start on Monday (ISO), like PostgreSQL.
pub(crate) fn date_trunc(unit: TimeUnit, ms: i64) -> i64 {
    match unit {
        TimeUnit::Week => {
            // 1970-01-01 was a Thursday; Monday 1969-12-29 is day -3.
            let days = ms.div_euclid(DAY_MS);
            (days - (days + 3).rem_euclid(7)).saturating_mul(DAY_MS)
        }
        TimeUnit::Month | TimeUnit::Quarter | TimeUnit::Year => {
            let (y, m, _) = civil_from_days(ms.div_euclid(DAY_MS));
            let m = match unit {
                TimeUnit::Month => m,
                TimeUnit::Quarter => (m - 1) / 3 * 3 + 1,
                _ => 1,
            };
            days_from_civil(y, m, 1).saturating_mul(DAY_MS)
        }
        fixed => {
            let w = fixed.fixed_ms().unwrap_or(1);
            adstore_storage::time::floor_to(ms, w)
        }
    }
}

/// `time_bucket(width, ts)`: buckets of a fixed width aligned to the epoch.
pub(crate) fn time_bucket(width_ms: i64, ms: i64) -> i64 {
    adstore_storage::time::floor_to(ms, width_ms)
}

/// Parses an interval string such as `5 minutes`, `1 hour 30 minutes`,
/// `90 s`. Returns milliseconds; months and years (not of fixed length)
/// are refused.
pub(crate) fn parse_interval(text: &str) -> Result<i64, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err(format!("empty interval {text:?}"));
    }
    let mut total: i64 = 0;
    let mut i = 0;
    while i < words.len() {
        // Accept "5 minutes" and "5minutes".
        let w = words[i];
        let split = w.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-')).unwrap_or(w.len());
        let (num, unit) = if split < w.len() {
            (&w[..split], &w[split..])
        } else {
            i += 1;
            (w, words.get(i).copied().unwrap_or("second"))
        };
        i += 1;
        let n: f64 = num.parse().map_err(|_| format!("cannot read the number {num:?} in interval {text:?}"))?;
        let unit = TimeUnit::parse(unit).ok_or_else(|| format!("unknown unit {unit:?} in interval {text:?}"))?;
        let ms = unit
            .fixed_ms()
            .ok_or_else(|| format!("interval {text:?}: {} has no fixed length; use days or date_trunc", unit.name()))?;
        let part = n * ms as f64;
        if !part.is_finite() || part.abs() > 9.0e18 {
            return Err(format!("interval {text:?} is out of range"));
        }
        total = total.checked_add(part.round() as i64).ok_or_else(|| format!("interval {text:?} is out of range"))?;
    }
    Ok(total)
}

/// An integer compared with a timestamp, as epoch milliseconds. Its size
/// tells its unit, as Grafana's does: below 10^11 it is seconds (what
/// `$__unixEpochFilter` and `extract(epoch …)` give; 10^11 s is the year
/// 5138), below 10^14 milliseconds (as ingest takes `ts`; 10^11 ms is
/// 1973), below 10^17 microseconds, else nanoseconds.
pub(crate) fn epoch_integer_ms(n: i64) -> i64 {
    let magnitude = n.unsigned_abs();
    if magnitude < 100_000_000_000 {
        n.saturating_mul(1_000)
    } else if magnitude < 100_000_000_000_000 {
        n
    } else if magnitude < 100_000_000_000_000_000 {
        n.div_euclid(1_000)
    } else {
        n.div_euclid(1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_integers_by_size() {
        let t = 1_793_512_800_000; // 2026-11-01T06:00:00Z
        assert_eq!(epoch_integer_ms(1_793_512_800), t);
        assert_eq!(epoch_integer_ms(t), t);
        assert_eq!(epoch_integer_ms(t * 1_000 + 123), t);
        assert_eq!(epoch_integer_ms(t * 1_000_000 + 123_000_000), t + 123);
        assert_eq!(epoch_integer_ms(-312_915_600), -312_915_600_000, "1960, in seconds");
        assert_eq!(epoch_integer_ms(0), 0);
    }

    #[test]
    fn compact_intervals() {
        assert_eq!(parse_interval("5m"), Ok(300_000));
        assert_eq!(parse_interval("300.000s"), Ok(300_000));
        assert_eq!(parse_interval("0.020s"), Ok(20));
        assert_eq!(parse_interval("20ms"), Ok(20));
        assert_eq!(parse_interval("12d"), Ok(12 * DAY_MS));
        assert_eq!(parse_interval("1.5h"), Ok(5_400_000));
        assert_eq!(parse_interval("5 minutes"), Ok(300_000));
        assert!(parse_interval("1mon").is_err(), "months have no fixed length");
    }

    #[test]
    fn timestamps_round_trip() {
        let t = parse_timestamp("2026-11-22T10:00:00Z").expect("parses");
        assert_eq!(format_timestamp(t), "2026-11-22T10:00:00Z");
        assert_eq!(parse_timestamp("2026-11-22 10:00:00.5"), Some(t + 500));
        assert_eq!(parse_timestamp("2026-11-22T12:00:00+02:00"), Some(t));
        assert_eq!(parse_timestamp("2026-11-22"), Some(t - 10 * HOUR_MS));
        assert_eq!(parse_timestamp("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(parse_timestamp("2026-02-30"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
        assert_eq!(parse_timestamp("2026-11-22T10:00:00Zjunk"), None);
    }

    #[test]
    fn truncation() {
        let t = parse_timestamp("2026-11-22T10:37:12.345Z").expect("parses");
        let f = |u| format_timestamp(date_trunc(u, t));
        assert_eq!(f(TimeUnit::Minute), "2026-11-22T10:37:00Z");
        assert_eq!(f(TimeUnit::Hour), "2026-11-22T10:00:00Z");
        assert_eq!(f(TimeUnit::Day), "2026-11-22T00:00:00Z");
        assert_eq!(f(TimeUnit::Week), "2026-11-16T00:00:00Z");
        assert_eq!(f(TimeUnit::Month), "2026-11-01T00:00:00Z");
        assert_eq!(f(TimeUnit::Quarter), "2026-10-01T00:00:00Z");
        assert_eq!(f(TimeUnit::Year), "2026-01-01T00:00:00Z");
        assert_eq!(format_timestamp(time_bucket(5 * MINUTE_MS, t)), "2026-11-22T10:35:00Z");
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5 minutes"), Ok(5 * MINUTE_MS));
        assert_eq!(parse_interval("1 hour 30 minutes"), Ok(90 * MINUTE_MS));
        assert_eq!(parse_interval("1"), Ok(SECOND_MS));
        assert_eq!(parse_interval("2days"), Ok(2 * DAY_MS));
        assert!(parse_interval("1 month").is_err());
        assert!(parse_interval("x hours").is_err());
    }
}
