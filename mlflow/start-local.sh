#!/usr/bin/env bash
# A local MLflow tracking server for one machine: sqlite backend store + artifacts under $RECSYS_HOME,
# bound to loopback. The train flow and the service talk to it with MLFLOW_TRACKING_URI=http://HOST:PORT.
#
#   RECSYS_HOME         state directory (default ./.recsys): mlflow.db and mlartifacts/ live here
#   MLFLOW_HOST         bind address (default 127.0.0.1; keep loopback unless you add auth in front)
#   MLFLOW_PORT         port (default 5000)
#   MLFLOW_WORKERS      server workers (default 1)
#
# Usage: mlflow/start-local.sh [extra `mlflow server` flags]
#        export MLFLOW_TRACKING_URI=http://127.0.0.1:5000 && recsys train
set -euo pipefail

home="$(realpath -m "${RECSYS_HOME:-.recsys}")"
host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
mkdir -p "$home/mlartifacts"

# Artifacts are proxied by the server (mlflow-artifacts:/ URIs): clients never need the local path.
# `python -m mlflow` from this repo's venv: a bare `mlflow` is not on PATH without an activated venv, and
# with `.` on PATH bash finds this folder (mlflow/) first ("cannot execute: Is a directory")
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${RECSYS_PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" -m mlflow server \
    --backend-store-uri "sqlite:///$home/mlflow.db" \
    --artifacts-destination "$home/mlartifacts" \
    --serve-artifacts \
    --host "$host" --port "$port" \
    --workers "${MLFLOW_WORKERS:-1}" \
    "$@"
