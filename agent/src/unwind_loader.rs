//! Loads unwind tables into the CPU sampler: for each process the symbolizer holds, its
//! files' tables (each file's entries written once, whatever number of processes map it;
//! rules shared by all), then its list of mappings. A process that execs or maps more is
//! listed again; one the symbolizer let go is forgotten.

use std::collections::HashMap;

use emberprof_probes::abi::{
    rule_kind, UnwindEntry, UnwindMapping, UnwindRule, UNWIND_ENTRIES, UNWIND_MAPPINGS,
    UNWIND_RULES,
};
use emberprof_probes::UnwindTarget;
use emberprof_symbolizer::unwind::{CfaBase, RbpRule, Rule, UnwindTable};
use emberprof_symbolizer::{Symbolizer, TableSource};

/// A file's entries in the kernel's array.
#[derive(Clone, Copy)]
struct Loaded {
    first: u32,
    count: u32,
    /// Table addresses are relative to this.
    base: u64,
}

/// What has been written to the kernel's tables.
#[derive(Default)]
pub struct UnwindLoader {
    rules: HashMap<UnwindRule, u32>,
    /// By file identity; `None`: the file has no table or found no room.
    files: HashMap<u64, Option<Loaded>>,
    next_entry: u32,
    /// Processes listed, with the image they were listed for.
    listed: HashMap<u32, u64>,
    /// Table entries that found no room in the kernel's array.
    pub entries_full: u64,
    /// Times a process's mappings were listed (again after an exec or a dlopen).
    pub processes_listed: u64,
    /// Files whose tables were written.
    pub files_written: u64,
}

impl UnwindLoader {
    /// Table entries written to the kernel's array so far.
    pub fn entries(&self) -> u32 {
        self.next_entry
    }
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
        let written = self.files_written;
        self.list_new(symbolizer, target);
        if self.files_written != written {
            // A large binary's table takes tens of MiB while it is compiled.
            emberprof_symbolizer::heap::give_back_freed();
        }
    }

    fn list_new(&mut self, symbolizer: &mut Symbolizer, target: &mut dyn UnwindTarget) {
        let pids = symbolizer.pids();
        let gone: Vec<u32> = self
            .listed
            .keys()
            .copied()
            .filter(|p| !pids.contains(p))
            .collect();
        for pid in gone {
            target.forget_process(pid);
            self.listed.remove(&pid);
        }
        for pid in pids {
            let Some(image) = symbolizer.image_key(pid) else {
                continue;
            };
            if self.listed.get(&pid) == Some(&image) {
                continue;
            }
            self.listed.insert(pid, image);
            let mut mappings = Vec::new();
            for m in symbolizer.unwind_mappings(pid) {
                let Some(file) = self.file(m.source, m.file_key, symbolizer, target) else {
                    continue;
                };
                mappings.push(UnwindMapping {
                    start: m.start,
                    end: m.end,
                    bias: m.bias.wrapping_add(file.base),
                    first: file.first,
                    count: file.count,
                });
            }
            mappings.sort_by_key(|m| m.start);
            mappings.truncate(UNWIND_MAPPINGS);
            let listed = if mappings.is_empty() {
                target.forget_process(pid);
                Ok(())
            } else {
                self.processes_listed += 1;
                tracing::debug!(pid, mappings = mappings.len(), "listing unwind mappings");
                target.set_process(pid, &mappings)
            };
            if let Err(e) = listed {
                tracing::debug!(pid, error = %e, "cannot list unwind mappings");
            }
        }
    }

    /// A file's entries, written the first time it is met.
    fn file(
        &mut self,
        source: TableSource,
        key: u64,
        symbolizer: &mut Symbolizer,
        target: &mut dyn UnwindTarget,
    ) -> Option<Loaded> {
        if let Some(done) = self.files.get(&key) {
            return *done;
        }
        let loaded = symbolizer
            .compile_unwind_table(source)
            .and_then(|t| self.write(&t, target));
        self.files.insert(key, loaded);
        loaded
    }

    fn write(&mut self, table: &UnwindTable, target: &mut dyn UnwindTarget) -> Option<Loaded> {
        let base = table.base();
        let count = u32::try_from(table.len()).ok()?;
        if self.next_entry as usize + count as usize > UNWIND_ENTRIES {
            self.entries_full += u64::from(count);
            return None;
        }
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
        let first = self.next_entry;
        target.set_entries(first, &entries).ok()?;
        self.next_entry += count;
        self.files_written += 1;
        Some(Loaded { first, count, base })
    }
}
