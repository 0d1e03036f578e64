//! SQL Server / Azure SQL through tiberius: ADO connection strings, SQL logins and Entra ID
//! tokens (managed identity, workload identity, Azure CLI), generated T-SQL and type mapping.
//!
//! No server runs on the development machines, so everything that can be decided without one
//! (connection-string handling, T-SQL text, type mapping) is plain functions with unit tests;
//! `tests/it/mssql.rs` runs against a real server when `TUNELAKE_TEST_MSSQL` is set.

pub mod change_tracking;
mod connection;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use azure_core::credentials::TokenCredential;
use futures::TryStreamExt;
use tiberius::{AuthMethod, Client, ColumnData, Config, FromSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::columns::{self, BatchBuilder, ColumnBuilder};
use super::{BatchStream, Source};
use crate::config::ingest::{CHANGE_VERSION, CdcMode};
use crate::config::{TableSpec, ident::quote_tsql};
use crate::error::{Error, Result};
use crate::window::{Bound, BoundKind, Window};
pub use connection::{Auth, ConnectionString, looks_like_ado, redact};

/// The scope of an Entra ID token for Azure SQL.
const SQL_SCOPE: &str = "https://database.windows.net/.default";

/// The T-SQL that lists a table's columns (parameters: schema, table).
pub const COLUMNS_SQL: &str = "SELECT COLUMN_NAME, DATA_TYPE, CAST(NUMERIC_PRECISION AS INT), CAST(NUMERIC_SCALE AS INT) \
     FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = @P1 AND TABLE_NAME = @P2 ORDER BY ORDINAL_POSITION";

/// `SELECT MAX([cdc]) FROM [schema].[table]`.
pub fn max_sql(table: &TableSpec) -> String {
    format!(
        "SELECT MAX({}) FROM {}.{}",
        quote_tsql(&table.cdc_column),
        quote_tsql(&table.schema),
        quote_tsql(&table.name)
    )
}

/// The window query: `high` is `@P1`, `low` (when present) `@P2`.
pub fn extract_sql(table: &TableSpec, columns: &[&str], has_low: bool) -> String {
    let list = columns
        .iter()
        .map(|c| quote_tsql(c))
        .collect::<Vec<_>>()
        .join(", ");
    let cdc = quote_tsql(&table.cdc_column);
    let mut sql = format!(
        "SELECT {list} FROM {}.{} WHERE {cdc} <= @P1",
        quote_tsql(&table.schema),
        quote_tsql(&table.name)
    );
    if has_low {
        sql.push_str(&format!(" AND {cdc} > @P2"));
    }
    sql
}

/// The Arrow type for a SQL Server column (`DATA_TYPE`, `NUMERIC_PRECISION`, `NUMERIC_SCALE`).
pub fn map_type(data_type: &str, precision: Option<i32>, scale: Option<i32>) -> Option<DataType> {
    Some(match data_type.to_ascii_lowercase().as_str() {
        "bit" => DataType::Boolean,
        "tinyint" => DataType::UInt8,
        "smallint" => DataType::Int16,
        "int" => DataType::Int32,
        "bigint" => DataType::Int64,
        "real" => DataType::Float32,
        "float" => DataType::Float64,
        "decimal" | "numeric" => DataType::Decimal128(
            u8::try_from(precision.unwrap_or(18)).ok()?,
            i8::try_from(scale.unwrap_or(0)).ok()?,
        ),
        "money" => DataType::Decimal128(19, 4),
        "smallmoney" => DataType::Decimal128(10, 4),
        "date" => DataType::Date32,
        "time" => DataType::Time64(TimeUnit::Microsecond),
        "datetime" | "datetime2" | "smalldatetime" | "datetimeoffset" => columns::utc_micros(),
        "char" | "varchar" | "nchar" | "nvarchar" | "text" | "ntext" | "uniqueidentifier"
        | "xml" | "sysname" => DataType::Utf8,
        "binary" | "varbinary" | "image" | "rowversion" | "timestamp" => DataType::Binary,
        _ => return None,
    })
}

type Connection = Client<Compat<TcpStream>>;

/// A SQL Server or Azure SQL database; one connection per operation, so tables run in parallel.
pub struct MssqlSource {
    conn: ConnectionString,
    credential: Option<Arc<dyn TokenCredential>>,
    described: String,
}

impl MssqlSource {
    /// Parses the connection string, builds the credential, and checks that a connection opens.
    pub async fn connect(text: &str) -> Result<Self> {
        let conn = ConnectionString::parse(text)?;
        let described = redact(text);
        let unreachable = |reason: String| Error::SourceUnreachable {
            url: described.clone(),
            reason,
        };
        let credential: Option<Arc<dyn TokenCredential>> = match &conn.auth {
            Auth::SqlLogin => None,
            Auth::ManagedIdentity { client_id } => Some(managed_identity(client_id.clone())),
            Auth::WorkloadIdentity => Some(workload_identity()),
            Auth::AzureCli => Some(
                azure_identity::AzureCliCredential::new(None)
                    .map(|c| c as Arc<dyn TokenCredential>)
                    .ok(),
            ),
            Auth::Default => Some(default_credential()),
        }
        .map(|c| {
            c.ok_or_else(|| unreachable("the Entra ID credential could not be created".to_string()))
        })
        .transpose()?;
        let source = MssqlSource {
            conn,
            credential,
            described,
        };
        source.client().await?;
        Ok(source)
    }

    async fn client(&self) -> Result<Connection> {
        let unreachable = |reason: String| Error::SourceUnreachable {
            url: self.described.clone(),
            reason,
        };
        let mut config = Config::from_ado_string(&self.conn.for_tiberius)
            .map_err(|e| unreachable(e.to_string()))?;
        if let Some(credential) = &self.credential {
            let token = credential
                .get_token(&[SQL_SCOPE], None)
                .await
                .map_err(|e| unreachable(format!("getting an Entra ID token: {e}")))?;
            config.authentication(AuthMethod::aad_token(token.token.secret()));
        }
        let mut addr = config.get_addr();
        // Azure SQL's gateway may redirect once to the node that holds the database.
        for _ in 0..2 {
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|e| unreachable(format!("{addr}: {e}")))?;
            tcp.set_nodelay(true)
                .map_err(|e| unreachable(e.to_string()))?;
            match Client::connect(config.clone(), tcp.compat_write()).await {
                Ok(client) => return Ok(client),
                Err(tiberius::error::Error::Routing { host, port }) => {
                    config.host(&host);
                    config.port(port);
                    addr = format!("{host}:{port}");
                }
                Err(e) => return Err(unreachable(e.to_string())),
            }
        }
        Err(unreachable("redirected more than once".to_string()))
    }
}

fn managed_identity(client_id: Option<String>) -> Option<Arc<dyn TokenCredential>> {
    let options = azure_identity::ManagedIdentityCredentialOptions {
        user_assigned_id: client_id.map(azure_identity::UserAssignedId::ClientId),
        ..Default::default()
    };
    azure_identity::ManagedIdentityCredential::new(Some(options))
        .ok()
        .map(|c| c as Arc<dyn TokenCredential>)
}

fn workload_identity() -> Option<Arc<dyn TokenCredential>> {
    azure_identity::WorkloadIdentityCredential::new(None)
        .ok()
        .map(|c| c as Arc<dyn TokenCredential>)
}

fn default_credential() -> Option<Arc<dyn TokenCredential>> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    if set("IDENTITY_ENDPOINT") || set("MSI_ENDPOINT") {
        managed_identity(std::env::var("AZURE_CLIENT_ID").ok())
    } else if set("AZURE_FEDERATED_TOKEN_FILE") {
        workload_identity()
    } else {
        azure_identity::DeveloperToolsCredential::new(None)
            .ok()
            .map(|c| c as Arc<dyn TokenCredential>)
    }
}

fn query_error(table: &TableSpec, e: tiberius::error::Error) -> Error {
    Error::SourceQuery {
        table: table.name.clone(),
        message: e.to_string(),
    }
}

#[async_trait::async_trait]
impl Source for MssqlSource {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn schema(&self, table: &TableSpec) -> Result<SchemaRef> {
        let mut client = self.client().await?;
        let rows = client
            .query(COLUMNS_SQL, &[&table.schema.as_str(), &table.name.as_str()])
            .await
            .map_err(|e| query_error(table, e))?
            .into_first_result()
            .await
            .map_err(|e| query_error(table, e))?;
        let mut fields = Vec::new();
        for row in rows {
            let name: &str = row.get(0).unwrap_or_default();
            let data_type: &str = row.get(1).unwrap_or_default();
            let arrow_type = map_type(data_type, row.get(2), row.get(3)).ok_or_else(|| {
                Error::UnsupportedType {
                    table: table.name.clone(),
                    column: name.to_string(),
                    source_type: data_type.to_string(),
                }
            })?;
            fields.push(Field::new(name, arrow_type, true));
        }
        if fields.is_empty() {
            return Err(Error::UnknownTable {
                table: format!("{}.{}", table.schema, table.name),
                source_url: self.described.clone(),
            });
        }
        let schema = Schema::new(fields);
        Ok(match table.cdc_mode {
            CdcMode::ChangeTracking => change_tracking::with_change_columns(&schema),
            CdcMode::Watermark => Arc::new(schema),
        })
    }

    fn change_tracking(&self) -> bool {
        true
    }

    async fn high_watermark(&self, table: &TableSpec, kind: BoundKind) -> Result<Option<Bound>> {
        let mut client = self.client().await?;
        let sql = match table.cdc_mode {
            CdcMode::ChangeTracking => change_tracking::CURRENT_VERSION_SQL.to_string(),
            CdcMode::Watermark => max_sql(table),
        };
        let row = client
            .simple_query(sql)
            .await
            .map_err(|e| query_error(table, e))?
            .into_row()
            .await
            .map_err(|e| query_error(table, e))?;
        let Some(value) = row.and_then(|r| r.into_iter().next()) else {
            return Ok(None);
        };
        bound_from_column(&value, kind).map_err(|value| Error::ValueDoesNotFit {
            table: table.name.clone(),
            column: table.cdc_column.clone(),
            row: "MAX".to_string(),
            value,
            expected: format!("{kind:?}").to_lowercase(),
        })
    }

    async fn extract(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        window: Window,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let mut client = self.client().await?;
        if let (CdcMode::ChangeTracking, Some(low)) = (table.cdc_mode, window.low) {
            check_retention(&mut client, table, low).await?;
        }
        let name = table.name.clone();
        let table = table.clone();
        Ok(super::spawn_reader(&name, move |tx| async move {
            let names: Vec<&str> = schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .filter(|n| {
                    table.cdc_mode == CdcMode::Watermark
                        || (*n != CHANGE_VERSION
                            && *n != crate::lake::layout::silver_columns::CHANGE_TYPE)
                })
                .collect();
            let sql = match table.cdc_mode {
                CdcMode::ChangeTracking => {
                    change_tracking::extract_sql(&table, &names, window.low.is_some())
                }
                CdcMode::Watermark => extract_sql(&table, &names, window.low.is_some()),
            };
            let mut query = tiberius::Query::new(sql);
            bind(&mut query, &window.high);
            if let Some(low) = &window.low {
                bind(&mut query, low);
            }
            let label = format!("window {}", window.file_stem(&table.name));
            read_rows(client, query, &table, schema, &label, batch_rows, tx).await
        }))
    }

    async fn keys(
        &self,
        table: &TableSpec,
        schema: SchemaRef,
        batch_rows: usize,
    ) -> Result<BatchStream> {
        let client = self.client().await?;
        let name = table.name.clone();
        let table = table.clone();
        Ok(super::spawn_reader(&name, move |tx| async move {
            let query = tiberius::Query::new(keys_sql(&table, &schema));
            read_rows(
                client,
                query,
                &table,
                schema,
                "the key list",
                batch_rows,
                tx,
            )
            .await
        }))
    }
}

/// Fails the table when Change Tracking no longer holds every change since `low`: its
/// retention cleaned them up, so the window would skip some.
async fn check_retention(client: &mut Connection, table: &TableSpec, low: Bound) -> Result<()> {
    let name = change_tracking::object_name(table);
    let row = client
        .query(change_tracking::MIN_VALID_VERSION_SQL, &[&name.as_str()])
        .await
        .map_err(|e| query_error(table, e))?
        .into_row()
        .await
        .map_err(|e| query_error(table, e))?;
    let min: Option<i64> = row.and_then(|r| r.get::<i64, _>(0));
    let stored = match low {
        Bound::Integer(v) => v,
        other => {
            return Err(Error::SourceQuery {
                table: table.name.clone(),
                message: format!("the stored change version {other} is not an integer"),
            });
        }
    };
    match min {
        None => Err(Error::SourceQuery {
            table: table.name.clone(),
            message: format!(
                "change tracking is not enabled on {name} (ALTER TABLE {name} ENABLE CHANGE_TRACKING)"
            ),
        }),
        Some(min) if stored < min => Err(Error::SourceQuery {
            table: table.name.clone(),
            message: format!(
                "change tracking kept changes from version {min} on, but the lake holds up to {stored}: \
                 the changes in between are gone; run `tunelake refresh --table {} --yes`",
                table.name
            ),
        }),
        Some(_) => Ok(()),
    }
}

/// The keys query of `deletes = "detect"`: every key in ascending binary order, text keys
/// compared by code point (`Latin1_General_BIN2`) whatever the column's collation, as the
/// lake's key snapshot is ordered.
pub fn keys_sql(table: &TableSpec, schema: &SchemaRef) -> String {
    let keys = table
        .keys
        .iter()
        .map(|k| quote_tsql(k))
        .collect::<Vec<_>>()
        .join(", ");
    let order = table
        .keys
        .iter()
        .map(|k| {
            let text = schema
                .field_with_name(k)
                .is_ok_and(|f| f.data_type() == &DataType::Utf8);
            if text {
                format!("{} COLLATE Latin1_General_BIN2", quote_tsql(k))
            } else {
                quote_tsql(k)
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT {keys} FROM {}.{} ORDER BY {order}",
        quote_tsql(&table.schema),
        quote_tsql(&table.name)
    )
}

/// Streams the rows of one query as batches of `schema`, every value checked against its
/// column's type; `label` says in errors which rows these are.
async fn read_rows(
    mut client: Connection,
    query: tiberius::Query<'_>,
    table: &TableSpec,
    schema: SchemaRef,
    label: &str,
    batch_rows: usize,
    tx: super::BatchSender,
) -> Result<()> {
    let mut rows = query
        .query(&mut client)
        .await
        .map_err(|e| query_error(table, e))?
        .into_row_stream();
    let key_idx: Vec<usize> = table
        .keys
        .iter()
        .filter_map(|k| schema.index_of(k).ok())
        .collect();
    let mut batch = BatchBuilder::new(&table.name, schema.clone(), batch_rows)?;
    let mut row_number = 0u64;
    while let Some(row) = rows.try_next().await.map_err(|e| query_error(table, e))? {
        row_number += 1;
        let cells: Vec<ColumnData<'static>> = row.into_iter().collect();
        for (i, (builder, value)) in batch.columns.iter_mut().zip(&cells).enumerate() {
            if let Err(expected) = append(builder, value) {
                let key = key_idx
                    .iter()
                    .map(|&k| format!("{}={}", schema.field(k).name(), show(&cells[k])))
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
        if batch.rows() >= batch_rows && tx.send(Ok(batch.finish(&table.name)?)).await.is_err() {
            return Ok(());
        }
    }
    if batch.rows() > 0 {
        let _ = tx.send(Ok(batch.finish(&table.name)?)).await;
    }
    Ok(())
}

fn bind(query: &mut tiberius::Query<'_>, bound: &Bound) {
    match bound {
        Bound::Integer(v) => query.bind(*v),
        Bound::Date(d) => query.bind(*d),
        Bound::Timestamp(_) => query.bind(bound.as_datetime().map(|dt| dt.naive_utc())),
    }
}

fn bound_from_column(
    value: &ColumnData<'static>,
    kind: BoundKind,
) -> Result<Option<Bound>, String> {
    let bad = || show(value);
    Ok(match (kind, value) {
        (BoundKind::Integer, ColumnData::U8(v)) => v.map(|v| Bound::Integer(v.into())),
        (BoundKind::Integer, ColumnData::I16(v)) => v.map(|v| Bound::Integer(v.into())),
        (BoundKind::Integer, ColumnData::I32(v)) => v.map(|v| Bound::Integer(v.into())),
        (BoundKind::Integer, ColumnData::I64(v)) => v.map(Bound::Integer),
        (BoundKind::Date, _) => chrono::NaiveDate::from_sql(value)
            .map_err(|_| bad())?
            .map(Bound::Date),
        (BoundKind::Timestamp, _) => timestamp_micros(value)
            .map_err(|_| bad())?
            .map(Bound::Timestamp),
        _ => return Err(bad()),
    })
}

fn timestamp_micros(value: &ColumnData<'static>) -> tiberius::Result<Option<i64>> {
    Ok(match value {
        ColumnData::DateTimeOffset(_) => {
            chrono::DateTime::<chrono::Utc>::from_sql(value)?.map(|dt| dt.timestamp_micros())
        }
        _ => chrono::NaiveDateTime::from_sql(value)?.map(|dt| dt.and_utc().timestamp_micros()),
    })
}

fn show(value: &ColumnData<'static>) -> String {
    let text = format!("{value:?}");
    text.chars().take(80).collect()
}

/// Appends one SQL Server value to an Arrow column; on mismatch returns what was expected.
fn append(builder: &mut ColumnBuilder, value: &ColumnData<'static>) -> Result<(), &'static str> {
    use ColumnBuilder as C;
    use ColumnData as D;
    macro_rules! opt {
        ($b:expr, $v:expr) => {
            match $v {
                Some(v) => $b.append_value(v),
                None => $b.append_null(),
            }
        };
    }
    match (builder, value) {
        (C::Boolean(b), D::Bit(v)) => opt!(b, *v),
        (C::UInt8(b), D::U8(v)) => opt!(b, *v),
        (C::Int16(b), D::I16(v)) => opt!(b, *v),
        (C::Int32(b), D::I32(v)) => opt!(b, *v),
        (C::Int64(b), D::I64(v)) => opt!(b, *v),
        (C::Float32(b), D::F32(v)) => opt!(b, *v),
        (C::Float64(b), D::F64(v)) => opt!(b, *v),
        (C::Decimal(b, _, scale), D::Numeric(v)) => match v {
            None => b.append_null(),
            Some(n) => {
                let shift = i32::from(*scale) - i32::from(n.scale());
                let value = if shift >= 0 {
                    n.value().checked_mul(10i128.pow(shift.unsigned_abs()))
                } else {
                    let div = 10i128.pow(shift.unsigned_abs());
                    (n.value() % div == 0).then(|| n.value() / div)
                };
                b.append_value(value.ok_or("a decimal that fits its scale")?)
            }
        },
        (C::Utf8(b), D::String(v)) => opt!(b, v.as_deref()),
        (C::Utf8(b), D::Guid(v)) => opt!(b, v.map(|g| g.to_string())),
        (C::Utf8(b), D::Xml(v)) => opt!(b, v.as_ref().map(|x| x.to_string())),
        (C::Binary(b), D::Binary(v)) => opt!(b, v.as_deref()),
        (C::Date32(b), _) => opt!(
            b,
            chrono::NaiveDate::from_sql(value)
                .map_err(|_| "a date")?
                .map(columns::days_since_epoch)
        ),
        (C::Time64(b), _) => opt!(
            b,
            chrono::NaiveTime::from_sql(value)
                .map_err(|_| "a time")?
                .map(|t| {
                    i64::from(chrono::Timelike::num_seconds_from_midnight(&t)) * 1_000_000
                        + i64::from(chrono::Timelike::nanosecond(&t) / 1_000)
                })
        ),
        (C::Timestamp(b), _) => opt!(b, timestamp_micros(value).map_err(|_| "a timestamp")?),
        _ => return Err("the column's declared type"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            name: "FactStream".into(),
            schema: "dbo".into(),
            cdc_column: "stream_timestamp".into(),
            keys: vec!["stream_id".into()],
            files: vec![],
            silver: Default::default(),
            gold: None,
            ..Default::default()
        }
    }

    #[test]
    fn generated_tsql_quotes_every_identifier_and_binds_the_bounds() {
        assert_eq!(
            extract_sql(&spec(), &["stream_id", "user_id"], true),
            "SELECT [stream_id], [user_id] FROM [dbo].[FactStream] WHERE [stream_timestamp] <= @P1 AND [stream_timestamp] > @P2"
        );
        assert_eq!(
            extract_sql(&spec(), &["stream_id"], false),
            "SELECT [stream_id] FROM [dbo].[FactStream] WHERE [stream_timestamp] <= @P1"
        );
        assert_eq!(
            max_sql(&spec()),
            "SELECT MAX([stream_timestamp]) FROM [dbo].[FactStream]"
        );
        assert!(COLUMNS_SQL.contains("@P1") && COLUMNS_SQL.contains("@P2"));
    }

    #[test]
    fn sql_server_types_map_to_arrow_exactly() {
        assert_eq!(map_type("int", Some(10), Some(0)), Some(DataType::Int32));
        assert_eq!(map_type("bigint", None, None), Some(DataType::Int64));
        assert_eq!(map_type("bit", None, None), Some(DataType::Boolean));
        assert_eq!(
            map_type("decimal", Some(12), Some(3)),
            Some(DataType::Decimal128(12, 3))
        );
        assert_eq!(
            map_type("money", None, None),
            Some(DataType::Decimal128(19, 4))
        );
        assert_eq!(
            map_type("datetime2", None, None),
            Some(columns::utc_micros())
        );
        assert_eq!(
            map_type("datetimeoffset", None, None),
            Some(columns::utc_micros())
        );
        assert_eq!(map_type("date", None, None), Some(DataType::Date32));
        assert_eq!(map_type("NVARCHAR", None, None), Some(DataType::Utf8));
        assert_eq!(
            map_type("uniqueidentifier", None, None),
            Some(DataType::Utf8)
        );
        assert_eq!(map_type("varbinary", None, None), Some(DataType::Binary));
        assert_eq!(map_type("geography", None, None), None);
    }

    #[test]
    fn connection_strings_choose_the_authentication() {
        let sql =
            ConnectionString::parse("Server=tcp:h,1433;Database=d;User ID=u;Password=p").unwrap();
        assert_eq!(sql.auth, Auth::SqlLogin);
        assert!(sql.for_tiberius.contains("User ID=u"));
        let mi = ConnectionString::parse(
            "Server=tcp:h.database.windows.net,1433;Database=d;Authentication=Active Directory Managed Identity;User Id=abc",
        )
        .unwrap();
        assert_eq!(
            mi.auth,
            Auth::ManagedIdentity {
                client_id: Some("abc".into())
            }
        );
        assert!(!mi.for_tiberius.to_lowercase().contains("authentication"));
        assert!(
            !mi.for_tiberius.contains("abc"),
            "the identity's client id is not a SQL login"
        );
        for (text, auth) in [
            (
                "Authentication=ActiveDirectoryWorkloadIdentity",
                Auth::WorkloadIdentity,
            ),
            ("Authentication=Active Directory Azure CLI", Auth::AzureCli),
            ("Authentication=Active Directory Default", Auth::Default),
            ("Authentication=SqlPassword", Auth::SqlLogin),
        ] {
            let parsed = ConnectionString::parse(&format!("Server=tcp:h,1433;{text}")).unwrap();
            assert_eq!(parsed.auth, auth, "{text}");
        }
        let err = ConnectionString::parse("Server=h;Authentication=Kerberos").unwrap_err();
        assert!(err.to_string().contains("Kerberos"));
    }

    #[test]
    fn passwords_never_reach_messages() {
        let text = "Server=tcp:h,1433;User ID=u;Password=s3cret;Database=d";
        assert!(looks_like_ado(text));
        assert!(!looks_like_ado("sqlite:/tmp/x.db"));
        let shown = redact(text);
        assert!(
            !shown.contains("s3cret") && shown.contains("Password=***"),
            "{shown}"
        );
        // Quoted and braced values may hold `;` (and their own quote, doubled).
        for (password, rest) in [
            ("'se;cr''et'", "se;cr"),
            ("\"a;b\"\"c;d\"", "c;d"),
            ("{x;y}}z;w}", "z;w"),
            (" 'p;q'", "p;q"),
        ] {
            let text = format!("Server=h;Pwd={password};Database=d");
            let shown = redact(&text);
            assert_eq!(shown, "Server=h;Pwd=***;Database=d", "{text}");
            assert!(!shown.contains(rest), "{shown}");
            let parsed = ConnectionString::parse(&text).unwrap();
            assert!(parsed.for_tiberius.contains(password), "{parsed:?}");
        }
    }

    #[test]
    fn values_convert_with_scale_and_nulls() {
        let mut b = ColumnBuilder::new(&DataType::Decimal128(10, 2), 2).unwrap();
        append(
            &mut b,
            &ColumnData::Numeric(Some(tiberius::numeric::Numeric::new_with_scale(123, 1))),
        )
        .unwrap();
        append(&mut b, &ColumnData::Numeric(None)).unwrap();
        let array = b.finish();
        let array = array
            .as_any()
            .downcast_ref::<arrow::array::Decimal128Array>()
            .unwrap();
        assert_eq!(array.value(0), 1230);
        assert!(arrow::array::Array::is_null(array, 1));
        let mut i = ColumnBuilder::new(&DataType::Int32, 1).unwrap();
        assert!(append(&mut i, &ColumnData::String(Some("x".into()))).is_err());
    }
}
