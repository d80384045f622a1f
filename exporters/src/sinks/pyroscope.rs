//! Grafana Pyroscope's ingest API: each span's profiles pushed as pprof, one request per
//! series (service and labels) and kind, on a thread of its own so that a slow server never
//! holds up sampling. At most one push runs at a time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use emberprof_model::{AttrValue, Attributes, Profile, Sample};

use super::{Sink, Span};
use crate::pyroscope::{self, PyroscopeConfig};
use crate::ExportError;

/// A Pyroscope server.
pub struct PyroscopeSink {
    config: PyroscopeConfig,
    /// Labels of every series: the host's attributes.
    common: Attributes,
    push: Option<JoinHandle<()>>,
    pushed: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

impl PyroscopeSink {
    /// A sink for `config`; `common` labels every series.
    pub fn new(config: PyroscopeConfig, common: Attributes) -> PyroscopeSink {
        PyroscopeSink {
            config,
            common,
            push: None,
            pushed: Arc::default(),
            failures: Arc::default(),
        }
    }
}

impl Sink for PyroscopeSink {
    fn describe(&self) -> String {
        format!("Pyroscope {}", self.config.url)
    }

    fn submit(&mut self, span: &Span<'_>) {
        if self.push.as_ref().is_some_and(|h| !h.is_finished()) {
            tracing::warn!(
                "the previous Pyroscope push is still running; this interval is not pushed"
            );
            self.failures.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (config, profiles, processes, common) = (
            self.config.clone(),
            span.profiles.to_vec(),
            span.processes.clone(),
            self.common.clone(),
        );
        let (pushed, failures) = (self.pushed.clone(), self.failures.clone());
        self.push = Some(std::thread::spawn(move || {
            match push(&config, &profiles, &processes, &common) {
                Ok(n) => {
                    pushed.fetch_add(n as u64, Ordering::Relaxed);
                    eprintln!("emberprof: Pyroscope {}: {n} profiles pushed", config.url);
                }
                Err(e) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "Pyroscope push failed");
                }
            }
        }));
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), ExportError> {
        if let Some(push) = self.push.take() {
            let deadline = Instant::now() + timeout;
            while !push.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if !push.is_finished() {
                return Err(ExportError::Undelivered(format!(
                    "the last push to Pyroscope {} did not finish within {timeout:?}",
                    self.config.url
                )));
            }
            let _ = push.join();
        }
        match self.failures.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(ExportError::Undelivered(format!(
                "{n} Pyroscope pushes to {} failed or were skipped (see above)",
                self.config.url
            ))),
        }
    }

    fn healthy(&self) -> bool {
        self.failures.load(Ordering::Relaxed) == 0
    }
}

/// One push per profile kind and series: the service is the process's `service.name`, the
/// labels its other resource attributes (as sent over OTLP) and `common`. Returns how many
/// requests were accepted.
fn push(
    config: &PyroscopeConfig,
    profiles: &[Profile],
    processes: &HashMap<u32, Attributes>,
    common: &Attributes,
) -> Result<usize, ExportError> {
    let series_of = |s: &Sample| {
        let attrs = processes.get(&s.pid);
        let service = attrs
            .and_then(|attrs| {
                attrs.iter().find_map(|(k, v)| match v {
                    AttrValue::Str(name) if k == "service.name" => Some(name.clone()),
                    _ => None,
                })
            })
            .unwrap_or_else(|| s.process_name.to_string());
        let mut labels: Vec<(String, String)> = attrs
            .into_iter()
            .flatten()
            .chain(common)
            .filter(|(k, _)| k != "service.name")
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        labels.sort();
        labels.dedup_by(|a, b| a.0 == b.0);
        (service, labels)
    };
    let mut pushed = 0;
    for profile in profiles {
        pushed += pyroscope::push(config, profile, series_of).map_err(|e| {
            ExportError::Push(format!(
                "the {} profile to {}: {e}",
                profile.kind.title(),
                config.url
            ))
        })?;
    }
    Ok(pushed)
}
