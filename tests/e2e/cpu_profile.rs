//! CPU profiling from the kernel to the output files, on workloads with known shapes.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use emberprof_exporters::pprof::validate;
use pprof::protos::{self, Message};

use crate::support::{
    assert_cpu_split, bpf_test, read_folded, record, record_pid, self_counts, spawn_until,
    Workload, EMBERPROF, SPLIT_FUNCTIONS,
};

const HZ: u64 = 99;

fn assert_within(what: &str, got: u64, expected: f64, tolerance: f64) {
    let err = (got as f64 - expected).abs() / expected;
    assert!(
        err <= tolerance,
        "{what}: got {got}, expected {expected:.0} ± {:.0}%",
        tolerance * 100.0
    );
}

crate::harness::tests![
    cpu_split_matches_known_ratio_and_sample_rate,
    deep_recursion_appears_at_full_depth,
    syscall_heavy_workload_shows_kernel_frames_under_user_frames,
    pid_filter_excludes_every_other_process,
    pprof_output_decodes_with_consistent_tables,
    no_sample_is_lost_across_fast_drains,
    ctrl_c_ends_the_recording_and_still_writes_it,
    a_full_count_map_is_counted_as_dropped_and_reported,
    a_full_stack_map_keeps_the_sample_and_marks_the_lost_stack,
    shows_progress_on_a_terminal_only,
    thousands_of_distinct_stacks_are_all_kept,
];

fn cpu_split_matches_known_ratio_and_sample_rate() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let secs = 4.0;
    let rec = record(
        "split.folded",
        &["--pid", &pid, "--duration", "4", "--format", "folded"],
    );
    let lines = read_folded(&rec.file);

    let total: u64 = lines.iter().map(|l| l.count).sum();
    assert_within("samples of one busy thread", total, HZ as f64 * secs, 0.15);

    assert_cpu_split(&self_counts(&lines, &SPLIT_FUNCTIONS), total);
    // The always-inlined loop shows as its own frame below the function it was inlined into.
    assert!(
        lines.iter().any(|l| l
            .frames
            .windows(2)
            .any(|w| w[0] == "burn_light" && w[1] == "light_inner")),
        "inlined light_inner missing under burn_light"
    );
    // Process name and pid lead every line, user frames root first.
    let prefix = format!("epworkload-{pid}");
    assert!(lines.iter().all(|l| l.frames[0] == prefix));
    // Unwound through libc (no frame pointers) by its table, down to the entry point.
    assert!(lines.iter().any(|l| l.frames[1..].starts_with(&[
        "_start".into(),
        "__libc_start_main_impl".into(),
        "__libc_start_call_main".into(),
        "main".into(),
        "cpu_split".into()
    ])));
}

fn deep_recursion_appears_at_full_depth() {
    let Some(_serial) = bpf_test() else { return };
    let depth = 30;
    let w = Workload::start(&["recurse", &depth.to_string()]);
    let rec = record_pid("recurse.folded", w.pid(), 2, &[]);
    let lines = read_folded(&rec.file);
    let total: u64 = lines.iter().map(|l| l.count).sum();
    let full: u64 = lines
        .iter()
        .filter(|l| {
            let n = l.frames.iter().filter(|f| *f == "recurse").count();
            n == depth + 1 && l.frames.last().map(String::as_str) == Some("recursion_leaf")
        })
        .map(|l| l.count)
        .sum();
    assert!(
        full as f64 >= 0.9 * total as f64,
        "{full}/{total} samples have all {} recurse frames above recursion_leaf",
        depth + 1
    );
}

fn syscall_heavy_workload_shows_kernel_frames_under_user_frames() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["syscalls"]);
    let rec = record_pid("syscalls.folded", w.pid(), 2, &[]);
    let lines = read_folded(&rec.file);
    let total: u64 = lines.iter().map(|l| l.count).sum();
    let is_kernel = |f: &String| f.ends_with("_[k]");
    for l in &lines {
        // Kernel frames are the leaf end of a stack: no user frame below a kernel frame.
        if let Some(first_k) = l.frames.iter().position(is_kernel) {
            assert!(
                l.frames[first_k..].iter().all(is_kernel),
                "user frame under kernel frames: {:?}",
                l.frames
            );
        }
    }
    let in_kernel: u64 = lines
        .iter()
        .filter(|l| {
            let user = l.frames.iter().position(|f| f == "do_writes");
            let kernel = l.frames.iter().position(is_kernel);
            matches!((user, kernel), (Some(u), Some(k)) if u < k)
        })
        .map(|l| l.count)
        .sum();
    assert!(
        in_kernel as f64 >= 0.3 * total as f64,
        "only {in_kernel}/{total} samples in the kernel under do_writes"
    );
    let write_path = lines.iter().any(|l| {
        l.frames.iter().any(|f| f == "do_writes")
            && l.frames
                .iter()
                .any(|f| f == "ksys_write_[k]" || f == "vfs_write_[k]")
    });
    assert!(
        write_path,
        "no ksys_write/vfs_write kernel frame under do_writes"
    );
}

fn pid_filter_excludes_every_other_process() {
    let Some(_serial) = bpf_test() else { return };
    let target = Workload::start(&["cpu-split"]);
    let other = Workload::start(&["recurse", "5"]);
    let filtered = record_pid("filtered.folded", target.pid(), 2, &[]);
    let lines = read_folded(&filtered.file);
    let target_prefix = format!("epworkload-{}", target.pid());
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(
            l.frames[0], target_prefix,
            "a sample of another process got through the filter"
        );
    }
    // Without the filter the other process is sampled: the filter is what kept it out.
    let all = record(
        "unfiltered.folded",
        &["--duration", "1", "--format", "folded"],
    );
    let other_prefix = format!("epworkload-{}", other.pid());
    assert!(read_folded(&all.file)
        .iter()
        .any(|l| l.frames[0] == other_prefix));
}

fn pprof_output_decodes_with_consistent_tables() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["cpu-split"]);
    let rec = record(
        "cpu.pb.gz",
        &[
            "--pid",
            &w.pid().to_string(),
            "--duration",
            "2",
            "--extra-attributes",
            "thread.id,thread.name",
        ],
    );
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&rec.file).unwrap())
        .read_to_end(&mut raw)
        .expect("output is gzip");
    let p = protos::Profile::decode(raw.as_slice()).expect("output is a pprof Profile");
    validate(&p).expect("consistent tables");

    let s = |i: i64| p.string_table[i as usize].as_str();
    let types: Vec<_> = p.sample_type.iter().map(|v| (s(v.ty), s(v.unit))).collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    let pt = p.period_type.as_ref().unwrap();
    assert_eq!((s(pt.ty), s(pt.unit)), ("cpu", "nanoseconds"));
    assert_eq!(p.period, 1_000_000_000 / HZ as i64);
    assert!(p.duration_nanos >= 1_900_000_000 && p.time_nanos > 0);

    let (samples, _) = rec.summary_counts();
    assert_eq!(
        p.sample.iter().map(|x| x.value[0] as u64).sum::<u64>(),
        samples
    );
    for x in &p.sample {
        assert_eq!(x.value[1], x.value[0] * p.period);
        let pid = x
            .label
            .iter()
            .find(|l| s(l.key) == "pid")
            .expect("pid label");
        assert_eq!(pid.num, i64::from(w.pid()));
        assert!(x.label.iter().any(|l| s(l.key) == "tid" && l.num > 0));
        assert!(x
            .label
            .iter()
            .any(|l| s(l.key) == "thread_name" && s(l.str) == "epworkload"));
    }
    let heavy = p
        .function
        .iter()
        .find(|f| s(f.name) == "burn_heavy")
        .expect("burn_heavy function");
    assert!(s(heavy.filename).ends_with("workload.c"));
    assert!(p
        .location
        .iter()
        .flat_map(|l| &l.line)
        .any(|l| l.function_id == heavy.id && l.line > 0));
    let exe = p
        .mapping
        .iter()
        .find(|m| s(m.filename).ends_with("/epworkload"))
        .expect("workload mapping");
    assert!(
        !s(exe.build_id).is_empty(),
        "the workload mapping carries its build ID"
    );
}

fn no_sample_is_lost_across_fast_drains() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["cpu-split"]);
    let args = [
        "--pid",
        &w.pid().to_string(),
        "--duration",
        "3",
        "--drain-interval",
        "100ms",
        "--format",
        "folded",
    ];
    let rec = record("drains.folded", &args);
    let (samples, kernel) = rec.summary_counts();
    assert_eq!(
        samples, kernel,
        "samples read differ from samples the kernel counted"
    );
    let folded_total: u64 = read_folded(&rec.file).iter().map(|l| l.count).sum();
    assert_eq!(folded_total, samples);
    assert_within("samples with 100 ms drains", samples, HZ as f64 * 3.0, 0.15);
    assert_eq!(rec.summary_of("cpu", "dropped"), 0, "{}", rec.summary);
}

fn ctrl_c_ends_the_recording_and_still_writes_it() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start(&["cpu-split"]);
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("interrupted.folded");
    let _ = std::fs::remove_file(&file);
    let started = Instant::now();
    let file_arg = file.to_string_lossy().into_owned();
    let pid = w.pid().to_string();
    let (mut child, mut stderr, mut log) = spawn_until(
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "60",
            "--output",
            &file_arg,
        ],
        "recording",
    );
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("reading emberprof's log");
    log.push_str(&rest);
    let status = child.wait().expect("waiting for emberprof");
    assert!(status.success(), "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "Ctrl-C did not end the recording"
    );
    let total: u64 = read_folded(&file).iter().map(|l| l.count).sum();
    assert!(total >= 50, "only {total} samples written after Ctrl-C");
}

fn a_full_count_map_is_counted_as_dropped_and_reported() {
    let Some(_serial) = bpf_test() else { return };
    let _busy = Workload::start(&["cpu-split"]);
    let _other = Workload::start(&["syscalls"]);
    // Two keys per buffer cannot hold the distinct thread + stack keys of two busy processes.
    let rec = record(
        "tiny-counts.folded",
        &[
            "--duration",
            "1",
            "--count-map-entries",
            "2",
            "--format",
            "folded",
        ],
    );
    let (samples, kernel) = rec.summary_counts();
    let dropped = rec.summary_of("cpu", "dropped");
    assert!(dropped > 0, "no drop reported: {}", rec.stderr);
    assert_eq!(
        samples + dropped,
        kernel,
        "every sample is either read or counted as dropped"
    );
    assert!(
        rec.stderr.contains("count map was full"),
        "no warning: {}",
        rec.stderr
    );
}

fn a_full_stack_map_keeps_the_sample_and_marks_the_lost_stack() {
    let Some(_serial) = bpf_test() else { return };
    let _busy = Workload::start(&["syscalls"]);
    let rec = record(
        "tiny-stacks.folded",
        &[
            "--duration",
            "1",
            "--stack-map-entries",
            "2",
            "--format",
            "folded",
        ],
    );
    let (samples, kernel) = rec.summary_counts();
    assert_eq!(samples, kernel, "a lost stack must not lose the sample");
    let lost = rec.summary_of("cpu", "stacks_lost");
    assert!(lost > 0, "{}", rec.stderr);
    let lines = read_folded(&rec.file);
    let marked: u64 = lines
        .iter()
        .filter(|l| {
            l.frames
                .iter()
                .any(|f| f.contains("stack lost: stack map full]"))
        })
        .map(|l| l.count)
        .sum();
    assert!(
        marked > 0,
        "no [… stack lost: stack map full] frame in the output"
    );
}

fn shows_progress_on_a_terminal_only() {
    let Some(_serial) = bpf_test() else { return };
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("tty.folded");
    // script(1) gives emberprof a pseudo-terminal and copies what it shows to stdout.
    let cmd = format!(
        "{EMBERPROF} record --duration 1 --format folded --output {}",
        file.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("recording ") && shown.contains("Ctrl-C to stop early"),
        "no progress shown: {shown}"
    );
    // Without a terminal (every other test), stderr holds only the summary line.
    let quiet = record("notty.folded", &["--duration", "1", "--format", "folded"]);
    assert!(!quiet.stderr.contains("Ctrl-C"), "{}", quiet.stderr);
}

/// Stacks lost, by the markers in the folded lines (a sample can lose both of its stacks).
fn lost_stacks(lines: &[crate::support::FoldedLine]) -> u64 {
    lines
        .iter()
        .map(|l| {
            l.count
                * l.frames
                    .iter()
                    .filter(|f| f.contains(" stack lost"))
                    .count() as u64
        })
        .sum()
}

fn thousands_of_distinct_stacks_are_all_kept() {
    let Some(_serial) = bpf_test() else { return };
    // 4096 paths of 14 calls, 40 us of CPU at each leaf. A bucketed stack-trace map of 16384
    // entries loses a few percent of 2000 such stacks to bucket collisions; a map keyed by
    // the stack's hash keeps them all.
    let w = Workload::start(&["tree-burn", "0", "4096", "40"]);
    let pid = w.pid().to_string();
    let rec = record(
        "tree.folded",
        &[
            "--pid",
            &pid,
            "--frequency",
            "999",
            "--duration",
            "3",
            "--format",
            "folded",
        ],
    );
    let lines = read_folded(&rec.file);
    let paths = lines
        .iter()
        .filter(|l| l.frames.iter().any(|f| f == "tree_leaf"))
        .count();
    // About 2000 on an idle host; 500 distinct stacks still lose one to a bucket collision
    // in all but 1 run in 2000.
    assert!(paths >= 500, "only {paths} distinct tree paths sampled");
    assert_eq!(lost_stacks(&lines), 0, "{}", rec.stderr);
    assert_eq!(rec.summary_of("cpu", "stacks_lost"), 0, "{}", rec.summary);

    drop(w);
}
