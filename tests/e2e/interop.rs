//! What Pyroscope and the Collector make of real recordings: every request the test
//! collector receives is held to Pyroscope's ingest rules (tests/support/collector.rs), and
//! these tests add what a whole host brings: stacks that cannot be walked, processes gone
//! before they were read, kernel threads, and recordings longer than one span.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};

use crate::collector::TestCollector;
use crate::support::{bpf_test, spawn_until, Workload, EMBERPROF};

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    }
}

/// Every resource's attributes, as (key, value) text.
fn resources(req: &ExportProfilesServiceRequest) -> Vec<HashMap<String, String>> {
    req.resource_profiles
        .iter()
        .map(|rp| {
            rp.resource
                .iter()
                .flat_map(|r| &r.attributes)
                .map(|kv| (kv.key.clone(), text(kv)))
                .collect()
        })
        .collect()
}

crate::harness::tests![
    a_whole_host_recording_arrives_whole_with_named_bounded_services,
    a_long_recording_is_sent_span_by_span_while_it_records,
];

fn a_whole_host_recording_arrives_whole_with_named_bounded_services() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    // A stack that ends in an address no mapping holds, and processes that live 3 ms each:
    // many are gone before anything could be read of them.
    let unwalkable = Workload::start(&["unwalkable"]);
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-host.pb.gz");
    let child = std::process::Command::new(EMBERPROF)
        .args([
            "record",
            "--cpu",
            "--off-cpu",
            "--histograms",
            "--duration",
            "3",
        ])
        .args([
            "--frequency",
            "499",
            "--otlp-endpoint",
            &collector.endpoint(),
        ])
        .arg("--output")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting emberprof");
    std::thread::sleep(Duration::from_millis(800));
    let mut short = Workload::start_paused(&["short-many", "150", "3"]);
    short.go_and_wait();
    let out = child.wait_with_output().expect("waiting for emberprof");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    drop(unwalkable);

    // received() fails the test if Pyroscope would drop or refuse anything.
    let received = collector.received();
    assert!(!received.profiles.is_empty(), "{log}");
    let mut services = BTreeSet::new();
    let mut executables = BTreeSet::new();
    let mut types = BTreeSet::new();
    let mut unknown_frames = 0;
    for (req, report) in received.profiles.iter().zip(&received.pyroscope) {
        for s in &report.series {
            types.insert(s.profile_type.clone());
            assert_eq!(s.samples_kept, s.samples_sent, "{s:?}");
        }
        let dict = req.dictionary.as_ref().unwrap();
        for l in &dict.location_table[1..] {
            unknown_frames += l
                .lines
                .iter()
                .filter(|line| {
                    let f = &dict.function_table[line.function_index as usize];
                    dict.string_table[f.name_strindex as usize] == "[unknown]"
                })
                .count();
        }
        for attrs in resources(req) {
            let service = attrs["service.name"].clone();
            assert!(
                !service.chars().all(|c| c.is_ascii_digit()),
                "a PID as service.name: {attrs:?}"
            );
            assert!(
                !service.contains('/'),
                "a kernel thread instance: {attrs:?}"
            );
            for key in [
                "process.pid",
                "process.command_line",
                "process.executable.path",
            ] {
                assert!(
                    !attrs.contains_key(key),
                    "{key} is not a default: {attrs:?}"
                );
            }
            if service != "kernel" {
                executables.insert(attrs["process.executable.name"].clone());
            }
            services.insert(service);
        }
    }
    assert!(
        unknown_frames > 0,
        "the unwalkable stack ends in a named [unknown] frame"
    );
    assert!(
        services.contains("epworkload"),
        "the workloads are named: {services:?}"
    );
    assert!(
        services.len() <= executables.len() + 3,
        "{} services for {} executables: {services:?}",
        services.len(),
        executables.len()
    );
    assert!(
        types.contains("process_cpu:cpu:nanoseconds:cpu:nanoseconds"),
        "{types:?}"
    );
    assert!(types.contains("off_cpu:off_cpu:nanoseconds::"), "{types:?}");
}

fn a_long_recording_is_sent_span_by_span_while_it_records() {
    let Some(_serial) = bpf_test() else { return };
    let collector = TestCollector::start();
    let w = Workload::start(&["cpu-split"]);
    let pid = w.pid().to_string();
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("interop-spans.pb.gz");
    let endpoint = collector.endpoint();
    let file_arg = file.to_string_lossy().into_owned();
    let (mut child, mut stderr, mut log) = spawn_until(
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "12",
            "--export-interval",
            "5s",
            "--otlp-endpoint",
            &endpoint,
            "--output",
            &file_arg,
        ],
        "recording",
    );
    let started = std::time::SystemTime::now();
    std::io::Read::read_to_string(&mut stderr, &mut log).expect("reading emberprof's log");
    let status = child.wait().expect("waiting for emberprof");
    let ended = Instant::now();
    assert!(status.success(), "{log}");
    drop(w);

    let received = collector.received();
    assert_eq!(received.profiles.len(), 3, "three spans: {log}");
    for arrival in &received.profile_arrivals[..2] {
        assert!(
            ended.duration_since(*arrival) >= Duration::from_secs(1),
            "the first two spans arrive while recording"
        );
    }
    let spans: Vec<(u64, u64)> = received
        .profiles
        .iter()
        .map(|r| {
            let p = &r.resource_profiles[0].scope_profiles[0].profiles[0];
            (p.time_unix_nano, p.duration_nano)
        })
        .collect();
    for pair in spans.windows(2) {
        assert_eq!(
            pair[0].0 + pair[0].1,
            pair[1].0,
            "contiguous spans: {spans:?}"
        );
    }
    let covered: u64 = spans.iter().map(|s| s.1).sum();
    assert!(
        (11_500_000_000..13_500_000_000).contains(&covered),
        "{covered} ns covered: {spans:?}"
    );
    let first = std::time::UNIX_EPOCH + Duration::from_nanos(spans[0].0);
    let skew = first
        .duration_since(started)
        .unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(2),
        "the first span starts at the start: {skew:?}"
    );
    // The file still covers the whole recording.
    let profile = crate::support::decode_gz_pprof(&std::fs::read(&file).unwrap());
    assert!(
        profile.duration_nanos >= 11_500_000_000,
        "{}",
        profile.duration_nanos
    );
}
