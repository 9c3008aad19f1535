#!/usr/bin/env bash
# Start a local Prefect server + a process worker on pool `local`, state under $RECSYS_HOME.
#   RECSYS_HOME=/path PREFECT_PORT=4200 scripts/prefect_up.sh
# Then: `source scripts/prefect_env.sh` in your shell (PREFECT_API_URL etc.), scripts/prefect_deploy.sh,
# `prefect deployment run backfill/backfill-manual --param ...`; stop with scripts/prefect_down.sh.
set -euo pipefail
source "$(dirname "$0")/prefect_env.sh"

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if alive "$RUN_DIR/prefect-server.pid"; then
  echo "prefect server already running (pid $(cat "$RUN_DIR/prefect-server.pid")) at $PREFECT_API_URL"
else
  setsid prefect server start --host 127.0.0.1 --port "$PREFECT_PORT" > "$LOG_DIR/prefect-server.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/prefect-server.pid"
  echo "prefect server starting (pid $!) on $PREFECT_API_URL; log $LOG_DIR/prefect-server.log"
fi
for _ in $(seq 1 240); do
  if curl -sf "$PREFECT_API_URL/health" > /dev/null; then break; fi
  alive "$RUN_DIR/prefect-server.pid" || { echo "prefect server exited:"; tail -20 "$LOG_DIR/prefect-server.log"; exit 1; }
  sleep 0.5
done
curl -sf "$PREFECT_API_URL/health" > /dev/null || { echo "prefect server not healthy after 120s"; exit 1; }

prefect work-pool inspect local > /dev/null 2>&1 || prefect work-pool create local --type process > /dev/null
# at most one promotion gate at a time, across all runs and workers (tag on the gate task)
prefect concurrency-limit inspect promotion-gate > /dev/null 2>&1 || \
  prefect concurrency-limit create promotion-gate 1 > /dev/null

if alive "$RUN_DIR/prefect-worker.pid"; then
  echo "worker already running (pid $(cat "$RUN_DIR/prefect-worker.pid"))"
else
  cd "$RECSYS_REPO"
  setsid prefect worker start --pool local --type process > "$LOG_DIR/prefect-worker.log" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/prefect-worker.pid"
  echo "worker started (pid $(cat "$RUN_DIR/prefect-worker.pid")) on pool local; log $LOG_DIR/prefect-worker.log"
fi
echo "UI: ${PREFECT_API_URL%/api}   (source scripts/prefect_env.sh to use the CLI against it)"
