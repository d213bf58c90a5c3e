"""deploy/k8s: every manifest valid against the Kubernetes schemas (strict: no unknown field),
and the pieces fit: every backend of the registry has a Deployment and a Service on the port of
its endpoint, the volumes and the Secret the pods name exist, the router keeps state and logs on
volumes of its own, nothing runs as root."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from router.registry.loading import load_config

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest release still in support when this was written

Resource = dict[str, Any]


def _documents(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _kustomization() -> Resource:
    doc = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def _resources() -> list[Resource]:
    """What `kubectl apply -k deploy/k8s` applies."""
    return [doc for name in _kustomization()["resources"] for doc in _documents(K8S / name)]


def _one(kind: str, name: str) -> Resource:
    found = [r for r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _registry(tmp_path: Path) -> Any:
    data = _one("ConfigMap", "paddle-ab-registry")["data"]["experiments.yaml"]
    path = tmp_path / "experiments.yaml"
    path.write_text(data)
    return load_config(path)


def _pod_specs() -> list[tuple[str, Resource]]:
    return [
        (f"{r['kind']}/{r['metadata']['name']}", r["spec"]["template"]["spec"])
        for r in _resources()
        if r["kind"] in ("Deployment", "StatefulSet", "Job")
    ]


@pytest.mark.parametrize(
    "path",
    sorted(p.relative_to(K8S) for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"),
)
def test_manifest_is_valid_strictly(path: Path) -> None:
    documents = _documents(K8S / path)
    assert documents
    for resource in documents:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert listed == on_disk
    # The admin token is made by the operator, never reset by `apply -k`.
    assert not any(r["kind"] == "Secret" for r in _resources())


def test_every_backend_has_a_deployment_and_a_service_on_its_endpoint_port(
    tmp_path: Path,
) -> None:
    registry = _registry(tmp_path)
    assert registry.backends
    for name, backend in registry.backends.items():
        deployment = _one("Deployment", name)
        service = _one("Service", name)
        selector = service["spec"]["selector"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        args = container["args"]
        assert args[0] == "serving"
        http_port = int(args[args.index("--http-port") + 1])
        assert container_ports == {"http": http_port}
        for endpoint in backend.endpoints:
            url = urlsplit(str(endpoint))
            assert url.hostname == name, f"{name}: {endpoint} is not its Service"
            (port,) = service["spec"]["ports"]
            assert port["port"] == url.port == http_port, name
            assert port["targetPort"] == "http"
        # Ready on a real prediction of this bundle on this port.
        model = args[args.index("--model") + 1]
        probe = container["readinessProbe"]["exec"]["command"]
        assert probe == ["paddle-ab", "probe", "--model", model, "--http-port", str(http_port)]
        assert _one("PodDisruptionBudget", name)["spec"]["selector"]["matchLabels"] == selector
    deployments = {r["metadata"]["name"] for r in _resources() if r["kind"] == "Deployment"}
    assert deployments == set(registry.backends), "a Deployment for a backend not in the registry"


def test_gpu_and_cpu_backends(tmp_path: Path) -> None:
    devices = {}
    for name in _registry(tmp_path).backends:
        spec = _one("Deployment", name)["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        device = container["args"][container["args"].index("--device") + 1]
        limits = container["resources"]["limits"]
        devices[name] = device
        if device.startswith("gpu"):
            assert device == "gpu:0"  # the one GPU the device plugin gives the pod
            assert limits["nvidia.com/gpu"] == 1
            assert container["image"].endswith("paddle-ab-gpu:latest")
        else:
            assert "nvidia.com/gpu" not in limits
            assert container["image"].endswith("paddle-ab:latest")
    assert {d.split(":")[0] for d in devices.values()} == {"cpu", "gpu"}


def test_router_fleet_state_and_logs_outlive_pods(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    router = registry.router
    assert router.fleet is not None
    # No fixed replica: every pod's id is its own host name (the StatefulSet pod name) and port.
    assert router.fleet.replica is None
    redis_url = urlsplit(router.fleet.redis)
    redis_service = _one("Service", str(redis_url.hostname))
    assert redis_service["spec"]["ports"][0]["port"] == redis_url.port
    assert _one("StatefulSet", str(redis_url.hostname))["spec"]["volumeClaimTemplates"]

    statefulset = _one("StatefulSet", "paddle-ab-router")
    assert statefulset["spec"]["replicas"] >= 2
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert router.log_dir.is_absolute() and router.state_dir.is_absolute()
    assert mounts[str(router.log_dir)] in claims
    assert mounts[str(router.state_dir)] in claims
    # The registry mounted as a directory (a subPath mount would never see an edit).
    registry_mount = next(m for m in container["volumeMounts"] if m["name"] == "registry")
    assert registry_mount["mountPath"] == "/etc/paddle-ab" and "subPath" not in registry_mount
    assert container["args"] == ["router"]
    assert container["ports"] == [{"containerPort": router.port, "name": "http"}]
    assert router.host == "0.0.0.0"
    headless = _one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert _one("PodDisruptionBudget", "paddle-ab-router")
    token = next(e for e in container["env"] if e["name"] == router.admin_token_env)
    secret_ref = token["valueFrom"]["secretKeyRef"]
    example = _documents(K8S / "examples" / "admin-secret.yaml")[0]
    assert example["metadata"]["name"] == secret_ref["name"]
    assert secret_ref["key"] in example["stringData"]


def test_every_claim_named_by_a_pod_exists() -> None:
    claims = {r["metadata"]["name"] for r in _resources() if r["kind"] == "PersistentVolumeClaim"}
    for where, spec in _pod_specs():
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, where
            if "configMap" in volume:
                assert _one("ConfigMap", volume["configMap"]["name"]), where


def test_pods_run_restricted_with_resources() -> None:
    for where, spec in _pod_specs():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert spec["automountServiceAccountToken"] is False, where
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], where
            assert resources["limits"]["memory"], where


def test_network_policies_fence_backends_and_redis() -> None:
    policies = [r for r in _resources() if r["kind"] == "NetworkPolicy"]
    fenced = {p["spec"]["podSelector"]["matchLabels"]["role"]: p for p in policies}
    assert set(fenced) == {"backend", "redis"}
    for policy in fenced.values():
        (rule,) = policy["spec"]["ingress"]
        assert rule["from"] == [
            {"podSelector": {"matchLabels": {"app": "paddle-ab", "role": "router"}}}
        ]
    for name in ("sentiment-v1", "sentiment-v2"):
        labels = _one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert labels["role"] == "backend"
