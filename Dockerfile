# syntax=docker/dockerfile:1
# One Dockerfile, one image per role of the platform: each service's API (bankchurn, carvision,
# telecom, plan: any registered service), the CarVision dashboard and the MLflow tracking server:
#   docker build --build-arg SERVICE=<role> -t portfolio-<role>:local .
# Each image carries only its role's dependencies (deploy/docker/requirements.py reads them from
# pyproject.toml; versions are the lock's) and bakes its role as the default PORTFOLIO_SERVICE.
# No data, models or secrets are copied in: models come from the MLflow registry at start-up,
# configuration from environment variables. Builds with the classic builder and BuildKit alike.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- deps: one venv per kind of role
# No SERVICE here: every role's build reuses these layers from the cache (a build argument in
# scope would make every RUN below miss the cache for each new role).
FROM ${PYTHON_IMAGE} AS deps
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_CACHE_DIR=/tmp/uv-cache \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /build
# uv lives in its own venv, outside the runtime's: works on the official image and on a
# distribution Python that refuses system-wide pip installs (PEP 668).
RUN python3 -m venv /opt/uv \
    && /opt/uv/bin/pip install --no-cache-dir "uv==0.13.9"
# Third-party dependencies first (their layers survive source edits), exact versions from the lock.
# One download per wheel for the three venvs (uv's cache lives only during this RUN), and the
# dashboard's venv starts as a copy of the API's (its packages are installed and byte-compiled once).
# The libraries' own test suites (pandas', numba's, scipy's…: ~130 MB) are never imported: dropped.
COPY requirements.lock pyproject.toml deploy/docker/requirements.py ./
RUN for kind in api dashboard mlflow; do \
      if [ "$kind" = dashboard ]; then cp -a /opt/venvs/api /opt/venvs/dashboard; \
      else /opt/uv/bin/uv venv --relocatable "/opt/venvs/$kind" --python "$(command -v python3)"; fi \
      && python3 requirements.py --kind "$kind" > "$kind.txt" \
      && /opt/uv/bin/uv pip install --python "/opt/venvs/$kind/bin/python" \
         --constraint requirements.lock -r "$kind.txt" || exit 1; \
    done \
    && rm -rf "$UV_CACHE_DIR" \
    && find /opt/venvs -depth -type d -name tests -path "*/site-packages/*/*" -exec rm -rf {} +
COPY README.md ./
COPY src ./src
# The MLflow server role runs `mlflow server` only; the others run the package.
RUN for kind in api dashboard; do \
      /opt/uv/bin/uv pip install --python "/opt/venvs/$kind/bin/python" --no-deps . || exit 1; \
    done

# ---------------------------------------------------------------- select: this role's venv
# A symlink to the role's venv, which the runtime stage copies (COPY follows it): no per-role copy
# here, and every API role's COPY below has the same content, so it is one cached layer for all.
# (The venvs are relocatable: their scripts find their interpreter relative to themselves.)
FROM deps AS select
ARG SERVICE=""
RUN kind="$(python3 requirements.py --kind-of "${SERVICE}")" \
    && ln -s "/opt/venvs/$kind" /opt/venv

# ---------------------------------------------------------------- runtime: venv + entrypoint only
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="ml-mlops-portfolio" \
      org.opencontainers.image.description="BankChurn, CarVision and TelecomAI ML services on one MLOps core" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 appuser \
    && useradd --system --uid 10001 --gid appuser --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin appuser \
    && install -d -o appuser -g appuser -m 0750 /var/lib/portfolio
COPY --from=select /opt/venv /opt/venv
# The fast path's tree walks compiled once here (numba's cache for this CPU family): containers copy
# it to their tmpfs cache at start instead of compiling at every start (make images: the warm-up).
RUN if [ -x /opt/venv/bin/portfolio ]; then \
      NUMBA_CACHE_DIR=/opt/numba-cache /opt/venv/bin/python -c \
        "from portfolio.core.fastpath.trees import precompile; precompile()"; \
    fi
# Executable in git (mode 100755) and COPY keeps the mode: no --chmod (the classic builder lacks it).
COPY deploy/docker/entrypoint.sh /usr/local/bin/portfolio-entrypoint
COPY deploy/docker/jsonlog.py /usr/local/bin/jsonlog.py
WORKDIR /app
COPY params.yaml ./
# Everything writable lives under /tmp (a tmpfs/emptyDir when the root filesystem is read-only)
# or /var/lib/portfolio (the MLflow server's volume).
ENV PATH="/opt/venv/bin:${PATH}" \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORTFOLIO_HOME=/app \
    PORTFOLIO_STATE_DIR=/tmp/portfolio \
    PORTFOLIO_MODELS_DIR=/tmp/portfolio/models \
    NUMBA_CACHE_DIR=/tmp/numba \
    PORTFOLIO_DVC_PULL=false \
    PORTFOLIO_HOST=0.0.0.0 \
    PORTFOLIO_PORT=8000 \
    PORTFOLIO_DASHBOARD_PORT=8501 \
    MLFLOW_DISABLE_TELEMETRY=true \
    STREAMLIT_BROWSER_GATHER_USAGE_STATS=false
USER 10001:10001
# The role last: every layer above is shared by the roles of one kind (a build argument in scope
# makes each later RUN miss the cache for each new role).
ARG SERVICE=""
ENV PORTFOLIO_SERVICE=${SERVICE}
EXPOSE 8000 8501 5000
# Liveness of whichever role runs: GET /health (the dashboard: Streamlit's /_stcore/health).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["portfolio-entrypoint", "health"]
ENTRYPOINT ["portfolio-entrypoint"]
CMD ["run"]
