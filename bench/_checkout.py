"""Which code a bench runs: the checkout it is started from, and an optional baseline beside it.

``bench/ingest`` and ``bench/delivery`` can measure two versions of the relay side by side in
one run (``--baseline-ref REV``, or a path to another checkout): a simplification is judged
against the code before it on the same machine, minutes apart, not against figures from
another day. Both versions run with the same virtualenv (``.venv`` of the bench's checkout);
what differs is only the ``service`` package each process imports, chosen by ``PYTHONPATH``.

The candidate gets ``PYTHONPATH`` too: the virtualenv's editable install may point at another
checkout (a git worktree shares its main checkout's ``.venv``), and a bench run from a worktree
must measure that worktree's code, not whatever the install points at.

A ``REV`` becomes a detached ``git worktree`` in a temp dir, removed on the way out.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def _git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(
        ["git", "--no-optional-locks", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout.strip()


class Checkout:
    """A tree holding the relay's ``service`` package; ``env()`` makes a process import it."""

    def __init__(self, path: Path, role: str, *, temporary: bool = False) -> None:
        self.path = path.resolve()
        if not (self.path / "service" / "__init__.py").is_file():
            raise ValueError(f"{path} is not a checkout of the relay (no service/__init__.py)")
        self.role = role  # "candidate" or "baseline"
        self.temporary = temporary

    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.path)}

    def version(self) -> str:
        """The commit, whether service/ has uncommitted changes, and a digest of service/."""
        try:
            commit = _git("rev-parse", "--short", "HEAD", cwd=self.path)
            changed = _git("status", "--porcelain", "--", "service", cwd=self.path)
        except (RuntimeError, OSError):
            commit, changed = "?", ""
        digest = hashlib.sha256()
        for path in sorted((self.path / "service").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(self.path)).encode() + b"\0")
                digest.update(path.read_bytes())
        state = "uncommitted changes under service/" if changed else "clean"
        return f"commit {commit} ({state}), service/ sha256 {digest.hexdigest()[:12]}"

    def remove(self) -> None:
        """Remove the worktree made for a ``--baseline-ref`` (nothing for a given path)."""
        if not self.temporary:
            return
        with contextlib.suppress(RuntimeError, OSError):
            _git("worktree", "remove", "--force", str(self.path))
        shutil.rmtree(self.path.parent, ignore_errors=True)
        with contextlib.suppress(RuntimeError, OSError):
            _git("worktree", "prune")


def candidate() -> Checkout:
    """The checkout the bench runs from."""
    return Checkout(REPO, "candidate")


def baseline(spec: str | None, say: Any) -> Checkout | None:
    """``--baseline-ref``: an existing directory is used as it is; anything else is a git
    revision of this repository, checked out (detached) in a temp dir."""
    if not spec:
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return Checkout(path, "baseline")
    commit = _git("rev-parse", "--verify", f"{spec}^{{commit}}")
    where = Path(tempfile.mkdtemp(prefix="relay-baseline-")) / "checkout"
    _git("worktree", "add", "--detach", str(where), commit)
    say(f"baseline {spec} ({commit[:10]}) checked out in {where}")
    return Checkout(where, "baseline", temporary=True)


def add_argument(parser: Any) -> None:
    parser.add_argument(
        "--baseline-ref",
        metavar="REV|PATH",
        help="also measure this version of the relay, alternating with this checkout's in "
        "every round: a git revision (checked out in a temp dir) or a path to a checkout",
    )
