# Sourced by the prefect_*.sh scripts: one place for where the local Prefect stack lives.
# Everything is under $RECSYS_HOME (default ./.recsys): Prefect's database, results, logs, pids.
export RECSYS_HOME="${RECSYS_HOME:-$PWD/.recsys}"
mkdir -p "$RECSYS_HOME"
RECSYS_HOME="$(cd "$RECSYS_HOME" && pwd)"
export RECSYS_REPO="${RECSYS_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export PREFECT_HOME="${PREFECT_HOME:-$RECSYS_HOME/prefect}"
export PREFECT_PORT="${PREFECT_PORT:-4200}"
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:$PREFECT_PORT/api}"
export PREFECT_RESULTS_LOCAL_STORAGE_PATH="${PREFECT_RESULTS_LOCAL_STORAGE_PATH:-$RECSYS_HOME/prefect/results}"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_UI_SHOW_PROMOTIONAL_CONTENT=false
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$RECSYS_HOME/mlflow.db}"
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
# the worker starts flow runs with `python` from PATH: make it this project's interpreter
if [ -x "$RECSYS_REPO/.venv/bin/python" ]; then export PATH="$RECSYS_REPO/.venv/bin:$PATH"; fi
RUN_DIR="$RECSYS_HOME/run"
LOG_DIR="$RECSYS_HOME/logs"
mkdir -p "$RUN_DIR" "$LOG_DIR"
