//! The background exporter: callers hand batches to a byte-bounded queue and return at
//! once; a worker thread sends them in order, retrying transient failures with backoff.
//! When the queue is full the oldest batches are dropped and counted, so a collector that
//! is down or slow costs bounded memory and never blocks the caller.

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

/// One request to deliver.
#[derive(Clone, Debug)]
pub enum Batch {
    Profiles(ExportProfilesServiceRequest),
    Metrics(ExportMetricsServiceRequest),
}

impl Batch {
    fn encoded_len(&self) -> usize {
        match self {
            Batch::Profiles(r) => r.encoded_len(),
            Batch::Metrics(r) => r.encoded_len(),
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
    /// Time from the first attempt to delivery of the last delivered batch, retries included.
    pub last_latency: std::time::Duration,
    /// The same, summed over every delivered batch.
    pub total_latency: std::time::Duration,
}

pub(super) struct State {
    queue: ByteQueue<Batch>,
    in_flight: bool,
    pub(super) stats: PipelineStats,
    closing: bool,
}

pub(super) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// Handle to the worker. Dropping it interrupts the batch in flight (send or retry wait),
/// counts what is still queued as dropped, and joins the worker.
pub struct Pipeline {
    pub(super) shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    closing: tokio::sync::watch::Sender<bool>,
}

impl Pipeline {
    /// Starts the worker thread and its runtime.
    pub fn start(config: OtlpConfig) -> Result<Pipeline, SendError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SendError::Setup(format!("starting the export runtime: {e}")))?;
        let client = {
            let _guard = runtime.enter();
            OtlpClient::new(&config)?
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: ByteQueue::new(config.queue_bytes),
                in_flight: false,
                stats: PipelineStats::default(),
                closing: false,
            }),
            wake: Condvar::new(),
        });
        let worker_shared = shared.clone();
        let (closing, closing_rx) = tokio::sync::watch::channel(false);
        let worker = std::thread::Builder::new()
            .name("emberprof-export".into())
            .spawn(move || worker(runtime, client, config, worker_shared, closing_rx))
            .map_err(|e| SendError::Setup(format!("starting the export thread: {e}")))?;
        Ok(Pipeline {
            shared,
            worker: Some(worker),
            closing,
        })
    }

    /// Queues a batch and returns at once.
    pub fn submit(&self, batch: Batch) {
        let size = batch.encoded_len();
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

impl Drop for Pipeline {
    fn drop(&mut self) {
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
        }
        let _ = self.closing.send(true);
        self.shared.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

pub(super) fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    shared.state.lock().unwrap_or_else(|e| e.into_inner())
}

fn worker(
    runtime: tokio::runtime::Runtime,
    mut client: OtlpClient,
    config: OtlpConfig,
    shared: Arc<Shared>,
    closing: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (batch, size) = {
            let mut state = lock(&shared);
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
            &mut client,
            &config,
            &shared,
            closing.clone(),
            batch,
        ));
        let took = began.elapsed();
        let mut state = lock(&shared);
        state.in_flight = false;
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

/// Sends one batch, retrying while the error is transient and time remains.
async fn deliver(
    client: &mut OtlpClient,
    config: &OtlpConfig,
    shared: &Shared,
    mut closing: tokio::sync::watch::Receiver<bool>,
    batch: Batch,
) -> Result<u64, SendError> {
    let started = Instant::now();
    let mut attempt = 0u32;
    let closed = || SendError::Setup("the exporter was closed with the batch in flight".into());
    loop {
        let send = async {
            match &batch {
                Batch::Profiles(r) => client.send_profiles(r.clone()).await,
                Batch::Metrics(r) => client.send_metrics(r.clone()).await,
            }
        };
        let result = tokio::select! {
            r = send => r,
            _ = closing.wait_for(|c| *c) => return Err(closed()),
        };
        let delay = match &result {
            Err(SendError::Status {
                retryable: true,
                delay,
                ..
            }) => {
                attempt += 1;
                delay.unwrap_or_else(|| {
                    retry::backoff(
                        attempt,
                        config.initial_backoff,
                        config.max_backoff,
                        retry::jitter_unit(),
                    )
                })
            }
            _ => return result,
        };
        if started.elapsed() + delay > config.max_retry_time || lock(shared).closing {
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
