//! Facts: silver rows upserted by key, each carrying the surrogate keys of the dimension
//! versions valid at its sequence value (point in time), `-1` where no version was valid.
//!
//! Dimension history can change after a fact was written: a late or out-of-order change splits
//! a version, a member arrives after its facts. A change of key `k` with sequence value `t`
//! can only alter versions from `t` on, so each run re-resolves the existing facts of the
//! changed keys at or after the earliest such `t`, and writes those whose keys moved. Which
//! dimension changes the fact has seen is recorded per lookup in its log (`txn` app id
//! `tunelake.gold.lookup:<dimension>`, the dimension's consumed silver version).

mod chunks;
mod columns;
mod handover;
mod lookups;
mod reresolve;
mod write;

use chunks::{ChunkKeys, chunk_files};
use columns::{FactColumns, Lookup, resolve_sql};
use handover::HandOver;
use lookups::earliest_change;

use std::collections::HashSet;

use arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Transaction;
use tracing::debug;

use super::{SilverChanges, TableReport, df_err, recorded, register, schema_of, silver_changes};
use crate::config::TableSpec;
use crate::config::ident::quote_ansi as q;
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout;

/// Brings one fact up to date: new silver rows, and existing rows whose dimension versions
/// changed. New rows are resolved and written in chunks of about `chunk_rows`
/// (`settings.chunk_rows`), whole silver files each.
///
/// The steps, in order: the silver changes since the fact's last build, cut into chunks and
/// described (which needs no dimension, so it overlaps the dimensions' builds in a whole-
/// pipeline run); the lookups opened; for each lookup whose dimension changed, the query of
/// the facts it moves; then the writes (re-resolved facts, the chunks, the deletes), the last
/// of which records the silver and dimension versions consumed.
pub(super) async fn build(
    lake: &Lake,
    table: &TableSpec,
    all: &[TableSpec],
    chunk_rows: usize,
    built: &super::Built,
    report: &mut TableReport,
) -> Result<()> {
    let Some(super::Start {
        name,
        silver: silver_name,
        target,
        app_id,
        changes,
        ..
    }) = super::start(lake, table, report).await?
    else {
        return Ok(());
    };
    let silver_schema = schema_of(&changes.table, &silver_name)?;
    let fact_seq = silver_schema
        .field_with_name(table.sequence_by())
        .map(|f| f.data_type().clone())
        .map_err(|e| Error::arrow(name, e))?;
    let b = Build {
        lake,
        built,
        name,
        ctx: super::session(),
        columns: FactColumns::new(table, all, &silver_schema)?,
        hand_over: HandOver::default(),
        silver_schema,
        fact_seq,
        chunk_rows,
    };
    if changes.files.is_empty() && b.lookups_unchanged(&target).await? {
        debug!("Nothing new in silver or in the lookups' dimensions.");
        return Ok(());
    }
    let mut txns = vec![Transaction::new(&app_id, changes.version as i64)];
    let chunks = chunk_files(&changes, chunk_rows, &silver_name, &b.columns.keys[0])?;
    let stored = b.stored_columns(&target).await?;
    // The chunks are described while the lookups' dimensions are read: both are on the path
    // from silver's end to the fact's first write.
    let (shapes, opened) = futures::try_join!(
        chunks::describe(&b.ctx, &changes.table, &chunks, &b.columns.keys, name),
        b.open_fact_keyed(),
    )?;
    debug!(chunks = chunks.len(), "Described the chunks of new rows.");
    let together = chunks::together(
        &b.ctx,
        &shapes,
        &chunks,
        &changes,
        &target,
        &b.columns.keys,
        name,
    )
    .await?;
    let (mut indexed, mut carried) = (Vec::new(), Vec::new());
    let mut reresolve = Reresolve::default();
    let mut opened = opened;
    for (i, l) in b.columns.lookups.iter().enumerate() {
        let (dim_consumed, carries, is_indexed) = match opened.get_mut(i).and_then(Option::take) {
            Some(opened) => opened,
            None => b.open(l, i, &carried).await?,
        };
        indexed.push(is_indexed);
        carried.push(carries);
        let lookup_id = layout::app_id::fact_lookup(&l.dimension);
        txns.push(Transaction::new(&lookup_id, dim_consumed));
        if let Some(stored) = &stored {
            let seen = recorded(&target, &lookup_id, name).await?;
            if seen.is_none_or(|v| v < dim_consumed) {
                let fact = (&target, stored);
                b.moved_by(&mut reresolve, (l, i), (seen, dim_consumed), fact)
                    .await?;
            }
        }
    }
    let queries = NewRows::sql(table, &b.columns, &indexed);
    let deletes = match &b.columns.delete {
        Some(condition) => {
            let (keys, seq) = (&b.columns.keys, &b.columns.seq);
            super::deletes::of_changes(&b.ctx, &changes, keys, seq, condition, name).await?
        }
        None => Vec::new(),
    };
    let writes = Writes {
        changes: &changes,
        chunks: &chunks,
        shapes: &shapes,
        together,
        reresolve,
        queries,
        deletes,
        indexed,
    };
    b.write(target, writes, txns, report).await
}

/// What one build of a fact works with.
struct Build<'a> {
    lake: &'a Lake,
    built: &'a super::Built,
    name: &'a str,
    ctx: SessionContext,
    columns: FactColumns,
    hand_over: HandOver,
    silver_schema: arrow::datatypes::SchemaRef,
    /// The type of the fact's sequence column.
    fact_seq: DataType,
    /// About how many facts one write holds (`settings.chunk_rows`).
    chunk_rows: usize,
}

/// A lookup opened: the silver version its dimension has consumed, the schema of the
/// columns it carries, and whether it is indexed (see `lookups::open`).
type Opened = (i64, Schema, bool);

impl Build<'_> {
    /// The fact table's columns, with the table registered as `fact`; `None` before its
    /// first commit (nothing to re-resolve then).
    async fn stored_columns(&self, target: &DeltaTable) -> Result<Option<HashSet<String>>> {
        if target.version().is_none() {
            return Ok(None);
        }
        register(&self.ctx, "fact", target, None).await?;
        let schema = schema_of(target, self.name)?;
        Ok(Some(
            schema.fields().iter().map(|f| f.name().clone()).collect(),
        ))
    }

    /// Whether no lookup's dimension has changed since the fact last resolved against it:
    /// each dimension has consumed no silver version past the one the fact recorded. Then a
    /// run with no new facts has nothing to do, and the dimensions' rows are not read (most
    /// timer runs of a quiet source). A dimension built in this run is asked once it has
    /// staged versions (it changed) or finished, as a lookup waits for it: in a whole-pipeline
    /// run its silver changes may not even be committed when the fact starts.
    async fn lookups_unchanged(&self, target: &DeltaTable) -> Result<bool> {
        if target.version().is_none() {
            return Ok(false);
        }
        for l in &self.columns.lookups {
            let lookup_id = layout::app_id::fact_lookup(&l.dimension);
            let Some(seen) = recorded(target, &lookup_id, self.name).await? else {
                return Ok(false);
            };
            if self.built.staged(&l.dimension).await.is_some() {
                return Ok(false);
            }
            self.built.wait(&l.dimension).await;
            // A dimension that cannot say what it consumed is left to the lookup to report.
            let built = super::built_dimension(self.lake, &l.dimension, &l.silver, self.name);
            match built.await {
                Ok((_, consumed)) if consumed <= seen => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// The type a lookup's key value has on the fact's side (`carried`: the carried columns
    /// of the lookups before it).
    fn fact_key(&self, l: &Lookup, carried: &[Schema]) -> Option<DataType> {
        match l.on.as_slice() {
            [columns::From::Fact(c)] => self.silver_schema.field_with_name(c).ok(),
            [columns::From::Lookup(j, c)] => {
                carried.get(*j).and_then(|t| t.field_with_name(c).ok())
            }
            _ => None,
        }
        .map(|f| f.data_type().clone())
    }

    /// Opens lookup `i` (see `lookups::open`).
    async fn open(&self, l: &Lookup, i: usize, carried: &[Schema]) -> Result<Opened> {
        let key = self.fact_key(l, carried);
        let with = (self.lake, self.built, &self.hand_over);
        lookups::open(
            &self.ctx,
            with,
            (l, i),
            (key.as_ref(), &self.fact_seq),
            self.name,
        )
        .await
    }

    /// Opens the lookups keyed by fact columns, one dimension at a time, those already built
    /// first: a dimension still being built holds up none of the others, and one
    /// dimension's rows are in memory at a time. A lookup keyed by a carried column needs its
    /// predecessor's types, so it is opened in turn later (`None` here).
    async fn open_fact_keyed(&self) -> Result<Vec<Option<Opened>>> {
        let mut order: Vec<(usize, &Lookup)> = (self.columns.lookups.iter().enumerate())
            .filter(|(_, l)| l.on.iter().all(|f| matches!(f, columns::From::Fact(_))))
            .collect();
        order.sort_by_key(|(_, l)| self.built.building(&l.dimension));
        let mut opened: Vec<Option<Opened>> = self.columns.lookups.iter().map(|_| None).collect();
        for (i, l) in order {
            opened[i] = Some(self.open(l, i, &[]).await?);
        }
        Ok(opened)
    }

    /// Adds to `reresolve` the stored facts that the changes of lookup `i`'s dimension
    /// between silver versions `seen` and `consumed` can move: the facts of each changed key
    /// at or after the key's earliest change.
    async fn moved_by(
        &self,
        reresolve: &mut Reresolve,
        (l, i): (&Lookup, usize),
        (seen, consumed): (Option<i64>, i64),
        (target, stored): (&DeltaTable, &HashSet<String>),
    ) -> Result<()> {
        let Some(dim_changes) =
            silver_changes(self.lake, &l.silver, seen, Some(consumed as u64)).await?
        else {
            return Ok(());
        };
        if dim_changes.files.is_empty() {
            return Ok(());
        }
        // Changes that all come after every stored fact move none (a timer's run, changes in
        // order): the log's statistics say so without a row read. `first` is a bound no
        // change is before, in the units of the fact's sequence column.
        let latest = crate::lake::stats::latest(target, None, &self.columns.seq, &self.fact_seq);
        let after_every_fact =
            |first: Option<i64>| matches!((latest, first), (Some(l), Some(f)) if f > l);
        let dim_schema = schema_of(&dim_changes.table, &l.silver)?;
        let first = (dim_schema.field_with_name(&l.dim_seq).ok())
            .filter(|f| f.data_type() == &self.fact_seq)
            .and_then(|_| {
                let files = Some(dim_changes.files.as_slice());
                crate::lake::stats::earliest(&dim_changes.table, files, &l.dim_seq, &self.fact_seq)
            });
        if after_every_fact(first) {
            debug!(dimension = %l.dimension, "The dimension's changes postdate every stored fact.");
            return Ok(());
        }
        let dchg = format!("dchg{i}");
        register(
            &self.ctx,
            &dchg,
            &dim_changes.table,
            Some(&dim_changes.files),
        )
        .await?;
        // The earliest change bounds the facts it can move: as a literal, file statistics
        // skip every fact file before it (changes usually postdate all stored facts).
        let Some(earliest) = earliest_change(&self.ctx, &dchg, &l.dim_seq, self.name).await? else {
            return Ok(());
        };
        // The same, when only the rows could say when the changes start.
        let first = crate::lake::stats::units(&earliest, &self.fact_seq);
        if after_every_fact(first) {
            debug!(dimension = %l.dimension, "The dimension's changes postdate every stored fact.");
            return Ok(());
        }
        // In the fact's type, so the bound binds; a value that does not convert only loses
        // the pruning (a date from a timestamp rounds down, which keeps it a lower bound).
        let bound = match earliest.cast_to(&self.fact_seq) {
            Ok(value) => {
                reresolve.params.push(value);
                let at = reresolve.params.len();
                format!("f.{} >= ${at} AND ", q(&self.columns.seq))
            }
            Err(_) => String::new(),
        };
        let pick = self.columns.reresolved_picks(stored);
        let dim_keys = l
            .dim_keys
            .iter()
            .map(|k| q(k))
            .collect::<Vec<_>>()
            .join(", ");
        // Each changed key's earliest change, held once: re-resolution asks for it once per
        // group of fact files.
        let since = format!("since{i}");
        let sql = format!(
            "SELECT {dim_keys}, MIN({seq}) AS __since FROM {dchg} GROUP BY {dim_keys}",
            seq = q(&l.dim_seq)
        );
        let context = "reading the dimension's changed keys";
        let df = (self.ctx.sql(&sql).await).map_err(df_err(self.name, context))?;
        let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
        let batches = df.collect().await.map_err(df_err(self.name, context))?;
        let held = datafusion::datasource::MemTable::try_new(schema, vec![batches])
            .map_err(df_err(self.name, context))?;
        let _ = self.ctx.deregister_table(since.as_str());
        (self
            .ctx
            .register_table(since.as_str(), std::sync::Arc::new(held)))
        .map_err(df_err(self.name, context))?;
        let on = (l.on_columns.iter().zip(&l.dim_keys))
            .map(|(f, k)| format!("f.{} = c.{}", q(f), q(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        // The changed keys are the join's build side (the queries run in
        // `lookups::dimensions_built_once`): the facts stream past them.
        let join = |fact: &str| {
            format!(
                "{since} AS c JOIN {fact} AS f ON {on} WHERE {bound}f.{s} >= c.__since",
                s = q(&self.columns.seq),
            )
        };
        reresolve
            .queries
            .push(format!("SELECT {pick} FROM {}", join("fact")));
        reresolve.files.push(format!(
            "SELECT DISTINCT f.{file} FROM {}",
            join(reresolve::FACT_FILES),
            file = q(reresolve::FILE_COLUMN),
        ));
        Ok(())
    }
}

/// The stored facts that dimension changes can move, as one query per lookup (united), with
/// the bounds they are bound to.
#[derive(Default)]
struct Reresolve {
    queries: Vec<String>,
    /// The same, naming the files that hold the facts (`reresolve::FILE_COLUMN` of
    /// `reresolve::FACT_FILES`).
    files: Vec<String>,
    params: Vec<ScalarValue>,
}

/// The queries of new rows over `changes` (one chunk of the added silver files at a time).
struct NewRows {
    /// Each key's latest row, resolved.
    latest: String,
    /// Every row with a sequence value, resolved: for a chunk in which no key repeats.
    unique: String,
}

impl NewRows {
    fn sql(table: &TableSpec, columns: &FactColumns, indexed: &[bool]) -> Self {
        let keys = columns
            .keys
            .iter()
            .map(|k| q(k))
            .collect::<Vec<_>>()
            .join(", ");
        let base = columns
            .base
            .iter()
            .map(|b| q(b))
            .collect::<Vec<_>>()
            .join(", ");
        let s = q(&columns.seq);
        // Deletes make no fact row: the new rows are each key's latest other row, and the
        // deletes remove what they end once those are written (`deletes::apply`).
        let live = match &columns.delete {
            Some(condition) => format!("(SELECT * FROM changes WHERE NOT ({condition}))"),
            None => "changes".to_string(),
        };
        let latest = if table.sequence_by() == table.cdc_column {
            // Silver holds one row per (keys, watermark value): the latest row of each key is
            // found by an aggregate and a join, far cheaper than a window partitioned by key
            // (one partition per stream).
            let on = (columns.keys.iter())
                .map(|k| format!("c.{k} = l.{k}", k = q(k)))
                .collect::<Vec<_>>()
                .join(" AND ");
            let picked = (columns.base.iter())
                .map(|b| format!("c.{}", q(b)))
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "src_n AS (SELECT {picked} FROM {live} AS c JOIN \
                 (SELECT {keys}, MAX({s}) AS __latest FROM {live} AS a GROUP BY {keys}) AS l \
                 ON {on} AND c.{s} = l.__latest)"
            )
        } else {
            let tiebreak: String = (columns.tiebreak.iter())
                .map(|t| format!(", {} DESC", q(t)))
                .collect();
            format!(
                "ranked AS (SELECT {base}, ROW_NUMBER() OVER (PARTITION BY {keys} ORDER BY {s} DESC{tiebreak}) AS __r \
                 FROM {live} AS c WHERE {s} IS NOT NULL), \
                 src_n AS (SELECT {base} FROM ranked WHERE __r = 1)"
            )
        };
        let resolve = resolve_sql(columns, "src_n", "N", false, indexed);
        NewRows {
            latest: format!("WITH {latest} {resolve}"),
            unique: format!(
                "WITH src_n AS (SELECT {base} FROM {live} AS c WHERE {s} IS NOT NULL) {resolve}"
            ),
        }
    }
}

/// Everything a build writes, in the order it is written.
struct Writes<'a> {
    changes: &'a SilverChanges,
    chunks: &'a [Vec<String>],
    shapes: &'a [ChunkKeys],
    /// The chunks written together by one streaming query (see `chunks::together`).
    together: Vec<usize>,
    reresolve: Reresolve,
    queries: NewRows,
    deletes: Vec<arrow::array::RecordBatch>,
    indexed: Vec<bool>,
}

/// Hands each commit of a build its transactions: all of them to the last, none to the others,
/// so the consumed versions are recorded only once everything is written.
struct Commits {
    pending: Option<Vec<Transaction>>,
    left: usize,
}

impl Commits {
    fn next(&mut self) -> Vec<Transaction> {
        self.left = self.left.saturating_sub(1);
        match self.left {
            0 => self.pending.take().unwrap_or_default(),
            _ => Vec::new(),
        }
    }
}
