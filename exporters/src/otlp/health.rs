//! emberprof's own health as OTLP metrics: totals as cumulative monotonic sums since the
//! run started, levels as gauges, one metric per name with a data point per attribute set.

use std::time::{SystemTime, UNIX_EPOCH};

use emberprof_model::{Attributes, HealthCounter, HealthValue};

use super::proto::collector::metrics::v1::ExportMetricsServiceRequest;
use super::proto::common::v1::{any_value, AnyValue, KeyValue};
use super::proto::metrics::v1 as pb;
use super::proto::resource::v1::Resource;
use super::resource::key_values;
use super::scope;

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The request for `counters` of the run that started at `start`, as they are at `now`.
pub fn request(
    counters: &[HealthCounter],
    resource: &Attributes,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let mut metrics: Vec<pb::Metric> = Vec::new();
    for c in counters {
        let attributes = c
            .attributes
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(v.clone())),
                }),
                ..Default::default()
            })
            .collect();
        let point = |value| pb::NumberDataPoint {
            attributes,
            start_time_unix_nano: nanos(start),
            time_unix_nano: nanos(now),
            value: Some(value),
            ..Default::default()
        };
        let (point, data) = match c.value {
            HealthValue::Count(n) => (
                point(pb::number_data_point::Value::AsInt(
                    i64::try_from(n).unwrap_or(i64::MAX),
                )),
                pb::metric::Data::Sum(pb::Sum {
                    data_points: Vec::new(),
                    aggregation_temporality: pb::AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
            ),
            HealthValue::Level(x) => (
                point(pb::number_data_point::Value::AsDouble(x)),
                pb::metric::Data::Gauge(pb::Gauge {
                    data_points: Vec::new(),
                }),
            ),
        };
        let metric = match metrics.iter_mut().find(|m| m.name == c.name) {
            Some(m) => m,
            None => {
                metrics.push(pb::Metric {
                    name: c.name.to_string(),
                    description: c.description.to_string(),
                    unit: c.unit.to_string(),
                    data: Some(data),
                    metadata: Vec::new(),
                });
                let last = metrics.len() - 1;
                &mut metrics[last]
            }
        };
        match &mut metric.data {
            Some(pb::metric::Data::Sum(s)) => s.data_points.push(point),
            Some(pb::metric::Data::Gauge(g)) => g.data_points.push(point),
            _ => {}
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
    use std::time::Duration;

    #[test]
    fn totals_are_monotonic_sums_and_levels_gauges() {
        let counters = vec![
            HealthCounter {
                name: "emberprof.cpu.samples.dropped",
                description: "d",
                unit: "{sample}",
                attributes: vec![("reason", "count_map_full".into())],
                value: HealthValue::Count(3),
            },
            HealthCounter {
                name: "emberprof.cpu.samples.dropped",
                description: "d",
                unit: "{sample}",
                attributes: vec![("reason", "other".into())],
                value: HealthValue::Count(1),
            },
            HealthCounter {
                name: "emberprof.map.fill",
                description: "f",
                unit: "1",
                attributes: vec![],
                value: HealthValue::Level(0.25),
            },
        ];
        let start = UNIX_EPOCH + Duration::from_secs(100);
        let req = request(
            &counters,
            &Vec::new(),
            start,
            start + Duration::from_secs(5),
        );
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        assert_eq!(metrics.len(), 2);
        let Some(pb::metric::Data::Sum(sum)) = &metrics[0].data else {
            panic!("a sum: {:?}", metrics[0]);
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points.len(), 2);
        assert_eq!(sum.data_points[0].start_time_unix_nano, 100_000_000_000);
        assert_eq!(
            sum.data_points[0].value,
            Some(pb::number_data_point::Value::AsInt(3))
        );
        let Some(pb::metric::Data::Gauge(g)) = &metrics[1].data else {
            panic!("a gauge");
        };
        assert_eq!(
            g.data_points[0].value,
            Some(pb::number_data_point::Value::AsDouble(0.25))
        );
    }
}
