//! What the agent keeps of the pods on its node: names, owner, annotations and the IDs of
//! their containers, indexed by container ID and pod UID, within a bound.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use emberprof_model::{AttrValue, Attributes};
use k8s_openapi::api::core::v1::Pod;

use super::cgroup::ContainerRef;

/// Pod annotation: "false" excludes a pod; "true" opts it in when profiling is opt-in.
pub const ENABLED_ANNOTATION: &str = "profiles.emberprof.io/enabled";
/// Pod annotation that sets `service.name` for its containers.
pub const SERVICE_NAME_ANNOTATION: &str = "profiles.emberprof.io/service-name";

/// Deleted pods are kept this long: their last samples are still being exported.
const DELETED_KEPT: Duration = Duration::from_secs(120);

/// One pod, as far as profiles need it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    /// The enabled annotation: `Some(false)` for "false", `Some(true)` for "true".
    pub enabled: Option<bool>,
    pub service_name: Option<String>,
    /// Workload owner attributes, e.g. (`k8s.deployment.name`, `web`).
    pub owners: Vec<(&'static str, String)>,
    /// (container ID, container name) of every container status.
    pub containers: Vec<(String, String)>,
}

impl PodInfo {
    /// Reads what we need of a pod; `None` when it lacks a UID.
    pub fn from_pod(pod: &Pod) -> Option<PodInfo> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone()?;
        let annotations = meta.annotations.as_ref();
        let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(|v| v.trim());
        let enabled = annotation(ENABLED_ANNOTATION).and_then(|v| match v {
            "false" => Some(false),
            "true" => Some(true),
            _ => None,
        });
        let status = pod.status.as_ref();
        let statuses = status
            .into_iter()
            .flat_map(|s| {
                s.container_statuses
                    .iter()
                    .flatten()
                    .chain(s.init_container_statuses.iter().flatten())
                    .chain(s.ephemeral_container_statuses.iter().flatten())
            })
            .filter_map(|c| Some((runtime_id(c.container_id.as_deref()?)?, c.name.clone())));
        Some(PodInfo {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            enabled,
            service_name: annotation(SERVICE_NAME_ANNOTATION)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            owners: owners(pod),
            containers: statuses.collect(),
        })
    }

    /// Resource attributes of a process in this pod (and container, when known).
    pub fn attributes(&self, container: Option<&str>) -> Attributes {
        let mut a: Attributes = vec![
            (
                "k8s.namespace.name".into(),
                AttrValue::Str(self.namespace.clone()),
            ),
            ("k8s.pod.name".into(), AttrValue::Str(self.name.clone())),
            ("k8s.pod.uid".into(), AttrValue::Str(self.uid.clone())),
        ];
        if let Some(c) = container {
            a.push(("k8s.container.name".into(), AttrValue::Str(c.to_string())));
        }
        if let Some(n) = &self.node {
            a.push(("k8s.node.name".into(), AttrValue::Str(n.clone())));
        }
        for (key, name) in &self.owners {
            a.push(((*key).into(), AttrValue::Str(name.clone())));
        }
        a
    }

    /// `service.name` for a container of this pod: the annotation, else
    /// `namespace/container` (what Grafana Pyroscope users expect).
    pub fn service_name(&self, container: Option<&str>) -> String {
        if let Some(s) = &self.service_name {
            return s.clone();
        }
        format!("{}/{}", self.namespace, container.unwrap_or(&self.name))
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`.
fn runtime_id(s: &str) -> Option<String> {
    let id = s.rsplit("://").next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// Owner attributes from the controlling owner reference. Deployments and CronJobs are
/// derived from the names their controllers give (`<deployment>-<pod-template-hash>`,
/// `<cronjob>-<scheduled minute>`), as the Collector's k8sattributes processor does,
/// without more API calls (and so without more RBAC).
fn owners(pod: &Pod) -> Vec<(&'static str, String)> {
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return Vec::new();
    };
    let name = owner.name.clone();
    let trimmed = |check: fn(&str) -> bool| {
        name.rsplit_once('-')
            .filter(|(_, suffix)| check(suffix))
            .map(|(base, _)| base.to_string())
    };
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let mut out = vec![("k8s.replicaset.name", name.clone())];
            if let Some(d) = trimmed(|s| {
                (5..=10).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric())
            }) {
                out.push(("k8s.deployment.name", d));
            }
            out
        }
        "Job" => {
            let mut out = vec![("k8s.job.name", name.clone())];
            if let Some(c) = trimmed(|s| s.len() >= 8 && s.bytes().all(|b| b.is_ascii_digit())) {
                out.push(("k8s.cronjob.name", c));
            }
            out
        }
        "DaemonSet" => vec![("k8s.daemonset.name", name)],
        "StatefulSet" => vec![("k8s.statefulset.name", name)],
        _ => Vec::new(),
    }
}

/// The pods of this node, by UID and by container ID.
pub struct PodCache {
    pods: HashMap<String, (PodInfo, Option<Instant>)>,
    by_container: HashMap<String, (String, String)>,
    max_pods: usize,
    /// Pods not kept because the cache was full.
    pub dropped: u64,
}

impl PodCache {
    pub fn new(max_pods: usize) -> PodCache {
        PodCache {
            pods: HashMap::new(),
            by_container: HashMap::new(),
            max_pods: max_pods.max(1),
            dropped: 0,
        }
    }

    /// Adds or updates a pod.
    pub fn apply(&mut self, pod: &Pod) {
        let Some(info) = PodInfo::from_pod(pod) else {
            return;
        };
        self.purge_deleted(false);
        if !self.pods.contains_key(&info.uid) && self.pods.len() >= self.max_pods {
            self.purge_deleted(true);
            if self.pods.len() >= self.max_pods {
                self.dropped += 1;
                return;
            }
        }
        for (id, name) in &info.containers {
            self.by_container
                .insert(id.clone(), (info.uid.clone(), name.clone()));
        }
        self.pods.insert(info.uid.clone(), (info, None));
    }

    /// Marks a pod deleted; it is forgotten after a grace period.
    pub fn delete(&mut self, pod: &Pod) {
        if let Some(entry) = pod.metadata.uid.as_ref().and_then(|u| self.pods.get_mut(u)) {
            entry.1.get_or_insert_with(Instant::now);
        }
    }

    /// Replaces the whole set after a (re-)list; pods missing from it count as deleted.
    pub fn reset(&mut self, pods: &[Pod]) {
        let listed: std::collections::HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        let now = Instant::now();
        for (uid, (_, deleted)) in self.pods.iter_mut() {
            if !listed.contains(uid.as_str()) {
                deleted.get_or_insert(now);
            }
        }
        for pod in pods {
            self.apply(pod);
        }
    }

    /// The pod (and container name) a process's cgroup belongs to.
    pub fn lookup(&self, r: &ContainerRef) -> Option<(&PodInfo, Option<&str>)> {
        if let Some((uid, name)) = r
            .container_id
            .as_ref()
            .and_then(|c| self.by_container.get(c))
        {
            if let Some((pod, _)) = self.pods.get(uid) {
                return Some((pod, Some(name.as_str())));
            }
        }
        let (pod, _) = self.pods.get(r.pod_uid.as_ref()?)?;
        Some((pod, None))
    }

    /// Pods held now (deleted ones in their grace period included).
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    fn purge_deleted(&mut self, all: bool) {
        let before = self.pods.len();
        self.pods.retain(|_, (_, deleted)| match deleted {
            Some(t) => !all && t.elapsed() < DELETED_KEPT,
            None => true,
        });
        if self.pods.len() != before {
            let pods = &self.pods;
            self.by_container
                .retain(|_, (uid, _)| pods.contains_key(uid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e1a2b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).expect("a pod")
    }

    fn web(uid: &str, annotations: serde_json::Value) -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "name": "web-7d4b9c6f5-x2x9q", "namespace": "shop", "uid": uid,
                "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "name": "web-7d4b9c6f5", "uid": "r1", "controller": true}]
            },
            "spec": {"nodeName": "node-a", "containers": [{"name": "app"}]},
            "status": {"containerStatuses": [{"name": "app", "containerID": format!("containerd://{ID}"),
                "image": "x", "imageID": "y", "ready": true, "restartCount": 0}]}
        }))
    }

    #[test]
    fn attributes_owner_and_service_name() {
        let p = PodInfo::from_pod(&web("u1", serde_json::json!({}))).unwrap();
        let attrs = p.attributes(Some("app"));
        let get = |k: &str| {
            attrs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| match v {
                    AttrValue::Str(s) => s.clone(),
                    other => format!("{other:?}"),
                })
        };
        assert_eq!(get("k8s.namespace.name").as_deref(), Some("shop"));
        assert_eq!(get("k8s.pod.name").as_deref(), Some("web-7d4b9c6f5-x2x9q"));
        assert_eq!(get("k8s.container.name").as_deref(), Some("app"));
        assert_eq!(get("k8s.node.name").as_deref(), Some("node-a"));
        assert_eq!(get("k8s.replicaset.name").as_deref(), Some("web-7d4b9c6f5"));
        assert_eq!(get("k8s.deployment.name").as_deref(), Some("web"));
        assert_eq!(p.service_name(Some("app")), "shop/app");
        let named = web(
            "u2",
            serde_json::json!({SERVICE_NAME_ANNOTATION: "checkout", ENABLED_ANNOTATION: "false"}),
        );
        let p = PodInfo::from_pod(&named).unwrap();
        assert_eq!(p.service_name(Some("app")), "checkout");
        assert_eq!(p.enabled, Some(false));
    }

    #[test]
    fn owners_of_other_workloads() {
        let owned = |kind: &str, name: &str| {
            owners(&pod(serde_json::json!({"metadata": {"ownerReferences": [
                {"apiVersion": "v1", "kind": kind, "name": name, "uid": "x", "controller": true}]}})))
        };
        assert_eq!(
            owned("DaemonSet", "node-exporter"),
            vec![("k8s.daemonset.name", "node-exporter".into())]
        );
        assert_eq!(
            owned("StatefulSet", "db"),
            vec![("k8s.statefulset.name", "db".into())]
        );
        assert_eq!(
            owned("Job", "backup-29123456"),
            vec![
                ("k8s.job.name", "backup-29123456".into()),
                ("k8s.cronjob.name", "backup".into())
            ]
        );
        assert_eq!(
            owned("Job", "migrate"),
            vec![("k8s.job.name", "migrate".into())]
        );
        assert!(owned("Node", "n").is_empty());
    }

    #[test]
    fn cache_lookup_delete_relist_and_bound() {
        let mut cache = PodCache::new(2);
        cache.apply(&web("u1", serde_json::json!({})));
        let by_id = ContainerRef {
            container_id: Some(ID.into()),
            ..ContainerRef::default()
        };
        let (p, c) = cache.lookup(&by_id).unwrap();
        assert_eq!((p.uid.as_str(), c), ("u1", Some("app")));
        let by_uid = ContainerRef {
            pod_uid: Some("u1".into()),
            ..ContainerRef::default()
        };
        assert_eq!(cache.lookup(&by_uid).unwrap().1, None);

        // Full: a third pod is dropped and counted...
        cache.apply(&web("u2", serde_json::json!({})));
        cache.apply(&web("u3", serde_json::json!({})));
        assert_eq!((cache.len(), cache.dropped), (2, 1));
        // ...unless a deleted one can make room.
        cache.delete(&web("u1", serde_json::json!({})));
        assert!(
            cache.lookup(&by_uid).is_some(),
            "kept during its grace period"
        );
        cache.apply(&web("u3", serde_json::json!({})));
        assert_eq!(cache.len(), 2);
        assert!(cache.lookup(&by_uid).is_none());

        // A re-list that no longer has u2 marks it deleted (kept for its grace period).
        cache.reset(&[web("u3", serde_json::json!({}))]);
        assert!(cache.pods.get("u2").is_some_and(|(_, d)| d.is_some()));
        assert!(cache.pods.get("u3").is_some_and(|(_, d)| d.is_none()));
    }
}
