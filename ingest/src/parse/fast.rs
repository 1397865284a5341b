//! A fast reader for the common shape of an event line, with serde as the
//! fallback for everything else.
//!
//! Producers almost always send flat objects of plain strings, integers and
//! `null`. For those, [`read`] fills a [`RawEvent`] in one pass over the
//! bytes: no visitor calls, no `Cow` built and moved per value. serde_json
//! took over a quarter of the server's time on NDJSON ingest in a profile.
//!
//! ```text
//!  line ──read──► Some(RawEvent)   flat object; strings without escapes or
//!    │                             control characters; integers without
//!    │                             fraction, exponent or overflow; null,
//!    │                             true, false
//!    └──────────► None ──► serde_json (anything else, including every
//!                          malformed line, so errors read as before)
//! ```
//!
//! Invariant: when [`read`] returns `Some`, serde_json reads the line to
//! the same `RawEvent` (a proptest checks this on generated lines).

use std::borrow::Cow;

use adstore_storage::ColumnId;

use super::raw::{INPUT_FIELDS, RawEvent, Val, input_column};

/// The event on `line`, or `None` when the line needs the general reader.
#[cfg(test)]
pub(crate) fn read(line: &str) -> Option<RawEvent<'_>> {
    let mut raw = RawEvent::empty();
    read_into(line, &mut raw, &mut KeyOrder::default()).then_some(raw)
}

/// Which key followed each key in the lines read so far. Producers write
/// every line with its fields in the same order, give or take the fields
/// one type of event has and another lacks, so the key after each key is
/// first compared with the one that followed it last time: one comparison
/// instead of a scan for the closing quote and a lookup of the name (half
/// the strings of a line are keys).
pub(crate) struct KeyOrder {
    /// By the previous key's column index; [`LINE_START`] for a line's
    /// first key and for the key after one that is not an input field.
    next: [Option<ColumnId>; INPUT_FIELDS + 1],
}

const LINE_START: usize = INPUT_FIELDS;

impl Default for KeyOrder {
    fn default() -> KeyOrder {
        KeyOrder { next: [None; INPUT_FIELDS + 1] }
    }
}

/// Each input field's name in quotes, zero-padded to 16 bytes, and its
/// length with the quotes, by column index (the input fields are the first
/// columns of the schema).
const QUOTED_KEYS: [([u8; 16], usize); INPUT_FIELDS] = {
    let mut out = [([0u8; 16], 0); INPUT_FIELDS];
    let mut i = 0;
    while i < INPUT_FIELDS {
        let name = adstore_storage::COLUMNS[i].name.as_bytes();
        // Invariant: the longest input field name has 13 bytes, so a
        // quoted name fits in 16 with room to spare.
        assert!(name.len() + 2 < 16);
        out[i].0[0] = b'"';
        let mut j = 0;
        while j < name.len() {
            out[i].0[j + 1] = name[j];
            j += 1;
        }
        out[i].0[name.len() + 1] = b'"';
        out[i].1 = name.len() + 2;
        i += 1;
    }
    out
};

/// Reads the event on `line` into `raw`, which must be empty; `false` when
/// the line needs the general reader, and then `raw` holds part of the line.
/// (Filling a caller's `RawEvent` in place: returning one, some 700 bytes,
/// cost a copy or two per event.) `keys` carries the key order from one
/// line to the next; any value, even one from other input, gives the same
/// result.
pub(crate) fn read_into<'a>(line: &'a str, raw: &mut RawEvent<'a>, keys: &mut KeyOrder) -> bool {
    fill(line, raw, keys).is_some()
}

fn fill<'a>(line: &'a str, raw: &mut RawEvent<'a>, keys: &mut KeyOrder) -> Option<()> {
    let mut s = Scanner { text: line, bytes: line.as_bytes(), pos: 0 };
    s.skip_ws();
    s.eat(b'{')?;
    s.skip_ws();
    if s.peek()? == b'}' {
        s.pos += 1;
    } else {
        let mut prev = LINE_START;
        loop {
            let column = match keys.next[prev] {
                Some(column) if s.eat_key(column) => Some(column),
                _ => {
                    let key = s.string()?;
                    let column = input_column(key);
                    if column.is_none() {
                        raw.note_unknown(key);
                    }
                    keys.next[prev] = column;
                    column
                }
            };
            prev = column.map_or(LINE_START, ColumnId::index);
            s.skip_ws();
            s.eat(b':')?;
            s.skip_ws();
            let value = s.value()?;
            if let Some(column) = column {
                raw.set(column, value);
            }
            s.skip_ws();
            match s.peek()? {
                b',' => {
                    s.pos += 1;
                    s.skip_ws();
                }
                b'}' => {
                    s.pos += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    s.skip_ws();
    (s.pos == s.bytes.len()).then_some(())
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `word` that may be `"`, `\\` or below 0x20.
/// (A byte below `n` sets its high bit in `(x - n) & !x`; bytes of 0x80 and
/// up never do. Borrows can flag a byte above a flagged one, never one below
/// it, so the lowest flag is always a true one, and so is any flag at all
/// when there is one.)
fn stop_flags(word: u64) -> u64 {
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    below(word ^ (ONES * u64::from(b'"')), 1) | below(word ^ (ONES * u64::from(b'\\')), 1) | below(word, 0x20)
}

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    /// JSON whitespace: space, tab, line feed, carriage return.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Consumes the string `"name"` of `column` if it comes next, exactly:
    /// a key spelled with an escape is not taken, and is left to
    /// [`Self::string`].
    fn eat_key(&mut self, column: ColumnId) -> bool {
        let (pattern, len) = QUOTED_KEYS[column.index()];
        // Sixteen bytes compared at once when the line has them (a slice
        // comparison called memcmp for every key: 6% of a parse profile).
        let taken = match self.bytes.get(self.pos..self.pos + 16) {
            Some(window) => {
                let window = u128::from_le_bytes(<[u8; 16]>::try_from(window).unwrap_or_default());
                window & ((1u128 << (len * 8)) - 1) == u128::from_le_bytes(pattern)
            }
            None => self.bytes.get(self.pos..self.pos + len) == Some(&pattern[..len]),
        };
        if taken {
            self.pos += len;
        }
        taken
    }

    /// A string with no escape and no control character, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        // Eight bytes at a time while no quote, backslash or control
        // character is among them; the lowest flag is the first such byte.
        // Near the end of the line, byte by byte.
        while let Some(word) = self.bytes.get(self.pos..self.pos + 8) {
            let flags = stop_flags(u64::from_le_bytes(<[u8; 8]>::try_from(word).ok()?));
            if flags != 0 {
                self.pos += (flags.trailing_zeros() / 8) as usize;
                break;
            }
            self.pos += 8;
        }
        loop {
            match *self.bytes.get(self.pos)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.pos += 1,
            }
        }
        let s = self.text.get(start..self.pos)?;
        self.pos += 1;
        Some(s)
    }

    fn value(&mut self) -> Option<Val<'a>> {
        match self.peek()? {
            b'"' => Some(Val::Str(Cow::Borrowed(self.string()?))),
            b'n' => self.literal(b"null", Val::Null),
            b't' => self.literal(b"true", Val::Bool),
            b'f' => self.literal(b"false", Val::Bool),
            b'-' | b'0'..=b'9' => self.integer(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], val: Val<'a>) -> Option<Val<'a>> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| {
            self.pos = end;
            val
        })
    }

    /// `-?(0|[1-9][0-9]*)` that fits: u64 when non-negative, i64 when
    /// negative. A fraction, exponent, `-0` or overflow goes to serde,
    /// which reads them as floats.
    fn integer(&mut self) -> Option<Val<'a>> {
        let negative = self.peek()? == b'-';
        if negative {
            self.pos += 1;
        }
        let start = self.pos;
        let digits = self.bytes[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        self.pos += digits;
        let text = &self.bytes[start..self.pos];
        // Nineteen digits always fit in a u64; only longer numbers need the
        // overflow checks.
        let n = if digits <= 19 {
            text.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'))
        } else {
            text.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))?
        };
        if digits == 0 || (digits > 1 && self.bytes[start] == b'0') {
            return None;
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return None;
        }
        if !negative {
            return Some(Val::UInt(n));
        }
        if n == 0 {
            return None;
        }
        // -n fits in i64 exactly when n <= 2^63.
        let magnitude = i64::try_from(n - 1).ok()?;
        Some(Val::NegInt(-magnitude - 1))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    use super::*;

    fn serde(line: &str) -> Option<RawEvent<'_>> {
        serde_json::from_str(line).ok()
    }

    #[test]
    fn reads_the_common_shape() {
        let line = r#"{"event_id":"i-1","type":"impression","ts":1793491200000,"ad_group_id":null,"cost_micros":0,"ua_hash":"ua1"}"#;
        let fast = read(line).expect("the common shape takes the fast path");
        assert_eq!(Some(fast), serde(line));
        let spaced = " { \"ts\" : -12 ,\t\"x\":true,\"event_id\":\"\"} \r";
        assert_eq!(read(spaced), serde(spaced));
        assert!(read(spaced).is_some());
    }

    #[test]
    fn word_test_finds_the_first_stop_byte() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let special =
            prop::sample::select(vec![b'"', b'\\', 0u8, 0x1f, 0x20, 0x21, 0x7f, 0x80, 0xff, b'a', b'#', b']']);
        let words = prop::collection::vec(prop_oneof![special, any::<u8>()], 8);
        for _ in 0..20_000 {
            let bytes = words.new_tree(&mut runner).expect("generate").current();
            let word = u64::from_le_bytes(<[u8; 8]>::try_from(&bytes[..]).expect("eight bytes"));
            let first = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let flags = stop_flags(word);
            assert_eq!(first, (flags != 0).then(|| (flags.trailing_zeros() / 8) as usize), "{bytes:?}");
        }
    }

    #[test]
    fn leaves_the_rest_to_serde() {
        for line in [
            r#"{"event_id":"a\"b"}"#,
            r#"{"ts":1.5}"#,
            r#"{"ts":1e3}"#,
            r#"{"ts":-0}"#,
            r#"{"ts":01}"#,
            r#"{"ts":18446744073709551616}"#,
            r#"{"ts":-9223372036854775809}"#,
            r#"{"x":[1]}"#,
            r#"{"x":{}}"#,
            "{\"os\":\"a\u{1}b\"}",
            r#"{"ts":1,}"#,
            r#"{"ts":1} x"#,
            r#"[{"ts":1}]"#,
            r#"{"ts":nul}"#,
            r#"{"ts" 1}"#,
            "",
        ] {
            assert!(read(line).is_none(), "{line}");
        }
        assert_eq!(
            read(r#"{"ts":-9223372036854775808}"#).and_then(|r| r.get(adstore_storage::ColumnId::Ts).cloned()),
            Some(Val::NegInt(i64::MIN))
        );
    }

    #[test]
    fn keys_in_the_last_order_are_taken_and_others_scanned() {
        let mut keys = KeyOrder::default();
        let mut read_next = |line: &'static str| {
            let mut raw = RawEvent::empty();
            read_into(line, &mut raw, &mut keys).then_some(raw)
        };
        for line in [
            r#"{"event_id":"a","ad_id":"x","ts":1}"#,
            // Same order: every key taken by comparison.
            r#"{"event_id":"b","ad_id":"y","ts":2}"#,
            // A longer name that starts with the remembered one, and a
            // shorter one; then the remembered names spelled differently.
            r#"{"event_idx":"c","ad_group_id":"z","t":3}"#,
            r#"{"event_id":"d","ad_id":"w","ts":4,"os":"ios"}"#,
            r#"{ "event_id" : "e" , "ad_id":"v","ts":5}"#,
            r#"{"ts":6,"event_id":"f","ad_id":"u","ts":7}"#,
        ] {
            assert_eq!(read_next(line), serde(line), "{line}");
        }
        // An escaped spelling of a remembered key goes to serde.
        assert_eq!(read_next(r#"{"event\u005fid":"g","ad_id":"t","ts":8}"#), None);
        // What followed each key last is kept: the escaped line stopped
        // before it changed anything.
        use ColumnId as C;
        assert_eq!(keys.next[LINE_START], Some(C::Ts));
        assert_eq!(keys.next[C::Ts.index()], Some(C::EventId));
        assert_eq!(keys.next[C::EventId.index()], Some(C::AdId));
        assert_eq!(keys.next[C::AdId.index()], Some(C::Ts));
        assert_eq!(keys.next[C::Os.index()], None, "os was last in its line");
    }

    /// JSON text built from pieces that are valid and invalid, plain and
    /// awkward, so both paths are exercised.
    fn token() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            prop::sample::select(vec!["event_id", "type", "ts", "ad_id", "cost_micros", "user_key", "region"])
                .prop_map(|k| format!("\"{k}\"")),
            prop::sample::select(vec!["\"x\"", "\"event\\u005fid\"", "\"\"", "ts", "\"ts\\\"\""])
                .prop_map(String::from),
        ];
        let value = prop_oneof![
            "\"[a-z0-9 _\\-é日]{0,20}\"",
            prop::sample::select(vec![
                r#""abcdefghijklmnop\"q""#,
                "\"abcdefghij\u{1}klmnop\"",
                r#""abcdefgh""#,
                "null",
                "true",
                "false",
                "0",
                "-0",
                "7",
                "-7",
                "01",
                "1.0",
                "2e5",
                "-",
                "18446744073709551615",
                "18446744073709551616",
                "-9223372036854775808",
                "-9223372036854775809",
                "\"a\\nb\"",
                "\"\u{7}\"",
                "[]",
                "[1,{\"a\":2}]",
                "{}",
                "{\"k\":null}",
                "nul",
                "tru",
                "\"open",
            ])
            .prop_map(String::from),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
        ];
        let ws = prop::sample::select(vec!["", "", "", " ", "\t", "\r\n", "  "]);
        (ws.clone(), key, ws.clone(), value, ws).prop_map(|(a, k, b, v, c)| format!("{a}{k}{b}:{v}{c}"))
    }

    /// Every line the fast path reads, serde reads the same; and the
    /// generator makes both kinds of line, so the check is not vacuous.
    #[test]
    fn fast_path_agrees_with_serde() {
        let line = (
            prop::collection::vec(token(), 0..8),
            prop::sample::select(vec!["{", " {", "{", "[", ""]),
            prop::sample::select(vec!["}", "} ", "}", "},", "}}", ""]),
            prop::sample::select(vec![",", ",", ",", " , ", ";"]),
        )
            .prop_map(|(fields, open, close, sep)| format!("{open}{}{close}", fields.join(sep)));
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut fast_reads, mut serde_reads) = (0, 0);
        // Also read with the key order of all the lines before, as a chunk
        // of a body is read: a wrong guess must never change the result.
        let mut keys = KeyOrder::default();
        for _ in 0..5000 {
            let line = line.new_tree(&mut runner).expect("generate").current();
            let by_serde = serde(&line);
            serde_reads += usize::from(by_serde.is_some());
            let mut raw = RawEvent::empty();
            let with_order = read_into(&line, &mut raw, &mut keys).then_some(raw);
            let fresh = read(&line);
            assert_eq!(with_order, fresh, "{line}");
            if let Some(fast) = fresh {
                fast_reads += 1;
                assert_eq!(Some(fast), by_serde, "{line}");
            }
        }
        assert!(fast_reads > 200, "only {fast_reads} of 5000 lines took the fast path");
        assert!(serde_reads > fast_reads + 200, "too few lines need serde: {serde_reads} vs {fast_reads}");
    }

    proptest! {
        #[test]
        fn typical_events_take_the_fast_path(
            ids in prop::collection::vec("[a-zA-Z0-9_:. é-]{0,12}", 6),
            ts in any::<i64>(),
            cost in any::<u64>(),
            region in prop::option::of("[a-z]{0,3}"),
        ) {
            let line = serde_json::json!({
                "event_id": ids[0], "type": "click", "ts": ts, "publisher_id": ids[1],
                "advertiser_id": ids[2], "campaign_id": ids[3], "ad_id": ids[4], "user_key": ids[5],
                "region": region, "cost_micros": cost,
            })
            .to_string();
            let fast = read(&line);
            prop_assert!(fast.is_some(), "{}", line);
            prop_assert_eq!(fast, serde(&line));
        }
    }
}
