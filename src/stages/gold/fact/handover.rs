//! The fact's side of the dimension→fact hand-over: the staged dimension versions a fact
//! resolved against, checked before the fact commits.

use tracing::debug;

use super::columns::Lookup;
use crate::error::{Error, Result};
use crate::lake::Lake;

/// The dimensions whose staged versions a fact resolved against: before its first commit,
/// each must have committed exactly those, as the version after the one they were staged on.
/// Otherwise (the dimension failed, or another run committed to it first) the fact's rows
/// may name versions that do not exist, and nothing of them is committed.
#[derive(Debug, Default)]
pub(super) struct HandOver(std::sync::Mutex<Vec<(String, String, u64, i64)>>);

impl HandOver {
    pub(super) fn expect(&self, l: &Lookup, staged: &super::super::Staged) {
        if let Ok(mut pending) = self.0.lock() {
            pending.push((
                l.dimension.clone(),
                l.silver.clone(),
                staged.base,
                staged.consumed,
            ));
        }
    }

    /// Waits for the dimensions handed over, and checks what they committed.
    pub(super) async fn confirm(
        &self,
        lake: &Lake,
        built: &super::super::Built,
        name: &str,
    ) -> Result<()> {
        let pending = match self.0.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Err(Error::Task(format!("gold.{name}: a lookup task panicked"))),
        };
        for (dimension, silver, base, consumed) in pending {
            built.wait(&dimension).await;
            let (dim, now) = super::super::built_dimension(lake, &dimension, &silver, name).await?;
            if dim.version() != Some(base + 1) || now != consumed {
                return Err(Error::HandOver {
                    table: name.to_string(),
                    reason: format!(
                        "staged on version {base} consuming silver version {consumed}, the table is at version {} consuming {now}",
                        dim.version().map_or("none".to_string(), |v| v.to_string())
                    ),
                    dimension,
                });
            }
            debug!(dimension = %dimension, "The dimension committed what it handed over.");
        }
        Ok(())
    }
}
