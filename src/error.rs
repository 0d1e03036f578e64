//! The library's error type: every variant names the table, file, column or row it concerns.

use std::path::PathBuf;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One problem found in the pipeline file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Where in the file, e.g. `tables[2] (DimUser).keys[0]`.
    pub location: String,
    /// What is wrong, as a sentence.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// Everything that can go wrong in tunelake's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file has problems; all of them are listed.
    #[error("{file}: {} problem(s) in the pipeline file:\n  {}", problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Config {
        /// The file it concerns.
        file: String,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },

    /// A command-line or configuration value is not usable.
    #[error("bad value for {what}: {message}")]
    BadArgument {
        /// What the value is for.
        what: String,
        /// What is wrong.
        message: String,
    },

    /// The source cannot be opened.
    #[error("source {url} cannot be reached: {reason}")]
    SourceUnreachable {
        /// The URL, without secrets.
        url: String,
        /// Why.
        reason: String,
    },

    /// A table of the pipeline file is not in the source.
    #[error("table {table}: not found in the source ({source_url})")]
    UnknownTable {
        /// The table it concerns.
        table: String,
        /// The source, without secrets.
        source_url: String,
    },

    /// A column the pipeline file names is not in the table.
    #[error(
        "table {table}: column {column} named in the pipeline file is not in the source table (it has: {available})"
    )]
    UnknownColumn {
        /// The table it concerns.
        table: String,
        /// The column it concerns.
        column: String,
        /// The columns the table has.
        available: String,
    },

    /// A source column has a type tunelake cannot map to Arrow.
    #[error("table {table}, column {column}: source type {source_type} has no Arrow mapping")]
    UnsupportedType {
        /// The table it concerns.
        table: String,
        /// The column it concerns.
        column: String,
        /// The source's type name.
        source_type: String,
    },

    /// A watermark column is not an integer, a date or a timestamp.
    #[error(
        "table {table}, column {column}: the watermark column has type {data_type}; it must be an integer, a date or a timestamp"
    )]
    BadWatermarkType {
        /// The table it concerns.
        table: String,
        /// The column it concerns.
        column: String,
        /// The column's type.
        data_type: String,
    },

    /// A source value does not fit its column's type; the table stops.
    #[error("table {table}, column {column}, row {row}: value {value} does not fit {expected}")]
    ValueDoesNotFit {
        /// The table it concerns.
        table: String,
        /// The column it concerns.
        column: String,
        /// The row's position in the extract window (1-based) and its key, when known.
        row: String,
        /// The value, as text.
        value: String,
        /// The type it should fit.
        expected: String,
    },

    /// The source reader failed or panicked before the end of its window.
    #[error(
        "table {table}: the source reader stopped before the end of the window ({reason}); nothing past the watermark was committed"
    )]
    ReaderFailed {
        /// The table it concerns.
        table: String,
        /// Why.
        reason: String,
    },

    /// The source refused a query.
    #[error("table {table}: the source failed: {message}")]
    SourceQuery {
        /// The table it concerns.
        table: String,
        /// What is wrong.
        message: String,
    },

    /// A watermark file exists but cannot be read.
    #[error("watermark file {file} cannot be used: {reason}")]
    WatermarkUnreadable {
        /// The file it concerns.
        file: String,
        /// Why.
        reason: String,
    },

    /// An object-store operation on the lake failed.
    #[error("lake {path}: {source}")]
    Lake {
        /// The path it concerns.
        path: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },

    /// The lake URL cannot be used.
    #[error("lake URL {url}: {reason}")]
    LakeUrl {
        /// The URL, without secrets.
        url: String,
        /// Why.
        reason: String,
    },

    /// A parquet file cannot be read or written.
    #[error("file {file}: {source}")]
    Parquet {
        /// The file it concerns.
        file: String,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },

    /// An Arrow computation failed.
    #[error("{context}: {source}")]
    Arrow {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },

    /// The SQLite source or sample database failed.
    #[error("{context}: {source}")]
    Sqlite {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },

    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path it concerns.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A Delta table operation failed.
    #[error("Delta table {table}: {source}")]
    Delta {
        /// The table's lake path (`silver/users`, `gold/dim_user`, `_system/events`).
        table: String,
        /// The underlying error.
        #[source]
        source: deltalake::DeltaTableError,
    },

    /// A query over a table's rows failed.
    #[error("table {table}, file {file}: {context}: {source}")]
    DataFusion {
        /// The table it concerns.
        table: String,
        /// The file it concerns.
        file: String,
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: datafusion::error::DataFusionError,
    },

    /// A bronze file brings columns silver does not have and the table refuses new ones.
    #[error(
        "table {table}, file {file}: new column(s) {columns}, and schema_evolution = \"fail_on_new_columns\": the table stops here until the pipeline file takes them (another schema_evolution, or a schema_hints entry); the file stays in bronze and loads then"
    )]
    NewColumns {
        /// The table it concerns.
        table: String,
        /// The bronze file.
        file: String,
        /// The new columns, comma-separated.
        columns: String,
    },

    /// A `fail` expectation is broken; the file was not committed.
    #[error(
        "table {table}, file {file}: expectation {rule} (action fail) is broken by {rows} row(s); nothing of the file was committed"
    )]
    ExpectationFailed {
        /// The table it concerns.
        table: String,
        /// The file it concerns.
        file: String,
        /// The expectation's name.
        rule: String,
        /// How many rows break it.
        rows: u64,
    },

    /// A gold table cannot be built as the pipeline file describes it.
    #[error("gold table {table}: {message}")]
    Gold {
        /// The table it concerns.
        table: String,
        /// What is wrong.
        message: String,
    },

    /// A dimension did not commit the versions a fact resolved against; the fact commits nothing.
    #[error(
        "gold table {table}: gold.{dimension} did not commit the versions it handed over ({reason})"
    )]
    HandOver {
        /// The table it concerns.
        table: String,
        /// The dimension.
        dimension: String,
        /// Why.
        reason: String,
    },

    /// Another run holds the table's lease in this stage past the wait.
    #[error(
        "table {table}: another {stage} of this table is running ({holder}); waited {waited} s for it"
    )]
    Busy {
        /// The table it concerns.
        table: String,
        /// The stage.
        stage: String,
        /// Who holds the lease.
        holder: String,
        /// Seconds waited.
        waited: u64,
    },

    /// A background task failed or panicked.
    #[error("a background task failed: {0}")]
    Task(String),

    /// The run report cannot be made.
    #[error("run report {run_id}: {message}")]
    Report {
        /// The run.
        run_id: String,
        /// What is wrong.
        message: String,
    },
}

/// Maps delta-rs errors to [`Error::Delta`] for `table` (for `map_err`).
pub fn delta_err(table: impl std::fmt::Display) -> impl Fn(deltalake::DeltaTableError) -> Error {
    let table = table.to_string();
    move |e| Error::Delta {
        table: table.clone(),
        source: e,
    }
}

impl Error {
    /// Wraps an object-store error with the lake path it concerns.
    pub fn lake(path: impl ToString, source: object_store::Error) -> Self {
        Error::Lake {
            path: path.to_string(),
            source,
        }
    }

    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps an Arrow error with what was being done.
    pub fn arrow(context: impl ToString, source: arrow::error::ArrowError) -> Self {
        Error::Arrow {
            context: context.to_string(),
            source,
        }
    }

    /// Wraps a SQLite error with what was being done.
    pub fn sqlite(context: impl ToString, source: rusqlite::Error) -> Self {
        Error::Sqlite {
            context: context.to_string(),
            source,
        }
    }
}
