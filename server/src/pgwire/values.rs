//! Values across the PostgreSQL protocol: result columns out (Arrow →
//! `RowDescription` + `DataRow`, text or binary per column as the client
//! asks) and `$n` parameters in (`Bind` bytes → [`Param`]).
//!
//! | adstore | PostgreSQL | text form | binary form |
//! |---|---|---|---|
//! | `bigint` | `int8` | `42` | 8 bytes, big-endian |
//! | `double` | `float8` | shortest exact (`0.1`, `1e+20`, `NaN`) | IEEE 754, big-endian |
//! | `varchar` | `text` | UTF-8 | UTF-8 |
//! | `boolean` | `bool` | `t` / `f` | 1 byte |
//! | `timestamp` | `timestamptz` | `2026-11-01 06:00:00+00` | µs since 2000-01-01 UTC |
//!
//! A column only NULL (a bare `NULL`, or a parameter not yet bound at
//! Describe) is `text`.

use std::sync::Arc;

use adstore_query::{Param, QueryResult};
use adstore_storage::time::format_timestamp_pg;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMillisecondType};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType as ArrowType, Schema};
use bytes::Bytes;
use pgwire::api::Type;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::types::format::FormatOptions;

use super::error::user_error;

/// Milliseconds from the Unix epoch to PostgreSQL's, 2000-01-01 UTC.
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// The PostgreSQL type of an Arrow result column.
pub(super) fn pg_type(t: &ArrowType) -> Type {
    match t {
        ArrowType::Int64 => Type::INT8,
        ArrowType::Float64 => Type::FLOAT8,
        ArrowType::Boolean => Type::BOOL,
        ArrowType::Timestamp(..) => Type::TIMESTAMPTZ,
        _ => Type::TEXT,
    }
}

/// A type's SQL name, as `information_schema` and `format_type` give it.
pub(super) fn sql_type_name(t: &Type) -> &'static str {
    match *t {
        Type::INT8 => "bigint",
        Type::INT4 => "integer",
        Type::INT2 => "smallint",
        Type::FLOAT8 => "double precision",
        Type::FLOAT4 => "real",
        Type::NUMERIC => "numeric",
        Type::BOOL => "boolean",
        Type::TIMESTAMPTZ => "timestamp with time zone",
        Type::TIMESTAMP => "timestamp without time zone",
        Type::DATE => "date",
        Type::VARCHAR => "character varying",
        Type::TEXT => "text",
        _ => "text",
    }
}

/// The `RowDescription` of a result schema, each column in the format the
/// client asked for.
pub(super) fn fields(schema: &Schema, format: &Format) -> Arc<Vec<FieldInfo>> {
    Arc::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| FieldInfo::new(f.name().clone(), None, None, pg_type(f.data_type()), format.format_for(i)))
            .collect(),
    )
}

/// The rows of a result, encoded one at a time as the client reads them.
pub(super) fn rows(result: QueryResult, fields: Arc<Vec<FieldInfo>>) -> impl Iterator<Item = PgWireResult<DataRow>> {
    let mut encoder = DataRowEncoder::new(fields.clone());
    // Text forms are PostgreSQL's defaults (UTC, ISO dates): one set for all cells.
    let options = FormatOptions::default();
    result.batches.into_iter().flat_map(move |batch: RecordBatch| {
        let columns: Vec<ArrayRef> = batch.columns().to_vec();
        let fields = fields.clone();
        let mut rows = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let encoded = columns
                .iter()
                .zip(fields.iter())
                .try_for_each(|(column, field)| encode(&mut encoder, column, row, field, &options))
                .map(|()| encoder.take_row());
            rows.push(encoded);
        }
        rows
    })
}

fn encode(
    encoder: &mut DataRowEncoder,
    column: &ArrayRef,
    row: usize,
    field: &FieldInfo,
    options: &FormatOptions,
) -> PgWireResult<()> {
    let format = field.format();
    let ty = field.datatype();
    if column.is_null(row) || column.data_type() == &ArrowType::Null {
        return encoder.encode_field_with_type_and_format(&None::<i64>, ty, format, options);
    }
    match column.data_type() {
        ArrowType::Int64 => encoder.encode_field_with_type_and_format(
            &column.as_primitive::<Int64Type>().value(row),
            ty,
            format,
            options,
        ),
        ArrowType::Float64 => encoder.encode_field_with_type_and_format(
            &column.as_primitive::<Float64Type>().value(row),
            ty,
            format,
            options,
        ),
        ArrowType::Boolean => {
            encoder.encode_field_with_type_and_format(&column.as_boolean().value(row), ty, format, options)
        }
        ArrowType::Utf8 => {
            encoder.encode_field_with_type_and_format(&column.as_string::<i32>().value(row), ty, format, options)
        }
        ArrowType::Timestamp(..) => {
            let ms = column.as_primitive::<TimestampMillisecondType>().value(row);
            match format {
                FieldFormat::Text => {
                    encoder.encode_field_with_type_and_format(&format_timestamp_pg(ms), ty, format, options)
                }
                FieldFormat::Binary => {
                    let micros = ms.saturating_sub(PG_EPOCH_MS).saturating_mul(1_000);
                    encoder.encode_field_with_type_and_format(&micros, ty, format, options)
                }
            }
        }
        other => Err(PgWireError::ApiError(format!("no PostgreSQL encoding for a {other} column").into())),
    }
}

/// The values bound to a portal's `$n` placeholders, read by the type the
/// client declared (or as text when it declared none).
pub(super) fn params<S>(portal: &Portal<S>) -> PgWireResult<Vec<Param>> {
    portal
        .parameters
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let Some(bytes) = bytes else { return Ok(Param::Null) };
            let ty = portal.statement.parameter_types.get(i).cloned().flatten().unwrap_or(Type::UNKNOWN);
            let binary = portal.parameter_format.format_for(i) == FieldFormat::Binary;
            param(i + 1, &ty, binary, bytes)
        })
        .collect()
}

fn param(n: usize, ty: &Type, binary: bool, bytes: &Bytes) -> PgWireResult<Param> {
    let bad = |what: &str| user_error("22P02", format!("parameter ${n} ({ty}): {what}"));
    if binary {
        let fixed = |len: usize| -> PgWireResult<&[u8]> {
            (bytes.len() == len).then_some(&bytes[..]).ok_or_else(|| bad(&format!("expected {len} bytes")))
        };
        return Ok(match *ty {
            Type::BOOL => Param::Bool(fixed(1)?[0] != 0),
            Type::INT2 => Param::Int(i64::from(i16::from_be_bytes(array(fixed(2)?)))),
            Type::INT4 => Param::Int(i64::from(i32::from_be_bytes(array(fixed(4)?)))),
            Type::INT8 => Param::Int(i64::from_be_bytes(array(fixed(8)?))),
            Type::FLOAT4 => Param::Float(f64::from(f32::from_be_bytes(array(fixed(4)?)))),
            Type::FLOAT8 => Param::Float(f64::from_be_bytes(array(fixed(8)?))),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                let micros = i64::from_be_bytes(array(fixed(8)?));
                Param::Timestamp(micros.div_euclid(1_000).saturating_add(PG_EPOCH_MS))
            }
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => Param::Text(utf8(bytes, &bad)?),
            _ => return Err(bad("binary values of this type are not supported; send it as text")),
        });
    }
    let text = utf8(bytes, &bad)?;
    let trimmed = text.trim();
    Ok(match *ty {
        Type::BOOL => match trimmed.to_ascii_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" => Param::Bool(true),
            "f" | "false" | "no" | "off" | "0" => Param::Bool(false),
            _ => return Err(bad("not a boolean")),
        },
        Type::INT2 | Type::INT4 | Type::INT8 => Param::Int(trimmed.parse().map_err(|_| bad("not a 64-bit integer"))?),
        Type::FLOAT4 | Type::FLOAT8 | Type::NUMERIC => match trimmed.parse::<i64>() {
            Ok(i) if *ty == Type::NUMERIC => Param::Int(i),
            _ => Param::Float(trimmed.parse().map_err(|_| bad("not a number"))?),
        },
        // Timestamps stay text: the query reads them as a timestamp
        // literal where one is expected, offsets included.
        _ => Param::Text(text),
    })
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn utf8(bytes: &Bytes, bad: &dyn Fn(&str) -> PgWireError) -> PgWireResult<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_by_type_and_format() {
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        assert_eq!(param(1, &Type::INT8, false, &b(b" 42")).ok(), Some(Param::Int(42)));
        assert_eq!(param(1, &Type::INT4, true, &b(&7i32.to_be_bytes())).ok(), Some(Param::Int(7)));
        assert_eq!(param(1, &Type::FLOAT8, true, &b(&0.5f64.to_be_bytes())).ok(), Some(Param::Float(0.5)));
        assert_eq!(param(1, &Type::BOOL, false, &b(b"t")).ok(), Some(Param::Bool(true)));
        assert_eq!(param(1, &Type::NUMERIC, false, &b(b"12")).ok(), Some(Param::Int(12)));
        assert_eq!(param(1, &Type::NUMERIC, false, &b(b"1.5")).ok(), Some(Param::Float(1.5)));
        let micros = (1_795_341_600_000i64 - PG_EPOCH_MS) * 1_000;
        assert_eq!(
            param(1, &Type::TIMESTAMPTZ, true, &b(&micros.to_be_bytes())).ok(),
            Some(Param::Timestamp(1_795_341_600_000))
        );
        assert_eq!(param(1, &Type::UNKNOWN, false, &b(b"c1")).ok(), Some(Param::Text("c1".into())));
        let err = param(3, &Type::INT8, false, &b(b"x")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("$3") && err.contains("not a 64-bit integer"), "{err}");
        assert!(param(1, &Type::INT8, true, &b(b"1234")).is_err(), "wrong width");
    }
}
