use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;
use crate::perf_map_line::NAME_CAP;

/// The test process's own user: files it writes are its own.
fn me() -> Owner {
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    Owner { uid, gid }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ep-perfmap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a map readable by all and writable only by its owner, whatever the umask.
fn write_map(path: &Path, text: impl AsRef<[u8]>) -> std::io::Result<()> {
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
}

fn append(path: &Path, text: &[u8]) {
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .unwrap()
        .write_all(text)
        .unwrap();
}

/// What a symbolizer passes to lookups; every lookup is a new symbolize call.
struct Cx {
    stats: PerfMapStats,
    budget: Arc<Budget>,
    tick: u64,
    read_per_call: u64,
}

impl Cx {
    fn new() -> Cx {
        Cx {
            stats: PerfMapStats::default(),
            budget: Budget::new(HOST_SYMBOLS),
            tick: 0,
            read_per_call: READ_PER_CALL,
        }
    }

    fn lookup(&mut self, map: &mut PerfMap, addr: u64) -> Option<String> {
        self.lookups(&mut [(map, addr)]).remove(0)
    }

    /// Lookups in one symbolize call: they share its read allowance.
    fn lookups(&mut self, each: &mut [(&mut PerfMap, u64)]) -> Vec<Option<String>> {
        self.tick += 1;
        let mut read_left = self.read_per_call;
        each.iter_mut()
            .map(|(map, addr)| {
                let mut cx = Context {
                    stats: &mut self.stats,
                    tick: self.tick,
                    budget: &self.budget,
                    read_left: &mut read_left,
                };
                map.lookup(*addr, &mut cx).map(|n| n.to_string())
            })
            .collect()
    }
}

fn eager(path: &Path) -> PerfMap {
    let mut map = PerfMap::new(path.to_path_buf(), me());
    map.recheck = Duration::ZERO;
    map
}

#[test]
fn later_lines_win_and_gaps_stay_unnamed() {
    let d = dir("basic");
    let path = d.join("perf-1.map");
    write_map(
        &path,
        "7f0000001000 100 LazyCompile:~handler /app/server.js:10\n\
         0x7f0000002000 0x40 old\n\
         bogus line\n\
         7f0000002000 40 Builtin:JSEntry\n",
    )
    .unwrap();
    let mut cx = Cx::new();
    let mut map = eager(&path);
    assert_eq!(
        cx.lookup(&mut map, 0x7f0000001080).as_deref(),
        Some("LazyCompile:~handler /app/server.js:10")
    );
    assert_eq!(
        cx.lookup(&mut map, 0x7f0000002010).as_deref(),
        Some("Builtin:JSEntry")
    );
    assert_eq!(cx.lookup(&mut map, 0x7f0000001100), None, "past the end");
    assert_eq!(cx.stats.lines_malformed, 1, "{:?}", cx.stats);
    // Misses within the recheck interval do not look at the file again.
    map.recheck = Duration::from_secs(3600);
    append(&path, b"7f0000004000 10 Function:later\n");
    assert_eq!(cx.lookup(&mut map, 0x7f0000004004), None);
    map.recheck = Duration::ZERO;
    assert_eq!(
        cx.lookup(&mut map, 0x7f0000004004).as_deref(),
        Some("Function:later")
    );
    assert_eq!(
        PerfMap::new(d.join("none"), me()).find(1).map(|e| e.start),
        None
    );
    assert_eq!(cx.lookup(&mut eager(&d.join("none")), 1), None);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn only_appended_bytes_are_read_and_a_partial_line_waits_for_its_end() {
    let d = dir("append");
    let path = d.join("perf-1.map");
    let first = b"1000 10 first\n2000 10 second\n";
    write_map(&path, first).unwrap();
    let mut cx = Cx::new();
    let mut map = eager(&path);
    assert_eq!(cx.lookup(&mut map, 0x1004).as_deref(), Some("first"));
    assert_eq!(cx.stats.bytes_read, first.len() as u64);
    // A line being written: not indexed until its newline is there.
    append(&path, b"3000 10 thi");
    assert_eq!(cx.lookup(&mut map, 0x3004), None);
    append(&path, b"rd\n");
    assert_eq!(cx.lookup(&mut map, 0x3004).as_deref(), Some("third"));
    // Read: the first two lines once, the partial line twice.
    assert_eq!(
        cx.stats.bytes_read,
        (first.len() + "3000 10 thi".len() + "3000 10 third\n".len()) as u64
    );
    // Names already indexed come from the index, without reading the file on.
    let before = cx.stats.bytes_read;
    assert_eq!(cx.lookup(&mut map, 0x2004).as_deref(), Some("second"));
    assert_eq!(cx.stats.bytes_read, before);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_truncated_rewritten_or_replaced_file_is_read_from_the_start() {
    let d = dir("restart");
    let path = d.join("perf-1.map");
    write_map(&path, "1000 10 one\n2000 10 two\n").unwrap();
    let mut cx = Cx::new();
    let mut map = eager(&path);
    assert_eq!(cx.lookup(&mut map, 0x2004).as_deref(), Some("two"));
    // Truncated and rewritten shorter: old symbols are gone.
    write_map(&path, "5000 10 five\n").unwrap();
    assert_eq!(cx.lookup(&mut map, 0x5004).as_deref(), Some("five"));
    assert_eq!(cx.lookup(&mut map, 0x2004), None);
    // Rewritten in place to a longer text: the byte before the read offset is no longer
    // a line end, so it starts over.
    write_map(&path, "6000 10 sixsix\n7000 10 seven\n").unwrap();
    assert_eq!(cx.lookup(&mut map, 0x7004).as_deref(), Some("seven"));
    assert_eq!(cx.lookup(&mut map, 0x5004), None);
    // Rewritten in place at the same length: a name read back that does not match the
    // index makes the next call start over.
    write_map(&path, "8000 10 eighte\n7000 10 seven\n").unwrap();
    assert_eq!(cx.lookup(&mut map, 0x6004), None);
    assert_eq!(cx.lookup(&mut map, 0x8004).as_deref(), Some("eighte"));
    // Replaced by another file (another inode).
    let other = d.join("new.map");
    write_map(&other, "9000 10 nine\n").unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert_eq!(cx.lookup(&mut map, 0x9004).as_deref(), Some("nine"));
    assert_eq!(cx.lookup(&mut map, 0x8004), None);
    // Deleted: what was read still names the process's code.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(cx.lookup(&mut map, 0x9004).as_deref(), Some("nine"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lines_that_are_not_utf8_are_skipped_and_counted_not_the_whole_map() {
    let d = dir("utf8");
    let path = d.join("perf-1.map");
    write_map(
        &path,
        b"1000 10 before\n2000 10 caf\xe9 latin-1\n3000 10 after \xe2\x9c\x93\n".as_slice(),
    )
    .unwrap();
    let mut cx = Cx::new();
    let mut map = eager(&path);
    assert_eq!(cx.lookup(&mut map, 0x1004).as_deref(), Some("before"));
    assert_eq!(cx.lookup(&mut map, 0x3004).as_deref(), Some("after ✓"));
    assert_eq!(cx.lookup(&mut map, 0x2004), None);
    assert_eq!(cx.stats.lines_not_utf8, 1, "{:?}", cx.stats);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn long_names_are_cut_and_long_lines_skipped_to_their_end_a_budget_at_a_time() {
    let d = dir("long");
    let path = d.join("perf-1.map");
    // A 1 MB name (no newline yet), as big as several reads.
    let mut text = b"1000 10 ".to_vec();
    text.extend(std::iter::repeat_n(b'x', 1 << 20));
    write_map(&path, &text).unwrap();
    let mut cx = Cx::new();
    let mut map = eager(&path);
    map.read_budget = 300 << 10;
    let name = cx
        .lookup(&mut map, 0x1004)
        .expect("named from the head of the line");
    assert_eq!(name.len(), NAME_CAP);
    assert!(name.bytes().all(|b| b == b'x'));
    assert_eq!(cx.stats.names_cut, 1);
    assert!(map.more && map.skipping);
    // The rest of the line is skipped over the next calls, then the next line is read.
    append(&path, b"\n2000 10 next\n");
    let mut calls = 0;
    while cx.lookup(&mut map, 0x2004).is_none() {
        calls += 1;
        assert!(calls < 10, "the rest of the line is read in a few budgets");
    }
    assert!(
        calls >= 2,
        "one read is bounded by the budget ({calls} calls)"
    );
    assert_eq!(cx.stats.names_cut, 1, "counted once");
    // Memory: an index entry and a name or two, not the line.
    assert!(map.bytes() < 64 << 10, "{} bytes", map.bytes());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn symbols_past_the_process_and_host_bounds_are_dropped_and_counted() {
    let d = dir("bounds");
    let path = d.join("perf-1.map");
    let lines: String = (0..100)
        .map(|i| format!("{:x} 10 f{i}\n", 0x1000 + i * 0x10))
        .collect();
    write_map(&path, &lines).unwrap();
    let mut cx = Cx::new();
    let mut map = eager(&path);
    map.max_symbols = 40;
    assert_eq!(cx.lookup(&mut map, 0x1004).as_deref(), Some("f0"));
    assert_eq!(map.index.len(), 40);
    assert_eq!(cx.stats.symbols_dropped, 60);
    assert_eq!(cx.lookup(&mut map, 0x1000 + 50 * 0x10), None);
    // At the bound, a known start is still replaced (a JIT reusing memory).
    append(&path, b"1000 10 g0\n");
    assert_eq!(cx.lookup(&mut map, 0x1004).as_deref(), Some("f0"), "a hit");
    assert_eq!(cx.lookup(&mut map, 0x100c + 50 * 0x10), None);
    assert_eq!(cx.lookup(&mut map, 0x1004).as_deref(), Some("g0"));
    assert_eq!(map.index.len(), 40);
    assert_eq!(cx.budget.held.load(Ordering::Relaxed), 40);
    // The host-wide bound holds across processes.
    let mut other = eager(&path);
    cx.budget = Budget::new(70);
    let mut third = eager(&path);
    assert!(cx.lookup(&mut other, 0x1004).is_some());
    assert_eq!(cx.budget.held.load(Ordering::Relaxed), 70);
    assert_eq!(other.index.len(), 70);
    assert!(cx.lookup(&mut third, 0x1004).is_none(), "no room left");
    drop(other);
    assert_eq!(
        cx.budget.held.load(Ordering::Relaxed),
        0,
        "given back when dropped"
    );
    drop(map);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_big_map_is_read_in_bounded_steps_and_indexed_compactly() {
    let d = dir("big");
    let path = d.join("perf-1.map");
    // A JVM-sized map: 300,000 symbols, about 30 MB; the last one is looked up.
    let mut text = String::with_capacity(32 << 20);
    for i in 0..300_000u64 {
        text.push_str(&format!(
            "{:x} 80 Lcom/example/service/generated/Handler{i};::handleRequestWithAVeryLongName\n",
            0x7f00_0000_0000 + i * 0x100
        ));
    }
    write_map(&path, &text).unwrap();
    let mut cx = Cx::new();
    let mut map = eager(&path);
    let last = 0x7f00_0000_0000 + 299_999 * 0x100 + 4;
    let mut calls = 1;
    while cx.lookup(&mut map, last).is_none() {
        calls += 1;
        assert!(calls <= 3, "a 30 MB map takes two reads of 16 MB");
    }
    assert_eq!(calls, 2);
    assert_eq!(
        cx.lookup(&mut map, last).as_deref(),
        Some("Lcom/example/service/generated/Handler299999;::handleRequestWithAVeryLongName")
    );
    assert_eq!(map.index.len(), 300_000);
    assert!(
        map.bytes() < 6 << 20,
        "{} bytes held for a {} byte map",
        map.bytes(),
        text.len()
    );
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn maps_share_one_read_allowance_per_symbolize_call() {
    let d = dir("shared");
    let path = d.join("perf-1.map");
    let lines: String = (0..1000)
        .map(|i| format!("{:x} 10 f{i}\n", 0x1000 + i * 0x10))
        .collect();
    write_map(&path, &lines).unwrap();
    let last = 0x1000 + 999 * 0x10 + 4;
    let (mut a, mut b) = (eager(&path), eager(&path));
    let mut cx = Cx::new();
    // Room for most of one map per call: the second waits for the next call.
    cx.read_per_call = lines.len() as u64 - 100;
    let first = cx.lookups(&mut [(&mut a, last), (&mut b, last)]);
    assert_eq!(first, [None, None]);
    assert_eq!(cx.stats.bytes_read, lines.len() as u64 - 100);
    assert!(a.offset > 0);
    assert_eq!(b.offset, 0, "nothing left for the second map");
    let second = cx.lookups(&mut [(&mut a, last), (&mut b, last)]);
    assert_eq!(second[0].as_deref(), Some("f999"));
    assert_eq!(second[1], None);
    let third = cx.lookups(&mut [(&mut a, last), (&mut b, last)]);
    assert_eq!(third[1].as_deref(), Some("f999"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_fifo_is_refused_without_blocking_and_counted_once() {
    let d = dir("fifo");
    let path = d.join("perf-1.map");
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let mut cx = Cx::new();
    let mut map = eager(&path);
    for _ in 0..3 {
        assert_eq!(cx.lookup(&mut map, 0x1004), None);
    }
    assert_eq!(cx.stats.refused_not_regular, 1, "{:?}", cx.stats);
    // Replaced by a regular file: used.
    std::fs::remove_file(&path).unwrap();
    write_map(&path, "1000 10 f\n").unwrap();
    assert_eq!(cx.lookup(&mut map, 0x1004).as_deref(), Some("f"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_map_that_becomes_writable_by_others_is_dropped() {
    let d = dir("mode");
    let path = d.join("perf-1.map");
    write_map(&path, "1000 10 f\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cx = Cx::new();
    let mut map = eager(&path);
    assert_eq!(cx.lookup(&mut map, 0x1004).as_deref(), Some("f"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    append(&path, b"2000 10 g\n");
    assert_eq!(cx.lookup(&mut map, 0x2004), None);
    assert_eq!(
        cx.lookup(&mut map, 0x1004),
        None,
        "what was read is let go too"
    );
    assert_eq!(cx.stats.refused_writable, 1, "{:?}", cx.stats);
    assert_eq!(cx.budget.held.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn another_users_map_is_refused_and_counted_once() {
    let d = dir("owner");
    let path = d.join("perf-1.map");
    write_map(&path, "1000 10 forged\n").unwrap();
    let victim = Owner {
        uid: 4242,
        gid: 4242,
    };
    // Written by user 4343 for a process of user 4242. Needs root: fails, never skips.
    std::os::unix::fs::chown(&path, Some(4343), Some(4343))
        .unwrap_or_else(|e| panic!("chown (tests run as root): {e}"));
    let mut cx = Cx::new();
    let mut map = PerfMap::new(path.clone(), victim);
    map.recheck = Duration::ZERO;
    assert_eq!(cx.lookup(&mut map, 0x1004), None);
    assert_eq!(cx.lookup(&mut map, 0x1004), None);
    assert_eq!(cx.stats.refused_owner, 1, "{:?}", cx.stats);
    std::os::unix::fs::chown(&path, Some(4242), Some(4242)).unwrap();
    assert_eq!(cx.lookup(&mut map, 0x1004).as_deref(), Some("forged"));
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn index_entries_pack_size_and_offset_into_16_bytes() {
    assert_eq!(std::mem::size_of::<Entry>(), 16);
    let e = Entry::new(0x7f00_0000_0000, 0x1c0, (1 << 36) - 1).unwrap();
    assert_eq!(
        (e.start, e.end(), e.line_at()),
        (0x7f00_0000_0000, 0x7f00_0000_01c0, (1 << 36) - 1)
    );
    let huge = Entry::new(u64::MAX - 10, u64::MAX, 0).unwrap();
    assert_eq!(huge.end(), u64::MAX, "clamped and saturated, not wrapped");
    assert_eq!(
        Entry::new(0x1000, 1 << 40, 7).unwrap().end(),
        0x1000 + (1 << 28) - 1
    );
    assert!(
        Entry::new(0x1000, 0x10, 1 << 36).is_none(),
        "past 64 GiB into the file"
    );
}
