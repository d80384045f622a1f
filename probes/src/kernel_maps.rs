//! Map plumbing shared by the loaders. The buffer switch: the kernel writes to the buffer a control map
//! names; user space names the other one, waits for programs still writing to the old one,
//! then drains it.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use aya::maps::{Array, Map, MapData};
use aya::{Ebpf, Pod};

use crate::cpu_sampler::{MAX_FILTER_PIDS, MAX_MAP_ENTRIES};
use crate::{bpf_map, preflight, ProbeError};

/// How long a program that read the old buffer index can still be running after the
/// switch. BPF programs run for microseconds without sleeping; this is generous.
const SWITCH_GRACE: Duration = Duration::from_millis(2);

pub(crate) struct DoubleBuffer {
    control: Array<MapData, u32>,
    name: &'static str,
    /// Buffer the kernel is writing to.
    active: u32,
}

impl DoubleBuffer {
    pub(crate) fn new(control: Array<MapData, u32>, name: &'static str) -> Self {
        DoubleBuffer {
            control,
            name,
            active: 0,
        }
    }

    /// Points the kernel at the other buffer; returns the one it was writing to, now quiet.
    pub(crate) fn switch(&mut self) -> Result<usize, ProbeError> {
        let old = self.active;
        let new = 1 - old;
        self.control
            .set(0, new, 0)
            .map_err(|source| ProbeError::Map {
                name: self.name,
                source,
            })?;
        self.active = new;
        std::thread::sleep(SWITCH_GRACE);
        Ok(old as usize)
    }
}

/// Reads and removes every entry of a hash map. An update racing with this either lands
/// before an entry's delete (and is read) or re-creates it (and is read next time).
pub(crate) fn drain_hash<K: Pod + Default, V: Pod + Default>(
    fd: BorrowedFd<'_>,
    name: &'static str,
) -> Result<Vec<(K, V)>, ProbeError> {
    let mut out = Vec::new();
    drain_hash_each(fd, name, |k, v| out.push((k, v)))?;
    Ok(out)
}

/// `drain_hash`, handing each entry to `each` as it is read, so that big values (stacks)
/// are never all held at once.
pub(crate) fn drain_hash_each<K: Pod + Default, V: Pod + Default>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    mut each: impl FnMut(K, V),
) -> Result<(), ProbeError> {
    let keys: Vec<K> = bpf_map::keys(fd).map_err(|source| ProbeError::MapSyscall {
        name,
        op: "get_next_key",
        source,
    })?;
    for key in keys {
        let value =
            bpf_map::lookup_and_delete(fd, &key).map_err(|source| ProbeError::MapSyscall {
                name,
                op: "lookup_and_delete",
                source,
            })?;
        if let Some(value) = value {
            each(key, value);
        }
    }
    Ok(())
}

/// Takes a map out of the loaded object, for a typed wrapper to own.
pub(crate) fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap(name))
}

/// Takes a hash map (plain or per-CPU) out of the loaded object, for raw draining.
pub(crate) fn take_hash(ebpf: &mut Ebpf, name: &'static str) -> Result<MapData, ProbeError> {
    match take(ebpf, name)? {
        Map::HashMap(data) | Map::PerCpuHashMap(data) => Ok(data),
        _ => Err(ProbeError::MissingMap(name)),
    }
}

/// Checks what every loader checks before touching the kernel: the sizes of its main maps
/// (named as in the error), the number of PIDs to filter, and privileges.
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
    if pids.len() > MAX_FILTER_PIDS {
        return Err(ProbeError::TooManyPids {
            got: pids.len(),
            max: MAX_FILTER_PIDS,
        });
    }
    preflight::check()?;
    Ok(())
}

/// Makes the object's `ep_pid_filter` map hold exactly `pids`: at load, and again whenever
/// a selection changes while the probes run. More than `MAX_FILTER_PIDS` is an error.
pub(crate) fn sync_pid_filter(
    ebpf: &mut Ebpf,
    pids: &std::collections::BTreeSet<u32>,
) -> Result<(), ProbeError> {
    const NAME: &str = "ep_pid_filter";
    if pids.len() > MAX_FILTER_PIDS {
        return Err(ProbeError::TooManyPids {
            got: pids.len(),
            max: MAX_FILTER_PIDS,
        });
    }
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

static PROFILE_SELF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether probes loaded from now on record emberprof's own process. Off by default:
/// symbolizing our own samples would parse our own (large) debug info and feed back into
/// what we measure.
pub fn set_profile_self(on: bool) {
    PROFILE_SELF.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// The `ep_skip_tgid` a program is loaded with: our PID, unless self-profiling is on or
/// our PID was asked for explicitly.
pub(crate) fn skip_tgid(pids: &[u32]) -> u32 {
    let own = std::process::id();
    if PROFILE_SELF.load(std::sync::atomic::Ordering::Relaxed) || pids.contains(&own) {
        0
    } else {
        own
    }
}
