"""The Helm chart helm/delegate, linted and rendered by Helm itself (helm-sdkpy, in .tools/helm) with
its default values and with others, every rendered manifest validated with kubernetes-validate
against the pinned Kubernetes version (helm_render.py). The checks are on what a cluster would get:
the Role's verbs, the sandbox NetworkPolicy's selector and peers, the pods' security, the secret's
source, and the values schema refusing bad values."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from support import REQUIRE_ALL, ROOT, TOOLS

CHART = ROOT / "helm" / "delegate"
HELM_PYTHON = TOOLS / "helm" / "bin" / "python"
RENDER = Path(__file__).with_name("helm_render.py")
DB = "postgres://delegate:pw@db.example.com:5432/delegate"
RELEASE, NAMESPACE = "dlg", "delegate"
FULLNAME = "dlg-delegate"
SERVER_LABELS = {
    "app.kubernetes.io/name": "delegate",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "server",
}
# Everything the kubernetes backend does, per resource (server/src/sandbox/kube/): the Role may
# grant no more. No exec, no attach, nothing cluster-wide.
ALLOWED_VERBS = {
    "pods": {"get", "list", "watch", "create", "patch", "delete", "deletecollection"},
    "pods/log": {"get"},
    "secrets": {"get", "list", "create", "patch", "delete", "deletecollection"},
    "persistentvolumeclaims": {"get", "list", "create", "patch", "delete", "deletecollection"},
}


def helm(request: dict[str, Any]) -> dict[str, Any]:
    if not (HELM_PYTHON.exists() and os.access(HELM_PYTHON, os.X_OK)):
        msg = f"helm-sdkpy's venv missing at {HELM_PYTHON.parent.parent} (scripts/setup --test)"
        if REQUIRE_ALL:
            pytest.fail(msg + " [DELEGATE_REQUIRE_ALL=1: nothing is skipped]", pytrace=False)
        pytest.skip(msg)
    with tempfile.TemporaryDirectory(prefix="dlg-helm-") as home:
        # Helm's caches and the fake API server's kubeconfig go to a fresh HOME, removed after.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": home, "XDG_CACHE_HOME": home, "XDG_CONFIG_HOME": home}
        done = subprocess.run(
            [str(HELM_PYTHON), str(RENDER)], input=json.dumps(request), env=env, capture_output=True,
            text=True, timeout=180,
        )
    assert done.returncode == 0, f"helm_render.py failed ({done.returncode}):\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)


def render(values: dict[str, Any]) -> dict[str, Any]:
    out = helm({"action": "render", "chart": str(CHART), "release": RELEASE, "namespace": NAMESPACE, "values": values})
    assert out["error"] is None, out["error"]
    assert out["invalid"] == [], "manifests invalid for Kubernetes " + out["kube_version"] + ":\n" + "\n".join(out["invalid"])
    return out


def render_error(values: dict[str, Any]) -> str:
    out = helm({"action": "render", "chart": str(CHART), "release": RELEASE, "namespace": NAMESPACE, "values": values})
    assert out["error"], f"Helm accepted {values}"
    assert out["manifests"] == [], "a refused install created something"
    return out["error"]


def chart_annotations(m: dict[str, Any]) -> dict[str, str]:
    """A manifest's annotations but the ones Helm adds to every object."""
    return {k: v for k, v in m["metadata"].get("annotations", {}).items() if not k.startswith("meta.helm.sh/")}


def by_kind(out: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for m in out["manifests"]:
        kinds.setdefault(m["kind"], []).append(m)
    return kinds


def one(kinds: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    assert len(kinds.get(kind, [])) == 1, f"want one {kind}, got {[m['metadata']['name'] for m in kinds.get(kind, [])]}"
    return kinds[kind][0]


def server_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def assert_tight(pod: dict[str, Any], container: dict[str, Any]) -> None:
    ps = pod["securityContext"]
    assert ps["runAsNonRoot"] is True and ps["runAsUser"] != 0
    assert ps["seccompProfile"] == {"type": "RuntimeDefault"}
    cs = container["securityContext"]
    assert cs["allowPrivilegeEscalation"] is False
    assert cs["readOnlyRootFilesystem"] is True
    assert cs["capabilities"] == {"drop": ["ALL"]}


def test_lint_has_no_warnings() -> None:
    out = helm({"action": "lint", "chart": str(CHART)})
    assert out["TotalChartsLinted"] == 1
    # Severity 1 is INFO (e.g. "icon is recommended"); 2 WARNING, 3 ERROR.
    bad = [m for m in out["Messages"] if m["Severity"] >= 2]
    assert bad == [] and not out["Errors"], json.dumps(out)


def test_default_values_need_a_database() -> None:
    err = render_error({})
    assert "a database is required" in err


def test_default_values() -> None:
    kinds = by_kind(render({"secrets": {"databaseUrl": DB, "anthropicApiKey": "sk-ant-chart-test"}}))
    assert set(kinds) == {
        "ServiceAccount", "Secret", "ConfigMap", "Role", "RoleBinding", "Service", "Deployment", "Ingress",
        "PodDisruptionBudget", "NetworkPolicy",
    }
    for manifests in kinds.values():
        for m in manifests:
            assert m["metadata"]["namespace"] == NAMESPACE, m["metadata"]

    deploy = one(kinds, "Deployment")
    assert deploy["spec"]["replicas"] == 2, "any replica serves any kubernetes sandbox"
    assert deploy["spec"]["selector"]["matchLabels"] == SERVER_LABELS
    pod = deploy["spec"]["template"]["spec"]
    c = server_container(deploy)
    assert_tight(pod, c)
    assert pod["serviceAccountName"] == FULLNAME
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["envFrom"] == [{"configMapRef": {"name": FULLNAME}}, {"secretRef": {"name": FULLNAME}}]
    assert "checksum/secret" in deploy["spec"]["template"]["metadata"]["annotations"]

    config = one(kinds, "ConfigMap")["data"]
    assert config["DELEGATE_BACKEND"] == "kubernetes"
    assert config["DELEGATE_K8S_NAMESPACE"] == NAMESPACE
    # Sandboxes reach the proxy through this release's Service, on the Service's port.
    assert config["DELEGATE_K8S_SERVICE"] == FULLNAME
    assert config["DELEGATE_K8S_PROXY_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:80/v1"
    # The egress proxy too, on a port of its own, listened on in the Pod and named by the Service.
    assert config["DELEGATE_EGRESS_LISTEN"] == "0.0.0.0:8081"
    assert config["DELEGATE_K8S_EGRESS_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:8081"
    assert {"name": "egress", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    assert config["DELEGATE_PUBLIC_URL"] == "https://delegate.example.com"
    assert "DELEGATE_K8S_NAMESPACE_PER_WORKSPACE" not in config and "DELEGATE_K8S_NETWORK_POLICY" not in config
    assert "DELEGATE_K8S_RUNTIME_CLASS" not in config and "BASE_DOMAIN" not in config
    # Secrets stay out of the ConfigMap.
    assert not any("sk-ant" in v or "postgres://" in v for v in config.values())
    secret = one(kinds, "Secret")
    assert secret["stringData"] == {"DATABASE_URL": DB, "ANTHROPIC_API_KEY": "sk-ant-chart-test"}

    # The ServiceAccount does not hand its token to every Pod; the server's Pod mounts it itself.
    assert one(kinds, "ServiceAccount")["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is True

    role = one(kinds, "Role")
    assert all(rule["apiGroups"] == [""] for rule in role["rules"]), role["rules"]
    granted = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert set(granted) == set(ALLOWED_VERBS), granted
    for resource, verbs in granted.items():
        assert resource in ALLOWED_VERBS, f"the Role grants {resource}"
        assert verbs <= ALLOWED_VERBS[resource], f"{resource}: {verbs - ALLOWED_VERBS[resource]} beyond the list"
    assert all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"])
    binding = one(kinds, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]

    policy = one(kinds, "NetworkPolicy")["spec"]
    assert policy["podSelector"] == {"matchExpressions": [{"key": "delegate.sandbox", "operator": "Exists"}]}
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    (to_server, to_dns) = policy["egress"]
    assert to_server["to"][0]["podSelector"]["matchLabels"] == SERVER_LABELS
    assert to_server["ports"] == [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8081}]
    assert to_dns["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
    assert {p["port"] for p in to_dns["ports"]} == {53}
    assert [peer["podSelector"]["matchLabels"] for peer in policy["ingress"][0]["from"]] == [SERVER_LABELS]
    assert policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 4096}], "opencode serve's port only"

    assert one(kinds, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    ingress = one(kinds, "Ingress")
    assert [r["host"] for r in ingress["spec"]["rules"]] == ["delegate.example.com"]
    service = one(kinds, "Service")["spec"]
    assert service["selector"] == SERVER_LABELS and service["ports"][0]["targetPort"] == "http"
    # Two replicas, and state (MCP sessions, snapshots, run patches) in the one a client used:
    # each client stays on one replica, through the Ingress and inside the cluster.
    assert chart_annotations(ingress) == {"nginx.ingress.kubernetes.io/upstream-hash-by": "$remote_addr"}
    assert service["sessionAffinity"] == "ClientIP"
    assert service["ports"][1] == {"name": "egress", "port": 8081, "targetPort": "egress", "protocol": "TCP"}


def test_non_default_values() -> None:
    kinds = by_kind(render({
        "replicaCount": 3,
        "existingSecret": "delegate-credentials",
        "ingress": {"enabled": False},
        "postgresql": {"enabled": True, "storageClassName": "fast"},
        "sandbox": {"runtimeClassName": "gvisor", "storageClassName": "fast-rwo", "namespace": "sandboxes",
                    "cpuRequest": "500m", "volumeSize": "20Gi"},
        "service": {"port": 8081},
        "egress": {"containerPort": 9000, "servicePort": 9001},
        "settings": {"DELEGATE_MAX_CONCURRENT_RUNS": 64, "IDLE_TIMEOUT": "10m"},
        "image": {"repository": "registry.example.com/delegate", "tag": "1.2.3"},
    }))
    assert "Ingress" not in kinds
    assert "Secret" not in kinds, "existingSecret: the chart makes no Secret"
    deploy = one(kinds, "Deployment")
    assert deploy["spec"]["replicas"] == 3
    c = server_container(deploy)
    assert c["image"] == "registry.example.com/delegate:1.2.3"
    assert {"secretRef": {"name": "delegate-credentials"}} in c["envFrom"]
    assert "checksum/secret" not in deploy["spec"]["template"]["metadata"]["annotations"]

    config = one(kinds, "ConfigMap")["data"]
    assert config["DELEGATE_K8S_RUNTIME_CLASS"] == "gvisor"
    assert config["DELEGATE_K8S_STORAGE_CLASS"] == "fast-rwo"
    assert config["DELEGATE_K8S_NAMESPACE"] == "sandboxes"
    assert config["DELEGATE_K8S_CPU_REQUEST"] == "500m" and config["DELEGATE_K8S_VOLUME_SIZE"] == "20Gi"
    # The sandboxes live elsewhere; the proxy URL still names the server's namespace and port.
    assert config["DELEGATE_K8S_PROXY_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:8081/v1"
    assert config["DELEGATE_EGRESS_LISTEN"] == "0.0.0.0:9000"
    assert config["DELEGATE_K8S_EGRESS_URL"] == f"http://{FULLNAME}.{NAMESPACE}.svc:9001"
    assert config["DELEGATE_MAX_CONCURRENT_RUNS"] == "64" and config["IDLE_TIMEOUT"] == "10m"

    # The sandbox namespace gets the Role, its binding and the sandbox policy; the server stays in its own.
    role, binding = one(kinds, "Role"), one(kinds, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "sandboxes"
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    sandbox_policy = next(p for p in kinds["NetworkPolicy"] if p["metadata"]["namespace"] == "sandboxes")
    peer = sandbox_policy["spec"]["egress"][0]["to"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    assert sandbox_policy["spec"]["egress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 9000}]

    stateful = one(kinds, "StatefulSet")
    assert stateful["spec"]["replicas"] == 1
    pg = stateful["spec"]["template"]["spec"]
    assert_tight(pg, pg["containers"][0])
    password = next(e for e in pg["containers"][0]["env"] if e["name"] == "POSTGRES_PASSWORD")
    assert password["valueFrom"]["secretKeyRef"] == {"name": "delegate-credentials", "key": "POSTGRES_PASSWORD"}
    assert stateful["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == "fast"
    pg_policy = next(p for p in kinds["NetworkPolicy"] if p["metadata"]["name"].endswith("-postgresql"))
    assert pg_policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == SERVER_LABELS
    budget = one(kinds, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"] == SERVER_LABELS and budget["maxUnavailable"] == 1


def test_namespace_per_workspace_binds_a_cluster_role() -> None:
    kinds = by_kind(render({
        "secrets": {"databaseUrl": DB},
        "sandbox": {"namespacePerWorkspace": True, "namespace": "sandboxes"},
    }))
    # Namespaces made later cannot be reached by a Role: a ClusterRole instead, and no Role.
    assert "Role" not in kinds and "RoleBinding" not in kinds
    role, binding = one(kinds, "ClusterRole"), one(kinds, "ClusterRoleBinding")
    assert "namespace" not in role["metadata"] and "namespace" not in binding["metadata"]
    granted = {(tuple(rule["apiGroups"]), r): set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert granted == {
        **{(("",), r): verbs for r, verbs in ALLOWED_VERBS.items()},
        (("",), "namespaces"): {"get", "create"},
        (("networking.k8s.io",), "networkpolicies"): {"get", "create"},
    }, granted
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": FULLNAME}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    config = one(kinds, "ConfigMap")["data"]
    assert config["DELEGATE_K8S_NAMESPACE_PER_WORKSPACE"] == "true"
    # The policy the server copies into each workspace namespace is the one the chart renders.
    policy = next(p for p in kinds["NetworkPolicy"] if p["metadata"]["namespace"] == "sandboxes")
    assert config["DELEGATE_K8S_NETWORK_POLICY"] == policy["metadata"]["name"] == f"{FULLNAME}-sandboxes"
    # Without the sandbox policy there is nothing to copy.
    config = one(by_kind(render({
        "secrets": {"databaseUrl": DB},
        "sandbox": {"namespacePerWorkspace": True},
        "networkPolicy": {"enabled": False},
    })), "ConfigMap")["data"]
    assert config["DELEGATE_K8S_NAMESPACE_PER_WORKSPACE"] == "true" and "DELEGATE_K8S_NETWORK_POLICY" not in config


def test_egress_listener_can_be_off() -> None:
    """Off: no listener, no Service port, and the sandbox policy opens the server's one port only."""
    kinds = by_kind(render({"secrets": {"databaseUrl": DB}, "egress": {"enabled": False}}))
    config = one(kinds, "ConfigMap")["data"]
    assert "DELEGATE_EGRESS_LISTEN" not in config and "DELEGATE_K8S_EGRESS_URL" not in config
    assert [p["name"] for p in server_container(one(kinds, "Deployment"))["ports"]] == ["http"]
    assert [p["name"] for p in one(kinds, "Service")["spec"]["ports"]] == ["http"]
    policy = one(kinds, "NetworkPolicy")["spec"]
    assert policy["egress"][0]["ports"] == [{"protocol": "TCP", "port": 8080}]


def test_bundled_postgres_builds_the_database_url() -> None:
    kinds = by_kind(render({"replicaCount": 1, "postgresql": {"enabled": True, "password": "p@ss/w:rd"}}))
    secret = one(kinds, "Secret")["stringData"]
    # The password is escaped in the URL, kept as is for PostgreSQL itself.
    assert secret["DATABASE_URL"] == "postgres://delegate:p%40ss%2Fw%3Ard@dlg-delegate-postgresql:5432/delegate"
    assert secret["POSTGRES_PASSWORD"] == "p@ss/w:rd"
    assert "PodDisruptionBudget" not in kinds, "one replica: a budget would block every drain"


def test_client_affinity_can_be_turned_off_or_replaced() -> None:
    base = {"secrets": {"databaseUrl": DB}}
    off = by_kind(render({**base, "ingress": {"clientAffinity": False, "annotations": {"a.example/x": "1"}},
                          "service": {"sessionAffinity": "None"}}))
    assert chart_annotations(one(off, "Ingress")) == {"a.example/x": "1"}
    assert one(off, "Service")["spec"]["sessionAffinity"] == "None"
    # The user's own hash key wins over the chart's.
    own = by_kind(render({**base, "ingress": {"annotations": {
        "nginx.ingress.kubernetes.io/upstream-hash-by": "$http_x_forwarded_for"}}}))
    assert chart_annotations(one(own, "Ingress")) == {
        "nginx.ingress.kubernetes.io/upstream-hash-by": "$http_x_forwarded_for"}
    assert "sessionAffinity" in render_error({**base, "service": {"sessionAffinity": "Cookie"}})


def test_gateway_ingress_and_tls() -> None:
    kinds = by_kind(render({
        "secrets": {"databaseUrl": DB}, "host": "delegate.corp.example", "baseDomain": "sandboxes.corp.example",
        "ingress": {"className": "nginx", "tls": {"enabled": True, "secretName": "delegate-tls"}},
    }))
    ingress = one(kinds, "Ingress")["spec"]
    assert ingress["ingressClassName"] == "nginx"
    assert [r["host"] for r in ingress["rules"]] == ["delegate.corp.example", "*.sandboxes.corp.example"]
    assert ingress["tls"] == [{"secretName": "delegate-tls", "hosts": ["delegate.corp.example", "*.sandboxes.corp.example"]}]
    config = one(kinds, "ConfigMap")["data"]
    assert config["BASE_DOMAIN"] == "sandboxes.corp.example" and config["BASE_SCHEME"] == "https"


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"replicaCount": 0}, "replicaCount"),
        ({"replicaCount": "three"}, "replicaCount"),
        ({"scheme": "ftp"}, "scheme"),
        ({"sandbox": {"runtimeClassName": "G Visor"}}, "runtimeClassName"),
        ({"settings": {"delegate_log": "debug"}}, "delegate_log"),
        ({"secrets": {"databaseUrl": "mysql://db/x"}}, "databaseUrl"),
        ({"rbac": {"clusterWide": True}}, "clusterWide"),
        ({"sandbox": {"volumeSize": "lots"}}, "volumeSize"),
        ({"replicas": 3}, "replicas"),
        ({"egress": {"containerPort": 80}}, "containerPort"),
    ],
)
def test_schema_refuses(values: dict[str, Any], why: str) -> None:
    err = render_error({"secrets": {"databaseUrl": DB}} | values)
    assert "schema" in err.lower() and why in err, err


def test_validation_bites() -> None:
    """The validator the renders go through refuses a broken manifest (so their passing means something)."""
    out = helm({"action": "validate", "manifests": [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
         "spec": {"replicas": "two", "selector": {}, "template": {"spec": {"containers": []}}}},
    ]})
    assert len(out["invalid"]) == 1 and "replicas" in out["invalid"][0], out


def test_values_cannot_inject_yaml() -> None:
    """A value with quotes and line breaks lands as that one string, never as more keys."""
    hostile = 'x"\n  DELEGATE_BACKEND: process\n#'
    kinds = by_kind(render({
        "secrets": {"databaseUrl": DB, "extra": {"OIDC_CLIENT_SECRET": hostile}},
        "settings": {"DELEGATE_MODEL": hostile},
    }))
    config = one(kinds, "ConfigMap")["data"]
    assert config["DELEGATE_MODEL"] == hostile and config["DELEGATE_BACKEND"] == "kubernetes"
    assert one(kinds, "Secret")["stringData"]["OIDC_CLIENT_SECRET"] == hostile


def test_settings_cannot_override_the_charts_own() -> None:
    err = render_error({"secrets": {"databaseUrl": DB}, "settings": {"DELEGATE_BACKEND": "process"}})
    assert "settings.DELEGATE_BACKEND: the chart sets DELEGATE_BACKEND" in err, err
