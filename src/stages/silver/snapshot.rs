//! A snapshot table's file (a whole snapshot, see `stages::ingest::snapshot`) turned into its
//! change from the snapshot before, which is what silver holds (DLT's AUTO CDC FROM
//! SNAPSHOT): the rows of new keys and of keys whose values changed, and a delete marker
//! (`_change_type = 'delete'`) at the snapshot's time for each key of the current state that
//! the snapshot lacks. The current state is silver's latest row per key that is not a delete,
//! so a key that comes back is a change again, and a snapshot that could not be loaded leaves
//! the one before it current.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use deltalake::DeltaTable;

use super::clean::Cleaned;
use super::rows::Rows;
use crate::config::TableSpec;
use crate::config::ident::quote_ansi as q;
use crate::error::{Error, Result};
use crate::lake::layout::{
    self,
    silver_columns::{CHANGE_TYPE, SNAPSHOT_AT},
};

/// The snapshot in `cleaned` as its change from silver's current state (`existing`: silver's
/// columns; `None` before the first snapshot, which is all inserts).
pub(super) async fn changes(
    delta: &DeltaTable,
    existing: Option<&SchemaRef>,
    table: &TableSpec,
    cleaned: Cleaned,
    path: &str,
) -> Result<Cleaned> {
    let Some(existing) = existing else {
        return Ok(cleaned);
    };
    let arrow = |e| Error::arrow(path, e);
    let df_err = |e| Error::DataFusion {
        table: table.name.clone(),
        file: path.to_string(),
        context: "comparing the snapshot with the one before".to_string(),
        source: e,
    };
    let snapshot = cleaned.firsts.clone().filtered().map_err(arrow)?;
    // The snapshot's rows with a `_change_type` column (NULL), so markers fit beside them.
    let mut fields: Vec<Field> = cleaned
        .schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    if !fields.iter().any(|f| f.name() == CHANGE_TYPE) {
        fields.push(Field::new(CHANGE_TYPE, DataType::Utf8, true));
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let snapshot: Vec<RecordBatch> = snapshot
        .into_iter()
        .map(|b| crate::lake::writers::fit(&b, &schema))
        .collect::<std::result::Result<_, _>>()
        .map_err(arrow)?;
    let Some(at) = snapshot_time(&snapshot) else {
        return Ok(cleaned);
    };
    let ctx = super::session();
    ctx.register_table(
        "snap",
        Arc::new(MemTable::try_new(schema.clone(), vec![snapshot]).map_err(df_err)?),
    )
    .map_err(df_err)?;
    let provider =
        crate::lake::delta_provider(delta, &ctx, &layout::silver_table(&table.silver_name()))
            .await?;
    ctx.register_table("silver", provider).map_err(df_err)?;

    let keys: Vec<String> = table.keys.iter().map(|k| q(k)).collect();
    let on = |a: &str, b: &str| {
        keys.iter()
            .map(|k| format!("{a}.{k} = {b}.{k}"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    // The columns compared: the snapshot's data columns silver has (lineage and the sequence
    // are not the row's content).
    let compared: Vec<String> = (schema.fields().iter())
        .map(|f| f.name().clone())
        .filter(|n| !n.starts_with('_') && !table.keys.contains(n))
        .filter(|n| existing.field_with_name(n).is_ok())
        .collect();
    let not_deleted = match existing.field_with_name(CHANGE_TYPE) {
        Ok(_) => format!(" AND COALESCE({}, '') <> 'delete'", q(CHANGE_TYPE)),
        Err(_) => String::new(),
    };
    let current_columns: String = keys
        .iter()
        .cloned()
        .chain(compared.iter().map(|c| q(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let order = match existing.field_with_name(layout::silver_columns::INGESTED_AT) {
        Ok(_) => format!(
            "{} DESC, {} DESC",
            q(SNAPSHOT_AT),
            q(layout::silver_columns::INGESTED_AT)
        ),
        Err(_) => format!("{} DESC", q(SNAPSHOT_AT)),
    };
    let change_column = match existing.field_with_name(CHANGE_TYPE) {
        Ok(_) => format!(", {}", q(CHANGE_TYPE)),
        Err(_) => String::new(),
    };
    let current = format!(
        "SELECT {current_columns} FROM (SELECT {current_columns}{change_column}, \
         ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {order}) AS __rn FROM silver) \
         WHERE __rn = 1{not_deleted}",
        partition = keys.join(", "),
    );
    let same: String = compared
        .iter()
        .map(|c| format!(" AND (s.{c} IS NOT DISTINCT FROM c.{c})", c = q(c)))
        .collect();
    let first_key = &keys[0];
    let changed_sql = format!(
        "SELECT s.* FROM snap s LEFT JOIN ({current}) c ON {on} \
         WHERE c.{first_key} IS NULL OR NOT (true{same})",
        on = on("s", "c"),
    );
    let vanished_sql = format!(
        "SELECT {ck} FROM ({current}) c LEFT JOIN snap s ON {on} WHERE s.{first_key} IS NULL",
        ck = keys
            .iter()
            .map(|k| format!("c.{k}"))
            .collect::<Vec<_>>()
            .join(", "),
        on = on("c", "s"),
    );
    let changed = ctx
        .sql(&changed_sql)
        .await
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)?;
    let vanished = ctx
        .sql(&vanished_sql)
        .await
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)?;
    let mut batches: Vec<RecordBatch> = changed
        .into_iter()
        .map(|b| crate::lake::writers::fit(&b, &schema))
        .collect::<std::result::Result<_, _>>()
        .map_err(arrow)?;
    for keys in vanished.iter().filter(|b| b.num_rows() > 0) {
        batches.push(markers(keys, table, &schema, &at).map_err(arrow)?);
    }
    let kept_rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    Ok(Cleaned {
        schema,
        firsts: Rows::all(batches),
        kept_rows,
        ..cleaned
    })
}

/// The snapshot's `_snapshot_at` (one value for the whole file).
fn snapshot_time(batches: &[RecordBatch]) -> Option<ArrayRef> {
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    Some(batch.column_by_name(SNAPSHOT_AT)?.slice(0, 1))
}

/// Delete markers for `keys` (a batch of key columns) at time `at`.
fn markers(
    keys: &RecordBatch,
    table: &TableSpec,
    schema: &SchemaRef,
    at: &ArrayRef,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let rows = keys.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let name = f.name();
            if table.keys.contains(name) {
                let key = keys
                    .column_by_name(name)
                    .cloned()
                    .unwrap_or_else(|| new_null_array(f.data_type(), rows));
                cast(&key, f.data_type())
            } else if name == SNAPSHOT_AT {
                let repeated = arrow::array::UInt32Array::from(vec![0u32; rows]);
                arrow::compute::take(at.as_ref(), &repeated, None)
            } else if name == CHANGE_TYPE {
                Ok(Arc::new(StringArray::from(vec!["delete"; rows])) as ArrayRef)
            } else {
                Ok(new_null_array(f.data_type(), rows))
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}
