//! JIT perf maps (`/tmp/perf-PID.map`) are written by the profiled process, which may be
//! hostile: a FIFO, a symlink to a device, a huge name, another user's file, bad bytes.
//! The JIT workload runs as an unprivileged user made up by the test (no file is theirs).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, NumberDataPoint};

use crate::collector::TestCollector;
use crate::support::*;

/// The JIT workload's user, and another unprivileged user.
const JIT_UID: u32 = 47_011;
const OTHER_UID: u32 = 47_012;

/// Bytes of a perf map name kept (symbolizer/src/perf_map_line.rs).
const NAME_CAP: usize = 2048;

/// A process running machine code in anonymous memory, as `uid` (root without one).
struct JitProcess {
    child: Child,
    /// Start of its code, which its perf map names.
    code: u64,
    /// Its own copy of the workload, which an unprivileged user can run wherever the
    /// build directory is.
    dir: PathBuf,
}

impl JitProcess {
    fn start(uid: Option<u32>) -> JitProcess {
        let dir = std::env::temp_dir().join(format!(
            "ep-e2e-jit-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("epworkload");
        std::fs::copy(workload_binary(), &exe).expect("copying the workload");
        let mut command = match uid {
            Some(uid) => {
                let mut c = Command::new("setpriv");
                c.args([
                    format!("--reuid={uid}"),
                    format!("--regid={uid}"),
                    "--clear-groups".to_string(),
                ])
                .arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let mut child = command
            .args(["jit", "120000"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux) is needed");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped");
        // Ends at exit too: a failed start cannot hang the test.
        let _ = BufReader::new(stdout).read_line(&mut line);
        let code = line
            .strip_prefix("jit ")
            .and_then(|l| l.split_whitespace().next())
            .and_then(|a| u64::from_str_radix(a, 16).ok());
        let Some(code) = code else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the jit workload did not start: {line:?}");
        };
        let p = JitProcess { child, code, dir };
        let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).unwrap();
        let want = uid.unwrap_or(0).to_string();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some(&want)),
            "the workload runs as {want}:\n{status}"
        );
        p
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn map_path(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/perf-{}.map", self.pid()))
    }

    /// Writes its perf map: `body` after a line naming its code `name`, owned by `uid` with
    /// `mode`.
    fn write_map(&self, name: &str, body_before: &[u8], uid: u32, mode: u32) {
        let path = self.map_path();
        let _ = std::fs::remove_file(&path);
        let mut text = body_before.to_vec();
        text.extend(format!("{:x} 40 {name}\n", self.code).bytes());
        std::fs::write(&path, text).unwrap();
        own(&path, uid, mode);
    }
}

impl Drop for JitProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(self.map_path());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn own(path: &Path, uid: u32, mode: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).expect("chown (the tests run as root)");
    if !path.is_symlink() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// A finished `emberprof record`, with its peak memory.
struct Watched {
    status: ExitStatus,
    stderr: String,
    file: PathBuf,
    peak_rss_kib: u64,
}

/// Runs `emberprof record ARGS -o <tmp>/NAME`, killing it (and failing) if it runs past
/// `limit` or its memory passes `rss_cap_kib`: a hang or a runaway must fail the test, not
/// stall it or the host.
fn record_watched(name: &str, args: &[&str], limit: Duration, rss_cap_kib: u64) -> Watched {
    let file = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&file);
    let mut child = Command::new(EMBERPROF)
        .arg("record")
        .args(args)
        .arg("--output")
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting emberprof");
    let mut pipe = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let started = Instant::now();
    let mut failure = None;
    let mut peak_rss_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for emberprof") {
            break status;
        }
        // The peak as the kernel keeps it, read while it runs (ru_maxrss would count this
        // big test process, which emberprof is spawned from).
        let hwm = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
                line.split_whitespace().nth(1)?.parse::<u64>().ok()
            });
        peak_rss_kib = peak_rss_kib.max(hwm.unwrap_or(0));
        if failure.is_none() && peak_rss_kib > rss_cap_kib {
            failure = Some(format!(
                "its memory passed {rss_cap_kib} KiB ({peak_rss_kib} KiB)"
            ));
        }
        if failure.is_none() && started.elapsed() > limit {
            failure = Some(format!("it was still running after {limit:?}"));
        }
        if failure.is_some() {
            // Reaped by the next try_wait.
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap_or_default();
    if let Some(why) = failure {
        panic!("emberprof record {args:?} was killed: {why}\n{stderr}");
    }
    assert!(
        status.success(),
        "emberprof record {args:?} failed:\n{stderr}"
    );
    eprintln!(
        "record {name}: peak {peak_rss_kib} KiB in {:?}",
        started.elapsed()
    );
    Watched {
        status,
        stderr,
        file,
        peak_rss_kib,
    }
}

/// The value of one of emberprof's health metrics the collector received.
fn health(collector: &TestCollector, name: &str, attribute: Option<&str>) -> Option<f64> {
    let received = collector.received();
    let value = |p: &NumberDataPoint| match p.value {
        Some(number_data_point::Value::AsInt(i)) => Some(i as f64),
        Some(number_data_point::Value::AsDouble(d)) => Some(d),
        None => None,
    };
    let labelled = |p: &&NumberDataPoint| {
        attribute.is_none_or(|want| {
            p.attributes.iter().any(|kv| {
                matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                    Some(any_value::Value::StringValue(s)) if s == want)
            })
        })
    };
    let found = crate::support::otlp_metrics(&received.metrics, name).find_map(|m| match &m.data {
        Some(metric::Data::Sum(s)) => s.data_points.iter().find(labelled).and_then(value),
        Some(metric::Data::Gauge(g)) => g.data_points.iter().find(labelled).and_then(value),
        _ => None,
    });
    found
}

/// Samples whose user leaf (the last frame before kernel ones, which end in `_[k]`) is
/// `name`.
fn leaf_count(lines: &[FoldedLine], name: &str) -> u64 {
    lines
        .iter()
        .filter(|l| {
            l.frames
                .iter()
                .rev()
                .find(|f| !f.ends_with("_[k]"))
                .is_some_and(|f| f == name)
        })
        .map(|l| l.count)
        .sum()
}

fn pid_args<'a>(pids: &'a [String], rest: &[&'a str]) -> Vec<&'a str> {
    let mut args: Vec<&str> = pids.iter().flat_map(|p| ["--pid", p.as_str()]).collect();
    args.extend_from_slice(rest);
    args
}

crate::harness::tests![
    a_fifo_as_perf_map_hangs_neither_record_nor_the_agent,
    huge_perf_maps_keep_record_small_and_long_names_are_cut,
    a_jvm_sized_perf_map_still_names_jit_frames,
    a_perf_map_from_another_user_or_writable_by_others_is_refused,
    a_line_that_is_not_utf8_does_not_void_the_perf_map,
];

fn a_fifo_as_perf_map_hangs_neither_record_nor_the_agent() {
    let Some(_serial) = bpf_test() else { return };
    let jit = JitProcess::start(Some(JIT_UID));
    let path = jit.map_path();
    let _ = std::fs::remove_file(&path);
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    own(&path, JIT_UID, 0o644);
    let collector = TestCollector::start();
    let endpoint = collector.endpoint();
    let pid = jit.pid().to_string();
    let pids = [pid.clone()];
    let rec = record_watched(
        "perf-map-fifo.folded",
        &pid_args(
            &pids,
            &[
                "--duration",
                "2",
                "--frequency",
                "99",
                "--otlp-endpoint",
                &endpoint,
            ],
        ),
        Duration::from_secs(30),
        1 << 20,
    );
    let lines = read_folded(&rec.file);
    let samples: u64 = lines.iter().map(|l| l.count).sum();
    assert!(samples > 20, "the JIT process was sampled: {samples}");
    assert!(
        health(
            &collector,
            "emberprof.symbolizer.perf_map.refused",
            Some("not_regular")
        )
        .is_some_and(|v| v >= 1.0),
        "the refusal is counted"
    );
    let warned = rec.stderr.matches("perf map not used").count();
    assert_eq!(warned, 1, "logged once, not per lookup:\n{}", rec.stderr);
    assert!(rec.stderr.contains(path.to_str().unwrap()) && rec.stderr.contains("not_regular"));

    // The agent, stopped by SIGTERM while the FIFO is there, exits promptly.
    let (mut agent, mut stderr, mut log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--interval",
            "2s",
            "--frequency",
            "99",
            "--otlp-endpoint",
            &endpoint,
        ],
        "agent running",
    );
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: plain kill(2) of our child.
    assert_eq!(unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = agent.kill();
            let _ = agent.wait();
            panic!("the agent ignored SIGTERM for 20 s with a FIFO as perf map");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    let _ = stderr.read_to_string(&mut rest);
    log.push_str(&rest);
    assert!(status.success(), "agent exited with {status}:\n{log}");
}

fn huge_perf_maps_keep_record_small_and_long_names_are_cut() {
    let Some(_serial) = bpf_test() else { return };
    // One map is a symlink to /dev/zero (endless), the other names the code with 70 MB.
    let zero = JitProcess::start(Some(JIT_UID));
    let path = zero.map_path();
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    own(&path, JIT_UID, 0o644);
    let long = JitProcess::start(Some(JIT_UID));
    let huge_name = "N".repeat(70 << 20);
    long.write_map(&huge_name, b"", JIT_UID, 0o644);
    drop(huge_name);

    let collector = TestCollector::start();
    let endpoint = collector.endpoint();
    let pids = [zero.pid().to_string(), long.pid().to_string()];
    // Far above what record needs, far below what reading /dev/zero whole takes.
    let rec = record_watched(
        "perf-map-huge.folded",
        &pid_args(
            &pids,
            &[
                "--duration",
                "3",
                "--frequency",
                "99",
                "--otlp-endpoint",
                &endpoint,
            ],
        ),
        Duration::from_secs(60),
        1 << 20,
    );
    assert!(rec.status.success());
    let lines = read_folded(&rec.file);
    let cut = "N".repeat(NAME_CAP);
    let named = leaf_count(&lines, &cut);
    assert!(
        named > 20,
        "the JIT code is named with the name's first {NAME_CAP} bytes: {named} samples"
    );
    let longest = lines
        .iter()
        .flat_map(|l| &l.frames)
        .map(|f| f.len())
        .max()
        .unwrap_or(0);
    assert!(longest <= NAME_CAP, "a frame name of {longest} bytes");
    assert!(
        health(&collector, "emberprof.symbolizer.perf_map.names.cut", None)
            .is_some_and(|v| v >= 1.0),
        "the cut is counted"
    );
    assert!(
        health(
            &collector,
            "emberprof.symbolizer.perf_map.refused",
            Some("not_regular")
        )
        .is_some_and(|v| v >= 1.0),
        "/dev/zero is refused and counted"
    );
    // What record itself needs (BPF maps are kernel memory) plus a little: neither the
    // 70 MB line nor /dev/zero was held.
    assert!(
        rec.peak_rss_kib < 128 << 10,
        "record peaked at {} KiB",
        rec.peak_rss_kib
    );
}

fn a_jvm_sized_perf_map_still_names_jit_frames() {
    let Some(_serial) = bpf_test() else { return };
    let jit = JitProcess::start(Some(JIT_UID));
    // 300,000 symbols (about 30 MB, like perf-map-agent's map of a big JVM), elsewhere in
    // memory; the one for the running code is the last line.
    let mut body = String::with_capacity(32 << 20);
    for i in 0..300_000u64 {
        body.push_str(&format!(
            "{:x} 1c0 Lcom/example/service/generated/Handler{i};::handleRequest\n",
            0x10_0000_0000u64 + i * 0x200
        ));
    }
    jit.write_map("Lcom/example/Hot;::spin", body.as_bytes(), JIT_UID, 0o644);
    let collector = TestCollector::start();
    let endpoint = collector.endpoint();
    let pids = [jit.pid().to_string()];
    let rec = record_watched(
        "perf-map-jvm.folded",
        &pid_args(
            &pids,
            &[
                "--duration",
                "5",
                "--frequency",
                "99",
                "--otlp-endpoint",
                &endpoint,
            ],
        ),
        Duration::from_secs(60),
        1 << 20,
    );
    let lines = read_folded(&rec.file);
    let total: u64 = lines.iter().map(|l| l.count).sum();
    // Folded output has ';' between frames: names show it as ':'.
    let named = leaf_count(&lines, "Lcom/example/Hot:::spin");
    // Read in 16 MB steps at successive drains: the first second's samples may stay
    // unnamed.
    assert!(
        total > 100 && named * 2 >= total,
        "named {named} of {total} samples"
    );
    let bytes = health(&collector, "emberprof.symbolizer.perf_map.bytes", None)
        .expect("the perf map memory gauge");
    assert!(
        bytes > 0.0 && bytes < (8 << 20) as f64,
        "{bytes} bytes held for a {} byte map",
        body.len()
    );
}

fn a_perf_map_from_another_user_or_writable_by_others_is_refused() {
    let Some(_serial) = bpf_test() else { return };
    // The same map, owned by the process's user: used.
    let trusted = JitProcess::start(Some(JIT_UID));
    trusted.write_map("JIT:trusted", b"", JIT_UID, 0o644);
    // A root process whose map another (unprivileged) user wrote.
    let forged = JitProcess::start(None);
    forged.write_map("JIT:forged", b"", OTHER_UID, 0o644);
    // The process's own map, but anyone may write to it.
    let open = JitProcess::start(Some(JIT_UID));
    open.write_map("JIT:world_writable", b"", JIT_UID, 0o666);

    let collector = TestCollector::start();
    let endpoint = collector.endpoint();
    let pids = [
        trusted.pid().to_string(),
        forged.pid().to_string(),
        open.pid().to_string(),
    ];
    let rec = record_watched(
        "perf-map-owner.folded",
        &pid_args(
            &pids,
            &[
                "--duration",
                "3",
                "--frequency",
                "99",
                "--otlp-endpoint",
                &endpoint,
            ],
        ),
        Duration::from_secs(60),
        1 << 20,
    );
    let lines = read_folded(&rec.file);
    let total: u64 = lines.iter().map(|l| l.count).sum();
    assert!(leaf_count(&lines, "JIT:trusted") > 20, "{total} samples");
    for refused in ["JIT:forged", "JIT:world_writable"] {
        assert_eq!(
            total_under(&lines, refused),
            0,
            "{refused} named frames:\n{}",
            std::fs::read_to_string(&rec.file).unwrap_or_default()
        );
    }
    for reason in ["owner", "writable"] {
        assert!(
            health(
                &collector,
                "emberprof.symbolizer.perf_map.refused",
                Some(reason)
            )
            .is_some_and(|v| v >= 1.0),
            "refused as {reason} and counted"
        );
    }
    for p in [&forged, &open] {
        let path = p.map_path();
        assert!(
            rec.stderr.contains(path.to_str().unwrap()),
            "the refusal of {} is logged:\n{}",
            path.display(),
            rec.stderr
        );
    }
}

fn a_line_that_is_not_utf8_does_not_void_the_perf_map() {
    let Some(_serial) = bpf_test() else { return };
    let jit = JitProcess::start(Some(JIT_UID));
    jit.write_map(
        "JIT:after_latin1",
        b"10000000 40 caf\xe9 (Latin-1)\n",
        JIT_UID,
        0o644,
    );
    let collector = TestCollector::start();
    let endpoint = collector.endpoint();
    let pids = [jit.pid().to_string()];
    let rec = record_watched(
        "perf-map-utf8.folded",
        &pid_args(
            &pids,
            &[
                "--duration",
                "2",
                "--frequency",
                "99",
                "--otlp-endpoint",
                &endpoint,
            ],
        ),
        Duration::from_secs(60),
        1 << 20,
    );
    let lines = read_folded(&rec.file);
    assert!(leaf_count(&lines, "JIT:after_latin1") > 20);
    assert!(
        health(
            &collector,
            "emberprof.symbolizer.perf_map.lines.skipped",
            Some("not_utf8")
        )
        .is_some_and(|v| v >= 1.0),
        "the bad line is counted"
    );
}
