//! Checks of a table's silver section: names are plain identifiers, expressions and rules are
//! one SQL expression each, and keys and the watermark column are kept.

use super::{TableSpec, expression_problem, ident};

pub(super) fn validate(t: &TableSpec, at: &str, problem: &mut impl FnMut(String, String)) {
    let at = format!("{at}.silver");
    if let Some(p) = t.silver.name.as_deref().and_then(ident::problem) {
        problem(format!("{at}.name"), p);
    }
    for (i, c) in t.silver.columns.iter().enumerate() {
        if let Some(p) = ident::problem(&c.name) {
            problem(format!("{at}.columns[{i}].name"), p);
        }
        if let Some(p) = expression_problem(&c.expr) {
            problem(format!("{at}.columns[{i}] ({}).expr", c.name), p);
        }
    }
    for (i, r) in t.silver.rename.iter().enumerate() {
        for (field, name) in [("from", &r.from), ("to", &r.to)] {
            if let Some(p) = ident::problem(name) {
                problem(format!("{at}.rename[{i}].{field}"), p);
            }
        }
        if t.keys.contains(&r.from) || r.from == t.cdc_column {
            problem(
                format!("{at}.rename[{i}].from"),
                format!(
                    "{:?} is a key or the watermark column; silver keeps their names",
                    r.from
                ),
            );
        }
    }
    for (i, d) in t
        .silver
        .drop
        .iter()
        .chain(&t.silver.drop_if_empty)
        .enumerate()
    {
        if let Some(p) = ident::problem(d) {
            problem(format!("{at}.drop[{i}]"), p);
        } else if t.keys.contains(d) || *d == t.cdc_column {
            problem(
                format!("{at}.drop[{i}]"),
                format!("{d:?} is a key or the watermark column; silver needs it"),
            );
        }
    }
    for (i, e) in t.silver.expect.iter().enumerate() {
        if let Some(p) = ident::problem(&e.name) {
            problem(format!("{at}.expect[{i}].name"), p);
        }
        if let Some(p) = expression_problem(&e.rule) {
            problem(format!("{at}.expect[{i}] ({}).rule", e.name), p);
        }
    }
}
