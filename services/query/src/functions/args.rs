//! Literal arguments of the table functions.

use std::collections::HashSet;

use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;

/// The arguments of one call, read positionally.
pub struct Args<'a> {
    name: &'static str,
    exprs: &'a [Expr],
}

fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        Expr::Negative(inner) => match literal(inner)? {
            ScalarValue::Float64(Some(x)) => Some(ScalarValue::Float64(Some(-x))),
            ScalarValue::Int64(Some(x)) => Some(ScalarValue::Int64(Some(-x))),
            other => other.arithmetic_negate().ok(),
        },
        Expr::Cast(c) => literal(&c.expr),
        _ => None,
    }
}

impl<'a> Args<'a> {
    pub fn new(name: &'static str, exprs: &'a [Expr], min: usize, max: usize) -> Result<Self> {
        if exprs.len() < min || exprs.len() > max {
            return plan_err!("{name} takes {min} to {max} arguments, got {}", exprs.len());
        }
        Ok(Self { name, exprs })
    }

    fn get(&self, i: usize) -> Result<Option<ScalarValue>> {
        match self.exprs.get(i) {
            None => Ok(None),
            Some(e) => match literal(e) {
                Some(ScalarValue::Null) => Ok(None),
                Some(v) if v.is_null() => Ok(None),
                Some(v) => Ok(Some(v)),
                None => plan_err!(
                    "{}: argument {} must be a literal, found {e}",
                    self.name,
                    i + 1
                ),
            },
        }
    }

    pub fn f64(&self, i: usize, what: &str) -> Result<f64> {
        match self.opt_f64(i, what)? {
            Some(v) => Ok(v),
            None => plan_err!("{}: argument {} ({what}) is required", self.name, i + 1),
        }
    }

    pub fn opt_f64(&self, i: usize, what: &str) -> Result<Option<f64>> {
        let v = match self.get(i)? {
            None => return Ok(None),
            Some(v) => v,
        };
        let x = match &v {
            ScalarValue::Float64(Some(x)) => *x,
            ScalarValue::Float32(Some(x)) => f64::from(*x),
            ScalarValue::Int64(Some(x)) => *x as f64,
            ScalarValue::Int32(Some(x)) => f64::from(*x),
            ScalarValue::Decimal128(Some(x), _, s) => *x as f64 / 10f64.powi(i32::from(*s)),
            _ => {
                return plan_err!(
                    "{}: argument {} ({what}) must be a number, found {v}",
                    self.name,
                    i + 1
                );
            }
        };
        if !x.is_finite() {
            return plan_err!("{}: argument {} ({what}) must be finite", self.name, i + 1);
        }
        Ok(Some(x))
    }

    pub fn opt_str(&self, i: usize, what: &str) -> Result<Option<String>> {
        match self.get(i)? {
            None => Ok(None),
            Some(ScalarValue::Utf8(Some(s)))
            | Some(ScalarValue::LargeUtf8(Some(s)))
            | Some(ScalarValue::Utf8View(Some(s))) => Ok(Some(s)),
            Some(v) => plan_err!(
                "{}: argument {} ({what}) must be text, found {v}",
                self.name,
                i + 1
            ),
        }
    }

    /// A comma-separated list; `*`, '' and NULL mean "all".
    pub fn set(&self, i: usize, what: &str) -> Result<Option<HashSet<String>>> {
        Ok(self.opt_str(i, what)?.and_then(|s| {
            let items: HashSet<String> = s
                .split(',')
                .map(|x| x.trim().to_string())
                .filter(|x| !x.is_empty())
                .collect();
            (!items.is_empty() && !items.contains("*")).then_some(items)
        }))
    }
}

/// Whether `v` passes an optional set filter.
pub fn allowed(set: &Option<HashSet<String>>, v: &str) -> bool {
    set.as_ref().is_none_or(|s| s.contains(v))
}
