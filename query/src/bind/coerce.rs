//! Making operands meet: NULL takes the other side's type, integers widen
//! to floats, strings and integer literals next to timestamps become
//! timestamps; and the common type of CASE branches.

use super::*;
use crate::time::epoch_integer_ms;

/// Gives an untyped NULL the type `t`.
pub(super) fn retype_null(e: Expr, t: DataType) -> Expr {
    match e {
        Expr::Lit(Scalar::Null, DataType::Null) => Expr::Lit(Scalar::Null, t),
        other => other,
    }
}

/// Makes two operands comparable (or combinable): NULL takes the other
/// type, integers widen to floats, string literals next to timestamps are
/// parsed as timestamps. Returns the common operand type.
pub(super) fn unify(a: Expr, b: Expr, span: Span, what: &str) -> Result<(Expr, Expr, DataType)> {
    let (ta, tb) = (a.ty(), b.ty());
    use DataType::*;
    Ok(match (ta, tb) {
        _ if ta == tb => (a, b, ta),
        (Null, t) => (retype_null(a, t), b, t),
        (t, Null) => (a, retype_null(b, t), t),
        (Int, Float) => (Expr::ToFloat(Box::new(a)), b, Float),
        (Float, Int) => (a, Expr::ToFloat(Box::new(b)), Float),
        (Timestamp, Int) => (a, epoch_integer(b), Timestamp),
        (Int, Timestamp) => (epoch_integer(a), b, Timestamp),
        (Timestamp, Str) => (a, str_to_ts(b, span)?, Timestamp),
        (Str, Timestamp) => (str_to_ts(a, span)?, b, Timestamp),
        _ => return Err(type_error(format!("cannot {what} {ta} and {tb}"), span)),
    })
}

/// An integer literal compared with a timestamp: an epoch time whose size
/// tells its unit ([`epoch_integer_ms`]). Other integer expressions are
/// milliseconds.
pub(super) fn epoch_integer(e: Expr) -> Expr {
    match e {
        Expr::Lit(Scalar::Int(n), _) => lit(Scalar::Ts(epoch_integer_ms(n))),
        other => other,
    }
}

pub(super) fn str_to_ts(e: Expr, span: Span) -> Result<Expr> {
    match e {
        Expr::Lit(Scalar::Str(s), _) => match parse_timestamp(&s) {
            Some(ms) => Ok(lit(Scalar::Ts(ms))),
            None => Err(QueryError::InvalidLiteral {
                message: format!("{s:?} is not a timestamp; use '2026-11-22T10:00:00Z'"),
                position: pos(span),
            }),
        },
        _ => Err(type_error("cannot compare a timestamp with a string expression", span)),
    }
}

/// The common type of CASE branches / coalesce arguments.
pub(super) fn unify_type(a: DataType, b: DataType, span: Span) -> Result<DataType> {
    use DataType::*;
    Ok(match (a, b) {
        _ if a == b => a,
        (Null, t) | (t, Null) => t,
        (Int, Float) | (Float, Int) => Float,
        _ => return Err(type_error(format!("cannot mix {a} and {b} in one result"), span)),
    })
}

pub(super) fn coerce(e: Expr, ty: DataType) -> Expr {
    match (e.ty(), ty) {
        (DataType::Null, t) => retype_null(e, t),
        (DataType::Int, DataType::Float) => Expr::ToFloat(Box::new(e)),
        _ => e,
    }
}
