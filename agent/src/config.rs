//! The agent's YAML configuration file. Every key is a flag of `emberprof agent` written
//! with underscores (`otlp_endpoint: http://collector:4317`, `interval: 30s`, `pid: [1, 2]`,
//! `otlp_header: {authorization: Bearer x}`). Precedence: flag > EMBERPROF_* variable >
//! file > default. The file's keys are turned into flags placed before the real ones, and
//! left out where the command line or the environment already sets them.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use clap::ArgAction;

use crate::config_file::{Scalar, Value};

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

/// Most items a list key may hold (or entries a map key): more is a mistake, and would
/// only cost memory.
const MAX_LIST_ITEMS: usize = 256;

/// Most items of `key`: the PID lists are bounded by what the kernel's PID filter holds.
fn max_items(key: &str) -> usize {
    match key {
        "pid" | "exclude_pid" => emberprof_probes::cpu_sampler::MAX_FILTER_PIDS,
        _ => MAX_LIST_ITEMS,
    }
}

/// The flags `file` stands for, minus those `argv` (the real command line) or the
/// environment already give. Each value is one `--flag=VALUE` argument, so that a value
/// starting with `-` is not taken for a flag.
pub fn file_args(file: &Path, argv: &[OsString]) -> Result<Vec<String>, ConfigError> {
    let where_ = file.display().to_string();
    let cmd = agent_command();
    let known = keys(&cmd);
    let accepted = |key: &str| {
        if known.iter().any(|(name, _)| name == key) {
            return Ok(max_items(key));
        }
        let names: Vec<&str> = known.iter().map(|(n, _)| n.as_str()).collect();
        Err(format!(
            "unknown key `{key}` (accepted: {})",
            names.join(", ")
        ))
    };
    let entries = crate::config_file::read(file, &accepted)
        .map_err(|e| ConfigError(format!("config {where_}: {e}")))?;
    let mut out = Vec::new();
    for (key, v) in entries {
        let Some((_, arg)) = known.iter().find(|(name, _)| *name == key) else {
            continue;
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
            Value::Scalar(Scalar::Null) => {}
            Value::Scalar(Scalar::Bool(b)) if is_flag => {
                if b {
                    out.push(flag);
                }
            }
            _ if is_flag => return Err(bad("expected true or false")),
            Value::List(items) => {
                for item in items {
                    let item =
                        scalar(&item).ok_or_else(|| bad("list items must be plain values"))?;
                    out.push(format!("{flag}={item}"));
                }
            }
            Value::Map(pairs) => {
                for (k, v) in pairs {
                    let (Some(k), Some(v)) = (scalar(&k), scalar(&v)) else {
                        return Err(bad("map entries must be plain values"));
                    };
                    out.push(format!("{flag}={k}={v}"));
                }
            }
            Value::Scalar(other) => {
                let value = scalar(&other).ok_or_else(|| bad("expected a plain value"))?;
                out.push(format!("{flag}={value}"));
            }
        }
    }
    Ok(out)
}

fn scalar(v: &Scalar) -> Option<String> {
    match v {
        Scalar::Text(s) => Some(s.clone()),
        Scalar::Bool(b) => Some(b.to_string()),
        Scalar::Null => None,
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

/// `config check FILE`: the file alone must make a valid agent command line, and one that
/// passes the checks the agent makes before it starts ([`validate`]).
pub fn check(file: &Path) -> Result<(), ConfigError> {
    use clap::FromArgMatches;
    let args = file_args(file, &[])?;
    let mut argv = vec!["emberprof".to_string(), "agent".to_string()];
    argv.extend(args);
    let matches = crate::cli::command()
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
    let refused = |e: String| ConfigError(format!("config {}: {e}", file.display()));
    match crate::cli::Cli::from_arg_matches(&matches) {
        Ok(crate::cli::Cli {
            command: crate::cli::Command::Agent(agent),
        }) => validate(&agent).map_err(|e| refused(keyed(&format!("{e:#}")))),
        Ok(_) => Err(refused("not an agent command line".to_string())),
        Err(e) => Err(refused(e.to_string())),
    }
}

/// What the agent checks of its settings before it starts, without starting anything or
/// needing privileges: exporters (endpoints, headers, compression, the Pyroscope URL) and
/// process selection (regexes). `config check` runs the same. What depends on the machine
/// (TLS files, a password from the environment) is checked as the agent starts.
pub fn validate(args: &crate::cli::AgentArgs) -> anyhow::Result<()> {
    crate::export::check(&args.export)?;
    crate::selection::Selection::from_args(&args.pids, &args.select)?;
    Ok(())
}

/// A check's message, led by the config key of the first agent flag it names (`--otlp-header:
/// ...` becomes ``key `otlp_header`: ...``).
fn keyed(message: &str) -> String {
    let named = keys(&agent_command())
        .into_iter()
        .filter_map(|(key, arg)| {
            let flag = format!("--{}", arg.get_long()?);
            let at = message.match_indices(&flag).map(|(i, _)| i).find(|&i| {
                !message[i + flag.len()..]
                    .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-')
            })?;
            Some((at, key, flag))
        })
        .min_by_key(|(at, _, _)| *at);
    match named {
        Some((_, key, flag)) => {
            let rest = message
                .strip_prefix(&format!("{flag}: "))
                .unwrap_or(message);
            format!("key `{key}`: {rest}")
        }
        None => message.to_string(),
    }
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
                "--interval=30s",
                "--off-cpu",
                "--pid=1",
                "--pid=2",
                "--otlp-header=authorization=Bearer x"
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
        assert_eq!(args, ["--interval=30s"]);
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
        let e = check(&write("yaml", "pid: [\n")).unwrap_err().0;
        assert!(e.contains("not valid YAML"), "{e}");
    }

    fn agent_args(file: &Path) -> crate::cli::AgentArgs {
        use clap::FromArgMatches;
        let mut argv = vec!["emberprof".to_string(), "agent".to_string()];
        argv.extend(file_args(file, &[]).unwrap());
        let matches = crate::cli::command().try_get_matches_from(argv).unwrap();
        match crate::cli::Cli::from_arg_matches(&matches).unwrap().command {
            crate::cli::Command::Agent(args) => *args,
            _ => panic!("not agent"),
        }
    }

    #[test]
    fn check_refuses_what_the_agent_would_refuse_at_start() {
        for (name, text, want) in [
            (
                "regex",
                "include_exe: '(nginx'\n",
                "key `include_exe`: --include-exe \"(nginx\" is not a valid regex (unclosed group)",
            ),
            (
                "endpoint",
                "otlp_endpoint: ftp://collector:4317\n",
                "key `otlp_endpoint`: \"ftp://collector:4317\" must start with http://",
            ),
            (
                "header-list",
                "otlp_endpoint: http://collector:4317\notlp_header: [authorization, Bearer x]\n",
                "key `otlp_header`: \"authorization\" is not KEY=VALUE",
            ),
            (
                "compression",
                "otlp_compression: zstd\n",
                "key `otlp_compression`: \"zstd\": use gzip or none",
            ),
            (
                "pyroscope",
                "pyroscope_url: pyroscope:4040\n",
                "key `pyroscope_url`: --pyroscope-url \"pyroscope:4040\" must start with http://",
            ),
        ] {
            let e = check(&write(name, text)).unwrap_err().0;
            assert!(e.contains(want), "{name}: {e}");
            assert_eq!(e.lines().count(), 1, "{name}: {e}");
            // The agent runs the same checks before it starts.
            let p = write(name, text);
            assert!(validate(&agent_args(&p)).is_err(), "{name}");
        }
        let ok = "otlp_endpoint: http://collector:4317\notlp_header: [authorization=Bearer x]\n\
                  include_exe: '^(nginx|java)$'\npyroscope_url: http://pyroscope:4040\n";
        check(&write("valid", ok)).unwrap();
        // What depends on the machine the agent runs on is left to its start: TLS files
        // mounted there, a password from EMBERPROF_PYROSCOPE_PASSWORD there.
        let elsewhere =
            "otlp_endpoint: https://collector:4317\notlp_ca: /etc/emberprof/tls/ca.pem\n\
                         pyroscope_url: http://pyroscope:4040\npyroscope_user: ember\n";
        check(&write("elsewhere", elsewhere)).unwrap();
    }

    #[test]
    fn values_starting_with_a_dash_stay_values() {
        let e = check(&write("negative", "frequency: -19\n")).unwrap_err().0;
        assert!(e.contains("key `frequency`: invalid value '-19'"), "{e}");
        let p = write(
            "dash",
            "pyroscope_url: http://pyroscope:4040\npyroscope_user: u\npyroscope_password: -s3cret\n\
             include_exe: -weird\n",
        );
        check(&p).unwrap();
        let args = agent_args(&p);
        assert_eq!(args.export.pyroscope_password.as_deref(), Some("-s3cret"));
        assert_eq!(args.select.include_exe.as_deref(), Some("-weird"));
    }

    #[test]
    fn list_sizes_and_the_file_size_are_bounded() {
        let max = emberprof_probes::cpu_sampler::MAX_FILTER_PIDS;
        let pids = |n: usize| format!("pid: [{}]\n", vec!["1"; n].join(", "));
        check(&write("pids-ok", &pids(max))).unwrap();
        let e = check(&write("pids", &pids(max + 1))).unwrap_err().0;
        assert!(
            e.contains(&format!("key `pid`: more than {max} items")),
            "{e}"
        );
        let cgroups = format!("exclude_cgroup: [{}]\n", vec!["/a"; 1000].join(", "));
        let e = check(&write("cgroups", &cgroups)).unwrap_err().0;
        assert!(
            e.contains("key `exclude_cgroup`: more than 256 items"),
            "{e}"
        );
        // 5 million PIDs, one a line (about 20 MB): refused before it is read.
        let p = write("huge", "");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        std::io::Write::write_all(&mut f, b"pid:\n").unwrap();
        for _ in 0..5_000_000 {
            std::io::Write::write_all(&mut f, b"- 1\n").unwrap();
        }
        drop(f);
        let e = check(&p).unwrap_err().0;
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }

    #[test]
    fn the_default_configuration_checks() {
        let text = default_text();
        assert!(text.contains("\nfrequency: 19\n"), "{text}");
        assert!(text.contains("\ninterval: 15s\n"), "{text}");
        check(&write("default", &text)).unwrap();
    }
}
