//! The one BPF object (`bpf/emberprof.bpf.c`) of every loader: the CPU sampler, the
//! off-CPU profiler and the latency histograms. Loaded once, so that the stack-taking
//! profilers walk user stacks by the same unwind tables, written once, and the off-CPU
//! profiler and the scheduler histograms run as one sched_switch program.

use aya::{Btf, EbpfLoader};

use crate::abi::{UnwindEntry, UnwindMapping, UnwindRule, MAX_UNWIND_ENTRIES};
use crate::cpu_sampler::{self, CpuSampler, CpuSamplerConfig};
use crate::error::ProbeError;
use crate::latency::{self, LatencyConfig, LatencyHistograms};
use crate::new_processes;
use crate::off_cpu::{self, OffCpuConfig, OffCpuProfiler};
use crate::pid_filter::{self, PidFilter};
use crate::profiler::UnwindTarget;
use crate::shared_ebpf::SharedEbpf;
use crate::unwind_maps::UnwindMaps;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/emberprof.bpf.o"));

/// The loaders asked for, loaded and not attached yet, and the unwinder's maps.
pub struct Probes {
    /// The CPU sampler, if asked for; `start_sampling` attaches it.
    pub cpu: Option<CpuSampler>,
    /// The off-CPU profiler, if asked for; `attach` attaches it.
    pub off_cpu: Option<OffCpuProfiler>,
    /// The latency histograms, if asked for; `attach` attaches them.
    pub latency: Option<LatencyHistograms>,
    /// Where unwind tables go: load them before attaching, so that no stack of the
    /// processes known at start is walked without.
    pub unwind: UnwindMaps,
    /// The probe profile (stacks of probe hits), if a probe takes stacks.
    pub probe_stacks: Option<crate::probe_stacks::ProbeStacks>,
    /// Where processes running Python are listed for the Python walker (CPU samples).
    pub python: crate::python_maps::PythonProcs,
    /// Python stacks new to the buffers, to name while their process runs.
    pub python_notes: crate::python_maps::PythonNotes,
}

/// The process selection every loader is given (the agent gives all the same): the first
/// one asked for is the object's.
struct Selection<'a> {
    pids: &'a [u32],
    filter_pids: bool,
    profile_self: bool,
}

impl Probes {
    /// Checks privileges and the configurations, and loads the object for the loaders
    /// asked for.
    pub fn load(
        cpu: Option<&CpuSamplerConfig>,
        off: Option<&OffCpuConfig>,
        hists: Option<&LatencyConfig>,
    ) -> Result<Self, ProbeError> {
        if let Some(c) = cpu {
            CpuSampler::check(c)?;
        }
        if let Some(c) = off {
            OffCpuProfiler::check(c)?;
        }
        if let Some(c) = hists {
            LatencyHistograms::check(c)?;
        }
        let selection = cpu
            .map(|c| Selection {
                pids: &c.pids,
                filter_pids: c.filter_pids,
                profile_self: c.profile_self,
            })
            .or(off.map(|c| Selection {
                pids: &c.pids,
                filter_pids: c.filter_pids,
                profile_self: c.profile_self,
            }))
            .or(hists.map(|c| Selection {
                pids: &c.pids,
                filter_pids: c.filter_pids,
                profile_self: c.profile_self,
            }))
            .unwrap_or(Selection {
                pids: &[],
                filter_pids: false,
                profile_self: false,
            });
        let filter = PidFilter::new(
            selection.pids,
            selection.filter_pids,
            selection.profile_self,
        );
        let pids: std::collections::BTreeSet<u32> = selection.pids.iter().copied().collect();
        let probe_stacks = hists.is_some_and(|c| c.probe_stacks);
        let announce = cpu.is_some() || off.is_some_and(|c| c.announce) || probe_stacks;
        let announce_on = u8::from(announce);
        // A loader not asked for keeps its maps at one entry: the object is one, its
        // memory need not be.
        let stack_entries = cpu.map_or(1, |c| c.stack_map_entries);
        let count_entries = cpu.map_or(1, |c| c.count_map_entries);
        let off_entries = off.map_or(1, |c| c.count_map_entries);
        let hist_keys = hists.map_or(1, |c| c.max_keys);
        let preempted = u8::from(off.is_some_and(|c| c.include_preempted));
        let (switch_off_cpu, switch_hists) = (
            u8::from(off.is_some()),
            u8::from(hists.is_some_and(|c| c.core)),
        );
        let event_keys = hists.map_or(1, |c| if c.tcp || c.probes { c.max_keys } else { 1 });
        let min_block_ns = off.map_or(0, |c| {
            u64::try_from(c.min_block.as_nanos()).unwrap_or(u64::MAX)
        });

        let unwind_entries = unwind_entries(cpu, off, hists).unwrap_or(1);
        if !(1..=MAX_UNWIND_ENTRIES).contains(&unwind_entries) {
            return Err(ProbeError::MapSize {
                what: "unwind table",
                got: unwind_entries,
                max: MAX_UNWIND_ENTRIES,
            });
        }

        let btf = Btf::from_sys_fs().map_err(|e| ProbeError::Btf(e.to_string()))?;
        let mut loader = EbpfLoader::new();
        loader
            .btf(Some(&btf))
            // The per-thread records are task-local storage, a map type aya has no
            // wrapper for; only the programs use them.
            .allow_unsupported_maps()
            .set_global("ep_announce_on", &announce_on, true)
            .set_global("ep_include_preempted", &preempted, true)
            .set_global("ep_min_block_ns", &min_block_ns, true)
            .set_global("ep_switch_off_cpu", &switch_off_cpu, true)
            .set_global("ep_switch_hists", &switch_hists, true);
        let (ephemeral_lo, ephemeral_hi) = ephemeral_ports();
        loader
            .set_global("ep_ephemeral_lo", &ephemeral_lo, true)
            .set_global("ep_ephemeral_hi", &ephemeral_hi, true);
        filter.set_globals(&mut loader);
        for name in cpu_sampler::STACK_MAPS {
            loader.set_max_entries(name, stack_entries);
        }
        for name in cpu_sampler::COUNT_MAPS {
            loader.set_max_entries(name, count_entries);
        }
        for name in off_cpu::COUNT_MAPS {
            loader.set_max_entries(name, off_entries);
        }
        for name in latency::HIST_MAPS {
            loader.set_max_entries(name, hist_keys);
        }
        if !probe_stacks {
            for name in crate::probe_stacks::SAMPLE_MAPS
                .into_iter()
                .chain(crate::probe_stacks::STACK_MAPS)
            {
                loader.set_max_entries(name, 1);
            }
        }
        for name in latency::EVENT_MAPS {
            loader.set_max_entries(name, event_keys);
        }
        // Calls and connections in progress: small when not asked for (LRU maps keep a
        // few free entries per CPU, so not one).
        if !hists.is_some_and(|c| c.probes) {
            loader.set_max_entries(latency::PROBE_CALLS, 64);
        }
        if !hists.is_some_and(|c| c.tcp) {
            loader.set_max_entries(latency::TCP_SYN, 64);
        }
        if !hists.is_some_and(|c| c.core) {
            for name in latency::UNUSED_WITHOUT {
                loader.set_max_entries(name, 1);
            }
        }
        // Preallocated and charged to emberprof's memory cgroup whether used or not.
        loader.set_max_entries(crate::unwind_maps::ENTRIES, unwind_entries);
        let mut ebpf = loader.load(OBJECT)?;
        pid_filter::sync(&mut ebpf, &pids)?;
        let unwind = UnwindMaps::take(&mut ebpf)?;
        let python = crate::python_maps::PythonProcs::take(&mut ebpf)?;
        let python_notes = crate::python_maps::PythonNotes::take(&mut ebpf)?;
        let mut ring = if announce {
            let ring = new_processes::take_ring(&mut ebpf)?;
            new_processes::attach_lifecycle(&mut ebpf);
            Some(ring)
        } else {
            None
        };
        let ebpf = SharedEbpf::new(ebpf);
        ebpf.set_switch_parts(
            u32::from(switch_off_cpu) * crate::abi::SWITCH_OFF_CPU
                + u32::from(switch_hists) * crate::abi::SWITCH_HISTS,
        )?;
        let cpu = match cpu {
            Some(_) => Some(CpuSampler::loaded(ebpf.clone(), ring.take())?),
            None => None,
        };
        let off_cpu = match off {
            Some(_) => Some(OffCpuProfiler::loaded(ebpf.clone(), ring.take())?),
            None => None,
        };
        let probe_stacks = if probe_stacks {
            Some(crate::probe_stacks::ProbeStacks::loaded(
                ebpf.clone(),
                ring.take(),
            )?)
        } else {
            None
        };
        let latency = match hists {
            Some(c) => Some(LatencyHistograms::loaded(ebpf, c)?),
            None => None,
        };
        Ok(Probes {
            cpu,
            off_cpu,
            latency,
            probe_stacks,
            unwind,
            python,
            python_notes,
        })
    }
}

/// The host's ephemeral port range (net.ipv4.ip_local_port_range); Linux's default when it
/// cannot be read.
fn ephemeral_ports() -> (u16, u16) {
    let text =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut parts = text.split_whitespace().map(str::parse::<u16>);
    match (parts.next(), parts.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => (lo, hi),
        _ => (32768, 60999),
    }
}

/// The unwind array's size the profilers asked for (`None`: frame pointers only).
pub fn unwind_entries(
    cpu: Option<&CpuSamplerConfig>,
    off: Option<&OffCpuConfig>,
    hists: Option<&LatencyConfig>,
) -> Option<u32> {
    match (cpu, off, hists) {
        (Some(c), _, _) => c.unwind_entries,
        (None, Some(c), _) => c.unwind_entries,
        (None, None, Some(h)) if h.probe_stacks => h.unwind_entries,
        _ => None,
    }
}

impl CpuSampler {
    /// Checks privileges, loads the sampler alone and attaches it to every online CPU
    /// (its user stacks are walked by frame pointers: it has no unwind tables).
    pub fn start(config: &CpuSamplerConfig) -> Result<Self, ProbeError> {
        let probes = Probes::load(Some(config), None, None)?;
        let mut sampler = probes.cpu.ok_or(ProbeError::MissingMap("ep_cpu_sample"))?;
        sampler.start_sampling(config)?;
        Ok(sampler)
    }
}

impl OffCpuProfiler {
    /// Checks privileges, loads the off-CPU profiler alone and attaches it to
    /// sched_switch (its user stacks are walked by frame pointers: it has no unwind
    /// tables).
    pub fn start(config: &OffCpuConfig) -> Result<Self, ProbeError> {
        let probes = Probes::load(None, Some(config), None)?;
        let mut profiler = probes
            .off_cpu
            .ok_or(ProbeError::MissingMap("ep_sched_switch"))?;
        profiler.attach()?;
        Ok(profiler)
    }
}

impl LatencyHistograms {
    /// Checks privileges, loads the histograms alone and attaches them.
    pub fn start(config: &LatencyConfig) -> Result<Self, ProbeError> {
        let probes = Probes::load(None, None, Some(config))?;
        let mut histograms = probes
            .latency
            .ok_or(ProbeError::MissingMap("ep_hist_control"))?;
        histograms.attach()?;
        Ok(histograms)
    }
}

impl UnwindTarget for UnwindMaps {
    fn set_rule(&mut self, index: u32, rule: UnwindRule) -> Result<(), ProbeError> {
        UnwindMaps::set_rule(self, index, rule)
    }

    fn set_entries(&mut self, first: u32, entries: &[UnwindEntry]) -> Result<(), ProbeError> {
        UnwindMaps::set_entries(self, first, entries)
    }

    fn set_process(&mut self, pid: u32, mappings: &[UnwindMapping]) -> Result<(), ProbeError> {
        UnwindMaps::set_process(self, pid, mappings)
    }

    fn forget_process(&mut self, pid: u32) {
        UnwindMaps::forget_process(self, pid)
    }
}
