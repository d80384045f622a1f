//! emberprof's own measurements of itself: what it sampled, dropped, resolved and sent.

/// A health value: a monotonic total, or a level such as how full a map got.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HealthValue {
    /// A monotonic total since start (a counter).
    Count(u64),
    /// A value now (a gauge).
    Level(f64),
}

/// One value, e.g. `emberprof.cpu.samples.dropped{reason=count_map_full}`.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCounter {
    /// OpenTelemetry metric name (`/metrics` writes it with underscores).
    pub name: &'static str,
    pub description: &'static str,
    /// UCUM unit, e.g. `{sample}`, `By`, `s`.
    pub unit: &'static str,
    pub attributes: Vec<(&'static str, String)>,
    pub value: HealthValue,
}
