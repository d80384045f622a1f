//! The PID filter every program shares (bpf/common.bpf.h): which processes the kernel
//! records, and emberprof's own process left out.

use std::collections::BTreeSet;

use aya::{Ebpf, EbpfLoader};

use crate::abi::MAX_FILTER_PIDS;
use crate::error::ProbeError;

/// The filter's settings a program is loaded with (read-only globals: the verifier prunes
/// what they switch off).
pub(crate) struct PidFilter {
    /// `ep_filter_pids`: record only the processes in `ep_pid_filter`.
    on: u8,
    /// `ep_skip_tgid`: a process never recorded (0: none).
    skip_tgid: u32,
}

impl PidFilter {
    /// On when `pids` are given or `filter_pids` asks for it (the set then comes with
    /// `sync`); emberprof itself is skipped unless `profile_self` or its PID was asked for
    /// explicitly.
    pub(crate) fn new(pids: &[u32], filter_pids: bool, profile_self: bool) -> Self {
        let own = std::process::id();
        PidFilter {
            on: u8::from(filter_pids || !pids.is_empty()),
            skip_tgid: if profile_self || pids.contains(&own) {
                0
            } else {
                own
            },
        }
    }

    /// Sets the filter's globals on a loader.
    pub(crate) fn set_globals<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .set_global("ep_filter_pids", &self.on, true)
            .set_global("ep_skip_tgid", &self.skip_tgid, true);
    }
}

/// Fails if the filter cannot hold `count` processes.
pub(crate) fn check_size(count: usize) -> Result<(), ProbeError> {
    if count > MAX_FILTER_PIDS {
        return Err(ProbeError::TooManyPids {
            got: count,
            max: MAX_FILTER_PIDS,
        });
    }
    Ok(())
}

/// Makes the object's `ep_pid_filter` map hold exactly `pids`: at load, and again whenever
/// a selection changes while the probes run. More than `MAX_FILTER_PIDS` is an error.
pub(crate) fn sync(ebpf: &mut Ebpf, pids: &BTreeSet<u32>) -> Result<(), ProbeError> {
    const NAME: &str = "ep_pid_filter";
    check_size(pids.len())?;
    let map = ebpf.map_mut(NAME).ok_or(ProbeError::MissingMap(NAME))?;
    let mut filter: aya::maps::HashMap<_, u32, u8> = aya::maps::HashMap::try_from(map)
        .map_err(|source| ProbeError::Map { name: NAME, source })?;
    let current: Vec<u32> = filter.keys().filter_map(Result::ok).collect();
    for pid in current {
        if !pids.contains(&pid) {
            // Already gone is fine: another path may have removed it.
            let _ = filter.remove(&pid);
        }
    }
    for pid in pids {
        filter
            .insert(pid, 1, 0)
            .map_err(|source| ProbeError::Map { name: NAME, source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emberprof_is_left_out_unless_asked_for() {
        let own = std::process::id();
        let f = PidFilter::new(&[], false, false);
        assert_eq!((f.on, f.skip_tgid), (0, own));
        let f = PidFilter::new(&[], false, true);
        assert_eq!((f.on, f.skip_tgid), (0, 0));
        let f = PidFilter::new(&[own], false, false);
        assert_eq!((f.on, f.skip_tgid), (1, 0));
        let f = PidFilter::new(&[own + 1], false, false);
        assert_eq!((f.on, f.skip_tgid), (1, own));
        let f = PidFilter::new(&[], true, false);
        assert_eq!((f.on, f.skip_tgid), (1, own));
    }
}
