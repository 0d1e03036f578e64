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
    #[error("{file}: {} problem(s) in the pipeline file:\n  {}", problems.len(), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Config {
        file: String,
        problems: Vec<ConfigProblem>,
    },

    #[error("bad value for {what}: {message}")]
    BadArgument { what: String, message: String },

    #[error("source {url} cannot be reached: {reason}")]
    SourceUnreachable { url: String, reason: String },

    #[error("table {table}: not found in the source ({source_url})")]
    UnknownTable { table: String, source_url: String },

    #[error(
        "table {table}: column {column} named in the pipeline file is not in the source table (it has: {available})"
    )]
    UnknownColumn {
        table: String,
        column: String,
        available: String,
    },

    #[error("table {table}, column {column}: source type {source_type} has no Arrow mapping")]
    UnsupportedType {
        table: String,
        column: String,
        source_type: String,
    },

    #[error(
        "table {table}, column {column}: the watermark column has type {data_type}; it must be an integer, a date or a timestamp"
    )]
    BadWatermarkType {
        table: String,
        column: String,
        data_type: String,
    },

    #[error("table {table}, column {column}, row {row}: value {value} does not fit {expected}")]
    ValueDoesNotFit {
        table: String,
        column: String,
        /// The row's position in the extract window (1-based) and its key, when known.
        row: String,
        value: String,
        expected: String,
    },

    #[error(
        "table {table}: the source reader stopped before the end of the window ({reason}); nothing past the watermark was committed"
    )]
    ReaderFailed { table: String, reason: String },

    #[error("table {table}: the source failed: {message}")]
    SourceQuery { table: String, message: String },

    #[error("watermark file {file} cannot be used: {reason}")]
    WatermarkUnreadable { file: String, reason: String },

    #[error("lake {path}: {source}")]
    Lake {
        path: String,
        #[source]
        source: object_store::Error,
    },

    #[error("lake URL {url}: {reason}")]
    LakeUrl { url: String, reason: String },

    #[error("file {file}: {source}")]
    Parquet {
        file: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    #[error("{context}: {source}")]
    Sqlite {
        context: String,
        #[source]
        source: rusqlite::Error,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("Delta table {table}: {source}")]
    Delta {
        /// The table's lake path (`silver/users`, `gold/dim_user`, `_system/events`).
        table: String,
        #[source]
        source: deltalake::DeltaTableError,
    },

    #[error("table {table}, file {file}: {context}: {source}")]
    DataFusion {
        table: String,
        file: String,
        context: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },

    #[error(
        "table {table}, file {file}: expectation {rule} (action fail) is broken by {rows} row(s); nothing of the file was committed"
    )]
    ExpectationFailed {
        table: String,
        file: String,
        rule: String,
        rows: u64,
    },

    #[error("gold table {table}: {message}")]
    Gold { table: String, message: String },

    #[error(
        "gold table {table}: gold.{dimension} did not commit the versions it handed over ({reason})"
    )]
    HandOver {
        table: String,
        dimension: String,
        reason: String,
    },

    #[error(
        "table {table}: another {stage} of this table is running ({holder}); waited {waited} s for it"
    )]
    Busy {
        table: String,
        stage: String,
        holder: String,
        waited: u64,
    },

    #[error("a background task failed: {0}")]
    Task(String),

    #[error("run report {run_id}: {message}")]
    Report { run_id: String, message: String },
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
