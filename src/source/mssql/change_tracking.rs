//! SQL Server Change Tracking as a table's extract mode (`cdc_mode = "change_tracking"`): the
//! watermark is the change version, each window reads `CHANGETABLE(CHANGES ...)` since the
//! stored version, and a deleted row arrives as its key with `_change_type = 'delete'`.
//!
//! The first window has no version to start from: it copies the table as it stands, every row
//! at the version read before the copy. A row changed during the copy is read again by the
//! next window with its own version; silver and gold take that repeat as no change.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::config::ingest::CHANGE_VERSION;
use crate::config::{TableSpec, ident::quote_tsql};
use crate::lake::layout::silver_columns::CHANGE_TYPE;

/// The database's current change version: the window's upper bound, read before the copy.
pub const CURRENT_VERSION_SQL: &str = "SELECT CHANGE_TRACKING_CURRENT_VERSION()";

/// The oldest version whose changes are still kept for a table (`@P1`: `[schema].[table]`);
/// NULL when the table is not tracked.
pub const MIN_VALID_VERSION_SQL: &str = "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1))";

/// The table's name as `OBJECT_ID` takes it.
pub fn object_name(table: &TableSpec) -> String {
    format!("{}.{}", quote_tsql(&table.schema), quote_tsql(&table.name))
}

/// The table's columns with the two a change carries: its version and its kind.
pub fn with_change_columns(schema: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CHANGE_VERSION, DataType::Int64, true));
    fields.push(Field::new(CHANGE_TYPE, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// The window query over the table's own `columns`: `high` is `@P1`, the stored version
/// (when there is one) `@P2`.
pub fn extract_sql(table: &TableSpec, columns: &[&str], has_low: bool) -> String {
    let from = object_name(table);
    if !has_low {
        let list = columns
            .iter()
            .map(|c| format!("t.{}", quote_tsql(c)))
            .collect::<Vec<_>>()
            .join(", ");
        return format!(
            "SELECT {list}, CAST(@P1 AS BIGINT) AS {v}, CAST(NULL AS NVARCHAR(6)) AS {k} FROM {from} AS t",
            v = quote_tsql(CHANGE_VERSION),
            k = quote_tsql(CHANGE_TYPE),
        );
    }
    // A deleted row is gone from the table: its key comes from the change table.
    let list = columns
        .iter()
        .map(|c| {
            let side = if table.keys.iter().any(|k| k == c) {
                "ct"
            } else {
                "t"
            };
            format!("{side}.{}", quote_tsql(c))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let on = table
        .keys
        .iter()
        .map(|k| format!("t.{k} = ct.{k}", k = quote_tsql(k)))
        .collect::<Vec<_>>()
        .join(" AND ");
    format!(
        "SELECT {list}, ct.{v}, CASE ct.[SYS_CHANGE_OPERATION] WHEN N'D' THEN N'delete' \
         WHEN N'I' THEN N'insert' ELSE N'update' END AS {k} \
         FROM CHANGETABLE(CHANGES {from}, @P2) AS ct LEFT JOIN {from} AS t ON {on} \
         WHERE ct.{v} <= @P1",
        v = quote_tsql(CHANGE_VERSION),
        k = quote_tsql(CHANGE_TYPE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TableSpec {
        TableSpec {
            name: "DimUser".into(),
            schema: "dbo".into(),
            cdc_column: CHANGE_VERSION.into(),
            keys: vec!["user_id".into()],
            ..Default::default()
        }
    }

    #[test]
    fn the_first_window_copies_the_table_at_the_version_read_before() {
        assert_eq!(
            extract_sql(&spec(), &["user_id", "country"], false),
            "SELECT t.[user_id], t.[country], CAST(@P1 AS BIGINT) AS [SYS_CHANGE_VERSION], \
             CAST(NULL AS NVARCHAR(6)) AS [_change_type] FROM [dbo].[DimUser] AS t"
        );
    }

    #[test]
    fn later_windows_read_the_change_table_with_deleted_keys_from_it() {
        assert_eq!(
            extract_sql(&spec(), &["user_id", "country"], true),
            "SELECT ct.[user_id], t.[country], ct.[SYS_CHANGE_VERSION], \
             CASE ct.[SYS_CHANGE_OPERATION] WHEN N'D' THEN N'delete' WHEN N'I' THEN N'insert' \
             ELSE N'update' END AS [_change_type] \
             FROM CHANGETABLE(CHANGES [dbo].[DimUser], @P2) AS ct \
             LEFT JOIN [dbo].[DimUser] AS t ON t.[user_id] = ct.[user_id] \
             WHERE ct.[SYS_CHANGE_VERSION] <= @P1"
        );
        assert_eq!(object_name(&spec()), "[dbo].[DimUser]");
        let schema = with_change_columns(&Schema::new(vec![Field::new(
            "user_id",
            DataType::Int32,
            true,
        )]));
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["user_id", "SYS_CHANGE_VERSION", "_change_type"]);
    }
}
