//! Partials to global groups: each block's codes translated to global
//! ids once per dictionary entry ([`Interner`], [`AggMerger`]), states
//! merged, and finished into vectors.

use super::*;

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
    /// Per dictionary (by identity): code → global id (`u32::MAX`: not yet
    /// seen), and the dictionary, held so that its address is not reused by
    /// another while the query runs (a head run's dictionary can be
    /// replaced and freed mid-query).
    dict_cache: FxMap<usize, (DictRef, Vec<u32>)>,
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
                let (_, cache) =
                    self.dict_cache.entry(dict.id()).or_insert_with(|| (dict.clone(), vec![u32::MAX; dict.len() + 1]));
                let cached = cache.get(code as usize).copied().unwrap_or(u32::MAX);
                if cached != u32::MAX {
                    return cached;
                }
                let id = match dict.value(code) {
                    Some(s) => self.intern_str(s),
                    None => self.intern(Scalar::Null),
                };
                if let Some(slot) = self.dict_cache.get_mut(&dict.id()).and_then(|(_, c)| c.get_mut(code as usize)) {
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
            let (held, mut cache) =
                self.dict_cache.remove(&id).unwrap_or_else(|| (dict.clone(), vec![u32::MAX; dict.len() + 1]));
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
            self.dict_cache.insert(id, (held, cache));
            return;
        }
        for i in (offset..codes.len()).step_by(stride) {
            out[i] = self.translate(d, codes[i]);
        }
    }

    fn approx_bytes(&self) -> usize {
        self.bytes + self.dict_cache.values().map(|(_, c)| c.len() * 4).sum::<usize>()
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
        (State::ApproxGlobal(h), State::ApproxSketches(sketches)) => {
            grow(h, ng, Hll::default());
            for (g, sketch) in sketches {
                h[map[g as usize] as usize].merge(&sketch);
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
        State::DistinctPartial { .. } | State::ApproxPartial(_) | State::ApproxSketches(_) => {
            return Err(QueryError::Internal("partial state left unmerged".into()));
        }
    })
}
