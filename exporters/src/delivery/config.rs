//! OTLP exporter settings: the `OTEL_EXPORTER_OTLP_*` environment variables, which flags
//! override field by field.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use emberprof_model::{AttrValue, Attributes};

/// A setting that cannot be used, named as the user wrote it.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{name}: {problem}")]
    Invalid { name: String, problem: String },
}

fn invalid(name: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// Where and how to send OTLP data.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// gRPC endpoint for profiles (`http://host:4317` or `https://…`).
    pub profiles_endpoint: Option<String>,
    /// gRPC endpoint for metrics.
    pub metrics_endpoint: Option<String>,
    /// Extra request metadata, e.g. authentication.
    pub headers: Vec<(String, String)>,
    /// Compress requests with gzip.
    pub gzip: bool,
    /// Deadline of one export attempt.
    pub timeout: Duration,
    /// CA bundle (PEM) to verify the collector with, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Resource attributes from `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: Attributes,
    /// Bytes of encoded batches the queue may hold; the oldest are dropped beyond it.
    pub queue_bytes: usize,
    /// First retry delay; doubles per attempt up to `max_backoff`, with ±20% jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long one batch is retried before it is given up (and counted).
    pub max_retry_time: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            profiles_endpoint: None,
            metrics_endpoint: None,
            headers: Vec::new(),
            gzip: false,
            timeout: Duration::from_secs(10),
            ca_file: None,
            client_cert: None,
            client_key: None,
            resource_attributes: Vec::new(),
            queue_bytes: 32 << 20,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_retry_time: Duration::from_secs(300),
        }
    }
}

impl OtlpConfig {
    /// Reads the standard variables through `get` (so tests need not touch the process
    /// environment). `OTEL_EXPORTER_OTLP_ENDPOINT` is the base for both signals; the
    /// per-signal variables override it.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = OtlpConfig::default();
        let non_empty = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(base) = non_empty("OTEL_EXPORTER_OTLP_ENDPOINT") {
            c.set_endpoint(&base, "OTEL_EXPORTER_OTLP_ENDPOINT")?;
        }
        if let Some(e) = non_empty("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT") {
            c.profiles_endpoint = Some(check_endpoint(&e, "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT")?);
        }
        if let Some(e) = non_empty("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            c.metrics_endpoint = Some(check_endpoint(&e, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")?);
        }
        if let Some(h) = non_empty("OTEL_EXPORTER_OTLP_HEADERS") {
            c.headers = parse_headers(&h, "OTEL_EXPORTER_OTLP_HEADERS")?;
        }
        if let Some(v) = non_empty("OTEL_EXPORTER_OTLP_COMPRESSION") {
            c.gzip = parse_compression(&v, "OTEL_EXPORTER_OTLP_COMPRESSION")?;
        }
        if let Some(v) = non_empty("OTEL_EXPORTER_OTLP_TIMEOUT") {
            let ms: u64 = v.trim().parse().map_err(|_| {
                invalid(
                    "OTEL_EXPORTER_OTLP_TIMEOUT",
                    "must be milliseconds, e.g. 10000",
                )
            })?;
            c.timeout = Duration::from_millis(ms.max(1));
        }
        c.ca_file = non_empty("OTEL_EXPORTER_OTLP_CERTIFICATE").map(PathBuf::from);
        c.client_cert = non_empty("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE").map(PathBuf::from);
        c.client_key = non_empty("OTEL_EXPORTER_OTLP_CLIENT_KEY").map(PathBuf::from);
        if let Some(v) = non_empty("OTEL_RESOURCE_ATTRIBUTES") {
            // Keys must be unique in a resource: the last value given wins.
            for (k, v) in parse_pairs(&v, "OTEL_RESOURCE_ATTRIBUTES")? {
                c.resource_attributes.retain(|(key, _)| *key != k);
                c.resource_attributes.push((k, AttrValue::Str(v)));
            }
        }
        Ok(c)
    }

    /// Points both signals at one endpoint (`--otlp-endpoint`).
    pub fn set_endpoint(&mut self, endpoint: &str, name: &str) -> Result<(), ConfigError> {
        let e = check_endpoint(endpoint, name)?;
        self.profiles_endpoint = Some(e.clone());
        self.metrics_endpoint = Some(e);
        Ok(())
    }

    /// Adds `KEY=VALUE` headers (`--otlp-header`).
    pub fn add_header(&mut self, pair: &str, name: &str) -> Result<(), ConfigError> {
        self.headers.extend(parse_headers(pair, name)?);
        Ok(())
    }

    /// Sets compression from `gzip` or `none` (`--otlp-compression`).
    pub fn set_compression(&mut self, value: &str, name: &str) -> Result<(), ConfigError> {
        self.gzip = parse_compression(value, name)?;
        Ok(())
    }

    /// Whether anything is to be exported.
    pub fn enabled(&self) -> bool {
        self.profiles_endpoint.is_some() || self.metrics_endpoint.is_some()
    }
}

fn check_endpoint(e: &str, name: &str) -> Result<String, ConfigError> {
    let e = e.trim().trim_end_matches('/');
    if !(e.starts_with("http://") || e.starts_with("https://")) {
        return Err(invalid(
            name,
            format!("{e:?} must start with http:// (plaintext) or https:// (TLS)"),
        ));
    }
    if e.parse::<tonic::transport::Uri>().is_err() {
        return Err(invalid(name, format!("{e:?} is not a URL")));
    }
    Ok(e.to_string())
}

fn parse_compression(v: &str, name: &str) -> Result<bool, ConfigError> {
    match v.trim() {
        "gzip" => Ok(true),
        "none" | "" => Ok(false),
        other => Err(invalid(name, format!("{other:?}: use gzip or none"))),
    }
}

/// Headers as `parse_pairs` reads them, each one gRPC can send: checked here, so that a
/// bad one is a configuration error named for what is wrong with it.
fn parse_headers(text: &str, name: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let headers = parse_pairs(text, name)?;
    for (k, v) in &headers {
        // HTTP allows a tab inside a value; no other control character.
        if k.chars()
            .chain(v.chars())
            .any(|c| c.is_control() && c != '\t')
        {
            return Err(invalid(
                name,
                format!("header {k:?} contains a newline or another control character"),
            ));
        }
        if tonic::metadata::AsciiMetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()).is_err()
        {
            return Err(invalid(
                name,
                format!("header name {k:?} is not valid (use letters, digits, '-', '_', '.')"),
            ));
        }
        if !v.is_ascii() {
            return Err(invalid(
                name,
                format!("header {k:?} has a value that is not ASCII"),
            ));
        }
    }
    Ok(headers)
}

/// `k1=v1,k2=v2` with percent-encoded values, as the OTel specification defines.
fn parse_pairs(text: &str, name: &str) -> Result<Vec<(String, String)>, ConfigError> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| invalid(name, format!("{pair:?} is not KEY=VALUE")))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(invalid(name, format!("{pair:?} has an empty key")));
            }
            Ok((k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn reads_the_standard_variables() {
        let c = OtlpConfig::from_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317/"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "https://metrics:4317",
            ),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20abc, x-tenant=t1",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "deployment.environment=dev,deployment.environment=prod",
            ),
        ]))
        .unwrap();
        assert_eq!(
            c.profiles_endpoint.as_deref(),
            Some("http://collector:4317")
        );
        assert_eq!(c.metrics_endpoint.as_deref(), Some("https://metrics:4317"));
        assert_eq!(
            c.headers,
            [
                ("authorization".to_string(), "Bearer abc".to_string()),
                ("x-tenant".to_string(), "t1".to_string())
            ]
        );
        assert!(c.gzip);
        assert_eq!(c.timeout, Duration::from_millis(2500));
        assert_eq!(
            c.resource_attributes,
            [(
                "deployment.environment".to_string(),
                AttrValue::Str("prod".into())
            )]
        );
        assert!(c.enabled());
    }

    #[test]
    fn nothing_set_means_disabled() {
        let c = OtlpConfig::from_env(env(&[])).unwrap();
        assert!(!c.enabled());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("OTEL_EXPORTER_OTLP_ENDPOINT: "), "{e}");
        let e = OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("use gzip or none"), "{e}");
        let e = OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("KEY=VALUE"), "{e}");
        assert!(OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")])).is_err());
    }

    #[test]
    fn headers_grpc_cannot_send_are_named_for_their_fault() {
        let mut c = OtlpConfig::default();
        for (pair, fault) in [
            ("authorization=Bearer x\nX-Evil: 1", "contains a newline"),
            ("authorization=Bearer%0D%0Ax", "contains a newline"),
            ("authorization=a\u{7f}b", "another control character"),
            ("bad header=x", "header name \"bad header\" is not valid"),
            ("authorization=caf\u{e9}", "not ASCII"),
        ] {
            let e = c.add_header(pair, "--otlp-header").unwrap_err().to_string();
            assert!(e.starts_with("--otlp-header: "), "{e}");
            assert!(e.contains(fault), "{pair:?}: {e}");
            assert!(
                !e.contains("Bearer"),
                "the value stays out of the message: {e}"
            );
        }
        let e = OtlpConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=x%0Ay")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("contains a newline"), "{e}");
        c.add_header("authorization=Bearer\tx, x-tenant=t1", "--otlp-header")
            .unwrap();
        assert_eq!(c.headers.len(), 2);
    }

    #[test]
    fn percent_decoding_keeps_bad_escapes() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%é1"), "%é1");
    }
}
