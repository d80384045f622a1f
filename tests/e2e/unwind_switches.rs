//! `--unwind fp` (no tables: frame pointers only) and the tables' bound
//! (`--unwind-table-mib`): a table that does not fit is a counted miss, its file walked by
//! frame pointers, and the run goes on profiling.

use std::time::{Duration, Instant};

use emberprof_symbolizer::unwind::{compile_file, ENTRY_BYTES};

use crate::support::{
    bpf_test, get, prometheus_value, read_folded, record, record_around, spawn_until, terminate,
    Workload,
};

crate::harness::tests![
    with_unwind_fp_no_table_is_compiled_and_stacks_come_from_frame_pointers,
    a_table_over_the_bound_is_a_counted_miss_and_the_run_still_profiles,
    the_bound_and_its_misses_are_on_metrics,
];

/// Keeps this thread on a CPU for `d`.
fn burn(d: Duration) {
    let end = Instant::now() + d;
    let mut x = 0u64;
    while Instant::now() < end {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// This test binary's table is larger than 1 MiB, the smallest bound: it cannot fit there.
fn check_own_table_exceeds_one_mib() {
    let exe = std::env::current_exe().expect("the test binary's path");
    let entries = compile_file(&exe)
        .expect("the test binary's unwind table")
        .len() as u64;
    assert!(
        entries * ENTRY_BYTES > 1 << 20,
        "this test needs a binary whose table exceeds 1 MiB; {} has {entries} entries",
        exe.display()
    );
}

/// The build without frame pointers, with the tables off: its stacks lose their callers
/// (walked by frame pointers, which it has none of), and nothing is compiled.
fn with_unwind_fp_no_table_is_compiled_and_stacks_come_from_frame_pointers() {
    let Some(_serial) = bpf_test() else { return };
    let w = Workload::start_nofp(&["cpu-split"]);
    let pid = w.pid().to_string();
    let args = [
        "--pid",
        &pid,
        "--duration",
        "2",
        "--frequency",
        "499",
        "--format",
        "folded",
    ];
    let fp: Vec<&str> = args.iter().copied().chain(["--unwind", "fp"]).collect();
    let rec = record("unwind-fp.folded", &fp);
    let auto = record("unwind-auto.folded", &args);
    drop(w);
    let unwind = &rec.summary["memory"]["unwind"];
    assert_eq!(unwind["mode"], "fp", "{unwind}");
    assert_eq!(unwind["tables_compiled"], 0, "{unwind}");
    assert!(unwind.get("files_written").is_none(), "{unwind}");
    let reach_main = |file: &std::path::Path| {
        let lines = read_folded(file);
        let total: u64 = lines.iter().map(|l| l.count).sum();
        let rooted: u64 = lines
            .iter()
            .filter(|l| l.frames.iter().any(|f| f == "main"))
            .map(|l| l.count)
            .sum();
        (rooted, total)
    };
    let (rooted, total) = reach_main(&rec.file);
    assert!(total > 100, "{total} samples with --unwind fp");
    assert!(
        rooted * 10 < total,
        "{rooted} of {total} samples reach main without frame pointers or tables"
    );
    // The same program with the default: tables, and whole stacks.
    assert_eq!(auto.summary["memory"]["unwind"]["mode"], "auto");
    let (rooted, total) = reach_main(&auto.file);
    assert!(
        rooted * 10 >= total * 9,
        "{rooted} of {total} samples reach main with tables"
    );
}

/// The smallest bound (1 MiB) holds libc's and the loader's tables but not this test
/// binary's: a miss, and the samples of the process are still recorded. The default bound
/// takes them all.
fn a_table_over_the_bound_is_a_counted_miss_and_the_run_still_profiles() {
    let Some(_serial) = bpf_test() else { return };
    check_own_table_exceeds_one_mib();
    let pid = std::process::id().to_string();
    let args = ["--pid", &pid, "--frequency", "499", "--format", "folded"];
    let small: Vec<&str> = args
        .iter()
        .copied()
        .chain(["--unwind-table-mib", "1"])
        .collect();
    let rec = record_around("unwind-miss.folded", &small, || {
        burn(Duration::from_secs(2))
    });
    let unwind = &rec.summary["memory"]["unwind"];
    let n = |k: &str| {
        unwind[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {unwind}"))
    };
    assert_eq!(n("table_bytes_max"), 1 << 20, "{unwind}");
    assert!(n("table_misses") >= 1, "{unwind}");
    assert!(n("files_written") >= 1, "the small libraries fit: {unwind}");
    assert!(n("entries") * ENTRY_BYTES <= 1 << 20, "{unwind}");
    // Listed again when its mappings are read again: a miss each time, but the table is
    // compiled only once (it is known not to fit).
    assert!(n("processes_listed") >= 1, "{unwind}");
    assert_eq!(
        n("tables_compiled"),
        n("files_written") + 1,
        "one compile of the table that missed: {unwind}"
    );
    let (samples, _) = rec.summary_counts();
    assert!(samples > 200, "{samples} samples of a 2 s burn at 499 Hz");
    let lines = read_folded(&rec.file);
    assert!(
        lines.iter().map(|l| l.count).sum::<u64>() > 200,
        "the profile has the samples"
    );

    let rec = record_around("unwind-fits.folded", &args, || burn(Duration::from_secs(1)));
    let unwind = &rec.summary["memory"]["unwind"];
    assert_eq!(unwind["table_misses"], 0, "{unwind}");
    assert_eq!(unwind["table_bytes_max"], 32 << 20, "the default: {unwind}");
    let written = unwind["files_written"].as_u64().unwrap_or(0);
    assert!(written > n("files_written"), "{unwind}");
}

/// The agent's /metrics: the miss, the bytes of the tables by state (adding up to the
/// bound), and the evictions counter.
fn the_bound_and_its_misses_are_on_metrics() {
    let Some(_serial) = bpf_test() else { return };
    check_own_table_exceeds_one_mib();
    let port = crate::collector::free_port();
    let listen = format!("127.0.0.1:{port}");
    let pid = std::process::id().to_string();
    let (mut agent, _stderr, log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--unwind-table-mib",
            "1",
            "--http-listen",
            &listen,
        ],
        "agent running",
    );
    // The --pid process is listed before the first sample, and the figures are published
    // as the agent starts.
    let text = String::from_utf8_lossy(&get(port, "/metrics").1).into_owned();
    let value = |name: &str| prometheus_value(&text, name);
    assert!(
        value("emberprof_unwind_table_misses_total") >= 1.0,
        "{text}"
    );
    assert!(value("emberprof_unwind_table_evictions_total") >= 0.0);
    let used = value("emberprof_unwind_table_bytes{state=\"used\"}");
    let unused = value("emberprof_unwind_table_bytes{state=\"unused\"}");
    let free = value("emberprof_unwind_table_bytes{state=\"free\"}");
    assert!(used > 0.0, "libc's table is in use: {text}");
    assert_eq!(used + unused + free, f64::from(1 << 20), "{text}");
    // Still profiling: samples of this process keep coming.
    burn(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    let samples = || {
        prometheus_value(
            &String::from_utf8_lossy(&get(port, "/metrics").1),
            "emberprof_cpu_samples_total",
        )
    };
    while samples() == 0.0 && Instant::now() < deadline {
        burn(Duration::from_millis(500));
    }
    assert!(samples() > 0.0, "no samples:\n{log}");
    terminate(&mut agent, &log);
}
