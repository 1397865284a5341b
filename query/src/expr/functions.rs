//! Scalar functions of one value (`floor`, `round`, `lower` …): what each
//! computes on one row; `eval` applies them to vectors.

use crate::error::{QueryError, Result};

/// A numeric function of one number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MathFn {
    Floor,
    Ceil,
    /// To this many decimal digits (negative: tens, hundreds …), half away from zero.
    Round(i32),
    Abs,
}

impl MathFn {
    pub(crate) fn name(self) -> &'static str {
        match self {
            MathFn::Floor => "floor",
            MathFn::Ceil => "ceil",
            MathFn::Round(_) => "round",
            MathFn::Abs => "abs",
        }
    }

    pub(crate) fn float(self, x: f64) -> f64 {
        match self {
            MathFn::Floor => x.floor(),
            MathFn::Ceil => x.ceil(),
            MathFn::Round(0) => x.round(),
            MathFn::Round(d) => {
                let scale = 10f64.powi(d);
                (x * scale).round() / scale
            }
            MathFn::Abs => x.abs(),
        }
    }

    pub(crate) fn int(self, x: i64) -> Result<i64> {
        Ok(match self {
            MathFn::Floor | MathFn::Ceil => x,
            MathFn::Round(d) if d >= 0 => x,
            MathFn::Round(d) => {
                // Half away from zero at 10^-d.
                let unit = 10i64.checked_pow(d.unsigned_abs()).ok_or(QueryError::Overflow { what: "round" })?;
                let half = unit / 2;
                let rounded = if x >= 0 { x.checked_add(half) } else { x.checked_sub(half) };
                let rounded = rounded.ok_or(QueryError::Overflow { what: "round" })?;
                rounded / unit * unit
            }
            MathFn::Abs => x.checked_abs().ok_or(QueryError::Overflow { what: "abs" })?,
        })
    }
}

/// A string function of one string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextFn {
    Lower,
    Upper,
}

impl TextFn {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TextFn::Lower => "lower",
            TextFn::Upper => "upper",
        }
    }

    pub(crate) fn apply(self, s: &str) -> String {
        match self {
            TextFn::Lower => s.to_lowercase(),
            TextFn::Upper => s.to_uppercase(),
        }
    }
}
