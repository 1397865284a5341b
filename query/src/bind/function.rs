//! Function calls: scalar functions (`coalesce`, `date_trunc`,
//! `time_bucket`, …) and aggregates, with the rules `metrics` adds (its
//! measures only as `sum(m)` and `approx_count_distinct(users)`).

use super::*;

impl Binder<'_> {
    fn args<'f>(&self, f: &'f ast::Function, span: Span) -> Result<(Vec<&'f FunctionArgExpr>, bool)> {
        match &f.args {
            FunctionArguments::None => Ok((Vec::new(), false)),
            FunctionArguments::Subquery(_) => Err(unsupported("subquery as a function argument", span)),
            FunctionArguments::List(l) => {
                if let Some(c) = l.clauses.first() {
                    return Err(unsupported(format!("function argument clause {c}"), span));
                }
                let distinct = matches!(l.duplicate_treatment, Some(DuplicateTreatment::Distinct));
                let args = l
                    .args
                    .iter()
                    .map(|a| match a {
                        FunctionArg::Unnamed(x) => Ok(x),
                        _ => Err(unsupported("named function arguments", span)),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok((args, distinct))
            }
        }
    }

    fn check_plain_call(&self, f: &ast::Function, span: Span, aggregate: bool) -> Result<()> {
        if f.over.is_some() {
            return Err(unsupported("window functions (OVER)", span));
        }
        if !f.within_group.is_empty() {
            return Err(unsupported("WITHIN GROUP", span));
        }
        if f.null_treatment.is_some() {
            return Err(unsupported("IGNORE / RESPECT NULLS", span));
        }
        if !matches!(f.parameters, FunctionArguments::None) {
            return Err(unsupported("parametric functions", span));
        }
        if !aggregate && let Some(fl) = &f.filter {
            return Err(invalid("FILTER (WHERE …) applies only to aggregate functions", fl.span()));
        }
        Ok(())
    }

    pub(super) fn bind_function(
        &mut self,
        f: &ast::Function,
        name: &str,
        span: Span,
        post: bool,
        outputs: &[Output],
    ) -> Result<Expr> {
        self.check_plain_call(f, span, false)?;
        let (args, distinct) = self.args(f, span)?;
        if distinct {
            return Err(unsupported(format!("DISTINCT in {name}()"), span));
        }
        let arity = |n: usize| -> Result<()> {
            if args.len() == n {
                Ok(())
            } else {
                Err(invalid(format!("{name}() takes {n} argument(s), got {}", args.len()), span))
            }
        };
        let expr_arg = |i: usize| -> Result<&SqlExpr> {
            match args.get(i) {
                Some(FunctionArgExpr::Expr(x)) => Ok(x),
                _ => Err(invalid(format!("argument {} of {name}() must be an expression", i + 1), span)),
            }
        };
        match name {
            "now" | "current_timestamp" => {
                arity(0)?;
                Ok(lit(Scalar::Ts(self.now_ms)))
            }
            "coalesce" => {
                if args.is_empty() {
                    return Err(invalid("coalesce() needs at least one argument", span));
                }
                let mut bound = Vec::with_capacity(args.len());
                let mut ty = DataType::Null;
                for i in 0..args.len() {
                    let x = expr_arg(i)?;
                    let e = self.bind(x, post, outputs)?;
                    ty = unify_type(ty, e.ty(), x.span())?;
                    bound.push(e);
                }
                let bound = bound.into_iter().map(|e| coerce(e, ty)).collect();
                self.fold(Expr::Coalesce(bound, ty))
            }
            "nullif" => {
                arity(2)?;
                let (a, c) = (expr_arg(0)?, expr_arg(1)?);
                let (a, c) = (self.bind(a, post, outputs)?, self.bind(c, post, outputs)?);
                let (a, c, _) = unify(a, c, span, "compare")?;
                self.fold(Expr::NullIf(Box::new(a), Box::new(c)))
            }
            "time_bucket" => {
                if args.len() == 3 {
                    return Err(unsupported("time_bucket() with an origin", span));
                }
                arity(2)?;
                let w = expr_arg(0)?;
                let Some(width) = interval_ms(w)? else {
                    return Err(invalid("time_bucket() needs an INTERVAL width, e.g. INTERVAL '5 minutes'", w.span()));
                };
                if width <= 0 {
                    return Err(invalid("time_bucket() width must be positive", w.span()));
                }
                let x = expr_arg(1)?;
                let ts = self.bind(x, post, outputs)?;
                if !matches!(ts.ty(), DataType::Timestamp | DataType::Null) {
                    return Err(type_error(format!("time_bucket() needs a timestamp, found {}", ts.ty()), x.span()));
                }
                self.fold(Expr::TimeBucket(width, Box::new(retype_null(ts, DataType::Timestamp))))
            }
            "date_trunc" => {
                arity(2)?;
                let u = expr_arg(0)?;
                let unit = match u {
                    SqlExpr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) => TimeUnit::parse(s),
                        _ => None,
                    },
                    _ => None,
                }
                .ok_or_else(|| invalid("date_trunc() needs a unit: 'second', 'minute', 'hour', 'day', 'week', 'month', 'quarter' or 'year'", u.span()))?;
                let x = expr_arg(1)?;
                let ts = self.bind(x, post, outputs)?;
                if !matches!(ts.ty(), DataType::Timestamp | DataType::Null) {
                    return Err(type_error(format!("date_trunc() needs a timestamp, found {}", ts.ty()), x.span()));
                }
                self.fold(Expr::DateTrunc(unit, Box::new(retype_null(ts, DataType::Timestamp))))
            }
            "floor" | "ceil" | "ceiling" | "abs" | "round" => {
                let digits = match (name, args.len()) {
                    ("round", 2) => {
                        let d = expr_arg(1)?;
                        match self.bind(d, post, outputs)? {
                            Expr::Lit(Scalar::Int(n), _) if n.unsigned_abs() <= 18 => n as i32,
                            _ => {
                                return Err(invalid(
                                    "round(x, digits): digits must be an integer from -18 to 18",
                                    d.span(),
                                ));
                            }
                        }
                    }
                    _ => {
                        arity(1)?;
                        0
                    }
                };
                let f = match name {
                    "floor" => MathFn::Floor,
                    "ceil" | "ceiling" => MathFn::Ceil,
                    "abs" => MathFn::Abs,
                    _ => MathFn::Round(digits),
                };
                self.bind_math(f, expr_arg(0)?, post, outputs)
            }
            "lower" | "upper" => {
                arity(1)?;
                let x = expr_arg(0)?;
                let e = self.bind(x, post, outputs)?;
                if !matches!(e.ty(), DataType::Str | DataType::Null) {
                    return Err(type_error(format!("{name}() needs a string, found {}", e.ty()), x.span()));
                }
                let f = if name == "lower" { TextFn::Lower } else { TextFn::Upper };
                self.fold(Expr::Text(f, Box::new(retype_null(e, DataType::Str))))
            }
            "to_timestamp" => {
                arity(1)?;
                let x = expr_arg(0)?;
                let e = self.bind(x, post, outputs)?;
                if !(e.ty().is_numeric() || e.ty() == DataType::Null) {
                    return Err(type_error(
                        format!(
                            "to_timestamp() takes epoch seconds (a number), found {}; write a timestamp as '2026-11-22T10:00:00Z'",
                            e.ty()
                        ),
                        x.span(),
                    ));
                }
                self.fold(Expr::FromEpoch(Box::new(retype_null(e, DataType::Float))))
            }
            "date_bin" => {
                arity(3)?;
                let w = expr_arg(0)?;
                let Some(width) = interval_ms(w)? else {
                    return Err(invalid("date_bin() needs an INTERVAL stride, e.g. INTERVAL '5 minutes'", w.span()));
                };
                if width <= 0 {
                    return Err(invalid("date_bin() stride must be positive", w.span()));
                }
                let x = expr_arg(1)?;
                let ts = self.bind(x, post, outputs)?;
                if !matches!(ts.ty(), DataType::Timestamp | DataType::Null) {
                    return Err(type_error(format!("date_bin() needs a timestamp, found {}", ts.ty()), x.span()));
                }
                let o = expr_arg(2)?;
                let origin = match self.bind(o, post, outputs)? {
                    Expr::Lit(Scalar::Ts(ms), _) => ms,
                    Expr::Lit(Scalar::Str(text), _) => {
                        parse_timestamp(&text).ok_or_else(|| QueryError::InvalidLiteral {
                            message: format!("{text:?} is not a timestamp; use '2000-01-01T00:00:00Z'"),
                            position: pos(o.span()),
                        })?
                    }
                    _ => return Err(invalid("date_bin() needs a constant origin timestamp", o.span())),
                };
                if origin.rem_euclid(width) != 0 {
                    return Err(unsupported(
                        "date_bin() with an origin that is not a whole number of strides from 1970-01-01 (use '2000-01-01')",
                        o.span(),
                    ));
                }
                self.fold(Expr::TimeBucket(width, Box::new(retype_null(ts, DataType::Timestamp))))
            }
            _ => Err(QueryError::UnknownFunction { name: name.to_string(), position: pos(span) }),
        }
    }

    /// `floor(x)`, `ceil(x)`, `round(x[, d])`, `abs(x)` of a number.
    pub(super) fn bind_math(&mut self, f: MathFn, x: &SqlExpr, post: bool, outputs: &[Output]) -> Result<Expr> {
        let e = self.bind(x, post, outputs)?;
        if !(e.ty().is_numeric() || e.ty() == DataType::Null) {
            return Err(type_error(format!("{}() needs a number, found {}", f.name(), e.ty()), x.span()));
        }
        self.fold(Expr::Math(f, Box::new(retype_null(e, DataType::Float))))
    }

    pub(super) fn bind_aggregate(&mut self, f: &ast::Function, span: Span) -> Result<Expr> {
        let name = function_name(f);
        self.check_plain_call(f, span, true)?;
        let (args, distinct) = self.args(f, span)?;
        let outer = self.in_agg;
        self.in_agg = true;
        let result = self.bind_aggregate_inner(f, &name, &args, distinct, span);
        self.in_agg = outer;
        let spec = result?;
        let i = match self.aggs.iter().position(|a| *a == spec) {
            Some(i) => i,
            None => {
                self.aggs.push(spec);
                self.aggs.len() - 1
            }
        };
        let ty = self.aggs[i].result_type();
        // Post slots: keys first, then aggregates. Keys are complete by now
        // (GROUP BY is bound before anything that may hold an aggregate).
        Ok(Expr::Slot(self.keys.len() + i, ty))
    }

    fn bind_aggregate_inner(
        &mut self,
        f: &ast::Function,
        name: &str,
        args: &[&FunctionArgExpr],
        distinct: bool,
        span: Span,
    ) -> Result<AggSpec> {
        let metrics = self.table == Table::Metrics;
        let filter = match &f.filter {
            Some(fl) => {
                let e = self.bind_scan(fl)?;
                Some(self.expect_bool(e, fl.span(), "FILTER")?)
            }
            None => None,
        };
        if name == "count" && matches!(args, [FunctionArgExpr::Wildcard]) {
            if distinct {
                return Err(unsupported("count(DISTINCT *)", span));
            }
            if metrics {
                return Err(invalid(
                    "count(*) over metrics would count pre-aggregated rows; use sum(impressions), sum(clicks), …",
                    span,
                ));
            }
            return Ok(AggSpec { func: AggFunc::CountStar, arg: None, filter, measure: None });
        }
        let [FunctionArgExpr::Expr(x)] = args else {
            return Err(invalid(format!("{name}() takes one argument"), span));
        };
        let measure_name = match x {
            SqlExpr::Identifier(id) if metrics && is_measure(&ident_name(id)) => Some(ident_name(id)),
            _ => None,
        };
        let func = match (name, distinct) {
            ("count", false) => AggFunc::Count,
            ("count", true) => AggFunc::CountDistinct,
            ("sum", false) => AggFunc::Sum,
            ("min", false) => AggFunc::Min,
            ("max", false) => AggFunc::Max,
            ("avg", false) => AggFunc::Avg,
            ("approx_count_distinct", false) => AggFunc::ApproxDistinct,
            _ => return Err(unsupported(format!("{name}(DISTINCT …)"), span)),
        };
        let arg = match (&measure_name, func) {
            (Some(m), AggFunc::ApproxDistinct) if m == "users" => self.event_col(ColumnId::UserKey),
            (Some(m), AggFunc::Sum) if m != "users" => {
                self.measure(m).ok_or_else(|| QueryError::Internal(format!("measure {m}")))?
            }
            (Some(m), _) => {
                let how = if m == "users" { "approx_count_distinct(users)" } else { "sum(…)" };
                return Err(invalid(format!("measure {m} of metrics can only be read as {how}"), x.span()));
            }
            (None, _) => {
                if metrics && matches!(func, AggFunc::Count | AggFunc::Avg) {
                    return Err(invalid(
                        format!(
                            "{name}() over metrics depends on how rows are pre-aggregated; use sum() of measures or count(DISTINCT …)"
                        ),
                        span,
                    ));
                }
                self.bind_scan(x)?
            }
        };
        let t = arg.ty();
        match func {
            AggFunc::Sum | AggFunc::Avg if !t.is_numeric() => {
                return Err(type_error(format!("{name}() needs a number, found {t}"), x.span()));
            }
            AggFunc::Min | AggFunc::Max if matches!(t, DataType::Bool | DataType::Null) => {
                return Err(type_error(format!("{name}() cannot be applied to {t}"), x.span()));
            }
            _ => {}
        }
        let measure = measure_name.as_deref().and_then(Measure::parse);
        Ok(AggSpec { func, arg: Some(arg), filter, measure })
    }
}

/// `floor(extract(epoch FROM t) / n) * n` (Grafana's `$__timeGroup`) is
/// the start of `t`'s `n`-second bucket, in epoch seconds: rewritten as
/// `extract(epoch FROM time_bucket(n s, t))`, which is exact (no float
/// division at bucket edges), constant over a block inside one bucket,
/// and lets the rollups answer.
pub(super) fn epoch_bucket(e: Expr) -> Expr {
    fn constant(e: &Expr) -> Option<f64> {
        match e {
            Expr::Lit(Scalar::Int(n), _) => Some(*n as f64),
            Expr::Lit(Scalar::Float(x), _) => Some(*x),
            Expr::ToFloat(x) => constant(x),
            _ => None,
        }
    }
    if let Expr::Bin(BinOp::Mul, floor, n2, _) = &e
        && let Expr::Math(MathFn::Floor, quotient) = floor.as_ref()
        && let Expr::Bin(BinOp::Div, epoch, n1, _) = quotient.as_ref()
        && let Expr::Epoch(t) = epoch.as_ref()
        && let (Some(a), Some(b)) = (constant(n1), constant(n2))
        && a == b
        && a > 0.0
    {
        let width_ms = a * 1000.0;
        if width_ms.fract() == 0.0 && width_ms < 9.0e15 {
            return Expr::Epoch(Box::new(Expr::TimeBucket(width_ms as i64, t.clone())));
        }
    }
    e
}
