//! SVG flame graphs drawn by inferno from the folded lines.

use std::io::Write;

use inferno::flamegraph::{self, Options};

use crate::utc::UtcTime;
use crate::{folded, ExportError};
use emberprof_model::Profile;

/// Draws a flame graph of one value of the profile.
pub fn write(profile: &Profile, value_index: usize, out: impl Write) -> Result<(), ExportError> {
    let lines = folded::lines(profile, value_index)?;
    let value_type = &profile.sample_types[value_index];
    let mut options = Options::default();
    options.title = format!("{} profile (emberprof)", profile.kind.title());
    options.subtitle = Some(format!(
        "{}, {:.1} s, {}; value: {} ({})",
        UtcTime::of(profile.start),
        profile.duration.as_secs_f64(),
        amount(profile, value_index),
        value_type.kind,
        value_type.unit
    ));
    options.count_name = value_type.unit.clone();
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile still deserves a readable file.
        let mut out = out;
        write!(
            out,
            r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="30" text-anchor="middle">{}: no samples</text></svg>"#,
            options.title
        )?;
        return Ok(());
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| ExportError::FlameGraph(e.to_string()))
}

/// How much the profile holds: its sample count when it counts samples (CPU), else the
/// total of the drawn value (the blocked time of an off-CPU profile).
fn amount(profile: &Profile, value_index: usize) -> String {
    let counted = |kind: &str, unit: &str| {
        profile
            .sample_types
            .iter()
            .position(|t| t.kind == kind && t.unit == unit)
    };
    if let Some(i) = counted("samples", "count") {
        let n = profile.total(i);
        return format!("{n} sample{}", if n == 1 { "" } else { "s" });
    }
    let value_type = &profile.sample_types[value_index];
    let total = profile.total(value_index);
    match (value_type.kind.as_str(), value_type.unit.as_str()) {
        ("off_cpu", "nanoseconds") => format!("{:.3} s blocked", total as f64 / 1e9),
        (_, "nanoseconds") => format!("{:.3} s", total as f64 / 1e9),
        (_, unit) => format!("{total} {unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn draws_every_function() {
        let mut out = Vec::new();
        write(&testdata::profile(), 0, &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.starts_with("<?xml"));
        assert!(svg.contains("CPU profile (emberprof)"));
        for name in ["compute", "inlined_helper", "main", "do_syscall_64"] {
            assert!(svg.contains(name), "{name} missing from the SVG");
        }
    }

    #[test]
    fn the_subtitle_gives_a_readable_start_and_the_amount() {
        let mut out = Vec::new();
        write(&testdata::profile(), 0, &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        let subtitle = "2023-11-14 22:13:20 UTC, 10.0 s, 15 samples; value: samples (count)";
        assert!(svg.contains(subtitle), "{svg}");
        assert!(!svg.contains("1700000000"), "raw Unix seconds in {svg}");

        let p = testdata::profile();
        let mut b = emberprof_model::ProfileBuilder::off_cpu(p.start);
        for s in &p.samples {
            b.add(
                s.pid,
                &s.process_name,
                s.tid,
                &s.thread_name,
                &s.stack,
                &[1_250_000_000],
            );
        }
        let mut out = Vec::new();
        write(&b.finish(p.start + p.duration), 0, &mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        let blocked = format!("10.0 s, {:.3} s blocked;", 1.25 * p.samples.len() as f64);
        assert!(svg.contains(&blocked), "{blocked} not in {svg}");
    }

    #[test]
    fn empty_profile_still_writes_svg() {
        let mut p = testdata::profile();
        p.samples.clear();
        let mut out = Vec::new();
        write(&p, 0, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("no samples"));
    }
}
