//! The symbolizer: stacks of addresses in, stacks of named locations out.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use blazesym::symbolize::source::{Elf, Source};
use blazesym::symbolize::{Input, Sym, Symbolized};

use crate::debug_files::{DebugSearch, DEFAULT_DEBUG_DIRS};
use crate::debuginfod::{Debuginfod, DebuginfodConfig, Lookup};
use crate::elf_info::ElfInfo;
use crate::files::{parent_dir, FileId, FileTable, SymbolSource, LOCATION_BYTES};
use crate::kallsyms::Kallsyms;
use crate::perf_map::{self, Budget, PerfMapStats};
use crate::process::{Process, ProcessSnapshot};
use emberprof_model::{Frame, FrameKind, KernelSample, Location, Module, Stack};

/// Counters of the symbolizer's work since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SymbolizerStats {
    /// Addresses answered from the location cache.
    pub cache_hits: u64,
    /// Addresses that had to be symbolized.
    pub cache_misses: u64,
    /// Distinct files opened (one per build ID, else per device, inode and mtime).
    pub files: u64,
    /// Times a file's symbols were loaded and parsed (again after an eviction).
    pub files_parsed: u64,
    /// Files named from a separate debug file (debug directory, debug link or debuginfod).
    pub debug_files: u64,
    /// Bytes the caches account for now: parsed files, resolved locations, kernel symbols.
    pub cache_bytes: u64,
    /// Files whose parsed symbols and locations were let go to stay under the byte bound.
    pub evictions: u64,
    /// Processes whose mappings were captured.
    pub processes: u64,
    /// Processes that were gone before we could read their mappings.
    pub processes_gone: u64,
    /// Processes captured by the watcher while alive, before their first drain.
    pub processes_adopted: u64,
    /// Files whose symbols could not be read at all (corrupt or unsupported).
    pub file_errors: u64,
    /// Addresses left unnamed because their file's symbols could not be read.
    pub addresses_unreadable: u64,
    /// Entries in the location caches now.
    pub cache_entries: u64,
    /// Times the kernel location cache reached its limit and was emptied.
    pub cache_resets: u64,
    /// Processes whose mappings are held now.
    pub processes_held: u64,
    /// Times the open files passed their limit and every file and parsed table was let go.
    pub file_resets: u64,
    /// Frames named from a perf map (JIT code).
    pub jit_frames: u64,
    /// Debug files fetched from debuginfod.
    pub debuginfod_fetched: u64,
    /// Build IDs no debuginfod server had.
    pub debuginfod_not_found: u64,
    /// debuginfod requests that failed (unreachable, timeout, server error).
    pub debuginfod_errors: u64,
    /// debuginfod fetches under way now.
    pub debuginfod_pending: u64,
    /// Perf maps refused, lines skipped, names cut, symbols dropped, memory held.
    pub perf_maps: PerfMapStats,
}

/// Default bound on files held open.
pub const DEFAULT_FILE_LIMIT: usize = 4096;

/// Default memory bound of the symbol caches.
pub const DEFAULT_CACHE_BYTES: u64 = 128 << 20;

/// Default idle time, in symbolize calls, before a file may be let go (a minute of 1 s drains).
pub const DEFAULT_MIN_IDLE_CALLS: u64 = 60;

/// Kernel addresses kept resolved before that cache is emptied.
const KERNEL_CACHE_ENTRIES: usize = 200_000;

/// How the symbolizer finds symbols and how much it may keep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolizerConfig {
    /// Directories holding separate debug files (`.build-id/xx/rest.debug` and debug-link
    /// names); searched on the host and inside the process's root.
    pub debug_dirs: Vec<PathBuf>,
    /// Fetch missing debug files by build ID; `None` to never ask.
    pub debuginfod: Option<DebuginfodConfig>,
    /// Memory the caches may hold: parsed files and resolved locations, least recently used
    /// let go first.
    pub cache_bytes: u64,
    /// Files held open before every file is let go and opened again as needed.
    pub file_limit: usize,
    /// A file is let go for the memory bound only after this many symbolize calls (drains)
    /// without use: the working set stays even past the bound, since letting it go would
    /// parse it again at every drain (and a binary bigger than the bound would never stop
    /// being parsed).
    pub min_idle_calls: u64,
}

impl Default for SymbolizerConfig {
    fn default() -> Self {
        SymbolizerConfig {
            debug_dirs: DEFAULT_DEBUG_DIRS.iter().map(PathBuf::from).collect(),
            debuginfod: None,
            cache_bytes: DEFAULT_CACHE_BYTES,
            file_limit: DEFAULT_FILE_LIMIT,
            min_idle_calls: DEFAULT_MIN_IDLE_CALLS,
        }
    }
}

/// Where one address resolves: a cache key or a fixed location.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(FileId, u64),
    Kernel(u64),
}

/// Symbolizes stacks of many processes with shared, run-long caches.
pub struct Symbolizer {
    blaze: blazesym::symbolize::Symbolizer,
    config: SymbolizerConfig,
    files: FileTable,
    processes: HashMap<u32, Process>,
    kallsyms: Kallsyms,
    kernel_cache: HashMap<u64, Arc<Location>>,
    debuginfod: Option<Debuginfod>,
    kernel_module: Arc<Module>,
    unknown: Arc<Location>,
    stats: SymbolizerStats,
    /// Processes found gone at the last `forget_exited`: dropped if still gone at the next,
    /// so that samples drained just before an exit are still symbolized.
    gone_once: HashSet<u32>,
    /// Counts symbolize calls, for least-recently-used eviction.
    tick: u64,
    /// Symbols all perf maps hold, against a host-wide bound.
    perf_map_budget: Arc<Budget>,
    /// Bytes perf maps may still read in this symbolize call.
    perf_map_read_left: u64,
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
        }
    }

    /// Bounds the files held open: past `files`, `forget_exited` lets all of them go (live
    /// processes are captured again at their next sample).
    pub fn set_file_limit(&mut self, files: usize) {
        self.config.file_limit = files.max(1);
    }

    /// Bounds the memory of the caches; the least recently used files go first.
    pub fn set_cache_bytes(&mut self, bytes: u64) {
        self.config.cache_bytes = bytes.max(1);
    }

    /// Calls without use after which a file may be let go for the memory bound.
    pub fn set_min_idle_calls(&mut self, calls: u64) {
        self.config.min_idle_calls = calls;
    }

    /// Counters since creation.
    pub fn stats(&self) -> SymbolizerStats {
        let mut s = self.stats;
        s.files = self.files.len() as u64;
        s.cache_entries = self.kernel_cache.len() as u64;
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

    fn cache_bytes(&self) -> u64 {
        let files: u64 = (0..self.files.len())
            .map(|id| self.files.get(id).bytes())
            .sum();
        files + self.kernel_cache.len() as u64 * LOCATION_BYTES + self.kallsyms.bytes()
    }

    /// Drops the mappings of processes that have exited, once their samples have been
    /// symbolized (call between drains): a process is dropped at the second call that finds
    /// it gone. Returns how many were dropped.
    pub fn forget_exited(&mut self) -> usize {
        let before = self.processes.len();
        let gone: HashSet<u32> = self
            .processes
            .keys()
            .copied()
            .filter(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        let previously = std::mem::take(&mut self.gone_once);
        self.processes
            .retain(|pid, _| !(gone.contains(pid) && previously.contains(pid)));
        self.gone_once = gone
            .into_iter()
            .filter(|pid| self.processes.contains_key(pid))
            .collect();
        let forgotten = before - self.processes.len();
        if self.files.len() > self.config.file_limit {
            // Processes refer to files by their place in the table: all go together.
            let mut fresh = Symbolizer::with_config(self.config.clone());
            fresh.debuginfod = self.debuginfod.take();
            fresh.stats = self.stats;
            fresh.stats.file_resets += 1;
            *self = fresh;
        }
        forgotten
    }

    /// Captures a process's mappings now, while it is alive. Symbolizing its stacks later
    /// works even after it exits.
    pub fn observe(&mut self, pid: u32) {
        if !self.processes.contains_key(&pid) {
            let process = Process::snapshot(pid, &mut self.files);
            self.stats.processes += 1;
            if !process.newest().is_some_and(|i| i.seen_alive) {
                self.stats.processes_gone += 1;
            }
            self.processes.insert(pid, process);
        }
    }

    /// Takes a snapshot made by a watcher when the process (or its new image after an exec)
    /// was first sampled; it may be gone now, and then only its announced name is kept. The
    /// images it replaces stay for samples taken before the exec.
    pub fn adopt(&mut self, pid: u32, snapshot: ProcessSnapshot) {
        if !snapshot.alive() && snapshot.name().is_none() {
            return;
        }
        self.stats.processes += 1;
        self.stats.processes_adopted += 1;
        self.gone_once.remove(&pid);
        match self.processes.get_mut(&pid) {
            Some(p) => p.add(pid, snapshot, &mut self.files, self.tick),
            None => {
                let process = Process::from_snapshot(pid, snapshot, &mut self.files);
                self.processes.insert(pid, process);
            }
        }
    }

    /// The name (comm) of the process's image `exec_id` (else its newest), if known.
    pub fn process_name(&self, pid: u32, exec_id: Option<u32>) -> Option<Arc<str>> {
        let p = self.processes.get(&pid)?;
        p.images.get(p.image_index(exec_id)?)?.name.clone()
    }

    /// Symbolizes the stacks of samples, one output per sample, each leaf first (kernel then
    /// user); user addresses are looked up in the mappings of the sample's own process
    /// image. Never fails: what cannot be named becomes `module+offset` or `[unknown]`.
    pub fn symbolize(&mut self, requests: &[KernelSample]) -> Vec<Stack> {
        self.tick += 1;
        self.perf_map_read_left = perf_map::READ_PER_CALL;
        self.take_fetched_debug_files();
        let tick = self.tick;
        for p in self.processes.values_mut() {
            p.prune(tick);
        }
        let mut refreshed = HashSet::new();
        for r in requests {
            self.observe(r.pid);
            // A leaf outside every mapping of the newest image means the process mapped code
            // since we looked (dlopen, or an exec not announced): look again, once per
            // batch. An older image (the sample's own, exec'd away from) is what it was.
            // Callers are not checked: frame-pointer walks through code built without them
            // yield garbage there.
            let stale = self.processes.get(&r.pid).is_some_and(|p| {
                let newest = p.images.len().checked_sub(1);
                p.image_index(Some(r.exec_id)) == newest
                    && p.newest().is_some_and(|i| {
                        i.seen_alive && r.user.addrs().first().is_some_and(|&a| i.find(a).is_none())
                    })
            });
            if stale && refreshed.insert(r.pid) {
                let snapshot = ProcessSnapshot::read_unopened(r.pid);
                if snapshot.alive() {
                    if let Some(p) = self.processes.get_mut(&r.pid) {
                        p.add(r.pid, snapshot, &mut self.files, self.tick);
                    }
                }
            }
        }
        let keyed: Vec<Vec<Result<Key, Arc<Location>>>> =
            requests.iter().map(|r| self.keys(r)).collect();
        self.fill_cache(&keyed);
        let out = keyed
            .into_iter()
            .map(|keys| {
                keys.into_iter()
                    .map(|k| match k {
                        Ok(key) => self.cached(key).unwrap_or_else(|| self.unknown.clone()),
                        Err(fixed) => fixed,
                    })
                    .collect()
            })
            .collect();
        self.evict_to_bound();
        out
    }

    fn cached(&self, key: Key) -> Option<Arc<Location>> {
        match key {
            Key::User(file, offset) => self.files.get(file).locations.get(&offset).cloned(),
            Key::Kernel(addr) => self.kernel_cache.get(&addr).cloned(),
        }
    }

    /// Files whose debug info arrived from debuginfod are named again from it.
    fn take_fetched_debug_files(&mut self) {
        let Some(d) = self.debuginfod.as_mut() else {
            return;
        };
        for build_id in d.arrived() {
            if let Some(id) = self.files.by_build_id(&build_id) {
                self.unload(id);
            }
        }
    }

    fn unload(&mut self, id: FileId) {
        let file = self.files.get_mut(id);
        let path = match &file.source {
            Some(SymbolSource::DebugFile(p)) => Some(p.clone()),
            Some(SymbolSource::Itself) => Some(file.path.clone()),
            None => None,
        };
        file.unload();
        if let Some(path) = path {
            let evict =
                blazesym::symbolize::evict::Evict::Elf(blazesym::symbolize::evict::Elf::new(path));
            if let Err(e) = self.blaze.evict(&evict) {
                tracing::debug!(error = %e, "cannot evict parsed file");
            }
        }
    }

    /// Lets the least recently used files go until the caches fit their bound, sparing
    /// files used within the last `min_idle_calls` calls.
    fn evict_to_bound(&mut self) {
        let idle_before = self.tick.saturating_sub(self.config.min_idle_calls);
        let mut total = self.cache_bytes();
        if total <= self.config.cache_bytes {
            return;
        }
        let mut by_age: Vec<(u64, FileId, u64)> = self
            .files
            .iter_mut()
            .map(|(id, f)| (f.last_used, id, f.bytes()))
            .filter(|&(used, _, bytes)| bytes > 0 && used < self.tick && used <= idle_before)
            .collect();
        by_age.sort_unstable();
        for (_, id, bytes) in by_age {
            if total <= self.config.cache_bytes {
                break;
            }
            self.unload(id);
            self.stats.evictions += 1;
            total = total.saturating_sub(bytes);
        }
    }

    /// Cache keys for a stack, or a fixed location for addresses outside any known file.
    fn keys(&mut self, r: &KernelSample) -> Vec<Result<Key, Arc<Location>>> {
        // Callers' addresses are return addresses: the call is the instruction before.
        let adjust = |i: usize, addr: u64| if i == 0 { addr } else { addr.saturating_sub(1) };
        let (user, kernel) = (r.user.addrs(), r.kernel.addrs());
        let mut out = Vec::with_capacity(kernel.len() + user.len());
        out.extend(
            kernel
                .iter()
                .enumerate()
                .map(|(i, &a)| Ok(Key::Kernel(adjust(i, a)))),
        );
        let unknown = self.unknown.clone();
        let mut process = self.processes.get_mut(&r.pid);
        let image = process
            .as_deref()
            .and_then(|p| p.image_index(Some(r.exec_id)));
        for (i, &addr) in user.iter().enumerate() {
            let addr = adjust(i, addr);
            let (Some(p), Some(image)) = (process.as_deref_mut(), image) else {
                out.push(Err(unknown));
                break;
            };
            let Some(m) = p.images[image].find(addr) else {
                // Nothing is executable there: the walk has left the real stack (a frame
                // without a frame pointer). One [unknown] ends it, so that garbage tails
                // do not split one stack into many.
                out.push(Err(unknown));
                break;
            };
            let offset = addr - m.start + m.offset;
            out.push(match (m.file, m.module.clone()) {
                (Some(file), _) => Ok(Key::User(file, offset)),
                (None, None) => {
                    // Anonymous executable memory: JIT code, named by the process's perf map.
                    let mut cx = perf_map::Context {
                        stats: &mut self.stats.perf_maps,
                        tick: self.tick,
                        budget: &self.perf_map_budget,
                        read_left: &mut self.perf_map_read_left,
                    };
                    let name = p.perf_map.as_mut().and_then(|pm| pm.lookup(addr, &mut cx));
                    if name.is_some() {
                        self.stats.jit_frames += 1;
                    }
                    Err(Arc::new(Location {
                        kind: FrameKind::Native,
                        module: None,
                        address: addr,
                        segment: None,
                        frames: name
                            .map(|function| {
                                vec![Frame {
                                    function,
                                    file: None,
                                    line: 0,
                                }]
                            })
                            .unwrap_or_default(),
                    }))
                }
                (None, module) => Err(Arc::new(Location {
                    kind: FrameKind::Native,
                    module,
                    address: offset,
                    segment: None,
                    frames: Vec::new(),
                })),
            });
        }
        out
    }

    /// Symbolizes every key not yet cached, one blazesym call per file.
    fn fill_cache(&mut self, keyed: &[Vec<Result<Key, Arc<Location>>>]) {
        let mut per_file: HashMap<FileId, HashSet<u64>> = HashMap::new();
        let mut kernel: HashSet<u64> = HashSet::new();
        for key in keyed.iter().flatten().filter_map(|k| k.as_ref().ok()) {
            match *key {
                Key::User(file, offset) => {
                    let f = self.files.get_mut(file);
                    f.last_used = self.tick;
                    if f.locations.contains_key(&offset) {
                        self.stats.cache_hits += 1;
                    } else {
                        per_file.entry(file).or_default().insert(offset);
                    }
                }
                Key::Kernel(addr) => {
                    if self.kernel_cache.contains_key(&addr) {
                        self.stats.cache_hits += 1;
                    } else {
                        kernel.insert(addr);
                    }
                }
            }
        }
        for (file, offsets) in per_file {
            let offsets: Vec<u64> = offsets.into_iter().collect();
            self.stats.cache_misses += offsets.len() as u64;
            let named = self.symbolize_in_file(file, &offsets);
            let f = self.files.get_mut(file);
            for (offset, location) in offsets.iter().zip(named) {
                f.locations.insert(*offset, location);
            }
        }
        if !kernel.is_empty() {
            self.fill_kernel(kernel);
        }
    }

    /// Decides where a file's names come from, at its first use: its own DWARF, a separate
    /// debug file here, one fetched from debuginfod, or its own symbol tables.
    fn prepare(&mut self, id: FileId) {
        let file = self.files.get_mut(id);
        if file.source.is_some() || file.broken {
            return;
        }
        let info = match file.info.get_or_insert_with(|| ElfInfo::read(&file.path)) {
            Ok(info) => info.clone(),
            Err(error) => {
                tracing::warn!(module = %file.module.path, %error,
                    "cannot read symbols; frames in it are named module+offset");
                file.broken = true;
                self.stats.file_errors += 1;
                return;
            }
        };
        let mut source = SymbolSource::Itself;
        file.awaiting_debuginfo = false;
        if !info.has_dwarf {
            let search = DebugSearch {
                dirs: &self.config.debug_dirs,
                root: file.root.as_deref(),
                binary_dir: parent_dir(&file.module.path),
            };
            if let Some(found) = search.find(&info) {
                source = SymbolSource::DebugFile(found);
            } else if let (Some(d), Some(build_id)) =
                (self.debuginfod.as_mut(), file.module.build_id.as_deref())
            {
                match d.lookup(build_id) {
                    Lookup::Found(path) => source = SymbolSource::DebugFile(path),
                    Lookup::Pending => file.awaiting_debuginfo = true,
                    Lookup::Missing => {}
                }
            }
        }
        let parsed = match &source {
            SymbolSource::Itself => &file.path,
            SymbolSource::DebugFile(p) => p,
        };
        file.parsed_bytes = std::fs::metadata(parsed).map_or(0, |m| m.len());
        if matches!(source, SymbolSource::DebugFile(_)) {
            self.stats.debug_files += 1;
        }
        self.stats.files_parsed += 1;
        tracing::debug!(module = %file.module.path, ?source, bytes = file.parsed_bytes, "loading symbols");
        file.source = Some(source);
    }

    /// Names for file offsets of one file; unnamed (module+offset) where nothing is known.
    fn symbolize_in_file(&mut self, id: FileId, offsets: &[u64]) -> Vec<Arc<Location>> {
        self.prepare(id);
        let file = self.files.get(id);
        let module = file.module.clone();
        let results = match (&file.source, &file.info) {
            (_, _) if file.broken => None,
            (Some(SymbolSource::Itself), _) => {
                let elf = Elf::new(file.path.clone());
                Some(
                    self.blaze
                        .symbolize(&Source::Elf(elf), Input::FileOffset(offsets)),
                )
            }
            (Some(SymbolSource::DebugFile(path)), Some(Ok(info))) => {
                // The debug file has the binary's layout but no code bytes: it is indexed by
                // link-time address. Offsets outside every segment get no name.
                let vaddrs: Vec<u64> = offsets
                    .iter()
                    .map(|&o| info.virtual_address(o).unwrap_or(0))
                    .collect();
                let elf = Elf::new(path.clone());
                let r = self
                    .blaze
                    .symbolize(&Source::Elf(elf), Input::VirtOffset(&vaddrs));
                Some(r.map(|mut r| {
                    for (i, &o) in offsets.iter().enumerate() {
                        if info.virtual_address(o).is_none() {
                            if let Some(slot) = r.get_mut(i) {
                                *slot = Symbolized::Unknown(
                                    blazesym::symbolize::Reason::InvalidFileOffset,
                                );
                            }
                        }
                    }
                    r
                }))
            }
            _ => None,
        };
        let results = match results.map(|r| checked(r, offsets.len())) {
            Some(Ok(r)) => r,
            Some(Err(error)) => {
                tracing::warn!(module = %module.path, %error,
                    "cannot read symbols; frames in it are named module+offset");
                self.files.get_mut(id).broken = true;
                self.stats.file_errors += 1;
                self.stats.addresses_unreadable += offsets.len() as u64;
                Vec::new()
            }
            None => {
                self.stats.addresses_unreadable += offsets.len() as u64;
                Vec::new()
            }
        };
        // Addresses go out as link-time addresses in their segment (file offsets when the
        // headers could not be read): the same in every process, and what a backend
        // symbolizer looks up by build ID.
        let info = match &self.files.get(id).info {
            Some(Ok(info)) => Some(info),
            _ => None,
        };
        offsets
            .iter()
            .enumerate()
            .map(|(i, &offset)| {
                let (address, segment) = match info.and_then(|info| info.placed(offset)) {
                    Some((vaddr, segment)) => (vaddr, Some(segment)),
                    None => (offset, None),
                };
                let frames = match results.get(i) {
                    Some(Symbolized::Sym(sym)) => frames_of(sym),
                    _ => Vec::new(),
                };
                Arc::new(Location {
                    kind: FrameKind::Native,
                    module: Some(module.clone()),
                    address,
                    segment,
                    frames,
                })
            })
            .collect()
    }

    fn fill_kernel(&mut self, kernel: HashSet<u64>) {
        if self.kernel_cache.len() > KERNEL_CACHE_ENTRIES {
            self.kernel_cache.clear();
            self.stats.cache_resets += 1;
        }
        if self.kallsyms.bytes() == 0 {
            self.kallsyms.load();
            if !self.kallsyms.usable() {
                tracing::warn!(
                    "kernel symbols are hidden: {}; kernel frames stay unnamed",
                    crate::kallsyms::hidden_cause()
                );
            }
        }
        let addrs: Vec<u64> = kernel.into_iter().collect();
        self.stats.cache_misses += addrs.len() as u64;
        // A BPF program or module loaded since the last read: read kallsyms again, and
        // forget what was resolved from the old table.
        if addrs.iter().any(|&a| self.kallsyms.refresh_for(a)) {
            self.kernel_cache.clear();
        }
        for addr in addrs {
            let location = match self.kallsyms.lookup(addr) {
                Some(sym) => Location {
                    kind: FrameKind::Kernel,
                    segment: None,
                    module: Some(match sym.module {
                        None => self.kernel_module.clone(),
                        Some(m) => Arc::new(Module {
                            path: Arc::from(format!("[{m}]")),
                            build_id: None,
                        }),
                    }),
                    address: addr,
                    frames: vec![Frame {
                        function: Arc::from(sym.name),
                        file: None,
                        line: 0,
                    }],
                },
                // Outside every symbol: say so rather than borrow a neighbour's name.
                None => Location {
                    kind: FrameKind::Kernel,
                    module: Some(self.kernel_module.clone()),
                    address: addr,
                    segment: None,
                    frames: Vec::new(),
                },
            };
            self.kernel_cache.insert(addr, Arc::new(location));
        }
    }
}

/// blazesym's answer for a batch, or why the whole batch failed.
fn checked<'a>(
    results: blazesym::Result<Vec<Symbolized<'a>>>,
    expected: usize,
) -> Result<Vec<Symbolized<'a>>, String> {
    match results {
        Ok(r) if r.len() == expected => Ok(r),
        Ok(r) => Err(format!("{} results for {expected} addresses", r.len())),
        Err(e) => Err(e.to_string()),
    }
}

/// The frames of one symbol, innermost inlined function first.
fn frames_of(sym: &Sym<'_>) -> Vec<Frame> {
    let frame = |name: &str, info: Option<&blazesym::symbolize::CodeInfo<'_>>| Frame {
        function: Arc::from(name),
        file: info.map(|c| Arc::from(c.to_path().to_string_lossy().as_ref())),
        line: info.and_then(|c| c.line).unwrap_or(0),
    };
    let mut frames: Vec<Frame> = sym
        .inlined
        .iter()
        .rev()
        .map(|f| frame(&f.name, f.code_info.as_ref()))
        .collect();
    frames.push(frame(&sym.name, sym.code_info.as_deref()));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[inline(never)]
    fn marker_function_for_symbolizer_test() -> u64 {
        std::hint::black_box(42)
    }

    fn symbolize_one(s: &mut Symbolizer, pid: u32, user: &[u64], kernel: &[u64]) -> Stack {
        s.symbolize(&[KernelSample::of(pid, user, kernel)])
            .remove(0)
    }

    #[test]
    fn names_own_rust_function_with_file_and_line() {
        let mut s = Symbolizer::new();
        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        let stack = symbolize_one(&mut s, std::process::id(), &[addr], &[]);
        let loc = &stack[0];
        assert_eq!(loc.kind, FrameKind::Native);
        let frame = loc.frames.last().expect("named");
        assert!(
            frame
                .function
                .ends_with("marker_function_for_symbolizer_test"),
            "demangled Rust path expected, got {}",
            frame.function
        );
        assert!(
            frame
                .file
                .as_deref()
                .unwrap_or("")
                .ends_with("symbolizer.rs"),
            "{frame:?}"
        );
        assert!(frame.line > 0);
        assert!(
            loc.module.as_ref().unwrap().build_id.is_some(),
            "Rust test binaries carry a build ID"
        );
    }

    #[test]
    fn the_cache_is_bounded_by_bytes_and_exited_processes_are_forgotten() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        symbolize_one(&mut s, pid, &[addr], &[]);
        let st = s.stats();
        assert_eq!((st.files_parsed, st.evictions), (1, 0), "{st:?}");
        assert!(st.cache_bytes > 0, "{st:?}");
        // Under a bound smaller than one file, a file is let go once another is used...
        s.set_min_idle_calls(0);
        let libc = crate::parse_maps(&std::fs::read_to_string("/proc/self/maps").unwrap())
            .into_iter()
            .find(|m| m.executable && m.path.contains("libc.so"))
            .expect("the test binary maps libc");
        s.set_cache_bytes(1);
        symbolize_one(&mut s, pid, &[libc.start + 0x100], &[]);
        let st = s.stats();
        assert_eq!((st.evictions, st.files_parsed), (1, 2), "{st:?}");
        // ...and parsed again, still naming the function, when it is needed next; the file
        // in use is never the one let go.
        let stack = symbolize_one(&mut s, pid, &[addr], &[]);
        assert!(!stack[0].is_unknown());
        let st = s.stats();
        assert_eq!((st.evictions, st.files_parsed), (2, 3), "{st:?}");
        let stack = symbolize_one(&mut s, pid, &[addr + 1], &[]);
        assert!(!stack[0].is_unknown());
        assert_eq!(s.stats().files_parsed, 3, "no parse while it stays in use");
        // With an idle threshold, a file used a call ago stays even past the bound.
        s.set_min_idle_calls(5);
        symbolize_one(&mut s, pid, &[libc.start + 0x100], &[]);
        let st = s.stats();
        assert_eq!((st.evictions, st.files_parsed), (2, 4), "{st:?}");
        s.set_cache_bytes(DEFAULT_CACHE_BYTES);

        s.observe(u32::MAX - 2); // never existed
        assert_eq!(s.stats().processes_held, 2);
        // Gone at one call is kept until the next: its last samples may still come.
        assert_eq!(s.forget_exited(), 0);
        assert_eq!(s.forget_exited(), 1);
        assert_eq!(s.stats().processes_held, 1, "the live process stays");

        // Past the file limit everything is let go, and symbolizing works again after.
        s.set_file_limit(1);
        assert!(s.stats().files > 1);
        s.forget_exited();
        let st = s.stats();
        assert_eq!(
            (st.files, st.processes_held, st.file_resets),
            (0, 0, 1),
            "{st:?}"
        );
        let stack = symbolize_one(&mut s, pid, &[addr], &[]);
        assert!(!stack[0].frames.is_empty(), "named again after the reset");
    }

    #[test]
    fn second_lookup_is_a_cache_hit() {
        let mut s = Symbolizer::new();
        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        let pid = std::process::id();
        let a = symbolize_one(&mut s, pid, &[addr], &[]);
        let misses = s.stats().cache_misses;
        let b = symbolize_one(&mut s, pid, &[addr], &[]);
        assert!(Arc::ptr_eq(&a[0], &b[0]));
        assert_eq!(s.stats().cache_misses, misses);
        assert_eq!(s.stats().cache_hits, 1);
    }

    #[test]
    fn process_that_never_existed_gives_an_unknown_frame() {
        let mut s = Symbolizer::new();
        let stack = symbolize_one(&mut s, u32::MAX - 7, &[0x401000, 0x401234], &[]);
        assert_eq!(
            stack.len(),
            1,
            "the walk ends at the first unmapped address"
        );
        assert!(stack[0].is_unknown() && stack[0].to_string() == "[unknown]");
        assert_eq!(s.stats().processes_gone, 1);
    }

    #[test]
    fn garbage_callers_end_the_stack_in_one_unknown_frame() {
        let mut s = Symbolizer::new();
        let real = marker_function_for_symbolizer_test as *const () as usize as u64;
        let stack = symbolize_one(&mut s, std::process::id(), &[real, 0x10, real, 0x20], &[]);
        assert_eq!(stack.len(), 2);
        assert!(!stack[0].is_unknown());
        assert_eq!(stack[1].to_string(), "[unknown]");
    }

    #[test]
    fn process_observed_then_exited_keeps_its_modules() {
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        // Wait for exec to replace our image with sleep's.
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let maps = loop {
            let text = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
            if !text.contains(exe.to_str().unwrap()) && text.contains("sleep") {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let text_map = crate::parse_maps(&maps)
            .into_iter()
            .find(|m| m.executable && m.path.ends_with("/sleep"))
            .unwrap();
        let mut s = Symbolizer::new();
        s.observe(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

        let addr = text_map.start + 0x10;
        let stack = symbolize_one(&mut s, pid, &[addr], &[]);
        let module = stack[0].module.as_ref().expect("module known after exit");
        assert!(module.path.ends_with("/sleep"));
        // The address is link-time; with its segment it gives back the file offset.
        let segment = stack[0].segment.expect("a readable ELF has segments");
        assert_eq!(
            stack[0].address - segment.start + segment.file_offset,
            addr - text_map.start + text_map.offset
        );
        assert!((segment.start..segment.limit).contains(&stack[0].address));
        assert_ne!(stack[0].to_string(), "[unknown]");
        assert_eq!(s.process_name(pid, None).as_deref(), Some("sleep"));
    }

    #[test]
    fn samples_of_an_image_exec_d_away_from_use_that_image() {
        // Two images of one PID, as after an exec: ours (exec 1), then sleep's (exec 2).
        let mut child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{}/maps", child.id()))
            .is_ok_and(|m| m.contains(exe.to_str().unwrap()))
        {
            assert!(std::time::Instant::now() < deadline, "sleep never exec'd");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let pid = u32::MAX - 11; // stands for the process that exec'd
        let mut s = Symbolizer::new();
        s.adopt(
            pid,
            ProcessSnapshot::capture_announced(std::process::id(), 1, "before"),
        );
        s.adopt(
            pid,
            ProcessSnapshot::capture_announced(child.id(), 2, "after"),
        );
        child.kill().unwrap();
        child.wait().unwrap();

        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        let request = |exec_id| KernelSample {
            exec_id,
            ..KernelSample::of(pid, std::slice::from_ref(&addr), &[])
        };
        let stacks = s.symbolize(&[request(1), request(2), request(7)]);
        assert!(
            stacks[0][0]
                .frames
                .last()
                .is_some_and(|f| f.function.ends_with("marker_function_for_symbolizer_test")),
            "the sample of the first image is named from it: {:?}",
            stacks[0]
        );
        for other in &stacks[1..] {
            assert!(other[0].is_unknown(), "{other:?}");
        }
        let own = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            s.process_name(pid, Some(1)).as_deref(),
            Some(own.trim_end())
        );
        assert_eq!(s.process_name(pid, Some(2)).as_deref(), Some("sleep"));
        assert_eq!(s.process_name(pid, Some(9)).as_deref(), Some("sleep"));
        // Two drains after the exec no sample of the old image can come: it is let go.
        s.symbolize(&[]);
        assert!(s
            .process_name(pid, Some(1))
            .is_some_and(|n| *n == *own.trim_end()));
        s.symbolize(&[]);
        assert_eq!(s.process_name(pid, Some(1)).as_deref(), Some("sleep"));
        assert_eq!(s.processes[&pid].images.len(), 1);
    }

    #[test]
    fn a_process_gone_before_capture_keeps_its_announced_name() {
        let pid = u32::MAX - 12; // never existed: gone before the watcher read /proc
        let mut s = Symbolizer::new();
        s.adopt(
            pid,
            ProcessSnapshot::capture_announced(pid, 3, "short-lived"),
        );
        assert_eq!(s.process_name(pid, Some(3)).as_deref(), Some("short-lived"));
        let stack = symbolize_one(&mut s, pid, &[0x401000], &[]);
        assert!(stack[0].is_unknown());
    }

    #[test]
    fn corrupt_elf_gives_module_offset_frames_and_is_counted() {
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("ep-corrupt-{}.so", std::process::id()));
        let mut junk = b"\x7fELF\x02\x01\x01".to_vec();
        junk.resize(8192, 0xa5);
        std::fs::write(&path, &junk).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a fresh private read+exec mapping of a file we own, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let addr = base as u64 + 0x1234;

        let mut s = Symbolizer::new();
        let pid = std::process::id();
        let first = symbolize_one(&mut s, pid, &[addr], &[]);
        let again = symbolize_one(&mut s, pid, &[addr + 8], &[]);
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(base, 8192) };
        let _ = std::fs::remove_file(&path);

        for (stack, offset) in [(first, 0x1234), (again, 0x1234 + 8)] {
            assert!(stack[0].is_unknown());
            assert_eq!(stack[0].address, offset);
            assert!(
                stack[0].to_string().starts_with("ep-corrupt-"),
                "{}",
                stack[0]
            );
        }
        assert_eq!(s.stats().file_errors, 1, "a broken file is tried once");
        assert_eq!(s.stats().addresses_unreadable, 2);
    }

    #[test]
    fn code_mapped_after_first_sight_is_found() {
        let mut s = Symbolizer::new();
        let pid = std::process::id();
        s.observe(pid);
        // Forget what was captured, as if the code had been mapped afterwards.
        s.processes.get_mut(&pid).unwrap().images[0]
            .mappings
            .clear();
        let addr = marker_function_for_symbolizer_test as *const () as usize as u64;
        let stack = symbolize_one(&mut s, pid, &[addr], &[]);
        assert!(!stack[0].is_unknown(), "maps were not re-read");
    }

    #[test]
    fn mappings_read_again_keep_what_was_read_of_the_perf_map() {
        // SAFETY: a fresh anonymous mapping, only looked up by address, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let base = base as u64;
        let pid = std::process::id();
        let map = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
        std::fs::write(&map, format!("{base:x} 80 Function:kept\n")).unwrap();
        let mut s = Symbolizer::new();
        let first = symbolize_one(&mut s, pid, &[base + 0x10], &[]);
        let before = s.stats().perf_maps.bytes_read;
        // New JIT code is mapped all the time, and mappings are read again each time: a
        // big perf map must not be read again from the start.
        s.processes
            .get_mut(&pid)
            .unwrap()
            .images
            .last_mut()
            .unwrap()
            .mappings
            .clear();
        let again = symbolize_one(&mut s, pid, &[base + 0x20], &[]);
        let after = s.stats().perf_maps.bytes_read;
        let _ = std::fs::remove_file(&map);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(base as *mut libc::c_void, 4096) };
        assert_eq!(first[0].to_string(), "Function:kept");
        assert_eq!(again[0].to_string(), "Function:kept");
        assert!(before > 0);
        assert_eq!(after, before, "read again from the start");
    }

    #[test]
    fn demangles_cpp_names() {
        let dir = std::env::temp_dir().join(format!("ep-sym-cpp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("spin.cpp");
        std::fs::write(
            &src,
            r#"#include <cstdio>
#include <unistd.h>
namespace shop { struct Cart { __attribute__((noinline)) int total(int n); }; }
int shop::Cart::total(int n) { return n * 3; }
int main() {
    shop::Cart c;
    std::printf("%p\n", (void*)&shop::Cart::total);
    std::fflush(stdout);
    sleep(30);
    return c.total(1);
}
"#,
        )
        .unwrap();
        let exe = dir.join("spin");
        let built = Command::new("c++")
            .args(["-O1", "-g", "-Wno-pmf-conversions", "-o"])
            .arg(&exe)
            .arg(&src)
            .status();
        assert!(
            built.is_ok_and(|s| s.success()),
            "building the C++ test program needs g++"
        );
        let mut child = Command::new(&exe).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr = u64::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();

        let mut s = Symbolizer::new();
        let stack = symbolize_one(&mut s, child.id(), &[addr], &[]);
        child.kill().unwrap();
        child.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let name = &stack[0].frames.last().expect("named").function;
        assert_eq!(&**name, "shop::Cart::total(int)");
    }

    #[test]
    fn names_kernel_functions_from_kallsyms() {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").unwrap();
        let address_of = |symbol: &str| {
            kallsyms
                .lines()
                .find_map(|l| {
                    let mut f = l.split_whitespace();
                    let (addr, _, name) = (f.next()?, f.next()?, f.next()?);
                    (name == symbol).then(|| u64::from_str_radix(addr, 16).ok())?
                })
                .unwrap()
        };
        let addr = address_of("vfs_write");
        if addr == 0 {
            // kallsyms hides addresses from unprivileged readers.
            assert!(
                std::env::var_os("CI").is_none(),
                "kernel symbolization test needs root in CI"
            );
            return;
        }
        let mut s = Symbolizer::new();
        let stack = symbolize_one(&mut s, std::process::id(), &[], &[addr + 4, addr + 8]);
        assert_eq!(stack.len(), 2);
        for loc in stack.iter() {
            assert_eq!(loc.kind, FrameKind::Kernel);
            assert_eq!(&*loc.frames[0].function, "vfs_write");
            assert_eq!(&*loc.module.as_ref().unwrap().path, "[kernel.kallsyms]");
        }
        // Past the end of kernel text there is no symbol: unknown, not the last name.
        let etext = address_of("_etext");
        let stack = symbolize_one(&mut s, std::process::id(), &[], &[etext + 64]);
        assert!(stack[0].is_unknown(), "{:?}", stack[0]);
        assert_eq!(
            stack[0].to_string(),
            format!("[kernel.kallsyms]+{:#x}", etext + 64)
        );
    }
}
