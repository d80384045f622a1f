//! The pipeline against a real gRPC collector on loopback.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
use tonic::Status;

use super::collector::{free_port, TestCollector};
use super::{Batch, OtlpConfig, Pipeline};

fn config(endpoint: &str) -> OtlpConfig {
    let mut c = OtlpConfig {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        timeout: Duration::from_secs(2),
        ..OtlpConfig::default()
    };
    c.set_endpoint(endpoint, "test").unwrap();
    c
}

/// A small metrics batch told apart by its metric name.
fn batch(name: &str) -> Batch {
    Batch::Metrics(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.to_string(),
                    description: "x".repeat(200),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

fn names(c: &TestCollector) -> Vec<String> {
    c.received()
        .metrics
        .iter()
        .map(|r| {
            r.resource_metrics[0].scope_metrics[0].metrics[0]
                .name
                .clone()
        })
        .collect()
}

#[test]
fn unavailable_twice_then_ok_delivers_exactly_once() {
    let collector = TestCollector::start();
    collector.fail_next(vec![
        Status::unavailable("busy"),
        Status::unavailable("still busy"),
    ]);
    let pipeline = Pipeline::start(config(&collector.endpoint())).unwrap();
    pipeline.submit(batch("one"));
    assert!(pipeline.flush(Duration::from_secs(10)));
    assert_eq!(names(&collector), ["one"]);
    assert_eq!(collector.received().failed_calls, 2);
    let stats = pipeline.stats();
    assert_eq!((stats.sent, stats.retries, stats.failed), (1, 2, 0));
}

#[test]
fn a_permanent_error_is_not_retried() {
    let collector = TestCollector::start();
    collector.fail_next(vec![Status::invalid_argument("bad data")]);
    let pipeline = Pipeline::start(config(&collector.endpoint())).unwrap();
    pipeline.submit(batch("bad"));
    assert!(pipeline.flush(Duration::from_secs(10)));
    let stats = pipeline.stats();
    assert_eq!((stats.sent, stats.retries, stats.failed), (0, 0, 1));
    assert_eq!(collector.received().failed_calls, 1);
}

#[test]
fn gzip_and_headers_reach_the_collector() {
    let collector = TestCollector::start();
    let mut c = config(&collector.endpoint());
    c.gzip = true;
    c.add_header("X-Scope-OrgID=tenant-1,authorization=Bearer t", "test")
        .unwrap();
    let pipeline = Pipeline::start(c).unwrap();
    pipeline.submit(batch("zipped"));
    assert!(pipeline.flush(Duration::from_secs(10)));
    assert_eq!(names(&collector), ["zipped"]);
    let headers = collector.received().headers[0].clone();
    let has = |k: &str, v: &str| headers.iter().any(|(hk, hv)| hk == k && hv == v);
    assert!(has("x-scope-orgid", "tenant-1"), "{headers:?}");
    assert!(has("authorization", "Bearer t"), "{headers:?}");
    assert!(has("grpc-encoding", "gzip"), "{headers:?}");
}

#[test]
fn a_collector_that_starts_late_still_gets_the_data() {
    let port = free_port();
    let pipeline = Pipeline::start(config(&format!("http://127.0.0.1:{port}"))).unwrap();
    pipeline.submit(batch("early"));
    std::thread::sleep(Duration::from_millis(400));
    assert!(pipeline.stats().retries > 0, "{:?}", pipeline.stats());
    let collector = TestCollector::start_on(port);
    assert!(pipeline.flush(Duration::from_secs(10)));
    assert_eq!(names(&collector), ["early"]);
}

#[test]
fn beyond_the_queue_bound_the_oldest_batch_is_dropped_and_counted() {
    let port = free_port();
    let size = {
        use prost::Message;
        let Batch::Metrics(r) = batch("b1") else {
            unreachable!()
        };
        r.encoded_len()
    };
    let mut c = config(&format!("http://127.0.0.1:{port}"));
    c.queue_bytes = size * 5 / 2; // two queued batches fit, three do not
    let pipeline = Pipeline::start(c).unwrap();
    pipeline.submit(batch("b1"));
    // b1 is now in flight (being retried); the next ones wait in the queue.
    std::thread::sleep(Duration::from_millis(200));
    for name in ["b2", "b3", "b4"] {
        pipeline.submit(batch(name));
    }
    let stats = pipeline.stats();
    assert_eq!((stats.dropped, stats.dropped_bytes), (1, size as u64));
    assert!(stats.queued_bytes <= (size * 5 / 2) as u64);
    let collector = TestCollector::start_on(port);
    assert!(pipeline.flush(Duration::from_secs(10)));
    assert_eq!(names(&collector), ["b1", "b3", "b4"]);
    assert_eq!(pipeline.stats().sent, 3);
}

#[test]
fn partial_success_is_counted_not_retried() {
    let collector = TestCollector::start();
    collector.reject(3);
    let pipeline = Pipeline::start(config(&collector.endpoint())).unwrap();
    pipeline.submit(batch("partly"));
    assert!(pipeline.flush(Duration::from_secs(10)));
    let stats = pipeline.stats();
    assert_eq!((stats.sent, stats.rejected_items, stats.retries), (1, 3, 0));
    assert_eq!(names(&collector), ["partly"]);
}
