//! OTLP/gRPC: profiles, latency histograms and emberprof's health over one retrying,
//! byte-bounded delivery pipeline, every span.

use std::time::Duration;

use emberprof_model::{AttrValue, Attributes, HealthCounter, HealthValue};

use super::tally::{delivery_result, health_rows};
use super::{Sink, Span, Tally};
use crate::delivery::{Batch, OtlpConfig, Pipeline, PipelineStats, SendError};
use crate::otlp::metrics::{self, Temporality};
use crate::otlp::{health, profiles};
use crate::ExportError;

/// What the summary calls a delivered request.
const NOUN: &str = "batches sent";

/// Largest profiles request sent: collectors refuse gRPC messages over 4 MiB by default.
const MAX_REQUEST_BYTES: usize = 3 << 20;

/// An OTLP collector (or Pyroscope's OTLP endpoint) and how to reach it.
pub struct OtlpSink {
    pipeline: Pipeline,
    config: OtlpConfig,
    endpoint: String,
    temporality: Temporality,
    /// Added to every resource: the host's attributes and `OTEL_RESOURCE_ATTRIBUTES`.
    common: Attributes,
}

impl OtlpSink {
    /// Starts the delivery pipeline for `config`; `common` goes into every resource.
    pub fn start(
        config: OtlpConfig,
        temporality: Temporality,
        common: Attributes,
    ) -> Result<OtlpSink, SendError> {
        let endpoint = config
            .profiles_endpoint
            .clone()
            .or_else(|| config.metrics_endpoint.clone())
            .unwrap_or_default();
        Ok(OtlpSink {
            pipeline: Pipeline::start(config.clone())?,
            config,
            endpoint,
            temporality,
            common,
        })
    }

    /// Delivery counters so far.
    pub fn stats(&self) -> PipelineStats {
        self.pipeline.stats()
    }

    /// The resource of what emberprof reports about itself and the host.
    fn own_resource(&self) -> Attributes {
        let mut resource = self.common.clone();
        resource.retain(|(k, _)| k != "service.name");
        resource.insert(
            0,
            ("service.name".into(), AttrValue::Str("emberprof".into())),
        );
        resource
    }
}

impl Sink for OtlpSink {
    fn describe(&self) -> String {
        format!("OTLP {}", self.endpoint)
    }

    fn submit(&mut self, span: &Span<'_>) {
        if self.config.profiles_endpoint.is_some() && !span.profiles.is_empty() {
            let refs: Vec<_> = span.profiles.iter().collect();
            for req in profiles::requests(&refs, span.processes, &self.common, MAX_REQUEST_BYTES) {
                self.pipeline.submit(Batch::Profiles(req));
            }
        }
        if self.config.metrics_endpoint.is_none() {
            return;
        }
        let resource = self.own_resource();
        if !span.histograms.is_empty() || !span.counters.is_empty() {
            let start = match self.temporality {
                Temporality::Delta => span.start,
                Temporality::Cumulative => span.run_start,
            };
            let req = metrics::request(
                span.histograms,
                span.counters,
                &resource,
                start,
                span.end,
                self.temporality,
            );
            self.pipeline.submit(Batch::Metrics(req));
        }
        let mut own = span.health.to_vec();
        own.extend(self.health());
        if !own.is_empty() {
            let req = health::request(&own, &resource, span.run_start, span.end);
            self.pipeline.submit(Batch::Metrics(req));
        }
    }

    fn flush(&mut self, timeout: Duration) -> Result<(), ExportError> {
        let done = self.pipeline.flush(timeout);
        let tally = Tally::of(NOUN, &self.pipeline.stats(), true);
        delivery_result(&self.describe(), &tally, done, timeout)
    }

    fn close(&mut self, timeout: Duration) -> Result<(), ExportError> {
        let done = self.pipeline.close(timeout);
        let tally = Tally::of(NOUN, &self.pipeline.stats(), true);
        delivery_result(&self.describe(), &tally, done, timeout)
    }

    fn health(&self) -> Vec<HealthCounter> {
        let s = self.pipeline.stats();
        let mut out = health_rows(
            &s,
            "emberprof.export.batches",
            "OTLP export batches, by outcome",
            "{batch}",
            "emberprof.export.queue.bytes",
        );
        out.push(HealthCounter {
            name: "emberprof.export.latency.last",
            description: "Seconds the last delivered batch took, retries included",
            unit: "s",
            attributes: Vec::new(),
            value: HealthValue::Level(s.last_latency.as_secs_f64()),
        });
        out.push(HealthCounter {
            name: "emberprof.export.latency.milliseconds",
            description: "Milliseconds spent delivering batches, in total",
            unit: "ms",
            attributes: Vec::new(),
            value: HealthValue::Count(
                u64::try_from(s.total_latency.as_millis()).unwrap_or(u64::MAX),
            ),
        });
        out.push(HealthCounter {
            name: "emberprof.export.queue.limit",
            description: "Bytes the export queue may hold",
            unit: "By",
            attributes: Vec::new(),
            value: HealthValue::Level(self.config.queue_bytes as f64),
        });
        out
    }

    fn healthy(&self) -> bool {
        let s = self.pipeline.stats();
        !(s.last_failed || s.misconfigured)
    }

    fn delta_histograms(&self) -> bool {
        self.temporality == Temporality::Delta
    }

    fn tally(&self) -> Option<Tally> {
        Some(Tally::of(NOUN, &self.pipeline.stats(), true))
    }
}
