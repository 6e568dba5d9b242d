"""A tiny run of bench/answers.py, so the cost-and-quality benchmark cannot rot.

It runs the command as the README says, on the shared test database (each case makes a store of
its own), with no added latency; it checks the table and the JSON, never a timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CASES = ["pt-status-own-1101", "en-status-no-number", "es-unknown-number"]


def run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "answers.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=env,
    )


def test_the_answers_benchmark_prints_calls_tokens_and_cost(
    database_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "answers.json"
    done = run_bench(
        "--url",
        database_url,
        "--only",
        ",".join(CASES),
        "--claude-latency",
        "0",
        "--claude-per-token",
        "0",
        "--shopify-latency",
        "0",
        "--json",
        str(out),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[1].split()[:2] == ["checkout", "calls/email"]
    result = json.loads(out.read_text())
    assert result["emails"] == len(CASES)
    # One model call per email, every kind of token counted, a price applied.
    assert result["calls_per_email"] == 1.0
    assert result["input_per_email"] > 0 and result["output_per_email"] > 0
    assert result["usd_per_1000_emails"] > 0
    assert result["p95_ms"] >= result["p50_ms"] > 0
    assert sum(result["outcomes"].values()) == len(CASES)


def test_live_without_a_key_says_so_and_fails() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    done = run_bench("--live", env=env)
    assert done.returncode != 0
    assert "needs ANTHROPIC_API_KEY" in done.stderr
