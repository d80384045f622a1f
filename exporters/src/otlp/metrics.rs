//! Latency histograms as OTLP exponential histograms at scale 0, with the kernel's bucket
//! counts carried over exactly (see `emberprof_probes::histogram` for the mapping).

use std::time::{SystemTime, UNIX_EPOCH};

use emberprof_probes::Log2Histogram;

use super::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use super::proto::metrics::v1 as pb;
use super::proto::resource::v1::Resource;
use super::resource::key_values;
use super::{scope, Attributes};

/// OTLP aggregation temporality of the exported histograms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Temporality {
    /// Totals since `start` (the OTLP default for most backends).
    Cumulative,
    /// Only what happened since the previous export.
    Delta,
}

/// One histogram series to export.
#[derive(Clone, Debug)]
pub struct HistogramPoint {
    /// Metric name, e.g. `emberprof.sched.runqueue.latency`.
    pub metric: String,
    /// Metric description.
    pub description: String,
    /// Attributes of the data point (cgroup, disk, direction, syscall).
    pub attributes: Attributes,
    pub histogram: Log2Histogram,
}

/// Builds the request: one metric per name, one data point per series, unit `ns`.
pub fn request(
    points: &[HistogramPoint],
    resource: &Attributes,
    start: SystemTime,
    now: SystemTime,
    temporality: Temporality,
) -> ExportMetricsServiceRequest {
    let nanos = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    let mut metrics: Vec<pb::Metric> = Vec::new();
    for p in points {
        let otlp = p.histogram.to_otlp();
        let point = pb::ExponentialHistogramDataPoint {
            attributes: key_values(&p.attributes),
            start_time_unix_nano: nanos(start),
            time_unix_nano: nanos(now),
            count: otlp.count,
            sum: Some(otlp.sum as f64),
            scale: otlp.scale,
            zero_count: otlp.zero_count,
            positive: Some(pb::exponential_histogram_data_point::Buckets {
                offset: otlp.offset,
                bucket_counts: otlp.bucket_counts,
            }),
            negative: None,
            flags: 0,
            exemplars: Vec::new(),
            min: None,
            max: None,
            zero_threshold: 0.0,
        };
        let temporality = match temporality {
            Temporality::Cumulative => pb::AggregationTemporality::Cumulative,
            Temporality::Delta => pb::AggregationTemporality::Delta,
        } as i32;
        match metrics.iter_mut().find(|m| m.name == p.metric) {
            Some(pb::Metric {
                data: Some(pb::metric::Data::ExponentialHistogram(h)),
                ..
            }) => h.data_points.push(point),
            _ => metrics.push(pb::Metric {
                name: p.metric.clone(),
                description: p.description.clone(),
                unit: "ns".to_string(),
                data: Some(pb::metric::Data::ExponentialHistogram(
                    pb::ExponentialHistogram {
                        data_points: vec![point],
                        aggregation_temporality: temporality,
                    },
                )),
                metadata: Vec::new(),
            }),
        }
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![pb::ResourceMetrics {
            resource: Some(Resource {
                attributes: key_values(resource),
                ..Default::default()
            }),
            scope_metrics: vec![pb::ScopeMetrics {
                scope: Some(scope()),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::AttrValue;
    use std::time::Duration;

    #[test]
    fn kernel_buckets_are_carried_over_exactly() {
        let mut h = Log2Histogram::new();
        for v in [0, 3, 4, 5, 10_000_000, 10_000_000] {
            h.record(v);
        }
        let points = vec![
            HistogramPoint {
                metric: "emberprof.syscall.latency".into(),
                description: "d".into(),
                attributes: vec![("syscall.name".into(), AttrValue::Str("nanosleep".into()))],
                histogram: h.clone(),
            },
            HistogramPoint {
                metric: "emberprof.syscall.latency".into(),
                description: "d".into(),
                attributes: vec![("syscall.name".into(), AttrValue::Str("read".into()))],
                histogram: Log2Histogram::new(),
            },
        ];
        let start = UNIX_EPOCH + Duration::from_secs(100);
        let now = start + Duration::from_secs(10);
        let req = request(&points, &Vec::new(), start, now, Temporality::Cumulative);
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 1);
        let Some(pb::metric::Data::ExponentialHistogram(eh)) = &metrics[0].data else {
            panic!("not an exponential histogram");
        };
        assert_eq!(
            eh.aggregation_temporality,
            pb::AggregationTemporality::Cumulative as i32
        );
        assert_eq!(eh.data_points.len(), 2);
        let p = &eh.data_points[0];
        assert_eq!((p.scale, p.zero_count, p.count), (0, 1, 6));
        let buckets = p.positive.as_ref().unwrap();
        // Bucket i is (2^i, 2^(i+1)]: 3 and 4 in 1, 5 in 2, 10 ms in 23.
        let count_at = |i: i32| {
            buckets
                .bucket_counts
                .get((i - buckets.offset) as usize)
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(buckets.offset, 1);
        assert_eq!(count_at(1), 2);
        assert_eq!(count_at(2), 1);
        assert_eq!(count_at(23), 2);
        assert_eq!(p.sum, Some(20_000_012.0));
        assert_eq!(p.start_time_unix_nano, 100_000_000_000);
        assert_eq!(p.time_unix_nano, 110_000_000_000);
        assert_eq!(metrics[0].unit, "ns");

        let delta = request(&points, &Vec::new(), start, now, Temporality::Delta);
        let Some(pb::metric::Data::ExponentialHistogram(eh)) =
            &delta.resource_metrics[0].scope_metrics[0].metrics[0].data
        else {
            panic!("not an exponential histogram");
        };
        assert_eq!(
            eh.aggregation_temporality,
            pb::AggregationTemporality::Delta as i32
        );
    }
}
