"""The package as shipped: its licence, its metadata (psycopg only in the postgres extra), the
hashed lock that `make install` and the image install, and the image's health check."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import bound_socket

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def _lock(name: str) -> dict[str, str]:
    """The pins of ``requirements/<name>``: package -> version, each checked to carry a hash."""
    text = (ROOT / "requirements" / name).read_text()
    pins: dict[str, str] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        found = PIN.match(entry)
        if found:
            assert "--hash=sha256:" in entry, f"{name}: {found[1]} has no hash"
            pins[canonicalize_name(found[1])] = found[2]
    assert pins, name
    return pins


def test_license_file_matches_pyproject() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 The callback-relay authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_wheel_carries_the_license_and_psycopg_only_as_an_extra(tmp_path: Path) -> None:
    """The wheel built from this tree (with the locked backend, as the image builds it)."""
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip_wheel, "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("callback_relay-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(archive.read(metadata))
        (license_file,) = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert archive.read(license_file).startswith(b"MIT License")
    assert meta["License-Expression"] == "MIT"
    assert "postgres" in meta.get_all("Provides-Extra")
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    psycopg = [r for r in requires if r.name.startswith("psycopg")]
    # Only ever behind an extra: postgres, and test (which includes postgres).
    for requirement in psycopg:
        marker = requirement.marker
        assert marker is not None and not marker.evaluate({"extra": ""}), requirement
    with_postgres = [r for r in psycopg if r.marker and r.marker.evaluate({"extra": "postgres"})]
    assert {r.name for r in with_postgres} == {"psycopg", "psycopg-pool"}
    assert "binary" in next(r for r in with_postgres if r.name == "psycopg").extras


def _requirements(*extras: str) -> list[Requirement]:
    project = PYPROJECT["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in found if canonicalize_name(r.name) != "callback-relay"]


def test_the_lock_satisfies_pyproject() -> None:
    """Every requirement is pinned in the lock at a version its range allows (a range changed
    without `make lock` fails here), and the image's and the build's locks agree with it."""
    dev, runtime, build = _lock("dev.txt"), _lock("runtime.txt"), _lock("build.txt")
    build_in = [
        Requirement(line)
        for line in (ROOT / "requirements/build.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for requirement in _requirements("postgres", "test", "bench") + build_in:
        name = canonicalize_name(requirement.name)
        assert name in dev, f"{name} is not in requirements/dev.txt: run make lock"
        assert requirement.specifier.contains(dev[name], prereleases=True), (requirement, dev[name])
    for requirement in _requirements("postgres"):
        assert canonicalize_name(requirement.name) in runtime, requirement
    assert {"psycopg", "psycopg-binary", "psycopg-pool"} <= set(runtime)
    assert not {"pytest", "hatchling", "playwright", "uv"} & set(runtime)  # not in the image
    for lock in (runtime, build):
        assert {name: dev[name] for name in lock} == lock  # one version of each, everywhere


def test_floor_of_psycopg_installs() -> None:
    """psycopg 3.2.0's binary extra names a psycopg-binary release that was never published:
    the floor is the first release whose binary extra installs (make floors installs it)."""
    (psycopg,) = [r for r in _requirements("postgres") if r.name == "psycopg"]
    assert psycopg.specifier.contains("3.2.1") and not psycopg.specifier.contains("3.2.0")


def _healthcheck() -> str:
    """The Python the Dockerfile's HEALTHCHECK runs."""
    text = (ROOT / "Dockerfile").read_text()
    found = re.search(r'HEALTHCHECK .*?CMD \["python", "-c", "(.*?)"\]', text, re.DOTALL)
    assert found, "the HEALTHCHECK runs python -c"
    return found[1]


def test_image_health_check_follows_relay_port(tmp_path: Path) -> None:
    """`relay serve` as the image runs it (no --port, RELAY_PORT set) answers the health check
    on that port; the check fails for a port nothing serves."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    sock.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_PORT=str(port),
        RELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'relay.db'}",
        RELAY_LOG_LEVEL="warning",
    )
    relay = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60  # a busy machine starts it slowly
        while True:
            assert relay.poll() is None, "relay exited"
            assert time.monotonic() < deadline, "relay did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        check = [sys.executable, "-c", _healthcheck()]
        healthy = subprocess.run(check, env=env, capture_output=True, timeout=30, check=False)
        assert healthy.returncode == 0, healthy.stderr
        closed = bound_socket()  # bound, not listening: nothing answers there
        try:
            env["RELAY_PORT"] = str(closed.getsockname()[1])
            down = subprocess.run(check, env=env, capture_output=True, timeout=30, check=False)
        finally:
            closed.close()
        assert down.returncode != 0
    finally:
        relay.terminate()
        relay.wait(timeout=30)


@pytest.mark.parametrize("name", ["dev.txt", "runtime.txt", "build.txt"])
def test_lock_names_how_it_is_refreshed(name: str) -> None:
    assert "make lock" in (ROOT / "requirements" / name).read_text().splitlines()[1]


def _make_dry_run(*targets: str) -> str:
    """What ``make`` would run for ``targets`` in a venv that does not exist yet."""
    result = subprocess.run(
        ["make", "-n", "-B", *targets, "VENV=/nonexistent/venv"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_make_install_installs_the_lock_with_hashes_then_the_project_alone() -> None:
    commands = [line for line in _make_dry_run("install").splitlines() if " install " in line]
    assert commands[-2].endswith("pip install --quiet --require-hashes -r requirements/dev.txt")
    assert commands[-1].endswith("pip install --quiet --no-deps --no-build-isolation -e .")


def test_make_test_runs_the_floors_in_a_venv_of_their_own() -> None:
    commands = _make_dry_run("test")
    floors = commands.index("--resolution lowest-direct")
    assert "--python .venv-floors/bin/python" in commands[floors - 200 : floors]
    assert commands.index(".venv-floors/bin/python -m pytest") > floors
    assert commands.index("--cov") > floors  # then the suite, under coverage
