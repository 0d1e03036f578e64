//! Freed memory handed back to the system between the phases of a run. Which allocator runs
//! is the binary's choice (src/main.rs): it says here how to release ([`on_release`]), and the
//! library calls [`release`] where one phase's memory has been dropped and a heavy one begins.
//! The allocator returns freed pages by itself after a short delay; a view's build that starts
//! within it would otherwise add its own memory to what the fact build had just freed.

use std::sync::OnceLock;

static RELEASE: OnceLock<fn()> = OnceLock::new();

/// Sets how freed memory is released (once; later calls change nothing).
pub fn on_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Releases freed memory to the system, if the binary said how.
pub fn release() {
    if let Some(release) = RELEASE.get() {
        release();
    }
}
