//! The CPython interpreters the Python tests run: pyenv's 3.10–3.13, which the machine's
//! contract installs (missing ones fail under CI, and are reported loudly elsewhere), and
//! Debian's python3.11 when present. Also included by the symbolizer's own test
//! (`#[path]`), which must not depend on this crate's build.

use std::path::PathBuf;

/// pyenv's versions directory (`$PYENV_ROOT/versions`, else `~/.pyenv/versions`).
pub fn pyenv_versions() -> PathBuf {
    std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pyenv")))
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"))
        .join("versions")
}

/// pyenv's `python3.MINOR` executable, if that minor version is installed.
pub fn pyenv_python(minor: u32) -> Option<PathBuf> {
    std::fs::read_dir(pyenv_versions())
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
        .find(|p| p.exists())
}

/// The interpreters to test, each with a label (`pyenv 3.12`, `Debian 3.11`).
pub fn interpreters() -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for minor in 10..=13 {
        match pyenv_python(minor) {
            Some(p) => found.push((format!("pyenv 3.{minor}"), p)),
            None => missing.push(format!("3.{minor}")),
        }
    }
    if !missing.is_empty() {
        let why = format!(
            "pyenv's CPython {} not installed under {}",
            missing.join(", "),
            pyenv_versions().display()
        );
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
