//! The memory pool of a bounded query session (views, the query endpoints): DataFusion's
//! `FairSpillPool` for every operator except `RepartitionExec`, whose buffers it counts but
//! never refuses. In DataFusion 55, a `RepartitionExec` that cannot reserve memory spills to a
//! pool of files, and when two of its inputs spill at once its reader can wait forever on the
//! older file (apache/datafusion#24883, fixed after 55.2): a scale-10 view rebuild hung with
//! every worker parked. Its buffers hold a few batches per partition (its channels are gated),
//! so leaving them out of the limit costs little; sorts and aggregations still spill.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::Result;
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// See the module: a fair spill pool of `bytes` that never refuses `RepartitionExec`.
#[derive(Debug)]
pub struct FairExceptRepartition {
    inner: FairSpillPool,
    repartition: AtomicUsize,
}

impl FairExceptRepartition {
    /// A pool of `bytes` for the operators that can spill or fail.
    pub fn new(bytes: usize) -> Self {
        FairExceptRepartition {
            inner: FairSpillPool::new(bytes),
            repartition: AtomicUsize::new(0),
        }
    }
}

/// Whether a consumer is one of `RepartitionExec`'s (its names: `RepartitionExec[0]`,
/// `RepartitionExec[Merge 0]`).
fn exempt(consumer: &MemoryConsumer) -> bool {
    consumer.name().starts_with("RepartitionExec")
}

impl fmt::Display for FairExceptRepartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (RepartitionExec unbounded)", self.inner)
    }
}

impl MemoryPool for FairExceptRepartition {
    fn name(&self) -> &str {
        "fair_except_repartition"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        if !exempt(consumer) {
            self.inner.register(consumer);
        }
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if !exempt(consumer) {
            self.inner.unregister(consumer);
        }
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        match exempt(reservation.consumer()) {
            true => {
                self.repartition.fetch_add(additional, Ordering::Relaxed);
            }
            false => self.inner.grow(reservation, additional),
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        match exempt(reservation.consumer()) {
            true => {
                self.repartition.fetch_sub(shrink, Ordering::Relaxed);
            }
            false => self.inner.shrink(reservation, shrink),
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        match exempt(reservation.consumer()) {
            true => {
                self.repartition.fetch_add(additional, Ordering::Relaxed);
                Ok(())
            }
            false => self.inner.try_grow(reservation, additional),
        }
    }

    fn reserved(&self) -> usize {
        self.inner.reserved() + self.repartition.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn repartition_buffers_are_counted_never_refused_and_the_rest_is_bounded() {
        let pool: Arc<dyn MemoryPool> = Arc::new(FairExceptRepartition::new(1000));
        let mut buffers = MemoryConsumer::new("RepartitionExec[0]")
            .with_can_spill(true)
            .register(&pool);
        buffers.try_grow(5000).unwrap();
        assert_eq!(pool.reserved(), 5000);
        let mut sort = MemoryConsumer::new("ExternalSorter[0]")
            .with_can_spill(true)
            .register(&pool);
        sort.try_grow(800).unwrap();
        assert!(sort.try_grow(400).is_err(), "past the limit for a sort");
        buffers.shrink(5000);
        assert_eq!(pool.reserved(), 800);
    }
}
