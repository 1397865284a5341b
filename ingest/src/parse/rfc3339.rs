//! RFC 3339 date-times to epoch milliseconds UTC, by hand.
//!
//! Accepted: `YYYY-MM-DD` `T` (or `t`, or a space, as RFC 3339 §5.6 notes
//! allow) `HH:MM:SS`, an optional `.` fraction of one or more digits, then
//! `Z`/`z` or a `+HH:MM`/`-HH:MM` offset. Digits past milliseconds are
//! truncated (floor). A leap second `:60` is accepted and lands on second
//! `:00` of the next minute, as POSIX time has no leap seconds. Years are
//! 0000..=9999, so the result always fits in an `i64`.
//!
//! A hand parser: the one format is small, this is on the hot path of every
//! event, and it needs no dependency. Calendar arithmetic is Howard
//! Hinnant's `days_from_civil`.

const SHAPE: &str = "expected YYYY-MM-DDTHH:MM:SS[.fraction] followed by Z or an offset +HH:MM / -HH:MM";

/// Parses `s` as an RFC 3339 date-time; the error says what is wrong.
pub fn parse_ms(s: &str) -> Result<i64, &'static str> {
    let b = s.as_bytes();
    let year = digits(b, 0, 4).ok_or(SHAPE)?;
    expect(b, 4, b'-')?;
    let month = digits(b, 5, 2).ok_or(SHAPE)?;
    expect(b, 7, b'-')?;
    let day = digits(b, 8, 2).ok_or(SHAPE)?;
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) {
        return Err(SHAPE);
    }
    let hour = digits(b, 11, 2).ok_or(SHAPE)?;
    expect(b, 13, b':')?;
    let minute = digits(b, 14, 2).ok_or(SHAPE)?;
    expect(b, 16, b':')?;
    let second = digits(b, 17, 2).ok_or(SHAPE)?;

    let mut i = 19;
    let mut frac_ms = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            if i - start < 3 {
                frac_ms = frac_ms * 10 + i64::from(d - b'0');
            }
            i += 1;
        }
        let n = i - start;
        if n == 0 {
            return Err("expected digits after the decimal point");
        }
        for _ in n..3 {
            frac_ms *= 10;
        }
    }

    let offset_ms = match b.get(i) {
        Some(b'Z' | b'z') => {
            i += 1;
            0
        }
        Some(&sign @ (b'+' | b'-')) => {
            let oh = digits(b, i + 1, 2).ok_or(SHAPE)?;
            expect(b, i + 3, b':')?;
            let om = digits(b, i + 4, 2).ok_or(SHAPE)?;
            if oh > 23 || om > 59 {
                return Err("time zone offset out of range");
            }
            i += 6;
            let ms = (oh * 60 + om) * 60_000;
            if sign == b'-' { -ms } else { ms }
        }
        _ => return Err("missing time zone: expected Z or an offset +HH:MM / -HH:MM"),
    };
    if i != b.len() {
        return Err("unexpected characters after the time zone");
    }

    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range for the month");
    }
    if hour > 23 {
        return Err("hour out of range");
    }
    if minute > 59 {
        return Err("minute out of range");
    }
    if second > 60 {
        return Err("second out of range");
    }
    let days = days_from_civil(year, month, day);
    Ok(days * 86_400_000 + (hour * 3600 + minute * 60 + second) * 1000 + frac_ms - offset_ms)
}

/// The `n`-digit decimal number at `b[at..at + n]`, if those are all digits.
fn digits(b: &[u8], at: usize, n: usize) -> Option<i64> {
    let s = b.get(at..at + n)?;
    s.iter().try_fold(0i64, |acc, d| d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0')))
}

fn expect(b: &[u8], at: usize, want: u8) -> Result<(), &'static str> {
    if b.get(at) == Some(&want) { Ok(()) } else { Err(SHAPE) }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Inverse of `days_from_civil`, for formatting in tests.
    fn civil_from_days(z: i64) -> (i64, i64, i64) {
        let z = z + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }

    /// Formats epoch ms as RFC 3339 in UTC with milliseconds (test helper).
    pub(crate) fn format_ms(ms: i64) -> String {
        let (days, rem) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
        let (y, m, d) = civil_from_days(days);
        let (h, mi, s, f) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
        format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{f:03}Z")
    }

    #[test]
    fn known_instants() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("2026-11-22T10:00:00Z", 1_795_341_600_000),
            ("2026-11-22T11:00:00+01:00", 1_795_341_600_000),
            ("2026-11-22T04:30:00-05:30", 1_795_341_600_000),
            ("2026-11-22t10:00:00z", 1_795_341_600_000),
            ("2026-11-22 10:00:00Z", 1_795_341_600_000),
            ("2026-11-22T10:00:00.5Z", 1_795_341_600_500),
            ("2026-11-22T10:00:00.123456789Z", 1_795_341_600_123),
            ("2026-11-22T10:00:00.000-00:00", 1_795_341_600_000),
            ("1969-12-31T23:59:59Z", -1000),
            ("1969-12-31T23:59:59.999Z", -1),
            ("2000-02-29T12:34:56Z", 951_827_696_000),
            ("0001-01-01T00:00:00Z", -62_135_596_800_000),
            ("9999-12-31T23:59:59Z", 253_402_300_799_000),
            ("2016-12-31T23:59:60Z", 1_483_228_800_000),
        ];
        for (s, want) in cases {
            assert_eq!(parse_ms(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn rejects_malformed() {
        let cases = [
            ("", SHAPE),
            ("2026-11-22", SHAPE),
            ("2026-11-22T10:00Z", SHAPE),
            ("2026/11/22T10:00:00Z", SHAPE),
            ("26-11-22T10:00:00Z", SHAPE),
            ("2026-11-22T10:00:00", "missing time zone: expected Z or an offset +HH:MM / -HH:MM"),
            ("2026-11-22T10:00:00+0100", SHAPE),
            ("2026-11-22T10:00:00+01", SHAPE),
            ("2026-11-22T10:00:00+24:00", "time zone offset out of range"),
            ("2026-11-22T10:00:00.Z", "expected digits after the decimal point"),
            ("2026-11-22T10:00:00ZZ", "unexpected characters after the time zone"),
            ("2026-11-22T10:00:00Z ", "unexpected characters after the time zone"),
            ("2026-13-01T10:00:00Z", "month out of range"),
            ("2026-00-01T10:00:00Z", "month out of range"),
            ("2026-02-29T10:00:00Z", "day out of range for the month"),
            ("1900-02-29T10:00:00Z", "day out of range for the month"),
            ("2026-04-31T10:00:00Z", "day out of range for the month"),
            ("2026-04-00T10:00:00Z", "day out of range for the month"),
            ("2026-04-01T24:00:00Z", "hour out of range"),
            ("2026-04-01T23:60:00Z", "minute out of range"),
            ("2026-04-01T23:59:61Z", "second out of range"),
            ("２026-04-01T23:59:59Z", SHAPE),
        ];
        for (s, want) in cases {
            assert_eq!(parse_ms(s), Err(want), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn round_trips_with_format(ms in -62_135_596_800_000i64..253_402_300_800_000) {
            prop_assert_eq!(parse_ms(&format_ms(ms)), Ok(ms));
        }

        #[test]
        fn offsets_shift_the_instant(ms in 0i64..4_000_000_000_000, oh in 0i64..24, om in 0i64..60, neg: bool) {
            let offset = (oh * 60 + om) * 60_000 * if neg { -1 } else { 1 };
            let local = format_ms(ms + offset);
            let sign = if neg { '-' } else { '+' };
            let s = format!("{}{sign}{oh:02}:{om:02}", local.trim_end_matches('Z'));
            prop_assert_eq!(parse_ms(&s), Ok(ms));
        }

        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = parse_ms(&s);
        }
    }
}
