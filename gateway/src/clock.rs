//! The two clocks of the gateway: wall-clock nanoseconds (quote `ts`, `welcome.ts`) and a
//! monotonic nanosecond count (deadlines, throttles), both cheap enough for the hot path.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch.
pub fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// Monotonic nanoseconds since the first call in this process.
pub fn mono_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}
