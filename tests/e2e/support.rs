//! e2e helpers: running emberprof, parsing its output; the workload and BPF listings come
//! from emberprof-test-support.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

pub use emberprof_test_support::bpf::{
    bpf_map_has_u32_key, bpf_programs_held_by, loaded_bpf_programs,
};
pub use emberprof_test_support::workload::{dlopen_library, workload_binary, Workload};

pub const EMBERPROF: &str = env!("CARGO_BIN_EXE_emberprof");

/// Profiling tests run one at a time: they measure CPU shares on a 2-CPU machine.
static SERIAL: Mutex<()> = Mutex::new(());

/// Why end-to-end BPF tests cannot run here, if they cannot.
fn bpf_unavailable() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    (!root).then_some("end-to-end BPF tests need root")
}

/// Says loudly, once, that the BPF tests will be reported as ignored rather than run.
pub fn bpf_banner() {
    if let (Some(why), None) = (bpf_unavailable(), std::env::var_os("CI")) {
        eprintln!(
            "!!!!! {why}: NOT RUNNING THEM, each is reported as ignored (run as root; with CI set they fail) !!!!!"
        );
    }
}

/// Takes the serial lock, or returns `None` when BPF cannot be used here: the test returns
/// and is reported as ignored. Under CI a missing privilege is a failure, never a skip.
pub fn bpf_test() -> Option<MutexGuard<'static, ()>> {
    if let Some(why) = bpf_unavailable() {
        if std::env::var_os("CI").is_some() {
            panic!("{why} in CI");
        }
        crate::harness::skip(why);
        return None;
    }
    Some(SERIAL.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A finished `emberprof record` run.
pub struct Recording {
    pub stderr: String,
    /// What emberprof printed (histograms, when a profile took the output file).
    pub stdout: String,
    pub file: PathBuf,
    /// Its `--summary-json`.
    pub summary: serde_json::Value,
}

impl Recording {
    fn read(stderr: String, stdout: String, file: PathBuf, summary: &Path) -> Recording {
        let text = std::fs::read_to_string(summary)
            .unwrap_or_else(|e| panic!("no JSON summary ({e}); stderr:\n{stderr}"));
        let summary = serde_json::from_str(&text).expect("a JSON summary");
        Recording {
            stderr,
            stdout,
            file,
            summary,
        }
    }

    /// A number of the summary of the profile of `kind` (`cpu`, `offcpu`).
    pub fn summary_of(&self, kind: &str, field: &str) -> u64 {
        self.summary["profiles"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["kind"] == kind))
            .and_then(|p| p[field].as_u64())
            .unwrap_or_else(|| panic!("no {kind} {field} in {}", self.summary))
    }

    /// The CPU profile's samples read and the kernel's own count of them.
    pub fn summary_counts(&self) -> (u64, u64) {
        (
            self.summary_of("cpu", "samples"),
            self.summary_of("cpu", "kernel_counted"),
        )
    }
}

/// Where a recording's JSON summary goes.
fn summary_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".summary.json");
    PathBuf::from(name)
}

/// Records process `pid` alone for `seconds` as folded stacks (`extra`: more arguments,
/// such as `--frequency`) into <tmp>/NAME.
pub fn record_pid(
    name: &str,
    pid: impl std::fmt::Display,
    seconds: u32,
    extra: &[&str],
) -> Recording {
    let pid = pid.to_string();
    let seconds = seconds.to_string();
    let mut args = vec!["--pid", &pid, "--duration", &seconds, "--format", "folded"];
    args.extend_from_slice(extra);
    record(name, &args)
}

/// Runs `emberprof record ARGS -o <tmp>/NAME` and checks it succeeded.
pub fn record(name: &str, args: &[&str]) -> Recording {
    record_with_env(name, args, &[])
}

/// `record` with extra environment variables.
pub fn record_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Recording {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let summary = summary_path(&file);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&summary);
    let output = Command::new(EMBERPROF)
        .envs(env.iter().copied())
        .arg("record")
        .args(args)
        .arg("--output")
        .arg(&file)
        .arg("--summary-json")
        .arg(&summary)
        .output()
        .expect("running emberprof");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "emberprof record {args:?} failed:\n{stderr}"
    );
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    Recording::read(stderr, stdout, file, &summary)
}

/// One line of folded output: frames root first, and the count.
#[derive(Debug)]
pub struct FoldedLine {
    pub frames: Vec<String>,
    pub count: u64,
}

pub fn read_folded(path: &Path) -> Vec<FoldedLine> {
    let text = std::fs::read_to_string(path).expect("reading folded output");
    text.lines()
        .map(|line| {
            let (stack, count) = line.rsplit_once(' ').expect("folded line has a count");
            FoldedLine {
                frames: stack.split(';').map(str::to_string).collect(),
                count: count.parse().expect("folded count is a number"),
            }
        })
        .collect()
}

/// Samples whose leaf-most frame among `names` is each name (the first match from the leaf).
pub fn self_counts(lines: &[FoldedLine], names: &[&str]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for line in lines {
        if let Some(name) = line
            .frames
            .iter()
            .rev()
            .find(|f| names.contains(&f.as_str()))
        {
            *counts.entry(name.clone()).or_default() += line.count;
        }
    }
    counts
}

/// Runs `emberprof record ARGS -o <tmp>/NAME`, waits until its probes are attached, runs
/// `during`, then ends the recording with Ctrl-C.
pub fn record_around(name: &str, args: &[&str], during: impl FnOnce()) -> Recording {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let summary = summary_path(&file);
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&summary);
    let file_arg = file.to_string_lossy().into_owned();
    let summary_arg = summary.to_string_lossy().into_owned();
    let mut all = vec!["record"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--duration", "60", "--output", &file_arg]);
    all.extend_from_slice(&["--summary-json", &summary_arg]);
    let stdout_file = file.with_extension("stdout");
    let (mut child, mut stderr, mut log) =
        spawn_to_until(&all, &[], "recording", Some(&stdout_file));
    during();
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("reading emberprof's log");
    log.push_str(&rest);
    let status = child.wait().expect("waiting for emberprof");
    assert!(status.success(), "emberprof {args:?} failed:\n{log}");
    let stdout = std::fs::read_to_string(&stdout_file).unwrap_or_default();
    Recording::read(log, stdout, file, &summary)
}

/// Sum of values of the folded lines that contain `frame`.
pub fn total_under(lines: &[FoldedLine], frame: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l.frames.iter().any(|f| f == frame))
        .map(|l| l.count)
        .sum()
}

/// One histogram of `emberprof record --histograms` output.
#[derive(Debug)]
pub struct HistSection {
    /// The title line, e.g. `syscall latency, nanosleep, cgroup /`.
    pub title: String,
    /// Rows: (lower bound, upper bound, count), bounds as printed (`8.39 ms`).
    pub rows: Vec<(String, String, u64)>,
    pub count: u64,
    pub sum_ns: f64,
}

impl HistSection {
    /// The count of the row whose range is `lo -> hi`, 0 when absent.
    pub fn row(&self, lo: &str, hi: &str) -> u64 {
        self.rows
            .iter()
            .find(|(l, h, _)| l == lo && h == hi)
            .map_or(0, |r| r.2)
    }

    /// Count in rows whose lower bound is at least `ns`.
    pub fn count_above(&self, ns: f64) -> u64 {
        self.rows
            .iter()
            .filter(|(lo, _, _)| lo != "0" && parse_ns(lo) >= ns)
            .map(|r| r.2)
            .sum()
    }
}

/// Parses a printed duration: `512 ns`, `1.02 us`, `8.39 ms`, `2 s`.
pub fn parse_ns(text: &str) -> f64 {
    let (value, unit) = text.trim().split_once(' ').expect("duration with a unit");
    let scale = match unit {
        "ns" => 1.0,
        "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        other => panic!("unknown unit {other:?}"),
    };
    value.parse::<f64>().expect("duration value") * scale
}

/// Parses a histogram report.
pub fn read_histograms(path: &Path) -> Vec<HistSection> {
    parse_histograms(&std::fs::read_to_string(path).expect("reading the histogram report"))
}

/// The histograms of a report's text.
pub fn parse_histograms(text: &str) -> Vec<HistSection> {
    let mut sections: Vec<HistSection> = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with("histograms: ") {
            continue;
        }
        if !line.starts_with(' ') {
            sections.push(HistSection {
                title: line.to_string(),
                rows: Vec::new(),
                count: 0,
                sum_ns: 0.0,
            });
            continue;
        }
        let section = sections.last_mut().expect("a title before rows");
        if let Some(rest) = line.trim_start().strip_prefix("count ") {
            let mut parts = rest.split(", ");
            section.count = parts.next().unwrap().parse().unwrap();
            section.sum_ns = parse_ns(parts.next().unwrap().strip_prefix("sum ").unwrap());
        } else if let Some((range, tail)) = line.split_once(" : ") {
            if let Some((lo, hi)) = range.split_once(" -> ") {
                let count = tail.split('|').next().unwrap().trim().parse().unwrap();
                section
                    .rows
                    .push((lo.trim().to_string(), hi.trim().to_string(), count));
            }
        }
    }
    sections
}

/// The sections whose title starts with `prefix`.
pub fn sections<'a>(all: &'a [HistSection], prefix: &str) -> Vec<&'a HistSection> {
    all.iter().filter(|s| s.title.starts_with(prefix)).collect()
}

/// The cpu-split workload's functions.
pub const SPLIT_FUNCTIONS: [&str; 3] = ["burn_heavy", "burn_medium", "burn_light"];

/// Checks samples per burn function against the workload's 60/30/10 split: at least 95% of
/// `total` in those functions, and each share within 5 points.
pub fn assert_cpu_split(counts: &HashMap<String, u64>, total: u64) {
    let attributed: u64 = counts.values().sum();
    assert!(
        attributed as f64 >= 0.95 * total as f64,
        "only {attributed}/{total} samples in the burn functions ({counts:?})"
    );
    for (name, expected) in SPLIT_FUNCTIONS.into_iter().zip([0.6, 0.3, 0.1]) {
        let share = counts.get(name).copied().unwrap_or(0) as f64 / attributed as f64;
        assert!(
            (share - expected).abs() <= 0.05,
            "{name}: {:.1}% of samples, expected {:.0}% ± 5 points ({counts:?})",
            share * 100.0,
            expected * 100.0
        );
    }
}

/// Decodes a gzipped pprof body.
pub fn decode_gz_pprof(body: &[u8]) -> pprof::protos::Profile {
    use pprof::protos::Message;
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(body), &mut raw)
        .expect("a gzipped body");
    pprof::protos::Profile::decode(raw.as_slice()).expect("a pprof profile")
}

/// Names of a pprof profile's functions.
pub fn pprof_functions(profile: &pprof::protos::Profile) -> Vec<String> {
    profile
        .function
        .iter()
        .map(|f| profile.string_table[f.name as usize].clone())
        .collect()
}

/// Starts `emberprof ARGS` with info logging and waits for a log line containing `marker`;
/// returns the child, its remaining log stream, and the log so far.
pub fn spawn_until(
    args: &[&str],
    marker: &str,
) -> (Child, BufReader<std::process::ChildStderr>, String) {
    spawn_with_env_until(args, &[], marker)
}

/// `spawn_until` with extra environment variables.
pub fn spawn_with_env_until(
    args: &[&str],
    env: &[(&str, &str)],
    marker: &str,
) -> (Child, BufReader<std::process::ChildStderr>, String) {
    spawn_to_until(args, env, marker, None)
}

/// `spawn_with_env_until` with standard output written to `stdout` if given.
fn spawn_to_until(
    args: &[&str],
    env: &[(&str, &str)],
    marker: &str,
    stdout: Option<&Path>,
) -> (Child, BufReader<std::process::ChildStderr>, String) {
    let mut command = Command::new(EMBERPROF);
    command
        .env("EMBERPROF_LOG", "info")
        .envs(env.iter().copied())
        .args(args)
        .stderr(Stdio::piped());
    if let Some(path) = stdout {
        command.stdout(std::fs::File::create(path).expect("creating the stdout file"));
    }
    let mut child = command.spawn().expect("starting emberprof");
    let Some(pipe) = child.stderr.take() else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("emberprof's stderr was not piped");
    };
    let mut stderr = BufReader::new(pipe);
    let mut log = String::new();
    loop {
        let mut line = String::new();
        // A read error ends the wait like an exit does.
        let n = stderr.read_line(&mut line).unwrap_or(0);
        log.push_str(&line);
        if n == 0 {
            let _ = child.kill();
            let _ = child.wait();
            panic!("emberprof exited before {marker:?}:\n{log}");
        }
        if line.contains(marker) {
            return (child, stderr, log);
        }
    }
}

/// Sends SIGTERM to an emberprof started by `spawn_until` and checks that it exits 0.
pub fn terminate(child: &mut Child, log: &str) {
    // SAFETY: plain kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().expect("waiting for emberprof");
    assert!(status.success(), "emberprof exited with {status}:\n{log}");
}

/// A plain HTTP/1.1 GET: (status code, body).
pub fn get(port: u16, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connecting");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, raw[split + 4..].to_vec())
}

/// The value of an unlabelled sample in Prometheus text, checking every line parses.
pub fn prometheus_value(text: &str, name: &str) -> f64 {
    let mut found = None;
    for line in text.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("NAME VALUE");
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let metric = series.split('{').next().unwrap();
        assert!(
            metric
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if series == name {
            found = Some(v);
        }
    }
    found.unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The cgroup2 mount (on hybrid hosts it is not /sys/fs/cgroup itself).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("reading /proc/mounts");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// Every metric named `name` in `requests`, in the order they arrived.
pub fn otlp_metrics<'a>(
    requests: &'a [opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest],
    name: &'a str,
) -> impl Iterator<Item = &'a opentelemetry_proto::tonic::metrics::v1::Metric> {
    requests
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(move |m| m.name == name)
}

/// The exponential-histogram points of one OTLP metrics request.
pub fn histogram_points(
    req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> Vec<&opentelemetry_proto::tonic::metrics::v1::ExponentialHistogramDataPoint> {
    use opentelemetry_proto::tonic::metrics::v1::metric;
    req.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter_map(|m| match &m.data {
            Some(metric::Data::ExponentialHistogram(h)) => Some(&h.data_points),
            _ => None,
        })
        .flatten()
        .collect()
}
