#!/bin/sh
# Container entrypoint (the image's ENTRYPOINT; tests/deploy runs this very file as an
# unprivileged user). The role comes from PORTFOLIO_SERVICE:
#   bankchurn | carvision | telecom | plan  the service's API   (`portfolio serve`, port PORTFOLIO_PORT)
#   dashboard                        the CarVision dashboard (port PORTFOLIO_DASHBOARD_PORT)
#   mlflow                           the MLflow tracking server, configured by MLFLOW_* variables
#                                    (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION, …)
# Commands:  run (default) | health (liveness probe of the running role) | any other command,
# executed as given (e.g. `portfolio train bankchurn`).
set -eu

role="${PORTFOLIO_SERVICE:-}"
# Streamlit and the MLflow server print text: jsonlog.py (beside this script) makes each line JSON.
jsonlog="$(dirname "$(readlink -f "$0")")/jsonlog.py"
host="${PORTFOLIO_HOST:-0.0.0.0}"

health_url() {
    case "$role" in
        dashboard) echo "http://127.0.0.1:${PORTFOLIO_DASHBOARD_PORT:-8501}/_stcore/health" ;;
        mlflow) echo "http://127.0.0.1:${MLFLOW_PORT:-5000}/health" ;;
        *) echo "http://127.0.0.1:${PORTFOLIO_PORT:-8000}/health" ;;
    esac
}

# The image's precompiled fast path (Dockerfile) into numba's writable cache, once per container.
if [ -d /opt/numba-cache ] && [ -n "${NUMBA_CACHE_DIR:-}" ] && [ ! -e "${NUMBA_CACHE_DIR}" ]; then
    cp -R /opt/numba-cache "${NUMBA_CACHE_DIR}" 2>/dev/null || true
fi

command="${1:-run}"
case "$command" in
    run) ;;
    health)
        exec python -c '
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=4) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception as exc:
    print(f"unhealthy: {sys.argv[1]}: {exc}", file=sys.stderr)
    sys.exit(1)
' "$(health_url)"
        ;;
    *) exec "$@" ;;
esac

case "$role" in
    "")
        echo "PORTFOLIO_SERVICE is not set: choose bankchurn, carvision, telecom, plan, dashboard or mlflow" >&2
        exit 64
        ;;
    dashboard)
        exec python "$jsonlog" dashboard -- \
            portfolio dashboard --host "$host" --port "${PORTFOLIO_DASHBOARD_PORT:-8501}"
        ;;
    mlflow)
        export MLFLOW_HOST="${MLFLOW_HOST:-0.0.0.0}"
        # Default stores: the image's volume (/var/lib/portfolio), never the read-only /app.
        export MLFLOW_BACKEND_STORE_URI="${MLFLOW_BACKEND_STORE_URI:-sqlite:////var/lib/portfolio/mlflow.db}"
        export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-/var/lib/portfolio/artifacts}"
        exec python "$jsonlog" mlflow -- mlflow server
        ;;
    *)
        exec portfolio serve "$role" --host "$host" --port "${PORTFOLIO_PORT:-8000}"
        ;;
esac
