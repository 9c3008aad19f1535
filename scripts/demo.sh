#!/usr/bin/env bash
# End to end on the embedded default data: generate -> train (Prefect flow, MLflow) -> serve -> query.
set -euo pipefail
export RECSYS_HOME="${RECSYS_HOME:-$PWD/.recsys}"
start=$(date +%s)

echo "== 1/4 generating the default synthetic data set into $RECSYS_HOME/data"
recsys generate

echo "== 2/4 training (Prefect flow run; MLflow tracking in $RECSYS_HOME/mlflow.db)"
recsys train

echo "== 3/4 starting the service on loopback"
port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
recsys serve --port "$port" --log-level warning > "$RECSYS_HOME/serve.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if curl -sf "http://127.0.0.1:$port/ready" > /dev/null; then break; fi
  if ! kill -0 $server 2>/dev/null; then echo "the service exited; see $RECSYS_HOME/serve.log"; exit 1; fi
  sleep 0.5
done
curl -sf "http://127.0.0.1:$port/ready" > /dev/null || { echo "the service never became ready"; exit 1; }

echo "== 4/4 recommendations over HTTP from the champion (http://127.0.0.1:$port)"
for user in u000001 u000002 u000003 a-brand-new-visitor; do
  curl -sf "http://127.0.0.1:$port/recommendations/$user?k=5" | python -c '
import json, sys
r = json.load(sys.stdin)
items = ", ".join(i["item_id"] for i in r["items"])
print("  %-22s v%s %-8s %s" % (r["user_id"], r["model_version"], r["strategy"], items))'
done
echo "done in $(( $(date +%s) - start ))s. MLflow UI: mlflow ui --backend-store-uri sqlite:///$RECSYS_HOME/mlflow.db"
