//! Reading the filters a scan is given: which recordings, channels and times a query wants, so
//! that files and row groups that cannot match are never opened.

use std::collections::HashSet;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

/// A closed interval; either end may be open.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Range {
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

impl Range {
    fn at_least(&mut self, v: f64) {
        self.lo = Some(self.lo.map_or(v, |x| x.max(v)));
    }

    fn at_most(&mut self, v: f64) {
        self.hi = Some(self.hi.map_or(v, |x| x.min(v)));
    }

    pub fn is_set(&self) -> bool {
        self.lo.is_some() || self.hi.is_some()
    }

    pub fn is_empty(&self) -> bool {
        matches!((self.lo, self.hi), (Some(a), Some(b)) if a > b)
    }
}

/// What the filters of one scan select.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub recordings: Option<HashSet<String>>,
    pub channels: Option<HashSet<String>>,
    /// Seconds from each recording's start.
    pub t: Range,
    /// Nanoseconds since the epoch.
    pub time: Range,
    pub sample_index: Range,
}

fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(unwrap_dictionary(v)),
        Expr::Cast(c) => literal(&c.expr),
        Expr::TryCast(c) => literal(&c.expr),
        _ => None,
    }
}

fn unwrap_dictionary(v: &ScalarValue) -> &ScalarValue {
    match v {
        ScalarValue::Dictionary(_, inner) => unwrap_dictionary(inner),
        other => other,
    }
}

fn column(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        Expr::Cast(c) => column(&c.expr),
        Expr::TryCast(c) => column(&c.expr),
        _ => None,
    }
}

fn as_string(v: &ScalarValue) -> Option<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Some(s.clone()),
        _ => None,
    }
}

fn as_f64(v: &ScalarValue) -> Option<f64> {
    match v {
        ScalarValue::Float64(Some(x)) => Some(*x),
        ScalarValue::Float32(Some(x)) => Some(f64::from(*x)),
        ScalarValue::Int64(Some(x)) => Some(*x as f64),
        ScalarValue::Int32(Some(x)) => Some(f64::from(*x)),
        ScalarValue::Int16(Some(x)) => Some(f64::from(*x)),
        ScalarValue::Int8(Some(x)) => Some(f64::from(*x)),
        ScalarValue::UInt64(Some(x)) => Some(*x as f64),
        ScalarValue::UInt32(Some(x)) => Some(f64::from(*x)),
        ScalarValue::Decimal128(Some(x), _, s) => Some(*x as f64 / 10f64.powi(i32::from(*s))),
        _ => None,
    }
}

fn as_ns(v: &ScalarValue) -> Option<f64> {
    match v {
        ScalarValue::TimestampNanosecond(Some(x), _) => Some(*x as f64),
        ScalarValue::TimestampMicrosecond(Some(x), _) => Some(*x as f64 * 1e3),
        ScalarValue::TimestampMillisecond(Some(x), _) => Some(*x as f64 * 1e6),
        ScalarValue::TimestampSecond(Some(x), _) => Some(*x as f64 * 1e9),
        _ => None,
    }
}

impl Selection {
    /// Reads every filter; says for each whether it was understood.
    pub fn from_filters(filters: &[Expr]) -> (Self, Vec<bool>) {
        let mut s = Self::default();
        let used = filters.iter().map(|f| s.add(f)).collect();
        (s, used)
    }

    /// Whether this filter shape is one the scan uses.
    pub fn understands(filter: &Expr) -> bool {
        Self::default().add(filter)
    }

    fn add(&mut self, f: &Expr) -> bool {
        match f {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if *op == Operator::And {
                    let a = self.add(left);
                    let b = self.add(right);
                    return a && b;
                }
                let (col, lit, op) =
                    match (column(left), literal(right), column(right), literal(left)) {
                        (Some(c), Some(v), _, _) => (c, v, *op),
                        (_, _, Some(c), Some(v)) => match op.swap() {
                            Some(o) => (c, v, o),
                            None => return false,
                        },
                        _ => return false,
                    };
                self.compare(col, op, lit)
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => match (column(expr), literal(low), literal(high)) {
                (Some(c), Some(l), Some(h)) => {
                    self.compare(c, Operator::GtEq, l) && self.compare(c, Operator::LtEq, h)
                }
                _ => false,
            },
            Expr::InList(InList {
                expr,
                list,
                negated: false,
            }) => {
                let Some(c) = column(expr) else { return false };
                let values: Option<HashSet<String>> = list
                    .iter()
                    .map(|e| literal(e).and_then(as_string))
                    .collect();
                match (c, values) {
                    ("recording_id", Some(v)) => {
                        intersect(&mut self.recordings, v);
                        true
                    }
                    ("channel", Some(v)) => {
                        intersect(&mut self.channels, v);
                        true
                    }
                    _ => false,
                }
            }
            _ => false,
        }
    }

    fn compare(&mut self, col: &str, op: Operator, v: &ScalarValue) -> bool {
        match col {
            "recording_id" | "channel" if op == Operator::Eq => {
                let Some(s) = as_string(v) else { return false };
                let set = HashSet::from([s]);
                if col == "recording_id" {
                    intersect(&mut self.recordings, set);
                } else {
                    intersect(&mut self.channels, set);
                }
                true
            }
            "t" | "sample_index" | "onset" => {
                let Some(x) = as_f64(v) else { return false };
                let range = if col == "sample_index" {
                    &mut self.sample_index
                } else {
                    &mut self.t
                };
                bound(range, op, x)
            }
            "time" => {
                let Some(x) = as_ns(v) else { return false };
                bound(&mut self.time, op, x)
            }
            _ => false,
        }
    }
}

fn bound(r: &mut Range, op: Operator, x: f64) -> bool {
    match op {
        Operator::Eq => {
            r.at_least(x);
            r.at_most(x);
        }
        Operator::Gt | Operator::GtEq => r.at_least(x),
        Operator::Lt | Operator::LtEq => r.at_most(x),
        _ => return false,
    }
    true
}

fn intersect(target: &mut Option<HashSet<String>>, with: HashSet<String>) {
    *target = Some(match target.take() {
        Some(t) => t.intersection(&with).cloned().collect(),
        None => with,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    #[test]
    fn reads_the_shapes_queries_use() {
        let filters = vec![
            col("recording_id").eq(lit("r1")),
            col("channel").in_list(vec![lit("C3"), lit("C4")], false),
            col("t").between(lit(10.0), lit(20)),
            lit(5).lt(col("sample_index")),
            col("value").gt(lit(3.0)),
        ];
        let (s, used) = Selection::from_filters(&filters);
        assert_eq!(used, vec![true, true, true, true, false]);
        assert_eq!(s.recordings, Some(HashSet::from(["r1".to_string()])));
        assert_eq!(s.channels.as_ref().map(HashSet::len), Some(2));
        assert_eq!(
            s.t,
            Range {
                lo: Some(10.0),
                hi: Some(20.0)
            }
        );
        assert_eq!(s.sample_index.lo, Some(5.0));
    }
}
