"""requirements.lock agrees with pyproject.toml: every dependency pinned, hashed, in range."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes)."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pins: dict[str, tuple[str, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = re.match(r"([A-Za-z0-9_.-]+)==([^\s;\\]+)", block)
        if head:
            pins[canonicalize_name(head[1])] = (head[2], block.count("--hash=sha256:"))
    return pins


def test_every_dependency_is_pinned_in_range_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = locked()
    for line in [*wanted, *build]:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is not in requirements.lock: run ./scripts/lock"
        version, hashes = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {req.name}=={version}, outside {req.specifier}: "
            "run ./scripts/lock"
        )
        assert hashes >= 1, f"{req.name} has no hash"
    assert all(h >= 1 for _, h in pins.values())


def test_bootstrap_installs_from_the_lock_with_hashes() -> None:
    script = (ROOT / "scripts/bootstrap").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements.lock" in script
    assert "--no-deps --no-build-isolation -e ." in script
