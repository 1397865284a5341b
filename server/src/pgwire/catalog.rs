//! What a PostgreSQL client asks about the server rather than the data:
//! session statements (`SET`, `BEGIN`, `SHOW` …), answered without
//! changing anything (every session reads the same way), and catalog
//! queries, evaluated by `catalog/eval.rs` over virtual tables built from
//! the store's schema:
//!
//! | table | rows |
//! |---|---|
//! | `information_schema.tables` | `events`, `metrics`, `billing_daily` in schema `public` |
//! | `information_schema.columns` | their columns, with PostgreSQL type names |
//! | `information_schema.schemata` | `public`, `information_schema`, `pg_catalog` |
//! | `pg_extension` | none (not TimescaleDB: Grafana then groups time with `floor()`) |
//! | `pg_namespace`, `pg_database`, `pg_settings` | the schemas, `adstore`, the settings below |

mod eval;

use std::sync::Arc;

use adstore_query::{QueryResult, QueryStats};
use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType as ArrowType, Field, Schema};
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, Response, Tag};
use pgwire::error::{PgWireError, PgWireResult};
use sqlparser::ast::Statement as SqlStatement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};

use self::eval::{Error, Relation, Value};
use super::error::user_error;
use super::values;
use crate::http::{AppState, now_ms};

/// The PostgreSQL version clients are told, as `server_version_num`:
/// features are those of 16 (`current_setting('server_version_num')`
/// answers this).
const SERVER_VERSION_NUM: &str = "160006";

/// `ParameterStatus` at startup, and what `SHOW` and `current_setting()`
/// answer.
pub(super) const STARTUP_PARAMETERS: &[(&str, &str)] = &[
    ("server_version", concat!("16.6 (adstore ", env!("CARGO_PKG_VERSION"), ")")),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "postgres"),
    ("integer_datetimes", "on"),
    ("standard_conforming_strings", "on"),
    ("is_superuser", "off"),
    ("default_transaction_read_only", "on"),
    ("in_hot_standby", "off"),
    ("application_name", ""),
];

/// Further settings `SHOW` and `current_setting()` know.
const SETTINGS: &[(&str, &str)] = &[
    ("server_version_num", SERVER_VERSION_NUM),
    ("search_path", "public"),
    ("transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("max_identifier_length", "63"),
    ("extra_float_digits", "1"),
    ("statement_timeout", "0"),
    ("lc_messages", "C"),
];

/// The value of a setting, by its case-insensitive name.
pub(super) fn setting(name: &str) -> Option<&'static str> {
    STARTUP_PARAMETERS.iter().chain(SETTINGS).find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| *v)
}

/// The lowercased words of a statement, in order (strings and symbols left out).
fn words(sql: &str) -> Vec<String> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().unwrap_or_default();
    tokens
        .into_iter()
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.value.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The answer to a session statement.
pub(super) fn session(sql: &str) -> PgWireResult<Response> {
    let words = words(sql);
    let first = words.first().map_or("", String::as_str);
    Ok(match first {
        "begin" | "start" => Response::TransactionStart(Tag::new("BEGIN")),
        "commit" | "end" => Response::TransactionEnd(Tag::new("COMMIT")),
        "rollback" | "abort" => Response::TransactionEnd(Tag::new("ROLLBACK")),
        "show" => {
            let result = show(words.get(1).map_or("", String::as_str))?;
            let fields = values::fields(&result.schema, &Format::UnifiedText);
            let rows = values::rows(result, fields.clone());
            Response::Query(pgwire::api::results::QueryResponse::new(fields, futures::stream::iter(rows)))
        }
        "discard" => Response::Execution(Tag::new("DISCARD ALL")),
        "deallocate" => Response::Execution(Tag::new("DEALLOCATE")),
        "reset" => Response::Execution(Tag::new("RESET")),
        // SET: the store reads the same for every session (UTC, ISO dates,
        // read only), so a setting is accepted and changes nothing.
        _ => Response::Execution(Tag::new("SET")),
    })
}

/// The columns a session statement answers with (only `SHOW` has any).
pub(super) fn session_columns(sql: &str, format: &Format) -> Vec<FieldInfo> {
    let words = words(sql);
    if words.first().map(String::as_str) != Some("show") {
        return Vec::new();
    }
    let name = words.get(1).map_or("", String::as_str);
    let schema = Schema::new(vec![Field::new(name, ArrowType::Utf8, true)]);
    values::fields(&schema, format).to_vec()
}

fn show(name: &str) -> PgWireResult<QueryResult> {
    let value =
        setting(name).ok_or_else(|| user_error("42704", format!("unrecognized configuration parameter {name:?}")))?;
    table(vec![(name, vec![Some(value.to_owned())])])
}

/// Answers a catalog query.
pub(super) fn query(app: &Arc<AppState>, sql: &str) -> PgWireResult<QueryResult> {
    let statements = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| user_error("42601", format!("syntax error: {e}")))?;
    let [SqlStatement::Query(q)] = statements.as_slice() else {
        return Err(user_error("0A000", "a catalog query must be one SELECT".into()));
    };
    let catalog = Catalog::of(app)?;
    let relation = eval::run(q, &catalog).map_err(|e| match e {
        Error::Unsupported(what) => user_error("0A000", format!("unsupported: {what}")),
        Error::UnknownTable(name) => user_error("42P01", format!("unknown table {name:?}")),
        Error::UnknownColumn(name) => user_error("42703", format!("unknown column {name:?}")),
        Error::UnknownFunction(name) => user_error("42883", format!("unknown function {name}()")),
        Error::Type(message) => user_error("22023", message),
    })?;
    to_result(relation)
}

/// The store's tables and their columns, as a client sees them.
pub(super) struct Catalog {
    /// (table, [(column, type)]) in order.
    tables: Vec<(&'static str, Vec<(String, Type)>)>,
}

/// The schemas a client sees.
const SCHEMAS: [&str; 3] = ["public", "information_schema", "pg_catalog"];

impl Catalog {
    fn of(app: &Arc<AppState>) -> PgWireResult<Catalog> {
        let opts = app.config.query.options(now_ms());
        let dims: Vec<&str> = adstore_storage::measure::DIMENSIONS.iter().map(|d| d.name()).collect();
        let measures: Vec<String> = adstore_storage::measure::Measure::ALL
            .iter()
            .map(|m| match m {
                adstore_storage::measure::Measure::Users => format!("approx_count_distinct({0}) AS {0}", m.name()),
                m => format!("sum({0}) AS {0}", m.name()),
            })
            .collect();
        let metrics = format!(
            "SELECT ts, {dims}, {measures} FROM metrics GROUP BY ts, {dims}",
            dims = dims.join(", "),
            measures = measures.join(", ")
        );
        let mut tables = Vec::new();
        for (table, sql) in [
            ("events", "SELECT * FROM events".to_string()),
            ("metrics", metrics),
            ("billing_daily", "SELECT * FROM billing_daily".to_string()),
        ] {
            let schema = adstore_query::describe(&sql, &[], &opts)
                .map_err(|e| PgWireError::ApiError(format!("the columns of {table}: {e}").into()))?;
            let columns = schema.fields().iter().map(|f| (f.name().clone(), values::pg_type(f.data_type()))).collect();
            tables.push((table, columns));
        }
        Ok(Catalog { tables })
    }

    /// A virtual table by its (possibly schema-qualified) name.
    fn table(&self, parts: &[String]) -> Option<Relation> {
        let (schema, name) = match parts {
            [name] => (None, name.as_str()),
            [schema, name] => (Some(schema.as_str()), name.as_str()),
            _ => return None,
        };
        let text = |s: &str| Value::Text(s.to_string());
        let relation = |columns: &[&str], rows: Vec<Vec<Value>>| Relation {
            columns: columns.iter().map(|c| (*c).to_string()).collect(),
            rows,
        };
        Some(match (schema, name) {
            (Some("information_schema"), "tables") => relation(
                &["table_catalog", "table_schema", "table_name", "table_type"],
                self.tables
                    .iter()
                    .map(|(t, _)| vec![text(super::DATABASE), text("public"), text(t), text("BASE TABLE")])
                    .collect(),
            ),
            (Some("information_schema"), "columns") => relation(
                &[
                    "table_catalog",
                    "table_schema",
                    "table_name",
                    "column_name",
                    "ordinal_position",
                    "column_default",
                    "is_nullable",
                    "data_type",
                    "udt_name",
                    "numeric_precision",
                    "numeric_scale",
                    "character_maximum_length",
                ],
                self.tables
                    .iter()
                    .flat_map(|(t, columns)| {
                        columns.iter().enumerate().map(move |(i, (c, ty))| {
                            let (precision, scale) = match *ty {
                                Type::INT8 => (Value::Int(64), Value::Int(0)),
                                Type::FLOAT8 => (Value::Int(53), Value::Null),
                                _ => (Value::Null, Value::Null),
                            };
                            vec![
                                text(super::DATABASE),
                                text("public"),
                                text(t),
                                text(c),
                                Value::Int(i as i64 + 1),
                                Value::Null,
                                text("YES"),
                                text(values::sql_type_name(ty)),
                                text(ty.name()),
                                precision,
                                scale,
                                Value::Null,
                            ]
                        })
                    })
                    .collect(),
            ),
            (Some("information_schema"), "schemata") => relation(
                &["catalog_name", "schema_name", "schema_owner"],
                SCHEMAS.iter().map(|s| vec![text(super::DATABASE), text(s), text(eval::function::USER)]).collect(),
            ),
            (None | Some("pg_catalog"), "pg_extension") => relation(&["extname", "extversion"], Vec::new()),
            (None | Some("pg_catalog"), "pg_namespace") => relation(
                &["oid", "nspname"],
                SCHEMAS.iter().enumerate().map(|(i, s)| vec![Value::Int(i as i64 + 1), text(s)]).collect(),
            ),
            (None | Some("pg_catalog"), "pg_database") => relation(&["datname"], vec![vec![text(super::DATABASE)]]),
            (None | Some("pg_catalog"), "pg_settings") => relation(
                &["name", "setting"],
                STARTUP_PARAMETERS.iter().chain(SETTINGS).map(|(k, v)| vec![text(k), text(v)]).collect(),
            ),
            _ => return None,
        })
    }
}

/// The SQL name of the type with this oid (`format_type`).
pub(super) fn type_name_of_oid(oid: i64) -> &'static str {
    u32::try_from(oid).ok().and_then(Type::from_oid).map_or("???", |t| values::sql_type_name(&t))
}

/// A relation as a result: each column typed by its values (text when it
/// has none, or mixes kinds).
fn to_result(relation: Relation) -> PgWireResult<QueryResult> {
    let mut fields = Vec::with_capacity(relation.columns.len());
    let mut arrays: Vec<ArrayRef> = Vec::with_capacity(relation.columns.len());
    for (i, name) in relation.columns.iter().enumerate() {
        let column: Vec<&Value> = relation.rows.iter().map(|r| r.get(i).unwrap_or(&Value::Null)).collect();
        let kinds: Vec<&Value> = column.iter().copied().filter(|v| **v != Value::Null).collect();
        let all = |f: fn(&Value) -> bool| !kinds.is_empty() && kinds.iter().all(|v| f(v));
        let array: ArrayRef = if all(|v| matches!(v, Value::Int(_))) {
            Arc::new(column.iter().map(|v| if let Value::Int(i) = v { Some(*i) } else { None }).collect::<Int64Array>())
        } else if all(|v| matches!(v, Value::Int(_) | Value::Float(_))) {
            Arc::new(
                column
                    .iter()
                    .map(|v| match v {
                        Value::Int(i) => Some(*i as f64),
                        Value::Float(f) => Some(*f),
                        _ => None,
                    })
                    .collect::<Float64Array>(),
            )
        } else if all(|v| matches!(v, Value::Bool(_))) {
            Arc::new(
                column.iter().map(|v| if let Value::Bool(b) = v { Some(*b) } else { None }).collect::<BooleanArray>(),
            )
        } else {
            Arc::new(column.iter().map(|v| v.text()).collect::<StringArray>())
        };
        fields.push(Field::new(name, array.data_type().clone(), true));
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &arrow_array::RecordBatchOptions::new().with_row_count(Some(relation.rows.len())),
    )
    .map_err(|e| PgWireError::ApiError(Box::new(e)))?;
    Ok(QueryResult { schema, batches: vec![batch], stats: QueryStats::default() })
}

/// A result of text columns.
fn table(columns: Vec<(&str, Vec<Option<String>>)>) -> PgWireResult<QueryResult> {
    let schema = Arc::new(Schema::new(
        columns.iter().map(|(name, _)| Field::new(*name, ArrowType::Utf8, true)).collect::<Vec<_>>(),
    ));
    let arrays: Vec<ArrayRef> =
        columns.into_iter().map(|(_, values)| Arc::new(StringArray::from(values)) as ArrayRef).collect();
    let batch =
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| pgwire::error::PgWireError::ApiError(Box::new(e)))?;
    Ok(QueryResult { schema, batches: vec![batch], stats: QueryStats::default() })
}
