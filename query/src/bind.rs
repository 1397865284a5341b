//! SQL text → [`LogicalPlan`]: parsing with sqlparser (PostgreSQL dialect),
//! then name resolution, typing and validation against the subset of
//! DESIGN.md §7. Everything outside the subset is refused here, naming the
//! construct and its line:column, so the executor never sees it.
//!
//! Tables: `events` (one row per event) and `metrics` (measures of §6,
//! answered by aggregating events: each measure is an event-level
//! expression that `sum()` adds up; see `docs/sql.md`). Function calls and
//! aggregates are bound in `bind/function.rs`.

use std::sync::Arc;

use adstore_storage::measure::{Measure, Only, Value as MeasureValue};
use adstore_storage::{COLUMNS, ColumnId, ColumnKind};
use sqlparser::ast::{
    self, BinaryOperator, DateTimeField, DuplicateTreatment, Expr as SqlExpr, FunctionArg, FunctionArgExpr,
    FunctionArguments, GroupByExpr, LimitClause, ObjectName, OrderByKind, SelectItem, SetExpr, Spanned, Statement,
    TableFactor, UnaryOperator, Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Span;

use crate::error::{Position, QueryError, Result};
use crate::expr::{BinOp, Expr, MathFn, TextFn};
use crate::plan::{AggFunc, AggSpec, Aggregate, BillingCol, LogicalPlan, Output, ScanCol, SortKey, SortTarget, Table};
use crate::time::{MINUTE_MS, TimeUnit, parse_interval, parse_timestamp};
use crate::types::{DataType, Scalar};

mod coerce;
mod function;
mod params;

use coerce::{coerce, retype_null, unify, unify_type};
use function::epoch_bucket;
pub(crate) use params::Params;
use params::literal_u64;

/// Dimensions of `metrics` (DESIGN.md §6), besides `ts`.
pub(crate) use adstore_storage::measure::DIMENSIONS as METRIC_DIMENSIONS;

/// Whether `name` is a measure of `metrics` (`adstore_storage::measure`).
fn is_measure(name: &str) -> bool {
    Measure::parse(name).is_some()
}

/// `type` codes as strings, in code order.
pub(crate) static TYPE_NAMES: [&str; 3] = adstore_storage::EventType::NAMES;
/// `invalid_reason` codes as strings, in code order ('' = valid).
pub(crate) static INVALID_NAMES: [&str; 6] = adstore_storage::InvalidReason::NAMES;

pub(crate) fn pos(span: Span) -> Option<Position> {
    (span.start.line > 0).then_some(Position { line: span.start.line, column: span.start.column })
}

fn unsupported(construct: impl Into<String>, span: Span) -> QueryError {
    QueryError::Unsupported { construct: construct.into(), position: pos(span) }
}

fn invalid(message: impl Into<String>, span: Span) -> QueryError {
    QueryError::Invalid { message: message.into(), position: pos(span) }
}

fn type_error(message: impl Into<String>, span: Span) -> QueryError {
    QueryError::Type { message: message.into(), position: pos(span) }
}

/// Splits sqlparser's "… at Line: 1, Column: 8" into message and position;
/// errors at the end of input point just past the last character.
fn syntax_error(e: ParserError, sql: &str) -> QueryError {
    let text = match e {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
        ParserError::RecursionLimitExceeded => "query is nested too deeply".to_string(),
    };
    if let Some(i) = text.rfind(" at Line: ") {
        let loc = &text[i + " at Line: ".len()..];
        let mut parts = loc.split(", Column: ");
        let line = parts.next().and_then(|l| l.trim().parse().ok());
        let column = parts.next().and_then(|c| c.trim().parse().ok());
        if let (Some(line), Some(column)) = (line, column) {
            return QueryError::Syntax { message: text[..i].to_string(), position: Some(Position { line, column }) };
        }
    }
    let line = sql.trim_end().lines().count().max(1) as u64;
    let column = sql.trim_end().lines().last().map_or(0, |l| l.chars().count()) as u64 + 1;
    QueryError::Syntax { message: text, position: Some(Position { line, column }) }
}

/// Parses and binds one statement.
pub(crate) fn bind_sql(sql: &str, now_ms: i64, max_nesting: usize, params: Params<'_>) -> Result<LogicalPlan> {
    // One level of nesting takes the parser a few levels of recursion;
    // `limits::check` has bounded the nesting already, so the parser's
    // own limit (default 50) is set past what it lets through.
    let dialect = PostgreSqlDialect {};
    let statements = Parser::new(&dialect)
        .with_recursion_limit(max_nesting.saturating_mul(8).saturating_add(64))
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| syntax_error(e, sql))?;
    let mut it = statements.into_iter();
    let Some(first) = it.next() else {
        return Err(QueryError::Syntax { message: "empty query".into(), position: None });
    };
    if let Some(second) = it.next() {
        return Err(unsupported("more than one statement", second.span()));
    }
    let (query, explain) = match first {
        Statement::Query(q) => (q, false),
        Statement::Explain { statement, analyze, verbose, format, options, .. } => {
            let span = statement.span();
            if analyze || verbose || format.is_some() || options.is_some() {
                return Err(unsupported("EXPLAIN options (ANALYZE, VERBOSE, FORMAT)", span));
            }
            match *statement {
                Statement::Query(q) => (q, true),
                other => return Err(unsupported(format!("EXPLAIN of {}", statement_kind(&other)), span)),
            }
        }
        other => {
            return Err(unsupported(
                format!("{} statements; only SELECT and EXPLAIN SELECT", statement_kind(&other)),
                other.span(),
            ));
        }
    };
    Binder::new(now_ms, params).bind_query(&query, explain)
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    text.split_whitespace().next().unwrap_or("this").to_ascii_uppercase()
}

/// Column names of a table, as `(name, type)`, for `SELECT *` and docs.
fn event_column_type(c: ColumnId) -> DataType {
    match c {
        ColumnId::Ts => DataType::Timestamp,
        ColumnId::Type | ColumnId::InvalidReason => DataType::Str,
        _ => match c.spec().kind {
            ColumnKind::Str => DataType::Str,
            ColumnKind::I64 => DataType::Int,
            ColumnKind::U8 => DataType::Int,
            ColumnKind::Bool => DataType::Bool,
            // Invariant: no event column holds bytes (`COLUMNS`); were one
            // to, it would read as text.
            ColumnKind::Bytes => DataType::Str,
        },
    }
}

struct Binder<'p> {
    now_ms: i64,
    params: Params<'p>,
    /// Binding a SELECT without FROM: there are no columns.
    no_from: bool,
    table: Table,
    alias: Option<String>,
    scan_cols: Vec<ScanCol>,
    keys: Vec<Expr>,
    aggs: Vec<AggSpec>,
    /// True while binding the argument of an aggregate function.
    in_agg: bool,
}

fn ident_name(id: &ast::Ident) -> String {
    if id.quote_style.is_some() { id.value.clone() } else { id.value.to_ascii_lowercase() }
}

fn is_aggregate_name(name: &str) -> bool {
    matches!(name, "count" | "sum" | "min" | "max" | "avg" | "approx_count_distinct")
}

fn function_name(f: &ast::Function) -> String {
    f.name.0.iter().map(|p| p.as_ident().map(ident_name).unwrap_or_default()).collect::<Vec<_>>().join(".")
}

/// Whether an expression calls an aggregate function (outside subqueries).
fn contains_aggregate(e: &SqlExpr) -> bool {
    match e {
        SqlExpr::Function(f) => {
            is_aggregate_name(&function_name(f))
                || match &f.args {
                    FunctionArguments::List(l) => l.args.iter().any(|a| match a {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(x))
                        | FunctionArg::Named { arg: FunctionArgExpr::Expr(x), .. } => contains_aggregate(x),
                        _ => false,
                    }),
                    _ => false,
                }
        }
        SqlExpr::BinaryOp { left, right, .. } => contains_aggregate(left) || contains_aggregate(right),
        SqlExpr::UnaryOp { expr, .. }
        | SqlExpr::Nested(expr)
        | SqlExpr::IsNull(expr)
        | SqlExpr::IsNotNull(expr)
        | SqlExpr::Extract { expr, .. }
        | SqlExpr::Cast { expr, .. } => contains_aggregate(expr),
        SqlExpr::InList { expr, list, .. } => contains_aggregate(expr) || list.iter().any(contains_aggregate),
        SqlExpr::Between { expr, low, high, .. } => {
            contains_aggregate(expr) || contains_aggregate(low) || contains_aggregate(high)
        }
        SqlExpr::Like { expr, pattern, .. } => contains_aggregate(expr) || contains_aggregate(pattern),
        SqlExpr::Case { operand, conditions, else_result, .. } => {
            operand.as_deref().is_some_and(contains_aggregate)
                || conditions.iter().any(|c| contains_aggregate(&c.condition) || contains_aggregate(&c.result))
                || else_result.as_deref().is_some_and(contains_aggregate)
        }
        _ => false,
    }
}

fn lit(s: Scalar) -> Expr {
    let t = match &s {
        Scalar::Null => DataType::Null,
        Scalar::Bool(_) => DataType::Bool,
        Scalar::Int(_) => DataType::Int,
        Scalar::Float(_) => DataType::Float,
        Scalar::Str(_) => DataType::Str,
        Scalar::Ts(_) => DataType::Timestamp,
    };
    Expr::Lit(s, t)
}

fn and(a: Expr, b: Expr) -> Expr {
    Expr::Bin(BinOp::And, Box::new(a), Box::new(b), DataType::Bool)
}

/// The literal value of an interval expression (`INTERVAL '5 minutes'`,
/// `INTERVAL '5' MINUTE`, or a string literal), in ms.
fn interval_ms(e: &SqlExpr) -> Result<Option<i64>> {
    let span = e.span();
    let (text, field) = match e {
        SqlExpr::Interval(iv) => {
            if iv.last_field.is_some() || iv.fractional_seconds_precision.is_some() {
                return Err(unsupported("INTERVAL with a range of fields", span));
            }
            let text = match iv.value.as_ref() {
                SqlExpr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => s.clone(),
                    Value::Number(n, _) => n.clone(),
                    _ => return Err(unsupported("INTERVAL of this value", span)),
                },
                _ => return Err(unsupported("INTERVAL of a non-literal value", span)),
            };
            (text, iv.leading_field.as_ref().map(|f| f.to_string()))
        }
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => (s.clone(), None),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let full = match field {
        Some(f) => format!("{text} {f}"),
        None => text,
    };
    parse_interval(&full).map(Some).map_err(|message| QueryError::InvalidLiteral { message, position: pos(span) })
}

impl<'p> Binder<'p> {
    fn new(now_ms: i64, params: Params<'p>) -> Binder<'p> {
        Binder {
            now_ms,
            params,
            no_from: false,
            table: Table::Events,
            alias: None,
            scan_cols: Vec::new(),
            keys: Vec::new(),
            aggs: Vec::new(),
            in_agg: false,
        }
    }

    fn slot(&mut self, c: ScanCol) -> usize {
        if let Some(i) = self.scan_cols.iter().position(|x| *x == c) {
            return i;
        }
        self.scan_cols.push(c);
        self.scan_cols.len() - 1
    }

    fn event_col(&mut self, c: ColumnId) -> Expr {
        Expr::Slot(self.slot(ScanCol::Event(c)), event_column_type(c))
    }

    fn bind_query(mut self, q: &ast::Query, explain: bool) -> Result<LogicalPlan> {
        let qspan = q.span();
        if let Some(with) = &q.with {
            return Err(unsupported("WITH (common table expressions)", with.span()));
        }
        if q.fetch.is_some() {
            return Err(unsupported("FETCH", qspan));
        }
        if !q.locks.is_empty() {
            return Err(unsupported("FOR UPDATE / FOR SHARE", qspan));
        }
        if q.for_clause.is_some() || q.settings.is_some() || q.format_clause.is_some() || !q.pipe_operators.is_empty() {
            return Err(unsupported("FOR / SETTINGS / FORMAT / pipe clauses", qspan));
        }
        let select = match q.body.as_ref() {
            SetExpr::Select(s) => s,
            SetExpr::SetOperation { op, .. } => {
                return Err(unsupported(format!("{op} (set operations)"), q.body.span()));
            }
            SetExpr::Values(_) => return Err(unsupported("VALUES", q.body.span())),
            SetExpr::Query(_) => return Err(unsupported("parenthesized subquery", q.body.span())),
            _ => return Err(unsupported("this statement form", q.body.span())),
        };
        let sspan = select.select_token.0.span;
        if select.from.is_empty() && select.distinct.is_none() {
            return self.bind_without_from(select, q, explain);
        }
        if let Some(d) = &select.distinct {
            let _ = d;
            return Err(unsupported("SELECT DISTINCT (use GROUP BY)", sspan));
        }
        if select.top.is_some() {
            return Err(unsupported("TOP", sspan));
        }
        if select.into.is_some() {
            return Err(unsupported("SELECT INTO", sspan));
        }
        if select.exclude.is_some() {
            return Err(unsupported("EXCLUDE", sspan));
        }
        if !select.lateral_views.is_empty() {
            return Err(unsupported("LATERAL VIEW", sspan));
        }
        if select.prewhere.is_some() {
            return Err(unsupported("PREWHERE", sspan));
        }
        if !select.connect_by.is_empty() {
            return Err(unsupported("CONNECT BY", sspan));
        }
        if !select.cluster_by.is_empty() || !select.distribute_by.is_empty() || !select.sort_by.is_empty() {
            return Err(unsupported("CLUSTER BY / DISTRIBUTE BY / SORT BY", sspan));
        }
        if !select.named_window.is_empty() {
            return Err(unsupported("WINDOW", sspan));
        }
        if let Some(qf) = &select.qualify {
            return Err(unsupported("QUALIFY", qf.span()));
        }
        if select.value_table_mode.is_some() {
            return Err(unsupported("SELECT AS STRUCT / VALUE", sspan));
        }
        self.bind_from(select, sspan)?;

        // WHERE
        let filter = match &select.selection {
            Some(w) => {
                let e = self.bind_scan(w)?;
                Some(self.expect_bool(e, w.span(), "WHERE")?)
            }
            None => None,
        };

        // GROUP BY
        let group_exprs: &[SqlExpr] = match &select.group_by {
            GroupByExpr::All(_) => return Err(unsupported("GROUP BY ALL", sspan)),
            GroupByExpr::Expressions(exprs, modifiers) => {
                if !modifiers.is_empty() {
                    return Err(unsupported("GROUP BY modifiers (ROLLUP, CUBE, TOTALS)", sspan));
                }
                exprs
            }
        };
        let order_items: Vec<&ast::OrderByExpr> = match &q.order_by {
            None => Vec::new(),
            Some(ob) => {
                if ob.interpolate.is_some() {
                    return Err(unsupported("INTERPOLATE", qspan));
                }
                match &ob.kind {
                    OrderByKind::All(_) => return Err(unsupported("ORDER BY ALL", qspan)),
                    OrderByKind::Expressions(v) => v.iter().collect(),
                }
            }
        };
        let is_aggregate = !group_exprs.is_empty()
            || select.having.is_some()
            || select.projection.iter().any(|item| match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => contains_aggregate(e),
                _ => false,
            })
            || order_items.iter().any(|o| contains_aggregate(&o.expr));

        // Select items, as (name, sql expr); `*` expands for row queries.
        let mut items: Vec<(String, Option<SqlExpr>, Span)> = Vec::new();
        for item in &select.projection {
            match item {
                SelectItem::UnnamedExpr(e) => items.push((output_name(e), Some(e.clone()), e.span())),
                SelectItem::ExprWithAlias { expr, alias } => {
                    items.push((ident_name(alias), Some(expr.clone()), expr.span()))
                }
                SelectItem::Wildcard(opts) => {
                    let span = item.span();
                    if opts.opt_exclude.is_some()
                        || opts.opt_except.is_some()
                        || opts.opt_replace.is_some()
                        || opts.opt_rename.is_some()
                        || opts.opt_ilike.is_some()
                    {
                        return Err(unsupported("wildcard options (EXCLUDE, REPLACE, …)", span));
                    }
                    if is_aggregate {
                        return Err(invalid("SELECT * cannot be combined with GROUP BY or aggregates", span));
                    }
                    if self.table == Table::Metrics {
                        return Err(invalid(
                            "metrics is pre-aggregated: select dimensions with GROUP BY and measures with sum()",
                            span,
                        ));
                    }
                    if self.table == Table::BillingDaily {
                        items.extend(BillingCol::all().into_iter().map(|c| (c.name().to_string(), None, span)));
                        continue;
                    }
                    for c in &COLUMNS {
                        items.push((c.name.to_string(), None, span));
                    }
                    items.push(("final".to_string(), None, span));
                }
                other => return Err(unsupported("qualified wildcard", other.span())),
            }
        }

        let mut outputs = Vec::with_capacity(items.len());
        let mut aggregate = None;
        let mut sort_exprs = Vec::new();
        let mut order = Vec::new();
        if is_aggregate {
            for g in group_exprs {
                let key = self.bind_group_key(g, &items)?;
                if !self.keys.contains(&key) {
                    self.keys.push(key);
                }
            }
            for (name, e, _) in &items {
                let Some(e) = e else { continue };
                outputs.push(Output { name: name.clone(), expr: self.bind_post(e, &[])? });
            }
            let having = match &select.having {
                Some(h) => {
                    let e = self.bind_post(h, &outputs)?;
                    Some(self.expect_bool(e, h.span(), "HAVING")?)
                }
                None => None,
            };
            for o in &order_items {
                order.push(self.bind_order(o, &outputs, &mut sort_exprs, true)?);
            }
            // Keys and aggregates are now final; post slots are keys, then aggregates.
            aggregate =
                Some(Aggregate { keys: std::mem::take(&mut self.keys), aggs: std::mem::take(&mut self.aggs), having });
        } else {
            if self.table == Table::Metrics {
                return Err(invalid(
                    "metrics is pre-aggregated: use GROUP BY over its dimensions and sum() over its measures",
                    sspan,
                ));
            }
            for (name, e, _) in &items {
                let expr = match e {
                    Some(e) => self.bind_scan(e)?,
                    None => match (self.table, ColumnId::from_name(name)) {
                        (Table::BillingDaily, _) => match BillingCol::all().into_iter().find(|c| c.name() == name) {
                            Some(c) => self.billing_col(c),
                            None => return Err(QueryError::Internal(format!("billing_daily has no column {name}"))),
                        },
                        (_, Some(c)) => self.event_col(c),
                        (_, None) => Expr::Slot(self.slot(ScanCol::Final), DataType::Bool),
                    },
                };
                outputs.push(Output { name: name.clone(), expr });
            }
            for o in &order_items {
                order.push(self.bind_order(o, &outputs, &mut sort_exprs, false)?);
            }
        }

        let (limit, offset) = self.limit_offset(q)?;

        // `billing_daily` shows the latest version of each day unless WHERE
        // asks about versions.
        let version_slot = self.scan_cols.iter().position(|c| *c == ScanCol::Billing(BillingCol::Version));
        let mut all_versions = false;
        if let (Some(f), Some(v)) = (&filter, version_slot) {
            f.visit_slots(&mut |i| all_versions |= i == v);
        }
        Ok(LogicalPlan {
            table: self.table,
            all_versions,
            explain,
            no_from: false,
            scan_cols: self.scan_cols,
            filter,
            aggregate,
            outputs,
            sort_exprs,
            order,
            limit,
            offset,
        })
    }

    /// `LIMIT` and `OFFSET`, literals or parameters.
    fn limit_offset(&self, q: &ast::Query) -> Result<(Option<u64>, u64)> {
        Ok(match &q.limit_clause {
            None => (None, 0),
            Some(LimitClause::LimitOffset { limit, offset, limit_by }) => {
                if let Some(b) = limit_by.first() {
                    return Err(unsupported("LIMIT BY", b.span()));
                }
                let limit = match limit {
                    Some(SqlExpr::Value(v)) if matches!(v.value, Value::Null) => None,
                    Some(l) => Some(literal_u64(l, "LIMIT", self.params)?),
                    None => None,
                };
                let offset = match offset {
                    Some(o) => literal_u64(&o.value, "OFFSET", self.params)?,
                    None => 0,
                };
                (limit, offset)
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                (Some(literal_u64(limit, "LIMIT", self.params)?), literal_u64(offset, "OFFSET", self.params)?)
            }
        })
    }

    /// `SELECT 1`, `SELECT now()`: a statement without FROM is one row of
    /// constants (no columns to read, no aggregates, WHERE or GROUP BY).
    fn bind_without_from(mut self, select: &ast::Select, q: &ast::Query, explain: bool) -> Result<LogicalPlan> {
        let sspan = select.select_token.0.span;
        if let Some(w) = &select.selection {
            return Err(unsupported("WHERE without FROM", w.span()));
        }
        if select.having.is_some() || !matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty()) {
            return Err(unsupported("GROUP BY or HAVING without FROM", sspan));
        }
        if q.order_by.is_some() {
            return Err(unsupported("ORDER BY without FROM", sspan));
        }
        self.no_from = true;
        let mut outputs = Vec::with_capacity(select.projection.len());
        for item in &select.projection {
            let (name, e) = match item {
                SelectItem::UnnamedExpr(e) => (output_name(e), e),
                SelectItem::ExprWithAlias { expr, alias } => (ident_name(alias), expr),
                other => return Err(unsupported("* without FROM", other.span())),
            };
            if contains_aggregate(e) {
                return Err(unsupported("aggregates without FROM", e.span()));
            }
            let expr = self.bind_scan(e)?;
            if expr.has_slots() {
                return Err(QueryError::Internal(format!("{e} reads a column without FROM")));
            }
            outputs.push(Output { name, expr });
        }
        let (limit, offset) = self.limit_offset(q)?;
        Ok(LogicalPlan {
            table: Table::Events,
            all_versions: false,
            explain,
            no_from: true,
            scan_cols: Vec::new(),
            filter: None,
            aggregate: None,
            outputs,
            sort_exprs: Vec::new(),
            order: Vec::new(),
            limit,
            offset,
        })
    }

    fn bind_from(&mut self, select: &ast::Select, sspan: Span) -> Result<()> {
        let [from] = select.from.as_slice() else {
            return Err(if select.from.is_empty() {
                unsupported("SELECT without FROM; query events, metrics or billing_daily", sspan)
            } else {
                unsupported("more than one table in FROM (joins)", select.from[1].span())
            });
        };
        if let Some(j) = from.joins.first() {
            return Err(unsupported("JOIN", j.span()));
        }
        match &from.relation {
            TableFactor::Table { name, alias, args, with_hints, version, partitions, sample, index_hints, .. } => {
                if args.is_some() {
                    return Err(unsupported("table function", from.relation.span()));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || !partitions.is_empty()
                    || sample.is_some()
                    || !index_hints.is_empty()
                {
                    return Err(unsupported("table hints, versions, partitions or samples", from.relation.span()));
                }
                let table = self.table_name(name)?;
                self.table = table;
                if let Some(a) = alias {
                    if !a.columns.is_empty() {
                        return Err(unsupported("column aliases on a table", a.name.span));
                    }
                    self.alias = Some(ident_name(&a.name));
                }
                Ok(())
            }
            TableFactor::Derived { .. } => Err(unsupported("subquery in FROM", from.relation.span())),
            other => Err(unsupported("this kind of FROM item", other.span())),
        }
    }

    fn table_name(&self, name: &ObjectName) -> Result<Table> {
        let parts: Vec<String> = name.0.iter().map(|p| p.as_ident().map(ident_name).unwrap_or_default()).collect();
        let last = parts.last().cloned().unwrap_or_default();
        let schema_ok = parts.len() == 1 || (parts.len() == 2 && (parts[0] == "adstore" || parts[0] == "public"));
        match last.as_str() {
            "events" if schema_ok => Ok(Table::Events),
            "metrics" if schema_ok => Ok(Table::Metrics),
            "billing_daily" if schema_ok => Ok(Table::BillingDaily),
            _ => Err(QueryError::UnknownTable { name: name.to_string(), position: pos(name.span()) }),
        }
    }

    fn expect_bool(&self, e: Expr, span: Span, clause: &str) -> Result<Expr> {
        match e.ty() {
            DataType::Bool => Ok(e),
            DataType::Null => Ok(retype_null(e, DataType::Bool)),
            t => Err(type_error(format!("{clause} needs a boolean condition, found {t}"), span)),
        }
    }

    /// Resolves a column name of the current table.
    fn column(&mut self, id: &ast::Ident) -> Result<Expr> {
        let name = ident_name(id);
        let span = id.span;
        let unknown = |hint: String| QueryError::UnknownColumn { name: name.clone(), position: pos(span), hint };
        if self.no_from {
            return Err(unknown(
                ": a SELECT without FROM has no columns; query events, metrics or billing_daily".into(),
            ));
        }
        match self.table {
            Table::Events => {
                if name == "final" {
                    return Ok(Expr::Slot(self.slot(ScanCol::Final), DataType::Bool));
                }
                match ColumnId::from_name(&name) {
                    Some(c) => Ok(self.event_col(c)),
                    None if is_measure(&name) => Err(unknown(format!(" in events ({name} is a measure of metrics)"))),
                    None => Err(unknown(" in events".into())),
                }
            }
            Table::Metrics => {
                if name == "ts" {
                    // A metrics row's ts is the start of its minute bucket.
                    let ts = self.event_col(ColumnId::Ts);
                    return Ok(Expr::DateTrunc(TimeUnit::Minute, Box::new(ts)));
                }
                if let Some(c) = METRIC_DIMENSIONS.iter().find(|c| c.name() == name) {
                    return Ok(self.event_col(*c));
                }
                if is_measure(&name) {
                    let how = if name == "users" { "approx_count_distinct(users)" } else { "sum(…)" };
                    return Err(invalid(format!("measure {name} of metrics can only be read as {how}"), span));
                }
                Err(unknown(" in metrics (dimensions: ts, publisher_id, advertiser_id, campaign_id, ad_group_id, ad_id, device, os, country, region, placement)".into()))
            }
            Table::BillingDaily => match BillingCol::all().into_iter().find(|c| c.name() == name) {
                Some(c) => Ok(self.billing_col(c)),
                None => {
                    let all: Vec<&str> = BillingCol::all().iter().map(|c| c.name()).collect();
                    Err(unknown(format!(" in billing_daily ({})", all.join(", "))))
                }
            },
        }
    }

    fn billing_col(&mut self, c: BillingCol) -> Expr {
        Expr::Slot(self.slot(ScanCol::Billing(c)), c.ty())
    }

    /// The event-level expression whose sum is a measure of `metrics`.
    /// A summed measure of `metrics` as an expression over `events`: its
    /// value where an event counts for it, else 0 (`adstore_storage::measure`
    /// defines which events count, and for what).
    fn measure(&mut self, name: &str) -> Option<Expr> {
        let def = Measure::parse(name)?.definition();
        let value = match def.value {
            MeasureValue::One => lit(Scalar::Int(1)),
            MeasureValue::CostMicros => self.event_col(ColumnId::CostMicros),
            MeasureValue::ValueMicros => self.event_col(ColumnId::ValueMicros),
            MeasureValue::DistinctUsers => return None,
        };
        let t = self.event_col(ColumnId::Type);
        let types = def.types.iter().map(|k| Scalar::Str(k.as_str().into())).collect();
        let of_type = Expr::InList(Box::new(t), types, false);
        let reason = self.event_col(ColumnId::InvalidReason);
        let valid = |op| Expr::Bin(op, Box::new(reason.clone()), Box::new(lit(Scalar::Str("".into()))), DataType::Bool);
        let cond = match def.only {
            Only::All => of_type,
            Only::Valid => and(of_type, valid(BinOp::Eq)),
            Only::Invalid => and(of_type, valid(BinOp::NotEq)),
            Only::Attributed => and(of_type, self.event_col(ColumnId::Attributed)),
        };
        Some(Expr::Case(vec![(cond, value)], Box::new(lit(Scalar::Int(0))), DataType::Int))
    }

    /// Binds an expression over scan columns (no aggregates).
    fn bind_scan(&mut self, e: &SqlExpr) -> Result<Expr> {
        self.bind(e, false, &[])
    }

    /// Binds an expression over group keys and aggregates. `outputs` are
    /// the select list's bound outputs, reachable by alias (HAVING, ORDER BY).
    fn bind_post(&mut self, e: &SqlExpr, outputs: &[Output]) -> Result<Expr> {
        self.bind(e, true, outputs)
    }

    fn bind_group_key(&mut self, g: &SqlExpr, items: &[(String, Option<SqlExpr>, Span)]) -> Result<Expr> {
        let span = g.span();
        if let SqlExpr::Value(v) = g
            && let Value::Number(n, _) = &v.value
        {
            let i: usize = n.parse().map_err(|_| invalid(format!("GROUP BY position {n} is not valid"), span))?;
            let Some((_, Some(e), _)) = i.checked_sub(1).and_then(|i| items.get(i)) else {
                return Err(invalid(format!("GROUP BY position {i} is not in the select list"), span));
            };
            if contains_aggregate(e) {
                return Err(invalid(format!("GROUP BY position {i} refers to an aggregate"), span));
            }
            return self.bind_scan(e);
        }
        if let SqlExpr::Identifier(id) = g {
            // An input column wins over an output alias (PostgreSQL).
            match self.column(id) {
                Ok(e) => return Ok(e),
                Err(err) => {
                    let name = ident_name(id);
                    if let Some((_, Some(e), _)) = items.iter().find(|(n, _, _)| *n == name) {
                        if contains_aggregate(e) {
                            return Err(invalid(format!("GROUP BY {name} refers to an aggregate"), span));
                        }
                        return self.bind_scan(e);
                    }
                    return Err(err);
                }
            }
        }
        if contains_aggregate(g) {
            return Err(invalid("aggregate functions are not allowed in GROUP BY", span));
        }
        self.bind_scan(g)
    }

    fn bind_order(
        &mut self,
        o: &ast::OrderByExpr,
        outputs: &[Output],
        extra: &mut Vec<Expr>,
        post: bool,
    ) -> Result<SortKey> {
        let span = o.expr.span();
        if o.with_fill.is_some() {
            return Err(unsupported("WITH FILL", span));
        }
        let desc = match &o.options.sort {
            None | Some(ast::OrderBySort::Asc) => false,
            Some(ast::OrderBySort::Desc) => true,
            Some(_) => return Err(unsupported("ORDER BY … USING", span)),
        };
        let nulls_first = o.options.nulls_first.unwrap_or(desc);
        let target = match &o.expr {
            SqlExpr::Value(v) if matches!(v.value, Value::Number(..)) => {
                let n = literal_u64(&o.expr, "ORDER BY position", self.params)? as usize;
                if n == 0 || n > outputs.len() {
                    return Err(invalid(format!("ORDER BY position {n} is not in the select list"), span));
                }
                SortTarget::Output(n - 1)
            }
            SqlExpr::Identifier(id) if outputs.iter().any(|x| x.name == ident_name(id)) => {
                let name = ident_name(id);
                SortTarget::Output(outputs.iter().position(|x| x.name == name).unwrap_or(0))
            }
            e => {
                let bound = if post { self.bind_post(e, outputs)? } else { self.bind_scan(e)? };
                match outputs.iter().position(|x| x.expr == bound) {
                    Some(i) => SortTarget::Output(i),
                    None => {
                        extra.push(bound);
                        SortTarget::Extra(extra.len() - 1)
                    }
                }
            }
        };
        Ok(SortKey { target, desc, nulls_first })
    }

    fn bind(&mut self, e: &SqlExpr, post: bool, outputs: &[Output]) -> Result<Expr> {
        let span = e.span();
        if post {
            if let SqlExpr::Function(f) = e
                && is_aggregate_name(&function_name(f))
            {
                return self.bind_aggregate(f, span);
            }
            if let SqlExpr::Identifier(id) = e
                && let Some(o) = outputs.iter().find(|o| o.name == ident_name(id))
                && ColumnId::from_name(&ident_name(id)).is_none()
            {
                return Ok(o.expr.clone());
            }
            if !contains_aggregate(e) {
                match self.bind(e, false, &[]) {
                    Ok(bound) => {
                        if let Some(i) = self.keys.iter().position(|k| *k == bound) {
                            return Ok(Expr::Slot(i, bound.ty()));
                        }
                        if !bound.has_slots() {
                            return Ok(bound);
                        }
                        if let SqlExpr::Identifier(_) | SqlExpr::CompoundIdentifier(_) = e {
                            return Err(invalid(
                                format!("column {e} must appear in GROUP BY or be used in an aggregate function"),
                                span,
                            ));
                        }
                    }
                    // Not an expression over input columns: it may name
                    // outputs (`HAVING n > 10` for `count(*) AS n`), which
                    // binding its parts below resolves, or fails as before.
                    Err(err) if outputs.is_empty() => return Err(err),
                    Err(_) => {}
                }
            }
        }
        let b = |s: &mut Binder, x: &SqlExpr| s.bind(x, post, outputs);
        Ok(match e {
            SqlExpr::Identifier(id) => self.column(id)?,
            SqlExpr::CompoundIdentifier(parts) => {
                let [q, c] = parts.as_slice() else {
                    return Err(unsupported(format!("compound name {e}"), span));
                };
                let q = ident_name(q);
                if q != self.table.name() && Some(&q) != self.alias.as_ref() {
                    return Err(QueryError::UnknownColumn {
                        name: e.to_string(),
                        position: pos(span),
                        hint: String::new(),
                    });
                }
                self.column(c)?
            }
            SqlExpr::Nested(x) => b(self, x)?,
            SqlExpr::Floor { expr, field: ast::CeilFloorKind::DateTimeField(DateTimeField::NoDateTime) } => {
                self.bind_math(MathFn::Floor, expr, post, outputs)?
            }
            SqlExpr::Ceil { expr, field: ast::CeilFloorKind::DateTimeField(DateTimeField::NoDateTime) } => {
                self.bind_math(MathFn::Ceil, expr, post, outputs)?
            }
            SqlExpr::Value(v) => match &v.value {
                Value::Number(n, _) => match n.parse::<i64>() {
                    Ok(i) => lit(Scalar::Int(i)),
                    Err(_) => match n.parse::<f64>() {
                        Ok(f) if f.is_finite() => lit(Scalar::Float(f)),
                        _ => {
                            return Err(QueryError::InvalidLiteral {
                                message: format!("number {n} is out of range"),
                                position: pos(span),
                            });
                        }
                    },
                },
                Value::SingleQuotedString(s) => lit(Scalar::Str(Arc::from(s.as_str()))),
                Value::Boolean(x) => lit(Scalar::Bool(*x)),
                Value::Null => lit(Scalar::Null),
                Value::Placeholder(name) => lit(self.params.get(name, span)?),
                _ => return Err(unsupported(format!("literal {v}"), span)),
            },
            SqlExpr::TypedString(ts) => {
                let text = match &ts.value.value {
                    Value::SingleQuotedString(s) => s.clone(),
                    other => return Err(unsupported(format!("typed literal {other}"), span)),
                };
                match ts.data_type {
                    ast::DataType::Timestamp(..) | ast::DataType::Date | ast::DataType::TimestampNtz(_) => {
                        match parse_timestamp(&text) {
                            Some(ms) => lit(Scalar::Ts(ms)),
                            None => {
                                return Err(QueryError::InvalidLiteral {
                                    message: format!("{text:?} is not a timestamp; use '2026-11-22T10:00:00Z'"),
                                    position: pos(span),
                                });
                            }
                        }
                    }
                    ref other => return Err(unsupported(format!("{other} literal"), span)),
                }
            }
            SqlExpr::Interval(_) => {
                return Err(unsupported("INTERVAL outside time_bucket() or timestamp ± INTERVAL", span));
            }
            SqlExpr::UnaryOp { op, expr } => {
                let x = b(self, expr)?;
                match op {
                    UnaryOperator::Not => Expr::Not(Box::new(self.expect_bool(x, expr.span(), "NOT")?)),
                    UnaryOperator::Minus => match x.ty() {
                        DataType::Int | DataType::Float | DataType::Null => {
                            if let Expr::Lit(Scalar::Int(i), _) = x {
                                lit(Scalar::Int(i.checked_neg().ok_or(QueryError::Overflow { what: "negation" })?))
                            } else {
                                Expr::Neg(Box::new(retype_null(x, DataType::Int)))
                            }
                        }
                        t => return Err(type_error(format!("cannot negate {t}"), span)),
                    },
                    UnaryOperator::Plus if x.ty().is_numeric() => x,
                    other => return Err(unsupported(format!("unary operator {other}"), span)),
                }
            }
            SqlExpr::BinaryOp { left, op, right } => self.bind_binary(left, op, right, span, post, outputs)?,
            SqlExpr::IsNull(x) => Expr::IsNull(Box::new(b(self, x)?), false),
            SqlExpr::IsNotNull(x) => Expr::IsNull(Box::new(b(self, x)?), true),
            SqlExpr::InList { expr, list, negated } => {
                let x = b(self, expr)?;
                let mut values = Vec::with_capacity(list.len());
                let mut ty = x.ty();
                for item in list {
                    let v = b(self, item)?;
                    let (xs, vs, t) = unify(x.clone(), v, item.span(), "compare")?;
                    let _ = xs;
                    ty = t;
                    match vs {
                        Expr::Lit(s, _) => values.push(s),
                        Expr::ToFloat(inner) => match *inner {
                            Expr::Lit(Scalar::Int(i), _) => values.push(Scalar::Float(i as f64)),
                            _ => return Err(unsupported("IN list with non-constant values", item.span())),
                        },
                        _ => return Err(unsupported("IN list with non-constant values", item.span())),
                    }
                }
                // Integer columns compared with float values: widen the column.
                let x = if ty == DataType::Float && x.ty() == DataType::Int {
                    values = values
                        .into_iter()
                        .map(|v| if let Scalar::Int(i) = v { Scalar::Float(i as f64) } else { v })
                        .collect();
                    Expr::ToFloat(Box::new(x))
                } else {
                    retype_null(x, ty)
                };
                Expr::InList(Box::new(x), values, *negated)
            }
            SqlExpr::InSubquery { .. } => return Err(unsupported("IN (subquery)", span)),
            SqlExpr::Between { expr, negated, low, high } => {
                let x = b(self, expr)?;
                let lo = b(self, low)?;
                let hi = b(self, high)?;
                let ge = self.comparison(BinOp::GtEq, x.clone(), lo, low.span())?;
                let le = self.comparison(BinOp::LtEq, x, hi, high.span())?;
                let both = and(ge, le);
                if *negated { Expr::Not(Box::new(both)) } else { both }
            }
            SqlExpr::Like { negated, any, expr, pattern, escape_char } => {
                if *any {
                    return Err(unsupported("LIKE ANY", span));
                }
                if escape_char.is_some() {
                    return Err(unsupported("LIKE … ESCAPE (the escape character is always \\)", span));
                }
                let x = b(self, expr)?;
                if !matches!(x.ty(), DataType::Str | DataType::Null) {
                    return Err(type_error(format!("LIKE needs a string, found {}", x.ty()), expr.span()));
                }
                let pat = match b(self, pattern)? {
                    Expr::Lit(Scalar::Str(p), _) => p.to_string(),
                    Expr::Lit(Scalar::Null, _) => return Ok(lit(Scalar::Null)).map(|e| retype_null(e, DataType::Bool)),
                    _ => return Err(unsupported("LIKE with a non-constant pattern", pattern.span())),
                };
                Expr::Like(Box::new(retype_null(x, DataType::Str)), pat, *negated)
            }
            SqlExpr::ILike { .. } => return Err(unsupported("ILIKE", span)),
            SqlExpr::SimilarTo { .. } => return Err(unsupported("SIMILAR TO", span)),
            SqlExpr::RLike { .. } => return Err(unsupported("RLIKE / REGEXP", span)),
            SqlExpr::Case { operand, conditions, else_result, .. } => {
                let operand = match operand {
                    Some(o) => Some(b(self, o)?),
                    None => None,
                };
                let mut whens = Vec::with_capacity(conditions.len());
                let mut ty = DataType::Null;
                let mut values = Vec::new();
                for c in conditions {
                    let cond = b(self, &c.condition)?;
                    let cond = match &operand {
                        Some(o) => self.comparison(BinOp::Eq, o.clone(), cond, c.condition.span())?,
                        None => self.expect_bool(cond, c.condition.span(), "CASE WHEN")?,
                    };
                    let v = b(self, &c.result)?;
                    ty = unify_type(ty, v.ty(), c.result.span())?;
                    whens.push(cond);
                    values.push((v, c.result.span()));
                }
                let els = match else_result {
                    Some(x) => {
                        let v = b(self, x)?;
                        ty = unify_type(ty, v.ty(), x.span())?;
                        v
                    }
                    None => lit(Scalar::Null),
                };
                let pairs = whens.into_iter().zip(values).map(|(c, (v, _))| (c, coerce(v, ty))).collect();
                Expr::Case(pairs, Box::new(coerce(els, ty)), ty)
            }
            SqlExpr::Extract { field, expr, .. } => {
                let x = b(self, expr)?;
                if !matches!(field, DateTimeField::Epoch) {
                    return Err(unsupported(format!("EXTRACT({field}); only EXTRACT(epoch FROM ts)"), span));
                }
                if !matches!(x.ty(), DataType::Timestamp | DataType::Null) {
                    return Err(type_error(format!("EXTRACT needs a timestamp, found {}", x.ty()), expr.span()));
                }
                Expr::Epoch(Box::new(retype_null(x, DataType::Timestamp)))
            }
            SqlExpr::Function(f) => {
                let name = function_name(f);
                if is_aggregate_name(&name) {
                    return Err(invalid(
                        if self.in_agg {
                            format!("aggregate function {name}() cannot be nested inside another aggregate")
                        } else {
                            format!("aggregate function {name}() is not allowed here (WHERE, GROUP BY, or a row query)")
                        },
                        span,
                    ));
                }
                self.bind_function(f, &name, span, post, outputs)?
            }
            SqlExpr::Cast { .. } => return Err(unsupported("CAST", span)),
            SqlExpr::Subquery(_) => return Err(unsupported("subquery", span)),
            SqlExpr::Exists { .. } => return Err(unsupported("EXISTS", span)),
            SqlExpr::IsTrue(_) | SqlExpr::IsFalse(_) | SqlExpr::IsNotTrue(_) | SqlExpr::IsNotFalse(_) => {
                return Err(unsupported("IS [NOT] TRUE / FALSE", span));
            }
            SqlExpr::IsDistinctFrom(..) | SqlExpr::IsNotDistinctFrom(..) => {
                return Err(unsupported("IS [NOT] DISTINCT FROM", span));
            }
            SqlExpr::Wildcard(_) | SqlExpr::QualifiedWildcard(..) => {
                return Err(unsupported("* in an expression", span));
            }
            other => return Err(unsupported(format!("expression `{other}`"), span)),
        })
    }

    fn comparison(&self, op: BinOp, a: Expr, c: Expr, span: Span) -> Result<Expr> {
        let (a, c, t) = unify(a, c, span, "compare")?;
        let _ = t;
        Ok(Expr::Bin(op, Box::new(a), Box::new(c), DataType::Bool))
    }

    fn bind_binary(
        &mut self,
        left: &SqlExpr,
        op: &BinaryOperator,
        right: &SqlExpr,
        span: Span,
        post: bool,
        outputs: &[Output],
    ) -> Result<Expr> {
        let bop = match op {
            BinaryOperator::Plus => BinOp::Add,
            BinaryOperator::Minus => BinOp::Sub,
            BinaryOperator::Multiply => BinOp::Mul,
            BinaryOperator::Divide => BinOp::Div,
            BinaryOperator::Modulo => BinOp::Mod,
            BinaryOperator::Eq => BinOp::Eq,
            BinaryOperator::NotEq => BinOp::NotEq,
            BinaryOperator::Lt => BinOp::Lt,
            BinaryOperator::LtEq => BinOp::LtEq,
            BinaryOperator::Gt => BinOp::Gt,
            BinaryOperator::GtEq => BinOp::GtEq,
            BinaryOperator::And => BinOp::And,
            BinaryOperator::Or => BinOp::Or,
            other => return Err(unsupported(format!("operator {other}"), span)),
        };
        // timestamp ± INTERVAL
        if matches!(bop, BinOp::Add | BinOp::Sub) {
            if let SqlExpr::Interval(_) = right
                && let Some(ms) = interval_ms(right)?
            {
                let l = self.bind(left, post, outputs)?;
                if !matches!(l.ty(), DataType::Timestamp | DataType::Null) {
                    return Err(type_error(format!("INTERVAL can only be added to a timestamp, not {}", l.ty()), span));
                }
                return self.fold(Expr::Bin(
                    bop,
                    Box::new(retype_null(l, DataType::Timestamp)),
                    Box::new(lit(Scalar::Int(ms))),
                    DataType::Timestamp,
                ));
            }
            if let (BinOp::Add, SqlExpr::Interval(_)) = (bop, left)
                && let Some(ms) = interval_ms(left)?
            {
                let r = self.bind(right, post, outputs)?;
                if !matches!(r.ty(), DataType::Timestamp | DataType::Null) {
                    return Err(type_error(format!("INTERVAL can only be added to a timestamp, not {}", r.ty()), span));
                }
                return self.fold(Expr::Bin(
                    bop,
                    Box::new(retype_null(r, DataType::Timestamp)),
                    Box::new(lit(Scalar::Int(ms))),
                    DataType::Timestamp,
                ));
            }
        }
        let l = self.bind(left, post, outputs)?;
        let r = self.bind(right, post, outputs)?;
        let e = match bop {
            BinOp::And | BinOp::Or => {
                let l = self.expect_bool(l, left.span(), bop.symbol())?;
                let r = self.expect_bool(r, right.span(), bop.symbol())?;
                Expr::Bin(bop, Box::new(l), Box::new(r), DataType::Bool)
            }
            _ if bop.is_comparison() => self.comparison(bop, l, r, span)?,
            _ => {
                let (tl, tr) = (l.ty(), r.ty());
                use DataType::*;
                let (l, r, ty) = match (tl, tr, bop) {
                    (Timestamp, Timestamp, BinOp::Sub) => (l, r, Int),
                    (Timestamp, Int, BinOp::Add | BinOp::Sub) => (l, r, Timestamp),
                    (Int, Timestamp, BinOp::Add) => (r, l, Timestamp),
                    _ if (tl.is_numeric() || tl == Null) && (tr.is_numeric() || tr == Null) => {
                        let (l, r, t) = unify(l, r, span, "combine")?;
                        let t = if t == Null { Int } else { t };
                        (retype_null(l, t), retype_null(r, t), t)
                    }
                    _ => {
                        return Err(type_error(
                            format!("operator {} cannot combine {tl} and {tr}", bop.symbol()),
                            span,
                        ));
                    }
                };
                Expr::Bin(bop, Box::new(l), Box::new(r), ty)
            }
        };
        self.fold(epoch_bucket(e))
    }

    /// Evaluates expressions without column references at bind time.
    fn fold(&self, e: Expr) -> Result<Expr> {
        if e.has_slots() || matches!(e, Expr::Lit(..)) {
            return Ok(e);
        }
        let batch = crate::expr::Batch::new(1, Vec::new());
        let v = crate::expr::eval(&e, &batch)?;
        let ty = e.ty();
        Ok(Expr::Lit(v.scalar(0, ty), ty))
    }
}

/// The name of an unaliased output column: the column name for a column,
/// the SQL text otherwise.
fn output_name(e: &SqlExpr) -> String {
    match e {
        SqlExpr::Identifier(id) => ident_name(id),
        SqlExpr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        other => other.to_string(),
    }
}

/// `MINUTE_MS` re-exported for the planner's metrics time translation.
pub(crate) const METRICS_BUCKET_MS: i64 = MINUTE_MS;
