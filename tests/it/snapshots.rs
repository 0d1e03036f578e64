//! Snapshot tables (no `cdc_column`) against an oracle of DLT's AUTO CDC FROM SNAPSHOT: the
//! difference between consecutive snapshots is the change. Keys change, vanish and come back
//! across runs of a files source; gold is compared with the oracle after every run.

use std::collections::BTreeMap;
use std::path::Path;

use crate::cli::tunelake_with;

const PIPELINE: &str = r#"
[[tables]]
name = "Plan"
keys = ["plan_id"]
[tables.gold]
name = "dim_plan"
scd_type = 2

[[tables]]
name = "Tier"
keys = ["tier_id"]
[tables.gold]
name = "dim_tier"
scd_type = 1
"#;

type Snapshot = BTreeMap<i64, (String, i64)>;

/// DLT's meaning, run by hand: SCD2 versions per key (name, price, current) and the SCD1 state.
#[derive(Default)]
struct Oracle {
    versions: BTreeMap<i64, Vec<(String, i64, bool)>>,
    state: Snapshot,
}

impl Oracle {
    fn take(&mut self, snapshot: &Snapshot) {
        for (key, value) in snapshot {
            if self.state.get(key) != Some(value) {
                let versions = self.versions.entry(*key).or_default();
                if let Some(last) = versions.last_mut() {
                    last.2 = false;
                }
                versions.push((value.0.clone(), value.1, true));
            }
        }
        for key in self.state.keys().filter(|k| !snapshot.contains_key(k)) {
            if let Some(last) = self.versions.get_mut(key).and_then(|v| v.last_mut()) {
                last.2 = false;
            }
        }
        self.state = snapshot.clone();
    }

    fn scd2_lines(&self) -> Vec<String> {
        self.versions
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |(n, p, c)| format!("{k},{n},{p},{c}")))
            .collect()
    }

    fn scd1_lines(&self) -> Vec<String> {
        self.state
            .iter()
            .map(|(k, (n, p))| format!("{k},{n},{p}"))
            .collect()
    }
}

fn write(dir: &Path, table: &str, key: &str, snapshot: &Snapshot) {
    let mut csv = format!("{key},name,price\n");
    for (k, (n, p)) in snapshot {
        csv.push_str(&format!("{k},{n},{p}\n"));
    }
    std::fs::write(dir.join(format!("src/{table}.csv")), csv).unwrap();
}

fn sql(dir: &Path, query: &str) -> Vec<String> {
    crate::cli::query_rows(dir, "lake", query)
}

fn run(dir: &Path) -> (i32, String) {
    let (code, out, err) = tunelake_with(
        dir,
        &[
            "--config",
            "p.toml",
            "--source",
            "files:src",
            "--lake",
            "lake",
            "run",
        ],
        &[],
    );
    (code, format!("{out}{err}"))
}

fn snapshot(rows: &[(i64, &str, i64)]) -> Snapshot {
    rows.iter()
        .map(|(k, n, p)| (*k, (n.to_string(), *p)))
        .collect()
}

#[test]
fn keys_that_change_vanish_and_come_back_follow_dlt_snapshot_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("src")).unwrap();
    std::fs::write(d.join("p.toml"), PIPELINE).unwrap();
    let rounds = [
        snapshot(&[(1, "basic", 10), (2, "plus", 20), (3, "pro", 30)]),
        // 2 changes, 3 vanishes, 4 is new.
        snapshot(&[(1, "basic", 10), (2, "plus", 25), (4, "team", 40)]),
        // The same content: nothing to load.
        snapshot(&[(1, "basic", 10), (2, "plus", 25), (4, "team", 40)]),
        // 3 comes back, with another price.
        snapshot(&[
            (1, "basic", 10),
            (2, "plus", 25),
            (3, "pro", 35),
            (4, "team", 40),
        ]),
        // 1 vanishes.
        snapshot(&[(2, "plus", 25), (3, "pro", 35), (4, "team", 40)]),
    ];
    let mut oracle = Oracle::default();
    let mut bronze_files = 0;
    for (round, snap) in rounds.iter().enumerate() {
        write(d, "Plan", "plan_id", snap);
        write(d, "Tier", "tier_id", snap);
        let (code, out) = run(d);
        assert_eq!(code, 0, "round {round}: {out}");
        oracle.take(snap);
        let gold = sql(
            d,
            "SELECT plan_id, name, price, is_current FROM gold.dim_plan WHERE plan_sk > 0 ORDER BY plan_id, valid_from",
        );
        assert_eq!(gold, oracle.scd2_lines(), "round {round}: SCD2");
        let gold = sql(
            d,
            "SELECT tier_id, name, price FROM gold.dim_tier WHERE tier_sk > 0 ORDER BY tier_id",
        );
        assert_eq!(gold, oracle.scd1_lines(), "round {round}: SCD1");
        let files = crate::common::parquet_files(&d.join("lake/bronze/Plan")).len();
        let changed = round == 0 || rounds[round] != rounds[round - 1];
        assert_eq!(
            files,
            bronze_files + usize::from(changed),
            "round {round}: one file per changed snapshot"
        );
        bronze_files = files;
    }
    // Silver holds the changes, not the snapshots: 3 inserts, then 2 changes and a delete, then
    // a return, then a delete.
    assert_eq!(sql(d, "SELECT count(*) FROM silver.plan"), ["8"]);
    assert_eq!(
        sql(
            d,
            "SELECT count(*) FROM silver.plan WHERE _change_type = 'delete'"
        ),
        ["2"]
    );

    // A snapshot file that cannot be read is quarantined; the one before stays current.
    let later = d.join("lake/bronze/Plan/Plan_snapshot_99999999999999999999_00000.parquet");
    std::fs::write(&later, b"not parquet").unwrap();
    let (code, out) = run(d);
    assert_ne!(code, 0, "a quarantined file makes the run fail: {out}");
    assert!(d.join("lake/bronze/_quarantine/Plan").is_dir());
    let gold = sql(
        d,
        "SELECT plan_id, name, price, is_current FROM gold.dim_plan WHERE plan_sk > 0 ORDER BY plan_id, valid_from",
    );
    assert_eq!(gold, oracle.scd2_lines(), "after the corrupt snapshot");
}

#[test]
fn a_snapshot_table_without_keys_or_with_watermark_options_is_refused() {
    let text = "[[tables]]\nname = \"Plan\"\nkeys = []\nlookback = \"1h\"\ndeletes = \"detect\"\n";
    let err = tunelake::config::Pipeline::parse(text, "p.toml")
        .unwrap_err()
        .to_string();
    for expected in [
        "tables[0] (Plan).keys: a snapshot table (no cdc_column) needs keys",
        "tables[0] (Plan).lookback",
        "tables[0] (Plan).deletes",
    ] {
        assert!(err.contains(expected), "{expected}:\n{err}");
    }
}

#[test]
fn a_sqlite_table_without_a_change_column_is_a_snapshot_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (code, _, err) = tunelake_with(
        d,
        &["seed", "--source", "sqlite:src.db", "--scale", "0.002"],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let pipeline = "[[tables]]\nname = \"DimDate\"\nkeys = [\"date_key\"]\n[tables.gold]\nname = \"dim_date\"\nscd_type = 1\n";
    std::fs::write(d.join("p.toml"), pipeline).unwrap();
    let run = || {
        let (code, out, err) = tunelake_with(
            d,
            &[
                "--config",
                "p.toml",
                "--source",
                "sqlite:src.db",
                "--lake",
                "lake",
                "run",
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}{err}");
    };
    run();
    let dates = crate::common::Fixture::count_in(&d.join("src.db"), "SELECT COUNT(*) FROM DimDate");
    let count = || sql(d, "SELECT count(*) FROM gold.dim_date WHERE date_sk > 0");
    assert_eq!(count(), [dates.to_string()]);
    // A day removed from the source leaves gold at the next run.
    rusqlite::Connection::open(d.join("src.db"))
        .unwrap()
        .execute(
            "DELETE FROM DimDate WHERE date_key = (SELECT min(date_key) FROM DimDate)",
            [],
        )
        .unwrap();
    run();
    assert_eq!(count(), [(dates - 1).to_string()]);
    assert_eq!(
        sql(
            d,
            "SELECT count(*) FROM silver.dim_date WHERE _change_type = 'delete'"
        ),
        ["1"]
    );
}
