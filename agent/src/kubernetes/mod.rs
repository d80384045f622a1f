//! Kubernetes metadata: which pod and container each process runs in, from its cgroup and
//! a watch of this node's pods, as resource attributes and as per-pod opt-in/opt-out.

pub mod cgroup;
pub mod pods;
mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use emberprof_model::{AttrValue, Attributes};

pub use cgroup::{parse_path, parse_proc_cgroup, ContainerRef};
pub use pods::PodCache;
pub use watch::WatchStats;

/// How long the start waits for the first list of pods.
const FIRST_LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Pods held at most (a node runs at most a few hundred).
const MAX_PODS: usize = 5000;

/// The pod watch of this node, shared by everything that reads process metadata.
pub struct Kubernetes {
    cache: Arc<RwLock<PodCache>>,
    /// Only pods annotated `profiles.emberprof.io/enabled: "true"` are profiled (changed
    /// by a configuration reload).
    opt_in: AtomicBool,
    pub stats: Arc<WatchStats>,
    _watch: watch::Watch,
}

static GLOBAL: OnceLock<Option<Kubernetes>> = OnceLock::new();

/// Starts the pod watch when `NODE_NAME` is set and a cluster is reachable (in-cluster
/// service account, or a kubeconfig); once per process. Returns whether it runs.
pub fn init(opt_in: bool) -> bool {
    GLOBAL
        .get_or_init(|| {
            let node = std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty())?;
            match Kubernetes::start(node.clone(), opt_in, None) {
                Ok(k) => {
                    // Attributes read before the first list would lack the pods'.
                    let deadline = std::time::Instant::now() + FIRST_LIST_WAIT;
                    while k.stats.lists.load(Ordering::Relaxed) == 0
                        && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    let pods = k.pods();
                    tracing::info!(node = %node, opt_in, pods, "watching this node's pods");
                    Some(k)
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"),
                        "NODE_NAME is set but the Kubernetes API is not usable; no pod metadata");
                    None
                }
            }
        })
        .is_some()
}

/// The running pod watch, if any.
pub fn get() -> Option<&'static Kubernetes> {
    GLOBAL.get()?.as_ref()
}

impl Kubernetes {
    /// Starts watching the pods of `node`; `config` overrides the inferred client
    /// configuration (tests).
    pub fn start(
        node: String,
        opt_in: bool,
        config: Option<kube::Config>,
    ) -> anyhow::Result<Kubernetes> {
        let cache = Arc::new(RwLock::new(PodCache::new(MAX_PODS)));
        let stats = Arc::new(WatchStats::default());
        let watch = watch::Watch::start(node, config, cache.clone(), stats.clone())?;
        Ok(Kubernetes {
            cache,
            opt_in: AtomicBool::new(opt_in),
            stats,
            _watch: watch,
        })
    }

    fn with_pod<T>(
        &self,
        r: &ContainerRef,
        f: impl FnOnce(&pods::PodInfo, Option<&str>) -> T,
    ) -> Option<T> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let (pod, container) = cache.lookup(r)?;
        Some(f(pod, container))
    }

    /// Adds the pod's attributes to a process's (in `container`, from its cgroup) and sets
    /// its `service.name` to the pod's (the annotation, else `namespace/container`) unless
    /// the process set OTEL_SERVICE_NAME itself.
    pub fn decorate(
        &self,
        container: &ContainerRef,
        own_service_name: bool,
        attrs: &mut Attributes,
    ) {
        let Some((pod_attrs, service)) =
            self.with_pod(container, |p, c| (p.attributes(c), p.service_name(c)))
        else {
            return;
        };
        if !own_service_name {
            for (k, v) in attrs.iter_mut() {
                if k == "service.name" {
                    *v = AttrValue::Str(service.clone());
                }
            }
        }
        attrs.extend(pod_attrs);
    }

    /// Attributes of the pod a cgroup (v2 path) belongs to, for histogram series.
    pub fn cgroup_attributes(&self, path: &str) -> Attributes {
        self.with_pod(&parse_path(path), |p, c| p.attributes(c))
            .unwrap_or_default()
    }

    /// Whether a process in this cgroup may be profiled: pods annotated "false" never, and
    /// with opt-in only pods annotated "true". Processes outside pods are not affected.
    pub fn allows(&self, cgroup_path: &str) -> bool {
        let r = parse_path(cgroup_path);
        if r.pod_uid.is_none() && r.container_id.is_none() {
            return true;
        }
        match self.with_pod(&r, |p, _| p.enabled) {
            Some(Some(enabled)) => enabled,
            // A pod not (yet) known: with opt-in it has not opted in.
            Some(None) | None => !self.opt_in.load(Ordering::Relaxed),
        }
    }

    /// Switches between opt-out (the default) and opt-in per pod.
    pub fn set_opt_in(&self, opt_in: bool) {
        self.opt_in.store(opt_in, Ordering::Relaxed);
    }

    /// Pods held now.
    pub fn pods(&self) -> usize {
        self.cache.read().map_or(0, |c| c.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberprof_test_support::kube_api::{pod, FakeApi};
    use std::time::{Duration, Instant};

    const ID1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const ID2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const ID3: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    const UID1: &str = "00000000-0000-4000-8000-000000000001";
    const UID2: &str = "00000000-0000-4000-8000-000000000002";
    const UID3: &str = "00000000-0000-4000-8000-000000000003";

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn container(id: &str) -> ContainerRef {
        ContainerRef {
            container_id: Some(id.into()),
            ..ContainerRef::default()
        }
    }

    fn pod_name(k: &Kubernetes, id: &str) -> Option<String> {
        k.with_pod(&container(id), |p, _| p.name.clone())
    }

    #[test]
    fn watch_lists_follows_events_and_survives_an_api_server_restart() {
        let web = pod(
            "shop",
            "web-1",
            UID1,
            "node-a",
            ("app", ID1),
            serde_json::json!({}),
        );
        let api = FakeApi::start(0, vec![web], 100);
        let port = api.port;
        let config = kube::Config::new(api.url().parse().unwrap());
        let k = Kubernetes::start("node-a".into(), false, Some(config)).unwrap();
        wait_for("the first list", || pod_name(&k, ID1).is_some());
        assert!(
            api.requests()
                .iter()
                .all(|r| r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
            "{:?}",
            api.requests()
        );

        // A pod started later arrives through the watch.
        api.add_pod(pod(
            "shop",
            "cart-1",
            UID2,
            "node-a",
            ("cart", ID2),
            serde_json::json!({"profiles.emberprof.io/enabled": "false"}),
        ));
        wait_for("the watch event", || pod_name(&k, ID2).is_some());
        assert!(!k.allows(&format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID2}.scope",
            UID2.replace('-', "_")
        )));
        assert!(k.allows(&format!("/kubepods/pod{UID1}/{ID1}")));
        assert!(
            k.allows("/system.slice/sshd.service"),
            "host processes are not pods"
        );

        // The API server restarts with a new history: the old resource version is expired
        // (410), so the watch lists again and the cache is replaced.
        drop(api);
        let db = pod(
            "shop",
            "db-1",
            UID3,
            "node-a",
            ("db", ID3),
            serde_json::json!({}),
        );
        let api = FakeApi::start(port, vec![db], 10_000);
        wait_for("the re-list", || pod_name(&k, ID3).is_some());
        assert!(k.stats.lists.load(Ordering::Relaxed) >= 2);
        // Pods missing from the new list are kept only for their grace period.
        assert!(pod_name(&k, ID1).is_some());
        drop(api);
    }

    #[test]
    fn opt_in_profiles_only_annotated_pods() {
        let on = pod(
            "a",
            "on-1",
            UID1,
            "node-b",
            ("c", ID1),
            serde_json::json!({"profiles.emberprof.io/enabled": "true"}),
        );
        let off = pod(
            "a",
            "plain-1",
            UID2,
            "node-b",
            ("c", ID2),
            serde_json::json!({}),
        );
        let api = FakeApi::start(0, vec![on, off], 1);
        let config = kube::Config::new(api.url().parse().unwrap());
        let k = Kubernetes::start("node-b".into(), true, Some(config)).unwrap();
        wait_for("the list", || pod_name(&k, ID2).is_some());
        assert!(k.allows(&format!("/kubepods/pod{UID1}/{ID1}")));
        assert!(!k.allows(&format!("/kubepods/pod{UID2}/{ID2}")));
        assert!(
            !k.allows(&format!("/kubepods/pod{UID3}/{ID3}")),
            "unknown pods have not opted in"
        );
        assert!(k.allows("/user.slice/session-1.scope"));
    }
}
