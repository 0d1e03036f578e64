//! A dimension's attributes copied from another dimension (a snowflake's outrigger, flattened:
//! the track's artist name and genre): each version takes them from the other dimension's
//! current member when the version is written, and keeps them after.
//!
//! That is the classic load-time rule (and the peers'): a track version records the artist as
//! it was when the version arrived. A change of the artist alone rewrites no track version.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, take};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};

use super::{built_dimension, df_err, register};
use crate::config::{LookupSpec, TableSpec};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout::gold_columns::IS_CURRENT;

/// One lookup's current members, by key.
pub(super) struct Outrigger {
    dimension: String,
    /// This dimension's columns matched to the other's keys.
    on: Vec<String>,
    key_types: Vec<DataType>,
    converter: RowConverter,
    /// Row-encoded keys (`converter`) to their member's position, under a fast hash (the
    /// keys are our own data, and this is probed once per row).
    members: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    /// The copied columns, by name, one value per member.
    columns: Vec<(String, ArrayRef)>,
}

impl Outrigger {
    /// Reads the current members of the dimension `l` names (built before this one: see
    /// `Gold::tables`). `owner` is the dimension that copies from it.
    pub(super) async fn open(
        lake: &Lake,
        l: &LookupSpec,
        all: &[TableSpec],
        owner: &str,
    ) -> Result<Self> {
        let fail = |message: String| Error::Gold {
            table: owner.to_string(),
            message,
        };
        let Some((spec, gold)) = all.iter().find_map(|t| {
            t.gold
                .as_ref()
                .filter(|g| g.name == l.dimension)
                .map(|g| (t, g))
        }) else {
            return Err(fail(format!(
                "it looks up gold.{} which is not a dimension of the pipeline",
                l.dimension
            )));
        };
        let (dim, _) = built_dimension(lake, &l.dimension, &spec.silver_name(), owner).await?;
        let ctx = super::session();
        let raw = "__outrigger";
        register(&ctx, raw, &dim, None).await?;
        let quoted = |c: &str| crate::config::ident::quote_ansi(c);
        let keys: Vec<String> = spec.keys.iter().map(|k| quoted(k)).collect();
        let picked: Vec<String> = keys
            .iter()
            .cloned()
            .chain(l.columns.iter().map(|c| quoted(c)))
            .collect();
        let mut filter: Vec<String> = keys.iter().map(|k| format!("{k} IS NOT NULL")).collect();
        if gold.scd_type == 2 {
            filter.push(IS_CURRENT.to_string());
        }
        let sql = format!(
            "SELECT {} FROM {raw} WHERE {}",
            picked.join(", "),
            filter.join(" AND ")
        );
        let reading = df_err(owner, "reading the dimension it copies columns from");
        let df = ctx.sql(&sql).await.map_err(&reading)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(&reading)?;
        let all_rows = concat_batches(&schema, &batches).map_err(|e| Error::arrow(owner, e))?;
        let n_keys = spec.keys.len();
        let key_columns: Vec<ArrayRef> = all_rows.columns()[..n_keys].to_vec();
        let key_types: Vec<DataType> = key_columns.iter().map(|c| c.data_type().clone()).collect();
        let converter = RowConverter::new(
            key_types
                .iter()
                .map(|t| SortField::new(t.clone()))
                .collect(),
        )
        .map_err(|e| Error::arrow(owner, e))?;
        let rows = converter
            .convert_columns(&key_columns)
            .map_err(|e| Error::arrow(owner, e))?;
        let members = rows
            .iter()
            .enumerate()
            .map(|(i, row)| (Box::from(row.as_ref()), i as u32))
            .collect();
        let columns = l
            .columns
            .iter()
            .zip(&all_rows.columns()[n_keys..])
            .map(|(c, a)| (c.clone(), a.clone()))
            .collect();
        Ok(Outrigger {
            dimension: l.dimension.clone(),
            on: l.on.clone(),
            key_types,
            converter,
            members,
            columns,
        })
    }

    /// For each row of `batch`, the copied columns of the member its `on` columns name (NULL
    /// where none is current).
    pub(super) fn values(
        &self,
        batch: &RecordBatch,
        owner: &str,
    ) -> Result<Vec<(String, ArrayRef)>> {
        let arrow_err = |e| Error::arrow(owner, e);
        let on = self
            .on
            .iter()
            .zip(&self.key_types)
            .map(|(c, t)| {
                let column = batch.column_by_name(c).ok_or_else(|| Error::Gold {
                    table: owner.to_string(),
                    message: format!(
                        "its lookup of {} names column {c}, which it does not have",
                        self.dimension
                    ),
                })?;
                cast(column, t).map_err(arrow_err)
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = self.converter.convert_columns(&on).map_err(arrow_err)?;
        let positions: UInt32Array = (0..batch.num_rows())
            .map(|i| {
                if on.iter().any(|c| c.is_null(i)) {
                    None
                } else {
                    self.members.get(rows.row(i).as_ref()).copied()
                }
            })
            .collect();
        self.columns
            .iter()
            .map(|(c, a)| Ok((c.clone(), take(a, &positions, None).map_err(arrow_err)?)))
            .collect()
    }
}
