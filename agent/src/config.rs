//! The agent's YAML configuration file. Every key is a flag of `emberprof agent` written
//! with underscores (`otlp_endpoint: http://collector:4317`, `interval: 30s`, `pid: [1, 2]`,
//! `otlp_header: {authorization: Bearer x}`). Precedence: flag > EMBERPROF_* variable >
//! file > default. The file's keys are turned into flags placed before the real ones, and
//! left out where the command line or the environment already sets them.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use clap::ArgAction;
use serde_yaml::Value;

/// A configuration problem: emberprof exits with status 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn agent_command() -> clap::Command {
    crate::cli::command()
        .find_subcommand("agent")
        .cloned()
        .unwrap_or_else(|| clap::Command::new("agent"))
}

/// Keys a file may hold: the agent's long flags, with underscores.
fn keys(cmd: &clap::Command) -> Vec<(String, clap::Arg)> {
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            (long != "config" && long != "help").then(|| (long.replace('-', "_"), a.clone()))
        })
        .collect()
}

/// The flags `file` stands for, minus those `argv` (the real command line) or the
/// environment already give.
pub fn file_args(file: &Path, argv: &[OsString]) -> Result<Vec<String>, ConfigError> {
    let where_ = file.display().to_string();
    let text = std::fs::read_to_string(file)
        .map_err(|e| ConfigError(format!("config {where_}: cannot read it: {e}")))?;
    let doc: Value = serde_yaml::from_str(&text)
        .map_err(|e| ConfigError(format!("config {where_}: not valid YAML: {e}")))?;
    let map = match doc {
        Value::Null => return Ok(Vec::new()),
        Value::Mapping(m) => m,
        _ => {
            return Err(ConfigError(format!(
                "config {where_}: expected a mapping of keys to values"
            )))
        }
    };
    let cmd = agent_command();
    let known = keys(&cmd);
    let mut out = Vec::new();
    for (k, v) in map {
        let Value::String(key) = k else {
            return Err(ConfigError(format!(
                "config {where_}: keys must be strings"
            )));
        };
        let Some((_, arg)) = known.iter().find(|(name, _)| *name == key) else {
            let names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
            return Err(ConfigError(format!(
                "config {where_}: unknown key `{key}` (accepted: {})",
                names.join(", ")
            )));
        };
        let long = arg.get_long().unwrap_or_default().to_string();
        let flag = format!("--{long}");
        let on_command_line = argv.iter().any(|a| {
            let a = a.to_string_lossy();
            a == flag || a.starts_with(&format!("{flag}="))
        });
        let in_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if on_command_line || in_env {
            continue;
        }
        let bad = |what: &str| ConfigError(format!("config {where_}: key `{key}`: {what}"));
        let is_flag = matches!(arg.get_action(), ArgAction::SetTrue);
        match v {
            Value::Null => {}
            Value::Bool(b) if is_flag => {
                if b {
                    out.push(flag);
                }
            }
            _ if is_flag => return Err(bad("expected true or false")),
            Value::Sequence(items) => {
                for item in items {
                    out.push(flag.clone());
                    out.push(scalar(&item).ok_or_else(|| bad("list items must be plain values"))?);
                }
            }
            Value::Mapping(pairs) => {
                for (k, v) in pairs {
                    let (Some(k), Some(v)) = (scalar(&k), scalar(&v)) else {
                        return Err(bad("map entries must be plain values"));
                    };
                    out.push(flag.clone());
                    out.push(format!("{k}={v}"));
                }
            }
            other => {
                out.push(flag);
                out.push(scalar(&other).ok_or_else(|| bad("expected a plain value"))?);
            }
        }
    }
    Ok(out)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The config file `agent` was given (`--config`, else EMBERPROF_CONFIG), if any.
pub fn config_file(argv: &[OsString]) -> Option<OsString> {
    if argv.get(1).map(|a| a.as_os_str()) != Some("agent".as_ref()) {
        return None;
    }
    let mut file = std::env::var_os("EMBERPROF_CONFIG");
    for (i, a) in argv.iter().enumerate() {
        let s = a.to_string_lossy();
        if s == "--config" {
            file = argv.get(i + 1).cloned();
        } else if let Some(v) = s.strip_prefix("--config=") {
            file = Some(v.into());
        }
    }
    file
}

/// The command line with `agent`'s config file merged in, if it has one: the file's flags go
/// right after `agent`, so that the real flags after them win.
pub fn merged_argv(argv: Vec<OsString>) -> Result<Vec<OsString>, ConfigError> {
    if argv.get(1).map(|a| a.as_os_str()) != Some("agent".as_ref()) {
        return Ok(argv);
    }
    let Some(file) = config_file(&argv) else {
        return Ok(argv);
    };
    let extra = file_args(Path::new(&file), &argv[2..])?;
    let mut merged: Vec<OsString> = argv[..2].to_vec();
    merged.extend(extra.into_iter().map(OsString::from));
    merged.extend(argv[2..].iter().cloned());
    Ok(merged)
}

/// `config check FILE`: the file alone must make a valid agent command line.
pub fn check(file: &Path) -> Result<(), ConfigError> {
    let args = file_args(file, &[])?;
    let mut argv = vec!["emberprof".to_string(), "agent".to_string()];
    argv.extend(args);
    crate::cli::command()
        .try_get_matches_from(&argv)
        .map_err(|e| {
            let which = e
                .get(clap::error::ContextKind::InvalidArg)
                .map(|a| a.to_string())
                .unwrap_or_default();
            let key = which
                .trim_start_matches("--")
                .split([' ', '='])
                .next()
                .unwrap_or("")
                .replace('-', "_");
            let message = e.to_string();
            let first = message
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            ConfigError(format!("config {}: key `{key}`: {first}", file.display()))
        })?;
    Ok(())
}

/// `config default`: every key with its default and its help as a comment.
pub fn default_text() -> String {
    let mut out = String::from(
        "# emberprof agent configuration. Every key is also a flag (--key-name) and an\n\
         # EMBERPROF_KEY_NAME variable; flags win over variables, variables over this file.\n",
    );
    for (key, arg) in keys(&agent_command()) {
        if arg.is_hide_set() {
            continue;
        }
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        out.push('\n');
        for line in help.lines() {
            out.push_str(&format!("# {line}\n"));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let value = match (arg.get_action(), defaults.first()) {
            (ArgAction::SetTrue, _) => "false".to_string(),
            (ArgAction::Append, _) => "[]".to_string(),
            (_, Some(d)) => yaml_string(d),
            (_, None) => "~".to_string(),
        };
        out.push_str(&format!("{key}: {value}\n"));
    }
    out
}

/// Quotes a value when YAML would read it as something else.
fn yaml_string(v: &str) -> String {
    if v.parse::<f64>().is_ok()
        || v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:_-".contains(c))
    {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("ep-config-{}-{name}.yaml", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn file_keys_become_flags_unless_the_command_line_has_them() {
        let p = write(
            "ok",
            "interval: 30s\nfrequency: 49\noff_cpu: true\nhistograms: false\npid: [1, 2]\n\
             otlp_header: {authorization: Bearer x}\n",
        );
        let args = file_args(&p, &["--frequency".into(), "97".into()]).unwrap();
        assert_eq!(
            args,
            [
                "--interval",
                "30s",
                "--off-cpu",
                "--pid",
                "1",
                "--pid",
                "2",
                "--otlp-header",
                "authorization=Bearer x"
            ]
        );
        check(&p).unwrap();
    }

    #[test]
    fn flags_override_the_file() {
        use clap::FromArgMatches;
        let p = write("override", "frequency: 49\ninterval: 30s\n");
        let argv: Vec<OsString> = ["emberprof", "agent", "--config"]
            .iter()
            .map(OsString::from)
            .chain([p.clone().into_os_string()])
            .chain(["--frequency", "97"].iter().map(OsString::from))
            .collect();
        let merged = merged_argv(argv).unwrap();
        let matches = crate::cli::command().try_get_matches_from(merged).unwrap();
        let cli = crate::cli::Cli::from_arg_matches(&matches).unwrap();
        let crate::cli::Command::Agent(args) = cli.command else {
            panic!("not agent");
        };
        assert_eq!(args.frequency, 97);
        assert_eq!(args.interval, std::time::Duration::from_secs(30));
    }

    #[test]
    fn an_emberprof_variable_wins_over_the_file() {
        // Only this test reads or sets this variable.
        std::env::set_var("EMBERPROF_PPROF_MAX_FILES", "7");
        let p = write("env", "pprof_max_files: 3\ninterval: 30s\n");
        let args = file_args(&p, &[]).unwrap();
        std::env::remove_var("EMBERPROF_PPROF_MAX_FILES");
        assert_eq!(args, ["--interval", "30s"]);
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = check(&write("unknown", "intervall: 5s\n")).unwrap_err().0;
        assert!(e.contains("unknown key `intervall`"), "{e}");
        let e = check(&write("type", "frequency: fast\n")).unwrap_err().0;
        assert!(e.contains("key `frequency`"), "{e}");
        let e = check(&write("range", "frequency: 100000\n")).unwrap_err().0;
        assert!(e.contains("key `frequency`"), "{e}");
        let e = check(&write("bool", "off_cpu: 3\n")).unwrap_err().0;
        assert!(e.contains("key `off_cpu`: expected true or false"), "{e}");
        let e = check(&write("yaml", "a: [\n")).unwrap_err().0;
        assert!(e.contains("not valid YAML"), "{e}");
    }

    #[test]
    fn the_default_configuration_checks() {
        let text = default_text();
        assert!(text.contains("\nfrequency: 19\n"), "{text}");
        assert!(text.contains("\ninterval: 15s\n"), "{text}");
        check(&write("default", &text)).unwrap();
    }
}
