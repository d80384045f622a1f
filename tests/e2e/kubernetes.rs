//! Kubernetes metadata end to end: a stand-in API server on loopback serving this node's
//! pods, real cgroups with kubepods-shaped names holding real workloads, and the exported
//! profiles carrying each pod's and container's attributes.

use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use serde_json::json;

use crate::collector::TestCollector;
use crate::kube_api::{pod, FakeApi};
use crate::support::{bpf_test, cgroup2_root, histogram_points, Workload};

const WEB_ID: &str = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const PAY_ID: &str = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
const WEB_UID: &str = "6b1e0f3a-2c4d-4e5f-9a8b-7c6d5e4f3a2b";
const PAY_UID: &str = "7c2f1a4b-3d5e-4f6a-8b9c-0d1e2f3a4b5c";

/// A container cgroup the way the kubelet (systemd driver) and containerd name them,
/// removed (innermost first) when dropped.
struct PodCgroup {
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn create(root: &Path, uid: &str, id: &str) -> PodCgroup {
        let u = uid.replace('-', "_");
        let parts = [
            "ep-test-kubepods.slice".to_string(),
            "kubepods-burstable.slice".to_string(),
            format!("kubepods-burstable-pod{u}.slice"),
            format!("cri-containerd-{id}.scope"),
        ];
        let mut dirs = Vec::new();
        let mut dir = root.to_path_buf();
        for p in parts {
            dir.push(p);
            std::fs::create_dir_all(&dir).expect("creating a cgroup");
            dirs.push(dir.clone());
        }
        PodCgroup { dirs }
    }

    fn adopt(&self, pid: u32) {
        let procs = self.dirs.last().unwrap().join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).expect("moving the workload into its cgroup");
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

/// The API stand-in serving a `web` pod and a `pay` pod (with `pay_annotations`) on
/// node-a, a kubeconfig for it, and the two pods' container cgroups.
fn two_pods(
    pay_annotations: serde_json::Value,
    kubeconfig: &str,
) -> (FakeApi, PathBuf, PodCgroup, PodCgroup) {
    let api = FakeApi::start(
        0,
        vec![
            pod(
                "shop",
                "web-5d8f7b9c4-abcde",
                WEB_UID,
                "node-a",
                ("app", WEB_ID),
                json!({}),
            ),
            pod(
                "shop",
                "pay-5d8f7b9c4-fghij",
                PAY_UID,
                "node-a",
                ("api", PAY_ID),
                pay_annotations,
            ),
        ],
        500,
    );
    let kubeconfig = Path::new(env!("CARGO_TARGET_TMPDIR")).join(kubeconfig);
    api.kubeconfig(&kubeconfig);
    let root = cgroup2_root();
    let web_cg = PodCgroup::create(&root, WEB_UID, WEB_ID);
    let pay_cg = PodCgroup::create(&root, PAY_UID, PAY_ID);
    (api, kubeconfig, web_cg, pay_cg)
}

crate::harness::tests![
    profiles_carry_pod_and_container_attributes,
    the_agent_skips_pods_annotated_enabled_false,
];

fn profiles_carry_pod_and_container_attributes() {
    let Some(_serial) = bpf_test() else { return };
    let (api, kubeconfig, web_cg, pay_cg) = two_pods(
        json!({"profiles.emberprof.io/service-name": "payments"}),
        "fake-kubeconfig",
    );
    let web = Workload::start(&["busy", "1"]);
    let pay = Workload::start(&["busy", "1"]);
    let own = Workload::start_with_env(&["busy", "1"], &[("OTEL_SERVICE_NAME", "self-named")]);
    web_cg.adopt(web.pid());
    pay_cg.adopt(pay.pid());
    pay_cg.adopt(own.pid());

    let collector = TestCollector::start();
    let pids: Vec<String> = [&web, &pay, &own]
        .iter()
        .map(|w| w.pid().to_string())
        .collect();
    let mut args = vec![
        "--duration",
        "2",
        "--frequency",
        "49",
        "--cpu",
        "--histograms",
        "--extra-attributes",
        "process.pid",
        "--otlp-endpoint",
    ];
    let endpoint = collector.endpoint();
    args.push(&endpoint);
    for p in &pids {
        args.extend(["--pid", p.as_str()]);
    }
    let env = [
        ("NODE_NAME", "node-a"),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
    ];
    let rec = crate::support::record_with_env("k8s.pb.gz", &args, &env);
    let (web_pid, pay_pid, own_pid) = (web.pid(), pay.pid(), own.pid());
    drop((web, pay, own));
    assert!(
        api.requests()
            .iter()
            .any(|r| r.contains("/api/v1/pods?")
                && r.contains("fieldSelector=spec.nodeName%3Dnode-a")),
        "{:?}\n{}",
        api.requests(),
        rec.stderr
    );

    let received = collector.received();
    let resources: Vec<&Vec<KeyValue>> = received
        .profiles
        .iter()
        .flat_map(|r| &r.resource_profiles)
        .filter_map(|rp| rp.resource.as_ref().map(|r| &r.attributes))
        .collect();
    let of = |pid: u32| {
        resources
            .iter()
            .find(|a| attr(a, "process.pid") == Some(pid.to_string()))
            .unwrap_or_else(|| panic!("no resource for {pid}: {}", rec.stderr))
    };
    let web = of(web_pid);
    for (k, v) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-5d8f7b9c4-abcde"),
        ("k8s.pod.uid", WEB_UID),
        ("k8s.container.name", "app"),
        ("k8s.node.name", "node-a"),
        ("k8s.deployment.name", "web"),
        ("container.id", WEB_ID),
        ("service.name", "shop/app"),
        ("host.name", "node-a"),
    ] {
        assert_eq!(attr(web, k).as_deref(), Some(v), "{k}: {web:?}");
    }
    let pay = of(pay_pid);
    assert_eq!(
        attr(pay, "service.name").as_deref(),
        Some("payments"),
        "the annotation names it"
    );
    assert_eq!(attr(pay, "k8s.container.name").as_deref(), Some("api"));
    let own = of(own_pid);
    assert_eq!(
        attr(own, "service.name").as_deref(),
        Some("self-named"),
        "OTEL_SERVICE_NAME wins"
    );
    assert_eq!(attr(own, "k8s.pod.uid").as_deref(), Some(PAY_UID));

    // Latency histograms are per cgroup: the web container's series carry its pod too.
    let web_series: Vec<&Vec<KeyValue>> = received
        .metrics
        .iter()
        .flat_map(histogram_points)
        .map(|p| &p.attributes)
        .filter(|a| attr(a, "container.id").as_deref() == Some(WEB_ID))
        .collect();
    assert!(
        !web_series.is_empty(),
        "no histogram series of the web container"
    );
    for a in web_series {
        assert_eq!(attr(a, "k8s.pod.uid").as_deref(), Some(WEB_UID), "{a:?}");
        assert_eq!(
            attr(a, "k8s.container.name").as_deref(),
            Some("app"),
            "{a:?}"
        );
        assert_eq!(
            attr(a, "k8s.deployment.name").as_deref(),
            Some("web"),
            "{a:?}"
        );
    }
    drop((web_cg, pay_cg));
}

fn the_agent_skips_pods_annotated_enabled_false() {
    let Some(_serial) = bpf_test() else { return };
    let (_api, kubeconfig, web_cg, pay_cg) = two_pods(
        json!({"profiles.emberprof.io/enabled": "false"}),
        "fake-kubeconfig-agent",
    );
    let web = Workload::start(&["busy", "1"]);
    let pay = Workload::start(&["busy", "1"]);
    web_cg.adopt(web.pid());
    pay_cg.adopt(pay.pid());

    let collector = TestCollector::start();
    let listen = format!("127.0.0.1:{}", crate::collector::free_port());
    let endpoint = collector.endpoint();
    let (mut agent, _stderr, log) = crate::support::spawn_with_env_until(
        &[
            "agent",
            "--interval",
            "1s",
            "--frequency",
            "99",
            "--otlp-endpoint",
            &endpoint,
            "--http-listen",
            &listen,
            "--extra-attributes",
            "process.pid",
        ],
        &[
            ("NODE_NAME", "node-a"),
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ],
        "agent running",
    );
    assert!(log.contains("watching this node's pods"), "{log}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    crate::support::terminate(&mut agent, &log);
    let (web_pid, pay_pid) = (web.pid().to_string(), pay.pid().to_string());
    drop((web, pay));

    let received = collector.received();
    let pids: Vec<String> = received
        .profiles
        .iter()
        .flat_map(|r| &r.resource_profiles)
        .filter_map(|rp| attr(&rp.resource.as_ref()?.attributes, "process.pid"))
        .collect();
    assert!(
        pids.contains(&web_pid),
        "the plain pod is profiled: {pids:?}"
    );
    assert!(
        !pids.contains(&pay_pid),
        "the opted-out pod appeared: {pids:?}"
    );
    drop((web_cg, pay_cg));
}
