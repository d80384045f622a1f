//! OTLP export of real recordings to an in-test gRPC collector.

use std::collections::HashMap;
use std::time::Duration;

use emberprof_exporters::otlp::validate::{sample_functions, validate_profiles};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use crate::collector::{free_port, TestCollector};
use crate::support::{
    assert_cpu_split, bpf_test, parse_ns, read_histograms, record, spawn_until, Workload,
    SPLIT_FUNCTIONS,
};

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| text(&kv.value))
}

crate::harness::tests![
    cpu_profile_reaches_the_collector_with_names_proportions_and_attributes,
    syscall_histogram_points_carry_the_kernel_buckets_exactly,
    a_collector_that_comes_up_late_still_receives_the_recording,
];

fn cpu_profile_reaches_the_collector_with_names_proportions_and_attributes() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let w = Workload::start_with_env(&["cpu-split"], &[("OTEL_SERVICE_NAME", "checkout")]);
    let pid = w.pid();
    record(
        "otlp.pb.gz",
        &[
            "--pid",
            &pid.to_string(),
            "--duration",
            "3",
            "--otlp-endpoint",
            &collector.endpoint(),
            "--otlp-compression",
            "gzip",
            "--otlp-header",
            "x-scope-orgid=team-a",
            "--extra-attributes",
            "all",
        ],
    );
    drop(w);
    let received = collector.received();
    assert_eq!(received.profiles.len(), 1, "exactly one export request");
    let headers = &received.headers[0];
    assert!(
        headers.contains(&("x-scope-orgid".into(), "team-a".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("grpc-encoding".into(), "gzip".into())),
        "{headers:?}"
    );

    let req = &received.profiles[0];
    validate_profiles(req).unwrap();
    let dict = req.dictionary.as_ref().unwrap();
    assert_eq!(req.resource_profiles.len(), 1, "one process recorded");
    let rp = &req.resource_profiles[0];
    let res = &rp.resource.as_ref().unwrap().attributes;
    assert_eq!(attr(res, "service.name").as_deref(), Some("checkout"));
    assert_eq!(attr(res, "process.pid"), Some(pid.to_string()));
    assert_eq!(
        attr(res, "process.executable.name").as_deref(),
        Some("epworkload")
    );
    assert!(attr(res, "process.executable.path")
        .unwrap()
        .ends_with("/epworkload"));
    assert!(attr(res, "process.command_line")
        .unwrap()
        .ends_with("epworkload cpu-split"));
    assert!(attr(res, "host.name").is_some(), "{res:?}");

    let profile = &rp.scope_profiles[0].profiles[0];
    let string = |i: i32| dict.string_table[i as usize].as_str();
    let st = profile.sample_type.unwrap();
    assert_eq!(
        (string(st.type_strindex), string(st.unit_strindex)),
        ("samples", "count")
    );
    let pt = profile.period_type.unwrap();
    assert_eq!(
        (string(pt.type_strindex), string(pt.unit_strindex)),
        ("cpu", "nanoseconds")
    );
    assert_eq!(profile.period, 1_000_000_000 / 99);
    assert!(
        profile.duration_nano >= 2_900_000_000,
        "{}",
        profile.duration_nano
    );

    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut total = 0;
    for s in &profile.samples {
        total += s.values[0] as u64;
        let keys: Vec<&str> = s
            .attribute_indices
            .iter()
            .map(|&i| string(dict.attribute_table[i as usize].key_strindex))
            .collect();
        assert_eq!(keys, ["thread.id", "thread.name"]);
        // The leaf-most burn function, as for the folded output.
        if let Some(f) = sample_functions(dict, s)
            .into_iter()
            .find(|n| SPLIT_FUNCTIONS.contains(&n.as_str()))
        {
            *counts.entry(f).or_default() += s.values[0] as u64;
        }
    }
    assert_cpu_split(&counts, total);
    // The workload's own mapping carries its GNU build ID.
    let has_build_id = dict.mapping_table.iter().any(|m| {
        string(m.filename_strindex).ends_with("/epworkload")
            && m.attribute_indices.iter().any(|&i| {
                string(dict.attribute_table[i as usize].key_strindex)
                    == "process.executable.build_id.gnu"
            })
    });
    assert!(has_build_id, "no build ID on the workload's mapping");

    // emberprof's own health, through the same pipeline, to the same collector. It is read
    // when the span is handed over, before its batches are sent: the export counters lag
    // one span behind, as any exporter's self-metrics do.
    let health = |name: &str, attr_value: Option<&str>| -> Option<i64> {
        received.metrics.iter().find_map(|r| {
            r.resource_metrics.iter().find_map(|rm| {
                rm.scope_metrics
                    .iter()
                    .flat_map(|sm| &sm.metrics)
                    .find_map(|m| {
                        if m.name != name {
                            return None;
                        }
                        let Some(metric::Data::Sum(sum)) = &m.data else {
                            return None;
                        };
                        sum.data_points
                            .iter()
                            .find(|p| {
                                attr_value.is_none_or(|v| {
                                    p.attributes.iter().any(|kv| text(&kv.value) == v)
                                })
                            })
                            .and_then(|p| match p.value {
                                Some(number_data_point::Value::AsInt(i)) => Some(i),
                                _ => None,
                            })
                    })
            })
        })
    };
    let samples = health("emberprof.cpu.samples", None).expect("a samples counter");
    assert!(samples as u64 >= total, "{samples} < {total}");
    for result in ["sent", "retried"] {
        assert!(
            health("emberprof.export.batches", Some(result)).is_some(),
            "{result}"
        );
    }
    assert_eq!(health("emberprof.export.batches", Some("failed")), Some(0));
    assert_eq!(health("emberprof.export.batches", Some("dropped")), Some(0));
    assert_eq!(health("emberprof.cpu.samples.dropped", None), Some(0));
    let fill = received
        .metrics
        .iter()
        .flat_map(|r| &r.resource_metrics)
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .find(|m| m.name == "emberprof.map.fill")
        .and_then(|m| match &m.data {
            Some(metric::Data::Gauge(g)) => g.data_points.first().and_then(|p| match p.value {
                Some(number_data_point::Value::AsDouble(x)) => Some(x),
                _ => None,
            }),
            _ => None,
        })
        .expect("a map fill gauge");
    // A handful of stacks in a 16384-entry map.
    assert!(fill > 0.0 && fill < 0.01, "{fill}");
}

fn syscall_histogram_points_carry_the_kernel_buckets_exactly() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let n = 20u64;
    let mut w = Workload::start_paused(&["sleep", &n.to_string(), "10"]);
    let pid = w.pid().to_string();
    let rec = crate::support::record_around(
        "otlp-hist.txt",
        &[
            "--syscall-latency",
            "--pid",
            &pid,
            "--otlp-endpoint",
            &collector.endpoint(),
        ],
        || w.go_and_wait(),
    );
    let received = collector.received();
    // One request of histograms; emberprof's health metrics come in another.
    let with_histograms: Vec<_> = received
        .metrics
        .iter()
        .filter(|r| {
            r.resource_metrics[0].scope_metrics[0]
                .metrics
                .iter()
                .any(|m| m.name == "emberprof.syscall.latency")
        })
        .collect();
    assert_eq!(with_histograms.len(), 1);
    let metrics = &with_histograms[0].resource_metrics[0].scope_metrics[0].metrics;
    let syscalls = metrics
        .iter()
        .find(|m| m.name == "emberprof.syscall.latency")
        .expect("a syscall latency metric");
    assert_eq!(syscalls.unit, "ns");
    let Some(metric::Data::ExponentialHistogram(eh)) = &syscalls.data else {
        panic!("not an exponential histogram");
    };
    let point = eh
        .data_points
        .iter()
        .find(|p| attr(&p.attributes, "syscall.name").as_deref() == Some("nanosleep"))
        .expect("a nanosleep data point");
    assert_eq!(point.scale, 0);
    assert_eq!(point.count, n);
    // 10 ms is in bucket 23, (2^23, 2^24] ns: the lowest bucket any sleep can land in, and
    // where all but a sleep delayed 7 ms or more by a vCPU stall land.
    let buckets = point.positive.as_ref().unwrap();
    assert_eq!(buckets.offset, 23, "{buckets:?}");
    assert!(buckets.bucket_counts[0] >= n - 2, "{buckets:?}");
    assert_eq!(buckets.bucket_counts.iter().sum::<u64>(), n, "{buckets:?}");
    assert!(attr(&point.attributes, "cgroup.path").is_some());
    for name in [
        "emberprof.sched.runqueue.latency",
        "emberprof.sched.offcpu.duration",
    ] {
        assert!(metrics.iter().any(|m| m.name == name), "no {name}");
    }

    // Every bucket of the off-CPU histogram in OTLP equals the row of the text report of the
    // same run: row (lo, hi] with hi = 2^(i+1) ns is OTLP bucket i.
    let report = read_histograms(&rec.file);
    let offcpu = metrics
        .iter()
        .find(|m| m.name == "emberprof.sched.offcpu.duration")
        .unwrap();
    let Some(metric::Data::ExponentialHistogram(eh)) = &offcpu.data else {
        panic!("not an exponential histogram");
    };
    for point in &eh.data_points {
        let path = attr(&point.attributes, "cgroup.path").expect("a cgroup path");
        let title = format!("off-CPU duration, cgroup {path}");
        let section = report
            .iter()
            .find(|s| s.title == title)
            .unwrap_or_else(|| panic!("no {title:?} in the report"));
        assert_eq!(section.count, point.count, "{title}");
        let buckets = point.positive.as_ref().unwrap();
        let mut rows = 0;
        for (lo, hi, count) in &section.rows {
            if lo == "0" {
                assert_eq!(*count, point.zero_count);
                continue;
            }
            let index = parse_ns(hi).log2().round() as i32 - 1;
            let otlp = buckets
                .bucket_counts
                .get((index - buckets.offset) as usize)
                .copied()
                .unwrap_or(0);
            assert_eq!(otlp, *count, "{title}: row {lo} -> {hi}");
            rows += 1;
        }
        assert_eq!(rows, buckets.bucket_counts.len(), "{title}");
    }
}

fn a_collector_that_comes_up_late_still_receives_the_recording() {
    let Some(_serial) = bpf_test() else { return };
    let port = free_port();
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("late.pb.gz");
    let file_arg = file.to_string_lossy().into_owned();
    let endpoint = format!("http://127.0.0.1:{port}");
    // Something to record: an idle host gives no samples, and nothing is sent then.
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    // The collector comes up only once emberprof has failed to reach it.
    let (mut child, mut stderr, mut log) = spawn_until(
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "1",
            "--otlp-endpoint",
            &endpoint,
            "--output",
            &file_arg,
        ],
        "export failed; retrying",
    );
    let collector = TestCollector::start_on(port);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).expect("reading emberprof's log");
    log.push_str(&rest);
    let status = child.wait().expect("waiting for emberprof");
    assert!(status.success(), "{log}");
    assert!(collector.wait_for(Duration::from_secs(5), |r| r.profiles.len() == 1));
    let summary = log
        .lines()
        .find(|l| l.starts_with("emberprof: OTLP "))
        .expect("an OTLP summary line");
    // The profiles and emberprof's health.
    assert!(summary.contains(": 2 batches sent"), "{summary}");
    assert!(!summary.contains(" 0 retries"), "{summary}");
}
