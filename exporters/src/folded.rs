//! Folded stacks (`process;root;…;leaf COUNT`), as flamegraph.pl, inferno and speedscope
//! read them. Kernel frames carry the `_[k]` suffix those tools color as kernel code.

use std::collections::BTreeMap;
use std::io::Write;

use emberprof_model::FrameKind;

use crate::ExportError;
use emberprof_model::{Profile, Sample};

/// Writes one line per unique process + stack, sorted, with the summed value.
pub fn write(
    profile: &Profile,
    value_index: usize,
    mut out: impl Write,
) -> Result<(), ExportError> {
    for line in lines(profile, value_index)? {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// The folded lines, merged over threads, sorted, zero-valued stacks left out.
pub fn lines(profile: &Profile, value_index: usize) -> Result<Vec<String>, ExportError> {
    if value_index >= profile.sample_types.len() {
        return Err(ExportError::NoSuchValue(value_index));
    }
    let mut merged: BTreeMap<String, i64> = BTreeMap::new();
    for sample in &profile.samples {
        let value = sample.values.get(value_index).copied().unwrap_or(0);
        *merged.entry(stack_text(sample)).or_default() += value;
    }
    Ok(merged
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(stack, v)| format!("{stack} {v}"))
        .collect())
}

/// `name-pid;root;…;leaf`, the process first, as stackcollapse-perf writes it with --pid.
fn stack_text(sample: &Sample) -> String {
    let mut text = clean(&format!("{}-{}", sample.process_name, sample.pid));
    for location in sample.stack.iter().rev() {
        let suffix = if location.kind == FrameKind::Kernel {
            "_[k]"
        } else {
            ""
        };
        if location.frames.is_empty() {
            text.push(';');
            text.push_str(&clean(&location.to_string()));
            text.push_str(suffix);
        }
        // Outermost first: the function that was called, then what was inlined into it.
        for frame in location.frames.iter().rev() {
            text.push(';');
            text.push_str(&clean(&frame.function));
            text.push_str(suffix);
        }
    }
    text
}

/// Frame names must not contain the separators of the format.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;

    #[test]
    fn matches_golden_file() {
        let mut out = Vec::new();
        write(&testdata::profile(), 0, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let golden = include_str!("../testdata/cpu.folded");
        assert_eq!(
            text, golden,
            "folded output changed; if intended, update exporters/testdata/cpu.folded"
        );
    }

    #[test]
    fn second_value_and_bad_index() {
        let p = testdata::profile();
        let lines = lines(&p, 1).unwrap();
        let total: i64 = lines
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
            .sum();
        assert_eq!(total, p.total(1));
        assert!(matches!(
            super::lines(&p, 2),
            Err(ExportError::NoSuchValue(2))
        ));
    }

    #[test]
    fn separators_in_names_are_replaced() {
        assert_eq!(clean("a;b\nc"), "a:b c");
    }
}
