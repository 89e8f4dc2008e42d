"""Lints and renders helm/delegate with Helm itself (helm-sdkpy, Helm as a library), and validates
every rendered manifest with kubernetes-validate against a pinned Kubernetes version.

Runs in .tools/helm (helm-sdkpy needs Python 3.12; .tools/venv is 3.11), driven by test_helm.py:
a JSON request on stdin, a JSON answer on stdout.

helm-sdkpy has no `helm template`: its install always talks to an API server. So this serves a
minimal fake one on 127.0.0.1:0 (discovery for the kinds the chart uses, 404 for every existing
object, the created object echoed back) and records what Helm creates: those are the rendered
manifests, after Helm's own values schema check, kubeVersion check and template rendering.
Release records stay in memory (HELM_DRIVER=memory), so nothing but the manifests is created.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The Kubernetes version the chart is rendered for and validated against (kubernetes-validate's
# schemas for it ship in its wheel).
KUBE_VERSION = "1.37.0"

# Discovery: group/version -> [(resource, kind, namespaced)] for what the chart renders.
RESOURCES: dict[str, list[tuple[str, str, bool]]] = {
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("persistentvolumeclaims", "PersistentVolumeClaim", True),
        ("pods", "Pod", True),
        ("namespaces", "Namespace", False),
    ],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
    "networking.k8s.io/v1": [("ingresses", "Ingress", True), ("networkpolicies", "NetworkPolicy", True)],
    "rbac.authorization.k8s.io/v1": [
        ("roles", "Role", True), ("rolebindings", "RoleBinding", True),
        ("clusterroles", "ClusterRole", False), ("clusterrolebindings", "ClusterRoleBinding", False),
    ],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class FakeApiServer:
    """Just enough of the Kubernetes API for `helm install` with wait off."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def not_found(self) -> None:
                self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                 "reason": "NotFound", "code": 404, "message": f"{self.path} not found"})

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/version":
                    major, minor, _ = KUBE_VERSION.split(".")
                    return self.reply(200, {"major": major, "minor": minor, "gitVersion": f"v{KUBE_VERSION}",
                                            "platform": "linux/amd64"})
                if path == "/api":
                    return self.reply(200, {"kind": "APIVersions", "versions": ["v1"],
                                            "serverAddressByClientCIDRs": []})
                if path == "/apis":
                    groups = []
                    for gv in RESOURCES:
                        if "/" in gv:
                            group, version = gv.split("/")
                            gvd = {"groupVersion": gv, "version": version}
                            groups.append({"name": group, "versions": [gvd], "preferredVersion": gvd})
                    return self.reply(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
                gv = path.removeprefix("/api/") if path.startswith("/api/") else path.removeprefix("/apis/")
                if gv in RESOURCES:
                    return self.reply(200, {
                        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
                        "resources": [
                            {"name": name, "singularName": kind.lower(), "namespaced": namespaced,
                             "kind": kind, "verbs": VERBS}
                            for name, kind, namespaced in RESOURCES[gv]
                        ],
                    })
                # Any object Helm looks for (to refuse taking over one it does not own): not there.
                return self.not_found()

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "protobuf" in (self.headers.get("Content-Type") or ""):
                    # Helm's own release record (a Secret written by its typed client): kept by
                    # nobody, answered with a stub so the install goes on.
                    name = self.path.rsplit("/", 1)[-1] if self.command == "PUT" else "release"
                    return self.reply(201 if self.command == "POST" else 200,
                                      {"kind": "Secret", "apiVersion": "v1",
                                       "metadata": {"name": name, "resourceVersion": "1"}})
                obj = json.loads(body or b"{}")
                if self.command == "POST":
                    with fake.lock:
                        fake.created.append(json.loads(json.dumps(obj)))
                meta = obj.setdefault("metadata", {})
                meta.setdefault("uid", str(uuid.uuid4()))
                meta["resourceVersion"] = "1"
                meta["creationTimestamp"] = "2026-01-01T00:00:00Z"
                self.reply(201 if self.command == "POST" else 200, obj)

            do_PUT = do_POST  # noqa: N815 - the release record's update
            do_PATCH = do_DELETE = not_found  # noqa: N815 - nothing else is expected

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kubeconfig(self, directory: str) -> str:
        """A kubeconfig file for this server (helm-sdkpy takes a path, or YAML it detects as such)."""
        path = os.path.join(directory, "kubeconfig")
        with open(path, "w") as f:
            json.dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "delegate"}}],
            }, f)
        return path


def validate(manifests: list[dict[str, Any]]) -> list[str]:
    """What kubernetes-validate (strict: no unknown fields) finds wrong in each manifest."""
    import kubernetes_validate

    problems = []
    for obj in manifests:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name}: {e.message} at {'.'.join(str(p) for p in e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name}: no schema ({e})")
    return problems


async def render(chart: str, release: str, namespace: str, values: dict[str, Any]) -> dict[str, Any]:
    import helm_sdkpy

    fake = FakeApiServer()
    try:
        config = helm_sdkpy.Configuration(namespace=namespace, kubeconfig=fake.kubeconfig(os.environ["HOME"]))
        try:
            await helm_sdkpy.Install(config).run(release, chart, values=values, wait=False, timeout=60)
        except helm_sdkpy.HelmError as e:
            return {"error": str(e), "manifests": fake.created}
        problems = validate(fake.created)
        return {"error": None, "manifests": fake.created, "invalid": problems, "kube_version": KUBE_VERSION}
    finally:
        fake.server.shutdown()


async def lint(chart: str) -> dict[str, Any]:
    import helm_sdkpy

    fake = FakeApiServer()
    try:
        config = helm_sdkpy.Configuration(namespace="delegate", kubeconfig=fake.kubeconfig(os.environ["HOME"]))
        return await helm_sdkpy.chart.Lint(config).run(chart)
    finally:
        fake.server.shutdown()


def main() -> None:
    os.environ["HELM_DRIVER"] = "memory"
    req = json.load(sys.stdin)
    if req["action"] == "validate":
        out: Any = {"invalid": validate(req["manifests"])}
    elif req["action"] == "lint":
        out = asyncio.run(lint(req["chart"]))
    else:
        out = asyncio.run(render(req["chart"], req.get("release", "dlg"), req.get("namespace", "delegate"),
                                 req.get("values") or {}))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
