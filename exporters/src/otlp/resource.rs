//! Attribute lists as the exporters receive them, before they become OTLP key-values.

use super::proto::common::v1::{any_value, AnyValue, KeyValue};

/// A string or integer attribute value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttrValue {
    Str(String),
    Int(i64),
}

impl AttrValue {
    pub(crate) fn to_any(&self) -> AnyValue {
        AnyValue {
            value: Some(match self {
                AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
                AttrValue::Int(i) => any_value::Value::IntValue(*i),
            }),
        }
    }
}

/// Ordered (key, value) attributes, keys unique.
pub type Attributes = Vec<(String, AttrValue)>;

pub(crate) fn key_values(attrs: &Attributes) -> Vec<KeyValue> {
    attrs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(v.to_any()),
            ..Default::default()
        })
        .collect()
}
