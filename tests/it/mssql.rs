//! SQL Server / Azure SQL, end to end, against the server `TUNELAKE_TEST_MSSQL` names (an ADO
//! connection string, e.g. `Server=tcp:localhost,1433;User ID=sa;Password=...;TrustServerCertificate=true`).
//! Ignored unless asked for, as no server runs here:
//! `TUNELAKE_TEST_MSSQL=... cargo test -- --ignored mssql`.

use tunelake::config::{Settings, TableSpec};
use tunelake::lake::Lake;
use tunelake::stages::ingest::Ingest;

use crate::common::*;

type Client = tiberius::Client<tokio_util::compat::Compat<tokio::net::TcpStream>>;

/// A client of the test server, to set up and drop the tables the tests read.
async fn connect(conn: &str) -> Client {
    use tokio_util::compat::TokioAsyncWriteCompatExt;
    let mut config = tiberius::Config::from_ado_string(conn).unwrap();
    config.trust_cert();
    let tcp = tokio::net::TcpStream::connect(config.get_addr())
        .await
        .unwrap();
    tiberius::Client::connect(config, tcp.compat_write())
        .await
        .unwrap()
}

/// The SQL Server these tests run against (an ADO connection string).
fn server() -> String {
    std::env::var("TUNELAKE_TEST_MSSQL")
        .expect("TUNELAKE_TEST_MSSQL: an ADO connection string of a SQL Server to test against")
}

#[tokio::test]
#[ignore = "needs a SQL Server: set TUNELAKE_TEST_MSSQL, then cargo test -- --ignored mssql"]
async fn ingest_from_sql_server() {
    let conn = server();
    let table = format!("tunelake_it_{}", std::process::id());
    let mut client = connect(&conn).await;
    client
        .simple_query(format!(
            "CREATE TABLE dbo.{table} (id INT PRIMARY KEY, name NVARCHAR(50), amount DECIMAL(10,2), \
             active BIT, born DATE, updated_at DATETIME2); \
             INSERT INTO dbo.{table} VALUES (1, N'Zoë', 12.34, 1, '2024-01-01', '2024-03-01T10:00:00.123456'), \
             (2, NULL, NULL, 0, NULL, '2024-03-02T10:00:00')"
        ))
        .await
        .unwrap()
        .into_results()
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let source = tunelake::source::open(&conn).await.unwrap();
    let spec = TableSpec {
        name: table.clone(),
        schema: "dbo".into(),
        cdc_column: "updated_at".into(),
        keys: vec!["id".into()],
        files: vec![],
        silver: Default::default(),
        gold: None,
        ..Default::default()
    };
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let report = Ingest::new(source.clone(), lake.clone(), Settings::default(), "it")
        .run(std::slice::from_ref(&spec))
        .await;
    let _ = client.simple_query(format!("DROP TABLE dbo.{table}")).await;
    assert!(!report.failed(), "{report:?}");
    assert_eq!(report.tables[0].rows, 2);
    let files = parquet_files(&dir.path().join("bronze").join(&table));
    let batch = &read_parquet(&files[0])[0];
    assert_eq!(
        batch
            .schema()
            .field_with_name("amount")
            .unwrap()
            .data_type(),
        &arrow::datatypes::DataType::Decimal128(10, 2)
    );
    assert_eq!(
        batch
            .schema()
            .field_with_name("active")
            .unwrap()
            .data_type(),
        &arrow::datatypes::DataType::Boolean
    );
}

#[tokio::test]
#[ignore = "needs a SQL Server: set TUNELAKE_TEST_MSSQL, then cargo test -- --ignored mssql"]
async fn change_tracking_brings_updates_inserts_and_deletes() {
    let conn = server();
    let table = format!("tunelake_ct_{}", std::process::id());
    let mut client = connect(&conn).await;
    let mut exec = async |sql: String| {
        client
            .simple_query(sql)
            .await
            .unwrap()
            .into_results()
            .await
            .unwrap();
    };
    exec(
        "IF NOT EXISTS (SELECT 1 FROM sys.change_tracking_databases WHERE database_id = DB_ID()) \
         ALTER DATABASE CURRENT SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 2 DAYS, AUTO_CLEANUP = ON)"
            .to_string(),
    )
    .await;
    exec(format!(
        "CREATE TABLE dbo.{table} (id INT PRIMARY KEY, name NVARCHAR(50)); \
         ALTER TABLE dbo.{table} ENABLE CHANGE_TRACKING; \
         INSERT INTO dbo.{table} VALUES (1, N'a'), (2, N'b')"
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let source = tunelake::source::open(&conn).await.unwrap();
    let spec = TableSpec {
        name: table.clone(),
        schema: "dbo".into(),
        cdc_column: "SYS_CHANGE_VERSION".into(),
        keys: vec!["id".into()],
        cdc_mode: tunelake::config::ingest::CdcMode::ChangeTracking,
        ..Default::default()
    };
    let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
    let ingest = || {
        Ingest::new(source.clone(), lake.clone(), Settings::default(), "ct")
            .run(std::slice::from_ref(&spec))
    };
    let first = ingest().await;
    exec(format!(
        "UPDATE dbo.{table} SET name = N'a2' WHERE id = 1; DELETE FROM dbo.{table} WHERE id = 2; \
         INSERT INTO dbo.{table} VALUES (3, N'c')"
    ))
    .await;
    let second = ingest().await;
    exec(format!("DROP TABLE dbo.{table}")).await;
    assert!(!first.failed() && !second.failed(), "{first:?} {second:?}");
    assert_eq!((first.tables[0].rows, second.tables[0].rows), (2, 3));
    let files = parquet_files(&dir.path().join("bronze").join(&table));
    let last = read_parquet(files.last().unwrap());
    let mut changes: Vec<(i32, Option<String>, String)> = Vec::new();
    for batch in &last {
        use arrow::array::{Array, AsArray};
        let ids = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        let names = batch.column_by_name("name").unwrap().as_string::<i32>();
        let kinds = batch
            .column_by_name("_change_type")
            .unwrap()
            .as_string::<i32>();
        for i in 0..batch.num_rows() {
            changes.push((
                ids.value(i),
                (!names.is_null(i)).then(|| names.value(i).to_string()),
                kinds.value(i).to_string(),
            ));
        }
    }
    changes.sort();
    assert_eq!(
        changes,
        [
            (1, Some("a2".to_string()), "update".to_string()),
            (2, None, "delete".to_string()),
            (3, Some("c".to_string()), "insert".to_string()),
        ]
    );
}
