//! Reads the agent's YAML configuration file into its keys and plain values, refusing a
//! hostile or mistaken file before it can make emberprof allocate much: the file's size is
//! checked before it is read, and the parser feeds a visitor that stops a list at its bound
//! (no tree of the whole document is built first).

use std::fmt;
use std::io::Read;
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Largest configuration file read: real ones are a few KiB.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A YAML scalar as the command line will see it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    /// Strings, and numbers as written in decimal.
    Text(String),
}

/// The value of one key: collections hold only scalars (one level, as flags take them).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Scalar),
    List(Vec<Scalar>),
    Map(Vec<(Scalar, Scalar)>),
}

/// Reads `path`: its keys in file order with their values. `max_items` gives, for a key, how
/// many list items or map entries it may hold, or the error for a key that is not accepted.
/// Errors are one line, without the file's name.
pub fn read(
    path: &Path,
    max_items: &dyn Fn(&str) -> Result<usize, String>,
) -> Result<Vec<(String, Value)>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    // The size on disk first; then a bounded read, for files whose size is not known
    // beforehand (pipes, /proc).
    if let Ok(meta) = file.metadata() {
        if meta.len() > MAX_FILE_BYTES {
            return Err(too_large());
        }
    }
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_large());
    }
    parse(&text, max_items)
}

fn too_large() -> String {
    format!(
        "larger than {} KiB: a configuration file is a few KiB (is this the right file?)",
        MAX_FILE_BYTES >> 10
    )
}

/// Parses the text of a configuration file (see [`read`]).
pub fn parse(
    text: &str,
    max_items: &dyn Fn(&str) -> Result<usize, String>,
) -> Result<Vec<(String, Value)>, String> {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    // What serde_yaml did: YAML 1.2 booleans only (`yes`, `on`, `n` stay strings), and
    // numbers that are not plain decimals stay as written.
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options.non_finite_float_policy = serde_saphyr::NonFiniteFloatPolicy::AsString;
    // Duplicates are found (and named) by the visitor below.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    let file = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        Document { max_items }.deserialize(de)
    })
    .map_err(|e| match e.without_snippet() {
        // The visitor's own messages name the key.
        serde_saphyr::Error::Message { .. } => e.to_string(),
        serde_saphyr::Error::MultipleDocuments { location, .. } => format!(
            "not valid YAML: more than one document (another starts at line {}): keep one",
            location.line()
        ),
        _ => format!("not valid YAML: {e}"),
    })?;
    Ok(file.unwrap_or_default())
}

/// The whole document: a mapping of keys to values, or nothing at all.
struct Document<'a> {
    max_items: &'a dyn Fn(&str) -> Result<usize, String>,
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = Option<Vec<(String, Value)>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = Option<Vec<(String, Value)>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of keys to values")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out: Vec<(String, Value)> = Vec::new();
        let as_key = Item {
            key: "",
            what: "keys",
        };
        while let Some(key) = map.next_key_seed(as_key)? {
            let Scalar::Text(key) = key else {
                return Err(de::Error::custom("keys must be strings"));
            };
            let limit = (self.max_items)(&key).map_err(de::Error::custom)?;
            if out.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("key `{key}` is given twice")));
            }
            let value = map.next_value_seed(Entry { key: &key, limit })?;
            out.push((key, value));
        }
        Ok(Some(out))
    }
}

/// The value of one key, with its bound.
struct Entry<'a> {
    key: &'a str,
    limit: usize,
}

impl Entry<'_> {
    fn too_many<E: de::Error>(&self) -> E {
        E::custom(format!(
            "key `{}`: more than {} items (the most it accepts)",
            self.key, self.limit
        ))
    }
}

impl<'de> DeserializeSeed<'de> for Entry<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entry<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value, a list or a map")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let item = Item {
            key: self.key,
            what: "list items",
        };
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(item)? {
            if items.len() == self.limit {
                return Err(self.too_many());
            }
            items.push(v);
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let item = Item {
            key: self.key,
            what: "map entries",
        };
        let mut entries: Vec<(Scalar, Scalar)> = Vec::new();
        while let Some(k) = map.next_key_seed(item)? {
            if entries.len() == self.limit {
                return Err(self.too_many());
            }
            if entries.iter().any(|(key, _)| *key == k) {
                return Err(de::Error::custom(format!(
                    "key `{}`: an entry is given twice",
                    self.key
                )));
            }
            let v = map.next_value_seed(item)?;
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::Null))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::Text(v.to_string())))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::Text(v.to_string())))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::Text(v.to_string())))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Scalar(Scalar::Text(v.to_string())))
    }
}

/// A scalar inside a list or a map (`what`) of `key`, or a top-level key (`key` empty):
/// collections are refused.
#[derive(Clone, Copy)]
struct Item<'a> {
    key: &'a str,
    what: &'static str,
}

impl Item<'_> {
    fn refuse<E: de::Error>(self) -> E {
        if self.key.is_empty() {
            E::custom("keys must be strings")
        } else {
            E::custom(format!(
                "key `{}`: {} must be plain values",
                self.key, self.what
            ))
        }
    }
}

impl<'de> DeserializeSeed<'de> for Item<'_> {
    type Value = Scalar;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Item<'_> {
    type Value = Scalar;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a plain value")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
        Err(self.refuse())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<Scalar, A::Error> {
        Err(self.refuse())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Text(v.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_key(_: &str) -> Result<usize, String> {
        Ok(3)
    }

    fn text(s: &str) -> Scalar {
        Scalar::Text(s.to_string())
    }

    #[test]
    fn scalars_read_as_serde_yaml_did() {
        let got = parse(
            "a: 30s\nb: 49\nc: true\nd: yes\ne: ~\nf:\ng: 2.5\nh: '100'\ni: 0755\nj: 1_000\nk: -19\n\
             l: [1, x]\nm: {authorization: Bearer x}\nn: on\n",
            &|_| Ok(3),
        )
        .unwrap();
        let want = [
            ("a", Value::Scalar(text("30s"))),
            ("b", Value::Scalar(text("49"))),
            ("c", Value::Scalar(Scalar::Bool(true))),
            ("d", Value::Scalar(text("yes"))),
            ("e", Value::Scalar(Scalar::Null)),
            ("f", Value::Scalar(Scalar::Null)),
            ("g", Value::Scalar(text("2.5"))),
            ("h", Value::Scalar(text("100"))),
            ("i", Value::Scalar(text("0755"))),
            ("j", Value::Scalar(text("1_000"))),
            ("k", Value::Scalar(text("-19"))),
            ("l", Value::List(vec![text("1"), text("x")])),
            (
                "m",
                Value::Map(vec![(text("authorization"), text("Bearer x"))]),
            ),
            ("n", Value::Scalar(text("on"))),
        ];
        let want: Vec<(String, Value)> =
            want.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(got, want);
        assert_eq!(parse("", &any_key).unwrap(), []);
        assert_eq!(parse("# nothing\n", &any_key).unwrap(), []);
    }

    #[test]
    fn bad_documents_are_one_line_errors() {
        for (text, what) in [
            ("a: [\n", "not valid YAML: unclosed"),
            (
                "a: 1\n---\nb: 2\n",
                "not valid YAML: more than one document (another starts at line 3)",
            ),
            ("[1, 2]\n", "mapping"),
            ("a: 1\na: 2\n", "key `a` is given twice"),
            ("true: x\n", "keys must be strings"),
            ("? [1]\n: x\n", "keys must be strings"),
            ("a: [[1]]\n", "key `a`: list items must be plain values"),
            ("a: {x: [1]}\n", "key `a`: map entries must be plain values"),
            ("a: {x: 1, x: 2}\n", "key `a`: an entry is given twice"),
            ("a: [1, 2, 3, 4]\n", "key `a`: more than 3 items"),
            (
                "a: {w: 1, x: 1, y: 1, z: 1}\n",
                "key `a`: more than 3 items",
            ),
        ] {
            let e = parse(text, &any_key).unwrap_err();
            assert!(e.contains(what), "{text:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = parse("zz: 1\n", &|k| Err(format!("unknown key `{k}`"))).unwrap_err();
        assert!(e.contains("unknown key `zz`"), "{e}");
    }

    #[test]
    fn a_huge_list_stops_at_its_bound() {
        // Half a million items: refused at the 4th without holding the rest.
        let mut text = String::from("pid: [");
        text.push_str(&"1,".repeat(500_000));
        text.push_str("1]\n");
        let e = parse(&text, &any_key).unwrap_err();
        assert!(e.contains("key `pid`: more than 3 items"), "{e}");
    }

    #[test]
    fn files_over_the_size_limit_are_not_read() {
        let p = std::env::temp_dir().join(format!("ep-config-big-{}.yaml", std::process::id()));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = read(&p, &any_key).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }
}
