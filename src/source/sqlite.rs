//! The embedded SQLite source (`sqlite:PATH`): declared column types map to Arrow as the same
//! SQL Server types would, and every value is checked against its column's type as it is read.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::columns::{self, BatchBuilder, ColumnBuilder};
use super::{BatchStream, Source};
use crate::config::{TableSpec, ident::quote_ansi};
use crate::error::{Error, Result};
use crate::window::{Bound, BoundKind, Window};

/// A SQLite database file, opened read-only per operation.
pub struct SqliteSource {
    path: PathBuf,
}

impl SqliteSource {
    /// Checks that the file exists and is a SQLite database.
    pub fn open(path: &str) -> Result<Self> {
        let source = SqliteSource {
            path: PathBuf::from(path),
        };
        source.connect()?;
        Ok(source)
    }

    fn connect(&self) -> Result<Connection> {
        let unreachable = |reason: String| Error::SourceUnreachable {
            url: format!("sqlite:{}", self.path.display()),
            reason,
        };
        if !self.path.is_file() {
            return Err(unreachable("no such file".to_string()));
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| unreachable(e.to_string()))?;
        // Reading the schema fails on a file that is not a database.
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(conn)
    }

    fn read_schema(&self, table: &TableSpec) -> Result<SchemaRef> {
        let conn = self.connect()?;
        read_schema(&conn, &table.name, &self.describe())
    }
}

#[async_trait::async_trait]
impl Source for SqliteSource {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    async fn schema(&self, table: &TableSpec) -> Result<SchemaRef> {
        let this = SqliteSource {
            path: self.path.clone(),
        };
        let table = table.clone();
        blocking(move || this.read_schema(&table)).await
    }

    async fn high_watermark(&self, table: &TableSpec, kind: BoundKind) -> Result<Option<Bound>> {
        let this = SqliteSource {
            path: self.path.clone(),
        };
        let table = table.clone();
        blocking(move || {
            let conn = this.connect()?;
            let sql = format!(
                "SELECT MAX({}) FROM {}",
                quote_ansi(&table.cdc_column),
                quote_ansi(&table.name)
            );
            let context = || format!("table {}: reading MAX({})", table.name, table.cdc_column);
            conn.query_row(&sql, [], |row| Ok(bound_from_sqlite(row.get_ref(0)?, kind)))
                .map_err(|e| Error::sqlite(context(), e))?
                .map_err(|value| Error::ValueDoesNotFit {
                    table: table.name.clone(),
                    column: table.cdc_column.clone(),
                    row: "MAX".to_string(),
                    value,
                    expected: format!("{kind:?}").to_lowercase(),
                })
        })
        .await
    }

    async fn extract(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        window: Window,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let conn = self.connect()?;
        let name = table.name.clone();
        let table = table.clone();
        Ok(super::spawn_blocking_reader(&name, move |tx| {
            extract_blocking(&conn, &table, schema, window, batch_rows, tx)
        }))
    }

    async fn snapshot(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let sql = format!(
            "SELECT {} FROM {} ORDER BY {}",
            column_list(&columns),
            quote_ansi(&table.name),
            column_list(&table.keys)
        );
        self.stream(table, schema, sql, "the snapshot", batch_rows)
    }

    async fn keys(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        self.stream(table, schema, keys_sql(table), "the key list", batch_rows)
    }
}

impl SqliteSource {
    /// The rows of one parameterless query, streamed; `label` names them in errors.
    fn stream(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        sql: String,
        label: &'static str,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let conn = self.connect()?;
        let table = table.clone();
        Ok(super::spawn_blocking_reader(
            &table.name.clone(),
            move |tx| {
                read_rows(
                    &conn,
                    &table,
                    schema,
                    (&sql, Vec::new()),
                    label,
                    batch_rows,
                    tx,
                )
            },
        ))
    }
}

/// Quoted column names, comma-separated.
fn column_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| quote_ansi(n))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// The Arrow type for a SQLite declared type, read as the SQL Server type of that name.
pub fn map_type(declared: &str) -> Option<DataType> {
    let upper = declared.trim().to_ascii_uppercase();
    let (base, args) = match upper.split_once('(') {
        Some((b, rest)) => (b.trim(), rest.trim_end_matches(')').trim()),
        None => (upper.as_str(), ""),
    };
    Some(match base {
        "INT" | "MEDIUMINT" | "INT4" => DataType::Int32,
        "INTEGER" | "BIGINT" | "INT8" => DataType::Int64,
        "SMALLINT" | "INT2" => DataType::Int16,
        "TINYINT" => DataType::UInt8,
        "BIT" | "BOOLEAN" | "BOOL" => DataType::Boolean,
        "REAL" | "FLOAT" | "DOUBLE" | "DOUBLE PRECISION" => DataType::Float64,
        "DECIMAL" | "NUMERIC" => {
            let mut parts = args.split(',').map(|p| p.trim().parse::<u8>());
            let precision = match parts.next() {
                Some(Ok(p)) if (1..=38).contains(&p) => p,
                Some(_) if !args.is_empty() => return None,
                _ => 18,
            };
            let scale = match parts.next() {
                Some(Ok(s)) if s <= precision => s as i8,
                Some(_) => return None,
                None => 0,
            };
            DataType::Decimal128(precision, scale)
        }
        "MONEY" => DataType::Decimal128(19, 4),
        "DATE" => DataType::Date32,
        "TIME" => DataType::Time64(TimeUnit::Microsecond),
        "DATETIME" | "DATETIME2" | "SMALLDATETIME" | "TIMESTAMP" | "DATETIMEOFFSET" => {
            columns::utc_micros()
        }
        "TEXT" | "CHAR" | "VARCHAR" | "NCHAR" | "NVARCHAR" | "CLOB" | "NTEXT"
        | "UNIQUEIDENTIFIER" | "CHARACTER" | "VARYING CHARACTER" => DataType::Utf8,
        "BLOB" | "BINARY" | "VARBINARY" => DataType::Binary,
        _ => return None,
    })
}

fn read_schema(conn: &Connection, table: &str, source: &str) -> Result<SchemaRef> {
    let context = || format!("table {table}: reading its columns");
    let mut stmt = conn
        .prepare("SELECT name, type FROM pragma_table_info(?1)")
        .map_err(|e| Error::sqlite(context(), e))?;
    let rows = stmt
        .query_map([table], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(|e| Error::sqlite(context(), e))?;
    let mut fields = Vec::new();
    for row in rows {
        let (name, declared) = row.map_err(|e| Error::sqlite(context(), e))?;
        let data_type = map_type(&declared).ok_or_else(|| Error::UnsupportedType {
            table: table.to_string(),
            column: name.clone(),
            source_type: if declared.is_empty() {
                "(none declared)".to_string()
            } else {
                declared
            },
        })?;
        // Sources are dirty: bronze keeps every column nullable so a NULL never fails a load.
        fields.push(Field::new(name, data_type, true));
    }
    if fields.is_empty() {
        return Err(Error::UnknownTable {
            table: table.to_string(),
            source_url: source.to_string(),
        });
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The SQLite parameter for a bound, in the text layout the seed and most writers use.
fn bound_param(bound: &Bound) -> rusqlite::types::Value {
    use rusqlite::types::Value;
    match bound {
        Bound::Integer(v) => Value::Integer(*v),
        Bound::Date(d) => Value::Text(d.format("%Y-%m-%d").to_string()),
        Bound::Timestamp(_) => Value::Text(
            bound
                .as_datetime()
                .map(|dt| dt.format("%Y-%m-%d %H:%M:%S%.6f").to_string())
                .unwrap_or_default(),
        ),
    }
}

fn bound_from_sqlite(value: ValueRef<'_>, kind: BoundKind) -> Result<Option<Bound>, String> {
    let text = match value {
        ValueRef::Null => return Ok(None),
        ValueRef::Integer(i) if kind == BoundKind::Integer => return Ok(Some(Bound::Integer(i))),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => return Err(format!("{other:?}")),
    };
    kind.parse(&text).map(Some).map_err(|_| format!("{text:?}"))
}

/// Describes a value for an error message, without dumping large blobs.
fn show(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(r) => r.to_string(),
        ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(&t[..t.len().min(80)])),
        ValueRef::Blob(b) => format!("a {}-byte blob", b.len()),
    }
}

/// Appends one SQLite value to an Arrow column; on mismatch returns what was expected.
fn append(builder: &mut ColumnBuilder, value: ValueRef<'_>) -> Result<(), &'static str> {
    use ColumnBuilder as C;
    if let ValueRef::Null = value {
        builder.append_null();
        return Ok(());
    }
    match (builder, value) {
        (C::Int32(b), ValueRef::Integer(i)) => {
            b.append_value(i32::try_from(i).map_err(|_| "a 32-bit integer (INT)")?)
        }
        (C::Int32(_), _) => return Err("a 32-bit integer (INT)"),
        (C::Int64(b), ValueRef::Integer(i)) => b.append_value(i),
        (C::Int64(_), _) => return Err("a 64-bit integer (BIGINT)"),
        (C::Int16(b), ValueRef::Integer(i)) => {
            b.append_value(i16::try_from(i).map_err(|_| "a 16-bit integer (SMALLINT)")?)
        }
        (C::Int16(_), _) => return Err("a 16-bit integer (SMALLINT)"),
        (C::UInt8(b), ValueRef::Integer(i)) => {
            b.append_value(u8::try_from(i).map_err(|_| "an integer 0..255 (TINYINT)")?)
        }
        (C::UInt8(_), _) => return Err("an integer 0..255 (TINYINT)"),
        (C::Boolean(b), ValueRef::Integer(i @ (0 | 1))) => b.append_value(i == 1),
        (C::Boolean(_), _) => return Err("0 or 1 (BIT)"),
        (C::Float64(b), ValueRef::Real(r)) => b.append_value(r),
        (C::Float64(b), ValueRef::Integer(i)) => b.append_value(i as f64),
        (C::Float64(_), _) => return Err("a number (FLOAT)"),
        (C::Float32(b), ValueRef::Real(r)) => b.append_value(r as f32),
        (C::Float32(_), _) => return Err("a number (REAL)"),
        (C::Decimal(b, p, s), v) => {
            let text = match v {
                ValueRef::Integer(i) => i.to_string(),
                ValueRef::Real(r) => r.to_string(),
                ValueRef::Text(t) => std::str::from_utf8(t).map_err(|_| "a decimal")?.to_string(),
                _ => return Err("a decimal"),
            };
            let value = parse_decimal(&text, *p, *s)
                .ok_or("a decimal that fits its precision and scale")?;
            b.append_value(value)
        }
        (C::Utf8(b), ValueRef::Text(t)) => {
            b.append_value(std::str::from_utf8(t).map_err(|_| "UTF-8 text")?)
        }
        (C::Utf8(b), ValueRef::Integer(i)) => b.append_value(i.to_string()),
        (C::Utf8(b), ValueRef::Real(r)) => b.append_value(r.to_string()),
        (C::Utf8(_), _) => return Err("text"),
        (C::Binary(b), ValueRef::Blob(v)) => b.append_value(v),
        (C::Binary(b), ValueRef::Text(v)) => b.append_value(v),
        (C::Binary(_), _) => return Err("binary"),
        (C::Date32(b), ValueRef::Text(t)) => {
            let date = std::str::from_utf8(t)
                .ok()
                .and_then(crate::window::parse_date)
                .ok_or("a date YYYY-MM-DD")?;
            b.append_value(columns::days_since_epoch(date))
        }
        (C::Date32(_), _) => return Err("a date YYYY-MM-DD"),
        (C::Timestamp(b), ValueRef::Text(t)) => b.append_value(
            std::str::from_utf8(t)
                .ok()
                .and_then(columns::parse_timestamp_micros)
                .ok_or("a timestamp YYYY-MM-DD HH:MM:SS[.ffffff]")?,
        ),
        (C::Timestamp(_), _) => return Err("a timestamp YYYY-MM-DD HH:MM:SS[.ffffff]"),
        (C::Time64(b), ValueRef::Text(t)) => {
            let time = std::str::from_utf8(t)
                .ok()
                .and_then(|s| chrono::NaiveTime::parse_from_str(s, "%H:%M:%S%.f").ok())
                .ok_or("a time HH:MM:SS[.ffffff]")?;
            let micros = chrono::Timelike::num_seconds_from_midnight(&time) as i64 * 1_000_000
                + i64::from(chrono::Timelike::nanosecond(&time) / 1_000);
            b.append_value(micros)
        }
        (C::Time64(_), _) => return Err("a time HH:MM:SS[.ffffff]"),
    }
    Ok(())
}

/// Parses a decimal literal into the unscaled i128 at `scale`, refusing lost digits or overflow.
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Option<i128> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let scale = usize::try_from(scale).ok()?;
    if int.is_empty() && frac.is_empty()
        || !int.chars().chain(frac.chars()).all(|c| c.is_ascii_digit())
    {
        return None;
    }
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale {
        return None;
    }
    let mut unscaled: i128 = 0;
    let mut count = 0usize;
    for c in int
        .chars()
        .chain(frac.chars().chain(std::iter::repeat('0')).take(scale))
    {
        unscaled = unscaled
            .checked_mul(10)?
            .checked_add(i128::from(c as u8 - b'0'))?;
        if unscaled != 0 {
            count += 1;
        }
    }
    if count > usize::from(precision) {
        return None;
    }
    Some(if negative { -unscaled } else { unscaled })
}

fn extract_blocking(
    conn: &Connection,
    table: &TableSpec,
    schema: SchemaRef,
    window: Window,
    batch_rows: usize,
    tx: &tokio::sync::mpsc::Sender<Result<arrow::record_batch::RecordBatch>>,
) -> Result<()> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| quote_ansi(f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let cdc = quote_ansi(&table.cdc_column);
    // A first, whole-table window reads faster as a scan than through the watermark index
    // (decision 002, "SQLite"); `+col` keeps SQLite's planner off the index.
    let upper = if window.low.is_none() {
        format!("+{cdc}")
    } else {
        cdc.clone()
    };
    let mut sql = format!(
        "SELECT {columns} FROM {} WHERE {upper} <= ?1",
        quote_ansi(&table.name)
    );
    let mut params = vec![bound_param(&window.high)];
    if let Some(low) = &window.low {
        sql.push_str(&format!(" AND {cdc} > ?2"));
        params.push(bound_param(low));
    }
    let label = format!("window {}", window.file_stem(&table.name));
    read_rows(conn, table, schema, (&sql, params), &label, batch_rows, tx)
}

/// The keys query of `deletes = "detect"`: every key, in ascending binary order (SQLite's
/// default collation compares text bytewise, and integers by value).
pub fn keys_sql(table: &TableSpec) -> String {
    let keys = column_list(&table.keys);
    format!(
        "SELECT {keys} FROM {} ORDER BY {keys}",
        quote_ansi(&table.name)
    )
}

/// Streams the rows of one query as batches of `schema`, every value checked against its
/// column's type; `label` says in errors which rows these are (`window T_..._...`).
fn read_rows(
    conn: &Connection,
    table: &TableSpec,
    schema: SchemaRef,
    (sql, params): (&str, Vec<rusqlite::types::Value>),
    label: &str,
    batch_rows: usize,
    tx: &tokio::sync::mpsc::Sender<Result<arrow::record_batch::RecordBatch>>,
) -> Result<()> {
    let context = || format!("table {}: reading {label}", table.name);
    let mut stmt = conn.prepare(sql).map_err(|e| Error::sqlite(context(), e))?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(|e| Error::sqlite(context(), e))?;
    let key_idx: Vec<usize> = table
        .keys
        .iter()
        .filter_map(|k| schema.index_of(k).ok())
        .collect();
    let mut batch = BatchBuilder::new(&table.name, schema.clone(), batch_rows)?;
    let mut row_number = 0u64;
    while let Some(row) = rows.next().map_err(|e| Error::sqlite(context(), e))? {
        row_number += 1;
        for (i, builder) in batch.columns.iter_mut().enumerate() {
            let value = row.get_ref(i).map_err(|e| Error::sqlite(context(), e))?;
            if let Err(expected) = append(builder, value) {
                let key = key_idx
                    .iter()
                    .filter_map(|&k| {
                        Some(format!(
                            "{}={}",
                            schema.field(k).name(),
                            show(row.get_ref(k).ok()?)
                        ))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Error::ValueDoesNotFit {
                    table: table.name.clone(),
                    column: schema.field(i).name().clone(),
                    row: format!("{row_number} of {label} ({key})"),
                    value: show(value),
                    expected: expected.to_string(),
                });
            }
        }
        batch.end_row();
        if batch.rows() >= batch_rows && tx.blocking_send(Ok(batch.finish(&table.name)?)).is_err() {
            return Ok(());
        }
    }
    if batch.rows() > 0 {
        let _ = tx.blocking_send(Ok(batch.finish(&table.name)?));
    }
    Ok(())
}

/// Opens a SQLite file for writing (the seed's side), creating it.
pub fn open_for_write(path: &Path) -> Result<Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Connection::open(path).map_err(|e| Error::sqlite(format!("opening {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map_as_sql_server_types_would() {
        assert_eq!(map_type("INT"), Some(DataType::Int32));
        assert_eq!(map_type("bigint"), Some(DataType::Int64));
        assert_eq!(map_type("NVARCHAR(100)"), Some(DataType::Utf8));
        assert_eq!(
            map_type("DECIMAL(10, 2)"),
            Some(DataType::Decimal128(10, 2))
        );
        assert_eq!(map_type("NUMERIC"), Some(DataType::Decimal128(18, 0)));
        assert_eq!(map_type("DECIMAL(50,2)"), None);
        assert_eq!(map_type("DATETIME2"), Some(columns::utc_micros()));
        assert_eq!(map_type("DATE"), Some(DataType::Date32));
        assert_eq!(map_type("BIT"), Some(DataType::Boolean));
        assert_eq!(map_type("GEOGRAPHY"), None);
        assert_eq!(map_type(""), None);
    }

    #[test]
    fn decimals_parse_exactly_or_not_at_all() {
        assert_eq!(parse_decimal("12.34", 10, 2), Some(1234));
        assert_eq!(parse_decimal("-0.5", 10, 2), Some(-50));
        assert_eq!(parse_decimal("7", 10, 2), Some(700));
        assert_eq!(parse_decimal("1.230", 10, 2), Some(123));
        assert_eq!(parse_decimal("1.234", 10, 2), None, "a digit would be lost");
        assert_eq!(parse_decimal("123456789", 5, 2), None, "too many digits");
        assert_eq!(parse_decimal("abc", 10, 2), None);
    }

    #[test]
    fn values_that_do_not_fit_say_what_was_expected() {
        let mut b = ColumnBuilder::new(&DataType::Int32, 1).unwrap();
        assert_eq!(
            append(&mut b, ValueRef::Text(b"abc")),
            Err("a 32-bit integer (INT)")
        );
        assert!(append(&mut b, ValueRef::Integer(i64::from(i32::MAX) + 1)).is_err());
        assert!(append(&mut b, ValueRef::Integer(5)).is_ok());
        let mut d = ColumnBuilder::new(&DataType::Date32, 1).unwrap();
        assert!(append(&mut d, ValueRef::Text(b"2024-02-30")).is_err());
        assert!(append(&mut d, ValueRef::Text(b"2024-02-29")).is_ok());
        let mut s = ColumnBuilder::new(&DataType::Utf8, 1).unwrap();
        assert!(append(&mut s, ValueRef::Text(&[0xff, 0xfe])).is_err());
    }

    #[test]
    fn bounds_are_bound_in_the_stored_text_layout() {
        let ts = BoundKind::Timestamp.parse("2024-03-01T10:00:00.5").unwrap();
        assert_eq!(
            bound_param(&ts),
            rusqlite::types::Value::Text("2024-03-01 10:00:00.500000".into())
        );
        assert_eq!(
            bound_from_sqlite(
                ValueRef::Text(b"2024-03-01 10:00:00.5"),
                BoundKind::Timestamp
            ),
            Ok(Some(ts))
        );
        assert!(bound_from_sqlite(ValueRef::Text(b"soon"), BoundKind::Timestamp).is_err());
    }
}
