//! An in-test OTLP collector: a real gRPC server for the profiles and metrics services that
//! records what it receives and can be told to fail first. Shared by the exporters' tests
//! and the end-to-end tests. Every profiles request it receives is also held to Grafana
//! Pyroscope's ingest rules (`emberprof_exporters::otlp::pyroscope_check`) and the format's
//! index rules (`validate`): reading what was received fails the test if a consumer would
//! refuse or cut any of it.

use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use emberprof_exporters::otlp::pyroscope_check;

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::profiles::v1development::profiles_service_server::{
    ProfilesService, ProfilesServiceServer,
};
use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesPartialSuccess, ExportProfilesServiceRequest, ExportProfilesServiceResponse,
};
use tonic::codec::CompressionEncoding;
use tonic::{Request, Response, Status};

/// What the collector saw.
#[derive(Default)]
pub struct Received {
    pub profiles: Vec<ExportProfilesServiceRequest>,
    pub metrics: Vec<ExportMetricsServiceRequest>,
    /// Request metadata of every call, as (key, value) text.
    pub headers: Vec<Vec<(String, String)>>,
    /// Calls answered with an error.
    pub failed_calls: usize,
    /// What Pyroscope would make of each profiles request, in order of arrival.
    pub pyroscope: Vec<pyroscope_check::Report>,
    /// When each profiles request arrived.
    pub profile_arrivals: Vec<Instant>,
}

#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Received>>,
    /// Errors to answer with, in order, before answering OK.
    failures: Arc<Mutex<VecDeque<Status>>>,
    /// Items to report as rejected (partial success) in every OK answer.
    rejected: Arc<Mutex<i64>>,
    /// While set, calls hang before anything is recorded (a collector that stopped
    /// answering).
    stalled: Arc<std::sync::atomic::AtomicBool>,
    /// Where each profiles request is also written, length-prefixed, before it is answered
    /// (a collector in a child process reports to its parent this way).
    mirror: Arc<Mutex<Option<Box<dyn std::io::Write + Send>>>>,
    /// Answers OK and keeps nothing (a benchmark's endpoint, which must not grow).
    forgetful: Arc<std::sync::atomic::AtomicBool>,
}

impl Collector {
    /// Never returns while the collector is stalled.
    async fn wait_unless_stalled(&self) {
        while self.stalled.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes `request` to the mirror, if any: a tag byte, a little-endian u32 length and
    /// the encoded request.
    fn mirror(&self, tag: u8, request: &impl prost::Message) -> Result<(), Status> {
        let mut mirror = self.mirror.lock().unwrap();
        let Some(out) = mirror.as_mut() else {
            return Ok(());
        };
        let bytes = request.encode_to_vec();
        out.write_all(&[tag])
            .and_then(|()| out.write_all(&(bytes.len() as u32).to_le_bytes()))
            .and_then(|()| out.write_all(&bytes))
            .and_then(|()| out.flush())
            // The parent is gone: answer nothing, as a dead collector would.
            .map_err(|_| Status::unavailable("the test that started this collector is gone"))
    }

    fn call<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let headers = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().unwrap_or("").to_string()))
                }
                _ => None,
            })
            .collect();
        let mut received = self.received.lock().unwrap();
        received.headers.push(headers);
        if let Some(status) = self.failures.lock().unwrap().pop_front() {
            received.failed_calls += 1;
            return Err(status);
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl ProfilesService for Collector {
    async fn export(
        &self,
        request: Request<ExportProfilesServiceRequest>,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        self.wait_unless_stalled().await;
        if self.forgetful.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(Response::new(ExportProfilesServiceResponse::default()));
        }
        self.call(&request)?;
        let request = request.into_inner();
        self.mirror(b'P', &request)?;
        let mut report = pyroscope_check::check(&request, SystemTime::now());
        // The format's and the Collector's index rules too.
        if let Err(e) = emberprof_exporters::otlp::validate::validate_profiles(&request) {
            report.problems.push(format!("invalid request: {e}"));
        }
        let mut received = self.received.lock().unwrap();
        received.pyroscope.push(report);
        received.profiles.push(request);
        received.profile_arrivals.push(Instant::now());
        drop(received);
        let rejected = *self.rejected.lock().unwrap();
        Ok(Response::new(ExportProfilesServiceResponse {
            partial_success: (rejected > 0).then(|| ExportProfilesPartialSuccess {
                rejected_profiles: rejected,
                error_message: "too old".into(),
            }),
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.wait_unless_stalled().await;
        if self.forgetful.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(Response::new(ExportMetricsServiceResponse::default()));
        }
        self.call(&request)?;
        let request = request.into_inner();
        self.mirror(b'M', &request)?;
        self.received.lock().unwrap().metrics.push(request);
        let rejected = *self.rejected.lock().unwrap();
        Ok(Response::new(ExportMetricsServiceResponse {
            partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
                rejected_data_points: rejected,
                error_message: "too old".into(),
            }),
        }))
    }
}

/// A running collector; stops when dropped.
pub struct TestCollector {
    pub addr: SocketAddr,
    collector: Collector,
    server: Option<Server>,
}

/// The serving thread of a collector.
struct Server {
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Server {
    /// Serves `collector` on `addr` until stopped.
    fn start(
        addr: SocketAddr,
        collector: Collector,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Server {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let svc = collector;
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready_tx.send(()).unwrap();
                let incoming = tokio_stream_from(listener);
                let mut builder = tonic::transport::Server::builder();
                if let Some(tls) = tls {
                    builder = builder.tls_config(tls).unwrap();
                }
                let server = builder
                    .add_service(
                        ProfilesServiceServer::new(svc.clone())
                            .accept_compressed(CompressionEncoding::Gzip)
                            .max_decoding_message_size(64 << 20),
                    )
                    .add_service(
                        MetricsServiceServer::new(svc).accept_compressed(CompressionEncoding::Gzip),
                    )
                    .serve_with_incoming(incoming);
                // Not a graceful shutdown: that would wait for clients to hang up.
                tokio::select! {
                    _ = server => {}
                    _ = rx => {}
                }
            });
            // Connections and calls under way are dropped, not finished: what a killed
            // collector's clients see (their sockets closed under them).
            rt.shutdown_background();
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("collector started");
        Server {
            shutdown: tx,
            thread,
        }
    }

    fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.thread.join();
    }
}

/// A loopback port that is free now (for a collector started later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl TestCollector {
    /// Starts a collector on a free loopback port.
    pub fn start() -> TestCollector {
        TestCollector::start_on(free_port())
    }

    /// Starts a plaintext collector on `port`.
    pub fn start_on(port: u16) -> TestCollector {
        TestCollector::start_with(port, None)
    }

    /// Starts a TLS collector: server certificate and key, and the CA that client
    /// certificates must chain to (mutual TLS) if given. All PEM.
    pub fn start_tls(cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> TestCollector {
        let mut tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        TestCollector::start_with(free_port(), Some(tls))
    }

    fn start_with(port: u16, tls: Option<tonic::transport::ServerTlsConfig>) -> TestCollector {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let collector = Collector::default();
        TestCollector {
            addr,
            server: Some(Server::start(addr, collector.clone(), tls)),
            collector,
        }
    }

    /// Stops serving at once, like a collector killed with SIGKILL: its listening socket
    /// and every connection are closed, calls under way get no answer. What it received
    /// so far is kept.
    pub fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    /// Serves again on the same port (plaintext) after [`kill`](Self::kill), keeping
    /// what was received before.
    pub fn restart(&mut self) {
        self.kill();
        self.server = Some(Server::start(self.addr, self.collector.clone(), None));
    }

    /// Also writes every request to `out` before answering it: `P` (profiles) or `M`
    /// (metrics), a little-endian u32 length, the encoded request.
    pub fn mirror_to(&self, out: Box<dyn std::io::Write + Send>) {
        *self.collector.mirror.lock().unwrap() = Some(out);
    }

    /// Answers every call OK from now on and keeps nothing of it.
    pub fn keep_nothing(&self) {
        self.collector
            .forgetful
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes calls hang (true) before anything is recorded, or answer again (false).
    pub fn stall(&self, stalled: bool) {
        self.collector
            .stalled
            .store(stalled, std::sync::atomic::Ordering::Relaxed);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers the next calls with these errors before answering OK again.
    pub fn fail_next(&self, statuses: Vec<Status>) {
        self.collector.failures.lock().unwrap().extend(statuses);
    }

    /// Reports `n` items as rejected (partial success) in every later OK answer.
    pub fn reject(&self, n: i64) {
        *self.collector.rejected.lock().unwrap() = n;
    }

    /// What was received so far. Panics if Pyroscope would refuse or cut any profiles
    /// request received, naming why.
    pub fn received(&self) -> std::sync::MutexGuard<'_, Received> {
        let received = self.collector.received.lock().unwrap();
        if let Some((i, report)) = received
            .pyroscope
            .iter()
            .enumerate()
            .find(|(_, r)| !r.lossless())
        {
            let lossy: Vec<_> = report
                .series
                .iter()
                .filter(|s| s.samples_kept != s.samples_sent || s.value_kept != s.value_sent)
                .collect();
            let (problems, lossy) = (report.problems.clone(), format!("{lossy:#?}"));
            drop(received);
            panic!(
                "profiles request {i} would not arrive whole in Pyroscope: {problems:?}; series losing samples: {lossy}"
            );
        }
        received
    }

    /// Waits until `done` holds for what was received, or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, done: impl Fn(&Received) -> bool) -> bool {
        crate::poll_until(timeout, || done(&self.received()))
    }
}

impl Drop for TestCollector {
    fn drop(&mut self) {
        self.stall(false);
        self.kill();
    }
}

/// Accepted connections as the stream tonic serves from.
fn tokio_stream_from(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
}
