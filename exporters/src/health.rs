//! emberprof's own health (samples, drops by reason, export results, symbolizer cache) as
//! OTLP metrics, through the OpenTelemetry SDK and its OTLP/gRPC exporter, to the same
//! collector and with the same TLS, headers and compression as the other signals.

use std::time::Duration;

use opentelemetry::metrics::MeterProvider;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::Resource;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

use crate::delivery::{OtlpConfig, SendError};
use emberprof_model::{AttrValue, Attributes};

/// A health value: a monotonic total, or a level such as how full a map got.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HealthValue {
    /// Sent as a monotonic counter.
    Count(u64),
    /// Sent as a gauge.
    Level(f64),
}

/// One value to report, e.g. `emberprof.cpu.samples.dropped{reason=count_map_full}`.
#[derive(Clone, Debug)]
pub struct HealthCounter {
    pub name: &'static str,
    pub description: &'static str,
    pub unit: &'static str,
    pub attributes: Vec<(&'static str, String)>,
    pub value: HealthValue,
}

/// Sends the counters once (a one-shot recording's totals) and waits for the SDK to
/// export them.
pub fn send_once(
    config: &OtlpConfig,
    resource: &Attributes,
    counters: &[HealthCounter],
) -> Result<(), SendError> {
    let Some(endpoint) = &config.metrics_endpoint else {
        return Err(SendError::NoEndpoint("metrics"));
    };
    // The tonic channel needs a runtime that outlives the SDK's export thread.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| SendError::Setup(format!("starting the health-metrics runtime: {e}")))?;
    let provider = runtime.block_on(async {
        let channel = crate::delivery::channel(endpoint, config)?;
        let mut metadata = MetadataMap::new();
        for (k, v) in &config.headers {
            // The same rule as the pipeline: a header we cannot send is an error, never a
            // request that silently goes out without (say) its credentials.
            let key = AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                .map_err(|_| SendError::Setup(format!("header name {k:?} is not valid")))?;
            let value = AsciiMetadataValue::try_from(v.as_str()).map_err(|_| {
                SendError::Setup(format!(
                    "header {k:?} has a value gRPC cannot send (not ASCII, or a control character)"
                ))
            })?;
            metadata.insert(key, value);
        }
        let mut builder = opentelemetry_otlp::MetricExporter::builder()
            .with_tonic()
            .with_channel(channel)
            .with_metadata(metadata)
            .with_timeout(config.timeout);
        if config.gzip {
            builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
        }
        let exporter = builder
            .build()
            .map_err(|e| SendError::Setup(format!("health-metrics exporter: {e}")))?;
        let attrs: Vec<KeyValue> = resource
            .iter()
            .map(|(k, v)| match v {
                AttrValue::Str(s) => KeyValue::new(k.clone(), s.clone()),
                AttrValue::Int(i) => KeyValue::new(k.clone(), *i),
            })
            .collect();
        Ok::<_, SendError>(
            SdkMeterProvider::builder()
                .with_resource(Resource::builder_empty().with_attributes(attrs).build())
                .with_periodic_exporter(exporter)
                .build(),
        )
    })?;
    let meter = provider.meter("emberprof");
    for c in counters {
        let attrs: Vec<KeyValue> = c
            .attributes
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .collect();
        match c.value {
            HealthValue::Count(n) => meter
                .u64_counter(c.name)
                .with_description(c.description)
                .with_unit(c.unit)
                .build()
                .add(n, &attrs),
            HealthValue::Level(x) => meter
                .f64_gauge(c.name)
                .with_description(c.description)
                .with_unit(c.unit)
                .build()
                .record(x, &attrs),
        }
    }
    let result = provider
        .shutdown_with_timeout(config.timeout + Duration::from_secs(1))
        .map_err(|e| SendError::Setup(format!("exporting health metrics: {e}")));
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}
