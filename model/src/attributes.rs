//! Attributes of a process (its resource) or a series: ordered keys and values.

/// A string or integer attribute value.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttrValue {
    Str(String),
    Int(i64),
}

impl std::fmt::Display for AttrValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttrValue::Str(s) => f.write_str(s),
            AttrValue::Int(i) => write!(f, "{i}"),
        }
    }
}

/// Ordered (key, value) attributes, keys unique.
pub type Attributes = Vec<(String, AttrValue)>;
