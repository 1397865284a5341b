//! The id index against a plain scan of the same values: every granule
//! holding a value is found, and no other.

use std::collections::BTreeSet;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use arrow_array::StringArray;
use proptest::prelude::*;

use super::{IdIndex, SectionBytes, build};

/// A section in memory, as the segment writer lays it out.
#[derive(Debug)]
struct Section(Vec<u8>);

impl SectionBytes for Section {
    fn read(&self, range: Range<u64>) -> io::Result<Vec<u8>> {
        self.0
            .get(range.start as usize..range.end as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::other("outside the section"))
    }
}

/// Builds the index of `rows` (each row: five optional ids) stored in
/// `perm` order, and opens it from one packed section.
fn index_of(rows: &[[Option<String>; 5]], perm: &[u32], granule_rows: u32, commit_every: usize) -> IdIndex {
    let columns: Vec<StringArray> =
        (0..5).map(|c| rows.iter().map(|r| r[c].as_deref()).collect::<StringArray>()).collect();
    let refs: Vec<&StringArray> = columns.iter().collect();
    let built = build(&refs, perm, granule_rows, commit_every).expect("build");
    let mut section = Vec::new();
    let mut files = Vec::new();
    for (name, bytes) in built.files {
        let start = section.len() as u64;
        section.extend_from_slice(&bytes);
        files.push((name, start..section.len() as u64));
    }
    IdIndex::open(&files, built.granule_rows, Arc::new(Section(section))).expect("open")
}

/// The granules whose stored rows hold `value` in any id column.
fn oracle(rows: &[[Option<String>; 5]], perm: &[u32], granule_rows: u32, value: &str) -> BTreeSet<u32> {
    perm.iter()
        .enumerate()
        .filter(|(_, input)| rows[**input as usize].iter().any(|v| v.as_deref() == Some(value)))
        .map(|(stored, _)| stored as u32 / granule_rows)
        .collect()
}

fn id() -> impl Strategy<Value = Option<String>> {
    // A small pool, so values repeat across rows, columns and granules;
    // odd characters, because ids are any string.
    prop_oneof![
        3 => (0u32..40).prop_map(|i| Some(format!("id-{i}"))),
        1 => Just(Some("a:b\0c\n日本".to_string())),
        1 => Just(Some("12:x".to_string())),
        1 => Just(None),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn lookups_find_every_granule_holding_a_value_and_no_other(
        (rows, perm) in prop::collection::vec(prop::array::uniform5(id()), 1..300).prop_flat_map(|rows| {
            let n = rows.len() as u32;
            (Just(rows), Just((0..n).collect::<Vec<u32>>()).prop_shuffle())
        }),
        granule_rows in 1u32..40,
        commit_every in prop_oneof![Just(usize::MAX), 1usize..5],
    ) {
        // Several tantivy segments when commit_every is small.
        let index = index_of(&rows, &perm, granule_rows, commit_every);
        let mut values: Vec<String> = (0u32..42).map(|i| format!("id-{i}")).collect();
        values.extend(["a:b\0c\n日本", "12:x", "x", "id-"].map(String::from));
        for v in &values {
            let got = index.granules(std::slice::from_ref(v)).expect("lookup").expect("indexable");
            let want = oracle(&rows, &perm, granule_rows, v);
            prop_assert_eq!(got.iter().collect::<BTreeSet<_>>(), want, "value {:?}", v);
        }
        // IN: the union of its values' granules.
        let pair = [values[0].clone(), values[41].clone()];
        let got = index.granules(&pair).expect("lookup").expect("indexable");
        let want: BTreeSet<u32> = pair.iter().flat_map(|v| oracle(&rows, &perm, granule_rows, v)).collect();
        prop_assert_eq!(got.iter().collect::<BTreeSet<_>>(), want);
    }
}

#[test]
fn values_without_a_term_leave_the_answer_to_the_rows() {
    let rows = vec![[Some("a".to_string()), None, None, Some(String::new()), None]];
    let index = index_of(&rows, &[0], 4, usize::MAX);
    assert_eq!(index.granules(&[String::new()]).expect("lookup"), None, "empty values are not indexed");
    let long = "x".repeat(tantivy::tokenizer::MAX_TOKEN_LEN + 1);
    assert_eq!(index.granules(&["a".into(), long]).expect("lookup"), None, "nor values longer than a term");
    let found = index.granules(&["a".into()]).expect("lookup").expect("indexable");
    assert_eq!(found.iter().collect::<Vec<_>>(), [0]);
}

#[test]
fn granules_become_row_ranges_cut_at_the_last_row() {
    let rows: Vec<[Option<String>; 5]> = (0..10).map(|i| [Some(format!("e{i}")), None, None, None, None]).collect();
    let perm: Vec<u32> = (0..10).collect();
    let index = index_of(&rows, &perm, 4, 1);
    let granules = index.granules(&["e1".into(), "e9".into()]).expect("lookup").expect("indexable");
    let rows = index.rows_of(&granules, 10);
    assert_eq!(rows.iter().collect::<Vec<_>>(), [0, 1, 2, 3, 8, 9]);
}

#[test]
fn a_damaged_section_is_an_error_not_a_panic() {
    let rows = [[Some("a".to_string()), None, None, None, None]];
    let columns: Vec<StringArray> =
        (0..5).map(|c| rows.iter().map(|r: &[Option<String>; 5]| r[c].as_deref()).collect()).collect();
    let refs: Vec<&StringArray> = columns.iter().collect();
    let built = build(&refs, &[0], 4, usize::MAX).expect("build");
    let mut section = Vec::new();
    let mut files = Vec::new();
    for (name, bytes) in built.files {
        let start = section.len() as u64;
        section.extend(bytes.iter().map(|b| b ^ 0x5a));
        files.push((name, start..section.len() as u64));
    }
    let opened = IdIndex::open(&files, 4, Arc::new(Section(section)));
    assert!(opened.is_err(), "garbled files do not open as an index");
    let truncated = files.iter().map(|(n, r)| (n.clone(), r.start..r.start)).collect::<Vec<_>>();
    assert!(IdIndex::open(&truncated, 4, Arc::new(Section(Vec::new()))).is_err());
}
