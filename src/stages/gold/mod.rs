//! Gold stage (queue trigger; Delta Live Tables auto CDC): dimensions as SCD1/SCD2 with
//! surrogate keys, then facts with point-in-time surrogate keys, then the business views.
//!
//! Gold is a function of silver. Each gold table records, in the same Delta commit as its
//! rows, the silver version it has consumed (a `txn` action, app id `tunelake.gold:<silver>`),
//! so a run reads only the silver files added since, a crashed run is redone from the same
//! point, and two concurrent runs conflict instead of applying a change twice.

mod deletes;
mod dimension;
mod fact;
pub mod handover;
mod lookup;
mod outrigger;
mod patch;
mod rewrite;
mod state;
mod views;
mod write;

use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::DeltaTable;
use serde::Serialize;
use tracing::{error, info, warn};

use super::Status;
use crate::config::{GoldKind, Pipeline, TableSpec};
use crate::error::{Error, Result, delta_err};
use crate::lake::layout;
use crate::lake::layout::Stage;
use crate::lake::lease::Lease;
use crate::lake::{Lake, conflict};
pub use handover::{Built, Progress, Staged};
pub use state::{TableState, covers, state};
use write::{
    append, col, commit_properties, count_op, insert_from_source, merge_rows, op_is, project,
    record_only, schema_of, update_from_source,
};

/// What a gold run did to one table or view.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// The gold table or view name.
    pub table: String,
    /// `dimension`, `fact` or `view`.
    pub kind: String,
    /// The silver table read (none for views).
    pub source: Option<String>,
    /// How the table ended.
    pub status: Status,
    /// Silver rows read (the changes since the last run).
    pub rows_in: u64,
    /// Rows inserted (for SCD2: new versions; for views: rows written).
    pub inserted: u64,
    /// Rows changed in place (SCD2: versions closed or re-dated; facts: rows whose
    /// surrogate keys moved to a newly valid dimension version).
    pub updated: u64,
    /// Rows removed: SCD2 versions that a late change made obsolete, SCD1 rows of deleted
    /// keys, fact rows that deletes ended.
    pub deleted: u64,
    /// SCD2 versions closed by this run (`valid_to` set).
    pub closed: u64,
    /// Facts: new rows per lookup whose dimension member was unknown at their time (`-1`).
    pub unknown: Vec<(String, u64)>,
    /// The silver version consumed.
    pub input_version: Option<u64>,
    /// The gold table's version after the run.
    pub version: Option<u64>,
    /// How long it took.
    pub seconds: f64,
    /// The error, when it failed.
    pub error: Option<String>,
}

impl crate::progress::Outcome for TableReport {
    fn status(&self) -> &'static str {
        self.status.as_str()
    }

    fn rows(&self) -> u64 {
        self.rows_out()
    }
}

impl TableReport {
    fn new(table: &str, kind: &str, source: Option<String>) -> Self {
        TableReport {
            table: table.to_string(),
            kind: kind.to_string(),
            source,
            status: Status::Empty,
            rows_in: 0,
            inserted: 0,
            updated: 0,
            deleted: 0,
            closed: 0,
            unknown: Vec::new(),
            input_version: None,
            version: None,
            seconds: 0.0,
            error: None,
        }
    }

    /// Rows written: inserted plus updated.
    pub fn rows_out(&self) -> u64 {
        self.inserted + self.updated
    }
}

/// What a gold run did, dimensions first, then facts, then views.
#[derive(Debug, Clone, Serialize)]
pub struct GoldReport {
    /// The run.
    pub run_id: String,
    /// Per table and view, dimensions first, then facts, then views.
    pub tables: Vec<TableReport>,
}

impl GoldReport {
    /// True when a table or view failed.
    pub fn failed(&self) -> bool {
        self.tables.iter().any(|t| t.status == Status::Failed)
    }

    /// The event-log rows of this run.
    pub fn events(
        &self,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Vec<crate::lake::events::Event> {
        self.tables
            .iter()
            .map(|t| crate::lake::events::Event {
                run_id: self.run_id.clone(),
                stage: Stage::Gold.to_string(),
                table: t.table.clone(),
                status: t.status.to_string().to_lowercase(),
                rows_in: t.rows_in as i64,
                rows_out: t.rows_out() as i64,
                rows_dropped: t.deleted as i64,
                rows_rescued: 0,
                input_version: t.input_version.map(|v| v as i64),
                output_version: t.version.map(|v| v as i64),
                started_at,
                seconds: t.seconds,
                error: t.error.clone(),
                details: Some(serde_json::json!({
                    "kind": t.kind,
                    "source": t.source,
                    "inserted": t.inserted,
                    "updated": t.updated,
                    "deleted": t.deleted,
                    "closed": t.closed,
                    "unknown": t.unknown.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
                })),
            })
            .collect()
    }
}

/// The gold stage over one lake.
pub struct Gold {
    lake: Lake,
    run_id: String,
    /// How long a table waits for another run's build of it (`settings.lease_wait_seconds`).
    lease_wait: std::time::Duration,
}

impl Gold {
    /// The gold stage over `lake`, its events under `run_id`.
    pub fn new(lake: Lake, run_id: impl Into<String>) -> Self {
        Gold {
            lake,
            run_id: run_id.into(),
            lease_wait: std::time::Duration::from_secs(
                crate::config::Settings::default().lease_wait_seconds,
            ),
        }
    }

    /// Waits up to `wait` for another run's build of a table before failing it.
    pub fn with_lease_wait(mut self, wait: std::time::Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// Brings the gold tables of `only` up to date with silver, and the views when every
    /// table of the pipeline is in `only`.
    pub async fn run(self, pipeline: &Pipeline, only: &[TableSpec]) -> GoldReport {
        let this = Arc::new(self);
        let mut tables = this.tables(pipeline, only, &Built::default()).await;
        if pipeline.tables.iter().all(|t| only.contains(t)) {
            tables.extend(this.views(pipeline).await);
        }
        GoldReport {
            run_id: this.run_id.clone(),
            tables,
        }
    }

    /// Brings the gold tables of `only` up to date with silver: dimensions first, then facts.
    /// A fact also waits, where it first reads one, for the dimensions `built` names.
    pub async fn tables(
        self: &Arc<Self>,
        pipeline: &Pipeline,
        only: &[TableSpec],
        built: &Built,
    ) -> Vec<TableReport> {
        // Dimensions that copy columns from others come after those (which look up none).
        let of_kind = |(kind, copies): (GoldKind, bool)| -> Vec<TableSpec> {
            only.iter()
                .filter(|t| {
                    t.gold.as_ref().is_some_and(|g| {
                        g.kind == kind && (kind == GoldKind::Fact || g.lookups.is_empty() != copies)
                    })
                })
                .cloned()
                .collect()
        };
        let mut tables = Vec::new();
        // Dimensions are independent of each other, but for the columns some copy; facts
        // need them all.
        for kind in [
            (GoldKind::Dimension, false),
            (GoldKind::Dimension, true),
            (GoldKind::Fact, false),
        ] {
            let worker = self.clone();
            let dims = Arc::new(pipeline.tables.clone());
            let built = built.clone();
            let chunks = (
                pipeline.settings.chunk_rows as usize,
                pipeline.settings.dimension_chunk_keys as usize,
            );
            let reports = super::per_table(
                &of_kind(kind),
                pipeline.settings.max_concurrency,
                &self.run_id,
                Stage::Gold,
                move |table| {
                    let this = worker.clone();
                    let all = dims.clone();
                    let built = built.clone();
                    async move { this.table(&table, &all, chunks, &built).await }
                },
                |table, message| {
                    let mut r = report_for(table);
                    r.status = Status::Failed;
                    r.error = Some(message);
                    r
                },
            )
            .await;
            tables.extend(reports);
        }
        tables
    }

    /// Refreshes the business views, in the pipeline's order.
    pub async fn views(&self, pipeline: &Pipeline) -> Vec<TableReport> {
        let mut tables = Vec::new();
        for view in &pipeline.views {
            // A view's joins hold whole dimensions: free pages of what ran before go back first.
            crate::memory::release();
            let start = Instant::now();
            let tracker = crate::progress::Tracker::start(Stage::Gold.as_str(), &view.name);
            let mut report = TableReport::new(&view.name, "view", None);
            let lease = Lease::acquire(
                &self.lake,
                Stage::Gold,
                &view.name,
                &self.run_id,
                self.lease_wait,
            )
            .await;
            let refreshed = match lease {
                Ok(lease) => {
                    let refreshed = views::refresh(&self.lake, pipeline, view).await;
                    lease.release().await;
                    refreshed
                }
                Err(e) => Err(e),
            };
            match refreshed {
                Ok(Some(refreshed)) => {
                    report.status = Status::Ok;
                    report.inserted = refreshed.rows;
                    report.version = refreshed.version;
                    tracing::debug!(view = %view.name, incremental = refreshed.incremental, "Refreshed.");
                }
                Ok(None) => report.version = current_version(&self.lake, &view.name).await,
                Err(e) => {
                    error!(view = %view.name, error = %e, "The view failed.");
                    report.status = Status::Failed;
                    report.error = Some(e.to_string());
                }
            }
            report.seconds = start.elapsed().as_secs_f64();
            tracker.finish(report.status.as_str(), report.inserted);
            tables.push(report);
        }
        tables
    }

    /// Builds one gold table while holding its lease: a second run of the table waits for
    /// the first, then finds the silver changes consumed.
    async fn table(
        &self,
        table: &TableSpec,
        all: &[TableSpec],
        chunks: (usize, usize),
        built: &Built,
    ) -> TableReport {
        let start = Instant::now();
        let name = table
            .gold
            .as_ref()
            .map_or(table.name.as_str(), |g| g.name.as_str());
        let lease = match Lease::acquire(
            &self.lake,
            Stage::Gold,
            name,
            &self.run_id,
            self.lease_wait,
        )
        .await
        {
            Ok(lease) => lease,
            Err(e) => {
                let mut report = report_for(table);
                report.status = Status::Failed;
                report.error = Some(e.to_string());
                report.seconds = start.elapsed().as_secs_f64();
                return report;
            }
        };
        let report = self.leased_table(table, all, chunks, built, start).await;
        lease.release().await;
        report
    }

    async fn leased_table(
        &self,
        table: &TableSpec,
        all: &[TableSpec],
        chunks: (usize, usize),
        built: &Built,
        start: Instant,
    ) -> TableReport {
        let mut report = report_for(table);
        let mut tries = 0;
        let mut built = built.clone();
        loop {
            tries += 1;
            let result = match table.gold.as_ref().map(|g| g.kind) {
                Some(GoldKind::Dimension) => {
                    dimension::build(&self.lake, table, all, chunks.1, &built, &mut report).await
                }
                Some(GoldKind::Fact) => {
                    fact::build(&self.lake, table, all, chunks.0, &built, &mut report).await
                }
                None => Ok(()),
            };
            match result {
                Err(e @ Error::HandOver { .. }) if !built.refuse_staged => {
                    info!(error = %e, "Building the fact again, from the dimensions as they stand.");
                    built.refuse_staged = true;
                    report = report_for(table);
                }
                Err(Error::Delta { source, .. })
                    if conflict::is_conflict(&source) && tries < conflict::COMMIT_TRIES =>
                {
                    info!(
                        tries,
                        "Another gold run committed first; starting the table again."
                    );
                    conflict::back_off(tries).await;
                    report = report_for(table);
                }
                Err(e) => {
                    error!(error = %e, "The table failed; it stays as the last good run left it.");
                    report.status = Status::Failed;
                    report.error = Some(e.to_string());
                    break;
                }
                Ok(()) => break,
            }
        }
        report.seconds = start.elapsed().as_secs_f64();
        report
    }
}

/// Every column `gold`'s lists name must be in the silver table (`names`): an error names the
/// pipeline key (`gold.columns[1]`), the table and the columns there, before gold writes.
fn check_named_columns(
    table: &TableSpec,
    gold: &crate::config::GoldSpec,
    names: &[&str],
) -> Result<()> {
    match gold
        .named_columns()
        .into_iter()
        .find(|(_, c)| !names.contains(c))
    {
        Some((key, column)) => Err(Error::Gold {
            table: gold.name.clone(),
            message: format!(
                "[tables.gold] of {}: gold.{key} names {column:?}, which silver.{} does not have (it has: {})",
                table.name,
                table.silver_name(),
                names.join(", ")
            ),
        }),
        None => Ok(()),
    }
}

fn report_for(table: &TableSpec) -> TableReport {
    let (name, kind) = match &table.gold {
        Some(g) if g.kind == GoldKind::Fact => (g.name.as_str(), "fact"),
        Some(g) => (g.name.as_str(), "dimension"),
        None => (table.name.as_str(), "none"),
    };
    TableReport::new(name, kind, Some(table.silver_name()))
}

async fn current_version(lake: &Lake, name: &str) -> Option<u64> {
    lake.delta_table(&layout::gold_table(name))
        .await
        .ok()
        .and_then(|t| t.version())
}

/// A session for gold SQL: names are case-sensitive, as the pipeline file spells them, and
/// delta-rs's planner is installed, so a query can be handed to a Delta write as its input
/// plan and stream into the table. Parquet text is read as plain strings, the type gold
/// stores: read as string views, every text value was copied back before it was written
/// (`cast_view_to_byte`), and concatenating views rebuilt them.
fn session() -> SessionContext {
    let config = SessionConfig::new()
        .set_bool("datafusion.sql_parser.enable_ident_normalization", false)
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        .set_bool("datafusion.execution.parquet.pushdown_filters", true)
        .with_target_partitions(2);
    crate::lake::delta_session(config)
}

fn df_err<'a>(
    table: &'a str,
    context: &'a str,
) -> impl Fn(datafusion::error::DataFusionError) -> Error + 'a {
    move |e| Error::DataFusion {
        table: table.to_string(),
        file: layout::gold_table(table),
        context: context.to_string(),
        source: e,
    }
}

/// The version recorded under `app_id` in a table's log, if any: from the table version's
/// records read once (a build asks several), else asked of delta-rs.
async fn recorded(table: &DeltaTable, app_id: &str, name: &str) -> Result<Option<i64>> {
    if table.version().is_none() {
        return Ok(None);
    }
    if let Some(all) = crate::lake::transactions::cached(table).await {
        return Ok(all.get(app_id).copied());
    }
    table
        .snapshot()
        .map_err(delta_err(layout::gold_table(name)))?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(delta_err(layout::gold_table(name)))
}

/// A table at a given version (or `None` before its first commit).
/// Gold dimension `dimension` (built from silver `silver`) as `owner` reads it to look it up,
/// and the silver version it has consumed; an error naming both when it was never built.
async fn built_dimension(
    lake: &Lake,
    dimension: &str,
    silver: &str,
    owner: &str,
) -> Result<(DeltaTable, i64)> {
    let dim = lake.delta_table(&layout::gold_table(dimension)).await?;
    match recorded(&dim, &layout::app_id::gold_consumed(silver), dimension).await? {
        Some(consumed) => Ok((dim, consumed)),
        None => Err(Error::Gold {
            table: owner.to_string(),
            message: format!(
                "it looks up gold.{dimension} which has not been built (see that table's error, or load silver.{silver} first)"
            ),
        }),
    }
}

async fn table_at(lake: &Lake, path: &str, version: u64) -> Result<DeltaTable> {
    deltalake::DeltaTableBuilder::from_url(lake.table_url(path)?)
        .map_err(delta_err(path))?
        .with_version(version)
        .load()
        .await
        .map_err(delta_err(path))
}

/// Where a gold table's build starts: its section of the pipeline file, the table, the record
/// of the silver version it has consumed, and the silver changes since.
struct Start<'a> {
    gold: &'a crate::config::GoldSpec,
    /// The gold table's name.
    name: &'a str,
    /// The silver table's name.
    silver: String,
    target: DeltaTable,
    /// The app id under which the table records the silver version it consumed.
    app_id: String,
    consumed: Option<i64>,
    changes: SilverChanges,
}

/// The start of `table`'s gold build (`None` when it has no gold section, or silver has no
/// table yet: nothing to build), with the versions noted in `report`.
async fn start<'a>(
    lake: &Lake,
    table: &'a TableSpec,
    report: &mut TableReport,
) -> Result<Option<Start<'a>>> {
    let Some(gold) = &table.gold else {
        return Ok(None);
    };
    let (name, silver) = (gold.name.as_str(), table.silver_name());
    let target = lake.delta_table(&layout::gold_table(name)).await?;
    let app_id = layout::app_id::gold_consumed(&silver);
    let consumed = recorded(&target, &app_id, name).await?;
    let Some(changes) = silver_changes(lake, &silver, consumed, None).await? else {
        info!("Silver has no table yet; nothing to build.");
        return Ok(None);
    };
    report.input_version = Some(changes.version);
    report.version = target.version();
    Ok(Some(Start {
        gold,
        name,
        silver,
        target,
        app_id,
        consumed,
        changes,
    }))
}

/// The silver changes a gold table has not consumed: the silver table at its latest version
/// and the data files added after version `after` (all files when `after` is `None`).
struct SilverChanges {
    table: DeltaTable,
    version: u64,
    files: Vec<String>,
}

async fn silver_changes(
    lake: &Lake,
    silver: &str,
    after: Option<i64>,
    upto: Option<u64>,
) -> Result<Option<SilverChanges>> {
    let path = layout::silver_table(silver);
    let table = match upto {
        Some(v) => table_at(lake, &path, v).await?,
        None => lake.delta_table(&path).await?,
    };
    let Some(version) = table.version() else {
        return Ok(None);
    };

    let mut files: Vec<String> = table
        .get_file_uris()
        .map_err(delta_err(layout::silver_table(silver)))?
        .collect();
    match after {
        Some(v) if v >= version as i64 => files.clear(),
        Some(v) if v >= 0 => match changed_files(&table, v as u64, version).await {
            Some(changed) => files.retain(|f| changed.contains(rewrite::file_name(f))),
            // The log since `v` was cleaned: what is not in the table at `v` is new, and when
            // that version is gone too, every file is read again (the result is the same).
            None => match table_at(lake, &path, v as u64).await {
                Ok(before) => {
                    let old: std::collections::HashSet<String> = before
                        .get_file_uris()
                        .map_err(delta_err(layout::silver_table(silver)))?
                        .collect();
                    files.retain(|f| !old.contains(f));
                }
                Err(e) => {
                    warn!(table = silver, error = %e, "Silver's log no longer reaches the version gold consumed; reading all of it.")
                }
            },
        },
        _ => {}
    }
    Ok(Some(SilverChanges {
        table,
        version,
        files,
    }))
}

/// One commit of a table's log, as far as what it changed: the names of the files it added
/// and removed, and whether it changed data (a compaction's and a vacuum's do not).
#[derive(Clone)]
struct Commit {
    adds: Vec<String>,
    removes: Vec<String>,
    data_change: bool,
    /// The only columns the commit changed in the rows it rewrote, when it names them
    /// ([`layout::CHANGED_COLUMNS`]).
    changed_columns: Option<Vec<String>>,
    /// With `changed_columns`, the added files that hold new rows ([`layout::NEW_FILES`]).
    new_files: Vec<String>,
}

/// The commits of `table` after version `after` up to `upto`; `None` when one is no longer in
/// the log (cleaned past its retention) or cannot be read.
async fn commits(table: &DeltaTable, after: u64, upto: u64) -> Option<Vec<Commit>> {
    let mut commits = Vec::new();
    for version in after + 1..=upto {
        let bytes = table.log_store().read_commit_entry(version).await.ok()??;
        let mut commit = Commit {
            adds: Vec::new(),
            removes: Vec::new(),
            data_change: false,
            changed_columns: None,
            new_files: Vec::new(),
        };
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line).ok()?;
            if let Some(info) = action.get("commitInfo") {
                let listed = |key: &str| -> Option<Vec<String>> {
                    serde_json::from_value(info.get(key)?.clone()).ok()
                };
                commit.changed_columns = listed(layout::CHANGED_COLUMNS);
                commit.new_files = (listed(layout::NEW_FILES).unwrap_or_default().iter())
                    .map(|path| rewrite::file_name(path).to_string())
                    .collect();
            }
            for kind in ["add", "remove"] {
                let Some(file) = action.get(kind) else {
                    continue;
                };
                let name = rewrite::file_name(file.get("path")?.as_str()?).to_string();
                commit.data_change |=
                    file.get("dataChange").and_then(|d| d.as_bool()) != Some(false);
                match kind {
                    "add" => commit.adds.push(name),
                    _ => commit.removes.push(name),
                }
            }
        }
        commits.push(commit);
    }
    Some(commits)
}

/// The names of the live files that hold rows added after version `after`, from the log's
/// commits up to `upto`: the files of commits that change data, and of a compaction
/// (`dataChange = false`) only when it rewrote such a file, so compacting rows gold already
/// consumed makes no work for it. `None` when a commit is no longer in the log.
async fn changed_files(
    table: &DeltaTable,
    after: u64,
    upto: u64,
) -> Option<std::collections::HashSet<String>> {
    let mut changed = std::collections::HashSet::new();
    for commit in commits(table, after, upto).await? {
        if commit.data_change || commit.removes.iter().any(|r| changed.contains(r)) {
            changed.extend(commit.adds);
        }
    }
    Some(changed)
}

/// Whether `table`'s data changed after version `after` (not only its file layout); true
/// when the log no longer says.
async fn data_changed(table: &DeltaTable, after: u64, upto: u64) -> bool {
    commits(table, after, upto)
        .await
        .is_none_or(|commits| commits.iter().any(|c| c.data_change))
}

/// Registers a Delta table in a session under `name`, optionally only some of its files.
async fn register(
    ctx: &SessionContext,
    name: &str,
    table: &DeltaTable,
    files: Option<&[String]>,
) -> Result<()> {
    let mut builder = scan(ctx, table, name)?;
    if let Some(files) = files {
        builder = builder.with_file_paths(files.iter().cloned());
    }
    let provider = builder
        .await
        .map_err(df_err(name, "reading the Delta table"))?;
    ctx.register_table(name, provider)
        .map_err(df_err(name, "registering the table"))?;
    Ok(())
}

/// The provider builder of a scan of `table` in gold's session: its object store registered
/// in `ctx`, and the session's settings applied to the scan (without the session, delta-rs
/// reads text as string views, and gold casts them back to the strings it stores).
fn scan(
    ctx: &SessionContext,
    table: &DeltaTable,
    name: &str,
) -> Result<deltalake::delta_datafusion::TableProviderBuilder> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(delta_err(layout::gold_table(name)))?;
    Ok(table.table_provider().with_session(Arc::new(ctx.state())))
}

/// A repeatable stream of scrambled numbers below `n` (xorshift), for tests that compare two
/// ways of computing the same thing on many inputs.
#[cfg(test)]
fn scrambled(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed;
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    }
}
