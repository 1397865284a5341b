//! A small HyperLogLog for `approx_count_distinct`: 2^14 registers
//! (standard error about 0.8%), a sparse form for small sets, linear
//! counting for small cardinalities. Values are hashed with xxh3 over their
//! bytes, so the same string gives the same hash whether it came from a
//! segment dictionary or from the head, and sketches of disjoint parts
//! merge into exactly the sketch of the whole.

const P: u32 = 14;
const M: usize = 1 << P;
/// Sparse entries kept before switching to registers.
const SPARSE_MAX: usize = M / 8;

#[derive(Debug, Clone)]
pub(crate) enum Hll {
    /// `(index << 6) | rank`, unsorted, possibly with repeats.
    Sparse(Vec<u32>),
    Dense(Box<[u8]>),
}

impl Default for Hll {
    fn default() -> Self {
        Hll::Sparse(Vec::new())
    }
}

pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(b)
}

fn split(h: u64) -> (usize, u8) {
    let idx = (h >> (64 - P)) as usize;
    let w = (h << P) | (1 << (P - 1));
    (idx, (w.leading_zeros() + 1) as u8)
}

impl Hll {
    pub(crate) fn insert_hash(&mut self, h: u64) {
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
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn merge(&mut self, other: &Hll) {
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

    pub(crate) fn approx_bytes(&self) -> usize {
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
    pub(crate) fn estimate(&self) -> i64 {
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
            let err = (whole.estimate() - n as i64).abs() as f64;
            assert!(err <= (n as f64 * 0.02).max(1.0), "n={n} est={}", whole.estimate());
        }
    }
}
