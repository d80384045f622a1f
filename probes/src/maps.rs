//! Typed access to the maps of a loaded object: taking them out for a loader to own,
//! draining hash maps, and summing per-CPU counters.

use std::os::fd::BorrowedFd;

use aya::maps::{Map, MapData, PerCpuArray};
use aya::{Ebpf, Pod};

use crate::bpf_map;
use crate::error::ProbeError;

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

/// Takes a typed map (array, per-CPU array, ring buffer) out of the loaded object.
pub(crate) fn take_as<T: TryFrom<Map, Error = aya::maps::MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, ProbeError> {
    T::try_from(take(ebpf, name)?).map_err(|source| ProbeError::Map { name, source })
}

/// A per-CPU `__u64` array indexed by a C counter enum, such as `ep_counters`.
pub(crate) struct PerCpuCounters {
    array: PerCpuArray<MapData, u64>,
    name: &'static str,
}

impl PerCpuCounters {
    /// Takes the counter array `name` out of the loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Self, ProbeError> {
        Ok(PerCpuCounters {
            array: take_as(ebpf, name)?,
            name,
        })
    }

    /// Each counter of `all` (the Rust twin of the C enum, in index order) summed over CPUs.
    pub(crate) fn totals<C: Copy + Into<u32>>(
        &self,
        all: &[C],
    ) -> Result<impl Iterator<Item = (C, u64)>, ProbeError> {
        let mut out = Vec::with_capacity(all.len());
        for &counter in all {
            let per_cpu = self
                .array
                .get(&counter.into(), 0)
                .map_err(|source| ProbeError::Map {
                    name: self.name,
                    source,
                })?;
            out.push((counter, per_cpu.iter().sum()));
        }
        Ok(out.into_iter())
    }
}

/// Waits up to `timeout` for a ring buffer (any pollable map) to have data; an interrupted
/// or failed wait returns early, and the caller reads what is there.
pub(crate) fn wait_readable(fd: std::os::fd::RawFd, timeout: std::time::Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, living across the call.
    unsafe { libc::poll(&mut pfd, 1, millis) };
}

/// Reads and empties a stack map (hash -> `struct ep_stack`): each stack by its hash.
pub(crate) fn drain_stacks(
    fd: BorrowedFd<'_>,
    name: &'static str,
) -> Result<std::collections::HashMap<u64, emberprof_model::CapturedStack>, ProbeError> {
    let mut stacks = std::collections::HashMap::new();
    drain_hash_each(fd, name, |hash: u64, trace: crate::abi::StackTrace| {
        stacks.insert(hash, crate::abi::captured_stack(trace.frames()));
    })?;
    Ok(stacks)
}
