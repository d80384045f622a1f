//! What every loader checks before it touches the kernel.

use crate::error::ProbeError;
use crate::{pid_filter, preflight};

/// Largest double-buffered map accepted (entries per buffer).
pub const MAX_MAP_ENTRIES: u32 = 1 << 20;

/// Checks the sizes of a loader's main maps (named as in the error), the number of PIDs to
/// filter, and privileges.
pub(crate) fn check_start(
    map_sizes: &[(&'static str, u32)],
    pids: &[u32],
) -> Result<(), ProbeError> {
    for &(what, n) in map_sizes {
        if !(1..=MAX_MAP_ENTRIES).contains(&n) {
            return Err(ProbeError::MapSize {
                what,
                got: n,
                max: MAX_MAP_ENTRIES,
            });
        }
    }
    pid_filter::check_size(pids.len())?;
    preflight::check()?;
    Ok(())
}
