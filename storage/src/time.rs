//! Time as people read it: epoch milliseconds UTC as RFC 3339, for query
//! results, EXPLAIN and error messages alike (proleptic Gregorian, UTC).

const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
const HOUR_MS: i64 = 60 * MINUTE_MS;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The start of the `width_ms`-wide bucket (aligned to the epoch) that
/// holds `ms`; `i64::MIN` for the part of the first bucket below it.
pub fn floor_to(ms: i64, width_ms: i64) -> i64 {
    ms.div_euclid(width_ms).saturating_mul(width_ms)
}

/// The civil date `(year, month, day)` of a day number.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// RFC 3339 in UTC: `2026-11-22T10:00:00Z`, with `.sss` when the
/// milliseconds are not zero.
pub fn format_timestamp(ms: i64) -> String {
    let (y, m, d, h, mi, s, f) = civil_parts(ms);
    if f == 0 {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{f:03}Z")
    }
}

/// (year, month, day, hour, minute, second, millisecond) of epoch ms, UTC.
fn civil_parts(ms: i64) -> (i64, i64, i64, i64, i64, i64, i64) {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    (y, m, d, rem / HOUR_MS, rem % HOUR_MS / MINUTE_MS, rem % MINUTE_MS / SECOND_MS, rem % SECOND_MS)
}

/// PostgreSQL's text form of a `timestamptz` in UTC, as its clients parse
/// it: `2026-11-22 10:00:00+00`, with the fraction's trailing zeros
/// dropped (`10:00:00.25+00`).
pub fn format_timestamp_pg(ms: i64) -> String {
    let (y, m, d, h, mi, s, f) = civil_parts(ms);
    let mut out = format!("{y:04}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}");
    if f != 0 {
        let fraction = format!("{f:03}");
        out.push('.');
        out.push_str(fraction.trim_end_matches('0'));
    }
    out.push_str("+00");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_only_when_there_are_some() {
        assert_eq!(format_timestamp(1_795_341_600_000), "2026-11-22T10:00:00Z");
        assert_eq!(format_timestamp(1_795_341_600_007), "2026-11-22T10:00:00.007Z");
        assert_eq!(format_timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
    }

    #[test]
    fn formats_like_postgresql() {
        assert_eq!(format_timestamp_pg(1_795_341_600_000), "2026-11-22 10:00:00+00");
        assert_eq!(format_timestamp_pg(1_795_341_600_250), "2026-11-22 10:00:00.25+00");
        assert_eq!(format_timestamp_pg(1_795_341_600_007), "2026-11-22 10:00:00.007+00");
        assert_eq!(format_timestamp_pg(-1), "1969-12-31 23:59:59.999+00");
    }
}
