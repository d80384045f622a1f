//! The background exporter: callers hand batches to a byte-bounded queue and return at
//! once; a worker thread sends them in order, retrying transient failures with backoff.
//! When the queue is full the oldest batches are dropped and counted, so a collector that
//! is down or slow costs bounded memory and never blocks the caller. What a batch is and how
//! one attempt sends it is the [`Transport`]'s: OTLP/gRPC here, Pyroscope's ingest API in
//! `sinks::pyroscope`.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
use prost::Message;

use super::client::{OtlpClient, SendError};
use super::config::OtlpConfig;
use super::queue::ByteQueue;
use super::retry;

/// How a pipeline sends its batches.
pub trait Transport: Send + 'static {
    /// One request to deliver.
    type Batch: Send + 'static;

    /// Bytes the batch takes in the queue.
    fn size(batch: &Self::Batch) -> usize;

    /// One attempt at sending `batch`: how many items the receiver rejected, or why it did
    /// not go through (and whether trying again may help).
    fn send(
        &mut self,
        batch: &Self::Batch,
    ) -> impl std::future::Future<Output = Result<u64, SendError>> + Send;
}

/// How long a pipeline holds on: its queue's bound and how it retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub queue_bytes: usize,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_retry_time: Duration,
}

impl From<&OtlpConfig> for Limits {
    fn from(c: &OtlpConfig) -> Limits {
        Limits {
            queue_bytes: c.queue_bytes,
            initial_backoff: c.initial_backoff,
            max_backoff: c.max_backoff,
            max_retry_time: c.max_retry_time,
        }
    }
}

/// One OTLP request to deliver.
#[derive(Clone, Debug)]
pub enum Batch {
    Profiles(ExportProfilesServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

/// OTLP/gRPC to a collector.
pub struct OtlpTransport {
    client: OtlpClient,
}

impl Transport for OtlpTransport {
    type Batch = Batch;

    fn size(batch: &Batch) -> usize {
        match batch {
            Batch::Profiles(r) => r.encoded_len(),
            Batch::Metrics(r) => r.encoded_len(),
        }
    }

    async fn send(&mut self, batch: &Batch) -> Result<u64, SendError> {
        match batch {
            Batch::Profiles(r) => self.client.send_profiles(r.clone()).await,
            Batch::Metrics(r) => self.client.send_metrics(r.clone()).await,
        }
    }
}

/// What the pipeline did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Batches the collector accepted.
    pub sent: u64,
    /// Encoded bytes of those batches.
    pub sent_bytes: u64,
    /// Attempts that failed and were retried.
    pub retries: u64,
    /// Batches given up: a permanent error, or retried for longer than allowed.
    pub failed: u64,
    /// Batches dropped from the queue to stay within its bound (oldest first).
    pub dropped: u64,
    /// Bytes of those.
    pub dropped_bytes: u64,
    /// Profiles or data points the collector rejected in an accepted batch.
    pub rejected_items: u64,
    /// Bytes waiting in the queue now.
    pub queued_bytes: u64,
    /// Whether the most recently finished batch was given up (not delivered).
    pub last_failed: bool,
    /// Whether the latest attempt failed because the endpoint is set up wrong (TLS to a
    /// plaintext port, not HTTP/2): cleared by the next delivery.
    pub misconfigured: bool,
    /// Time from the first attempt to delivery of the last delivered batch, retries included.
    pub last_latency: std::time::Duration,
    /// The same, summed over every delivered batch.
    pub total_latency: std::time::Duration,
}

pub(super) struct State<B> {
    queue: ByteQueue<B>,
    in_flight: bool,
    pub(super) stats: PipelineStats,
    closing: bool,
    /// The batch in flight was counted as failed when the pipeline closed: the worker must
    /// not count it again.
    in_flight_counted: bool,
    /// The worker has returned.
    finished: bool,
}

pub(super) struct Shared<B> {
    state: Mutex<State<B>>,
    wake: Condvar,
}

/// Handle to the worker. Dropping it interrupts the batch in flight (send or retry wait),
/// counts what is still queued as dropped, and joins the worker.
pub struct Pipeline<T: Transport = OtlpTransport> {
    pub(super) shared: Arc<Shared<T::Batch>>,
    worker: Option<JoinHandle<()>>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Pipeline<OtlpTransport> {
    /// Starts the worker thread and its runtime, sending to the collector of `config`.
    pub fn start(config: OtlpConfig) -> Result<Pipeline, SendError> {
        let runtime = runtime()?;
        let client = {
            let _guard = runtime.enter();
            OtlpClient::new(&config)?
        };
        Pipeline::with_transport(OtlpTransport { client }, Limits::from(&config), runtime)
    }
}

/// The worker's runtime: one thread, the worker's own.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, SendError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SendError::Setup(format!("starting the export runtime: {e}")))
}

impl<T: Transport> Pipeline<T> {
    /// Starts the worker thread sending through `transport` on `runtime`.
    pub fn with_transport(
        transport: T,
        limits: Limits,
        runtime: tokio::runtime::Runtime,
    ) -> Result<Pipeline<T>, SendError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: ByteQueue::new(limits.queue_bytes),
                in_flight: false,
                stats: PipelineStats::default(),
                closing: false,
                in_flight_counted: false,
                finished: false,
            }),
            wake: Condvar::new(),
        });
        let worker_shared = shared.clone();
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let worker = std::thread::Builder::new()
            .name("emberprof-export".into())
            .spawn(move || worker(runtime, transport, limits, worker_shared, closing_rx))
            .map_err(|e| SendError::Setup(format!("starting the export thread: {e}")))?;
        Ok(Pipeline {
            shared,
            worker: Some(worker),
            closing,
        })
    }

    /// Queues a batch and returns at once.
    pub fn submit(&self, batch: T::Batch) {
        let size = T::size(&batch);
        let mut state = lock(&self.shared);
        let (n, bytes) = state.queue.push(batch, size);
        if n > 0 {
            tracing::warn!(
                batches = n,
                bytes,
                "export queue full: dropped the oldest data"
            );
            state.stats.dropped += n as u64;
            state.stats.dropped_bytes += bytes as u64;
        }
        state.stats.queued_bytes = state.queue.bytes() as u64;
        drop(state);
        self.shared.wake.notify_all();
    }

    /// Waits until everything queued has been sent or given up, or `timeout` passes.
    /// Returns true when nothing is left.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared);
        while !state.queue.is_empty() || state.in_flight {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = match self.shared.wake.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// Counters so far.
    pub fn stats(&self) -> PipelineStats {
        lock(&self.shared).stats
    }
}

impl<T: Transport> Pipeline<T> {
    /// Gives the queue up to `timeout` to drain, then stops: what is still queued is counted
    /// as dropped, a batch in flight as failed, so that the counters hold everything ever
    /// submitted. Returns true when everything was delivered or given up in time.
    pub fn close(&mut self, timeout: Duration) -> bool {
        let done = self.flush(timeout);
        self.stop();
        done
    }

    /// Stops the worker now (see [`close`](Self::close)). A transport that blocks (an
    /// HTTP call without a runtime) cannot be interrupted: the worker is then left to end on
    /// its own, after at most its request timeout, and not waited for.
    fn stop(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        {
            let mut state = lock(&self.shared);
            state.closing = true;
            let mut lost = (0, 0);
            while let Some((_, size)) = state.queue.pop() {
                lost.0 += 1;
                lost.1 += size as u64;
            }
            if lost.0 > 0 {
                tracing::warn!(batches = lost.0, "exporter closing: queued batches dropped");
                state.stats.dropped += lost.0;
                state.stats.dropped_bytes += lost.1;
            }
            state.stats.queued_bytes = 0;
            if state.in_flight {
                tracing::warn!("exporter closing: the batch in flight is given up");
                state.stats.failed += 1;
                state.stats.last_failed = true;
                state.in_flight_counted = true;
            }
        }
        let _ = self.closing.send(true);
        self.shared.wake.notify_all();
        let deadline = Instant::now() + STOP_GRACE;
        let mut state = lock(&self.shared);
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            state = match self.shared.wake.wait_timeout(state, left) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        drop(state);
        let _ = worker.join();
    }
}

/// How long stopping waits for the worker to notice.
const STOP_GRACE: Duration = Duration::from_millis(200);

impl<T: Transport> Drop for Pipeline<T> {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) fn lock<B>(shared: &Shared<B>) -> std::sync::MutexGuard<'_, State<B>> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker<T: Transport>(
    runtime: tokio::runtime::Runtime,
    transport: T,
    limits: Limits,
    shared: Arc<Shared<T::Batch>>,
    closing: tokio::sync::watch::Receiver<bool>,
) {
    run_worker(runtime, transport, limits, &shared, closing);
    lock(&shared).finished = true;
    shared.wake.notify_all();
}

fn run_worker<T: Transport>(
    runtime: tokio::runtime::Runtime,
    mut transport: T,
    limits: Limits,
    shared: &Shared<T::Batch>,
    closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut warned: Option<String> = None;
    loop {
        let (batch, size) = {
            let mut state = lock(shared);
            loop {
                if state.closing {
                    return;
                }
                if let Some(item) = state.queue.pop() {
                    state.in_flight = true;
                    state.stats.queued_bytes = state.queue.bytes() as u64;
                    break item;
                }
                state = match shared.wake.wait(state) {
                    Ok(s) => s,
                    Err(poisoned) => poisoned.into_inner(),
                };
            }
        };
        let began = Instant::now();
        let outcome = runtime.block_on(deliver(
            &mut transport,
            &limits,
            shared,
            closing.clone(),
            &mut warned,
            batch,
        ));
        let took = began.elapsed();
        let mut state = lock(shared);
        state.in_flight = false;
        if std::mem::take(&mut state.in_flight_counted) {
            return;
        }
        match outcome {
            Ok(rejected) => {
                state.stats.last_failed = false;
                state.stats.last_latency = took;
                state.stats.total_latency += took;
                state.stats.sent += 1;
                state.stats.sent_bytes += size as u64;
                state.stats.rejected_items += rejected;
            }
            Err(e) => {
                tracing::warn!(error = %e, "export failed; the batch is dropped");
                state.stats.failed += 1;
                state.stats.last_failed = true;
            }
        }
        drop(state);
        shared.wake.notify_all();
    }
}

/// Sends one batch, retrying while the error is transient and time remains. A
/// misconfigured endpoint is said once in a WARN line (`warned` holds what was said) and
/// marks the pipeline not ready until a batch goes through.
async fn deliver<T: Transport>(
    transport: &mut T,
    limits: &Limits,
    shared: &Shared<T::Batch>,
    mut closing: tokio::sync::watch::Receiver<bool>,
    warned: &mut Option<String>,
    batch: T::Batch,
) -> Result<u64, SendError> {
    let started = Instant::now();
    let mut attempt = 0u32;
    let closed = || SendError::Setup("the exporter was closed with the batch in flight".into());
    loop {
        let send = transport.send(&batch);
        let result = tokio::select! {
            r = send => r,
            _ = closing.wait_for(|c| *c) => return Err(closed()),
        };
        match &result {
            Err(e @ SendError::Misconfigured { .. }) => {
                let said = e.to_string();
                if warned.as_deref() != Some(said.as_str()) {
                    tracing::warn!("{said}");
                    *warned = Some(said);
                }
                lock(shared).stats.misconfigured = true;
            }
            Ok(_) => {
                *warned = None;
                lock(shared).stats.misconfigured = false;
            }
            Err(_) => {}
        }
        let delay = match &result {
            Err(e) if e.retryable() => {
                attempt += 1;
                e.delay().unwrap_or_else(|| {
                    retry::backoff(
                        attempt,
                        limits.initial_backoff,
                        limits.max_backoff,
                        retry::jitter_unit(),
                    )
                })
            }
            _ => return result,
        };
        if started.elapsed() + delay > limits.max_retry_time || lock(shared).closing {
            return result;
        }
        if let Err(e) = &result {
            tracing::info!(error = %e, attempt, ?delay, "export failed; retrying");
        }
        lock(shared).stats.retries += 1;
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = closing.wait_for(|c| *c) => return Err(closed()),
        }
    }
}
