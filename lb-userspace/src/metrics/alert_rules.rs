//! The alerting rules the Debian package installs (packaging/prometheus/lbd-alerts.yml) ask only
//! for what lbd exports: every metric they name is one of [`FAMILIES`] (or Prometheus' own `up`),
//! every label they match or group by is one of its labels (or the target's `instance`, `job`),
//! and every `event`, `verdict` and `reason` they match is one of [`Counter::ALL`]'s. promtool
//! checks the rules' syntax and logic (tests/tests/alert_rules.rs) but cannot know these names:
//! a rule that names a metric lbd does not export is valid, and silent forever.
use std::collections::{BTreeMap, BTreeSet};

use lb_common::Counter;

use super::{verdict, DATAPATH_EVENTS, DATAPATH_PACKETS, FAMILIES};

const RULES: &str = include_str!("../../../packaging/prometheus/lbd-alerts.yml");
/// Labels Prometheus gives every series of a target.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];
const AGGREGATIONS: [&str; 12] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];
/// Keywords whose parenthesised list names labels.
const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
const OPERATORS: [&str; 5] = ["and", "or", "unless", "bool", "offset"];

#[derive(Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Punct(char),
    Number,
}

/// PromQL's tokens, enough to tell metric names, labels and values apart; range and subquery
/// brackets (`[5m]`) and comments are skipped.
fn lex(expr: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => {
                chars.by_ref().take_while(|&c| c != '\n').for_each(drop);
            }
            '[' => {
                chars.by_ref().take_while(|&c| c != ']').for_each(drop);
            }
            '"' | '\'' => {
                let mut value = String::new();
                while let Some(c2) = chars.next() {
                    match c2 {
                        '\\' => value.extend(chars.next()),
                        c2 if c2 == c => break,
                        c2 => value.push(c2),
                    }
                }
                tokens.push(Token::Str(value));
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let mut word = String::from(c);
                while let Some(&next) =
                    chars.peek().filter(|n| n.is_ascii_alphanumeric() || **n == '_' || **n == ':')
                {
                    word.push(next);
                    chars.next();
                }
                tokens.push(Token::Ident(word));
            }
            c if c.is_ascii_digit() || c == '.' => {
                while chars.peek().is_some_and(|n| n.is_ascii_alphanumeric() || *n == '.') {
                    chars.next();
                }
                tokens.push(Token::Number);
            }
            c => tokens.push(Token::Punct(c)),
        }
    }
    tokens
}

/// A label matcher of a selector: `metric{label op "value"}`.
#[derive(Debug, PartialEq)]
struct Matcher {
    metric: String,
    label: String,
    op: String,
    value: String,
}

/// What one expression names.
#[derive(Debug, Default, PartialEq)]
struct Uses {
    metrics: BTreeSet<String>,
    matchers: Vec<Matcher>,
    /// Labels of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: BTreeSet<String>,
}

fn uses(expr: &str) -> Result<Uses, String> {
    let tokens = lex(expr);
    let mut found = Uses::default();
    let mut i = 0;
    let next_is = |i: usize, c: char| tokens.get(i + 1) == Some(&Token::Punct(c));
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(word) if GROUPING.contains(&word.as_str()) && next_is(i, '(') => {
                i += 2;
                while i < tokens.len() && tokens[i] != Token::Punct(')') {
                    if let Token::Ident(label) = &tokens[i] {
                        found.grouping.insert(label.clone());
                    }
                    i += 1;
                }
            }
            // `group_left` may come without a list.
            Token::Ident(word)
                if [&OPERATORS[..], &AGGREGATIONS, &GROUPING].concat().contains(&word.as_str()) => {}
            // A function.
            Token::Ident(_) if next_is(i, '(') => {}
            Token::Ident(metric) => {
                found.metrics.insert(metric.clone());
                if next_is(i, '{') {
                    i = matchers(&tokens, i + 2, metric, &mut found.matchers)?;
                }
            }
            Token::Punct('{') => return Err(format!("a selector without a metric name in {expr:?}")),
            _ => {}
        }
        i += 1;
    }
    Ok(found)
}

/// Reads `label op "value", ...` from `start` to the closing brace; returns the brace's index.
fn matchers(tokens: &[Token], start: usize, metric: &str, out: &mut Vec<Matcher>) -> Result<usize, String> {
    let mut i = start;
    loop {
        match tokens.get(i) {
            Some(Token::Punct('}')) => return Ok(i),
            Some(Token::Punct(',')) => i += 1,
            Some(Token::Ident(label)) => {
                let mut op = String::new();
                i += 1;
                while let Some(Token::Punct(c)) = tokens.get(i) {
                    op.push(*c);
                    i += 1;
                }
                let Some(Token::Str(value)) = tokens.get(i) else {
                    return Err(format!("{metric}{{{label}{op} ...}}: no quoted value"));
                };
                out.push(Matcher { metric: metric.into(), label: label.clone(), op, value: value.clone() });
                i += 1;
            }
            other => return Err(format!("{metric}{{...}}: unexpected {other:?}")),
        }
    }
}

/// Every `expr:` of a rules file: the rest of its line, or the `|` block below it.
fn expressions(rules: &str) -> Result<Vec<String>, String> {
    let lines: Vec<&str> = rules.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut found = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else { continue };
        match rest.trim() {
            "|" | "|-" => {
                let block = lines[n + 1..]
                    .iter()
                    .take_while(|l| l.trim().is_empty() || indent(l) > indent(line))
                    .map(|l| l.trim())
                    .collect::<Vec<_>>();
                found.push(block.join("\n"));
            }
            plain if plain.starts_with(['"', '\'', '>']) => {
                return Err(format!("line {}: write `expr:` plain or as a `|` block", n + 1))
            }
            plain => found.push(plain.to_owned()),
        }
    }
    Ok(found)
}

/// The values a label of a metric may take, where lbd's code fixes them.
fn label_values(metric: &str, label: &str, verdict_is: Option<&str>) -> Option<BTreeSet<&'static str>> {
    let verdicts = || Counter::ALL.iter().filter_map(|&c| verdict(c));
    if metric == DATAPATH_EVENTS.exposed_name() && label == "event" {
        return Some(Counter::ALL.iter().filter(|&&c| verdict(c).is_none()).map(|c| c.name()).collect());
    }
    if metric == DATAPATH_PACKETS.exposed_name() {
        match label {
            "verdict" => return Some(verdicts().map(|(v, _)| v).collect()),
            "reason" => {
                return Some(
                    verdicts()
                        .filter(|(v, _)| verdict_is.is_none_or(|is| is == *v))
                        .map(|(_, r)| r)
                        .collect(),
                )
            }
            _ => {}
        }
    }
    None
}

/// What the rules name that lbd does not export, one line each.
fn problems(rules: &str) -> Vec<String> {
    let families: BTreeMap<String, &[&str]> =
        FAMILIES.iter().map(|f| (f.exposed_name(), f.labels)).chain([("up".to_owned(), &[][..])]).collect();
    let exprs = match expressions(rules) {
        Ok(e) => e,
        Err(e) => return vec![e],
    };
    let alerts = rules.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    let mut problems = Vec::new();
    if exprs.is_empty() || exprs.len() != alerts {
        problems.push(format!("{} expressions found for {alerts} alerts", exprs.len()));
    }
    for expr in &exprs {
        let used = match uses(expr) {
            Ok(u) => u,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let mut labels: BTreeSet<&str> = TARGET_LABELS.into();
        for metric in &used.metrics {
            match families.get(metric) {
                Some(l) => labels.extend(l.iter()),
                None => problems.push(format!("{metric}: lbd exports no such metric (in {expr:?})")),
            }
        }
        for label in &used.grouping {
            if !labels.contains(label.as_str()) {
                problems.push(format!("by/without/on/ignoring ({label}): none of {:?} has it", used.metrics));
            }
        }
        let verdict_is =
            used.matchers.iter().find(|m| m.label == "verdict" && m.op == "=").map(|m| m.value.as_str());
        for m in &used.matchers {
            let own = families.get(&m.metric).copied().unwrap_or_default();
            if !own.contains(&m.label.as_str()) && !TARGET_LABELS.contains(&m.label.as_str()) {
                problems.push(format!("{}{{{}}}: the metric has no such label", m.metric, m.label));
                continue;
            }
            let Some(known) = label_values(&m.metric, &m.label, verdict_is) else { continue };
            let values: Vec<&str> = match m.op.as_str() {
                "=" | "!=" => vec![m.value.as_str()],
                _ if m
                    .value
                    .split('|')
                    .all(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) =>
                {
                    m.value.split('|').collect()
                }
                _ => {
                    problems.push(format!(
                        "{}{{{}{}{:?}}}: write the regex as a|b|c",
                        m.metric, m.label, m.op, m.value
                    ));
                    continue;
                }
            };
            for v in values.into_iter().filter(|v| !known.contains(v)) {
                problems.push(format!(
                    "{}{{{}=\"{v}\"}}: lbd exports no such {} (it has {known:?})",
                    m.metric, m.label, m.label
                ));
            }
        }
    }
    problems
}

#[test]
fn alert_rules_name_only_metrics_and_labels_lbd_exports() {
    let problems = problems(RULES);
    assert!(
        problems.is_empty(),
        "packaging/prometheus/lbd-alerts.yml asks for what lbd does not export (see FAMILIES in \
         metrics.rs and lb_common::Counter):\n{}",
        problems.join("\n")
    );
}

#[test]
fn alert_rules_check_finds_what_lbd_does_not_export() {
    let rules = r#"
      - alert: A
        expr: |
          sum without (event, nope) (rate(lb_datapath_events_total{event=~"flow_hit|flow_missed"}[5m]))
          / on (instance) lb_no_such_metric
      - alert: B
        expr: lb_datapath_packets_total{verdict="pass",reason="no_backend",colour="red"} > 0 and up == 0
    "#;
    let found = problems(rules);
    for want in [
        "by/without/on/ignoring (nope)",
        "lb_no_such_metric: lbd exports no such metric",
        "lb_datapath_events_total{event=\"flow_missed\"}: lbd exports no such event",
        "lb_datapath_packets_total{reason=\"no_backend\"}: lbd exports no such reason",
        "lb_datapath_packets_total{colour}: the metric has no such label",
    ] {
        assert!(found.iter().any(|p| p.starts_with(want)), "no {want:?} in {found:#?}");
    }
    assert_eq!(found.len(), 5, "{found:#?}");
    let used = uses(
        r#"count without (backend) (lb_backend_weight > 0 and lb_backend_drained{vip!="x"} == 0)
           / on (vip) group_left time() - lb_vip_packets_total # a comment: not_a_metric"#,
    );
    let used = used.expect("parses");
    let metrics = ["lb_backend_drained", "lb_backend_weight", "lb_vip_packets_total"];
    assert_eq!(used.metrics, metrics.map(String::from).into());
    assert_eq!(used.grouping, ["backend".to_owned(), "vip".to_owned()].into());
    assert_eq!(used.matchers.len(), 1);
}
