//! emberprof's own health reaches the collector every agent interval, not only at exit.

use std::time::Duration;

use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use crate::collector::TestCollector;
use crate::support::{bpf_test, spawn_until, terminate, Workload};

/// `emberprof.cpu.samples` of each metrics request that has it, in order of arrival.
fn samples_counts(collector: &TestCollector) -> Vec<i64> {
    collector
        .received()
        .metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .filter(|m| m.name == "emberprof.cpu.samples")
        .filter_map(|m| match &m.data {
            Some(metric::Data::Sum(s)) if s.is_monotonic => s.data_points.first(),
            _ => None,
        })
        .filter_map(|p| match p.value {
            Some(number_data_point::Value::AsInt(n)) => Some(n),
            _ => None,
        })
        .collect()
}

crate::harness::tests![the_agent_sends_its_health_every_interval];

fn the_agent_sends_its_health_every_interval() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let (mut agent, _stderr, log) = spawn_until(
        &[
            "agent",
            "--pid",
            &pid,
            "--interval",
            "1s",
            "--otlp-endpoint",
            &collector.endpoint(),
        ],
        "agent running",
    );
    // Three intervals' health while the agent runs, each a cumulative total.
    let arrived = collector.wait_for(Duration::from_secs(15), |r| {
        r.metrics
            .iter()
            .filter(|m| format!("{m:?}").contains("emberprof.cpu.samples"))
            .count()
            >= 3
    });
    let counts = samples_counts(&collector);
    terminate(&mut agent, &log);
    assert!(
        arrived,
        "health of only {} intervals: {counts:?}",
        counts.len()
    );
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]) && counts.last() > counts.first(),
        "totals since start grow: {counts:?}"
    );
}
