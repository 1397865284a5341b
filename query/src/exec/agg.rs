//! Hash aggregation in two phases.
//!
//! ```text
//!  block ──► key columns as codes ──► group id per row ──► partial states (per block)
//!                (dictionary codes,     (dense table when the code space
//!                 block-local dicts)      is small, else packed-u64 hash)
//!  partials ──► AggMerger: codes → global ids (once per dictionary entry) ──► global states ──► vectors
//! ```
//!
//! Within a block, rows are grouped by dictionary codes only; strings are
//! looked at when a partial is merged, once per (dictionary, code), and the
//! translation is cached per dictionary for the whole query.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use crate::error::{QueryError, Result};
use crate::expr::{Batch, DictRef, Expr, Validity, Vector, bools, eval, floats, ints, true_rows, valid};
use crate::hll::{Hll, hash_bytes};
use crate::plan::{AggFunc, AggSpec};
use crate::types::{DataType, Scalar};

/// FxHash: a fast, non-cryptographic hasher for integer keys.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(b));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, FxBuild>;

/// What the codes of a key column mean (code 0 is always NULL).
#[derive(Debug, Clone)]
pub(crate) enum Domain {
    Dict(DictRef),
    /// Code `c` is `base + c - 1`.
    IntRange {
        base: i64,
        ts: bool,
    },
    /// Code `c` is `values[c - 1]`.
    Values(Arc<Vec<Scalar>>),
}

pub(crate) struct KeyCol {
    pub codes: Vec<u32>,
    pub domain: Domain,
    /// One more than the largest code.
    pub card: u64,
    /// Every row has the same code (a constant key: grouping ignores it).
    pub constant: bool,
}

fn float_key(f: f64) -> u64 {
    // -0.0 groups with 0.0.
    if f == 0.0 { 0 } else { f.to_bits() }
}

/// Turns a vector into codes for grouping.
pub(crate) fn key_col(v: &Vector<'_>, ty: DataType, n: usize) -> Result<KeyCol> {
    Ok(match v {
        Vector::Dict(codes, dict) => KeyCol {
            codes: codes.to_vec(),
            domain: Domain::Dict(dict.clone()),
            card: dict.len() as u64 + 1,
            constant: false,
        },
        Vector::Const(s) => {
            let code = u32::from(!s.is_null());
            KeyCol { codes: vec![code; n], domain: Domain::Values(Arc::new(vec![s.clone()])), card: 2, constant: true }
        }
        Vector::Plain(_) => {
            let mut map: FxMap<&str, u32> = FxMap::default();
            let mut values = Vec::new();
            let mut codes = Vec::with_capacity(n);
            for i in 0..n {
                codes.push(match v.str_at(i) {
                    None => 0,
                    Some(s) => *map.entry(s).or_insert_with(|| {
                        values.push(Scalar::Str(s.into()));
                        values.len() as u32
                    }),
                });
            }
            let card = values.len() as u64 + 1;
            KeyCol { codes, domain: Domain::Values(Arc::new(values)), card, constant: false }
        }
        Vector::Bool(..) => {
            let (b, nv) = bools(v, n)?;
            let codes = (0..n).map(|i| if valid(&nv, i) { 1 + u32::from(b[i]) } else { 0 }).collect();
            KeyCol {
                codes,
                domain: Domain::Values(Arc::new(vec![Scalar::Bool(false), Scalar::Bool(true)])),
                card: 3,
                constant: false,
            }
        }
        Vector::Float(..) => {
            let (f, nv) = floats(v, n)?;
            let mut map: FxMap<u64, u32> = FxMap::default();
            let mut values = Vec::new();
            let codes = (0..n)
                .map(|i| {
                    if !valid(&nv, i) {
                        return 0;
                    }
                    let x = if f[i] == 0.0 { 0.0 } else { f[i] };
                    *map.entry(float_key(x)).or_insert_with(|| {
                        values.push(Scalar::Float(x));
                        values.len() as u32
                    })
                })
                .collect();
            let card = values.len() as u64 + 1;
            KeyCol { codes, domain: Domain::Values(Arc::new(values)), card, constant: false }
        }
        Vector::Int(..) => {
            let (x, nv) = ints(v, n)?;
            let ts = ty == DataType::Timestamp;
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            for i in 0..n {
                if valid(&nv, i) {
                    lo = lo.min(x[i]);
                    hi = hi.max(x[i]);
                }
            }
            if lo > hi {
                return Ok(KeyCol {
                    codes: vec![0; n],
                    domain: Domain::IntRange { base: 0, ts },
                    card: 1,
                    constant: false,
                });
            }
            let span = i128::from(hi) - i128::from(lo);
            if span < (1 << 20) {
                let codes = match nv.as_ref() {
                    None => x.iter().map(|&a| (a - lo) as u32 + 1).collect(),
                    Some(nv) => x.iter().zip(nv).map(|(&a, &ok)| if ok { (a - lo) as u32 + 1 } else { 0 }).collect(),
                };
                KeyCol { codes, domain: Domain::IntRange { base: lo, ts }, card: span as u64 + 2, constant: false }
            } else {
                let mut map: FxMap<i64, u32> = FxMap::default();
                let mut values = Vec::new();
                let codes = (0..n)
                    .map(|i| {
                        if !valid(&nv, i) {
                            return 0;
                        }
                        *map.entry(x[i]).or_insert_with(|| {
                            values.push(if ts { Scalar::Ts(x[i]) } else { Scalar::Int(x[i]) });
                            values.len() as u32
                        })
                    })
                    .collect();
                let card = values.len() as u64 + 1;
                KeyCol { codes, domain: Domain::Values(Arc::new(values)), card, constant: false }
            }
        }
    })
}

/// Group ids of a block's rows.
pub(crate) struct Grouping {
    pub gid: Vec<u32>,
    pub ngroups: usize,
    /// `ngroups * keys` codes, group by group.
    pub codes: Vec<u32>,
    /// The rows as runs of one group, when runs are long (see [`runs_of`]).
    pub runs: Option<Vec<Run>>,
}

/// Rows `previous end .. end` of a block all belong to group `gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub end: u32,
    pub gid: u32,
}

/// Shortest average run worth adding up run by run.
const MIN_AVG_RUN: usize = 16;

/// The runs of equal group ids, when they average at least
/// [`MIN_AVG_RUN`] rows. Rows are sorted by advertiser, campaign, ad and
/// time, so grouping by a prefix of that order, or by a time bucket that a
/// block falls in, gives long runs: each run's total is then a tight sum
/// over a slice, without a per-row store into a group's accumulator.
fn runs_of(gid: &[u32]) -> Option<Vec<Run>> {
    let n = gid.len();
    let last = *gid.last()?;
    // Zipped slices, not `windows`: this comparison vectorizes.
    let changes = gid[1..].iter().zip(&gid[..n - 1]).filter(|(a, b)| a != b).count();
    if (changes + 1) * MIN_AVG_RUN > n {
        return None;
    }
    let mut runs = Vec::with_capacity(changes + 1);
    for (i, (next, prev)) in gid[1..].iter().zip(&gid[..n - 1]).enumerate() {
        if next != prev {
            runs.push(Run { end: i as u32 + 1, gid: *prev });
        }
    }
    runs.push(Run { end: n as u32, gid: last });
    Some(runs)
}

/// Each run's rows (capped at `n`) and its group.
fn run_spans(runs: &[Run], n: usize) -> impl Iterator<Item = (std::ops::Range<usize>, usize)> + '_ {
    runs.iter().scan(0usize, move |start, r| {
        let end = (r.end as usize).min(n);
        let rows = *start..end;
        *start = end;
        Some((rows, r.gid as usize))
    })
}

pub(crate) fn group(all_keys: &[KeyCol], n: usize, max_groups: usize) -> Result<Grouping> {
    // Constant keys (a time bucket that one block falls in) split nothing:
    // group on the others, and give every group the constants' codes.
    let keys: Vec<&KeyCol> = all_keys.iter().filter(|kc| !kc.constant).collect();
    let k = keys.len();
    if k == 0 {
        let codes = if n > 0 { all_keys.iter().map(|kc| kc.codes[0]).collect() } else { Vec::new() };
        let gid = vec![0; n];
        let runs = runs_of(&gid);
        return Ok(Grouping { gid, ngroups: usize::from(n > 0), codes, runs });
    }
    let too_many = || QueryError::TooManyGroups { max_groups };
    let product = keys.iter().try_fold(1u64, |acc, kc| acc.checked_mul(kc.card));
    let dense_limit = (2 * n as u64).clamp(4096, 1 << 22);
    let mut gid = Vec::with_capacity(n);
    let mut codes = Vec::new();
    let mut ngroups = 0usize;
    let mut new_group = |row: usize, codes: &mut Vec<u32>| -> Result<u32> {
        if ngroups >= max_groups {
            return Err(too_many());
        }
        codes.extend(all_keys.iter().map(|kc| kc.codes[row]));
        ngroups += 1;
        Ok(ngroups as u32 - 1)
    };
    match product {
        Some(p) if p <= dense_limit => {
            let mut table = vec![u32::MAX; p as usize];
            if k == 1 {
                // One lookup per run of equal codes: keys sorted in storage
                // come in long runs. Once runs prove short (under
                // `MIN_AVG_RUN` rows on average), one lookup per row.
                let key = &keys[0].codes;
                let mut row = 0;
                let mut runs = 0;
                while row < n && (row < 256 || runs * MIN_AVG_RUN <= row) {
                    let c = key[row];
                    let len = key[row..].iter().position(|&x| x != c).unwrap_or(n - row);
                    let slot = &mut table[c as usize];
                    if *slot == u32::MAX {
                        *slot = new_group(row, &mut codes)?;
                    }
                    gid.resize(row + len, *slot);
                    row += len;
                    runs += 1;
                }
                for (row, &c) in key.iter().enumerate().skip(row) {
                    let slot = &mut table[c as usize];
                    if *slot == u32::MAX {
                        *slot = new_group(row, &mut codes)?;
                    }
                    gid.push(*slot);
                }
            } else if k == 2 {
                let stride = keys[0].card as usize;
                for (row, (&a, &b)) in keys[0].codes.iter().zip(&keys[1].codes).enumerate() {
                    let slot = &mut table[a as usize + b as usize * stride];
                    if *slot == u32::MAX {
                        *slot = new_group(row, &mut codes)?;
                    }
                    gid.push(*slot);
                }
            } else {
                let mut idx = vec![0usize; n];
                let mut stride = 1usize;
                for kc in keys {
                    for (i, &c) in kc.codes.iter().enumerate() {
                        idx[i] += c as usize * stride;
                    }
                    stride *= kc.card as usize;
                }
                for (row, &ix) in idx.iter().enumerate() {
                    let slot = &mut table[ix];
                    if *slot == u32::MAX {
                        *slot = new_group(row, &mut codes)?;
                    }
                    gid.push(*slot);
                }
            }
        }
        _ => {
            let bits: Vec<u32> = keys.iter().map(|kc| 64 - (kc.card.max(2) - 1).leading_zeros()).collect();
            if bits.iter().sum::<u32>() <= 64 {
                let mut packed = vec![0u64; n];
                let mut shift = 0;
                for (kc, b) in keys.iter().zip(&bits) {
                    for (i, &c) in kc.codes.iter().enumerate() {
                        packed[i] |= u64::from(c) << shift;
                    }
                    shift += b;
                }
                let mut map: FxMap<u64, u32> = FxMap::default();
                for (row, p) in packed.iter().enumerate() {
                    let g = match map.get(p) {
                        Some(g) => *g,
                        None => {
                            let g = new_group(row, &mut codes)?;
                            map.insert(*p, g);
                            g
                        }
                    };
                    gid.push(g);
                }
            } else {
                let mut map: FxMap<Box<[u32]>, u32> = FxMap::default();
                let mut buf = vec![0u32; k];
                for row in 0..n {
                    for (b, kc) in buf.iter_mut().zip(&keys) {
                        *b = kc.codes[row];
                    }
                    let g = match map.get(buf.as_slice()) {
                        Some(g) => *g,
                        None => {
                            let g = new_group(row, &mut codes)?;
                            map.insert(buf.clone().into_boxed_slice(), g);
                            g
                        }
                    };
                    gid.push(g);
                }
            }
        }
    }
    let runs = runs_of(&gid);
    Ok(Grouping { gid, ngroups, codes, runs })
}

/// The state of one aggregate over many groups (columnar, by group id).
pub(crate) enum State {
    Count(Vec<i64>),
    SumInt {
        sum: Vec<i128>,
        seen: Vec<bool>,
    },
    SumFloat {
        sum: Vec<f64>,
        seen: Vec<bool>,
    },
    AvgInt {
        sum: Vec<i128>,
        count: Vec<i64>,
    },
    AvgFloat {
        sum: Vec<f64>,
        count: Vec<i64>,
    },
    MinMaxInt {
        v: Vec<i64>,
        seen: Vec<bool>,
        max: bool,
    },
    MinMaxFloat {
        v: Vec<f64>,
        seen: Vec<bool>,
        max: bool,
    },
    MinMaxStr {
        v: Vec<Option<Arc<str>>>,
        max: bool,
    },
    /// Per block: distinct `(group, code)` pairs and what the codes mean.
    DistinctPartial {
        pairs: Vec<(u32, u32)>,
        domain: Domain,
    },
    /// Merged: distinct `(group, global value id)` pairs.
    DistinctGlobal {
        interner: Box<Interner>,
        set: HashSet<(u32, u32), FxBuild>,
        counts: Vec<i64>,
    },
    /// Per block: `(group, hash)` pairs, repeats included.
    ApproxPartial(Vec<(u32, u64)>),
    ApproxGlobal(Vec<Hll>),
}

/// Runs `$body` for every row (`$i: usize`) of `0..$n`, or of the
/// selection when there is one. A macro, not a closure, so the body is
/// compiled into the loop.
macro_rules! for_rows {
    ($n:expr, $sel:expr, |$i:ident| $body:block) => {
        match $sel {
            None => {
                #[allow(clippy::needless_range_loop)]
                for $i in 0..$n $body
            }
            Some(s) => {
                for &r in s.iter() {
                    let $i = r as usize;
                    $body
                }
            }
        }
    };
}

/// Per-group totals of `value(i)` over the rows `0..n` (or the selection)
/// of a block grouped by `g`. Long runs of one group are summed slice by
/// slice. Otherwise a block has few groups and short runs, so one
/// accumulator per group would make every add wait for the previous one's
/// store; four interleaved sets of accumulators, summed at the end, let
/// four adds run at once.
fn group_totals<T>(g: &Grouping, n: usize, sel: Option<&[u32]>, value: impl Fn(usize) -> T) -> Vec<T>
where
    T: Copy + Default + std::ops::AddAssign,
{
    let (gid, ng) = (&g.gid, g.ngroups);
    if let (None, Some(runs)) = (sel, &g.runs) {
        let mut acc = vec![T::default(); ng];
        for (rows, gi) in run_spans(runs, n) {
            let mut total = T::default();
            for i in rows {
                total += value(i);
            }
            acc[gi] += total;
        }
        return acc;
    }
    const LANES: usize = 4;
    if ng > 4096 {
        // Many groups: consecutive rows rarely share one, and four copies
        // would not stay in cache.
        let mut acc = vec![T::default(); ng];
        for_rows!(n, sel, |i| { acc[gid[i] as usize] += value(i) });
        return acc;
    }
    // Lane `l` of group `g` is `acc[g * LANES + l]`: the four adds of a
    // step touch different slots, and a group's lanes share a cache line.
    let mut acc = vec![T::default(); ng * LANES];
    // A macro, not a closure: it is expanded in two loops, and a closure
    // used twice is not inlined.
    macro_rules! step {
        ($r:expr) => {
            for (l, i) in $r.into_iter().enumerate() {
                acc[gid[i] as usize * LANES + l] += value(i);
            }
        };
    }
    match sel {
        None => {
            let full = n - n % LANES;
            for i in (0..full).step_by(LANES) {
                step!([i, i + 1, i + 2, i + 3]);
            }
            for i in full..n {
                acc[gid[i] as usize * LANES] += value(i);
            }
        }
        Some(s) => {
            let mut chunks = s.chunks_exact(LANES);
            for c in &mut chunks {
                step!([c[0] as usize, c[1] as usize, c[2] as usize, c[3] as usize]);
            }
            for &r in chunks.remainder() {
                acc[gid[r as usize] as usize * LANES] += value(r as usize);
            }
        }
    }
    acc.chunks_exact(LANES)
        .map(|lanes| {
            let mut total = lanes[0];
            for &v in &lanes[1..] {
                total += v;
            }
            total
        })
        .collect()
}

/// Per-group sums of the integers `x` (valid where `nv` says) over the
/// rows or the selection, and per-group counts of the values summed.
/// Adds in i64 when no total can overflow it (the usual case: costs of a
/// block), else in i128. `None` counts: every group of the block has a
/// value (no NULLs, no selection).
fn int_sums(x: &[i64], nv: &Validity, g: &Grouping, sel: Option<&[u32]>) -> (Vec<i128>, Option<Vec<i64>>) {
    let n = x.len();
    let counts = match (nv, sel) {
        (None, None) => None,
        _ => Some(group_totals(g, n, sel, |i| i64::from(valid(nv, i)))),
    };
    // An upper bound of every |x| (OR of the magnitudes' bits; `v ^ (v >> 63)`
    // is |v| for v >= 0 and |v| - 1 below): a plain OR, which vectorizes.
    let bits = x.iter().fold(0u64, |acc, &v| acc | (v ^ (v >> 63)) as u64);
    let bound = u128::from(bits) + 1;
    let fits_i64 = bound * (n as u128) < (1u128 << 63);
    let sums = match (fits_i64, nv) {
        (true, None) => group_totals(g, n, sel, |i| x[i]).into_iter().map(i128::from).collect(),
        (true, Some(v)) => {
            group_totals(g, n, sel, |i| if v[i] { x[i] } else { 0 }).into_iter().map(i128::from).collect()
        }
        (false, _) => group_totals(g, n, sel, |i| if valid(nv, i) { i128::from(x[i]) } else { 0 }),
    };
    (sums, counts)
}

/// Valid flags of any vector (`None`: all rows valid).
fn validity(v: &Vector<'_>, n: usize) -> Option<Vec<bool>> {
    match v {
        Vector::Const(s) => s.is_null().then(|| vec![false; n]),
        Vector::Int(_, nv) | Vector::Float(_, nv) | Vector::Bool(_, nv) => nv.clone(),
        Vector::Dict(c, _) => c.contains(&0).then(|| c.iter().map(|&c| c != 0).collect()),
        Vector::Plain(a) => {
            use arrow_array::Array;
            a.nulls().map(|nb| nb.iter().collect())
        }
    }
}

/// The partial state of `spec` over one block.
pub(crate) fn update(spec: &AggSpec, batch: &Batch<'_>, g: &Grouping) -> Result<State> {
    let n = batch.rows;
    let ng = g.ngroups;
    let gid = &g.gid;
    let sel_vec = match &spec.filter {
        Some(f) => Some(true_rows(&eval(f, batch)?, n)?),
        None => None,
    };
    let sel = sel_vec.as_deref();
    if let Some(state) = sum_case_fast(spec, batch, g, sel)? {
        return Ok(state);
    }
    let arg = match &spec.arg {
        Some(a) => Some((eval(a, batch)?, a.ty())),
        None => None,
    };
    let missing = || QueryError::Internal("aggregate without argument".into());
    Ok(match spec.func {
        AggFunc::CountStar => State::Count(group_totals(g, n, sel, |_| 1i64)),
        AggFunc::Count => {
            let (v, _) = arg.as_ref().ok_or_else(missing)?;
            let nv = validity(v, n);
            State::Count(group_totals(g, n, sel, |i| i64::from(valid(&nv, i))))
        }
        AggFunc::Sum | AggFunc::Avg => {
            let (v, ty) = arg.as_ref().ok_or_else(missing)?;
            let avg = spec.func == AggFunc::Avg;
            if *ty == DataType::Float {
                let (x, nv) = floats(v, n)?;
                let mut sum = vec![0f64; ng];
                let mut count = vec![0i64; ng];
                for_rows!(n, sel, |i| {
                    if valid(&nv, i) {
                        let gi = gid[i] as usize;
                        sum[gi] += x[i];
                        count[gi] += 1;
                    }
                });
                if avg {
                    State::AvgFloat { sum, count }
                } else {
                    State::SumFloat { sum, seen: count.iter().map(|c| *c > 0).collect() }
                }
            } else {
                let (x, nv) = ints(v, n)?;
                let (sum, counts) = int_sums(&x, &nv, g, sel);
                match (avg, counts) {
                    (true, Some(count)) => State::AvgInt { sum, count },
                    (true, None) => State::AvgInt { sum, count: group_totals(g, n, None, |_| 1i64) },
                    (false, Some(count)) => State::SumInt { sum, seen: count.iter().map(|c| *c > 0).collect() },
                    (false, None) => State::SumInt { sum, seen: vec![true; ng] },
                }
            }
        }
        AggFunc::Min | AggFunc::Max => {
            let (v, ty) = arg.as_ref().ok_or_else(missing)?;
            let max = spec.func == AggFunc::Max;
            match ty {
                DataType::Float => {
                    let (x, nv) = floats(v, n)?;
                    let mut out = vec![0f64; ng];
                    let mut seen = vec![false; ng];
                    for_rows!(n, sel, |i| {
                        if valid(&nv, i) {
                            let gi = gid[i] as usize;
                            let better = if max { x[i] > out[gi] } else { x[i] < out[gi] };
                            if !seen[gi] || better {
                                out[gi] = x[i];
                                seen[gi] = true;
                            }
                        }
                    });
                    State::MinMaxFloat { v: out, seen, max }
                }
                DataType::Str => {
                    let mut best: Vec<Option<&str>> = vec![None; ng];
                    match v {
                        Vector::Dict(codes, DictRef::Segment(d)) => {
                            // Sorted dictionary: code order is string order.
                            let mut bc = vec![0u32; ng];
                            for_rows!(n, sel, |i| {
                                let c = codes[i];
                                if c != 0 {
                                    let gi = gid[i] as usize;
                                    if bc[gi] == 0 || (if max { c > bc[gi] } else { c < bc[gi] }) {
                                        bc[gi] = c;
                                    }
                                }
                            });
                            for (b, c) in best.iter_mut().zip(bc) {
                                *b = d.value(c);
                            }
                        }
                        _ => for_rows!(n, sel, |i| {
                            if let Some(s) = v.str_at(i) {
                                let gi = gid[i] as usize;
                                let better = match best[gi] {
                                    None => true,
                                    Some(b) => {
                                        if max {
                                            s > b
                                        } else {
                                            s < b
                                        }
                                    }
                                };
                                if better {
                                    best[gi] = Some(s);
                                }
                            }
                        }),
                    }
                    State::MinMaxStr { v: best.into_iter().map(|b| b.map(Arc::from)).collect(), max }
                }
                _ => {
                    let (x, nv) = ints(v, n)?;
                    let mut out = vec![0i64; ng];
                    let mut seen = vec![false; ng];
                    for_rows!(n, sel, |i| {
                        if valid(&nv, i) {
                            let gi = gid[i] as usize;
                            let better = if max { x[i] > out[gi] } else { x[i] < out[gi] };
                            if !seen[gi] || better {
                                out[gi] = x[i];
                                seen[gi] = true;
                            }
                        }
                    });
                    State::MinMaxInt { v: out, seen, max }
                }
            }
        }
        AggFunc::CountDistinct => {
            let (v, ty) = arg.as_ref().ok_or_else(missing)?;
            let kc = key_col(v, *ty, n)?;
            let mut pairs = Vec::new();
            for_rows!(n, sel, |i| {
                let c = kc.codes[i];
                if c != 0 {
                    pairs.push((gid[i], c));
                }
            });
            pairs.sort_unstable();
            pairs.dedup();
            State::DistinctPartial { pairs, domain: kc.domain }
        }
        AggFunc::ApproxDistinct => {
            let (v, _) = arg.as_ref().ok_or_else(missing)?;
            let mut pairs = Vec::new();
            match v {
                Vector::Dict(codes, dict) => {
                    let mut cache: Vec<Option<u64>> = vec![None; dict.len() + 1];
                    for_rows!(n, sel, |i| {
                        let c = codes[i] as usize;
                        if c != 0 {
                            let h = *cache[c]
                                .get_or_insert_with(|| hash_bytes(dict.value(c as u32).unwrap_or("").as_bytes()));
                            pairs.push((gid[i], h));
                        }
                    });
                }
                Vector::Plain(_) | Vector::Const(Scalar::Str(_)) => for_rows!(n, sel, |i| {
                    if let Some(s) = v.str_at(i) {
                        pairs.push((gid[i], hash_bytes(s.as_bytes())));
                    }
                }),
                Vector::Const(Scalar::Null) => {}
                Vector::Float(..) | Vector::Const(Scalar::Float(_)) => {
                    let (x, nv) = floats(v, n)?;
                    for_rows!(n, sel, |i| {
                        if valid(&nv, i) {
                            pairs.push((gid[i], hash_bytes(&float_key(x[i]).to_le_bytes())));
                        }
                    });
                }
                Vector::Bool(..) | Vector::Const(Scalar::Bool(_)) => {
                    let (x, nv) = bools(v, n)?;
                    for_rows!(n, sel, |i| {
                        if valid(&nv, i) {
                            pairs.push((gid[i], hash_bytes(&[u8::from(x[i])])));
                        }
                    });
                }
                _ => {
                    let (x, nv) = ints(v, n)?;
                    for_rows!(n, sel, |i| {
                        if valid(&nv, i) {
                            pairs.push((gid[i], hash_bytes(&x[i].to_le_bytes())));
                        }
                    });
                }
            }
            // Not sorted or de-duplicated: adding a hash to a sketch twice
            // changes nothing, and costs less than sorting it away.
            State::ApproxPartial(pairs)
        }
    })
}

/// `sum(CASE WHEN c THEN v ELSE 0 END)` over integers (conditional counts
/// and the measures of `metrics`) without materializing the CASE: one pass
/// over the condition, adding `v` where it holds.
fn sum_case_fast(spec: &AggSpec, batch: &Batch<'_>, g: &Grouping, sel: Option<&[u32]>) -> Result<Option<State>> {
    let Some(Expr::Case(whens, els, DataType::Int)) = &spec.arg else { return Ok(None) };
    let ([(c, v)], Expr::Lit(Scalar::Int(0), _)) = (whens.as_slice(), els.as_ref()) else { return Ok(None) };
    if spec.func != AggFunc::Sum {
        return Ok(None);
    }
    let n = batch.rows;
    let (gid, ng) = (&g.gid, g.ngroups);
    let value = eval(v, batch)?;
    if let Vector::Const(Scalar::Int(a)) = value {
        // Every row gives a value (THEN's or ELSE 0): a group is seen
        // when it has a selected row.
        let seen = match sel {
            None => vec![true; ng],
            Some(_) => group_totals(g, n, sel, |_| 1i64).into_iter().map(|c| c > 0).collect(),
        };
        let fits_i64 = i64::try_from(i128::from(a) * n as i128).is_ok();
        if fits_i64 && let Some((codes, hits)) = code_verdict(c, batch)? {
            let sum = const_sum_by_code(g, n, sel, codes, &hits, a);
            return Ok(Some(State::SumInt { sum: sum.into_iter().map(i128::from).collect(), seen }));
        }
        let cond = eval(c, batch)?;
        let (cb, cv) = bools(&cond, n)?;
        let hit = |i: usize| cb[i] && valid(&cv, i);
        let sum = if fits_i64 {
            group_totals(g, n, sel, |i| if hit(i) { a } else { 0 }).into_iter().map(i128::from).collect()
        } else {
            group_totals(g, n, sel, |i| if hit(i) { i128::from(a) } else { 0 })
        };
        return Ok(Some(State::SumInt { sum, seen }));
    }
    let cond = eval(c, batch)?;
    let (cb, cv) = bools(&cond, n)?;
    let (x, xv) = ints(&value, n)?;
    let mut sum = vec![0i128; ng];
    let mut seen = vec![false; ng];
    for_rows!(n, sel, |i| {
        let gi = gid[i] as usize;
        // A hit gives THEN's value, NULL or not; a miss gives 0.
        if !(cb[i] && valid(&cv, i)) {
            seen[gi] = true;
        } else if valid(&xv, i) {
            seen[gi] = true;
            sum[gi] += i128::from(x[i]);
        }
    });
    Ok(Some(State::SumInt { sum, seen }))
}

/// Dictionaries up to this size get a verdict per code (see [`code_verdict`]).
const MAX_VERDICT_CODES: usize = 4096;

/// When `cond` reads one column only, and that column is dictionary
/// codes: the codes, and per code whether the condition holds (NULL
/// counts as not). The condition is evaluated once per dictionary entry,
/// on a batch holding each code once, instead of once per row.
fn code_verdict<'b>(cond: &Expr, batch: &'b Batch<'_>) -> Result<Option<(&'b [u32], Vec<bool>)>> {
    let mut slots = Vec::new();
    cond.visit_slots(&mut |s| {
        if !slots.contains(&s) {
            slots.push(s);
        }
    });
    let [slot] = slots[..] else { return Ok(None) };
    let Some(Vector::Dict(codes, dict)) = batch.cols.get(slot) else { return Ok(None) };
    let m = dict.len() + 1;
    if m > MAX_VERDICT_CODES || m > batch.rows {
        return Ok(None);
    }
    let cols = (0..batch.cols.len())
        .map(|i| {
            if i == slot {
                Vector::Dict(Cow::Owned((0..m as u32).collect()), dict.clone())
            } else {
                Vector::Const(Scalar::Null)
            }
        })
        .collect();
    let probe = Batch::new(m, cols);
    let verdict = eval(cond, &probe)?;
    let (b, nv) = bools(&verdict, m)?;
    Ok(Some((codes, (0..m).map(|c| b[c] && valid(&nv, c)).collect())))
}

/// Per-group totals of `a` over the rows whose code is a hit. With long
/// runs and few hit codes, each run counts its hits by comparing codes,
/// which vectorizes; otherwise each row looks its value up by code.
fn const_sum_by_code(g: &Grouping, n: usize, sel: Option<&[u32]>, codes: &[u32], hits: &[bool], a: i64) -> Vec<i64> {
    let hit_codes: Vec<u32> = (0..hits.len() as u32).filter(|&c| hits[c as usize]).collect();
    if let (None, Some(runs), true) = (sel, &g.runs, hit_codes.len() <= 4) {
        let mut acc = vec![0i64; g.ngroups];
        for (rows, gi) in run_spans(runs, n) {
            let slice = codes.get(rows).unwrap_or_default();
            let count: usize = hit_codes.iter().map(|&h| slice.iter().filter(|&&c| c == h).count()).sum();
            acc[gi] += a * count as i64;
        }
        return acc;
    }
    let values: Vec<i64> = hits.iter().map(|&h| if h { a } else { 0 }).collect();
    group_totals(g, n, sel, |i| values.get(codes[i] as usize).copied().unwrap_or(0))
}

/// A hashable key value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum KeyVal {
    Null,
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(Arc<str>),
}

/// Global ids for the values of one key column (or DISTINCT argument).
#[derive(Default)]
pub(crate) struct Interner {
    map: FxMap<KeyVal, u32>,
    /// Strings, looked up by `&str` without allocating.
    strs: FxMap<Arc<str>, u32>,
    pub values: Vec<Scalar>,
    /// Per dictionary (by identity): code → global id (`u32::MAX`: not yet seen).
    dict_cache: FxMap<usize, Vec<u32>>,
    bytes: usize,
}

impl Interner {
    fn intern_str(&mut self, s: &str) -> u32 {
        if let Some(id) = self.strs.get(s) {
            return *id;
        }
        let id = self.values.len() as u32;
        let a: Arc<str> = Arc::from(s);
        self.bytes += 48 + s.len();
        self.values.push(Scalar::Str(a.clone()));
        self.strs.insert(a, id);
        id
    }

    fn intern(&mut self, s: Scalar) -> u32 {
        if let Scalar::Str(x) = &s {
            return self.intern_str(x);
        }
        let key = match &s {
            Scalar::Null => KeyVal::Null,
            Scalar::Bool(b) => KeyVal::Bool(*b),
            Scalar::Int(i) | Scalar::Ts(i) => KeyVal::Int(*i),
            Scalar::Float(f) => KeyVal::Float(float_key(*f)),
            Scalar::Str(s) => KeyVal::Str(s.clone()),
        };
        if let Some(id) = self.map.get(&key) {
            return *id;
        }
        let id = self.values.len() as u32;
        self.bytes += 48 + if let Scalar::Str(s) = &s { s.len() } else { 0 };
        self.values.push(s);
        self.map.insert(key, id);
        id
    }

    pub(crate) fn translate(&mut self, d: &Domain, code: u32) -> u32 {
        match d {
            Domain::Dict(dict) => {
                let cache = self.dict_cache.entry(dict.id()).or_insert_with(|| vec![u32::MAX; dict.len() + 1]);
                let cached = cache.get(code as usize).copied().unwrap_or(u32::MAX);
                if cached != u32::MAX {
                    return cached;
                }
                let id = match dict.value(code) {
                    Some(s) => self.intern_str(s),
                    None => self.intern(Scalar::Null),
                };
                if let Some(slot) = self.dict_cache.get_mut(&dict.id()).and_then(|c| c.get_mut(code as usize)) {
                    *slot = id;
                }
                id
            }
            Domain::IntRange { base, ts } => {
                let s = if code == 0 {
                    Scalar::Null
                } else {
                    let v = base + i64::from(code) - 1;
                    if *ts { Scalar::Ts(v) } else { Scalar::Int(v) }
                };
                self.intern(s)
            }
            Domain::Values(vals) => {
                let s = (code as usize).checked_sub(1).and_then(|i| vals.get(i)).cloned().unwrap_or(Scalar::Null);
                self.intern(s)
            }
        }
    }

    /// Translates `codes[offset], codes[offset + stride], …` into
    /// `out` at the same positions, fetching a dictionary's cache once.
    pub(crate) fn translate_strided(
        &mut self,
        d: &Domain,
        codes: &[u32],
        offset: usize,
        stride: usize,
        out: &mut [u32],
    ) {
        if let Domain::Dict(dict) = d {
            let id = dict.id();
            let mut cache = self.dict_cache.remove(&id).unwrap_or_else(|| vec![u32::MAX; dict.len() + 1]);
            for i in (offset..codes.len()).step_by(stride) {
                let c = codes[i] as usize;
                let Some(slot) = cache.get_mut(c) else { continue };
                if *slot == u32::MAX {
                    *slot = match dict.value(c as u32) {
                        Some(s) => self.intern_str(s),
                        None => self.intern(Scalar::Null),
                    };
                }
                out[i] = *slot;
            }
            self.dict_cache.insert(id, cache);
            return;
        }
        for i in (offset..codes.len()).step_by(stride) {
            out[i] = self.translate(d, codes[i]);
        }
    }

    fn approx_bytes(&self) -> usize {
        self.bytes + self.dict_cache.values().map(|c| c.len() * 4).sum::<usize>()
    }
}

/// One block's aggregation result.
pub(crate) struct Partial {
    pub domains: Vec<Domain>,
    pub grouping: Grouping,
    pub states: Vec<State>,
}

/// A block's partial from [`adstore_storage::count_block`]: one group per
/// non-empty cell, every aggregate a `count(*)`. `enum_names[j]` names
/// the codes of key `j` when it is an enum column.
pub(crate) fn counted_partial(
    c: adstore_storage::CodeCounts,
    enum_names: &[&'static [&'static str]],
    naggs: usize,
) -> Partial {
    let k = c.cards.len();
    let domains: Vec<Domain> = c
        .dicts
        .into_iter()
        .zip(enum_names)
        .map(|(d, names)| match d {
            Some(dict) => Domain::Dict(DictRef::Segment(dict)),
            None => Domain::Dict(DictRef::Static(names)),
        })
        .collect();
    // Enum codes start at 0; the static dictionary's at 1 (0 is NULL).
    let shift: Vec<u32> = domains.iter().map(|d| u32::from(matches!(d, Domain::Dict(DictRef::Static(_))))).collect();
    let mut codes = Vec::new();
    let mut counts = Vec::new();
    let mut key = vec![0u32; k];
    for (cell, &n) in c.counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let mut rest = cell;
        for j in (0..k).rev() {
            key[j] = (rest % c.cards[j]) as u32 + shift[j];
            rest /= c.cards[j];
        }
        codes.extend_from_slice(&key);
        counts.push(i64::from(n));
    }
    let grouping = Grouping { gid: Vec::new(), ngroups: counts.len(), codes, runs: None };
    let states = (0..naggs).map(|_| State::Count(counts.clone())).collect();
    Partial { domains, grouping, states }
}

/// Global groups by their keys' global ids: packed into a u64 for up to
/// two keys (no allocation, no slice compare), else boxed.
enum GroupMap {
    Packed(FxMap<u64, u32>),
    Wide(FxMap<Box<[u32]>, u32>),
}

fn pack(ids: &[u32]) -> u64 {
    ids.iter().enumerate().fold(0u64, |acc, (i, id)| acc | (u64::from(*id) << (32 * i)))
}

/// Merges block partials into global groups.
pub(crate) struct AggMerger {
    k: usize,
    key_types: Vec<DataType>,
    interners: Vec<Interner>,
    groups: GroupMap,
    merges: u64,
    group_keys: Vec<u32>,
    ngroups: usize,
    states: Vec<State>,
    max_groups: usize,
    max_bytes: usize,
}

fn grow<T: Clone>(v: &mut Vec<T>, n: usize, fill: T) {
    if v.len() < n {
        v.resize(n, fill);
    }
}

impl AggMerger {
    pub(crate) fn new(key_types: Vec<DataType>, specs: &[AggSpec], max_groups: usize, max_bytes: usize) -> AggMerger {
        let states = specs
            .iter()
            .map(|s| {
                let ty = s.arg.as_ref().map(|a| a.ty()).unwrap_or(DataType::Int);
                match s.func {
                    AggFunc::CountStar | AggFunc::Count => State::Count(Vec::new()),
                    AggFunc::Sum if ty == DataType::Float => State::SumFloat { sum: Vec::new(), seen: Vec::new() },
                    AggFunc::Sum => State::SumInt { sum: Vec::new(), seen: Vec::new() },
                    AggFunc::Avg if ty == DataType::Float => State::AvgFloat { sum: Vec::new(), count: Vec::new() },
                    AggFunc::Avg => State::AvgInt { sum: Vec::new(), count: Vec::new() },
                    AggFunc::Min | AggFunc::Max => {
                        let max = s.func == AggFunc::Max;
                        match ty {
                            DataType::Float => State::MinMaxFloat { v: Vec::new(), seen: Vec::new(), max },
                            DataType::Str => State::MinMaxStr { v: Vec::new(), max },
                            _ => State::MinMaxInt { v: Vec::new(), seen: Vec::new(), max },
                        }
                    }
                    AggFunc::CountDistinct => {
                        State::DistinctGlobal { interner: Box::default(), set: HashSet::default(), counts: Vec::new() }
                    }
                    AggFunc::ApproxDistinct => State::ApproxGlobal(Vec::new()),
                }
            })
            .collect();
        let k = key_types.len();
        AggMerger {
            k,
            interners: (0..k).map(|_| Interner::default()).collect(),
            key_types,
            groups: if k <= 2 { GroupMap::Packed(FxMap::default()) } else { GroupMap::Wide(FxMap::default()) },
            merges: 0,
            group_keys: Vec::new(),
            ngroups: 0,
            states,
            max_groups,
            max_bytes,
        }
    }

    pub(crate) fn merge(&mut self, p: Partial) -> Result<()> {
        let k = self.k;
        let ng_part = p.grouping.ngroups;
        let mut map = Vec::with_capacity(ng_part);
        if k == 0 {
            if ng_part > 0 {
                self.ngroups = self.ngroups.max(1);
                map.push(0u32);
            }
        } else {
            // Global ids of every partial group's keys, one key column at a time.
            let mut ids = vec![0u32; ng_part * k];
            for (j, interner) in self.interners.iter_mut().enumerate() {
                interner.translate_strided(&p.domains[j], &p.grouping.codes, j, k, &mut ids);
            }
            for g in 0..ng_part {
                let key = &ids[g * k..(g + 1) * k];
                let found = match &self.groups {
                    GroupMap::Packed(m) => m.get(&pack(key)).copied(),
                    GroupMap::Wide(m) => m.get(key).copied(),
                };
                let id = match found {
                    Some(id) => id,
                    None => {
                        if self.ngroups >= self.max_groups {
                            return Err(QueryError::TooManyGroups { max_groups: self.max_groups });
                        }
                        let id = self.ngroups as u32;
                        self.ngroups += 1;
                        match &mut self.groups {
                            GroupMap::Packed(m) => {
                                m.insert(pack(key), id);
                            }
                            GroupMap::Wide(m) => {
                                m.insert(key.to_vec().into_boxed_slice(), id);
                            }
                        }
                        self.group_keys.extend_from_slice(key);
                        id
                    }
                };
                map.push(id);
            }
        }
        let ng = self.ngroups;
        for (global, part) in self.states.iter_mut().zip(p.states) {
            merge_state(global, part, &map, ng)?;
        }
        // Memory is estimated now and then: the estimate walks every group.
        self.merges += 1;
        if self.merges.is_multiple_of(16) || ng_part > 4096 {
            self.check_memory()?;
        }
        Ok(())
    }

    pub(crate) fn check_memory(&self) -> Result<()> {
        if self.approx_bytes() > self.max_bytes {
            return Err(QueryError::MemoryLimit { max_bytes: self.max_bytes });
        }
        Ok(())
    }

    fn approx_bytes(&self) -> usize {
        let per_group = self.k * 4 + 48;
        let mut total = self.ngroups * per_group + self.interners.iter().map(Interner::approx_bytes).sum::<usize>();
        for s in &self.states {
            total += match s {
                State::DistinctGlobal { interner, set, .. } => interner.approx_bytes() + set.capacity() * 12,
                State::ApproxGlobal(h) => h.iter().map(Hll::approx_bytes).sum(),
                State::MinMaxStr { v, .. } => v.iter().map(|s| s.as_ref().map_or(8, |s| s.len() + 24)).sum(),
                _ => self.ngroups * 16,
            };
        }
        total
    }

    /// Key vectors (by key) and aggregate vectors (by aggregate), group by
    /// group. With no keys and no rows, one group (SQL: `count(*)` of
    /// nothing is one row with 0).
    pub(crate) fn finish(mut self) -> Result<(usize, Vec<Vector<'static>>)> {
        self.check_memory()?;
        if self.k == 0 && self.ngroups == 0 {
            self.ngroups = 1;
        }
        let ng = self.ngroups;
        let mut cols = Vec::with_capacity(self.k + self.states.len());
        for j in 0..self.k {
            let vals: Vec<&Scalar> =
                (0..ng).map(|g| &self.interners[j].values[self.group_keys[g * self.k + j] as usize]).collect();
            cols.push(vector_of(&vals, self.key_types[j]));
        }
        for s in self.states {
            cols.push(finish_state(s, ng)?);
        }
        Ok((ng, cols))
    }
}

/// A vector of type `ty` holding `vals`.
pub(crate) fn vector_of(vals: &[&Scalar], ty: DataType) -> Vector<'static> {
    let nv: Vec<bool> = vals.iter().map(|s| !s.is_null()).collect();
    let nv = if nv.iter().all(|v| *v) { None } else { Some(nv) };
    match ty {
        DataType::Int | DataType::Timestamp => Vector::Int(
            Cow::Owned(vals.iter().map(|s| if let Scalar::Int(i) | Scalar::Ts(i) = s { *i } else { 0 }).collect()),
            nv,
        ),
        DataType::Float => Vector::Float(
            Cow::Owned(vals.iter().map(|s| if let Scalar::Float(f) = s { *f } else { 0.0 }).collect()),
            nv,
        ),
        DataType::Bool => Vector::Bool(Cow::Owned(vals.iter().map(|s| matches!(s, Scalar::Bool(true))).collect()), nv),
        DataType::Str => {
            Vector::Plain(vals.iter().map(|s| if let Scalar::Str(s) = s { Some(&**s) } else { None }).collect())
        }
        DataType::Null => Vector::Const(Scalar::Null),
    }
}

fn merge_state(global: &mut State, part: State, map: &[u32], ng: usize) -> Result<()> {
    let mismatch = || QueryError::Internal("aggregate state kinds differ".into());
    match (global, part) {
        (State::Count(g), State::Count(p)) => {
            grow(g, ng, 0);
            for (i, c) in p.into_iter().enumerate() {
                g[map[i] as usize] += c;
            }
        }
        (State::SumInt { sum, seen }, State::SumInt { sum: ps, seen: pn }) => {
            grow(sum, ng, 0);
            grow(seen, ng, false);
            for (i, (s, n)) in ps.into_iter().zip(pn).enumerate() {
                let gi = map[i] as usize;
                sum[gi] += s;
                seen[gi] |= n;
            }
        }
        (State::SumFloat { sum, seen }, State::SumFloat { sum: ps, seen: pn }) => {
            grow(sum, ng, 0.0);
            grow(seen, ng, false);
            for (i, (s, n)) in ps.into_iter().zip(pn).enumerate() {
                let gi = map[i] as usize;
                sum[gi] += s;
                seen[gi] |= n;
            }
        }
        (State::AvgInt { sum, count }, State::AvgInt { sum: ps, count: pc }) => {
            grow(sum, ng, 0);
            grow(count, ng, 0);
            for (i, (s, c)) in ps.into_iter().zip(pc).enumerate() {
                let gi = map[i] as usize;
                sum[gi] += s;
                count[gi] += c;
            }
        }
        (State::AvgFloat { sum, count }, State::AvgFloat { sum: ps, count: pc }) => {
            grow(sum, ng, 0.0);
            grow(count, ng, 0);
            for (i, (s, c)) in ps.into_iter().zip(pc).enumerate() {
                let gi = map[i] as usize;
                sum[gi] += s;
                count[gi] += c;
            }
        }
        (State::MinMaxInt { v, seen, max }, State::MinMaxInt { v: pv, seen: pn, .. }) => {
            grow(v, ng, 0);
            grow(seen, ng, false);
            for (i, (x, n)) in pv.into_iter().zip(pn).enumerate() {
                let gi = map[i] as usize;
                if n && (!seen[gi] || (if *max { x > v[gi] } else { x < v[gi] })) {
                    v[gi] = x;
                    seen[gi] = true;
                }
            }
        }
        (State::MinMaxFloat { v, seen, max }, State::MinMaxFloat { v: pv, seen: pn, .. }) => {
            grow(v, ng, 0.0);
            grow(seen, ng, false);
            for (i, (x, n)) in pv.into_iter().zip(pn).enumerate() {
                let gi = map[i] as usize;
                if n && (!seen[gi] || (if *max { x > v[gi] } else { x < v[gi] })) {
                    v[gi] = x;
                    seen[gi] = true;
                }
            }
        }
        (State::MinMaxStr { v, max }, State::MinMaxStr { v: pv, .. }) => {
            grow(v, ng, None);
            for (i, x) in pv.into_iter().enumerate() {
                let gi = map[i] as usize;
                if let Some(x) = x {
                    let better = match &v[gi] {
                        None => true,
                        Some(cur) => {
                            if *max {
                                x > *cur
                            } else {
                                x < *cur
                            }
                        }
                    };
                    if better {
                        v[gi] = Some(x);
                    }
                }
            }
        }
        (State::DistinctGlobal { interner, set, .. }, State::DistinctPartial { pairs, domain }) => {
            for (g, c) in pairs {
                let id = interner.translate(&domain, c);
                set.insert((map[g as usize], id));
            }
        }
        (State::ApproxGlobal(h), State::ApproxPartial(pairs)) => {
            grow(h, ng, Hll::default());
            for (g, hash) in pairs {
                h[map[g as usize] as usize].insert_hash(hash);
            }
        }
        _ => return Err(mismatch()),
    }
    Ok(())
}

fn finish_state(s: State, ng: usize) -> Result<Vector<'static>> {
    let overflow = || QueryError::Overflow { what: "sum" };
    Ok(match s {
        State::Count(mut c) => {
            grow(&mut c, ng, 0);
            Vector::Int(Cow::Owned(c), None)
        }
        State::SumInt { mut sum, mut seen } => {
            grow(&mut sum, ng, 0);
            grow(&mut seen, ng, false);
            let vals = sum.iter().map(|s| i64::try_from(*s).map_err(|_| overflow())).collect::<Result<Vec<_>>>()?;
            Vector::Int(Cow::Owned(vals), Some(seen))
        }
        State::SumFloat { mut sum, mut seen } => {
            grow(&mut sum, ng, 0.0);
            grow(&mut seen, ng, false);
            Vector::Float(Cow::Owned(sum), Some(seen))
        }
        State::AvgInt { mut sum, mut count } => {
            grow(&mut sum, ng, 0);
            grow(&mut count, ng, 0);
            let vals = sum.iter().zip(&count).map(|(s, c)| if *c > 0 { *s as f64 / *c as f64 } else { 0.0 }).collect();
            Vector::Float(Cow::Owned(vals), Some(count.iter().map(|c| *c > 0).collect()))
        }
        State::AvgFloat { mut sum, mut count } => {
            grow(&mut sum, ng, 0.0);
            grow(&mut count, ng, 0);
            let vals = sum.iter().zip(&count).map(|(s, c)| if *c > 0 { *s / *c as f64 } else { 0.0 }).collect();
            Vector::Float(Cow::Owned(vals), Some(count.iter().map(|c| *c > 0).collect()))
        }
        State::MinMaxInt { mut v, mut seen, .. } => {
            grow(&mut v, ng, 0);
            grow(&mut seen, ng, false);
            Vector::Int(Cow::Owned(v), Some(seen))
        }
        State::MinMaxFloat { mut v, mut seen, .. } => {
            grow(&mut v, ng, 0.0);
            grow(&mut seen, ng, false);
            Vector::Float(Cow::Owned(v), Some(seen))
        }
        State::MinMaxStr { mut v, .. } => {
            grow(&mut v, ng, None);
            Vector::Plain(v.iter().map(|s| s.as_deref()).collect())
        }
        State::DistinctGlobal { set, mut counts, .. } => {
            counts.clear();
            counts.resize(ng, 0);
            for (g, _) in set {
                counts[g as usize] += 1;
            }
            Vector::Int(Cow::Owned(counts), None)
        }
        State::ApproxGlobal(mut h) => {
            grow(&mut h, ng, Hll::default());
            Vector::Int(Cow::Owned(h.iter().map(Hll::estimate).collect()), None)
        }
        State::DistinctPartial { .. } | State::ApproxPartial(_) => {
            return Err(QueryError::Internal("partial state left unmerged".into()));
        }
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Rows of a block: group id, value, NULL or not, selected or not.
    fn any_rows() -> impl Strategy<Value = Vec<(u32, i64, bool, bool)>> {
        let value = prop_oneof![-5i64..5, Just(i64::MAX), Just(i64::MIN), any::<i64>()];
        prop::collection::vec((0u32..6, value, any::<bool>(), any::<bool>()), 0..40)
    }

    proptest! {
                /// The lane-split totals and the i64/i128 choice agree with a
                /// plain i128 loop, with NULLs, selections and extreme values.
                #[test]
                fn int_sums_match_a_plain_loop(rows in any_rows(), with_nulls: bool, with_sel: bool) {
                    let ng = 6;
                    let gid: Vec<u32> = rows.iter().map(|r| r.0).collect();
                    let x: Vec<i64> = rows.iter().map(|r| r.1).collect();
                    let nv: Validity = with_nulls.then(|| rows.iter().map(|r| r.2).collect());
                    let sel: Option<Vec<u32>> =
                        with_sel.then(|| (0..rows.len() as u32).filter(|&i| rows[i as usize].3).collect());
                    let mut want_sum = vec![0i128; ng];
                    let mut want_count = vec![0i64; ng];
                    for r in &rows {
                        if (!with_sel || r.3) && (!with_nulls || r.2) {
                            want_sum[r.0 as usize] += i128::from(r.1);
                            want_count[r.0 as usize] += 1;
                        }
                    }
                    let g = Grouping { gid: gid.clone(), ngroups: ng, codes: Vec::new(), runs: runs_of(&gid) };
                    let (sum, counts) = int_sums(&x, &nv, &g, sel.as_deref());
                    prop_assert_eq!(sum, want_sum);
                    match counts {
                        Some(c) => prop_assert_eq!(c, want_count),
                        None => prop_assert!(!with_nulls && !with_sel),
                    }
                    let big: Vec<u32> = gid.iter().map(|g| g * 1000).collect();
                    let big = Grouping { gid: big, ngroups: 6000, codes: Vec::new(), runs: None };
                    let totals = group_totals(&big, rows.len(), sel.as_deref(), |i| i128::from(x[i]));
                    let by_group: Vec<i128> = (0..ng).map(|g| totals[g * 1000]).collect();
                    let mut want_all = vec![0i128; ng];
                    for (i, r) in rows.iter().enumerate() {
                        if !with_sel || r.3 {
                            want_all[r.0 as usize] += i128::from(x[i]);
                        }
                    }
                    prop_assert_eq!(by_group, want_all, "more groups than the lanes are for");
                }

                /// Totals taken run by run, and conditional counts taken by
                /// comparing codes, agree with a plain loop over the rows.
                #[test]
                fn run_totals_and_code_counts_match_a_plain_loop(
                    runs in prop::collection::vec((0u32..5, 1usize..60), 1..12),
                    codes_seed in prop::collection::vec(0u32..6, 1..64),
                    hits in prop::collection::vec(any::<bool>(), 6),
                    a in -3i64..4,
                ) {
                    let gid: Vec<u32> = runs.iter().flat_map(|&(g, len)| std::iter::repeat_n(g, len)).collect();
                    let n = gid.len();
                    let codes: Vec<u32> = (0..n).map(|i| codes_seed[i % codes_seed.len()]).collect();
                    let x: Vec<i64> = (0..n as i64).map(|i| i * 7 - 50).collect();
                    let g = Grouping { gid: gid.clone(), ngroups: 5, codes: Vec::new(), runs: runs_of(&gid) };
                    let mut want_sum = vec![0i64; 5];
                    let mut want_hits = vec![0i64; 5];
                    for i in 0..n {
                        want_sum[gid[i] as usize] += x[i];
                        if hits[codes[i] as usize] {
                            want_hits[gid[i] as usize] += a;
                        }
                    }
                    prop_assert_eq!(group_totals(&g, n, None, |i| x[i]), want_sum);
                    prop_assert_eq!(const_sum_by_code(&g, n, None, &codes, &hits, a), want_hits);
                    if let Some(r) = &g.runs {
                        prop_assert_eq!(r.last().map(|r| r.end as usize), Some(n));
                        prop_assert!(r.windows(2).all(|w| w[0].end < w[1].end));
                    }
                }

            /// One key column, in runs or not: rows share a group id exactly
            /// when they share a code, and each group records its code.
            #[test]
            fn one_key_groups_rows_by_code(
                runs in prop::collection::vec((0u32..7, 1usize..40), 1..60),
            ) {
                let codes: Vec<u32> = runs.iter().flat_map(|&(c, len)| std::iter::repeat_n(c, len)).collect();
                let n = codes.len();
                let key = KeyCol { codes: codes.clone(), domain: Domain::IntRange { base: 0, ts: false }, card: 7, constant: false };
                let g = group(&[key], n, 1000).expect("group");
                prop_assert_eq!(g.gid.len(), n);
                for (gid, code) in g.gid.iter().zip(&codes) {
                    prop_assert_eq!(g.codes[*gid as usize], *code);
                }
                let distinct: std::collections::HashSet<u32> = codes.iter().copied().collect();
                prop_assert_eq!(g.ngroups, distinct.len());
            }
    }
}
