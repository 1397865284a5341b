//! A small HyperLogLog for `approx_count_distinct` and the `users`
//! measure of rollups: 2^14 registers (standard error about 0.8%), a sparse
//! form for small sets. Values are hashed with xxh3 over their bytes, so the
//! same string gives the same hash whether it came from a segment
//! dictionary, the head or a rollup, and sketches of disjoint parts merge
//! into exactly the sketch of the whole: a distinct count read from stored
//! sketches equals the one computed from the events they summarize.
//!
//! Stored form ([`Hll::to_bytes`]): a tag byte, then for the sparse form
//! its entries `(index << 6) | rank`, one per index (the highest rank),
//! ascending, each as the LEB128 varint of its difference from the one
//! before (about two bytes an entry); for the dense form the 2^14
//! registers.

const P: u32 = 14;
const M: usize = 1 << P;
/// Sparse entries kept before switching to registers.
const SPARSE_MAX: usize = M / 8;
const TAG_SPARSE: u8 = 0;
const TAG_DENSE: u8 = 1;

#[derive(Debug, Clone)]
pub enum Hll {
    /// `(index << 6) | rank`, unsorted, possibly with repeats.
    Sparse(Vec<u32>),
    Dense(Box<[u8]>),
}

impl Default for Hll {
    fn default() -> Self {
        Hll::Sparse(Vec::new())
    }
}

pub fn hash_bytes(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

fn split(h: u64) -> (usize, u8) {
    let idx = (h >> (64 - P)) as usize;
    let w = (h << P) | (1 << (P - 1));
    (idx, (w.leading_zeros() + 1) as u8)
}

impl Hll {
    pub fn insert_hash(&mut self, h: u64) {
        let (idx, rank) = split(h);
        match self {
            Hll::Dense(r) => r[idx] = r[idx].max(rank),
            Hll::Sparse(v) => {
                v.push(((idx as u32) << 6) | u32::from(rank));
                if v.len() > SPARSE_MAX {
                    self.compact();
                }
            }
        }
    }

    fn compact(&mut self) {
        if let Hll::Sparse(v) = self {
            // Keep the highest rank per index: sort descending, keep the first of each index.
            v.sort_unstable_by(|a, b| b.cmp(a));
            v.dedup_by_key(|e| *e >> 6);
            if v.len() > SPARSE_MAX / 2 {
                let mut r = vec![0u8; M].into_boxed_slice();
                for e in v.iter() {
                    let (i, k) = ((e >> 6) as usize, (e & 63) as u8);
                    r[i] = r[i].max(k);
                }
                *self = Hll::Dense(r);
            }
        }
    }

    /// Adds every value of `other` (used to combine sketches of parts).
    pub fn merge(&mut self, other: &Hll) {
        match other {
            Hll::Sparse(v) => {
                for e in v {
                    let (i, k) = ((e >> 6) as usize, (e & 63) as u8);
                    match self {
                        Hll::Dense(r) => r[i] = r[i].max(k),
                        Hll::Sparse(s) => s.push(*e),
                    }
                }
                if matches!(self, Hll::Sparse(s) if s.len() > SPARSE_MAX) {
                    self.compact();
                }
            }
            Hll::Dense(o) => {
                let mut mine = match std::mem::take(self) {
                    Hll::Dense(r) => r,
                    Hll::Sparse(v) => {
                        let mut r = vec![0u8; M].into_boxed_slice();
                        for e in v {
                            let (i, k) = ((e >> 6) as usize, (e & 63) as u8);
                            r[i] = r[i].max(k);
                        }
                        r
                    }
                };
                for (a, b) in mine.iter_mut().zip(o.iter()) {
                    *a = (*a).max(*b);
                }
                *self = Hll::Dense(mine);
            }
        }
    }

    /// The stored form (see the module docs): canonical, so sketches of
    /// the same values have the same bytes, whichever form each was in.
    /// Sparse while at most `SPARSE_MAX / 2` registers are set.
    pub fn to_bytes(&self) -> Vec<u8> {
        let set: Vec<u32> = match self {
            Hll::Sparse(v) => {
                let mut e = v.clone();
                e.sort_unstable_by(|a, b| b.cmp(a));
                e.dedup_by_key(|x| *x >> 6);
                e.reverse();
                e
            }
            Hll::Dense(r) => {
                r.iter().enumerate().filter(|(_, k)| **k > 0).map(|(i, &k)| ((i as u32) << 6) | u32::from(k)).collect()
            }
        };
        if set.len() <= SPARSE_MAX / 2 {
            let mut out = Vec::with_capacity(1 + 2 * set.len());
            out.push(TAG_SPARSE);
            let mut previous = 0u32;
            for x in set {
                let mut delta = x - previous;
                previous = x;
                while delta >= 0x80 {
                    out.push((delta as u8) | 0x80);
                    delta >>= 7;
                }
                out.push(delta as u8);
            }
            return out;
        }
        let mut out = vec![0u8; 1 + M];
        out[0] = TAG_DENSE;
        for x in set {
            out[1 + (x >> 6) as usize] = (x & 63) as u8;
        }
        out
    }

    /// Reads a stored sketch; `Err` names what is wrong with the bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Hll, String> {
        let max_rank = (64 - P + 1) as u8;
        match bytes.split_first() {
            Some((&TAG_SPARSE, rest)) => {
                let mut entries: Vec<u32> = Vec::new();
                let (mut value, mut delta, mut shift) = (0u32, 0u32, 0u32);
                for &b in rest {
                    if shift > 28 {
                        return Err("sparse sketch varint too long".into());
                    }
                    delta |= u32::from(b & 0x7f) << shift;
                    shift += 7;
                    if b & 0x80 != 0 {
                        continue;
                    }
                    value = value.checked_add(delta).ok_or("sparse sketch entry out of range")?;
                    let (index, rank) = (value >> 6, (value & 63) as u8);
                    if index as usize >= M || rank == 0 || rank > max_rank {
                        return Err(format!("sparse sketch entry {value:#x} out of range"));
                    }
                    if entries.last().is_some_and(|&p: &u32| p >> 6 >= index) {
                        return Err("sparse sketch entries are not ascending".into());
                    }
                    if entries.len() == SPARSE_MAX {
                        return Err("sparse sketch has too many entries".into());
                    }
                    entries.push(value);
                    (delta, shift) = (0, 0);
                }
                if shift != 0 {
                    return Err("sparse sketch ends inside a varint".into());
                }
                Ok(Hll::Sparse(entries))
            }
            Some((&TAG_DENSE, rest)) => {
                if rest.len() != M {
                    return Err(format!("dense sketch of {} bytes, expected {M}", rest.len()));
                }
                if rest.iter().any(|&r| r > max_rank) {
                    return Err("dense sketch register out of range".into());
                }
                Ok(Hll::Dense(rest.into()))
            }
            Some((tag, _)) => Err(format!("unknown sketch tag {tag}")),
            None => Err("empty sketch".into()),
        }
    }

    /// True when no value was inserted.
    pub fn is_empty(&self) -> bool {
        match self {
            Hll::Sparse(v) => v.is_empty(),
            Hll::Dense(r) => r.iter().all(|&k| k == 0),
        }
    }

    pub fn approx_bytes(&self) -> usize {
        match self {
            Hll::Sparse(v) => v.capacity() * 4 + 32,
            Hll::Dense(_) => M + 32,
        }
    }

    /// The estimated number of distinct values, with Ertl's improved
    /// estimator ("New cardinality estimation algorithms for HyperLogLog
    /// sketches", 2017). Unlike the classic raw estimate with a linear
    /// counting switch, it has no bias bump around 2.5 x registers
    /// (about +2.5% at 40k distinct values with 2^14 registers), and needs
    /// no empirical correction tables.
    pub fn estimate(&self) -> i64 {
        // Histogram of register values: c[k] registers hold rank k.
        let q = (64 - P) as usize;
        let mut c = vec![0u64; q + 2];
        match self {
            Hll::Dense(r) => {
                for &x in r.iter() {
                    c[usize::from(x).min(q + 1)] += 1;
                }
            }
            Hll::Sparse(v) => {
                let mut e = v.clone();
                e.sort_unstable_by(|a, b| b.cmp(a));
                e.dedup_by_key(|x| *x >> 6);
                for x in &e {
                    c[((x & 63) as usize).min(q + 1)] += 1;
                }
                c[0] += (M - e.len()) as u64;
            }
        }
        let m = M as f64;
        let mut z = m * tau(1.0 - c[q + 1] as f64 / m);
        for k in (1..=q).rev() {
            z = 0.5 * (z + c[k] as f64);
        }
        z += m * sigma(c[0] as f64 / m);
        let alpha_inf = 1.0 / (2.0 * std::f64::consts::LN_2);
        (alpha_inf * m * m / z).round() as i64
    }
}

fn sigma(mut x: f64) -> f64 {
    if x >= 1.0 {
        return f64::INFINITY;
    }
    let (mut y, mut z) = (1.0, x);
    loop {
        x *= x;
        let before = z;
        z += x * y;
        y += y;
        if z == before {
            return z;
        }
    }
}

fn tau(mut x: f64) -> f64 {
    if x <= 0.0 || x >= 1.0 {
        return 0.0;
    }
    let (mut y, mut z) = (1.0, 1.0 - x);
    loop {
        x = x.sqrt();
        let before = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == before {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_stored_sketches_are_refused() {
        let mut one = Hll::default();
        one.insert_hash(hash_bytes(b"u1"));
        let good = one.to_bytes();
        assert!(Hll::from_bytes(&good).is_ok());
        assert!(Hll::from_bytes(&[]).is_err());
        assert!(Hll::from_bytes(&[9]).is_err());
        assert!(Hll::from_bytes(&[TAG_SPARSE, 0x80]).is_err(), "cut varint");
        assert!(Hll::from_bytes(&[TAG_SPARSE, 0]).is_err(), "rank 0");
        assert!(Hll::from_bytes(&[TAG_SPARSE, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err(), "long varint");
        let twice = [&good[..], &[0u8][..]].concat();
        assert!(Hll::from_bytes(&twice).is_err(), "repeated index");
        assert!(Hll::from_bytes(&[TAG_DENSE, 1, 2]).is_err());
    }

    #[test]
    fn estimates_are_close_and_merge_is_exact() {
        // 40k-45k is where the classic estimator's bias peaks with 2^14 registers.
        for n in [0u64, 1, 10, 100, 1000, 20_000, 40_000, 43_000, 50_000, 200_000] {
            let mut whole = Hll::default();
            let mut a = Hll::default();
            let mut b = Hll::default();
            for i in 0..n {
                let h = hash_bytes(&i.to_le_bytes());
                whole.insert_hash(h);
                if i % 3 == 0 {
                    a.insert_hash(h)
                } else {
                    b.insert_hash(h)
                }
                // Repeats change nothing.
                whole.insert_hash(h);
            }
            a.merge(&b);
            assert_eq!(a.estimate(), whole.estimate(), "n={n}");
            // Stored and read back, merged from stored parts: the same.
            let stored = Hll::from_bytes(&whole.to_bytes()).expect("read back");
            assert_eq!((stored.estimate(), stored.to_bytes()), (whole.estimate(), whole.to_bytes()), "n={n}");
            assert_eq!(a.to_bytes(), whole.to_bytes(), "n={n}: canonical bytes");
            let err = (whole.estimate() - n as i64).abs() as f64;
            assert!(err <= (n as f64 * 0.02).max(1.0), "n={n} est={}", whole.estimate());
        }
    }
}
