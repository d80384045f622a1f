//! JIT symbols from perf map files (`/tmp/perf-PID.map`): what Node's
//! `--perf-basic-prof`, JVM agents and others write for code in anonymous memory. Each line
//! is `START SIZE NAME`, hexadecimal; a later line for the same start replaces an earlier
//! one, since JITs reuse memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A miss looks at the file again at most this often: a JIT process without a perf map has
/// many unnamed frames, and each must not cost a stat.
const RECHECK: Duration = Duration::from_secs(1);

struct Symbol {
    start: u64,
    end: u64,
    name: Arc<str>,
}

/// One process's perf map, read lazily and again when the file has grown or changed.
pub(crate) struct PerfMap {
    path: PathBuf,
    symbols: Vec<Symbol>,
    /// Size and modification time of the file when last read.
    read_as: Option<(u64, SystemTime)>,
    checked_at: Option<Instant>,
    recheck: Duration,
}

impl PerfMap {
    pub(crate) fn new(path: PathBuf) -> PerfMap {
        PerfMap {
            path,
            symbols: Vec::new(),
            read_as: None,
            checked_at: None,
            recheck: RECHECK,
        }
    }

    /// The JIT symbol covering `addr`; on a miss the file is read again if it changed.
    pub(crate) fn lookup(&mut self, addr: u64) -> Option<Arc<str>> {
        if let Some(name) = self.find(addr) {
            return Some(name);
        }
        if self.checked_at.is_some_and(|t| t.elapsed() < self.recheck) {
            return None;
        }
        self.checked_at = Some(Instant::now());
        let meta = std::fs::metadata(&self.path).ok()?;
        let version = (meta.len(), meta.modified().ok()?);
        if self.read_as == Some(version) {
            return None;
        }
        let text = std::fs::read_to_string(&self.path).ok()?;
        self.symbols = parse(&text);
        self.read_as = Some(version);
        self.find(addr)
    }

    fn find(&self, addr: u64) -> Option<Arc<str>> {
        let i = self.symbols.partition_point(|s| s.start <= addr);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        (addr < s.end).then(|| s.name.clone())
    }
}

fn parse(text: &str) -> Vec<Symbol> {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut symbols: Vec<(usize, Symbol)> = text
        .lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let mut parts = line.splitn(3, ' ');
            let start = hex(parts.next()?)?;
            let size = hex(parts.next()?)?;
            let name = parts.next()?.trim();
            (size > 0 && !name.is_empty()).then(|| {
                let symbol = Symbol {
                    start,
                    end: start.saturating_add(size),
                    name: Arc::from(name),
                };
                (i, symbol)
            })
        })
        .collect();
    // Latest line first among equal starts, so dedup keeps it.
    symbols.sort_by(|a, b| a.1.start.cmp(&b.1.start).then(b.0.cmp(&a.0)));
    symbols.dedup_by_key(|(_, s)| s.start);
    symbols.into_iter().map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_lines_win_and_gaps_stay_unnamed() {
        let dir = std::env::temp_dir().join(format!("ep-perfmap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("perf-1.map");
        std::fs::write(
            &path,
            "7f0000001000 100 LazyCompile:~handler /app/server.js:10\n\
             0x7f0000002000 0x40 old\n\
             bogus line\n\
             7f0000002000 40 Builtin:JSEntry\n",
        )
        .unwrap();
        let mut map = PerfMap::new(path.clone());
        map.recheck = Duration::ZERO;
        assert_eq!(
            map.lookup(0x7f0000001080).as_deref(),
            Some("LazyCompile:~handler /app/server.js:10")
        );
        assert_eq!(
            map.lookup(0x7f0000002010).as_deref(),
            Some("Builtin:JSEntry")
        );
        assert_eq!(
            map.lookup(0x7f0000001100),
            None,
            "past the end of the symbol"
        );
        // The JIT appends: a miss reads the file again.
        std::fs::write(&path, "7f0000003000 10 Function:late\n").unwrap();
        assert_eq!(map.lookup(0x7f0000003004).as_deref(), Some("Function:late"));
        // Misses within the recheck interval do not look at the file again.
        map.recheck = Duration::from_secs(3600);
        std::fs::write(&path, "7f0000004000 10 Function:later\n").unwrap();
        assert_eq!(map.lookup(0x7f0000004004), None);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(PerfMap::new(dir.join("none")).lookup(1), None);
    }
}
