//! The integer block codec of segments: bit packing, frame of reference
//! and delta + frame of reference, and decoders that read only the rows a
//! scan wants (a run, a gather, a filter on packed values). Pure, and never
//! panics on bad input: errors are a short [`Reason`].

use std::ops::Range;

use super::{Dec, Reason};

/// Integer block tags.
pub(crate) const INT_FOR: u8 = 1;
pub(crate) const INT_DELTA: u8 = 2;

// ---------------------------------------------------------------- bit packing

/// Bytes needed for `count` values of `width` bits.
pub(crate) fn packed_len(count: usize, width: u32) -> usize {
    (count * width as usize).div_ceil(8)
}

/// Bits needed to represent `range` (0 for 0).
pub(crate) fn bit_width(range: u64) -> u32 {
    64 - range.leading_zeros()
}

fn mask(width: u32) -> u64 {
    if width >= 64 { u64::MAX } else { (1u64 << width) - 1 }
}

/// Appends `values`, each truncated to its low `width` bits, as one
/// little-endian bit stream: value `i` occupies bits `i*width ..
/// (i+1)*width`, bit 0 being the lowest bit of the first byte. Writes exactly
/// `packed_len(n, width)` bytes.
pub(crate) fn pack(values: impl IntoIterator<Item = u64>, width: u32, out: &mut Vec<u8>) {
    debug_assert!(width <= 64);
    if width == 0 {
        return;
    }
    let mask = mask(width);
    let mut acc: u64 = 0;
    let mut filled: u32 = 0;
    for v in values {
        let v = v & mask;
        acc |= v << filled;
        let total = filled + width;
        if total >= 64 {
            out.extend_from_slice(&acc.to_le_bytes());
            acc = if filled == 0 { 0 } else { v >> (64 - filled) };
            filled = total - 64;
        } else {
            filled = total;
        }
    }
    let tail = filled.div_ceil(8) as usize;
    out.extend_from_slice(&acc.to_le_bytes()[..tail]);
}

/// The bytes holding the first `n` values of `width` bits, after checking
/// the width and that they are all there.
fn packed_prefix(packed: &[u8], width: u32, n: usize) -> Result<&[u8], Reason> {
    if width > 64 {
        return Err(format!("bit width {width} exceeds 64"));
    }
    let need = packed_len(n, width);
    packed.get(..need).ok_or_else(|| format!("bit-packed data truncated: need {need} bytes, have {}", packed.len()))
}

/// Unpacks `n` values of `width` bits from `packed` and appends `f(value)`
/// for each to `out`. See [`unpack_range`].
#[cfg(test)]
pub(crate) fn unpack_map<T: Copy>(
    packed: &[u8],
    width: u32,
    n: usize,
    out: &mut Vec<T>,
    f: impl Fn(u64) -> T,
) -> Result<(), Reason> {
    unpack_range(packed, width, 0..n, out, f)
}

/// The 64 bits of `packed` from bit `bit` on (unmasked), read through a
/// zero-padded 16-byte window: for values whose 8-byte window would run
/// past the end, and for widths over 56. `bit / 8` must be inside `packed`.
fn read_padded(packed: &[u8], bit: usize) -> u64 {
    let b = bit >> 3;
    let end = (b + 16).min(packed.len());
    let mut word = [0u8; 16];
    word[..end - b].copy_from_slice(&packed[b..end]);
    (u128::from_le_bytes(word) >> (bit & 7)) as u64
}

/// Unpacks values `rows.start .. rows.end` of `width` bits from `packed`
/// (bit packing allows random access) and appends `f(value)` for each to
/// `out`. Widths up to 28 (dictionary codes, enums, costs, small ranges)
/// are unpacked eight values at a time (see [`unpack_groups`]); the values
/// before the first and after the last whole group, and wider values, one
/// at a time (see [`unpack_each`]).
pub(crate) fn unpack_range<T: Copy>(
    packed: &[u8],
    width: u32,
    rows: Range<usize>,
    out: &mut Vec<T>,
    f: impl Fn(u64) -> T,
) -> Result<(), Reason> {
    let packed = packed_prefix(packed, width, rows.end)?;
    if width == 0 || width > 28 || rows.len() < 16 {
        unpack_each(packed, width, rows, out, f);
        return Ok(());
    }
    out.reserve(rows.len());
    let first = rows.start.next_multiple_of(8).min(rows.end);
    let last = (rows.end / 8 * 8).max(first);
    unpack_each(packed, width, rows.start..first, out, &f);
    let groups = first / 8..last / 8;
    macro_rules! widths {
        ($($w:literal)*) => {
            match width {
                $($w => unpack_groups::<$w, T>(packed, groups, out, &f),)*
                _ => unreachable!("widths 1..=28 are matched"),
            }
        };
    }
    widths!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28);
    unpack_each(packed, width, last..rows.end, out, &f);
    Ok(())
}

/// Appends `f(value)` for the values of groups `groups` (group `g` is
/// values `8g .. 8g + 8`) of `W`-bit values, `W` in 1..=28. A group is
/// exactly `W` bytes: loaded as one word when it fits 16 bytes, else as two
/// overlapping 16-byte words, one from the group's start and one ending at
/// its end (for `W <= 28` each value lies wholly inside one of them). Each
/// value then comes out by a shift by a constant: the compiler unrolls the
/// eight. `packed` must hold every byte of those groups.
fn unpack_groups<const W: usize, T: Copy>(
    packed: &[u8],
    groups: Range<usize>,
    out: &mut Vec<T>,
    f: &impl Fn(u64) -> T,
) {
    let mask = (1u64 << W) - 1;
    for g in packed[groups.start * W..groups.end * W].chunks_exact(W) {
        let vals: [T; 8] = if W <= 8 {
            let mut word = [0u8; 8];
            word[..W].copy_from_slice(g);
            let word = u64::from_le_bytes(word);
            std::array::from_fn(|j| f((word >> (j * W)) & mask))
        } else if W <= 16 {
            let mut word = [0u8; 16];
            word[..W].copy_from_slice(g);
            let word = u128::from_le_bytes(word);
            std::array::from_fn(|j| f((word >> (j * W)) as u64 & mask))
        } else {
            let mut lo = [0u8; 16];
            lo.copy_from_slice(&g[..16]);
            let mut hi = [0u8; 16];
            hi.copy_from_slice(&g[W - 16..]);
            let (lo, hi) = (u128::from_le_bytes(lo), u128::from_le_bytes(hi));
            // Bit offset of the second word within the group.
            let hi_base = 8 * W.saturating_sub(16);
            std::array::from_fn(|j| {
                let bit = j * W;
                let word = if bit + W <= 128 { lo >> bit } else { hi >> (bit - hi_base) };
                f(word as u64 & mask)
            })
        };
        out.extend_from_slice(&vals);
    }
}

/// [`unpack_range`] one value at a time, for any width. The hot loop is one
/// unaligned load, shift and mask per value, with no data-dependent
/// branch; the last few values, whose load window would run past the
/// input, go through a zero-padded copy. `packed` is already checked to
/// hold `rows`.
fn unpack_each<T>(packed: &[u8], width: u32, rows: Range<usize>, out: &mut Vec<T>, f: impl Fn(u64) -> T) {
    out.reserve(rows.len());
    if width == 0 {
        out.extend(rows.map(|_| f(0)));
        return;
    }
    let w = width as usize;
    let mask = mask(width);
    // A value starting at bit `b` needs bytes b/8 .. b/8+8 (shift <= 7,
    // width <= 56) or b/8 .. b/8+16 (wider). Value i may use the fast path
    // iff floor(i*w/8) + window <= len.
    let window = if width <= 56 { 8 } else { 16 };
    let fast_end = if packed.len() >= window { ((packed.len() - window + 1) * 8).div_ceil(w) } else { 0 };
    let fast = rows.start..fast_end.clamp(rows.start, rows.end);
    // `extend` over an exact-size range writes without per-value capacity checks.
    if width <= 56 {
        out.extend(fast.clone().map(|i| {
            let bit = i * w;
            let b = bit >> 3;
            let mut word = [0u8; 8];
            // Invariant: b + 8 <= packed.len() for values before `fast_end` (above).
            word.copy_from_slice(&packed[b..b + 8]);
            f((u64::from_le_bytes(word) >> (bit & 7)) & mask)
        }));
    } else {
        out.extend(fast.clone().map(|i| {
            let bit = i * w;
            let b = bit >> 3;
            let mut word = [0u8; 16];
            // Invariant: b + 16 <= packed.len() for values before `fast_end` (above).
            word.copy_from_slice(&packed[b..b + 16]);
            f(((u128::from_le_bytes(word) >> (bit & 7)) as u64) & mask)
        }));
    }
    for i in fast.end..rows.end {
        out.push(f(read_padded(packed, i * w) & mask));
    }
}

/// Appends to `out` the offsets `i` in `rows` whose value (of `width`
/// bits, bit-packed like [`unpack_range`]) satisfies `keep`: a filter over
/// packed values without materializing them.
fn select_packed(
    packed: &[u8],
    width: u32,
    rows: Range<usize>,
    out: &mut Vec<u32>,
    keep: impl Fn(u64) -> bool,
) -> Result<(), Reason> {
    let packed = packed_prefix(packed, width, rows.end)?;
    let base = out.len();
    out.resize(base + rows.len(), 0);
    let slots = &mut out[base..];
    let mut kept = 0;
    let w = width as usize;
    let mask = mask(width);
    let fast_end = if width <= 56 && packed.len() >= 8 { ((packed.len() - 7) * 8).div_ceil(w.max(1)) } else { 0 };
    let fast = rows.start..fast_end.clamp(rows.start, rows.end);
    for i in fast.clone() {
        let bit = i * w;
        let b = bit >> 3;
        let mut word = [0u8; 8];
        // Invariant: b + 8 <= packed.len() for values before `fast_end` (above).
        word.copy_from_slice(&packed[b..b + 8]);
        // Branch-free: write the offset, advance only if kept.
        slots[kept] = i as u32;
        kept += usize::from(keep((u64::from_le_bytes(word) >> (bit & 7)) & mask));
    }
    for i in fast.end..rows.end {
        slots[kept] = i as u32;
        kept += usize::from(keep(read_padded(packed, i * w) & mask));
    }
    out.truncate(base + kept);
    Ok(())
}

/// Unpacks the values at offsets `idx` (each below `n`) of `n` values of
/// `width` bits and appends `f(value)` for each to `out`, in `idx` order:
/// the gather of a selection without decoding the rows it skips.
fn unpack_at<T>(
    packed: &[u8],
    width: u32,
    n: usize,
    idx: &[u32],
    out: &mut Vec<T>,
    f: impl Fn(u64) -> T,
) -> Result<(), Reason> {
    let packed = packed_prefix(packed, width, n)?;
    if let Some(&i) = idx.iter().find(|&&i| i as usize >= n) {
        return Err(format!("row {i} outside a block of {n}"));
    }
    out.reserve(idx.len());
    if width == 0 {
        out.extend(idx.iter().map(|_| f(0)));
        return Ok(());
    }
    let w = width as usize;
    let mask = mask(width);
    out.extend(idx.iter().map(|&i| {
        let bit = i as usize * w;
        let b = bit >> 3;
        let v = if width <= 56 && b + 8 <= packed.len() {
            let mut word = [0u8; 8];
            word.copy_from_slice(&packed[b..b + 8]);
            u64::from_le_bytes(word) >> (bit & 7)
        } else {
            // The last values, and widths over 56.
            read_padded(packed, bit)
        };
        f(v & mask)
    }));
    Ok(())
}

// ---------------------------------------------------------------- integer blocks

/// `max - min` as an unsigned distance (never overflows).
fn span(min: i64, max: i64) -> u64 {
    (i128::from(max) - i128::from(min)) as u64
}

/// Encodes `values` as an integer block:
///
/// ```text
/// FoR:   tag=1 u8 | min i64   | width u8 | packed (v - min), n values
/// delta: tag=2 u8 | first i64 | min_delta i64 | width u8 | packed (d - min_delta), n-1 values
/// ```
///
/// where `d[i] = v[i] - v[i-1]` (wrapping). Delta is used only when
/// `allow_delta` and it needs fewer bits per value than frame of reference.
/// Empty input writes nothing (blocks always hold at least one row).
pub(crate) fn encode_ints(values: &[i64], allow_delta: bool, out: &mut Vec<u8>) {
    let Some((&first, _)) = values.split_first() else { return };
    let (min, max) = values.iter().fold((first, first), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let for_width = bit_width(span(min, max));
    if allow_delta && values.len() > 1 {
        let deltas = values.windows(2).map(|p| p[1].wrapping_sub(p[0]));
        let (dmin, dmax) = deltas.clone().fold((i64::MAX, i64::MIN), |(lo, hi), d| (lo.min(d), hi.max(d)));
        let delta_width = bit_width(span(dmin, dmax));
        if delta_width < for_width {
            out.push(INT_DELTA);
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&dmin.to_le_bytes());
            out.push(delta_width as u8);
            pack(deltas.map(|d| d.wrapping_sub(dmin) as u64), delta_width, out);
            return;
        }
    }
    out.push(INT_FOR);
    out.extend_from_slice(&min.to_le_bytes());
    out.push(for_width as u8);
    pack(values.iter().map(|&v| v.wrapping_sub(min) as u64), for_width, out);
}

/// A frame-of-reference integer block: `min`, the bit width, the packed
/// area of its `n` values, and the bytes the whole block takes.
struct ForBlock<'a> {
    min: i64,
    width: u32,
    packed: &'a [u8],
    used: usize,
}

impl ForBlock<'_> {
    fn value(&self, x: u64) -> i64 {
        self.min.wrapping_add(x as i64)
    }
}

/// The frame-of-reference block of `n` values at the start of `buf`, with
/// its length checked; `None` for another tag.
fn for_block(buf: &[u8], n: usize) -> Result<Option<ForBlock<'_>>, Reason> {
    if buf.first() != Some(&INT_FOR) {
        return Ok(None);
    }
    let mut d = Dec::new(buf);
    d.u8()?;
    let min = d.i64()?;
    let width = u32::from(d.u8()?);
    let start = d.pos();
    let packed = packed_prefix(&buf[start..], width, n)?;
    Ok(Some(ForBlock { min, width, packed, used: start + packed.len() }))
}

fn check_rows(rows: &Range<usize>, n: usize) -> Result<(), Reason> {
    if rows.end > n || rows.start > rows.end {
        return Err(format!("rows {rows:?} outside a block of {n}"));
    }
    Ok(())
}

/// Decodes an `n`-value integer block at the start of `buf` into `out`,
/// returning the bytes consumed.
#[cfg(test)]
pub(crate) fn decode_i64(buf: &[u8], n: usize, out: &mut Vec<i64>) -> Result<usize, Reason> {
    decode_ints_map(buf, n, 0..n, out, |x| x)
}

/// Decodes values `rows` of an `n`-value integer block at the start of
/// `buf`, mapping each through `f` (for u8, bool, dictionary codes and
/// string lengths), and returns the bytes the whole block takes. Frame of
/// reference decodes only `rows`; delta needs the running sum from the
/// first value, so it decodes up to `rows.end`.
pub(crate) fn decode_ints_map<T: Copy>(
    buf: &[u8],
    n: usize,
    rows: Range<usize>,
    out: &mut Vec<T>,
    f: impl Fn(i64) -> T,
) -> Result<usize, Reason> {
    check_rows(&rows, n)?;
    if n == 0 {
        return Ok(0);
    }
    if let Some(block) = for_block(buf, n)? {
        unpack_range(block.packed, block.width, rows, out, |x| f(block.value(x)))?;
        return Ok(block.used);
    }
    let mut d = Dec::new(buf);
    match d.u8()? {
        INT_DELTA => {
            let first = d.i64()?;
            let dmin = d.i64()?;
            let width = u32::from(d.u8()?);
            let start = d.pos();
            let packed = packed_prefix(&buf[start..], width, n - 1)?;
            let used = start + packed.len();
            let mut deltas = Vec::with_capacity(rows.end.saturating_sub(1));
            unpack_range(packed, width, 0..rows.end.saturating_sub(1), &mut deltas, |x| dmin.wrapping_add(x as i64))?;
            out.reserve(rows.len());
            let mut acc = first;
            if rows.start == 0 && !rows.is_empty() {
                out.push(f(first));
            }
            for (i, d) in deltas.iter().enumerate() {
                acc = acc.wrapping_add(*d);
                if i + 1 >= rows.start {
                    out.push(f(acc));
                }
            }
            Ok(used)
        }
        tag => Err(format!("unknown integer block tag {tag}")),
    }
}

/// Decodes the values at offsets `idx` (ascending or not, each below `n`)
/// of an `n`-value integer block, mapping each through `f`, and returns
/// the bytes the whole block takes. Frame of reference reads only those
/// values; delta decodes the block and picks them.
pub(crate) fn decode_ints_at<T>(
    buf: &[u8],
    n: usize,
    idx: &[u32],
    out: &mut Vec<T>,
    f: impl Fn(i64) -> T,
) -> Result<usize, Reason> {
    if n > 0
        && let Some(block) = for_block(buf, n)?
    {
        unpack_at(block.packed, block.width, n, idx, out, |x| f(block.value(x)))?;
        return Ok(block.used);
    }
    let mut all = Vec::with_capacity(n);
    let used = decode_ints_map(buf, n, 0..n, &mut all, |x| x)?;
    out.reserve(idx.len());
    for &i in idx {
        let v = all.get(i as usize).ok_or_else(|| format!("row {i} outside a block of {n}"))?;
        out.push(f(*v));
    }
    Ok(used)
}

/// Appends to `out` the offsets in `rows` of an `n`-value integer block
/// whose value satisfies `keep`, and returns the bytes the whole block
/// takes. Frame of reference tests the packed values in place; delta
/// decodes up to `rows.end` first.
pub(crate) fn select_ints(
    buf: &[u8],
    n: usize,
    rows: Range<usize>,
    out: &mut Vec<u32>,
    keep: impl Fn(i64) -> bool,
) -> Result<usize, Reason> {
    check_rows(&rows, n)?;
    if let Some(block) = for_block(buf, n)? {
        select_packed(block.packed, block.width, rows, out, |x| keep(block.value(x)))?;
        return Ok(block.used);
    }
    let mut values = Vec::with_capacity(rows.len());
    let used = decode_ints_map(buf, n, rows.clone(), &mut values, |x| x)?;
    out.extend(rows.zip(values).filter(|(_, v)| keep(*v)).map(|(i, _)| i as u32));
    Ok(used)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn unpack_all(packed: &[u8], width: u32, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        unpack_map(packed, width, n, &mut out, |x| x).expect("unpack");
        out
    }

    #[test]
    fn pack_known_bytes() {
        // 3-bit values 1,2,3,4 -> bits 001 010 011 100 (LSB first)
        let mut out = Vec::new();
        pack([1u64, 2, 3, 4], 3, &mut out);
        assert_eq!(out, vec![0b1101_0001, 0b0000_1000]);
        assert_eq!(unpack_all(&out, 3, 4), vec![1, 2, 3, 4]);
    }

    #[test]
    fn unpack_rejects_short_input() {
        let mut out: Vec<u64> = Vec::new();
        assert!(unpack_map(&[0u8; 3], 7, 4, &mut out, |x| x).is_err());
        assert!(unpack_map(&[0u8; 3], 65, 1, &mut out, |x| x).is_err());
    }

    #[test]
    fn int_extremes_round_trip() {
        let values = vec![i64::MIN, i64::MAX, 0, -1, i64::MIN, i64::MAX];
        for allow_delta in [false, true] {
            let mut buf = Vec::new();
            encode_ints(&values, allow_delta, &mut buf);
            let mut out = Vec::new();
            let used = decode_i64(&buf, values.len(), &mut out).expect("decode");
            assert_eq!(used, buf.len());
            assert_eq!(out, values);
        }
    }

    #[test]
    fn delta_chosen_for_sorted_timestamps() {
        let values: Vec<i64> = (0..1000).map(|i| 1_700_000_000_000 + i * 3).collect();
        let mut buf = Vec::new();
        encode_ints(&values, true, &mut buf);
        assert_eq!(buf[0], INT_DELTA);
        assert!(buf.len() < 30, "constant deltas pack to width 0, got {} bytes", buf.len());
        let mut out = Vec::new();
        decode_i64(&buf, values.len(), &mut out).expect("decode");
        assert_eq!(out, values);
    }

    proptest! {
        #[test]
        fn bitpack_round_trip(width in 0u32..=64, raw in prop::collection::vec(any::<u64>(), 0..300)) {
            let values: Vec<u64> = raw.iter().map(|v| v & mask(width)).collect();
            let mut out = Vec::new();
            pack(values.iter().copied(), width, &mut out);
            prop_assert_eq!(out.len(), packed_len(values.len(), width));
            prop_assert_eq!(unpack_all(&out, width, values.len()), values);
        }

        /// Widths 1..=28 take an eight-at-a-time path between the first
        /// and the last whole group of eight, wider ones not; any range
        /// must decode to the same values.
        #[test]
        fn narrow_unpack_range_decodes_the_values(
            width in 1u32..=34,
            raw in prop::collection::vec(any::<u64>(), 0..300),
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
        ) {
            let values: Vec<u64> = raw.iter().map(|v| v & mask(width)).collect();
            let mut packed = Vec::new();
            pack(values.iter().copied(), width, &mut packed);
            let (a, b) = (a.index(values.len() + 1), b.index(values.len() + 1));
            let rows = a.min(b)..a.max(b);
            let mut out = vec![u64::MAX];
            unpack_range(&packed, width, rows.clone(), &mut out, |x| x).expect("unpack");
            prop_assert_eq!(&out[1..], &values[rows]);
        }

        #[test]
        fn int_block_round_trip(
            values in prop::collection::vec(prop_oneof![any::<i64>(), -1000i64..1000, Just(i64::MIN), Just(i64::MAX)], 1..300),
            allow_delta: bool,
            trailing in prop::collection::vec(any::<u8>(), 0..4),
        ) {
            let mut buf = Vec::new();
            encode_ints(&values, allow_delta, &mut buf);
            let len = buf.len();
            buf.extend_from_slice(&trailing);
            let mut out = vec![42i64];
            let used = decode_i64(&buf, values.len(), &mut out).expect("decode");
            prop_assert_eq!(used, len);
            prop_assert_eq!(&out[1..], &values[..]);
            let mut mapped = Vec::new();
            decode_ints_map(&buf, values.len(), 0..values.len(), &mut mapped, |v| v.wrapping_mul(3)).expect("decode");
            let want: Vec<i64> = values.iter().map(|v| v.wrapping_mul(3)).collect();
            prop_assert_eq!(mapped, want);
        }

        #[test]
        fn int_block_range_decodes_the_same_values(
            values in prop::collection::vec(prop_oneof![any::<i64>(), -1000i64..1000, 0i64..3], 1..300),
            allow_delta: bool,
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
        ) {
            let mut buf = Vec::new();
            encode_ints(&values, allow_delta, &mut buf);
            let (a, b) = (a.index(values.len() + 1), b.index(values.len() + 1));
            let rows = a.min(b)..a.max(b);
            let mut out = Vec::new();
            let used = decode_ints_map(&buf, values.len(), rows.clone(), &mut out, |v| v).expect("decode");
            prop_assert_eq!(used, buf.len());
            prop_assert_eq!(&out[..], &values[rows]);
        }

        #[test]
        fn int_block_gather_decodes_the_same_values(
            values in prop::collection::vec(prop_oneof![any::<i64>(), -1000i64..1000, 0i64..3], 1..300),
            allow_delta: bool,
            picks in prop::collection::vec(any::<prop::sample::Index>(), 0..50),
        ) {
            let mut buf = Vec::new();
            encode_ints(&values, allow_delta, &mut buf);
            let idx: Vec<u32> = picks.iter().map(|p| p.index(values.len()) as u32).collect();
            let mut out = Vec::new();
            let used = decode_ints_at(&buf, values.len(), &idx, &mut out, |v| v).expect("decode");
            prop_assert_eq!(used, buf.len());
            let want: Vec<i64> = idx.iter().map(|&i| values[i as usize]).collect();
            prop_assert_eq!(out, want);
            let past = [values.len() as u32];
            prop_assert!(decode_ints_at(&buf, values.len(), &past, &mut Vec::new(), |v| v).is_err());
        }

        #[test]
        fn int_block_select_matches_a_filter(
            values in prop::collection::vec(prop_oneof![any::<i64>(), -1000i64..1000, 0i64..3], 1..300),
            allow_delta: bool,
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
            pivot in -2i64..3,
        ) {
            let mut buf = Vec::new();
            encode_ints(&values, allow_delta, &mut buf);
            let (a, b) = (a.index(values.len() + 1), b.index(values.len() + 1));
            let rows = a.min(b)..a.max(b);
            let mut out = vec![7u32];
            let used = select_ints(&buf, values.len(), rows.clone(), &mut out, |v| v <= pivot).expect("select");
            prop_assert_eq!(used, buf.len());
            let want: Vec<u32> = rows.filter(|&i| values[i] <= pivot).map(|i| i as u32).collect();
            prop_assert_eq!(&out[1..], &want[..]);
        }

        /// Narrow values (dictionary codes, enums): a range, a dense or
        /// sparse gather, and a filter all agree with the values.
        #[test]
        fn narrow_int_blocks_decode_gather_and_select_the_same_values(
            width in 1u32..=16,
            seed in prop::collection::vec(any::<u64>(), 64..400),
            a in any::<prop::sample::Index>(),
            b in any::<prop::sample::Index>(),
            keep_every in 1usize..4,
            pivot_bits in any::<u64>(),
        ) {
            let values: Vec<i64> = seed.iter().map(|v| (v & mask(width)) as i64 + 5).collect();
            let mut buf = Vec::new();
            encode_ints(&values, false, &mut buf);
            let n = values.len();
            let (a, b) = (a.index(n + 1), b.index(n + 1));
            let rows = a.min(b)..a.max(b);
            let mut out = Vec::new();
            decode_ints_map(&buf, n, rows.clone(), &mut out, |v| v).expect("range");
            prop_assert_eq!(&out[..], &values[rows.clone()]);
            let idx: Vec<u32> = rows.clone().filter(|i| i % keep_every == 0).map(|i| i as u32).collect();
            let mut picked = Vec::new();
            decode_ints_at(&buf, n, &idx, &mut picked, |v| v).expect("gather");
            let want: Vec<i64> = idx.iter().map(|&i| values[i as usize]).collect();
            prop_assert_eq!(picked, want);
            let pivot = (pivot_bits & mask(width)) as i64 + 5;
            let mut kept = Vec::new();
            select_ints(&buf, n, rows.clone(), &mut kept, |v| v <= pivot).expect("select");
            let want: Vec<u32> = rows.filter(|&i| values[i] <= pivot).map(|i| i as u32).collect();
            prop_assert_eq!(kept, want);
        }

        #[test]
        fn int_block_never_panics_on_garbage(buf in prop::collection::vec(any::<u8>(), 0..64), n in 0usize..100) {
            let mut out = Vec::new();
            let _ = decode_i64(&buf, n, &mut out);
        }
    }
}
