//! Bound, typed expressions and their vectorized evaluation.
//!
//! The binder (`bind.rs`) turns SQL into [`Expr`] trees whose operand types
//! already agree (it inserts [`Expr::ToFloat`] and types `NULL` literals), so
//! evaluation never guesses. An expression is evaluated over a whole
//! [`Batch`] at once and yields a [`Vector`]:
//!
//! ```text
//!  Batch { rows, cols: [Vector…] } ──eval(expr)──► Vector (one value per row)
//! ```
//!
//! Strings stay dictionary codes wherever possible: a comparison of a
//! dictionary column with a constant is decided once per dictionary entry
//! (binary search in sorted segment dictionaries) and then applied to the
//! codes, so rows are never compared as strings.
//!
//! NULL follows SQL: arithmetic and comparisons with NULL give NULL, `AND` /
//! `OR` / `NOT` are three-valued. Division or modulo by zero gives NULL;
//! integer overflow is an error.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use adstore_storage::Dictionary;
use arrow_array::builder::StringBuilder;
use arrow_array::{Array, StringArray};

use crate::error::{QueryError, Result};
use crate::time::{TimeUnit, date_trunc, time_bucket};
use crate::types::{DataType, Scalar};

mod functions;

pub(crate) use functions::{MathFn, TextFn};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

impl BinOp {
    pub(crate) fn is_comparison(self) -> bool {
        matches!(self, BinOp::Eq | BinOp::NotEq | BinOp::Lt | BinOp::LtEq | BinOp::Gt | BinOp::GtEq)
    }

    /// The operator with its operands swapped (`a < b` ⇔ `b > a`).
    pub(crate) fn flip(self) -> BinOp {
        match self {
            BinOp::Lt => BinOp::Gt,
            BinOp::LtEq => BinOp::GtEq,
            BinOp::Gt => BinOp::Lt,
            BinOp::GtEq => BinOp::LtEq,
            other => other,
        }
    }

    fn holds(self, ord: std::cmp::Ordering) -> bool {
        use std::cmp::Ordering::*;
        match self {
            BinOp::Eq => ord == Equal,
            BinOp::NotEq => ord != Equal,
            BinOp::Lt => ord == Less,
            BinOp::LtEq => ord != Greater,
            BinOp::Gt => ord == Greater,
            BinOp::GtEq => ord != Less,
            _ => false,
        }
    }

    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Eq => "=",
            BinOp::NotEq => "<>",
            BinOp::Lt => "<",
            BinOp::LtEq => "<=",
            BinOp::Gt => ">",
            BinOp::GtEq => ">=",
            BinOp::And => "AND",
            BinOp::Or => "OR",
        }
    }
}

/// A bound expression. `Slot(i, _)` reads column `i` of the batch it is
/// evaluated over (scan columns before aggregation, group keys and
/// aggregate results after).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Slot(usize, DataType),
    Lit(Scalar, DataType),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    ToFloat(Box<Expr>),
    /// Operands have the same type (timestamps mix with integers); the
    /// result type is recorded.
    Bin(BinOp, Box<Expr>, Box<Expr>, DataType),
    IsNull(Box<Expr>, bool),
    /// `e [NOT] IN (values)`; values are coerced to the type of `e`.
    InList(Box<Expr>, Vec<Scalar>, bool),
    Like(Box<Expr>, String, bool),
    /// `CASE WHEN c THEN v … ELSE e END`, all values of the recorded type.
    Case(Vec<(Expr, Expr)>, Box<Expr>, DataType),
    Coalesce(Vec<Expr>, DataType),
    NullIf(Box<Expr>, Box<Expr>),
    TimeBucket(i64, Box<Expr>),
    DateTrunc(TimeUnit, Box<Expr>),
    /// `extract(epoch FROM ts)`: seconds as a float.
    Epoch(Box<Expr>),
    /// `floor`, `ceil`, `round`, `abs` of a number, of its type.
    Math(MathFn, Box<Expr>),
    /// `lower`, `upper` of a string.
    Text(TextFn, Box<Expr>),
    /// `to_timestamp(seconds)`: epoch seconds (a number) as a timestamp.
    FromEpoch(Box<Expr>),
}

impl Expr {
    #[recursive::recursive]
    pub(crate) fn ty(&self) -> DataType {
        match self {
            Expr::Slot(_, t) | Expr::Lit(_, t) | Expr::Bin(_, _, _, t) | Expr::Case(_, _, t) | Expr::Coalesce(_, t) => {
                *t
            }
            Expr::Not(_) | Expr::IsNull(..) | Expr::InList(..) | Expr::Like(..) => DataType::Bool,
            Expr::Neg(e) | Expr::NullIf(e, _) | Expr::Math(_, e) => e.ty(),
            Expr::ToFloat(_) | Expr::Epoch(_) => DataType::Float,
            Expr::TimeBucket(..) | Expr::DateTrunc(..) | Expr::FromEpoch(_) => DataType::Timestamp,
            Expr::Text(..) => DataType::Str,
        }
    }

    /// Calls `f` on every slot this expression reads.
    #[recursive::recursive]
    pub(crate) fn visit_slots(&self, f: &mut impl FnMut(usize)) {
        match self {
            Expr::Slot(i, _) => f(*i),
            other => other.children().into_iter().for_each(|c| c.visit_slots(f)),
        }
    }

    /// The expressions this one is made of.
    pub(crate) fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Slot(..) | Expr::Lit(..) => Vec::new(),
            Expr::Not(e)
            | Expr::Neg(e)
            | Expr::ToFloat(e)
            | Expr::IsNull(e, _)
            | Expr::InList(e, _, _)
            | Expr::Like(e, _, _)
            | Expr::TimeBucket(_, e)
            | Expr::DateTrunc(_, e)
            | Expr::Epoch(e)
            | Expr::Math(_, e)
            | Expr::Text(_, e)
            | Expr::FromEpoch(e) => vec![e],
            Expr::Bin(_, a, b, _) | Expr::NullIf(a, b) => vec![a, b],
            Expr::Case(whens, e, _) => whens.iter().flat_map(|(c, v)| [c, v]).chain([e.as_ref()]).collect(),
            Expr::Coalesce(es, _) => es.iter().collect(),
        }
    }

    pub(crate) fn has_slots(&self) -> bool {
        let mut any = false;
        self.visit_slots(&mut |_| any = true);
        any
    }

    /// Rewrites every slot index with `f`.
    #[recursive::recursive]
    pub(crate) fn map_slots(&mut self, f: &impl Fn(usize) -> usize) {
        match self {
            Expr::Slot(i, _) => *i = f(*i),
            Expr::Lit(..) => {}
            Expr::Not(e)
            | Expr::Neg(e)
            | Expr::ToFloat(e)
            | Expr::IsNull(e, _)
            | Expr::InList(e, _, _)
            | Expr::Like(e, _, _)
            | Expr::TimeBucket(_, e)
            | Expr::DateTrunc(_, e)
            | Expr::Epoch(e)
            | Expr::Math(_, e)
            | Expr::Text(_, e)
            | Expr::FromEpoch(e) => e.map_slots(f),
            Expr::Bin(_, a, b, _) | Expr::NullIf(a, b) => {
                a.map_slots(f);
                b.map_slots(f);
            }
            Expr::Case(whens, e, _) => {
                for (c, v) in whens {
                    c.map_slots(f);
                    v.map_slots(f);
                }
                e.map_slots(f);
            }
            Expr::Coalesce(es, _) => es.iter_mut().for_each(|e| e.map_slots(f)),
        }
    }
}

/// A string dictionary: code 0 is NULL, codes `1..=len` name entries.
#[derive(Debug, Clone)]
pub(crate) enum DictRef {
    /// A segment's sorted dictionary (code order is string order).
    Segment(Arc<Dictionary>),
    /// A fixed list (enum columns `type`, `invalid_reason`); not sorted.
    Static(&'static [&'static str]),
}

impl DictRef {
    pub(crate) fn len(&self) -> usize {
        match self {
            DictRef::Segment(d) => d.len(),
            DictRef::Static(s) => s.len(),
        }
    }

    pub(crate) fn value(&self, code: u32) -> Option<&str> {
        match self {
            DictRef::Segment(d) => d.value(code),
            DictRef::Static(s) => (code as usize).checked_sub(1).and_then(|i| s.get(i)).copied(),
        }
    }

    /// Identity for caches: the same dictionary object gives the same id.
    pub(crate) fn id(&self) -> usize {
        match self {
            DictRef::Segment(d) => Arc::as_ptr(d) as usize,
            DictRef::Static(s) => s.as_ptr() as usize,
        }
    }

    fn sorted(&self) -> bool {
        matches!(self, DictRef::Segment(_))
    }

    /// For sorted dictionaries: the first code whose value is `>= v`
    /// (`> v` when `strict`), in `1..=len+1`.
    fn lower_bound(&self, v: &str, strict: bool) -> u32 {
        let (mut lo, mut hi) = (1u32, self.len() as u32 + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let x = self.value(mid).unwrap_or("");
            let before = if strict { x <= v } else { x < v };
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    fn code_of(&self, v: &str) -> Option<u32> {
        match self {
            DictRef::Segment(d) => d.code_of(v),
            DictRef::Static(s) => s.iter().position(|x| *x == v).map(|i| i as u32 + 1),
        }
    }
}

pub(crate) type Validity = Option<Vec<bool>>;

/// The values of one expression over a batch. Timestamps are `Int`.
#[derive(Debug, Clone)]
pub(crate) enum Vector<'a> {
    /// The same value on every row.
    Const(Scalar),
    Int(Cow<'a, [i64]>, Validity),
    Float(Cow<'a, [f64]>, Validity),
    Bool(Cow<'a, [bool]>, Validity),
    Dict(Cow<'a, [u32]>, DictRef),
    Plain(StringArray),
}

pub(crate) fn valid(v: &Validity, i: usize) -> bool {
    v.as_ref().is_none_or(|v| v[i])
}

/// Rows of a batch: columns by slot, all of `rows` values.
pub(crate) struct Batch<'a> {
    pub rows: usize,
    pub cols: Vec<Vector<'a>>,
    /// The slot holding the event time, with bounds of its values, when the
    /// batch comes from a scan: a time truncation that maps both bounds to
    /// one value is that value on every row.
    pub ts_bounds: Option<(usize, i64, i64)>,
}

impl<'a> Batch<'a> {
    pub(crate) fn new(rows: usize, cols: Vec<Vector<'a>>) -> Batch<'a> {
        Batch { rows, cols, ts_bounds: None }
    }
}

impl Vector<'_> {
    /// A borrowed view of this vector.
    pub(crate) fn view(&self) -> Vector<'_> {
        match self {
            Vector::Const(s) => Vector::Const(s.clone()),
            Vector::Int(v, n) => Vector::Int(Cow::Borrowed(v), n.clone()),
            Vector::Float(v, n) => Vector::Float(Cow::Borrowed(v), n.clone()),
            Vector::Bool(v, n) => Vector::Bool(Cow::Borrowed(v), n.clone()),
            Vector::Dict(c, d) => Vector::Dict(Cow::Borrowed(c), d.clone()),
            Vector::Plain(a) => Vector::Plain(a.clone()),
        }
    }

    /// Whether row `i` is NULL.
    pub(crate) fn is_null(&self, i: usize) -> bool {
        match self {
            Vector::Const(s) => s.is_null(),
            Vector::Int(_, n) | Vector::Float(_, n) | Vector::Bool(_, n) => !valid(n, i),
            Vector::Dict(c, _) => c[i] == 0,
            Vector::Plain(a) => a.is_null(i),
        }
    }

    /// The value at row `i` as a scalar of type `ty` (slow path: results,
    /// not hot loops).
    pub(crate) fn scalar(&self, i: usize, ty: DataType) -> Scalar {
        if self.is_null(i) {
            return Scalar::Null;
        }
        match self {
            Vector::Const(s) => s.clone(),
            Vector::Int(v, _) if ty == DataType::Timestamp => Scalar::Ts(v[i]),
            Vector::Int(v, _) => Scalar::Int(v[i]),
            Vector::Float(v, _) => Scalar::Float(v[i]),
            Vector::Bool(v, _) => Scalar::Bool(v[i]),
            Vector::Dict(..) | Vector::Plain(_) => self.str_at(i).map_or(Scalar::Null, |s| Scalar::Str(s.into())),
        }
    }

    /// The string at row `i` of a string vector.
    pub(crate) fn str_at(&self, i: usize) -> Option<&str> {
        match self {
            Vector::Dict(c, d) => d.value(c[i]),
            Vector::Plain(a) => (!a.is_null(i)).then(|| a.value(i)),
            Vector::Const(Scalar::Str(s)) => Some(s),
            _ => None,
        }
    }
}

fn internal(what: &str) -> QueryError {
    QueryError::Internal(format!("vector of unexpected type in {what}"))
}

/// Integer values (and validity) of an integer or timestamp vector.
pub(crate) fn ints<'v>(v: &'v Vector<'_>, n: usize) -> Result<(Cow<'v, [i64]>, Cow<'v, Validity>)> {
    Ok(match v {
        Vector::Int(x, nv) => (Cow::Borrowed(x.as_ref()), Cow::Borrowed(nv)),
        Vector::Const(Scalar::Int(x) | Scalar::Ts(x)) => (Cow::Owned(vec![*x; n]), Cow::Owned(None)),
        Vector::Const(Scalar::Null) => (Cow::Owned(vec![0; n]), Cow::Owned(Some(vec![false; n]))),
        _ => return Err(internal("ints")),
    })
}

pub(crate) fn floats<'v>(v: &'v Vector<'_>, n: usize) -> Result<(Cow<'v, [f64]>, Cow<'v, Validity>)> {
    Ok(match v {
        Vector::Float(x, nv) => (Cow::Borrowed(x.as_ref()), Cow::Borrowed(nv)),
        Vector::Int(x, nv) => (Cow::Owned(x.iter().map(|&i| i as f64).collect()), Cow::Borrowed(nv)),
        Vector::Const(Scalar::Float(x)) => (Cow::Owned(vec![*x; n]), Cow::Owned(None)),
        Vector::Const(Scalar::Int(x)) => (Cow::Owned(vec![*x as f64; n]), Cow::Owned(None)),
        Vector::Const(Scalar::Null) => (Cow::Owned(vec![0.0; n]), Cow::Owned(Some(vec![false; n]))),
        _ => return Err(internal("floats")),
    })
}

pub(crate) fn bools<'v>(v: &'v Vector<'_>, n: usize) -> Result<(Cow<'v, [bool]>, Cow<'v, Validity>)> {
    Ok(match v {
        Vector::Bool(x, nv) => (Cow::Borrowed(x.as_ref()), Cow::Borrowed(nv)),
        Vector::Const(Scalar::Bool(x)) => (Cow::Owned(vec![*x; n]), Cow::Owned(None)),
        Vector::Const(Scalar::Null) => (Cow::Owned(vec![false; n]), Cow::Owned(Some(vec![false; n]))),
        _ => return Err(internal("bools")),
    })
}

fn and_validity(a: &Validity, b: &Validity) -> Validity {
    match (a, b) {
        (None, None) => None,
        (Some(a), None) | (None, Some(a)) => Some(a.clone()),
        (Some(a), Some(b)) => Some(a.iter().zip(b).map(|(x, y)| *x && *y).collect()),
    }
}

/// The rows where a predicate is TRUE (not FALSE, not NULL).
pub(crate) fn true_rows(v: &Vector<'_>, n: usize) -> Result<Vec<u32>> {
    let (b, nv) = bools(v, n)?;
    Ok(match nv.as_ref() {
        None => (0..n as u32).filter(|&i| b[i as usize]).collect(),
        Some(nv) => (0..n as u32).filter(|&i| b[i as usize] && nv[i as usize]).collect(),
    })
}

/// The rows of `v` at `idx`.
pub(crate) fn gather(v: &Vector<'_>, idx: &[u32]) -> Vector<'static> {
    fn g<T: Copy>(x: &[T], idx: &[u32]) -> Vec<T> {
        idx.iter().map(|&i| x[i as usize]).collect()
    }
    let gv = |nv: &Validity| nv.as_ref().map(|nv| g(nv, idx));
    match v {
        Vector::Const(s) => Vector::Const(s.clone()),
        Vector::Int(x, nv) => Vector::Int(Cow::Owned(g(x, idx)), gv(nv)),
        Vector::Float(x, nv) => Vector::Float(Cow::Owned(g(x, idx)), gv(nv)),
        Vector::Bool(x, nv) => Vector::Bool(Cow::Owned(g(x, idx)), gv(nv)),
        Vector::Dict(c, d) => Vector::Dict(Cow::Owned(g(c, idx)), d.clone()),
        Vector::Plain(a) => {
            Vector::Plain(idx.iter().map(|&i| (!a.is_null(i as usize)).then(|| a.value(i as usize))).collect())
        }
    }
}

/// Evaluates `e` over every row of `b`.
#[recursive::recursive]
pub(crate) fn eval<'a>(e: &Expr, b: &'a Batch<'_>) -> Result<Vector<'a>> {
    let n = b.rows;
    Ok(match e {
        Expr::Slot(i, _) => b.cols.get(*i).ok_or_else(|| QueryError::Internal(format!("slot {i} missing")))?.view(),
        Expr::Lit(s, _) => Vector::Const(s.clone()),
        Expr::Not(x) => {
            let v = eval(x, b)?;
            if let Vector::Const(s) = &v {
                return Ok(Vector::Const(match s {
                    Scalar::Bool(x) => Scalar::Bool(!x),
                    _ => Scalar::Null,
                }));
            }
            let (x, nv) = bools(&v, n)?;
            Vector::Bool(Cow::Owned(x.iter().map(|b| !b).collect()), nv.into_owned())
        }
        Expr::Neg(x) => {
            let v = eval(x, b)?;
            match x.ty() {
                DataType::Float => {
                    let (x, nv) = floats(&v, n)?;
                    Vector::Float(Cow::Owned(x.iter().map(|f| -f).collect()), nv.into_owned())
                }
                _ => {
                    let (x, nv) = ints(&v, n)?;
                    let mut out = Vec::with_capacity(n);
                    for (i, &a) in x.iter().enumerate() {
                        out.push(if valid(&nv, i) {
                            a.checked_neg().ok_or(QueryError::Overflow { what: "negation" })?
                        } else {
                            0
                        });
                    }
                    Vector::Int(Cow::Owned(out), nv.into_owned())
                }
            }
        }
        Expr::ToFloat(x) => {
            let v = eval(x, b)?;
            if let Vector::Const(s) = &v {
                return Ok(Vector::Const(match s {
                    Scalar::Int(i) => Scalar::Float(*i as f64),
                    other => other.clone(),
                }));
            }
            let (x, nv) = floats(&v, n)?;
            Vector::Float(Cow::Owned(x.into_owned()), nv.into_owned())
        }
        Expr::Bin(op, l, r, ty) => {
            let (lv, rv) = (eval(l, b)?, eval(r, b)?);
            binary(*op, &lv, &rv, l.ty(), *ty, n)?
        }
        Expr::IsNull(x, negated) => {
            let v = eval(x, b)?;
            match &v {
                Vector::Const(s) => Vector::Const(Scalar::Bool(s.is_null() != *negated)),
                _ => Vector::Bool(Cow::Owned((0..n).map(|i| v.is_null(i) != *negated).collect()), None),
            }
        }
        Expr::InList(x, list, negated) => {
            let v = eval(x, b)?;
            let has_null = list.iter().any(Scalar::is_null);
            // SQL: TRUE on a match; else NULL if the list holds NULL; else FALSE.
            let verdict = |hit: bool| -> Option<bool> {
                if hit {
                    Some(!negated)
                } else if has_null {
                    None
                } else {
                    Some(*negated)
                }
            };
            match x.ty() {
                DataType::Str => {
                    // A set, not a list: an IN list may hold 100,000 values.
                    let strs: HashSet<&str> =
                        list.iter().filter_map(|s| if let Scalar::Str(s) = s { Some(&**s) } else { None }).collect();
                    str_predicate(&v, n, |s| verdict(strs.contains(s)))
                }
                DataType::Float => {
                    let fl: Vec<f64> =
                        list.iter().filter_map(|s| if let Scalar::Float(f) = s { Some(*f) } else { None }).collect();
                    let (x, nv) = floats(&v, n)?;
                    bool_from(n, |i| if valid(&nv, i) { verdict(fl.contains(&x[i])) } else { None })
                }
                DataType::Bool => {
                    let bl: Vec<bool> =
                        list.iter().filter_map(|s| if let Scalar::Bool(f) = s { Some(*f) } else { None }).collect();
                    let (x, nv) = bools(&v, n)?;
                    bool_from(n, |i| if valid(&nv, i) { verdict(bl.contains(&x[i])) } else { None })
                }
                _ => {
                    let il: HashSet<i64> = list
                        .iter()
                        .filter_map(|s| if let Scalar::Int(i) | Scalar::Ts(i) = s { Some(*i) } else { None })
                        .collect();
                    let (x, nv) = ints(&v, n)?;
                    bool_from(n, |i| if valid(&nv, i) { verdict(il.contains(&x[i])) } else { None })
                }
            }
        }
        Expr::Like(x, pat, negated) => {
            let v = eval(x, b)?;
            // Decoded once per block, not once per row: a pattern may be long.
            let pat: Vec<char> = pat.chars().collect();
            str_predicate(&v, n, |s| Some(like(s, &pat) != *negated))
        }
        Expr::Case(whens, els, ty) => {
            let mut choice = vec![u32::MAX; n];
            let mut open = n;
            let mut values = Vec::with_capacity(whens.len() + 1);
            for (k, (c, val)) in whens.iter().enumerate() {
                let cv = eval(c, b)?;
                let (cb, nv) = bools(&cv, n)?;
                for i in 0..n {
                    if choice[i] == u32::MAX && cb[i] && valid(&nv, i) {
                        choice[i] = k as u32;
                        open -= 1;
                    }
                }
                values.push(eval(val, b)?);
                if open == 0 {
                    break;
                }
            }
            let k = values.len() as u32;
            choice.iter_mut().filter(|c| **c == u32::MAX).for_each(|c| *c = k);
            values.push(eval(els, b)?);
            pick(&values, *ty, &choice, n)?
        }
        Expr::Coalesce(args, ty) => {
            let values = args.iter().map(|a| eval(a, b)).collect::<Result<Vec<_>>>()?;
            let choice: Vec<u32> =
                (0..n).map(|i| values.iter().position(|v| !v.is_null(i)).map_or(u32::MAX, |p| p as u32)).collect();
            pick(&values, *ty, &choice, n)?
        }
        Expr::NullIf(a, c) => {
            let (av, cv) = (eval(a, b)?, eval(c, b)?);
            let eq = binary(BinOp::Eq, &av, &cv, a.ty(), DataType::Bool, n)?;
            let (eqb, eqv) = bools(&eq, n)?;
            let choice: Vec<u32> = (0..n).map(|i| if eqb[i] && valid(&eqv, i) { u32::MAX } else { 0 }).collect();
            pick(&[av], a.ty(), &choice, n)?
        }
        Expr::TimeBucket(w, x) => truncate(b, x, n, |t| time_bucket(*w, t))?,
        Expr::DateTrunc(u, x) => truncate(b, x, n, |t| date_trunc(*u, t))?,
        Expr::Epoch(x) => {
            let v = eval(x, b)?;
            if let Vector::Const(s) = &v {
                // One time bucket over the whole batch stays one value.
                return Ok(Vector::Const(match s {
                    Scalar::Ts(t) | Scalar::Int(t) => Scalar::Float(*t as f64 / 1000.0),
                    _ => Scalar::Null,
                }));
            }
            let (x, nv) = ints(&v, n)?;
            Vector::Float(Cow::Owned(x.iter().map(|&t| t as f64 / 1000.0).collect()), nv.into_owned())
        }
        Expr::Math(f, x) => {
            let v = eval(x, b)?;
            match x.ty() {
                DataType::Float => {
                    let (x, nv) = floats(&v, n)?;
                    Vector::Float(Cow::Owned(x.iter().map(|&a| f.float(a)).collect()), nv.into_owned())
                }
                _ => {
                    let (x, nv) = ints(&v, n)?;
                    let mut out = Vec::with_capacity(n);
                    for (i, &a) in x.iter().enumerate() {
                        out.push(if valid(&nv, i) { f.int(a)? } else { 0 });
                    }
                    Vector::Int(Cow::Owned(out), nv.into_owned())
                }
            }
        }
        Expr::Text(f, x) => {
            let v = eval(x, b)?;
            let out: StringArray = (0..n).map(|i| v.str_at(i).map(|s| f.apply(s))).collect();
            Vector::Plain(out)
        }
        Expr::FromEpoch(x) => {
            let v = eval(x, b)?;
            let (secs, nv) = floats(&v, n)?;
            let mut out = Vec::with_capacity(n);
            for (i, &s) in secs.iter().enumerate() {
                let ms = s * 1000.0;
                out.push(if !valid(&nv, i) {
                    0
                } else if ms.is_finite() && ms.abs() < 9.0e18 {
                    ms.round() as i64
                } else {
                    return Err(QueryError::Overflow { what: "to_timestamp" });
                });
            }
            Vector::Int(Cow::Owned(out), nv.into_owned())
        }
    })
}

/// Applies a timestamp truncation `f` (`date_trunc`, `time_bucket`: both
/// non-decreasing) to `x`. When `x` is the event time and the batch's
/// bounds of it truncate alike (a block spans minutes, a bucket is an
/// hour or a day), every row does: the result is one constant, with no
/// per-row work here or in grouping.
fn truncate<'a>(b: &Batch<'_>, x: &Expr, n: usize, f: impl Fn(i64) -> i64) -> Result<Vector<'a>> {
    if let (Expr::Slot(slot, _), Some((ts_slot, lo, hi))) = (x, b.ts_bounds)
        && *slot == ts_slot
        && lo <= hi
        && f(lo) == f(hi)
    {
        return Ok(Vector::Const(Scalar::Ts(f(lo))));
    }
    let v = eval(x, b)?;
    if let Vector::Const(s) = &v {
        return Ok(Vector::Const(match s {
            Scalar::Ts(t) | Scalar::Int(t) => Scalar::Ts(f(*t)),
            _ => Scalar::Null,
        }));
    }
    let (x, nv) = ints(&v, n)?;
    Ok(Vector::Int(Cow::Owned(x.iter().map(|&t| f(t)).collect()), nv.into_owned()))
}

fn bool_from<'a>(n: usize, f: impl Fn(usize) -> Option<bool>) -> Vector<'a> {
    let mut vals = Vec::with_capacity(n);
    let mut nv = Vec::with_capacity(n);
    for i in 0..n {
        let r = f(i);
        vals.push(r.unwrap_or(false));
        nv.push(r.is_some());
    }
    let all = nv.iter().all(|v| *v);
    Vector::Bool(Cow::Owned(vals), if all { None } else { Some(nv) })
}

/// Applies a per-string verdict (`None` = NULL) to a string vector,
/// deciding each dictionary entry once. NULL strings give NULL.
fn str_predicate<'a>(v: &Vector<'_>, n: usize, f: impl Fn(&str) -> Option<bool>) -> Vector<'a> {
    match v {
        Vector::Dict(codes, dict) => {
            let table: Vec<Option<bool>> =
                std::iter::once(None).chain((1..=dict.len() as u32).map(|c| dict.value(c).and_then(&f))).collect();
            dict_verdict(codes, &table)
        }
        Vector::Const(s) => Vector::Const(match s {
            Scalar::Str(s) => f(s).map_or(Scalar::Null, Scalar::Bool),
            _ => Scalar::Null,
        }),
        other => bool_from(n, |i| other.str_at(i).and_then(&f)),
    }
}

fn dict_verdict<'a>(codes: &[u32], table: &[Option<bool>]) -> Vector<'a> {
    let flat: Vec<bool> = table.iter().map(|t| t.unwrap_or(false)).collect();
    let vals: Vec<bool> = codes.iter().map(|&c| flat.get(c as usize).copied().unwrap_or(false)).collect();
    // NULL results come from code 0 or entries without a verdict.
    let maybe_null = table.iter().skip(1).any(Option::is_none) || codes.contains(&0);
    let nv = maybe_null.then(|| codes.iter().map(|&c| table.get(c as usize).copied().flatten().is_some()).collect());
    Vector::Bool(Cow::Owned(vals), nv)
}

/// Compares a dictionary column with a constant string: binary search in
/// sorted dictionaries, one comparison per entry otherwise.
fn dict_cmp_const<'a>(codes: &[u32], dict: &DictRef, op: BinOp, c: &str) -> Vector<'a> {
    let len = dict.len();
    let mut table: Vec<Option<bool>> = vec![Some(false); len + 1];
    table[0] = None;
    if dict.sorted() {
        match op {
            BinOp::Eq | BinOp::NotEq => {
                if op == BinOp::NotEq {
                    table[1..].iter_mut().for_each(|t| *t = Some(true));
                }
                if let Some(code) = dict.code_of(c) {
                    table[code as usize] = Some(op == BinOp::Eq);
                }
            }
            _ => {
                // The codes satisfying `value op c` form a prefix or a suffix.
                let (from, to) = match op {
                    BinOp::Lt => (1, dict.lower_bound(c, false)),
                    BinOp::LtEq => (1, dict.lower_bound(c, true)),
                    BinOp::Gt => (dict.lower_bound(c, true), len as u32 + 1),
                    _ => (dict.lower_bound(c, false), len as u32 + 1),
                };
                for t in &mut table[from as usize..to as usize] {
                    *t = Some(true);
                }
            }
        }
    } else {
        for (code, t) in table.iter_mut().enumerate().skip(1) {
            *t = dict.value(code as u32).map(|v| op.holds(v.cmp(c)));
        }
    }
    dict_verdict(codes, &table)
}

fn binary<'a>(
    op: BinOp,
    l: &Vector<'_>,
    r: &Vector<'_>,
    operand: DataType,
    ty: DataType,
    n: usize,
) -> Result<Vector<'a>> {
    if let (Vector::Const(a), Vector::Const(c)) = (l, r) {
        // Fold on one row.
        if operand == DataType::Null {
            return Ok(Vector::Const(Scalar::Null));
        }
        let one = binary(op, &materialize(a, 1, operand), &materialize(c, 1, operand), operand, ty, 1)?;
        return Ok(Vector::Const(one.scalar(0, ty)));
    }
    match op {
        BinOp::And | BinOp::Or => {
            let (a, av) = bools(l, n)?;
            let (c, cv) = bools(r, n)?;
            let and = op == BinOp::And;
            if av.is_none() && cv.is_none() {
                let vals = a.iter().zip(c.iter()).map(|(x, y)| if and { *x && *y } else { *x || *y }).collect();
                return Ok(Vector::Bool(Cow::Owned(vals), None));
            }
            Ok(bool_from(n, |i| {
                let (x, y) = (valid(&av, i).then_some(a[i]), valid(&cv, i).then_some(c[i]));
                match (x, y) {
                    (Some(x), Some(y)) => Some(if and { x && y } else { x || y }),
                    (Some(v), None) | (None, Some(v)) if v != and => Some(v),
                    _ => None,
                }
            }))
        }
        _ if op.is_comparison() => compare(op, l, r, operand, n),
        _ => arithmetic(op, l, r, ty, n),
    }
}

fn materialize(s: &Scalar, n: usize, ty: DataType) -> Vector<'static> {
    match s {
        Scalar::Null => match ty {
            DataType::Int | DataType::Timestamp => Vector::Int(Cow::Owned(vec![0; n]), Some(vec![false; n])),
            DataType::Float => Vector::Float(Cow::Owned(vec![0.0; n]), Some(vec![false; n])),
            DataType::Bool => Vector::Bool(Cow::Owned(vec![false; n]), Some(vec![false; n])),
            DataType::Str => Vector::Plain(std::iter::repeat_n(None::<&str>, n).collect()),
            DataType::Null => Vector::Const(Scalar::Null),
        },
        Scalar::Int(x) | Scalar::Ts(x) => Vector::Int(Cow::Owned(vec![*x; n]), None),
        Scalar::Float(x) => Vector::Float(Cow::Owned(vec![*x; n]), None),
        Scalar::Bool(x) => Vector::Bool(Cow::Owned(vec![*x; n]), None),
        Scalar::Str(x) => Vector::Plain(std::iter::repeat_n(Some(&**x), n).collect()),
    }
}

fn compare<'a>(op: BinOp, l: &Vector<'_>, r: &Vector<'_>, operand: DataType, n: usize) -> Result<Vector<'a>> {
    match operand {
        DataType::Str => match (l, r) {
            (_, Vector::Const(Scalar::Null)) | (Vector::Const(Scalar::Null), _) => Ok(Vector::Const(Scalar::Null)),
            (Vector::Dict(codes, dict), Vector::Const(Scalar::Str(c))) => Ok(dict_cmp_const(codes, dict, op, c)),
            (Vector::Const(Scalar::Str(c)), Vector::Dict(codes, dict)) => Ok(dict_cmp_const(codes, dict, op.flip(), c)),
            (v, Vector::Const(Scalar::Str(c))) => Ok(str_predicate(v, n, |s| Some(op.holds(s.cmp(c))))),
            (Vector::Const(Scalar::Str(c)), v) => Ok(str_predicate(v, n, |s| Some(op.flip().holds(s.cmp(c))))),
            (a, c) => Ok(bool_from(n, |i| match (a.str_at(i), c.str_at(i)) {
                (Some(x), Some(y)) => Some(op.holds(x.cmp(y))),
                _ => None,
            })),
        },
        DataType::Float => {
            let (a, av) = floats(l, n)?;
            let (c, cv) = floats(r, n)?;
            let nv = and_validity(&av, &cv);
            let vals = a.iter().zip(c.iter()).map(|(x, y)| op.holds(x.total_cmp(y))).collect();
            Ok(Vector::Bool(Cow::Owned(vals), nv))
        }
        DataType::Bool => {
            let (a, av) = bools(l, n)?;
            let (c, cv) = bools(r, n)?;
            let nv = and_validity(&av, &cv);
            Ok(Vector::Bool(Cow::Owned(a.iter().zip(c.iter()).map(|(x, y)| op.holds(x.cmp(y))).collect()), nv))
        }
        DataType::Null => Ok(Vector::Const(Scalar::Null)),
        DataType::Int | DataType::Timestamp => {
            let nv;
            let vals: Vec<bool> = match (l, r) {
                (v, Vector::Const(Scalar::Int(c) | Scalar::Ts(c))) => {
                    let (a, av) = ints(v, n)?;
                    nv = av.into_owned();
                    cmp_const(&a, *c, op)
                }
                (Vector::Const(Scalar::Int(c) | Scalar::Ts(c)), v) => {
                    let (a, av) = ints(v, n)?;
                    nv = av.into_owned();
                    cmp_const(&a, *c, op.flip())
                }
                _ => {
                    let (a, av) = ints(l, n)?;
                    let (c, cv) = ints(r, n)?;
                    nv = and_validity(&av, &cv);
                    a.iter().zip(c.iter()).map(|(x, y)| op.holds(x.cmp(y))).collect()
                }
            };
            Ok(Vector::Bool(Cow::Owned(vals), nv))
        }
    }
}

/// `a[i] op c` for every row, one tight loop per operator.
fn cmp_const(a: &[i64], c: i64, op: BinOp) -> Vec<bool> {
    match op {
        BinOp::Eq => a.iter().map(|&x| x == c).collect(),
        BinOp::NotEq => a.iter().map(|&x| x != c).collect(),
        BinOp::Lt => a.iter().map(|&x| x < c).collect(),
        BinOp::LtEq => a.iter().map(|&x| x <= c).collect(),
        BinOp::Gt => a.iter().map(|&x| x > c).collect(),
        _ => a.iter().map(|&x| x >= c).collect(),
    }
}

fn arithmetic<'a>(op: BinOp, l: &Vector<'_>, r: &Vector<'_>, ty: DataType, n: usize) -> Result<Vector<'a>> {
    if ty == DataType::Float {
        let (a, av) = floats(l, n)?;
        let (c, cv) = floats(r, n)?;
        let mut nv = and_validity(&av, &cv);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let (x, y) = (a[i], c[i]);
            out.push(match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div | BinOp::Mod => {
                    if y == 0.0 {
                        nv.get_or_insert_with(|| vec![true; n])[i] = false;
                        0.0
                    } else if op == BinOp::Div {
                        x / y
                    } else {
                        x % y
                    }
                }
                _ => return Err(internal("float arithmetic")),
            });
        }
        return Ok(Vector::Float(Cow::Owned(out), nv));
    }
    let (a, av) = ints(l, n)?;
    let (c, cv) = ints(r, n)?;
    let mut nv = and_validity(&av, &cv);
    let mut out = Vec::with_capacity(n);
    let overflow = || QueryError::Overflow { what: "arithmetic" };
    for i in 0..n {
        let (x, y) = (a[i], c[i]);
        if !valid(&nv, i) {
            out.push(0);
            continue;
        }
        out.push(match op {
            BinOp::Add => x.checked_add(y).ok_or_else(overflow)?,
            BinOp::Sub => x.checked_sub(y).ok_or_else(overflow)?,
            BinOp::Mul => x.checked_mul(y).ok_or_else(overflow)?,
            BinOp::Div | BinOp::Mod => {
                if y == 0 {
                    nv.get_or_insert_with(|| vec![true; n])[i] = false;
                    0
                } else if op == BinOp::Div {
                    x.checked_div(y).ok_or_else(overflow)?
                } else {
                    x.checked_rem(y).ok_or_else(overflow)?
                }
            }
            _ => return Err(internal("integer arithmetic")),
        });
    }
    Ok(Vector::Int(Cow::Owned(out), nv))
}

/// Row `i` takes its value from `values[choice[i]]` (`u32::MAX`: NULL).
fn pick<'a>(values: &[Vector<'_>], ty: DataType, choice: &[u32], n: usize) -> Result<Vector<'a>> {
    let src = |i: usize| values.get(choice[i] as usize);
    Ok(match ty {
        DataType::Str => {
            let mut bld = StringBuilder::with_capacity(n, n * 8);
            for i in 0..n {
                bld.append_option(src(i).and_then(|v| v.str_at(i)));
            }
            Vector::Plain(bld.finish())
        }
        DataType::Null => Vector::Const(Scalar::Null),
        DataType::Float => {
            let cols = values.iter().map(|v| floats(v, n)).collect::<Result<Vec<_>>>()?;
            let mut out = vec![0.0; n];
            let mut nv = vec![false; n];
            for i in 0..n {
                if let Some((x, xv)) = cols.get(choice[i] as usize)
                    && valid(xv, i)
                {
                    out[i] = x[i];
                    nv[i] = true;
                }
            }
            Vector::Float(Cow::Owned(out), Some(nv))
        }
        DataType::Bool => {
            let cols = values.iter().map(|v| bools(v, n)).collect::<Result<Vec<_>>>()?;
            let mut out = vec![false; n];
            let mut nv = vec![false; n];
            for i in 0..n {
                if let Some((x, xv)) = cols.get(choice[i] as usize)
                    && valid(xv, i)
                {
                    out[i] = x[i];
                    nv[i] = true;
                }
            }
            Vector::Bool(Cow::Owned(out), Some(nv))
        }
        DataType::Int | DataType::Timestamp => {
            let cols = values.iter().map(|v| ints(v, n)).collect::<Result<Vec<_>>>()?;
            let mut out = vec![0; n];
            let mut nv = vec![false; n];
            for i in 0..n {
                if let Some((x, xv)) = cols.get(choice[i] as usize)
                    && valid(xv, i)
                {
                    out[i] = x[i];
                    nv[i] = true;
                }
            }
            Vector::Int(Cow::Owned(out), Some(nv))
        }
    })
}

/// SQL `LIKE`: `%` any run, `_` one character, `\` escapes the next one.
pub(crate) fn like(s: &str, p: &[char]) -> bool {
    // Iterative matcher with backtracking to the last `%`, on chars.
    let s: Vec<char> = s.chars().collect();
    let (mut si, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                '%' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                '_' => {
                    si += 1;
                    pi += 1;
                    continue;
                }
                '\\' if pi + 1 < p.len() && p[pi + 1] == s[si] => {
                    si += 1;
                    pi += 2;
                    continue;
                }
                '\\' if pi + 1 < p.len() => {}
                c if c == s[si] => {
                    si += 1;
                    pi += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '%')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns() {
        let m = |s: &str, p: &str| like(s, &p.chars().collect::<Vec<char>>());
        assert!(m("campaign-1", "campaign%"));
        assert!(m("campaign-1", "%-_"));
        assert!(!m("campaign-1", "%-__"));
        assert!(m("", "%"));
        assert!(!m("", "_"));
        assert!(m("a%b", "a\\%b"));
        assert!(!m("axb", "a\\%b"));
        assert!(m("日本", "_本"));
        assert!(m("abcabc", "%abc"));
    }
}
