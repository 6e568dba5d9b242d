"""The dependency locks agree with pyproject and with each other, and the image installs the
hashed lock: what CI tests is what the container runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", re.MULTILINE)


def pins(name: str) -> dict[str, str]:
    text = (ROOT / name).read_text()
    return {canonicalize_name(m[1]): m[2] for m in _PIN.finditer(text)}


def project() -> dict[str, list[str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"runtime": data["dependencies"], "dev": data["optional-dependencies"]["dev"]}


def lower_bound(requirement: Requirement) -> str:
    [bound] = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    return bound


def test_ci_tests_the_runtime_pins_the_image_installs() -> None:
    image, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    assert image, "requirements.lock has no pins"
    assert {name: dev.get(name) for name in image} == image


def test_every_pin_is_hashed() -> None:
    for name in ("requirements.lock", "requirements-dev.lock"):
        entries = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / name).read_text())
        unhashed = [e.split()[0] for e in entries if "==" in e and "--hash=sha256:" not in e]
        assert unhashed == [], name


def test_the_locks_satisfy_pyproject() -> None:
    image, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    for group, locked in (("runtime", image), ("dev", dev)):
        for text in project()[group]:
            requirement = Requirement(text)
            version = locked[canonicalize_name(requirement.name)]
            assert requirement.specifier.contains(version), (text, version)


def test_the_lowest_file_holds_every_lower_bound() -> None:
    lowest = pins("requirements-lowest.txt")
    for text in project()["runtime"] + project()["dev"]:
        requirement = Requirement(text)
        locked = Version(lowest[canonicalize_name(requirement.name)])
        assert locked == Version(lower_bound(requirement)), text


def test_the_image_installs_the_lock_with_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-deps --require-hashes -r requirements.lock" in dockerfile
