//! SQL Server / Azure SQL, end to end: runs only when `TUNELAKE_TEST_MSSQL` holds an ADO
//! connection string (e.g. `Server=tcp:localhost,1433;User ID=sa;Password=...;TrustServerCertificate=true`).

use tunelake::config::{Settings, TableSpec};
use tunelake::lake::Lake;
use tunelake::stages::ingest::Ingest;

use crate::common::*;

#[tokio::test]
async fn ingest_from_sql_server_when_a_connection_string_is_given() {
    let Ok(conn) = std::env::var("TUNELAKE_TEST_MSSQL") else {
        eprintln!(
            "skipped: set TUNELAKE_TEST_MSSQL to an ADO connection string to test SQL Server"
        );
        return;
    };
    let table = format!("tunelake_it_{}", std::process::id());
    let mut config = tiberius::Config::from_ado_string(&conn).unwrap();
    config.trust_cert();
    let tcp = tokio::net::TcpStream::connect(config.get_addr())
        .await
        .unwrap();
    use tokio_util::compat::TokioAsyncWriteCompatExt;
    let mut client = tiberius::Client::connect(config, tcp.compat_write())
        .await
        .unwrap();
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
