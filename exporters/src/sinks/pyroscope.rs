//! Grafana Pyroscope's ingest API: each span's profiles as pprof, one request per series
//! (service and labels) and kind, through the same byte-bounded queue and retrying worker as
//! OTLP: a slow server delays pushes (and drops the oldest when the queue is full, counted)
//! but never holds up sampling or skips an interval.

use std::collections::HashMap;
use std::time::Duration;

use emberprof_model::{AttrValue, Attributes, HealthCounter, Sample};

use super::tally::{delivery_result, health_rows};
use super::{Sink, Span, Tally};
use crate::delivery::{pipeline, Limits, Pipeline, PipelineStats, SendError, Transport};
use crate::pyroscope::{self, IngestRequest, PyroscopeConfig};
use crate::ExportError;

/// What the summary calls a delivered request.
const NOUN: &str = "profiles pushed";

/// Sends ingest requests, one attempt at a time.
pub struct PyroscopeTransport {
    agent: ureq::Agent,
    config: PyroscopeConfig,
}

impl Transport for PyroscopeTransport {
    type Batch = IngestRequest;

    fn size(batch: &IngestRequest) -> usize {
        batch.body.len() + batch.name.len()
    }

    async fn send(&mut self, batch: &IngestRequest) -> Result<u64, SendError> {
        // The worker thread is this transport's alone: blocking it blocks nothing else.
        pyroscope::send(&self.agent, &self.config, batch).map(|()| 0)
    }
}

/// A Pyroscope server.
pub struct PyroscopeSink {
    pipeline: Pipeline<PyroscopeTransport>,
    url: String,
    /// Labels of every series: the host's attributes.
    common: Attributes,
}

impl PyroscopeSink {
    /// Starts the delivery worker for `config`; `common` labels every series.
    pub fn start(
        config: PyroscopeConfig,
        limits: Limits,
        common: Attributes,
    ) -> Result<PyroscopeSink, SendError> {
        let url = config.url.clone();
        let transport = PyroscopeTransport {
            agent: pyroscope::agent(&config),
            config,
        };
        let pipeline = Pipeline::with_transport(transport, limits, pipeline::runtime()?)?;
        Ok(PyroscopeSink {
            pipeline,
            url,
            common,
        })
    }

    /// Delivery counters so far.
    pub fn stats(&self) -> PipelineStats {
        self.pipeline.stats()
    }
}

impl Sink for PyroscopeSink {
    fn describe(&self) -> String {
        format!("Pyroscope {}", self.url)
    }

    fn submit(&mut self, span: &Span<'_>) {
        let series_of = |s: &Sample| series(s, span.processes, &self.common);
        for profile in span.profiles {
            match pyroscope::requests(profile, series_of) {
                Ok(requests) => requests.into_iter().for_each(|r| self.pipeline.submit(r)),
                Err(e) => tracing::warn!(error = %e, kind = profile.kind.title(),
                    "cannot encode the profile for Pyroscope"),
            }
        }
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), ExportError> {
        let done = self.pipeline.flush(timeout);
        let tally = Tally::of(NOUN, &self.pipeline.stats(), false);
        delivery_result(&self.describe(), &tally, done, timeout)
    }

    fn close(&mut self, timeout: Duration) -> Result<(), ExportError> {
        let done = self.pipeline.close(timeout);
        let tally = Tally::of(NOUN, &self.pipeline.stats(), false);
        delivery_result(&self.describe(), &tally, done, timeout)
    }

    fn health(&self) -> Vec<HealthCounter> {
        health_rows(
            &self.pipeline.stats(),
            "emberprof.pyroscope.requests",
            "Pyroscope ingest requests, by outcome",
            "{request}",
            "emberprof.pyroscope.queue.bytes",
        )
    }

    fn healthy(&self) -> bool {
        let s = self.pipeline.stats();
        !(s.last_failed || s.misconfigured)
    }

    fn tally(&self) -> Option<Tally> {
        Some(Tally::of(NOUN, &self.pipeline.stats(), false))
    }
}

/// A sample's series: the service is its process's `service.name`, the labels its other
/// resource attributes (as sent over OTLP) and `common`.
fn series(
    s: &Sample,
    processes: &HashMap<u32, Attributes>,
    common: &Attributes,
) -> pyroscope::SeriesId {
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
}
