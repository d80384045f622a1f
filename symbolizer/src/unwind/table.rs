//! A file's compiled unwind table: sorted entries, each the start address of a range and
//! the rule that holds from there to the next entry's start. Rules are few per file (a few
//! hundred distinct), entries many (a tenth of a file's `.text` bytes); the kernel's copy
//! will hold a 32-bit address offset and a rule index per entry (8 bytes).

use std::collections::HashMap;

use super::compile::{Row, PADDING};
use super::rule::{Rule, Unsupported};

/// What compiling a file found, for /metrics and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Bytes of `.text`.
    pub text_bytes: u64,
    /// Bytes of `.eh_frame` (or `.debug_frame`) read.
    pub cfi_bytes: u64,
    pub fdes: u64,
    /// FDEs that could not be read (left out; the rest of the file is kept).
    pub fde_errors: u64,
    /// CFI rows before merging.
    pub rows: u64,
}

/// A file's unwind table, addressed by link-time virtual address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnwindTable {
    starts: Vec<u64>,
    rules: Vec<Rule>,
    stats: CompileStats,
}

/// Bytes one entry takes in the kernel's table: a 32-bit address and a 32-bit rule index.
pub const ENTRY_BYTES: u64 = 8;

impl UnwindTable {
    /// Sorts and merges CFI rows: equal neighbours become one entry, padding takes the rule
    /// before it, and a gap longer than padding gets a "no info" entry.
    pub(crate) fn from_rows(mut rows: Vec<Row>, stats: CompileStats) -> UnwindTable {
        rows.sort_by_key(|r| (r.start, r.end));
        let mut t = UnwindTable {
            stats,
            ..UnwindTable::default()
        };
        let mut covered_to: Option<u64> = None;
        for row in rows {
            if row.end <= row.start {
                continue;
            }
            // Overlapping FDEs (rare; linkers should not emit them): the first one wins.
            let start = match covered_to {
                Some(end) if row.start < end => {
                    if row.end <= end {
                        continue;
                    }
                    end
                }
                Some(end) if row.start - end > PADDING => {
                    t.push(end, Rule::Invalid(Unsupported::NoInfo));
                    row.start
                }
                _ => row.start,
            };
            t.push(start, row.rule);
            covered_to = Some(row.end);
        }
        if let Some(end) = covered_to {
            t.push(end, Rule::Invalid(Unsupported::NoInfo));
        }
        t.starts.shrink_to_fit();
        t.rules.shrink_to_fit();
        t
    }

    fn push(&mut self, start: u64, rule: Rule) {
        if self.rules.last() == Some(&rule) {
            return;
        }
        if self.starts.last() == Some(&start) {
            // An empty range before this one: this rule replaces it.
            self.rules.pop();
            self.starts.pop();
            if self.rules.last() == Some(&rule) {
                return;
            }
        }
        self.starts.push(start);
        self.rules.push(rule);
    }

    /// The lowest address with an entry: the kernel's copy holds addresses relative to it.
    pub fn base(&self) -> u64 {
        self.starts.first().copied().unwrap_or(0)
    }

    /// The rule at `address`; `None` outside every FDE.
    pub fn lookup(&self, address: u64) -> Option<Rule> {
        let i = self
            .starts
            .partition_point(|&s| s <= address)
            .checked_sub(1)?;
        match self.rules[i] {
            Rule::Invalid(Unsupported::NoInfo) => None,
            rule => Some(rule),
        }
    }

    /// Entries: ranges with one rule each.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether no address has a rule.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// `(start, rule)` of every entry, in address order.
    pub fn entries(&self) -> impl Iterator<Item = (u64, Rule)> + '_ {
        self.starts.iter().copied().zip(self.rules.iter().copied())
    }

    /// How many entries have each rule kind (for the counts of rare cases).
    pub fn rule_counts(&self) -> HashMap<&'static str, u64> {
        let mut counts = HashMap::new();
        for rule in &self.rules {
            *counts.entry(rule_kind(rule)).or_insert(0) += 1;
        }
        counts
    }

    /// Distinct rules (the kernel keeps one system-wide array of them).
    pub fn distinct_rules(&self) -> usize {
        let mut r = self.rules.clone();
        r.sort_unstable();
        r.dedup();
        r.len()
    }

    /// Bytes this table takes in the kernel.
    pub fn kernel_bytes(&self) -> u64 {
        self.len() as u64 * ENTRY_BYTES
    }

    /// Bytes it takes here.
    pub fn heap_bytes(&self) -> u64 {
        (self.starts.capacity() * 8 + self.rules.capacity() * std::mem::size_of::<Rule>()) as u64
    }

    /// What compiling found.
    pub fn stats(&self) -> CompileStats {
        self.stats
    }
}

/// A short name for a rule's kind: `frame`, `plt`, `signal`, `stop`, or why it is invalid.
pub fn rule_kind(rule: &Rule) -> &'static str {
    match rule {
        Rule::Frame { .. } => "frame",
        Rule::Plt => "plt",
        Rule::Signal => "signal",
        Rule::Stop => "stop",
        Rule::Invalid(Unsupported::NoInfo) => "no_info",
        Rule::Invalid(Unsupported::CfaRegister) => "cfa_register",
        Rule::Invalid(Unsupported::CfaExpression) => "cfa_expression",
        Rule::Invalid(Unsupported::CfaOffset) => "cfa_offset",
        Rule::Invalid(Unsupported::RbpRule) => "rbp_rule",
        Rule::Invalid(Unsupported::ReturnAddress) => "return_address",
    }
}
