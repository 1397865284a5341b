//! SQL value types and scalar values.

use std::fmt;
use std::sync::Arc;

/// The type of an SQL expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// The type of a bare `NULL` literal before it meets another type.
    Null,
    Bool,
    /// 64-bit signed integer.
    Int,
    /// 64-bit float.
    Float,
    Str,
    /// Epoch milliseconds, UTC.
    Timestamp,
}

impl DataType {
    pub fn name(self) -> &'static str {
        match self {
            DataType::Null => "null",
            DataType::Bool => "boolean",
            DataType::Int => "bigint",
            DataType::Float => "double",
            DataType::Str => "varchar",
            DataType::Timestamp => "timestamp",
        }
    }

    pub(crate) fn is_numeric(self) -> bool {
        matches!(self, DataType::Int | DataType::Float)
    }

    pub(crate) fn arrow(self) -> arrow_schema::DataType {
        use arrow_schema::{DataType as A, TimeUnit};
        match self {
            DataType::Null => A::Null,
            DataType::Bool => A::Boolean,
            DataType::Int => A::Int64,
            DataType::Float => A::Float64,
            DataType::Str => A::Utf8,
            DataType::Timestamp => A::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Arc<str>),
    Ts(i64),
}

impl Scalar {
    pub(crate) fn is_null(&self) -> bool {
        matches!(self, Scalar::Null)
    }
}
