//! `--pprof-dir`: every interval's profiles as pprof files in a local directory, rotated by
//! count, total size and age (oldest first), for hosts without a collector or as a local
//! record beside one.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use emberprof_exporters::sinks::{Sink, Span};
use emberprof_exporters::{ExportError, Format};
use emberprof_model::Profile;

use crate::output;

/// Files the agent writes start with this; rotation touches nothing else.
const PREFIX: &str = "emberprof-";
const SUFFIX: &str = ".pb.gz";

/// The directory and its limits.
#[derive(Debug, Clone)]
pub struct PprofDir {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
    max_age: Duration,
}

impl PprofDir {
    /// Creates the directory if needed and checks that it can be written.
    pub fn new(
        dir: &Path,
        max_files: usize,
        max_bytes: u64,
        max_age: Duration,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--pprof-dir {}: cannot create it", dir.display()))?;
        let probe = dir.join(".emberprof-write-test");
        std::fs::write(&probe, b"")
            .with_context(|| format!("--pprof-dir {}: cannot write there", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        Ok(PprofDir {
            dir: dir.to_path_buf(),
            max_files: max_files.max(1),
            max_bytes,
            max_age,
        })
    }

    /// Writes one interval's profile as `emberprof-<end time>.<kind>.pb.gz` (written to a
    /// temporary name, then renamed, so readers never see half a file), then rotates.
    pub fn write(&self, profile: &Profile, kind: &str, end: SystemTime) -> anyhow::Result<PathBuf> {
        let stamp = output::utc_stamp(end);
        let mut path = self.dir.join(format!("{PREFIX}{stamp}.{kind}{SUFFIX}"));
        let mut n = 1;
        while path.exists() {
            path = self.dir.join(format!("{PREFIX}{stamp}-{n}.{kind}{SUFFIX}"));
            n += 1;
        }
        let tmp = self.dir.join(format!(
            ".{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy()
        ));
        let written = output::write(profile, Format::Pprof, &tmp).and_then(|()| {
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("renaming {} into place", tmp.display()))
        });
        if let Err(e) = written {
            // No half-written temporary files left behind.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.rotate();
        Ok(path)
    }

    /// Deletes the oldest files until every limit holds.
    fn rotate(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with(PREFIX) && name.ends_with(SUFFIX)
            })
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        files.sort();
        let now = SystemTime::now();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let mut count = files.len();
        // The newest file always stays, even when it alone is over a limit.
        let newest = files.len().saturating_sub(1);
        for (modified, len, path) in files.into_iter().take(newest) {
            let too_old = now.duration_since(modified).unwrap_or_default() > self.max_age;
            if count <= self.max_files && total <= self.max_bytes && !too_old {
                break;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    count -= 1;
                    total -= len;
                }
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot rotate out"),
            }
        }
    }
}

impl Sink for PprofDir {
    fn describe(&self) -> String {
        format!("pprof directory {}", self.dir.display())
    }

    fn submit(&mut self, span: &Span<'_>) {
        for p in span.profiles {
            if let Err(e) = self.write(p, p.kind.id(), span.end) {
                tracing::warn!(error = %format!("{e:#}"), "writing the interval's pprof file");
            }
        }
    }

    fn flush(&mut self, _timeout: std::time::Duration) -> Result<(), ExportError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_files_within_the_count() {
        let dir = std::env::temp_dir().join(format!("ep-pprofdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let d = PprofDir::new(&dir, 2, u64::MAX, Duration::from_secs(3600)).unwrap();
        std::fs::write(dir.join("unrelated.txt"), "keep me").unwrap();
        let profile =
            emberprof_model::ProfileBuilder::cpu(99, SystemTime::now()).finish(SystemTime::now());
        let mut written = Vec::new();
        for _ in 0..4 {
            written.push(d.write(&profile, "cpu", SystemTime::now()).unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        left.sort();
        assert!(left.contains(&dir.join("unrelated.txt")));
        assert!(
            left.contains(&written[2]) && left.contains(&written[3]),
            "{left:?}"
        );
        assert_eq!(left.len(), 3, "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_is_a_clear_error() {
        let e = PprofDir::new(Path::new("/proc/emberprof"), 1, 1, Duration::ZERO)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--pprof-dir"), "{e}");
    }
}
