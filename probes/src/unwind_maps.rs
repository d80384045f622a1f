//! The unwinder's maps (`unwind.bpf.h`), taken out of the loaded object: the shared rules,
//! the entries of every file, and each process's list of mappings with tables. Whoever
//! holds them decides what the kernel walks by.

use std::os::fd::AsFd;

use aya::maps::{Array, HashMap, MapData};
use aya::Ebpf;

use crate::abi::{UnwindEntry, UnwindMapping, UnwindProc, UnwindRule, UNWIND_MAPPINGS};
use crate::error::ProbeError;
use crate::maps;

const RULES: &str = "ep_unwind_rules";
/// The entries array, sized at load.
pub(crate) const ENTRIES: &str = "ep_unwind_entries";
const PROCS: &str = "ep_unwind_procs";

/// The unwinder's maps of one loaded object.
pub struct UnwindMaps {
    rules: Array<MapData, UnwindRule>,
    entries: MapData,
    procs: HashMap<MapData, u32, UnwindProc>,
}

impl UnwindMaps {
    /// Takes the three maps out of a loaded object.
    pub(crate) fn take(ebpf: &mut Ebpf) -> Result<Self, ProbeError> {
        let rules =
            Array::try_from(maps::take(ebpf, RULES)?).map_err(|source| ProbeError::Map {
                name: RULES,
                source,
            })?;
        let entries = match maps::take(ebpf, ENTRIES)? {
            aya::maps::Map::Array(data) => data,
            _ => return Err(ProbeError::MissingMap(ENTRIES)),
        };
        let procs =
            HashMap::try_from(maps::take(ebpf, PROCS)?).map_err(|source| ProbeError::Map {
                name: PROCS,
                source,
            })?;
        Ok(UnwindMaps {
            rules,
            entries,
            procs,
        })
    }

    /// Sets rule `index`, shared by every file's table.
    pub fn set_rule(&mut self, index: u32, rule: UnwindRule) -> Result<(), ProbeError> {
        self.rules
            .set(index, rule, 0)
            .map_err(|source| ProbeError::Map {
                name: RULES,
                source,
            })
    }

    /// Writes `entries` from index `first` on, in one batch.
    pub fn set_entries(&mut self, first: u32, entries: &[UnwindEntry]) -> Result<(), ProbeError> {
        crate::bpf_map::update_array_batch(self.entries.fd().as_fd(), first, entries).map_err(
            |source| ProbeError::MapSyscall {
                name: ENTRIES,
                op: "batch update",
                source,
            },
        )
    }

    /// Lists the mappings with tables of process `pid` (sorted by start; at most 64 kept).
    pub fn set_process(&mut self, pid: u32, mappings: &[UnwindMapping]) -> Result<(), ProbeError> {
        let mut value = UnwindProc {
            count: 0,
            reserved: 0,
            mappings: [UnwindMapping::default(); UNWIND_MAPPINGS],
        };
        for (slot, m) in value.mappings.iter_mut().zip(mappings) {
            *slot = *m;
            value.count += 1;
        }
        self.procs
            .insert(pid, value, 0)
            .map_err(|source| ProbeError::Map {
                name: PROCS,
                source,
            })
    }

    /// Forgets process `pid`'s mappings (its stacks are walked by frame pointers again).
    pub fn forget_process(&mut self, pid: u32) {
        // Already gone is fine.
        let _ = self.procs.remove(&pid);
    }
}
