//! The CPython reader against live interpreters (pyenv's 3.10–3.13, and Debian's 3.11 where
//! installed): a script builds a known stack in a worker thread, prints it as its own
//! `traceback` sees it, and sleeps; the reader finds the interpreter, walks every thread
//! from `_PyRuntime` and must name the worker's frames the same, line for line.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use emberprof_symbolizer::python::{self, CodeInfo, ProcessMemory};

/// The stack: a nested class's method recursing, a generator, a lambda under the C builtin
/// `map` (a C entry into the eval loop), and names in latin-1 and UCS-2.
const SCRIPT: &str = r#"
import sys, threading, time, traceback

def park():
    frames = traceback.extract_stack()[:-1]
    here = sys._getframe().f_lineno + 3
    report(frames, here)
    while True:
        time.sleep(1)

def report(frames, here):
    out = ["T %d" % threading.get_ident()]
    for f in frames:
        out.append("F %s\t%s\t%d" % (f.name, f.filename, f.lineno))
    out.append("F park\t%s\t%d" % (frames[-1].filename, here))
    out.append("END")
    print("\n".join(out), flush=True)

def gen():
    yield park()

def café(n):
    return list(map(lambda _: next(gen()), [0]))

class Outer:
    class Inner:
        def method(self, n):
            if n:
                return self.method(n - 1)
            return 函数()

def 函数():
    return café(1)

def worker():
    Outer.Inner().method(3)

t = threading.Thread(target=worker, name="worker")
t.start()
t.join()
"#;

/// The interpreters to check (shared with the end-to-end tests; included by path, since
/// this crate cannot depend on the test-support crate's build).
#[path = "../../tests/support/src/python.rs"]
mod installed;

fn interpreters() -> Vec<PathBuf> {
    installed::interpreters()
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// A running script and the worker's stack as it printed it: (thread id, frames outermost
/// first as (name, file, line)).
struct Script {
    child: Child,
    thread_id: u64,
    frames: Vec<(String, String, u32)>,
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(python: &PathBuf) -> Script {
    let dir = std::env::temp_dir().join(format!("ep-python-reader-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stack.py");
    std::fs::write(&file, SCRIPT).unwrap();
    let mut child = Command::new(python)
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", python.display()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut thread_id = 0;
    let mut frames = Vec::new();
    for line in &mut lines {
        let line = line.unwrap();
        if line == "END" {
            break;
        }
        if let Some(id) = line.strip_prefix("T ") {
            thread_id = id.parse().unwrap();
        } else if let Some(f) = line.strip_prefix("F ") {
            let parts: Vec<&str> = f.split('\t').collect();
            frames.push((
                parts[0].to_string(),
                parts[1].to_string(),
                parts[2].parse().unwrap(),
            ));
        }
    }
    assert!(thread_id != 0, "{} printed no stack", python.display());
    Script {
        child,
        thread_id,
        frames,
    }
}

#[test]
fn the_reader_names_every_frame_of_a_live_interpreter_as_its_traceback_does() {
    for python in interpreters() {
        let script = start(&python);
        let pid = script.child.id();
        let rt = python::detect(pid)
            .unwrap_or_else(|e| panic!("{}: {e}", python.display()))
            .unwrap_or_else(|| panic!("{}: not detected", python.display()));
        let mem = ProcessMemory::new(pid);
        // The worker prints, then gets to its sleep: walk until the walk shows it there
        // (a busy VM may take a while), and compare the last walk.
        let walk = || -> Result<Vec<(String, String, u32, String)>, String> {
            let threads =
                python::walk_threads(&mem, &rt.offsets, rt.runtime).map_err(|e| e.to_string())?;
            let worker = threads
                .iter()
                .find(|t| t.thread_id == script.thread_id)
                .ok_or_else(|| format!("no thread {} in {threads:?}", script.thread_id))?;
            worker
                .frames
                .iter()
                .rev()
                .map(|f| {
                    let code = CodeInfo::read(&mem, &rt.offsets, rt.code_type, f.code)
                        .map_err(|e| e.to_string())?;
                    let line = code.line(f.index);
                    Ok((code.name, code.filename, line, code.qualname))
                })
                .collect()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let named = loop {
            let walked = walk();
            let done = walked.as_ref().is_ok_and(|named| {
                named
                    .iter()
                    .map(|(n, f, l, _)| (n.clone(), f.clone(), *l))
                    .eq(script.frames.iter().cloned())
            });
            if done || std::time::Instant::now() > deadline {
                break walked.unwrap_or_else(|e| panic!("{}: {e}", python.display()));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let got: Vec<(String, String, u32)> = named
            .iter()
            .map(|(n, f, l, _)| (n.clone(), f.clone(), *l))
            .collect();
        assert_eq!(
            got,
            script.frames,
            "{} ({}): walked vs traceback",
            python.display(),
            rt.version
        );
        if rt.version.minor >= 11 {
            assert!(
                named.iter().any(|(_, _, _, q)| q == "Outer.Inner.method"),
                "{}: {named:?}",
                python.display()
            );
        }
    }
}

#[test]
fn a_process_without_python_is_not_detected() {
    let mut child = Command::new("sleep").arg("5").spawn().unwrap();
    let found = python::detect(child.id());
    let _ = child.kill();
    let _ = child.wait();
    assert!(matches!(found, Ok(None)), "{found:?}");
}
