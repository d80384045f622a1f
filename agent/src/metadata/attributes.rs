//! Which attributes leave emberprof. Pyroscope makes a series label of every string or
//! integer resource attribute and of every sample attribute, so attributes that differ per
//! process or per thread would make a series of each: those go out only when asked for
//! (`--extra-attributes`). The default set is bounded by the host's executables, containers
//! and pods: `service.name`, `process.executable.name`, `container.id`, `host.name`,
//! `host.id`, the `k8s.*` attributes and whatever `OTEL_RESOURCE_ATTRIBUTES` adds.

use std::collections::BTreeSet;

use emberprof_model::Attributes;

/// Which thread details samples keep: thread ids and names make a series per thread in
/// Pyroscope (sample attributes and pprof string labels become series labels), so they are
/// kept only when asked for. Samples without them merge across threads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadDetail {
    pub id: bool,
    pub name: bool,
}

#[cfg(test)]
impl ThreadDetail {
    /// Thread ids and names both.
    pub const ALL: ThreadDetail = ThreadDetail {
        id: true,
        name: true,
    };
}

/// Attributes sent only when named in `--extra-attributes` (or with `all`).
pub const EXTRA: [&str; 5] = [
    "process.pid",
    "process.command_line",
    "process.executable.path",
    "thread.id",
    "thread.name",
];

/// The extra attributes switched on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtraAttributes {
    on: BTreeSet<&'static str>,
}

impl ExtraAttributes {
    /// From `--extra-attributes` values: names from [`EXTRA`], or `all`.
    pub fn parse(values: &[String]) -> Result<ExtraAttributes, String> {
        let mut on = BTreeSet::new();
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            if v == "all" {
                on.extend(EXTRA);
                continue;
            }
            match EXTRA.iter().find(|k| **k == v) {
                Some(k) => {
                    on.insert(*k);
                }
                None => {
                    return Err(format!(
                        "{v:?} is not an extra attribute (choose from {}, or all)",
                        EXTRA.join(", ")
                    ))
                }
            }
        }
        Ok(ExtraAttributes { on })
    }

    /// The thread details samples keep.
    pub fn threads(&self) -> ThreadDetail {
        ThreadDetail {
            id: self.on.contains("thread.id"),
            name: self.on.contains("thread.name"),
        }
    }

    /// `attrs` without the extra attributes not switched on.
    pub fn filter(&self, attrs: &Attributes) -> Attributes {
        attrs
            .iter()
            .filter(|(k, _)| !EXTRA.contains(&k.as_str()) || self.on.contains(k.as_str()))
            .cloned()
            .collect()
    }
}

/// Checks one `--extra-attributes` value (clap's value parser).
pub fn parse_extra(v: &str) -> Result<String, String> {
    ExtraAttributes::parse(&[v.to_string()])?;
    Ok(v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberprof_model::AttrValue;

    fn attrs() -> Attributes {
        [
            "service.name",
            "process.pid",
            "process.executable.name",
            "process.executable.path",
            "process.command_line",
            "container.id",
        ]
        .iter()
        .map(|k| (k.to_string(), AttrValue::Str("x".into())))
        .collect()
    }

    fn keys(a: &Attributes) -> Vec<&str> {
        a.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn per_process_and_per_thread_attributes_only_when_asked() {
        let none = ExtraAttributes::default();
        assert_eq!(
            keys(&none.filter(&attrs())),
            ["service.name", "process.executable.name", "container.id"]
        );
        assert_eq!(none.threads(), ThreadDetail::default());
        let some = ExtraAttributes::parse(&["process.pid".into(), "thread.name".into()]).unwrap();
        assert_eq!(
            keys(&some.filter(&attrs())),
            [
                "service.name",
                "process.pid",
                "process.executable.name",
                "container.id"
            ]
        );
        assert_eq!(
            some.threads(),
            ThreadDetail {
                id: false,
                name: true
            }
        );
        let all = ExtraAttributes::parse(&["all".into()]).unwrap();
        assert_eq!(all.filter(&attrs()), attrs());
        assert_eq!(all.threads(), ThreadDetail::ALL);
        assert!(ExtraAttributes::parse(&["process.environ".into()])
            .unwrap_err()
            .contains("choose from"));
    }
}
