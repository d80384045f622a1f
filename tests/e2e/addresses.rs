//! Frames emberprof cannot name keep what a backend needs to name them: for a stripped PIE
//! and a stripped non-PIE build, every unnamed frame's address − mapping start + file offset
//! is a file offset inside the right function of the unstripped copy (pprof's rule), in
//! OTLP and in pprof files alike.

use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};

use crate::collector::TestCollector;
use crate::support::{bpf_test, decode_gz_pprof, record, SPLIT_FUNCTIONS};

/// The cpu-split workload built as asked, and a stripped copy: (unstripped, stripped).
fn build(name: &str, flags: &[&str]) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/workload.c");
    let full = dir.join(format!("{name}-full"));
    let stripped = dir.join(name);
    let status = Command::new("cc")
        .args([
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
        ])
        .args(["-fno-optimize-sibling-calls", "-pthread"])
        .args(flags)
        .arg("-o")
        .arg(&full)
        .arg(&src)
        .status()
        .expect("running cc");
    assert!(status.success(), "building {name}");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&full)
        .status()
        .expect("running strip (binutils)");
    assert!(status.success(), "stripping {name}");
    (full, stripped)
}

/// The unstripped copy's functions, and its loadable segments as (file offset, size, vaddr).
struct Symbols {
    functions: Vec<(u64, u64, String)>,
    segments: Vec<(u64, u64, u64)>,
}

impl Symbols {
    fn read(path: &Path) -> Symbols {
        let data = std::fs::read(path).unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let functions = obj
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.size() > 0)
            .map(|s| (s.address(), s.size(), s.name().unwrap_or("").to_string()))
            .collect();
        let segments = obj
            .segments()
            .map(|s| {
                let (offset, size) = s.file_range();
                (offset, size, s.address())
            })
            .collect();
        Symbols {
            functions,
            segments,
        }
    }

    /// The function holding a file offset.
    fn function_at(&self, file_offset: u64) -> Option<&str> {
        let &(seg_offset, _, vaddr) = self
            .segments
            .iter()
            .find(|(o, size, _)| file_offset >= *o && file_offset < o + size)?;
        self.function_at_vaddr(file_offset - seg_offset + vaddr)
    }

    /// The function holding a link-time address.
    fn function_at_vaddr(&self, addr: u64) -> Option<&str> {
        self.functions
            .iter()
            .find(|(start, size, _)| addr >= *start && addr < start + size)
            .map(|(_, _, name)| name.as_str())
    }
}

/// Checks one unnamed frame of the stripped binary; returns its function. The mapping must
/// be filled in (a real range holding the address), address − start + offset must be a file
/// offset in a function (pprof's rule), and the address itself must be that function's
/// link-time address (what Pyroscope's symbolizer looks up).
fn resolve(symbols: &Symbols, address: u64, start: u64, limit: u64, offset: u64) -> &str {
    assert!(
        start <= address && address < limit,
        "address {address:#x} outside its mapping {start:#x}..{limit:#x}"
    );
    let file_offset = address - start + offset;
    let function = symbols
        .function_at(file_offset)
        .unwrap_or_else(|| panic!("file offset {file_offset:#x} is in no function"));
    assert_eq!(
        symbols.function_at_vaddr(address),
        Some(function),
        "address {address:#x} is not the link-time address of {function}"
    );
    function
}

fn check_variant(name: &str, flags: &[&str]) {
    let (full, stripped) = build(name, flags);
    let symbols = Symbols::read(&full);
    let collector = TestCollector::start();
    let mut child = Guard(Command::new(&stripped).arg("cpu-split").spawn().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let pid = child.0.id().to_string();
    let rec = record(
        &format!("{name}.pb.gz"),
        &[
            "--pid",
            &pid,
            "--duration",
            "2",
            "--otlp-endpoint",
            &collector.endpoint(),
        ],
    );
    let _ = child.0.kill();
    let _ = child.0.wait();
    // Unwound by the tables, stacks reach the binary's entry point.
    let expected: Vec<&str> = SPLIT_FUNCTIONS
        .iter()
        .copied()
        .chain(["cpu_split", "main", "_start"])
        .collect();

    // OTLP: every unnamed frame of the stripped binary, leaf frames in a burn function.
    let received = collector.received();
    let (mut leaves, mut burn_leaves, mut frames) = (0, 0, 0);
    for req in &received.profiles {
        let dict = req.dictionary.as_ref().unwrap();
        let string = |i: i32| dict.string_table[i as usize].as_str();
        for p in req
            .resource_profiles
            .iter()
            .flat_map(|rp| &rp.scope_profiles[0].profiles)
        {
            for s in &p.samples {
                let stack = &dict.stack_table[s.stack_index as usize];
                let mut first = true;
                for &l in &stack.location_indices {
                    let loc = &dict.location_table[l as usize];
                    let m = &dict.mapping_table[loc.mapping_index as usize];
                    if !string(m.filename_strindex).ends_with(&format!("/{name}")) {
                        continue;
                    }
                    assert!(loc.lines.is_empty(), "a stripped binary's frame was named");
                    let f = resolve(
                        &symbols,
                        loc.address,
                        m.memory_start,
                        m.memory_limit,
                        m.file_offset,
                    );
                    assert!(expected.contains(&f), "{f} is not on the workload's stacks");
                    frames += 1;
                    if first {
                        leaves += s.values[0];
                        if SPLIT_FUNCTIONS.contains(&f) {
                            burn_leaves += s.values[0];
                        }
                        first = false;
                    }
                }
            }
        }
    }
    assert!(
        frames > 10,
        "{name}: only {frames} frames of the stripped binary"
    );
    assert!(
        burn_leaves as f64 >= 0.95 * leaves as f64,
        "{name}: {burn_leaves} of {leaves} leaf samples in a burn function"
    );

    // The pprof file follows the same rule.
    let profile = decode_gz_pprof(&std::fs::read(&rec.file).unwrap());
    let mut pprof_frames = 0;
    for loc in &profile.location {
        let Some(m) = profile.mapping.iter().find(|m| m.id == loc.mapping_id) else {
            continue;
        };
        if !profile.string_table[m.filename as usize].ends_with(&format!("/{name}")) {
            continue;
        }
        let f = resolve(
            &symbols,
            loc.address,
            m.memory_start,
            m.memory_limit,
            m.file_offset,
        );
        assert!(expected.contains(&f), "{f} is not on the workload's stacks");
        pprof_frames += 1;
    }
    assert!(pprof_frames > 3, "{name}: {pprof_frames} pprof locations");
}

/// Kills the child if the test fails before it does.
struct Guard(std::process::Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

crate::harness::tests![
    unnamed_frames_of_a_stripped_pie_give_back_their_function,
    unnamed_frames_of_a_stripped_non_pie_give_back_their_function,
];

fn unnamed_frames_of_a_stripped_pie_give_back_their_function() {
    let Some(_serial) = bpf_test() else { return };
    check_variant("epw-stripped-pie", &["-fPIE", "-pie"]);
}

fn unnamed_frames_of_a_stripped_non_pie_give_back_their_function() {
    let Some(_serial) = bpf_test() else { return };
    check_variant("epw-stripped-nopie", &["-fno-pie", "-no-pie"]);
}
