//! A fact's lookups opened: each dimension read once (as built, or as its staged commit will
//! leave it), kept as a point-in-time index where its types allow, else as an in-memory table
//! for the join.

use std::collections::HashSet;

use arrow::datatypes::Schema;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use futures::StreamExt;
use tracing::debug;

use super::super::lookup;
use super::super::{df_err, register};
use super::columns::{Lookup, index_function};
use super::handover::HandOver;
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout;
use crate::lake::layout::gold_columns::{self};

/// A session over the same tables whose planner keeps each join's written order and builds
/// a hash table of up to 512 MB or 16M rows in one piece: `resolve_sql` puts every dimension
/// on the build side, so however many facts stream through, each dimension is hashed once and
/// both partitions probe it. Left to statistics, the planner builds on the smaller side, the
/// facts, and probes the whole dimension with every batch of them.
pub(super) fn dimensions_built_once(ctx: &SessionContext) -> SessionContext {
    // The catalog (and every table registered in it) is shared; a fresh default one would
    // replace it for both sessions.
    let mut config = ctx
        .copied_config()
        .with_create_default_catalog_and_schema(false);
    let optimizer = &mut config.options_mut().optimizer;
    optimizer.join_reordering = false;
    optimizer.hash_join_single_partition_threshold = 512 << 20;
    optimizer.hash_join_single_partition_threshold_rows = 16_000_000;
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(ctx.state())
        .with_config(config)
        .build();
    SessionContext::new_with_state(state)
}

/// The earliest sequence value among a dimension's changes (registered as `changes`), or
/// `None` when none has one.
pub(super) async fn earliest_change(
    ctx: &SessionContext,
    changes: &str,
    seq: &str,
    name: &str,
) -> Result<Option<datafusion::common::ScalarValue>> {
    let fail = |e| df_err(name, "reading the dimension's changes")(e);
    let changes = ctx.table(changes).await.map_err(fail)?;
    let bounds = crate::lake::bounds(changes, seq).await.map_err(fail)?;
    Ok(bounds.map(|(earliest, _)| earliest))
}

/// Reads lookup `i`'s dimension once it is built, or once it has staged its versions (then
/// as the table will be after its commit, which `hand_over` is told to wait for); see
/// [`cache_lookup`], which `types`, the fact's key and sequence types, are for. Returns the
/// silver version the dimension has consumed, the schema of the carried columns and whether
/// the lookup is indexed.
pub(super) async fn open(
    ctx: &SessionContext,
    (lake, built, hand_over): (&Lake, &super::super::Built, &HandOver),
    (l, i): (&Lookup, usize),
    (fact_key, fact_seq): (
        Option<&arrow::datatypes::DataType>,
        &arrow::datatypes::DataType,
    ),
    name: &str,
) -> Result<(i64, Schema, bool)> {
    // While the dimension is being built, its current version is the one a hand-over will
    // apply to: it is read meanwhile, off the path from the hand-over to the fact's commit.
    let early = if built.building(&l.dimension) {
        let dim = lake.delta_table(&layout::gold_table(&l.dimension)).await?;
        match dim.version() {
            Some(version) => Some((
                version,
                lookup_rows(ctx, &dim, l, i, (fact_key, fact_seq), name).await?,
            )),
            None => None,
        }
    } else {
        None
    };
    let (rows, dim_consumed, staged) = match built.staged(&l.dimension).await {
        Some(staged) => {
            let rows = match early {
                Some((version, rows)) if version == staged.base => rows,
                _ => {
                    let path = layout::gold_table(&l.dimension);
                    let dim = super::super::table_at(lake, &path, staged.base).await?;
                    lookup_rows(ctx, &dim, l, i, (fact_key, fact_seq), name).await?
                }
            };
            hand_over.expect(l, &staged);
            staged
                .taken
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (rows, staged.consumed, Some(staged))
        }
        None => {
            drop(early);
            built.wait(&l.dimension).await;
            let (dim, consumed) =
                super::super::built_dimension(lake, &l.dimension, &l.silver, name).await?;
            (
                lookup_rows(ctx, &dim, l, i, (fact_key, fact_seq), name).await?,
                consumed,
                None,
            )
        }
    };
    debug!(dimension = %l.dimension, staged = staged.is_some(), "Have the rows of a dimension for its lookup.");
    let (carried, indexed) = cache_lookup(
        ctx,
        (rows, staged.as_deref()),
        l,
        i,
        fact_key,
        fact_seq,
        name,
    )
    .await?;
    debug!(dimension = %l.dimension, indexed, "Read a dimension for its lookup.");
    Ok((dim_consumed, carried, indexed))
}

/// Keeps what a lookup needs of its dimension (read once, by [`lookup_rows`]) in memory:
/// every chunk of new rows and the re-resolution use it, instead of decoding parquet per
/// chunk. An
/// index built as the rows were read (see [`Read`]) takes the staged commit's changes and
/// becomes the lookup's functions; held rows become the index (`lookup::PointInTime`) when
/// their types allow, else an in-memory table under the dimension's name for the join.
/// Returns the schema of the carried columns and whether the lookup is indexed.
pub(super) async fn cache_lookup(
    ctx: &SessionContext,
    (rows, staged): (Read, Option<&super::super::Staged>),
    l: &Lookup,
    i: usize,
    fact_key: Option<&arrow::datatypes::DataType>,
    fact_seq: &arrow::datatypes::DataType,
    name: &str,
) -> Result<(Schema, bool)> {
    let fail = |e| df_err(name, "reading a dimension for its lookup")(e);
    let schema = match &rows {
        Read::Indexed(schema, _) | Read::Rows((schema, _)) => std::sync::Arc::clone(schema),
    };
    let carried = schema
        .project(
            &l.carried
                .iter()
                .filter_map(|c| schema.index_of(c).ok())
                .collect::<Vec<_>>(),
        )
        .map_err(|e| Error::arrow(name, e))?;
    let (index, batches) = match rows {
        Read::Indexed(_, mut indexer) => {
            if let Some(staged) = staged {
                indexer.remove(&staged.replaced);
                for batch in fitted(&schema, staged, name)? {
                    indexer.add(&batch)?;
                }
            }
            (Some(indexer.index()), Vec::new())
        }
        Read::Rows((_, batches)) => match shape(l, (fact_key, fact_seq)) {
            Some(shape) => {
                let fitted = staged
                    .map(|staged| fitted(&schema, staged, name))
                    .transpose()?;
                let rows = lookup::DimensionRows {
                    stored: &batches,
                    replaced: staged.map(|s| &s.replaced),
                    staged: fitted.as_deref().unwrap_or_default(),
                };
                let index = lookup::PointInTime::build(&l.dimension, &schema, rows, &shape)?;
                (index, batches)
            }
            None => (None, batches),
        },
    };
    if let Some(index) = index {
        for f in lookup::functions(&index_function(i), index) {
            ctx.register_udf(f);
        }
        return Ok((carried, true));
    }
    let batches = match staged {
        Some(staged) => with_staged(&schema, batches, staged, (&l.sk, name))?,
        None => batches,
    };
    let table = datafusion::datasource::MemTable::try_new(schema, vec![batches]).map_err(fail)?;
    let _ = ctx.deregister_table(l.dimension.as_str());
    ctx.register_table(l.dimension.as_str(), std::sync::Arc::new(table))
        .map_err(fail)?;
    Ok((carried, false))
}

/// The columns of a dimension that a lookup uses, as read.
pub(super) type Rows = (arrow::datatypes::SchemaRef, Vec<arrow::array::RecordBatch>);

/// A dimension's rows for a lookup: indexed as they were read (see `lookup::Indexer`), or
/// held (for the join, or an index that carries columns).
pub(super) enum Read {
    Indexed(arrow::datatypes::SchemaRef, Box<lookup::Indexer>),
    Rows(Rows),
}

/// Reads the columns of `dim` that lookup `i` uses (keys, surrogate key, validity, carried
/// columns); see [`Read`] for `fact_key` and `fact_seq`, the fact's key and sequence types.
pub(super) async fn lookup_rows(
    ctx: &SessionContext,
    dim: &DeltaTable,
    l: &Lookup,
    i: usize,
    (fact_key, fact_seq): (
        Option<&arrow::datatypes::DataType>,
        &arrow::datatypes::DataType,
    ),
    name: &str,
) -> Result<Read> {
    let fail = |e| df_err(name, "reading a dimension for its lookup")(e);
    let raw = format!("__raw_{i}");
    register(ctx, &raw, dim, None).await?;
    let mut wanted: Vec<&String> = l.dim_keys.iter().chain([&l.sk]).collect();
    let period = gold_columns::PERIOD.map(String::from);
    if l.scd2 {
        wanted.extend(&period);
    }
    wanted.extend(&l.carried);
    let mut seen = HashSet::new();
    wanted.retain(|c| seen.insert(c.as_str()));
    let df = ctx
        .table(raw.as_str())
        .await
        .map_err(fail)?
        .select(
            wanted
                .iter()
                .map(|c| datafusion::prelude::col(datafusion::common::Column::from_name(*c)))
                .collect::<Vec<_>>(),
        )
        .map_err(fail)?;
    let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
    let read = match indexer(dim, &schema, l, (fact_key, fact_seq)) {
        Some(mut indexer) => {
            let mut stream = df.execute_stream().await.map_err(fail)?;
            while let Some(batch) = stream.next().await {
                indexer.add(&batch.map_err(fail)?)?;
            }
            Read::Indexed(schema, Box::new(indexer))
        }
        None => Read::Rows((schema, df.collect().await.map_err(fail)?)),
    };
    let _ = ctx.deregister_table(raw.as_str());
    Ok(read)
}

/// An index to build as `dim`'s rows (`schema`) are read, for a lookup by one integer key
/// that carries no columns (carried ones are taken from the rows, which are then held).
pub(super) fn indexer(
    dim: &DeltaTable,
    schema: &arrow::datatypes::SchemaRef,
    l: &Lookup,
    (fact_key, fact_seq): (
        Option<&arrow::datatypes::DataType>,
        &arrow::datatypes::DataType,
    ),
) -> Option<lookup::Indexer> {
    let shape = shape(l, (fact_key, fact_seq)).filter(|s| s.carried.is_empty())?;
    lookup::Indexer::new(&l.dimension, schema, &shape, key_span(dim, shape.key))
}

/// What an index of lookup `l` needs, when it matches one key the fact has
/// (`fact_key`, `fact_seq`: the fact's key and sequence types).
pub(super) fn shape<'a>(
    l: &'a Lookup,
    (fact_key, fact_seq): (
        Option<&'a arrow::datatypes::DataType>,
        &'a arrow::datatypes::DataType,
    ),
) -> Option<lookup::Shape<'a>> {
    let ([key], Some(fact_key)) = (l.dim_keys.as_slice(), fact_key) else {
        return None;
    };
    Some(lookup::Shape {
        key,
        sk: &l.sk,
        period: l.scd2.then_some(fact_seq),
        carried: &l.carried,
        fact_key,
    })
}

/// The span of `table`'s `key` values by its log's statistics; `None` when a file has none.
pub(super) fn key_span(table: &DeltaTable, key: &str) -> Option<lookup::Span> {
    use serde_json::Value;
    let snapshot = table.snapshot().ok()?;
    let mut span = lookup::Span {
        min: i64::MAX,
        max: i64::MIN,
        rows: 0,
    };
    for file in snapshot.log_data().iter() {
        let rows = file.num_records()?;
        let stats: Value = serde_json::from_str(&file.stats()?).ok()?;
        span.rows += rows;
        let nulls = stats.get("nullCount").and_then(|n| n.get(key)?.as_u64());
        if nulls == Some(rows as u64) {
            continue;
        }
        let bound = |side: &str| stats.get(side)?.get(key)?.as_i64();
        span.min = span.min.min(bound("minValues")?);
        span.max = span.max.max(bound("maxValues")?);
    }
    (span.min <= span.max).then_some(span)
}

/// A dimension's rows (`schema`, read at the version `staged` applies to) as its staged
/// commit leaves them: without the rows of the replaced surrogate keys, with the staged rows.
pub(super) fn with_staged(
    schema: &arrow::datatypes::SchemaRef,
    batches: Vec<arrow::array::RecordBatch>,
    staged: &super::super::Staged,
    (sk, name): (&str, &str),
) -> Result<Vec<arrow::array::RecordBatch>> {
    let mut out = Vec::with_capacity(batches.len() + staged.rows.len());
    for batch in &batches {
        out.push(super::super::rewrite::without_replaced(
            batch,
            sk,
            &staged.replaced,
            name,
        )?);
    }
    out.extend(fitted(schema, staged, name)?);
    Ok(out)
}

/// The rows `staged` adds to a dimension, in its `schema`.
pub(super) fn fitted(
    schema: &arrow::datatypes::SchemaRef,
    staged: &super::super::Staged,
    name: &str,
) -> Result<Vec<arrow::array::RecordBatch>> {
    staged
        .rows
        .iter()
        .map(|batch| crate::lake::writers::fit(batch, schema).map_err(|e| Error::arrow(name, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, RecordBatch};
    use std::sync::Arc;

    /// The span comes from every file's statistics; a file whose keys are all NULL counts
    /// its rows but no bounds.
    #[tokio::test]
    async fn a_tables_key_span_is_read_from_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::lake::Lake::open(dir.path().to_str().unwrap()).unwrap();
        let mut table = lake.delta_table("gold/dim").await.unwrap();
        assert_eq!(key_span(&table, "id"), None, "no table yet");
        for keys in [
            vec![Some(9), None, Some(5)],
            vec![Some(100), Some(7)],
            vec![None, None],
        ] {
            let batch =
                RecordBatch::try_from_iter([("id", Arc::new(Int64Array::from(keys)) as ArrayRef)])
                    .unwrap();
            table = table.write(vec![batch]).await.unwrap();
        }
        let span = key_span(&table, "id");
        let expected = super::lookup::Span {
            min: 5,
            max: 100,
            rows: 7,
        };
        assert_eq!(span, Some(expected));
        assert_eq!(
            key_span(&table, "other"),
            None,
            "no statistics of the column"
        );
    }
}
