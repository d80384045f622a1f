//! User stacks without frame pointers, walked in the kernel by the unwind tables compiled
//! from each file's `.eh_frame`: the workload built `-O2 -fomit-frame-pointer`, and a
//! frame-pointer build whose hot path runs through libc (which has none).

use std::collections::HashMap;

use crate::support::{bpf_test, read_folded, record, FoldedLine, Workload, SPLIT_FUNCTIONS};

crate::harness::tests![
    without_frame_pointers_stacks_reach_the_entry_and_keep_the_known_split,
    without_frame_pointers_deep_recursion_is_intact,
    a_comparator_called_back_by_libc_stays_under_its_caller,
    one_table_per_file_however_many_processes_map_it,
];

/// Lines with user frames: kernel-only stacks (a sample while exiting) have none to walk.
fn user_lines(lines: &[FoldedLine]) -> Vec<&FoldedLine> {
    lines
        .iter()
        .filter(|l| l.frames.get(1).is_some_and(|f| !f.ends_with("_[k]")))
        .collect()
}

fn without_frame_pointers_stacks_reach_the_entry_and_keep_the_known_split() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start_nofp(&["cpu-split"]);
    let pid = w.pid().to_string();
    // 999 Hz for 5 s: about 5000 samples, so that sampling noise is well under 1 point.
    let rec = record(
        "nofp-split.folded",
        &[
            "--pid",
            &pid,
            "--duration",
            "5",
            "--frequency",
            "999",
            "--format",
            "folded",
        ],
    );
    drop(w);
    let lines = read_folded(&rec.file);
    let user = user_lines(&lines);
    let total: u64 = user.iter().map(|l| l.count).sum();
    assert!(total > 2000, "{total} samples");
    let unrooted: Vec<_> = user
        .iter()
        .filter(|l| {
            l.frames[1..4] != ["_start", "__libc_start_main_impl", "__libc_start_call_main"]
        })
        .map(|l| l.frames.join(";"))
        .collect();
    assert!(
        unrooted.is_empty(),
        "stacks that do not reach _start: {unrooted:#?}"
    );
    let mut share: HashMap<&str, u64> = HashMap::new();
    for l in &user {
        if let Some(f) = l
            .frames
            .iter()
            .find(|f| SPLIT_FUNCTIONS.contains(&f.as_str()))
        {
            *share
                .entry(SPLIT_FUNCTIONS.iter().find(|s| *s == f).unwrap())
                .or_default() += l.count;
        }
    }
    for (name, expected) in SPLIT_FUNCTIONS.iter().zip([60.0, 30.0, 10.0]) {
        let got = 100.0 * share.get(name).copied().unwrap_or(0) as f64 / total as f64;
        assert!(
            (got - expected).abs() <= 2.0,
            "{name}: {got:.1}% of {total} samples, expected {expected}% within 2 points"
        );
        // Every sample in it has main and cpu_split above it.
        assert!(user
            .iter()
            .filter(|l| l.frames.iter().any(|f| f == name))
            .all(|l| l.frames[4..6] == ["main", "cpu_split"]));
    }
}

fn without_frame_pointers_deep_recursion_is_intact() {
    let Some(_serial) = bpf_test() else { return };
    let depth = 30;
    let w = Workload::start_nofp(&["recurse", &depth.to_string()]);
    let rec = record(
        "nofp-recurse.folded",
        &[
            "--pid",
            &w.pid().to_string(),
            "--duration",
            "2",
            "--format",
            "folded",
        ],
    );
    drop(w);
    let lines = read_folded(&rec.file);
    let leaf: Vec<_> = user_lines(&lines)
        .into_iter()
        .filter(|l| l.frames.iter().any(|f| f == "recursion_leaf"))
        .collect();
    assert!(!leaf.is_empty(), "no samples in recursion_leaf");
    for l in leaf {
        let recursions = l.frames.iter().filter(|f| *f == "recurse").count();
        assert!(
            recursions >= depth && l.frames[1] == "_start",
            "{recursions} recurse frames: {}",
            l.frames.join(";")
        );
    }
}

/// The frame-pointer build sorts with libc's qsort, whose merge sort has no frame pointers:
/// walked by frame pointers the comparator lost its caller; by the tables it keeps it.
fn a_comparator_called_back_by_libc_stays_under_its_caller() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["qsort", "6000"]);
    let rec = record(
        "qsort.folded",
        &[
            "--pid",
            &w.pid().to_string(),
            "--duration",
            "2",
            "--format",
            "folded",
        ],
    );
    drop(w);
    let lines = read_folded(&rec.file);
    let comparator: Vec<_> = lines
        .iter()
        .filter(|l| l.frames.last().is_some_and(|f| f == "compare_numbers"))
        .collect();
    let total: u64 = comparator.iter().map(|l| l.count).sum();
    assert!(total >= 50, "{total} samples in the comparator");
    let lost: Vec<_> = comparator
        .iter()
        .filter(|l| {
            !l.frames
                .windows(3)
                .any(|w| w[0] == "main" && w[1] == "sort_numbers" && w[2].contains("qsort"))
        })
        .map(|l| l.frames.join(";"))
        .collect();
    assert!(
        lost.is_empty(),
        "comparator samples not under main;sort_numbers;qsort: {lost:#?}"
    );
}

/// Three processes of one binary: its table, libc's, the loader's and the vdso's are
/// compiled and written once each, and the three processes are listed.
fn one_table_per_file_however_many_processes_map_it() {
    let Some(_serial) = bpf_test() else { return };
    let ws: Vec<Workload> = (0..3)
        .map(|_| Workload::start_nofp(&["cpu-split"]))
        .collect();
    let pids: Vec<String> = ws.iter().map(|w| w.pid().to_string()).collect();
    let mut args: Vec<&str> = pids.iter().flat_map(|p| ["--pid", p.as_str()]).collect();
    args.extend(["--duration", "1", "--format", "folded"]);
    let rec = record("nofp-three.folded", &args);
    drop(ws);
    let unwind = &rec.summary["memory"]["unwind"];
    assert_eq!(unwind["processes_listed"], 3, "{unwind}");
    assert_eq!(
        unwind["files_written"], 4,
        "the workload, libc, ld.so and the vdso: {unwind}"
    );
    assert_eq!(unwind["tables_compiled"], 4, "{unwind}");
    assert_eq!(unwind["entries_full"], 0, "{unwind}");
}
