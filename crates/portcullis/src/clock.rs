//! The wall clock, read here and nowhere else in the binary.
//!
//! The engine never reads a clock (time arrives with each packet); the
//! daemon stamps what the kernel left unstamped, times its ticks, control
//! answers and loss events with [`now`].

use portcullis_engine::Timestamp;

/// Wall-clock time as the engine counts it (0 before 1970).
pub fn now() -> Timestamp {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    Timestamp::from_micros(us)
}
