//! Python frames (issue 19): CPython processes profiled by `record --pid`, on every
//! interpreter installed here (pyenv's 3.10-3.13 must be, in CI; Debian's python3.11 when
//! present). The workload (tests/workloads/python_work.py) runs known functions.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use pprof::protos::Message;

use crate::harness::tests;
use crate::support::{bpf_test, read_folded, record, record_pid, FoldedLine};

tests![
    cpu_split_between_two_python_functions_is_kept,
    recursion_thirty_deep_gives_thirty_frames,
    pool_threads_are_under_their_own_functions,
    native_calls_appear_under_their_python_caller,
    no_python_switch_leaves_native_frames_only,
];

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/workloads/python_work.py"
);

/// The interpreters to test: (label, executable).
fn interpreters() -> Vec<(String, PathBuf)> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for minor in 10..=13 {
        let exe = std::fs::read_dir(root.join("versions"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("3.{minor}.")))
            })
            .map(|p| p.join(format!("bin/python3.{minor}")))
            .find(|p| p.exists());
        match exe {
            Some(p) => found.push((format!("pyenv 3.{minor}"), p)),
            None => missing.push(format!("3.{minor}")),
        }
    }
    if !missing.is_empty() {
        let why = format!("pyenv's CPython {} not installed", missing.join(", "));
        assert!(
            std::env::var_os("CI").is_none(),
            "{why} (the machine's contract)"
        );
        eprintln!("!!!!! {why}: those versions are NOT tested !!!!!");
    }
    let debian = PathBuf::from("/usr/bin/python3.11");
    if debian.exists() {
        found.push(("Debian 3.11".into(), debian));
    }
    found
}

/// A running workload, killed when dropped.
struct PyWorkload(Child);

impl PyWorkload {
    fn start(python: &PathBuf, mode: &str) -> PyWorkload {
        let mut child = Command::new(python)
            .arg(SCRIPT)
            .arg(mode)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(
            line.trim(),
            "ready",
            "{} {mode} did not start",
            python.display()
        );
        PyWorkload(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for PyWorkload {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Samples with `name` anywhere in their stack.
fn under(lines: &[FoldedLine], name: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l.frames.iter().any(|f| f == name))
        .map(|l| l.count)
        .sum()
}

fn cpu_split_between_two_python_functions_is_kept() {
    let Some(_serial) = bpf_test() else { return };
    for (label, python) in interpreters() {
        let w = PyWorkload::start(&python, "split");
        // 999 Hz for 3 s: about 3000 samples, so that 3 points are 4 standard deviations
        // of the binomial sampling error at this share.
        let rec = record_pid("py-split.folded", w.pid(), 3, &["--frequency", "999"]);
        let lines = read_folded(&rec.file);
        let total: u64 = lines.iter().map(|l| l.count).sum();
        let (a, b) = (
            under(&lines, "python_work.hot_a"),
            under(&lines, "python_work.hot_b"),
        );
        assert!(
            (a + b) as f64 >= 0.9 * total as f64,
            "{label}: only {} of {total} samples under hot_a or hot_b",
            a + b
        );
        let share = a as f64 / (a + b) as f64;
        assert!(
            (share - 0.75).abs() <= 0.03,
            "{label}: hot_a has {:.1}% of hot_a + hot_b, expected 75% ± 3 points ({a} / {b})",
            share * 100.0
        );
        // Callers before callees, module-qualified (3.10 has an eval-loop frame between
        // each two).
        let order = [
            "python_work.split",
            "python_work.hot_a",
            "python_work.spin_until",
        ];
        assert!(
            lines.iter().any(|l| {
                let at: Vec<Option<usize>> = order
                    .iter()
                    .map(|n| l.frames.iter().position(|f| f == n))
                    .collect();
                matches!(at[..], [Some(x), Some(y), Some(z)] if x < y && y < z)
            }),
            "{label}: no split -> hot_a -> spin_until stack"
        );
    }
}

fn recursion_thirty_deep_gives_thirty_frames() {
    let Some(_serial) = bpf_test() else { return };
    for (label, python) in interpreters() {
        let w = PyWorkload::start(&python, "deep");
        let rec = record_pid("py-deep.folded", w.pid(), 2, &[]);
        let lines = read_folded(&rec.file);
        let depth = |l: &FoldedLine| l.frames.iter().filter(|f| *f == "python_work.deep").count();
        let total: u64 = lines.iter().map(|l| l.count).sum();
        let at_30: u64 = lines
            .iter()
            .filter(|l| depth(l) == 30)
            .map(|l| l.count)
            .sum();
        assert!(
            at_30 as f64 >= 0.9 * total as f64,
            "{label}: {at_30} of {total} samples show deep() 30 times; depths seen: {:?}",
            lines
                .iter()
                .map(depth)
                .collect::<std::collections::BTreeSet<_>>()
        );
        assert!(
            lines.iter().all(|l| depth(l) <= 30),
            "{label}: more than 30 deep()"
        );
    }
}

fn pool_threads_are_under_their_own_functions() {
    let Some(_serial) = bpf_test() else { return };
    for (label, python) in interpreters() {
        let w = PyWorkload::start(&python, "pool");
        let pid = w.pid().to_string();
        let rec = record(
            "py-pool.pb.gz",
            &[
                "--pid",
                &pid,
                "--duration",
                "2",
                "--extra-attributes",
                "thread.name",
            ],
        );
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&rec.file).unwrap())
            .read_to_end(&mut raw)
            .expect("output is gzip");
        let p = pprof::protos::Profile::decode(raw.as_slice()).expect("a pprof Profile");
        let s = |i: i64| p.string_table[i as usize].as_str();
        let function_of: HashMap<u64, &str> =
            p.function.iter().map(|f| (f.id, s(f.name))).collect();
        let names_of = |loc_ids: &[u64]| -> Vec<&str> {
            loc_ids
                .iter()
                .filter_map(|id| p.location.iter().find(|l| l.id == *id))
                .flat_map(|l| l.line.iter().map(|line| function_of[&line.function_id]))
                .collect()
        };
        // thread name -> (samples, samples under work_a, under work_b)
        let mut per: HashMap<&str, (i64, i64, i64)> = HashMap::new();
        for x in &p.sample {
            let thread = x
                .label
                .iter()
                .find(|l| s(l.key) == "thread_name")
                .map_or("", |l| s(l.str));
            let names = names_of(&x.location_id);
            let e = per.entry(thread).or_default();
            e.0 += x.value[0];
            e.1 += x.value[0] * i64::from(names.contains(&"python_work.work_a"));
            e.2 += x.value[0] * i64::from(names.contains(&"python_work.work_b"));
        }
        for (thread, own, other) in [("pool-a", 1, 2), ("pool-b", 2, 1)] {
            let Some(&t) = per.get(thread) else {
                panic!("{label}: no samples of thread {thread}: {per:?}");
            };
            let pick = |i: usize| [t.0, t.1, t.2][i];
            assert!(
                pick(own) as f64 >= 0.95 * t.0 as f64,
                "{label}: {thread}: {} of {} samples under its own function ({per:?})",
                pick(own),
                t.0
            );
            assert_eq!(
                pick(other),
                0,
                "{label}: {thread} has samples under the other thread's function"
            );
        }
    }
}

fn native_calls_appear_under_their_python_caller() {
    let Some(_serial) = bpf_test() else { return };
    for (label, python) in interpreters() {
        let w = PyWorkload::start(&python, "native");
        let rec = record_pid("py-native.folded", w.pid(), 3, &[]);
        let lines = read_folded(&rec.file);
        // The native frames below (leafward of) the Python caller.
        let natives_under = |caller: &str, want: &dyn Fn(&str) -> bool| -> (u64, u64) {
            let mut with = 0;
            let mut all = 0;
            for l in &lines {
                let Some(at) = l.frames.iter().position(|f| f == caller) else {
                    continue;
                };
                all += l.count;
                if l.frames[at + 1..].iter().any(|f| want(f)) {
                    with += l.count;
                }
            }
            (with, all)
        };
        let (sha, hash_all) = natives_under("python_work.do_hash", &|f| {
            f.to_ascii_lowercase().contains("sha256")
        });
        assert!(
            hash_all > 0 && sha as f64 >= 0.8 * hash_all as f64,
            "{label}: {sha} of {hash_all} samples under do_hash have a sha256 native frame below it"
        );
        // The C encoder: named, or (a stripped extension module) its file.
        let (enc, json_all) = natives_under("python_work.do_json", &|f| {
            f.starts_with("encoder_") || f.starts_with("_json.")
        });
        assert!(
            json_all > 0 && enc as f64 >= 0.5 * json_all as f64,
            "{label}: {enc} of {json_all} samples under do_json have the C encoder below it"
        );
        // And above the eval loop that runs the caller: native, then Python, then native.
        assert!(
            lines.iter().any(|l| {
                let eval = l
                    .frames
                    .iter()
                    .position(|f| f.starts_with("_PyEval_EvalFrameDefault"));
                let caller = l.frames.iter().position(|f| f == "python_work.do_hash");
                matches!((eval, caller), (Some(e), Some(c)) if e < c)
            }),
            "{label}: do_hash is not above an eval-loop frame"
        );
    }
}

fn no_python_switch_leaves_native_frames_only() {
    let Some(_serial) = bpf_test() else { return };
    let Some((label, python)) = interpreters().into_iter().next() else {
        panic!("no CPython installed");
    };
    let w = PyWorkload::start(&python, "split");
    let rec = record_pid("py-off.folded", w.pid(), 1, &["--no-python"]);
    let lines = read_folded(&rec.file);
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| !l.frames.iter().any(|f| f.starts_with("python_work."))),
        "{label}: Python frames with --no-python"
    );
}
