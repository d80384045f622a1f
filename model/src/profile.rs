//! Profiles: symbolized stacks with values, per process and thread, of one kind, over one
//! time range.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::frame::Stack;

/// What a profile measures. Adding a kind is a variant here and a probe that drains into
/// [`crate::KernelSample`]s of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProfileKind {
    /// CPU samples; a drained value is a number of samples.
    Cpu,
    /// Where threads waited; a drained value is nanoseconds blocked.
    OffCpu,
    /// Where threads were when they hit a probe point (`--probe`); a drained value is hits.
    Probe,
}

impl ProfileKind {
    /// Every kind.
    pub const ALL: [ProfileKind; 3] = [ProfileKind::Cpu, ProfileKind::OffCpu, ProfileKind::Probe];

    /// Human name, for titles and messages.
    pub fn title(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "CPU",
            ProfileKind::OffCpu => "Off-CPU",
            ProfileKind::Probe => "Probe",
        }
    }

    /// Short name in file names, metrics and labels (`cpu`, `offcpu`).
    pub fn id(self) -> &'static str {
        match self {
            ProfileKind::Cpu => "cpu",
            ProfileKind::OffCpu => "offcpu",
            ProfileKind::Probe => "probe",
        }
    }
}

/// What a value measures, in pprof's (type, unit) terms, e.g. ("cpu", "nanoseconds").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueType {
    pub kind: String,
    pub unit: String,
}

impl ValueType {
    /// A value type from its kind and unit.
    pub fn new(kind: &str, unit: &str) -> Self {
        ValueType {
            kind: kind.to_string(),
            unit: unit.to_string(),
        }
    }
}

/// One unique {process, thread, stack} and its values, one per sample type.
#[derive(Clone, Debug)]
pub struct Sample {
    pub pid: u32,
    pub process_name: Arc<str>,
    pub tid: u32,
    pub thread_name: Arc<str>,
    /// Leaf first.
    pub stack: Stack,
    pub values: Vec<i64>,
}

/// A profile over one time range.
#[derive(Clone, Debug)]
pub struct Profile {
    pub kind: ProfileKind,
    pub sample_types: Vec<ValueType>,
    /// What one sampling period measures, for sampled profiles (CPU: `cpu/nanoseconds`);
    /// `None` for measured ones (off-CPU), as the consumers expect.
    pub period_type: Option<ValueType>,
    /// Value of one sample in `period_type` units; 0 without a period type.
    pub period: i64,
    pub start: SystemTime,
    pub duration: Duration,
    pub samples: Vec<Sample>,
}

impl Profile {
    /// A copy of everything but the samples.
    fn clone_empty(&self) -> Profile {
        Profile {
            kind: self.kind,
            sample_types: self.sample_types.clone(),
            period_type: self.period_type.clone(),
            period: self.period,
            start: self.start,
            duration: self.duration,
            samples: Vec::new(),
        }
    }

    /// Start time in nanoseconds since the Unix epoch.
    pub fn start_unix_nanos(&self) -> i64 {
        self.start
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Sum of one value over all samples.
    pub fn total(&self, value_index: usize) -> i64 {
        self.samples
            .iter()
            .filter_map(|s| s.values.get(value_index))
            .sum()
    }
}

#[derive(PartialEq, Eq, Hash)]
struct Key {
    pid: u32,
    tid: u32,
    thread_name: Arc<str>,
    stack: Stack,
}

/// Accumulates samples, merging identical {process, thread, stack}.
pub struct ProfileBuilder {
    profile: Profile,
    /// What one drained unit is worth in the non-count sample types: the period (CPU
    /// samples), or 1 (off-CPU values are nanoseconds already).
    scale: i64,
    index: HashMap<Key, usize>,
}

impl ProfileBuilder {
    /// A CPU profile sampled at `frequency_hz`: values `samples/count` and `cpu/nanoseconds`.
    pub fn cpu(frequency_hz: u64, start: SystemTime) -> Self {
        let period = 1_000_000_000 / frequency_hz.max(1) as i64;
        ProfileBuilder::new(Profile {
            kind: ProfileKind::Cpu,
            sample_types: vec![
                ValueType::new("samples", "count"),
                ValueType::new("cpu", "nanoseconds"),
            ],
            period_type: Some(ValueType::new("cpu", "nanoseconds")),
            period,
            start,
            duration: Duration::ZERO,
            samples: Vec::new(),
        })
    }

    /// An off-CPU profile: value `off_cpu/nanoseconds`, the time threads spent blocked.
    /// It has no period type: its values are measured, not sampled, and Pyroscope files
    /// `off_cpu/nanoseconds` without one as the `off_cpu` type other senders use.
    pub fn off_cpu(start: SystemTime) -> Self {
        ProfileBuilder::new(Profile {
            kind: ProfileKind::OffCpu,
            sample_types: vec![ValueType::new("off_cpu", "nanoseconds")],
            period_type: None,
            period: 0,
            start,
            duration: Duration::ZERO,
            samples: Vec::new(),
        })
    }

    /// A probe profile: values `probe_hits/count`, the hits of probe points by the stacks
    /// that hit them (each probe's stacks under a root frame naming it), and
    /// `probe_time/nanoseconds`, the time probed functions' calls took (`+stacks`; 0 for
    /// other probes). Its period type `probe_hits/count` (period 1) is what names it where
    /// the type is not a known one: Pyroscope refuses a profile without a name.
    pub fn probe(start: SystemTime) -> Self {
        ProfileBuilder::new(Profile {
            kind: ProfileKind::Probe,
            sample_types: vec![
                ValueType::new("probe_hits", "count"),
                ValueType::new("probe_time", "nanoseconds"),
            ],
            period_type: Some(ValueType::new("probe_hits", "count")),
            period: 1,
            start,
            duration: Duration::ZERO,
            samples: Vec::new(),
        })
    }

    /// An empty profile of `kind` from `start`; `frequency_hz` is the CPU sampling rate.
    pub fn of_kind(kind: ProfileKind, frequency_hz: u64, start: SystemTime) -> Self {
        match kind {
            ProfileKind::Cpu => Self::cpu(frequency_hz, start),
            ProfileKind::OffCpu => Self::off_cpu(start),
            ProfileKind::Probe => Self::probe(start),
        }
    }

    /// A builder around an empty profile with the given metadata.
    pub fn new(profile: Profile) -> Self {
        let scale = if profile.period_type.is_some() {
            profile.period.max(1)
        } else {
            1
        };
        ProfileBuilder {
            profile,
            scale,
            index: HashMap::new(),
        }
    }

    /// The period of one sample, in the period type's unit (0 without one).
    pub fn period(&self) -> i64 {
        self.profile.period
    }

    /// An empty builder for the same kind of profile, starting at `start`.
    pub fn fresh(&self, start: SystemTime) -> ProfileBuilder {
        ProfileBuilder::new(Profile {
            start,
            duration: Duration::ZERO,
            samples: Vec::new(),
            ..self.profile.clone_empty()
        })
    }

    /// An empty builder with `profile`'s kind, types and start: what spans of it merge into.
    pub fn empty_like(profile: &Profile) -> ProfileBuilder {
        ProfileBuilder::new(profile.clone_empty())
    }

    /// Adds every sample of `other` (a profile of the same kind).
    pub fn merge(&mut self, other: &Profile) {
        for s in &other.samples {
            self.add(
                s.pid,
                &s.process_name,
                s.tid,
                &s.thread_name,
                &s.stack,
                &s.values,
            );
        }
    }

    /// Adds values (one per sample type) for a thread's stack.
    pub fn add(
        &mut self,
        pid: u32,
        process_name: &Arc<str>,
        tid: u32,
        thread_name: &Arc<str>,
        stack: &Stack,
        values: &[i64],
    ) {
        let key = Key {
            pid,
            tid,
            thread_name: thread_name.clone(),
            stack: stack.clone(),
        };
        let samples = &mut self.profile.samples;
        let i = *self.index.entry(key).or_insert_with(|| {
            samples.push(Sample {
                pid,
                process_name: process_name.clone(),
                tid,
                thread_name: thread_name.clone(),
                stack: stack.clone(),
                values: vec![0; values.len()],
            });
            samples.len() - 1
        });
        for (total, v) in samples[i].values.iter_mut().zip(values) {
            *total += v;
        }
    }

    /// Adds `n` drained units for a thread's stack: each `count` sample type gets `n`, every
    /// other type `n × period` (CPU: samples and nanoseconds; off-CPU: `n` nanoseconds).
    pub fn add_periods(
        &mut self,
        pid: u32,
        process_name: &Arc<str>,
        tid: u32,
        thread_name: &Arc<str>,
        stack: &Stack,
        n: u64,
    ) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let values: Vec<i64> = self
            .profile
            .sample_types
            .iter()
            .map(|t| {
                if t.unit == "count" {
                    n
                } else {
                    n.saturating_mul(self.scale)
                }
            })
            .collect();
        self.add(pid, process_name, tid, thread_name, stack, &values);
    }

    /// Number of unique {process, thread, stack} so far.
    pub fn len(&self) -> usize {
        self.profile.samples.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.profile.samples.is_empty()
    }

    /// The profile, covering `start` until `end`.
    pub fn finish(mut self, end: SystemTime) -> Profile {
        self.profile.duration = end.duration_since(self.profile.start).unwrap_or_default();
        self.profile
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_become_values_per_sample_type() {
        let stack: Stack = Arc::from(Vec::new());
        let name: Arc<str> = Arc::from("p");
        let mut cpu = ProfileBuilder::cpu(100, UNIX_EPOCH);
        cpu.add_periods(1, &name, 1, &name, &stack, 3);
        cpu.add_periods(1, &name, 1, &name, &stack, 2);
        let p = cpu.finish(UNIX_EPOCH);
        assert_eq!(p.samples.len(), 1);
        assert_eq!(p.samples[0].values, [5, 5 * 10_000_000]);

        let mut off = ProfileBuilder::off_cpu(UNIX_EPOCH);
        off.add_periods(1, &name, 1, &name, &stack, 1_500);
        let p = off.finish(UNIX_EPOCH + Duration::from_secs(2));
        assert_eq!(p.samples[0].values, [1_500]);
        assert_eq!((p.sample_types[0].kind.as_str(), p.period), ("off_cpu", 0));
        assert_eq!(p.period_type, None, "measured, not sampled");
        assert_eq!(p.duration, Duration::from_secs(2));

        // A span merged into a whole recording adds up.
        let mut whole = ProfileBuilder::cpu(100, UNIX_EPOCH);
        let mut span = whole.fresh(UNIX_EPOCH);
        span.add_periods(1, &name, 1, &name, &stack, 2);
        whole.merge(&span.finish(UNIX_EPOCH));
        whole.add_periods(1, &name, 1, &name, &stack, 1);
        let p = whole.finish(UNIX_EPOCH);
        assert_eq!(p.samples[0].values, [3, 3 * 10_000_000]);
    }
}
