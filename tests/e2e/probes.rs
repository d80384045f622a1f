//! Probe points (`--probe`): a function's durations and calls, USDT and tracepoint hits,
//! in other mount namespaces, the rate guard, and bad specs.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, ExponentialHistogramDataPoint};

use crate::collector::TestCollector;
use crate::support::{
    bpf_test, decode_gz_pprof, otlp_metrics, parse_histograms, read_folded, record_around,
    sections, spawn_until, terminate, total_under, EMBERPROF,
};
use emberprof_test_support::workload::probe_work_binary;

crate::harness::tests![
    function_durations_land_in_their_buckets_exactly_in_text_and_otlp,
    function_stacks_are_the_callers_weighted_by_time,
    usdt_hits_are_counted_exactly,
    tracepoint_hits_are_counted_per_process,
    a_binary_in_a_private_mount_namespace_is_probed,
    the_agent_waits_for_a_file_and_probes_processes_started_later,
    two_containers_of_one_image_count_each_call_once,
    the_rate_guard_detaches_a_probe_hit_too_often,
    the_rate_guard_counts_hits_of_processes_outside_the_filter,
    bad_specs_fail_at_start_with_one_line,
];

/// The cgroup v2 path of process `pid` (`0::/PATH` in /proc/PID/cgroup).
pub fn cgroup_of(pid: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("a cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line")
        .to_string()
}

/// The `(1.05 ms, 2.1 ms]` and `(8.39 ms, 16.8 ms]` rows: 1.5 ms and 12 ms sleeps.
const ROW_1_5MS: (&str, &str) = ("1.05 ms", "2.1 ms");
const ROW_12MS: (&str, &str) = ("8.39 ms", "16.8 ms");

/// A running probe_work, paused until `go`; killed when dropped.
struct ProbeWork {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl ProbeWork {
    fn start(args: &[&str]) -> ProbeWork {
        ProbeWork::start_command(Command::new(probe_work_binary()).args(args))
    }

    fn start_command(command: &mut Command) -> ProbeWork {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting probe_work");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        ProbeWork { child, stdout }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Lets it work and waits until it says it is done.
    fn go_and_wait(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped");
        stdin.write_all(b"go\n").expect("telling probe_work to go");
        stdin.flush().expect("flushing");
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading probe_work");
        assert_eq!(line.trim(), "done", "probe_work failed");
    }
}

impl Drop for ProbeWork {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spec(kind: &str, path: &Path, rest: &str) -> String {
    format!("{kind}:{}:{rest}", path.display())
}

/// The last value of counter `metric` whose `emberprof.probe` attribute is `probe`.
fn counter(
    requests: &[ExportMetricsServiceRequest],
    metric_name: &str,
    probe: &str,
) -> Option<i64> {
    let mut last = None;
    for m in otlp_metrics(requests, metric_name) {
        let Some(metric::Data::Sum(sum)) = &m.data else {
            panic!("{metric_name} is not a sum");
        };
        assert!(sum.is_monotonic);
        for p in &sum.data_points {
            if has_probe(&p.attributes, probe) {
                if let Some(
                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v),
                ) = p.value
                {
                    last = Some(v);
                }
            }
        }
    }
    last
}

fn has_probe(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], probe: &str) -> bool {
    attrs.iter().any(|kv| {
        kv.key == "emberprof.probe"
            && matches!(
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(any_value::Value::StringValue(s)) if s == probe
            )
    })
}

/// The last exported duration histogram of `probe`.
fn duration_point(
    requests: &[ExportMetricsServiceRequest],
    probe: &str,
) -> Option<ExponentialHistogramDataPoint> {
    let mut last = None;
    for m in otlp_metrics(requests, "emberprof.probe.duration") {
        assert_eq!(m.unit, "ns");
        let Some(metric::Data::ExponentialHistogram(h)) = &m.data else {
            panic!("emberprof.probe.duration is not an exponential histogram");
        };
        for p in &h.data_points {
            if has_probe(&p.attributes, probe) {
                last = Some(p.clone());
            }
        }
    }
    last
}

/// Bucket `index` of a scale-0 point: durations in (2^index, 2^(index+1)] ns.
fn bucket(p: &ExponentialHistogramDataPoint, index: i32) -> u64 {
    let b = p.positive.as_ref().expect("positive buckets");
    usize::try_from(index - b.offset)
        .ok()
        .and_then(|i| b.bucket_counts.get(i).copied())
        .unwrap_or(0)
}

/// The report's count line of a probe: `probe SPEC calls|hits, cgroup ...: N`, summed.
fn hits_in_report(text: &str, probe: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("probe {probe} ")) && l.contains(", cgroup "))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

fn function_durations_land_in_their_buckets_exactly_in_text_and_otlp() {
    let Some(_serial) = bpf_test() else { return };
    let (short, long) = (20, 10);
    // Real-time: a wakeup is not kept waiting behind emberprof's own start-up work on the
    // two CPUs (0.6 ms would move a 1.5 ms call past 2.1 ms).
    let mut w = ProbeWork::start_command(
        Command::new("chrt")
            .args(["-f", "10"])
            .arg(probe_work_binary())
            .args(["timed", &short.to_string(), &long.to_string()]),
    );
    let probe = spec("uprobe", probe_work_binary(), "timed_call");
    let collector = TestCollector::start();
    let pid = w.pid();
    let rec = record_around(
        "probe-timed.txt",
        &[
            "--probe",
            &probe,
            "--pid",
            &pid,
            "--otlp-endpoint",
            &collector.endpoint(),
        ],
        || w.go_and_wait(),
    );
    let text = std::fs::read_to_string(&rec.file).expect("the histograms");
    let all = parse_histograms(&text);
    // Under the workload's own cgroup, as the kernel names it.
    let cgroup = cgroup_of(&pid);
    let title = format!("probe duration, {probe}, cgroup {cgroup}");
    let timed: Vec<_> = all.iter().filter(|s| s.title == title).collect();
    assert_eq!(timed.len(), 1, "{title:?} in {text}");
    let h = timed[0];
    // Exactly: a 1.5 ms sleep plus the probe's ~20 us stays far from 2.1 ms; 12 ms from
    // 8.39 and 16.8 ms.
    assert_eq!(h.count, short + long, "{h:#?}");
    assert_eq!(h.row(ROW_1_5MS.0, ROW_1_5MS.1), short, "{h:#?}");
    assert_eq!(h.row(ROW_12MS.0, ROW_12MS.1), long, "{h:#?}");
    assert_eq!(hits_in_report(&text, &probe), short + long, "{text}");

    let received = collector.received();
    let p = duration_point(&received.metrics, &probe).expect("the probe's histogram in OTLP");
    assert_eq!((p.scale, p.count, p.zero_count), (0, short + long, 0));
    // (2^20, 2^21] ns = (1.05, 2.1] ms; (2^23, 2^24] ns = (8.39, 16.8] ms.
    assert_eq!(bucket(&p, 20), short, "{p:?}");
    assert_eq!(bucket(&p, 23), long, "{p:?}");
    let sum = p.sum.expect("a sum");
    let expected = short as f64 * 1.5e6 + long as f64 * 12e6;
    assert!(
        sum >= expected && sum < expected * 1.1,
        "sum {sum} ns against {expected} ns slept"
    );
    assert_eq!(
        counter(&received.metrics, "emberprof.probe.hits", &probe),
        Some((short + long) as i64)
    );
}

fn function_stacks_are_the_callers_weighted_by_time() {
    let Some(_serial) = bpf_test() else { return };
    let (short, long) = (20u64, 10u64);
    let mut w = ProbeWork::start(&["timed", &short.to_string(), &long.to_string()]);
    let probe = format!(
        "{}+stacks",
        spec("uprobe", probe_work_binary(), "timed_call")
    );
    let pid = w.pid();
    let rec = record_around(
        "probe-fn-stacks.pb.gz",
        &["--probe", &probe, "--pid", &pid],
        || w.go_and_wait(),
    );
    let bytes = std::fs::read(&rec.file).expect("the probe profile");
    let p = decode_gz_pprof(&bytes);
    let text = |i: i64| p.string_table[i as usize].clone();
    let types: Vec<(String, String)> = p
        .sample_type
        .iter()
        .map(|t| (text(t.ty), text(t.unit)))
        .collect();
    assert_eq!(
        types,
        [
            ("probe_hits".to_string(), "count".to_string()),
            ("probe_time".to_string(), "nanoseconds".to_string())
        ]
    );
    // Every call, under the probe's root frame, in its caller: the uretprobe sees the
    // stack it returns to (main, which the workload calls timed_call from).
    let function_of = |location_id: u64| -> Vec<String> {
        let loc = p
            .location
            .iter()
            .find(|l| l.id == location_id)
            .expect("a location");
        loc.line
            .iter()
            .filter_map(|l| p.function.iter().find(|f| f.id == l.function_id))
            .map(|f| text(f.name))
            .collect()
    };
    let (mut hits, mut ns) = (0i64, 0i64);
    for sample in &p.sample {
        let names: Vec<String> = sample
            .location_id
            .iter()
            .flat_map(|id| function_of(*id))
            .collect();
        assert_eq!(names.last(), Some(&format!("[probe {probe}]")), "{names:?}");
        assert_eq!(names.first().map(String::as_str), Some("main"), "{names:?}");
        hits += sample.value[0];
        ns += sample.value[1];
    }
    assert_eq!(hits, (short + long) as i64);
    let slept = (short * 1_500_000 + long * 12_000_000) as i64;
    assert!(
        ns >= slept && ns < slept + slept / 10,
        "{ns} ns of calls against {slept} ns slept"
    );
}

fn usdt_hits_are_counted_exactly() {
    let Some(_serial) = bpf_test() else { return };
    let n = 5000;
    let mut w = ProbeWork::start(&["usdt", &n.to_string()]);
    let probe = spec("usdt", probe_work_binary(), "emberprof_test:tick");
    let pid = w.pid();
    let rec = record_around(
        "probe-usdt.folded",
        // No rate limit: the loop hits the probe 5000 times in a few milliseconds.
        &["--probe", &probe, "--pid", &pid, "--probe-max-rate", "0"],
        || w.go_and_wait(),
    );
    // The probe profile took the output file; the report went to standard output.
    let text = &rec.stdout;
    assert_eq!(hits_in_report(text, &probe), n, "{text}");
    // A USDT probe has no duration.
    assert!(!text.contains("probe duration, "), "{text}");
    // Its hits' stacks: all in usdt_loop, under the probe's root frame.
    let lines = read_folded(&rec.file);
    let root = format!("[probe {probe}]");
    let under: u64 = lines
        .iter()
        .filter(|l| l.frames.contains(&root))
        .map(|l| l.count)
        .sum();
    assert_eq!(under, n, "{lines:?}");
    assert_eq!(total_under(&lines, "usdt_loop"), n, "{lines:?}");
    // Nothing lost on the way, by the probe profile's own counters.
    assert_eq!(rec.summary_of("probe", "hits"), n, "{:#}", rec.summary);
    assert_eq!(rec.summary_of("probe", "dropped"), 0, "{:#}", rec.summary);
    assert_eq!(
        rec.summary_of("probe", "stacks_lost"),
        0,
        "{:#}",
        rec.summary
    );
}

fn tracepoint_hits_are_counted_per_process() {
    let Some(_serial) = bpf_test() else { return };
    let n = 300;
    let mut w = ProbeWork::start(&["tp", &n.to_string()]);
    let probe = "tracepoint:syscalls:sys_enter_getppid".to_string();
    let pid = w.pid();
    let rec = record_around(
        "probe-tp.folded",
        &["--probe", &probe, "--pid", &pid],
        || w.go_and_wait(),
    );
    let text = &rec.stdout;
    // The PID filter leaves other processes' getppid calls out.
    assert_eq!(hits_in_report(text, &probe), n, "{text}");
    // Kernel and user stacks: the syscall's kernel path, and the user function that made
    // it (through libc's syscall(), which has no frame pointers: walked by its tables).
    let lines = read_folded(&rec.file);
    let root = format!("[probe {probe}]");
    let named: u64 = lines
        .iter()
        .filter(|l| l.frames.iter().any(|f| f == &root))
        .filter(|l| l.frames.iter().any(|f| f == "tp_caller"))
        .filter(|l| l.frames.iter().any(|f| f.ends_with("_[k]")))
        .map(|l| l.count)
        .sum();
    assert_eq!(named, n, "{lines:?}");
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of probe_work in a directory of its own, and an empty directory: inside a private
/// mount namespace the first is mounted over the second, so that the binary's path there
/// names nothing outside it. Returns (the namespace's path of the binary, the command).
fn namespaced_probe_work(tag: &str, args: &[&str]) -> (TempDir, String, Command) {
    let root = TempDir(
        Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("ep-mntns-{tag}-{}", std::process::id())),
    );
    let _ = std::fs::remove_dir_all(&root.0);
    let (bin, over) = (root.0.join("bin"), root.0.join("app"));
    std::fs::create_dir_all(&bin).expect("creating the binary's directory");
    std::fs::create_dir_all(&over).expect("creating the mount point");
    std::fs::copy(probe_work_binary(), bin.join("probe-app")).expect("copying probe_work");
    let inside = over.join("probe-app");
    let mut command = Command::new("unshare");
    command.args(["--mount", "--propagation", "private", "sh", "-c"]);
    command.arg(format!(
        "mount --bind {} {} && exec {} {}",
        bin.display(),
        over.display(),
        inside.display(),
        args.join(" ")
    ));
    let inside = inside.display().to_string();
    assert!(
        !Path::new(&inside).exists(),
        "the namespace's path must not exist outside it"
    );
    (root, inside, command)
}

fn a_binary_in_a_private_mount_namespace_is_probed() {
    let Some(_serial) = bpf_test() else { return };
    let (_dir, inside, mut command) = namespaced_probe_work("record", &["timed", "5", "2"]);
    let mut w = ProbeWork::start_command(&mut command);
    // Until the bind mount is made, the path names nothing anywhere.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !Path::new(&format!("/proc/{}/root{inside}", w.pid())).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the namespace never got its mount"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = format!("uprobe:{inside}:timed_call");
    let rec = record_around("probe-mntns.txt", &["--probe", &probe], || w.go_and_wait());
    let text = std::fs::read_to_string(&rec.file).expect("the report");
    assert_eq!(hits_in_report(&text, &probe), 7, "{text}\n{}", rec.stderr);
    // Timed too (which bucket is the other test's business).
    let all = parse_histograms(&text);
    let timed: u64 = sections(&all, &format!("probe duration, {probe}, cgroup "))
        .iter()
        .map(|h| h.count)
        .sum();
    assert_eq!(timed, 7, "{text}");
}

fn the_agent_waits_for_a_file_and_probes_processes_started_later() {
    let Some(_serial) = bpf_test() else { return };
    let (_dir, inside, mut command) = namespaced_probe_work("agent", &["timed", "4", "0"]);
    let probe = format!("uprobe:{inside}:timed_call");
    let collector = TestCollector::start();
    let (mut agent, stderr, log) = spawn_until(
        &[
            "agent",
            "--probe",
            &probe,
            "--interval",
            "1s",
            "--otlp-endpoint",
            &collector.endpoint(),
        ],
        "probe waits for its file",
    );
    // Its file appears only with this process, after the agent started; the agent's next
    // look (every 2 s) attaches to it.
    let mut w = ProbeWork::start_command(&mut command);
    let attached = logged_within(stderr, "probe attached", Duration::from_secs(15));
    assert!(attached, "the agent never attached to the new file");
    w.go_and_wait();
    let counted = collector.wait_for(Duration::from_secs(15), |r| {
        counter(&r.metrics, "emberprof.probe.hits", &probe) == Some(4)
    });
    terminate(&mut agent, &log);
    let received = collector.received();
    assert!(
        counted,
        "hits: {:?}",
        counter(&received.metrics, "emberprof.probe.hits", &probe)
    );
    // It was counted as pending before, and attached to one file after.
    let levels = |name: &str| -> Vec<f64> {
        otlp_metrics(&received.metrics, name)
            .filter_map(|m| match &m.data {
                Some(metric::Data::Gauge(g)) => Some(&g.data_points),
                _ => None,
            })
            .flatten()
            .filter(|p| has_probe(&p.attributes, &probe))
            .filter_map(|p| match p.value {
                Some(
                    opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsDouble(v),
                ) => Some(v),
                _ => None,
            })
            .collect()
    };
    let pending = levels("emberprof.probe.pending");
    assert_eq!(pending.first(), Some(&1.0), "{pending:?}\n{log}");
    assert_eq!(pending.last(), Some(&0.0), "{pending:?}");
    assert_eq!(levels("emberprof.probe.files").last(), Some(&1.0));
}

/// Two overlay mounts of one lower directory (two containers of one image), unmounted
/// when dropped.
struct TwoOverlays {
    root: TempDir,
    merged: [PathBuf; 2],
}

impl TwoOverlays {
    fn new() -> TwoOverlays {
        let root = TempDir(
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ep-ovl-{}", std::process::id())),
        );
        let _ = std::fs::remove_dir_all(&root.0);
        let lower = root.0.join("lower");
        std::fs::create_dir_all(&lower).unwrap();
        std::fs::copy(probe_work_binary(), lower.join("probe-app")).expect("copying probe_work");
        std::fs::create_dir_all(root.0.join("app")).unwrap();
        let merged = [1, 2].map(|i| {
            let (upper, work, merged) = (
                root.0.join(format!("upper{i}")),
                root.0.join(format!("work{i}")),
                root.0.join(format!("merged{i}")),
            );
            for d in [&upper, &work, &merged] {
                std::fs::create_dir_all(d).unwrap();
            }
            let options = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            );
            let status = Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &options])
                .arg(&merged)
                .status()
                .expect("running mount");
            assert!(status.success(), "mounting an overlay");
            merged
        });
        TwoOverlays { root, merged }
    }

    /// probe_work from overlay `i`, in a mount namespace where that overlay is at `app/`.
    fn start(&self, i: usize, args: &[&str]) -> (ProbeWork, String) {
        let inside = self.root.0.join("app").join("probe-app");
        let mut command = Command::new("unshare");
        command.args(["--mount", "--propagation", "private", "sh", "-c"]);
        command.arg(format!(
            "mount --bind {} {} && exec {} {}",
            self.merged[i].display(),
            self.root.0.join("app").display(),
            inside.display(),
            args.join(" ")
        ));
        let w = ProbeWork::start_command(&mut command);
        let inside = inside.display().to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !Path::new(&format!("/proc/{}/root{inside}", w.pid())).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "no mount in the namespace"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (w, inside)
    }
}

impl Drop for TwoOverlays {
    fn drop(&mut self) {
        for m in &self.merged {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

fn two_containers_of_one_image_count_each_call_once() {
    let Some(_serial) = bpf_test() else { return };
    let overlays = TwoOverlays::new();
    let (mut a, inside) = overlays.start(0, &["timed", "3", "0"]);
    let (mut b, _) = overlays.start(1, &["timed", "4", "0"]);
    let probe = format!("uprobe:{inside}:timed_call");
    let rec = record_around("probe-overlay.txt", &["--probe", &probe], || {
        a.go_and_wait();
        b.go_and_wait();
    });
    let text = std::fs::read_to_string(&rec.file).expect("the report");
    // One file underneath both overlays: the kernel's uprobe is on it, attached once.
    assert_eq!(hits_in_report(&text, &probe), 7, "{text}\n{}", rec.stderr);
    assert_eq!(
        rec.stderr.matches("probe attached").count(),
        1,
        "{}",
        rec.stderr
    );
}

/// Whether a line containing `marker` arrives on `stderr` within `timeout` (read on a
/// thread of its own, so that a missing line fails the test instead of hanging it; the
/// thread reads on to the end, so that emberprof's stderr stays open).
fn logged_within(
    stderr: std::io::BufReader<std::process::ChildStderr>,
    marker: &str,
    timeout: Duration,
) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_string();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains(&marker) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(timeout).is_ok()
}

fn the_rate_guard_counts_hits_of_processes_outside_the_filter() {
    let Some(_serial) = bpf_test() else { return };
    // Only an idle process is selected: the hot one's hits are not recorded, but each of
    // them still costs a trap, and the guard must see them.
    let mut idle = ProbeWork::start(&["usdt", "1"]);
    let mut hot = ProbeWork::start(&["hot", "200000"]);
    let probe = spec("uprobe", probe_work_binary(), "hot_call");
    let pid = idle.pid();
    let rec = record_around(
        "probe-guard-filtered.txt",
        &["--probe", &probe, "--pid", &pid, "--probe-max-rate", "1000"],
        || hot.go_and_wait(),
    );
    idle.go_and_wait();
    let text = std::fs::read_to_string(&rec.file).expect("the report");
    assert!(
        text.contains(&format!("probe {probe}: detached by the rate guard")),
        "{text}\n{}",
        rec.stderr
    );
    assert_eq!(hits_in_report(&text, &probe), 0, "{text}");
}

fn the_rate_guard_detaches_a_probe_hit_too_often() {
    let Some(_serial) = bpf_test() else { return };
    let n: u64 = 200_000;
    let mut w = ProbeWork::start(&["hot", &n.to_string()]);
    let probe = spec("uprobe", probe_work_binary(), "hot_call");
    let pid = w.pid();
    let rec = record_around(
        "probe-guard.txt",
        &["--probe", &probe, "--pid", &pid, "--probe-max-rate", "1000"],
        || w.go_and_wait(),
    );
    let text = std::fs::read_to_string(&rec.file).expect("the report");
    assert!(rec.stderr.contains("probe detached"), "{}", rec.stderr);
    assert!(
        text.contains(&format!("probe {probe}: detached by the rate guard")),
        "{text}"
    );
    // Taken off within a tick of the guard (100 ms: some 8k hits at ~12 us each), not left
    // to trap on all 200k calls; the bound leaves room for a starved guard thread.
    let hits = hits_in_report(&text, &probe);
    assert!((1000..n / 2).contains(&hits), "{hits} hits counted\n{text}");
}

/// Runs `emberprof record ARGS` expecting it to fail at start: its last stderr line.
fn fails_with(args: &[&str]) -> String {
    let out = Command::new(EMBERPROF)
        .arg("record")
        .args(args)
        .args(["--duration", "5", "-o", "/dev/null"])
        .output()
        .expect("running emberprof");
    assert!(!out.status.success(), "{args:?} did not fail");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("emberprof: error: "), "{stderr}");
    last
}

fn bad_specs_fail_at_start_with_one_line() {
    let Some(_serial) = bpf_test() else { return };
    let work = probe_work_binary();
    let dir = TempDir(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("ep-badspec-{}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0).unwrap();
    let stripped = dir.0.join("probe-stripped");
    let status = Command::new("objcopy")
        .arg("--strip-all")
        .arg(work)
        .arg(&stripped)
        .status()
        .expect("running objcopy");
    assert!(status.success());
    let cases: Vec<(String, &str)> = vec![
        (
            "uprobe:/nonexistent/app:main".into(),
            "no such file /nonexistent/app",
        ),
        (
            spec("uprobe", work, "no_such_function"),
            "no_such_function is not among",
        ),
        (spec("uprobe", &stripped, "timed_call"), "it is stripped"),
        (
            spec("usdt", work, "no_such_provider:tick"),
            "has no USDT probe no_such_provider:tick; it has emberprof_test:tick",
        ),
        (
            spec("usdt", Path::new("/usr/bin/true"), "x:y"),
            "has no USDT probe",
        ),
        (
            "tracepoint:sched:no_such_tracepoint".into(),
            "no tracepoint sched:no_such_tracepoint",
        ),
        ("kprobe:do_sys_open".into(), "unknown probe type"),
        ("uprobe:relative/app:f".into(), "must be absolute"),
    ];
    for (probe, says) in cases {
        let line = fails_with(&["--probe", &probe]);
        assert!(line.contains(says), "--probe {probe}: {line}");
    }
}
