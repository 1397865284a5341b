//! Vectors → Arrow arrays, and ORDER BY over Arrow arrays with top-N.
//!
//! With a LIMIT, only `offset + limit` rows are ordered: a quickselect
//! (`select_nth_unstable_by`) partitions them off in linear time, then only
//! they are sorted.

use std::cmp::Ordering;
use std::sync::Arc;

use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, NullArray, StringArray, TimestampMillisecondArray,
};
use arrow_schema::DataType as ArrowType;

use crate::error::{QueryError, Result};
use crate::expr::{Vector, bools, floats, ints};
use crate::types::DataType;

fn nulls(nv: &Option<Vec<bool>>) -> Option<arrow_buffer::NullBuffer> {
    nv.as_ref().map(|v| arrow_buffer::NullBuffer::from(v.clone()))
}

/// The Arrow array of a vector of type `ty` with `n` rows.
pub(crate) fn to_arrow(v: &Vector<'_>, ty: DataType, n: usize) -> Result<ArrayRef> {
    Ok(match ty {
        DataType::Null => Arc::new(NullArray::new(n)),
        DataType::Int => {
            let (x, nv) = ints(v, n)?;
            Arc::new(Int64Array::new(x.to_vec().into(), nulls(&nv)))
        }
        DataType::Timestamp => {
            let (x, nv) = ints(v, n)?;
            Arc::new(TimestampMillisecondArray::new(x.to_vec().into(), nulls(&nv)).with_timezone("UTC"))
        }
        DataType::Float => {
            let (x, nv) = floats(v, n)?;
            Arc::new(Float64Array::new(x.to_vec().into(), nulls(&nv)))
        }
        DataType::Bool => {
            let (x, nv) = bools(v, n)?;
            Arc::new(BooleanArray::new(x.iter().copied().collect(), nulls(&nv)))
        }
        DataType::Str => match v {
            Vector::Plain(a) => Arc::new(a.clone()),
            other => Arc::new((0..n).map(|i| other.str_at(i)).collect::<StringArray>()),
        },
    })
}

enum Col<'a> {
    I64(&'a [i64]),
    F64(&'a [f64]),
    Str(&'a StringArray),
    Bool(&'a BooleanArray),
    Null,
}

struct Key<'a> {
    col: Col<'a>,
    array: &'a dyn Array,
    desc: bool,
    nulls_first: bool,
}

impl Key<'_> {
    fn cmp(&self, i: usize, j: usize) -> Ordering {
        let (ni, nj) = (self.array.is_null(i), self.array.is_null(j));
        match (ni, nj) {
            (true, true) => return Ordering::Equal,
            (true, false) => return if self.nulls_first { Ordering::Less } else { Ordering::Greater },
            (false, true) => return if self.nulls_first { Ordering::Greater } else { Ordering::Less },
            _ => {}
        }
        let o = match &self.col {
            Col::I64(v) => v[i].cmp(&v[j]),
            Col::F64(v) => v[i].total_cmp(&v[j]),
            Col::Str(a) => a.value(i).cmp(a.value(j)),
            Col::Bool(a) => a.value(i).cmp(&a.value(j)),
            Col::Null => Ordering::Equal,
        };
        if self.desc { o.reverse() } else { o }
    }
}

/// Row indices in ORDER BY order; only the first `keep` when given.
pub(crate) fn order(keys: &[(ArrayRef, bool, bool)], n: usize, keep: Option<usize>) -> Result<Vec<u32>> {
    let keys = keys
        .iter()
        .map(|(a, desc, nulls_first)| {
            let col = match a.data_type() {
                ArrowType::Int64 => Col::I64(
                    a.as_any()
                        .downcast_ref::<arrow_array::PrimitiveArray<Int64Type>>()
                        .map(|x| x.values().as_ref())
                        .unwrap_or(&[]),
                ),
                ArrowType::Timestamp(..) => Col::I64(
                    a.as_any()
                        .downcast_ref::<arrow_array::PrimitiveArray<TimestampMillisecondType>>()
                        .map(|x| x.values().as_ref())
                        .unwrap_or(&[]),
                ),
                ArrowType::Float64 => Col::F64(
                    a.as_any()
                        .downcast_ref::<arrow_array::PrimitiveArray<Float64Type>>()
                        .map(|x| x.values().as_ref())
                        .unwrap_or(&[]),
                ),
                ArrowType::Utf8 => match a.as_any().downcast_ref::<StringArray>() {
                    Some(s) => Col::Str(s),
                    None => return Err(QueryError::Internal("string sort key is not a StringArray".into())),
                },
                ArrowType::Boolean => match a.as_any().downcast_ref::<BooleanArray>() {
                    Some(s) => Col::Bool(s),
                    None => return Err(QueryError::Internal("bool sort key is not a BooleanArray".into())),
                },
                _ => Col::Null,
            };
            if let Col::I64(v) = &col
                && v.len() != n
            {
                return Err(QueryError::Internal("sort key of the wrong length".into()));
            }
            if let Col::F64(v) = &col
                && v.len() != n
            {
                return Err(QueryError::Internal("sort key of the wrong length".into()));
            }
            Ok(Key { col, array: a.as_ref(), desc: *desc, nulls_first: *nulls_first })
        })
        .collect::<Result<Vec<_>>>()?;
    let cmp = |a: &u32, b: &u32| {
        for k in &keys {
            let o = k.cmp(*a as usize, *b as usize);
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    };
    let mut idx: Vec<u32> = (0..n as u32).collect();
    match keep {
        Some(k) if k < n => {
            if k == 0 {
                return Ok(Vec::new());
            }
            idx.select_nth_unstable_by(k - 1, cmp);
            idx.truncate(k);
            idx.sort_by(cmp);
        }
        _ => idx.sort_by(cmp),
    }
    Ok(idx)
}
