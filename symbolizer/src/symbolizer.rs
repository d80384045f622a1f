//! The symbolizer: stacks of addresses in, stacks of named locations out. Here are its state
//! and the steps of one `symbolize` call; each step is a file of its own: process_table.rs
//! (the mappings of each process), location_cache.rs (addresses to cached locations),
//! symbol_source.rs and elf_symbols.rs (user code), kernel_symbols.rs, eviction.rs (bounds).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::config::SymbolizerConfig;
use crate::debuginfod::Debuginfod;
use crate::files::FileTable;
use crate::kallsyms::Kallsyms;
use crate::perf_map::{self, Budget};
use crate::process::Process;
use crate::stats::SymbolizerStats;
use emberprof_model::{FrameKind, KernelSample, Location, Module, Stack};

/// Symbolizes stacks of many processes with shared, run-long caches.
pub struct Symbolizer {
    pub(crate) blaze: blazesym::symbolize::Symbolizer,
    pub(crate) config: SymbolizerConfig,
    pub(crate) files: FileTable,
    pub(crate) processes: HashMap<u32, Process>,
    pub(crate) kallsyms: Kallsyms,
    pub(crate) kernel_cache: HashMap<u64, Arc<Location>>,
    pub(crate) debuginfod: Option<Debuginfod>,
    pub(crate) kernel_module: Arc<Module>,
    pub(crate) unknown: Arc<Location>,
    pub(crate) stats: SymbolizerStats,
    /// Processes found gone at the last `forget_exited`: dropped if still gone at the next,
    /// so that samples drained just before an exit are still symbolized.
    pub(crate) gone_once: HashSet<u32>,
    /// Counts symbolize calls, for least-recently-used eviction.
    pub(crate) tick: u64,
    /// Symbols all perf maps hold, against a host-wide bound.
    pub(crate) perf_map_budget: Arc<Budget>,
    /// Bytes perf maps may still read in this symbolize call.
    pub(crate) perf_map_read_left: u64,
    /// The vdso's functions, read from our own memory at the first vdso frame.
    pub(crate) vdso: std::cell::OnceCell<Option<crate::vdso::Vdso>>,
    /// Names of Python frames, per process.
    pub(crate) python: crate::python::PythonNames,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    /// A symbolizer with the default configuration (no debuginfod).
    pub fn new() -> Self {
        Self::with_config(SymbolizerConfig::default())
    }

    /// A symbolizer with demangling, source lines and inlined functions enabled.
    pub fn with_config(config: SymbolizerConfig) -> Self {
        let blaze = blazesym::symbolize::Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            // Files are addressed by /proc/self/fd paths we keep open: they cannot change.
            .enable_auto_reload(false)
            // Debug files are found here (debug_files.rs), under the process's root too.
            .set_debug_dirs(Some(Vec::<PathBuf>::new()))
            .build();
        let debuginfod = config.debuginfod.clone().map(Debuginfod::new);
        Symbolizer {
            blaze,
            config,
            files: FileTable::default(),
            processes: HashMap::new(),
            kallsyms: Kallsyms::default(),
            kernel_cache: HashMap::new(),
            debuginfod,
            kernel_module: Arc::new(Module {
                path: Arc::from("[kernel.kallsyms]"),
                build_id: None,
            }),
            unknown: Arc::new(Location {
                kind: FrameKind::Native,
                module: None,
                address: 0,
                segment: None,
                frames: Vec::new(),
            }),
            stats: SymbolizerStats::default(),
            gone_once: HashSet::new(),
            tick: 0,
            perf_map_budget: Budget::new(perf_map::HOST_SYMBOLS),
            perf_map_read_left: perf_map::READ_PER_CALL,
            vdso: std::cell::OnceCell::new(),
            python: crate::python::PythonNames::default(),
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> SymbolizerStats {
        let mut s = self.stats;
        s.files = self.files.len() as u64;
        s.cache_entries = self.kernel_cache.len() as u64;
        for id in 0..self.files.len() {
            let f = self.files.get(id);
            s.parsed_heap_bytes += f.parsed_heap;
            s.mapped_resident_bytes += f.resident;
            s.location_bytes += f.locations_bytes();
        }
        s.kernel_bytes =
            self.kernel_cache.len() as u64 * crate::files::LOCATION_BYTES + self.kallsyms.bytes();
        s.cache_bytes = self.cache_bytes();
        s.processes_held = self.processes.len() as u64;
        s.perf_maps.bytes = self
            .processes
            .values()
            .filter_map(|p| p.perf_map.as_ref())
            .map(|m| m.bytes())
            .sum();
        if let Some(d) = &self.debuginfod {
            s.debuginfod_fetched = d.stats.fetched.load(Ordering::Relaxed);
            s.debuginfod_not_found = d.stats.not_found.load(Ordering::Relaxed);
            s.debuginfod_errors = d.stats.errors.load(Ordering::Relaxed);
            s.debuginfod_pending = d.pending() as u64;
        }
        s
    }

    /// Symbolizes the stacks of samples, one output per sample, each leaf first (kernel then
    /// user); user addresses are looked up in the mappings of the sample's own process
    /// image. Never fails: what cannot be named becomes `module+offset` or `[unknown]`.
    pub fn symbolize(&mut self, requests: &[KernelSample]) -> Vec<Stack> {
        self.tick += 1;
        self.perf_map_read_left = perf_map::READ_PER_CALL;
        self.take_fetched_debug_files();
        self.prune_images();
        self.observe_all(requests, self.tick);
        let mut out = self.locate(requests);
        self.place_python(requests, &mut out);
        self.evict_to_bound();
        out
    }

    /// Names the Python frames of the samples that have them and places them among the
    /// native frames (see `python::interleave`).
    fn place_python(&mut self, requests: &[KernelSample], out: &mut [Stack]) {
        if requests.iter().all(|r| r.interpreted.addrs().is_empty()) {
            return;
        }
        self.python.begin_drain();
        for (r, stack) in requests.iter().zip(out.iter_mut()) {
            let entries = r.interpreted.addrs();
            if entries.is_empty() {
                continue;
            }
            let runs = self.python.runs(r.pid, r.exec_id, entries);
            let native_whole = matches!(r.user, emberprof_model::CapturedStack::Addrs(_));
            *stack = crate::python::interleave(stack, &runs, native_whole);
        }
    }

    /// Code objects of process `pid` read while it ran (see `python::PythonNames::adopt`).
    pub fn adopt_python(
        &mut self,
        pid: u32,
        exec_id: u32,
        runtime: crate::python::PythonRuntime,
        codes: Vec<(u64, Option<crate::python::CodeInfo>)>,
    ) {
        self.python.adopt(pid, exec_id, runtime, codes);
    }

    /// How naming Python frames went, since creation.
    pub fn python_stats(&self) -> crate::python::PythonNameStats {
        self.python.stats()
    }
}
