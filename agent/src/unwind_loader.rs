//! Loads unwind tables into the CPU sampler: for each process the symbolizer holds, its
//! files' tables (each file's entries written once, whatever number of processes map it;
//! rules shared by all), then its list of mappings. A process that execs or maps more is
//! listed again; one the symbolizer let go is forgotten.
//!
//! The tables share one array of a fixed size (`--unwind-table-mib`), each file one range
//! of it. A table no listed process uses stays until its room is needed (the next process
//! to map the file finds it loaded); then the longest unused go first. A table that does
//! not fit even so is a miss: its file is walked by frame pointers, and its processes are
//! listed again when a table falls out of use.

use std::collections::{HashMap, HashSet};

use emberprof_probes::abi::{
    rule_kind, UnwindEntry, UnwindMapping, UnwindRule, UNWIND_MAPPINGS, UNWIND_RULES,
};
use emberprof_probes::UnwindTarget;
use emberprof_symbolizer::unwind::{CfaBase, RbpRule, Rule, UnwindTable, ENTRY_BYTES};
use emberprof_symbolizer::{
    Symbolizer, TableSource as TableOrigin, UnwindMapping as FileMapping, UnwindPlan,
};

use crate::unwind_ranges::Ranges;

/// A file's entries in the kernel's array.
#[derive(Clone, Copy, Debug)]
struct Held {
    first: u32,
    count: u32,
    /// Table addresses are relative to this.
    base: u64,
    /// Listed processes whose mappings point at it.
    users: u32,
    /// When it was last left without users: the oldest unused is evicted first.
    unused_since: u64,
}

/// What is known of a file's table.
#[derive(Clone, Copy, Debug)]
enum FileTable {
    Held(Held),
    /// The file has no table (no CFI, not x86-64, unreadable), or the kernel refused it.
    None,
    /// Its table, of this many entries, found no room: compiled again only once a range
    /// that long could be made.
    Missed(u32),
}

/// A process as listed in the kernel.
struct Listed {
    /// The image it was listed for (`Symbolizer::image_key`).
    image: u64,
    /// The files its mappings point at, each once.
    files: Vec<u64>,
    /// Some of its files' tables found no room.
    missed: bool,
    /// Listed from the watcher's snapshot: syncs left during which the symbolizer may not
    /// hold it yet (its snapshot is on the way) without it being forgotten.
    grace: u8,
}

/// Syncs a process listed from its announcement survives before the symbolizer holds it.
const ADOPTION_GRACE: u8 = 3;

/// The loader and the kernel maps it writes, shared by the session (drains, ticks) and
/// the process watcher (a process's tables the moment it is announced).
pub struct UnwindState {
    pub loader: UnwindLoader,
    pub maps: Option<emberprof_probes::UnwindMaps>,
}

/// `UnwindState` behind a lock.
pub type SharedUnwind = std::sync::Arc<std::sync::Mutex<UnwindState>>;

impl UnwindState {
    /// Lists a just-announced process from its plan (no-op without maps).
    pub fn list_captured(&mut self, pid: u32, plan: &UnwindPlan) {
        if let Some(maps) = &mut self.maps {
            self.loader.list_captured(pid, plan, maps);
        }
    }

    /// `UnwindLoader::sync` into the maps (no-op without maps).
    pub fn sync(&mut self, symbolizer: &mut Symbolizer) {
        if let Some(maps) = &mut self.maps {
            self.loader.sync(symbolizer, maps);
        }
    }

    /// Whether tables are loaded at all (`--unwind auto` and a profiler taking stacks).
    pub fn enabled(&self) -> bool {
        self.maps.is_some() && self.loader.enabled
    }
}

/// A captured process as the loader's source of mappings and tables.
struct PlanSource<'a> {
    pid: u32,
    plan: &'a UnwindPlan,
}

impl Tables for PlanSource<'_> {
    fn pids(&self) -> HashSet<u32> {
        HashSet::from([self.pid])
    }

    fn image_key(&self, _pid: u32) -> Option<u64> {
        Some(self.plan.image_key)
    }

    fn unwind_mappings(&mut self, _pid: u32) -> Vec<FileMapping> {
        self.plan.mappings.clone()
    }

    fn compile_unwind_table(&mut self, source: TableOrigin) -> Option<UnwindTable> {
        self.plan.compile_unwind_table(source)
    }
}

/// Where the loader learns of processes and gets tables: the symbolizer.
pub trait Tables {
    /// The processes held now.
    fn pids(&self) -> HashSet<u32>;
    /// What `pid`'s image is; it changes with an exec or new mappings.
    fn image_key(&self, pid: u32) -> Option<u64>;
    /// `pid`'s executable file mappings.
    fn unwind_mappings(&mut self, pid: u32) -> Vec<FileMapping>;
    /// The table a mapping's `source` names.
    fn compile_unwind_table(&mut self, source: TableOrigin) -> Option<UnwindTable>;
}

impl Tables for Symbolizer {
    fn pids(&self) -> HashSet<u32> {
        Symbolizer::pids(self)
    }

    fn image_key(&self, pid: u32) -> Option<u64> {
        Symbolizer::image_key(self, pid)
    }

    fn unwind_mappings(&mut self, pid: u32) -> Vec<FileMapping> {
        Symbolizer::unwind_mappings(self, pid)
    }

    fn compile_unwind_table(&mut self, source: TableOrigin) -> Option<UnwindTable> {
        Symbolizer::compile_unwind_table(self, source)
    }
}

/// What the tables hold now and what the bound cost, for /metrics and `--summary-json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    /// Entries the kernel's array holds.
    pub capacity_entries: u32,
    /// Entries of tables that listed processes use.
    pub used_entries: u32,
    /// Entries of tables no listed process uses (evicted first when room is needed).
    pub unused_entries: u32,
    /// Times a file's table was wanted for a process and found no room.
    pub misses: u64,
    /// Tables evicted to make room for another.
    pub evictions: u64,
    /// Tables compiled (once per file, however many processes map it; again only after
    /// an eviction or once a miss could fit).
    pub tables_compiled: u64,
    /// Files whose tables were written.
    pub files_written: u64,
    /// Times a process's mappings were listed (again after an exec).
    pub processes_listed: u64,
}

/// What has been written to the kernel's tables.
pub struct UnwindLoader {
    /// `false` with `--unwind fp`: nothing is compiled or loaded.
    enabled: bool,
    rules: HashMap<UnwindRule, u32>,
    /// By file identity.
    files: HashMap<u64, FileTable>,
    ranges: Ranges,
    listed: HashMap<u32, Listed>,
    /// Counts files left unused, to order them.
    clock: u64,
    /// A table fell out of use since the processes with misses were last listed.
    room_appeared: bool,
    stats: UnwindStats,
}

impl UnwindLoader {
    /// A loader for an array of `entries` (`None`: frame pointers only, nothing loaded).
    pub fn new(entries: Option<u32>) -> Self {
        let capacity = entries.unwrap_or(0);
        UnwindLoader {
            enabled: entries.is_some(),
            rules: HashMap::new(),
            files: HashMap::new(),
            ranges: Ranges::new(capacity),
            listed: HashMap::new(),
            clock: 0,
            room_appeared: false,
            stats: UnwindStats {
                capacity_entries: capacity,
                ..UnwindStats::default()
            },
        }
    }

    /// The tables' figures; `None` when tables are off (`--unwind fp`).
    pub fn stats(&self) -> Option<UnwindStats> {
        if !self.enabled {
            return None;
        }
        let held = self.ranges.capacity() - self.ranges.free_entries();
        let unused: u32 = self
            .files
            .values()
            .filter_map(|f| match f {
                FileTable::Held(h) if h.users == 0 => Some(h.count),
                _ => None,
            })
            .sum();
        Some(UnwindStats {
            used_entries: held - unused,
            unused_entries: unused,
            ..self.stats
        })
    }
}

/// Bytes of `entries` table entries in the kernel.
pub fn entry_bytes(entries: u32) -> u64 {
    u64::from(entries) * ENTRY_BYTES
}

/// The kernel's form of a rule.
fn encode(rule: Rule) -> UnwindRule {
    let mut r = UnwindRule::default();
    match rule {
        Rule::Frame {
            cfa,
            cfa_offset,
            rbp,
        } => {
            r.kind = match cfa {
                CfaBase::Rsp => rule_kind::CFA_RSP,
                CfaBase::Rbp => rule_kind::CFA_RBP,
            };
            r.cfa_offset = cfa_offset;
            if let RbpRule::AtCfa(o) = rbp {
                r.rbp_saved = 1;
                r.rbp_offset = o;
            }
        }
        Rule::Plt => r.kind = rule_kind::PLT,
        Rule::Signal => r.kind = rule_kind::SIGNAL,
        Rule::Stop => r.kind = rule_kind::STOP,
        Rule::Invalid(_) => r.kind = rule_kind::NONE,
    }
    r
}

impl UnwindLoader {
    /// Lists the processes new to the symbolizer (or with a new image), forgets those it
    /// let go.
    pub fn sync(&mut self, symbolizer: &mut Symbolizer, target: &mut dyn UnwindTarget) {
        let written = self.stats.files_written;
        self.list_new(symbolizer, target);
        if self.stats.files_written != written {
            // A large binary's table takes tens of MiB while it is compiled.
            emberprof_symbolizer::heap::give_back_freed();
        }
    }

    /// Lists a process the moment it is announced, from the snapshot the watcher took,
    /// rather than when the symbolizer holds it (after a drain that may take seconds).
    pub fn list_captured(&mut self, pid: u32, plan: &UnwindPlan, target: &mut dyn UnwindTarget) {
        if !self.enabled {
            return;
        }
        let image = plan.image_key;
        if self.listed.get(&pid).is_some_and(|l| l.image == image) {
            return;
        }
        let written = self.stats.files_written;
        self.list(pid, image, true, &mut PlanSource { pid, plan }, target);
        if let Some(l) = self.listed.get_mut(&pid) {
            l.grace = ADOPTION_GRACE;
        }
        if self.stats.files_written != written {
            emberprof_symbolizer::heap::give_back_freed();
        }
    }

    fn list_new(&mut self, source: &mut dyn Tables, target: &mut dyn UnwindTarget) {
        if !self.enabled {
            return;
        }
        let pids = source.pids();
        for (pid, l) in self.listed.iter_mut() {
            if pids.contains(pid) {
                l.grace = 0;
            } else {
                l.grace = l.grace.saturating_sub(1);
            }
        }
        let gone: Vec<u32> = self
            .listed
            .iter()
            .filter(|(p, l)| !pids.contains(p) && l.grace == 0)
            .map(|(p, _)| *p)
            .collect();
        for pid in gone {
            // Out of the kernel first: its tables may be evicted from now on.
            target.forget_process(pid);
            if let Some(old) = self.listed.remove(&pid) {
                self.release(&old.files);
            }
        }
        for pid in pids {
            let Some(image) = source.image_key(pid) else {
                continue;
            };
            if self.listed.get(&pid).map(|l| l.image) != Some(image) {
                self.list(pid, image, true, source, target);
            }
        }
        if std::mem::take(&mut self.room_appeared) {
            // Those just listed too: an exec leaves its old image's tables unused only
            // once the new one is listed. Their misses are counted already.
            let retry: Vec<(u32, u64)> = self
                .listed
                .iter()
                .filter(|(_, l)| l.missed)
                .map(|(pid, l)| (*pid, l.image))
                .collect();
            for (pid, image) in retry {
                self.list(pid, image, false, source, target);
            }
        }
    }

    /// Lists `pid`'s mappings for `image`, loading the tables it needs.
    fn list(
        &mut self,
        pid: u32,
        image: u64,
        count_misses: bool,
        source: &mut dyn Tables,
        target: &mut dyn UnwindTarget,
    ) {
        // Its previous listing keeps its tables until the new one is in the kernel: the
        // kernel still walks pid by them, so they must not be evicted for the new ones.
        let old = self.listed.remove(&pid);
        let mut wanted = source.unwind_mappings(pid);
        wanted.sort_by_key(|m| m.start);
        let mut files: Vec<u64> = Vec::new();
        let mut mappings = Vec::new();
        let mut missed = false;
        for m in wanted {
            if mappings.len() == UNWIND_MAPPINGS {
                break;
            }
            let table = self.file(m.source, m.file_key, source, target);
            let held = match table {
                FileTable::Held(h) => h,
                FileTable::Missed(_) => {
                    missed = true;
                    if count_misses {
                        self.stats.misses += 1;
                    }
                    continue;
                }
                FileTable::None => continue,
            };
            if !files.contains(&m.file_key) {
                self.acquire(m.file_key);
                files.push(m.file_key);
            }
            mappings.push(UnwindMapping {
                start: m.start,
                end: m.end,
                bias: m.bias.wrapping_add(held.base),
                first: held.first,
                count: held.count,
            });
        }
        let listed = if mappings.is_empty() {
            target.forget_process(pid);
            Ok(())
        } else {
            self.stats.processes_listed += 1;
            target.set_process(pid, &mappings)
        };
        if let Err(e) = listed {
            tracing::debug!(pid, error = %e, "cannot list unwind mappings");
            // Whatever the kernel kept must not point at tables that may be evicted.
            target.forget_process(pid);
            self.release(&files);
            files.clear();
        }
        if let Some(old) = old {
            self.release(&old.files);
        }
        self.listed.insert(
            pid,
            Listed {
                image,
                files,
                missed,
                grace: 0,
            },
        );
    }

    /// One more listed process uses the file's table.
    fn acquire(&mut self, key: u64) {
        if let Some(FileTable::Held(h)) = self.files.get_mut(&key) {
            h.users += 1;
        }
    }

    /// One listed process fewer uses each of `files`' tables.
    fn release(&mut self, files: &[u64]) {
        for key in files {
            if let Some(FileTable::Held(h)) = self.files.get_mut(key) {
                h.users = h.users.saturating_sub(1);
                if h.users == 0 {
                    h.unused_since = self.clock;
                    self.clock += 1;
                    self.room_appeared = true;
                }
            }
        }
    }

    /// A file's table in the kernel, compiled and written the first time it is met (or
    /// again after it was evicted, or once there could be room for a table that missed).
    fn file(
        &mut self,
        origin: TableOrigin,
        key: u64,
        source: &mut dyn Tables,
        target: &mut dyn UnwindTarget,
    ) -> FileTable {
        match self.files.get(&key) {
            Some(FileTable::Missed(count)) if self.could_fit(*count) => {}
            Some(known) => return *known,
            None => {}
        }
        self.stats.tables_compiled += 1;
        let state = match source.compile_unwind_table(origin) {
            None => FileTable::None,
            Some(table) => match u32::try_from(table.len()) {
                Ok(0) => FileTable::None,
                Ok(count) => match self.room(count) {
                    Some(first) => match self.write(&table, first, target) {
                        Some(base) => FileTable::Held(Held {
                            first,
                            count,
                            base,
                            users: 0,
                            unused_since: 0,
                        }),
                        None => {
                            self.ranges.free(first, count);
                            FileTable::None
                        }
                    },
                    None => FileTable::Missed(count),
                },
                Err(_) => FileTable::Missed(u32::MAX),
            },
        };
        self.files.insert(key, state);
        state
    }

    /// Unused tables, oldest first: (key, first, count).
    fn unused(&self) -> Vec<(u64, u32, u32)> {
        let mut unused: Vec<(u64, u64, u32, u32)> = self
            .files
            .iter()
            .filter_map(|(key, f)| match f {
                FileTable::Held(h) if h.users == 0 => {
                    Some((h.unused_since, *key, h.first, h.count))
                }
                _ => None,
            })
            .collect();
        unused.sort_unstable();
        unused
            .into_iter()
            .map(|(_, key, first, count)| (key, first, count))
            .collect()
    }

    /// Whether `count` entries would fit once every unused table were evicted.
    fn could_fit(&self, count: u32) -> bool {
        self.ranges.largest() >= count
            || self.ranges.would_fit(
                count,
                self.unused().into_iter().map(|(_, first, n)| (first, n)),
            )
    }

    /// A free range of `count` entries, evicting unused tables (oldest first) if needed;
    /// `None` if even all of them would not make one. No process listed in the kernel
    /// points at an unused table: the ranges may be overwritten.
    fn room(&mut self, count: u32) -> Option<u32> {
        if let Some(first) = self.ranges.alloc(count) {
            return Some(first);
        }
        if !self.could_fit(count) {
            return None;
        }
        for (key, first, n) in self.unused() {
            self.files.remove(&key);
            self.ranges.free(first, n);
            self.stats.evictions += 1;
            if let Some(first) = self.ranges.alloc(count) {
                return Some(first);
            }
        }
        None
    }

    /// Writes `table` into the kernel's array from `first`; its base, or `None` if the
    /// kernel refused it (or the shared rules are full).
    fn write(
        &mut self,
        table: &UnwindTable,
        first: u32,
        target: &mut dyn UnwindTarget,
    ) -> Option<u64> {
        let base = table.base();
        let mut entries = Vec::with_capacity(table.len());
        for (addr, rule) in table.entries() {
            let rule = encode(rule);
            let index = match self.rules.get(&rule) {
                Some(&i) => i,
                None => {
                    let i = self.rules.len() as u32;
                    if i as usize >= UNWIND_RULES || target.set_rule(i, rule).is_err() {
                        return None;
                    }
                    self.rules.insert(rule, i);
                    i
                }
            };
            entries.push(UnwindEntry {
                pc: u32::try_from(addr - base).ok()?,
                rule: index,
            });
        }
        if let Err(e) = target.set_entries(first, &entries) {
            tracing::debug!(error = %e, "cannot write an unwind table");
            return None;
        }
        self.stats.files_written += 1;
        Some(base)
    }
}

#[cfg(test)]
#[path = "unwind_loader_tests.rs"]
mod tests;
