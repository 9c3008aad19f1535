#!/usr/bin/env bash
# Register the deployments in prefect.yaml with the local server (see prefect_up.sh).
set -euo pipefail
source "$(dirname "$0")/prefect_env.sh"
cd "$RECSYS_REPO"
exec prefect --no-prompt deploy --all "$@"
