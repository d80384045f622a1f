//! The outputs: profiles as pprof, folded stacks, SVG flame graphs, OTLP and Pyroscope
//! pushes; latency histograms as OTLP metrics and text; delivery to collectors.

pub mod delivery;
mod error;
pub mod folded;
pub mod histogram_text;
pub mod otlp;
pub mod pprof;
pub mod pyroscope;
mod random;
pub mod sinks;
pub mod svg;
#[cfg(test)]
mod testdata;
pub mod utc;

pub use error::ExportError;

use emberprof_model::Profile;

/// Output formats for a recorded profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Gzipped pprof protobuf.
    Pprof,
    /// Folded stacks, one line per unique stack.
    Folded,
    /// SVG flame graph.
    Svg,
}

impl Format {
    /// File name extension, without the leading dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Pprof => "pb.gz",
            Format::Folded => "folded",
            Format::Svg => "svg",
        }
    }

    /// Writes `profile` in this format. Folded stacks and SVG use the first sample type.
    pub fn write(self, profile: &Profile, out: impl std::io::Write) -> Result<(), ExportError> {
        match self {
            Format::Pprof => pprof::write(profile, out),
            Format::Folded => folded::write(profile, 0, out),
            Format::Svg => svg::write(profile, 0, out),
        }
    }
}
