# The worker container: gunicorn (one gthread worker) serving worker.app:create_app().
# Build: docker build -t support-worker .   Deploy: fly deploy (see fly.toml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080

WORKDIR /app

# Dependencies first, from the hashed lock (scripts/lock writes it), so code changes reuse this
# layer; --require-hashes refuses any file whose hash is not the locked one.
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes -r requirements.lock

# The project itself, without re-resolving dependencies: the lock is the whole environment.
COPY pyproject.toml README.md ./
COPY worker ./worker
# `python -m worker doctor` compares the database with the migrations this release ships.
COPY supabase/migrations ./supabase/migrations
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin worker

USER worker

EXPOSE 8080

# Liveness only (no database): readiness is /readyz, for whoever wants it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=4)"]

# gunicorn handles SIGTERM gracefully: runs stop claiming and get their grace period.
STOPSIGNAL SIGTERM

CMD ["gunicorn", "-c", "worker/gunicorn_conf.py", "worker.app:create_app()"]
