//! `--probe SPEC`: what a probe point names, read from its one-line form.

use std::path::PathBuf;

use emberprof_probes::abi::PROBE_SLOTS;

/// What to probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A user function's entry and return: `uprobe:PATH:SYMBOL`, `+stacks` for its callers'
    /// stacks weighted by the calls' time.
    Function {
        path: PathBuf,
        symbol: String,
        stacks: bool,
    },
    /// A USDT probe: `usdt:PATH:PROVIDER:NAME`.
    Usdt {
        path: PathBuf,
        provider: String,
        name: String,
    },
    /// A kernel tracepoint: `tracepoint:CATEGORY:NAME`.
    Tracepoint { category: String, name: String },
}

/// One `--probe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// As given: the name of its metrics and report lines.
    pub text: String,
    pub target: Target,
}

impl ProbeSpec {
    /// A function's entry and return (whose hits are calls, and timed).
    pub fn is_function(&self) -> bool {
        matches!(self.target, Target::Function { .. })
    }

    /// Its kind as the spec names it: `uprobe`, `usdt` or `tracepoint`.
    pub fn kind_name(&self) -> &'static str {
        match self.target {
            Target::Function { .. } => "uprobe",
            Target::Usdt { .. } => "usdt",
            Target::Tracepoint { .. } => "tracepoint",
        }
    }

    /// Whether its hits' stacks are recorded (the probe profile): USDT probes and
    /// tracepoints.
    pub fn takes_stacks(&self) -> bool {
        !matches!(self.target, Target::Function { stacks: false, .. })
    }

    /// The file the probe is in, as processes see it (none for a tracepoint).
    pub fn path(&self) -> Option<&std::path::Path> {
        match &self.target {
            Target::Function { path, .. } | Target::Usdt { path, .. } => Some(path),
            Target::Tracepoint { .. } => None,
        }
    }
}

const FORMS: &str =
    "expected uprobe:PATH:SYMBOL, usdt:PATH:PROVIDER:NAME or tracepoint:CATEGORY:NAME";

fn path_of(text: &str, path: &str) -> Result<PathBuf, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "--probe {text}: the path must be absolute (as the process sees it, e.g. /usr/bin/app), got {path:?}"
        ));
    }
    Ok(PathBuf::from(path))
}

fn word<'a>(text: &str, what: &str, w: &'a str) -> Result<&'a str, String> {
    if w.is_empty() || w.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!(
            "--probe {text}: {what} {w:?} is not a name ({FORMS})"
        ));
    }
    Ok(w)
}

/// Reads one spec; the error is one line naming the accepted forms.
pub fn parse(text: &str) -> Result<ProbeSpec, String> {
    let text = text.trim();
    let (body, stacks) = match text.strip_suffix("+stacks") {
        Some(body) => (body, true),
        None => (text, false),
    };
    let (kind, rest) = body
        .split_once(':')
        .ok_or_else(|| format!("--probe {text}: {FORMS}"))?;
    let target = match kind {
        "uprobe" => {
            let (path, symbol) = rest
                .rsplit_once(':')
                .ok_or_else(|| format!("--probe {text}: {FORMS}"))?;
            Target::Function {
                path: path_of(text, path)?,
                symbol: word(text, "symbol", symbol)?.to_string(),
                stacks,
            }
        }
        _ if stacks => {
            return Err(format!(
                "--probe {text}: +stacks is for functions (uprobe:); USDT probes and \
                 tracepoints record their stacks always"
            ))
        }
        "usdt" => {
            let mut parts = rest.rsplitn(3, ':');
            let (name, provider, path) = (parts.next(), parts.next(), parts.next());
            let (Some(name), Some(provider), Some(path)) = (name, provider, path) else {
                return Err(format!("--probe {text}: {FORMS}"));
            };
            Target::Usdt {
                path: path_of(text, path)?,
                provider: word(text, "provider", provider)?.to_string(),
                name: word(text, "probe name", name)?.to_string(),
            }
        }
        "tracepoint" => {
            let (category, name) = rest
                .split_once(':')
                .ok_or_else(|| format!("--probe {text}: {FORMS}"))?;
            Target::Tracepoint {
                category: word(text, "category", category)?.to_string(),
                name: word(text, "tracepoint", name)?.to_string(),
            }
        }
        other => {
            return Err(format!(
                "--probe {text}: unknown probe type {other:?}; {FORMS}"
            ))
        }
    };
    Ok(ProbeSpec {
        text: text.to_string(),
        target,
    })
}

/// Reads every `--probe`: at most `PROBE_SLOTS`, none twice.
pub fn parse_all(texts: &[String]) -> Result<Vec<ProbeSpec>, String> {
    if texts.len() > PROBE_SLOTS {
        return Err(format!(
            "--probe: at most {PROBE_SLOTS} probe points at once, got {}",
            texts.len()
        ));
    }
    let mut out: Vec<ProbeSpec> = Vec::new();
    for t in texts {
        let spec = parse(t)?;
        if out.iter().any(|s| s.target == spec.target) {
            return Err(format!("--probe {}: given twice", spec.text));
        }
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_forms_are_read() {
        assert_eq!(
            parse("uprobe:/usr/bin/app:handle_request").unwrap().target,
            Target::Function {
                path: "/usr/bin/app".into(),
                symbol: "handle_request".into(),
                stacks: false
            }
        );
        let with = parse("uprobe:/usr/bin/app:handle_request+stacks").unwrap();
        assert!(with.takes_stacks());
        assert_eq!(
            with.text, "uprobe:/usr/bin/app:handle_request+stacks",
            "the name keeps what was given"
        );
        assert_eq!(
            parse("usdt:/usr/lib/libx.so.1:myapp:req_start")
                .unwrap()
                .target,
            Target::Usdt {
                path: "/usr/lib/libx.so.1".into(),
                provider: "myapp".into(),
                name: "req_start".into()
            }
        );
        assert_eq!(
            parse("tracepoint:syscalls:sys_enter_openat")
                .unwrap()
                .target,
            Target::Tracepoint {
                category: "syscalls".into(),
                name: "sys_enter_openat".into()
            }
        );
        // A colon in the path: the symbol is what follows the last one.
        assert_eq!(
            parse("uprobe:/opt/a:b/app:f").unwrap().path(),
            Some(std::path::Path::new("/opt/a:b/app"))
        );
    }

    #[test]
    fn bad_specs_are_one_line_errors() {
        for (bad, says) in [
            ("uprobe:app:f", "must be absolute"),
            ("uprobe:/usr/bin/app", "expected uprobe:PATH:SYMBOL"),
            ("uprobe:/usr/bin/app:", "is not a name"),
            ("kprobe:do_sys_open", "unknown probe type \"kprobe\""),
            ("usdt:/bin/x:onlyname", "expected"),
            ("tracepoint:sched", "expected"),
            ("nothing", "expected"),
            ("usdt:/bin/x:p:n+stacks", "+stacks is for functions"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn at_most_eight_and_none_twice() {
        let nine: Vec<String> = (0..9).map(|i| format!("uprobe:/bin/x:f{i}")).collect();
        assert!(parse_all(&nine).unwrap_err().contains("at most 8"));
        let twice = vec![
            "uprobe:/bin/x:f".to_string(),
            " uprobe:/bin/x:f".to_string(),
        ];
        assert!(parse_all(&twice).unwrap_err().contains("given twice"));
        assert_eq!(parse_all(&nine[..8]).unwrap().len(), 8);
    }
}
