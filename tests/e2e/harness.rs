//! The e2e test harness (libtest-mimic, same command line as libtest). The built-in one
//! cannot mark a test ignored once it runs, so a BPF test without root used to return
//! early and count as passed. Here a test that cannot run on this host calls `skip`, and
//! it is reported as ignored with the reason.
//!
//! Each module registers its tests with `tests![...]`: under this harness a `#[test]`
//! attribute compiles the function out without a word, and an unregistered test function
//! is dead code, which the crate denies.

use std::cell::RefCell;
use std::path::Path;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// One registered test.
pub struct Test {
    /// `module_path!()` of its module, `e2e::otlp`.
    pub module: &'static str,
    pub name: &'static str,
    pub run: fn(),
}

impl Test {
    /// The name libtest gives it: `otlp::a_collector_that_comes_up_late...`.
    fn path(&self) -> String {
        let module = self.module.split_once("::").map_or("", |(_, m)| m);
        format!("{module}::{}", self.name)
    }
}

/// Registers the named functions of the calling module as its tests (`TESTS`).
macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        pub(crate) const TESTS: &[$crate::harness::Test] = &[$(
            $crate::harness::Test { module: module_path!(), name: stringify!($name), run: $name },
        )*];
    };
}
pub(crate) use tests;

thread_local! {
    /// Why the test running on this thread did not run its checks.
    static SKIPPED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Reports the running test as ignored, with `reason`, instead of passed; the test returns
/// right after calling this.
pub fn skip(reason: impl Into<String>) {
    SKIPPED.with(|s| *s.borrow_mut() = Some(reason.into()));
}

/// The command line, read as libtest reads it: libtest-mimic takes one filter, libtest any
/// number (a test runs if it matches one), and libtest also reads `RUST_TEST_THREADS`.
pub fn arguments() -> (Arguments, Vec<String>) {
    const WITH_VALUE: [&str; 6] = [
        "--test-threads",
        "--logfile",
        "--skip",
        "--color",
        "--format",
        "-Z",
    ];
    let mut argv = std::env::args();
    let mut options: Vec<String> = argv.next().into_iter().collect();
    let mut filters = Vec::new();
    while let Some(arg) = argv.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            options.push(arg);
            options.extend(argv.next());
        } else if arg.starts_with('-') {
            options.push(arg);
        } else {
            filters.push(arg);
        }
    }
    let mut args = Arguments::from_iter(options);
    if args.test_threads.is_none() {
        args.test_threads = std::env::var("RUST_TEST_THREADS")
            .ok()
            .and_then(|n| n.parse().ok());
    }
    (args, filters)
}

/// The trials that `filters` select (all without filters), sorted by name as libtest sorts
/// them.
pub fn trials(modules: &[&'static [Test]], args: &Arguments, filters: &[String]) -> Vec<Trial> {
    let mut trials: Vec<Trial> = modules
        .iter()
        .flat_map(|tests| tests.iter())
        .map(|test| Trial::ignorable_test(test.path(), move || run(test)))
        .chain([Trial::test(
            "harness::no_test_is_compiled_out_by_a_test_attribute",
            no_test_attribute,
        )])
        .filter(|trial| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if args.exact {
                        trial.name() == f
                    } else {
                        trial.name().contains(f.as_str())
                    }
                })
        })
        .collect();
    trials.sort_by(|a, b| a.name().cmp(b.name()));
    trials
}

/// Runs a test on a thread named after it, as libtest does (panic messages name it).
fn run(test: &'static Test) -> Result<Completion, Failed> {
    let thread = std::thread::Builder::new()
        .name(test.path())
        .spawn(move || {
            (test.run)();
            SKIPPED.with(|s| s.borrow_mut().take())
        })
        .map_err(|e| format!("starting the test's thread: {e}"))?;
    match thread.join() {
        Ok(None) => Ok(Completion::Completed),
        Ok(Some(reason)) => Ok(Completion::ignored_with(reason)),
        // The harness reports the panic's message.
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// A `#[test]` function here would silently never run: fail instead.
fn no_test_attribute() -> Result<(), Failed> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("#[test") {
                found.push(format!("{}:{}", path.display(), i + 1));
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "#[test] functions are compiled out under this harness; list them in their module's tests![...] instead: {found:?}"
        )
        .into())
    }
}
