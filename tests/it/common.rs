//! Helpers shared by the integration tests: a seeded SQLite source in a temp folder, and
//! readers that count and collect what bronze holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tunelake::config::{Pipeline, Settings, TableSpec};
use tunelake::lake::Lake;
use tunelake::stages::ingest::{Ingest, IngestReport};

/// A sample source and an empty lake in a temp folder.
pub struct Fixture {
    /// Kept so the folder lives as long as the fixture.
    pub _dir: tempfile::TempDir,
    pub db: PathBuf,
    pub lake: PathBuf,
}

impl Fixture {
    pub fn seeded(scale: f64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("source.db");
        tunelake::seed::create(&db, scale, 7).unwrap();
        let lake = dir.path().join("lake");
        Fixture {
            _dir: dir,
            db,
            lake,
        }
    }

    pub fn source_url(&self) -> String {
        format!("sqlite:{}", self.db.display())
    }

    pub fn sql(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(&self.db).unwrap()
    }

    /// A count from any SQLite file.
    pub fn count_in(db: &Path, sql: &str) -> u64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    pub fn count(&self, sql: &str) -> u64 {
        self.sql()
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    }

    pub fn scalar(&self, sql: &str) -> String {
        self.sql()
            .query_row(sql, [], |r| r.get::<_, String>(0))
            .unwrap()
    }

    pub async fn ingest(&self, tables: &[&str], from: Option<&str>) -> IngestReport {
        self.ingest_with(tables, from, Settings::default()).await
    }

    pub async fn ingest_with(
        &self,
        tables: &[&str],
        from: Option<&str>,
        settings: Settings,
    ) -> IngestReport {
        let pipeline =
            Pipeline::parse(tunelake::config::DEFAULT_PIPELINE, "pipeline.toml").unwrap();
        let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let specs = pipeline.select(&names).unwrap();
        self.ingest_specs(&specs, from, settings).await
    }

    pub async fn ingest_specs(
        &self,
        specs: &[TableSpec],
        from: Option<&str>,
        settings: Settings,
    ) -> IngestReport {
        // The shipped pipeline's sources: this fixture's database as the default one, and
        // its named ones (the reference files) as the pipeline file gives them.
        let pipeline =
            Pipeline::parse(tunelake::config::DEFAULT_PIPELINE, "pipeline.toml").unwrap();
        let lake = Lake::open(self.lake.to_str().unwrap()).unwrap();
        let run_id = tunelake::stages::new_run_id();
        let mut tables = Vec::new();
        for (name, source) in tunelake::source::open_for(&pipeline, &self.source_url(), specs).await
        {
            let group: Vec<TableSpec> =
                specs.iter().filter(|t| t.source == name).cloned().collect();
            let report = Ingest::new(source.unwrap(), lake.clone(), settings.clone(), &run_id)
                .with_from(from.map(String::from))
                .run(&group)
                .await;
            tables.extend(report.tables);
        }
        tables.sort_by_key(|r| specs.iter().position(|t| t.name == r.table));
        IngestReport { run_id, tables }
    }

    pub fn bronze_files(&self, table: &str) -> Vec<PathBuf> {
        parquet_files(&self.lake.join("bronze").join(table))
    }

    pub fn watermark(&self, table: &str) -> Option<serde_json::Value> {
        let path = self.lake.join(format!("bronze/_watermarks/{table}.json"));
        std::fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }
}

pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "parquet"));
    files.sort();
    files
}

pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Number of rows per value of an integer key column across files (a value > 1 is a duplicate).
pub fn key_counts(files: &[PathBuf], key: &str) -> HashMap<i64, u32> {
    let mut counts = HashMap::new();
    for f in files {
        for batch in read_parquet(f) {
            let col = batch.column_by_name(key).unwrap();
            let values: Vec<i64> = match col.data_type() {
                arrow::datatypes::DataType::Int32 => col
                    .as_primitive::<Int32Type>()
                    .iter()
                    .map(|v| v.unwrap() as i64)
                    .collect(),
                _ => col
                    .as_primitive::<Int64Type>()
                    .iter()
                    .map(|v| v.unwrap())
                    .collect(),
            };
            for v in values {
                *counts.entry(v).or_insert(0) += 1;
            }
        }
    }
    counts
}

pub fn rows(files: &[PathBuf]) -> u64 {
    files
        .iter()
        .flat_map(|f| read_parquet(f))
        .map(|b| b.num_rows() as u64)
        .sum()
}

/// Rows of the files whose window starts at `low_token`.
pub fn window_files(files: &[PathBuf], table: &str, low_token: &str) -> Vec<PathBuf> {
    files
        .iter()
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{table}_{low_token}_"))
        })
        .cloned()
        .collect()
}

pub fn null_count(files: &[PathBuf], column: &str) -> usize {
    files
        .iter()
        .flat_map(|f| read_parquet(f))
        .map(|b| b.column_by_name(column).unwrap().null_count())
        .sum()
}
