"""`python -m worker doctor`: checks a deployment's settings from the worker's side.

Each check says what it found and, when it fails, exactly what to run or change. The database
answers one `deployment_report()` call (applied migrations, cron jobs, Vault's worker_url and
whether its worker_secret equals this WORKER_SECRET, compared by hash); the worker URL is then
asked for /healthz and whether it accepts the secret. `evaluate` is pure; `run` does the I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from worker.config import Settings

HTTP_TIMEOUT_SECONDS = 10.0
# A run id no run ever has: an authorised GET answers 404, a refused one 401.
PROBE_RUN_ID = "doctor-probe"
_CRON_JOB = re.compile(r"cron\.schedule\(\s*'([^']+)'")
_VERSION = re.compile(r"^(\d+)_.+\.sql$")

VAULT_URL_HINT = (
    "select vault.create_secret('https://<your-app>.fly.dev', 'worker_url');  -- or, to change "
    "it: select vault.update_secret((select id from vault.secrets where name = 'worker_url'), "
    "'https://<your-app>.fly.dev');"
)
VAULT_KEY_HINT = (
    "select vault.update_secret((select id from vault.secrets where name = 'worker_secret'), "
    "'<the WORKER_SECRET of `fly secrets`>');  -- or vault.create_secret('<...>', 'worker_secret')"
)


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, whether it passed, what was seen, and the fix."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None


@dataclass(frozen=True)
class Shipped:
    """What the migration files shipped with this worker expect."""

    versions: tuple[str, ...]
    cron_jobs: tuple[str, ...]


def shipped(migrations_dir: Path) -> Shipped:
    """Migration versions and cron job names read from the migration files."""
    versions: list[str] = []
    jobs: list[str] = []
    for path in sorted(migrations_dir.glob("*.sql")):
        match = _VERSION.match(path.name)
        if match:
            versions.append(match[1])
        jobs.extend(_CRON_JOB.findall(path.read_text()))
    return Shipped(tuple(versions), tuple(dict.fromkeys(jobs)))


def secret_sha256(secret: str) -> str:
    """The hex SHA-256 the database compares Vault's worker_secret with."""
    return hashlib.sha256(secret.encode()).hexdigest()


def evaluate(report: Mapping[str, Any], expected: Shipped) -> list[Check]:
    """The database-side checks from a `deployment_report()` answer (pure)."""
    checks: list[Check] = []
    applied = report.get("migrations")
    if applied is None:
        checks.append(Check("migrations", False, "no supabase_migrations.schema_migrations table",
                            "apply the migrations with `supabase db push`"))
    else:
        missing = [v for v in expected.versions if v not in set(applied)]
        if missing:
            checks.append(Check(
                "migrations", False,
                f"{len(missing)} of {len(expected.versions)} shipped migrations not applied: "
                + ", ".join(missing),
                "run `supabase db push` from this release's checkout",
            ))
        else:
            newer = sorted(set(applied) - set(expected.versions))
            note = f"; the database also has newer ones: {', '.join(newer)}" if newer else ""
            checks.append(Check("migrations", True,
                                f"all {len(expected.versions)} shipped migrations applied{note}"))
    jobs = report.get("cron_jobs")
    if jobs is None:
        checks.append(Check("cron", False, "pg_cron is not installed",
                            "enable pg_cron (Database > Extensions), then `supabase db push`"))
    else:
        active = {str(j.get("name")) for j in jobs if j.get("active")}
        absent = [name for name in expected.cron_jobs if name not in active]
        if absent:
            checks.append(Check("cron", False, "not scheduled or inactive: " + ", ".join(absent),
                                "re-apply the cron migration: `supabase db push`"))
        else:
            checks.append(Check("cron", True, f"{len(expected.cron_jobs)} jobs scheduled"))
    url = report.get("worker_url")
    checks.append(
        Check("vault worker_url", True, str(url)) if url
        else Check("vault worker_url", False, "missing", VAULT_URL_HINT)
    )
    if not report.get("worker_secret_present"):
        checks.append(Check("vault worker_secret", False, "missing", VAULT_KEY_HINT))
    elif report.get("worker_secret_matches") is False:
        checks.append(Check("vault worker_secret", False,
                            "differs from this WORKER_SECRET: the cron calls would get 401",
                            VAULT_KEY_HINT))
    else:
        checks.append(Check("vault worker_secret", True, "present and equal to WORKER_SECRET"))
    return checks


def check_worker(url: str, secret: str, get: Callable[..., httpx.Response]) -> list[Check]:
    """Whether the worker at `url` answers /healthz and accepts the bearer `secret`."""
    base = url.rstrip("/")
    try:
        health = get(f"{base}/healthz")
    except httpx.HTTPError as exc:
        return [Check("worker /healthz", False, f"{base} unreachable ({type(exc).__name__})",
                      "check `fly status` and that Vault's worker_url names this app: "
                      + VAULT_URL_HINT)]
    if health.status_code != 200:
        return [Check("worker /healthz", False, f"{base}/healthz answered {health.status_code}",
                      "read `fly logs`; the app must start with these settings")]
    checks = [Check("worker /healthz", True, f"{base} answers")]
    probe = get(f"{base}/runs/{PROBE_RUN_ID}", headers={"Authorization": f"Bearer {secret}"})
    if probe.status_code == 401:
        checks.append(Check("worker secret", False, "the worker refuses this WORKER_SECRET",
                            "make them equal: `fly secrets set WORKER_SECRET=...` and Vault's "
                            "worker_secret (" + VAULT_KEY_HINT + ")"))
    elif probe.status_code == 404:
        checks.append(Check("worker secret", True, "accepted"))
    else:
        checks.append(Check("worker secret", False, f"unexpected answer {probe.status_code}",
                            "read `fly logs`"))
    return checks


def run(
    settings: Settings,
    connect: Callable[[Settings], Any],
    migrations_dir: Path,
    http: httpx.Client,
) -> list[Check]:
    """All checks, in order; a failed step stops the checks that depend on it."""
    if not settings.worker_secret:
        return [Check("settings", False, "WORKER_SECRET is not set here",
                      "run the doctor with the worker's environment (e.g. `fly ssh console -C "
                      "'python -m worker doctor'`)")]
    try:
        db = connect(settings)
    except Exception as exc:
        return [Check("database", False, f"cannot connect: {exc}",
                      "check DATABASE_URL (the pooler URL from Supabase > Connect) or "
                      "SUPABASE_URL and SUPABASE_SECRET_KEY")]
    try:
        try:
            db.ping()
        except Exception as exc:
            return [Check("database", False, f"unreachable: {exc}",
                          "check DATABASE_URL / SUPABASE_URL, the password and the network")]
        checks = [Check("database", True, "reachable")]
        try:
            report = db.deployment_report(secret_sha256(settings.worker_secret))
        except Exception as exc:
            return [*checks, Check("migrations", False, f"deployment_report() failed: {exc}",
                                   "run `supabase db push` from this release's checkout")]
        checks.extend(evaluate(report, shipped(migrations_dir)))
        url = report.get("worker_url")
        if url:
            checks.extend(check_worker(str(url), settings.worker_secret, http.get))
        return checks
    finally:
        db.close()


def render(checks: Iterable[Check]) -> str:
    """One line per check, with its fix underneath when it failed."""
    lines = []
    for check in checks:
        lines.append(f"{'ok  ' if check.ok else 'FAIL'}  {check.name:<20} {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"      fix: {check.fix}")
    return "\n".join(lines)


def default_migrations_dir() -> Path:
    """supabase/migrations of the working directory (the image's /app) or of the checkout."""
    candidates = [Path.cwd(), Path(__file__).resolve().parents[1]]
    for root in candidates:
        if (root / "supabase" / "migrations").is_dir():
            return root / "supabase" / "migrations"
    return candidates[0] / "supabase" / "migrations"


def main(settings: Settings, connect: Callable[[Settings], Any], migrations_dir: Path) -> int:
    """Run every check and print them; 0 when all passed, 1 otherwise."""
    with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS) as http:
        checks = run(settings, connect, migrations_dir, http)
    print(render(checks))
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} ok, {len(failed)} failed")
    return 1 if failed else 0
