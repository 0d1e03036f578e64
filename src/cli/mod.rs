//! The command line: clap definitions and the commands; what they print is in `print`, the
//! demo in `demo`. `main.rs` only calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Pipeline;
use crate::error::{Error, Result};
use crate::lake::layout::{self, Stage};
use crate::lake::{Lake, events, watermark};
use crate::progress;
use crate::runs;
use crate::seed;
use crate::stages::new_run_id;

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

// After `out!`, which they use.
mod demo;
mod package;
mod print;

use demo::{demo, write_report};
use package::{package, serve_config};
use print::{
    print_gold, print_ingest, print_seed, print_silver, report_errors, report_gold_errors,
    report_silver_errors,
};

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
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// What `tunelake catalog` does.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum CatalogAction {
    /// Register the tables (and the catalog, schemas, grants and locations they need).
    Publish,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The stages `run` can be limited to.
impl ValueEnum for Stage {
    fn value_variants<'a>() -> &'a [Self] {
        &Stage::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Stage::Ingest => "Source tables to bronze parquet, by watermark",
            Stage::Silver => "Bronze files to cleaned silver Delta change logs, each file once",
            Stage::Gold => {
                "Silver changes to the star schema (SCD dimensions, point-in-time fact) and views"
            }
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).help(help))
    }
}

/// The commands.
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
    /// Maintain the silver and gold tables now: compact small files, vacuum removed files past
    /// their retention and clean the log past its ([maintenance] in the pipeline file; runs
    /// do this by themselves unless it is turned off there).
    Maintain {
        /// Only these source tables' silver and gold tables (default: every table, the views
        /// and the event log).
        #[arg(long = "table")]
        tables: Vec<String>,
    },
    /// Show watermarks and bronze files per table, and the latest runs.
    Status,
    /// Unity Catalog: `publish` registers every silver and gold table and view of the lake
    /// ([catalog] in the pipeline file) as an external Delta table, idempotently.
    Catalog {
        #[command(subcommand)]
        /// What to do.
        action: CatalogAction,
    },
    /// Serve the lake's tables over the PostgreSQL wire protocol (psql, DBeaver, Power BI),
    /// read-only. A password comes from TUNELAKE_SQL_PASSWORD; without one it listens on
    /// loopback only and accepts any user. TLS with TUNELAKE_SQL_TLS_CERT and _KEY (PEM).
    ServeSql {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:5432")]
        listen: String,
        /// Connections at once (0: no limit).
        #[arg(long, default_value_t = 64)]
        max_connections: usize,
    },
    /// The pipeline file: `--check` validates it against its sources without moving data
    /// (every problem at once); `--reference` prints every key with its type, default and
    /// meaning.
    Config {
        /// Check the pipeline file against the sources it reads.
        #[arg(long)]
        check: bool,
        /// Print every key of the pipeline file.
        #[arg(long, conflicts_with = "check")]
        reference: bool,
    },
    /// Serve the Azure Functions custom handler (what host.json starts) on 127.0.0.1.
    Serve {
        /// The port; the Functions host sets FUNCTIONS_CUSTOMHANDLER_PORT.
        #[arg(long, env = "FUNCTIONS_CUSTOMHANDLER_PORT", default_value_t = 8080)]
        port: u16,
    },
    /// Assemble the deployable Function App (host.json, function folders, the pipeline file,
    /// its templates and local `files:` folders, this binary) as a folder and a zip; run it
    /// from a release build for glibc 2.28 (docs/azure.md).
    Package {
        /// Where `app/` and `tunelake-functions.zip` go.
        #[arg(long, default_value = "dist")]
        out: PathBuf,
        /// The newest glibc the binary may need: the Functions images run an older one than
        /// current build machines (build as docs/azure.md shows), so a binary needing more
        /// is refused.
        #[arg(long, default_value = "2.28")]
        max_glibc: String,
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
    // No colour codes where stderr is a file or the Functions host's pipe (Application Insights
    // would store them in every line).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Run { stage, ref tables } => run_stages(&cli, stage, tables).await,
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
        Command::Maintain { ref tables } => maintain(&cli, tables).await,
        Command::Status => status(&cli).await,
        Command::Catalog {
            action: CatalogAction::Publish,
        } => {
            let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
            let lake = Lake::connect(&cli.lake).await?;
            let done =
                crate::catalog::publish(&lake, &pipeline, &crate::catalog::token_source()?).await?;
            for created in &done.created {
                out!("created {created}");
            }
            for table in &done.registered {
                out!("registered {table}");
            }
            out!(
                "{} registered, {} unchanged",
                done.registered.len(),
                done.unchanged.len()
            );
            Ok(true)
        }
        Command::ServeSql {
            ref listen,
            max_connections,
        } => {
            let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
            let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
            let options = crate::wire::Options {
                listen: listen.clone(),
                password: env("TUNELAKE_SQL_PASSWORD"),
                tls: env("TUNELAKE_SQL_TLS_CERT").zip(env("TUNELAKE_SQL_TLS_KEY")),
                memory: pipeline.settings.query_memory_mb as usize * 1_048_576,
                time: std::time::Duration::from_secs(pipeline.settings.query_timeout_seconds),
                max_connections,
            };
            crate::wire::serve(Lake::connect(&cli.lake).await?, options).await?;
            Ok(true)
        }
        Command::Config { check, reference } => config(&cli, check, reference).await,
        Command::Package {
            ref out,
            ref max_glibc,
        } => package(&cli, out, max_glibc),
        Command::Serve { port } => {
            let config = serve_config(&cli)?;
            let app = crate::functions::App::new(
                Pipeline::load_or_default(config.as_deref())?,
                Pipeline::file_in_use(config.as_deref())
                    .map_or("built in".to_string(), |p| p.display().to_string()),
                Lake::connect(&cli.lake).await?,
                cli.source.clone(),
                crate::alert::Graph::from_env()?,
            );
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

/// `tunelake run`: the whole pipeline as one flow, each table moving on as soon as it can,
/// or only `stage` for every table.
async fn run_stages(cli: &Cli, stage: Option<Stage>, tables: &[String]) -> Result<bool> {
    let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
    let tables = pipeline.select(tables)?;
    let lake = Lake::connect(&cli.lake).await?;
    let run_id = new_run_id();
    Ok(match stage {
        None => {
            let flow = runs::flow(&run_id, &cli.source, &lake, &pipeline, &tables).await?;
            if !cli.quiet {
                print_ingest(&flow.ingest);
                print_silver(&flow.silver);
                print_gold(&flow.gold);
            }
            report_errors(&flow.ingest)
                & report_silver_errors(&flow.silver)
                & report_gold_errors(&flow.gold)
        }
        Some(Stage::Ingest) => {
            let report =
                runs::ingest(&run_id, &cli.source, &lake, &pipeline, &tables, None).await?;
            if !cli.quiet {
                print_ingest(&report);
            }
            report_errors(&report)
        }
        Some(Stage::Silver) => {
            let report = runs::silver(&run_id, &lake, &pipeline, &tables).await?;
            if !cli.quiet {
                print_silver(&report);
            }
            report_silver_errors(&report)
        }
        Some(Stage::Gold) => {
            let report = runs::gold(&run_id, &lake, &pipeline, &tables).await?;
            if !cli.quiet {
                print_gold(&report);
            }
            report_gold_errors(&report)
        }
    })
}

/// `tunelake maintain`: every table of the selection maintained now, and what was done.
async fn maintain(cli: &Cli, tables: &[String]) -> Result<bool> {
    let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
    let selected = pipeline.select(tables)?;
    let lake = Lake::connect(&cli.lake).await?;
    let paths = runs::written_tables(&pipeline, &selected);
    let wanted = paths.len();
    let done = runs::maintain(
        &lake,
        &pipeline,
        paths,
        &new_run_id(),
        crate::lake::maintain::Due::Forced,
    )
    .await;
    let cleaned = runs::clean_sources(&lake, &pipeline, &selected).await;
    if !cli.quiet {
        print::maintained(&done);
        if cleaned > 0 {
            out!("Bronze: {cleaned} loaded files past clean_source_retention_days cleaned.");
        }
    }
    Ok(done.len() == wanted)
}

/// `tunelake config`: the reference, or the pipeline file checked (by itself, and with
/// `--check` against its sources).
async fn config(cli: &Cli, check: bool, reference: bool) -> Result<bool> {
    if reference {
        out!("{}", crate::config::reference::text().trim_start());
        return Ok(true);
    }
    let pipeline = Pipeline::load_or_default(cli.config.as_deref())?;
    let file = Pipeline::file_in_use(cli.config.as_deref())
        .map_or("the built-in pipeline".to_string(), |p| {
            p.display().to_string()
        });
    if !check {
        out!(
            "{file}: valid ({} tables, {} views); --check also reads the sources",
            pipeline.tables.len(),
            pipeline.views.len()
        );
        return Ok(true);
    }
    let problems = crate::stages::check::check(&pipeline, &cli.source).await;
    if problems.is_empty() {
        out!(
            "{file}: valid against its sources ({} tables)",
            pipeline.tables.len()
        );
        return Ok(true);
    }
    Err(Error::Config { file, problems })
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

fn sqlite_path(source: &str) -> Result<PathBuf> {
    source
        .strip_prefix("sqlite:")
        .map(PathBuf::from)
        .ok_or_else(|| Error::BadArgument {
            what: "--source".into(),
            message: format!("seed writes a SQLite sample source: use sqlite:PATH, not {source:?}"),
        })
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
        let files = lake.list(&layout::bronze_dir(&table.name)).await?;
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
        out!("latest runs (from {})", layout::EVENTS);
        match arrow::util::pretty::pretty_format_batches(&latest) {
            Ok(table) => out!("{table}"),
            Err(e) => eprintln!("error: cannot print the event log: {e}"),
        }
    }
    Ok(ok)
}
