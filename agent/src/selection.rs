//! Process selection for the agent: include/exclude by PID, executable name (regex) and
//! cgroup path prefix. The rules are evaluated over /proc at every drain and the result is
//! written to the probes' in-kernel PID filter, so excluded processes cost one hash lookup
//! per event. A process started between two scans is picked up at the next one.

use std::collections::BTreeSet;
use std::path::Path;

use regex::Regex;

use crate::cli::SelectArgs;

/// The rules; `None` from [`Selection::from_args`] when there are none.
#[derive(Debug)]
pub struct Selection {
    include_pids: BTreeSet<u32>,
    exclude_pids: BTreeSet<u32>,
    include_exe: Option<Regex>,
    exclude_exe: Option<Regex>,
    include_cgroups: Vec<String>,
    exclude_cgroups: Vec<String>,
}

/// What the rules look at for one process.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProcessFacts {
    pub pid: u32,
    pub exe: String,
    pub cgroup: String,
}

fn regex(pattern: &Option<String>, flag: &str) -> anyhow::Result<Option<Regex>> {
    pattern
        .as_deref()
        .map(|p| {
            Regex::new(p).map_err(|e| {
                // The parser draws a caret under the pattern over several lines; its last
                // line says what is wrong.
                let text = e.to_string();
                let why = text.lines().last().unwrap_or_default().trim();
                anyhow::anyhow!(
                    "{flag} {p:?} is not a valid regex ({})",
                    why.trim_start_matches("error: ")
                )
            })
        })
        .transpose()
}

fn prefix(p: &str) -> String {
    format!("/{}", p.trim().trim_matches('/'))
}

/// Whether `path` is `prefix` or below it (component-wise: /a is not a prefix of /ab).
fn under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl Selection {
    /// The rules from the flags (plus `--pid` as an include rule), or `None` with only
    /// `--pid` or nothing: those need no scanning.
    pub fn from_args(pids: &[u32], args: &SelectArgs) -> anyhow::Result<Option<Selection>> {
        // Pod annotations exclude (or opt in) processes: that needs the scans too.
        let dynamic = crate::kubernetes::get().is_some()
            || !args.exclude_pid.is_empty()
            || args.include_exe.is_some()
            || args.exclude_exe.is_some()
            || !args.include_cgroup.is_empty()
            || !args.exclude_cgroup.is_empty();
        if !dynamic {
            return Ok(None);
        }
        Ok(Some(Selection {
            include_pids: pids.iter().copied().collect(),
            exclude_pids: args.exclude_pid.iter().copied().collect(),
            include_exe: regex(&args.include_exe, "--include-exe")?,
            exclude_exe: regex(&args.exclude_exe, "--exclude-exe")?,
            include_cgroups: args.include_cgroup.iter().map(|p| prefix(p)).collect(),
            exclude_cgroups: args.exclude_cgroup.iter().map(|p| prefix(p)).collect(),
        }))
    }

    /// Whether the rules select this process.
    pub fn selects(&self, p: &ProcessFacts) -> bool {
        let has_include = !self.include_pids.is_empty()
            || self.include_exe.is_some()
            || !self.include_cgroups.is_empty();
        let included = !has_include
            || self.include_pids.contains(&p.pid)
            || self
                .include_exe
                .as_ref()
                .is_some_and(|r| r.is_match(&p.exe))
            || self.include_cgroups.iter().any(|c| under(&p.cgroup, c));
        let excluded = self.exclude_pids.contains(&p.pid)
            || self
                .exclude_exe
                .as_ref()
                .is_some_and(|r| r.is_match(&p.exe))
            || self.exclude_cgroups.iter().any(|c| under(&p.cgroup, c));
        included && !excluded && crate::kubernetes::get().is_none_or(|k| k.allows(&p.cgroup))
    }

    /// The running processes the rules select; `None` if /proc cannot be read (keep the
    /// previous set rather than stop profiling everything).
    pub fn scan(&self) -> Option<BTreeSet<u32>> {
        let entries = std::fs::read_dir("/proc").ok()?;
        Some(
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(facts)
                .filter(|p| self.selects(p))
                .map(|p| p.pid)
                .collect(),
        )
    }
}

/// Executable name and cgroup v2 path of a process; `None` if it is gone (or a kernel
/// thread, which has no executable).
fn facts(pid: u32) -> Option<ProcessFacts> {
    let dir = Path::new("/proc").join(pid.to_string());
    let exe = std::fs::read_link(dir.join("exe"))
        .ok()
        .and_then(|p| {
            p.file_name().map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_string()
            })
        })
        .or_else(|| {
            // No readable exe: a kernel thread (empty command line: never profiled by
            // rules), or another user's process without CAP_SYS_PTRACE (use its comm).
            let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
            if cmdline.is_empty() {
                return None;
            }
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            Some(comm.trim().to_string())
        })?;
    let cgroup = std::fs::read_to_string(dir.join("cgroup"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        })
        .unwrap_or_else(|| "/".to_string());
    Some(ProcessFacts { pid, exe, cgroup })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, exe: &str, cgroup: &str) -> ProcessFacts {
        ProcessFacts {
            pid,
            exe: exe.into(),
            cgroup: cgroup.into(),
        }
    }

    fn rules(f: impl FnOnce(&mut SelectArgs)) -> Selection {
        let mut args = SelectArgs::default();
        f(&mut args);
        Selection::from_args(&[], &args).unwrap().unwrap()
    }

    #[test]
    fn includes_and_excludes_combine() {
        let s = rules(|a| {
            a.include_exe = Some("^(nginx|java)$".into());
            a.exclude_pid = vec![7];
            a.exclude_cgroup = vec!["/system.slice/batch".into()];
        });
        assert!(s.selects(&p(1, "nginx", "/")));
        assert!(!s.selects(&p(2, "bash", "/")));
        assert!(!s.selects(&p(7, "nginx", "/")));
        assert!(!s.selects(&p(3, "java", "/system.slice/batch/job-1")));
        assert!(
            s.selects(&p(4, "java", "/system.slice/batch-2")),
            "prefix is per component"
        );
    }

    #[test]
    fn cgroup_includes_cover_the_subtree() {
        let s = rules(|a| a.include_cgroup = vec!["kubepods.slice/".into()]);
        assert!(s.selects(&p(1, "x", "/kubepods.slice")));
        assert!(s.selects(&p(1, "x", "/kubepods.slice/pod1/c1")));
        assert!(!s.selects(&p(1, "x", "/user.slice")));
    }

    #[test]
    fn only_pids_need_no_scanning_and_bad_regexes_are_errors() {
        assert!(Selection::from_args(&[1], &SelectArgs::default())
            .unwrap()
            .is_none());
        let bad = SelectArgs {
            include_exe: Some("(".into()),
            ..Default::default()
        };
        let e = Selection::from_args(&[], &bad).unwrap_err().to_string();
        assert!(e.contains("--include-exe"), "{e}");
    }

    #[test]
    fn scanning_finds_this_test_process() {
        let s = rules(|a| a.exclude_pid = vec![1]);
        let me = std::process::id();
        let found = s.scan().unwrap();
        assert!(found.contains(&me));
        assert!(!found.contains(&1));
    }
}
