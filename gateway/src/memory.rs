//! Gives freed heap memory back to the system on a timer, so that RSS follows what the gateway
//! holds rather than the most it ever held (issue 14).
//!
//! glibc's malloc keeps freed chunks for reuse and returns memory only from the top of each
//! arena. Sessions come and go (each with its buffers and one slot per subscription), snapshot
//! bursts are framed and freed, and the feed thread's snapshots are freed by whichever thread
//! drops them last: the free memory ends up in holes between live data, counted in RSS, never
//! given back. `malloc_trim(0)` releases every whole free page wherever it sits. Measured: a
//! release gateway at 28 MB RSS with 1,000 clients fell to 29 MB after they left, and to 21 MB
//! after one `malloc_trim` (docs/operations.md, "Memory over time").
//!
//! Never call it on a hot path: it walks and locks each arena in turn.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How often freed memory is returned. Often enough that RSS falls within a minute of clients
/// leaving; rare enough that the walk (about a millisecond per 30 MB of heap, with each arena
/// locked in turn) is no cost to the data path.
pub const TRIM_INTERVAL: Duration = Duration::from_secs(30);

/// Returns freed heap memory to the system every [`TRIM_INTERVAL`] until `shutdown`.
pub async fn return_freed_memory(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(TRIM_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let started = Instant::now();
                let released = trim();
                tracing::debug!(
                    released,
                    took_us = started.elapsed().as_micros() as u64,
                    "returned freed heap memory to the system"
                );
            }
        }
    }
}

/// One `malloc_trim(0)`; whether any memory was released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() -> bool {
    // SAFETY: malloc_trim has no preconditions; it only releases free pages.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators return memory by themselves, or do not offer this.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() -> bool {
    false
}
