#!/usr/bin/env bash
# Stop the worker and server started by prefect_up.sh (TERM, wait, then KILL: workers can be slow to exit).
set -uo pipefail
source "$(dirname "$0")/prefect_env.sh"
stop() {
  local pidfile="$RUN_DIR/$1.pid"
  [ -f "$pidfile" ] || return 0
  local pid; pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null; fi
    echo "stopped $1 (pid $pid)"
  fi
  rm -f "$pidfile"
}
stop prefect-worker
stop prefect-server
