//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "emberprof",
    version,
    about = "Continuous profiling for Linux, built on eBPF"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The command-line parser. A flag given twice (the config file's, then the real one) takes
/// the later value.
///
/// Every flag of `record` and `agent` also reads `EMBERPROF_<FLAG>` (e.g. `--otlp-endpoint`
/// from EMBERPROF_OTLP_ENDPOINT): the names are derived here rather than written per field.
pub fn command() -> clap::Command {
    fn with_env(c: clap::Command) -> clap::Command {
        c.args_override_self(true)
            .mut_args(|a| match (a.get_long(), a.get_env()) {
                (Some(long), None) if long != "help" => {
                    let name = format!("EMBERPROF_{}", long.replace('-', "_").to_uppercase());
                    a.env(name)
                }
                _ => a,
            })
    }
    <Cli as clap::CommandFactory>::command()
        .args_override_self(true)
        .mut_subcommand("agent", with_env)
        .mut_subcommand("record", with_env)
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Record CPU stacks, off-CPU waits and/or latency histograms of every process, or of --pid.
    Record(Box<RecordArgs>),
    /// Profile continuously and export every interval until stopped (SIGTERM or Ctrl-C).
    Agent(Box<AgentArgs>),
    /// Check or print the agent's configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file (exit status 2 if it is not valid).
    Check {
        /// The YAML file.
        file: PathBuf,
    },
    /// Print the full default configuration, with a comment per key.
    Default,
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// YAML configuration file: one key per flag (e.g. `interval: 30s`); flags and
    /// EMBERPROF_* variables override it.
    #[arg(long, value_name = "FILE", env = "EMBERPROF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Samples per second on each CPU (a prime, so that sampling does not beat with periodic work).
    #[arg(long, value_name = "HZ", default_value_t = 19,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,
    /// How often a profile is exported.
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    pub interval: Duration,
    #[command(flatten)]
    pub waits: WaitArgs,
    /// Profile only this process (repeatable); applied in the kernel.
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',')]
    pub pids: Vec<u32>,
    #[command(flatten)]
    pub select: SelectArgs,
    #[command(flatten)]
    pub export: ExportArgs,
    #[command(flatten)]
    pub symbols: SymbolArgs,
    #[command(flatten)]
    pub unwind: UnwindArgs,
    /// Also write every interval's profiles as pprof files into this directory.
    #[arg(long, value_name = "DIR")]
    pub pprof_dir: Option<PathBuf>,
    /// --pprof-dir: keep at most this many files (oldest deleted first).
    #[arg(long, value_name = "N", default_value_t = 240)]
    pub pprof_max_files: usize,
    /// --pprof-dir: keep at most this many bytes of files.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
    pub pprof_max_bytes: u64,
    /// --pprof-dir: delete files older than this.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub pprof_max_age: Duration,
    /// Address of the HTTP endpoints (/metrics, /healthz, /readyz, and /debug/pprof/... with
    /// --debug-pprof).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7071")]
    pub http_listen: std::net::SocketAddr,
    #[command(flatten)]
    pub debug: DebugArgs,
    /// On SIGTERM, how long the final export may take before emberprof exits anyway.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub maps: MapArgs,
}

#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// Record a CPU profile (the default unless --off-cpu or --histograms is given).
    #[arg(long)]
    pub cpu: bool,
    #[command(flatten)]
    pub waits: WaitArgs,
    /// Profile only this process (repeat for several); applied in the kernel.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// How long to record: seconds, or a number with ms/s/m; Ctrl-C ends early.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_duration)]
    pub duration: Duration,
    /// Samples per second on each CPU.
    #[arg(long, value_name = "HZ", default_value_t = 99,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub frequency: u64,
    /// Output format [default: from the --output extension, else pprof].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Output file, or - for standard output [default: emberprof-<UTC time>.<ext>].
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Also write the end-of-run summary (per profile: samples, drops, processes, unique
    /// stacks, output; histogram totals) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub summary_json: Option<PathBuf>,
    #[command(flatten)]
    pub export: ExportArgs,
    /// With --otlp-endpoint or --pyroscope-url: send what was recorded every this long while
    /// recording (the output file still covers the whole recording).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub export_interval: Duration,
    #[command(flatten)]
    pub symbols: SymbolArgs,
    #[command(flatten)]
    pub unwind: UnwindArgs,
    #[command(flatten)]
    pub maps: MapArgs,
}

/// Where the symbolizer finds debug info, how much it may keep, and whether it names
/// emberprof's own frames.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct SymbolArgs {
    /// Also profile emberprof itself (left out by default: symbolizing its own samples
    /// parses its own debug info and feeds back into what is measured).
    #[arg(long)]
    pub profile_self: bool,
    /// Directory of separate debug files (`.build-id/xx/rest.debug`, debug-link names),
    /// searched on the host and inside each container (repeatable).
    #[arg(long = "debug-dir", value_name = "DIR", default_values = ["/usr/lib/debug", "/lib/debug"])]
    pub debug_dirs: Vec<PathBuf>,
    /// debuginfod servers to fetch missing debug info from, space-separated
    /// [default: DEBUGINFOD_URLS]; "none" to never ask.
    #[arg(long, value_name = "URLS")]
    pub debuginfod_urls: Option<String>,
    /// Where fetched debug info is kept [default: DEBUGINFOD_CACHE_PATH, else
    /// $XDG_CACHE_HOME/emberprof/debuginfod].
    #[arg(long, value_name = "DIR")]
    pub debuginfod_cache: Option<PathBuf>,
    /// Memory the symbol caches may hold, in MiB, measured: parsed files, resolved addresses
    /// and kernel symbols. Past it, parsed files are let go first (and parsed again when a
    /// new address needs them), then resolved addresses.
    #[arg(long, value_name = "MIB", default_value_t = 48)]
    pub symbol_cache_mib: u64,
    /// Files the symbolizer keeps open; past it, all are let go at the end of an interval
    /// and reopened as needed.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    pub symbol_files: usize,
}

/// Bytes of one unwind table entry in the kernel's array.
const UNWIND_ENTRY_BYTES: u64 = std::mem::size_of::<emberprof_probes::abi::UnwindEntry>() as u64;
/// The default --unwind-table-mib: a few hundred distinct files at the measured mean of
/// 9,600 entries (75 KB) per file, with room for a couple of LLVM-sized libraries (9 MiB).
pub const DEFAULT_UNWIND_TABLE_MIB: u32 = 32;
/// The largest --unwind-table-mib: what the kernel's rule search covers.
const MAX_UNWIND_TABLE_MIB: i64 =
    ((emberprof_probes::abi::MAX_UNWIND_ENTRIES as u64 * UNWIND_ENTRY_BYTES) >> 20) as i64;

/// How CPU samples' user stacks are walked, and the kernel memory the unwind tables get.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct UnwindArgs {
    /// How user stacks are walked: auto (by unwind tables compiled from each file's
    /// .eh_frame where it has one, by frame pointers elsewhere) or fp (frame pointers only:
    /// no table is compiled or loaded).
    #[arg(long, value_enum, value_name = "auto|fp", default_value = "auto")]
    pub unwind: UnwindMode,
    /// Kernel memory for the unwind tables of all files together, in MiB (8 bytes per
    /// entry, allocated at start). Tables no listed process uses are evicted to make room;
    /// a file whose table still does not fit is walked by frame pointers, and counted.
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_UNWIND_TABLE_MIB,
          value_parser = clap::value_parser!(u32).range(1..=MAX_UNWIND_TABLE_MIB))]
    pub unwind_table_mib: u32,
    /// Do not walk Python stacks: processes running CPython (3.10-3.13) are profiled with
    /// their native frames only (the interpreter's C functions).
    #[arg(long)]
    pub no_python: bool,
}

impl UnwindArgs {
    /// Entries of the kernel's unwind table array; `None` with `--unwind fp`.
    pub fn entries(&self) -> Option<u32> {
        let entries = (u64::from(self.unwind_table_mib) << 20) / UNWIND_ENTRY_BYTES;
        match self.unwind {
            UnwindMode::Auto => Some(u32::try_from(entries).unwrap_or(u32::MAX)),
            UnwindMode::Fp => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UnwindMode {
    /// Unwind tables where a file has them, frame pointers elsewhere.
    Auto,
    /// Frame pointers only.
    Fp,
}

/// Which processes the agent profiles, besides --pid. Applied in the kernel through its PID
/// filter, refreshed from /proc at every drain.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SelectArgs {
    /// Never profile this process (repeatable).
    #[arg(long, value_name = "PID", value_delimiter = ',')]
    pub exclude_pid: Vec<u32>,
    /// Profile only processes whose executable name matches this regex (e.g. '^(nginx|java)$').
    #[arg(long, value_name = "REGEX")]
    pub include_exe: Option<String>,
    /// Never profile processes whose executable name matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub exclude_exe: Option<String>,
    /// Profile only processes in this cgroup (v2 path) or below it (repeatable).
    #[arg(long, value_name = "PATH", value_delimiter = ',')]
    pub include_cgroup: Vec<String>,
    /// Never profile processes in this cgroup or below it (repeatable).
    #[arg(long, value_name = "PATH", value_delimiter = ',')]
    pub exclude_cgroup: Vec<String>,
    /// In Kubernetes (NODE_NAME set): profile only pods annotated
    /// `profiles.emberprof.io/enabled: "true"` (pods annotated "false" are always skipped;
    /// processes outside pods are not affected).
    #[arg(long)]
    pub k8s_opt_in: bool,
}

/// Off-CPU profiling and latency histograms.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct WaitArgs {
    /// Record an off-CPU profile: where threads block, and for how long.
    #[arg(long)]
    pub off_cpu: bool,
    /// Off-CPU: also count time runnable threads waited after preemption.
    #[arg(long, requires = "off_cpu")]
    pub include_preempted: bool,
    /// Off-CPU: ignore blocks shorter than this (e.g. 1us, 50us, 1ms).
    #[arg(long, value_name = "DURATION", default_value = "1us", value_parser = parse_duration)]
    pub min_block: Duration,
    /// Record latency histograms (run queue and off-CPU duration per cgroup, block I/O per
    /// disk); `record` prints them at the end (to --output when no profile is requested).
    #[arg(long)]
    pub histograms: bool,
    /// Also histogram every syscall's latency per syscall and cgroup (adds work to every
    /// syscall on the host; implies --histograms).
    #[arg(long)]
    pub syscall_latency: bool,
    /// Histograms kept between drains (cgroups x syscalls, disks); more are summed into an
    /// "other" histogram per kind and counted.
    #[arg(long, value_name = "N", default_value_t = emberprof_probes::abi::DEFAULT_HIST_KEYS,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub histogram_keys: u32,
    /// A probe point (repeatable, up to 8): uprobe:PATH:SYMBOL (call durations and counts),
    /// usdt:PATH:PROVIDER:NAME or tracepoint:CATEGORY:NAME (hit counts), per cgroup. PATH
    /// is as processes see it, in every mount namespace (containers).
    #[arg(long = "probe", value_name = "SPEC")]
    pub probes: Vec<String>,
    /// A probe hit more often than this per second is detached (logged and counted): each
    /// hit of a function probe costs ~10 us of trap here. 0: no limit.
    #[arg(long, value_name = "HITS", default_value_t = DEFAULT_PROBE_MAX_RATE)]
    pub probe_max_rate: u64,
    /// TCP: connection establishment latency, retransmits and resets per cgroup and remote
    /// port (tracepoints only).
    #[arg(long)]
    pub tcp: bool,
}

/// Default `--probe-max-rate`: at ~11 us per function-probe hit (measured here), 500 hits a
/// second cost ~0.6% of one CPU.
pub const DEFAULT_PROBE_MAX_RATE: u64 = 500;

impl WaitArgs {
    /// Whether anything drained with the histograms is asked for.
    pub fn wants_histograms(&self) -> bool {
        self.histograms || self.syscall_latency || self.tcp || !self.probes.is_empty()
    }

    /// Whether a probe records its hits' stacks (USDT probes, tracepoints, functions with
    /// +stacks): the probe profile.
    pub fn probe_profile(&self) -> bool {
        // A spec that does not parse records nothing: `probe_config` says why.
        crate::probe_points::spec::parse_all(&self.probes)
            .is_ok_and(|specs| specs.iter().any(|s| s.takes_stacks()))
    }

    /// The histograms' configuration (`None` if none are asked for), for `pids`.
    pub fn latency_config(
        &self,
        pids: &[u32],
        filter_pids: bool,
        profile_self: bool,
        unwind_entries: Option<u32>,
    ) -> Option<emberprof_probes::LatencyConfig> {
        self.wants_histograms()
            .then(|| emberprof_probes::LatencyConfig {
                core: self.histograms || self.syscall_latency,
                syscalls: self.syscall_latency,
                tcp: self.tcp,
                probes: !self.probes.is_empty(),
                probe_stacks: self.probe_profile(),
                unwind_entries,
                max_keys: self.histogram_keys,
                filter_pids,
                profile_self,
                ..emberprof_probes::LatencyConfig::new(pids.to_vec())
            })
    }

    /// The probe points asked for (`None` without `--probe`); a bad spec is a one-line error.
    pub fn probe_config(
        &self,
        wait_for_files: bool,
    ) -> anyhow::Result<Option<crate::probe_points::ProbeConfig>> {
        if self.probes.is_empty() {
            return Ok(None);
        }
        let specs =
            crate::probe_points::spec::parse_all(&self.probes).map_err(anyhow::Error::msg)?;
        Ok(Some(crate::probe_points::ProbeConfig {
            specs,
            max_rate: self.probe_max_rate,
            wait_for_files,
        }))
    }
}

/// The on-demand profiles at /debug/pprof/* on --http-listen.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct DebugArgs {
    /// Serve /debug/pprof/profile, /flamegraph and /self: profiles of the whole host on
    /// request (process names, paths, build IDs). Without --debug-pprof-token-file every
    /// local user can fetch them on a loopback --http-listen, and any other address is
    /// refused.
    #[arg(long)]
    pub debug_pprof: bool,
    /// File holding the bearer token /debug/pprof requests must send (`Authorization: Bearer
    /// TOKEN`); read at start, at least 16 characters, not readable by others (chmod 600).
    #[arg(long, value_name = "FILE", requires = "debug_pprof")]
    pub debug_pprof_token_file: Option<PathBuf>,
}

/// Sizes and timing of the kernel maps (tuning and tests; hidden from --help).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct MapArgs {
    /// How often the kernel maps are drained and symbolized.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration, hide = true)]
    pub drain_interval: Duration,
    /// Entries in each of the kernel's two stack maps.
    #[arg(long, value_name = "N", default_value_t = emberprof_probes::abi::DEFAULT_STACK_MAP_ENTRIES, hide = true)]
    pub stack_map_entries: u32,
    /// Entries in each of the kernel's two count maps.
    #[arg(long, value_name = "N", default_value_t = emberprof_probes::abi::DEFAULT_COUNT_MAP_ENTRIES, hide = true)]
    pub count_map_entries: u32,
}

/// Where to send profiles and histograms: OTLP and Pyroscope.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct ExportArgs {
    /// Send profiles and histograms to this OTLP/gRPC collector (http:// plaintext, https:// TLS);
    /// default from OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Extra OTLP request header KEY=VALUE (repeatable); adds to OTEL_EXPORTER_OTLP_HEADERS.
    #[arg(long, value_name = "KEY=VALUE")]
    pub otlp_header: Vec<String>,
    /// OTLP compression: gzip or none [default: OTEL_EXPORTER_OTLP_COMPRESSION, else none].
    #[arg(long, value_name = "gzip|none")]
    pub otlp_compression: Option<String>,
    /// Deadline of one OTLP export attempt [default: OTEL_EXPORTER_OTLP_TIMEOUT, else 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub otlp_timeout: Option<Duration>,
    /// CA certificate (PEM) to verify an https:// collector [OTEL_EXPORTER_OTLP_CERTIFICATE].
    #[arg(long, value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS [OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE].
    #[arg(long, value_name = "FILE")]
    pub otlp_client_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS [OTEL_EXPORTER_OTLP_CLIENT_KEY].
    #[arg(long, value_name = "FILE")]
    pub otlp_client_key: Option<PathBuf>,
    /// Bytes of encoded batches the OTLP queue may hold; beyond it the oldest are dropped.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20)]
    pub otlp_queue_bytes: usize,
    /// Temporality of the exported histograms.
    #[arg(long, value_enum, default_value = "cumulative")]
    pub otlp_temporality: TemporalityArg,
    /// How long to keep retrying the export after recording ends.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub otlp_flush_timeout: Duration,
    /// Push the profiles to this Grafana Pyroscope server (e.g. http://pyroscope:4040).
    #[arg(long, value_name = "URL")]
    pub pyroscope_url: Option<String>,
    /// Bytes of encoded profiles the Pyroscope push queue may hold; beyond it the oldest are
    /// dropped (and counted).
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 20)]
    pub pyroscope_queue_bytes: usize,
    /// Pyroscope tenant (X-Scope-OrgID header).
    #[arg(long, value_name = "ID", requires = "pyroscope_url")]
    pub pyroscope_tenant: Option<String>,
    /// Pyroscope basic-auth user.
    #[arg(long, value_name = "USER", requires = "pyroscope_url")]
    pub pyroscope_user: Option<String>,
    /// Also send these attributes, each of which makes a series per process or per thread
    /// in Pyroscope: process.pid, process.command_line, process.executable.path,
    /// thread.id, thread.name, or all (comma-separated or repeated). They apply to pprof
    /// files too (thread labels).
    #[arg(long, value_name = "NAME", value_delimiter = ',',
          value_parser = crate::metadata::attributes::parse_extra)]
    pub extra_attributes: Vec<String>,
    /// Pyroscope basic-auth password.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "EMBERPROF_PYROSCOPE_PASSWORD",
        hide_env_values = true,
        requires = "pyroscope_url"
    )]
    pub pyroscope_password: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TemporalityArg {
    /// Totals since the recording started.
    Cumulative,
    /// Changes since the previous export.
    Delta,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    /// Gzipped pprof protobuf (go tool pprof, Pyroscope, Parca).
    Pprof,
    /// Folded stacks (flamegraph.pl, inferno, speedscope).
    Folded,
    /// SVG flame graph.
    Svg,
}

/// Parses `10`, `2.5`, `500ms`, `10s`, `1m`, `50us`; bare numbers are seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-9)
    } else if let Some(n) = s.strip_suffix("us").or_else(|| s.strip_suffix("µs")) {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 10, 2.5s, 500ms, 1m)"))?;
    let secs = value * scale;
    if !(secs.is_finite() && secs > 0.0 && secs <= 365.0 * 86400.0) {
        return Err(format!(
            "{s:?} must be a positive duration of at most a year"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("10ns"), Ok(Duration::from_nanos(10)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-3").is_err());
        assert!(parse_duration("soon")
            .unwrap_err()
            .contains("not a duration"));
        assert!(parse_duration("NaN").is_err());
    }

    #[test]
    fn every_agent_flag_has_its_emberprof_variable() {
        let cmd = command();
        let agent = cmd.find_subcommand("agent").unwrap();
        for a in agent.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            if long == "help" {
                continue;
            }
            let env = a.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(
                env.as_deref(),
                Some(format!("EMBERPROF_{}", long.replace('-', "_").to_uppercase()).as_str()),
                "--{long}"
            );
        }
    }

    #[test]
    fn agent_defaults_follow_the_peers() {
        let cli = Cli::try_parse_from(["emberprof", "agent"]).unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not an agent command");
        };
        assert_eq!(args.frequency, 19);
        assert_eq!(args.interval, Duration::from_secs(15));
        assert!(Cli::try_parse_from(["emberprof", "agent", "--interval", "soon"]).is_err());
        assert_eq!(
            args.debug,
            DebugArgs::default(),
            "/debug/pprof is off by default"
        );
    }

    #[test]
    fn unwind_switch_and_bound() {
        let parse = |extra: &[&str]| {
            let argv = ["emberprof", "record"].iter().chain(extra);
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Record(args)) => Ok(args.unwind),
                Ok(_) => panic!("not a record command"),
                Err(e) => Err(e),
            }
        };
        let default = parse(&[]).unwrap();
        assert_eq!(default.unwind, UnwindMode::Auto);
        assert_eq!(default.entries(), Some(4 << 20), "32 MiB of 8-byte entries");
        let fp = parse(&["--unwind", "fp", "--unwind-table-mib", "8"]).unwrap();
        assert_eq!(fp.entries(), None);
        let small = parse(&["--unwind-table-mib", "1"]).unwrap();
        assert_eq!(small.entries(), Some(128 << 10));
        // The largest bound is the largest array the kernel's search covers.
        let max = parse(&["--unwind-table-mib", "128"]).unwrap();
        assert_eq!(
            max.entries(),
            Some(emberprof_probes::abi::MAX_UNWIND_ENTRIES)
        );
        for bad in [
            &["--unwind-table-mib", "0"][..],
            &["--unwind-table-mib", "129"],
            &["--unwind", "dwarf"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let agent = Cli::try_parse_from(["emberprof", "agent", "--unwind", "fp"]).unwrap();
        let Command::Agent(args) = agent.command else {
            panic!("not an agent command");
        };
        assert_eq!(args.unwind.unwind, UnwindMode::Fp);
    }

    #[test]
    fn a_debug_token_file_needs_debug_pprof() {
        let token = ["emberprof", "agent", "--debug-pprof-token-file", "/t"];
        assert!(Cli::try_parse_from(token).is_err());
        let cli = Cli::try_parse_from(token.iter().chain(&["--debug-pprof"])).unwrap();
        let Command::Agent(args) = cli.command else {
            panic!("not an agent command");
        };
        assert!(args.debug.debug_pprof);
        assert_eq!(args.debug.debug_pprof_token_file, Some(PathBuf::from("/t")));
    }

    #[test]
    fn cli_rejects_bad_frequency() {
        assert!(Cli::try_parse_from(["emberprof", "record", "--frequency", "0"]).is_err());
        assert!(Cli::try_parse_from(["emberprof", "record", "--frequency", "20000"]).is_err());
        let ok = Cli::try_parse_from(["emberprof", "record", "--pid", "1", "--pid", "2"]).unwrap();
        let Command::Record(args) = ok.command else {
            panic!("not a record command");
        };
        assert_eq!(args.pids, [1, 2]);
        assert_eq!(args.frequency, 99);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert!(!args.waits.off_cpu && !args.cpu);
        assert!(Cli::try_parse_from(["emberprof", "record", "--include-preempted"]).is_err());
        assert!(Cli::try_parse_from(["emberprof", "record", "--histogram-keys", "0"]).is_err());
    }
}
