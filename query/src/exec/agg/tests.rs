use proptest::prelude::*;

use super::group::{KeyCol, runs_of};
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

/// Keys that share a prefix (user keys, ids) spread over the low bits of
/// their hashes, which pick a table's buckets: the version-1 FxHash
/// algorithm left those bits to a string's first bytes, and grouping by
/// such keys crawled down a few long chains.
#[test]
fn strings_sharing_a_prefix_spread_over_buckets() {
    use std::hash::BuildHasher;
    let build = FxBuild::default();
    let low: std::collections::HashSet<u64> =
        (0..4096).map(|n| build.hash_one(format!("u{n:07}").as_str()) & 0xfff).collect();
    assert!(low.len() > 2048, "4096 keys fell into {} of 4096 buckets", low.len());
}
