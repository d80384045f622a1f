//! `record --histograms`: the latency histograms and event counts (probe points, TCP),
//! accumulated across drains by series (kind + cgroup, disk, syscall, probe or port), named
//! while their cgroups still exist, printed at the end.

mod events;
mod series;

use emberprof_exporters::histogram_text;
use emberprof_exporters::otlp::metrics::{CounterPoint, HistogramPoint};
use emberprof_model::{AttrValue, Attributes, Log2Histogram};
use emberprof_probes::abi::{BlockOp, HistKind};
use emberprof_probes::{syscalls, EventSeries, HistSeries, HistogramDrain};

use crate::metadata::cgroups::CgroupNames;
use crate::metadata::disks::DiskNames;
use crate::probe_points::spec::ProbeSpec;
use series::SeriesTable;

/// Series printed per kind, busiest first; the rest are summarised in one line.
const MAX_SHOWN: usize = 20;

/// What is recorded, so what is reported (an empty kind is shown only if recorded).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// Run queue, off-CPU, block I/O.
    pub core: bool,
    pub syscalls: bool,
    /// Each probe, by slot.
    pub probes: Vec<ProbeSpec>,
    pub tcp: bool,
}

impl Recorded {
    fn shows(&self, kind: HistKind) -> bool {
        match kind {
            HistKind::RunQueue | HistKind::OffCpu | HistKind::BlockIo => self.core,
            HistKind::Syscall => self.syscalls,
            HistKind::Probe => self.probes.iter().any(ProbeSpec::is_function),
            HistKind::TcpConnect => self.tcp,
        }
    }

    /// Probe `slot`'s spec as given (`uprobe:/usr/bin/app:handle`), the name of its series.
    fn probe(&self, slot: u32) -> String {
        self.probe_spec(slot)
            .map_or_else(|| format!("probe {slot}"), |p| p.text.clone())
    }

    fn probe_spec(&self, slot: u32) -> Option<&ProbeSpec> {
        self.probes.get(slot as usize)
    }
}

/// Everything drained from the histogram probes so far, by series.
pub struct Histograms {
    recorded: Recorded,
    series: SeriesTable<HistSeries, Log2Histogram>,
    events: SeriesTable<EventSeries, u64>,
    /// Keys with a kind this build does not know (a kernel/user-space mismatch).
    unknown_kinds: u64,
    cgroups: CgroupNames,
    disks: DiskNames,
}

impl Histograms {
    /// Empty; `recorded` says which kinds are recorded (and reported).
    pub fn new(recorded: Recorded) -> Self {
        Histograms {
            recorded,
            series: SeriesTable::default(),
            events: SeriesTable::default(),
            unknown_kinds: 0,
            cgroups: CgroupNames::new(),
            disks: DiskNames::default(),
        }
    }

    /// Adds one drain of the probes.
    pub fn add(&mut self, drain: HistogramDrain) {
        // Name cgroups now: a container's cgroup may be gone by the end of the recording.
        self.cgroups.learn(
            drain
                .series
                .iter()
                .filter_map(|(series, _)| series.cgroup())
                .chain(
                    drain
                        .events
                        .iter()
                        .map(|(e, _)| e.cgroup())
                        .filter(|c| *c != 0),
                ),
        );
        for (series, h) in drain.series {
            self.series.merge(series, &h);
        }
        for (series, n) in drain.events {
            self.events.merge(series, &n);
        }
        self.unknown_kinds += drain.unknown_kind;
    }

    /// Closes an export interval: with delta export every series starts again from zero;
    /// with cumulative export the series of cgroups that are gone are let go (see
    /// `SeriesTable::prune`), and so are the cgroups' names.
    pub fn end_interval(&mut self, delta: bool) {
        if delta {
            self.series.clear();
            self.events.clear();
            // Nothing is kept past an export, so no name needs to outlive its cgroup.
            self.cgroups.release_all();
            return;
        }
        let cgroups = &self.cgroups;
        let mut dropped = self.series.prune(|id| cgroups.is_gone(id));
        dropped.extend(self.events.prune(|id| cgroups.is_gone(id)));
        dropped.retain(|id| !self.series.refers_to(*id) && !self.events.refers_to(*id));
        if !dropped.is_empty() {
            tracing::debug!(
                cgroups = dropped.len(),
                "histogram series of removed cgroups let go"
            );
        }
        for id in dropped {
            self.cgroups.forget(id);
        }
    }

    /// Every series as an OTLP exponential-histogram point, totals since the start.
    pub fn points(&mut self) -> Vec<HistogramPoint> {
        let mut points = Vec::new();
        for (series, h) in self.series.iter() {
            let (metric, description) = metric_of(series.kind());
            points.push(HistogramPoint {
                metric: metric.to_string(),
                description: description.to_string(),
                attributes: attributes(*series, &self.cgroups, &mut self.disks, &self.recorded),
                histogram: h.clone(),
            });
        }
        points
    }

    /// Every event count as an OTLP sum point, totals since the start.
    pub fn counter_points(&self) -> Vec<CounterPoint> {
        self.events
            .iter()
            .map(|(series, n)| {
                let m = events::metric(*series);
                let mut attrs = events::attributes(*series, &self.recorded);
                if series.cgroup() != 0 {
                    cgroup_attributes(series.cgroup(), &self.cgroups, &mut attrs);
                }
                CounterPoint {
                    metric: m.name.to_string(),
                    description: m.description.to_string(),
                    unit: m.unit.to_string(),
                    attributes: attrs,
                    value: *n,
                }
            })
            .collect()
    }

    /// The text report: every kind recorded, its busiest series, and the probes' counts
    /// (`recorded`, `overflowed`, `lost`).
    pub fn report(&mut self, counts: &[(&str, u64)]) -> String {
        let mut out = String::new();
        for kind in HistKind::ALL {
            if !self.recorded.shows(kind) {
                continue;
            }
            let mut series: Vec<(HistSeries, &Log2Histogram)> = self
                .series
                .iter()
                .filter(|(s, _)| s.kind() == kind)
                .map(|(s, h)| (*s, h))
                .collect();
            series.sort_by(|a, b| b.1.count().cmp(&a.1.count()).then(a.0.cmp(&b.0)));
            if series.is_empty() {
                out.push_str(&histogram_text::render(title(kind), &Log2Histogram::new()));
                out.push('\n');
                continue;
            }
            for (target, h) in series.iter().take(MAX_SHOWN) {
                let heading = format!(
                    "{}, {}",
                    title(kind),
                    label(*target, &self.cgroups, &mut self.disks, &self.recorded)
                );
                out.push_str(&histogram_text::render(&heading, h));
                out.push('\n');
            }
            if series.len() > MAX_SHOWN {
                let rest = &series[MAX_SHOWN..];
                let events: u64 = rest.iter().map(|(_, h)| h.count()).sum();
                out.push_str(&format!(
                    "{}: {} more histograms not shown ({events} events)\n\n",
                    title(kind),
                    rest.len()
                ));
            }
        }
        out.push_str(&events::report(&self.events, &self.recorded, |id| {
            self.cgroups.name(id)
        }));
        let count = |name: &str| {
            counts
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(0, |(_, v)| *v)
        };
        out.push_str(&format!(
            "histograms: {} durations recorded, {} beyond the key cap (in the \"other\" histograms), {} lost (waits that could not be tracked), {} of unknown kind\n",
            count("recorded"),
            count("overflowed"),
            count("lost"),
            self.unknown_kinds
        ));
        out
    }
}

fn label(
    series: HistSeries,
    cgroups: &CgroupNames,
    disks: &mut DiskNames,
    recorded: &Recorded,
) -> String {
    match series {
        HistSeries::RunQueue { cgroup } | HistSeries::OffCpu { cgroup } => {
            format!("cgroup {}", cgroups.name(cgroup))
        }
        HistSeries::BlockIo { major, minor, op } => {
            let op = match op {
                BlockOp::Read => "read",
                BlockOp::Write => "write",
                BlockOp::Other => "other",
            };
            format!("disk {} {op}", disks.name(major, minor))
        }
        HistSeries::Syscall { nr, cgroup } => {
            let name = syscalls::name(nr).map_or_else(|| format!("syscall {nr}"), str::to_string);
            format!("{name}, cgroup {}", cgroups.name(cgroup))
        }
        HistSeries::Probe { slot, cgroup } => {
            format!("{}, cgroup {}", recorded.probe(slot), cgroups.name(cgroup))
        }
        HistSeries::TcpConnect { port, cgroup } => {
            format!("port {port}, cgroup {}", cgroups.name(cgroup))
        }
        HistSeries::Overflow(_) => "other (beyond the key cap)".to_string(),
    }
}

fn direction(op: BlockOp) -> &'static str {
    match op {
        BlockOp::Read => "read",
        BlockOp::Write => "write",
        BlockOp::Other => "other",
    }
}

fn metric_of(kind: HistKind) -> (&'static str, &'static str) {
    match kind {
        HistKind::RunQueue => (
            "emberprof.sched.runqueue.latency",
            "Time threads waited runnable before running (wakeup or preemption to switch-in)",
        ),
        HistKind::OffCpu => (
            "emberprof.sched.offcpu.duration",
            "Time threads spent blocked (voluntary switch-out to switch-in)",
        ),
        HistKind::BlockIo => (
            "emberprof.block.io.latency",
            "Block request latency, issue to completion",
        ),
        HistKind::Syscall => (
            "emberprof.syscall.latency",
            "Syscall latency, entry to exit",
        ),
        HistKind::Probe => (
            "emberprof.probe.duration",
            "Duration of calls of a probed function (--probe uprobe:), entry to return",
        ),
        HistKind::TcpConnect => (
            "emberprof.tcp.connect.duration",
            "TCP connection establishment, SYN sent to ESTABLISHED",
        ),
    }
}

pub(crate) fn cgroup_attributes(id: u64, cgroups: &CgroupNames, attrs: &mut Attributes) {
    let path = cgroups.name(id);
    if let Some(c) = crate::kubernetes::parse_path(&path).container_id {
        attrs.push(("container.id".into(), AttrValue::Str(c)));
    }
    if let Some(k) = crate::kubernetes::get() {
        attrs.extend(k.cgroup_attributes(&path));
    }
    attrs.push(("cgroup.path".into(), AttrValue::Str(path)));
    // A recreated cgroup (restarted unit, new pod) keeps its path but not its id: the id
    // keeps the two series apart.
    attrs.push((
        "cgroup.id".into(),
        AttrValue::Int(i64::try_from(id).unwrap_or(i64::MAX)),
    ));
}

fn attributes(
    series: HistSeries,
    cgroups: &CgroupNames,
    disks: &mut DiskNames,
    recorded: &Recorded,
) -> Attributes {
    let mut attrs = Attributes::new();
    match series {
        HistSeries::RunQueue { cgroup } | HistSeries::OffCpu { cgroup } => {
            cgroup_attributes(cgroup, cgroups, &mut attrs)
        }
        HistSeries::BlockIo { major, minor, op } => {
            attrs.push((
                "disk.device".into(),
                AttrValue::Str(disks.name(major, minor)),
            ));
            attrs.push((
                "disk.io.direction".into(),
                AttrValue::Str(direction(op).into()),
            ));
        }
        HistSeries::Syscall { nr, cgroup } => {
            let name = syscalls::name(nr).map_or_else(|| nr.to_string(), str::to_string);
            attrs.push(("syscall.name".into(), AttrValue::Str(name)));
            cgroup_attributes(cgroup, cgroups, &mut attrs);
        }
        HistSeries::Probe { slot, cgroup } => {
            attrs.extend(events::probe_attributes(slot, recorded));
            cgroup_attributes(cgroup, cgroups, &mut attrs);
        }
        HistSeries::TcpConnect { port, cgroup } => {
            attrs.extend(events::port_attributes(port));
            cgroup_attributes(cgroup, cgroups, &mut attrs);
        }
        HistSeries::Overflow(_) => {
            attrs.push(("emberprof.overflow".into(), AttrValue::Str("true".into())));
        }
    }
    attrs
}

fn title(kind: HistKind) -> &'static str {
    match kind {
        HistKind::RunQueue => "run-queue latency",
        HistKind::OffCpu => "off-CPU duration",
        HistKind::BlockIo => "block I/O latency",
        HistKind::Syscall => "syscall latency",
        HistKind::Probe => "probe duration",
        HistKind::TcpConnect => "TCP connect latency",
    }
}
