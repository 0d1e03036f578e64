//! The dimension→fact hand-over of a whole-pipeline run (`runs::flow`): a fact starts while
//! the dimensions it looks up are still being built, does the work that needs none of them,
//! and resolves against each once it is built, or once it has staged the versions of its
//! single copy-on-write commit (then the fact commits only after the dimension's commit is
//! exactly those versions, see `fact::handover`).
//!
//! Two calls wire it: [`plan`] gives each table of a run its side of the hand-over, and
//! [`Built::done`] says a dimension's build is over, failed or not. The gold stage does the
//! rest. `Progress` and `Staged` are public only so that integration tests can force the
//! interleavings (a fact resolving against staged versions, a staged commit never made).

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

use super::rewrite;
use crate::config::{GoldKind, TableSpec};

/// One table's side of the hand-over in a whole-pipeline run: for each table of
/// `tables`, what it waits for (the dimensions its gold looks up) and, for a dimension,
/// whom it tells. A dimension no fact looks up stages nothing.
pub fn plan(tables: &[TableSpec]) -> Vec<Built> {
    let is_dimension = |t: &TableSpec| {
        t.gold
            .as_ref()
            .is_some_and(|g| g.kind == GoldKind::Dimension)
    };
    let (mut announcers, progress): (HashMap<_, _>, HashMap<_, _>) = tables
        .iter()
        .filter(|t| is_dimension(t))
        .filter_map(|t| t.gold.as_ref())
        .map(|g| {
            let (tx, rx) = watch::channel(Progress::Building);
            ((g.name.clone(), Arc::new(tx)), (g.name.clone(), rx))
        })
        .unzip();
    // What the facts' lookups carry from each dimension: all a dimension's staged versions
    // need besides keys, surrogate keys and periods.
    let mut carried: HashMap<&str, Vec<String>> = HashMap::new();
    for l in tables
        .iter()
        .filter_map(|t| t.gold.as_ref())
        .flat_map(|g| &g.lookups)
    {
        let columns = carried.entry(l.dimension.as_str()).or_default();
        for c in &l.columns {
            if !columns.contains(c) {
                columns.push(c.clone());
            }
        }
    }
    tables
        .iter()
        .map(|table| {
            let mut built = Built::default();
            for l in table.gold.iter().flat_map(|g| &g.lookups) {
                if let Some(done) = progress.get(&l.dimension) {
                    built.expect(&l.dimension, done.clone());
                }
            }
            if let Some(g) = &table.gold
                && let Some(to) = announcers.remove(&g.name)
            {
                let carries = carried.get(g.name.as_str()).cloned().unwrap_or_default();
                built.announce(&g.name, to, carries);
            }
            built
        })
        .collect()
}

/// The dimensions still being built while a fact's gold starts (in a whole-pipeline run,
/// `runs::flow`): each says when its build is over, failed or not, and, for one that ends in
/// a single copy-on-write commit, when its versions are computed but not yet committed
/// ([`Staged`]). A fact resolves against a dimension only after one of those (it may read the
/// dimension's current rows before, for a hand-over on that version); meanwhile it does the
/// work that needs none (its silver changes, its chunks, the dimensions already built). Empty
/// when the dimensions were built before.
#[derive(Debug, Clone, Default)]
pub struct Built {
    waits: HashMap<String, watch::Receiver<Progress>>,
    announcers: HashMap<String, Arc<watch::Sender<Progress>>>,
    /// Per announcing dimension, the columns the facts' lookups carry from it.
    carried: HashMap<String, Vec<String>>,
    /// Whether a fact may resolve against staged versions (false once that failed).
    pub(super) refuse_staged: bool,
}

/// How far a dimension's build has got, as the facts that look it up see it.
#[derive(Debug, Clone, Default)]
pub enum Progress {
    /// Its versions are being computed.
    #[default]
    Building,
    /// Its versions are computed and written, and the commit is under way.
    Staged(Arc<Staged>),
    /// The build is over, failed or not.
    Done,
}

/// A dimension's change, handed to the facts before its commit: the table at `base` with
/// the rows of `replaced` taken out and `rows` added is the table after the commit. A fact
/// resolves against it while the dimension rewrites its files, and commits only once the
/// dimension's commit is the very next version, recording `consumed` (see
/// `fact::HandOver`).
#[derive(Debug)]
pub struct Staged {
    /// The table version the change applies to.
    pub base: u64,
    /// The silver version the dimension's commit records as consumed.
    pub consumed: i64,
    /// The new and changed versions, with only the columns the facts' lookups read (keys,
    /// surrogate key, period, carried columns): they are held until the dimension's commit.
    pub rows: Vec<arrow::array::RecordBatch>,
    /// The surrogate keys whose stored rows the commit removes.
    pub replaced: rewrite::SurrogateKeys,
    /// How many facts have resolved against these versions.
    pub taken: std::sync::atomic::AtomicUsize,
}

impl Built {
    /// The dimension `name` will say on `progress` how far its build has got.
    pub fn expect(&mut self, name: &str, progress: watch::Receiver<Progress>) {
        self.waits.insert(name.to_string(), progress);
    }

    /// The dimension `name` (built with this) tells the facts on `to` how far it has got;
    /// their lookups carry `carried` from it.
    pub fn announce(&mut self, name: &str, to: Arc<watch::Sender<Progress>>, carried: Vec<String>) {
        self.announcers.insert(name.to_string(), to);
        self.carried.insert(name.to_string(), carried);
    }

    /// The columns the facts' lookups carry from the dimension `name`.
    pub(super) fn carried(&self, name: &str) -> &[String] {
        self.carried.get(name).map_or(&[], Vec::as_slice)
    }

    /// Whether a fact waits for the dimension `name`'s staged versions.
    pub(super) fn announces(&self, name: &str) -> bool {
        self.announcers
            .get(name)
            .is_some_and(|to| to.receiver_count() > 0)
    }

    /// Hands the dimension `name`'s staged versions to the facts waiting for it.
    pub(super) fn stage(&self, name: &str, staged: Staged) {
        if let Some(to) = self.announcers.get(name) {
            let _ = to.send(Progress::Staged(Arc::new(staged)));
        }
    }

    /// Says that this table's dimension build is over, failed or not: the facts waiting for
    /// it resolve against what it left.
    pub fn done(&self) {
        for to in self.announcers.values() {
            let _ = to.send(Progress::Done);
        }
    }

    /// Returns once the dimension `name` is not being built.
    pub async fn wait(&self, name: &str) {
        if let Some(progress) = self.waits.get(name) {
            // An error means the build's task is gone: nothing left to wait for.
            let _ = progress
                .clone()
                .wait_for(|p| matches!(p, Progress::Done))
                .await;
        }
    }

    /// Whether the dimension `name` is still being built and may hand its versions over.
    pub(super) fn building(&self, name: &str) -> bool {
        !self.refuse_staged
            && self
                .waits
                .get(name)
                .is_some_and(|p| matches!(*p.borrow(), Progress::Building))
    }

    /// Returns once the dimension `name` has staged its versions (which it returns) or is
    /// not being built (`None`).
    pub(super) async fn staged(&self, name: &str) -> Option<Arc<Staged>> {
        if self.refuse_staged {
            return None;
        }
        let progress = self.waits.get(name)?;
        let mut progress = progress.clone();
        let seen = progress
            .wait_for(|p| !matches!(p, Progress::Building))
            .await
            .ok()?;
        match &*seen {
            Progress::Staged(staged) => Some(staged.clone()),
            _ => None,
        }
    }
}
