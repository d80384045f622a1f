//! The watch of this node's pods, on its own thread and runtime: list, then watch from the
//! list's resource version; on errors (an API server restart, an expired version) it backs
//! off and lists again, replacing the cache at once when the new list is complete.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};

use super::pods::PodCache;

/// Counters of the watch, for /metrics and tests.
#[derive(Default)]
pub struct WatchStats {
    /// Complete lists received (the first, and one after each re-list).
    pub lists: AtomicU64,
    /// Pod changes applied from the watch.
    pub events: AtomicU64,
    /// Errors from the API (each followed by a backoff and a retry).
    pub errors: AtomicU64,
}

/// The running watch; stops when dropped.
pub struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Watch {
    /// Builds the client (failing fast when no cluster configuration exists), then
    /// watches in the background.
    pub fn start(
        node: String,
        config: Option<kube::Config>,
        cache: Arc<RwLock<PodCache>>,
        stats: Arc<WatchStats>,
    ) -> anyhow::Result<Watch> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the Kubernetes watch runtime")?;
        let config = match config {
            Some(c) => c,
            None => runtime
                .block_on(kube::Config::infer())
                .context("no in-cluster service account and no kubeconfig")?,
        };
        let client = {
            let _guard = runtime.enter();
            Client::try_from(config).context("building the Kubernetes client")?
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ep-k8s-watch".into())
            .spawn(move || {
                runtime.block_on(run(client, node, cache, stats, stopping));
            })
            .context("starting the Kubernetes watch thread")?;
        Ok(Watch {
            stop,
            thread: Some(thread),
        })
    }
}

async fn run(
    client: Client,
    node: String,
    cache: Arc<RwLock<PodCache>>,
    stats: Arc<WatchStats>,
    stop: Arc<AtomicBool>,
) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut listing: Vec<Pod> = Vec::new();
    let mut last_error_logged: Option<std::time::Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
        let event = match next {
            Err(_) => continue, // only to look at `stop` again
            Ok(None) => break,
            Ok(Some(event)) => event,
        };
        let write = || cache.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Ok(Event::Init) => listing.clear(),
            Ok(Event::InitApply(pod)) => listing.push(pod),
            Ok(Event::InitDone) => {
                write().reset(&listing);
                listing = Vec::new();
                stats.lists.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %node, "pod list complete");
            }
            Ok(Event::Apply(pod)) => {
                write().apply(&pod);
                stats.events.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Delete(pod)) => {
                write().delete(&pod);
                stats.events.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                // Once a minute at most: an API server that is down fails every retry.
                if last_error_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(%error, "pod watch failed; retrying with backoff");
                    last_error_logged = Some(std::time::Instant::now());
                }
            }
        }
    }
}
