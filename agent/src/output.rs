//! Where a profile is written: a file (default name from the time) or standard output.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use emberprof_exporters::sinks::{Sink, Span};
use emberprof_exporters::utc::UtcTime;
use emberprof_exporters::{ExportError, Format};
use emberprof_model::{Profile, ProfileBuilder, ProfileKind};

use crate::cli::FormatArg;

/// The format asked for, else the one the output file's extension names, else pprof.
pub fn choose_format(arg: Option<FormatArg>, output: Option<&Path>) -> Format {
    match arg {
        Some(FormatArg::Pprof) => Format::Pprof,
        Some(FormatArg::Folded) => Format::Folded,
        Some(FormatArg::Svg) => Format::Svg,
        None => {
            let name = output
                .map(|p| p.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            if name.ends_with(".svg") {
                Format::Svg
            } else if name.ends_with(".folded") || name.ends_with(".txt") {
                Format::Folded
            } else {
                Format::Pprof
            }
        }
    }
}

/// `emberprof-20261124T231500Z.pb.gz` for the given time, with `.INFIX` before the
/// extension when one is given.
pub fn default_path(format: Format, now: SystemTime, infix: &str) -> PathBuf {
    let infix = if infix.is_empty() {
        String::new()
    } else {
        format!(".{infix}")
    };
    PathBuf::from(format!(
        "emberprof-{}{infix}.{}",
        utc_stamp(now),
        format.extension()
    ))
}

/// `out.pb.gz` -> `out.INFIX.pb.gz`: the format's extension stays last.
pub fn with_infix(path: &Path, infix: &str, format: Format) -> PathBuf {
    let text = path.to_string_lossy();
    let ext = format!(".{}", format.extension());
    match text.strip_suffix(&ext) {
        Some(stem) => PathBuf::from(format!("{stem}.{infix}{ext}")),
        None => PathBuf::from(format!("{text}.{infix}")),
    }
}

/// Paths [`write`] has written (a written file is never removed by [`Reserved`]).
static WRITTEN: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Output files opened before recording starts, so that a path that cannot be written fails
/// in a second rather than after the whole recording. An existing file is opened without
/// truncating it (a failed run leaves it as it was); a file created here and still empty and
/// unwritten when this is dropped (the run failed) is removed again.
pub struct Reserved {
    created: Vec<PathBuf>,
}

/// Opens (or creates) every path for writing; `-` (standard output) needs nothing.
pub fn reserve(paths: &[&Path]) -> anyhow::Result<Reserved> {
    let mut reserved = Reserved {
        created: Vec::new(),
    };
    for &path in paths {
        if path == Path::new("-") {
            continue;
        }
        let existed = path.exists();
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot write the output {}", path.display()))?;
        if !existed {
            reserved.created.push(path.to_path_buf());
        }
    }
    Ok(reserved)
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let written = WRITTEN.lock().unwrap_or_else(|e| e.into_inner());
        for path in &self.created {
            let unwritten = written.as_ref().is_none_or(|w| !w.contains(path));
            let empty = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0);
            if unwritten && empty {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Writes the profile to `path`, `-` meaning standard output.
pub fn write(profile: &Profile, format: Format, path: &Path) -> anyhow::Result<()> {
    if path == Path::new("-") {
        let stdout = std::io::stdout();
        let mut out = BufWriter::new(stdout.lock());
        format
            .write(profile, &mut out)
            .context("writing the profile to standard output")?;
        out.flush()
            .context("writing the profile to standard output")?;
        return Ok(());
    }
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    format
        .write(profile, &mut out)
        .with_context(|| format!("writing {}", path.display()))?;
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    WRITTEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashSet::new)
        .insert(path.to_path_buf());
    Ok(())
}

/// `record`'s output files: the spans of each profile kind merged into one profile covering
/// the whole recording, written (to a file or standard output) when flushed.
pub struct Files {
    format: Format,
    paths: Vec<(ProfileKind, PathBuf)>,
    whole: Vec<(ProfileKind, ProfileBuilder)>,
    end: Option<SystemTime>,
}

impl Files {
    /// Profiles of each kind go to its path, in `format`.
    pub fn new(format: Format, paths: Vec<(ProfileKind, PathBuf)>) -> Files {
        Files {
            format,
            paths,
            whole: Vec::new(),
            end: None,
        }
    }
}

impl Sink for Files {
    fn describe(&self) -> String {
        let paths: Vec<String> = self
            .paths
            .iter()
            .map(|(_, p)| p.display().to_string())
            .collect();
        format!("files {}", paths.join(", "))
    }

    fn submit(&mut self, span: &Span<'_>) {
        for p in span.profiles {
            match self.whole.iter_mut().find(|(k, _)| *k == p.kind) {
                Some((_, whole)) => whole.merge(p),
                None => {
                    let mut whole = ProfileBuilder::empty_like(p);
                    whole.merge(p);
                    self.whole.push((p.kind, whole));
                }
            }
        }
        self.end = Some(span.end);
    }

    fn flush(&mut self, _timeout: std::time::Duration) -> Result<(), ExportError> {
        let Some(end) = self.end else {
            return Ok(());
        };
        for (kind, whole) in std::mem::take(&mut self.whole) {
            let Some((_, path)) = self.paths.iter().find(|(k, _)| *k == kind) else {
                continue;
            };
            write(&whole.finish(end), self.format, path)
                .map_err(|e| ExportError::Undelivered(format!("{e:#}")))?;
        }
        Ok(())
    }
}

/// `YYYYMMDDTHHMMSSZ` in UTC.
pub fn utc_stamp(t: SystemTime) -> String {
    let u = UtcTime::of(t);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        // 2026-11-24 23:15:07 UTC
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(1_795_562_107)),
            "20261124T231507Z"
        );
        // a leap day
        assert_eq!(
            utc_stamp(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "20000229T000000Z"
        );
    }

    #[test]
    fn infix_goes_before_the_extension() {
        assert_eq!(
            with_infix(Path::new("a/x.pb.gz"), "offcpu", Format::Pprof),
            PathBuf::from("a/x.offcpu.pb.gz")
        );
        assert_eq!(
            with_infix(Path::new("x.svg"), "offcpu", Format::Svg),
            PathBuf::from("x.offcpu.svg")
        );
        assert_eq!(
            with_infix(Path::new("x"), "offcpu", Format::Folded),
            PathBuf::from("x.offcpu")
        );
        let t = UNIX_EPOCH;
        assert_eq!(
            default_path(Format::Svg, t, "offcpu"),
            PathBuf::from("emberprof-19700101T000000Z.offcpu.svg")
        );
        assert_eq!(
            default_path(Format::Pprof, t, ""),
            PathBuf::from("emberprof-19700101T000000Z.pb.gz")
        );
    }

    #[test]
    fn format_from_extension() {
        assert_eq!(choose_format(None, Some(Path::new("x.svg"))), Format::Svg);
        assert_eq!(
            choose_format(None, Some(Path::new("x.folded"))),
            Format::Folded
        );
        assert_eq!(
            choose_format(None, Some(Path::new("x.pb.gz"))),
            Format::Pprof
        );
        assert_eq!(choose_format(None, None), Format::Pprof);
        assert_eq!(
            choose_format(Some(FormatArg::Folded), Some(Path::new("x.svg"))),
            Format::Folded
        );
    }
}
