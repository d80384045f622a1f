//! Fetching debug files by build ID from debuginfod servers, off the sampling path: a lookup
//! answers from memory or the on-disk cache at once, and otherwise queues a fetch on a
//! background thread; frames in that file get their names at a later symbolization.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// How to reach debuginfod servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebuginfodConfig {
    /// Server base URLs, tried in order (`DEBUGINFOD_URLS` is a space-separated list).
    pub urls: Vec<String>,
    /// Where fetched files and "not found" answers are kept across restarts.
    pub cache_dir: PathBuf,
    /// Deadline of one request, body included.
    pub timeout: Duration,
    /// How long a "not found" answer is believed before asking again.
    pub negative_ttl: Duration,
}

impl DebuginfodConfig {
    /// From `DEBUGINFOD_URLS` (and `DEBUGINFOD_CACHE_PATH`, `DEBUGINFOD_TIMEOUT` in seconds),
    /// as the elfutils client reads them; `None` when no URL is set.
    pub fn from_env() -> Option<DebuginfodConfig> {
        let urls = parse_urls(&std::env::var("DEBUGINFOD_URLS").ok()?);
        if urls.is_empty() {
            return None;
        }
        let cache_dir = std::env::var_os("DEBUGINFOD_CACHE_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(default_cache_dir);
        let timeout = std::env::var("DEBUGINFOD_TIMEOUT")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(Duration::from_secs(90), Duration::from_secs);
        Some(DebuginfodConfig {
            urls,
            cache_dir,
            timeout,
            negative_ttl: Duration::from_secs(3600),
        })
    }
}

/// Splits a `DEBUGINFOD_URLS` value; trailing slashes are dropped.
pub fn parse_urls(value: &str) -> Vec<String> {
    value
        .split_whitespace()
        .map(|u| u.trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// `$XDG_CACHE_HOME/emberprof/debuginfod`, else `~/.cache/...`, else under /var/cache.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("emberprof").join("debuginfod")
}

/// What is known of one build ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Found(PathBuf),
    Pending,
    Missing,
}

/// Counters of the fetcher's work.
#[derive(Default)]
pub(crate) struct FetchStats {
    pub(crate) fetched: AtomicU64,
    pub(crate) not_found: AtomicU64,
    pub(crate) errors: AtomicU64,
}

enum State {
    Pending,
    Found(PathBuf),
    /// Not to be asked again before this instant.
    MissingUntil(Instant),
}

/// The client: a state per build ID and one fetching thread.
pub(crate) struct Debuginfod {
    config: DebuginfodConfig,
    states: HashMap<String, State>,
    queue: Sender<String>,
    done: Receiver<(String, Result<PathBuf, Retry>)>,
    pub(crate) stats: Arc<FetchStats>,
}

/// Why a fetch did not give a file, and so when to ask again.
enum Retry {
    /// Every server said it has no such file.
    NotFound,
    /// A server could not be reached or failed: ask again sooner.
    Failed,
}

/// Errors are retried after this, "not found" after `negative_ttl`.
const ERROR_RETRY: Duration = Duration::from_secs(60);

impl Debuginfod {
    pub(crate) fn new(config: DebuginfodConfig) -> Debuginfod {
        let (queue, jobs) = channel::<String>();
        let (report, done) = channel();
        let stats = Arc::new(FetchStats::default());
        let worker = Worker {
            config: config.clone(),
            stats: stats.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name("ep-debuginfod".into())
            .spawn(move || {
                for id in jobs {
                    let result = worker.fetch(&id);
                    if report.send((id, result)).is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the debuginfod thread; no fetches");
        }
        Debuginfod {
            config,
            states: HashMap::new(),
            queue,
            done,
            stats,
        }
    }

    /// The debug file of `build_id` (hex) if it is here, else whether a fetch is under way.
    pub(crate) fn lookup(&mut self, build_id: &str) -> Lookup {
        let now = Instant::now();
        match self.states.get(build_id) {
            Some(State::Found(p)) => return Lookup::Found(p.clone()),
            Some(State::Pending) => return Lookup::Pending,
            Some(State::MissingUntil(t)) if *t > now => return Lookup::Missing,
            _ => {}
        }
        let dir = self.config.cache_dir.join(build_id);
        let file = dir.join("debuginfo");
        if file.is_file() {
            self.states
                .insert(build_id.to_string(), State::Found(file.clone()));
            return Lookup::Found(file);
        }
        if let Some(left) = marker_age(&dir.join("missing"))
            .and_then(|age| self.config.negative_ttl.checked_sub(age))
        {
            self.states
                .insert(build_id.to_string(), State::MissingUntil(now + left));
            return Lookup::Missing;
        }
        if self.queue.send(build_id.to_string()).is_err() {
            return Lookup::Missing;
        }
        self.states.insert(build_id.to_string(), State::Pending);
        Lookup::Pending
    }

    /// Build IDs whose fetch ended with a file since the last call.
    pub(crate) fn arrived(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok((id, result)) = self.done.try_recv() {
            let state = match result {
                Ok(path) => {
                    out.push(id.clone());
                    State::Found(path)
                }
                Err(Retry::NotFound) => {
                    State::MissingUntil(Instant::now() + self.config.negative_ttl)
                }
                Err(Retry::Failed) => State::MissingUntil(Instant::now() + ERROR_RETRY),
            };
            self.states.insert(id, state);
        }
        out
    }

    /// Build IDs being fetched now.
    pub(crate) fn pending(&self) -> usize {
        self.states
            .values()
            .filter(|s| matches!(s, State::Pending))
            .count()
    }
}

fn marker_age(path: &Path) -> Option<Duration> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    SystemTime::now().duration_since(modified).ok()
}

/// The fetching side, on its own thread.
struct Worker {
    config: DebuginfodConfig,
    stats: Arc<FetchStats>,
}

impl Worker {
    fn fetch(&self, build_id: &str) -> Result<PathBuf, Retry> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.config.timeout))
            .timeout_connect(Some(self.config.timeout.min(Duration::from_secs(10))))
            .http_status_as_error(false)
            .build()
            .into();
        let dir = self.config.cache_dir.join(build_id);
        let mut failed = false;
        for url in &self.config.urls {
            let target = format!("{url}/buildid/{build_id}/debuginfo");
            match self.download(&agent, &target, &dir) {
                Ok(Some(path)) => {
                    self.stats.fetched.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(build_id, server = %url, "fetched debug info");
                    return Ok(path);
                }
                Ok(None) => {}
                Err(error) => {
                    failed = true;
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(build_id, server = %url, %error, "debuginfod fetch failed");
                }
            }
        }
        if failed {
            return Err(Retry::Failed);
        }
        self.stats.not_found.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(build_id, "no debuginfod server has this build ID");
        // Remembered on disk so that a restart does not ask every server again.
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::File::create(dir.join("missing"));
        }
        Err(Retry::NotFound)
    }

    /// `Ok(None)` for "not found"; the file is written under a temporary name first so a
    /// crash never leaves a truncated debug file in the cache.
    fn download(
        &self,
        agent: &ureq::Agent,
        url: &str,
        dir: &Path,
    ) -> Result<Option<PathBuf>, String> {
        let response = agent.get(url).call().map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            code => return Err(format!("HTTP {code}")),
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let tmp = dir.join(format!(".debuginfo.{}", std::process::id()));
        let mut out = std::fs::File::create(&tmp)
            .map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
        let mut body = response.into_body();
        let copied = std::io::copy(&mut body.as_reader(), &mut out)
            .map_err(|e| e.to_string())
            .and_then(|n| out.flush().map(|()| n).map_err(|e| e.to_string()));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let path = dir.join("debuginfo");
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(dir.join("missing"));
        Ok(Some(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_on_whitespace() {
        assert_eq!(
            parse_urls(" http://a:8002/  https://b.example/x\n"),
            vec!["http://a:8002", "https://b.example/x"]
        );
        assert!(parse_urls("  ").is_empty());
    }

    #[test]
    fn unreachable_server_is_retried_later_not_forever_pending() {
        let dir = std::env::temp_dir().join(format!("ep-dbgd-unit-{}", std::process::id()));
        let mut d = Debuginfod::new(DebuginfodConfig {
            // Port 9 on loopback: nothing listens, the connection is refused at once.
            urls: vec!["http://127.0.0.1:9".into()],
            cache_dir: dir.clone(),
            timeout: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(3600),
        });
        assert_eq!(d.lookup("abcdef0123456789"), Lookup::Pending);
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.pending() > 0 && Instant::now() < deadline {
            assert!(d.arrived().is_empty());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(d.lookup("abcdef0123456789"), Lookup::Missing);
        assert_eq!(d.stats.errors.load(Ordering::Relaxed), 1);
        assert!(
            !dir.join("abcdef0123456789/missing").exists(),
            "a failure is not a 'not found' answer"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A server that answers every request 404 and counts them.
    fn not_found_server() -> (String, Arc<AtomicU64>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU64::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                seen.fetch_add(1, Ordering::Relaxed);
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        (url, count)
    }

    #[test]
    fn not_found_is_remembered_on_disk_across_restarts() {
        let dir = std::env::temp_dir().join(format!("ep-dbgd-404-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (url, requests) = not_found_server();
        let config = DebuginfodConfig {
            urls: vec![url],
            cache_dir: dir.clone(),
            timeout: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(3600),
        };
        let id = "0123456789abcdef0123";
        let mut d = Debuginfod::new(config.clone());
        assert_eq!(d.lookup(id), Lookup::Pending);
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.pending() > 0 {
            assert!(Instant::now() < deadline, "the fetch never ended");
            d.arrived();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(d.lookup(id), Lookup::Missing);
        assert_eq!(d.stats.not_found.load(Ordering::Relaxed), 1);
        assert!(dir.join(id).join("missing").is_file());
        // A restarted agent believes the marker and does not ask again.
        let mut again = Debuginfod::new(config);
        assert_eq!(again.lookup(id), Lookup::Missing);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(requests.load(Ordering::Relaxed), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
