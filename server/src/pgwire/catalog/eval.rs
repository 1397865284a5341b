//! A row-at-a-time evaluator for catalog queries: the SQL clients send to
//! learn about the server (Grafana's table and column pickers, psql's
//! `\gdesc`), over a few small virtual tables. It is not the analytic
//! engine and never reads stored data: a relation here has tens of rows.
//!
//! It takes one `SELECT` (optionally `DISTINCT`) with a `FROM` list of
//! virtual tables, table functions (`generate_series`, or any function:
//! one row holding its value) and subqueries (`VALUES` included),
//! cross-joined; `WHERE`, `ORDER BY`, `LIMIT`/`OFFSET`; expressions with
//! `CASE`, `IN` (lists and subqueries), `LIKE`, `||`, casts, array
//! subscripts and the functions in [`function`]. Anything else is refused
//! with SQLSTATE 0A000 naming it.
//!
//! Recursion follows the statement's nesting, which the SQL parser bounds
//! (its recursion limit), so no input makes it unbounded.

use std::cmp::Ordering;

use sqlparser::ast::{
    self, BinaryOperator, CastKind, Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, LimitClause,
    OrderByKind, OrderBySort, SelectItem, SetExpr, TableFactor, UnaryOperator, Value as SqlValue,
};

use super::Catalog;

/// A value in a catalog query.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::pgwire) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// PostgreSQL arrays are 1-based.
    Array(Vec<Value>),
}

impl Value {
    /// PostgreSQL's text form (NULL is none).
    pub(in crate::pgwire) fn text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Bool(b) => Some(if *b { "t" } else { "f" }.into()),
            Value::Int(i) => Some(i.to_string()),
            Value::Float(f) => Some(f.to_string()),
            Value::Text(s) => Some(s.clone()),
            Value::Array(items) => {
                let inner: Vec<String> = items.iter().map(|v| v.text().unwrap_or_else(|| "NULL".into())).collect();
                Some(format!("{{{}}}", inner.join(",")))
            }
        }
    }

    fn truthy(&self) -> Result<Option<bool>> {
        match self {
            Value::Null => Ok(None),
            Value::Bool(b) => Ok(Some(*b)),
            other => Err(Error::Type(format!("{other:?} is not a boolean"))),
        }
    }

    fn int(&self) -> Result<Option<i64>> {
        match self {
            Value::Null => Ok(None),
            Value::Int(i) => Ok(Some(*i)),
            Value::Float(f) if f.fract() == 0.0 => Ok(Some(*f as i64)),
            Value::Text(s) => s.trim().parse().map(Some).map_err(|_| Error::Type(format!("{s:?} is not an integer"))),
            other => Err(Error::Type(format!("{other:?} is not an integer"))),
        }
    }

    fn compare(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Null, _) | (_, Value::Null) => None,
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Float(b)) => (*a as f64).partial_cmp(b),
            (Value::Float(a), Value::Int(b)) => a.partial_cmp(&(*b as f64)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Text(b)) => b.trim().parse::<i64>().ok().map(|b| a.cmp(&b)),
            (Value::Text(a), Value::Int(b)) => a.trim().parse::<i64>().ok().map(|a| a.cmp(b)),
            (a, b) => a.text().partial_cmp(&b.text()),
        }
    }
}

/// Why a catalog query cannot be answered.
#[derive(Debug)]
pub(in crate::pgwire) enum Error {
    Unsupported(String),
    UnknownTable(String),
    UnknownColumn(String),
    UnknownFunction(String),
    Type(String),
}

pub(in crate::pgwire) type Result<T> = std::result::Result<T, Error>;

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::Unsupported(format!("{what} in a catalog query"))
}

/// Rows with named columns.
#[derive(Debug, Default, Clone)]
pub(in crate::pgwire) struct Relation {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// The columns visible to an expression: (qualifier, name, value), and the
/// scope around a subquery.
struct Scope<'a> {
    columns: Vec<(Option<String>, String)>,
    row: Vec<Value>,
    outer: Option<&'a Scope<'a>>,
}

impl Scope<'_> {
    fn lookup(&self, qualifier: Option<&str>, name: &str) -> Option<Value> {
        let found = self
            .columns
            .iter()
            .position(|(q, c)| c == name && qualifier.is_none_or(|want| q.as_deref().is_some_and(|q| q == want)));
        match found {
            Some(i) => self.row.get(i).cloned(),
            None => self.outer.and_then(|o| o.lookup(qualifier, name)),
        }
    }
}

fn ident(id: &ast::Ident) -> String {
    if id.quote_style.is_some() { id.value.clone() } else { id.value.to_ascii_lowercase() }
}

/// Runs a catalog query.
pub(super) fn run(q: &ast::Query, catalog: &Catalog) -> Result<Relation> {
    query(q, catalog, None)
}

fn query(q: &ast::Query, catalog: &Catalog, outer: Option<&Scope<'_>>) -> Result<Relation> {
    if q.with.is_some() {
        return Err(unsupported("WITH"));
    }
    let mut relation = match q.body.as_ref() {
        SetExpr::Select(select) => self::select(select, q, catalog, outer)?,
        SetExpr::Values(values) => {
            let scope = Scope { columns: Vec::new(), row: Vec::new(), outer };
            let rows = values
                .rows
                .iter()
                .map(|r| r.content.iter().map(|e| eval(e, &scope, catalog)).collect::<Result<Vec<_>>>())
                .collect::<Result<Vec<_>>>()?;
            let width = rows.first().map_or(0, Vec::len);
            Relation { columns: (1..=width).map(|i| format!("column{i}")).collect(), rows }
        }
        SetExpr::Query(inner) => query(inner, catalog, outer)?,
        other => return Err(unsupported(format!("{:.40}", other.to_string()))),
    };
    if let Some(limit) = &q.limit_clause {
        let (limit, offset) = match limit {
            LimitClause::LimitOffset { limit, offset, .. } => (limit.as_ref(), offset.as_ref().map(|o| &o.value)),
            LimitClause::OffsetCommaLimit { offset, limit } => (Some(limit), Some(offset)),
        };
        let scope = Scope { columns: Vec::new(), row: Vec::new(), outer };
        let count = |e: Option<&Expr>| -> Result<Option<usize>> {
            e.map(|e| eval(e, &scope, catalog)?.int()).transpose().map(|n| n.flatten().map(|n| n.max(0) as usize))
        };
        let skip = count(offset)?.unwrap_or(0);
        let take = count(limit)?.unwrap_or(usize::MAX);
        relation.rows = relation.rows.into_iter().skip(skip).take(take).collect();
    }
    Ok(relation)
}

fn select(s: &ast::Select, q: &ast::Query, catalog: &Catalog, outer: Option<&Scope<'_>>) -> Result<Relation> {
    if !matches!(s.group_by, ast::GroupByExpr::Expressions(ref e, _) if e.is_empty()) || s.having.is_some() {
        return Err(unsupported("GROUP BY"));
    }
    // The FROM list, cross-joined.
    let mut input = Relation { columns: Vec::new(), rows: vec![Vec::new()] };
    let mut qualifiers: Vec<Option<String>> = Vec::new();
    for item in &s.from {
        if !item.joins.is_empty() {
            return Err(unsupported("JOIN"));
        }
        let (qualifier, relation) = from_item(&item.relation, catalog, outer)?;
        let mut rows = Vec::with_capacity(input.rows.len() * relation.rows.len());
        for left in &input.rows {
            for right in &relation.rows {
                rows.push(left.iter().chain(right).cloned().collect());
            }
        }
        qualifiers.extend(std::iter::repeat_n(Some(qualifier), relation.columns.len()));
        input.columns.extend(relation.columns);
        input.rows = rows;
    }
    let scope_columns: Vec<(Option<String>, String)> =
        qualifiers.into_iter().zip(input.columns.iter().cloned()).collect();

    let mut kept: Vec<Vec<Value>> = Vec::new();
    for row in input.rows {
        let scope = Scope { columns: scope_columns.clone(), row, outer };
        if let Some(w) = &s.selection
            && eval(w, &scope, catalog)?.truthy()? != Some(true)
        {
            continue;
        }
        kept.push(scope.row);
    }

    // Outputs, and the ORDER BY keys of each row.
    let mut names = Vec::new();
    for item in &s.projection {
        match item {
            SelectItem::UnnamedExpr(e) => names.push(output_name(e)),
            SelectItem::ExprWithAlias { alias, .. } => names.push(ident(alias)),
            SelectItem::Wildcard(_) => names.extend(scope_columns.iter().map(|(_, c)| c.clone())),
            other => return Err(unsupported(other)),
        }
    }
    let order: Vec<&ast::OrderByExpr> = match &q.order_by {
        None => Vec::new(),
        Some(o) => match &o.kind {
            OrderByKind::Expressions(list) => list.iter().collect(),
            OrderByKind::All(_) => return Err(unsupported("ORDER BY ALL")),
        },
    };
    let mut out: Vec<(Vec<Value>, Vec<Value>)> = Vec::with_capacity(kept.len());
    for row in kept {
        let scope = Scope { columns: scope_columns.clone(), row, outer };
        let mut values = Vec::with_capacity(names.len());
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    values.push(eval(e, &scope, catalog)?);
                }
                _ => values.extend(scope.row.iter().cloned()),
            }
        }
        let mut keys = Vec::with_capacity(order.len());
        for o in &order {
            keys.push(order_key(&o.expr, &names, &values, &scope, catalog)?);
        }
        out.push((values, keys));
    }
    if matches!(s.distinct, Some(Distinct::Distinct)) {
        let mut seen: Vec<Vec<Value>> = Vec::new();
        out.retain(|(v, _)| {
            let new = !seen.contains(v);
            if new {
                seen.push(v.clone());
            }
            new
        });
    }
    out.sort_by(|(_, a), (_, b)| {
        for (i, o) in order.iter().enumerate() {
            let descending = matches!(o.options.sort, Some(OrderBySort::Desc));
            let nulls_first = o.options.nulls_first.unwrap_or(descending);
            let ord = match (&a[i], &b[i]) {
                (Value::Null, Value::Null) => Ordering::Equal,
                (Value::Null, _) => {
                    if nulls_first {
                        Ordering::Less
                    } else {
                        Ordering::Greater
                    }
                }
                (_, Value::Null) => {
                    if nulls_first {
                        Ordering::Greater
                    } else {
                        Ordering::Less
                    }
                }
                (x, y) => {
                    let ord = x.compare(y).unwrap_or(Ordering::Equal);
                    if descending { ord.reverse() } else { ord }
                }
            };
            if ord != Ordering::Equal {
                return ord;
            }
        }
        Ordering::Equal
    });
    Ok(Relation { columns: names, rows: out.into_iter().map(|(v, _)| v).collect() })
}

/// An ORDER BY key: an output position, an output name, or an expression.
fn order_key(e: &Expr, names: &[String], values: &[Value], scope: &Scope<'_>, catalog: &Catalog) -> Result<Value> {
    if let Expr::Value(v) = e
        && let SqlValue::Number(n, _) = &v.value
        && let Ok(i) = n.parse::<usize>()
    {
        return values.get(i.wrapping_sub(1)).cloned().ok_or_else(|| Error::Type(format!("ORDER BY position {n}")));
    }
    if let Expr::Identifier(id) = e
        && let Some(i) = names.iter().position(|n| *n == ident(id))
    {
        return Ok(values[i].clone());
    }
    eval(e, scope, catalog)
}

fn output_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => ident(id),
        Expr::CompoundIdentifier(parts) => parts.last().map_or_else(|| "?column?".into(), ident),
        Expr::Function(f) => f.name.0.last().and_then(|p| p.as_ident()).map_or_else(|| "?column?".into(), ident),
        Expr::Cast { expr, .. } | Expr::Nested(expr) => output_name(expr),
        _ => "?column?".into(),
    }
}

/// One item of a FROM list: its qualifier and rows.
fn from_item(t: &TableFactor, catalog: &Catalog, outer: Option<&Scope<'_>>) -> Result<(String, Relation)> {
    match t {
        TableFactor::Table { name, alias, args, .. } => {
            let parts: Vec<String> = name.0.iter().filter_map(|p| p.as_ident()).map(ident).collect();
            let base = parts.last().cloned().unwrap_or_default();
            let mut relation = match args {
                None => catalog.table(&parts).ok_or_else(|| Error::UnknownTable(parts.join(".")))?,
                Some(args) => {
                    let scope = Scope { columns: Vec::new(), row: Vec::new(), outer };
                    let values = args
                        .args
                        .iter()
                        .map(|a| function_arg(a).and_then(|e| eval(e, &scope, catalog)))
                        .collect::<Result<Vec<_>>>()?;
                    table_function(&base, &values)?
                }
            };
            let qualifier = alias.as_ref().map_or(base, |a| ident(&a.name));
            if let Some(a) = alias {
                rename(&mut relation, a, args.is_some());
            }
            Ok((qualifier, relation))
        }
        TableFactor::Derived { subquery, alias, .. } => {
            let mut relation = query(subquery, catalog, outer)?;
            let qualifier = alias.as_ref().map_or_else(String::new, |a| ident(&a.name));
            if let Some(a) = alias {
                rename(&mut relation, a, false);
            }
            Ok((qualifier, relation))
        }
        other => Err(unsupported(format!("FROM {other}"))),
    }
}

/// Applies `alias(c1, c2, …)`; a table function's single column takes the
/// alias's name, as in PostgreSQL (`generate_series(1, 3) AS i`).
fn rename(relation: &mut Relation, alias: &ast::TableAlias, function: bool) {
    if alias.columns.is_empty() {
        if function && relation.columns.len() == 1 {
            relation.columns[0] = ident(&alias.name);
        }
        return;
    }
    for (column, name) in relation.columns.iter_mut().zip(&alias.columns) {
        *column = ident(&name.name);
    }
}

fn table_function(name: &str, args: &[Value]) -> Result<Relation> {
    if name == "generate_series" {
        let (Some(start), Some(stop)) = (args.first(), args.get(1)) else {
            return Err(Error::Type("generate_series(start, stop [, step])".into()));
        };
        let step = args.get(2).map(Value::int).transpose()?.flatten().unwrap_or(1);
        let rows = match (start.int()?, stop.int()?) {
            (Some(a), Some(b)) if step != 0 => {
                let mut rows = Vec::new();
                let mut i = a;
                while (step > 0 && i <= b) || (step < 0 && i >= b) {
                    rows.push(vec![Value::Int(i)]);
                    if rows.len() > MAX_SERIES {
                        return Err(Error::Type(format!("generate_series longer than {MAX_SERIES}")));
                    }
                    i = i.saturating_add(step);
                }
                rows
            }
            _ => Vec::new(),
        };
        return Ok(Relation { columns: vec![name.to_string()], rows });
    }
    let value = function::call(name, args)?;
    Ok(Relation { columns: vec![name.to_string()], rows: vec![vec![value]] })
}

/// The longest `generate_series` a catalog query may ask for.
const MAX_SERIES: usize = 10_000;

fn function_arg(a: &FunctionArg) -> Result<&Expr> {
    match a {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
        other => Err(unsupported(format!("argument {other}"))),
    }
}

fn eval(e: &Expr, scope: &Scope<'_>, catalog: &Catalog) -> Result<Value> {
    let ev = |x: &Expr| eval(x, scope, catalog);
    Ok(match e {
        Expr::Value(v) => match &v.value {
            SqlValue::Number(n, _) => match n.parse::<i64>() {
                Ok(i) => Value::Int(i),
                Err(_) => Value::Float(n.parse().map_err(|_| Error::Type(format!("number {n}")))?),
            },
            SqlValue::SingleQuotedString(s) | SqlValue::EscapedStringLiteral(s) => Value::Text(s.clone()),
            SqlValue::Boolean(b) => Value::Bool(*b),
            SqlValue::Null => Value::Null,
            other => return Err(unsupported(format!("literal {other}"))),
        },
        Expr::Identifier(id) => {
            let name = ident(id);
            match scope.lookup(None, &name) {
                Some(v) => v,
                // `user`, `current_user`… are functions written without parentheses.
                None if function::is_niladic(&name) => function::call(&name, &[])?,
                None => return Err(Error::UnknownColumn(name)),
            }
        }
        Expr::CompoundIdentifier(parts) => {
            let [q, c] = parts.as_slice() else { return Err(Error::UnknownColumn(e.to_string())) };
            scope.lookup(Some(&ident(q)), &ident(c)).ok_or_else(|| Error::UnknownColumn(e.to_string()))?
        }
        Expr::Nested(x) => ev(x)?,
        Expr::TypedString(t) => match &t.value.value {
            SqlValue::SingleQuotedString(s) => cast(Value::Text(s.clone()), &t.data_type),
            other => return Err(unsupported(format!("literal {other}"))),
        },
        Expr::Cast { kind: CastKind::DoubleColon | CastKind::Cast, expr, data_type, .. } => cast(ev(expr)?, data_type),
        Expr::UnaryOp { op, expr } => match (op, ev(expr)?) {
            (UnaryOperator::Not, v) => v.truthy()?.map_or(Value::Null, |b| Value::Bool(!b)),
            (UnaryOperator::Minus, Value::Int(i)) => {
                Value::Int(i.checked_neg().ok_or_else(|| Error::Type("overflow".into()))?)
            }
            (UnaryOperator::Minus, Value::Float(f)) => Value::Float(-f),
            (UnaryOperator::Plus, v) => v,
            (op, _) => return Err(unsupported(format!("operator {op}"))),
        },
        Expr::BinaryOp { left, op, right } => binary(ev(left)?, op, ev(right)?)?,
        Expr::IsNull(x) => Value::Bool(ev(x)? == Value::Null),
        Expr::IsNotNull(x) => Value::Bool(ev(x)? != Value::Null),
        Expr::InList { expr, list, negated } => {
            let v = ev(expr)?;
            let items = list.iter().map(ev).collect::<Result<Vec<_>>>()?;
            membership(&v, &items, *negated)
        }
        Expr::InSubquery { expr, subquery, negated } => {
            let v = ev(expr)?;
            let relation = query(subquery, catalog, Some(scope))?;
            let items: Vec<Value> = relation.rows.into_iter().filter_map(|r| r.into_iter().next()).collect();
            membership(&v, &items, *negated)
        }
        Expr::Like { negated, expr, pattern, escape_char: None, any: false } => {
            match (ev(expr)?.text(), ev(pattern)?.text()) {
                (Some(s), Some(p)) => Value::Bool(like(&s, &p) != *negated),
                _ => Value::Null,
            }
        }
        Expr::Case { operand, conditions, else_result, .. } => {
            let operand = operand.as_deref().map(ev).transpose()?;
            for when in conditions {
                let hit = match &operand {
                    Some(o) => o.compare(&ev(&when.condition)?) == Some(Ordering::Equal),
                    None => ev(&when.condition)?.truthy()? == Some(true),
                };
                if hit {
                    return ev(&when.result);
                }
            }
            else_result.as_deref().map_or(Ok(Value::Null), ev)?
        }
        Expr::Function(f) => {
            let name = f.name.0.last().and_then(|p| p.as_ident()).map(ident).unwrap_or_default();
            let args = match &f.args {
                FunctionArguments::None => Vec::new(),
                FunctionArguments::List(list) => {
                    list.args.iter().map(|a| function_arg(a).and_then(ev)).collect::<Result<Vec<_>>>()?
                }
                FunctionArguments::Subquery(_) => return Err(unsupported(format!("{name}(subquery)"))),
            };
            function::call(&name, &args)?
        }
        Expr::CompoundFieldAccess { root, access_chain } => {
            let mut v = ev(root)?;
            for access in access_chain {
                let ast::AccessExpr::Subscript(ast::Subscript::Index { index }) = access else {
                    return Err(unsupported(format!("{access}")));
                };
                v = match (v, ev(index)?.int()?) {
                    (Value::Array(items), Some(i)) if i >= 1 => {
                        items.into_iter().nth((i - 1) as usize).unwrap_or(Value::Null)
                    }
                    (Value::Array(_) | Value::Null, _) => Value::Null,
                    (other, _) => return Err(Error::Type(format!("{other:?} is not an array"))),
                };
            }
            v
        }
        Expr::Trim { trim_where: None, trim_what: None, expr, trim_characters: None } => {
            function::call("trim", &[ev(expr)?])?
        }
        Expr::Array(a) => Value::Array(a.elem.iter().map(ev).collect::<Result<Vec<_>>>()?),
        other => return Err(unsupported(format!("{:.60}", other.to_string()))),
    })
}

fn membership(v: &Value, items: &[Value], negated: bool) -> Value {
    if *v == Value::Null {
        return Value::Null;
    }
    let hit = items.iter().any(|i| v.compare(i) == Some(Ordering::Equal));
    if hit {
        return Value::Bool(!negated);
    }
    if items.contains(&Value::Null) { Value::Null } else { Value::Bool(negated) }
}

fn binary(l: Value, op: &BinaryOperator, r: Value) -> Result<Value> {
    use BinaryOperator as B;
    match op {
        B::And => {
            return Ok(match (l.truthy()?, r.truthy()?) {
                (Some(false), _) | (_, Some(false)) => Value::Bool(false),
                (Some(true), Some(true)) => Value::Bool(true),
                _ => Value::Null,
            });
        }
        B::Or => {
            return Ok(match (l.truthy()?, r.truthy()?) {
                (Some(true), _) | (_, Some(true)) => Value::Bool(true),
                (Some(false), Some(false)) => Value::Bool(false),
                _ => Value::Null,
            });
        }
        _ => {}
    }
    if l == Value::Null || r == Value::Null {
        return Ok(Value::Null);
    }
    let ord = l.compare(&r);
    Ok(match op {
        B::Eq => Value::Bool(ord == Some(Ordering::Equal)),
        B::NotEq => Value::Bool(ord != Some(Ordering::Equal)),
        B::Lt => Value::Bool(ord == Some(Ordering::Less)),
        B::LtEq => Value::Bool(matches!(ord, Some(Ordering::Less | Ordering::Equal))),
        B::Gt => Value::Bool(ord == Some(Ordering::Greater)),
        B::GtEq => Value::Bool(matches!(ord, Some(Ordering::Greater | Ordering::Equal))),
        B::StringConcat => Value::Text(format!("{}{}", l.text().unwrap_or_default(), r.text().unwrap_or_default())),
        B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo => arithmetic(&l, op, &r)?,
        other => return Err(unsupported(format!("operator {other}"))),
    })
}

fn arithmetic(l: &Value, op: &BinaryOperator, r: &Value) -> Result<Value> {
    use BinaryOperator as B;
    let overflow = || Error::Type("integer overflow".into());
    if let (Some(a), Some(b)) = (l.int().ok().flatten(), r.int().ok().flatten())
        && !matches!(l, Value::Float(_))
        && !matches!(r, Value::Float(_))
    {
        return Ok(Value::Int(match op {
            B::Plus => a.checked_add(b).ok_or_else(overflow)?,
            B::Minus => a.checked_sub(b).ok_or_else(overflow)?,
            B::Multiply => a.checked_mul(b).ok_or_else(overflow)?,
            B::Divide => a.checked_div(b).ok_or_else(|| Error::Type("division by zero".into()))?,
            _ => a.checked_rem(b).ok_or_else(|| Error::Type("division by zero".into()))?,
        }));
    }
    let float = |v: &Value| match v {
        Value::Int(i) => Ok(*i as f64),
        Value::Float(f) => Ok(*f),
        other => Err(Error::Type(format!("{other:?} is not a number"))),
    };
    let (a, b) = (float(l)?, float(r)?);
    Ok(Value::Float(match op {
        B::Plus => a + b,
        B::Minus => a - b,
        B::Multiply => a * b,
        B::Divide => a / b,
        _ => a % b,
    }))
}

fn cast(v: Value, to: &ast::DataType) -> Value {
    use ast::DataType as D;
    match (to, &v) {
        (_, Value::Null) => Value::Null,
        (D::Int(_) | D::Integer(_) | D::BigInt(_) | D::SmallInt(_) | D::Int4(_) | D::Int8(_) | D::Int2(_), _) => {
            v.int().ok().flatten().map_or(Value::Null, Value::Int)
        }
        (D::Text | D::Varchar(_) | D::String(_), _) => v.text().map_or(Value::Null, Value::Text),
        // oid, regclass, name …: kept as they are.
        _ => v,
    }
}

/// SQL `LIKE`: `%` any run, `_` one character.
fn like(s: &str, pattern: &str) -> bool {
    let (s, p): (Vec<char>, Vec<char>) = (s.chars().collect(), pattern.chars().collect());
    // Iterative matching with backtracking to the last `%`.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if j < p.len() && (p[j] == '_' || (p[j] != '%' && p[j] == s[i])) {
            i += 1;
            j += 1;
        } else if j < p.len() && p[j] == '%' {
            star = Some((j, i));
            j += 1;
        } else if let Some((sj, si)) = star {
            j = sj + 1;
            i = si + 1;
            star = Some((sj, si + 1));
        } else {
            return false;
        }
    }
    p[j..].iter().all(|&c| c == '%')
}

pub(in crate::pgwire) mod function {
    //! The functions catalog queries call.

    use super::{Error, Result, Value};
    use crate::pgwire::catalog::{setting, type_name_of_oid};

    /// The user every connection is (no accounts until access control).
    pub const USER: &str = "adstore";

    /// Functions SQL writes without parentheses.
    pub fn is_niladic(name: &str) -> bool {
        matches!(name, "user" | "current_user" | "session_user" | "current_schema" | "current_catalog")
    }

    fn text(args: &[Value], i: usize) -> Option<String> {
        args.get(i).and_then(Value::text)
    }

    pub fn call(name: &str, args: &[Value]) -> Result<Value> {
        let t = |i| text(args, i);
        Ok(match name {
            "user" | "current_user" | "session_user" => Value::Text(USER.into()),
            "current_schema" => Value::Text("public".into()),
            "current_database" | "current_catalog" => Value::Text(crate::pgwire::DATABASE.into()),
            "version" => Value::Text(format!(
                "PostgreSQL 16.6 (adstore {}) on x86_64, compatible with the PostgreSQL wire protocol",
                env!("CARGO_PKG_VERSION")
            )),
            "current_setting" => {
                let name = t(0).unwrap_or_default();
                match setting(&name) {
                    Some(v) => Value::Text(v.into()),
                    None => return Err(Error::Type(format!("unrecognized configuration parameter {name:?}"))),
                }
            }
            "current_schemas" => Value::Array(vec![Value::Text("pg_catalog".into()), Value::Text("public".into())]),
            "quote_ident" => t(0).map_or(Value::Null, |s| Value::Text(quote_ident(&s))),
            "parse_ident" => t(0).map_or(Value::Null, |s| Value::Array(parse_ident(&s))),
            "trim" | "btrim" => t(0).map_or(Value::Null, |s| Value::Text(s.trim().into())),
            "lower" => t(0).map_or(Value::Null, |s| Value::Text(s.to_lowercase())),
            "upper" => t(0).map_or(Value::Null, |s| Value::Text(s.to_uppercase())),
            "length" | "char_length" => t(0).map_or(Value::Null, |s| Value::Int(s.chars().count() as i64)),
            "string_to_array" => match (t(0), t(1)) {
                (Some(s), Some(sep)) if !sep.is_empty() => {
                    Value::Array(s.split(sep.as_str()).map(|p| Value::Text(p.into())).collect())
                }
                (Some(s), _) => Value::Array(s.chars().map(|c| Value::Text(c.into())).collect()),
                _ => Value::Null,
            },
            "array_lower" | "array_upper" | "array_length" | "cardinality" => match args.first() {
                Some(Value::Array(items)) if !items.is_empty() => match name {
                    "array_lower" => Value::Int(1),
                    _ => Value::Int(items.len() as i64),
                },
                _ => Value::Null,
            },
            "coalesce" => args.iter().find(|v| **v != Value::Null).cloned().unwrap_or(Value::Null),
            "format_type" => match args.first().map(Value::int).transpose()?.flatten() {
                Some(oid) => Value::Text(type_name_of_oid(oid).into()),
                None => Value::Null,
            },
            "has_table_privilege" | "has_schema_privilege" | "has_database_privilege" | "pg_table_is_visible" => {
                Value::Bool(true)
            }
            "obj_description" | "col_description" | "pg_get_userbyid" | "pg_encoding_to_char" => Value::Null,
            other => return Err(Error::UnknownFunction(other.to_string())),
        })
    }

    /// PostgreSQL's `quote_ident`: quoted unless a lowercase identifier.
    fn quote_ident(s: &str) -> String {
        let plain = s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if plain { s.to_string() } else { format!("\"{}\"", s.replace('"', "\"\"")) }
    }

    /// PostgreSQL's `parse_ident`: `public.events` → {public, events};
    /// unquoted parts are lowercased.
    fn parse_ident(s: &str) -> Vec<Value> {
        let mut parts = Vec::new();
        let mut current = String::new();
        let mut chars = s.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    current.push('"');
                    chars.next();
                }
                '"' => quoted = !quoted,
                '.' if !quoted => parts.push(Value::Text(std::mem::take(&mut current))),
                c if quoted => current.push(c),
                c => current.extend(c.to_lowercase()),
            }
        }
        parts.push(Value::Text(current));
        parts
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn identifiers() {
            assert_eq!(quote_ident("events"), "events");
            assert_eq!(quote_ident("Events"), "\"Events\"");
            assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
            assert_eq!(parse_ident("public.Events"), vec![Value::Text("public".into()), Value::Text("events".into())]);
            assert_eq!(parse_ident("\"A.b\""), vec![Value::Text("A.b".into())]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns() {
        assert!(like("pg_catalog", "pg_%"));
        assert!(like("abc", "a_c"));
        assert!(like("abc", "%"));
        assert!(!like("abc", "%d"));
        assert!(like("", "%%"));
        assert!(like("a%b", "a%b"));
    }
}
