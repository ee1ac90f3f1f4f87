//! A case measured in each traffic shape of `lb_common::bench::shape`: a row per shape, then
//! the worst shape's against the target (the rule: a shape that happens to suit the
//! balancer is not its headline).
use lb_common::bench::shape;

use crate::{row::Row, stats::median};

/// Each shape's values of one case, kept for its rows.
pub struct ByShape {
    bench: &'static str,
    case: String,
    values: Vec<(u32, Vec<f64>)>,
}

impl ByShape {
    /// `bench` names the bench in the VOID lines.
    pub fn new(bench: &'static str, case: impl Into<String>) -> Self {
        ByShape { bench, case: case.into(), values: shape::ALL.iter().map(|&s| (s, Vec::new())).collect() }
    }

    pub fn case(&self) -> &str {
        &self.case
    }

    pub fn push(&mut self, s: u32, v: Result<f64, String>) {
        match v {
            Ok(v) => self.values.iter_mut().find(|(x, _)| *x == s).expect("a shape").1.push(v),
            Err(e) => eprintln!("{}: {}, {}: VOID: {e}", self.bench, self.case, shape::name(s)),
        }
    }

    /// A row per shape, then the worst shape's (the largest value; with `higher_is_better`,
    /// the smallest) against `target`. The worst row has no value unless every shape has one.
    pub fn rows(
        self,
        section: &'static str,
        unit: &'static str,
        decimals: usize,
        ratio_to: Option<f64>,
        higher_is_better: bool,
        target: Option<f64>,
    ) -> Vec<Row> {
        let per: Vec<(u32, Option<f64>)> =
            self.values.into_iter().map(|(s, mut v)| (s, median(&mut v))).collect();
        let mut rows: Vec<Row> = per
            .iter()
            .map(|(s, v)| Row {
                section,
                case: format!("{}, {}", self.case, shape::name(*s)),
                value: *v,
                decimals,
                unit,
                ratio: ratio_to.and_then(|f| v.map(|v| v / f)),
                target: None,
            })
            .collect();
        let worst = per.iter().filter_map(|(s, v)| v.map(|v| (*s, v))).max_by(|a, b| {
            if higher_is_better {
                b.1.total_cmp(&a.1)
            } else {
                a.1.total_cmp(&b.1)
            }
        });
        let complete = per.iter().all(|(_, v)| v.is_some());
        let value = worst.filter(|_| complete).map(|(_, v)| v);
        let measure = match ratio_to {
            Some(f) => value.map(|v| v / f),
            None => value,
        };
        rows.push(Row {
            section,
            case: format!("{}, worst shape ({})", self.case, worst.map_or("none", |(s, _)| shape::name(s))),
            value,
            decimals,
            unit,
            ratio: ratio_to.and_then(|f| value.map(|v| v / f)),
            target: target.map(|t| {
                let (text, met) = match (ratio_to.is_some(), higher_is_better) {
                    (true, _) => (format!("<= {t}x floor"), measure.is_some_and(|m| m <= t)),
                    (false, true) => (format!(">= {t}"), measure.is_some_and(|m| m >= t)),
                    (false, false) => (format!("<= {t}"), measure.is_some_and(|m| m <= t)),
                };
                (text, met)
            }),
        });
        rows
    }
}
