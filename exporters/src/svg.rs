//! SVG flame graphs drawn by inferno from the folded lines.

use std::io::Write;

use inferno::flamegraph::{self, Options};

use crate::{folded, ExportError, Profile};

/// Draws a flame graph of one value of the profile.
pub fn write(profile: &Profile, value_index: usize, out: impl Write) -> Result<(), ExportError> {
    let lines = folded::lines(profile, value_index)?;
    let value_type = &profile.sample_types[value_index];
    let mut options = Options::default();
    options.title = format!("{} profile (emberprof)", profile.name);
    options.subtitle = Some(format!(
        "{} over {:.1} s; value: {} ({})",
        profile.start_unix_nanos() / 1_000_000_000,
        profile.duration.as_secs_f64(),
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
    fn empty_profile_still_writes_svg() {
        let mut p = testdata::profile();
        p.samples.clear();
        let mut out = Vec::new();
        write(&p, 0, &mut out).unwrap();
        assert!(String::from_utf8(out).unwrap().contains("no samples"));
    }
}
