# syntax=docker/dockerfile:1
# One image for every role of the platform: the APIs (bankchurn, carvision, telecom, plan), the
# CarVision dashboard and the MLflow tracking server. PORTFOLIO_SERVICE picks the role at run time
# (CI also bakes a default per published image with --build-arg SERVICE=<role>).
# No data, models or secrets are copied in: models come from the MLflow registry at start-up,
# configuration from environment variables.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder: resolve + install
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /build
RUN pip install --no-cache-dir "uv==0.13.9" \
    && uv venv /opt/venv --python /usr/local/bin/python
# Third-party dependencies first (their layer survives source edits), exact versions from the lock.
COPY requirements.lock pyproject.toml README.md ./
RUN uv pip install --python /opt/venv/bin/python --constraint requirements.lock -r pyproject.toml
COPY src ./src
RUN uv pip install --python /opt/venv/bin/python --constraint requirements.lock --no-deps .

# ---------------------------------------------------------------- runtime: venv + entrypoint only
FROM ${PYTHON_IMAGE} AS runtime
ARG SERVICE=""
LABEL org.opencontainers.image.title="ml-mlops-portfolio" \
      org.opencontainers.image.description="BankChurn, CarVision and TelecomAI ML services on one MLOps core" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 appuser \
    && useradd --system --uid 10001 --gid appuser --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin appuser \
    && install -d -o appuser -g appuser -m 0750 /var/lib/portfolio
COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/portfolio-entrypoint
WORKDIR /app
COPY params.yaml ./
# Everything writable lives under /tmp (a tmpfs/emptyDir when the root filesystem is read-only)
# or /var/lib/portfolio (the MLflow server's volume).
ENV PATH="/opt/venv/bin:${PATH}" \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PORTFOLIO_SERVICE=${SERVICE} \
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
EXPOSE 8000 8501 5000
# Liveness of whichever role runs: GET /health (the dashboard: Streamlit's /_stcore/health).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["portfolio-entrypoint", "health"]
ENTRYPOINT ["portfolio-entrypoint"]
CMD ["run"]
