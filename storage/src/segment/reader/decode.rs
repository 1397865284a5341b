//! Decoding a block's raw (checked, decompressed) bytes into the rows a
//! read picks: integers bit-packed in place, dictionary codes, plain
//! strings and bytes as Arrow arrays.

use std::ops::Range;
use std::sync::Arc;

use arrow_array::{Array, BinaryArray, StringArray};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer};

use crate::event::ColumnKind;

use super::super::format::{BlockMeta, ColumnMeta, Dec, Encoding, Reason, decode_ints_at, decode_ints_map, packed_len};
use super::super::{ColumnData, Dictionary};

/// Which rows of a block to decode (offsets within the block).
#[derive(Clone, Copy)]
pub(super) enum Pick<'a> {
    /// A run: bit-packed values are read from its start.
    Run(&'a Range<usize>),
    /// These rows, in this order: each bit-packed value is read in place.
    At(&'a [u32]),
}

impl Pick<'_> {
    pub(super) fn len(&self) -> usize {
        match self {
            Pick::Run(r) => r.len(),
            Pick::At(idx) => idx.len(),
        }
    }

    /// Decodes the picked values of an `n`-value integer block into `out`;
    /// returns the bytes the whole block takes.
    fn ints<T: Copy>(&self, raw: &[u8], n: usize, out: &mut Vec<T>, f: impl Fn(i64) -> T) -> Result<usize, Reason> {
        match self {
            Pick::Run(r) => decode_ints_map(raw, n, (*r).clone(), out, f),
            Pick::At(idx) => decode_ints_at(raw, n, idx, out, f),
        }
    }
}

/// Decodes the picked rows of a block's raw (decompressed) bytes; the
/// whole block is still checked to be exactly as long as its encoding says.
/// `dict`: the column's dictionary, for a dictionary-encoded column.
pub(super) fn decode_block(
    meta: &ColumnMeta,
    dict: Option<Arc<Dictionary>>,
    b: &BlockMeta,
    raw: &[u8],
    pick: Pick<'_>,
) -> Result<ColumnData, Reason> {
    let n = b.rows as usize;
    let expect_all = |used: usize| {
        if used == raw.len() { Ok(()) } else { Err(format!("{} trailing bytes", raw.len() - used)) }
    };
    let len = pick.len();
    match (meta.kind, meta.encoding) {
        (ColumnKind::I64, _) => {
            let mut v = Vec::with_capacity(len);
            expect_all(pick.ints(raw, n, &mut v, |x| x)?)?;
            Ok(ColumnData::I64(v))
        }
        (ColumnKind::U8, _) => {
            let mut v = Vec::with_capacity(len);
            expect_all(pick.ints(raw, n, &mut v, |x| x as u8)?)?;
            Ok(ColumnData::U8(v))
        }
        (ColumnKind::Bool, _) => {
            let mut v = Vec::with_capacity(len);
            expect_all(pick.ints(raw, n, &mut v, |x| x != 0)?)?;
            Ok(ColumnData::Bool(v))
        }
        (ColumnKind::Str, Encoding::Dict) => {
            let dict = dict.ok_or_else(|| "dictionary missing".to_string())?;
            let mut codes = Vec::with_capacity(len);
            expect_all(pick.ints(raw, n, &mut codes, |x| x as u32)?)?;
            let max = codes.iter().copied().max().unwrap_or(0);
            if max as usize > dict.len() {
                return Err(format!("code {max} past the dictionary ({} entries)", dict.len()));
            }
            Ok(ColumnData::Dict { codes, dict })
        }
        (ColumnKind::Str, _) => {
            let (offsets, data, nulls) = decode_plain(raw, n)?;
            let all = StringArray::try_new(offsets, data, nulls).map_err(|e| e.to_string())?;
            Ok(ColumnData::Str(picked(all, n, pick)?))
        }
        (ColumnKind::Bytes, _) => {
            let (offsets, data, nulls) = decode_plain(raw, n)?;
            let all = BinaryArray::try_new(offsets, data, nulls).map_err(|e| e.to_string())?;
            Ok(ColumnData::Bytes(picked(all, n, pick)?))
        }
    }
}

/// The picked rows of a whole decoded `n`-row block of strings or bytes.
fn picked<T: arrow_array::types::ByteArrayType>(
    all: arrow_array::GenericByteArray<T>,
    n: usize,
    pick: Pick<'_>,
) -> Result<arrow_array::GenericByteArray<T>, Reason> {
    Ok(match pick {
        Pick::Run(r) if r.len() == n => all,
        Pick::Run(r) => all.slice(r.start, r.len()),
        Pick::At(idx) => {
            if let Some(&i) = idx.iter().find(|&&i| i as usize >= n) {
                return Err(format!("row {i} outside a block of {n}"));
            }
            let take = arrow_array::UInt32Array::from(idx.to_vec());
            let taken = arrow_select::take::take(&all, &take, None).map_err(|e| e.to_string())?;
            taken
                .as_any()
                .downcast_ref::<arrow_array::GenericByteArray<T>>()
                .cloned()
                .ok_or_else(|| "gathered values changed type".to_string())?
        }
    })
}

/// Plain string or bytes block: `null_count u32 | validity bitmap (if
/// null_count > 0) | lengths (integer block) | bytes`, as the offsets,
/// values and validity of an Arrow array (checked by its `try_new`).
fn decode_plain(raw: &[u8], n: usize) -> Result<(OffsetBuffer<i32>, Buffer, Option<NullBuffer>), Reason> {
    let mut d = Dec::new(raw);
    let null_count = d.u32()? as usize;
    if null_count > n {
        return Err(format!("null count {null_count} exceeds {n} rows"));
    }
    let nulls = if null_count > 0 {
        let bits = d.take(packed_len(n, 1))?;
        let nulls = NullBuffer::new(BooleanBuffer::new(Buffer::from_slice_ref(bits), 0, n));
        if nulls.null_count() != null_count {
            return Err("validity bitmap disagrees with the null count".into());
        }
        Some(nulls)
    } else {
        None
    };
    let start = d.pos();
    let mut lengths = Vec::with_capacity(n);
    let used = decode_ints_map(&raw[start..], n, 0..n, &mut lengths, |x| x)?;
    let data = &raw[start + used..];
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0i32);
    let mut total: i64 = 0;
    for len in lengths {
        total = total.saturating_add(len);
        if len < 0 || total > data.len() as i64 || total > i64::from(i32::MAX) {
            return Err("string lengths do not fit the block".into());
        }
        offsets.push(total as i32);
    }
    if total as usize != data.len() {
        return Err(format!("string lengths sum to {total}, block holds {} bytes", data.len()));
    }
    // Invariant: offsets start at 0 and never decrease (lengths are checked >= 0).
    Ok((OffsetBuffer::new(offsets.into()), Buffer::from_slice_ref(data), nulls))
}
