//! User stacks without frame pointers, walked in the kernel by the unwind tables compiled
//! from each file's `.eh_frame`: the workload built `-O2 -fomit-frame-pointer`, and a
//! frame-pointer build whose hot path runs through libc (which has none).

use std::collections::HashMap;

use crate::support::{
    bpf_test, read_folded, record, record_around, record_pid, FoldedLine, Workload, SPLIT_FUNCTIONS,
};

crate::harness::tests![
    without_frame_pointers_stacks_reach_the_entry_and_keep_the_known_split,
    without_frame_pointers_deep_recursion_is_intact,
    a_comparator_called_back_by_libc_stays_under_its_caller,
    one_table_per_file_however_many_processes_map_it,
    a_signal_handler_sits_on_the_signal_frame_over_the_interrupted_function,
    a_stack_deeper_than_the_limit_ends_in_a_marker_saying_so,
    short_lived_processes_are_walked_by_their_tables,
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
    let rec = record_pid("nofp-split.folded", &pid, 5, &["--frequency", "999"]);
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
    let rec = record_pid("nofp-recurse.folded", w.pid(), 2, &[]);
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
    let rec = record_pid("qsort.folded", w.pid(), 2, &[]);
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
    assert_eq!(unwind["table_misses"], 0, "{unwind}");
}

/// A timer signal's handler burns CPU: its samples go handler ← the signal trampoline's
/// frame ← the function the signal interrupted (its registers come from the signal frame,
/// its pc is looked up where it is, not one byte back) ← main ← _start.
fn a_signal_handler_sits_on_the_signal_frame_over_the_interrupted_function() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start_nofp(&["signal", "60000"]);
    let pid = w.pid().to_string();
    let rec = record_pid("nofp-signal.folded", &pid, 3, &["--frequency", "999"]);
    drop(w);
    let lines = read_folded(&rec.file);
    let handler: Vec<&FoldedLine> = user_lines(&lines)
        .into_iter()
        .filter(|l| l.frames.iter().any(|f| f == "burn_in_signal_handler"))
        .collect();
    let total: u64 = handler.iter().map(|l| l.count).sum();
    assert!(total > 200, "{total} samples in the handler");
    let whole: u64 = handler
        .iter()
        .filter(|l| {
            let at = l
                .frames
                .iter()
                .position(|f| f == "burn_in_signal_handler")
                .unwrap_or(0);
            at >= 3
                && l.frames[at - 2] == "spin_until_signalled"
                && l.frames[1] == "_start"
                && l.frames[..at].iter().any(|f| f == "main")
        })
        .map(|l| l.count)
        .sum();
    let examples: Vec<String> = handler.iter().take(5).map(|l| l.frames.join(";")).collect();
    assert!(
        whole as f64 >= 0.95 * total as f64,
        "{whole} of {total} handler samples sit on a signal frame over spin_until_signalled: {examples:#?}"
    );
}

/// Recursion 200 deep is more than a stack holds: the walk keeps the 126 innermost frames
/// and ends in a marker frame naming why, never a stack that looks whole.
fn a_stack_deeper_than_the_limit_ends_in_a_marker_saying_so() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start_nofp(&["recurse", "200"]);
    let rec = record_pid("nofp-recurse-deep.folded", w.pid(), 2, &[]);
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
            l.frames[1] == "[user stack cut: too deep]" && recursions == 125,
            "{recursions} recurse frames: {}",
            l.frames.join(";")
        );
    }
}

/// Six processes of 400 ms each, forked one after another, none known at start: each is
/// listed by the watcher's table thread at its announcement, not when the symbolizer
/// (busy for seconds with a whole host's first drain) holds it, so most of their samples
/// have whole stacks.
fn short_lived_processes_are_walked_by_their_tables() {
    let Some(_serial) = bpf_test() else { return };
    let mut w = Workload::start_nofp_paused(&["short-many", "6", "400"]);
    let rec = record_around(
        "nofp-short-many.folded",
        &["--frequency", "999", "--format", "folded"],
        || {
            // Past the start, when every process on the host is announced at once and
            // their tables are compiled.
            std::thread::sleep(std::time::Duration::from_secs(4));
            w.go_and_wait()
        },
    );
    let lines = read_folded(&rec.file);
    let burn: Vec<&FoldedLine> = user_lines(&lines)
        .into_iter()
        .filter(|l| l.frames.iter().any(|f| f == "short_lived_burn"))
        .collect();
    let total: u64 = burn.iter().map(|l| l.count).sum();
    let whole: u64 = burn
        .iter()
        .filter(|l| l.frames[1] == "_start" && l.frames.iter().any(|f| f == "short_many"))
        .map(|l| l.count)
        .sum();
    assert!(total > 500, "{total} samples in short_lived_burn");
    assert!(
        whole as f64 >= 0.6 * total as f64,
        "{whole} of {total} samples of the short-lived processes have whole stacks"
    );
}
