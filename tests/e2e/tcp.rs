//! `--tcp`: connection establishment latency, retransmits and resets, from tracepoints, on
//! traffic in a test network namespace where nftables drops the first SYN to one port.

use std::path::Path;
use std::process::Command;

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};

use crate::collector::TestCollector;
use crate::support::{bpf_test, otlp_metrics, parse_histograms, record_around, sections};

crate::harness::tests![dropped_syns_land_in_the_one_second_bucket_and_are_counted,];

/// Ports outside the ephemeral range (those are counted as 0): first SYNs dropped, normal,
/// and nothing listening.
const SLOW: u16 = 7101;
const FAST: u16 = 7102;
const CLOSED: u16 = 7103;

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        let name = format!("ep-tcp-{}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns(name);
        run(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]));
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn run(command: &mut Command) {
    let out = command.output().expect("running a set-up command");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Drops the first SYN of each connection to `port` (its retransmission, from the same
/// source port, passes): the kernel retries after its initial RTO, 1 s.
fn drop_first_syns(ns: &Netns, port: u16) {
    let rules = format!(
        "table inet eptest {{
  set seen {{ type inet_service; flags dynamic,timeout; timeout 60s; }}
  chain out {{
    type filter hook output priority 0;
    tcp dport {port} tcp flags & (syn|ack) == syn tcp sport @seen accept
    tcp dport {port} tcp flags & (syn|ack) == syn add @seen {{ tcp sport }} drop
  }}
}}
"
    );
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.nft", ns.0));
    std::fs::write(&path, rules).expect("writing the nftables rules");
    run(Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-f"])
        .arg(&path));
}

/// Sum of the report's count lines that start with `prefix`.
fn counted(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(": ").next()?.trim().parse::<u64>().ok())
        .sum()
}

fn has_port(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue], port: u16) -> bool {
    attrs.iter().any(|kv| {
        kv.key == "network.peer.port"
            && matches!(
                kv.value.as_ref().and_then(|v| v.value.as_ref()),
                Some(any_value::Value::IntValue(p)) if *p == i64::from(port)
            )
    })
}

fn dropped_syns_land_in_the_one_second_bucket_and_are_counted() {
    let Some(_serial) = bpf_test() else { return };
    let ns = Netns::new();
    drop_first_syns(&ns, SLOW);
    let (n_slow, n_fast, n_closed) = (3u64, 20u64, 5u64);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/workloads/tcp_work.py");
    let collector = TestCollector::start();
    let mut out = None;
    let rec = record_around(
        "tcp.txt",
        &["--tcp", "--otlp-endpoint", &collector.endpoint()],
        || {
            out = Some(
                Command::new("ip")
                    .args(["netns", "exec", &ns.0, "python3"])
                    .arg(&script)
                    .args([SLOW, FAST, CLOSED].map(|p| p.to_string()))
                    .args([n_slow, n_fast, n_closed].map(|n| n.to_string()))
                    .output()
                    .expect("running the TCP workload"),
            )
        },
    );
    let out = out.expect("the workload ran");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("done"), "{said}");
    assert!(said.contains(&format!("refused {n_closed}")), "{said}");
    let text = std::fs::read_to_string(&rec.file).expect("the report");
    let all = parse_histograms(&text);

    // Dropped first SYNs: established after the 1 s retry, in (537 ms, 1.07 s]; under the
    // cgroup of the sockets' owner (the workload, in ours).
    let cgroup = crate::probes::cgroup_of("self");
    let title = format!("TCP connect latency, port {SLOW}, cgroup {cgroup}");
    let slow: Vec<_> = all.iter().filter(|s| s.title == title).collect();
    let count: u64 = slow.iter().map(|s| s.count).sum();
    let in_bucket: u64 = slow.iter().map(|s| s.row("537 ms", "1.07 s")).sum();
    assert_eq!((count, in_bucket), (n_slow, n_slow), "{text}");
    // The others: loopback handshakes, well under a millisecond.
    let fast = sections(&all, &format!("TCP connect latency, port {FAST}, cgroup "));
    let count: u64 = fast.iter().map(|s| s.count).sum();
    let slower: u64 = fast.iter().map(|s| s.count_above(1e6)).sum();
    assert_eq!((count, slower), (n_fast, 0), "{text}");
    // A refused connection never got established: no latency, one reset each way.
    assert!(sections(&all, &format!("TCP connect latency, port {CLOSED},")).is_empty());

    // One retransmitted SYN per slow connection, none for the others.
    assert_eq!(
        counted(&text, &format!("TCP retransmits, port {SLOW}, ")),
        n_slow,
        "{text}"
    );
    assert_eq!(
        counted(&text, &format!("TCP retransmits, port {FAST}, ")),
        0,
        "{text}"
    );
    assert_eq!(
        counted(&text, &format!("TCP resets received, port {CLOSED}, ")),
        n_closed,
        "{text}"
    );
    // Sent for no socket (nothing listens): no cgroup, the peer's port ephemeral.
    assert_eq!(
        counted(
            &text,
            &format!("TCP resets sent, port 0 (ephemeral), local port {CLOSED}, cgroup none")
        ),
        n_closed,
        "{text}"
    );

    // The same through OTLP.
    let received = collector.received();
    let last_histogram = otlp_metrics(&received.metrics, "emberprof.tcp.connect.duration")
        .filter_map(|m| match &m.data {
            Some(metric::Data::ExponentialHistogram(h)) => Some(&h.data_points),
            _ => None,
        })
        .last()
        .expect("TCP connect histograms in OTLP");
    let slow_points: Vec<_> = last_histogram
        .iter()
        .filter(|p| has_port(&p.attributes, SLOW))
        .collect();
    let in_bucket: u64 = slow_points
        .iter()
        .map(|p| {
            let b = p.positive.as_ref().expect("buckets");
            // (2^29, 2^30] ns = (537 ms, 1.07 s].
            usize::try_from(29 - b.offset)
                .ok()
                .and_then(|i| b.bucket_counts.get(i).copied())
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(in_bucket, n_slow, "{slow_points:?}");
    let last_retransmits = otlp_metrics(&received.metrics, "emberprof.tcp.retransmits")
        .filter_map(|m| match &m.data {
            Some(metric::Data::Sum(s)) => Some(&s.data_points),
            _ => None,
        })
        .last()
        .expect("TCP retransmits in OTLP");
    let retransmits: i64 = last_retransmits
        .iter()
        .filter(|p| has_port(&p.attributes, SLOW))
        .filter_map(|p| match p.value {
            Some(number_data_point::Value::AsInt(v)) => Some(v),
            _ => None,
        })
        .sum();
    assert_eq!(retransmits, n_slow as i64);
}
