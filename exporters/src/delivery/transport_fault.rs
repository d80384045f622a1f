//! What went wrong below gRPC when a request got no answer. tonic reports a reset connection
//! as `Unknown: transport error` and an HTTP/1 server as `Internal: h2 protocol error`: as
//! status codes those look permanent, but the first is a collector restarting and the second
//! a wrong port. The error chain under the status says which, and what to fix.

use std::error::Error as StdError;

/// A request that failed on the way, not in the collector.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TransportFault {
    /// No answer: refused, reset, closed or timed out. Sending again may work.
    Unreachable(String),
    /// The endpoint answers, but not as the URL says it should: a setting to fix.
    Misconfigured(String),
}

/// The fault under `status`, if the status stands for a transport failure rather than a
/// collector's answer.
pub(crate) fn transport_fault(status: &tonic::Status) -> Option<TransportFault> {
    let mut transport = false;
    let mut innermost: Option<&(dyn StdError + 'static)> = None;
    let mut cause = StdError::source(status);
    while let Some(e) = cause {
        if let Some(problem) = misconfiguration(e) {
            return Some(TransportFault::Misconfigured(problem));
        }
        transport |=
            e.is::<tonic::transport::Error>() || e.is::<h2::Error>() || e.is::<std::io::Error>();
        innermost = Some(e);
        cause = e.source();
    }
    let innermost = innermost?;
    transport.then(|| TransportFault::Unreachable(innermost.to_string()))
}

/// A configuration mistake `e` shows, said with its fix.
fn misconfiguration(e: &(dyn StdError + 'static)) -> Option<String> {
    if let Some(h) = e.downcast_ref::<h2::Error>() {
        // Our HTTP/2 client read the answer to its preface as a frame and found it
        // malformed: whatever answered is not an HTTP/2 cleartext server.
        let garbled = matches!(
            h.reason(),
            Some(h2::Reason::FRAME_SIZE_ERROR | h2::Reason::PROTOCOL_ERROR)
        );
        if h.is_go_away() && h.is_library() && garbled {
            return Some(
                "the endpoint does not speak gRPC (HTTP/2): an HTTP/1 server such as \
                 OTLP/HTTP (port 4318; gRPC is 4317), or a TLS port (use https://)"
                    .to_string(),
            );
        }
    }
    let tls = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .or_else(|| e.downcast_ref::<rustls::Error>())?;
    Some(match tls {
        rustls::Error::InvalidMessage(_) => format!(
            "the TLS handshake failed ({tls}): the endpoint does not speak TLS; for a \
             plaintext collector use http://"
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the collector's TLS certificate is not accepted ({tls}): give its CA with \
             --otlp-ca (OTEL_EXPORTER_OTLP_CERTIFICATE), or check the endpoint's host name"
        ),
        _ => format!(
            "the TLS handshake failed ({tls}): check --otlp-ca and, if the collector asks \
             for one, --otlp-client-cert/--otlp-client-key"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: impl StdError + Send + Sync + 'static) -> tonic::Status {
        tonic::Status::from_error(Box::new(e))
    }

    #[test]
    fn a_refused_or_reset_connection_is_unreachable() {
        let reset = std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        );
        assert_eq!(
            transport_fault(&status(reset)),
            Some(TransportFault::Unreachable(
                "stream closed because of a broken pipe".into()
            ))
        );
    }

    #[test]
    fn a_plaintext_peer_under_tls_is_a_misconfiguration_naming_http() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        match transport_fault(&status(tls)) {
            Some(TransportFault::Misconfigured(m)) => {
                assert!(
                    m.contains("does not speak TLS") && m.contains("http://"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_untrusted_certificate_names_the_ca_setting() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        match transport_fault(&status(tls)) {
            Some(TransportFault::Misconfigured(m)) => assert!(m.contains("--otlp-ca"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_collector_status_is_no_transport_fault() {
        assert_eq!(transport_fault(&tonic::Status::unavailable("busy")), None);
        assert_eq!(
            transport_fault(&tonic::Status::invalid_argument("bad")),
            None
        );
    }
}
