//! `$n` placeholders (the PostgreSQL protocol's Bind): their values as
//! literals, and `LIMIT`/`OFFSET` taken from them.

use super::*;

/// The values of `$n` placeholders.
#[derive(Clone, Copy)]
pub(crate) enum Params<'a> {
    /// For execution: a placeholder with no value is an error.
    Strict(&'a [crate::Param]),
    /// For Describe: a placeholder with no value binds as NULL.
    Lenient(&'a [crate::Param]),
}

impl Params<'_> {
    /// The literal for placeholder `$n` (`name` as written).
    pub(super) fn get(&self, name: &str, span: Span) -> Result<Scalar> {
        let (Params::Strict(values) | Params::Lenient(values)) = *self;
        let index = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|&n| n >= 1);
        let Some(index) = index else {
            return Err(unsupported(format!("placeholder {name}; use $1, $2, …"), span));
        };
        Ok(match (values.get(index - 1), self) {
            (Some(value), _) => match value {
                crate::Param::Null => Scalar::Null,
                crate::Param::Bool(b) => Scalar::Bool(*b),
                crate::Param::Int(i) => Scalar::Int(*i),
                crate::Param::Float(f) => Scalar::Float(*f),
                crate::Param::Text(t) => Scalar::Str(Arc::from(t.as_str())),
                crate::Param::Timestamp(ms) => Scalar::Ts(*ms),
            },
            (None, Params::Lenient(_)) => Scalar::Null,
            (None, Params::Strict(_)) => {
                return Err(invalid(
                    format!("{name} has no value: the statement was given {} parameter(s)", values.len()),
                    span,
                ));
            }
        })
    }
}

pub(super) fn literal_u64(e: &SqlExpr, what: &str, params: Params<'_>) -> Result<u64> {
    if let SqlExpr::Value(v) = e
        && let Value::Placeholder(name) = &v.value
    {
        return match params.get(name, e.span())? {
            Scalar::Int(n) if n >= 0 => Ok(n as u64),
            // Before Bind (Describe), the value is unknown: any will do.
            Scalar::Null => Ok(0),
            _ => Err(invalid(format!("{what} {name} must be a non-negative integer"), e.span())),
        };
    }
    if let SqlExpr::Value(v) = e
        && let Value::Number(n, _) = &v.value
        && let Ok(x) = n.parse::<u64>()
    {
        return Ok(x);
    }
    if let SqlExpr::Value(v) = e
        && let Value::Number(n, _) = &v.value
        && n.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(invalid(format!("{what} is larger than {}", u64::MAX), e.span()));
    }
    Err(unsupported(format!("{what} that is not a non-negative integer literal"), e.span()))
}
