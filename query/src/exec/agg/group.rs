//! Rows to group ids: each key column as codes ([`KeyCol`]), then one
//! group id per row ([`group`]), by a dense table when the code space is
//! small, else by a hash of the packed codes; runs of one group noted.

use super::*;

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

pub(super) fn float_key(f: f64) -> u64 {
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
pub(super) fn runs_of(gid: &[u32]) -> Option<Vec<Run>> {
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
pub(super) fn run_spans(runs: &[Run], n: usize) -> impl Iterator<Item = (std::ops::Range<usize>, usize)> + '_ {
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
