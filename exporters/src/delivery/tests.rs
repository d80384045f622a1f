//! The pipeline against a real gRPC collector on loopback.

use std::time::Duration;

use emberprof_test_support::collector::{free_port, TestCollector};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, ScopeMetrics};
use tonic::Status;

use emberprof_test_support::wrong_servers::WrongServer;

use super::{Batch, OtlpConfig, Pipeline, Transport};

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

/// A CA, a server certificate for localhost and a client certificate, made with openssl.
struct Certs {
    dir: std::path::PathBuf,
}

impl Certs {
    fn make() -> Certs {
        let dir = std::env::temp_dir().join(format!("ep-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .unwrap();
        for name in ["server", "client"] {
            run(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            run(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "san.ext",
                "-out",
                &format!("{name}.pem"),
            ]);
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn mutual_tls_with_a_ca_file_and_client_certificate() {
    let certs = Certs::make();
    let collector = TestCollector::start_tls(
        &certs.read("server.pem"),
        &certs.read("server.key"),
        Some(&certs.read("ca.pem")),
    );
    let endpoint = format!("https://localhost:{}", collector.addr.port());
    let mut c = config(&endpoint);
    c.ca_file = Some(certs.path("ca.pem"));
    c.client_cert = Some(certs.path("client.pem"));
    c.client_key = Some(certs.path("client.key"));
    let pipeline = Pipeline::start(c.clone()).unwrap();
    pipeline.submit(batch("secret"));
    assert!(pipeline.flush(Duration::from_secs(10)));
    assert_eq!(pipeline.stats().sent, 1, "{:?}", pipeline.stats());
    assert_eq!(names(&collector), ["secret"]);

    // Without our CA the server is not trusted: nothing is sent, and that is counted.
    c.ca_file = None;
    c.max_retry_time = Duration::from_millis(300);
    let untrusting = Pipeline::start(c).unwrap();
    untrusting.submit(batch("never"));
    assert!(untrusting.flush(Duration::from_secs(10)));
    assert_eq!(untrusting.stats().sent, 0);
    assert_eq!(untrusting.stats().failed, 1);
    assert!(untrusting.stats().misconfigured, "{:?}", untrusting.stats());
    assert_eq!(names(&collector), ["secret"]);
}

#[test]
fn closing_interrupts_a_long_retry_and_counts_what_is_left() {
    let port = free_port();
    let mut c = config(&format!("http://127.0.0.1:{port}"));
    c.initial_backoff = Duration::from_secs(60);
    c.max_backoff = Duration::from_secs(60);
    let pipeline = Pipeline::start(c).unwrap();
    pipeline.submit(batch("in-flight"));
    std::thread::sleep(Duration::from_millis(300));
    pipeline.submit(batch("queued"));
    let shared = pipeline.shared.clone();
    let started = std::time::Instant::now();
    drop(pipeline);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let stats = super::pipeline::lock(&shared).stats;
    assert_eq!((stats.failed, stats.dropped, stats.sent), (1, 1, 0));
}

#[test]
fn resource_exhausted_is_retried_only_when_the_server_says_when() {
    let collector = TestCollector::start();
    let with_hint = tonic::Status::with_details(
        tonic::Code::ResourceExhausted,
        "slow down",
        super::retry::details_with_delay(1).into(),
    );
    collector.fail_next(vec![with_hint, Status::resource_exhausted("full, no hint")]);
    let pipeline = Pipeline::start(config(&collector.endpoint())).unwrap();
    let started = std::time::Instant::now();
    pipeline.submit(batch("hinted"));
    assert!(pipeline.flush(Duration::from_secs(10)));
    // The server's 1 s delay was waited for, not the 50 ms backoff; the retry then met the
    // hintless RESOURCE_EXHAUSTED, which is not retried.
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );
    let stats = pipeline.stats();
    assert_eq!(
        (stats.retries, stats.failed, stats.sent),
        (1, 1, 0),
        "{stats:?}"
    );
    assert_eq!(collector.received().failed_calls, 2);
}

#[test]
fn a_collector_restarting_costs_retries_not_batches() {
    let mut collector = TestCollector::start();
    let pipeline = Pipeline::start(config(&collector.endpoint())).unwrap();
    pipeline.submit(batch("before"));
    assert!(pipeline.flush(Duration::from_secs(10)));
    // The connection the pipeline holds is closed under it: tonic reports the next call as
    // `Unknown: transport error`, which must be retried like UNAVAILABLE.
    collector.kill();
    pipeline.submit(batch("during"));
    std::thread::sleep(Duration::from_millis(400));
    collector.restart();
    pipeline.submit(batch("after"));
    assert!(pipeline.flush(Duration::from_secs(10)));
    assert_eq!(names(&collector), ["before", "during", "after"]);
    let stats = pipeline.stats();
    assert_eq!(
        (stats.sent, stats.failed, stats.dropped),
        (3, 0, 0),
        "{stats:?}"
    );
    assert!(stats.retries >= 1, "{stats:?}");
}

#[test]
fn an_http1_server_is_a_misconfiguration_retried_until_fixed() {
    let server = WrongServer::http1();
    let mut c = config(&server.http_url());
    c.max_retry_time = Duration::from_secs(60);
    let pipeline = Pipeline::start(c).unwrap();
    pipeline.submit(batch("lost"));
    let began = std::time::Instant::now();
    while !(pipeline.stats().misconfigured && pipeline.stats().retries >= 2)
        && began.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = pipeline.stats();
    assert!(stats.misconfigured && stats.retries >= 2, "{stats:?}");
    assert_eq!(stats.failed, 0, "{stats:?}");
}

/// A transport that blocks its thread for a minute on every send (as a blocking HTTP
/// client does on a server that never answers).
struct Stuck;

impl Transport for Stuck {
    type Batch = u32;

    fn size(_: &u32) -> usize {
        100
    }

    async fn send(&mut self, _: &u32) -> Result<u64, super::SendError> {
        std::thread::sleep(Duration::from_secs(60));
        Ok(0)
    }
}

#[test]
fn closing_does_not_wait_for_a_transport_that_blocks_and_counts_everything() {
    let limits = super::Limits {
        queue_bytes: 1 << 20,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(50),
        max_retry_time: Duration::from_secs(1),
    };
    let runtime = super::pipeline::runtime().unwrap();
    let mut pipeline = Pipeline::with_transport(Stuck, limits, runtime).unwrap();
    for i in 0..3 {
        pipeline.submit(i);
    }
    std::thread::sleep(Duration::from_millis(100));
    let began = std::time::Instant::now();
    assert!(!pipeline.close(Duration::from_millis(100)));
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    let stats = pipeline.stats();
    assert_eq!(
        (stats.sent, stats.failed, stats.dropped),
        (0, 1, 2),
        "{stats:?}"
    );
    assert_eq!(stats.queued_bytes, 0);
}
