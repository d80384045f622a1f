#!/usr/bin/env python3
"""Tests of the Helm chart, the Dockerfile's capabilities and the examples.

Renders helm/emberprof with the value sets in helm/tests/values/, validates every manifest
against the Kubernetes API schemas (kubernetes-validate, strict, oldest and newest supported
version), asserts on what the agent depends on, checks that values.schema.json and the
templates refuse bad values, and runs the rendered agent configuration through
`emberprof config check`.

tools.py fetches helm and kubernetes-validate. When one cannot be fetched the tests are
skipped, unless CI is set: then they fail.
"""

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in the source tree for the import below
from tools import ROOT, Skip, fetch_helm, fetch_python_tools, find_emberprof, in_ci

CHART = ROOT / "helm" / "emberprof"
VALUES = ROOT / "helm" / "tests" / "values"
# Oldest and newest API versions kubernetes-validate 1.37 has schemas for; Chart.yaml's
# kubeVersion starts at the oldest.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]

NAMESPACE = "profiling"
RELEASE = "ep"
DEFAULT_CAPS = ["BPF", "PERFMON", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH",
                "CHECKPOINT_RESTORE", "SYSLOG"]


# ---------------------------------------------------------------- rendering


class Helm:
    def __init__(self, binary):
        self.binary = binary

    def run(self, *args):
        return subprocess.run([self.binary, *args], capture_output=True, text=True,
                              timeout=60)

    def template(self, *value_files, sets=(), expect_ok=True):
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for f in value_files:
            args += ["-f", str(VALUES / f)]
        for s in sets:
            args += ["--set", s]
        out = self.run(*args)
        if expect_ok:
            assert out.returncode == 0, f"helm template {value_files} {sets}: {out.stderr}"
            return Manifests(yaml.safe_load_all(out.stdout))
        return out


class Manifests:
    def __init__(self, docs):
        self.docs = [d for d in docs if d]

    def of(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind):
        found = self.of(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def pod(self):
        return self.one("DaemonSet")["spec"]["template"]

    @property
    def container(self):
        containers = self.pod["spec"]["containers"]
        assert len(containers) == 1, containers
        return containers[0]

    def env(self, name):
        found = [e for e in self.container.get("env", []) if e["name"] == name]
        assert found, f"no env {name}"
        return found[0]

    @property
    def config(self):
        return yaml.safe_load(self.one("ConfigMap")["data"]["config.yaml"])

    def mount(self, volume):
        found = [m for m in self.container["volumeMounts"] if m["name"] == volume]
        assert len(found) == 1, f"mounts of {volume}: {found}"
        return found[0]

    def volume(self, name):
        found = [v for v in self.pod["spec"]["volumes"] if v["name"] == name]
        assert len(found) == 1, f"volumes named {name}: {found}"
        return found[0]


def value_sets():
    return [None] + sorted(p.name for p in VALUES.glob("*.yaml"))


# ---------------------------------------------------------------- tests


class Tests:
    def __init__(self, helm, emberprof):
        self.helm = helm
        self.emberprof = emberprof
        self.rendered = {}

    def render(self, value_file=None):
        if value_file not in self.rendered:
            files = (value_file,) if value_file else ()
            self.rendered[value_file] = self.helm.template(*files)
        return self.rendered[value_file]

    # -- schemas and lint

    def test_every_manifest_valid_against_kubernetes_schemas(self):
        kinds = set()
        for vf in value_sets():
            for doc in self.render(vf).docs:
                kinds.add(doc["kind"])
                if doc["kind"] == "ServiceMonitor":
                    continue  # a CRD: checked structurally in its own test
                for version in KUBE_VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        raise AssertionError(
                            f"{vf or 'defaults'}: {doc['kind']} {doc['metadata']['name']} "
                            f"invalid for Kubernetes {version}: {e.message} at {list(e.path)}")
        expected = {"DaemonSet", "ConfigMap", "ServiceAccount", "ClusterRole",
                    "ClusterRoleBinding", "Secret", "Service", "ServiceMonitor"}
        assert kinds == expected, f"rendered kinds {kinds}, expected {expected}"

    def test_helm_lint_strict_with_every_value_set(self):
        for vf in value_sets():
            args = ["lint", "--strict", str(CHART)]
            if vf:
                args += ["-f", str(VALUES / vf)]
            out = self.helm.run(*args)
            assert out.returncode == 0, f"helm lint {vf}: {out.stdout}{out.stderr}"

    def test_schema_rejects_bad_values(self):
        bad = {
            "frequency=abc": "/frequency",
            "frequency=0": "/frequency",
            "frequency=20000": "/frequency",
            "interval=15": "/interval",
            "offCpu.enabeld=true": "enabeld",
            "exporters.otlp.endpoint=collector:4317": "/exporters/otlp/endpoint",
            "exporters.otlp.temporality=weekly": "/exporters/otlp/temporality",
            "capabilities={CAP_BPF}": "/capabilities",
            "http.port=0": "/http/port",
            "runAsUser=-1": "/runAsUser",
            "kubernetes.optIn=yes": "/kubernetes/optIn",
            "unwind.mode=dwarf": "/unwind/mode",
            "unwind.tableMib=0": "/unwind/tableMib",
            "unwind.tableMib=129": "/unwind/tableMib",
            "python.enabled=maybe": "/python/enabled",
            "probePoints.specs={kprobe:do_sys_open}": "/probePoints/specs/0",
            "probePoints.specs={uprobe:app:f}": "/probePoints/specs/0",
            "probePoints.maxRate=-1": "/probePoints/maxRate",
            "tcp.enabled=1": "/tcp/enabled",
        }
        for value, where in bad.items():
            out = self.helm.template(sets=[value], expect_ok=False)
            assert out.returncode != 0, f"--set {value} was accepted"
            assert "schema" in out.stderr and where in out.stderr, \
                f"--set {value}: expected a schema error at {where}, got {out.stderr}"
        both = self.helm.template(sets=["secret.create=true", "secret.otlpHeaders=a=b",
                                        "secret.existingSecret=mine"], expect_ok=False)
        assert both.returncode != 0 and "schema" in both.stderr, both.stderr
        half_tls = self.helm.template(sets=["exporters.otlp.tls.secretName=t",
                                            "exporters.otlp.tls.clientCert=tls.crt"],
                                      expect_ok=False)
        assert half_tls.returncode != 0 and "clientKey" in half_tls.stderr, half_tls.stderr

    def test_templates_refuse_what_would_fail_at_run_time(self):
        out = self.helm.template(sets=["capabilities={BPF,PERFMON}"], expect_ok=False)
        assert out.returncode != 0 and "capabilities must include SYS_RESOURCE" in out.stderr, \
            out.stderr
        # Root uses the container's capabilities directly, so a shorter list is fine.
        m = self.helm.template(sets=["capabilities={BPF,PERFMON}", "runAsUser=0"])
        assert m.container["securityContext"]["capabilities"]["add"] == ["BPF", "PERFMON"]
        out = self.helm.template(sets=["secret.create=true"], expect_ok=False)
        assert out.returncode != 0 and "secret.create needs" in out.stderr, out.stderr

    # -- the DaemonSet

    def test_defaults_least_privilege_daemonset(self):
        m = self.render()
        spec = m.pod["spec"]
        assert spec.get("hostPID") is True, "hostPID: the host's processes are the ones to profile"
        assert not spec.get("hostNetwork") and not spec.get("hostIPC")
        sc = m.container["securityContext"]
        assert sc["capabilities"] == {"drop": ["ALL"], "add": DEFAULT_CAPS}, sc
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["runAsUser"] == 65532 and sc["runAsNonRoot"] is True
        # Required for the binary's file capabilities (no_new_privs would drop them).
        assert sc["allowPrivilegeEscalation"] is True
        assert "privileged" not in sc
        assert spec["tolerations"] == [{"operator": "Exists"}]
        assert "priorityClassName" not in spec
        assert spec["serviceAccountName"] == m.one("ServiceAccount")["metadata"]["name"]

    def test_privileged_switch(self):
        sc = self.render("privileged.yaml").container["securityContext"]
        assert sc["privileged"] is True and sc["runAsUser"] == 0
        assert sc["readOnlyRootFilesystem"] is True
        assert "capabilities" not in sc, sc

    def test_probes_on_health_endpoints_and_the_listen_port(self):
        for vf in (None, "custom.yaml"):
            m = self.render(vf)
            c = m.container
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
            port = [p for p in c["ports"] if p["name"] == "http"][0]["containerPort"]
            listen = m.config["http_listen"]
            assert listen.endswith(f":{port}"), (listen, port)
            # Probes come from the kubelet on the pod IP: loopback would fail them.
            assert not listen.startswith("127."), listen
        assert self.render("custom.yaml").config["http_listen"] == "[::]:9071"

    def test_node_name_from_downward_api(self):
        m = self.render()
        env = m.container["env"]
        assert m.env("NODE_NAME")["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        names = [e["name"] for e in env]
        attrs = m.env("OTEL_RESOURCE_ATTRIBUTES")["value"]
        # $(VAR) expands only from variables defined earlier in the list.
        assert names.index("NODE_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES")
        assert attrs == "host.name=$(NODE_NAME),k8s.node.name=$(NODE_NAME)", attrs
        custom = self.render("custom.yaml").env("OTEL_RESOURCE_ATTRIBUTES")["value"]
        assert "deployment.environment=staging%20eu" in custom, custom
        assert "k8s.cluster.name=prod%2C1" in custom, custom

    def test_host_mounts_read_only(self):
        m = self.render()
        for name, path in (("btf", "/sys/kernel/btf"), ("cgroup", "/sys/fs/cgroup")):
            assert m.volume(name)["hostPath"]["path"] == path
            mount = m.mount(name)
            assert mount["mountPath"] == path and mount["readOnly"] is True, mount
        assert all(v.get("hostPath", {}).get("path") != "/proc" for v in m.pod["spec"]["volumes"])
        for vf in value_sets():
            for mount in self.render(vf).container["volumeMounts"]:
                assert mount.get("readOnly") or mount["name"] in ("pprof", "debuginfod-cache"), \
                    (vf, mount)

    def test_config_file_is_the_mounted_configmap(self):
        m = self.render()
        args = m.container["args"]
        path = args[args.index("--config") + 1]
        mount = m.mount("config")
        assert m.volume("config")["configMap"]["name"] == m.one("ConfigMap")["metadata"]["name"]
        assert path == mount["mountPath"] + "/config.yaml", (path, mount)
        assert args[0] == "agent"

    def test_custom_scheduling_and_resources(self):
        m = self.render("custom.yaml")
        spec = m.pod["spec"]
        assert spec["priorityClassName"] == "system-node-critical"
        assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal",
                                        "value": "gpu", "effect": "NoSchedule"}]
        assert m.container["resources"] == {"requests": {"cpu": "200m", "memory": "300Mi"},
                                            "limits": {"cpu": "1", "memory": "1Gi"}}
        sc = m.container["securityContext"]
        assert sc["runAsUser"] == 0 and sc["runAsNonRoot"] is False
        assert sc["allowPrivilegeEscalation"] is False, "root needs no file capabilities"
        assert sc["capabilities"]["add"] == ["BPF", "PERFMON", "SYS_PTRACE"]
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        limit = self.render().container["resources"]["limits"]["memory"]
        assert limit == "320Mi", limit
        # The default limit holds the agent's measured peak RSS with a large binary busy
        # (160 MiB, docs/benchmarks.md), both export queues full at their default bound,
        # and the kernel maps charged to the pod: 53 MiB with every profile on, plus the
        # unwind tables' array (README, "Memory: where it goes").
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        queue = values["exporters"]["otlp"]["queueBytes"]
        tables = values["unwind"]["tableMib"] * 2**20
        assert 320 * 2**20 >= 160 * 2**20 + 2 * queue + 53 * 2**20 + tables, (queue, tables)

    def test_config_change_rolls_the_pods(self):
        a = self.render().pod["metadata"]["annotations"]["checksum/config"]
        b = self.helm.template(sets=["frequency=29"]).pod["metadata"]["annotations"]
        assert b["checksum/config"] != a

    # -- RBAC

    def test_cluster_role_is_read_only_pods_and_nodes(self):
        m = self.render()
        role = m.one("ClusterRole")
        rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"])))
                       for r in role["rules"])
        assert rules == [(("",), ("nodes",), ("get",)),
                         (("",), ("pods",), ("get", "list", "watch"))], rules
        binding = m.one("ClusterRoleBinding")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                      "kind": "ClusterRole", "name": role["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "namespace": NAMESPACE,
                                        "name": m.pod["spec"]["serviceAccountName"]}]

    # -- the agent's configuration

    def test_config_keys_and_opt_in(self):
        assert "k8s_opt_in" not in self.render().config
        assert self.render("opt-in.yaml").config["k8s_opt_in"] is True
        full = self.render("full-config.yaml").config
        assert full["frequency"] == 49 and full["interval"] == "30s"
        assert full["off_cpu"] is True and full["min_block"] == "50us"
        assert full["histograms"] is True and full["syscall_latency"] is True
        assert full["include_cgroup"] == ["/kubepods.slice"]
        assert full["otlp_endpoint"] == "http://otel-collector.observability:4317"
        assert full["otlp_header"] == {"x-scope-orgid": "team-a"}
        assert full["pprof_dir"] == "/var/lib/emberprof/pprof"
        assert full["symbol_files"] == 2048
        assert full["unwind"] == "fp" and full["unwind_table_mib"] == 16
        assert full["no_python"] is True
        assert full["probe"] == ["uprobe:/usr/bin/app:handle_request",
                                 "tracepoint:sched:sched_process_exec"]
        assert full["probe_max_rate"] == 200 and full["tcp"] is True
        defaults = self.render().config
        assert "probe" not in defaults and "tcp" not in defaults
        assert defaults["unwind"] == "auto" and defaults["unwind_table_mib"] == 32
        assert defaults["no_python"] is False
        m = self.render("full-config.yaml")
        assert m.mount("pprof")["mountPath"] == full["pprof_dir"]
        assert m.volume("pprof")["emptyDir"] == {"sizeLimit": "700Mi"}
        # Fetched debug info needs a writable directory on the read-only root filesystem.
        assert full["debuginfod_urls"] == "https://debuginfod.debian.net"
        assert full["debuginfod_cache"].startswith(m.mount("debuginfod-cache")["mountPath"] + "/")
        assert m.volume("debuginfod-cache")["emptyDir"] == {"sizeLimit": "1Gi"}
        assert "debuginfod_urls" not in self.render().config

    def test_rendered_configs_pass_emberprof_config_check(self):
        if self.emberprof is None:
            if in_ci():
                raise AssertionError("no emberprof binary (build it, or set EMBERPROF)")
            raise Skip("no emberprof binary in target/: build it to check rendered configs")
        known = set(re.findall(r"^([a-z_0-9]+):", self.agent("config", "default").stdout, re.M))
        assert {"frequency", "interval", "http_listen"} <= known, known
        with tempfile.TemporaryDirectory() as tmp:
            for vf in value_sets():
                config = self.render(vf).config
                unknown = set(config) - known - {"k8s_opt_in"}
                assert not unknown, f"{vf}: keys the agent does not know: {unknown}"
                if "k8s_opt_in" in config and "k8s_opt_in" not in known:
                    continue  # the agent's Kubernetes support is not in this build yet
                path = Path(tmp) / f"{vf or 'defaults'}"
                path.write_text(self.render(vf).one("ConfigMap")["data"]["config.yaml"])
                out = self.agent("config", "check", str(path))
                assert out.returncode == 0, f"{vf}: {out.stdout}{out.stderr}"
            # The check has teeth: a key the agent does not know is refused.
            bad = Path(tmp) / "bad"
            bad.write_text("frequency: 19\nfrequencyy: 19\n")
            assert self.agent("config", "check", str(bad)).returncode == 2

    def agent(self, *args):
        return subprocess.run([self.emberprof, *args], capture_output=True, text=True,
                              timeout=30)

    # -- credentials

    def test_secret_headers_reach_env_not_configmap(self):
        m = self.render("secret-headers.yaml")
        secret = m.one("Secret")
        assert secret["stringData"] == {"otlp-headers": "authorization=Bearer%20s3cr3t-token",
                                        "pyroscope-password": "pyro-s3cr3t"}
        for env, key in (("OTEL_EXPORTER_OTLP_HEADERS", "otlp-headers"),
                         ("EMBERPROF_PYROSCOPE_PASSWORD", "pyroscope-password")):
            ref = m.env(env)["valueFrom"]["secretKeyRef"]
            assert ref == {"name": secret["metadata"]["name"], "key": key, "optional": True}, ref
        configmap = m.one("ConfigMap")["data"]["config.yaml"]
        assert "s3cr3t" not in configmap, configmap
        assert "checksum/secret" in m.pod["metadata"]["annotations"]
        config = m.config
        mount = m.mount("otlp-tls")["mountPath"]
        assert m.volume("otlp-tls")["secret"]["secretName"] == "otlp-client-tls"
        assert (config["otlp_ca"], config["otlp_client_cert"], config["otlp_client_key"]) == \
            (f"{mount}/ca.crt", f"{mount}/tls.crt", f"{mount}/tls.key"), config
        assert config["pyroscope_user"] == "ember" and "pyroscope_password" not in config

    def test_existing_secret_is_referenced_not_created(self):
        m = self.render("existing-secret.yaml")
        assert not m.of("Secret")
        ref = m.env("OTEL_EXPORTER_OTLP_HEADERS")["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "emberprof-credentials", ref
        names = [e["name"] for e in self.render().container["env"]]
        assert "OTEL_EXPORTER_OTLP_HEADERS" not in names, "no Secret, no reference to one"

    # -- /debug/pprof

    def test_debug_pprof_is_off_by_default(self):
        for vf in value_sets():
            if vf == "debug-pprof.yaml":
                continue
            m = self.render(vf)
            assert "debug_pprof" not in m.config, vf
            assert all(v["name"] != "debug-pprof-token" for v in m.pod["spec"]["volumes"]), vf

    def test_debug_pprof_token_is_an_owner_only_file_from_the_secret(self):
        m = self.render("debug-pprof.yaml")
        config = m.config
        assert config["debug_pprof"] is True
        mount = m.mount("debug-pprof-token")
        assert mount["readOnly"] is True
        assert config["debug_pprof_token_file"] == mount["mountPath"] + "/token", config
        secret = m.one("Secret")
        assert secret["stringData"]["debug-pprof-token"] == "0123456789abcdef0123456789abcdef"
        volume = m.volume("debug-pprof-token")["secret"]
        assert volume == {"secretName": secret["metadata"]["name"], "defaultMode": 0o400,
                          "items": [{"key": "debug-pprof-token", "path": "token"}]}, volume
        assert "0123456789abcdef" not in m.one("ConfigMap")["data"]["config.yaml"]
        # The token is read at start: a new one must roll the pods.
        a = m.pod["metadata"]["annotations"]["checksum/secret"]
        b = self.helm.template("debug-pprof.yaml",
                               sets=["secret.debugPprofToken=fedcba9876543210fedcba98"])
        assert b.pod["metadata"]["annotations"]["checksum/secret"] != a
        existing = self.helm.template("existing-secret.yaml", sets=["debugPprof.enabled=true"])
        assert existing.volume("debug-pprof-token")["secret"]["secretName"] == \
            "emberprof-credentials"
        assert existing.config["debug_pprof_token_file"].endswith("/token")

    def test_debug_pprof_is_never_exposed_without_a_token(self):
        for sets in (["debugPprof.enabled=true"],
                     ["debugPprof.enabled=true", "secret.create=true",
                      "secret.otlpHeaders=a=b"],
                     ["debugPprof.enabled=true", "http.host=[::]"],
                     ["extraConfig.debug_pprof=true"],
                     ["extraConfig.debug_pprof=true", "http.host=10.0.0.1"]):
            out = self.helm.template(sets=sets, expect_ok=False)
            assert out.returncode != 0, f"--set {sets} was accepted"
            assert "without a token" in out.stderr and "debug-pprof-token" in out.stderr, \
                (sets, out.stderr)
        # Loopback reaches only the pod itself (no hostNetwork): allowed, as by the agent.
        m = self.helm.template(sets=["debugPprof.enabled=true", "http.host=127.0.0.1"])
        assert m.config["debug_pprof"] is True and "debug_pprof_token_file" not in m.config
        for token in ("short", "has a space in it 0123456789"):
            out = self.helm.template("debug-pprof.yaml", sets=[f"secret.debugPprofToken={token}"],
                                     expect_ok=False)
            assert out.returncode != 0 and "/secret/debugPprofToken" in out.stderr, out.stderr

    # -- metrics scraping

    def test_service_monitor_selects_the_agents(self):
        assert not self.render().of("ServiceMonitor") and not self.render().of("Service")
        m = self.render("servicemonitor.yaml")
        svc, sm = m.one("Service"), m.one("ServiceMonitor")
        pod_labels = m.pod["metadata"]["labels"]
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["selector"].items() <= pod_labels.items()
        port = svc["spec"]["ports"][0]
        assert port["targetPort"] == "http" and port["port"] == 7071
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["namespace"] == NAMESPACE
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        [endpoint] = sm["spec"]["endpoints"]
        assert endpoint["port"] == port["name"] and endpoint["path"] == "/metrics"
        assert endpoint["interval"] == "15s"
        assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"],
                "targetLabel": "k8s_node_name"} in endpoint["relabelings"]

    def test_readme_documents_every_value(self):
        readme = (CHART / "README.md").read_text()
        documented = set()
        for line in readme.splitlines():
            if line.startswith("| `"):
                documented |= set(re.findall(r"`([^`]+)`", line.split("|")[1]))
        values = yaml.safe_load((CHART / "values.yaml").read_text())

        def leaves(d, prefix=""):
            for k, v in d.items():
                path = prefix + k
                if isinstance(v, dict) and v and path not in ("resources", "updateStrategy"):
                    yield from leaves(v, path + ".")
                else:
                    yield path
        missing = [p for p in leaves(values) if p not in documented
                   and not any(d.endswith(".*") and p.startswith(d[:-1]) for d in documented)]
        assert not missing, f"values without a row in the README: {missing}"

    # -- image

    def test_dockerfile_file_capabilities_match_the_chart(self):
        dockerfile = (ROOT / "Dockerfile").read_text()
        [setcap] = re.findall(r"setcap (\S+)\+ep /usr/local/bin/emberprof", dockerfile)
        file_caps = sorted(c.removeprefix("cap_").upper() for c in setcap.split(","))
        helpers = (CHART / "templates" / "_helpers.tpl").read_text()
        [chart_caps] = re.findall(r'define "emberprof.fileCapabilities" -}}\n(.*)\n', helpers)
        assert file_caps == sorted(chart_caps.split()), (file_caps, chart_caps)
        assert file_caps == sorted(DEFAULT_CAPS), (file_caps, DEFAULT_CAPS)
        [user] = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
        assert int(user[0]) == self.render().container["securityContext"]["runAsUser"]

    # -- examples

    def test_collector_example(self):
        text = (ROOT / "examples" / "otel-collector.yaml").read_text()
        assert "--feature-gates=service.profilesSupport" in text
        c = yaml.safe_load(text)
        assert "grpc" in c["receivers"]["otlp"]["protocols"]
        pipelines = c["service"]["pipelines"]
        assert "k8sattributes" in pipelines["profiles"]["processors"]
        assert c["processors"]["k8sattributes"]["pod_association"] == [
            {"sources": [{"from": "resource_attribute", "name": "container.id"}]}]
        for signal, exporter in (("profiles", "otlp"), ("metrics", "prometheus")):
            p = pipelines[signal]
            assert p["receivers"] == ["otlp"], p
            assert p["processors"][-1] == "batch", p
            assert any(e.split("/")[0] == exporter for e in p["exporters"]), p
            for name in p["processors"] + p["exporters"]:
                section = "processors" if name in p["processors"] else "exporters"
                assert name in c[section], f"{signal} uses undefined {name}"
        profiles_exporter = [e for e in pipelines["profiles"]["exporters"]
                             if e.startswith("otlp")][0]
        assert c["exporters"][profiles_exporter]["endpoint"], "Pyroscope endpoint"

    def test_grafana_dashboard_uses_real_metric_names(self):
        dashboard = json.loads((ROOT / "examples" / "grafana-dashboard.json").read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert len(exprs) >= 8, exprs
        crates = ("agent/src", "probes/src", "exporters/src", "symbolizer/src")
        source = "".join(p.read_text() for d in crates for p in (ROOT / d).rglob("*.rs"))
        known = {n.replace(".", "_") for n in re.findall(r'"(emberprof(?:\.[a-z_]+)+)"', source)}
        known |= set(re.findall(r"\b(process_[a-z_]+)\b", source))
        used = set()
        for expr in exprs:
            used |= set(re.findall(r"\b((?:emberprof|process)_[a-z_]+)\b", expr))
        for name in used:
            base = re.sub(r"_(total|nanoseconds)$", "", name)
            assert name in known or base in known, f"dashboard metric {name} is not emitted"
        for h in ("emberprof_sched_runqueue_latency_nanoseconds",
                  "emberprof_block_io_latency_nanoseconds", "emberprof_cpu_samples_total"):
            assert h in used, f"dashboard lacks {h}"
        # Health counters reach Prometheus twice (the agent's /metrics and OTLP through the
        # Collector): the panels keep to the scraped ones, which prometheus-operator labels
        # with the pod's container name. Histograms come only through the Collector.
        container = self.render().container["name"]
        for expr in exprs:
            scraped = f'container="{container}"' in expr
            assert scraped != ("_nanoseconds" in expr), f"wrong source filter: {expr}"


# ---------------------------------------------------------------- runner


def main():
    started = time.monotonic()
    try:
        helm = fetch_helm()
        fetch_python_tools()
    except Skip as e:
        if in_ci():
            print(f"chart tests: FAIL: {e}", file=sys.stderr)
            return 1
        print(f"chart tests: skipped: {e}", file=sys.stderr)
        return 0
    global yaml, kubernetes_validate
    import yaml
    import kubernetes_validate

    tests = Tests(Helm(helm), find_emberprof())
    passed = failed = skipped = 0
    for name in sorted(n for n in dir(tests) if n.startswith("test_")):
        try:
            getattr(tests, name)()
            passed += 1
            print(f"ok   {name}")
        except Skip as e:
            skipped += 1
            print(f"skip {name}: {e}")
        except Exception as e:  # noqa: BLE001 - any error fails the test, not the run
            failed += 1
            print(f"FAIL {name}: {type(e).__name__}: {e}")
    print(f"chart tests: {time.monotonic() - started:.1f} s")
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
