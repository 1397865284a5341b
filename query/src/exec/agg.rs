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
use std::sync::Arc;

use crate::error::{QueryError, Result};
use crate::expr::{Batch, DictRef, Expr, Validity, Vector, bools, eval, floats, ints, true_rows, valid};
use crate::plan::{AggFunc, AggSpec};
use crate::types::{DataType, Scalar};
use adstore_storage::hll::{Hll, hash_bytes};

/// rustc-hash's FxHash: fast for the integer keys of grouping, and (since
/// its version 2) safe for strings too. The version-1 algorithm that was
/// hand-rolled here left a string's low hash bits to its first bytes, so
/// keys sharing a prefix (`u0000001`, `u0000002`, ...) piled into a few
/// buckets, where every lookup compared strings down a long chain.
type FxBuild = rustc_hash::FxBuildHasher;
type FxMap<K, V> = HashMap<K, V, FxBuild>;

mod group;
mod merge;
#[cfg(test)]
mod tests;

pub(crate) use group::{Domain, Grouping, group, key_col};
use group::{float_key, run_spans};
pub(crate) use merge::{AggMerger, Interner, Partial, counted_partial};

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
    /// Per block of a rollup: `(group, stored sketch)` pairs.
    ApproxSketches(Vec<(u32, Hll)>),
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
