//! The model's attributes as OTLP key-values.

use emberprof_model::{AttrValue, Attributes};

use super::proto::common::v1::{any_value, AnyValue, KeyValue};

/// An attribute value as OTLP's `AnyValue`.
pub(crate) fn to_any(v: &AttrValue) -> AnyValue {
    AnyValue {
        value: Some(match v {
            AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
            AttrValue::Int(i) => any_value::Value::IntValue(*i),
        }),
    }
}

pub(crate) fn key_values(attrs: &Attributes) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(to_any(v)),
            ..Default::default()
        })
        .collect()
}
