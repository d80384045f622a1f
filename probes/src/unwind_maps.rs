//! Writing unwind tables into the CPU sampler's maps (`unwind.bpf.h`): the shared rules,
//! the entries of every file, and each process's list of mappings with tables.

use aya::maps::{Array, HashMap};
use std::os::fd::AsFd;

use aya::Ebpf;

use crate::abi::{UnwindEntry, UnwindMapping, UnwindProc, UnwindRule, UNWIND_MAPPINGS};
use crate::error::ProbeError;

const RULES: &str = "ep_unwind_rules";
/// The entries array, sized at load.
pub(crate) const ENTRIES: &str = "ep_unwind_entries";
const PROCS: &str = "ep_unwind_procs";

fn array<'a, T: aya::Pod>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<Array<&'a mut aya::maps::MapData, T>, ProbeError> {
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap(name))?;
    Array::try_from(map).map_err(|source| ProbeError::Map { name, source })
}

/// Sets rule `index`.
pub(crate) fn set_rule(ebpf: &mut Ebpf, index: u32, rule: UnwindRule) -> Result<(), ProbeError> {
    array::<UnwindRule>(ebpf, RULES)?
        .set(index, rule, 0)
        .map_err(|source| ProbeError::Map {
            name: RULES,
            source,
        })
}

/// Writes `entries` from index `first` on.
pub(crate) fn set_entries(
    ebpf: &mut Ebpf,
    first: u32,
    entries: &[UnwindEntry],
) -> Result<(), ProbeError> {
    let map = ebpf.map(ENTRIES).ok_or(ProbeError::MissingMap(ENTRIES))?;
    let aya::maps::Map::Array(data) = map else {
        return Err(ProbeError::MissingMap(ENTRIES));
    };
    crate::bpf_map::update_array_batch(data.fd().as_fd(), first, entries).map_err(|source| {
        ProbeError::MapSyscall {
            name: ENTRIES,
            op: "batch update",
            source,
        }
    })
}

/// Lists the mappings with tables of process `pid` (sorted by start; at most 64 kept).
pub(crate) fn set_process(
    ebpf: &mut Ebpf,
    pid: u32,
    mappings: &[UnwindMapping],
) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(PROCS).ok_or(ProbeError::MissingMap(PROCS))?;
    let mut procs: HashMap<_, u32, UnwindProc> =
        HashMap::try_from(map).map_err(|source| ProbeError::Map {
            name: PROCS,
            source,
        })?;
    let mut value = UnwindProc {
        count: 0,
        reserved: 0,
        mappings: [UnwindMapping::default(); UNWIND_MAPPINGS],
    };
    for (slot, m) in value.mappings.iter_mut().zip(mappings) {
        *slot = *m;
        value.count += 1;
    }
    procs
        .insert(pid, value, 0)
        .map_err(|source| ProbeError::Map {
            name: PROCS,
            source,
        })
}

/// Forgets process `pid`'s mappings (its samples are walked by frame pointers again).
pub(crate) fn forget_process(ebpf: &mut Ebpf, pid: u32) {
    if let Some(map) = ebpf.map_mut(PROCS) {
        if let Ok(mut procs) = HashMap::<_, u32, UnwindProc>::try_from(map) {
            // Already gone is fine.
            let _ = procs.remove(&pid);
        }
    }
}
