//! Identifiers from metadata: validated as plain names, then quoted for each SQL dialect.
//!
//! Validation is the guarantee (a name is letters, digits and `_`, starting with a letter or
//! `_`, at most 128 characters, as SQL Server allows unquoted); quoting is the second wall.

/// Why a name is not a plain identifier, or `None` when it is one.
pub fn problem(name: &str) -> Option<String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Some("is empty".to_string()),
        Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
            return Some(format!(
                "{name:?} is not a plain identifier: it must start with a letter or _"
            ));
        }
        _ => {}
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || *c == '_')) {
        return Some(format!(
            "{name:?} is not a plain identifier: {bad:?} is not allowed (letters, digits and _ only)"
        ));
    }
    if name.len() > 128 {
        return Some(format!("{name:?} is longer than 128 characters"));
    }
    None
}

/// Quotes a validated identifier for SQLite and ANSI SQL: `"name"`.
pub fn quote_ansi(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a validated identifier for T-SQL: `[name]`.
pub fn quote_tsql(name: &str) -> String {
    format!("[{}]", name.replace(']', "]]"))
}

/// Turns `DimUser` / `FactStream` into `dim_user` / `fact_stream`.
pub fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for ok in ["DimUser", "_x", "a1_b2", "updated_at"] {
            assert_eq!(problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn injection_and_odd_names_are_refused_with_a_reason() {
        let p = problem("Users; DROP TABLE x").unwrap();
        assert!(p.contains("';'") || p.contains("' '"), "{p}");
        assert!(problem("1abc").unwrap().contains("start with"));
        assert!(problem("").unwrap().contains("empty"));
        assert!(problem("a\"b").is_some());
        assert!(problem("a]b").is_some());
        assert!(problem("naïve").is_some());
        assert!(problem(&"a".repeat(129)).unwrap().contains("128"));
    }

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ansi("DimUser"), "\"DimUser\"");
        assert_eq!(quote_ansi("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_tsql("DimUser"), "[DimUser]");
        assert_eq!(quote_tsql("a]b"), "[a]]b]");
    }

    #[test]
    fn snake_case_names() {
        assert_eq!(snake_case("DimUser"), "dim_user");
        assert_eq!(snake_case("FactStream"), "fact_stream");
        assert_eq!(snake_case("users"), "users");
    }
}
