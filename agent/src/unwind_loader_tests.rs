//! The loader against a fake kernel and process list, with real tables (libc 23 k entries,
//! libm 5 k, ld.so 2 k, libz 1 k on Debian 12): sharing, misses, eviction of unused tables
//! only, and no process ever listed over a range another table overwrote.

use std::collections::HashMap;

use emberprof_probes::ProbeError;
use emberprof_symbolizer::unwind::compile_file;

use super::*;

const LIBC: usize = 0;
const LD: usize = 1;
const LIBM: usize = 2;
const LIBZ: usize = 3;
const PATHS: [&str; 4] = [
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib64/ld-linux-x86-64.so.2",
    "/lib/x86_64-linux-gnu/libm.so.6",
    "/lib/x86_64-linux-gnu/libz.so.1",
];

/// Processes (pid → image number, files mapped) and the files' tables.
struct Source {
    procs: HashMap<u32, (u32, Vec<usize>)>,
    tables: Vec<UnwindTable>,
    compiled: usize,
}

impl Source {
    fn new() -> Source {
        let tables = PATHS
            .iter()
            .map(|p| compile_file(std::path::Path::new(p)).expect(p))
            .collect();
        Source {
            procs: HashMap::new(),
            tables,
            compiled: 0,
        }
    }

    fn len(&self, file: usize) -> u32 {
        self.tables[file].len() as u32
    }

    fn run(&mut self, pid: u32, image: u32, files: &[usize]) {
        self.procs.insert(pid, (image, files.to_vec()));
    }
}

/// Where file `f` is mapped in every process (one mapping each).
fn start_of(file: usize) -> u64 {
    (file as u64 + 1) << 28
}

impl Tables for Source {
    fn pids(&self) -> HashSet<u32> {
        self.procs.keys().copied().collect()
    }

    fn image_key(&self, pid: u32) -> Option<u64> {
        self.procs
            .get(&pid)
            .map(|(image, f)| (u64::from(*image) << 32) | f.len() as u64)
    }

    fn unwind_mappings(&mut self, pid: u32) -> Vec<FileMapping> {
        self.procs[&pid]
            .1
            .iter()
            .map(|&file| FileMapping {
                start: start_of(file),
                end: start_of(file) + (1 << 20),
                bias: 0,
                source: TableOrigin::File(file),
                file_key: 100 + file as u64,
            })
            .collect()
    }

    fn compile_unwind_table(&mut self, source: TableOrigin) -> Option<UnwindTable> {
        self.compiled += 1;
        let TableOrigin::File(file) = source else {
            return None;
        };
        self.tables.get(file).cloned()
    }
}

/// The kernel's maps: which write last touched each entry, and the processes listed.
#[derive(Default)]
struct Kernel {
    stamps: Vec<u32>,
    /// Write id → (first, the pcs written).
    writes: HashMap<u32, (u32, Vec<u32>)>,
    procs: HashMap<u32, Vec<UnwindMapping>>,
}

impl Kernel {
    fn new(capacity: u32) -> Kernel {
        Kernel {
            stamps: vec![0; capacity as usize],
            ..Kernel::default()
        }
    }

    /// Every listed mapping points at one whole write, of its file's table, that nothing
    /// has overwritten since.
    fn check(&self, source: &Source) {
        for (pid, mappings) in &self.procs {
            for m in mappings {
                let file = (m.start >> 28) as usize - 1;
                let range = m.first as usize..(m.first + m.count) as usize;
                let id = self.stamps[m.first as usize];
                assert!(
                    self.stamps[range].iter().all(|&s| s == id),
                    "pid {pid}: file {file}'s range was partly overwritten"
                );
                let (first, pcs) = &self.writes[&id];
                assert_eq!(*first, m.first);
                let table = &source.tables[file];
                assert_eq!(pcs.len(), table.len(), "pid {pid}: not file {file}'s table");
                let base = table.base();
                let want: Vec<u32> = table.entries().map(|(a, _)| (a - base) as u32).collect();
                assert_eq!(*pcs, want, "pid {pid}: not file {file}'s table");
            }
        }
    }

    fn files_of(&self, pid: u32) -> Vec<usize> {
        let mut files: Vec<usize> = self.procs.get(&pid).map_or(Vec::new(), |ms| {
            ms.iter().map(|m| (m.start >> 28) as usize - 1).collect()
        });
        files.sort_unstable();
        files
    }
}

impl UnwindTarget for Kernel {
    fn set_rule(&mut self, _index: u32, _rule: UnwindRule) -> Result<(), ProbeError> {
        Ok(())
    }

    fn set_entries(&mut self, first: u32, entries: &[UnwindEntry]) -> Result<(), ProbeError> {
        let id = self.writes.len() as u32 + 1;
        for s in &mut self.stamps[first as usize..first as usize + entries.len()] {
            *s = id;
        }
        self.writes
            .insert(id, (first, entries.iter().map(|e| e.pc).collect()));
        Ok(())
    }

    fn set_process(&mut self, pid: u32, mappings: &[UnwindMapping]) -> Result<(), ProbeError> {
        self.procs.insert(pid, mappings.to_vec());
        Ok(())
    }

    fn forget_process(&mut self, pid: u32) {
        self.procs.remove(&pid);
    }
}

fn stats(l: &UnwindLoader) -> UnwindStats {
    l.stats().expect("tables are on")
}

#[test]
fn a_file_mapped_by_many_processes_is_compiled_and_written_once() {
    let mut s = Source::new();
    let mut k = Kernel::new(1 << 20);
    let mut l = UnwindLoader::new(Some(1 << 20));
    for pid in 1..=3 {
        s.run(pid, 0, &[LIBC, LD]);
    }
    l.list_new(&mut s, &mut k);
    k.check(&s);
    assert_eq!((s.compiled, stats(&l).files_written), (2, 2));
    assert_eq!(k.files_of(2), [LIBC, LD]);
    assert_eq!(stats(&l).used_entries, s.len(LIBC) + s.len(LD));
    // Nothing new: nothing compiled or listed again.
    l.list_new(&mut s, &mut k);
    assert_eq!((s.compiled, stats(&l).processes_listed), (2, 3));
}

#[test]
fn tables_in_use_are_kept_and_a_table_without_room_is_a_miss_compiled_once() {
    let mut s = Source::new();
    let capacity = s.len(LIBC) + s.len(LD);
    let mut k = Kernel::new(capacity);
    let mut l = UnwindLoader::new(Some(capacity));
    s.run(1, 0, &[LIBC, LD]);
    l.list_new(&mut s, &mut k);
    s.run(2, 0, &[LIBM]);
    l.list_new(&mut s, &mut k);
    k.check(&s);
    assert_eq!(k.files_of(1), [LIBC, LD]);
    assert_eq!(k.files_of(2), [] as [usize; 0], "libm did not fit");
    let st = stats(&l);
    assert_eq!((st.misses, st.evictions, s.compiled), (1, 0, 3));
    // Another process wanting libm: one more miss, and no second compile of a table
    // known not to fit.
    s.run(3, 0, &[LIBM]);
    l.list_new(&mut s, &mut k);
    assert_eq!((stats(&l).misses, s.compiled), (2, 3));
}

#[test]
fn when_a_process_exits_its_unused_tables_make_room_oldest_first() {
    let mut s = Source::new();
    let capacity = s.len(LIBC) + s.len(LD);
    assert!(s.len(LIBM) <= s.len(LIBC), "libm fits where libc was");
    let mut k = Kernel::new(capacity);
    let mut l = UnwindLoader::new(Some(capacity));
    s.run(1, 0, &[LIBC, LD]);
    l.list_new(&mut s, &mut k);
    s.run(2, 0, &[LIBM]);
    l.list_new(&mut s, &mut k);
    assert_eq!(stats(&l).misses, 1);
    s.procs.remove(&1);
    l.list_new(&mut s, &mut k);
    k.check(&s);
    // pid 2 was listed again: libm took libc's place (released first, so evicted first);
    // ld.so stays, unused, for the next process that maps it.
    assert_eq!(k.files_of(2), [LIBM]);
    let st = stats(&l);
    assert_eq!(
        (st.misses, st.evictions),
        (1, 1),
        "the retry is not a new miss"
    );
    assert_eq!(st.used_entries, s.len(LIBM));
    assert_eq!(st.unused_entries, s.len(LD));
    let compiled = s.compiled;
    s.run(3, 0, &[LD]);
    l.list_new(&mut s, &mut k);
    assert_eq!(s.compiled, compiled, "ld.so's table was still loaded");
    k.check(&s);
}

#[test]
fn an_exec_keeps_the_old_tables_until_the_new_image_is_listed() {
    let mut s = Source::new();
    let capacity = s.len(LIBC) + s.len(LIBZ);
    let mut k = Kernel::new(capacity);
    let mut l = UnwindLoader::new(Some(capacity));
    s.run(1, 0, &[LIBC, LIBZ]);
    l.list_new(&mut s, &mut k);
    // The exec: libz again, and libm, which fits only where libc is. While the new image
    // is listed, the kernel still walks pid 1 by libc's table: libm misses (and the check
    // below finds libc's range intact). Then libc is unused, and the retry takes its room.
    s.run(1, 1, &[LIBM, LIBZ]);
    l.list_new(&mut s, &mut k);
    k.check(&s);
    assert_eq!(k.files_of(1), [LIBM, LIBZ]);
    let st = stats(&l);
    assert_eq!((st.misses, st.evictions), (1, 1));
    assert_eq!(
        st.processes_listed, 3,
        "listed, listed after the exec, retried"
    );
    assert_eq!(st.used_entries, s.len(LIBM) + s.len(LIBZ));
    assert_eq!(st.unused_entries, 0);
}

#[test]
fn with_frame_pointers_only_nothing_is_compiled_or_listed() {
    let mut s = Source::new();
    let mut k = Kernel::new(1);
    let mut l = UnwindLoader::new(None);
    s.run(1, 0, &[LIBC]);
    l.list_new(&mut s, &mut k);
    assert_eq!(s.compiled, 0);
    assert!(k.procs.is_empty());
    assert_eq!(l.stats(), None);
}
