//! JIT symbols from perf map files (`/tmp/perf-PID.map`): what Node's
//! `--perf-basic-prof`, JVM agents and others write for code in anonymous memory. Each line
//! is `START SIZE NAME`; a later line for the same start replaces an earlier one, since
//! JITs reuse memory.
//!
//! The file is written by the profiled process, so it is untrusted and may be huge (a JVM's
//! is tens of MB, a hostile one unbounded). It is read incrementally, a bounded number of
//! bytes at a time, and only an index is kept: 16 bytes per symbol (its start, size and
//! where its line is). Names are read back from the file when a frame needs one, through a
//! small per-process cache.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::perf_map_line::{self, Skip, LINE_CAP};
use crate::perf_map_open::{open_checked, Identity, Outcome, Owner, Refusal};

/// A miss looks at the file again at most this often: a JIT process without a perf map has
/// many unnamed frames, and each must not cost a stat.
const RECHECK: Duration = Duration::from_secs(1);

/// Bytes read per refresh: a big map is read over several drains rather than stalling one.
const READ_BUDGET: u64 = 16 << 20;

/// Bytes all perf maps together may read in one symbolize call (a drain): many processes
/// with endless maps (a huge sparse file) must not stall it either.
pub(crate) const READ_PER_CALL: u64 = 32 << 20;

/// Bytes read per system call.
const CHUNK: usize = 64 << 10;

/// Symbols one process's map may hold (8 MiB of index): a JVM's map has a few hundred
/// thousand.
pub(crate) const PROCESS_SYMBOLS: usize = 1 << 19;

/// Symbols all perf maps together may hold (32 MiB of index).
pub(crate) const HOST_SYMBOLS: usize = 1 << 21;

/// Names a process's map keeps read, in bytes (with overhead), before starting over.
const NAME_CACHE_BYTES: usize = 128 << 10;

/// Symbols parsed before they are merged into the index, bounding the memory of one read.
const BATCH: usize = 1 << 16;

/// Counters of perf map reading since the symbolizer was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PerfMapStats {
    /// Perf maps not used: not a regular file (a FIFO, a device, through a symlink too).
    pub refused_not_regular: u64,
    /// Perf maps not used: owned by neither the process's user nor root.
    pub refused_owner: u64,
    /// Perf maps not used: writable by other users.
    pub refused_writable: u64,
    /// Lines skipped because they are not UTF-8.
    pub lines_not_utf8: u64,
    /// Lines skipped because they are not `START SIZE NAME`.
    pub lines_malformed: u64,
    /// Names cut to the length cap.
    pub names_cut: u64,
    /// Symbols not kept because a process's or the host's bound was reached.
    pub symbols_dropped: u64,
    /// Bytes read from perf maps to index them (names read back are not counted).
    pub bytes_read: u64,
    /// Memory the perf maps hold now (indexes and cached names), in bytes.
    pub bytes: u64,
}

impl PerfMapStats {
    fn refused(&mut self, reason: Refusal) {
        match reason {
            Refusal::NotRegular => self.refused_not_regular += 1,
            Refusal::Owner => self.refused_owner += 1,
            Refusal::Writable => self.refused_writable += 1,
        }
    }
}

/// Symbols held by all perf maps of a symbolizer, against a host-wide bound.
pub(crate) struct Budget {
    held: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            held: AtomicUsize::new(0),
            limit,
        })
    }
}

/// What a lookup may use and update besides the map itself.
pub(crate) struct Context<'a> {
    pub(crate) stats: &'a mut PerfMapStats,
    /// The symbolize call this lookup is part of: a map cut short by the read budget goes
    /// on at the next call, not within the same one.
    pub(crate) tick: u64,
    pub(crate) budget: &'a Arc<Budget>,
    /// Bytes perf maps may still read in this symbolize call (`READ_PER_CALL` at its start).
    pub(crate) read_left: &'a mut u64,
}

/// One symbol: its start, and its size and line's offset packed in 64 bits.
#[derive(Clone, Copy, Debug)]
struct Entry {
    start: u64,
    packed: u64,
}

/// Bits of `packed` for the size; the rest hold the line's offset.
const SIZE_BITS: u32 = 28;

impl Entry {
    /// `None` past 64 GiB into the file. Sizes are clamped to 256 MiB, more than any JIT
    /// region a map names.
    fn new(start: u64, size: u64, line_at: u64) -> Option<Entry> {
        (line_at < 1 << (64 - SIZE_BITS)).then(|| Entry {
            start,
            packed: line_at << SIZE_BITS | size.min((1 << SIZE_BITS) - 1),
        })
    }

    fn end(self) -> u64 {
        self.start
            .saturating_add(self.packed & ((1 << SIZE_BITS) - 1))
    }

    fn line_at(self) -> u64 {
        self.packed >> SIZE_BITS
    }
}

/// One process's perf map, read lazily and then as it grows.
pub(crate) struct PerfMap {
    path: PathBuf,
    owner: Owner,
    file: Option<(File, Identity)>,
    /// Sorted by start, one entry per start.
    index: Vec<Entry>,
    /// Bytes of the file read and indexed (up to a line start unless `skipping`).
    offset: u64,
    /// In a line longer than `LINE_CAP`, whose head is indexed: the rest is skipped.
    skipping: bool,
    /// The last read stopped at the read budget.
    more: bool,
    /// A name read back did not match the index: the file was rewritten in place.
    stale: bool,
    names: HashMap<u64, Arc<str>>,
    names_bytes: usize,
    checked_at: Option<Instant>,
    refreshed_tick: u64,
    /// The last refusal, logged and counted once until the file or the reason changes.
    refused: Option<(Refusal, Identity)>,
    /// The host-wide budget the index is counted in.
    charged: Option<Arc<Budget>>,
    recheck: Duration,
    read_budget: u64,
    max_symbols: usize,
}

impl PerfMap {
    /// The perf map at `path`, used only if `owner` (the process's user) or root owns it.
    pub(crate) fn new(path: PathBuf, owner: Owner) -> PerfMap {
        PerfMap {
            path,
            owner,
            file: None,
            index: Vec::new(),
            offset: 0,
            skipping: false,
            more: false,
            stale: false,
            names: HashMap::new(),
            names_bytes: 0,
            checked_at: None,
            refreshed_tick: 0,
            refused: None,
            charged: None,
            recheck: RECHECK,
            read_budget: READ_BUDGET,
            max_symbols: PROCESS_SYMBOLS,
        }
    }

    /// Whether `other` reads the same file for the same user (what is read can be kept).
    pub(crate) fn same_source(&self, other: &PerfMap) -> bool {
        self.path == other.path && self.owner == other.owner
    }

    /// Memory held: the index and the cached names.
    pub(crate) fn bytes(&self) -> u64 {
        let entries = self.index.capacity() * std::mem::size_of::<Entry>();
        let names = self.names.capacity() * std::mem::size_of::<(u64, Arc<str>)>();
        (entries + names + self.names_bytes) as u64
    }

    /// The JIT symbol covering `addr`; on a miss the file is read on if it grew (at most
    /// once a second, or at the next call when a read was cut short).
    pub(crate) fn lookup(&mut self, addr: u64, cx: &mut Context<'_>) -> Option<Arc<str>> {
        if let Some(name) = self.find(addr).and_then(|e| self.name(e)) {
            return Some(name);
        }
        let due = match self.checked_at {
            None => true,
            Some(at) => {
                at.elapsed() >= self.recheck
                    || ((self.more || self.stale) && cx.tick != self.refreshed_tick)
            }
        };
        if !due {
            return None;
        }
        self.refresh(cx);
        let entry = self.find(addr)?;
        self.name(entry)
    }

    fn find(&self, addr: u64) -> Option<Entry> {
        let i = self.index.partition_point(|e| e.start <= addr);
        let e = *self.index.get(i.checked_sub(1)?)?;
        (addr < e.end()).then_some(e)
    }

    /// The name on an indexed line, read back from the file.
    fn name(&mut self, entry: Entry) -> Option<Arc<str>> {
        let at = entry.line_at();
        if let Some(name) = self.names.get(&at) {
            return Some(name.clone());
        }
        let (file, _) = self.file.as_ref()?;
        let mut buf = [0u8; LINE_CAP];
        let n = read_at_most(file, &mut buf, at);
        let (bytes, truncated) = match buf[..n].iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], false),
            None if n == LINE_CAP => (&buf[..], true),
            None => {
                self.stale = true;
                return None;
            }
        };
        let name: Arc<str> = match perf_map_line::parse(bytes, truncated) {
            Ok(line) if line.start == entry.start => Arc::from(line.name),
            _ => {
                self.stale = true;
                return None;
            }
        };
        // Overhead per name: the Arc's counts and the table's slot.
        let cost = name.len() + 48;
        if self.names_bytes + cost > NAME_CACHE_BYTES {
            self.names.clear();
            self.names_bytes = 0;
        }
        self.names.insert(at, name.clone());
        self.names_bytes += cost;
        Some(name)
    }

    /// Opens the file again (it may have been replaced, or made unsafe) and reads what was
    /// appended since the last read.
    fn refresh(&mut self, cx: &mut Context<'_>) {
        self.checked_at = Some(Instant::now());
        self.refreshed_tick = cx.tick;
        match open_checked(&self.path, self.owner) {
            // Deleted: what was read still names the process's code.
            Outcome::Absent => {}
            Outcome::Refused(reason, identity) => {
                if self.refused != Some((reason, identity)) {
                    self.refused = Some((reason, identity));
                    cx.stats.refused(reason);
                    tracing::warn!(path = %self.path.display(), reason = reason.label(),
                        uid = self.owner.uid,
                        "perf map not used: it must be a regular file owned by the process's \
                         user (or root) and not writable by others; its JIT frames stay unnamed");
                }
                self.forget();
            }
            Outcome::Opened(opened) => {
                self.refused = None;
                let same = self.file.as_ref().map(|f| f.1) == Some(opened.identity);
                if !same || self.stale {
                    self.forget();
                    self.file = Some((opened.file, opened.identity));
                }
                self.read(cx);
            }
        }
    }

    /// Lets go of the file and everything read from it.
    fn forget(&mut self) {
        self.release(self.index.len());
        self.file = None;
        self.index = Vec::new();
        self.names = HashMap::new();
        self.names_bytes = 0;
        self.offset = 0;
        self.skipping = false;
        self.more = false;
        self.stale = false;
    }

    fn release(&mut self, symbols: usize) {
        if let Some(b) = &self.charged {
            b.held.fetch_sub(symbols, Ordering::Relaxed);
        }
    }

    /// Reads from `offset` on, at most the read budget, and indexes complete lines; a
    /// partial last line is read again next time.
    fn read(&mut self, cx: &mut Context<'_>) {
        let Some((file, identity)) = self.file.take() else {
            return;
        };
        let budget = self
            .charged
            .get_or_insert_with(|| cx.budget.clone())
            .clone();
        let size = file.metadata().map_or(0, |m| m.len());
        // Shrunk, or rewritten so that what was read no longer ends a line: start over.
        let rewritten = !self.skipping && self.offset > 0 && {
            let mut last = [0u8; 1];
            read_at_most(&file, &mut last, self.offset - 1) != 1 || last[0] != b'\n'
        };
        if size < self.offset || rewritten {
            self.forget();
        }
        let allowance = self.read_budget.min(*cx.read_left);
        let end = size.min(self.offset.saturating_add(allowance));
        let mut read_now = 0u64;
        let mut buf = vec![0u8; CHUNK.min((end - self.offset) as usize)];
        let mut batch = Vec::new();
        while self.offset < end {
            let want = buf.len().min((end - self.offset) as usize);
            let n = read_at_most(&file, &mut buf[..want], self.offset);
            read_now += n as u64;
            // Nothing more may be read now: a partial line here waits for the next refresh.
            let last = n < want || self.offset + n as u64 >= end;
            let data = &buf[..n];
            let mut pos = 0;
            while pos < n {
                let rest = &data[pos..];
                let newline = rest.iter().position(|&b| b == b'\n');
                if self.skipping {
                    match newline {
                        Some(i) => {
                            pos += i + 1;
                            self.skipping = false;
                        }
                        None => pos = n,
                    }
                    continue;
                }
                match newline {
                    Some(i) => {
                        self.take(
                            self.offset + pos as u64,
                            &rest[..i],
                            false,
                            &mut batch,
                            &budget,
                            cx,
                        );
                        pos += i + 1;
                    }
                    None if rest.len() >= LINE_CAP => {
                        self.take(
                            self.offset + pos as u64,
                            &rest[..LINE_CAP],
                            true,
                            &mut batch,
                            &budget,
                            cx,
                        );
                        self.skipping = true;
                        pos = n;
                    }
                    // A partial line: the next chunk starts with it.
                    None => break,
                }
                if batch.len() >= BATCH {
                    self.merge(&mut batch, &budget);
                }
            }
            self.offset += pos as u64;
            if last || pos == 0 {
                break;
            }
        }
        self.merge(&mut batch, &budget);
        cx.stats.bytes_read += read_now;
        *cx.read_left = cx.read_left.saturating_sub(read_now);
        self.more = end < size;
        self.file = Some((file, identity));
    }

    /// Indexes one line, unless a bound is reached.
    fn take(
        &self,
        line_at: u64,
        bytes: &[u8],
        truncated: bool,
        batch: &mut Vec<Entry>,
        budget: &Budget,
        cx: &mut Context<'_>,
    ) {
        let line = match perf_map_line::parse(bytes, truncated) {
            Ok(line) => line,
            Err(Skip::Blank) => return,
            Err(Skip::NotUtf8) => {
                cx.stats.lines_not_utf8 += 1;
                return;
            }
            Err(Skip::Malformed) => {
                cx.stats.lines_malformed += 1;
                return;
            }
        };
        if line.cut {
            cx.stats.names_cut += 1;
        }
        let room = self.index.len() + batch.len() < self.max_symbols
            && budget.held.load(Ordering::Relaxed) + batch.len() < budget.limit;
        // At a bound, a line for a known start still replaces it: that adds nothing.
        let admitted = room
            || self
                .index
                .binary_search_by_key(&line.start, |e| e.start)
                .is_ok();
        match Entry::new(line.start, line.size, line_at) {
            Some(entry) if admitted => batch.push(entry),
            _ => cx.stats.symbols_dropped += 1,
        }
    }

    /// Adds parsed symbols to the index; for equal starts the later line wins.
    fn merge(&mut self, batch: &mut Vec<Entry>, budget: &Budget) {
        if batch.is_empty() {
            return;
        }
        let before = self.index.len();
        self.index.reserve_exact(batch.len());
        self.index.append(batch);
        // Stable: among equal starts, the older entries come first.
        self.index.sort_by_key(|e| e.start);
        let mut kept = 0;
        for i in 0..self.index.len() {
            let e = self.index[i];
            if kept > 0 && self.index[kept - 1].start == e.start {
                self.index[kept - 1] = e;
            } else {
                self.index[kept] = e;
                kept += 1;
            }
        }
        self.index.truncate(kept);
        if self.index.capacity() > kept + kept / 4 + BATCH {
            self.index.shrink_to_fit();
        }
        budget.held.fetch_add(kept - before, Ordering::Relaxed);
    }
}

impl Drop for PerfMap {
    fn drop(&mut self) {
        self.release(self.index.len());
    }
}

/// Reads up to `buf.len()` bytes at `at`; fewer only at the end of the file or on an error.
fn read_at_most(file: &File, buf: &mut [u8], at: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot read perf map");
                break;
            }
        }
    }
    n
}

#[cfg(test)]
#[path = "perf_map_tests.rs"]
mod tests;
