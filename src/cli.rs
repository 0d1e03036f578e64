//! The command line: clap definitions and what each command prints. `main.rs` only calls [`main`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Pipeline;
use crate::error::{Error, Result};
use crate::lake::{Lake, bronze_dir, events, watermark};
use crate::progress;
use crate::runs;
use crate::seed;
use crate::stages::gold::GoldReport;
use crate::stages::ingest::IngestReport;
use crate::stages::silver::SilverReport;
use crate::stages::{Status, new_run_id};

/// `println!` that ends the process quietly when stdout is closed (`tunelake sql ... | head`)
/// instead of panicking; the work the output reports on is already done.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// tunelake: a serverless lakehouse pipeline for music-streaming data.
#[derive(Debug, Parser)]
#[command(version, about, max_term_width = 100)]
pub struct Cli {
    /// The pipeline file (default: ./pipeline.toml if present, else the built-in one).
    #[arg(long, global = true, env = "TUNELAKE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The source: sqlite:PATH, files:DIR, files:https://..., or an ADO connection string.
    #[arg(
        long,
        global = true,
        env = "TUNELAKE_SOURCE",
        default_value = "sqlite:source.db",
        hide_env_values = true
    )]
    pub source: String,
    /// The lake: a folder, file://, abfss://container@account.dfs.core.windows.net/path or az://container/path.
    #[arg(long, global = true, env = "TUNELAKE_LAKE", default_value = "lake")]
    pub lake: String,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Print only errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The stages `run` can be limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Stage {
    /// Source tables to bronze parquet, by watermark.
    Ingest,
    /// Bronze files to cleaned silver Delta change logs, each file once.
    Silver,
    /// Silver changes to the star schema (SCD dimensions, point-in-time fact) and views.
    Gold,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seed a fresh sample source, run the pipeline, apply a change batch, run again, summarize.
    Demo {
        /// Folder for the demo's source database and lake (recreated).
        #[arg(long, default_value = "tunelake-demo")]
        dir: PathBuf,
        /// Data size: 1 = 100k users, 10k artists, 100k tracks, 1M streams.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Random seed of the sample data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Create the sample source database (sqlite:PATH), or apply one change batch to it.
    Seed {
        /// Data size: 1 = 100k users, 10k artists, 100k tracks, 1M streams.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        /// Random seed of the sample data.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Apply one batch of updates, new rows and new streams with newer timestamps.
        #[arg(long)]
        incremental: bool,
    },
    /// Run the pipeline, or one stage of it, for all tables or some.
    Run {
        /// Only this stage.
        #[arg(long, value_enum)]
        stage: Option<Stage>,
        /// Only these tables (repeatable).
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Ingest source tables to bronze; with --from, backfill without moving watermarks back.
    Ingest {
        /// Only these tables (repeatable).
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Backfill: re-extract rows with watermark > FROM (a date, timestamp or integer).
        #[arg(long)]
        from: Option<String>,
    },
    /// Full refresh of one table: reset its watermark, empty its silver and gold tables as
    /// new Delta versions (time travel keeps the old rows until vacuum), and run it again.
    /// Without --yes, says what would be discarded and changes nothing.
    Refresh {
        /// The source table, as the pipeline file names it.
        #[arg(long = "table")]
        table: String,
        /// Do it: without this, only what would be discarded is printed.
        #[arg(long)]
        yes: bool,
    },
    /// Show watermarks and bronze files per table, and the latest runs.
    Status,
    /// Serve the Azure Functions custom handler (what host.json starts) on 127.0.0.1.
    Serve {
        /// The port; the Functions host sets FUNCTIONS_CUSTOMHANDLER_PORT.
        #[arg(long, env = "FUNCTIONS_CUSTOMHANDLER_PORT", default_value_t = 8080)]
        port: u16,
    },
    /// Assemble the deployable Function App (host.json, function folders, this binary) as a
    /// folder and a zip; run it from the release build for Linux.
    Package {
        /// Where `app/` and `tunelake-functions.zip` go.
        #[arg(long, default_value = "dist")]
        out: PathBuf,
    },
    /// Write the HTML report of a run (the latest by default): lineage with rows and times,
    /// data quality per expectation, dimension versions, streams per day, watermarks.
    Report {
        /// The run id (`tunelake status` lists them); default: the latest run.
        #[arg(long = "run")]
        run_id: Option<String>,
        /// Where the page goes.
        #[arg(long, default_value = "tunelake-report.html")]
        out: PathBuf,
    },
    /// Run a read-only SQL query over silver.*, gold.* and system.events.
    Sql {
        /// The query, e.g. "SELECT country, count(*) FROM silver.users GROUP BY 1".
        query: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = crate::query::Format::Table)]
        format: crate::query::Format,
    },
}

/// Parses the command line, runs it, and turns the outcome into the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cli: &Cli) {
    // The Delta kernel logs an ERROR for every table that does not exist yet; that is
    // the normal first run, not an error of ours.
    let default = if cli.quiet {
        "error,buoyant_kernel::snapshot=off,deltalake_core::operations::merge=error"
    } else {
        "warn,buoyant_kernel::snapshot=off,deltalake_core::operations::merge=error"
    };
    let progress = progress_mode(cli);
    let default = match progress {
        Some(progress::Mode::Json) => format!("{default},tunelake::progress=info"),
        _ => default.to_string(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    if let Some(mode) = progress {
        progress::install(mode);
    }
}

/// Progress for the long commands: JSON log lines with `--log-format json`, bars when both
/// stdout and stderr are a terminal, plain lines otherwise; none with `--quiet` (which
/// promises errors only) and none for the others (`serve` in particular answers the
/// Functions host and must not print per table).
fn progress_mode(cli: &Cli) -> Option<progress::Mode> {
    use std::io::IsTerminal as _;
    let long = matches!(
        cli.command,
        Command::Demo { .. } | Command::Seed { .. } | Command::Run { .. } | Command::Ingest { .. }
    );
    if cli.quiet || !long {
        return None;
    }
    Some(match cli.log_format {
        LogFormat::Json => progress::Mode::Json,
        LogFormat::Text if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() => {
            progress::Mode::Bars
        }
        LogFormat::Text => progress::Mode::Lines,
    })
}

/// stderr for logs, written with the progress bars cleared so a line does not tear them.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        progress::suspend(|| std::io::stderr().lock().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Runs a parsed command; `Ok(false)` means some table failed (already reported).
pub async fn run(cli: Cli) -> Result<bool> {
    match cli.command {
        Command::Demo {
            ref dir,
            scale,
            seed,
        } => demo(&cli, dir, scale, seed).await,
        Command::Seed {
            scale,
            seed,
            incremental,
        } => {
            let path = sqlite_path(&cli.source)?;
            let report = if incremental {
                seed::apply_changes(&path, seed)?
            } else {
                seed::create(&path, scale, seed)?
            };
            if !cli.quiet {
                print_seed(&report, &cli.source, incremental);
            }
            Ok(true)
        }
        Command::Run { stage, ref tables } => {
            let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
            let tables = pipeline.select(tables)?;
            let lake = Lake::connect(&cli.lake).await?;
            let run_id = new_run_id();
            let mut ok = true;
            if stage.is_none() {
                let flow = runs::flow(&run_id, &cli.source, &lake, &pipeline, &tables).await?;
                if !cli.quiet {
                    print_ingest(&flow.ingest);
                    print_silver(&flow.silver);
                    print_gold(&flow.gold);
                }
                return Ok(report_errors(&flow.ingest)
                    & report_silver_errors(&flow.silver)
                    & report_gold_errors(&flow.gold));
            }
            if stage == Some(Stage::Ingest) {
                let report =
                    runs::ingest(&run_id, &cli.source, &lake, &pipeline, &tables, None).await?;
                if !cli.quiet {
                    print_ingest(&report);
                }
                ok &= report_errors(&report);
            }
            if stage == Some(Stage::Silver) {
                let report = runs::silver(&run_id, &lake, &pipeline, &tables).await?;
                if !cli.quiet {
                    print_silver(&report);
                }
                ok &= report_silver_errors(&report);
            }
            if stage == Some(Stage::Gold) {
                let report = runs::gold(&run_id, &lake, &pipeline, &tables).await?;
                if !cli.quiet {
                    print_gold(&report);
                }
                ok &= report_gold_errors(&report);
            }
            Ok(ok)
        }
        Command::Ingest {
            ref tables,
            ref from,
        } => {
            let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
            let tables = pipeline.select(tables)?;
            let lake = Lake::connect(&cli.lake).await?;
            let report = runs::ingest(
                &new_run_id(),
                &cli.source,
                &lake,
                &pipeline,
                &tables,
                from.clone(),
            )
            .await?;
            if !cli.quiet {
                print_ingest(&report);
            }
            Ok(report_errors(&report))
        }
        Command::Refresh { ref table, yes } => refresh(&cli, table, yes).await,
        Command::Status => status(&cli).await,
        Command::Package { ref out } => {
            let binary = std::env::current_exe().map_err(|e| Error::io("the running binary", e))?;
            let zip = crate::functions::package::build(out, &binary)?;
            if !cli.quiet {
                let size = std::fs::metadata(&zip).map(|m| m.len()).unwrap_or(0);
                out!(
                    "Packaged {} ({:.1} MB) and {}/app/:",
                    zip.display(),
                    size as f64 / 1_048_576.0,
                    out.display()
                );
                for (name, _) in crate::functions::package::FILES {
                    out!("  {name}");
                }
                out!(
                    "  {} (from {})",
                    crate::functions::package::EXECUTABLE,
                    binary.display()
                );
                out!(
                    "Deploy: az functionapp deployment source config-zip -g <group> -n <app> --src {}",
                    zip.display()
                );
            }
            Ok(true)
        }
        Command::Serve { port } => {
            let app = crate::functions::App {
                pipeline: Pipeline::load_or_default(cli.config.as_deref())?,
                lake: Lake::connect(&cli.lake).await?,
                source_url: cli.source.clone(),
                graph: crate::alert::Graph::from_env()?,
            };
            crate::functions::serve(app, port).await?;
            Ok(true)
        }
        Command::Report {
            ref run_id,
            ref out,
        } => {
            let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
            let lake = Lake::connect(&cli.lake).await?;
            let report = write_report(&lake, &pipeline, run_id.as_deref(), out).await?;
            if !cli.quiet {
                out!(
                    "Wrote the report of run {} ({} tables) to {}",
                    report.run_id,
                    report.events.len(),
                    out.display()
                );
            }
            Ok(true)
        }
        Command::Sql { ref query, format } => {
            let lake = Lake::connect(&cli.lake).await?;
            let batches = crate::query::run(&lake, query).await?;
            out!("{}", crate::query::render(&batches, format)?);
            Ok(true)
        }
    }
}

/// `tunelake refresh`: what would go, and with `--yes` the refresh and a run of the tables.
async fn refresh(cli: &Cli, table: &str, yes: bool) -> Result<bool> {
    use crate::stages::refresh;
    let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
    let spec = pipeline.select(&[table.to_string()])?.remove(0);
    let lake = Lake::connect(&cli.lake).await?;
    let plan = refresh::plan(&lake, &pipeline, &spec).await?;
    out!(
        "Refreshing {} {}: watermark {} reset, {} bronze file(s) moved to bronze/_refreshed/{}/",
        plan.table,
        if yes { "now" } else { "would discard" },
        plan.watermark.as_deref().unwrap_or("(none)"),
        plan.bronze_files,
        plan.table
    );
    for e in &plan.emptied {
        out!(
            "  {:<22} {:>10} rows emptied{}",
            e.table,
            e.rows,
            if e.history > 0 {
                format!(
                    ", {} of them closed SCD2 versions: history the source may no longer hold",
                    e.history
                )
            } else {
                String::new()
            }
        );
    }
    out!("  then runs again: {}", plan.rerun.join(", "));
    if !yes {
        eprintln!("Nothing was changed. Run again with --yes to refresh.");
        return Ok(false);
    }
    let run_id = new_run_id();
    let tables = refresh::reset(&lake, &pipeline, &spec, &run_id).await?;
    let flow = runs::flow(&run_id, &cli.source, &lake, &pipeline, &tables).await?;
    if !cli.quiet {
        print_ingest(&flow.ingest);
        print_silver(&flow.silver);
        print_gold(&flow.gold);
    }
    Ok(report_errors(&flow.ingest)
        & report_silver_errors(&flow.silver)
        & report_gold_errors(&flow.gold))
}

fn report_gold_errors(report: &GoldReport) -> bool {
    for t in report.tables.iter().filter(|t| t.status == Status::Failed) {
        eprintln!(
            "error: gold {} failed: {}",
            t.table,
            t.error.as_deref().unwrap_or("unknown error")
        );
    }
    !report.failed()
}

fn print_gold(report: &GoldReport) {
    out!("gold run {}", report.run_id);
    out!(
        "  {:<18} {:<9} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "table",
        "kind",
        "status",
        "rows in",
        "inserted",
        "updated",
        "closed",
        "dropped",
        "version",
        "seconds"
    );
    for t in &report.tables {
        out!(
            "  {:<18} {:<9} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7.2}",
            t.table,
            t.kind,
            t.status.to_string(),
            t.rows_in,
            t.inserted,
            t.updated,
            t.closed,
            t.deleted,
            t.version.map_or_else(|| "-".to_string(), |v| v.to_string()),
            t.seconds
        );
        for (sk, n) in t.unknown.iter().filter(|(_, n)| *n > 0) {
            out!(
                "  {:<18}   {n} new row(s) with {sk} = -1 (no version valid at their time)",
                ""
            );
        }
    }
}

fn report_silver_errors(report: &SilverReport) -> bool {
    for t in &report.tables {
        if let Some(e) = &t.error {
            eprintln!("error: silver of {} failed: {e}", t.table);
        }
        for (file, reason) in &t.quarantined_files {
            eprintln!(
                "error: {file} is not readable parquet and was moved to bronze/_quarantine/: {reason}"
            );
        }
    }
    !report.failed()
}

fn print_silver(report: &SilverReport) {
    out!("silver run {}", report.run_id);
    out!(
        "  {:<10} {:<7} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "table",
        "status",
        "files",
        "rows in",
        "rows out",
        "dropped",
        "dupes",
        "rescued",
        "version",
        "seconds"
    );
    for t in &report.tables {
        out!(
            "  {:<10} {:<7} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8} {:>7} {:>7.2}",
            t.table,
            t.status.to_string(),
            t.files,
            t.counts.rows_in,
            t.counts.rows_out,
            t.counts.rows_dropped,
            t.counts.rows_duplicate,
            t.counts.rows_rescued,
            t.version.map_or_else(|| "-".to_string(), |v| v.to_string()),
            t.seconds
        );
        for (rule, rows) in &t.counts.expectations {
            out!("  {:<10}   expectation {rule}: {rows} row(s) broke it", "");
        }
    }
}

fn sqlite_path(source: &str) -> Result<PathBuf> {
    source
        .strip_prefix("sqlite:")
        .map(PathBuf::from)
        .ok_or_else(|| Error::BadArgument {
            what: "--source".into(),
            message: format!("seed writes a SQLite sample source: use sqlite:PATH, not {source:?}"),
        })
}

fn report_errors(report: &IngestReport) -> bool {
    for t in report.tables.iter().filter(|t| t.status == Status::Failed) {
        eprintln!(
            "error: ingest of {} failed: {}",
            t.table,
            t.error.as_deref().unwrap_or("unknown error")
        );
    }
    !report.failed()
}

fn print_seed(report: &seed::SeedReport, source: &str, incremental: bool) {
    out!(
        "{} {source} in {:.1} s",
        if incremental {
            "Applied one change batch to"
        } else {
            "Seeded"
        },
        report.seconds
    );
    out!("  {:<12} {:>10} {:>10}", "table", "inserted", "updated");
    for (table, inserted, updated) in &report.tables {
        out!("  {table:<12} {inserted:>10} {updated:>10}");
    }
}

fn print_ingest(report: &IngestReport) {
    out!("ingest run {}", report.run_id);
    out!(
        "  {:<12} {:<7} {:>10} {:>5} {:>8} {:>7}  window (low, high]",
        "table",
        "status",
        "rows",
        "files",
        "MB",
        "seconds"
    );
    for t in &report.tables {
        let window = t
            .window
            .as_ref()
            .map(|(low, high)| format!("({}, {high}]", low.as_deref().unwrap_or("start")))
            .unwrap_or_else(|| "-".to_string());
        out!(
            "  {:<12} {:<7} {:>10} {:>5} {:>8.1} {:>7.2}  {window}",
            t.table,
            t.status.to_string(),
            t.rows,
            t.files.len(),
            t.bytes as f64 / 1_048_576.0,
            t.seconds
        );
    }
    out!(
        "  {:<12} {:<7} {:>10} {:>5} {:>8.1}",
        "total",
        if report.failed() { "FAILED" } else { "ok" },
        report.rows(),
        report.tables.iter().map(|t| t.files.len()).sum::<usize>(),
        report.tables.iter().map(|t| t.bytes).sum::<u64>() as f64 / 1_048_576.0,
    );
}

async fn status(cli: &Cli) -> Result<bool> {
    let lake = Lake::connect(&cli.lake).await?;
    let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
    out!("lake {}", lake.url());
    out!(
        "  {:<12} {:<18} {:<28} {:>6} {:>10}  last run",
        "table",
        "watermark column",
        "watermark",
        "files",
        "bronze MB"
    );
    let stored = watermark::read_all(&lake).await?;
    let mut ok = true;
    for table in &pipeline.tables {
        let files = lake.list(&bronze_dir(&table.name)).await?;
        let parquet: Vec<_> = files
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .collect();
        let bytes: u64 = parquet.iter().map(|m| m.size).sum();
        let (value, run) = match stored.iter().find(|(t, _)| t == &table.name) {
            None => ("(never extracted)".to_string(), String::new()),
            Some((_, Ok(w))) => (
                w.value.clone(),
                format!(
                    "{} ({} rows, {})",
                    w.run_id,
                    w.rows,
                    w.at.format("%Y-%m-%d %H:%M:%S")
                ),
            ),
            Some((_, Err(e))) => {
                ok = false;
                ("UNREADABLE".to_string(), e.clone())
            }
        };
        out!(
            "  {:<12} {:<18} {:<28} {:>6} {:>10.1}  {run}",
            table.name,
            table.cdc_column,
            value,
            parquet.len(),
            bytes as f64 / 1_048_576.0
        );
    }
    out!(
        "  {:<18} {:<9} {:>7}  consumed",
        "gold table",
        "kind",
        "version"
    );
    for g in crate::stages::gold::state(&lake, &pipeline).await? {
        let consumed = match (&g.source, g.consumed) {
            (Some(s), Some(v)) => format!("silver.{s} up to version {v}"),
            (Some(s), None) => format!("nothing of silver.{s} yet"),
            (None, _) => "rebuilt after gold changes".to_string(),
        };
        out!(
            "  {:<18} {:<9} {:>7}  {consumed}",
            g.table,
            g.kind,
            g.version.map_or_else(|| "-".to_string(), |v| v.to_string()),
        );
    }
    let latest = events::latest(&lake, 20).await?;
    if !latest.is_empty() {
        out!("latest runs (from {})", events::PATH);
        match arrow::util::pretty::pretty_format_batches(&latest) {
            Ok(table) => out!("{table}"),
            Err(e) => eprintln!("error: cannot print the event log: {e}"),
        }
    }
    Ok(ok)
}

/// What the demo shows of gold: checks a data engineer would run first, then the views.
const DEMO_QUERIES: [(&str, &str); 5] = [
    (
        "Dimensions: one current version per key, every version with a unique surrogate key",
        "SELECT 'dim_user' AS dimension, count(*) AS versions, count(DISTINCT user_id) AS keys, \
           sum(CASE WHEN is_current THEN 1 ELSE 0 END) AS current, count(DISTINCT user_sk) AS surrogate_keys \
         FROM gold.dim_user WHERE user_sk > 0 \
         UNION ALL SELECT 'dim_track', count(*), count(DISTINCT track_id), sum(CASE WHEN is_current THEN 1 ELSE 0 END), count(DISTINCT track_sk) \
         FROM gold.dim_track WHERE track_sk > 0 \
         UNION ALL SELECT 'dim_artist', count(*), count(DISTINCT artist_id), sum(CASE WHEN is_current THEN 1 ELSE 0 END), count(DISTINCT artist_sk) \
         FROM gold.dim_artist WHERE artist_sk > 0 ORDER BY dimension",
    ),
    (
        "One user's history (SCD2): the second run closed a version and opened the next",
        "SELECT user_sk, user_id, user_name, country, subscription_type, end_date, valid_from, valid_to, is_current \
         FROM gold.dim_user WHERE user_id = (SELECT min(user_id) FROM gold.dim_user WHERE NOT is_current) \
         ORDER BY valid_from",
    ),
    (
        "fact_stream: streams point at the user version valid when they were played (-1: no such user)",
        "SELECT count(*) AS streams, count(DISTINCT f.stream_id) AS distinct_ids, \
           sum(CASE WHEN f.user_sk = -1 THEN 1 ELSE 0 END) AS unknown_user, \
           sum(CASE WHEN f.user_sk <> -1 AND u.valid_from <= f.stream_timestamp \
                     AND (u.valid_to IS NULL OR f.stream_timestamp < u.valid_to) THEN 1 ELSE 0 END) AS user_version_valid_at_play, \
           sum(CASE WHEN f.user_sk <> -1 AND NOT u.is_current THEN 1 ELSE 0 END) AS on_a_past_version \
         FROM gold.fact_stream f LEFT JOIN gold.dim_user u ON f.user_sk = u.user_sk",
    ),
    (
        "gold.top_tracks_per_day (templates/top_tracks_per_day.sql.j2), the latest day",
        "SELECT * FROM gold.top_tracks_per_day \
         WHERE date_key = (SELECT max(date_key) FROM gold.top_tracks_per_day) ORDER BY position LIMIT 5",
    ),
    (
        "gold.stream_details (templates/star_join.sql.j2), a sample",
        "SELECT stream_id, stream_timestamp, user_name, country, subscription_type, track_name, artist_name, device_type \
         FROM gold.stream_details ORDER BY stream_id DESC LIMIT 5",
    ),
];

/// One demo round: the whole pipeline as one run, each stage printed; false when a table failed.
async fn demo_round(run_id: &str, source: &str, lake: &Lake, pipeline: &Pipeline) -> Result<bool> {
    let flow = runs::flow(run_id, source, lake, pipeline, &pipeline.tables).await?;
    print_ingest(&flow.ingest);
    print_silver(&flow.silver);
    print_gold(&flow.gold);
    Ok(report_errors(&flow.ingest)
        & report_silver_errors(&flow.silver)
        & report_gold_errors(&flow.gold))
}

/// Builds the report of a run and writes it to `out`.
async fn write_report(
    lake: &Lake,
    pipeline: &Pipeline,
    run_id: Option<&str>,
    out: &Path,
) -> Result<crate::report::Report> {
    let report = crate::report::build(lake, pipeline, run_id).await?;
    let html = crate::report::render(&report)?;
    std::fs::write(out, html).map_err(|e| Error::io(out, e))?;
    Ok(report)
}

async fn demo(cli: &Cli, dir: &Path, scale: f64, seed_value: u64) -> Result<bool> {
    let started = Instant::now();
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let db = dir.join("source.db");
    let source = format!("sqlite:{}", db.display());
    let lake_path = dir.join("lake").display().to_string();
    let lake = Lake::open(&lake_path)?;
    let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;

    out!("== 1. Seed a sample source (scale {scale})");
    print_seed(&seed::create(&db, scale, seed_value)?, &source, false);
    out!("\n== 2. First run: everything up to the current high watermark");
    let first_run = new_run_id();
    let first_ok = demo_round(&first_run, &source, &lake, &pipeline).await?;
    out!("\n== 3. The source changes: updates, new users, new streams, a deleted user");
    print_seed(&seed::apply_changes(&db, seed_value)?, &source, true);
    let deleted = seed::delete_user(&db)?;
    if let Some(id) = deleted {
        out!("  and user {id} is deleted (DimUser has deletes = \"detect\")");
    }
    out!(
        "\n== 4. Second run: only the rows past each watermark, only the new bronze files, only the changed keys"
    );
    let second_run = new_run_id();
    let second_ok = demo_round(&second_run, &source, &lake, &pipeline).await?;
    out!("\n== 5. A rerun with nothing new writes nothing and moves no watermark");
    let third_run = new_run_id();
    let third_ok = demo_round(&third_run, &source, &lake, &pipeline).await?;
    out!("\n== 6. What gold holds");
    for (title, sql) in DEMO_QUERIES {
        out!("\n{title}");
        match crate::query::run(&lake, sql).await {
            Ok(batches) => out!(
                "{}",
                crate::query::render(&batches, crate::query::Format::Table)?
            ),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    if let Some(id) = deleted {
        out!(
            "\nUser {id}, deleted from the source: its history stays, its last version closed at the delete"
        );
        let sql = format!(
            "SELECT user_sk, user_id, user_name, country, valid_from, valid_to, is_current \
             FROM gold.dim_user WHERE user_id = {id} ORDER BY valid_from"
        );
        match crate::query::run(&lake, &sql).await {
            Ok(batches) => out!(
                "{}",
                crate::query::render(&batches, crate::query::Format::Table)?
            ),
            Err(e) => eprintln!("error: {e}"),
        }
    }
    let page = dir.join("report.html");
    write_report(&lake, &pipeline, Some(&second_run), &page).await?;
    out!(
        "\n== 7. The report of the second run: {}\n   (any run: tunelake --lake {lake_path} report --run <id>; the first run was {first_run})",
        page.display()
    );
    out!(
        "\nDone in {:.1} s. Source: {source}  Lake: {lake_path}\nLook around: tunelake --lake {lake_path} status\n             tunelake --lake {lake_path} sql \"SELECT * FROM gold.stream_details LIMIT 10\"",
        started.elapsed().as_secs_f64()
    );
    Ok(first_ok & second_ok & third_ok)
}
