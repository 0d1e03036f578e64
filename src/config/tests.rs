//! The pipeline file's loader, checked on the shipped file and on broken variants of it.
use super::*;

/// The pipeline file the README shows in brief is one the loader accepts.
#[test]
fn the_readme_example_loads() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```toml\n")
        .expect("a toml block in the README")
        + 8;
    let end = start + readme[start..].find("```").unwrap();
    let p = Pipeline::parse(&readme[start..end], "README.md").unwrap();
    let names: Vec<&str> = p.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["DimUser", "FactStream"]);
    assert_eq!(p.views.len(), 1);
}

#[test]
fn the_shipped_pipeline_file_is_valid() {
    let p = Pipeline::parse(DEFAULT_PIPELINE, "pipeline.toml").unwrap();
    let names: Vec<_> = p.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "DimUser",
            "DimArtist",
            "DimTrack",
            "DimDate",
            "Country",
            "FactStream"
        ]
    );
    let fact = &p.tables[5];
    assert_eq!(fact.cdc_column, "stream_timestamp");
    // The reference table reads the second source, `reference/` unless the environment
    // says otherwise.
    assert_eq!(p.tables[4].source.as_deref(), Some("reference"));
    let url = &p.sources["reference"];
    match std::env::var("TUNELAKE_REFERENCE") {
        Ok(set) if !set.is_empty() => assert_eq!(*url, set),
        _ => assert_eq!(url, "files:reference"),
    }
    assert_eq!(fact.keys, ["stream_id"]);
    assert_eq!(p.tables[3].cdc_column, "date");
}

#[test]
fn every_problem_is_reported_at_once_with_its_location() {
    let text = r#"
[settings]
max_concurrency = 0

[[tables]]
name = "Users; DROP TABLE x"
cdc_column = "updated_at"
keys = ["id", "id"]

[[tables]]
name = "B"
cdc_column = "x y"
keys = []

[[tables]]
name = "C"
cdc_column = "c"
keys = ["k"]
colour = "blue"
"#;
    let err = Pipeline::parse(text, "p.toml").unwrap_err();
    let Error::Config { file, problems } = &err else {
        panic!("{err}")
    };
    assert_eq!(file, "p.toml");
    let locations: Vec<_> = problems.iter().map(|p| p.location.as_str()).collect();
    assert_eq!(
        locations,
        [
            "settings.max_concurrency",
            "tables[0] (Users; DROP TABLE x).name",
            "tables[0] (Users; DROP TABLE x).keys[1]",
            "tables[1] (B).cdc_column",
            "tables[1] (B).keys",
            "tables[2] (C)",
        ]
    );
    assert!(problems[5].message.contains("colour"), "{}", problems[5]);
    assert!(err.to_string().contains("6 problem(s)"));
}

#[test]
fn a_dimension_copies_named_columns_from_a_dimension_that_copies_none() {
    let table = |name: &str, gold: &str| {
        format!(
            "[[tables]]\nname = \"{name}\"\ncdc_column = \"c\"\nkeys = [\"k\"]\n[tables.gold]\n{gold}\n"
        )
    };
    let text = [
        table("A", "name = \"dim_a\""),
        table(
            "B",
            "name = \"dim_b\"\nlookups = [{ dimension = \"dim_a\", on = [\"a\"], columns = [\"x\"] }]",
        ),
        table(
            "C",
            "name = \"dim_c\"\nlookups = [{ dimension = \"dim_b\", on = [\"b\"], columns = [\"y\"] }, \
             { dimension = \"dim_c\", on = [\"c\"], columns = [\"z\"] }, \
             { dimension = \"dim_a\", on = [\"a\"] }]",
        ),
    ]
    .concat();
    let Error::Config { problems, .. } = Pipeline::parse(&text, "p.toml").unwrap_err() else {
        panic!()
    };
    let found: Vec<_> = problems
        .iter()
        .map(|p| {
            (
                p.location.as_str(),
                p.message.split(' ').next().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        found,
        [
            ("tables[2] (C).gold.lookups[0].dimension", "dim_b"),
            ("tables[2] (C).gold.lookups[1].dimension", "a"),
            ("tables[2] (C).gold.lookups[2].columns", "a"),
        ]
    );
    // Table B alone is fine: it copies from a dimension that copies nothing.
    assert!(
        Pipeline::parse(
            &text[..text.find("[[tables]]\nname = \"C\"").unwrap()],
            "p.toml"
        )
        .is_ok()
    );
}

#[test]
fn silver_rules_are_checked_as_sql_expressions() {
    let text = r#"
[[tables]]
name = "T"
cdc_column = "c"
keys = ["k"]
[tables.silver]
columns = [
  { name = "ok", expr = "upper(trim(x))" },
  { name = "bad", expr = "1; DROP TABLE t" },
  { name = "worse", expr = "SELECT 1" },
]
drop = ["k"]
expect = [{ name = "positive", rule = "x >", action = "drop" }]
"#;
    let Error::Config { problems, .. } = Pipeline::parse(text, "p.toml").unwrap_err() else {
        panic!()
    };
    let locations: Vec<_> = problems.iter().map(|p| p.location.as_str()).collect();
    assert_eq!(
        locations,
        [
            "tables[0] (T).silver.columns[1] (bad).expr",
            "tables[0] (T).silver.columns[2] (worse).expr",
            "tables[0] (T).silver.drop[0]",
            "tables[0] (T).silver.expect[0] (positive).rule",
        ]
    );
}

#[test]
fn keys_get_a_non_null_rule_unless_one_is_given() {
    let p = Pipeline::parse(DEFAULT_PIPELINE, "pipeline.toml").unwrap();
    let streams = &p.tables[5];
    assert_eq!(streams.silver_name(), "streams");
    let rules = streams.expectations();
    assert_eq!(rules[0].name, "keys_not_null");
    assert_eq!(rules[0].rule, "\"stream_id\" IS NOT NULL");
    assert!(
        rules
            .iter()
            .any(|r| r.rule.contains("listen_duration >= 0"))
    );
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let err = Pipeline::parse("[[tables]]\nname = \n", "p.toml").unwrap_err();
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn bronze_paths_map_to_their_table() {
    let p = Pipeline::parse(DEFAULT_PIPELINE, "pipeline.toml").unwrap();
    let found =
        p.table_for_bronze_path("bronze/DimUser/DimUser_0_20250630T000000000000_00000.parquet");
    assert_eq!(found.map(|t| t.name.as_str()), Some("DimUser"));
    assert!(
        p.table_for_bronze_path("bronze/_watermarks/DimUser.json")
            .is_none()
    );
    assert!(
        p.table_for_bronze_path("bronze/_quarantine/DimUser/rows/x.parquet")
            .is_none()
    );
    assert!(p.table_for_bronze_path("bronze/Nope/x.parquet").is_none());
    assert!(p.table_for_bronze_path("silver/users/x.parquet").is_none());
}

#[test]
fn selecting_an_unknown_table_names_the_known_ones() {
    let p = Pipeline::parse(DEFAULT_PIPELINE, "pipeline.toml").unwrap();
    assert_eq!(
        p.select(&["factstream".into()]).unwrap()[0].name,
        "FactStream"
    );
    let err = p.select(&["Nope".into()]).unwrap_err().to_string();
    assert!(err.contains("Nope") && err.contains("DimUser"), "{err}");
}

#[test]
fn dlt_include_lists_exclude_their_opposites_and_history_options_are_for_dimensions() {
    let with = |dim_user: &str, fact: &str| {
        let text = DEFAULT_PIPELINE
            .replacen(
                "name = \"dim_user\"\nscd_type = 2",
                &format!("name = \"dim_user\"\nscd_type = 2\n{dim_user}"),
                1,
            )
            .replacen(
                "name = \"fact_stream\"",
                &format!("name = \"fact_stream\"\n{fact}"),
                1,
            );
        Pipeline::parse(&text, "p.toml").map_err(|e| e.to_string())
    };
    let p = with(
        "columns = [\"country\"]\ntrack_history_columns = [\"country\"]\nignore_null_updates = true",
        "columns = [\"device_type\"]",
    )
    .unwrap();
    let g = p.tables[0].gold.as_ref().unwrap();
    assert!(g.ignore_null_updates && g.keeps("country") && !g.keeps("user_name"));
    assert!(g.tracks("country") && !g.tracks("user_name"));
    let err = with(
        "columns = [\"country\"]\nexcept_columns = [\"user_name\"]",
        "",
    )
    .unwrap_err();
    assert!(
        err.contains("tables[0] (DimUser).gold.columns") && err.contains("not both"),
        "{err}"
    );
    let err = with(
        "track_history_columns = []\ntrack_history_except = [\"country\"]",
        "",
    )
    .unwrap_err();
    assert!(
        err.contains("gold.track_history_columns") && err.contains("not both"),
        "{err}"
    );
    let err = with("", "ignore_null_updates = true").unwrap_err();
    assert!(
        err.contains("(FactStream).gold.ignore_null_updates") && err.contains("dimensions only"),
        "{err}"
    );
    let err = with("columns = [\"bad name\"]", "").unwrap_err();
    assert!(err.contains("gold.columns[0]"), "{err}");
}

#[test]
fn schema_options_are_checked_at_load_naming_the_key() {
    let text = DEFAULT_PIPELINE.replacen(
        "name = \"users\"\n",
        "name = \"users\"\nschema_evolution = \"rescue\"\nschema_hints = { user_id = \"BIGINT\", tier = \"VARCHAR2\" }\n",
        1,
    );
    let err = Pipeline::parse(&text, "p.toml").unwrap_err().to_string();
    assert!(
        err.contains("tables[0] (DimUser).silver.schema_hints.tier") && err.contains("VARCHAR2"),
        "{err}"
    );
    assert!(!err.contains("schema_hints.user_id"), "{err}");
    let bad = DEFAULT_PIPELINE.replacen(
        "name = \"users\"\n",
        "name = \"users\"\nschema_evolution = \"merge\"\n",
        1,
    );
    let err = Pipeline::parse(&bad, "p.toml").unwrap_err().to_string();
    assert!(
        err.contains("tables[0] (DimUser)") && err.contains("merge"),
        "{err}"
    );
}
