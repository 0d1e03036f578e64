//! The lake's layout (DESIGN.md §5) in one place: every path tunelake reads or writes, the
//! Delta application-transaction ids that make its commits exactly-once, and the names of the
//! columns it adds to silver and gold. Nothing else in the crate spells a lake path or an
//! app id; it calls the function here that names it.
//!
//! ```text
//! bronze/<Table>/<Table>_<from>_<to>_<part>.parquet   a window's extract (window::Window::file_name)
//! bronze/<Table>/<Table>_deletes_<time>.parquet       delete markers (deletes = "detect")
//! bronze/<Table>/<Table>_snapshot_<time>_00000.parquet a snapshot table's full snapshot
//! bronze/_watermarks/<Table>.json                     the last value extracted
//! bronze/_snapshots/<Table>.json                      a snapshot table's last content hash
//! bronze/_keys/<Table>.parquet                        the source's keys, for delete detection
//! bronze/_quarantine/<Table>/<file>                   unreadable files, with <file>.reason.txt
//! bronze/_quarantine/<Table>/rows/<file>              rows dropped by expectations
//! bronze/_refreshed/<Table>/<run>/                    bronze set aside by a full refresh
//! silver/<table>                                      Delta change logs
//! gold/<table>                                        Delta dimensions, facts and views
//! _system/events                                      the run event log (Delta)
//! _system/leases/<stage>/<table>.{lock,json}          one writer per table and stage
//! _system/outbox/<run>-<stage>.json                   alerts when no mail is configured
//! _system/maintenance/<area>/<table>.json             when a table was last vacuumed
//! ```

use std::fmt;

/// A pipeline stage, as it names leases, events and progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Source tables into bronze files.
    Ingest,
    /// Bronze files into silver change logs.
    Silver,
    /// Silver changes into the star schema and views.
    Gold,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 3] = [Stage::Ingest, Stage::Silver, Stage::Gold];

    /// The lower-case name used in the lake, the event log and the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Silver => "silver",
            Stage::Gold => "gold",
        }
    }

    /// The stage named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The area a Delta table belongs to, for paths and for errors that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// `silver/<table>`.
    Silver,
    /// `gold/<table>`.
    Gold,
    /// `_system/<table>`.
    System,
}

impl Area {
    /// The folder of the area's tables.
    pub fn folder(self) -> &'static str {
        match self {
            Area::Silver => "silver",
            Area::Gold => "gold",
            Area::System => "_system",
        }
    }

    /// The area of a table path (`gold/dim_user` → gold), if it is one of tunelake's.
    pub fn of_path(path: &str) -> Option<Area> {
        let folder = path.split('/').next()?;
        [Area::Silver, Area::Gold, Area::System]
            .into_iter()
            .find(|a| a.folder() == folder)
    }
}

/// The bronze area (in the cloud, its container).
pub const BRONZE: &str = "bronze";

/// Where bronze files of a table live: `bronze/<Table>`.
pub fn bronze_dir(table: &str) -> String {
    format!("{BRONZE}/{table}")
}

/// A lake path from a name inside the bronze area (as a blob event names it), or the name
/// itself when it already starts in bronze.
pub fn in_bronze(name: &str) -> String {
    let name = name.trim_start_matches('/');
    match name.strip_prefix(BRONZE).and_then(|n| n.strip_prefix('/')) {
        Some(_) => name.to_string(),
        None => format!("{BRONZE}/{name}"),
    }
}

/// A snapshot table's full snapshot taken at `at` (microseconds since the epoch): names sort
/// by time.
pub fn snapshot_file(table: &str, at: i64) -> String {
    format!("{BRONZE}/{table}/{table}_snapshot_{at:020}_00000.parquet")
}

/// Where a snapshot table's last snapshot is described (its content hash, time, rows).
pub fn snapshot_state(table: &str) -> String {
    format!("{BRONZE}/_snapshots/{table}.json")
}

/// The folder of the watermark files.
pub const WATERMARKS: &str = "bronze/_watermarks";

/// A table's watermark file.
pub fn watermark(table: &str) -> String {
    format!("{WATERMARKS}/{table}.json")
}

/// Where silver's discovery of a table's bronze files stands (`lake::discovery`).
pub fn discovery_cursor(table: &str) -> String {
    format!("bronze/_discovery/{table}.json")
}

/// A table's key list, which delete detection compares the source's keys with.
pub fn keys(table: &str) -> String {
    format!("bronze/_keys/{table}.parquet")
}

/// Where the next key list is written before it replaces [`keys`].
pub fn keys_next(table: &str) -> String {
    format!("bronze/_keys/{table}.next.parquet")
}

/// A delete-markers file, beside the windows (its name is not a window's, so no window's
/// cleanup takes it for one); `time` is the detection time in the window file-name form.
pub fn delete_markers(table: &str, time: &str) -> String {
    format!("{}/{table}_deletes_{time}.parquet", bronze_dir(table))
}

/// The last segment of a path.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Where an unreadable bronze file is moved (its reason beside it, see [`reason_of`]).
pub fn quarantined_file(table: &str, file: &str) -> String {
    format!("bronze/_quarantine/{table}/{}", file_name(file))
}

/// Where `clean_source = "move"` puts a bronze file silver has loaded.
pub fn archived(table: &str, file: &str) -> String {
    format!("bronze/_archive/{table}/{}", file_name(file))
}

/// The reason file beside a quarantined file.
pub fn reason_of(quarantined: &str) -> String {
    format!("{quarantined}.reason.txt")
}

/// Where the rows of a bronze file that broke `drop` rules go (deterministic: a retry
/// replaces them).
pub fn quarantined_rows(table: &str, file: &str) -> String {
    format!("bronze/_quarantine/{table}/rows/{}", file_name(file))
}

/// Where a full refresh sets a table's bronze files aside.
pub fn refreshed(table: &str, run_id: &str) -> String {
    format!("bronze/_refreshed/{table}/{run_id}")
}

/// A silver table.
pub fn silver_table(name: &str) -> String {
    format!("{}/{name}", Area::Silver.folder())
}

/// The Delta table of the rows a silver table's `drop` expectations quarantined.
pub fn quarantine_table(silver: &str) -> String {
    silver_table(&format!("{silver}_quarantine"))
}

/// A gold table or view.
pub fn gold_table(name: &str) -> String {
    format!("{}/{name}", Area::Gold.folder())
}

/// The run event log, a Delta table.
pub const EVENTS: &str = "_system/events";

/// A lease of one table in one stage, without its extension.
pub fn lease(stage: Stage, table: &str) -> String {
    format!("_system/leases/{stage}/{table}")
}

/// When maintenance last vacuumed the table at `table_path` (`gold/dim_user`, ...).
pub fn maintenance_record(table_path: &str) -> String {
    format!("_system/maintenance/{table_path}.json")
}

/// An alert written to the outbox.
pub fn outbox(run_id: &str, stage: &str) -> String {
    format!(
        "_system/outbox/{run_id}-{}.json",
        stage.replace(['/', ' '], "_")
    )
}

/// Application-transaction ids: each names what a commit records having consumed, so that a
/// retry, a second process or a crash can never apply it twice.
pub mod app_id {
    /// Silver records a bronze file under this id (version: the file's last-modified time).
    pub fn silver_file(bronze_path: &str) -> String {
        format!("tunelake.silver:{bronze_path}")
    }

    /// A gold table records the silver version it consumed.
    pub fn gold_consumed(silver: &str) -> String {
        format!("tunelake.gold:{silver}")
    }

    /// A dimension records the largest surrogate key it has handed out.
    pub const SURROGATE_KEY: &str = "tunelake.gold.sk";

    /// A fact records the version of each dimension it resolved against.
    pub fn fact_lookup(dimension: &str) -> String {
        format!("tunelake.gold.lookup:{dimension}")
    }

    /// A view records the version of each input it was built from.
    pub fn view_input(table: &str) -> String {
        format!("tunelake.view.input:{table}")
    }

    /// A view records a hash of its definition (the rendered query and how it refreshes), so
    /// that an edited view is rebuilt, not refreshed in part.
    pub const VIEW_DEFINITION: &str = "tunelake.view.definition";
}

/// A commit that only changed some columns of the rows it rewrote (a fact's re-resolution)
/// names them in its `commitInfo` under this key, so that a view reading none of them takes
/// the commit for a move of rows, as a compaction.
pub const CHANGED_COLUMNS: &str = "tunelake.changedColumns";

/// Beside [`CHANGED_COLUMNS`], the files of the commit that hold new rows (an SCD2 build's
/// new versions); its other added files are copies of the files it removed.
pub const NEW_FILES: &str = "tunelake.newFiles";

/// Columns silver adds to the source's.
pub mod silver_columns {
    /// Lineage: the bronze file a silver row came from.
    pub const SOURCE_FILE: &str = "_source_file";
    /// Lineage: when silver loaded the row (UTC).
    pub const INGESTED_AT: &str = "_ingested_at";
    /// Values that did not fit their column's type, as a JSON object per row.
    pub const RESCUED: &str = "_rescued_data";
    /// What a row is in the source's change log: `delete` on the markers ingest writes for
    /// keys that vanished from the source (`deletes = "detect"`), NULL where not known.
    pub const CHANGE_TYPE: &str = "_change_type";
    /// Names of the broken rules, on quarantined rows.
    pub const FAILED_RULES: &str = "_failed_rules";
    /// A snapshot table's sequence: when ingest took the snapshot a row came from (UTC); the
    /// watermark column of a table without `cdc_column`.
    pub const SNAPSHOT_AT: &str = "_snapshot_at";
}

/// Columns gold adds to a dimension's.
pub mod gold_columns {
    /// An SCD2 version's start: the sequence value of the change that opened it.
    pub const VALID_FROM: &str = "valid_from";
    /// An SCD2 version's end (NULL while current): the next change's sequence value.
    pub const VALID_TO: &str = "valid_to";
    /// Whether an SCD2 version is the key's current one.
    pub const IS_CURRENT: &str = "is_current";
    /// The period of an SCD2 version, in column order.
    pub const PERIOD: [&str; 2] = [VALID_FROM, VALID_TO];
    /// Every column SCD2 adds, in column order.
    pub const SCD2: [&str; 3] = [VALID_FROM, VALID_TO, IS_CURRENT];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_documented_layout() {
        assert_eq!(watermark("DimUser"), "bronze/_watermarks/DimUser.json");
        assert_eq!(in_bronze("DimUser/a.parquet"), "bronze/DimUser/a.parquet");
        assert_eq!(
            in_bronze("/bronze/DimUser/a.parquet"),
            "bronze/DimUser/a.parquet"
        );
        assert_eq!(
            quarantined_rows("FactStream", "bronze/FactStream/a.parquet"),
            "bronze/_quarantine/FactStream/rows/a.parquet"
        );
        assert_eq!(
            reason_of(&quarantined_file("DimUser", "bronze/DimUser/x.parquet")),
            "bronze/_quarantine/DimUser/x.parquet.reason.txt"
        );
        assert_eq!(
            lease(Stage::Gold, "dim_user"),
            "_system/leases/gold/dim_user"
        );
        assert_eq!(
            outbox("r1", "gold/dim user"),
            "_system/outbox/r1-gold_dim_user.json"
        );
        assert_eq!(Area::of_path(&gold_table("dim_user")), Some(Area::Gold));
        assert_eq!(Area::of_path(&silver_table("users")), Some(Area::Silver));
        assert_eq!(Area::of_path(EVENTS), Some(Area::System));
        assert_eq!(Area::of_path("bronze/DimUser"), None);
    }

    #[test]
    fn stages_round_trip_through_their_names() {
        for stage in Stage::ALL {
            assert_eq!(Stage::parse(stage.as_str()), Some(stage));
        }
        assert_eq!(Stage::parse("platinum"), None);
    }
}
