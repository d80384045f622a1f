//! Probe points (`--probe`): attaches each user-given probe's programs (a function's entry
//! and return, a USDT site, a tracepoint) in its slot, and reads the slots' hit totals for
//! the rate guard. What they measure is drained with the latency histograms.

use std::collections::BTreeSet;
use std::path::Path;

use aya::maps::{MapData, PerCpuArray};
use aya::programs::uprobe::UProbeLinkId;
use aya::programs::{TracePoint, UProbe};

use crate::abi::PROBE_SLOTS;
use crate::error::ProbeError;
use crate::maps::take_as;
use crate::shared_ebpf::SharedEbpf;

const HITS_MAP: &str = "ep_probe_hits";

/// The programs of one slot, by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Entry,
    Return,
    Usdt,
    Tracepoint,
}

impl Role {
    fn program(self, slot: usize) -> String {
        let role = match self {
            Role::Entry => "entry",
            Role::Return => "return",
            Role::Usdt => "usdt",
            Role::Tracepoint => "tp",
        };
        format!("ep_probe_{role}_{slot}")
    }
}

/// One attachment of a slot's program to a file, to detach it alone (its file gone).
#[derive(Debug)]
pub struct ProbeLink {
    role: Role,
    id: UProbeLinkId,
}

/// The probe slots' programs, loaded on first use, and their hit totals.
pub struct ProbePoints {
    ebpf: SharedEbpf,
    hits: PerCpuArray<MapData, u64>,
    /// Programs loaded (and so verified) so far: (slot, role).
    loaded: BTreeSet<(usize, Role)>,
}

impl ProbePoints {
    /// Takes the slots' hit counters out of a loaded object.
    pub(crate) fn take(ebpf: SharedEbpf) -> Result<Self, ProbeError> {
        let hits = take_as(&mut ebpf.lock(), HITS_MAP)?;
        Ok(ProbePoints {
            ebpf,
            hits,
            loaded: BTreeSet::new(),
        })
    }

    fn check_slot(slot: usize) -> Result<(), ProbeError> {
        if slot >= PROBE_SLOTS {
            return Err(ProbeError::ProbeSlot {
                slot,
                max: PROBE_SLOTS,
            });
        }
        Ok(())
    }

    /// Attaches a uprobe program of `slot` at `offset` (a file offset) of the file at `path`.
    fn attach_uprobe(
        &mut self,
        slot: usize,
        role: Role,
        path: &Path,
        offset: u64,
    ) -> Result<ProbeLink, ProbeError> {
        Self::check_slot(slot)?;
        let name = role.program(slot);
        let what = |verb: &str| format!("{verb} {name} at {}+{offset:#x}", path.display());
        let mut object = self.ebpf.lock();
        let program: &mut UProbe = object
            .program_mut(&name)
            .ok_or_else(|| ProbeError::Attach {
                what: what("finding"),
                source: aya::programs::ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(|source| ProbeError::Attach {
                what: what("finding"),
                source,
            })?;
        if !self.loaded.contains(&(slot, role)) {
            program.load().map_err(|source| ProbeError::Attach {
                what: what("loading"),
                source,
            })?;
            self.loaded.insert((slot, role));
        }
        let id = program
            .attach(None, offset, path, None)
            .map_err(|source| ProbeError::Attach {
                what: what("attaching"),
                source,
            })?;
        Ok(ProbeLink { role, id })
    }

    /// Times the function at `offset` of `path` in `slot`: entry and return.
    pub fn attach_function(
        &mut self,
        slot: usize,
        path: &Path,
        offset: u64,
    ) -> Result<Vec<ProbeLink>, ProbeError> {
        // The return first: an entry without its return would leave calls never timed.
        let ret = self.attach_uprobe(slot, Role::Return, path, offset)?;
        match self.attach_uprobe(slot, Role::Entry, path, offset) {
            Ok(entry) => Ok(vec![ret, entry]),
            Err(e) => {
                let _ = self.detach_links(slot, vec![ret]);
                Err(e)
            }
        }
    }

    /// Counts hits of the USDT site at `offset` of `path` in `slot`.
    pub fn attach_usdt(
        &mut self,
        slot: usize,
        path: &Path,
        offset: u64,
    ) -> Result<ProbeLink, ProbeError> {
        self.attach_uprobe(slot, Role::Usdt, path, offset)
    }

    /// Detaches some of a slot's attachments (their file is gone); the slot's other files
    /// stay probed.
    pub fn detach_links(&mut self, slot: usize, links: Vec<ProbeLink>) -> Result<(), ProbeError> {
        let mut object = self.ebpf.lock();
        for link in links {
            let name = link.role.program(slot);
            let err = |source| ProbeError::Attach {
                what: format!("detaching {name}"),
                source,
            };
            let program: &mut UProbe = object
                .program_mut(&name)
                .ok_or_else(|| err(aya::programs::ProgramError::NotLoaded))?
                .try_into()
                .map_err(err)?;
            program.detach(link.id).map_err(err)?;
        }
        Ok(())
    }

    /// Counts hits of the kernel tracepoint `category:name` (needs tracefs mounted).
    pub fn attach_tracepoint(
        &mut self,
        slot: usize,
        category: &str,
        name: &str,
    ) -> Result<(), ProbeError> {
        Self::check_slot(slot)?;
        let program_name = Role::Tracepoint.program(slot);
        let err = |verb: &str, source| ProbeError::Attach {
            what: format!("{verb} {program_name} at tracepoint {category}:{name}"),
            source,
        };
        let mut object = self.ebpf.lock();
        let program: &mut TracePoint = object
            .program_mut(&program_name)
            .ok_or_else(|| err("finding", aya::programs::ProgramError::NotLoaded))?
            .try_into()
            .map_err(|e| err("finding", e))?;
        if !self.loaded.contains(&(slot, Role::Tracepoint)) {
            program.load().map_err(|e| err("loading", e))?;
            self.loaded.insert((slot, Role::Tracepoint));
        }
        program
            .attach(category, name)
            .map_err(|e| err("attaching", e))?;
        Ok(())
    }

    /// Detaches everything of `slot` (every file and site it was attached to; its
    /// `ProbeLink`s are void then) and unloads its programs.
    pub fn detach(&mut self, slot: usize) -> Result<(), ProbeError> {
        let roles: Vec<Role> = self
            .loaded
            .iter()
            .filter(|(s, _)| *s == slot)
            .map(|(_, r)| *r)
            .collect();
        let mut object = self.ebpf.lock();
        for role in roles {
            let name = role.program(slot);
            let err = |source| ProbeError::Attach {
                what: format!("detaching {name}"),
                source,
            };
            if let Some(program) = object.program_mut(&name) {
                if role == Role::Tracepoint {
                    let p: &mut TracePoint = program.try_into().map_err(err)?;
                    p.unload().map_err(err)?;
                } else {
                    let p: &mut UProbe = program.try_into().map_err(err)?;
                    p.unload().map_err(err)?;
                }
            }
            self.loaded.remove(&(slot, role));
        }
        Ok(())
    }

    /// Each slot's hits since load, summed over CPUs.
    pub fn hits(&self) -> Result<[u64; PROBE_SLOTS], ProbeError> {
        let mut out = [0u64; PROBE_SLOTS];
        for (slot, total) in out.iter_mut().enumerate() {
            let per_cpu = self
                .hits
                .get(&(slot as u32), 0)
                .map_err(|source| ProbeError::Map {
                    name: HITS_MAP,
                    source,
                })?;
            *total = per_cpu.iter().sum();
        }
        Ok(out)
    }
}
