//! Latency histograms as OTLP exponential histograms at scale 0, with the kernel's bucket
//! counts carried over exactly.
//!
//! An OpenTelemetry `ExponentialHistogramDataPoint` at scale 0 has base 2 and bucket index
//! `i` covering `(2^i, 2^(i+1)]` (lower bound exclusive, upper inclusive). The model's slot
//! `s` covers `(2^(s-1), 2^s]` ns, so slot `s` is OTLP index `s - 1`:
//! - `zero_count` = [`Log2Histogram::zero_count`]; `zero_threshold` = 0;
//! - `positive.offset` = -1 + the first non-empty slot, `positive.bucket_counts` = the
//!   slots from there to the last non-empty one; `negative` is empty (no negative durations);
//! - `count` = [`Log2Histogram::count`], `sum` = [`Log2Histogram::sum_ns`].

use std::time::{SystemTime, UNIX_EPOCH};

use emberprof_model::Log2Histogram;

use super::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use super::proto::metrics::v1 as pb;
use super::proto::resource::v1::Resource;
use super::resource::key_values;
use super::scope;
use emberprof_model::Attributes;

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

/// One event count series to export (probe hits, TCP retransmits): a monotonic sum.
#[derive(Clone, Debug)]
pub struct CounterPoint {
    /// Metric name, e.g. `emberprof.probe.hits`.
    pub metric: String,
    pub description: String,
    /// UCUM unit, e.g. `{hit}`.
    pub unit: String,
    pub attributes: Attributes,
    pub value: u64,
}

/// Builds the request: one metric per name, one data point per series; histograms in `ns`,
/// counters as monotonic sums of the same temporality.
pub fn request(
    points: &[HistogramPoint],
    counters: &[CounterPoint],
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
        let otlp = buckets(&p.histogram);
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
    for c in counters {
        let temporality = match temporality {
            Temporality::Cumulative => pb::AggregationTemporality::Cumulative,
            Temporality::Delta => pb::AggregationTemporality::Delta,
        } as i32;
        let point = pb::NumberDataPoint {
            attributes: key_values(&c.attributes),
            start_time_unix_nano: nanos(start),
            time_unix_nano: nanos(now),
            value: Some(pb::number_data_point::Value::AsInt(
                i64::try_from(c.value).unwrap_or(i64::MAX),
            )),
            ..Default::default()
        };
        match metrics.iter_mut().find(|m| m.name == c.metric) {
            Some(pb::Metric {
                data: Some(pb::metric::Data::Sum(s)),
                ..
            }) => s.data_points.push(point),
            _ => metrics.push(pb::Metric {
                name: c.metric.clone(),
                description: c.description.clone(),
                unit: c.unit.clone(),
                data: Some(pb::metric::Data::Sum(pb::Sum {
                    data_points: vec![point],
                    aggregation_temporality: temporality,
                    is_monotonic: true,
                })),
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

/// Buckets of an OTLP exponential histogram data point (scale 0, positive range only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExponentialBuckets {
    /// Always 0: base 2.
    pub scale: i32,
    /// Count of zero durations.
    pub zero_count: u64,
    /// OTLP index of `bucket_counts[0]`.
    pub offset: i32,
    /// Counts of consecutive buckets from `offset`.
    pub bucket_counts: Vec<u64>,
    /// Total count, zero bucket included.
    pub count: u64,
    /// Sum of all durations, ns.
    pub sum: u64,
}

/// A histogram as OTLP buckets at scale 0 (see the module docs).
pub fn buckets(h: &Log2Histogram) -> ExponentialBuckets {
    let slots = h.slots();
    let first = slots.iter().position(|&c| c != 0);
    let last = slots.iter().rposition(|&c| c != 0);
    let (offset, bucket_counts) = match (first, last) {
        (Some(first), Some(last)) => (first as i32 - 1, slots[first..=last].to_vec()),
        _ => (0, Vec::new()),
    };
    ExponentialBuckets {
        scale: 0,
        zero_count: h.zero_count(),
        offset,
        bucket_counts,
        count: h.count(),
        sum: h.sum_ns(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberprof_model::AttrValue;
    use std::time::Duration;

    /// OTLP's own definition at scale 0: the index of the bucket (2^i, 2^(i+1)] holding v,
    /// computed independently of the model's slots with exact integer powers.
    fn otlp_index(v: u64) -> i32 {
        assert!(v > 0);
        let mut i = -1i32;
        // Smallest i with v <= 2^(i+1).
        while u128::from(v) > 1u128 << (i + 1) {
            i += 1;
        }
        i
    }

    #[test]
    fn slot_is_otlp_index_plus_one() {
        let mut values = vec![1u64, 2, 3, 4, 5, 1000, 1023, 1024, 1025, 10_000_000];
        for k in 1..62 {
            values.extend([(1u64 << k) - 1, 1u64 << k, (1u64 << k) + 1]);
        }
        for v in values {
            let mut h = Log2Histogram::new();
            h.record(v);
            let b = buckets(&h);
            assert_eq!(b.offset, otlp_index(v), "value {v}");
            assert_eq!(b.bucket_counts, [1], "value {v}");
        }
    }

    #[test]
    fn otlp_buckets_round_trip_boundaries() {
        let mut h = Log2Histogram::new();
        for v in [0, 3, 4, 5, 1024, 1025] {
            h.record(v);
        }
        let otlp = buckets(&h);
        assert_eq!(otlp.scale, 0);
        assert_eq!(otlp.zero_count, 1);
        assert_eq!(otlp.count, 6);
        assert_eq!(otlp.sum, 3 + 4 + 5 + 1024 + 1025);
        // 3 and 4 are in (2, 4] = index 1; 5 in (4, 8] = index 2; 1024 in index 9; 1025 in 10.
        assert_eq!(otlp.offset, 1);
        let at = |index: i32| otlp.bucket_counts[(index - otlp.offset) as usize];
        assert_eq!(at(1), 2);
        assert_eq!(at(2), 1);
        assert_eq!(at(9), 1);
        assert_eq!(at(10), 1);
        assert_eq!(
            otlp.bucket_counts.iter().sum::<u64>() + otlp.zero_count,
            otlp.count
        );
        assert!(buckets(&Log2Histogram::new()).bucket_counts.is_empty());
    }

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
        let req = request(
            &points,
            &[],
            &Vec::new(),
            start,
            now,
            Temporality::Cumulative,
        );
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

        let delta = request(&points, &[], &Vec::new(), start, now, Temporality::Delta);
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

    #[test]
    fn counters_are_monotonic_sums_of_the_histograms_temporality() {
        let counters = vec![
            CounterPoint {
                metric: "emberprof.probe.hits".into(),
                description: "d".into(),
                unit: "{hit}".into(),
                attributes: vec![("emberprof.probe".into(), AttrValue::Str("a".into()))],
                value: 30,
            },
            CounterPoint {
                metric: "emberprof.probe.hits".into(),
                description: "d".into(),
                unit: "{hit}".into(),
                attributes: vec![("emberprof.probe".into(), AttrValue::Str("b".into()))],
                value: u64::MAX,
            },
        ];
        let start = UNIX_EPOCH + Duration::from_secs(100);
        let now = start + Duration::from_secs(10);
        for (temporality, want) in [
            (Temporality::Delta, pb::AggregationTemporality::Delta),
            (
                Temporality::Cumulative,
                pb::AggregationTemporality::Cumulative,
            ),
        ] {
            let req = request(&[], &counters, &Vec::new(), start, now, temporality);
            let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
            assert_eq!(metrics.len(), 1);
            assert_eq!(metrics[0].unit, "{hit}");
            let Some(pb::metric::Data::Sum(sum)) = &metrics[0].data else {
                panic!("not a sum");
            };
            assert!(sum.is_monotonic);
            assert_eq!(sum.aggregation_temporality, want as i32);
            let values: Vec<_> = sum.data_points.iter().map(|p| p.value).collect();
            assert_eq!(
                values,
                [
                    Some(pb::number_data_point::Value::AsInt(30)),
                    // Saturates rather than wrapping negative.
                    Some(pb::number_data_point::Value::AsInt(i64::MAX)),
                ]
            );
            assert_eq!(sum.data_points[0].start_time_unix_nano, 100_000_000_000);
        }
    }
}
