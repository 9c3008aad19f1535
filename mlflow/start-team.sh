#!/usr/bin/env bash
# A shared MLflow tracking server for a team: PostgreSQL backend store + an S3-compatible artifact
# store (AWS S3, MinIO, Ceph, ...), artifacts proxied by the server so clients need no bucket credentials.
#
# Required:
#   MLFLOW_BACKEND_STORE_URI   postgresql://USER:PASSWORD@HOST:5432/DB   (driver: psycopg2-binary, pinned in
#                              requirements.lock; rewritten to postgresql+psycopg2:// below). Create the
#                              database first (`createdb mlflow`); the server creates its tables.
#   MLFLOW_ARTIFACTS_DESTINATION  s3://BUCKET/PREFIX
# For the artifact store (read by boto3 in the server process only):
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY   credentials for the bucket
#   MLFLOW_S3_ENDPOINT_URL     the S3-compatible endpoint, e.g. http://minio:9000 (unset for AWS S3)
#   AWS_DEFAULT_REGION         if your store needs one
# Optional:
#   MLFLOW_HOST (default 0.0.0.0; put TLS + auth in front, MLflow's server has none by default)
#   MLFLOW_PORT (default 5000), MLFLOW_WORKERS (default 4)
#
# Clients: export MLFLOW_TRACKING_URI=http://mlflow.internal:5000, then `recsys train`, `recsys serve`.
#
# Promotion safety: the gate's file lock ($RECSYS_HOME/locks) only serializes training runs on ONE
# machine. Across machines the gate re-reads the `champion` alias right before moving it and refuses the
# move if it changed (compare-and-set, re-deciding against the new champion); MLflow has no server-side
# CAS, so two gates on two machines finishing within milliseconds could still both move the alias (the
# later one wins, each run records what it did). Schedule training from one Prefect work pool with
# concurrency 1 (or a Prefect global concurrency limit named after the model) to close that gap.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI=postgresql://user:pass@host:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION=s3://bucket/prefix}"
case "$MLFLOW_BACKEND_STORE_URI" in
  # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the pinned driver is psycopg2(-binary)
  postgresql://*) MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${MLFLOW_BACKEND_STORE_URI#postgresql://}" ;;
  postgresql+psycopg2://*) ;;
  *) echo "MLFLOW_BACKEND_STORE_URI must be a postgresql:// URI" >&2; exit 2 ;;
esac
if [[ "$MLFLOW_ARTIFACTS_DESTINATION" == s3://* && -z "${AWS_ACCESS_KEY_ID:-}" ]]; then
  echo "warning: AWS_ACCESS_KEY_ID is not set; boto3 will try its other credential sources" >&2
fi

# `python -m mlflow` from this repo's venv: a bare `mlflow` is not on PATH without an activated venv, and
# with `.` on PATH bash finds this folder (mlflow/) first ("cannot execute: Is a directory")
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${RECSYS_PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python="$(command -v python3)"
exec "$python" -m mlflow server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --serve-artifacts \
    --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-4}" \
    "$@"
