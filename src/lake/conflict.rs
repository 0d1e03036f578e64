//! Optimistic concurrency between writers of one Delta table: what counts as "another writer
//! committed first", and how long to wait before trying again. Event Grid fires every part of
//! a window at once and each silver commit queues a gold build, so writers collide in bursts;
//! retrying at once would collide again, so each try waits a random time under a bound that
//! doubles (full jitter), which spreads the writers out.

use std::time::Duration;

use deltalake::DeltaTableError;

/// Tries per commit before the writer gives up (the queue's redelivery is the next level).
pub const COMMIT_TRIES: usize = 8;
/// The bound of the first wait; it doubles per try up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(100);
const MAX_WAIT: Duration = Duration::from_secs(8);

/// Whether the commit failed because another writer committed first.
pub fn is_conflict(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_) | DeltaTableError::Transaction { .. }
    )
}

/// The wait after failed try number `tries` (1-based): uniform in `[0, bound)`.
pub fn wait(tries: usize) -> Duration {
    let bound = bound(tries);
    let unit = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
    bound.mul_f64(unit)
}

fn bound(tries: usize) -> Duration {
    let doublings = tries.saturating_sub(1).min(16) as u32;
    FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT)
}

/// Waits before the next try after failed try number `tries`.
pub async fn back_off(tries: usize) {
    tokio::time::sleep(wait(tries)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_random_under_a_bound_that_doubles_up_to_the_cap() {
        assert_eq!(bound(1), FIRST_WAIT);
        assert_eq!(bound(2), FIRST_WAIT * 2);
        assert_eq!(bound(4), FIRST_WAIT * 8);
        assert_eq!(bound(COMMIT_TRIES + 40), MAX_WAIT);
        let waits: Vec<Duration> = (0..50).map(|_| wait(3)).collect();
        assert!(waits.iter().all(|w| *w < bound(3)));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 10, "the waits are not spread: {waits:?}");
    }
}
