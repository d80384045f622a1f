//! Event counts beside the histograms: probe hits and TCP retransmits and resets, as OTLP
//! sums and as lines of the text report.

use std::fmt::Write;

use emberprof_model::{AttrValue, Attributes};
use emberprof_probes::EventSeries;

use super::series::SeriesTable;
use super::Recorded;
use crate::probe_points::spec::ProbeSpec;

/// An event count's metric.
pub struct Metric {
    pub name: &'static str,
    pub description: &'static str,
    pub unit: &'static str,
}

/// The metric `series` is a data point of.
pub fn metric(series: EventSeries) -> Metric {
    match series {
        EventSeries::ProbeHits { .. } => Metric {
            name: "emberprof.probe.hits",
            description: "Times a probe point was hit (calls, for a function)",
            unit: "{hit}",
        },
        EventSeries::TcpRetransmits { .. } => Metric {
            name: "emberprof.tcp.retransmits",
            description: "TCP segments retransmitted",
            unit: "{segment}",
        },
        EventSeries::TcpResetsSent { .. } => Metric {
            name: "emberprof.tcp.resets.sent",
            description: "TCP resets sent",
            unit: "{reset}",
        },
        EventSeries::TcpResetsReceived { .. } => Metric {
            name: "emberprof.tcp.resets.received",
            description: "TCP resets received",
            unit: "{reset}",
        },
    }
}

/// A probe's attributes: its spec as given and what kind of point it is.
pub fn probe_attributes(slot: u32, recorded: &Recorded) -> Attributes {
    let kind = recorded
        .probe_spec(slot)
        .map_or("unknown", ProbeSpec::kind_name);
    vec![
        (
            "emberprof.probe".into(),
            AttrValue::Str(recorded.probe(slot)),
        ),
        ("emberprof.probe.type".into(), AttrValue::Str(kind.into())),
    ]
}

/// A TCP series' attributes (OpenTelemetry's network conventions); port 0 stands for any
/// port of the ephemeral range (a client's).
pub fn port_attributes(port: u16) -> Attributes {
    vec![
        ("network.transport".into(), AttrValue::Str("tcp".into())),
        ("network.peer.port".into(), AttrValue::Int(i64::from(port))),
    ]
}

fn local_port_attributes(port: u16, local: u16) -> Attributes {
    let mut attrs = port_attributes(port);
    attrs.push((
        "network.local.port".into(),
        AttrValue::Int(i64::from(local)),
    ));
    attrs
}

/// Attributes of an event series, the cgroup's aside.
pub fn attributes(series: EventSeries, recorded: &Recorded) -> Attributes {
    match series {
        EventSeries::ProbeHits { slot, .. } => probe_attributes(slot, recorded),
        EventSeries::TcpRetransmits { port, local, .. }
        | EventSeries::TcpResetsSent { port, local, .. }
        | EventSeries::TcpResetsReceived { port, local, .. } => local_port_attributes(port, local),
    }
}

fn title(series: EventSeries, recorded: &Recorded) -> String {
    match series {
        EventSeries::ProbeHits { slot, .. } => {
            let function = recorded
                .probe_spec(slot)
                .is_some_and(ProbeSpec::is_function);
            let what = if function { "calls" } else { "hits" };
            format!("probe {} {what}", recorded.probe(slot))
        }
        EventSeries::TcpRetransmits { port, local, .. } => {
            format!("TCP retransmits, {}", ports(port, local))
        }
        EventSeries::TcpResetsSent { port, local, .. } => {
            format!("TCP resets sent, {}", ports(port, local))
        }
        EventSeries::TcpResetsReceived { port, local, .. } => {
            format!("TCP resets received, {}", ports(port, local))
        }
    }
}

/// `port P, local port L`; 0 is any port of the ephemeral range (a client's), or a port
/// the kernel had already cleared (a socket torn down, as by a closing listener).
fn ports(port: u16, local: u16) -> String {
    let one = |p: u16| {
        if p == 0 {
            "0 (ephemeral)".to_string()
        } else {
            p.to_string()
        }
    };
    format!("port {}, local port {}", one(port), one(local))
}

/// The report's lines: every count, busiest first within probes and TCP, and a line for a
/// recorded source with nothing counted.
pub fn report(
    events: &SeriesTable<EventSeries, u64>,
    recorded: &Recorded,
    cgroup_name: impl Fn(u64) -> String,
) -> String {
    let mut out = String::new();
    let mut all: Vec<(EventSeries, u64)> = events.iter().map(|(s, n)| (*s, *n)).collect();
    all.sort_by(|a, b| {
        let tcp = |s: &EventSeries| !matches!(s, EventSeries::ProbeHits { .. });
        tcp(&a.0)
            .cmp(&tcp(&b.0))
            .then(b.1.cmp(&a.1))
            .then(a.0.cmp(&b.0))
    });
    for (slot, spec) in recorded.probes.iter().enumerate() {
        let hit = all.iter().any(
            |(s, _)| matches!(s, EventSeries::ProbeHits { slot: s, .. } if *s as usize == slot),
        );
        if !hit {
            let _ = writeln!(out, "probe {}: no hits", spec.text);
        }
    }
    if recorded.tcp
        && !all
            .iter()
            .any(|(s, _)| !matches!(s, EventSeries::ProbeHits { .. }))
    {
        let _ = writeln!(out, "TCP retransmits and resets: none");
    }
    for (series, n) in all {
        let cgroup = match series.cgroup() {
            0 => "none".to_string(),
            id => cgroup_name(id),
        };
        let _ = writeln!(out, "{}, cgroup {cgroup}: {n}", title(series, recorded));
    }
    if !out.is_empty() {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_points::spec::parse;

    #[test]
    fn probe_series_are_named_by_their_spec_and_kind() {
        let recorded = Recorded {
            probes: vec![
                parse("uprobe:/bin/app:handle").unwrap(),
                parse("usdt:/bin/app:p:n").unwrap(),
            ],
            ..Recorded::default()
        };
        let calls = EventSeries::ProbeHits { slot: 0, cgroup: 1 };
        let hits = EventSeries::ProbeHits { slot: 1, cgroup: 1 };
        assert_eq!(
            title(calls, &recorded),
            "probe uprobe:/bin/app:handle calls"
        );
        assert_eq!(title(hits, &recorded), "probe usdt:/bin/app:p:n hits");
        assert_eq!(
            attributes(hits, &recorded),
            vec![
                (
                    "emberprof.probe".into(),
                    AttrValue::Str("usdt:/bin/app:p:n".into())
                ),
                ("emberprof.probe.type".into(), AttrValue::Str("usdt".into())),
            ]
        );
        // A slot no spec names (a kernel/user-space mismatch) still has a name.
        let stray = EventSeries::ProbeHits { slot: 7, cgroup: 1 };
        assert_eq!(title(stray, &recorded), "probe probe 7 hits");
    }
}
